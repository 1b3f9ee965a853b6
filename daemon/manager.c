/* manager.c: the daemon's life: start in order (configuration, ledger, recovery, listener, READY),
 * serve, reload on SIGHUP, drain on SIGTERM. On PostgreSQL it also follows the database: connect,
 * migrate, 503 while it is away. */
#include "manager.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "config.h"
#include "dispatcher.h"
#include "events.h"
#include "http.h"
#include "journal.h"
#include "ledger.h"
#include "metrics.h"
#include "pgconn.h"
#include "pgschema.h"
#include "txn.h"
#include "util.h"
#include "webhook.h"

#define STATUS_INTERVAL_USEC (2 * USEC_PER_SEC)
#define PURGE_INTERVAL_USEC  (10 * 60 * USEC_PER_SEC)
#define DRAIN_CHECK_USEC     (20 * USEC_PER_MSEC)
/* PostgreSQL */
#define PG_MIGRATE_RETRY_USEC (2 * USEC_PER_SEC)
#define PG_PURGE_BATCH        1000
#define PG_PURGE_BATCH_STR    "1000"

struct manager {
        const char *config_path;
        struct config *cfg;
        sd_event *event;
        struct ledger *ledger;
        struct metrics metrics;
        struct txn *txn;
        struct dispatcher *dispatcher;
        struct events *events;
        struct webhook *webhook;
        struct http_server *http;
        sd_event_source *status_timer;
        sd_event_source *purge_timer;
        sd_event_source *drain_timer;
        bool draining;
        bool dispatcher_idle;
        uint64_t drain_deadline;
        char last_status[512];
        int exit_code;
        bool stopped_clean; /* the loop ended as asked: the ledger is marked so (SQLite) */
        /* PostgreSQL: pg carries the turns (txn) and the migration; house the counts and the
         * purges, so that neither waits behind the other. */
        struct pgconn *pg, *house;
        struct pgschema_migration *migration; /* in flight on pg, or NULL */
        bool pg_available;       /* connected and the schema migrated: notifications taken */
        bool pg_migrated;        /* once: house may query the tables */
        bool pg_said_down;       /* the outage was logged */
        bool purge_wanted;       /* expired replay keys remain to purge */
        bool spend_purge_wanted; /* submissions older than two days remain to purge */
        bool counts_ok;
        uint64_t counts[_JOB_STATE_MAX];
        sd_event_source *migrate_timer;
};

static void house_next(struct manager *m, bool count);

/* The jobs per state: the ledger's, or on PostgreSQL the last the housekeeping read. */
static int count_states(struct manager *m, uint64_t counts[_JOB_STATE_MAX])
{
        if (!m->ledger) {
                memcpy(counts, m->counts, sizeof(m->counts));
                return m->counts_ok ? 0 : -ENODATA;
        }
        return ledger_count_states(m->ledger, counts);
}

static void update_status(struct manager *m)
{
        uint64_t counts[_JOB_STATE_MAX] = {0};
        char status[512];
        if (m->pg && !m->pg_available) {
                const char *err = pgconn_errmsg(m->pg);
                if (m->pg_said_down)
                        snprintf(status, sizeof(status),
                                 "Ledger database unreachable, notifications answered 503; "
                                 "reconnecting%s%s",
                                 isempty(err) ? "" : ": ", isempty(err) ? "" : err);
                else
                        snprintf(status, sizeof(status),
                                 "Connecting to the ledger database; notifications answered 503 "
                                 "until it answers");
                /* libpq's messages end with a newline; STATUS= is one line. */
                for (char *c = status; *c; c++)
                        if (*c == '\n')
                                *c = ' ';
                if (strcmp(status, m->last_status) != 0) {
                        sd_notifyf(0, "STATUS=%s", status);
                        snprintf(m->last_status, sizeof(m->last_status), "%s", status);
                }
                return;
        }
        /* PostgreSQL: until the housekeeping's first count, STATUS= keeps what it said. */
        if (count_states(m, counts) < 0)
                return;
        const char *err = dispatcher_last_error(m->dispatcher);
        struct dispatcher_control ctl = {0};
        char held[96] = "";
        if (dispatcher_control(m->dispatcher, &ctl) >= 0) {
                if (ctl.operator_paused)
                        snprintf(held, sizeof(held),
                                 "; submissions paused by an operator (jobs resume)");
                else if (ctl.budget_blocked) {
                        char at[32];
                        format_clock(ctl.budget.free_at, at, sizeof(at));
                        snprintf(held, sizeof(held), "; budget reached, next submission at %s", at);
                }
        }
        snprintf(status, sizeof(status),
                 "%s%llu pending, %zu in flight, %llu submitted, %llu succeeded, %llu dead, %llu "
                 "uncertain%s%s%s",
                 m->draining ? "Draining: " : (dispatcher_paused(m->dispatcher) ? "Paused: " : ""),
                 (unsigned long long)(counts[JOB_PENDING] + counts[JOB_WAITING] +
                                      counts[JOB_SUBMITTING]),
                 dispatcher_in_flight(m->dispatcher), (unsigned long long)counts[JOB_SUBMITTED],
                 (unsigned long long)counts[JOB_SUCCEEDED], (unsigned long long)counts[JOB_DEAD],
                 (unsigned long long)counts[JOB_UNCERTAIN], held,
                 isempty(err) ? "" : "; last upstream error: ", isempty(err) ? "" : err);
        if (strcmp(status, m->last_status) != 0) {
                sd_notifyf(0, "STATUS=%s", status);
                snprintf(m->last_status, sizeof(m->last_status), "%s", status);
        }
}

static int on_status_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct manager *m = userdata;
        update_status(m);
        house_next(m, true); /* PostgreSQL: the counts, for the next */
        /* Operators change jobs from outside (vidu-upscaled jobs retry): look for them. (On
         * PostgreSQL the dispatcher's lease timer asks the database what is due instead.) */
        if (!m->pg)
                dispatcher_kick(m->dispatcher);
        events_kick(m->events); /* and events (vidu-upscaled events retry, jobs abandon) */
        sd_event_source_set_time(s, usec + STATUS_INTERVAL_USEC);
        return 0;
}

static int on_purge_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct manager *m = userdata;
        uint64_t now = now_realtime_usec();
        if (m->pg) {
                m->purge_wanted = m->spend_purge_wanted = true;
                house_next(m, false);
                sd_event_source_set_time(s, usec + PURGE_INTERVAL_USEC);
                return 0;
        }
        if (ledger_purge_replay(m->ledger, now) < 0)
                log_warning("Cannot purge expired replay memory: %s", ledger_errmsg(m->ledger));
        /* The budget's windows reach back a day; a second day is kept for whoever looks. */
        if (ledger_spend_purge(m->ledger, now - 2 * BUDGET_DAY_USEC) < 0)
                log_warning("Cannot purge old submissions: %s", ledger_errmsg(m->ledger));
        sd_event_source_set_time(s, usec + PURGE_INTERVAL_USEC);
        return 0;
}

static bool on_healthy(void *userdata)
{
        struct manager *m = userdata;
        return !m->draining && webhook_ledger_ok(m->webhook);
}

static void on_metrics(FILE *f, void *userdata)
{
        struct manager *m = userdata;
        uint64_t counts[_JOB_STATE_MAX];
        if (count_states(m, counts) >= 0) {
                memcpy(m->metrics.jobs_by_state, counts, sizeof(counts));
                m->metrics.backlog =
                    counts[JOB_PENDING] + counts[JOB_WAITING] + counts[JOB_SUBMITTING];
        }
        m->metrics.in_flight = dispatcher_in_flight(m->dispatcher);
        m->metrics.webhook_staged = webhook_staged(m->webhook);
        m->metrics.ledger_available = webhook_ledger_ok(m->webhook);
        m->metrics.ledger_turns_in_flight = txn_in_flight(m->txn);
        struct dispatcher_control ctl;
        (void)dispatcher_control(m->dispatcher, &ctl); /* refreshes the switches' gauges */
        uint64_t backlog;
        if (m->ledger && ledger_events_backlog(m->ledger, &backlog) >= 0)
                m->metrics.events_backlog = backlog;
        metrics_render(&m->metrics, f);
}

static void on_answered(unsigned status, uint64_t elapsed_usec, void *userdata)
{
        struct manager *m = userdata;
        metrics_observe(&m->metrics.webhook_seconds, (double)elapsed_usec / 1e6);
        if (status < ELEMENTSOF(m->metrics.requests_by_status))
                m->metrics.requests_by_status[status]++;
}

static void on_webhook(struct http_request *req, void *userdata)
{
        struct manager *m = userdata;
        webhook_handle(req, m->webhook);
}

static const struct http_handlers handlers = {
    .webhook = on_webhook,
    .healthy = on_healthy,
    .metrics = on_metrics,
    .answered = on_answered,
};

static bool streq_null(const char *a, const char *b)
{
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Settings bound at start-up keep their old values; say which were asked to change. */
static void keep_fixed_settings(struct config *old, struct config *new)
{
#define KEEP_STR(field, name)                                                                      \
        if (!streq_null(old->field, new->field)) {                                                 \
                log_warning("Reload: %s cannot change while running (kept %s); restart to apply",  \
                            name, old->field ? old->field : "(unset)");                            \
                char *tmp = new->field;                                                            \
                new->field = old->field;                                                           \
                old->field = tmp;                                                                  \
        }
#define KEEP_NUM(field, name)                                                                      \
        if (old->field != new->field) {                                                            \
                log_warning("Reload: %s cannot change while running; restart to apply", name);     \
                new->field = old->field;                                                           \
        }
        KEEP_STR(listen, "server.listen");
        KEEP_NUM(events_concurrency, "events.concurrency");
        KEEP_STR(store_path, "store.path");
        KEEP_STR(tls_cert, "server.tls_cert");
        KEEP_STR(tls_key, "server.tls_key");
        KEEP_NUM(synchronous_full, "store.synchronous");
        KEEP_NUM(store_backend, "store.backend");
        KEEP_NUM(store_statement_timeout, "store.statement_timeout");
        KEEP_NUM(store_reconnect_max, "store.reconnect_max");
        KEEP_NUM(store_pooler, "store.pooler");
        KEEP_NUM(max_connections, "server.max_connections");
        KEEP_NUM(max_per_ip, "server.max_per_ip");
        KEEP_NUM(idle_timeout, "server.idle_timeout");
        KEEP_NUM(max_header, "server.max_header");
        if (!streq_null(old->store_url, new->store_url)) {
                /* Never printed: it may hold a password. */
                log_warning("Reload: store.url cannot change while running (kept); restart to "
                            "apply");
                char *tmp = new->store_url;
                new->store_url = old->store_url;
                old->store_url = tmp;
        }
        if (old->store_password.len != new->store_password.len ||
            (old->store_password.len > 0 &&
             memcmp(old->store_password.value, new->store_password.value,
                    old->store_password.len) != 0))
                /* The connections keep the one they were made with. */
                log_warning("Reload: the ledger database's password cannot change while running; "
                            "restart to apply");
#undef KEEP_STR
#undef KEEP_NUM
}

static void reload(struct manager *m)
{
        struct config *cfg = NULL;
        struct config_errors errors = {0};
        sd_notifyf(0, "RELOADING=1\nSTATUS=Reloading configuration");
        int r = config_load(m->config_path, &cfg, &errors);
        if (r < 0) {
                for (size_t i = 0; i < errors.n; i++)
                        log_full(LOG_ERR, MSGID_RELOAD_FAILED, "Reload rejected: %s",
                                 errors.lines[i]);
                log_full(
                    LOG_ERR, MSGID_RELOAD_FAILED,
                    "Reload rejected with %zu error(s); the previous configuration stays in force",
                    errors.n);
                config_errors_clear(&errors);
        } else {
                keep_fixed_settings(m->cfg, cfg);
                struct config *old = m->cfg;
                m->cfg = cfg;
                http_server_set_config(m->http, cfg);
                webhook_set_config(m->webhook, cfg);
                dispatcher_set_config(m->dispatcher, cfg);
                if (m->events)
                        events_set_config(m->events, cfg);
                journal_set_level(cfg->log_level);
                config_free(old);
                log_full(LOG_NOTICE, MSGID_RELOADED,
                         "Configuration reloaded (upstream %s, flavor %s, concurrency %llu)",
                         cfg->base_url, upstream_flavor_to_string(cfg->flavor),
                         (unsigned long long)cfg->concurrency);
        }
        m->last_status[0] = 0;
        sd_notify(0, "READY=1");
        update_status(m);
}

static int on_sighup(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        reload(userdata);
        return 0;
}

static void finish_drain(struct manager *m)
{
        bool requests_done = http_server_pending(m->http) == 0 && webhook_staged(m->webhook) == 0;
        if ((requests_done && m->dispatcher_idle) || now_monotonic_usec() >= m->drain_deadline) {
                if (!requests_done)
                        log_warning(
                            "Stopping with %zu request(s) unanswered after server.drain_timeout",
                            http_server_pending(m->http));
                sd_event_exit(m->event, 0);
        }
}

static int on_drain_check(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct manager *m = userdata;
        finish_drain(m);
        sd_event_source_set_time(s, usec + DRAIN_CHECK_USEC);
        return 0;
}

static void on_dispatcher_idle(struct dispatcher *d, size_t abandoned, void *userdata)
{
        struct manager *m = userdata;
        if (abandoned > 0)
                log_warning("%zu upstream request(s) still in flight after server.drain_timeout; "
                            "their jobs "
                            "follow retry.uncertain at the next start",
                            abandoned);
        m->dispatcher_idle = true;
        finish_drain(m);
}

static int on_sigterm(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata)
{
        struct manager *m = userdata;
        if (m->draining)
                return 0;
        m->draining = true;
        sd_notify(0, "STOPPING=1\nSTATUS=Draining: finishing requests in progress");
        log_full(LOG_INFO, MSGID_STOPPING,
                 "Stopping on %s: no new connections; finishing requests in progress",
                 strsignal((int)si->ssi_signo));
        http_server_quiesce(m->http);
        m->drain_deadline = now_monotonic_usec() + m->cfg->drain_timeout;
        dispatcher_drain(m->dispatcher, m->cfg->drain_timeout, on_dispatcher_idle, m);
        uint64_t now;
        sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        sd_event_add_time(m->event, &m->drain_timer, CLOCK_MONOTONIC, now + DRAIN_CHECK_USEC, 0,
                          on_drain_check, m);
        /* Time sources start as one-shot; this one checks until the drain is done. */
        sd_event_source_set_enabled(m->drain_timer, SD_EVENT_ON);
        return 0;
}

/* PostgreSQL: the housekeeping connection's answers. */
static void on_counted(struct pgconn *c, const struct pgconn_result *res, void *userdata)
{
        struct manager *m = userdata;
        const PGresult *r = res->n > 1 ? res->results[1] : NULL;
        if (res->error >= 0 && r && PQresultStatus(r) == PGRES_TUPLES_OK && PQnfields(r) == 2) {
                memset(m->counts, 0, sizeof(m->counts));
                for (int i = 0; i < PQntuples(r); i++) {
                        int st = job_state_from_string(PQgetvalue(r, i, 0));
                        if (st >= 0)
                                m->counts[st] = strtoull(PQgetvalue(r, i, 1), NULL, 10);
                }
                m->counts_ok = true;
                update_status(m);
        }
        const PGresult *e = res->n > 2 ? res->results[2] : NULL;
        if (res->error >= 0 && e && PQresultStatus(e) == PGRES_TUPLES_OK && PQntuples(e) == 1)
                m->metrics.events_backlog = strtoull(PQgetvalue(e, 0, 0), NULL, 10);
        house_next(m, false);
}

static void on_purged(struct pgconn *c, const struct pgconn_result *res, void *userdata)
{
        struct manager *m = userdata;
        const PGresult *r = res->n > 0 ? res->results[0] : NULL;
        if (res->error < 0) {
                log_warning("Cannot purge expired replay memory: %s", res->message);
                m->purge_wanted = false; /* the next purge timer tries again */
        } else
                /* A full batch: more may remain, purged by the next (a batch of its own, so no
                 * statement holds many locks). */
                m->purge_wanted = r && strcmp(PQcmdTuples((PGresult *)r), PG_PURGE_BATCH_STR) == 0;
        house_next(m, false);
}

static void on_spend_purged(struct pgconn *c, const struct pgconn_result *res, void *userdata)
{
        struct manager *m = userdata;
        const PGresult *r = res->n > 0 ? res->results[0] : NULL;
        if (res->error < 0) {
                log_warning("Cannot purge old submissions: %s", res->message);
                m->spend_purge_wanted = false;
        } else
                m->spend_purge_wanted =
                    r && strcmp(PQcmdTuples((PGresult *)r), PG_PURGE_BATCH_STR) == 0;
        house_next(m, false);
}

/* Sends the housekeeping's next statement when its connection is free: the purge while one
 * is wanted, else the counts when asked (the status timer; skipped while busy). */
static void house_next(struct manager *m, bool count)
{
        static const char *const purge_params[] = {PG_PURGE_BATCH_STR};
        static const struct pgconn_stmt purge = {
            .sql = PGSCHEMA_PURGE_REPLAY, .n_params = 1, .params = purge_params};
        static const struct pgconn_stmt count_stmts[] = {
            {.sql = PGSCHEMA_COUNTS_FOLD},
            {.sql = PGSCHEMA_COUNTS},
            {.sql = PGSCHEMA_EVENTS_BACKLOG},
        };
        if (!m->house || !m->pg_migrated || !pgconn_is_connected(m->house) || pgconn_busy(m->house))
                return;
        static const struct pgconn_stmt spend_purge = {
            .sql = PGSCHEMA_PURGE_SPEND, .n_params = 1, .params = purge_params};
        if (m->purge_wanted) {
                (void)pgconn_send(m->house, &purge, 1, on_purged, m);
                return;
        }
        /* The budget's windows reach back a day; a second day is kept for whoever looks. */
        if (m->spend_purge_wanted) {
                (void)pgconn_send(m->house, &spend_purge, 1, on_spend_purged, m);
                return;
        }
        if (count)
                (void)pgconn_send(m->house, count_stmts, ELEMENTSOF(count_stmts), on_counted, m);
}

static void pg_set_available(struct manager *m, bool available)
{
        m->pg_available = available;
        txn_set_available(m->txn, available);
        webhook_set_available(m->webhook, available);
        update_status(m);
}

static int try_migrate(struct manager *m);

static void on_migrated(int r, int from_version, const char *error, void *userdata)
{
        struct manager *m = userdata;
        if (r == -EPROTONOSUPPORT) {
                log_full(LOG_ERR, MSGID_LEDGER_ERROR, "%s", error ? error : "schema too new");
                sd_notifyf(0, "STATUS=%s\nERRNO=%d", error ? error : "schema too new",
                           EPROTONOSUPPORT);
                m->exit_code = EXIT_CONFIG;
                sd_event_exit(m->event, 0);
                return;
        }
        if (r < 0) {
                /* A lost connection reconnects and migrates again; on a live one, try later. */
                log_warning("Cannot migrate the ledger's schema: %s", error ? error : strerror(-r));
                if (pgconn_is_connected(m->pg))
                        event_timer_in(m->migrate_timer, PG_MIGRATE_RETRY_USEC);
                return;
        }
        if (from_version != PGSCHEMA_VERSION)
                log_full(LOG_NOTICE, MSGID_LEDGER_ERROR,
                         "Ledger schema migrated from version %d to %d", from_version,
                         PGSCHEMA_VERSION);
        log_full(LOG_NOTICE, MSGID_LEDGER_ERROR,
                 "Ledger database reachable (schema version %d); notifications are accepted",
                 PGSCHEMA_VERSION);
        m->pg_said_down = false;
        /* The first connection also purges what expired while no instance ran (then the timer). */
        if (!m->pg_migrated)
                m->purge_wanted = m->spend_purge_wanted = true;
        m->pg_migrated = true;
        /* The events' setting again: the database may be a new one. */
        if (m->events)
                events_set_config(m->events, m->cfg);
        pg_set_available(m, true);
        house_next(m, true);
}

static int try_migrate(struct manager *m)
{
        if (!pgconn_is_connected(m->pg) || pgconn_busy(m->pg) || txn_busy(m->txn))
                return -EBUSY;
        return pgschema_migrate(m->pg, on_migrated, m, &m->migration);
}

static int on_migrate_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct manager *m = userdata;
        if (!m->pg_available && try_migrate(m) < 0 && pgconn_is_connected(m->pg))
                event_timer_in(m->migrate_timer, PG_MIGRATE_RETRY_USEC);
        return 0;
}

static void on_pg_state(struct pgconn *c, enum pgconn_event ev, void *userdata)
{
        struct manager *m = userdata;
        if (ev == PGCONN_CONNECTED) {
                /* Each connection checks the schema first (cheap once it is current): the
                 * database may have been recreated meanwhile. */
                if (try_migrate(m) < 0)
                        event_timer_in(m->migrate_timer, PG_MIGRATE_RETRY_USEC);
                return;
        }
        if (!m->pg_said_down) {
                m->pg_said_down = true;
                log_full(LOG_ERR, MSGID_LEDGER_ERROR,
                         "%s the ledger's database (%s); answering 503 to notifications and "
                         "reconnecting",
                         ev == PGCONN_LOST ? "Lost the connection to" : "Cannot connect to",
                         isempty(pgconn_errmsg(c)) ? "connection failed" : pgconn_errmsg(c));
        }
        pg_set_available(m, false);
}

static void on_house_state(struct pgconn *c, enum pgconn_event ev, void *userdata)
{
        if (ev == PGCONN_CONNECTED)
                house_next(userdata, true);
}

/* PostgreSQL: the two connections, the turns (webhook, dispatcher, events) on the first, the
 * counts, purges and the dispatcher's leases on the second. On a direct connection two turns
 * are pipelined (the loop builds and answers one while the server runs the other) and the
 * statements are named, planned once a session; a pooler in transaction mode hands the server
 * connection on at a transaction's end, so there one turn at a time, every statement unnamed. */
static int setup_pg(struct manager *m)
{
        unsigned depth = m->cfg->store_pooler == STORE_POOLER_TRANSACTION ? 1 : 2;
        struct pgconn_options o = {
            .conninfo = m->cfg->store_url,
            .password = m->cfg->store_password.value,
            .statement_timeout_usec = m->cfg->store_statement_timeout,
            .reconnect_max_usec = m->cfg->store_reconnect_max,
            .max_in_flight = depth, /* a failed turn's ROLLBACK takes its place */
            .prepare = depth > 1,
        };
        int r = pgconn_new(m->event, &o, on_pg_state, m, &m->pg);
        if (r >= 0) {
                o.statement_timeout_usec = 30 * USEC_PER_SEC;
                o.max_in_flight = 1;
                r = pgconn_new(m->event, &o, on_house_state, m, &m->house);
        }
        if (r >= 0)
                r = txn_new_pg(m->event, m->pg, depth, &m->metrics, &m->txn);
        if (r >= 0)
                r = dispatcher_new_pg(m->event, m->txn, m->house, m->cfg, &m->metrics,
                                      &m->dispatcher);
        if (r >= 0)
                r = events_new_pg(m->event, m->txn, m->cfg, &m->metrics, &m->events);
        if (r >= 0)
                r = webhook_new_pg(m->event, m->txn, m->cfg, &m->metrics, m->dispatcher,
                                   &m->webhook);
        if (r >= 0)
                r = sd_event_add_time(m->event, &m->migrate_timer, CLOCK_MONOTONIC, UINT64_MAX, 0,
                                      on_migrate_timer, m);
        if (r >= 0)
                sd_event_source_set_enabled(m->migrate_timer, SD_EVENT_OFF);
        return r;
}

/* The ledger was not closed cleanly: its integrity check reads the whole file first. */
static void on_checking(const char *path, void *userdata)
{
        struct stat st;
        uint64_t mib = stat(path, &st) == 0 ? (uint64_t)st.st_size >> 20 : 0;
        log_info("Checking the ledger's integrity after an unclean stop (%s, %llu MiB)", path,
                 (unsigned long long)mib);
        /* About 60 MiB/s from a cold cache on a slow disk; never less than a minute more. */
        uint64_t extend = (60 + mib / 60) * USEC_PER_SEC;
        sd_notifyf(0,
                   "STATUS=Checking the ledger's integrity after an unclean stop (%llu MiB)\n"
                   "EXTEND_TIMEOUT_USEC=%llu",
                   (unsigned long long)mib, (unsigned long long)extend);
}

static void manager_free(struct manager *m)
{
        sd_event_source_disable_unref(m->status_timer);
        sd_event_source_disable_unref(m->purge_timer);
        sd_event_source_disable_unref(m->drain_timer);
        http_server_free(m->http);
        /* A batch in flight is abandoned with it (the requests it held went with the server). */
        pgconn_free(m->pg);
        /* So is a schema migration under way (a stop before the database answered it). */
        pgschema_migration_abandon(&m->migration);
        pgconn_free(m->house);
        sd_event_source_disable_unref(m->migrate_timer);
        /* Owed `accepted` entries (log.fold_accepted) leave with what waits for journald, on
         * every way out. */
        dispatcher_write_owed(m->dispatcher);
        journal_detach_event();
        webhook_free(m->webhook);
        dispatcher_free(m->dispatcher);
        events_free(m->events);
        txn_free(m->txn);
        if (m->stopped_clean && m->ledger && ledger_mark_closed_clean(m->ledger) < 0)
                log_warning("Cannot mark the ledger as closed cleanly (%s): the next start checks "
                            "its integrity",
                            ledger_errmsg(m->ledger));
        ledger_close(m->ledger);
        sd_event_unref(m->event);
        config_free(m->cfg);
}

int manager_run(const char *config_path)
{
        struct manager m = {.config_path = config_path};
        struct config_errors errors = {0};
        char *err = NULL;
        int r, ret = 1;

        /* Each loop turn allocates and frees its batch; without this glibc gives the top of the
         * heap back and takes it again every few turns (brk was ~4 % of the CPU under load). */
        mallopt(M_TRIM_THRESHOLD, 1 << 20);
        mallopt(M_TOP_PAD, 256 << 10);
        journal_setup(LOG_INFO);
        r = config_load(config_path, &m.cfg, &errors);
        if (r < 0) {
                for (size_t i = 0; i < errors.n; i++) {
                        fprintf(stderr, "%s\n", errors.lines[i]);
                        if (!journal_to_stderr())
                                log_error("%s", errors.lines[i]);
                }
                config_errors_clear(&errors);
                sd_notifyf(0, "STATUS=Configuration errors\nERRNO=%d", EINVAL);
                return EXIT_CONFIG;
        }
        journal_setup(m.cfg->log_level);
        m.metrics.start_time_usec = now_realtime_usec();

        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);

        r = sd_event_default(&m.event);
        if (r < 0) {
                log_error("Cannot create the event loop: %s", strerror(-r));
                goto out;
        }
        r = journal_attach_event(m.event);
        if (r < 0) {
                log_error("Cannot watch the journal socket: %s", strerror(-r));
                goto out;
        }
        if (m.cfg->store_backend != STORE_BACKEND_SQLITE) {
                r = setup_pg(&m);
                if (r < 0) {
                        log_error("Cannot set up: %s", strerror(-r));
                        goto out;
                }
                goto serve;
        }
        struct ledger_options lo = {
            .synchronous_full = m.cfg->synchronous_full,
            .busy_timeout_ms = 50,
            .integrity_check = true,
            .checking = on_checking,
            .checkpoint_in_background = true,
            .preallocate_wal = true,
        };
        r = ledger_open(m.cfg->store_path, &lo, &m.ledger, &err);
        if (r < 0) {
                log_full(LOG_ERR, MSGID_LEDGER_ERROR, "%s", err ? err : "cannot open the ledger");
                sd_notifyf(0, "STATUS=%s", err ? err : "cannot open the ledger");
                free(err);
                goto out;
        }
        r = txn_new(m.event, m.ledger, &m.metrics, &m.txn);
        if (r >= 0)
                r = dispatcher_new(m.event, m.ledger, m.txn, m.cfg, &m.metrics, &m.dispatcher);
        if (r >= 0)
                r = events_new(m.event, m.ledger, m.txn, m.cfg, &m.metrics, &m.events);
        if (r >= 0)
                r = webhook_new(m.event, m.ledger, m.txn, m.cfg, &m.metrics, m.dispatcher,
                                &m.webhook);
        if (r < 0) {
                log_error("Cannot set up: %s", strerror(-r));
                goto out;
        }
        r = dispatcher_recover(m.dispatcher);
        if (r < 0) {
                log_full(LOG_ERR, MSGID_LEDGER_ERROR, "Cannot recover interrupted jobs: %s",
                         ledger_errmsg(m.ledger));
                goto out;
        }
serve:
        r = http_server_new(m.event, m.cfg, &handlers, &m, &m.http);
        if (r < 0) {
                log_error("Cannot start the HTTP server: %s", strerror(-r));
                goto out;
        }
        sd_event_add_signal(m.event, NULL, SIGTERM, on_sigterm, &m);
        sd_event_add_signal(m.event, NULL, SIGINT, on_sigterm, &m);
        sd_event_add_signal(m.event, NULL, SIGHUP, on_sighup, &m);
        sd_event_set_watchdog(m.event, true);
        uint64_t now;
        sd_event_now(m.event, CLOCK_MONOTONIC, &now);
        sd_event_add_time(m.event, &m.status_timer, CLOCK_MONOTONIC, now + STATUS_INTERVAL_USEC,
                          USEC_PER_SEC, on_status_timer, &m);
        sd_event_source_set_enabled(m.status_timer, SD_EVENT_ON);
        sd_event_add_time(m.event, &m.purge_timer, CLOCK_MONOTONIC, now + PURGE_INTERVAL_USEC,
                          USEC_PER_SEC, on_purge_timer, &m);
        sd_event_source_set_enabled(m.purge_timer, SD_EVENT_ON);

        log_full(LOG_INFO, MSGID_STARTED,
                 "vidu-upscaled %s listening on %s%s, ledger %s, upstream %s (%s)", VIDU_VERSION,
                 http_server_description(m.http), m.cfg->webhook_path,
                 m.ledger ? m.cfg->store_path : "on PostgreSQL (store.url)", m.cfg->base_url,
                 upstream_flavor_to_string(m.cfg->flavor));
        sd_notify(0, "READY=1");
        update_status(&m);
        dispatcher_kick(m.dispatcher);

        r = sd_event_loop(m.event);
        if (r < 0) {
                log_error("Event loop failed: %s", strerror(-r));
                goto out;
        }
        /* Before the last entry: the owed `accepted` entries of jobs whose second was not up. */
        dispatcher_write_owed(m.dispatcher);
        log_info("Stopped");
        ret = m.exit_code;
        m.stopped_clean = true;
out:
        manager_free(&m);
        return ret;
}
