/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Headroom: what a member says it has left.
 *
 * A 429 is the only signal stock gateways act on, so each throttle window
 * costs at least one failed call.  Azure OpenAI says how close a deployment
 * is to its limit on every answer: x-ratelimit-remaining-requests and
 * x-ratelimit-remaining-tokens.  Each member's last figures live in its
 * shared slot; the lbmethod passes over a member whose figure is below
 * AOAIHeadroomFloor while another member has more, and takes what it sends
 * off the figure at once, so that calls in flight count before the member
 * has answered them.
 *
 * A figure is only good for the quota window it was given in.  Azure sends
 * no reset time with it, so a window is taken to start with the first
 * figure after the previous one ended, and to last AOAIHeadroomWindow
 * (Azure enforces requests per 10 s, tokens per minute).  After that the
 * figure is stale and the member a candidate again, and its next answer
 * opens the next window.  Inside a window the estimate only goes down: an
 * answer's figure replaces it only when lower, because answers overtake
 * each other, and a figure from a call answered early does not count the
 * calls sent since.
 */

#include "aoai_headroom.h"
#include "aoai_ratelimit.h"

#include "apr_atomic.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include <errno.h>

static const char *const remaining_header[AOAI_HEADROOM_KINDS] = {
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"
};
static const char *const limit_header[AOAI_HEADROOM_KINDS] = {
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"
};


int aoai_headroom_enabled(const aoai_dir_conf *conf)
{
    return !conf->headroom_floor[AOAI_HEADROOM_REQUESTS].off
           || !conf->headroom_floor[AOAI_HEADROOM_TOKENS].off;
}

/* An answer came from the member: its figures replace the estimate. */
void aoai_headroom_note(request_rec *r, aoai_member_slot *slot,
                        const aoai_dir_conf *conf, apr_time_t now)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    int kind;

    if (!headroom) {
        return;
    }
    for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
        aoai_headroom_shared *h = &headroom[kind];
        apr_int64_t figure, limit, previous;
        apr_uint64_t window_start;

        if (!aoai_ratelimit_figure(apr_table_get(r->headers_out,
                                        remaining_header[kind]), &figure)) {
            continue;
        }
        previous = (apr_int64_t)apr_atomic_read64(&h->reported);
        window_start = apr_atomic_read64(&h->window_start);
        apr_atomic_set64(&h->reported, (apr_uint64_t)figure);
        if (previous < 0
            || now >= (apr_time_t)window_start + conf->headroom_window[kind]) {
            /* One call opens the window; others racing it join it. */
            if (apr_atomic_cas64(&h->window_start, (apr_uint64_t)now,
                                 window_start) == window_start) {
                apr_atomic_set64(&h->estimate, (apr_uint64_t)figure);
            }
        }
        else {
            for (;;) {
                apr_uint64_t estimate = apr_atomic_read64(&h->estimate);
                if ((apr_int64_t)estimate <= figure
                    || apr_atomic_cas64(&h->estimate, (apr_uint64_t)figure,
                                        estimate) == estimate) {
                    break;
                }
            }
        }
        if (!aoai_ratelimit_figure(apr_table_get(r->headers_out, limit_header[kind]),
                          &limit)) {
            limit = figure;
        }
        if ((apr_uint64_t)limit > apr_atomic_read64(&h->limit)) {
            apr_atomic_set64(&h->limit, (apr_uint64_t)limit);
        }
    }
}

/* A throttle window was opened: until a member answers again, nothing is
 * known of its headroom. */
void aoai_headroom_forget(aoai_member_slot *slot)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    int kind;

    for (kind = 0; headroom && kind < AOAI_HEADROOM_KINDS; kind++) {
        apr_atomic_set64(&headroom[kind].reported, (apr_uint64_t)-1);
    }
}

static int floor_of(const aoai_dir_conf *conf, aoai_headroom_shared *h,
                    int kind, apr_int64_t *floor)
{
    const aoai_headroom_floor *f = &conf->headroom_floor[kind];

    if (f->off) {
        return 0;
    }
    *floor = f->percent
             ? (apr_int64_t)apr_atomic_read64(&h->limit) * f->value / 100
             : f->value;
    return 1;
}

/* Whether a figure of this kind can be steered by: seen, and from the
 * member's current quota window. */
static int is_fresh(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                    int kind, apr_time_t now)
{
    return (apr_int64_t)apr_atomic_read64(&h->reported) >= 0
           && now < (apr_time_t)apr_atomic_read64(&h->window_start)
                    + conf->headroom_window[kind];
}

static apr_int64_t cost(int kind, apr_int64_t token_estimate)
{
    return kind == AOAI_HEADROOM_REQUESTS ? 1 : token_estimate;
}

int aoai_headroom_is_low(aoai_member_slot *slot, const aoai_dir_conf *conf,
                         apr_int64_t token_estimate, apr_time_t now)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    int kind;

    if (!headroom) {
        return 0;
    }
    for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
        aoai_headroom_shared *h = &headroom[kind];
        apr_int64_t floor;

        if (floor_of(conf, h, kind, &floor) && is_fresh(h, conf, kind, now)
            && (apr_int64_t)apr_atomic_read64(&h->estimate)
               - cost(kind, token_estimate) + 1 <= floor) {
            return 1;
        }
    }
    return 0;
}

/* The pick is going to this member: what the call will use comes off its
 * figures now.  With only_above_floor, nothing is taken and 0 is returned
 * when another call got there first and the member is now below its
 * floor, so that two calls racing for its last request do not both go. */
int aoai_headroom_take(aoai_member_slot *slot, const aoai_dir_conf *conf,
                       apr_int64_t token_estimate, apr_time_t now,
                       int only_above_floor)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    apr_int64_t taken[AOAI_HEADROOM_KINDS] = { 0, 0 };
    int kind;

    if (!headroom) {
        return 1;
    }
    for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
        aoai_headroom_shared *h = &headroom[kind];
        apr_int64_t floor, need = cost(kind, token_estimate);
        int checked = floor_of(conf, h, kind, &floor)
                      && is_fresh(h, conf, kind, now);

        if (!checked || !need) {
            continue;
        }
        for (;;) {
            apr_uint64_t seen = apr_atomic_read64(&h->estimate);
            if (only_above_floor && (apr_int64_t)seen - need + 1 <= floor) {
                /* Give back what the other kind took. */
                while (kind-- > 0) {
                    apr_atomic_add64(&headroom[kind].estimate,
                                     (apr_uint64_t)taken[kind]);
                }
                return 0;
            }
            if (apr_atomic_cas64(&h->estimate, seen - (apr_uint64_t)need,
                                 seen) == seen) {
                taken[kind] = need;
                break;
            }
        }
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* AOAIHeadroomFloor, AOAIHeadroomWindow                                */

static int headroom_kind(const char *word)
{
    if (!ap_cstr_casecmp(word, "requests")) {
        return AOAI_HEADROOM_REQUESTS;
    }
    if (!ap_cstr_casecmp(word, "tokens")) {
        return AOAI_HEADROOM_TOKENS;
    }
    return -1;
}

const char *aoai_headroom_set_floor(cmd_parms *cmd, void *dconf,
                                    const char *which, const char *value)
{
    aoai_dir_conf *conf = dconf;
    int kind = headroom_kind(which);
    aoai_headroom_floor floor = { 0, 0, 0 };
    char *end;

    if (kind < 0) {
        return apr_psprintf(cmd->pool, "AOAIHeadroomFloor: '%s' is neither "
                            "'requests' nor 'tokens'", which);
    }
    if (!ap_cstr_casecmp(value, "off")) {
        floor.off = 1;
    }
    else {
        errno = 0;
        floor.value = apr_strtoi64(value, &end, 10);
        floor.percent = (*end == '%');
        if (!apr_isdigit(*value) || *(end + floor.percent) || errno == ERANGE
            || floor.value > APR_INT64_C(1000000000000)
            || (floor.percent && floor.value > 100)) {
            return apr_psprintf(cmd->pool, "AOAIHeadroomFloor %s: '%s' is "
                                "not a number of %s, a percentage (0%%-100%%) "
                                "of the member's limit, or off", which, value,
                                which);
        }
    }
    conf->headroom_floor[kind] = floor;
    conf->headroom_floor_set |= 1 << kind;
    return NULL;
}

const char *aoai_headroom_set_window(cmd_parms *cmd, void *dconf,
                                     const char *which, const char *value)
{
    aoai_dir_conf *conf = dconf;
    int kind = headroom_kind(which);
    const char *err;

    if (kind < 0) {
        return apr_psprintf(cmd->pool, "AOAIHeadroomWindow: '%s' is neither "
                            "'requests' nor 'tokens'", which);
    }
    if ((err = aoai_config_duration(cmd, value, &conf->headroom_window[kind]))) {
        return err;
    }
    conf->headroom_window_set |= 1 << kind;
    return NULL;
}
