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
 * The remaining-figures of every answer are read here too.
 *
 * No httpd types here, only APR, so a fuzzer can drive this file alone.
 */

#include "aoai_ratelimit.h"

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

/* One number of a duration: digits with an optional fraction.  A whole
 * part past AOAI_WHOLE_CAP is more than any window can be: *saturated
 * says so, and the term is taken as the cap whatever its unit. */
static int parse_number(const char **p, apr_int64_t *whole,
                        apr_int64_t *fraction, apr_int64_t *scale,
                        int *saturated)
{
    int digits = 0;

    *whole = *fraction = 0;
    *scale = 1;
    *saturated = 0;
    for (; apr_isdigit(**p); (*p)++, digits++) {
        *whole = *whole * 10 + (**p - '0');
        if (*whole > AOAI_WHOLE_CAP) {
            *whole = AOAI_WHOLE_CAP;
            *saturated = 1;
        }
    }
    if (**p == '.') {
        for ((*p)++; apr_isdigit(**p); (*p)++, digits++) {
            if (*scale < 1000000) {
                *fraction = *fraction * 10 + (**p - '0');
                *scale *= 10;
            }
        }
    }
    return digits > 0;
}

/* The unit after a number, in microseconds; 0 when there is none that is
 * allowed here (a bare number only as the whole value). */
static apr_int64_t parse_unit(const char **p, int first, int plain_unit_ms)
{
    static const struct {
        const char *name;
        apr_int64_t usec;
    } units[] = {
        { "ms", 1000 }, { "us", 1 }, { "s", APR_USEC_PER_SEC },
        { "m", 60 * APR_USEC_PER_SEC }, { "h", 3600 * APR_USEC_PER_SEC },
    };
    apr_size_t i;

    for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        apr_size_t length = strlen(units[i].name);
        if (!strncmp(*p, units[i].name, length)) {
            *p += length;
            return units[i].usec;
        }
    }
    if (first && (!**p || apr_isspace(**p))) {
        return plain_unit_ms ? 1000 : APR_USEC_PER_SEC;
    }
    return 0;
}

int aoai_ratelimit_duration(const char *value, int plain_unit_ms,
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
        apr_int64_t whole, fraction, scale, unit;
        int saturated;

        if (!parse_number(&p, &whole, &fraction, &scale, &saturated)
            || !(unit = parse_unit(&p, terms == 0, plain_unit_ms))) {
            return 0;
        }
        /* whole * unit only when it cannot overflow */
        total = saturating_add(total,
                               (saturated || whole > AOAI_DURATION_CAP / unit)
                               ? AOAI_DURATION_CAP
                               : saturating_add(whole * unit,
                                                fraction * unit / scale));
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
        return !*q && aoai_ratelimit_duration(p, 0, out);
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

aoai_window_source aoai_ratelimit_window(const aoai_ratelimit_headers *h,
                                         apr_time_t now,
                                         apr_interval_time_t *window,
                                         const char **bad_header)
{
    apr_interval_time_t value, reset = -1;
    int found_reset = 0;

    *bad_header = NULL;

    if (h->retry_after_ms) {
        if (aoai_ratelimit_duration(h->retry_after_ms, 1, &value)) {
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
        if (aoai_ratelimit_duration(h->reset_requests, 0, &value)) {
            reset = value;
            found_reset = 1;
        }
        else if (!*bad_header) {
            *bad_header = "x-ratelimit-reset-requests";
        }
    }
    if (h->reset_tokens) {
        if (aoai_ratelimit_duration(h->reset_tokens, 0, &value)) {
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

/* Past spaces and tabs, as header values may have around a figure. */
static const char *past_blanks(const char *value)
{
    while (*value == ' ' || *value == '\t') {
        value++;
    }
    return value;
}

/* The digits at *value, at most max of them: their count (0: none, -1:
 * too many), *value moved past them. */
static int read_digits(const char **value, int max, apr_int64_t *n)
{
    int digits = 0;

    for (*n = 0; apr_isdigit(**value); (*value)++) {
        if (++digits > max) {
            return -1;
        }
        *n = *n * 10 + (**value - '0');
    }
    return digits;
}

int aoai_ratelimit_figure(const char *value, apr_int64_t *figure)
{
    apr_int64_t n;

    if (!value) {
        return 0;
    }
    value = past_blanks(value);
    if (read_digits(&value, 12, &n) <= 0 || *past_blanks(value)) {
        return 0;
    }
    *figure = n;
    return 1;
}

int aoai_ratelimit_utilization(const char *value, apr_int64_t *permille)
{
    apr_int64_t whole, tenths = 0;
    int digits;

    if (!value) {
        return 0;
    }
    value = past_blanks(value);
    if ((digits = read_digits(&value, 6, &whole)) < 0) {
        return 0;
    }
    if (*value == '.') {
        if (!apr_isdigit(value[1])) {
            return 0;
        }
        tenths = value[1] - '0';
        for (value++; apr_isdigit(*value); value++) {
        }
    }
    if (!digits || *value != '%' || *past_blanks(value + 1)) {
        return 0;
    }
    *permille = whole >= 100 ? 1000 : whole * 10 + tenths;
    return 1;
}
