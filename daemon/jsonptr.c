/* jsonptr.c: RFC 6901 JSON pointers over json-c values, walking on into strings that hold JSON
 * (pure: no I/O, no logging). */
#include "jsonptr.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jsonparse.h"

int jsonptr_check(const char *ptr, const char **ret_error)
{
        const char *why = NULL;
        size_t n = ptr ? strlen(ptr) : 0;
        if (!ptr)
                why = "no pointer";
        else if (n > JSONPTR_MAX)
                why = "pointer longer than 1024 bytes";
        else if (n > 0 && ptr[0] != '/')
                why = "a JSON pointer starts with '/' (e.g. /settings/model)";
        else
                for (size_t i = 0; i < n && !why; i++) {
                        unsigned char c = (unsigned char)ptr[i];
                        if (c < 0x20 || c == 0x7f)
                                why = "pointer contains a control character";
                        else if (c == '~' && ptr[i + 1] != '0' && ptr[i + 1] != '1')
                                why = "'~' in a pointer must be followed by 0 or 1 (~0 is '~', ~1 "
                                      "is '/')";
                }
        if (why) {
                if (ret_error)
                        *ret_error = why;
                return -EINVAL;
        }
        return 0;
}

/* One reference token from *p (just past its '/') into buf, unescaped; *p moves to the next '/'
 * or the end. buf holds at least the token's length + 1 bytes. */
static size_t next_token(const char **p, char *buf)
{
        const char *s = *p;
        size_t o = 0;
        while (*s && *s != '/') {
                if (s[0] == '~') {
                        buf[o++] = s[1] == '1' ? '/' : '~';
                        s += 2;
                } else
                        buf[o++] = *s++;
        }
        buf[o] = 0;
        *p = s;
        return o;
}

/* An array index as RFC 6901 writes it: "0", or digits without a leading zero; -1 otherwise. */
static long array_index(const char *tok, size_t len)
{
        if (len == 0 || len > 9 || (len > 1 && tok[0] == '0'))
                return -1;
        long v = 0;
        for (size_t i = 0; i < len; i++) {
                if (tok[i] < '0' || tok[i] > '9')
                        return -1;
                v = v * 10 + (tok[i] - '0');
        }
        return v;
}

/* A string holding a JSON object or array, parsed; NULL when it holds anything else. */
static int parse_inner(json_object *str, size_t max_depth, json_object **ret)
{
        const char *s = json_object_get_string(str);
        size_t len = (size_t)json_object_get_string_len(str), first = 0;
        *ret = NULL;
        while (first < len && strchr(" \t\r\n", s[first]) && s[first])
                first++;
        if (first == len || (s[first] != '{' && s[first] != '['))
                return 0;
        if (memchr(s, 0, len))
                return 0;
        json_object *o = NULL;
        enum json_tokener_error err;
        size_t used = 0;
        /* The depth the notification parser allows (json-c counts a member's value as a level). */
        int r = json_parse_text(s, len, (int)(2 * (max_depth ? max_depth : 32) + 2),
                                JSON_TOKENER_STRICT, &o, &err, &used);
        if (r < 0)
                return r == -E2BIG ? 0 : r;
        if (err != json_tokener_success || !o)
                return 0;
        for (size_t i = used; i < len; i++)
                if (!strchr(" \t\r\n", s[i])) {
                        json_object_put(o);
                        return 0;
                }
        *ret = o;
        return 0;
}

int jsonptr_get(json_object *root, const char *ptr, size_t max_depth, json_object **ret)
{
        int r = jsonptr_check(ptr, NULL);
        if (r < 0)
                return r;
        char *buf = malloc(strlen(ptr) + 1);
        if (!buf)
                return -ENOMEM;
        /* Values parsed out of strings on the way: cur may point into the last of them. */
        json_object *parsed = NULL;
        json_object *cur = root;
        const char *p = ptr;
        r = 1;
        while (*p && r > 0) {
                p++; /* the '/' */
                size_t len = next_token(&p, buf);
                if (json_object_is_type(cur, json_type_string)) {
                        json_object *inner;
                        r = parse_inner(cur, max_depth, &inner);
                        if (r < 0)
                                break;
                        if (!inner) {
                                r = 0;
                                break;
                        }
                        /* inner owns nothing of the tree before it; the one before may go. */
                        json_object_put(parsed);
                        parsed = inner;
                        cur = inner;
                        r = 1;
                }
                if (json_object_is_type(cur, json_type_object)) {
                        json_object *v;
                        if (memchr(buf, 0, len) || !json_object_object_get_ex(cur, buf, &v))
                                r = 0;
                        else
                                cur = v;
                } else if (json_object_is_type(cur, json_type_array)) {
                        long i = array_index(buf, len);
                        if (i < 0 || (size_t)i >= json_object_array_length(cur))
                                r = 0;
                        else
                                cur = json_object_array_get_idx(cur, (size_t)i);
                } else
                        r = 0;
        }
        free(buf);
        /* A member whose value is JSON null is found too: json-c holds it as NULL. */
        if (r > 0)
                *ret = json_object_get(cur);
        json_object_put(parsed);
        return r;
}

const char *jsonptr_text(json_object *v)
{
        if (json_object_is_type(v, json_type_string))
                return json_object_get_string(v);
        if (!v)
                return "null";
        return json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
}
