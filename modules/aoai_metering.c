/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The answer's tokens, metered on its way to the client.  The answer is
 * never held back: each brigade goes on as it came, and the reader
 * (aoai_usage.c) is given its bytes, inflated first (aoai_inflate.c) when
 * the member compressed them for a client that accepts gzip.  The client
 * gets the bytes the member sent, in the encoding it asked for.
 *
 * A 2xx JSON body or SSE stream is read.  An inference call (POST
 * .../chat/completions, completions, embeddings, responses) is expected
 * to have a figure: when its answer is in an encoding nothing here can
 * undo, or not JSON or SSE, or JSON without a usage, it is "unread", and
 * the key's quota charges it the stated amount (aoai_key_quota.c).  A
 * stream without usage has its completion counted from its deltas and
 * its prompt estimated from the request's length, as the up-front
 * estimate takes it.
 */

#include "aoai_metering.h"
#include "aoai_inflate.h"

#include "apr_strings.h"
#include "http_log.h"
#include "http_protocol.h"

APLOG_USE_MODULE(aoai_balancer);

static int ends_with(const char *s, apr_size_t length, const char *tail,
                     apr_size_t tail_length)
{
    return length >= tail_length
           && !memcmp(s + length - tail_length, tail, tail_length);
}

/* The calls whose answers carry usage: those the models are run for. */
static int is_inference(request_rec *r)
{
    apr_size_t n;

    if (r->method_number != M_POST || !r->uri) {
        return 0;
    }
    n = strlen(r->uri);
    return ends_with(r->uri, n, "/completions", 12)
           || ends_with(r->uri, n, "/embeddings", 11)
           || ends_with(r->uri, n, "/responses", 10);
}

static void feed_inflated(void *scan, const char *data, apr_size_t length)
{
    aoai_usage_scan_feed(NULL, scan, data, length);
}

int aoai_metering_start(request_rec *r, aoai_call *call)
{
    const char *type = r->content_type, *encoding;
    int json, streaming, expected;
    aoai_usage_scan *scan;

    call->usage = NULL;
    if (!ap_is_HTTP_SUCCESS(r->status)) {
        return 0;
    }
    json = type && !ap_cstr_casecmpn(type, "application/json", 16);
    streaming = type && !ap_cstr_casecmpn(type, "text/event-stream", 17);
    expected = is_inference(r);
    if (!json && !streaming && !expected) {
        return 0;
    }
    scan = aoai_usage_scan_start(r->pool, streaming);
    scan->expected = expected;
    scan->unreadable = !json && !streaming;
    encoding = apr_table_get(r->headers_out, "Content-Encoding");
    if (!scan->unreadable && encoding
        && ap_cstr_casecmp(encoding, "identity")) {
        scan->decoder = aoai_inflate_start(r->pool, encoding, feed_inflated,
                                           scan);
        scan->unreadable = !scan->decoder;
    }
    call->usage = scan;
    return !scan->unreadable;
}

void aoai_metering_feed(request_rec *r, aoai_call *call,
                        apr_bucket_brigade *bb)
{
    aoai_usage_scan *scan = call->usage;
    apr_bucket *b;

    if (!scan || scan->unreadable) {
        return;
    }
    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb);
         b = APR_BUCKET_NEXT(b)) {
        const char *data;
        apr_size_t length;

        if (APR_BUCKET_IS_METADATA(b)) {
            continue;
        }
        if (apr_bucket_read(b, &data, &length, APR_BLOCK_READ)
            != APR_SUCCESS) {
            return;
        }
        if (!scan->decoder) {
            aoai_usage_scan_feed(r->pool, scan, data, length);
        }
        else if (!aoai_inflate_feed(scan->decoder, data, length)) {
            scan->unreadable = 1;       /* not the gzip it says it is */
            return;
        }
    }
}

/* A number for the log, without apr_psprintf's formatter. */
static const char *count_text(apr_pool_t *pool, apr_int64_t n)
{
    char digits[24], *at = digits + sizeof(digits);

    *--at = '\0';
    do {
        *--at = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0 && at > digits);
    return apr_pstrmemdup(pool, at, (apr_size_t)(digits + sizeof(digits)
                                                 - at - 1));
}

void aoai_metering_log(request_rec *r, const aoai_usage *usage)
{
    static const struct {
        const char *env;
        const char *note;
    } names[] = {
        { "AOAI_PROMPT_TOKENS", "aoai-prompt-tokens" },
        { "AOAI_COMPLETION_TOKENS", "aoai-completion-tokens" },
        { "AOAI_TOTAL_TOKENS", "aoai-total-tokens" },
    };
    apr_int64_t counts[3];
    apr_size_t i;

    counts[0] = usage->prompt_tokens;
    counts[1] = usage->completion_tokens;
    counts[2] = usage->total_tokens;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *value = count_text(r->pool, counts[i]);
        /* Set once a call, so added without a search of the tables. */
        apr_table_addn(r->subprocess_env, names[i].env, value);
        apr_table_addn(r->notes, names[i].note, value);
    }
}

/* A stream without usage: the prompt as the estimate takes it (the body
 * the members were sent), the completion counted. */
static void counted_figure(request_rec *r, aoai_usage_scan *scan)
{
    const char *length = apr_table_get(r->headers_in, "Content-Length");
    apr_off_t bytes = 0;

    if (!length || apr_strtoff(&bytes, length, NULL, 10) != APR_SUCCESS
        || bytes < 0) {
        bytes = 0;
    }
    scan->usage.prompt_tokens = aoai_usage_prompt_estimate(bytes);
    scan->usage.completion_tokens = scan->counted;
    scan->usage.total_tokens = scan->usage.prompt_tokens + scan->counted;
    scan->counted_figure = 1;
}

static void note_source(request_rec *r, const char *source)
{
    apr_table_addn(r->subprocess_env, "AOAI_USAGE", source);
    apr_table_addn(r->notes, "aoai-usage", source);
}

const aoai_usage *aoai_metering_finish(request_rec *r, aoai_call *call)
{
    aoai_usage_scan *scan = call->usage;

    if (!scan) {
        return NULL;
    }
    if (!scan->unreadable && !aoai_usage_scan_finish(scan)
        && scan->streaming) {
        counted_figure(r, scan);
    }
    if (!aoai_metering_result(call)) {
        if (scan->expected) {
            const char *encoding = apr_table_get(r->headers_out,
                                                 "Content-Encoding");
            note_source(r, "unread");
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(200)
                          "no token usage could be read from the answer "
                          "(%s%s%s): a key quota charges the stated amount",
                          r->content_type ? r->content_type : "no type",
                          encoding ? ", Content-Encoding " : "",
                          encoding ? encoding : "");
        }
        return NULL;
    }
    note_source(r, scan->found ? "answer" : "counted");
    aoai_metering_log(r, &scan->usage);
    return &scan->usage;
}

const aoai_usage *aoai_metering_result(const aoai_call *call)
{
    const aoai_usage_scan *scan = call->usage;

    return scan && (scan->found || (scan->counted_figure && !scan->unreadable))
           ? &scan->usage : NULL;
}
