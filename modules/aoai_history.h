/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_history: the last hour of every member, a minute at a time (calls,
 * 429s, tokens, seconds throttled), for the balancer page's charts and the
 * metrics' seconds-throttled counter.  Sampled from the shared table's
 * counters by a mod_watchdog task, so a call pays nothing for it.
 */

#ifndef AOAI_HISTORY_H
#define AOAI_HISTORY_H

#include "httpd.h"
#include "mod_proxy.h"

#define AOAI_HISTORY_MINUTES 60

/* What one minute added, or the running totals. */
typedef enum {
    AOAI_HISTORY_REQUESTS,
    AOAI_HISTORY_429S,
    AOAI_HISTORY_TOKENS,
    AOAI_HISTORY_THROTTLED_MS,  /* of the minute, inside a throttle window */
    AOAI_HISTORY_KINDS
} aoai_history_kind;

typedef struct {
    /* minutes[0] is the current minute, minutes[i] the one i minutes
     * before; a minute nobody sampled is all zeros. */
    apr_uint64_t minutes[AOAI_HISTORY_MINUTES][AOAI_HISTORY_KINDS];
    apr_uint64_t throttled_ms_total;    /* since the table's first start */
    apr_time_t sampled;                 /* last sample; 0 when none yet */
} aoai_history_view;

/* post_config, in the parent: the rings made (or kept over a graceful
 * restart) and the sampling task registered with mod_watchdog. */
int aoai_history_post_config(apr_pool_t *pconf, server_rec *s,
                             int table_slots);

/* A member's rings; 0 (and view zeroed) when it has none yet. */
int aoai_history_read(const proxy_balancer *balancer,
                      const proxy_worker *worker, apr_time_t now,
                      aoai_history_view *view);

#endif /* AOAI_HISTORY_H */
