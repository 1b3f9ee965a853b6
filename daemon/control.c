/* control.c: the operator's pause and the spend guard's state, as rows of the ledger's meta
 * table (see control.h). */
#include "control.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

#define KEY_OPERATOR_PAUSE "operator_pause"
#define KEY_BUDGET_BLOCKED "budget_blocked"

int control_operator_paused(struct ledger *l, uint64_t *ret_since)
{
        char buf[32];
        uint64_t since = 0;
        int r = ledger_meta_get(l, KEY_OPERATOR_PAUSE, buf, sizeof(buf));
        if (r <= 0)
                return r;
        if (parse_uint(buf, 0, UINT64_MAX, &since) < 0)
                since = 0; /* written by hand: still a pause */
        if (ret_since)
                *ret_since = since;
        return 1;
}

int control_set_operator_pause(struct ledger *l, bool paused, uint64_t now)
{
        int r = control_operator_paused(l, NULL);
        if (r < 0 || (r > 0) == paused)
                return r < 0 ? r : 0;
        char buf[32];
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long)now);
        r = ledger_meta_set(l, KEY_OPERATOR_PAUSE, paused ? buf : NULL);
        return r < 0 ? r : 1;
}

int control_budget_blocked(struct ledger *l, struct control_budget *ret)
{
        char buf[64], window[16];
        unsigned long long at = 0;
        int r = ledger_meta_get(l, KEY_BUDGET_BLOCKED, buf, sizeof(buf));
        if (r <= 0)
                return r;
        struct control_budget b = {0};
        if (sscanf(buf, "%15s %llu", window, &at) == 2) {
                for (int w = 0; w < _BUDGET_WINDOW_MAX; w++)
                        if (strcmp(window, budget_window_to_string((enum budget_window)w)) == 0)
                                b.full = (enum budget_window)w;
                b.free_at = at;
        }
        if (ret)
                *ret = b;
        return 1;
}

int control_set_budget_blocked(struct ledger *l, const struct control_budget *b)
{
        int was = control_budget_blocked(l, NULL);
        if (was < 0)
                return was;
        char buf[64];
        if (b)
                snprintf(buf, sizeof(buf), "%s %llu", budget_window_to_string(b->full),
                         (unsigned long long)b->free_at);
        int r = ledger_meta_set(l, KEY_BUDGET_BLOCKED, b ? buf : NULL);
        if (r < 0)
                return r;
        return (was > 0) != (b != NULL);
}
