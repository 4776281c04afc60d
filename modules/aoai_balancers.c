/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The balancers that use lbmethod=aoai, wherever they are defined.
 *
 * Start-up walks them for the shared table's slots, the shared cache's
 * keys and the status pages, and checks them: a balancer that asks for
 * lbmethod=aoai without the modules a balancer needs fails
 * `apachectl -t`, and a virtual host's copy of a main-server balancer is
 * kept an aoai balancer.
 */

#include "aoai_balancers.h"
#include "aoai_config.h"

#include "apr_strings.h"
#include "http_log.h"

APLOG_USE_MODULE(aoai_balancer);

int aoai_balancers_is_aoai(const proxy_balancer *balancer)
{
    return balancer->lbmethod && balancer->lbmethod->name
           && !strcmp(balancer->lbmethod->name, AOAI_LBMETHOD_NAME);
}

/* Calls fn for every balancer, of every virtual host, that uses
 * lbmethod=aoai; stops at the first result other than APR_SUCCESS. */
apr_status_t aoai_balancers_each(server_rec *s, aoai_balancers_fn *fn,
                                 void *baton)
{
    for (; s; s = s->next) {
        proxy_server_conf *proxy_conf =
            ap_get_module_config(s->module_config, &proxy_module);
        proxy_balancer *balancer = (proxy_balancer *)proxy_conf->balancers->elts;
        int i;

        for (i = 0; i < proxy_conf->balancers->nelts; i++, balancer++) {
            apr_status_t rv;
            if (!aoai_balancers_is_aoai(balancer)) {
                continue;
            }
            if ((rv = fn(s, balancer, baton)) != APR_SUCCESS) {
                return rv;
            }
        }
    }
    return APR_SUCCESS;
}

void aoai_balancers_sync(server_rec *s, proxy_balancer *balancer)
{
    proxy_server_conf *proxy_conf =
        ap_get_module_config(s->module_config, &proxy_module);

    if (PROXY_THREAD_LOCK(balancer) == APR_SUCCESS) {
        ap_proxy_sync_balancer(balancer, s, proxy_conf);
        PROXY_THREAD_UNLOCK(balancer);
    }
}

const char *aoai_balancers_label(const proxy_worker *worker)
{
    return *worker->s->route ? worker->s->route : worker->s->name_ex;
}

int aoai_balancers_slots(const proxy_balancer *balancer)
{
    return balancer->max_workers > balancer->workers->nelts
           ? balancer->max_workers : balancer->workers->nelts;
}

int aoai_balancers_has_route(const proxy_balancer *balancer,
                             const char *route)
{
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int i;

    for (i = 0; i < balancer->workers->nelts; i++) {
        if (!strcmp(workers[i]->s->route, route)) {
            return 1;
        }
    }
    return 0;
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
void aoai_balancers_adopt_copies(server_rec *s, apr_pool_t *ptemp)
{
    proxy_server_conf *main_conf = ap_get_module_config(s->module_config,
                                                        &proxy_module);
    server_rec *vhost;

    for (vhost = s->next; vhost; vhost = vhost->next) {
        proxy_server_conf *conf = ap_get_module_config(vhost->module_config,
                                                       &proxy_module);
        proxy_balancer *copy = (proxy_balancer *)conf->balancers->elts;
        int i;

        for (i = 0; conf != main_conf && i < conf->balancers->nelts;
             i++, copy++) {
            proxy_balancer *original = ap_proxy_get_balancer(
                ptemp, main_conf, copy->s->name, 0);

            if (!original || !aoai_balancers_is_aoai(original)
                || aoai_balancers_is_aoai(copy)
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

int aoai_balancers_check_modules(server_rec *s)
{
    return aoai_balancers_each(s, needs_modules, NULL) == APR_SUCCESS
           ? OK : !OK;
}
