/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Tokens per minute per subscription key: AOAIKeyTokensPerMinute, as API
 * Management's azure-openai-token-limit with the subscription as counter.
 *
 * Each key's minute is a fixed window in a shared slot, opened by its
 * first call.  A call takes its token estimate (aoai_key_quota_estimate_from) up
 * front, so that a burst of calls cannot all pass on the same count; when
 * the answer's usage is read, the estimate is replaced by what the member
 * counted, and a call no member served gives its estimate back.
 *
 * No figure, no free pass: a stream without usage is counted from its
 * deltas (aoai_usage.c), and a call whose answer should carry usage but
 * gives none that can be read (an encoding the gateway cannot undo, a
 * body without it) is charged a stated amount: its prompt and its
 * max_tokens, or AOAIKeyTokensUnread tokens of completion when it named
 * no bound.  Never its prompt alone.  A key
 * whose estimate does not fit gets 429 from the gateway, with Retry-After
 * for the end of its minute, and no member is called.
 */

#include "aoai_key_quota.h"

#include "apr_atomic.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include "http_log.h"

#include <errno.h>

APLOG_USE_MODULE(aoai_balancer);

#define AOAI_KEY_QUOTA_WINDOW apr_time_from_sec(60)

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

void aoai_key_quota_estimate_from(aoai_call *call, apr_size_t length,
                                  apr_int64_t asked)
{
    apr_int64_t prompt = aoai_usage_prompt_estimate((apr_off_t)length);

    call->token_estimate = prompt + asked;
    call->charge.unread = prompt + (asked ? asked
                                          : call->conf->key_tokens_unread);
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
int aoai_key_quota_take(aoai_call *call, const aoai_key_quota *limit,
                        apr_time_t now, apr_int64_t *remaining,
                        apr_interval_time_t *wait)
{
    aoai_quota_shared *quota = aoai_table_key_quota(call->key_label);
    apr_time_t window;

    if (!quota) {
        static int table_full_logged;
        if (!table_full_logged) {
            table_full_logged = 1;
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, call->r,
                          AOAI_LOGNO(047)
                          "the shared table has no free slot for the token "
                          "quota of subscription key %s: it is not "
                          "enforced; raise AOAIThrottleTableSize",
                          call->key_label);
        }
        return 1;
    }
    window = current_window(quota, now);
    for (;;) {
        apr_uint64_t used = apr_atomic_read64(&quota->used);
        apr_int64_t left = limit->tokens_per_minute - (apr_int64_t)used;

        if (call->token_estimate > left) {
            *remaining = left > 0 ? left : 0;
            *wait = window + AOAI_KEY_QUOTA_WINDOW - now;
            return 0;
        }
        if (apr_atomic_cas64(&quota->used,
                             used + (apr_uint64_t)call->token_estimate,
                             used) == used) {
            *remaining = left - call->token_estimate;
            break;
        }
    }
    call->charge.shared = quota;
    call->charge.remaining = *remaining;
    call->charge.window = window;
    return 1;
}

/* The call is over: the estimate becomes what the member counted, or is
 * given back when no member served it.  A call that ends in the next
 * minute leaves the new minute alone. */
void aoai_key_quota_settle(aoai_call *call, const aoai_usage *usage)
{
    aoai_charge *charge = &call->charge;
    apr_int64_t charged = call->token_estimate;

    if (!charge->shared) {
        return;
    }
    if (!call->passed) {
        charged = 0;
    }
    else if (usage) {
        charged = usage->total_tokens;
    }
    else if (call->usage && call->usage->expected) {
        charged = charge->unread;   /* no figure: the stated amount */
    }
    apr_table_setn(call->r->subprocess_env, "AOAI_KEY_TOKENS",
                   apr_psprintf(call->r->pool, "%" APR_INT64_T_FMT, charged));
    if ((apr_time_t)apr_atomic_read64(&charge->shared->window_start)
        == charge->window) {
        apr_atomic_add64(&charge->shared->used,
                         (apr_uint64_t)(charged - call->token_estimate));
    }
    charge->shared = NULL;
}

static const char *parse_tokens(cmd_parms *cmd, const char *tokens,
                                apr_int64_t *out)
{
    char *end;

    errno = 0;
    *out = apr_strtoi64(tokens, &end, 10);
    if (!apr_isdigit(*tokens) || *end || errno == ERANGE || *out < 1
        || *out > APR_INT64_C(1000000000000)) {
        return apr_psprintf(cmd->pool, "%s: '%s' is not a number of tokens "
                            "(1 to 1000000000000)", cmd->cmd->name, tokens);
    }
    return NULL;
}

/* AOAIKeyTokensUnread tokens */
const char *aoai_key_quota_set_unread(cmd_parms *cmd, void *dconf,
                                      const char *tokens)
{
    aoai_dir_conf *conf = dconf;
    const char *error = parse_tokens(cmd, tokens, &conf->key_tokens_unread);

    conf->key_tokens_unread_set = !error;
    return error;
}

/* AOAIKeyTokensPerMinute tokens [label] */
const char *aoai_key_quota_set(cmd_parms *cmd, void *dconf,
                               const char *tokens, const char *label)
{
    aoai_dir_conf *conf = dconf;
    aoai_key_quota *quota;
    apr_int64_t limit;
    const char *error = parse_tokens(cmd, tokens, &limit);
    int i;

    if (error) {
        return error;
    }
    if (!conf->key_quotas) {
        conf->key_quotas = apr_array_make(cmd->pool, 4, sizeof(*quota));
    }
    for (i = 0; i < conf->key_quotas->nelts; i++) {
        const char *seen = APR_ARRAY_IDX(conf->key_quotas, i,
                                         aoai_key_quota).label;
        if ((!seen && !label) || (seen && label && !strcmp(seen, label))) {
            return apr_psprintf(cmd->pool, "AOAIKeyTokensPerMinute: %s "
                                "already has a limit here",
                                label ? label : "every key");
        }
    }
    quota = apr_array_push(conf->key_quotas);
    quota->label = label;
    quota->tokens_per_minute = limit;
    return NULL;
}
