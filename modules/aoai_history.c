/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The last hour of every member, a minute at a time.
 *
 * Why sampled rather than recorded by each call: the shared table already
 * counts every call, 429 and token with one atomic add each; a second set
 * of adds into a per-minute bucket would be paid on every call for a
 * chart.  Instead a mod_watchdog singleton (one thread in one child for
 * the whole server) reads each member's counters once a second and adds
 * what changed since its last reading to the current minute's bucket.  A
 * call pays nothing; a bucket is right to within the second the sample
 * straddles.  mod_watchdog is built into Debian's httpd; without it the
 * rings stay empty and the page says so.
 *
 * Seconds throttled are sampled the same way: each second the part of the
 * last second that lay inside the member's window (its end from the table,
 * its start the member's last 429 when that came within the second).
 *
 * The rings are one anonymous shared segment, retained over a graceful
 * restart like the table, one ring per (balancer, member) found by the
 * hash of their names.  Only the sampler writes; readers copy a ring and
 * may see a bucket being started, which shows as one minute's dip.
 */

#include "aoai_history.h"
#include "aoai_balancers.h"
#include "aoai_table.h"

#include "apr_atomic.h"
#include "apr_optional.h"
#include "apr_shm.h"
#include "apr_strings.h"

#include "http_log.h"
#include "mod_watchdog.h"

APLOG_USE_MODULE(aoai_balancer);

#define HISTORY_WATCHDOG "_aoai_history_"
#define HISTORY_INTERVAL apr_time_from_sec(1)
#define HISTORY_NAME_SIZE 256
#define HISTORY_RETAINED "mod_aoai_balancer-history-%" APR_SIZE_T_FMT

typedef struct {
    volatile apr_uint64_t key;          /* 0 while free */
    char name[HISTORY_NAME_SIZE];       /* "balancer|member" */
    apr_uint64_t last[AOAI_HISTORY_KINDS]; /* counters at the last sample */
    volatile apr_uint64_t sampled;      /* apr_time_t */
    volatile apr_uint64_t throttled_ms_total;
    volatile apr_uint64_t minute_of[AOAI_HISTORY_MINUTES]; /* minute + 1 */
    volatile apr_uint64_t minutes[AOAI_HISTORY_MINUTES][AOAI_HISTORY_KINDS];
} aoai_history_ring;

typedef struct {
    apr_shm_t *shm;
    apr_uint32_t count;
    aoai_history_ring *rings;
} aoai_history_retained;

/* This generation's; set in post_config, read-only after the fork. */
static aoai_history_retained *history;
static server_rec *history_server;

static apr_uint64_t name_key(const char *balancer, const char *member)
{
    apr_uint64_t hash = APR_UINT64_C(14695981039346656037);
    const unsigned char *p;

    for (p = (const unsigned char *)balancer; *p; p++) {
        hash = (hash ^ *p) * APR_UINT64_C(1099511628211);
    }
    hash = (hash ^ '|') * APR_UINT64_C(1099511628211);
    for (p = (const unsigned char *)member; *p; p++) {
        hash = (hash ^ *p) * APR_UINT64_C(1099511628211);
    }
    return hash ? hash : 1;
}

/* The member's ring, claimed when claim is set (only the sampler does). */
static aoai_history_ring *find_ring(const char *balancer, const char *member,
                                    int claim)
{
    apr_uint64_t key = name_key(balancer, member);
    char name[HISTORY_NAME_SIZE];
    apr_uint32_t i, at;

    if (!history) {
        return NULL;
    }
    apr_snprintf(name, sizeof(name), "%s|%s", balancer, member);
    for (i = 0; i < history->count; i++) {
        aoai_history_ring *ring;

        at = (apr_uint32_t)((key + i) % history->count);
        ring = &history->rings[at];
        if (apr_atomic_read64(&ring->key) == key
            && !strcmp(ring->name, name)) {
            return ring;
        }
        if (!apr_atomic_read64(&ring->key)) {
            if (!claim) {
                return NULL;
            }
            apr_cpystrn(ring->name, name, sizeof(ring->name));
            apr_atomic_set64(&ring->key, key);
            return ring;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* The sampler                                                          */

/* Milliseconds of (since, now] that lay inside the member's window. */
static apr_uint64_t throttled_ms(const aoai_member_stats *stats,
                                 apr_time_t since, apr_time_t now)
{
    apr_time_t from = since, to = stats->throttle_until;

    if (stats->last_throttled > from) {
        from = stats->last_throttled;
    }
    if (to > now) {
        to = now;
    }
    return to > from ? (apr_uint64_t)apr_time_as_msec(to - from) : 0;
}

static void add_to_minute(aoai_history_ring *ring, apr_time_t now,
                          const apr_uint64_t delta[AOAI_HISTORY_KINDS])
{
    apr_uint64_t minute = (apr_uint64_t)(now / apr_time_from_sec(60));
    int at = (int)(minute % AOAI_HISTORY_MINUTES), kind;

    if (apr_atomic_read64(&ring->minute_of[at]) != minute + 1) {
        for (kind = 0; kind < AOAI_HISTORY_KINDS; kind++) {
            apr_atomic_set64(&ring->minutes[at][kind], 0);
        }
        apr_atomic_set64(&ring->minute_of[at], minute + 1);
    }
    for (kind = 0; kind < AOAI_HISTORY_KINDS; kind++) {
        if (delta[kind]) {
            apr_atomic_add64(&ring->minutes[at][kind], delta[kind]);
        }
    }
}

static void sample_member(proxy_balancer *balancer, proxy_worker *worker,
                          apr_time_t now)
{
    aoai_history_ring *ring = find_ring(balancer->s->name,
                                        worker->s->name_ex, 1);
    aoai_member_stats stats;
    apr_uint64_t now_seen[AOAI_HISTORY_KINDS], delta[AOAI_HISTORY_KINDS];
    apr_time_t since;
    int kind;

    if (!ring || !aoai_table_stats(aoai_table_member(balancer, worker),
                                   &stats)) {
        return;
    }
    now_seen[AOAI_HISTORY_REQUESTS] = stats.counters[AOAI_COUNT_REQUESTS];
    now_seen[AOAI_HISTORY_429S] = stats.counters[AOAI_COUNT_THROTTLED];
    now_seen[AOAI_HISTORY_TOKENS] = stats.counters[AOAI_COUNT_TOTAL_TOKENS];
    now_seen[AOAI_HISTORY_THROTTLED_MS] = 0;
    since = (apr_time_t)apr_atomic_read64(&ring->sampled);
    for (kind = 0; kind < AOAI_HISTORY_KINDS; kind++) {
        /* A ring first seen here is a member added since start-up, whose
         * counters started at 0 (last is 0); a table made anew (resized,
         * or the module upgraded) starts its counters from 0 again. */
        delta[kind] = now_seen[kind] >= ring->last[kind]
                      ? now_seen[kind] - ring->last[kind] : now_seen[kind];
        ring->last[kind] = now_seen[kind];
    }
    if (since) {
        delta[AOAI_HISTORY_THROTTLED_MS] = throttled_ms(&stats, since, now);
        apr_atomic_add64(&ring->throttled_ms_total,
                         delta[AOAI_HISTORY_THROTTLED_MS]);
    }
    add_to_minute(ring, now, delta);
    apr_atomic_set64(&ring->sampled, (apr_uint64_t)now);
}

static apr_status_t sample_balancer(server_rec *s, proxy_balancer *balancer,
                                    void *baton)
{
    proxy_worker **workers;
    apr_time_t now = *(apr_time_t *)baton;
    int i;

    aoai_balancers_sync(s, balancer);
    workers = (proxy_worker **)balancer->workers->elts;
    for (i = 0; i < balancer->workers->nelts; i++) {
        sample_member(balancer, workers[i], now);
    }
    return APR_SUCCESS;
}

static apr_status_t sample_tick(int state, void *baton, apr_pool_t *pool)
{
    apr_time_t now = apr_time_now();

    (void)baton;
    (void)pool;
    if (state == AP_WATCHDOG_STATE_RUNNING && history_server) {
        aoai_balancers_each(history_server, sample_balancer, &now);
    }
    /* Anything but success would stop mod_watchdog calling again. */
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Start-up                                                             */

/* A member's ring, new at this start, begins from its counters as they
 * are: what they held before is not this hour's.  Rings kept over a
 * graceful restart go on from their last sample. */
static apr_status_t seed_balancer(server_rec *s, proxy_balancer *balancer,
                                  void *baton)
{
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    apr_time_t now = *(apr_time_t *)baton;
    int i;

    (void)s;
    for (i = 0; i < balancer->workers->nelts; i++) {
        aoai_history_ring *ring = find_ring(balancer->s->name,
                                            workers[i]->s->name_ex, 1);
        aoai_member_stats stats;

        if (!ring || ring->sampled
            || !aoai_table_stats(aoai_table_member(balancer, workers[i]),
                                 &stats)) {
            continue;
        }
        ring->last[AOAI_HISTORY_REQUESTS] = stats.counters[AOAI_COUNT_REQUESTS];
        ring->last[AOAI_HISTORY_429S] = stats.counters[AOAI_COUNT_THROTTLED];
        ring->last[AOAI_HISTORY_TOKENS] =
            stats.counters[AOAI_COUNT_TOTAL_TOKENS];
        ring->sampled = (apr_uint64_t)now;
    }
    return APR_SUCCESS;
}

static apr_status_t make_rings(server_rec *s, apr_uint32_t count)
{
    apr_size_t size = (apr_size_t)count * sizeof(aoai_history_ring);
    apr_status_t rv;

    if (history->rings && history->count == count) {
        return APR_SUCCESS;
    }
    if (history->shm) {
        apr_shm_destroy(history->shm);
        history->shm = NULL;
        history->rings = NULL;
    }
    rv = apr_shm_create(&history->shm, size, NULL, s->process->pool);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, AOAI_LOGNO(150)
                     "could not create the per-minute history (%u members, "
                     "%" APR_SIZE_T_FMT " bytes) in anonymous shared "
                     "memory: the balancer page shows no charts", count,
                     size);
        return rv;
    }
    history->rings = apr_shm_baseaddr_get(history->shm);
    history->count = count;
    memset(history->rings, 0, size);
    return APR_SUCCESS;
}

static apr_status_t count_members(server_rec *s, proxy_balancer *balancer,
                                  void *baton)
{
    (void)s;
    *(int *)baton += balancer->workers->nelts;
    return APR_SUCCESS;
}

static apr_status_t forget_history(void *baton)
{
    (void)baton;
    history = NULL;
    history_server = NULL;
    return APR_SUCCESS;
}

int aoai_history_post_config(apr_pool_t *pconf, server_rec *s,
                             int table_slots)
{
    APR_OPTIONAL_FN_TYPE(ap_watchdog_get_instance) *get_instance =
        APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_get_instance);
    APR_OPTIONAL_FN_TYPE(ap_watchdog_register_callback) *register_task =
        APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_register_callback);
    const char *key = apr_psprintf(pconf, HISTORY_RETAINED,
                                   sizeof(aoai_history_ring));
    ap_watchdog_t *watchdog;
    apr_time_t now;
    apr_status_t rv;
    int members = 0;

    apr_pool_cleanup_register(pconf, NULL, forget_history,
                              apr_pool_cleanup_null);
    /* No aoai balancer, nothing to chart: no thread waking every second. */
    aoai_balancers_each(s, count_members, &members);
    if (!members) {
        return OK;
    }
    if (!get_instance || !register_task) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, AOAI_LOGNO(151)
                     "mod_watchdog is not loaded: the balancer page shows "
                     "no per-minute charts and aoai_member_throttled_"
                     "seconds_total stays 0");
        return OK;
    }
    if (!(history = ap_retained_data_get(key))) {
        history = ap_retained_data_create(key, sizeof(*history));
        memset(history, 0, sizeof(*history));
    }
    /* As many rings as the table can have members. */
    if (make_rings(s, (apr_uint32_t)(table_slots / 2 + 1)) != APR_SUCCESS) {
        history = NULL;
        return OK;
    }
    history_server = s;
    now = apr_time_now();
    aoai_balancers_each(s, seed_balancer, &now);
    rv = get_instance(&watchdog, HISTORY_WATCHDOG, 0, 1, pconf);
    if (rv == APR_SUCCESS) {
        rv = register_task(watchdog, HISTORY_INTERVAL, NULL, sample_tick);
    }
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, AOAI_LOGNO(152)
                     "could not set up the per-minute history's mod_watchdog "
                     "task: the balancer page shows no charts");
    }
    return OK;
}

/* ------------------------------------------------------------------ */
/* Readers                                                              */

int aoai_history_read(const proxy_balancer *balancer,
                      const proxy_worker *worker, apr_time_t now,
                      aoai_history_view *view)
{
    const aoai_history_ring *ring = find_ring(balancer->s->name,
                                              worker->s->name_ex, 0);
    apr_uint64_t minute = (apr_uint64_t)(now / apr_time_from_sec(60));
    int i, kind;

    memset(view, 0, sizeof(*view));
    if (!ring) {
        return 0;
    }
    view->sampled = (apr_time_t)ring->sampled;
    view->throttled_ms_total = ring->throttled_ms_total;
    for (i = 0; i < AOAI_HISTORY_MINUTES && minute >= (apr_uint64_t)i; i++) {
        int at = (int)((minute - i) % AOAI_HISTORY_MINUTES);

        if (ring->minute_of[at] != minute - i + 1) {
            continue;
        }
        for (kind = 0; kind < AOAI_HISTORY_KINDS; kind++) {
            view->minutes[i][kind] = ring->minutes[at][kind];
        }
    }
    return 1;
}
