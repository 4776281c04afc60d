/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Prometheus metrics: what the gateways of this field (LiteLLM, Envoy AI
 * Gateway, Kong) expose, so that an admin with a Prometheus and a Grafana
 * can graph 429s, failovers and tokens.
 *
 *     <Location "/aoai-metrics">
 *         SetHandler aoai-balancer-metrics
 *         Require ip 127.0.0.1
 *     </Location>
 *
 * The text exposition format (version 0.0.4): every family once, its
 * HELP and TYPE first, then its samples; counters end in _total, times are
 * seconds, label values escaped (\\, \" and \n).  The figures are the
 * status pages' (one snapshot of the shared table per scrape), the
 * seconds throttled the history sampler's.  docs/observability.md lists
 * the families.
 */

#include "aoai_metrics.h"
#include "aoai_history.h"
#include "aoai_shared_cache.h"
#include "aoai_status.h"

#include "apr_strings.h"

#include "http_core.h"
#include "http_protocol.h"
#include "http_request.h"

#define METRICS_HANDLER "aoai-balancer-metrics"
#define METRICS_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct {
    const aoai_member_view *view;
    aoai_history_view history;
    const char *labels;            /* balancer="...",member="...",route="..." */
    apr_time_t now;
} aoai_metric_member;

/* One family: its samples are value(member, variant) for each member and
 * each variant (a label of its own, such as kind="prompt"); a value
 * function returns 0 for a sample the member does not have. */
typedef int (aoai_metric_value)(const aoai_metric_member *m, int variant,
                                double *out);
typedef struct {
    const char *name;
    const char *type;
    const char *help;
    const char *variant_label;     /* NULL: one sample per member */
    const char *const *variants;
    aoai_metric_value *value;
} aoai_metric_family;

static const char *const token_kinds[] = { "prompt", "completion", NULL };
static const char *const headroom_kinds[] = { "requests", "tokens", NULL };
static const char *const states[] = { "serving", "headroom-low", "throttled",
                                      "error", "draining", "disabled",
                                      "stopped", NULL };

/* \\, \" and \n, as the exposition format escapes label values. */
static const char *label_value(apr_pool_t *pool, const char *value)
{
    char *out = apr_palloc(pool, strlen(value) * 2 + 1), *o = out;

    for (; *value; value++) {
        if (*value == '\\' || *value == '"') {
            *o++ = '\\';
            *o++ = *value;
        }
        else if (*value == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        }
        else {
            *o++ = *value;
        }
    }
    *o = '\0';
    return out;
}

/* ------------------------------------------------------------------ */
/* The members' families                                                */

static int counter_value(const aoai_metric_member *m, aoai_counter counter,
                         double *out)
{
    *out = (double)m->view->stats.counters[counter];
    return 1;
}

static int requests(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    return counter_value(m, AOAI_COUNT_REQUESTS, out);
}

static int served(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    return counter_value(m, AOAI_COUNT_SERVED, out);
}

static int throttled(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    return counter_value(m, AOAI_COUNT_THROTTLED, out);
}

static int failovers(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    return counter_value(m, AOAI_COUNT_FAILOVERS, out);
}

static int tokens(const aoai_metric_member *m, int v, double *out)
{
    return counter_value(m, v ? AOAI_COUNT_COMPLETION_TOKENS
                              : AOAI_COUNT_PROMPT_TOKENS, out);
}

static int sessions(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    return counter_value(m, AOAI_COUNT_SESSIONS, out);
}

static int sessions_open(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    return counter_value(m, AOAI_COUNT_SESSIONS_OPEN, out);
}

static int throttled_seconds(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    *out = (double)m->history.throttled_ms_total / 1000.0;
    return 1;
}

static int window_end(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    *out = m->view->stats.throttle_until > m->now
           ? (double)m->view->stats.throttle_until / APR_USEC_PER_SEC : 0;
    return 1;
}

static int window_left(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    *out = (double)aoai_status_window_left_ms(m->view, m->now) / 1000.0;
    return 1;
}

static int last_retry_after(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    *out = (double)m->view->stats.counters[AOAI_COUNT_LAST_WINDOW_MS]
           / 1000.0;
    return m->view->stats.last_throttled != 0;
}

static int remaining(const aoai_metric_member *m, int v, double *out)
{
    *out = (double)m->view->stats.headroom_remaining[v];
    return m->view->stats.headroom_remaining[v] >= 0;
}

static int limit(const aoai_metric_member *m, int v, double *out)
{
    *out = (double)m->view->stats.headroom_limit[v];
    return m->view->stats.headroom_limit[v] > 0;
}

static int priority(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    *out = m->view->worker->s->lbset;
    return 1;
}

static int weight(const aoai_metric_member *m, int v, double *out)
{
    (void)v;
    *out = aoai_status_weight(m->view->worker);
    return 1;
}

static int state(const aoai_metric_member *m, int v, double *out)
{
    *out = !strcmp(aoai_status_state(m->view, m->now), states[v]);
    return 1;
}

static const aoai_metric_family member_families[] = {
    { "aoai_member_requests_total", "counter",
      "Requests that reached the member.", NULL, NULL, requests },
    { "aoai_member_served_total", "counter",
      "Answers of the member that went on to the client.", NULL, NULL,
      served },
    { "aoai_member_throttled_responses_total", "counter",
      "429 (Too Many Requests) answers of the member.", NULL, NULL,
      throttled },
    { "aoai_member_failovers_total", "counter",
      "Attempts on the member that moved on to another member.", NULL, NULL,
      failovers },
    { "aoai_member_tokens_total", "counter",
      "Tokens of the member's answers, from their usage, by kind.", "kind",
      token_kinds, tokens },
    { "aoai_member_throttled_seconds_total", "counter",
      "Seconds the member spent inside a throttle window (sampled each "
      "second).", NULL, NULL, throttled_seconds },
    { "aoai_member_throttle_window_end_timestamp_seconds", "gauge",
      "When the member's open throttle window ends (Unix time); 0 when "
      "none is open.", NULL, NULL, window_end },
    { "aoai_member_throttle_remaining_seconds", "gauge",
      "What is left of the member's throttle window.", NULL, NULL,
      window_left },
    { "aoai_member_last_retry_after_seconds", "gauge",
      "The window the member's last 429 asked for.", NULL, NULL,
      last_retry_after },
    { "aoai_member_ratelimit_remaining", "gauge",
      "What the member last said it has left (x-ratelimit-remaining-*), "
      "less what was sent since.", "kind", headroom_kinds, remaining },
    { "aoai_member_ratelimit_limit", "gauge",
      "The member's limit (x-ratelimit-limit-*, or the largest remaining "
      "figure seen).", "kind", headroom_kinds, limit },
    { "aoai_member_realtime_sessions_total", "counter",
      "Realtime (WebSocket) sessions the member took.", NULL, NULL,
      sessions },
    { "aoai_member_realtime_sessions_open", "gauge",
      "Realtime sessions on the member still open.", NULL, NULL,
      sessions_open },
    { "aoai_member_priority", "gauge",
      "The member's priority (lbset; 0 is tried first).", NULL, NULL,
      priority },
    { "aoai_member_weight", "gauge",
      "The member's weight inside its priority (loadfactor).", NULL, NULL,
      weight },
    { "aoai_member_state", "gauge",
      "1 for the member's state, 0 for the others.", "state", states,
      state },
};

static void family_header(request_rec *r, const char *name,
                          const char *type, const char *help)
{
    ap_rvputs(r, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type,
              "\n", NULL);
}

static void member_family(request_rec *r, const aoai_metric_family *f,
                          const aoai_metric_member *members, int count)
{
    int i, v;
    double value;

    family_header(r, f->name, f->type, f->help);
    for (i = 0; i < count; i++) {
        for (v = 0; f->variants ? f->variants[v] != NULL : v < 1; v++) {
            if (!f->value(&members[i], v, &value)) {
                continue;
            }
            ap_rprintf(r, "%s{%s", f->name, members[i].labels);
            if (f->variant_label) {
                ap_rprintf(r, ",%s=\"%s\"", f->variant_label,
                           f->variants[v]);
            }
            ap_rprintf(r, "} %.15g\n", value);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Subscription keys, the shared cache                                  */

static void key_family(request_rec *r, const aoai_metric_member *members,
                       int count, int tokens_family)
{
    int i, k, kind;

    if (tokens_family) {
        family_header(r, "aoai_key_tokens_total", "counter",
                      "Tokens of the answers served to the subscription "
                      "key, by member and kind.");
    }
    else {
        family_header(r, "aoai_key_served_total", "counter",
                      "Answers served to the subscription key, by member.");
    }
    for (i = 0; i < count; i++) {
        const aoai_key_view *key =
            (const aoai_key_view *)members[i].view->keys->elts;

        for (k = 0; k < members[i].view->keys->nelts; k++, key++) {
            const apr_uint64_t *c = key->stats.counters;
            const char *labels = apr_pstrcat(r->pool, members[i].labels,
                ",key=\"", label_value(r->pool, key->label), "\"", NULL);

            if (!tokens_family) {
                ap_rprintf(r, "aoai_key_served_total{%s} %" APR_UINT64_T_FMT
                           "\n", labels, c[AOAI_COUNT_SERVED]);
                continue;
            }
            for (kind = 0; token_kinds[kind]; kind++) {
                ap_rprintf(r, "aoai_key_tokens_total{%s,kind=\"%s\"} %"
                           APR_UINT64_T_FMT "\n", labels, token_kinds[kind],
                           c[kind ? AOAI_COUNT_COMPLETION_TOKENS
                                  : AOAI_COUNT_PROMPT_TOKENS]);
            }
        }
    }
}

static void cache_families(request_rec *r)
{
    aoai_cache_view cache;

    if (!aoai_shared_cache_view(&cache)) {
        return;
    }
    family_header(r, "aoai_shared_cache_reachable", "gauge",
                  "1 while the shared cache (AOAISharedCache) answers.");
    ap_rprintf(r, "aoai_shared_cache_reachable %d\n", cache.reachable);
    family_header(r, "aoai_shared_cache_syncs_total", "counter",
                  "Reads of every member's window from the shared cache, "
                  "by result.");
    ap_rprintf(r, "aoai_shared_cache_syncs_total{result=\"ok\"} %"
               APR_UINT64_T_FMT "\naoai_shared_cache_syncs_total{result="
               "\"failed\"} %" APR_UINT64_T_FMT "\n",
               cache.counters[AOAI_CACHE_SYNCS],
               cache.counters[AOAI_CACHE_SYNC_FAILURES]);
}

/* ------------------------------------------------------------------ */
/* The handler                                                          */

static aoai_metric_member *metric_members(request_rec *r,
                                          const aoai_snapshot *snapshot)
{
    const aoai_member_view *views =
        (const aoai_member_view *)snapshot->members->elts;
    aoai_metric_member *members = apr_pcalloc(r->pool,
        sizeof(*members) * (apr_size_t)(snapshot->members->nelts + 1));
    int i;

    for (i = 0; i < snapshot->members->nelts; i++) {
        const proxy_worker *worker = views[i].worker;

        members[i].view = &views[i];
        members[i].now = snapshot->now;
        aoai_history_read(views[i].balancer, worker, snapshot->now,
                          &members[i].history);
        members[i].labels = apr_pstrcat(r->pool,
            "balancer=\"", label_value(r->pool, views[i].balancer->s->name),
            "\",member=\"", label_value(r->pool, worker->s->name_ex),
            "\",route=\"", label_value(r->pool, worker->s->route), "\"",
            NULL);
    }
    return members;
}

static int metrics_handler(request_rec *r)
{
    aoai_snapshot *snapshot;
    aoai_metric_member *members;
    apr_size_t f;

    if (!r->handler || strcmp(r->handler, METRICS_HANDLER)) {
        return DECLINED;
    }
    r->allowed = AP_METHOD_BIT << M_GET;
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    ap_set_content_type(r, METRICS_TYPE);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (r->header_only) {
        return OK;
    }
    snapshot = aoai_status_snapshot(r);
    members = metric_members(r, snapshot);
    for (f = 0; f < sizeof(member_families) / sizeof(*member_families);
         f++) {
        member_family(r, &member_families[f], members,
                      snapshot->members->nelts);
    }
    key_family(r, members, snapshot->members->nelts, 0);
    key_family(r, members, snapshot->members->nelts, 1);
    cache_families(r);
    return OK;
}

void aoai_metrics_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_handler(metrics_handler, NULL, NULL, APR_HOOK_MIDDLE);
}
