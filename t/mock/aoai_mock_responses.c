/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The Responses API (POST /openai/responses, /openai/v1/responses): a
 * "response" object with its output and usage (input_tokens, output_tokens,
 * total_tokens), kept by the member unless "store": false, chained with
 * previous_response_id (the previous usage counts as input), and with
 * "stream": true the service's events, each an "event:" and a "data:"
 * line.  Also the answers every inference call can get before it runs:
 * the content filter and context_length_exceeded 400s, and the logprobs
 * that make an answer as large as a test wants.
 */

#include "aoai_mock.h"

#include "http_protocol.h"
#include "apr_strings.h"

#include <stdarg.h>
#include <sys/uio.h>

/* ------------------------------------------------------------------ */
/* Errors a gateway must tell apart from a member's trouble. */

static void content_filtered(request_rec *r)
{
    /* Azure's answer when its filter stops a prompt */
    mock_json_send(r, 400, json_pack(
        "{s:{s:s,s:n,s:s,s:s,s:i,s:{s:s,s:{s:{s:b,s:s},s:{s:b,s:b},"
        "s:{s:b,s:s},s:{s:b,s:s},s:{s:b,s:s}}}}}",
        "error", "message",
        "The response was filtered due to the prompt triggering Azure "
        "OpenAI's content management policy. Please modify your prompt and "
        "retry. To learn more about our content filtering policies please "
        "read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766",
        "type", "param", "prompt", "code", "content_filter", "status", 400,
        "innererror", "code", "ResponsibleAIPolicyViolation",
        "content_filter_result",
        "hate", "filtered", 0, "severity", "safe",
        "jailbreak", "filtered", 0, "detected", 0,
        "self_harm", "filtered", 0, "severity", "safe",
        "sexual", "filtered", 0, "severity", "safe",
        "violence", "filtered", 1, "severity", "medium"));
}

static void context_exceeded(mock_call *c, int prompt_tokens, int max_tokens)
{
    request_rec *r = c->r;

    if (!strcmp(c->operation, "responses")) {
        mock_openai_error(r, 400, "Your input exceeds the context window of "
                          "this model. Please adjust your input and try "
                          "again.", "input", "context_length_exceeded");
        return;
    }
    mock_openai_error(r, 400, max_tokens
        ? apr_psprintf(r->pool, "This model's maximum context length is %d "
                       "tokens. However, you requested %d tokens (%d in the "
                       "messages, %d in the completion). Please reduce the "
                       "length of the messages or completion.",
                       c->b.context_tokens, prompt_tokens + max_tokens,
                       prompt_tokens, max_tokens)
        : apr_psprintf(r->pool, "This model's maximum context length is %d "
                       "tokens. However, your messages resulted in %d tokens. "
                       "Please reduce the length of the messages.",
                       c->b.context_tokens, prompt_tokens),
        "messages", "context_length_exceeded");
}

/* OK, or the 400 this prompt gets (sent; its status returned). */
int mock_content_checks(mock_call *c, int prompt_tokens, int max_tokens)
{
    const char *word = c->b.filter_word;

    if (strcmp(c->operation, "embeddings") && word
        && memmem(c->body, c->body_length, word, strlen(word))) {
        content_filtered(c->r);
        return 400;
    }
    if (c->b.context_tokens
        && prompt_tokens + max_tokens > c->b.context_tokens) {
        context_exceeded(c, prompt_tokens, max_tokens);
        return 400;
    }
    return OK;
}

/* ------------------------------------------------------------------ */
/* Logprobs: one entry per completion token, top alternatives each; the
 * JSON is written as text, since a large answer would be millions of
 * jansson objects. */

static const char *token_at(apr_pool_t *p, const char *name, int i)
{
    return i == 0 ? "Hello" : i == 1 ? " from"
         : i == 2 ? apr_pstrcat(p, " ", name, NULL)
         : apr_psprintf(p, " %d", i);
}

/* Text written into a buffer sized beforehand; never past its end. */
typedef struct {
    char *at, *end;
} text_out;

static void put(text_out *o, const char *format, ...)
{
    va_list ap;

    va_start(ap, format);
    o->at += apr_vsnprintf(o->at, o->end - o->at, format, ap);
    va_end(ap);
}

/* {"token":...,"logprob":...,"bytes":[...]}; tokens are plain ASCII, so
 * they need no escaping */
static void put_token(text_out *o, const char *token, double logprob,
                      const char *more)
{
    const unsigned char *u;

    put(o, "{\"token\":\"%s\",\"logprob\":%.4f,\"bytes\":[", token, logprob);
    for (u = (const unsigned char *)token; *u; u++) {
        put(o, "%s%u", u == (const unsigned char *)token ? "" : ",", *u);
    }
    put(o, "]%s", more);
}

char *mock_logprobs_text(apr_pool_t *p, const char *name, int tokens, int top,
                         char **content)
{
    /* an entry: its token, and 4 characters a byte of it; 64 around them */
    apr_size_t entry = 5 * (strlen(name) + 16) + 64;
    apr_size_t size = (apr_size_t)tokens * (top + 1) * entry + 64;
    text_out o;
    struct iovec *pieces = apr_palloc(p, tokens * sizeof(*pieces));
    char *text = apr_palloc(p, size);
    int i, j;

    o.at = text;
    o.end = text + size;
    put(&o, "{\"content\":[");
    for (i = 0; i < tokens; i++) {
        const char *token = token_at(p, name, i);
        double logprob = 0.0 - 0.0001 * (i % 97);
        pieces[i].iov_base = (void *)token;
        pieces[i].iov_len = strlen(token);
        put(&o, "%s", i ? "," : "");
        put_token(&o, token, logprob, ",\"top_logprobs\":[");
        for (j = 0; j < top; j++) {
            put(&o, "%s", j ? "," : "");
            put_token(&o, j ? apr_psprintf(p, " alt%d", j) : token,
                      logprob - 0.5 * j, "}");
        }
        put(&o, "]}");
    }
    put(&o, "],\"refusal\":null}");
    *content = apr_pstrcatv(p, pieces, tokens, NULL);
    return text;
}

/* ------------------------------------------------------------------ */
/* Responses */

typedef struct {
    const char *id, *message_id, *text;
    int input_tokens, output_tokens;
    int store;
} response_parts;

static json_t *output_message(const response_parts *rp, const char *status)
{
    return json_pack("[{s:s,s:s,s:s,s:s,s:[{s:s,s:s,s:[]}]}]",
                     "id", rp->message_id, "type", "message",
                     "status", status, "role", "assistant",
                     "content", "type", "output_text", "text", rp->text,
                     "annotations");
}

static json_t *response_usage(const response_parts *rp)
{
    return json_pack("{s:i,s:{s:i},s:i,s:{s:i},s:i}",
                     "input_tokens", rp->input_tokens,
                     "input_tokens_details", "cached_tokens", 0,
                     "output_tokens", rp->output_tokens,
                     "output_tokens_details", "reasoning_tokens", 0,
                     "total_tokens", rp->input_tokens + rp->output_tokens);
}

/* The response object; "in_progress" ones have no output or usage yet. */
static json_t *response_doc(mock_call *c, const response_parts *rp,
                            int completed)
{
    json_t *body = c->json;

    return json_pack("{s:s,s:s,s:I,s:s,s:n,s:n,s:o,s:o,s:s,s:o,s:b,s:o,"
                     "s:{s:n,s:n},s:b,s:f,s:{s:{s:s}},s:s,s:o,s:f,s:s,s:o,"
                     "s:n,s:o}",
        "id", rp->id, "object", "response",
        "created_at", (json_int_t)apr_time_sec(apr_time_now()),
        "status", completed ? "completed" : "in_progress",
        "error", "incomplete_details",
        "instructions", mock_take(body, "instructions", json_null()),
        "max_output_tokens", mock_take(body, "max_output_tokens", json_null()),
        "model", c->deployment,
        "output", completed ? output_message(rp, "completed") : json_array(),
        "parallel_tool_calls", 1,
        "previous_response_id",
        mock_take(body, "previous_response_id", json_null()),
        "reasoning", "effort", "summary",
        "store", rp->store, "temperature", 1.0,
        "text", "format", "type", "text", "tool_choice", "auto",
        "tools", mock_take(body, "tools", json_array()), "top_p", 1.0,
        "truncation", "disabled",
        "usage", completed ? response_usage(rp) : json_null(),
        "user", "metadata", mock_take(body, "metadata", json_object()));
}

static void send_event(request_rec *r, int *sequence, const char *type,
                       json_t *data)
{
    json_t *event = json_pack("{s:s,s:i}", "type", type,
                              "sequence_number", (*sequence)++);
    char *text;

    json_object_update(event, data);
    json_decref(data);
    text = json_dumps(event, JSON_COMPACT);
    json_decref(event);
    ap_rvputs(r, "event: ", type, "\ndata: ", text, "\n\n", NULL);
    free(text);
    ap_rflush(r);
}

/* "Hello from NAME", " 1", " 2", ...: one delta per stream chunk */
static void stream_deltas(mock_call *c, response_parts *rp, int *sequence)
{
    const char *text = "";
    int i;

    for (i = 0; i < c->b.stream_chunks && !c->r->connection->aborted; i++) {
        const char *piece = i ? apr_psprintf(c->r->pool, " %d", i) : rp->text;
        if (i) {
            apr_sleep(apr_time_from_msec(c->b.stream_delay_ms));
        }
        send_event(c->r, sequence, "response.output_text.delta", json_pack(
            "{s:s,s:i,s:i,s:s}", "item_id", rp->message_id,
            "output_index", 0, "content_index", 0, "delta", piece));
        text = apr_pstrcat(c->r->pool, text, piece, NULL);
    }
    rp->text = text;
}

static void stream_response(mock_call *c, response_parts *rp)
{
    request_rec *r = c->r;
    int sequence = 0;
    json_t *output, *part = json_pack("{s:s,s:s,s:[]}", "type", "output_text",
                             "text", "", "annotations");

    ap_set_content_type(r, "text/event-stream");
    apr_table_setn(r->headers_out, "Cache-Control", "no-cache");
    send_event(r, &sequence, "response.created",
               json_pack("{s:o}", "response", response_doc(c, rp, 0)));
    send_event(r, &sequence, "response.in_progress",
               json_pack("{s:o}", "response", response_doc(c, rp, 0)));
    send_event(r, &sequence, "response.output_item.added", json_pack(
        "{s:i,s:{s:s,s:s,s:s,s:s,s:[]}}", "output_index", 0, "item",
        "id", rp->message_id, "type", "message", "status", "in_progress",
        "role", "assistant", "content"));
    send_event(r, &sequence, "response.content_part.added", json_pack(
        "{s:s,s:i,s:i,s:O}", "item_id", rp->message_id, "output_index", 0,
        "content_index", 0, "part", part));
    stream_deltas(c, rp, &sequence);
    json_object_set_new(part, "text", json_string(rp->text));
    send_event(r, &sequence, "response.output_text.done", json_pack(
        "{s:s,s:i,s:i,s:s}", "item_id", rp->message_id, "output_index", 0,
        "content_index", 0, "text", rp->text));
    send_event(r, &sequence, "response.content_part.done", json_pack(
        "{s:s,s:i,s:i,s:o}", "item_id", rp->message_id, "output_index", 0,
        "content_index", 0, "part", part));
    output = output_message(rp, "completed");
    send_event(r, &sequence, "response.output_item.done", json_pack(
        "{s:i,s:O}", "output_index", 0, "item", json_array_get(output, 0)));
    json_decref(output);
    send_event(r, &sequence, "response.completed",
               json_pack("{s:o}", "response", response_doc(c, rp, 1)));
}

/* The tokens the previous response of a chain used: the new one's input
 * includes them, as the service counts the conversation so far. */
static int previous_tokens(mock_call *c)
{
    const char *id = json_string_value(
        json_object_get(c->json, "previous_response_id"));
    mock_object *o;
    int tokens = 0;

    if (!id) {
        return 0;
    }
    apr_thread_mutex_lock(c->m->mutex);
    if ((o = mock_find(&c->m->store, K_RESPONSE, NULL, id)) != NULL) {
        tokens = (int)json_integer_value(json_object_get(
            json_object_get(o->doc, "usage"), "total_tokens"));
    }
    apr_thread_mutex_unlock(c->m->mutex);
    return tokens;
}

static void keep_response(mock_call *c, const response_parts *rp)
{
    if (!rp->store) {
        return;
    }
    apr_thread_mutex_lock(c->m->mutex);
    mock_add(c->m, K_RESPONSE, rp->id, NULL, response_doc(c, rp, 1));
    apr_thread_mutex_unlock(c->m->mutex);
}

/* Sets what an admitted call answers with; the quota's 429, the 400s and
 * 404s of the call are sent here, their status returned. */
static int responses_admit(mock_call *c, response_parts *rp)
{
    json_t *max = json_object_get(c->json, "max_output_tokens");
    int requested = json_is_integer(max) ? (int)json_integer_value(max) : 0;
    int completion = c->b.completion_tokens, rc;
    mock_admission a;

    if (requested >= 1 && requested < completion) {
        completion = requested;
    }
    rp->input_tokens = (int)(c->body_length / 4) + 1 + previous_tokens(c);
    rp->output_tokens = completion;
    if ((rc = mock_content_checks(c, rp->input_tokens, requested)) != OK) {
        return rc;
    }
    mock_admit(c->m, &c->b, rp->input_tokens + (requested ? requested
                                                          : completion),
               rp->input_tokens + completion, &a);
    if (a.over) {
        mock_refuse(c->r, &c->b, &a);
        return 429;
    }
    if (c->b.latency_ms) {
        apr_sleep(apr_time_from_msec(c->b.latency_ms));
    }
    mock_admission_headers(c->r, &c->b, &a);
    return OK;
}

int mock_responses_create(mock_call *c)
{
    response_parts rp;
    const char *model = json_string_value(json_object_get(c->json, "model"));

    if (!model || !*model) {
        return mock_missing(c, "model");
    }
    c->deployment = model;
    c->operation = "responses";
    if (!mock_serves(&c->b, model)) {
        mock_deployment_not_found(c->r);
        return OK;
    }
    memset(&rp, 0, sizeof(rp));
    rp.store = !json_is_false(json_object_get(c->json, "store"));
    rp.text = apr_psprintf(c->r->pool, "Hello from %s", c->m->name);
    apr_thread_mutex_lock(c->m->mutex);
    rp.id = mock_new_id(&c->m->store, c->r->pool, K_RESPONSE);
    rp.message_id = mock_new_id(&c->m->store, c->r->pool, K_MESSAGE);
    apr_thread_mutex_unlock(c->m->mutex);
    if (responses_admit(c, &rp) != OK) {
        return OK;
    }
    if (json_is_true(json_object_get(c->json, "stream"))) {
        stream_response(c, &rp);
    }
    else {
        mock_json_send(c->r, 200, response_doc(c, &rp, 1));
    }
    keep_response(c, &rp);
    return OK;
}
