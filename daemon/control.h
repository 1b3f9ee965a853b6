/* control.h: the switches kept in the ledger so every instance sharing it obeys them and a restart
 * keeps them: the operator's pause of all submissions, and whether the spend guard holds jobs
 * back (so its journal entries are written once per change, not once per process). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "budget.h"
#include "ledger.h"

/* 1 and *ret_since (when the pause began) while an operator has paused submissions, 0 when not,
 * or -errno. */
int control_operator_paused(struct ledger *l, uint64_t *ret_since);
/* Pauses (at now) or resumes; 1 when that changed something, 0 when it was so already. Runs in
 * the caller's transaction, or alone. */
int control_set_operator_pause(struct ledger *l, bool paused, uint64_t now);

struct control_budget {
        enum budget_window full; /* the window that is full */
        uint64_t free_at;        /* when a submission may leave again */
};
/* 1 and *ret while the ledger records the budget as reached, 0 when not, or -errno. */
int control_budget_blocked(struct ledger *l, struct control_budget *ret);
/* Records the budget as reached (b) or not (NULL); 1 when that changed from what the ledger had. */
int control_set_budget_blocked(struct ledger *l, const struct control_budget *b);
