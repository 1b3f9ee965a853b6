/* pgledger.c: the ledger's operator operations on PostgreSQL with blocking libpq, behind
 * ledger_backend, so that `jobs` and `events` run the same code and print the same on either
 * store. The schema is made or migrated first by pgschema_migrate on a loop of its own. */
#include "pgledger.h"

#include <errno.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-event.h>

#include "event.h"
#include "ledger_backend.h"
#include "pgconn.h"
#include "pgschema.h"
#include "util.h"

/* A usec-since-the-epoch parameter as a timestamptz, exactly (to_timestamp goes through a
 * double and may be a microsecond off). */
#define AT(n) "('epoch'::timestamptz + " n "::bigint * interval '1 microsecond')"

struct pgledger {
        PGconn *conn;
        bool in_transaction;
        int schema_version;
        char errbuf[512];
};

static const char *pl_errmsg(void *impl)
{
        return ((struct pgledger *)impl)->errbuf;
}

/* Records why res (or the connection) failed; returns the -errno for it. */
static int fail(struct pgledger *p, PGresult *res, const char *what)
{
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        const char *msg = res ? PQresultErrorMessage(res) : PQerrorMessage(p->conn);
        if (isempty(msg))
                msg = PQerrorMessage(p->conn);
        snprintf(p->errbuf, sizeof(p->errbuf), "%s: %s", what, isempty(msg) ? "failed" : msg);
        size_t n = strlen(p->errbuf);
        while (n > 0 && p->errbuf[n - 1] == '\n')
                p->errbuf[--n] = 0;
        int r = PQstatus(p->conn) != CONNECTION_OK     ? -ECONNRESET
                : state && strcmp(state, "23505") == 0 ? -EEXIST
                                                       : -EIO;
        PQclear(res);
        return r;
}

/* Runs one statement; *ret the result when it succeeded (clear it), else -errno. */
static int run(struct pgledger *p, const char *what, const char *sql, int n,
               const char *const *params, PGresult **ret)
{
        PGresult *res = PQexecParams(p->conn, sql, n, NULL, params, NULL, NULL, 0);
        ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
                return fail(p, res, what);
        if (ret)
                *ret = res;
        else
                PQclear(res);
        return 0;
}

static void pl_close(void *impl)
{
        struct pgledger *p = impl;
        if (!p)
                return;
        PQfinish(p->conn);
        free(p);
}

static int pl_schema_version(void *impl)
{
        return ((struct pgledger *)impl)->schema_version;
}

/* How long a change waits for a row an instance holds, as the SQLite ledger's busy timeout: a
 * transaction's own setting (SET LOCAL), so none of it stays on a pooler's server connection. */
#define LOCK_TIMEOUT "SELECT set_config('lock_timeout', '5s', true)"

static int pl_begin(void *impl)
{
        struct pgledger *p = impl;
        int r = run(p, "beginning a transaction", "BEGIN", 0, NULL, NULL);
        p->in_transaction = r >= 0;
        if (r >= 0)
                r = run(p, "beginning a transaction", LOCK_TIMEOUT, 0, NULL, NULL);
        return r;
}

static int pl_commit(void *impl)
{
        struct pgledger *p = impl;
        p->in_transaction = false;
        return run(p, "committing", "COMMIT", 0, NULL, NULL);
}

static void pl_rollback(void *impl)
{
        struct pgledger *p = impl;
        if (!p->in_transaction)
                return;
        p->in_transaction = false;
        (void)run(p, "rolling back", "ROLLBACK", 0, NULL, NULL);
}

static int get_one(struct pgledger *p, const char *sql, const char *key, struct job *ret)
{
        PGresult *res = NULL;
        const char *params[] = {key};
        int r = run(p, "reading a job", sql, 1, params, &res);
        if (r < 0)
                return r;
        r = PQntuples(res) > 0 ? 1 : 0;
        if (r > 0 && pgschema_row_to_job(res, 0, 0, ret, NULL) < 0) {
                snprintf(p->errbuf, sizeof(p->errbuf), "reading a job: unexpected columns");
                r = -EBADMSG;
        }
        PQclear(res);
        return r;
}

/* Inside a transaction the row is locked, as SQLite's write transaction holds the file: the
 * read-then-save of an operator command is not interleaved with an instance's claim. */
static int pl_get(void *impl, const char *creation_id, struct job *ret)
{
        struct pgledger *p = impl;
        return get_one(p, p->in_transaction ? PGSCHEMA_GET " FOR UPDATE" : PGSCHEMA_GET,
                       creation_id, ret);
}

static int pl_get_by_upscale(void *impl, const char *upscale_task_id, struct job *ret)
{
        struct pgledger *p = impl;
        return get_one(
            p, p->in_transaction ? PGSCHEMA_GET_BY_UPSCALE " FOR UPDATE" : PGSCHEMA_GET_BY_UPSCALE,
            upscale_task_id, ret);
}

static const char *empty_null(const char *s)
{
        return isempty(s) ? NULL : s;
}

/* Every mutable field, as ledger_save writes them; the event a change of state calls for is the
 * schema's trigger's (pgschema.c, version 3), as for the daemon's own transitions. The claim ends
 * with it and its counter moves on: an instance still holding an answer for the
 * job under the old claim is fenced out. */
static int pl_save(void *impl, struct job *j, uint64_t now_usec)
{
        struct pgledger *p = impl;
        char attempt[UINT_DEC_SIZE], next_at[UINT_DEC_SIZE], status[UINT_DEC_SIZE],
            now[UINT_DEC_SIZE];
        format_uint(j->attempt, attempt);
        format_uint(j->next_at, next_at);
        format_uint((uint64_t)(j->http_status > 0 ? j->http_status : 0), status);
        format_uint(now_usec, now);
        const char *params[] = {j->creation_id,
                                job_state_to_string(j->state),
                                attempt,
                                next_at,
                                empty_null(j->upscale_task_id),
                                j->http_status ? status : NULL,
                                empty_null(j->upstream_error),
                                empty_null(j->result_url),
                                now};
        j->updated_at = now_usec;
        return run(p, "updating a job",
                   "UPDATE jobs SET state = $2, attempt = $3, next_at = " AT(
                       "$4") ", upscale_task_id = $5, http_status = $6, upstream_error = $7, "
                             "result_url = $8, updated_at = " AT(
                                 "$9") ", claimed_by = NULL, claim_turn = NULL, "
                                       "lease_until = NULL, claim_seq = claim_seq + 1 "
                                       "WHERE creation_id = $1",
                   (int)ELEMENTSOF(params), params, NULL);
}

/* Streams a query's rows (single-row mode), so a ledger of millions of rows is listed in constant
 * memory: row is called for each until it returns non-zero, which is returned. row must not use
 * the ledger meanwhile. what names the listing in errors. */
typedef int (*stream_row_fn)(struct pgledger *p, const PGresult *res, void *ctx);
static int stream(struct pgledger *p, const char *what, const char *sql, const char *param,
                  stream_row_fn row, void *ctx)
{
        const char *params[] = {param};
        if (!PQsendQueryParams(p->conn, sql, param ? 1 : 0, NULL, params, NULL, NULL, 0))
                return fail(p, NULL, what);
        (void)PQsetSingleRowMode(p->conn);
        int r = 0;
        PGresult *res;
        while ((res = PQgetResult(p->conn))) {
                ExecStatusType st = PQresultStatus(res);
                if (st == PGRES_SINGLE_TUPLE && r == 0)
                        r = row(p, res, ctx);
                else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK && r == 0) {
                        r = fail(p, res, what);
                        continue; /* cleared; read on to the end of the query */
                }
                PQclear(res);
        }
        return r;
}

struct job_cb_ctx {
        ledger_job_cb cb;
        void *userdata;
};

static int job_row(struct pgledger *p, const PGresult *res, void *ctx)
{
        struct job_cb_ctx *c = ctx;
        struct job j;
        if (pgschema_row_to_job(res, 0, 0, &j, NULL) < 0) {
                snprintf(p->errbuf, sizeof(p->errbuf), "listing jobs: unexpected columns");
                return -EBADMSG;
        }
        return c->cb(&j, c->userdata);
}

static int pl_foreach(void *impl, int state, ledger_job_cb cb, void *userdata)
{
        struct job_cb_ctx c = {cb, userdata};
        return stream(impl, "listing jobs",
                      state < 0 ? "SELECT " PGSCHEMA_JOB_COLUMNS
                                  " FROM jobs ORDER BY created_at, creation_id"
                                : "SELECT " PGSCHEMA_JOB_COLUMNS
                                  " FROM jobs WHERE state = $1 ORDER BY created_at, creation_id",
                      state >= 0 ? job_state_to_string((enum job_state)state) : NULL, job_row, &c);
}

static int pl_count_states(void *impl, uint64_t counts[_JOB_STATE_MAX])
{
        struct pgledger *p = impl;
        PGresult *res = NULL;
        memset(counts, 0, sizeof(uint64_t) * _JOB_STATE_MAX);
        int r = run(p, "counting jobs", PGSCHEMA_COUNTS, 0, NULL, &res);
        if (r < 0)
                return r;
        for (int i = 0; i < PQntuples(res); i++) {
                int st = job_state_from_string(PQgetvalue(res, i, 0));
                if (st >= 0)
                        counts[st] = strtoull(PQgetvalue(res, i, 1), NULL, 10);
        }
        PQclear(res);
        return 0;
}

static int pl_meta_get(void *impl, const char *key, char *buf, size_t size)
{
        struct pgledger *p = impl;
        PGresult *res = NULL;
        const char *params[] = {key};
        int r = run(p, "reading the ledger's settings", "SELECT value FROM meta WHERE key = $1", 1,
                    params, &res);
        if (r < 0)
                return r;
        r = PQntuples(res) > 0;
        if (r && buf && size > 0)
                job_set_field(buf, size, PQgetvalue(res, 0, 0));
        PQclear(res);
        return r;
}

/* 1 when something changed, as ledger_meta_set: a value written the same as it was is no
 * change. */
static int pl_meta_set(void *impl, const char *key, const char *value)
{
        struct pgledger *p = impl;
        PGresult *res = NULL;
        const char *params[] = {key, value};
        int r = value ? run(p, "writing the ledger's settings",
                            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO "
                            "UPDATE SET value = EXCLUDED.value",
                            2, params, &res)
                      : run(p, "writing the ledger's settings", "DELETE FROM meta WHERE key = $1",
                            1, params, &res);
        if (r < 0)
                return r;
        r = strcmp(PQcmdTuples(res), "0") != 0;
        PQclear(res);
        return r;
}

/* Every event in state (all when state < 0) in the order they were written, streamed. */
struct event_cb_ctx {
        ledger_event_cb cb;
        void *userdata;
};

static int event_row(struct pgledger *p, const PGresult *res, void *ctx)
{
        struct event_cb_ctx *c = ctx;
        struct ledger_event e;
        (void)p;
        pgschema_row_to_event(res, 0, &e);
        return c->cb(&e, c->userdata);
}

static int pl_events_foreach(void *impl, int state, ledger_event_cb cb, void *userdata)
{
        struct event_cb_ctx c = {cb, userdata};
        return stream(impl, "listing events",
                      state < 0 ? "SELECT " PGSCHEMA_EVENT_COLUMNS " FROM events ORDER BY seq"
                                : "SELECT " PGSCHEMA_EVENT_COLUMNS
                                  " FROM events WHERE state = $1 ORDER BY seq",
                      state >= 0 ? ledger_event_state_to_string((enum ledger_event_state)state)
                                 : NULL,
                      event_row, &c);
}

/* Pending again, due now, a new run of attempts: the count changed, as ledger.c's. */
static int retry_where(struct pgledger *p, const char *sql, const char *id, uint64_t now_usec)
{
        char now[UINT_DEC_SIZE];
        format_uint(now_usec, now);
        const char *params[] = {now, id};
        PGresult *res = NULL;
        int r = pl_begin(p);
        if (r >= 0)
                r = run(p, "retrying events", sql, id ? 2 : 1, params, &res);
        if (r >= 0) {
                r = (int)strtol(PQcmdTuples(res), NULL, 10);
                PQclear(res);
                int c = pl_commit(p);
                if (c < 0)
                        r = c;
        }
        if (r < 0)
                pl_rollback(p);
        return r;
}

#define RETRY_EVENTS                                                                               \
        "UPDATE events SET state = 'pending', next_at = " AT("$1") ", since = " AT(                \
            "$1") ", updated_at = " AT("$1") " WHERE "

static int pl_event_retry(void *impl, const char *id, uint64_t now_usec)
{
        return retry_where(impl, RETRY_EVENTS "id = $2 AND state <> 'pending'", id, now_usec);
}

static int pl_events_retry_dead(void *impl, uint64_t now_usec)
{
        return retry_where(impl, RETRY_EVENTS "state = 'dead'", NULL, now_usec);
}

static const struct ledger_backend backend = {
    .name = "postgresql",
    .close = pl_close,
    .errmsg = pl_errmsg,
    .schema_version = pl_schema_version,
    .begin = pl_begin,
    .commit = pl_commit,
    .rollback = pl_rollback,
    .get = pl_get,
    .get_by_upscale = pl_get_by_upscale,
    .save = pl_save,
    .foreach = pl_foreach,
    .count_states = pl_count_states,
    .meta_get = pl_meta_get,
    .meta_set = pl_meta_set,
    .events_foreach = pl_events_foreach,
    .event_retry = pl_event_retry,
    .events_retry_dead = pl_events_retry_dead,
};

/* The migration, on a loop of its own: connect, migrate, stop. */
struct migration {
        sd_event *event;
        bool done;
        int result;
        int from;
        char *error;
};

static void on_migrated(int r, int from_version, const char *error, void *userdata)
{
        struct migration *m = userdata;
        if (m->done)
                return;
        m->done = true;
        m->result = r;
        m->from = from_version;
        if (r < 0 && error)
                m->error = strdup(error);
        sd_event_exit(m->event, 0);
}

static void on_state(struct pgconn *c, enum pgconn_event ev, void *userdata)
{
        struct migration *m = userdata;
        if (m->done)
                return;
        if (ev == PGCONN_CONNECTED) {
                int r = pgschema_migrate(c, on_migrated, m, NULL);
                if (r < 0) {
                        m->done = true;
                        m->result = r;
                        sd_event_exit(m->event, 0);
                }
                return;
        }
        /* A command does not wait for the database: one attempt. */
        m->done = true;
        m->result = -ECONNREFUSED;
        if (asprintf(&m->error, "cannot connect to the ledger's database: %s",
                     isempty(pgconn_errmsg(c)) ? "connection failed" : pgconn_errmsg(c)) < 0)
                m->error = NULL;
        sd_event_exit(m->event, 0);
}

static int migrate(const char *conninfo, const char *password, char **ret_error)
{
        struct migration m = {.result = -EIO};
        struct pgconn *c = NULL;
        int r = sd_event_new(&m.event);
        if (r < 0)
                return r;
        struct pgconn_options o = {
            .conninfo = conninfo,
            .password = password,
            .statement_timeout_usec = 60 * USEC_PER_SEC,
        };
        r = pgconn_new(m.event, &o, on_state, &m, &c);
        if (r >= 0)
                r = sd_event_loop(m.event);
        if (r >= 0)
                r = m.result;
        pgconn_free(c);
        sd_event_unref(m.event);
        if (r < 0)
                *ret_error = m.error ? m.error : strdup(strerror(-r));
        else
                free(m.error);
        return r;
}

int pgledger_open(const char *conninfo, const char *password, struct ledger **ret, char **ret_error)
{
        *ret_error = NULL;
        int r = migrate(conninfo, password, ret_error);
        if (r < 0)
                return r;
        struct pgledger *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        const char *keys[] = {"password", "dbname", "fallback_application_name", NULL};
        const char *values[] = {password ? password : "", conninfo, "vidu-upscaled", NULL};
        p->conn = PQconnectdbParams(keys, values, 1);
        p->schema_version = PGSCHEMA_VERSION;
        if (!p->conn || PQstatus(p->conn) != CONNECTION_OK) {
                if (asprintf(ret_error, "cannot connect to the ledger's database: %s",
                             p->conn ? PQerrorMessage(p->conn) : "out of memory") < 0)
                        *ret_error = NULL;
                for (size_t n = *ret_error ? strlen(*ret_error) : 0;
                     n > 0 && (*ret_error)[n - 1] == '\n'; n--)
                        (*ret_error)[n - 1] = 0;
                pl_close(p);
                return -ECONNREFUSED;
        }
        return ledger_open_backend(&backend, p, ret);
}
