/* test_journal.c: entries logged under the event loop reach the journal's socket once the round of
 * work that logged them is done, even when the loop then has nothing else to do, and together;
 * a job entry carries its fields in the journal's native format. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>

#include "journal.h"

static char dir[64];
static char path[96];
static int sock = -1;

static int setup(void **state)
{
        snprintf(dir, sizeof(dir), "/tmp/vidu-journal-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(path, sizeof(path), "%s/socket", dir);
        sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
        if (sock < 0 || bind(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                return -1;
        journal_use_socket(path);
        journal_setup(LOG_INFO);
        return 0;
}

static int teardown(void **state)
{
        journal_use_socket(NULL);
        close(sock);
        unlink(path);
        rmdir(dir);
        return 0;
}

/* Datagrams waiting on the test's socket whose MESSAGE= holds word. */
static int received(const char *word)
{
        char buf[16384];
        int n = 0;
        for (;;) {
                ssize_t len = recv(sock, buf, sizeof(buf) - 1, MSG_DONTWAIT);
                if (len < 0)
                        break;
                buf[len] = 0;
                if (strstr(buf, word))
                        n++;
        }
        return n;
}

struct logger {
        int entries;
        const char *word;
};

static int on_defer(sd_event_source *s, void *userdata)
{
        struct logger *l = userdata;
        for (int i = 0; i < l->entries; i++)
                log_info("%s %d", l->word, i);
        return sd_event_source_set_enabled(s, SD_EVENT_OFF);
}

/* A loop whose only source is one callback that logs l's entries, run once: they wait queued. */
static sd_event *loop_that_logged(struct logger *l, sd_event_source **src)
{
        sd_event *e = NULL;
        assert_int_equal(sd_event_new(&e), 0);
        assert_int_equal(journal_attach_event(e), 0);
        assert_int_equal(sd_event_add_defer(e, src, on_defer, l), 0);
        assert_true(sd_event_run(e, 0) > 0);
        assert_true(journal_queued_bytes() > 0);
        return e;
}

/* The loop has no other source: nothing but the journal's own flush can send the entries. */
static void test_entries_leave_when_the_loop_goes_idle(void **state)
{
        struct logger l = {.entries = 3, .word = "idle-check"};
        sd_event_source *src = NULL;
        sd_event *e = loop_that_logged(&l, &src);

        /* The flush may take a few more rounds, never a timer. */
        for (int i = 0; i < 5 && journal_queued_bytes() > 0; i++)
                assert_true(sd_event_run(e, 0) >= 0);
        assert_int_equal(journal_queued_bytes(), 0);
        assert_int_equal(received("MESSAGE=idle-check"), 3);

        sd_event_source_unref(src);
        journal_detach_event();
        sd_event_unref(e);
}

/* Detaching (the daemon stopping) sends what still waits. */
static void test_detach_sends_what_waits(void **state)
{
        struct logger l = {.entries = 2, .word = "detach-check"};
        sd_event_source *src = NULL;
        sd_event *e = loop_that_logged(&l, &src);
        journal_detach_event();
        assert_int_equal(journal_queued_bytes(), 0);
        assert_int_equal(received("MESSAGE=detach-check"), 2);
        sd_event_source_unref(src);
        sd_event_unref(e);
}

/* The one datagram waiting on the test's socket, NUL-terminated, or "" if none. */
static const char *one_datagram(char *buf, size_t size)
{
        ssize_t len = recv(sock, buf, size - 1, MSG_DONTWAIT);
        buf[len > 0 ? len : 0] = 0;
        return buf;
}

/* A job entry's numbers are in decimal, each field on its own line; absent ones are left out. */
static void test_job_fields_carry_their_numbers(void **state)
{
        char buf[16384];
        struct job_event ev = {.message_id = MSGID_RETRYING,
                               .creation_id = "2370483030340581",
                               .job_state = "retrying",
                               .attempt = 4294967295u,
                               .http_status = 429};
        int line = __LINE__ + 1;
        log_job(LOG_WARNING, &ev, "numbers-check");
        const char *d = one_datagram(buf, sizeof(buf));
        assert_non_null(strstr(d, "MESSAGE=numbers-check\n"));
        assert_non_null(strstr(d, "\nPRIORITY=4\n"));
        assert_non_null(strstr(d, "\nATTEMPT=4294967295\n"));
        assert_non_null(strstr(d, "\nHTTP_STATUS=429\n"));
        assert_non_null(strstr(d, "\nCREATION_ID=2370483030340581\n"));
        char want[64];
        snprintf(want, sizeof(want), "\nCODE_LINE=%d\n", line);
        assert_non_null(strstr(d, want));

        ev.attempt = 1;
        ev.http_status = 0;
        log_job(LOG_DEBUG, &ev, "below-level");
        assert_string_equal(one_datagram(buf, sizeof(buf)), "");
        log_job(LOG_INFO, &ev, "first-attempt");
        d = one_datagram(buf, sizeof(buf));
        assert_non_null(strstr(d, "\nPRIORITY=6\n"));
        assert_non_null(strstr(d, "\nATTEMPT=1\n"));
        assert_null(strstr(d, "HTTP_STATUS="));
        assert_null(strstr(d, "ACCEPTED_AT="));

        /* A `submitted` entry that folds `accepted` carries its time, all 16 digits. */
        ev.job_state = "submitted";
        ev.accepted_at = 1764950400123456ULL;
        log_job(LOG_INFO, &ev, "folded");
        d = one_datagram(buf, sizeof(buf));
        assert_non_null(strstr(d, "\nJOB_STATE=submitted\nACCEPTED_AT=1764950400123456\n"));
        ev.accepted_at = 0;

        ev.attempt = 0;
        log_job(LOG_INFO, &ev, "no-attempt");
        d = one_datagram(buf, sizeof(buf));
        assert_non_null(strstr(d, "MESSAGE=no-attempt\n"));
        assert_null(strstr(d, "ATTEMPT="));
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_entries_leave_when_the_loop_goes_idle),
            cmocka_unit_test(test_detach_sends_what_waits),
            cmocka_unit_test(test_job_fields_carry_their_numbers),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
