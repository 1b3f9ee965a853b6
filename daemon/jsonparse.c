/* jsonparse.c: parsing one whole JSON text with json-c through a tokener kept per thread. */
#include "jsonparse.h"

#include <errno.h>
#include <limits.h>

static _Thread_local json_tokener *kept;
static _Thread_local int kept_depth;

int json_parse_text(const char *text, size_t len, int max_depth, int flags, json_object **ret,
                    enum json_tokener_error *ret_error, size_t *ret_used)
{
        *ret = NULL;
        if (ret_used)
                *ret_used = 0;
        if (len > INT_MAX)
                return -E2BIG;
        if (!kept || kept_depth != max_depth) {
                json_tokener *t = json_tokener_new_ex(max_depth);
                if (!t)
                        return -ENOMEM;
                if (kept)
                        json_tokener_free(kept);
                kept = t;
                kept_depth = max_depth;
        }
        json_tokener_set_flags(kept, flags);
        json_object *o = json_tokener_parse_ex(kept, text, (int)len);
        *ret_error = json_tokener_get_error(kept);
        if (ret_used)
                *ret_used = json_tokener_get_parse_end(kept);
        /* Drops what a failed or unfinished parse still holds, and readies the next one. */
        json_tokener_reset(kept);
        if (*ret_error != json_tokener_success) {
                json_object_put(o);
                return 0;
        }
        *ret = o;
        return 0;
}
