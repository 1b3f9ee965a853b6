/* dispatcher.h: takes due jobs from the ledger, submits them with bounded concurrency, follows
 * accepted upscales to their end, and records every transition before acting on it. */
#pragma once

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "budget.h"
#include "config.h"
#include "control.h"
#include "journal.h"
#include "ledger.h"
#include "metrics.h"
#include "pgconn.h"
#include "txn.h"
#include "upstream.h"

struct dispatcher;

int dispatcher_new(sd_event *event, struct ledger *ledger, struct txn *txn,
                   const struct config *cfg, struct metrics *metrics, struct dispatcher **ret);
/* PostgreSQL (txn_new_pg): claims due jobs under store.instance in the turns' transaction,
 * saves answers under the claim they were taken with, renews its leases and takes over lapsed
 * ones on house (the housekeeping connection, shared with the manager's counts). */
int dispatcher_new_pg(sd_event *event, struct txn *txn, struct pgconn *house,
                      const struct config *cfg, struct metrics *metrics, struct dispatcher **ret);
struct dispatcher *dispatcher_free(struct dispatcher *d);

/* The configuration changed (reload); the pointer stays owned by the caller. */
void dispatcher_set_config(struct dispatcher *d, const struct config *cfg);

/* Jobs became due (new notifications, an operator's release): look soon. */
void dispatcher_kick(struct dispatcher *d);

/* At start: jobs left in `submitting` by a crash follow retry.uncertain. */
int dispatcher_recover(struct dispatcher *d);

/* Stop starting requests; `idle` is called once nothing is in flight any more (at once if nothing
 * is), or when the deadline passes, with the number of requests abandoned. */
typedef void (*dispatcher_idle_fn)(struct dispatcher *d, size_t abandoned, void *userdata);
void dispatcher_drain(struct dispatcher *d, uint64_t timeout_usec, dispatcher_idle_fn idle,
                      void *userdata);

size_t dispatcher_in_flight(const struct dispatcher *d);
bool dispatcher_paused(const struct dispatcher *d);
/* The spend guard's limits as configured. */
void dispatcher_budget_limits(const struct config *cfg, struct budget_limits *ret);
/* The ledger's switches and budget, for STATUS= and the metrics (read outside any turn). */
struct dispatcher_control {
        bool operator_paused;
        uint64_t paused_since;
        bool budget_blocked;
        struct control_budget budget; /* while blocked */
        bool has_budget[_BUDGET_WINDOW_MAX];
        uint64_t budget_remaining[_BUDGET_WINDOW_MAX];
};
int dispatcher_control(struct dispatcher *d, struct dispatcher_control *ret);
/* The last upstream error, for STATUS=; empty when none. */
const char *dispatcher_last_error(const struct dispatcher *d);

/* The `accepted` entry of a job the commit just recorded at accepted_at (realtime usec), written
 * at once, or with log.fold_accepted owed: a `submitted` entry written within a second of
 * acceptance carries ACCEPTED_AT instead; any other entry about the job first, the second
 * running out (one timer for all) or a stop writes it, so it always comes before the job's
 * other entries. */
void dispatcher_accepted(struct dispatcher *d, const char *creation_id, const char *source_task_id,
                         uint64_t accepted_at);
/* Before an entry about creation_id that is written elsewhere: its owed `accepted` entry. */
void dispatcher_settle_accepted(struct dispatcher *d, const char *creation_id);
/* Writes every owed `accepted` entry (before a stop). */
void dispatcher_write_owed(struct dispatcher *d);

/* A journal entry about a job's transition, decided inside the transaction and written after its
 * commit (dispatcher_write_entry: after the job's owed `accepted` entry, or folding it). */
struct job_entry {
        bool log;
        int priority;
        int code_line; /* where the transition was decided, for CODE_LINE/CODE_FUNC */
        const char *code_func;
        struct job_event ev; /* its strings point into `after` */
        char message[3072];
        struct job after;
};
void dispatcher_write_entry(struct dispatcher *d, const struct job_entry *e);

/* How an upscale's outcome was learnt (vidu_upscaled_outcomes_total{via}). */
enum outcome_via {
        OUTCOME_VIA_POLL,
        OUTCOME_VIA_CALLBACK, /* pushed to the webhook: the upstream's callback, a notification */
        _OUTCOME_VIA_MAX,
};

/* Records the credits an upscale cost as an answer or a callback reported them (-1: not said)
 * on its job and latest submission, for the spend guard; nothing when already known. */
int dispatcher_note_credits(struct ledger *ledger, const struct job *j, int64_t credits);

/* PostgreSQL: the count and journal entry of a job an outcome closed in the database (j as it is
 * now), as dispatcher_close_job makes them. */
void dispatcher_outcome_entry(struct dispatcher *d, struct job *j, enum outcome_via via,
                              int http_status, struct job_entry *ret);

/* Closes a job from its upscale's outcome, a poll's answer or a callback alike: records it inside
 * the caller's transaction, counts it under `via`, and fills *ret for the journal entry the
 * caller writes after the commit (http_status > 0: the answer's status, for the entry). Returns
 * the new state (JOB_SUCCEEDED / JOB_FAILED), 0 when nothing changed (still running, or the job
 * is no longer one an outcome closes), or -errno. */
int dispatcher_close_job(struct dispatcher *d, const struct job *j, const struct upstream_poll *p,
                         enum outcome_via via, int http_status, uint64_t now,
                         struct job_entry *ret);
