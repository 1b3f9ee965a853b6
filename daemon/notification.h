/* notification.h: turns a webhook body into the finished tasks and creation ids it reports
 * (pure: no I/O, no logging). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NOTIFICATION_ID_MAX 128
/* The longest `payload` kept: what the official API passes through. */
#define NOTIFICATION_PAYLOAD_MAX (1024 * 1024)

struct selection;

struct notification_limits {
        size_t max_depth;     /* JSON nesting depth */
        size_t max_tasks;     /* task objects in one notification */
        size_t max_creations; /* creations over all tasks */
        /* Which finished tasks and creations trigger (select.h); NULL: all of them. */
        const struct selection *select;
};

struct note_task {
        char *id;             /* "id", else "task_id"; NULL if missing or invalid (see id_error) */
        const char *id_error; /* static reason when the id was unusable, else NULL */
        char *type;           /* NULL when absent (official callback) */
        char *state;          /* NULL when absent */
        char *err_code;       /* NULL when absent or empty */
        char *result_url;     /* "uri", else "url", of the first creation; NULL when none */
        bool is_upscale;      /* type == "upscale" */
        /* The task's `payload` string as sent (JSON escapes decoded), kept for its creations;
         * NULL when absent, not a string, holding a NUL byte or longer than
         * NOTIFICATION_PAYLOAD_MAX (payload_error then says which of the last three). */
        char *payload;
        const char *payload_error;
        int64_t credits;     /* "credits" (the official callback's cost), -1 when absent */
        char **creation_ids; /* valid creation ids, in order */
        size_t n_creations;
        char *
            *rejected_ids; /* creation entries whose id was unusable (printable form, truncated) */
        const char **rejected_reasons;
        size_t n_rejected;
        /* Selection, decided for a succeeded task that is not an upscale: why the whole task is
         * skipped and the setting or rule that skipped it (NULL when it triggers); creations
         * skipped by select.creation_types (not in creation_ids) and their types. */
        char *skip_reason;
        char *skip_rule;
        char **skipped_ids;
        char **skipped_types;
        size_t n_skipped;
        /* settings.duration when it is a whole number from 1 to 3600, else 0. */
        unsigned source_duration;
};

struct notification {
        struct note_task *tasks;
        size_t n_tasks;
};

/* Parses a body in any of the four shapes: a bare task, an official callback (task_id, no type),
 * an envelope {"data": task} / {"code":..,"data":task}, a batch (array or {"tasks": [...]}).
 * Returns 0 and *ret; -EBADMSG when the body is not JSON or holds no task object; -E2BIG when a
 * limit is exceeded. *ret_error (static string) says why on failure. */
int notification_parse(const char *body, size_t len, const struct notification_limits *limits,
                       struct notification **ret, const char **ret_error);

struct notification *notification_free(struct notification *n);

/* True if s is a usable id: 1..NOTIFICATION_ID_MAX bytes, no control characters. */
bool notification_id_valid(const char *s, size_t len, const char **ret_reason);

/* state == "success" */
bool note_task_succeeded(const struct note_task *t);
/* state == "failed" */
bool note_task_failed(const struct note_task *t);
