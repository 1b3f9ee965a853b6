/* dispatcher.h: takes due jobs from the ledger, submits them with bounded concurrency, follows
 * accepted upscales to their end, and records every transition before acting on it. */
#pragma once

#include <stdbool.h>
#include <systemd/sd-event.h>

#include "budget.h"
#include "config.h"
#include "control.h"
#include "ledger.h"
#include "metrics.h"
#include "txn.h"

struct dispatcher;

int dispatcher_new(sd_event *event, struct ledger *ledger, struct txn *txn,
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

/* Closes a submitted job from an upscale outcome seen in a notification. Runs inside the caller's
 * transaction; returns the new state (JOB_SUCCEEDED / JOB_FAILED) or -errno, 0 when nothing
 * changed. The journal entry is the caller's to write after the commit. */
int dispatcher_apply_outcome(struct ledger *ledger, struct job *j, bool succeeded,
                             const char *result_url, const char *err_code, uint64_t now);
