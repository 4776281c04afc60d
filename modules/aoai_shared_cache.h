/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_shared_cache: throttle windows shared between gateways through an
 * ap_socache provider (redis, memcache): AOAISharedCache.
 */

#ifndef AOAI_SHARED_CACHE_H
#define AOAI_SHARED_CACHE_H

#include "httpd.h"
#include "mod_proxy.h"

#include "aoai_config.h"

/* What the shared cache has done, for the status pages. */
typedef enum {
    AOAI_CACHE_SYNCS,             /* syncs that read every member */
    AOAI_CACHE_SYNC_FAILURES,
    AOAI_CACHE_PUBLISHED,         /* windows stored */
    AOAI_CACHE_PUBLISH_FAILURES,
    AOAI_CACHE_LEARNED,           /* remote windows that moved a local one */
    AOAI_CACHE_REJECTED,          /* values that were not a window's end */
    AOAI_CACHE_COUNTER_COUNT
} aoai_cache_counter;

typedef struct {
    const char *provider;
    int reachable;
    apr_time_t last_sync;         /* 0: none yet */
    apr_uint64_t counters[AOAI_CACHE_COUNTER_COUNT];
} aoai_cache_view;

const char *aoai_shared_cache_set(cmd_parms *cmd, void *dummy,
                                  const char *arg);
/* AOAISharedCacheSync (cmd->info set) and AOAISharedCacheTimeout. */
const char *aoai_shared_cache_set_duration(cmd_parms *cmd, void *dummy,
                                           const char *arg);

int aoai_shared_cache_post_config(apr_pool_t *pconf, server_rec *s,
                                  const aoai_server_conf *conf);
void aoai_shared_cache_register_hooks(apr_pool_t *p);

/* A window that moved, handed to this child's publisher; waits for the
 * store at most AOAISharedCacheTimeout. */
void aoai_shared_cache_publish(request_rec *r, proxy_balancer *balancer,
                               proxy_worker *worker, apr_time_t until);
/* Objects (aoai_objects.c): a name's short text value, stored until a
 * time and read, by the request's own thread on a link of its child's.
 * 1 on success; 0 without a cache, on failure, or when not found. */
int aoai_shared_cache_put(request_rec *r, const char *name, const char *text,
                          apr_time_t until);
int aoai_shared_cache_get(request_rec *r, const char *name, char *text,
                          apr_size_t size);

/* Read by the request for a member near the end of what it has left: 1
 * when another gateway put it in a window that has not ended (the window
 * is then this gateway's too), else 0; 0 without a cache. */
int aoai_shared_cache_window(request_rec *r, proxy_balancer *balancer,
                             proxy_worker *worker,
                             apr_interval_time_t throttle_max,
                             apr_time_t now);

/* A member's last calls go one gateway at a time: 1 when this call may
 * go (claimed, or no cache to ask), 0 when another gateway's call is on
 * its way to the member.  Released by the answer's headers, or expires. */
int aoai_shared_cache_claim_last(request_rec *r, proxy_balancer *balancer,
                                 proxy_worker *worker, apr_time_t now);
void aoai_shared_cache_release_last(request_rec *r, proxy_balancer *balancer,
                                    proxy_worker *worker);

/* 0 when no cache is configured; else 1 and *view. */
int aoai_shared_cache_view(aoai_cache_view *view);

#endif /* AOAI_SHARED_CACHE_H */
