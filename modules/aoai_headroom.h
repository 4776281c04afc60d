/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_headroom: what a member says it has left (x-ratelimit-remaining-*),
 * kept in its shared slot so the lbmethod can steer away before the member
 * has to answer 429.
 */

#ifndef AOAI_HEADROOM_H
#define AOAI_HEADROOM_H

#include "httpd.h"

#include "aoai_config.h"
#include "aoai_table.h"

/* Whether this configuration steers by headroom at all. */
int aoai_headroom_enabled(const aoai_dir_conf *conf);
/* An answer came from the member: its figures feed the estimate and what
 * is learned of its windows (aoai_learn.c). */
void aoai_headroom_note(request_rec *r, aoai_member_slot *slot,
                        const aoai_dir_conf *conf, apr_time_t now);
/* A throttle window until end was opened by the answer in r; exact when
 * the member named it (retry-after-ms, Retry-After, x-ratelimit-reset-*). */
void aoai_headroom_throttled(request_rec *r, aoai_member_slot *slot,
                             const aoai_dir_conf *conf, int exact,
                             apr_time_t end, apr_time_t now);
/* Whether the call would leave the member below its floor. */
int aoai_headroom_is_low(aoai_member_slot *slot, const aoai_dir_conf *conf,
                         apr_int64_t token_estimate, apr_time_t now);
/* The pick goes to this member (for a call that came in at sent): the
 * call's cost comes off its figures.  With only_above_floor, 0 (and
 * nothing taken) when another call got there first. */
int aoai_headroom_take(aoai_member_slot *slot, const aoai_dir_conf *conf,
                       apr_int64_t token_estimate, apr_time_t sent,
                       apr_time_t now, int only_above_floor);
/* Whether the member is near the end of what it has left (for a call
 * of this token estimate), whether or not headroom steers. */
int aoai_headroom_near_end(aoai_member_slot *slot, apr_int64_t token_estimate);
/* "requests" or "tokens": a kind's name in logs and on the pages. */
const char *aoai_headroom_kind_name(int kind);

const char *aoai_headroom_set_floor(cmd_parms *cmd, void *dconf,
                                    const char *which, const char *value);
const char *aoai_headroom_set_window(cmd_parms *cmd, void *dconf,
                                     const char *which, const char *value);

#endif /* AOAI_HEADROOM_H */
