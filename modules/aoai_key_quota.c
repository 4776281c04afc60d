/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Tokens per minute per subscription key: AOAIKeyTokensPerMinute, as API
 * Management's azure-openai-token-limit with the subscription as counter.
 *
 * Each key's minute is a fixed window in a shared slot, opened by its
 * first call.  A call takes its token estimate (aoai_token_estimate) up
 * front, so that a burst of calls cannot all pass on the same count; when
 * the answer's usage is read, the estimate is replaced by what the member
 * counted, and a call no member served gives its estimate back.  A key
 * whose estimate does not fit gets 429 from the gateway, with Retry-After
 * for the end of its minute, and no member is called.
 */

#include "aoai_balancer.h"

#include "apr_atomic.h"

APLOG_USE_MODULE(aoai_balancer);

/* A key's own line wins over the line for every key. */
const aoai_key_quota *aoai_key_quota_for(const aoai_dir_conf *conf,
                                         const char *label)
{
    const aoai_key_quota *every = NULL;
    int i;

    if (!conf->key_quotas || !label) {
        return NULL;
    }
    for (i = 0; i < conf->key_quotas->nelts; i++) {
        const aoai_key_quota *quota = &APR_ARRAY_IDX(conf->key_quotas, i,
                                                     aoai_key_quota);
        if (!quota->label) {
            every = quota;
        }
        else if (!strcmp(quota->label, label)) {
            return quota;
        }
    }
    return every;
}

/* Opens a new minute when the last one is over.  A call that adds to the
 * old minute just as another opens the new one may be lost from the count:
 * the limit can be overshot by one call's estimate at a minute's edge. */
static apr_time_t current_window(aoai_quota_shared *quota, apr_time_t now)
{
    apr_uint64_t start = apr_atomic_read64(&quota->window_start);

    if (start && now < (apr_time_t)start + AOAI_KEY_QUOTA_WINDOW) {
        return (apr_time_t)start;
    }
    if (apr_atomic_cas64(&quota->window_start, (apr_uint64_t)now, start)
        == start) {
        apr_atomic_set64(&quota->used, 0);
        return now;
    }
    return (apr_time_t)apr_atomic_read64(&quota->window_start);
}

/* Returns 1 when the call may go on, its estimate counted; 0 when the key
 * is over its limit, with what it has left and how long until its next
 * minute. */
int aoai_key_quota_take(request_rec *r, aoai_request_state *state,
                        const aoai_key_quota *limit, apr_time_t now,
                        apr_int64_t *remaining, apr_interval_time_t *wait)
{
    aoai_quota_shared *quota = aoai_key_quota_shared(state->key_label);
    apr_time_t window;

    if (!quota) {
        static int table_full_logged;
        if (!table_full_logged) {
            table_full_logged = 1;
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, AOAI_LOGNO(047)
                          "the shared table has no free slot for the token "
                          "quota of subscription key %s: it is not "
                          "enforced; raise AOAIThrottleTableSize",
                          state->key_label);
        }
        return 1;
    }
    window = current_window(quota, now);
    for (;;) {
        apr_uint64_t used = apr_atomic_read64(&quota->used);
        apr_int64_t left = limit->tokens_per_minute - (apr_int64_t)used;

        if (state->token_estimate > left) {
            *remaining = left > 0 ? left : 0;
            *wait = window + AOAI_KEY_QUOTA_WINDOW - now;
            return 0;
        }
        if (apr_atomic_cas64(&quota->used,
                             used + (apr_uint64_t)state->token_estimate,
                             used) == used) {
            *remaining = left - state->token_estimate;
            state->quota_remaining = *remaining;
            break;
        }
    }
    state->quota = quota;
    state->quota_window = window;
    return 1;
}

/* The call is over: the estimate becomes what the member counted, or is
 * given back when no member served it.  A call that ends in the next
 * minute leaves the new minute alone. */
void aoai_key_quota_settle(aoai_request_state *state, const aoai_usage *usage)
{
    apr_int64_t correction;

    if (!state->quota
        || (apr_time_t)apr_atomic_read64(&state->quota->window_start)
           != state->quota_window) {
        return;
    }
    if (!state->passed) {
        correction = -state->token_estimate;
    }
    else if (usage) {
        correction = usage->total_tokens - state->token_estimate;
    }
    else {
        return;     /* served, usage unreadable: the estimate stands */
    }
    apr_atomic_add64(&state->quota->used, (apr_uint64_t)correction);
    state->quota = NULL;
}
