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
 * a 429 into a move to the next member instead of a second 429.  Draining,
 * disabled, hot-spare and hot-standby members keep their stock meaning
 * because the walk itself is stock.
 *
 * Each pick reads every member's window once, before the walk: a parked
 * member is marked in error for the balancer-manager page (aoai_status.c),
 * which also keeps the stock walk from offering it, so the request notes
 * it as skipped there rather than in is_best_aoai().
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

#include "aoai_balancer.h"

#include "apr_time.h"
#include "http_log.h"

APLOG_USE_MODULE(aoai_balancer);


static APR_OPTIONAL_FN_TYPE(proxy_balancer_get_best_worker)
                            *get_best_worker_fn = NULL;

typedef struct {
    proxy_balancer *balancer;
    aoai_request_state *state;   /* NULL when the module's handler is not
                                  * driving the request */
    unsigned char *parked;       /* by worker->s->index: in a window now */
    unsigned char *low;          /* by worker->s->index: low headroom */
    int parked_size;
    int avoid_low;               /* this walk passes over low members */
    int passed_over;             /* low members this walk passed over */
    apr_time_t now;
    int total_factor;
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

static void note_skipped(aoai_request_state *state, proxy_worker *worker)
{
    if (!already_in(state->skipped_throttled, worker)) {
        APR_ARRAY_PUSH(state->skipped_throttled, proxy_worker *) = worker;
    }
}

/* One read of every member's window per pick.  A parked member is marked
 * for the balancer-manager page here, which also takes it out of the stock
 * walk (it is in error until its window ends); the walk would never show it
 * to is_best_aoai, so the request notes it as skipped here too. */
static void read_windows(aoai_pick *pick, apr_pool_t *pool)
{
    apr_time_t now = pick->now;
    proxy_balancer *balancer = pick->balancer;
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int i;

    pick->parked_size = balancer->max_workers > balancer->workers->nelts
                        ? balancer->max_workers : balancer->workers->nelts;
    pick->parked = apr_pcalloc(pool, pick->parked_size);
    pick->low = apr_pcalloc(pool, pick->parked_size);
    pick->avoid_low = pick->state && aoai_headroom_enabled(pick->state->conf);
    for (i = 0; i < balancer->workers->nelts; i++) {
        proxy_worker *worker = workers[i];
        aoai_member_slot *slot = aoai_throttle_slot(balancer, worker);

        if (pick->avoid_low && worker->s->index >= 0
            && worker->s->index < pick->parked_size) {
            pick->low[worker->s->index] = (unsigned char)aoai_headroom_is_low(
                slot, pick->state->conf, pick->state->token_estimate, now);
        }

        if (now < aoai_throttle_until(slot)) {
            if (worker->s->index >= 0
                && worker->s->index < pick->parked_size) {
                pick->parked[worker->s->index] = 1;
            }
            /* One this request tried, then saw throttled, was not
             * skipped. */
            if (pick->state && !already_in(pick->state->tried, worker)) {
                note_skipped(pick->state, worker);
            }
            aoai_member_mark(worker, slot, now);
        }
    }
}

static int is_parked(aoai_pick *pick, proxy_worker *worker)
{
    if (worker->s->index >= 0 && worker->s->index < pick->parked_size) {
        return pick->parked[worker->s->index];
    }
    return aoai_member_is_throttled(pick->balancer, worker, pick->now);
}

static int is_low(aoai_pick *pick, proxy_worker *worker)
{
    return worker->s->index >= 0 && worker->s->index < pick->parked_size
           && pick->low[worker->s->index];
}

static int is_best_aoai(proxy_worker *current, proxy_worker *prev_best,
                        void *baton)
{
    aoai_pick *pick = baton;

    if (pick->state && (already_in(pick->state->tried, current)
                        || !aoai_member_serves(pick->state, current))) {
        return 0;
    }
    /* Members that ignore errors are never marked, so the walk offers
     * them even inside their window. */
    if (is_parked(pick, current)) {
        return 0;
    }
    if (pick->avoid_low && is_low(pick, current)) {
        pick->passed_over++;
        return 0;
    }

    current->s->lbstatus += current->s->lbfactor;
    pick->total_factor += current->s->lbfactor;

    return !prev_best || current->s->lbstatus > prev_best->s->lbstatus;
}

static proxy_worker *find_best_aoai(proxy_balancer *balancer, request_rec *r)
{
    aoai_pick pick;
    proxy_worker *worker;

    pick.balancer = balancer;
    pick.state = aoai_request_state_get(r);
    pick.now = apr_time_now();
    pick.total_factor = 0;
    read_windows(&pick, r->pool);

    for (;;) {
        pick.passed_over = 0;
        worker = get_best_worker_fn(balancer, r, is_best_aoai, &pick);
        if (!worker) {
            if (!pick.avoid_low) {
                return NULL;
            }
            /* Every member that could serve is low: by priority, then. */
            pick.avoid_low = 0;
            continue;
        }
        worker->s->lbstatus -= pick.total_factor;
        pick.total_factor = 0;
        if (!pick.state || !aoai_headroom_enabled(pick.state->conf)) {
            return worker;
        }
        if (aoai_headroom_take(aoai_throttle_slot(balancer, worker),
                               pick.state->conf, pick.state->token_estimate,
                               pick.now, pick.avoid_low)) {
            pick.state->headroom_passed_over = pick.passed_over;
            return worker;
        }
        /* Another call took its last room since read_windows(). */
        if (worker->s->index < 0 || worker->s->index >= pick.parked_size) {
            return worker;
        }
        pick.low[worker->s->index] = 1;
    }
}

/* Whether a member could still be picked for this request: the module's
 * handler asks before each attempt, so that "everyone is throttled" becomes
 * the module's 429 rather than mod_proxy_balancer's "All workers are in
 * error state" in the error log on every request.  Members in error are
 * left to the stock walk, which knows when their retry time is up. */
int aoai_member_is_candidate(proxy_worker *worker, aoai_request_state *state,
                             apr_time_t now)
{
    if (worker->s->status & (PROXY_WORKER_DISABLED | PROXY_WORKER_STOPPED
                             | PROXY_WORKER_IN_SHUTDOWN)) {
        return 0;
    }
    if (PROXY_WORKER_IS_DRAINING(worker)) {
        return 0;
    }
    if (already_in(state->tried, worker) || !aoai_member_serves(state, worker)) {
        return 0;
    }
    if (aoai_member_is_throttled(state->balancer, worker, now)) {
        note_skipped(state, worker);
        return 0;
    }
    return 1;
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

/* Calls fn for every balancer, of every virtual host, that uses
 * lbmethod=aoai; stops at the first result other than APR_SUCCESS. */
apr_status_t aoai_for_each_balancer(server_rec *s, aoai_balancer_fn *fn,
                                    void *baton)
{
    for (; s; s = s->next) {
        proxy_server_conf *proxy_conf =
            ap_get_module_config(s->module_config, &proxy_module);
        proxy_balancer *balancer = (proxy_balancer *)proxy_conf->balancers->elts;
        int i;

        for (i = 0; i < proxy_conf->balancers->nelts; i++, balancer++) {
            apr_status_t rv;
            if (balancer->lbmethod != &aoai_lbmethod) {
                continue;
            }
            if ((rv = fn(s, balancer, baton)) != APR_SUCCESS) {
                return rv;
            }
        }
    }
    return APR_SUCCESS;
}

int aoai_lbmethod_post_config(server_rec *s)
{
    get_best_worker_fn = APR_RETRIEVE_OPTIONAL_FN(proxy_balancer_get_best_worker);
    if (!get_best_worker_fn) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, APLOGNO(10910)
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
