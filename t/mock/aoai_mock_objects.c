/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The API beyond /openai/deployments/{name}/...: the GA v1 API under
 * /openai/v1/ (inference with the deployment in the body's "model", the
 * model list) and the stateful APIs in both their forms, /openai/... (with
 * ?api-version=) and /openai/v1/...: responses, files, assistants,
 * threads, vector stores, batches, fine-tuning jobs.  This file routes
 * and answers the generic calls (get, list, delete, cancel), files,
 * batches and fine-tuning jobs; aoai_mock_assistants.c the rest.
 */

#include "aoai_mock.h"

#include "http_protocol.h"
#include "apr_strings.h"

#define MAX_SEGMENTS 6

typedef struct {
    int method;
    const char *pattern;       /* segments; "*" is an id */
    mock_api_fn fn;
    int kind;
    int v1_only;
} api_route;

static int list_models(mock_call *c, const char *const *ids, int kind);
static int v1_inference(mock_call *c, const char *const *ids, int kind);
static int create_response(mock_call *c, const char *const *ids, int kind);
static int get_object(mock_call *c, const char *const *ids, int kind);
static int delete_object(mock_call *c, const char *const *ids, int kind);
static int list_objects(mock_call *c, const char *const *ids, int kind);
static int cancel_object(mock_call *c, const char *const *ids, int kind);
static int upload_file(mock_call *c, const char *const *ids, int kind);
static int file_content(mock_call *c, const char *const *ids, int kind);
static int create_batch(mock_call *c, const char *const *ids, int kind);
static int create_ftjob(mock_call *c, const char *const *ids, int kind);

static const api_route routes[] = {
    { M_GET, "models", list_models, 0, 0 },
    { M_POST, "chat/completions", v1_inference, 0, 1 },
    { M_POST, "completions", v1_inference, 0, 1 },
    { M_POST, "embeddings", v1_inference, 0, 1 },
    { M_POST, "responses", create_response, 0, 0 },
    { M_GET, "responses/*", get_object, K_RESPONSE, 0 },
    { M_DELETE, "responses/*", delete_object, K_RESPONSE, 0 },
    { M_POST, "files", upload_file, K_FILE, 0 },
    { M_GET, "files", list_objects, K_FILE, 0 },
    { M_GET, "files/*", get_object, K_FILE, 0 },
    { M_GET, "files/*/content", file_content, K_FILE, 0 },
    { M_DELETE, "files/*", delete_object, K_FILE, 0 },
    { M_POST, "assistants", mock_create_assistant, 0, 0 },
    { M_GET, "assistants", list_objects, K_ASSISTANT, 0 },
    { M_GET, "assistants/*", get_object, K_ASSISTANT, 0 },
    { M_DELETE, "assistants/*", delete_object, K_ASSISTANT, 0 },
    { M_POST, "threads", mock_create_thread, 0, 0 },
    { M_GET, "threads/*", get_object, K_THREAD, 0 },
    { M_DELETE, "threads/*", delete_object, K_THREAD, 0 },
    { M_POST, "threads/*/messages", mock_create_message, 0, 0 },
    { M_GET, "threads/*/messages", mock_list_children, K_MESSAGE, 0 },
    { M_GET, "threads/*/messages/*", mock_get_child, K_MESSAGE, 0 },
    { M_POST, "threads/*/runs", mock_create_run, 0, 0 },
    { M_GET, "threads/*/runs", mock_list_children, K_RUN, 0 },
    { M_GET, "threads/*/runs/*", mock_get_run, K_RUN, 0 },
    { M_POST, "vector_stores", mock_create_vector_store, 0, 0 },
    { M_GET, "vector_stores", list_objects, K_VECTOR_STORE, 0 },
    { M_GET, "vector_stores/*", get_object, K_VECTOR_STORE, 0 },
    { M_DELETE, "vector_stores/*", delete_object, K_VECTOR_STORE, 0 },
    { M_POST, "vector_stores/*/files", mock_add_store_file, 0, 0 },
    { M_GET, "vector_stores/*/files", mock_list_children, K_VS_FILE, 0 },
    { M_GET, "vector_stores/*/files/*", mock_get_child, K_VS_FILE, 0 },
    { M_DELETE, "vector_stores/*/files/*", mock_delete_store_file, 0, 0 },
    { M_POST, "batches", create_batch, 0, 0 },
    { M_GET, "batches", list_objects, K_BATCH, 0 },
    { M_GET, "batches/*", get_object, K_BATCH, 0 },
    { M_POST, "batches/*/cancel", cancel_object, K_BATCH, 0 },
    { M_POST, "fine_tuning/jobs", create_ftjob, 0, 0 },
    { M_GET, "fine_tuning/jobs", list_objects, K_FTJOB, 0 },
    { M_GET, "fine_tuning/jobs/*", get_object, K_FTJOB, 0 },
    { M_POST, "fine_tuning/jobs/*/cancel", cancel_object, K_FTJOB, 0 },
    { 0, NULL, NULL, 0, 0 }
};

/* Does rest ("files/file-1/content") fit pattern ("files/x/content")?
 * Fills ids with what stood at each "*". */
static int fits(apr_pool_t *p, const char *pattern, const char *rest,
                const char **ids)
{
    int n = 0;

    while (*pattern && *rest) {
        apr_size_t want = strcspn(pattern, "/"), have = strcspn(rest, "/");
        if (!have) {
            return 0;
        }
        if (want == 1 && *pattern == '*') {
            if (n == MAX_SEGMENTS) {
                return 0;
            }
            ids[n++] = apr_pstrmemdup(p, rest, have);
        }
        else if (want != have || strncmp(pattern, rest, have)) {
            return 0;
        }
        pattern += want + (pattern[want] == '/');
        rest += have + (rest[have] == '/');
        if (!*pattern != !*rest) {
            return 0;
        }
    }
    return !*pattern && !*rest;
}

/* The route for /openai/v1/... or /openai/... (not deployments), or NULL:
 * the caller then answers 404 as for any path the service lacks. */
const void *mock_api_route(request_rec *r, mock_call *c, const char ***ids)
{
    static const char v1[] = "/openai/v1/", classic[] = "/openai/";
    const api_route *route;

    if (!strncmp(r->uri, v1, sizeof(v1) - 1)) {
        c->v1 = 1;
        c->rest = r->uri + sizeof(v1) - 1;
    }
    else if (!strncmp(r->uri, classic, sizeof(classic) - 1)) {
        c->rest = r->uri + sizeof(classic) - 1;
    }
    else {
        return NULL;
    }
    *ids = apr_pcalloc(r->pool, MAX_SEGMENTS * sizeof(const char *));
    for (route = routes; route->pattern; route++) {
        if (route->method == r->method_number && (c->v1 || !route->v1_only)
            && fits(r->pool, route->pattern, c->rest, *ids)) {
            return route;
        }
    }
    return NULL;
}

/* After the common checks: the body's references, then the route. */
int mock_api(mock_call *c, const void *found, const char **ids)
{
    const api_route *route = found;
    int i, rc;

    for (i = 0; i < MAX_SEGMENTS && ids[i]; i++) {
        apr_thread_mutex_lock(c->m->mutex);
        mock_seen(&c->m->store, ids[i]);
        apr_thread_mutex_unlock(c->m->mutex);
    }
    /* an upload is multipart; every other body, if any, a JSON object */
    if (route->fn != upload_file) {
        if (!json_is_object(mock_parse_body(c, 1))) {
            mock_openai_error(c->r, 400, "We could not parse the JSON body "
                              "of your request.", NULL, NULL);
            return OK;
        }
        mock_record_model(c);
        if ((rc = mock_check_references(c)) != OK) {
            return OK;
        }
    }
    return route->fn(c, ids, route->kind);
}

/* ------------------------------------------------------------------ */

int mock_missing(mock_call *c, const char *param)
{
    mock_openai_error(c->r, 400, apr_psprintf(c->r->pool,
        "Missing required parameter: '%s'.", param), param,
        "missing_required_parameter");
    return OK;
}

/* the body's value for key, copied, or fallback (owned by the caller) */
json_t *mock_take(json_t *body, const char *key, json_t *fallback)
{
    json_t *value = json_object_get(body, key);

    if (!value) {
        return fallback;
    }
    json_decref(fallback);
    return json_deep_copy(value);
}

/* Answers with a copy of an object, or its kind's 404. */
int mock_answer_copy(mock_call *c, json_t *copy, int kind, const char *id)
{
    if (!copy) {
        mock_not_found(c->r, kind, id);
        return OK;
    }
    mock_json_send(c->r, 200, copy);
    return OK;
}

/* Stores a new object and answers with it (mutex held on entry, released). */
int mock_store_and_answer(mock_call *c, int kind, const char *id,
                          const char *parent, json_t *doc)
{
    json_t *copy = json_deep_copy(doc);

    mock_add(c->m, kind, id, parent, doc);
    apr_thread_mutex_unlock(c->m->mutex);
    mock_json_send(c->r, 200, copy);
    return OK;
}

static int list_models(mock_call *c, const char *const *ids, int kind)
{
    json_t *data = json_array();
    int i;

    (void)ids; (void)kind;
    for (i = 0; c->b.deployments && i < c->b.deployments->nelts; i++) {
        json_array_append_new(data, json_pack("{s:s,s:s,s:i,s:s}",
            "id", APR_ARRAY_IDX(c->b.deployments, i, const char *),
            "object", "model", "created", 0, "owned_by", "system"));
    }
    mock_json_send(c->r, 200, json_pack("{s:s,s:o}", "object", "list",
                                        "data", data));
    return OK;
}

/* v1: chat/completions, completions, embeddings with the deployment in the
 * body; then the same path as /openai/deployments/{name}/... */
static int v1_inference(mock_call *c, const char *const *ids, int kind)
{
    const char *model = json_string_value(json_object_get(c->json, "model"));

    (void)ids; (void)kind;
    if (!model || !*model) {
        return mock_missing(c, "model");
    }
    c->deployment = model;
    c->operation = c->rest;
    return mock_inference(c);
}

static int create_response(mock_call *c, const char *const *ids, int kind)
{
    (void)ids; (void)kind;
    return mock_responses_create(c);
}

static int get_object(mock_call *c, const char *const *ids, int kind)
{
    mock_object *o;
    json_t *copy = NULL, *status;

    apr_thread_mutex_lock(c->m->mutex);
    if ((o = mock_find(&c->m->store, kind, NULL, ids[0])) != NULL) {
        status = json_object_get(o->doc, "status");
        /* a cancelled batch is "cancelling" once, then "cancelled" */
        if (kind == K_BATCH && json_is_string(status)
            && !strcmp(json_string_value(status), "cancelling")) {
            json_object_set_new(o->doc, "status", json_string("cancelled"));
            json_object_set_new(o->doc, "cancelled_at",
                                json_integer(apr_time_sec(apr_time_now())));
        }
        copy = json_deep_copy(o->doc);
    }
    apr_thread_mutex_unlock(c->m->mutex);
    return mock_answer_copy(c, copy, kind, ids[0]);
}

static int delete_object(mock_call *c, const char *const *ids, int kind)
{
    static const char *const deleted[K_COUNT] = {
        [K_RESPONSE] = "response", [K_FILE] = "file",
        [K_ASSISTANT] = "assistant.deleted", [K_THREAD] = "thread.deleted",
        [K_VECTOR_STORE] = "vector_store.deleted",
    };
    mock_object *o;

    apr_thread_mutex_lock(c->m->mutex);
    if ((o = mock_find(&c->m->store, kind, NULL, ids[0])) != NULL) {
        mock_remove(&c->m->store, o);
    }
    apr_thread_mutex_unlock(c->m->mutex);
    if (!o) {
        mock_not_found(c->r, kind, ids[0]);
        return OK;
    }
    mock_json_send(c->r, 200, json_pack("{s:s,s:s,s:b}", "id", ids[0],
                                        "object", deleted[kind], "deleted", 1));
    return OK;
}

static int list_objects(mock_call *c, const char *const *ids, int kind)
{
    json_t *list;

    (void)ids;
    apr_thread_mutex_lock(c->m->mutex);
    list = mock_list_json(&c->m->store, kind, NULL);
    apr_thread_mutex_unlock(c->m->mutex);
    mock_json_send(c->r, 200, list);
    return OK;
}

static int cancel_object(mock_call *c, const char *const *ids, int kind)
{
    mock_object *o;
    json_t *copy = NULL;
    json_int_t now = apr_time_sec(apr_time_now());

    apr_thread_mutex_lock(c->m->mutex);
    if ((o = mock_find(&c->m->store, kind, NULL, ids[0])) != NULL) {
        json_object_set_new(o->doc, "status", json_string(
            kind == K_BATCH ? "cancelling" : "cancelled"));
        json_object_set_new(o->doc, kind == K_BATCH ? "cancelling_at"
                            : "finished_at", json_integer(now));
        copy = json_deep_copy(o->doc);
    }
    apr_thread_mutex_unlock(c->m->mutex);
    return mock_answer_copy(c, copy, kind, ids[0]);
}

/* ------------------------------------------------------------------ */
/* Files: multipart/form-data with "purpose" and "file". */

typedef struct {
    const char *purpose, *filename, *data;
    apr_size_t length;
} upload;

static const char *disposition_value(apr_pool_t *p, const char *headers,
                                     apr_size_t n, const char *name)
{
    const char *at = headers, *end = headers + n, *close;
    apr_size_t len = strlen(name);

    while ((at = memmem(at, end - at, name, len)) != NULL) {
        if (at > headers && (at[-1] == ' ' || at[-1] == ';')
            && at + len < end && at[len] == '=' && at + len + 1 < end
            && at[len + 1] == '"') {
            at += len + 2;
            close = memchr(at, '"', end - at);
            return close ? apr_pstrmemdup(p, at, close - at) : NULL;
        }
        at += len;
    }
    return NULL;
}

static void take_part(apr_pool_t *p, upload *u, const char *part,
                      apr_size_t n)
{
    const char *blank = memmem(part, n, "\r\n\r\n", 4), *name;

    if (!blank) {
        return;
    }
    name = disposition_value(p, part, blank - part, "name");
    if (!name) {
        return;
    }
    blank += 4;
    if (!strcmp(name, "file")) {
        u->filename = disposition_value(p, part, blank - part, "filename");
        u->data = blank;
        u->length = part + n - blank;
    }
    else if (!strcmp(name, "purpose")) {
        u->purpose = apr_pstrmemdup(p, blank, part + n - blank);
    }
}

static int parse_upload(mock_call *c, upload *u)
{
    const char *type = apr_table_get(c->r->headers_in, "Content-Type");
    const char *b = type ? strstr(type, "boundary=") : NULL, *at, *end;
    char *delimiter;
    apr_size_t n;

    if (!type || strncasecmp(type, "multipart/form-data", 19) || !b) {
        return 0;
    }
    b += 9;
    n = *b == '"' ? strcspn(b + 1, "\"") : strcspn(b, "; ");
    delimiter = apr_pstrcat(c->r->pool, "\r\n--",
        apr_pstrmemdup(c->r->pool, b + (*b == '"'), n), NULL);
    end = c->body + c->body_length;
    /* the first delimiter has no CRLF before it */
    at = memmem(c->body, c->body_length, delimiter + 2, strlen(delimiter) - 2);
    while (at) {
        const char *part = at + strlen(delimiter) - 2, *next;
        if (end - part < 2 || !strncmp(part, "--", 2)) {
            break;
        }
        part += 2;  /* the CRLF after the delimiter */
        next = memmem(part, end - part, delimiter, strlen(delimiter));
        take_part(c->r->pool, u, part, (next ? next : end) - part);
        at = next ? next + 2 : NULL;
    }
    return 1;
}

static int upload_file(mock_call *c, const char *const *ids, int kind)
{
    upload u = { NULL, NULL, NULL, 0 };
    const char *id;
    json_t *doc;
    mock_object *o;

    (void)ids; (void)kind;
    if (!parse_upload(c, &u)) {
        mock_openai_error(c->r, 400, "The request must be multipart/form-data "
                          "with the fields purpose and file.", NULL, NULL);
        return OK;
    }
    if (!u.purpose || !*u.purpose) {
        return mock_missing(c, "purpose");
    }
    if (!u.data) {
        return mock_missing(c, "file");
    }
    apr_thread_mutex_lock(c->m->mutex);
    id = mock_new_id(&c->m->store, c->r->pool, K_FILE);
    doc = json_pack("{s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:n}", "id", id,
                    "object", "file", "bytes", (json_int_t)u.length,
                    "created_at", (json_int_t)apr_time_sec(apr_time_now()),
                    "filename", u.filename ? u.filename : "upload",
                    "purpose", u.purpose, "status", "processed",
                    "status_details");
    o = mock_add(c->m, K_FILE, id, NULL, json_deep_copy(doc));
    if (!mock_attach_content(c->m, o, u.data, u.length)) {
        mock_remove(&c->m->store, o);
        apr_thread_mutex_unlock(c->m->mutex);
        json_decref(doc);
        mock_openai_error(c->r, 413, "The file is too large.", "file", NULL);
        return OK;
    }
    apr_thread_mutex_unlock(c->m->mutex);
    mock_json_send(c->r, 200, doc);
    return OK;
}

static int file_content(mock_call *c, const char *const *ids, int kind)
{
    mock_object *o;
    char *data = NULL;
    apr_size_t length = 0;

    apr_thread_mutex_lock(c->m->mutex);
    if ((o = mock_find(&c->m->store, kind, NULL, ids[0])) != NULL) {
        length = o->content_length;
        data = apr_pmemdup(c->r->pool, o->content ? o->content : "", length);
    }
    apr_thread_mutex_unlock(c->m->mutex);
    if (!o) {
        mock_not_found(c->r, kind, ids[0]);
        return OK;
    }
    ap_set_content_type(c->r, "application/octet-stream");
    ap_set_content_length(c->r, length);
    ap_rwrite(data, (int)length, c->r);
    return OK;
}

/* ------------------------------------------------------------------ */

static int create_batch(mock_call *c, const char *const *ids, int kind)
{
    static const char *const required[] = { "input_file_id", "endpoint",
                                            "completion_window", NULL };
    json_int_t now = apr_time_sec(apr_time_now());
    const char *id;
    int i;

    (void)ids; (void)kind;
    for (i = 0; required[i]; i++) {
        if (!json_is_string(json_object_get(c->json, required[i]))) {
            return mock_missing(c, required[i]);
        }
    }
    apr_thread_mutex_lock(c->m->mutex);
    id = mock_new_id(&c->m->store, c->r->pool, K_BATCH);
    return mock_store_and_answer(c, K_BATCH, id, NULL, json_pack(
        "{s:s,s:s,s:o,s:n,s:o,s:o,s:s,s:n,s:n,s:I,s:n,s:I,s:n,s:n,s:n,s:n,"
        "s:n,s:n,s:{s:i,s:i,s:i},s:o}",
        "id", id, "object", "batch",
        "endpoint", mock_take(c->json, "endpoint", NULL), "errors",
        "input_file_id", mock_take(c->json, "input_file_id", NULL),
        "completion_window", mock_take(c->json, "completion_window", NULL),
        "status", "validating", "output_file_id", "error_file_id",
        "created_at", now, "in_progress_at", "expires_at", now + 86400,
        "finalizing_at", "completed_at", "failed_at", "expired_at",
        "cancelling_at", "cancelled_at",
        "request_counts", "total", 0, "completed", 0, "failed", 0,
        "metadata", mock_take(c->json, "metadata", json_null())));
}

static int create_ftjob(mock_call *c, const char *const *ids, int kind)
{
    const char *id;

    (void)ids; (void)kind;
    if (!json_is_string(json_object_get(c->json, "model"))) {
        return mock_missing(c, "model");
    }
    if (!json_is_string(json_object_get(c->json, "training_file"))) {
        return mock_missing(c, "training_file");
    }
    apr_thread_mutex_lock(c->m->mutex);
    id = mock_new_id(&c->m->store, c->r->pool, K_FTJOB);
    return mock_store_and_answer(c, K_FTJOB, id, NULL, json_pack(
        "{s:s,s:s,s:o,s:I,s:n,s:n,s:s,s:o,s:o,s:o,s:[],s:n,s:n}",
        "id", id, "object", "fine_tuning.job",
        "model", mock_take(c->json, "model", NULL),
        "created_at", (json_int_t)apr_time_sec(apr_time_now()),
        "finished_at", "fine_tuned_model", "status", "pending",
        "training_file", mock_take(c->json, "training_file", NULL),
        "validation_file", mock_take(c->json, "validation_file", json_null()),
        "hyperparameters", mock_take(c->json, "hyperparameters", json_object()),
        "result_files", "trained_tokens", "error"));
}
