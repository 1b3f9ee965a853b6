/* json_c_text.h: what json-c's plain serialization makes of a string, for the unit tests to hold
 * text written without json-c to. */
#pragma once

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

/* A copy the caller frees. */
static inline char *json_c_string(const char *s)
{
        json_object *o = json_object_new_string(s);
        char *text = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                                  JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
        return text;
}
