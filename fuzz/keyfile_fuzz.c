/* libFuzzer target: the subscription key file an admin edits by hand.
 * Every input either loads, with every key a label and a 32-byte digest,
 * or is refused with a message; it never crashes or reads out of bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apr_general.h"
#include "apr_pools.h"
#include "aoai_keyfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static apr_pool_t *root;
    static char path[64];
    apr_pool_t *pool;
    aoai_key_set *keys = NULL;
    const char *err;
    FILE *file;

    if (!root) {
        apr_initialize();
        apr_pool_create(&root, NULL);
        snprintf(path, sizeof(path), "/tmp/aoai-keyfile-fuzz.%d", (int)getpid());
    }
    file = fopen(path, "wb");
    if (!file) {
        return 0;
    }
    fwrite(data, 1, size, file);
    fclose(file);

    apr_pool_create(&pool, root);
    err = aoai_keyfile_load(pool, path, &keys);
    if (!err) {
        int i;
        if (!keys || keys->keys->nelts < 1) {
            abort();
        }
        for (i = 0; i < keys->keys->nelts; i++) {
            const aoai_subscription_key *key =
                &APR_ARRAY_IDX(keys->keys, i, aoai_subscription_key);
            if (!key->label || !*key->label) {
                abort();
            }
        }
    }
    else if (!*err) {
        abort();
    }
    apr_pool_destroy(pool);
    return 0;
}
