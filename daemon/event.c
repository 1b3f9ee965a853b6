/* event.c: the outcome events' types and JSON body, written with jsonw (pure). */
#include "event.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jsonw.h"
#include "util.h"

static const char *const type_names[_JOB_STATE_MAX] = {
    [JOB_SUCCEEDED] = "upscale.succeeded",
    [JOB_FAILED] = "upscale.failed",
    [JOB_DEAD] = "upscale.dead",
    [JOB_UNCERTAIN] = "upscale.uncertain",
};

const char *event_type_for_state(enum job_state s)
{
        return (unsigned)s < _JOB_STATE_MAX ? type_names[s] : NULL;
}

int event_state_for_type(const char *type)
{
        for (int s = 0; s < _JOB_STATE_MAX; s++)
                if (type_names[s] && type && strcmp(type_names[s], type) == 0)
                        return s;
        return -EINVAL;
}

void event_format_time(uint64_t usec, char *buf, size_t size)
{
        time_t sec = (time_t)(usec / USEC_PER_SEC);
        struct tm tm;
        gmtime_r(&sec, &tm);
        snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%06uZ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(usec % USEC_PER_SEC));
}

/* ,"name":"value" when value is set. */
static void field(char *dst, size_t *o, const char *name, const char *value)
{
        if (isempty(value))
                return;
        jsonw_raw(dst, o, ",\"");
        jsonw_raw(dst, o, name);
        jsonw_raw(dst, o, "\":");
        jsonw_string(dst, o, value);
}

int event_body(const struct job *j, const char *payload, uint64_t at_usec, char **ret)
{
        const char *type = event_type_for_state(j->state);
        if (!type)
                return -EINVAL;
        char ts[80], num[UINT_DEC_SIZE]; /* 80: what the compiler allows any struct tm to print */
        event_format_time(at_usec, ts, sizeof(ts));
        size_t max = 256 + jsonw_string_max(j->creation_id) + jsonw_string_max(j->source_task_id) +
                     jsonw_string_max(j->upscale_task_id) + jsonw_string_max(j->result_url) +
                     jsonw_string_max(j->upstream_error) +
                     (payload ? jsonw_string_max(payload) : 0);
        char *b = malloc(max);
        if (!b)
                return -ENOMEM;
        size_t o = 0;
        jsonw_raw(b, &o, "{\"type\":");
        jsonw_string(b, &o, type);
        jsonw_raw(b, &o, ",\"timestamp\":");
        jsonw_string(b, &o, ts);
        jsonw_raw(b, &o, ",\"data\":{\"creation_id\":");
        jsonw_string(b, &o, j->creation_id);
        field(b, &o, "source_task_id", j->source_task_id);
        field(b, &o, "upscale_task_id", j->upscale_task_id);
        field(b, &o, "state", job_state_to_string(j->state));
        field(b, &o, "result_url", j->result_url);
        if (j->attempt > 0) {
                format_uint(j->attempt, num);
                jsonw_raw(b, &o, ",\"attempt\":");
                jsonw_raw(b, &o, num);
        }
        if (j->http_status > 0) {
                format_uint((uint64_t)j->http_status, num);
                jsonw_raw(b, &o, ",\"http_status\":");
                jsonw_raw(b, &o, num);
        }
        field(b, &o, "error", j->upstream_error);
        if (payload)
                field(b, &o, "payload", payload);
        jsonw_raw(b, &o, "}}");
        b[o] = 0;
        *ret = b;
        return 0;
}

enum event_verdict event_classify(long status)
{
        if (status >= 200 && status <= 299)
                return EVENT_DELIVERED;
        if (status >= 400 && status <= 499 && status != 408 && status != 429)
                return EVENT_REFUSED;
        return EVENT_RETRY;
}
