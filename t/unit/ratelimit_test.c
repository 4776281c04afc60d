/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Unit test for modules/aoai_ratelimit_headers.c: what a member's 429 says
 * about its window.  Drives the pure parser directly (APR only, no httpd
 * runtime) and prints TAP; t/10_ratelimit_headers.t builds and runs it.
 *
 * Assertions marked TODO state the correct expectation for a known parser
 * bug; prove reports them as "TODO passed" once the parser is fixed, and
 * then the TODO mark should be dropped.
 */

#include "aoai_ratelimit.h"

#include "apr_general.h"
#include "apr_date.h"
#include "apr_time.h"

#include <stdio.h>
#include <string.h>

#define SEC(n)   ((apr_interval_time_t)(n) * APR_USEC_PER_SEC)
#define MSEC(n)  ((apr_interval_time_t)(n) * 1000)
/* The parser's saturation cap: 366 days. */
#define CAP      SEC((apr_int64_t)86400 * 366)

static int tests_run;
static int tests_failed;

static const char *source_name(aoai_window_source s)
{
    switch (s) {
    case AOAI_WINDOW_ABSENT:  return "ABSENT";
    case AOAI_WINDOW_FOUND:   return "FOUND";
    case AOAI_WINDOW_GARBAGE: return "GARBAGE";
    }
    return "?";
}

static const char *str_or_null(const char *s)
{
    return s ? s : "(null)";
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* One TAP line; todo is NULL or the reason the assertion is expected to
 * fail for now.  A failing TODO assertion does not fail the run. */
static void report(int pass, const char *todo, const char *desc,
                   const char *got, const char *expected)
{
    tests_run++;
    printf("%sok %d - %s", pass ? "" : "not ", tests_run, desc);
    if (todo) {
        printf(" # TODO %s", todo);
    }
    printf("\n");
    if (!pass) {
        printf("# got %s expected %s\n", got, expected);
        if (!todo) {
            tests_failed++;
        }
    }
    fflush(stdout);
}

static aoai_ratelimit_headers hdrs(const char *retry_after_ms,
                                   const char *retry_after,
                                   const char *reset_requests,
                                   const char *reset_tokens)
{
    aoai_ratelimit_headers h;
    h.retry_after_ms = retry_after_ms;
    h.retry_after = retry_after;
    h.reset_requests = reset_requests;
    h.reset_tokens = reset_tokens;
    return h;
}

/* aoai_ratelimit_window: source, window (when FOUND) and bad_header
 * all have to match for the assertion to pass. */
/* aoai_ratelimit_utilization (issue 19): ok and permille. */
static void check_utilization(const char *value, int expect_ok,
                              apr_int64_t expect)
{
    apr_int64_t got = -7;
    int ok = aoai_ratelimit_utilization(value, &got);
    char want[64], have[64], desc[96];

    snprintf(desc, sizeof(desc), "utilization '%s'", value ? value : "(null)");
    snprintf(want, sizeof(want), "%d/%" APR_INT64_T_FMT, expect_ok,
             expect_ok ? expect : (apr_int64_t)-7);
    snprintf(have, sizeof(have), "%d/%" APR_INT64_T_FMT, ok, got);
    report(ok == expect_ok && got == (expect_ok ? expect : -7), NULL,
           desc, have, want);
}

static void check_window(const char *desc, aoai_ratelimit_headers h,
                         apr_time_t now, aoai_window_source want_source,
                         apr_interval_time_t want_window,
                         const char *want_bad)
{
    apr_interval_time_t window = -1;
    const char *bad = "(not set)";
    aoai_window_source got_source;
    char got[256], expected[256];
    int pass;

    got_source = aoai_ratelimit_window(&h, now, &window, &bad);
    pass = got_source == want_source
        && (want_source != AOAI_WINDOW_FOUND || window == want_window)
        && same_str(bad, want_bad);

    snprintf(got, sizeof(got), "%s window=%" APR_INT64_T_FMT " bad=%s",
             source_name(got_source), (apr_int64_t)window, str_or_null(bad));
    if (want_source == AOAI_WINDOW_FOUND) {
        snprintf(expected, sizeof(expected),
                 "%s window=%" APR_INT64_T_FMT " bad=%s",
                 source_name(want_source), (apr_int64_t)want_window,
                 str_or_null(want_bad));
    }
    else {
        snprintf(expected, sizeof(expected), "%s bad=%s",
                 source_name(want_source), str_or_null(want_bad));
    }
    report(pass, NULL, desc, got, expected);
}

/* aoai_ratelimit_window must find a window in (0, CAP]. */
static void check_window_saturates(const char *desc, const char *todo,
                                   aoai_ratelimit_headers h, apr_time_t now)
{
    apr_interval_time_t window = -424242;
    const char *bad = "(not set)";
    aoai_window_source got_source;
    char got[256], expected[256];

    got_source = aoai_ratelimit_window(&h, now, &window, &bad);
    snprintf(got, sizeof(got), "%s window=%" APR_INT64_T_FMT " bad=%s",
             source_name(got_source), (apr_int64_t)window, str_or_null(bad));
    snprintf(expected, sizeof(expected),
             "FOUND 0 < window <= %" APR_INT64_T_FMT " bad=(null)",
             (apr_int64_t)CAP);
    report(got_source == AOAI_WINDOW_FOUND && window > 0 && window <= CAP
           && bad == NULL, todo, desc, got, expected);
}

/* aoai_ratelimit_duration returning exactly want_out (want_ok), or rejecting
 * the value and leaving *out alone (!want_ok). */
static void check_duration(const char *desc, const char *todo,
                           const char *value, int plain_unit_ms,
                           int want_ok, apr_interval_time_t want_out)
{
    const apr_interval_time_t sentinel = -424242;
    apr_interval_time_t out = sentinel;
    char got[128], expected[128];
    int ok = aoai_ratelimit_duration(value, plain_unit_ms, &out);

    snprintf(got, sizeof(got), "ret=%d out=%" APR_INT64_T_FMT,
             ok, (apr_int64_t)out);
    if (want_ok) {
        snprintf(expected, sizeof(expected), "ret=1 out=%" APR_INT64_T_FMT,
                 (apr_int64_t)want_out);
        report(ok == 1 && out == want_out, todo, desc, got, expected);
    }
    else {
        snprintf(expected, sizeof(expected),
                 "ret=0 out=%" APR_INT64_T_FMT " (untouched)",
                 (apr_int64_t)sentinel);
        report(ok == 0 && out == sentinel, todo, desc, got, expected);
    }
}

/* aoai_ratelimit_duration must accept the value with a result in (0, CAP]. */
static void check_duration_saturates(const char *desc, const char *todo,
                                     const char *value, int plain_unit_ms)
{
    apr_interval_time_t out = -1;
    char got[128], expected[128];
    int ok = aoai_ratelimit_duration(value, plain_unit_ms, &out);

    snprintf(got, sizeof(got), "ret=%d out=%" APR_INT64_T_FMT,
             ok, (apr_int64_t)out);
    snprintf(expected, sizeof(expected),
             "ret=1 0 < out <= %" APR_INT64_T_FMT, (apr_int64_t)CAP);
    report(ok == 1 && out > 0 && out <= CAP, todo, desc, got, expected);
}

int main(void)
{
    const apr_time_t now = apr_time_from_sec(1700000000);
    char in_30s[APR_RFC822_DATE_LEN];
    char an_hour_ago[APR_RFC822_DATE_LEN];
    char right_now[APR_RFC822_DATE_LEN];
    const char *rams = "retry-after-ms";
    const char *ra = "Retry-After";
    const char *rrq = "x-ratelimit-reset-requests";
    const char *rtk = "x-ratelimit-reset-tokens";

    apr_initialize();

    apr_rfc822_date(in_30s, now + SEC(30));
    apr_rfc822_date(an_hour_ago, now - SEC(3600));
    apr_rfc822_date(right_now, now);
    printf("# now = %s; now + 30 s = %s\n", right_now, in_30s);

    /* --- retry-after-ms: plain milliseconds ----------------------------- */
    check_window("retry-after-ms 1500 is 1.5 s",
                 hdrs("1500", NULL, NULL, NULL), now,
                 AOAI_WINDOW_FOUND, MSEC(1500), NULL);
    check_window("retry-after-ms 0 is 0",
                 hdrs("0", NULL, NULL, NULL), now,
                 AOAI_WINDOW_FOUND, 0, NULL);
    check_window("retry-after-ms ' 250 ' (surrounding whitespace) is 250 ms",
                 hdrs(" 250 ", NULL, NULL, NULL), now,
                 AOAI_WINDOW_FOUND, MSEC(250), NULL);
    check_window("retry-after-ms 1500.5 is 1500500 us",
                 hdrs("1500.5", NULL, NULL, NULL), now,
                 AOAI_WINDOW_FOUND, 1500500, NULL);
    check_window("retry-after-ms -5 is rejected",
                 hdrs("-5", NULL, NULL, NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, rams);
    check_window("retry-after-ms abc is rejected",
                 hdrs("abc", NULL, NULL, NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, rams);
    check_window("retry-after-ms empty is rejected",
                 hdrs("", NULL, NULL, NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, rams);
    check_window("retry-after-ms 12x is rejected",
                 hdrs("12x", NULL, NULL, NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, rams);

    /* --- Retry-After: delta-seconds or HTTP-date (RFC 9110 10.2.3) ------ */
    check_window("Retry-After 7 is 7 s",
                 hdrs(NULL, "7", NULL, NULL), now,
                 AOAI_WINDOW_FOUND, SEC(7), NULL);
    check_window("Retry-After ' 7 ' (surrounding whitespace) is 7 s",
                 hdrs(NULL, " 7 ", NULL, NULL), now,
                 AOAI_WINDOW_FOUND, SEC(7), NULL);
    check_window("Retry-After 1.5 is not delta-seconds",
                 hdrs(NULL, "1.5", NULL, NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, ra);
    check_window("Retry-After 7s is not delta-seconds (no units)",
                 hdrs(NULL, "7s", NULL, NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, ra);
    check_window("Retry-After HTTP-date now + 30 s is exactly 30 s",
                 hdrs(NULL, in_30s, NULL, NULL), now,
                 AOAI_WINDOW_FOUND, SEC(30), NULL);
    check_window("Retry-After HTTP-date an hour ago is 0",
                 hdrs(NULL, an_hour_ago, NULL, NULL), now,
                 AOAI_WINDOW_FOUND, 0, NULL);
    check_window("Retry-After HTTP-date equal to now is 0",
                 hdrs(NULL, right_now, NULL, NULL), now,
                 AOAI_WINDOW_FOUND, 0, NULL);
    check_window("Retry-After 'soon' is rejected",
                 hdrs(NULL, "soon", NULL, NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, ra);
    check_window("Retry-After empty is rejected",
                 hdrs(NULL, "", NULL, NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, ra);

    /* --- precedence ------------------------------------------------------ */
    check_window("retry-after-ms beats Retry-After and x-ratelimit-reset-*",
                 hdrs("1500", "7", "60", "90"), now,
                 AOAI_WINDOW_FOUND, MSEC(1500), NULL);
    check_window("Retry-After beats x-ratelimit-reset-*",
                 hdrs(NULL, "7", "60", "90"), now,
                 AOAI_WINDOW_FOUND, SEC(7), NULL);
    check_window("valid retry-after-ms wins before a bad Retry-After is read",
                 hdrs("1500", "soon", NULL, NULL), now,
                 AOAI_WINDOW_FOUND, MSEC(1500), NULL);
    check_window("garbage retry-after-ms, valid Retry-After: Retry-After's "
                 "value, bad_header retry-after-ms",
                 hdrs("abc", "7", NULL, NULL), now,
                 AOAI_WINDOW_FOUND, SEC(7), rams);
    check_window("garbage retry-after-ms and Retry-After, valid reset: "
                 "reset's value, first bad header named",
                 hdrs("abc", "soon", NULL, "5s"), now,
                 AOAI_WINDOW_FOUND, SEC(5), rams);
    check_window("garbage Retry-After, valid reset: reset's value, "
                 "bad_header Retry-After",
                 hdrs(NULL, "soon", "2s", NULL), now,
                 AOAI_WINDOW_FOUND, SEC(2), ra);
    check_window("all garbage: GARBAGE naming the first bad header",
                 hdrs("abc", "soon", "junk", "junk"), now,
                 AOAI_WINDOW_GARBAGE, 0, rams);

    /* --- x-ratelimit-reset-requests / -tokens: Go durations or seconds -- */
    check_window("x-ratelimit-reset-requests 6m0s is 360 s",
                 hdrs(NULL, NULL, "6m0s", NULL), now,
                 AOAI_WINDOW_FOUND, SEC(360), NULL);
    check_window("x-ratelimit-reset-tokens 20ms is 20 ms",
                 hdrs(NULL, NULL, NULL, "20ms"), now,
                 AOAI_WINDOW_FOUND, MSEC(20), NULL);
    check_window("x-ratelimit-reset-requests 1h2m3.5s is 3723.5 s",
                 hdrs(NULL, NULL, "1h2m3.5s", NULL), now,
                 AOAI_WINDOW_FOUND, 3723500000LL, NULL);
    check_window("x-ratelimit-reset-tokens 1.25 (plain seconds) is 1.25 s",
                 hdrs(NULL, NULL, NULL, "1.25"), now,
                 AOAI_WINDOW_FOUND, 1250000, NULL);
    check_window("both resets present: the larger (requests) wins",
                 hdrs(NULL, NULL, "6m0s", "20ms"), now,
                 AOAI_WINDOW_FOUND, SEC(360), NULL);
    check_window("both resets present: the larger (tokens) wins",
                 hdrs(NULL, NULL, "1s", "1m"), now,
                 AOAI_WINDOW_FOUND, SEC(60), NULL);
    check_window("x-ratelimit-reset-requests 1s5 is rejected",
                 hdrs(NULL, NULL, "1s5", NULL), now,
                 AOAI_WINDOW_GARBAGE, 0, rrq);
    check_window("x-ratelimit-reset-tokens m is rejected",
                 hdrs(NULL, NULL, NULL, "m"), now,
                 AOAI_WINDOW_GARBAGE, 0, rtk);
    check_window("bad reset-requests, valid reset-tokens: tokens' value, "
                 "bad_header x-ratelimit-reset-requests",
                 hdrs(NULL, NULL, "junk", "3s"), now,
                 AOAI_WINDOW_FOUND, SEC(3), rrq);

    /* --- nothing at all -------------------------------------------------- */
    check_window("no rate-limit headers: ABSENT, bad_header NULL",
                 hdrs(NULL, NULL, NULL, NULL), now,
                 AOAI_WINDOW_ABSENT, 0, NULL);

    /* --- aoai_ratelimit_duration directly ------------------------------------ */
    check_duration("parse_duration(NULL) returns 0", NULL, NULL, 0, 0, 0);
    check_duration("parse_duration('   ') returns 0", NULL, "   ", 1, 0, 0);
    check_duration("parse_duration('.') returns 0", NULL, ".", 0, 0, 0);
    check_duration("parse_duration('5 s') returns 0 (space before unit)",
                   NULL, "5 s", 0, 0, 0);
    check_duration("parse_duration('1.5', seconds) is 1.5 s",
                   NULL, "1.5", 0, 1, 1500000);
    check_duration("parse_duration('1.5', ms) is 1.5 ms",
                   NULL, "1.5", 1, 1, 1500);
    check_duration("parse_duration('1m30s') is 90 s",
                   NULL, "1m30s", 0, 1, SEC(90));
    check_duration("parse_duration('1.5h') is 5400 s",
                   NULL, "1.5h", 0, 1, SEC(5400));
    check_duration("parse_duration('250us') is 250 us",
                   NULL, "250us", 0, 1, 250);

    /* --- saturation: huge values stay within (0, 366 days] -------------- */
    check_window_saturates("retry-after-ms 99999999999999999999999 does not "
                           "overflow", NULL,
                           hdrs("99999999999999999999999", NULL, NULL, NULL),
                           now);
    check_duration_saturates("parse_duration('99999999999999999999999', ms) "
                             "does not overflow", NULL,
                             "99999999999999999999999", 1);
    check_duration("parse_duration('1000000000h') saturates to 366 days",
                   NULL, "1000000000h", 0, 1, CAP);
    check_window("Retry-After 99999999999999999999 saturates to 366 days",
                 hdrs(NULL, "99999999999999999999", NULL, NULL), now,
                 AOAI_WINDOW_FOUND, CAP, NULL);
    check_duration_saturates("parse_duration('999999999999h') does not "
                             "overflow", NULL,
                             "999999999999h", 0);
    check_window_saturates("retry-after-ms 999999999999h does not overflow",
                           NULL, hdrs("999999999999h", NULL, NULL, NULL), now);
    check_window_saturates("x-ratelimit-reset-tokens 999999999999h does not "
                           "overflow", NULL,
                           hdrs(NULL, NULL, NULL, "999999999999h"), now);
    check_duration("parse_duration('20000000000ms') is exactly 2e7 s",
                   NULL, "20000000000ms", 0, 1, SEC(20000000));

    check_utilization("97.5%", 1, 975);
    check_utilization("0%", 1, 0);
    check_utilization(" 100% ", 1, 1000);
    check_utilization("250.0%", 1, 1000);
    check_utilization("12.34%", 1, 123);
    check_utilization("97.5", 0, 0);
    check_utilization("-1%", 0, 0);
    check_utilization("%", 0, 0);
    check_utilization("5.%", 0, 0);
    check_utilization("9999999%", 0, 0);
    check_utilization(NULL, 0, 0);

    printf("1..%d\n", tests_run);
    if (tests_failed) {
        printf("# %d of %d assertions failed\n", tests_failed, tests_run);
    }
    apr_terminate();
    return tests_failed ? 1 : 0;
}
