/* owed.c: the owed `accepted` entries: a ring in acceptance order (taken entries leave a hole
 * that the oldest end skips) and an open-addressing index by creation id. */
#include "owed.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define OWED_INITIAL 64

struct slot {
        char *ids; /* NULL: taken, a hole */
        uint64_t accepted_at;
        uint64_t due;
        uint32_t hash;
};

struct owed {
        struct slot *ring;
        size_t cap, max;     /* cap: a power of two (grown while over half full of owed ones) */
        uint64_t head, tail; /* sequence numbers; ring[head & (cap - 1)] is owed unless empty */
        size_t count;        /* owed entries */
        uint32_t *index;     /* 2 * cap cells: a ring position + 1, or 0 (empty) */
};

static uint32_t hash_id(const char *s)
{
        uint32_t h = 2166136261u; /* FNV-1a */
        for (; *s; s++) {
                h ^= (unsigned char)*s;
                h *= 16777619u;
        }
        return h;
}

static size_t index_mask(const struct owed *o)
{
        return 2 * o->cap - 1;
}

static void index_put(struct owed *o, size_t pos)
{
        size_t m = index_mask(o);
        size_t i = o->ring[pos].hash & m;
        while (o->index[i])
                i = (i + 1) & m;
        o->index[i] = (uint32_t)pos + 1;
}

/* The index cell holding ring position pos. */
static size_t index_cell_of(const struct owed *o, size_t pos)
{
        size_t m = index_mask(o);
        size_t i = o->ring[pos].hash & m;
        while (o->index[i] != pos + 1)
                i = (i + 1) & m;
        return i;
}

/* Empties cell i and moves later cells of the same run back, so that every lookup still finds
 * its entry without tombstones. */
static void index_delete(struct owed *o, size_t i)
{
        size_t m = index_mask(o);
        for (;;) {
                size_t j = i;
                for (;;) {
                        j = (j + 1) & m;
                        if (!o->index[j]) {
                                o->index[i] = 0;
                                return;
                        }
                        size_t k = o->ring[o->index[j] - 1].hash & m;
                        /* Stays if its home k lies cyclically in (i, j]. */
                        bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
                        if (!stays)
                                break;
                }
                o->index[i] = o->index[j];
                i = j;
        }
}

int owed_new(size_t max, struct owed **ret)
{
        assert(max > 0);
        struct owed *o = calloc(1, sizeof(*o));
        if (!o)
                return -ENOMEM;
        o->max = max;
        *ret = o;
        return 0;
}

struct owed *owed_free(struct owed *o)
{
        if (!o)
                return NULL;
        for (uint64_t s = o->head; s < o->tail; s++)
                free(o->ring[s & (o->cap - 1)].ids);
        free(o->ring);
        free(o->index);
        free(o);
        return NULL;
}

size_t owed_count(const struct owed *o)
{
        return o->count;
}

/* Moves the oldest end past holes. */
static void settle(struct owed *o)
{
        while (o->head < o->tail && !o->ring[o->head & (o->cap - 1)].ids)
                o->head++;
}

/* Gives the memory of a burst back once nothing is owed. */
static void shrink_if_empty(struct owed *o)
{
        if (o->count == 0 && o->cap > OWED_INITIAL) {
                free(o->ring);
                free(o->index);
                o->ring = NULL;
                o->index = NULL;
                o->cap = 0;
                o->head = o->tail = 0;
        }
}

/* A ring of cap slots holding the owed entries in order, holes left out. */
static int resize(struct owed *o, size_t cap)
{
        struct slot *ring = malloc(cap * sizeof(*ring));
        uint32_t *index = calloc(2 * cap, sizeof(*index));
        if (!ring || !index) {
                free(ring);
                free(index);
                return -ENOMEM;
        }
        size_t n = 0;
        for (uint64_t s = o->head; s < o->tail; s++) {
                struct slot *sl = &o->ring[s & (o->cap - 1)];
                if (sl->ids)
                        ring[n++] = *sl;
        }
        free(o->ring);
        free(o->index);
        o->ring = ring;
        o->index = index;
        o->cap = cap;
        o->head = 0;
        o->tail = n;
        for (size_t p = 0; p < n; p++)
                index_put(o, p);
        return 0;
}

/* Moves ring position pos out into *ret and leaves a hole. */
static void take_at(struct owed *o, size_t pos, struct owed_entry *ret)
{
        struct slot *sl = &o->ring[pos];
        index_delete(o, index_cell_of(o, pos));
        *ret = (struct owed_entry){
            .ids = sl->ids,
            .creation_id = sl->ids,
            .source_task_id = sl->ids + strlen(sl->ids) + 1,
            .accepted_at = sl->accepted_at,
            .due = sl->due,
        };
        sl->ids = NULL;
        o->count--;
        settle(o);
}

int owed_add(struct owed *o, const char *creation_id, const char *source_task_id,
             uint64_t accepted_at, uint64_t due, struct owed_entry *ret_evicted)
{
        size_t lc = strlen(creation_id), ls = strlen(source_task_id);
        char *ids = malloc(lc + ls + 2);
        if (!ids)
                return -ENOMEM;
        memcpy(ids, creation_id, lc + 1);
        memcpy(ids + lc + 1, source_task_id, ls + 1);
        int evicted = 0;
        if (o->count == o->max) {
                /* The oldest end never rests on a hole. */
                take_at(o, o->head & (o->cap - 1), ret_evicted);
                evicted = 1; /* which leaves room in the ring */
        } else if (o->tail - o->head == o->cap) {
                /* Full of owed entries and holes: without the holes if they are half of it, else
                 * twice the size (so at most 2 * max, where owed entries are at most half). */
                size_t cap = o->cap == 0              ? OWED_INITIAL
                             : o->count <= o->cap / 2 ? o->cap
                                                      : o->cap * 2;
                int r = resize(o, cap);
                if (r < 0) {
                        free(ids);
                        return r;
                }
        }
        size_t pos = o->tail & (o->cap - 1);
        o->ring[pos] = (struct slot){
            .ids = ids, .accepted_at = accepted_at, .due = due, .hash = hash_id(creation_id)};
        o->tail++;
        o->count++;
        index_put(o, pos);
        return evicted;
}

int owed_take(struct owed *o, const char *creation_id, struct owed_entry *ret)
{
        if (o->count == 0)
                return 0;
        uint32_t h = hash_id(creation_id);
        size_t m = index_mask(o);
        for (size_t i = h & m; o->index[i]; i = (i + 1) & m) {
                size_t pos = o->index[i] - 1;
                if (o->ring[pos].hash == h && strcmp(o->ring[pos].ids, creation_id) == 0) {
                        take_at(o, pos, ret);
                        shrink_if_empty(o);
                        return 1;
                }
        }
        return 0;
}

int owed_pop_due(struct owed *o, uint64_t now, struct owed_entry *ret)
{
        if (o->count == 0)
                return 0;
        size_t pos = o->head & (o->cap - 1);
        if (o->ring[pos].due > now)
                return 0;
        take_at(o, pos, ret);
        shrink_if_empty(o);
        return 1;
}

bool owed_next_due(const struct owed *o, uint64_t *ret)
{
        if (o->count == 0)
                return false;
        *ret = o->ring[o->head & (o->cap - 1)].due;
        return true;
}

void owed_entry_clear(struct owed_entry *e)
{
        free(e->ids);
        *e = (struct owed_entry){0};
}
