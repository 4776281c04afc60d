/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_config: the module's configuration as httpd holds it.  The
 * per-directory record (one per <Proxy>, <Location>, virtual host and
 * server), the server record (global directives only), their defaults and
 * merges, the directives that belong to no one policy, and a walk over the
 * <Proxy balancer://...> sections with the configuration of each.  Each
 * policy parses its own directives (aoai_front_door.h, aoai_headroom.h,
 * ...) into the fields below.
 */

#ifndef AOAI_CONFIG_H
#define AOAI_CONFIG_H

#include "httpd.h"
#include "http_config.h"
#include "mod_proxy.h"

#include "apr_time.h"

#include "aoai_keyfile.h"

extern module AP_MODULE_DECLARE_DATA aoai_balancer_module;

/* The module's own message numbers: "AOAI007: ...".  httpd's AHnnnnn
 * numbers are httpd's registry, for the modules it ships.  Each number is
 * used at one place (t/29_structure.t checks). */
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
#define AOAI_DEFAULT_CACHE_SYNC      apr_time_from_msec(250)
#define AOAI_DEFAULT_CACHE_TIMEOUT   apr_time_from_msec(50)
#define AOAI_DEFAULT_OBJECT_ENTRIES  65536
#define AOAI_DEFAULT_OBJECT_LIFETIME apr_time_from_sec(30 * 86400)
/* AOAIKeyTokensUnread: the completion charged when nothing says it */
#define AOAI_DEFAULT_KEY_TOKENS_UNREAD 4096

/* Failure classes that can be named in AOAIFailoverOn besides statuses. */
#define AOAI_FAIL_CONNECTION  0x1   /* refused, reset, closed, no answer */
#define AOAI_FAIL_TIMEOUT     0x2   /* no answer within the member's timeout */

/* AOAIMemberCredential route api-key|bearer file:/path|env:NAME */
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

/* AOAIKeyTokensPerMinute tokens [label] */
typedef struct {
    const char *label;      /* NULL: every subscription key */
    apr_int64_t tokens_per_minute;
} aoai_key_quota;

/* AOAIDeployment route deployment [name-at-member] */
typedef struct {
    const char *route;      /* the BalancerMember's route= */
    const char *name;       /* the deployment the client asks for */
    const char *member_name;/* what the member calls it */
} aoai_deployment;

/* AOAIOperations: the operations a balancer lets through. */
typedef struct aoai_operations aoai_operations;

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
    apr_int64_t key_tokens_unread;         /* AOAIKeyTokensUnread */
    apr_array_header_t *deployments;       /* aoai_deployment */
    int object_affinity;                   /* AOAIObjectAffinity */
    apr_interval_time_t object_lifetime;   /* AOAIObjectLifetime */
    const aoai_operations *operations;     /* NULL: every call goes */
    unsigned int throttle_default_set:1;
    unsigned int throttle_max_set:1;
    unsigned int max_body_set:1;
    unsigned int backend_header_set:1;
    unsigned int failover_set:1;
    unsigned int keys_set:1;
    unsigned int key_header_set:1;
    unsigned int first_byte_timeout_set:1;
    unsigned int object_affinity_set:1;
    unsigned int object_lifetime_set:1;
    unsigned int operations_set:1;
    unsigned int key_tokens_unread_set:1;
    unsigned int headroom_floor_set:AOAI_HEADROOM_KINDS;   /* by kind */
    unsigned int headroom_window_set:AOAI_HEADROOM_KINDS;
} aoai_dir_conf;

struct ap_socache_provider_t;
struct ap_socache_instance_t;

/* Only the main server's is used: every directive here is global. */
typedef struct {
    int table_slots;
    int object_entries;                   /* AOAIObjectTableSize */
    const struct ap_socache_provider_t *cache_provider; /* NULL: not shared */
    struct ap_socache_instance_t *cache_instance;
    const char *cache_provider_name;
    const char *cache_argument;           /* what follows "provider:" */
    apr_interval_time_t cache_sync;       /* AOAISharedCacheSync */
    apr_interval_time_t cache_timeout;    /* AOAISharedCacheTimeout */
    unsigned int table_slots_set:1;
    unsigned int cache_set:1;
} aoai_server_conf;

void *aoai_config_create_dir(apr_pool_t *p, char *dir);
void *aoai_config_merge_dir(apr_pool_t *p, void *basev, void *addv);
void *aoai_config_create_server(apr_pool_t *p, server_rec *s);
aoai_server_conf *aoai_config_server(server_rec *s);

/* Whether an answer with this status moves the call on. */
int aoai_config_fails_over(const aoai_dir_conf *conf, int status);

/* Shared by every directive that takes a duration: ap_timeout_parameter
 * syntax, positive; the error names the directive and the value. */
const char *aoai_config_duration(cmd_parms *cmd, const char *arg,
                                 apr_interval_time_t *out);
/* RFC 9110 token characters only: these names go on the wire. */
int aoai_config_header_name_ok(const char *name);
/* NULL when the directive is inside a <Proxy balancer://...> section;
 * else an error saying that is where it belongs. */
const char *aoai_config_in_balancer_section(cmd_parms *cmd);

const char *aoai_config_set_throttle_default(cmd_parms *cmd, void *dconf,
                                             const char *arg);
const char *aoai_config_set_throttle_max(cmd_parms *cmd, void *dconf,
                                         const char *arg);
const char *aoai_config_set_failover_on(cmd_parms *cmd, void *dconf,
                                        const char *arg);
const char *aoai_config_set_max_body(cmd_parms *cmd, void *dconf,
                                     const char *arg);
const char *aoai_config_set_backend_header(cmd_parms *cmd, void *dconf,
                                           const char *arg);
const char *aoai_config_set_first_byte(cmd_parms *cmd, void *dconf,
                                       const char *timeout,
                                       const char *scope);
const char *aoai_config_set_table_size(cmd_parms *cmd, void *dummy,
                                       const char *arg);

/* Every <Proxy balancer://...> section of every server with the module's
 * configuration of it and the balancer it names; stops at the first
 * result other than OK, and returns it. */
typedef int (aoai_config_section_fn)(server_rec *s, proxy_balancer *balancer,
                                     const aoai_dir_conf *conf, void *baton);
int aoai_config_each_section(server_rec *s, apr_pool_t *ptemp,
                             aoai_config_section_fn *fn, void *baton);

/* The AOAIThrottleMax that governs a balancer outside of any request: its
 * <Proxy> section's, else its server's. */
apr_interval_time_t aoai_config_throttle_max(server_rec *s,
                                             const proxy_balancer *balancer);

#endif /* AOAI_CONFIG_H */
