/* test_budget.c: the spend guard's arithmetic: room left in each rolling window, unknown costs
 * counted as assumed_credits, and when a full window frees room (the dispatcher's wake-up time). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "budget.h"

#define H BUDGET_HOUR_USEC
#define D BUDGET_DAY_USEC

static struct budget_limits limits(uint64_t per_hour, uint64_t per_day, uint64_t credits,
                                   uint64_t assumed)
{
        return (struct budget_limits){.per_hour = per_hour,
                                      .per_day = per_day,
                                      .credits_per_day = credits,
                                      .assumed_credits = assumed,
                                      .hour_usec = H,
                                      .day_usec = D};
}

static void test_room(void **state)
{
        enum budget_window full = _BUDGET_WINDOW_MAX;
        struct budget_limits none = limits(0, 0, 0, 0);
        struct ledger_spend used = {.hour = 100, .day = 1000, .day_credits = 5000};
        assert_false(budget_enabled(&none));
        assert_true(budget_room(&none, &used, &full) == BUDGET_UNLIMITED);
        assert_true(budget_remaining(&none, &used, BUDGET_WINDOW_HOUR) == BUDGET_UNLIMITED);

        struct budget_limits l = limits(3, 10, 0, 0);
        assert_true(budget_enabled(&l));
        used = (struct ledger_spend){.hour = 1, .day = 8};
        assert_int_equal(budget_room(&l, &used, &full), 2); /* the hour's 2 < the day's 2 */
        used.day = 9;
        assert_int_equal(budget_room(&l, &used, &full), 1); /* the day's is smaller */
        used.hour = 3;
        assert_int_equal(budget_room(&l, &used, &full), 0);
        assert_int_equal(full, BUDGET_WINDOW_HOUR);
        used = (struct ledger_spend){.hour = 0, .day = 12}; /* over (a limit lowered): none */
        assert_int_equal(budget_room(&l, &used, &full), 0);
        assert_int_equal(full, BUDGET_WINDOW_DAY);
        assert_int_equal(budget_remaining(&l, &used, BUDGET_WINDOW_DAY), 0);
        assert_int_equal(budget_remaining(&l, &used, BUDGET_WINDOW_HOUR), 3);
}

static void test_credits_room(void **state)
{
        enum budget_window full = _BUDGET_WINDOW_MAX;
        /* Unknown costs not counted: any number may leave while the window is not full. */
        struct budget_limits l = limits(0, 0, 10, 0);
        struct ledger_spend used = {.day_credits = 9};
        assert_true(budget_room(&l, &used, &full) == BUDGET_UNLIMITED);
        assert_int_equal(budget_remaining(&l, &used, BUDGET_WINDOW_CREDITS_DAY), 1);
        used.day_credits = 10;
        assert_int_equal(budget_room(&l, &used, &full), 0);
        assert_int_equal(full, BUDGET_WINDOW_CREDITS_DAY);
        /* Each unknown cost counted as 4: 10 left lets 3 leave (the third may go over). */
        l = limits(0, 0, 10, 4);
        used.day_credits = 0;
        assert_int_equal(budget_room(&l, &used, &full), 3);
        used.day_credits = 8;
        assert_int_equal(budget_room(&l, &used, &full), 1);
        /* With a submission window too, the smaller wins. */
        l = limits(0, 2, 100, 1);
        used = (struct ledger_spend){.day = 1, .day_credits = 0};
        assert_int_equal(budget_room(&l, &used, &full), 1);
}

struct sub {
        uint64_t at;
        int64_t credits;
};

static uint64_t free_at(const struct budget_limits *l, const struct ledger_spend *used,
                        uint64_t now, const struct sub *subs, size_t n)
{
        struct budget_scan s;
        budget_scan_init(&s, l, used, now);
        for (size_t i = 0; i < n; i++)
                if (budget_scan_feed(&s, subs[i].at, subs[i].credits))
                        break;
        return budget_scan_result(&s);
}

static void test_free_at(void **state)
{
        uint64_t now = 10 * D;
        /* Hourly limit 3, three in the hour: room when the oldest of them is an hour old. */
        struct budget_limits l = limits(3, 0, 0, 0);
        struct sub subs[] = {{now - D + 5, -1},
                             {now - 50 * 60 * 1000000ULL, -1},
                             {now - 10 * 1000000ULL, -1},
                             {now - 5 * 1000000ULL, -1}};
        struct ledger_spend used = {.hour = 3, .day = 4};
        assert_int_equal(free_at(&l, &used, now, subs, 4), subs[1].at + H);
        /* Limit lowered to 2 with 3 in the hour: two must age out. */
        l.per_hour = 2;
        assert_int_equal(free_at(&l, &used, now, subs, 4), subs[2].at + H);
        /* Daily limit 4 with 4 in the day: the oldest's time plus a day. */
        l = limits(0, 4, 0, 0);
        assert_int_equal(free_at(&l, &used, now, subs, 4), subs[0].at + D);
        /* Both full: the later of the two. */
        l = limits(3, 4, 0, 0);
        assert_int_equal(free_at(&l, &used, now, subs, 4), subs[1].at + H);
        l = limits(3, 2, 0, 0);
        assert_int_equal(free_at(&l, &used, now, subs, 4), subs[2].at + D);
        /* A window the submissions do not explain (the counts changed meanwhile): a whole
         * window from now, never earlier than now. */
        l = limits(3, 0, 0, 0);
        assert_int_equal(free_at(&l, &used, now, subs, 0), now + H);
        l = limits(0, 0, 0, 0);
        assert_int_equal(free_at(&l, &used, now, subs, 4), now);
}

static void test_credits_free_at(void **state)
{
        uint64_t now = 10 * D;
        /* 4 + 4 + unknown(=2) + 4 = 14 of 10: room once 14 - gone < 10, after the second. */
        struct budget_limits l = limits(0, 0, 10, 2);
        struct sub subs[] = {{now - 20 * H, 4}, {now - 10 * H, 4}, {now - 2 * H, -1}, {now - H, 4}};
        struct ledger_spend used = {.day = 4, .day_credits = 14};
        assert_int_equal(free_at(&l, &used, now, subs, 4), subs[1].at + D);
        /* Exactly at the limit (10 of 10): one aging out is enough. */
        used.day_credits = 10;
        l.assumed_credits = 0;
        struct sub subs2[] = {{now - 20 * H, 4}, {now - 10 * H, 6}};
        assert_int_equal(free_at(&l, &used, now, subs2, 2), subs2[0].at + D);
}

static void test_window_names(void **state)
{
        assert_string_equal(budget_window_to_string(BUDGET_WINDOW_HOUR), "hour");
        assert_string_equal(budget_window_to_string(BUDGET_WINDOW_DAY), "day");
        assert_string_equal(budget_window_to_string(BUDGET_WINDOW_CREDITS_DAY), "credits_day");
        assert_string_equal(budget_window_to_string(_BUDGET_WINDOW_MAX), "unknown");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_room),         cmocka_unit_test(test_credits_room),
            cmocka_unit_test(test_free_at),      cmocka_unit_test(test_credits_free_at),
            cmocka_unit_test(test_window_names),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
