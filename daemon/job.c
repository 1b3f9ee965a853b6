/* job.c: job state names and small helpers shared by the ledger, the dispatcher and the tools. */
#include "job.h"

#include <errno.h>
#include <string.h>

#include "util.h"

static const char *const state_names[_JOB_STATE_MAX] = {
    [JOB_PENDING] = "pending",     [JOB_SUBMITTING] = "submitting", [JOB_WAITING] = "waiting",
    [JOB_SUBMITTED] = "submitted", [JOB_SUCCEEDED] = "succeeded",   [JOB_FAILED] = "failed",
    [JOB_DEAD] = "dead",           [JOB_UNCERTAIN] = "uncertain",
};

const char *job_state_to_string(enum job_state s)
{
        if ((unsigned)s >= _JOB_STATE_MAX)
                return "unknown";
        return state_names[s];
}

int job_state_from_string(const char *s)
{
        for (size_t i = 0; i < ELEMENTSOF(state_names); i++)
                if (s && strcmp(s, state_names[i]) == 0)
                        return (int)i;
        return -EINVAL;
}

bool job_state_is_final(enum job_state s)
{
        return s == JOB_SUCCEEDED || s == JOB_FAILED || s == JOB_DEAD;
}

void job_set_field(char *dst, size_t size, const char *src)
{
        if (!src) {
                dst[0] = 0;
                return;
        }
        size_t n = strnlen(src, size - 1);
        memcpy(dst, src, n);
        dst[n] = 0;
}
