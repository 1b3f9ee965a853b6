/* select.h: which finished tasks and creations trigger an upscale: type lists and
 * `POINTER OP VALUE` rules over the task object (pure: no I/O, no logging). */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

enum select_op {
        SELECT_EQ,         /* =       */
        SELECT_NE,         /* !=      */
        SELECT_IN,         /* in      */
        SELECT_EXISTS,     /* exists  */
        SELECT_NOT_EXISTS, /* !exists */
};

struct select_rule {
        char *text;    /* normalized: "POINTER OP VALUE..." with single spaces */
        char *pointer; /* RFC 6901, checked */
        enum select_op op;
        char **values; /* one for = and !=, one or more for in, none for the exists tests */
        size_t n_values;
};

/* A list of type names: "name" matches itself, "*" anything, "*suffix" any name ending so. */
struct select_types {
        char **names;
        size_t n;
};

struct selection {
        struct select_types task_types;
        struct select_types creation_types;
        struct select_rule *rules; /* all must hold */
        size_t n_rules;
};

#define SELECT_DEFAULT_TASK_TYPES                                                                  \
        "text2video img2video reference2video character2video start-end2video *2video"
#define SELECT_DEFAULT_CREATION_TYPES "video"

/* Parses "POINTER OP VALUE" (OP one of =, !=, in, exists, !exists; in takes space-separated
 * values, the exists tests none; = and != take the rest of the text, spaces and all). Returns 0,
 * -EINVAL with *ret_error (static) saying what to change, or -ENOMEM. *ret is untouched on
 * failure. */
int select_rule_parse(const char *text, struct select_rule *ret, const char **ret_error);
void select_rule_clear(struct select_rule *r);

/* 1 when the rule holds for task, 0 when not, -ENOMEM. = and in hold when the pointer finds a
 * string, number, boolean or null whose text (a string's bytes without quotes, else its JSON
 * text) is the value, or one of them; anything else (missing, an object, an array) does not
 * match. != is the negation of =. max_depth bounds the parse of strings holding JSON. */
int select_rule_eval(const struct select_rule *r, json_object *task, size_t max_depth);

/* Parses a space-separated list; an empty list, a name with control characters or a '*' anywhere
 * but first is -EINVAL with *ret_error. */
int select_types_parse(const char *text, struct select_types *ret, const char **ret_error);
void select_types_clear(struct select_types *t);
/* True when type is in the list; a NULL type (not given) always passes. */
bool select_types_match(const struct select_types *t, const char *type);
/* The list as written back: names separated by one space. NULL when out of memory. */
char *select_types_format(const struct select_types *t);

void selection_clear(struct selection *s);
