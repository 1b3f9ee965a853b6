/* txn.c: the shared group commit: writers ask for a turn; a low-priority defer source runs once
 * every ready socket and timer of this loop iteration has been handled, applies every writer that
 * asked, in order, inside one transaction, commits, then tells each writer how it went. On
 * PostgreSQL the turn is one pipelined batch and the writers hear of it when its answer comes. */
#include "txn.h"

#include <errno.h>
#include <stdlib.h>

#include "util.h"
#include "walvfs.h"

/* After every I/O and timer source of the same iteration, so a turn gathers all they staged. The
 * batch stays bounded: requests wait suspended (at most server.max_connections of them) and
 * upstream calls at most upstream.concurrency. */
#define TXN_PRIORITY (SD_EVENT_PRIORITY_NORMAL + 10)

struct txn_batch {
        struct pgconn_stmt *v;
        size_t n, cap;
};

/* PostgreSQL: how many turns may be in flight at once, pipelined on the connection. */
#define TXN_MAX_DEPTH 2

/* PostgreSQL: one turn's batch, from its sending to its answer. */
struct txn_turn {
        struct txn *t;
        bool in_flight;
        uint64_t sent_at;
        struct txn_batch batch;
};

struct txn {
        sd_event *event;
        struct ledger *ledger;
        struct metrics *m;
        sd_event_source *defer;
        struct txn_writer *writers;
        /* PostgreSQL */
        struct pgconn *pg;
        bool available;
        unsigned depth;    /* turns that may be in flight at once */
        unsigned n_flight; /* turns in flight */
        bool rolling_back; /* the ROLLBACK after a failed batch */
        struct txn_turn turns[TXN_MAX_DEPTH];
};

int txn_batch_add(struct txn_batch *b, const char *sql, int n_params, const char *const *params)
{
        if (b->n == b->cap) {
                size_t cap = b->cap ? b->cap * 2 : 8;
                struct pgconn_stmt *v = realloc(b->v, cap * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                b->v = v;
                b->cap = cap;
        }
        b->v[b->n++] = (struct pgconn_stmt){.sql = sql, .n_params = n_params, .params = params};
        return 0;
}

static bool any_wanted(const struct txn *t)
{
        for (const struct txn_writer *w = t->writers; w; w = w->next)
                if (w->wanted)
                        return true;
        return false;
}

/* Tells every writer of the turn (NULL: of a turn that was never sent) how it ended. */
static void tell_writers(struct txn *t, struct txn_turn *turn, int r)
{
        for (struct txn_writer *w = t->writers; w; w = w->next)
                if (w->in_turn && w->turn == turn) {
                        w->in_turn = false;
                        w->turn = NULL;
                        w->done(w->userdata, r < 0 ? r : w->result);
                }
}

static void on_rolled_back(struct pgconn *c, const struct pgconn_result *res, void *userdata)
{
        struct txn *t = userdata;
        t->rolling_back = false;
        if (any_wanted(t))
                sd_event_source_set_enabled(t->defer, SD_EVENT_ONESHOT);
}

static void on_batch(struct pgconn *c, const struct pgconn_result *res, void *userdata)
{
        struct txn_turn *turn = userdata;
        struct txn *t = turn->t;
        int r = res->error;
        turn->in_flight = false;
        t->n_flight--;
        if (r < 0) {
                /* An unknown outcome is a failure for the writers too: their senders retry and
                 * the unique keys answer the retry if the commit had landed. */
                t->m->ledger_commit_errors++;
                if (r == -EEXIST)
                        r = -EIO; /* a constraint the statements do not expect */
        } else
                metrics_observe(&t->m->commit_seconds,
                                (double)(now_monotonic_usec() - turn->sent_at) / 1e6);
        if (r >= 0)
                for (struct txn_writer *w = t->writers; w; w = w->next)
                        if (w->in_turn && w->turn == turn && w->result >= 0 && w->read &&
                            w->n_stmts > 0 && w->first + w->n_stmts <= res->n) {
                                int e = w->read(w->userdata, res->results + w->first, w->n_stmts);
                                if (e < 0)
                                        w->result = e;
                        }
        /* A failed statement leaves the explicit transaction open and aborted on a live
         * connection: it is ended before the next turn. A turn pipelined behind this one fails
         * in it too, and the one ROLLBACK, sent behind it, ends it. */
        if (r < 0 && !res->unknown_outcome && pgconn_is_connected(c) && !t->rolling_back) {
                static const struct pgconn_stmt rollback = {.sql = "ROLLBACK"};
                if (pgconn_send(c, &rollback, 1, on_rolled_back, t) >= 0)
                        t->rolling_back = true;
        }
        tell_writers(t, turn, r);
        if (!t->rolling_back && any_wanted(t))
                sd_event_source_set_enabled(t->defer, SD_EVENT_ONESHOT);
}

static struct txn_turn *free_turn(struct txn *t)
{
        for (unsigned i = 0; i < t->depth; i++)
                if (!t->turns[i].in_flight)
                        return &t->turns[i];
        return NULL;
}

static int on_turn_pg(struct txn *t)
{
        static const struct pgconn_stmt begin = {.sql = "BEGIN"}, commit = {.sql = "COMMIT"};
        uint64_t now = now_realtime_usec();
        /* At most depth batches at a time: what is wanted meanwhile goes in the next, sent from
         * on_batch. A writer takes part in one turn at a time; one still in a turn in flight
         * stays wanted for the next. */
        struct txn_turn *turn = free_turn(t);
        if (!turn || t->rolling_back)
                return 0;
        /* Behind a turn of its own in flight when pipelining; else on a connection nothing
         * else uses right now (the schema's migration, a ROLLBACK). */
        bool ready = t->available && pgconn_is_connected(t->pg) &&
                     (t->n_flight > 0 ? t->depth > 1 : !pgconn_busy(t->pg));
        struct txn_batch *b = &turn->batch;
        b->n = 0;
        bool any = false, wanted = false, others = false;
        for (struct txn_writer *w = t->writers; w; w = w->next)
                if (w->wanted && !w->in_turn) {
                        wanted = true;
                        others |= !w->passenger;
                }
        if (!wanted)
                return 0;
        for (struct txn_writer *w = t->writers; w; w = w->next) {
                if (w->in_turn || (!w->wanted && !(w->passenger && others && ready)))
                        continue;
                w->wanted = false;
                w->in_turn = true;
                w->turn = ready ? turn : NULL;
                w->n_stmts = 0;
                w->result = ready ? 0 : -ENOTCONN;
                if (!ready)
                        continue;
                if (!any && txn_batch_add(b, begin.sql, 0, NULL) < 0) {
                        w->result = -ENOMEM;
                        continue;
                }
                any = true;
                w->first = b->n;
                int e = w->stage ? w->stage(w->userdata, b, now) : -EOPNOTSUPP;
                if (e < 0) {
                        w->result = e;
                        b->n = w->first; /* left out whole */
                } else
                        w->n_stmts = b->n - w->first;
        }
        int r = 0;
        if (!ready)
                r = 1; /* told -ENOTCONN below */
        else if (b->n <= 1)
                r = 1; /* nothing to send: no writer staged a statement */
        else
                r = txn_batch_add(b, commit.sql, 0, NULL);
        if (r == 0)
                r = pgconn_send(t->pg, b->v, b->n, on_batch, turn);
        if (r < 0) {
                t->m->ledger_commit_errors++;
                tell_writers(t, ready ? turn : NULL, r);
                return 0;
        }
        if (r > 0) {
                tell_writers(t, ready ? turn : NULL, 0);
                return 0;
        }
        turn->in_flight = true;
        t->n_flight++;
        turn->sent_at = now_monotonic_usec();
        /* Writers that wanted a turn but were in the one before may join the next at once. */
        if (any_wanted(t) && free_turn(t))
                sd_event_source_set_enabled(t->defer, SD_EVENT_ONESHOT);
        return 0;
}

static int on_turn(sd_event_source *src, void *userdata)
{
        struct txn *t = userdata;
        if (t->pg)
                return on_turn_pg(t);
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

/* Either backend's: the turn's defer source, off until a writer wants a turn. */
static int txn_alloc(sd_event *event, struct metrics *metrics, struct txn **ret)
{
        struct txn *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->event = sd_event_ref(event);
        t->m = metrics;
        int r = sd_event_add_defer(event, &t->defer, on_turn, t);
        if (r < 0) {
                txn_free(t);
                return r;
        }
        sd_event_source_set_priority(t->defer, TXN_PRIORITY);
        sd_event_source_set_enabled(t->defer, SD_EVENT_OFF);
        sd_event_source_set_description(t->defer, "ledger-commit");
        *ret = t;
        return 0;
}

int txn_new(sd_event *event, struct ledger *ledger, struct metrics *metrics, struct txn **ret)
{
        int r = txn_alloc(event, metrics, ret);
        if (r < 0)
                return r;
        (*ret)->ledger = ledger;
        /* The ledger is written on this thread, the loop's: its commits' syncs, and those of any
         * other write the loop makes, are timed. */
        walvfs_observe_syncs(on_sync, *ret);
        return 0;
}

int txn_new_pg(sd_event *event, struct pgconn *conn, unsigned depth, struct metrics *metrics,
               struct txn **ret)
{
        int r = txn_alloc(event, metrics, ret);
        if (r < 0)
                return r;
        struct txn *t = *ret;
        t->pg = conn;
        t->depth = depth < 1 ? 1 : depth > TXN_MAX_DEPTH ? TXN_MAX_DEPTH : depth;
        for (unsigned i = 0; i < TXN_MAX_DEPTH; i++)
                t->turns[i].t = t;
        return 0;
}

void txn_set_available(struct txn *t, bool available)
{
        if (!t)
                return;
        t->available = available;
        /* Writers that wanted a turn meanwhile hear how it stands. */
        if (any_wanted(t))
                sd_event_source_set_enabled(t->defer, SD_EVENT_ONESHOT);
}

bool txn_busy(const struct txn *t)
{
        return t && (t->n_flight > 0 || t->rolling_back);
}

unsigned txn_in_flight(const struct txn *t)
{
        return t ? t->n_flight : 0;
}

struct txn *txn_free(struct txn *t)
{
        if (!t)
                return NULL;
        if (!t->pg)
                walvfs_observe_syncs(NULL, NULL);
        for (unsigned i = 0; i < TXN_MAX_DEPTH; i++)
                free(t->turns[i].batch.v);
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
