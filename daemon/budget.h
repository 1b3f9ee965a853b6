/* budget.h: the spend guard's arithmetic: how many submissions the rolling windows (the last hour,
 * the last day, the day's credits) still allow, and when a window that is full frees room. Pure:
 * the ledger supplies the counts and the submissions; no I/O. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "ledger.h"

#define BUDGET_HOUR_USEC (3600ULL * 1000000ULL)
#define BUDGET_DAY_USEC  (24ULL * BUDGET_HOUR_USEC)
#define BUDGET_UNLIMITED UINT64_MAX

enum budget_window {
        BUDGET_WINDOW_HOUR,        /* budget.max_submissions_per_hour */
        BUDGET_WINDOW_DAY,         /* budget.max_submissions_per_day */
        BUDGET_WINDOW_CREDITS_DAY, /* budget.max_credits_per_day */
        _BUDGET_WINDOW_MAX,
};

struct budget_limits {
        uint64_t per_hour, per_day, credits_per_day; /* 0: no limit */
        uint64_t assumed_credits;     /* what a submission of unknown cost counts as */
        uint64_t hour_usec, day_usec; /* the windows' lengths: BUDGET_HOUR_USEC, BUDGET_DAY_USEC */
};

/* "hour", "day", "credits_day": the metrics' label and the journal's BUDGET_WINDOW. */
const char *budget_window_to_string(enum budget_window w);
bool budget_enabled(const struct budget_limits *l);
/* What a window still allows: submissions (credits for the credits window), BUDGET_UNLIMITED when
 * it has no limit. */
uint64_t budget_remaining(const struct budget_limits *l, const struct ledger_spend *used,
                          enum budget_window w);
/* How many submissions may leave now (BUDGET_UNLIMITED when no window limits them); when none may,
 * *ret_full is the first window that is full. A submission of unknown cost counts as
 * assumed_credits: with 0, the credits window lets any number leave while it is not full. */
uint64_t budget_room(const struct budget_limits *l, const struct ledger_spend *used,
                     enum budget_window *ret_full);

/* When room frees: fed the day window's submissions oldest first (budget_scan_feed), it finds, for
 * every full window, when enough of them have aged out of it, and answers the latest of those
 * times: the earliest a submission may leave. */
struct budget_scan {
        struct budget_limits l;
        struct ledger_spend used;
        uint64_t now;
        uint64_t hour_seen, day_seen, credits_gone;
        uint64_t free_at[_BUDGET_WINDOW_MAX]; /* 0: not found yet (or not full) */
        bool full[_BUDGET_WINDOW_MAX];
};
void budget_scan_init(struct budget_scan *s, const struct budget_limits *l,
                      const struct ledger_spend *used, uint64_t now);
/* credits -1: unknown. Returns true once every full window's time is known. */
bool budget_scan_feed(struct budget_scan *s, uint64_t at, int64_t credits);
/* The time room frees (now + a window's length for a window the submissions did not explain). */
uint64_t budget_scan_result(const struct budget_scan *s);
