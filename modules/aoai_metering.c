/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The answer's tokens, metered on its way to the client.  The answer is
 * never held back: each brigade goes on as it came, and the scanner
 * (aoai_usage.c) is given a copy of its bytes.  Only a 2xx JSON body or
 * SSE stream that is not compressed is read.
 */

#include "aoai_metering.h"

#include "apr_strings.h"
#include "http_protocol.h"

static aoai_usage_scan *usage_scan_for(request_rec *r)
{
    const char *type = r->content_type;
    const char *encoding = apr_table_get(r->headers_out, "Content-Encoding");

    if (!ap_is_HTTP_SUCCESS(r->status) || !type
        || (encoding && ap_cstr_casecmp(encoding, "identity"))) {
        return NULL;
    }
    if (!ap_cstr_casecmpn(type, "application/json", 16)) {
        return aoai_usage_scan_start(r->pool, 0);
    }
    if (!ap_cstr_casecmpn(type, "text/event-stream", 17)) {
        return aoai_usage_scan_start(r->pool, 1);
    }
    return NULL;
}

int aoai_metering_start(request_rec *r, aoai_call *call)
{
    call->usage = usage_scan_for(r);
    return call->usage != NULL;
}

void aoai_metering_feed(request_rec *r, aoai_call *call,
                        apr_bucket_brigade *bb)
{
    apr_bucket *b;

    if (!call->usage) {
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
        aoai_usage_scan_feed(r->pool, call->usage, data, length);
    }
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
        const char *value = apr_psprintf(r->pool, "%" APR_INT64_T_FMT,
                                         counts[i]);
        apr_table_setn(r->subprocess_env, names[i].env, value);
        apr_table_setn(r->notes, names[i].note, value);
    }
}

const aoai_usage *aoai_metering_finish(request_rec *r, aoai_call *call)
{
    if (!call->usage || !aoai_usage_scan_finish(call->usage)) {
        return NULL;
    }
    aoai_metering_log(r, &call->usage->usage);
    return &call->usage->usage;
}

const aoai_usage *aoai_metering_result(const aoai_call *call)
{
    return call->usage && call->usage->found ? &call->usage->usage : NULL;
}
