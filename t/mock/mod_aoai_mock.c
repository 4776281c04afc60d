/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * mod_aoai_mock: a stand-in Azure OpenAI resource for tests, the demo and
 * the benchmarks.  One httpd (single process, many threads) serves one
 * member per <VirtualHost>:
 *
 *   <VirtualHost 127.0.0.1:18001>
 *       SetHandler aoai-mock
 *       AOAIMockMember farm1
 *       AOAIMockApiKey farm1-secret          # optional: 401 without it
 *       AOAIMockBearer token-v1              # optional: Authorization: Bearer
 *       AOAIMockQuota 20 10000 0             # requests, window ms, tokens
 *       AOAIMockStream 5 20                  # SSE chunks, ms between them
 *       AOAIMockDeployments gpt-4o ada       # optional: only these names
 *       AOAIMockSet window_mode wall_clock   # any field of the table below
 *   </VirtualHost>
 *
 * It answers the way the service does:
 *   POST /openai/deployments/{id}/chat/completions?api-version=...
 *        400 for a body that is not a chat request, 401 for a wrong
 *        api-key, 429 with Retry-After, retry-after-ms, x-ratelimit-* and
 *        Azure's JSON error when the quota window is spent, a
 *        chat.completion with usage, or with "stream": true an SSE stream
 *        of chat.completion.chunk events ending in "data: [DONE]".
 *   POST .../completions and .../embeddings answer in their shapes.
 *   404 DeploymentNotFound for a deployment the member lacks (the
 *        AOAIMockDeployments list; without one every name is served).
 *   The GA v1 API, with the deployment in the body's "model" (400
 *        missing_required_parameter without it), api-version optional:
 *        POST /openai/v1/chat/completions, /completions, /embeddings,
 *        GET /openai/v1/models (and /openai/models): the deployments.
 *   Stateful objects, kept per member with ids of the member's own, in
 *        both forms, /openai/... and /openai/v1/...:
 *        responses     POST, GET/DELETE {id}; previous_response_id;
 *                      "stream": true answers response.* events
 *        files         POST (multipart: purpose, file), GET, GET {id},
 *                      GET {id}/content, DELETE {id}
 *        assistants    POST, GET, GET/DELETE {id}
 *        threads       POST (with messages), GET/DELETE {id},
 *                      {id}/messages POST, GET, GET {id};
 *                      {id}/runs POST, GET, GET {id} (queued, then
 *                      completed with the answer in the thread)
 *        vector_stores POST (file_ids), GET, GET/DELETE {id},
 *                      {id}/files POST, GET, GET/DELETE {id}
 *        batches       POST (input_file_id), GET, GET {id}, {id}/cancel
 *        fine_tuning/jobs POST (training_file), GET, GET {id}, {id}/cancel
 *        An id the member never made: 404 (invalid_request_error); a body
 *        naming one: 400 previous_response_not_found, 404 for an
 *        assistant, thread or vector store, 404 "Files [...] were not
 *        found" for files.  At most object_cap objects (and 64 MB of file
 *        contents) are kept; the oldest go first.
 *   400 content_filter (Azure's shape, innererror ResponsibleAIPolicy-
 *        Violation) for a prompt with filter_word; 400
 *        context_length_exceeded past context_tokens; 403 when forbidden.
 * and it lets a test steer and inspect it:
 *   GET  /mock/stats     requests, statuses, SHA-256 of every body, the
 *                        settings, the window, objects per kind,
 *                        last_object_ids_seen, last_model...
 *   POST /mock/control   JSON: force a status, a Retry-After form, a fault
 *                        (reset, close_after_headers, hang, stall_stream),
 *                        latency, quota, stream pacing, api key, or chaos:
 *                        each request draws one of those at random; and
 *                        any field of the table below
 *   POST /mock/reset     back to the configured behaviour, stats zeroed,
 *                        stored objects dropped
 *
 * /mock/control fields of the first version (no directive but those above):
 *   quota_requests, quota_tokens, quota_window_ms   the quota window
 *   force_status, force_count (-1: until told)       answer this status
 *   retry_after_form  azure ms seconds date reset none garbage huge
 *   retry_after_ms    the wait a forced 429 announces
 *   fault, fault_count  none reset close_after_headers hang stall_stream
 *   hang_ms, latency_ms, stream_chunks, stream_delay_ms
 *   api_key, bearer_token (null: none required)
 *   chaos_429, chaos_500, chaos_503, chaos_reset, chaos_close, chaos_hang
 *                     percent of calls answered each way
 *
 * Fields set by AOAIMockSet NAME VALUE or /mock/control (default first):
 *   deployments        null | ["name", ...]  (also AOAIMockDeployments)
 *   deployment_case    insensitive | sensitive: how names are matched
 *                      (Azure's deployments are Resource Manager resources,
 *                      whose names are case-insensitive)
 *   path_case          sensitive | insensitive: the "deployments" segment
 *   window_mode        first_call | wall_clock: a window opens at the first
 *                      call after the last one ended, or at multiples of
 *                      its length on the wall clock, plus
 *   window_phase_ms    0
 *   quota_estimate     off | on: admit on prompt + max_tokens (Azure's
 *                      estimate), charge the tokens actually used
 *   limit_headers      off | on: x-ratelimit-limit-requests/-tokens and
 *                      x-ratelimit-reset-requests/-tokens on answers
 *   odd_429_tokens_left off | on: a 429 reports the tokens still left
 *   remaining_unknown  none | -1 | 0: x-ratelimit-remaining-* say
 *                      "unknown" so, as reported of the Responses API
 *   remaining_never_reset off | on: reported figures never go back up
 *   ptu_tokens         0 | N: provisioned; N tokens (estimates) per window,
 *                      azure-openai-deployment-utilization on answers, 429
 *                      at 100% with retry-after(-ms), no x-ratelimit-*
 *   completion_tokens  16: the tokens an answer carries (max_tokens can
 *                      lower it); with "logprobs": true, one logprobs entry
 *                      each, with top_logprobs alternatives: N sets the size
 *   compress           off | on: gzip JSON answers for clients that accept
 *                      it (needs mod_deflate loaded)
 *   filter_word        null | WORD: a prompt with it gets the content filter
 *   context_tokens     0 | N: prompt + max_tokens past N: 400
 *   forbidden          off | on: 403 PermissionDenied to every call
 *   object_cap         1000: stored objects at most
 *   file_not_found_form plain | ownership: the wording for a file of
 *                      another resource
 *
 * State lives in process memory under a mutex; the mock is run with one
 * process (ServerLimit 1) so every thread sees it.  The parts: this file
 * (configuration, the common checks, chat/completions/embeddings, stats
 * and control), aoai_mock_settings.c (the table above), aoai_mock_quota.c
 * (windows and rate-limit headers), aoai_mock_store.c (objects),
 * aoai_mock_objects.c and aoai_mock_assistants.c (their API),
 * aoai_mock_responses.c (the Responses API, filter and context errors,
 * logprobs).
 */

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_ssl.h"
#include "util_filter.h"

#include "apr_strings.h"
#include "apr_thread_mutex.h"
#include "apr_portable.h"
#include "apr_base64.h"
#include "apr_hash.h"

#include <limits.h>
#include <strings.h>
#include <sys/socket.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "aoai_mock.h"

module AP_MODULE_DECLARE_DATA aoai_mock_module;

#define MAX_BODY (64 * 1024 * 1024)
#define COMPRESS_NOTE "aoai-mock-compress"
static void default_behaviour(mock_behaviour *b)
{
    memset(b, 0, sizeof(*b));
    b->quota_window_ms = 60000;
    b->force_count = -1;
    b->retry_after_form = "azure";
    b->retry_after_ms = 5000;
    b->fault = "none";
    b->hang_ms = 5000;
    b->stream_chunks = 5;
    b->stream_delay_ms = 20;
    mock_default_settings(b);
}

static void *create_server_conf(apr_pool_t *p, server_rec *s)
{
    mock_member *m = apr_pcalloc(p, sizeof(*m));
    (void)s;
    default_behaviour(&m->configured);
    m->name = "mock";
    return m;
}

static const char *set_member(cmd_parms *cmd, void *d, const char *name)
{
    mock_member *m = ap_get_module_config(cmd->server->module_config,
                                          &aoai_mock_module);
    (void)d;
    m->name = name;
    return NULL;
}

static const char *set_api_key(cmd_parms *cmd, void *d, const char *key)
{
    mock_member *m = ap_get_module_config(cmd->server->module_config,
                                          &aoai_mock_module);
    (void)d;
    m->configured.api_key = key;
    return NULL;
}

static const char *set_bearer(cmd_parms *cmd, void *d, const char *token)
{
    mock_member *m = ap_get_module_config(cmd->server->module_config,
                                          &aoai_mock_module);
    (void)d;
    m->configured.bearer_token = token;
    return NULL;
}

static const char *set_quota(cmd_parms *cmd, void *d, const char *requests,
                             const char *window_ms, const char *tokens)
{
    mock_member *m = ap_get_module_config(cmd->server->module_config,
                                          &aoai_mock_module);
    (void)d;
    m->configured.quota_requests = atoi(requests);
    m->configured.quota_window_ms = atoi(window_ms);
    m->configured.quota_tokens = tokens ? atoi(tokens) : 0;
    if (m->configured.quota_window_ms <= 0) {
        return "AOAIMockQuota: the window must be a positive number of ms";
    }
    return NULL;
}

static const char *set_stream(cmd_parms *cmd, void *d, const char *chunks,
                              const char *delay_ms)
{
    mock_member *m = ap_get_module_config(cmd->server->module_config,
                                          &aoai_mock_module);
    (void)d;
    m->configured.stream_chunks = atoi(chunks);
    m->configured.stream_delay_ms = atoi(delay_ms);
    return NULL;
}

static const char *set_deployments(cmd_parms *cmd, void *d, const char *name)
{
    mock_member *m = ap_get_module_config(cmd->server->module_config,
                                          &aoai_mock_module);
    (void)d;
    if (!m->configured.deployments) {
        m->configured.deployments = apr_array_make(cmd->pool, 4,
                                                   sizeof(const char *));
    }
    APR_ARRAY_PUSH(m->configured.deployments, const char *) = name;
    return NULL;
}

static const char *set_setting(cmd_parms *cmd, void *d, const char *name,
                               const char *value)
{
    mock_member *m = ap_get_module_config(cmd->server->module_config,
                                          &aoai_mock_module);
    const char *error = mock_set_from_text(cmd->pool, &m->configured, name,
                                           value);
    (void)d;
    if (!error && m->configured.compress
        && !ap_get_output_filter_handle("DEFLATE")) {
        return "AOAIMockSet compress on: load mod_deflate first";
    }
    return error;
}

static const command_rec mock_cmds[] = {
    AP_INIT_TAKE1("AOAIMockMember", set_member, NULL, RSRC_CONF,
                  "Name this mock member answers as"),
    AP_INIT_TAKE1("AOAIMockApiKey", set_api_key, NULL, RSRC_CONF,
                  "api-key the member requires (401 otherwise)"),
    AP_INIT_TAKE1("AOAIMockBearer", set_bearer, NULL, RSRC_CONF,
                  "bearer token the member requires (401 otherwise)"),
    AP_INIT_TAKE23("AOAIMockQuota", set_quota, NULL, RSRC_CONF,
                   "requests per window, window in ms, [tokens per window]"),
    AP_INIT_TAKE2("AOAIMockStream", set_stream, NULL, RSRC_CONF,
                  "SSE chunks per answer, ms between chunks"),
    AP_INIT_ITERATE("AOAIMockDeployments", set_deployments, NULL, RSRC_CONF,
                    "the only deployment names served (404 for others)"),
    AP_INIT_TAKE2("AOAIMockSet", set_setting, NULL, RSRC_CONF,
                  "a /mock/control field and its value"),
    {NULL, {NULL}, NULL, 0, 0, NULL}
};

/* Objects: a random salt makes each member's ids its own (and each run's);
 * what they hold is freed with the child. */
static apr_status_t clear_store(void *store)
{
    mock_store_clear(store);
    return APR_SUCCESS;
}

static void init_store(mock_member *m)
{
    m->store.by_key = apr_hash_make(m->pool);
    if (apr_generate_random_bytes((unsigned char *)&m->store.salt,
                                  sizeof(m->store.salt)) != APR_SUCCESS) {
        m->store.salt = (apr_uint32_t)apr_time_now() ^ (apr_uint32_t)m->random_state;
    }
    m->floor_requests = m->floor_tokens = INT_MAX;
    /* on the pool the index lives in: it runs before that memory goes */
    apr_pool_cleanup_register(m->pool, &m->store, clear_store,
                              apr_pool_cleanup_null);
}

static void mock_child_init(apr_pool_t *p, server_rec *s)
{
    for (; s; s = s->next) {
        mock_member *m = ap_get_module_config(s->module_config,
                                              &aoai_mock_module);
        if (m->mutex) {
            continue;  /* vhosts without their own config share the main */
        }
        apr_thread_mutex_create(&m->mutex, APR_THREAD_MUTEX_DEFAULT, p);
        apr_pool_create(&m->pool, p);
        m->now = m->configured;
        /* each member its own chaos sequence, the same on every run */
        m->random_state = apr_hashfunc_default(m->name, &(apr_ssize_t){
                                                   APR_HASH_KEY_STRING });
        strcpy(m->last_api_key_state, "none");
        strcpy(m->last_bearer_state, "none");
        init_store(m);
    }
}

static const char *credential_state(const char *presented,
                                    const char *expected)
{
    if (!presented) {
        return "absent";
    }
    if (!expected) {
        return "present";
    }
    return strcmp(presented, expected) ? "invalid" : "valid";
}

static int add_header_name(void *baton, const char *name, const char *value)
{
    char *names = baton;
    apr_size_t used = strlen(names);
    (void)value;
    apr_snprintf(names + used, 1024 - used, "%s%s", used ? "," : "", name);
    return 1;
}

/* ------------------------------------------------------------------ */

/* Sends JSON text; gzip-compressed through mod_deflate when the member
 * is told to compress and the client accepts it. */
void mock_send_json_text(request_rec *r, int status, const char *text,
                         apr_size_t length)
{
    r->status = status;
    ap_set_content_type(r, "application/json");
    if (apr_table_get(r->notes, COMPRESS_NOTE)) {
        ap_add_output_filter("DEFLATE", NULL, r, r->connection);
    }
    ap_set_content_length(r, length);
    ap_rwrite(text, (int)length, r);
}

void mock_json_send(request_rec *r, int status, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    mock_send_json_text(r, status, text, strlen(text));
    free(text);
}

void mock_azure_error(request_rec *r, int status, const char *code,
                      const char *message)
{
    mock_json_send(r, status, json_pack("{s:{s:s,s:s}}", "error", "code", code,
                                        "message", message));
}

/* The OpenAI error shape, which Azure uses for the OpenAI-defined APIs. */
void mock_openai_error(request_rec *r, int status, const char *message,
                       const char *param, const char *code)
{
    mock_json_send(r, status, json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error",
                                        "message", message,
                                        "type", "invalid_request_error",
                                        "param", param, "code", code));
}

void mock_deployment_not_found(request_rec *r)
{
    mock_azure_error(r, 404, "DeploymentNotFound", "The API deployment for "
                     "this resource does not exist. If you created the "
                     "deployment within the last 5 minutes, please wait a "
                     "moment and try again.");
}

static int read_body(request_rec *r, char **data, apr_size_t *length)
{
    apr_bucket_brigade *bb = apr_brigade_create(r->pool,
                                                r->connection->bucket_alloc);
    apr_bucket_brigade *all = apr_brigade_create(r->pool,
                                                 r->connection->bucket_alloc);
    int seen_eos = 0;
    apr_off_t total = 0;

    while (!seen_eos) {
        apr_status_t rv = ap_get_brigade(r->input_filters, bb,
                                         AP_MODE_READBYTES, APR_BLOCK_READ,
                                         HUGE_STRING_LEN);
        if (rv != APR_SUCCESS) {
            return ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
        }
        while (!APR_BRIGADE_EMPTY(bb)) {
            apr_bucket *b = APR_BRIGADE_FIRST(bb);
            if (APR_BUCKET_IS_EOS(b)) {
                seen_eos = 1;
            }
            else if (!APR_BUCKET_IS_METADATA(b)) {
                total += b->length;
                if (total > MAX_BODY) {
                    return HTTP_REQUEST_ENTITY_TOO_LARGE;
                }
                apr_bucket_setaside(b, r->pool);
                APR_BUCKET_REMOVE(b);
                APR_BRIGADE_INSERT_TAIL(all, b);
                continue;
            }
            apr_bucket_delete(b);
        }
    }
    apr_brigade_pflatten(all, data, length, r->pool);
    return OK;
}

static void sha256_hex(const char *data, apr_size_t length, char out[65])
{
    unsigned char digest[32];
    unsigned int digest_length = 0;
    int i;

    EVP_Digest(data, length, digest, &digest_length, EVP_sha256(), NULL);
    for (i = 0; i < 32; i++) {
        apr_snprintf(out + 2 * i, 3, "%02x", digest[i]);
    }
}

/* The rate-limit headers of a 429, in the form the test asked for. */
static void set_retry_headers(request_rec *r, const mock_behaviour *b,
                              int wait_ms)
{
    apr_table_t *h = r->headers_out;
    const char *form = b->retry_after_form;
    int wait_s = (wait_ms + 999) / 1000;

    if (!strcmp(form, "azure")) {
        apr_table_setn(h, "Retry-After", apr_itoa(r->pool, wait_s));
        apr_table_setn(h, "retry-after-ms", apr_itoa(r->pool, wait_ms));
    }
    else if (!strcmp(form, "ms")) {
        apr_table_setn(h, "retry-after-ms", apr_itoa(r->pool, wait_ms));
    }
    else if (!strcmp(form, "seconds")) {
        apr_table_setn(h, "Retry-After", apr_itoa(r->pool, wait_s));
    }
    else if (!strcmp(form, "date")) {
        char *date = apr_palloc(r->pool, APR_RFC822_DATE_LEN);
        apr_rfc822_date(date, apr_time_now() + apr_time_from_sec(wait_s));
        apr_table_setn(h, "Retry-After", date);
    }
    else if (!strcmp(form, "reset")) {
        apr_table_setn(h, "x-ratelimit-reset-requests",
                       apr_psprintf(r->pool, "%dms", wait_ms));
        apr_table_setn(h, "x-ratelimit-reset-tokens",
                       apr_psprintf(r->pool, "%d.%03d", wait_ms / 1000,
                                    wait_ms % 1000));
    }
    else if (!strcmp(form, "garbage")) {
        apr_table_setn(h, "Retry-After", "soon-ish");
        apr_table_setn(h, "retry-after-ms", "-12x");
    }
    else if (!strcmp(form, "huge")) {
        apr_table_setn(h, "Retry-After", "86400000");
        apr_table_setn(h, "retry-after-ms", "99999999999999999999999");
    }
    /* "none": no header at all */
    apr_table_setn(h, "x-ratelimit-remaining-requests", "0");
    apr_table_setn(h, "x-ratelimit-remaining-tokens", "0");
}

void mock_answer_429(request_rec *r, const mock_behaviour *b, int wait_ms)
{
    char *message = apr_psprintf(r->pool,
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI "
        "API version 2024-06-01 have exceeded token rate limit of your "
        "current OpenAI S0 pricing tier. Please retry after %d seconds. "
        "Please go here: https://aka.ms/oai/quotaincrease if you would like "
        "to further increase the default rate limit.", (wait_ms + 999) / 1000);
    set_retry_headers(r, b, wait_ms);
    mock_azure_error(r, 429, "429", message);
}

static int reset_connection(request_rec *r)
{
    apr_socket_t *sock = ap_get_conn_socket(r->connection);
    apr_os_sock_t fd;
    struct linger hard = { 1, 0 };

    /* SO_LINGER 0: the close that httpd does for an aborted connection
     * becomes a TCP reset, as a crashed member's would. */
    if (sock && apr_os_sock_get(&fd, sock) == APR_SUCCESS) {
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
    }
    r->connection->keepalive = AP_CONN_CLOSE;
    r->connection->aborted = 1;
    return DONE;
}

json_t *mock_usage_json(int prompt_tokens, int completion_tokens)
{
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", prompt_tokens,
                     "completion_tokens", completion_tokens,
                     "total_tokens", prompt_tokens + completion_tokens);
}

static void send_sse(request_rec *r, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    ap_rvputs(r, "data: ", text, "\n\n", NULL);
    free(text);
    ap_rflush(r);
}

static int stream_answer(request_rec *r, mock_member *m, const mock_behaviour *b,
                         const char *model, int prompt_tokens, int include_usage,
                         int stall)
{
    const char *id = apr_psprintf(r->pool, "chatcmpl-%s-%" APR_TIME_T_FMT,
                                  m->name, apr_time_now());
    int i;

    ap_set_content_type(r, "text/event-stream");
    apr_table_setn(r->headers_out, "Cache-Control", "no-cache");
    apr_thread_mutex_lock(m->mutex);
    m->streams_in_progress++;
    apr_thread_mutex_unlock(m->mutex);

    for (i = 0; i < b->stream_chunks && !r->connection->aborted; i++) {
        const char *piece = apr_psprintf(r->pool, "%s%s", i ? " " : "",
                                         i ? apr_itoa(r->pool, i) : m->name);
        if (i) {
            apr_sleep(apr_time_from_msec(b->stream_delay_ms));
        }
        if (stall && i == 2) {
            apr_thread_mutex_lock(m->mutex);
            m->streams_in_progress--;
            apr_thread_mutex_unlock(m->mutex);
            return reset_connection(r);
        }
        send_sse(r, json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s},s:n}]}",
                              "id", id, "object", "chat.completion.chunk",
                              "created", (json_int_t)apr_time_sec(apr_time_now()),
                              "model", model, "choices", "index", 0, "delta",
                              "content", piece, "finish_reason"));
    }
    if (include_usage) {
        send_sse(r, json_pack("{s:s,s:s,s:s,s:[],s:o}", "id", id, "object",
                              "chat.completion.chunk", "model", model,
                              "choices", "usage",
                              mock_usage_json(prompt_tokens, b->stream_chunks)));
    }
    ap_rputs("data: [DONE]\n\n", r);
    ap_rflush(r);

    apr_thread_mutex_lock(m->mutex);
    m->streams_in_progress--;
    m->streams_completed++;
    apr_thread_mutex_unlock(m->mutex);
    return OK;
}

/* path_case "insensitive" also takes /openai/Deployments/... */
static const char *deployment_operation(request_rec *r, int any_case,
                                        const char **deployment)
{
    static const char prefix[] = "/openai/deployments/";
    const char *rest, *slash;

    if ((any_case ? strncasecmp : strncmp)(r->uri, prefix,
                                           sizeof(prefix) - 1) != 0) {
        return NULL;
    }
    rest = r->uri + sizeof(prefix) - 1;
    slash = strchr(rest, '/');
    if (!slash || slash == rest) {
        return NULL;
    }
    *deployment = apr_pstrmemdup(r->pool, rest, slash - rest);
    return slash + 1;
}

/* ------------------------------------------------------------------ */
/* What every call goes through before its own work. */

/* The bookkeeping /mock/stats shows (mutex held). */
static void note_arrival(mock_call *c, const char *hash, const char *api_key,
                         const char *bearer)
{
    request_rec *r = c->r;
    mock_member *m = c->m;
    const char *sni;

    m->requests++;
    memcpy(m->body_hashes[m->body_count % HASH_RING], hash, 65);
    m->body_count++;
    apr_cpystrn(m->last_host, apr_table_get(r->headers_in, "Host")
                ? apr_table_get(r->headers_in, "Host") : "", sizeof(m->last_host));
    apr_cpystrn(m->last_path, r->unparsed_uri, sizeof(m->last_path));
    sni = ap_ssl_var_lookup(r->pool, r->server, r->connection, r,
                            "SSL_TLS_SNI");
    apr_cpystrn(m->last_sni, sni ? sni : "", sizeof(m->last_sni));
    if (r->connection->keepalives == 0) {
        m->connections++;
    }
    apr_cpystrn(m->last_api_key_state, credential_state(api_key, c->b.api_key),
                sizeof(m->last_api_key_state));
    apr_cpystrn(m->last_bearer_state,
                credential_state(bearer, c->b.bearer_token),
                sizeof(m->last_bearer_state));
    m->last_header_names[0] = '\0';
    apr_table_do(add_header_name, m->last_header_names, r->headers_in, NULL);
}

/* Chaos: one draw per call picks its fate (mutex held). */
static int draw_chaos(mock_call *c)
{
    static const char *const forms[] = { "azure", "ms", "seconds", "date",
                                         "reset", "none", "garbage", "huge" };
    mock_member *m = c->m;
    mock_behaviour *b = &c->b;
    int draw, threshold = 0;

    m->random_state = m->random_state * 6364136223846793005ULL
                      + 1442695040888963407ULL;
    draw = (int)((m->random_state >> 33) % 100);
    if (draw < (threshold += b->chaos_429)) {
        b->retry_after_form = forms[(m->random_state >> 20) % 8];
        b->retry_after_ms = 50 + (int)((m->random_state >> 40) % 450);
        return 429;
    }
    if (draw < (threshold += b->chaos_500)) {
        return 500;
    }
    if (draw < (threshold += b->chaos_503)) {
        return 503;
    }
    if (draw < (threshold += b->chaos_reset)) {
        c->fault_now = 1;
        b->fault = "reset";
    }
    else if (draw < (threshold += b->chaos_close)) {
        c->fault_now = 1;
        b->fault = "close_after_headers";
    }
    else if (draw < (threshold += b->chaos_hang)) {
        c->fault_now = 1;
        b->fault = "hang";
        m->hangs++;
    }
    return 0;
}

/* A fault or status the test asked for: the status to force, if any
 * (mutex held). */
static int draw_fault(mock_call *c)
{
    mock_member *m = c->m;
    const mock_behaviour *b = &c->b;
    int forced = 0;

    if (strcmp(b->fault, "none") && m->now.fault_count != 0) {
        c->fault_now = 1;
        if (m->now.fault_count > 0 && --m->now.fault_count == 0) {
            m->now.fault = "none";
        }
    }
    if (b->chaos_429 + b->chaos_500 + b->chaos_503 + b->chaos_reset
        + b->chaos_close + b->chaos_hang > 0) {
        forced = draw_chaos(c);
    }
    else if (b->force_status && m->now.force_count != 0) {
        forced = b->force_status;
        if (m->now.force_count > 0 && --m->now.force_count == 0) {
            m->now.force_status = 0;
        }
    }
    return forced;
}

/* Reads the body and takes the call in; OK, or the status to return. */
static int arrive(mock_call *c, int *forced, const char **api_key,
                  const char **bearer)
{
    request_rec *r = c->r;
    char hash[65];
    int rc = read_body(r, &c->body, &c->body_length);

    if (rc != OK) {
        return rc;
    }
    sha256_hex(c->body, c->body_length, hash);
    *api_key = apr_table_get(r->headers_in, "api-key");
    *bearer = apr_table_get(r->headers_in, "Authorization");
    if (*bearer) {
        *bearer = strncmp(*bearer, "Bearer ", 7) ? "" : *bearer + 7;
    }
    apr_thread_mutex_lock(c->m->mutex);
    c->b = c->m->now;
    note_arrival(c, hash, *api_key, *bearer);
    *forced = draw_fault(c);
    apr_thread_mutex_unlock(c->m->mutex);
    return OK;
}

/* DONE when the fault ends the connection; OK to go on. */
static int run_fault(mock_call *c)
{
    request_rec *r = c->r;

    if (!strcmp(c->b.fault, "reset")) {
        return reset_connection(r);
    }
    if (!strcmp(c->b.fault, "hang")) {
        apr_sleep(apr_time_from_msec(c->b.hang_ms));
    }
    if (!strcmp(c->b.fault, "close_after_headers")) {
        r->status = 200;
        ap_set_content_type(r, "application/json");
        ap_set_content_length(r, 1000);
        ap_rflush(r);
        return reset_connection(r);
    }
    return OK;
}

/* 401, 403 or the forced status: 1 when one was sent. */
static int refused(mock_call *c, int forced, const char *api_key,
                   const char *bearer)
{
    const mock_behaviour *b = &c->b;
    request_rec *r = c->r;

    if ((b->api_key && (!api_key || strcmp(api_key, b->api_key)))
        || (b->bearer_token && (!bearer || strcmp(bearer, b->bearer_token)))) {
        mock_azure_error(r, 401, "401", "Access denied due to invalid "
                         "subscription key or wrong API endpoint. Make sure to "
                         "provide a valid key for an active subscription and "
                         "use a correct regional API endpoint for your "
                         "resource.");
        return 1;
    }
    if (b->forbidden) {
        mock_azure_error(r, 403, "PermissionDenied", "Principal does not have "
                         "access to API/Operation.");
        return 1;
    }
    if (forced == 429) {
        mock_answer_429(r, b, b->retry_after_ms);
        return 1;
    }
    if (forced) {
        mock_azure_error(r, forced, apr_itoa(r->pool, forced),
                         "The server had an error while processing your "
                         "request.");
        return 1;
    }
    return 0;
}

static apr_status_t release_json(void *doc)
{
    json_decref(doc);
    return APR_SUCCESS;
}

/* The body as JSON, freed with the request; NULL if it is not JSON. */
json_t *mock_parse_body(mock_call *c, int empty_is_object)
{
    c->json = !c->body_length && empty_is_object
        ? json_object() : json_loadb(c->body, c->body_length, 0, NULL);
    if (c->json) {
        apr_pool_cleanup_register(c->r->pool, c->json, release_json,
                                  apr_pool_cleanup_null);
    }
    return c->json;
}

/* ------------------------------------------------------------------ */
/* chat/completions, completions, embeddings */

/* 1 for a request the operation can take; else its 400 is sent. */
static int valid_request(mock_call *c)
{
    json_t *messages;

    if (!c->json) {
        if (!json_is_object(mock_parse_body(c, 0))) {
            mock_azure_error(c->r, 400, "BadRequest",
                             "The request body is not valid JSON.");
            return 0;
        }
        mock_record_model(c);
    }
    messages = json_object_get(c->json, "messages");
    if (!strcmp(c->operation, "chat/completions")
        && (!json_is_array(messages) || !json_array_size(messages))) {
        mock_azure_error(c->r, 400, "BadRequest",
                         "'messages' is a required property");
        return 0;
    }
    return 1;
}

/* The completion tokens the answer carries: completion_tokens, or fewer
 * if max_tokens asks for fewer; *max_tokens what the call reserved
 * (max_tokens, max_completion_tokens), 0 if nothing. */
static int completion_size(mock_call *c, int *max_tokens)
{
    json_t *v = json_object_get(c->json, "max_tokens");
    int n = c->b.completion_tokens;

    if (!json_is_integer(v)) {
        v = json_object_get(c->json, "max_completion_tokens");
        *max_tokens = json_is_integer(v) && json_integer_value(v) >= 1
            && json_integer_value(v) < INT_MAX / 2
            ? (int)json_integer_value(v) : 0;
        return n;
    }
    *max_tokens = json_integer_value(v) >= 1 && json_integer_value(v) < INT_MAX / 2
        ? (int)json_integer_value(v) : 0;
    return *max_tokens >= 1 && *max_tokens <= n ? *max_tokens : n;
}

static int answer_embeddings(mock_call *c, int prompt_tokens)
{
    static const float vector[3] = { 0.1f, 0.2f, 0.3f };
    const char *format = json_string_value(
        json_object_get(c->json, "encoding_format"));
    json_t *embedding;

    if (format && !strcmp(format, "base64")) {
        /* as the service: little-endian float32s, base64 */
        char *encoded = apr_palloc(c->r->pool,
                                   apr_base64_encode_len(sizeof(vector)));
        apr_base64_encode(encoded, (const char *)vector, sizeof(vector));
        embedding = json_string(encoded);
    }
    else {
        embedding = json_pack("[f,f,f]", vector[0], vector[1], vector[2]);
    }
    mock_json_send(c->r, 200, json_pack("{s:s,s:[{s:s,s:i,s:o}],s:s,s:o}",
                                        "object", "list", "data", "object",
                                        "embedding", "index", 0, "embedding",
                                        embedding, "model", c->deployment,
                                        "usage", mock_usage_json(prompt_tokens, 0)));
    return OK;
}

static json_t *chat_doc(mock_call *c, const char *content, json_t *logprobs,
                        int prompt_tokens, int completion_tokens)
{
    json_t *doc = json_pack(
        "{s:s,s:s,s:I,s:s,s:[{s:i,s:s,s:{s:s,s:s}}]}",
        "id", apr_psprintf(c->r->pool, "chatcmpl-%s", c->m->name),
        "object", strcmp(c->operation, "completions") ? "chat.completion"
                                                      : "text_completion",
        "created", (json_int_t)apr_time_sec(apr_time_now()),
        "model", c->deployment,
        "choices", "index", 0, "finish_reason", "stop", "message", "role",
        "assistant", "content", content);

    if (logprobs) {
        json_object_set_new(json_array_get(json_object_get(doc, "choices"), 0),
                            "logprobs", logprobs);
    }
    /* last, as the service writes it: a reader of a large answer finds
     * the usage at its end */
    json_object_set_new(doc, "usage",
                        mock_usage_json(prompt_tokens, completion_tokens));
    return doc;
}

/* With "logprobs": true, an entry per completion token, top_logprobs
 * alternatives each: completion_tokens makes this as large as wanted.
 * The entries are written as text where a marker stands in the JSON. */
#define LOGPROBS_MARK "@@aoai-mock-logprobs@@"

static int answer_logprobs(mock_call *c, int prompt_tokens,
                           int completion_tokens)
{
    json_t *top = json_object_get(c->json, "top_logprobs");
    int n = json_is_integer(top) ? (int)json_integer_value(top) : 0;
    char *content, *logprobs, *text, *at;
    json_t *doc;

    n = n < 0 ? 0 : n > 20 ? 20 : n;
    logprobs = mock_logprobs_text(c->r->pool, c->m->name, completion_tokens,
                                  n, &content);
    doc = chat_doc(c, content, json_string(LOGPROBS_MARK), prompt_tokens,
                   completion_tokens);
    text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    at = strstr(text, "\"" LOGPROBS_MARK "\"");
    *at = '\0';
    at = apr_pstrcat(c->r->pool, text, logprobs,
                     at + sizeof(LOGPROBS_MARK) + 1, NULL);
    free(text);
    mock_send_json_text(c->r, 200, at, strlen(at));
    return OK;
}

static int answer(mock_call *c, int prompt_tokens, int completion_tokens)
{
    json_t *request = c->json;

    if (!strcmp(c->operation, "embeddings")) {
        return answer_embeddings(c, prompt_tokens);
    }
    if (json_is_true(json_object_get(request, "stream"))) {
        return stream_answer(c->r, c->m, &c->b, c->deployment, prompt_tokens,
                             json_is_true(json_object_get(json_object_get(
                                 request, "stream_options"), "include_usage")),
                             c->fault_now && !strcmp(c->b.fault, "stall_stream"));
    }
    if (json_is_true(json_object_get(request, "logprobs"))) {
        return answer_logprobs(c, prompt_tokens, completion_tokens);
    }
    mock_json_send(c->r, 200, chat_doc(c, apr_psprintf(c->r->pool,
                   "Hello from %s", c->m->name), NULL, prompt_tokens,
                   completion_tokens));
    return OK;
}

/* For /openai/deployments/{name}/... and the v1 inference paths. */
int mock_inference(mock_call *c)
{
    int prompt_tokens, completion_tokens, max_tokens;
    mock_admission a;

    if (!mock_serves(&c->b, c->deployment)) {
        mock_deployment_not_found(c->r);
        return OK;
    }
    if (!valid_request(c) || mock_check_references(c) != OK) {
        return OK;
    }
    completion_tokens = completion_size(c, &max_tokens);
    prompt_tokens = (int)(c->body_length / 4) + 1;
    if (mock_content_checks(c, prompt_tokens, max_tokens) != OK) {
        return OK;
    }
    /* Azure admits on an estimate (quota_estimate) and charges the use */
    mock_admit(c->m, &c->b, prompt_tokens + (max_tokens ? max_tokens
                                                        : completion_tokens),
               prompt_tokens + completion_tokens, &a);
    if (a.over) {
        mock_refuse(c->r, &c->b, &a);
        return OK;
    }
    if (c->b.latency_ms) {
        apr_sleep(apr_time_from_msec(c->b.latency_ms));
    }
    mock_admission_headers(c->r, &c->b, &a);
    return answer(c, prompt_tokens, completion_tokens);
}

static int path_any_case(mock_member *m)
{
    int any;

    apr_thread_mutex_lock(m->mutex);
    any = !strcmp(m->now.path_case, "insensitive");
    apr_thread_mutex_unlock(m->mutex);
    return any;
}

static int serve(request_rec *r, mock_member *m)
{
    mock_call c;
    const void *route = NULL;
    const char **ids = NULL, *api_key, *bearer;
    int rc, forced;

    memset(&c, 0, sizeof(c));
    c.r = r;
    c.m = m;
    c.operation = deployment_operation(r, path_any_case(m), &c.deployment);
    if (!c.operation && !(route = mock_api_route(r, &c, &ids))) {
        mock_azure_error(r, 404, "404", "Resource not found");
        return OK;
    }
    if (c.operation && r->method_number != M_POST) {
        mock_azure_error(r, 405, "405", "Method not allowed");
        return OK;
    }
    if ((rc = arrive(&c, &forced, &api_key, &bearer)) != OK
        || (c.fault_now && (rc = run_fault(&c)) != OK)) {
        return rc;
    }
    if (refused(&c, forced, api_key, bearer)) {
        return OK;
    }
    if (c.b.compress) {
        apr_table_setn(r->notes, COMPRESS_NOTE, "1");
    }
    return route ? mock_api(&c, route, ids) : mock_inference(&c);
}

/* ------------------------------------------------------------------ */

static int stats(request_rec *r, mock_member *m)
{
    json_t *doc, *statuses, *hashes, *store;
    apr_int64_t i, first;

    apr_thread_mutex_lock(m->mutex);
    statuses = json_object();
    for (i = 100; i < 600; i++) {
        if (m->status_count[i]) {
            json_object_set_new(statuses, apr_itoa(r->pool, (int)i),
                                json_integer(m->status_count[i]));
        }
    }
    hashes = json_array();
    first = m->body_count > HASH_RING ? m->body_count - HASH_RING : 0;
    for (i = first; i < m->body_count; i++) {
        json_array_append_new(hashes, json_string(m->body_hashes[i % HASH_RING]));
    }
    doc = json_pack("{s:s,s:I,s:I,s:I,s:o,s:o,s:I,s:i,s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:I}",
                    "member", m->name, "requests", (json_int_t)m->requests,
                    "faults", (json_int_t)m->faults,
                    "hangs", (json_int_t)m->hangs,
                    "status", statuses, "body_sha256", hashes,
                    "body_count", (json_int_t)m->body_count,
                    "streams_in_progress", m->streams_in_progress,
                    "streams_completed", (json_int_t)m->streams_completed,
                    "last_api_key", m->last_api_key_state,
                    "last_bearer", m->last_bearer_state,
                    "last_header_names", m->last_header_names,
                    "last_host", m->last_host, "last_path", m->last_path,
                    "last_sni", m->last_sni,
                    "connections", (json_int_t)m->connections);
    json_object_set_new(doc, "last_model", json_string(m->last_model));
    json_object_set_new(doc, "settings", mock_settings_json(&m->now));
    json_object_set_new(doc, "window", mock_window_json(m));
    store = mock_store_json(&m->store, m->now.object_cap);
    json_object_update(doc, store);
    json_decref(store);
    apr_thread_mutex_unlock(m->mutex);
    mock_json_send(r, 200, doc);
    return OK;
}

#define TAKE_INT(name) \
    if ((v = json_object_get(doc, #name)) && json_is_integer(v)) \
        next->name = (int)json_integer_value(v)
#define TAKE_STR(name) \
    if ((v = json_object_get(doc, #name)) && json_is_string(v)) \
        next->name = apr_pstrdup(m->pool, json_string_value(v)); \
    else if (v && json_is_null(v)) \
        next->name = NULL

/* The fields of the first version, as they always were read. */
static void take_first_fields(mock_member *m, mock_behaviour *next,
                              json_t *doc)
{
    json_t *v;

    TAKE_INT(quota_requests);
    TAKE_INT(quota_tokens);
    TAKE_INT(quota_window_ms);
    TAKE_INT(force_status);
    TAKE_INT(force_count);
    TAKE_STR(retry_after_form);
    TAKE_INT(retry_after_ms);
    TAKE_STR(fault);
    TAKE_INT(fault_count);
    TAKE_INT(hang_ms);
    TAKE_INT(latency_ms);
    TAKE_INT(stream_chunks);
    TAKE_INT(stream_delay_ms);
    TAKE_STR(api_key);
    TAKE_STR(bearer_token);
    TAKE_INT(chaos_429);
    TAKE_INT(chaos_500);
    TAKE_INT(chaos_503);
    TAKE_INT(chaos_reset);
    TAKE_INT(chaos_close);
    TAKE_INT(chaos_hang);
    if (!next->fault) {
        next->fault = "none";
    }
    if (!next->retry_after_form) {
        next->retry_after_form = "none";
    }
    if (json_object_get(doc, "force_status") && !json_object_get(doc, "force_count")) {
        next->force_count = -1;
    }
    if (json_object_get(doc, "fault") && !json_object_get(doc, "fault_count")) {
        next->fault_count = -1;
    }
}

/* Back to the configured behaviour, stats zeroed, objects dropped. */
static void reset_member(mock_member *m)
{
    m->now = m->configured;
    mock_quota_reset(m);
    m->requests = m->body_count = m->streams_completed = m->faults = 0;
    m->hangs = m->connections = 0;
    memset(m->status_count, 0, sizeof(m->status_count));
    strcpy(m->last_api_key_state, "none");
    strcpy(m->last_bearer_state, "none");
    m->last_host[0] = m->last_path[0] = m->last_header_names[0] = '\0';
    m->last_sni[0] = m->last_model[0] = '\0';
    mock_store_clear(&m->store);
}

/* Applies a control body as a whole, or not at all: an error, or NULL. */
static const char *take_control(mock_member *m, json_t *doc)
{
    mock_behaviour next = m->now;
    int quota_changed = 0;
    const char *error;

    take_first_fields(m, &next, doc);
    error = mock_take_settings(m->pool, &next, doc, &quota_changed);
    if (!error && next.compress && !ap_get_output_filter_handle("DEFLATE")) {
        error = "compress: load mod_deflate first";
    }
    if (error) {
        return error;
    }
    m->now = next;
    /* A new quota starts a new window. */
    if (quota_changed || json_object_get(doc, "quota_requests")
        || json_object_get(doc, "quota_tokens")) {
        mock_quota_reset(m);
    }
    return NULL;
}

static int control(request_rec *r, mock_member *m, int reset)
{
    char *body;
    apr_size_t length;
    json_t *doc = NULL;
    json_error_t json_error;
    const char *error = NULL;
    int rc = read_body(r, &body, &length);

    if (rc != OK) {
        return rc;
    }
    if (!reset) {
        doc = json_loadb(body, length, 0, &json_error);
        if (!json_is_object(doc)) {
            json_decref(doc);
            mock_azure_error(r, 400, "BadRequest", "control wants a JSON object");
            return OK;
        }
    }
    apr_thread_mutex_lock(m->mutex);
    if (reset) {
        reset_member(m);
    }
    else {
        error = take_control(m, doc);
    }
    apr_thread_mutex_unlock(m->mutex);
    json_decref(doc);
    if (error) {
        mock_azure_error(r, 400, "BadRequest", error);
        return OK;
    }
    mock_json_send(r, 200, json_pack("{s:b}", "ok", 1));
    return OK;
}

static int mock_handler(request_rec *r)
{
    mock_member *m;
    int rc;

    if (!r->handler || strcmp(r->handler, "aoai-mock")) {
        return DECLINED;
    }
    m = ap_get_module_config(r->server->module_config, &aoai_mock_module);
    apr_table_setn(r->headers_out, "x-mock-member", m->name);
    apr_table_setn(r->headers_out, "apim-request-id",
                   apr_psprintf(r->pool, "%s-%" APR_TIME_T_FMT, m->name,
                                apr_time_now()));

    if (!strcmp(r->uri, "/mock/stats")) {
        return stats(r, m);
    }
    if (!strcmp(r->uri, "/mock/control") && r->method_number == M_POST) {
        return control(r, m, 0);
    }
    if (!strcmp(r->uri, "/mock/reset") && r->method_number == M_POST) {
        return control(r, m, 1);
    }
    rc = serve(r, m);
    apr_thread_mutex_lock(m->mutex);
    if (rc == DONE) {
        m->faults++;
    }
    else if (rc == OK && r->status >= 100 && r->status < 600) {
        m->status_count[r->status]++;
    }
    else if (rc >= 100 && rc < 600) {
        m->status_count[rc]++;
    }
    apr_thread_mutex_unlock(m->mutex);
    return rc;
}

static void register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_handler(mock_handler, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(mock_child_init, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(aoai_mock) = {
    STANDARD20_MODULE_STUFF,
    NULL,
    NULL,
    create_server_conf,
    NULL,
    mock_cmds,
    register_hooks,
    AP_MODULE_FLAG_NONE
};
