/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_keyfile: the subscription key file, "label sha256-hex" lines.
 * APR only, fuzzed (fuzz/keyfile_fuzz.c).
 */

#ifndef AOAI_KEYFILE_H
#define AOAI_KEYFILE_H

#include "apr.h"
#include "apr_pools.h"
#include "apr_tables.h"

/* Key labels longer than this are refused: the label is kept in shared
 * memory with the tokens it used. */
#define AOAI_LABEL_MAX 64

typedef struct {
    const char *label;              /* for logs and accounting, never secret */
    unsigned char digest[32];       /* SHA-256 of the key */
} aoai_subscription_key;

typedef struct {
    const char *path;
    apr_array_header_t *keys;       /* aoai_subscription_key */
} aoai_key_set;

/* Reads the file; NULL and *out, or an error naming the file, the line and
 * what is wrong with it. */
const char *aoai_keyfile_load(apr_pool_t *pool, const char *path,
                              aoai_key_set **out);

#endif /* AOAI_KEYFILE_H */
