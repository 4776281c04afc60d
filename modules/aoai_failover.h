/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_failover: the handler that owns the attempt loop for aoai
 * balancers, and the output filter that swallows a failed answer before a
 * byte of it reaches the client.
 */

#ifndef AOAI_FAILOVER_H
#define AOAI_FAILOVER_H

#include "apr_pools.h"

void aoai_failover_register_hooks(apr_pool_t *p);

#endif /* AOAI_FAILOVER_H */
