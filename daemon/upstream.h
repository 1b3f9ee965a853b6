/* upstream.h: the only code that knows the Vidu wire format: builds requests and classifies
 * answers for the "v1" (gateway) and "ent-v2" (official) flavours. Pure: no I/O. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "job.h"

/* How the exchange ended at the transport level. */
enum upstream_transport {
        UPSTREAM_TRANSPORT_OK,       /* an HTTP answer arrived */
        UPSTREAM_TRANSPORT_NOT_SENT, /* DNS, refused, reset or timed out before the request left */
        UPSTREAM_TRANSPORT_CUT,      /* the request was sent, then the connection died unanswered */
        UPSTREAM_TRANSPORT_TIMEOUT,  /* the request was sent, no complete answer in time */
};

struct upstream_answer {
        enum upstream_transport transport;
        const char *transport_error; /* curl's words when transport != OK */
        long status;
        const char *body;
        size_t body_len;
        const char *retry_after; /* header value or NULL */
};

enum upstream_verdict {
        UPSTREAM_ACCEPTED,  /* a task id came back */
        UPSTREAM_RETRY,     /* this job later: 5xx, 429, timeouts */
        UPSTREAM_UNCERTAIN, /* the upstream may have created it, but no id came back */
        UPSTREAM_FINAL,     /* this job can never succeed as asked */
        UPSTREAM_ACCOUNT,   /* credentials, credits, quota: every job would fail alike */
        UPSTREAM_OUTAGE,    /* nothing answered: the upstream or the network is down */
};

struct upstream_result {
        enum upstream_verdict verdict;
        char task_id[JOB_ID_SIZE];  /* ACCEPTED */
        char error[JOB_ERROR_SIZE]; /* a short reason: the upstream's reason word or ours */
        int64_t credits;            /* the upscale's cost when the answer carries it, else -1 */
};

const char *upstream_verdict_to_string(enum upstream_verdict v);

/* The query parameter added to upstream.callback_url in submissions, by which a callback is told
 * from a generation's notification arriving at the same URL. */
#define UPSTREAM_CALLBACK_MARK "vidu_upscaled=callback"

/* The submission request for creation_id: URL and JSON body (caller frees both). v1 sends
 * settings.duration = duration, or upscale.duration's number when it is 0; ent-v2's upscale-new
 * takes no duration. With cfg->callback_url, the body carries it (marked, see
 * UPSTREAM_CALLBACK_MARK); ent-v2 bodies also carry `payload`: the source's payload (NULL: none)
 * untouched, else a JSON text naming the creation id. */
int upstream_build_submit(const struct config *cfg, const char *creation_id, unsigned duration,
                          const char *payload, char **ret_url, char **ret_body);
/* The callback URL a submission carries: cfg->callback_url with UPSTREAM_CALLBACK_MARK added to
 * its query (caller frees); -ENOENT when callbacks are off. */
int upstream_callback_url(const struct config *cfg, char **ret_url);
/* True when a webhook request's raw query (NULL: none) holds UPSTREAM_CALLBACK_MARK. */
bool upstream_is_callback(const char *query);
/* The URL that reports the state of an upscale task, its id percent-escaped. */
int upstream_build_poll_url(const struct config *cfg, const char *task_id, char **ret_url);

/* Classifies the answer to a submission. */
void upstream_classify_submit(enum upstream_flavor flavor, const struct upstream_answer *a,
                              struct upstream_result *ret);

enum upstream_task_state {
        UPSTREAM_TASK_RUNNING, /* created, queueing, preparation, processing, or unknown */
        UPSTREAM_TASK_SUCCESS,
        UPSTREAM_TASK_FAILED,
        UPSTREAM_TASK_UNREADABLE, /* not an answer we understand; ask again later */
};

/* An upscale's state, from a poll's answer or a callback. */
struct upstream_poll {
        enum upstream_task_state state;
        char result_url[JOB_URL_SIZE];
        char error[JOB_ERROR_SIZE];
        int64_t credits; /* "credits" of the task (the official API's answers), else -1 */
};

/* An upscale's outcome as a notification (a callback) reported it, in a poll's terms. */
void upstream_outcome_from_note(const struct note_task *t, struct upstream_poll *ret);

/* Reads the answer to a state query. */
void upstream_parse_poll(enum upstream_flavor flavor, const struct upstream_answer *a,
                         struct upstream_poll *ret);

/* A task object's "credits": a non-negative integer (or its decimal text), else -1. */
struct json_object;
int64_t upstream_task_credits(struct json_object *task);

/* Appends src percent-escaped (RFC 3986 unreserved kept) into dst of size; -ENOBUFS if short. */
int upstream_escape(const char *src, char *dst, size_t size);
