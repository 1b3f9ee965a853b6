/* ledger.h: the durable record of every job, keyed by creation id, plus the replay memory of
 * webhook deliveries. Library-like: returns -errno, never logs; ledger_errmsg() says why. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "job.h"

struct ledger;

struct ledger_options {
        bool synchronous_full; /* fsync every commit (default) or only at checkpoints */
        bool read_only;        /* for inspection tools */
        unsigned busy_timeout_ms;
        /* PRAGMA quick_check at open (it reads the whole file: seconds on a ledger of millions of
         * jobs), unless the last writer closed it with ledger_close_clean(); the mark is then
         * taken away, so that any stop but a clean one leads to a check at the next open. */
        bool integrity_check;
        /* Called right before that check runs, if it does (to tell systemd it may take a while). */
        void (*checking)(const char *path, void *userdata);
        void *checking_userdata;
        /* WAL checkpoints in a thread of their own instead of inside the commit that passes
         * 1000 pages (the daemon's loop must not wait for them). */
        bool checkpoint_in_background;
        /* The WAL file grown once (zeros) to two checkpoints' worth of frames, so that commits
         * overwrite its blocks instead of appending: a cheaper fdatasync (ledger.c). */
        bool preallocate_wal;
};

/* Opens (creating if needed) and migrates the ledger. A damaged file is -EUCLEAN with a message
 * naming the file and what to do, never a silent reset. *ret_error is set on failure (free it). */
int ledger_open(const char *path, const struct ledger_options *opts, struct ledger **ret,
                char **ret_error);
struct ledger *ledger_close(struct ledger *l);
/* Right before ledger_close() after a clean stop, the last write: the mark that spares the next
 * open its integrity check. A failure to write it (-errno) only costs that check. */
int ledger_mark_closed_clean(struct ledger *l);

/* The message of the last failed call; valid until the next call. */
const char *ledger_errmsg(struct ledger *l);
int ledger_schema_version(struct ledger *l);

/* Transactions: every write below happens between begin and commit. A failed commit leaves
 * nothing recorded (the caller rolls back). -ENOSPC disk full, -EBUSY locked, -EIO otherwise. */
int ledger_begin(struct ledger *l);
int ledger_commit(struct ledger *l);
void ledger_rollback(struct ledger *l);
bool ledger_in_transaction(struct ledger *l);

/* One part of a transaction that can be undone alone (not nested): savepoint, then release to
 * keep its writes or rollback_to to drop them and carry on with the rest of the transaction. */
int ledger_savepoint(struct ledger *l);
int ledger_release(struct ledger *l);
int ledger_rollback_to(struct ledger *l);

/* Records a new job in state pending, due now. Returns 1 if new, 0 if the creation id was
 * already known (a duplicate), or -errno. */
int ledger_insert(struct ledger *l, const char *creation_id, const char *source_task_id,
                  uint64_t now_usec);
/* The largest source payload kept (the official API's limit for what it passes through). */
#define LEDGER_PAYLOAD_MAX (1024 * 1024)

/* The same, recording the settings.duration its submission sends (0: none recorded, then
 * upscale.duration's number is sent) and the source notification's `payload` string (NULL: none;
 * an empty string is kept as one) for ledger_get_payload. -E2BIG past LEDGER_PAYLOAD_MAX (nothing
 * written). A duplicate keeps what it was first recorded with. */
int ledger_insert_job(struct ledger *l, const char *creation_id, const char *source_task_id,
                      unsigned duration, const char *payload, uint64_t now_usec);

/* The source payload recorded with the job, read on demand (it is not part of struct job: up to
 * LEDGER_PAYLOAD_MAX bytes): 1 and *ret_payload (a NUL-terminated copy; free it), 0 when the job
 * has none or is unknown (*ret_payload untouched), or -errno. */
int ledger_get_payload(struct ledger *l, const char *creation_id, char **ret_payload);

/* Look-ups: 1 found (and *ret filled), 0 not found, or -errno. */
int ledger_get(struct ledger *l, const char *creation_id, struct job *ret);
int ledger_get_by_upscale(struct ledger *l, const char *upscale_task_id, struct job *ret);

/* Writes every mutable field of j (state, attempt, next_at, upscale id, status, error, url). */
int ledger_save(struct ledger *l, struct job *j, uint64_t now_usec);
/* The same for a job the caller read in this transaction, in state `from`: one statement instead
 * of two. A job no longer in that state is saved as ledger_save would. */
int ledger_save_from(struct ledger *l, struct job *j, enum job_state from, uint64_t now_usec);
/* The same, but a job no longer in state `from` (or gone) is left as it is, for a caller whose
 * copy of the job may be older than the ledger's: 1 saved, 0 left alone, -EEXIST if j's upscale
 * task id is already another job's (nothing written), or -errno. */
int ledger_save_if(struct ledger *l, struct job *j, enum job_state from, uint64_t now_usec);

enum ledger_due_kind {
        LEDGER_DUE_SUBMIT, /* pending or waiting, next_at <= now */
        LEDGER_DUE_POLL,   /* submitted, next_at <= now */
};
/* Fills up to max jobs that are due, oldest first. Returns the count or -errno. */
int ledger_due(struct ledger *l, enum ledger_due_kind kind, uint64_t now_usec, struct job *out,
               size_t max);
/* Earliest next_at over jobs that will need work. 1 and *ret, 0 when none, or -errno. */
int ledger_next_due(struct ledger *l, enum ledger_due_kind kind, uint64_t *ret);

typedef int (*ledger_job_cb)(const struct job *j, void *userdata);
/* Calls cb for every job in state (or every job when state < 0), in creation order; stops early
 * if cb returns non-zero and returns that value. */
int ledger_foreach(struct ledger *l, int state, ledger_job_cb cb, void *userdata);

/* Jobs per state, kept by triggers so it is cheap at any ledger size. */
int ledger_count_states(struct ledger *l, uint64_t counts[_JOB_STATE_MAX]);

/* Replay memory: 1 when key is new (and now remembered until until_usec), 0 when it was seen and
 * is still remembered, or -errno. Expired keys are purged by ledger_purge_replay. Must run inside
 * a transaction. */
int ledger_replay_remember(struct ledger *l, const char *key, uint64_t until_usec,
                           uint64_t now_usec);
int ledger_purge_replay(struct ledger *l, uint64_t now_usec);

/* A cheap write in its own transaction, to learn whether the ledger can commit again. */
int ledger_probe_writable(struct ledger *l, uint64_t now_usec);

/* The spend guard's record (budget.c decides from it): one row per submission that may have
 * left, at the time it was marked `submitting`, with its cost when known (-1 unknown). */
int ledger_spend_record(struct ledger *l, const char *creation_id, uint64_t at_usec,
                        int64_t credits);
/* The upstream reported an upscale's cost: kept on the job and on its latest submission. */
int ledger_set_credits(struct ledger *l, const char *creation_id, int64_t credits);

struct ledger_spend {
        uint64_t hour;        /* submissions after hour_since */
        uint64_t day;         /* submissions after day_since */
        uint64_t day_credits; /* their credits, an unknown cost counted as assumed_credits */
};
int ledger_spend_usage(struct ledger *l, uint64_t day_since_usec, uint64_t hour_since_usec,
                       uint64_t assumed_credits, struct ledger_spend *ret);
/* Calls cb for each submission after since, oldest first (credits -1 when unknown); stops when
 * cb returns non-zero and returns that. */
typedef int (*ledger_spend_cb)(uint64_t at_usec, int64_t credits, void *userdata);
int ledger_spend_foreach(struct ledger *l, uint64_t since_usec, ledger_spend_cb cb, void *userdata);

/* Forgets submissions older than before (no window reaches them any more). */
int ledger_spend_purge(struct ledger *l, uint64_t before_usec);

/* Small shared settings (the operator's pause, the budget's state): 1 and the value copied into
 * buf (may be NULL), 0 when unset, or -errno. Setting NULL removes the key; returns 1 when
 * something changed, else 0. */
int ledger_meta_get(struct ledger *l, const char *key, char *buf, size_t size);
int ledger_meta_set(struct ledger *l, const char *key, const char *value);
/* --- the outbox of outcome events ([events]) --------------------------------------------- */

/* Which job states write an event when a save moves a job into them: a mask of (1u << state),
 * 0 for none. The event is written by that save, in its transaction. Remembered in the ledger
 * (outside a transaction: at once), so every later opening of it, an operator's command
 * included, writes the same events; until set once, none. */
int ledger_set_event_states(struct ledger *l, unsigned state_mask);
/* Called inside the transaction each time an event is written (to wake the sender). */
void ledger_set_event_hook(struct ledger *l, void (*hook)(void *userdata), void *userdata);

enum ledger_event_state {
        LEDGER_EVENT_PENDING, /* to be sent (again) at next_at */
        LEDGER_EVENT_DELIVERED,
        LEDGER_EVENT_DEAD, /* refused for good, or older than events.max_age */
        _LEDGER_EVENT_STATE_MAX,
};

#define LEDGER_EVENT_ID_SIZE 64

struct ledger_event {
        char id[LEDGER_EVENT_ID_SIZE]; /* "evt_...": the webhook-id of every delivery */
        char type[32];
        char creation_id[JOB_ID_SIZE];
        enum ledger_event_state state;
        unsigned attempts;
        uint64_t next_at;
        uint64_t since; /* start of its current run of attempts (creation, or an operator retry) */
        uint64_t created_at;
        uint64_t updated_at;
        int http_status; /* of the last attempt, 0 if none */
        char error[JOB_ERROR_SIZE];
        char *body; /* filled by ledger_events_due only; ledger_event_clear frees it */
};

const char *ledger_event_state_to_string(enum ledger_event_state s);
int ledger_event_state_from_string(const char *s); /* -EINVAL if unknown */
void ledger_event_clear(struct ledger_event *e);

/* Up to max pending events due at now, oldest first, with their bodies. Count or -errno. */
int ledger_events_due(struct ledger *l, uint64_t now_usec, struct ledger_event *out, size_t max);
/* Earliest next_at of a pending event: 1 and *ret, 0 when none, or -errno. */
int ledger_events_next_due(struct ledger *l, uint64_t *ret);
/* Records an attempt's outcome for a pending event (state, attempts, next_at, http_status,
 * error from e). 1 saved, 0 when it is no longer pending (an operator acted), or -errno. */
int ledger_event_update(struct ledger *l, const struct ledger_event *e, uint64_t now_usec);
/* Deletes at most limit events delivered before before_usec. Count deleted or -errno. */
int ledger_events_purge(struct ledger *l, uint64_t before_usec, unsigned limit);
/* Pending events (the backlog). */
int ledger_events_backlog(struct ledger *l, uint64_t *ret);

typedef int (*ledger_event_cb)(const struct ledger_event *e, void *userdata);
/* Every event in state (all when state < 0), oldest first, without bodies; stops early when cb
 * returns non-zero and returns that. */
int ledger_events_foreach(struct ledger *l, int state, ledger_event_cb cb, void *userdata);
/* Makes a delivered or dead event pending again, due now, with a new run of attempts: 1 done,
 * 0 no such event or already pending, or -errno. */
int ledger_event_retry(struct ledger *l, const char *id, uint64_t now_usec);
/* The same for every dead event; the count or -errno. */
int ledger_events_retry_dead(struct ledger *l, uint64_t now_usec);
