/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * Which member holds which object, in shared memory.
 *
 * An entry is three 64-bit words: the object's key (its balancer and id,
 * hashed), the member (its name, hashed) and the time the entry lapses.
 * Entries live in one anonymous segment made by the parent and retained
 * from one generation to the next (ap_retained_data_*), so every child
 * sees an object the moment any child records it, and a graceful restart
 * forgets nothing.
 *
 * A key has AOAI_AFFINITY_PROBE places, from its hash on.  A writer takes
 * the entry with its key, else a free or lapsed one, else the one that
 * lapses first, and claims it by compare-and-swap of its time to a mark no
 * reader trusts, writes key and member, then
 * the time.  A reader takes the time, the key and the member, then the
 * time again: the entry counts only when both times agree and are to
 * come.  No lock, and no reader ever sees half of two objects.  When the
 * store is full, the objects that lapse first are the ones forgotten; a
 * forgotten object is found again by asking the members in turn
 * (aoai_objects.c).
 */

#include "aoai_affinity.h"
#include "aoai_config.h"

#include "apr_atomic.h"
#include "apr_shm.h"
#include "apr_strings.h"
#include "http_log.h"

APLOG_USE_MODULE(aoai_balancer);

#define AOAI_AFFINITY_PROBE 8
/* An entry's time while a writer fills it in; readers pass it by. */
#define AOAI_AFFINITY_WRITING (~(apr_uint64_t)0)
#define AOAI_AFFINITY_RETAINED "mod_aoai_balancer-objects-%d"

typedef struct {
    volatile apr_uint64_t key;      /* 0: never used */
    volatile apr_uint64_t member;
    volatile apr_uint64_t until;    /* apr_time_t; 0: never used */
} aoai_affinity_entry;

typedef struct {
    apr_shm_t *shm;
    volatile apr_uint64_t *marks_until; /* the last mark's end, in shm */
    aoai_affinity_entry *entries;
    int count;
} aoai_affinity_store;

static aoai_affinity_store *store;

static apr_uint64_t fnv1a(apr_uint64_t hash, const char *text)
{
    const unsigned char *p;

    for (p = (const unsigned char *)text; *p; p++) {
        hash = (hash ^ *p) * APR_UINT64_C(1099511628211);
    }
    return hash * APR_UINT64_C(1099511628211);
}

apr_uint64_t aoai_affinity_key(const proxy_balancer *balancer,
                               const char *id)
{
    apr_uint64_t hash = fnv1a(APR_UINT64_C(14695981039346656037),
                              balancer->s->name);
    hash = fnv1a(hash, id);
    return hash ? hash : 1;
}

apr_uint64_t aoai_affinity_member(const proxy_worker *worker)
{
    apr_uint64_t hash = fnv1a(APR_UINT64_C(14695981039346656037),
                              worker->s->name_ex);
    return hash ? hash : 1;
}

apr_status_t aoai_affinity_post_config(server_rec *s, int entries)
{
    const char *name = apr_psprintf(s->process->pconf,
                                    AOAI_AFFINITY_RETAINED, entries);
    aoai_affinity_store *kept = ap_retained_data_get(name);
    /* One entry's room more, at the start: the marks' end. */
    apr_size_t size = (apr_size_t)(entries + 1) * sizeof(aoai_affinity_entry);
    apr_status_t rv;

    if (!kept) {
        kept = ap_retained_data_create(name, sizeof(*kept));
        rv = apr_shm_create(&kept->shm, size, NULL, s->process->pool);
        if (rv != APR_SUCCESS) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, AOAI_LOGNO(060)
                         "could not create the object table (%d entries) "
                         "in anonymous shared memory", entries);
            return rv;
        }
        kept->marks_until = apr_shm_baseaddr_get(kept->shm);
        kept->entries = (aoai_affinity_entry *)apr_shm_baseaddr_get(kept->shm)
                        + 1;
        kept->count = entries;
        memset(apr_shm_baseaddr_get(kept->shm), 0, size);
    }
    store = kept;
    return APR_SUCCESS;
}

static aoai_affinity_entry *place(apr_uint64_t key, int i)
{
    return &store->entries[(key + (apr_uint64_t)i)
                           % (apr_uint64_t)store->count];
}

/* The entry to write key into: its own, else a free or lapsed one, else
 * the one that lapses first; *seen is its time as read. */
static aoai_affinity_entry *choose(apr_uint64_t key, apr_time_t now,
                                   apr_uint64_t *seen)
{
    aoai_affinity_entry *best = NULL;
    int i;

    for (i = 0; i < AOAI_AFFINITY_PROBE; i++) {
        aoai_affinity_entry *e = place(key, i);
        apr_uint64_t until = apr_atomic_read64(&e->until);

        if (until == AOAI_AFFINITY_WRITING) {
            continue;
        }
        if ((apr_time_t)until > now && apr_atomic_read64(&e->key) == key) {
            *seen = until;
            return e;
        }
        if (!best || (apr_time_t)until < (apr_time_t)*seen) {
            best = e;
            *seen = until;
        }
    }
    return best;
}

void aoai_affinity_put(apr_uint64_t key, apr_uint64_t member,
                       apr_time_t until)
{
    apr_time_t now = apr_time_now();
    int tries;

    for (tries = 0; store && tries < 3; tries++) {
        apr_uint64_t seen = 0;
        aoai_affinity_entry *e = choose(key, now, &seen);

        if (!e || apr_atomic_cas64(&e->until, AOAI_AFFINITY_WRITING, seen)
                  != seen) {
            /* Taken by another call since: look again. */
            continue;
        }
        apr_atomic_set64(&e->key, key);
        apr_atomic_set64(&e->member, member);
        apr_atomic_set64(&e->until, (apr_uint64_t)until);
        return;
    }
}

static aoai_affinity_entry *find(apr_uint64_t key, apr_time_t now,
                                 apr_uint64_t *member)
{
    int i;

    for (i = 0; store && i < AOAI_AFFINITY_PROBE; i++) {
        aoai_affinity_entry *e = place(key, i);
        apr_uint64_t until = apr_atomic_read64(&e->until);
        apr_uint64_t seen_key = apr_atomic_read64(&e->key);
        apr_uint64_t seen_member = apr_atomic_read64(&e->member);

        if (seen_key == key && until != AOAI_AFFINITY_WRITING
            && (apr_time_t)until > now
            && apr_atomic_read64(&e->until) == until) {
            *member = seen_member;
            return e;
        }
    }
    return NULL;
}

apr_uint64_t aoai_affinity_get(apr_uint64_t key, apr_time_t now)
{
    apr_uint64_t member = 0;

    return find(key, now, &member) ? member : 0;
}

void aoai_affinity_forget(apr_uint64_t key)
{
    apr_uint64_t member;
    aoai_affinity_entry *e = find(key, apr_time_now(), &member);

    if (e) {
        /* Lapsed at once: the next writer may take it. */
        apr_atomic_set64(&e->until, 1);
    }
}

void aoai_affinity_mark(apr_uint64_t key, apr_time_t until)
{
    apr_uint64_t seen;

    if (!store) {
        return;
    }
    aoai_affinity_put(key, 1, until);
    for (seen = apr_atomic_read64(store->marks_until);
         seen < (apr_uint64_t)until;
         seen = apr_atomic_read64(store->marks_until)) {
        if (apr_atomic_cas64(store->marks_until, (apr_uint64_t)until, seen)
            == seen) {
            break;
        }
    }
}

int aoai_affinity_marks_on(apr_time_t now)
{
    return store && (apr_time_t)apr_atomic_read64(store->marks_until) > now;
}

int aoai_affinity_marked(apr_uint64_t key, apr_time_t now)
{
    return aoai_affinity_marks_on(now) && aoai_affinity_get(key, now) != 0;
}

proxy_worker *aoai_affinity_worker(proxy_balancer *balancer,
                                   apr_uint64_t member)
{
    proxy_worker **workers = (proxy_worker **)balancer->workers->elts;
    int i;

    for (i = 0; member && i < balancer->workers->nelts; i++) {
        if (aoai_affinity_member(workers[i]) == member) {
            return workers[i];
        }
    }
    return NULL;
}

void aoai_affinity_usage(int *used, int *capacity)
{
    apr_time_t now = apr_time_now();
    int i;

    *used = 0;
    *capacity = store ? store->count : 0;
    for (i = 0; i < *capacity; i++) {
        apr_uint64_t until = apr_atomic_read64(&store->entries[i].until);
        *used += until != AOAI_AFFINITY_WRITING && (apr_time_t)until > now;
    }
}
