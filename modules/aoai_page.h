/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_page: the aoai-balancer-page handler, one self-contained HTML page
 * with every balancer and member at a glance: state, the throttle window's
 * time left counting down, why, what is left of its limits, and its last
 * minutes charted.
 */

#ifndef AOAI_PAGE_H
#define AOAI_PAGE_H

#include "apr_pools.h"

void aoai_page_register_hooks(apr_pool_t *p);

#endif /* AOAI_PAGE_H */
