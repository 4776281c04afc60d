/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * mod_aoai_balancer: one balancer:// URL in front of several Azure OpenAI
 * deployments, each with its own quota.
 *
 *   LoadModule aoai_balancer_module modules/mod_aoai_balancer.so
 *   <Proxy balancer://aoai>
 *       BalancerMember https://farm1.openai.azure.com lbset=0 route=farm1
 *       BalancerMember https://farm0.openai.azure.com lbset=1 route=farm0
 *       ProxySet lbmethod=aoai
 *   </Proxy>
 *   ProxyPass /openai balancer://aoai/openai
 *
 * This file is the glue: the directive table, the hooks, the order of
 * start-up.  The parts, each with a header of its own, from the bottom
 * (docs/how-it-works.md draws them; t/29_structure.t keeps includes and calls
 * pointing down):
 *
 *   APR only      aoai_window, aoai_ratelimit, aoai_json, aoai_usage,
 *                 aoai_inflate, aoai_keyfile
 *   state         aoai_config, aoai_balancers, aoai_table, aoai_request,
 *                 aoai_affinity
 *   policies      aoai_learn, aoai_headroom, aoai_key_quota, aoai_front_door,
 *                 aoai_shared_cache, aoai_objects, aoai_deployments,
 *                 aoai_operations, aoai_throttle, aoai_verdict
 *   request path  aoai_lbmethod, aoai_kept_body, aoai_realtime,
 *                 aoai_first_byte, aoai_metering, aoai_answers,
 *                 aoai_failover
 *   pages         aoai_history, aoai_status, aoai_metrics, aoai_page
 */

#include "aoai_balancers.h"
#include "aoai_config.h"
#include "aoai_deployments.h"
#include "aoai_failover.h"
#include "aoai_first_byte.h"
#include "aoai_front_door.h"
#include "aoai_headroom.h"
#include "aoai_history.h"
#include "aoai_kept_body.h"
#include "aoai_key_quota.h"
#include "aoai_lbmethod.h"
#include "aoai_metrics.h"
#include "aoai_objects.h"
#include "aoai_operations.h"
#include "aoai_page.h"
#include "aoai_realtime.h"
#include "aoai_shared_cache.h"
#include "aoai_status.h"
#include "aoai_table.h"

#include "ap_provider.h"
#include "http_config.h"
#include "http_log.h"

static const command_rec aoai_cmds[] =
{
    AP_INIT_TAKE1("AOAIThrottleDefault", aoai_config_set_throttle_default, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "How long a member that answered 429 without a usable "
                  "Retry-After is skipped (default 10s)"),
    AP_INIT_TAKE1("AOAIThrottleMax", aoai_config_set_throttle_max, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "The longest throttle window a member's headers can ask "
                  "for (default 60s)"),
    AP_INIT_ITERATE("AOAIFailoverOn", aoai_config_set_failover_on, NULL,
                    RSRC_CONF | ACCESS_CONF,
                    "Statuses (400-599) and connection-error, timeout: "
                    "failures that move the request to the next member"),
    AP_INIT_TAKE1("AOAIMaxBody", aoai_config_set_max_body, NULL, RSRC_CONF | ACCESS_CONF,
                  "Largest request body kept for replay (default 4M); "
                  "larger requests get 413"),
    AP_INIT_TAKE1("AOAIBackendHeader", aoai_config_set_backend_header, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "Response header naming the member that served (default "
                  "x-aoai-backend), or Off"),
    AP_INIT_TAKE1("AOAISubscriptionKeyFile", aoai_front_door_set_key_file, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "File of 'label sha256-hex' lines: callers must present "
                  "one of these keys (or none to turn the check off)"),
    AP_INIT_TAKE1("AOAISubscriptionKeyHeader", aoai_front_door_set_key_header, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "Request header holding the subscription key (default "
                  "api-key)"),
    AP_INIT_TAKE3("AOAIMemberCredential", aoai_front_door_set_credential, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "route api-key|bearer file:/path|env:NAME: the credential "
                  "this member is called with"),
    AP_INIT_TAKE12("AOAIFirstByteTimeout", aoai_config_set_first_byte, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "how long a member may take to start its answer before "
                   "the call fails over: a duration or Off, then 'streamed' "
                   "(calls with \"stream\": true, the default) or 'all'"),
    AP_INIT_TAKE2("AOAIHeadroomFloor", aoai_headroom_set_floor, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "requests|tokens N, N% of the member's limit, or off: "
                  "what a member must have left after a call for it to be "
                  "preferred (default 0 for both)"),
    AP_INIT_TAKE2("AOAIHeadroomWindow", aoai_headroom_set_window, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "requests|tokens duration: how long a member's remaining "
                  "figure holds (default requests 10s, tokens 60s)"),
    AP_INIT_TAKE12("AOAIKeyTokensPerMinute", aoai_key_quota_set, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "tokens [label]: the tokens a subscription key (every key, "
                   "or the one labelled) may use per minute"),
    AP_INIT_TAKE1("AOAIKeyTokensUnread", aoai_key_quota_set_unread, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "tokens: the completion a key is charged for a call whose "
                  "answer's usage cannot be read and that names no "
                  "max_tokens (default 4096)"),
    AP_INIT_TAKE23("AOAIDeployment", aoai_deployments_set, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "route deployment [name-at-member]: a deployment this "
                   "member serves, and what the member calls it"),
    AP_INIT_FLAG("AOAIObjectAffinity", aoai_objects_set_affinity, NULL,
                 RSRC_CONF | ACCESS_CONF,
                 "On (default): a call naming a stored object goes to the "
                 "member that holds it"),
    AP_INIT_TAKE1("AOAIObjectLifetime", aoai_objects_set_lifetime, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "How long the member an object was made on is remembered "
                  "(default 30 days, as Azure keeps responses)"),
    AP_INIT_TAKE1("AOAIObjectTableSize", aoai_objects_set_table_size, NULL,
                  RSRC_CONF,
                  "Objects remembered in shared memory (default 65536)"),
    AP_INIT_TAKE1("AOAIOperations", aoai_operations_set, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "A file of 'METHOD /path/{param}' lines: the only "
                  "operations let through (or Off, the default)"),
    AP_INIT_TAKE1("AOAIThrottleTableSize", aoai_config_set_table_size, NULL, RSRC_CONF,
                  "Slots in the shared throttle table (default 512)"),
    AP_INIT_TAKE1("AOAISharedCache", aoai_shared_cache_set, NULL, RSRC_CONF,
                  "provider:argument of a socache shared with the other "
                  "gateways, as in redis:host:port or memcache:host:port, "
                  "or none"),
    AP_INIT_TAKE1("AOAISharedCacheSync", aoai_shared_cache_set_duration, "sync",
                  RSRC_CONF,
                  "How often the shared cache is read (default 250ms)"),
    AP_INIT_TAKE1("AOAISharedCacheTimeout", aoai_shared_cache_set_duration, NULL,
                  RSRC_CONF,
                  "Longest a request waits to store a window in the shared "
                  "cache (default 50ms)"),
    /* Read before mod_proxy reads them, for one mistake's sake. */
    AP_INIT_RAW_ARGS("ProxyPass", aoai_realtime_check_pass, NULL,
                     RSRC_CONF | ACCESS_CONF, "(also read by mod_proxy)"),
    AP_INIT_RAW_ARGS("ProxyPassMatch", aoai_realtime_check_pass, NULL,
                     RSRC_CONF | ACCESS_CONF, "(also read by mod_proxy)"),
    {NULL, {NULL}, NULL, 0, 0, NULL}
};

/* ------------------------------------------------------------------ */
/* Hooks                                                                */

/* Runs under `apachectl -t` too: what each policy declared must hold. */
static int aoai_check_config(apr_pool_t *pconf, apr_pool_t *plog,
                             apr_pool_t *ptemp, server_rec *s)
{
    (void)pconf;
    (void)plog;
    if (aoai_front_door_check(s, ptemp) != OK
        || aoai_deployments_check(s, ptemp) != OK) {
        return !OK;
    }
    return aoai_balancers_check_modules(s);
}

static int adopt_vhost_balancers(apr_pool_t *pconf, apr_pool_t *plog,
                                 apr_pool_t *ptemp, server_rec *s)
{
    (void)pconf;
    (void)plog;
    aoai_balancers_adopt_copies(s, ptemp);
    return OK;
}

static int aoai_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                            apr_pool_t *ptemp, server_rec *s)
{
    aoai_server_conf *conf = aoai_config_server(s);

    (void)plog;
    (void)ptemp;
    /* The first of the two start-up passes only checks the configuration;
     * shared memory made then would be thrown away. */
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG) {
        return OK;
    }
    if (aoai_lbmethod_post_config(s) != OK) {
        return !OK;
    }
    if (aoai_table_post_config(pconf, s, conf->table_slots) != APR_SUCCESS
        || aoai_objects_post_config(s) != OK) {
        return !OK;
    }
    aoai_realtime_post_config(s);
    aoai_history_post_config(pconf, s, conf->table_slots);
    return aoai_shared_cache_post_config(pconf, s, conf);
}

static void register_hooks(apr_pool_t *p)
{
    static const char *const proxy_balancer[] = { "mod_proxy_balancer.c",
                                                  NULL };
    /* mod_watchdog starts the tasks registered before its post_config. */
    static const char *const before_watchdog[] = { "mod_watchdog.c", NULL };

    ap_register_provider(p, PROXY_LBMETHOD, AOAI_LBMETHOD_NAME, "0",
                         &aoai_lbmethod);
    ap_hook_check_config(aoai_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    /* Before mod_proxy_balancer sets each balancer's method, after: */
    ap_hook_post_config(adopt_vhost_balancers, NULL, proxy_balancer,
                        APR_HOOK_MIDDLE);
    ap_hook_post_config(aoai_post_config, proxy_balancer, before_watchdog,
                        APR_HOOK_MIDDLE);
    aoai_kept_body_register_hooks(p);
    aoai_first_byte_register_hooks(p);
    aoai_realtime_register_hooks(p);
    aoai_failover_register_hooks(p);
    aoai_status_register_hooks(p);
    aoai_metrics_register_hooks(p);
    aoai_page_register_hooks(p);
    aoai_shared_cache_register_hooks(p);
}

AP_DECLARE_MODULE(aoai_balancer) = {
    STANDARD20_MODULE_STUFF,
    aoai_config_create_dir,
    aoai_config_merge_dir,
    aoai_config_create_server,
    NULL,
    aoai_cmds,
    register_hooks,
    AP_MODULE_FLAG_NONE
};
