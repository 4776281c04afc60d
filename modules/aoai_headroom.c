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
#include "aoai_balancers.h"
#include "aoai_learn.h"
#include "aoai_ratelimit.h"
#include "aoai_request.h"
#include "aoai_shared_cache.h"

#include "apr_atomic.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include "http_log.h"

#include <errno.h>

APLOG_USE_MODULE(aoai_balancer);

static const char *const remaining_header[AOAI_HEADROOM_KINDS] = {
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"
};
static const char *const limit_header[AOAI_HEADROOM_KINDS] = {
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"
};
static const char *const reset_header[AOAI_HEADROOM_KINDS] = {
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"
};
static const char *const kind_name[AOAI_HEADROOM_KINDS] = {
    "requests", "tokens"
};


int aoai_headroom_enabled(const aoai_dir_conf *conf)
{
    return !conf->headroom_floor[AOAI_HEADROOM_REQUESTS].off
           || !conf->headroom_floor[AOAI_HEADROOM_TOKENS].off;
}

/* What a call uses of a kind.  A provisioned member's figure is its
 * capacity left in tenths of a percent, which a call's tokens cannot be
 * set against: a call needs some of it left, and its answer says how
 * much it took. */
static apr_int64_t cost(aoai_headroom_shared *h, int kind,
                        apr_int64_t token_estimate)
{
    return kind == AOAI_HEADROOM_REQUESTS || apr_atomic_read32(&h->per_mille)
           ? 1 : token_estimate;
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

static apr_int64_t header_figure(request_rec *r, const char *name)
{
    apr_int64_t figure;

    return aoai_ratelimit_figure(apr_table_get(r->headers_out, name), &figure)
           ? figure : -1;
}

static apr_interval_time_t header_reset(request_rec *r, int kind)
{
    apr_interval_time_t reset;

    return aoai_ratelimit_duration(apr_table_get(r->headers_out,
                                                 reset_header[kind]),
                                   0, &reset) ? reset : -1;
}

/* A provisioned member sends azure-openai-deployment-utilization instead
 * of x-ratelimit-*: what is left of its capacity is its tokens figure. */
static int utilization_left(request_rec *r, aoai_headroom_shared *h,
                            apr_int64_t *left)
{
    apr_int64_t used;

    if (!aoai_ratelimit_utilization(apr_table_get(r->headers_out,
                                    "azure-openai-deployment-utilization"),
                                    &used)) {
        return 0;
    }
    if (!apr_atomic_read32(&h->per_mille)) {
        apr_atomic_set32(&h->per_mille, 1);
    }
    *left = 1000 - used;
    return 1;
}

/* An answer came from the member: its figures feed the estimate and what
 * is learned of its windows. */
void aoai_headroom_note(request_rec *r, aoai_member_slot *slot,
                        const aoai_dir_conf *conf, apr_time_t now)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    aoai_call *call = aoai_request_call(r);
    int kind;

    if (call) {
        /* The member took the call: another gateway's may go. */
        aoai_shared_cache_release_last(r, call->balancer,
                                       call->attempt.worker);
    }
    for (kind = 0; headroom && kind < AOAI_HEADROOM_KINDS; kind++) {
        aoai_learn_figure f;
        apr_int64_t floor = 0;

        f.remaining = header_figure(r, remaining_header[kind]);
        f.limit = header_figure(r, limit_header[kind]);
        if (f.remaining < 0 && kind == AOAI_HEADROOM_TOKENS
            && utilization_left(r, &headroom[kind], &f.remaining)) {
            f.limit = 1000;
        }
        if (f.remaining < 0) {
            continue;
        }
        if (aoai_learn_relearn(&headroom[kind], now)) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, AOAI_LOGNO(102)
                          "%s: member %s's %s windows are learned afresh "
                          "from this answer on",
                          call ? call->balancer->s->name : "-",
                          call ? aoai_balancers_label(call->attempt.worker)
                               : "-", kind_name[kind]);
        }
        f.reset = header_reset(r, kind);
        f.cost = cost(&headroom[kind], kind, call ? call->token_estimate : 0);
        f.sent = r->request_time;
        floor_of(conf, &headroom[kind], kind, &floor);
        if (aoai_learn_note_figure(&headroom[kind], conf, kind, &f, floor,
                                   now) != AOAI_FALLBACK_NONE) {
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, AOAI_LOGNO(100)
                          "%s: member %s's x-ratelimit-remaining-%s did not "
                          "go back up when its window was over: its %s are "
                          "steered by 429s only from now on",
                          call ? call->balancer->s->name : "-",
                          call ? aoai_balancers_label(call->attempt.worker)
                               : "-", kind_name[kind], kind_name[kind]);
        }
    }
}

/* A throttle window was opened.  With the window's exact end (a 429's
 * retry-after-ms), each kind whose figures explain the 429 learns that
 * end; when none does, the figures disagree with the model and fall back.
 * Without it, nothing is known of the member's headroom until it answers
 * again. */
void aoai_headroom_throttled(request_rec *r, aoai_member_slot *slot,
                             const aoai_dir_conf *conf, int exact,
                             apr_time_t end, apr_time_t now)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    aoai_call *call = aoai_request_call(r);
    int kind, modelled = 0, explained = 0;

    for (kind = 0; headroom && kind < AOAI_HEADROOM_KINDS; kind++) {
        aoai_headroom_shared *h = &headroom[kind];
        apr_int64_t floor;

        if (!exact || !floor_of(conf, h, kind, &floor)
            || !aoai_learn_steers(h)) {
            apr_atomic_set64(&h->reported, (apr_uint64_t)-1);
            continue;
        }
        modelled |= 1 << kind;
        explained |= aoai_learn_note_429(h, conf, kind, end, now) << kind;
    }
    if (!modelled || explained) {
        return;
    }
    for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
        if (modelled & (1 << kind)) {
            aoai_learn_fall_back(&headroom[kind], conf, kind,
                                 AOAI_FALLBACK_429_WITH_ROOM, now);
            apr_atomic_set64(&headroom[kind].reported, (apr_uint64_t)-1);
        }
    }
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, AOAI_LOGNO(101)
                  "%s: member %s answered 429 while its figures said it had "
                  "room: it is steered by 429s only from now on",
                  call ? call->balancer->s->name : "-",
                  call ? aoai_balancers_label(call->attempt.worker) : "-");
}

/* Whether this kind would leave the member below its floor: a member
 * that has run out of a window whose end is not known yet is not low for
 * the one call that may go to find out. */
static int kind_is_low(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                       int kind, apr_int64_t need, apr_time_t now)
{
    apr_int64_t floor;

    /* Most members have room: that is one read, so it is asked first
     * (the pick asks it of every member, issue 20). */
    if (!floor_of(conf, h, kind, &floor)
        || (apr_int64_t)apr_atomic_read64(&h->estimate) - need + 1 > floor
        || !aoai_learn_steers(h)
        || now >= aoai_learn_window_end(h, conf, kind)) {
        return 0;
    }
    if (aoai_learn_end_known(h, conf, kind)) {
        return !aoai_learn_anchor_due(h, conf, kind, now);
    }
    return !aoai_learn_probe_free(h, now);
}

int aoai_headroom_is_low(aoai_member_slot *slot, const aoai_dir_conf *conf,
                         apr_int64_t token_estimate, apr_time_t now)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    int kind;

    for (kind = 0; headroom && kind < AOAI_HEADROOM_KINDS; kind++) {
        if (kind_is_low(&headroom[kind], conf, kind,
                        cost(&headroom[kind], kind, token_estimate), now)) {
            return 1;
        }
    }
    return 0;
}

/* Whether this call may go to a member that has run out, to find out
 * where its window ends or whether its windows are fixed to the clock. */
static int claim_probe(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                       int kind, apr_time_t now)
{
    if (!aoai_learn_end_known(h, conf, kind)) {
        return aoai_learn_claim_probe(h, now);
    }
    return aoai_learn_anchor_due(h, conf, kind, now)
           && aoai_learn_claim_anchor_probe(h, now);
}

/* Takes need off one kind's estimate; 0 (nothing taken) when
 * only_above_floor and the member has no room left, unless this call is
 * the one that may probe a window whose end is not known. */
static int take_kind(aoai_headroom_shared *h, const aoai_dir_conf *conf,
                     int kind, apr_int64_t need, apr_int64_t floor,
                     apr_time_t now, int only_above_floor)
{
    for (;;) {
        apr_uint64_t seen = apr_atomic_read64(&h->estimate);
        if (only_above_floor && (apr_int64_t)seen - need + 1 <= floor
            && !claim_probe(h, conf, kind, now)) {
            return 0;
        }
        if (apr_atomic_cas64(&h->estimate, seen - (apr_uint64_t)need,
                             seen) == seen) {
            aoai_learn_sent(h, need);
            return 1;
        }
    }
}

/* The pick is going to this member: a window that is over is refilled,
 * and what the call will use comes off its figures now.  With
 * only_above_floor, nothing is taken and 0 is returned when another call
 * got there first and the member is now below its floor, so that two
 * calls racing for its last request do not both go. */
int aoai_headroom_take(aoai_member_slot *slot, const aoai_dir_conf *conf,
                       apr_int64_t token_estimate, apr_time_t sent,
                       apr_time_t now, int only_above_floor)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    apr_int64_t taken[AOAI_HEADROOM_KINDS] = { 0, 0 };
    int kind;

    for (kind = 0; headroom && kind < AOAI_HEADROOM_KINDS; kind++) {
        aoai_headroom_shared *h = &headroom[kind];
        apr_int64_t floor, need = cost(h, kind, token_estimate);

        if (!floor_of(conf, h, kind, &floor) || !aoai_learn_steers(h)
            || !need) {
            continue;
        }
        aoai_learn_refill(h, conf, kind, sent, now);
        if (!take_kind(h, conf, kind, need, floor, now, only_above_floor)) {
            /* Give back what the other kind took. */
            while (kind-- > 0) {
                apr_atomic_add64(&headroom[kind].estimate,
                                 (apr_uint64_t)taken[kind]);
                aoai_learn_sent(&headroom[kind], -taken[kind]);
            }
            return 0;
        }
        taken[kind] = need;
    }
    return 1;
}

/* Whether the member is near the end of what it has left, whether or not
 * headroom steers: its requests within a tenth of its window (at least
 * 2, for another gateway's call in flight), or its tokens within this
 * call's estimate.  The pick then asks the shared cache whether another
 * gateway has seen it answer 429. */
int aoai_headroom_near_end(aoai_member_slot *slot, apr_int64_t token_estimate)
{
    aoai_headroom_shared *headroom = aoai_table_headroom(slot);
    int kind;

    for (kind = 0; headroom && kind < AOAI_HEADROOM_KINDS; kind++) {
        aoai_headroom_shared *h = &headroom[kind];
        apr_int64_t need = cost(h, kind, token_estimate);
        apr_int64_t margin = kind == AOAI_HEADROOM_TOKENS ? need
            : (apr_int64_t)apr_atomic_read64(&h->full) / 10;

        if ((apr_int64_t)apr_atomic_read64(&h->reported) >= 0
            && (apr_int64_t)apr_atomic_read64(&h->estimate) - need
               < (margin > 2 ? margin : 2)) {
            return 1;
        }
    }
    return 0;
}

const char *aoai_headroom_kind_name(int kind)
{
    return kind_name[kind];
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
