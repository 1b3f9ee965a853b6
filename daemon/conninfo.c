/* conninfo.c: finds the passwords in a libpq connection string (URI or key=value) and masks
 * them, following libpq's own grammar for both forms. */
#include "conninfo.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The spans to mask, at most a few (a URI has its userinfo and query parameters). */
#define MAX_SPANS 16

struct spans {
        size_t n;
        size_t start[MAX_SPANS], end[MAX_SPANS];
};

static int add_span(struct spans *sp, size_t start, size_t end)
{
        if (sp->n >= MAX_SPANS)
                return -EINVAL;
        sp->start[sp->n] = start;
        sp->end[sp->n] = end;
        sp->n++;
        return 0;
}

static int hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        c = (char)tolower((unsigned char)c);
        return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Whether [p, p + n) is "password" once percent-decoded (as libpq decodes parameter names). */
static bool is_password_encoded(const char *p, size_t n)
{
        static const char want[] = "password";
        size_t k = 0;
        for (size_t i = 0; i < n; i++, k++) {
                char c = p[i];
                if (c == '%') {
                        if (i + 2 >= n)
                                return false;
                        int hi = hexval(p[i + 1]), lo = hexval(p[i + 2]);
                        if (hi < 0 || lo < 0)
                                return false;
                        c = (char)(hi * 16 + lo);
                        i += 2;
                }
                if (k >= sizeof(want) - 1 || c != want[k])
                        return false;
        }
        return k == sizeof(want) - 1;
}

/* postgresql://[user[:password]@][host][,host...][/dbname][?param=value&...] */
static int uri_spans(const char *s, size_t scheme_len, struct spans *sp)
{
        size_t len = strlen(s);
        size_t auth = scheme_len;
        size_t auth_end = auth + strcspn(s + auth, "/?");
        /* The userinfo ends at the authority's last '@' (a password may hold '@' encoded only,
         * but be generous: the last one is what libpq splits at too). */
        size_t at = auth_end;
        for (size_t i = auth_end; i > auth; i--)
                if (s[i - 1] == '@') {
                        at = i - 1;
                        break;
                }
        if (at < auth_end) {
                const char *colon = memchr(s + auth, ':', at - auth);
                if (colon && add_span(sp, (size_t)(colon - s) + 1, at) < 0)
                        return -EINVAL;
        }
        const char *q = strchr(s + auth_end, '?');
        if (!q)
                return 0;
        for (size_t i = (size_t)(q - s) + 1; i < len;) {
                size_t n = strcspn(s + i, "&");
                const char *eq = memchr(s + i, '=', n);
                if (eq && is_password_encoded(s + i, (size_t)(eq - (s + i))) &&
                    add_span(sp, (size_t)(eq - s) + 1, i + n) < 0)
                        return -EINVAL;
                i += n + 1;
        }
        return 0;
}

/* key = value ..., a value bare (up to white space) or in single quotes, \ escaping one char. */
static int keyword_spans(const char *s, struct spans *sp)
{
        size_t i = 0;
        for (;;) {
                while (isspace((unsigned char)s[i]))
                        i++;
                if (!s[i])
                        return 0;
                size_t key = i;
                while (s[i] && s[i] != '=' && !isspace((unsigned char)s[i]))
                        i++;
                size_t key_end = i;
                while (isspace((unsigned char)s[i]))
                        i++;
                if (s[i] != '=')
                        return -EINVAL;
                i++;
                while (isspace((unsigned char)s[i]))
                        i++;
                size_t value = i;
                if (s[i] == '\'') {
                        i++;
                        while (s[i] && s[i] != '\'') {
                                if (s[i] == '\\' && s[i + 1])
                                        i++;
                                i++;
                        }
                        if (s[i] != '\'')
                                return -EINVAL;
                        i++;
                } else
                        while (s[i] && !isspace((unsigned char)s[i])) {
                                if (s[i] == '\\' && s[i + 1])
                                        i++;
                                i++;
                        }
                if (key_end - key == 8 && strncmp(s + key, "password", 8) == 0 &&
                    add_span(sp, value, i) < 0)
                        return -EINVAL;
        }
}

int conninfo_mask(const char *s, char **ret)
{
        struct spans sp = {0};
        int r;
        *ret = NULL;
        if (strncmp(s, "postgresql://", 13) == 0)
                r = uri_spans(s, 13, &sp);
        else if (strncmp(s, "postgres://", 11) == 0)
                r = uri_spans(s, 11, &sp);
        else
                r = keyword_spans(s, &sp);
        if (r < 0)
                return r;
        size_t len = strlen(s);
        char *out = malloc(len + sp.n * strlen(CONNINFO_MASK) + 1), *p = out;
        if (!out)
                return -ENOMEM;
        size_t from = 0;
        for (size_t k = 0; k < sp.n; k++) {
                memcpy(p, s + from, sp.start[k] - from);
                p += sp.start[k] - from;
                memcpy(p, CONNINFO_MASK, strlen(CONNINFO_MASK));
                p += strlen(CONNINFO_MASK);
                from = sp.end[k];
        }
        memcpy(p, s + from, len - from);
        p[len - from] = 0;
        *ret = out;
        return sp.n > 0;
}
