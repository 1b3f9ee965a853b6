/* pgschema.h: the shared ledger's PostgreSQL schema (versioned, migrated once however many
 * instances start together) and the statements the backend runs on it, as constants. */
#pragma once

#include <libpq-fe.h>
#include <stdint.h>

#include "job.h"
#include "ledger.h"
#include "pgconn.h"

/* The schema this binary knows; a database at a newer one is refused. */
#define PGSCHEMA_VERSION 4

/* Called once: r 0 (the schema is at PGSCHEMA_VERSION; from_version says what it was, 0 for an
 * empty database), -EPROTONOSUPPORT (the database's schema is newer than this binary: error
 * says so), or another -errno from the connection with error in words. */
typedef void (*pgschema_done_fn)(int r, int from_version, const char *error, void *userdata);

/* Creates or migrates the schema in one transaction holding a transaction-scoped advisory lock
 * (so it works through PgBouncer in transaction mode): several instances starting at once
 * migrate it once, the others wait for that and find it done. Two batches: the lock and the
 * version read, then the migrations and the commit. -EBUSY/-ENOTCONN as pgconn_send. */
struct pgschema_migration;
int pgschema_migrate(struct pgconn *c, pgschema_done_fn done, void *userdata,
                     struct pgschema_migration **ret);
/* With ret given, *ret holds the migration until it ends (cleared before done is called). Its
 * connection freed first (pgconn_free calls no callback), this frees what it held. */
void pgschema_migration_abandon(struct pgschema_migration **p);

/* The claim a job row carries. */
struct pgschema_claim {
        char claimed_by[128]; /* "" when not claimed */
        int64_t seq;          /* bumped by every claim: the fence */
        int64_t lease_until;  /* usec since the epoch, database clock; 0 when none */
};

/* Fills j (and claim, if not NULL) from the PGSCHEMA_JOB_COLUMNS starting at column col of
 * row. 0, or -EBADMSG for a row that does not have them. */
int pgschema_row_to_job(const PGresult *res, int row, int col, struct job *j,
                        struct pgschema_claim *claim);

/* Writes values as a PostgreSQL text array literal ({"a","b\"c",NULL}) for a $n::text[]
 * parameter; a NULL entry is SQL NULL. 0 and *ret (free it), or -ENOMEM. */
int pgschema_text_array(const char *const *values, size_t n, char **ret);

/* The columns every statement returning jobs returns, in this order (16). Times are usec since
 * the epoch. The payload is not among them: it is read on demand. */
#define PGSCHEMA_JOB_COLUMNS                                                                       \
        "jobs.creation_id, jobs.source_task_id, jobs.upscale_task_id, jobs.state, jobs.attempt, "  \
        "(extract(epoch FROM jobs.next_at) * 1000000)::bigint, jobs.http_status, "                 \
        "jobs.upstream_error, jobs.result_url, "                                                   \
        "(extract(epoch FROM jobs.created_at) * 1000000)::bigint, "                                \
        "(extract(epoch FROM jobs.updated_at) * 1000000)::bigint, jobs.claimed_by, "               \
        "jobs.claim_seq, (extract(epoch FROM jobs.lease_until) * 1000000)::bigint, "               \
        "jobs.duration, jobs.credits"
#define PGSCHEMA_JOB_NCOLUMNS 16

/* Durations are passed as microseconds ($n::bigint) and added to the database's now(): every
 * time in the shared ledger is on the database's clock, never an instance's. */
#define PGSCHEMA_USEC(n) "(" n "::bigint * interval '1 microsecond')"

/* A new job, pending and due now: one row back if new, none if the creation id was known (a
 * duplicate: the unique key decides, never a check-then-insert; of two instances inserting the
 * same id at once, the second waits for the first's commit and then finds it). $1 creation id,
 * $2 source task id. */
#define PGSCHEMA_INSERT                                                                            \
        "INSERT INTO jobs (creation_id, source_task_id, state, attempt, next_at, created_at, "     \
        "updated_at) VALUES ($1, $2, 'pending', 0, now(), now(), now()) "                          \
        "ON CONFLICT (creation_id) DO NOTHING RETURNING creation_id"

/* The same for a whole turn's notifications in one statement, as ledger_insert_job records
 * them: $1 and $2 text arrays (creation ids, source task ids; pgschema_text_array) of one
 * length, $3 an integer array of the settings.duration each submission sends and $4 a text
 * array of the source payloads (either array NULL, or NULL entries: none recorded). Returns the
 * creation ids that were new; a duplicate keeps what it was first recorded with. One statement
 * to parse and plan instead of one per job; give the ids sorted, so that two instances
 * inserting overlapping sets lock them in the same order and never deadlock. */
#define PGSCHEMA_INSERT_MANY                                                                       \
        "INSERT INTO jobs (creation_id, source_task_id, duration, payload, state, attempt, "       \
        "next_at, created_at, updated_at) SELECT id, src, dur, pl, 'pending', 0, now(), now(), "   \
        "now() FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[]) "                    \
        "AS t(id, src, dur, pl) WHERE id IS NOT NULL "                                             \
        "ON CONFLICT (creation_id) DO NOTHING RETURNING creation_id"

/* A whole turn's intake in one statement, so one round trip however many notifications came:
 * the deliveries' replay keys remembered and, for each delivery whose key was new (or that has
 * none), its creations recorded as PGSCHEMA_INSERT_MANY does. $1 the turn's replay keys (text
 * array; repeats and NULLs ignored), $2 how long they are remembered (usec), $3 to $6 the
 * creations as PGSCHEMA_INSERT_MANY's $1 to $4, $7 the replay key of the delivery each came in
 * (NULL: none). A delivery replayed to another instance is a replay here too: of two instances
 * remembering one key at once, the second waits for the first's commit and finds it, and then
 * records none of that delivery's creations. A task whose id is an upscale of ours (a job's
 * upscale_task_id: its callback, or a notification of it) is an outcome, never work: none of its
 * creations is recorded, whatever selected them. Returns ('replay', key) for each key that was new
 * and ('job', creation id) for each job recorded; what is absent was a replay or a duplicate. */
#define PGSCHEMA_INTAKE                                                                            \
        "WITH keys AS (SELECT DISTINCT k FROM unnest($1::text[]) AS k WHERE k IS NOT NULL), "      \
        "fresh AS (INSERT INTO replay (key, until) SELECT k, now() + " PGSCHEMA_USEC(              \
            "$2") " FROM keys ORDER BY k "                                                         \
                  "ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until "                        \
                  "WHERE replay.until < now() RETURNING key), "                                    \
                  "recorded AS (INSERT INTO jobs (creation_id, source_task_id, duration, "         \
                  "payload, state, attempt, next_at, created_at, updated_at) "                     \
                  "SELECT DISTINCT ON (id) id, src, dur, pl, 'pending', 0, now(), now(), now() "   \
                  "FROM unnest($3::text[], $4::text[], $5::integer[], $6::text[], $7::text[]) "    \
                  "AS t(id, src, dur, pl, k) WHERE id IS NOT NULL AND (k IS NULL OR k IN "         \
                  "(SELECT key FROM fresh)) AND NOT EXISTS (SELECT 1 FROM jobs o WHERE "           \
                  "o.upscale_task_id = t.src) ORDER BY id "                                        \
                  "ON CONFLICT (creation_id) DO NOTHING RETURNING creation_id) "                   \
                  "SELECT 'replay', key FROM fresh UNION ALL SELECT 'job', creation_id FROM "      \
                  "recorded"

/* One job by creation id, or by upscale task id. $1 the id. */
#define PGSCHEMA_GET "SELECT " PGSCHEMA_JOB_COLUMNS " FROM jobs WHERE creation_id = $1"
#define PGSCHEMA_GET_BY_UPSCALE                                                                    \
        "SELECT " PGSCHEMA_JOB_COLUMNS " FROM jobs WHERE upscale_task_id = $1"

/* A turn's upscale outcomes (callbacks) in one statement: $1 upscale task ids, $2 the state each
 * reports ('succeeded', 'failed'; NULL: still running), $3 result URLs, $4 errors (text arrays of
 * one length; a task twice keeps its final report). Each job of ours still open (submitted,
 * uncertain, submitting) under a final outcome is closed and its claim ended, so a poll in flight
 * for it is fenced out. Returns ('closed' or 'open', PGSCHEMA_JOB_COLUMNS) for each job the ids
 * name: 'closed' as it is now, 'open' as it was (still running, or already final). */
#define PGSCHEMA_CLOSE_BY_UPSCALE                                                                  \
        "WITH t AS (SELECT DISTINCT ON (uid) uid, st, url, err FROM unnest($1::text[], "           \
        "$2::text[], $3::text[], $4::text[]) AS t(uid, st, url, err) WHERE uid IS NOT NULL "       \
        "ORDER BY uid, st NULLS LAST), "                                                           \
        "closed AS (UPDATE jobs SET state = t.st, result_url = coalesce(t.url, jobs.result_url), " \
        "upstream_error = t.err, updated_at = now(), claimed_by = NULL, claim_turn = NULL, "       \
        "lease_until = NULL FROM t WHERE t.st IS NOT NULL AND jobs.upscale_task_id = t.uid "       \
        "AND jobs.state IN ('submitted', 'uncertain', 'submitting') "                              \
        "RETURNING " PGSCHEMA_JOB_COLUMNS                                                          \
        ") SELECT 'closed', closed.* FROM closed UNION ALL SELECT 'open', " PGSCHEMA_JOB_COLUMNS   \
        " FROM jobs WHERE jobs.upscale_task_id IN (SELECT uid FROM t) AND "                        \
        "jobs.upscale_task_id NOT IN (SELECT upscale_task_id FROM closed)"

/* Claims up to $3 due jobs for submission and marks them `submitting` in the same statement:
 * attempt + 1, claimed by $1 under a new claim_seq, for the lease $2 usec, tagged with the
 * claiming batch $4 (an instance's counter, to find them again if that batch's commit had an
 * unknown outcome). SKIP LOCKED: instances never wait on each other's rows, and a row another
 * transaction holds is someone else's. The CTE is materialised so the locking subquery runs
 * once. Returns the state each job came from, then PGSCHEMA_JOB_COLUMNS. */
#define PGSCHEMA_CLAIM_SUBMIT_WHERE(more, ret)                                                     \
        "WITH due AS MATERIALIZED (SELECT creation_id, state FROM jobs "                           \
        "WHERE state IN ('pending', 'waiting') AND next_at <= now()" more " "                      \
        "ORDER BY next_at, creation_id LIMIT $3 FOR UPDATE SKIP LOCKED) "                          \
        "UPDATE jobs SET state = 'submitting', attempt = jobs.attempt + 1, next_at = now(), "      \
        "updated_at = now(), claimed_by = $1, claim_seq = jobs.claim_seq + 1, claim_turn = $4, "   \
        "lease_until = now() + " PGSCHEMA_USEC(                                                    \
            "$2") " FROM due WHERE jobs.creation_id = due.creation_id "                            \
                  "RETURNING due.state, " PGSCHEMA_JOB_COLUMNS ret
#define PGSCHEMA_CLAIM_SUBMIT PGSCHEMA_CLAIM_SUBMIT_WHERE("", "")
/* The daemon's claims also return the source's payload after the job's columns when $5 is true
 * (ent-v2 passes it on), so a submission needs no read of its own. */
#define PGSCHEMA_CLAIM_PAYLOAD ", CASE WHEN $5::boolean THEN jobs.payload END"

/* The spend guard, shared by every instance: how many jobs a claim may take ($3 at most) under
 * the budget's windows over the submissions table ($6 per hour, $7 per day, $8 credits per day,
 * 0: no limit; $9 what a submission of unknown cost counts as: budget_room's arithmetic). Only
 * sound after PGSCHEMA_BUDGET_LOCK in the same transaction: READ COMMITTED gives each statement
 * a new snapshot, so the claim sees every submission a concurrent claimer committed. */
#define PGSCHEMA_BUDGET_CREDITS "coalesce(sum(coalesce(credits, $9::bigint)), 0)"
#define PGSCHEMA_BUDGET_ROOM                                                                       \
        "(SELECT least($3::bigint, "                                                               \
        "CASE WHEN $6::bigint > 0 THEN greatest($6::bigint - count(*) FILTER (WHERE at > now() - " \
        "interval '1 hour'), 0) ELSE $3::bigint END, "                                             \
        "CASE WHEN $7::bigint > 0 THEN greatest($7::bigint - count(*), 0) ELSE $3::bigint END, "   \
        "CASE WHEN $8::bigint <= 0 THEN $3::bigint "                                               \
        "WHEN " PGSCHEMA_BUDGET_CREDITS " >= $8::bigint THEN 0 "                                   \
        "WHEN $9::bigint = 0 THEN $3::bigint "                                                     \
        "ELSE ceil(($8::bigint - " PGSCHEMA_BUDGET_CREDITS ") / $9::bigint)::bigint END)::bigint " \
        "FROM submissions WHERE at > now() - interval '1 day')"
/* The budget's lock: a row lock on control's 'budget' row (made by the first to take it), held
 * to the turn's commit, so two instances' claims under a budget take turns and together never
 * exceed it. */
#define PGSCHEMA_BUDGET_LOCK                                                                       \
        "INSERT INTO control (key, updated_at) VALUES ('budget', now()) "                          \
        "ON CONFLICT (key) DO UPDATE SET updated_at = now()"
/* The daemon's claim: PGSCHEMA_CLAIM_SUBMIT limited by the budget's room (with no limit set,
 * the room's subquery is not run: an InitPlan is evaluated when first needed), with the payload
 * ($5), and every job claimed recorded as a submission (its last known cost standing for its
 * cost until an answer says) in the same statement. */
#define PGSCHEMA_CLAIM_SUBMIT_SPENT(more)                                                          \
        "WITH due AS MATERIALIZED (SELECT creation_id, state FROM jobs "                           \
        "WHERE state IN ('pending', 'waiting') AND next_at <= now()" more " "                      \
        "ORDER BY next_at, creation_id LIMIT CASE WHEN $6::bigint + $7::bigint + $8::bigint = 0 "  \
        "THEN $3::bigint ELSE " PGSCHEMA_BUDGET_ROOM " END FOR UPDATE SKIP LOCKED), "              \
        "claimed AS (UPDATE jobs SET state = 'submitting', attempt = jobs.attempt + 1, "           \
        "next_at = now(), updated_at = now(), claimed_by = $1, claim_seq = jobs.claim_seq + 1, "   \
        "claim_turn = $4, lease_until = now() + " PGSCHEMA_USEC(                                   \
            "$2") " FROM due WHERE jobs.creation_id = due.creation_id "                            \
                  "RETURNING due.state AS from_state, " PGSCHEMA_JOB_COLUMNS                       \
                      PGSCHEMA_CLAIM_PAYLOAD "), "                                                 \
                  "spent AS (INSERT INTO submissions (creation_id, at, credits) "                  \
                  "SELECT creation_id, now(), credits FROM claimed) SELECT * FROM claimed"
/* Claiming nothing while an operator's pause (`jobs pause`: meta key 'operator_pause') is
 * recorded: the probe of an account-wide pause. */
#define PGSCHEMA_CLAIM_SUBMIT_BUDGET_ALLOWED                                                       \
        PGSCHEMA_CLAIM_SUBMIT_SPENT(" AND NOT EXISTS (SELECT 1 FROM meta WHERE key = "             \
                                    "'operator_pause')")
/* Nor while an account-wide pause is recorded (PGSCHEMA_CONTROL_SET of key 'pause' with a
 * value): an instance that has not read the pause yet sends nothing into it. */
#define PGSCHEMA_CLAIM_SUBMIT_BUDGET_UNPAUSED                                                      \
        PGSCHEMA_CLAIM_SUBMIT_SPENT(" AND NOT EXISTS (SELECT 1 FROM meta WHERE key = "             \
                                    "'operator_pause') AND NOT EXISTS (SELECT 1 FROM control "     \
                                    "WHERE key = 'pause' AND value IS NOT NULL)")
/* The windows' use after the claim ($1 what a submission of unknown cost counts as): the day's
 * submissions, the hour's, the day's credits; then the day's submissions, oldest first, for
 * budget_scan (usec since the epoch, credits or NULL) in PGSCHEMA_SPEND_LIST. */
#define PGSCHEMA_SPEND_USAGE                                                                       \
        "SELECT count(*), count(*) FILTER (WHERE at > now() - interval '1 hour'), "                \
        "coalesce(sum(coalesce(credits, $1::bigint)), 0)::bigint FROM submissions "                \
        "WHERE at > now() - interval '1 day'"
#define PGSCHEMA_SPEND_LIST                                                                        \
        "SELECT (extract(epoch FROM at) * 1000000)::bigint, credits FROM submissions "             \
        "WHERE at > now() - interval '1 day' ORDER BY at"
/* The credits an answer or callback reported ($2) for job $1 and its latest submission. */
#define PGSCHEMA_SET_CREDITS                                                                       \
        "WITH j AS (UPDATE jobs SET credits = $2::bigint WHERE creation_id = $1 "                  \
        "AND credits IS DISTINCT FROM $2::bigint RETURNING creation_id) "                          \
        "UPDATE submissions SET credits = $2::bigint WHERE creation_id = $1 AND at = "             \
        "(SELECT max(at) FROM submissions WHERE creation_id = $1)"
/* The same for the upscales named in $1 (text[]) with their costs $2 (text[] of integers): a
 * callback's, for jobs of ours only. */
#define PGSCHEMA_CREDITS_BY_UPSCALE                                                                \
        "WITH t AS (SELECT DISTINCT ON (uid) uid, c::bigint AS c FROM unnest($1::text[], "         \
        "$2::text[]) AS t(uid, c) ORDER BY uid), "                                                 \
        "j AS (UPDATE jobs SET credits = t.c FROM t WHERE jobs.upscale_task_id = t.uid "           \
        "AND jobs.credits IS DISTINCT FROM t.c RETURNING jobs.creation_id, t.c) "                  \
        "UPDATE submissions s SET credits = j.c FROM j WHERE s.creation_id = j.creation_id "       \
        "AND s.at = (SELECT max(at) FROM submissions WHERE creation_id = j.creation_id)"
/* Submissions older than two days, $1 at a time (housekeeping). */
#define PGSCHEMA_PURGE_SPEND                                                                       \
        "DELETE FROM submissions WHERE (creation_id, at) IN (SELECT creation_id, at FROM "         \
        "submissions WHERE at < now() - interval '2 days' ORDER BY at LIMIT $1 "                   \
        "FOR UPDATE SKIP LOCKED)"

/* Claims up to $3 submitted jobs due a poll, for $1 under a new claim_seq with lease $2 usec
 * and batch $4, their next poll pushed $5 usec out (the poll interval plus the request's
 * timeout) so nobody else polls them meanwhile. Returns PGSCHEMA_JOB_COLUMNS. */
#define PGSCHEMA_CLAIM_POLL                                                                        \
        "WITH due AS MATERIALIZED (SELECT creation_id FROM jobs "                                  \
        "WHERE state = 'submitted' AND next_at <= now() "                                          \
        "ORDER BY next_at, creation_id LIMIT $3 FOR UPDATE SKIP LOCKED) "                          \
        "UPDATE jobs SET claimed_by = $1, claim_seq = jobs.claim_seq + 1, claim_turn = $4, "       \
        "lease_until = now() + " PGSCHEMA_USEC("$2") ", next_at = now() + " PGSCHEMA_USEC(         \
            "$5") ", "                                                                             \
                  "updated_at = now() FROM due WHERE jobs.creation_id = due.creation_id "          \
                  "RETURNING " PGSCHEMA_JOB_COLUMNS

/* Renews every live lease of instance $1 to $2 usec from now. A lease that lapsed is not
 * renewed: the instance must treat the jobs missing from the answer as no longer its own.
 * Returns creation_id, claim_seq of those renewed. */
#define PGSCHEMA_RENEW_WHERE(more)                                                                 \
        "UPDATE jobs SET lease_until = now() + " PGSCHEMA_USEC(                                    \
            "$2") " WHERE claimed_by = $1 "                                                        \
                  "AND lease_until > now()" more " RETURNING creation_id, claim_seq"
#define PGSCHEMA_RENEW PGSCHEMA_RENEW_WHERE("")

/* The same, only for the claims the instance still acts on: the jobs $3 (text array: its
 * requests in flight) and those of claim turns $4 (bigint array: commits of unknown outcome,
 * awaiting PGSCHEMA_RELEASE_UNSENT). Any other claim of its name lapses and is taken over: one
 * whose request could not start, or one an earlier process under the same store.instance left. */
#define PGSCHEMA_RENEW_HELD                                                                        \
        PGSCHEMA_RENEW_WHERE(                                                                      \
            " AND (creation_id = ANY($3::text[]) OR claim_turn = ANY($4::bigint[]))")

/* Records what became of a claimed job, only under the claim it was taken with: $1 creation id,
 * $2 instance, $3 claim_seq (the fence), then $4 state, $5 attempt, $6 next_at in usec from now,
 * $7 upscale task id, $8 HTTP status, $9 upstream error, $10 result URL. The claim ends with it.
 * No row back: the claim is stale (a survivor took the job over) and nothing changed. */
#define PGSCHEMA_SAVE_FENCED                                                                       \
        "UPDATE jobs SET state = $4, attempt = $5, next_at = now() + " PGSCHEMA_USEC(              \
            "$6") ", "                                                                             \
                  "upscale_task_id = $7, http_status = $8, upstream_error = $9, result_url = "     \
                  "$10, "                                                                          \
                  "updated_at = now(), claimed_by = NULL, claim_turn = NULL, lease_until = NULL "  \
                  "WHERE creation_id = $1 AND claimed_by = $2 AND claim_seq = $3 RETURNING state"

/* PGSCHEMA_SAVE_FENCED for an accepted submission ($4 'submitted', $7 its task id): if another
 * job already holds that upscale task id (an upstream that numbers its tasks alike after a
 * reload, or an upstream bug), the job takes state $11 with next_at $12 usec from now instead,
 * no task id and an error naming the other creation, rather than failing the turn on the unique
 * index: as an answer that leaves open whether a task exists (SQLite's UPSTREAM_UNCERTAIN), held
 * `uncertain` under retry.uncertain = hold, under `resubmit` tried again (`waiting`, or `dead`
 * out of attempts). Returns state, upstream_error. */
#define PGSCHEMA_SAVE_ACCEPTED                                                                     \
        "WITH other AS (SELECT creation_id FROM jobs WHERE upscale_task_id = $7 "                  \
        "AND creation_id <> $1 LIMIT 1) "                                                          \
        "UPDATE jobs SET state = CASE WHEN EXISTS (SELECT 1 FROM other) THEN $11 "                 \
        "ELSE $4 END, attempt = $5, next_at = now() + CASE WHEN EXISTS (SELECT 1 FROM other) "     \
        "THEN " PGSCHEMA_USEC("$12") " ELSE " PGSCHEMA_USEC(                                       \
            "$6") " END, upscale_task_id = CASE WHEN EXISTS (SELECT 1 FROM other) THEN NULL "      \
                  "ELSE $7 END, http_status = $8, upstream_error = CASE WHEN EXISTS (SELECT 1 "    \
                  "FROM other) THEN 'the upstream answered with task id ' || left($7, 64) || "     \
                  "', already recorded for creation ' || left((SELECT creation_id FROM other), "   \
                  "64) ELSE $9 END, result_url = $10, updated_at = now(), claimed_by = NULL, "     \
                  "claim_turn = NULL, lease_until = NULL "                                         \
                  "WHERE creation_id = $1 AND claimed_by = $2 AND claim_seq = $3 "                 \
                  "RETURNING state, upstream_error"

/* A stale answer may still settle a job held `uncertain` from that very claim (a takeover under
 * retry.uncertain=hold keeps claim_seq): it is news, not a conflict, unless another job holds
 * its task id (see PGSCHEMA_SAVE_ACCEPTED). $1 creation id, $2 claim_seq, $3 state, $4 upscale task
 * id, $5 HTTP status, $6 upstream error, $7 result URL, $8 next_at in usec from now. */
#define PGSCHEMA_SETTLE_UNCERTAIN                                                                  \
        "UPDATE jobs SET state = $3, upscale_task_id = $4, http_status = $5, upstream_error = "    \
        "$6, "                                                                                     \
        "result_url = $7, next_at = now() + " PGSCHEMA_USEC(                                       \
            "$8") ", updated_at = now() "                                                          \
                  "WHERE creation_id = $1 AND state = 'uncertain' AND claim_seq = $2 AND NOT "     \
                  "EXISTS "                                                                        \
                  "(SELECT 1 FROM jobs o WHERE o.upscale_task_id = $4 AND o.creation_id <> $1) "   \
                  "RETURNING "                                                                     \
                  "state"

/* Takes over up to $2 jobs whose instance lost its lease mid-submission, as a restart would:
 * $1 'hold' makes them `uncertain` (claim_seq kept, see above), anything else `waiting`, due now
 * (the next claim bumps claim_seq, fencing the old one out). Submitted, pending and waiting jobs
 * need no takeover: they are claimable again once due. Returns the instance that lost each job,
 * then PGSCHEMA_JOB_COLUMNS. */
#define PGSCHEMA_TAKEOVER                                                                          \
        "WITH lapsed AS MATERIALIZED (SELECT creation_id, claimed_by FROM jobs "                   \
        "WHERE state = 'submitting' AND lease_until < now() ORDER BY lease_until "                 \
        "LIMIT $2 FOR UPDATE SKIP LOCKED) "                                                        \
        "UPDATE jobs SET state = CASE WHEN $1 = 'hold' THEN 'uncertain' ELSE 'waiting' END, "      \
        "upstream_error = 'interrupted while submitting (instance ' || "                           \
        "coalesce(lapsed.claimed_by, '?') || ' lost its lease)', claimed_by = NULL, "              \
        "claim_turn = NULL, lease_until = NULL, next_at = now(), updated_at = now() "              \
        "FROM lapsed WHERE jobs.creation_id = lapsed.creation_id "                                 \
        "RETURNING lapsed.claimed_by, " PGSCHEMA_JOB_COLUMNS

/* Puts back the jobs instance $1 claimed in its batch $2 whose commit had an unknown outcome:
 * none of them was POSTed, so they are due again (attempt returned), not uncertain. Returns
 * their creation ids. */
#define PGSCHEMA_RELEASE_UNSENT                                                                    \
        "UPDATE jobs SET state = 'waiting', attempt = greatest(attempt - 1, 0), next_at = now(), " \
        "updated_at = now(), claimed_by = NULL, claim_turn = NULL, lease_until = NULL "            \
        "WHERE claimed_by = $1 AND claim_turn = $2 AND state = 'submitting' "                      \
        "RETURNING creation_id"

/* Replay memory: one row back when key $1 is new or its memory expired (now remembered for $2
 * usec), none when it is still remembered: a delivery replayed to another instance is still a
 * replay. Of two instances remembering the same key at once, the second waits for the first's
 * commit and finds it. */
#define PGSCHEMA_REPLAY_REMEMBER                                                                   \
        "INSERT INTO replay (key, until) VALUES ($1, now() + " PGSCHEMA_USEC(                      \
            "$2") ") "                                                                             \
                  "ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until WHERE replay.until < "   \
                  "now() "                                                                         \
                  "RETURNING 1"

/* Purges: at most $n rows a statement, locked rows skipped, so no purge holds many locks or
 * waits on a writer. Replay keys expired ($1 the batch size); finished jobs last updated more
 * than $1 usec ago ($2 the batch size): a job purged is forgotten, so the retention must exceed
 * any sender's redelivery window. */
#define PGSCHEMA_PURGE_REPLAY                                                                      \
        "DELETE FROM replay WHERE key IN (SELECT key FROM replay WHERE until < now() "             \
        "ORDER BY until LIMIT $1 FOR UPDATE SKIP LOCKED)"
#define PGSCHEMA_PURGE_JOBS                                                                        \
        "DELETE FROM jobs WHERE creation_id IN (SELECT creation_id FROM jobs "                     \
        "WHERE state IN ('succeeded', 'failed', 'dead') AND updated_at < now() - " PGSCHEMA_USEC(  \
            "$1") " ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)"

/* Usec from now until the next job is due for submission, or for a poll (negative: overdue;
 * NULL: none), from the due indexes' first entry: an idle instance's timer, no busy poll. Asked
 * as the first row in order, never min(): with statistics older than a backlog (autovacuum's
 * analyze not run yet) the planner aggregated the whole partial index for min() (7.7 ms for
 * 20,000 submitted jobs, every turn), where ORDER BY ... LIMIT 1 reads its first entry whatever
 * the statistics say. */
#define PGSCHEMA_NEXT_SUBMIT                                                                       \
        "SELECT (extract(epoch FROM (SELECT next_at FROM jobs WHERE state IN ('pending', "         \
        "'waiting') ORDER BY next_at LIMIT 1) - now()) * 1000000)::bigint"
#define PGSCHEMA_NEXT_POLL                                                                         \
        "SELECT (extract(epoch FROM (SELECT next_at FROM jobs WHERE state = 'submitted' "          \
        "ORDER BY next_at LIMIT 1) - now()) * 1000000)::bigint"

/* Shared state (the account-wide pause, the one probe across instances). Set key $1 to value
 * $2 until $3 usec from now (NULL: no end). */
#define PGSCHEMA_CONTROL_SET                                                                       \
        "INSERT INTO control (key, value, until, updated_at) "                                     \
        "VALUES ($1, $2, now() + " PGSCHEMA_USEC(                                                  \
            "$3") ", now()) ON CONFLICT (key) DO UPDATE "                                          \
                  "SET value = EXCLUDED.value, until = EXCLUDED.until, updated_at = now()"
/* Key $1: value, holder, seq, usec until it ends (negative: ended; NULL: no end). */
#define PGSCHEMA_CONTROL_GET                                                                       \
        "SELECT value, holder, seq, (extract(epoch FROM until - now()) * 1000000)::bigint "        \
        "FROM control WHERE key = $1"
/* Both pauses, one row: the account-wide pause as PGSCHEMA_CONTROL_GET's four columns for key
 * 'pause' (all NULL when none was ever recorded), then the operator's pause (meta
 * 'operator_pause': since when, usec since the epoch as text; NULL: none). */
#define PGSCHEMA_PAUSES                                                                            \
        "SELECT c.value, c.holder, c.seq, (extract(epoch FROM c.until - now()) * "                 \
        "1000000)::bigint, "                                                                       \
        "(SELECT value FROM meta WHERE key = 'operator_pause') FROM (SELECT 1) AS one "            \
        "LEFT JOIN control c ON c.key = 'pause'"
/* Takes key $1 (a token: the probe) for holder $2 for $3 usec, if nobody holds it or their hold
 * lapsed: one row back (the new seq) if taken, none if another holds it. */
#define PGSCHEMA_CONTROL_TAKE                                                                      \
        "INSERT INTO control (key, holder, seq, until, updated_at) "                               \
        "VALUES ($1, $2, 1, now() + " PGSCHEMA_USEC(                                               \
            "$3") ", now()) ON CONFLICT (key) DO UPDATE "                                          \
                  "SET holder = EXCLUDED.holder, seq = control.seq + 1, until = EXCLUDED.until, "  \
                  "updated_at = now() WHERE control.holder IS NULL OR control.until < now() "      \
                  "OR control.holder = EXCLUDED.holder RETURNING seq"

/* The outbox of outcome events (written by the trigger of schema version 3). Its columns as
 * pgschema_row_to_event reads them (11; times usec since the epoch). */
#define PGSCHEMA_EVENT_COLUMNS                                                                     \
        "id, type, creation_id, state, attempts, "                                                 \
        "(extract(epoch FROM next_at) * 1000000)::bigint, "                                        \
        "(extract(epoch FROM since) * 1000000)::bigint, "                                          \
        "(extract(epoch FROM created_at) * 1000000)::bigint, "                                     \
        "(extract(epoch FROM updated_at) * 1000000)::bigint, http_status, error"
#define PGSCHEMA_EVENT_NCOLUMNS 11
/* Claims up to $1 due events, oldest first, with their bodies (column 11): their next_at moves
 * $2 usec on, so no other instance sends one meanwhile (an instance that dies with it in flight
 * leaves it due again then, to go with the same webhook-id); locked rows are skipped. */
#define PGSCHEMA_EVENTS_CLAIM                                                                      \
        "UPDATE events SET next_at = now() + " PGSCHEMA_USEC(                                      \
            "$2") " WHERE seq IN (SELECT seq FROM events WHERE state = 'pending' AND next_at <= "  \
                  "now() ORDER BY next_at, seq LIMIT $1 FOR UPDATE SKIP LOCKED) "                  \
                  "RETURNING " PGSCHEMA_EVENT_COLUMNS ", body"
/* An attempt's outcome for event $1, if it is still pending (an operator may have changed it):
 * state $2, attempts $3, next_at $4 (usec since the epoch), http_status $5 (NULL: none), error
 * $6. One row changed, or none. */
#define PGSCHEMA_EVENT_UPDATE                                                                      \
        "UPDATE events SET state = $2, attempts = $3, next_at = 'epoch'::timestamptz "             \
        "+ " PGSCHEMA_USEC("$4") ", http_status = $5, error = $6, updated_at = now() "             \
                                 "WHERE id = $1 AND state = 'pending'"
/* Delivered events last updated more than $1 usec ago, at most $2. */
#define PGSCHEMA_EVENTS_PURGE                                                                      \
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE state = 'delivered' AND "   \
        "updated_at < now() - " PGSCHEMA_USEC("$1") " ORDER BY updated_at LIMIT $2 FOR UPDATE "    \
                                                    "SKIP LOCKED)"
/* Usec from now until the next pending event is due (negative: overdue; NULL: none). */
#define PGSCHEMA_EVENTS_NEXT                                                                       \
        "SELECT (extract(epoch FROM (SELECT next_at FROM events WHERE state = 'pending' "          \
        "ORDER BY next_at, seq LIMIT 1) - now()) * 1000000)::bigint"
#define PGSCHEMA_EVENTS_BACKLOG "SELECT count(*) FROM events WHERE state = 'pending'"
/* Which job states write an event ($1: the mask, as text), for every instance's transitions
 * and the operator's: the trigger reads it. */
#define PGSCHEMA_SET_EVENT_STATES                                                                  \
        "INSERT INTO meta (key, value) VALUES ('event_states', $1) ON CONFLICT (key) DO UPDATE "   \
        "SET value = EXCLUDED.value"

/* The per-state counts (schema version 4): the deltas folded into the totals (one short statement;
 * two instances folding at once take turns on the rows), and the counts, state and number: the
 * states jobs end in as the totals plus what is not folded yet, the states they pass through
 * counted from the partial indexes that hold only them (jobs_submit_due, jobs_lease,
 * jobs_poll_due: a count as large as the backlog, never the table). */
#define PGSCHEMA_COUNTS_FOLD                                                                       \
        "WITH d AS (DELETE FROM job_count_deltas RETURNING state, n) "                             \
        "INSERT INTO job_counts (state, n) SELECT state, sum(n) FROM d GROUP BY state "            \
        "ON CONFLICT (state) DO UPDATE SET n = job_counts.n + EXCLUDED.n"
#define PGSCHEMA_COUNTS                                                                            \
        "SELECT state, sum(n)::bigint FROM (SELECT state, n FROM job_counts UNION ALL "            \
        "SELECT state, n FROM job_count_deltas UNION ALL "                                         \
        "SELECT state, count(*) FROM jobs WHERE state IN ('pending', 'waiting') GROUP BY state "   \
        "UNION ALL SELECT 'submitting', count(*) FROM jobs WHERE state = 'submitting' "            \
        "UNION ALL SELECT 'submitted', count(*) FROM jobs WHERE state = 'submitted') AS c "        \
        "GROUP BY state"

/* Fills e from the PGSCHEMA_EVENT_COLUMNS starting at column 0 of row (without its body).
 * 0, or -EBADMSG for a row that does not have them. */
int pgschema_row_to_event(const PGresult *res, int row, struct ledger_event *e);
