/* notification.c: finds the tasks and creation ids in a webhook body, whatever its shape (bare
 * task, official callback, envelope, batch). Pure: no I/O, no logging. */
#include "notification.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "jsonparse.h"
#include "select.h"
#include "util.h"

#define PRINTABLE_MAX 64

bool notification_id_valid(const char *s, size_t len, const char **ret_reason)
{
        const char *why = NULL;
        if (!s || len == 0)
                why = "empty id";
        else if (len > NOTIFICATION_ID_MAX)
                why = "id longer than 128 bytes";
        else if (memchr(s, 0, len))
                why = "id contains a NUL byte";
        else
                for (size_t i = 0; i < len; i++)
                        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
                                why = "id contains control characters";
                                break;
                        }
        if (ret_reason)
                *ret_reason = why;
        return !why;
}

bool note_task_succeeded(const struct note_task *t)
{
        return t && t->state && strcmp(t->state, "success") == 0;
}

bool note_task_failed(const struct note_task *t)
{
        return t && t->state && strcmp(t->state, "failed") == 0;
}

static void task_clear(struct note_task *t)
{
        free(t->id);
        free(t->type);
        free(t->state);
        free(t->err_code);
        free(t->result_url);
        free(t->payload);
        for (size_t i = 0; i < t->n_creations; i++)
                free(t->creation_ids[i]);
        free(t->creation_ids);
        for (size_t i = 0; i < t->n_rejected; i++)
                free(t->rejected_ids[i]);
        free(t->rejected_ids);
        free(t->rejected_reasons);
        free(t->skip_reason);
        free(t->skip_rule);
        for (size_t i = 0; i < t->n_skipped; i++) {
                free(t->skipped_ids[i]);
                free(t->skipped_types[i]);
        }
        free(t->skipped_ids);
        free(t->skipped_types);
}

struct notification *notification_free(struct notification *n)
{
        if (!n)
                return NULL;
        for (size_t i = 0; i < n->n_tasks; i++)
                task_clear(&n->tasks[i]);
        free(n->tasks);
        free(n);
        return NULL;
}

/* A string member as a copy, or NULL when absent or not a string. */
static int dup_string(json_object *o, const char *key, bool empty_is_null, char **ret)
{
        json_object *v;
        *ret = NULL;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return 0;
        const char *s = json_object_get_string(v);
        size_t len = (size_t)json_object_get_string_len(v);
        if (empty_is_null && len == 0)
                return 0;
        *ret = strndup_safe(s, len);
        return *ret ? 0 : -ENOMEM;
}

/* The text of an id member: a string as is, or an integer as its decimal digits. Returns a
 * pointer into o (or buf) and its length, or NULL with *ret_reason. */
static const char *id_text(json_object *v, char *buf, size_t buflen, size_t *ret_len,
                           const char **ret_reason)
{
        if (json_object_is_type(v, json_type_string)) {
                *ret_len = (size_t)json_object_get_string_len(v);
                return json_object_get_string(v);
        }
        if (json_object_is_type(v, json_type_int)) {
                int n = snprintf(buf, buflen, "%s",
                                 json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
                *ret_len = n > 0 ? (size_t)n : 0;
                return buf;
        }
        *ret_reason = "id is neither a string nor an integer";
        return NULL;
}

/* A safe, short rendering of a rejected id for answers and logs. */
static char *printable(const char *s, size_t len)
{
        char out[PRINTABLE_MAX * 4 + 4];
        size_t o = 0;
        for (size_t i = 0; i < len && o < PRINTABLE_MAX; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c < 0x20 || c == 0x7f || c == '\\' || c == '"')
                        o += (size_t)snprintf(out + o, sizeof(out) - o, "\\x%02x", c);
                else
                        out[o++] = (char)c;
        }
        if (len > PRINTABLE_MAX && o < sizeof(out) - 4) {
                memcpy(out + o, "...", 3);
                o += 3;
        }
        out[o] = 0;
        return strdup(out);
}

static int add_rejected(struct note_task *t, const char *s, size_t len, const char *reason)
{
        char **ids = realloc(t->rejected_ids, (t->n_rejected + 1) * sizeof(*ids));
        if (!ids)
                return -ENOMEM;
        t->rejected_ids = ids;
        const char **reasons = realloc(t->rejected_reasons, (t->n_rejected + 1) * sizeof(*reasons));
        if (!reasons)
                return -ENOMEM;
        t->rejected_reasons = reasons;
        char *p = printable(s ? s : "", s ? len : 0);
        if (!p)
                return -ENOMEM;
        t->rejected_ids[t->n_rejected] = p;
        t->rejected_reasons[t->n_rejected] = reason;
        t->n_rejected++;
        return 0;
}

static bool has_creation(const struct note_task *t, const char *s, size_t len)
{
        for (size_t i = 0; i < t->n_creations; i++)
                if (strlen(t->creation_ids[i]) == len && memcmp(t->creation_ids[i], s, len) == 0)
                        return true;
        return false;
}

static int add_skipped(struct note_task *t, const char *s, size_t len, const char *type)
{
        char **ids = realloc(t->skipped_ids, (t->n_skipped + 1) * sizeof(*ids));
        if (!ids)
                return -ENOMEM;
        t->skipped_ids = ids;
        char **types = realloc(t->skipped_types, (t->n_skipped + 1) * sizeof(*types));
        if (!types)
                return -ENOMEM;
        t->skipped_types = types;
        ids[t->n_skipped] = strndup_safe(s, len);
        types[t->n_skipped] = strdup(type);
        if (!ids[t->n_skipped] || !types[t->n_skipped]) {
                free(ids[t->n_skipped]);
                free(types[t->n_skipped]);
                return -ENOMEM;
        }
        t->n_skipped++;
        return 0;
}

/* A creation whose type is given and not in select.creation_types; NULL when it triggers. */
static const char *creation_skipped_type(json_object *c, const struct selection *sel)
{
        json_object *v;
        if (!sel || !json_object_object_get_ex(c, "type", &v))
                return NULL;
        if (!json_object_is_type(v, json_type_string))
                return "(not a string)";
        const char *type = json_object_get_string(v);
        if ((size_t)json_object_get_string_len(v) != strlen(type))
                return "(not a string)";
        return select_types_match(&sel->creation_types, type) ? NULL : type;
}

/* sel: the selection when this task's creations are to be selected, else NULL. */
static int parse_creations(json_object *task, struct note_task *t, size_t *budget,
                           const struct selection *sel)
{
        json_object *arr;
        if (!json_object_object_get_ex(task, "creations", &arr) ||
            !json_object_is_type(arr, json_type_array))
                return 0;
        size_t n = json_object_array_length(arr);
        for (size_t i = 0; i < n; i++) {
                json_object *c = json_object_array_get_idx(arr, i), *v;
                char buf[32];
                size_t len = 0;
                const char *reason = NULL, *s = NULL;
                if (!json_object_is_type(c, json_type_object))
                        continue;
                if (*budget == 0)
                        return -E2BIG;
                (*budget)--;
                if (i == 0 && !t->result_url) {
                        int r = dup_string(c, "uri", true, &t->result_url);
                        if (r >= 0 && !t->result_url)
                                r = dup_string(c, "url", true, &t->result_url);
                        if (r < 0)
                                return r;
                }
                if (!json_object_object_get_ex(c, "id", &v))
                        reason = "creation without an id";
                else
                        s = id_text(v, buf, sizeof(buf), &len, &reason);
                if (s && !notification_id_valid(s, len, &reason))
                        s = NULL;
                if (!s) {
                        int r = add_rejected(t, NULL, 0, reason);
                        if (r < 0)
                                return r;
                        if (json_object_object_get_ex(c, "id", &v) &&
                            json_object_is_type(v, json_type_string)) {
                                free(t->rejected_ids[t->n_rejected - 1]);
                                t->rejected_ids[t->n_rejected - 1] =
                                    printable(json_object_get_string(v),
                                              (size_t)json_object_get_string_len(v));
                                if (!t->rejected_ids[t->n_rejected - 1])
                                        return -ENOMEM;
                        }
                        continue;
                }
                if (has_creation(t, s, len))
                        continue;
                const char *skipped = creation_skipped_type(c, sel);
                if (skipped) {
                        int r = add_skipped(t, s, len, skipped);
                        if (r < 0)
                                return r;
                        continue;
                }
                char **ids = realloc(t->creation_ids, (t->n_creations + 1) * sizeof(*ids));
                if (!ids)
                        return -ENOMEM;
                t->creation_ids = ids;
                t->creation_ids[t->n_creations] = strndup_safe(s, len);
                if (!t->creation_ids[t->n_creations])
                        return -ENOMEM;
                t->n_creations++;
        }
        return 0;
}

/* Nesting of arrays and objects ([] is 1, [[]] is 2), counted no further than stop. */
static size_t container_depth(json_object *o, size_t stop)
{
        size_t best = 0;
        if (stop == 0)
                return 0;
        if (json_object_is_type(o, json_type_array)) {
                size_t n = json_object_array_length(o);
                for (size_t i = 0; i < n && best + 1 < stop; i++) {
                        size_t d = container_depth(json_object_array_get_idx(o, i), stop - 1);
                        if (d > best)
                                best = d;
                }
                return best + 1;
        }
        if (json_object_is_type(o, json_type_object)) {
                json_object_object_foreach(o, key, val)
                {
                        (void)key;
                        size_t d = container_depth(val, stop - 1);
                        if (d > best)
                                best = d;
                        if (best + 1 >= stop)
                                break;
                }
                return best + 1;
        }
        return 0;
}

/* The task's payload, passed on untouched: only a string can be (it is what the official API
 * takes and gives back), and only one the ledger can hold as text. */
static int take_payload(json_object *o, struct note_task *t)
{
        json_object *v;
        if (!json_object_object_get_ex(o, "payload", &v) || json_object_is_type(v, json_type_null))
                return 0;
        if (!json_object_is_type(v, json_type_string)) {
                t->payload_error = "payload is not a string";
                return 0;
        }
        size_t len = (size_t)json_object_get_string_len(v);
        const char *s = json_object_get_string(v);
        if (len > NOTIFICATION_PAYLOAD_MAX) {
                t->payload_error = "payload longer than 1 MiB";
                return 0;
        }
        if (memchr(s, 0, len)) {
                t->payload_error = "payload contains a NUL character";
                return 0;
        }
        t->payload = strndup_safe(s, len);
        return t->payload ? 0 : -ENOMEM;
}

static bool looks_like_task(json_object *o)
{
        return json_object_object_get_ex(o, "id", NULL) ||
               json_object_object_get_ex(o, "task_id", NULL) ||
               json_object_object_get_ex(o, "state", NULL) ||
               json_object_object_get_ex(o, "creations", NULL);
}

/* settings.duration as a whole number of seconds from 1 to 3600, else 0. */
static unsigned source_duration(json_object *task)
{
        json_object *settings, *v;
        if (!json_object_object_get_ex(task, "settings", &settings) ||
            !json_object_is_type(settings, json_type_object) ||
            !json_object_object_get_ex(settings, "duration", &v) ||
            !json_object_is_type(v, json_type_int))
                return 0;
        int64_t d = json_object_get_int64(v);
        return d >= 1 && d <= 3600 ? (unsigned)d : 0;
}

/* The task-level tests: select.task_types, then each select.match rule. Sets t->skip_reason and
 * t->skip_rule when one fails. */
static int select_task(json_object *o, struct note_task *t, const struct selection *sel,
                       size_t max_depth)
{
        if (!select_types_match(&sel->task_types, t->type)) {
                if (asprintf(&t->skip_reason, "task type '%.64s' is not in select.task_types",
                             t->type) < 0) {
                        t->skip_reason = NULL;
                        return -ENOMEM;
                }
                t->skip_rule = strdup("select.task_types");
                return t->skip_rule ? 0 : -ENOMEM;
        }
        for (size_t i = 0; i < sel->n_rules; i++) {
                const struct select_rule *rule = &sel->rules[i];
                int r = select_rule_eval(rule, o, max_depth ? max_depth : 32);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                if (asprintf(&t->skip_reason, "select.match '%s' does not hold", rule->text) < 0) {
                        t->skip_reason = NULL;
                        return -ENOMEM;
                }
                t->skip_rule = strdup(rule->text);
                return t->skip_rule ? 0 : -ENOMEM;
        }
        return 0;
}

/* "credits": a non-negative integer or its decimal text; anything else is no cost reported. */
static int64_t task_credits(json_object *o)
{
        json_object *v;
        uint64_t c;
        if (!json_object_object_get_ex(o, "credits", &v))
                return -1;
        if (json_object_is_type(v, json_type_int)) {
                int64_t i = json_object_get_int64(v);
                return i >= 0 && i < INT64_MAX ? i : -1;
        }
        if (json_object_is_type(v, json_type_string) &&
            parse_uint(json_object_get_string(v), 0, INT64_MAX - 1, &c) >= 0)
                return (int64_t)c;
        return -1;
}

static int add_task(struct notification *n, json_object *o, const struct notification_limits *lim,
                    size_t *budget)
{
        if (n->n_tasks >= lim->max_tasks)
                return -E2BIG;
        struct note_task *tasks = realloc(n->tasks, (n->n_tasks + 1) * sizeof(*tasks));
        if (!tasks)
                return -ENOMEM;
        n->tasks = tasks;
        struct note_task *t = &n->tasks[n->n_tasks++];
        memset(t, 0, sizeof(*t));

        json_object *v;
        if (json_object_object_get_ex(o, "id", &v) || json_object_object_get_ex(o, "task_id", &v)) {
                char buf[32];
                size_t len = 0;
                const char *reason = NULL;
                const char *s = id_text(v, buf, sizeof(buf), &len, &reason);
                if (s && notification_id_valid(s, len, &reason)) {
                        t->id = strndup_safe(s, len);
                        if (!t->id)
                                return -ENOMEM;
                } else
                        t->id_error = reason;
        } else
                t->id_error = "task without an id";
        int r = dup_string(o, "type", false, &t->type);
        if (r >= 0)
                r = dup_string(o, "state", false, &t->state);
        if (r >= 0)
                r = dup_string(o, "err_code", true, &t->err_code);
        if (r >= 0)
                r = take_payload(o, t);
        if (r < 0)
                return r;
        t->is_upscale = t->type && strcmp(t->type, "upscale") == 0;
        t->source_duration = source_duration(o);
        const struct selection *sel =
            lim->select && !t->is_upscale && note_task_succeeded(t) ? lim->select : NULL;
        if (sel) {
                r = select_task(o, t, sel, lim->max_depth);
                if (r < 0)
                        return r;
                if (t->skip_reason)
                        sel = NULL; /* the whole task is skipped: its creations need no test */
        }
        t->credits = task_credits(o);
        return parse_creations(o, t, budget, sel);
}

static int add_batch(struct notification *n, json_object *arr,
                     const struct notification_limits *lim, size_t *budget)
{
        size_t len = json_object_array_length(arr);
        for (size_t i = 0; i < len; i++) {
                json_object *o = json_object_array_get_idx(arr, i);
                if (!json_object_is_type(o, json_type_object))
                        continue;
                int r = add_task(n, o, lim, budget);
                if (r < 0)
                        return r;
        }
        return 0;
}

int notification_parse(const char *body, size_t len, const struct notification_limits *limits,
                       struct notification **ret, const char **ret_error)
{
        const char *why = NULL;
        int r;
        if (!body || len == 0) {
                *ret_error = "empty body";
                return -EBADMSG;
        }
        if (len > INT32_MAX || memchr(body, 0, len)) {
                *ret_error = "body contains a NUL byte";
                return -EBADMSG;
        }
        /* json-c counts an object member's value as a level of its own, so its limit only bounds
         * the parser's stack; the nesting of arrays and objects is measured after parsing. */
        size_t max_depth = limits->max_depth ? limits->max_depth : 32;
        json_object *root;
        enum json_tokener_error jerr;
        size_t used;
        /* Strict: what senders send is JSON; anything looser is not worth guessing at. */
        r = json_parse_text(body, len, (int)(2 * max_depth + 2), JSON_TOKENER_STRICT, &root, &jerr,
                            &used);
        if (r < 0)
                return r;
        if (jerr == json_tokener_error_depth) {
                json_object_put(root);
                *ret_error = "JSON nested deeper than limits.max_json_depth";
                return -E2BIG;
        }
        if (jerr != json_tokener_success || !root) {
                json_object_put(root);
                size_t first = 0; /* body is not NUL-terminated: stay within len */
                while (first < len && strchr(" \t\r\n", body[first]) && body[first])
                        first++;
                bool container = first < len && (body[first] == '{' || body[first] == '[');
                /* json-c waits for more input after a bare number or literal. */
                *ret_error = jerr != json_tokener_continue ? "not JSON"
                             : container                   ? "truncated JSON"
                                                           : "no task object in the notification";
                return -EBADMSG;
        }
        if (container_depth(root, max_depth + 1) > max_depth) {
                json_object_put(root);
                *ret_error = "JSON nested deeper than limits.max_json_depth";
                return -E2BIG;
        }
        /* Nothing but white space may follow the value. */
        for (size_t i = used; i < len; i++)
                if (body[i] != ' ' && body[i] != '\t' && body[i] != '\r' && body[i] != '\n') {
                        json_object_put(root);
                        *ret_error = "trailing data after the JSON value";
                        return -EBADMSG;
                }

        struct notification *n = calloc(1, sizeof(*n));
        if (!n) {
                json_object_put(root);
                return -ENOMEM;
        }
        size_t budget = limits->max_creations;
        json_object *inner;
        if (json_object_is_type(root, json_type_array))
                r = add_batch(n, root, limits, &budget);
        else if (!json_object_is_type(root, json_type_object))
                r = 0;
        else if (json_object_object_get_ex(root, "tasks", &inner) &&
                 json_object_is_type(inner, json_type_array))
                r = add_batch(n, inner, limits, &budget);
        else if (json_object_object_get_ex(root, "data", &inner) &&
                 json_object_is_type(inner, json_type_object))
                r = looks_like_task(inner) ? add_task(n, inner, limits, &budget) : 0;
        else if (json_object_object_get_ex(root, "data", &inner) &&
                 json_object_is_type(inner, json_type_array))
                r = add_batch(n, inner, limits, &budget);
        else
                r = looks_like_task(root) ? add_task(n, root, limits, &budget) : 0;
        json_object_put(root);
        if (r == -E2BIG)
                why = budget == 0 ? "more creations than limits.max_creations"
                                  : "more tasks than limits.max_tasks";
        else if (r >= 0 && n->n_tasks == 0) {
                why = "no task object in the notification";
                r = -EBADMSG;
        }
        if (r < 0) {
                notification_free(n);
                *ret_error = why ? why : "out of memory";
                return r;
        }
        *ret = n;
        return 0;
}
