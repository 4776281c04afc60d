/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * A member's failed answer, classified before any failover.
 *
 *   400  the call itself (a content filter, context_length_exceeded, a bad
 *        request): every member would say the same.  It goes to the client
 *        unchanged and never counts against the member; AOAIFailoverOn
 *        cannot list it.  Only a call asking the members in turn for an
 *        object nobody knows moves on, on a "..._not_found" code.
 *   401, 403  the gateway's credential for that member is wrong or
 *        expired: another member may take the call (in the default
 *        AOAIFailoverOn list).
 *   404  DeploymentNotFound: that member lacks the deployment, another may
 *        have it; it moves on whatever the list says.  A call asking the
 *        members in turn for an object moves on on any 404.  Other 404s
 *        go by the list.
 *   429, 5xx  by AOAIFailoverOn (429 500 502 503 504 by default).
 */

#include "aoai_verdict.h"
#include "aoai_json.h"
#include "aoai_objects.h"

#include "apr_strings.h"

int aoai_verdict_needs_code(const aoai_call *call, int status)
{
    return status == HTTP_NOT_FOUND
           || (status == HTTP_BAD_REQUEST && call->objects.probing);
}

aoai_verdict aoai_verdict_of(const aoai_call *call, int status,
                             const char *code)
{
    if (status == HTTP_BAD_REQUEST) {
        return aoai_objects_not_found(call, status, code)
               ? AOAI_VERDICT_NOT_HERE : AOAI_VERDICT_PASS;
    }
    if (status == HTTP_NOT_FOUND) {
        if (code && !strcmp(code, "DeploymentNotFound")) {
            return AOAI_VERDICT_NO_DEPLOYMENT;
        }
        if (aoai_objects_not_found(call, status, code)) {
            return AOAI_VERDICT_NOT_HERE;
        }
    }
    if (!aoai_config_fails_over(call->conf, status)) {
        return AOAI_VERDICT_PASS;
    }
    return (status == HTTP_UNAUTHORIZED || status == HTTP_FORBIDDEN)
           ? AOAI_VERDICT_CREDENTIAL : AOAI_VERDICT_FAILED;
}

const char *aoai_verdict_code(apr_pool_t *pool, const char *body,
                              apr_size_t length)
{
    const char *value;
    apr_size_t value_length;
    json_t *error, *code;

    if (!aoai_json_top_level(body, length, "error", &value, &value_length)) {
        return NULL;
    }
    error = aoai_json_own(pool, json_loadb(value, value_length,
                                           JSON_DECODE_ANY, NULL));
    code = json_object_get(error, "code");
    return json_is_string(code) ? apr_pstrdup(pool, json_string_value(code))
                                : NULL;
}
