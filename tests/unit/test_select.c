/* test_select.c: the selection rules: every malformed form is refused with a reason, and rules,
 * type lists and their defaults decide as documented. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "select.h"

static void parse_ok(const char *text, const char *normalized, enum select_op op, size_t n_values)
{
        struct select_rule r;
        const char *why = NULL;
        int e = select_rule_parse(text, &r, &why);
        if (e != 0)
                fail_msg("'%s' refused: %s", text, why ? why : "?");
        assert_string_equal(r.text, normalized);
        assert_int_equal(r.op, op);
        assert_int_equal(r.n_values, n_values);
        select_rule_clear(&r);
}

static void test_parse_forms(void **state)
{
        parse_ok("/settings/model = viduq1", "/settings/model = viduq1", SELECT_EQ, 1);
        parse_ok("  /settings/model   !=\tvidu-1  ", "/settings/model != vidu-1", SELECT_NE, 1);
        parse_ok("/settings/model in vidu-1  viduq1", "/settings/model in vidu-1 viduq1", SELECT_IN,
                 2);
        parse_ok("/payload/upscale exists", "/payload/upscale exists", SELECT_EXISTS, 0);
        parse_ok("/payload/skip !exists", "/payload/skip !exists", SELECT_NOT_EXISTS, 0);
        /* = takes the rest of the text, spaces and all. */
        parse_ok("/prompt = a cat  on a mat", "/prompt = a cat  on a mat", SELECT_EQ, 1);
        parse_ok("/a~1b/~0 = 1", "/a~1b/~0 = 1", SELECT_EQ, 1);
}

static void parse_bad(const char *text)
{
        struct select_rule r = {.text = (char *)"untouched"};
        const char *why = NULL;
        if (select_rule_parse(text, &r, &why) != -EINVAL)
                fail_msg("'%s' accepted", text);
        assert_non_null(why);
        assert_string_equal(r.text, "untouched");
}

static void test_parse_malformed(void **state)
{
        parse_bad("");
        parse_bad("   ");
        parse_bad("/settings/model");           /* no operator */
        parse_bad("/settings/model=viduq1");    /* no spaces: one word, no operator */
        parse_bad("/settings/model == viduq1"); /* unknown operator */
        parse_bad("/settings/model ~ viduq1");
        parse_bad("/settings/model IN a b"); /* operators are lower case */
        parse_bad("/settings/model =");      /* no value */
        parse_bad("/settings/model !=   ");
        parse_bad("/settings/model in");         /* in without values */
        parse_bad("/settings/model exists yes"); /* exists takes none */
        parse_bad("/settings/model !exists x");
        parse_bad("settings/model = x"); /* not a pointer */
        parse_bad("/a~2 = x");           /* bad escape */
        parse_bad("/a~ exists");
        parse_bad("/a = x\ny"); /* control character */
        parse_bad(" = x");      /* no pointer */
}

static json_object *task;

static int setup(void **state)
{
        task = json_tokener_parse(
            "{\"id\":\"t1\",\"type\":\"img2video\",\"settings\":{\"model\":\"viduq1\","
            "\"duration\":8,\"hd\":true,\"opts\":{\"a\":1}},"
            "\"payload\":\"{\\\"upscale\\\":true,\\\"who\\\":\\\"ci\\\",\\\"n\\\":null}\","
            "\"prompt\":\"a cat on a mat\",\"flag\":\"true\",\"bad\":\"a\\u0000b\","
            "\"creations\":[{\"id\":\"c1\",\"grade\":\"A\"}]}");
        return task ? 0 : -1;
}

static int teardown(void **state)
{
        json_object_put(task);
        return 0;
}

static int eval(const char *text)
{
        struct select_rule r;
        const char *why = NULL;
        if (select_rule_parse(text, &r, &why) != 0)
                fail_msg("'%s' refused: %s", text, why);
        int v = select_rule_eval(&r, task, 32);
        select_rule_clear(&r);
        assert_true(v == 0 || v == 1);
        return v;
}

static void test_eval(void **state)
{
        assert_true(eval("/settings/model = viduq1"));
        assert_false(eval("/settings/model = vidu-1"));
        assert_true(eval("/settings/model != vidu-1"));
        assert_false(eval("/settings/model != viduq1"));
        assert_true(eval("/settings/model in vidu-1 viduq1"));
        assert_false(eval("/settings/model in vidu-1 vidu2"));
        assert_true(eval("/settings/duration = 8"));
        assert_false(eval("/settings/duration = 08"));
        assert_true(eval("/settings/hd = true"));
        assert_true(eval("/flag = true")); /* the string "true" too: strings without quotes */
        assert_false(eval("/flag = \"true\""));
        assert_true(eval("/prompt = a cat on a mat"));
        assert_true(eval("/creations/0/grade = A"));
        assert_true(eval("/creations/0/grade in B A"));
        assert_false(eval("/creations/1/grade = A"));
        /* Inside the string payload. */
        assert_true(eval("/payload/upscale = true"));
        assert_true(eval("/payload/who in ci prod"));
        assert_true(eval("/payload/upscale exists"));
        assert_true(eval("/payload/n exists")); /* a null is there */
        assert_true(eval("/payload/n = null"));
        assert_false(eval("/payload/skip exists"));
        assert_true(eval("/payload/skip !exists"));
        assert_false(eval("/payload/upscale !exists"));
        /* Missing: = and in do not hold, != does. */
        assert_false(eval("/nothing = x"));
        assert_false(eval("/nothing in x y"));
        assert_true(eval("/nothing != x"));
}

/* A value of an unexpected type does not match, and nothing fails. */
static void test_eval_unexpected_types(void **state)
{
        assert_false(eval("/settings/opts = {\"a\":1}")); /* containers never compare equal */
        assert_false(eval("/settings = x"));
        assert_false(eval("/settings/model/x = 1")); /* through a string that is not JSON */
        assert_false(eval("/settings/duration/0 exists"));
        assert_false(eval("/bad = a")); /* a NUL inside never matches */
        assert_false(eval("/creations/x exists"));
}

static void test_types(void **state)
{
        struct select_types t;
        const char *why = NULL;
        assert_int_equal(select_types_parse(SELECT_DEFAULT_TASK_TYPES, &t, &why), 0);
        assert_true(select_types_match(&t, "text2video"));
        assert_true(select_types_match(&t, "start-end2video"));
        assert_true(select_types_match(&t, "future2video")); /* any type ending in 2video */
        assert_true(select_types_match(&t, NULL));           /* no type: passes */
        assert_false(select_types_match(&t, "text2image"));
        assert_false(select_types_match(&t, "text2audio"));
        assert_false(select_types_match(&t, "2vide"));
        assert_false(select_types_match(&t, "upscale"));
        char *s = select_types_format(&t);
        assert_string_equal(s, SELECT_DEFAULT_TASK_TYPES);
        free(s);
        select_types_clear(&t);

        assert_int_equal(select_types_parse(" * ", &t, &why), 0);
        assert_true(select_types_match(&t, "text2image"));
        assert_true(select_types_match(&t, ""));
        select_types_clear(&t);

        assert_int_equal(select_types_parse("video  image", &t, &why), 0);
        assert_int_equal(t.n, 2);
        assert_true(select_types_match(&t, "image"));
        assert_false(select_types_match(&t, "audio"));
        select_types_clear(&t);

        assert_int_equal(select_types_parse("", &t, &why), -EINVAL);
        assert_int_equal(select_types_parse("   ", &t, &why), -EINVAL);
        assert_int_equal(select_types_parse("video vi*deo", &t, &why), -EINVAL);
        assert_int_equal(select_types_parse("video*", &t, &why), -EINVAL);
        assert_int_equal(select_types_parse("a\tb\n", &t, &why), -EINVAL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_parse_forms), cmocka_unit_test(test_parse_malformed),
            cmocka_unit_test(test_eval),        cmocka_unit_test(test_eval_unexpected_types),
            cmocka_unit_test(test_types),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
