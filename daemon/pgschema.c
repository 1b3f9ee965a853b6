/* pgschema.c: the shared ledger's PostgreSQL schema, its versioned migrations, and the migration
 * run at start under a transaction-scoped advisory lock. */
#include "pgschema.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* pg_advisory_xact_lock's key for migrations: "vidu!" in ASCII, the same for every instance. */
#define MIGRATION_LOCK "508605486369"

/* Each migration moves the schema from version i to i+1, one statement per string (the extended
 * protocol runs one statement per query); never edit one that has shipped. */
static const char *const migration_1[] = {
    /* fillfactor 80: room on each page for the few updates a job sees (pending, submitting,
     * submitted, final), so an update that changes no indexed column stays on its page. */
    "CREATE TABLE jobs ("
    "  creation_id text PRIMARY KEY,"
    "  source_task_id text,"
    "  upscale_task_id text,"
    "  state text NOT NULL CHECK (state IN ('pending', 'submitting', 'waiting', 'submitted',"
    "    'succeeded', 'failed', 'dead', 'uncertain')),"
    "  attempt integer NOT NULL DEFAULT 0,"
    "  next_at timestamptz NOT NULL,"
    "  http_status integer,"
    "  upstream_error text,"
    "  result_url text,"
    "  created_at timestamptz NOT NULL,"
    "  updated_at timestamptz NOT NULL,"
    "  claimed_by text,"
    "  claim_seq bigint NOT NULL DEFAULT 0,"
    "  claim_turn bigint,"
    "  lease_until timestamptz"
    ") WITH (fillfactor = 80)",
    /* The due queues, one partial index per kind (as graphile-worker and river do): only jobs
     * that still need work are in them, so claims stay cheap however many finished jobs the
     * table holds. Keyed (next_at, creation_id) rather than (state, next_at): the submit queue
     * spans two states and is read in next_at order across both, one ordered range scan. */
    "CREATE INDEX jobs_submit_due ON jobs (next_at, creation_id)"
    "  WHERE state IN ('pending', 'waiting')",
    "CREATE INDEX jobs_poll_due ON jobs (next_at, creation_id) WHERE state = 'submitted'",
    /* Lapsed submissions, for the takeover; an instance's claims, for renewal and release. */
    "CREATE INDEX jobs_lease ON jobs (lease_until) WHERE state = 'submitting'",
    "CREATE INDEX jobs_claimed ON jobs (claimed_by, claim_turn) WHERE claimed_by IS NOT NULL",
    "CREATE UNIQUE INDEX jobs_upscale ON jobs (upscale_task_id)"
    "  WHERE upscale_task_id IS NOT NULL",
    /* Finished jobs in purge order. */
    "CREATE INDEX jobs_finished ON jobs (updated_at)"
    "  WHERE state IN ('succeeded', 'failed', 'dead')",
    "CREATE TABLE replay (key text PRIMARY KEY, until timestamptz NOT NULL)",
    "CREATE INDEX replay_until ON replay (until)",
    /* Shared state: the account-wide pause, the probe token. */
    "CREATE TABLE control ("
    "  key text PRIMARY KEY,"
    "  value text,"
    "  holder text,"
    "  seq bigint NOT NULL DEFAULT 0,"
    "  until timestamptz,"
    "  updated_at timestamptz NOT NULL DEFAULT now()"
    ")",
    NULL,
};

/* 2: parity with the SQLite ledger's migrations 3 to 6 (select, budget, callbacks, events). */
static const char *const migration_2[] = {
    /* The settings.duration the submission sends (NULL: upscale.duration's number), the cost
     * the upstream reported (NULL: unknown), the source notification's payload as it came
     * (read on demand only: up to 1 MiB, TOASTed out of the row). */
    "ALTER TABLE jobs ADD COLUMN duration integer, ADD COLUMN credits bigint,"
    "  ADD COLUMN payload text",
    /* The spend guard: one row per submission that may have left, on the database's clock,
     * shared by every instance so the budget windows count them all. */
    "CREATE TABLE submissions ("
    "  creation_id text NOT NULL,"
    "  at timestamptz NOT NULL,"
    "  credits bigint,"
    "  PRIMARY KEY (creation_id, at)"
    ")",
    "CREATE INDEX submissions_at ON submissions (at) INCLUDE (credits)",
    /* The outbox of outcome events, written with the transition that makes each. */
    "CREATE TABLE events ("
    "  seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    "  id text NOT NULL UNIQUE,"
    "  type text NOT NULL,"
    "  creation_id text NOT NULL,"
    "  state text NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),"
    "  attempts integer NOT NULL DEFAULT 0,"
    "  next_at timestamptz NOT NULL,"
    "  since timestamptz NOT NULL,"
    "  created_at timestamptz NOT NULL,"
    "  updated_at timestamptz NOT NULL,"
    "  http_status integer,"
    "  error text,"
    "  body text NOT NULL"
    ")",
    "CREATE INDEX events_due ON events (next_at, seq) WHERE state = 'pending'",
    "CREATE INDEX events_delivered ON events (updated_at) WHERE state = 'delivered'",
    "CREATE INDEX events_creation ON events (creation_id)",
    NULL,
};

/* 3: the outcome events written by the database itself, whoever makes the transition (any
 * instance's turn, the housekeeping's takeover, an operator's `jobs abandon`): a trigger on the
 * job's change of state, in that change's transaction, as ledger.c's add_event on SQLite. Which
 * states write one is meta 'event_states' (a mask of 1 << enum job_state, as on SQLite), which
 * each daemon sets from its [events] at start and reload. The body is event.c's, field for
 * field: fields without a value left out (json_strip_nulls), the time of the transition. */
static const char *const migration_3[] = {
    "CREATE FUNCTION vidu_job_event() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "DECLARE\n"
    "  bit bigint := CASE NEW.state WHEN 'succeeded' THEN 16 WHEN 'failed' THEN 32\n"
    "                 WHEN 'dead' THEN 64 WHEN 'uncertain' THEN 128 END;\n"
    "  mask bigint;\n"
    "BEGIN\n"
    "  SELECT value::bigint INTO mask FROM meta WHERE key = 'event_states';\n"
    "  IF bit IS NULL OR mask IS NULL OR mask & bit = 0 THEN\n"
    "    RETURN NULL;\n"
    "  END IF;\n"
    "  INSERT INTO events (id, type, creation_id, state, attempts, next_at, since, created_at,\n"
    "                      updated_at, body)\n"
    "  VALUES ('evt_' || left(replace(gen_random_uuid()::text, '-', ''), 24),\n"
    "    'upscale.' || NEW.state, NEW.creation_id, 'pending', 0, now(), now(), now(), now(),\n"
    "    json_strip_nulls(json_build_object(\n"
    "      'type', 'upscale.' || NEW.state,\n"
    "      'timestamp', to_char(NEW.updated_at AT TIME ZONE 'UTC',\n"
    "                           'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),\n"
    "      'data', json_build_object(\n"
    "        'creation_id', NEW.creation_id,\n"
    "        'source_task_id', nullif(NEW.source_task_id, ''),\n"
    "        'upscale_task_id', nullif(NEW.upscale_task_id, ''),\n"
    "        'state', NEW.state,\n"
    "        'result_url', nullif(NEW.result_url, ''),\n"
    "        'attempt', CASE WHEN NEW.attempt > 0 THEN NEW.attempt END,\n"
    "        'http_status', CASE WHEN NEW.http_status > 0 THEN NEW.http_status END,\n"
    "        'error', nullif(NEW.upstream_error, ''),\n"
    "        'payload', nullif(NEW.payload, ''))))::text);\n"
    "  RETURN NULL;\n"
    "END\n"
    "$$",
    "CREATE TRIGGER jobs_event AFTER UPDATE OF state ON jobs FOR EACH ROW"
    "  WHEN (OLD.state IS DISTINCT FROM NEW.state"
    "    AND NEW.state IN ('succeeded', 'failed', 'dead', 'uncertain'))"
    "  EXECUTE FUNCTION vidu_job_event()",
    NULL,
};

/* 4: the per-state counts without a GROUP BY over the whole job table (which keeps every finished
 * job: run every 2 s by every instance, that grows with the table). The states jobs pass through
 * (pending, waiting, submitting, submitted) are counted from their partial indexes, which hold
 * only them (PGSCHEMA_COUNTS); the states jobs end in (succeeded, failed, dead, uncertain) are a
 * tally: each move into or out of one appends to job_count_deltas (a row trigger whose WHEN skips
 * every other update without calling the function: one call in a job's life, not one a
 * transition), as do inserts and deletes of such jobs (statement triggers over the transition
 * tables); appends, never an update of a shared row, so instances never wait on each other for
 * it. The housekeeping folds the deltas into job_counts (PGSCHEMA_COUNTS_FOLD). CREATE TRIGGER
 * locks the table against writers until the migration commits, so the initial count and the
 * triggers agree. */
static const char *const migration_4[] = {
    "CREATE TABLE job_counts (state text PRIMARY KEY, n bigint NOT NULL)",
    "CREATE TABLE job_count_deltas (state text NOT NULL, n bigint NOT NULL)",
    "CREATE FUNCTION vidu_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  INSERT INTO job_count_deltas SELECT state, count(*) FROM new_rows\n"
    "  WHERE state IN ('succeeded', 'failed', 'dead', 'uncertain') GROUP BY state;\n"
    "  RETURN NULL;\n"
    "END\n"
    "$$",
    "CREATE FUNCTION vidu_jobs_moved() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  IF OLD.state IN ('succeeded', 'failed', 'dead', 'uncertain') THEN\n"
    "    INSERT INTO job_count_deltas VALUES (OLD.state, -1);\n"
    "  END IF;\n"
    "  IF NEW.state IN ('succeeded', 'failed', 'dead', 'uncertain') THEN\n"
    "    INSERT INTO job_count_deltas VALUES (NEW.state, 1);\n"
    "  END IF;\n"
    "  RETURN NULL;\n"
    "END\n"
    "$$",
    "CREATE FUNCTION vidu_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  INSERT INTO job_count_deltas SELECT state, -count(*) FROM old_rows\n"
    "  WHERE state IN ('succeeded', 'failed', 'dead', 'uncertain') GROUP BY state;\n"
    "  RETURN NULL;\n"
    "END\n"
    "$$",
    "CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows"
    "  FOR EACH STATEMENT EXECUTE FUNCTION vidu_jobs_inserted()",
    "CREATE TRIGGER jobs_count_update AFTER UPDATE OF state ON jobs FOR EACH ROW"
    "  WHEN (OLD.state IS DISTINCT FROM NEW.state"
    "    AND (OLD.state IN ('succeeded', 'failed', 'dead', 'uncertain')"
    "      OR NEW.state IN ('succeeded', 'failed', 'dead', 'uncertain')))"
    "  EXECUTE FUNCTION vidu_jobs_moved()",
    "CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows"
    "  FOR EACH STATEMENT EXECUTE FUNCTION vidu_jobs_deleted()",
    "INSERT INTO job_counts SELECT state, count(*) FROM jobs"
    "  WHERE state IN ('succeeded', 'failed', 'dead', 'uncertain') GROUP BY state",
    NULL,
};

static const char *const *const migrations[PGSCHEMA_VERSION] = {
    migration_1,
    migration_2,
    migration_3,
    migration_4,
};

struct pgschema_migration {
        struct pgconn *conn;
        struct pgschema_migration **slot; /* the caller's handle, cleared when it ends */
        pgschema_done_fn done;
        void *userdata;
        int from;
        int result; /* what to report once the ROLLBACK is answered */
        char error[512];
};

static void finish(struct pgschema_migration *m, int r)
{
        if (m->slot)
                *m->slot = NULL;
        m->done(r, m->from, r < 0 ? m->error : NULL, m->userdata);
        free(m);
}

void pgschema_migration_abandon(struct pgschema_migration **p)
{
        if (p && *p) {
                free(*p);
                *p = NULL;
        }
}

static void on_rolled_back(struct pgconn *c, const struct pgconn_result *res, void *userdata)
{
        finish(userdata, ((struct pgschema_migration *)userdata)->result);
}

/* Ends the open transaction without keeping anything, then reports r. */
static void roll_back(struct pgschema_migration *m, int r)
{
        static const struct pgconn_stmt rollback = {.sql = "ROLLBACK"};
        m->result = r;
        if (pgconn_send(m->conn, &rollback, 1, on_rolled_back, m) < 0)
                finish(m, r); /* no connection: nothing to end */
}

/* A failed step: the transaction is still open on a live connection (a statement failed, or
 * the statement timeout cancelled one) and is rolled back; with the connection it went too. */
static void end(struct pgschema_migration *m, int r)
{
        if (pgconn_is_connected(m->conn))
                roll_back(m, r);
        else
                finish(m, r);
}

static void describe(struct pgschema_migration *m, const char *what,
                     const struct pgconn_result *res)
{
        char *msg = strndup_safe(res->message, sizeof(m->error));
        if (msg) {
                size_t n = strlen(msg);
                while (n > 0 && msg[n - 1] == '\n')
                        msg[--n] = 0;
        }
        snprintf(m->error, sizeof(m->error), "%s: %s", what, msg ? msg : "out of memory");
        free(msg);
}

static void on_migrated(struct pgconn *c, const struct pgconn_result *res, void *userdata)
{
        struct pgschema_migration *m = userdata;
        if (res->error < 0) {
                describe(m, "migrating the ledger's schema", res);
                end(m, res->error);
                return;
        }
        finish(m, 0);
}

static void on_version(struct pgconn *c, const struct pgconn_result *res, void *userdata)
{
        struct pgschema_migration *m = userdata;
        if (res->error < 0) {
                describe(m, "reading the ledger's schema version", res);
                end(m, res->error);
                return;
        }
        const PGresult *v = res->results[res->n - 1];
        uint64_t version = 0;
        if (PQntuples(v) == 1 && parse_uint(PQgetvalue(v, 0, 0), 0, INT32_MAX, &version) < 0) {
                snprintf(m->error, sizeof(m->error),
                         "the ledger's schema version is unreadable (\"%.64s\" in table meta)",
                         PQgetvalue(v, 0, 0));
                roll_back(m, -EBADMSG);
                return;
        }
        m->from = (int)version;
        if (version > PGSCHEMA_VERSION) {
                snprintf(m->error, sizeof(m->error),
                         "the ledger's schema is at version %d, newer than this vidu-upscaled "
                         "knows (%d): a newer release migrated it. Run that release (or newer) "
                         "on every instance; this one will not write to it",
                         m->from, PGSCHEMA_VERSION);
                roll_back(m, -EPROTONOSUPPORT);
                return;
        }

        /* The migrations still to run, the version, the commit: one batch. */
        size_t n = 0;
        for (int i = m->from; i < PGSCHEMA_VERSION; i++)
                for (const char *const *s = migrations[i]; *s; s++)
                        n++;
        struct pgconn_stmt *stmts = calloc(n + 2, sizeof(*stmts));
        if (!stmts) {
                snprintf(m->error, sizeof(m->error), "out of memory");
                roll_back(m, -ENOMEM);
                return;
        }
        size_t k = 0;
        for (int i = m->from; i < PGSCHEMA_VERSION; i++)
                for (const char *const *s = migrations[i]; *s; s++)
                        stmts[k++].sql = *s;
        char to[UINT_DEC_SIZE];
        format_uint(PGSCHEMA_VERSION, to);
        const char *params[] = {to};
        if (m->from < PGSCHEMA_VERSION)
                stmts[k++] = (struct pgconn_stmt){
                    .sql = "INSERT INTO meta (key, value) VALUES ('schema_version', $1) "
                           "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    .n_params = 1,
                    .params = params};
        stmts[k++].sql = "COMMIT";
        int r = pgconn_send(c, stmts, k, on_migrated, m);
        free(stmts);
        if (r < 0) {
                snprintf(m->error, sizeof(m->error), "migrating the ledger's schema: %s",
                         isempty(pgconn_errmsg(c)) ? strerror(-r) : pgconn_errmsg(c));
                finish(m, r);
        }
}

int pgschema_migrate(struct pgconn *c, pgschema_done_fn done, void *userdata,
                     struct pgschema_migration **ret)
{
        struct pgschema_migration *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->conn = c;
        m->done = done;
        m->userdata = userdata;
        /* The lock first: whoever comes second waits here until the first has committed, and
         * then reads the version it wrote. meta itself is made here, outside the numbered
         * migrations, so there is always a version to read. */
        static const struct pgconn_stmt stmts[] = {
            {.sql = "BEGIN"},
            {.sql = "SELECT pg_advisory_xact_lock(" MIGRATION_LOCK ")"},
            {.sql = "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)"},
            {.sql = "SELECT value FROM meta WHERE key = 'schema_version'"},
        };
        int r = pgconn_send(c, stmts, ELEMENTSOF(stmts), on_version, m);
        if (r < 0) {
                free(m);
                return r;
        }
        if (ret) {
                m->slot = ret;
                *ret = m;
        }
        return r;
}

static const char *text_or_null(const PGresult *res, int row, int col)
{
        return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

static int64_t int_or_zero(const PGresult *res, int row, int col)
{
        const char *v = text_or_null(res, row, col);
        return v ? strtoll(v, NULL, 10) : 0;
}

int pgschema_row_to_job(const PGresult *res, int row, int col, struct job *j,
                        struct pgschema_claim *claim)
{
        if (row < 0 || row >= PQntuples(res) || col < 0 ||
            col + PGSCHEMA_JOB_NCOLUMNS > PQnfields(res))
                return -EBADMSG;
        memset(j, 0, sizeof(*j));
        job_set_field(j->creation_id, sizeof(j->creation_id), text_or_null(res, row, col));
        job_set_field(j->source_task_id, sizeof(j->source_task_id),
                      text_or_null(res, row, col + 1));
        job_set_field(j->upscale_task_id, sizeof(j->upscale_task_id),
                      text_or_null(res, row, col + 2));
        int st = job_state_from_string(text_or_null(res, row, col + 3));
        j->state = st < 0 ? JOB_DEAD : (enum job_state)st;
        j->attempt = (unsigned)int_or_zero(res, row, col + 4);
        j->next_at = (uint64_t)int_or_zero(res, row, col + 5);
        j->http_status = (int)int_or_zero(res, row, col + 6);
        job_set_field(j->upstream_error, sizeof(j->upstream_error),
                      text_or_null(res, row, col + 7));
        job_set_field(j->result_url, sizeof(j->result_url), text_or_null(res, row, col + 8));
        j->created_at = (uint64_t)int_or_zero(res, row, col + 9);
        j->updated_at = (uint64_t)int_or_zero(res, row, col + 10);
        j->duration = (unsigned)int_or_zero(res, row, col + 14);
        j->credits = text_or_null(res, row, col + 15) ? int_or_zero(res, row, col + 15) : -1;
        if (claim) {
                memset(claim, 0, sizeof(*claim));
                const char *by = text_or_null(res, row, col + 11);
                snprintf(claim->claimed_by, sizeof(claim->claimed_by), "%s", by ? by : "");
                claim->seq = int_or_zero(res, row, col + 12);
                claim->lease_until = int_or_zero(res, row, col + 13);
        }
        return 0;
}

int pgschema_row_to_event(const PGresult *res, int row, struct ledger_event *e)
{
        if (row < 0 || row >= PQntuples(res) || PGSCHEMA_EVENT_NCOLUMNS > PQnfields(res))
                return -EBADMSG;
        memset(e, 0, sizeof(*e));
        job_set_field(e->id, sizeof(e->id), text_or_null(res, row, 0));
        job_set_field(e->type, sizeof(e->type), text_or_null(res, row, 1));
        job_set_field(e->creation_id, sizeof(e->creation_id), text_or_null(res, row, 2));
        int st = ledger_event_state_from_string(text_or_null(res, row, 3));
        e->state = st < 0 ? LEDGER_EVENT_DEAD : (enum ledger_event_state)st;
        e->attempts = (unsigned)int_or_zero(res, row, 4);
        e->next_at = (uint64_t)int_or_zero(res, row, 5);
        e->since = (uint64_t)int_or_zero(res, row, 6);
        e->created_at = (uint64_t)int_or_zero(res, row, 7);
        e->updated_at = (uint64_t)int_or_zero(res, row, 8);
        e->http_status = (int)int_or_zero(res, row, 9);
        job_set_field(e->error, sizeof(e->error), text_or_null(res, row, 10));
        return 0;
}

int pgschema_text_array(const char *const *values, size_t n, char **ret)
{
        /* Every byte may need a backslash; quotes and commas around each value. */
        size_t size = 3;
        for (size_t i = 0; i < n; i++)
                size += values[i] ? 2 * strlen(values[i]) + 3 : 5;
        char *buf = malloc(size), *p = buf;
        if (!buf)
                return -ENOMEM;
        *p++ = '{';
        for (size_t i = 0; i < n; i++) {
                if (i > 0)
                        *p++ = ',';
                if (!values[i]) {
                        memcpy(p, "NULL", 4);
                        p += 4;
                        continue;
                }
                *p++ = '"';
                for (const char *v = values[i]; *v; v++) {
                        if (*v == '"' || *v == '\\')
                                *p++ = '\\';
                        *p++ = *v;
                }
                *p++ = '"';
        }
        *p++ = '}';
        *p = 0;
        *ret = buf;
        return 0;
}
