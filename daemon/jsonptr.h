/* jsonptr.h: RFC 6901 JSON pointers over json-c values, walking on into strings that hold JSON
 * (pure: no I/O, no logging). */
#pragma once

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>

/* Longest pointer accepted, in bytes. */
#define JSONPTR_MAX 1024

/* Checks a pointer's syntax: "" (the whole value) or "/" followed by reference tokens separated
 * by "/", where "~" is always followed by "0" or "1", at most JSONPTR_MAX bytes, no control
 * characters. Returns 0, or -EINVAL with *ret_error (static) saying what is wrong. */
int jsonptr_check(const char *ptr, const char **ret_error);

/* Walks ptr from root. Array elements are named by their index in decimal ("0", "12"; a leading
 * zero or "-" names nothing). When the walk reaches a string and tokens remain, the string is
 * parsed as JSON (strictly, nesting bounded by max_depth as a notification's is) and, if it holds
 * an object or an array, the walk continues inside it: {"payload": "{\"upscale\": true}"} has
 * /payload/upscale. Returns 1 with *ret holding a new reference to the value found (the caller
 * puts it), 0 when nothing is there (a missing member, an index past the end, a token that does
 * not apply to the value's type, a string that holds no JSON container), -EINVAL for a malformed
 * pointer, -ENOMEM. */
int jsonptr_get(json_object *root, const char *ptr, size_t max_depth, json_object **ret);

/* The text a rule compares: a string's own bytes (no quotes, no escaping), else json-c's plain
 * JSON text of the value ("true", "null", "12", "1.5", "{\"a\":1}"). Valid until v is put. */
const char *jsonptr_text(json_object *v);
