/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * How long a member asked us to stay away, read from its answer.
 *
 * Azure OpenAI sends, on a 429, "retry-after-ms" (milliseconds) and
 * "Retry-After" (RFC 9110: delta-seconds or an HTTP-date).  OpenAI-style
 * services send "x-ratelimit-reset-requests" / "x-ratelimit-reset-tokens"
 * as plain seconds or as Go durations ("6m0s", "20ms").  The most precise
 * header wins; every value here comes from outside, so nothing is trusted:
 * numbers saturate instead of overflowing and anything unparsable is
 * reported, never guessed at.  Callers clamp the result to their maximum.
 *
 * No httpd types here, only APR, so a fuzzer can drive this file alone.
 */

#include "aoai_balancer.h"

#include "apr_lib.h"
#include "apr_date.h"
#include "apr_time.h"


/* Far beyond any maximum window an admin can set; keeps the sums below
 * from overflowing whatever a header claims. */
#define AOAI_DURATION_CAP  apr_time_from_sec((apr_int64_t)86400 * 366)
/* Past this, a number of even the smallest unit (us) is beyond the cap:
 * it is taken as the cap itself, never wrapped round or cut short. */
#define AOAI_WHOLE_CAP     APR_INT64_C(1000000000000000)

static apr_int64_t saturating_add(apr_int64_t a, apr_int64_t b)
{
    return (a > AOAI_DURATION_CAP - b) ? AOAI_DURATION_CAP : a + b;
}

/* Parses "1500", "1.5", "20ms", "1s", "6m0s", "1h2m3.5s".  A bare number
 * is in milliseconds when plain_unit_ms, else in seconds; units may only
 * be left out when the value is a single bare number.  Returns 1 and sets
 * *out on success, 0 on anything else. */
int aoai_parse_duration(const char *value, int plain_unit_ms,
                        apr_interval_time_t *out)
{
    const char *p = value;
    apr_int64_t total = 0;
    int terms = 0;

    if (!p) {
        return 0;
    }
    while (apr_isspace(*p)) {
        p++;
    }
    while (*p && !apr_isspace(*p)) {
        apr_int64_t whole = 0, fraction = 0, fraction_scale = 1;
        apr_int64_t unit_usec, term;
        int digits = 0, saturated = 0;

        while (apr_isdigit(*p)) {
            whole = whole * 10 + (*p - '0');
            if (whole > AOAI_WHOLE_CAP) {
                /* more than any window can be: the cap, whatever follows */
                whole = AOAI_WHOLE_CAP;
                saturated = 1;
            }
            digits++;
            p++;
        }
        if (*p == '.') {
            p++;
            while (apr_isdigit(*p)) {
                if (fraction_scale < 1000000) {
                    fraction = fraction * 10 + (*p - '0');
                    fraction_scale *= 10;
                }
                digits++;
                p++;
            }
        }
        if (!digits) {
            return 0;
        }

        if (p[0] == 'm' && p[1] == 's') {
            unit_usec = 1000;
            p += 2;
        }
        else if (p[0] == 'u' && p[1] == 's') {
            unit_usec = 1;
            p += 2;
        }
        else if (*p == 's') {
            unit_usec = APR_USEC_PER_SEC;
            p++;
        }
        else if (*p == 'm') {
            unit_usec = 60 * APR_USEC_PER_SEC;
            p++;
        }
        else if (*p == 'h') {
            unit_usec = 3600 * APR_USEC_PER_SEC;
            p++;
        }
        else if (terms == 0 && (!*p || apr_isspace(*p))) {
            unit_usec = plain_unit_ms ? 1000 : APR_USEC_PER_SEC;
        }
        else {
            return 0;
        }

        /* whole * unit_usec only when it cannot overflow */
        term = (saturated || whole > AOAI_DURATION_CAP / unit_usec)
               ? AOAI_DURATION_CAP
               : saturating_add(whole * unit_usec,
                                fraction * unit_usec / fraction_scale);
        total = saturating_add(total, term);
        terms++;
    }
    while (apr_isspace(*p)) {
        p++;
    }
    if (*p || !terms) {
        return 0;
    }
    *out = total;
    return 1;
}

/* Retry-After = HTTP-date / delta-seconds (RFC 9110, 10.2.3). */
static int parse_retry_after(const char *value, apr_time_t now,
                             apr_interval_time_t *out)
{
    const char *p = value;
    apr_time_t when;

    while (apr_isspace(*p)) {
        p++;
    }
    if (apr_isdigit(*p)) {
        const char *q = p;
        while (apr_isdigit(*q)) {
            q++;
        }
        while (apr_isspace(*q)) {
            q++;
        }
        /* delta-seconds has no fraction and no unit */
        return !*q && aoai_parse_duration(p, 0, out);
    }
    when = apr_date_parse_http(p);
    if (when == APR_DATE_BAD) {
        return 0;
    }
    *out = (when > now) ? when - now : 0;
    if (*out > AOAI_DURATION_CAP) {
        *out = AOAI_DURATION_CAP;
    }
    return 1;
}

aoai_window_source aoai_window_from_headers(const aoai_ratelimit_headers *h,
                                            apr_time_t now,
                                            apr_interval_time_t *window,
                                            const char **bad_header)
{
    apr_interval_time_t value, reset = -1;
    int found_reset = 0;

    *bad_header = NULL;

    if (h->retry_after_ms) {
        if (aoai_parse_duration(h->retry_after_ms, 1, &value)) {
            *window = value;
            return AOAI_WINDOW_FOUND;
        }
        *bad_header = "retry-after-ms";
    }
    if (h->retry_after) {
        if (parse_retry_after(h->retry_after, now, &value)) {
            *window = value;
            return AOAI_WINDOW_FOUND;
        }
        if (!*bad_header) {
            *bad_header = "Retry-After";
        }
    }
    /* Either quota may be the one that ran out; waiting for the later
     * reset is the one that cannot earn a second 429. */
    if (h->reset_requests) {
        if (aoai_parse_duration(h->reset_requests, 0, &value)) {
            reset = value;
            found_reset = 1;
        }
        else if (!*bad_header) {
            *bad_header = "x-ratelimit-reset-requests";
        }
    }
    if (h->reset_tokens) {
        if (aoai_parse_duration(h->reset_tokens, 0, &value)) {
            if (value > reset) {
                reset = value;
            }
            found_reset = 1;
        }
        else if (!*bad_header) {
            *bad_header = "x-ratelimit-reset-tokens";
        }
    }
    if (found_reset) {
        *window = reset;
        return AOAI_WINDOW_FOUND;
    }
    return *bad_header ? AOAI_WINDOW_GARBAGE : AOAI_WINDOW_ABSENT;
}
