/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Deployment-aware members: AOAIDeployment route name [name-at-member].
 *
 * Regions name the same model differently (gpt-35-turbo in one resource,
 * gpt35t-0125 in another), and not every resource has every model.  A
 * member that declares deployments serves only those, each under its own
 * name there; a member that declares none serves every deployment under
 * the name the client used, as before.  A call for a deployment is only
 * offered to members that serve it, and the path each member is sent has
 * the member's name for it, exactly as declared.  Names and the
 * "deployments" segment are matched without regard to case: a client's
 * GPT-4o is the gpt-4o a member declared, and that member is sent
 * "gpt-4o", so no member is ever sent a name it did not declare, however
 * the service compares them.  A call for a deployment no member serves gets
 * Azure's 404 from the gateway.
 */

#include "aoai_deployments.h"
#include "aoai_affinity.h"
#include "aoai_balancers.h"

#include "apr_lib.h"
#include "apr_strings.h"
#include "http_log.h"

APLOG_USE_MODULE(aoai_balancer);

/* Azure's deployment names: letters, digits, '-', '_', '.'. */
static int is_deployment_name(const char *name)
{
    const char *p;

    for (p = name; *p; p++) {
        if (!apr_isalnum(*p) && *p != '-' && *p != '_' && *p != '.') {
            return 0;
        }
    }
    return p != name && p - name <= 64;
}

const char *aoai_deployments_set(cmd_parms *cmd, void *dconf,
                                 const char *route, const char *name,
                                 const char *member_name)
{
    aoai_dir_conf *conf = dconf;
    aoai_deployment *deployment;
    const char *err = aoai_config_in_balancer_section(cmd);
    int i;

    if (err) {
        return err;
    }
    if (!member_name) {
        member_name = name;
    }
    if (!is_deployment_name(name) || !is_deployment_name(member_name)) {
        return apr_psprintf(cmd->pool, "AOAIDeployment %s: '%s' is not a "
                            "deployment name (1 to 64 letters, digits, '-', "
                            "'_' or '.')", route,
                            is_deployment_name(name) ? member_name : name);
    }
    if (!conf->deployments) {
        conf->deployments = apr_array_make(cmd->pool, 4, sizeof(*deployment));
    }
    for (i = 0; i < conf->deployments->nelts; i++) {
        deployment = &APR_ARRAY_IDX(conf->deployments, i, aoai_deployment);
        if (!strcmp(deployment->route, route)
            && !ap_cstr_casecmp(deployment->name, name)) {
            return apr_psprintf(cmd->pool, "AOAIDeployment %s %s: this "
                                "member already declares that deployment",
                                route, name);
        }
    }
    deployment = apr_array_push(conf->deployments);
    deployment->route = route;
    deployment->name = name;
    deployment->member_name = member_name;
    return NULL;
}

/* The deployment in ".../deployments/NAME/..." of a path, or NULL.  The
 * segment is found in any case, as httpd would pass /openai/Deployments/
 * on to a member unchanged. */
static const char *deployment_in(apr_pool_t *pool, const char *path,
                                 const char **start, apr_size_t *length)
{
    static const char segment[] = "/deployments/";
    const apr_size_t segment_length = sizeof(segment) - 1;
    const char *at = path, *end = path + strcspn(path, "?#");
    apr_size_t n;

    /* From slash to slash (memchr), not byte by byte. */
    for (;;) {
        at = memchr(at, '/', (apr_size_t)(end - at));
        if (!at || (apr_size_t)(end - at) < segment_length) {
            return NULL;
        }
        if (!ap_cstr_casecmpn(at, segment, segment_length)) {
            break;
        }
        at++;
    }
    at += segment_length;
    n = strcspn(at, "/?#");
    if (!n) {
        return NULL;
    }
    *start = at;
    *length = n;
    return apr_pstrmemdup(pool, at, n);
}

/* API paths (after /openai/) whose deployment is the body's "model". */
static const char *const model_paths[] = {
    "v1/chat/completions", "v1/completions", "v1/embeddings", "v1/responses",
    "responses", "v1/images/generations", "v1/audio/speech"
};

int aoai_deployments_by_model(const request_rec *r, const char *uri)
{
    const char *at = strstr(uri, "/openai/");
    apr_size_t length, i;

    if (!at || r->method_number != M_POST) {
        return 0;
    }
    at += 8;
    length = strcspn(at, "?#");
    for (i = 0; i < sizeof(model_paths) / sizeof(model_paths[0]); i++) {
        if (length == strlen(model_paths[i])
            && !memcmp(at, model_paths[i], length)) {
            return 1;
        }
    }
    return 0;
}

/* The name each member has for the call's deployment, when members
 * declare theirs. */
static int route_declared(aoai_call *call)
{
    const apr_array_header_t *declared = call->conf->deployments;
    aoai_route *route = &call->route;
    proxy_balancer *balancer = call->balancer;
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int i, j, serving = 0;

    route->slots = aoai_balancers_slots(balancer);
    route->at_member = apr_pcalloc(call->r->pool,
                                   route->slots * sizeof(*route->at_member));
    for (i = 0; i < balancer->workers->nelts; i++) {
        const char *member_route = workers[i]->s->route;
        /* Declaring nothing is serving everything under its own name. */
        const char *at_member = route->name;

        for (j = 0; j < declared->nelts; j++) {
            const aoai_deployment *d = &APR_ARRAY_IDX(declared, j,
                                                      aoai_deployment);
            if (strcmp(d->route, member_route)) {
                continue;
            }
            at_member = NULL;
            if (!ap_cstr_casecmp(d->name, route->name)) {
                at_member = d->member_name;
                break;
            }
        }
        if (at_member && workers[i]->s->index >= 0
            && workers[i]->s->index < route->slots) {
            route->at_member[workers[i]->s->index] = at_member;
            serving++;
        }
    }
    return serving ? OK : HTTP_NOT_FOUND;
}

/* The Realtime API's WebSocket names its deployment in the query:
 * /openai/realtime?...&deployment=NAME, /openai/v1/realtime?model=NAME.
 * The URI mod_proxy_balancer canonicalised has no query (it is r->args);
 * strchr() finds the terminator too. */
static const char *realtime_param(const char *uri)
{
    const char *at = strstr(uri, "/openai/");

    if (!at) {
        return NULL;
    }
    at += 8;
    if (!strncmp(at, "realtime", 8) && strchr("?#", at[8])) {
        return "deployment";
    }
    if (!strncmp(at, "v1/realtime", 11) && strchr("?#", at[11])) {
        return "model";
    }
    return NULL;
}

/* The value of a query parameter, where it starts and its length; NULL
 * when absent.  query: from its first parameter on. */
static const char *query_value(apr_pool_t *pool, const char *query,
                               const char *param, const char **start,
                               apr_size_t *length)
{
    const char *p = query ? query - 1 : NULL;
    apr_size_t name = strlen(param);

    while (p) {
        p++;
        if (!strncmp(p, param, name) && p[name] == '=') {
            char *value;
            *start = p + name + 1;
            *length = strcspn(*start, "&#");
            value = apr_pstrmemdup(pool, *start, *length);
            ap_unescape_urlencoded(value);
            return *value ? value : NULL;
        }
        p = strchr(p, '&');
    }
    return NULL;
}

int aoai_deployments_route(aoai_call *call, const char *uri,
                           const char *model)
{
    const char *start;
    apr_size_t length;

    call->route.by_model = model != NULL;
    call->route.by_query = model ? NULL : realtime_param(uri);
    if (call->route.by_query) {
        call->route.name = query_value(call->r->pool, call->r->args,
                                       call->route.by_query, &start, &length);
        return call->route.name && call->conf->deployments
               ? route_declared(call) : OK;
    }
    call->route.name = model ? model
                             : deployment_in(call->r->pool, uri, &start,
                                             &length);
    if (!call->route.name || !call->conf->deployments) {
        return OK;
    }
    return route_declared(call);
}

/* A member that said DeploymentNotFound for a deployment, for a while. */
static apr_uint64_t lack_key(const aoai_call *call, const proxy_worker *worker)
{
    return aoai_affinity_key(call->balancer, apr_pstrcat(
        call->r->pool, "\001lacks ", worker->s->name_ex, " ",
        call->route.name, NULL));
}

void aoai_deployments_note_missing(aoai_call *call, proxy_worker *worker)
{
    if (call->route.name) {
        aoai_affinity_mark(lack_key(call, worker),
                           apr_time_now() + call->conf->throttle_default);
    }
}

int aoai_deployments_serves(aoai_call *call, const proxy_worker *worker)
{
    aoai_route *route = &call->route;

    if (call->objects.owner) {
        return worker == call->objects.owner;   /* it holds the objects */
    }
    if (route->at_member
        && !(worker->s->index >= 0 && worker->s->index < route->slots
             && route->at_member[worker->s->index])) {
        return 0;
    }
    if (!route->name) {
        return 1;
    }
    if (!route->marks_looked) {
        route->marks_on = aoai_affinity_marks_on(apr_time_now());
        route->marks_looked = 1;
    }
    return !route->marks_on
           || !aoai_affinity_marked(lack_key(call, worker), apr_time_now());
}

const char *aoai_deployments_model_at(const aoai_call *call,
                                      const proxy_worker *worker)
{
    const char *at_member;

    if (!call->route.by_model || !call->route.at_member
        || worker->s->index < 0 || worker->s->index >= call->route.slots
        || !(at_member = call->route.at_member[worker->s->index])
        || !strcmp(at_member, call->route.name)) {
        return NULL;
    }
    return at_member;
}

/* The URL mod_proxy_balancer made for this member, with the member's name
 * for the deployment. */
char *aoai_deployments_url(aoai_call *call, const proxy_worker *worker,
                           char *url)
{
    const char *at_member, *start;
    apr_size_t length;

    if (call->route.by_model || !call->route.at_member
        || !aoai_deployments_serves(call, worker)) {
        return url;
    }
    at_member = call->route.at_member[worker->s->index];
    if (at_member && call->route.by_query) {
        const char *query = strchr(url, '?');

        if (!query || !query_value(call->r->pool, query + 1,
                                   call->route.by_query, &start, &length)) {
            return url;
        }
        return apr_pstrcat(call->r->pool,
                           apr_pstrmemdup(call->r->pool, url, start - url),
                           ap_escape_urlencoded(call->r->pool, at_member),
                           start + length, NULL);
    }
    if (!at_member || !deployment_in(call->r->pool, url, &start, &length)
        || (length == strlen(at_member) && !memcmp(start, at_member, length))) {
        return url;
    }
    return apr_pstrcat(call->r->pool,
                       apr_pstrmemdup(call->r->pool, url, start - url),
                       at_member, start + length, NULL);
}

/* A deployment declared for a route no member of the balancer has would
 * silently never be used. */
static int check_routes(server_rec *s, proxy_balancer *balancer,
                        const aoai_dir_conf *conf, void *baton)
{
    int i;

    (void)baton;
    for (i = 0; conf->deployments && i < conf->deployments->nelts; i++) {
        const char *route = APR_ARRAY_IDX(conf->deployments, i,
                                          aoai_deployment).route;
        if (!aoai_balancers_has_route(balancer, route)) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                         AOAI_LOGNO(051) "AOAIDeployment %s: no "
                         "BalancerMember of %s has route=%s", route,
                         balancer->s->name, route);
            return !OK;
        }
    }
    return OK;
}

int aoai_deployments_check(server_rec *s, apr_pool_t *ptemp)
{
    return aoai_config_each_section(s, ptemp, check_routes, NULL);
}
