/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_front_door: who may call (subscription keys), what each member is
 * told (its own credential), and that no caller credential goes further.
 */

#ifndef AOAI_FRONT_DOOR_H
#define AOAI_FRONT_DOOR_H

#include "httpd.h"
#include "mod_proxy.h"

#include "aoai_config.h"

/* OK with *label, or HTTP_UNAUTHORIZED with *why for the client. */
int aoai_front_door_check_key(request_rec *r, const aoai_dir_conf *conf,
                              const char **label, const char **why);
/* Every form of caller credential out of the request, its request line
 * and the URI the member will be sent. */
void aoai_front_door_scrub(request_rec *r, const aoai_dir_conf *conf,
                           const char **member_uri);
/* The member's own credential on the request, replacing the previous
 * attempt's; or why its bearer token file cannot be used, *file naming
 * it. */
apr_status_t aoai_front_door_credential(request_rec *r,
                                        const aoai_dir_conf *conf,
                                        proxy_worker *worker,
                                        const char **file);

const char *aoai_front_door_set_key_file(cmd_parms *cmd, void *dconf,
                                         const char *arg);
const char *aoai_front_door_set_key_header(cmd_parms *cmd, void *dconf,
                                           const char *arg);
const char *aoai_front_door_set_credential(cmd_parms *cmd, void *dconf,
                                           const char *route,
                                           const char *kind,
                                           const char *source);
/* apachectl -t: credentials name members, bearer files are readable by
 * the children; OK or !OK (logged). */
int aoai_front_door_check(server_rec *s, apr_pool_t *ptemp);

#endif /* AOAI_FRONT_DOOR_H */
