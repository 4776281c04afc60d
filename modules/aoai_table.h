/* Licensed under the Apache License, Version 2.0 (the "License"); see
 * LICENSE in the project root.
 *
 * aoai_table: the shared slot table.  One slot per (balancer, member), one
 * per subscription key's use of a member, one per key's token quota, in
 * anonymous shared memory that every child sees and a graceful restart
 * keeps.  It stores what the policies decide (windows, figures, counts)
 * and knows nothing of what they mean.
 */

#ifndef AOAI_TABLE_H
#define AOAI_TABLE_H

#include "httpd.h"
#include "mod_proxy.h"

#include "aoai_config.h"
#include "aoai_usage.h"

typedef struct aoai_member_slot aoai_member_slot;

/* Per-member counters.  A subscription key's record for a member uses
 * SERVED and the token counters. */
typedef enum {
    AOAI_COUNT_REQUESTS,          /* requests that reached the member */
    AOAI_COUNT_SERVED,            /* its answers that went on to the client */
    AOAI_COUNT_THROTTLED,         /* 429s it answered */
    AOAI_COUNT_FAILOVERS,         /* attempts on it that moved on to another */
    AOAI_COUNT_LAST_WINDOW_MS,    /* the window its last 429 asked for */
    AOAI_COUNT_PROMPT_TOKENS,
    AOAI_COUNT_COMPLETION_TOKENS,
    AOAI_COUNT_TOTAL_TOKENS,
    AOAI_COUNT_SESSIONS,          /* Realtime sessions it took (101) */
    AOAI_COUNT_SESSIONS_OPEN,     /* of which still open */
    AOAI_COUNTER_COUNT
} aoai_counter;

/* A member's last x-ratelimit-remaining-* figure of one kind.  Every word
 * is read and written with atomics (aoai_headroom.c). */
typedef struct {
    volatile apr_uint64_t estimate;     /* apr_int64_t: the figure, less
                                         * what was sent since */
    volatile apr_uint64_t reported;     /* apr_int64_t: the figure; -1 none */
    volatile apr_uint64_t window_start; /* apr_time_t: when the member's
                                         * allowance was last seen refilled */
    volatile apr_uint64_t limit;        /* largest figure seen, or its
                                         * x-ratelimit-limit-* */
    /* The member's window as learned (aoai_learn.c). */
    volatile apr_uint64_t window_end;   /* apr_time_t: when the current
                                         * window ends; 0: not known */
    volatile apr_uint64_t length;       /* apr_interval_time_t learned;
                                         * 0: not yet */
    volatile apr_uint64_t previous_start; /* apr_time_t: the window before */
    volatile apr_uint64_t full;         /* apr_int64_t: what a new window
                                         * holds */
    volatile apr_uint64_t before_refill;/* apr_int64_t: the last figure
                                         * before the model took the
                                         * window as refilled (or probed
                                         * it); -1: none to check */
    volatile apr_uint64_t probe_at;     /* apr_time_t of the last probe */
    volatile apr_uint32_t learned_from; /* aoai_learned_from */
    volatile apr_uint32_t fallback;     /* aoai_fallback; 0: none */
    volatile apr_uint32_t per_mille;    /* tokens: the figures are a
                                         * provisioned member's capacity
                                         * left, in tenths of a percent */
    volatile apr_uint32_t anchored;     /* aoai_anchoring: whether each
                                         * window starts where the last
                                         * ended (fixed to the clock) or
                                         * at a first call */
    volatile apr_uint64_t exact_end;    /* apr_time_t: the last end the
                                         * member named (429, reset) */
    volatile apr_uint64_t in_flight;    /* apr_int64_t: what the calls
                                         * sent and not yet answered in
                                         * this window are to use */
    volatile apr_uint64_t reported_sent;/* apr_time_t: when the call whose
                                         * answer carried "reported" came */
    volatile apr_uint64_t relearn_at;   /* apr_time_t: when a kind that
                                         * fell back learns afresh */
    volatile apr_uint32_t fallbacks;    /* how many times it fell back */
} aoai_headroom_shared;

/* What told the module where a member's window ends. */
typedef enum {
    AOAI_LEARNED_NOTHING,
    AOAI_LEARNED_429,           /* a 429's retry-after-ms / Retry-After */
    AOAI_LEARNED_RESET_HEADER,  /* x-ratelimit-reset-* on an answer */
    AOAI_LEARNED_FIGURES,       /* its remaining figure went back up */
    AOAI_LEARNED_LENGTH         /* a new window of the learned length */
} aoai_learned_from;

/* Whether a member's windows are fixed to the clock. */
typedef enum {
    AOAI_ANCHOR_UNKNOWN,
    AOAI_ANCHOR_CLOCK,          /* each starts where the last one ended */
    AOAI_ANCHOR_FIRST_CALL,     /* each starts at a first call */
    AOAI_ANCHOR_TESTING         /* one call is finding out */
} aoai_anchoring;

/* Why a member's figures of one kind are no longer steered by. */
typedef enum {
    AOAI_FALLBACK_NONE,
    AOAI_FALLBACK_429_WITH_ROOM,  /* 429 while its figures said room */
    AOAI_FALLBACK_NO_REFILL       /* figures that did not go back up */
} aoai_fallback;

/* A subscription key's tokens in the current minute (aoai_key_quota.c). */
typedef struct {
    volatile apr_uint64_t window_start; /* apr_time_t; 0 before first use */
    volatile apr_uint64_t used;         /* apr_int64_t */
} aoai_quota_shared;

/* A copy of a slot's figures, for the status pages. */
typedef struct {
    apr_time_t throttle_until;
    apr_time_t last_throttled;                  /* when its last 429 came */
    apr_uint64_t counters[AOAI_COUNTER_COUNT];
    /* Its headroom: what it said it has left, less what was sent since;
     * remaining is -1 while nothing is known. */
    apr_int64_t headroom_remaining[AOAI_HEADROOM_KINDS];
    apr_int64_t headroom_limit[AOAI_HEADROOM_KINDS];
    apr_time_t headroom_window_start[AOAI_HEADROOM_KINDS];
    /* Its windows as learned (aoai_learn.c). */
    apr_time_t window_end[AOAI_HEADROOM_KINDS];        /* 0: not known */
    apr_interval_time_t window_length[AOAI_HEADROOM_KINDS]; /* 0: not yet */
    apr_int64_t window_full[AOAI_HEADROOM_KINDS];
    int window_learned_from[AOAI_HEADROOM_KINDS];      /* aoai_learned_from */
    int window_fallback[AOAI_HEADROOM_KINDS];          /* aoai_fallback */
    apr_time_t window_relearn_at[AOAI_HEADROOM_KINDS]; /* 0: none due */
} aoai_member_stats;

/* Things logged at most once per interval for a member, across children. */
typedef enum {
    AOAI_ONCE_CREDENTIAL,       /* its bearer token file is unusable */
    AOAI_ONCE_REFUSED,          /* it answered 401/403 to its credential */
    AOAI_ONCE_KINDS
} aoai_once;

/* post_config, in the parent, once per generation: the table made or kept,
 * every member of every aoai balancer mapped to its slot. */
apr_status_t aoai_table_post_config(apr_pool_t *pconf, server_rec *s,
                                    int table_slots);

/* A member's slot; NULL only when the table is full. */
aoai_member_slot *aoai_table_member(proxy_balancer *balancer,
                                    proxy_worker *worker);

apr_time_t aoai_table_window_end(const aoai_member_slot *slot);
/* 1 when this call moved the window's end (raise-only). */
int aoai_table_raise_window(aoai_member_slot *slot, apr_time_t until);
/* A window that no one could publish to the shared cache yet. */
volatile apr_uint64_t *aoai_table_unpublished(aoai_member_slot *slot);
aoai_headroom_shared *aoai_table_headroom(aoai_member_slot *slot);
/* A key's quota slot, by label across every balancer; NULL when full. */
aoai_quota_shared *aoai_table_key_quota(const char *label);

void aoai_table_count(aoai_member_slot *slot, aoai_counter counter,
                      apr_uint64_t n);
/* A 429, counted, with the window it asked for. */
void aoai_table_note_429(aoai_member_slot *slot, apr_time_t now,
                         apr_interval_time_t window);
/* An answer that went to the client: counted on the member and on the
 * key's record for it, with its tokens when they could be read. */
void aoai_table_note_served(request_rec *r, proxy_balancer *balancer,
                            proxy_worker *worker, const char *key_label,
                            const aoai_usage *usage);

/* 1 to the one caller, in any child, that should log "what" now. */
int aoai_table_once(aoai_member_slot *slot, aoai_once what, apr_time_t now,
                    apr_interval_time_t interval);
/* An unusable header is logged once until a usable one re-arms it:
 * 1 when the caller is the one that should log. */
int aoai_table_garbage_once(aoai_member_slot *slot, int garbage);

int aoai_table_stats(const aoai_member_slot *slot, aoai_member_stats *stats);
typedef void (aoai_table_key_fn)(const char *label,
                                 const aoai_member_stats *stats, void *baton);
/* Every subscription key that this member has served. */
void aoai_table_each_key(const aoai_member_slot *member,
                         aoai_table_key_fn *fn, void *baton);

#endif /* AOAI_TABLE_H */
