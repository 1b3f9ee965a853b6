/* test_upstream.c: request bodies and URLs, and the classification of every kind of answer. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>
#include <json-c/json.h>

#include "json_c_text.h"
#include "upstream.h"
#include "util.h"

static struct config cfg_v1(void)
{
        static char base[] = "http://127.0.0.1:9", model[] = "stable", word[] = "Bearer",
                    res[] = "1080p";
        struct config c = {0};
        c.base_url = base;
        c.model = model;
        c.duration = 4;
        c.auth_word = word;
        c.resolution = res;
        c.flavor = UPSTREAM_FLAVOR_V1;
        return c;
}

static void test_submit_body_is_the_seeds(void **state)
{
        struct config c = cfg_v1();
        char *url = NULL, *body = NULL;
        assert_int_equal(upstream_build_submit(&c, "2370483030340581", 0, NULL, &url, &body), 0);
        assert_string_equal(url, "http://127.0.0.1:9/vidu/v1/tasks");
        assert_string_equal(
            body, "{\"input\":{\"creation_id\":\"2370483030340581\"},\"type\":\"upscale\","
                  "\"settings\":{\"model\":\"stable\",\"duration\":4}}");
        free(url);
        free(body);
        c.flavor = UPSTREAM_FLAVOR_ENT_V2;
        assert_int_equal(upstream_build_submit(&c, "811935520102486016", 0, NULL, &url, &body), 0);
        assert_string_equal(url, "http://127.0.0.1:9/ent/v2/upscale-new");
        /* Without a source payload, one naming the creation. */
        assert_string_equal(
            body, "{\"video_creation_id\":\"811935520102486016\",\"upscale_resolution\":\"1080p\","
                  "\"payload\":\"{\\\"creation_id\\\":\\\"811935520102486016\\\"}\"}");
        free(url);
        free(body);
}

/* A job's recorded duration (upscale.duration = source) is what v1 sends; ent-v2 sends none. */
static void test_submit_body_takes_the_jobs_duration(void **state)
{
        struct config c = cfg_v1();
        char *url = NULL, *body = NULL;
        assert_int_equal(upstream_build_submit(&c, "c1", 8, NULL, &url, &body), 0);
        assert_string_equal(body, "{\"input\":{\"creation_id\":\"c1\"},\"type\":\"upscale\","
                                  "\"settings\":{\"model\":\"stable\",\"duration\":8}}");
        free(url);
        free(body);
        c.flavor = UPSTREAM_FLAVOR_ENT_V2;
        assert_int_equal(upstream_build_submit(&c, "c1", 8, NULL, &url, &body), 0);
        assert_null(strstr(body, "duration"));
        free(url);
        free(body);
}

/* Every byte a configured string can hold is escaped as json-c escapes it, and the body parses
 * back to the same values. */
static void test_submit_body_escapes_like_json_c(void **state)
{
        static char model[] = "a\"b\\c/d\x01\x1f\b\f\n\r\t\x7f \xc3\xa9 end";
        struct config c = cfg_v1();
        c.model = model;
        c.duration = 18446744073709551615ull;
        char *url = NULL, *body = NULL;
        assert_int_equal(upstream_build_submit(&c, "id\"1", 0, NULL, &url, &body), 0);
        char *m = json_c_string(model), *id = json_c_string("id\"1");
        char want[512];
        snprintf(want, sizeof(want),
                 "{\"input\":{\"creation_id\":%s},\"type\":\"upscale\",\"settings\":{\"model\":%s,"
                 "\"duration\":18446744073709551615}}",
                 id, m);
        assert_string_equal(body, want);
        json_object *o = json_tokener_parse(body), *v;
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "settings", &v));
        assert_true(json_object_object_get_ex(v, "model", &v));
        assert_string_equal(json_object_get_string(v), model);
        json_object_put(o);
        free(url);
        free(body);

        c.flavor = UPSTREAM_FLAVOR_ENT_V2;
        c.resolution = model;
        assert_int_equal(upstream_build_submit(&c, "id\"1", 0, model, &url, &body), 0);
        snprintf(want, sizeof(want),
                 "{\"video_creation_id\":%s,\"upscale_resolution\":%s,\"payload\":%s}", id, m, m);
        assert_string_equal(body, want);
        free(url);
        free(body);
        free(m);
        free(id);
}

/* With callback_url: both flavours carry it, marked; ent-v2 passes the source payload on as sent,
 * or generates one naming the creation. */
static void test_submit_body_with_callback(void **state)
{
        static char cb[] = "https://hooks.example.com/hooks/vidu", cbq[] = "https://h/x?k=1";
        struct config c = cfg_v1();
        c.callback_url = cb;
        char *url = NULL, *body = NULL;
        assert_int_equal(upstream_build_submit(&c, "c1", 0, "ignored for v1", &url, &body), 0);
        assert_string_equal(
            body,
            "{\"input\":{\"creation_id\":\"c1\"},\"type\":\"upscale\",\"settings\":"
            "{\"model\":\"stable\",\"duration\":4},"
            "\"callback_url\":\"https://hooks.example.com/hooks/vidu?vidu_upscaled=callback\"}");
        free(url);
        free(body);
        c.flavor = UPSTREAM_FLAVOR_ENT_V2;
        c.callback_url = cbq;
        const char *payload = "{\"batch\": \"7\"}\n\u00e9";
        assert_int_equal(upstream_build_submit(&c, "c1", 0, payload, &url, &body), 0);
        json_object *o = json_tokener_parse(body), *v;
        assert_non_null(o);
        assert_true(json_object_object_get_ex(o, "callback_url", &v));
        assert_string_equal(json_object_get_string(v), "https://h/x?k=1&vidu_upscaled=callback");
        assert_true(json_object_object_get_ex(o, "payload", &v));
        assert_string_equal(json_object_get_string(v), payload);
        json_object_put(o);
        free(url);
        free(body);
        /* A large payload: the buffer is sized for it escaped at worst. */
        char *big = malloc(1024 * 1024 + 1);
        assert_non_null(big);
        memset(big, '\x01', 1024 * 1024);
        big[1024 * 1024] = 0;
        assert_int_equal(upstream_build_submit(&c, "c1", 0, big, &url, &body), 0);
        assert_true(strlen(body) > 6 * 1024 * 1024);
        free(big);
        free(url);
        free(body);

        assert_true(upstream_is_callback("vidu_upscaled=callback"));
        assert_true(upstream_is_callback("k=1&vidu_upscaled=callback"));
        assert_false(upstream_is_callback("k=1&vidu_upscaled=callbacks"));
        assert_false(upstream_is_callback("xvidu_upscaled=callback"));
        assert_false(upstream_is_callback(NULL));
        assert_false(upstream_is_callback(""));
}

static void test_poll_url_escapes(void **state)
{
        struct config c = cfg_v1();
        char *url = NULL;
        assert_int_equal(upstream_build_poll_url(&c, "a/b c?d", &url), 0);
        assert_string_equal(url, "http://127.0.0.1:9/vidu/v1/tasks/a%2Fb%20c%3Fd");
        free(url);
        c.flavor = UPSTREAM_FLAVOR_ENT_V2;
        assert_int_equal(upstream_build_poll_url(&c, "811", &url), 0);
        assert_string_equal(url, "http://127.0.0.1:9/ent/v2/tasks/811/creations");
        free(url);
}

static enum upstream_verdict classify(long status, const char *body, enum upstream_transport t,
                                      char *task_id_out)
{
        struct upstream_answer a = {
            .transport = t, .status = status, .body = body, .body_len = body ? strlen(body) : 0};
        struct upstream_result r;
        upstream_classify_submit(UPSTREAM_FLAVOR_V1, &a, &r);
        if (task_id_out)
                strcpy(task_id_out, r.task_id);
        return r.verdict;
}

static void test_classification(void **state)
{
        char id[JOB_ID_SIZE];
        const char *ok =
            "{\"id\": \"2371000000000001\", \"type\": \"upscale\", \"state\": \"queueing\"}";
        assert_int_equal(classify(200, ok, UPSTREAM_TRANSPORT_OK, id), UPSTREAM_ACCEPTED);
        assert_string_equal(id, "2371000000000001");
        assert_int_equal(classify(200, "{\"id\": 2371000000000002}", UPSTREAM_TRANSPORT_OK, id),
                         UPSTREAM_ACCEPTED);
        assert_string_equal(id, "2371000000000002");
        /* 2xx without a usable id: the task may exist upstream. */
        assert_int_equal(classify(200, "{\"state\":\"queueing\"}", UPSTREAM_TRANSPORT_OK, NULL),
                         UPSTREAM_UNCERTAIN);
        assert_int_equal(classify(200, "this is not json{", UPSTREAM_TRANSPORT_OK, NULL),
                         UPSTREAM_UNCERTAIN);
        assert_int_equal(classify(200, "{\"id\":\"\"}", UPSTREAM_TRANSPORT_OK, NULL),
                         UPSTREAM_UNCERTAIN);
        assert_int_equal(classify(0, NULL, UPSTREAM_TRANSPORT_CUT, NULL), UPSTREAM_UNCERTAIN);
        /* Retry later. */
        assert_int_equal(
            classify(500, "{\"reason\":\"InternalServiceFailure\"}", UPSTREAM_TRANSPORT_OK, NULL),
            UPSTREAM_RETRY);
        assert_int_equal(classify(502, "<html>bad gateway</html>", UPSTREAM_TRANSPORT_OK, NULL),
                         UPSTREAM_RETRY);
        assert_int_equal(classify(503, "", UPSTREAM_TRANSPORT_OK, NULL), UPSTREAM_RETRY);
        assert_int_equal(classify(504, "", UPSTREAM_TRANSPORT_OK, NULL), UPSTREAM_RETRY);
        assert_int_equal(
            classify(429, "{\"reason\":\"TooManyRequests\"}", UPSTREAM_TRANSPORT_OK, NULL),
            UPSTREAM_RETRY);
        assert_int_equal(classify(429, "", UPSTREAM_TRANSPORT_OK, NULL), UPSTREAM_RETRY);
        assert_int_equal(
            classify(400, "{\"reason\":\"OperationInProcess\"}", UPSTREAM_TRANSPORT_OK, NULL),
            UPSTREAM_RETRY);
        assert_int_equal(classify(0, NULL, UPSTREAM_TRANSPORT_TIMEOUT, NULL), UPSTREAM_RETRY);
        /* Final for this job. */
        assert_int_equal(classify(404, "{\"code\":404,\"reason\":\"CreationNotFound\"}",
                                  UPSTREAM_TRANSPORT_OK, NULL),
                         UPSTREAM_FINAL);
        assert_int_equal(
            classify(400, "{\"reason\":\"FieldInvalid\"}", UPSTREAM_TRANSPORT_OK, NULL),
            UPSTREAM_FINAL);
        assert_int_equal(classify(400, "{\"reason\":\"BadRequest\"}", UPSTREAM_TRANSPORT_OK, NULL),
                         UPSTREAM_FINAL);
        assert_int_equal(
            classify(400, "{\"reason\":\"CreationPolicyViolation\"}", UPSTREAM_TRANSPORT_OK, NULL),
            UPSTREAM_FINAL);
        /* Account-wide. */
        assert_int_equal(
            classify(401, "{\"reason\":\"Unauthorized\"}", UPSTREAM_TRANSPORT_OK, NULL),
            UPSTREAM_ACCOUNT);
        assert_int_equal(classify(403, "", UPSTREAM_TRANSPORT_OK, NULL), UPSTREAM_ACCOUNT);
        assert_int_equal(
            classify(400, "{\"reason\":\"CreditInsufficient\"}", UPSTREAM_TRANSPORT_OK, NULL),
            UPSTREAM_ACCOUNT);
        assert_int_equal(
            classify(429, "{\"reason\":\"QuotaExceeded\"}", UPSTREAM_TRANSPORT_OK, NULL),
            UPSTREAM_ACCOUNT);
        /* A 404 page that is not the API: the base URL is wrong, not the creation. */
        assert_int_equal(classify(404, "<html>not found</html>", UPSTREAM_TRANSPORT_OK, NULL),
                         UPSTREAM_ACCOUNT);
        /* Nothing answered. */
        assert_int_equal(classify(0, NULL, UPSTREAM_TRANSPORT_NOT_SENT, NULL), UPSTREAM_OUTAGE);
}

static void test_ent_v2_task_id(void **state)
{
        const char *body = "{\"task_id\":\"811935440473669632\",\"state\":\"created\"}";
        struct upstream_answer a = {.transport = UPSTREAM_TRANSPORT_OK,
                                    .status = 200,
                                    .body = body,
                                    .body_len = strlen(body)};
        struct upstream_result r;
        upstream_classify_submit(UPSTREAM_FLAVOR_ENT_V2, &a, &r);
        assert_int_equal(r.verdict, UPSTREAM_ACCEPTED);
        assert_string_equal(r.task_id, "811935440473669632");
}

static void test_poll_parsing(void **state)
{
        struct upstream_poll p;
        const char *success = "{\"id\":\"1\",\"state\":\"success\",\"creations\":[{\"id\":\"9\","
                              "\"uri\":\"https://x/hd.mp4\"}]}";
        struct upstream_answer a = {.transport = UPSTREAM_TRANSPORT_OK,
                                    .status = 200,
                                    .body = success,
                                    .body_len = strlen(success)};
        upstream_parse_poll(UPSTREAM_FLAVOR_V1, &a, &p);
        assert_int_equal(p.state, UPSTREAM_TASK_SUCCESS);
        assert_string_equal(p.result_url, "https://x/hd.mp4");

        const char *official =
            "{\"state\":\"success\",\"creations\":[{\"id\":\"9\",\"url\":\"https://y/v.mp4\"}]}";
        a.body = official;
        a.body_len = strlen(official);
        upstream_parse_poll(UPSTREAM_FLAVOR_ENT_V2, &a, &p);
        assert_int_equal(p.state, UPSTREAM_TASK_SUCCESS);
        assert_string_equal(p.result_url, "https://y/v.mp4");

        const char *failed = "{\"state\":\"failed\",\"err_code\":\"CreationPolicyViolation\"}";
        a.body = failed;
        a.body_len = strlen(failed);
        upstream_parse_poll(UPSTREAM_FLAVOR_V1, &a, &p);
        assert_int_equal(p.state, UPSTREAM_TASK_FAILED);
        assert_string_equal(p.error, "CreationPolicyViolation");

        const char *running = "{\"state\":\"processing\"}";
        a.body = running;
        a.body_len = strlen(running);
        upstream_parse_poll(UPSTREAM_FLAVOR_V1, &a, &p);
        assert_int_equal(p.state, UPSTREAM_TASK_RUNNING);

        a.body = "garbage";
        a.body_len = 7;
        upstream_parse_poll(UPSTREAM_FLAVOR_V1, &a, &p);
        assert_int_equal(p.state, UPSTREAM_TASK_UNREADABLE);
        a.status = 503;
        a.body = "{}";
        a.body_len = 2;
        upstream_parse_poll(UPSTREAM_FLAVOR_V1, &a, &p);
        assert_int_equal(p.state, UPSTREAM_TASK_UNREADABLE);
}

/* The cost the official API reports ("credits"): a non-negative integer or its text, else
 * unknown (-1), in state answers and submission answers alike. */
static void test_credits(void **state)
{
        static const struct {
                const char *body;
                int64_t credits;
        } cases[] = {
            {"{\"state\":\"success\",\"credits\":4,\"creations\":[]}", 4},
            {"{\"state\":\"processing\",\"credits\":\"12\"}", 12},
            {"{\"state\":\"success\",\"credits\":0}", 0},
            {"{\"state\":\"success\"}", -1},
            {"{\"state\":\"success\",\"credits\":-3}", -1},
            {"{\"state\":\"success\",\"credits\":2.5}", -1},
            {"{\"state\":\"success\",\"credits\":\"lots\"}", -1},
            {"{\"state\":\"success\",\"credits\":null}", -1},
            {"{\"code\":0,\"data\":{\"state\":\"success\",\"credits\":7}}", 7},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct upstream_poll p;
                struct upstream_answer a = {.transport = UPSTREAM_TRANSPORT_OK,
                                            .status = 200,
                                            .body = cases[i].body,
                                            .body_len = strlen(cases[i].body)};
                upstream_parse_poll(UPSTREAM_FLAVOR_ENT_V2, &a, &p);
                if (p.credits != cases[i].credits)
                        fail_msg("%s: credits %lld, expected %lld", cases[i].body,
                                 (long long)p.credits, (long long)cases[i].credits);
        }
        struct upstream_poll p;
        struct upstream_answer a = {.transport = UPSTREAM_TRANSPORT_CUT};
        upstream_parse_poll(UPSTREAM_FLAVOR_V1, &a, &p);
        assert_int_equal(p.credits, -1);

        const char *body = "{\"task_id\":\"81\",\"state\":\"created\",\"credits\":9}";
        struct upstream_result r;
        a = (struct upstream_answer){.transport = UPSTREAM_TRANSPORT_OK,
                                     .status = 200,
                                     .body = body,
                                     .body_len = strlen(body)};
        upstream_classify_submit(UPSTREAM_FLAVOR_ENT_V2, &a, &r);
        assert_int_equal(r.verdict, UPSTREAM_ACCEPTED);
        assert_int_equal(r.credits, 9);
        body = "{\"id\":\"81\",\"state\":\"queueing\"}";
        a.body = body;
        a.body_len = strlen(body);
        upstream_classify_submit(UPSTREAM_FLAVOR_V1, &a, &r);
        assert_int_equal(r.credits, -1);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_submit_body_is_the_seeds),
            cmocka_unit_test(test_submit_body_takes_the_jobs_duration),
            cmocka_unit_test(test_submit_body_escapes_like_json_c),
            cmocka_unit_test(test_poll_url_escapes),
            cmocka_unit_test(test_classification),
            cmocka_unit_test(test_credits),
            cmocka_unit_test(test_ent_v2_task_id),
            cmocka_unit_test(test_submit_body_with_callback),
            cmocka_unit_test(test_poll_parsing),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
