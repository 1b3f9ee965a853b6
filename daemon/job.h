/* job.h: a job (one creation id to upscale), its states, and the names they carry in the ledger
 * and the journal. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "notification.h"

enum job_state {
        JOB_PENDING,    /* recorded, waiting for its first submission */
        JOB_SUBMITTING, /* marked before the POST goes out; found at start-up => crashed mid-call */
        JOB_WAITING,    /* a retryable error; next attempt at next_at */
        JOB_SUBMITTED,  /* the upstream accepted it; followed until it ends */
        JOB_SUCCEEDED,
        JOB_FAILED,    /* the upstream reports the upscale failed */
        JOB_DEAD,      /* final error or attempts exhausted */
        JOB_UNCERTAIN, /* may or may not exist upstream; an operator decides */
        _JOB_STATE_MAX,
};

#define JOB_ID_SIZE    (NOTIFICATION_ID_MAX + 1)
#define JOB_ERROR_SIZE 256
#define JOB_URL_SIZE   2048

struct job {
        char creation_id[JOB_ID_SIZE];
        char source_task_id[JOB_ID_SIZE];
        char upscale_task_id[JOB_ID_SIZE];
        enum job_state state;
        unsigned attempt; /* submissions made so far */
        uint64_t next_at; /* CLOCK_REALTIME usec: next submission or poll */
        int http_status;  /* last upstream answer, 0 if none */
        char upstream_error[JOB_ERROR_SIZE];
        char result_url[JOB_URL_SIZE];
        uint64_t created_at;
        uint64_t updated_at;
        unsigned duration; /* settings.duration to send; 0: upscale.duration's number */
        int64_t credits;   /* the upscale's cost as the upstream reported it; -1 unknown. Written
                              only by ledger_set_credits, never by a save. */
};

const char *job_state_to_string(enum job_state s);
int job_state_from_string(const char *s); /* -EINVAL if unknown */
bool job_state_is_final(enum job_state s);

/* Copies src into a fixed-size job field, truncating safely. */
void job_set_field(char *dst, size_t size, const char *src);
