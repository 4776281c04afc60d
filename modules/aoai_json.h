/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_json: JSON as the gateway meets it, bytes from members and clients
 * that are trusted for nothing.  A structural walk that finds one
 * top-level key without building the document, escaping for the answers
 * the gateway writes, and jansson values tied to the pool that owns them.
 * APR and jansson only.
 */

#ifndef AOAI_JSON_H
#define AOAI_JSON_H

#include "apr.h"
#include "apr_pools.h"

#include <jansson.h>

/* Top-level keys of a request or answer, read in one walk: each wanted
 * key's value text, NULL when absent.  Returns 1 when the root is a closed
 * object with no wanted key twice (values are trusted only then), else 0
 * with every value NULL. */
typedef struct {
    const char *key;
    apr_size_t key_length;
    const char *value;             /* out */
    apr_size_t value_length;       /* out */
} aoai_json_field;
int aoai_json_top_level_fields(const char *json, apr_size_t length,
                               aoai_json_field *fields, int count);
/* The value of a top-level key of an object: *value spans its text.  The
 * root must be a closed object with the key once; returns 1 when found. */
int aoai_json_top_level(const char *json, apr_size_t length, const char *key,
                        const char **value, apr_size_t *value_length);

/* in, escaped for the inside of a JSON string. */
const char *aoai_json_escape(apr_pool_t *pool, const char *in);

/* Hands a new reference to the pool: it is released when the pool is
 * cleared or destroyed.  Returns json. */
json_t *aoai_json_own(apr_pool_t *pool, json_t *json);

/* The document as text in the pool, or NULL when it cannot be written. */
char *aoai_json_text(apr_pool_t *pool, const json_t *json, size_t flags);

#endif /* AOAI_JSON_H */
