/* test_pgschema.c: the PostgreSQL ledger's pure parts: text array literals, job rows read back,
 * connection strings checked; the rest runs against a real server in test_pgledger.py. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "pgconn.h"
#include "pgschema.h"

static void check_array(const char *const *values, size_t n, const char *want)
{
        char *got = NULL;
        assert_int_equal(pgschema_text_array(values, n, &got), 0);
        assert_string_equal(got, want);
        free(got);
}

static void test_text_array(void **state)
{
        check_array(NULL, 0, "{}");
        check_array((const char *[]){"1"}, 1, "{\"1\"}");
        check_array((const char *[]){"a", NULL, ""}, 3, "{\"a\",NULL,\"\"}");
        /* Quotes and backslashes escaped; commas, braces and spaces safe inside quotes. */
        check_array((const char *[]){"x\"y", "b\\s", "{,} NULL"}, 3,
                    "{\"x\\\"y\",\"b\\\\s\",\"{,} NULL\"}");
}

static PGresult *job_result(const char *const values[PGSCHEMA_JOB_NCOLUMNS])
{
        PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
        PGresAttDesc attrs[PGSCHEMA_JOB_NCOLUMNS];
        memset(attrs, 0, sizeof(attrs));
        for (int i = 0; i < PGSCHEMA_JOB_NCOLUMNS; i++) {
                attrs[i].name = (char *)"c";
                attrs[i].typlen = -1;
        }
        assert_true(PQsetResultAttrs(res, PGSCHEMA_JOB_NCOLUMNS, attrs));
        for (int i = 0; i < PGSCHEMA_JOB_NCOLUMNS; i++)
                /* len -1: NULL */
                assert_true(PQsetvalue(res, 0, i, (char *)values[i],
                                       values[i] ? (int)strlen(values[i]) : -1));
        return res;
}

static void test_row_to_job(void **state)
{
        const char *v[PGSCHEMA_JOB_NCOLUMNS] = {"812345678901234567",
                                                "src-1",
                                                NULL,
                                                "submitting",
                                                "2",
                                                "1700000000000001",
                                                NULL,
                                                "busy",
                                                NULL,
                                                "1700000000000000",
                                                "1700000000000002",
                                                "host:42",
                                                "7",
                                                "1700000030000000",
                                                "8",
                                                NULL};
        PGresult *res = job_result(v);
        struct job j;
        struct pgschema_claim cl;
        assert_int_equal(pgschema_row_to_job(res, 0, 0, &j, &cl), 0);
        assert_string_equal(j.creation_id, "812345678901234567");
        assert_string_equal(j.source_task_id, "src-1");
        assert_string_equal(j.upscale_task_id, "");
        assert_int_equal(j.state, JOB_SUBMITTING);
        assert_int_equal(j.attempt, 2);
        assert_true(j.next_at == 1700000000000001ULL);
        assert_int_equal(j.http_status, 0);
        assert_string_equal(j.upstream_error, "busy");
        assert_true(j.created_at == 1700000000000000ULL);
        assert_true(j.updated_at == 1700000000000002ULL);
        assert_string_equal(cl.claimed_by, "host:42");
        assert_true(cl.seq == 7);
        assert_true(cl.lease_until == 1700000030000000LL);
        assert_int_equal(j.duration, 8);
        assert_true(j.credits == -1); /* NULL: unknown */
        /* Not enough columns from there, or no such row: refused, not read past. */
        assert_int_equal(pgschema_row_to_job(res, 0, 1, &j, NULL), -EBADMSG);
        assert_int_equal(pgschema_row_to_job(res, 1, 0, &j, NULL), -EBADMSG);
        PQclear(res);
}

static void test_conninfo_checked(void **state)
{
        char *err = NULL;
        assert_int_equal(pgconn_check_conninfo("host=/run/postgresql dbname=vidu", NULL), 0);
        assert_int_equal(pgconn_check_conninfo(
                             "postgresql://vidu@db.example.com/vidu?sslmode=verify-full", NULL),
                         0);
        assert_int_equal(pgconn_check_conninfo("hots=x", &err), -EINVAL);
        assert_non_null(err);
        assert_non_null(strstr(err, "hots"));
        assert_null(strchr(err, '\n'));
        free(err);
        err = NULL;
        assert_int_equal(pgconn_check_conninfo("postgresql://vidu@[::1/x", &err), -EINVAL);
        free(err);
        struct pgconn *c = NULL;
        assert_int_equal(pgconn_new(NULL, &(struct pgconn_options){.conninfo = ""}, NULL, NULL, &c),
                         -EINVAL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_text_array),
            cmocka_unit_test(test_row_to_job),
            cmocka_unit_test(test_conninfo_checked),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
