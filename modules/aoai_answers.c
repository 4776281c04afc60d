/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The answers the gateway writes itself.  A client of Azure OpenAI reads
 * errors as {"error":{"code":..,"message":..}} (the SDKs turn them into
 * exceptions with that code), and one of API Management reads what the
 * gateway refuses at its door (subscription keys, token limits) as
 * {"statusCode":..,"message":..}.  A 429 always says when to come back, in
 * Retry-After (seconds) and retry-after-ms, as Azure's own do.
 */

#include "aoai_answers.h"
#include "aoai_json.h"
#include "aoai_table.h"
#include "aoai_throttle.h"

#include "apr_strings.h"
#include "http_log.h"
#include "http_protocol.h"

APLOG_USE_MODULE(aoai_balancer);

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

int aoai_answers_azure(request_rec *r, int status, const char *code,
                       const char *message)
{
    return send_json(r, status, apr_psprintf(r->pool,
                     "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}\n",
                     aoai_json_escape(r->pool, code),
                     aoai_json_escape(r->pool, message)));
}

int aoai_answers_apim(request_rec *r, int status, const char *message)
{
    return send_json(r, status, apr_psprintf(r->pool,
                     "{\"statusCode\": %d, \"message\": \"%s\"}\n",
                     status, aoai_json_escape(r->pool, message)));
}

/* Retry-After in whole seconds (at least min_s) and retry-after-ms, both
 * rounded up; returns the seconds. */
static apr_int64_t set_retry_after(request_rec *r, apr_interval_time_t wait,
                                   apr_int64_t min_s)
{
    apr_int64_t wait_ms = (wait + 999) / 1000;
    apr_int64_t wait_s = (wait + APR_USEC_PER_SEC - 1) / APR_USEC_PER_SEC;

    if (wait_s < min_s) {
        wait_s = min_s;
    }
    apr_table_setn(r->err_headers_out, "Retry-After",
                   apr_psprintf(r->pool, "%" APR_INT64_T_FMT, wait_s));
    apr_table_setn(r->err_headers_out, "retry-after-ms",
                   apr_psprintf(r->pool, "%" APR_INT64_T_FMT, wait_ms));
    return wait_s;
}

/* When a member that could take the call is back: the member holding the
 * call's objects, when it names some, else the soonest of them all. */
static apr_time_t back_at(aoai_call *call, apr_time_t now)
{
    apr_time_t end;

    if (!call->objects.owner) {
        return aoai_throttle_soonest_end(call->balancer, now);
    }
    end = aoai_table_window_end(aoai_table_member(call->balancer,
                                                  call->objects.owner));
    return end > now ? end : 0;
}

int aoai_answers_exhausted(aoai_call *call, int last_failure_status)
{
    request_rec *r = call->r;
    apr_time_t now = apr_time_now();
    apr_time_t soonest = back_at(call, now);
    apr_int64_t wait_s = soonest ? set_retry_after(r, soonest - now, 0) : 0;
    const char *message;
    int status;

    if (call->objects.probing && soonest
        && call->picks.skipped_throttled->nelts) {
        /* Not found where asked; a member in a window may hold it. */
        last_failure_status = 0;
    }
    if (last_failure_status == HTTP_TOO_MANY_REQUESTS
        || (!last_failure_status && soonest)) {
        status = HTTP_TOO_MANY_REQUESTS;
        message = apr_psprintf(r->pool, "Every backend deployment behind "
                               "this gateway is rate limited. Please retry "
                               "after %" APR_INT64_T_FMT " seconds.", wait_s);
    }
    else if (last_failure_status && last_failure_status < 500) {
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
                  "answering %d", call->balancer->s->name,
                  call->attempt.number, call->picks.skipped_throttled->nelts,
                  status);
    return aoai_answers_azure(r, status, apr_itoa(r->pool, status), message);
}

int aoai_answers_over_quota(aoai_call *call, const aoai_key_quota *quota,
                            apr_int64_t remaining, apr_interval_time_t wait)
{
    request_rec *r = call->r;
    apr_int64_t wait_s = set_retry_after(r, wait, 1);

    apr_table_setn(r->err_headers_out, "x-ratelimit-remaining-tokens",
                   apr_psprintf(r->pool, "%" APR_INT64_T_FMT, remaining));
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(049)
                  "%s: subscription key %s is over its %" APR_INT64_T_FMT
                  " tokens per minute (this call: about %" APR_INT64_T_FMT
                  ", left: %" APR_INT64_T_FMT "); answering 429",
                  call->balancer->s->name, call->key_label,
                  quota->tokens_per_minute, call->token_estimate, remaining);
    return aoai_answers_apim(r, HTTP_TOO_MANY_REQUESTS, apr_psprintf(r->pool,
                             "Token limit is exceeded. Try again in %"
                             APR_INT64_T_FMT " seconds.", wait_s));
}
