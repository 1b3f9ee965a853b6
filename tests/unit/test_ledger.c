/* test_ledger.c: the SQLite ledger: duplicates, restart, migrations, due jobs, counters, replay
 * memory, and a damaged file refused. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "control.h"
#include "ledger.h"
#include "util.h"

static char dir[] = "/tmp/vidu-ledger-test-XXXXXX";
static char path[256];

static const struct ledger_options opts = {
    .synchronous_full = true, .busy_timeout_ms = 100, .integrity_check = true};

static int setup(void **state)
{
        strcpy(dir, "/tmp/vidu-ledger-test-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(path, sizeof(path), "%s/ledger.db", dir);
        return 0;
}

static int teardown(void **state)
{
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

static struct ledger *open_ok(void)
{
        struct ledger *l = NULL;
        char *err = NULL;
        int r = ledger_open(path, &opts, &l, &err);
        if (r < 0)
                fail_msg("ledger_open: %s", err);
        return l;
}

static void test_insert_and_duplicate_across_restart(void **state)
{
        struct ledger *l = open_ok();
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "2370483030340581", "2369218477629212", 1000), 1);
        assert_int_equal(ledger_insert(l, "2370483030340581", "other", 2000), 0);
        assert_int_equal(ledger_insert(l, "2370483030340582", "2369218477629212", 1000), 1);
        assert_int_equal(ledger_commit(l), 0);
        ledger_close(l);

        l = open_ok();
        struct job j;
        assert_int_equal(ledger_get(l, "2370483030340581", &j), 1);
        assert_string_equal(j.source_task_id, "2369218477629212");
        assert_int_equal(j.state, JOB_PENDING);
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "2370483030340581", "x", 3000), 0);
        assert_int_equal(ledger_commit(l), 0);
        assert_int_equal(ledger_get(l, "nope", &j), 0);
        ledger_close(l);
}

static void test_rollback_leaves_nothing(void **state)
{
        struct ledger *l = open_ok();
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "a1", "t", 1), 1);
        ledger_rollback(l);
        struct job j;
        assert_int_equal(ledger_get(l, "a1", &j), 0);
        ledger_close(l);
}

static void test_due_and_counts(void **state)
{
        struct ledger *l = open_ok();
        struct job jobs[8], j;
        uint64_t counts[_JOB_STATE_MAX], next;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "c1", "t", 100), 1);
        assert_int_equal(ledger_insert(l, "c2", "t", 200), 1);
        assert_int_equal(ledger_insert(l, "c3", "t", 300), 1);
        assert_int_equal(ledger_commit(l), 0);

        assert_int_equal(ledger_due(l, LEDGER_DUE_SUBMIT, 250, jobs, 8), 2);
        assert_string_equal(jobs[0].creation_id, "c1");
        assert_string_equal(jobs[1].creation_id, "c2");
        assert_int_equal(ledger_next_due(l, LEDGER_DUE_SUBMIT, &next), 1);
        assert_int_equal(next, 100);
        assert_int_equal(ledger_next_due(l, LEDGER_DUE_POLL, &next), 0);

        assert_int_equal(ledger_begin(l), 0);
        jobs[0].state = JOB_SUBMITTED;
        jobs[0].attempt = 1;
        jobs[0].next_at = 5000;
        strcpy(jobs[0].upscale_task_id, "up-1");
        assert_int_equal(ledger_save(l, &jobs[0], 400), 0);
        jobs[1].state = JOB_DEAD;
        assert_int_equal(ledger_save(l, &jobs[1], 400), 0);
        assert_int_equal(ledger_commit(l), 0);

        assert_int_equal(ledger_get_by_upscale(l, "up-1", &j), 1);
        assert_string_equal(j.creation_id, "c1");
        assert_int_equal(j.attempt, 1);
        assert_int_equal(ledger_due(l, LEDGER_DUE_POLL, 4999, jobs, 8), 0);
        assert_int_equal(ledger_due(l, LEDGER_DUE_POLL, 5000, jobs, 8), 1);
        assert_int_equal(ledger_count_states(l, counts), 0);
        assert_int_equal(counts[JOB_PENDING], 1);
        assert_int_equal(counts[JOB_SUBMITTED], 1);
        assert_int_equal(counts[JOB_DEAD], 1);
        assert_int_equal(counts[JOB_SUCCEEDED], 0);
        ledger_close(l);
}

static void expect_counts(struct ledger *l, uint64_t pending, uint64_t submitting,
                          uint64_t submitted, uint64_t dead)
{
        uint64_t counts[_JOB_STATE_MAX];
        assert_int_equal(ledger_count_states(l, counts), 0);
        assert_int_equal(counts[JOB_PENDING], pending);
        assert_int_equal(counts[JOB_SUBMITTING], submitting);
        assert_int_equal(counts[JOB_SUBMITTED], submitted);
        assert_int_equal(counts[JOB_DEAD], dead);
}

/* The counters are written once per commit from what inserts and saves changed: a savepoint
 * rolled back or a transaction rolled back takes its changes back, and a save counts from the
 * state the ledger holds, not the one the caller last read. */
static void test_counts_follow_commits_savepoints_and_rollbacks(void **state)
{
        struct ledger *l = open_ok();
        struct job a, stale;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "a", "src", 1), 1);
        assert_int_equal(ledger_insert(l, "b", "src", 1), 1);
        assert_int_equal(ledger_insert(l, "a", "src", 1), 0); /* a duplicate counts nothing */
        expect_counts(l, 0, 0, 0, 0);                         /* nothing written before COMMIT */
        assert_int_equal(ledger_savepoint(l), 0);
        assert_int_equal(ledger_get(l, "a", &a), 1);
        a.state = JOB_SUBMITTING;
        assert_int_equal(ledger_save(l, &a, 2), 0);
        assert_int_equal(ledger_insert(l, "c", "src", 2), 1);
        assert_int_equal(ledger_rollback_to(l), 0);
        assert_int_equal(ledger_commit(l), 0);
        expect_counts(l, 2, 0, 0, 0);

        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_get(l, "a", &a), 1);
        a.state = JOB_DEAD;
        assert_int_equal(ledger_save(l, &a, 3), 0);
        ledger_rollback(l);
        expect_counts(l, 2, 0, 0, 0);

        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_get(l, "a", &a), 1);
        stale = a;
        a.state = JOB_SUBMITTED;
        assert_int_equal(ledger_save(l, &a, 4), 0);
        a.state = JOB_SUBMITTED; /* no change of state: no change of count */
        assert_int_equal(ledger_save(l, &a, 5), 0);
        stale.state = JOB_DEAD; /* saved from a copy read while it was pending */
        assert_int_equal(ledger_save(l, &stale, 6), 0);
        assert_int_equal(ledger_commit(l), 0);
        expect_counts(l, 1, 0, 0, 1);

        /* Outside a transaction each statement counts at once. */
        assert_int_equal(ledger_insert(l, "d", "src", 7), 1);
        expect_counts(l, 2, 0, 0, 1);
        ledger_close(l);
        l = open_ok(); /* what was counted is on disk */
        expect_counts(l, 2, 0, 0, 1);
        ledger_close(l);
}

/* A save from a known state: the job and the counters as ledger_save leaves them, and a job no
 * longer in the state the caller names still counted from the one the ledger holds. */
static void test_save_from_a_known_state(void **state)
{
        struct ledger *l = open_ok();
        struct job a, b, got;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "a", "src", 1), 1);
        assert_int_equal(ledger_insert(l, "b", "src", 1), 1);
        assert_int_equal(ledger_get(l, "a", &a), 1);
        a.state = JOB_SUBMITTING;
        a.attempt = 1;
        a.next_at = 42;
        assert_int_equal(ledger_save_from(l, &a, JOB_PENDING, 2), 0);
        a.state = JOB_SUBMITTED;
        job_set_field(a.upscale_task_id, sizeof(a.upscale_task_id), "2371000000000001");
        assert_int_equal(ledger_save_from(l, &a, JOB_SUBMITTING, 3), 0);
        assert_int_equal(ledger_commit(l), 0);
        expect_counts(l, 1, 0, 1, 0);
        assert_int_equal(ledger_get(l, "a", &got), 1);
        assert_int_equal(got.state, JOB_SUBMITTED);
        assert_int_equal(got.attempt, 1);
        assert_int_equal(got.next_at, 42);
        assert_string_equal(got.upscale_task_id, "2371000000000001");
        assert_int_equal(got.updated_at, 3);

        /* b is pending; the caller believes it submitting (an operator changed it meanwhile). */
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_get(l, "b", &b), 1);
        b.state = JOB_DEAD;
        assert_int_equal(ledger_save_from(l, &b, JOB_SUBMITTING, 4), 0);
        assert_int_equal(ledger_commit(l), 0);
        expect_counts(l, 0, 0, 1, 1);
        assert_int_equal(ledger_get(l, "b", &got), 1);
        assert_int_equal(got.state, JOB_DEAD);
        ledger_close(l);
}

/* A guarded save from a copy older than the ledger's row: saved and counted while the state
 * matches; a job changed meanwhile, or gone, left exactly as it is; an upscale task id that is
 * already another job's refused as -EEXIST, nothing written, the transaction still usable. */
static void test_save_if_leaves_a_changed_job_alone(void **state)
{
        struct ledger *l = open_ok();
        struct job a, b, copy, got;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "a", "src", 1), 1);
        assert_int_equal(ledger_insert(l, "b", "src", 1), 1);
        assert_int_equal(ledger_get(l, "a", &a), 1);
        a.state = JOB_SUBMITTED;
        job_set_field(a.upscale_task_id, sizeof(a.upscale_task_id), "2371000000000001");
        assert_int_equal(ledger_save_if(l, &a, JOB_PENDING, 2), 1);
        assert_int_equal(ledger_commit(l), 0);
        expect_counts(l, 1, 0, 1, 0);

        /* b marked submitting; an operator abandons it before the answer comes. */
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_get(l, "b", &b), 1);
        b.state = JOB_SUBMITTING;
        b.attempt = 1;
        assert_int_equal(ledger_save_if(l, &b, JOB_PENDING, 3), 1);
        copy = b;
        b.state = JOB_DEAD;
        assert_int_equal(ledger_save_from(l, &b, JOB_SUBMITTING, 4), 0);
        copy.state = JOB_SUBMITTED;
        job_set_field(copy.upscale_task_id, sizeof(copy.upscale_task_id), "2371000000000002");
        assert_int_equal(ledger_save_if(l, &copy, JOB_SUBMITTING, 5), 0);
        assert_int_equal(ledger_commit(l), 0);
        expect_counts(l, 0, 0, 1, 1);
        assert_int_equal(ledger_get(l, "b", &got), 1);
        assert_int_equal(got.state, JOB_DEAD);
        assert_string_equal(got.upscale_task_id, "");
        assert_int_equal(got.updated_at, 4);

        /* b back to submitting; the answer names a's task. */
        assert_int_equal(ledger_begin(l), 0);
        b.state = JOB_SUBMITTING;
        assert_int_equal(ledger_save_if(l, &b, JOB_DEAD, 6), 1);
        copy = b;
        copy.state = JOB_SUBMITTED;
        job_set_field(copy.upscale_task_id, sizeof(copy.upscale_task_id), "2371000000000001");
        assert_int_equal(ledger_save_if(l, &copy, JOB_SUBMITTING, 7), -EEXIST);
        b.state = JOB_UNCERTAIN;
        assert_int_equal(ledger_save_if(l, &b, JOB_SUBMITTING, 8), 1);
        struct job none = b;
        job_set_field(none.creation_id, sizeof(none.creation_id), "never-recorded");
        assert_int_equal(ledger_save_if(l, &none, JOB_UNCERTAIN, 9), 0);
        assert_int_equal(ledger_commit(l), 0);
        assert_int_equal(ledger_get(l, "b", &got), 1);
        assert_int_equal(got.state, JOB_UNCERTAIN);
        assert_string_equal(got.upscale_task_id, "");
        assert_int_equal(ledger_get(l, "never-recorded", &got), 0);
        assert_int_equal(ledger_get_by_upscale(l, "2371000000000001", &got), 1);
        assert_string_equal(got.creation_id, "a");
        expect_counts(l, 0, 0, 1, 0);
        ledger_close(l);
}

/* A version-1 ledger counted with triggers; after the migration ledger.c counts instead, so
 * nothing is counted twice and what was counted before stays. */
static void test_migration_from_version_1_keeps_counts(void **state)
{
        struct ledger *l = open_ok();
        ledger_close(l);
        sqlite3 *db;
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(
            sqlite3_exec(db,
                         /* what later migrations add, so they run again */
                         "DROP INDEX jobs_submitting;"
                         "ALTER TABLE jobs DROP COLUMN duration;"
                         "DROP TABLE events;"
                         "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN"
                         "  UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END;"
                         "CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs"
                         "  WHEN OLD.state <> NEW.state BEGIN"
                         "  UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;"
                         "  UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END;"
                         "INSERT INTO jobs(creation_id, state, next_at, created_at, updated_at)"
                         "  VALUES ('old1', 'pending', 1, 1, 1), ('old2', 'pending', 1, 1, 1);"
                         "UPDATE jobs SET state = 'dead' WHERE creation_id = 'old2';"
                         /* what later migrations add */
                         "DROP TABLE submissions; ALTER TABLE jobs DROP COLUMN credits;"
                         "ALTER TABLE jobs DROP COLUMN payload;"
                         "PRAGMA user_version = 1;",
                         NULL, NULL, NULL),
            SQLITE_OK);
        sqlite3_close(db);
        l = open_ok();
        assert_int_equal(ledger_schema_version(l), 7);
        expect_counts(l, 1, 0, 0, 1);
        struct job j;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "new1", "src", 2), 1);
        assert_int_equal(ledger_get(l, "old1", &j), 1);
        j.state = JOB_SUBMITTED;
        assert_int_equal(ledger_save(l, &j, 2), 0);
        assert_int_equal(ledger_commit(l), 0);
        expect_counts(l, 1, 0, 1, 1);
        ledger_close(l);
}

/* The duration a job is recorded with comes back with it; one recorded without has none. */
static void test_duration_is_recorded(void **state)
{
        struct ledger *l = open_ok();
        struct job j;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert_job(l, "c8", "src", 8, NULL, 1), 1);
        assert_int_equal(ledger_insert_job(l, "c8", "src", 4, NULL, 2),
                         0); /* a duplicate keeps its own */
        assert_int_equal(ledger_insert(l, "c0", "src", 1), 1);
        assert_int_equal(ledger_commit(l), 0);
        ledger_close(l);
        l = open_ok();
        assert_int_equal(ledger_get(l, "c8", &j), 1);
        assert_int_equal(j.duration, 8);
        j.state = JOB_SUBMITTED;
        assert_int_equal(ledger_save(l, &j, 3), 0);
        assert_int_equal(ledger_get(l, "c8", &j), 1);
        assert_int_equal(j.duration, 8);
        assert_int_equal(ledger_get(l, "c0", &j), 1);
        assert_int_equal(j.duration, 0);
        ledger_close(l);
}

/* The source payload is kept as sent, read on demand, untouched by a duplicate, bounded. */
static void test_payload_kept_and_read_on_demand(void **state)
{
        struct ledger *l = open_ok();
        char *big = malloc(LEDGER_PAYLOAD_MAX + 2);
        assert_non_null(big);
        memset(big, 'x', LEDGER_PAYLOAD_MAX + 1);
        big[LEDGER_PAYLOAD_MAX + 1] = 0;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert_job(l, "p1", "src", 0, "{\"batch\": 7}\n\u00e9", 1), 1);
        assert_int_equal(ledger_insert_job(l, "p1", "src", 0, "other", 2), 0);
        assert_int_equal(ledger_insert_job(l, "p2", "src", 0, "", 1), 1);
        assert_int_equal(ledger_insert(l, "p3", "src", 1), 1);
        assert_int_equal(ledger_insert_job(l, "p4", "src", 0, big, 1), -E2BIG);
        big[LEDGER_PAYLOAD_MAX] = 0;
        assert_int_equal(ledger_insert_job(l, "p5", "src", 0, big, 1), 1);
        assert_int_equal(ledger_commit(l), 0);
        ledger_close(l);
        l = open_ok();
        char *p = NULL;
        assert_int_equal(ledger_get_payload(l, "p1", &p), 1);
        assert_string_equal(p, "{\"batch\": 7}\n\u00e9");
        free(p);
        p = NULL;
        assert_int_equal(ledger_get_payload(l, "p2", &p), 1);
        assert_string_equal(p, "");
        free(p);
        p = NULL;
        assert_int_equal(ledger_get_payload(l, "p3", &p), 0);
        assert_null(p);
        assert_int_equal(ledger_get_payload(l, "p4", &p), 0);
        assert_int_equal(ledger_get_payload(l, "nope", &p), 0);
        assert_int_equal(ledger_get_payload(l, "p5", &p), 1);
        assert_int_equal(strlen(p), LEDGER_PAYLOAD_MAX);
        free(p);
        free(big);
        ledger_close(l);
}

static void test_replay_memory(void **state)
{
        struct ledger *l = open_ok();
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_replay_remember(l, "swh:msg_1", 1000, 10), 1);
        assert_int_equal(ledger_replay_remember(l, "swh:msg_1", 1000, 20), 0);
        assert_int_equal(ledger_commit(l), 0);
        ledger_close(l);
        l = open_ok(); /* survives a restart */
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_replay_remember(l, "swh:msg_1", 1000, 30), 0);
        /* Expired: may be used again. */
        assert_int_equal(ledger_replay_remember(l, "swh:msg_1", 5000, 2000), 1);
        assert_int_equal(ledger_purge_replay(l, 10000), 0);
        assert_int_equal(ledger_replay_remember(l, "swh:msg_1", 20000, 10001), 1);
        assert_int_equal(ledger_commit(l), 0);
        ledger_close(l);
}

static void test_migration_from_empty_and_version(void **state)
{
        struct ledger *l = open_ok();
        assert_int_equal(ledger_schema_version(l), 7);
        ledger_close(l);
        /* A ledger from a newer daemon is refused, not downgraded. */
        sqlite3 *db;
        assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        struct ledger *l2 = NULL;
        char *err = NULL;
        assert_int_equal(ledger_open(path, &opts, &l2, &err), -EPROTO);
        assert_non_null(strstr(err, "newer"));
        free(err);
}

static void test_damaged_file_is_refused(void **state)
{
        int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
        assert_true(fd >= 0);
        const char junk[] = "this is not an sqlite database, just junk bytes that fill a page...";
        for (int i = 0; i < 100; i++)
                assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
        close(fd);
        struct ledger *l = NULL;
        char *err = NULL;
        assert_int_equal(ledger_open(path, &opts, &l, &err), -EUCLEAN);
        assert_non_null(strstr(err, path));
        assert_non_null(strstr(err, "damaged"));
        free(err);
        /* And the file is still there, untouched. */
        assert_int_equal(access(path, F_OK), 0);
}

static void count_checks(const char *p, void *userdata)
{
        (*(int *)userdata)++;
}

/* The integrity check runs at an open after anything but a clean close (the mark), and the open
 * takes the mark away, so that a process killed after it leads to a check again. */
static void test_integrity_check_unless_closed_clean(void **state)
{
        int checks = 0;
        struct ledger_options o = opts;
        o.checking = count_checks;
        o.checking_userdata = &checks;
        struct ledger *l = NULL;
        char *err = NULL;
        assert_int_equal(ledger_open(path, &o, &l, &err), 0); /* new: nothing vouches for it */
        assert_int_equal(checks, 1);
        ledger_close(l); /* not marked: as after a kill */
        assert_int_equal(ledger_open(path, &o, &l, &err), 0);
        assert_int_equal(checks, 2);
        assert_int_equal(ledger_mark_closed_clean(l), 0);
        ledger_close(l);
        assert_int_equal(ledger_open(path, &o, &l, &err), 0);
        assert_int_equal(checks, 2); /* spared */
        char v[8];
        assert_int_equal(ledger_meta_get(l, "closed_clean", v, sizeof(v)), 0); /* mark gone */
        ledger_close(l);
        assert_int_equal(ledger_open(path, &o, &l, &err), 0);
        assert_int_equal(checks, 3);
        ledger_close(l);
        /* Damage found while unmarked: refused as ever. */
        assert_int_equal(ledger_open(path, &o, &l, &err), 0);
        ledger_close(l);
        int fd = open(path, O_WRONLY);
        assert_true(fd >= 0);
        char junk[4096];
        memset(junk, 0x5a, sizeof(junk));
        assert_int_equal(pwrite(fd, junk, sizeof(junk), 4096), (ssize_t)sizeof(junk));
        close(fd);
        assert_int_equal(ledger_open(path, &o, &l, &err), -EUCLEAN);
        free(err);
}

static off_t file_size(const char *p)
{
        struct stat st;
        return stat(p, &st) == 0 ? st.st_size : -1;
}

/* With checkpoint_in_background the commit that passes 1000 WAL pages does not checkpoint; the
 * thread does: the database file grows (only a checkpoint writes it in WAL mode) while the
 * ledger stays usable, and the WAL's pages are all back in the database after a close. */
static void test_background_checkpoint(void **state)
{
        struct ledger_options o = opts;
        o.checkpoint_in_background = true;
        struct ledger *l = NULL;
        char *err = NULL;
        assert_int_equal(ledger_open(path, &o, &l, &err), 0);
        off_t before = file_size(path);
        char id[64];
        for (int t = 0; t < 60; t++) {
                assert_int_equal(ledger_begin(l), 0);
                for (int i = 0; i < 500; i++) {
                        snprintf(id, sizeof(id), "%d%08d", 7, t * 500 + i);
                        assert_int_equal(ledger_insert(l, id, "source-task", 1000), 1);
                }
                assert_int_equal(ledger_commit(l), 0);
        }
        /* The checkpoint runs on its own thread; poll for its effect. */
        for (int i = 0; i < 200 && file_size(path) <= before; i++)
                usleep(50 * 1000);
        assert_true(file_size(path) > before);
        struct job j;
        assert_int_equal(ledger_get(l, "700029999", &j), 1);
        ledger_close(l);
        char wal[300];
        snprintf(wal, sizeof(wal), "%s-wal", path);
        assert_true(file_size(wal) <= 0); /* checkpointed and removed at the last close */
        l = open_ok();
        assert_int_equal(ledger_get(l, "700029999", &j), 1);
        ledger_close(l);
}

/* preallocate_wal grows the WAL with zeros past what another connection committed and keeps
 * it: those commits survive, new ones land in the grown file, and a reopened ledger (recovering
 * the WAL) finds them all intact. */
static void test_preallocated_wal_keeps_every_commit(void **state)
{
        char wal[300];
        snprintf(wal, sizeof(wal), "%s-wal", path);
        struct ledger *a = open_ok();
        assert_int_equal(ledger_begin(a), 0);
        assert_int_equal(ledger_insert(a, "2370483030340591", "src", 1000), 1);
        assert_int_equal(ledger_commit(a), 0);
        off_t committed = file_size(wal);
        assert_true(committed > 0);

        struct ledger_options o = opts;
        o.preallocate_wal = true;
        struct ledger *b = NULL;
        char *err = NULL;
        assert_int_equal(ledger_open(path, &o, &b, &err), 0);
        off_t grown = file_size(wal);
        assert_true(grown >= 2 * 1000 * (4096 + 24));
        struct job j;
        assert_int_equal(ledger_get(b, "2370483030340591", &j), 1);
        assert_int_equal(ledger_begin(b), 0);
        assert_int_equal(ledger_insert(b, "2370483030340592", "src", 2000), 1);
        assert_int_equal(ledger_commit(b), 0);
        assert_int_equal(file_size(wal), grown); /* the commit overwrote, it did not append */
        assert_int_equal(ledger_get(a, "2370483030340592", &j), 1);

        /* A second open finds it grown already and leaves it as it is. */
        struct ledger *c = NULL;
        assert_int_equal(ledger_open(path, &o, &c, &err), 0);
        assert_int_equal(file_size(wal), grown);
        ledger_close(c);

        /* Copied aside while open, the files are what a crash leaves: SQLite recovers the WAL. */
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "cp '%s' '%s/crash.db' && cp '%s' '%s/crash.db-wal'", path, dir,
                 wal, dir);
        assert_int_equal(system(cmd), 0);
        ledger_close(b);
        ledger_close(a);
        snprintf(path + strlen(path) - strlen("ledger.db"), sizeof(path) - strlen(dir) - 1,
                 "crash.db");
        struct ledger *r = open_ok(); /* integrity_check on */
        assert_int_equal(ledger_get(r, "2370483030340591", &j), 1);
        assert_int_equal(ledger_get(r, "2370483030340592", &j), 1);
        ledger_close(r);
}

/* Keeps each submission's time; stops after the second when asked to. */
struct seen {
        uint64_t at[4];
        size_t n;
        bool stop_at_two;
};

static int collect(uint64_t at, int64_t credits, void *userdata)
{
        struct seen *s = userdata;
        s->at[s->n++] = at;
        return s->stop_at_two && s->n == 2 ? 7 : 0;
}

/* The spend guard's record: submissions counted per window with unknown costs assumed, a
 * reported cost landing on the job and its latest submission, and the meta switches; all kept
 * across a restart. */
static void test_spend_and_switches(void **state)
{
        struct ledger *l = open_ok();
        struct ledger_spend u;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "a", "src", 1), 1);
        assert_int_equal(ledger_insert(l, "b", "src", 1), 1);
        assert_int_equal(ledger_spend_record(l, "a", 100, -1), 0);
        assert_int_equal(ledger_spend_record(l, "a", 200, -1), 0); /* a retry: spent again */
        assert_int_equal(ledger_spend_record(l, "b", 300, 6), 0);  /* its last known cost */
        assert_int_equal(ledger_commit(l), 0);
        /* Day window after 50, hour window after 150; unknown costs as 2. */
        assert_int_equal(ledger_spend_usage(l, 50, 150, 2, &u), 0);
        assert_int_equal(u.day, 3);
        assert_int_equal(u.hour, 2);
        assert_int_equal(u.day_credits, 2 + 2 + 6);
        assert_int_equal(ledger_spend_usage(l, 250, 250, 0, &u), 0);
        assert_int_equal(u.day, 1);
        assert_int_equal(u.day_credits, 6);

        /* A reported cost: the job and only its latest submission. */
        assert_int_equal(ledger_set_credits(l, "a", 5), 0);
        struct job j;
        assert_int_equal(ledger_get(l, "a", &j), 1);
        assert_int_equal(j.credits, 5);
        assert_int_equal(ledger_get(l, "b", &j), 1);
        assert_int_equal(j.credits, -1); /* the job's own column: nothing reported for it */
        assert_int_equal(ledger_spend_usage(l, 50, 50, 1, &u), 0);
        assert_int_equal(u.day_credits, 1 + 5 + 6);

        /* Oldest first, stopping when asked. */
        struct seen seen = {0};
        assert_int_equal(ledger_spend_foreach(l, 50, collect, &seen), 0);
        assert_int_equal(seen.n, 3);
        assert_int_equal(seen.at[0], 100);
        assert_int_equal(seen.at[1], 200);
        assert_int_equal(seen.at[2], 300);
        seen = (struct seen){.stop_at_two = true};
        assert_int_equal(ledger_spend_foreach(l, 50, collect, &seen), 7);
        assert_int_equal(seen.n, 2);

        /* Switches. */
        assert_int_equal(control_operator_paused(l, NULL), 0);
        assert_int_equal(control_set_operator_pause(l, true, 777), 1);
        assert_int_equal(control_set_operator_pause(l, true, 888), 0);
        struct control_budget b = {.full = BUDGET_WINDOW_CREDITS_DAY, .free_at = 12345};
        assert_int_equal(control_set_budget_blocked(l, &b), 1);
        assert_int_equal(control_set_budget_blocked(l, &b), 0);
        ledger_close(l);

        l = open_ok();
        uint64_t since = 0;
        assert_int_equal(control_operator_paused(l, &since), 1);
        assert_int_equal(since, 777);
        struct control_budget got;
        assert_int_equal(control_budget_blocked(l, &got), 1);
        assert_int_equal(got.full, BUDGET_WINDOW_CREDITS_DAY);
        assert_int_equal(got.free_at, 12345);
        assert_int_equal(ledger_spend_usage(l, 0, 0, 0, &u), 0);
        assert_int_equal(u.day, 3);
        assert_int_equal(control_set_operator_pause(l, false, 999), 1);
        assert_int_equal(control_operator_paused(l, NULL), 0);
        assert_int_equal(control_set_budget_blocked(l, NULL), 1);
        assert_int_equal(control_budget_blocked(l, NULL), 0);
        /* Purged: what no window reaches any more. */
        assert_int_equal(ledger_spend_purge(l, 250), 0);
        assert_int_equal(ledger_spend_usage(l, 0, 0, 0, &u), 0);
        assert_int_equal(u.day, 1);
        ledger_close(l);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_insert_and_duplicate_across_restart, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_rollback_leaves_nothing, setup, teardown),
            cmocka_unit_test_setup_teardown(test_due_and_counts, setup, teardown),
            cmocka_unit_test_setup_teardown(test_replay_memory, setup, teardown),
            cmocka_unit_test_setup_teardown(test_migration_from_empty_and_version, setup, teardown),
            cmocka_unit_test_setup_teardown(test_integrity_check_unless_closed_clean, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_duration_is_recorded, setup, teardown),
            cmocka_unit_test_setup_teardown(test_counts_follow_commits_savepoints_and_rollbacks,
                                            setup, teardown),
            cmocka_unit_test_setup_teardown(test_save_from_a_known_state, setup, teardown),
            cmocka_unit_test_setup_teardown(test_save_if_leaves_a_changed_job_alone, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_spend_and_switches, setup, teardown),
            cmocka_unit_test_setup_teardown(test_migration_from_version_1_keeps_counts, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_damaged_file_is_refused, setup, teardown),
            cmocka_unit_test_setup_teardown(test_background_checkpoint, setup, teardown),
            cmocka_unit_test_setup_teardown(test_payload_kept_and_read_on_demand, setup, teardown),
            cmocka_unit_test_setup_teardown(test_preallocated_wal_keeps_every_commit, setup,
                                            teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
