/* webhook.c: the notification endpoint: requests stage their rows and suspend; the loop's shared
 * transaction (txn.c) makes them all durable in one commit; then each gets its answer (redis's
 * beforeSleep order: write, then reply). On PostgreSQL a turn's notifications are one intake
 * statement (PGSCHEMA_INTAKE) in the turn's batch, and are decided from its answer. */
#include "webhook.h"

#include <errno.h>
#include <json-c/json.h>
#include <string.h>

#include "auth.h"
#include "journal.h"
#include "jsonw.h"
#include "notification.h"
#include "pgschema.h"
#include "txn.h"
#include "upstream.h"
#include "util.h"

#define AUTH_LOG_INTERVAL_USEC (10 * USEC_PER_SEC)
#define LEDGER_PROBE_USEC      (1 * USEC_PER_SEC)

/* One list of the answer; a reason only for `rejected`, the source task only for `accepted`. */
struct id_list {
        struct id_entry {
                const char *id, *reason, *task;
        } * v;
        size_t n, cap;
};

struct staged {
        struct http_request *req;
        struct notification *note;
        char *replay_key;
        uint64_t replay_until;
        /* Decided inside the transaction, answered and logged after it. The ids point into the
         * notification, which lives as long as this. */
        struct id_list accepted, duplicate, ignored, rejected;
        uint64_t accepted_at; /* the transaction's time: the jobs' acceptance */
        bool callback;        /* sent to upstream.callback_url: every task in it is an upscale's */
        struct job_entry **closed; /* jobs an outcome closed, journaled after the commit */
        size_t n_closed;
        struct job_event *events;
        char **messages;
        char **owned; /* a copy an event points into, freed with the request */
        int *priorities;
        int *lines; /* where each event was decided, for CODE_LINE/CODE_FUNC */
        const char **funcs;
        size_t n_events, cap_events;
        bool replayed;
        bool replayed_nonce;
        bool replay_repeat; /* PostgreSQL: its replay key came earlier in the same turn */
        bool out_of_memory; /* an id could not be listed: the answer cannot say what was done */
        unsigned status;
        struct staged *next;
};

/* PostgreSQL: a key or creation id the turn's intake answered as new, taken by the first
 * notification of the turn that asks for it (the later ones find it a replay or a duplicate, as
 * on SQLite). Points into the batch's result, valid while the writer reads it. */
struct fresh {
        const char *id;
        bool taken;
};

/* PostgreSQL: a job of ours an upscale task id named in the turn (PGSCHEMA_CLOSE_BY_UPSCALE):
 * closed by the turn's callback (as it is now) or left open (as it was). */
struct upscaled {
        const char *id; /* its upscale task id, in the job */
        bool closed, taken;
        struct job job;
};

struct intake {
        /* What the statement was given; kept until the turn's end. */
        char *keys, *until, *ids, *sources, *durations, *payloads, *id_keys;
        const char *params[7];
        /* The tasks that may be upscales of ours and what each reports, for the close. */
        char *o_ids, *o_states, *o_urls, *o_errors;
        const char *o_params[4];
        /* The costs callbacks reported (PGSCHEMA_CREDITS_BY_UPSCALE), NULL: none in the turn. */
        char *o_cids, *o_credits;
        const char *c_params[2];
        bool outcomes; /* the close statement is in the batch */
        struct upscaled *ups;
        size_t n_ups;
        /* What it answered, sorted. */
        struct fresh *fresh_keys, *fresh_jobs;
        size_t n_fresh_keys, n_fresh_jobs;
};

/* PostgreSQL: one of the writers the notifications take turns through. There are as many as
 * turns may be in flight (txn_new_pg's depth): while one lane's batch is in flight, what is
 * staged meanwhile leaves in the other's, pipelined behind it. */
struct lane {
        struct webhook *w;
        struct txn_writer writer;
        bool staged_turn; /* writer_stage ran for the turn lane_done ends */
        /* The batch in flight holds these; its answer decides them. */
        struct staged *flight;
        size_t n_flight;
        struct intake intake;
};

#define N_LANES 2

struct webhook {
        sd_event *event;
        struct ledger *ledger;
        const struct config *cfg;
        struct metrics *m;
        struct dispatcher *dispatcher;
        struct txn *txn;
        struct txn_writer writer; /* SQLite */
        sd_event_source *probe_timer;
        struct staged *head, *tail; /* recorded by the next turn */
        size_t n_staged;
        bool pg;
        struct lane lanes[N_LANES];
        struct intake *reading; /* the answer writer_read decides from */
        bool turn_failed;       /* the last turn failed: logged once until one succeeds */
        bool ledger_ok;
        uint64_t auth_log_last;
        uint64_t auth_suppressed;
};

static void staged_free(struct staged *s)
{
        if (!s)
                return;
        notification_free(s->note);
        free(s->replay_key);
        free(s->accepted.v);
        free(s->duplicate.v);
        free(s->ignored.v);
        free(s->rejected.v);
        for (size_t i = 0; i < s->n_events; i++) {
                free(s->messages[i]);
                free(s->owned[i]);
        }
        for (size_t i = 0; i < s->n_closed; i++)
                free(s->closed[i]);
        free(s->closed);
        free(s->events);
        free(s->messages);
        free(s->owned);
        free(s->lines);
        free(s->funcs);
        free(s->priorities);
        free(s);
}

static void staged_free_list(struct staged *s)
{
        while (s) {
                struct staged *next = s->next;
                staged_free(s);
                s = next;
        }
}

/* Queues a journal entry for after the commit; strings point into the staged notification or
 * static storage, so they stay valid until the entry is written. */
#define add_event(s, priority, ev, ...)                                                            \
        add_event_at(s, __LINE__, __func__, priority, ev, __VA_ARGS__)
static void add_event_at(struct staged *s, int line, const char *func, int priority,
                         const struct job_event *ev, const char *fmt, ...) _printf_(6, 7);
static void add_event_at(struct staged *s, int line, const char *func, int priority,
                         const struct job_event *ev, const char *fmt, ...)
{
        if (s->n_events == s->cap_events) {
                size_t cap = s->cap_events ? s->cap_events * 2 : 8;
                struct job_event *e = realloc(s->events, cap * sizeof(*e));
                if (!e)
                        return;
                s->events = e;
                char **m = realloc(s->messages, cap * sizeof(*m));
                if (!m)
                        return;
                s->messages = m;
                int *p = realloc(s->priorities, cap * sizeof(*p));
                if (!p)
                        return;
                s->priorities = p;
                char **o = realloc(s->owned, cap * sizeof(*o));
                if (!o)
                        return;
                s->owned = o;
                int *ln = realloc(s->lines, cap * sizeof(*ln));
                if (!ln)
                        return;
                s->lines = ln;
                const char **fn = realloc(s->funcs, cap * sizeof(*fn));
                if (!fn)
                        return;
                s->funcs = fn;
                s->cap_events = cap;
        }
        va_list ap;
        char *msg = NULL;
        va_start(ap, fmt);
        if (vasprintf(&msg, fmt, ap) < 0)
                msg = NULL;
        va_end(ap);
        if (!msg)
                return;
        s->events[s->n_events] = *ev;
        s->messages[s->n_events] = msg;
        s->owned[s->n_events] = NULL;
        s->lines[s->n_events] = line;
        s->funcs[s->n_events] = func;
        s->priorities[s->n_events] = priority;
        s->n_events++;
}

/* Adds an id (and, for `rejected`, its reason) to one of the answer's lists; out of memory, the
 * answer says 503 instead (see answer()). Returns the entry, or NULL. */
static struct id_entry *list_add(struct staged *s, struct id_list *l, const char *id,
                                 const char *reason)
{
        if (l->n == l->cap) {
                size_t cap = l->cap ? l->cap * 2 : 4;
                struct id_entry *v = realloc(l->v, cap * sizeof(*v));
                if (!v) {
                        s->out_of_memory = true;
                        return NULL;
                }
                l->v = v;
                l->cap = cap;
        }
        l->v[l->n] = (struct id_entry){.id = id ? id : "", .reason = reason ? reason : "invalid"};
        return &l->v[l->n++];
}

static void intake_clear(struct intake *in)
{
        free(in->keys);
        free(in->until);
        free(in->ids);
        free(in->sources);
        free(in->durations);
        free(in->payloads);
        free(in->id_keys);
        free(in->fresh_keys);
        free(in->fresh_jobs);
        free(in->o_ids);
        free(in->o_states);
        free(in->o_urls);
        free(in->o_errors);
        free(in->o_cids);
        free(in->o_credits);
        free(in->ups);
        *in = (struct intake){0};
}

static int fresh_cmp(const void *a, const void *b)
{
        return strcmp(((const struct fresh *)a)->id, ((const struct fresh *)b)->id);
}

/* Takes id from the turn's answer: 1 if it was new and nobody earlier in the turn took it. */
static int fresh_take(struct fresh *v, size_t n, const char *id)
{
        struct fresh key = {.id = id};
        struct fresh *f = n ? bsearch(&key, v, n, sizeof(*v), fresh_cmp) : NULL;
        if (!f || f->taken)
                return 0;
        f->taken = true;
        return 1;
}

/* The replay memory: 1 if the key is new (now remembered), 0 if seen before, <0 on errors. */
static int replay_remember(struct webhook *w, struct staged *s, uint64_t now)
{
        if (!w->pg)
                return ledger_replay_remember(w->ledger, s->replay_key, s->replay_until, now);
        if (s->replay_repeat)
                return 0;
        return fresh_take(w->reading->fresh_keys, w->reading->n_fresh_keys, s->replay_key);
}

static int upscaled_cmp(const void *a, const void *b)
{
        return strcmp(((const struct upscaled *)a)->id, ((const struct upscaled *)b)->id);
}

static int upscaled_job_cmp(const void *a, const void *b)
{
        return strcmp(((const struct upscaled *)a)->job.upscale_task_id,
                      ((const struct upscaled *)b)->job.upscale_task_id);
}

static struct upscaled *find_upscaled(struct webhook *w, const char *task_id)
{
        struct upscaled key = {.id = task_id};
        if (!w->reading->n_ups)
                return NULL;
        return bsearch(&key, w->reading->ups, w->reading->n_ups, sizeof(key), upscaled_cmp);
}

/* 1 and *ret if an upscale task of this daemon's, 0 if not, <0 on errors. On PostgreSQL, from
 * the turn's close statement's answer. */
static int get_by_upscale(struct webhook *w, const char *task_id, struct job *ret)
{
        if (w->pg) {
                struct upscaled *u = find_upscaled(w, task_id);
                if (!u)
                        return 0;
                *ret = u->job;
                return 1;
        }
        return ledger_get_by_upscale(w->ledger, task_id, ret);
}

/* 1 if the job is new (recorded now), 0 if its creation id was known, <0 on errors. */
static int insert_job(struct webhook *w, const char *cid, const struct note_task *t,
                      unsigned duration, uint64_t now)
{
        if (!w->pg)
                return ledger_insert_job(w->ledger, cid, t->id, duration, t->payload, now);
        return fresh_take(w->reading->fresh_jobs, w->reading->n_fresh_jobs, cid);
}

/* Whether a task's creations become jobs (when not an upscale of ours), as stage_apply decides. */
static bool wants_jobs(const struct staged *s, const struct note_task *t)
{
        return t->id && !t->is_upscale && !s->callback && note_task_succeeded(t) && !t->skip_reason;
}

static unsigned job_duration(const struct webhook *w, const struct note_task *t)
{
        if (!w->cfg->duration_source)
                return (unsigned)w->cfg->duration;
        return t->source_duration ? t->source_duration : UPSCALE_DURATION_FALLBACK;
}

/* An upscale's outcome (a callback): closes the job it belongs to exactly as a poll's answer
 * would (dispatcher_close_job); a task still running changes nothing. Returns <0 only on ledger
 * errors or when out of memory. */
static int stage_outcome(struct webhook *w, struct staged *s, const struct note_task *t,
                         const struct job *j, uint64_t now)
{
        list_add(s, &s->ignored, t->id, NULL);
        struct upstream_poll p;
        upstream_outcome_from_note(t, &p);
        /* The official callback carries the upscale's cost: the spend guard counts it, even while
         * the task still runs. (PostgreSQL: PGSCHEMA_CREDITS_BY_UPSCALE, stage_outcomes.) */
        int r = w->pg ? 0 : dispatcher_note_credits(w->ledger, j, p.credits);
        if (r < 0)
                return r;
        if (p.state != UPSTREAM_TASK_SUCCESS && p.state != UPSTREAM_TASK_FAILED)
                return 0; /* still running: nothing to record */
        struct upscaled *u = w->pg ? find_upscaled(w, t->id) : NULL;
        if (w->pg) {
                /* Closed in the database by the turn's statement, once: a second report of the
                 * same task (or a job already final) changes nothing, as on SQLite. */
                if (!u || !u->closed || u->taken)
                        return 0;
                u->taken = true;
        }
        struct job_entry **closed = realloc(s->closed, (s->n_closed + 1) * sizeof(*closed));
        if (!closed)
                return -ENOMEM;
        s->closed = closed;
        struct job_entry *e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        if (u) {
                struct job now_closed = u->job;
                dispatcher_outcome_entry(w->dispatcher, &now_closed, OUTCOME_VIA_CALLBACK, 0, e);
                r = 1;
        } else
                r = dispatcher_close_job(w->dispatcher, j, &p, OUTCOME_VIA_CALLBACK, 0, now, e);
        if (r <= 0) {
                free(e);
                return r;
        }
        s->closed[s->n_closed++] = e;
        w->m->notifications[NOTE_OUTCOME]++;
        return 0;
}

/* Applies one staged notification to the ledger (inside the transaction). */
static int stage_apply(struct webhook *w, struct staged *s, uint64_t now)
{
        int r;
        if (s->replay_key) {
                r = replay_remember(w, s, now);
                if (r < 0)
                        return r;
                if (r == 0) {
                        /* A standard-webhooks redelivery is answered 2xx and does nothing; a vidu
                         * nonce seen before is a replayed request and refused. */
                        s->replayed = true;
                        s->replayed_nonce = strncmp(s->replay_key, "vidu:", 5) == 0;
                        w->m->replays++;
                        return 0;
                }
        }
        for (size_t i = 0; i < s->note->n_tasks; i++) {
                const struct note_task *t = &s->note->tasks[i];
                if (!t->id) {
                        list_add(s, &s->rejected, NULL, t->id_error);
                        w->m->notifications[NOTE_REJECTED_ID]++;
                        continue;
                }
                for (size_t k = 0; k < t->n_rejected; k++) {
                        list_add(s, &s->rejected, t->rejected_ids[k], t->rejected_reasons[k]);
                        w->m->notifications[NOTE_REJECTED_ID]++;
                }
                struct job j;
                r = get_by_upscale(w, t->id, &j);
                if (r < 0)
                        return r;
                if (r > 0) {
                        r = stage_outcome(w, s, t, &j, now);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (t->is_upscale || s->callback || !note_task_succeeded(t)) {
                        /* Not finished, a failed generation, or an upscale that is not ours (a
                         * callback's task is an upscale whatever it says: never a new job). */
                        list_add(s, &s->ignored, t->id, NULL);
                        w->m->notifications[NOTE_IGNORED]++;
                        struct job_event ev = {.message_id = MSGID_IGNORED,
                                               .source_task_id = t->id};
                        if (s->callback)
                                add_event(s, LOG_NOTICE, &ev,
                                          "Callback for upscale task %s (%s), which this daemon "
                                          "does not know; ignored",
                                          t->id, t->state ? t->state : "no state");
                        else if (note_task_failed(t))
                                add_event(s, LOG_NOTICE, &ev,
                                          "Task %s failed upstream (%s); nothing to upscale", t->id,
                                          t->err_code ? t->err_code : "no error code");
                        else if (t->is_upscale)
                                add_event(s, LOG_INFO, &ev,
                                          "Upscale task %s (%s) is not one this daemon submitted; "
                                          "ignored",
                                          t->id, t->state ? t->state : "no state");
                        else
                                add_event(s, LOG_DEBUG, &ev,
                                          "Task %s is %s; nothing to do until it succeeds", t->id,
                                          t->state ? t->state : "without a state");
                        continue;
                }
                if (t->skip_reason) {
                        /* Not selected: no job, so another notification under other rules may
                         * still trigger it. */
                        list_add(s, &s->ignored, t->id, NULL);
                        w->m->notifications[NOTE_SKIPPED]++;
                        struct job_event ev = {.message_id = MSGID_SKIPPED,
                                               .source_task_id = t->id,
                                               .job_state = "skipped",
                                               .select_rule = t->skip_rule};
                        add_event(s, LOG_DEBUG, &ev, "Task %s not upscaled: %s", t->id,
                                  t->skip_reason);
                        continue;
                }
                for (size_t k = 0; k < t->n_skipped; k++) {
                        list_add(s, &s->ignored, t->skipped_ids[k], NULL);
                        w->m->notifications[NOTE_SKIPPED]++;
                        struct job_event ev = {.message_id = MSGID_SKIPPED,
                                               .creation_id = t->skipped_ids[k],
                                               .source_task_id = t->id,
                                               .job_state = "skipped",
                                               .select_rule = "select.creation_types"};
                        add_event(s, LOG_DEBUG, &ev,
                                  "Creation %s of task %s not upscaled: creation type '%.64s' is "
                                  "not in select.creation_types",
                                  t->skipped_ids[k], t->id, t->skipped_types[k]);
                }
                if (t->payload_error && t->n_creations > 0) {
                        struct job_event ev = {.source_task_id = t->id};
                        add_event(s, LOG_NOTICE, &ev,
                                  "The payload of task %s is not kept (%s); its upscales carry "
                                  "one naming their creation instead",
                                  t->id, t->payload_error);
                }
                unsigned duration = job_duration(w, t);
                for (size_t k = 0; k < t->n_creations; k++) {
                        const char *cid = t->creation_ids[k];
                        r = insert_job(w, cid, t, duration, now);
                        if (r < 0)
                                return r;
                        if (r) {
                                /* Its entry is written (or owed) after the commit, from the
                                 * list: dispatcher_accepted. */
                                struct id_entry *e = list_add(s, &s->accepted, cid, NULL);
                                if (e)
                                        e->task = t->id;
                                s->accepted_at = now;
                                w->m->notifications[NOTE_ACCEPTED]++;
                        } else {
                                struct job_event ev = {
                                    .message_id = MSGID_DUPLICATE,
                                    .creation_id = cid,
                                    .source_task_id = t->id,
                                    .job_state = "duplicate",
                                };
                                list_add(s, &s->duplicate, cid, NULL);
                                w->m->notifications[NOTE_DUPLICATE]++;
                                add_event(
                                    s, LOG_INFO, &ev,
                                    "Creation %s of task %s already known; not upscaled again", cid,
                                    t->id);
                        }
                }
        }
        return 0;
}

static size_t list_max(const struct id_list *l, bool reasons)
{
        size_t n = 2;
        for (size_t i = 0; i < l->n; i++)
                n += jsonw_string_max(l->v[i].id) + 1 +
                     (reasons ? jsonw_string_max(l->v[i].reason) + sizeof("{\"id\":,\"reason\":}")
                              : 0);
        return n;
}

static void put_list(char *dst, size_t *o, const char *key, const struct id_list *l, bool reasons)
{
        jsonw_raw(dst, o, key);
        jsonw_raw(dst, o, "[");
        for (size_t i = 0; i < l->n; i++) {
                if (i > 0)
                        jsonw_raw(dst, o, ",");
                if (reasons)
                        jsonw_raw(dst, o, "{\"id\":");
                jsonw_string(dst, o, l->v[i].id);
                if (reasons) {
                        jsonw_raw(dst, o, ",\"reason\":");
                        jsonw_string(dst, o, l->v[i].reason);
                        jsonw_raw(dst, o, "}");
                }
        }
        jsonw_raw(dst, o, "]");
}

/* The answer's text, written directly (json-c's objects and their serialization cost more than
 * the insert of the job); the same bytes and key order as json-c's plain output. NULL when out
 * of memory. */
static char *format_answer(const struct staged *s)
{
        size_t cap = list_max(&s->accepted, false) + list_max(&s->duplicate, false) +
                     list_max(&s->ignored, false) + list_max(&s->rejected, true) + 64;
        char *text = malloc(cap);
        if (!text)
                return NULL;
        size_t o = 0;
        put_list(text, &o, "{\"accepted\":", &s->accepted, false);
        put_list(text, &o, ",\"duplicate\":", &s->duplicate, false);
        put_list(text, &o, ",\"ignored\":", &s->ignored, false);
        put_list(text, &o, ",\"rejected\":", &s->rejected, true);
        jsonw_raw(text, &o, "}");
        text[o] = 0;
        return text;
}

static void answer(struct webhook *w, struct staged *s)
{
        if (s->replayed && s->replayed_nonce) {
                s->status = 401;
                http_request_answer(s->req, s->status, "{\"error\":\"unauthorized\"}", NULL);
        } else if (s->replayed) {
                s->status = 200;
                http_request_answer(s->req, s->status, "{\"replayed\":true}", NULL);
        } else {
                _cleanup_free_ char *text = s->out_of_memory ? NULL : format_answer(s);
                s->status = s->accepted.n > 0 ? 202 : 200;
                if (text)
                        http_request_answer(s->req, s->status, text, NULL);
                else {
                        /* What was recorded is durable; the sender's retry finds it duplicate. */
                        s->status = 503;
                        http_request_answer(s->req, s->status, "{\"error\":\"out of memory\"}",
                                            "1");
                }
        }
        http_request_resume(s->req);
}

static void answer_unavailable(struct staged *s, const char *why)
{
        char body[256];
        snprintf(body, sizeof(body), "{\"error\":\"%s\"}", why);
        http_request_answer(s->req, 503, body, "5");
        http_request_resume(s->req);
}

static void log_auth_failure(struct webhook *w, struct http_request *req, const char *reason);

static int on_probe(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct webhook *w = userdata;
        if (ledger_probe_writable(w->ledger, now_realtime_usec()) >= 0) {
                w->ledger_ok = true;
                log_full(LOG_NOTICE, MSGID_LEDGER_ERROR,
                         "Ledger accepts writes again; notifications are accepted");
                dispatcher_kick(w->dispatcher);
                return 0;
        }
        sd_event_source_set_time(src, usec + LEDGER_PROBE_USEC);
        sd_event_source_set_enabled(src, SD_EVENT_ONESHOT);
        return 0;
}

static void ledger_failed(struct webhook *w, int r, size_t n)
{
        if (w->ledger_ok)
                log_full(
                    LOG_ERR, MSGID_LEDGER_ERROR,
                    "Ledger cannot commit (%s): %s; answering 503 to %zu request(s) until it can",
                    strerror(-r), ledger_errmsg(w->ledger), n);
        w->ledger_ok = false;
        event_timer_in(w->probe_timer, LEDGER_PROBE_USEC);
}

/* PostgreSQL: whether the database takes notifications follows the connection (the manager's
 * webhook_set_available); a turn that failed on a live one is logged, once until one succeeds. */
static void pg_turn_failed(struct webhook *w, int r, size_t n)
{
        if (w->turn_failed || r == -ENOTCONN)
                return;
        w->turn_failed = true;
        log_full(LOG_ERR, MSGID_LEDGER_ERROR,
                 "Ledger commit failed (%s%s); answered 503 to %zu request(s)", strerror(-r),
                 r == -ECONNRESET ? ": the connection went; if during COMMIT, its outcome is "
                                    "unknown and a sender's retry is answered duplicate"
                                  : "",
                 n);
}

static void log_auth_failure(struct webhook *w, struct http_request *req, const char *reason);

static int writer_apply(void *userdata, uint64_t now)
{
        struct webhook *w = userdata;
        bool any_new = false;
        /* The list stays put until writer_done: nothing can stage in between (txn.h). */
        for (struct staged *s = w->head; s; s = s->next) {
                size_t before = s->accepted.n;
                int r = stage_apply(w, s, now);
                if (r < 0)
                        return r;
                if (s->accepted.n > before)
                        any_new = true;
        }
        /* New jobs: the dispatcher, later in the same turn, may mark them `submitting` in this
         * very commit and send them as soon as it is durable. */
        if (any_new)
                dispatcher_kick(w->dispatcher);
        return 0;
}

/* PostgreSQL: every task of the turn may be an upscale of ours (a callback, or a notification
 * of one); what each reports goes in one close statement after the intake, which closes the jobs
 * whose outcome is final and says which tasks are ours. */
static int stage_outcomes(struct lane *l, struct txn_batch *b)
{
        struct intake *in = &l->intake;
        size_t n = 0;
        for (struct staged *s = l->flight; s; s = s->next)
                for (size_t i = 0; i < s->note->n_tasks; i++)
                        n += s->note->tasks[i].id ? 1 : 0;
        if (n == 0)
                return 0;
        _cleanup_free_ const char **ids = calloc(n, sizeof(*ids));
        _cleanup_free_ const char **states = calloc(n, sizeof(*states));
        _cleanup_free_ const char **urls = calloc(n, sizeof(*urls));
        _cleanup_free_ const char **errors = calloc(n, sizeof(*errors));
        if (!ids || !states || !urls || !errors)
                return -ENOMEM;
        size_t k = 0;
        for (struct staged *s = l->flight; s; s = s->next)
                for (size_t i = 0; i < s->note->n_tasks; i++) {
                        const struct note_task *t = &s->note->tasks[i];
                        if (!t->id)
                                continue;
                        ids[k] = t->id;
                        if (note_task_succeeded(t)) {
                                states[k] = "succeeded";
                                urls[k] = isempty(t->result_url) ? NULL : t->result_url;
                        } else if (note_task_failed(t)) {
                                states[k] = "failed";
                                errors[k] = isempty(t->err_code) ? "failed" : t->err_code;
                        }
                        k++;
                }
        if (pgschema_text_array(ids, k, &in->o_ids) < 0 ||
            pgschema_text_array(states, k, &in->o_states) < 0 ||
            pgschema_text_array(urls, k, &in->o_urls) < 0 ||
            pgschema_text_array(errors, k, &in->o_errors) < 0)
                return -ENOMEM;
        const char *params[] = {in->o_ids, in->o_states, in->o_urls, in->o_errors};
        memcpy(in->o_params, params, sizeof(params));
        in->outcomes = true;
        int r = txn_batch_add(b, PGSCHEMA_CLOSE_BY_UPSCALE, ELEMENTSOF(params), in->o_params);
        if (r < 0)
                return r;
        /* The costs the callbacks carry: the spend guard counts them, also while the task runs
         * (as on SQLite), after the close, in the same batch. */
        _cleanup_free_ char **costs = calloc(n, sizeof(*costs));
        _cleanup_free_ const char **cost_ids = calloc(n, sizeof(*cost_ids));
        if (!costs || !cost_ids)
                return -ENOMEM;
        size_t m = 0;
        for (struct staged *s = l->flight; s; s = s->next)
                for (size_t i = 0; i < s->note->n_tasks; i++) {
                        const struct note_task *t = &s->note->tasks[i];
                        struct upstream_poll p;
                        if (!t->id)
                                continue;
                        upstream_outcome_from_note(t, &p);
                        if (p.credits < 0)
                                continue;
                        if (asprintf(&costs[m], "%lld", (long long)p.credits) < 0) {
                                costs[m] = NULL;
                                r = -ENOMEM;
                                break;
                        }
                        cost_ids[m++] = t->id;
                }
        if (r >= 0 && m > 0 &&
            (pgschema_text_array(cost_ids, m, &in->o_cids) < 0 ||
             pgschema_text_array((const char **)costs, m, &in->o_credits) < 0))
                r = -ENOMEM;
        for (size_t i = 0; i < m; i++)
                free(costs[i]);
        if (r < 0 || m == 0)
                return r;
        in->c_params[0] = in->o_cids;
        in->c_params[1] = in->o_credits;
        return txn_batch_add(b, PGSCHEMA_CREDITS_BY_UPSCALE, 2, in->c_params);
}

/* PostgreSQL: the turn's notifications leave as one intake statement: every replay key, and
 * every creation that would become a job, tagged with the key of the delivery it came in (the
 * statement records none of a replayed delivery's). Which were new comes back in its answer. */
static int writer_stage(void *userdata, struct txn_batch *b, uint64_t now)
{
        struct lane *l = userdata;
        struct webhook *w = l->w;
        struct intake *in = &l->intake;
        intake_clear(in);
        /* What stages from now on waits for the next turn (this lane's or the other's). */
        l->staged_turn = true;
        l->flight = w->head;
        l->n_flight = w->n_staged;
        w->head = w->tail = NULL;
        w->n_staged = 0;
        if (!l->flight)
                return 0; /* the other lane took them */

        size_t n_keys = 0, n_jobs = 0;
        for (struct staged *s = l->flight; s; s = s->next) {
                n_keys += s->replay_key ? 1 : 0;
                for (size_t i = 0; i < s->note->n_tasks; i++)
                        if (wants_jobs(s, &s->note->tasks[i]))
                                n_jobs += s->note->tasks[i].n_creations;
        }
        _cleanup_free_ const char **keys = calloc(n_keys + 1, sizeof(*keys));
        _cleanup_free_ const char **ids = calloc(n_jobs + 1, sizeof(*ids));
        _cleanup_free_ const char **sources = calloc(n_jobs + 1, sizeof(*sources));
        _cleanup_free_ const char **payloads = calloc(n_jobs + 1, sizeof(*payloads));
        _cleanup_free_ const char **id_keys = calloc(n_jobs + 1, sizeof(*id_keys));
        _cleanup_free_ const char **durations = calloc(n_jobs + 1, sizeof(*durations));
        _cleanup_free_ char(*numbers)[UINT_DEC_SIZE] = calloc(n_jobs + 1, sizeof(*numbers));
        if (!keys || !ids || !sources || !payloads || !id_keys || !durations || !numbers)
                return -ENOMEM;
        uint64_t keep = USEC_PER_SEC;
        size_t k = 0, j = 0;
        for (struct staged *s = l->flight; s; s = s->next) {
                if (s->replay_key) {
                        /* The same delivery twice in one turn: the second is its replay, as
                         * on SQLite, and adds nothing. */
                        for (size_t i = 0; i < k && !s->replay_repeat; i++)
                                s->replay_repeat = strcmp(keys[i], s->replay_key) == 0;
                        if (s->replay_repeat)
                                continue;
                        keys[k++] = s->replay_key;
                        if (s->replay_until > now && s->replay_until - now > keep)
                                keep = s->replay_until - now;
                }
                for (size_t i = 0; i < s->note->n_tasks; i++) {
                        const struct note_task *t = &s->note->tasks[i];
                        if (!wants_jobs(s, t))
                                continue;
                        for (size_t c = 0; c < t->n_creations; c++) {
                                ids[j] = t->creation_ids[c];
                                sources[j] = t->id;
                                payloads[j] = t->payload;
                                id_keys[j] = s->replay_key;
                                format_uint(job_duration(w, t), numbers[j]);
                                durations[j] = numbers[j];
                                j++;
                        }
                }
        }
        char until[UINT_DEC_SIZE];
        format_uint(keep, until);
        in->until = strdup(until);
        if (!in->until || pgschema_text_array(keys, k, &in->keys) < 0 ||
            pgschema_text_array(ids, j, &in->ids) < 0 ||
            pgschema_text_array(sources, j, &in->sources) < 0 ||
            pgschema_text_array(durations, j, &in->durations) < 0 ||
            pgschema_text_array(payloads, j, &in->payloads) < 0 ||
            pgschema_text_array(id_keys, j, &in->id_keys) < 0)
                return -ENOMEM;
        const char *params[] = {in->keys,      in->until,    in->ids,    in->sources,
                                in->durations, in->payloads, in->id_keys};
        memcpy(in->params, params, sizeof(params));
        int r = txn_batch_add(b, PGSCHEMA_INTAKE, ELEMENTSOF(params), in->params);
        if (r >= 0)
                r = stage_outcomes(l, b);
        if (r < 0)
                return r;
        /* Creations that may be new: the dispatcher claims in this same turn, after the intake,
         * so a new job can be marked `submitting` in the commit that records it. */
        if (j > 0)
                dispatcher_kick(w->dispatcher);
        return 0;
}

/* PostgreSQL: the committed intake's answer, ('replay', key) and ('job', creation id) rows;
 * each notification is then decided as on SQLite, from what was new. */
static int writer_read(void *userdata, PGresult *const *results, size_t n)
{
        struct lane *l = userdata;
        struct webhook *w = l->w;
        struct intake *in = &l->intake;
        const PGresult *res = n > 0 ? results[0] : NULL;
        if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != 2)
                return -EBADMSG;
        int rows = PQntuples(res);
        in->fresh_keys = calloc(rows + 1, sizeof(struct fresh));
        in->fresh_jobs = calloc(rows + 1, sizeof(struct fresh));
        if (!in->fresh_keys || !in->fresh_jobs)
                return -ENOMEM;
        for (int i = 0; i < rows; i++) {
                const char *kind = PQgetvalue(res, i, 0), *id = PQgetvalue(res, i, 1);
                if (strcmp(kind, "replay") == 0)
                        in->fresh_keys[in->n_fresh_keys++].id = id;
                else
                        in->fresh_jobs[in->n_fresh_jobs++].id = id;
        }
        qsort(in->fresh_keys, in->n_fresh_keys, sizeof(struct fresh), fresh_cmp);
        qsort(in->fresh_jobs, in->n_fresh_jobs, sizeof(struct fresh), fresh_cmp);
        const PGresult *ups = in->outcomes && n > 1 ? results[1] : NULL;
        if (in->outcomes && (!ups || PQresultStatus(ups) != PGRES_TUPLES_OK))
                return -EBADMSG;
        int n_ups = ups ? PQntuples(ups) : 0;
        if (n_ups > 0) {
                in->ups = calloc((size_t)n_ups, sizeof(*in->ups));
                if (!in->ups)
                        return -ENOMEM;
                for (int i = 0; i < n_ups; i++) {
                        struct upscaled *u = &in->ups[in->n_ups];
                        if (pgschema_row_to_job(ups, i, 1, &u->job, NULL) < 0)
                                return -EBADMSG;
                        u->closed = strcmp(PQgetvalue(ups, i, 0), "closed") == 0;
                        in->n_ups++;
                }
                qsort(in->ups, in->n_ups, sizeof(*in->ups), upscaled_job_cmp);
                for (size_t i = 0; i < in->n_ups; i++)
                        in->ups[i].id = in->ups[i].job.upscale_task_id;
        }
        uint64_t now = now_realtime_usec();
        int r = 0;
        w->reading = in;
        for (struct staged *s = l->flight; s && r >= 0; s = s->next)
                r = stage_apply(w, s, now);
        w->reading = NULL;
        /* The answer's strings go with it: nothing may look them up after this. */
        free(in->fresh_keys);
        free(in->fresh_jobs);
        free(in->ups);
        in->fresh_keys = in->fresh_jobs = NULL;
        in->ups = NULL;
        in->n_fresh_keys = in->n_fresh_jobs = in->n_ups = 0;
        return r;
}

/* After the turn: answers list (n requests) and journals what it recorded, or answers 503 to
 * all when the turn failed (r < 0). */
static void finish(struct webhook *w, struct staged *list, size_t n, int r);

static void writer_done(void *userdata, int r)
{
        struct webhook *w = userdata;
        struct staged *list = w->head;
        size_t n = w->n_staged;
        w->head = w->tail = NULL;
        w->n_staged = 0;
        finish(w, list, n, r);
}

/* PostgreSQL: asks for a turn for what is staged, through a lane not in one; with every lane
 * in flight, the first to end takes it (lane_done). */
static void want_lane(struct webhook *w)
{
        for (size_t i = 0; i < N_LANES; i++)
                if (!w->lanes[i].writer.in_turn) {
                        txn_want(w->txn, &w->lanes[i].writer);
                        return;
                }
}

static void lane_done(void *userdata, int r)
{
        struct lane *l = userdata;
        struct webhook *w = l->w;
        struct staged *list;
        size_t n;
        if (l->staged_turn) {
                /* Those staged meanwhile stay for the next turn. */
                list = TAKE_PTR(l->flight);
                n = l->n_flight;
                l->n_flight = 0;
                l->staged_turn = false;
                intake_clear(&l->intake);
        } else {
                /* A turn that could not be sent (no connection): everything staged goes with
                 * it, never recorded. */
                if (r >= 0)
                        r = -EIO;
                list = w->head;
                n = w->n_staged;
                w->head = w->tail = NULL;
                w->n_staged = 0;
        }
        if (list)
                finish(w, list, n, r);
        if (w->head)
                want_lane(w);
}

static void finish(struct webhook *w, struct staged *list, size_t n, int r)
{
        /* The answers leave in this iteration, right after the commit (txn.c runs this from its
         * own event source, never inside libmicrohttpd). */
        struct http_server *server = list ? http_request_server(list->req) : NULL;
        if (r < 0) {
                /* Nothing half-recorded: the whole batch goes, every sender is asked to retry. */
                if (w->pg)
                        pg_turn_failed(w, r, n);
                else
                        ledger_failed(w, r, n);
                for (struct staged *s = list, *next; s; s = next) {
                        next = s->next;
                        answer_unavailable(s, "the ledger cannot record notifications right now");
                        staged_free(s);
                }
                http_server_flush(server);
                return;
        }
        if (w->pg && w->turn_failed) {
                w->turn_failed = false;
                log_full(LOG_NOTICE, MSGID_LEDGER_ERROR,
                         "Ledger commits again; notifications are accepted");
        }
        if (!w->pg && !w->ledger_ok) {
                w->ledger_ok = true;
                sd_event_source_set_enabled(w->probe_timer, SD_EVENT_OFF);
                log_full(LOG_NOTICE, MSGID_LEDGER_ERROR,
                         "Ledger accepts writes again; notifications are accepted");
        }
        for (struct staged *s = list, *next; s; s = next) {
                next = s->next;
                answer(w, s);
                if (s->replayed_nonce) {
                        log_auth_failure(w, s->req,
                                         "x-request-nonce was used before (a replayed request)");
                }
                /* Accepted first: a creation listed twice in one notification is accepted, then
                 * a duplicate. */
                for (size_t i = 0; i < s->accepted.n; i++)
                        dispatcher_accepted(w->dispatcher, s->accepted.v[i].id,
                                            s->accepted.v[i].task, s->accepted_at);
                for (size_t i = 0; i < s->n_events; i++) {
                        dispatcher_settle_accepted(w->dispatcher, s->events[i].creation_id);
                        journal_job_internal(s->priorities[i], __FILE__, s->lines[i], s->funcs[i],
                                             &s->events[i], "%s", s->messages[i]);
                }
                for (size_t i = 0; i < s->n_closed; i++)
                        dispatcher_write_entry(w->dispatcher, s->closed[i]);
                staged_free(s);
        }
        http_server_flush(server);
}

static void log_auth_failure(struct webhook *w, struct http_request *req, const char *reason)
{
        uint64_t now = now_monotonic_usec();
        w->m->auth_failures++;
        /* At most one entry per interval, so a flood cannot flood the journal too. */
        if (w->auth_log_last && now - w->auth_log_last < AUTH_LOG_INTERVAL_USEC) {
                w->auth_suppressed++;
                return;
        }
        log_full(LOG_WARNING, MSGID_AUTH_FAILED, "Refused a notification from %s: %s%s",
                 http_request_peer(req), reason,
                 w->auth_suppressed ? " (and earlier failures not logged)" : "");
        w->auth_log_last = now;
        w->auth_suppressed = 0;
}

void webhook_handle(struct http_request *req, void *userdata)
{
        struct webhook *w = userdata;
        const struct config *cfg = w->cfg;
        size_t len;
        const uint8_t *body = http_request_body(req, &len);
        char err[256];

        struct auth_request ar = {
            .method = http_request_method(req),
            .path = http_request_path(req),
            .query = http_request_query(req),
            .header = http_request_header,
            .userdata = req,
            .body = body,
            .body_len = len,
            .now_usec = now_realtime_usec(),
        };
        struct auth_outcome ao = {0};
        if (auth_verify(cfg, &ar, &ao) < 0) {
                http_request_answer(req, 503, "{\"error\":\"out of memory\"}", "1");
                return;
        }
        if (ao.result != AUTH_OK) {
                log_auth_failure(w, req, ao.reason ? ao.reason : "not authenticated");
                snprintf(err, sizeof(err), "{\"error\":\"unauthorized\"}");
                http_request_answer(req, 401, err, NULL);
                auth_outcome_clear(&ao);
                return;
        }

        struct notification_limits lim = {
            .max_depth = cfg->max_json_depth,
            .max_tasks = cfg->max_tasks,
            .max_creations = cfg->max_creations,
            .select = &cfg->select,
        };
        struct notification *note = NULL;
        const char *why = NULL;
        int r = notification_parse((const char *)body, len, &lim, &note, &why);
        if (r < 0) {
                json_object *o = json_object_new_object();
                json_object_object_add(
                    o, "error", json_object_new_string(why ? why : "malformed notification"));
                http_request_answer(req, r == -E2BIG ? 413 : 400,
                                    json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN),
                                    NULL);
                json_object_put(o);
                log_full(LOG_NOTICE, MSGID_REJECTED, "Rejected a notification from %s: %s",
                         http_request_peer(req), why ? why : "malformed");
                auth_outcome_clear(&ao);
                return;
        }
        if (!w->ledger_ok) {
                notification_free(note);
                auth_outcome_clear(&ao);
                http_request_answer(
                    req, 503, "{\"error\":\"the ledger cannot record notifications right now\"}",
                    "5");
                return;
        }
        struct staged *s = calloc(1, sizeof(*s));
        if (!s) {
                staged_free(s);
                notification_free(note);
                auth_outcome_clear(&ao);
                http_request_answer(req, 503, "{\"error\":\"out of memory\"}", "1");
                return;
        }
        s->req = req;
        s->note = note;
        s->callback = upstream_is_callback(http_request_query(req));
        s->replay_key = TAKE_PTR(ao.replay_key);
        s->replay_until = ao.replay_until_usec;
        auth_outcome_clear(&ao);
        if (w->tail)
                w->tail->next = s;
        else
                w->head = s;
        w->tail = s;
        w->n_staged++;
        http_request_suspend(req);
        if (!w->pg)
                txn_want(w->txn, &w->writer);
        else
                want_lane(w);
}

int webhook_new(sd_event *event, struct ledger *ledger, struct txn *txn, const struct config *cfg,
                struct metrics *metrics, struct dispatcher *dispatcher, struct webhook **ret)
{
        struct webhook *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->event = sd_event_ref(event);
        w->ledger = ledger;
        w->cfg = cfg;
        w->m = metrics;
        w->dispatcher = dispatcher;
        w->ledger_ok = true;
        w->txn = txn;
        w->writer = (struct txn_writer){
            .apply = writer_apply, .done = writer_done, .userdata = w, .order = 0};
        int r =
            sd_event_add_time(event, &w->probe_timer, CLOCK_MONOTONIC, UINT64_MAX, 0, on_probe, w);
        if (r < 0) {
                webhook_free(w);
                return r;
        }
        sd_event_source_set_enabled(w->probe_timer, SD_EVENT_OFF);
        txn_add_writer(txn, &w->writer);
        *ret = w;
        return 0;
}

int webhook_new_pg(sd_event *event, struct txn *txn, const struct config *cfg,
                   struct metrics *metrics, struct dispatcher *dispatcher, struct webhook **ret)
{
        struct webhook *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->event = sd_event_ref(event);
        w->cfg = cfg;
        w->m = metrics;
        w->pg = true;
        w->dispatcher = dispatcher;
        w->ledger_ok = false;
        w->txn = txn;
        for (size_t i = 0; i < N_LANES; i++) {
                struct lane *l = &w->lanes[i];
                l->w = w;
                l->writer = (struct txn_writer){.stage = writer_stage,
                                                .read = writer_read,
                                                .done = lane_done,
                                                .userdata = l,
                                                .order = 0};
                txn_add_writer(txn, &l->writer);
        }
        *ret = w;
        return 0;
}

void webhook_set_available(struct webhook *w, bool available)
{
        w->ledger_ok = available;
}

struct webhook *webhook_free(struct webhook *w)
{
        if (!w)
                return NULL;
        staged_free_list(w->head);
        if (w->pg)
                for (size_t i = 0; i < N_LANES; i++) {
                        staged_free_list(w->lanes[i].flight);
                        intake_clear(&w->lanes[i].intake);
                        txn_remove_writer(w->txn, &w->lanes[i].writer);
                }
        else
                txn_remove_writer(w->txn, &w->writer);
        sd_event_source_disable_unref(w->probe_timer);
        sd_event_unref(w->event);
        free(w);
        return NULL;
}

void webhook_set_config(struct webhook *w, const struct config *cfg)
{
        w->cfg = cfg;
}

bool webhook_ledger_ok(const struct webhook *w)
{
        return w->ledger_ok;
}

size_t webhook_staged(const struct webhook *w)
{
        size_t n = w->n_staged;
        for (size_t i = 0; i < N_LANES; i++)
                n += w->lanes[i].n_flight;
        return n;
}
