/* dispatcher.c: the job scheduler: due jobs out to the upstream with bounded concurrency, answers
 * classified, retries scheduled, account-wide pauses probed, upscales followed to their end.
 * Every transition is committed to the ledger (in the loop's shared transaction, txn.c) before it
 * is acted on or logged: answers recorded and new jobs marked `submitting` in one commit. On
 * PostgreSQL (dispatcher_new_pg) the same decisions are statements of the turn's batch: claims
 * under this instance's name and a claim counter (limited by the spend guard's room, counted in
 * the shared submissions table under the budget's row lock), answers saved only under their
 * claim, leases renewed and lapsed claims taken over on the housekeeping connection. */
#include "dispatcher.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "backoff.h"
#include "budget.h"
#include "control.h"
#include "httpc.h"
#include "journal.h"
#include "owed.h"
#include "pgschema.h"
#include "txn.h"
#include "upstream.h"
#include "util.h"

#define BATCH_MAX         64
#define LEDGER_RETRY_USEC (1 * USEC_PER_SEC)
/* While the operator's pause or the budget holds jobs back, the ledger is asked again at most
 * this often (a flood of notifications does not recount each turn); the manager's status timer
 * kicks every 2 s, so a `jobs resume` is seen within about that. */
#define HOLD_RECHECK_USEC (1 * USEC_PER_SEC)
/* log.fold_accepted: how long an `accepted` entry waits for its `submitted` one to carry it, and
 * how many may wait (past that the oldest is written at once: memory stays bounded whatever the
 * rate). The timer that writes them may fire this much late, so that one wake-up writes many. */
#define FOLD_USEC          (1 * USEC_PER_SEC)
#define OWED_MAX           65536
#define OWED_ACCURACY_USEC (50 * USEC_PER_MSEC)

struct call {
        struct dispatcher *d;
        bool poll;
        bool probe;
        bool fresh; /* the job's first submission since it was recorded */
        struct job job;
        /* Filled when the request ends. */
        long status;
        struct upstream_result result;
        struct upstream_poll poll_result;
        uint64_t retry_after_usec;
        bool has_retry_after;
        /* Filled when the transition is decided, logged after the commit. */
        struct job_entry entry;
        /* PostgreSQL: the claim the job was taken under (the fence), what the answer makes of
         * the job, the statements' parameters (kept until the turn's end) and how it went. */
        int64_t claim_seq;
        const char *payload; /* ent-v2: in the claim's answer, valid until the call starts */
        struct job saved;
        char p_seq[24], p_attempt[24], p_next[24], p_status[24];
        const char *params[12];
        /* PGSCHEMA_SAVE_ACCEPTED: what a task id already another job's makes of it instead. */
        enum job_state dup_state;
        uint64_t dup_delay;
        char p_dup_delay[24];
        const char *settle_params[8];
        size_t n_stmts; /* in the turn's batch: the fenced save, the settle, the check */
        bool settles;
        /* Its save was in a batch of unknown outcome: if that committed, the claim is ended, so
         * the next save finds nothing; a read of the job tells that from a takeover. */
        bool maybe_saved;
        const char *get_params[1];
        /* The upscale's cost the answer reported (the spend guard's), and its statement's
         * parameters. */
        char p_credits[24];
        const char *credits_params[2];
        enum { ANSWER_SAVED, ANSWER_SETTLED, ANSWER_STALE } fate;
        /* The counters the decision adds one to, once its save is known to stand (on
         * PostgreSQL a fenced-out answer decided nothing). */
        uint64_t *counts[2];
        struct call *fl_prev, *fl_next; /* in flight: the claims the lease timer renews */
        struct call *next;
};

/* PostgreSQL: claim turns whose commit had an unknown outcome, put back before any new claim. */
#define UNSENT_MAX           32
#define LEASE_TIMER_MAX_USEC (1 * USEC_PER_SEC)

struct dispatcher {
        sd_event *event;
        struct ledger *ledger;
        const struct config *cfg;
        struct metrics *m;
        struct httpc *httpc;
        struct txn *txn;
        struct txn_writer writer;
        sd_event_source *timer;
        struct call *done_head, *done_tail; /* answers, recorded by the next turn */
        struct call *turn_new;              /* calls marked in the turn, started after it */
        char *auth; /* the Authorization value for cfg, made at its first call; holds the key */
        size_t submits, polls;
        /* Account-wide pause: every job would fail alike, so none is sent until a probe passes. */
        bool paused;
        unsigned pause_level;
        uint64_t pause_until;
        bool probe_in_flight;
        char pause_reason[JOB_ERROR_SIZE];
        bool ledger_failing;
        bool draining;
        dispatcher_idle_fn idle;
        void *idle_userdata;
        sd_event_source *drain_timer;
        char last_error[JOB_ERROR_SIZE];
        /* What the ledger's switches said at the last dispatch decision (control.h); the ledger
         * holds the truth, these only spare rereading it while jobs are held back. */
        bool operator_paused;
        uint64_t operator_since; /* PostgreSQL: as last read */
        bool budget_known;       /* budget_blocked was read from the ledger once */
        bool budget_blocked;     /* the budget holds due jobs back until budget.free_at */
        struct control_budget budget;
        struct ledger_spend budget_used; /* at the decision that found it full */
        struct ledger_spend pg_spend;    /* PostgreSQL: the windows' use at the last claim */
        bool pg_spend_known;
        uint64_t hold_checked; /* when the switches were last read while holding */
        /* The budget's journal entry to write after the commit that recorded its change. */
        enum { BUDGET_LOG_NONE, BUDGET_LOG_REACHED, BUDGET_LOG_RESUMED } budget_log;
        size_t budget_waiting;   /* due jobs found waiting at that decision (at least) */
        struct owed *owed;       /* `accepted` entries owed (log.fold_accepted) */
        uint64_t last_submitted; /* CLOCK_MONOTONIC of the last `submitted` entry, 0: none */
        sd_event_source *owed_timer;
        bool owed_armed;
        /* PostgreSQL (dispatcher_new_pg): claims under this instance's name, a claim turn
         * counter that starts at the start time (so a restart under the same store.instance
         * never reuses one), the leases renewed and lapsed ones taken over on `house`. */
        bool pg;
        struct pgconn *house;
        char instance[128];
        int64_t turn_seq;
        int64_t staged_turn; /* the claim turn this turn's batch holds, 0 if none */
        int64_t unsent[UNSENT_MAX];
        char unsent_str[UNSENT_MAX][24];
        const char *unsent_params[UNSENT_MAX][2];
        size_t n_unsent, n_release_staged;
        bool staged_submit, staged_poll;
        char p_lease[24], p_slots[24], p_turn[24], p_pslots[24], p_pushed[24];
        const char *claim_params[9], *poll_params[5], *renew_params[4], *takeover_params[2];
        /* The spend guard's limits as the claim's parameters, and whether the turn reads the
         * windows' use after its claim (PGSCHEMA_SPEND_USAGE, _LIST). */
        char p_budget[4][24];
        const char *spend_params[1];
        bool staged_budget;
        uint64_t next_submit_at, next_poll_at; /* realtime usec, from the database's answer */
        sd_event_source *lease_timer;
        bool lease_in_flight;
        /* The account-wide pause shared through the database (control table): written when
         * this instance starts, extends or ends one, read on the lease timer; one probe at a
         * time across instances, under the `probe` token. */
        bool pause_shared;
        enum { PAUSE_SYNC_NONE, PAUSE_SYNC_SET, PAUSE_SYNC_CLEAR } pause_sync;
        bool have_token, release_token, staged_take;
        bool staged_paused;         /* the claim was staged paused: a probe */
        bool control_staged;        /* this turn writes the pause */
        bool token_staged;          /* this turn gives the probe token back */
        uint64_t control_committed; /* when a write of the pause last committed (monotonic) */
        uint64_t lease_sent;        /* when the lease timer's batch left (monotonic) */
        size_t n_control_staged;
        char p_pause_for[24];
        const char *pause_params[3], *token_params[3], *take_params[3];
        struct call *staged;      /* the answers this turn's batch saves */
        struct call *flight_head; /* every call in flight */
        char *renew_ids, *renew_turns;
};

static uint32_t random_u32(void)
{
        uint32_t v = 0;
        if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v))
                v = (uint32_t)now_monotonic_usec();
        return v;
}

static void arm_timer(struct dispatcher *d);
static void write_answer_entry(struct dispatcher *d, struct call *c);
static void check_idle(struct dispatcher *d);

void dispatcher_kick(struct dispatcher *d)
{
        if (d && !d->draining)
                txn_want(d->txn, &d->writer);
}

#define fill_entry(e, j, msgid, state) fill_entry_at(e, j, msgid, state, __LINE__, __func__)
#define fill_event(c, j, msgid, state) fill_entry(&(c)->entry, j, msgid, state)
static void fill_entry_at(struct job_entry *e, const struct job *j, const char *msgid,
                          const char *state, int line, const char *func)
{
        e->code_line = line;
        e->code_func = func;
        e->after = *j;
        e->log = true;
        e->ev = (struct job_event){
            .message_id = msgid,
            .creation_id = e->after.creation_id,
            .source_task_id = e->after.source_task_id,
            .upscale_task_id = e->after.upscale_task_id,
            .job_state = state,
            .attempt = e->after.attempt,
            .http_status = e->after.http_status,
            .upstream_error = e->after.upstream_error,
            .result_url = e->after.result_url,
        };
}

/* An `accepted` entry; CODE_FUNC says what wrote it: dispatcher_accepted at once, the timer
 * (on_owed_timer), another entry about the job (dispatcher_write_entry,
 * dispatcher_settle_accepted), a full store (dispatcher_accepted) or a stop
 * (dispatcher_write_owed). */
#define write_accepted(c, s) write_accepted_at(c, s, __LINE__, __func__)
static void write_accepted_at(const char *creation_id, const char *source_task_id, int line,
                              const char *func)
{
        struct job_event ev = {.message_id = MSGID_ACCEPTED,
                               .creation_id = creation_id,
                               .source_task_id = source_task_id,
                               .job_state = "accepted"};
        journal_job_internal(LOG_INFO, __FILE__, line, func, &ev,
                             "Creation %s of task %s accepted for upscaling", creation_id,
                             source_task_id);
}

#define write_owed_entry(o) write_owed_entry_at(o, __LINE__, __func__)
static void write_owed_entry_at(struct owed_entry *o, int line, const char *func)
{
        write_accepted_at(o->creation_id, o->source_task_id, line, func);
        owed_entry_clear(o);
}

static void arm_owed_timer(struct dispatcher *d)
{
        uint64_t due;
        if (!d->owed_timer)
                return;
        d->owed_armed = owed_next_due(d->owed, &due);
        if (d->owed_armed) {
                sd_event_source_set_time(d->owed_timer, due);
                sd_event_source_set_enabled(d->owed_timer, SD_EVENT_ONESHOT);
        } else
                sd_event_source_set_enabled(d->owed_timer, SD_EVENT_OFF);
}

/* The second is up for the oldest owed entries: written in acceptance order. */
static int on_owed_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct dispatcher *d = userdata;
        struct owed_entry o;
        uint64_t now = now_monotonic_usec();
        while (owed_pop_due(d->owed, now, &o) > 0)
                write_owed_entry(&o);
        arm_owed_timer(d);
        return 0;
}

/* Whether creation_id is among the jobs this turn marked `submitting` (at most one turn's slots:
 * upstream.concurrency). */
static bool marked_this_turn(const struct dispatcher *d, const char *creation_id)
{
        for (const struct call *c = d->turn_new; c; c = c->next)
                if (!c->poll && strcmp(c->job.creation_id, creation_id) == 0)
                        return true;
        return false;
}

/* Whether submissions are moving: none held back (pause, operator, budget) and one answered within
 * the last second, so a job waiting for a slot is likely to be answered within its own. */
static bool submissions_moving(const struct dispatcher *d)
{
        return !d->paused && !d->operator_paused && !d->budget_blocked && d->last_submitted > 0 &&
               now_monotonic_usec() - d->last_submitted < FOLD_USEC;
}

void dispatcher_accepted(struct dispatcher *d, const char *creation_id, const char *source_task_id,
                         uint64_t accepted_at)
{
        /* Owed only when it would be written at all, and only when the job's answer is likely
         * within the second: it was marked `submitting` in the very commit that recorded it (this
         * turn's calls, started right after the webhook's answers), or it waits for a slot while
         * submissions are answered (a burst). Any other waits for the budget, the end of a pause
         * or an upstream that answers nothing, and owing it would only hold it in memory (pure
         * ingestion, where every slot stays busy unanswered, would hold a second of
         * acceptances). Without a dispatcher, at once. */
        if (!d || !d->cfg->fold_accepted || d->cfg->log_level < LOG_INFO ||
            !(marked_this_turn(d, creation_id) || submissions_moving(d))) {
                write_accepted(creation_id, source_task_id);
                return;
        }
        /* Its second counts from the acceptance, not from this write after the commit. */
        uint64_t real = now_realtime_usec();
        uint64_t since = real > accepted_at ? real - accepted_at : 0;
        uint64_t due = now_monotonic_usec() + FOLD_USEC - (since < FOLD_USEC ? since : FOLD_USEC);
        struct owed_entry evicted;
        int r = owed_add(d->owed, creation_id, source_task_id, accepted_at, due, &evicted);
        if (r < 0) {
                write_accepted(creation_id, source_task_id);
                return;
        }
        if (r > 0)
                write_owed_entry(&evicted);
        if (!d->owed_armed)
                arm_owed_timer(d);
}

void dispatcher_settle_accepted(struct dispatcher *d, const char *creation_id)
{
        struct owed_entry o;
        if (d && owed_count(d->owed) > 0 && creation_id && owed_take(d->owed, creation_id, &o) > 0)
                write_owed_entry(&o);
}

void dispatcher_write_owed(struct dispatcher *d)
{
        struct owed_entry o;
        if (!d || !d->owed)
                return;
        while (owed_pop_due(d->owed, UINT64_MAX, &o) > 0)
                write_owed_entry(&o);
        arm_owed_timer(d);
}

void dispatcher_write_entry(struct dispatcher *d, const struct job_entry *e)
{
        struct owed_entry o;
        if (!e->log)
                return;
        if (e->ev.job_state && strcmp(e->ev.job_state, "submitted") == 0)
                d->last_submitted = now_monotonic_usec();
        if (owed_count(d->owed) > 0 && e->ev.creation_id &&
            owed_take(d->owed, e->ev.creation_id, &o) > 0) {
                if (e->ev.job_state && strcmp(e->ev.job_state, "submitted") == 0 &&
                    now_monotonic_usec() < o.due) {
                        /* Answered within the second: one entry says both. */
                        struct job_event ev = e->ev;
                        ev.accepted_at = o.accepted_at;
                        owed_entry_clear(&o);
                        journal_job_internal(e->priority, __FILE__, e->code_line, e->code_func, &ev,
                                             "%s", e->message);
                        return;
                }
                write_owed_entry(&o);
        }
        journal_job_internal(e->priority, __FILE__, e->code_line, e->code_func, &e->ev, "%s",
                             e->message);
}

static void call_done(const struct httpc_response *resp, void *userdata)
{
        struct call *c = userdata;
        struct dispatcher *d = c->d;
        if (c->fl_prev)
                c->fl_prev->fl_next = c->fl_next;
        else if (d->flight_head == c)
                d->flight_head = c->fl_next;
        if (c->fl_next)
                c->fl_next->fl_prev = c->fl_prev;
        c->fl_prev = c->fl_next = NULL;
        struct upstream_answer a = {
            .transport = resp->transport,
            .transport_error = resp->transport_error,
            .status = resp->status,
            .body = resp->body,
            .body_len = resp->body_len,
            .retry_after = resp->retry_after,
        };
        c->status = resp->transport == UPSTREAM_TRANSPORT_OK ? resp->status : 0;
        d->m->upstream_by_class[c->status >= 100 && c->status < 600 ? c->status / 100 : 0]++;
        metrics_observe(&d->m->upstream_seconds, (double)resp->elapsed_usec / 1e6);
        if (resp->retry_after && backoff_parse_retry_after(resp->retry_after, now_realtime_usec(),
                                                           &c->retry_after_usec) >= 0)
                c->has_retry_after = true;
        if (c->poll)
                upstream_parse_poll(d->cfg->flavor, &a, &c->poll_result);
        else
                upstream_classify_submit(d->cfg->flavor, &a, &c->result);
        if (c->poll)
                d->polls--;
        else
                d->submits--;
        c->next = NULL;
        if (d->done_tail)
                d->done_tail->next = c;
        else
                d->done_head = c;
        d->done_tail = c;
        txn_want(d->txn, &d->writer);
}

static void drop_auth(struct dispatcher *d)
{
        erase_free(TAKE_PTR(d->auth));
}

static int start_call(struct dispatcher *d, struct call *c)
{
        _cleanup_free_ char *url = NULL, *body = NULL, *payload = NULL;
        int r;
        if (c->poll)
                r = upstream_build_poll_url(d->cfg, c->job.upscale_task_id, &url);
        else {
                /* Only ent-v2 passes the source's payload on; read when it is needed, never
                 * carried with the job (it may be 1 MiB). */
                r = 0;
                if (d->cfg->flavor == UPSTREAM_FLAVOR_ENT_V2 && d->ledger)
                        r = ledger_get_payload(d->ledger, c->job.creation_id, &payload);
                if (r >= 0)
                        r = upstream_build_submit(d->cfg, c->job.creation_id, c->job.duration,
                                                  payload ? payload : c->payload, &url, &body);
                c->payload = NULL; /* PostgreSQL: it pointed into the claim's answer */
        }
        if (r < 0)
                return r;
        /* Once per configuration, not per call: httpc keeps its header lines while it stays the
         * same. */
        if (!d->auth && asprintf(&d->auth, "%s %s", d->cfg->auth_word,
                                 d->cfg->api_key.value ? d->cfg->api_key.value : "") < 0) {
                d->auth = NULL;
                return -ENOMEM;
        }
        struct httpc_request req = {
            .method = c->poll ? "GET" : "POST",
            .url = url,
            .authorization = d->auth,
            .body = body,
            .timeout_usec = d->cfg->timeout,
            .connect_timeout_usec = d->cfg->connect_timeout,
            .once = !c->poll,
        };
        r = httpc_start(d->httpc, &req, call_done, c);
        if (r < 0)
                return r;
        c->fl_prev = NULL;
        c->fl_next = d->flight_head;
        if (d->flight_head)
                d->flight_head->fl_prev = c;
        d->flight_head = c;
        if (c->poll) {
                d->polls++;
                d->m->polls++;
        } else {
                d->submits++;
                d->m->submissions++;
                if (c->fresh) {
                        uint64_t t = now_realtime_usec();
                        metrics_observe(
                            &d->m->submit_wait_seconds,
                            t > c->job.created_at ? (double)(t - c->job.created_at) / 1e6 : 0);
                }
        }
        return 0;
}

static void note_ledger_failure(struct dispatcher *d, const char *what, int r)
{
        /* PostgreSQL: the manager says when the database is away. */
        if (!d->ledger_failing && !(d->pg && r == -ENOTCONN))
                log_full(LOG_ERR, MSGID_LEDGER_ERROR,
                         "Ledger cannot commit while %s: %s; will retry", what,
                         d->pg ? strerror(-r) : ledger_errmsg(d->ledger));
        d->ledger_failing = true;
        /* Try again shortly: the disk may have space again, the lock may be gone. */
        uint64_t now;
        sd_event_now(d->event, CLOCK_REALTIME, &now);
        sd_event_source_set_time(d->timer, now + LEDGER_RETRY_USEC);
        sd_event_source_set_enabled(d->timer, SD_EVENT_ONESHOT);
}

/* The spend windows' counts, from the ledger. Each costs about 0.1 us of CPU per submission in
 * the window it reads (README: Spend guard), so the day's is read only when a limit needs it. */
static int read_spend(struct dispatcher *d, const struct budget_limits *lim, uint64_t now,
                      struct ledger_spend *ret)
{
        bool day = lim->per_day > 0 || lim->credits_per_day > 0;
        return ledger_spend_usage(d->ledger, now - (day ? lim->day_usec : lim->hour_usec),
                                  now - lim->hour_usec, lim->assumed_credits, ret);
}

void dispatcher_budget_limits(const struct config *cfg, struct budget_limits *ret)
{
        *ret = (struct budget_limits){
            .per_hour = cfg->budget_per_hour,
            .per_day = cfg->budget_per_day,
            .credits_per_day = cfg->budget_credits_per_day,
            .assumed_credits = cfg->budget_assumed_credits,
            .hour_usec = BUDGET_HOUR_USEC,
            .day_usec = BUDGET_DAY_USEC,
        };
}

static int scan_feed(uint64_t at, int64_t credits, void *userdata)
{
        return budget_scan_feed(userdata, at, credits) ? 1 : 0;
}

/* The budget's state changed (or was first learnt): recorded in the ledger in this turn's
 * transaction, and journaled after its commit only when the ledger's record changed, so a restart
 * or a second instance does not say it again. */
static int budget_change(struct dispatcher *d, bool blocked)
{
        if (d->budget_known && blocked == d->budget_blocked)
                return 0;
        /* PostgreSQL: the change as this process saw it (the first reading at start says
         * nothing unless it is held). */
        int r = d->pg ? (d->budget_known || blocked)
                      : control_set_budget_blocked(d->ledger, blocked ? &d->budget : NULL);
        if (r < 0)
                return r;
        d->budget_known = true;
        d->budget_blocked = blocked;
        d->m->budget_blocked = blocked;
        if (r > 0)
                d->budget_log = blocked ? BUDGET_LOG_REACHED : BUDGET_LOG_RESUMED;
        return 0;
}

/* How many of the n due jobs may leave now: none while an operator has paused submissions, and no
 * more than the budget's windows allow. Read in the turn's transaction, from the ledger, so every
 * instance sharing it decides from the same counts. */
static int gate(struct dispatcher *d, uint64_t now, size_t n, size_t *ret_allowed)
{
        int r = control_operator_paused(d->ledger, NULL);
        if (r < 0)
                return r;
        d->operator_paused = r > 0;
        d->m->operator_paused = d->operator_paused;
        d->hold_checked = now;
        if (d->operator_paused) {
                *ret_allowed = 0;
                return 0;
        }
        struct budget_limits lim;
        dispatcher_budget_limits(d->cfg, &lim);
        if (!budget_enabled(&lim)) {
                *ret_allowed = n;
                return budget_change(d, false);
        }
        struct ledger_spend used;
        r = read_spend(d, &lim, now, &used);
        if (r < 0)
                return r;
        enum budget_window full = BUDGET_WINDOW_HOUR;
        uint64_t room = budget_room(&lim, &used, &full);
        if (room > 0) {
                *ret_allowed = room < n ? (size_t)room : n;
                return budget_change(d, false);
        }
        struct budget_scan scan;
        budget_scan_init(&scan, &lim, &used, now);
        bool day = lim.per_day > 0 || lim.credits_per_day > 0;
        r = ledger_spend_foreach(d->ledger, now - (day ? lim.day_usec : lim.hour_usec), scan_feed,
                                 &scan);
        if (r < 0)
                return r;
        d->budget = (struct control_budget){.full = full, .free_at = budget_scan_result(&scan)};
        d->budget_used = used;
        d->budget_waiting = n;
        *ret_allowed = 0;
        return budget_change(d, true);
}

/* Jobs are held back and the switches were read recently: do not ask the ledger again yet. */
static bool holding(const struct dispatcher *d, uint64_t now)
{
        if (!d->operator_paused && !d->budget_blocked)
                return false;
        uint64_t until = d->hold_checked + HOLD_RECHECK_USEC;
        if (!d->operator_paused && d->budget.free_at < until)
                until = d->budget.free_at;
        return now < until;
}

/* Marks due jobs `submitting` (or pushes polls forward) inside the turn's transaction; their
 * calls start once it is durable. */
static int take_due(struct dispatcher *d, enum ledger_due_kind kind, size_t slots, uint64_t now)
{
        struct job jobs[BATCH_MAX];
        if (slots > BATCH_MAX)
                slots = BATCH_MAX;
        if (slots == 0)
                return 0;
        if (kind == LEDGER_DUE_SUBMIT && holding(d, now))
                return 0;
        int n = ledger_due(d->ledger, kind, now, jobs, slots);
        /* Nothing due: the switch is read again when something is, so the timer is armed for
         * the next due job as if nothing held it. */
        if (n == 0 && kind == LEDGER_DUE_SUBMIT)
                d->operator_paused = false;
        if (n > 0 && kind == LEDGER_DUE_SUBMIT) {
                size_t allowed;
                int r = gate(d, now, (size_t)n, &allowed);
                if (r < 0)
                        return r;
                n = (int)allowed;
        }
        for (int i = 0; i < n; i++) {
                struct call *c = calloc(1, sizeof(*c));
                if (!c)
                        return -ENOMEM;
                c->d = d;
                c->poll = kind == LEDGER_DUE_POLL;
                c->probe = d->paused && !c->poll;
                enum job_state from = jobs[i].state;
                if (kind == LEDGER_DUE_SUBMIT) {
                        c->fresh = jobs[i].state == JOB_PENDING;
                        jobs[i].state = JOB_SUBMITTING;
                        jobs[i].attempt++;
                        jobs[i].next_at = now;
                } else
                        jobs[i].next_at = now + d->cfg->poll_interval + d->cfg->timeout;
                c->job = jobs[i];
                c->next = d->turn_new;
                d->turn_new = c;
                if (c->probe)
                        d->probe_in_flight = true;
                int r = ledger_save_from(d->ledger, &jobs[i], from, now);
                /* Every POST that may leave is spent, whatever its answer: the budget counts
                 * it (a job's last known cost stands for its cost until an answer says). */
                if (r >= 0 && kind == LEDGER_DUE_SUBMIT)
                        r = ledger_spend_record(d->ledger, jobs[i].creation_id, now,
                                                jobs[i].credits);
                if (r < 0)
                        return r;
        }
        return n;
}

static int apply_submit(struct dispatcher *d, struct call *c, uint64_t now);
static int apply_poll(struct dispatcher *d, struct call *c, uint64_t now);

static int writer_apply(void *userdata, uint64_t now)
{
        struct dispatcher *d = userdata;
        /* The list stays put until writer_done: nothing can answer in between (txn.h). */
        for (struct call *c = d->done_head; c; c = c->next) {
                c->entry.log = false;
                int r = c->poll ? apply_poll(d, c, now) : apply_submit(d, c, now);
                if (r < 0)
                        return r;
        }
        if (d->draining)
                return 0;
        size_t slots = d->cfg->concurrency > d->submits ? d->cfg->concurrency - d->submits : 0;
        if (d->paused) {
                if (now < d->pause_until || d->probe_in_flight || d->submits > 0)
                        slots = 0;
                else
                        slots = 1;
        }
        int n = take_due(d, LEDGER_DUE_SUBMIT, slots, now);
        if (n < 0)
                return n;
        size_t pslots = d->cfg->concurrency > d->polls ? d->cfg->concurrency - d->polls : 0;
        int p = take_due(d, LEDGER_DUE_POLL, pslots, now);
        if (p < 0)
                return p;
        /* More due than one batch holds: another turn. */
        if ((n == BATCH_MAX && slots > BATCH_MAX) || (p == BATCH_MAX && pslots > BATCH_MAX))
                dispatcher_kick(d);
        return 0;
}

static void log_budget(struct dispatcher *d)
{
        char at[32];
        struct budget_limits lim;
        if (d->budget_log == BUDGET_LOG_NONE)
                return;
        dispatcher_budget_limits(d->cfg, &lim);
        format_clock(d->budget.free_at, at, sizeof(at));
        if (d->budget_log == BUDGET_LOG_REACHED) {
                static const char *const what[] = {
                    [BUDGET_WINDOW_HOUR] = "submissions in the last hour",
                    [BUDGET_WINDOW_DAY] = "submissions in the last 24 hours",
                    [BUDGET_WINDOW_CREDITS_DAY] = "credits in the last 24 hours",
                };
                static const char *const key[] = {
                    [BUDGET_WINDOW_HOUR] = "max_submissions_per_hour",
                    [BUDGET_WINDOW_DAY] = "max_submissions_per_day",
                    [BUDGET_WINDOW_CREDITS_DAY] = "max_credits_per_day",
                };
                enum budget_window w = d->budget.full;
                uint64_t used = w == BUDGET_WINDOW_HOUR  ? d->budget_used.hour
                                : w == BUDGET_WINDOW_DAY ? d->budget_used.day
                                                         : d->budget_used.day_credits;
                log_full(LOG_WARNING, MSGID_BUDGET_REACHED,
                         "Spend budget reached: %llu %s (budget.%s = %llu); due jobs wait, "
                         "none loses an attempt; next submission at %s",
                         (unsigned long long)used, what[w], key[w],
                         (unsigned long long)(w == BUDGET_WINDOW_HOUR  ? lim.per_hour
                                              : w == BUDGET_WINDOW_DAY ? lim.per_day
                                                                       : lim.credits_per_day),
                         at);
        } else
                log_full(LOG_NOTICE, MSGID_BUDGET_RESUMED,
                         "Spend budget has room again: submissions resume");
        d->budget_log = BUDGET_LOG_NONE;
}

static void free_calls(struct call *c)
{
        while (c) {
                struct call *next = c->next;
                free(c);
                c = next;
        }
}

static void writer_done(void *userdata, int r)
{
        struct dispatcher *d = userdata;
        struct call *fresh = d->turn_new;
        d->turn_new = NULL;
        int64_t staged_turn = d->staged_turn;
        struct call *staged = d->staged;
        d->staged_turn = 0;
        d->staged = NULL;
        if (r < 0) {
                /* PostgreSQL: what the batch wrote of the pause and the token, again next turn. */
                if (d->control_staged)
                        d->pause_sync = d->paused ? PAUSE_SYNC_SET : PAUSE_SYNC_CLEAR;
                if (d->token_staged)
                        d->release_token = true;
                d->control_staged = d->token_staged = false;
                /* PostgreSQL: the answers the batch held go back first in line. */
                for (struct call *c = staged; c; c = c->next)
                        if (r != -ENOTCONN)
                                c->maybe_saved = true;
                if (staged) {
                        struct call *last = staged;
                        while (last->next)
                                last = last->next;
                        last->next = d->done_head;
                        if (!d->done_head)
                                d->done_tail = last;
                        d->done_head = staged;
                }
                /* PostgreSQL: a claim that may have committed (an unknown outcome) is put back
                 * by the next turn, before it claims anything: none of its jobs was sent. On a
                 * turn that rolled back it matches nothing. */
                if (d->pg && staged_turn && r != -ENOTCONN) {
                        if (d->n_unsent == UNSENT_MAX) {
                                /* Left to lapse: the takeover treats them as a restart would. */
                                memmove(d->unsent, d->unsent + 1,
                                        (UNSENT_MAX - 1) * sizeof(d->unsent[0]));
                                memmove(d->unsent_str, d->unsent_str + 1,
                                        (UNSENT_MAX - 1) * sizeof(d->unsent_str[0]));
                                d->n_unsent--;
                        }
                        d->unsent[d->n_unsent] = staged_turn;
                        snprintf(d->unsent_str[d->n_unsent], sizeof(d->unsent_str[0]), "%lld",
                                 (long long)staged_turn);
                        d->n_unsent++;
                }
                /* What the switches said may have been undone with the rest: read them again. */
                d->budget_known = false;
                d->budget_log = BUDGET_LOG_NONE;
                /* Rolled back: the answers stay for the next turn, the marked jobs were never
                 * marked. */
                for (struct call *c = fresh; c; c = c->next)
                        if (c->probe)
                                d->probe_in_flight = false;
                free_calls(fresh);
                note_ledger_failure(
                    d, d->done_head ? "recording upstream answers" : "marking jobs due", r);
                return;
        }
        d->ledger_failing = false;
        log_budget(d);
        struct call *done = staged;
        if (!d->pg) {
                done = d->done_head;
                d->done_head = d->done_tail = NULL;
        }
        while (done) {
                struct call *next = done->next;
                write_answer_entry(d, done);
                free(done);
                done = next;
        }
        bool started = false;
        while (fresh) {
                struct call *c = fresh;
                fresh = c->next;
                int e = start_call(d, c);
                if (e >= 0)
                        started = true;
                else {
                        /* Left in `submitting`: at worst it is treated as uncertain at the next
                         * start (on PostgreSQL: its claim is not renewed and lapses). */
                        log_error("Cannot start an upstream request for %s: %s", c->job.creation_id,
                                  strerror(-e));
                        if (c->probe)
                                d->probe_in_flight = false;
                        free(c);
                }
        }
        if (started)
                httpc_send_now(d->httpc);
        if (d->draining)
                check_idle(d);
        else
                arm_timer(d);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct dispatcher *d = userdata;
        txn_want(d->txn, &d->writer);
        return 0;
}

/* When the next job of a kind is due (realtime usec): the ledger's, or on PostgreSQL what the
 * last turn's answer said. 1 and *ret, or 0 when none is. */
static int next_due(struct dispatcher *d, enum ledger_due_kind kind, uint64_t *ret)
{
        if (!d->pg)
                return ledger_next_due(d->ledger, kind, ret);
        *ret = kind == LEDGER_DUE_SUBMIT ? d->next_submit_at : d->next_poll_at;
        return *ret != UINT64_MAX;
}

static void arm_timer(struct dispatcher *d)
{
        uint64_t next = UINT64_MAX, t;
        uint64_t now = now_realtime_usec();
        if (d->paused && !d->probe_in_flight)
                next = d->pause_until;
        else if (!d->paused && !d->operator_paused && d->submits < d->cfg->concurrency &&
                 next_due(d, LEDGER_DUE_SUBMIT, &t) > 0) {
                next = t;
                /* Held by the budget: wake when its window frees room, not before. (An
                 * operator's pause has no end to wait for: the manager's status timer kicks the
                 * dispatcher every 2 s, which reads the switch again.) */
                if (d->budget_blocked && next < d->budget.free_at)
                        next = d->budget.free_at;
        }
        if (d->polls < d->cfg->concurrency && next_due(d, LEDGER_DUE_POLL, &t) > 0 && t < next)
                next = t;
        if (next == UINT64_MAX) {
                sd_event_source_set_enabled(d->timer, SD_EVENT_OFF);
                return;
        }
        /* PostgreSQL: a job due now that the claim did not get is another's, locked for a
         * moment: look again a little later, not at once. */
        uint64_t floor = d->pg ? 20 * USEC_PER_MSEC : USEC_PER_MSEC;
        if (next < now + floor)
                next = now + floor;
        sd_event_source_set_time(d->timer, next);
        sd_event_source_set_enabled(d->timer, SD_EVENT_ONESHOT);
}

static void enter_pause(struct dispatcher *d, struct call *c, const char *why)
{
        uint64_t now = now_realtime_usec();
        uint64_t delay;
        bool first = !d->paused;
        if (first) {
                d->paused = true;
                d->pause_level = 1;
                d->m->account_pauses++;
        } else if (c->probe)
                d->pause_level++;
        else
                return; /* a request sent before the pause began: its job just goes back */
        delay =
            backoff_delay(d->pause_level, d->cfg->initial_delay, d->cfg->max_delay, random_u32());
        if (c->has_retry_after && c->retry_after_usec > delay)
                delay = c->retry_after_usec > d->cfg->max_delay ? d->cfg->max_delay
                                                                : c->retry_after_usec;
        d->pause_until = now + delay;
        d->m->paused = 1;
        snprintf(d->pause_reason, sizeof(d->pause_reason), "%s", why);
        /* PostgreSQL: an account-wide error pauses every instance sharing the ledger. */
        if (d->pg && (c->result.verdict == UPSTREAM_ACCOUNT || d->pause_shared)) {
                d->pause_shared = true;
                d->pause_sync = PAUSE_SYNC_SET;
        }
        char buf[32];
        format_duration(delay / USEC_PER_MSEC * USEC_PER_MSEC, buf, sizeof(buf));
        if (first)
                log_full(
                    LOG_ERR, MSGID_ACCOUNT_PAUSED,
                    "All submissions paused: %s (HTTP %ld). Probing with one job in %s; no job "
                    "loses an attempt meanwhile",
                    why, c->status, buf);
        else
                log_debug("Probe failed again (%s); next probe in %s", why, buf);
}

static void leave_pause(struct dispatcher *d)
{
        if (!d->paused)
                return;
        d->paused = false;
        d->pause_level = 0;
        d->m->paused = 0;
        if (d->pause_shared)
                d->pause_sync = PAUSE_SYNC_CLEAR;
        d->pause_shared = false;
        log_full(LOG_NOTICE, MSGID_ACCOUNT_RESUMED,
                 "Submissions resumed: the upstream accepts requests again (was: %s)",
                 d->pause_reason);
}

/* With callbacks on, the outcome should come to us: the first poll, the safety net, waits for
 * upstream.callback_grace; then every poll_interval. */
static uint64_t first_poll_delay(const struct config *cfg)
{
        return isempty(cfg->callback_url) ? cfg->poll_interval : cfg->callback_grace;
}

/* An accepted submission, the common answer, saved from the call's copy of the job as it was
 * marked: one statement, no read. The copy is the ledger's row unless an operator changed the job
 * meanwhile, which the save's state guard sees. 1 done, 0 to be decided by apply_submit (the id
 * is already another job's), or -errno. */
static int apply_accepted(struct dispatcher *d, struct call *c, uint64_t now)
{
        struct upstream_result *res = &c->result;
        struct job j = c->job;
        j.state = JOB_SUBMITTED;
        j.http_status = (int)c->status;
        job_set_field(j.upscale_task_id, sizeof(j.upscale_task_id), res->task_id);
        j.upstream_error[0] = 0;
        j.next_at = now + first_poll_delay(d->cfg);
        int r = ledger_save_if(d->ledger, &j, JOB_SUBMITTING, now);
        if (r == -EEXIST)
                return 0;
        if (r > 0 && res->credits >= 0)
                r = ledger_set_credits(d->ledger, j.creation_id, res->credits);
        if (r < 0)
                return r;
        if (c->probe) {
                d->probe_in_flight = false;
                leave_pause(d);
        }
        if (r == 0)
                return 1; /* an operator changed it meanwhile */
        fill_event(c, &j, MSGID_SUBMITTED, "submitted");
        c->entry.priority = LOG_INFO;
        snprintf(c->entry.message, sizeof(c->entry.message),
                 "Upscale of %s submitted as task %s (attempt %u)", j.creation_id,
                 j.upscale_task_id, j.attempt);
        return 1;
}

/* Adds counter to what the call's decision counts once its save stands (write_answer_entry). */
static void count(struct call *c, uint64_t *counter)
{
        for (size_t i = 0; i < ELEMENTSOF(c->counts); i++)
                if (!c->counts[i]) {
                        c->counts[i] = counter;
                        return;
                }
}

/* The job held `uncertain`, given up (`dead`) or due again after delay (`retrying`), why, with its
 * count and entry: an answer's decision (decide_submit), or a task id already another job's. */
static void hold_uncertain(struct call *c, struct job *j, const char *why)
{
        j->state = JOB_UNCERTAIN;
        fill_event(c, j, MSGID_UNCERTAIN, "uncertain");
        c->entry.priority = LOG_WARNING;
        snprintf(c->entry.message, sizeof(c->entry.message),
                 "Upscale of %s is uncertain (%s); held until an operator retries or abandons it",
                 j->creation_id, why);
}

static void give_up(struct dispatcher *d, struct call *c, struct job *j, const char *why)
{
        j->state = JOB_DEAD;
        count(c, &d->m->dead);
        fill_event(c, j, MSGID_DEAD, "dead");
        c->entry.priority = LOG_ERR;
        snprintf(c->entry.message, sizeof(c->entry.message),
                 "Upscale of %s given up after %u attempts: %s", j->creation_id, j->attempt, why);
}

static void retry_in(struct dispatcher *d, struct call *c, struct job *j, const char *why,
                     uint64_t delay, uint64_t now)
{
        j->state = JOB_WAITING;
        j->next_at = now + delay;
        count(c, &d->m->retries);
        fill_event(c, j, MSGID_RETRYING, "retrying");
        c->entry.priority = LOG_WARNING;
        char buf[32];
        format_duration(delay / USEC_PER_MSEC * USEC_PER_MSEC, buf, sizeof(buf));
        snprintf(c->entry.message, sizeof(c->entry.message),
                 "Upscale of %s failed (%s), attempt %u; retrying in %s", j->creation_id, why,
                 j->attempt, buf);
}

/* What a submission's answer makes of its job j (as it was marked `submitting`): its state and
 * fields, the entry written after the commit, the account-wide pause it starts or ends. */
static void decide_submit(struct dispatcher *d, struct call *c, struct job *j, uint64_t now)
{
        memset(c->counts, 0, sizeof(c->counts)); /* decided again after a turn rolled back */
        struct upstream_result *res = &c->result;
        j->http_status = (int)c->status;
        job_set_field(j->upstream_error, sizeof(j->upstream_error), res->error);
        if (res->verdict != UPSTREAM_ACCEPTED)
                snprintf(d->last_error, sizeof(d->last_error), "%s", res->error);
        if (res->verdict != UPSTREAM_ACCOUNT && res->verdict != UPSTREAM_OUTAGE && c->probe)
                leave_pause(d);

        switch (res->verdict) {
        case UPSTREAM_ACCEPTED:
                j->state = JOB_SUBMITTED;
                job_set_field(j->upscale_task_id, sizeof(j->upscale_task_id), res->task_id);
                j->upstream_error[0] = 0;
                j->next_at = now + first_poll_delay(d->cfg);
                fill_event(c, j, MSGID_SUBMITTED, "submitted");
                c->entry.priority = LOG_INFO;
                snprintf(c->entry.message, sizeof(c->entry.message),
                         "Upscale of %s submitted as task %s (attempt %u)", j->creation_id,
                         j->upscale_task_id, j->attempt);
                break;
        case UPSTREAM_UNCERTAIN:
                count(c, &d->m->uncertain);
                log_full(LOG_WARNING, MSGID_UPSTREAM_PROTOCOL,
                         "Upstream protocol error for %s: %s (HTTP %ld); the upstream may have "
                         "created the task",
                         j->creation_id, res->error, c->status);
                if (d->cfg->uncertain == UNCERTAIN_HOLD) {
                        hold_uncertain(c, j, res->error);
                        break;
                }
                /* resubmit: treat it as retryable; a duplicate upstream is the accepted risk. */
                /* fall through */
        case UPSTREAM_RETRY:
                if (j->attempt >= d->cfg->max_attempts) {
                        give_up(d, c, j, res->error);
                } else {
                        uint64_t delay = backoff_delay(j->attempt, d->cfg->initial_delay,
                                                       d->cfg->max_delay, random_u32());
                        if (c->has_retry_after && c->retry_after_usec > delay)
                                delay = c->retry_after_usec;
                        retry_in(d, c, j, res->error, delay, now);
                }
                break;
        case UPSTREAM_FINAL:
                j->state = JOB_DEAD;
                count(c, &d->m->dead);
                fill_event(c, j, MSGID_DEAD, "dead");
                c->entry.priority = LOG_ERR;
                snprintf(c->entry.message, sizeof(c->entry.message),
                         "Upscale of %s refused by the upstream: %s (HTTP %ld)", j->creation_id,
                         res->error, c->status);
                break;
        case UPSTREAM_ACCOUNT:
        case UPSTREAM_OUTAGE:
                /* Not this job's fault: it goes back with its attempt returned. */
                if (j->attempt > 0)
                        j->attempt--;
                j->state = JOB_WAITING;
                j->next_at = now;
                enter_pause(d, c,
                            res->verdict == UPSTREAM_OUTAGE ? "the upstream cannot be reached"
                                                            : res->error);
                break;
        }
}

/* Decides and records what a submission's answer means for its job (inside the transaction). */
static int apply_submit(struct dispatcher *d, struct call *c, uint64_t now)
{
        struct upstream_result *res = &c->result;
        int r;
        if (res->verdict == UPSTREAM_ACCEPTED && (r = apply_accepted(d, c, now)) != 0)
                return r < 0 ? r : 0;
        /* Anything but the common answer: its `accepted` entry first, before whatever this one
         * logs (a protocol error, a pause), not folded. */
        if (res->verdict != UPSTREAM_ACCEPTED)
                dispatcher_settle_accepted(d, c->job.creation_id);
        struct job j;
        r = ledger_get(d->ledger, c->job.creation_id, &j);
        if (r <= 0)
                return r;
        if (c->probe)
                d->probe_in_flight = false;
        if (j.state != JOB_SUBMITTING)
                return 0; /* an operator changed it meanwhile */
        if (res->verdict == UPSTREAM_ACCEPTED) {
                /* An id the ledger already holds for another creation (a different upstream after
                 * a reload that numbers its tasks alike, or an upstream bug): this task cannot be
                 * followed, yet it may exist and cost credits, so it is not sent again blindly. */
                struct job other;
                r = ledger_get_by_upscale(d->ledger, res->task_id, &other);
                if (r < 0)
                        return r;
                if (r > 0 && strcmp(other.creation_id, j.creation_id) != 0) {
                        snprintf(res->error, sizeof(res->error),
                                 "the upstream answered with task id %.64s, already recorded for "
                                 "creation %.64s",
                                 res->task_id, other.creation_id);
                        res->verdict = UPSTREAM_UNCERTAIN;
                }
        }
        decide_submit(d, c, &j, now);
        return ledger_save_from(d->ledger, &j, JOB_SUBMITTING, now);
}

/* What an upscale's final outcome makes of its job. */
static void outcome_job(struct job *j, const struct upstream_poll *p)
{
        bool ok = p->state == UPSTREAM_TASK_SUCCESS;
        j->state = ok ? JOB_SUCCEEDED : JOB_FAILED;
        if (ok) {
                job_set_field(j->result_url, sizeof(j->result_url), p->result_url);
                j->upstream_error[0] = 0;
        } else
                job_set_field(j->upstream_error, sizeof(j->upstream_error),
                              isempty(p->error) ? "failed" : p->error);
}

/* Records a final outcome: a job changed since j was read (an operator, the other way of
 * learning the outcome) is left alone. 1 saved, 0 left alone, -errno. */
static int record_outcome(struct ledger *ledger, struct job *j, const struct upstream_poll *p,
                          uint64_t now)
{
        if (j->state != JOB_SUBMITTED && j->state != JOB_UNCERTAIN && j->state != JOB_SUBMITTING)
                return 0;
        enum job_state from = j->state;
        outcome_job(j, p);
        return ledger_save_if(ledger, j, from, now);
}

int dispatcher_note_credits(struct ledger *ledger, const struct job *j, int64_t credits)
{
        if (credits < 0 || credits == j->credits)
                return 0;
        return ledger_set_credits(ledger, j->creation_id, credits);
}

/* The outcome's count and journal entry, for a job outcome_job closed. */
static void outcome_entry(struct dispatcher *d, struct job *j, enum outcome_via via,
                          int http_status, struct job_entry *ret, struct call *c)
{
        bool ok = j->state == JOB_SUCCEEDED;
        if (c)
                count(c, &d->m->outcomes[via][ok ? 0 : 1]); /* a poll's: once its save stands */
        else
                d->m->outcomes[via][ok ? 0 : 1]++;
        if (http_status > 0)
                j->http_status = http_status;
        fill_entry(ret, j, ok ? MSGID_SUCCEEDED : MSGID_FAILED, ok ? "succeeded" : "failed");
        ret->priority = ok ? LOG_INFO : LOG_WARNING;
        const char *how = via == OUTCOME_VIA_CALLBACK ? " (callback)" : "";
        if (ok)
                snprintf(ret->message, sizeof(ret->message), "Upscale of %s succeeded%s: %s",
                         j->creation_id, how,
                         isempty(j->result_url) ? "(no result URL)" : j->result_url);
        else
                snprintf(ret->message, sizeof(ret->message), "Upscale of %s failed upstream%s: %s",
                         j->creation_id, how, j->upstream_error);
}

void dispatcher_outcome_entry(struct dispatcher *d, struct job *j, enum outcome_via via,
                              int http_status, struct job_entry *ret)
{
        outcome_entry(d, j, via, http_status, ret, NULL);
}

int dispatcher_close_job(struct dispatcher *d, const struct job *job, const struct upstream_poll *p,
                         enum outcome_via via, int http_status, uint64_t now, struct job_entry *ret)
{
        if (p->state != UPSTREAM_TASK_SUCCESS && p->state != UPSTREAM_TASK_FAILED)
                return 0;
        struct job j = *job;
        int r = record_outcome(d->ledger, &j, p, now);
        if (r <= 0)
                return r;
        outcome_entry(d, &j, via, http_status, ret, NULL);
        return (int)j.state;
}

/* The poll pushed next_at out while it was in flight; ask again on the cadence. */
static int poll_again(struct dispatcher *d, struct job *j, uint64_t now)
{
        if (j->state != JOB_SUBMITTED)
                return 0;
        j->next_at = now + d->cfg->poll_interval;
        int r = ledger_save_if(d->ledger, j, JOB_SUBMITTED, now);
        return r < 0 ? r : 0;
}

/* Records a poll's answer from the call's copy of the job as it was taken (no read): the saves'
 * state guard leaves a job that changed meanwhile as it is. */
static int apply_poll(struct dispatcher *d, struct call *c, uint64_t now)
{
        struct job j = c->job;
        int r;
        const struct upstream_poll *p = &c->poll_result;
        /* The official API's answers carry the upscale's cost: the spend guard counts it. */
        r = dispatcher_note_credits(d->ledger, &j, p->credits);
        if (r < 0)
                return r;
        switch (p->state) {
        case UPSTREAM_TASK_RUNNING:
                return poll_again(d, &j, now);
        case UPSTREAM_TASK_UNREADABLE:
                snprintf(d->last_error, sizeof(d->last_error), "poll: %.240s", p->error);
                /* Once per kind of trouble, not once per poll. */
                if (strcmp(j.upstream_error, p->error) != 0)
                        log_notice(
                            "Cannot read the state of upscale task %s for %s: %s; asking again "
                            "every upstream.poll_interval",
                            j.upscale_task_id, j.creation_id, p->error);
                job_set_field(j.upstream_error, sizeof(j.upstream_error), p->error);
                return poll_again(d, &j, now);
        case UPSTREAM_TASK_SUCCESS:
        case UPSTREAM_TASK_FAILED:
                break;
        }
        r = dispatcher_close_job(d, &j, p, OUTCOME_VIA_POLL, (int)c->status, now, &c->entry);
        return r < 0 ? r : 0;
}

/* PostgreSQL ---------------------------------------------------------------------------------- */

static const char *nonempty(const char *s)
{
        return isempty(s) ? NULL : s;
}

static int rows_of(const PGresult *r)
{
        return r && PQresultStatus(r) == PGRES_TUPLES_OK ? PQntuples(r) : 0;
}

/* What a poll's answer makes of its job j (as it was claimed): asked again on the cadence while
 * it runs or cannot be read, closed by a final outcome. */
static void decide_poll(struct dispatcher *d, struct call *c, struct job *j, uint64_t now)
{
        memset(c->counts, 0, sizeof(c->counts));
        const struct upstream_poll *p = &c->poll_result;
        switch (p->state) {
        case UPSTREAM_TASK_UNREADABLE:
                snprintf(d->last_error, sizeof(d->last_error), "poll: %.240s", p->error);
                if (strcmp(j->upstream_error, p->error) != 0)
                        log_notice(
                            "Cannot read the state of upscale task %s for %s: %s; asking again "
                            "every upstream.poll_interval",
                            j->upscale_task_id, j->creation_id, p->error);
                job_set_field(j->upstream_error, sizeof(j->upstream_error), p->error);
                /* fall through */
        case UPSTREAM_TASK_RUNNING:
                j->next_at = now + d->cfg->poll_interval;
                return;
        case UPSTREAM_TASK_SUCCESS:
        case UPSTREAM_TASK_FAILED:
                outcome_job(j, p);
                outcome_entry(d, j, OUTCOME_VIA_POLL, (int)c->status, &c->entry, c);
                return;
        }
}

/* What an accepted answer carrying a task id another job already holds makes of the job: as an
 * answer that leaves open whether the upstream created a task (UPSTREAM_UNCERTAIN on SQLite),
 * held under retry.uncertain = hold, else tried again with backoff, or dead out of attempts. */
static enum job_state duplicate_task_state(struct dispatcher *d, const struct job *j,
                                           uint64_t *delay)
{
        *delay = 0;
        if (d->cfg->uncertain == UNCERTAIN_HOLD)
                return JOB_UNCERTAIN;
        if (j->attempt >= d->cfg->max_attempts)
                return JOB_DEAD;
        *delay = backoff_delay(j->attempt, d->cfg->initial_delay, d->cfg->max_delay, random_u32());
        return JOB_WAITING;
}

/* An answer's statements: what it makes of the job, saved only under the claim it was taken
 * with (PGSCHEMA_SAVE_FENCED); an accepted submission also settles the job if a takeover holds it
 * `uncertain` from that very claim (PGSCHEMA_SETTLE_UNCERTAIN: after a save that matched, the job
 * is `submitted` and the settle matches nothing). */
static int stage_answer(struct dispatcher *d, struct call *c, struct txn_batch *b, uint64_t now)
{
        struct job j = c->job;
        bool settle = false;
        c->entry.log = false;
        c->fate = ANSWER_SAVED;
        if (c->poll)
                decide_poll(d, c, &j, now);
        else {
                if (c->probe)
                        d->probe_in_flight = false;
                if (c->probe && d->have_token) {
                        d->have_token = false;
                        d->release_token = true;
                }
                /* Anything but the common answer: its `accepted` entry first, not folded. */
                if (c->result.verdict != UPSTREAM_ACCEPTED)
                        dispatcher_settle_accepted(d, j.creation_id);
                decide_submit(d, c, &j, now);
                settle = j.state == JOB_SUBMITTED;
        }
        c->saved = j;
        const struct job *s = &c->saved;
        snprintf(c->p_seq, sizeof(c->p_seq), "%lld", (long long)c->claim_seq);
        snprintf(c->p_attempt, sizeof(c->p_attempt), "%u", s->attempt);
        snprintf(c->p_next, sizeof(c->p_next), "%llu",
                 (unsigned long long)(s->next_at > now ? s->next_at - now : 0));
        snprintf(c->p_status, sizeof(c->p_status), "%d", s->http_status);
        const char *status = s->http_status > 0 ? c->p_status : NULL;
        const char *params[] = {s->creation_id,
                                d->instance,
                                c->p_seq,
                                job_state_to_string(s->state),
                                c->p_attempt,
                                c->p_next,
                                nonempty(s->upscale_task_id),
                                status,
                                nonempty(s->upstream_error),
                                nonempty(s->result_url)};
        memcpy(c->params, params, sizeof(params));
        const char *settle_params[] = {s->creation_id,
                                       c->p_seq,
                                       job_state_to_string(s->state),
                                       nonempty(s->upscale_task_id),
                                       status,
                                       nonempty(s->upstream_error),
                                       nonempty(s->result_url),
                                       c->p_next};
        memcpy(c->settle_params, settle_params, sizeof(settle_params));
        c->n_stmts = 1;
        c->settles = settle;
        if (settle) {
                c->dup_state = duplicate_task_state(d, s, &c->dup_delay);
                snprintf(c->p_dup_delay, sizeof(c->p_dup_delay), "%llu",
                         (unsigned long long)c->dup_delay);
                c->params[10] = job_state_to_string(c->dup_state);
                c->params[11] = c->p_dup_delay;
        }
        int r = txn_batch_add(b, settle ? PGSCHEMA_SAVE_ACCEPTED : PGSCHEMA_SAVE_FENCED,
                              settle ? 12 : (int)ELEMENTSOF(params), c->params);
        if (r >= 0 && settle) {
                r = txn_batch_add(b, PGSCHEMA_SETTLE_UNCERTAIN, ELEMENTSOF(settle_params),
                                  c->settle_params);
                c->n_stmts++;
        }
        /* The cost the upstream reported, for the job and its latest submission (the budget's
         * credits window), as on SQLite; before the check, which stays last. */
        int64_t credits = c->poll ? c->poll_result.credits : c->result.credits;
        if (r >= 0 && credits >= 0) {
                snprintf(c->p_credits, sizeof(c->p_credits), "%lld", (long long)credits);
                c->credits_params[0] = s->creation_id;
                c->credits_params[1] = c->p_credits;
                r = txn_batch_add(b, PGSCHEMA_SET_CREDITS, 2, c->credits_params);
                c->n_stmts++;
        }
        if (r >= 0 && c->maybe_saved) {
                c->get_params[0] = s->creation_id;
                r = txn_batch_add(b, PGSCHEMA_GET, 1, c->get_params);
                c->n_stmts++;
        }
        return r;
}

static uint64_t lease_period(const struct dispatcher *d);

/* The shared pause as this instance last decided it, and the probe token given back. */
static int stage_control(struct dispatcher *d, struct txn_batch *b, uint64_t now)
{
        int r;
        if (d->pause_sync != PAUSE_SYNC_NONE) {
                bool set = d->pause_sync == PAUSE_SYNC_SET;
                snprintf(
                    d->p_pause_for, sizeof(d->p_pause_for), "%llu",
                    (unsigned long long)(set && d->pause_until > now ? d->pause_until - now : 0));
                const char *params[] = {"pause", set ? d->pause_reason : NULL, d->p_pause_for};
                memcpy(d->pause_params, params, sizeof(params));
                r = txn_batch_add(b, PGSCHEMA_CONTROL_SET, 3, d->pause_params);
                if (r < 0)
                        return r;
                d->pause_sync = PAUSE_SYNC_NONE;
                d->control_staged = true;
                d->n_control_staged++;
        }
        if (d->release_token) {
                const char *params[] = {"probe", NULL, "0"};
                memcpy(d->token_params, params, sizeof(params));
                r = txn_batch_add(b, PGSCHEMA_CONTROL_SET, 3, d->token_params);
                if (r < 0)
                        return r;
                d->release_token = false;
                d->token_staged = true;
                d->n_control_staged++;
        }
        return 0;
}

/* PostgreSQL: the dispatcher's part of the turn, after the webhook's intake in the same
 * transaction: the claims whose commit had an unknown outcome put back, the answers saved under
 * their claims, due jobs claimed up to the free slots (so a job accepted in this turn is marked
 * `submitting` in its very commit) and submitted ones claimed for a poll, then when the next
 * job is due, for the timer. */
static int writer_stage_pg(void *userdata, struct txn_batch *b, uint64_t now)
{
        struct dispatcher *d = userdata;
        int r;
        d->staged_turn = 0;
        d->staged_submit = d->staged_poll = d->staged_take = d->staged_budget = false;
        d->n_control_staged = 0;
        d->n_release_staged = d->n_unsent;
        for (size_t i = 0; i < d->n_unsent; i++) {
                d->unsent_params[i][0] = d->instance;
                d->unsent_params[i][1] = d->unsent_str[i];
                r = txn_batch_add(b, PGSCHEMA_RELEASE_UNSENT, 2, d->unsent_params[i]);
                if (r < 0)
                        return r;
        }
        /* The answers go with this batch; those that come before its end wait for the next. */
        d->staged = d->done_head;
        d->done_head = d->done_tail = NULL;
        for (struct call *c = d->staged; c; c = c->next) {
                r = stage_answer(d, c, b, now);
                if (r < 0)
                        return r;
        }
        r = stage_control(d, b, now);
        if (r < 0)
                return r;
        if (!d->draining) {
                size_t slots =
                    d->cfg->concurrency > d->submits ? d->cfg->concurrency - d->submits : 0;
                if (d->paused)
                        slots =
                            now < d->pause_until || d->probe_in_flight || d->submits > 0 ? 0 : 1;
                /* A shared pause: the probe only under the token, taken in a turn of its own. */
                if (d->paused && d->pause_shared && slots > 0 && !d->have_token) {
                        slots = 0;
                        snprintf(d->p_lease, sizeof(d->p_lease), "%llu",
                                 (unsigned long long)d->cfg->store_lease);
                        const char *take[] = {"probe", d->instance, d->p_lease};
                        memcpy(d->take_params, take, sizeof(take));
                        r = txn_batch_add(b, PGSCHEMA_CONTROL_TAKE, 3, d->take_params);
                        if (r < 0)
                                return r;
                        d->staged_take = true;
                }
                if (slots > BATCH_MAX)
                        slots = BATCH_MAX;
                size_t pslots = d->cfg->concurrency > d->polls ? d->cfg->concurrency - d->polls : 0;
                if (pslots > BATCH_MAX)
                        pslots = BATCH_MAX;
                snprintf(d->p_lease, sizeof(d->p_lease), "%llu",
                         (unsigned long long)d->cfg->store_lease);
                if (slots > 0) {
                        d->staged_turn = ++d->turn_seq;
                        snprintf(d->p_slots, sizeof(d->p_slots), "%zu", slots);
                        snprintf(d->p_turn, sizeof(d->p_turn), "%lld", (long long)d->staged_turn);
                        struct budget_limits lim;
                        dispatcher_budget_limits(d->cfg, &lim);
                        const uint64_t limits[] = {lim.per_hour, lim.per_day, lim.credits_per_day,
                                                   lim.assumed_credits};
                        for (size_t k = 0; k < ELEMENTSOF(limits); k++)
                                snprintf(d->p_budget[k], sizeof(d->p_budget[k]), "%llu",
                                         (unsigned long long)limits[k]);
                        const char *params[] = {d->instance,
                                                d->p_lease,
                                                d->p_slots,
                                                d->p_turn,
                                                d->cfg->flavor == UPSTREAM_FLAVOR_ENT_V2 ? "true"
                                                                                         : "false",
                                                d->p_budget[0],
                                                d->p_budget[1],
                                                d->p_budget[2],
                                                d->p_budget[3]};
                        memcpy(d->claim_params, params, sizeof(params));
                        d->spend_params[0] = d->p_budget[3];
                        /* Under a budget, the claims of all instances take turns on its row,
                         * so each counts every submission the others committed. */
                        d->staged_budget = budget_enabled(&lim);
                        if (d->staged_budget) {
                                r = txn_batch_add(b, PGSCHEMA_BUDGET_LOCK, 0, NULL);
                                if (r < 0)
                                        return r;
                        }
                        /* Unpaused, nothing is claimed while the database records a pause
                         * this instance has not read yet; paused, this is the probe. Every job
                         * claimed is recorded as a submission, within the budget's room. */
                        r = txn_batch_add(b,
                                          d->paused ? PGSCHEMA_CLAIM_SUBMIT_BUDGET_ALLOWED
                                                    : PGSCHEMA_CLAIM_SUBMIT_BUDGET_UNPAUSED,
                                          9, d->claim_params);
                        if (r >= 0)
                                r = txn_batch_add(b, PGSCHEMA_PAUSES, 0, NULL);
                        if (r >= 0 && d->staged_budget)
                                r = txn_batch_add(b, PGSCHEMA_SPEND_USAGE, 1, d->spend_params);
                        if (r >= 0 && d->staged_budget)
                                r = txn_batch_add(b, PGSCHEMA_SPEND_LIST, 0, NULL);
                        if (r < 0)
                                return r;
                        d->staged_submit = true;
                        d->staged_paused = d->paused;
                }
                /* Polls only when one is due, by what the last turn or lease timer read: a
                 * turn of pure intake costs no poll claim. */
                if (pslots > 0 && d->next_poll_at <= now) {
                        if (!d->staged_turn) {
                                d->staged_turn = ++d->turn_seq;
                                snprintf(d->p_turn, sizeof(d->p_turn), "%lld",
                                         (long long)d->staged_turn);
                        }
                        snprintf(d->p_pslots, sizeof(d->p_pslots), "%zu", pslots);
                        snprintf(d->p_pushed, sizeof(d->p_pushed), "%llu",
                                 (unsigned long long)(d->cfg->poll_interval + d->cfg->timeout));
                        const char *params[] = {d->instance, d->p_lease, d->p_pslots, d->p_turn,
                                                d->p_pushed};
                        memcpy(d->poll_params, params, sizeof(params));
                        r = txn_batch_add(b, PGSCHEMA_CLAIM_POLL, 5, d->poll_params);
                        if (r < 0)
                                return r;
                        d->staged_poll = true;
                }
        }
        r = txn_batch_add(b, PGSCHEMA_NEXT_SUBMIT, 0, NULL);
        if (r >= 0)
                r = txn_batch_add(b, PGSCHEMA_NEXT_POLL, 0, NULL);
        return r;
}

/* Calls for the jobs a claim returned (col: where the job's columns start). */
static int claimed_calls(struct dispatcher *d, const PGresult *res, int col, bool poll)
{
        for (int i = 0; i < rows_of(res); i++) {
                struct call *c = calloc(1, sizeof(*c));
                if (!c)
                        return -ENOMEM;
                struct pgschema_claim claim;
                if (pgschema_row_to_job(res, i, col, &c->job, &claim) < 0) {
                        free(c);
                        return -EBADMSG;
                }
                c->d = d;
                c->poll = poll;
                c->claim_seq = claim.seq;
                int pcol = col + PGSCHEMA_JOB_NCOLUMNS;
                if (!poll && PQnfields(res) > pcol && !PQgetisnull(res, i, pcol))
                        c->payload = PQgetvalue(res, i, pcol);
                if (!poll) {
                        c->fresh = strcmp(PQgetvalue(res, i, 0), "pending") == 0;
                        c->probe = d->staged_paused;
                        if (c->probe)
                                d->probe_in_flight = true;
                }
                c->next = d->turn_new;
                d->turn_new = c;
        }
        return 0;
}

static uint64_t due_at(const PGresult *res, uint64_t now)
{
        if (rows_of(res) < 1 || PQgetisnull(res, 0, 0))
                return UINT64_MAX;
        long long delta = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        return delta <= 0 ? now : now + (uint64_t)delta;
}

/* Whether the job (PGSCHEMA_GET's answer) is what c's save makes of it, unclaimed: that save
 * committed in a batch whose outcome was unknown. */
static bool saved_already(const struct call *c, const PGresult *get)
{
        struct job j;
        struct pgschema_claim claim;
        if (rows_of(get) < 1 || pgschema_row_to_job(get, 0, 0, &j, &claim) < 0)
                return false;
        return j.state == c->saved.state && j.attempt == c->saved.attempt &&
               strcmp(j.upscale_task_id, c->saved.upscale_task_id) == 0 && !claim.claimed_by[0];
}

static void follow_shared_pause(struct dispatcher *d, const PGresult *r, uint64_t now,
                                bool in_turn);

/* The operator's pause (`jobs pause`), column 4 of PGSCHEMA_PAUSES: while it holds, the claims
 * take nothing and the timers do not ask for turns. */
static void follow_operator_pause(struct dispatcher *d, const PGresult *r)
{
        if (rows_of(r) < 1 || PQnfields(r) < 5)
                return;
        d->operator_paused = !PQgetisnull(r, 0, 4);
        d->m->operator_paused = d->operator_paused;
        d->operator_since = 0;
        if (d->operator_paused &&
            parse_uint(PQgetvalue(r, 0, 4), 0, UINT64_MAX, &d->operator_since) < 0)
                d->operator_since = 0;
}

/* The save found the task id already another job's (PGSCHEMA_SAVE_ACCEPTED): the entry and
 * counts for the state duplicate_task_state chose, as decide_submit's for UPSTREAM_UNCERTAIN. */
static void duplicate_task(struct dispatcher *d, struct call *c, const char *error)
{
        struct job *j = &c->saved;
        log_full(LOG_WARNING, MSGID_UPSTREAM_PROTOCOL,
                 "Upstream protocol error for %s: %s (HTTP %ld); the upstream may have created the "
                 "task",
                 j->creation_id, error, c->status);
        memset(c->counts, 0, sizeof(c->counts));
        count(c, &d->m->uncertain);
        j->upscale_task_id[0] = 0;
        job_set_field(j->upstream_error, sizeof(j->upstream_error), error);
        /* The state the statement gave it (next_at is the database's: j's is not saved again). */
        if (c->dup_state == JOB_UNCERTAIN)
                hold_uncertain(c, j, j->upstream_error);
        else if (c->dup_state == JOB_DEAD)
                give_up(d, c, j, j->upstream_error);
        else
                retry_in(d, c, j, j->upstream_error, c->dup_delay, now_realtime_usec());
}

/* The spend guard after a claim, from the windows' use read in its transaction: held (jobs due
 * and no room: when room frees, from the day's submissions) or free, journaled after the commit
 * when that changed (remembered by this process only: each instance says it once). */
static void follow_budget_pg(struct dispatcher *d, const PGresult *usage, const PGresult *list,
                             int claimed, uint64_t now)
{
        struct budget_limits lim;
        dispatcher_budget_limits(d->cfg, &lim);
        if (!usage || rows_of(usage) < 1) {
                d->pg_spend_known = false;
                if (!budget_enabled(&lim))
                        (void)budget_change(d, false);
                return;
        }
        struct ledger_spend used = {
            .day = strtoull(PQgetvalue(usage, 0, 0), NULL, 10),
            .hour = strtoull(PQgetvalue(usage, 0, 1), NULL, 10),
            .day_credits = strtoull(PQgetvalue(usage, 0, 2), NULL, 10),
        };
        d->pg_spend = used;
        d->pg_spend_known = true;
        d->hold_checked = now;
        enum budget_window full = BUDGET_WINDOW_HOUR;
        /* A claim that took jobs had room (as SQLite's decision before it); the next turn, with
         * jobs still due, finds the window full if it is. */
        if (claimed > 0 || budget_room(&lim, &used, &full) > 0 || d->next_submit_at > now) {
                (void)budget_change(d, false);
                return;
        }
        struct budget_scan scan;
        budget_scan_init(&scan, &lim, &used, now);
        for (int k = 0; list && k < rows_of(list); k++) {
                uint64_t at = strtoull(PQgetvalue(list, k, 0), NULL, 10);
                int64_t credits =
                    PQgetisnull(list, k, 1) ? -1 : strtoll(PQgetvalue(list, k, 1), NULL, 10);
                if (budget_scan_feed(&scan, at, credits))
                        break;
        }
        d->budget = (struct control_budget){.full = full, .free_at = budget_scan_result(&scan)};
        d->budget_used = used;
        d->budget_waiting = 1;
        (void)budget_change(d, true);
}

static int writer_read_pg(void *userdata, PGresult *const *results, size_t n)
{
        struct dispatcher *d = userdata;
        size_t i = 0;
        uint64_t now = now_realtime_usec();
        size_t released = 0;
        for (size_t k = 0; k < d->n_release_staged && i < n; k++)
                released += (size_t)rows_of(results[i++]);
        if (d->n_release_staged > 0) {
                /* Committed: those claim turns are settled. */
                memmove(d->unsent, d->unsent + d->n_release_staged,
                        (d->n_unsent - d->n_release_staged) * sizeof(d->unsent[0]));
                memmove(d->unsent_str, d->unsent_str + d->n_release_staged,
                        (d->n_unsent - d->n_release_staged) * sizeof(d->unsent_str[0]));
                d->n_unsent -= d->n_release_staged;
                d->n_release_staged = 0;
                if (released > 0)
                        log_notice("%zu job(s) marked submitting in a commit whose outcome was "
                                   "unknown were never sent: due again",
                                   released);
        }
        for (struct call *c = d->staged; c && i + c->n_stmts <= n; c = c->next) {
                const PGresult *get = c->maybe_saved ? results[i + c->n_stmts - 1] : NULL;
                if (rows_of(results[i]) > 0) {
                        c->fate = ANSWER_SAVED;
                        if (c->settles && strcmp(PQgetvalue(results[i], 0, 0), "submitted") != 0)
                                duplicate_task(d, c, PQgetvalue(results[i], 0, 1));
                } else if (c->settles && rows_of(results[i + 1]) > 0)
                        c->fate = ANSWER_SETTLED;
                else if (saved_already(c, get))
                        c->fate = ANSWER_SAVED;
                else
                        c->fate = ANSWER_STALE;
                i += c->n_stmts;
        }
        /* The pause's and token's writes: nothing to read. */
        i += d->n_control_staged;
        d->n_control_staged = 0;
        if (d->staged_take && i < n) {
                d->have_token = rows_of(results[i++]) > 0;
                if (d->have_token)
                        dispatcher_kick(d); /* the probe, in the next turn */
                else if (d->paused)
                        /* Another instance probes: what it finds comes through the control
                         * table; look again later. */
                        d->pause_until = now + lease_period(d);
        }
        if (d->control_staged)
                d->control_committed = now_monotonic_usec();
        d->control_staged = d->token_staged = false;
        int r = 0;
        if (d->staged_submit && i < n && d->have_token && d->paused && rows_of(results[i]) == 0) {
                /* Nothing due to probe with: the token goes back. */
                d->have_token = false;
                d->release_token = true;
        }
        if (d->staged_budget && i < n)
                i++; /* the budget's lock */
        int claimed = 0;
        if (d->staged_submit && i < n) {
                claimed = rows_of(results[i]);
                r = claimed_calls(d, results[i++], 1, false);
        }
        /* Read in the claim's own transaction: a pause another instance recorded is followed
         * at once, not at the next lease timer. */
        if (r >= 0 && d->staged_submit && i < n) {
                if (!d->staged_paused)
                        follow_shared_pause(d, results[i], now, true);
                follow_operator_pause(d, results[i++]);
        }
        const PGresult *usage = NULL, *list = NULL;
        if (d->staged_budget && i + 1 < n) {
                usage = results[i++];
                list = results[i++];
        }
        if (r >= 0 && d->staged_poll && i < n)
                r = claimed_calls(d, results[i++], 0, true);
        if (r < 0)
                return r;
        d->next_submit_at = i < n ? due_at(results[i++], now) : UINT64_MAX;
        d->next_poll_at = i < n ? due_at(results[i++], now) : UINT64_MAX;
        if (d->staged_submit)
                follow_budget_pg(d, usage, list, claimed, now);
        return 0;
}

/* After the commit: an answer's entry, or the stale answer's. */
static void write_answer_entry(struct dispatcher *d, struct call *c)
{
        if (!d->pg || c->fate != ANSWER_STALE)
                for (size_t i = 0; i < ELEMENTSOF(c->counts); i++)
                        if (c->counts[i])
                                (*c->counts[i])++;
        if (!d->pg || c->fate == ANSWER_SAVED) {
                dispatcher_write_entry(d, &c->entry);
                return;
        }
        if (c->fate == ANSWER_SETTLED) {
                size_t len = strlen(c->entry.message);
                snprintf(c->entry.message + len, sizeof(c->entry.message) - len,
                         "; it settles the job, held uncertain after a takeover");
                dispatcher_write_entry(d, &c->entry);
                return;
        }
        /* Fenced out: another instance took the job over; what it decided stands. A poll's
         * answer is no news: the job was closed meanwhile (a callback) or is polled by another. */
        if (c->poll) {
                log_debug("Poll answer for %s (upscale task %s) fenced out: the job was closed or "
                          "claimed meanwhile",
                          c->job.creation_id, c->job.upscale_task_id);
                return;
        }
        dispatcher_settle_accepted(d, c->job.creation_id);
        d->m->stale_answers++;
        const char *task = c->saved.upscale_task_id;
        struct job_event ev = {
            .message_id = MSGID_STALE_ANSWER,
            .creation_id = c->job.creation_id,
            .source_task_id = c->job.source_task_id,
            .upscale_task_id = nonempty(task),
            .job_state = "stale",
            .attempt = c->job.attempt,
            .http_status = (int)c->status,
            .upstream_error = nonempty(c->saved.upstream_error),
        };
        log_job(LOG_WARNING, &ev,
                "Late answer for %s (submission %s, upscale task %s) fenced out: this instance's "
                "claim lapsed and another took the job over; not recorded",
                c->job.creation_id, job_state_to_string(c->saved.state),
                isempty(task) ? "none" : task);
}

/* The lease timer: renews this instance's claims, takes over lapsed ones and asks when the next
 * job is due, on the housekeeping connection, never on the turns'. */
static void arm_lease_timer(struct dispatcher *d, uint64_t usec)
{
        if (d->lease_timer)
                event_timer_in(d->lease_timer, usec);
}

/* A third of the lease, so a claim is renewed twice before it could lapse; at most a second,
 * so an idle instance finds due work within about that. */
static uint64_t lease_period(const struct dispatcher *d)
{
        uint64_t p = d->cfg->store_lease / 3;
        if (p > LEASE_TIMER_MAX_USEC)
                p = LEASE_TIMER_MAX_USEC;
        return p < 50 * USEC_PER_MSEC ? 50 * USEC_PER_MSEC : p;
}

/* What the control table says of the account-wide pause (value, holder, seq, usec left): one
 * another instance found pauses this one too; one cleared (value NULL) ends it here. A pause
 * whose wait is over stays until a probe (under the token) passes. */
static void follow_shared_pause(struct dispatcher *d, const PGresult *r, uint64_t now, bool in_turn)
{
        /* This instance's own decision is on its way, or was read before it committed. */
        if (d->pause_sync != PAUSE_SYNC_NONE || d->control_staged ||
            (!in_turn && d->lease_sent <= d->control_committed))
                return;
        bool active = rows_of(r) > 0 && !PQgetisnull(r, 0, 0);
        if (!active) {
                if (d->paused && d->pause_shared && !d->probe_in_flight) {
                        d->pause_shared = false; /* cleared by whoever probed: no need to say */
                        leave_pause(d);
                        dispatcher_kick(d);
                }
                return;
        }
        long long left = PQgetisnull(r, 0, 3) ? 0 : strtoll(PQgetvalue(r, 0, 3), NULL, 10);
        uint64_t until = left > 0 ? now + (uint64_t)left : now;
        if (d->paused) {
                d->pause_shared = true;
                if (!d->probe_in_flight && until > d->pause_until)
                        d->pause_until = until;
                return;
        }
        d->paused = true;
        d->pause_shared = true;
        d->pause_level = 1;
        d->pause_until = until;
        d->m->paused = 1;
        d->m->account_pauses++;
        snprintf(d->pause_reason, sizeof(d->pause_reason), "%s", PQgetvalue(r, 0, 0));
        log_full(LOG_ERR, MSGID_ACCOUNT_PAUSED,
                 "All submissions paused: %s (found by another instance sharing the ledger); one "
                 "instance probes at a time; no job loses an attempt meanwhile",
                 d->pause_reason);
        arm_timer(d);
}

static void on_leased(struct pgconn *conn, const struct pgconn_result *res, void *userdata)
{
        struct dispatcher *d = userdata;
        d->lease_in_flight = false;
        arm_lease_timer(d, lease_period(d));
        if (res->error < 0) {
                log_debug("Cannot renew leases or take over lapsed claims: %s", res->message);
                return;
        }
        /* Due work another instance recorded, or an operator released: an idle instance finds it
         * here, with no turn (no commit) while there is none. */
        uint64_t now = now_realtime_usec();
        uint64_t sub = res->n > 2 ? due_at(res->results[2], now) : UINT64_MAX;
        uint64_t pol = res->n > 3 ? due_at(res->results[3], now) : UINT64_MAX;
        bool sooner = sub < d->next_submit_at || pol < d->next_poll_at;
        if (sub < d->next_submit_at)
                d->next_submit_at = sub;
        if (pol < d->next_poll_at)
                d->next_poll_at = pol;
        if (!d->draining && ((sub <= now && d->submits < d->cfg->concurrency && !d->paused &&
                              !d->operator_paused) ||
                             (pol <= now && d->polls < d->cfg->concurrency)))
                dispatcher_kick(d);
        else if (!d->draining && sooner)
                arm_timer(d);
        if (res->n > 4) {
                bool was = d->operator_paused;
                follow_shared_pause(d, res->results[4], now, false);
                follow_operator_pause(d, res->results[4]);
                if (was && !d->operator_paused && !d->draining)
                        dispatcher_kick(d); /* `jobs resume`: what is due leaves */
        }
        const PGresult *taken = res->n > 1 ? res->results[1] : NULL;
        int n = rows_of(taken);
        bool hold = d->cfg->uncertain == UNCERTAIN_HOLD;
        for (int i = 0; i < n; i++) {
                struct job j;
                if (pgschema_row_to_job(taken, i, 1, &j, NULL) < 0)
                        continue;
                dispatcher_settle_accepted(d, j.creation_id);
                struct job_event ev = {
                    .message_id = hold ? MSGID_UNCERTAIN : MSGID_RETRYING,
                    .creation_id = j.creation_id,
                    .source_task_id = j.source_task_id,
                    .job_state = hold ? "uncertain" : "retrying",
                    .attempt = j.attempt,
                    .upstream_error = j.upstream_error,
                };
                const char *lost = PQgetisnull(taken, i, 0) ? "?" : PQgetvalue(taken, i, 0);
                if (hold) {
                        d->m->uncertain++;
                        log_job(LOG_WARNING, &ev,
                                "Upscale of %s was interrupted mid-submission (instance %s lost "
                                "its lease); the upstream may have it. Held "
                                "(retry.uncertain=hold) until an operator retries or abandons it",
                                j.creation_id, lost);
                } else
                        log_job(LOG_WARNING, &ev,
                                "Upscale of %s was interrupted mid-submission (instance %s lost "
                                "its lease); submitting again (retry.uncertain=resubmit)",
                                j.creation_id, lost);
        }
        if (n > 0)
                dispatcher_kick(d);
}

static int on_lease_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct dispatcher *d = userdata;
        if (d->lease_in_flight)
                return 0;
        snprintf(d->p_lease, sizeof(d->p_lease), "%llu", (unsigned long long)d->cfg->store_lease);
        /* Only the claims this instance still acts on: the calls in flight, and the claim
         * turns that await their release (never sent). A claim whose call could not start, or
         * that an earlier process under the same name left, lapses and is taken over. */
        size_t n = 0;
        for (struct call *c = d->flight_head; c; c = c->fl_next)
                n++;
        _cleanup_free_ const char **ids = calloc(n + 1, sizeof(*ids));
        const char *turns[UNSENT_MAX];
        if (!ids) {
                arm_lease_timer(d, lease_period(d));
                return 0;
        }
        n = 0;
        for (struct call *c = d->flight_head; c; c = c->fl_next)
                ids[n++] = c->job.creation_id;
        for (size_t i = 0; i < d->n_unsent; i++)
                turns[i] = d->unsent_str[i];
        free(TAKE_PTR(d->renew_ids));
        free(TAKE_PTR(d->renew_turns));
        if (pgschema_text_array(ids, n, &d->renew_ids) < 0 ||
            pgschema_text_array(turns, d->n_unsent, &d->renew_turns) < 0) {
                arm_lease_timer(d, lease_period(d));
                return 0;
        }
        const char *renew[] = {d->instance, d->p_lease, d->renew_ids, d->renew_turns};
        const char *takeover[] = {d->cfg->uncertain == UNCERTAIN_HOLD ? "hold" : "resubmit", "100"};
        memcpy(d->renew_params, renew, sizeof(renew));
        memcpy(d->takeover_params, takeover, sizeof(takeover));
        const struct pgconn_stmt stmts[] = {
            {.sql = PGSCHEMA_RENEW_HELD, .n_params = 4, .params = d->renew_params},
            {.sql = PGSCHEMA_TAKEOVER, .n_params = 2, .params = d->takeover_params},
            {.sql = PGSCHEMA_NEXT_SUBMIT},
            {.sql = PGSCHEMA_NEXT_POLL},
            {.sql = PGSCHEMA_PAUSES},
        };
        int r = pgconn_send(d->house, stmts, ELEMENTSOF(stmts), on_leased, d);
        if (r >= 0) {
                d->lease_in_flight = true;
                d->lease_sent = now_monotonic_usec();
        } else /* busy with the counts or a purge, or not connected: soon again */
                arm_lease_timer(d, r == -EBUSY ? 20 * USEC_PER_MSEC : lease_period(d));
        return 0;
}

/* What both backends' dispatchers share: the client, the dispatch timer and the owed `accepted`
 * entries with their timer, both off until armed. On failure d is freed. */
static int dispatcher_init(struct dispatcher *d, sd_event *event, struct txn *txn,
                           const struct config *cfg, struct metrics *metrics)
{
        d->event = sd_event_ref(event);
        d->cfg = cfg;
        d->m = metrics;
        d->txn = txn;
        int r = httpc_new(event, (unsigned)cfg->concurrency * 2, &d->httpc);
        if (r >= 0)
                r = sd_event_add_time(event, &d->timer, CLOCK_REALTIME, UINT64_MAX, USEC_PER_MSEC,
                                      on_timer, d);
        if (r >= 0)
                r = owed_new(OWED_MAX, &d->owed);
        if (r >= 0)
                r = sd_event_add_time(event, &d->owed_timer, CLOCK_MONOTONIC, UINT64_MAX,
                                      OWED_ACCURACY_USEC, on_owed_timer, d);
        if (r < 0) {
                dispatcher_free(d);
                return r;
        }
        sd_event_source_set_enabled(d->timer, SD_EVENT_OFF);
        sd_event_source_set_description(d->timer, "dispatch-timer");
        sd_event_source_set_enabled(d->owed_timer, SD_EVENT_OFF);
        sd_event_source_set_description(d->owed_timer, "owed-accepted-timer");
        return 0;
}

int dispatcher_new_pg(sd_event *event, struct txn *txn, struct pgconn *house,
                      const struct config *cfg, struct metrics *metrics, struct dispatcher **ret)
{
        struct dispatcher *d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->pg = true;
        d->house = house;
        d->turn_seq = (int64_t)now_realtime_usec();
        d->next_submit_at = d->next_poll_at = UINT64_MAX;
        d->writer = (struct txn_writer){.stage = writer_stage_pg,
                                        .read = writer_read_pg,
                                        .done = writer_done,
                                        .userdata = d,
                                        .order = 1};
        int r = dispatcher_init(d, event, txn, cfg, metrics);
        if (r < 0)
                return r;
        r = config_store_instance(cfg, d->instance, sizeof(d->instance));
        if (r >= 0)
                r = sd_event_add_time(event, &d->lease_timer, CLOCK_MONOTONIC, UINT64_MAX,
                                      USEC_PER_MSEC, on_lease_timer, d);
        if (r < 0) {
                dispatcher_free(d);
                return r;
        }
        sd_event_source_set_description(d->lease_timer, "lease-timer");
        arm_lease_timer(d, lease_period(d));
        txn_add_writer(txn, &d->writer);
        *ret = d;
        return 0;
}

int dispatcher_new(sd_event *event, struct ledger *ledger, struct txn *txn,
                   const struct config *cfg, struct metrics *metrics, struct dispatcher **ret)
{
        struct dispatcher *d = calloc(1, sizeof(*d));
        if (!d)
                return -ENOMEM;
        d->ledger = ledger;
        d->writer = (struct txn_writer){
            .apply = writer_apply, .done = writer_done, .userdata = d, .order = 1};
        int r = dispatcher_init(d, event, txn, cfg, metrics);
        if (r < 0)
                return r;
        txn_add_writer(txn, &d->writer);
        *ret = d;
        return 0;
}

struct dispatcher *dispatcher_free(struct dispatcher *d)
{
        if (!d)
                return NULL;
        /* Nothing owed is lost at a stop (the manager writes them before its last entry). */
        if (d->owed) {
                dispatcher_write_owed(d);
                owed_free(d->owed);
        }
        /* Requests still in flight are abandoned: their jobs stay `submitting` in the ledger and
         * follow retry.uncertain at the next start. Their call records go with the transfers. */
        httpc_abandon(d->httpc, free);
        httpc_free(d->httpc);
        free_calls(d->done_head);
        free_calls(d->staged);
        free_calls(d->turn_new);
        free(d->renew_ids);
        free(d->renew_turns);
        txn_remove_writer(d->txn, &d->writer);
        sd_event_source_disable_unref(d->timer);
        sd_event_source_disable_unref(d->drain_timer);
        sd_event_source_disable_unref(d->owed_timer);
        sd_event_source_disable_unref(d->lease_timer);
        sd_event_unref(d->event);
        drop_auth(d);
        free(d);
        return NULL;
}

void dispatcher_set_config(struct dispatcher *d, const struct config *cfg)
{
        if (!d)
                return;
        d->cfg = cfg;
        drop_auth(d); /* the key or its word may have changed */
        dispatcher_kick(d);
}

struct recover_ctx {
        struct dispatcher *d;
        struct job *jobs;
        size_t n, cap;
};

static int collect(const struct job *j, void *userdata)
{
        struct recover_ctx *ctx = userdata;
        if (ctx->n == ctx->cap) {
                size_t cap = ctx->cap ? ctx->cap * 2 : 16;
                struct job *n = realloc(ctx->jobs, cap * sizeof(*n));
                if (!n)
                        return -ENOMEM;
                ctx->jobs = n;
                ctx->cap = cap;
        }
        ctx->jobs[ctx->n++] = *j;
        return 0;
}

int dispatcher_recover(struct dispatcher *d)
{
        struct recover_ctx ctx = {.d = d};
        uint64_t now = now_realtime_usec();
        if (d->pg)
                return 0; /* PostgreSQL: the lease timer's takeover */
        int r = ledger_foreach(d->ledger, JOB_SUBMITTING, collect, &ctx);
        if (r < 0 || ctx.n == 0) {
                free(ctx.jobs);
                return r;
        }
        bool hold = d->cfg->uncertain == UNCERTAIN_HOLD;
        r = ledger_begin(d->ledger);
        for (size_t i = 0; r >= 0 && i < ctx.n; i++) {
                struct job *j = &ctx.jobs[i];
                j->state = hold ? JOB_UNCERTAIN : JOB_WAITING;
                j->next_at = now;
                job_set_field(j->upstream_error, sizeof(j->upstream_error),
                              "interrupted while submitting (the daemon stopped mid-request)");
                r = ledger_save(d->ledger, j, now);
        }
        if (r >= 0)
                r = ledger_commit(d->ledger);
        if (r < 0) {
                ledger_rollback(d->ledger);
                free(ctx.jobs);
                return r;
        }
        for (size_t i = 0; i < ctx.n; i++) {
                struct job *j = &ctx.jobs[i];
                struct job_event ev = {
                    .message_id = hold ? MSGID_UNCERTAIN : MSGID_RETRYING,
                    .creation_id = j->creation_id,
                    .source_task_id = j->source_task_id,
                    .job_state = hold ? "uncertain" : "retrying",
                    .attempt = j->attempt,
                    .upstream_error = j->upstream_error,
                };
                if (hold) {
                        d->m->uncertain++;
                        log_job(
                            LOG_WARNING, &ev,
                            "Upscale of %s was interrupted mid-submission; the upstream may have "
                            "it. "
                            "Held (retry.uncertain=hold) until an operator retries or abandons it",
                            j->creation_id);
                } else
                        log_job(LOG_WARNING, &ev,
                                "Upscale of %s was interrupted mid-submission; submitting again "
                                "(retry.uncertain=resubmit)",
                                j->creation_id);
        }
        free(ctx.jobs);
        return (int)ctx.n;
}

static int on_drain_timeout(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct dispatcher *d = userdata;
        dispatcher_idle_fn idle = d->idle;
        d->idle = NULL;
        if (idle)
                idle(d, httpc_in_flight(d->httpc), d->idle_userdata);
        return 0;
}

static void check_idle(struct dispatcher *d)
{
        /* Answers not yet recorded (or in a batch on its way, on PostgreSQL) keep it busy. */
        if (!d->idle || httpc_in_flight(d->httpc) > 0 || d->done_head || d->staged)
                return;
        dispatcher_idle_fn idle = d->idle;
        d->idle = NULL;
        idle(d, 0, d->idle_userdata);
}

static int on_drain_check(sd_event_source *s, void *userdata)
{
        check_idle(userdata);
        sd_event_source_disable_unref(s);
        return 0;
}

void dispatcher_drain(struct dispatcher *d, uint64_t timeout_usec, dispatcher_idle_fn idle,
                      void *userdata)
{
        if (!d) {
                idle(d, 0, userdata); /* nothing in flight */
                return;
        }
        d->draining = true;
        d->idle = idle;
        d->idle_userdata = userdata;
        sd_event_source_set_enabled(d->timer, SD_EVENT_OFF);
        uint64_t now;
        sd_event_now(d->event, CLOCK_MONOTONIC, &now);
        sd_event_add_time(d->event, &d->drain_timer, CLOCK_MONOTONIC, now + timeout_usec, 0,
                          on_drain_timeout, d);
        /* Decide from the loop, not from inside the caller. */
        sd_event_add_defer(d->event, NULL, on_drain_check, d);
}

size_t dispatcher_in_flight(const struct dispatcher *d)
{
        return d ? d->submits + d->polls : 0;
}

bool dispatcher_paused(const struct dispatcher *d)
{
        return d && d->paused;
}

const char *dispatcher_last_error(const struct dispatcher *d)
{
        return d ? d->last_error : "";
}

int dispatcher_control(struct dispatcher *d, struct dispatcher_control *ret)
{
        struct dispatcher_control c = {0};
        struct budget_limits lim;
        if (!d)
                return -ENOENT;
        if (d->pg) {
                /* PostgreSQL: the operator's pause and the budget as the last claim read. */
                c = (struct dispatcher_control){.operator_paused = d->operator_paused,
                                                .paused_since = d->operator_since,
                                                .budget_blocked = d->budget_blocked,
                                                .budget = d->budget};
                dispatcher_budget_limits(d->cfg, &lim);
                for (int w = 0; w < _BUDGET_WINDOW_MAX && d->pg_spend_known; w++) {
                        uint64_t left = budget_remaining(&lim, &d->pg_spend, (enum budget_window)w);
                        c.has_budget[w] = left != BUDGET_UNLIMITED;
                        c.budget_remaining[w] = c.has_budget[w] ? left : 0;
                }
                d->m->budget_blocked = c.budget_blocked;
                for (int w = 0; w < _BUDGET_WINDOW_MAX; w++) {
                        d->m->has_budget[w] = c.has_budget[w];
                        d->m->budget_remaining[w] = c.budget_remaining[w];
                }
                *ret = c;
                return 0;
        }
        uint64_t now = now_realtime_usec();
        int r = control_operator_paused(d->ledger, &c.paused_since);
        if (r < 0)
                return r;
        c.operator_paused = r > 0;
        dispatcher_budget_limits(d->cfg, &lim);
        if (budget_enabled(&lim)) {
                struct ledger_spend used;
                r = read_spend(d, &lim, now, &used);
                if (r < 0)
                        return r;
                for (int w = 0; w < _BUDGET_WINDOW_MAX; w++) {
                        uint64_t left = budget_remaining(&lim, &used, (enum budget_window)w);
                        c.has_budget[w] = left != BUDGET_UNLIMITED;
                        c.budget_remaining[w] = c.has_budget[w] ? left : 0;
                }
                r = control_budget_blocked(d->ledger, &c.budget);
                if (r < 0)
                        return r;
                c.budget_blocked = r > 0;
        }
        d->m->operator_paused = c.operator_paused;
        d->m->budget_blocked = c.budget_blocked;
        for (int w = 0; w < _BUDGET_WINDOW_MAX; w++) {
                d->m->has_budget[w] = c.has_budget[w];
                d->m->budget_remaining[w] = c.budget_remaining[w];
        }
        *ret = c;
        return 0;
}
