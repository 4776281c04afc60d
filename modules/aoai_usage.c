/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The tokens an answer used, read from the answer itself as it passes.
 *
 * A chat completion ends with {"usage":{"prompt_tokens":..,
 * "completion_tokens":..,"total_tokens":..}} (a response, with
 * input_tokens and output_tokens); a stream whose client asked for
 * stream_options.include_usage carries the same object in its last
 * "data:" event before [DONE], a Responses stream in the "response" of
 * its response.completed event.  A stream whose client did not ask has
 * no usage at all: there the completion is counted from the text of its
 * deltas (choices[].delta.content, refusal, tool-call arguments, a
 * completion's text, a Responses event's "delta"), a token per four
 * bytes of each delta and one at least, as Azure sends about a token a
 * chunk (docs/observability.md says why the gateway counts rather than
 * asking the member for usage).
 *
 * The answer is never held: the reader below is a state machine fed the
 * bytes as they go by, in pieces of any size, and keeps only where it is
 * (a few hundred bytes whatever the answer's size).  It tells apart only
 * the containers on the way to a usage or a delta, skips everything else
 * whole, crosses strings with memchr(), and reads the numbers of a usage
 * object itself.  Reading a 740-byte chat completion this way costs a
 * third of what the jansson reader before it did, a stream chunk about
 * 0.4 us (bench/usage.pl, bench/RESULTS.md).
 *
 * Every byte here comes from a member, so nothing is trusted: negative,
 * fractional, quoted or absurd figures, a usage twice or a field twice,
 * or a document that never closes make the usage unreadable rather than
 * wrong in the counters.
 *
 * Before the answer, a call's cost is estimated from its request, as
 * Azure estimates it at arrival: the prompt plus the completion asked
 * for (the request's top-level bounds, which the gateway's one walk over
 * the body finds: aoai_kept_body_field()).
 *
 * Only APR here, so a fuzzer can drive this file alone.
 */

#include "aoai_usage.h"

#include "apr_lib.h"
#include "apr_strings.h"

/* More tokens than any deployment's context window by far. */
#define AOAI_USAGE_TOKENS_MAX APR_INT64_C(1000000000)
/* A completion bound past this is no bound the estimate believes. */
#define AOAI_USAGE_ASKED_MAX APR_INT64_C(100000000)

/* Where the reader is in a document. */
enum { J_BEFORE, J_STRUCT, J_STRING, J_NUMBER, J_DONE };
/* What a string is to the reader. */
enum { S_SKIP, S_KEY, S_COUNT };
/* What an open container is; T_ARRAY is or-ed in.  Only the containers
 * on the way to a usage or a delta are told apart: the root, its usage
 * (or a response's), and choices[] -> a choice -> its delta ->
 * tool_calls[] -> a call -> its function.  Anything else is T_OTHER,
 * and skipped whole. */
enum {
    T_OTHER, T_ROOT, T_USAGE, T_RESPONSE, T_CHOICES, T_CHOICE, T_DELTA,
    T_TOOLS, T_TOOL, T_FUNCTION
};
#define T_ARRAY 0x80
#define T_KIND(tag) ((tag) & 0x7f)
/* The lines of a stream. */
enum { L_START, L_DATA, L_SKIP };

/* The keys that matter somewhere; K_NONE: no key (an array's value),
 * K_OTHER: one that does not. */
enum {
    K_NONE, K_OTHER, K_USAGE, K_CHOICES, K_RESPONSE, K_DELTA, K_TOOL_CALLS,
    K_FUNCTION, K_CONTENT, K_REFUSAL, K_REASONING, K_ARGUMENTS, K_TEXT,
    K_PROMPT, K_COMPLETION, K_TOTAL, K_INPUT, K_OUTPUT
};
#define IS_COUNT_KEY(k) ((k) >= K_PROMPT && (k) <= K_OUTPUT)

/* By length first: most keys an answer has are none of these, and are
 * told so by one comparison of lengths, or one of a few bytes. */
static int key_id(const char *t, apr_size_t length)
{
#define IS(name) (!memcmp(t, name, sizeof(name) - 1))
    switch (length) {
    case 4:  return IS("text") ? K_TEXT : K_OTHER;
    case 5:  return IS("usage") ? K_USAGE : IS("delta") ? K_DELTA : K_OTHER;
    case 7:  return IS("choices") ? K_CHOICES : IS("content") ? K_CONTENT
                    : IS("refusal") ? K_REFUSAL : K_OTHER;
    case 8:  return IS("response") ? K_RESPONSE
                    : IS("function") ? K_FUNCTION : K_OTHER;
    case 9:  return IS("arguments") ? K_ARGUMENTS : K_OTHER;
    case 10: return IS("tool_calls") ? K_TOOL_CALLS : K_OTHER;
    case 12: return IS("total_tokens") ? K_TOTAL
                    : IS("input_tokens") ? K_INPUT : K_OTHER;
    case 13: return IS("prompt_tokens") ? K_PROMPT
                    : IS("output_tokens") ? K_OUTPUT : K_OTHER;
    case 17: return IS("completion_tokens") ? K_COMPLETION
                    : IS("reasoning_content") ? K_REASONING : K_OTHER;
    default: return K_OTHER;
    }
#undef IS
}

static unsigned char current(const aoai_usage_doc *doc)
{
    return doc->depth <= AOAI_USAGE_DEPTH ? doc->tag[doc->depth] : T_OTHER;
}

/* Whether a string at this key in this container is completion text. */
static int is_text(int kind, int key)
{
    switch (kind) {
    case T_DELTA:    return key == K_CONTENT || key == K_REFUSAL
                            || key == K_REASONING;
    case T_FUNCTION: return key == K_ARGUMENTS;
    case T_CHOICE:   return key == K_TEXT;          /* completions */
    case T_ROOT:     return key == K_DELTA;         /* Responses events */
    default:         return 0;
    }
}

static void doc_reset(aoai_usage_doc *doc)
{
    doc->state = J_BEFORE;
    doc->depth = 0;
    doc->tag[0] = T_OTHER;
    doc->escape = 0;
    doc->key = K_NONE;
    doc->usages = 0;
    doc->has_usage = 0;
}

/* ------------------------------------------------------------------ */
/* Containers                                                           */

/* What the container opened by c under the current one, at the current
 * key, is. */
static unsigned char tag_for(const aoai_usage_scan *scan,
                             const aoai_usage_doc *doc, char c)
{
    int kind = T_KIND(current(doc)), key = doc->key, object = (c == '{');

    if (!doc->depth) {
        return object ? T_ROOT : T_OTHER;
    }
    switch (kind) {
    case T_ROOT:
        if (object && key == K_USAGE) {
            return T_USAGE;
        }
        if (object && key == K_RESPONSE) {
            return T_RESPONSE;
        }
        return !object && key == K_CHOICES && scan->streaming ? T_CHOICES
                                                              : T_OTHER;
    case T_RESPONSE: return object && key == K_USAGE ? T_USAGE : T_OTHER;
    case T_CHOICES:  return object ? T_CHOICE : T_OTHER;
    case T_CHOICE:   return object && key == K_DELTA ? T_DELTA : T_OTHER;
    case T_DELTA:    return !object && key == K_TOOL_CALLS ? T_TOOLS : T_OTHER;
    case T_TOOLS:    return object ? T_TOOL : T_OTHER;
    case T_TOOL:     return object && key == K_FUNCTION ? T_FUNCTION : T_OTHER;
    default:         return T_OTHER;
    }
}

/* 0 when the document is given up (nested past all reason). */
static int open_container(aoai_usage_scan *scan, aoai_usage_doc *doc,
                          char c)
{
    unsigned char tag = tag_for(scan, doc, c);

    if (T_KIND(current(doc)) == T_USAGE && IS_COUNT_KEY(doc->key)) {
        doc->bad = 1;                   /* a count that is an object */
    }
    if (tag == T_USAGE) {
        doc->usages++;
        memset(&doc->pending, 0, sizeof(doc->pending));
        doc->seen = 0;
        doc->bad = 0;
    }
    if (doc->depth > (1 << 20)) {
        doc->state = J_DONE;
        return 0;
    }
    doc->depth++;
    if (doc->depth <= AOAI_USAGE_DEPTH) {
        doc->tag[doc->depth] = tag | (c == '[' ? T_ARRAY : 0);
    }
    doc->expect_key = (c == '{');
    doc->key = K_NONE;
    return 1;
}

/* 0 when that closed the document. */
static int close_container(aoai_usage_scan *scan, aoai_usage_doc *doc)
{
    if (!doc->depth) {
        doc->state = J_DONE;            /* a stray bracket: not JSON */
        return 0;
    }
    if (current(doc) == T_USAGE) {
        doc->has_usage = !doc->bad && (doc->seen & (1u << K_TOTAL));
    }
    doc->depth--;
    doc->expect_key = 0;
    doc->key = K_NONE;
    if (doc->depth) {
        return 1;
    }
    doc->state = J_DONE;
    /* The root closed: a document with one readable usage has it. */
    if (doc->has_usage && doc->usages == 1) {
        scan->usage = doc->pending;
        scan->found = 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Strings                                                              */

/* From inside a string to just past its closing quote, or the end of the
 * piece (*closed says which); a piece that ends on an odd run of
 * backslashes leaves doc->escape for the next.  memchr() finds the next
 * quote a word at a time; one after an odd run of backslashes is
 * escaped, and the search goes on past it. */
/* Inlined: called for every string, its call cost as much as its work. */
static APR_INLINE apr_size_t string_span(aoai_usage_doc *doc,
                                         const char *p, apr_size_t n,
                                         int *closed)
{
    apr_size_t at = 0;

    for (;;) {
        const char *quote = at < n ? memchr(p + at, '"', n - at) : NULL;
        apr_size_t end = quote ? (apr_size_t)(quote - p) : n, back = end;

        while (back > at && p[back - 1] == '\\') {
            back--;
        }
        if (!quote) {
            doc->escape = (end - back) & 1;
            *closed = 0;
            return n;
        }
        if (((end - back) & 1) == 0) {
            *closed = 1;
            return end + 1;
        }
        at = end + 1;
    }
}

/* A string starts at the current place: what it is to the reader. */
static int string_kind(aoai_usage_doc *doc)
{
    unsigned char tag = current(doc);
    int kind = T_KIND(tag);

    if (kind != T_OTHER && !(tag & T_ARRAY) && doc->expect_key) {
        doc->key_length = 0;
        return S_KEY;
    }
    if (kind == T_USAGE && IS_COUNT_KEY(doc->key)) {
        doc->bad = 1;                   /* a count in quotes */
    }
    if (is_text(kind, doc->key)) {
        doc->string_bytes = 0;
        return S_COUNT;
    }
    return S_SKIP;
}

/* A key cut between two pieces is put together here. */
static void key_part(aoai_usage_doc *doc, const char *data,
                     apr_size_t length)
{
    if (doc->key_length > sizeof(doc->key_text)
        || length > sizeof(doc->key_text) - doc->key_length) {
        doc->key_length = sizeof(doc->key_text) + 1;
        return;
    }
    memcpy(doc->key_text + doc->key_length, data, length);
    doc->key_length += length;
}

static void string_end(aoai_usage_scan *scan, aoai_usage_doc *doc)
{
    doc->state = J_STRUCT;
    if (doc->string_kind == S_KEY) {
        doc->key = doc->key_length <= sizeof(doc->key_text)
                   ? key_id(doc->key_text, doc->key_length) : K_OTHER;
        doc->expect_key = 0;
        return;
    }
    if (doc->string_kind == S_COUNT && doc->string_bytes) {
        apr_size_t tokens = doc->string_bytes / 4;
        scan->counted += tokens > 1 ? (apr_int64_t)tokens : 1;
    }
    doc->key = K_NONE;
}

/* Inside a string: to its closing quote, or the end of the piece. */
static apr_size_t in_string(aoai_usage_scan *scan, aoai_usage_doc *doc,
                            const char *p, apr_size_t n)
{
    apr_size_t used = 1, text;
    int closed = 0;

    if (doc->escape) {
        doc->escape = 0;                /* the byte a backslash escapes */
    }
    else {
        used = string_span(doc, p, n, &closed);
    }
    text = used - closed;
    if (doc->string_kind == S_COUNT) {
        doc->string_bytes += text;
    }
    else if (doc->string_kind == S_KEY) {
        if (closed && !doc->key_length) {
            /* the whole key in this piece: no copy (an escaped key's raw
             * bytes are no known name's, which have no backslash) */
            doc->state = J_STRUCT;
            doc->key = key_id(p, text);
            doc->expect_key = 0;
            return used;
        }
        key_part(doc, p, text);
    }
    if (closed) {
        string_end(scan, doc);
    }
    return used;
}

/* Inside a container that does not matter, and all it holds: only where
 * it ends is wanted, so one tight loop runs to the next container that
 * matters (or the end of the piece), strings skipped whole. */
static apr_size_t skip_other(aoai_usage_doc *doc, const char *p,
                             apr_size_t n)
{
    apr_size_t i = 0;

    while (i < n) {
        char c = p[i++];
        int closed;

        if (c == '"') {
            i += string_span(doc, p + i, n - i, &closed);
            if (!closed) {
                doc->state = J_STRING;
                doc->string_kind = S_SKIP;
                return n;
            }
        }
        else if (c == '{' || c == '[') {
            if (doc->depth > (1 << 20)) {
                doc->state = J_DONE;
                return n;
            }
            if (++doc->depth <= AOAI_USAGE_DEPTH) {
                doc->tag[doc->depth] = T_OTHER | (c == '[' ? T_ARRAY : 0);
            }
        }
        else if (c == '}' || c == ']') {
            if (--doc->depth <= 0) {
                doc->depth = 0;
                doc->state = J_DONE;    /* an array or garbage at the root */
                return n;
            }
            if (T_KIND(current(doc)) != T_OTHER) {
                doc->expect_key = 0;
                doc->key = K_NONE;
                return i;
            }
        }
    }
    return n;
}

static void number_end(aoai_usage_doc *doc)
{
    int key = doc->number_key;
    unsigned int bit = 1u << key;

    doc->state = J_STRUCT;
    doc->key = K_NONE;
    if (doc->seen & bit) {
        doc->bad = 1;                   /* a field twice */
    }
    doc->seen |= bit;
    if (key == K_PROMPT
        || (key == K_INPUT && !(doc->seen & (1u << K_PROMPT)))) {
        doc->pending.prompt_tokens = doc->number;
    }
    else if (key == K_COMPLETION
             || (key == K_OUTPUT && !(doc->seen & (1u << K_COMPLETION)))) {
        doc->pending.completion_tokens = doc->number;
    }
    else if (key == K_TOTAL) {
        doc->pending.total_tokens = doc->number;
    }
}

/* The digits of a count; a sign, a fraction or an exponent spoil it. */
static apr_size_t in_number(aoai_usage_doc *doc, const char *p, apr_size_t n)
{
    apr_size_t i;

    for (i = 0; i < n; i++) {
        char c = p[i];

        if (c >= '0' && c <= '9') {
            doc->number = doc->number * 10 + (c - '0');
            if (doc->number > AOAI_USAGE_TOKENS_MAX) {
                doc->number = AOAI_USAGE_TOKENS_MAX + 1;
                doc->bad = 1;
            }
            continue;
        }
        if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
            doc->bad = 1;
            doc->state = J_STRUCT;
            doc->key = K_NONE;
            return i + 1;
        }
        number_end(doc);
        return i;
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* Between tokens                                                       */

/* A value that is neither string nor container starts with c: a count
 * of the usage or a request's bound is read, anything else at such a
 * key spoils the usage. */
static void scalar_starts(aoai_usage_doc *doc, char c)
{
    int kind = T_KIND(current(doc));
    int wanted = kind == T_USAGE && IS_COUNT_KEY(doc->key);

    if (!wanted) {
        return;
    }
    if (c >= '0' && c <= '9') {
        doc->state = J_NUMBER;
        doc->number = c - '0';
        doc->number_key = doc->key;
        return;
    }
    doc->bad |= (kind == T_USAGE);      /* negative, null, true... */
    doc->key = K_NONE;
}

static apr_size_t in_struct(aoai_usage_scan *scan, aoai_usage_doc *doc,
                            const char *p, apr_size_t n)
{
    apr_size_t i = 0;

    while (i < n) {
        char c;

        if (doc->depth && T_KIND(current(doc)) == T_OTHER) {
            return i + skip_other(doc, p + i, n - i);
        }
        c = p[i++];
        switch (c) {
        case ' ': case '\t': case '\n': case '\r': case ':':
            break;
        case '"':
            doc->string_kind = string_kind(doc);
            doc->state = J_STRING;
            i += in_string(scan, doc, p + i, n - i);
            if (doc->state != J_STRUCT) {
                return i;
            }
            break;
        case '{': case '[':
            if (!open_container(scan, doc, c)) {
                return n;
            }
            break;
        case '}': case ']':
            if (!close_container(scan, doc)) {
                return n;
            }
            break;
        case ',':
            doc->expect_key = !(current(doc) & T_ARRAY);
            doc->key = K_NONE;
            break;
        default:
            scalar_starts(doc, c);
            if (doc->state != J_STRUCT) {
                return i;
            }
        }
    }
    return n;
}

/* One document's bytes, in pieces of any size. */
static void doc_feed(aoai_usage_scan *scan, aoai_usage_doc *doc,
                     const char *p, apr_size_t n)
{
    while (n) {
        apr_size_t used;

        switch (doc->state) {
        case J_BEFORE:
            if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
                used = 1;
                break;
            }
            doc->state = (*p == '{' || *p == '[') ? J_STRUCT : J_DONE;
            continue;
        case J_STRUCT:
            used = in_struct(scan, doc, p, n);
            break;
        case J_STRING:
            used = in_string(scan, doc, p, n);
            break;
        case J_NUMBER:
            used = in_number(doc, p, n);
            break;
        default:
            return;
        }
        p += used;
        n -= used;
    }
}

/* ------------------------------------------------------------------ */
/* Streams: lines                                                       */

/* The start of a line, up to its first five bytes: "data:" or not. */
static apr_size_t line_start(aoai_usage_scan *scan, const char *p,
                             apr_size_t n)
{
    apr_size_t i;

    for (i = 0; i < n && scan->field_length < 5; i++) {
        if (p[i] == '\n') {
            scan->field_length = 0;     /* an empty or short line */
            return i + 1;
        }
        scan->field[scan->field_length++] = p[i];
    }
    if (scan->field_length == 5) {
        scan->line_state = memcmp(scan->field, "data:", 5) ? L_SKIP : L_DATA;
        scan->field_length = 0;
        doc_reset(&scan->doc);
    }
    return i;
}

static void stream_feed(aoai_usage_scan *scan, const char *p, apr_size_t n)
{
    while (n) {
        const char *newline;
        apr_size_t part;

        if (scan->line_state == L_START) {
            apr_size_t used = line_start(scan, p, n);
            p += used;
            n -= used;
            continue;
        }
        newline = memchr(p, '\n', n);
        part = newline ? (apr_size_t)(newline - p) : n;
        if (scan->line_state == L_DATA) {
            doc_feed(scan, &scan->doc, p, part);
        }
        if (!newline) {
            return;
        }
        scan->line_state = L_START;
        p += part + 1;
        n -= part + 1;
    }
}

/* ------------------------------------------------------------------ */
/* The interface                                                        */

static void scan_init(aoai_usage_scan *scan, int streaming)
{
    memset(scan, 0, sizeof(*scan));
    scan->streaming = streaming;
    scan->line_state = L_START;
    doc_reset(&scan->doc);
}

aoai_usage_scan *aoai_usage_scan_start(apr_pool_t *pool, int streaming)
{
    aoai_usage_scan *scan = apr_palloc(pool, sizeof(*scan));
    scan_init(scan, streaming);
    return scan;
}

void aoai_usage_scan_feed(apr_pool_t *pool, aoai_usage_scan *scan,
                          const char *data, apr_size_t length)
{
    (void)pool;
    if (scan->streaming) {
        stream_feed(scan, data, length);
    }
    else {
        doc_feed(scan, &scan->doc, data, length);
    }
}

int aoai_usage_scan_finish(aoai_usage_scan *scan)
{
    return scan->found;
}

int aoai_usage_from_json(const char *json, apr_size_t length,
                         aoai_usage *usage)
{
    aoai_usage_scan scan;

    scan_init(&scan, 0);
    doc_feed(&scan, &scan.doc, json, length);
    if (scan.found) {
        *usage = scan.usage;
    }
    return scan.found;
}

apr_int64_t aoai_usage_prompt_estimate(apr_off_t length)
{
    return (apr_int64_t)(length / 4) + 1;
}

apr_int64_t aoai_usage_bound(const char *value, apr_size_t length)
{
    apr_int64_t n = 0;
    apr_size_t i;

    for (i = 0; i < length && value[i] >= '0' && value[i] <= '9'; i++) {
        n = n * 10 + (value[i] - '0');
        if (n > AOAI_USAGE_ASKED_MAX) {
            return 0;
        }
    }
    return i && i == length && n >= 1 ? n : 0;
}

/* max_tokens wins over max_completion_tokens, which wins over a response's
 * max_output_tokens: the first that is a bound. */
apr_int64_t aoai_usage_asked(const char *const values[3],
                             const apr_size_t lengths[3])
{
    int k;

    for (k = 0; k < 3; k++) {
        apr_size_t length = lengths[k];
        apr_int64_t asked;

        while (values[k] && length && apr_isspace(values[k][length - 1])) {
            length--;
        }
        if (values[k] && (asked = aoai_usage_bound(values[k], length))) {
            return asked;
        }
    }
    return 0;
}
