/* jsonparse.h: parsing one whole JSON text with json-c through a tokener kept per thread. */
#pragma once

#include <json-c/json.h>
#include <stddef.h>

/* Parses len bytes of text (no NUL needed) with a tokener of max_depth levels and json-c's flags
 * (0 or JSON_TOKENER_STRICT). *ret gets the value, or NULL with *ret_error saying why (json-c's
 * json_tokener_continue: the text ended first); *ret_used, if not NULL, where the parse ended.
 * Returns 0, or -ENOMEM if no tokener could be made, or -E2BIG over INT_MAX bytes. A tokener is
 * made on first use of its depth and kept, reset, for the thread's next parses (the last two
 * depths asked for): making one costs three allocations and clearing its stack, as much work as
 * parsing a short answer. */
int json_parse_text(const char *text, size_t len, int max_depth, int flags, json_object **ret,
                    enum json_tokener_error *ret_error, size_t *ret_used);
