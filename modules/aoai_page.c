/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The balancer page: what an admin opens to see which member is parked,
 * for how long and why, without reading JSON or the server-status table.
 *
 *     <Location "/aoai-balancer">
 *         SetHandler aoai-balancer-page
 *         Require ip 127.0.0.1
 *     </Location>
 *
 * Access control is the Location's, as for balancer-manager.  The page is
 * self-contained (inline style, script and SVG; a Content-Security-Policy
 * that lets nothing else load), so it works where the gateway has no way
 * out.  It reloads itself (?refresh=N seconds, 2-3600, default 10; a meta
 * refresh without script), and between reloads its script counts each
 * open window down from the server's clock, not the browser's.  Charts
 * show the last ?minutes=N (15-60, default 30) of aoai_history.
 * Edits stay with BalancerManager: the page links to it, at
 * /balancer-manager or where the environment variable
 * AOAI_BALANCER_MANAGER (SetEnv) says.
 */

#include "aoai_page.h"
#include "aoai_balancers.h"
#include "aoai_headroom.h"
#include "aoai_history.h"
#include "aoai_learn.h"
#include "aoai_status.h"

#include "apr_strings.h"

#include "http_core.h"
#include "http_protocol.h"
#include "http_request.h"

#define PAGE_HANDLER "aoai-balancer-page"
#define CHART_HEIGHT 24

typedef struct {
    request_rec *r;
    const aoai_snapshot *snapshot;
    int minutes;                   /* charted */
    int refresh;                   /* seconds */
} aoai_page;

static const char page_style[] =
    "body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}"
    "h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}"
    "table{border-collapse:collapse}th,td{padding:.3em .6em;"
    "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "th{background:#f4f4f4;font-weight:600}td.n{text-align:right}"
    "small{color:#666}.state{font-weight:600;border-radius:3px;"
    "padding:.1em .4em;white-space:nowrap}"
    ".serving{background:#d7f5dd}.throttled{background:#ffd8a8}"
    ".headroom-low{background:#fff3bf}.error{background:#ffc9c9}"
    ".disabled,.stopped,.draining{background:#e9ecef}"
    ".countdown{font:600 1.1em monospace}"
    ".bar{width:8em;height:.7em;background:#eee;border-radius:2px}"
    ".bar span{display:block;height:100%;background:#4c9a5a;"
    "border-radius:2px}.bar.low span{background:#e8590c}"
    "svg.chart{background:#fafafa;border:1px solid #eee;display:block}"
    "svg.calls rect{fill:#4c6ef5}svg.r429 rect{fill:#e8590c}"
    "svg.tokens rect{fill:#2b8a3e}";

/* Counts every .countdown down from the server's clock; reloads. */
static const char page_script[] =
    "(function(){var off=+document.body.dataset.nowMs-Date.now();"
    "function fmt(s){if(s>=60){return Math.floor(s/60)+' min '+"
    "Math.floor(s%60)+' s'}return s.toFixed(1)+' s'}"
    "function tick(){var now=Date.now()+off;"
    "document.querySelectorAll('.countdown').forEach(function(e){"
    "var left=(+e.dataset.endMs-now)/1000;"
    "e.textContent=left>0?fmt(left):'over, serving again';});}"
    "tick();setInterval(tick,100);"
    "setTimeout(function(){location.reload()},"
    "+document.body.dataset.refresh*1000);})();";

static int query_int(request_rec *r, const char *name, int dflt, int low,
                     int high)
{
    const char *args = r->args, *at;
    size_t len = strlen(name);
    apr_int64_t value;

    for (at = args; at && (at = strstr(at, name)); at += len) {
        if ((at == args || at[-1] == '&') && at[len] == '=') {
            value = apr_atoi64(at + len + 1);
            return value < low ? low : value > high ? high : (int)value;
        }
    }
    return dflt;
}

/* ------------------------------------------------------------------ */
/* One member                                                           */

/* A bar of what is left against the limit, or a dash when unknown. */
static void headroom_cell(request_rec *r, const aoai_member_stats *stats,
                          int kind)
{
    apr_int64_t left = stats->headroom_remaining[kind];
    apr_int64_t limit = stats->headroom_limit[kind];
    int percent;

    if (left < 0 || limit <= 0) {
        ap_rputs("<td><small>unknown</small></td>", r);
        return;
    }
    percent = left >= limit ? 100 : (int)(left * 100 / limit);
    ap_rprintf(r, "<td><div class=\"bar%s\" title=\"%" APR_INT64_T_FMT
               " of %" APR_INT64_T_FMT "\"><span style=\"width:%d%%\">"
               "</span></div><small>%" APR_INT64_T_FMT " / %" APR_INT64_T_FMT
               "</small></td>", percent < 10 ? " low" : "", left, limit,
               percent, left, limit);
}

/* Why the member is in its state, in words. */
static const char *member_why(apr_pool_t *pool, const aoai_member_view *view,
                              const char *state)
{
    const aoai_member_stats *stats = &view->stats;
    const char *last = stats->last_throttled
        ? apr_psprintf(pool, "last 429 at %s asked for %" APR_UINT64_T_FMT
                       " ms", aoai_status_iso_time(pool,
                                                   stats->last_throttled),
                       stats->counters[AOAI_COUNT_LAST_WINDOW_MS])
        : "no 429 yet";

    if (!strcmp(state, "throttled")) {
        return stats->last_throttled
               && stats->throttle_until - stats->last_throttled
                  <= apr_time_from_msec(
                         stats->counters[AOAI_COUNT_LAST_WINDOW_MS]) + 1000
               ? apr_pstrcat(pool, "answered 429: ", last, NULL)
               : apr_pstrcat(pool, "a window from its rate-limit headers, a "
                             "5xx or another gateway; ", last, NULL);
    }
    if (!strcmp(state, "error")) {
        return view->worker->s->status & PROXY_WORKER_HC_FAIL
               ? "failed its health check (mod_proxy_hcheck)"
               : "mod_proxy put it in error (connection failed); retried "
                 "after its retry= interval";
    }
    if (!strcmp(state, "headroom-low")) {
        return "its last x-ratelimit-remaining figures are under a tenth "
               "of its limit";
    }
    if (strcmp(state, "serving")) {
        return "set in BalancerManager";
    }
    return last;
}

/* What the module learned of the member's two windows (issue 19): each
 * kind's length and where it came from, or the fallback to 429 windows. */
static const char *learned_windows(apr_pool_t *pool,
                                   const aoai_member_stats *stats,
                                   apr_time_t now)
{
    const char *text = NULL;
    int kind;

    for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
        const char *fallback = aoai_learn_fallback_name(
                                   stats->window_fallback[kind]);
        const char *from = aoai_learn_source_name(
                               stats->window_learned_from[kind]);
        const char *line;

        if (fallback) {
            apr_time_t at = stats->window_relearn_at[kind];
            line = apr_psprintf(pool, "%s: 429 windows (%s)%s", aoai_headroom_kind_name(kind),
                                fallback, at > now
                                ? apr_psprintf(pool, ", learned afresh in %"
                                               APR_TIME_T_FMT " s",
                                               apr_time_sec(at - now + 999999))
                                : "");
        }
        else if (stats->window_length[kind]) {
            line = apr_psprintf(pool, "%s: window of %" APR_TIME_T_FMT
                                " ms learned from %s%s", aoai_headroom_kind_name(kind),
                                apr_time_as_msec(stats->window_length[kind]),
                                from ? from : "its figures",
                                stats->window_end[kind] > now
                                ? apr_psprintf(pool, ", reopens in %"
                                               APR_TIME_T_FMT " ms",
                                               apr_time_as_msec(
                                                   stats->window_end[kind]
                                                   - now)) : "");
        }
        else {
            continue;
        }
        text = text ? apr_pstrcat(pool, text, "; ", line, NULL) : line;
    }
    return text;
}

/* Minute bars, oldest on the left: one SVG of what history kind holds. */
static void chart(request_rec *r, const aoai_history_view *history,
                  int minutes, aoai_history_kind kind, const char *what,
                  const char *css)
{
    apr_uint64_t top = 0, total = 0;
    int i;

    for (i = 0; i < minutes; i++) {
        top = history->minutes[i][kind] > top ? history->minutes[i][kind]
                                              : top;
        total += history->minutes[i][kind];
    }
    ap_rprintf(r, "<svg class=\"chart %s\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" preserveAspectRatio=\"none\" "
               "data-total=\"%" APR_UINT64_T_FMT "\"><title>%s per minute, "
               "last %d minutes: %" APR_UINT64_T_FMT " in all, at most %"
               APR_UINT64_T_FMT "</title>", css, minutes * 5, CHART_HEIGHT,
               minutes, CHART_HEIGHT, total, what, minutes, total, top);
    for (i = 0; top && i < minutes; i++) {
        apr_uint64_t value = history->minutes[minutes - 1 - i][kind];
        double height = (double)value * CHART_HEIGHT / (double)top;

        if (value) {
            ap_rprintf(r, "<rect x=\"%d.1\" y=\"%.2f\" width=\".8\" "
                       "height=\"%.2f\"/>", i, CHART_HEIGHT - height, height);
        }
    }
    ap_rputs("</svg>", r);
}

static void charts_cell(const aoai_page *page, const aoai_member_view *view)
{
    request_rec *r = page->r;
    aoai_history_view history;

    ap_rputs("<td>", r);
    if (!aoai_history_read(view->balancer, view->worker,
                           page->snapshot->now, &history)
        || !history.sampled) {
        ap_rputs("<small>no history yet</small></td>", r);
        return;
    }
    chart(r, &history, page->minutes, AOAI_HISTORY_REQUESTS, "calls",
          "calls");
    chart(r, &history, page->minutes, AOAI_HISTORY_429S, "429s", "r429");
    chart(r, &history, page->minutes, AOAI_HISTORY_TOKENS, "tokens",
          "tokens");
    ap_rputs("</td>", r);
}

static void window_cell(request_rec *r, const aoai_member_view *view,
                        apr_time_t now)
{
    apr_int64_t left = aoai_status_window_left_ms(view, now);

    if (!left) {
        ap_rputs("<td><small>none</small></td>", r);
        return;
    }
    ap_rprintf(r, "<td><span class=\"countdown\" data-end-ms=\"%"
               APR_INT64_T_FMT "\">%" APR_INT64_T_FMT ".%01d s</span><br>"
               "<small>until %s</small></td>",
               apr_time_as_msec(view->stats.throttle_until), left / 1000,
               (int)(left % 1000) / 100,
               aoai_status_iso_time(r->pool, view->stats.throttle_until));
}

static void member_row(const aoai_page *page, const aoai_member_view *view)
{
    request_rec *r = page->r;
    apr_time_t now = page->snapshot->now;
    const char *state = aoai_status_state(view, now);
    const char *route = view->worker->s->route;
    const apr_uint64_t *c = view->stats.counters;
    const char *learned;

    ap_rvputs(r, "<tr class=\"member\" data-route=\"",
              ap_escape_html(r->pool, route), "\" data-state=\"", state,
              "\"><td><b>", ap_escape_html(r->pool, *route ? route : "-"),
              "</b><br><small>",
              ap_escape_html(r->pool, view->worker->s->name_ex),
              "</small></td>", NULL);
    ap_rprintf(r, "<td class=\"n\">%d</td><td class=\"n\">%.2f</td>"
               "<td><span class=\"state %s\">%s</span></td>",
               view->worker->s->lbset, aoai_status_weight(view->worker),
               state, state);
    window_cell(r, view, now);
    learned = learned_windows(r->pool, &view->stats, now);
    ap_rvputs(r, "<td class=\"why\"><small>",
              ap_escape_html(r->pool, member_why(r->pool, view, state)),
              learned ? "<br><span class=\"learned\">" : "",
              learned ? ap_escape_html(r->pool, learned) : "",
              learned ? "</span>" : "", "</small></td>", NULL);
    headroom_cell(r, &view->stats, 0);
    headroom_cell(r, &view->stats, 1);
    ap_rprintf(r, "<td class=\"n\">%" APR_UINT64_T_FMT "</td><td class=\"n\">%"
               APR_UINT64_T_FMT "</td><td class=\"n\">%" APR_UINT64_T_FMT
               "</td><td class=\"n\">%" APR_UINT64_T_FMT "</td><td class=\"n\">%"
               APR_UINT64_T_FMT "</td>", c[AOAI_COUNT_REQUESTS],
               c[AOAI_COUNT_THROTTLED], c[AOAI_COUNT_FAILOVERS],
               c[AOAI_COUNT_TOTAL_TOKENS], c[AOAI_COUNT_SESSIONS_OPEN]);
    charts_cell(page, view);
    ap_rputs("</tr>\n", r);
}

/* ------------------------------------------------------------------ */
/* The page                                                             */

static void balancer_head(const aoai_page *page, const proxy_balancer *b)
{
    request_rec *r = page->r;

    ap_rvputs(r, "<h2>", ap_escape_html(r->pool, b->s->name),
              "</h2>\n<table class=\"balancer\"><tr><th>Member</th>"
              "<th>Priority</th><th>Weight</th><th>State</th>"
              "<th>Window left</th><th>Why</th><th>Requests left</th>"
              "<th>Tokens left</th><th>Requests</th><th>429s</th>"
              "<th>Failovers</th><th>Tokens</th><th>Sessions open</th>",
              NULL);
    ap_rprintf(r, "<th>Last %d min: calls, 429s, tokens</th></tr>\n",
               page->minutes);
}

static void keys_table(const aoai_page *page)
{
    request_rec *r = page->r;
    const aoai_member_view *views =
        (const aoai_member_view *)page->snapshot->members->elts;
    int i, k, rows = 0;

    for (i = 0; i < page->snapshot->members->nelts; i++) {
        const aoai_key_view *key = (const aoai_key_view *)views[i].keys->elts;

        for (k = 0; k < views[i].keys->nelts; k++, key++) {
            const apr_uint64_t *c = key->stats.counters;

            if (!rows++) {
                ap_rputs("<h2>Tokens by subscription key</h2>\n<table "
                         "class=\"keys\"><tr><th>Key</th><th>Balancer</th>"
                         "<th>Member</th><th>Served</th><th>Prompt</th>"
                         "<th>Completion</th><th>Total</th></tr>\n", r);
            }
            ap_rvputs(r, "<tr><td>", ap_escape_html(r->pool, key->label),
                      "</td><td>", ap_escape_html(r->pool,
                                                  views[i].balancer->s->name),
                      "</td><td>", ap_escape_html(r->pool,
                          aoai_balancers_label(views[i].worker)), "</td>", NULL);
            ap_rprintf(r, "<td class=\"n\">%" APR_UINT64_T_FMT "</td><td "
                       "class=\"n\">%" APR_UINT64_T_FMT "</td><td class=\"n\">"
                       "%" APR_UINT64_T_FMT "</td><td class=\"n\">%"
                       APR_UINT64_T_FMT "</td></tr>\n", c[AOAI_COUNT_SERVED],
                       c[AOAI_COUNT_PROMPT_TOKENS],
                       c[AOAI_COUNT_COMPLETION_TOKENS],
                       c[AOAI_COUNT_TOTAL_TOKENS]);
        }
    }
    if (rows) {
        ap_rputs("</table>\n", r);
    }
}

static void page_head(const aoai_page *page)
{
    request_rec *r = page->r;
    const char *manager = apr_table_get(r->subprocess_env,
                                        "AOAI_BALANCER_MANAGER");

    ap_rprintf(r, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset="
               "\"utf-8\"><title>Azure OpenAI balancers</title><meta name="
               "\"viewport\" content=\"width=device-width\"><noscript><meta "
               "http-equiv=\"refresh\" content=\"%d\"></noscript><style>%s"
               "</style></head>\n<body data-now-ms=\"%" APR_INT64_T_FMT "\" "
               "data-refresh=\"%d\"><h1>Azure OpenAI balancers</h1>\n",
               page->refresh, page_style,
               apr_time_as_msec(page->snapshot->now), page->refresh);
    ap_rvputs(r, "<p>As of ", aoai_status_iso_time(r->pool,
                                                   page->snapshot->now),
              apr_psprintf(r->pool, " &middot; reloads every %d s &middot; ",
                           page->refresh),
              "<a id=\"manager\" href=\"",
              ap_escape_html(r->pool, manager ? manager : "/balancer-manager"),
              "\">BalancerManager</a> to change a member</p>\n", NULL);
}

static void render(const aoai_page *page)
{
    request_rec *r = page->r;
    const aoai_member_view *views =
        (const aoai_member_view *)page->snapshot->members->elts;
    const proxy_balancer *shown = NULL;
    int i;

    page_head(page);
    if (!page->snapshot->members->nelts) {
        ap_rputs("<p>No balancer uses lbmethod=aoai.</p>\n", r);
    }
    for (i = 0; i < page->snapshot->members->nelts; i++) {
        if (views[i].balancer != shown) {
            if (shown) {
                ap_rputs("</table>\n", r);
            }
            shown = views[i].balancer;
            balancer_head(page, shown);
        }
        member_row(page, &views[i]);
    }
    if (shown) {
        ap_rputs("</table>\n", r);
    }
    keys_table(page);
    ap_rvputs(r, "<script>", page_script, "</script>\n</body></html>\n",
              NULL);
}

static int page_handler(request_rec *r)
{
    aoai_page page;

    if (!r->handler || strcmp(r->handler, PAGE_HANDLER)) {
        return DECLINED;
    }
    r->allowed = AP_METHOD_BIT << M_GET;
    if (r->method_number != M_GET) {
        return HTTP_METHOD_NOT_ALLOWED;
    }
    ap_set_content_type(r, "text/html; charset=utf-8");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    /* Nothing but what the page carries in itself may load or run. */
    apr_table_setn(r->headers_out, "Content-Security-Policy",
                   "default-src 'none'; style-src 'unsafe-inline'; "
                   "script-src 'unsafe-inline'; img-src data:; "
                   "base-uri 'none'; form-action 'none'");
    if (r->header_only) {
        return OK;
    }
    page.r = r;
    page.snapshot = aoai_status_snapshot(r);
    page.minutes = query_int(r, "minutes", 30, 15, AOAI_HISTORY_MINUTES);
    page.refresh = query_int(r, "refresh", 10, 2, 3600);
    render(&page);
    return OK;
}

void aoai_page_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_handler(page_handler, NULL, NULL, APR_HOOK_MIDDLE);
}
