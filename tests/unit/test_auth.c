/* test_auth.c: every signature scheme against the published vectors, plus the ways each fails. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <cmocka.h>

#include "auth.h"
#include "util.h"

struct hdr {
        const char *name, *value;
};

struct req_ctx {
        struct hdr h[12];
};

static const char *get(void *u, const char *name)
{
        struct req_ctx *c = u;
        for (size_t i = 0; i < 12 && c->h[i].name; i++)
                if (strcasecmp(c->h[i].name, name) == 0)
                        return c->h[i].value;
        return NULL;
}

static struct config cfg_with(enum auth_scheme s, const char *secret1, const char *secret2)
{
        struct config c = {0};
        c.auth_scheme = s;
        c.secrets[0] = (struct secret){(char *)secret1, strlen(secret1)};
        c.n_secrets = 1;
        if (secret2) {
                c.secrets[1] = (struct secret){(char *)secret2, strlen(secret2)};
                c.n_secrets = 2;
        }
        c.auth_header = (char *)"X-Hub-Signature-256";
        c.auth_tolerance = 300 * USEC_PER_SEC;
        return c;
}

static enum auth_result verify(const struct config *c, struct req_ctx *ctx, const char *body,
                               uint64_t now_s, const char *path, const char *query, char **ret_key)
{
        struct auth_request req = {
            .method = "POST",
            .path = path ? path : "/hooks/vidu",
            .query = query,
            .header = get,
            .userdata = ctx,
            .body = (const uint8_t *)body,
            .body_len = strlen(body),
            .now_usec = now_s * USEC_PER_SEC,
        };
        struct auth_outcome o;
        assert_int_equal(auth_verify(c, &req, &o), 0);
        if (o.result != AUTH_OK)
                assert_non_null(o.reason);
        if (ret_key)
                *ret_key = o.replay_key ? strdup(o.replay_key) : NULL;
        auth_outcome_clear(&o);
        return o.result;
}

static void test_none(void **state)
{
        struct config c = {0};
        struct req_ctx ctx = {0};
        assert_int_equal(verify(&c, &ctx, "{}", 0, NULL, NULL, NULL), AUTH_OK);
}

static void test_token(void **state)
{
        struct config c = cfg_with(AUTH_SCHEME_TOKEN, "old-secret", "new-secret");
        struct req_ctx ok = {{{"Authorization", "Bearer new-secret"}}};
        struct req_ctx old = {{{"Authorization", "bearer old-secret"}}};
        struct req_ctx bad = {{{"Authorization", "Bearer new-secreT"}}};
        struct req_ctx basic = {{{"Authorization", "Basic Zm9vOmJhcg=="}}};
        struct req_ctx none = {0};
        assert_int_equal(verify(&c, &ok, "{}", 0, NULL, NULL, NULL), AUTH_OK);
        assert_int_equal(verify(&c, &old, "{}", 0, NULL, NULL, NULL), AUTH_OK);
        assert_int_equal(verify(&c, &bad, "{}", 0, NULL, NULL, NULL), AUTH_BAD_SIGNATURE);
        assert_int_equal(verify(&c, &basic, "{}", 0, NULL, NULL, NULL), AUTH_MALFORMED);
        assert_int_equal(verify(&c, &none, "{}", 0, NULL, NULL, NULL), AUTH_MISSING);
}

static void test_hmac_vector(void **state)
{
        char out[80];
        const char *secret = "It's a Secret to Everybody";
        assert_int_equal(auth_hmac_sha256_hex((const uint8_t *)secret, strlen(secret),
                                              (const uint8_t *)"Hello, World!", 13, out,
                                              sizeof(out)),
                         0);
        assert_string_equal(
            out, "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");

        struct config c = cfg_with(AUTH_SCHEME_HMAC_SHA256, "rotated-out", secret);
        struct req_ctx ok = {
            {{"X-Hub-Signature-256",
              "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}}};
        struct req_ctx upper = {
            {{"x-hub-signature-256",
              "SHA256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17"}}};
        struct req_ctx short_sig = {{{"X-Hub-Signature-256", "sha256=757107ea"}}};
        struct req_ctx none = {0};
        assert_int_equal(verify(&c, &ok, "Hello, World!", 0, NULL, NULL, NULL), AUTH_OK);
        assert_int_equal(verify(&c, &upper, "Hello, World!", 0, NULL, NULL, NULL), AUTH_OK);
        assert_int_equal(verify(&c, &ok, "Hello, World?", 0, NULL, NULL, NULL), AUTH_BAD_SIGNATURE);
        assert_int_equal(verify(&c, &short_sig, "Hello, World!", 0, NULL, NULL, NULL),
                         AUTH_MALFORMED);
        assert_int_equal(verify(&c, &none, "Hello, World!", 0, NULL, NULL, NULL), AUTH_MISSING);
        /* A configurable header name. */
        c.auth_header = (char *)"X-Signature";
        struct req_ctx custom = {
            {{"X-Signature",
              "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"}}};
        assert_int_equal(verify(&c, &custom, "Hello, World!", 0, NULL, NULL, NULL), AUTH_OK);
        assert_int_equal(verify(&c, &ok, "Hello, World!", 0, NULL, NULL, NULL), AUTH_MISSING);
}

#define SW_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SW_ID     "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define SW_TS     1614265330
#define SW_BODY   "{\"test\": 2432232314}"
#define SW_SIG    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

static void test_standard_webhooks_vector(void **state)
{
        char out[64];
        assert_int_equal(auth_standard_webhooks_sign(SW_SECRET, SW_ID, "1614265330",
                                                     (const uint8_t *)SW_BODY, strlen(SW_BODY), out,
                                                     sizeof(out)),
                         0);
        assert_string_equal(out, SW_SIG);

        struct config c = cfg_with(AUTH_SCHEME_STANDARD_WEBHOOKS,
                                   "whsec_"
                                   "c2Vjb25kLXNlY3JldC1rZXk=",
                                   SW_SECRET);
        struct req_ctx ok = {{{"webhook-id", SW_ID},
                              {"webhook-timestamp", "1614265330"},
                              {"webhook-signature", "v1a,abc v1,AAAA " SW_SIG}}};
        char *key = NULL;
        assert_int_equal(verify(&c, &ok, SW_BODY, SW_TS, NULL, NULL, &key), AUTH_OK);
        assert_string_equal(key, "swh:" SW_ID);
        free(key);
        /* Tolerance edges: exactly 5 minutes off passes, one second more does not. */
        assert_int_equal(verify(&c, &ok, SW_BODY, SW_TS + 300, NULL, NULL, NULL), AUTH_OK);
        assert_int_equal(verify(&c, &ok, SW_BODY, SW_TS - 300, NULL, NULL, NULL), AUTH_OK);
        assert_int_equal(verify(&c, &ok, SW_BODY, SW_TS + 301, NULL, NULL, NULL), AUTH_STALE);
        assert_int_equal(verify(&c, &ok, SW_BODY, SW_TS - 301, NULL, NULL, NULL), AUTH_STALE);
        assert_int_equal(verify(&c, &ok, "{\"test\": 2432232315}", SW_TS, NULL, NULL, NULL),
                         AUTH_BAD_SIGNATURE);
        struct req_ctx missing = {{{"webhook-id", SW_ID}, {"webhook-signature", SW_SIG}}};
        assert_int_equal(verify(&c, &missing, SW_BODY, SW_TS, NULL, NULL, NULL), AUTH_MISSING);
        struct req_ctx badts = {{{"webhook-id", SW_ID},
                                 {"webhook-timestamp", "16142x5330"},
                                 {"webhook-signature", SW_SIG}}};
        assert_int_equal(verify(&c, &badts, SW_BODY, SW_TS, NULL, NULL, NULL), AUTH_MALFORMED);
        struct req_ctx garbage = {{{"webhook-id", SW_ID},
                                   {"webhook-timestamp", "1614265330"},
                                   {"webhook-signature", "v1,!!!!"}}};
        assert_int_equal(verify(&c, &garbage, SW_BODY, SW_TS, NULL, NULL, NULL),
                         AUTH_BAD_SIGNATURE);
        /* Only the rotated-out secret configured: no match. */
        struct config old = cfg_with(AUTH_SCHEME_STANDARD_WEBHOOKS,
                                     "whsec_"
                                     "c2Vjb25kLXNlY3JldC1rZXk=",
                                     NULL);
        assert_int_equal(verify(&old, &ok, SW_BODY, SW_TS, NULL, NULL, NULL), AUTH_BAD_SIGNATURE);
}

#define VD_DATE  "Tue, 06 May 2025 12:09:42 GMT"
#define VD_NONCE "123e4567-e89b-12d3-a456-426614174000"
#define VD_SIG   "L99algINOfjgx5vOWvPCuEctxyIgCCEnEwAO6Ys/2NU="
#define VD_NOW   1746533382 /* the Date above */

static void test_vidu_vector(void **state)
{
        struct req_ctx ctx = {{{"Date", VD_DATE},
                               {"x-request-nonce", VD_NONCE},
                               {"X-HMAC-SIGNED-HEADERS", "Date;x-request-nonce"},
                               {"X-HMAC-SIGNATURE", VD_SIG},
                               {"X-HMAC-ALGORITHM", "hmac-sha256"},
                               {"X-HMAC-ACCESS-KEY", "vidu"}}};
        char out[64];
        assert_int_equal(auth_vidu_sign("test-api-key", 12, "POST", "/vidu/callback",
                                        "name=james&age=36", VD_DATE, "Date;x-request-nonce", get,
                                        &ctx, out, sizeof(out)),
                         0);
        assert_string_equal(out, VD_SIG);

        struct config c = cfg_with(AUTH_SCHEME_VIDU, "another-key", "test-api-key");
        char *key = NULL;
        assert_int_equal(
            verify(&c, &ctx, "{}", VD_NOW, "/vidu/callback", "name=james&age=36", &key), AUTH_OK);
        assert_string_equal(key, "vidu:" VD_NONCE);
        free(key);
        /* Path and query as received: any change breaks the signature. */
        assert_int_equal(
            verify(&c, &ctx, "{}", VD_NOW, "/vidu/callback", "name=james&age=37", NULL),
            AUTH_BAD_SIGNATURE);
        assert_int_equal(verify(&c, &ctx, "{}", VD_NOW, "/callback", "name=james&age=36", NULL),
                         AUTH_BAD_SIGNATURE);
        /* A proxy stripped "/vidu": the configured public prefix restores what was signed. */
        c.public_url_prefix = (char *)"/vidu";
        assert_int_equal(verify(&c, &ctx, "{}", VD_NOW, "/callback", "name=james&age=36", NULL),
                         AUTH_OK);
        c.public_url_prefix = NULL;
        /* Date skew. */
        assert_int_equal(
            verify(&c, &ctx, "{}", VD_NOW + 301, "/vidu/callback", "name=james&age=36", NULL),
            AUTH_STALE);
        /* A tampered signed header. */
        ctx.h[1].value = "123e4567-e89b-12d3-a456-426614174001";
        assert_int_equal(
            verify(&c, &ctx, "{}", VD_NOW, "/vidu/callback", "name=james&age=36", NULL),
            AUTH_BAD_SIGNATURE);
        ctx.h[1].value = VD_NONCE;
        /* The nonce must be among the signed headers, or replay protection means nothing. */
        ctx.h[2].value = "Date";
        assert_int_equal(
            verify(&c, &ctx, "{}", VD_NOW, "/vidu/callback", "name=james&age=36", NULL),
            AUTH_MALFORMED);
        ctx.h[2].value = "Date;x-request-nonce";
        ctx.h[4].value = "hmac-sha1";
        assert_int_equal(
            verify(&c, &ctx, "{}", VD_NOW, "/vidu/callback", "name=james&age=36", NULL),
            AUTH_MALFORMED);
        struct req_ctx none = {0};
        assert_int_equal(verify(&c, &none, "{}", VD_NOW, "/vidu/callback", NULL, NULL),
                         AUTH_MISSING);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_none),        cmocka_unit_test(test_token),
            cmocka_unit_test(test_hmac_vector), cmocka_unit_test(test_standard_webhooks_vector),
            cmocka_unit_test(test_vidu_vector),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
