/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Realtime sessions: a WebSocket at /openai/realtime?...&deployment=NAME
 * or /openai/v1/realtime?model=NAME, opened with a GET that asks to
 * upgrade.  The call goes through the attempt loop like any other: the
 * member is chosen by priority, windows and headroom, its deployment name
 * is written into the query (aoai_deployments.c), a 429 or 5xx at the
 * handshake moves the call on before anything reached the client, and
 * the member gets its own credential.  Once a member answered 101, the
 * session is tunnelled by mod_proxy_http and never moved.
 *
 *   - mod_proxy_http forwards Upgrade only to a member with upgrade=; the
 *     module gives upgrade=websocket to the members of aoai balancers that
 *     have none, so `ProxyPass /openai balancer://aoai/openai` carries
 *     sessions as it carries every other call;
 *   - the 101 is sent by ap_send_interim_response(), around the request's
 *     filters: a filter on the client's connection writes x-aoai-backend
 *     into it, and marks the session open;
 *   - the member's frames pass the member connection's input filters on
 *     their way through the tunnel: text messages are read there for
 *     response.done events, whose usage is the session's tokens.  Members
 *     are asked for uncompressed frames (no Sec-WebSocket-Extensions), or
 *     a permessage-deflate session could not be read.
 */

#include "aoai_realtime.h"
#include "aoai_balancers.h"
#include "aoai_json.h"
#include "aoai_table.h"

#include "apr_strings.h"
#include "http_log.h"
#include "http_protocol.h"
#include "util_filter.h"

APLOG_USE_MODULE(aoai_balancer);

#define SWITCH_FILTER "AOAI_SWITCH"
/* A Realtime event larger than this is not read for usage. */
#define AOAI_MESSAGE_MAX (256 * 1024)

static ap_filter_rec_t *switch_filter_handle;

static apr_status_t give_upgrade(server_rec *s, proxy_balancer *balancer,
                                 void *baton)
{
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int i;

    (void)baton;
    for (i = 0; i < balancer->workers->nelts; i++) {
        if (!*workers[i]->s->upgrade) {
            apr_cpystrn(workers[i]->s->upgrade, "websocket",
                        sizeof(workers[i]->s->upgrade));
            ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, s, AOAI_LOGNO(070)
                         "%s: member %s takes Realtime sessions "
                         "(upgrade=websocket)", balancer->s->name,
                         aoai_balancers_label(workers[i]));
        }
    }
    return APR_SUCCESS;
}

void aoai_realtime_post_config(server_rec *s)
{
    aoai_balancers_each(s, give_upgrade, NULL);
}

/* ProxyPass and ProxyPassMatch, read before mod_proxy reads them (the
 * module loaded later is asked first; DECLINE_CMD hands the line on).
 * mod_proxy refuses upgrade= on a balancer's URL as an "unknown Balancer
 * parameter"; the administrator learns here where it belongs. */
const char *aoai_realtime_check_pass(cmd_parms *cmd, void *dconf,
                                     const char *args)
{
    const char *word, *balancer = NULL;

    (void)dconf;
    while (*(word = ap_getword_conf(cmd->temp_pool, &args))) {
        if (!ap_cstr_casecmpn(word, "balancer://", 11)) {
            balancer = word;
        }
        else if (balancer && !ap_cstr_casecmpn(word, "upgrade=", 8)) {
            return apr_psprintf(
                cmd->pool, "%s: %s is a parameter of a member, not of a "
                "balancer (%s): the members of an lbmethod=aoai balancer "
                "take WebSocket sessions without it; a member of another "
                "balancer takes it on its BalancerMember line",
                cmd->cmd->name, word, balancer);
        }
    }
    return DECLINE_CMD;
}

static int realtime_path(const char *uri)
{
    const char *at = strstr(uri, "/openai/");

    if (!at) {
        return 0;
    }
    at += 8;
    if (!strncmp(at, "v1/", 3)) {
        at += 3;
    }
    return !strncmp(at, "realtime", 8) && strchr("?#", at[8]);
}

int aoai_realtime_check(request_rec *r, aoai_call *call, const char *uri)
{
    const char *upgrade = apr_table_get(r->headers_in, "Upgrade");

    if (upgrade && !ap_cstr_casecmp(upgrade, "websocket")) {
        call->session.handshake = 1;
        apr_table_unset(r->headers_in, "Sec-WebSocket-Extensions");
        return DECLINED;
    }
    if (!realtime_path(uri)) {
        return DECLINED;
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(071)
                  "%s: refusing a Realtime call that is no WebSocket "
                  "handshake", call->balancer->s->name);
    return HTTP_BAD_REQUEST;
}

/* The 101, as ap_send_interim_response() writes it: the status line and
 * the headers in one flushed brigade. */
static apr_status_t switch_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    aoai_call *call = f->ctx;
    const char *label, *end;
    char *head;
    apr_size_t length;
    apr_bucket *b;

    if (!call->attempt.running || call->session.open) {
        return ap_pass_brigade(f->next, bb);
    }
    if (apr_brigade_pflatten(bb, &head, &length, f->c->pool) != APR_SUCCESS
        || length < 13 || strncmp(head, "HTTP/1.1 101 ", 13)
        || !(end = memmem(head, length, "\r\n\r\n", 4))) {
        return ap_pass_brigade(f->next, bb);
    }
    label = aoai_balancers_label(call->attempt.worker);
    call->session.open = 1;
    call->passed = 1;           /* the client has its answer: the session */
    aoai_table_count(aoai_table_member(call->balancer, call->attempt.worker),
                     AOAI_COUNT_SESSIONS_OPEN, 1);
    if (call->conf->backend_header) {
        char *named = apr_pstrcat(
            f->c->pool, apr_pstrmemdup(f->c->pool, head, end + 2 - head),
            call->conf->backend_header, ": ", label, "\r\n\r\n",
            apr_pstrmemdup(f->c->pool, end + 4, head + length - end - 4),
            NULL);
        b = apr_bucket_heap_create(named, strlen(named), NULL,
                                   f->c->bucket_alloc);
    }
    else {
        b = apr_bucket_heap_create(head, length, NULL, f->c->bucket_alloc);
    }
    while (!APR_BRIGADE_EMPTY(bb)
           && !APR_BUCKET_IS_METADATA(APR_BRIGADE_FIRST(bb))) {
        apr_bucket_delete(APR_BRIGADE_FIRST(bb));
    }
    APR_BRIGADE_INSERT_HEAD(bb, b);
    ap_remove_output_filter(f);
    return ap_pass_brigade(f->next, bb);
}

void aoai_realtime_attempt(request_rec *r, aoai_call *call)
{
    ap_filter_t *f;

    if (!call->session.handshake) {
        return;
    }
    for (f = r->connection->output_filters; f; f = f->next) {
        if (f->frec == switch_filter_handle) {
            return;
        }
    }
    ap_add_output_filter_handle(switch_filter_handle, call, NULL,
                                r->connection);
}

/* ------------------------------------------------------------------ */
/* The member's frames, read on their way to the client                */

/* A whole text message: a response.done event's usage is added up. */
static void read_message(aoai_session *session)
{
    json_t *event, *usage;
    json_int_t in, out, total;

    if (!memmem(session->message, session->message_length,
                "\"response.done\"", 15)) {
        return;
    }
    event = json_loadb(session->message, session->message_length, 0, NULL);
    usage = json_object_get(json_object_get(event, "response"), "usage");
    in = json_integer_value(json_object_get(usage, "input_tokens"));
    out = json_integer_value(json_object_get(usage, "output_tokens"));
    total = json_integer_value(json_object_get(usage, "total_tokens"));
    if (json_is_object(usage) && in >= 0 && out >= 0 && total >= 0) {
        session->usage.prompt_tokens += in;
        session->usage.completion_tokens += out;
        session->usage.total_tokens += total ? total : in + out;
        session->usage_found = 1;
    }
    json_decref(event);
}

/* The header of a frame is whole: its length, mask, opcode. */
static void frame_begins(aoai_session *session)
{
    const unsigned char *h = session->head;
    int at = 2, i;

    session->fin = h[0] >> 7;
    session->masked = h[1] >> 7;
    session->payload_left = h[1] & 0x7f;
    if (session->payload_left >= 126) {
        int bytes = session->payload_left == 126 ? 2 : 8;
        session->payload_left = 0;
        for (i = 0; i < bytes; i++) {
            session->payload_left = session->payload_left << 8 | h[at++];
        }
    }
    if (session->masked) {
        memcpy(session->mask, h + at, 4);
    }
    session->payload_at = 0;
    session->opcode = h[0] & 0x0f;
    if (session->opcode == 1) {         /* a new text message */
        session->message_length = 0;
        session->message_skip = (h[0] & 0x40) != 0;  /* compressed */
    }
}

static int head_needed(const aoai_session *session)
{
    int length = 2;

    if (session->head_length >= 2) {
        int code = session->head[1] & 0x7f;
        length += code == 126 ? 2 : code == 127 ? 8 : 0;
        length += (session->head[1] & 0x80) ? 4 : 0;
    }
    return length;
}

/* Payload bytes of a data frame, into the text message being read. */
static void take_payload(aoai_session *session, const unsigned char *data,
                         apr_size_t length, apr_pool_t *pool)
{
    int text = session->opcode == 1 || session->opcode == 0;
    apr_size_t i;

    if (text && !session->message_skip
        && session->message_length + length <= AOAI_MESSAGE_MAX) {
        if (!session->message) {
            session->message = apr_palloc(pool, AOAI_MESSAGE_MAX);
        }
        for (i = 0; i < length; i++) {
            session->message[session->message_length++] = (char)(
                data[i] ^ (session->masked
                           ? session->mask[(session->payload_at + i) & 3]
                           : 0));
        }
    }
    else if (text) {
        session->message_skip = 1;
    }
    session->payload_at += length;
    session->payload_left -= length;
    if (!session->payload_left && session->fin && text
        && !session->message_skip) {
        read_message(session);
    }
}

static void feed(aoai_session *session, const unsigned char *data,
                 apr_size_t length, apr_pool_t *pool)
{
    while (length) {
        if (session->head_length < head_needed(session)
            || session->head_length < 2) {
            session->head[session->head_length++] = *data++;
            length--;
            if (session->head_length >= 2
                && session->head_length == head_needed(session)) {
                frame_begins(session);
                if (!session->payload_left) {
                    session->head_length = 0;
                    take_payload(session, data, 0, pool);
                }
            }
            continue;
        }
        {
            apr_size_t part = length < session->payload_left
                              ? length : (apr_size_t)session->payload_left;
            take_payload(session, data, part, pool);
            data += part;
            length -= part;
            if (!session->payload_left) {
                session->head_length = 0;
            }
        }
    }
}

void aoai_realtime_feed(aoai_call *call, apr_bucket_brigade *bb)
{
    apr_bucket *b;

    if (!call->session.open) {
        return;
    }
    for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb);
         b = APR_BUCKET_NEXT(b)) {
        const char *data;
        apr_size_t length;

        if (!APR_BUCKET_IS_METADATA(b)
            && apr_bucket_read(b, &data, &length, APR_BLOCK_READ)
               == APR_SUCCESS) {
            feed(&call->session, (const unsigned char *)data, length,
                 call->r->pool);
        }
    }
}

const aoai_usage *aoai_realtime_end(request_rec *r, aoai_call *call)
{
    (void)r;
    if (!call->session.open) {
        return NULL;
    }
    aoai_table_count(aoai_table_member(call->balancer, call->attempt.worker),
                     AOAI_COUNT_SESSIONS, 1);
    aoai_table_count(aoai_table_member(call->balancer, call->attempt.worker),
                     AOAI_COUNT_SESSIONS_OPEN, (apr_uint64_t)-1);
    return call->session.usage_found ? &call->session.usage : NULL;
}

void aoai_realtime_register_hooks(apr_pool_t *p)
{
    (void)p;
    switch_filter_handle = ap_register_output_filter(
        SWITCH_FILTER, switch_filter, NULL, AP_FTYPE_CONNECTION);
}
