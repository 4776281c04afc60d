/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Unit test for modules/aoai_usage.c: the tokens an answer used, read from
 * a JSON body or an SSE stream as the answer goes by.  Prints TAP;
 * t/20_usage.t builds and runs it.
 */

#include "aoai_usage.h"

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

    length = 1024 * 1024 + 100;
    big = apr_palloc(pool, length + 64);
    memset(big, ' ', length);
    memcpy(big, "{\"usage\":{\"total_tokens\":5}}", 28);
    ok(!scan(0, big, length, 65536, &usage),
       "a JSON body over 1 MiB is not kept (no usage)");
    ok(scan(0, big, 1024 * 1024, 65536, &usage)
       && is_usage(&usage, 0, 0, 5), "one of exactly 1 MiB is read");

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
       "a stream without include_usage has no usage");

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

    printf("1..%d\n", tests_run);
    apr_pool_destroy(pool);
    apr_terminate();
    return tests_failed ? 1 : 0;
}
