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
 * and it lets a test steer and inspect it:
 *   GET  /mock/stats     requests, statuses, SHA-256 of every body...
 *   POST /mock/control   JSON: force a status, a Retry-After form, a fault
 *                        (reset, close_after_headers, hang, stall_stream),
 *                        latency, quota, stream pacing, api key, or chaos:
 *                        each request draws one of those at random
 *   POST /mock/reset     back to the configured behaviour, stats zeroed
 *
 * State lives in process memory under a mutex; the mock is run with one
 * process (ServerLimit 1) so every thread sees it.
 */

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_ssl.h"

#include "apr_strings.h"
#include "apr_thread_mutex.h"
#include "apr_portable.h"
#include "apr_base64.h"
#include "apr_hash.h"

#include <sys/socket.h>
#include <jansson.h>
#include <openssl/evp.h>

module AP_MODULE_DECLARE_DATA aoai_mock_module;

#define HASH_RING 512
#define MAX_BODY (64 * 1024 * 1024)

typedef struct {
    /* behaviour */
    int quota_requests;        /* per window; 0 = unlimited */
    int quota_tokens;          /* per window; 0 = unlimited */
    int quota_window_ms;
    int force_status;          /* answer this status ... */
    int force_count;           /* ... this many times (-1: until told) */
    const char *retry_after_form;  /* azure ms seconds date reset none garbage huge */
    int retry_after_ms;        /* window a forced 429 announces */
    const char *fault;         /* none reset close_after_headers hang stall_stream */
    int fault_count;
    int hang_ms;
    int latency_ms;
    int stream_chunks;
    int stream_delay_ms;
    const char *api_key;
    const char *bearer_token;
    /* chaos: percent of requests answered each way, drawn per request */
    int chaos_429, chaos_500, chaos_503, chaos_reset, chaos_close, chaos_hang;
} mock_behaviour;

typedef struct {
    const char *name;
    mock_behaviour configured;
    unsigned int configured_set:1;
    /* runtime, guarded by mutex */
    apr_pool_t *pool;          /* for strings set through /mock/control */
    apr_thread_mutex_t *mutex;
    mock_behaviour now;
    apr_time_t window_start;
    int window_requests;
    int window_tokens;
    apr_int64_t requests;
    apr_int64_t faults;            /* connections reset on purpose */
    apr_int64_t hangs;             /* answers held past the caller's timeout */
    apr_uint64_t random_state;
    apr_int64_t status_count[600];
    char body_hashes[HASH_RING][65];
    apr_int64_t body_count;
    int streams_in_progress;
    apr_int64_t streams_completed;
    char last_api_key_state[16];   /* absent / present / valid / invalid */
    char last_bearer_state[16];    /* absent / present / valid / invalid */
    char last_header_names[1024];  /* names only: values may be secrets */
    char last_host[256];
    char last_sni[256];            /* TLS server name the caller sent */
    char last_path[512];
    apr_int64_t connections;       /* first requests of a connection: with
                                    * TLS, one full handshake each */
} mock_member;

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
    {NULL, {NULL}, NULL, 0, 0, NULL}
};

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

static void json_send(request_rec *r, int status, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    r->status = status;
    ap_set_content_type(r, "application/json");
    ap_set_content_length(r, strlen(text));
    ap_rputs(text, r);
    free(text);
}

static void azure_error(request_rec *r, int status, const char *code,
                        const char *message)
{
    json_send(r, status, json_pack("{s:{s:s,s:s}}", "error", "code", code,
                                   "message", message));
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

static void answer_429(request_rec *r, const mock_behaviour *b, int wait_ms)
{
    char *message = apr_psprintf(r->pool,
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI "
        "API version 2024-06-01 have exceeded token rate limit of your "
        "current OpenAI S0 pricing tier. Please retry after %d seconds. "
        "Please go here: https://aka.ms/oai/quotaincrease if you would like "
        "to further increase the default rate limit.", (wait_ms + 999) / 1000);
    set_retry_headers(r, b, wait_ms);
    azure_error(r, 429, "429", message);
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

static json_t *usage_json(int prompt_tokens, int completion_tokens)
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
                              usage_json(prompt_tokens, b->stream_chunks)));
    }
    ap_rputs("data: [DONE]\n\n", r);
    ap_rflush(r);

    apr_thread_mutex_lock(m->mutex);
    m->streams_in_progress--;
    m->streams_completed++;
    apr_thread_mutex_unlock(m->mutex);
    return OK;
}

static const char *deployment_operation(request_rec *r, const char **deployment)
{
    static const char prefix[] = "/openai/deployments/";
    const char *rest, *slash;

    if (strncmp(r->uri, prefix, sizeof(prefix) - 1) != 0) {
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

static int inference(request_rec *r, mock_member *m)
{
    mock_behaviour b;
    const char *deployment, *operation, *api_key, *bearer, *sni;
    char *body;
    apr_size_t body_length;
    char hash[65];
    json_t *request, *messages, *max_tokens_json;
    json_error_t json_error;
    int rc, prompt_tokens, completion_tokens, stream, include_usage;
    int base64_embedding;
    int forced = 0, fault_now = 0, wait_ms = 0, over_quota = 0;
    int remaining_requests, remaining_tokens;
    apr_time_t now;

    operation = deployment_operation(r, &deployment);
    if (!operation) {
        azure_error(r, 404, "404", "Resource not found");
        return OK;
    }
    if (r->method_number != M_POST) {
        azure_error(r, 405, "405", "Method not allowed");
        return OK;
    }
    rc = read_body(r, &body, &body_length);
    if (rc != OK) {
        return rc;
    }
    sha256_hex(body, body_length, hash);
    api_key = apr_table_get(r->headers_in, "api-key");
    bearer = apr_table_get(r->headers_in, "Authorization");
    if (bearer) {
        bearer = strncmp(bearer, "Bearer ", 7) ? "" : bearer + 7;
    }

    apr_thread_mutex_lock(m->mutex);
    b = m->now;
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
    apr_cpystrn(m->last_api_key_state, credential_state(api_key, b.api_key),
                sizeof(m->last_api_key_state));
    apr_cpystrn(m->last_bearer_state, credential_state(bearer, b.bearer_token),
                sizeof(m->last_bearer_state));
    m->last_header_names[0] = '\0';
    apr_table_do(add_header_name, m->last_header_names, r->headers_in, NULL);
    if (strcmp(b.fault, "none") && m->now.fault_count != 0) {
        fault_now = 1;
        if (m->now.fault_count > 0 && --m->now.fault_count == 0) {
            m->now.fault = "none";
        }
    }
    if (b.chaos_429 + b.chaos_500 + b.chaos_503 + b.chaos_reset
        + b.chaos_close + b.chaos_hang > 0) {
        static const char *const forms[] = { "azure", "ms", "seconds", "date",
                                             "reset", "none", "garbage",
                                             "huge" };
        int draw, threshold = 0;
        m->random_state = m->random_state * 6364136223846793005ULL
                          + 1442695040888963407ULL;
        draw = (int)((m->random_state >> 33) % 100);
        if (draw < (threshold += b.chaos_429)) {
            forced = 429;
            b.retry_after_form = forms[(m->random_state >> 20) % 8];
            b.retry_after_ms = 50 + (int)((m->random_state >> 40) % 450);
        }
        else if (draw < (threshold += b.chaos_500)) {
            forced = 500;
        }
        else if (draw < (threshold += b.chaos_503)) {
            forced = 503;
        }
        else if (draw < (threshold += b.chaos_reset)) {
            fault_now = 1;
            b.fault = "reset";
        }
        else if (draw < (threshold += b.chaos_close)) {
            fault_now = 1;
            b.fault = "close_after_headers";
        }
        else if (draw < (threshold += b.chaos_hang)) {
            fault_now = 1;
            b.fault = "hang";
            m->hangs++;
        }
    }
    else if (b.force_status && m->now.force_count != 0) {
        forced = b.force_status;
        if (m->now.force_count > 0 && --m->now.force_count == 0) {
            m->now.force_status = 0;
        }
    }
    apr_thread_mutex_unlock(m->mutex);

    if (fault_now) {
        if (!strcmp(b.fault, "reset")) {
            return reset_connection(r);
        }
        if (!strcmp(b.fault, "hang")) {
            apr_sleep(apr_time_from_msec(b.hang_ms));
        }
        if (!strcmp(b.fault, "close_after_headers")) {
            r->status = 200;
            ap_set_content_type(r, "application/json");
            ap_set_content_length(r, 1000);
            ap_rflush(r);
            return reset_connection(r);
        }
    }

    if ((b.api_key && (!api_key || strcmp(api_key, b.api_key)))
        || (b.bearer_token && (!bearer || strcmp(bearer, b.bearer_token)))) {
        azure_error(r, 401, "401", "Access denied due to invalid subscription "
                    "key or wrong API endpoint. Make sure to provide a valid "
                    "key for an active subscription and use a correct "
                    "regional API endpoint for your resource.");
        return OK;
    }
    if (forced == 429) {
        answer_429(r, &b, b.retry_after_ms);
        return OK;
    }
    if (forced) {
        azure_error(r, forced, apr_itoa(r->pool, forced),
                    "The server had an error while processing your request.");
        return OK;
    }

    request = json_loadb(body, body_length, 0, &json_error);
    if (!request || !json_is_object(request)) {
        json_decref(request);
        azure_error(r, 400, "BadRequest", "The request body is not valid JSON.");
        return OK;
    }
    messages = json_object_get(request, "messages");
    if (!strcmp(operation, "chat/completions")
        && (!json_is_array(messages) || !json_array_size(messages))) {
        json_decref(request);
        azure_error(r, 400, "BadRequest", "'messages' is a required property");
        return OK;
    }
    stream = json_is_true(json_object_get(request, "stream"));
    include_usage = json_is_true(json_object_get(
        json_object_get(request, "stream_options"), "include_usage"));
    base64_embedding = json_is_string(json_object_get(request, "encoding_format"))
        && !strcmp(json_string_value(json_object_get(request, "encoding_format")),
                   "base64");
    max_tokens_json = json_object_get(request, "max_tokens");
    completion_tokens = json_is_integer(max_tokens_json)
        ? (int)json_integer_value(max_tokens_json) : 16;
    if (completion_tokens > 16 || completion_tokens < 1) {
        completion_tokens = 16;
    }
    json_decref(request);
    prompt_tokens = (int)(body_length / 4) + 1;

    /* Fixed windows, as Azure's per-minute quotas behave for a client. */
    now = apr_time_now();
    apr_thread_mutex_lock(m->mutex);
    if (now >= m->window_start + apr_time_from_msec(b.quota_window_ms)) {
        m->window_start = now;
        m->window_requests = 0;
        m->window_tokens = 0;
    }
    if ((b.quota_requests && m->window_requests + 1 > b.quota_requests)
        || (b.quota_tokens && m->window_tokens + prompt_tokens
            + completion_tokens > b.quota_tokens)) {
        over_quota = 1;
        /* rounded up, as the service does: a client that waits exactly
         * this long finds the new window open */
        wait_ms = (int)((m->window_start + apr_time_from_msec(b.quota_window_ms)
                         - now + 999) / 1000);
        if (wait_ms < 1) {
            wait_ms = 1;
        }
    }
    else {
        m->window_requests++;
        m->window_tokens += prompt_tokens + completion_tokens;
    }
    remaining_requests = b.quota_requests
        ? b.quota_requests - m->window_requests : 1000;
    remaining_tokens = b.quota_tokens
        ? b.quota_tokens - m->window_tokens : 120000;
    apr_thread_mutex_unlock(m->mutex);

    if (over_quota) {
        answer_429(r, &b, wait_ms);
        return OK;
    }
    if (b.latency_ms) {
        apr_sleep(apr_time_from_msec(b.latency_ms));
    }
    apr_table_setn(r->headers_out, "x-ratelimit-remaining-requests",
                   apr_itoa(r->pool, remaining_requests));
    apr_table_setn(r->headers_out, "x-ratelimit-remaining-tokens",
                   apr_itoa(r->pool, remaining_tokens));

    if (!strcmp(operation, "embeddings")) {
        static const float vector[3] = { 0.1f, 0.2f, 0.3f };
        json_t *embedding;
        if (base64_embedding) {
            /* as the service: little-endian float32s, base64 */
            char *encoded = apr_palloc(r->pool,
                                       apr_base64_encode_len(sizeof(vector)));
            apr_base64_encode(encoded, (const char *)vector, sizeof(vector));
            embedding = json_string(encoded);
        }
        else {
            embedding = json_pack("[f,f,f]", vector[0], vector[1], vector[2]);
        }
        json_send(r, 200, json_pack("{s:s,s:[{s:s,s:i,s:o}],s:s,s:o}",
                                    "object", "list", "data", "object",
                                    "embedding", "index", 0, "embedding",
                                    embedding, "model", deployment,
                                    "usage", usage_json(prompt_tokens, 0)));
        return OK;
    }
    if (stream) {
        return stream_answer(r, m, &b, deployment, prompt_tokens,
                             include_usage,
                             fault_now && !strcmp(b.fault, "stall_stream"));
    }
    json_send(r, 200, json_pack(
        "{s:s,s:s,s:I,s:s,s:[{s:i,s:s,s:{s:s,s:s}}],s:o}",
        "id", apr_psprintf(r->pool, "chatcmpl-%s", m->name),
        "object", strcmp(operation, "completions") ? "chat.completion"
                                                   : "text_completion",
        "created", (json_int_t)apr_time_sec(now), "model", deployment,
        "choices", "index", 0, "finish_reason", "stop", "message", "role",
        "assistant", "content", apr_psprintf(r->pool, "Hello from %s", m->name),
        "usage", usage_json(prompt_tokens, completion_tokens)));
    return OK;
}

static int stats(request_rec *r, mock_member *m)
{
    json_t *doc, *statuses, *hashes;
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
    apr_thread_mutex_unlock(m->mutex);
    json_send(r, 200, doc);
    return OK;
}

#define TAKE_INT(name) \
    if ((v = json_object_get(doc, #name)) && json_is_integer(v)) \
        m->now.name = (int)json_integer_value(v)
#define TAKE_STR(name) \
    if ((v = json_object_get(doc, #name)) && json_is_string(v)) \
        m->now.name = apr_pstrdup(m->pool, json_string_value(v)); \
    else if (v && json_is_null(v)) \
        m->now.name = NULL

static int control(request_rec *r, mock_member *m, int reset)
{
    char *body;
    apr_size_t length;
    json_t *doc = NULL, *v;
    json_error_t json_error;
    int rc = read_body(r, &body, &length);

    if (rc != OK) {
        return rc;
    }
    if (!reset) {
        doc = json_loadb(body, length, 0, &json_error);
        if (!json_is_object(doc)) {
            json_decref(doc);
            azure_error(r, 400, "BadRequest", "control wants a JSON object");
            return OK;
        }
    }
    apr_thread_mutex_lock(m->mutex);
    if (reset) {
        m->now = m->configured;
        m->window_start = 0;
        m->window_requests = m->window_tokens = 0;
        m->requests = m->body_count = m->streams_completed = m->faults = 0;
        m->hangs = m->connections = 0;
        memset(m->status_count, 0, sizeof(m->status_count));
        strcpy(m->last_api_key_state, "none");
        strcpy(m->last_bearer_state, "none");
        m->last_host[0] = m->last_path[0] = m->last_header_names[0] = '\0';
        m->last_sni[0] = '\0';
    }
    else {
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
        if (!m->now.fault) {
            m->now.fault = "none";
        }
        if (!m->now.retry_after_form) {
            m->now.retry_after_form = "none";
        }
        if (json_object_get(doc, "force_status") && !json_object_get(doc, "force_count")) {
            m->now.force_count = -1;
        }
        if (json_object_get(doc, "fault") && !json_object_get(doc, "fault_count")) {
            m->now.fault_count = -1;
        }
        /* A new quota starts a new window. */
        if (json_object_get(doc, "quota_requests")
            || json_object_get(doc, "quota_tokens")) {
            m->window_start = 0;
        }
    }
    apr_thread_mutex_unlock(m->mutex);
    json_decref(doc);
    json_send(r, 200, json_pack("{s:b}", "ok", 1));
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
    rc = inference(r, m);
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
