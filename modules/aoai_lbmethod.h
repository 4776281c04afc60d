/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_lbmethod: the "aoai" lbmethod provider.  Priority (lbset) first,
 * byrequests' weighting inside a priority, members inside a throttle
 * window, already tried, short of headroom or not serving the deployment
 * passed over.
 */

#ifndef AOAI_LBMETHOD_H
#define AOAI_LBMETHOD_H

#include "httpd.h"
#include "mod_proxy.h"

#include "aoai_request.h"

extern const proxy_balancer_method aoai_lbmethod;

/* post_config: mod_proxy's optional functions the walk needs. */
int aoai_lbmethod_post_config(server_rec *s);

/* Whether a member could still be picked for this call; a throttled one
 * is noted as skipped. */
int aoai_lbmethod_is_candidate(proxy_worker *worker, aoai_call *call,
                               apr_time_t now);
/* Whether any member could; when none can, every throttled one has been
 * noted as skipped. */
int aoai_lbmethod_any_candidate(aoai_call *call, apr_time_t now);

#endif /* AOAI_LBMETHOD_H */
