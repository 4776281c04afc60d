/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_affinity: which member holds an object (a stored response, a file,
 * a thread...), by the object's id, in shared memory: bounded, each entry
 * with a lifetime, kept over graceful restarts like the slot table.  It
 * stores names and times; aoai_objects.c says what they mean.
 */

#ifndef AOAI_AFFINITY_H
#define AOAI_AFFINITY_H

#include "httpd.h"
#include "mod_proxy.h"

/* post_config, in the parent: the store made or kept. */
apr_status_t aoai_affinity_post_config(server_rec *s, int entries);

/* An object's id as the store keys it: its balancer and its id. */
apr_uint64_t aoai_affinity_key(const proxy_balancer *balancer,
                               const char *id);
/* A member as the store names it. */
apr_uint64_t aoai_affinity_member(const proxy_worker *worker);

/* id is held by member until until; replaces what was known of it. */
void aoai_affinity_put(apr_uint64_t key, apr_uint64_t member,
                       apr_time_t until);
/* The member that holds it, or 0 when unknown (or expired). */
apr_uint64_t aoai_affinity_get(apr_uint64_t key, apr_time_t now);
void aoai_affinity_forget(apr_uint64_t key);
/* A mark on a key until a time (a member that lacks a deployment), and
 * whether it is on: while no mark is on anywhere, that costs one read. */
void aoai_affinity_mark(apr_uint64_t key, apr_time_t until);
/* Whether any mark is on, anywhere: when none is, no key need be made. */
int aoai_affinity_marks_on(apr_time_t now);
int aoai_affinity_marked(apr_uint64_t key, apr_time_t now);
/* The member of a balancer a stored name is, or NULL. */
proxy_worker *aoai_affinity_worker(proxy_balancer *balancer,
                                   apr_uint64_t member);

/* For the status pages: entries in use, and the capacity. */
void aoai_affinity_usage(int *used, int *capacity);

#endif /* AOAI_AFFINITY_H */
