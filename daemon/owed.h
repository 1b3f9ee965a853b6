/* owed.h: the `accepted` journal entries a job still owes while its `submitted` entry may carry
 * them (log.fold_accepted): kept in acceptance order, found by creation id, bounded. Pure logic;
 * the dispatcher writes the entries and runs the timer. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One owed entry, handed back by owed_take and owed_pop_due: the caller writes it, then clears
 * it. */
struct owed_entry {
        char *ids; /* one allocation: the creation id, then the source task's */
        const char *creation_id;
        const char *source_task_id;
        uint64_t accepted_at; /* realtime usec, the ACCEPTED_AT value */
        uint64_t due;         /* monotonic usec: written by then unless folded */
};

struct owed;

/* A store that owes at most max entries; its memory follows what it owes (the ring keeps a taken
 * entry's place only until every older one is gone, or it is compacted). */
int owed_new(size_t max, struct owed **ret);
struct owed *owed_free(struct owed *o);

/* Entries owed. */
size_t owed_count(const struct owed *o);

/* Owes an entry. When the store is full, its oldest owed entry moves to *ret_evicted first and 1
 * is returned: the caller writes it at once. 0 added, -ENOMEM nothing added (write it at once). */
int owed_add(struct owed *o, const char *creation_id, const char *source_task_id,
             uint64_t accepted_at, uint64_t due, struct owed_entry *ret_evicted);

/* The entry owed for creation_id moves to *ret: 1, or 0 when none is owed. */
int owed_take(struct owed *o, const char *creation_id, struct owed_entry *ret);

/* The oldest owed entry moves to *ret if it is due at `now` (UINT64_MAX: whatever its time): 1,
 * or 0. Entries come out in the order they were added. */
int owed_pop_due(struct owed *o, uint64_t now, struct owed_entry *ret);

/* When the oldest owed entry comes due: true and *ret, or false when nothing is owed. */
bool owed_next_due(const struct owed *o, uint64_t *ret);

void owed_entry_clear(struct owed_entry *e);
