/* auth.c: webhook sender verification on the raw request: bearer token, GitHub-style HMAC,
 * Standard Webhooks and the Vidu callback signature. Pure: no I/O, no logging, no clock reads;
 * every comparison of secret material is constant-time. */
#include "auth.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "backoff.h"
#include "util.h"

#define REPLAY_KEY_MAX 256
#define SIG_MAX        128 /* decoded signature bytes we accept */

void auth_outcome_clear(struct auth_outcome *o)
{
        if (!o)
                return;
        free(o->replay_key);
        o->replay_key = NULL;
}

static int hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                       uint8_t out[32])
{
        unsigned int n = 0;
        if (!HMAC(EVP_sha256(), key, (int)key_len, msg, msg_len, out, &n) || n != 32)
                return -EIO;
        return 0;
}

int auth_hmac_sha256_hex(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                         char *out, size_t out_len)
{
        static const char hex[] = "0123456789abcdef";
        uint8_t mac[32];
        if (out_len < 7 + 64 + 1)
                return -ENOBUFS;
        int r = hmac_sha256(key, key_len, msg, msg_len, mac);
        if (r < 0)
                return r;
        memcpy(out, "sha256=", 7);
        for (size_t i = 0; i < 32; i++) {
                out[7 + 2 * i] = hex[mac[i] >> 4];
                out[8 + 2 * i] = hex[mac[i] & 15];
        }
        out[71] = 0;
        return 0;
}

/* Decodes standard base64 (with padding); returns the length or -EINVAL. */
static int base64_decode(const char *in, size_t len, uint8_t *out, size_t out_len)
{
        if (len == 0 || len % 4 != 0 || len / 4 * 3 > out_len + 2)
                return -EINVAL;
        uint8_t tmp[SIG_MAX + 4];
        if (len / 4 * 3 > sizeof(tmp))
                return -EINVAL;
        int n = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)len);
        if (n < 0)
                return -EINVAL;
        if (in[len - 1] == '=')
                n--;
        if (in[len - 2] == '=')
                n--;
        if ((size_t)n > out_len)
                return -EINVAL;
        memcpy(out, tmp, (size_t)n);
        return n;
}

static void base64_encode(const uint8_t *in, size_t len, char *out)
{
        EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

/* --- token ------------------------------------------------------------------------------- */

static void verify_token(const struct config *cfg, const struct auth_request *req,
                         struct auth_outcome *out)
{
        const char *h = req->header(req->userdata, "Authorization");
        if (!h) {
                *out = (struct auth_outcome){.result = AUTH_MISSING,
                                             .reason = "Authorization header missing"};
                return;
        }
        if (strncasecmp(h, "Bearer ", 7) != 0) {
                *out = (struct auth_outcome){.result = AUTH_MALFORMED,
                                             .reason = "Authorization is not a Bearer token"};
                return;
        }
        const char *tok = h + 7;
        while (*tok == ' ')
                tok++;
        bool ok = false;
        for (size_t i = 0; i < cfg->n_secrets; i++)
                ok |= memeq_consttime(tok, strlen(tok), cfg->secrets[i].value, cfg->secrets[i].len);
        *out = ok ? (struct auth_outcome){.result = AUTH_OK}
                  : (struct auth_outcome){.result = AUTH_BAD_SIGNATURE,
                                          .reason = "bearer token does not match"};
}

/* --- hmac-sha256 (GitHub style) ---------------------------------------------------------- */

static int verify_hmac(const struct config *cfg, const struct auth_request *req,
                       struct auth_outcome *out)
{
        const char *name = isempty(cfg->auth_header) ? "X-Hub-Signature-256" : cfg->auth_header;
        const char *h = req->header(req->userdata, name);
        char got[80], want[80];
        if (!h) {
                *out = (struct auth_outcome){.result = AUTH_MISSING,
                                             .reason = "signature header missing"};
                return 0;
        }
        size_t n = strlen(h);
        if (n != 71 || strncasecmp(h, "sha256=", 7) != 0) {
                *out = (struct auth_outcome){.result = AUTH_MALFORMED,
                                             .reason = "signature is not sha256=<64 hex digits>"};
                return 0;
        }
        for (size_t i = 0; i < n; i++)
                got[i] = (char)tolower((unsigned char)h[i]);
        got[n] = 0;
        bool ok = false;
        for (size_t i = 0; i < cfg->n_secrets; i++) {
                int r = auth_hmac_sha256_hex((const uint8_t *)cfg->secrets[i].value,
                                             cfg->secrets[i].len, req->body, req->body_len, want,
                                             sizeof(want));
                if (r < 0)
                        return r;
                ok |= memeq_consttime(got, 71, want, 71);
        }
        explicit_bzero(want, sizeof(want));
        *out = ok ? (struct auth_outcome){.result = AUTH_OK}
                  : (struct auth_outcome){.result = AUTH_BAD_SIGNATURE,
                                          .reason = "HMAC signature does not match the body"};
        return 0;
}

/* --- standard webhooks ------------------------------------------------------------------- */

static int sw_key(const char *secret, uint8_t *key, size_t *key_len)
{
        if (strncmp(secret, "whsec_", 6) != 0)
                return -EINVAL;
        int n = base64_decode(secret + 6, strlen(secret + 6), key, *key_len);
        if (n <= 0)
                return -EINVAL;
        *key_len = (size_t)n;
        return 0;
}

/* The MAC of "{id}.{timestamp}.{body}". */
static int sw_mac(const uint8_t *key, size_t key_len, const char *id, const char *ts,
                  const uint8_t *body, size_t body_len, uint8_t mac[32])
{
        size_t idl = strlen(id), tsl = strlen(ts);
        size_t len = idl + 1 + tsl + 1 + body_len;
        uint8_t *msg = malloc(len ? len : 1);
        if (!msg)
                return -ENOMEM;
        memcpy(msg, id, idl);
        msg[idl] = '.';
        memcpy(msg + idl + 1, ts, tsl);
        msg[idl + 1 + tsl] = '.';
        memcpy(msg + idl + tsl + 2, body, body_len);
        int r = hmac_sha256(key, key_len, msg, len, mac);
        free(msg);
        return r;
}

int auth_standard_webhooks_sign(const char *secret, const char *id, const char *timestamp,
                                const uint8_t *body, size_t body_len, char *out, size_t out_len)
{
        uint8_t key[SIG_MAX], mac[32];
        size_t key_len = sizeof(key);
        if (out_len < 3 + 45)
                return -ENOBUFS;
        if (sw_key(secret, key, &key_len) < 0)
                return -EINVAL;
        int r = sw_mac(key, key_len, id, timestamp, body, body_len, mac);
        explicit_bzero(key, sizeof(key));
        if (r < 0)
                return r;
        memcpy(out, "v1,", 3);
        base64_encode(mac, 32, out + 3);
        return 0;
}

static bool all_digits(const char *s)
{
        if (isempty(s) || strlen(s) > 18)
                return false;
        for (; *s; s++)
                if (!isdigit((unsigned char)*s))
                        return false;
        return true;
}

static int verify_standard(const struct config *cfg, const struct auth_request *req,
                           struct auth_outcome *out)
{
        const char *id = req->header(req->userdata, "webhook-id");
        const char *ts = req->header(req->userdata, "webhook-timestamp");
        const char *sigs = req->header(req->userdata, "webhook-signature");
        if (!id || !ts || !sigs) {
                *out = (struct auth_outcome){
                    .result = AUTH_MISSING,
                    .reason = "webhook-id, webhook-timestamp or webhook-signature missing"};
                return 0;
        }
        if (!*id || strlen(id) > REPLAY_KEY_MAX || !all_digits(ts)) {
                *out = (struct auth_outcome){.result = AUTH_MALFORMED,
                                             .reason = "webhook-id or webhook-timestamp malformed"};
                return 0;
        }
        int64_t t = strtoll(ts, NULL, 10);
        int64_t now = (int64_t)(req->now_usec / USEC_PER_SEC);
        int64_t tol = (int64_t)(cfg->auth_tolerance / USEC_PER_SEC);
        if (t < now - tol || t > now + tol) {
                *out = (struct auth_outcome){.result = AUTH_STALE,
                                             .reason = "webhook-timestamp outside the tolerance"};
                return 0;
        }
        uint8_t macs[CONFIG_MAX_SECRETS][32];
        size_t n_macs = 0;
        for (size_t i = 0; i < cfg->n_secrets; i++) {
                uint8_t key[SIG_MAX];
                size_t key_len = sizeof(key);
                if (sw_key(cfg->secrets[i].value, key, &key_len) < 0)
                        continue;
                int r = sw_mac(key, key_len, id, ts, req->body, req->body_len, macs[n_macs]);
                explicit_bzero(key, sizeof(key));
                if (r < 0)
                        return r;
                n_macs++;
        }
        bool ok = false;
        /* Space-separated "v1,<base64>" entries; other versions are skipped. */
        for (const char *p = sigs; *p;) {
                p += strspn(p, " ");
                size_t len = strcspn(p, " ");
                if (len > 3 && strncmp(p, "v1,", 3) == 0) {
                        uint8_t sig[SIG_MAX];
                        int n = base64_decode(p + 3, len - 3, sig, sizeof(sig));
                        for (size_t i = 0; n > 0 && i < n_macs; i++)
                                ok |= memeq_consttime(sig, (size_t)n, macs[i], 32);
                }
                p += len;
        }
        explicit_bzero(macs, sizeof(macs));
        if (!ok) {
                *out = (struct auth_outcome){.result = AUTH_BAD_SIGNATURE,
                                             .reason = "no webhook-signature matches"};
                return 0;
        }
        *out = (struct auth_outcome){.result = AUTH_OK};
        if (asprintf(&out->replay_key, "swh:%s", id) < 0) {
                out->replay_key = NULL;
                return -ENOMEM;
        }
        out->replay_until_usec = (uint64_t)(t + tol) * USEC_PER_SEC;
        return 0;
}

/* --- vidu callback signature ---------------------------------------------------------------- */

int auth_vidu_sign(const char *key, size_t key_len, const char *method, const char *path,
                   const char *query, const char *date, const char *signed_headers,
                   const char *(*header)(void *userdata, const char *name), void *userdata,
                   char *out, size_t out_len)
{
        char *s = NULL;
        size_t len = 0;
        uint8_t mac[32];
        if (out_len < 45)
                return -ENOBUFS;
        FILE *f = open_memstream(&s, &len);
        if (!f)
                return -ENOMEM;
        fprintf(f, "%s\n%s\n%s\nvidu\n%s\n", method, isempty(path) ? "/" : path, query ? query : "",
                date);
        /* One "Name:Value" line per signed header, in the listed order. */
        const char *p = signed_headers;
        int r = 0;
        while (*p) {
                size_t n = strcspn(p, ";");
                char name[128];
                if (n == 0 || n >= sizeof(name)) {
                        r = -EINVAL;
                        break;
                }
                memcpy(name, p, n);
                name[n] = 0;
                const char *v = header(userdata, name);
                if (!v) {
                        r = -ENOENT;
                        break;
                }
                fprintf(f, "%s:%s\n", name, v);
                p += n;
                if (*p == ';')
                        p++;
        }
        if (fclose(f) != 0 && r == 0)
                r = -ENOMEM;
        if (r == 0)
                r = hmac_sha256((const uint8_t *)key, key_len, (const uint8_t *)s, len, mac);
        free(s);
        if (r < 0)
                return r;
        base64_encode(mac, 32, out);
        return 0;
}

static bool list_has(const char *list, const char *name)
{
        size_t nl = strlen(name);
        for (const char *p = list; *p;) {
                size_t n = strcspn(p, ";");
                if (n == nl && strncasecmp(p, name, n) == 0)
                        return true;
                p += n;
                if (*p == ';')
                        p++;
        }
        return false;
}

static int verify_vidu(const struct config *cfg, const struct auth_request *req,
                       struct auth_outcome *out)
{
        const char *date = req->header(req->userdata, "Date");
        const char *nonce = req->header(req->userdata, "x-request-nonce");
        const char *signed_headers = req->header(req->userdata, "X-HMAC-SIGNED-HEADERS");
        const char *sig = req->header(req->userdata, "X-HMAC-SIGNATURE");
        const char *alg = req->header(req->userdata, "X-HMAC-ALGORITHM");
        if (!date || !nonce || !signed_headers || !sig) {
                *out = (struct auth_outcome){
                    .result = AUTH_MISSING,
                    .reason =
                        "Date, x-request-nonce, X-HMAC-SIGNED-HEADERS or X-HMAC-SIGNATURE missing"};
                return 0;
        }
        if ((alg && strcasecmp(alg, "hmac-sha256") != 0) || !*nonce ||
            strlen(nonce) > REPLAY_KEY_MAX || !list_has(signed_headers, "Date") ||
            !list_has(signed_headers, "x-request-nonce")) {
                *out = (struct auth_outcome){
                    .result = AUTH_MALFORMED,
                    .reason = "unsupported algorithm, or Date and x-request-nonce not signed"};
                return 0;
        }
        int64_t when;
        if (backoff_parse_http_date(date, &when) < 0) {
                *out = (struct auth_outcome){.result = AUTH_MALFORMED,
                                             .reason = "Date is not an HTTP date"};
                return 0;
        }
        int64_t now = (int64_t)(req->now_usec / USEC_PER_SEC);
        int64_t tol = (int64_t)(cfg->auth_tolerance / USEC_PER_SEC);
        if (when < now - tol || when > now + tol) {
                *out = (struct auth_outcome){.result = AUTH_STALE,
                                             .reason = "Date outside the tolerance"};
                return 0;
        }
        char *path = NULL;
        if (asprintf(&path, "%s%s", cfg->public_url_prefix ? cfg->public_url_prefix : "",
                     req->path ? req->path : "") < 0)
                return -ENOMEM;
        bool ok = false;
        int r = 0;
        for (size_t i = 0; i < cfg->n_secrets; i++) {
                char want[64];
                r = auth_vidu_sign(cfg->secrets[i].value, cfg->secrets[i].len, req->method, path,
                                   req->query, date, signed_headers, req->header, req->userdata,
                                   want, sizeof(want));
                if (r < 0)
                        break;
                ok |= memeq_consttime(sig, strlen(sig), want, strlen(want));
        }
        free(path);
        if (r == -ENOMEM)
                return r;
        if (r < 0) {
                *out = (struct auth_outcome){.result = AUTH_MALFORMED,
                                             .reason = "a signed header is missing"};
                return 0;
        }
        if (!ok) {
                *out = (struct auth_outcome){.result = AUTH_BAD_SIGNATURE,
                                             .reason = "X-HMAC-SIGNATURE does not match"};
                return 0;
        }
        *out = (struct auth_outcome){.result = AUTH_OK};
        if (asprintf(&out->replay_key, "vidu:%s", nonce) < 0) {
                out->replay_key = NULL;
                return -ENOMEM;
        }
        out->replay_until_usec = (uint64_t)(when + tol) * USEC_PER_SEC;
        return 0;
}

int auth_verify(const struct config *cfg, const struct auth_request *req, struct auth_outcome *out)
{
        memset(out, 0, sizeof(*out));
        switch (cfg->auth_scheme) {
        case AUTH_SCHEME_NONE:
                out->result = AUTH_OK;
                return 0;
        case AUTH_SCHEME_TOKEN:
                verify_token(cfg, req, out);
                return 0;
        case AUTH_SCHEME_HMAC_SHA256:
                return verify_hmac(cfg, req, out);
        case AUTH_SCHEME_STANDARD_WEBHOOKS:
                return verify_standard(cfg, req, out);
        case AUTH_SCHEME_VIDU:
                return verify_vidu(cfg, req, out);
        }
        *out = (struct auth_outcome){.result = AUTH_MALFORMED, .reason = "unknown scheme"};
        return 0;
}
