/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_kept_body: the request body read once and replayed to each member
 * asked (mod_request's KEEP_BODY / KEPT_BODY, for a call's attempts).
 */

#ifndef AOAI_KEPT_BODY_H
#define AOAI_KEPT_BODY_H

#include "httpd.h"
#include "util_filter.h"

#include "aoai_json.h"

#include <jansson.h>

/* The top-level fields of a request body the gateway reads (the stream
 * flag, the v1 API's model, the completion budget), found in one walk. */
typedef enum {
    AOAI_BODY_STREAM,
    AOAI_BODY_MODEL,
    AOAI_BODY_MAX_TOKENS,
    AOAI_BODY_MAX_COMPLETION_TOKENS,
    AOAI_BODY_MAX_OUTPUT_TOKENS,
    AOAI_BODY_FIELDS
} aoai_body_field;

typedef struct {
    const char *data;              /* as the client sent it */
    apr_size_t length;
    const char *send;              /* what the next replay sends */
    apr_size_t send_length;
    apr_size_t offset;             /* replayed so far */
    ap_filter_t *filter;           /* the replay, while it is in place */
    json_t *json;                  /* parsed, once asked for */
    int parsed;                    /* json holds the answer, NULL or not */
    int walked;                    /* fields hold the answer */
    aoai_json_field fields[AOAI_BODY_FIELDS];
} aoai_kept_body;

/* Reads the client's body, at most max_body bytes: OK and *out, or the
 * status the client earned (413, 400, 408...) with *why for it. */
int aoai_kept_body_read(request_rec *r, apr_off_t max_body,
                        aoai_kept_body **out, const char **why);
/* From the start, for the next member, with its Content-Length. */
void aoai_kept_body_replay(request_rec *r, aoai_kept_body *kept);
/* The body as a JSON object, parsed once and owned by the request's pool;
 * NULL when it is not one.  A caller may change it, then call
 * aoai_kept_body_changed() for the change to be what members are sent. */
json_t *aoai_kept_body_json(request_rec *r, aoai_kept_body *kept);
void aoai_kept_body_changed(request_rec *r, aoai_kept_body *kept);
void aoai_kept_body_done(aoai_kept_body *kept);
/* A top-level field of the client's body as JSON text (a string keeps
 * its quotes): 1 and *value, or 0 when absent or the body is no object. */
int aoai_kept_body_field(aoai_kept_body *kept, aoai_body_field field,
                         const char **value, apr_size_t *length);
/* Whether the body asks for a stream ("stream": true). */
int aoai_kept_body_streamed(aoai_kept_body *kept);
void aoai_kept_body_register_hooks(apr_pool_t *p);

#endif /* AOAI_KEPT_BODY_H */
