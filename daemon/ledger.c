/* ledger.c: the SQLite ledger: WAL, versioned migrations, prepared statements, state counters. */
#include "ledger.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "event.h"
#include "ledger_backend.h"
#include "util.h"
#include "walvfs.h"

enum {
        STMT_BEGIN,
        STMT_COMMIT,
        STMT_ROLLBACK,
        STMT_SAVEPOINT,
        STMT_RELEASE,
        STMT_ROLLBACK_TO,
        STMT_INSERT,
        STMT_GET,
        STMT_GET_BY_UPSCALE,
        STMT_SAVE,
        STMT_SAVE_FROM,
        STMT_DUE_SUBMIT,
        STMT_DUE_POLL,
        STMT_NEXT_SUBMIT,
        STMT_NEXT_POLL,
        STMT_COUNTS,
        STMT_REPLAY_GET,
        STMT_REPLAY_PUT,
        STMT_REPLAY_PURGE,
        STMT_PROBE,
        STMT_STATE,
        STMT_COUNT_ADD,
        STMT_SPEND_ADD,
        STMT_SPEND_CREDITS,
        STMT_JOB_CREDITS,
        STMT_SPEND_USAGE,
        STMT_SPEND_LIST,
        STMT_META_GET,
        STMT_META_PUT,
        STMT_META_DEL,
        STMT_SPEND_PURGE,
        STMT_GET_PAYLOAD,
        STMT_EVENT_ADD,
        STMT_EVENTS_DUE,
        STMT_EVENTS_NEXT,
        STMT_EVENT_UPDATE,
        STMT_EVENTS_PURGE,
        STMT_EVENTS_BACKLOG,
        _STMT_MAX,
};

/* The columns row_to_job reads, in its order. */
#define JOB_SELECT                                                                                 \
        "SELECT creation_id, source_task_id, upscale_task_id, state, attempt, next_at, "           \
        "http_status, upstream_error, result_url, created_at, updated_at, duration, credits "

#define EVENT_COLUMNS                                                                              \
        "id, type, creation_id, state, attempts, next_at, since, created_at, updated_at, "         \
        "http_status, error"

static const char *const stmt_sql[_STMT_MAX] = {
    [STMT_BEGIN] = "BEGIN IMMEDIATE",
    [STMT_COMMIT] = "COMMIT",
    [STMT_ROLLBACK] = "ROLLBACK",
    [STMT_SAVEPOINT] = "SAVEPOINT part",
    [STMT_RELEASE] = "RELEASE part",
    [STMT_ROLLBACK_TO] = "ROLLBACK TO part",
    [STMT_INSERT] = "INSERT INTO jobs(creation_id, source_task_id, state, attempt, next_at, "
                    "created_at, updated_at, duration, payload) "
                    "VALUES (?1, ?2, 'pending', 0, ?3, ?3, ?3, ?4, ?5) "
                    "ON CONFLICT(creation_id) DO NOTHING",
    [STMT_GET] = JOB_SELECT "FROM jobs WHERE creation_id = ?1",
    [STMT_GET_BY_UPSCALE] = JOB_SELECT "FROM jobs WHERE upscale_task_id = ?1",
    [STMT_SAVE] = "UPDATE jobs SET state = ?2, attempt = ?3, next_at = ?4, upscale_task_id = ?5, "
                  "http_status = ?6, upstream_error = ?7, result_url = ?8, updated_at = ?9 "
                  "WHERE creation_id = ?1",
    [STMT_SAVE_FROM] = "UPDATE jobs SET state = ?2, attempt = ?3, next_at = ?4, "
                       "upscale_task_id = ?5, http_status = ?6, upstream_error = ?7, "
                       "result_url = ?8, updated_at = ?9 WHERE creation_id = ?1 AND state = ?10",
    [STMT_DUE_SUBMIT] = JOB_SELECT "FROM jobs WHERE state IN ('pending', 'waiting') "
                                   "AND next_at <= ?1 ORDER BY next_at LIMIT ?2",
    [STMT_DUE_POLL] = JOB_SELECT "FROM jobs WHERE state = 'submitted' AND next_at <= ?1 "
                                 "ORDER BY next_at LIMIT ?2",
    [STMT_NEXT_SUBMIT] = "SELECT min(next_at) FROM jobs WHERE state IN ('pending', 'waiting')",
    [STMT_NEXT_POLL] = "SELECT min(next_at) FROM jobs WHERE state = 'submitted'",
    [STMT_COUNTS] = "SELECT state, n FROM job_counts",
    [STMT_REPLAY_GET] = "SELECT until FROM replay WHERE key = ?1",
    [STMT_REPLAY_PUT] = "INSERT OR REPLACE INTO replay(key, until) VALUES (?1, ?2)",
    [STMT_REPLAY_PURGE] = "DELETE FROM replay WHERE until < ?1",
    [STMT_PROBE] = "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_probe', ?1)",
    [STMT_STATE] = "SELECT state FROM jobs WHERE creation_id = ?1",
    [STMT_COUNT_ADD] = "UPDATE job_counts SET n = n + ?2 WHERE state = ?1",
    [STMT_SPEND_ADD] = "INSERT OR IGNORE INTO submissions(creation_id, at, credits) "
                       "VALUES (?1, ?2, ?3)",
    [STMT_SPEND_CREDITS] = "UPDATE submissions SET credits = ?2 WHERE creation_id = ?1 AND at = "
                           "(SELECT max(at) FROM submissions WHERE creation_id = ?1)",
    [STMT_JOB_CREDITS] = "UPDATE jobs SET credits = ?2 WHERE creation_id = ?1",
    /* Both windows in one pass over the day's part of the index (covering: at, credits). */
    [STMT_SPEND_USAGE] = "SELECT count(*), total(at > ?2), total(coalesce(credits, ?3)) "
                         "FROM submissions WHERE at > ?1",
    [STMT_SPEND_LIST] = "SELECT at, credits FROM submissions WHERE at > ?1 ORDER BY at",
    [STMT_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [STMT_META_PUT] = "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
    [STMT_META_DEL] = "DELETE FROM meta WHERE key = ?1",
    [STMT_SPEND_PURGE] = "DELETE FROM submissions WHERE at < ?1",
    [STMT_GET_PAYLOAD] = "SELECT payload FROM jobs WHERE creation_id = ?1",
    [STMT_EVENT_ADD] =
        "INSERT INTO events(id, type, creation_id, state, attempts, next_at, since, "
        "created_at, updated_at, body) VALUES ('evt_' || lower(hex(randomblob(12))), "
        "?1, ?2, 'pending', 0, ?3, ?3, ?3, ?3, ?4)",
    [STMT_EVENTS_DUE] = "SELECT " EVENT_COLUMNS ", body FROM events WHERE state = 'pending' "
                        "AND next_at <= ?1 ORDER BY next_at, seq LIMIT ?2",
    [STMT_EVENTS_NEXT] = "SELECT min(next_at) FROM events WHERE state = 'pending'",
    [STMT_EVENT_UPDATE] = "UPDATE events SET state = ?2, attempts = ?3, next_at = ?4, "
                          "http_status = ?5, error = ?6, updated_at = ?7 WHERE id = ?1 "
                          "AND state = 'pending'",
    [STMT_EVENTS_PURGE] = ("DELETE FROM events WHERE seq IN (SELECT seq FROM events "
                           "WHERE state = 'delivered' AND updated_at < ?1 LIMIT ?2)"),
    [STMT_EVENTS_BACKLOG] = "SELECT count(*) FROM events WHERE state = 'pending'",
};

/* Each migration moves the schema from version i to i+1; never edit one that has shipped. */
static const char *const migrations[] = {
    /* 1: jobs, their counters, replay memory. */
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;"
    "CREATE TABLE jobs ("
    "  creation_id TEXT PRIMARY KEY,"
    "  source_task_id TEXT,"
    "  upscale_task_id TEXT,"
    "  state TEXT NOT NULL,"
    "  attempt INTEGER NOT NULL DEFAULT 0,"
    "  next_at INTEGER NOT NULL,"
    "  http_status INTEGER,"
    "  upstream_error TEXT,"
    "  result_url TEXT,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    /* Only jobs that still need work are indexed, so the scheduler's queries stay cheap
     * however many finished jobs the ledger holds. */
    "CREATE INDEX jobs_submit_due ON jobs(next_at) WHERE state IN ('pending', 'waiting');"
    "CREATE INDEX jobs_poll_due ON jobs(next_at) WHERE state = 'submitted';"
    "CREATE UNIQUE INDEX jobs_upscale ON jobs(upscale_task_id) WHERE upscale_task_id IS NOT NULL;"
    "CREATE TABLE job_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO job_counts(state, n) VALUES ('pending', 0), ('submitting', 0), ('waiting', 0),"
    "  ('submitted', 0), ('succeeded', 0), ('failed', 0), ('dead', 0), ('uncertain', 0);"
    "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN"
    "  UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END;"
    "CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs"
    "  WHEN OLD.state <> NEW.state BEGIN"
    "  UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;"
    "  UPDATE job_counts SET n = n + 1 WHERE state = NEW.state; END;"
    "CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN"
    "  UPDATE job_counts SET n = n - 1 WHERE state = OLD.state; END;"
    "CREATE TABLE replay (key TEXT PRIMARY KEY, until INTEGER NOT NULL) WITHOUT ROWID;",
    /* 2: the counters follow inserts and state changes from ledger.c, once per commit, instead
     * of from triggers: a trigger's two UPDATEs cost more than the job's own statement (under
     * callgrind and in a bare SQLite loop: ~8 us a job of ~60 us a notification). Deleting jobs
     * is left to the trigger: the daemon never does it. (Parenthesised, the same text, so that
     * clang does not take the two literals for a missing comma.) */
    ("DROP TRIGGER jobs_count_insert;"
     "DROP TRIGGER jobs_count_update;"),
    /* 3: the upscale duration decided when the job was recorded (upscale.duration, or the
     * source task's with `source`), which its submission sends; NULL for older jobs, which are
     * sent upscale.duration's number. */
    "ALTER TABLE jobs"
    "  ADD COLUMN duration INTEGER;",
    /* 4: the spend guard. One row per submission that may have left (marked `submitting`), kept
     * so the rolling budget windows are counted from the ledger across restarts and instances;
     * the index on (at, credits) answers a window's count and credit sum without the table.
     * jobs.credits: the upscale's cost when the upstream reports it. */
    "CREATE TABLE submissions ("
    "  creation_id TEXT NOT NULL,"
    "  at INTEGER NOT NULL,"
    "  credits INTEGER,"
    "  PRIMARY KEY (creation_id, at)"
    ") WITHOUT ROWID;"
    "CREATE INDEX submissions_at ON submissions(at, credits);"
    "ALTER TABLE jobs ADD COLUMN credits INTEGER;",
    /* 5: the source notification's `payload`, kept as it came so that an ent-v2 submission (and
     * an event about the job) can pass it on. Read on demand (ledger_get_payload), never with
     * the rest of the job: it may be up to 1 MiB. */
    "ALTER TABLE jobs ADD COLUMN payload TEXT;",
    /* 6: the outbox of outcome events ([events]): written with the job transition that makes
     * each, sent from it until delivered or dead. `since` is when its current run of attempts
     * began (events.max_age counts from it; an operator's retry starts a new run). */
    "CREATE TABLE events ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  type TEXT NOT NULL,"
    "  creation_id TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  next_at INTEGER NOT NULL,"
    "  since INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  http_status INTEGER,"
    "  error TEXT,"
    "  body TEXT NOT NULL"
    ");"
    "CREATE INDEX events_due ON events(next_at) WHERE state = 'pending';"
    "CREATE INDEX events_delivered ON events(updated_at) WHERE state = 'delivered';"
    "CREATE INDEX events_creation ON events(creation_id);",
    /* 7: the jobs a start finds `submitting` (an interrupted stop), read through an index of
     * their own: without it the recovery scanned every job the ledger keeps (1.5 s at 5M jobs,
     * growing with the ledger). A job is in it only between its mark and its answer. */
    "CREATE INDEX jobs_submitting ON jobs(created_at) WHERE state = 'submitting';",
};

struct ledger {
        /* Set for a ledger kept elsewhere (ledger_open_backend): every call goes to it. */
        const struct ledger_backend *backend;
        void *impl;
        sqlite3 *db;
        char *path;
        sqlite3_stmt *stmt[_STMT_MAX];
        char errbuf[512];
        bool read_only;
        struct checkpointer *checkpointer;
        /* Changes to job_counts not yet written: added up by insert and save, written just
         * before COMMIT; what a savepoint undoes is taken back with it. */
        int64_t count_delta[_JOB_STATE_MAX];
        int64_t count_delta_savepoint[_JOB_STATE_MAX];
        unsigned event_states; /* job states whose transitions write an event */
        void (*event_hook)(void *userdata);
        void *event_hook_userdata;
};

/* WAL checkpoints in a thread of their own, on a connection of their own: a checkpoint copies the
 * WAL's pages into the database and fsyncs it, and on a large ledger (scattered pages) that took
 * over a second on the loop thread (p99 1.1 s at 64 connections over 10M jobs). PASSIVE
 * checkpoints never block the loop's commits. */
#define CHECKPOINT_PAGES 1000 /* as SQLite's own automatic checkpoint */

static int fail(struct ledger *l, int rc, const char *what);
static void load_event_states(struct ledger *l);

struct checkpointer {
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool wanted, stop;
        sqlite3 *db;
};

static int on_wal_commit(void *userdata, sqlite3 *db, const char *name, int pages)
{
        struct checkpointer *c = userdata;
        if (pages >= CHECKPOINT_PAGES) {
                pthread_mutex_lock(&c->lock);
                c->wanted = true;
                pthread_cond_signal(&c->cond);
                pthread_mutex_unlock(&c->lock);
        }
        return SQLITE_OK;
}

static void *checkpoint_thread(void *userdata)
{
        struct checkpointer *c = userdata;
        pthread_mutex_lock(&c->lock);
        for (;;) {
                while (!c->wanted && !c->stop)
                        pthread_cond_wait(&c->cond, &c->lock);
                if (c->stop)
                        break;
                c->wanted = false;
                pthread_mutex_unlock(&c->lock);
                (void)sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
                pthread_mutex_lock(&c->lock);
        }
        pthread_mutex_unlock(&c->lock);
        return NULL;
}

/* Frees a checkpointer whose thread has ended or never started. */
static void checkpointer_free(struct checkpointer *c)
{
        sqlite3_close(c->db);
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->lock);
        free(c);
}

static void checkpointer_stop(struct ledger *l)
{
        struct checkpointer *c = l->checkpointer;
        if (!c)
                return;
        sqlite3_wal_hook(l->db, NULL, NULL);
        sqlite3_wal_autocheckpoint(l->db, CHECKPOINT_PAGES);
        pthread_mutex_lock(&c->lock);
        c->stop = true;
        pthread_cond_signal(&c->cond);
        pthread_mutex_unlock(&c->lock);
        pthread_join(c->thread, NULL);
        checkpointer_free(c);
        l->checkpointer = NULL;
}

static int checkpointer_start(struct ledger *l, bool synchronous_full)
{
        struct checkpointer *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        pthread_mutex_init(&c->lock, NULL);
        pthread_cond_init(&c->cond, NULL);
        int rc =
            sqlite3_open_v2(l->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_exec(c->db,
                                  synchronous_full ? "PRAGMA synchronous = FULL"
                                                   : "PRAGMA synchronous = NORMAL",
                                  NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
                int r = fail(l, rc, "opening the checkpoint connection");
                checkpointer_free(c);
                return r;
        }
        if (pthread_create(&c->thread, NULL, checkpoint_thread, c) != 0) {
                checkpointer_free(c);
                snprintf(l->errbuf, sizeof(l->errbuf), "cannot start the checkpoint thread");
                return -EAGAIN;
        }
        l->checkpointer = c;
        /* Replaces SQLite's automatic checkpoint, which would run on the loop thread. */
        sqlite3_wal_hook(l->db, on_wal_commit, c);
        return 0;
}

static int errno_from_sqlite(int rc)
{
        switch (rc & 0xff) {
        case SQLITE_OK:
        case SQLITE_ROW:
        case SQLITE_DONE:
                return 0;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EUCLEAN;
        case SQLITE_READONLY:
        case SQLITE_PERM:
        case SQLITE_CANTOPEN:
                return -EACCES;
        case SQLITE_CONSTRAINT:
                return -EEXIST;
        default:
                return -EIO;
        }
}

/* Remembers why the last call failed, in the caller's words plus SQLite's. */
static int fail(struct ledger *l, int rc, const char *what)
{
        snprintf(l->errbuf, sizeof(l->errbuf), "%s: %s", what,
                 l->db ? sqlite3_errmsg(l->db) : sqlite3_errstr(rc));
        int r = errno_from_sqlite(rc);
        return r < 0 ? r : -EIO;
}

const char *ledger_errmsg(struct ledger *l)
{
        if (l && l->backend)
                return l->backend->errmsg(l->impl);
        return l ? l->errbuf : "no ledger";
}

static int exec(struct ledger *l, const char *sql, const char *what)
{
        int rc = sqlite3_exec(l->db, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                return fail(l, rc, what);
        return 0;
}

/* The WAL grown to twice a checkpoint's worth of frames with zeros written, once, so that commits
 * overwrite blocks the file already has. Appending to a file makes its fdatasync commit the
 * filesystem's journal as well (the new size and blocks), and on ext4 that waits for whatever
 * other processes wrote meanwhile (journald's files, say): measured on this project's bench
 * machine, 4 KiB appends took 0.30-0.51 ms a fdatasync (p50), overwrites 0.19 ms. Zeros past the
 * last frame are no frames to SQLite (a frame needs the header's salts and checksums). Done under
 * the write lock, so no other connection appends meanwhile; skipped when the filesystem has less
 * than WAL_KEEP_FREE free beyond it, and undone if it fails half-way. Best effort: the ledger
 * works the same without it. */
#define WAL_KEEP_FREE (64u << 20)

static void preallocate_wal(struct ledger *l)
{
        int page = 4096;
        sqlite3_stmt *s = NULL;
        if (sqlite3_prepare_v2(l->db, "PRAGMA page_size", -1, &s, NULL) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW)
                page = sqlite3_column_int(s, 0);
        sqlite3_finalize(s);
        off_t want = 32 + (off_t)2 * CHECKPOINT_PAGES * (24 + page);
        /* A burst that outruns the checkpointer grows the WAL past this; once the checkpoint has
         * caught up and the WAL starts over, SQLite cuts it back to this size, so the file's size
         * follows the load rather than keeping its highest mark forever. */
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA journal_size_limit = %lld", (long long)want);
        (void)sqlite3_exec(l->db, pragma, NULL, NULL, NULL);

        char wal[4096];
        if (snprintf(wal, sizeof(wal), "%s-wal", l->path) >= (int)sizeof(wal))
                return;
        if (sqlite3_exec(l->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
                return;
        /* SQLite made the file when it opened the ledger in WAL mode: its owner and mode. */
        int fd = open(wal, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
        struct stat st;
        struct statvfs vfs;
        if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size < want &&
            fstatvfs(fd, &vfs) == 0 &&
            (uint64_t)vfs.f_bavail * vfs.f_frsize >=
                (uint64_t)(want - st.st_size) + WAL_KEEP_FREE) {
                static const char zeros[65536];
                off_t at = st.st_size;
                bool ok = true;
                while (ok && at < want) {
                        size_t n =
                            want - at < (off_t)sizeof(zeros) ? (size_t)(want - at) : sizeof(zeros);
                        ssize_t w = pwrite(fd, zeros, n, at);
                        if (w <= 0)
                                ok = false;
                        else
                                at += w;
                }
                if (ok && fdatasync(fd) < 0)
                        ok = false;
                if (!ok && ftruncate(fd, st.st_size) < 0)
                        ok = false; /* left longer: zeros, which are still no frames */
        }
        if (fd >= 0)
                close(fd);
        sqlite3_exec(l->db, "COMMIT", NULL, NULL, NULL);
}

int ledger_schema_version(struct ledger *l)
{
        if (l->backend)
                return l->backend->schema_version(l->impl);
        sqlite3_stmt *s = NULL;
        int v = -EIO;
        if (sqlite3_prepare_v2(l->db, "PRAGMA user_version", -1, &s, NULL) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW)
                v = sqlite3_column_int(s, 0);
        sqlite3_finalize(s);
        return v;
}

static int migrate(struct ledger *l)
{
        int version = ledger_schema_version(l);
        if (version < 0)
                return fail(l, SQLITE_NOTADB, "reading the schema version");
        if ((size_t)version > ELEMENTSOF(migrations)) {
                snprintf(l->errbuf, sizeof(l->errbuf),
                         "schema version %d is newer than this daemon knows (%zu); run the newer "
                         "daemon or restore a matching backup",
                         version, ELEMENTSOF(migrations));
                return -EPROTO;
        }
        for (size_t v = (size_t)version; v < ELEMENTSOF(migrations); v++) {
                char sql[64];
                int r = exec(l, "BEGIN IMMEDIATE", "starting a migration");
                if (r < 0)
                        return r;
                r = exec(l, migrations[v], "migrating the schema");
                if (r >= 0) {
                        snprintf(sql, sizeof(sql), "PRAGMA user_version = %zu", v + 1);
                        r = exec(l, sql, "recording the schema version");
                }
                if (r >= 0)
                        r = exec(l, "COMMIT", "committing a migration");
                if (r < 0) {
                        sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
                        return r;
                }
        }
        return 0;
}

/* Whether the last writer left the mark of a clean stop (a file that cannot even say is not). */
static bool closed_clean(struct ledger *l)
{
        sqlite3_stmt *s = NULL;
        bool clean = false;
        if (sqlite3_prepare_v2(l->db, "SELECT value FROM meta WHERE key = 'closed_clean'", -1, &s,
                               NULL) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW)
                clean = true;
        sqlite3_finalize(s);
        return clean;
}

static int check_integrity(struct ledger *l)
{
        sqlite3_stmt *s = NULL;
        int rc = sqlite3_prepare_v2(l->db, "PRAGMA quick_check", -1, &s, NULL);
        if (rc != SQLITE_OK)
                return fail(l, rc, "checking integrity");
        rc = sqlite3_step(s);
        if (rc != SQLITE_ROW) {
                int r = fail(l, rc, "checking integrity");
                sqlite3_finalize(s);
                return r;
        }
        const char *res = (const char *)sqlite3_column_text(s, 0);
        if (!res || strcmp(res, "ok") != 0) {
                snprintf(l->errbuf, sizeof(l->errbuf), "integrity check failed: %s",
                         res ? res : "(no answer)");
                sqlite3_finalize(s);
                return -EUCLEAN;
        }
        sqlite3_finalize(s);
        return 0;
}

/* Process-wide SQLite settings, made once before its first use. Memory statistics off: with
 * them on, every allocation and free takes a global mutex to count bytes nothing here reads
 * (Debian's SQLite has no lookaside, so statements allocate often: about 50 allocations a
 * notification); off, callgrind counted 3 % fewer instructions a notification. */
static void sqlite_setup(void)
{
        (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

int ledger_open(const char *path, const struct ledger_options *opts, struct ledger **ret,
                char **ret_error)
{
        static pthread_once_t setup_once = PTHREAD_ONCE_INIT;
        pthread_once(&setup_once, sqlite_setup);
        struct ledger *l = calloc(1, sizeof(*l));
        int r;
        if (!l)
                return -ENOMEM;
        l->path = strdup(path);
        l->read_only = opts->read_only;
        if (!l->path) {
                free(l);
                return -ENOMEM;
        }
        int flags =
            SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE |
            (opts->read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
        /* A writer that syncs every commit gathers each commit's WAL writes into one. */
        const char *vfs =
            !opts->read_only && opts->synchronous_full && walvfs_register() == SQLITE_OK
                ? WALVFS_NAME
                : NULL;
        int rc = sqlite3_open_v2(path, &l->db, flags, vfs);
        if (rc != SQLITE_OK) {
                r = fail(l, rc, "opening");
                goto fail;
        }
        sqlite3_busy_timeout(l->db, (int)opts->busy_timeout_ms);
        sqlite3_extended_result_codes(l->db, 1);

        /* A file that is not a database fails on its first read: say so plainly. */
        if (!opts->read_only) {
                r = exec(l, "PRAGMA journal_mode = WAL", "switching to WAL");
                if (r < 0)
                        goto fail;
        }
        r = exec(
            l, opts->synchronous_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
            "setting synchronous");
        if (r < 0)
                goto fail;
        exec(l, "PRAGMA foreign_keys = ON", "enabling foreign keys");
        /* Savepoint and statement journals in memory: on disk, every turn (whose writers each
         * apply in a savepoint) created, wrote and deleted a temporary file. */
        exec(l, "PRAGMA temp_store = MEMORY", "keeping temporary journals in memory");
        if (opts->integrity_check && !closed_clean(l)) {
                if (opts->checking)
                        opts->checking(path, opts->checking_userdata);
                r = check_integrity(l);
                if (r < 0)
                        goto fail;
        }
        if (!opts->read_only) {
                r = migrate(l);
                if (r < 0)
                        goto fail;
        } else if (ledger_schema_version(l) != (int)ELEMENTSOF(migrations)) {
                snprintf(l->errbuf, sizeof(l->errbuf),
                         "schema version %d, expected %zu: start the daemon once to migrate it",
                         ledger_schema_version(l), ELEMENTSOF(migrations));
                r = -EPROTO;
                goto fail;
        }
        for (size_t i = 0; i < _STMT_MAX; i++) {
                if (opts->read_only && (i == STMT_PROBE || i == STMT_EVENT_ADD ||
                                        i == STMT_EVENT_UPDATE || i == STMT_EVENTS_PURGE))
                        continue;
                rc = sqlite3_prepare_v3(l->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                        &l->stmt[i], NULL);
                if (rc != SQLITE_OK) {
                        r = fail(l, rc, "preparing statements");
                        goto fail;
                }
        }
        load_event_states(l);
        /* From here on the file is written: only a clean stop marks it clean again. */
        if (opts->integrity_check && !opts->read_only) {
                r = exec(l, "DELETE FROM meta WHERE key = 'closed_clean'", "opening");
                if (r < 0)
                        goto fail;
        }
        if (opts->preallocate_wal && !opts->read_only)
                preallocate_wal(l);
        if (opts->checkpoint_in_background && !opts->read_only) {
                r = checkpointer_start(l, opts->synchronous_full);
                if (r < 0)
                        goto fail;
        }
        *ret = l;
        return 0;
fail:
        if (ret_error) {
                char *msg = NULL;
                if (r == -EUCLEAN)
                        r = asprintf(
                                &msg,
                                "ledger %s is damaged (%s). The daemon will not reset it: stop "
                                "the service, move the file aside (with its -wal and -shm "
                                "files), and restore a backup or try `sqlite3 %s .recover`",
                                path, l->errbuf, path) < 0
                                ? -ENOMEM
                                : -EUCLEAN;
                else {
                        int saved = r;
                        r = asprintf(&msg, "ledger %s: %s", path, l->errbuf) < 0 ? -ENOMEM : saved;
                }
                *ret_error = msg;
        }
        ledger_close(l);
        return r;
}

int ledger_open_backend(const struct ledger_backend *b, void *impl, struct ledger **ret)
{
        struct ledger *l = calloc(1, sizeof(*l));
        if (!l) {
                b->close(impl);
                return -ENOMEM;
        }
        l->backend = b;
        l->impl = impl;
        *ret = l;
        return 0;
}

struct ledger *ledger_close(struct ledger *l)
{
        if (!l)
                return NULL;
        if (l->backend) {
                l->backend->close(l->impl);
                free(l);
                return NULL;
        }
        if (l->db)
                checkpointer_stop(l);
        for (size_t i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(l->stmt[i]);
        if (l->db) {
                if (!l->read_only)
                        sqlite3_exec(l->db, "PRAGMA optimize", NULL, NULL, NULL);
                sqlite3_close(l->db);
        }
        free(l->path);
        free(l);
        return NULL;
}

int ledger_mark_closed_clean(struct ledger *l)
{
        if (l->backend || l->read_only)
                return -EOPNOTSUPP;
        return exec(l, "INSERT OR REPLACE INTO meta(key, value) VALUES ('closed_clean', '1')",
                    "marking a clean stop");
}

/* Runs a prepared statement that returns no rows, and resets it. */
static int step_done(struct ledger *l, sqlite3_stmt *s, const char *what)
{
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (rc != SQLITE_DONE && rc != SQLITE_ROW)
                return fail(l, rc, what);
        return 0;
}

/* Writes the counters' pending changes into the transaction (or, outside one, at once). */
static int write_counts(struct ledger *l)
{
        sqlite3_stmt *s = l->stmt[STMT_COUNT_ADD];
        for (int st = 0; st < _JOB_STATE_MAX; st++) {
                if (l->count_delta[st] == 0)
                        continue;
                sqlite3_bind_text(s, 1, job_state_to_string((enum job_state)st), -1, SQLITE_STATIC);
                sqlite3_bind_int64(s, 2, (sqlite3_int64)l->count_delta[st]);
                int r = step_done(l, s, "counting jobs by state");
                if (r < 0)
                        return r; /* the caller rolls back, which clears the rest */
                l->count_delta[st] = 0;
        }
        return 0;
}

/* A job entered state TO, leaving FROM (-1: a new job). Outside a transaction there is no
 * COMMIT to write it at, so it is written at once. */
static int count_change(struct ledger *l, int from, int to)
{
        if (from >= 0)
                l->count_delta[from]--;
        l->count_delta[to]++;
        return sqlite3_get_autocommit(l->db) ? write_counts(l) : 0;
}

int ledger_begin(struct ledger *l)
{
        if (l->backend)
                return l->backend->begin(l->impl);
        memset(l->count_delta, 0, sizeof(l->count_delta));
        return step_done(l, l->stmt[STMT_BEGIN], "beginning a transaction");
}

int ledger_commit(struct ledger *l)
{
        if (l->backend)
                return l->backend->commit(l->impl);
        int r = write_counts(l);
        if (r < 0)
                return r;
        return step_done(l, l->stmt[STMT_COMMIT], "committing");
}

void ledger_rollback(struct ledger *l)
{
        if (l->backend) {
                l->backend->rollback(l->impl);
                return;
        }
        memset(l->count_delta, 0, sizeof(l->count_delta));
        if (!sqlite3_get_autocommit(l->db))
                (void)step_done(l, l->stmt[STMT_ROLLBACK], "rolling back");
}

int ledger_savepoint(struct ledger *l)
{
        if (l->backend)
                return -EOPNOTSUPP;
        memcpy(l->count_delta_savepoint, l->count_delta, sizeof(l->count_delta));
        return step_done(l, l->stmt[STMT_SAVEPOINT], "opening a savepoint");
}

int ledger_release(struct ledger *l)
{
        if (l->backend)
                return -EOPNOTSUPP;
        return step_done(l, l->stmt[STMT_RELEASE], "releasing a savepoint");
}

int ledger_rollback_to(struct ledger *l)
{
        if (l->backend)
                return -EOPNOTSUPP;
        memcpy(l->count_delta, l->count_delta_savepoint, sizeof(l->count_delta));
        int r = step_done(l, l->stmt[STMT_ROLLBACK_TO], "rolling back to a savepoint");
        if (r >= 0)
                r = step_done(l, l->stmt[STMT_RELEASE], "releasing a savepoint");
        return r;
}

bool ledger_in_transaction(struct ledger *l)
{
        if (l->backend)
                return false;
        return !sqlite3_get_autocommit(l->db);
}

static void bind_text_or_null(sqlite3_stmt *s, int i, const char *v)
{
        if (isempty(v))
                sqlite3_bind_null(s, i);
        else
                sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
}

int ledger_insert(struct ledger *l, const char *creation_id, const char *source_task_id,
                  uint64_t now_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        return ledger_insert_job(l, creation_id, source_task_id, 0, NULL, now_usec);
}

int ledger_insert_job(struct ledger *l, const char *creation_id, const char *source_task_id,
                      unsigned duration, const char *payload, uint64_t now_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        if (payload && strlen(payload) > LEDGER_PAYLOAD_MAX)
                return -E2BIG;
        sqlite3_stmt *s = l->stmt[STMT_INSERT];
        sqlite3_bind_text(s, 1, creation_id, -1, SQLITE_STATIC);
        bind_text_or_null(s, 2, source_task_id);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)now_usec);
        if (duration)
                sqlite3_bind_int(s, 4, (int)duration);
        else
                sqlite3_bind_null(s, 4);
        /* An empty payload is kept as one: it was sent, and is passed on as sent. */
        if (payload)
                sqlite3_bind_text(s, 5, payload, -1, SQLITE_STATIC);
        else
                sqlite3_bind_null(s, 5);
        int r = step_done(l, s, "recording a job");
        if (r < 0)
                return r;
        if (sqlite3_changes(l->db) == 0)
                return 0;
        r = count_change(l, -1, JOB_PENDING);
        return r < 0 ? r : 1;
}

static void copy_col(sqlite3_stmt *s, int i, char *dst, size_t size)
{
        job_set_field(dst, size, (const char *)sqlite3_column_text(s, i));
}

static void row_to_job(sqlite3_stmt *s, struct job *j)
{
        memset(j, 0, sizeof(*j));
        copy_col(s, 0, j->creation_id, sizeof(j->creation_id));
        copy_col(s, 1, j->source_task_id, sizeof(j->source_task_id));
        copy_col(s, 2, j->upscale_task_id, sizeof(j->upscale_task_id));
        int st = job_state_from_string((const char *)sqlite3_column_text(s, 3));
        j->state = st < 0 ? JOB_DEAD : (enum job_state)st;
        j->attempt = (unsigned)sqlite3_column_int(s, 4);
        j->next_at = (uint64_t)sqlite3_column_int64(s, 5);
        j->http_status = sqlite3_column_int(s, 6);
        copy_col(s, 7, j->upstream_error, sizeof(j->upstream_error));
        copy_col(s, 8, j->result_url, sizeof(j->result_url));
        j->created_at = (uint64_t)sqlite3_column_int64(s, 9);
        j->updated_at = (uint64_t)sqlite3_column_int64(s, 10);
        j->duration = (unsigned)sqlite3_column_int(s, 11);
        j->credits = sqlite3_column_type(s, 12) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 12);
}

static int get_one(struct ledger *l, sqlite3_stmt *s, const char *key, struct job *ret)
{
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        int r = 0;
        if (rc == SQLITE_ROW) {
                row_to_job(s, ret);
                r = 1;
        } else if (rc != SQLITE_DONE)
                r = fail(l, rc, "reading a job");
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        return r;
}

int ledger_get(struct ledger *l, const char *creation_id, struct job *ret)
{
        if (l->backend)
                return l->backend->get(l->impl, creation_id, ret);
        return get_one(l, l->stmt[STMT_GET], creation_id, ret);
}

int ledger_get_by_upscale(struct ledger *l, const char *upscale_task_id, struct job *ret)
{
        if (l->backend)
                return l->backend->get_by_upscale(l->impl, upscale_task_id, ret);
        return get_one(l, l->stmt[STMT_GET_BY_UPSCALE], upscale_task_id, ret);
}

int ledger_get_payload(struct ledger *l, const char *creation_id, char **ret_payload)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_GET_PAYLOAD];
        sqlite3_bind_text(s, 1, creation_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        int r = 0;
        char *copy = NULL;
        if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL) {
                const char *text = (const char *)sqlite3_column_text(s, 0);
                int n = sqlite3_column_bytes(s, 0);
                copy = text ? strndup(text, (size_t)n) : NULL;
                r = copy ? 1 : -ENOMEM;
        } else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                r = fail(l, rc, "reading a job's payload");
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (r > 0)
                *ret_payload = copy;
        return r;
}

static void bind_save(sqlite3_stmt *s, const struct job *j, uint64_t now_usec)
{
        sqlite3_bind_text(s, 1, j->creation_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, job_state_to_string(j->state), -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 3, (int)j->attempt);
        sqlite3_bind_int64(s, 4, (sqlite3_int64)j->next_at);
        bind_text_or_null(s, 5, j->upscale_task_id);
        if (j->http_status)
                sqlite3_bind_int(s, 6, j->http_status);
        else
                sqlite3_bind_null(s, 6);
        bind_text_or_null(s, 7, j->upstream_error);
        bind_text_or_null(s, 8, j->result_url);
        sqlite3_bind_int64(s, 9, (sqlite3_int64)now_usec);
}

/* The one place an outcome event is written: every save that moves a job into a state in
 * event_states calls it, in that save's transaction, so the event and the transition are
 * committed (or rolled back) together whoever made the transition. */
static int add_event(struct ledger *l, const struct job *j, uint64_t now_usec)
{
        if (!(l->event_states & (1u << j->state)))
                return 0;
        /* The source's payload goes with the event, so the pipeline gets its own context back. */
        char *payload = NULL, *body = NULL;
        int r = ledger_get_payload(l, j->creation_id, &payload);
        if (r < 0)
                return r;
        r = event_body(j, payload, now_usec, &body);
        free(payload);
        if (r < 0) {
                snprintf(l->errbuf, sizeof(l->errbuf), "writing an event: %s", strerror(-r));
                return r;
        }
        sqlite3_stmt *s = l->stmt[STMT_EVENT_ADD];
        sqlite3_bind_text(s, 1, event_type_for_state(j->state), -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, j->creation_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)now_usec);
        sqlite3_bind_text(s, 4, body, -1, SQLITE_STATIC);
        r = step_done(l, s, "writing an event");
        free(body);
        if (r >= 0 && l->event_hook)
                l->event_hook(l->event_hook_userdata);
        return r;
}

int ledger_save(struct ledger *l, struct job *j, uint64_t now_usec)
{
        if (l->backend)
                return l->backend->save(l->impl, j, now_usec);
        /* The state it leaves, as the ledger has it (not as the caller last saw it). */
        sqlite3_stmt *s = l->stmt[STMT_STATE];
        sqlite3_bind_text(s, 1, j->creation_id, -1, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        bool found = rc == SQLITE_ROW;
        int from = found ? job_state_from_string((const char *)sqlite3_column_text(s, 0)) : -1;
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                return fail(l, rc, "reading a job's state");

        s = l->stmt[STMT_SAVE];
        j->updated_at = now_usec;
        bind_save(s, j, now_usec);
        int r = step_done(l, s, "updating a job");
        if (r < 0 || !found || from == (int)j->state)
                return r; /* no such job, or no change of state: no change of count */
        r = count_change(l, from, (int)j->state);
        return r < 0 ? r : add_event(l, j, now_usec);
}

int ledger_save_if(struct ledger *l, struct job *j, enum job_state from, uint64_t now_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_SAVE_FROM];
        j->updated_at = now_usec;
        bind_save(s, j, now_usec);
        sqlite3_bind_text(s, 10, job_state_to_string(from), -1, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        int r = 0;
        if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
                bool taken = sqlite3_extended_errcode(l->db) == SQLITE_CONSTRAINT_UNIQUE;
                r = fail(l, rc, "updating a job");
                if (taken)
                        r = -EEXIST; /* jobs_upscale: the statement alone was undone */
        }
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (r < 0)
                return r;
        if (sqlite3_changes(l->db) == 0)
                return 0;
        if (from != j->state && (r = count_change(l, (int)from, (int)j->state)) < 0)
                return r;
        if (from != j->state && (r = add_event(l, j, now_usec)) < 0)
                return r;
        return 1;
}

int ledger_save_from(struct ledger *l, struct job *j, enum job_state from, uint64_t now_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        int r = ledger_save_if(l, j, from, now_usec);
        if (r != 0)
                return r < 0 ? r : 0;
        /* Not in that state (or gone): read what it is, as ledger_save does. */
        return ledger_save(l, j, now_usec);
}

int ledger_due(struct ledger *l, enum ledger_due_kind kind, uint64_t now_usec, struct job *out,
               size_t max)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[kind == LEDGER_DUE_SUBMIT ? STMT_DUE_SUBMIT : STMT_DUE_POLL];
        size_t n = 0;
        int rc;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)now_usec);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)max);
        while (n < max && (rc = sqlite3_step(s)) == SQLITE_ROW)
                row_to_job(s, &out[n++]);
        if (n < max && rc != SQLITE_DONE) {
                int r = fail(l, rc, "finding due jobs");
                sqlite3_reset(s);
                return r;
        }
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        return (int)n;
}

/* Steps a statement that yields one value that may be NULL: 1 and *ret, 0 when NULL, or -errno. */
static int step_optional_uint64(struct ledger *l, sqlite3_stmt *s, const char *what, uint64_t *ret)
{
        int rc = sqlite3_step(s);
        int r = 0;
        if (rc == SQLITE_ROW) {
                if (sqlite3_column_type(s, 0) != SQLITE_NULL) {
                        *ret = (uint64_t)sqlite3_column_int64(s, 0);
                        r = 1;
                }
        } else
                r = fail(l, rc, what);
        sqlite3_reset(s);
        return r;
}

int ledger_next_due(struct ledger *l, enum ledger_due_kind kind, uint64_t *ret)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[kind == LEDGER_DUE_SUBMIT ? STMT_NEXT_SUBMIT : STMT_NEXT_POLL];
        return step_optional_uint64(l, s, "finding the next due job", ret);
}

int ledger_foreach(struct ledger *l, int state, ledger_job_cb cb, void *userdata)
{
        if (l->backend)
                return l->backend->foreach (l->impl, state, cb, userdata);
        sqlite3_stmt *s = NULL;
        const char *sql = state < 0 ? JOB_SELECT "FROM jobs ORDER BY created_at"
                                    : JOB_SELECT "FROM jobs WHERE state = ?1 "
                                                 "ORDER BY created_at";
        int rc = sqlite3_prepare_v2(l->db, sql, -1, &s, NULL);
        if (rc != SQLITE_OK)
                return fail(l, rc, "listing jobs");
        if (state >= 0)
                sqlite3_bind_text(s, 1, job_state_to_string((enum job_state)state), -1,
                                  SQLITE_STATIC);
        int r = 0;
        struct job j;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
                row_to_job(s, &j);
                r = cb(&j, userdata);
                if (r != 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = fail(l, rc, "listing jobs");
        sqlite3_finalize(s);
        return r;
}

int ledger_count_states(struct ledger *l, uint64_t counts[_JOB_STATE_MAX])
{
        if (l->backend)
                return l->backend->count_states(l->impl, counts);
        sqlite3_stmt *s = l->stmt[STMT_COUNTS];
        int rc;
        memset(counts, 0, sizeof(uint64_t) * _JOB_STATE_MAX);
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
                int st = job_state_from_string((const char *)sqlite3_column_text(s, 0));
                sqlite3_int64 n = sqlite3_column_int64(s, 1);
                if (st >= 0)
                        counts[st] = n > 0 ? (uint64_t)n : 0;
        }
        int r = rc == SQLITE_DONE ? 0 : fail(l, rc, "counting jobs");
        sqlite3_reset(s);
        return r;
}

int ledger_replay_remember(struct ledger *l, const char *key, uint64_t until_usec,
                           uint64_t now_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_REPLAY_GET];
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        bool seen = false;
        if (rc == SQLITE_ROW)
                seen = (uint64_t)sqlite3_column_int64(s, 0) >= now_usec;
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
                return fail(l, rc, "reading replay memory");
        if (seen)
                return 0;
        s = l->stmt[STMT_REPLAY_PUT];
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)until_usec);
        int r = step_done(l, s, "remembering a delivery");
        return r < 0 ? r : 1;
}

int ledger_purge_replay(struct ledger *l, uint64_t now_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_REPLAY_PURGE];
        sqlite3_bind_int64(s, 1, (sqlite3_int64)now_usec);
        return step_done(l, s, "purging replay memory");
}

int ledger_probe_writable(struct ledger *l, uint64_t now_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        int r = ledger_begin(l);
        if (r < 0)
                return r;
        sqlite3_stmt *s = l->stmt[STMT_PROBE];
        sqlite3_bind_int64(s, 1, (sqlite3_int64)now_usec);
        r = step_done(l, s, "probing");
        if (r >= 0)
                r = ledger_commit(l);
        if (r < 0)
                ledger_rollback(l);
        return r;
}

int ledger_spend_record(struct ledger *l, const char *creation_id, uint64_t at_usec,
                        int64_t credits)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_SPEND_ADD];
        sqlite3_bind_text(s, 1, creation_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)at_usec);
        if (credits >= 0)
                sqlite3_bind_int64(s, 3, (sqlite3_int64)credits);
        else
                sqlite3_bind_null(s, 3);
        return step_done(l, s, "recording a submission");
}

int ledger_set_credits(struct ledger *l, const char *creation_id, int64_t credits)
{
        if (l->backend)
                return -EOPNOTSUPP;
        if (credits < 0)
                return 0;
        sqlite3_stmt *s = l->stmt[STMT_JOB_CREDITS];
        sqlite3_bind_text(s, 1, creation_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)credits);
        int r = step_done(l, s, "recording an upscale's credits");
        if (r < 0)
                return r;
        s = l->stmt[STMT_SPEND_CREDITS];
        sqlite3_bind_text(s, 1, creation_id, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)credits);
        return step_done(l, s, "recording a submission's credits");
}

int ledger_spend_usage(struct ledger *l, uint64_t day_since_usec, uint64_t hour_since_usec,
                       uint64_t assumed_credits, struct ledger_spend *ret)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_SPEND_USAGE];
        sqlite3_bind_int64(s, 1, (sqlite3_int64)day_since_usec);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)hour_since_usec);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)assumed_credits);
        int rc = sqlite3_step(s);
        int r = 0;
        if (rc == SQLITE_ROW) {
                double credits = sqlite3_column_double(s, 2);
                *ret = (struct ledger_spend){
                    .day = (uint64_t)sqlite3_column_int64(s, 0),
                    .hour = (uint64_t)sqlite3_column_double(s, 1),
                    .day_credits = credits > 0 ? (uint64_t)credits : 0,
                };
        } else
                r = fail(l, rc, "counting submissions");
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        return r;
}

int ledger_spend_foreach(struct ledger *l, uint64_t since_usec, ledger_spend_cb cb, void *userdata)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_SPEND_LIST];
        int rc, r = 0;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)since_usec);
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
                int64_t credits =
                    sqlite3_column_type(s, 1) == SQLITE_NULL ? -1 : sqlite3_column_int64(s, 1);
                r = cb((uint64_t)sqlite3_column_int64(s, 0), credits, userdata);
                if (r != 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = fail(l, rc, "listing submissions");
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        return r;
}

int ledger_meta_get(struct ledger *l, const char *key, char *buf, size_t size)
{
        if (l->backend)
                return l->backend->meta_get(l->impl, key, buf, size);
        sqlite3_stmt *s = l->stmt[STMT_META_GET];
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        int r = 0;
        if (rc == SQLITE_ROW) {
                if (buf && size > 0)
                        job_set_field(buf, size, (const char *)sqlite3_column_text(s, 0));
                r = 1;
        } else if (rc != SQLITE_DONE)
                r = fail(l, rc, "reading the ledger's settings");
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        return r;
}

int ledger_meta_set(struct ledger *l, const char *key, const char *value)
{
        if (l->backend)
                return l->backend->meta_set(l->impl, key, value);
        sqlite3_stmt *s = l->stmt[value ? STMT_META_PUT : STMT_META_DEL];
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
        if (value)
                sqlite3_bind_text(s, 2, value, -1, SQLITE_STATIC);
        int r = step_done(l, s, "writing the ledger's settings");
        return r < 0 ? r : sqlite3_changes(l->db) > 0;
}

int ledger_spend_purge(struct ledger *l, uint64_t before_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_SPEND_PURGE];
        sqlite3_bind_int64(s, 1, (sqlite3_int64)before_usec);
        return step_done(l, s, "purging old submissions");
}

/* --- outbox ------------------------------------------------------------------------------- */

int ledger_set_event_states(struct ledger *l, unsigned state_mask)
{
        if (l->backend)
                return -EOPNOTSUPP;
        l->event_states = state_mask;
        char v[UINT_DEC_SIZE];
        format_uint(state_mask, v);
        sqlite3_stmt *s = NULL;
        int rc = sqlite3_prepare_v2(
            l->db, "INSERT OR REPLACE INTO meta(key, value) VALUES ('event_states', ?1)", -1, &s,
            NULL);
        if (rc == SQLITE_OK) {
                sqlite3_bind_text(s, 1, v, -1, SQLITE_STATIC);
                rc = sqlite3_step(s);
        }
        sqlite3_finalize(s);
        return rc == SQLITE_OK || rc == SQLITE_DONE ? 0 : fail(l, rc, "remembering event types");
}

/* What the daemon last set, so that an operator's command (vidu-upscaled jobs abandon) writes
 * the events the daemon would, whatever configuration it was given. */
static void load_event_states(struct ledger *l)
{
        sqlite3_stmt *s = NULL;
        if (sqlite3_prepare_v2(l->db, "SELECT value FROM meta WHERE key = 'event_states'", -1, &s,
                               NULL) == SQLITE_OK &&
            sqlite3_step(s) == SQLITE_ROW) {
                uint64_t v = 0;
                if (parse_uint((const char *)sqlite3_column_text(s, 0), 0, UINT32_MAX, &v) >= 0)
                        l->event_states = (unsigned)v;
        }
        sqlite3_finalize(s);
}

void ledger_set_event_hook(struct ledger *l, void (*hook)(void *userdata), void *userdata)
{
        l->event_hook = hook;
        l->event_hook_userdata = userdata;
}

static const char *const event_state_names[_LEDGER_EVENT_STATE_MAX] = {
    [LEDGER_EVENT_PENDING] = "pending",
    [LEDGER_EVENT_DELIVERED] = "delivered",
    [LEDGER_EVENT_DEAD] = "dead",
};

const char *ledger_event_state_to_string(enum ledger_event_state s)
{
        return (unsigned)s < _LEDGER_EVENT_STATE_MAX ? event_state_names[s] : "unknown";
}

int ledger_event_state_from_string(const char *s)
{
        for (int i = 0; s && i < _LEDGER_EVENT_STATE_MAX; i++)
                if (strcmp(event_state_names[i], s) == 0)
                        return i;
        return -EINVAL;
}

void ledger_event_clear(struct ledger_event *e)
{
        if (!e)
                return;
        free(e->body);
        e->body = NULL;
}

/* Reads the EVENT_COLUMNS of a row (and the body after them when with_body). */
static int row_to_event(sqlite3_stmt *s, struct ledger_event *e, bool with_body)
{
        memset(e, 0, sizeof(*e));
        copy_col(s, 0, e->id, sizeof(e->id));
        copy_col(s, 1, e->type, sizeof(e->type));
        copy_col(s, 2, e->creation_id, sizeof(e->creation_id));
        int st = ledger_event_state_from_string((const char *)sqlite3_column_text(s, 3));
        e->state = st < 0 ? LEDGER_EVENT_DEAD : (enum ledger_event_state)st;
        e->attempts = (unsigned)sqlite3_column_int(s, 4);
        e->next_at = (uint64_t)sqlite3_column_int64(s, 5);
        e->since = (uint64_t)sqlite3_column_int64(s, 6);
        e->created_at = (uint64_t)sqlite3_column_int64(s, 7);
        e->updated_at = (uint64_t)sqlite3_column_int64(s, 8);
        e->http_status = sqlite3_column_int(s, 9);
        copy_col(s, 10, e->error, sizeof(e->error));
        if (with_body) {
                const char *b = (const char *)sqlite3_column_text(s, 11);
                e->body = strdup(b ? b : "");
                if (!e->body)
                        return -ENOMEM;
        }
        return 0;
}

int ledger_events_due(struct ledger *l, uint64_t now_usec, struct ledger_event *out, size_t max)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_EVENTS_DUE];
        size_t n = 0;
        int rc = SQLITE_DONE, r = 0;
        sqlite3_bind_int64(s, 1, (sqlite3_int64)now_usec);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)max);
        while (n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
                r = row_to_event(s, &out[n], true);
                if (r < 0)
                        break;
                n++;
        }
        if (r >= 0 && n < max && rc != SQLITE_DONE)
                r = fail(l, rc, "finding due events");
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (r < 0) {
                for (size_t i = 0; i < n; i++)
                        ledger_event_clear(&out[i]);
                return r;
        }
        return (int)n;
}

int ledger_events_next_due(struct ledger *l, uint64_t *ret)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_EVENTS_NEXT];
        return step_optional_uint64(l, s, "finding the next due event", ret);
}

int ledger_event_update(struct ledger *l, const struct ledger_event *e, uint64_t now_usec)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_EVENT_UPDATE];
        sqlite3_bind_text(s, 1, e->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, ledger_event_state_to_string(e->state), -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 3, (int)e->attempts);
        sqlite3_bind_int64(s, 4, (sqlite3_int64)e->next_at);
        if (e->http_status)
                sqlite3_bind_int(s, 5, e->http_status);
        else
                sqlite3_bind_null(s, 5);
        bind_text_or_null(s, 6, e->error);
        sqlite3_bind_int64(s, 7, (sqlite3_int64)now_usec);
        int r = step_done(l, s, "recording an event's delivery");
        if (r < 0)
                return r;
        return sqlite3_changes(l->db) > 0 ? 1 : 0;
}

int ledger_events_purge(struct ledger *l, uint64_t before_usec, unsigned limit)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_EVENTS_PURGE];
        sqlite3_bind_int64(s, 1, (sqlite3_int64)before_usec);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)limit);
        int r = step_done(l, s, "purging delivered events");
        return r < 0 ? r : sqlite3_changes(l->db);
}

int ledger_events_backlog(struct ledger *l, uint64_t *ret)
{
        if (l->backend)
                return -EOPNOTSUPP;
        sqlite3_stmt *s = l->stmt[STMT_EVENTS_BACKLOG];
        int rc = sqlite3_step(s);
        int r = 0;
        if (rc == SQLITE_ROW)
                *ret = (uint64_t)sqlite3_column_int64(s, 0);
        else
                r = fail(l, rc, "counting pending events");
        sqlite3_reset(s);
        return r;
}

int ledger_events_foreach(struct ledger *l, int state, ledger_event_cb cb, void *userdata)
{
        if (l->backend)
                return l->backend->events_foreach(l->impl, state, cb, userdata);
        sqlite3_stmt *s = NULL;
        const char *sql = state < 0 ? "SELECT " EVENT_COLUMNS " FROM events ORDER BY seq"
                                    : "SELECT " EVENT_COLUMNS " FROM events WHERE state = ?1 "
                                      "ORDER BY seq";
        int rc = sqlite3_prepare_v2(l->db, sql, -1, &s, NULL);
        if (rc != SQLITE_OK)
                return fail(l, rc, "listing events");
        if (state >= 0)
                sqlite3_bind_text(s, 1,
                                  ledger_event_state_to_string((enum ledger_event_state)state), -1,
                                  SQLITE_STATIC);
        int r = 0;
        struct ledger_event e;
        while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
                row_to_event(s, &e, false);
                r = cb(&e, userdata);
                if (r != 0)
                        break;
        }
        if (r == 0 && rc != SQLITE_DONE)
                r = fail(l, rc, "listing events");
        sqlite3_finalize(s);
        return r;
}

static int retry_where(struct ledger *l, const char *where, const char *id, uint64_t now_usec)
{
        char sql[256];
        snprintf(sql, sizeof(sql),
                 "UPDATE events SET state = 'pending', next_at = ?1, since = ?1, updated_at = ?1 "
                 "WHERE %s",
                 where);
        sqlite3_stmt *s = NULL;
        int rc = sqlite3_prepare_v2(l->db, sql, -1, &s, NULL);
        if (rc != SQLITE_OK)
                return fail(l, rc, "retrying events");
        sqlite3_bind_int64(s, 1, (sqlite3_int64)now_usec);
        if (id)
                sqlite3_bind_text(s, 2, id, -1, SQLITE_STATIC);
        rc = sqlite3_step(s);
        sqlite3_finalize(s);
        if (rc != SQLITE_DONE)
                return fail(l, rc, "retrying events");
        return sqlite3_changes(l->db);
}

int ledger_event_retry(struct ledger *l, const char *id, uint64_t now_usec)
{
        if (l->backend)
                return l->backend->event_retry(l->impl, id, now_usec);
        return retry_where(l, "id = ?2 AND state <> 'pending'", id, now_usec);
}

int ledger_events_retry_dead(struct ledger *l, uint64_t now_usec)
{
        if (l->backend)
                return l->backend->events_retry_dead(l->impl, now_usec);
        return retry_where(l, "state = 'dead'", NULL, now_usec);
}
