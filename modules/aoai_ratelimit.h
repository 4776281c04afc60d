/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_ratelimit: what a member's rate-limit headers say, parsed without
 * trusting a byte of them.  APR only, fuzzed (fuzz/ratelimit_fuzz.c).
 */

#ifndef AOAI_RATELIMIT_H
#define AOAI_RATELIMIT_H

#include "apr.h"
#include "apr_time.h"

typedef enum {
    AOAI_WINDOW_ABSENT = 0, /* no rate-limit header at all */
    AOAI_WINDOW_FOUND,      /* *window holds what the member asked for */
    AOAI_WINDOW_GARBAGE     /* headers present, none of them usable */
} aoai_window_source;

/* The values of a 429's headers, NULL where absent. */
typedef struct {
    const char *retry_after_ms;
    const char *retry_after;
    const char *reset_requests;
    const char *reset_tokens;
} aoai_ratelimit_headers;

/* How long the member asked to be left alone: the most precise header
 * wins.  *bad_header names the first unusable one, or NULL. */
aoai_window_source aoai_ratelimit_window(const aoai_ratelimit_headers *h,
                                         apr_time_t now,
                                         apr_interval_time_t *window,
                                         const char **bad_header);

/* "1500", "1.5", "20ms", "6m0s", "1h2m3.5s"; a bare number is in ms when
 * plain_unit_ms, else in seconds.  1 and *out on success, else 0. */
int aoai_ratelimit_duration(const char *value, int plain_unit_ms,
                            apr_interval_time_t *out);

/* An x-ratelimit-remaining-* or -limit-* figure: a plain non-negative
 * decimal of at most 12 digits.  1 and *figure on success, else 0. */
int aoai_ratelimit_figure(const char *value, apr_int64_t *figure);

/* azure-openai-deployment-utilization: "97.5%" (a provisioned
 * deployment's share of its capacity in use), in tenths of a percent,
 * 0-1000 (more than 100% reads as 1000).  1 and *permille on success. */
int aoai_ratelimit_utilization(const char *value, apr_int64_t *permille);

#endif /* AOAI_RATELIMIT_H */
