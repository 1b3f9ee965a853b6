/* journal.h: structured log entries for the systemd journal, readable lines on a terminal. */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <syslog.h>
#include <systemd/sd-event.h>

#include "util.h"

/* One MESSAGE_ID per kind of event; each is explained in systemd/vidu-upscaled.catalog. */
#define MSGID_ACCEPTED          "01922beebe454baab81b35dd644841a3"
#define MSGID_DUPLICATE         "30f7254b715f4d0e9bab36c16e850214"
#define MSGID_IGNORED           "92ca4b1715f64645803ed2185382e7f8"
#define MSGID_REJECTED          "19ff8451ff164cc3b79b776f01906719"
#define MSGID_SUBMITTED         "00bc447bb37b45ef8a6b207f9e739d5a"
#define MSGID_RETRYING          "859a2160c77d48ac82980fc6ceddd0e0"
#define MSGID_SUCCEEDED         "668bde7eb3114d55b1c3f662b202d3f2"
#define MSGID_FAILED            "35ed297847424108a3869413da087f17"
#define MSGID_DEAD              "1dae4cff18c9424c863a2a844d2b2bc4"
#define MSGID_UNCERTAIN         "d98f4c02d9084af080c09af8aade6cdc"
#define MSGID_ACCOUNT_PAUSED    "66b190521a06429ba25b772304ed80b0"
#define MSGID_ACCOUNT_RESUMED   "48154c228ef549e68be3ea8a73a28057"
#define MSGID_UPSTREAM_PROTOCOL "8cb357319d2a4899806a7bf502f7d361"
#define MSGID_STARTED           "ee19fe62b61c48a0810896f0ce6b96e5"
#define MSGID_STOPPING          "edb36be850df49e4819d551fa9715b02"
#define MSGID_RELOADED          "86ab561882f04ec785c61221c6cbc1e1"
#define MSGID_RELOAD_FAILED     "d7039bd8550643b28a9c7e38ef6a1850"
#define MSGID_AUTH_FAILED       "fb7ba4281f2d4965af8a1b5f6d705fd8"
#define MSGID_LEDGER_ERROR      "9a383fa5d9f14d20834b031e0a178d2b"
#define MSGID_RELEASED          "9f00456c16f6472fb5b79b65a30d0946"
#define MSGID_ABANDONED         "118c6c4ecf9b4f90a1eb93556f3b71a8"
#define MSGID_SKIPPED           "78af930dc5634721a5db8c06c6432ad4"
#define MSGID_BUDGET_REACHED    "ef028423073a48e584fd3846d1b65531"
#define MSGID_BUDGET_RESUMED    "2e685d26100844dcb5f8b6125e4f749c"
#define MSGID_OPERATOR_PAUSED   "d747f6be114d46b8b1cc0c5eb21600fe"
#define MSGID_OPERATOR_RESUMED  "a63f193cd63944cb84892399ca82cb30"
#define MSGID_EVENT_DELIVERED   "aa7488e057974680992a8981d0b91885"
#define MSGID_STALE_ANSWER      "2f501fac37f24958baab75468f6c559f"
#define MSGID_EVENT_DEAD        "7a3d7749a58b45ac9d15a2964c9bf240"

/* What a job-transition entry carries; NULL / 0 fields are left out. */
struct job_event {
        const char *message_id;
        const char *creation_id;
        const char *source_task_id;
        const char *upscale_task_id;
        const char *job_state; /* accepted, duplicate, skipped, submitted, retrying, succeeded,
                                  failed, dead, uncertain */
        uint64_t accepted_at;  /* realtime usec: on a `submitted` entry that folds `accepted` */
        unsigned attempt;
        int http_status;
        const char *upstream_error;
        const char *result_url;
        const char *select_rule; /* the [select] setting or rule that skipped a task/creation */
        const char *event_id;    /* an outcome event sent downstream ([events]) */
        const char *event_type;  /* upscale.succeeded, ... */
};

/* Where entries go: the journal when its socket answers, and readable lines on stderr unless
 * stderr is itself connected to the journal ($JOURNAL_STREAM). */
void journal_setup(int max_level);
/* Tests: entries go to the datagram socket at path instead of journald's (NULL: journald's). */
void journal_use_socket(const char *path);
/* Hands sending to the loop: what a callback logs leaves after it in one sendmmsg(), and
 * entries that had to wait while journald was busy leave when it reads again (without the loop
 * each entry leaves at once, or at exit, waiting at most 5 s). Detaching sends what waits. */
int journal_attach_event(sd_event *event);
void journal_detach_event(void);
/* Bytes of entries waiting for journald. */
size_t journal_queued_bytes(void);
void journal_set_level(int max_level);
bool journal_to_stderr(void);

void journal_log_internal(int priority, const char *file, int line, const char *func,
                          const char *message_id, const char *fmt, ...) _printf_(6, 7);
void journal_job_internal(int priority, const char *file, int line, const char *func,
                          const struct job_event *ev, const char *fmt, ...) _printf_(6, 7);

/* log_info("...") and friends carry the caller's source location (CODE_FILE, CODE_LINE,
 * CODE_FUNC). */
#define log_full(prio, msgid, ...)                                                                 \
        journal_log_internal(prio, __FILE__, __LINE__, __func__, msgid, __VA_ARGS__)
#define log_debug(...)   log_full(LOG_DEBUG, NULL, __VA_ARGS__)
#define log_info(...)    log_full(LOG_INFO, NULL, __VA_ARGS__)
#define log_notice(...)  log_full(LOG_NOTICE, NULL, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, NULL, __VA_ARGS__)
#define log_error(...)   log_full(LOG_ERR, NULL, __VA_ARGS__)
#define log_job(prio, ev, ...)                                                                     \
        journal_job_internal(prio, __FILE__, __LINE__, __func__, ev, __VA_ARGS__)
