/* test_jsonptr.c: RFC 6901 pointers: escapes, arrays, strings that hold JSON, type mismatches,
 * malformed pointers. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "jsonptr.h"

static const char doc[] =
    "{\"id\":\"811\",\"settings\":{\"model\":\"viduq1\",\"duration\":8},"
    "\"a/b\":1,\"m~n\":2,\"~01\":3,\"\":4,\"x\":{\"\":5},"
    "\"creations\":[{\"id\":\"c0\",\"type\":\"video\"},{\"id\":\"c1\"}],"
    "\"payload\":\"{\\\"upscale\\\":true,\\\"tags\\\":[\\\"a\\\",\\\"b\\\"],"
    "\\\"inner\\\":\\\"{\\\\\\\"deep\\\\\\\":7}\\\"}\","
    "\"plain\":\"not json\",\"num\":1.5,\"nul\":null,\"t\":true,\"arr\":[10,[20,21]]}";

static json_object *root;

static int setup(void **state)
{
        root = json_tokener_parse(doc);
        return root ? 0 : -1;
}

static int teardown(void **state)
{
        json_object_put(root);
        return 0;
}

/* The text found at ptr, or NULL when nothing is there. */
static char *get(const char *ptr)
{
        json_object *v = (json_object *)0x1;
        int r = jsonptr_get(root, ptr, 32, &v);
        assert_true(r == 0 || r == 1);
        if (r == 0)
                return NULL;
        char *s = strdup(jsonptr_text(v));
        json_object_put(v);
        return s;
}

static void expect(const char *ptr, const char *want)
{
        char *got = get(ptr);
        if (!want) {
                if (got)
                        fail_msg("%s found %s, expected nothing", ptr, got);
                return;
        }
        if (!got)
                fail_msg("%s found nothing, expected %s", ptr, want);
        assert_string_equal(got, want);
        free(got);
}

static void test_members_and_escapes(void **state)
{
        expect("/settings/model", "viduq1");
        expect("/settings/duration", "8");
        expect("/a~1b", "1");
        expect("/m~0n", "2");
        expect("/~001", "3"); /* ~0 first, then the 1: "~01", not "~/" */
        expect("/", "4");     /* the member named "" */
        expect("/x/", "5");
        expect("/num", "1.5");
        expect("/t", "true");
        expect("/nul", "null"); /* a null member is there */
        expect("/missing", NULL);
        expect("/settings/missing", NULL);
        expect("/a/b", NULL); /* "/" separates: a then b, neither there */
        char *whole = get("");
        assert_non_null(whole);
        assert_true(strncmp(whole, "{\"id\":\"811\"", 11) == 0);
        free(whole);
}

static void test_arrays(void **state)
{
        expect("/creations/0/id", "c0");
        expect("/creations/1/id", "c1");
        expect("/creations/1/type", NULL);
        expect("/creations/2", NULL);  /* past the end */
        expect("/creations/-", NULL);  /* the element after the last: nothing */
        expect("/creations/01", NULL); /* leading zero */
        expect("/creations/-1", NULL);
        expect("/creations/1e0", NULL);
        expect("/creations/ 0", NULL);
        expect("/creations/99999999999999999999", NULL);
        expect("/arr/1/1", "21");
        expect("/arr/0", "10");
        expect("/arr", "[10,[20,21]]");
}

static void test_strings_holding_json(void **state)
{
        expect("/payload/upscale", "true");
        expect("/payload/tags/1", "b");
        expect("/payload/inner/deep", "7"); /* a string in a string */
        expect("/payload/missing", NULL);
        /* Ending at the string gives the string itself. */
        char *p = get("/payload");
        assert_non_null(p);
        assert_true(strncmp(p, "{\"upscale\":true", 15) == 0);
        free(p);
        expect("/plain/x", NULL); /* a string that is not JSON */
        expect("/id/0", NULL);    /* "811" parses as a number, not a container */
}

static void test_string_json_edge_cases(void **state)
{
        json_object *o = json_tokener_parse(
            "{\"trail\":\"{\\\"a\\\":1} x\",\"cut\":\"{\\\"a\\\":\",\"sp\":\"  [1,2] \","
            "\"deep\":\"[[[[[[[[1]]]]]]]]\",\"loose\":\"{a:1}\"}");
        assert_non_null(o);
        json_object *v = NULL;
        assert_int_equal(jsonptr_get(o, "/trail/a", 32, &v), 0); /* trailing data */
        assert_int_equal(jsonptr_get(o, "/cut/a", 32, &v), 0);   /* truncated */
        assert_int_equal(jsonptr_get(o, "/loose/a", 32, &v), 0); /* not strict JSON */
        assert_int_equal(jsonptr_get(o, "/sp/1", 32, &v), 1);    /* blanks around it */
        assert_string_equal(jsonptr_text(v), "2");
        json_object_put(v);
        /* Nested deeper than the depth allowed: not parsed, so not found. */
        assert_int_equal(jsonptr_get(o, "/deep/0/0/0/0/0/0/0/0", 2, &v), 0);
        assert_int_equal(jsonptr_get(o, "/deep/0/0/0/0/0/0/0/0", 32, &v), 1);
        assert_string_equal(jsonptr_text(v), "1");
        json_object_put(v);
        json_object_put(o);
}

/* A token that does not fit the value's type names nothing. */
static void test_type_mismatches(void **state)
{
        expect("/settings/0", NULL);   /* an index into an object: a member named "0" */
        expect("/creations/id", NULL); /* a name into an array */
        expect("/num/x", NULL);
        expect("/t/x", NULL);
        expect("/nul/x", NULL);
        expect("/settings/duration/0", NULL);
}

static void test_found_value_outlives_the_parse(void **state)
{
        json_object *v = NULL;
        assert_int_equal(jsonptr_get(root, "/payload/tags", 32, &v), 1);
        /* The parsed payload is gone; the array the caller holds is not. */
        assert_true(json_object_is_type(v, json_type_array));
        assert_int_equal(json_object_array_length(v), 2);
        assert_string_equal(json_object_get_string(json_object_array_get_idx(v, 0)), "a");
        json_object_put(v);
}

static void test_malformed_pointers(void **state)
{
        const char *bad[] = {"settings", "a/b", "/a~", "/a~2", "/~x", "/a\tb", "/a\nb", "~0"};
        json_object *v = NULL;
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                const char *why = NULL;
                assert_int_equal(jsonptr_check(bad[i], &why), -EINVAL);
                assert_non_null(why);
                assert_int_equal(jsonptr_get(root, bad[i], 32, &v), -EINVAL);
        }
        char longp[JSONPTR_MAX + 2];
        memset(longp, 'a', sizeof(longp));
        longp[0] = '/';
        longp[sizeof(longp) - 1] = 0;
        assert_int_equal(jsonptr_check(longp, NULL), -EINVAL);
        assert_int_equal(jsonptr_check("", NULL), 0);
        assert_int_equal(jsonptr_check("/", NULL), 0);
        assert_int_equal(jsonptr_check("/~0~1/x", NULL), 0);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_members_and_escapes),
            cmocka_unit_test(test_arrays),
            cmocka_unit_test(test_strings_holding_json),
            cmocka_unit_test(test_string_json_edge_cases),
            cmocka_unit_test(test_type_mismatches),
            cmocka_unit_test(test_found_value_outlives_the_parse),
            cmocka_unit_test(test_malformed_pointers),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
