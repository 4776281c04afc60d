/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * The shared slot table: throttle windows, headroom figures, key quotas and
 * counters in shared memory.
 *
 * Every child process must see a window the moment any child opens it, and
 * a graceful restart must not forget that a member is parked.  So the table
 * is one anonymous shared segment, created by the parent in post_config and
 * retained (ap_retained_data_*) from one generation to the next; children
 * inherit the mapping when they are forked and need no child_init.
 *
 * A member's slot is found by a 64-bit hash of its balancer's and its own
 * name, with linear probing.  Names rather than indexes, because indexes
 * move when the configuration changes and names are what the admin means.
 * Slots are claimed with a compare-and-swap, so a member added at run time
 * (BalancerManager) can claim one from any child without a lock.
 *
 * throttle_until only ever moves forward (apr_atomic_cas64 loop): two
 * children that see 429s with different Retry-After values at once end with
 * the later window, never the earlier one.
 *
 * The same slot carries the member's counters (requests, 429s, failovers,
 * tokens), each a 64-bit word changed only by apr_atomic_add64, so no
 * increment from any child is lost and a reader never sees half a word.
 * A subscription key's tokens on a member get a slot of their own, keyed
 * by balancer, member and label, claimed the first time that key is
 * served there.
 */

#include "aoai_table.h"
#include "aoai_balancers.h"
#include "aoai_window.h"

#include "apr_atomic.h"
#include "apr_hash.h"
#include "apr_shm.h"
#include "apr_strings.h"

#include "http_log.h"


APLOG_USE_MODULE(aoai_balancer);

#define AOAI_TABLE_MAGIC 0x414f4149u    /* "AOAI" */
#define AOAI_SLOT_NAME_SIZE 256
/* The retained table is only reused by a generation whose slots have the
 * same layout: a module upgraded under a graceful restart starts a table
 * of its own rather than read old slots with a new layout. */
#define AOAI_RETAINED_KEY "mod_aoai_balancer-table-%" APR_SIZE_T_FMT

typedef enum {
    AOAI_SLOT_FILLING = 0,  /* claimed, its names not written yet */
    AOAI_SLOT_MEMBER,
    AOAI_SLOT_KEY           /* one subscription key's use of one member */
} aoai_slot_kind;

struct aoai_member_slot {
    volatile apr_uint64_t key;            /* 0 while the slot is free */
    volatile apr_uint64_t throttle_until; /* apr_time_t; raise-only */
    volatile apr_uint32_t garbage_logged; /* 1 after a bad header was logged */
    volatile apr_uint32_t kind;           /* aoai_slot_kind */
    volatile apr_uint64_t member_key;     /* AOAI_SLOT_KEY: its member's key */
    volatile apr_uint64_t last_throttled; /* apr_time_t of the last 429 */
    volatile apr_uint64_t counters[AOAI_COUNTER_COUNT];
    aoai_headroom_shared headroom[AOAI_HEADROOM_KINDS]; /* AOAI_SLOT_MEMBER */
    aoai_quota_shared quota;              /* AOAI_SLOT_KEY of a key's quota */
    volatile apr_uint64_t once[AOAI_ONCE_KINDS]; /* apr_time_t each: last
                                           * logged, aoai_table_once */
    volatile apr_uint64_t unpublished;    /* a window end the shared cache
                                           * did not take; the sync retries */
    char name[AOAI_SLOT_NAME_SIZE];       /* "balancer|member", for people */
    char label[AOAI_LABEL_MAX + 1];       /* AOAI_SLOT_KEY: the key's label */
};

typedef struct {
    apr_uint32_t magic;
    apr_uint32_t slot_count;
    aoai_member_slot slots[1];
} aoai_slot_table;

typedef struct {
    apr_shm_t *shm;
    aoai_slot_table *table;
} aoai_retained;

/* This generation's view: reset with the DSO on every restart, rebuilt in
 * post_config, read-only once children are forked. */
static aoai_slot_table *table;
static apr_hash_t *slot_by_worker;

static apr_uint64_t fnv1a(apr_uint64_t hash, const char *text)
{
    const unsigned char *p;
    for (p = (const unsigned char *)text; *p; p++) {
        hash = (hash ^ *p) * APR_UINT64_C(1099511628211);
    }
    /* and the terminating NUL, so that "ab"+"c" is not "a"+"bc" */
    return hash * APR_UINT64_C(1099511628211);
}

/* FNV-1a, 64 bit, over "balancer\0member\0" and, for a subscription key's
 * slot, "label\0". */
static apr_uint64_t slot_key(const char *balancer_name,
                             const char *member_name, const char *label)
{
    apr_uint64_t hash = fnv1a(APR_UINT64_C(14695981039346656037),
                              balancer_name);
    hash = fnv1a(hash, member_name);
    if (label) {
        hash = fnv1a(hash, label);
    }
    return hash ? hash : 1;
}

static aoai_member_slot *find_slot(aoai_slot_table *t,
                                   const char *balancer_name,
                                   const char *member_name,
                                   const char *label, int claim)
{
    apr_uint64_t key = slot_key(balancer_name, member_name, label);
    apr_uint32_t index = (apr_uint32_t)(key % t->slot_count);
    apr_uint32_t probes;

    for (probes = 0; probes < t->slot_count; probes++) {
        aoai_member_slot *slot = &t->slots[index];
        apr_uint64_t seen = apr_atomic_read64(&slot->key);

        if (seen == key) {
            return slot;
        }
        if (seen == 0) {
            if (!claim) {
                return NULL;
            }
            seen = apr_atomic_cas64(&slot->key, key, 0);
            if (seen == 0) {
                int kind;
                for (kind = 0; kind < AOAI_HEADROOM_KINDS; kind++) {
                    apr_atomic_set64(&slot->headroom[kind].reported,
                                     (apr_uint64_t)-1);
                    apr_atomic_set64(&slot->headroom[kind].before_refill,
                                     (apr_uint64_t)-1);
                }
                apr_snprintf(slot->name, sizeof(slot->name), "%s|%s",
                              balancer_name, member_name);
                if (label) {
                    apr_cpystrn(slot->label, label, sizeof(slot->label));
                    slot->member_key = slot_key(balancer_name, member_name,
                                                NULL);
                }
                /* Readers of the whole table skip a slot until this. */
                apr_atomic_set32(&slot->kind, label ? AOAI_SLOT_KEY
                                                    : AOAI_SLOT_MEMBER);
                return slot;
            }
            if (seen == key) {
                return slot;
            }
        }
        index = (index + 1) % t->slot_count;
    }
    return NULL;
}

static apr_size_t table_size(int slot_count)
{
    return APR_OFFSETOF(aoai_slot_table, slots)
           + (apr_size_t)slot_count * sizeof(aoai_member_slot);
}

static apr_status_t create_table(apr_pool_t *pool, int slot_count,
                                 aoai_retained *retained, server_rec *s)
{
    apr_status_t rv;
    apr_shm_t *shm;
    aoai_slot_table *fresh;

    rv = apr_shm_create(&shm, table_size(slot_count), NULL, pool);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, AOAI_LOGNO(001)
                     "could not create the throttle table (%d slots) in "
                     "anonymous shared memory", slot_count);
        return rv;
    }
    fresh = apr_shm_baseaddr_get(shm);
    memset(fresh, 0, table_size(slot_count));
    fresh->magic = AOAI_TABLE_MAGIC;
    fresh->slot_count = (apr_uint32_t)slot_count;

    if (retained->table) {
        /* Carry every window over: the admin resized the table, the
         * members did not stop being throttled. */
        apr_uint32_t i;
        for (i = 0; i < retained->table->slot_count; i++) {
            const aoai_member_slot *old = &retained->table->slots[i];
            char name[AOAI_SLOT_NAME_SIZE];
            char *bar;
            aoai_member_slot *moved;

            if (!old->key) {
                continue;
            }
            apr_cpystrn(name, old->name, sizeof(name));
            if (!(bar = strchr(name, '|'))) {
                continue;
            }
            *bar = '\0';
            moved = find_slot(fresh, name, bar + 1,
                              old->kind == AOAI_SLOT_KEY ? old->label : NULL,
                              1);
            if (moved) {
                memcpy(moved->headroom, old->headroom, sizeof(moved->headroom));
                moved->quota = old->quota;
                moved->throttle_until = old->throttle_until;
                moved->last_throttled = old->last_throttled;
                memcpy((void *)moved->counters, (const void *)old->counters,
                       sizeof(moved->counters));
            }
        }
        apr_shm_destroy(retained->shm);
    }
    retained->shm = shm;
    retained->table = fresh;
    return APR_SUCCESS;
}

static int count_free(const aoai_slot_table *t)
{
    apr_uint32_t i;
    int free_slots = 0;
    for (i = 0; i < t->slot_count; i++) {
        free_slots += (t->slots[i].key == 0);
    }
    return free_slots;
}

static apr_status_t count_members(server_rec *s, proxy_balancer *balancer,
                                  void *baton)
{
    (void)s;
    *(int *)baton += balancer->workers->nelts + balancer->growth;
    return APR_SUCCESS;
}

static apr_status_t map_members(server_rec *s, proxy_balancer *balancer,
                                void *baton)
{
    apr_pool_t *pconf = baton;
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int j;

    (void)s;
    for (j = 0; j < balancer->workers->nelts; j++) {
        aoai_member_slot *slot = find_slot(table, balancer->s->name,
                                           workers[j]->s->name_ex, NULL, 1);
        apr_hash_set(slot_by_worker, apr_pmemdup(pconf, &workers[j],
                                                 sizeof(workers[j])),
                     sizeof(workers[j]), slot);
        /* The lbmethod looks at every member on every request: keep the
         * slot on the worker ("general purpose storage", unused by stock
         * modules for balancer members), unless another module got there
         * first. */
        if (!workers[j]->context) {
            workers[j]->context = slot;
        }
    }
    return APR_SUCCESS;
}

/* Called in the parent once per generation, after mod_proxy_balancer has
 * set up its balancers.  Maps every member of every "aoai" balancer to its
 * slot, so the request path does a pointer lookup and no hashing. */
apr_status_t aoai_table_post_config(apr_pool_t *pconf, server_rec *s,
                                       int table_slots)
{
    aoai_retained *retained;
    const char *retained_key;
    int members = 0;
    apr_status_t rv;

    retained_key = apr_psprintf(pconf, AOAI_RETAINED_KEY,
                                sizeof(aoai_member_slot));
    retained = ap_retained_data_get(retained_key);
    if (!retained) {
        retained = ap_retained_data_create(retained_key,
                                           sizeof(*retained));
        memset(retained, 0, sizeof(*retained));
    }

    aoai_balancers_each(s, count_members, &members);

    /* A resized table, or one whose free slots the new configuration
     * could exhaust (members removed over many restarts keep theirs). */
    if (!retained->table
        || retained->table->slot_count != (apr_uint32_t)table_slots
        || count_free(retained->table) < members) {
        if (members > table_slots / 2) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, AOAI_LOGNO(002)
                         "AOAIThrottleTableSize %d is too small for the %d "
                         "balancer members (and growth slots) using "
                         "lbmethod=" AOAI_LBMETHOD_NAME "; set it to at "
                         "least %d", table_slots, members, members * 2);
            return APR_ENOSPC;
        }
        rv = create_table(s->process->pool, table_slots, retained, s);
        if (rv != APR_SUCCESS) {
            return rv;
        }
    }
    table = retained->table;
    slot_by_worker = apr_hash_make(pconf);
    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, AOAI_LOGNO(004)
                 "throttle table: %u slots of %" APR_SIZE_T_FMT " bytes, "
                 "%" APR_SIZE_T_FMT " bytes of shared memory, %d configured "
                 "members", table->slot_count, sizeof(aoai_member_slot),
                 table_size(table->slot_count), members);

    return aoai_balancers_each(s, map_members, pconf);
}

aoai_member_slot *aoai_table_member(proxy_balancer *balancer,
                                     proxy_worker *worker)
{
    aoai_member_slot *slot;

    if (!table) {
        return NULL;
    }
    /* Trusted only when it points into this generation's table. */
    if ((apr_uintptr_t)worker->context >= (apr_uintptr_t)table->slots
        && (apr_uintptr_t)worker->context
           < (apr_uintptr_t)(table->slots + table->slot_count)) {
        return worker->context;
    }
    slot = apr_hash_get(slot_by_worker, &worker, sizeof(worker));
    if (!slot) {
        /* Added after start-up, through the BalancerManager. */
        slot = find_slot(table, balancer->s->name, worker->s->name_ex,
                         NULL, 1);
    }
    return slot;
}

apr_time_t aoai_table_window_end(const aoai_member_slot *slot)
{
    return slot ? aoai_window_read(&slot->throttle_until) : 0;
}

/* Returns 1 when this call moved the window's end. */
int aoai_table_raise_window(aoai_member_slot *slot, apr_time_t until)
{
    return slot ? aoai_window_raise(&slot->throttle_until, until) : 0;
}

void aoai_table_count(aoai_member_slot *slot, aoai_counter counter,
                       apr_uint64_t n)
{
    if (slot && n) {
        apr_atomic_add64(&slot->counters[counter], n);
    }
}

/* A 429: counted, and what it asked for kept for the status pages. */
void aoai_table_note_429(aoai_member_slot *slot, apr_time_t now,
                             apr_interval_time_t window)
{
    if (!slot) {
        return;
    }
    apr_atomic_inc64(&slot->counters[AOAI_COUNT_THROTTLED]);
    apr_atomic_set64(&slot->counters[AOAI_COUNT_LAST_WINDOW_MS],
                     (apr_uint64_t)apr_time_as_msec(window));
    apr_atomic_set64(&slot->last_throttled, (apr_uint64_t)now);
}

static void add_served(aoai_member_slot *slot, const aoai_usage *usage)
{
    apr_atomic_inc64(&slot->counters[AOAI_COUNT_SERVED]);
    if (usage) {
        apr_atomic_add64(&slot->counters[AOAI_COUNT_PROMPT_TOKENS],
                         (apr_uint64_t)usage->prompt_tokens);
        apr_atomic_add64(&slot->counters[AOAI_COUNT_COMPLETION_TOKENS],
                         (apr_uint64_t)usage->completion_tokens);
        apr_atomic_add64(&slot->counters[AOAI_COUNT_TOTAL_TOKENS],
                         (apr_uint64_t)usage->total_tokens);
    }
}

/* An answer went to the client: counted on the member and, when keys are
 * checked, on the subscriber's record for that member, with its tokens
 * when the answer's usage could be read. */
void aoai_table_note_served(request_rec *r, proxy_balancer *balancer,
                             proxy_worker *worker, const char *key_label,
                             const aoai_usage *usage)
{
    static int table_full_logged;   /* once per process is plenty */
    aoai_member_slot *slot = aoai_table_member(balancer, worker);
    aoai_member_slot *key_slot;

    if (!slot) {
        return;
    }
    add_served(slot, usage);
    if (!key_label) {
        return;
    }
    key_slot = find_slot(table, balancer->s->name, worker->s->name_ex,
                         key_label, 1);
    if (key_slot) {
        add_served(key_slot, usage);
    }
    else if (!table_full_logged) {
        table_full_logged = 1;
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, AOAI_LOGNO(031)
                      "the shared table has no free slot for subscription "
                      "key %s on member %s: its tokens count on the member "
                      "only; raise AOAIThrottleTableSize", key_label,
                      worker->s->name_ex);
    }
}

static void read_stats(const aoai_member_slot *slot, aoai_member_stats *stats)
{
    int i;

    stats->throttle_until = aoai_window_read(&slot->throttle_until);
    stats->last_throttled = (apr_time_t)apr_atomic_read64(
        (volatile apr_uint64_t *)&slot->last_throttled);
    for (i = 0; i < AOAI_COUNTER_COUNT; i++) {
        stats->counters[i] = apr_atomic_read64(
            (volatile apr_uint64_t *)&slot->counters[i]);
    }
    for (i = 0; i < AOAI_HEADROOM_KINDS; i++) {
        aoai_headroom_shared *h = (aoai_headroom_shared *)&slot->headroom[i];
        int known = (apr_int64_t)apr_atomic_read64(&h->reported) >= 0;

        stats->headroom_remaining[i] = known
            ? (apr_int64_t)apr_atomic_read64(&h->estimate) : -1;
        stats->headroom_limit[i] = (apr_int64_t)apr_atomic_read64(&h->limit);
        stats->headroom_window_start[i] =
            (apr_time_t)apr_atomic_read64(&h->window_start);
        stats->window_end[i] = (apr_time_t)apr_atomic_read64(&h->window_end);
        stats->window_length[i] =
            (apr_interval_time_t)apr_atomic_read64(&h->length);
        stats->window_full[i] = (apr_int64_t)apr_atomic_read64(&h->full);
        stats->window_learned_from[i] = (int)apr_atomic_read32(&h->learned_from);
        stats->window_fallback[i] = (int)apr_atomic_read32(&h->fallback);
        stats->window_relearn_at[i] =
            (apr_time_t)apr_atomic_read64(&h->relearn_at);
    }
}

int aoai_table_stats(const aoai_member_slot *slot,
                           aoai_member_stats *stats)
{
    memset(stats, 0, sizeof(*stats));
    if (!slot) {
        return 0;
    }
    read_stats(slot, stats);
    return 1;
}

/* Every subscription key that has been served by this member. */
void aoai_table_each_key(const aoai_member_slot *member,
                         aoai_table_key_fn *fn, void *baton)
{
    apr_uint32_t i;

    if (!member || !table) {
        return;
    }
    for (i = 0; i < table->slot_count; i++) {
        const aoai_member_slot *slot = &table->slots[i];
        aoai_member_stats stats;

        if (apr_atomic_read32((volatile apr_uint32_t *)&slot->kind)
                != AOAI_SLOT_KEY
            || slot->member_key != member->key) {
            continue;
        }
        read_stats(slot, &stats);
        fn(slot->label, &stats, baton);
    }
}

/* A member that keeps sending an unusable header is logged once, not once
 * per request; a usable header re-arms the log.  Returns 1 when the caller
 * is the one that should log. */
int aoai_table_garbage_once(aoai_member_slot *slot, int garbage)
{
    if (!slot) {
        return garbage;
    }
    if (!garbage) {
        if (apr_atomic_read32(&slot->garbage_logged)) {
            apr_atomic_set32(&slot->garbage_logged, 0);
        }
        return 0;
    }
    return apr_atomic_cas32(&slot->garbage_logged, 1, 0) == 0;
}

/* Returns 1 to the one caller, in any child, that should log "what" for
 * this member now: the first, or the first after interval has passed. */
int aoai_table_once(aoai_member_slot *slot, aoai_once what,
                         apr_time_t now, apr_interval_time_t interval)
{
    apr_uint64_t last;

    if (!slot) {
        return 1;
    }
    last = apr_atomic_read64(&slot->once[what]);
    if (last && now - (apr_time_t)last < interval) {
        return 0;
    }
    return apr_atomic_cas64(&slot->once[what], (apr_uint64_t)now, last)
           == last;
}



volatile apr_uint64_t *aoai_table_unpublished(aoai_member_slot *slot)
{
    return slot ? &slot->unpublished : NULL;
}

aoai_headroom_shared *aoai_table_headroom(aoai_member_slot *slot)
{
    return slot ? slot->headroom : NULL;
}

/* A subscription key's quota is counted across every balancer and member:
 * its slot is named by the key alone.  NULL when the table is full. */
aoai_quota_shared *aoai_table_key_quota(const char *label)
{
    aoai_member_slot *slot;

    if (!table) {
        return NULL;
    }
    slot = find_slot(table, "(key quota)", "*", label, 1);
    return slot ? &slot->quota : NULL;
}
