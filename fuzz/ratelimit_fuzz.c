/* libFuzzer target: what a member's 429 says about its window.  The input
 * is split at newlines into retry-after-ms, Retry-After,
 * x-ratelimit-reset-requests and x-ratelimit-reset-tokens, as a hostile or
 * broken member could send them.  The window must never be negative and
 * never beyond the parser's own cap, whatever the bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "apr_general.h"
#include "aoai_ratelimit.h"

#define CAP apr_time_from_sec((apr_int64_t)86400 * 366)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int initialized;
    char *copy, *field[4] = { NULL, NULL, NULL, NULL };
    char *p;
    int n = 0;
    aoai_ratelimit_headers h;
    apr_interval_time_t window = -1;
    const char *bad;

    if (!initialized) {
        apr_initialize();
        initialized = 1;
    }
    copy = malloc(size + 1);
    memcpy(copy, data, size);
    copy[size] = '\0';
    for (p = copy, field[n++] = p; *p && n < 4; p++) {
        if (*p == '\n') {
            *p = '\0';
            field[n++] = p + 1;
        }
    }
    /* an empty field stands for an absent header */
    h.retry_after_ms = field[0] && *field[0] ? field[0] : NULL;
    h.retry_after = field[1] && *field[1] ? field[1] : NULL;
    h.reset_requests = field[2] && *field[2] ? field[2] : NULL;
    h.reset_tokens = field[3] && *field[3] ? field[3] : NULL;

    if (aoai_ratelimit_window(&h, apr_time_from_sec(1700000000), &window,
                                 &bad) == AOAI_WINDOW_FOUND
        && (window < 0 || window > CAP)) {
        abort();
    }
    if (aoai_ratelimit_duration(copy, 1, &window) && (window < 0 || window > CAP)) {
        abort();
    }
    {
        apr_int64_t permille = -1;
        if (aoai_ratelimit_utilization(copy, &permille)
            && (permille < 0 || permille > 1000)) {
            abort();
        }
    }
    free(copy);
    return 0;
}
