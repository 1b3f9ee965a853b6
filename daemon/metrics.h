/* metrics.h: the daemon's counters and histograms, rendered in the Prometheus text format.
 * Never holds a secret. */
#pragma once

#include <stdint.h>
#include <stdio.h>

#include "job.h"

#define METRICS_BUCKETS 16

struct histogram {
        uint64_t buckets[METRICS_BUCKETS]; /* cumulative at render time, per bucket here */
        uint64_t count;
        double sum;
};

enum notification_outcome {
        NOTE_ACCEPTED,    /* creation ids recorded */
        NOTE_DUPLICATE,   /* creation ids already known */
        NOTE_IGNORED,     /* tasks not finished, failed generations, upscale outcomes */
        NOTE_OUTCOME,     /* an upscale's own outcome closed a job */
        NOTE_REJECTED_ID, /* ids that were unusable */
        NOTE_SKIPPED,     /* tasks or creations not selected ([select]) */
        _NOTE_OUTCOME_MAX,
};

enum event_outcome {
        EVENT_OUTCOME_DELIVERED, /* a 2xx */
        EVENT_OUTCOME_RETRIED,   /* an attempt failed; sent again later */
        EVENT_OUTCOME_DEAD,      /* refused for good or too old */
        _EVENT_OUTCOME_MAX,
};

struct metrics {
        uint64_t requests_by_status[600];          /* webhook answers by HTTP status */
        uint64_t notifications[_NOTE_OUTCOME_MAX]; /* per creation id / task */
        uint64_t auth_failures;
        uint64_t upstream_by_class[6]; /* index status/100; 0 = no answer */
        uint64_t submissions;
        uint64_t retries;
        uint64_t uncertain;
        uint64_t stale_answers; /* PostgreSQL: late answers fenced out */
        uint64_t dead;
        uint64_t polls;
        uint64_t outcomes[2][2]; /* [enum outcome_via][succeeded, failed]: jobs closed */
        uint64_t account_pauses;
        uint64_t ledger_commit_errors;
        uint64_t replays;
        struct histogram commit_seconds;
        struct histogram sync_seconds; /* the WAL's fdatasync inside a commit */
        struct histogram upstream_seconds;
        struct histogram webhook_seconds;     /* request line to answer, webhook path */
        struct histogram submit_wait_seconds; /* job recorded to its first POST */
        /* [events]: per job state that made the event (its type) and outcome of an attempt. */
        uint64_t events[_JOB_STATE_MAX][_EVENT_OUTCOME_MAX];
        uint64_t events_backlog;                /* pending events, refreshed before rendering */
        struct histogram event_attempt_seconds; /* one delivery attempt, request to answer */
        uint64_t jobs_by_state[_JOB_STATE_MAX]; /* refreshed from the ledger before rendering */
        uint64_t backlog;                       /* pending + waiting + submitting */
        uint64_t in_flight;
        uint64_t webhook_staged; /* requests waiting for their commit, refreshed before rendering */
        int ledger_available;    /* the webhook takes notifications (else 503) */
        unsigned ledger_turns_in_flight; /* PostgreSQL: turns sent, not yet answered */
        int paused;                      /* account-wide pause (dispatcher) */
        int operator_paused;             /* `vidu-upscaled jobs pause` (the ledger's switch) */
        int budget_blocked;              /* the spend guard holds due jobs back */
        /* What each budget window still allows, read from the ledger before rendering;
         * has_budget[w] false for a window without a limit (not rendered). */
        uint64_t budget_remaining[3];
        int has_budget[3];
        uint64_t start_time_usec;
};

void metrics_observe(struct histogram *h, double seconds);
void metrics_render(const struct metrics *m, FILE *f);
