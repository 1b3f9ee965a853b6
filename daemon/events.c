/* events.c: delivers the outbox: due events POSTed with their Standard Webhooks signature by a
 * curl multi of their own (events.concurrency), each attempt's outcome recorded in the shared
 * turn, the journal written after the commit. Nothing here waits: a receiver that is down or
 * slow costs a few idle connections, never the webhook or the submissions. */
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
#include "util.h"

/* After the turn's commit (txn.c runs at NORMAL + 10). */
#define PUMP_PRIORITY     (SD_EVENT_PRIORITY_NORMAL + 20)
#define LEDGER_RETRY_USEC (1 * USEC_PER_SEC)
#define PURGE_INTERVAL    (60 * USEC_PER_SEC)
#define PURGE_BATCH       500
#define DUE_MAX           64

struct delivery {
        struct events *ev;
        struct ledger_event e; /* with its body; e.state etc. hold the outcome once decided */
        enum job_state job_state;
        long status;
        char error[JOB_ERROR_SIZE];
        bool saved; /* the turn recorded the outcome */
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
        size_t n_in_flight;
        bool purge;
        bool ledger_failing;
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

void events_kick(struct events *ev)
{
        if (ev)
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
        if (!enabled(ev) || ev->ledger_failing)
                return 0;
        uint64_t now = now_realtime_usec();
        size_t slots = ev->cfg->events_concurrency > ev->n_in_flight
                           ? ev->cfg->events_concurrency - ev->n_in_flight
                           : 0;
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
                        struct delivery *d = calloc(1, sizeof(*d));
                        if (!d) {
                                ledger_event_clear(&due[i]);
                                continue;
                        }
                        d->ev = ev;
                        d->e = due[i];
                        int st = event_state_for_type(d->e.type);
                        d->job_state = st < 0 ? JOB_DEAD : (enum job_state)st;
                        int r = send_one(ev, d);
                        if (r < 0) {
                                log_warning("Cannot send event %s: %s", d->e.id, strerror(-r));
                                deliveries_free(d);
                                continue;
                        }
                        d->next = ev->in_flight;
                        ev->in_flight = d;
                        ev->n_in_flight++;
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
        for (struct delivery *d = ev->done; d; d = d->next) {
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

static void writer_done(void *userdata, int r)
{
        struct events *ev = userdata;
        struct delivery *done = TAKE_PTR(ev->done);
        if (r < 0) {
                /* Nothing recorded: the events are still pending in the ledger and go again,
                 * with the same webhook-id, once it can commit. */
                log_full(LOG_WARNING, MSGID_LEDGER_ERROR,
                         "Cannot record event deliveries: %s; they will be sent again",
                         ledger_errmsg(ev->ledger));
                ev->ledger_failing = true;
                ev->purge = false;
                sd_event_source_set_time(ev->timer, now_realtime_usec() + LEDGER_RETRY_USEC);
                sd_event_source_set_enabled(ev->timer, SD_EVENT_ONESHOT);
                deliveries_free(done);
                return;
        }
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
        if (ledger_set_event_states(ev->ledger, enabled(ev) ? ev->cfg->events_states : 0) < 0)
                log_warning("Cannot record which events to write: %s", ledger_errmsg(ev->ledger));
}

int events_new(sd_event *event, struct ledger *ledger, struct txn *txn, const struct config *cfg,
               struct metrics *metrics, struct events **ret)
{
        struct events *ev = calloc(1, sizeof(*ev));
        if (!ev)
                return -ENOMEM;
        ev->event = sd_event_ref(event);
        ev->ledger = ledger;
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
        txn_add_writer(txn, &ev->writer);
        ledger_set_event_hook(ledger, on_event_written, ev);
        apply_config(ev);
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
