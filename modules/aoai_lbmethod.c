/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * lbmethod=aoai: priority first, quota windows respected.
 *
 * Priority is the member's lbset, the number the BalancerManager already
 * lets an admin edit live: ap_proxy_balancer_get_best_worker() walks lbsets
 * from 0 upwards and only looks at a higher one when no member of a lower
 * one is usable, which is the APIM policy's "lower priority number first".
 * Inside one lbset the weighting is byrequests' (lbfactor, lbstatus), so
 * two members of equal priority share the load deterministically.
 *
 * On top of that, a member is not "best" while it sits inside a throttle
 * window, nor when the current request already tried it: that is what turns
 * a 429 into a move to the next member instead of a second 429.
 *
 * The walk is stock's (ap_proxy_balancer_get_best_worker) in every rule:
 * lbsets in order, drained, disabled and errored members passed by, hot
 * spares standing in for members that cannot serve, hot standbys when no
 * other member of the lbset can.  It is written out here for one reason:
 * to the stock walk a member "cannot serve" only when it is marked
 * PROXY_WORKER_IN_ERROR, and mod_proxy reads that mark as "drop every
 * connection to it", including those of calls already on their way there
 * (AH00940 "disabled connection", AH01114, a failed attempt for each).  A
 * throttled member must stay usable for calls in flight while no new call
 * goes to it, so here a member this call cannot use counts as unusable for
 * the walk's spares without any flag being set on it.
 *
 * Headroom (aoai_headroom.c): a member whose remaining requests or tokens
 * would fall below AOAIHeadroomFloor with this call is passed over as long
 * as another member has room; when none has, the walk runs again without
 * that rule, so headroom never refuses work a member might still take.
 * The winner's figures are taken down at once, by compare-and-swap, so
 * that two calls racing for a member's last request do not both get it.
 *
 * A call for a deployment (aoai_deployments.c) only sees the members that
 * serve it.
 */

#include "aoai_lbmethod.h"
#include "aoai_balancers.h"
#include "aoai_deployments.h"
#include "aoai_headroom.h"
#include "aoai_shared_cache.h"
#include "aoai_table.h"
#include "aoai_throttle.h"

#include "apr_time.h"
#include "http_log.h"

APLOG_USE_MODULE(aoai_balancer);


static APR_OPTIONAL_FN_TYPE(ap_proxy_retry_worker) *retry_worker_fn = NULL;

typedef struct {
    proxy_balancer *balancer;
    request_rec *r;
    aoai_call *call;             /* NULL when the module's handler is not
                                  * driving the request */
    unsigned char *parked;       /* by worker->s->index: in a window now */
    unsigned char *low;          /* by worker->s->index: low headroom */
    unsigned char *claimed;      /* by worker->s->index: another gateway's
                                  * call is on its way to its last room */
    int any_claimed;
    int ignore_claims;           /* every member left was claimed */
    int slots;
    int avoid_low;               /* this walk passes over low members */
    int passed_over;             /* low members this walk passed over */
    apr_time_t now;
} aoai_pick;

static int already_in(const apr_array_header_t *workers, proxy_worker *worker)
{
    int i;
    for (i = 0; i < workers->nelts; i++) {
        if (APR_ARRAY_IDX(workers, i, proxy_worker *) == worker) {
            return 1;
        }
    }
    return 0;
}

static void note_skipped(aoai_call *call, proxy_worker *worker)
{
    if (!already_in(call->picks.skipped_throttled, worker)) {
        APR_ARRAY_PUSH(call->picks.skipped_throttled, proxy_worker *)
            = worker;
    }
}

static int has_slot(const aoai_pick *pick, const proxy_worker *worker)
{
    return worker->s->index >= 0 && worker->s->index < pick->slots;
}

/* One read of every member's window and headroom per pick. */
static void read_windows(aoai_pick *pick, apr_pool_t *pool)
{
    proxy_balancer *balancer = pick->balancer;
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int i;

    pick->slots = aoai_balancers_slots(balancer);
    pick->parked = apr_pcalloc(pool, pick->slots);
    pick->low = apr_pcalloc(pool, pick->slots);
    pick->claimed = apr_pcalloc(pool, pick->slots);
    pick->avoid_low = pick->call && aoai_headroom_enabled(pick->call->conf);
    for (i = 0; i < balancer->workers->nelts; i++) {
        proxy_worker *worker = workers[i];
        aoai_member_slot *slot = aoai_table_member(balancer, worker);

        if (!has_slot(pick, worker)) {
            continue;
        }
        if (pick->avoid_low) {
            pick->low[worker->s->index] = (unsigned char)aoai_headroom_is_low(
                slot, pick->call->conf, pick->call->token_estimate,
                pick->now);
        }
        if (pick->now < aoai_table_window_end(slot)) {
            pick->parked[worker->s->index] = 1;
            /* One this request tried, then saw throttled, was not
             * skipped. */
            if (pick->call && !already_in(pick->call->picks.tried, worker)) {
                note_skipped(pick->call, worker);
            }
        }
    }
}

/* Whether this call can be sent to a member the walk finds usable. */
static int fits_call(aoai_pick *pick, proxy_worker *worker)
{
    if (pick->call && (already_in(pick->call->picks.tried, worker)
                        || !aoai_deployments_serves(pick->call, worker))) {
        return 0;
    }
    if (has_slot(pick, worker) ? pick->parked[worker->s->index]
        : aoai_throttle_is_on(pick->balancer, worker, pick->now)) {
        return 0;
    }
    if (has_slot(pick, worker) && pick->claimed[worker->s->index]) {
        return 0;
    }
    if (pick->avoid_low && has_slot(pick, worker)
        && pick->low[worker->s->index]) {
        pick->passed_over++;
        return 0;
    }
    return 1;
}

/* byrequests' weighting: the member that has waited longest for its share
 * of calls, by lbfactor, wins. */
static proxy_worker *weigh(apr_array_header_t *candidates)
{
    proxy_worker *best = NULL;
    int i, total = 0;

    for (i = 0; i < candidates->nelts; i++) {
        proxy_worker *worker = APR_ARRAY_IDX(candidates, i, proxy_worker *);
        worker->s->lbstatus += worker->s->lbfactor;
        total += worker->s->lbfactor;
        if (!best || worker->s->lbstatus > best->s->lbstatus) {
            best = worker;
        }
    }
    if (best) {
        best->s->lbstatus -= total;
    }
    return best;
}

/* One lbset, as the stock walk treats it; NULL when none of its members
 * can take the call. */
static proxy_worker *walk_lbset(aoai_pick *pick, int lbset,
                                apr_array_header_t *members,
                                apr_array_header_t *spares,
                                apr_array_header_t *standbys)
{
    proxy_worker **workers = (proxy_worker **)pick->balancer->workers->elts;
    int i, unusable = 0;

    apr_array_clear(members);
    apr_array_clear(spares);
    apr_array_clear(standbys);
    for (i = 0; i < pick->balancer->workers->nelts; i++) {
        proxy_worker *worker = workers[i];
        int spare = PROXY_WORKER_IS_SPARE(worker);
        int standby = PROXY_WORKER_IS_STANDBY(worker);

        if (worker->s->lbset != lbset) {
            continue;
        }
        if (PROXY_WORKER_IS_DRAINING(worker)) {
            unusable += !spare && !standby;
            continue;
        }
        if (!PROXY_WORKER_IS_USABLE(worker)) {
            retry_worker_fn("BALANCER", worker, pick->r->server);
        }
        if (!PROXY_WORKER_IS_USABLE(worker) || !fits_call(pick, worker)) {
            unusable += !spare && !standby;
            continue;
        }
        APR_ARRAY_PUSH(spare ? spares : standby ? standbys : members,
                       proxy_worker *) = worker;
    }
    /* Spares stand in for as many members as cannot serve. */
    for (i = 0; i < spares->nelts && i < unusable; i++) {
        APR_ARRAY_PUSH(members, proxy_worker *)
            = APR_ARRAY_IDX(spares, i, proxy_worker *);
    }
    return members->nelts ? weigh(members) : weigh(standbys);
}

static proxy_worker *walk(aoai_pick *pick, apr_pool_t *pool)
{
    proxy_worker **workers = (proxy_worker **)pick->balancer->workers->elts;
    apr_array_header_t *members = apr_array_make(pool, 4,
                                                 sizeof(proxy_worker *));
    apr_array_header_t *spares = apr_array_make(pool, 1,
                                                sizeof(proxy_worker *));
    apr_array_header_t *standbys = apr_array_make(pool, 1,
                                                  sizeof(proxy_worker *));
    proxy_worker *best = NULL;
    int i, lbset, max_lbset = 0;

    for (i = 0; i < pick->balancer->workers->nelts; i++) {
        if (workers[i]->s->lbset > max_lbset) {
            max_lbset = workers[i]->s->lbset;
        }
    }
    for (lbset = 0; !best && lbset <= max_lbset; lbset++) {
        best = walk_lbset(pick, lbset, members, spares, standbys);
    }
    return best;
}

/* A member near the end of what it has left may have answered another
 * gateway's last call with a 429 since the shared cache's last sync, or
 * be about to: the cache is asked now (aoai_shared_cache.c), and only
 * then, so that a call to a member with room never waits on it.  1 when
 * the member was passed over for that. */
static int passed_for_cache(aoai_pick *pick, proxy_worker *worker)
{
    aoai_member_slot *slot = aoai_table_member(pick->balancer, worker);

    if (!pick->call || !has_slot(pick, worker)
        || !aoai_headroom_near_end(slot, pick->call->token_estimate)) {
        return 0;
    }
    if (aoai_shared_cache_window(pick->r, pick->balancer, worker,
                                 pick->call->conf->throttle_max, pick->now)) {
        pick->parked[worker->s->index] = 1;
        note_skipped(pick->call, worker);
        return 1;
    }
    if (!pick->ignore_claims
        && !aoai_shared_cache_claim_last(pick->r, pick->balancer, worker,
                                         pick->now)) {
        pick->claimed[worker->s->index] = 1;
        pick->any_claimed = 1;
        return 1;
    }
    return 0;
}

static proxy_worker *find_best_aoai(proxy_balancer *balancer, request_rec *r)
{
    aoai_pick pick;
    proxy_worker *worker;

    pick.balancer = balancer;
    pick.r = r;
    pick.call = aoai_request_call(r);
    pick.now = apr_time_now();
    pick.any_claimed = pick.ignore_claims = 0;
    read_windows(&pick, r->pool);

    for (;;) {
        pick.passed_over = 0;
        worker = walk(&pick, r->pool);
        if (!worker) {
            if (pick.any_claimed && !pick.ignore_claims) {
                /* Claims only order gateways; they never refuse a call. */
                memset(pick.claimed, 0, pick.slots);
                pick.ignore_claims = 1;
                continue;
            }
            if (!pick.avoid_low) {
                return NULL;
            }
            /* Every member that could serve is low: by priority, then. */
            pick.avoid_low = 0;
            continue;
        }
        if (passed_for_cache(&pick, worker)) {
            continue;
        }
        if (!pick.call || !aoai_headroom_enabled(pick.call->conf)) {
            return worker;
        }
        if (aoai_headroom_take(aoai_table_member(balancer, worker),
                               pick.call->conf, pick.call->token_estimate,
                               r->request_time, pick.now, pick.avoid_low)) {
            pick.call->picks.headroom_passed_over = pick.passed_over;
            return worker;
        }
        /* Another call took its last room since read_windows(). */
        if (!has_slot(&pick, worker)) {
            return worker;
        }
        pick.low[worker->s->index] = 1;
    }
}

/* Whether a member could still be picked for this request: the module's
 * handler asks before each attempt, so that "everyone is throttled" becomes
 * the module's 429 rather than mod_proxy_balancer's "All workers are in
 * error state" in the error log on every request. */
int aoai_lbmethod_is_candidate(proxy_worker *worker, aoai_call *call,
                               apr_time_t now)
{
    if (worker->s->status & (PROXY_WORKER_DISABLED | PROXY_WORKER_STOPPED
                             | PROXY_WORKER_IN_SHUTDOWN
                             | PROXY_WORKER_HC_FAIL)) {
        return 0;
    }
    if (PROXY_WORKER_IS_DRAINING(worker)) {
        return 0;
    }
    if (already_in(call->picks.tried, worker)
        || !aoai_deployments_serves(call, worker)) {
        return 0;
    }
    if (aoai_throttle_is_on(call->balancer, worker, now)) {
        note_skipped(call, worker);
        return 0;
    }
    /* In error (refused, failed handshake) until its retry= is up. */
    if ((worker->s->status & PROXY_WORKER_IN_ERROR)
        && !(worker->s->status & PROXY_WORKER_IGNORE_ERRORS)
        && now <= worker->s->error_time + worker->s->retry) {
        return 0;
    }
    return 1;
}

/* Whether any member could still be picked for this request.  When none
 * can, every throttled one has been noted as skipped. */
int aoai_lbmethod_any_candidate(aoai_call *call, apr_time_t now)
{
    proxy_balancer *balancer = call->balancer;
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int i;

    for (i = 0; i < balancer->workers->nelts; i++) {
        if (aoai_lbmethod_is_candidate(workers[i], call, now)) {
            return 1;
        }
    }
    return 0;
}

static apr_status_t reset(proxy_balancer *balancer, server_rec *s)
{
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int i;

    (void)s;
    for (i = 0; i < balancer->workers->nelts; i++) {
        workers[i]->s->lbstatus = 0;
    }
    return APR_SUCCESS;
}

static apr_status_t age(proxy_balancer *balancer, server_rec *s)
{
    (void)balancer;
    (void)s;
    return APR_SUCCESS;
}

int aoai_lbmethod_post_config(server_rec *s)
{
    retry_worker_fn = APR_RETRIEVE_OPTIONAL_FN(ap_proxy_retry_worker);
    if (!retry_worker_fn) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, AOAI_LOGNO(010)
                     "mod_proxy must be loaded for lbmethod="
                     AOAI_LBMETHOD_NAME);
        return !OK;
    }
    return OK;
}

const proxy_balancer_method aoai_lbmethod =
{
    AOAI_LBMETHOD_NAME,
    &find_best_aoai,
    NULL,
    &reset,
    &age,
    NULL
};
