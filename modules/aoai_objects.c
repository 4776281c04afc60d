/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Stored objects and the member that holds them.
 *
 * Azure OpenAI keeps responses (30 days), files, assistants, threads and
 * their runs and messages, vector stores, batches, fine-tuning jobs and
 * uploads in the resource that made them; another resource answers 404,
 * or 400 previous_response_not_found for a Responses chain.  A balancer
 * that sends a follow-up call elsewhere breaks it.  So:
 *
 *   - an answer that makes an object (a 2xx whose "object" is one of
 *     those, or a stream's response.created event) records its id, and
 *     the thread it belongs to, against the member that answered, in
 *     shared memory (aoai_affinity.c) and, with AOAISharedCache, in the
 *     cache the other gateways read;
 *   - a call that names objects, in its path (/responses/{id},
 *     /threads/{id}/runs, /files/{id}/content...) or its body
 *     (previous_response_id, file_id(s), input_file_id, thread_id,
 *     assistant_id, vector_store_id(s), anywhere in it: attachments, tool
 *     resources, input items), goes to that member only, whatever its
 *     priority and headroom (aoai_deployments_serves() reads the owner);
 *     ids of two members are a 400; a DELETE that succeeds forgets one;
 *   - ids nobody knows (made before the gateway ran, forgotten, made
 *     through a gateway without the cache) send the call to the members
 *     in priority order, moving on only on their "no such object"
 *     answer, which is safe since nothing was made; where it is found is
 *     recorded.
 */

#include "aoai_objects.h"
#include "aoai_affinity.h"
#include "aoai_json.h"
#include "aoai_shared_cache.h"

#include "apr_lib.h"
#include "apr_strings.h"
#include "http_protocol.h"

/* The first segments of the API paths whose objects live in one member. */
static const char *const roots[] = {
    "responses", "files", "assistants", "threads", "vector_stores",
    "batches", "fine_tuning", "uploads"
};
/* Path segments followed by an object's id. */
static const char *const collections[] = {
    "responses", "files", "assistants", "threads", "messages", "runs",
    "steps", "vector_stores", "file_batches", "batches", "jobs", "uploads",
    "parts"
};
/* The ids' prefixes, as the service hands them out. */
static const char *const id_prefixes[] = {
    "resp_", "file-", "file_", "assistant-", "asst_", "thread_", "run_",
    "msg_", "step_", "vs_", "vsfb_", "batch_", "ftjob-", "upload_", "part_"
};
/* Body fields that name one object, and those that name several. */
static const char *const id_fields[] = {
    "previous_response_id", "file_id", "input_file_id", "training_file",
    "validation_file", "thread_id", "assistant_id", "vector_store_id"
};
static const char *const id_list_fields[] = { "file_ids", "vector_store_ids" };

#define AOAI_ANSWER_KEEP (256 * 1024)
#define AOAI_BODY_DEPTH 8
#define AOAI_NAMED_MAX 64

static int in(const char *word, const char *const *list, apr_size_t n)
{
    apr_size_t i;

    for (i = 0; i < n; i++) {
        if (!strcmp(word, list[i])) {
            return 1;
        }
    }
    return 0;
}
#define IN(word, list) in((word), (list), sizeof(list) / sizeof((list)[0]))

static int looks_like_id(const char *text)
{
    apr_size_t i, length = strlen(text);

    if (length < 6 || length > 200) {
        return 0;
    }
    for (i = 0; i < length; i++) {
        if (!apr_isalnum(text[i]) && !strchr("-_.", text[i])) {
            return 0;
        }
    }
    for (i = 0; i < sizeof(id_prefixes) / sizeof(id_prefixes[0]); i++) {
        if (!strncmp(text, id_prefixes[i], strlen(id_prefixes[i]))) {
            return 1;
        }
    }
    return 0;
}

static void name(aoai_call *call, const char *id)
{
    int i;

    for (i = 0; i < call->objects.named->nelts; i++) {
        if (!strcmp(APR_ARRAY_IDX(call->objects.named, i, const char *), id)) {
            return;
        }
    }
    if (call->objects.named->nelts < AOAI_NAMED_MAX) {
        APR_ARRAY_PUSH(call->objects.named, const char *) = id;
    }
}

/* Whether an API path (past /openai/ and v1/) starts with a root. */
static int object_root(const char *path)
{
    apr_size_t length = strcspn(path, "/?#"), i;

    for (i = 0; i < sizeof(roots) / sizeof(roots[0]); i++) {
        if (length == strlen(roots[i]) && !memcmp(path, roots[i], length)) {
            return 1;
        }
    }
    return 0;
}

int aoai_objects_scan_path(aoai_call *call, const char *uri)
{
    request_rec *r = call->r;
    const char *at = strstr(uri, "/openai/");
    char *path, *segment, *state, *previous = NULL;

    if (!at || !call->conf->object_affinity) {
        return 0;
    }
    at += 8;
    if (!strncmp(at, "v1/", 3)) {
        at += 3;
    }
    if (!object_root(at)) {
        return 0;       /* inference: no object of its own */
    }
    path = apr_pstrmemdup(r->pool, at, strcspn(at, "?#"));
    call->objects.named = apr_array_make(r->pool, 2, sizeof(const char *));
    for (segment = apr_strtok(path, "/", &state); segment;
         segment = apr_strtok(NULL, "/", &state)) {
        if (previous && IN(previous, collections) && looks_like_id(segment)) {
            name(call, segment);
            call->objects.deleting = (r->method_number == M_DELETE)
                                     ? segment : NULL;
        }
        else {
            call->objects.deleting = NULL;
        }
        previous = segment;
    }
    call->objects.makes = r->method_number == M_POST;
    return call->objects.makes;
}

static void walk_body(aoai_call *call, json_t *json, int depth)
{
    const char *key;
    json_t *value;
    size_t i;

    if (depth > AOAI_BODY_DEPTH) {
        return;
    }
    if (json_is_array(json)) {
        json_array_foreach(json, i, value) {
            walk_body(call, value, depth + 1);
        }
        return;
    }
    json_object_foreach(json, key, value) {
        if (json_is_string(value) && IN(key, id_fields)
            && looks_like_id(json_string_value(value))) {
            name(call, apr_pstrdup(call->r->pool, json_string_value(value)));
        }
        else if (json_is_array(value) && IN(key, id_list_fields)) {
            json_t *item;
            json_array_foreach(value, i, item) {
                if (json_is_string(item)
                    && looks_like_id(json_string_value(item))) {
                    name(call, apr_pstrdup(call->r->pool,
                                           json_string_value(item)));
                }
            }
        }
        else if (json_is_object(value) || json_is_array(value)) {
            walk_body(call, value, depth + 1);
        }
    }
}

/* The cache's name for an object: its balancer and its id. */
static const char *cache_name(aoai_call *call, const char *id)
{
    return apr_pstrcat(call->r->pool, call->balancer->s->name, " ", id,
                       NULL);
}

/* The member that holds an id, from this gateway's memory, else from the
 * other gateways' (then remembered here too); 0 when nobody knows. */
static apr_uint64_t holder(aoai_call *call, const char *id, apr_time_t now)
{
    apr_uint64_t key = aoai_affinity_key(call->balancer, id);
    apr_uint64_t member = aoai_affinity_get(key, now);
    char text[40];

    if (member || !aoai_shared_cache_get(call->r, cache_name(call, id), text,
                                         sizeof(text))) {
        return member;
    }
    member = (apr_uint64_t)strtoull(text, NULL, 16);
    if (member) {
        aoai_affinity_put(key, member, now + call->conf->object_lifetime);
    }
    return member;
}

int aoai_objects_route(aoai_call *call, json_t *body, const char **why)
{
    apr_time_t now = apr_time_now();
    int i, unknown = 0;

    if (!call->objects.named) {
        return OK;
    }
    if (body) {
        walk_body(call, body, 0);
    }
    for (i = 0; i < call->objects.named->nelts; i++) {
        const char *id = APR_ARRAY_IDX(call->objects.named, i, const char *);
        proxy_worker *worker = aoai_affinity_worker(
            call->balancer, holder(call, id, now));

        if (!worker) {
            unknown = 1;
        }
        else if (call->objects.owner && call->objects.owner != worker) {
            *why = apr_psprintf(call->r->pool, "The objects this call names "
                                "live in different resources behind this "
                                "gateway (%s is not where the others are); "
                                "a call can only use objects of one.", id);
            return HTTP_BAD_REQUEST;
        }
        else {
            call->objects.owner = worker;
        }
    }
    call->objects.probing = unknown && !call->objects.owner;
    return OK;
}

int aoai_objects_not_found(const aoai_call *call, int status,
                           const char *code)
{
    return call->objects.probing
           && (status == HTTP_NOT_FOUND
               || (status == HTTP_BAD_REQUEST && code
                   && strstr(code, "not_found")));
}

void aoai_objects_answer(request_rec *r, aoai_call *call)
{
    const char *type = r->content_type;

    call->objects.answer_length = 0;
    call->objects.answer = NULL;
    if (!call->objects.makes || !ap_is_HTTP_SUCCESS(r->status) || !type) {
        return;
    }
    call->objects.answer_streamed =
        !ap_cstr_casecmpn(type, "text/event-stream", 17);
    if (call->objects.answer_streamed
        || !ap_cstr_casecmpn(type, "application/json", 16)) {
        call->objects.answer = apr_palloc(r->pool, AOAI_ANSWER_KEEP);
    }
}

void aoai_objects_feed(request_rec *r, aoai_call *call,
                       apr_bucket_brigade *bb)
{
    aoai_objects_seen *seen = &call->objects;
    apr_bucket *b;

    (void)r;
    for (b = APR_BRIGADE_FIRST(bb);
         seen->answer && b != APR_BRIGADE_SENTINEL(bb);
         b = APR_BUCKET_NEXT(b)) {
        const char *data;
        apr_size_t length;

        if (APR_BUCKET_IS_METADATA(b)
            || apr_bucket_read(b, &data, &length, APR_BLOCK_READ)
               != APR_SUCCESS) {
            continue;
        }
        if (length > AOAI_ANSWER_KEEP - seen->answer_length) {
            length = AOAI_ANSWER_KEEP - seen->answer_length;
        }
        memcpy(seen->answer + seen->answer_length, data, length);
        seen->answer_length += length;
    }
}

/* A string at the top of a JSON text, or NULL. */
static const char *top_string(apr_pool_t *pool, const char *json,
                              apr_size_t length, const char *key)
{
    const char *value;
    apr_size_t value_length;
    json_t *parsed;
    const char *text = NULL;

    if (!aoai_json_top_level(json, length, key, &value, &value_length)
        || value_length < 2 || value[0] != '"') {
        return NULL;
    }
    parsed = aoai_json_own(pool, json_loadb(value, value_length,
                                            JSON_DECODE_ANY, NULL));
    if (json_is_string(parsed)) {
        text = apr_pstrdup(pool, json_string_value(parsed));
    }
    return text;
}

/* The response a stream made: its response.created event's response.id. */
static const char *streamed_id(apr_pool_t *pool, const char *text,
                               apr_size_t length)
{
    const char *end = text + length;

    while (text < end) {
        const char *line_end = memchr(text, '\n', end - text);
        apr_size_t line = line_end ? (apr_size_t)(line_end - text)
                                   : (apr_size_t)(end - text);

        if (line > 5 && !memcmp(text, "data:", 5)
            && memmem(text, line, "\"response.created\"", 18)) {
            json_t *event = aoai_json_own(pool, json_loadb(
                text + 5, line - 5, 0, NULL));
            json_t *id = json_object_get(json_object_get(event, "response"),
                                         "id");
            return json_is_string(id) ? apr_pstrdup(pool,
                                                    json_string_value(id))
                                      : NULL;
        }
        text += line + 1;
    }
    return NULL;
}

static void remember(aoai_call *call, const char *id, apr_uint64_t member,
                     apr_time_t until)
{
    if (!id || !looks_like_id(id)) {
        return;
    }
    aoai_affinity_put(aoai_affinity_key(call->balancer, id), member, until);
    aoai_shared_cache_put(call->r, cache_name(call, id),
                          apr_psprintf(call->r->pool, "%" APR_UINT64_T_HEX_FMT,
                                       member), until);
}

void aoai_objects_settle(request_rec *r, aoai_call *call)
{
    aoai_objects_seen *seen = &call->objects;
    apr_uint64_t member;
    apr_time_t until;
    int i;

    if (!seen->named || !ap_is_HTTP_SUCCESS(r->status)) {
        return;
    }
    if (seen->deleting) {
        aoai_affinity_forget(aoai_affinity_key(call->balancer,
                                               seen->deleting));
        return;
    }
    member = aoai_affinity_member(call->attempt.worker);
    until = apr_time_now() + call->conf->object_lifetime;
    for (i = 0; seen->probing && i < seen->named->nelts; i++) {
        remember(call, APR_ARRAY_IDX(seen->named, i, const char *), member,
                 until);
    }
    if (seen->answer_streamed) {
        remember(call, streamed_id(r->pool, seen->answer,
                                   seen->answer_length), member, until);
    }
    else if (seen->answer) {
        remember(call, top_string(r->pool, seen->answer, seen->answer_length,
                                  "id"), member, until);
        remember(call, top_string(r->pool, seen->answer, seen->answer_length,
                                  "thread_id"), member, until);
    }
}

void aoai_objects_usage(int *recorded, int *capacity)
{
    aoai_affinity_usage(recorded, capacity);
}

/* ------------------------------------------------------------------ */
/* Directives                                                           */

const char *aoai_objects_set_affinity(cmd_parms *cmd, void *dconf, int on)
{
    aoai_dir_conf *conf = dconf;

    (void)cmd;
    conf->object_affinity = on;
    conf->object_affinity_set = 1;
    return NULL;
}

const char *aoai_objects_set_lifetime(cmd_parms *cmd, void *dconf,
                                      const char *arg)
{
    aoai_dir_conf *conf = dconf;
    const char *err = aoai_config_duration(cmd, arg, &conf->object_lifetime);

    conf->object_lifetime_set = !err;
    return err;
}

const char *aoai_objects_set_table_size(cmd_parms *cmd, void *dummy,
                                        const char *arg)
{
    aoai_server_conf *conf = aoai_config_server(cmd->server);
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);
    char *end;
    long entries;

    (void)dummy;
    if (err) {
        return err;
    }
    entries = strtol(arg, &end, 10);
    if (!apr_isdigit(*arg) || *end || entries < 1024 || entries > 16777216) {
        return apr_psprintf(cmd->pool, "AOAIObjectTableSize: '%s' is not a "
                            "number of objects from 1024 to 16777216", arg);
    }
    conf->object_entries = (int)entries;
    return NULL;
}

int aoai_objects_post_config(server_rec *s)
{
    return aoai_affinity_post_config(s, aoai_config_server(s)->object_entries)
           == APR_SUCCESS ? OK : !OK;
}
