/* pg-driver.c: the C side of test_pgledger.py: runs pgconn and pgschema against the real
 * PostgreSQL that test starts, one scenario per run, checks what it can see itself, and prints
 * one line per step for the test to follow (and to act on: restart, freeze, measure). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "pgconn.h"
#include "pgschema.h"
#include "util.h"

#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
                        fprintf(stderr, __VA_ARGS__);                                              \
                        fprintf(stderr, "\n");                                                     \
                        exit(1);                                                                   \
                }                                                                                  \
        } while (0)

static sd_event *loop;

static void say(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        fflush(stdout);
}

/* Waits for a line from the test on stdin (outside any measured interval: it blocks). */
static void expect_line(const char *want)
{
        char buf[128];
        CHECK(fgets(buf, sizeof(buf), stdin) != NULL, "stdin closed waiting for %s", want);
        buf[strcspn(buf, "\n")] = 0;
        CHECK(strcmp(buf, want) == 0, "got \"%s\", wanted \"%s\"", buf, want);
}

/* Runs the loop until *flag, or fails after timeout. */
static void pump(const bool *flag, uint64_t timeout_usec, const char *what)
{
        uint64_t deadline = now_monotonic_usec() + timeout_usec;
        while (!*flag) {
                uint64_t now = now_monotonic_usec();
                CHECK(now < deadline, "timed out waiting for %s", what);
                CHECK(sd_event_run(loop, deadline - now) >= 0, "sd_event_run");
        }
}

/* A connection and what it heard. */
struct conn {
        struct pgconn *pg;
        const char *name;
        unsigned connected, lost, failed;
        bool up;
};

static void on_state(struct pgconn *c, enum pgconn_event ev, void *userdata)
{
        struct conn *cn = userdata;
        switch (ev) {
        case PGCONN_CONNECTED:
                cn->connected++;
                cn->up = true;
                say("event %s connected", cn->name);
                break;
        case PGCONN_LOST:
                cn->lost++;
                cn->up = false;
                say("event %s lost: %s", cn->name, pgconn_errmsg(c));
                break;
        case PGCONN_CONNECT_FAILED:
                cn->failed++;
                say("event %s connect-failed: %s", cn->name, pgconn_errmsg(c));
                break;
        }
}

static void open_conn(struct conn *cn, const char *name, const char *conninfo,
                      const struct pgconn_options *o)
{
        struct pgconn_options opts =
            o ? *o : (struct pgconn_options){.statement_timeout_usec = 10 * USEC_PER_SEC};
        opts.conninfo = conninfo;
        memset(cn, 0, sizeof(*cn));
        cn->name = name;
        CHECK(pgconn_new(loop, &opts, on_state, cn, &cn->pg) >= 0, "pgconn_new");
        pump(&cn->up, 30 * USEC_PER_SEC, "a connection");
}

/* A batch's outcome, copied out of the callback. */
struct outcome {
        bool done;
        int error;
        bool unknown;
        int failed;
        char sqlstate[8];
        char message[512];
        size_t n;
        PGresult *res[128];
};

static void on_done(struct pgconn *c, const struct pgconn_result *r, void *userdata)
{
        struct outcome *o = userdata;
        o->done = true;
        o->error = r->error;
        o->unknown = r->unknown_outcome;
        o->failed = r->failed;
        snprintf(o->sqlstate, sizeof(o->sqlstate), "%s", r->sqlstate);
        snprintf(o->message, sizeof(o->message), "%s", r->message);
        o->n = r->n < ELEMENTSOF(o->res) ? r->n : ELEMENTSOF(o->res);
        for (size_t i = 0; i < o->n; i++)
                o->res[i] = r->results[i]
                                ? PQcopyResult(r->results[i], PG_COPYRES_ATTRS | PG_COPYRES_TUPLES)
                                : NULL;
}

static void outcome_clear(struct outcome *o)
{
        for (size_t i = 0; i < o->n; i++)
                PQclear(o->res[i]);
        memset(o, 0, sizeof(*o));
}

static void send_batch(struct conn *cn, const struct pgconn_stmt *s, size_t n, struct outcome *o)
{
        memset(o, 0, sizeof(*o));
        int r = pgconn_send(cn->pg, s, n, on_done, o);
        CHECK(r >= 0, "pgconn_send: %s", strerror(-r));
}

/* Sends a batch and waits for it; fails on any error unless allow_error. */
static void run(struct conn *cn, const struct pgconn_stmt *s, size_t n, struct outcome *o,
                bool allow_error)
{
        send_batch(cn, s, n, o);
        pump(&o->done, 60 * USEC_PER_SEC, "a batch");
        CHECK(allow_error || o->error == 0, "batch failed (%d, statement %d, %s): %s", o->error,
              o->failed, o->sqlstate, o->message);
}

static int rows(const struct outcome *o, size_t i)
{
        CHECK(i < o->n && o->res[i], "no result %zu", i);
        return PQntuples(o->res[i]);
}

static const char *value(const struct outcome *o, size_t i, int row, int col)
{
        CHECK(rows(o, i) > row, "no row %d in result %zu", row, i);
        return PQgetisnull(o->res[i], row, col) ? NULL : PQgetvalue(o->res[i], row, col);
}

/* One statement, one batch. */
static void run1(struct conn *cn, struct outcome *o, const char *sql, int n_params, ...)
{
        const char *params[16] = {0};
        va_list ap;
        va_start(ap, n_params);
        for (int i = 0; i < n_params; i++)
                params[i] = va_arg(ap, const char *);
        va_end(ap);
        struct pgconn_stmt s = {.sql = sql, .n_params = n_params, .params = params};
        run(cn, &s, 1, o, false);
}

struct migrated {
        bool done;
        int r, from;
        char error[512];
};

static void on_migrated(int r, int from, const char *error, void *userdata)
{
        struct migrated *m = userdata;
        m->done = true;
        m->r = r;
        m->from = from;
        snprintf(m->error, sizeof(m->error), "%s", error ? error : "");
}

static struct migrated migrate(struct conn *cn)
{
        struct migrated m = {0};
        int r = pgschema_migrate(cn->pg, on_migrated, &m, NULL);
        CHECK(r >= 0, "pgschema_migrate: %s", strerror(-r));
        pump(&m.done, 60 * USEC_PER_SEC, "the migration");
        return m;
}

static void migrate_ok(struct conn *cn)
{
        struct migrated m = migrate(cn);
        CHECK(m.r == 0, "migration failed (%d): %s", m.r, m.error);
        say("migrated from %d to %d", m.from, PGSCHEMA_VERSION);
}

static char prefix[64];

static void make_id(char *buf, size_t size, const char *what, unsigned i)
{
        snprintf(buf, size, "%s-%s-%u", prefix, what, i);
}

/* Inserts n jobs in one batch; returns how many were new. */
static int insert_jobs(struct conn *cn, const char *what, unsigned first, unsigned n)
{
        char ids[128][96];
        const char *params[128][2];
        struct pgconn_stmt s[128] = {0};
        CHECK(n <= 128, "too many");
        for (unsigned i = 0; i < n; i++) {
                make_id(ids[i], sizeof(ids[i]), what, first + i);
                params[i][0] = ids[i];
                params[i][1] = "src";
                s[i] = (struct pgconn_stmt){
                    .sql = PGSCHEMA_INSERT, .n_params = 2, .params = params[i]};
        }
        struct outcome o;
        run(cn, s, n, &o, false);
        int fresh = 0;
        for (unsigned i = 0; i < n; i++)
                fresh += rows(&o, i);
        outcome_clear(&o);
        return fresh;
}

/* Inserts n jobs with one statement (PGSCHEMA_INSERT_MANY); returns how many were new. */
/* Each gets settings.duration 8 and, every other one, a payload (a quote and a backslash in
 * it, as text arrays must carry them). */
static int insert_many(struct conn *cn, const char *what, unsigned first, unsigned n)
{
        char ids[128][96];
        const char *idp[128], *srcp[128], *durp[128], *plp[128];
        CHECK(n <= 128, "too many");
        for (unsigned i = 0; i < n; i++) {
                make_id(ids[i], sizeof(ids[i]), what, first + i);
                idp[i] = ids[i];
                srcp[i] = "src";
                durp[i] = "8";
                plp[i] = (first + i) % 2 == 0 ? "{\"q\": \"a \\\" b\"}" : NULL;
        }
        char *a = NULL, *b = NULL, *c = NULL, *d = NULL;
        CHECK(pgschema_text_array(idp, n, &a) == 0 && pgschema_text_array(srcp, n, &b) == 0 &&
                  pgschema_text_array(durp, n, &c) == 0 && pgschema_text_array(plp, n, &d) == 0,
              "arrays");
        struct outcome o;
        run1(cn, &o, PGSCHEMA_INSERT_MANY, 4, a, b, c, d);
        int fresh = rows(&o, 0);
        outcome_clear(&o);
        free(a);
        free(b);
        free(c);
        free(d);
        return fresh;
}

static int count_where(struct conn *cn, const char *where, const char *param)
{
        char sql[512];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM jobs WHERE %s", where);
        struct outcome o;
        run1(cn, &o, sql, param ? 1 : 0, param);
        int n = atoi(value(&o, 0, 0, 0));
        outcome_clear(&o);
        return n;
}

static int scenario_basic(const char *conninfo)
{
        struct conn a;
        struct outcome o;
        open_conn(&a, "a", conninfo, NULL);
        migrate_ok(&a);

        /* 64 inserts: one batch, one sync, every statement answered. */
        struct pgconn_stats before = *pgconn_get_stats(a.pg);
        CHECK(insert_jobs(&a, "job", 0, 64) == 64, "64 new jobs");
        const struct pgconn_stats *after = pgconn_get_stats(a.pg);
        CHECK(after->syncs - before.syncs == 1, "one sync per batch");
        CHECK(after->batches - before.batches == 1, "one batch");
        CHECK(after->statements - before.statements == 64, "64 statements");
        /* The caller's 64 and the statement timeout set in front of them. */
        CHECK(after->results - before.results == 65, "%" PRIu64 " results",
              after->results - before.results);
        say("batch of 64: syncs=%" PRIu64 " results=%" PRIu64, after->syncs - before.syncs,
            after->results - before.results);

        /* The same again, and one more: 64 duplicates, one new. */
        CHECK(insert_jobs(&a, "job", 0, 65) == 1, "duplicates are no rows");
        char like[96];
        snprintf(like, sizeof(like), "%s-%%", prefix);
        CHECK(count_where(&a, "creation_id LIKE $1", like) == 65, "65 jobs");
        say("duplicates ok");

        /* One statement for a whole turn: 30 known, 10 new. */
        CHECK(insert_many(&a, "job", 35, 40) == 10, "only the new ones returned");
        CHECK(count_where(&a, "creation_id LIKE $1", like) == 75, "75 jobs");
        /* The new ones with their duration and payload, the known ones as they were. */
        CHECK(count_where(&a, "creation_id LIKE $1 AND duration = 8", like) == 10, "durations");
        CHECK(count_where(&a, "creation_id LIKE $1 AND payload = '{\"q\": \"a \\\" b\"}'", like) ==
                  5,
              "payloads");
        say("insert many ok");

        /* A failing statement undoes the whole batch. */
        char x[96], y[96];
        make_id(x, sizeof(x), "undone", 1);
        make_id(y, sizeof(y), "undone", 2);
        const char *px[] = {x, "src"}, *py[] = {y, "src"};
        struct pgconn_stmt bad[] = {
            {.sql = PGSCHEMA_INSERT, .n_params = 2, .params = px},
            {.sql = "SELECT 1 / 0"},
            {.sql = PGSCHEMA_INSERT, .n_params = 2, .params = py},
        };
        run(&a, bad, 3, &o, true);
        CHECK(o.error == -EIO && o.failed == 1 && strcmp(o.sqlstate, "22012") == 0 && !o.unknown,
              "error %d at %d (%s)", o.error, o.failed, o.sqlstate);
        outcome_clear(&o);
        CHECK(count_where(&a, "creation_id = $1", x) == 0, "rolled back");
        say("failed batch rolled back");

        /* A transaction over two batches (BEGIN left open; through PgBouncer the server
         * connection stays lent until it ends). */
        char z[96];
        make_id(z, sizeof(z), "twostep", 1);
        const char *pz[] = {z, "src"};
        struct pgconn_stmt begin[] = {{.sql = "BEGIN"},
                                      {.sql = PGSCHEMA_INSERT, .n_params = 2, .params = pz}};
        run(&a, begin, 2, &o, false);
        outcome_clear(&o);
        run1(&a, &o, "COMMIT", 0);
        outcome_clear(&o);
        CHECK(count_where(&a, "creation_id = $1", z) == 1, "committed over two batches");
        say("two-batch transaction ok");

        /* A unique violation is -EEXIST. */
        char dup[96];
        make_id(dup, sizeof(dup), "task", 1);
        run1(&a, &o, "UPDATE jobs SET upscale_task_id = $1 WHERE creation_id = $2", 2, dup, z);
        outcome_clear(&o);
        char j0[96];
        make_id(j0, sizeof(j0), "job", 0);
        const char *pc[] = {dup, j0};
        struct pgconn_stmt clash = {
            .sql = "UPDATE jobs SET upscale_task_id = $1 WHERE creation_id = $2",
            .n_params = 2,
            .params = pc};
        run(&a, &clash, 1, &o, true);
        CHECK(o.error == -EEXIST, "unique violation: %d %s", o.error, o.sqlstate);
        outcome_clear(&o);

        /* Replay memory: new, seen, and new again once expired. */
        char key[96];
        make_id(key, sizeof(key), "replay", 1);
        run1(&a, &o, PGSCHEMA_REPLAY_REMEMBER, 2, key, "60000000");
        CHECK(rows(&o, 0) == 1, "a new key");
        outcome_clear(&o);
        run1(&a, &o, PGSCHEMA_REPLAY_REMEMBER, 2, key, "60000000");
        CHECK(rows(&o, 0) == 0, "a replay");
        outcome_clear(&o);
        make_id(key, sizeof(key), "replay", 2);
        run1(&a, &o, PGSCHEMA_REPLAY_REMEMBER, 2, key, "-1000000");
        outcome_clear(&o);
        run1(&a, &o, PGSCHEMA_REPLAY_REMEMBER, 2, key, "60000000");
        CHECK(rows(&o, 0) == 1, "an expired key is new");
        outcome_clear(&o);
        say("replay ok");

        /* A batch larger than the socket takes at once: written on EPOLLOUT while results are
         * read on EPOLLIN, still one sync. */
        enum { BIG_N = 100, BIG_LEN = 128 * 1024 };
        char *big = malloc(BIG_LEN + 1);
        CHECK(big, "memory");
        memset(big, 'x', BIG_LEN);
        big[BIG_LEN] = 0;
        const char *pbig[] = {big};
        struct pgconn_stmt bs[BIG_N];
        for (int i = 0; i < BIG_N; i++)
                bs[i] =
                    (struct pgconn_stmt){.sql = "SELECT length($1)", .n_params = 1, .params = pbig};
        before = *pgconn_get_stats(a.pg);
        run(&a, bs, BIG_N, &o, false);
        for (int i = 0; i < BIG_N; i++)
                CHECK(atoi(value(&o, (size_t)i, 0, 0)) == BIG_LEN, "statement %d answered", i);
        outcome_clear(&o);
        free(big);
        /* Whether the socket filled depends on how fast the server reads (under valgrind or
         * ASan it may never): said, not asserted; the batch's answers are what must hold. */
        CHECK(after->syncs - before.syncs == 1, "one sync");
        say("large batch ok: waited for the socket %" PRIu64 " times",
            after->send_blocked - before.send_blocked);

        /* Reading a job back. */
        run1(&a, &o, PGSCHEMA_GET, 1, z);
        struct job j;
        struct pgschema_claim cl;
        CHECK(pgschema_row_to_job(o.res[0], 0, 0, &j, &cl) == 0, "row");
        CHECK(strcmp(j.creation_id, z) == 0 && j.state == JOB_PENDING &&
                  strcmp(j.upscale_task_id, dup) == 0 && j.created_at > 0 &&
                  j.next_at >= j.created_at && cl.seq == 0 && !cl.claimed_by[0],
              "job read back");
        outcome_clear(&o);
        say("ok");
        pgconn_free(a.pg);
        return 0;
}

/* Migrates once, after "go" on stdin, and says how it went (exit 3 when refused). */
static int scenario_migrate(const char *conninfo)
{
        struct conn a;
        open_conn(&a, "a", conninfo,
                  &(struct pgconn_options){.statement_timeout_usec = 60 * USEC_PER_SEC});
        say("ready");
        expect_line("go");
        struct migrated m = migrate(&a);
        if (m.r == -EPROTONOSUPPORT) {
                say("refused: %s", m.error);
                return 3;
        }
        CHECK(m.r == 0, "migration failed (%d): %s", m.r, m.error);
        say("migrated from %d to %d", m.from, PGSCHEMA_VERSION);
        pgconn_free(a.pg);
        return 0;
}

/* The same notification at two instances at once: B's insert (and replay key) waits for A's
 * transaction and, once A commits, finds a duplicate; never an error, never two jobs. */
/* Whether the outcome of a PGSCHEMA_INTAKE statement (statement i) holds (kind, value). */
static bool intake_has(const struct outcome *o, size_t i, const char *kind, const char *v)
{
        for (int r = 0; r < rows(o, i); r++)
                if (strcmp(value(o, i, r, 0), kind) == 0 && strcmp(value(o, i, r, 1), v) == 0)
                        return true;
        return false;
}

/* One intake turn: the keys of its deliveries and its creations, each with its delivery's key
 * (an index into keys, or -1 for none). */
static void intake(struct conn *cn, struct outcome *o, const char *const *keys, size_t n_keys,
                   const char *const *ids, const int *key_of, size_t n)
{
        const char *srcs[16], *durs[16], *pls[16], *ks[16];
        CHECK(n <= 16, "too many");
        for (size_t i = 0; i < n; i++) {
                srcs[i] = "src";
                durs[i] = "4";
                pls[i] = NULL;
                ks[i] = key_of[i] >= 0 ? keys[key_of[i]] : NULL;
        }
        char *a[6] = {0};
        CHECK(pgschema_text_array(keys, n_keys, &a[0]) == 0 &&
                  pgschema_text_array(ids, n, &a[1]) == 0 &&
                  pgschema_text_array(srcs, n, &a[2]) == 0 &&
                  pgschema_text_array(durs, n, &a[3]) == 0 &&
                  pgschema_text_array(pls, n, &a[4]) == 0 && pgschema_text_array(ks, n, &a[5]) == 0,
              "arrays");
        run1(cn, o, PGSCHEMA_INTAKE, 7, a[0], "600000000", a[1], a[2], a[3], a[4], a[5]);
        for (size_t i = 0; i < ELEMENTSOF(a); i++)
                free(a[i]);
}

/* A whole turn's intake is one statement and one round trip: new deliveries' creations
 * recorded, a replayed delivery's not (even a creation never seen), repeats within the turn
 * once, an expired key new again, and two instances taking the same delivery at once record it
 * once. */
static int scenario_intake(const char *conninfo)
{
        struct conn a, b;
        struct outcome o, ob;
        open_conn(&a, "a", conninfo, NULL);
        open_conn(&b, "b", conninfo, NULL);
        migrate_ok(&a);
        char k[5][96], c[8][96];
        for (int i = 0; i < 5; i++)
                make_id(k[i], sizeof(k[i]), "key", (unsigned)i);
        for (int i = 0; i < 8; i++)
                make_id(c[i], sizeof(c[i]), "intake", (unsigned)i);

        /* Turn 1: two deliveries (one of them twice in the turn) and a creation with no key. */
        const char *keys1[] = {k[0], k[1], k[1], NULL};
        const char *ids1[] = {c[0], c[1], c[2], c[0], c[3]};
        const int of1[] = {0, 0, 1, 2, -1};
        uint64_t syncs = pgconn_get_stats(a.pg)->syncs;
        intake(&a, &o, keys1, 4, ids1, of1, 5);
        CHECK(o.error == 0, "turn 1: %s", o.message);
        CHECK(pgconn_get_stats(a.pg)->syncs - syncs == 1, "one round trip");
        CHECK(rows(&o, 0) == 6, "turn 1: %d rows", rows(&o, 0));
        CHECK(intake_has(&o, 0, "replay", k[0]) && intake_has(&o, 0, "replay", k[1]), "keys new");
        for (int i = 0; i < 4; i++)
                CHECK(intake_has(&o, 0, "job", c[i]), "job %d new", i);
        outcome_clear(&o);

        /* Turn 2: k0 again (a replay: its never-seen creation c4 is not recorded) and k2 new with a
         * known creation and a new one. */
        const char *keys2[] = {k[0], k[2]};
        const char *ids2[] = {c[4], c[0], c[5]};
        const int of2[] = {0, 1, 1};
        intake(&a, &o, keys2, 2, ids2, of2, 3);
        CHECK(o.error == 0 && rows(&o, 0) == 2, "turn 2: %d rows", rows(&o, 0));
        CHECK(intake_has(&o, 0, "replay", k[2]) && intake_has(&o, 0, "job", c[5]), "turn 2");
        outcome_clear(&o);
        CHECK(count_where(&a, "creation_id = $1", c[4]) == 0, "a replay's creation not recorded");

        /* An expired memory: the key is new again. */
        run1(&a, &o, "UPDATE replay SET until = now() - interval '1 second' WHERE key = $1", 1,
             k[0]);
        outcome_clear(&o);
        intake(&a, &o, keys2, 1, ids2, of2, 1);
        CHECK(o.error == 0 && rows(&o, 0) == 2 && intake_has(&o, 0, "job", c[4]), "expired key");
        outcome_clear(&o);

        /* Two instances, one delivery at once: B waits for A's transaction, then finds a replay
         * and records nothing. */
        const char *keys3[] = {k[3]};
        const char *ids3[] = {c[6], c[7]};
        const int of3[] = {0, 0};
        run1(&a, &o, "BEGIN", 0);
        outcome_clear(&o);
        intake(&a, &o, keys3, 1, ids3, of3, 2);
        CHECK(o.error == 0 && rows(&o, 0) == 3, "A's turn");
        outcome_clear(&o);
        char *ka = NULL, *ia = NULL, *sa = NULL, *ksa = NULL;
        const char *srcs[] = {"src", "src"}, *kk[] = {k[3], k[3]};
        CHECK(pgschema_text_array(keys3, 1, &ka) == 0 && pgschema_text_array(ids3, 2, &ia) == 0 &&
                  pgschema_text_array(srcs, 2, &sa) == 0 && pgschema_text_array(kk, 2, &ksa) == 0,
              "arrays");
        const char *pb[] = {ka, "600000000", ia, sa, NULL, NULL, ksa};
        struct pgconn_stmt sb = {.sql = PGSCHEMA_INTAKE, .n_params = 7, .params = pb};
        send_batch(&b, &sb, 1, &ob);
        for (int i = 0; i < 20; i++)
                CHECK(sd_event_run(loop, 10 * USEC_PER_MSEC) >= 0, "loop");
        CHECK(!ob.done, "B waits for A's transaction");
        run1(&a, &o, "COMMIT", 0);
        outcome_clear(&o);
        pump(&ob.done, 30 * USEC_PER_SEC, "B's turn");
        CHECK(ob.error == 0, "no error: %s", ob.message);
        CHECK(rows(&ob, 0) == 0, "B: a replay, nothing recorded");
        outcome_clear(&ob);
        free(ka);
        free(ia);
        free(sa);
        free(ksa);
        CHECK(count_where(&a, "creation_id = $1", c[6]) == 1, "one job");
        say("ok");
        pgconn_free(a.pg);
        pgconn_free(b.pg);
        return 0;
}

static int scenario_same_id(const char *conninfo)
{
        struct conn a, b;
        struct outcome o, ob;
        open_conn(&a, "a", conninfo, NULL);
        open_conn(&b, "b", conninfo, NULL);
        migrate_ok(&a);
        char id[96], key[96];
        make_id(id, sizeof(id), "same", 1);
        make_id(key, sizeof(key), "delivery", 1);
        const char *pi[] = {id, "src"}, *pk[] = {key, "600000000"};
        struct pgconn_stmt s[] = {{.sql = "BEGIN"},
                                  {.sql = PGSCHEMA_REPLAY_REMEMBER, .n_params = 2, .params = pk},
                                  {.sql = PGSCHEMA_INSERT, .n_params = 2, .params = pi}};
        run(&a, s, 3, &o, false);
        CHECK(rows(&o, 1) == 1 && rows(&o, 2) == 1, "A: new delivery, new job");
        outcome_clear(&o);
        /* B's batch waits on A's uncommitted rows... */
        send_batch(&b, s + 1, 2, &ob);
        for (int i = 0; i < 20; i++)
                CHECK(sd_event_run(loop, 10 * USEC_PER_MSEC) >= 0, "loop");
        CHECK(!ob.done, "B waits for A's transaction");
        /* ...and finds both known once A commits. */
        run1(&a, &o, "COMMIT", 0);
        outcome_clear(&o);
        pump(&ob.done, 30 * USEC_PER_SEC, "B's batch");
        CHECK(ob.error == 0, "no error: %s", ob.message);
        CHECK(rows(&ob, 0) == 0 && rows(&ob, 1) == 0, "B: a replay and a duplicate");
        outcome_clear(&ob);
        CHECK(count_where(&a, "creation_id = $1", id) == 1, "one job");
        say("ok");
        pgconn_free(a.pg);
        pgconn_free(b.pg);
        return 0;
}

/* EXPLAIN's text for sql with its parameters, as one string (caller frees). */
static char *explain(struct conn *cn, const char *sql, int n_params, const char *const *params)
{
        char *q = NULL;
        CHECK(asprintf(&q, "EXPLAIN %s", sql) > 0, "memory");
        struct pgconn_stmt s = {.sql = q, .n_params = n_params, .params = params};
        struct outcome o;
        run(cn, &s, 1, &o, false);
        size_t size = 1;
        for (int r = 0; r < rows(&o, 0); r++)
                size += strlen(value(&o, 0, r, 0)) + 1;
        char *plan = calloc(1, size);
        CHECK(plan, "memory");
        for (int r = 0; r < rows(&o, 0); r++) {
                strcat(plan, value(&o, 0, r, 0));
                strcat(plan, "\n");
        }
        outcome_clear(&o);
        free(q);
        return plan;
}

#define EXPECT_PLAN(cn, index, sql, n, ...)                                                        \
        do {                                                                                       \
                const char *_p[] = {__VA_ARGS__};                                                  \
                char *_plan = explain(cn, sql, n, _p);                                             \
                CHECK(strstr(_plan, index), "%s not used:\n%s", index, _plan);                     \
                free(_plan);                                                                       \
        } while (0)

/* With many finished jobs and few due, every queue statement reads its own partial index, never
 * the whole table. */
static int scenario_plans(const char *conninfo)
{
        struct conn a;
        struct outcome o;
        open_conn(&a, "a", conninfo, NULL);
        migrate_ok(&a);
        run1(&a, &o,
             "INSERT INTO jobs (creation_id, state, attempt, next_at, created_at, updated_at, "
             "upscale_task_id) SELECT 'done-' || i, CASE i % 3 WHEN 0 THEN 'succeeded' WHEN 1 "
             "THEN 'failed' ELSE 'dead' END, 1, now(), now(), now() - interval '1 day', 'task-' || "
             "i FROM generate_series(1, 50000) AS i",
             0);
        outcome_clear(&o);
        run1(&a, &o,
             "INSERT INTO replay (key, until) SELECT 'k-' || i, now() + interval '1 hour' FROM "
             "generate_series(1, 20000) AS i",
             0);
        outcome_clear(&o);
        CHECK(insert_jobs(&a, "due", 0, 20) == 20, "due jobs");
        run1(&a, &o, "ANALYZE", 0);
        outcome_clear(&o);
        EXPECT_PLAN(&a, "jobs_submit_due", PGSCHEMA_CLAIM_SUBMIT, 4, "A", "30000000", "16", "1");
        EXPECT_PLAN(&a, "jobs_poll_due", PGSCHEMA_CLAIM_POLL, 5, "A", "30000000", "16", "1",
                    "1000000");
        EXPECT_PLAN(&a, "jobs_lease", PGSCHEMA_TAKEOVER, 2, "hold", "16");
        EXPECT_PLAN(&a, "jobs_claimed", PGSCHEMA_RENEW, 2, "A", "30000000");
        EXPECT_PLAN(&a, "jobs_claimed", PGSCHEMA_RELEASE_UNSENT, 2, "A", "1");
        EXPECT_PLAN(&a, "jobs_finished", PGSCHEMA_PURGE_JOBS, 2, "3600000000", "100");
        EXPECT_PLAN(&a, "replay_until", PGSCHEMA_PURGE_REPLAY, 1, "100");
        EXPECT_PLAN(&a, "jobs_submit_due", PGSCHEMA_NEXT_SUBMIT, 0, NULL);
        EXPECT_PLAN(&a, "jobs_upscale", PGSCHEMA_GET_BY_UPSCALE, 1, "task-7");
        say("ok");
        pgconn_free(a.pg);
        return 0;
}

/* A migration whose lock wait outlasts the statement timeout: refused with -ETIMEDOUT, its
 * transaction rolled back so the connection is usable at once. */
static int scenario_migrate_timeout(const char *conninfo)
{
        struct conn a;
        struct outcome o;
        open_conn(&a, "a", conninfo,
                  &(struct pgconn_options){.statement_timeout_usec = 500 * USEC_PER_MSEC,
                                           .batch_timeout_usec = 30 * USEC_PER_SEC});
        say("ready");
        expect_line("go");
        struct migrated m = migrate(&a);
        say("timed out: %d %s", m.r, m.error);
        CHECK(m.r == -ETIMEDOUT, "the lock wait timed out");
        CHECK(a.up && a.lost == 0, "the connection stays");
        run1(&a, &o, "SELECT 1", 0);
        outcome_clear(&o);
        say("ok");
        pgconn_free(a.pg);
        return 0;
}

static void claim(struct conn *cn, const char *who, const char *limit, const char *turn,
                  const char *lease, struct outcome *o, bool open_transaction)
{
        const char *p[] = {who, lease, limit, turn};
        struct pgconn_stmt s[] = {{.sql = "BEGIN"},
                                  {.sql = PGSCHEMA_CLAIM_SUBMIT, .n_params = 4, .params = p}};
        if (open_transaction)
                run(cn, s, 2, o, false);
        else
                run(cn, s + 1, 1, o, false);
}

static int collect_ids(const struct outcome *o, size_t i, char (*ids)[96], int n, int max)
{
        for (int r = 0; r < rows(o, i); r++) {
                CHECK(n < max, "more claims than jobs");
                snprintf(ids[n++], 96, "%s", value(o, i, r, 1));
        }
        return n;
}

static int cmp_str(const void *a, const void *b)
{
        return strcmp(a, b);
}

static int scenario_claim(const char *conninfo)
{
        enum { N = 200 };
        struct conn a, b;
        struct outcome o, oa, ob;
        open_conn(&a, "a", conninfo, NULL);
        open_conn(&b, "b", conninfo, NULL);
        migrate_ok(&a);
        for (unsigned i = 0; i < N; i += 100)
                CHECK(insert_jobs(&a, "claim", i, 100) == 100, "jobs inserted");

        /* A holds 16 claims in an open transaction; B's claim does not wait for it and gets 16
         * others. */
        static char ids[N + 64][96];
        int n = 0;
        claim(&a, "A", "16", "1", "30000000", &oa, true);
        CHECK(rows(&oa, 1) == 16, "A claimed 16");
        claim(&b, "B", "16", "1", "30000000", &ob, false);
        CHECK(rows(&ob, 0) == 16, "B claimed 16 while A's rows were locked");
        n = collect_ids(&oa, 1, ids, n, N);
        n = collect_ids(&ob, 0, ids, n, N);
        CHECK(strcmp(value(&oa, 1, 0, 0), "pending") == 0, "came from pending");
        outcome_clear(&oa);
        outcome_clear(&ob);
        run1(&a, &o, "COMMIT", 0);
        outcome_clear(&o);
        say("skip locked ok");

        /* Both claim at once, batch after batch, until nothing is left. */
        for (;;) {
                const char *pa[] = {"A", "30000000", "7", "2"}, *pb[] = {"B", "30000000", "7", "2"};
                struct pgconn_stmt sa = {.sql = PGSCHEMA_CLAIM_SUBMIT, .n_params = 4, .params = pa};
                struct pgconn_stmt sb = {.sql = PGSCHEMA_CLAIM_SUBMIT, .n_params = 4, .params = pb};
                send_batch(&a, &sa, 1, &oa);
                send_batch(&b, &sb, 1, &ob);
                pump(&oa.done, 60 * USEC_PER_SEC, "A's claim");
                pump(&ob.done, 60 * USEC_PER_SEC, "B's claim");
                CHECK(oa.error == 0 && ob.error == 0, "claims: %s %s", oa.message, ob.message);
                int got = rows(&oa, 0) + rows(&ob, 0);
                n = collect_ids(&oa, 0, ids, n, N);
                n = collect_ids(&ob, 0, ids, n, N);
                outcome_clear(&oa);
                outcome_clear(&ob);
                if (got == 0)
                        break;
        }
        qsort(ids, (size_t)n, sizeof(ids[0]), cmp_str);
        for (int i = 1; i < n; i++)
                CHECK(strcmp(ids[i - 1], ids[i]) != 0, "%s claimed twice", ids[i]);
        CHECK(n == N, "%d of %d claimed", n, N);
        CHECK(count_where(&a, "state = 'submitting' AND claim_seq = 1 AND attempt = 1", NULL) == N,
              "every job claimed exactly once");
        say("claimed %d, none twice", n);
        pgconn_free(a.pg);
        pgconn_free(b.pg);
        return 0;
}

/* The job's state, claimant, seq and upscale id, as one string. */
static void job_line(struct conn *cn, const char *id, char *buf, size_t size)
{
        struct outcome o;
        run1(cn, &o, PGSCHEMA_GET, 1, id);
        struct job j;
        struct pgschema_claim cl;
        CHECK(pgschema_row_to_job(o.res[0], 0, 0, &j, &cl) == 0, "row for %s", id);
        snprintf(buf, size, "%s/%s/%" PRId64 "/%s/%u", job_state_to_string(j.state),
                 cl.claimed_by[0] ? cl.claimed_by : "-", cl.seq,
                 j.upscale_task_id[0] ? j.upscale_task_id : "-", j.attempt);
        outcome_clear(&o);
}

#define EXPECT_JOB(cn, id, want)                                                                   \
        do {                                                                                       \
                char _l[512];                                                                      \
                job_line(cn, id, _l, sizeof(_l));                                                  \
                CHECK(strcmp(_l, want) == 0, "%s is %s, wanted %s", id, _l, want);                 \
        } while (0)

/* Claims id for who with a lease of lease usec; returns its claim_seq. */
static int64_t claim_one(struct conn *cn, const char *who, const char *turn, const char *lease)
{
        struct outcome o;
        claim(cn, who, "1", turn, lease, &o, false);
        CHECK(rows(&o, 0) == 1, "claimed one");
        struct job j;
        struct pgschema_claim cl;
        CHECK(pgschema_row_to_job(o.res[0], 0, 1, &j, &cl) == 0, "claim row");
        outcome_clear(&o);
        return cl.seq;
}

/* Takes over lapsed submissions under policy until one is found (the lease lapses on the
 * database's clock, a millisecond after the claim). */
static void take_over(struct conn *cn, const char *policy, const char *lost_by)
{
        for (int i = 0; i < 1000; i++) {
                struct outcome o;
                run1(cn, &o, PGSCHEMA_TAKEOVER, 2, policy, "10");
                int n = rows(&o, 0);
                if (n > 0) {
                        CHECK(n == 1 && strcmp(value(&o, 0, 0, 0), lost_by) == 0, "taken from %s",
                              lost_by);
                        outcome_clear(&o);
                        return;
                }
                outcome_clear(&o);
        }
        CHECK(false, "no lapsed lease found");
}

static int fenced_save(struct conn *cn, const char *id, const char *who, int64_t seq,
                       const char *state, const char *task)
{
        char s[UINT_DEC_SIZE];
        format_uint((uint64_t)seq, s);
        struct outcome o;
        run1(cn, &o, PGSCHEMA_SAVE_FENCED, 10, id, who, s, state, "1", "5000000", task, "200", NULL,
             NULL);
        int n = rows(&o, 0);
        outcome_clear(&o);
        return n;
}

static int scenario_fence(const char *conninfo)
{
        struct conn a, b;
        struct outcome o;
        open_conn(&a, "a", conninfo, NULL);
        open_conn(&b, "b", conninfo, NULL);
        migrate_ok(&a);
        char j1[96], j2[96], j3[96];
        make_id(j1, sizeof(j1), "fence", 1);
        make_id(j2, sizeof(j2), "fence", 2);
        make_id(j3, sizeof(j3), "fence", 3);

        /* resubmit: A's lease lapses, the job goes back to the queue, B claims it; A's late
         * answer changes nothing, B's is recorded. */
        CHECK(insert_jobs(&a, "fence", 1, 1) == 1, "j1");
        int64_t s1 = claim_one(&a, "A", "1", "1000");
        run1(&a, &o, PGSCHEMA_RENEW, 2, "A", "30000000");
        outcome_clear(&o);
        take_over(&b, "resubmit", "A");
        EXPECT_JOB(&a, j1, "waiting/-/1/-/1");
        run1(&a, &o, PGSCHEMA_RENEW, 2, "A", "30000000");
        CHECK(rows(&o, 0) == 0, "a lapsed lease is not renewed");
        outcome_clear(&o);
        int64_t s2 = claim_one(&b, "B", "1", "30000000");
        CHECK(s2 == s1 + 1, "a new claim, a new seq");
        CHECK(fenced_save(&a, j1, "A", s1, "submitted", "task-A") == 0, "stale claim fenced");
        EXPECT_JOB(&a, j1, "submitting/B/2/-/2");
        CHECK(fenced_save(&a, j1, "B", s1, "submitted", "task-A") == 0, "old seq fenced");
        CHECK(fenced_save(&b, j1, "B", s2, "submitted", "task-B") == 1, "live claim");
        EXPECT_JOB(&a, j1, "submitted/-/2/task-B/1");
        say("fence ok");

        /* hold: the lapsed job is held uncertain under A's claim; A's answer cannot save over it
         * as a claim, but settles it as news, under that claim's seq only. */
        CHECK(insert_jobs(&a, "fence", 2, 1) == 1, "j2");
        int64_t t1 = claim_one(&a, "A", "2", "1000");
        take_over(&b, "hold", "A");
        EXPECT_JOB(&a, j2, "uncertain/-/1/-/1");
        CHECK(fenced_save(&a, j2, "A", t1, "submitted", "task-A2") == 0, "uncertain is fenced");
        char wrong[UINT_DEC_SIZE], right[UINT_DEC_SIZE];
        format_uint((uint64_t)t1 + 1, wrong);
        format_uint((uint64_t)t1, right);
        run1(&a, &o, PGSCHEMA_SETTLE_UNCERTAIN, 8, j2, wrong, "submitted", "task-A2", "200", NULL,
             NULL, "5000000");
        CHECK(rows(&o, 0) == 0, "another claim's answer does not settle it");
        outcome_clear(&o);
        run1(&a, &o, PGSCHEMA_SETTLE_UNCERTAIN, 8, j2, right, "submitted", "task-A2", "200", NULL,
             NULL, "5000000");
        CHECK(rows(&o, 0) == 1, "its own claim's answer settles it");
        outcome_clear(&o);
        EXPECT_JOB(&a, j2, "submitted/-/1/task-A2/1");
        say("uncertain ok");

        /* A claim whose commit had an unknown outcome: released by its batch number, due again
         * with its attempt back. */
        CHECK(insert_jobs(&a, "fence", 3, 1) == 1, "j3");
        claim_one(&a, "A", "7", "30000000");
        run1(&a, &o, PGSCHEMA_RELEASE_UNSENT, 2, "A", "6");
        CHECK(rows(&o, 0) == 0, "another batch's claims stay");
        outcome_clear(&o);
        run1(&a, &o, PGSCHEMA_RELEASE_UNSENT, 2, "A", "7");
        CHECK(rows(&o, 0) == 1, "released");
        outcome_clear(&o);
        EXPECT_JOB(&a, j3, "waiting/-/1/-/0");
        say("release ok");

        /* Polls: a submitted job due a poll is claimed by one instance, pushed out meanwhile. */
        run1(&a, &o, "UPDATE jobs SET next_at = now() WHERE creation_id = $1", 1, j1);
        outcome_clear(&o);
        const char *pp[] = {"A", "30000000", "10", "8", "60000000"};
        struct pgconn_stmt poll = {.sql = PGSCHEMA_CLAIM_POLL, .n_params = 5, .params = pp};
        run(&a, &poll, 1, &o, false);
        CHECK(rows(&o, 0) >= 1, "a poll claimed");
        outcome_clear(&o);
        pp[0] = "B";
        run(&b, &poll, 1, &o, false);
        CHECK(rows(&o, 0) == 0, "not claimed twice");
        outcome_clear(&o);
        EXPECT_JOB(&a, j1, "submitted/A/3/task-B/1");
        say("poll claim ok");

        /* The probe token: one holder at a time. */
        run1(&a, &o, PGSCHEMA_CONTROL_TAKE, 3, "probe", "A", "30000000");
        CHECK(rows(&o, 0) == 1, "A takes it");
        outcome_clear(&o);
        run1(&b, &o, PGSCHEMA_CONTROL_TAKE, 3, "probe", "B", "30000000");
        CHECK(rows(&o, 0) == 0, "B does not");
        outcome_clear(&o);
        run1(&a, &o, PGSCHEMA_CONTROL_SET, 3, "pause", "CreditInsufficient", "60000000");
        outcome_clear(&o);
        run1(&b, &o, PGSCHEMA_CONTROL_GET, 1, "pause");
        CHECK(strcmp(value(&o, 0, 0, 0), "CreditInsufficient") == 0 &&
                  atoll(value(&o, 0, 0, 3)) > 0,
              "B sees A's pause");
        outcome_clear(&o);
        say("control ok");

        /* Purges in small batches. */
        for (int i = 0; i < 5; i++) {
                char k[96];
                make_id(k, sizeof(k), "old", (unsigned)i);
                run1(&a, &o, PGSCHEMA_REPLAY_REMEMBER, 2, k, "-1000000");
                outcome_clear(&o);
        }
        struct pgconn_stmt purge = {
            .sql = PGSCHEMA_PURGE_REPLAY, .n_params = 1, .params = (const char *[]){"2"}};
        run(&a, &purge, 1, &o, false);
        CHECK(atoi(PQcmdTuples(o.res[0])) == 2, "two purged");
        outcome_clear(&o);
        run1(&a, &o, "UPDATE jobs SET state = 'succeeded' WHERE creation_id = $1", 1, j2);
        outcome_clear(&o);
        run1(&a, &o, PGSCHEMA_PURGE_JOBS, 2, "0", "10");
        CHECK(atoi(PQcmdTuples(o.res[0])) == 1, "the finished job purged");
        outcome_clear(&o);
        run1(&a, &o, PGSCHEMA_NEXT_SUBMIT, 0);
        CHECK(value(&o, 0, 0, 0) && atoll(value(&o, 0, 0, 0)) <= 0, "j3 is due");
        outcome_clear(&o);
        say("ok");
        pgconn_free(a.pg);
        pgconn_free(b.pg);
        return 0;
}

/* The server restarted under a batch in flight: the batch ends in an error, the connection is
 * reported lost, and comes back by itself. */
static int scenario_restart(const char *conninfo)
{
        struct conn a;
        struct outcome o;
        open_conn(&a, "a", conninfo,
                  &(struct pgconn_options){.statement_timeout_usec = 120 * USEC_PER_SEC,
                                           .batch_timeout_usec = 120 * USEC_PER_SEC,
                                           .reconnect_initial_usec = 50 * USEC_PER_MSEC,
                                           .reconnect_max_usec = 500 * USEC_PER_MSEC});
        migrate_ok(&a);
        char id[96];
        make_id(id, sizeof(id), "restart", 1);
        const char *p[] = {id, "src"};
        struct pgconn_stmt s[] = {{.sql = PGSCHEMA_INSERT, .n_params = 2, .params = p},
                                  {.sql = "SELECT pg_sleep(100)"}};
        send_batch(&a, s, 2, &o);
        /* Until the INSERT is answered: the batch is on the server. */
        while (!o.done && pgconn_get_stats(a.pg)->results < 2 + 1)
                CHECK(sd_event_run(loop, UINT64_MAX) >= 0, "loop");
        say("inflight");
        uint64_t t0 = now_monotonic_usec();
        pump(&o.done, 60 * USEC_PER_SEC, "the batch to end");
        say("batch error=%d unknown=%d failed=%d sqlstate=%s after=%" PRIu64 "ms", o.error,
            o.unknown, o.failed, o.sqlstate, (now_monotonic_usec() - t0) / USEC_PER_MSEC);
        CHECK(o.error == -ECONNRESET, "lost: %d %s", o.error, o.message);
        /* Whether the dying server process said FATAL or nothing, the client cannot know if it
         * committed. */
        CHECK(o.unknown, "the outcome is unknown");
        outcome_clear(&o);
        CHECK(!a.up && a.lost == 1, "reported lost");
        CHECK(pgconn_send(a.pg, s, 1, on_done, &o) == -ENOTCONN, "nothing sent while down");
        pump(&a.up, 120 * USEC_PER_SEC, "the connection to come back");
        say("reconnected after %u failed attempts", a.failed);
        CHECK(count_where(&a, "creation_id = $1", id) == 0, "the interrupted insert is undone");
        CHECK(insert_jobs(&a, "restart", 2, 3) == 3, "work resumes");
        say("ok");
        pgconn_free(a.pg);
        return 0;
}

/* The server's statement timeout ends a batch and leaves the connection up; it is the batch's
 * own (set_config(..., true)), so a connection without one, through the same pooler, does not
 * inherit it. */
static int scenario_timeout(const char *conninfo)
{
        struct conn a, b;
        struct outcome o;
        open_conn(&a, "a", conninfo,
                  &(struct pgconn_options){.statement_timeout_usec = 300 * USEC_PER_MSEC,
                                           .batch_timeout_usec = 30 * USEC_PER_SEC});
        open_conn(&b, "b", conninfo, &(struct pgconn_options){.statement_timeout_usec = 0});
        struct pgconn_stmt sleep = {.sql = "SELECT pg_sleep(5)"};
        uint64_t t0 = now_monotonic_usec();
        run(&a, &sleep, 1, &o, true);
        uint64_t elapsed = now_monotonic_usec() - t0;
        say("statement timeout error=%d sqlstate=%s after=%" PRIu64 "ms", o.error, o.sqlstate,
            elapsed / USEC_PER_MSEC);
        CHECK(o.error == -ETIMEDOUT && strcmp(o.sqlstate, "57014") == 0 && !o.unknown,
              "cancelled by the server");
        CHECK(elapsed < 4 * USEC_PER_SEC, "well before the sleep's end");
        outcome_clear(&o);
        CHECK(a.up && a.lost == 0, "the connection stays");
        run1(&a, &o, "SELECT current_setting('statement_timeout')", 0);
        CHECK(strcmp(value(&o, 0, 0, 0), "300ms") == 0, "set for the batch: %s",
              value(&o, 0, 0, 0));
        outcome_clear(&o);
        for (int i = 0; i < 8; i++) {
                run1(&b, &o, "SELECT current_setting('statement_timeout')", 0);
                CHECK(strcmp(value(&o, 0, 0, 0), "0") == 0, "not inherited: %s",
                      value(&o, 0, 0, 0));
                outcome_clear(&o);
        }
        say("ok");
        pgconn_free(a.pg);
        pgconn_free(b.pg);
        return 0;
}

/* An idle connection whose server process is terminated: found lost from its socket, not at
 * the next batch, and back by itself. */
static int scenario_terminate(const char *conninfo)
{
        struct conn a, b;
        struct outcome o;
        open_conn(&a, "a", conninfo, NULL);
        open_conn(&b, "b", conninfo, NULL);
        char pid[UINT_DEC_SIZE];
        format_uint((uint64_t)pgconn_backend_pid(a.pg), pid);
        run1(&b, &o, "SELECT pg_terminate_backend($1::int)", 1, pid);
        CHECK(strcmp(value(&o, 0, 0, 0), "t") == 0, "terminated");
        outcome_clear(&o);
        /* Nothing sent on a: only its socket tells. */
        while (a.lost == 0)
                CHECK(sd_event_run(loop, 30 * USEC_PER_SEC) > 0, "no word of the loss");
        say("lost: %s", pgconn_errmsg(a.pg));
        pump(&a.up, 30 * USEC_PER_SEC, "the connection to come back");
        CHECK(a.connected == 2, "reconnected");
        CHECK(pgconn_backend_pid(a.pg) != atoi(pid), "a new server process");
        run1(&a, &o, "SELECT 1", 0);
        outcome_clear(&o);
        say("ok");
        pgconn_free(a.pg);
        pgconn_free(b.pg);
        return 0;
}

/* Ticks of a 10 ms timer, and the longest gap between two: the loop's responsiveness. */
struct ticker {
        sd_event_source *src;
        uint64_t last, max_gap, count;
};

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct ticker *t = userdata;
        uint64_t now = now_monotonic_usec();
        if (t->last && now - t->last > t->max_gap)
                t->max_gap = now - t->last;
        t->last = now;
        t->count++;
        event_timer_in(s, 10 * USEC_PER_MSEC);
        return 0;
}

static void ticker_reset(struct ticker *t)
{
        t->last = now_monotonic_usec();
        t->max_gap = t->count = 0;
}

/* The server stopped (SIGSTOP): the batch times out on the loop's timer while the loop keeps
 * running its other timers; reconnection attempts time out too; after SIGCONT it comes back. */
static int scenario_freeze(const char *conninfo)
{
        struct conn a;
        struct outcome o;
        struct ticker t = {0};
        open_conn(&a, "a", conninfo,
                  &(struct pgconn_options){.statement_timeout_usec = 1 * USEC_PER_SEC,
                                           .batch_timeout_usec = 2 * USEC_PER_SEC,
                                           .connect_timeout_usec = 1 * USEC_PER_SEC,
                                           .reconnect_initial_usec = 50 * USEC_PER_MSEC,
                                           .reconnect_max_usec = 500 * USEC_PER_MSEC});
        migrate_ok(&a);
        CHECK(sd_event_add_time(loop, &t.src, CLOCK_MONOTONIC, 0, 1, on_tick, &t) >= 0, "ticker");
        event_timer_in(t.src, 10 * USEC_PER_MSEC);
        say("ready");
        expect_line("frozen");

        char id[96];
        make_id(id, sizeof(id), "frozen", 1);
        const char *p[] = {id, "src"};
        struct pgconn_stmt s[] = {{.sql = PGSCHEMA_INSERT, .n_params = 2, .params = p},
                                  {.sql = "SELECT 1"}};
        ticker_reset(&t);
        uint64_t t0 = now_monotonic_usec();
        send_batch(&a, s, 2, &o);
        pump(&o.done, 30 * USEC_PER_SEC, "the batch to time out");
        uint64_t elapsed = now_monotonic_usec() - t0;
        say("timedout error=%d unknown=%d elapsed=%" PRIu64 "ms ticks=%" PRIu64 " maxgap=%" PRIu64
            "ms",
            o.error, o.unknown, elapsed / USEC_PER_MSEC, t.count, t.max_gap / USEC_PER_MSEC);
        CHECK(o.error == -ETIMEDOUT && o.unknown, "timed out, outcome unknown: %d", o.error);
        CHECK(elapsed >= 1900 * USEC_PER_MSEC && elapsed < 10 * USEC_PER_SEC,
              "after the batch timeout");
        CHECK(t.max_gap < 500 * USEC_PER_MSEC, "the loop kept running");
        CHECK(t.count >= elapsed / (40 * USEC_PER_MSEC), "ticks: %" PRIu64, t.count);
        outcome_clear(&o);
        CHECK(a.lost == 1 && !a.up, "reported lost");

        /* Reconnecting to a stopped server: each attempt times out, the loop still runs. */
        ticker_reset(&t);
        unsigned failed = a.failed;
        while (a.failed < failed + 2)
                CHECK(sd_event_run(loop, UINT64_MAX) >= 0, "loop");
        say("connect-failed maxgap=%" PRIu64 "ms", t.max_gap / USEC_PER_MSEC);
        CHECK(t.max_gap < 500 * USEC_PER_MSEC, "the loop kept running while connecting");
        expect_line("thawed");
        pump(&a.up, 60 * USEC_PER_SEC, "the connection to come back");
        /* The batch given up on may still have been executed and committed by the server once it
         * ran again: that is what an unknown outcome means. */
        say("reconnected landed=%d", count_where(&a, "creation_id = $1", id));
        CHECK(insert_jobs(&a, "frozen", 2, 2) == 2, "work resumes");
        say("ok");
        sd_event_source_disable_unref(t.src);
        pgconn_free(a.pg);
        return 0;
}

/* For the wire count: one batch of n inserts, or n batches of one, between two lines. */
static int scenario_roundtrips(const char *conninfo, unsigned n, bool batched)
{
        struct conn a;
        open_conn(&a, "a", conninfo, &(struct pgconn_options){.statement_timeout_usec = 0});
        migrate_ok(&a);
        say("ready");
        expect_line("go");
        if (batched)
                CHECK(insert_jobs(&a, "rt", 0, n) == (int)n, "inserted");
        else
                for (unsigned i = 0; i < n; i++)
                        CHECK(insert_jobs(&a, "rt", i, 1) == 1, "inserted");
        say("done");
        expect_line("quit");
        pgconn_free(a.pg);
        return 0;
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* Round-trip time of a batch of 64 inserts, and of one insert. */
/* A turn of n deliveries of one creation each through PGSCHEMA_INTAKE; the jobs recorded. */
static int intake_turn(struct conn *cn, const char *what, unsigned first, unsigned n)
{
        char ids[64][96], keys[64][100];
        const char *idp[64], *kp[64], *srcp[64], *durp[64];
        CHECK(n <= 64, "too many");
        for (unsigned i = 0; i < n; i++) {
                make_id(ids[i], sizeof(ids[i]), what, first + i);
                snprintf(keys[i], sizeof(keys[i]), "k-%.95s", ids[i]);
                idp[i] = ids[i];
                kp[i] = keys[i];
                srcp[i] = "src";
                durp[i] = "4";
        }
        char *a = NULL, *b = NULL, *c = NULL, *d = NULL;
        CHECK(pgschema_text_array(kp, n, &a) == 0 && pgschema_text_array(idp, n, &b) == 0 &&
                  pgschema_text_array(srcp, n, &c) == 0 && pgschema_text_array(durp, n, &d) == 0,
              "arrays");
        struct outcome o;
        run1(cn, &o, PGSCHEMA_INTAKE, 7, a, "600000000", b, c, d, NULL, a);
        int jobs = 0;
        for (int r = 0; r < rows(&o, 0); r++)
                jobs += strcmp(value(&o, 0, r, 0), "job") == 0;
        outcome_clear(&o);
        free(a);
        free(b);
        free(c);
        free(d);
        return jobs;
}

static int scenario_bench(const char *conninfo, unsigned rounds)
{
        struct conn a;
        open_conn(&a, "a", conninfo, NULL);
        migrate_ok(&a);
        uint64_t *t64 = calloc(rounds, sizeof(uint64_t)), *t1 = calloc(rounds, sizeof(uint64_t));
        uint64_t *tm = calloc(rounds, sizeof(uint64_t)), *ti = calloc(rounds, sizeof(uint64_t));
        CHECK(t64 && t1 && tm && ti && rounds > 0, "memory");
        insert_jobs(&a, "warm", 0, 64);
        for (unsigned r = 0; r < rounds; r++) {
                uint64_t s = now_monotonic_usec();
                CHECK(insert_jobs(&a, "b64", r * 64, 64) == 64, "inserted");
                t64[r] = now_monotonic_usec() - s;
                s = now_monotonic_usec();
                CHECK(insert_jobs(&a, "b1", r, 1) == 1, "inserted");
                t1[r] = now_monotonic_usec() - s;
                s = now_monotonic_usec();
                CHECK(insert_many(&a, "many", r * 64, 64) == 64, "inserted");
                tm[r] = now_monotonic_usec() - s;
                s = now_monotonic_usec();
                CHECK(intake_turn(&a, "intake", r * 64, 64) == 64, "recorded");
                ti[r] = now_monotonic_usec() - s;
        }
        /* The same round trip with nothing to commit: what the commit's WAL flush costs. */
        uint64_t *tsel = calloc(rounds, sizeof(uint64_t));
        CHECK(tsel, "memory");
        struct pgconn_stmt sel[64];
        for (int i = 0; i < 64; i++)
                sel[i] = (struct pgconn_stmt){.sql = "SELECT 1"};
        for (unsigned r = 0; r < rounds; r++) {
                struct outcome o;
                uint64_t s = now_monotonic_usec();
                run(&a, sel, 64, &o, false);
                tsel[r] = now_monotonic_usec() - s;
                outcome_clear(&o);
        }
        qsort(tsel, rounds, sizeof(uint64_t), cmp_u64);
        qsort(t64, rounds, sizeof(uint64_t), cmp_u64);
        qsort(tm, rounds, sizeof(uint64_t), cmp_u64);
        qsort(t1, rounds, sizeof(uint64_t), cmp_u64);
        qsort(ti, rounds, sizeof(uint64_t), cmp_u64);
        say("bench rounds=%u batch64_p50_us=%" PRIu64 " batch64_p90_us=%" PRIu64
            " single_p50_us=%" PRIu64 " single_p90_us=%" PRIu64 " select64_p50_us=%" PRIu64
            " many64_p50_us=%" PRIu64 " intake64_p50_us=%" PRIu64 " intake64_p90_us=%" PRIu64,
            rounds, t64[rounds / 2], t64[rounds * 9 / 10], t1[rounds / 2], t1[rounds * 9 / 10],
            tsel[rounds / 2], tm[rounds / 2], ti[rounds / 2], ti[rounds * 9 / 10]);
        free(ti);
        free(tsel);
        free(tm);
        free(t64);
        free(t1);
        pgconn_free(a.pg);
        return 0;
}

/* Two batches in flight on one connection (max_in_flight = 2 and named statements, as the
 * daemon's turns on a direct connection): the second is written before the first's answer, runs
 * after it and sees what it committed, with its own statement timeout; the callbacks come in
 * order; a third waits (-EBUSY). A statement is named once a session, also when used twice in
 * a batch, and one whose plan a change of the table made stale fails once, then is named anew.
 * A first that fails takes the second down with it (the aborted transaction), not the
 * connection, and one ROLLBACK ends it; a connection lost under both fails both, each an
 * unknown outcome. */
static int scenario_pipeline(const char *conninfo)
{
        struct conn a, killer;
        struct outcome o1, o2, o3;
        open_conn(&a, "a", conninfo,
                  &(struct pgconn_options){.statement_timeout_usec = 7 * USEC_PER_SEC,
                                           .max_in_flight = 2,
                                           .prepare = true});
        open_conn(&killer, "killer", conninfo, NULL);
        run1(&a, &o1, "CREATE TABLE IF NOT EXISTS pipe (n int)", 0);
        outcome_clear(&o1);

        const struct pgconn_stmt first[] = {{.sql = "BEGIN"},
                                            {.sql = "SELECT pg_sleep(0.3)"},
                                            {.sql = "INSERT INTO pipe VALUES (1)"},
                                            {.sql = "COMMIT"}};
        const struct pgconn_stmt second[] = {
            {.sql = "BEGIN"},
            {.sql = "SELECT count(*), current_setting('statement_timeout') FROM pipe"},
            {.sql = "INSERT INTO pipe VALUES (2)"},
            {.sql = "COMMIT"}};
        send_batch(&a, first, ELEMENTSOF(first), &o1);
        send_batch(&a, second, ELEMENTSOF(second), &o2);
        const struct pgconn_stmt third = {.sql = "SELECT 1"};
        CHECK(pgconn_send(a.pg, &third, 1, on_done, &o3) == -EBUSY, "a third waits");
        pump(&o1.done, 30 * USEC_PER_SEC, "the first batch");
        CHECK(!o2.done, "answers in order: the second after the first");
        pump(&o2.done, 30 * USEC_PER_SEC, "the second batch");
        CHECK(o1.error == 0 && o2.error == 0, "both committed: %d %d", o1.error, o2.error);
        CHECK(strcmp(value(&o2, 1, 0, 0), "1") == 0, "the second saw the first's row: %s",
              value(&o2, 1, 0, 0));
        CHECK(strcmp(value(&o2, 1, 0, 1), "7s") == 0, "its own statement timeout: %s",
              value(&o2, 1, 0, 1));
        say("pipelined in order ok");
        outcome_clear(&o1);
        outcome_clear(&o2);

        /* Statements with parameters are named; the rest (BEGIN, COMMIT) go unnamed. */
        static const char *const named_sql =
            "SELECT count(*) FROM pg_prepared_statements WHERE statement = "
            "'SELECT * FROM pipe WHERE n > $1 ORDER BY n'";
        const char *zero[] = {"0"};
        const struct pgconn_stmt twice[] = {
            {.sql = "SELECT * FROM pipe WHERE n > $1 ORDER BY n", .n_params = 1, .params = zero},
            {.sql = "SELECT * FROM pipe WHERE n > $1 ORDER BY n", .n_params = 1, .params = zero},
            {.sql = named_sql}};
        run(&a, twice, ELEMENTSOF(twice), &o1, false);
        CHECK(rows(&o1, 0) == 2 && rows(&o1, 1) == 2, "both answered: %d %d", rows(&o1, 0),
              rows(&o1, 1));
        CHECK(strcmp(value(&o1, 2, 0, 0), "1") == 0, "named once: %s", value(&o1, 2, 0, 0));
        outcome_clear(&o1);
        run1(&killer, &o3, "ALTER TABLE pipe ADD COLUMN m int", 0);
        outcome_clear(&o3);
        run(&a, twice, 1, &o1, true);
        say("stale plan error=%d sqlstate=%s", o1.error, o1.sqlstate);
        outcome_clear(&o1);
        run(&a, twice, 1, &o1, false);
        CHECK(PQnfields(o1.res[0]) == 2, "named anew, with the new column: %d",
              PQnfields(o1.res[0]));
        outcome_clear(&o1);
        say("named statements ok");

        const struct pgconn_stmt failing[] = {{.sql = "BEGIN"},
                                              {.sql = "INSERT INTO pipe VALUES (3)"},
                                              {.sql = "SELECT 1 / 0"},
                                              {.sql = "COMMIT"}};
        send_batch(&a, failing, ELEMENTSOF(failing), &o1);
        send_batch(&a, second, ELEMENTSOF(second), &o2);
        /* The ROLLBACK sent as the daemon's turns do: once the first failed, behind the second
         * still in flight. */
        pump(&o1.done, 30 * USEC_PER_SEC, "the failing batch");
        const struct pgconn_stmt rollback = {.sql = "ROLLBACK"};
        if (!o2.done)
                send_batch(&a, &rollback, 1, &o3);
        else
                run(&a, &rollback, 1, &o3, false);
        pump(&o2.done, 30 * USEC_PER_SEC, "the batch behind a failing one");
        pump(&o3.done, 30 * USEC_PER_SEC, "the ROLLBACK");
        CHECK(o3.error == 0, "the ROLLBACK ran: %s", o3.message);
        outcome_clear(&o3);
        say("failed first error=%d sqlstate=%s, second error=%d sqlstate=%s", o1.error, o1.sqlstate,
            o2.error, o2.sqlstate);
        CHECK(o1.error == -EIO && strcmp(o1.sqlstate, "22012") == 0 && !o1.unknown,
              "the first failed by itself");
        CHECK(o2.error < 0 && strcmp(o2.sqlstate, "25P02") == 0 && !o2.unknown,
              "the second failed in the aborted transaction");
        CHECK(a.up && a.lost == 0, "the connection stays");
        outcome_clear(&o1);
        outcome_clear(&o2);
        run1(&a, &o1, "SELECT count(*) FROM pipe", 0);
        CHECK(strcmp(value(&o1, 0, 0, 0), "2") == 0, "neither wrote: %s", value(&o1, 0, 0, 0));
        outcome_clear(&o1);
        say("failure behind ok");

        char pid[UINT_DEC_SIZE];
        format_uint((uint64_t)pgconn_backend_pid(a.pg), pid);
        send_batch(&a, first, ELEMENTSOF(first), &o1);
        send_batch(&a, second, ELEMENTSOF(second), &o2);
        run1(&killer, &o3, "SELECT pg_terminate_backend($1::int)", 1, pid);
        outcome_clear(&o3);
        pump(&o2.done, 30 * USEC_PER_SEC, "both batches of a lost connection");
        CHECK(o1.done, "the first heard first");
        say("lost first error=%d unknown=%d, second error=%d unknown=%d", o1.error, o1.unknown,
            o2.error, o2.unknown);
        CHECK(o1.error < 0 && o1.unknown && o2.error < 0 && o2.unknown, "both unknown outcomes");
        outcome_clear(&o1);
        outcome_clear(&o2);
        pump(&a.up, 30 * USEC_PER_SEC, "the reconnection");
        say("lost under both ok");
        say("ok");
        pgconn_free(a.pg);
        pgconn_free(killer.pg);
        return 0;
}

int main(int argc, char **argv)
{
        if (argc < 3) {
                fprintf(stderr,
                        "usage: pg-driver "
                        "basic|migrate|migrate-timeout|same-id|intake|plans|claim|fence|timeout|"
                        "terminate|pipeline|restart|freeze|bench|roundtrips CONNINFO [ARGS]\n");
                return 2;
        }
        snprintf(prefix, sizeof(prefix), "t%d-%" PRIu64, (int)getpid(), now_realtime_usec());
        CHECK(sd_event_default(&loop) >= 0, "sd_event_default");
        const char *s = argv[1], *ci = argv[2];
        char *err = NULL;
        CHECK(pgconn_check_conninfo(ci, &err) == 0, "conninfo: %s", err);
        if (strcmp(s, "basic") == 0)
                return scenario_basic(ci);
        if (strcmp(s, "migrate") == 0)
                return scenario_migrate(ci);
        if (strcmp(s, "claim") == 0)
                return scenario_claim(ci);
        if (strcmp(s, "fence") == 0)
                return scenario_fence(ci);
        if (strcmp(s, "restart") == 0)
                return scenario_restart(ci);
        if (strcmp(s, "freeze") == 0)
                return scenario_freeze(ci);
        if (strcmp(s, "plans") == 0)
                return scenario_plans(ci);
        if (strcmp(s, "same-id") == 0)
                return scenario_same_id(ci);
        if (strcmp(s, "intake") == 0)
                return scenario_intake(ci);
        if (strcmp(s, "migrate-timeout") == 0)
                return scenario_migrate_timeout(ci);
        if (strcmp(s, "timeout") == 0)
                return scenario_timeout(ci);
        if (strcmp(s, "terminate") == 0)
                return scenario_terminate(ci);
        if (strcmp(s, "pipeline") == 0)
                return scenario_pipeline(ci);
        if (strcmp(s, "bench") == 0)
                return scenario_bench(ci, argc > 3 ? (unsigned)atoi(argv[3]) : 100);
        if (strcmp(s, "roundtrips") == 0 && argc > 4)
                return scenario_roundtrips(ci, (unsigned)atoi(argv[3]),
                                           strcmp(argv[4], "batch") == 0);
        fprintf(stderr, "unknown scenario %s\n", s);
        return 2;
}
