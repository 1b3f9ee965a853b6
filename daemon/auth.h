/* auth.h: verifies a webhook sender on the raw request (pure: no I/O, no logging, no clock). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct auth_request {
        const char *method; /* "POST" */
        const char *path;   /* path as received, without the query, e.g. "/hooks/vidu" */
        const char *query;  /* raw query string without '?', NULL or "" when none */
        /* Returns the value of a request header (case-insensitive name), or NULL. */
        const char *(*header)(void *userdata, const char *name);
        void *userdata;
        const uint8_t *body;
        size_t body_len;
        uint64_t now_usec; /* CLOCK_REALTIME */
};

enum auth_result {
        AUTH_OK,
        AUTH_MISSING,       /* credentials or signature headers absent */
        AUTH_MALFORMED,     /* present but unparseable */
        AUTH_BAD_SIGNATURE, /* no configured secret matches */
        AUTH_STALE,         /* timestamp or Date outside the tolerance */
};

struct auth_outcome {
        enum auth_result result;
        const char *reason; /* static, safe to log: never contains a secret */
        /* For replay protection, set on AUTH_OK by standard-webhooks (webhook-id) and vidu (nonce):
         * a key unique to this delivery, and until when it must be remembered. Caller frees. */
        char *replay_key;
        uint64_t replay_until_usec;
};

/* Verifies req against cfg->auth_scheme with every configured secret (rotation). Every
 * comparison is constant-time. AUTH_SCHEME_NONE always passes. Returns 0 and fills *out, or
 * -ENOMEM. */
int auth_verify(const struct config *cfg, const struct auth_request *req, struct auth_outcome *out);

void auth_outcome_clear(struct auth_outcome *o);

/* Building blocks, exposed for tests and fuzzers. */
/* Lower-case hex HMAC-SHA256 with "sha256=" prefix into out (size >= 72). */
int auth_hmac_sha256_hex(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                         char *out, size_t out_len);
/* Standard Webhooks: "v1,<base64>" for (id, timestamp, body) with a "whsec_..." secret. */
int auth_standard_webhooks_sign(const char *secret, const char *id, const char *timestamp,
                                const uint8_t *body, size_t body_len, char *out, size_t out_len);
/* Vidu callback: base64 signature for the documented string-to-sign. signed_headers is the
 * X-HMAC-SIGNED-HEADERS value ("Date;x-request-nonce"). */
int auth_vidu_sign(const char *key, size_t key_len, const char *method, const char *path,
                   const char *query, const char *date, const char *signed_headers,
                   const char *(*header)(void *userdata, const char *name), void *userdata,
                   char *out, size_t out_len);
