/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Same-request failover for balancers that use lbmethod=aoai.
 *
 * Stock proxy_handler() moves to another member only when the scheme
 * handler fails before any answer; a member that answers 429 has answered,
 * and its 429 goes to the client.  For a farm of Azure OpenAI deployments
 * that is exactly wrong: a 429 means "this one is full, ask the next".
 *
 * So for those balancers this handler runs first and owns the loop that
 * proxy_handler() would have run:
 *
 *   1. the request body is read once, up to AOAIMaxBody, into r->pool;
 *   2. each attempt lets mod_proxy_balancer pick a member (through the aoai
 *      lbmethod, which skips throttled and already-tried members), replays
 *      the body to it through the AOAI_KEPT_BODY input filter, and runs the
 *      scheme handler (mod_proxy_http) as proxy_handler() would;
 *   3. the AOAI_FAILOVER output filter sits first in the chain and looks at
 *      the first brigade of each answer: r->status and the member's headers
 *      are set and nothing has gone to the client.  A status named in
 *      AOAIFailoverOn is recorded (429: its window goes into shared memory)
 *      and swallowed, and the loop tries the next member.  Anything else
 *      goes to the client and ends the loop: nothing is retried once a
 *      byte has left, so a stream is never sent twice.
 *
 * When no member is left the client gets Azure's error shape: 429 with
 * Retry-After and retry-after-ms of the soonest window end, or 503.  Never
 * a 500 because a member was busy.
 *
 * ProxyErrorOverride would also keep a 429 from the client, but it belongs
 * to the admin (ErrorDocument pages) and discards the headers we need; the
 * filter leaves it alone.
 */

#include "aoai_balancer.h"

#include "apr_strings.h"
#include "apr_lib.h"

#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"


APLOG_USE_MODULE(aoai_balancer);

#define KEPT_BODY_FILTER  "AOAI_KEPT_BODY"
#define FAILOVER_FILTER   "AOAI_FAILOVER"
#define FIRST_BYTE_FILTER "AOAI_FIRST_BYTE"
#define MEMBER_OUT_FILTER "AOAI_MEMBER_OUT"

static ap_filter_rec_t *kept_body_filter_handle;
static ap_filter_rec_t *failover_filter_handle;
static ap_filter_rec_t *first_byte_filter_handle;
static ap_filter_rec_t *member_out_filter_handle;

/* The attempt this thread is running, for the first-byte filter on the
 * member's connection: mod_proxy gives a backend connection no way back
 * to the client's request, and an attempt runs start to end in the thread
 * that runs the handler. */
static _Thread_local aoai_request_state *attempt_in_this_thread;

typedef struct {
    const char *data;
    apr_size_t length;
    apr_size_t offset;
} aoai_kept_body;

/* The response as it stood before the first attempt, put back before each
 * further one so that nothing of a swallowed answer leaks into the next. */
typedef struct {
    apr_table_t *headers_out;
    apr_table_t *err_headers_out;
    const char *content_type;
    const char *content_encoding;
    apr_array_header_t *content_languages;
} aoai_saved_response;

aoai_request_state *aoai_request_state_get(request_rec *r)
{
    return ap_get_module_config(r->request_config, &aoai_balancer_module);
}

static int aoai_failover_on_status(const aoai_dir_conf *conf, int status)
{
    int bit;
    if (status < 400 || status > 599) {
        return 0;
    }
    bit = status - 400;
    return (conf->failover_status[bit / 32] >> (bit % 32)) & 1;
}

/* ------------------------------------------------------------------ */
/* Errors in Azure OpenAI's shape: {"error":{"code":..,"message":..}}  */

static const char *json_escape(apr_pool_t *p, const char *in)
{
    apr_size_t extra = 0;
    const unsigned char *s;
    char *out, *o;

    for (s = (const unsigned char *)in; *s; s++) {
        if (*s == '"' || *s == '\\') {
            extra += 1;
        }
        else if (*s < 0x20) {
            extra += 5;
        }
    }
    if (!extra) {
        return in;
    }
    o = out = apr_palloc(p, strlen(in) + extra + 1);
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

/* Writes the whole error response; the handler then returns OK so that
 * ErrorDocument does not replace a body that SDKs parse. */
static int send_json(request_rec *r, int status, const char *body)
{
    r->status = status;
    r->status_line = NULL;
    ap_set_content_type(r, "application/json");
    ap_set_content_length(r, strlen(body));
    if (!r->header_only) {
        ap_rwrite(body, (int)strlen(body), r);
    }
    return OK;
}

/* Azure OpenAI's error shape, which the SDKs parse. */
static int send_json_error(request_rec *r, int status, const char *code,
                           const char *message)
{
    return send_json(r, status, apr_psprintf(r->pool,
                     "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
                     json_escape(r->pool, code), json_escape(r->pool, message)));
}

/* API Management's shape, for what the gateway itself refuses at the door. */
static int send_apim_error(request_rec *r, int status, const char *message)
{
    return send_json(r, status, apr_psprintf(r->pool,
                     "{\"statusCode\": %d, \"message\": \"%s\"}\n",
                     status, json_escape(r->pool, message)));
}

/* ------------------------------------------------------------------ */
/* The kept body, replayed to each member                              */

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
    length = kept->length - kept->offset;
    if (mode != AP_MODE_EXHAUSTIVE && readbytes >= 0
        && (apr_off_t)length > readbytes) {
        length = (apr_size_t)readbytes;
    }
    if (length) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_pool_create(
            kept->data + kept->offset, length, f->r->pool,
            f->c->bucket_alloc));
        if (mode != AP_MODE_SPECULATIVE) {
            kept->offset += length;
        }
    }
    if (kept->offset + (mode == AP_MODE_SPECULATIVE ? length : 0)
        >= kept->length) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(f->c->bucket_alloc));
    }
    return APR_SUCCESS;
}

/* Whether the call asks for a stream: "stream": true at the top level of
 * its JSON body.  Most calls do not mention "stream" at all, and looking
 * for the word is far cheaper than walking the body's structure. */
static int is_streamed(const aoai_kept_body *kept)
{
    const char *stream;
    apr_size_t length;

    if (!kept->length
        || !memmem(kept->data, kept->length, "\"stream\"", 8)) {
        return 0;
    }
    return aoai_json_top_level(kept->data, kept->length, "stream", &stream,
                               &length)
           && length >= 4 && !memcmp(stream, "true", 4);
}

/* Reads the client's body once.  Returns OK, or an HTTP status the client
 * has earned (413, 400, 408...) for which the caller sends a JSON error. */
static int keep_request_body(request_rec *r, const aoai_dir_conf *conf,
                             aoai_kept_body *kept, const char **why)
{
    apr_bucket_brigade *bb, *collected;
    const char *cl_header;
    apr_off_t total = 0;
    int seen_eos = 0;

    kept->data = "";
    kept->length = kept->offset = 0;

    if (!ap_request_has_body(r)) {
        return OK;
    }
    cl_header = apr_table_get(r->headers_in, "Content-Length");
    if (cl_header) {
        apr_off_t announced;
        if (ap_parse_strict_length(&announced, cl_header)
            && announced > conf->max_body) {
            *why = apr_psprintf(r->pool, "The request body of %"
                                APR_OFF_T_FMT " bytes exceeds this "
                                "gateway's limit of %" APR_OFF_T_FMT
                                " bytes.", announced, conf->max_body);
            return HTTP_REQUEST_ENTITY_TOO_LARGE;
        }
    }

    bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    collected = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    while (!seen_eos) {
        apr_bucket *b;
        apr_status_t rv = ap_get_brigade(r->input_filters, bb,
                                         AP_MODE_READBYTES, APR_BLOCK_READ,
                                         HUGE_STRING_LEN);
        if (rv != APR_SUCCESS) {
            *why = "The request body could not be read.";
            return ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
        }
        while (!APR_BRIGADE_EMPTY(bb)) {
            b = APR_BRIGADE_FIRST(bb);
            if (APR_BUCKET_IS_EOS(b)) {
                seen_eos = 1;
                apr_bucket_delete(b);
                continue;
            }
            if (APR_BUCKET_IS_METADATA(b)) {
                apr_bucket_delete(b);
                continue;
            }
            total += (apr_off_t)b->length;
            if (total > conf->max_body) {
                *why = apr_psprintf(r->pool, "The request body exceeds this "
                                    "gateway's limit of %" APR_OFF_T_FMT
                                    " bytes.", conf->max_body);
                return HTTP_REQUEST_ENTITY_TOO_LARGE;
            }
            apr_bucket_setaside(b, r->pool);
            APR_BUCKET_REMOVE(b);
            APR_BRIGADE_INSERT_TAIL(collected, b);
        }
    }
    if (total) {
        char *flat;
        apr_size_t length;
        apr_brigade_pflatten(collected, &flat, &length, r->pool);
        kept->data = flat;
        kept->length = length;
    }
    apr_brigade_destroy(collected);

    /* Every member gets the same bytes with the same framing, whatever
     * framing the client used: mod_proxy_http then sends one
     * Content-Length request instead of spooling a chunked body again. */
    apr_table_unset(r->headers_in, "Transfer-Encoding");
    apr_table_setn(r->headers_in, "Content-Length",
                   apr_off_t_toa(r->pool, (apr_off_t)kept->length));
    return OK;
}

/* ------------------------------------------------------------------ */
/* The first byte of an answer, on the member's connection             */

/* A member that accepted the call but says nothing is as good as gone,
 * and a streamed call's first byte is normally there within a second or
 * two; waiting the member's whole timeout (often minutes, for long
 * non-streamed answers) before failing over helps nobody.  So while an
 * attempt waits for its member's first byte, the reads on the member's
 * connection use the shorter first-byte timeout; once a byte has come, the
 * member's own timeout governs every read, so a long stream is never cut.
 * The read that times out is mod_proxy_http's status-line read: it reports
 * a timeout, and the loop fails over as for any timeout. */
static apr_status_t first_byte_filter(ap_filter_t *f, apr_bucket_brigade *bb,
                                      ap_input_mode_t mode,
                                      apr_read_type_e block,
                                      apr_off_t readbytes)
{
    aoai_request_state *state = attempt_in_this_thread;
    apr_interval_time_t member_timeout;
    apr_socket_t *sock;
    apr_status_t rv;

    if (!state || !state->in_attempt || state->answered) {
        return ap_get_brigade(f->next, bb, mode, block, readbytes);
    }
    if (!state->awaiting_first_byte || block != APR_BLOCK_READ
        || !(sock = ap_get_conn_socket(f->c))
        || apr_socket_timeout_get(sock, &member_timeout) != APR_SUCCESS
        || (member_timeout >= 0
            && member_timeout <= state->first_byte_timeout)) {
        rv = ap_get_brigade(f->next, bb, mode, block, readbytes);
        state->answered = (rv == APR_SUCCESS && !APR_BRIGADE_EMPTY(bb));
        return rv;
    }
    apr_socket_timeout_set(sock, state->first_byte_timeout);
    rv = ap_get_brigade(f->next, bb, mode, block, readbytes);
    apr_socket_timeout_set(sock, member_timeout);
    if (rv == APR_SUCCESS && !APR_BRIGADE_EMPTY(bb)) {
        state->answered = 1;
    }
    else if (APR_STATUS_IS_TIMEUP(rv)) {
        ap_log_cerror(APLOG_MARK, APLOG_INFO, rv, f->c, AOAI_LOGNO(034)
                      "%s: member %s sent no answer within the first-byte "
                      "timeout of %" APR_TIME_T_FMT " ms",
                      state->balancer->s->name, state->worker->s->name_ex,
                      apr_time_as_msec(state->first_byte_timeout));
    }
    return rv;
}

static int has_data(apr_bucket_brigade *bb)
{
    apr_bucket *b;
    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb);
         b = APR_BUCKET_NEXT(b)) {
        if (!APR_BUCKET_IS_METADATA(b) && b->length != 0) {
            return 1;
        }
    }
    return 0;
}

/* The request on its way to the member.  Its first write is also where
 * mod_ssl runs the TLS handshake, under the socket's timeout: a member
 * that accepts TCP and never finishes the handshake would hold the call
 * for the member's whole timeout (minutes) before the loop could try the
 * next one.  So until the member answers, writes run under the first-byte
 * timeout, streamed call or not (a handshake takes milliseconds whatever
 * the call).  And a request whose bytes went out is one the member
 * received: only that is counted on it. */
static apr_status_t member_out_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    aoai_request_state *state = attempt_in_this_thread;
    apr_interval_time_t member_timeout = -1;
    apr_socket_t *sock = NULL;
    apr_status_t rv;
    int data;

    if (!state || !state->in_attempt) {
        return ap_pass_brigade(f->next, bb);
    }
    data = has_data(bb);
    if (state->handshake_timeout > 0 && !state->answered
        && (sock = ap_get_conn_socket(f->c))
        && apr_socket_timeout_get(sock, &member_timeout) == APR_SUCCESS
        && (member_timeout < 0 || member_timeout > state->handshake_timeout)) {
        apr_socket_timeout_set(sock, state->handshake_timeout);
    }
    else {
        sock = NULL;
    }
    rv = ap_pass_brigade(f->next, bb);
    if (sock) {
        apr_socket_timeout_set(sock, member_timeout);
    }
    if (rv == APR_SUCCESS && data && !state->sent) {
        state->sent = 1;
        aoai_member_count(aoai_throttle_slot(state->balancer, state->worker),
                          AOAI_COUNT_REQUESTS, 1);
    }
    return rv;
}

/* Every connection mod_proxy opens to a member gets the filters; they stay
 * out of the way unless an aoai attempt is running on it. */
static int add_member_filters(conn_rec *c, void *csd)
{
    (void)csd;
    if (c->outgoing) {
        ap_add_input_filter_handle(first_byte_filter_handle, NULL, NULL, c);
        ap_add_output_filter_handle(member_out_filter_handle, NULL, NULL, c);
    }
    return OK;
}

/* ------------------------------------------------------------------ */
/* The output filter that decides, at an answer's first brigade         */

static const char *member_label(proxy_worker *worker)
{
    return *worker->s->route ? worker->s->route : worker->s->name_ex;
}

static void record_throttle(request_rec *r, aoai_request_state *state)
{
    const aoai_dir_conf *conf = state->conf;
    aoai_ratelimit_headers headers;
    apr_interval_time_t window;
    const char *bad_header;
    aoai_window_source source;
    aoai_member_slot *slot = aoai_throttle_slot(state->balancer,
                                                state->worker);
    apr_time_t now = apr_time_now();

    headers.retry_after_ms = apr_table_get(r->headers_out, "retry-after-ms");
    headers.retry_after = apr_table_get(r->headers_out, "Retry-After");
    headers.reset_requests = apr_table_get(r->headers_out,
                                           "x-ratelimit-reset-requests");
    headers.reset_tokens = apr_table_get(r->headers_out,
                                         "x-ratelimit-reset-tokens");

    source = aoai_window_from_headers(&headers, now, &window, &bad_header);
    if (source != AOAI_WINDOW_FOUND && r->status != HTTP_TOO_MANY_REQUESTS) {
        /* A 5xx without a window is a failed attempt, not a full member. */
        return;
    }
    if (aoai_throttle_note_garbage(slot, bad_header != NULL)) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, AOAI_LOGNO(020)
                      "%s: member %s sent an unusable %s header; using %s "
                      "(logged once until it sends a usable one)",
                      state->balancer->s->name, member_label(state->worker),
                      bad_header, source == AOAI_WINDOW_FOUND
                          ? "the next rate-limit header"
                          : "AOAIThrottleDefault");
    }
    if (source != AOAI_WINDOW_FOUND) {
        window = conf->throttle_default;
    }
    if (window > conf->throttle_max) {
        window = conf->throttle_max;
    }
    /* The window says when the member is back; its remaining figures
     * (0 on a 429) must not keep it away for longer. */
    aoai_headroom_forget(slot);
    if (aoai_throttle_raise(slot, now + window)) {
        /* Only a window that moved is news to the other gateways. */
        aoai_shared_cache_publish(r, state->balancer, state->worker,
                                  now + window);
    }
    if (r->status == HTTP_TOO_MANY_REQUESTS) {
        aoai_member_note_window(slot, now, window);
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(021)
                  "%s: member %s answered %d; throttled for %" APR_TIME_T_FMT
                  " ms", state->balancer->s->name,
                  member_label(state->worker), r->status,
                  apr_time_as_msec(window));
}

typedef enum {
    AOAI_BRIGADE_EMPTY,     /* only flushes: nothing of the answer yet */
    AOAI_BRIGADE_BROKE,     /* an error before any byte of the answer */
    AOAI_BRIGADE_CONTENT    /* a byte of the answer, or its end */
} aoai_brigade_verdict;

static aoai_brigade_verdict brigade_verdict(apr_bucket_brigade *bb)
{
    apr_bucket *b;
    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb);
         b = APR_BUCKET_NEXT(b)) {
        if (AP_BUCKET_IS_ERROR(b)) {
            return AOAI_BRIGADE_BROKE;
        }
        if (APR_BUCKET_IS_EOS(b)
            || (!APR_BUCKET_IS_METADATA(b) && b->length != 0)) {
            return AOAI_BRIGADE_CONTENT;
        }
    }
    return AOAI_BRIGADE_EMPTY;
}

/* Answers whose usage can be read: a 2xx JSON body or SSE stream, not
 * compressed (the member compresses only when the client asked). */
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

/* A copy of the answer's bytes for the usage scanner; the brigade itself
 * goes on to the client untouched. */
static void read_usage(request_rec *r, aoai_usage_scan *scan,
                       apr_bucket_brigade *bb)
{
    apr_bucket *b;

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
        aoai_usage_scan_feed(r->pool, scan, data, length);
    }
}

/* A failed answer that no other member can improve on goes to the client
 * as the member gave it: with every member answering 404
 * DeploymentNotFound (when AOAIFailoverOn lists 404), the client reads
 * that, not a summary.  A 429 or 5xx is still summed up by the gateway,
 * whose answer says when the soonest member is back. */
static int is_last_word(request_rec *r, aoai_request_state *state)
{
    return r->status != HTTP_TOO_MANY_REQUESTS && r->status < 500
           && !aoai_any_candidate(state, apr_time_now());
}

static apr_status_t failover_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    request_rec *r = f->r;
    aoai_request_state *state = aoai_request_state_get(r);

    if (state && state->passed && state->usage) {
        read_usage(r, state->usage, bb);
        return ap_pass_brigade(f->next, bb);
    }
    if (!state || !state->in_attempt || state->passed) {
        ap_remove_output_filter(f);
        return ap_pass_brigade(f->next, bb);
    }
    if (!state->answered_status && !state->backend_broke) {
        aoai_brigade_verdict verdict = brigade_verdict(bb);

        if (verdict == AOAI_BRIGADE_BROKE) {
            /* The member went away before the first byte of its answer:
             * before a status line (mod_proxy_http would drop the client's
             * connection) or right after the headers.  Nothing reached the
             * client, so the next member can still answer. */
            state->backend_broke = 1;
        }
        else if (aoai_failover_on_status(state->conf, r->status)
                 && !is_last_word(r, state)) {
            state->answered_status = r->status;
            record_throttle(r, state);
        }
        else if (verdict == AOAI_BRIGADE_EMPTY) {
            /* mod_proxy_http flushes the headers when the body is not in
             * yet; hold them until a byte proves the member is answering. */
            apr_brigade_cleanup(bb);
            return APR_SUCCESS;
        }
        else {
            state->passed = 1;
            aoai_headroom_note(r, aoai_throttle_slot(state->balancer,
                                                     state->worker),
                               state->conf, apr_time_now());
            if (state->quota) {
                /* The client's allowance is its key's, not the member's. */
                apr_table_setn(r->headers_out, "x-ratelimit-remaining-tokens",
                               apr_psprintf(r->pool, "%" APR_INT64_T_FMT,
                                            state->quota_remaining));
            }
            if (state->conf->backend_header) {
                apr_table_setn(r->headers_out, state->conf->backend_header,
                               member_label(state->worker));
            }
            state->usage = usage_scan_for(r);
            if (!state->usage) {
                ap_remove_output_filter(f);
                return ap_pass_brigade(f->next, bb);
            }
            read_usage(r, state->usage, bb);
            return ap_pass_brigade(f->next, bb);
        }
    }
    /* The rest of a failed answer goes nowhere. */
    apr_brigade_cleanup(bb);
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* The handler                                                          */

static void save_response(request_rec *r, aoai_saved_response *saved)
{
    saved->headers_out = apr_table_copy(r->pool, r->headers_out);
    saved->err_headers_out = apr_table_copy(r->pool, r->err_headers_out);
    saved->content_type = r->content_type;
    saved->content_encoding = r->content_encoding;
    saved->content_languages = r->content_languages;
}

static void restore_response(request_rec *r, const aoai_saved_response *saved)
{
    r->status = HTTP_OK;
    r->status_line = NULL;
    r->headers_out = apr_table_copy(r->pool, saved->headers_out);
    r->err_headers_out = apr_table_copy(r->pool, saved->err_headers_out);
    r->content_type = saved->content_type;
    r->content_encoding = saved->content_encoding;
    r->content_languages = saved->content_languages;
    r->clength = 0;
    /* ap_pass_brigade() marks the request finished when the swallowed
     * answer's EOS goes by, and mod_proxy_http counts its body as sent;
     * neither reached the client, so the next answer must not be cut. */
    r->eos_sent = 0;
    r->sent_bodyct = 0;
    r->bytes_sent = 0;
    apr_table_unset(r->notes, "proxy_timedout");
    apr_table_unset(r->notes, "error-notes");
    apr_table_unset(r->notes, "verbose-error-to");
}

/* As proxy_handler() does it: the balancer's post_request hook sees the
 * status of the attempt, and keeps a status it chose to set itself. */
static void post_request_as(request_rec *r, proxy_worker *worker,
                            proxy_balancer *balancer,
                            proxy_server_conf *proxy_conf, int status)
{
    int status_now = r->status;

    r->status = status;
    ap_proxy_post_request(worker, balancer, r, proxy_conf);
    if (r->status == status) {
        r->status = status_now;
    }
}

/* A member whose TLS handshake fails (certificate for another name,
 * expired, unknown CA) will fail the same way on every call until someone
 * fixes it.  mod_proxy puts a member in error when it refuses the TCP
 * connection, but not when the handshake after it fails, so every call
 * would try it again and log the failure again.  Put it in error the way
 * mod_proxy would: it is then skipped until its retry= interval is up, and
 * this (and mod_ssl's reason, at LogLevel ssl:info) is logged once per
 * interval.  mod_proxy tells of the handshake in "error-notes". */
static void note_tls_failure(request_rec *r, proxy_balancer *balancer,
                             proxy_worker *worker)
{
    const char *notes = apr_table_get(r->notes, "error-notes");

    if (!notes || !strstr(notes, "Error during SSL Handshake")
        || (worker->s->status & PROXY_WORKER_IGNORE_ERRORS)) {
        return;
    }
    worker->s->error_time = apr_time_now();
    worker->s->status |= PROXY_WORKER_IN_ERROR;
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, AOAI_LOGNO(033)
                  "%s: TLS handshake with member %s (%s) failed; it stays "
                  "in error for %" APR_TIME_T_FMT " s (retry=); mod_ssl's "
                  "AH02276/AH02411 at LogLevel ssl:info give the reason",
                  balancer->s->name, member_label(worker),
                  worker->s->hostname_ex,
                  apr_time_sec(worker->s->retry));
}

typedef enum {
    AOAI_OUTCOME_DONE,        /* the client has its answer, or its error */
    AOAI_OUTCOME_ANSWERED,    /* a failed answer, swallowed */
    AOAI_OUTCOME_CONNECTION,  /* no answer: refused, reset, closed */
    AOAI_OUTCOME_TIMEOUT      /* no answer in time */
} aoai_outcome;

static aoai_outcome classify(request_rec *r, aoai_request_state *state,
                             int access_status)
{
    if (state->passed || r->connection->aborted) {
        return AOAI_OUTCOME_DONE;
    }
    if (state->answered_status) {
        return AOAI_OUTCOME_ANSWERED;
    }
    if (state->backend_broke) {
        return AOAI_OUTCOME_CONNECTION;
    }
    if (access_status == OK || access_status == DONE
        || access_status == DECLINED
        || ap_is_HTTP_CLIENT_ERROR(access_status)) {
        return AOAI_OUTCOME_DONE;
    }
    if (apr_table_get(r->notes, "proxy_timedout")
        || access_status == HTTP_GATEWAY_TIME_OUT) {
        return AOAI_OUTCOME_TIMEOUT;
    }
    return AOAI_OUTCOME_CONNECTION;
}

static int transport_failover(const aoai_dir_conf *conf, aoai_outcome outcome)
{
    return (outcome == AOAI_OUTCOME_CONNECTION
            && (conf->failover_transport & AOAI_FAIL_CONNECTION))
        || (outcome == AOAI_OUTCOME_TIMEOUT
            && (conf->failover_transport & AOAI_FAIL_TIMEOUT));
}

static void note_result(request_rec *r, aoai_request_state *state,
                        const char *served_by)
{
    const char *attempts = apr_itoa(r->pool, state->attempts);
    const char *skipped = apr_itoa(r->pool, state->skipped_throttled->nelts);

    apr_table_setn(r->subprocess_env, "AOAI_ATTEMPTS", attempts);
    apr_table_setn(r->subprocess_env, "AOAI_THROTTLED_SKIPPED", skipped);
    apr_table_setn(r->notes, "aoai-attempts", attempts);
    apr_table_setn(r->notes, "aoai-throttled-skipped", skipped);
    if (state->headroom_passed_over) {
        const char *passed_over = apr_itoa(r->pool,
                                           state->headroom_passed_over);
        apr_table_setn(r->subprocess_env, "AOAI_HEADROOM_PASSED_OVER",
                       passed_over);
        apr_table_setn(r->notes, "aoai-headroom-passed-over", passed_over);
    }
    if (served_by) {
        apr_table_setn(r->subprocess_env, "AOAI_BACKEND", served_by);
        apr_table_setn(r->notes, "aoai-backend", served_by);
    }
}

/* The served answer is complete: its member and subscriber are counted,
 * and its tokens, when they could be read, go to the access log too. */
static void note_served(request_rec *r, aoai_request_state *state)
{
    static const struct {
        const char *env;
        const char *note;
    } names[] = {
        { "AOAI_PROMPT_TOKENS", "aoai-prompt-tokens" },
        { "AOAI_COMPLETION_TOKENS", "aoai-completion-tokens" },
        { "AOAI_TOTAL_TOKENS", "aoai-total-tokens" },
    };
    const aoai_usage *usage = NULL;

    if (state->usage && aoai_usage_scan_finish(state->usage)) {
        apr_int64_t counts[3];
        apr_size_t i;

        usage = &state->usage->usage;
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
    aoai_member_note_served(r, state->balancer, state->worker,
                            state->key_label, usage);
}

/* Nobody is left: the client learns when to come back. */
static int send_exhausted(request_rec *r, aoai_request_state *state,
                          int last_failure_status)
{
    apr_time_t now = apr_time_now();
    apr_time_t soonest = aoai_soonest_window_end(state->balancer, now);
    int status;
    const char *message;

    if (soonest) {
        apr_interval_time_t wait = soonest - now;
        apr_int64_t wait_ms = (wait + 999) / 1000;
        apr_int64_t wait_s = (wait + APR_USEC_PER_SEC - 1) / APR_USEC_PER_SEC;

        apr_table_setn(r->err_headers_out, "Retry-After",
                       apr_psprintf(r->pool, "%" APR_INT64_T_FMT, wait_s));
        apr_table_setn(r->err_headers_out, "retry-after-ms",
                       apr_psprintf(r->pool, "%" APR_INT64_T_FMT, wait_ms));
    }
    if (last_failure_status == HTTP_TOO_MANY_REQUESTS
        || (!last_failure_status && soonest)) {
        status = HTTP_TOO_MANY_REQUESTS;
        message = apr_psprintf(r->pool, "Every backend deployment behind "
                               "this gateway is rate limited. Please retry "
                               "after %s seconds.",
                               apr_table_get(r->err_headers_out,
                                             "Retry-After"));
    }
    else if (last_failure_status && last_failure_status < 500
             && last_failure_status != HTTP_TOO_MANY_REQUESTS) {
        status = last_failure_status;
        message = apr_psprintf(r->pool, "Every backend deployment behind "
                               "this gateway answered %d.",
                               last_failure_status);
    }
    else {
        status = HTTP_SERVICE_UNAVAILABLE;
        message = "No backend deployment behind this gateway is available "
                  "right now. Please retry later.";
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(022)
                  "%s: no member left after %d attempt(s), %d throttled; "
                  "answering %d", state->balancer->s->name, state->attempts,
                  state->skipped_throttled->nelts, status);
    note_result(r, state, NULL);
    return send_json_error(r, status, apr_itoa(r->pool, status), message);
}

/* API Management's azure-openai-token-limit answer: the key's own
 * allowance, and when its next minute starts.  No member is called. */
static int send_over_key_quota(request_rec *r, aoai_request_state *state,
                               const aoai_key_quota *quota,
                               apr_int64_t remaining, apr_interval_time_t wait)
{
    apr_int64_t wait_ms = (wait + 999) / 1000;
    apr_int64_t wait_s = (wait + APR_USEC_PER_SEC - 1) / APR_USEC_PER_SEC;

    if (wait_s < 1) {
        wait_s = 1;
    }
    apr_table_setn(r->err_headers_out, "Retry-After",
                   apr_psprintf(r->pool, "%" APR_INT64_T_FMT, wait_s));
    apr_table_setn(r->err_headers_out, "retry-after-ms",
                   apr_psprintf(r->pool, "%" APR_INT64_T_FMT, wait_ms));
    apr_table_setn(r->err_headers_out, "x-ratelimit-remaining-tokens",
                   apr_psprintf(r->pool, "%" APR_INT64_T_FMT, remaining));
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(049)
                  "%s: subscription key %s is over its %" APR_INT64_T_FMT
                  " tokens per minute (this call: about %" APR_INT64_T_FMT
                  ", left: %" APR_INT64_T_FMT "); answering 429",
                  state->balancer->s->name, state->key_label,
                  quota->tokens_per_minute, state->token_estimate, remaining);
    note_result(r, state, NULL);
    return send_apim_error(r, HTTP_TOO_MANY_REQUESTS, apr_psprintf(r->pool,
                           "Token limit is exceeded. Try again in %"
                           APR_INT64_T_FMT " seconds.", wait_s));
}

/* The member's own credential on the request, or a failed attempt: the
 * file is named once per retry interval of the member (never the token),
 * and the attempt counts as a failover from it. */
static int credential_applied(request_rec *r, aoai_request_state *state,
                              proxy_worker *worker)
{
    aoai_member_slot *slot = aoai_throttle_slot(state->balancer, worker);
    const char *file = NULL;
    apr_status_t rv = aoai_apply_member_credential(r, state->conf, worker,
                                                   &file);

    if (rv == APR_SUCCESS) {
        return 1;
    }
    aoai_member_count(slot, AOAI_COUNT_FAILOVERS, 1);
    if (aoai_member_once_per(slot, AOAI_ONCE_CREDENTIAL, apr_time_now(),
                             worker->s->retry > 0 ? worker->s->retry
                                                  : apr_time_from_sec(60))) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r, AOAI_LOGNO(030)
                      "%s: member %s: its bearer token file %s is "
                      "unreadable, empty or not a token; the call goes to "
                      "the next member (logged once per retry interval, "
                      "%" APR_TIME_T_FMT " s)", state->balancer->s->name,
                      member_label(worker), file,
                      apr_time_sec(worker->s->retry));
    }
    return 0;
}

static int aoai_proxy_handler(request_rec *r)
{
    proxy_server_conf *proxy_conf;
    proxy_balancer *balancer;
    aoai_request_state *state;
    aoai_kept_body *kept;
    aoai_saved_response saved;
    ap_filter_t *kept_body_input;
    const aoai_dir_conf *conf;
    const char *uri, *why = NULL;
    const aoai_key_quota *quota;
    int access_status = DECLINED, last_failure_status = 0, rc;

    if (r->proxyreq != PROXYREQ_REVERSE || !r->filename
        || strncmp(r->filename, "proxy:balancer://", 17) != 0) {
        return DECLINED;
    }
    uri = r->filename + 6;
    proxy_conf = ap_get_module_config(r->server->module_config,
                                      &proxy_module);
    balancer = ap_proxy_get_balancer(r->pool, proxy_conf, uri, 1);
    if (!balancer || balancer->lbmethod != &aoai_lbmethod) {
        return DECLINED;
    }
    conf = ap_get_module_config(r->per_dir_config, &aoai_balancer_module);

    state = apr_pcalloc(r->pool, sizeof(*state));
    state->tried = apr_array_make(r->pool, 4, sizeof(proxy_worker *));
    state->skipped_throttled = apr_array_make(r->pool, 4,
                                              sizeof(proxy_worker *));
    state->balancer = balancer;
    state->conf = conf;
    ap_set_module_config(r->request_config, &aoai_balancer_module, state);

    if (conf->keys) {
        const char *label;
        rc = aoai_check_subscription_key(r, conf, &label, &why);
        if (rc != OK) {
            aoai_scrub_client_key(r, conf, &uri);
            r->connection->keepalive = AP_CONN_CLOSE;   /* body unread */
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(027)
                          "%s: refusing a call without a valid subscription "
                          "key", balancer->s->name);
            return send_apim_error(r, rc, why);
        }
        apr_table_setn(r->subprocess_env, "AOAI_KEY_LABEL", label);
        apr_table_setn(r->notes, "aoai-key-label", label);
        state->key_label = label;
    }
    if (conf->keys || conf->credentials) {
        aoai_scrub_client_key(r, conf, &uri);
    }

    kept = apr_pcalloc(r->pool, sizeof(*kept));
    rc = keep_request_body(r, conf, kept, &why);
    if (rc != OK) {
        if (rc == HTTP_REQUEST_ENTITY_TOO_LARGE) {
            /* Unread bytes would be taken for the next request. */
            r->connection->keepalive = AP_CONN_CLOSE;
        }
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(023)
                      "%s: refusing request before any member: %s",
                      balancer->s->name, why);
        return send_json_error(r, rc, apr_itoa(r->pool, rc), why);
    }
    state->handshake_timeout = conf->first_byte_timeout;
    if (conf->first_byte_timeout
        && (conf->first_byte_all || is_streamed(kept))) {
        state->first_byte_timeout = conf->first_byte_timeout;
    }
    if (aoai_deployment_route(r, state, uri) != OK) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(048)
                      "%s: no member serves deployment %s",
                      balancer->s->name, state->deployment);
        return send_json_error(r, HTTP_NOT_FOUND, "DeploymentNotFound",
                               "The API deployment for this resource does "
                               "not exist. If you created the deployment "
                               "within the last 5 minutes, please wait a "
                               "moment and try again.");
    }
    quota = aoai_key_quota_for(conf, state->key_label);
    if (quota || !conf->headroom_floor[AOAI_HEADROOM_TOKENS].off) {
        state->token_estimate = aoai_token_estimate(kept->data, kept->length);
    }
    if (quota) {
        apr_int64_t remaining;
        apr_interval_time_t wait;

        if (!aoai_key_quota_take(r, state, quota, apr_time_now(), &remaining,
                                 &wait)) {
            return send_over_key_quota(r, state, quota, remaining, wait);
        }
    }
    kept_body_input = ap_add_input_filter_handle(kept_body_filter_handle,
                                                 kept, r, r->connection);
    ap_add_output_filter_handle(failover_filter_handle, NULL, r,
                                r->connection);
    save_response(r, &saved);

    for (;;) {
        proxy_worker *worker = NULL;
        proxy_balancer *attempt_balancer = NULL;
        char *url = apr_pstrdup(r->pool, uri);
        aoai_outcome outcome;

        if (!aoai_any_candidate(state, apr_time_now())) {
            break;
        }
        access_status = ap_proxy_pre_request(&worker, &attempt_balancer, r,
                                             proxy_conf, &url);
        if (access_status != OK) {
            if (access_status == HTTP_SERVICE_UNAVAILABLE && !worker) {
                /* Members left, but all of them in error state. */
                break;
            }
            if (worker) {
                ap_proxy_post_request(worker, attempt_balancer, r,
                                      proxy_conf);
            }
            return access_status;
        }
        ap_proxy_initialize_worker(worker, r->server, proxy_conf->pool);
        url = aoai_deployment_url(r, state, worker, url);

        APR_ARRAY_PUSH(state->tried, proxy_worker *) = worker;
        state->attempts++;
        if ((conf->keys || conf->credentials)
            && !credential_applied(r, state, worker)) {
            /* Without its credential the member would only say 401: a
             * failed attempt that never reached it. */
            post_request_as(r, worker, attempt_balancer, proxy_conf,
                            HTTP_SERVICE_UNAVAILABLE);
            access_status = DECLINED;
            continue;
        }
        state->worker = worker;
        state->answered_status = 0;
        state->backend_broke = 0;
        state->answered = 0;
        state->sent = 0;
        state->in_attempt = 1;
        kept->offset = 0;
        if (state->attempts > 1) {
            restore_response(r, &saved);
        }

        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, AOAI_LOGNO(024)
                      "%s: attempt %d on member %s", balancer->s->name,
                      state->attempts, member_label(worker));
        state->awaiting_first_byte = state->first_byte_timeout > 0;
        attempt_in_this_thread = state;
        access_status = proxy_run_scheme_handler(r, worker, proxy_conf,
                                                 url, NULL, 0);
        attempt_in_this_thread = NULL;
        state->in_attempt = 0;
        outcome = classify(r, state, access_status);
        if (outcome == AOAI_OUTCOME_CONNECTION) {
            note_tls_failure(r, balancer, worker);
        }

        /* failonstatus and failontimeout judge the member by r->status,
         * which for a failed attempt is what the member did, not what the
         * client will see. */
        if (outcome == AOAI_OUTCOME_ANSWERED) {
            post_request_as(r, worker, attempt_balancer, proxy_conf,
                            state->answered_status);
        }
        else if (access_status == OK || access_status == DONE) {
            ap_proxy_post_request(worker, attempt_balancer, r, proxy_conf);
        }
        else {
            post_request_as(r, worker, attempt_balancer, proxy_conf,
                            access_status);
        }

        if (outcome == AOAI_OUTCOME_DONE) {
            if (access_status == DECLINED) {
                ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, AOAI_LOGNO(025)
                              "%s: no scheme handler for member %s; is "
                              "mod_proxy_http (or mod_ssl for https) "
                              "loaded?", balancer->s->name,
                              member_label(worker));
                access_status = HTTP_INTERNAL_SERVER_ERROR;
            }
            note_result(r, state, state->passed ? member_label(worker) : NULL);
            if (state->passed) {
                note_served(r, state);
            }
            break;
        }
        if (outcome != AOAI_OUTCOME_ANSWERED
            && !transport_failover(conf, outcome)) {
            /* The admin chose not to fail over on this; still answer in
             * the shape clients parse. */
            int status = (outcome == AOAI_OUTCOME_TIMEOUT)
                         ? HTTP_GATEWAY_TIME_OUT : HTTP_BAD_GATEWAY;
            note_result(r, state, NULL);
            restore_response(r, &saved);
            access_status = send_json_error(r, status, apr_itoa(r->pool, status),
                                            "The backend deployment did not "
                                            "answer.");
            break;
        }
        last_failure_status = (outcome == AOAI_OUTCOME_ANSWERED)
                              ? state->answered_status
                              : (outcome == AOAI_OUTCOME_TIMEOUT)
                                ? HTTP_GATEWAY_TIME_OUT : HTTP_BAD_GATEWAY;
        aoai_member_count(aoai_throttle_slot(balancer, worker),
                          AOAI_COUNT_FAILOVERS, 1);
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(026)
                      "%s: member %s failed (%s%d); trying the next member",
                      balancer->s->name, member_label(worker),
                      outcome == AOAI_OUTCOME_ANSWERED ? "answered "
                      : outcome == AOAI_OUTCOME_TIMEOUT ? "timeout, "
                      : "connection, ", last_failure_status);
        access_status = DECLINED;
    }

    if (access_status == DECLINED) {
        restore_response(r, &saved);
        access_status = send_exhausted(r, state, last_failure_status);
    }
    aoai_key_quota_settle(state, state->passed && state->usage
                                 && state->usage->found
                                 ? &state->usage->usage : NULL);
    ap_remove_input_filter(kept_body_input);
    proxy_run_request_status(&access_status, r);
    return access_status;
}

void aoai_failover_register_hooks(apr_pool_t *p)
{
    static const char *const run_before[] = { "mod_proxy.c", NULL };

    (void)p;
    ap_hook_handler(aoai_proxy_handler, NULL, run_before, APR_HOOK_FIRST);
    kept_body_filter_handle =
        ap_register_input_filter(KEPT_BODY_FILTER, kept_body_filter, NULL,
                                 AP_FTYPE_RESOURCE);
    failover_filter_handle =
        ap_register_output_filter(FAILOVER_FILTER, failover_filter, NULL,
                                  AP_FTYPE_RESOURCE);
    first_byte_filter_handle =
        ap_register_input_filter(FIRST_BYTE_FILTER, first_byte_filter, NULL,
                                 AP_FTYPE_CONNECTION);
    member_out_filter_handle =
        ap_register_output_filter(MEMBER_OUT_FILTER, member_out_filter, NULL,
                                  AP_FTYPE_CONNECTION);
    ap_hook_pre_connection(add_member_filters, NULL, NULL, APR_HOOK_MIDDLE);
}
