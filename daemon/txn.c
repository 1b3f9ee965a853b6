/* txn.c: the shared group commit: writers ask for a turn; a low-priority defer source runs once
 * every ready socket and timer of this loop iteration has been handled, applies every writer that
 * asked, in order, inside one transaction, commits, then tells each writer how it went. */
#include "txn.h"

#include <errno.h>
#include <stdlib.h>

#include "util.h"
#include "walvfs.h"

/* After every I/O and timer source of the same iteration, so a turn gathers all they staged. The
 * batch stays bounded: requests wait suspended (at most server.max_connections of them) and
 * upstream calls at most upstream.concurrency. */
#define TXN_PRIORITY (SD_EVENT_PRIORITY_NORMAL + 10)

struct txn {
        sd_event *event;
        struct ledger *ledger;
        struct metrics *m;
        sd_event_source *defer;
        struct txn_writer *writers;
};

static int on_turn(sd_event_source *src, void *userdata)
{
        struct txn *t = userdata;
        uint64_t now = now_realtime_usec();
        uint64_t t0 = now_monotonic_usec();
        bool any = false;
        int r = 0;

        for (struct txn_writer *w = t->writers; w; w = w->next) {
                if (!w->wanted)
                        continue;
                if (!any)
                        r = ledger_begin(t->ledger);
                any = true;
                w->wanted = false;
                w->in_turn = true;
                w->result = r;
                if (r < 0)
                        continue;
                /* Each writer in a savepoint of its own: one that fails (a constraint, say) is
                 * undone alone and the others still commit. */
                int e = ledger_savepoint(t->ledger);
                if (e >= 0)
                        e = w->apply(w->userdata, now);
                if (e >= 0)
                        e = ledger_release(t->ledger);
                if (e < 0) {
                        w->result = e;
                        /* A full disk or an I/O error may have ended the whole transaction. */
                        if (!ledger_in_transaction(t->ledger) || ledger_rollback_to(t->ledger) < 0)
                                r = e;
                }
        }
        if (!any)
                return 0;
        if (r >= 0)
                r = ledger_commit(t->ledger);
        if (r < 0) {
                /* Nothing half-recorded: the whole turn goes. */
                ledger_rollback(t->ledger);
                t->m->ledger_commit_errors++;
        } else
                metrics_observe(&t->m->commit_seconds, (double)(now_monotonic_usec() - t0) / 1e6);
        for (struct txn_writer *w = t->writers; w; w = w->next)
                if (w->in_turn) {
                        w->in_turn = false;
                        if (r >= 0 && w->result < 0)
                                t->m->ledger_commit_errors++; /* this writer alone */
                        w->done(w->userdata, r < 0 ? r : w->result);
                }
        return 0;
}

static void on_sync(void *userdata, uint64_t usec)
{
        struct txn *t = userdata;
        metrics_observe(&t->m->sync_seconds, (double)usec / 1e6);
}

int txn_new(sd_event *event, struct ledger *ledger, struct metrics *metrics, struct txn **ret)
{
        struct txn *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->event = sd_event_ref(event);
        t->ledger = ledger;
        t->m = metrics;
        int r = sd_event_add_defer(event, &t->defer, on_turn, t);
        if (r < 0) {
                txn_free(t);
                return r;
        }
        sd_event_source_set_priority(t->defer, TXN_PRIORITY);
        sd_event_source_set_enabled(t->defer, SD_EVENT_OFF);
        sd_event_source_set_description(t->defer, "ledger-commit");
        /* The ledger is written on this thread, the loop's: its commits' syncs, and those of any
         * other write the loop makes, are timed. */
        walvfs_observe_syncs(on_sync, t);
        *ret = t;
        return 0;
}

struct txn *txn_free(struct txn *t)
{
        if (!t)
                return NULL;
        walvfs_observe_syncs(NULL, NULL);
        sd_event_source_disable_unref(t->defer);
        sd_event_unref(t->event);
        free(t);
        return NULL;
}

void txn_add_writer(struct txn *t, struct txn_writer *w)
{
        struct txn_writer **p = &t->writers;
        while (*p && (*p)->order <= w->order)
                p = &(*p)->next;
        w->wanted = w->in_turn = false;
        w->next = *p;
        *p = w;
}

void txn_remove_writer(struct txn *t, struct txn_writer *w)
{
        if (!t)
                return;
        for (struct txn_writer **p = &t->writers; *p; p = &(*p)->next)
                if (*p == w) {
                        *p = w->next;
                        return;
                }
}

void txn_want(struct txn *t, struct txn_writer *w)
{
        if (!t || !w)
                return;
        w->wanted = true;
        /* During apply a later writer joins this turn and an earlier one the next; enabling the
         * source again costs at most one empty turn. */
        sd_event_source_set_enabled(t->defer, SD_EVENT_ONESHOT);
}
