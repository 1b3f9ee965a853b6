/* test_conninfo.c: every place a libpq connection string can carry a password is masked, and
 * nothing else of it changes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "conninfo.h"

static void expect(const char *in, int want_r, const char *want)
{
        char *out = NULL;
        int r = conninfo_mask(in, &out);
        if (r != want_r)
                fail_msg("conninfo_mask(\"%s\") = %d, expected %d", in, r, want_r);
        if (want) {
                assert_non_null(out);
                if (strcmp(out, want) != 0)
                        fail_msg("conninfo_mask(\"%s\") = \"%s\", expected \"%s\"", in, out, want);
        } else
                assert_null(out);
        free(out);
}

static void test_uri(void **state)
{
        expect("postgresql://vidu@db.example.com/vidu?sslmode=verify-full", 0,
               "postgresql://vidu@db.example.com/vidu?sslmode=verify-full");
        expect("postgresql://vidu:s3cr%40t@db.example.com:5433/vidu", 1,
               "postgresql://vidu:(set)@db.example.com:5433/vidu");
        expect("postgres://u:p@h1,h2:5433/d?target_session_attrs=read-write", 1,
               "postgres://u:(set)@h1,h2:5433/d?target_session_attrs=read-write");
        /* The last '@' of the authority ends the userinfo. */
        expect("postgresql://u:a@b@h/d", 1, "postgresql://u:(set)@h/d");
        expect("postgresql://u:@h", 1, "postgresql://u:(set)@h");
        expect("postgresql:///vidu?host=/run/postgresql&password=pw&user=u", 1,
               "postgresql:///vidu?host=/run/postgresql&password=(set)&user=u");
        /* Parameter names are percent-decoded by libpq, so here too. */
        expect("postgresql://h/d?pass%77ord=pw", 1, "postgresql://h/d?pass%77ord=(set)");
        expect("postgresql://u:p@h/d?password=q", 1, "postgresql://u:(set)@h/d?password=(set)");
        /* '@' after the path is not userinfo. */
        expect("postgresql://h/d@x:y", 0, "postgresql://h/d@x:y");
        expect("postgresql://", 0, "postgresql://");
}

static void test_keywords(void **state)
{
        expect("host=/tmp dbname=vidu", 0, "host=/tmp dbname=vidu");
        expect("host=/tmp password=pw dbname=vidu", 1, "host=/tmp password=(set) dbname=vidu");
        expect("password = 'a b\\' c' host=h", 1, "password = (set) host=h");
        expect("password=a\\ b host=h", 1, "password=(set) host=h");
        expect("  password=x", 1, "  password=(set)");
        expect("passwordx=1 password=", 1, "passwordx=1 password=(set)");
        expect("", 0, "");
        /* Unreadable: nothing of it is shown. */
        expect("host=h password", -EINVAL, NULL);
        expect("password='unterminated host=h", -EINVAL, NULL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_uri),
            cmocka_unit_test(test_keywords),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
