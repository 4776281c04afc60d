/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The settings added to the mock after its first version: one table, read
 * by the directive AOAIMockSet NAME VALUE and by POST /mock/control, so
 * that every setting can be made either way and both check it alike.
 * (The first version's fields keep their own code in mod_aoai_mock.c.)
 */

#include "aoai_mock.h"

#include "apr_strings.h"

#include <stddef.h>
#include <strings.h>

typedef enum { F_INT, F_BOOL, F_CHOICE, F_TEXT } field_type;

typedef struct {
    const char *name;
    field_type type;
    apr_size_t offset;
    const char *choices;       /* F_CHOICE: "a|b" */
    int min, max;              /* F_INT */
    int quota;                 /* a change starts a new window */
} field;

#define AT(member) offsetof(mock_behaviour, member)

static const field fields[] = {
    { "deployment_case", F_CHOICE, AT(deployment_case), "insensitive|sensitive", 0, 0, 0 },
    { "path_case", F_CHOICE, AT(path_case), "sensitive|insensitive", 0, 0, 0 },
    { "window_mode", F_CHOICE, AT(window_mode), "first_call|wall_clock", 0, 0, 1 },
    { "window_phase_ms", F_INT, AT(window_phase_ms), NULL, 0, 86400000, 1 },
    { "quota_estimate", F_BOOL, AT(quota_estimate), NULL, 0, 1, 0 },
    { "limit_headers", F_BOOL, AT(limit_headers), NULL, 0, 1, 0 },
    { "odd_429_tokens_left", F_BOOL, AT(odd_429_tokens_left), NULL, 0, 1, 0 },
    { "remaining_unknown", F_CHOICE, AT(remaining_unknown), "none|-1|0", 0, 0, 0 },
    { "remaining_never_reset", F_BOOL, AT(remaining_never_reset), NULL, 0, 1, 1 },
    { "ptu_tokens", F_INT, AT(ptu_tokens), NULL, 0, 1000000000, 1 },
    { "completion_tokens", F_INT, AT(completion_tokens), NULL, 1, 1000000, 0 },
    { "compress", F_BOOL, AT(compress), NULL, 0, 1, 0 },
    { "filter_word", F_TEXT, AT(filter_word), NULL, 0, 0, 0 },
    { "context_tokens", F_INT, AT(context_tokens), NULL, 0, 1000000000, 0 },
    { "forbidden", F_BOOL, AT(forbidden), NULL, 0, 1, 0 },
    { "object_cap", F_INT, AT(object_cap), NULL, 1, 100000, 0 },
    { "file_not_found_form", F_CHOICE, AT(file_not_found_form), "plain|ownership", 0, 0, 0 },
    { NULL, F_INT, 0, NULL, 0, 0, 0 }
};

void mock_default_settings(mock_behaviour *b)
{
    b->deployments = NULL;
    b->deployment_case = "insensitive";
    b->path_case = "sensitive";
    b->window_mode = "first_call";
    b->remaining_unknown = "none";
    b->completion_tokens = 16;
    b->object_cap = 1000;
    b->file_not_found_form = "plain";
}

static const field *find_field(const char *name)
{
    const field *f;

    for (f = fields; f->name; f++) {
        if (!strcmp(f->name, name)) {
            return f;
        }
    }
    return NULL;
}

static int is_choice(const char *choices, const char *value)
{
    apr_size_t n = strlen(value);
    const char *at = choices;

    while (n && (at = strstr(at, value)) != NULL) {
        if ((at == choices || at[-1] == '|') && (at[n] == '|' || !at[n])) {
            return 1;
        }
        at += n;
    }
    return 0;
}

/* deployments: an array of names, or null for "any name". */
static const char *set_deployments(apr_pool_t *p, mock_behaviour *b,
                                   json_t *value)
{
    apr_size_t i;
    json_t *name;

    if (json_is_null(value)) {
        b->deployments = NULL;
        return NULL;
    }
    if (!json_is_array(value)) {
        return "deployments: an array of names, or null";
    }
    b->deployments = apr_array_make(p, (int)json_array_size(value) + 1,
                                    sizeof(const char *));
    json_array_foreach(value, i, name) {
        if (!json_is_string(name) || !json_string_length(name)) {
            return "deployments: every name is a non-empty string";
        }
        APR_ARRAY_PUSH(b->deployments, const char *) =
            apr_pstrdup(p, json_string_value(name));
    }
    return NULL;
}

static const char *set_int(const field *f, int *at, json_t *value)
{
    json_int_t v;

    if (json_is_boolean(value) && f->type == F_BOOL) {
        *at = json_is_true(value);
        return NULL;
    }
    if (!json_is_integer(value)) {
        return f->type == F_BOOL ? "a boolean" : "an integer";
    }
    v = json_integer_value(value);
    if (v < f->min || v > f->max) {
        return "out of range";
    }
    *at = (int)v;
    return NULL;
}

static const char *set_text(apr_pool_t *p, const field *f, const char **at,
                            json_t *value)
{
    if (json_is_null(value) && f->type == F_TEXT) {
        *at = NULL;
        return NULL;
    }
    if (!json_is_string(value)) {
        return "a string";
    }
    if (f->type == F_CHOICE && !is_choice(f->choices, json_string_value(value))) {
        return apr_pstrcat(p, "one of ", f->choices, NULL);
    }
    if (f->type == F_TEXT && !json_string_length(value)) {
        return "a non-empty string, or null";
    }
    *at = apr_pstrdup(p, json_string_value(value));
    return NULL;
}

/* Sets one field from a JSON value; an error message, or NULL. */
const char *mock_set_field(apr_pool_t *p, mock_behaviour *b, const char *name,
                           json_t *value, int *quota_changed)
{
    const field *f = find_field(name);
    const char *error;
    char *base = (char *)b;

    if (!strcmp(name, "deployments")) {
        return set_deployments(p, b, value);
    }
    if (!f) {
        return apr_pstrcat(p, "unknown setting ", name, NULL);
    }
    error = f->type == F_INT || f->type == F_BOOL
        ? set_int(f, (int *)(base + f->offset), value)
        : set_text(p, f, (const char **)(base + f->offset), value);
    if (error) {
        return apr_pstrcat(p, name, ": ", error, NULL);
    }
    if (f->quota && quota_changed) {
        *quota_changed = 1;
    }
    return NULL;
}

/* AOAIMockSet NAME VALUE: VALUE as the JSON a control body would hold,
 * with on/off for booleans and bare words for strings. */
const char *mock_set_from_text(apr_pool_t *p, mock_behaviour *b,
                               const char *name, const char *text)
{
    const field *f = find_field(name);
    json_t *value;
    const char *error;

    if (f && f->type == F_BOOL && (!strcasecmp(text, "on")
                                   || !strcasecmp(text, "off"))) {
        value = json_boolean(!strcasecmp(text, "on"));
    }
    else if (f && (f->type == F_CHOICE || f->type == F_TEXT)) {
        value = json_string(text);
    }
    else {
        value = json_loads(text, JSON_DECODE_ANY, NULL);
    }
    if (!value) {
        return apr_pstrcat(p, "AOAIMockSet ", name, ": cannot read ", text,
                           NULL);
    }
    error = mock_set_field(p, b, name, value, NULL);
    json_decref(value);
    return error ? apr_pstrcat(p, "AOAIMockSet ", error, NULL) : NULL;
}

/* Every field of the table present in a control body; first error. */
const char *mock_take_settings(apr_pool_t *p, mock_behaviour *b, json_t *doc,
                               int *quota_changed)
{
    const field *f;
    json_t *value;
    const char *error;

    if ((value = json_object_get(doc, "deployments")) != NULL
        && (error = set_deployments(p, b, value)) != NULL) {
        return error;
    }
    for (f = fields; f->name; f++) {
        if ((value = json_object_get(doc, f->name)) != NULL
            && (error = mock_set_field(p, b, f->name, value,
                                       quota_changed)) != NULL) {
            return error;
        }
    }
    return NULL;
}

/* The table's fields as they stand, for /mock/stats. */
json_t *mock_settings_json(const mock_behaviour *b)
{
    json_t *doc = json_object(), *names = json_array();
    const char *base = (const char *)b;
    const field *f;
    int i;

    for (f = fields; f->name; f++) {
        const void *at = base + f->offset;
        json_object_set_new(doc, f->name,
            f->type == F_INT ? json_integer(*(const int *)at)
            : f->type == F_BOOL ? json_boolean(*(const int *)at)
            : *(const char *const *)at ? json_string(*(const char *const *)at)
            : json_null());
    }
    for (i = 0; b->deployments && i < b->deployments->nelts; i++) {
        json_array_append_new(names, json_string(
            APR_ARRAY_IDX(b->deployments, i, const char *)));
    }
    if (!b->deployments) {
        json_decref(names);
        names = json_null();
    }
    json_object_set_new(doc, "deployments", names);
    return doc;
}

/* Does this member serve that deployment?  Azure's deployments are Azure
 * Resource Manager resources (Microsoft.CognitiveServices/accounts/
 * deployments), whose names are case-insensitive; deployment_case
 * "sensitive" is there to test a gateway against the other reading. */
int mock_serves(const mock_behaviour *b, const char *deployment)
{
    int i, sensitive = !strcmp(b->deployment_case, "sensitive");

    if (!b->deployments) {
        return 1;
    }
    for (i = 0; i < b->deployments->nelts; i++) {
        const char *name = APR_ARRAY_IDX(b->deployments, i, const char *);
        if (sensitive ? !strcmp(name, deployment)
                      : !strcasecmp(name, deployment)) {
            return 1;
        }
    }
    return 0;
}
