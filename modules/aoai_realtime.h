/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_realtime: the Realtime API, a WebSocket session per call, through
 * the same member choice, failover at the handshake, front door and
 * accounting as every other call.
 */

#ifndef AOAI_REALTIME_H
#define AOAI_REALTIME_H

#include "httpd.h"
#include "http_config.h"

#include "aoai_request.h"

/* post_config: members of aoai balancers without an upgrade= of their own
 * may be asked to upgrade to WebSocket, so that
 * `ProxyPass /openai balancer://aoai/openai` carries Realtime sessions. */
void aoai_realtime_post_config(server_rec *s);

/* ProxyPass, ProxyPassMatch: upgrade= on a balancer's URL is refused
 * saying where it belongs; any other line goes on to mod_proxy. */
const char *aoai_realtime_check_pass(cmd_parms *cmd, void *dconf,
                                     const char *args);

/* Before any member: a call on a Realtime path that is not a WebSocket
 * handshake gets 400 (DECLINED: go on).  A handshake is marked as one
 * and asks members for uncompressed frames, so its usage can be read. */
int aoai_realtime_check(request_rec *r, aoai_call *call, const char *uri);

/* Before each attempt of a handshake: the 101 the member may answer will
 * name it (x-aoai-backend) and open a session. */
void aoai_realtime_attempt(request_rec *r, aoai_call *call);

/* The member's side of an open session, as the tunnel reads it: its
 * response.done events' usage is counted. */
void aoai_realtime_feed(aoai_call *call, apr_bucket_brigade *bb);

/* The session is over: its usage (NULL when none was read), the open
 * count taken down. */
const aoai_usage *aoai_realtime_end(request_rec *r, aoai_call *call);

void aoai_realtime_register_hooks(apr_pool_t *p);

#endif /* AOAI_REALTIME_H */
