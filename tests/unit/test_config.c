/* test_config.c: every key parsed, defaults, every kind of error with its FILE:LINE, conf.d
 * order, environment overrides, secrets from files and credentials, a dump that never shows
 * a secret, and the key table behind them all. */
#include <ctype.h>
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>
#include <cmocka.h>

#include "config.h"
#include "event.h"
#include "util.h"

extern char **environ;

static char dir[64];
static char main_path[128];

static const char *minimal = "[upstream]\nbase_url = http://127.0.0.1:9/\napi_key = k3y\n";

/* Nothing from the environment of whoever runs the tests may leak into a load. */
static void clean_environment(void)
{
        unsetenv("CREDENTIALS_DIRECTORY");
        unsetenv("STATE_DIRECTORY");
        for (;;) {
                char name[256] = "";
                for (char **e = environ; e && *e; e++)
                        if (strncmp(*e, "VIDU_UPSCALED_", 14) == 0) {
                                snprintf(name, sizeof(name), "%.*s", (int)strcspn(*e, "="), *e);
                                break;
                        }
                if (!name[0])
                        break;
                unsetenv(name);
        }
}

static int setup(void **state)
{
        clean_environment();
        strcpy(dir, "/tmp/vidu-config-test-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(main_path, sizeof(main_path), "%s/main.conf", dir);
        return 0;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        return remove(path);
}

static int teardown(void **state)
{
        clean_environment();
        return nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : -1;
}

/* Writes dir/name (making one level of directory); returns its path, to be freed. */
static char *write_file(const char *name, const char *text)
{
        char *path = NULL;
        assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
        char *slash = strrchr(path, '/');
        *slash = 0;
        (void)mkdir(path, 0700);
        *slash = '/';
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        assert_int_equal(fclose(f), 0);
        return path;
}

static void write_main(const char *text)
{
        free(write_file("main.conf", text));
}

static struct config *load_ok(const char *text)
{
        struct config *c = NULL;
        struct config_errors e = {0};
        write_main(text);
        int r = config_load(main_path, &c, &e);
        if (r < 0)
                fail_msg("config_load failed (%d): %s", r, e.n ? e.lines[0] : "no message");
        assert_int_equal(e.n, 0);
        assert_non_null(c);
        return c;
}

/* Loads text as the main file; expects failure with exactly n errors, left in *e. */
static void load_bad(const char *text, size_t n, struct config_errors *e)
{
        struct config *c = NULL;
        write_main(text);
        int r = config_load(main_path, &c, e);
        if (r != -EINVAL)
                fail_msg("config_load returned %d, not -EINVAL, for:\n%s", r, text);
        assert_null(c);
        if (e->n != n) {
                for (size_t i = 0; i < e->n; i++)
                        print_message("  error: %s\n", e->lines[i]);
                fail_msg("expected %zu errors, got %zu", n, e->n);
        }
}

/* Error i starts with the main file's "PATH:line: " (line > 0) or with "configuration: "
 * (line == 0), and contains needle. */
static void assert_error(const struct config_errors *e, size_t i, int line, const char *needle)
{
        char prefix[300];
        assert_true(i < e->n);
        if (line > 0)
                snprintf(prefix, sizeof(prefix), "%s:%d: ", main_path, line);
        else
                snprintf(prefix, sizeof(prefix), "configuration: ");
        if (strncmp(e->lines[i], prefix, strlen(prefix)) != 0 || !strstr(e->lines[i], needle))
                fail_msg("error %zu is '%s', expected '%s...%s...'", i, e->lines[i], prefix,
                         needle);
}

/* minimal + extra, expecting exactly one error at line (of the whole text) containing needle. */
static void expect_one_error(const char *extra, int line, const char *needle)
{
        char text[2048];
        struct config_errors e = {0};
        snprintf(text, sizeof(text), "%s%s", minimal, extra);
        load_bad(text, 1, &e);
        assert_error(&e, 0, line, needle);
        config_errors_clear(&e);
}

/* minimal + extra must load. */
static void expect_ok(const char *extra)
{
        char text[2048];
        snprintf(text, sizeof(text), "%s%s", minimal, extra);
        config_free(load_ok(text));
}

static void test_defaults(void **state)
{
        struct config *c = load_ok(minimal);
        assert_string_equal(c->listen, "127.0.0.1:8080");
        assert_string_equal(c->webhook_path, "/hooks/vidu");
        assert_int_equal(c->max_body, 1024 * 1024);
        assert_int_equal(c->max_header, 16 * 1024);
        assert_int_equal(c->max_header_lines, 100);
        assert_int_equal(c->max_connections, 512);
        assert_int_equal(c->max_per_ip, 64);
        assert_int_equal(c->idle_timeout, 30 * USEC_PER_SEC);
        assert_int_equal(c->request_timeout, 60 * USEC_PER_SEC);
        assert_null(c->allow_from);
        assert_null(c->tls_cert);
        assert_null(c->tls_key);
        assert_int_equal(c->drain_timeout, 10 * USEC_PER_SEC);
        assert_int_equal(c->max_json_depth, 32);
        assert_int_equal(c->max_tasks, 1000);
        assert_int_equal(c->max_creations, 10000);
        assert_int_equal(c->auth_scheme, AUTH_SCHEME_NONE);
        assert_int_equal(c->n_secrets, 0);
        assert_string_equal(c->auth_header, "X-Hub-Signature-256");
        assert_int_equal(c->auth_tolerance, 5 * 60 * USEC_PER_SEC);
        assert_null(c->public_url_prefix);
        assert_string_equal(c->base_url, "http://127.0.0.1:9"); /* trailing '/' stripped */
        assert_string_equal(c->api_key.value, "k3y");
        assert_int_equal(c->api_key.len, 3);
        assert_string_equal(c->auth_word, "Bearer");
        assert_int_equal(c->flavor, UPSTREAM_FLAVOR_V1);
        assert_int_equal(c->timeout, 30 * USEC_PER_SEC);
        assert_int_equal(c->connect_timeout, 10 * USEC_PER_SEC);
        assert_int_equal(c->concurrency, 8);
        assert_int_equal(c->poll_interval, 30 * USEC_PER_SEC);
        assert_string_equal(c->model, "stable");
        assert_int_equal(c->duration, 4);
        assert_string_equal(c->resolution, "1080p");
        assert_string_equal(c->store_path, "./ledger.db");
        assert_true(c->synchronous_full);
        assert_int_equal(c->max_attempts, 10);
        assert_int_equal(c->initial_delay, 5 * USEC_PER_SEC);
        assert_int_equal(c->max_delay, 3600 * USEC_PER_SEC);
        assert_int_equal(c->uncertain, UNCERTAIN_HOLD);
        assert_int_equal(c->log_level, LOG_INFO);
        assert_int_equal(c->fold_accepted, 1);
        config_free(c);

        /* systemd's StateDirectory= may list several; the first one holds the ledger. */
        setenv("STATE_DIRECTORY", "/var/lib/vidu-upscaled:/var/lib/other", 1);
        c = load_ok(minimal);
        assert_string_equal(c->store_path, "/var/lib/vidu-upscaled/ledger.db");
        config_free(c);
        setenv("STATE_DIRECTORY", "/var/lib/one", 1);
        /* An empty store.path is the same as none. */
        c = load_ok("[upstream]\nbase_url = http://x\napi_key = k\n[store]\npath =\n");
        assert_string_equal(c->store_path, "/var/lib/one/ledger.db");
        config_free(c);
        unsetenv("STATE_DIRECTORY");
}

static void test_every_key(void **state)
{
        struct config *c = load_ok("[server]\n"
                                   "listen = [::1]:9000\n"
                                   "webhook_path = /in\n"
                                   "max_body = 64K\n"
                                   "max_header = 8K\n"
                                   "max_connections = 10\n"
                                   "max_per_ip = 2\n"
                                   "idle_timeout = 5s\n"
                                   "request_timeout = 7s\n"
                                   "allow_from = 10.0.0.0/8, ::1 192.168.1.7\n"
                                   "tls_cert = /c.pem\n"
                                   "tls_key = /k.pem\n"
                                   "drain_timeout = 3s\n"
                                   "[limits]\n"
                                   "max_json_depth = 8\n"
                                   "max_tasks = 5\n"
                                   "max_creations = 6\n"
                                   "[auth]\n"
                                   "scheme = token\n"
                                   "secret = one\n"
                                   "secret = two\n"
                                   "header = X-Sig\n"
                                   "tolerance = 1m\n"
                                   "public_url_prefix = /p/\n"
                                   "[upstream]\n"
                                   "base_url = https://gw.example/api//\n"
                                   "api_key = k\n"
                                   "auth_scheme = Token\n"
                                   "flavor = ent-v2\n"
                                   "timeout = 2s\n"
                                   "connect_timeout = 1s\n"
                                   "concurrency = 3\n"
                                   "poll_interval = 500ms\n"
                                   "[upscale]\n"
                                   "model = fast\n"
                                   "duration = 8\n"
                                   "resolution = 4K\n"
                                   "[store]\n"
                                   "path = /tmp/l.db\n"
                                   "synchronous = normal\n"
                                   "[retry]\n"
                                   "max_attempts = 4\n"
                                   "initial_delay = 200ms\n"
                                   "max_delay = 2m\n"
                                   "uncertain = resubmit\n"
                                   "[log]\n"
                                   "level = debug\n"
                                   "fold_accepted = no\n");
        assert_string_equal(c->listen, "[::1]:9000");
        assert_string_equal(c->webhook_path, "/in");
        assert_int_equal(c->max_body, 65536);
        assert_int_equal(c->max_header, 8192);
        assert_int_equal(c->max_connections, 10);
        assert_int_equal(c->max_per_ip, 2);
        assert_int_equal(c->idle_timeout, 5 * USEC_PER_SEC);
        assert_int_equal(c->request_timeout, 7 * USEC_PER_SEC);
        assert_string_equal(c->allow_from, "10.0.0.0/8, ::1 192.168.1.7");
        assert_string_equal(c->tls_cert, "/c.pem");
        assert_string_equal(c->tls_key, "/k.pem");
        assert_int_equal(c->drain_timeout, 3 * USEC_PER_SEC);
        assert_int_equal(c->max_json_depth, 8);
        assert_int_equal(c->max_tasks, 5);
        assert_int_equal(c->max_creations, 6);
        assert_int_equal(c->auth_scheme, AUTH_SCHEME_TOKEN);
        assert_int_equal(c->n_secrets, 2);
        assert_string_equal(c->secrets[0].value, "one");
        assert_int_equal(c->secrets[0].len, 3);
        assert_string_equal(c->secrets[1].value, "two");
        assert_string_equal(c->auth_header, "X-Sig");
        assert_int_equal(c->auth_tolerance, 60 * USEC_PER_SEC);
        assert_string_equal(c->public_url_prefix, "/p");
        assert_string_equal(c->base_url, "https://gw.example/api");
        assert_string_equal(c->api_key.value, "k");
        assert_string_equal(c->auth_word, "Token");
        assert_int_equal(c->flavor, UPSTREAM_FLAVOR_ENT_V2);
        assert_int_equal(c->timeout, 2 * USEC_PER_SEC);
        assert_int_equal(c->connect_timeout, USEC_PER_SEC);
        assert_int_equal(c->concurrency, 3);
        assert_int_equal(c->poll_interval, 500 * USEC_PER_MSEC);
        assert_string_equal(c->model, "fast");
        assert_int_equal(c->duration, 8);
        assert_string_equal(c->resolution, "4K");
        assert_string_equal(c->store_path, "/tmp/l.db");
        assert_false(c->synchronous_full);
        assert_int_equal(c->max_attempts, 4);
        assert_int_equal(c->initial_delay, 200 * USEC_PER_MSEC);
        assert_int_equal(c->max_delay, 120 * USEC_PER_SEC);
        assert_int_equal(c->uncertain, UNCERTAIN_RESUBMIT);
        assert_int_equal(c->log_level, LOG_DEBUG);
        assert_int_equal(c->fold_accepted, 0);
        config_free(c);

        /* The other enum values. */
        static const struct {
                const char *text;
                enum auth_scheme scheme;
        } schemes[] = {
            {"none", AUTH_SCHEME_NONE},
            {"token", AUTH_SCHEME_TOKEN},
            {"hmac-sha256", AUTH_SCHEME_HMAC_SHA256},
            {"standard-webhooks", AUTH_SCHEME_STANDARD_WEBHOOKS},
            {"vidu", AUTH_SCHEME_VIDU},
        };
        for (size_t i = 0; i < ELEMENTSOF(schemes); i++) {
                char text[256];
                snprintf(text, sizeof(text),
                         "%s[auth]\nscheme = %s\nsecret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
                         minimal, schemes[i].text);
                c = load_ok(text);
                assert_int_equal(c->auth_scheme, schemes[i].scheme);
                assert_string_equal(auth_scheme_to_string(c->auth_scheme), schemes[i].text);
                config_free(c);
        }
        static const struct {
                const char *text;
                int level;
        } levels[] = {{"debug", LOG_DEBUG},
                      {"info", LOG_INFO},
                      {"notice", LOG_NOTICE},
                      {"warning", LOG_WARNING},
                      {"err", LOG_ERR}};
        for (size_t i = 0; i < ELEMENTSOF(levels); i++) {
                char text[256];
                snprintf(text, sizeof(text), "%s[log]\nlevel = %s\n", minimal, levels[i].text);
                c = load_ok(text);
                assert_int_equal(c->log_level, levels[i].level);
                config_free(c);
        }
        const char *resolutions[] = {"1080p", "2K", "4K", "8K"};
        for (size_t i = 0; i < ELEMENTSOF(resolutions); i++) {
                char text[256];
                snprintf(text, sizeof(text), "%s[upscale]\nresolution = %s\n", minimal,
                         resolutions[i]);
                c = load_ok(text);
                assert_string_equal(c->resolution, resolutions[i]);
                config_free(c);
        }
        c = load_ok("[upstream]\nbase_url = http://x\napi_key = k\nflavor = v1\n"
                    "[store]\nsynchronous = full\n[retry]\nuncertain = hold\n");
        assert_int_equal(c->flavor, UPSTREAM_FLAVOR_V1);
        assert_true(c->synchronous_full);
        assert_int_equal(c->uncertain, UNCERTAIN_HOLD);
        config_free(c);

        /* Accepted listen forms. */
        expect_ok("[server]\nlisten = localhost:80\n");
        expect_ok("[server]\nlisten = 0.0.0.0:65535\n");
        expect_ok("[server]\nlisten = [::]:8080\n");
        expect_ok("[server]\nlisten = unix:/run/vidu-upscaled/http.sock\n");
        /* An empty list is no restriction. */
        expect_ok("[server]\nallow_from =\n");
}

static void test_to_string(void **state)
{
        assert_string_equal(auth_scheme_to_string(AUTH_SCHEME_HMAC_SHA256), "hmac-sha256");
        assert_string_equal(auth_scheme_to_string((enum auth_scheme)99), "unknown");
        assert_string_equal(upstream_flavor_to_string(UPSTREAM_FLAVOR_V1), "v1");
        assert_string_equal(upstream_flavor_to_string(UPSTREAM_FLAVOR_ENT_V2), "ent-v2");
        assert_string_equal(upstream_flavor_to_string((enum upstream_flavor) - 1), "unknown");
        assert_null(config_free(NULL));
        config_errors_clear(NULL);
}

/* Errors of one key, in the main file after minimal's three lines: the key is at line 5. */
static void test_value_errors(void **state)
{
        struct config_errors e = {0};
        char want[512];

        /* The message from the brief, byte for byte. */
        load_bad("[upstream]\nbase_url = http://x\napi_key = k\n\n\n\n\n\n\n\n\ntimeout = abc\n", 1,
                 &e);
        snprintf(want, sizeof(want),
                 "%s:12: upstream.timeout: invalid duration 'abc' (use e.g. 30s, 500ms, 5m, 1h)",
                 main_path);
        assert_string_equal(e.lines[0], want);
        config_errors_clear(&e);

        load_bad("[upstream]\nbase_url = http://x\napi_key = k\n[server]\nbogus = 1\n", 1, &e);
        snprintf(want, sizeof(want), "%s:5: unknown key 'bogus' in [server]", main_path);
        assert_string_equal(e.lines[0], want);
        config_errors_clear(&e);

        expect_one_error("[server]\nbase_url = http://y\n", 5,
                         "unknown key 'base_url' in [server] (it belongs in [upstream])");
        expect_one_error("[server]\nmax_body = lots\n", 5,
                         "server.max_body: invalid size 'lots' (use e.g. 512K, 1M");
        expect_one_error("[server]\nmax_body = 2G\n", 5,
                         "server.max_body: '2G' is out of range (use 1 to 1G)");
        expect_one_error("[server]\nmax_header = 100\n", 5,
                         "server.max_header: '100' is out of "
                         "range (use 1K to 1M)");
        expect_one_error("[upstream]\ntimeout = 5x\n", 5,
                         "upstream.timeout: invalid duration '5x'");
        expect_one_error("[upstream]\ntimeout = 2d\n", 5,
                         "upstream.timeout: '2d' is out of range (use 100ms to 1h)");
        expect_one_error("[upstream]\nconcurrency = 0\n", 5,
                         "upstream.concurrency: '0' is out of range (use 1 to 1024)");
        expect_one_error("[upstream]\nconcurrency = 1025\n", 5, "'1025' is out of range");
        expect_one_error("[upstream]\nconcurrency = 99999999999999999999999\n", 5,
                         "is out of range (use 1 to 1024)");
        expect_one_error("[upstream]\nconcurrency = -1\n", 5,
                         "upstream.concurrency: invalid number '-1' (use a whole number from 1 "
                         "to 1024)");
        expect_one_error("[upscale]\nduration = 3601\n", 5, "(use 1 to 3600)");
        expect_one_error("[retry]\nmax_attempts = 0\n", 5,
                         "retry.max_attempts: '0' is out of "
                         "range (use 1 to 1000)");
        expect_one_error("[upstream]\nflavor = v3\n", 5,
                         "upstream.flavor: unknown value 'v3' (use v1 or ent-v2)");
        expect_one_error("[auth]\nscheme = basic\n", 5,
                         "auth.scheme: unknown value 'basic' (use none, token, hmac-sha256, "
                         "standard-webhooks or vidu)");
        expect_one_error("[retry]\nuncertain = maybe\n", 5, "(use hold or resubmit)");
        expect_one_error("[log]\nlevel = loud\n", 5,
                         "log.level: unknown value 'loud' (use debug, info, notice, warning or "
                         "err)");
        expect_one_error("[store]\nsynchronous = off\n", 5, "(use full or normal)");
        expect_one_error("[log]\nfold_accepted = true\n", 5,
                         "log.fold_accepted: unknown value 'true' (use no or yes)");
        expect_one_error("[upscale]\nresolution = 1080P\n", 5,
                         "upscale.resolution: unknown value '1080P' (use 1080p, 2K, 4K or 8K)");
        expect_one_error("[upscale]\nmodel =\n", 5, "upscale.model: must not be empty");
        expect_one_error("[auth]\nheader = X Sig\n", 5,
                         "auth.header: 'X Sig' is not a valid "
                         "HTTP token");
        expect_one_error("[upstream]\nauth_scheme = Bearer:\n", 5, "not a valid HTTP token");
        expect_one_error("[server]\nwebhook_path = hooks\n", 5,
                         "server.webhook_path: 'hooks' must be a URL path starting with '/'");
        expect_one_error("[server]\nwebhook_path = /a?b\n", 5, "without spaces, '?' or '#'");
        expect_one_error("[upstream]\nbase_url = ftp://x\n", 5,
                         "upstream.base_url: 'ftp://x' must start with http:// or https://");
        expect_one_error("[upstream]\nbase_url = https://\n", 5, "is not a URL with a host");
        expect_one_error("[auth]\npublic_url_prefix = api\n", 5,
                         "auth.public_url_prefix: 'api' must start with '/'");
        expect_one_error("[upstream]\napi_key = k\n\nnot ini at all\n", 7,
                         "syntax error: expected [section], key = value, or a comment");
        load_bad("scheme = token\n[upstream]\nbase_url = http://x\napi_key = k\n", 1, &e);
        assert_error(&e, 0, 1, "'scheme' is outside any section; put it under [auth]");
        config_errors_clear(&e);

        /* Listen addresses. */
        const char *bad_listen[] = {
            "localhost", "127.0.0.1",     "127.0.0.1:",    ":8080",       "::1:8080",
            "[::1]8080", "[::1]",         "[1.2.3.4]:80",  "[::1/64]:80", "1.2.3.4:0",
            "1.2.3.4:x", "1.2.3.4:65536", "unix:relative", "unix:",       "a b:80",
            "host_x:80", "[zz::1]:80",    "[]:80",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad_listen); i++) {
                char extra[128];
                snprintf(extra, sizeof(extra), "[server]\nlisten = %s\n", bad_listen[i]);
                char needle[128];
                snprintf(needle, sizeof(needle), "server.listen: invalid address '%s' (use",
                         bad_listen[i]);
                expect_one_error(extra, 5, needle);
        }
        char longunix[256] = "[server]\nlisten = unix:/";
        memset(longunix + strlen(longunix), 'a', 110);
        strcat(longunix, "\n");
        expect_one_error(longunix, 5, "server.listen: invalid address");

        /* CIDR lists: the bad entry is named. */
        expect_one_error("[server]\nallow_from = 10.0.0.0/8, 10.1\n", 5,
                         "server.allow_from: invalid address or CIDR '10.1' (use e.g.");
        expect_one_error("[server]\nallow_from = ::1 10.0.0.0/33\n", 5, "'10.0.0.0/33'");
        expect_one_error("[server]\nallow_from = fe80::/129\n", 5, "'fe80::/129'");
        expect_one_error("[server]\nallow_from = example.com\n", 5, "'example.com'");
}

static void test_cross_key_errors(void **state)
{
        struct config_errors e = {0};

        load_bad("[upstream]\napi_key = k\n", 1, &e);
        assert_error(&e, 0, 0, "upstream.base_url is required: set base_url = ");
        config_errors_clear(&e);
        /* Set empty somewhere: that is where it is named. */
        load_bad("[upstream]\napi_key = k\nbase_url =\n", 1, &e);
        assert_error(&e, 0, 3, "upstream.base_url is required");
        config_errors_clear(&e);

        load_bad("[upstream]\nbase_url = http://x\n", 1, &e);
        assert_error(&e, 0, 0,
                     "upstream: no API key: set api_key_file (or api_key) in "
                     "[upstream], or provide the systemd credential api-key");
        config_errors_clear(&e);
        load_bad("[upstream]\nbase_url = http://x\napi_key =\n", 1, &e);
        assert_error(&e, 0, 0, "no API key");
        config_errors_clear(&e);

        expect_one_error("[auth]\nscheme = hmac-sha256\n", 5,
                         "auth.scheme = hmac-sha256 needs a secret: set secret_file (or secret)");
        expect_one_error("[auth]\nscheme = token\n", 5, "auth.scheme = token needs a secret");
        expect_one_error("[auth]\nscheme = vidu\n", 5, "auth.scheme = vidu needs a secret");
        expect_one_error("[auth]\nsecret = \n", 5, "auth.secret: empty secret");

        /* standard-webhooks: whsec_ and base64, named at the last secret line. */
        const char *bad_whsec[] = {
            "plain",      "whsec_",     "whsec_abc",  "whsec_ab!d",
            "whsec_a=bc", "whsec_ab=c", "whsec_====", "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad_whsec); i++) {
                char extra[256];
                snprintf(extra, sizeof(extra), "[auth]\nscheme = standard-webhooks\nsecret = %s\n",
                         bad_whsec[i]);
                expect_one_error(extra, 6,
                                 "auth.secret: secret 1 is not whsec_ followed by base64, as "
                                 "standard-webhooks needs");
        }
        expect_one_error("[auth]\nscheme = standard-webhooks\n"
                         "secret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nsecret = whsec_no-pe\n",
                         7, "secret 2 is not whsec_");
        /* Too long for auth.c to use. */
        char extra[512] = "[auth]\nscheme = standard-webhooks\nsecret = whsec_";
        for (int i = 0; i < 44; i++)
                strcat(extra, "AAAA"); /* 132 bytes decoded */
        strcat(extra, "\n");
        expect_one_error(extra, 6, "secret 1 is longer than 128 bytes once decoded");
        expect_ok("[auth]\nscheme = standard-webhooks\n"
                  "secret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nsecret = whsec_YWJj\n"
                  "secret = whsec_YWI=\nsecret = whsec_YQ==\n");
        /* Other schemes take any secret. */
        expect_ok("[auth]\nscheme = hmac-sha256\nsecret = plain\n");

        expect_one_error("[server]\ntls_cert = /c.pem\n", 5,
                         "server.tls_cert and server.tls_key go together: set both or neither");
        expect_one_error("[server]\n\ntls_key = /k.pem\n", 6, "go together");

        expect_one_error("[retry]\ninitial_delay = 10s\nmax_delay = 5s\n", 6,
                         "retry.max_delay (5s) is shorter than retry.initial_delay (10s); raise "
                         "max_delay or lower initial_delay");
        /* Only initial_delay set: it is the one named. */
        expect_one_error("[retry]\ninitial_delay = 2h\n", 5, "retry.max_delay (1h) is shorter");
        expect_ok("[retry]\ninitial_delay = 1h\n");
}

static void test_several_errors_collected(void **state)
{
        struct config_errors e = {0};
        load_bad("[server]\n"           /* 1 */
                 "a = 1\n"              /* 2 */
                 "max_body = big\n"     /* 3 */
                 "[nosuch]\n"           /* 4 */
                 "x = 1\n"              /* 5: not reported again */
                 "y = 2\n"              /* 6 */
                 "[upstream]\n"         /* 7 */
                 "concurrency = x\n"    /* 8 */
                 "garbage\n"            /* 9 */
                 "timeout = 1y\n"       /* 10 */
                 "[retry]\n"            /* 11 */
                 "initial_delay = 1h\n" /* 12 */
                 "max_delay = 1m\n"     /* 13 */
                 "[server]\n"           /* 14 */
                 "tls_key = /k\n",      /* 15 */
                 10, &e);
        assert_error(&e, 0, 2, "unknown key 'a' in [server]");
        assert_error(&e, 1, 3, "server.max_body: invalid size 'big'");
        assert_error(&e, 2, 4, "unknown section [nosuch]");
        assert_error(&e, 3, 8, "upstream.concurrency: invalid number 'x'");
        assert_error(&e, 4, 10, "upstream.timeout: invalid duration '1y'");
        assert_error(&e, 5, 9, "syntax error");
        assert_error(&e, 6, 0, "upstream.base_url is required");
        assert_error(&e, 7, 0, "no API key");
        assert_error(&e, 8, 15, "go together");
        assert_error(&e, 9, 13, "retry.max_delay (1m) is shorter");
        config_errors_clear(&e);
}

static void test_unknown_section_once(void **state)
{
        struct config_errors e = {0};
        char want[300];
        load_bad("[upstream]\nbase_url = http://x\napi_key = k\n[  Upstream ]\na = 1\nb = 2\n"
                 "[empty]\n[server]\nlisten = 1.2.3.4:80\n",
                 2, &e);
        snprintf(want, sizeof(want),
                 "%s:4: unknown section [  Upstream ] (use server, limits, auth, upstream, "
                 "upscale, select, store, retry, budget, log or events)",
                 main_path);
        assert_string_equal(e.lines[0], want);
        assert_error(&e, 1, 7, "unknown section [empty]");
        config_errors_clear(&e);
}

static void test_long_lines(void **state)
{
        struct config_errors e = {0};
        char text[1024] = "[upstream]\nbase_url = http://x\napi_key = k\n[upscale]\nmodel = ";
        memset(text + strlen(text), 'm', 300);
        strcat(text, "\nbogus = 1\n[server]\nlisten = 1.2.3.4:80\n");
        load_bad(text, 2, &e);
        assert_error(&e, 0, 5, "line longer than 198 characters; shorten it");
        /* Line numbers after it stay right. */
        assert_error(&e, 1, 6, "unknown key 'bogus' in [upscale]");
        config_errors_clear(&e);

        /* Exactly at inih's limit (198 characters and the newline) is fine, with or without a
         * newline at the end of the file. */
        for (int with_newline = 0; with_newline <= 1; with_newline++) {
                char text2[512] = "[upstream]\nbase_url = http://x\napi_key = ";
                size_t n = strlen("api_key = ");
                memset(text2 + strlen(text2), 'k', 198 - n);
                if (with_newline)
                        strcat(text2, "\n");
                struct config *c = load_ok(text2);
                assert_int_equal(c->api_key.len, 198 - n);
                config_free(c);
        }
}

static void test_files(void **state)
{
        struct config_errors e = {0};
        struct config *c = NULL;
        char want[300];

        /* An explicit path must exist. */
        snprintf(want, sizeof(want), "%s/absent.conf: cannot read: No such file or directory", dir);
        char *absent = strdup(want);
        *strstr(absent, ": cannot") = 0;
        assert_int_equal(config_load(absent, &c, &e), -EINVAL);
        assert_null(c);
        assert_true(e.n >= 1);
        assert_string_equal(e.lines[0], want);
        config_errors_clear(&e);

        /* The default path may be absent; conf.d beside it still counts. */
        setenv("VIDU_UPSCALED_UPSTREAM_BASE_URL", "https://api.example.com", 1);
        setenv("VIDU_UPSCALED_UPSTREAM_API_KEY", "k", 1);
        assert_int_equal(config_load_full(absent, true, &c, &e), 0);
        assert_int_equal(e.n, 0);
        assert_string_equal(c->base_url, "https://api.example.com");
        c = config_free(c);
        free(write_file("conf.d/50-model.conf", "[upscale]\nmodel = from-dropin\n"));
        assert_int_equal(config_load_full(absent, true, &c, &e), 0);
        assert_string_equal(c->model, "from-dropin");
        c = config_free(c);
        /* ... but not a default path that cannot be read for another reason. */
        char *asdir = NULL;
        assert_true(asprintf(&asdir, "%s/conf.d", dir) > 0);
        assert_int_equal(config_load_full(asdir, true, &c, &e), -EINVAL);
        snprintf(want, sizeof(want), "%s: cannot read: Is a directory", asdir);
        assert_string_equal(e.lines[0], want);
        config_errors_clear(&e);
        free(asdir);
        free(absent);

        /* Errors already in the list are kept, and do not count as this load's (base_url and the
         * key still come from the environment). */
        e.lines = calloc(1, sizeof(char *));
        assert_non_null(e.lines);
        e.lines[0] = strdup("earlier");
        e.n = 1;
        write_main("");
        assert_int_equal(config_load(main_path, &c, &e), 0);
        assert_int_equal(e.n, 1);
        config_free(c);
        config_errors_clear(&e);
        assert_int_equal(e.n, 0);
        assert_null(e.lines);
}

static void test_dropins(void **state)
{
        struct config_errors e = {0};
        char *p;

        /* strcmp order: "10-" < "20-" < "9-". */
        free(write_file("conf.d/20-late.conf", "[upstream]\nconcurrency = 20\n"));
        free(write_file("conf.d/10-early.conf",
                        "[upstream]\nconcurrency = 10\n[upscale]\nmodel = early\n"));
        free(write_file("conf.d/9-last.conf", "[upscale]\nduration = 9\n"));
        free(write_file("conf.d/ignored.txt", "[nonsense]\n"));
        free(write_file("conf.d/.hidden.conf", "[nonsense]\n"));
        free(write_file("conf.d/conf", "[nonsense]\n"));
        struct config *c = load_ok("[upstream]\nbase_url = http://x\napi_key = k\n"
                                   "concurrency = 5\n[upscale]\nduration = 1\nmodel = main\n");
        assert_int_equal(c->concurrency, 20);
        assert_string_equal(c->model, "early");
        assert_int_equal(c->duration, 9);
        config_free(c);

        /* An error in a drop-in names the drop-in and its line. */
        p = write_file("conf.d/30-bad.conf", "# comment\n\n[retry]\nmax_attempts = many\n");
        char want[300];
        snprintf(want, sizeof(want), "%s:4: retry.max_attempts: invalid number 'many'", p);
        load_bad(minimal, 1, &e);
        assert_non_null(strstr(e.lines[0], want));
        assert_ptr_equal(strstr(e.lines[0], want), e.lines[0]);
        config_errors_clear(&e);
        unlink(p);
        free(p);

        /* A cross-key error names the drop-in line that set the key last. */
        p = write_file("conf.d/40-tls.conf", "[server]\ntls_cert = /c.pem\n");
        load_bad(minimal, 1, &e);
        snprintf(want, sizeof(want), "%s:2: server.tls_cert and server.tls_key go together", p);
        assert_ptr_equal(strstr(e.lines[0], want), e.lines[0]);
        config_errors_clear(&e);
        unlink(p);
        free(p);

        /* secret lines: a drop-in that sets any replaces the list; repeats in it accumulate. */
        free(write_file("conf.d/50-secrets.conf", "[auth]\nsecret = new1\nsecret = new2\n"));
        c = load_ok("[upstream]\nbase_url = http://x\napi_key = k\n[auth]\nscheme = token\n"
                    "secret = old1\nsecret = old2\nsecret = old3\n");
        assert_int_equal(c->n_secrets, 2);
        assert_string_equal(c->secrets[0].value, "new1");
        assert_string_equal(c->secrets[1].value, "new2");
        config_free(c);
}

/* upstream.callback_url and callback_grace: off by default, checked where they are set, overridden
 * from the environment, shown by the dump. */
static void test_callback_keys(void **state)
{
        struct config *c = load_ok(minimal);
        assert_null(c->callback_url);
        assert_int_equal(c->callback_grace, 600 * USEC_PER_SEC);
        config_free(c);
        c = load_ok("[upstream]\nbase_url = http://127.0.0.1:9/\napi_key = k3y\n"
                    "callback_url = https://hooks.example.com/hooks/vidu?x=1\n"
                    "callback_grace = 1s\n");
        assert_string_equal(c->callback_url, "https://hooks.example.com/hooks/vidu?x=1");
        assert_int_equal(c->callback_grace, USEC_PER_SEC);
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        config_dump(c, f);
        fclose(f);
        assert_non_null(strstr(text, "callback_url = https://hooks.example.com/hooks/vidu?x=1\n"));
        assert_non_null(strstr(text, "callback_grace = 1s\n"));
        free(text);
        config_free(c);
        expect_ok("callback_url = http://10.0.0.1:8080/hooks/vidu\n");
        expect_one_error("callback_url = ftp://h/x\n", 4,
                         "upstream.callback_url: 'ftp://h/x' must start with http:// or https://");
        expect_one_error("callback_url = hooks.example.com/x\n", 4, "must start with http://");
        expect_one_error("callback_url = https:///x\n", 4, "is not a URL with a host");
        expect_one_error("callback_url = https://h/x#top\n", 4, "has a fragment");
        expect_one_error("callback_url = https://h/a b\n", 4, "holds a space or a character");
        expect_one_error("callback_grace = soon\n", 4,
                         "upstream.callback_grace: invalid duration 'soon'");
        expect_one_error("callback_grace = 8d\n", 4,
                         "upstream.callback_grace: '8d' is out of range");
        setenv("VIDU_UPSCALED_UPSTREAM_CALLBACK_URL", "https://env.example/hooks/vidu", 1);
        setenv("VIDU_UPSCALED_UPSTREAM_CALLBACK_GRACE", "30s", 1);
        c = load_ok(minimal);
        assert_string_equal(c->callback_url, "https://env.example/hooks/vidu");
        assert_int_equal(c->callback_grace, 30 * USEC_PER_SEC);
        config_free(c);
        setenv("VIDU_UPSCALED_UPSTREAM_CALLBACK_URL", "javascript:alert(1)", 1);
        struct config_errors e = {0};
        load_bad(minimal, 1, &e);
        assert_non_null(strstr(e.lines[0], "VIDU_UPSCALED_UPSTREAM_CALLBACK_URL"));
        assert_non_null(strstr(e.lines[0], "must start with http://"));
        config_errors_clear(&e);
        unsetenv("VIDU_UPSCALED_UPSTREAM_CALLBACK_URL");
        unsetenv("VIDU_UPSCALED_UPSTREAM_CALLBACK_GRACE");
}

static void test_environment(void **state)
{
        struct config_errors e = {0};
        struct config *c;

        free(write_file("conf.d/10.conf", "[upstream]\nconcurrency = 10\n"));
        setenv("VIDU_UPSCALED_UPSTREAM_CONCURRENCY", "30", 1);
        setenv("VIDU_UPSCALED_RETRY_MAX_ATTEMPTS", "2", 1);
        setenv("VIDU_UPSCALED_UPSTREAM_BASE_URL", "https://env.example/", 1);
        setenv("VIDU_UPSCALED_AUTH_PUBLIC_URL_PREFIX", "/proxy", 1);
        c = load_ok(minimal);
        assert_int_equal(c->concurrency, 30);
        assert_int_equal(c->max_attempts, 2);
        assert_string_equal(c->base_url, "https://env.example");
        assert_string_equal(c->public_url_prefix, "/proxy");
        config_free(c);
        unsetenv("VIDU_UPSCALED_AUTH_PUBLIC_URL_PREFIX");
        unsetenv("VIDU_UPSCALED_RETRY_MAX_ATTEMPTS");
        unsetenv("VIDU_UPSCALED_UPSTREAM_BASE_URL");

        /* Unknown variables with the prefix are errors; other variables are not our business. */
        setenv("VIDU_UPSCALED_NOPE", "1", 1);
        setenv("VIDU_UPSCALED_upstream_concurrency", "1", 1);
        setenv("VIDU_UPSCALEDX", "1", 1);
        load_bad(minimal, 2, &e);
        bool nope = false, lower = false;
        for (size_t i = 0; i < e.n; i++) {
                nope |= strncmp(e.lines[i], "environment: VIDU_UPSCALED_NOPE: unknown setting",
                                48) == 0;
                lower |= strncmp(e.lines[i],
                                 "environment: VIDU_UPSCALED_upstream_concurrency: unknown "
                                 "setting",
                                 63) == 0;
        }
        assert_true(nope);
        assert_true(lower);
        config_errors_clear(&e);
        unsetenv("VIDU_UPSCALED_NOPE");
        unsetenv("VIDU_UPSCALED_upstream_concurrency");
        unsetenv("VIDU_UPSCALEDX");

        setenv("VIDU_UPSCALED_UPSTREAM_CONCURRENCY", "lots", 1);
        load_bad(minimal, 1, &e);
        assert_string_equal(e.lines[0], "environment: VIDU_UPSCALED_UPSTREAM_CONCURRENCY: invalid "
                                        "number 'lots' (use a whole number from 1 to 1024)");
        config_errors_clear(&e);
        unsetenv("VIDU_UPSCALED_UPSTREAM_CONCURRENCY");

        /* A newline can come in through the environment, never through INI. */
        setenv("VIDU_UPSCALED_UPSTREAM_AUTH_SCHEME", "Bearer\r\nX-Evil: 1", 1);
        load_bad(minimal, 1, &e);
        assert_string_equal(e.lines[0], "environment: VIDU_UPSCALED_UPSTREAM_AUTH_SCHEME: "
                                        "contains a control character (a newline or tab?); "
                                        "remove it");
        config_errors_clear(&e);
        unsetenv("VIDU_UPSCALED_UPSTREAM_AUTH_SCHEME");

        /* A cross-key error caused by the environment names the variable. */
        setenv("VIDU_UPSCALED_RETRY_MAX_DELAY", "1s", 1);
        load_bad(minimal, 1, &e);
        assert_string_equal(e.lines[0], "environment: VIDU_UPSCALED_RETRY_MAX_DELAY: "
                                        "retry.max_delay (1s) is shorter than "
                                        "retry.initial_delay (5s); raise max_delay or lower "
                                        "initial_delay");
        config_errors_clear(&e);
        unsetenv("VIDU_UPSCALED_RETRY_MAX_DELAY");

        /* Every key has its variable. */
        setenv("VIDU_UPSCALED_SERVER_MAX_BODY", "2M", 1);
        setenv("VIDU_UPSCALED_STORE_SYNCHRONOUS", "normal", 1);
        setenv("VIDU_UPSCALED_LOG_LEVEL", "warning", 1);
        setenv("VIDU_UPSCALED_LOG_FOLD_ACCEPTED", "no", 1);
        setenv("VIDU_UPSCALED_LIMITS_MAX_TASKS", "7", 1);
        setenv("VIDU_UPSCALED_UPSCALE_RESOLUTION", "8K", 1);
        c = load_ok(minimal);
        assert_int_equal(c->max_body, 2 * 1024 * 1024);
        assert_false(c->synchronous_full);
        assert_int_equal(c->log_level, LOG_WARNING);
        assert_int_equal(c->fold_accepted, 0);
        assert_int_equal(c->max_tasks, 7);
        assert_string_equal(c->resolution, "8K");
        config_free(c);
}

static void test_api_key_sources(void **state)
{
        struct config_errors e = {0};
        char text[512], want[512];
        struct config *c;
        char *keyfile = write_file("secrets/api-key", "from-file\r\n");
        char *creds = NULL;
        assert_true(asprintf(&creds, "%s/creds", dir) > 0);
        free(write_file("creds/api-key", "from-credential"));
        setenv("CREDENTIALS_DIRECTORY", creds, 1);

        /* api_key > api_key_file > credential. */
        snprintf(text, sizeof(text),
                 "[upstream]\nbase_url = http://x\napi_key = literal\napi_key_file = %s\n",
                 keyfile);
        c = load_ok(text);
        assert_string_equal(c->api_key.value, "literal");
        config_free(c);
        snprintf(text, sizeof(text), "[upstream]\nbase_url = http://x\napi_key_file = %s\n",
                 keyfile);
        c = load_ok(text);
        assert_string_equal(c->api_key.value, "from-file");
        assert_int_equal(c->api_key.len, 9);
        config_free(c);
        c = load_ok("[upstream]\nbase_url = http://x\n");
        assert_string_equal(c->api_key.value, "from-credential");
        config_free(c);

        /* A named file that is missing, empty, or holds two lines: one error, at its line. */
        snprintf(text, sizeof(text),
                 "[upstream]\nbase_url = http://x\napi_key_file = %s/secrets/nope\n", dir);
        load_bad(text, 1, &e);
        snprintf(want, sizeof(want),
                 "%s:3: upstream.api_key_file: cannot read '%s/secrets/nope': No such file or "
                 "directory",
                 main_path, dir);
        assert_string_equal(e.lines[0], want);
        config_errors_clear(&e);

        free(write_file("secrets/empty", "\n\r\n  \n"));
        snprintf(text, sizeof(text),
                 "[upstream]\nbase_url = http://x\napi_key_file = %s/secrets/empty\n", dir);
        load_bad(text, 1, &e);
        assert_error(&e, 0, 3, "upstream.api_key_file: '");
        assert_non_null(strstr(e.lines[0], "secrets/empty' is empty; put the key in it"));
        config_errors_clear(&e);

        free(write_file("secrets/two", "key-alpha\nkey-beta\n"));
        snprintf(text, sizeof(text),
                 "[upstream]\nbase_url = http://x\napi_key_file = %s/secrets/two\n", dir);
        load_bad(text, 1, &e);
        assert_error(&e, 0, 3, "has more than one line; put only the key in it");
        assert_null(strstr(e.lines[0], "key-"));
        config_errors_clear(&e);

        /* The credential directory without an api-key: the key is simply missing. */
        char *credkey = NULL;
        assert_true(asprintf(&credkey, "%s/api-key", creds) > 0);
        assert_int_equal(unlink(credkey), 0);
        load_bad("[upstream]\nbase_url = http://x\n", 1, &e);
        assert_error(&e, 0, 0, "no API key");
        config_errors_clear(&e);
        /* ... and an unreadable one is an error of its own. */
        assert_int_equal(mkdir(credkey, 0700), 0);
        load_bad("[upstream]\nbase_url = http://x\n", 1, &e);
        snprintf(want, sizeof(want),
                 "configuration: credential api-key: cannot read '%s': Is a directory", credkey);
        assert_string_equal(e.lines[0], want);
        config_errors_clear(&e);
        unsetenv("CREDENTIALS_DIRECTORY");

        free(credkey);
        free(creds);
        free(keyfile);
}

static void test_secret_rotation(void **state)
{
        struct config_errors e = {0};
        char text[1024];
        struct config *c;

        /* Several secret lines, in order. */
        c = load_ok("[upstream]\nbase_url = http://x\napi_key = k\n[auth]\nscheme = hmac-sha256\n"
                    "secret = first\nsecret = second\nsecret = third\n");
        assert_int_equal(c->n_secrets, 3);
        assert_string_equal(c->secrets[0].value, "first");
        assert_string_equal(c->secrets[1].value, "second");
        assert_string_equal(c->secrets[2].value, "third");
        assert_int_equal(c->secrets[2].len, 5);
        config_free(c);

        /* secret_file: one per line, blank lines and trailing CR ignored. */
        char *hooks = write_file("secrets/hooks", "\ns3cr3t-old\r\n\n  \ns3cr3t-new\n");
        snprintf(text, sizeof(text),
                 "[upstream]\nbase_url = http://x\napi_key = k\n[auth]\nscheme = token\n"
                 "secret_file = %s\n",
                 hooks);
        c = load_ok(text);
        assert_int_equal(c->n_secrets, 2);
        assert_string_equal(c->secrets[0].value, "s3cr3t-old");
        assert_string_equal(c->secrets[1].value, "s3cr3t-new");
        config_free(c);

        /* secret lines > secret_file > credential. */
        char *creds = NULL;
        assert_true(asprintf(&creds, "%s/creds", dir) > 0);
        free(write_file("creds/webhook-secret",
                        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nwhsec_YWJj\n"));
        setenv("CREDENTIALS_DIRECTORY", creds, 1);
        snprintf(text, sizeof(text),
                 "[upstream]\nbase_url = http://x\napi_key = k\n[auth]\nscheme = token\n"
                 "secret_file = %s\nsecret = line\n",
                 hooks);
        c = load_ok(text);
        assert_int_equal(c->n_secrets, 1);
        assert_string_equal(c->secrets[0].value, "line");
        config_free(c);
        snprintf(text, sizeof(text),
                 "[upstream]\nbase_url = http://x\napi_key = k\n[auth]\nscheme = token\n"
                 "secret_file = %s\n",
                 hooks);
        c = load_ok(text);
        assert_string_equal(c->secrets[0].value, "s3cr3t-old");
        config_free(c);
        c = load_ok("[upstream]\nbase_url = http://x\napi_key = k\n[auth]\n"
                    "scheme = standard-webhooks\n");
        assert_int_equal(c->n_secrets, 2);
        assert_string_equal(c->secrets[1].value, "whsec_YWJj");
        config_free(c);
        /* A bad whsec_ from the credential names the credential. */
        free(write_file("creds/webhook-secret", "whsec_YWJj\nplain\n"));
        load_bad("[upstream]\nbase_url = http://x\napi_key = k\n[auth]\n"
                 "scheme = standard-webhooks\n",
                 1, &e);
        assert_error(&e, 0, 0, "credential webhook-secret: secret 2 is not whsec_");
        config_errors_clear(&e);
        unsetenv("CREDENTIALS_DIRECTORY");
        free(creds);

        /* At most CONFIG_MAX_SECRETS, from lines or from a file. */
        char lines[512] = "";
        for (int i = 0; i < CONFIG_MAX_SECRETS; i++)
                sprintf(lines + strlen(lines), "secret = s%d\n", i);
        snprintf(text, sizeof(text), "%s[auth]\nscheme = token\n%s", minimal, lines);
        c = load_ok(text);
        assert_int_equal(c->n_secrets, CONFIG_MAX_SECRETS);
        config_free(c);
        snprintf(text, sizeof(text), "[auth]\nscheme = token\n%ssecret = one-too-many\n", lines);
        expect_one_error(text, 6 + CONFIG_MAX_SECRETS, "auth.secret: too many secrets (at most 8)");
        char many[256] = "", needle[256];
        for (int i = 0; i <= CONFIG_MAX_SECRETS; i++)
                sprintf(many + strlen(many), "s%d\n", i);
        free(write_file("secrets/many", many));
        snprintf(text, sizeof(text), "[auth]\nscheme = token\nsecret_file = %s/secrets/many\n",
                 dir);
        snprintf(needle, sizeof(needle),
                 "auth.secret_file: '%s/secrets/many' has more than 8 secrets; remove the oldest",
                 dir);
        expect_one_error(text, 6, needle);

        /* A named secret file that is missing: one error, no "needs a secret" on top. */
        snprintf(text, sizeof(text), "[auth]\nscheme = token\nsecret_file = %s/nope\n", dir);
        expect_one_error(text, 6, "auth.secret_file: cannot read '");
        free(hooks);
}

static void test_dump(void **state)
{
        char text[1024];
        char *hooks = write_file("secrets/hooks", "hook-secret-A\nhook-secret-B\n");
        snprintf(text, sizeof(text),
                 "[server]\nmax_body = 64K\nmax_header = 1500\nallow_from = ::1\n"
                 "[auth]\nscheme = hmac-sha256\nsecret_file = %s\n"
                 "[upstream]\nbase_url = http://x\napi_key = api-key-SECRET\n"
                 "poll_interval = 500ms\n[retry]\nmax_delay = 2h\n",
                 hooks);
        struct config *c = load_ok(text);
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);
        assert_non_null(f);
        config_dump(c, f);
        assert_int_equal(fclose(f), 0);

        assert_null(strstr(out, "api-key-SECRET"));
        assert_null(strstr(out, "hook-secret"));
        assert_null(strstr(out, "SECRET"));
        assert_non_null(strstr(out, "\napi_key = (set)\n"));
        assert_non_null(strstr(out, "\nsecret = (set)\nsecret = (set)\n"));
        const char *sections[] = {"[server]\n",    "\n[limits]\n", "\n[auth]\n",  "\n[upstream]\n",
                                  "\n[upscale]\n", "\n[store]\n",  "\n[retry]\n", "\n[log]\n"};
        for (size_t i = 0; i < ELEMENTSOF(sections); i++)
                assert_non_null(strstr(out, sections[i]));
        assert_ptr_equal(strstr(out, "[server]\n"), out);
        assert_non_null(strstr(out, "\nmax_body = 64K\n"));
        assert_non_null(strstr(out, "\nmax_header = 1500\n"));
        assert_non_null(strstr(out, "\nallow_from = ::1\n"));
        assert_non_null(strstr(out, "\ntls_cert =\n"));
        assert_non_null(strstr(out, "\nscheme = hmac-sha256\n"));
        assert_non_null(strstr(out, "\nheader = X-Hub-Signature-256\n"));
        assert_non_null(strstr(out, "\ntolerance = 5m\n"));
        assert_non_null(strstr(out, "\npoll_interval = 500ms\n"));
        assert_non_null(strstr(out, "\nflavor = v1\n"));
        assert_non_null(strstr(out, "\nsynchronous = full\n"));
        assert_non_null(strstr(out, "\nmax_delay = 2h\n"));
        assert_non_null(strstr(out, "\nlevel = info\n"));
        assert_non_null(strstr(out, "\nfold_accepted = yes\n"));
        /* The loader's own keys (file names) are not settings of their own. */
        assert_null(strstr(out, "secret_file"));
        free(out);
        config_free(c);

        /* Neither the secret nor its base64 part shows, and unset ones say so. */
        c = load_ok(
            "[upstream]\nbase_url = http://x\napi_key = k\n[auth]\n"
            "scheme = standard-webhooks\nsecret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
        f = open_memstream(&out, &len);
        config_dump(c, f);
        fclose(f);
        assert_null(strstr(out, "whsec_"));
        assert_null(strstr(out, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        assert_non_null(strstr(out, "\nsecret = (set)\n"));
        assert_null(strstr(out, "\nsecret = (set)\nsecret"));
        free(out);
        config_free(c);

        c = load_ok(minimal);
        f = open_memstream(&out, &len);
        config_dump(c, f);
        fclose(f);
        assert_non_null(strstr(out, "\nsecret = (unset)\n"));
        assert_non_null(strstr(out, "\nmax_body = 1M\n"));
        assert_non_null(strstr(out, "\nmax_header = 16K\n"));
        free(out);
        config_free(c);
        free(hooks);
}

/* VIDU_UPSCALED_<SECTION>_<KEY> for a row. */
static void key_env_name(const struct config_key *k, char *buf, size_t len)
{
        snprintf(buf, len, "VIDU_UPSCALED_%s_%s", k->section, k->name);
        for (char *p = buf; *p; p++)
                *p = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
}

/* Not inlined: GCC 12 at -O3 then takes the memstream's buffer for the dead local that pointed to
 * it (a false -Wdangling-pointer). */
__attribute__((noinline)) static char *dump_text(const struct config *c)
{
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);
        assert_non_null(f);
        config_dump(c, f);
        assert_int_equal(fclose(f), 0);
        return out;
}

/* The table itself: every row complete, no key (or environment name, or field) twice, each
 * section in one run so the dump prints its header once, and the defaults valid. */
static void test_key_table(void **state)
{
        size_t n = 0;
        const struct config_key *keys = config_keys(&n);
        assert_non_null(keys);
        assert_true(n >= 40);
        for (size_t i = 0; i < n; i++) {
                const struct config_key *k = &keys[i];
                assert_non_null(k->section);
                assert_non_null(k->name);
                assert_true(k->section[0] && k->name[0]);
                assert_true(strspn(k->section, "abcdefghijklmnopqrstuvwxyz0123456789_") ==
                            strlen(k->section));
                assert_true(strspn(k->name, "abcdefghijklmnopqrstuvwxyz0123456789_") ==
                            strlen(k->name));
                if (!k->parse || !k->dump)
                        fail_msg("%s.%s has no parser or no dumper", k->section, k->name);
                assert_true(k->offset < sizeof(struct config));
                if (k->min > k->max)
                        fail_msg("%s.%s: min > max", k->section, k->name);
                if (k->default_text && strchr(k->default_text, '\n'))
                        fail_msg("%s.%s: the default is not one line", k->section, k->name);
                for (size_t j = 0; j < i; j++) {
                        const struct config_key *o = &keys[j];
                        char a[160], b[160];
                        if (strcmp(o->section, k->section) == 0 && strcmp(o->name, k->name) == 0)
                                fail_msg("%s.%s is in the table twice", k->section, k->name);
                        key_env_name(k, a, sizeof(a));
                        key_env_name(o, b, sizeof(b));
                        if (strcmp(a, b) == 0)
                                fail_msg("%s.%s and %s.%s share the environment name %s",
                                         o->section, o->name, k->section, k->name, a);
                        if (o->offset == k->offset)
                                fail_msg("%s.%s and %s.%s set the same field", o->section, o->name,
                                         k->section, k->name);
                        /* A section seen before must be the one just before. */
                        if (strcmp(o->section, k->section) == 0 &&
                            strcmp(keys[i - 1].section, k->section) != 0)
                                fail_msg("[%s] is split: %s comes after [%s]", k->section, k->name,
                                         keys[i - 1].section);
                }
        }
        /* Every default parses (a bad one is a "configuration: default of" error). */
        config_free(load_ok(minimal));
}

/* Every row is a key the file parser and the environment accept: a control character in each is
 * reported once per key, as a bad value of that key, never as an unknown key or variable. */
static void test_every_listed_key_is_accepted(void **state)
{
        size_t n = 0;
        const struct config_key *keys = config_keys(&n);
        char *text = NULL, line[256];
        size_t len = 0;
        struct config_errors e = {0};

        FILE *f = open_memstream(&text, &len);
        assert_non_null(f);
        for (size_t i = 0; i < n; i++)
                fprintf(f, "[%s]\n%s = bad\x01value\n", keys[i].section, keys[i].name);
        assert_int_equal(fclose(f), 0);
        write_main(text);
        struct config *c = NULL;
        assert_int_equal(config_load(main_path, &c, &e), -EINVAL);
        for (size_t i = 0; i < n; i++) {
                snprintf(line, sizeof(line), "%s:%zu: %s.%s: contains a control character",
                         main_path, 2 * i + 2, keys[i].section, keys[i].name);
                bool found = false;
                for (size_t j = 0; j < e.n && !found; j++)
                        found = strncmp(e.lines[j], line, strlen(line)) == 0;
                if (!found)
                        fail_msg("no error '%s...'", line);
        }
        for (size_t j = 0; j < e.n; j++)
                assert_null(strstr(e.lines[j], "unknown"));
        config_errors_clear(&e);
        free(text);

        write_main(minimal);
        for (size_t i = 0; i < n; i++) {
                key_env_name(&keys[i], line, sizeof(line));
                assert_int_equal(setenv(line, "bad\x01value", 1), 0);
        }
        assert_int_equal(config_load(main_path, &c, &e), -EINVAL);
        for (size_t i = 0; i < n; i++) {
                char want[300];
                key_env_name(&keys[i], line, sizeof(line));
                snprintf(want, sizeof(want), "environment: %s: contains a control character", line);
                bool found = false;
                for (size_t j = 0; j < e.n && !found; j++)
                        found = strncmp(e.lines[j], want, strlen(want)) == 0;
                if (!found)
                        fail_msg("no error '%s...'", want);
        }
        for (size_t j = 0; j < e.n; j++)
                assert_null(strstr(e.lines[j], "unknown"));
        config_errors_clear(&e);
}

/* The dump walks the table: every row shows as "name = ..." in its section, except the ..._file
 * keys (what they held shows as the secret it provided); no secret row ever shows its value,
 * whether it came from the file or the environment. */
/* [events]: the URL forms, the types, the secrets (lines, file, credential; whsec_ only), the
 * defaults, the environment, the dump masking them. */
static void test_events_keys(void **state)
{
        struct config *c = load_ok(minimal);
        assert_null(c->events_url);
        assert_int_equal(c->events_states, EVENT_STATES_ALL);
        assert_int_equal(c->events_concurrency, 4);
        assert_int_equal(c->events_timeout, 10 * USEC_PER_SEC);
        assert_int_equal(c->events_max_age, 24 * 3600 * USEC_PER_SEC);
        assert_int_equal(c->events_keep, 7 * 86400 * USEC_PER_SEC);
        assert_int_equal(c->n_events_secrets, 0);
        config_free(c);

        char text[2048];
        snprintf(text, sizeof(text),
                 "%s[events]\nurl = https://pipeline.example.com/hooks/\n"
                 "secret = whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nsecret = whsec_YWJj\n"
                 "types = upscale.succeeded,upscale.dead\nconcurrency = 2\ntimeout = 500ms\n"
                 "max_age = 2h\nkeep = 1d\n",
                 minimal);
        c = load_ok(text);
        assert_string_equal(c->events_url, "https://pipeline.example.com/hooks/");
        assert_int_equal(c->n_events_secrets, 2);
        assert_string_equal(c->events_secrets[0].value, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_int_equal(c->events_states, (1u << JOB_SUCCEEDED) | (1u << JOB_DEAD));
        assert_int_equal(c->events_concurrency, 2);
        assert_int_equal(c->events_timeout, 500 * USEC_PER_MSEC);
        assert_int_equal(c->n_secrets, 0); /* the auth list is another list */
        char *out = dump_text(c);
        assert_null(strstr(out, "MfKQ9r8G"));
        assert_null(strstr(out, "YWJj"));
        assert_non_null(strstr(out, "[events]\nurl = https://pipeline.example.com/hooks/\n"
                                    "types = upscale.succeeded upscale.dead\n"
                                    "secret = (set)\nsecret = (set)\n"));
        free(out);
        config_free(c);

        /* unix:/path, and the environment. */
        setenv("VIDU_UPSCALED_EVENTS_URL", "unix:/run/pipeline/events.sock", 1);
        setenv("VIDU_UPSCALED_EVENTS_SECRET", "whsec_YWJj", 1);
        c = load_ok(minimal);
        assert_string_equal(c->events_url, "unix:/run/pipeline/events.sock");
        assert_int_equal(c->n_events_secrets, 1);
        config_free(c);
        unsetenv("VIDU_UPSCALED_EVENTS_URL");
        unsetenv("VIDU_UPSCALED_EVENTS_SECRET");

        /* Bad values: FILE:LINE. */
        expect_one_error("[events]\nurl = ftp://example.com/\nsecret = whsec_YWJj\n", 5,
                         "events.url: 'ftp://example.com/' must start with http:// or https://");
        expect_one_error("[events]\nurl = hooks.example.com\nsecret = whsec_YWJj\n", 5,
                         "must start with http://");
        expect_one_error("[events]\nurl = unix:relative.sock\nsecret = whsec_YWJj\n", 5,
                         "absolute socket path");
        expect_one_error("[events]\nurl = http://\nsecret = whsec_YWJj\n", 5,
                         "not a URL with a host");
        expect_one_error("[events]\ntypes = upscale.done\n", 5,
                         "unknown event type 'upscale.done'");
        expect_one_error("[events]\ntypes = ,\n", 5, "at least one event type");
        expect_one_error("[events]\nconcurrency = 0\n", 5, "events.concurrency");
        expect_one_error("[events]\nsecret = s3cr3t-plain\n", 5,
                         "events.secret: secret 1 is not whsec_ followed by base64");
        expect_one_error("[events]\nsecret = whsec_not*base64\n", 5, "is not whsec_");
        expect_one_error("[events]\nurl = http://127.0.0.1:1/\n", 5, "events.url needs a secret");
        /* A secret is never quoted. */
        struct config_errors e = {0};
        snprintf(text, sizeof(text), "%s[events]\nsecret = s3cr3t-plain\n", minimal);
        load_bad(text, 1, &e);
        assert_null(strstr(e.lines[0], "s3cr3t-plain"));
        config_errors_clear(&e);

        /* secret_file, else the credential events-secret. */
        char *file = write_file("events-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
        snprintf(text, sizeof(text), "%s[events]\nurl = http://127.0.0.1:1/\nsecret_file = %s\n",
                 minimal, file);
        c = load_ok(text);
        assert_int_equal(c->n_events_secrets, 1);
        config_free(c);
        char *creds = NULL;
        assert_true(asprintf(&creds, "%s/creds", dir) > 0);
        free(write_file("creds/events-secret", "whsec_YWJj\nplain\n"));
        setenv("CREDENTIALS_DIRECTORY", creds, 1);
        snprintf(text, sizeof(text), "%s[events]\nurl = http://127.0.0.1:1/\n", minimal);
        load_bad(text, 1, &e);
        assert_error(&e, 0, 0, "credential events-secret: secret 2 is not whsec_");
        config_errors_clear(&e);
        free(write_file("creds/events-secret", "whsec_YWJj\n"));
        c = load_ok(text);
        assert_int_equal(c->n_events_secrets, 1);
        assert_string_equal(c->events_secrets[0].value, "whsec_YWJj");
        config_free(c);
        unsetenv("CREDENTIALS_DIRECTORY");
        free(creds);
        free(file);
}

/* Whether the dump's section that starts with header holds entry. */
static bool in_section(const char *dump, const char *header, const char *entry)
{
        const char *sec = strstr(dump, header);
        if (!sec)
                return false;
        const char *end = strstr(sec + 1, "\n[");
        const char *at = strstr(sec, entry);
        return at && (!end || at < end);
}

static void test_dump_covers_the_table(void **state)
{
        size_t n = 0;
        const struct config_key *keys = config_keys(&n);
        struct config *c = load_ok(minimal);
        char *out = dump_text(c);
        for (size_t i = 0; i < n; i++) {
                const struct config_key *k = &keys[i];
                char header[80], entry[120];
                char *alone = NULL;
                size_t len = 0;
                FILE *f = open_memstream(&alone, &len);
                assert_non_null(f);
                k->dump(k, c, (const char *)c + k->offset, f);
                assert_int_equal(fclose(f), 0);
                if (len == 0) {
                        size_t nl = strlen(k->name);
                        if (nl < 5 || strcmp(k->name + nl - 5, "_file") != 0)
                                fail_msg("%s.%s is not in the dump", k->section, k->name);
                        free(alone);
                        continue;
                }
                free(alone);
                snprintf(header, sizeof(header), "[%s]\n", k->section);
                snprintf(entry, sizeof(entry), "\n%s =", k->name);
                if (!in_section(out, header, entry))
                        fail_msg("%s.%s is not in the dump's [%s]", k->section, k->name,
                                 k->section);
        }
        free(out);
        config_free(c);

        /* Each secret row set through the file, then through the environment; the marker is a
         * whsec_ secret, which every secret row accepts (events.secret accepts nothing else). */
        for (int env = 0; env <= 1; env++)
                for (size_t i = 0; i < n; i++) {
                        const struct config_key *k = &keys[i];
                        char text[512], name[160];
                        if (!(k->flags & CONFIG_KEY_SECRET))
                                continue;
                        key_env_name(k, name, sizeof(name));
                        if (env) {
                                assert_int_equal(setenv(name, "whsec_TWFya2VyLVZhbHVlLTk=", 1), 0);
                                snprintf(text, sizeof(text), "%s", minimal);
                        } else
                                snprintf(text, sizeof(text),
                                         "%s[%s]\n%s = whsec_TWFya2VyLVZhbHVlLTk=\n", minimal,
                                         k->section, k->name);
                        c = load_ok(text);
                        out = dump_text(c);
                        assert_null(strstr(out, "whsec_TWFya2VyLVZhbHVlLTk="));
                        snprintf(text, sizeof(text), "\n%s = (set)\n", k->name);
                        if (!strstr(out, text))
                                fail_msg("%s.%s is not shown as (set)", k->section, k->name);
                        free(out);
                        config_free(c);
                        unsetenv(name);
                }
}

/* [store] for PostgreSQL: the backend, the connection string (checked by libpq, its password
 * masked in the dump and never quoted in an error), the password's sources in order, the
 * instance name and the lease. */
static void test_store_keys(void **state)
{
        char text[2048];
        struct config_errors e = {0};
        struct config *c = load_ok(minimal);
        assert_int_equal(c->store_backend, STORE_BACKEND_SQLITE);
        assert_null(c->store_url);
        assert_null(c->store_instance);
        assert_null(c->store_password.value);
        assert_int_equal(c->store_lease, 30 * USEC_PER_SEC);
        char inst[128];
        assert_int_equal(config_store_instance(c, inst, sizeof(inst)), 0);
        char want[64];
        snprintf(want, sizeof(want), "-%ld", (long)getpid());
        assert_int_equal(strlen(inst), 32 + strlen(want));
        assert_string_equal(inst + 32, want);
        char *out = dump_text(c);
        assert_non_null(strstr(out, "\nbackend = sqlite\nurl =\ninstance =\nlease = 30s\n"));
        free(out);
        config_free(c);

        /* postgresql needs a URL; sqlite reads no password file, even a missing one. */
        expect_one_error("[store]\nbackend = postgresql\n", 5,
                         "store.backend = postgresql needs store.url");
        expect_ok("[store]\npassword_file = /nonexistent/pw\nurl = host=/tmp\n");
        expect_one_error("[store]\nbackend = mysql\n", 5, "store.backend: unknown value 'mysql'");
        expect_one_error("[store]\nlease = 0\n", 5, "store.lease: '0' is out of range");
        expect_one_error("[store]\ninstance = web 1\n", 5, "store.instance: 'web 1' is not");

        /* A bad string: libpq's complaint when there is no password, none when there is one. */
        snprintf(text, sizeof(text), "%s[store]\nurl = postgresql://h/d?nosuch=1\n", minimal);
        load_bad(text, 1, &e);
        assert_error(&e, 0, 5, "store.url: not a libpq connection URI");
        assert_non_null(strstr(e.lines[0], "nosuch"));
        config_errors_clear(&e);
        snprintf(text, sizeof(text), "%s[store]\nurl = host=h password=Hunter2-X port\n", minimal);
        load_bad(text, 1, &e);
        assert_error(&e, 0, 5, "complaint is not shown");
        assert_null(strstr(e.lines[0], "Hunter2"));
        config_errors_clear(&e);
        snprintf(text, sizeof(text), "%s[store]\nurl = postgresql://u:Hunter2-X@h/d?Hunter2=x\n",
                 minimal);
        load_bad(text, 1, &e);
        assert_null(strstr(e.lines[0], "Hunter2"));
        config_errors_clear(&e);

        /* The URL's password is masked in the dump, in either form, from a file or the
         * environment; the rest shows as written. */
        c = load_ok("[upstream]\nbase_url = http://x\napi_key = k\n[store]\nbackend = postgresql\n"
                    "url = postgresql://vidu:Hunter2-X@db.example.com/vidu?sslmode=verify-full\n"
                    "instance = web-1\nlease = 10s\n");
        assert_int_equal(c->store_backend, STORE_BACKEND_POSTGRESQL);
        assert_string_equal(c->store_instance, "web-1");
        assert_int_equal(config_store_instance(c, inst, sizeof(inst)), 0);
        assert_string_equal(inst, "web-1");
        assert_int_equal(c->store_lease, 10 * USEC_PER_SEC);
        out = dump_text(c);
        assert_null(strstr(out, "Hunter2"));
        assert_non_null(strstr(out, "\nbackend = postgresql\nurl = "
                                    "postgresql://vidu:(set)@db.example.com/vidu?sslmode=verify-"
                                    "full\ninstance = web-1\nlease = 10s\n"));
        free(out);
        config_free(c);
        setenv("VIDU_UPSCALED_STORE_URL", "host=/tmp password='Hunter2 X' dbname=v", 1);
        c = load_ok(
            "[upstream]\nbase_url = http://x\napi_key = k\n[store]\nbackend = postgresql\n");
        out = dump_text(c);
        assert_null(strstr(out, "Hunter2"));
        assert_non_null(strstr(out, "\nurl = host=/tmp password=(set) dbname=v\n"));
        free(out);
        /* A password in the URL: no other source is read. */
        assert_null(c->store_password.value);
        config_free(c);
        unsetenv("VIDU_UPSCALED_STORE_URL");

        /* The password: store.password_file, else the credential db-password, else none. */
        char *creds = NULL;
        assert_true(asprintf(&creds, "%s/creds", dir) > 0);
        free(write_file("creds/db-password", "from-credential\n"));
        char *pwfile = write_file("secrets/db", "from-file \n");
        setenv("CREDENTIALS_DIRECTORY", creds, 1);
        snprintf(text, sizeof(text),
                 "%s[store]\nbackend = postgresql\nurl = postgresql://vidu@h/v\n"
                 "password_file = %s\n",
                 minimal, pwfile);
        c = load_ok(text);
        assert_string_equal(c->store_password.value, "from-file");
        out = dump_text(c);
        assert_null(strstr(out, "from-file"));
        free(out);
        config_free(c);
        snprintf(text, sizeof(text), "%s[store]\nbackend = postgresql\nurl = host=h\n", minimal);
        c = load_ok(text);
        assert_string_equal(c->store_password.value, "from-credential");
        config_free(c);
        unsetenv("CREDENTIALS_DIRECTORY");
        c = load_ok(text);
        assert_null(c->store_password.value);
        config_free(c);
        snprintf(text, sizeof(text),
                 "%s[store]\nbackend = postgresql\nurl = host=h\npassword_file = %s/nope\n",
                 minimal, dir);
        load_bad(text, 1, &e);
        assert_error(&e, 0, 7, "store.password_file: cannot read");
        config_errors_clear(&e);
        free(pwfile);
        free(creds);
}

/* [select] and upscale.duration = source: defaults, values, repeats across sources, the
 * environment, the dump, and a FILE:LINE error for every malformed form. */
static void test_select_keys(void **state)
{
        struct config *c = load_ok(minimal);
        assert_true(select_types_match(&c->select.task_types, "text2video"));
        assert_true(select_types_match(&c->select.task_types, "new2video"));
        assert_false(select_types_match(&c->select.task_types, "text2image"));
        assert_true(select_types_match(&c->select.creation_types, "video"));
        assert_false(select_types_match(&c->select.creation_types, "image"));
        assert_int_equal(c->select.n_rules, 0);
        assert_false(c->duration_source);
        assert_int_equal(c->duration, 4);
        char *out = dump_text(c);
        assert_non_null(strstr(out, "\n[select]\ntask_types = text2video img2video "
                                    "reference2video character2video start-end2video *2video\n"
                                    "creation_types = video\nmatch =\n"));
        assert_non_null(strstr(out, "\nduration = 4\n"));
        free(out);
        config_free(c);

        char text[1024];
        snprintf(text, sizeof(text),
                 "%s[upscale]\nduration = source\n[select]\ntask_types = *\n"
                 "creation_types = video image\nmatch = /settings/model  in a b\n"
                 "match = /payload/upscale = true\n",
                 minimal);
        c = load_ok(text);
        assert_true(c->duration_source);
        assert_int_equal(c->duration, 4);
        assert_true(select_types_match(&c->select.task_types, "text2image"));
        assert_true(select_types_match(&c->select.creation_types, "image"));
        assert_int_equal(c->select.n_rules, 2);
        assert_string_equal(c->select.rules[0].text, "/settings/model in a b");
        out = dump_text(c);
        assert_non_null(strstr(out, "\nduration = source\n"));
        assert_non_null(strstr(out, "\ntask_types = *\ncreation_types = video image\n"
                                    "match = /settings/model in a b\n"
                                    "match = /payload/upscale = true\n"));
        free(out);
        config_free(c);

        /* A drop-in's rules replace the main file's; an empty match removes them all. */
        free(write_file("conf.d/50-select.conf", "[select]\nmatch = /x exists\n"));
        c = load_ok(text);
        assert_int_equal(c->select.n_rules, 1);
        assert_string_equal(c->select.rules[0].text, "/x exists");
        config_free(c);
        free(write_file("conf.d/50-select.conf", "[select]\nmatch =\n"));
        c = load_ok(text);
        assert_int_equal(c->select.n_rules, 0);
        config_free(c);
        free(write_file("conf.d/50-select.conf", "\n"));

        /* The environment sets one rule, and the duration. */
        setenv("VIDU_UPSCALED_SELECT_MATCH", "/payload/skip !exists", 1);
        setenv("VIDU_UPSCALED_UPSCALE_DURATION", "8", 1);
        c = load_ok(text);
        assert_int_equal(c->select.n_rules, 1);
        assert_int_equal(c->select.rules[0].op, SELECT_NOT_EXISTS);
        assert_false(c->duration_source);
        assert_int_equal(c->duration, 8);
        config_free(c);
        unsetenv("VIDU_UPSCALED_SELECT_MATCH");
        unsetenv("VIDU_UPSCALED_UPSCALE_DURATION");

        struct config_errors e = {0};
        snprintf(text, sizeof(text),
                 "%s[select]\n"
                 "match = /settings/model == viduq1\n"
                 "match = settings/model = viduq1\n"
                 "match = /a~2 exists\n"
                 "match = /settings/model in\n"
                 "match = /settings/model\n"
                 "match = /x exists y\n"
                 "match = /x =\n"
                 "task_types = vi*deo\n"
                 "creation_types =\n"
                 "[upscale]\nduration = sauce\n",
                 minimal);
        load_bad(text, 10, &e);
        assert_error(&e, 0, 5, "select.match: '/settings/model == viduq1': unknown operator");
        assert_error(&e, 1, 6, "starts with '/'");
        assert_error(&e, 2, 7, "'~' in a pointer must be followed by 0 or 1");
        assert_error(&e, 3, 8, "in needs at least one value");
        assert_error(&e, 4, 9, "missing operator");
        assert_error(&e, 5, 10, "exists and !exists take no value");
        assert_error(&e, 6, 11, "missing value");
        assert_error(&e, 7, 12, "select.task_types: 'vi*deo': '*' goes only at the start");
        assert_error(&e, 8, 13, "select.creation_types: '': empty list");
        assert_error(&e, 9, 15, "upscale.duration: invalid number 'sauce'");
        assert_non_null(strstr(e.lines[9], "or source"));
        config_errors_clear(&e);
        expect_one_error("[upscale]\nduration = 0\n", 5, "(use 1 to 3600), or source");
}

/* [budget]: 0 (no limit) by default, whole numbers, FILE:LINE for negative or non-numeric values,
 * the environment, the dump. */
static void test_budget_keys(void **state)
{
        struct config *c = load_ok(minimal);
        assert_int_equal(c->budget_per_hour, 0);
        assert_int_equal(c->budget_per_day, 0);
        assert_int_equal(c->budget_credits_per_day, 0);
        assert_int_equal(c->budget_assumed_credits, 0);
        config_free(c);

        char text[1024];
        snprintf(text, sizeof(text),
                 "%s[budget]\nmax_submissions_per_hour = 3\nmax_submissions_per_day = 50\n"
                 "max_credits_per_day = 400\nassumed_credits = 4\n",
                 minimal);
        c = load_ok(text);
        assert_int_equal(c->budget_per_hour, 3);
        assert_int_equal(c->budget_per_day, 50);
        assert_int_equal(c->budget_credits_per_day, 400);
        assert_int_equal(c->budget_assumed_credits, 4);
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);
        assert_non_null(f);
        config_dump(c, f);
        assert_int_equal(fclose(f), 0);
        assert_non_null(strstr(out, "\n[budget]\nmax_submissions_per_hour = 3\n"
                                    "max_submissions_per_day = 50\nmax_credits_per_day = 400\n"
                                    "assumed_credits = 4\n"));
        free(out);
        config_free(c);

        expect_one_error("[budget]\nmax_submissions_per_hour = -1\n", 5,
                         "budget.max_submissions_per_hour");
        expect_one_error("[budget]\nmax_submissions_per_day = ten\n", 5, "invalid number 'ten'");
        expect_one_error("[budget]\n\nmax_credits_per_day = 1.5\n", 6, "invalid number");
        expect_one_error("[budget]\nassumed_credits = -4\n", 5, "invalid number '-4'");
        expect_one_error("[budget]\nmax_per_hour = 3\n", 5, "max_per_hour");

        setenv("VIDU_UPSCALED_BUDGET_MAX_SUBMISSIONS_PER_HOUR", "7", 1);
        c = load_ok(minimal);
        assert_int_equal(c->budget_per_hour, 7);
        config_free(c);
        setenv("VIDU_UPSCALED_BUDGET_MAX_CREDITS_PER_DAY", "-1", 1);
        struct config *bad = NULL;
        struct config_errors e = {0};
        write_main(minimal);
        assert_int_equal(config_load(main_path, &bad, &e), -EINVAL);
        assert_int_equal(e.n, 1);
        assert_non_null(strstr(e.lines[0], "VIDU_UPSCALED_BUDGET_MAX_CREDITS_PER_DAY"));
        config_errors_clear(&e);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_select_keys, setup, teardown),
            cmocka_unit_test_setup_teardown(test_budget_keys, setup, teardown),
            cmocka_unit_test_setup_teardown(test_store_keys, setup, teardown),
            cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
            cmocka_unit_test_setup_teardown(test_every_key, setup, teardown),
            cmocka_unit_test_setup_teardown(test_to_string, setup, teardown),
            cmocka_unit_test_setup_teardown(test_value_errors, setup, teardown),
            cmocka_unit_test_setup_teardown(test_cross_key_errors, setup, teardown),
            cmocka_unit_test_setup_teardown(test_several_errors_collected, setup, teardown),
            cmocka_unit_test_setup_teardown(test_unknown_section_once, setup, teardown),
            cmocka_unit_test_setup_teardown(test_long_lines, setup, teardown),
            cmocka_unit_test_setup_teardown(test_files, setup, teardown),
            cmocka_unit_test_setup_teardown(test_dropins, setup, teardown),
            cmocka_unit_test_setup_teardown(test_environment, setup, teardown),
            cmocka_unit_test_setup_teardown(test_api_key_sources, setup, teardown),
            cmocka_unit_test_setup_teardown(test_secret_rotation, setup, teardown),
            cmocka_unit_test_setup_teardown(test_dump, setup, teardown),
            cmocka_unit_test_setup_teardown(test_key_table, setup, teardown),
            cmocka_unit_test_setup_teardown(test_every_listed_key_is_accepted, setup, teardown),
            cmocka_unit_test_setup_teardown(test_dump_covers_the_table, setup, teardown),
            cmocka_unit_test_setup_teardown(test_callback_keys, setup, teardown),
            cmocka_unit_test_setup_teardown(test_events_keys, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
