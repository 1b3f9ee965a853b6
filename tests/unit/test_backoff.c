/* test_backoff.c: backoff bounds and growth, Retry-After in seconds and as HTTP dates. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "backoff.h"
#include "util.h"

static void test_backoff_grows_and_caps(void **state)
{
        uint64_t initial = 5 * USEC_PER_SEC, max = 3600 * USEC_PER_SEC;
        /* random = 2^31 is the middle of the jitter range: exactly the base delay. */
        assert_int_equal(backoff_delay(1, initial, max, 1u << 31), initial);
        assert_int_equal(backoff_delay(2, initial, max, 1u << 31), 2 * initial);
        assert_int_equal(backoff_delay(3, initial, max, 1u << 31), 4 * initial);
        assert_int_equal(backoff_delay(30, initial, max, 1u << 31), max);
        assert_int_equal(backoff_delay(1000, initial, max, 0xffffffffu), max);
}

static void test_backoff_jitter_stays_in_bounds(void **state)
{
        uint64_t initial = 100 * USEC_PER_MSEC, max = 10 * USEC_PER_SEC;
        for (unsigned attempt = 1; attempt < 20; attempt++)
                for (uint32_t r = 0; r < 0xffff0000u; r += 0x0fffffffu) {
                        uint64_t d = backoff_delay(attempt, initial, max, r);
                        assert_true(d >= initial);
                        assert_true(d <= max);
                }
        /* Jitter spreads: the lowest and highest draws differ for a mid-range attempt. */
        assert_true(backoff_delay(3, initial, max, 0) <
                    backoff_delay(3, initial, max, 0xffffffffu));
}

static void test_retry_after_seconds(void **state)
{
        uint64_t d;
        assert_int_equal(backoff_parse_retry_after("120", 0, &d), 0);
        assert_int_equal(d, 120 * USEC_PER_SEC);
        assert_int_equal(backoff_parse_retry_after("0", 0, &d), 0);
        assert_int_equal(d, 0);
        assert_int_equal(backoff_parse_retry_after("99999999", 0, &d), 0);
        assert_int_equal(d, 86400 * USEC_PER_SEC);
        assert_int_equal(backoff_parse_retry_after("-1", 0, &d), -EINVAL);
        assert_int_equal(backoff_parse_retry_after("1.5", 0, &d), -EINVAL);
        assert_int_equal(backoff_parse_retry_after("", 0, &d), -EINVAL);
        assert_int_equal(backoff_parse_retry_after(NULL, 0, &d), -EINVAL);
        assert_int_equal(backoff_parse_retry_after("soon", 0, &d), -EINVAL);
}

static void test_retry_after_dates(void **state)
{
        uint64_t d;
        int64_t t;
        /* 1994-11-06 08:49:37 UTC = 784111777 */
        assert_int_equal(backoff_parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", &t), 0);
        assert_int_equal(t, 784111777);
        assert_int_equal(backoff_parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", &t), 0);
        assert_int_equal(t, 784111777);
        assert_int_equal(backoff_parse_http_date("Sun Nov  6 08:49:37 1994", &t), 0);
        assert_int_equal(t, 784111777);
        assert_int_equal(backoff_parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT", &t), -EINVAL);
        assert_int_equal(backoff_parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT", &t), -EINVAL);
        assert_int_equal(backoff_parse_http_date("Sun, 06 Nov 1994 08:49:37 CET", &t), -EINVAL);

        uint64_t now = (uint64_t)784111777 * USEC_PER_SEC - 30 * USEC_PER_SEC;
        assert_int_equal(backoff_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now, &d), 0);
        assert_int_equal(d, 30 * USEC_PER_SEC);
        /* A date in the past means: now. */
        assert_int_equal(
            backoff_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 60 * USEC_PER_SEC, &d),
            0);
        assert_int_equal(d, 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_backoff_grows_and_caps),
            cmocka_unit_test(test_backoff_jitter_stays_in_bounds),
            cmocka_unit_test(test_retry_after_seconds),
            cmocka_unit_test(test_retry_after_dates),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
