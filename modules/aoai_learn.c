/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Learned windows: when a member that has run out is back.
 *
 * A member's remaining figure says how much of its window is left, not
 * when the window ends, and windows differ: Azure's open at the first call
 * after the last one ended, other services' are fixed to the clock, and
 * their lengths are the deployment's, not ours to assume.  So each
 * member's window of each kind (requests, tokens) is learned from what
 * the member says:
 *   - a 429's retry-after-ms (or Retry-After) is the exact end of the
 *     window it is in; that end less the window's start is its length;
 *   - x-ratelimit-reset-* on an answer is the end as well;
 *   - a remaining figure that jumps back up says a new window began with
 *     the call it answers;
 *   - x-ratelimit-limit-* (or the largest figure plus the call's cost)
 *     is what a new window holds.
 * Once a window's end is known the member is refilled the moment it comes
 * and the next window is taken to last the learned length.  While the end
 * is not known, AOAIHeadroomWindow is the first guess, and a member that
 * has run out is probed by one call at a time: its 429 teaches the end,
 * its 200 that a window began.  AOAIHeadroomWindow given explicitly is an
 * override: windows of that kind last that long, whatever is learned.
 *
 * Never worse than reactive: where the figures disagree with the model (a
 * 429 while they said there was room, figures that do not go back up when
 * a window was over) the kind falls back, and the member is steered for
 * it by 429s alone, at worst one per window.  Not for good: what made the
 * model wrong may pass (another gateway's calls, a window misplaced while
 * little was known), so after a few windows the kind learns afresh; a
 * member that disagrees again waits twice as long each time.
 *
 * Every field is in the member's shared slot, read and written with
 * atomics, so every child learns from every answer and a graceful restart
 * keeps what was learned.
 */

#include "aoai_learn.h"

#include "apr_atomic.h"

/* A kind that fell back learns afresh after this many of its windows,
 * doubled each time it falls back again, up to AOAI_RELEARN_DOUBLINGS
 * times.  Reactive steering pays up to a 429 a window anyway, so a model
 * tried again and found wrong costs about what the wait saved. */
#define AOAI_RELEARN_WINDOWS 2
#define AOAI_RELEARN_DOUBLINGS 5
/* A lost probe (its answer never came) is retried after this. */
#define AOAI_PROBE_GAP apr_time_from_sec(1)
/* A learned window is taken to end a little late rather than early: a
 * call sent a moment before the member's window reopens costs a 429. */
#define AOAI_LATE_MAX apr_time_from_msec(50)

static apr_int64_t read_signed(volatile apr_uint64_t *word)
{
    return (apr_int64_t)apr_atomic_read64(word);
}

static void set_signed(volatile apr_uint64_t *word, apr_int64_t value)
{
    apr_atomic_set64(word, (apr_uint64_t)value);
}

static int overridden(const aoai_dir_conf *conf, int kind)
{
    return (conf->headroom_window_set >> kind) & 1;
}

static apr_interval_time_t late_margin(apr_interval_time_t length)
{
    return length / 100 < AOAI_LATE_MAX ? length / 100 : AOAI_LATE_MAX;
}

/* Raise-only, for what only grows (the full window, the length). */
static void raise_to(volatile apr_uint64_t *word, apr_int64_t value)
{
    for (;;) {
        apr_uint64_t seen = apr_atomic_read64(word);
        if ((apr_int64_t)seen >= value
            || apr_atomic_cas64(word, (apr_uint64_t)value, seen) == seen) {
            return;
        }
    }
}

int aoai_learn_steers(aoai_headroom_shared *h)
{
    return read_signed(&h->reported) >= 0
           && apr_atomic_read32(&h->fallback) == AOAI_FALLBACK_NONE;
}

apr_time_t aoai_learn_window_end(aoai_headroom_shared *h,
                                 const aoai_dir_conf *conf, int kind)
{
    apr_time_t end = read_signed(&h->window_end);

    return end ? end : read_signed(&h->window_start)
                       + conf->headroom_window[kind];
}

int aoai_learn_end_known(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                         int kind)
{
    return apr_atomic_read64(&h->window_end) || overridden(conf, kind);
}

/* The end of a window opened now: a learned length after this call, or,
 * for windows fixed to the clock, at the next multiple of the length
 * after the last end the member named. */
static apr_time_t next_end(aoai_headroom_shared *h,
                           apr_interval_time_t length, apr_time_t now)
{
    apr_time_t named = read_signed(&h->exact_end);

    if (apr_atomic_read32(&h->anchored) != AOAI_ANCHOR_CLOCK || !named
        || named > now) {
        return now + length + late_margin(length);
    }
    return named + ((now - named) / length + 1) * length
           + late_margin(length);
}

void aoai_learn_refill(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                       int kind, apr_time_t sent, apr_time_t now)
{
    apr_uint64_t start = apr_atomic_read64(&h->window_start);
    apr_interval_time_t length = read_signed(&h->length);
    apr_int64_t full = read_signed(&h->full);
    int learned = length && !overridden(conf, kind);

    if (now < aoai_learn_window_end(h, conf, kind)) {
        return;
    }
    /* The window starts with this call: answers to calls that came in
     * before it carry the last window's figures. */
    if (sent <= (apr_time_t)start) {
        sent = (apr_time_t)start + 1;
    }
    /* One call opens the next window; others racing it join it. */
    if (apr_atomic_cas64(&h->window_start, (apr_uint64_t)sent, start)
        != start) {
        return;
    }
    set_signed(&h->previous_start, (apr_int64_t)start);
    /* Its first answer must show the figure went back up. */
    set_signed(&h->before_refill, read_signed(&h->reported));
    set_signed(&h->window_end, learned ? next_end(h, length, now) : 0);
    if (learned) {
        apr_atomic_set32(&h->learned_from, AOAI_LEARNED_LENGTH);
    }
    set_signed(&h->in_flight, 0);
    set_signed(&h->estimate, full > 0 ? full : read_signed(&h->limit));
}

int aoai_learn_probe_free(aoai_headroom_shared *h, apr_time_t now)
{
    return now >= read_signed(&h->probe_at) + AOAI_PROBE_GAP;
}

static apr_interval_time_t anchor_doubt(apr_interval_time_t length)
{
    return length / 20 > apr_time_from_msec(50) ? length / 20
                                                : apr_time_from_msec(50);
}

/* A member that ran out inside a window of learned length, whose
 * windows might be fixed to the clock: once the clock's window would
 * have begun, one call finds out.  Its 200 with the figure back up says
 * they are (and the model moves to the clock), its 429 that they start
 * at a first call; either way it is asked once. */
int aoai_learn_anchor_due(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                          int kind, apr_time_t now)
{
    apr_time_t named = read_signed(&h->exact_end);
    apr_interval_time_t length = read_signed(&h->length);

    if (apr_atomic_read32(&h->anchored) != AOAI_ANCHOR_UNKNOWN
        || overridden(conf, kind) || !length || !named || now <= named) {
        return 0;
    }
    /* Close to the end the model has, a window starting at a first call
     * could be over too (the learned length errs long): no answer there
     * tells the two apart. */
    if (now + anchor_doubt(length) >= aoai_learn_window_end(h, conf, kind)) {
        return 0;
    }
    return named + (now - named) / length * length
           > read_signed(&h->window_start);
}

int aoai_learn_claim_anchor_probe(aoai_headroom_shared *h, apr_time_t now)
{
    if (apr_atomic_cas32(&h->anchored, AOAI_ANCHOR_TESTING,
                         AOAI_ANCHOR_UNKNOWN) != AOAI_ANCHOR_UNKNOWN) {
        return 0;
    }
    set_signed(&h->probe_at, now);
    set_signed(&h->before_refill, read_signed(&h->reported));
    return 1;
}

int aoai_learn_claim_probe(aoai_headroom_shared *h, apr_time_t now)
{
    apr_uint64_t seen = apr_atomic_read64(&h->probe_at);

    if (now < (apr_time_t)seen + AOAI_PROBE_GAP
        || apr_atomic_cas64(&h->probe_at, (apr_uint64_t)now, seen) != seen) {
        return 0;
    }
    set_signed(&h->before_refill, read_signed(&h->reported));
    return 1;
}

void aoai_learn_fall_back(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                          int kind, aoai_fallback why, apr_time_t now)
{
    apr_interval_time_t length = read_signed(&h->length);
    apr_uint32_t before;

    if (!length || overridden(conf, kind)) {
        length = conf->headroom_window[kind];
    }
    if (apr_atomic_cas32(&h->fallback, why, AOAI_FALLBACK_NONE)
        != AOAI_FALLBACK_NONE) {
        return;
    }
    before = apr_atomic_inc32(&h->fallbacks);
    if (before > AOAI_RELEARN_DOUBLINGS) {
        before = AOAI_RELEARN_DOUBLINGS;
    }
    set_signed(&h->relearn_at,
               now + (length * AOAI_RELEARN_WINDOWS << before));
}

int aoai_learn_relearn(aoai_headroom_shared *h, apr_time_t now)
{
    apr_uint64_t at = apr_atomic_read64(&h->relearn_at);

    /* relearn_at is the claim: one caller clears it, puts what was
     * learned back to nothing, then lets the figures steer again. */
    if (apr_atomic_read32(&h->fallback) == AOAI_FALLBACK_NONE || !at
        || now < (apr_time_t)at
        || apr_atomic_cas64(&h->relearn_at, 0, at) != at) {
        return 0;
    }
    set_signed(&h->reported, -1);
    set_signed(&h->window_end, 0);
    set_signed(&h->length, 0);
    set_signed(&h->exact_end, 0);
    set_signed(&h->before_refill, -1);
    set_signed(&h->probe_at, 0);
    set_signed(&h->in_flight, 0);
    apr_atomic_set32(&h->anchored, AOAI_ANCHOR_UNKNOWN);
    apr_atomic_set32(&h->learned_from, AOAI_LEARNED_NOTHING);
    apr_atomic_set32(&h->fallback, AOAI_FALLBACK_NONE);
    return 1;
}

/* What a new window holds, and the largest figure (the status's limit). */
static void note_capacity(aoai_headroom_shared *h, const aoai_learn_figure *f)
{
    raise_to(&h->full, f->limit >= 0 ? f->limit : f->remaining + f->cost);
    raise_to(&h->limit, f->limit >= 0 ? f->limit : f->remaining);
}

static void note_reset(aoai_headroom_shared *h, const aoai_learn_figure *f,
                       apr_time_t now)
{
    if (f->reset >= 0) {
        set_signed(&h->exact_end, now + f->reset);
        set_signed(&h->window_end, now + f->reset);
        apr_atomic_set32(&h->learned_from, AOAI_LEARNED_RESET_HEADER);
    }
}

/* A figure this far above the last one is a new window, not answers
 * overtaking each other inside one.  So is a figure that says its call was
 * a window's first (a full window less the call) and is not below the
 * last one, from a call that came after the last figure's: inside one
 * window a later call always finds less left.  Without that second rule a
 * window that began while the last one still had room goes unseen when
 * windows are small (3 calls: 2 left after the first call of one window,
 * 2 again after the first of the next), and the 429 that ends it would
 * teach a length reaching back into the window before.  (A member whose
 * figure never moves, one without a quota, opens a window with each
 * call by this rule: true enough, and it steers nothing.) */
static int went_back_up(aoai_headroom_shared *h, const aoai_learn_figure *f,
                        apr_int64_t previous, apr_time_t previous_sent)
{
    apr_int64_t full = read_signed(&h->full);
    apr_int64_t jump = full / 2 > 2 ? full / 2 : 2;

    if (f->remaining <= read_signed(&h->estimate)) {
        return 0;
    }
    return f->remaining >= previous + jump
           || (f->remaining >= previous && f->sent > previous_sent
               && f->remaining >= full - f->cost);
}

/* The figure says a window began with the call it answers. */
static void new_window_seen(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                            int kind, const aoai_learn_figure *f)
{
    apr_interval_time_t length = read_signed(&h->length);

    set_signed(&h->previous_start, read_signed(&h->window_start));
    set_signed(&h->window_start, f->sent);
    set_signed(&h->in_flight, 0);
    set_signed(&h->estimate, f->remaining);
    if (f->reset < 0) {
        set_signed(&h->window_end, (length && !overridden(conf, kind))
                                   ? next_end(h, length, f->sent) : 0);
        apr_atomic_set32(&h->learned_from, AOAI_LEARNED_FIGURES);
    }
}

/* Inside a window: a figure below the last one is the member's newest
 * count, made with what each call actually used (not its estimate), and
 * becomes the estimate, less what the calls still on their way are to use
 * (some of which it may have counted already: that errs low).  A figure
 * above the last one answers a call that was overtaken, and can only
 * lower the estimate. */
static void follow_figure(aoai_headroom_shared *h, apr_int64_t figure,
                          apr_int64_t previous)
{
    apr_int64_t in_flight = read_signed(&h->in_flight);
    apr_int64_t now_left = figure - (in_flight > 0 ? in_flight : 0);

    if (figure <= previous) {
        set_signed(&h->estimate, now_left);
        return;
    }
    for (;;) {
        apr_uint64_t estimate = apr_atomic_read64(&h->estimate);
        if ((apr_int64_t)estimate <= now_left
            || apr_atomic_cas64(&h->estimate, (apr_uint64_t)now_left,
                                estimate) == estimate) {
            return;
        }
    }
}

void aoai_learn_sent(aoai_headroom_shared *h, apr_int64_t cost)
{
    apr_atomic_add64(&h->in_flight, (apr_uint64_t)cost);
}

aoai_fallback aoai_learn_note_figure(aoai_headroom_shared *h,
                                     const aoai_dir_conf *conf, int kind,
                                     const aoai_learn_figure *f,
                                     apr_int64_t floor, apr_time_t now)
{
    apr_int64_t previous = read_signed(&h->reported), pending;
    apr_time_t previous_sent = read_signed(&h->reported_sent);

    note_capacity(h, f);
    set_signed(&h->reported, f->remaining);
    set_signed(&h->reported_sent, f->sent);
    if (previous < 0) {
        /* The first figure since nothing was known opens a window. */
        set_signed(&h->window_start, f->sent);
        set_signed(&h->estimate, f->remaining);
        note_reset(h, f, now);
        return AOAI_FALLBACK_NONE;
    }
    if (f->sent < read_signed(&h->window_start)) {
        /* It answers a call of the window before: its figure is old. */
        return AOAI_FALLBACK_NONE;
    }
    apr_atomic_add64(&h->in_flight, (apr_uint64_t)-f->cost);
    note_reset(h, f, now);
    pending = (apr_int64_t)apr_atomic_xchg64(&h->before_refill,
                                            (apr_uint64_t)-1);
    if (pending >= 0) {
        /* The probe, or the first call of a refilled window, is answered:
         * the next member that runs out may be probed at once. */
        apr_atomic_set64(&h->probe_at, 0);
    }
    if (pending >= 0 && f->remaining <= pending
        && pending - f->cost + 1 <= floor) {
        /* The window was over (or the member took a call it had no room
         * for), yet the figure did not go up: it means nothing. */
        aoai_learn_fall_back(h, conf, kind, AOAI_FALLBACK_NO_REFILL, now);
        return AOAI_FALLBACK_NO_REFILL;
    }
    if (pending >= 0 && f->sent == read_signed(&h->window_start)) {
        /* The call that opened the window the model refilled: what the
         * member says is left after it is the truth, and replaces what
         * the model assumed (a full window less the call's estimate),
         * less the calls sent since. */
        apr_atomic_add64(&h->estimate, (apr_uint64_t)(f->remaining
                         - (read_signed(&h->full) - f->cost)));
        return AOAI_FALLBACK_NONE;
    }
    if (went_back_up(h, f, previous, previous_sent)) {
        /* A window began before the one the model had ended. */
        apr_atomic_cas32(&h->anchored, AOAI_ANCHOR_CLOCK, AOAI_ANCHOR_TESTING);
        new_window_seen(h, conf, kind, f);
        return AOAI_FALLBACK_NONE;
    }
    follow_figure(h, f->remaining, previous);
    return AOAI_FALLBACK_NONE;
}

/* A window the model took as over was not, although it lasted as long
 * as the last window did from its first call: the windows do not start at
 * a first call (where the learned length is never too short) but are
 * fixed to the clock.  Two ends the member named one window apart give
 * the length; from now on each window starts where the last one ended. */
static void learn_anchor(aoai_headroom_shared *h, apr_time_t end,
                         apr_interval_time_t seen)
{
    apr_time_t last = read_signed(&h->exact_end);
    apr_interval_time_t length = read_signed(&h->length);

    if (seen > length) {
        length = seen;
    }

    if (last > 0 && end > last && end - last <= length + length / 2) {
        raise_to(&h->length, end - last);
        apr_atomic_set32(&h->anchored, 1);
    }
}

int aoai_learn_note_429(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                        int kind, apr_time_t end, apr_time_t now)
{
    apr_int64_t pending = (apr_int64_t)apr_atomic_xchg64(&h->before_refill,
                                                         (apr_uint64_t)-1);
    /* What the model expected, not the 429's own figures (0, or tokens
     * still left, as Azure sends): the estimate, this call's cost taken
     * off already, went below nothing. */
    int ran_out = read_signed(&h->estimate) < 0;
    /* The model refilled the member and nothing since said otherwise:
     * the window it took as over was not, and is longer than learned. */
    int refilled_early = !ran_out && pending >= 0;
    apr_time_t start = read_signed(refilled_early ? &h->previous_start
                                                  : &h->window_start);

    if (pending >= 0) {
        apr_atomic_set64(&h->probe_at, 0);
    }
    /* The call sent where a window fixed to the clock would have begun
     * found the member still full: its windows start at a first call. */
    apr_atomic_cas32(&h->anchored, AOAI_ANCHOR_FIRST_CALL, AOAI_ANCHOR_TESTING);
    if (!ran_out && !refilled_early) {
        return 0;
    }
    if (!overridden(conf, kind) && start > 0 && end > start && start <= now) {
        if (refilled_early) {
            learn_anchor(h, end, end - start);
        }
        raise_to(&h->length, end - start);
    }
    set_signed(&h->exact_end, end);
    set_signed(&h->window_end, end);
    set_signed(&h->estimate, 0);
    apr_atomic_set32(&h->learned_from, AOAI_LEARNED_429);
    return 1;
}

const char *aoai_learn_source_name(int learned_from)
{
    switch (learned_from) {
    case AOAI_LEARNED_429:          return "429";
    case AOAI_LEARNED_RESET_HEADER: return "reset-header";
    case AOAI_LEARNED_FIGURES:      return "figures";
    case AOAI_LEARNED_LENGTH:       return "length";
    default:                        return NULL;
    }
}

const char *aoai_learn_fallback_name(int fallback)
{
    switch (fallback) {
    case AOAI_FALLBACK_429_WITH_ROOM: return "429-while-figures-said-room";
    case AOAI_FALLBACK_NO_REFILL:     return "figures-did-not-go-back-up";
    default:                          return NULL;
    }
}
