/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Assistants, threads with their messages and runs, vector stores with
 * their files, in the shapes of the OpenAI reference that Azure serves.
 * A run is "queued" when made and "completed" at the first GET, which
 * also adds the assistant's answer to the thread, so that the SDKs'
 * create-and-poll helpers finish.  Ids a body names were checked against
 * this member before these run (mock_check_references).
 */

#include "aoai_mock.h"

#include "apr_strings.h"

static json_int_t now_s(void)
{
    return (json_int_t)apr_time_sec(apr_time_now());
}

int mock_create_assistant(mock_call *c, const char *const *ids, int kind)
{
    const char *id;

    (void)ids; (void)kind;
    if (!json_is_string(json_object_get(c->json, "model"))) {
        return mock_missing(c, "model");
    }
    apr_thread_mutex_lock(c->m->mutex);
    id = mock_new_id(&c->m->store, c->r->pool, K_ASSISTANT);
    return mock_store_and_answer(c, K_ASSISTANT, id, NULL, json_pack(
        "{s:s,s:s,s:I,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:f,s:f,s:s}",
        "id", id, "object", "assistant", "created_at", now_s(),
        "name", mock_take(c->json, "name", json_null()),
        "description", mock_take(c->json, "description", json_null()),
        "model", mock_take(c->json, "model", NULL),
        "instructions", mock_take(c->json, "instructions", json_null()),
        "tools", mock_take(c->json, "tools", json_array()),
        "tool_resources", mock_take(c->json, "tool_resources", json_object()),
        "metadata", mock_take(c->json, "metadata", json_object()),
        "temperature", 1.0, "top_p", 1.0, "response_format", "auto"));
}

/* A message as asked for: a role and a content; else the 400 is sent. */
static int message_ok(mock_call *c, json_t *spec)
{
    const char *role = json_string_value(json_object_get(spec, "role"));
    json_t *content = json_object_get(spec, "content");

    if (!role) {
        mock_missing(c, "role");
        return 0;
    }
    if (strcmp(role, "user") && strcmp(role, "assistant")) {
        mock_openai_error(c->r, 400, apr_psprintf(c->r->pool,
            "Invalid value: '%s'. Supported values are: 'user' and "
            "'assistant'.", role), "role", "invalid_value");
        return 0;
    }
    if (!json_is_string(content) && !json_is_array(content)) {
        mock_missing(c, "content");
        return 0;
    }
    return 1;
}

static json_t *message_doc(const char *id, const char *thread, json_t *spec,
                           const char *assistant, const char *run)
{
    json_t *content = json_object_get(spec, "content");

    content = json_is_string(content)
        ? json_pack("[{s:s,s:{s:O,s:[]}}]", "type", "text", "text",
                    "value", content, "annotations")
        : json_deep_copy(content);
    return json_pack("{s:s,s:s,s:I,s:s,s:O,s:o,s:s?,s:s?,s:o,s:o}",
                     "id", id, "object", "thread.message",
                     "created_at", now_s(), "thread_id", thread,
                     "role", json_object_get(spec, "role"),
                     "content", content,
                     "assistant_id", assistant, "run_id", run,
                     "attachments", mock_take(spec, "attachments", json_array()),
                     "metadata", mock_take(spec, "metadata", json_object()));
}

/* (mutex held) */
static void add_message(mock_call *c, const char *thread, json_t *spec,
                        const char *assistant, const char *run)
{
    const char *id = mock_new_id(&c->m->store, c->r->pool, K_MESSAGE);

    mock_add(c->m, K_MESSAGE, id, thread,
             message_doc(id, thread, spec, assistant, run));
}

int mock_create_thread(mock_call *c, const char *const *ids, int kind)
{
    json_t *messages = json_object_get(c->json, "messages"), *spec;
    apr_size_t i;
    const char *id;
    json_t *doc;

    (void)ids; (void)kind;
    json_array_foreach(messages, i, spec) {
        if (!message_ok(c, spec)) {
            return OK;
        }
    }
    apr_thread_mutex_lock(c->m->mutex);
    id = mock_new_id(&c->m->store, c->r->pool, K_THREAD);
    doc = json_pack("{s:s,s:s,s:I,s:o,s:o}", "id", id, "object", "thread",
                    "created_at", now_s(),
                    "metadata", mock_take(c->json, "metadata", json_object()),
                    "tool_resources",
                    mock_take(c->json, "tool_resources", json_object()));
    /* the thread first, so that its messages are newer and go after it */
    mock_add(c->m, K_THREAD, id, NULL, json_deep_copy(doc));
    json_array_foreach(messages, i, spec) {
        add_message(c, id, spec, NULL, NULL);
    }
    apr_thread_mutex_unlock(c->m->mutex);
    mock_json_send(c->r, 200, doc);
    return OK;
}

/* The thread or vector store a child route names (mutex held). */
static mock_object *parent_of(mock_call *c, int child_kind, const char *id)
{
    return mock_find(&c->m->store, child_kind == K_VS_FILE ? K_VECTOR_STORE
                                                          : K_THREAD, NULL, id);
}

/* ... and when there is none: the mutex released, its 404 sent. */
static int parent_missing(mock_call *c, int child_kind, const char *id)
{
    apr_thread_mutex_unlock(c->m->mutex);
    mock_not_found(c->r, child_kind == K_VS_FILE ? K_VECTOR_STORE : K_THREAD,
                   id);
    return OK;
}

int mock_create_message(mock_call *c, const char *const *ids, int kind)
{
    const char *id;

    (void)kind;
    if (!message_ok(c, c->json)) {
        return OK;
    }
    apr_thread_mutex_lock(c->m->mutex);
    if (!parent_of(c, K_MESSAGE, ids[0])) {
        return parent_missing(c, K_MESSAGE, ids[0]);
    }
    id = mock_new_id(&c->m->store, c->r->pool, K_MESSAGE);
    return mock_store_and_answer(c, K_MESSAGE, id, ids[0],
                                 message_doc(id, ids[0], c->json, NULL, NULL));
}

int mock_list_children(mock_call *c, const char *const *ids, int kind)
{
    json_t *list;

    apr_thread_mutex_lock(c->m->mutex);
    if (!parent_of(c, kind, ids[0])) {
        return parent_missing(c, kind, ids[0]);
    }
    list = mock_list_json(&c->m->store, kind, ids[0]);
    apr_thread_mutex_unlock(c->m->mutex);
    mock_json_send(c->r, 200, list);
    return OK;
}

int mock_get_child(mock_call *c, const char *const *ids, int kind)
{
    mock_object *o;
    json_t *copy = NULL;

    apr_thread_mutex_lock(c->m->mutex);
    if (!parent_of(c, kind, ids[0])) {
        return parent_missing(c, kind, ids[0]);
    }
    if ((o = mock_find(&c->m->store, kind, ids[0], ids[1])) != NULL) {
        copy = json_deep_copy(o->doc);
    }
    apr_thread_mutex_unlock(c->m->mutex);
    return mock_answer_copy(c, copy, kind, ids[1]);
}

/* ------------------------------------------------------------------ */

int mock_create_run(mock_call *c, const char *const *ids, int kind)
{
    const char *assistant_id = json_string_value(
        json_object_get(c->json, "assistant_id"));
    mock_object *assistant;
    const char *id;
    json_int_t now = now_s();

    (void)kind;
    if (!assistant_id) {
        return mock_missing(c, "assistant_id");
    }
    apr_thread_mutex_lock(c->m->mutex);
    if (!parent_of(c, K_RUN, ids[0])) {
        return parent_missing(c, K_RUN, ids[0]);
    }
    if (!(assistant = mock_find(&c->m->store, K_ASSISTANT, NULL, assistant_id))) {
        apr_thread_mutex_unlock(c->m->mutex);
        mock_not_found(c->r, K_ASSISTANT, assistant_id);
        return OK;
    }
    id = mock_new_id(&c->m->store, c->r->pool, K_RUN);
    return mock_store_and_answer(c, K_RUN, id, ids[0], json_pack(
        "{s:s,s:s,s:I,s:s,s:s,s:s,s:n,s:I,s:n,s:n,s:n,s:n,s:O,s:o,s:o,s:o,s:n}",
        "id", id, "object", "thread.run", "created_at", now,
        "assistant_id", assistant_id, "thread_id", ids[0],
        "status", "queued", "started_at", "expires_at", now + 600,
        "cancelled_at", "failed_at", "completed_at", "last_error",
        "model", json_object_get(assistant->doc, "model"),
        "instructions", mock_take(c->json, "instructions", json_deep_copy(
            json_object_get(assistant->doc, "instructions"))),
        "tools", mock_take(c->json, "tools", json_array()),
        "metadata", mock_take(c->json, "metadata", json_object()),
        "usage"));
}

/* A queued run completes: its answer joins the thread (mutex held). */
static void complete_run(mock_call *c, mock_object *run)
{
    json_t *answer = json_pack("{s:s,s:s}", "role", "assistant", "content",
                               apr_psprintf(c->r->pool, "Hello from %s",
                                            c->m->name));
    json_int_t now = now_s();

    json_object_set_new(run->doc, "status", json_string("completed"));
    json_object_set_new(run->doc, "started_at", json_integer(now));
    json_object_set_new(run->doc, "completed_at", json_integer(now));
    json_object_set_new(run->doc, "usage",
                        mock_usage_json(20, c->b.completion_tokens));
    run->pinned = 1;  /* the new message must not evict the run */
    add_message(c, run->parent, answer,
                json_string_value(json_object_get(run->doc, "assistant_id")),
                run->id);
    run->pinned = 0;
    json_decref(answer);
}

int mock_get_run(mock_call *c, const char *const *ids, int kind)
{
    mock_object *o;
    json_t *copy = NULL;

    apr_thread_mutex_lock(c->m->mutex);
    if (!parent_of(c, kind, ids[0])) {
        return parent_missing(c, kind, ids[0]);
    }
    if ((o = mock_find(&c->m->store, K_RUN, ids[0], ids[1])) != NULL) {
        const char *status = json_string_value(json_object_get(o->doc, "status"));
        if (status && !strcmp(status, "queued")) {
            complete_run(c, o);
        }
        copy = json_deep_copy(o->doc);
    }
    apr_thread_mutex_unlock(c->m->mutex);
    return mock_answer_copy(c, copy, K_RUN, ids[1]);
}

/* ------------------------------------------------------------------ */
/* Vector stores: their files are this member's files, processed at once. */

static void recount(mock_store *s, mock_object *store)
{
    mock_object *o;
    json_int_t files = 0, bytes = 0;

    for (o = s->oldest; o; o = o->newer) {
        if (o->kind == K_VS_FILE && !strcmp(o->parent, store->id)) {
            files++;
            bytes += json_integer_value(json_object_get(o->doc, "usage_bytes"));
        }
    }
    json_object_set_new(store->doc, "usage_bytes", json_integer(bytes));
    json_object_set_new(store->doc, "file_counts", json_pack(
        "{s:i,s:I,s:i,s:i,s:I}", "in_progress", 0, "completed", files,
        "failed", 0, "cancelled", 0, "total", files));
}

/* (mutex held; the file was checked to be this member's) */
static void add_store_file(mock_call *c, mock_object *store, const char *file_id)
{
    mock_object *file = mock_find(&c->m->store, K_FILE, NULL, file_id);
    mock_object *old = mock_find(&c->m->store, K_VS_FILE, store->id, file_id);

    if (old) {
        mock_remove(&c->m->store, old);
    }
    mock_add(c->m, K_VS_FILE, file_id, store->id, json_pack(
        "{s:s,s:s,s:I,s:I,s:s,s:s,s:n,s:{s:s,s:{s:i,s:i}}}",
        "id", file_id, "object", "vector_store.file",
        "usage_bytes", file ? (json_int_t)file->content_length : 0,
        "created_at", now_s(), "vector_store_id", store->id,
        "status", "completed", "last_error",
        "chunking_strategy", "type", "static", "static",
        "max_chunk_size_tokens", 800, "chunk_overlap_tokens", 400));
}

int mock_create_vector_store(mock_call *c, const char *const *ids, int kind)
{
    json_t *file_ids = json_object_get(c->json, "file_ids"), *file_id, *copy;
    mock_object *store;
    const char *id;
    apr_size_t i;
    json_int_t now = now_s();

    (void)ids; (void)kind;
    apr_thread_mutex_lock(c->m->mutex);
    id = mock_new_id(&c->m->store, c->r->pool, K_VECTOR_STORE);
    store = mock_add(c->m, K_VECTOR_STORE, id, NULL, json_pack(
        "{s:s,s:s,s:I,s:o,s:i,s:n,s:s,s:o,s:n,s:I,s:o}",
        "id", id, "object", "vector_store", "created_at", now,
        "name", mock_take(c->json, "name", json_null()), "usage_bytes", 0,
        "file_counts", "status", "completed",
        "expires_after", mock_take(c->json, "expires_after", json_null()),
        "expires_at", "last_active_at", now,
        "metadata", mock_take(c->json, "metadata", json_object())));
    store->pinned = 1;  /* adding files must not evict the store */
    json_array_foreach(file_ids, i, file_id) {
        if (json_is_string(file_id)) {
            add_store_file(c, store, json_string_value(file_id));
        }
    }
    store->pinned = 0;
    recount(&c->m->store, store);
    copy = json_deep_copy(store->doc);
    apr_thread_mutex_unlock(c->m->mutex);
    mock_json_send(c->r, 200, copy);
    return OK;
}

int mock_add_store_file(mock_call *c, const char *const *ids, int kind)
{
    const char *file_id = json_string_value(json_object_get(c->json, "file_id"));
    mock_object *store;
    json_t *copy;

    (void)kind;
    if (!file_id) {
        return mock_missing(c, "file_id");
    }
    apr_thread_mutex_lock(c->m->mutex);
    if (!(store = parent_of(c, K_VS_FILE, ids[0]))) {
        return parent_missing(c, K_VS_FILE, ids[0]);
    }
    store->pinned = 1;
    add_store_file(c, store, file_id);
    store->pinned = 0;
    recount(&c->m->store, store);
    copy = json_deep_copy(mock_find(&c->m->store, K_VS_FILE, ids[0],
                                    file_id)->doc);
    apr_thread_mutex_unlock(c->m->mutex);
    mock_json_send(c->r, 200, copy);
    return OK;
}

int mock_delete_store_file(mock_call *c, const char *const *ids, int kind)
{
    mock_object *store, *o;

    (void)kind;
    apr_thread_mutex_lock(c->m->mutex);
    if (!(store = parent_of(c, K_VS_FILE, ids[0]))) {
        return parent_missing(c, K_VS_FILE, ids[0]);
    }
    if ((o = mock_find(&c->m->store, K_VS_FILE, ids[0], ids[1])) != NULL) {
        mock_remove(&c->m->store, o);
        recount(&c->m->store, store);
    }
    apr_thread_mutex_unlock(c->m->mutex);
    if (!o) {
        mock_not_found(c->r, K_VS_FILE, ids[1]);
        return OK;
    }
    mock_json_send(c->r, 200, json_pack("{s:s,s:s,s:b}", "id", ids[1],
                   "object", "vector_store.file.deleted", "deleted", 1));
    return OK;
}
