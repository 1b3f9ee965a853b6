/* events.c: delivers the outbox: due events POSTed with their Standard Webhooks signature by a
 * curl multi of their own (events.concurrency), each attempt's outcome recorded in the shared
 * turn, the journal written after the commit. Nothing here waits: a receiver that is down or
 * slow costs a few idle connections, never the webhook or the submissions. On PostgreSQL
 * (events_new_pg) the due events are claimed in the turn's batch (FOR UPDATE SKIP LOCKED, their
 * next_at moved past the attempt), so of several instances one sends each. */
#include "events.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "auth.h"
#include "backoff.h"
#include "event.h"
#include "httpc.h"
#include "journal.h"
#include "pgschema.h"
#include "util.h"

/* After the turn's commit (txn.c runs at NORMAL + 10). */
#define PUMP_PRIORITY     (SD_EVENT_PRIORITY_NORMAL + 20)
#define LEDGER_RETRY_USEC (1 * USEC_PER_SEC)
#define PURGE_INTERVAL    (60 * USEC_PER_SEC)
#define PURGE_BATCH       500
#define DUE_MAX           64
#define PURGE_BATCH_STR   "500"
#define OTHERS_CLAIM_USEC (50 * USEC_PER_MSEC)

struct delivery {
        struct events *ev;
        struct ledger_event e; /* with its body; e.state etc. hold the outcome once decided */
        enum job_state job_state;
        long status;
        char error[JOB_ERROR_SIZE];
        bool saved; /* the turn recorded the outcome */
        /* PostgreSQL: PGSCHEMA_EVENT_UPDATE's parameters */
        char p_attempts[UINT_DEC_SIZE], p_next_at[UINT_DEC_SIZE], p_status[UINT_DEC_SIZE];
        const char *params[6];
        struct delivery *next;
};

struct events {
        sd_event *event;
        struct ledger *ledger;
        struct txn *txn;
        const struct config *cfg;
        struct metrics *m;
        struct httpc *httpc;
        struct txn_writer writer;
        sd_event_source *pump;  /* after a turn that wrote events, or an answer */
        sd_event_source *timer; /* the next pending event's next_at */
        sd_event_source *purge_timer;
        struct delivery *in_flight; /* sent, not answered */
        struct delivery *done;      /* answered, recorded by the next turn */
        struct delivery *recording; /* answered, in the turn under way */
        size_t n_in_flight;
        bool purge;
        bool ledger_failing;
        /* PostgreSQL (ledger is NULL): what the turn in flight holds, and its parameters. */
        bool pg;
        bool claim_wanted; /* look for due events in the next turn (a timer, a kick) */
        bool states_dirty; /* meta 'event_states' to write */
        bool states_staged, purge_staged, claim_staged;
        unsigned states_written; /* what this instance last wrote there */
        char p_claim_n[UINT_DEC_SIZE], p_lease[UINT_DEC_SIZE], p_keep[UINT_DEC_SIZE],
            p_states[UINT_DEC_SIZE], p_states_sent[UINT_DEC_SIZE];
        const char *claim_params[2], *purge_params[2], *states_params[1];
};

static uint32_t random_u32(void)
{
        uint32_t v = 0;
        if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v))
                v = (uint32_t)now_monotonic_usec();
        return v;
}

static bool enabled(const struct events *ev)
{
        return !isempty(ev->cfg->events_url) && ev->cfg->n_events_secrets > 0;
}

static void wake(struct events *ev)
{
        if (ev->pump && !ev->ledger_failing)
                sd_event_source_set_enabled(ev->pump, SD_EVENT_ONESHOT);
}

static size_t free_slots(const struct events *ev)
{
        return ev->cfg->events_concurrency > ev->n_in_flight
                   ? ev->cfg->events_concurrency - ev->n_in_flight
                   : 0;
}

void events_kick(struct events *ev)
{
        if (!ev)
                return;
        ev->claim_wanted = true; /* PostgreSQL: ask the database (another's transition, say) */
        wake(ev);
}

static void on_event_written(void *userdata)
{
        wake(userdata);
}

static void deliveries_free(struct delivery *d)
{
        while (d) {
                struct delivery *next = d->next;
                ledger_event_clear(&d->e);
                free(d);
                d = next;
        }
}

static void unlink_delivery(struct delivery **head, struct delivery *d)
{
        for (struct delivery **p = head; *p; p = &(*p)->next)
                if (*p == d) {
                        *p = d->next;
                        d->next = NULL;
                        return;
                }
}

static bool busy_with(const struct events *ev, const char *id)
{
        for (const struct delivery *d = ev->in_flight; d; d = d->next)
                if (strcmp(d->e.id, id) == 0)
                        return true;
        for (const struct delivery *d = ev->done; d; d = d->next)
                if (strcmp(d->e.id, id) == 0)
                        return true;
        return false;
}

/* Decides what the attempt means for the event: delivered, again at next_at, or dead. */
static void decide(struct events *ev, struct delivery *d, const struct httpc_response *resp,
                   uint64_t now)
{
        const struct config *cfg = ev->cfg;
        struct ledger_event *e = &d->e;
        bool answered = resp->transport == UPSTREAM_TRANSPORT_OK;
        d->status = answered ? resp->status : 0;
        e->attempts++;
        e->http_status = (int)d->status;
        enum event_verdict v = event_classify(d->status);
        if (v == EVENT_DELIVERED) {
                e->state = LEDGER_EVENT_DELIVERED;
                e->error[0] = 0;
                return;
        }
        if (!answered)
                snprintf(d->error, sizeof(d->error), "%s",
                         resp->transport_error ? resp->transport_error : "no answer");
        else if (d->status >= 300 && d->status <= 399)
                snprintf(d->error, sizeof(d->error), "HTTP %ld (redirects are not followed)",
                         d->status);
        else
                snprintf(d->error, sizeof(d->error), "HTTP %ld", d->status);
        job_set_field(e->error, sizeof(e->error), d->error);
        if (v == EVENT_REFUSED) {
                e->state = LEDGER_EVENT_DEAD;
                return;
        }
        uint64_t deadline = e->since + cfg->events_max_age;
        if (now >= deadline) {
                e->state = LEDGER_EVENT_DEAD;
                snprintf(d->error, sizeof(d->error), "undelivered after events.max_age: %.200s",
                         e->error);
                job_set_field(e->error, sizeof(e->error), d->error);
                return;
        }
        uint64_t delay =
            backoff_delay(e->attempts, cfg->initial_delay, cfg->max_delay, random_u32());
        uint64_t after = 0;
        if (resp->retry_after && backoff_parse_retry_after(resp->retry_after, now, &after) >= 0 &&
            after > delay)
                delay = after > cfg->max_delay ? cfg->max_delay : after;
        e->next_at = now + delay;
        if (e->next_at > deadline)
                e->next_at = deadline; /* one last try at the limit */
}

static void on_answer(const struct httpc_response *resp, void *userdata)
{
        struct delivery *d = userdata;
        struct events *ev = d->ev;
        unlink_delivery(&ev->in_flight, d);
        ev->n_in_flight--;
        metrics_observe(&ev->m->event_attempt_seconds, (double)resp->elapsed_usec / 1e6);
        decide(ev, d, resp, now_realtime_usec());
        d->next = ev->done;
        ev->done = d;
        txn_want(ev->txn, &ev->writer);
}

/* Signs and sends one event; the headers are the request's own. */
static int send_one(struct events *ev, struct delivery *d)
{
        const struct config *cfg = ev->cfg;
        char ts[UINT_DEC_SIZE], sig[64];
        format_uint(now_realtime_usec() / USEC_PER_SEC, ts);
        int r = auth_standard_webhooks_sign(cfg->events_secrets[0].value, d->e.id, ts,
                                            (const uint8_t *)d->e.body, strlen(d->e.body), sig,
                                            sizeof(sig));
        if (r < 0)
                return r;
        char h_id[32 + LEDGER_EVENT_ID_SIZE], h_ts[48], h_sig[96];
        snprintf(h_id, sizeof(h_id), "webhook-id: %s", d->e.id);
        snprintf(h_ts, sizeof(h_ts), "webhook-timestamp: %s", ts);
        snprintf(h_sig, sizeof(h_sig), "webhook-signature: %s", sig);
        const char *const headers[] = {h_id, h_ts, h_sig, NULL};
        bool unix_socket = strncmp(cfg->events_url, "unix:", 5) == 0;
        struct httpc_request req = {
            .method = "POST",
            .url = unix_socket ? "http://localhost/" : cfg->events_url,
            .body = d->e.body,
            .timeout_usec = cfg->events_timeout,
            .connect_timeout_usec = cfg->events_timeout,
            .extra_headers = headers,
            .unix_socket = unix_socket ? cfg->events_url + 5 : NULL,
        };
        return httpc_start(ev->httpc, &req, on_answer, d);
}

/* Sends e (taken over: its body is the delivery's now); 0, or -errno with e cleared. */
static int start(struct events *ev, struct ledger_event *e)
{
        struct delivery *d = calloc(1, sizeof(*d));
        if (!d) {
                ledger_event_clear(e);
                return -ENOMEM;
        }
        d->ev = ev;
        d->e = *e;
        int st = event_state_for_type(d->e.type);
        d->job_state = st < 0 ? JOB_DEAD : (enum job_state)st;
        int r = send_one(ev, d);
        if (r < 0) {
                log_warning("Cannot send event %s: %s", d->e.id, strerror(-r));
                deliveries_free(d);
                return r;
        }
        d->next = ev->in_flight;
        ev->in_flight = d;
        ev->n_in_flight++;
        return 0;
}

static void arm_timer(struct events *ev, uint64_t now)
{
        uint64_t next;
        int r = ledger_events_next_due(ev->ledger, &next);
        if (r <= 0) {
                sd_event_source_set_enabled(ev->timer, SD_EVENT_OFF);
                return;
        }
        /* Due already: everything due is in flight, or every slot is busy; an answer wakes us. */
        if (next <= now && ev->n_in_flight > 0) {
                sd_event_source_set_enabled(ev->timer, SD_EVENT_OFF);
                return;
        }
        sd_event_source_set_time(ev->timer, next > now ? next : now + LEDGER_RETRY_USEC);
        sd_event_source_set_enabled(ev->timer, SD_EVENT_ONESHOT);
}

/* Between turns (no transaction open): starts what is due, as slots allow. */
static int on_pump(sd_event_source *s, void *userdata)
{
        struct events *ev = userdata;
        if (ev->pg) {
                /* The turn claims what is due; this only asks for one when there is work. */
                if (ev->ledger_failing)
                        return 0;
                if (ev->done || ev->purge || ev->states_dirty ||
                    (ev->claim_wanted && enabled(ev) && free_slots(ev) > 0))
                        txn_want(ev->txn, &ev->writer);
                return 0;
        }
        if (!enabled(ev) || ev->ledger_failing)
                return 0;
        uint64_t now = now_realtime_usec();
        size_t slots = free_slots(ev);
        if (slots > 0) {
                struct ledger_event due[DUE_MAX];
                size_t want = slots + ev->n_in_flight;
                int n = ledger_events_due(ev->ledger, now, due, want > DUE_MAX ? DUE_MAX : want);
                if (n < 0)
                        log_warning("Cannot read the events outbox: %s", ledger_errmsg(ev->ledger));
                for (int i = 0; i < n; i++) {
                        if (slots == 0 || busy_with(ev, due[i].id)) {
                                ledger_event_clear(&due[i]);
                                continue;
                        }
                        if (start(ev, &due[i]) >= 0)
                                slots--;
                }
                httpc_send_now(ev->httpc);
        }
        arm_timer(ev, now);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct events *ev = userdata;
        ev->ledger_failing = false;
        ev->claim_wanted = true;
        wake(ev);
        return 0;
}

static int on_purge_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct events *ev = userdata;
        ev->purge = true;
        txn_want(ev->txn, &ev->writer);
        sd_event_source_set_time(s, usec + PURGE_INTERVAL);
        return 0;
}

static int writer_apply(void *userdata, uint64_t now)
{
        struct events *ev = userdata;
        ev->recording = TAKE_PTR(ev->done);
        for (struct delivery *d = ev->recording; d; d = d->next) {
                int r = ledger_event_update(ev->ledger, &d->e, now);
                if (r < 0)
                        return r;
                d->saved = r > 0;
        }
        if (ev->purge) {
                /* Small batches, one a turn, so a large backlog never holds a turn long. */
                uint64_t keep = ev->cfg->events_keep;
                int r = ledger_events_purge(ev->ledger, now > keep ? now - keep : 0, PURGE_BATCH);
                if (r < 0)
                        return r;
                ev->purge = r == PURGE_BATCH;
        }
        return 0;
}

static void log_outcome(struct events *ev, const struct delivery *d)
{
        const struct ledger_event *e = &d->e;
        struct job_event je = {
            .creation_id = e->creation_id,
            .event_id = e->id,
            .event_type = e->type,
        };
        if (e->state == LEDGER_EVENT_DELIVERED) {
                je.message_id = MSGID_EVENT_DELIVERED;
                log_job(LOG_INFO, &je,
                        "Event %s (%s) for %s delivered: HTTP %ld after %u attempt%s", e->id,
                        e->type, e->creation_id, d->status, e->attempts,
                        e->attempts == 1 ? "" : "s");
        } else {
                je.message_id = MSGID_EVENT_DEAD;
                log_job(LOG_ERR, &je,
                        "Event %s (%s) for %s given up after %u attempt%s: %s; send it again with "
                        "vidu-upscaled events retry %s",
                        e->id, e->type, e->creation_id, e->attempts, e->attempts == 1 ? "" : "s",
                        e->error, e->id);
        }
}

/* PostgreSQL: the outcomes answered since the last turn, the mask when it changed, a purge
 * batch when one is due, and a claim of what is due (with slots free) plus when the next is:
 * the claim joins every turn another writer makes (a passenger; but the one pipelined behind
 * a turn it is in), so an event the dispatcher's statements just wrote is claimed in the very
 * transaction that wrote it, or the next. */
static int writer_stage_pg(void *userdata, struct txn_batch *b, uint64_t now)
{
        struct events *ev = userdata;
        int r = 0;
        ev->recording = TAKE_PTR(ev->done);
        for (struct delivery *d = ev->recording; d && r >= 0; d = d->next) {
                const struct ledger_event *e = &d->e;
                format_uint(e->attempts, d->p_attempts);
                format_uint(e->next_at, d->p_next_at);
                format_uint((uint64_t)(e->http_status > 0 ? e->http_status : 0), d->p_status);
                d->params[0] = e->id;
                d->params[1] = ledger_event_state_to_string(e->state);
                d->params[2] = d->p_attempts;
                d->params[3] = d->p_next_at;
                d->params[4] = e->http_status > 0 ? d->p_status : NULL;
                d->params[5] = isempty(e->error) ? NULL : e->error;
                r = txn_batch_add(b, PGSCHEMA_EVENT_UPDATE, 6, d->params);
        }
        ev->states_staged = r >= 0 && ev->states_dirty;
        if (ev->states_staged) {
                memcpy(ev->p_states_sent, ev->p_states, sizeof(ev->p_states_sent));
                ev->states_dirty = false; /* again if the turn fails */
                ev->states_params[0] = ev->p_states_sent;
                r = txn_batch_add(b, PGSCHEMA_SET_EVENT_STATES, 1, ev->states_params);
        }
        ev->purge_staged = r >= 0 && ev->purge;
        if (ev->purge_staged) {
                uint64_t keep = ev->cfg->events_keep;
                format_uint(keep, ev->p_keep);
                ev->purge_params[0] = ev->p_keep;
                ev->purge_params[1] = PURGE_BATCH_STR;
                r = txn_batch_add(b, PGSCHEMA_EVENTS_PURGE, 2, ev->purge_params);
        }
        size_t slots = free_slots(ev);
        ev->claim_staged = r >= 0 && enabled(ev) && slots > 0;
        if (ev->claim_staged) {
                format_uint(slots > DUE_MAX ? DUE_MAX : slots, ev->p_claim_n);
                /* Past the attempt's end, and a lease more (the instance's pause, say). */
                format_uint(ev->cfg->events_timeout + ev->cfg->store_lease, ev->p_lease);
                ev->claim_params[0] = ev->p_claim_n;
                ev->claim_params[1] = ev->p_lease;
                ev->claim_wanted = false;
                r = txn_batch_add(b, PGSCHEMA_EVENTS_CLAIM, 2, ev->claim_params);
                if (r >= 0)
                        r = txn_batch_add(b, PGSCHEMA_EVENTS_NEXT, 0, NULL);
        }
        return r;
}

static bool changed_one(const PGresult *res)
{
        return res && strcmp(PQcmdTuples((PGresult *)res), "1") == 0;
}

/* PostgreSQL, the turn committed: which outcomes were recorded, whether the purge has more, the
 * claimed events sent at once, the timer set for the next due. */
static int writer_read_pg(void *userdata, PGresult *const *results, size_t n)
{
        struct events *ev = userdata;
        size_t i = 0;
        for (struct delivery *d = ev->recording; d; d = d->next, i++)
                d->saved = i < n && changed_one(results[i]);
        if (ev->states_staged && i++ < n)
                ev->states_written = (unsigned)strtoul(ev->p_states_sent, NULL, 10);
        if (ev->purge_staged) {
                const PGresult *p = i < n ? results[i] : NULL;
                ev->purge = p && strcmp(PQcmdTuples((PGresult *)p), PURGE_BATCH_STR) == 0;
                i++;
        }
        if (!ev->claim_staged || i + 2 > n)
                return 0;
        const PGresult *claimed = results[i], *next = results[i + 1];
        int rows = claimed && PQresultStatus(claimed) == PGRES_TUPLES_OK ? PQntuples(claimed) : 0;
        for (int row = 0; row < rows; row++) {
                struct ledger_event e;
                if (pgschema_row_to_event(claimed, row, &e) < 0 ||
                    PQnfields(claimed) <= PGSCHEMA_EVENT_NCOLUMNS)
                        continue;
                e.body = strdup(PQgetvalue(claimed, row, PGSCHEMA_EVENT_NCOLUMNS));
                if (!e.body)
                        continue; /* due again once its claim lapses */
                (void)start(ev, &e);
        }
        if (rows > 0)
                httpc_send_now(ev->httpc);
        /* All that was asked for came: more may be due, claimed as slots free up. */
        if ((size_t)rows >= strtoul(ev->p_claim_n, NULL, 10))
                ev->claim_wanted = true;
        uint64_t now = now_realtime_usec();
        const char *v = next && PQresultStatus(next) == PGRES_TUPLES_OK && PQntuples(next) == 1 &&
                                !PQgetisnull(next, 0, 0)
                            ? PQgetvalue(next, 0, 0)
                            : NULL;
        if (!v) {
                sd_event_source_set_enabled(ev->timer, SD_EVENT_OFF);
                return 0;
        }
        long long in = strtoll(v, NULL, 10);
        if (in <= 0 && rows > 0) {
                ev->claim_wanted = true; /* due now, but beyond this claim's slots */
                sd_event_source_set_enabled(ev->timer, SD_EVENT_OFF);
        } else if (in <= 0) {
                /* Due but not claimable: another instance's claim not committed yet. */
                sd_event_source_set_time(ev->timer, now + OTHERS_CLAIM_USEC);
                sd_event_source_set_enabled(ev->timer, SD_EVENT_ONESHOT);
        } else {
                sd_event_source_set_time(ev->timer, now + (uint64_t)in);
                sd_event_source_set_enabled(ev->timer, SD_EVENT_ONESHOT);
        }
        return 0;
}

static void writer_done(void *userdata, int r)
{
        struct events *ev = userdata;
        struct delivery *done = TAKE_PTR(ev->recording);
        if (r < 0) {
                /* Nothing recorded: the events are still pending in the ledger and go again,
                 * with the same webhook-id, once it can commit (on PostgreSQL once their claim
                 * lapses). Without a database (-ENOTCONN) the manager has said so already. */
                if (done || !ev->pg || r != -ENOTCONN)
                        log_full(LOG_WARNING, MSGID_LEDGER_ERROR,
                                 "Cannot record event deliveries: %s; they will be sent again",
                                 ev->pg ? strerror(-r) : ledger_errmsg(ev->ledger));
                ev->ledger_failing = true;
                ev->purge = false;
                if (ev->states_staged)
                        ev->states_dirty = true;
                ev->states_staged = ev->claim_staged = false;
                sd_event_source_set_time(ev->timer, now_realtime_usec() + LEDGER_RETRY_USEC);
                sd_event_source_set_enabled(ev->timer, SD_EVENT_ONESHOT);
                deliveries_free(done);
                return;
        }
        /* The ledger works again (on PostgreSQL a passenger turn's read may have moved the
         * timer that would have said so). */
        ev->ledger_failing = false;
        for (struct delivery *d = done; d; d = d->next) {
                if (!d->saved)
                        continue; /* an operator changed it meanwhile */
                enum event_outcome o = d->e.state == LEDGER_EVENT_DELIVERED
                                           ? EVENT_OUTCOME_DELIVERED
                                       : d->e.state == LEDGER_EVENT_DEAD ? EVENT_OUTCOME_DEAD
                                                                         : EVENT_OUTCOME_RETRIED;
                ev->m->events[d->job_state][o]++;
                if (o != EVENT_OUTCOME_RETRIED)
                        log_outcome(ev, d);
        }
        deliveries_free(done);
        if (ev->purge)
                txn_want(ev->txn, &ev->writer);
        wake(ev);
}

/* events.concurrency is fixed at start (the curl multi's limit); the rest follows a reload. */
static void apply_config(struct events *ev)
{
        if (ev->pg) {
                /* One setting for the whole ledger: written when this instance delivers events,
                 * or when it stops doing so (a reload); an instance started without [events]
                 * leaves the others' as they are. */
                unsigned states = enabled(ev) ? ev->cfg->events_states : 0;
                if (states != 0 || ev->states_written != 0) {
                        format_uint(states, ev->p_states);
                        ev->states_dirty = true;
                }
                return;
        }
        if (ledger_set_event_states(ev->ledger, enabled(ev) ? ev->cfg->events_states : 0) < 0)
                log_warning("Cannot record which events to write: %s", ledger_errmsg(ev->ledger));
}

/* Either backend's: the sender, its pump, timers and writer (apply or stage/read). */
static int events_alloc(sd_event *event, struct txn *txn, const struct config *cfg,
                        struct metrics *metrics, struct events **ret)
{
        struct events *ev = calloc(1, sizeof(*ev));
        if (!ev)
                return -ENOMEM;
        ev->event = sd_event_ref(event);
        ev->txn = txn;
        ev->cfg = cfg;
        ev->m = metrics;
        ev->writer = (struct txn_writer){
            .apply = writer_apply, .done = writer_done, .userdata = ev, .order = 100};
        int r = httpc_new(event, (unsigned)(cfg->events_concurrency ? cfg->events_concurrency : 1),
                          &ev->httpc);
        if (r >= 0)
                r = sd_event_add_defer(event, &ev->pump, on_pump, ev);
        if (r >= 0)
                r = sd_event_add_time(event, &ev->timer, CLOCK_REALTIME, UINT64_MAX, USEC_PER_MSEC,
                                      on_timer, ev);
        if (r >= 0)
                r = sd_event_add_time_relative(event, &ev->purge_timer, CLOCK_MONOTONIC,
                                               PURGE_INTERVAL, USEC_PER_SEC, on_purge_timer, ev);
        if (r < 0) {
                events_free(ev);
                return r;
        }
        sd_event_source_set_priority(ev->pump, PUMP_PRIORITY);
        sd_event_source_set_description(ev->pump, "events-pump");
        sd_event_source_set_enabled(ev->timer, SD_EVENT_OFF);
        sd_event_source_set_description(ev->timer, "events-timer");
        sd_event_source_set_enabled(ev->purge_timer, SD_EVENT_ON);
        sd_event_source_set_description(ev->purge_timer, "events-purge");
        *ret = ev;
        return 0;
}

int events_new(sd_event *event, struct ledger *ledger, struct txn *txn, const struct config *cfg,
               struct metrics *metrics, struct events **ret)
{
        struct events *ev;
        int r = events_alloc(event, txn, cfg, metrics, &ev);
        if (r < 0)
                return r;
        ev->ledger = ledger;
        txn_add_writer(txn, &ev->writer);
        ledger_set_event_hook(ledger, on_event_written, ev);
        apply_config(ev);
        *ret = ev;
        return 0;
}

int events_new_pg(sd_event *event, struct txn *txn, const struct config *cfg,
                  struct metrics *metrics, struct events **ret)
{
        struct events *ev;
        int r = events_alloc(event, txn, cfg, metrics, &ev);
        if (r < 0)
                return r;
        ev->pg = true;
        ev->writer.apply = NULL;
        ev->writer.stage = writer_stage_pg;
        ev->writer.read = writer_read_pg;
        ev->writer.passenger = true;
        ev->claim_wanted = true; /* what is due from before the start */
        txn_add_writer(txn, &ev->writer);
        apply_config(ev);
        wake(ev);
        *ret = ev;
        return 0;
}

struct events *events_free(struct events *ev)
{
        if (!ev)
                return NULL;
        httpc_free(ev->httpc);
        deliveries_free(ev->in_flight);
        deliveries_free(ev->done);
        if (ev->ledger)
                ledger_set_event_hook(ev->ledger, NULL, NULL);
        txn_remove_writer(ev->txn, &ev->writer);
        sd_event_source_disable_unref(ev->pump);
        sd_event_source_disable_unref(ev->timer);
        sd_event_source_disable_unref(ev->purge_timer);
        sd_event_unref(ev->event);
        free(ev);
        return NULL;
}

void events_set_config(struct events *ev, const struct config *cfg)
{
        ev->cfg = cfg;
        apply_config(ev);
        wake(ev);
}
