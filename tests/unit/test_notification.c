/* test_notification.c: every fixture shape, and malformed or hostile variants at the limits. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "notification.h"
#include "select.h"
#include "util.h"

static const struct notification_limits lim = {
    .max_depth = 32, .max_tasks = 1000, .max_creations = 10000};

static struct notification *parse_ok(const char *body)
{
        struct notification *n = NULL;
        const char *why = NULL;
        int r = notification_parse(body, strlen(body), &lim, &n, &why);
        if (r < 0)
                fail_msg("parse failed (%d): %s for %s", r, why, body);
        return n;
}

static int parse_err(const char *body, const struct notification_limits *l)
{
        struct notification *n = NULL;
        const char *why = NULL;
        int r = notification_parse(body, strlen(body), l ? l : &lim, &n, &why);
        if (r >= 0) {
                notification_free(n);
                fail_msg("parse unexpectedly succeeded for %s", body);
        }
        assert_non_null(why);
        return r;
}

static struct notification *fixture(const char *name)
{
        char path[512];
        const char *dir = getenv("FIXTURES_DIR") ? getenv("FIXTURES_DIR") : FIXTURES_DIR;
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        char *body = NULL;
        size_t len = 0;
        assert_int_equal(read_small_file(path, 1 << 20, false, &body, &len), 0);
        struct notification *n = NULL;
        const char *why = NULL;
        assert_int_equal(notification_parse(body, len, &lim, &n, &why), 0);
        free(body);
        return n;
}

static void test_fixture_bare_task(void **state)
{
        struct notification *n = fixture("task-success-v1.json");
        assert_int_equal(n->n_tasks, 1);
        struct note_task *t = &n->tasks[0];
        assert_string_equal(t->id, "2369218477629212");
        assert_string_equal(t->type, "img2video");
        assert_true(note_task_succeeded(t));
        assert_false(t->is_upscale);
        assert_int_equal(t->n_creations, 2);
        assert_string_equal(t->creation_ids[0], "2370483030340581");
        assert_string_equal(t->creation_ids[1], "2370483030340582");
        assert_string_equal(t->result_url, "https://media.example.invalid/a/watermarked.mp4");
        assert_null(t->err_code);
        notification_free(n);
}

static void test_fixture_official_callback(void **state)
{
        struct notification *n = fixture("callback-success-ent-v2.json");
        assert_int_equal(n->n_tasks, 1);
        assert_string_equal(n->tasks[0].id, "811935440473669632");
        assert_null(n->tasks[0].type);
        assert_int_equal(n->tasks[0].n_creations, 1);
        assert_string_equal(n->tasks[0].creation_ids[0], "811935520102486016");
        assert_string_equal(n->tasks[0].result_url, "https://media.example.invalid/c/video.mp4");
        /* The pipeline's context and what the upscale cost are kept. */
        assert_string_equal(n->tasks[0].payload, "batch-7");
        assert_int_equal(n->tasks[0].credits, 4);
        notification_free(n);
}

/* A payload is kept as the string it decodes to; what cannot be passed on untouched is dropped
 * with a reason, never failing the notification. */
static void test_payload(void **state)
{
        struct notification *n =
            parse_ok("{\"id\":\"t\",\"state\":\"success\",\"payload\":"
                     "\"{\\\"k\\\": \\\"\\u00e9\\n\\\"}\",\"creations\":[{\"id\":\"c\"}]}");
        assert_string_equal(n->tasks[0].payload, "{\"k\": \"\u00e9\n\"}");
        assert_null(n->tasks[0].payload_error);
        assert_int_equal(n->tasks[0].credits, -1);
        notification_free(n);
        n = parse_ok("{\"id\":\"t\",\"payload\":{\"k\":1}}");
        assert_null(n->tasks[0].payload);
        assert_string_equal(n->tasks[0].payload_error, "payload is not a string");
        notification_free(n);
        n = parse_ok("{\"id\":\"t\",\"payload\":\"a\\u0000b\"}");
        assert_null(n->tasks[0].payload);
        assert_non_null(n->tasks[0].payload_error);
        notification_free(n);
        /* Credits as decimal text count too (the spend guard reads what it can); other text does
         * not. */
        n = parse_ok("{\"id\":\"t\",\"payload\":null,\"credits\":\"4\"}");
        assert_null(n->tasks[0].payload);
        assert_null(n->tasks[0].payload_error);
        assert_int_equal(n->tasks[0].credits, 4);
        notification_free(n);
        n = parse_ok("{\"id\":\"t\",\"credits\":\"four\"}");
        assert_int_equal(n->tasks[0].credits, -1);
        notification_free(n);
        size_t big = NOTIFICATION_PAYLOAD_MAX + 1;
        char *body = malloc(big + 64);
        assert_non_null(body);
        int o = sprintf(body, "{\"id\":\"t\",\"payload\":\"");
        memset(body + o, 'x', big);
        strcpy(body + o + big, "\"}");
        n = parse_ok(body);
        assert_null(n->tasks[0].payload);
        assert_string_equal(n->tasks[0].payload_error, "payload longer than 1 MiB");
        notification_free(n);
        free(body);
}

static void test_fixture_envelope(void **state)
{
        struct notification *n = fixture("envelope-data.json");
        assert_int_equal(n->n_tasks, 1);
        assert_string_equal(n->tasks[0].id, "2369218477629400");
        assert_string_equal(n->tasks[0].creation_ids[0], "2370483030340600");
        notification_free(n);
}

static void test_fixture_batch(void **state)
{
        struct notification *n = fixture("batch-array.json");
        assert_int_equal(n->n_tasks, 3);
        assert_true(note_task_succeeded(&n->tasks[0]));
        assert_false(note_task_succeeded(&n->tasks[1]));
        assert_string_equal(n->tasks[1].state, "queueing");
        assert_int_equal(n->tasks[2].n_creations, 2);
        notification_free(n);
        n = parse_ok("{\"tasks\": [{\"id\": \"1\", \"state\": \"success\", \"creations\": "
                     "[{\"id\": \"2\"}]}]}");
        assert_int_equal(n->n_tasks, 1);
        assert_string_equal(n->tasks[0].creation_ids[0], "2");
        notification_free(n);
}

static void test_fixture_not_finished_failed_upscale(void **state)
{
        struct notification *n = fixture("task-processing-v1.json");
        assert_false(note_task_succeeded(&n->tasks[0]));
        notification_free(n);
        n = fixture("task-failed-v1.json");
        assert_true(note_task_failed(&n->tasks[0]));
        assert_string_equal(n->tasks[0].err_code, "CreationPolicyViolation");
        notification_free(n);
        n = fixture("upscale-success-v1.json");
        assert_true(n->tasks[0].is_upscale);
        assert_string_equal(n->tasks[0].id, "2371000000000001");
        assert_string_equal(n->tasks[0].result_url, "https://media.example.invalid/hd/video.mp4");
        notification_free(n);
        n = fixture("upscale-response-v1.json");
        assert_true(n->tasks[0].is_upscale);
        assert_int_equal(n->tasks[0].n_creations, 0);
        notification_free(n);
}

static void test_ids(void **state)
{
        /* Integers are taken as their decimal text; floats are not ids. */
        struct notification *n =
            parse_ok("{\"id\": 2369218477629212, \"state\": \"success\", \"creations\": "
                     "[{\"id\": 2370483030340581}, {\"id\": 1.5}, {\"id\": \"\"}, {}]}");
        assert_string_equal(n->tasks[0].id, "2369218477629212");
        assert_int_equal(n->tasks[0].n_creations, 1);
        assert_string_equal(n->tasks[0].creation_ids[0], "2370483030340581");
        assert_int_equal(n->tasks[0].n_rejected, 3);
        notification_free(n);

        char body[600], id128[129], id129[130];
        memset(id128, '7', 128);
        id128[128] = 0;
        memset(id129, '7', 129);
        id129[129] = 0;
        snprintf(
            body, sizeof(body),
            "{\"id\":\"t\",\"state\":\"success\",\"creations\":[{\"id\":\"%s\"},{\"id\":\"%s\"}]}",
            id128, id129);
        n = parse_ok(body);
        assert_int_equal(n->tasks[0].n_creations, 1);
        assert_int_equal(strlen(n->tasks[0].creation_ids[0]), 128);
        assert_int_equal(n->tasks[0].n_rejected, 1);
        assert_string_equal(n->tasks[0].rejected_reasons[0], "id longer than 128 bytes");
        notification_free(n);

        /* Control characters: rejected, and shown escaped. Byte for byte otherwise (spaces kept).
         */
        n = parse_ok("{\"id\":\"t\",\"state\":\"success\",\"creations\":[{\"id\":\"a\\u0001b\"},{"
                     "\"id\":\" x \"},"
                     "{\"id\":\" x \"}]}");
        assert_int_equal(n->tasks[0].n_creations, 1);
        assert_string_equal(n->tasks[0].creation_ids[0], " x ");
        assert_string_equal(n->tasks[0].rejected_ids[0], "a\\x01b");
        notification_free(n);

        /* A task whose own id is unusable is still returned, marked. */
        n = parse_ok("{\"task_id\": \"\", \"state\": \"success\"}");
        assert_null(n->tasks[0].id);
        assert_non_null(n->tasks[0].id_error);
        notification_free(n);
}

static void test_malformed(void **state)
{
        assert_int_equal(parse_err("", NULL), -EBADMSG);
        assert_int_equal(parse_err("{", NULL), -EBADMSG);
        assert_int_equal(parse_err("not json", NULL), -EBADMSG);
        assert_int_equal(parse_err("{\"id\":\"1\"} trailing", NULL), -EBADMSG);
        assert_int_equal(parse_err("[]", NULL), -EBADMSG);
        assert_int_equal(parse_err("[1, \"x\", null]", NULL), -EBADMSG);
        assert_int_equal(parse_err("{\"hello\": \"world\"}", NULL), -EBADMSG);
        assert_int_equal(parse_err("{\"data\": {\"x\": 1}}", NULL), -EBADMSG);
        assert_int_equal(parse_err("42", NULL), -EBADMSG);
        const char nul[] = "{\"id\":\"1\"}\0";
        struct notification *n = NULL;
        const char *why = NULL;
        assert_int_equal(notification_parse(nul, sizeof(nul), &lim, &n, &why), -EBADMSG);
        /* White space after the value is fine. */
        n = parse_ok("{\"id\":\"1\",\"state\":\"queueing\"}\r\n ");
        notification_free(n);
}

static void test_limits_at_the_edge(void **state)
{
        struct notification_limits l = {.max_depth = 4, .max_tasks = 2, .max_creations = 3};
        struct notification *n = NULL;
        const char *why = NULL;
        /* Depth 4: array > object > array > object. */
        const char *d4 = "[{\"id\":\"1\",\"state\":\"success\",\"creations\":[{\"id\":\"2\"}]}]";
        assert_int_equal(notification_parse(d4, strlen(d4), &l, &n, &why), 0);
        notification_free(n);
        const char *d5 =
            "[{\"id\":\"1\",\"state\":\"success\",\"creations\":[{\"id\":\"2\",\"x\":{}}]}]";
        assert_int_equal(parse_err(d5, &l), -E2BIG);

        const char *t2 = "[{\"id\":\"1\"},{\"id\":\"2\"}]";
        assert_int_equal(notification_parse(t2, strlen(t2), &l, &n, &why), 0);
        notification_free(n);
        assert_int_equal(parse_err("[{\"id\":\"1\"},{\"id\":\"2\"},{\"id\":\"3\"}]", &l), -E2BIG);

        const char *c3 =
            "{\"id\":\"1\",\"creations\":[{\"id\":\"a\"},{\"id\":\"b\"},{\"id\":\"c\"}]}";
        assert_int_equal(notification_parse(c3, strlen(c3), &l, &n, &why), 0);
        notification_free(n);
        assert_int_equal(parse_err("{\"id\":\"1\",\"creations\":[{\"id\":\"a\"},{\"id\":\"b\"},{"
                                   "\"id\":\"c\"},{\"id\":\"d\"}]}",
                                   &l),
                         -E2BIG);
}

/* The defaults of [select], plus rules: parsed as the configuration parses them. */
static void selection_make(struct selection *sel, const char *task_types, const char *rule)
{
        const char *why = NULL;
        memset(sel, 0, sizeof(*sel));
        assert_int_equal(select_types_parse(task_types, &sel->task_types, &why), 0);
        assert_int_equal(
            select_types_parse(SELECT_DEFAULT_CREATION_TYPES, &sel->creation_types, &why), 0);
        if (rule) {
                sel->rules = calloc(1, sizeof(*sel->rules));
                assert_non_null(sel->rules);
                assert_int_equal(select_rule_parse(rule, &sel->rules[0], &why), 0);
                sel->n_rules = 1;
        }
}

static struct notification *parse_selected(const char *body, const struct selection *sel)
{
        struct notification_limits l = lim;
        l.select = sel;
        struct notification *n = NULL;
        const char *why = NULL;
        if (notification_parse(body, strlen(body), &l, &n, &why) < 0)
                fail_msg("parse failed: %s for %s", why, body);
        return n;
}

static void test_selection_by_type(void **state)
{
        struct selection sel;
        selection_make(&sel, SELECT_DEFAULT_TASK_TYPES, NULL);
        struct notification *n = parse_selected(
            "[{\"id\":\"t1\",\"type\":\"text2image\",\"state\":\"success\","
            "\"creations\":[{\"id\":\"c1\"}]},"
            "{\"id\":\"t2\",\"type\":\"text2audio\",\"state\":\"success\","
            "\"creations\":[{\"id\":\"c2\"}]},"
            "{\"id\":\"t3\",\"type\":\"img2video\",\"state\":\"success\","
            "\"creations\":[{\"id\":\"c3\",\"type\":\"video\"},{\"id\":\"c4\","
            "\"type\":\"image\"},{\"id\":\"c5\"},{\"id\":\"c6\",\"type\":7}]},"
            "{\"task_id\":\"t4\",\"state\":\"success\",\"creations\":[{\"id\":\"c7\"}]},"
            "{\"id\":\"t5\",\"type\":\"text2image\",\"state\":\"processing\"},"
            "{\"id\":\"t6\",\"type\":\"upscale\",\"state\":\"success\","
            "\"creations\":[{\"id\":\"c8\",\"type\":\"image\"}]}]",
            &sel);
        assert_int_equal(n->n_tasks, 6);
        assert_non_null(n->tasks[0].skip_reason);
        assert_string_equal(n->tasks[0].skip_rule, "select.task_types");
        assert_non_null(strstr(n->tasks[0].skip_reason, "text2image"));
        assert_string_equal(n->tasks[1].skip_rule, "select.task_types");
        /* Only some creations of t3: c4 (image) and c6 (a type that is not a string). */
        assert_null(n->tasks[2].skip_reason);
        assert_int_equal(n->tasks[2].n_creations, 2);
        assert_string_equal(n->tasks[2].creation_ids[0], "c3");
        assert_string_equal(n->tasks[2].creation_ids[1], "c5");
        assert_int_equal(n->tasks[2].n_skipped, 2);
        assert_string_equal(n->tasks[2].skipped_ids[0], "c4");
        assert_string_equal(n->tasks[2].skipped_types[0], "image");
        assert_string_equal(n->tasks[2].skipped_ids[1], "c6");
        /* No type at all (the official callback): passes. */
        assert_null(n->tasks[3].skip_reason);
        assert_int_equal(n->tasks[3].n_creations, 1);
        /* Unfinished tasks and upscales are not selected: they are ignored or outcomes. */
        assert_null(n->tasks[4].skip_reason);
        assert_null(n->tasks[5].skip_reason);
        assert_int_equal(n->tasks[5].n_skipped, 0);
        notification_free(n);
        selection_clear(&sel);

        /* "*": any type; upscales still are not selected. */
        selection_make(&sel, "*", NULL);
        n = parse_selected("{\"id\":\"t1\",\"type\":\"text2image\",\"state\":\"success\","
                           "\"creations\":[{\"id\":\"c1\"}]}",
                           &sel);
        assert_null(n->tasks[0].skip_reason);
        assert_int_equal(n->tasks[0].n_creations, 1);
        notification_free(n);
        selection_clear(&sel);
}

static void test_selection_by_rule(void **state)
{
        struct selection sel;
        selection_make(&sel, "*", "/payload/upscale = true");
        struct notification *n = parse_selected(
            "[{\"id\":\"t1\",\"state\":\"success\",\"payload\":\"{\\\"upscale\\\":true}\","
            "\"creations\":[{\"id\":\"c1\"}]},"
            "{\"id\":\"t2\",\"state\":\"success\",\"payload\":\"{\\\"upscale\\\":false}\","
            "\"creations\":[{\"id\":\"c2\"}]},"
            "{\"id\":\"t3\",\"state\":\"success\",\"payload\":{\"upscale\":[true]},"
            "\"creations\":[{\"id\":\"c3\"}]},"
            "{\"id\":\"t4\",\"state\":\"success\",\"creations\":[{\"id\":\"c4\"}]}]",
            &sel);
        assert_null(n->tasks[0].skip_reason);
        assert_string_equal(n->tasks[1].skip_rule, "/payload/upscale = true");
        assert_non_null(strstr(n->tasks[1].skip_reason, "/payload/upscale = true"));
        assert_non_null(n->tasks[2].skip_reason); /* an array where a value was expected */
        assert_non_null(n->tasks[3].skip_reason); /* no payload */
        notification_free(n);
        selection_clear(&sel);
}

static void test_source_duration(void **state)
{
        struct notification *n =
            parse_ok("[{\"id\":\"t1\",\"state\":\"success\",\"settings\":{\"duration\":8}},"
                     "{\"id\":\"t2\",\"state\":\"success\",\"settings\":{\"duration\":\"8\"}},"
                     "{\"id\":\"t3\",\"state\":\"success\",\"settings\":{\"duration\":0}},"
                     "{\"id\":\"t4\",\"state\":\"success\",\"settings\":{\"duration\":-4}},"
                     "{\"id\":\"t5\",\"state\":\"success\",\"settings\":{\"duration\":8.5}},"
                     "{\"id\":\"t6\",\"state\":\"success\",\"settings\":8},"
                     "{\"id\":\"t7\",\"state\":\"success\",\"settings\":{\"duration\":99999}},"
                     "{\"id\":\"t8\",\"state\":\"success\"}]");
        const unsigned want[] = {8, 0, 0, 0, 0, 0, 0, 0};
        assert_int_equal(n->n_tasks, 8);
        for (size_t i = 0; i < 8; i++)
                assert_int_equal(n->tasks[i].source_duration, want[i]);
        notification_free(n);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_selection_by_type),
            cmocka_unit_test(test_selection_by_rule),
            cmocka_unit_test(test_source_duration),
            cmocka_unit_test(test_fixture_bare_task),
            cmocka_unit_test(test_fixture_official_callback),
            cmocka_unit_test(test_fixture_envelope),
            cmocka_unit_test(test_fixture_batch),
            cmocka_unit_test(test_fixture_not_finished_failed_upscale),
            cmocka_unit_test(test_ids),
            cmocka_unit_test(test_malformed),
            cmocka_unit_test(test_limits_at_the_edge),
            cmocka_unit_test(test_payload),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
