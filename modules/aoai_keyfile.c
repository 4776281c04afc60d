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

#include "aoai_balancer.h"

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

/* Reads "label sha256-hex" lines; '#' starts a comment.  Returns NULL, or
 * an error naming the file, the line and what is wrong with it. */
const char *aoai_keys_load(apr_pool_t *pool, const char *path,
                           aoai_key_set **out)
{
    apr_file_t *file;
    apr_status_t rv;
    char line[1024];
    int line_number = 0;
    aoai_key_set *set = apr_pcalloc(pool, sizeof(*set));

    set->path = path;
    set->keys = apr_array_make(pool, 8, sizeof(aoai_subscription_key));
    rv = apr_file_open(&file, path, APR_FOPEN_READ, APR_OS_DEFAULT, pool);
    if (rv != APR_SUCCESS) {
        char buf[120];
        return apr_psprintf(pool, "%s: cannot be read: %s", path,
                            apr_strerror(rv, buf, sizeof(buf)));
    }
    while ((rv = apr_file_gets(line, sizeof(line), file)) == APR_SUCCESS) {
        char *p = line, *label_end, *digest_start, *end;
        aoai_subscription_key *key;
        int i;

        line_number++;
        if (!strchr(line, '\n') && !apr_file_eof(file)) {
            apr_file_close(file);
            return apr_psprintf(pool, "%s:%d: line too long", path,
                                line_number);
        }
        if ((end = strchr(p, '#'))) {
            *end = '\0';
        }
        while (apr_isspace(*p)) {
            p++;
        }
        if (!*p) {
            continue;
        }
        label_end = p;
        while (label_char(*label_end)) {
            label_end++;
        }
        if (label_end == p || !apr_isspace(*label_end)) {
            apr_file_close(file);
            return apr_psprintf(pool, "%s:%d: expected 'label sha256-hex'; a "
                                "label is letters, digits and - _ . @",
                                path, line_number);
        }
        if (label_end - p > AOAI_LABEL_MAX) {
            apr_file_close(file);
            return apr_psprintf(pool, "%s:%d: a label is at most %d "
                                "characters (it is kept in shared memory "
                                "with its tokens)", path, line_number,
                                AOAI_LABEL_MAX);
        }
        digest_start = label_end;
        while (apr_isspace(*digest_start)) {
            digest_start++;
        }
        end = digest_start;
        while (*end && !apr_isspace(*end)) {
            end++;
        }
        if (end - digest_start != 64) {
            apr_file_close(file);
            return apr_psprintf(pool, "%s:%d: the digest is not 64 hex "
                                "characters (a SHA-256 of the key; see "
                                "scripts/aoai-keyhash)", path, line_number);
        }
        while (apr_isspace(*end)) {
            end++;
        }
        if (*end) {
            apr_file_close(file);
            return apr_psprintf(pool, "%s:%d: unexpected text after the "
                                "digest", path, line_number);
        }
        key = apr_array_push(set->keys);
        key->label = apr_pstrmemdup(pool, p, label_end - p);
        for (i = 0; i < 32; i++) {
            int high = hex_value(digest_start[2 * i]);
            int low = hex_value(digest_start[2 * i + 1]);
            if (high < 0 || low < 0) {
                apr_file_close(file);
                return apr_psprintf(pool, "%s:%d: the digest is not "
                                    "hexadecimal", path, line_number);
            }
            key->digest[i] = (unsigned char)(high << 4 | low);
        }
        for (i = 0; i < set->keys->nelts - 1; i++) {
            const aoai_subscription_key *other =
                &APR_ARRAY_IDX(set->keys, i, aoai_subscription_key);
            if (!strcmp(other->label, key->label)) {
                apr_file_close(file);
                return apr_psprintf(pool, "%s:%d: label '%s' is already "
                                    "used on an earlier line", path,
                                    line_number, key->label);
            }
            if (!memcmp(other->digest, key->digest, 32)) {
                apr_file_close(file);
                return apr_psprintf(pool, "%s:%d: the same key as label "
                                    "'%s'", path, line_number, other->label);
            }
        }
    }
    apr_file_close(file);
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

