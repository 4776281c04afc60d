/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_throttle: throttle windows, opened by a member's 429 and honoured
 * by every pick until they end.
 */

#ifndef AOAI_THROTTLE_H
#define AOAI_THROTTLE_H

#include "httpd.h"
#include "mod_proxy.h"

#include "aoai_request.h"

/* The attempt's member answered r->status, a failure: the window it asked
 * for (or none, for a 5xx that names none) is recorded, shared, logged. */
void aoai_throttle_note(request_rec *r, aoai_call *call);
/* Whether the member is inside a window now. */
int aoai_throttle_is_on(proxy_balancer *balancer, proxy_worker *worker,
                        apr_time_t now);
/* When the first member inside a window comes back; 0 when none is. */
apr_time_t aoai_throttle_soonest_end(proxy_balancer *balancer,
                                     apr_time_t now);

#endif /* AOAI_THROTTLE_H */
