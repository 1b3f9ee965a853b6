/* manager.c: the daemon's life: start in order (configuration, ledger, recovery, listener, READY),
 * serve, reload on SIGHUP, drain on SIGTERM. */
#include "manager.h"

#include <errno.h>
#include <malloc.h>
#include <signal.h>
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
#include "txn.h"
#include "util.h"
#include "webhook.h"

#define STATUS_INTERVAL_USEC (2 * USEC_PER_SEC)
#define PURGE_INTERVAL_USEC  (10 * 60 * USEC_PER_SEC)
#define DRAIN_CHECK_USEC     (20 * USEC_PER_MSEC)

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
};

static void update_status(struct manager *m)
{
        uint64_t counts[_JOB_STATE_MAX];
        char status[512];
        if (ledger_count_states(m->ledger, counts) < 0)
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
        /* Operators change jobs from outside (vidu-upscaled jobs retry): look for them. */
        dispatcher_kick(m->dispatcher);
        events_kick(m->events); /* and events (vidu-upscaled events retry, jobs abandon) */
        sd_event_source_set_time(s, usec + STATUS_INTERVAL_USEC);
        return 0;
}

static int on_purge_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct manager *m = userdata;
        uint64_t now = now_realtime_usec();
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
        if (ledger_count_states(m->ledger, counts) >= 0) {
                memcpy(m->metrics.jobs_by_state, counts, sizeof(counts));
                m->metrics.backlog =
                    counts[JOB_PENDING] + counts[JOB_WAITING] + counts[JOB_SUBMITTING];
        }
        m->metrics.in_flight = dispatcher_in_flight(m->dispatcher);
        struct dispatcher_control ctl;
        (void)dispatcher_control(m->dispatcher, &ctl); /* refreshes the switches' gauges */
        uint64_t backlog;
        if (ledger_events_backlog(m->ledger, &backlog) >= 0)
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
        KEEP_NUM(max_connections, "server.max_connections");
        KEEP_NUM(max_per_ip, "server.max_per_ip");
        KEEP_NUM(idle_timeout, "server.idle_timeout");
        KEEP_NUM(max_header, "server.max_header");
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

static void manager_free(struct manager *m)
{
        sd_event_source_disable_unref(m->status_timer);
        sd_event_source_disable_unref(m->purge_timer);
        sd_event_source_disable_unref(m->drain_timer);
        http_server_free(m->http);
        /* Owed `accepted` entries (log.fold_accepted) leave with what waits for journald, on
         * every way out. */
        dispatcher_write_owed(m->dispatcher);
        journal_detach_event();
        webhook_free(m->webhook);
        dispatcher_free(m->dispatcher);
        events_free(m->events);
        txn_free(m->txn);
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
        if (m.cfg->store_backend != STORE_BACKEND_SQLITE) {
                /* The schema and `jobs` work on PostgreSQL; the daemon's intake and dispatcher do
                 * not yet. Refused whole rather than half-working (README: Shared ledger). */
                static const char msg[] =
                    "store.backend = postgresql is not wired into the daemon yet: the schema and "
                    "`vidu-upscaled jobs ...` work on it, serving does not. Use store.backend = "
                    "sqlite (the default)";
                fprintf(stderr, "%s\n", msg);
                if (!journal_to_stderr())
                        log_error("%s", msg);
                sd_notifyf(0, "STATUS=store.backend = postgresql is not supported yet\nERRNO=%d",
                           EPROTONOSUPPORT);
                config_free(m.cfg);
                return EXIT_CONFIG;
        }
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
        struct ledger_options lo = {
            .synchronous_full = m.cfg->synchronous_full,
            .busy_timeout_ms = 50,
            .integrity_check = true,
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
                 http_server_description(m.http), m.cfg->webhook_path, m.cfg->store_path,
                 m.cfg->base_url, upstream_flavor_to_string(m.cfg->flavor));
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
        ret = 0;
out:
        manager_free(&m);
        return ret;
}
