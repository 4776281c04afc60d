/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The gateway's front door: who may call, and what each member is told.
 *
 * Clients present a subscription key, as API Management's clients do: in
 * the api-key header (or AOAISubscriptionKeyHeader), in
 * Ocp-Apim-Subscription-Key, in the subscription-key or api-key query
 * parameter (Azure OpenAI takes api-key there from browsers), or as a
 * bearer token (the GA v1 API's OpenAI clients send their key so).
 * The admin's key file holds only SHA-256 digests with a label per key, so
 * the file is no key ring; the presented key is hashed and compared with
 * every digest in constant time (CRYPTO_memcmp, no early exit).
 *
 * Whatever the client presented is removed before the request goes
 * anywhere, accepted or refused: the key headers and Authorization, and
 * the key parameters from the query string sent to members and from the
 * request line and query that the access log prints.  Each member then gets
 * its own credential (AOAIMemberCredential): an api-key read from a file or
 * the environment at start-up, or a bearer token read from a file on every
 * attempt, so a refresher that rewrites the file is picked up at once.
 * No value is ever logged; log lines name the label, the member, the file.
 */

#include "aoai_front_door.h"
#include "aoai_balancers.h"

#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_file_io.h"

#include "http_log.h"
#include "unixd.h"

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

APLOG_USE_MODULE(aoai_balancer);

#define MAX_TOKEN_FILE (64 * 1024)

/* Query parameters that carry a caller's key: APIM's subscription-key, and
 * the api-key that Azure OpenAI accepts from browsers (which cannot set
 * headers on a WebSocket).  Matched by their decoded name, any case, so
 * that no spelling of them slips past the scrub. */
static const char *const key_params[] = { "subscription-key", "api-key" };

/* Whether one "name=value" (or "name") piece of a query names a key
 * parameter. */
static int is_key_param(apr_pool_t *pool, const char *piece,
                        apr_size_t length)
{
    const char *eq = memchr(piece, '=', length);
    char *name = apr_pstrmemdup(pool, piece, eq ? (apr_size_t)(eq - piece)
                                                : length);
    apr_size_t i;

    ap_unescape_urlencoded(name);
    for (i = 0; i < sizeof(key_params) / sizeof(key_params[0]); i++) {
        if (!ap_cstr_casecmp(name, key_params[i])) {
            return 1;
        }
    }
    return 0;
}

/* The value of the first key parameter of a query, or NULL. */
static const char *query_key(apr_pool_t *pool, const char *args)
{
    const char *p = args;

    while (p && *p) {
        apr_size_t length = strcspn(p, "&");
        const char *eq = memchr(p, '=', length);

        if (eq && is_key_param(pool, p, length)) {
            char *value = apr_pstrmemdup(pool, eq + 1,
                                         length - (eq + 1 - p));
            ap_unescape_urlencoded(value);
            return value;
        }
        p = p[length] ? p + length + 1 : NULL;
    }
    return NULL;
}

/* The same text without any key parameter in its query: a URI, or a
 * request line whose " HTTP/1.1" follows the query.  NULL when there was
 * none to take out. */
static char *without_key_params(apr_pool_t *pool, const char *text)
{
    const char *query = strchr(text, '?');
    const char *p, *end;
    char *out, *o;
    int dropped = 0;

    if (!query) {
        return NULL;
    }
    end = query + 1 + strcspn(query + 1, " #");
    out = o = apr_palloc(pool, strlen(text) + 1);
    memcpy(o, text, query - text);
    o += query - text;
    for (p = query + 1; p < end;) {
        apr_size_t length = strcspn(p, "&");
        if (p + length > end) {
            length = end - p;
        }
        if (is_key_param(pool, p, length)) {
            dropped = 1;
        }
        else if (length) {
            int first = (o == out + (query - text));
            *o++ = first ? '?' : '&';
            memcpy(o, p, length);
            o += length;
        }
        p += length + 1;
    }
    strcpy(o, end);
    return dropped ? out : NULL;
}

/* Takes every form of caller credential out of the request: no key or
 * token the client presented reaches a member, the access log (%r, %q,
 * %U%q) or an error log line. */
void aoai_front_door_scrub(request_rec *r, const aoai_dir_conf *conf,
                           const char **member_uri)
{
    char *scrubbed;

    apr_table_unset(r->headers_in, "api-key");
    apr_table_unset(r->headers_in, "Ocp-Apim-Subscription-Key");
    apr_table_unset(r->headers_in, "Authorization");
    if (conf->key_header) {
        apr_table_unset(r->headers_in, conf->key_header);
    }
    if (!r->args) {
        return;
    }
    if ((scrubbed = without_key_params(r->pool, *member_uri))) {
        *member_uri = scrubbed;
    }
    if ((scrubbed = without_key_params(r->pool, r->the_request))) {
        r->the_request = scrubbed;
    }
    if ((scrubbed = without_key_params(r->pool, r->unparsed_uri))) {
        r->unparsed_uri = scrubbed;
        r->args = strchr(r->unparsed_uri, '?');
        r->args = r->args ? r->args + 1 : NULL;
        r->parsed_uri.query = r->args;
    }
}

/* OK with *label set, or HTTP_UNAUTHORIZED with *why for the client. */
int aoai_front_door_check_key(request_rec *r, const aoai_dir_conf *conf,
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
        presented = query_key(r->pool, r->args);
    }
    if (!presented) {
        /* The v1 API's OpenAI clients send their key as a bearer token. */
        const char *bearer = apr_table_get(r->headers_in, "Authorization");
        if (bearer && !ap_cstr_casecmpn(bearer, "Bearer ", 7)) {
            presented = bearer + 7;
        }
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
static const char *parse_credential(cmd_parms *cmd,
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

/* Whether the children's user may do what the bits in "want" (a read or a
 * search) allow on this path, by its owner, group and mode.  The children
 * run as User and Group when httpd starts as root, else as whoever runs
 * it.  (ACLs are not read: a file they open would pass here and then
 * work; one they close shows at the first call, logged.) */
static int children_may(const struct stat *st, mode_t owner_bit,
                        mode_t group_bit, mode_t other_bit)
{
    uid_t uid = geteuid() == 0 ? ap_unixd_config.user_id : geteuid();
    gid_t gid = geteuid() == 0 ? ap_unixd_config.group_id : getegid();
    const char *user = ap_unixd_config.user_name;

    if (uid == 0) {
        return 1;
    }
    if (st->st_uid == uid) {
        return (st->st_mode & owner_bit) != 0;
    }
    if (st->st_gid == gid) {
        return (st->st_mode & group_bit) != 0;
    }
    if (user && *user != '#') {
        gid_t groups[64];
        int count = 64, i;
        if (getgrouplist(user, gid, groups, &count) >= 0) {
            for (i = 0; i < count; i++) {
                if (groups[i] == st->st_gid) {
                    return (st->st_mode & group_bit) != 0;
                }
            }
        }
    }
    return (st->st_mode & other_bit) != 0;
}

static const char *who_runs_children(apr_pool_t *pool)
{
    if (geteuid() != 0) {
        return apr_psprintf(pool, "uid %ld", (long)geteuid());
    }
    return apr_psprintf(pool, "User %s", ap_unixd_config.user_name
                                         ? ap_unixd_config.user_name : "?");
}

/* A bearer token file is read by the children on every attempt, long after
 * start-up: `apachectl -t` says now if they could not read it.  NULL when
 * the file is there, not empty, and readable by the children's user
 * through every directory above it. */
static const char *check_credential_file(apr_pool_t *pool,
                                         const aoai_member_credential *cred)
{
    struct stat st;
    char *dir = apr_pstrdup(pool, cred->path);
    char *slash;

    if (!cred->bearer) {
        return NULL;    /* read by the parent, at start-up, already */
    }
    if (stat(cred->path, &st) != 0) {
        return apr_psprintf(pool, "%s is missing", cred->path);
    }
    if (!S_ISREG(st.st_mode) || st.st_size == 0) {
        return apr_psprintf(pool, "%s is %s", cred->path,
                            S_ISREG(st.st_mode) ? "empty" : "not a file");
    }
    if (!children_may(&st, S_IRUSR, S_IRGRP, S_IROTH)) {
        return apr_psprintf(pool, "%s is not readable by %s, as whom the "
                            "children read it on every call (owner uid "
                            "%ld, group gid %ld, mode %04o)", cred->path,
                            who_runs_children(pool), (long)st.st_uid,
                            (long)st.st_gid, (unsigned)(st.st_mode & 07777));
    }
    while ((slash = strrchr(dir, '/')) && slash != dir) {
        *slash = '\0';
        if (stat(dir, &st) == 0
            && !children_may(&st, S_IXUSR, S_IXGRP, S_IXOTH)) {
            return apr_psprintf(pool, "%s cannot be reached by %s: the "
                                "directory %s (mode %04o) does not let it "
                                "through", cred->path,
                                who_runs_children(pool), dir,
                                (unsigned)(st.st_mode & 07777));
        }
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
 * previous attempt's member got.  Returns APR_SUCCESS, or why a bearer
 * token file cannot be used, with *file naming it: the attempt then
 * fails over, and the caller logs it (never the token). */
apr_status_t aoai_front_door_credential(request_rec *r,
                                        const aoai_dir_conf *conf,
                                        proxy_worker *worker,
                                        const char **file)
{
    const aoai_member_credential *cred = credential_for(conf, worker);
    const char *token;
    apr_status_t rv;

    apr_table_unset(r->headers_in, "api-key");
    apr_table_unset(r->headers_in, "Authorization");
    if (!cred) {
        return APR_SUCCESS;
    }
    if (!cred->bearer) {
        apr_table_setn(r->headers_in, "api-key", cred->value);
        return APR_SUCCESS;
    }
    rv = read_small_file(r->pool, cred->path, &token);
    if (rv == APR_SUCCESS && !header_value_ok(token)) {
        rv = APR_EINVAL;
    }
    if (rv != APR_SUCCESS) {
        *file = cred->path;
        return rv;
    }
    apr_table_setn(r->headers_in, "Authorization",
                   apr_pstrcat(r->pool, "Bearer ", token, NULL));
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* Directives and their start-up checks                                 */

const char *aoai_front_door_set_key_file(cmd_parms *cmd, void *dconf,
                                         const char *arg)
{
    aoai_dir_conf *conf = dconf;
    const char *err;

    conf->keys_set = 1;
    if (!strcasecmp(arg, "none")) {
        conf->keys = NULL;
        return NULL;
    }
    err = aoai_keyfile_load(cmd->pool, ap_server_root_relative(cmd->pool, arg),
                         &conf->keys);
    return err ? apr_pstrcat(cmd->pool, "AOAISubscriptionKeyFile ", err, NULL)
               : NULL;
}

const char *aoai_front_door_set_key_header(cmd_parms *cmd, void *dconf,
                                           const char *arg)
{
    aoai_dir_conf *conf = dconf;

    if (!aoai_config_header_name_ok(arg)) {
        return apr_psprintf(cmd->pool, "AOAISubscriptionKeyHeader: '%s' is "
                            "not a valid header name", arg);
    }
    conf->key_header = arg;
    conf->key_header_set = 1;
    return NULL;
}

const char *aoai_front_door_set_credential(cmd_parms *cmd, void *dconf,
                                           const char *route,
                                           const char *kind,
                                           const char *source)
{
    aoai_dir_conf *conf = dconf;
    aoai_member_credential *cred;
    const char *err = aoai_config_in_balancer_section(cmd);
    int i;

    if (err) {
        return err;
    }
    if (!conf->credentials) {
        conf->credentials = apr_array_make(cmd->pool, 4, sizeof(*cred));
    }
    for (i = 0; i < conf->credentials->nelts; i++) {
        if (!strcmp(APR_ARRAY_IDX(conf->credentials, i,
                                  aoai_member_credential).route, route)) {
            return apr_psprintf(cmd->pool, "AOAIMemberCredential %s: this "
                                "member already has a credential", route);
        }
    }
    cred = apr_array_push(conf->credentials);
    return parse_credential(cmd, cred, route, kind, source);
}

/* A credential for a route that no member of its balancer has would
 * silently never be used; a bearer file the children cannot read would
 * fail every call of the member. */
static int check_credentials(server_rec *s, proxy_balancer *balancer,
                             const aoai_dir_conf *conf, void *baton)
{
    apr_pool_t *ptemp = baton;
    int i;

    for (i = 0; conf->credentials && i < conf->credentials->nelts; i++) {
        const aoai_member_credential *cred = &APR_ARRAY_IDX(
            conf->credentials, i, aoai_member_credential);
        const char *err = check_credential_file(ptemp, cred);

        if (err) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                         AOAI_LOGNO(006) "AOAIMemberCredential %s bearer "
                         "file:%s in %s: %s", cred->route, cred->path,
                         balancer->s->name, err);
            return !OK;
        }
        if (!aoai_balancers_has_route(balancer, cred->route)) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                         AOAI_LOGNO(005) "AOAIMemberCredential %s: no "
                         "BalancerMember of %s has route=%s", cred->route,
                         balancer->s->name, cred->route);
            return !OK;
        }
    }
    return OK;
}

int aoai_front_door_check(server_rec *s, apr_pool_t *ptemp)
{
    return aoai_config_each_section(s, ptemp, check_credentials, ptemp);
}
