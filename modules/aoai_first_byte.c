/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Two filters on every connection mod_proxy opens to a member of an aoai
 * balancer (c->outgoing), out of the way unless an aoai attempt runs on it
 * (aoai_request.c tells which): the request's way out, and the answer's
 * first byte.
 */

#include "aoai_first_byte.h"
#include "aoai_realtime.h"
#include "aoai_request.h"
#include "aoai_table.h"

#include "http_connection.h"
#include "http_log.h"
#include "util_filter.h"

APLOG_USE_MODULE(aoai_balancer);

#define FIRST_BYTE_FILTER "AOAI_FIRST_BYTE"
#define MEMBER_OUT_FILTER "AOAI_MEMBER_OUT"

static ap_filter_rec_t *first_byte_filter_handle;
static ap_filter_rec_t *member_out_filter_handle;

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
    aoai_call *call = aoai_request_attempt_here();
    apr_interval_time_t member_timeout;
    apr_socket_t *sock;
    apr_status_t rv;

    if (call && call->session.open) {
        /* A Realtime session, through mod_proxy_http's tunnel. */
        rv = ap_get_brigade(f->next, bb, mode, block, readbytes);
        if (rv == APR_SUCCESS) {
            aoai_realtime_feed(call, bb);
        }
        return rv;
    }
    if (!call || !call->attempt.running || call->attempt.answered) {
        return ap_get_brigade(f->next, bb, mode, block, readbytes);
    }
    if (!call->first_byte_timeout || block != APR_BLOCK_READ
        || !(sock = ap_get_conn_socket(f->c))
        || apr_socket_timeout_get(sock, &member_timeout) != APR_SUCCESS
        || (member_timeout >= 0
            && member_timeout <= call->first_byte_timeout)) {
        rv = ap_get_brigade(f->next, bb, mode, block, readbytes);
        call->attempt.answered = rv == APR_SUCCESS
                                 && !APR_BRIGADE_EMPTY(bb);
        return rv;
    }
    apr_socket_timeout_set(sock, call->first_byte_timeout);
    rv = ap_get_brigade(f->next, bb, mode, block, readbytes);
    apr_socket_timeout_set(sock, member_timeout);
    if (rv == APR_SUCCESS && !APR_BRIGADE_EMPTY(bb)) {
        call->attempt.answered = 1;
    }
    else if (APR_STATUS_IS_TIMEUP(rv)) {
        ap_log_cerror(APLOG_MARK, APLOG_INFO, rv, f->c, AOAI_LOGNO(034)
                      "%s: member %s sent no answer within the first-byte "
                      "timeout of %" APR_TIME_T_FMT " ms",
                      call->balancer->s->name,
                      call->attempt.worker->s->name_ex,
                      apr_time_as_msec(call->first_byte_timeout));
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
    aoai_call *call = aoai_request_attempt_here();
    apr_interval_time_t member_timeout = -1;
    apr_socket_t *sock = NULL;
    apr_status_t rv;
    int data;

    if (!call || !call->attempt.running) {
        return ap_pass_brigade(f->next, bb);
    }
    data = has_data(bb);
    if (call->handshake_timeout > 0 && !call->attempt.answered
        && (sock = ap_get_conn_socket(f->c))
        && apr_socket_timeout_get(sock, &member_timeout) == APR_SUCCESS
        && (member_timeout < 0 || member_timeout > call->handshake_timeout)) {
        apr_socket_timeout_set(sock, call->handshake_timeout);
    }
    else {
        sock = NULL;
    }
    rv = ap_pass_brigade(f->next, bb);
    if (sock) {
        apr_socket_timeout_set(sock, member_timeout);
    }
    if (rv == APR_SUCCESS && data && !call->attempt.sent) {
        call->attempt.sent = 1;
        aoai_table_count(aoai_table_member(call->balancer, call->attempt.worker),
                          AOAI_COUNT_REQUESTS, 1);
    }
    return rv;
}

/* A connection mod_proxy opens to a member during an aoai attempt gets the
 * filters; they stay out of the way between attempts.  Its worker belongs
 * to the aoai balancer, so every call that reuses it is an aoai call;
 * the connections of other balancers and of health checks are left as
 * they are, and cost nothing. */
static int add_member_filters(conn_rec *c, void *csd)
{
    (void)csd;
    if (c->outgoing && aoai_request_attempt_here()) {
        ap_add_input_filter_handle(first_byte_filter_handle, NULL, NULL, c);
        ap_add_output_filter_handle(member_out_filter_handle, NULL, NULL, c);
    }
    return OK;
}

void aoai_first_byte_register_hooks(apr_pool_t *p)
{
    (void)p;
    first_byte_filter_handle =
        ap_register_input_filter(FIRST_BYTE_FILTER, first_byte_filter, NULL,
                                 AP_FTYPE_CONNECTION);
    member_out_filter_handle =
        ap_register_output_filter(MEMBER_OUT_FILTER, member_out_filter, NULL,
                                  AP_FTYPE_CONNECTION);
    ap_hook_pre_connection(add_member_filters, NULL, NULL, APR_HOOK_MIDDLE);
}
