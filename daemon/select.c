/* select.c: which finished tasks and creations trigger an upscale: type lists and
 * `POINTER OP VALUE` rules over the task object (pure: no I/O, no logging). */
#include "select.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonptr.h"
#include "util.h"

static const struct {
        const char *word;
        enum select_op op;
} ops[] = {
    {"=", SELECT_EQ},
    {"!=", SELECT_NE},
    {"in", SELECT_IN},
    {"exists", SELECT_EXISTS},
    {"!exists", SELECT_NOT_EXISTS},
};

static bool is_blank(char c)
{
        return c == ' ' || c == '\t';
}

static const char *skip_blanks(const char *s)
{
        while (is_blank(*s))
                s++;
        return s;
}

static size_t word_len(const char *s)
{
        size_t n = 0;
        while (s[n] && !is_blank(s[n]))
                n++;
        return n;
}

static bool has_control(const char *s)
{
        for (; *s; s++)
                if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
                        return true;
        return false;
}

void select_rule_clear(struct select_rule *r)
{
        if (!r)
                return;
        free(r->text);
        free(r->pointer);
        for (size_t i = 0; i < r->n_values; i++)
                free(r->values[i]);
        free(r->values);
        memset(r, 0, sizeof(*r));
}

static int add_value(struct select_rule *r, const char *s, size_t len)
{
        char **v = realloc(r->values, (r->n_values + 1) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        r->values = v;
        v[r->n_values] = strndup_safe(s, len);
        if (!v[r->n_values])
                return -ENOMEM;
        r->n_values++;
        return 0;
}

static const char *op_word(enum select_op op)
{
        for (size_t i = 0; i < ELEMENTSOF(ops); i++)
                if (ops[i].op == op)
                        return ops[i].word;
        return "?";
}

/* "POINTER OP V1 V2" with single spaces, as --check-config prints it. */
static int normalize(struct select_rule *r)
{
        size_t n = strlen(r->pointer) + strlen(op_word(r->op)) + 2;
        for (size_t i = 0; i < r->n_values; i++)
                n += strlen(r->values[i]) + 1;
        char *t = malloc(n);
        if (!t)
                return -ENOMEM;
        size_t o = (size_t)snprintf(t, n, "%s %s", r->pointer, op_word(r->op));
        for (size_t i = 0; i < r->n_values; i++)
                o += (size_t)snprintf(t + o, n - o, " %s", r->values[i]);
        r->text = t;
        return 0;
}

int select_rule_parse(const char *text, struct select_rule *ret, const char **ret_error)
{
        struct select_rule r = {0};
        const char *why = NULL;
        int err = -EINVAL;

        if (!text || has_control(text)) {
                *ret_error = "a rule is one line without control characters";
                return -EINVAL;
        }
        const char *p = skip_blanks(text);
        size_t n = word_len(p);
        if (n == 0) {
                *ret_error = "empty rule (write POINTER OP VALUE, e.g. /settings/model = viduq1)";
                return -EINVAL;
        }
        r.pointer = strndup_safe(p, n);
        if (!r.pointer)
                return -ENOMEM;
        if (jsonptr_check(r.pointer, &why) < 0)
                goto fail;
        p = skip_blanks(p + n);
        n = word_len(p);
        if (n == 0) {
                why = "missing operator after the pointer (use =, !=, in, exists or !exists, "
                      "separated by spaces)";
                goto fail;
        }
        size_t k = 0;
        while (k < ELEMENTSOF(ops) &&
               !(strlen(ops[k].word) == n && strncmp(ops[k].word, p, n) == 0))
                k++;
        if (k == ELEMENTSOF(ops)) {
                why = "unknown operator (use =, !=, in, exists or !exists, separated by spaces)";
                goto fail;
        }
        r.op = ops[k].op;
        p = skip_blanks(p + n);
        /* inih strips trailing blanks, a caller other than it may not. */
        size_t rest = strlen(p);
        while (rest > 0 && is_blank(p[rest - 1]))
                rest--;
        switch (r.op) {
        case SELECT_EXISTS:
        case SELECT_NOT_EXISTS:
                if (rest > 0) {
                        why = "exists and !exists take no value";
                        goto fail;
                }
                break;
        case SELECT_EQ:
        case SELECT_NE:
                if (rest == 0) {
                        why = "missing value after the operator";
                        goto fail;
                }
                err = add_value(&r, p, rest);
                if (err < 0)
                        goto fail;
                break;
        case SELECT_IN:
                while (*p) {
                        n = word_len(p);
                        err = add_value(&r, p, n);
                        if (err < 0)
                                goto fail;
                        p = skip_blanks(p + n);
                }
                if (r.n_values == 0) {
                        err = -EINVAL;
                        why = "in needs at least one value (space-separated)";
                        goto fail;
                }
                break;
        }
        err = normalize(&r);
        if (err < 0)
                goto fail;
        *ret = r;
        return 0;
fail:
        select_rule_clear(&r);
        if (err == -ENOMEM)
                return err;
        *ret_error = why;
        return -EINVAL;
}

/* A found value's text equals s: strings by their bytes (a NUL inside never matches), the rest
 * by their JSON text. Containers never match. */
static bool value_is(json_object *v, const char *s)
{
        if (json_object_is_type(v, json_type_object) || json_object_is_type(v, json_type_array))
                return false;
        if (json_object_is_type(v, json_type_string))
                return (size_t)json_object_get_string_len(v) == strlen(s) &&
                       memcmp(json_object_get_string(v), s, strlen(s)) == 0;
        return strcmp(jsonptr_text(v), s) == 0;
}

int select_rule_eval(const struct select_rule *r, json_object *task, size_t max_depth)
{
        json_object *v = NULL;
        int found = jsonptr_get(task, r->pointer, max_depth, &v);
        if (found < 0)
                return found == -EINVAL ? 0 : found;
        bool holds = false;
        switch (r->op) {
        case SELECT_EXISTS:
                holds = found;
                break;
        case SELECT_NOT_EXISTS:
                holds = !found;
                break;
        case SELECT_EQ:
        case SELECT_NE:
                holds = found && value_is(v, r->values[0]);
                if (r->op == SELECT_NE)
                        holds = !holds;
                break;
        case SELECT_IN:
                for (size_t i = 0; found && i < r->n_values && !holds; i++)
                        holds = value_is(v, r->values[i]);
                break;
        }
        json_object_put(v);
        return holds;
}

void select_types_clear(struct select_types *t)
{
        if (!t)
                return;
        for (size_t i = 0; i < t->n; i++)
                free(t->names[i]);
        free(t->names);
        t->names = NULL;
        t->n = 0;
}

int select_types_parse(const char *text, struct select_types *ret, const char **ret_error)
{
        struct select_types t = {0};
        if (!text || has_control(text)) {
                *ret_error = "contains a control character";
                return -EINVAL;
        }
        for (const char *p = skip_blanks(text); *p; p = skip_blanks(p)) {
                size_t n = word_len(p);
                const char *star = memchr(p + 1, '*', n - 1);
                if (star) {
                        select_types_clear(&t);
                        *ret_error = "'*' goes only at the start of a name (* for any type, "
                                     "*2video for any type ending in 2video)";
                        return -EINVAL;
                }
                char **v = realloc(t.names, (t.n + 1) * sizeof(*v));
                if (!v) {
                        select_types_clear(&t);
                        return -ENOMEM;
                }
                t.names = v;
                v[t.n] = strndup_safe(p, n);
                if (!v[t.n]) {
                        select_types_clear(&t);
                        return -ENOMEM;
                }
                t.n++;
                p += n;
        }
        if (t.n == 0) {
                *ret_error = "empty list (name at least one type, or * for any)";
                return -EINVAL;
        }
        *ret = t;
        return 0;
}

bool select_types_match(const struct select_types *t, const char *type)
{
        if (!type)
                return true;
        size_t len = strlen(type);
        for (size_t i = 0; i < t->n; i++) {
                const char *name = t->names[i];
                if (name[0] == '*') {
                        size_t sl = strlen(name + 1);
                        if (len >= sl && strcmp(type + len - sl, name + 1) == 0)
                                return true;
                } else if (strcmp(name, type) == 0)
                        return true;
        }
        return false;
}

char *select_types_format(const struct select_types *t)
{
        size_t n = 1;
        for (size_t i = 0; i < t->n; i++)
                n += strlen(t->names[i]) + 1;
        char *s = malloc(n);
        if (!s)
                return NULL;
        size_t o = 0;
        s[0] = 0;
        for (size_t i = 0; i < t->n; i++)
                o += (size_t)snprintf(s + o, n - o, "%s%s", i ? " " : "", t->names[i]);
        return s;
}

void selection_clear(struct selection *s)
{
        if (!s)
                return;
        select_types_clear(&s->task_types);
        select_types_clear(&s->creation_types);
        for (size_t i = 0; i < s->n_rules; i++)
                select_rule_clear(&s->rules[i]);
        free(s->rules);
        s->rules = NULL;
        s->n_rules = 0;
}
