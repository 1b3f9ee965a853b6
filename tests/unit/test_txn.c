/* test_txn.c: the shared group commit: writers that asked share one transaction per loop turn, a
 * later writer joins the turn an earlier one asks it into, and a writer whose part fails is
 * rolled back alone while the others commit. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ledger.h"
#include "txn.h"
#include "util.h"

static char dir[64];
static char path[256];

struct part {
        struct ledger *ledger;
        struct txn *txn;
        struct txn_writer writer;
        struct part *then;  /* asked into the same turn from apply */
        const char *insert; /* a creation id to record */
        bool clash;         /* then give it an upscale id another job already has */
        int applied, done_calls, done_r;
};

static int part_apply(void *userdata, uint64_t now)
{
        struct part *p = userdata;
        p->applied++;
        int r = ledger_insert(p->ledger, p->insert, "src", now);
        if (r < 0)
                return r;
        if (p->clash) {
                struct job j;
                r = ledger_get(p->ledger, p->insert, &j);
                if (r <= 0)
                        return r < 0 ? r : -ENOENT;
                snprintf(j.upscale_task_id, sizeof(j.upscale_task_id), "taken");
                r = ledger_save(p->ledger, &j, now);
                if (r < 0)
                        return r;
        }
        if (p->then)
                txn_want(p->txn, &p->then->writer);
        return 0;
}

static void part_done(void *userdata, int r)
{
        struct part *p = userdata;
        p->done_calls++;
        p->done_r = r;
}

static int setup(void **state)
{
        snprintf(dir, sizeof(dir), "/tmp/vidu-txn-test-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(path, sizeof(path), "%s/ledger.db", dir);
        return 0;
}

static int teardown(void **state)
{
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

static void add(struct part *p, struct ledger *l, struct txn *t, int order, const char *id)
{
        *p = (struct part){.ledger = l, .txn = t, .insert = id};
        p->writer = (struct txn_writer){
            .apply = part_apply, .done = part_done, .userdata = p, .order = order};
        txn_add_writer(t, &p->writer);
}

static void run_turns(sd_event *e)
{
        /* Every enabled defer source runs once per sd_event_run; a few turns settle it all. */
        for (int i = 0; i < 4; i++)
                assert_true(sd_event_run(e, 0) >= 0);
}

static void test_one_turn_and_isolation(void **state)
{
        struct ledger_options o = {.synchronous_full = true, .busy_timeout_ms = 50};
        struct ledger *l = NULL;
        struct metrics m = {0};
        sd_event *e = NULL;
        struct txn *t = NULL;
        assert_int_equal(ledger_open(path, &o, &l, NULL), 0);
        assert_true(sd_event_new(&e) >= 0);
        assert_int_equal(txn_new(e, l, &m, &t), 0);

        /* A job that already holds the upscale id "taken". */
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "owner", "src", 1), 1);
        struct job j;
        assert_int_equal(ledger_get(l, "owner", &j), 1);
        snprintf(j.upscale_task_id, sizeof(j.upscale_task_id), "taken");
        assert_int_equal(ledger_save(l, &j, 1), 0);
        assert_int_equal(ledger_commit(l), 0);

        struct part a, b, c;
        add(&c, l, t, 2, "c"); /* added first, runs last */
        add(&a, l, t, 0, "a");
        add(&b, l, t, 1, "b");
        b.clash = true; /* fails on the unique upscale id */
        a.then = &c;    /* asks c into the same turn */
        txn_want(t, &a.writer);
        txn_want(t, &b.writer);
        /* The setup's commit above, made on this thread, was timed too. */
        uint64_t syncs = m.sync_seconds.count;
        double synced = m.sync_seconds.sum;
        run_turns(e);

        assert_int_equal(a.applied, 1);
        assert_int_equal(b.applied, 1);
        assert_int_equal(c.applied, 1);
        assert_int_equal(a.done_calls, 1);
        assert_int_equal(b.done_calls, 1);
        assert_int_equal(c.done_calls, 1);
        assert_int_equal(a.done_r, 0);
        assert_int_equal(b.done_r, -EEXIST);
        assert_int_equal(c.done_r, 0);
        /* One commit for the turn; b's part undone alone, its insert included. */
        assert_int_equal(m.commit_seconds.count, 1);
        /* Its fdatasync timed on its own, within the commit's time. */
        assert_int_equal(m.sync_seconds.count, syncs + 1);
        assert_true(m.sync_seconds.sum > synced &&
                    m.sync_seconds.sum - synced <= m.commit_seconds.sum);
        assert_int_equal(m.ledger_commit_errors, 1);
        assert_int_equal(ledger_get(l, "a", &j), 1);
        assert_int_equal(ledger_get(l, "c", &j), 1);
        assert_int_equal(ledger_get(l, "b", &j), 0);

        /* Nobody asked: no further turn, no commit. */
        run_turns(e);
        assert_int_equal(a.done_calls, 1);
        assert_int_equal(m.commit_seconds.count, 1);
        assert_int_equal(m.sync_seconds.count, syncs + 1);

        txn_remove_writer(t, &a.writer);
        txn_remove_writer(t, &b.writer);
        txn_remove_writer(t, &c.writer);
        txn_free(t);
        sd_event_unref(e);
        ledger_close(l);
}

static void test_locked_ledger_fails_the_whole_turn(void **state)
{
        struct ledger_options o = {.synchronous_full = true, .busy_timeout_ms = 10};
        struct ledger *l = NULL, *other = NULL;
        struct metrics m = {0};
        sd_event *e = NULL;
        struct txn *t = NULL;
        assert_int_equal(ledger_open(path, &o, &l, NULL), 0);
        assert_int_equal(ledger_open(path, &o, &other, NULL), 0);
        assert_true(sd_event_new(&e) >= 0);
        assert_int_equal(txn_new(e, l, &m, &t), 0);
        struct part a;
        add(&a, l, t, 0, "x");
        assert_int_equal(ledger_begin(other), 0); /* holds the write lock */
        txn_want(t, &a.writer);
        run_turns(e);
        assert_int_equal(a.applied, 0); /* the transaction never began */
        assert_int_equal(a.done_calls, 1);
        assert_int_equal(a.done_r, -EBUSY);
        ledger_rollback(other);
        txn_want(t, &a.writer);
        run_turns(e);
        assert_int_equal(a.done_r, 0);
        struct job j;
        assert_int_equal(ledger_get(l, "x", &j), 1);
        txn_remove_writer(t, &a.writer);
        txn_free(t);
        sd_event_unref(e);
        ledger_close(other);
        ledger_close(l);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_one_turn_and_isolation, setup, teardown),
            cmocka_unit_test_setup_teardown(test_locked_ledger_fails_the_whole_turn, setup,
                                            teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
