/* libFuzzer target: an answer's token usage read from bytes a member sent.
 * The first input byte picks JSON body or SSE stream and the size of the
 * pieces the answer arrives in; the rest is the answer.  Whatever the
 * bytes, a usage that is found has counts within the scanner's bounds. */
#include <stdint.h>
#include <stdlib.h>

#include "apr_general.h"
#include "aoai_usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static apr_pool_t *pool;
    aoai_usage_scan *scan;
    apr_size_t step, done = 0;

    if (!pool) {
        apr_initialize();
        apr_pool_create(&pool, NULL);
    }
    if (size < 1) {
        return 0;
    }
    step = (apr_size_t)(data[0] >> 1) + 1;
    scan = aoai_usage_scan_start(pool, data[0] & 1);
    data++;
    size--;
    while (done < size) {
        apr_size_t piece = size - done < step ? size - done : step;
        aoai_usage_scan_feed(pool, scan, (const char *)data + done, piece);
        done += piece;
    }
    if (aoai_usage_scan_finish(scan)) {
        const aoai_usage *u = &scan->usage;
        if (u->prompt_tokens < 0 || u->completion_tokens < 0
            || u->total_tokens < 0 || u->prompt_tokens > 1000000000
            || u->completion_tokens > 1000000000
            || u->total_tokens > 1000000000) {
            abort();
        }
    }
    apr_pool_clear(pool);
    return 0;
}
