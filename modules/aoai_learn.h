/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_learn: each member's request and token windows, learned from what
 * the member says (a 429's retry-after-ms, x-ratelimit-reset-*, the moment
 * its remaining figure goes back up), so that headroom knows when a member
 * that has run out is back.  docs/learned-windows.md tells the story.
 */

#ifndef AOAI_LEARN_H
#define AOAI_LEARN_H

#include "apr_time.h"

#include "aoai_config.h"
#include "aoai_table.h"

/* A figure read from an answer, with what came beside it. */
typedef struct {
    apr_int64_t remaining;      /* x-ratelimit-remaining-* */
    apr_int64_t limit;          /* x-ratelimit-limit-*; -1: not sent */
    apr_interval_time_t reset;  /* x-ratelimit-reset-*; -1: not sent */
    apr_int64_t cost;           /* what the call it answers was to use */
    apr_time_t sent;            /* when that call came in */
} aoai_learn_figure;

/* Whether this kind's figures steer: known, and not fallen back. */
int aoai_learn_steers(aoai_headroom_shared *h);
/* When the member's current window of this kind ends: learned, or its
 * start plus AOAIHeadroomWindow (the first guess, or an override). */
apr_time_t aoai_learn_window_end(aoai_headroom_shared *h,
                                 const aoai_dir_conf *conf, int kind);
/* Whether that end is a fact (learned, or AOAIHeadroomWindow given). */
int aoai_learn_end_known(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                         int kind);
/* When the window is over, the member holds a full one again, from the
 * call that came in at sent and is being picked now. */
void aoai_learn_refill(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                       int kind, apr_time_t sent, apr_time_t now);
/* A member that has run out while its window's end is not known: one
 * call at a time may go to find out (its 429 says when the window ends,
 * its 200 that a new one began).  1 while no probe is under way. */
int aoai_learn_probe_free(aoai_headroom_shared *h, apr_time_t now);
/* 1 to the one caller that may send that call. */
int aoai_learn_claim_probe(aoai_headroom_shared *h, apr_time_t now);
/* A member that ran out, whose windows might be fixed to the clock:
 * 1 when such a window would have begun since its window started, and
 * that was not asked yet. */
int aoai_learn_anchor_due(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                          int kind, apr_time_t now);
/* 1 to the one caller that may send the call that asks it. */
int aoai_learn_claim_anchor_probe(aoai_headroom_shared *h, apr_time_t now);
/* A call of this cost was sent to the member (the pick took it off the
 * estimate): it is in flight until its answer's figure comes. */
void aoai_learn_sent(aoai_headroom_shared *h, apr_int64_t cost);
/* An answer with a usable remaining figure.  Returns the fallback it
 * caused, or AOAI_FALLBACK_NONE. */
aoai_fallback aoai_learn_note_figure(aoai_headroom_shared *h,
                                     const aoai_dir_conf *conf, int kind,
                                     const aoai_learn_figure *f,
                                     apr_int64_t floor, apr_time_t now);
/* A 429 whose window ends at end: 1 when this kind's model explains it
 * (the window of this kind ends there, and was learned), else 0. */
int aoai_learn_note_429(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                        int kind, apr_time_t end, apr_time_t now);
/* The figures of this kind disagree with the model: the member is
 * steered for this kind by 429s only, until it learns afresh. */
void aoai_learn_fall_back(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                          int kind, aoai_fallback why, apr_time_t now);
/* A kind that fell back and whose time has come learns its windows
 * afresh from this answer on: 1 to the one caller that made it so. */
int aoai_learn_relearn(aoai_headroom_shared *h, apr_time_t now);

/* Names for the status pages. */
const char *aoai_learn_source_name(int learned_from);
const char *aoai_learn_fallback_name(int fallback);

#endif /* AOAI_LEARN_H */
