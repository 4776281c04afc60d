/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Throttle windows: a member that answered 429 (or a 5xx that names a
 * window) is skipped until the window it asked for has passed.
 *
 * The window comes from the answer's headers (aoai_ratelimit.c), clamped
 * to AOAIThrottleMax, AOAIThrottleDefault when it names none.  It goes
 * into the member's shared slot (aoai_table.c), raise-only, where every
 * child sees it at once and a graceful restart keeps it; a window that
 * moved is news to the other gateways (aoai_shared_cache.c).  The
 * member's headroom figures (0 on a 429) are forgotten, so that the window
 * alone says when it is back.
 */

#include "aoai_throttle.h"
#include "aoai_balancers.h"
#include "aoai_headroom.h"
#include "aoai_ratelimit.h"
#include "aoai_shared_cache.h"

#include "http_log.h"

APLOG_USE_MODULE(aoai_balancer);

void aoai_throttle_note(request_rec *r, aoai_call *call)
{
    const aoai_dir_conf *conf = call->conf;
    proxy_worker *worker = call->attempt.worker;
    aoai_member_slot *slot = aoai_table_member(call->balancer, worker);
    aoai_ratelimit_headers headers;
    apr_interval_time_t window;
    const char *bad_header;
    aoai_window_source source;
    apr_time_t now = apr_time_now();

    headers.retry_after_ms = apr_table_get(r->headers_out, "retry-after-ms");
    headers.retry_after = apr_table_get(r->headers_out, "Retry-After");
    headers.reset_requests = apr_table_get(r->headers_out,
                                           "x-ratelimit-reset-requests");
    headers.reset_tokens = apr_table_get(r->headers_out,
                                         "x-ratelimit-reset-tokens");

    source = aoai_ratelimit_window(&headers, now, &window, &bad_header);
    if (source != AOAI_WINDOW_FOUND && r->status != HTTP_TOO_MANY_REQUESTS) {
        /* A 5xx without a window is a failed attempt, not a full member. */
        aoai_shared_cache_release_last(r, call->balancer, worker);
        return;
    }
    if (aoai_table_garbage_once(slot, bad_header != NULL)) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, AOAI_LOGNO(020)
                      "%s: member %s sent an unusable %s header; using %s "
                      "(logged once until it sends a usable one)",
                      call->balancer->s->name, aoai_balancers_label(worker),
                      bad_header, source == AOAI_WINDOW_FOUND
                          ? "the next rate-limit header"
                          : "AOAIThrottleDefault");
    }
    if (source != AOAI_WINDOW_FOUND) {
        window = conf->throttle_default;
    }
    if (window > conf->throttle_max) {
        window = conf->throttle_max;
    }
    /* The window says when the member is back; an exact one is the end
     * of the member's quota window too (aoai_learn.c). */
    aoai_headroom_throttled(r, slot, conf, source == AOAI_WINDOW_FOUND,
                            now + window, now);
    if (aoai_table_raise_window(slot, now + window)) {
        /* Only a window that moved is news to the other gateways. */
        aoai_shared_cache_publish(r, call->balancer, worker, now + window);
    }
    /* The window is in the cache: the next gateway's call may go, and
     * will find it. */
    aoai_shared_cache_release_last(r, call->balancer, worker);
    if (r->status == HTTP_TOO_MANY_REQUESTS) {
        aoai_table_note_429(slot, now, window);
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(021)
                  "%s: member %s answered %d; throttled for %" APR_TIME_T_FMT
                  " ms", call->balancer->s->name,
                  aoai_balancers_label(worker), r->status,
                  apr_time_as_msec(window));
}

int aoai_throttle_is_on(proxy_balancer *balancer, proxy_worker *worker,
                        apr_time_t now)
{
    return now < aoai_table_window_end(aoai_table_member(balancer, worker));
}

/* When the first parked member comes back, or 0 when none is parked. */
apr_time_t aoai_throttle_soonest_end(proxy_balancer *balancer, apr_time_t now)
{
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    apr_time_t soonest = 0;
    int i;

    for (i = 0; i < balancer->workers->nelts; i++) {
        apr_time_t until;
        if (workers[i]->s->status
            & (PROXY_WORKER_DISABLED | PROXY_WORKER_STOPPED)) {
            continue;
        }
        until = aoai_table_window_end(aoai_table_member(balancer, workers[i]));
        if (until > now && (!soonest || until < soonest)) {
            soonest = until;
        }
    }
    return soonest;
}
