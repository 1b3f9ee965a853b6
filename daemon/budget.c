/* budget.c: the spend guard's arithmetic over the rolling windows (pure; see budget.h). */
#include "budget.h"

#include "util.h"

const char *budget_window_to_string(enum budget_window w)
{
        static const char *const names[] = {
            [BUDGET_WINDOW_HOUR] = "hour",
            [BUDGET_WINDOW_DAY] = "day",
            [BUDGET_WINDOW_CREDITS_DAY] = "credits_day",
        };
        return (unsigned)w < ELEMENTSOF(names) ? names[w] : "unknown";
}

bool budget_enabled(const struct budget_limits *l)
{
        return l->per_hour > 0 || l->per_day > 0 || l->credits_per_day > 0;
}

static uint64_t limit_of(const struct budget_limits *l, enum budget_window w)
{
        switch (w) {
        case BUDGET_WINDOW_HOUR:
                return l->per_hour;
        case BUDGET_WINDOW_DAY:
                return l->per_day;
        case BUDGET_WINDOW_CREDITS_DAY:
                return l->credits_per_day;
        default:
                return 0;
        }
}

static uint64_t used_of(const struct ledger_spend *u, enum budget_window w)
{
        switch (w) {
        case BUDGET_WINDOW_HOUR:
                return u->hour;
        case BUDGET_WINDOW_DAY:
                return u->day;
        case BUDGET_WINDOW_CREDITS_DAY:
                return u->day_credits;
        default:
                return 0;
        }
}

uint64_t budget_remaining(const struct budget_limits *l, const struct ledger_spend *used,
                          enum budget_window w)
{
        uint64_t limit = limit_of(l, w), u = used_of(used, w);
        if (limit == 0)
                return BUDGET_UNLIMITED;
        return u >= limit ? 0 : limit - u;
}

uint64_t budget_room(const struct budget_limits *l, const struct ledger_spend *used,
                     enum budget_window *ret_full)
{
        uint64_t room = BUDGET_UNLIMITED;
        for (int w = 0; w < _BUDGET_WINDOW_MAX; w++) {
                uint64_t left = budget_remaining(l, used, (enum budget_window)w);
                if (left == 0) {
                        if (ret_full)
                                *ret_full = (enum budget_window)w;
                        return 0;
                }
                /* Credits left are not submissions: each one of unknown cost counts as
                 * assumed_credits, and the last may go over (its cost is not known before). */
                if (w == BUDGET_WINDOW_CREDITS_DAY && left != BUDGET_UNLIMITED)
                        left = l->assumed_credits == 0
                                   ? BUDGET_UNLIMITED
                                   : (left + l->assumed_credits - 1) / l->assumed_credits;
                if (left < room)
                        room = left;
        }
        return room;
}

void budget_scan_init(struct budget_scan *s, const struct budget_limits *l,
                      const struct ledger_spend *used, uint64_t now)
{
        *s = (struct budget_scan){.l = *l, .used = *used, .now = now};
        for (int w = 0; w < _BUDGET_WINDOW_MAX; w++)
                s->full[w] = budget_remaining(l, used, (enum budget_window)w) == 0;
}

static bool scan_done(const struct budget_scan *s)
{
        for (int w = 0; w < _BUDGET_WINDOW_MAX; w++)
                if (s->full[w] && s->free_at[w] == 0)
                        return false;
        return true;
}

bool budget_scan_feed(struct budget_scan *s, uint64_t at, int64_t credits)
{
        const struct budget_limits *l = &s->l;
        /* The day window holds used.day submissions; room frees once used.day - limit + 1 of
         * them (the oldest) have aged out, at the last of those one's time plus a day. */
        s->day_seen++;
        if (s->full[BUDGET_WINDOW_DAY] && !s->free_at[BUDGET_WINDOW_DAY] &&
            s->day_seen >= s->used.day - l->per_day + 1)
                s->free_at[BUDGET_WINDOW_DAY] = at + l->day_usec;
        /* The same within the hour window, the newest part of the day's. */
        if (at + l->hour_usec > s->now) {
                s->hour_seen++;
                if (s->full[BUDGET_WINDOW_HOUR] && !s->free_at[BUDGET_WINDOW_HOUR] &&
                    s->hour_seen >= s->used.hour - l->per_hour + 1)
                        s->free_at[BUDGET_WINDOW_HOUR] = at + l->hour_usec;
        }
        /* Credits: room once what is left in the window is below the limit. */
        if (s->full[BUDGET_WINDOW_CREDITS_DAY] && !s->free_at[BUDGET_WINDOW_CREDITS_DAY]) {
                s->credits_gone += credits >= 0 ? (uint64_t)credits : l->assumed_credits;
                if (s->used.day_credits - (s->credits_gone < s->used.day_credits
                                               ? s->credits_gone
                                               : s->used.day_credits) <
                    l->credits_per_day)
                        s->free_at[BUDGET_WINDOW_CREDITS_DAY] = at + l->day_usec;
        }
        return scan_done(s);
}

uint64_t budget_scan_result(const struct budget_scan *s)
{
        uint64_t t = s->now;
        for (int w = 0; w < _BUDGET_WINDOW_MAX; w++) {
                if (!s->full[w])
                        continue;
                uint64_t at = s->free_at[w];
                if (at == 0) /* not explained by the submissions seen: a whole window */
                        at = s->now + (w == BUDGET_WINDOW_HOUR ? s->l.hour_usec : s->l.day_usec);
                if (at > t)
                        t = at;
        }
        return t;
}
