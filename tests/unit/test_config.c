/* test_config.c: every key parsed, defaults, every kind of error with its FILE:LINE, conf.d
 * order, environment overrides, secrets from files and credentials, and a dump that never shows
 * a secret. */
#include <errno.h>
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
#include "util.h"

static char dir[64];

static int setup(void **state)
{
        strcpy(dir, "/tmp/vidu-config-test-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        unsetenv("CREDENTIALS_DIRECTORY");
        unsetenv("STATE_DIRECTORY");
        return 0;
}

static int teardown(void **state)
{
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        unsetenv("CREDENTIALS_DIRECTORY");
        unsetenv("VIDU_UPSCALED_RETRY_MAX_ATTEMPTS");
        unsetenv("VIDU_UPSCALED_NOPE");
        unsetenv("VIDU_UPSCALED_UPSTREAM_CONCURRENCY");
        return system(cmd) == 0 ? 0 : -1;
}

static char *write_file(const char *name, const char *text)
{
        static char path[256];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        char *slash = strrchr(path, '/');
        *slash = 0;
        mkdir(path, 0700);
        *slash = '/';
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
        return path;
}

static const char *minimal = "[upstream]\nbase_url = http://127.0.0.1:9/\napi_key = k3y\n";

static struct config *load_ok(const char *text)
{
        char *path = strdup(write_file("main.conf", text));
        struct config *c = NULL;
        struct config_errors e = {0};
        int r = config_load(path, &c, &e);
        if (r < 0)
                fail_msg("config_load failed: %s", e.n ? e.lines[0] : "?");
        free(path);
        return c;
}

/* Loads and expects exactly one error, starting with FILE:LINE (or the given prefix). */
static void expect_error(const char *text, int line, const char *needle)
{
        char *path = strdup(write_file("main.conf", text));
        struct config *c = NULL;
        struct config_errors e = {0};
        assert_int_equal(config_load(path, &c, &e), -EINVAL);
        assert_null(c);
        char prefix[300];
        if (line > 0)
                snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
        else
                snprintf(prefix, sizeof(prefix), "%s", "");
        bool found = false;
        for (size_t i = 0; i < e.n; i++)
                if (strncmp(e.lines[i], prefix, strlen(prefix)) == 0 && strstr(e.lines[i], needle))
                        found = true;
        if (!found)
                fail_msg("no error '%s%s...%s' among %zu: %s", prefix, "", needle, e.n,
                         e.n ? e.lines[0] : "");
        config_errors_clear(&e);
        free(path);
}

static void test_defaults(void **state)
{
        struct config *c = load_ok(minimal);
        assert_string_equal(c->listen, "127.0.0.1:8080");
        assert_string_equal(c->webhook_path, "/hooks/vidu");
        assert_int_equal(c->max_body, 1024 * 1024);
        assert_int_equal(c->auth_scheme, AUTH_SCHEME_NONE);
        assert_string_equal(c->base_url, "http://127.0.0.1:9");
        assert_string_equal(c->api_key.value, "k3y");
        assert_string_equal(c->auth_word, "Bearer");
        assert_int_equal(c->flavor, UPSTREAM_FLAVOR_V1);
        assert_int_equal(c->timeout, 30 * USEC_PER_SEC);
        assert_int_equal(c->concurrency, 8);
        assert_int_equal(c->poll_interval, 30 * USEC_PER_SEC);
        assert_string_equal(c->model, "stable");
        assert_int_equal(c->duration, 4);
        assert_string_equal(c->store_path, "./ledger.db");
        assert_true(c->synchronous_full);
        assert_int_equal(c->max_attempts, 10);
        assert_int_equal(c->initial_delay, 5 * USEC_PER_SEC);
        assert_int_equal(c->max_delay, 3600 * USEC_PER_SEC);
        assert_int_equal(c->uncertain, UNCERTAIN_HOLD);
        assert_int_equal(c->log_level, LOG_INFO);
        config_free(c);
        setenv("STATE_DIRECTORY", "/var/lib/vidu-upscaled:/other", 1);
        c = load_ok(minimal);
        assert_string_equal(c->store_path, "/var/lib/vidu-upscaled/ledger.db");
        config_free(c);
        unsetenv("STATE_DIRECTORY");
}

static void test_every_key(void **state)
{
        struct config *c = load_ok(
            "[server]\nlisten = [::1]:9000\nwebhook_path = /in\nmax_body = 64K\nmax_header = 8K\n"
            "max_connections = 10\nmax_per_ip = 2\nidle_timeout = 5s\nrequest_timeout = 7s\n"
            "allow_from = 10.0.0.0/8, ::1\ntls_cert = /c.pem\ntls_key = /k.pem\ndrain_timeout = "
            "3s\n"
            "[limits]\nmax_json_depth = 8\nmax_tasks = 5\nmax_creations = 6\n"
            "[auth]\nscheme = token\nsecret = one\nsecret = two\nheader = X-Sig\ntolerance = 1m\n"
            "public_url_prefix = /p\n"
            "[upstream]\nbase_url = https://gw.example\napi_key = k\nauth_scheme = Token\n"
            "flavor = ent-v2\ntimeout = 2s\nconnect_timeout = 1s\nconcurrency = 3\npoll_interval = "
            "500ms\n"
            "[upscale]\nmodel = fast\nduration = 8\nresolution = 4K\n"
            "[store]\npath = /tmp/l.db\nsynchronous = normal\n"
            "[retry]\nmax_attempts = 4\ninitial_delay = 200ms\nmax_delay = 2m\nuncertain = "
            "resubmit\n"
            "[log]\nlevel = debug\n");
        assert_string_equal(c->listen, "[::1]:9000");
        assert_string_equal(c->webhook_path, "/in");
        assert_int_equal(c->max_body, 65536);
        assert_int_equal(c->max_header, 8192);
        assert_int_equal(c->max_connections, 10);
        assert_int_equal(c->max_per_ip, 2);
        assert_int_equal(c->idle_timeout, 5 * USEC_PER_SEC);
        assert_int_equal(c->request_timeout, 7 * USEC_PER_SEC);
        assert_string_equal(c->allow_from, "10.0.0.0/8, ::1");
        assert_string_equal(c->tls_cert, "/c.pem");
        assert_string_equal(c->tls_key, "/k.pem");
        assert_int_equal(c->drain_timeout, 3 * USEC_PER_SEC);
        assert_int_equal(c->max_json_depth, 8);
        assert_int_equal(c->max_tasks, 5);
        assert_int_equal(c->max_creations, 6);
        assert_int_equal(c->auth_scheme, AUTH_SCHEME_TOKEN);
        assert_int_equal(c->n_secrets, 2);
        assert_string_equal(c->secrets[1].value, "two");
        assert_string_equal(c->auth_header, "X-Sig");
        assert_int_equal(c->auth_tolerance, 60 * USEC_PER_SEC);
        assert_string_equal(c->public_url_prefix, "/p");
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
        config_free(c);
}

static void test_errors_with_lines(void **state)
{
        char buf[512];
        snprintf(buf, sizeof(buf), "%s[server]\nbogus = 1\n", minimal);
        expect_error(buf, 5, "unknown key 'bogus' in [server]");
        snprintf(buf, sizeof(buf), "%s[nosuch]\na = b\n", minimal);
        expect_error(buf, 5, "unknown section [nosuch]");
        snprintf(buf, sizeof(buf), "%s[server]\nmax_body = lots\n", minimal);
        expect_error(buf, 5, "server.max_body: invalid size");
        snprintf(buf, sizeof(buf), "%s[upstream]\ntimeout = 5x\n", minimal);
        expect_error(buf, 5, "upstream.timeout: invalid duration");
        snprintf(buf, sizeof(buf), "%s[upstream]\nconcurrency = 0\n", minimal);
        expect_error(buf, 5, "out of range (1 to 1024)");
        snprintf(buf, sizeof(buf), "%s[upstream]\nflavor = v3\n", minimal);
        expect_error(buf, 5, "unknown value 'v3'");
        snprintf(buf, sizeof(buf), "%s[server]\nlisten = localhost\n", minimal);
        expect_error(buf, 5, "invalid address");
        snprintf(buf, sizeof(buf), "%s[server]\nallow_from = 10.0.0.0/8, 10.1\n", minimal);
        expect_error(buf, 5, "invalid address or CIDR '10.1'");
        snprintf(buf, sizeof(buf), "%s[server]\nwebhook_path = hooks\n", minimal);
        expect_error(buf, 5, "must start with '/'");
        snprintf(buf, sizeof(buf), "%s[upstream]\nbase_url = ftp://x\n", minimal);
        expect_error(buf, 5, "must start with http:// or https://");
        snprintf(buf, sizeof(buf), "%sthis line is not ini\n", minimal);
        expect_error(buf, 4, "syntax error");
        expect_error("[upstream]\napi_key = k\n", 0, "upstream.base_url is required");
        expect_error("[upstream]\nbase_url = http://x\n", 0, "no upstream API key");
        snprintf(buf, sizeof(buf), "%s[auth]\nscheme = hmac-sha256\n", minimal);
        expect_error(buf, 5, "needs a secret");
        snprintf(buf, sizeof(buf), "%s[auth]\nscheme = standard-webhooks\nsecret = plain\n",
                 minimal);
        expect_error(buf, 0, "not a whsec_<base64> secret");
        snprintf(buf, sizeof(buf), "%s[server]\ntls_cert = /c.pem\n", minimal);
        expect_error(buf, 5, "tls_cert and server.tls_key go together");
        snprintf(buf, sizeof(buf), "%s[retry]\ninitial_delay = 10s\nmax_delay = 5s\n", minimal);
        expect_error(buf, 6, "max_delay is shorter than retry.initial_delay");
}

static void test_all_errors_collected(void **state)
{
        char *path = strdup(
            write_file("main.conf", "[server]\na = 1\nb = 2\n[upstream]\nconcurrency = x\n"));
        struct config *c = NULL;
        struct config_errors e = {0};
        assert_int_equal(config_load(path, &c, &e), -EINVAL);
        /* Three key errors, then base_url and the API key missing. */
        assert_int_equal(e.n, 5);
        char want[300];
        snprintf(want, sizeof(want), "%s:3: unknown key 'b'", path);
        assert_non_null(strstr(e.lines[1], want));
        config_errors_clear(&e);
        free(path);
}

static void test_dropins_environment_and_missing_files(void **state)
{
        write_file("conf.d/20-late.conf", "[upstream]\nconcurrency = 20\n");
        write_file("conf.d/10-early.conf",
                   "[upstream]\nconcurrency = 10\n[upscale]\nmodel = early\n");
        write_file("conf.d/ignored.txt", "[nonsense]\n");
        struct config *c = load_ok(minimal);
        assert_int_equal(c->concurrency, 20);
        assert_string_equal(c->model, "early");
        config_free(c);
        setenv("VIDU_UPSCALED_UPSTREAM_CONCURRENCY", "30", 1);
        setenv("VIDU_UPSCALED_RETRY_MAX_ATTEMPTS", "2", 1);
        c = load_ok(minimal);
        assert_int_equal(c->concurrency, 30);
        assert_int_equal(c->max_attempts, 2);
        config_free(c);
        setenv("VIDU_UPSCALED_NOPE", "1", 1);
        expect_error(minimal, 0, "environment: VIDU_UPSCALED_NOPE: unknown setting");
        unsetenv("VIDU_UPSCALED_NOPE");
        setenv("VIDU_UPSCALED_UPSTREAM_CONCURRENCY", "lots", 1);
        expect_error(minimal, 0,
                     "environment: VIDU_UPSCALED_UPSTREAM_CONCURRENCY: not a whole number");
        unsetenv("VIDU_UPSCALED_UPSTREAM_CONCURRENCY");

        struct config_errors e = {0};
        char missing[128];
        snprintf(missing, sizeof(missing), "%s/absent.conf", dir);
        assert_int_equal(config_load(missing, &c, &e), -EINVAL);
        assert_non_null(strstr(e.lines[0], "cannot read"));
        config_errors_clear(&e);
}

static void test_secrets_from_files_and_credentials(void **state)
{
        char text[512];
        char *key = strdup(write_file("secrets/api-key", "from-file\n"));
        char *hooks = strdup(write_file("secrets/hooks", "s3cr3t-old\n\ns3cr3t-new\n"));
        snprintf(text, sizeof(text),
                 "[upstream]\nbase_url = http://x\napi_key_file = %s\n[auth]\nscheme = "
                 "token\nsecret_file = %s\n",
                 key, hooks);
        struct config *c = load_ok(text);
        assert_string_equal(c->api_key.value, "from-file");
        assert_int_equal(c->n_secrets, 2);
        assert_string_equal(c->secrets[0].value, "s3cr3t-old");
        assert_string_equal(c->secrets[1].value, "s3cr3t-new");

        /* --check-config's dump never shows a secret. */
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);
        config_dump(c, f);
        fclose(f);
        assert_null(strstr(out, "from-file"));
        assert_null(strstr(out, "s3cr3t"));
        assert_non_null(strstr(out, "api_key = (set)"));
        assert_non_null(strstr(out, "secret = (2 set)"));
        free(out);
        config_free(c);

        write_file("creds/api-key", "from-credential");
        write_file("creds/webhook-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n");
        char creds[128];
        snprintf(creds, sizeof(creds), "%s/creds", dir);
        setenv("CREDENTIALS_DIRECTORY", creds, 1);
        c = load_ok("[upstream]\nbase_url = http://x\n[auth]\nscheme = standard-webhooks\n");
        assert_string_equal(c->api_key.value, "from-credential");
        assert_int_equal(c->n_secrets, 1);
        config_free(c);
        unsetenv("CREDENTIALS_DIRECTORY");
        free(key);
        free(hooks);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
            cmocka_unit_test_setup_teardown(test_every_key, setup, teardown),
            cmocka_unit_test_setup_teardown(test_errors_with_lines, setup, teardown),
            cmocka_unit_test_setup_teardown(test_all_errors_collected, setup, teardown),
            cmocka_unit_test_setup_teardown(test_dropins_environment_and_missing_files, setup,
                                            teardown),
            cmocka_unit_test_setup_teardown(test_secrets_from_files_and_credentials, setup,
                                            teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
