/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * What the balancer is doing, where an httpd admin already looks.
 *
 * balancer-manager.  The stock page has no hook for other modules, and the
 * one flag it shows that would say "not now", PROXY_WORKER_IN_ERROR, is
 * also mod_proxy's order to drop every connection to the member, calls in
 * flight included: a throttled member is not marked there (see
 * aoai_lbmethod.c); its window shows on the pages below.
 *
 * server-status.  With ExtendedStatus On, a section per aoai balancer; the
 * ?auto form has one "AOAIMember:" line per member and one
 * "AOAIKeyTokens:" line per subscription key and member.
 *
 * aoai-balancer-status.  The same figures as JSON (jansson), for scripts:
 *     <Location "/aoai-status">
 *         SetHandler aoai-balancer-status
 *         Require ip 127.0.0.1
 *     </Location>
 */

#include "aoai_status.h"
#include "aoai_balancers.h"
#include "aoai_headroom.h"
#include "aoai_json.h"
#include "aoai_learn.h"
#include "aoai_shared_cache.h"
#include "aoai_table.h"

#include "apr_strings.h"
#include "apr_optional_hooks.h"

#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "mod_status.h"

#include <jansson.h>

APLOG_USE_MODULE(aoai_balancer);

#define STATUS_HANDLER "aoai-balancer-status"

/* ------------------------------------------------------------------ */
/* One snapshot, three renderings                                      */

static const char *member_state(const proxy_worker *worker, apr_time_t now,
                                const aoai_member_stats *stats)
{
    unsigned int status = worker->s->status;

    if (status & PROXY_WORKER_STOPPED) {
        return "stopped";
    }
    if (status & PROXY_WORKER_DISABLED) {
        return "disabled";
    }
    if (now < stats->throttle_until) {
        return "throttled";
    }
    if (status & (PROXY_WORKER_IN_ERROR | PROXY_WORKER_HC_FAIL)) {
        return "error";
    }
    if (status & PROXY_WORKER_DRAIN) {
        return "draining";
    }
    return "ok";
}

/* The member as the balancer page and the metrics name it: "ok" split
 * into serving and headroom-low, the latter when its last figures leave
 * it less than a tenth of its limit (the floor itself is per location,
 * AOAIHeadroomFloor, which a page for the whole server cannot pick).
 * Figures of a window that began over a minute ago (the longest default
 * AOAIHeadroomWindow) are taken to have refilled. */
const char *aoai_status_state(const aoai_member_view *view, apr_time_t now)
{
    int kind;

    if (strcmp(view->state, "ok")) {
        return view->state;
    }
    for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
        apr_int64_t left = view->stats.headroom_remaining[kind];
        apr_int64_t limit = view->stats.headroom_limit[kind];

        if (left >= 0 && limit > 0 && left * 10 < limit
            && now - view->stats.headroom_window_start[kind]
               < apr_time_from_sec(60)) {
            return "headroom-low";
        }
    }
    return "serving";
}

static void collect_key(const char *label, const aoai_member_stats *stats,
                        void *baton)
{
    aoai_member_view *view = baton;
    aoai_key_view *key = apr_array_push(view->keys);

    key->label = apr_pstrdup(view->keys->pool, label);
    key->stats = *stats;
}

static apr_status_t collect_balancer(server_rec *s, proxy_balancer *balancer,
                                     void *baton)
{
    aoai_snapshot *snapshot = baton;
    proxy_worker **workers;
    int i;

    aoai_balancers_sync(s, balancer);
    workers = (proxy_worker **)balancer->workers->elts;
    for (i = 0; i < balancer->workers->nelts; i++) {
        aoai_member_view *view = apr_array_push(snapshot->members);
        aoai_member_slot *slot = aoai_table_member(balancer, workers[i]);

        view->balancer = balancer;
        view->worker = workers[i];
        aoai_table_stats(slot, &view->stats);
        view->state = member_state(workers[i], snapshot->now, &view->stats);
        view->keys = apr_array_make(snapshot->pool, 4, sizeof(aoai_key_view));
        aoai_table_each_key(slot, collect_key, view);
    }
    return APR_SUCCESS;
}

aoai_snapshot *aoai_status_snapshot(request_rec *r)
{
    aoai_snapshot *snapshot = apr_pcalloc(r->pool, sizeof(*snapshot));

    snapshot->pool = r->pool;
    snapshot->now = apr_time_now();
    snapshot->members = apr_array_make(r->pool, 8, sizeof(aoai_member_view));
    aoai_balancers_each(ap_server_conf, collect_balancer, snapshot);
    return snapshot;
}

const char *aoai_status_iso_time(apr_pool_t *pool, apr_time_t t)
{
    apr_time_exp_t tm;

    apr_time_exp_gmt(&tm, t);
    return apr_psprintf(pool, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                        tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                        tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_usec / 1000);
}

apr_int64_t aoai_status_window_left_ms(const aoai_member_view *view,
                                       apr_time_t now)
{
    apr_interval_time_t left = view->stats.throttle_until - now;
    return left > 0 ? (left + 999) / 1000 : 0;
}

double aoai_status_weight(const proxy_worker *worker)
{
    return (double)worker->s->lbfactor / 100.0;
}

/* ------------------------------------------------------------------ */
/* server-status                                                        */

/* Milliseconds since the shared cache's last good sync; -1 for none. */
static apr_int64_t sync_age_ms(const aoai_cache_view *cache, apr_time_t now)
{
    return cache->last_sync ? apr_time_as_msec(now - cache->last_sync) : -1;
}

static void cache_html(request_rec *r, apr_time_t now)
{
    aoai_cache_view cache;
    const apr_uint64_t *c = cache.counters;

    if (!aoai_shared_cache_view(&cache)) {
        ap_rputs("<p>Shared cache: none (AOAISharedCache): throttle windows "
                 "are this gateway's own.</p>\n", r);
        return;
    }
    ap_rvputs(r, "<p>Shared cache: ", ap_escape_html(r->pool, cache.provider),
              cache.reachable ? ", reachable" : ", <b>unreachable</b>", NULL);
    if (cache.last_sync) {
        ap_rprintf(r, ", last synced %s (%" APR_INT64_T_FMT " ms ago)",
                   aoai_status_iso_time(r->pool, cache.last_sync),
                   sync_age_ms(&cache, now));
    }
    ap_rprintf(r, "; %" APR_UINT64_T_FMT " syncs, %" APR_UINT64_T_FMT
               " failed; %" APR_UINT64_T_FMT " windows published, %"
               APR_UINT64_T_FMT " failed; %" APR_UINT64_T_FMT " learned "
               "from other gateways; %" APR_UINT64_T_FMT " values "
               "rejected.</p>\n", c[AOAI_CACHE_SYNCS],
               c[AOAI_CACHE_SYNC_FAILURES], c[AOAI_CACHE_PUBLISHED],
               c[AOAI_CACHE_PUBLISH_FAILURES], c[AOAI_CACHE_LEARNED],
               c[AOAI_CACHE_REJECTED]);
}

static void cache_auto(request_rec *r, apr_time_t now)
{
    aoai_cache_view cache;
    const apr_uint64_t *c = cache.counters;

    if (!aoai_shared_cache_view(&cache)) {
        ap_rputs("AOAISharedCache: off\n", r);
        return;
    }
    ap_rprintf(r, "AOAISharedCache: provider=%s reachable=%d "
               "last_sync_age_ms=%" APR_INT64_T_FMT " syncs=%"
               APR_UINT64_T_FMT " sync_failures=%" APR_UINT64_T_FMT
               " published=%" APR_UINT64_T_FMT " publish_failures=%"
               APR_UINT64_T_FMT " learned=%" APR_UINT64_T_FMT " rejected=%"
               APR_UINT64_T_FMT "\n", cache.provider, cache.reachable,
               sync_age_ms(&cache, now), c[AOAI_CACHE_SYNCS],
               c[AOAI_CACHE_SYNC_FAILURES], c[AOAI_CACHE_PUBLISHED],
               c[AOAI_CACHE_PUBLISH_FAILURES], c[AOAI_CACHE_LEARNED],
               c[AOAI_CACHE_REJECTED]);
}

static void member_row_html(request_rec *r, const aoai_member_view *view,
                            apr_time_t now)
{
    const apr_uint64_t *c = view->stats.counters;

    ap_rvputs(r, "<tr><td>",
              ap_escape_html(r->pool, view->worker->s->name_ex), "</td><td>",
              ap_escape_html(r->pool, view->worker->s->route), "</td>", NULL);
    ap_rprintf(r, "<td>%d</td><td>%.2f</td><td>", view->worker->s->lbset,
               aoai_status_weight(view->worker));
    if (!strcmp(view->state, "throttled")) {
        ap_rprintf(r, "throttled until %s (%" APR_INT64_T_FMT " ms)",
                   aoai_status_iso_time(r->pool, view->stats.throttle_until),
                   aoai_status_window_left_ms(view, now));
    }
    else {
        ap_rputs(view->state, r);
    }
    ap_rprintf(r, "</td><td>%" APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
               "</td><td>%" APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
               "</td><td>", c[AOAI_COUNT_REQUESTS], c[AOAI_COUNT_SERVED],
               c[AOAI_COUNT_THROTTLED], c[AOAI_COUNT_FAILOVERS]);
    if (view->stats.last_throttled) {
        ap_rprintf(r, "%" APR_UINT64_T_FMT " ms at %s",
                   c[AOAI_COUNT_LAST_WINDOW_MS],
                   aoai_status_iso_time(r->pool, view->stats.last_throttled));
    }
    ap_rprintf(r, "</td><td>%" APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
               "</td><td>%" APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
               " of %" APR_UINT64_T_FMT "</td></tr>\n",
               c[AOAI_COUNT_PROMPT_TOKENS], c[AOAI_COUNT_COMPLETION_TOKENS],
               c[AOAI_COUNT_TOTAL_TOKENS], c[AOAI_COUNT_SESSIONS_OPEN],
               c[AOAI_COUNT_SESSIONS]);
}

static void keys_html(request_rec *r, const aoai_snapshot *snapshot)
{
    const aoai_member_view *views =
        (const aoai_member_view *)snapshot->members->elts;
    int i, k;

    ap_rputs("<h3>Tokens by subscription key</h3>\n<table border=\"0\"><tr>"
             "<th>Key</th><th>Balancer</th><th>Member</th><th>Served</th>"
             "<th>Prompt tokens</th><th>Completion tokens</th>"
             "<th>Total tokens</th></tr>\n", r);
    for (i = 0; i < snapshot->members->nelts; i++) {
        const aoai_member_view *view = &views[i];
        const aoai_key_view *key = (const aoai_key_view *)view->keys->elts;

        for (k = 0; k < view->keys->nelts; k++, key++) {
            const apr_uint64_t *c = key->stats.counters;
            ap_rvputs(r, "<tr><td>", ap_escape_html(r->pool, key->label),
                      "</td><td>",
                      ap_escape_html(r->pool, view->balancer->s->name),
                      "</td><td>",
                      ap_escape_html(r->pool, view->worker->s->name_ex),
                      "</td>", NULL);
            ap_rprintf(r, "<td>%" APR_UINT64_T_FMT "</td><td>%"
                       APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
                       "</td><td>%" APR_UINT64_T_FMT "</td></tr>\n",
                       c[AOAI_COUNT_SERVED], c[AOAI_COUNT_PROMPT_TOKENS],
                       c[AOAI_COUNT_COMPLETION_TOKENS],
                       c[AOAI_COUNT_TOTAL_TOKENS]);
        }
    }
    ap_rputs("</table>\n", r);
}

static void status_html(request_rec *r, const aoai_snapshot *snapshot)
{
    const aoai_member_view *views =
        (const aoai_member_view *)snapshot->members->elts;
    const proxy_balancer *shown = NULL;
    int i, keys = 0;

    ap_rputs("<hr />\n<h2>Azure OpenAI balancers (mod_aoai_balancer)</h2>\n",
             r);
    cache_html(r, snapshot->now);
    for (i = 0; i < snapshot->members->nelts; i++) {
        if (views[i].balancer != shown) {
            if (shown) {
                ap_rputs("</table>\n", r);
            }
            shown = views[i].balancer;
            ap_rvputs(r, "<h3>", ap_escape_html(r->pool, shown->s->name),
                      "</h3>\n<table border=\"0\"><tr><th>Member</th>"
                      "<th>Route</th><th>Priority</th><th>Weight</th>"
                      "<th>State</th><th>Requests</th><th>Served</th>"
                      "<th>429s</th><th>Failovers out</th>"
                      "<th>Last Retry-After</th><th>Prompt tokens</th>"
                      "<th>Completion tokens</th><th>Total tokens</th>"
                      "<th>Realtime sessions open</th></tr>\n", NULL);
        }
        member_row_html(r, &views[i], snapshot->now);
        keys += views[i].keys->nelts;
    }
    if (shown) {
        ap_rputs("</table>\n", r);
    }
    if (keys) {
        keys_html(r, snapshot);
    }
}

/* ?auto: "Key: value" like the rest of the page; the value is
 * space-separated name=value pairs, none of which contains a space
 * (member URLs and balancer names cannot). */
static void status_auto(request_rec *r, const aoai_snapshot *snapshot)
{
    const aoai_member_view *views =
        (const aoai_member_view *)snapshot->members->elts;
    int i;

    for (i = 0; i < snapshot->members->nelts; i++) {
        const aoai_member_view *view = &views[i];
        const apr_uint64_t *c = view->stats.counters;
        const aoai_key_view *key = (const aoai_key_view *)view->keys->elts;
        int k;

        ap_rprintf(r, "AOAIMember: balancer=%s member=%s route=%s "
                   "priority=%d weight=%.2f state=%s throttled_for_ms=%"
                   APR_INT64_T_FMT " requests=%" APR_UINT64_T_FMT
                   " served=%" APR_UINT64_T_FMT " throttled=%"
                   APR_UINT64_T_FMT " failovers=%" APR_UINT64_T_FMT
                   " last_retry_after_ms=%" APR_UINT64_T_FMT
                   " prompt_tokens=%" APR_UINT64_T_FMT
                   " completion_tokens=%" APR_UINT64_T_FMT
                   " total_tokens=%" APR_UINT64_T_FMT
                   " sessions=%" APR_UINT64_T_FMT
                   " sessions_open=%" APR_UINT64_T_FMT "\n",
                   view->balancer->s->name, view->worker->s->name_ex,
                   *view->worker->s->route ? view->worker->s->route : "-",
                   view->worker->s->lbset, aoai_status_weight(view->worker),
                   view->state,
                   aoai_status_window_left_ms(view, snapshot->now),
                   c[AOAI_COUNT_REQUESTS], c[AOAI_COUNT_SERVED],
                   c[AOAI_COUNT_THROTTLED], c[AOAI_COUNT_FAILOVERS],
                   c[AOAI_COUNT_LAST_WINDOW_MS], c[AOAI_COUNT_PROMPT_TOKENS],
                   c[AOAI_COUNT_COMPLETION_TOKENS],
                   c[AOAI_COUNT_TOTAL_TOKENS], c[AOAI_COUNT_SESSIONS],
                   c[AOAI_COUNT_SESSIONS_OPEN]);
        for (k = 0; k < view->keys->nelts; k++, key++) {
            const apr_uint64_t *kc = key->stats.counters;
            ap_rprintf(r, "AOAIKeyTokens: balancer=%s member=%s key=%s "
                       "served=%" APR_UINT64_T_FMT " prompt_tokens=%"
                       APR_UINT64_T_FMT " completion_tokens=%"
                       APR_UINT64_T_FMT " total_tokens=%" APR_UINT64_T_FMT
                       "\n", view->balancer->s->name,
                       view->worker->s->name_ex, key->label,
                       kc[AOAI_COUNT_SERVED], kc[AOAI_COUNT_PROMPT_TOKENS],
                       kc[AOAI_COUNT_COMPLETION_TOKENS],
                       kc[AOAI_COUNT_TOTAL_TOKENS]);
        }
    }
}

static int aoai_status_hook(request_rec *r, int flags)
{
    aoai_snapshot *snapshot;

    if (!(flags & AP_STATUS_EXTENDED)) {
        return OK;
    }
    snapshot = aoai_status_snapshot(r);
    if (!snapshot->members->nelts) {
        return OK;
    }
    if (flags & AP_STATUS_SHORT) {
        cache_auto(r, snapshot->now);
        status_auto(r, snapshot);
    }
    else {
        status_html(r, snapshot);
    }
    return OK;
}

/* ------------------------------------------------------------------ */
/* aoai-balancer-status: JSON                                          */

static json_t *tokens_json(const apr_uint64_t *c)
{
    return json_pack("{s:I,s:I,s:I}",
                     "prompt", (json_int_t)c[AOAI_COUNT_PROMPT_TOKENS],
                     "completion", (json_int_t)c[AOAI_COUNT_COMPLETION_TOKENS],
                     "total", (json_int_t)c[AOAI_COUNT_TOTAL_TOKENS]);
}

/* What the member last said it has left, less what was sent since, and
 * when the window those figures belong to began; null when unknown. */
static json_t *headroom_json(apr_pool_t *pool, const aoai_member_stats *stats)
{
    json_t *headroom = json_object();
    int kind;

    for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
        json_object_set_new(headroom, aoai_headroom_kind_name(kind),
            stats->headroom_remaining[kind] < 0 ? json_null()
            : json_pack("{s:I,s:I,s:s}",
                        "remaining",
                        (json_int_t)stats->headroom_remaining[kind],
                        "limit", (json_int_t)stats->headroom_limit[kind],
                        "window_start", aoai_status_iso_time(pool,
                            stats->headroom_window_start[kind])));
    }
    return headroom;
}

static json_t *string_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static const char *iso_time_or_null(apr_pool_t *pool, apr_time_t t)
{
    return t ? aoai_status_iso_time(pool, t) : NULL;
}

/* What is learned of each window (aoai_learn.c): "ends" is the current
 * window's end when it is known, "length_ms" the learned length,
 * "learned_from" what last placed the end, "fallback" why the figures of
 * that kind no longer steer (null while they do), "relearns" when they
 * are tried again. */
static json_t *windows_json(apr_pool_t *pool, const aoai_member_stats *stats)
{
    json_t *windows = json_object();
    int kind;

    for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
        const char *fallback = aoai_learn_fallback_name(
                                   stats->window_fallback[kind]);

        json_object_set_new(windows, aoai_headroom_kind_name(kind), json_pack(
            "{s:o,s:o,s:o,s:I,s:o,s:o}",
            "length_ms", stats->window_length[kind]
                ? json_integer((json_int_t)apr_time_as_msec(
                      stats->window_length[kind])) : json_null(),
            "ends", string_or_null(iso_time_or_null(pool,
                                                   stats->window_end[kind])),
            "learned_from", string_or_null(aoai_learn_source_name(
                                stats->window_learned_from[kind])),
            "full", (json_int_t)stats->window_full[kind],
            "fallback", string_or_null(fallback),
            "relearns", string_or_null(fallback ? iso_time_or_null(pool,
                            stats->window_relearn_at[kind]) : NULL)));
    }
    return windows;
}

static json_t *member_json(apr_pool_t *pool, const aoai_member_view *view,
                           apr_time_t now)
{
    const apr_uint64_t *c = view->stats.counters;
    const aoai_key_view *key = (const aoai_key_view *)view->keys->elts;
    json_t *keys = json_array();
    json_t *member;
    int k;

    for (k = 0; k < view->keys->nelts; k++, key++) {
        json_array_append_new(keys, json_pack("{s:s,s:I,s:o}",
            "label", key->label,
            "served", (json_int_t)key->stats.counters[AOAI_COUNT_SERVED],
            "tokens", tokens_json(key->stats.counters)));
    }
    member = json_pack("{s:s,s:s,s:i,s:f,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:o,s:o}",
        "name", view->worker->s->name_ex,
        "route", view->worker->s->route,
        "priority", view->worker->s->lbset,
        "weight", aoai_status_weight(view->worker),
        "state", view->state,
        "flags", ap_proxy_parse_wstatus(pool, view->worker),
        "throttled_for_ms", (json_int_t)aoai_status_window_left_ms(view, now),
        "requests", (json_int_t)c[AOAI_COUNT_REQUESTS],
        "served", (json_int_t)c[AOAI_COUNT_SERVED],
        "throttled", (json_int_t)c[AOAI_COUNT_THROTTLED],
        "failovers", (json_int_t)c[AOAI_COUNT_FAILOVERS],
        "tokens", tokens_json(c),
        "keys", keys);
    json_object_set_new(member, "headroom", headroom_json(pool,
                                                          &view->stats));
    json_object_set_new(member, "sessions", json_pack("{s:I,s:I}",
        "open", (json_int_t)c[AOAI_COUNT_SESSIONS_OPEN],
        "total", (json_int_t)c[AOAI_COUNT_SESSIONS]));
    json_object_set_new(member, "windows", windows_json(pool, &view->stats));
    if (view->stats.throttle_until > now) {
        json_object_set_new(member, "throttled_until", json_string(
            aoai_status_iso_time(pool, view->stats.throttle_until)));
    }
    if (view->stats.last_throttled) {
        json_object_set_new(member, "last_retry_after_ms", json_integer(
            (json_int_t)c[AOAI_COUNT_LAST_WINDOW_MS]));
        json_object_set_new(member, "last_throttled", json_string(
            aoai_status_iso_time(pool, view->stats.last_throttled)));
    }
    return member;
}

static json_t *cache_json(apr_pool_t *pool, apr_time_t now)
{
    aoai_cache_view cache;
    const apr_uint64_t *c = cache.counters;

    if (!aoai_shared_cache_view(&cache)) {
        return json_pack("{s:b}", "configured", 0);
    }
    return json_pack("{s:b,s:s,s:b,s:o,s:o,s:I,s:I,s:I,s:I,s:I,s:I}",
        "configured", 1,
        "provider", cache.provider,
        "reachable", cache.reachable,
        "last_sync", cache.last_sync
                     ? json_string(aoai_status_iso_time(pool, cache.last_sync))
                     : json_null(),
        "last_sync_age_ms", cache.last_sync
                            ? json_integer(sync_age_ms(&cache, now))
                            : json_null(),
        "syncs", (json_int_t)c[AOAI_CACHE_SYNCS],
        "sync_failures", (json_int_t)c[AOAI_CACHE_SYNC_FAILURES],
        "published", (json_int_t)c[AOAI_CACHE_PUBLISHED],
        "publish_failures", (json_int_t)c[AOAI_CACHE_PUBLISH_FAILURES],
        "learned", (json_int_t)c[AOAI_CACHE_LEARNED],
        "rejected", (json_int_t)c[AOAI_CACHE_REJECTED]);
}

static int status_handler(request_rec *r)
{
    aoai_snapshot *snapshot;
    const aoai_member_view *views;
    const proxy_balancer *shown = NULL;
    json_t *root, *balancers, *members = NULL;
    char *text;
    int i;

    if (!r->handler || strcmp(r->handler, STATUS_HANDLER)) {
        return DECLINED;
    }
    r->allowed = AP_METHOD_BIT << M_GET;
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    snapshot = aoai_status_snapshot(r);
    views = (const aoai_member_view *)snapshot->members->elts;
    balancers = json_array();
    for (i = 0; i < snapshot->members->nelts; i++) {
        if (views[i].balancer != shown) {
            shown = views[i].balancer;
            members = json_array();
            json_array_append_new(balancers, json_pack("{s:s,s:o}",
                "name", shown->s->name, "members", members));
        }
        json_array_append_new(members, member_json(r->pool, &views[i],
                                                   snapshot->now));
    }
    root = aoai_json_own(r->pool, json_pack(
        "{s:s,s:o,s:o}", "time", aoai_status_iso_time(r->pool, snapshot->now),
        "balancers", balancers,
        "shared_cache", cache_json(r->pool, snapshot->now)));
    text = aoai_json_text(r->pool, root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, AOAI_LOGNO(032)
                      "could not serialize the balancer status");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    ap_set_content_type(r, "application/json");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (!r->header_only) {
        ap_rputs(text, r);
        ap_rputs("\n", r);
    }
    return OK;
}

void aoai_status_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_handler(status_handler, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, aoai_status_hook, NULL, NULL,
                      APR_HOOK_MIDDLE);
}
