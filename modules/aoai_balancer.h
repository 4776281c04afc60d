/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * mod_aoai_balancer: the pieces of the module and how they meet.
 *
 *   aoai_lbmethod.c          the "aoai" lbmethod provider: lowest lbset
 *                            first, lbfactor inside an lbset, members inside
 *                            a throttle window or already tried skipped.
 *   aoai_throttle.c          throttle windows in shared memory, one slot per
 *                            (balancer, member), kept over graceful restart.
 *   aoai_ratelimit_headers.c what a member's 429 says about its window:
 *                            retry-after-ms, Retry-After, x-ratelimit-reset-*.
 *   aoai_front_door.c        subscription keys in, members' own credentials
 *                            out, no client secret forwarded or logged.
 *   aoai_keyfile.c           the subscription key file's parser.
 *   aoai_window.c            a window's end: raise-only, lock-free, shared.
 *   aoai_failover.c          the handler that owns the attempt loop: keeps
 *                            the request body, replays it to each member,
 *                            catches failed answers in an output filter
 *                            before a byte reaches the client.
 *   aoai_headroom.c          what a member says it has left
 *                            (x-ratelimit-remaining-*), kept in shared
 *                            memory so the lbmethod can steer away before
 *                            it throttles; a call's token estimate.
 *   aoai_key_quota.c         tokens per minute per subscription key.
 *   aoai_deployments.c       which deployments a member serves, under
 *                            which name: the path rewritten per member.
 *   aoai_usage.c             the "usage" of an answer, JSON or SSE, read
 *                            with jansson as the answer goes by.
 *   aoai_shared_cache.c      throttle windows shared between gateways
 *                            through a socache provider (redis, memcache):
 *                            published on a 429, read by a mod_watchdog task.
 *   aoai_status.c            what the balancer is doing, shown: a
 *                            server-status section, the
 *                            aoai-balancer-status JSON handler.
 *   mod_aoai_balancer.c      directives, per-directory configuration, hooks.
 */

#ifndef AOAI_BALANCER_H
#define AOAI_BALANCER_H

#include "httpd.h"
#include "http_config.h"
#include "mod_proxy.h"

#include "apr_time.h"

/* The module's own message numbers: "AOAI007: ...".  httpd's AHnnnnn
 * numbers are httpd's registry, for the modules it ships.  Each number is
 * used at one place (t/29_layers.t checks). */
#define AOAI_LOGNO(n) "AOAI" #n ": "

/* Provider names are limited to PROXY_MAX_PROVIDER_NAME_SIZE - 1 (15). */
#define AOAI_LBMETHOD_NAME "aoai"

#define AOAI_DEFAULT_THROTTLE_WINDOW apr_time_from_sec(10)
#define AOAI_DEFAULT_THROTTLE_MAX    apr_time_from_sec(60)
#define AOAI_DEFAULT_MAX_BODY        ((apr_off_t)4 * 1024 * 1024)
#define AOAI_DEFAULT_BACKEND_HEADER  "x-aoai-backend"
#define AOAI_DEFAULT_TABLE_SLOTS     512
#define AOAI_DEFAULT_FIRST_BYTE      apr_time_from_sec(30)
#define AOAI_DEFAULT_HEADROOM_REQUESTS_WINDOW apr_time_from_sec(10)
#define AOAI_DEFAULT_HEADROOM_TOKENS_WINDOW   apr_time_from_sec(60)
#define AOAI_KEY_QUOTA_WINDOW        apr_time_from_sec(60)
#define AOAI_DEFAULT_CACHE_SYNC      apr_time_from_msec(250)
#define AOAI_DEFAULT_CACHE_TIMEOUT   apr_time_from_msec(50)

/* Key labels longer than this are refused in the key file: the label is
 * kept in shared memory with the tokens it used. */
#define AOAI_LABEL_MAX 64

/* Failure classes that can be named in AOAIFailoverOn besides statuses. */
#define AOAI_FAIL_CONNECTION  0x1   /* refused, reset, closed before a response */
#define AOAI_FAIL_TIMEOUT     0x2   /* no response within the member's timeout */

extern module AP_MODULE_DECLARE_DATA aoai_balancer_module;

typedef struct {
    const char *label;              /* for logs and accounting, never secret */
    unsigned char digest[32];       /* SHA-256 of the key */
} aoai_subscription_key;

typedef struct {
    const char *path;
    apr_array_header_t *keys;       /* aoai_subscription_key */
} aoai_key_set;

typedef struct {
    const char *route;              /* the BalancerMember's route= */
    int bearer;                     /* Authorization: Bearer, else api-key */
    const char *path;               /* file:, for bearer re-read per attempt */
    const char *value;              /* api-key, read at start-up */
} aoai_member_credential;

/* What a member's x-ratelimit-remaining-* headers are about. */
typedef enum {
    AOAI_HEADROOM_REQUESTS,
    AOAI_HEADROOM_TOKENS,
    AOAI_HEADROOM_KINDS
} aoai_headroom_kind;

/* AOAIHeadroomFloor for one kind: below it a member is passed over while
 * another has more. */
typedef struct {
    apr_int64_t value;      /* absolute, or a percentage of the limit */
    int percent;
    int off;
} aoai_headroom_floor;

typedef struct {
    const char *label;      /* NULL: every subscription key */
    apr_int64_t tokens_per_minute;
} aoai_key_quota;

typedef struct {
    const char *route;      /* the BalancerMember's route= */
    const char *name;       /* the deployment the client asks for */
    const char *member_name;/* what the member calls it */
} aoai_deployment;

typedef struct {
    apr_interval_time_t throttle_default;  /* window when a 429 names none */
    apr_interval_time_t throttle_max;      /* no window is longer than this */
    apr_off_t max_body;                    /* request bodies kept in memory */
    const char *backend_header;            /* NULL: do not tell the client */
    /* Statuses 400-599 that fail an attempt over, as a bitmap. */
    apr_uint32_t failover_status[(600 - 400 + 31) / 32];
    int failover_transport;                /* AOAI_FAIL_* bits */
    aoai_key_set *keys;                    /* NULL: no subscription check */
    const char *key_header;                /* where clients put their key */
    apr_array_header_t *credentials;       /* aoai_member_credential */
    apr_interval_time_t first_byte_timeout;/* 0: none */
    int first_byte_all;                    /* every call, not only streams */
    aoai_headroom_floor headroom_floor[AOAI_HEADROOM_KINDS];
    apr_interval_time_t headroom_window[AOAI_HEADROOM_KINDS];
    apr_array_header_t *key_quotas;        /* aoai_key_quota */
    apr_array_header_t *deployments;       /* aoai_deployment */
    unsigned int throttle_default_set:1;
    unsigned int throttle_max_set:1;
    unsigned int max_body_set:1;
    unsigned int backend_header_set:1;
    unsigned int failover_set:1;
    unsigned int keys_set:1;
    unsigned int key_header_set:1;
    unsigned int first_byte_timeout_set:1;
    unsigned int headroom_floor_set:AOAI_HEADROOM_KINDS;   /* by kind */
    unsigned int headroom_window_set:AOAI_HEADROOM_KINDS;
} aoai_dir_conf;

struct ap_socache_provider_t;
struct ap_socache_instance_t;

/* Only the main server's is used: every directive here is global. */
typedef struct {
    int table_slots;
    const struct ap_socache_provider_t *cache_provider; /* NULL: not shared */
    struct ap_socache_instance_t *cache_instance;
    const char *cache_provider_name;
    const char *cache_argument;           /* what follows "provider:" */
    apr_interval_time_t cache_sync;       /* AOAISharedCacheSync */
    apr_interval_time_t cache_timeout;    /* AOAISharedCacheTimeout */
    unsigned int table_slots_set:1;
    unsigned int cache_set:1;
} aoai_server_conf;

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

/* One member's shared record.  Written only with atomics: any child
 * process or thread may raise a window at any time. */
typedef struct aoai_member_slot aoai_member_slot;

/* Per-member counters in the shared record.  A subscription key's record
 * for a member uses SERVED and the token counters. */
typedef enum {
    AOAI_COUNT_REQUESTS,          /* attempts sent to the member */
    AOAI_COUNT_SERVED,            /* its answers that went on to the client */
    AOAI_COUNT_THROTTLED,         /* 429s it answered */
    AOAI_COUNT_FAILOVERS,         /* attempts on it that moved on to another */
    AOAI_COUNT_LAST_WINDOW_MS,    /* the window its last 429 asked for */
    AOAI_COUNT_PROMPT_TOKENS,
    AOAI_COUNT_COMPLETION_TOKENS,
    AOAI_COUNT_TOTAL_TOKENS,
    AOAI_COUNTER_COUNT
} aoai_counter;

typedef struct {
    apr_time_t throttle_until;
    apr_time_t last_throttled;                  /* when its last 429 came */
    apr_uint64_t counters[AOAI_COUNTER_COUNT];
    /* Its headroom: what it said it has left, less what was sent since;
     * remaining is -1 while nothing is known. */
    apr_int64_t headroom_remaining[AOAI_HEADROOM_KINDS];
    apr_int64_t headroom_limit[AOAI_HEADROOM_KINDS];
    apr_time_t headroom_window_start[AOAI_HEADROOM_KINDS];
} aoai_member_stats;

/* A member's last x-ratelimit-remaining-* figure of one kind, in its
 * shared slot.  Every word is read and written with atomics. */
typedef struct {
    volatile apr_uint64_t estimate;     /* apr_int64_t: the figure, less
                                         * what was sent since */
    volatile apr_uint64_t reported;     /* apr_int64_t: the figure; -1 none */
    volatile apr_uint64_t window_start; /* apr_time_t: when the member's
                                         * allowance was last seen refilled */
    volatile apr_uint64_t limit;        /* largest figure seen, or its
                                         * x-ratelimit-limit-* */
} aoai_headroom_shared;

/* A subscription key's tokens in the current minute. */
typedef struct {
    volatile apr_uint64_t window_start; /* apr_time_t; 0 before first use */
    volatile apr_uint64_t used;         /* apr_int64_t */
} aoai_quota_shared;

/* An answer's "usage" object. */
typedef struct {
    apr_int64_t prompt_tokens;
    apr_int64_t completion_tokens;
    apr_int64_t total_tokens;
} aoai_usage;

/* Watches an answer go by and keeps what is needed to read its usage:
 * the whole JSON body (bounded), or only the current SSE line. */
typedef struct {
    int streaming;          /* text/event-stream */
    int found;              /* usage holds an answer's figures */
    int overflowed;         /* more than the bound: usage not read */
    char *buffer;
    apr_size_t length;
    apr_size_t capacity;
    aoai_usage usage;
} aoai_usage_scan;

/* What this request has done so far; read by the lbmethod so that a
 * failover never picks a member the request already tried. */
typedef struct {
    apr_array_header_t *tried;             /* proxy_worker * */
    apr_array_header_t *skipped_throttled; /* proxy_worker * */
    int attempts;
    /* Set by the output filter during one attempt. */
    int in_attempt;
    int answered_status;   /* a failed answer the filter swallowed */
    int backend_broke;     /* the member went away before answering */
    int passed;            /* the answer went on to the client */
    proxy_worker *worker;  /* member of the current attempt */
    proxy_balancer *balancer;
    const aoai_dir_conf *conf;
    const char *key_label; /* the subscriber, when keys are checked */
    apr_interval_time_t first_byte_timeout; /* for this call; 0: none */
    apr_interval_time_t handshake_timeout;  /* connect-to-request-sent
                                             * bound, any call; 0: none */
    int awaiting_first_byte; /* the attempt's member has sent nothing yet */
    int answered;            /* a byte of the member's answer came */
    int sent;                /* the attempt's request reached the member */
    aoai_usage_scan *usage; /* the served answer's usage, when readable */
    apr_int64_t token_estimate; /* prompt from the body, plus max_tokens */
    int headroom_passed_over;   /* members passed over for low headroom */
    /* AOAIDeployment: by worker->s->index, the name this member knows
     * the requested deployment by, or NULL when it does not serve it;
     * NULL array when the call names no deployment or none are declared. */
    const char **deployment_at_member;
    int deployment_slots;
    const char *deployment;     /* the name the client asked for */
    aoai_quota_shared *quota;   /* the key's, when it has a quota */
    apr_int64_t quota_remaining;/* the key's tokens left after this call */
    apr_time_t quota_window;    /* the window the estimate was taken in */
} aoai_request_state;

/* aoai_ratelimit_headers.c */
typedef enum {
    AOAI_WINDOW_ABSENT = 0, /* no rate-limit header at all */
    AOAI_WINDOW_FOUND,      /* *window holds what the member asked for */
    AOAI_WINDOW_GARBAGE     /* headers present, none of them usable */
} aoai_window_source;

typedef struct {
    const char *retry_after_ms;
    const char *retry_after;
    const char *reset_requests;
    const char *reset_tokens;
} aoai_ratelimit_headers;

aoai_window_source aoai_window_from_headers(const aoai_ratelimit_headers *h,
                                            apr_time_t now,
                                            apr_interval_time_t *window,
                                            const char **bad_header);
int aoai_parse_duration(const char *value, int plain_unit_ms,
                        apr_interval_time_t *out);

/* aoai_keyfile.c */
const char *aoai_keys_load(apr_pool_t *pool, const char *path,
                           aoai_key_set **out);

/* aoai_front_door.c */
int aoai_check_subscription_key(request_rec *r, const aoai_dir_conf *conf,
                                const char **label, const char **why);
void aoai_scrub_client_key(request_rec *r, const aoai_dir_conf *conf,
                           const char **member_uri);
const char *aoai_member_credential_parse(cmd_parms *cmd,
                                         aoai_member_credential *cred,
                                         const char *route, const char *kind,
                                         const char *source);
apr_status_t aoai_apply_member_credential(request_rec *r,
                                          const aoai_dir_conf *conf,
                                          proxy_worker *worker,
                                          const char **file);
const char *aoai_credential_file_check(apr_pool_t *pool,
                                       const aoai_member_credential *cred);

/* aoai_usage.c */
int aoai_usage_from_json(const char *json, apr_size_t length,
                         aoai_usage *usage);
int aoai_json_top_level(const char *json, apr_size_t length, const char *key,
                        const char **value, apr_size_t *value_length);
aoai_usage_scan *aoai_usage_scan_start(apr_pool_t *pool, int streaming);
void aoai_usage_scan_feed(apr_pool_t *pool, aoai_usage_scan *scan,
                          const char *data, apr_size_t length);
int aoai_usage_scan_finish(aoai_usage_scan *scan);

/* aoai_status.c */
void aoai_status_register_hooks(apr_pool_t *p);

/* aoai_headroom.c */
void aoai_headroom_note(request_rec *r, aoai_member_slot *slot,
                        const aoai_dir_conf *conf, apr_time_t now);
void aoai_headroom_forget(aoai_member_slot *slot);
int aoai_headroom_is_low(aoai_member_slot *slot, const aoai_dir_conf *conf,
                         apr_int64_t token_estimate, apr_time_t now);
int aoai_headroom_take(aoai_member_slot *slot, const aoai_dir_conf *conf,
                       apr_int64_t token_estimate, apr_time_t now,
                       int only_above_floor);
int aoai_headroom_enabled(const aoai_dir_conf *conf);
apr_int64_t aoai_token_estimate(const char *body, apr_size_t length);

/* aoai_key_quota.c */
const aoai_key_quota *aoai_key_quota_for(const aoai_dir_conf *conf,
                                         const char *label);
int aoai_key_quota_take(request_rec *r, aoai_request_state *state,
                        const aoai_key_quota *quota, apr_time_t now,
                        apr_int64_t *remaining, apr_interval_time_t *wait);
void aoai_key_quota_settle(aoai_request_state *state,
                           const aoai_usage *usage);

/* aoai_deployments.c */
const char *aoai_deployment_parse(cmd_parms *cmd, aoai_dir_conf *conf,
                                  const char *route, const char *name,
                                  const char *member_name);
int aoai_deployment_route(request_rec *r, aoai_request_state *state,
                          const char *uri);
char *aoai_deployment_url(request_rec *r, aoai_request_state *state,
                          proxy_worker *worker, char *url);
int aoai_member_serves(const aoai_request_state *state, proxy_worker *worker);

/* aoai_shared_cache.c */
const char *aoai_shared_cache_set(cmd_parms *cmd, aoai_server_conf *conf,
                                  const char *arg);
int aoai_shared_cache_post_config(apr_pool_t *pconf, server_rec *s,
                                  const aoai_server_conf *conf);
void aoai_shared_cache_publish(request_rec *r, proxy_balancer *balancer,
                               proxy_worker *worker, apr_time_t until);
int aoai_shared_cache_view(aoai_cache_view *view);
void aoai_shared_cache_register_hooks(apr_pool_t *p);

/* aoai_window.c */
apr_time_t aoai_window_read(const volatile apr_uint64_t *end);
int aoai_window_raise(volatile apr_uint64_t *end, apr_time_t until);

/* aoai_throttle.c */
apr_status_t aoai_throttle_post_config(apr_pool_t *pconf, server_rec *s,
                                       int table_slots);
aoai_member_slot *aoai_throttle_slot(proxy_balancer *balancer,
                                     proxy_worker *worker);
apr_time_t aoai_throttle_until(const aoai_member_slot *slot);
int aoai_throttle_raise(aoai_member_slot *slot, apr_time_t until);
void aoai_member_count(aoai_member_slot *slot, aoai_counter counter,
                       apr_uint64_t n);
void aoai_member_note_window(aoai_member_slot *slot, apr_time_t now,
                             apr_interval_time_t window);
void aoai_member_note_served(request_rec *r, proxy_balancer *balancer,
                             proxy_worker *worker, const char *key_label,
                             const aoai_usage *usage);
int aoai_member_stats_read(const aoai_member_slot *slot,
                           aoai_member_stats *stats);
typedef void (aoai_key_stats_fn)(const char *label,
                                 const aoai_member_stats *stats, void *baton);
void aoai_key_stats_each(const aoai_member_slot *member,
                         aoai_key_stats_fn *fn, void *baton);
int aoai_throttle_note_garbage(aoai_member_slot *slot, int garbage);
int aoai_member_is_throttled(proxy_balancer *balancer, proxy_worker *worker,
                             apr_time_t now);
/* Things logged at most once per interval for a member, across children. */
typedef enum {
    AOAI_ONCE_CREDENTIAL,
    AOAI_ONCE_KINDS
} aoai_once;
int aoai_member_once_per(aoai_member_slot *slot, aoai_once what,
                         apr_time_t now, apr_interval_time_t interval);
aoai_headroom_shared *aoai_member_headroom(aoai_member_slot *slot);
volatile apr_uint64_t *aoai_member_unpublished(aoai_member_slot *slot);
aoai_quota_shared *aoai_key_quota_shared(const char *label);
apr_time_t aoai_soonest_window_end(proxy_balancer *balancer, apr_time_t now);

/* aoai_lbmethod.c */
extern const proxy_balancer_method aoai_lbmethod;
typedef apr_status_t (aoai_balancer_fn)(server_rec *s, proxy_balancer *balancer,
                                       void *baton);
apr_status_t aoai_for_each_balancer(server_rec *s, aoai_balancer_fn *fn,
                                    void *baton);
int aoai_lbmethod_post_config(server_rec *s);
int aoai_member_is_candidate(proxy_worker *worker, aoai_request_state *state,
                             apr_time_t now);
int aoai_any_candidate(aoai_request_state *state, apr_time_t now);

/* aoai_failover.c */
void aoai_failover_register_hooks(apr_pool_t *p);
aoai_request_state *aoai_request_state_get(request_rec *r);

#endif /* AOAI_BALANCER_H */
