/* txn.h: one ledger transaction per turn of the event loop, shared by every writer (the webhook's
 * staged notifications, the dispatcher's transitions), so durability costs one commit per turn
 * however much was staged, and a notification's job can be marked `submitting` in the very
 * commit that records it. On SQLite the turn is applied and committed in place; on PostgreSQL
 * (txn_new_pg) it is one pipelined batch (BEGIN, every writer's statements, COMMIT: one round
 * trip) whose answer comes back later, from the loop, never blocking it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "ledger.h"
#include "metrics.h"
#include "pgconn.h"

struct txn;

/* PostgreSQL: the statements of one turn. */
struct txn_batch;
struct txn_turn;

/* Adds one statement to the turn's batch. sql and params must stay valid until the writer's
 * done. 0, or -ENOMEM. */
int txn_batch_add(struct txn_batch *b, const char *sql, int n_params, const char *const *params);

struct txn_writer {
        /* Inside the transaction: records what the writer staged. A negative return rolls the
         * whole turn back. May call txn_want() for a writer added after this one, which then
         * joins the same turn. */
        int (*apply)(void *userdata, uint64_t now_usec);
        /* Right after apply, in the same callback: nothing else the loop does (no request, no
         * upstream answer) comes between the two, so what apply saw is what done acts on.
         * After the commit (r == 0) or the rollback (r < 0: -ENOSPC disk full, -EBUSY locked,
         * -EEXIST a constraint, -EIO otherwise). Each writer applies in a savepoint of its own,
         * so one whose apply failed is rolled back alone while the others commit. A txn_want()
         * from here joins the next turn. */
        void (*done)(void *userdata, int r);
        /* PostgreSQL instead of apply: adds the writer's statements to the turn's batch
         * (txn_batch_add); a negative return leaves the writer out of the turn (its done hears
         * it). Nothing the loop does comes between stage and the batch leaving, but requests
         * and answers do come before done: what a writer stages later joins the next turn. */
        int (*stage)(void *userdata, struct txn_batch *b, uint64_t now_usec);
        /* PostgreSQL, once the batch committed, right before done: the results of the writer's
         * own statements, in the order staged. A negative return is passed to done (the turn
         * is committed all the same). */
        int (*read)(void *userdata, PGresult *const *results, size_t n);
        void *userdata;
        int order; /* writers take part in a turn in ascending order */
        /* PostgreSQL: also takes part in every turn another writer asked for, unless already in
         * the one before it still in flight (its stage may add nothing), so what it reads sees
         * what they wrote in the same transaction. */
        bool passenger;
        /* Owned by txn.c. */
        bool wanted, in_turn;
        struct txn_turn *turn; /* PostgreSQL: the turn it takes part in */
        int result;
        size_t first, n_stmts; /* PostgreSQL: where its statements are in the batch */
        struct txn_writer *next;
};

int txn_new(sd_event *event, struct ledger *ledger, struct metrics *metrics, struct txn **ret);
/* The same on PostgreSQL: turns go through conn (its only user while available; the caller
 * may use it for other batches, such as the schema's migration, while not). Writers must
 * provide stage (and read, to see results). While not available, or with conn not connected,
 * a turn's writers hear -ENOTCONN at once; a turn whose batch failed hears its error
 * (-ECONNRESET also for an unknown outcome: the connection went during COMMIT). depth: how
 * many turns may be in flight at once (1 or 2, and conn made for as many): with 2, the next
 * turn's batch is sent while the server still works on the one before, pipelined behind it, so
 * the loop builds and answers one turn while the server runs the other. A writer takes part
 * in one turn at a time: while its turn is in flight, what it stages waits for the next. */
int txn_new_pg(sd_event *event, struct pgconn *conn, unsigned depth, struct metrics *metrics,
               struct txn **ret);
void txn_set_available(struct txn *t, bool available);
/* PostgreSQL: a batch (or the ROLLBACK after a failed one) is in flight on the connection. */
bool txn_busy(const struct txn *t);
/* PostgreSQL: the turns sent and not yet answered (0 on SQLite). */
unsigned txn_in_flight(const struct txn *t);
struct txn *txn_free(struct txn *t);

void txn_add_writer(struct txn *t, struct txn_writer *w);
void txn_remove_writer(struct txn *t, struct txn_writer *w);

/* Asks for w to take part in the next turn (or the current one, see apply). */
void txn_want(struct txn *t, struct txn_writer *w);
