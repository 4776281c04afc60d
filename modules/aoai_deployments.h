/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_deployments: which deployments each member serves and under which
 * name (AOAIDeployment); the call routed to those members, the path
 * rewritten for each.
 */

#ifndef AOAI_DEPLOYMENTS_H
#define AOAI_DEPLOYMENTS_H

#include "httpd.h"
#include "mod_proxy.h"

#include "aoai_config.h"
#include "aoai_request.h"

const char *aoai_deployments_set(cmd_parms *cmd, void *dconf,
                                 const char *route, const char *name,
                                 const char *member_name);
/* apachectl -t: every declared route names a member; OK or !OK. */
int aoai_deployments_check(server_rec *s, apr_pool_t *ptemp);

/* Which members serve the call's deployment (call->route).  OK, or
 * HTTP_NOT_FOUND when none does. */
int aoai_deployments_route(aoai_call *call, const char *uri);
int aoai_deployments_serves(const aoai_call *call,
                            const proxy_worker *worker);
/* The URL mod_proxy_balancer made for a member, with its name for the
 * deployment. */
char *aoai_deployments_url(aoai_call *call, const proxy_worker *worker,
                           char *url);

#endif /* AOAI_DEPLOYMENTS_H */
