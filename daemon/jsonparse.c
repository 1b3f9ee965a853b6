/* jsonparse.c: parsing one whole JSON text with json-c through a tokener kept per thread. */
#include "jsonparse.h"

#include <errno.h>
#include <limits.h>

/* The parsers ask for different depths (a notification's is configured, an answer's fixed):
 * one tokener kept for each of the last two, the most recently used first. */
#define KEPT 2
static _Thread_local struct kept {
        json_tokener *tok;
        int depth;
} kept[KEPT];

static json_tokener *tokener(int max_depth)
{
        size_t i = 0;
        while (i < KEPT && !(kept[i].tok && kept[i].depth == max_depth))
                i++;
        struct kept k;
        if (i < KEPT)
                k = kept[i];
        else {
                k.tok = json_tokener_new_ex(max_depth);
                k.depth = max_depth;
                if (!k.tok)
                        return NULL;
                i = KEPT - 1;
                if (kept[i].tok)
                        json_tokener_free(kept[i].tok);
        }
        for (; i > 0; i--)
                kept[i] = kept[i - 1];
        kept[0] = k;
        return k.tok;
}

int json_parse_text(const char *text, size_t len, int max_depth, int flags, json_object **ret,
                    enum json_tokener_error *ret_error, size_t *ret_used)
{
        *ret = NULL;
        if (ret_used)
                *ret_used = 0;
        if (len > INT_MAX)
                return -E2BIG;
        json_tokener *tok = tokener(max_depth);
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, flags);
        json_object *o = json_tokener_parse_ex(tok, text, (int)len);
        *ret_error = json_tokener_get_error(tok);
        if (ret_used)
                *ret_used = json_tokener_get_parse_end(tok);
        /* Drops what a failed or unfinished parse still holds, and readies the next one. */
        json_tokener_reset(tok);
        if (*ret_error != json_tokener_success) {
                json_object_put(o);
                return 0;
        }
        *ret = o;
        return 0;
}
