/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_metering: the tokens of the answer that went to the client, read as
 * it passes (aoai_usage.c does the reading, aoai_inflate.c undoes gzip),
 * for the counters, the log fields and the key's quota.
 */

#ifndef AOAI_METERING_H
#define AOAI_METERING_H

#include "httpd.h"

#include "aoai_request.h"
#include "aoai_usage.h"

/* The answer is going to the client, its status and headers set: 1 when
 * its bytes are to be metered (handed to aoai_metering_feed()). */
int aoai_metering_start(request_rec *r, aoai_call *call);
/* A brigade of the answer on its way to the client. */
void aoai_metering_feed(request_rec *r, aoai_call *call,
                        apr_bucket_brigade *bb);
/* The answer is over: its tokens, the member's usage or, for a stream
 * without one, its prompt estimated and its completion counted (also set
 * for the access log as AOAI_PROMPT_TOKENS, ..., and where they come from
 * as AOAI_USAGE); NULL when there is no figure. */
const aoai_usage *aoai_metering_finish(request_rec *r, aoai_call *call);
/* A call's tokens for the access log: AOAI_PROMPT_TOKENS, ... and the
 * aoai-prompt-tokens, ... notes. */
void aoai_metering_log(request_rec *r, const aoai_usage *usage);
/* What aoai_metering_finish() found, or NULL. */
const aoai_usage *aoai_metering_result(const aoai_call *call);

#endif /* AOAI_METERING_H */
