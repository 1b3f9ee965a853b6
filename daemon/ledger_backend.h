/* ledger_backend.h: a ledger kept elsewhere than in ledger.c's SQLite file (PostgreSQL, in
 * pgledger.c): the operations the operator commands (`jobs`, `events`) use, which ledger.c's
 * functions hand over to it, with the same meaning (a save writes the outcome event its new
 * state calls for, as ledger.c's does). The daemon's own loop never opens such a ledger. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "ledger.h"

struct ledger_backend {
        const char *name;
        void (*close)(void *impl);
        const char *(*errmsg)(void *impl);
        int (*schema_version)(void *impl);
        int (*begin)(void *impl);
        int (*commit)(void *impl);
        void (*rollback)(void *impl);
        int (*get)(void *impl, const char *creation_id, struct job *ret);
        int (*get_by_upscale)(void *impl, const char *upscale_task_id, struct job *ret);
        int (*save)(void *impl, struct job *j, uint64_t now_usec);
        int (*foreach)(void *impl, int state, ledger_job_cb cb, void *userdata);
        int (*count_states)(void *impl, uint64_t counts[_JOB_STATE_MAX]);
        int (*meta_get)(void *impl, const char *key, char *buf, size_t size);
        int (*meta_set)(void *impl, const char *key, const char *value);
        int (*events_foreach)(void *impl, int state, ledger_event_cb cb, void *userdata);
        int (*event_retry)(void *impl, const char *id, uint64_t now_usec);
        int (*events_retry_dead)(void *impl, uint64_t now_usec);
};

/* A ledger whose operations above are impl's (freed by ledger_close through b->close). Any other
 * ledger_* call on it is -EOPNOTSUPP. 0, or -ENOMEM (impl closed). */
int ledger_open_backend(const struct ledger_backend *b, void *impl, struct ledger **ret);
