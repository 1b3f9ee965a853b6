/* test_jsonw.c: jsonw's strings are the bytes json-c's plain output gives for the same string. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "json_c_text.h"
#include "jsonw.h"

static void expect_same(const char *s)
{
        size_t max = jsonw_string_max(s);
        char *buf = malloc(max + 1);
        size_t o = 0;
        jsonw_string(buf, &o, s);
        assert_true(o <= max);
        buf[o] = 0;
        char *want = json_c_string(s);
        assert_string_equal(buf, want);
        free(want);
        free(buf);
}

/* Every byte from 1 to 255 alone, and all of them in one string (the worst case for the size). */
static void test_every_byte_as_json_c_writes_it(void **state)
{
        char all[256];
        for (int c = 1; c < 256; c++) {
                char one[2] = {(char)c, 0};
                expect_same(one);
                all[c - 1] = (char)c;
        }
        all[255] = 0;
        expect_same(all);
        expect_same("");
        expect_same("2370483030340581");
        expect_same("a/b \"c\" \\d\n\x01\x1f é");
        char ctl[64];
        memset(ctl, 0x01, sizeof(ctl) - 1);
        ctl[sizeof(ctl) - 1] = 0;
        size_t o = 0;
        char *buf = malloc(jsonw_string_max(ctl));
        jsonw_string(buf, &o, ctl);
        assert_int_equal(o, jsonw_string_max(ctl)); /* every byte escaped: the bound is exact */
        free(buf);
}

static void test_raw_appends(void **state)
{
        char buf[32];
        size_t o = 0;
        jsonw_raw(buf, &o, "{\"a\":");
        jsonw_string(buf, &o, "x");
        jsonw_raw(buf, &o, "}");
        buf[o] = 0;
        assert_string_equal(buf, "{\"a\":\"x\"}");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_every_byte_as_json_c_writes_it),
            cmocka_unit_test(test_raw_appends),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
