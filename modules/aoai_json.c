/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * JSON the gateway reads and writes.
 *
 * Reading: an answer's usage, a request's "stream" and "max_tokens" are
 * each one key at the top of a document that can be megabytes.  Building
 * a whole chat completion with jansson cost 8.7 us for 671 bytes
 * (measured), most of a request's budget; aoai_json_top_level() walks the
 * structure (strings, nesting, commas) in one pass and jansson then reads
 * only the value wanted.
 *
 * Writing and owning: jansson counts references and allocates with
 * malloc; httpd code lives in pools.  A value handed to a pool with
 * aoai_json_own() is released with the pool, as httpd's own JSON users
 * (mod_md) tie theirs, so no path can forget a decref or a free.
 *
 * Only APR and jansson here: the fuzzers and unit tests build this file
 * without httpd.
 */

#include "aoai_json.h"

#include "apr_strings.h"

#include <stdlib.h>

static int is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_space(const char *json, apr_size_t length, apr_size_t *i)
{
    while (*i < length && is_json_space(json[*i])) {
        (*i)++;
    }
}

/* From the opening quote at *i, past the closing one; 0 if unterminated.
 * Strings are most of a request's bytes (the messages): memchr() finds
 * the next quote a word at a time, and a quote after an odd run of
 * backslashes is escaped. */
static int skip_string(const char *json, apr_size_t length, apr_size_t *i)
{
    apr_size_t start = *i + 1, at = start;

    for (;;) {
        const char *quote = at < length ? memchr(json + at, '"', length - at)
                                        : NULL;
        apr_size_t back;

        if (!quote) {
            return 0;
        }
        at = (apr_size_t)(quote - json);
        for (back = at; back > start && json[back - 1] == '\\'; back--) {
        }
        if (((at - back) & 1) == 0) {
            *i = at + 1;
            return 1;
        }
        at++;
    }
}

/* From the start of a value at *i to just past it (its closing bracket
 * or last character), stopping before the ',' or '}' that follows. */
static int skip_value(const char *json, apr_size_t length, apr_size_t *i)
{
    int nested = 0;

    while (*i < length) {
        char c = json[*i];

        if (c == '"') {
            if (!skip_string(json, length, i)) {
                return 0;
            }
            continue;
        }
        if (c == '{' || c == '[') {
            nested++;
        }
        else if (c == '}' || c == ']') {
            if (!nested) {
                return 1;
            }
            nested--;
        }
        else if (c == ',' && !nested) {
            return 1;
        }
        (*i)++;
    }
    return 1;
}

/* At a key of the root object (*i on its opening quote): past it and its
 * ':'.  *which is the index of the wanted key it is, or -1. */
static int read_key(const char *json, apr_size_t length, apr_size_t *i,
                    const aoai_json_field *fields, int count, int *which)
{
    apr_size_t name = *i + 1, name_length;
    int k;

    if (!skip_string(json, length, i)) {
        return 0;
    }
    name_length = *i - name - 1;
    *which = -1;
    for (k = 0; k < count; k++) {
        if (name_length == fields[k].key_length
            && !memcmp(json + name, fields[k].key, name_length)) {
            *which = k;
            break;
        }
    }
    skip_space(json, length, i);
    if (*i >= length || json[*i] != ':') {
        return 0;
    }
    (*i)++;
    return 1;
}

/* One key/value pair of the root, *i on the key's opening quote; leaves *i
 * on what ended the value.  A wanted key seen twice is trusted nowhere. */
static int read_pair(const char *json, apr_size_t length, apr_size_t *i,
                     aoai_json_field *fields, int count)
{
    apr_size_t start;
    int which;

    if (!read_key(json, length, i, fields, count, &which)) {
        return 0;
    }
    skip_space(json, length, i);
    start = *i;
    if (!skip_value(json, length, i)
        || (which >= 0 && fields[which].value)) {
        return 0;
    }
    if (which >= 0) {
        fields[which].value = json + start;
        fields[which].value_length = *i - start;
    }
    return 1;
}

int aoai_json_top_level_fields(const char *json, apr_size_t length,
                               aoai_json_field *fields, int count)
{
    apr_size_t i = 0;
    int depth = 1, expect_key = 1, k;

    for (k = 0; k < count; k++) {
        fields[k].value = NULL;
        fields[k].value_length = 0;
    }
    skip_space(json, length, &i);
    if (i >= length || json[i] != '{') {
        return 0;
    }
    for (i++; i < length; i++) {
        char c = json[i];

        if (c == '"' && depth == 1 && expect_key) {
            if (!read_pair(json, length, &i, fields, count)) {
                break;
            }
            expect_key = 0;
            i--;                /* the loop steps onto what ended it */
        }
        else if (c == '"') {
            if (!skip_string(json, length, &i)) {
                break;
            }
            i--;
        }
        else if (c == '{' || c == '[') {
            depth++;
        }
        else if ((c == '}' || c == ']') && --depth == 0) {
            return 1;
        }
        else if (c == ',' && depth == 1) {
            expect_key = 1;
        }
    }
    /* Cut, malformed, or a key twice: none of it is trusted. */
    for (k = 0; k < count; k++) {
        fields[k].value = NULL;
    }
    return 0;
}

int aoai_json_top_level(const char *json, apr_size_t length, const char *key,
                        const char **value, apr_size_t *value_length)
{
    aoai_json_field field;

    field.key = key;
    field.key_length = strlen(key);
    if (!aoai_json_top_level_fields(json, length, &field, 1)
        || !field.value) {
        return 0;
    }
    *value = field.value;
    *value_length = field.value_length;
    return 1;
}

const char *aoai_json_escape(apr_pool_t *pool, const char *in)
{
    apr_size_t extra = 0;
    const unsigned char *s;
    char *out, *o;

    for (s = (const unsigned char *)in; *s; s++) {
        extra += (*s == '"' || *s == '\\') ? 1 : (*s < 0x20) ? 5 : 0;
    }
    if (!extra) {
        return in;
    }
    o = out = apr_palloc(pool, strlen(in) + extra + 1);
    for (s = (const unsigned char *)in; *s; s++) {
        if (*s == '"' || *s == '\\') {
            *o++ = '\\';
            *o++ = (char)*s;
        }
        else if (*s < 0x20) {
            apr_snprintf(o, 7, "\\u%04x", *s);
            o += 6;
        }
        else {
            *o++ = (char)*s;
        }
    }
    *o = '\0';
    return out;
}

static apr_status_t release(void *json)
{
    json_decref(json);
    return APR_SUCCESS;
}

json_t *aoai_json_own(apr_pool_t *pool, json_t *json)
{
    if (json) {
        apr_pool_cleanup_register(pool, json, release,
                                  apr_pool_cleanup_null);
    }
    return json;
}

char *aoai_json_text(apr_pool_t *pool, const json_t *json, size_t flags)
{
    char *text = json ? json_dumps(json, flags) : NULL;
    char *copy;

    if (!text) {
        return NULL;
    }
    copy = apr_pstrdup(pool, text);
    free(text);
    return copy;
}
