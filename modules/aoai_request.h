/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_request: what one call through an aoai balancer carries from its
 * first phase to its last, split by the concern that writes each part,
 * and the link from a member's connection back to the attempt on it.
 */

#ifndef AOAI_REQUEST_H
#define AOAI_REQUEST_H

#include "httpd.h"
#include "mod_proxy.h"

#include "aoai_config.h"
#include "aoai_table.h"
#include "aoai_usage.h"

/* What this call's picks have done; written by aoai_lbmethod.c, read by
 * the attempt loop so a failover never picks a member twice. */
typedef struct {
    apr_array_header_t *tried;             /* proxy_worker * */
    apr_array_header_t *skipped_throttled; /* proxy_worker * */
    int headroom_passed_over;              /* by the last pick */
} aoai_picks;

/* The deployment the call names and who serves it; aoai_deployments.c. */
typedef struct {
    const char *name;          /* as the client wrote it; NULL: none */
    int by_model;              /* it is the body's "model", not the path's */
    const char *by_query;      /* or this query parameter's (Realtime) */
    const char **at_member;    /* by worker->s->index: its name for it,
                                * NULL when it does not serve it; the
                                * array is NULL when every member serves */
    int slots;
    int marks_looked;          /* marks_on holds the answer, for the call */
    int marks_on;              /* some member was marked as lacking some
                                * deployment when the call first asked */
} aoai_route;

/* The subscription key's token charge; aoai_key_quota.c. */
typedef struct {
    aoai_quota_shared *shared; /* NULL: nothing charged */
    apr_int64_t remaining;     /* the key's tokens left after this call */
    apr_time_t window;         /* the minute the charge was taken in */
    apr_int64_t unread;        /* the charge when the answer has no figure:
                                * the prompt and max_tokens, else
                                * AOAIKeyTokensUnread */
} aoai_charge;

/* The stored objects a call names or makes; aoai_objects.c. */
typedef struct {
    apr_array_header_t *named;  /* const char *: ids in its path or body */
    proxy_worker *owner;        /* the member that holds them, when known */
    int probing;                /* named ids nobody knows: members are
                                 * asked in turn until one has them */
    int makes;                  /* its answer may make an object */
    const char *deleting;       /* a DELETE of this object */
    char *answer;               /* the start of a 2xx answer, for the id */
    apr_size_t answer_length;
    int answer_streamed;
} aoai_objects_seen;

/* A Realtime call's WebSocket session; aoai_realtime.c. */
typedef struct {
    int handshake;             /* the call asks for a WebSocket upgrade */
    int open;                  /* a member answered 101: the session runs */
    aoai_usage usage;          /* summed from its response.done events */
    int usage_found;
    /* The frame being read, member to client. */
    unsigned char head[14];
    int head_length;
    apr_uint64_t payload_left;
    apr_uint64_t payload_at;
    unsigned char mask[4];
    int masked, opcode, fin;
    char *message;             /* the text message being collected */
    apr_size_t message_length;
    int message_skip;          /* too long, compressed or not text */
} aoai_session;

/* The attempt under way; aoai_failover.c starts and judges it, the
 * filters on the member's connection (aoai_first_byte.c) watch it. */
typedef struct {
    proxy_worker *worker;
    int number;                /* 1 for the first attempt */
    int running;               /* inside the scheme handler */
    int failed_status;         /* a failed answer the filter swallowed */
    int broke;                 /* the member went away before answering */
    int answered;              /* a byte of the member's answer came */
    int sent;                  /* its request reached the member */
    apr_bucket_brigade *held;  /* a failed answer held for its error code */
} aoai_attempt;

typedef struct {
    request_rec *r;
    proxy_balancer *balancer;
    const aoai_dir_conf *conf;
    const char *key_label;     /* the subscriber, when keys are checked */
    apr_int64_t token_estimate;/* prompt + max_tokens, when anyone needs it */
    apr_interval_time_t first_byte_timeout; /* this call's; 0: none */
    apr_interval_time_t handshake_timeout;  /* every call's; 0: none */
    int passed;                /* an answer went on to the client */
    aoai_usage_scan *usage;    /* that answer's usage, when readable */
    aoai_picks picks;
    aoai_route route;
    aoai_charge charge;
    aoai_objects_seen objects;
    aoai_session session;
    aoai_attempt attempt;
} aoai_call;

/* The call this request is, once aoai_request_start() made it. */
aoai_call *aoai_request_call(request_rec *r);
aoai_call *aoai_request_start(request_rec *r, proxy_balancer *balancer,
                              const aoai_dir_conf *conf);

/* mod_proxy gives a member's connection no way back to the request it
 * serves; an attempt runs start to end in the thread that runs the
 * handler, so the thread carries it. */
void aoai_request_attempt_begin(aoai_call *call);
void aoai_request_attempt_end(aoai_call *call);
aoai_call *aoai_request_attempt_here(void);

#endif /* AOAI_REQUEST_H */
