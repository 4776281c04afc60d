/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_objects: stored objects (responses, files, assistants, threads,
 * vector stores, batches, fine-tuning jobs, uploads) exist only in the
 * resource that made them.  A call that names one goes to the member that
 * holds it; an answer that makes one records where it lives.
 */

#ifndef AOAI_OBJECTS_H
#define AOAI_OBJECTS_H

#include "httpd.h"
#include "mod_proxy.h"

#include <jansson.h>

#include "aoai_request.h"

/* From the member URI (balancer://name/openai/...): the ids its path
 * names, whether a DELETE removes one, and whether its body can name ids
 * too: 1 when the caller should hand the body to aoai_objects_route(). */
int aoai_objects_scan_path(aoai_call *call, const char *uri);

/* The ids the body names (body may be NULL), then where they live: the
 * owner, or probing when one is unknown.  OK, or HTTP_BAD_REQUEST with
 * *why when the ids live in two members. */
int aoai_objects_route(aoai_call *call, json_t *body, const char **why);

/* Whether the member's answer says "no such object" to a call that is
 * asking the members in turn: moving on is safe, nothing was made. */
int aoai_objects_not_found(const aoai_call *call, int status,
                           const char *code);

/* The 2xx answer that goes to the client: its start is kept (bounded)
 * when it may have made an object, to read the object's id. */
void aoai_objects_answer(request_rec *r, aoai_call *call);
void aoai_objects_feed(request_rec *r, aoai_call *call,
                       apr_bucket_brigade *bb);
/* The answer is over and it was a success: the object it made, and the
 * ids it was asked about, live with its member; a deleted one is gone. */
void aoai_objects_settle(request_rec *r, aoai_call *call);

/* For the status pages: ids recorded now, and room for them. */
void aoai_objects_usage(int *recorded, int *capacity);

const char *aoai_objects_set_affinity(cmd_parms *cmd, void *dconf, int on);
const char *aoai_objects_set_lifetime(cmd_parms *cmd, void *dconf,
                                      const char *arg);
const char *aoai_objects_set_table_size(cmd_parms *cmd, void *dummy,
                                        const char *arg);
int aoai_objects_post_config(server_rec *s);

#endif /* AOAI_OBJECTS_H */
