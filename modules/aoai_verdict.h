/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_verdict: what a member's answer that is not a success means for the
 * call, before anything of it reaches the client: go to the client as it
 * is, or move the call on, and why.
 */

#ifndef AOAI_VERDICT_H
#define AOAI_VERDICT_H

#include "aoai_request.h"

typedef enum {
    AOAI_VERDICT_PASS,          /* the client's answer, as the member gave it */
    AOAI_VERDICT_FAILED,        /* listed in AOAIFailoverOn (429, 5xx...) */
    AOAI_VERDICT_CREDENTIAL,    /* 401/403: the gateway's credential for it */
    AOAI_VERDICT_NO_DEPLOYMENT, /* 404 DeploymentNotFound */
    AOAI_VERDICT_NOT_HERE       /* the objects asked about are not there */
} aoai_verdict;

/* Whether the verdict on this status needs the answer's error code
 * ({"error":{"code":...}}): the body is then held until it is whole. */
int aoai_verdict_needs_code(const aoai_call *call, int status);
aoai_verdict aoai_verdict_of(const aoai_call *call, int status,
                             const char *code);
/* The error code of an answer's JSON body, or NULL. */
const char *aoai_verdict_code(apr_pool_t *pool, const char *body,
                              apr_size_t length);

#endif /* AOAI_VERDICT_H */
