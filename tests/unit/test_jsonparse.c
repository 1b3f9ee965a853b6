/* test_jsonparse.c: the kept tokeners parse each text as a new one would, whatever the text
 * before them left behind (an error, a truncated text, another depth). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "jsonparse.h"

static enum json_tokener_error parse(const char *text, int depth, int flags, json_object **ret)
{
        enum json_tokener_error err = json_tokener_success;
        size_t used = 0;
        assert_int_equal(json_parse_text(text, strlen(text), depth, flags, ret, &err, &used), 0);
        if (err == json_tokener_success)
                assert_true(used > 0);
        return err;
}

/* A value comes back whole; the parse ends after it and the blanks behind it, before whatever
 * else the text holds (which the caller refuses). */
static void test_parses_a_value(void **state)
{
        json_object *o;
        size_t used = 0;
        enum json_tokener_error err;
        const char *text = "{\"id\":\"811\",\"n\":[1,2]}   x";
        assert_int_equal(json_parse_text(text, strlen(text), 8, 0, &o, &err, &used), 0);
        assert_int_equal(err, json_tokener_success);
        assert_int_equal(used, strlen(text) - 1);
        json_object *v;
        assert_true(json_object_object_get_ex(o, "id", &v));
        assert_string_equal(json_object_get_string(v), "811");
        json_object_put(o);
}

/* After a syntax error, a truncated text and a too-deep one, the next text parses. */
static void test_a_failed_parse_leaves_nothing_behind(void **state)
{
        json_object *o;
        assert_int_equal(parse("{\"a\": tru}", 8, 0, &o), json_tokener_error_parse_boolean);
        assert_null(o);
        assert_int_equal(parse("{\"a\": [1, 2", 8, 0, &o), json_tokener_continue);
        assert_null(o);
        /* Were the truncated text still pending, this would be read as its continuation. */
        assert_int_equal(parse("{\"b\": 3}", 8, 0, &o), json_tokener_success);
        json_object *v;
        assert_false(json_object_object_get_ex(o, "a", &v));
        assert_true(json_object_object_get_ex(o, "b", &v));
        assert_int_equal(json_object_get_int(v), 3);
        json_object_put(o);
        assert_int_equal(parse("[[[[[[[[[[1]]]]]]]]]]", 4, 0, &o), json_tokener_error_depth);
        assert_null(o);
        assert_int_equal(parse("[[1]]", 4, 0, &o), json_tokener_success);
        json_object_put(o);
}

/* Each depth keeps its own limit, however the parsers take turns, and flags apply per parse. */
static void test_depths_and_flags_are_per_parse(void **state)
{
        json_object *o;
        const char *deep = "[[[[[[1]]]]]]"; /* 6 levels */
        for (int round = 0; round < 3; round++) {
                assert_int_equal(parse(deep, 4, 0, &o), json_tokener_error_depth);
                assert_int_equal(parse(deep, 32, 0, &o), json_tokener_success);
                json_object_put(o);
                assert_int_equal(parse(deep, 66, 0, &o), json_tokener_success);
                json_object_put(o);
        }
        /* Strict refuses what the lenient parse takes: a single-quoted string. */
        assert_int_equal(parse("['x']", 8, 0, &o), json_tokener_success);
        json_object_put(o);
        assert_int_not_equal(parse("['x']", 8, JSON_TOKENER_STRICT, &o), json_tokener_success);
        assert_null(o);
        assert_int_equal(parse("['x']", 8, 0, &o), json_tokener_success);
        json_object_put(o);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parses_a_value),
            cmocka_unit_test(test_a_failed_parse_leaves_nothing_behind),
            cmocka_unit_test(test_depths_and_flags_are_per_parse),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
