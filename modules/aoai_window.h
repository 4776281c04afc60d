/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_window: a window's end in one shared 64-bit word, raise-only and
 * lock-free.  APR only.
 */

#ifndef AOAI_WINDOW_H
#define AOAI_WINDOW_H

#include "apr.h"
#include "apr_time.h"

/* The end stored in the word (0: none). */
apr_time_t aoai_window_read(const volatile apr_uint64_t *end);

/* Moves the end to until when that is later; returns 1 when this call
 * moved it. */
int aoai_window_raise(volatile apr_uint64_t *end, apr_time_t until);

#endif /* AOAI_WINDOW_H */
