/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * What the parts of mod_aoai_mock share: a member's behaviour and state,
 * one call in progress, and the functions each part offers the others.
 * The directives and /mock/control fields are documented at the top of
 * mod_aoai_mock.c.
 */

#ifndef AOAI_MOCK_H
#define AOAI_MOCK_H

#include "httpd.h"
#include "http_config.h"
#include "apr_hash.h"
#include "apr_tables.h"
#include "apr_thread_mutex.h"

#include <jansson.h>

#define HASH_RING 512
#define SEEN_RING 16

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

    /* Set through AOAIMockDeployments / AOAIMockSet or /mock/control
     * (the table in aoai_mock_settings.c). */
    apr_array_header_t *deployments;   /* names (const char *); NULL: any */
    const char *deployment_case;       /* insensitive | sensitive */
    const char *path_case;             /* sensitive | insensitive */
    const char *window_mode;           /* first_call | wall_clock */
    int window_phase_ms;
    int quota_estimate;        /* admit on prompt + max_tokens */
    int limit_headers;         /* x-ratelimit-limit-* and -reset-* on 200 */
    int odd_429_tokens_left;   /* a 429 reports the tokens still left */
    const char *remaining_unknown;     /* none | -1 | 0 */
    int remaining_never_reset; /* reported figures only ever go down */
    int ptu_tokens;            /* provisioned: tokens per window; 0: off */
    int completion_tokens;     /* tokens an answer carries at most */
    int compress;              /* gzip JSON answers when asked to */
    const char *filter_word;   /* a prompt with it: content filter 400 */
    int context_tokens;        /* context window; 0: unlimited */
    int forbidden;             /* 403 to every call */
    int object_cap;            /* stored objects at most */
    const char *file_not_found_form;   /* plain | ownership */
} mock_behaviour;

typedef struct mock_object mock_object;
struct mock_object {
    char *key;                 /* id, or "parent/id" for a store's file */
    char *id;
    char *parent;              /* thread, or vector store; NULL if none */
    int kind;
    int pinned;                /* held by a caller: not evicted */
    json_t *doc;               /* what GET answers */
    char *content;             /* a file's bytes */
    apr_size_t content_length;
    mock_object *older, *newer;
};

typedef struct {
    apr_hash_t *by_key;
    mock_object *oldest, *newest;
    int count;
    apr_size_t bytes;          /* of file contents */
    apr_uint32_t salt;         /* makes this member's ids its own */
    apr_uint64_t sequence;
    apr_int64_t evicted;
    char seen[SEEN_RING][80];  /* ids the last calls named */
    apr_int64_t seen_count;
} mock_store;

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
    int window_ptu_tokens;     /* estimates admitted, provisioned mode */
    int floor_requests, floor_tokens;  /* remaining_never_reset */
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
    char last_model[256];
    mock_store store;
} mock_member;

/* One call on its way through the member. */
typedef struct {
    request_rec *r;
    mock_member *m;
    mock_behaviour b;          /* the behaviour when the call came in */
    char *body;
    apr_size_t body_length;
    json_t *json;              /* the body parsed; NULL if not JSON */
    const char *deployment;    /* from the path, or the body's model */
    const char *operation;     /* chat/completions, embeddings, ... */
    const char *rest;          /* /openai[/v1] stripped: "files/..." */
    int v1;
    int fault_now;
    int references_checked;    /* mock_check_references has run */
} mock_call;

/* Rate-limit decision for one call. */
typedef struct {
    int over, wait_ms;
    int remaining_requests, remaining_tokens;
    int limit_requests, limit_tokens;
    int reset_ms;
    double utilization;        /* provisioned mode, percent */
} mock_admission;

/* mod_aoai_mock.c */
void mock_json_send(request_rec *r, int status, json_t *doc);
void mock_azure_error(request_rec *r, int status, const char *code,
                      const char *message);
void mock_openai_error(request_rec *r, int status, const char *message,
                       const char *param, const char *code);
void mock_answer_429(request_rec *r, const mock_behaviour *b, int wait_ms);
json_t *mock_usage_json(int prompt_tokens, int completion_tokens);
void mock_send_json_text(request_rec *r, int status, const char *text,
                         apr_size_t length);
void mock_deployment_not_found(request_rec *r);
json_t *mock_parse_body(mock_call *c, int empty_is_object);
int mock_inference(mock_call *c);

/* aoai_mock_settings.c */
void mock_default_settings(mock_behaviour *b);
const char *mock_set_field(apr_pool_t *p, mock_behaviour *b, const char *name,
                           json_t *value, int *quota_changed);
const char *mock_set_from_text(apr_pool_t *p, mock_behaviour *b,
                               const char *name, const char *text);
const char *mock_take_settings(apr_pool_t *p, mock_behaviour *b, json_t *doc,
                               int *quota_changed);
json_t *mock_settings_json(const mock_behaviour *b);
int mock_serves(const mock_behaviour *b, const char *deployment);

/* aoai_mock_quota.c */
void mock_admit(mock_member *m, const mock_behaviour *b, int estimate,
                int actual, mock_admission *a);
void mock_admission_headers(request_rec *r, const mock_behaviour *b,
                            const mock_admission *a);
void mock_refuse(request_rec *r, const mock_behaviour *b,
                 const mock_admission *a);
void mock_quota_reset(mock_member *m);
json_t *mock_window_json(mock_member *m);

/* aoai_mock_store.c */
enum { K_RESPONSE, K_FILE, K_ASSISTANT, K_THREAD, K_MESSAGE, K_RUN,
       K_VECTOR_STORE, K_VS_FILE, K_BATCH, K_FTJOB, K_COUNT };
const char *mock_kind_name(int kind);
const char *mock_new_id(mock_store *s, apr_pool_t *p, int kind);
mock_object *mock_find(mock_store *s, int kind, const char *parent,
                       const char *id);
mock_object *mock_add(mock_member *m, int kind, const char *id,
                      const char *parent, json_t *doc);
void mock_remove(mock_store *s, mock_object *o);
void mock_store_clear(mock_store *s);
void mock_seen(mock_store *s, const char *id);
void mock_not_found(request_rec *r, int kind, const char *id);
int mock_check_references(mock_call *c);
int mock_attach_content(mock_member *m, mock_object *o, const char *data,
                        apr_size_t length);
json_t *mock_list_json(mock_store *s, int kind, const char *parent);
json_t *mock_store_json(mock_store *s, int cap);
void mock_record_model(mock_call *c);

/* aoai_mock_objects.c: routes; each handler answers and returns OK */
typedef int (*mock_api_fn)(mock_call *c, const char *const *ids, int kind);
const void *mock_api_route(request_rec *r, mock_call *c, const char ***ids);
int mock_api(mock_call *c, const void *route, const char **ids);
int mock_missing(mock_call *c, const char *param);
json_t *mock_take(json_t *body, const char *key, json_t *fallback);
int mock_answer_copy(mock_call *c, json_t *copy, int kind, const char *id);
int mock_store_and_answer(mock_call *c, int kind, const char *id,
                          const char *parent, json_t *doc);

/* aoai_mock_assistants.c */
int mock_create_assistant(mock_call *c, const char *const *ids, int kind);
int mock_create_thread(mock_call *c, const char *const *ids, int kind);
int mock_create_message(mock_call *c, const char *const *ids, int kind);
int mock_create_run(mock_call *c, const char *const *ids, int kind);
int mock_get_run(mock_call *c, const char *const *ids, int kind);
int mock_list_children(mock_call *c, const char *const *ids, int kind);
int mock_get_child(mock_call *c, const char *const *ids, int kind);
int mock_create_vector_store(mock_call *c, const char *const *ids, int kind);
int mock_add_store_file(mock_call *c, const char *const *ids, int kind);
int mock_delete_store_file(mock_call *c, const char *const *ids, int kind);

/* aoai_mock_responses.c */
int mock_responses_create(mock_call *c);
int mock_content_checks(mock_call *c, int prompt_tokens, int max_tokens);
char *mock_logprobs_text(apr_pool_t *p, const char *name, int tokens, int top,
                         char **content);

#endif
