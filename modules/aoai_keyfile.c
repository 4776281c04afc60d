/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The subscription key file: one "label sha256-hex" line per subscriber,
 * '#' comments.  It is read by apachectl -t and on every (graceful)
 * restart; its errors name the file, the line and what is wrong, because
 * the admin who edits it by hand is the one who reads them.
 *
 * Only APR here, so a fuzzer can drive this file alone.
 */

#include "aoai_keyfile.h"

#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_file_io.h"

static int hex_value(int c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c = apr_tolower(c);
    return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

static int label_char(int c)
{
    return apr_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '@';
}

/* The digest's 64 hex characters into its 32 bytes; 0 when one is not hex. */
static int read_digest(const char *hex, unsigned char digest[32])
{
    int i;

    for (i = 0; i < 32; i++) {
        int high = hex_value(hex[2 * i]);
        int low = hex_value(hex[2 * i + 1]);
        if (high < 0 || low < 0) {
            return 0;
        }
        digest[i] = (unsigned char)(high << 4 | low);
    }
    return 1;
}

/* The error for a key that repeats an earlier line's label or digest. */
static const char *repeated(apr_pool_t *pool, const aoai_key_set *set,
                            const aoai_subscription_key *key)
{
    int i;

    for (i = 0; i < set->keys->nelts - 1; i++) {
        const aoai_subscription_key *other =
            &APR_ARRAY_IDX(set->keys, i, aoai_subscription_key);
        if (!strcmp(other->label, key->label)) {
            return apr_psprintf(pool, "label '%s' is already used on an "
                                "earlier line", key->label);
        }
        if (!memcmp(other->digest, key->digest, 32)) {
            return apr_psprintf(pool, "the same key as label '%s'",
                                other->label);
        }
    }
    return NULL;
}

/* One line, comment cut: a key added to the set, nothing (blank), or what
 * is wrong with it. */
static const char *parse_line(apr_pool_t *pool, char *p, aoai_key_set *set)
{
    char *label_end, *digest_start, *end;
    aoai_subscription_key *key;

    while (apr_isspace(*p)) {
        p++;
    }
    if (!*p) {
        return NULL;
    }
    for (label_end = p; label_char(*label_end); label_end++) {
    }
    if (label_end == p || !apr_isspace(*label_end)) {
        return "expected 'label sha256-hex'; a label is letters, digits and "
               "- _ . @";
    }
    if (label_end - p > AOAI_LABEL_MAX) {
        return apr_psprintf(pool, "a label is at most %d characters (it is "
                            "kept in shared memory with its tokens)",
                            AOAI_LABEL_MAX);
    }
    for (digest_start = label_end; apr_isspace(*digest_start);
         digest_start++) {
    }
    for (end = digest_start; *end && !apr_isspace(*end); end++) {
    }
    if (end - digest_start != 64) {
        return "the digest is not 64 hex characters (a SHA-256 of the key; "
               "see scripts/aoai-keyhash)";
    }
    while (apr_isspace(*end)) {
        end++;
    }
    if (*end) {
        return "unexpected text after the digest";
    }
    key = apr_array_push(set->keys);
    key->label = apr_pstrmemdup(pool, p, label_end - p);
    if (!read_digest(digest_start, key->digest)) {
        return "the digest is not hexadecimal";
    }
    return repeated(pool, set, key);
}

/* Reads "label sha256-hex" lines; '#' starts a comment.  Returns NULL, or
 * an error naming the file, the line and what is wrong with it. */
const char *aoai_keyfile_load(apr_pool_t *pool, const char *path,
                              aoai_key_set **out)
{
    apr_file_t *file;
    apr_status_t rv;
    char line[1024], buf[120];
    const char *err = NULL;
    int line_number = 0;
    aoai_key_set *set = apr_pcalloc(pool, sizeof(*set));

    set->path = path;
    set->keys = apr_array_make(pool, 8, sizeof(aoai_subscription_key));
    rv = apr_file_open(&file, path, APR_FOPEN_READ, APR_OS_DEFAULT, pool);
    if (rv != APR_SUCCESS) {
        return apr_psprintf(pool, "%s: cannot be read: %s", path,
                            apr_strerror(rv, buf, sizeof(buf)));
    }
    while (!err && (rv = apr_file_gets(line, sizeof(line), file))
                   == APR_SUCCESS) {
        char *comment = strchr(line, '#');

        line_number++;
        if (!strchr(line, '\n') && !apr_file_eof(file)) {
            err = "line too long";
            break;
        }
        if (comment) {
            *comment = '\0';
        }
        err = parse_line(pool, line, set);
    }
    apr_file_close(file);
    if (err) {
        return apr_psprintf(pool, "%s:%d: %s", path, line_number, err);
    }
    if (!APR_STATUS_IS_EOF(rv)) {
        return apr_psprintf(pool, "%s: read error", path);
    }
    if (!set->keys->nelts) {
        return apr_psprintf(pool, "%s: no keys: every call would be refused",
                            path);
    }
    *out = set;
    return NULL;
}
