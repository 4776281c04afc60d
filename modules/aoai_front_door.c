/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The gateway's front door: who may call, and what each member is told.
 *
 * Clients present a subscription key, as API Management's clients do: in
 * the api-key header (or AOAISubscriptionKeyHeader), in
 * Ocp-Apim-Subscription-Key, or in the subscription-key query parameter.
 * The admin's key file holds only SHA-256 digests with a label per key, so
 * the file is no key ring; the presented key is hashed and compared with
 * every digest in constant time (CRYPTO_memcmp, no early exit).
 *
 * Whatever the client presented is removed before the request goes
 * anywhere: from the headers, from the query string sent to members, and
 * from the request line that the access log prints.  Each member then gets
 * its own credential (AOAIMemberCredential): an api-key read from a file or
 * the environment at start-up, or a bearer token read from a file on every
 * attempt, so a refresher that rewrites the file is picked up at once.
 * No value is ever logged; log lines name the label, the member, the file.
 */

#include "aoai_balancer.h"

#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_file_io.h"

#include "http_log.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

APLOG_USE_MODULE(aoai_balancer);

#define SUBSCRIPTION_QUERY_PARAM "subscription-key"
#define MAX_TOKEN_FILE (64 * 1024)

/* The value of one query parameter, or NULL. */
static const char *query_param(apr_pool_t *pool, const char *args,
                               const char *name)
{
    apr_size_t name_length = strlen(name);
    const char *p = args;

    while (p && *p) {
        const char *end = strchr(p, '&');
        apr_size_t length = end ? (apr_size_t)(end - p) : strlen(p);
        if (length > name_length && !strncmp(p, name, name_length)
            && p[name_length] == '=') {
            char *value = apr_pstrmemdup(pool, p + name_length + 1,
                                         length - name_length - 1);
            ap_unescape_urlencoded(value);
            return value;
        }
        p = end ? end + 1 : NULL;
    }
    return NULL;
}

/* The same string without the name=value parameter. */
static char *without_param(apr_pool_t *pool, const char *text,
                           const char *name)
{
    apr_size_t name_length = strlen(name);
    const char *query = strchr(text, '?');
    const char *p;
    char *out, *o;

    if (!query) {
        return apr_pstrdup(pool, text);
    }
    out = o = apr_palloc(pool, strlen(text) + 1);
    memcpy(o, text, query - text);
    o += query - text;
    for (p = query + 1; p && *p;) {
        const char *end = p + strcspn(p, "& ");
        int drop = (apr_size_t)(end - p) > name_length
                   && !strncmp(p, name, name_length) && p[name_length] == '=';
        if (!drop) {
            int first = (o == out + (query - text));
            *o++ = first ? '?' : '&';
            memcpy(o, p, end - p);
            o += end - p;
        }
        if (*end == '&') {
            p = end + 1;
        }
        else {
            strcpy(o, end);    /* " HTTP/1.1" of a request line, or "" */
            return out;
        }
    }
    *o = '\0';
    return out;
}

/* Takes every form of subscription key out of the request: nothing the
 * client presented reaches a member or the access log. */
void aoai_scrub_client_key(request_rec *r, const aoai_dir_conf *conf,
                           const char **member_uri)
{
    apr_table_unset(r->headers_in, "api-key");
    apr_table_unset(r->headers_in, "Ocp-Apim-Subscription-Key");
    if (conf->key_header) {
        apr_table_unset(r->headers_in, conf->key_header);
    }
    if (r->args && query_param(r->pool, r->args, SUBSCRIPTION_QUERY_PARAM)) {
        *member_uri = without_param(r->pool, *member_uri,
                                    SUBSCRIPTION_QUERY_PARAM);
        r->the_request = without_param(r->pool, r->the_request,
                                       SUBSCRIPTION_QUERY_PARAM);
        r->unparsed_uri = without_param(r->pool, r->unparsed_uri,
                                        SUBSCRIPTION_QUERY_PARAM);
        r->args = strchr(r->unparsed_uri, '?');
        if (r->args) {
            r->args++;
        }
    }
}

/* OK with *label set, or HTTP_UNAUTHORIZED with *why for the client. */
int aoai_check_subscription_key(request_rec *r, const aoai_dir_conf *conf,
                                const char **label, const char **why)
{
    const char *presented = NULL;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_length = 0;
    const aoai_subscription_key *keys;
    int i, found = -1;

    if (conf->key_header) {
        presented = apr_table_get(r->headers_in, conf->key_header);
    }
    if (!presented) {
        presented = apr_table_get(r->headers_in, "api-key");
    }
    if (!presented) {
        presented = apr_table_get(r->headers_in, "Ocp-Apim-Subscription-Key");
    }
    if (!presented && r->args) {
        presented = query_param(r->pool, r->args, SUBSCRIPTION_QUERY_PARAM);
    }
    if (!presented || !*presented) {
        *why = "Access denied due to missing subscription key. Make sure to "
               "include subscription key when making requests to an API.";
        return HTTP_UNAUTHORIZED;
    }
    if (!EVP_Digest(presented, strlen(presented), digest, &digest_length,
                    EVP_sha256(), NULL) || digest_length != 32) {
        *why = "Access denied: the subscription key could not be checked.";
        return HTTP_UNAUTHORIZED;
    }
    /* No early exit: the time taken does not say which key came close. */
    keys = (const aoai_subscription_key *)conf->keys->keys->elts;
    for (i = 0; i < conf->keys->keys->nelts; i++) {
        int equal = CRYPTO_memcmp(keys[i].digest, digest, 32) == 0;
        found = equal ? i : found;
    }
    if (found < 0) {
        *why = "Access denied due to invalid subscription key. Make sure to "
               "provide a valid key for an active subscription.";
        return HTTP_UNAUTHORIZED;
    }
    *label = keys[found].label;
    return OK;
}

/* ------------------------------------------------------------------ */
/* Members' own credentials                                             */

static int header_value_ok(const char *value)
{
    const unsigned char *p;
    for (p = (const unsigned char *)value; *p; p++) {
        if (*p < 0x21 || *p > 0x7e) {
            return 0;
        }
    }
    return *value != '\0';
}

static const char *trimmed(apr_pool_t *pool, const char *text,
                           apr_size_t length)
{
    while (length && apr_isspace(text[length - 1])) {
        length--;
    }
    while (length && apr_isspace(*text)) {
        text++;
        length--;
    }
    return apr_pstrmemdup(pool, text, length);
}

static apr_status_t read_small_file(apr_pool_t *pool, const char *path,
                                    const char **content)
{
    apr_file_t *file;
    apr_finfo_t info;
    apr_size_t length;
    char *buf;
    apr_status_t rv;

    rv = apr_file_open(&file, path, APR_FOPEN_READ, APR_OS_DEFAULT, pool);
    if (rv != APR_SUCCESS) {
        return rv;
    }
    rv = apr_file_info_get(&info, APR_FINFO_SIZE, file);
    if (rv == APR_SUCCESS && (info.size <= 0 || info.size > MAX_TOKEN_FILE)) {
        rv = APR_EINVAL;
    }
    if (rv == APR_SUCCESS) {
        length = (apr_size_t)info.size;
        buf = apr_palloc(pool, length);
        rv = apr_file_read_full(file, buf, length, &length);
        if (rv == APR_SUCCESS) {
            *content = trimmed(pool, buf, length);
        }
    }
    apr_file_close(file);
    return rv;
}

/* "route api-key file:/path", "route api-key env:NAME",
 * "route bearer file:/path".  An api-key is read now, by the parent
 * (files may be readable by root only); a bearer token is read on every
 * attempt, by the child, so the file must be readable by httpd's User. */
const char *aoai_member_credential_parse(cmd_parms *cmd,
                                         aoai_member_credential *cred,
                                         const char *route, const char *kind,
                                         const char *source)
{
    const char *name = cmd->cmd->name;

    cred->route = route;
    if (!strcasecmp(kind, "api-key")) {
        cred->bearer = 0;
    }
    else if (!strcasecmp(kind, "bearer")) {
        cred->bearer = 1;
    }
    else {
        return apr_psprintf(cmd->pool, "%s %s: '%s' is not api-key or bearer",
                            name, route, kind);
    }
    if (!strncmp(source, "file:", 5) && source[5]) {
        cred->path = ap_server_root_relative(cmd->pool, source + 5);
        if (!cred->path) {
            return apr_psprintf(cmd->pool, "%s %s: invalid file path",
                                name, route);
        }
        if (!cred->bearer) {
            char buf[120];
            apr_status_t rv = read_small_file(cmd->pool, cred->path,
                                              &cred->value);
            if (rv != APR_SUCCESS) {
                return apr_psprintf(cmd->pool, "%s %s: %s cannot be read: %s",
                                    name, route, cred->path,
                                    apr_strerror(rv, buf, sizeof(buf)));
            }
        }
    }
    else if (!strncmp(source, "env:", 4) && source[4]) {
        if (cred->bearer) {
            return apr_psprintf(cmd->pool, "%s %s: a bearer token changes; "
                                "it is read from a file, not the "
                                "environment", name, route);
        }
        cred->value = getenv(source + 4);
        if (!cred->value) {
            return apr_psprintf(cmd->pool, "%s %s: environment variable %s is "
                                "not set", name, route, source + 4);
        }
        cred->value = trimmed(cmd->pool, cred->value, strlen(cred->value));
    }
    else {
        return apr_psprintf(cmd->pool, "%s %s: the credential comes from "
                            "file:/path or env:NAME, never inline", name,
                            route);
    }
    if (!cred->bearer && !header_value_ok(cred->value)) {
        return apr_psprintf(cmd->pool, "%s %s: the api-key is empty or holds "
                            "characters a header cannot carry", name, route);
    }
    return NULL;
}

static const aoai_member_credential *credential_for(const aoai_dir_conf *conf,
                                                    proxy_worker *worker)
{
    int i;
    if (!conf->credentials || !*worker->s->route) {
        return NULL;
    }
    for (i = 0; i < conf->credentials->nelts; i++) {
        const aoai_member_credential *cred =
            &APR_ARRAY_IDX(conf->credentials, i, aoai_member_credential);
        if (!strcmp(cred->route, worker->s->route)) {
            return cred;
        }
    }
    return NULL;
}

/* Puts the member's own credential on the request, replacing whatever the
 * previous attempt's member got.  Returns APR_SUCCESS, or an error when a
 * bearer token file cannot be used (the attempt then fails over). */
apr_status_t aoai_apply_member_credential(request_rec *r,
                                          const aoai_dir_conf *conf,
                                          proxy_worker *worker)
{
    const aoai_member_credential *cred = credential_for(conf, worker);
    const char *token;
    apr_status_t rv;

    apr_table_unset(r->headers_in, "api-key");
    if (!cred) {
        if (conf->credentials && conf->credentials->nelts) {
            apr_table_unset(r->headers_in, "Authorization");
        }
        return APR_SUCCESS;
    }
    if (!cred->bearer) {
        apr_table_unset(r->headers_in, "Authorization");
        apr_table_setn(r->headers_in, "api-key", cred->value);
        return APR_SUCCESS;
    }
    rv = read_small_file(r->pool, cred->path, &token);
    if (rv == APR_SUCCESS && !header_value_ok(token)) {
        rv = APR_EINVAL;
    }
    if (rv != APR_SUCCESS) {
        apr_table_unset(r->headers_in, "Authorization");
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r, APLOGNO(10930)
                      "member %s: bearer token file %s is unreadable, empty "
                      "or not a token", cred->route, cred->path);
        return rv;
    }
    apr_table_setn(r->headers_in, "Authorization",
                   apr_pstrcat(r->pool, "Bearer ", token, NULL));
    return APR_SUCCESS;
}
