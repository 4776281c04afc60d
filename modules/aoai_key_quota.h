/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_key_quota: tokens per minute per subscription key
 * (AOAIKeyTokensPerMinute), as API Management's azure-openai-token-limit.
 */

#ifndef AOAI_KEY_QUOTA_H
#define AOAI_KEY_QUOTA_H

#include "aoai_config.h"
#include "aoai_request.h"
#include "aoai_usage.h"

/* The limit that applies to this key: its own line, else the one for
 * every key; NULL when none does. */
const aoai_key_quota *aoai_key_quota_for(const aoai_dir_conf *conf,
                                         const char *label);
/* The call's cost before any member answers, from its body's length and
 * the completion it asks for (aoai_usage_asked(); 0: none): the prompt
 * and that completion (call->token_estimate), and what it is charged
 * should its answer give no figure (call->charge.unread). */
void aoai_key_quota_estimate_from(aoai_call *call, apr_size_t length,
                                  apr_int64_t asked);
/* 1 when the call's estimate fits and is charged; 0 with what the key has
 * left and how long until its next minute. */
int aoai_key_quota_take(aoai_call *call, const aoai_key_quota *limit,
                        apr_time_t now, apr_int64_t *remaining,
                        apr_interval_time_t *wait);
/* The call is over: the charge becomes what the member counted (or what
 * was counted of a stream without usage), the stated amount when an
 * answer that should have a figure gave none, or is given back when no
 * member served it.  AOAI_KEY_TOKENS says what was charged. */
void aoai_key_quota_settle(aoai_call *call, const aoai_usage *usage);

const char *aoai_key_quota_set(cmd_parms *cmd, void *dconf,
                               const char *tokens, const char *label);
const char *aoai_key_quota_set_unread(cmd_parms *cmd, void *dconf,
                                      const char *tokens);

#endif /* AOAI_KEY_QUOTA_H */
