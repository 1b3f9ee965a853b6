/* test_cidr.c: allow_from lists: parsing, errors, IPv4, IPv6, mapped addresses, prefix edges. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "cidr.h"

static bool match4(const struct cidr_list *l, const char *ip)
{
        struct sockaddr_in sa = {.sin_family = AF_INET};
        assert_int_equal(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
        return cidr_list_match(l, (struct sockaddr *)&sa);
}

static bool match6(const struct cidr_list *l, const char *ip)
{
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
        assert_int_equal(inet_pton(AF_INET6, ip, &sa.sin6_addr), 1);
        return cidr_list_match(l, (struct sockaddr *)&sa);
}

static void test_ipv4(void **state)
{
        struct cidr_list l;
        assert_int_equal(cidr_list_parse("10.0.0.0/8, 192.168.1.7 172.16.0.0/12", &l, NULL), 0);
        assert_int_equal(l.n, 3);
        assert_true(match4(&l, "10.255.1.2"));
        assert_false(match4(&l, "11.0.0.1"));
        assert_true(match4(&l, "192.168.1.7"));
        assert_false(match4(&l, "192.168.1.8"));
        assert_true(match4(&l, "172.31.255.255"));
        assert_false(match4(&l, "172.32.0.0"));
        /* An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d. */
        assert_true(match6(&l, "::ffff:10.1.2.3"));
        assert_false(match6(&l, "::ffff:11.1.2.3"));
        cidr_list_clear(&l);
}

static void test_ipv6_and_edges(void **state)
{
        struct cidr_list l;
        assert_int_equal(cidr_list_parse("::1,2001:db8::/33,0.0.0.0/0", &l, NULL), 0);
        assert_true(match6(&l, "::1"));
        assert_false(match6(&l, "::2"));
        assert_true(match6(&l, "2001:db8:7fff::1"));
        assert_false(match6(&l, "2001:db8:8000::1"));
        assert_true(match4(&l, "8.8.8.8")); /* /0 matches every IPv4 address */
        cidr_list_clear(&l);
        assert_int_equal(cidr_list_parse("", &l, NULL), 0);
        assert_int_equal(l.n, 0);
        assert_false(match4(&l, "127.0.0.1"));
        cidr_list_clear(&l);
}

static void test_errors(void **state)
{
        struct cidr_list l;
        const char *bad = NULL;
        const char *s = "10.0.0.0/8, 300.1.1.1";
        assert_int_equal(cidr_list_parse(s, &l, &bad), -EINVAL);
        assert_ptr_equal(bad, s + 12);
        assert_int_equal(cidr_list_parse("10.0.0.0/33", &l, NULL), -EINVAL);
        assert_int_equal(cidr_list_parse("::1/129", &l, NULL), -EINVAL);
        assert_int_equal(cidr_list_parse("10.0.0.0/", &l, NULL), -EINVAL);
        assert_int_equal(cidr_list_parse("localhost", &l, NULL), -EINVAL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_ipv4),
            cmocka_unit_test(test_ipv6_and_edges),
            cmocka_unit_test(test_errors),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
