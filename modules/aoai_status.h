/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_status: what the balancers are doing, shown and never changed: a
 * server-status section (HTML and ?auto) and the aoai-balancer-status JSON
 * handler.
 */

#ifndef AOAI_STATUS_H
#define AOAI_STATUS_H

#include "apr_pools.h"

void aoai_status_register_hooks(apr_pool_t *p);

#endif /* AOAI_STATUS_H */
