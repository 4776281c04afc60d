/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_status: what the balancers are doing, shown and never changed: a
 * server-status section (HTML and ?auto) and the aoai-balancer-status JSON
 * handler; and the snapshot of every member that the metrics and the
 * balancer page render too.
 */

#ifndef AOAI_STATUS_H
#define AOAI_STATUS_H

#include "httpd.h"
#include "mod_proxy.h"

#include "aoai_table.h"

typedef struct {
    const char *label;
    aoai_member_stats stats;
} aoai_key_view;

typedef struct {
    proxy_balancer *balancer;
    proxy_worker *worker;
    /* stopped, disabled, throttled, error, draining or ok */
    const char *state;
    aoai_member_stats stats;
    apr_array_header_t *keys;      /* aoai_key_view */
} aoai_member_view;

typedef struct {
    apr_pool_t *pool;
    apr_time_t now;
    apr_array_header_t *members;   /* aoai_member_view, by balancer */
} aoai_snapshot;

/* Every member of every aoai balancer, as of now, in r->pool. */
aoai_snapshot *aoai_status_snapshot(request_rec *r);
/* view->state, with "ok" told apart: serving or headroom-low. */
const char *aoai_status_state(const aoai_member_view *view, apr_time_t now);
/* 2026-11-25T02:10:00.123Z */
const char *aoai_status_iso_time(apr_pool_t *pool, apr_time_t t);
/* What is left of the member's throttle window, rounded up; 0 when none. */
apr_int64_t aoai_status_window_left_ms(const aoai_member_view *view,
                                       apr_time_t now);
/* Its weight inside its priority, as the BalancerManager shows it. */
double aoai_status_weight(const proxy_worker *worker);

void aoai_status_register_hooks(apr_pool_t *p);

#endif /* AOAI_STATUS_H */
