/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_usage: the tokens a call uses, estimated from its request before
 * any member is asked and read from the answer as it goes by, in one
 * pass over bytes that are never kept.  APR only, fuzzed
 * (fuzz/usage_fuzz.c).
 */

#ifndef AOAI_USAGE_H
#define AOAI_USAGE_H

#include "apr.h"
#include "apr_pools.h"

/* An answer's "usage" object (Responses' input_tokens and output_tokens
 * are its prompt and completion). */
typedef struct {
    apr_int64_t prompt_tokens;
    apr_int64_t completion_tokens;
    apr_int64_t total_tokens;
} aoai_usage;

/* How deep the reader tells containers apart; deeper ones are only
 * counted, which is all a usage or a delta needs. */
#define AOAI_USAGE_DEPTH 16

/* Where the reader is in one JSON document: an answer, or one "data:"
 * line of a stream.  Private to aoai_usage.c. */
typedef struct {
    int state;
    int depth;
    unsigned char tag[AOAI_USAGE_DEPTH + 1]; /* what each open container is */
    int expect_key;
    int key;                /* the key whose value comes next */
    int string_kind;
    int escape;             /* a backslash ended the last piece */
    char key_text[24];
    apr_size_t key_length;
    apr_size_t string_bytes;
    apr_int64_t number;
    int number_key;
    aoai_usage pending;     /* the usage object being read */
    unsigned int seen;      /* its fields read so far */
    int bad;                /* it is unreadable */
    int usages;             /* usage objects met in this document */
    int has_usage;          /* pending is a whole, readable usage */
} aoai_usage_doc;

/* Watches an answer go by: a JSON body, or an SSE stream read line by
 * line, each "data:" line a document. */
typedef struct {
    int streaming;          /* text/event-stream */
    int found;              /* usage holds the member's own figures */
    int expected;           /* the answer is one that carries usage */
    int unreadable;         /* its bytes cannot be read (encoding) */
    apr_int64_t counted;    /* completion tokens counted from a stream's
                             * text: a token per 4 bytes, 1 at least */
    int counted_figure;     /* usage holds the counted figure (metering) */
    aoai_usage usage;
    void *decoder;          /* whoever feeds it: what decodes the bytes */
    int line_state;
    char field[5];
    int field_length;
    aoai_usage_doc doc;
} aoai_usage_scan;

/* 1 when json is an object with a readable top-level "usage" object. */
int aoai_usage_from_json(const char *json, apr_size_t length,
                         aoai_usage *usage);

aoai_usage_scan *aoai_usage_scan_start(apr_pool_t *pool, int streaming);
/* pool is unused (nothing is kept); kept for the callers' symmetry. */
void aoai_usage_scan_feed(apr_pool_t *pool, aoai_usage_scan *scan,
                          const char *data, apr_size_t length);
/* At the answer's end: 1 when scan->usage holds the member's figures. */
int aoai_usage_scan_finish(aoai_usage_scan *scan);

/* A completion bound as a request's JSON writes it (the value of
 * max_tokens, say): 1 to 10^8, else 0 (none the estimate believes). */
apr_int64_t aoai_usage_bound(const char *value, apr_size_t length);
/* The completion a request asks for at most, from the text of its
 * max_tokens, max_completion_tokens and a response's max_output_tokens
 * (values[k] NULL when absent): the first of them that is a bound, else
 * 0 when it names none. */
apr_int64_t aoai_usage_asked(const char *const values[3],
                             const apr_size_t lengths[3]);
/* The prompt of a body of this many bytes, as the estimate takes it. */
apr_int64_t aoai_usage_prompt_estimate(apr_off_t length);

#endif /* AOAI_USAGE_H */
