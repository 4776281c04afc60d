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
 * proxy_handler() would have run, in explicit phases:
 *
 *   before any member   the front door (keys in, caller credentials out),
 *                       the body kept for replay (aoai_kept_body.c), the
 *                       deployment routed (aoai_deployments.c), the key's
 *                       tokens charged (aoai_key_quota.c).  Each lets the
 *                       call go on or answers it.
 *   each attempt        mod_proxy_balancer picks a member (through the
 *                       aoai lbmethod, which skips throttled and tried
 *                       members), the member gets its own credential and
 *                       its name for the deployment, the body is replayed,
 *                       and the scheme handler (mod_proxy_http) runs as
 *                       proxy_handler() would run it.
 *   finish_attempt()    the attempt's outcome judged, the balancer's
 *                       post_request run with the status the member gave,
 *                       counted and logged: the client has its answer, or
 *                       the loop goes on (nginx's free_peer has this role).
 *
 * The AOAI_FAILOVER output filter sits first in the chain and looks at the
 * first brigade of each answer, when r->status and the member's headers
 * are set and nothing has gone to the client.  A status named in
 * AOAIFailoverOn is recorded (429: its window goes into shared memory,
 * aoai_throttle.c) and swallowed, and the loop tries the next member.
 * Anything else goes to the client and ends the loop: nothing is retried
 * once a byte has left, so a stream is never sent twice.
 *
 * When no member is left the client gets Azure's error shape
 * (aoai_answers.c): 429 with Retry-After and retry-after-ms of the soonest
 * window end, or 503.  Never a 500 because a member was busy.
 *
 * ProxyErrorOverride would also keep a 429 from the client, but it belongs
 * to the admin (ErrorDocument pages) and discards the headers we need; the
 * filter leaves it alone.
 */

#include "aoai_failover.h"
#include "aoai_answers.h"
#include "aoai_balancers.h"
#include "aoai_deployments.h"
#include "aoai_front_door.h"
#include "aoai_headroom.h"
#include "aoai_json.h"
#include "aoai_kept_body.h"
#include "aoai_key_quota.h"
#include "aoai_lbmethod.h"
#include "aoai_metering.h"
#include "aoai_objects.h"
#include "aoai_operations.h"
#include "aoai_realtime.h"
#include "aoai_request.h"
#include "aoai_table.h"
#include "aoai_throttle.h"
#include "aoai_verdict.h"

#include "apr_strings.h"

#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"

APLOG_USE_MODULE(aoai_balancer);

#define FAILOVER_FILTER "AOAI_FAILOVER"
/* The largest failed answer held to read its error code. */
#define AOAI_HELD_MAX (64 * 1024)

static ap_filter_rec_t *failover_filter_handle;

/* The response as it stood before the first attempt, put back before each
 * further one so that nothing of a swallowed answer leaks into the next. */
typedef struct {
    apr_table_t *headers_out;
    apr_table_t *err_headers_out;
    const char *content_type;
    const char *content_encoding;
    apr_array_header_t *content_languages;
} aoai_saved_response;

/* What the handler carries through its phases and the attempt loop. */
typedef struct {
    aoai_call *call;
    request_rec *r;
    proxy_server_conf *proxy_conf;
    const char *uri;               /* the balancer URL, as members get it */
    aoai_kept_body *body;
    aoai_saved_response saved;
    proxy_balancer *attempt_balancer; /* as ap_proxy_pre_request set it */
    int last_failure_status;
} aoai_flow;

typedef enum {
    AOAI_OUTCOME_DONE,        /* the client has its answer, or its error */
    AOAI_OUTCOME_ANSWERED,    /* a failed answer, swallowed */
    AOAI_OUTCOME_CONNECTION,  /* no answer: refused, reset, closed */
    AOAI_OUTCOME_TIMEOUT      /* no answer in time */
} aoai_outcome;

/* finish_attempt() and start_attempt() say "go on with the next member"
 * with this; any other value is the handler's result, DECLINED "no member
 * is left".  Unlike any status or hook result httpd has (DECLINED is -1,
 * DONE -2, SUSPENDED -3): when it was DECLINED's -1, a start_attempt()
 * that found every member in error went round again, without end. */
#define AOAI_NEXT_MEMBER (-100)

/* ------------------------------------------------------------------ */
/* The answer, at its first brigade                                     */



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

/* A failed answer that no other member can improve on goes to the client
 * as the member gave it: with every member answering 404 (when
 * AOAIFailoverOn lists 404), the client reads that, not a summary.  A 429
 * or 5xx is still summed up by the gateway, whose answer says when the
 * soonest member is back; so is "not here" while a member that might hold
 * the object sits in a window. */
static int is_last_word(request_rec *r, aoai_call *call,
                        aoai_verdict verdict)
{
    if (r->status == HTTP_TOO_MANY_REQUESTS || r->status >= 500
        || aoai_lbmethod_any_candidate(call, apr_time_now())) {
        return 0;
    }
    return verdict != AOAI_VERDICT_NOT_HERE
           || !call->picks.skipped_throttled->nelts;
}

/* A brigade of the answer the client gets, read on its way. */
static apr_status_t pass_on(ap_filter_t *f, aoai_call *call,
                            apr_bucket_brigade *bb)
{
    aoai_metering_feed(f->r, call, bb);
    aoai_objects_feed(f->r, call, bb);
    return ap_pass_brigade(f->next, bb);
}

static apr_status_t pass_answer(ap_filter_t *f, aoai_call *call,
                                apr_bucket_brigade *bb)
{
    request_rec *r = f->r;

    call->passed = 1;
    aoai_headroom_note(r, aoai_table_member(call->balancer,
                                            call->attempt.worker),
                       call->conf, apr_time_now());
    if (call->charge.shared) {
        /* The client's allowance is its key's, not the member's. */
        apr_table_setn(r->headers_out, "x-ratelimit-remaining-tokens",
                       apr_psprintf(r->pool, "%" APR_INT64_T_FMT,
                                    call->charge.remaining));
    }
    if (call->conf->backend_header) {
        apr_table_setn(r->headers_out, call->conf->backend_header,
                       aoai_balancers_label(call->attempt.worker));
    }
    aoai_objects_answer(r, call);
    if (!aoai_metering_start(r, call) && !call->objects.answer) {
        ap_remove_output_filter(f);
        return ap_pass_brigade(f->next, bb);
    }
    return pass_on(f, call, bb);
}

/* What the verdict on a failed answer does to the member: a window, a
 * deployment it lacks for a while, a credential to fix. */
static void act_on(request_rec *r, aoai_call *call, aoai_verdict verdict)
{
    proxy_worker *worker = call->attempt.worker;
    aoai_member_slot *slot = aoai_table_member(call->balancer, worker);
    apr_interval_time_t retry = worker->s->retry > 0
                                ? worker->s->retry : apr_time_from_sec(60);

    if (verdict == AOAI_VERDICT_FAILED) {
        aoai_throttle_note(r, call);
    }
    else if (verdict == AOAI_VERDICT_NO_DEPLOYMENT) {
        aoai_deployments_note_missing(call, worker);
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(061)
                      "%s: member %s has no deployment %s; passed over for "
                      "it for %" APR_TIME_T_FMT " ms",
                      call->balancer->s->name, aoai_balancers_label(worker),
                      call->route.name ? call->route.name : "(none named)",
                      apr_time_as_msec(call->conf->throttle_default));
    }
    else if (verdict == AOAI_VERDICT_CREDENTIAL
             && aoai_table_once(slot, AOAI_ONCE_REFUSED, apr_time_now(),
                                retry)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, AOAI_LOGNO(062)
                      "%s: member %s refused the gateway's credential "
                      "(%d): check its AOAIMemberCredential; calls go to "
                      "the next member (logged once per retry interval, "
                      "%" APR_TIME_T_FMT " s)", call->balancer->s->name,
                      aoai_balancers_label(worker), r->status,
                      apr_time_sec(retry));
    }
}

/* The held answer is whole, or there is no need to hold it: the client's,
 * or swallowed and the call moved on. */
static apr_status_t judge(ap_filter_t *f, aoai_call *call,
                          apr_bucket_brigade *bb, const char *code)
{
    request_rec *r = f->r;
    aoai_verdict verdict = aoai_verdict_of(call, r->status, code);

    if (verdict == AOAI_VERDICT_PASS || is_last_word(r, call, verdict)) {
        if (call->attempt.held) {
            APR_BRIGADE_PREPEND(bb, call->attempt.held);
        }
        return pass_answer(f, call, bb);
    }
    call->attempt.failed_status = r->status;
    act_on(r, call, verdict);
    if (call->attempt.held) {
        apr_brigade_cleanup(call->attempt.held);
    }
    apr_brigade_cleanup(bb);
    return APR_SUCCESS;
}

/* An answer whose verdict needs its error code: held, never sent, until
 * it is whole (error bodies are small; past AOAI_HELD_MAX it is judged
 * without one). */
static apr_status_t hold(ap_filter_t *f, aoai_call *call,
                         apr_bucket_brigade *bb)
{
    request_rec *r = f->r;
    apr_bucket_brigade *held = call->attempt.held;
    char *text;
    apr_size_t length;
    apr_off_t total;
    int whole = 0;

    if (!held) {
        held = call->attempt.held = apr_brigade_create(r->pool,
                                                       f->c->bucket_alloc);
    }
    while (!APR_BRIGADE_EMPTY(bb)) {
        apr_bucket *b = APR_BRIGADE_FIRST(bb);
        whole |= APR_BUCKET_IS_EOS(b);
        apr_bucket_setaside(b, r->pool);
        APR_BUCKET_REMOVE(b);
        APR_BRIGADE_INSERT_TAIL(held, b);
    }
    apr_brigade_length(held, 1, &total);
    if (!whole && total < AOAI_HELD_MAX) {
        return APR_SUCCESS;
    }
    apr_brigade_pflatten(held, &text, &length, r->pool);
    return judge(f, call, bb, aoai_verdict_code(r->pool, text, length));
}

static apr_status_t failover_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    request_rec *r = f->r;
    aoai_call *call = aoai_request_call(r);
    aoai_brigade_verdict verdict;

    if (call && call->passed && (call->usage || call->objects.answer)) {
        return pass_on(f, call, bb);
    }
    if (!call || !call->attempt.running || call->passed) {
        ap_remove_output_filter(f);
        return ap_pass_brigade(f->next, bb);
    }
    if (call->attempt.failed_status || call->attempt.broke) {
        /* The rest of a failed answer goes nowhere. */
        apr_brigade_cleanup(bb);
        return APR_SUCCESS;
    }
    if (call->attempt.held) {
        return hold(f, call, bb);
    }
    verdict = brigade_verdict(bb);
    if (verdict == AOAI_BRIGADE_BROKE) {
        /* The member went away before the first byte of its answer:
         * before a status line (mod_proxy_http would drop the client's
         * connection) or right after the headers.  Nothing reached the
         * client, so the next member can still answer. */
        call->attempt.broke = 1;
        apr_brigade_cleanup(bb);
        return APR_SUCCESS;
    }
    if (r->status >= 400 && aoai_verdict_needs_code(call, r->status)) {
        return hold(f, call, bb);
    }
    if (r->status >= 400
        && aoai_verdict_of(call, r->status, NULL) != AOAI_VERDICT_PASS) {
        return judge(f, call, bb, NULL);
    }
    if (verdict == AOAI_BRIGADE_EMPTY) {
        /* mod_proxy_http flushes the headers when the body is not in yet;
         * hold them until a byte proves the member is answering. */
        apr_brigade_cleanup(bb);
        return APR_SUCCESS;
    }
    return pass_answer(f, call, bb);
}

/* ------------------------------------------------------------------ */
/* Attempts                                                             */

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
                  balancer->s->name, aoai_balancers_label(worker),
                  worker->s->hostname_ex,
                  apr_time_sec(worker->s->retry));
}

static aoai_outcome classify(aoai_call *call, int access_status)
{
    if (call->passed || call->r->connection->aborted) {
        return AOAI_OUTCOME_DONE;
    }
    if (call->attempt.failed_status) {
        return AOAI_OUTCOME_ANSWERED;
    }
    if (call->attempt.broke) {
        return AOAI_OUTCOME_CONNECTION;
    }
    if (access_status == OK || access_status == DONE
        || access_status == DECLINED
        || ap_is_HTTP_CLIENT_ERROR(access_status)) {
        return AOAI_OUTCOME_DONE;
    }
    if (apr_table_get(call->r->notes, "proxy_timedout")
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

static void note_result(request_rec *r, aoai_call *call,
                        const char *served_by)
{
    const char *attempts = apr_itoa(r->pool, call->attempt.number);
    const char *skipped = apr_itoa(r->pool, call->picks.skipped_throttled->nelts);

    /* Set once per call, in tables nobody else writes these names to:
     * added, not set, which spares a search of each table per name. */
    apr_table_addn(r->subprocess_env, "AOAI_ATTEMPTS", attempts);
    apr_table_addn(r->subprocess_env, "AOAI_THROTTLED_SKIPPED", skipped);
    apr_table_addn(r->notes, "aoai-attempts", attempts);
    apr_table_addn(r->notes, "aoai-throttled-skipped", skipped);
    if (call->picks.headroom_passed_over) {
        const char *passed_over = apr_itoa(r->pool,
                                           call->picks.headroom_passed_over);
        apr_table_addn(r->subprocess_env, "AOAI_HEADROOM_PASSED_OVER",
                       passed_over);
        apr_table_addn(r->notes, "aoai-headroom-passed-over", passed_over);
    }
    if (served_by) {
        apr_table_addn(r->subprocess_env, "AOAI_BACKEND", served_by);
        apr_table_addn(r->notes, "aoai-backend", served_by);
    }
}

/* The served answer is complete: its member and subscriber are counted,
 * and its tokens, when they could be read, go to the access log too. */
static void note_served(request_rec *r, aoai_call *call)
{
    const aoai_usage *usage;

    if (call->session.open) {
        if ((usage = aoai_realtime_end(r, call))) {
            aoai_metering_log(r, usage);
        }
    }
    else {
        usage = aoai_metering_finish(r, call);
    }
    aoai_table_note_served(r, call->balancer, call->attempt.worker,
                           call->key_label, usage);
}

/* The member's own credential on the request, or a failed attempt: the
 * file is named once per retry interval of the member (never the token),
 * and the attempt counts as a failover from it. */
static int credential_applied(aoai_call *call, proxy_worker *worker)
{
    aoai_member_slot *slot = aoai_table_member(call->balancer, worker);
    const char *file = NULL;
    apr_interval_time_t interval = worker->s->retry > 0
                                   ? worker->s->retry : apr_time_from_sec(60);
    apr_status_t rv = aoai_front_door_credential(call->r, call->conf, worker,
                                                 &file);

    if (rv == APR_SUCCESS) {
        return 1;
    }
    aoai_table_count(slot, AOAI_COUNT_FAILOVERS, 1);
    if (aoai_table_once(slot, AOAI_ONCE_CREDENTIAL, apr_time_now(),
                        interval)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, call->r, AOAI_LOGNO(030)
                      "%s: member %s: its bearer token file %s is "
                      "unreadable, empty or not a token; the call goes to "
                      "the next member (logged once per retry interval, "
                      "%" APR_TIME_T_FMT " s)", call->balancer->s->name,
                      aoai_balancers_label(worker), file,
                      apr_time_sec(interval));
    }
    return 0;
}

/* The v1 and Responses APIs name the deployment in the body: each member
 * is sent its own name for it. */
static void set_model(aoai_flow *flow, proxy_worker *worker)
{
    aoai_call *call = flow->call;
    const char *name = aoai_deployments_model_at(call, worker);
    json_t *body, *model;

    if (!call->route.by_model) {
        return;
    }
    name = name ? name : call->route.name;
    body = aoai_kept_body_json(flow->r, flow->body);
    model = json_object_get(body, "model");
    if (body && (!json_is_string(model)
                 || strcmp(json_string_value(model), name))) {
        json_object_set_new(body, "model", json_string(name));
        aoai_kept_body_changed(flow->r, flow->body);
    }
}

/* A member picked and made ready for this call: OK, AOAI_NEXT_MEMBER when
 * it cannot be sent the call, DECLINED when every member left is in error,
 * or mod_proxy's refusal. */
static int start_attempt(aoai_flow *flow, proxy_worker **worker, char **url)
{
    aoai_call *call = flow->call;
    request_rec *r = flow->r;
    int rc;

    *worker = NULL;
    *url = apr_pstrdup(r->pool, flow->uri);
    rc = ap_proxy_pre_request(worker, &flow->attempt_balancer, r,
                              flow->proxy_conf, url);
    if (rc != OK) {
        if (rc == HTTP_SERVICE_UNAVAILABLE && !*worker) {
            return DECLINED;    /* members left, all of them in error */
        }
        if (*worker) {
            ap_proxy_post_request(*worker, flow->attempt_balancer, r,
                                  flow->proxy_conf);
        }
        return rc;
    }
    ap_proxy_initialize_worker(*worker, r->server, flow->proxy_conf->pool);
    *url = aoai_deployments_url(call, *worker, *url);
    APR_ARRAY_PUSH(call->picks.tried, proxy_worker *) = *worker;
    call->attempt.number++;
    if ((call->conf->keys || call->conf->credentials)
        && !credential_applied(call, *worker)) {
        /* Without its credential the member would only say 401: a failed
         * attempt that never reached it. */
        post_request_as(r, *worker, flow->attempt_balancer, flow->proxy_conf,
                        HTTP_SERVICE_UNAVAILABLE);
        return AOAI_NEXT_MEMBER;
    }
    call->attempt.worker = *worker;
    call->attempt.failed_status = call->attempt.broke = 0;
    call->attempt.answered = call->attempt.sent = 0;
    call->attempt.held = NULL;
    set_model(flow, *worker);
    aoai_realtime_attempt(r, call);
    aoai_kept_body_replay(r, flow->body);
    if (call->attempt.number > 1) {
        restore_response(r, &flow->saved);
    }
    return OK;
}

/* The balancer's post_request sees what the member did; failonstatus and
 * failontimeout judge the member by that, not by what the client sees. */
static void release_member(aoai_flow *flow, proxy_worker *worker,
                           aoai_outcome outcome, int access_status)
{
    request_rec *r = flow->r;

    if (outcome == AOAI_OUTCOME_ANSWERED) {
        post_request_as(r, worker, flow->attempt_balancer, flow->proxy_conf,
                        flow->call->attempt.failed_status);
    }
    else if (access_status == OK || access_status == DONE) {
        ap_proxy_post_request(worker, flow->attempt_balancer, r,
                              flow->proxy_conf);
    }
    else {
        post_request_as(r, worker, flow->attempt_balancer, flow->proxy_conf,
                        access_status);
    }
}

/* The attempt is over: the handler's result, or AOAI_NEXT_MEMBER. */
static int finish_attempt(aoai_flow *flow, proxy_worker *worker,
                          int access_status)
{
    aoai_call *call = flow->call;
    request_rec *r = flow->r;
    aoai_outcome outcome = classify(call, access_status);
    const char *label = aoai_balancers_label(worker);

    if (outcome == AOAI_OUTCOME_CONNECTION) {
        note_tls_failure(r, call->balancer, worker);
    }
    release_member(flow, worker, outcome, access_status);
    if (outcome == AOAI_OUTCOME_DONE) {
        if (access_status == DECLINED) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, AOAI_LOGNO(025)
                          "%s: no scheme handler for member %s; is "
                          "mod_proxy_http (or mod_ssl for https) loaded?",
                          call->balancer->s->name, label);
            access_status = HTTP_INTERNAL_SERVER_ERROR;
        }
        note_result(r, call, call->passed ? label : NULL);
        if (call->passed) {
            note_served(r, call);
            aoai_objects_settle(r, call);
        }
        return access_status;
    }
    if (outcome != AOAI_OUTCOME_ANSWERED
        && !transport_failover(call->conf, outcome)) {
        /* The admin chose not to fail over on this; still answer in the
         * shape clients parse. */
        int status = (outcome == AOAI_OUTCOME_TIMEOUT)
                     ? HTTP_GATEWAY_TIME_OUT : HTTP_BAD_GATEWAY;
        note_result(r, call, NULL);
        restore_response(r, &flow->saved);
        return aoai_answers_azure(r, status, apr_itoa(r->pool, status),
                                  "The backend deployment did not answer.");
    }
    flow->last_failure_status = (outcome == AOAI_OUTCOME_ANSWERED)
                                ? call->attempt.failed_status
                                : (outcome == AOAI_OUTCOME_TIMEOUT)
                                  ? HTTP_GATEWAY_TIME_OUT : HTTP_BAD_GATEWAY;
    aoai_table_count(aoai_table_member(call->balancer, worker),
                     AOAI_COUNT_FAILOVERS, 1);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(026)
                  "%s: member %s failed (%s%d); trying the next member",
                  call->balancer->s->name, label,
                  outcome == AOAI_OUTCOME_ANSWERED ? "answered "
                  : outcome == AOAI_OUTCOME_TIMEOUT ? "timeout, "
                  : "connection, ", flow->last_failure_status);
    return AOAI_NEXT_MEMBER;
}

/* One member after another until one answers the client; DECLINED when
 * none is left. */
static int run_attempts(aoai_flow *flow)
{
    aoai_call *call = flow->call;

    for (;;) {
        proxy_worker *worker;
        char *url;
        int rc;

        if (!aoai_lbmethod_any_candidate(call, apr_time_now())) {
            return DECLINED;
        }
        rc = start_attempt(flow, &worker, &url);
        if (rc == AOAI_NEXT_MEMBER) {
            continue;
        }
        if (rc != OK) {
            return rc;
        }
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, flow->r, AOAI_LOGNO(024)
                      "%s: attempt %d on member %s", call->balancer->s->name,
                      call->attempt.number, aoai_balancers_label(worker));
        aoai_request_attempt_begin(call);
        rc = proxy_run_scheme_handler(flow->r, worker, flow->proxy_conf, url,
                                      NULL, 0);
        aoai_request_attempt_end(call);
        rc = finish_attempt(flow, worker, rc);
        if (rc != AOAI_NEXT_MEMBER) {
            return rc;
        }
    }
}

/* ------------------------------------------------------------------ */
/* Before any member: each phase lets the call go on (DECLINED) or      */
/* answers it                                                           */

static int phase_front_door(aoai_flow *flow)
{
    aoai_call *call = flow->call;
    request_rec *r = flow->r;
    const char *label, *why;
    int rc;

    if (call->conf->keys) {
        rc = aoai_front_door_check_key(r, call->conf, &label, &why);
        if (rc != OK) {
            aoai_front_door_scrub(r, call->conf, &flow->uri);
            r->connection->keepalive = AP_CONN_CLOSE;   /* body unread */
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(027)
                          "%s: refusing a call without a valid subscription "
                          "key", call->balancer->s->name);
            return aoai_answers_apim(r, rc, why);
        }
        apr_table_setn(r->subprocess_env, "AOAI_KEY_LABEL", label);
        apr_table_setn(r->notes, "aoai-key-label", label);
        call->key_label = label;
    }
    if (call->conf->keys || call->conf->credentials) {
        aoai_front_door_scrub(r, call->conf, &flow->uri);
    }
    return DECLINED;
}

static int phase_keep_body(aoai_flow *flow)
{
    aoai_call *call = flow->call;
    request_rec *r = flow->r;
    const char *why = NULL;
    int rc = aoai_kept_body_read(r, call->conf->max_body, &flow->body, &why);

    if (rc != OK) {
        if (rc == HTTP_REQUEST_ENTITY_TOO_LARGE) {
            /* Unread bytes would be taken for the next request. */
            r->connection->keepalive = AP_CONN_CLOSE;
        }
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(023)
                      "%s: refusing request before any member: %s",
                      call->balancer->s->name, why);
        return aoai_answers_azure(r, rc, apr_itoa(r->pool, rc), why);
    }
    call->handshake_timeout = call->conf->first_byte_timeout;
    if (call->conf->first_byte_timeout
        && (call->conf->first_byte_all
            || aoai_kept_body_streamed(flow->body))) {
        call->first_byte_timeout = call->conf->first_byte_timeout;
    }
    return DECLINED;
}

/* The body's "model", a string at its top; NULL when there is none. */
static const char *model_of(aoai_flow *flow)
{
    const char *value;
    apr_size_t length;
    json_t *model;

    if (!aoai_kept_body_field(flow->body, AOAI_BODY_MODEL, &value, &length)
        || *value != '"') {
        return NULL;
    }
    model = aoai_json_own(flow->r->pool, json_loadb(value, length,
                                                    JSON_DECODE_ANY, NULL));
    return json_is_string(model) && *json_string_value(model)
           ? apr_pstrdup(flow->r->pool, json_string_value(model)) : NULL;
}

static int phase_route(aoai_flow *flow)
{
    aoai_call *call = flow->call;
    const char *model = NULL;

    if (aoai_deployments_by_model(flow->r, flow->uri)
        && !(model = model_of(flow))) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, flow->r, AOAI_LOGNO(063)
                      "%s: refusing a call that names no model",
                      call->balancer->s->name);
        return aoai_answers_azure(flow->r, HTTP_BAD_REQUEST,
                                  "missing_required_parameter",
                                  "Missing required parameter: 'model'.");
    }
    if (aoai_deployments_route(call, flow->uri, model) == OK) {
        return DECLINED;
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, flow->r, AOAI_LOGNO(048)
                  "%s: no member serves deployment %s",
                  call->balancer->s->name, call->route.name);
    return aoai_answers_azure(flow->r, HTTP_NOT_FOUND, "DeploymentNotFound",
                              "The API deployment for this resource does "
                              "not exist. If you created the deployment "
                              "within the last 5 minutes, please wait a "
                              "moment and try again.");
}

static int phase_realtime(aoai_flow *flow)
{
    if (aoai_realtime_check(flow->r, flow->call, flow->uri) == DECLINED) {
        return DECLINED;
    }
    return aoai_answers_azure(flow->r, HTTP_BAD_REQUEST, "BadRequest",
                              "The Realtime API is a WebSocket: open it "
                              "with a GET that asks to upgrade.");
}

static int phase_operations(aoai_flow *flow)
{
    if (aoai_operations_allow(flow->r, flow->call->conf->operations,
                              flow->uri)) {
        return DECLINED;
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, flow->r, AOAI_LOGNO(064)
                  "%s: %s %s is not an operation AOAIOperations lists",
                  flow->call->balancer->s->name, flow->r->method, flow->uri);
    return aoai_answers_azure(flow->r, HTTP_NOT_FOUND, "404",
                              "Resource not found");
}

static int phase_objects(aoai_flow *flow)
{
    aoai_call *call = flow->call;
    json_t *body = NULL;
    const char *why;

    if (aoai_objects_scan_path(call, flow->uri)) {
        body = aoai_kept_body_json(flow->r, flow->body);
    }
    if (aoai_objects_route(call, body, &why) == OK) {
        return DECLINED;
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, flow->r, AOAI_LOGNO(065)
                  "%s: refusing a call naming objects of two members: %s",
                  call->balancer->s->name, why);
    return aoai_answers_azure(flow->r, HTTP_BAD_REQUEST,
                              "invalid_request_error", why);
}

/* The completion the body asks for at most, from the walk that found its
 * other fields. */
static apr_int64_t asked_of(aoai_kept_body *body)
{
    static const aoai_body_field bounds[3] = {
        AOAI_BODY_MAX_TOKENS, AOAI_BODY_MAX_COMPLETION_TOKENS,
        AOAI_BODY_MAX_OUTPUT_TOKENS
    };
    const char *values[3];
    apr_size_t lengths[3];
    int k;

    for (k = 0; k < 3; k++) {
        if (!aoai_kept_body_field(body, bounds[k], &values[k], &lengths[k])) {
            values[k] = NULL;
            lengths[k] = 0;
        }
    }
    return aoai_usage_asked(values, lengths);
}

static int phase_charge(aoai_flow *flow)
{
    aoai_call *call = flow->call;
    const aoai_key_quota *quota = aoai_key_quota_for(call->conf,
                                                     call->key_label);
    apr_int64_t remaining;
    apr_interval_time_t wait;

    if (quota || !call->conf->headroom_floor[AOAI_HEADROOM_TOKENS].off) {
        aoai_key_quota_estimate_from(call, flow->body->length,
                                     asked_of(flow->body));
    }
    if (!quota || aoai_key_quota_take(call, quota, apr_time_now(),
                                      &remaining, &wait)) {
        return DECLINED;
    }
    note_result(flow->r, call, NULL);
    return aoai_answers_over_quota(call, quota, remaining, wait);
}

typedef int (aoai_phase_fn)(aoai_flow *flow);

static aoai_phase_fn *const before_members[] = {
    phase_operations, phase_front_door, phase_realtime, phase_keep_body,
    phase_route, phase_objects, phase_charge
};

/* ------------------------------------------------------------------ */
/* The handler                                                          */

/* The call this request is when it goes to an aoai balancer; else NULL. */
static aoai_call *call_for(request_rec *r, aoai_flow *flow)
{
    proxy_balancer *balancer;

    if (r->proxyreq != PROXYREQ_REVERSE || !r->filename
        || strncmp(r->filename, "proxy:balancer://", 17) != 0) {
        return NULL;
    }
    memset(flow, 0, sizeof(*flow));
    flow->r = r;
    flow->uri = r->filename + 6;
    flow->proxy_conf = ap_get_module_config(r->server->module_config,
                                            &proxy_module);
    balancer = ap_proxy_get_balancer(r->pool, flow->proxy_conf, flow->uri, 1);
    if (!balancer || !aoai_balancers_is_aoai(balancer)) {
        return NULL;
    }
    flow->call = aoai_request_start(r, balancer, ap_get_module_config(
        r->per_dir_config, &aoai_balancer_module));
    return flow->call;
}

static int aoai_proxy_handler(request_rec *r)
{
    aoai_flow flow;
    aoai_call *call = call_for(r, &flow);
    apr_size_t i;
    int rc = DECLINED;

    if (!call) {
        return DECLINED;
    }
    for (i = 0; rc == DECLINED && i < sizeof(before_members)
                                       / sizeof(before_members[0]); i++) {
        rc = before_members[i](&flow);
    }
    if (rc != DECLINED) {
        return rc;
    }
    ap_add_output_filter_handle(failover_filter_handle, NULL, r,
                                r->connection);
    save_response(r, &flow.saved);
    rc = run_attempts(&flow);
    if (rc == DECLINED) {
        restore_response(r, &flow.saved);
        note_result(r, call, NULL);
        rc = aoai_answers_exhausted(call, flow.last_failure_status);
    }
    aoai_key_quota_settle(call, !call->passed ? NULL
                                : call->session.open
                                  ? (call->session.usage_found
                                     ? &call->session.usage : NULL)
                                  : aoai_metering_result(call));
    aoai_kept_body_done(flow.body);
    proxy_run_request_status(&rc, r);
    return rc;
}

void aoai_failover_register_hooks(apr_pool_t *p)
{
    static const char *const run_before[] = { "mod_proxy.c", NULL };

    (void)p;
    ap_hook_handler(aoai_proxy_handler, NULL, run_before, APR_HOOK_FIRST);
    failover_filter_handle =
        ap_register_output_filter(FAILOVER_FILTER, failover_filter, NULL,
                                  AP_FTYPE_RESOURCE);
}
