/* event.h: the outcome events sent downstream ([events]): their types and their JSON body (pure:
 * no I/O, no clock). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "job.h"

/* The job states that make an event, as a mask of (1u << state). */
#define EVENT_STATES_ALL                                                                           \
        ((1u << JOB_SUCCEEDED) | (1u << JOB_FAILED) | (1u << JOB_DEAD) | (1u << JOB_UNCERTAIN))

/* "upscale.succeeded" for JOB_SUCCEEDED, and so on; NULL for a state that makes no event. */
const char *event_type_for_state(enum job_state s);
/* The job state an event type names, or -EINVAL. */
int event_state_for_type(const char *type);

/* "2026-12-05T08:50:50.123456Z" (RFC 3339, UTC) into buf (size >= 32). */
void event_format_time(uint64_t usec, char *buf, size_t size);

/* The body sent for j, which has just entered its state at at_usec:
 * {"type":...,"timestamp":...,"data":{"creation_id",...,"payload"}}, fields without a value left
 * out. payload is the source notification's payload (a string) or NULL. Returns 0 and a string
 * the caller frees, -EINVAL for a state that makes no event, or -ENOMEM. */
int event_body(const struct job *j, const char *payload, uint64_t at_usec, char **ret);

enum event_verdict {
        EVENT_DELIVERED, /* any 2xx */
        EVENT_RETRY,     /* no answer, 5xx, 408, 429, 3xx (not followed), anything else */
        EVENT_REFUSED,   /* another 4xx: final */
};

/* What an attempt's answer means: status 0 when there was none (timeout, refused, cut). */
enum event_verdict event_classify(long status);
