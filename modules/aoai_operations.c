/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The operations a balancer lets through: "METHOD /path/{param}/..." per
 * line of a file, '#' comments.  A {...} segment matches any one segment;
 * other segments match in any case.  A call that is none of them is
 * answered 404 in Azure's shape before any member is called, as API
 * Management answers an operation its imported document lacks.  The file
 * is read at start-up; its errors name the file and the line.
 */

#include "aoai_operations.h"

#include "apr_lib.h"
#include "apr_strings.h"
#include "http_protocol.h"

typedef struct {
    int method;
    apr_array_header_t *segments;   /* const char *; NULL: any segment */
} aoai_operation;

struct aoai_operations {
    apr_array_header_t *list;       /* aoai_operation */
};

static apr_array_header_t *split(apr_pool_t *pool, const char *path)
{
    apr_array_header_t *segments = apr_array_make(pool, 6,
                                                  sizeof(const char *));
    char *copy = apr_pstrmemdup(pool, path, strcspn(path, "?#"));
    char *segment, *state;

    for (segment = apr_strtok(copy, "/", &state); segment;
         segment = apr_strtok(NULL, "/", &state)) {
        APR_ARRAY_PUSH(segments, const char *) =
            (*segment == '{' && segment[strlen(segment) - 1] == '}')
            ? NULL : segment;
    }
    return segments;
}

static const char *parse_line(apr_pool_t *pool, char *line,
                              aoai_operations *operations)
{
    char *method, *path, *rest, *state;
    aoai_operation *operation;

    if (!(method = apr_strtok(line, " \t\r\n", &state))) {
        return NULL;
    }
    path = apr_strtok(NULL, " \t\r\n", &state);
    rest = apr_strtok(NULL, " \t\r\n", &state);
    if (!path || *path != '/' || rest) {
        return "expected 'METHOD /path/{param}/...'";
    }
    operation = apr_array_push(operations->list);
    operation->method = ap_method_number_of(method);
    if (operation->method == M_INVALID) {
        return apr_psprintf(pool, "'%s' is not an HTTP method", method);
    }
    operation->segments = split(pool, path);
    return NULL;
}

const char *aoai_operations_set(cmd_parms *cmd, void *dconf, const char *arg)
{
    aoai_dir_conf *conf = dconf;
    aoai_operations *operations;
    const char *path, *err = NULL;
    apr_file_t *file;
    char line[2048], buf[120];
    int number = 0;
    apr_status_t rv;

    conf->operations_set = 1;
    conf->operations = NULL;
    if (!strcasecmp(arg, "off")) {
        return NULL;
    }
    path = ap_server_root_relative(cmd->pool, arg);
    rv = apr_file_open(&file, path, APR_FOPEN_READ, APR_OS_DEFAULT,
                       cmd->temp_pool);
    if (rv != APR_SUCCESS) {
        return apr_psprintf(cmd->pool, "AOAIOperations %s: cannot be read: "
                            "%s", path, apr_strerror(rv, buf, sizeof(buf)));
    }
    operations = apr_pcalloc(cmd->pool, sizeof(*operations));
    operations->list = apr_array_make(cmd->pool, 32, sizeof(aoai_operation));
    while (!err && apr_file_gets(line, sizeof(line), file) == APR_SUCCESS) {
        char *comment = strchr(line, '#');
        number++;
        if (comment) {
            *comment = '\0';
        }
        err = parse_line(cmd->pool, line, operations);
    }
    apr_file_close(file);
    if (err) {
        return apr_psprintf(cmd->pool, "AOAIOperations %s:%d: %s", path,
                            number, err);
    }
    if (!operations->list->nelts) {
        return apr_psprintf(cmd->pool, "AOAIOperations %s: no operations: "
                            "every call would be refused", path);
    }
    conf->operations = operations;
    return NULL;
}

static int matches(const aoai_operation *operation,
                   const apr_array_header_t *segments)
{
    int i;

    if (operation->segments->nelts != segments->nelts) {
        return 0;
    }
    for (i = 0; i < segments->nelts; i++) {
        const char *want = APR_ARRAY_IDX(operation->segments, i,
                                         const char *);
        const char *got = APR_ARRAY_IDX(segments, i, const char *);
        if (want ? ap_cstr_casecmp(want, got) != 0 : !got) {
            return 0;
        }
    }
    return 1;
}

int aoai_operations_allow(request_rec *r, const aoai_operations *operations,
                          const char *uri)
{
    /* The path of the member URI: past "balancer://name". */
    const char *path = strchr(uri + sizeof("balancer://") - 1, '/');
    apr_array_header_t *segments;
    int i;

    if (!operations) {
        return 1;
    }
    if (!path) {
        return 0;
    }
    segments = split(r->pool, path);
    for (i = 0; i < operations->list->nelts; i++) {
        const aoai_operation *operation = &APR_ARRAY_IDX(
            operations->list, i, aoai_operation);
        /* HEAD is M_GET with header_only, as httpd counts methods. */
        if (operation->method == r->method_number
            && matches(operation, segments)) {
            return 1;
        }
    }
    return 0;
}
