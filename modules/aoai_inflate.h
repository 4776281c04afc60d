/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_inflate: a gzip or deflate answer inflated piece by piece as it
 * passes, for the gateway to read what the client gets compressed.  APR
 * and zlib only.
 */

#ifndef AOAI_INFLATE_H
#define AOAI_INFLATE_H

#include "apr.h"
#include "apr_pools.h"

typedef struct aoai_inflate aoai_inflate;

/* Where the inflated bytes go, a piece at a time. */
typedef void (aoai_inflate_fn)(void *baton, const char *data,
                               apr_size_t length);

/* An inflater for a Content-Encoding (gzip, x-gzip, deflate), its memory
 * from pool; NULL for an encoding it cannot undo. */
aoai_inflate *aoai_inflate_start(apr_pool_t *pool, const char *encoding,
                                 aoai_inflate_fn *fn, void *baton);
/* The next compressed bytes: 1, or 0 once the stream is broken (nothing
 * more is inflated then). */
int aoai_inflate_feed(aoai_inflate *z, const char *data, apr_size_t length);

#endif /* AOAI_INFLATE_H */
