/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The request body, kept for every member that may be asked: what
 * mod_request's KEEP_BODY / KEPT_BODY pair does for a subrequest, done for
 * the attempts of one call.
 *
 * It is read once, up to AOAIMaxBody, into the request's pool, before any
 * member is called (a body too large gets 413 then, not after a member
 * has started on it).  Each attempt replays it from the start through the
 * AOAI_KEPT_BODY input filter, with the same Content-Length whatever
 * framing the client used, so mod_proxy_http sends every member one
 * Content-Length request instead of spooling a chunked body again.
 */

#include "aoai_kept_body.h"

#include "apr_strings.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"

#define KEPT_BODY_FILTER "AOAI_KEPT_BODY"

static ap_filter_rec_t *kept_body_filter_handle;

static apr_status_t kept_body_filter(ap_filter_t *f, apr_bucket_brigade *bb,
                                     ap_input_mode_t mode,
                                     apr_read_type_e block,
                                     apr_off_t readbytes)
{
    aoai_kept_body *kept = f->ctx;
    apr_size_t length;

    (void)block;
    if (mode != AP_MODE_READBYTES && mode != AP_MODE_SPECULATIVE
        && mode != AP_MODE_EXHAUSTIVE) {
        return APR_ENOTIMPL;
    }
    length = kept->send_length - kept->offset;
    if (mode != AP_MODE_EXHAUSTIVE && readbytes >= 0
        && (apr_off_t)length > readbytes) {
        length = (apr_size_t)readbytes;
    }
    if (length) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_pool_create(
            kept->send + kept->offset, length, f->r->pool,
            f->c->bucket_alloc));
        if (mode != AP_MODE_SPECULATIVE) {
            kept->offset += length;
        }
    }
    if (kept->offset + (mode == AP_MODE_SPECULATIVE ? length : 0)
        >= kept->send_length) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(f->c->bucket_alloc));
    }
    return APR_SUCCESS;
}

/* What the client announced: 1 and *announced (-1 for a chunked body)
 * when a body comes, 0 when none does (ap_request_has_body()'s question,
 * with the Content-Length read once for the limit as well). */
static int announced_body(request_rec *r, apr_off_t *announced)
{
    const char *length = apr_table_get(r->headers_in, "Content-Length");

    if (!length) {
        *announced = -1;
        return r->kept_body
               || apr_table_get(r->headers_in, "Transfer-Encoding") != NULL;
    }
    if (!ap_parse_strict_length(announced, length)) {
        *announced = -1;        /* HTTP_IN refuses it as the body is read */
        return 1;
    }
    return *announced > 0 || r->kept_body;
}

/* Reads the whole body into collected; OK or the status the client earned. */
static int collect(request_rec *r, apr_off_t max_body,
                   apr_bucket_brigade *collected, const char **why)
{
    apr_bucket_brigade *bb = apr_brigade_create(r->pool,
                                                r->connection->bucket_alloc);
    apr_off_t total = 0;
    int seen_eos = 0;

    while (!seen_eos) {
        apr_status_t rv = ap_get_brigade(r->input_filters, bb,
                                         AP_MODE_READBYTES, APR_BLOCK_READ,
                                         HUGE_STRING_LEN);
        if (rv != APR_SUCCESS) {
            *why = "The request body could not be read.";
            return ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
        }
        while (!APR_BRIGADE_EMPTY(bb)) {
            apr_bucket *b = APR_BRIGADE_FIRST(bb);

            seen_eos |= APR_BUCKET_IS_EOS(b);
            if (APR_BUCKET_IS_METADATA(b)) {
                apr_bucket_delete(b);
                continue;
            }
            total += (apr_off_t)b->length;
            if (total > max_body) {
                *why = apr_psprintf(r->pool, "The request body exceeds this "
                                    "gateway's limit of %" APR_OFF_T_FMT
                                    " bytes.", max_body);
                return HTTP_REQUEST_ENTITY_TOO_LARGE;
            }
            apr_bucket_setaside(b, r->pool);
            APR_BUCKET_REMOVE(b);
            APR_BRIGADE_INSERT_TAIL(collected, b);
        }
    }
    return OK;
}

int aoai_kept_body_read(request_rec *r, apr_off_t max_body,
                        aoai_kept_body **out, const char **why)
{
    aoai_kept_body *kept = apr_pcalloc(r->pool, sizeof(*kept));
    apr_bucket_brigade *collected;
    apr_off_t announced;
    int rc;

    kept->data = kept->send = "";
    *out = kept;
    if (!announced_body(r, &announced)) {
        return OK;
    }
    if (announced > max_body) {
        /* Refused before a byte is read. */
        *why = apr_psprintf(r->pool, "The request body of %" APR_OFF_T_FMT
                            " bytes exceeds this gateway's limit of %"
                            APR_OFF_T_FMT " bytes.", announced, max_body);
        return HTTP_REQUEST_ENTITY_TOO_LARGE;
    }
    collected = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    if ((rc = collect(r, max_body, collected, why)) != OK) {
        return rc;
    }
    if (!APR_BRIGADE_EMPTY(collected)) {
        char *flat;
        apr_brigade_pflatten(collected, &flat, &kept->length, r->pool);
        kept->data = kept->send = flat;
        kept->send_length = kept->length;
    }
    apr_brigade_destroy(collected);
    if (announced != (apr_off_t)kept->length) {
        /* Chunked from the client: one Content-Length to every member. */
        apr_table_unset(r->headers_in, "Transfer-Encoding");
        apr_table_setn(r->headers_in, "Content-Length",
                       apr_off_t_toa(r->pool, (apr_off_t)kept->length));
    }
    return OK;
}

void aoai_kept_body_replay(request_rec *r, aoai_kept_body *kept)
{
    kept->offset = 0;
    if (kept->send_length != kept->length) {
        apr_table_setn(r->headers_in, "Content-Length",
                       apr_off_t_toa(r->pool, (apr_off_t)kept->send_length));
    }
    if (!kept->filter) {
        kept->filter = ap_add_input_filter_handle(kept_body_filter_handle,
                                                  kept, r, r->connection);
    }
}

void aoai_kept_body_done(aoai_kept_body *kept)
{
    if (kept->filter) {
        ap_remove_input_filter(kept->filter);
        kept->filter = NULL;
    }
}

json_t *aoai_kept_body_json(request_rec *r, aoai_kept_body *kept)
{
    if (!kept->parsed) {
        json_t *json = kept->length
                       ? json_loadb(kept->data, kept->length,
                                    JSON_REJECT_DUPLICATES, NULL)
                       : NULL;
        kept->parsed = 1;
        kept->json = json_is_object(json) ? json : NULL;
        aoai_json_own(r->pool, json);
    }
    return kept->json;
}

/* The whole body is written again: a member reads it whole anyway, and
 * only the calls whose body must change pay for it. */
void aoai_kept_body_changed(request_rec *r, aoai_kept_body *kept)
{
    char *text = aoai_json_text(r->pool, kept->json, JSON_COMPACT
                                                     | JSON_PRESERVE_ORDER);
    if (text) {
        kept->send = text;
        kept->send_length = strlen(text);
    }
}

/* Every field the gateway reads is found in one walk over the body, done
 * the first time one is asked for.  The walk costs about as much as one
 * memmem() for a word over the same bytes (1.4k against 1.9k instructions
 * for bench/chat.lua's 1 KB body, measured), so a search for each word
 * first would cost more than it saves. */
int aoai_kept_body_field(aoai_kept_body *kept, aoai_body_field field,
                         const char **value, apr_size_t *length)
{
    static const char *const keys[AOAI_BODY_FIELDS] = {
        "stream", "model", "max_tokens", "max_completion_tokens",
        "max_output_tokens"
    };

    if (!kept->walked) {
        int k;
        for (k = 0; k < AOAI_BODY_FIELDS; k++) {
            kept->fields[k].key = keys[k];
            kept->fields[k].key_length = strlen(keys[k]);
        }
        aoai_json_top_level_fields(kept->data, kept->length, kept->fields,
                                   AOAI_BODY_FIELDS);
        kept->walked = 1;
    }
    if (!kept->fields[field].value) {
        return 0;
    }
    *value = kept->fields[field].value;
    *length = kept->fields[field].value_length;
    return 1;
}

int aoai_kept_body_streamed(aoai_kept_body *kept)
{
    const char *stream;
    apr_size_t length;

    return aoai_kept_body_field(kept, AOAI_BODY_STREAM, &stream, &length)
           && length >= 4 && !memcmp(stream, "true", 4);
}

void aoai_kept_body_register_hooks(apr_pool_t *p)
{
    (void)p;
    kept_body_filter_handle =
        ap_register_input_filter(KEPT_BODY_FILTER, kept_body_filter, NULL,
                                 AP_FTYPE_RESOURCE);
}
