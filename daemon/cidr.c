/* cidr.c: address lists and matching, for server.allow_from. */
#include "cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static int parse_one(const char *tok, size_t len, struct cidr *ret)
{
        char buf[INET6_ADDRSTRLEN + 8];
        if (len == 0 || len >= sizeof(buf))
                return -EINVAL;
        memcpy(buf, tok, len);
        buf[len] = 0;
        char *slash = strchr(buf, '/');
        if (slash)
                *slash = 0;
        struct cidr c = {0};
        if (inet_pton(AF_INET, buf, c.addr) == 1) {
                c.family = AF_INET;
                c.prefix = 32;
        } else if (inet_pton(AF_INET6, buf, c.addr) == 1) {
                c.family = AF_INET6;
                c.prefix = 128;
        } else
                return -EINVAL;
        if (slash) {
                uint64_t p;
                if (parse_uint(slash + 1, 0, c.prefix, &p) < 0)
                        return -EINVAL;
                c.prefix = (unsigned)p;
        }
        *ret = c;
        return 0;
}

int cidr_list_parse(const char *s, struct cidr_list *ret, const char **ret_bad)
{
        struct cidr_list l = {0};
        const char *p = s ? s : "";
        while (*p) {
                p += strspn(p, ", \t");
                if (!*p)
                        break;
                size_t len = strcspn(p, ", \t");
                struct cidr c;
                if (parse_one(p, len, &c) < 0) {
                        if (ret_bad)
                                *ret_bad = p;
                        cidr_list_clear(&l);
                        return -EINVAL;
                }
                struct cidr *n = realloc(l.items, (l.n + 1) * sizeof(*n));
                if (!n) {
                        cidr_list_clear(&l);
                        return -ENOMEM;
                }
                l.items = n;
                l.items[l.n++] = c;
                p += len;
        }
        *ret = l;
        return 0;
}

void cidr_list_clear(struct cidr_list *l)
{
        free(l->items);
        l->items = NULL;
        l->n = 0;
}

static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
        unsigned bytes = bits / 8, rest = bits % 8;
        if (memcmp(a, b, bytes) != 0)
                return false;
        if (rest == 0)
                return true;
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        return (a[bytes] & mask) == (b[bytes] & mask);
}

bool cidr_list_match(const struct cidr_list *l, const struct sockaddr *sa)
{
        uint8_t addr[16];
        int family;
        if (!sa)
                return false;
        if (sa->sa_family == AF_INET) {
                family = AF_INET;
                memcpy(addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        } else if (sa->sa_family == AF_INET6) {
                const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
                if (IN6_IS_ADDR_V4MAPPED(a6)) {
                        family = AF_INET;
                        memcpy(addr, a6->s6_addr + 12, 4);
                } else {
                        family = AF_INET6;
                        memcpy(addr, a6->s6_addr, 16);
                }
        } else
                return false;
        for (size_t i = 0; i < l->n; i++)
                if (l->items[i].family == family &&
                    prefix_equal(l->items[i].addr, addr, l->items[i].prefix))
                        return true;
        return false;
}
