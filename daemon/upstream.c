/* upstream.c: the Vidu wire format: request bodies, URLs, and what each answer means. */
#include "upstream.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "jsonparse.h"
#include "jsonw.h"
#include "util.h"

const char *upstream_verdict_to_string(enum upstream_verdict v)
{
        static const char *const names[] = {
            [UPSTREAM_ACCEPTED] = "accepted",   [UPSTREAM_RETRY] = "retry",
            [UPSTREAM_UNCERTAIN] = "uncertain", [UPSTREAM_FINAL] = "final",
            [UPSTREAM_ACCOUNT] = "account",     [UPSTREAM_OUTAGE] = "outage",
        };
        return (unsigned)v < ELEMENTSOF(names) ? names[v] : "unknown";
}

int upstream_escape(const char *src, char *dst, size_t size)
{
        static const char hex[] = "0123456789ABCDEF";
        size_t o = 0;
        for (const unsigned char *p = (const unsigned char *)src; *p; p++) {
                bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                             (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' ||
                             *p == '~';
                if (o + (plain ? 1 : 3) >= size)
                        return -ENOBUFS;
                if (plain)
                        dst[o++] = (char)*p;
                else {
                        dst[o++] = '%';
                        dst[o++] = hex[*p >> 4];
                        dst[o++] = hex[*p & 15];
                }
        }
        if (o >= size)
                return -ENOBUFS;
        dst[o] = 0;
        return 0;
}

int upstream_callback_url(const struct config *cfg, char **ret_url)
{
        if (isempty(cfg->callback_url))
                return -ENOENT;
        /* The configuration refuses a fragment, so the mark goes at the end. */
        if (asprintf(ret_url, "%s%s%s", cfg->callback_url,
                     strchr(cfg->callback_url, '?') ? "&" : "?", UPSTREAM_CALLBACK_MARK) < 0)
                return -ENOMEM;
        return 0;
}

bool upstream_is_callback(const char *query)
{
        size_t n = strlen(UPSTREAM_CALLBACK_MARK);
        for (const char *p = query; p && *p;) {
                size_t len = strcspn(p, "&");
                if (len == n && memcmp(p, UPSTREAM_CALLBACK_MARK, n) == 0)
                        return true;
                p += len;
                if (*p == '&')
                        p++;
        }
        return false;
}

/* The body is written directly rather than built as json-c objects and serialized: that took
 * 14,000 instructions a submission (callgrind), more than libcurl's own work to send it. Same
 * text, same key order as json-c's plain output. */
int upstream_build_submit(const struct config *cfg, const char *creation_id, unsigned duration,
                          const char *payload, char **ret_url, char **ret_body)
{
        bool v2 = cfg->flavor == UPSTREAM_FLAVOR_ENT_V2;
        const char *second = v2 ? (cfg->resolution ? cfg->resolution : "1080p") : cfg->model;
        _cleanup_free_ char *callback = NULL, *generated = NULL;
        int r;
        if (!second)
                second = "";
        r = upstream_callback_url(cfg, &callback);
        if (r < 0 && r != -ENOENT)
                return r;
        if (v2 && !payload) {
                /* No payload from the source: one that names the creation, so whoever reads the
                 * upscale (its callback, its task) knows what it was for. */
                generated = malloc(jsonw_string_max(creation_id) + sizeof("{\"creation_id\":}"));
                if (!generated)
                        return -ENOMEM;
                size_t g = 0;
                jsonw_raw(generated, &g, "{\"creation_id\":");
                jsonw_string(generated, &g, creation_id);
                jsonw_raw(generated, &g, "}");
                generated[g] = 0;
                payload = generated;
        }
        /* Every string escaped at worst, the keys and the duration's digits. */
        size_t cap = jsonw_string_max(creation_id) + jsonw_string_max(second) + 192 + UINT_DEC_SIZE;
        if (callback)
                cap += jsonw_string_max(callback);
        if (v2)
                cap += jsonw_string_max(payload);
        char *body = malloc(cap);
        char *url = NULL;
        if (!body)
                return -ENOMEM;
        size_t o = 0;
        if (v2) {
                jsonw_raw(body, &o, "{\"video_creation_id\":");
                jsonw_string(body, &o, creation_id);
                jsonw_raw(body, &o, ",\"upscale_resolution\":");
                jsonw_string(body, &o, second);
                if (callback) {
                        jsonw_raw(body, &o, ",\"callback_url\":");
                        jsonw_string(body, &o, callback);
                }
                jsonw_raw(body, &o, ",\"payload\":");
                jsonw_string(body, &o, payload);
                jsonw_raw(body, &o, "}");
        } else {
                char digits[UINT_DEC_SIZE];
                format_uint(duration ? duration : cfg->duration, digits);
                jsonw_raw(body, &o, "{\"input\":{\"creation_id\":");
                jsonw_string(body, &o, creation_id);
                jsonw_raw(body, &o, "},\"type\":\"upscale\",\"settings\":{\"model\":");
                jsonw_string(body, &o, second);
                jsonw_raw(body, &o, ",\"duration\":");
                jsonw_raw(body, &o, digits);
                jsonw_raw(body, &o, "}");
                if (callback) {
                        /* Not documented for the gateway: a top-level field, as ent-v2 has it. */
                        jsonw_raw(body, &o, ",\"callback_url\":");
                        jsonw_string(body, &o, callback);
                }
                jsonw_raw(body, &o, "}");
        }
        body[o] = '\0';
        if (asprintf(&url, v2 ? "%s/ent/v2/upscale-new" : "%s/vidu/v1/tasks", cfg->base_url) < 0) {
                free(body);
                return -ENOMEM;
        }
        *ret_url = url;
        *ret_body = body;
        return 0;
}

int upstream_build_poll_url(const struct config *cfg, const char *task_id, char **ret_url)
{
        char escaped[3 * JOB_ID_SIZE + 1];
        char *url = NULL;
        if (upstream_escape(task_id, escaped, sizeof(escaped)) < 0)
                return -EINVAL;
        int n = cfg->flavor == UPSTREAM_FLAVOR_ENT_V2
                    ? asprintf(&url, "%s/ent/v2/tasks/%s/creations", cfg->base_url, escaped)
                    : asprintf(&url, "%s/vidu/v1/tasks/%s", cfg->base_url, escaped);
        if (n < 0)
                return -ENOMEM;
        *ret_url = url;
        return 0;
}

/* Parses a JSON object out of an answer body; NULL if it is not one. */
static json_object *parse_object(const struct upstream_answer *a)
{
        if (!a->body || a->body_len == 0 || a->body_len > 4 * 1024 * 1024)
                return NULL;
        json_object *o;
        enum json_tokener_error err;
        if (json_parse_text(a->body, a->body_len, 32, 0, &o, &err, NULL) < 0 || !o)
                return NULL;
        if (json_object_get_type(o) != json_type_object) {
                json_object_put(o);
                return NULL;
        }
        return o;
}

/* An id is a non-empty string or an integer, at most NOTIFICATION_ID_MAX bytes, printable. */
static bool take_id(json_object *o, const char *key, char *dst, size_t size)
{
        json_object *v;
        if (!json_object_object_get_ex(o, key, &v))
                return false;
        const char *s;
        if (json_object_get_type(v) == json_type_string)
                s = json_object_get_string(v);
        else if (json_object_get_type(v) == json_type_int)
                s = json_object_get_string(v);
        else
                return false;
        if (!notification_id_valid(s, strlen(s), NULL))
                return false;
        job_set_field(dst, size, s);
        return true;
}

static const char *get_string(json_object *o, const char *key)
{
        json_object *v;
        if (!o || !json_object_object_get_ex(o, key, &v) ||
            json_object_get_type(v) != json_type_string)
                return NULL;
        return json_object_get_string(v);
}

/* The upstream's reason word, wherever this flavour or gateway puts it. */
static const char *error_reason(json_object *o)
{
        const char *r = get_string(o, "reason");
        if (!r) {
                json_object *e;
                if (json_object_object_get_ex(o, "error", &e) &&
                    json_object_get_type(e) == json_type_object)
                        r = get_string(e, "reason");
        }
        if (!r)
                r = get_string(o, "err_code");
        return isempty(r) ? NULL : r;
}

static bool reason_is(const char *reason, const char *word)
{
        return reason && strcmp(reason, word) == 0;
}

static void set_error(struct upstream_result *ret, const char *fmt_reason, long status)
{
        if (fmt_reason)
                snprintf(ret->error, sizeof(ret->error), "%s", fmt_reason);
        else
                snprintf(ret->error, sizeof(ret->error), "HTTP %ld", status);
}

int64_t upstream_task_credits(json_object *task)
{
        json_object *v;
        if (!task || !json_object_object_get_ex(task, "credits", &v))
                return -1;
        if (json_object_get_type(v) == json_type_int) {
                int64_t c = json_object_get_int64(v);
                return c >= 0 && c < INT64_MAX ? c : -1;
        }
        if (json_object_get_type(v) == json_type_string) {
                uint64_t c;
                if (parse_uint(json_object_get_string(v), 0, INT64_MAX - 1, &c) >= 0)
                        return (int64_t)c;
        }
        return -1;
}

void upstream_classify_submit(enum upstream_flavor flavor, const struct upstream_answer *a,
                              struct upstream_result *ret)
{
        memset(ret, 0, sizeof(*ret));
        ret->credits = -1;
        switch (a->transport) {
        case UPSTREAM_TRANSPORT_NOT_SENT:
                ret->verdict = UPSTREAM_OUTAGE;
                snprintf(ret->error, sizeof(ret->error), "%s",
                         a->transport_error ? a->transport_error : "request not sent");
                return;
        case UPSTREAM_TRANSPORT_TIMEOUT:
                ret->verdict = UPSTREAM_RETRY;
                snprintf(ret->error, sizeof(ret->error), "timeout: %s",
                         a->transport_error ? a->transport_error : "no answer in time");
                return;
        case UPSTREAM_TRANSPORT_CUT:
                ret->verdict = UPSTREAM_UNCERTAIN;
                snprintf(ret->error, sizeof(ret->error),
                         "connection cut after the request was sent: %s",
                         a->transport_error ? a->transport_error : "no answer");
                return;
        case UPSTREAM_TRANSPORT_OK:
                break;
        }

        json_object *o = parse_object(a);
        const char *reason = o ? error_reason(o) : NULL;
        long s = a->status;

        if (s >= 200 && s < 300) {
                const char *key = flavor == UPSTREAM_FLAVOR_ENT_V2 ? "task_id" : "id";
                if (o && (take_id(o, key, ret->task_id, sizeof(ret->task_id)) ||
                          take_id(o, flavor == UPSTREAM_FLAVOR_ENT_V2 ? "id" : "task_id",
                                  ret->task_id, sizeof(ret->task_id)))) {
                        ret->verdict = UPSTREAM_ACCEPTED;
                        ret->credits = upstream_task_credits(o);
                } else {
                        ret->verdict = UPSTREAM_UNCERTAIN;
                        snprintf(ret->error, sizeof(ret->error), "%s",
                                 o ? "HTTP 2xx answer without a task id"
                                   : "HTTP 2xx answer that is not JSON");
                }
        } else if (s == 401 || s == 403 || reason_is(reason, "CreditInsufficient") ||
                   reason_is(reason, "QuotaExceeded") || reason_is(reason, "Unauthorized") ||
                   reason_is(reason, "Forbidden")) {
                ret->verdict = UPSTREAM_ACCOUNT;
                set_error(ret, reason, s);
        } else if (s == 408 || s == 425 || s == 429 || s >= 500 ||
                   reason_is(reason, "OperationInProcess") ||
                   reason_is(reason, "TooManyRequests") || reason_is(reason, "SystemThrottling") ||
                   reason_is(reason, "InternalServiceFailure")) {
                ret->verdict = UPSTREAM_RETRY;
                set_error(ret, reason, s);
        } else if ((s == 404 || s == 405 || (s >= 300 && s < 400)) && !reason) {
                /* Not the API answering but something in front of it: a wrong base_url would
                 * otherwise kill every job one by one. */
                ret->verdict = UPSTREAM_ACCOUNT;
                snprintf(ret->error, sizeof(ret->error),
                         "HTTP %ld without an API error: is upstream.base_url right?", s);
        } else {
                ret->verdict = UPSTREAM_FINAL;
                set_error(ret, reason, s);
        }
        json_object_put(o);
}

void upstream_outcome_from_note(const struct note_task *t, struct upstream_poll *ret)
{
        memset(ret, 0, sizeof(*ret));
        if (note_task_succeeded(t)) {
                ret->state = UPSTREAM_TASK_SUCCESS;
                job_set_field(ret->result_url, sizeof(ret->result_url), t->result_url);
        } else if (note_task_failed(t)) {
                ret->state = UPSTREAM_TASK_FAILED;
                snprintf(ret->error, sizeof(ret->error), "%s",
                         isempty(t->err_code) ? "failed" : t->err_code);
        } else
                ret->state = UPSTREAM_TASK_RUNNING;
        ret->credits = t->credits;
}

void upstream_parse_poll(enum upstream_flavor flavor, const struct upstream_answer *a,
                         struct upstream_poll *ret)
{
        memset(ret, 0, sizeof(*ret));
        ret->state = UPSTREAM_TASK_UNREADABLE;
        ret->credits = -1;
        if (a->transport != UPSTREAM_TRANSPORT_OK) {
                snprintf(ret->error, sizeof(ret->error), "%s",
                         a->transport_error ? a->transport_error : "no answer");
                return;
        }
        json_object *o = parse_object(a);
        if (a->status < 200 || a->status >= 300 || !o) {
                const char *reason = o ? error_reason(o) : NULL;
                if (reason)
                        snprintf(ret->error, sizeof(ret->error), "HTTP %ld %s", a->status, reason);
                else
                        snprintf(ret->error, sizeof(ret->error), "HTTP %ld%s", a->status,
                                 o ? "" : " with an unreadable body");
                json_object_put(o);
                return;
        }
        json_object *task = o, *data;
        /* Some gateways wrap answers in an envelope. */
        if (!get_string(o, "state") && json_object_object_get_ex(o, "data", &data) &&
            json_object_get_type(data) == json_type_object)
                task = data;
        const char *state = get_string(task, "state");
        ret->credits = upstream_task_credits(task);
        if (!state) {
                snprintf(ret->error, sizeof(ret->error), "answer without a state");
        } else if (strcmp(state, "success") == 0) {
                ret->state = UPSTREAM_TASK_SUCCESS;
                json_object *creations, *first;
                if (json_object_object_get_ex(task, "creations", &creations) &&
                    json_object_get_type(creations) == json_type_array &&
                    json_object_array_length(creations) > 0 &&
                    (first = json_object_array_get_idx(creations, 0)) &&
                    json_object_get_type(first) == json_type_object) {
                        const char *url = get_string(first, "uri");
                        if (isempty(url))
                                url = get_string(first, "url");
                        job_set_field(ret->result_url, sizeof(ret->result_url), url);
                }
        } else if (strcmp(state, "failed") == 0) {
                ret->state = UPSTREAM_TASK_FAILED;
                const char *err = get_string(task, "err_code");
                snprintf(ret->error, sizeof(ret->error), "%s", isempty(err) ? "failed" : err);
        } else
                ret->state = UPSTREAM_TASK_RUNNING;
        (void)flavor;
        json_object_put(o);
}
