/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_metrics: the aoai-balancer-metrics handler, every member's and
 * subscription key's figures in Prometheus' text exposition format.
 */

#ifndef AOAI_METRICS_H
#define AOAI_METRICS_H

#include "apr_pools.h"

void aoai_metrics_register_hooks(apr_pool_t *p);

#endif /* AOAI_METRICS_H */
