/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_balancers: the balancers that use lbmethod=aoai, in every virtual
 * host, and what start-up makes sure of them.
 */

#ifndef AOAI_BALANCERS_H
#define AOAI_BALANCERS_H

#include "httpd.h"
#include "mod_proxy.h"

/* Whether a balancer balances with lbmethod=aoai.  By the method's name,
 * so that nothing below the lbmethod needs to know the provider. */
int aoai_balancers_is_aoai(const proxy_balancer *balancer);

/* Calls fn for every aoai balancer of every virtual host; stops at the
 * first result other than APR_SUCCESS and returns it. */
typedef apr_status_t (aoai_balancers_fn)(server_rec *s,
                                         proxy_balancer *balancer,
                                         void *baton);
apr_status_t aoai_balancers_each(server_rec *s, aoai_balancers_fn *fn,
                                 void *baton);

/* The balancer's members as they are now, with those added through the
 * balancer-manager in another child (a reader of every member, such as the
 * status pages, calls it first). */
void aoai_balancers_sync(server_rec *s, proxy_balancer *balancer);

/* What logs and the client call a member: its route, else its URL. */
const char *aoai_balancers_label(const proxy_worker *worker);

/* Room for every member by worker->s->index, growth included. */
int aoai_balancers_slots(const proxy_balancer *balancer);

/* Whether a member of the balancer has this route=. */
int aoai_balancers_has_route(const proxy_balancer *balancer,
                             const char *route);

/* Before mod_proxy_balancer shares its balancers (post_config): a virtual
 * host's copy of a main-server aoai balancer is given lbmethod=aoai back. */
void aoai_balancers_adopt_copies(server_rec *s, apr_pool_t *ptemp);

/* apachectl -t: an aoai balancer without the modules a balancer needs is
 * a configuration error (logged); returns OK or !OK. */
int aoai_balancers_check_modules(server_rec *s);

#endif /* AOAI_BALANCERS_H */
