/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * A throttle window's end: one 64-bit word in shared memory that any
 * thread of any child may raise at any moment, with no lock.
 *
 * It only ever moves forward.  Two children that see 429s with different
 * Retry-After values at once both try to raise it; compare-and-swap makes
 * each try either install its value over the one it read, or learn the
 * newer value and try again only if its own is still later.  So the later
 * end always wins, whatever the interleaving, and a read (a 64-bit atomic
 * load) never sees half of one value and half of another.
 *
 * Only APR here: t/unit/window_stress.c drives this file from many
 * processes and threads at once.
 */

#include "aoai_window.h"

#include "apr_atomic.h"

apr_time_t aoai_window_read(const volatile apr_uint64_t *end)
{
    return (apr_time_t)apr_atomic_read64((volatile apr_uint64_t *)end);
}

int aoai_window_raise(volatile apr_uint64_t *end, apr_time_t until)
{
    apr_uint64_t seen;

    if (until <= 0) {
        return 0;
    }
    seen = apr_atomic_read64(end);
    while (seen < (apr_uint64_t)until) {
        apr_uint64_t before = apr_atomic_cas64(end, (apr_uint64_t)until, seen);
        if (before == seen) {
            return 1;
        }
        seen = before;
    }
    return 0;
}
