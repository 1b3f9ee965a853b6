/* jsonw.c: JSON strings escaped byte for byte as json-c's plain output escapes them (no slash
 * escaped), written straight into the caller's buffer. */
#include "jsonw.h"

#include <string.h>

size_t jsonw_string_max(const char *s)
{
        return 6 * strlen(s) + 2;
}

void jsonw_string(char *dst, size_t *o, const char *s)
{
        static const char hex[] = "0123456789abcdef";
        size_t n = *o;
        dst[n++] = '"';
        for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
                const char *esc = NULL;
                switch (*p) {
                case '"':
                        esc = "\\\"";
                        break;
                case '\\':
                        esc = "\\\\";
                        break;
                case '\b':
                        esc = "\\b";
                        break;
                case '\f':
                        esc = "\\f";
                        break;
                case '\n':
                        esc = "\\n";
                        break;
                case '\r':
                        esc = "\\r";
                        break;
                case '\t':
                        esc = "\\t";
                        break;
                default:
                        break;
                }
                if (esc) {
                        dst[n++] = esc[0];
                        dst[n++] = esc[1];
                } else if (*p < 0x20) {
                        memcpy(dst + n, "\\u00", 4);
                        dst[n + 4] = hex[*p >> 4];
                        dst[n + 5] = hex[*p & 15];
                        n += 6;
                } else
                        dst[n++] = (char)*p;
        }
        dst[n++] = '"';
        *o = n;
}

void jsonw_raw(char *dst, size_t *o, const char *s)
{
        size_t n = strlen(s);
        memcpy(dst + *o, s, n);
        *o += n;
}
