/* metrics.c: Prometheus text exposition of the daemon's counters and histograms. */
#include "metrics.h"

#include "event.h"
#include "journal.h"
#include "util.h"

static const double bucket_bounds[METRICS_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                      0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                                      1,      2.5,     5,      10};

void metrics_observe(struct histogram *h, double seconds)
{
        for (size_t i = 0; i < METRICS_BUCKETS; i++)
                if (seconds <= bucket_bounds[i]) {
                        h->buckets[i]++;
                        break;
                }
        h->count++;
        h->sum += seconds;
}

static void render_histogram(FILE *f, const char *name, const char *help, const struct histogram *h)
{
        uint64_t cum = 0;
        fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
        for (size_t i = 0; i < METRICS_BUCKETS; i++) {
                cum += h->buckets[i];
                fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_bounds[i],
                        (unsigned long long)cum);
        }
        fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
}

static void counter(FILE *f, const char *name, const char *help, uint64_t v)
{
        fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
                (unsigned long long)v);
}

static void gauge(FILE *f, const char *name, const char *help, double v)
{
        fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s %g\n", name, help, name, name, v);
}

void metrics_render(const struct metrics *m, FILE *f)
{
        static const char *const outcome_names[_NOTE_OUTCOME_MAX] = {
            [NOTE_ACCEPTED] = "accepted",       [NOTE_DUPLICATE] = "duplicate",
            [NOTE_IGNORED] = "ignored",         [NOTE_OUTCOME] = "outcome",
            [NOTE_REJECTED_ID] = "rejected_id", [NOTE_SKIPPED] = "skipped",
        };
        fprintf(f,
                "# HELP vidu_upscaled_build_info Build information.\n"
                "# TYPE vidu_upscaled_build_info gauge\n"
                "vidu_upscaled_build_info{version=\"%s\"} 1\n",
                VIDU_VERSION);
        gauge(f, "vidu_upscaled_start_time_seconds",
              "When the daemon started, seconds since the epoch.",
              (double)m->start_time_usec / 1e6);

        fprintf(f, "# HELP vidu_upscaled_webhook_requests_total Webhook requests by HTTP status "
                   "answered.\n"
                   "# TYPE vidu_upscaled_webhook_requests_total counter\n");
        for (size_t s = 100; s < ELEMENTSOF(m->requests_by_status); s++)
                if (m->requests_by_status[s])
                        fprintf(f, "vidu_upscaled_webhook_requests_total{status=\"%zu\"} %llu\n", s,
                                (unsigned long long)m->requests_by_status[s]);

        fprintf(f, "# HELP vidu_upscaled_notifications_total Creation ids and tasks in "
                   "notifications, by outcome.\n"
                   "# TYPE vidu_upscaled_notifications_total counter\n");
        for (size_t i = 0; i < _NOTE_OUTCOME_MAX; i++)
                fprintf(f, "vidu_upscaled_notifications_total{outcome=\"%s\"} %llu\n",
                        outcome_names[i], (unsigned long long)m->notifications[i]);
        counter(f, "vidu_upscaled_auth_failures_total",
                "Webhook requests refused for their credentials.", m->auth_failures);
        counter(f, "vidu_upscaled_replays_total", "Redeliveries recognised by their webhook id.",
                m->replays);

        fprintf(f, "# HELP vidu_upscaled_jobs Jobs in the ledger by state.\n# TYPE "
                   "vidu_upscaled_jobs gauge\n");
        for (size_t i = 0; i < _JOB_STATE_MAX; i++)
                fprintf(f, "vidu_upscaled_jobs{state=\"%s\"} %llu\n",
                        job_state_to_string((enum job_state)i),
                        (unsigned long long)m->jobs_by_state[i]);
        gauge(f, "vidu_upscaled_backlog",
              "Jobs waiting to be submitted (pending, waiting, submitting).", (double)m->backlog);
        gauge(f, "vidu_upscaled_upstream_in_flight", "Upstream requests in flight.",
              (double)m->in_flight);
        gauge(f, "vidu_upscaled_ledger_available",
              "1 while notifications can be recorded; 0 (answering 503) after a failed commit "
              "until the ledger takes writes again, or while its database is unreachable.",
              (double)m->ledger_available);
        gauge(f, "vidu_upscaled_ledger_turns_in_flight",
              "PostgreSQL: turns sent to the database and not yet answered (at most 2, 1 with "
              "store.pooler = transaction); 0 on SQLite, whose turns commit in place.",
              (double)m->ledger_turns_in_flight);
        gauge(f, "vidu_upscaled_webhook_staged",
              "Notifications received and waiting for the commit that records them.",
              (double)m->webhook_staged);
        gauge(f, "vidu_upscaled_journal_queue_bytes",
              "Journal entries waiting for systemd-journald, in bytes.",
              (double)journal_queued_bytes());
        fprintf(f,
                "# HELP vidu_upscaled_dispatch_paused 1 while submissions are paused: "
                "reason=\"account\" for an account-wide error or an outage, "
                "reason=\"operator\" by vidu-upscaled jobs pause.\n"
                "# TYPE vidu_upscaled_dispatch_paused gauge\n"
                "vidu_upscaled_dispatch_paused{reason=\"account\"} %d\n"
                "vidu_upscaled_dispatch_paused{reason=\"operator\"} %d\n",
                m->paused ? 1 : 0, m->operator_paused ? 1 : 0);
        gauge(f, "vidu_upscaled_budget_blocked",
              "1 while the spend guard ([budget]) holds due jobs back.", m->budget_blocked ? 1 : 0);
        static const char *const windows[3] = {"hour", "day", "credits_day"};
        bool header = false;
        for (size_t i = 0; i < 3; i++) {
                if (!m->has_budget[i])
                        continue;
                if (!header)
                        fprintf(f, "# HELP vidu_upscaled_budget_remaining What each configured "
                                   "budget window still allows (submissions; credits for "
                                   "credits_day).\n"
                                   "# TYPE vidu_upscaled_budget_remaining gauge\n");
                header = true;
                fprintf(f, "vidu_upscaled_budget_remaining{window=\"%s\"} %llu\n", windows[i],
                        (unsigned long long)m->budget_remaining[i]);
        }

        fprintf(f,
                "# HELP vidu_upscaled_upstream_requests_total Upstream requests by status class.\n"
                "# TYPE vidu_upscaled_upstream_requests_total counter\n");
        static const char *const classes[6] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
        for (size_t i = 0; i < 6; i++)
                fprintf(f, "vidu_upscaled_upstream_requests_total{class=\"%s\"} %llu\n", classes[i],
                        (unsigned long long)m->upstream_by_class[i]);
        counter(f, "vidu_upscaled_submissions_total", "Upscale submissions sent upstream.",
                m->submissions);
        counter(f, "vidu_upscaled_retries_total",
                "Submissions scheduled again after a retryable error.", m->retries);
        counter(f, "vidu_upscaled_uncertain_total",
                "Submissions whose outcome upstream is unknown.", m->uncertain);
        counter(f, "vidu_upscaled_stale_answers_total",
                "Upstream answers fenced out: the claim they were made under had lapsed and "
                "another instance had taken the job over (PostgreSQL).",
                m->stale_answers);
        counter(f, "vidu_upscaled_dead_total", "Jobs given up.", m->dead);
        counter(f, "vidu_upscaled_polls_total", "State queries sent upstream.", m->polls);
        fprintf(f, "# HELP vidu_upscaled_outcomes_total Jobs closed by their upscale's outcome, by "
                   "how it was learnt and the state it left.\n"
                   "# TYPE vidu_upscaled_outcomes_total counter\n");
        static const char *const via_names[2] = {"poll", "callback"};
        static const char *const outcome_states[2] = {"succeeded", "failed"};
        for (size_t v = 0; v < 2; v++)
                for (size_t st = 0; st < 2; st++)
                        fprintf(f, "vidu_upscaled_outcomes_total{via=\"%s\",state=\"%s\"} %llu\n",
                                via_names[v], outcome_states[st],
                                (unsigned long long)m->outcomes[v][st]);
        counter(f, "vidu_upscaled_dispatch_pauses_total", "Times all dispatch was paused.",
                m->account_pauses);
        static const char *const event_outcomes[_EVENT_OUTCOME_MAX] = {
            [EVENT_OUTCOME_DELIVERED] = "delivered",
            [EVENT_OUTCOME_RETRIED] = "retried",
            [EVENT_OUTCOME_DEAD] = "dead",
        };
        fprintf(f, "# HELP vidu_upscaled_events_total Outcome events' delivery attempts, by event "
                   "type and outcome.\n# TYPE vidu_upscaled_events_total counter\n");
        for (int st = 0; st < _JOB_STATE_MAX; st++) {
                const char *type = event_type_for_state((enum job_state)st);
                for (int o = 0; type && o < _EVENT_OUTCOME_MAX; o++)
                        fprintf(f, "vidu_upscaled_events_total{type=\"%s\",outcome=\"%s\"} %llu\n",
                                type, event_outcomes[o], (unsigned long long)m->events[st][o]);
        }
        gauge(f, "vidu_upscaled_events_backlog", "Outcome events waiting to be delivered.",
              (double)m->events_backlog);
        render_histogram(f, "vidu_upscaled_events_delivery_seconds",
                         "Time of one delivery attempt of an outcome event, request to answer.",
                         &m->event_attempt_seconds);
        counter(f, "vidu_upscaled_ledger_commit_errors_total", "Ledger commits that failed.",
                m->ledger_commit_errors);
        render_histogram(f, "vidu_upscaled_ledger_commit_seconds", "Time to make a batch durable.",
                         &m->commit_seconds);
        render_histogram(f, "vidu_upscaled_ledger_sync_seconds",
                         "The disk's fdatasync of the ledger's WAL inside a commit.",
                         &m->sync_seconds);
        render_histogram(f, "vidu_upscaled_upstream_request_seconds", "Upstream request latency.",
                         &m->upstream_seconds);
        render_histogram(f, "vidu_upscaled_webhook_request_seconds",
                         "Webhook request line to answer (a 202 once durable).",
                         &m->webhook_seconds);
        render_histogram(f, "vidu_upscaled_submit_wait_seconds",
                         "A job's recording to its first upstream submission.",
                         &m->submit_wait_seconds);
}
