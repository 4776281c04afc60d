/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_operations: AOAIOperations, the operations (method and path
 * template) a balancer lets through, as API Management passes only the
 * operations of the OpenAPI document it imported.
 */

#ifndef AOAI_OPERATIONS_H
#define AOAI_OPERATIONS_H

#include "httpd.h"
#include "http_config.h"

#include "aoai_config.h"

const char *aoai_operations_set(cmd_parms *cmd, void *dconf,
                                const char *arg);
/* Whether a call is one of the listed operations; uri is the member URI
 * (balancer://name/openai/...). */
int aoai_operations_allow(request_rec *r, const aoai_operations *operations,
                          const char *uri);

#endif /* AOAI_OPERATIONS_H */
