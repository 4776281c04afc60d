/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Throttle windows shared between gateways, through an ap_socache provider
 * (mod_socache_redis, mod_socache_memcache): AOAISharedCache.
 *
 * The request path keeps reading shared memory only.  The cache is touched
 * in two places, neither of them a member pick:
 *
 *   publish  a request that raised a member's window hands the new end to
 *            its child's publisher thread and waits for the store at most
 *            AOAISharedCacheTimeout.  The wait is there so that, normally,
 *            the window is in the cache before the client has its answer;
 *            the thread is there because no provider call can be given a
 *            deadline (apr_memcache waits on a hung server forever).
 *   sync     one mod_watchdog singleton per gateway reads every member's
 *            key each AOAISharedCacheSync and raises the local window to
 *            the remote one, clamped to AOAIThrottleMax.
 *
 * A key names the balancer and the member: the first 16 bytes of
 * SHA-256("balancer\0member"), which the provider turns into hex under the
 * "aoai-balancer:" namespace.  Its value is the window's end in epoch
 * milliseconds, in decimal: absolute, so it means the same on every host
 * whose clock is right (docs/shared-cache.md: "Clocks").
 *
 * The cache's state (reachable, last sync, counters) lives in a small
 * shared segment so that any child's status page can show it.
 */

#include "aoai_shared_cache.h"
#include "aoai_balancers.h"
#include "aoai_table.h"

#include "apr_atomic.h"
#include "apr_lib.h"
#include "apr_shm.h"
#include "apr_strings.h"
#include "apr_thread_cond.h"
#include "apr_thread_mutex.h"
#include "apr_thread_proc.h"

#include "ap_provider.h"
#include "ap_socache.h"
#include "http_log.h"
#include "mod_watchdog.h"

#include <openssl/evp.h>
#include <unistd.h>

APLOG_USE_MODULE(aoai_balancer);

/* A socache namespace becomes "namespace:" and must fit in 16 bytes. */
#define AOAI_CACHE_NAMESPACE "aoai-balancer"
#define AOAI_CACHE_ID_LENGTH 16
#define AOAI_WATCHDOG_NAME   "_aoai_balancer_"
/* Pending publishes per child; more distinct members than this throttled
 * within one store's time is not a real estate. */
#define AOAI_PUBLISH_QUEUE   64
/* 15 digits of milliseconds reach the year 33658; more is garbage and
 * could not be turned into an apr_time_t without overflow. */
#define AOAI_CACHE_VALUE_MAX 15
#define AOAI_LOG_REMINDER    apr_time_from_sec(60)

typedef enum {
    AOAI_CACHE_UNKNOWN = 0,   /* no sync has finished yet */
    AOAI_CACHE_REACHABLE,
    AOAI_CACHE_UNREACHABLE
} aoai_cache_reach;

/* Shared by every child: written by the sync and the publishers. */
typedef struct {
    volatile apr_uint32_t reach;            /* aoai_cache_reach */
    volatile apr_uint64_t last_sync;        /* apr_time_t of the last good one */
    volatile apr_uint64_t unreachable_since;
    volatile apr_uint64_t last_reminder;    /* "still unreachable" logged */
    volatile apr_uint64_t last_garbage_log;
    volatile apr_uint64_t counters[AOAI_CACHE_COUNTER_COUNT];
} aoai_cache_shared;

/* One member the sync reads.  Built in post_config; the watchdog thread
 * is the only writer of last_remote_ms afterwards. */
typedef struct {
    proxy_balancer *balancer;
    proxy_worker *worker;
    aoai_member_slot *slot;
    apr_interval_time_t throttle_max;
    unsigned char id[AOAI_CACHE_ID_LENGTH];
    apr_int64_t last_remote_ms;   /* the remote value last applied */
} aoai_sync_member;

typedef struct {
    unsigned char id[AOAI_CACHE_ID_LENGTH];
    apr_time_t until;
    aoai_member_slot *slot;   /* where a failed store is left for the sync */
} aoai_publish_job;

/* A provider instance of one thread's own: a child's publisher, the sync.
 * Each lives in a pool of its own, so that it can be thrown away and made
 * again without a lock (aoai_cache_link_call). */
typedef struct {
    apr_pool_t *pool;             /* NULL: not open */
    ap_socache_instance_t *instance;
} aoai_cache_link;

/* One per child process. */
typedef struct {
    aoai_cache_link link;         /* the publisher thread's */
    apr_thread_mutex_t *lock;
    apr_thread_cond_t *work_queued;
    apr_thread_cond_t *work_done;
    apr_thread_t *thread;
    aoai_publish_job pending[AOAI_PUBLISH_QUEUE];
    int pending_count;
    apr_uint64_t queued_ticket;   /* last ticket handed to a request */
    apr_uint64_t done_ticket;     /* every ticket up to this is stored */
    int storing;                  /* inside a provider call */
    int stopping;
} aoai_publisher;

/* This generation's view, set in post_config (parent) and inherited. */
static struct {
    const ap_socache_provider_t *provider;
    const char *provider_name;
    const char *argument;         /* for a link's provider->create() */
    apr_interval_time_t sync_interval;
    apr_interval_time_t timeout;
    server_rec *server;           /* for the module's own log lines */
    server_rec *provider_server;  /* handed to the provider; see below */
    apr_array_header_t *members;  /* aoai_sync_member */
    aoai_cache_link sync_link;    /* the watchdog thread's */
    unsigned char heartbeat_id[AOAI_CACHE_ID_LENGTH];
    aoai_cache_shared *shared;
} cache;

static aoai_publisher *publisher;   /* this child's */

/* Links the request threads of this child borrow for a call of their own
 * (objects, aoai_shared_cache_put/get), each used by one thread at a
 * time, kept for the next. */
static struct {
    apr_thread_mutex_t *lock;
    apr_array_header_t *idle;     /* aoai_cache_link * */
    apr_pool_t *pool;
} borrowed;

static APR_OPTIONAL_FN_TYPE(ap_watchdog_get_instance) *watchdog_get_instance;
static APR_OPTIONAL_FN_TYPE(ap_watchdog_register_callback) *watchdog_register;

/* ------------------------------------------------------------------ */
/* Configuration                                                        */

const char *aoai_shared_cache_set(cmd_parms *cmd, void *dummy,
                                  const char *arg)
{
    aoai_server_conf *conf = aoai_config_server(cmd->server);
    const char *colon = ap_strchr_c(arg, ':');
    const char *name = colon ? apr_pstrmemdup(cmd->temp_pool, arg,
                                              colon - arg)
                             : arg;
    const ap_socache_provider_t *provider;
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    (void)dummy;
    if (err) {
        return err;
    }
    conf->cache_set = 1;
    if (!strcasecmp(arg, "none")) {
        conf->cache_provider = NULL;
        return NULL;
    }
    provider = ap_lookup_provider(AP_SOCACHE_PROVIDER_GROUP, name,
                                  AP_SOCACHE_PROVIDER_VERSION);
    if (!provider) {
        return apr_psprintf(cmd->pool, "AOAISharedCache: no socache provider "
                            "named '%s' is loaded (for redis:host:port, "
                            "LoadModule socache_redis_module; for "
                            "memcache:host:port, LoadModule "
                            "socache_memcache_module)", name);
    }
    /* shmcb and dbm need a lock and keep their data on one host: they
     * would share nothing with another gateway. */
    if (provider->flags & AP_SOCACHE_FLAG_NOTMPSAFE) {
        return apr_psprintf(cmd->pool, "AOAISharedCache: the '%s' provider "
                            "keeps its data on this host, so other gateways "
                            "could not see it; name a networked one such as "
                            "redis:host:port or memcache:host:port", name);
    }
    err = provider->create(&conf->cache_instance, colon ? colon + 1 : NULL,
                           cmd->temp_pool, cmd->pool);
    if (err) {
        return apr_psprintf(cmd->pool, "AOAISharedCache %s: %s", arg, err);
    }
    conf->cache_provider = provider;
    conf->cache_provider_name = apr_pstrdup(cmd->pool, name);
    conf->cache_argument = colon ? apr_pstrdup(cmd->pool, colon + 1) : NULL;
    return NULL;
}

/* AOAISharedCacheSync and AOAISharedCacheTimeout: a duration in a range. */
const char *aoai_shared_cache_set_duration(cmd_parms *cmd, void *dummy,
                                           const char *arg)
{
    aoai_server_conf *conf = aoai_config_server(cmd->server);
    int is_sync = (cmd->info != NULL);
    apr_interval_time_t low = is_sync ? apr_time_from_msec(100)
                                      : apr_time_from_msec(1);
    apr_interval_time_t high = is_sync ? apr_time_from_sec(60)
                                       : apr_time_from_sec(10);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    apr_interval_time_t value;

    (void)dummy;
    if (err) {
        return err;
    }
    if ((err = aoai_config_duration(cmd, arg, &value))) {
        return err;
    }
    if (value < low || value > high) {
        return apr_psprintf(cmd->pool, "%s: %s is outside %s",
                            cmd->cmd->name, arg,
                            is_sync ? "100ms-60s (mod_watchdog runs tasks in "
                                      "100 ms steps)"
                                    : "1ms-10s");
    }
    if (is_sync) {
        conf->cache_sync = value;
    }
    else {
        conf->cache_timeout = value;
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Keys, values, state                                                  */

static void member_id(const char *balancer_name, const char *member_name,
                      unsigned char id[AOAI_CACHE_ID_LENGTH])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_length = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();

    memset(id, 0, AOAI_CACHE_ID_LENGTH);
    if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL)
        && EVP_DigestUpdate(md, balancer_name, strlen(balancer_name) + 1)
        && EVP_DigestUpdate(md, member_name, strlen(member_name))
        && EVP_DigestFinal_ex(md, digest, &digest_length)
        && digest_length >= AOAI_CACHE_ID_LENGTH) {
        memcpy(id, digest, AOAI_CACHE_ID_LENGTH);
    }
    EVP_MD_CTX_free(md);
}

/* Only plain decimal milliseconds: anything else another writer put under
 * the key is garbage, never a window. */
static int parse_window_end(const char *value, apr_size_t length,
                            apr_int64_t *end_ms)
{
    apr_int64_t ms = 0;
    apr_size_t i;

    if (length == 0 || length > AOAI_CACHE_VALUE_MAX) {
        return 0;
    }
    for (i = 0; i < length; i++) {
        if (!apr_isdigit(value[i])) {
            return 0;
        }
        ms = ms * 10 + (value[i] - '0');
    }
    *end_ms = ms;
    return 1;
}

static void count(aoai_cache_counter counter)
{
    apr_atomic_inc64(&cache.shared->counters[counter]);
}

/* Values are a window's end (epoch ms) or an object's member (a hash, in
 * hex): neither is longer than this. */
#define AOAI_CACHE_TEXT_MAX 32

static const struct ap_socache_hints cache_hints = {
    AOAI_CACHE_ID_LENGTH, AOAI_CACHE_TEXT_MAX, 0
};

static void link_close(aoai_cache_link *link)
{
    if (link->pool) {
        cache.provider->destroy(link->instance, cache.provider_server);
        apr_pool_destroy(link->pool);
        link->pool = NULL;
    }
}

/* A child of APR's global pool, whose allocator locks, so that any thread
 * may make or drop one; what a thread still holds when the process ends
 * goes with the global pool. */
static apr_status_t link_open(aoai_cache_link *link)
{
    apr_status_t rv = apr_pool_create(&link->pool, NULL);

    if (rv != APR_SUCCESS) {
        link->pool = NULL;
        return rv;
    }
    if (cache.provider->create(&link->instance, cache.argument, link->pool,
                               link->pool)
        || (rv = cache.provider->init(link->instance, AOAI_CACHE_NAMESPACE,
                                      &cache_hints, cache.provider_server,
                                      link->pool)) != APR_SUCCESS) {
        apr_pool_destroy(link->pool);
        link->pool = NULL;
        return rv != APR_SUCCESS ? rv : APR_EGENERAL;
    }
    return APR_SUCCESS;
}

typedef struct {
    const unsigned char *id;
    apr_time_t when;              /* store: the time stored, unless text */
    apr_time_t expiry;            /* store */
    const char *text;             /* store: this instead of a time */
    char *value;                  /* retrieve: AOAI_CACHE_VALUE_MAX + 2 */
    unsigned int length;          /* retrieve: in, room; out, length */
    apr_pool_t *pool;
} aoai_cache_call;

/* A time under a key, as the decimal epoch milliseconds every reader
 * expects; or, with call->value, what the key holds. */
static apr_status_t link_do(aoai_cache_link *link, aoai_cache_call *call)
{
    char value[AOAI_CACHE_VALUE_MAX + 2];
    int length;

    if (call->text) {
        return cache.provider->store(link->instance, cache.provider_server,
                                     call->id, AOAI_CACHE_ID_LENGTH,
                                     call->expiry,
                                     (unsigned char *)call->text,
                                     (unsigned int)strlen(call->text),
                                     call->pool);
    }
    if (call->value) {
        return cache.provider->retrieve(link->instance, cache.provider_server,
                                        call->id, AOAI_CACHE_ID_LENGTH,
                                        (unsigned char *)call->value,
                                        &call->length, call->pool);
    }
    length = apr_snprintf(value, sizeof(value), "%" APR_INT64_T_FMT,
                          apr_time_as_msec(call->when));
    return cache.provider->store(link->instance, cache.provider_server,
                                 call->id, AOAI_CACHE_ID_LENGTH, call->expiry,
                                 (unsigned char *)value, (unsigned int)length,
                                 call->pool);
}

/* One store or read, once more on a fresh link when the first failed.
 * A cache that restarted has closed the connections each thread keeps to
 * it; the first call on such a connection fails (EPIPE), and apr_redis and
 * apr_memcache then hold the server for dead for 5 s in that thread,
 * whatever the cache's state.  A new link has fresh connections and no
 * such memory, so a stale connection never costs a window.  A call that
 * timed out is not repeated: the cache is hung, not restarted. */
static apr_status_t link_call(aoai_cache_link *link, aoai_cache_call *call)
{
    unsigned int room = call->length;
    apr_status_t rv = link->pool ? link_do(link, call) : APR_ENOTSOCK;

    /* A read's "not found" is no failure: the key is not there (or the
     * server is held for dead, which the heartbeat store finds out). */
    if (rv == APR_SUCCESS || APR_STATUS_IS_TIMEUP(rv)
        || (rv == APR_NOTFOUND && call->value)) {
        return rv;
    }
    link_close(link);
    if (link_open(link) != APR_SUCCESS) {
        return rv;
    }
    call->length = room;
    return link_do(link, call);
}

/* Providers keep whole seconds and refuse an expiry under one; the value
 * itself says exactly when the window ends. */
static apr_status_t store_window(aoai_cache_link *link,
                                 const unsigned char *id, apr_time_t until,
                                 apr_pool_t *pool)
{
    aoai_cache_call call = { id, until, until + apr_time_from_sec(2), NULL,
                             NULL, 0, pool };
    return link_call(link, &call);
}

/* The provider logs every failed call itself, at error level: with the
 * cache down that is a line per member per sync.  It is handed a copy of
 * the main server that logs only emergencies, and the module logs one
 * line when the cache goes away, a reminder a minute, and one when it is
 * back.  LogLevel debug hands it the real server again. */
static server_rec *quiet_server(apr_pool_t *pconf, server_rec *s)
{
    server_rec *quiet;

    if (s->log.level >= APLOG_DEBUG) {
        return s;
    }
    quiet = apr_pmemdup(pconf, s, sizeof(*s));
    quiet->log.module_levels = NULL;
    quiet->log.level = APLOG_EMERG;
    return quiet;
}

static void note_unreachable(apr_status_t rv, const char *what)
{
    apr_time_t now = apr_time_now();
    apr_uint32_t was = apr_atomic_xchg32(&cache.shared->reach,
                                         AOAI_CACHE_UNREACHABLE);

    if (was != AOAI_CACHE_UNREACHABLE) {
        apr_atomic_set64(&cache.shared->unreachable_since, (apr_uint64_t)now);
        apr_atomic_set64(&cache.shared->last_reminder, (apr_uint64_t)now);
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, cache.server, AOAI_LOGNO(035)
                     "AOAISharedCache %s is unreachable (%s failed): "
                     "throttle windows are not shared with other gateways "
                     "until it answers again; this gateway goes on with "
                     "its own", cache.provider_name, what);
        return;
    }
    {
        apr_uint64_t last = apr_atomic_read64(&cache.shared->last_reminder);
        if (now - (apr_time_t)last >= AOAI_LOG_REMINDER
            && apr_atomic_cas64(&cache.shared->last_reminder,
                                (apr_uint64_t)now, last) == last) {
            apr_time_t since = (apr_time_t)apr_atomic_read64(
                &cache.shared->unreachable_since);
            ap_log_error(APLOG_MARK, APLOG_ERR, rv, cache.server,
                         AOAI_LOGNO(050) "AOAISharedCache %s is still "
                         "unreachable, for %" APR_TIME_T_FMT " s now (%s "
                         "failed)", cache.provider_name,
                         apr_time_sec(now - since), what);
        }
    }
}

static void note_reachable(apr_time_t now)
{
    apr_uint32_t was = apr_atomic_xchg32(&cache.shared->reach,
                                         AOAI_CACHE_REACHABLE);

    apr_atomic_set64(&cache.shared->last_sync, (apr_uint64_t)now);
    if (was == AOAI_CACHE_UNREACHABLE) {
        apr_time_t since = (apr_time_t)apr_atomic_read64(
            &cache.shared->unreachable_since);
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, cache.server,
                     AOAI_LOGNO(036) "AOAISharedCache %s is reachable again "
                     "after %" APR_TIME_T_FMT " ms; sharing throttle "
                     "windows resumes", cache.provider_name,
                     apr_time_as_msec(now - since));
    }
}

static void note_garbage(const aoai_sync_member *member, const char *value,
                         apr_size_t length, apr_time_t now)
{
    apr_uint64_t last = apr_atomic_read64(&cache.shared->last_garbage_log);

    count(AOAI_CACHE_REJECTED);
    if ((last && now - (apr_time_t)last < AOAI_LOG_REMINDER)
        || apr_atomic_cas64(&cache.shared->last_garbage_log,
                            (apr_uint64_t)now, last) != last) {
        return;
    }
    ap_log_error(APLOG_MARK, APLOG_WARNING, 0, cache.server, AOAI_LOGNO(037)
                 "AOAISharedCache %s holds '%.*s' for member %s of %s, "
                 "which is not a window's end in epoch milliseconds; "
                 "ignored (logged at most once a minute)",
                 cache.provider_name, (int)(length > 32 ? 32 : length),
                 value, member->worker->s->name_ex, member->balancer->s->name);
}

/* ------------------------------------------------------------------ */
/* Sync: the watchdog singleton                                          */

static apr_status_t republish(aoai_sync_member *member, apr_time_t now,
                              apr_pool_t *pool)
{
    volatile apr_uint64_t *unpublished = aoai_table_unpublished(member->slot);
    apr_uint64_t until = apr_atomic_read64(unpublished);
    apr_status_t rv;

    if (!until) {
        return APR_SUCCESS;
    }
    if ((apr_time_t)until > now) {
        if ((rv = store_window(&cache.sync_link, member->id,
                               (apr_time_t)until, pool)) != APR_SUCCESS) {
            return rv;
        }
        count(AOAI_CACHE_PUBLISHED);
    }
    apr_atomic_cas64(unpublished, 0, until);
    return APR_SUCCESS;
}

static apr_status_t merge_member(aoai_sync_member *member, apr_time_t now,
                                 apr_pool_t *pool)
{
    char value[AOAI_CACHE_VALUE_MAX + 2];
    aoai_cache_call call = { member->id, 0, 0, NULL, value,
                             sizeof(value) - 1, pool };
    unsigned int length;
    apr_int64_t end_ms;
    apr_time_t until;
    apr_status_t rv;

    rv = republish(member, now, pool);
    if (rv != APR_SUCCESS) {
        return rv;
    }
    rv = link_call(&cache.sync_link, &call);
    length = call.length;
    if (rv == APR_NOTFOUND) {
        return APR_SUCCESS;
    }
    if (rv == APR_ENOMEM || rv == APR_ENOSPC) {
        /* The cache answered, with more than any window needs. */
        note_garbage(member, "(too long)", 10, now);
        return APR_SUCCESS;
    }
    if (rv != APR_SUCCESS) {
        return rv;
    }
    if (!parse_window_end(value, length, &end_ms)) {
        note_garbage(member, value, length, now);
        return APR_SUCCESS;
    }
    /* Each value is applied once: a stale far-future value clamped to
     * AOAIThrottleMax must not re-park the member on every sync. */
    if (end_ms == member->last_remote_ms) {
        return APR_SUCCESS;
    }
    member->last_remote_ms = end_ms;
    until = apr_time_from_msec(end_ms);
    if (until <= now) {
        return APR_SUCCESS;
    }
    if (until - now > member->throttle_max) {
        until = now + member->throttle_max;
    }
    if (aoai_table_raise_window(member->slot, until)) {
        count(AOAI_CACHE_LEARNED);
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, cache.server, AOAI_LOGNO(038)
                     "%s: member %s is throttled for %" APR_TIME_T_FMT
                     " ms, as another gateway saw", member->balancer->s->name,
                     member->worker->s->name_ex,
                     apr_time_as_msec(until - now));
    }
    return APR_SUCCESS;
}

/* apr_redis and apr_memcache answer "not found" to every read while they
 * hold their server for dead, so an absent key proves nothing.  A store
 * never answers that: the sync starts with one, of this key. */
static apr_status_t store_heartbeat(apr_time_t now, apr_pool_t *pool)
{
    aoai_cache_call call = { cache.heartbeat_id, now,
                             now + apr_time_from_sec(10), NULL, NULL, 0,
                             pool };
    return link_call(&cache.sync_link, &call);
}

static apr_status_t sync_tick(int state, void *baton, apr_pool_t *pool)
{
    apr_time_t now = apr_time_now();
    apr_status_t rv;
    int i;

    (void)baton;
    if (state == AP_WATCHDOG_STATE_STOPPING) {
        link_close(&cache.sync_link);
    }
    if (state != AP_WATCHDOG_STATE_RUNNING) {
        return APR_SUCCESS;
    }
    rv = store_heartbeat(now, pool);
    for (i = 0; rv == APR_SUCCESS && i < cache.members->nelts; i++) {
        /* One failed read says enough; the next tick tries again. */
        rv = merge_member(&APR_ARRAY_IDX(cache.members, i, aoai_sync_member),
                          now, pool);
    }
    if (rv == APR_SUCCESS) {
        count(AOAI_CACHE_SYNCS);
        note_reachable(apr_time_now());
    }
    else {
        count(AOAI_CACHE_SYNC_FAILURES);
        note_unreachable(rv, "the sync");
    }
    /* Anything but success would stop mod_watchdog calling again. */
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Objects: a name's value, stored and read by the request thread       */

static aoai_cache_link *borrow_link(void)
{
    aoai_cache_link *link = NULL;

    if (!borrowed.lock) {
        return NULL;
    }
    apr_thread_mutex_lock(borrowed.lock);
    if (borrowed.idle->nelts) {
        link = APR_ARRAY_IDX(borrowed.idle, --borrowed.idle->nelts,
                             aoai_cache_link *);
    }
    else {
        link = apr_pcalloc(borrowed.pool, sizeof(*link));
    }
    apr_thread_mutex_unlock(borrowed.lock);
    return link;
}

static void return_link(aoai_cache_link *link)
{
    apr_thread_mutex_lock(borrowed.lock);
    APR_ARRAY_PUSH(borrowed.idle, aoai_cache_link *) = link;
    apr_thread_mutex_unlock(borrowed.lock);
}

static apr_status_t close_borrowed(void *baton)
{
    int i;

    (void)baton;
    for (i = 0; i < borrowed.idle->nelts; i++) {
        link_close(APR_ARRAY_IDX(borrowed.idle, i, aoai_cache_link *));
    }
    memset(&borrowed, 0, sizeof(borrowed));
    return APR_SUCCESS;
}

static void object_id(const char *name, unsigned char id[AOAI_CACHE_ID_LENGTH])
{
    member_id("\001object", name, id);
}

int aoai_shared_cache_put(request_rec *r, const char *name, const char *text,
                          apr_time_t until)
{
    unsigned char id[AOAI_CACHE_ID_LENGTH];
    aoai_cache_link *link = borrow_link();
    aoai_cache_call call = { id, 0, until, text, NULL, 0, r->pool };
    apr_status_t rv;

    if (!link || strlen(text) > AOAI_CACHE_TEXT_MAX) {
        return 0;
    }
    object_id(name, id);
    rv = link_call(link, &call);
    return_link(link);
    if (rv != APR_SUCCESS) {
        count(AOAI_CACHE_PUBLISH_FAILURES);
        note_unreachable(rv, "storing an object");
        return 0;
    }
    count(AOAI_CACHE_PUBLISHED);
    return 1;
}

int aoai_shared_cache_get(request_rec *r, const char *name, char *text,
                          apr_size_t size)
{
    unsigned char id[AOAI_CACHE_ID_LENGTH];
    char value[AOAI_CACHE_TEXT_MAX + 1];
    aoai_cache_link *link = borrow_link();
    aoai_cache_call call = { id, 0, 0, NULL, value, sizeof(value) - 1,
                             r->pool };
    apr_status_t rv;

    if (!link) {
        return 0;
    }
    object_id(name, id);
    rv = link_call(link, &call);
    return_link(link);
    if (rv != APR_SUCCESS || call.length >= size) {
        if (rv != APR_SUCCESS && rv != APR_NOTFOUND) {
            note_unreachable(rv, "reading an object");
        }
        return 0;
    }
    memcpy(text, value, call.length);
    text[call.length] = '\0';
    return 1;
}

/* A member near the end of what it has left (issue 19): the sync may be
 * up to AOAISharedCacheSync behind another gateway's 429, so the request
 * reads the member's key itself, and a window found there parks the
 * member here at once.  Not while the cache is known unreachable: a read
 * of a dead server would wait on every such call. */
int aoai_shared_cache_window(request_rec *r, proxy_balancer *balancer,
                             proxy_worker *worker,
                             apr_interval_time_t throttle_max,
                             apr_time_t now)
{
    unsigned char id[AOAI_CACHE_ID_LENGTH];
    char value[AOAI_CACHE_VALUE_MAX + 2];
    aoai_cache_call call = { id, 0, 0, NULL, value, sizeof(value) - 1,
                             r->pool };
    aoai_cache_link *link;
    apr_int64_t end_ms;
    apr_time_t until;
    apr_status_t rv;

    if (!cache.shared
        || apr_atomic_read32(&cache.shared->reach) == AOAI_CACHE_UNREACHABLE
        || !(link = borrow_link())) {
        return 0;
    }
    member_id(balancer->s->name, worker->s->name_ex, id);
    rv = link_call(link, &call);
    return_link(link);
    if (rv != APR_SUCCESS || !parse_window_end(value, call.length, &end_ms)
        || (until = apr_time_from_msec(end_ms)) <= now) {
        return 0;
    }
    if (until - now > throttle_max) {
        until = now + throttle_max;
    }
    if (aoai_table_raise_window(aoai_table_member(balancer, worker), until)) {
        count(AOAI_CACHE_LEARNED);
    }
    return 1;
}

/* A member's last calls, one gateway at a time (issue 19): reading the
 * window before each call still lets two gateways send at once the call
 * that earns the 429, each before the other's 429 is in the cache.  So,
 * near the end, a call is announced under a key of its own (the member's,
 * in a namespace of claims) with a token that names it, and goes only
 * when the token read back is its own and no other live one was there
 * before; the answer's headers release it (a 429's window is stored
 * first), and a claim that is never released expires after
 * AOAI_CLAIM_TTL.  A claim is only ever a reason to pass a member over
 * for one pick, never a window. */
#define AOAI_CLAIM_TTL apr_time_from_sec(5)
#define AOAI_CLAIM_NOTE "aoai-last-call-claim"

static void claim_id(proxy_balancer *balancer, proxy_worker *worker,
                     unsigned char id[AOAI_CACHE_ID_LENGTH])
{
    char name[512];

    apr_snprintf(name, sizeof(name), "\002claim %s", balancer->s->name);
    member_id(name, worker->s->name_ex, id);
}

/* Another call's claim that has not expired. */
static int claimed_by_other(const char *value, unsigned int length,
                            const char *mine, apr_time_t now)
{
    apr_int64_t until_ms = 0;
    unsigned int i;

    for (i = 0; i < length && apr_isdigit(value[i]); i++) {
        until_ms = until_ms * 10 + (value[i] - '0');
    }
    return i > 0 && until_ms > apr_time_as_msec(now)
           && (!mine || strlen(mine) != length
               || memcmp(mine, value, length));
}

static int read_claim(aoai_cache_link *link, unsigned char *id,
                      const char *mine, apr_time_t now, apr_pool_t *pool)
{
    char value[AOAI_CACHE_TEXT_MAX + 1];
    aoai_cache_call call = { id, 0, 0, NULL, value, sizeof(value) - 1, pool };

    return link_call(link, &call) == APR_SUCCESS
           && claimed_by_other(value, call.length, mine, now);
}

int aoai_shared_cache_claim_last(request_rec *r, proxy_balancer *balancer,
                                 proxy_worker *worker, apr_time_t now)
{
    static volatile apr_uint32_t sequence;
    unsigned char id[AOAI_CACHE_ID_LENGTH];
    aoai_cache_link *link;
    const char *mine;
    int go;

    if (!cache.shared
        || apr_atomic_read32(&cache.shared->reach) == AOAI_CACHE_UNREACHABLE
        || !(link = borrow_link())) {
        return 1;
    }
    claim_id(balancer, worker, id);
    mine = apr_psprintf(r->pool, "%" APR_INT64_T_FMT "-%" APR_PID_T_FMT
                        "-%u", apr_time_as_msec(now + AOAI_CLAIM_TTL),
                        getpid(), apr_atomic_inc32(&sequence));
    go = !read_claim(link, id, NULL, now, r->pool);
    if (go) {
        aoai_cache_call store = { id, 0, now + AOAI_CLAIM_TTL
                                  + apr_time_from_sec(1), mine, NULL, 0,
                                  r->pool };
        go = link_call(link, &store) != APR_SUCCESS
             || !read_claim(link, id, mine, now, r->pool);
    }
    return_link(link);
    if (go) {
        apr_table_setn(r->notes, AOAI_CLAIM_NOTE,
                       apr_pstrcat(r->pool, balancer->s->name, "|",
                                   worker->s->name_ex, NULL));
    }
    return go;
}

void aoai_shared_cache_release_last(request_rec *r, proxy_balancer *balancer,
                                    proxy_worker *worker)
{
    unsigned char id[AOAI_CACHE_ID_LENGTH];
    const char *held = apr_table_get(r->notes, AOAI_CLAIM_NOTE);
    aoai_cache_link *link;

    if (!held || strcmp(held, apr_pstrcat(r->pool, balancer->s->name, "|",
                                         worker->s->name_ex, NULL))
        || !(link = borrow_link())) {
        return;
    }
    apr_table_unset(r->notes, AOAI_CLAIM_NOTE);
    claim_id(balancer, worker, id);
    {
        aoai_cache_call store = { id, 0, apr_time_now()
                                  + apr_time_from_sec(2), "0", NULL, 0,
                                  r->pool };
        link_call(link, &store);
    }
    return_link(link);
}

/* ------------------------------------------------------------------ */
/* Publish: one thread per child                                        */

/* A window the cache did not take is left in the member's slot; the sync
 * stores it once the cache answers again.  Each child's provider holds a
 * server it saw fail for dead for 5 s, so its own stores can go on failing
 * after the sync has found the cache back. */
static void note_unpublished(aoai_member_slot *slot, apr_time_t until)
{
    volatile apr_uint64_t *unpublished = aoai_table_unpublished(slot);

    while (unpublished) {
        apr_uint64_t seen = apr_atomic_read64(unpublished);
        if (seen >= (apr_uint64_t)until
            || apr_atomic_cas64(unpublished, (apr_uint64_t)until, seen)
               == seen) {
            break;
        }
    }
}

static void *APR_THREAD_FUNC publish_loop(apr_thread_t *thread, void *baton)
{
    aoai_publisher *pub = baton;
    aoai_publish_job batch[AOAI_PUBLISH_QUEUE];
    apr_pool_t *pool;

    apr_pool_create(&pool, apr_thread_pool_get(thread));
    apr_thread_mutex_lock(pub->lock);
    for (;;) {
        apr_uint64_t ticket;
        int jobs, i;

        while (!pub->stopping && pub->pending_count == 0) {
            apr_thread_cond_wait(pub->work_queued, pub->lock);
        }
        if (pub->stopping) {
            break;
        }
        jobs = pub->pending_count;
        memcpy(batch, pub->pending, jobs * sizeof(batch[0]));
        pub->pending_count = 0;
        ticket = pub->queued_ticket;
        pub->storing = 1;
        apr_thread_mutex_unlock(pub->lock);

        for (i = 0; i < jobs; i++) {
            apr_status_t rv = store_window(&pub->link, batch[i].id,
                                           batch[i].until, pool);
            if (rv == APR_SUCCESS) {
                count(AOAI_CACHE_PUBLISHED);
            }
            else {
                count(AOAI_CACHE_PUBLISH_FAILURES);
                note_unpublished(batch[i].slot, batch[i].until);
                note_unreachable(rv, "storing a window");
            }
        }
        apr_pool_clear(pool);

        apr_thread_mutex_lock(pub->lock);
        pub->storing = 0;
        pub->done_ticket = ticket;
        apr_thread_cond_broadcast(pub->work_done);
    }
    apr_thread_mutex_unlock(pub->lock);
    link_close(&pub->link);
    apr_pool_destroy(pool);
    /* A plain return, not apr_thread_exit(): pthread_exit()'s forced
     * unwind leaves the stack's ASan shadow poisoned, and the sanitizer
     * build then reports its own thread teardown. */
    return NULL;
}

void aoai_shared_cache_publish(request_rec *r, proxy_balancer *balancer,
                               proxy_worker *worker, apr_time_t until)
{
    aoai_publisher *pub = publisher;
    aoai_publish_job *job = NULL;
    unsigned char id[AOAI_CACHE_ID_LENGTH];
    apr_uint64_t ticket;
    apr_time_t deadline;
    int i;

    if (!pub) {
        return;
    }
    member_id(balancer->s->name, worker->s->name_ex, id);
    deadline = apr_time_now() + cache.timeout;

    apr_thread_mutex_lock(pub->lock);
    for (i = 0; i < pub->pending_count; i++) {
        if (!memcmp(pub->pending[i].id, id, sizeof(id))) {
            job = &pub->pending[i];
            break;
        }
    }
    if (!job && pub->pending_count < AOAI_PUBLISH_QUEUE) {
        job = &pub->pending[pub->pending_count++];
        memcpy(job->id, id, sizeof(id));
        job->until = 0;
        job->slot = aoai_table_member(balancer, worker);
    }
    if (!job) {
        apr_thread_mutex_unlock(pub->lock);
        count(AOAI_CACHE_PUBLISH_FAILURES);
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, AOAI_LOGNO(039)
                      "AOAISharedCache: %d windows already wait to be "
                      "stored; the window of %s is not shared",
                      AOAI_PUBLISH_QUEUE, worker->s->name_ex);
        return;
    }
    if (until > job->until) {
        job->until = until;
    }
    ticket = ++pub->queued_ticket;
    apr_thread_cond_signal(pub->work_queued);
    while (pub->done_ticket < ticket) {
        apr_time_t left = deadline - apr_time_now();
        if (left <= 0) {
            break;
        }
        apr_thread_cond_timedwait(pub->work_done, pub->lock, left);
    }
    if (pub->done_ticket < ticket) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, AOAI_LOGNO(040)
                      "AOAISharedCache: storing the window of %s takes "
                      "longer than AOAISharedCacheTimeout; not waiting",
                      worker->s->name_ex);
    }
    apr_thread_mutex_unlock(pub->lock);
}

/* A thread inside a provider call may never come back (a hung memcached):
 * it is joined only when it is waiting for work.  Everything it touches
 * comes from the process pool, which outlives the child's. */
static apr_status_t publisher_stop(void *baton)
{
    aoai_publisher *pub = baton;
    apr_status_t thread_rv;
    int idle;

    apr_thread_mutex_lock(pub->lock);
    pub->stopping = 1;
    idle = !pub->storing;
    apr_thread_cond_broadcast(pub->work_queued);
    apr_thread_mutex_unlock(pub->lock);
    if (idle) {
        apr_thread_join(&thread_rv, pub->thread);
    }
    publisher = NULL;
    return APR_SUCCESS;
}

static void shared_cache_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_pool_t *pool = s->process->pool;
    aoai_publisher *pub;
    apr_status_t rv;

    if (!cache.provider) {
        return;
    }
    pub = apr_pcalloc(pool, sizeof(*pub));
    if ((rv = apr_thread_mutex_create(&pub->lock, APR_THREAD_MUTEX_DEFAULT,
                                      pool)) != APR_SUCCESS
        || (rv = apr_thread_cond_create(&pub->work_queued, pool))
           != APR_SUCCESS
        || (rv = apr_thread_cond_create(&pub->work_done, pool))
           != APR_SUCCESS
        || (rv = apr_thread_create(&pub->thread, NULL, publish_loop, pub,
                                   pool)) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, AOAI_LOGNO(041)
                     "AOAISharedCache: could not start this child's "
                     "publisher thread; its 429s are not shared (the sync "
                     "still reads the other gateways')");
        return;
    }
    publisher = pub;
    apr_pool_cleanup_register(pchild, pub, publisher_stop,
                              apr_pool_cleanup_null);
    if (apr_thread_mutex_create(&borrowed.lock, APR_THREAD_MUTEX_DEFAULT,
                                pool) == APR_SUCCESS) {
        borrowed.pool = pool;
        borrowed.idle = apr_array_make(pool, 8, sizeof(aoai_cache_link *));
        apr_pool_cleanup_register(pchild, NULL, close_borrowed,
                                  apr_pool_cleanup_null);
    }
}

/* ------------------------------------------------------------------ */
/* Start-up                                                             */

static apr_status_t add_sync_members(server_rec *s, proxy_balancer *balancer,
                                     void *baton)
{
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    apr_interval_time_t throttle_max = aoai_config_throttle_max(s, balancer);
    int j;

    (void)baton;
    for (j = 0; j < balancer->workers->nelts; j++) {
        aoai_member_slot *slot = aoai_table_member(balancer, workers[j]);
        aoai_sync_member *member;

        if (!slot) {
            continue;
        }
        member = apr_array_push(cache.members);
        member->balancer = balancer;
        member->worker = workers[j];
        member->slot = slot;
        member->throttle_max = throttle_max;
        member->last_remote_ms = -1;
        member_id(balancer->s->name, workers[j]->s->name_ex, member->id);
    }
    return APR_SUCCESS;
}

static apr_status_t forget_cache(void *baton)
{
    (void)baton;
    memset(&cache, 0, sizeof(cache));
    return APR_SUCCESS;
}

int aoai_shared_cache_post_config(apr_pool_t *pconf, server_rec *s,
                                  const aoai_server_conf *conf)
{
    ap_watchdog_t *watchdog;
    apr_shm_t *shm;
    apr_status_t rv;

    memset(&cache, 0, sizeof(cache));
    if (!conf->cache_provider) {
        return OK;
    }
    watchdog_get_instance = APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_get_instance);
    watchdog_register = APR_RETRIEVE_OPTIONAL_FN(ap_watchdog_register_callback);
    if (!watchdog_get_instance || !watchdog_register) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, AOAI_LOGNO(042)
                     "AOAISharedCache needs mod_watchdog (LoadModule "
                     "watchdog_module, where it is not built in)");
        return !OK;
    }
    rv = apr_shm_create(&shm, sizeof(aoai_cache_shared), NULL, pconf);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, AOAI_LOGNO(043)
                     "AOAISharedCache: could not create its status in "
                     "anonymous shared memory");
        return !OK;
    }
    cache.shared = apr_shm_baseaddr_get(shm);
    memset(cache.shared, 0, sizeof(*cache.shared));

    /* This instance only proves, at start-up, that the provider takes the
     * argument: every thread that talks to the cache makes a link of its
     * own. */
    rv = conf->cache_provider->init(conf->cache_instance, AOAI_CACHE_NAMESPACE,
                                    &cache_hints, s, pconf);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, AOAI_LOGNO(044)
                     "AOAISharedCache %s: the provider could not be set up",
                     conf->cache_provider_name);
        return !OK;
    }
    conf->cache_provider->destroy(conf->cache_instance, s);
    cache.provider = conf->cache_provider;
    cache.argument = conf->cache_argument;
    cache.provider_name = conf->cache_provider_name;
    cache.sync_interval = conf->cache_sync;
    cache.timeout = conf->cache_timeout;
    cache.server = s;
    cache.provider_server = quiet_server(pconf, s);
    cache.members = apr_array_make(pconf, 8, sizeof(aoai_sync_member));
    apr_pool_cleanup_register(pconf, NULL, forget_cache,
                              apr_pool_cleanup_null);
    aoai_balancers_each(s, add_sync_members, NULL);
    member_id("", "heartbeat", cache.heartbeat_id);

    rv = watchdog_get_instance(&watchdog, AOAI_WATCHDOG_NAME, 0, 1, pconf);
    if (rv == APR_SUCCESS) {
        rv = watchdog_register(watchdog, cache.sync_interval, NULL,
                               sync_tick);
    }
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, AOAI_LOGNO(045)
                     "AOAISharedCache: could not set up its mod_watchdog "
                     "task");
        return !OK;
    }
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, AOAI_LOGNO(046)
                 "AOAISharedCache %s: %d members shared, read every %"
                 APR_TIME_T_FMT " ms, publish waits at most %" APR_TIME_T_FMT
                 " ms", cache.provider_name, cache.members->nelts,
                 apr_time_as_msec(cache.sync_interval),
                 apr_time_as_msec(cache.timeout));
    return OK;
}

/* ------------------------------------------------------------------ */
/* For the status pages                                                 */

int aoai_shared_cache_view(aoai_cache_view *view)
{
    int i;

    memset(view, 0, sizeof(*view));
    if (!cache.provider) {
        return 0;
    }
    view->provider = cache.provider_name;
    view->reachable = apr_atomic_read32(&cache.shared->reach)
                      == AOAI_CACHE_REACHABLE;
    view->last_sync = (apr_time_t)apr_atomic_read64(&cache.shared->last_sync);
    for (i = 0; i < AOAI_CACHE_COUNTER_COUNT; i++) {
        view->counters[i] = apr_atomic_read64(&cache.shared->counters[i]);
    }
    return 1;
}

void aoai_shared_cache_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_child_init(shared_cache_child_init, NULL, NULL, APR_HOOK_MIDDLE);
}
