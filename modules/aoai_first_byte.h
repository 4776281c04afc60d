/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_first_byte: the watch on a member's connection while an attempt
 * runs on it: the request's way out (TLS handshake included) and the wait
 * for the answer's first byte, each bounded by AOAIFirstByteTimeout; and
 * the moment the request reached the member.
 */

#ifndef AOAI_FIRST_BYTE_H
#define AOAI_FIRST_BYTE_H

#include "httpd.h"

void aoai_first_byte_register_hooks(apr_pool_t *p);

#endif /* AOAI_FIRST_BYTE_H */
