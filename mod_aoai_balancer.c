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
 * This file holds the directives and wires the parts together; see
 * modules/aoai_balancer.h for what each part does.
 */

#include "modules/aoai_balancer.h"

#include "apr_strings.h"
#include "apr_lib.h"

#include <errno.h>

#include "ap_provider.h"
#include "http_config.h"
#include "http_log.h"

/* ------------------------------------------------------------------ */
/* Configuration                                                        */

static void set_default_failover(aoai_dir_conf *conf)
{
    static const int statuses[] = { 429, 500, 502, 503, 504 };
    apr_size_t i;

    memset(conf->failover_status, 0, sizeof(conf->failover_status));
    for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        int bit = statuses[i] - 400;
        conf->failover_status[bit / 32] |= 1u << (bit % 32);
    }
    conf->failover_transport = AOAI_FAIL_CONNECTION | AOAI_FAIL_TIMEOUT;
}

static void *create_dir_conf(apr_pool_t *p, char *dir)
{
    aoai_dir_conf *conf = apr_pcalloc(p, sizeof(*conf));

    (void)dir;
    conf->throttle_default = AOAI_DEFAULT_THROTTLE_WINDOW;
    conf->throttle_max = AOAI_DEFAULT_THROTTLE_MAX;
    conf->max_body = AOAI_DEFAULT_MAX_BODY;
    conf->backend_header = AOAI_DEFAULT_BACKEND_HEADER;
    conf->first_byte_timeout = AOAI_DEFAULT_FIRST_BYTE;
    conf->headroom_window[AOAI_HEADROOM_REQUESTS] =
        AOAI_DEFAULT_HEADROOM_REQUESTS_WINDOW;
    conf->headroom_window[AOAI_HEADROOM_TOKENS] =
        AOAI_DEFAULT_HEADROOM_TOKENS_WINDOW;
    set_default_failover(conf);
    return conf;
}

static void *merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
{
    aoai_dir_conf *base = basev, *add = addv;
    aoai_dir_conf *conf = apr_pcalloc(p, sizeof(*conf));

#define MERGE(field) \
    conf->field = add->field##_set ? add->field : base->field; \
    conf->field##_set = add->field##_set || base->field##_set
    MERGE(throttle_default);
    MERGE(throttle_max);
    MERGE(max_body);
    MERGE(backend_header);
    MERGE(keys);
    MERGE(key_header);
    MERGE(first_byte_timeout);
#undef MERGE
    conf->first_byte_all = add->first_byte_timeout_set ? add->first_byte_all
                                               : base->first_byte_all;
    {
        int kind;
        for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
            int bit = 1 << kind;
            conf->headroom_floor[kind] = (add->headroom_floor_set & bit)
                ? add->headroom_floor[kind] : base->headroom_floor[kind];
            conf->headroom_window[kind] = (add->headroom_window_set & bit)
                ? add->headroom_window[kind] : base->headroom_window[kind];
        }
        conf->headroom_floor_set = add->headroom_floor_set
                                   | base->headroom_floor_set;
        conf->headroom_window_set = add->headroom_window_set
                                    | base->headroom_window_set;
    }
    /* Credentials and deployments go with the <Proxy> section that names
     * the members. */
    conf->credentials = add->credentials ? add->credentials : base->credentials;
    conf->deployments = add->deployments ? add->deployments : base->deployments;
    conf->key_quotas = add->key_quotas ? add->key_quotas : base->key_quotas;
    if (add->failover_set) {
        memcpy(conf->failover_status, add->failover_status,
               sizeof(conf->failover_status));
        conf->failover_transport = add->failover_transport;
    }
    else {
        memcpy(conf->failover_status, base->failover_status,
               sizeof(conf->failover_status));
        conf->failover_transport = base->failover_transport;
    }
    conf->failover_set = add->failover_set || base->failover_set;
    return conf;
}

static void *create_server_conf(apr_pool_t *p, server_rec *s)
{
    aoai_server_conf *conf = apr_pcalloc(p, sizeof(*conf));

    (void)s;
    conf->table_slots = AOAI_DEFAULT_TABLE_SLOTS;
    conf->cache_sync = AOAI_DEFAULT_CACHE_SYNC;
    conf->cache_timeout = AOAI_DEFAULT_CACHE_TIMEOUT;
    return conf;
}

static const char *parse_window(cmd_parms *cmd, const char *arg,
                                apr_interval_time_t *window)
{
    if (ap_timeout_parameter_parse(arg, window, "s") != APR_SUCCESS
        || *window <= 0) {
        return apr_psprintf(cmd->pool, "%s: '%s' is not a positive duration "
                            "(seconds, or a number with ms, s, mi or h)",
                            cmd->cmd->name, arg);
    }
    return NULL;
}

static const char *set_throttle_default(cmd_parms *cmd, void *dconf,
                                        const char *arg)
{
    aoai_dir_conf *conf = dconf;
    const char *err = parse_window(cmd, arg, &conf->throttle_default);

    if (err) {
        return err;
    }
    if (conf->throttle_max_set && conf->throttle_default > conf->throttle_max) {
        return apr_psprintf(cmd->pool, "AOAIThrottleDefault %s is longer than "
                            "AOAIThrottleMax in the same context", arg);
    }
    conf->throttle_default_set = 1;
    return NULL;
}

static const char *set_throttle_max(cmd_parms *cmd, void *dconf,
                                    const char *arg)
{
    aoai_dir_conf *conf = dconf;
    const char *err = parse_window(cmd, arg, &conf->throttle_max);

    if (err) {
        return err;
    }
    if (conf->throttle_default_set && conf->throttle_default > conf->throttle_max) {
        return apr_psprintf(cmd->pool, "AOAIThrottleMax %s is shorter than "
                            "AOAIThrottleDefault in the same context", arg);
    }
    conf->throttle_max_set = 1;
    return NULL;
}

static const char *set_failover_on(cmd_parms *cmd, void *dconf,
                                   const char *arg)
{
    aoai_dir_conf *conf = dconf;
    char *end;
    long status;

    if (!conf->failover_set) {
        /* The first list in a context replaces the inherited one. */
        memset(conf->failover_status, 0, sizeof(conf->failover_status));
        conf->failover_transport = 0;
        conf->failover_set = 1;
    }
    if (!strcasecmp(arg, "connection-error")) {
        conf->failover_transport |= AOAI_FAIL_CONNECTION;
        return NULL;
    }
    if (!strcasecmp(arg, "timeout")) {
        conf->failover_transport |= AOAI_FAIL_TIMEOUT;
        return NULL;
    }
    if (!strcasecmp(arg, "none")) {
        return NULL;
    }
    status = strtol(arg, &end, 10);
    if (!apr_isdigit(*arg) || *end) {
        return apr_psprintf(cmd->pool, "AOAIFailoverOn: '%s' is neither an "
                            "HTTP status nor one of connection-error, "
                            "timeout, none", arg);
    }
    if (status < 400 || status > 599) {
        return apr_psprintf(cmd->pool, "AOAIFailoverOn: status %s is outside "
                            "400-599; only a failed answer can fail over",
                            arg);
    }
    status -= 400;
    conf->failover_status[status / 32] |= 1u << (status % 32);
    return NULL;
}

static const char *set_max_body(cmd_parms *cmd, void *dconf, const char *arg)
{
    aoai_dir_conf *conf = dconf;
    apr_off_t limit;
    char *end;

    if (apr_strtoff(&limit, arg, &end, 10) != APR_SUCCESS || !apr_isdigit(*arg)) {
        return apr_psprintf(cmd->pool, "AOAIMaxBody: '%s' is not a size in "
                            "bytes (a number, optionally followed by K, M "
                            "or G)", arg);
    }
    switch (apr_tolower(*end)) {
    case 'g': limit *= 1024; /* fall through */
    case 'm': limit *= 1024; /* fall through */
    case 'k': limit *= 1024; end++; break;
    case '\0': break;
    default: end = "?";
    }
    if (*end) {
        return apr_psprintf(cmd->pool, "AOAIMaxBody: '%s' is not a size in "
                            "bytes (a number, optionally followed by K, M "
                            "or G)", arg);
    }
    if (limit <= 0 || limit > (apr_off_t)APR_INT32_MAX) {
        return apr_psprintf(cmd->pool, "AOAIMaxBody: %s is out of range; "
                            "bodies are kept in memory for replay, so the "
                            "limit must be between 1 byte and 2G", arg);
    }
    conf->max_body = limit;
    conf->max_body_set = 1;
    return NULL;
}

/* RFC 9110 token characters only: these names go on the wire. */
static int is_header_name(const char *name)
{
    const char *p;
    for (p = name; *p; p++) {
        if (!apr_isalnum(*p) && !strchr("!#$%&'*+-.^_`|~", *p)) {
            return 0;
        }
    }
    return *name != '\0';
}

static const char *set_backend_header(cmd_parms *cmd, void *dconf,
                                      const char *arg)
{
    aoai_dir_conf *conf = dconf;

    conf->backend_header_set = 1;
    if (!strcasecmp(arg, "off")) {
        conf->backend_header = NULL;
        return NULL;
    }
    if (!is_header_name(arg)) {
        return apr_psprintf(cmd->pool, "AOAIBackendHeader: '%s' is not a "
                            "valid header name (or Off)", arg);
    }
    conf->backend_header = arg;
    return NULL;
}

static const char *set_key_file(cmd_parms *cmd, void *dconf, const char *arg)
{
    aoai_dir_conf *conf = dconf;
    const char *err;

    conf->keys_set = 1;
    if (!strcasecmp(arg, "none")) {
        conf->keys = NULL;
        return NULL;
    }
    err = aoai_keys_load(cmd->pool, ap_server_root_relative(cmd->pool, arg),
                         &conf->keys);
    return err ? apr_pstrcat(cmd->pool, "AOAISubscriptionKeyFile ", err, NULL)
               : NULL;
}

static const char *set_key_header(cmd_parms *cmd, void *dconf, const char *arg)
{
    aoai_dir_conf *conf = dconf;

    if (!is_header_name(arg)) {
        return apr_psprintf(cmd->pool, "AOAISubscriptionKeyHeader: '%s' is "
                            "not a valid header name", arg);
    }
    conf->key_header = arg;
    conf->key_header_set = 1;
    return NULL;
}

static const char *set_member_credential(cmd_parms *cmd, void *dconf,
                                         const char *route, const char *kind,
                                         const char *source)
{
    aoai_dir_conf *conf = dconf;
    aoai_member_credential *cred;
    int i;

    if (!conf->credentials) {
        conf->credentials = apr_array_make(cmd->pool, 4, sizeof(*cred));
    }
    for (i = 0; i < conf->credentials->nelts; i++) {
        if (!strcmp(APR_ARRAY_IDX(conf->credentials, i,
                                  aoai_member_credential).route, route)) {
            return apr_psprintf(cmd->pool, "AOAIMemberCredential %s: this "
                                "member already has a credential", route);
        }
    }
    cred = apr_array_push(conf->credentials);
    return aoai_member_credential_parse(cmd, cred, route, kind, source);
}

static const char *set_table_size(cmd_parms *cmd, void *dummy,
                                  const char *arg)
{
    aoai_server_conf *conf = ap_get_module_config(cmd->server->module_config,
                                                  &aoai_balancer_module);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    char *end;
    long slots;

    (void)dummy;
    if (err) {
        return err;
    }
    slots = strtol(arg, &end, 10);
    if (!apr_isdigit(*arg) || *end || slots < 16 || slots > 65536) {
        return apr_psprintf(cmd->pool, "AOAIThrottleTableSize: '%s' is not a "
                            "number of slots from 16 to 65536", arg);
    }
    conf->table_slots = (int)slots;
    return NULL;
}

static int headroom_kind(const char *word)
{
    if (!ap_cstr_casecmp(word, "requests")) {
        return AOAI_HEADROOM_REQUESTS;
    }
    if (!ap_cstr_casecmp(word, "tokens")) {
        return AOAI_HEADROOM_TOKENS;
    }
    return -1;
}

static const char *set_headroom_floor(cmd_parms *cmd, void *dconf,
                                      const char *which, const char *value)
{
    aoai_dir_conf *conf = dconf;
    int kind = headroom_kind(which);
    aoai_headroom_floor floor = { 0, 0, 0 };
    char *end;

    if (kind < 0) {
        return apr_psprintf(cmd->pool, "AOAIHeadroomFloor: '%s' is neither "
                            "'requests' nor 'tokens'", which);
    }
    if (!ap_cstr_casecmp(value, "off")) {
        floor.off = 1;
    }
    else {
        errno = 0;
        floor.value = apr_strtoi64(value, &end, 10);
        floor.percent = (*end == '%');
        if (!apr_isdigit(*value) || *(end + floor.percent) || errno == ERANGE
            || floor.value > APR_INT64_C(1000000000000)
            || (floor.percent && floor.value > 100)) {
            return apr_psprintf(cmd->pool, "AOAIHeadroomFloor %s: '%s' is "
                                "not a number of %s, a percentage (0%%-100%%) "
                                "of the member's limit, or off", which, value,
                                which);
        }
    }
    conf->headroom_floor[kind] = floor;
    conf->headroom_floor_set |= 1 << kind;
    return NULL;
}

static const char *set_headroom_window(cmd_parms *cmd, void *dconf,
                                       const char *which, const char *value)
{
    aoai_dir_conf *conf = dconf;
    int kind = headroom_kind(which);
    const char *err;

    if (kind < 0) {
        return apr_psprintf(cmd->pool, "AOAIHeadroomWindow: '%s' is neither "
                            "'requests' nor 'tokens'", which);
    }
    if ((err = parse_window(cmd, value, &conf->headroom_window[kind]))) {
        return err;
    }
    conf->headroom_window_set |= 1 << kind;
    return NULL;
}

static const char *set_key_tokens(cmd_parms *cmd, void *dconf,
                                  const char *tokens, const char *label)
{
    aoai_dir_conf *conf = dconf;
    aoai_key_quota *quota;
    char *end;
    apr_int64_t limit;
    int i;

    errno = 0;
    limit = apr_strtoi64(tokens, &end, 10);
    if (!apr_isdigit(*tokens) || *end || errno == ERANGE || limit < 1
        || limit > APR_INT64_C(1000000000000)) {
        return apr_psprintf(cmd->pool, "AOAIKeyTokensPerMinute: '%s' is not "
                            "a number of tokens (1 or more)", tokens);
    }
    if (!conf->key_quotas) {
        conf->key_quotas = apr_array_make(cmd->pool, 4, sizeof(*quota));
    }
    for (i = 0; i < conf->key_quotas->nelts; i++) {
        const char *seen = APR_ARRAY_IDX(conf->key_quotas, i,
                                         aoai_key_quota).label;
        if ((!seen && !label) || (seen && label && !strcmp(seen, label))) {
            return apr_psprintf(cmd->pool, "AOAIKeyTokensPerMinute: %s "
                                "already has a limit here",
                                label ? label : "every key");
        }
    }
    quota = apr_array_push(conf->key_quotas);
    quota->label = label;
    quota->tokens_per_minute = limit;
    return NULL;
}

static const char *set_deployment(cmd_parms *cmd, void *dconf,
                                  const char *route, const char *name,
                                  const char *member_name)
{
    return aoai_deployment_parse(cmd, dconf, route, name, member_name);
}

static const char *set_shared_cache(cmd_parms *cmd, void *dummy,
                                    const char *arg)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    (void)dummy;
    if (err) {
        return err;
    }
    return aoai_shared_cache_set(cmd, ap_get_module_config(
        cmd->server->module_config, &aoai_balancer_module), arg);
}

/* AOAISharedCacheSync and AOAISharedCacheTimeout: a duration in a range. */
static const char *set_cache_duration(cmd_parms *cmd, void *dummy,
                                      const char *arg)
{
    aoai_server_conf *conf = ap_get_module_config(cmd->server->module_config,
                                                  &aoai_balancer_module);
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
    if ((err = parse_window(cmd, arg, &value))) {
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

static const char *set_first_byte(cmd_parms *cmd, void *dconf,
                                  const char *timeout, const char *scope)
{
    aoai_dir_conf *conf = dconf;

    if (!ap_cstr_casecmp(timeout, "Off")) {
        conf->first_byte_timeout = 0;
    }
    else {
        const char *err = parse_window(cmd, timeout,
                                       &conf->first_byte_timeout);
        if (err) {
            return apr_pstrcat(cmd->pool, err, ", or Off", NULL);
        }
    }
    if (!scope || !ap_cstr_casecmp(scope, "streamed")) {
        conf->first_byte_all = 0;
    }
    else if (!ap_cstr_casecmp(scope, "all")) {
        conf->first_byte_all = 1;
    }
    else {
        return apr_psprintf(cmd->pool, "AOAIFirstByteTimeout: '%s' is "
                            "neither 'streamed' nor 'all'", scope);
    }
    conf->first_byte_timeout_set = 1;
    return NULL;
}

static const command_rec aoai_cmds[] =
{
    AP_INIT_TAKE1("AOAIThrottleDefault", set_throttle_default, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "How long a member that answered 429 without a usable "
                  "Retry-After is skipped (default 10s)"),
    AP_INIT_TAKE1("AOAIThrottleMax", set_throttle_max, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "The longest throttle window a member's headers can ask "
                  "for (default 60s)"),
    AP_INIT_ITERATE("AOAIFailoverOn", set_failover_on, NULL,
                    RSRC_CONF | ACCESS_CONF,
                    "Statuses (400-599) and connection-error, timeout: "
                    "failures that move the request to the next member"),
    AP_INIT_TAKE1("AOAIMaxBody", set_max_body, NULL, RSRC_CONF | ACCESS_CONF,
                  "Largest request body kept for replay (default 4M); "
                  "larger requests get 413"),
    AP_INIT_TAKE1("AOAIBackendHeader", set_backend_header, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "Response header naming the member that served (default "
                  "x-aoai-backend), or Off"),
    AP_INIT_TAKE1("AOAISubscriptionKeyFile", set_key_file, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "File of 'label sha256-hex' lines: callers must present "
                  "one of these keys (or none to turn the check off)"),
    AP_INIT_TAKE1("AOAISubscriptionKeyHeader", set_key_header, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "Request header holding the subscription key (default "
                  "api-key)"),
    AP_INIT_TAKE3("AOAIMemberCredential", set_member_credential, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "route api-key|bearer file:/path|env:NAME: the credential "
                  "this member is called with"),
    AP_INIT_TAKE12("AOAIFirstByteTimeout", set_first_byte, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "how long a member may take to start its answer before "
                   "the call fails over: a duration or Off, then 'streamed' "
                   "(calls with \"stream\": true, the default) or 'all'"),
    AP_INIT_TAKE2("AOAIHeadroomFloor", set_headroom_floor, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "requests|tokens N, N% of the member's limit, or off: "
                  "what a member must have left after a call for it to be "
                  "preferred (default 0 for both)"),
    AP_INIT_TAKE2("AOAIHeadroomWindow", set_headroom_window, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "requests|tokens duration: how long a member's remaining "
                  "figure holds (default requests 10s, tokens 60s)"),
    AP_INIT_TAKE12("AOAIKeyTokensPerMinute", set_key_tokens, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "tokens [label]: the tokens a subscription key (every key, "
                   "or the one labelled) may use per minute"),
    AP_INIT_TAKE23("AOAIDeployment", set_deployment, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "route deployment [name-at-member]: a deployment this "
                   "member serves, and what the member calls it"),
    AP_INIT_TAKE1("AOAIThrottleTableSize", set_table_size, NULL, RSRC_CONF,
                  "Slots in the shared throttle table (default 512)"),
    AP_INIT_TAKE1("AOAISharedCache", set_shared_cache, NULL, RSRC_CONF,
                  "provider:argument of a socache shared with the other "
                  "gateways, as in redis:host:port or memcache:host:port, "
                  "or none"),
    AP_INIT_TAKE1("AOAISharedCacheSync", set_cache_duration, "sync",
                  RSRC_CONF,
                  "How often the shared cache is read (default 250ms)"),
    AP_INIT_TAKE1("AOAISharedCacheTimeout", set_cache_duration, NULL,
                  RSRC_CONF,
                  "Longest a request waits to store a window in the shared "
                  "cache (default 50ms)"),
    {NULL, {NULL}, NULL, 0, 0, NULL}
};

/* ------------------------------------------------------------------ */
/* Hooks                                                                */

/* The routes named by AOAIMemberCredential and AOAIDeployment lines, as
 * one list. */
static int route_count(const aoai_dir_conf *conf)
{
    return (conf->credentials ? conf->credentials->nelts : 0)
           + (conf->deployments ? conf->deployments->nelts : 0);
}

static const char *route_at(const aoai_dir_conf *conf, int i,
                            const char **directive)
{
    int credentials = conf->credentials ? conf->credentials->nelts : 0;

    if (i < credentials) {
        *directive = "AOAIMemberCredential";
        return APR_ARRAY_IDX(conf->credentials, i,
                             aoai_member_credential).route;
    }
    *directive = "AOAIDeployment";
    return APR_ARRAY_IDX(conf->deployments, i - credentials,
                         aoai_deployment).route;
}

/* A credential or a deployment for a route that no member of its <Proxy
 * balancer://...> section has would silently never be used. */
static int check_credential_routes(server_rec *s, apr_pool_t *ptemp,
                                   proxy_server_conf *proxy_conf)
{
    ap_conf_vector_t **sections = (ap_conf_vector_t **)proxy_conf->sec_proxy->elts;
    int k, i, j;

    for (k = 0; k < proxy_conf->sec_proxy->nelts; k++) {
        const aoai_dir_conf *conf = ap_get_module_config(sections[k],
                                                         &aoai_balancer_module);
        const proxy_dir_conf *section = ap_get_module_config(sections[k],
                                                             &proxy_module);
        proxy_balancer *balancer;
        proxy_worker **workers;

        if (!conf || (!conf->credentials && !conf->deployments) || !section
            || !section->p || strncasecmp(section->p, "balancer://", 11)) {
            continue;
        }
        balancer = ap_proxy_get_balancer(ptemp, proxy_conf, section->p, 0);
        if (!balancer) {
            continue;
        }
        for (i = 0; conf->credentials && i < conf->credentials->nelts; i++) {
            const aoai_member_credential *cred = &APR_ARRAY_IDX(
                conf->credentials, i, aoai_member_credential);
            const char *err = aoai_credential_file_check(ptemp, cred);
            if (err) {
                ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                             AOAI_LOGNO(006) "AOAIMemberCredential %s bearer "
                             "file:%s in %s: %s", cred->route, cred->path,
                             balancer->s->name, err);
                return !OK;
            }
        }
        workers = (proxy_worker **)balancer->workers->elts;
        for (i = 0; i < route_count(conf); i++) {
            const char *directive;
            const char *route = route_at(conf, i, &directive);
            for (j = 0; j < balancer->workers->nelts; j++) {
                if (!strcmp(workers[j]->s->route, route)) {
                    break;
                }
            }
            if (j == balancer->workers->nelts) {
                ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                             AOAI_LOGNO(005) "%s %s: no BalancerMember of %s "
                             "has route=%s", directive, route,
                             balancer->s->name, route);
                return !OK;
            }
        }
    }
    return OK;
}

/* Runs under `apachectl -t` too: a balancer that asks for lbmethod=aoai
 * without the modules that make a balancer work is a configuration error,
 * not a runtime surprise. */
static apr_status_t needs_modules(server_rec *s, proxy_balancer *balancer,
                                  void *baton)
{
    static const struct {
        const char *source;
        const char *load;
    } needed[] = {
        { "mod_proxy_balancer.c", "proxy_balancer_module (a2enmod proxy_balancer)" },
        { "mod_proxy_http.c", "proxy_http_module (a2enmod proxy_http)" },
    };
    apr_size_t j;

    (void)baton;
    for (j = 0; j < sizeof(needed) / sizeof(needed[0]); j++) {
        if (!ap_find_linked_module(needed[j].source)) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0,
                         s, AOAI_LOGNO(003) "%s uses "
                         "lbmethod=" AOAI_LBMETHOD_NAME ", which needs "
                         "LoadModule %s", balancer->s->name, needed[j].load);
            return APR_EGENERAL;
        }
    }
    return APR_SUCCESS;
}

static int aoai_check_config(apr_pool_t *pconf, apr_pool_t *plog,
                             apr_pool_t *ptemp, server_rec *s)
{
    server_rec *vhost;

    (void)pconf;
    (void)plog;
    for (vhost = s; vhost; vhost = vhost->next) {
        if (check_credential_routes(s, ptemp, ap_get_module_config(
                vhost->module_config, &proxy_module)) != OK) {
            return !OK;
        }
    }
    return aoai_for_each_balancer(s, needs_modules, NULL) == APR_SUCCESS
           ? OK : !OK;
}

/* A <VirtualHost> whose ProxyPass names a balancer that the main server
 * defines gets, from mod_proxy's merge, a copy of it: the same members,
 * but a shared record of its own whose lbmethod name is the default,
 * "byrequests", from which mod_proxy_balancer sets the method when it
 * shares the balancer.  Left alone, that virtual host would balance the
 * main server's aoai members with byrequests: no windows, no failover,
 * 429s to the client.  So, before mod_proxy_balancer runs, such a copy is
 * given the main server's method name back.  A virtual host that chose another
 * method by name keeps it. */
static int adopt_vhost_balancers(apr_pool_t *pconf, apr_pool_t *plog,
                                 apr_pool_t *ptemp, server_rec *s)
{
    proxy_server_conf *main_conf = ap_get_module_config(s->module_config,
                                                        &proxy_module);
    server_rec *vhost;

    (void)pconf;
    (void)plog;
    for (vhost = s->next; vhost; vhost = vhost->next) {
        proxy_server_conf *conf = ap_get_module_config(vhost->module_config,
                                                       &proxy_module);
        proxy_balancer *copy = (proxy_balancer *)conf->balancers->elts;
        int i;

        for (i = 0; conf != main_conf && i < conf->balancers->nelts;
             i++, copy++) {
            proxy_balancer *original = ap_proxy_get_balancer(
                ptemp, main_conf, copy->s->name, 0);

            if (!original || original->lbmethod != &aoai_lbmethod
                || copy->lbmethod == &aoai_lbmethod
                || strcmp(copy->s->lbpname, "byrequests")) {
                continue;
            }
            apr_cpystrn(copy->s->lbpname, AOAI_LBMETHOD_NAME,
                        sizeof(copy->s->lbpname));
            ap_log_error(APLOG_MARK, APLOG_INFO, 0, vhost, AOAI_LOGNO(007)
                         "%s, used in virtual host %s:%u, balances with "
                         "lbmethod=" AOAI_LBMETHOD_NAME " as the main "
                         "server defines it", copy->s->name,
                         vhost->server_hostname ? vhost->server_hostname
                                                : "*",
                         vhost->port);
        }
    }
    return OK;
}

static int aoai_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                            apr_pool_t *ptemp, server_rec *s)
{
    aoai_server_conf *conf = ap_get_module_config(s->module_config,
                                                  &aoai_balancer_module);

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
    if (aoai_throttle_post_config(pconf, s, conf->table_slots) != APR_SUCCESS) {
        return !OK;
    }
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
    aoai_failover_register_hooks(p);
    aoai_status_register_hooks(p);
    aoai_shared_cache_register_hooks(p);
}

AP_DECLARE_MODULE(aoai_balancer) = {
    STANDARD20_MODULE_STUFF,
    create_dir_conf,
    merge_dir_conf,
    create_server_conf,
    NULL,
    aoai_cmds,
    register_hooks,
    AP_MODULE_FLAG_NONE
};
