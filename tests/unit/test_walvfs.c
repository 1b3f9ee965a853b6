/* test_walvfs.c: the WAL-gathering VFS: one write a commit, every commit visible to another
 * connection and durable once committed, large and spilled transactions, and the ledger using it
 * only when it syncs every commit, and the syncs timed for the thread that asked. */
#include <setjmp.h>
#include <stdbool.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <pthread.h>

#include "ledger.h"
#include "walvfs.h"

static char dir[] = "/tmp/vidu-walvfs-test-XXXXXX";
static char path[256];

static int setup(void **state)
{
        strcpy(dir, "/tmp/vidu-walvfs-test-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(path, sizeof(path), "%s/t.db", dir);
        return walvfs_register() == SQLITE_OK ? 0 : -1;
}

static int teardown(void **state)
{
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

static void exec_ok(sqlite3 *db, const char *sql)
{
        char *err = NULL;
        if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
                fail_msg("%s: %s", sql, err);
}

static sqlite3 *open_db(const char *vfs)
{
        sqlite3 *db = NULL;
        assert_int_equal(
            sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs), SQLITE_OK);
        exec_ok(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;");
        return db;
}

static sqlite3_int64 one_int(sqlite3 *db, const char *sql)
{
        sqlite3_stmt *s = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        sqlite3_int64 v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
        return v;
}

static void assert_intact(sqlite3 *db)
{
        sqlite3_stmt *s = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &s, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        assert_string_equal((const char *)sqlite3_column_text(s, 0), "ok");
        sqlite3_finalize(s);
}

/* ROWS rows of 500 bytes from FIRST, in one transaction. */
static void rows_sql(char *sql, size_t n, int first, int rows)
{
        snprintf(sql, n,
                 "WITH RECURSIVE n(i) AS (SELECT %d UNION ALL SELECT i + 1 FROM n WHERE i < %d) "
                 "INSERT INTO t SELECT i, randomblob(500) FROM n",
                 first, first + rows - 1);
}

static void insert_rows(sqlite3 *db, int first, int rows)
{
        char sql[256];
        rows_sql(sql, sizeof(sql), first, rows);
        exec_ok(db, sql);
}

static void test_one_write_a_commit_seen_by_others(void **state)
{
        sqlite3 *db = open_db(WALVFS_NAME);
        sqlite3 *other = open_db(NULL);
        exec_ok(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)");
        for (int round = 0; round < 5; round++) {
                struct walvfs_stats a, b;
                walvfs_get_stats(&a);
                exec_ok(db, "BEGIN");
                insert_rows(db, round * 100, 100); /* about 13 pages */
                exec_ok(db, "COMMIT");
                walvfs_get_stats(&b);
                /* Two writes a frame asked for; one made. */
                assert_true(b.writes_asked - a.writes_asked >= 20);
                assert_int_equal(b.writes_made - a.writes_made, 1);
                /* Published only after it reached the file: a connection of its own sees it. */
                assert_int_equal(one_int(other, "SELECT count(*) FROM t"), (round + 1) * 100);
        }
        assert_intact(other);
        sqlite3_close(other);
        sqlite3_close(db);
}

static void test_large_and_spilled_transactions(void **state)
{
        sqlite3 *db = open_db(WALVFS_NAME);
        exec_ok(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)");
        /* A small page cache spills a big transaction's pages to the WAL before its commit, and
         * reads them back from there. */
        exec_ok(db, "PRAGMA cache_size = 20");
        struct walvfs_stats a, b;
        walvfs_get_stats(&a);
        exec_ok(db, "BEGIN");
        insert_rows(db, 0, 4000); /* about 2 MB: more than one held write */
        assert_int_equal(one_int(db, "SELECT count(*) FROM t"), 4000);
        assert_int_equal(one_int(db, "SELECT sum(length(v)) FROM t"), 4000 * 500);
        exec_ok(db, "ROLLBACK");
        walvfs_get_stats(&b);
        assert_true(b.writes_made - a.writes_made >= 8);
        assert_int_equal(one_int(db, "SELECT count(*) FROM t"), 0);

        exec_ok(db, "BEGIN");
        insert_rows(db, 0, 4000);
        exec_ok(db, "COMMIT");
        sqlite3_close(db);
        sqlite3 *other = open_db(NULL);
        assert_int_equal(one_int(other, "SELECT count(*) FROM t"), 4000);
        assert_intact(other);
        sqlite3_close(other);
}

/* In a child that dies without closing, from a fresh connection: ROWS rows from FIRST, committed
 * or not. No cmocka there: a failure is the exit status. */
static void die_after(int first, int rows, bool commit)
{
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                sqlite3 *c = NULL;
                char sql[256];
                bool ok =
                    sqlite3_open_v2(path, &c, SQLITE_OPEN_READWRITE, WALVFS_NAME) == SQLITE_OK;
                ok = ok && sqlite3_exec(c,
                                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
                                        "PRAGMA cache_size = 20; BEGIN",
                                        NULL, NULL, NULL) == SQLITE_OK;
                rows_sql(sql, sizeof(sql), first, rows);
                ok = ok && sqlite3_exec(c, sql, NULL, NULL, NULL) == SQLITE_OK;
                if (commit)
                        ok = ok && sqlite3_exec(c, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
                _exit(ok ? 0 : 1);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* What a process committed is in the file when it dies right after; what it had not committed,
 * even spilled to the WAL, is not. */
static void test_commit_survives_a_crash(void **state)
{
        sqlite3 *db = open_db(WALVFS_NAME);
        exec_ok(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)");
        sqlite3_close(db);
        die_after(0, 300, true);
        die_after(1000, 3000, false);
        sqlite3 *other = open_db(NULL);
        assert_int_equal(one_int(other, "SELECT count(*) FROM t"), 300);
        assert_intact(other);
        sqlite3_close(other);
}

static int commit_writes(bool synchronous_full)
{
        struct ledger_options o = {.synchronous_full = synchronous_full, .busy_timeout_ms = 100};
        struct ledger *l = NULL;
        char *err = NULL;
        if (ledger_open(path, &o, &l, &err) < 0)
                fail_msg("ledger_open: %s", err);
        struct walvfs_stats a, b;
        walvfs_get_stats(&a);
        assert_int_equal(ledger_begin(l), 0);
        for (int i = 0; i < 50; i++) {
                char id[32];
                snprintf(id, sizeof(id), "%d%lld", synchronous_full, 2370483030340000LL + i);
                assert_int_equal(ledger_insert(l, id, "2369218477629212", 1000), 1);
        }
        assert_int_equal(ledger_commit(l), 0);
        walvfs_get_stats(&b);
        ledger_close(l);
        return (int)(b.writes_made - a.writes_made);
}

static void test_ledger_gathers_only_when_syncing_every_commit(void **state)
{
        assert_int_equal(commit_writes(true), 1);
        assert_int_equal(commit_writes(false), 0);
}

struct synced {
        int calls;
};

static void count_sync(void *userdata, uint64_t usec)
{
        struct synced *s = userdata;
        s->calls++;
}

static void *commit_on_other_thread(void *arg)
{
        sqlite3 *db = arg;
        exec_ok(db, "INSERT INTO t VALUES (1000, x'00')");
        return NULL;
}

static void test_syncs_timed_for_the_thread_that_asked(void **state)
{
        sqlite3 *db = open_db(WALVFS_NAME);
        exec_ok(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)");
        struct synced s = {0};
        walvfs_observe_syncs(count_sync, &s);
        for (int round = 0; round < 3; round++) {
                exec_ok(db, "BEGIN");
                insert_rows(db, round * 10, 10);
                exec_ok(db, "COMMIT");
                assert_int_equal(s.calls, round + 1); /* one fdatasync a commit */
        }
        /* A read syncs nothing. */
        assert_int_equal(one_int(db, "SELECT count(*) FROM t"), 30);
        assert_int_equal(s.calls, 3);
        /* Another thread's commit (the checkpointer's syncs, say) is not this thread's. */
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, commit_on_other_thread, db), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_int_equal(one_int(db, "SELECT count(*) FROM t"), 31);
        assert_int_equal(s.calls, 3);
        /* Stopped: no more calls. */
        walvfs_observe_syncs(NULL, NULL);
        insert_rows(db, 100, 10);
        assert_int_equal(s.calls, 3);
        sqlite3_close(db);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_one_write_a_commit_seen_by_others, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_large_and_spilled_transactions, setup, teardown),
            cmocka_unit_test_setup_teardown(test_commit_survives_a_crash, setup, teardown),
            cmocka_unit_test_setup_teardown(test_ledger_gathers_only_when_syncing_every_commit,
                                            setup, teardown),
            cmocka_unit_test_setup_teardown(test_syncs_timed_for_the_thread_that_asked, setup,
                                            teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
