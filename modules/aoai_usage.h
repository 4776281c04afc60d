/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_usage: the tokens a call uses, estimated from its request before
 * any member is asked and read from the answer as it goes by.  APR and
 * jansson only, fuzzed (fuzz/usage_fuzz.c).
 */

#ifndef AOAI_USAGE_H
#define AOAI_USAGE_H

#include "apr.h"
#include "apr_pools.h"

/* An answer's "usage" object. */
typedef struct {
    apr_int64_t prompt_tokens;
    apr_int64_t completion_tokens;
    apr_int64_t total_tokens;
} aoai_usage;

/* Watches an answer go by and keeps what is needed to read its usage:
 * the whole JSON body (bounded), or only the current SSE line. */
typedef struct {
    int streaming;          /* text/event-stream */
    int found;              /* usage holds an answer's figures */
    int overflowed;         /* more than the bound: usage not read */
    char *buffer;
    apr_size_t length;
    apr_size_t capacity;
    aoai_usage usage;
} aoai_usage_scan;

/* 1 when json is an object with a readable top-level "usage" object. */
int aoai_usage_from_json(const char *json, apr_size_t length,
                         aoai_usage *usage);

aoai_usage_scan *aoai_usage_scan_start(apr_pool_t *pool, int streaming);
void aoai_usage_scan_feed(apr_pool_t *pool, aoai_usage_scan *scan,
                          const char *data, apr_size_t length);
/* At the answer's end: 1 when scan->usage holds its figures. */
int aoai_usage_scan_finish(aoai_usage_scan *scan);

/* What a call will cost in tokens before a member says: its prompt (a
 * token per four bytes of the body) plus the completion it asks for at
 * most. */
apr_int64_t aoai_usage_estimate(const char *body, apr_size_t length);

#endif /* AOAI_USAGE_H */
