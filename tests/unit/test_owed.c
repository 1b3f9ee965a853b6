/* test_owed.c: the owed `accepted` entries: found by creation id, out in acceptance order when
 * due, the cap, and a long random run checked against a plain list. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "owed.h"

static void test_take_by_id(void **state)
{
        struct owed *o;
        struct owed_entry e, ev;
        assert_int_equal(owed_new(1024, &o), 0);
        assert_int_equal(owed_take(o, "c1", &e), 0);
        assert_int_equal(owed_add(o, "c1", "t1", 1000, 50, &ev), 0);
        assert_int_equal(owed_add(o, "c2", "t1", 1001, 51, &ev), 0);
        assert_int_equal(owed_count(o), 2);
        assert_int_equal(owed_take(o, "c3", &e), 0);
        assert_int_equal(owed_take(o, "c2", &e), 1);
        assert_string_equal(e.creation_id, "c2");
        assert_string_equal(e.source_task_id, "t1");
        assert_int_equal(e.accepted_at, 1001);
        assert_int_equal(e.due, 51);
        owed_entry_clear(&e);
        /* Taken once: gone. */
        assert_int_equal(owed_take(o, "c2", &e), 0);
        assert_int_equal(owed_count(o), 1);
        assert_int_equal(owed_take(o, "c1", &e), 1);
        assert_string_equal(e.source_task_id, "t1");
        owed_entry_clear(&e);
        assert_int_equal(owed_count(o), 0);
        owed_free(o);
}

static void test_due_in_order_past_holes(void **state)
{
        struct owed *o;
        struct owed_entry e, ev;
        uint64_t t;
        assert_int_equal(owed_new(1024, &o), 0);
        assert_false(owed_next_due(o, &t));
        assert_int_equal(owed_add(o, "a", "ta", 1, 100, &ev), 0);
        assert_int_equal(owed_add(o, "b", "tb", 2, 200, &ev), 0);
        assert_int_equal(owed_add(o, "c", "tc", 3, 300, &ev), 0);
        assert_true(owed_next_due(o, &t));
        assert_int_equal(t, 100);
        assert_int_equal(owed_pop_due(o, 99, &e), 0);
        /* The oldest folded: the next one is b. */
        assert_int_equal(owed_take(o, "a", &e), 1);
        owed_entry_clear(&e);
        assert_true(owed_next_due(o, &t));
        assert_int_equal(t, 200);
        /* A hole in the middle is skipped. */
        assert_int_equal(owed_take(o, "b", &e), 1);
        owed_entry_clear(&e);
        assert_true(owed_next_due(o, &t));
        assert_int_equal(t, 300);
        assert_int_equal(owed_add(o, "d", "td", 4, 400, &ev), 0);
        assert_int_equal(owed_pop_due(o, 350, &e), 1);
        assert_string_equal(e.creation_id, "c");
        assert_string_equal(e.source_task_id, "tc");
        owed_entry_clear(&e);
        assert_int_equal(owed_pop_due(o, 350, &e), 0);
        assert_int_equal(owed_pop_due(o, UINT64_MAX, &e), 1);
        assert_string_equal(e.creation_id, "d");
        owed_entry_clear(&e);
        assert_false(owed_next_due(o, &t));
        owed_free(o);
}

static void test_cap_evicts_oldest(void **state)
{
        struct owed *o;
        struct owed_entry e, ev;
        char id[16];
        assert_int_equal(owed_new(4, &o), 0);
        for (int i = 0; i < 4; i++) {
                snprintf(id, sizeof(id), "c%d", i);
                assert_int_equal(owed_add(o, id, "t", (uint64_t)i, (uint64_t)i, &ev), 0);
        }
        /* Full: the oldest comes out to be written at once. */
        assert_int_equal(owed_add(o, "c4", "t", 4, 4, &ev), 1);
        assert_string_equal(ev.creation_id, "c0");
        owed_entry_clear(&ev);
        assert_int_equal(owed_count(o), 4);
        assert_int_equal(owed_take(o, "c0", &e), 0);
        /* A hole makes room without evicting anything. */
        assert_int_equal(owed_take(o, "c2", &e), 1);
        owed_entry_clear(&e);
        assert_int_equal(owed_add(o, "c5", "t", 5, 5, &ev), 0);
        assert_int_equal(owed_count(o), 4);
        const char *want[] = {"c1", "c3", "c4", "c5"};
        for (size_t i = 0; i < 4; i++) {
                assert_int_equal(owed_pop_due(o, UINT64_MAX, &e), 1);
                assert_string_equal(e.creation_id, want[i]);
                owed_entry_clear(&e);
        }
        assert_int_equal(owed_count(o), 0);
        owed_free(o);
}

/* A plain model: ids in order, each owed or not. */
struct model {
        char (*id)[16];
        bool *owed;
        size_t n, first;
};

/* Adds, takes of recent ids (owed or not), and pops of what is older than `lag`; returns how many
 * adds evicted. */
static size_t random_run(size_t max, uint64_t lag, unsigned seed)
{
        enum { OPS = 200000 };
        const size_t MAX = max;
        size_t evictions = 0;
        struct owed *o;
        struct owed_entry e, ev;
        struct model m = {.id = calloc(OPS, 16), .owed = calloc(OPS, sizeof(bool))};
        assert_non_null(m.id);
        assert_non_null(m.owed);
        assert_int_equal(owed_new(MAX, &o), 0);
        srandom(seed);
        size_t count = 0;
        for (size_t op = 0; op < OPS; op++) {
                long r = random() % 100;
                if (r < 50) {
                        snprintf(m.id[m.n], 16, "x%zu", m.n);
                        int a = owed_add(o, m.id[m.n], "t", m.n, m.n, &ev);
                        if (count == MAX) {
                                /* Evicts the oldest owed one. */
                                assert_int_equal(a, 1);
                                evictions++;
                                while (!m.owed[m.first])
                                        m.first++;
                                assert_string_equal(ev.creation_id, m.id[m.first]);
                                m.owed[m.first] = false;
                                owed_entry_clear(&ev);
                                count--;
                        } else
                                assert_int_equal(a, 0);
                        m.owed[m.n++] = true;
                        count++;
                } else if (r < 85 && m.n > 0) {
                        /* Take a recent one, owed or not. */
                        size_t back = (size_t)random() % (m.n < 3000 ? m.n : 3000);
                        size_t k = m.n - 1 - back;
                        int t = owed_take(o, m.id[k], &e);
                        assert_int_equal(t, m.owed[k] ? 1 : 0);
                        if (t) {
                                assert_string_equal(e.creation_id, m.id[k]);
                                assert_int_equal(e.accepted_at, k);
                                owed_entry_clear(&e);
                                m.owed[k] = false;
                                count--;
                        }
                } else {
                        /* Pop what is due up to a point. */
                        uint64_t now = m.n > lag ? m.n - lag : 0;
                        while (owed_pop_due(o, now, &e) == 1) {
                                while (!m.owed[m.first])
                                        m.first++;
                                assert_string_equal(e.creation_id, m.id[m.first]);
                                assert_true(e.due <= now);
                                m.owed[m.first] = false;
                                owed_entry_clear(&e);
                                count--;
                        }
                        uint64_t t;
                        if (owed_next_due(o, &t))
                                assert_true(t > now);
                }
                assert_int_equal(owed_count(o), count);
        }
        /* Every owed one is still found by its id. */
        for (size_t k = 0; k < m.n; k++)
                if (m.owed[k]) {
                        assert_int_equal(owed_take(o, m.id[k], &e), 1);
                        owed_entry_clear(&e);
                }
        assert_int_equal(owed_count(o), 0);
        owed_free(o);
        free(m.id);
        free(m.owed);
        return evictions;
}

static void test_random_against_model(void **state)
{
        /* Mostly due before the cap... */
        assert_int_equal(random_run(1024, 500, 31), 0);
        /* ...and mostly at it. */
        assert_true(random_run(256, 5000, 7) > 1000);
}

static void test_free_with_entries(void **state)
{
        struct owed *o;
        struct owed_entry ev;
        char id[16];
        assert_int_equal(owed_new(65536, &o), 0);
        for (int i = 0; i < 5000; i++) {
                snprintf(id, sizeof(id), "c%d", i);
                assert_int_equal(owed_add(o, id, "t", 0, 0, &ev), 0);
        }
        assert_int_equal(owed_count(o), 5000);
        assert_null(owed_free(o));
        assert_null(owed_free(NULL));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_take_by_id),
            cmocka_unit_test(test_due_in_order_past_holes),
            cmocka_unit_test(test_cap_evicts_oldest),
            cmocka_unit_test(test_random_against_model),
            cmocka_unit_test(test_free_with_entries),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
