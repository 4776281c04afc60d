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
