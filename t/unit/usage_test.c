/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Unit test for modules/aoai_usage.c: the tokens an answer used, read from
 * a JSON body or an SSE stream as the answer goes by.  Prints TAP;
 * t/20_usage.t builds and runs it.
 */

#include "aoai_usage.h"
#include "aoai_json.h"

#include "apr_general.h"
#include "apr_strings.h"

#include <stdio.h>
#include <string.h>

static int tests_run;
static int tests_failed;
static apr_pool_t *pool;

static void ok(int pass, const char *desc)
{
    tests_run++;
    if (!pass) {
        tests_failed++;
    }
    printf("%sok %d - %s\n", pass ? "" : "not ", tests_run, desc);
}

/* Feeds text in pieces of `step` bytes (0: all at once), as brigades
 * would cut it, and reports what the scanner found. */
static int scan(int streaming, const char *text, apr_size_t length,
                apr_size_t step, aoai_usage *usage)
{
    aoai_usage_scan *s = aoai_usage_scan_start(pool, streaming);
    apr_size_t done = 0;

    if (!step) {
        step = length ? length : 1;
    }
    while (done < length) {
        apr_size_t piece = length - done < step ? length - done : step;
        aoai_usage_scan_feed(pool, s, text + done, piece);
        done += piece;
    }
    if (!aoai_usage_scan_finish(s)) {
        return 0;
    }
    *usage = s->usage;
    return 1;
}

static int is_usage(const aoai_usage *u, apr_int64_t prompt,
                    apr_int64_t completion, apr_int64_t total)
{
    return u->prompt_tokens == prompt && u->completion_tokens == completion
           && u->total_tokens == total;
}

/* The same usage whether the text comes whole (step 0) or in pieces of
 * every size from first_step to last_step. */
static int at_every_cut(int streaming, const char *text, apr_size_t first_step,
                        apr_size_t last_step, apr_int64_t prompt,
                        apr_int64_t completion, apr_int64_t total)
{
    aoai_usage usage;
    apr_size_t step;

    for (step = first_step; step <= last_step; step++) {
        if (!scan(streaming, text, strlen(text), step, &usage)
            || !is_usage(&usage, prompt, completion, total)) {
            return 0;
        }
    }
    return 1;
}

static void json_case(const char *json, int expect_found, apr_int64_t prompt,
                      apr_int64_t completion, apr_int64_t total,
                      const char *desc)
{
    aoai_usage usage = { -1, -1, -1 };
    int found = aoai_usage_from_json(json, strlen(json), &usage);

    ok(found == expect_found
       && (!found || is_usage(&usage, prompt, completion, total)), desc);
}

static const char chat_completion[] =
    "{\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"message\":"
    "{\"content\":\"The \\\"usage\\\": of words\",\"role\":\"assistant\"}}],"
    "\"created\":1700000000,\"id\":\"chatcmpl-1\",\"model\":\"gpt-35-turbo\","
    "\"object\":\"chat.completion\",\"prompt_filter_results\":[],"
    "\"system_fingerprint\":null,"
    "\"usage\":{\"completion_tokens\":7,\"prompt_tokens\":19,"
    "\"total_tokens\":26}}";

static const char stream[] =
    "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"index\":0}],"
    "\"usage\":null}\n\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\" say \\\"usage\\\"\"},"
    "\"index\":0}],\"usage\":null}\n\n"
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,"
    "\"completion_tokens\":4,\"total_tokens\":15}}\n\n"
    "data: [DONE]\n\n";

/* The completion of a stream without usage, counted from its deltas
 * however the stream is cut: a token per 4 bytes, 1 at least. */
static apr_int64_t counted(const char *text, apr_size_t step)
{
    aoai_usage_scan *s = aoai_usage_scan_start(pool, 1);
    apr_size_t done = 0, length = strlen(text);

    while (done < length) {
        apr_size_t piece = length - done < step ? length - done : step;
        aoai_usage_scan_feed(pool, s, text + done, piece);
        done += piece;
    }
    aoai_usage_scan_finish(s);
    return s->found ? -1 : s->counted;
}

static void counted_case(void)
{
    static const char chat[] =
        "data: {\"choices\":[],\"prompt_filter_results\":[{\"prompt_index\":0,"
        "\"content_filter_results\":{\"hate\":{\"filtered\":false}}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
        "\"index\":0}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"index\":0,"
        "\"logprobs\":{\"content\":[{\"token\":\"Hi\",\"logprob\":-0.1}]}}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\" a \\\"twelve byte\"},"
        "\"index\":0}]}\n\n"
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"function\":"
        "{\"arguments\":\"{\\\"city\\\":\"}}]},\"index\":0}]}\n\n"
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],"
        "\"usage\":null}\n\n"
        "data: [DONE]\n\n";
    static const char responses[] =
        "event: response.output_text.delta\n"
        "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello\"}\n\n"
        "event: response.output_text.done\n"
        "data: {\"type\":\"response.output_text.done\",\"text\":\"Hello\"}\n\n";
    static const char completed[] =
        "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello\"}\n\n"
        "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\","
        "\"output\":[{\"content\":[{\"text\":\"Hello\"}]}],\"usage\":"
        "{\"input_tokens\":9,\"output_tokens\":2,\"total_tokens\":11}}}\n\n";
    aoai_usage usage;
    apr_size_t step;
    int same = 1;

    /* "Hi" 1, " a \"twelve byte" 16 bytes raw: 4, {\"city\": 10: 2;
     * the empty content, the logprobs' token and the role are not text */
    for (step = 1; step <= 97; step++) {
        same &= counted(chat, step) == 7;
    }
    ok(same, "a stream without usage: its deltas counted, cut anywhere");
    ok(counted(responses, 7) == 1,
       "a Responses stream: its deltas counted, not its done events");
    ok(scan(1, completed, strlen(completed), 5, &usage)
       && is_usage(&usage, 9, 2, 11),
       "a Responses stream's usage, in response.completed");
}

int main(void)
{
    aoai_usage usage;
    char *big, *text;
    apr_size_t length;

    apr_initialize();
    apr_pool_create(&pool, NULL);

    /* --- JSON bodies ------------------------------------------------ */
    json_case(chat_completion, 1, 19, 7, 26,
              "a chat completion's usage, whatever its content says");
    json_case("{\"data\":[],\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}",
              1, 8, 0, 8, "embeddings: no completion_tokens is 0");
    json_case("{\"usage\":null}", 0, 0, 0, 0, "usage null: nothing");
    json_case("{\"choices\":[{\"usage\":{\"total_tokens\":5}}]}", 0, 0, 0, 0,
              "usage nested below the top level is not the answer's");
    json_case("[{\"usage\":{\"total_tokens\":5}}]", 0, 0, 0, 0,
              "a top-level array has no usage");
    json_case("{\"usage\":{\"prompt_tokens\":3}}", 0, 0, 0, 0,
              "no total_tokens: unreadable");
    json_case("{\"usage\":{\"prompt_tokens\":-3,\"total_tokens\":4}}", 0, 0, 0,
              0, "negative tokens: unreadable");
    json_case("{\"usage\":{\"prompt_tokens\":3.5,\"total_tokens\":4}}", 0, 0,
              0, 0, "fractional tokens: unreadable");
    json_case("{\"usage\":{\"prompt_tokens\":\"3\",\"total_tokens\":4}}", 0, 0,
              0, 0, "tokens as a string: unreadable");
    json_case("{\"usage\":{\"total_tokens\":99999999999999}}", 0, 0, 0, 0,
              "absurd token counts: unreadable");
    json_case("{\"usage\":{\"total_tokens\":1000000000}}", 1, 0, 0,
              1000000000, "the largest count accepted");
    json_case("{\"usage\":{\"total_tokens\":5},\"usage\":{\"total_tokens\":1}}",
              0, 0, 0, 0, "duplicate keys: rejected, not guessed");
    json_case("{\"usage\":{\"total_tokens\":5}", 0, 0, 0, 0,
              "a truncated body: nothing");
    json_case("", 0, 0, 0, 0, "an empty body: nothing");
    json_case("{\"x\":{\"a\":1,\"usage\":{\"total_tokens\":3}},"
              "\"usage\":{\"total_tokens\":4}}", 1, 0, 0, 4,
              "the top-level usage, not one nested before it");
    json_case("{\"a\":\"usage\",\"b\":[\"usage\",{\"usage\":1}]}", 0, 0, 0,
              0, "\"usage\" as a value or nested key is not a usage");
    json_case("{\"k\\\"\":\"}{\\\"\", \"usage\" :\n {\"total_tokens\" : 9} }",
              1, 0, 0, 9, "escaped quotes and braces in strings, spaces");
    json_case("{\"usage\":{\"total_tokens\":2}} trailing", 1, 0, 0, 2,
              "bytes after the root object do not matter");
    json_case("{\"usage\":[{\"total_tokens\":2}]}", 0, 0, 0, 0,
              "usage as an array: unreadable");
    json_case("{\"usage\":{\"total_tokens\":2,\"total_tokens\":3}}", 0, 0, 0,
              0, "duplicate keys inside usage: rejected");

    ok(at_every_cut(0, chat_completion, 1, 64, 19, 7, 26),
       "JSON cut into pieces of 1..64 bytes reads the same");

    /* Nothing is kept: a body of any size is read as it passes, and the
     * usage at its end is found however the pieces fall. */
    length = 3 * 1024 * 1024 + 100;
    big = apr_palloc(pool, length + 64);
    memcpy(big, "{\"choices\":[\"", 13);
    memset(big + 13, 'x', length - 13);
    strcpy(big + length - 40, "\"],\"usage\":{\"total_tokens\":5}}   ");
    ok(scan(0, big, strlen(big), 65536, &usage) && is_usage(&usage, 0, 0, 5),
       "a JSON body of 3 MiB is read (its usage at the end)");
    ok(scan(0, big, strlen(big), 4093, &usage) && is_usage(&usage, 0, 0, 5),
       "the same in odd pieces");

    json_case("{\"object\":\"response\",\"usage\":{\"input_tokens\":12,"
              "\"input_tokens_details\":{\"cached_tokens\":0},"
              "\"output_tokens\":30,\"output_tokens_details\":"
              "{\"reasoning_tokens\":0},\"total_tokens\":42}}", 1, 12, 30,
              42, "a response's input_tokens and output_tokens");
    json_case("{\"usage\":{\"total_tokens\":5e1}}", 0, 0, 0, 0,
              "an exponent: unreadable");
    json_case("{\"usage\":{\"total_tokens\":null}}", 0, 0, 0, 0,
              "null tokens: unreadable");
    json_case("{\"usage\":{\"total_tokens\":{\"n\":1}}}", 0, 0, 0, 0,
              "tokens as an object: unreadable");
    json_case("{\"us\\u0061ge\":{\"total_tokens\":5}}", 0, 0, 0, 0,
              "an escaped key is not read as usage");
    json_case("{\"a\":\"\\\\\",\"usage\":{\"total_tokens\":6}}", 1, 0, 0, 6,
              "a string ending in an escaped backslash");

    /* --- SSE streams ------------------------------------------------ */
    ok(at_every_cut(1, stream, 0, 80, 11, 4, 15),
       "the final usage chunk, however the stream is cut");

    text = apr_pstrcat(pool, "data: {\"usage\":{\"total_tokens\":3}}\r\n\r\n",
                       "data: {\"usage\":{\"prompt_tokens\":1,"
                       "\"completion_tokens\":1,\"total_tokens\":2}}\r\n\r\n",
                       "data: [DONE]\r\n\r\n", NULL);
    ok(scan(1, text, strlen(text), 7, &usage) && is_usage(&usage, 1, 1, 2),
       "CRLF lines; the last usage chunk wins");

    text = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"
           "data: [DONE]\n\n";
    ok(!scan(1, text, strlen(text), 0, &usage),
       "a stream without include_usage has no usage of the member's");
    counted_case();

    text = "event: x\nid: {\"usage\":{\"total_tokens\":9}}\n"
           ": {\"usage\":{\"total_tokens\":9}}\n\n";
    ok(!scan(1, text, strlen(text), 3, &usage),
       "only data: lines are read");

    /* Found by fuzz/usage_fuzz.c: an empty line before anything was kept
     * handed memcpy a null buffer. */
    text = "\n\ndata: {\"usage\":{\"total_tokens\":4}}\n\n";
    ok(scan(1, text, strlen(text), 1, &usage) && is_usage(&usage, 0, 0, 4),
       "a stream that starts with empty lines");

    text = "data: {\"usage\":{\"total_tokens\":6}}";
    ok(scan(1, text, strlen(text), 5, &usage) && is_usage(&usage, 0, 0, 6),
       "a last line without its newline still counts");

    length = 200 * 1024;
    big = apr_palloc(pool, length + 128);
    memcpy(big, "data: {\"usage\":{\"total_tokens\":77}}", 35);
    memset(big + 35, 'x', length - 35);
    big[length - 1] = '\n';
    strcpy(big + length, "data: {\"usage\":{\"total_tokens\":8}}\n\n");
    ok(scan(1, big, strlen(big), 4096, &usage) && is_usage(&usage, 0, 0, 8),
       "an overlong line is skipped, the lines after it are read");

    text = "data: {\"usage\":{\"total_tokens\":-1}}\n\n"
           "data: {\"usage\":{\"total_tokens\":12}}\n\n"
           "data: {\"usage\":{\"total_tokens\":\"lots\"}}\n\n";
    ok(scan(1, text, strlen(text), 0, &usage) && is_usage(&usage, 0, 0, 12),
       "unreadable usage chunks do not replace a readable one");

    /* --- request estimates: the bounds, found by the gateway's one walk
     * over the body (aoai_json_top_level_fields), ranked by
     * aoai_usage_asked() --------------------------------------------- */
    {
        static const struct {
            const char *body;
            apr_int64_t asked;
            const char *desc;
        } cases[] = {
            { "{\"messages\":[],\"max_tokens\":16}", 16, "max_tokens" },
            { "{\"max_completion_tokens\":40,\"messages\":[]}", 40,
              "max_completion_tokens" },
            { "{\"max_completion_tokens\":40,\"max_tokens\":7}", 7,
              "max_tokens wins over max_completion_tokens" },
            { "{\"messages\":[{\"content\":\"\\\"max_tokens\\\": 9\"}],"
              "\"x\":{\"max_tokens\":9}}", 0,
              "max_tokens in a string or nested is not the call's" },
            { "{\"max_tokens\":-5,\"max_completion_tokens\":3}", 3,
              "a negative bound is none; the other one counts" },
            { "{\"max_tokens\":2.5}", 0, "a fractional bound is none" },
            { "{\"max_tokens\":1000000000000}", 0, "an absurd bound is none" },
            { "{\"max_tokens\" : 12 }", 12, "spaces around a bound" },
            { "{\"max_tokens\":5,\"max_tokens\":500}", 0,
              "a bound twice is trusted nowhere" },
            { "{\"max_tokens\":12", 0, "a cut body names no bound" },
            { "{\"input\":\"hi\",\"max_output_tokens\":300}", 300,
              "a response's max_output_tokens" },
            { "{\"max_output_tokens\":300,\"max_completion_tokens\":30}", 30,
              "max_completion_tokens wins over max_output_tokens" },
        };
        apr_size_t i;

        for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            aoai_json_field fields[3] = {
                { "max_tokens", 10, NULL, 0 },
                { "max_completion_tokens", 21, NULL, 0 },
                { "max_output_tokens", 17, NULL, 0 },
            };
            const char *values[3];
            apr_size_t lengths[3];
            int k;

            aoai_json_top_level_fields(cases[i].body, strlen(cases[i].body),
                                       fields, 3);
            for (k = 0; k < 3; k++) {
                values[k] = fields[k].value;
                lengths[k] = fields[k].value_length;
            }
            ok(aoai_usage_asked(values, lengths) == cases[i].asked,
               apr_psprintf(pool, "estimate: %s", cases[i].desc));
        }
        ok(aoai_usage_prompt_estimate(1039) == 260,
           "the prompt: a token per four bytes of the body, and one");
    }

    ok(aoai_usage_bound("16", 2) == 16 && aoai_usage_bound("0", 1) == 0
       && aoai_usage_bound("-3", 2) == 0 && aoai_usage_bound("2.5", 3) == 0
       && aoai_usage_bound("\"9\"", 3) == 0
       && aoai_usage_bound("100000001", 9) == 0
       && aoai_usage_bound("99999999999999999999999", 23) == 0,
       "a bound's text: a positive integer up to 10^8, else none");

    printf("1..%d\n", tests_run);
    apr_pool_destroy(pool);
    apr_terminate();
    return tests_failed ? 1 : 0;
}
