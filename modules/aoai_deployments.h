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

/* Whether the call's deployment is its body's "model" (the v1 API, the
 * Responses API), not a segment of its path. */
int aoai_deployments_by_model(const request_rec *r, const char *uri);
/* Which members serve the call's deployment (call->route): the body's
 * model when given, else the path's.  OK, or HTTP_NOT_FOUND when none
 * does. */
int aoai_deployments_route(aoai_call *call, const char *uri,
                           const char *model);
/* Whether the member can be sent this call: it serves the deployment, has
 * not just said it lacks it, and holds the objects the call names.  Asked
 * of every member at every pick: whether any "lacks" mark is on at all is
 * read once a call. */
int aoai_deployments_serves(aoai_call *call, const proxy_worker *worker);
/* The member answered DeploymentNotFound: passed over for that deployment
 * for AOAIThrottleDefault. */
void aoai_deployments_note_missing(aoai_call *call, proxy_worker *worker);
/* The name to put in the body's "model" for this member, when it is not
 * the client's; else NULL. */
const char *aoai_deployments_model_at(const aoai_call *call,
                                      const proxy_worker *worker);
/* The URL mod_proxy_balancer made for a member, with its name for the
 * deployment. */
char *aoai_deployments_url(aoai_call *call, const proxy_worker *worker,
                           char *url);

#endif /* AOAI_DEPLOYMENTS_H */
