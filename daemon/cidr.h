/* cidr.h: address lists ("10.0.0.0/8, ::1, 192.168.1.7") and matching a peer against them
 * (pure). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
        int family; /* AF_INET or AF_INET6 */
        uint8_t addr[16];
        unsigned prefix;
};

struct cidr_list {
        struct cidr *items;
        size_t n;
};

/* Parses a comma- or space-separated list. On error returns -EINVAL and points *ret_bad at the
 * offending entry's start inside s (NULL-safe). */
int cidr_list_parse(const char *s, struct cidr_list *ret, const char **ret_bad);
void cidr_list_clear(struct cidr_list *l);
/* True if sa (AF_INET, AF_INET6, IPv4-mapped IPv6 too) is in the list. */
bool cidr_list_match(const struct cidr_list *l, const struct sockaddr *sa);
