/* test_journal.c: entries logged under the event loop reach the journal's socket once the round of
 * work that logged them is done, even when the loop then has nothing else to do, and together. */
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

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_entries_leave_when_the_loop_goes_idle),
            cmocka_unit_test(test_detach_sends_what_waits),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
