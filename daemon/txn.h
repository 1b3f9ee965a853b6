/* txn.h: one ledger transaction per turn of the event loop, shared by every writer (the webhook's
 * staged notifications, the dispatcher's transitions), so durability costs one commit per turn
 * however much was staged, and a notification's job can be marked `submitting` in the very
 * commit that records it. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "ledger.h"
#include "metrics.h"

struct txn;

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
        void *userdata;
        int order; /* writers take part in a turn in ascending order */
        /* Owned by txn.c. */
        bool wanted, in_turn;
        int result;
        struct txn_writer *next;
};

int txn_new(sd_event *event, struct ledger *ledger, struct metrics *metrics, struct txn **ret);
struct txn *txn_free(struct txn *t);

void txn_add_writer(struct txn *t, struct txn_writer *w);
void txn_remove_writer(struct txn *t, struct txn_writer *w);

/* Asks for w to take part in the next turn (or the current one, see apply). */
void txn_want(struct txn *t, struct txn_writer *w);
