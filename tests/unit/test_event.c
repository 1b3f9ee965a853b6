/* test_event.c: outcome events: the body, the answer classes, the signature (UPSTREAM.md §4's
 * vector), and the ledger's outbox written with the transition that makes each event. */
#include <errno.h>
#include <json-c/json.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "auth.h"
#include "event.h"
#include "ledger.h"
#include "util.h"

static void test_body_fields_and_omissions(void **state)
{
        struct job j = {.state = JOB_SUCCEEDED, .attempt = 2, .http_status = 200};
        strcpy(j.creation_id, "2370483030340581");
        strcpy(j.source_task_id, "2369218477629212");
        strcpy(j.upscale_task_id, "up-1");
        strcpy(j.result_url, "https://cdn.example.com/a.mp4?sig=\"x\"");
        char *body = NULL;
        /* 2026-12-05T08:50:50.000123Z */
        assert_int_equal(event_body(&j, "{\"pipeline\":\"p1\"}", 1796460650000123ULL, &body), 0);
        json_object *o = json_tokener_parse(body);
        assert_non_null(o);
        json_object *d, *v;
        assert_true(json_object_object_get_ex(o, "type", &v));
        assert_string_equal(json_object_get_string(v), "upscale.succeeded");
        assert_true(json_object_object_get_ex(o, "timestamp", &v));
        assert_string_equal(json_object_get_string(v), "2026-12-05T08:50:50.000123Z");
        assert_true(json_object_object_get_ex(o, "data", &d));
        assert_true(json_object_object_get_ex(d, "attempt", &v));
        assert_true(json_object_is_type(v, json_type_int));
        assert_int_equal(json_object_get_int(v), 2);
        assert_true(json_object_object_get_ex(d, "http_status", &v));
        assert_true(json_object_is_type(v, json_type_int));
        assert_true(json_object_object_get_ex(d, "result_url", &v));
        assert_string_equal(json_object_get_string(v), j.result_url);
        assert_true(json_object_object_get_ex(d, "payload", &v));
        assert_string_equal(json_object_get_string(v), "{\"pipeline\":\"p1\"}");
        assert_true(json_object_object_get_ex(d, "state", &v));
        assert_string_equal(json_object_get_string(v), "succeeded");
        /* No value: left out, never null. */
        assert_false(json_object_object_get_ex(d, "error", &v));
        assert_null(strstr(body, "null"));
        json_object_put(o);
        free(body);

        struct job dead = {.state = JOB_DEAD};
        strcpy(dead.creation_id, "c2");
        strcpy(dead.upstream_error, "invalid model\n");
        assert_int_equal(event_body(&dead, NULL, 0, &body), 0);
        o = json_tokener_parse(body);
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "data", &d));
        assert_false(json_object_object_get_ex(d, "attempt", &v));
        assert_false(json_object_object_get_ex(d, "http_status", &v));
        assert_false(json_object_object_get_ex(d, "payload", &v));
        assert_false(json_object_object_get_ex(d, "source_task_id", &v));
        assert_true(json_object_object_get_ex(d, "error", &v));
        assert_string_equal(json_object_get_string(v), "invalid model\n");
        json_object_put(o);
        free(body);

        struct job pending = {.state = JOB_PENDING};
        assert_int_equal(event_body(&pending, NULL, 0, &body), -EINVAL);
}

static void test_types(void **state)
{
        assert_string_equal(event_type_for_state(JOB_UNCERTAIN), "upscale.uncertain");
        assert_null(event_type_for_state(JOB_SUBMITTED));
        assert_int_equal(event_state_for_type("upscale.failed"), JOB_FAILED);
        assert_int_equal(event_state_for_type("upscale.pending"), -EINVAL);
}

static void test_classify(void **state)
{
        assert_int_equal(event_classify(200), EVENT_DELIVERED);
        assert_int_equal(event_classify(204), EVENT_DELIVERED);
        assert_int_equal(event_classify(0), EVENT_RETRY); /* no answer */
        assert_int_equal(event_classify(500), EVENT_RETRY);
        assert_int_equal(event_classify(503), EVENT_RETRY);
        assert_int_equal(event_classify(408), EVENT_RETRY);
        assert_int_equal(event_classify(429), EVENT_RETRY);
        assert_int_equal(event_classify(301), EVENT_RETRY); /* not followed */
        assert_int_equal(event_classify(400), EVENT_REFUSED);
        assert_int_equal(event_classify(401), EVENT_REFUSED);
        assert_int_equal(event_classify(404), EVENT_REFUSED);
}

/* The signer the sender uses, against UPSTREAM.md §4. */
static void test_signature_vector(void **state)
{
        char sig[64];
        const char *body = "{\"test\": 2432232314}";
        assert_int_equal(auth_standard_webhooks_sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                                                     "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330",
                                                     (const uint8_t *)body, strlen(body), sig,
                                                     sizeof(sig)),
                         0);
        assert_string_equal(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

/* --- the outbox --------------------------------------------------------------------------- */

static char dir[] = "/tmp/vidu-event-test-XXXXXX";
static char path[256];
static const struct ledger_options opts = {.synchronous_full = true, .busy_timeout_ms = 100};

static int setup(void **state)
{
        strcpy(dir, "/tmp/vidu-event-test-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(path, sizeof(path), "%s/ledger.db", dir);
        return 0;
}

static int teardown(void **state)
{
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        return system(cmd) == 0 ? 0 : -1;
}

static struct ledger *open_ok(void)
{
        struct ledger *l = NULL;
        char *err = NULL;
        if (ledger_open(path, &opts, &l, &err) < 0)
                fail_msg("ledger_open: %s", err);
        return l;
}

static int count_cb(const struct ledger_event *e, void *userdata)
{
        (*(size_t *)userdata)++;
        return 0;
}

static size_t count_events(struct ledger *l, int state)
{
        size_t n = 0;
        assert_int_equal(ledger_events_foreach(l, state, count_cb, &n), 0);
        return n;
}

static unsigned hooks;
static void on_hook(void *userdata)
{
        hooks++;
}

static void move(struct ledger *l, const char *id, enum job_state to, uint64_t now)
{
        struct job j;
        assert_int_equal(ledger_get(l, id, &j), 1);
        j.state = to;
        assert_true(ledger_save(l, &j, now) >= 0);
}

static void test_outbox_written_with_the_transition(void **state)
{
        struct ledger *l = open_ok();
        assert_int_equal(ledger_set_event_states(l, EVENT_STATES_ALL & ~(1u << JOB_FAILED)), 0);
        ledger_set_event_hook(l, on_hook, NULL);
        hooks = 0;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_insert(l, "c1", "s1", 10), 1);
        assert_int_equal(ledger_insert(l, "c2", "s2", 10), 1);
        assert_int_equal(ledger_insert(l, "c3", "s3", 10), 1);
        move(l, "c1", JOB_SUBMITTED, 11); /* no event */
        move(l, "c1", JOB_SUCCEEDED, 12);
        move(l, "c1", JOB_SUCCEEDED, 13); /* no change of state: no second event */
        move(l, "c2", JOB_FAILED, 12);    /* not in events.types */
        assert_int_equal(ledger_commit(l), 0);
        assert_int_equal(hooks, 1);
        assert_int_equal(count_events(l, -1), 1);

        /* A rolled-back transition leaves no event. */
        assert_int_equal(ledger_begin(l), 0);
        move(l, "c3", JOB_DEAD, 14);
        ledger_rollback(l);
        assert_int_equal(count_events(l, -1), 1);

        /* ledger_save_if, the dispatcher's save, writes them too. */
        struct job j;
        assert_int_equal(ledger_begin(l), 0);
        assert_int_equal(ledger_get(l, "c3", &j), 1);
        j.state = JOB_UNCERTAIN;
        assert_int_equal(ledger_save_if(l, &j, JOB_PENDING, 15), 1);
        assert_int_equal(ledger_commit(l), 0);
        assert_int_equal(count_events(l, LEDGER_EVENT_PENDING), 2);
        ledger_close(l);

        /* The mask outlives the opening: an operator's command writes the same events. */
        l = open_ok();
        assert_int_equal(ledger_begin(l), 0);
        move(l, "c2", JOB_DEAD, 16);
        assert_int_equal(ledger_commit(l), 0);
        assert_int_equal(count_events(l, LEDGER_EVENT_PENDING), 3);

        /* Due, oldest first, with a stable id and the body. */
        struct ledger_event due[8];
        int n = ledger_events_due(l, 100, due, 8);
        assert_int_equal(n, 3);
        assert_string_equal(due[0].creation_id, "c1");
        assert_string_equal(due[0].type, "upscale.succeeded");
        assert_memory_equal(due[0].id, "evt_", 4);
        assert_int_equal(strlen(due[0].id), 28);
        assert_non_null(strstr(due[0].body, "\"creation_id\":\"c1\""));
        assert_string_not_equal(due[0].id, due[1].id);
        char id0[LEDGER_EVENT_ID_SIZE];
        strcpy(id0, due[0].id);

        /* Delivered, retried later, dead. */
        assert_int_equal(ledger_begin(l), 0);
        due[0].state = LEDGER_EVENT_DELIVERED;
        due[0].attempts = 1;
        assert_int_equal(ledger_event_update(l, &due[0], 200), 1);
        due[1].attempts = 1;
        due[1].next_at = 5000;
        due[1].http_status = 503;
        strcpy(due[1].error, "HTTP 503");
        assert_int_equal(ledger_event_update(l, &due[1], 200), 1);
        due[2].state = LEDGER_EVENT_DEAD;
        assert_int_equal(ledger_event_update(l, &due[2], 200), 1);
        /* Not pending any more: left alone. */
        assert_int_equal(ledger_event_update(l, &due[0], 201), 0);
        assert_int_equal(ledger_commit(l), 0);
        for (int i = 0; i < n; i++)
                ledger_event_clear(&due[i]);
        uint64_t next = 0, backlog = 0;
        assert_int_equal(ledger_events_next_due(l, &next), 1);
        assert_int_equal(next, 5000);
        assert_int_equal(ledger_events_backlog(l, &backlog), 0);
        assert_int_equal(backlog, 1);
        assert_int_equal(ledger_events_due(l, 4999, due, 8), 0);

        /* An operator's retry: the same id, pending again. */
        assert_int_equal(ledger_events_retry_dead(l, 300), 1);
        assert_int_equal(ledger_event_retry(l, id0, 300), 1);
        assert_int_equal(ledger_event_retry(l, id0, 300), 0); /* already pending */
        assert_int_equal(ledger_event_retry(l, "evt_none", 300), 0);
        n = ledger_events_due(l, 300, due, 8);
        assert_int_equal(n, 2);
        bool found = false;
        for (int i = 0; i < n; i++) {
                found = found || strcmp(due[i].id, id0) == 0;
                assert_int_equal(due[i].since, 300);
                ledger_event_clear(&due[i]);
        }
        assert_true(found);

        /* Delivered events purged in batches once older than the limit. */
        n = ledger_events_due(l, 10000, due, 8);
        assert_int_equal(n, 3);
        assert_int_equal(ledger_begin(l), 0);
        for (int i = 0; i < n; i++) {
                due[i].state = LEDGER_EVENT_DELIVERED;
                assert_int_equal(ledger_event_update(l, &due[i], 400 + (uint64_t)i), 1);
                ledger_event_clear(&due[i]);
        }
        assert_int_equal(ledger_events_purge(l, 402, 1), 1);
        assert_int_equal(ledger_events_purge(l, 402, 1), 1);
        assert_int_equal(ledger_events_purge(l, 402, 1), 0);
        assert_int_equal(ledger_commit(l), 0);
        assert_int_equal(count_events(l, -1), 1);
        ledger_close(l);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_body_fields_and_omissions),
            cmocka_unit_test(test_types),
            cmocka_unit_test(test_classify),
            cmocka_unit_test(test_signature_vector),
            cmocka_unit_test_setup_teardown(test_outbox_written_with_the_transition, setup,
                                            teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
