/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * A compressed answer inflated as it passes.
 *
 * The client gets the member's bytes as they came, in the encoding it
 * asked for; the gateway reads a copy, inflated here a piece at a time
 * into one small buffer that is handed on and reused, so that an answer
 * of any size costs the same memory: zlib's state and its 32 KB window,
 * taken from the request's pool (zlib's own allocation would be malloc
 * on the request path, and nothing would free it if the request ended
 * in the middle).  windowBits 15 + 32 takes both a gzip and a zlib
 * header, which is what "gzip" and "deflate" mean on the wire (RFC 9110
 * 8.4.1).  Raw deflate, which some servers send as "deflate", fails at
 * its first byte: the stream is then broken and the answer unread.
 *
 * Only APR and zlib here.
 */

#include "aoai_inflate.h"

#include "apr_cstr.h"
#include "apr_strings.h"

#include <limits.h>
#include <zlib.h>

/* The inflated bytes a piece: a chat chunk is a few hundred bytes. */
#define AOAI_INFLATE_OUT 8192

struct aoai_inflate {
    z_stream zs;
    int broken;
    int ended;
    aoai_inflate_fn *fn;
    void *baton;
    unsigned char out[AOAI_INFLATE_OUT];
};

static voidpf pool_alloc(voidpf pool, uInt items, uInt size)
{
    return apr_palloc(pool, (apr_size_t)items * size);
}

static void pool_free(voidpf pool, voidpf address)
{
    (void)pool;
    (void)address;      /* the pool frees it */
}

aoai_inflate *aoai_inflate_start(apr_pool_t *pool, const char *encoding,
                                 aoai_inflate_fn *fn, void *baton)
{
    aoai_inflate *z;

    if (apr_cstr_casecmp(encoding, "gzip")
        && apr_cstr_casecmp(encoding, "x-gzip")
        && apr_cstr_casecmp(encoding, "deflate")) {
        return NULL;
    }
    z = apr_pcalloc(pool, sizeof(*z));
    z->zs.zalloc = pool_alloc;
    z->zs.zfree = pool_free;
    z->zs.opaque = pool;
    z->fn = fn;
    z->baton = baton;
    if (inflateInit2(&z->zs, 15 + 32) != Z_OK) {
        return NULL;
    }
    return z;
}

/* Inflates until the input is taken and zlib has no output left in it:
 * a piece that fills the buffer may have more behind it, and the end of
 * an answer (its usage) must not stay inside zlib. */
int aoai_inflate_feed(aoai_inflate *z, const char *data, apr_size_t length)
{
    while (!z->broken && !z->ended) {
        uInt in = length > UINT_MAX ? UINT_MAX : (uInt)length;
        apr_size_t produced, consumed;
        int rc;

        z->zs.next_in = (Bytef *)data;
        z->zs.avail_in = in;
        z->zs.next_out = z->out;
        z->zs.avail_out = sizeof(z->out);
        rc = inflate(&z->zs, Z_NO_FLUSH);
        produced = sizeof(z->out) - z->zs.avail_out;
        consumed = in - z->zs.avail_in;
        if (produced) {
            z->fn(z->baton, (const char *)z->out, produced);
        }
        z->ended = (rc == Z_STREAM_END);
        z->broken = (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR)
                    || (!produced && !consumed && in);
        data += consumed;
        length -= consumed;
        if (!length && z->zs.avail_out) {
            break;
        }
    }
    return !z->broken;
}
