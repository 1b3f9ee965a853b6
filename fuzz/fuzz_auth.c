/* fuzz_auth.c: every signature verifier on arbitrary headers and bodies. The input is split into
 * header values and a body at NUL bytes; the first byte picks the scheme. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "auth.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *names[] = {"Authorization",     "X-Hub-Signature-256",   "webhook-id",
                              "webhook-timestamp", "webhook-signature",     "Date",
                              "x-request-nonce",   "X-HMAC-SIGNED-HEADERS", "X-HMAC-SIGNATURE",
                              "X-HMAC-ALGORITHM",  "X-HMAC-ACCESS-KEY"};
#define N_NAMES (sizeof(names) / sizeof(names[0]))

struct hdrs {
        char *values[N_NAMES];
};

static const char *get_header(void *userdata, const char *name)
{
        struct hdrs *h = userdata;
        for (size_t i = 0; i < N_NAMES; i++)
                if (strcasecmp(names[i], name) == 0)
                        return h->values[i];
        return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static char s1[] = "It's a Secret to Everybody",
                    s2[] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        static char hdr[] = "X-Hub-Signature-256";
        if (size < 1)
                return 0;
        struct config cfg = {0};
        cfg.auth_scheme = (enum auth_scheme)(data[0] % 5);
        cfg.secrets[0] =
            (struct secret){cfg.auth_scheme == AUTH_SCHEME_STANDARD_WEBHOOKS ? s2 : s1,
                            strlen(cfg.auth_scheme == AUTH_SCHEME_STANDARD_WEBHOOKS ? s2 : s1)};
        cfg.n_secrets = 1;
        cfg.auth_header = hdr;
        cfg.auth_tolerance = 300 * USEC_PER_SEC;

        /* Copy so every piece is NUL-terminated. */
        char *buf = strndup_safe((const char *)data + 1, size - 1);
        if (!buf)
                return 0;
        struct hdrs h = {0};
        char *p = buf, *end = buf + (size - 1);
        for (size_t i = 0; i < N_NAMES && p < end; i++) {
                h.values[i] = p;
                p += strlen(p) + 1;
        }
        const uint8_t *body = p < end ? (const uint8_t *)p : (const uint8_t *)"";
        size_t body_len = p < end ? (size_t)(end - p) : 0;
        struct auth_request req = {
            .method = "POST",
            .path = "/hooks/vidu",
            .query = "a=1",
            .header = get_header,
            .userdata = &h,
            .body = body,
            .body_len = body_len,
            .now_usec = 1614265330ULL * USEC_PER_SEC,
        };
        struct auth_outcome out = {0};
        if (auth_verify(&cfg, &req, &out) >= 0)
                auth_outcome_clear(&out);
        free(buf);
        return 0;
}
