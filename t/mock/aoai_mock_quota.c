/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * A member's quota as Azure applies it, with what a gateway cannot know
 * from outside made switchable:
 *   - where a window starts: at the first call after the last window ended
 *     (window_mode first_call, the mock's first behaviour) or on the wall
 *     clock, at multiples of the window length plus window_phase_ms;
 *   - what a call is admitted on: the tokens it will be charged (default)
 *     or, as Azure does, an estimate made at arrival (prompt + max_tokens,
 *     quota_estimate), while the window is charged the actual usage;
 *   - what the headers say: limits and resets (limit_headers), -1 or 0 for
 *     "unknown" (remaining_unknown), figures that never go back up
 *     (remaining_never_reset), tokens left on a 429 (odd_429_tokens_left);
 *   - provisioned (PTU) deployments: a utilization figure per window
 *     instead of remaining counts, 429 at 100%.
 */

#include "aoai_mock.h"

#include "apr_strings.h"

#include <limits.h>

/* Opens the window "now" falls in, zeroing what the last one counted. */
static void open_window(mock_member *m, const mock_behaviour *b,
                        apr_time_t now, apr_time_t window)
{
    apr_time_t start;

    if (!strcmp(b->window_mode, "wall_clock")) {
        apr_time_t phase = apr_time_from_msec(b->window_phase_ms) % window;
        start = now - (now - phase) % window;
    }
    else if (now >= m->window_start + window) {
        start = now;
    }
    else {
        return;
    }
    if (start != m->window_start) {
        m->window_start = start;
        m->window_requests = m->window_tokens = m->window_ptu_tokens = 0;
    }
}

static int ms_until(apr_time_t when, apr_time_t now)
{
    /* rounded up, as the service does: a client that waits exactly this
     * long finds the new window open */
    int ms = (int)((when - now + 999) / 1000);
    return ms < 1 ? 1 : ms;
}

static void admit_standard(mock_member *m, const mock_behaviour *b,
                           int estimate, int actual, mock_admission *a)
{
    if ((b->quota_requests && m->window_requests + 1 > b->quota_requests)
        || (b->quota_tokens && m->window_tokens + estimate > b->quota_tokens)) {
        a->over = 1;
    }
    else {
        m->window_requests++;
        m->window_tokens += actual;
    }
    a->limit_requests = b->quota_requests ? b->quota_requests : 1000;
    a->limit_tokens = b->quota_tokens ? b->quota_tokens : 120000;
    /* without a quota the figures stay where they are, as they always did */
    a->remaining_requests = b->quota_requests
        ? b->quota_requests - m->window_requests : 1000;
    a->remaining_tokens = b->quota_tokens
        ? b->quota_tokens - m->window_tokens : 120000;
    if (b->remaining_never_reset) {
        if (a->remaining_requests < m->floor_requests) {
            m->floor_requests = a->remaining_requests;
        }
        if (a->remaining_tokens < m->floor_tokens) {
            m->floor_tokens = a->remaining_tokens;
        }
        a->remaining_requests = m->floor_requests;
        a->remaining_tokens = m->floor_tokens;
    }
}

/* Provisioned: the estimates admitted this window (prompt + max_tokens,
 * as Azure computes utilization) against the capacity; a call is refused
 * once that reaches 100%, whatever it would need. */
static void admit_ptu(mock_member *m, const mock_behaviour *b, int estimate,
                      mock_admission *a)
{
    a->utilization = 100.0 * m->window_ptu_tokens / b->ptu_tokens;
    if (a->utilization >= 100.0) {
        a->over = 1;
        return;
    }
    m->window_requests++;
    m->window_tokens += estimate;
    m->window_ptu_tokens += estimate;
    a->utilization = 100.0 * m->window_ptu_tokens / b->ptu_tokens;
}

void mock_admit(mock_member *m, const mock_behaviour *b, int estimate,
                int actual, mock_admission *a)
{
    apr_time_t now = apr_time_now();
    apr_time_t window = apr_time_from_msec(b->quota_window_ms);

    memset(a, 0, sizeof(*a));
    apr_thread_mutex_lock(m->mutex);
    open_window(m, b, now, window);
    if (b->ptu_tokens > 0) {
        admit_ptu(m, b, estimate, a);
    }
    else {
        admit_standard(m, b, b->quota_estimate ? estimate : actual, actual, a);
    }
    a->reset_ms = ms_until(m->window_start + window, now);
    a->wait_ms = a->over ? a->reset_ms : 0;
    apr_thread_mutex_unlock(m->mutex);
}

/* "850ms" or "12.5s", as OpenAI writes its x-ratelimit-reset-* */
static const char *duration(apr_pool_t *p, int ms)
{
    char *text;
    apr_size_t n;

    if (ms < 1000) {
        return apr_psprintf(p, "%dms", ms);
    }
    text = apr_psprintf(p, "%d.%03d", ms / 1000, ms % 1000);
    n = strlen(text);
    while (text[n - 1] == '0') {
        text[--n] = '\0';
    }
    if (text[n - 1] == '.') {
        text[--n] = '\0';
    }
    return apr_pstrcat(p, text, "s", NULL);
}

static const char *utilization(apr_pool_t *p, double percent)
{
    return apr_psprintf(p, "%.1f%%", percent > 100.0 ? 100.0 : percent);
}

/* The headers of an admitted call's answer. */
void mock_admission_headers(request_rec *r, const mock_behaviour *b,
                            const mock_admission *a)
{
    apr_table_t *h = r->headers_out;
    int unknown = strcmp(b->remaining_unknown, "none") != 0;

    if (b->ptu_tokens > 0) {
        /* provisioned answers carry utilization, no x-ratelimit-* */
        apr_table_setn(h, "azure-openai-deployment-utilization",
                       utilization(r->pool, a->utilization));
        return;
    }
    apr_table_setn(h, "x-ratelimit-remaining-requests", unknown
                   ? b->remaining_unknown : apr_itoa(r->pool, a->remaining_requests));
    apr_table_setn(h, "x-ratelimit-remaining-tokens", unknown
                   ? b->remaining_unknown : apr_itoa(r->pool, a->remaining_tokens));
    if (b->limit_headers) {
        apr_table_setn(h, "x-ratelimit-limit-requests",
                       apr_itoa(r->pool, a->limit_requests));
        apr_table_setn(h, "x-ratelimit-limit-tokens",
                       apr_itoa(r->pool, a->limit_tokens));
        apr_table_setn(h, "x-ratelimit-reset-requests",
                       duration(r->pool, a->reset_ms));
        apr_table_setn(h, "x-ratelimit-reset-tokens",
                       duration(r->pool, a->reset_ms));
    }
}

/* The 429 of a call the window has no room for. */
void mock_refuse(request_rec *r, const mock_behaviour *b,
                 const mock_admission *a)
{
    int wait_s = (a->wait_ms + 999) / 1000;

    if (b->ptu_tokens > 0) {
        apr_table_setn(r->headers_out, "retry-after-ms",
                       apr_itoa(r->pool, a->wait_ms));
        apr_table_setn(r->headers_out, "Retry-After", apr_itoa(r->pool, wait_s));
        apr_table_setn(r->headers_out, "azure-openai-deployment-utilization",
                       utilization(r->pool, a->utilization));
        mock_azure_error(r, 429, "429", apr_psprintf(r->pool,
            "Requests to the ChatCompletions_Create Operation under Azure "
            "OpenAI API have exceeded the provisioned throughput of this "
            "deployment. Please retry after %d seconds.", wait_s));
        return;
    }
    mock_answer_429(r, b, a->wait_ms);
    if (b->odd_429_tokens_left) {
        apr_table_setn(r->headers_out, "x-ratelimit-remaining-tokens",
                       apr_itoa(r->pool, a->remaining_tokens > 0
                                ? a->remaining_tokens : 1));
    }
}

/* A new window, and the never-reset figures from the top (mutex held). */
void mock_quota_reset(mock_member *m)
{
    m->window_start = 0;
    m->window_requests = m->window_tokens = m->window_ptu_tokens = 0;
    m->floor_requests = m->floor_tokens = INT_MAX;
}

/* The window as it stands, for /mock/stats (mutex held). */
json_t *mock_window_json(mock_member *m)
{
    const mock_behaviour *b = &m->now;

    return json_pack("{s:s,s:I,s:i,s:i,s:i,s:f}",
                     "mode", b->window_mode,
                     "start_ms", (json_int_t)apr_time_as_msec(m->window_start),
                     "requests", m->window_requests,
                     "tokens", m->window_tokens,
                     "ptu_tokens", m->window_ptu_tokens,
                     "ptu_utilization", b->ptu_tokens > 0
                         ? 100.0 * m->window_ptu_tokens / b->ptu_tokens : 0.0);
}
