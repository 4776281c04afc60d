/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The tokens an answer used, read from the answer itself.
 *
 * A chat completion ends with {"usage":{"prompt_tokens":..,
 * "completion_tokens":..,"total_tokens":..}}; a stream whose client asked
 * for stream_options.include_usage carries the same object in its last
 * "data:" event before [DONE].  The answer is never held back for this:
 * the output filter passes every brigade on and gives this scanner a copy
 * of its bytes.  A JSON body is kept whole, up to AOAI_USAGE_JSON_MAX, and
 * read once at its end; a stream keeps only its current line, and only
 * lines that mention "usage" are read.  Reading means finding the
 * top-level "usage" key with a structural walk and parsing its object
 * with jansson (see aoai_json.c).
 *
 * Every byte here comes from a member, so nothing is trusted: negative,
 * fractional or absurd figures make the usage unreadable rather than
 * wrong in the counters.
 *
 * Before the answer, a call's cost is estimated from its request, as Azure
 * estimates it at arrival: the prompt plus the completion asked for.
 *
 * Only APR and jansson here, so a fuzzer can drive this file alone.
 */

#include "aoai_usage.h"
#include "aoai_json.h"

#include "apr_strings.h"

#include <jansson.h>

/* Chat completions are kilobytes; a body this large is not one whose
 * tokens we could afford to keep a copy of. */
#define AOAI_USAGE_JSON_MAX (1024 * 1024)
/* One SSE event line: a chunk is a few hundred bytes. */
#define AOAI_USAGE_LINE_MAX (64 * 1024)
/* More tokens than any deployment's context window by far. */
#define AOAI_USAGE_TOKENS_MAX APR_INT64_C(1000000000)

static int token_count(json_t *usage, const char *field, int required,
                       apr_int64_t *out)
{
    json_t *value = json_object_get(usage, field);
    json_int_t n;

    if (!value) {
        *out = 0;
        return !required;
    }
    if (!json_is_integer(value)) {
        return 0;
    }
    n = json_integer_value(value);
    if (n < 0 || n > AOAI_USAGE_TOKENS_MAX) {
        return 0;
    }
    *out = (apr_int64_t)n;
    return 1;
}

/* Returns 1 when json is an object with a readable "usage" object at its
 * top level.  Embeddings have no completion_tokens; every answer with
 * usage has total_tokens. */
int aoai_usage_from_json(const char *json, apr_size_t length,
                         aoai_usage *usage)
{
    json_error_t error;
    json_t *object;
    const char *value = NULL;
    apr_size_t value_length = 0;
    aoai_usage found;
    int ok;

    if (!aoai_json_top_level(json, length, "usage", &value, &value_length)
        || !value_length || value[0] != '{') {
        return 0;    /* absent, or null as in a stream's early chunks */
    }
    object = json_loadb(value, value_length,
                        JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &error);
    if (!object) {
        return 0;
    }
    ok = json_is_object(object)
         && token_count(object, "prompt_tokens", 0, &found.prompt_tokens)
         && token_count(object, "completion_tokens", 0,
                        &found.completion_tokens)
         && token_count(object, "total_tokens", 1, &found.total_tokens);
    if (ok) {
        *usage = found;
    }
    json_decref(object);
    return ok;
}

aoai_usage_scan *aoai_usage_scan_start(apr_pool_t *pool, int streaming)
{
    aoai_usage_scan *scan = apr_pcalloc(pool, sizeof(*scan));
    scan->streaming = streaming;
    return scan;
}

static int append(apr_pool_t *pool, aoai_usage_scan *scan, const char *data,
                  apr_size_t length, apr_size_t limit)
{
    if (!length) {
        return 1;
    }
    if (length > limit - scan->length) {
        return 0;
    }
    if (scan->length + length > scan->capacity) {
        apr_size_t capacity = scan->capacity ? scan->capacity * 2 : 4096;
        char *grown;
        while (capacity < scan->length + length) {
            capacity *= 2;
        }
        grown = apr_palloc(pool, capacity);
        if (scan->length) {
            memcpy(grown, scan->buffer, scan->length);
        }
        scan->buffer = grown;
        scan->capacity = capacity;
    }
    memcpy(scan->buffer + scan->length, data, length);
    scan->length += length;
    return 1;
}

static int mentions_usage(const char *line, apr_size_t length)
{
    static const char needle[] = "\"usage\"";
    apr_size_t i;

    for (i = 0; i + sizeof(needle) - 1 <= length; i++) {
        if (line[i] == '"' && !memcmp(line + i, needle, sizeof(needle) - 1)) {
            return 1;
        }
    }
    return 0;
}

/* One complete SSE line.  Only "data:" lines carry chunks; the last chunk
 * with a usage object wins (chunks before it say "usage": null). */
static void scan_line(aoai_usage_scan *scan, const char *line,
                      apr_size_t length)
{
    aoai_usage usage;

    if (length && line[length - 1] == '\r') {
        length--;
    }
    if (length < 5 || memcmp(line, "data:", 5) != 0) {
        return;
    }
    line += 5;
    length -= 5;
    if (!mentions_usage(line, length)) {
        return;
    }
    if (aoai_usage_from_json(line, length, &usage)) {
        scan->usage = usage;
        scan->found = 1;
    }
}

void aoai_usage_scan_feed(apr_pool_t *pool, aoai_usage_scan *scan,
                          const char *data, apr_size_t length)
{
    if (!scan->streaming) {
        if (!scan->overflowed
            && !append(pool, scan, data, length, AOAI_USAGE_JSON_MAX)) {
            scan->overflowed = 1;
        }
        return;
    }
    while (length) {
        const char *newline = memchr(data, '\n', length);
        apr_size_t part = newline ? (apr_size_t)(newline - data) : length;

        if (!scan->overflowed
            && !append(pool, scan, data, part, AOAI_USAGE_LINE_MAX)) {
            /* Skip the rest of this line, not the rest of the stream. */
            scan->overflowed = 1;
        }
        if (!newline) {
            return;
        }
        if (!scan->overflowed) {
            scan_line(scan, scan->buffer, scan->length);
        }
        scan->length = 0;
        scan->overflowed = 0;
        data = newline + 1;
        length -= part + 1;
    }
}

/* At the answer's end.  Returns 1 when scan->usage holds its figures. */
int aoai_usage_scan_finish(aoai_usage_scan *scan)
{
    if (scan->streaming) {
        /* A last line without its newline still counts. */
        if (scan->length && !scan->overflowed) {
            scan_line(scan, scan->buffer, scan->length);
        }
    }
    else if (scan->length && !scan->overflowed) {
        scan->found = aoai_usage_from_json(scan->buffer, scan->length,
                                           &scan->usage);
    }
    scan->length = 0;
    return scan->found;
}

/* The prompt is taken as a token per four bytes of the body (JSON's own
 * syntax makes that generous, which is the side to err on). */
apr_int64_t aoai_usage_estimate(const char *body, apr_size_t length)
{
    static const char *const completion_keys[] = {
        "max_tokens", "max_completion_tokens"
    };
    apr_int64_t estimate = (apr_int64_t)(length / 4) + 1;
    apr_size_t i;

    for (i = 0; i < sizeof(completion_keys) / sizeof(completion_keys[0]);
         i++) {
        const char *value;
        apr_size_t value_length;
        json_t *parsed;
        json_int_t asked;

        if (!length || !memmem(body, length, completion_keys[i],
                               strlen(completion_keys[i]))
            || !aoai_json_top_level(body, length, completion_keys[i], &value,
                                    &value_length)) {
            continue;
        }
        parsed = json_loadb(value, value_length, JSON_DECODE_ANY, NULL);
        asked = json_is_integer(parsed) ? json_integer_value(parsed) : 0;
        json_decref(parsed);
        if (asked > 0 && asked < APR_INT64_C(100000000)) {
            return estimate + asked;
        }
    }
    return estimate;
}
