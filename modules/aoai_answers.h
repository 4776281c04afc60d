/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_answers: what the gateway itself answers, in the shapes clients
 * parse: Azure OpenAI's {"error":{"code","message"}} for what a member
 * would have said, API Management's {"statusCode","message"} for what the
 * gateway refuses at its door.  Each writes the whole answer and returns
 * OK, so that ErrorDocument does not replace a body an SDK reads.
 */

#ifndef AOAI_ANSWERS_H
#define AOAI_ANSWERS_H

#include "httpd.h"

#include "aoai_config.h"
#include "aoai_request.h"

int aoai_answers_azure(request_rec *r, int status, const char *code,
                       const char *message);
int aoai_answers_apim(request_rec *r, int status, const char *message);

/* No member is left: 429 with the soonest window's Retry-After when a
 * member is throttled or the last one said 429; the last member's 4xx;
 * else 503. */
int aoai_answers_exhausted(aoai_call *call, int last_failure_status);

/* The key is over AOAIKeyTokensPerMinute (azure-openai-token-limit). */
int aoai_answers_over_quota(aoai_call *call, const aoai_key_quota *quota,
                            apr_int64_t remaining, apr_interval_time_t wait);

#endif /* AOAI_ANSWERS_H */
