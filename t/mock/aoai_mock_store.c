/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The objects a member keeps: stored responses, files, assistants,
 * threads with their messages and runs, vector stores with their files,
 * batches and fine-tuning jobs.  As in Azure, each lives in the member
 * ("resource") that made it: ids carry a random part of the member's own,
 * another member answers 404 for them, and a body that names one this
 * member lacks fails as the service fails it.  At most object_cap objects
 * and STORE_BYTES of file contents are kept; the oldest go first.
 * Everything here runs with the member's mutex held, except
 * mock_check_references and mock_record_model, which take it.
 */

#include "aoai_mock.h"

#include "apr_strings.h"

#include <limits.h>

#define STORE_BYTES (64 * 1024 * 1024)
#define WALK_DEPTH 64

static const struct {
    const char *name, *prefix, *missing;
} kinds[K_COUNT] = {
    { "response", "resp_", "Response with id '%s' not found." },
    { "file", "file-", "No such File object: %s" },
    { "assistant", "asst_", "No assistant found with id '%s'." },
    { "thread", "thread_", "No thread found with id '%s'." },
    { "message", "msg_", "No message found with id '%s'." },
    { "run", "run_", "No run found with id '%s'." },
    { "vector_store", "vs_", "No vector store found with id '%s'." },
    { "vector_store_file", "file-", "No file found with id '%s' in this vector store." },
    { "batch", "batch_", "No batch found with id '%s'." },
    { "fine_tuning_job", "ftjob-", "No fine-tuning job found with id '%s'." },
};

const char *mock_kind_name(int kind)
{
    return kinds[kind].name;
}

/* prefix, the member's salt, a sequence: unique here, foreign elsewhere */
const char *mock_new_id(mock_store *s, apr_pool_t *p, int kind)
{
    return apr_psprintf(p, "%s%08x%010" APR_UINT64_T_HEX_FMT,
                        kinds[kind].prefix, s->salt, ++s->sequence);
}

mock_object *mock_find(mock_store *s, int kind, const char *parent,
                       const char *id)
{
    char key[256];
    mock_object *o;

    apr_snprintf(key, sizeof(key), "%s%s%s", kind == K_VS_FILE ? parent : "",
                 kind == K_VS_FILE ? "/" : "", id);
    o = s->by_key ? apr_hash_get(s->by_key, key, APR_HASH_KEY_STRING) : NULL;
    if (!o || o->kind != kind) {
        return NULL;
    }
    if (parent && (!o->parent || strcmp(o->parent, parent))) {
        return NULL;
    }
    return o;
}

static void unlink_object(mock_store *s, mock_object *o)
{
    apr_hash_set(s->by_key, o->key, APR_HASH_KEY_STRING, NULL);
    if (o->older) {
        o->older->newer = o->newer;
    }
    else {
        s->oldest = o->newer;
    }
    if (o->newer) {
        o->newer->older = o->older;
    }
    else {
        s->newest = o->older;
    }
    s->count--;
    s->bytes -= o->content_length;
    json_decref(o->doc);
    free(o->content);
    free(o->key);
    free(o->id);
    free(o->parent);
    free(o);
}

/* Removes an object and what lives in it (a thread's messages and runs,
 * a vector store's files). */
void mock_remove(mock_store *s, mock_object *o)
{
    mock_object *child = s->oldest, *next;
    char *parent = strdup(o->id);
    int owner = o->kind == K_THREAD || o->kind == K_VECTOR_STORE;

    unlink_object(s, o);
    for (; owner && child; child = next) {
        next = child->newer;
        if (child->parent && !strcmp(child->parent, parent)) {
            unlink_object(s, child);
        }
    }
    free(parent);
}

void mock_store_clear(mock_store *s)
{
    while (s->oldest) {
        unlink_object(s, s->oldest);
    }
    s->seen_count = 0;
    s->evicted = 0;
}

static void make_room(mock_store *s, int cap, apr_size_t bytes)
{
    mock_object *victim = s->oldest, *next;

    for (; victim && (s->count >= cap || s->bytes + bytes > STORE_BYTES);
         victim = next) {
        next = victim->newer;
        if (!victim->pinned) {
            unlink_object(s, victim);
            s->evicted++;
        }
    }
}

/* Stores doc (the store owns it from now on) under a new object. */
mock_object *mock_add(mock_member *m, int kind, const char *id,
                      const char *parent, json_t *doc)
{
    mock_store *s = &m->store;
    mock_object *o = calloc(1, sizeof(*o));
    char key[256];

    make_room(s, m->now.object_cap, 0);
    apr_snprintf(key, sizeof(key), "%s%s%s", kind == K_VS_FILE ? parent : "",
                 kind == K_VS_FILE ? "/" : "", id);
    o->key = strdup(key);
    o->id = strdup(id);
    o->parent = parent ? strdup(parent) : NULL;
    o->kind = kind;
    o->doc = doc;
    o->older = s->newest;
    if (s->newest) {
        s->newest->newer = o;
    }
    else {
        s->oldest = o;
    }
    s->newest = o;
    s->count++;
    apr_hash_set(s->by_key, o->key, APR_HASH_KEY_STRING, o);
    return o;
}

/* Gives a file object its bytes (a copy), evicting to stay in bounds. */
int mock_attach_content(mock_member *m, mock_object *o, const char *data,
                        apr_size_t length)
{
    if (length > STORE_BYTES / 2) {
        return 0;
    }
    o->content = malloc(length ? length : 1);
    memcpy(o->content, data, length);
    o->content_length = length;
    m->store.bytes += length;
    o->pinned = 1;  /* the oldest others go first */
    make_room(&m->store, INT_MAX, 0);
    o->pinned = 0;
    return 1;
}

void mock_seen(mock_store *s, const char *id)
{
    apr_cpystrn(s->seen[s->seen_count % SEEN_RING], id, sizeof(s->seen[0]));
    s->seen_count++;
}

void mock_not_found(request_rec *r, int kind, const char *id)
{
    mock_openai_error(r, 404, apr_psprintf(r->pool, kinds[kind].missing, id),
                      kind == K_FILE ? "id" : NULL, NULL);
}

/* ------------------------------------------------------------------ */
/* Ids named in a body must be this member's. */

static const struct {
    const char *key;
    int kind;
} references[] = {
    { "previous_response_id", K_RESPONSE },
    { "assistant_id", K_ASSISTANT },
    { "thread_id", K_THREAD },
    { "vector_store_ids", K_VECTOR_STORE },
    { "file_id", K_FILE },
    { "file_ids", K_FILE },
    { "input_file_id", K_FILE },
    { "training_file", K_FILE },
    { "validation_file", K_FILE },
    { NULL, 0 }
};

typedef struct {
    mock_store *store;
    apr_array_header_t *missing[K_COUNT];
} walk_state;

static void check_id(walk_state *w, int kind, json_t *value)
{
    const char *id = json_string_value(value);

    if (!id) {
        return;
    }
    mock_seen(w->store, id);
    if (!mock_find(w->store, kind, NULL, id)) {
        APR_ARRAY_PUSH(w->missing[kind], const char *) = id;
    }
}

static void check_key(walk_state *w, const char *key, json_t *value)
{
    int i;
    apr_size_t j;
    json_t *item;

    for (i = 0; references[i].key; i++) {
        if (strcmp(references[i].key, key)) {
            continue;
        }
        if (json_is_array(value)) {
            json_array_foreach(value, j, item) {
                check_id(w, references[i].kind, item);
            }
        }
        else {
            check_id(w, references[i].kind, value);
        }
    }
}

static void walk(walk_state *w, json_t *doc, int depth)
{
    const char *key;
    json_t *value;
    apr_size_t i;

    if (depth > WALK_DEPTH) {
        return;
    }
    if (json_is_object(doc)) {
        json_object_foreach(doc, key, value) {
            check_key(w, key, value);
            walk(w, value, depth + 1);
        }
    }
    else if (json_is_array(doc)) {
        json_array_foreach(doc, i, value) {
            walk(w, value, depth + 1);
        }
    }
}

static void files_not_found(mock_call *c, apr_array_header_t *ids)
{
    int ownership = !strcmp(c->b.file_not_found_form, "ownership");

    /* As Azure words it (Azure/azure-sdk-for-net#47121); "ownership" is
     * the form reported for a file of another resource. */
    mock_openai_error(c->r, 404, apr_psprintf(c->r->pool,
        "Files [%s] were not found%s", apr_array_pstrcat(c->r->pool, ids, ','),
        ownership ? " due to ownership verification failure. Ensure the "
                    "same AOAI resource is used for the files and the "
                    "request." : ""), NULL, NULL);
}

/* OK when every id the body names is this member's; else the answer has
 * been sent and its status is returned.  Once per call. */
int mock_check_references(mock_call *c)
{
    walk_state w;
    int kind;
    static const int order[] = { K_RESPONSE, K_ASSISTANT, K_THREAD,
                                 K_VECTOR_STORE, K_FILE };

    if (!c->json || c->references_checked) {
        return OK;
    }
    c->references_checked = 1;
    w.store = &c->m->store;
    for (kind = 0; kind < K_COUNT; kind++) {
        w.missing[kind] = apr_array_make(c->r->pool, 2, sizeof(const char *));
    }
    apr_thread_mutex_lock(c->m->mutex);
    walk(&w, c->json, 0);
    apr_thread_mutex_unlock(c->m->mutex);
    for (kind = 0; kind < (int)(sizeof(order) / sizeof(order[0])); kind++) {
        apr_array_header_t *ids = w.missing[order[kind]];
        const char *first = ids->nelts ? APR_ARRAY_IDX(ids, 0, const char *) : NULL;
        if (!first) {
            continue;
        }
        if (order[kind] == K_RESPONSE) {
            mock_openai_error(c->r, 400, apr_psprintf(c->r->pool,
                "Previous response with id '%s' not found.", first),
                "previous_response_id", "previous_response_not_found");
        }
        else if (order[kind] == K_FILE) {
            files_not_found(c, ids);
        }
        else {
            mock_not_found(c->r, order[kind], first);
        }
        return c->r->status;
    }
    return OK;
}

/* ------------------------------------------------------------------ */

/* A copy of every object of a kind (newest first), as OpenAI lists. */
json_t *mock_list_json(mock_store *s, int kind, const char *parent)
{
    json_t *data = json_array();
    mock_object *o;

    for (o = s->newest; o; o = o->older) {
        if (o->kind == kind && (!parent || (o->parent
                                            && !strcmp(o->parent, parent)))) {
            json_array_append_new(data, json_deep_copy(o->doc));
        }
    }
    return json_pack("{s:s,s:o,s:o,s:o,s:b}", "object", "list", "data", data,
        "first_id", json_array_size(data)
            ? json_copy(json_object_get(json_array_get(data, 0), "id")) : json_null(),
        "last_id", json_array_size(data)
            ? json_copy(json_object_get(json_array_get(data,
                  json_array_size(data) - 1), "id")) : json_null(),
        "has_more", 0);
}

/* What /mock/stats shows of the store. */
json_t *mock_store_json(mock_store *s, int cap)
{
    json_t *counts = json_object(), *seen = json_array();
    mock_object *o;
    apr_int64_t i, first;
    int kind;

    for (kind = 0; kind < K_COUNT; kind++) {
        json_object_set_new(counts, kinds[kind].name, json_integer(0));
    }
    for (o = s->oldest; o; o = o->newer) {
        json_t *n = json_object_get(counts, kinds[o->kind].name);
        json_integer_set(n, json_integer_value(n) + 1);
    }
    first = s->seen_count > SEEN_RING ? s->seen_count - SEEN_RING : 0;
    for (i = first; i < s->seen_count; i++) {
        json_array_append_new(seen, json_string(s->seen[i % SEEN_RING]));
    }
    return json_pack("{s:o,s:i,s:i,s:I,s:I,s:o}", "objects", counts,
                     "object_count", s->count, "object_cap", cap,
                     "objects_evicted", (json_int_t)s->evicted,
                     "object_bytes", (json_int_t)s->bytes,
                     "last_object_ids_seen", seen);
}

void mock_record_model(mock_call *c)
{
    const char *model = json_string_value(json_object_get(c->json, "model"));

    if (model) {
        apr_thread_mutex_lock(c->m->mutex);
        apr_cpystrn(c->m->last_model, model, sizeof(c->m->last_model));
        apr_thread_mutex_unlock(c->m->mutex);
    }
}
