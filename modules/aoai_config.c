/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The module's configuration: per-directory records and their merge, the
 * server record, the directives that belong to no one policy, and the
 * walks start-up checks make over the <Proxy balancer://...> sections.
 *
 * Every directive names itself, the value and the accepted range when it
 * refuses one: `apachectl configtest` is where an admin reads that.
 */

#include "aoai_config.h"

#include "apr_lib.h"
#include "apr_strings.h"

static void set_default_failover(aoai_dir_conf *conf)
{
    static const int statuses[] = { 401, 403, 429, 500, 502, 503, 504 };
    apr_size_t i;

    memset(conf->failover_status, 0, sizeof(conf->failover_status));
    for (i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        int bit = statuses[i] - 400;
        conf->failover_status[bit / 32] |= 1u << (bit % 32);
    }
    conf->failover_transport = AOAI_FAIL_CONNECTION | AOAI_FAIL_TIMEOUT;
}

void *aoai_config_create_dir(apr_pool_t *p, char *dir)
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
    conf->object_affinity = 1;
    conf->object_lifetime = AOAI_DEFAULT_OBJECT_LIFETIME;
    conf->key_tokens_unread = AOAI_DEFAULT_KEY_TOKENS_UNREAD;
    set_default_failover(conf);
    return conf;
}

/* Credentials, deployments and key quotas go with the section that names
 * them, as whole lists: a <Location> inside a server that declares a
 * member's credential keeps it unless it declares its own. */
static void merge_lists(aoai_dir_conf *conf, const aoai_dir_conf *base,
                        const aoai_dir_conf *add)
{
    conf->credentials = add->credentials ? add->credentials
                                         : base->credentials;
    conf->deployments = add->deployments ? add->deployments
                                         : base->deployments;
    conf->key_quotas = add->key_quotas ? add->key_quotas : base->key_quotas;
}

static void merge_headroom(aoai_dir_conf *conf, const aoai_dir_conf *base,
                           const aoai_dir_conf *add)
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

void *aoai_config_merge_dir(apr_pool_t *p, void *basev, void *addv)
{
    aoai_dir_conf *base = basev, *add = addv;
    aoai_dir_conf *conf = apr_pcalloc(p, sizeof(*conf));
    const aoai_dir_conf *failover = add->failover_set ? add : base;

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
    MERGE(object_affinity);
    MERGE(object_lifetime);
    MERGE(operations);
    MERGE(key_tokens_unread);
#undef MERGE
    conf->first_byte_all = add->first_byte_timeout_set ? add->first_byte_all
                                                       : base->first_byte_all;
    merge_headroom(conf, base, add);
    merge_lists(conf, base, add);
    memcpy(conf->failover_status, failover->failover_status,
           sizeof(conf->failover_status));
    conf->failover_transport = failover->failover_transport;
    conf->failover_set = add->failover_set || base->failover_set;
    return conf;
}

void *aoai_config_create_server(apr_pool_t *p, server_rec *s)
{
    aoai_server_conf *conf = apr_pcalloc(p, sizeof(*conf));

    (void)s;
    conf->table_slots = AOAI_DEFAULT_TABLE_SLOTS;
    conf->object_entries = AOAI_DEFAULT_OBJECT_ENTRIES;
    conf->cache_sync = AOAI_DEFAULT_CACHE_SYNC;
    conf->cache_timeout = AOAI_DEFAULT_CACHE_TIMEOUT;
    return conf;
}

aoai_server_conf *aoai_config_server(server_rec *s)
{
    return ap_get_module_config(s->module_config, &aoai_balancer_module);
}

int aoai_config_fails_over(const aoai_dir_conf *conf, int status)
{
    int bit;

    if (status < 400 || status > 599) {
        return 0;
    }
    bit = status - 400;
    return (conf->failover_status[bit / 32] >> (bit % 32)) & 1;
}

const char *aoai_config_duration(cmd_parms *cmd, const char *arg,
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

int aoai_config_header_name_ok(const char *name)
{
    const char *p;
    for (p = name; *p; p++) {
        if (!apr_isalnum(*p) && !strchr("!#$%&'*+-.^_`|~", *p)) {
            return 0;
        }
    }
    return *name != '\0';
}

/* ap_check_cmd_context() cannot say "only in <Proxy>": asked to refuse
 * <Directory>, <Location> and <Files> at once it refuses every section,
 * <Proxy> included.  So the enclosing section is read here, through any
 * <IfModule>-like wrapper. */
const char *aoai_config_in_balancer_section(cmd_parms *cmd)
{
    const ap_directive_t *parent = cmd->directive->parent;

    while (parent && !ap_cstr_casecmpn(parent->directive, "<If", 3)) {
        parent = parent->parent;
    }
    if (!parent || ap_cstr_casecmp(parent->directive, "<Proxy")
        || !cmd->path || ap_cstr_casecmpn(cmd->path, "balancer://", 11)) {
        return apr_psprintf(cmd->pool, "%s belongs in the <Proxy "
                            "balancer://...> section of the balancer whose "
                            "member it names", cmd->cmd->name);
    }
    return NULL;
}

const char *aoai_config_set_throttle_default(cmd_parms *cmd, void *dconf,
                                             const char *arg)
{
    aoai_dir_conf *conf = dconf;
    const char *err = aoai_config_duration(cmd, arg, &conf->throttle_default);

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

const char *aoai_config_set_throttle_max(cmd_parms *cmd, void *dconf,
                                         const char *arg)
{
    aoai_dir_conf *conf = dconf;
    const char *err = aoai_config_duration(cmd, arg, &conf->throttle_max);

    if (err) {
        return err;
    }
    if (conf->throttle_default_set
        && conf->throttle_default > conf->throttle_max) {
        return apr_psprintf(cmd->pool, "AOAIThrottleMax %s is shorter than "
                            "AOAIThrottleDefault in the same context", arg);
    }
    conf->throttle_max_set = 1;
    return NULL;
}

const char *aoai_config_set_failover_on(cmd_parms *cmd, void *dconf,
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
    if (status == 400) {
        return apr_psprintf(cmd->pool, "AOAIFailoverOn: 400 is the call's own "
                            "error (a content filter, context_length_"
                            "exceeded, a bad request): every member would "
                            "answer the same, so it never fails over");
    }
    status -= 400;
    conf->failover_status[status / 32] |= 1u << (status % 32);
    return NULL;
}

const char *aoai_config_set_max_body(cmd_parms *cmd, void *dconf,
                                     const char *arg)
{
    aoai_dir_conf *conf = dconf;
    apr_off_t limit;
    char *end;

    if (apr_strtoff(&limit, arg, &end, 10) != APR_SUCCESS
        || !apr_isdigit(*arg)) {
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

const char *aoai_config_set_backend_header(cmd_parms *cmd, void *dconf,
                                           const char *arg)
{
    aoai_dir_conf *conf = dconf;

    conf->backend_header_set = 1;
    if (!strcasecmp(arg, "off")) {
        conf->backend_header = NULL;
        return NULL;
    }
    if (!aoai_config_header_name_ok(arg)) {
        return apr_psprintf(cmd->pool, "AOAIBackendHeader: '%s' is not a "
                            "valid header name (or Off)", arg);
    }
    conf->backend_header = arg;
    return NULL;
}

const char *aoai_config_set_table_size(cmd_parms *cmd, void *dummy,
                                       const char *arg)
{
    aoai_server_conf *conf = aoai_config_server(cmd->server);
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

const char *aoai_config_set_first_byte(cmd_parms *cmd, void *dconf,
                                       const char *timeout, const char *scope)
{
    aoai_dir_conf *conf = dconf;

    if (!ap_cstr_casecmp(timeout, "Off")) {
        conf->first_byte_timeout = 0;
    }
    else {
        const char *err = aoai_config_duration(cmd, timeout,
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

int aoai_config_each_section(server_rec *s, apr_pool_t *ptemp,
                             aoai_config_section_fn *fn, void *baton)
{
    for (; s; s = s->next) {
        proxy_server_conf *proxy_conf = ap_get_module_config(s->module_config,
                                                             &proxy_module);
        ap_conf_vector_t **sections =
            (ap_conf_vector_t **)proxy_conf->sec_proxy->elts;
        int k, rc;

        for (k = 0; k < proxy_conf->sec_proxy->nelts; k++) {
            const aoai_dir_conf *conf = ap_get_module_config(
                sections[k], &aoai_balancer_module);
            const proxy_dir_conf *section = ap_get_module_config(
                sections[k], &proxy_module);
            proxy_balancer *balancer;

            if (!conf || !section || !section->p
                || ap_cstr_casecmpn(section->p, "balancer://", 11)
                || !(balancer = ap_proxy_get_balancer(ptemp, proxy_conf,
                                                      section->p, 0))) {
                continue;
            }
            if ((rc = fn(s, balancer, conf, baton)) != OK) {
                return rc;
            }
        }
    }
    return OK;
}

apr_interval_time_t aoai_config_throttle_max(server_rec *s,
                                             const proxy_balancer *balancer)
{
    proxy_server_conf *proxy_conf = ap_get_module_config(s->module_config,
                                                         &proxy_module);
    ap_conf_vector_t **sections = (ap_conf_vector_t **)
                                  proxy_conf->sec_proxy->elts;
    const aoai_dir_conf *conf;
    int k;

    for (k = 0; k < proxy_conf->sec_proxy->nelts; k++) {
        const proxy_dir_conf *section = ap_get_module_config(sections[k],
                                                             &proxy_module);
        conf = ap_get_module_config(sections[k], &aoai_balancer_module);
        if (section && section->p && conf && conf->throttle_max_set
            && !strcasecmp(section->p, balancer->s->name)) {
            return conf->throttle_max;
        }
    }
    conf = ap_get_module_config(s->lookup_defaults, &aoai_balancer_module);
    return conf ? conf->throttle_max : AOAI_DEFAULT_THROTTLE_MAX;
}
