/* config.c: loads the INI configuration (main file, conf.d drop-ins, environment overrides,
 * secrets from files or systemd credentials) into struct config, collecting every error as
 * "FILE:LINE: message". */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <ini.h>
#include <libgen.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <systemd/sd-id128.h>
#include <syslog.h>
#include <unistd.h>

#include "cidr.h"
#include "conninfo.h"
#include "event.h"
#include "pgconn.h"
#include "util.h"

#define ENV_PREFIX "VIDU_UPSCALED_"
#define SECRET_MAX (64 * 1024)
#define WHERE_SIZE 600
/* How much of a bad value an error message quotes: enough to recognise it, not a whole line. */
#define QUOTE_MAX 80
/* auth.c decodes a whsec_ key into a buffer of this many bytes; a longer one could never verify. */
#define WHSEC_KEY_MAX 128

/* The value kinds. Each parser reads text into its field; its dumper prints the field back in the
 * same spelling; its releaser frees what the parser allocated. */
#define PARSER(fn)                                                                                 \
        static const char *fn(const struct config_key *key, void *field, const char *v,            \
                              struct config_loader *L, char *msg, size_t msglen)
#define DUMPER(fn)                                                                                 \
        static void fn(const struct config_key *key, const struct config *c, const void *field,    \
                       FILE *f)
PARSER(parse_text);
PARSER(parse_choice);
PARSER(parse_path);
PARSER(parse_url_prefix);
PARSER(parse_url);
PARSER(parse_callback_url);
PARSER(parse_listen);
PARSER(parse_webpath);
PARSER(parse_cidrs);
PARSER(parse_size_key);
PARSER(parse_duration_key);
PARSER(parse_uint_key);
PARSER(parse_enum);
PARSER(parse_synchronous);
PARSER(parse_secret);
PARSER(parse_secret_list);
PARSER(parse_upscale_duration);
PARSER(parse_types);
PARSER(parse_rule);
PARSER(parse_store_url);
PARSER(parse_instance);
PARSER(parse_events_url);
PARSER(parse_event_types);
DUMPER(dump_text);
DUMPER(dump_size);
DUMPER(dump_duration);
DUMPER(dump_uint);
DUMPER(dump_enum);
DUMPER(dump_synchronous);
DUMPER(dump_secret);
DUMPER(dump_secret_list);
DUMPER(dump_nothing);
DUMPER(dump_upscale_duration);
DUMPER(dump_types);
DUMPER(dump_rules);
DUMPER(dump_store_url);
DUMPER(dump_event_types);
static void release_text(struct config *c, void *field);
static void release_secret(struct config *c, void *field);
static void release_secret_list(struct config *c, void *field);
static void release_types(struct config *c, void *field);
static void release_rules(struct config *c, void *field);

static const char *const scheme_names[] = {"none", "token", "hmac-sha256", "standard-webhooks",
                                           "vidu", NULL};
static const char *const flavor_names[] = {"v1", "ent-v2", NULL};
static const char *const uncertain_names[] = {"hold", "resubmit", NULL};
static const char *const backend_names[] = {"sqlite", "postgresql", NULL};
static const char *const pooler_names[] = {"none", "transaction", NULL};
static const char *const level_names[] = {"debug", "info", "notice", "warning", "err", NULL};
static const int level_values[] = {LOG_DEBUG, LOG_INFO, LOG_NOTICE, LOG_WARNING, LOG_ERR};
static const char *const resolution_names[] = {"1080p", "2K", "4K", "8K", NULL};
static const char *const no_yes_names[] = {"no", "yes", NULL};

/* One row: section, name, the parser (with its dumper and releaser), the field, then the parser's
 * arguments and the default text. */
#define ROW(s, n, parser, dumper, releaser, field, ...)                                            \
        {                                                                                          \
                .section = s, .name = n, .parse = parser, .dump = dumper, .release = releaser,     \
                .offset = offsetof(struct config, field), __VA_ARGS__                              \
        }
/* char * field, any text; fl: CONFIG_KEY_NONEMPTY, CONFIG_KEY_TOKEN */
#define STRING(s, n, field, fl, d)                                                                 \
        ROW(s, n, parse_text, dump_text, release_text, field, .flags = fl, .default_text = d)
/* char * field checked by parser: parse_path, parse_url, parse_listen, parse_cidrs, ... */
#define TEXT(s, n, parser, field, d)                                                               \
        ROW(s, n, parser, dump_text, release_text, field, .default_text = d)
/* char * field, one of names (a NULL-terminated array) */
#define CHOICE(s, n, field, nm, d)                                                                 \
        ROW(s, n, parse_choice, dump_text, release_text, field, .names = nm, .default_text = d)
/* A file path read once loading is done; not shown by the dump (what it held is). */
#define FILE_PATH(s, n, field)                                                                     \
        ROW(s, n, parse_path, dump_nothing, release_text, field, .default_text = NULL)
/* uint64_t fields in [lo, hi]: bytes (1M), usec (30s), or a plain number */
#define SIZE(s, n, field, lo, hi, d)                                                               \
        ROW(s, n, parse_size_key, dump_size, NULL, field, .min = lo, .max = hi, .default_text = d)
#define DURATION(s, n, field, lo, hi, d)                                                           \
        ROW(s, n, parse_duration_key, dump_duration, NULL, field, .min = lo, .max = hi,            \
            .default_text = d)
#define UINT(s, n, field, lo, hi, d)                                                               \
        ROW(s, n, parse_uint_key, dump_uint, NULL, field, .min = lo, .max = hi, .default_text = d)
/* int-sized field: the index of the name in nm, or vals[index] */
#define ENUM(s, n, field, nm, vals, d)                                                             \
        ROW(s, n, parse_enum, dump_enum, NULL, field, .names = nm, .values = vals,                 \
            .default_text = d)

#define SEC USEC_PER_SEC
#define MS  USEC_PER_MSEC

/* Every key, once. Adding a key is one row here plus its field in struct config. */
static const struct config_key keys[] = {
    TEXT("server", "listen", parse_listen, listen, "127.0.0.1:8080"),
    TEXT("server", "webhook_path", parse_webpath, webhook_path, "/hooks/vidu"),
    SIZE("server", "max_body", max_body, 1, 1ULL << 30, "1M"),
    SIZE("server", "max_header", max_header, 1024, 1 << 20, "16K"),
    UINT("server", "max_header_lines", max_header_lines, 8, 10000, "100"),
    UINT("server", "max_connections", max_connections, 1, 1000000, "512"),
    UINT("server", "max_per_ip", max_per_ip, 0, 1000000, "64"),
    DURATION("server", "idle_timeout", idle_timeout, SEC, 86400 * SEC, "30s"),
    DURATION("server", "request_timeout", request_timeout, SEC, 86400 * SEC, "60s"),
    TEXT("server", "allow_from", parse_cidrs, allow_from, NULL),
    TEXT("server", "tls_cert", parse_path, tls_cert, NULL),
    TEXT("server", "tls_key", parse_path, tls_key, NULL),
    DURATION("server", "drain_timeout", drain_timeout, 0, 3600 * SEC, "10s"),
    UINT("limits", "max_json_depth", max_json_depth, 2, 1000, "32"),
    UINT("limits", "max_tasks", max_tasks, 1, 1000000, "1000"),
    UINT("limits", "max_creations", max_creations, 1, 10000000, "10000"),
    ENUM("auth", "scheme", auth_scheme, scheme_names, NULL, "none"),
    ROW("auth", "secret", parse_secret_list, dump_secret_list, release_secret_list, secrets,
        .flags = CONFIG_KEY_SECRET | CONFIG_KEY_REPEAT),
    FILE_PATH("auth", "secret_file", secret_file),
    STRING("auth", "header", auth_header, CONFIG_KEY_NONEMPTY | CONFIG_KEY_TOKEN,
           "X-Hub-Signature-256"),
    DURATION("auth", "tolerance", auth_tolerance, SEC, 86400 * SEC, "5m"),
    TEXT("auth", "public_url_prefix", parse_url_prefix, public_url_prefix, NULL),
    TEXT("upstream", "base_url", parse_url, base_url, NULL),
    ROW("upstream", "api_key", parse_secret, dump_secret, release_secret, api_key,
        .flags = CONFIG_KEY_SECRET),
    FILE_PATH("upstream", "api_key_file", api_key_file),
    STRING("upstream", "auth_scheme", auth_word, CONFIG_KEY_NONEMPTY | CONFIG_KEY_TOKEN, "Bearer"),
    ENUM("upstream", "flavor", flavor, flavor_names, NULL, "v1"),
    DURATION("upstream", "timeout", timeout, 100 * MS, 3600 * SEC, "30s"),
    DURATION("upstream", "connect_timeout", connect_timeout, 100 * MS, 3600 * SEC, "10s"),
    UINT("upstream", "concurrency", concurrency, 1, 1024, "8"),
    DURATION("upstream", "poll_interval", poll_interval, 100 * MS, 86400 * SEC, "30s"),
    TEXT("upstream", "callback_url", parse_callback_url, callback_url, NULL),
    DURATION("upstream", "callback_grace", callback_grace, 0, 7 * 86400 * SEC, "10m"),
    STRING("upscale", "model", model, CONFIG_KEY_NONEMPTY, "stable"),
    ROW("upscale", "duration", parse_upscale_duration, dump_upscale_duration, NULL, duration,
        .min = 1, .max = 3600, .default_text = "4"),
    CHOICE("upscale", "resolution", resolution, resolution_names, "1080p"),
    ROW("select", "task_types", parse_types, dump_types, release_types, select.task_types,
        .default_text = SELECT_DEFAULT_TASK_TYPES),
    ROW("select", "creation_types", parse_types, dump_types, release_types, select.creation_types,
        .default_text = SELECT_DEFAULT_CREATION_TYPES),
    ROW("select", "match", parse_rule, dump_rules, release_rules, select.rules,
        .flags = CONFIG_KEY_REPEAT),
    TEXT("store", "path", parse_path, store_path, NULL),
    ROW("store", "synchronous", parse_synchronous, dump_synchronous, NULL, synchronous_full,
        .default_text = "full"),
    ENUM("store", "backend", store_backend, backend_names, NULL, "sqlite"),
    ROW("store", "url", parse_store_url, dump_store_url, release_text, store_url),
    FILE_PATH("store", "password_file", store_password_file),
    TEXT("store", "instance", parse_instance, store_instance, NULL),
    DURATION("store", "lease", store_lease, SEC, 3600 * SEC, "30s"),
    DURATION("store", "statement_timeout", store_statement_timeout, 100 * MS, 3600 * SEC, "5s"),
    DURATION("store", "reconnect_max", store_reconnect_max, 100 * MS, 3600 * SEC, "5s"),
    ENUM("store", "pooler", store_pooler, pooler_names, NULL, "none"),
    UINT("retry", "max_attempts", max_attempts, 1, 1000, "10"),
    DURATION("retry", "initial_delay", initial_delay, MS, 86400 * SEC, "5s"),
    DURATION("retry", "max_delay", max_delay, MS, 7 * 86400 * SEC, "1h"),
    ENUM("retry", "uncertain", uncertain, uncertain_names, NULL, "hold"),
    UINT("budget", "max_submissions_per_hour", budget_per_hour, 0, 1000000000, "0"),
    UINT("budget", "max_submissions_per_day", budget_per_day, 0, 1000000000, "0"),
    UINT("budget", "max_credits_per_day", budget_credits_per_day, 0, 1000000000000ULL, "0"),
    UINT("budget", "assumed_credits", budget_assumed_credits, 0, 1000000000, "0"),
    ENUM("log", "level", log_level, level_names, level_values, "info"),
    ENUM("log", "fold_accepted", fold_accepted, no_yes_names, NULL, "yes"),
    TEXT("events", "url", parse_events_url, events_url, NULL),
    ROW("events", "types", parse_event_types, dump_event_types, NULL, events_states,
        .default_text = "upscale.succeeded upscale.failed upscale.dead upscale.uncertain"),
    ROW("events", "secret", parse_secret_list, dump_secret_list, release_secret_list,
        events_secrets, .flags = CONFIG_KEY_SECRET | CONFIG_KEY_REPEAT),
    FILE_PATH("events", "secret_file", events_secret_file),
    UINT("events", "concurrency", events_concurrency, 1, 256, "4"),
    DURATION("events", "timeout", events_timeout, 100 * MS, 3600 * SEC, "10s"),
    DURATION("events", "max_age", events_max_age, SEC, 3650 * 86400 * SEC, "24h"),
    DURATION("events", "keep", events_keep, 0, 3650 * 86400 * SEC, "7d"),
};
#undef SEC
#undef MS
#define N_KEYS ELEMENTSOF(keys)

const struct config_key *config_keys(size_t *n)
{
        *n = N_KEYS;
        return keys;
}

struct config_loader {
        struct config *c;
        struct config_errors *errors;
        bool failed;      /* an error was found (even if it could not be stored) */
        bool oom;         /* an allocation failed */
        const char *file; /* current source, for messages */
        unsigned source;  /* counts sources, so repeatable keys know when a new one begins */
        unsigned line;    /* current line of the current file */
        int read_errno;   /* a read error inside the current file */
        FILE *stream;
        bool in_unknown_section;        /* its header was reported; its keys need not be */
        char where[N_KEYS][WHERE_SIZE]; /* where each key was last set; "" = default */
        /* CONFIG_KEY_REPEAT: the source whose lines are in effect, for each key */
        unsigned repeat_source[N_KEYS];
        bool api_key_failed; /* a key source was named but could not be used */
        bool secrets_failed;
        char secrets_where[WHERE_SIZE]; /* where the auth secrets in effect came from */
        bool events_secrets_failed;
        char events_secrets_where[WHERE_SIZE];
};

static void add_error(struct config_loader *L, const char *fmt, ...) _printf_(2, 3);
static void add_error(struct config_loader *L, const char *fmt, ...)
{
        struct config_errors *e = L->errors;
        va_list ap;
        char *line = NULL;

        L->failed = true;
        va_start(ap, fmt);
        if (vasprintf(&line, fmt, ap) < 0)
                line = NULL;
        va_end(ap);
        if (!line) {
                L->oom = true;
                return;
        }
        char **lines = realloc(e->lines, (e->n + 1) * sizeof(*lines));
        if (!lines) {
                free(line);
                L->oom = true;
                return;
        }
        e->lines = lines;
        e->lines[e->n++] = line;
}

void config_errors_clear(struct config_errors *e)
{
        if (!e)
                return;
        for (size_t i = 0; i < e->n; i++)
                free(e->lines[i]);
        free(e->lines);
        e->lines = NULL;
        e->n = 0;
}

static void secret_clear(struct secret *s)
{
        if (s->value) {
                explicit_bzero(s->value, s->len);
                free(s->value);
        }
        s->value = NULL;
        s->len = 0;
}

/* The count that goes with a list of secrets in struct config (auth's or events'). */
static size_t *secrets_count(struct config *c, struct secret *list)
{
        return list == c->events_secrets ? &c->n_events_secrets : &c->n_secrets;
}

static void secrets_clear(struct config *c, struct secret *list)
{
        size_t *n = secrets_count(c, list);
        for (size_t i = 0; i < *n; i++)
                secret_clear(&list[i]);
        *n = 0;
}

struct config *config_free(struct config *c)
{
        if (!c)
                return NULL;
        for (size_t i = 0; i < N_KEYS; i++)
                if (keys[i].release)
                        keys[i].release(c, (char *)c + keys[i].offset);
        secret_clear(&c->store_password);
        free(c);
        return NULL;
}

const char *auth_scheme_to_string(enum auth_scheme s)
{
        return (unsigned)s < ELEMENTSOF(scheme_names) - 1 ? scheme_names[s] : "unknown";
}

const char *upstream_flavor_to_string(enum upstream_flavor f)
{
        return (unsigned)f < ELEMENTSOF(flavor_names) - 1 ? flavor_names[f] : "unknown";
}

const char *store_backend_to_string(enum store_backend b)
{
        return (unsigned)b < ELEMENTSOF(backend_names) - 1 ? backend_names[b] : "unknown";
}

int config_store_instance(const struct config *c, char *buf, size_t len)
{
        if (c->store_instance) {
                if ((size_t)snprintf(buf, len, "%s", c->store_instance) >= len)
                        return -ENOBUFS;
                return 0;
        }
        sd_id128_t id;
        int r = sd_id128_get_machine(&id);
        if (r < 0)
                return r;
        if ((size_t)snprintf(buf, len, SD_ID128_FORMAT_STR "-%ld", SD_ID128_FORMAT_VAL(id),
                             (long)getpid()) >= len)
                return -ENOBUFS;
        return 0;
}

/* "1M" when exact, else bytes: the same spelling parse_size reads back. */
static void format_size(uint64_t v, char *buf, size_t len)
{
        static const struct {
                uint64_t f;
                const char *s;
        } units[] = {{1ULL << 30, "G"}, {1ULL << 20, "M"}, {1ULL << 10, "K"}};
        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (v != 0 && v % units[i].f == 0) {
                        snprintf(buf, len, "%llu%s", (unsigned long long)(v / units[i].f),
                                 units[i].s);
                        return;
                }
        snprintf(buf, len, "%llu", (unsigned long long)v);
}

static bool has_control(const char *s, size_t len)
{
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                        return true;
        return false;
}

/* RFC 9110 tchar: what a header name (and an auth scheme word) may be made of. */
static bool is_token(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s))
                        return false;
        return true;
}

static bool valid_hostname(const char *s, size_t n)
{
        if (n == 0 || n > 253)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '.')
                        return false;
        return true;
}

static bool valid_listen(const char *v)
{
        const char *port;
        if (strncmp(v, "unix:", 5) == 0)
                return v[5] == '/' && strlen(v + 5) < sizeof(((struct sockaddr_un *)0)->sun_path);
        if (v[0] == '[') {
                const char *end = strchr(v, ']');
                char host[INET6_ADDRSTRLEN];
                struct in6_addr a;
                if (!end || end[1] != ':')
                        return false;
                size_t n = (size_t)(end - v - 1);
                if (n == 0 || n >= sizeof(host))
                        return false;
                memcpy(host, v + 1, n);
                host[n] = 0;
                if (inet_pton(AF_INET6, host, &a) != 1)
                        return false;
                port = end + 2;
        } else {
                const char *colon = strrchr(v, ':');
                /* A bare IPv6 address has colons of its own; it needs the brackets. */
                if (!colon || !valid_hostname(v, (size_t)(colon - v)))
                        return false;
                port = colon + 1;
        }
        uint64_t p;
        return parse_uint(port, 1, 65535, &p) >= 0;
}

/* Checks standard base64 (padded) and returns the decoded length, or -EINVAL. */
static ssize_t base64_decoded_len(const char *s)
{
        size_t n = strlen(s), pad = 0;
        if (n == 0 || n % 4 != 0)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];
                if (ch == '=') {
                        /* Padding: only in the last two places, and nothing but '=' after it. */
                        if (i < n - 2 || (i == n - 2 && s[n - 1] != '='))
                                return -EINVAL;
                        pad++;
                } else if (!isalnum((unsigned char)ch) && ch != '+' && ch != '/')
                        return -EINVAL;
        }
        return (ssize_t)(n / 4 * 3 - pad);
}

static int add_secret(struct config *c, struct secret *list, const char *v, size_t len)
{
        size_t *n = secrets_count(c, list);
        if (*n >= CONFIG_MAX_SECRETS)
                return -E2BIG;
        char *copy = strndup_safe(v, len);
        if (!copy)
                return -ENOMEM;
        list[*n].value = copy;
        list[*n].len = len;
        (*n)++;
        return 0;
}

/* "(use v1 or ent-v2)" for an enum's accepted names. */
static void describe_names(const char *const *names, char *buf, size_t len)
{
        size_t n = 0, o;
        while (names[n])
                n++;
        o = (size_t)snprintf(buf, len, "(use ");
        for (size_t i = 0; i < n && o < len; i++) {
                const char *sep = ", ";
                if (i == 0)
                        sep = "";
                else if (i + 1 == n)
                        sep = " or ";
                o += (size_t)snprintf(buf + o, len - o, "%s%s", sep, names[i]);
        }
        if (o < len)
                snprintf(buf + o, len - o, ")");
}

static const char *out_of_memory(struct config_loader *L)
{
        L->oom = true;
        return "out of memory";
}

/* The arguments for "'%.*s%s'": the value, cut to QUOTE_MAX with "..." when longer. */
#define QUOTED(v) (int)strnlen(v, QUOTE_MAX), v, strlen(v) > QUOTE_MAX ? "..." : ""

/* Stores a copy of v (NULL for an empty v when empty_is_unset) in the char * field. */
static const char *store_text(struct config_loader *L, void *field, const char *v,
                              bool empty_is_unset)
{
        char *copy = NULL;
        if (*v || !empty_is_unset) {
                copy = strdup(v);
                if (!copy)
                        return out_of_memory(L);
        }
        free(*(char **)field);
        *(char **)field = copy;
        return NULL;
}

static void strip_trailing_slashes(char *s)
{
        size_t n = strlen(s);
        while (n > 0 && s[n - 1] == '/')
                s[--n] = 0;
}

PARSER(parse_text)
{
        if ((key->flags & CONFIG_KEY_NONEMPTY) && !*v)
                return "must not be empty";
        if ((key->flags & CONFIG_KEY_TOKEN) && !is_token(v)) {
                snprintf(msg, msglen,
                         "'%.*s%s' is not a valid HTTP token (use letters, digits and "
                         "-_.!#$%%&'*+^`|~, no spaces)",
                         QUOTED(v));
                return msg;
        }
        return store_text(L, field, v, false);
}

PARSER(parse_choice)
{
        char names[160];
        for (size_t i = 0; key->names[i]; i++)
                if (strcmp(v, key->names[i]) == 0)
                        return store_text(L, field, v, false);
        describe_names(key->names, names, sizeof(names));
        snprintf(msg, msglen, "unknown value '%.*s%s' %s", QUOTED(v), names);
        return msg;
}

/* A file path; empty = unset. */
PARSER(parse_path)
{
        return store_text(L, field, v, true);
}

/* A URL path prefix: empty = unset, else starts with '/', kept without trailing '/'. */
PARSER(parse_url_prefix)
{
        if (*v && v[0] != '/') {
                snprintf(msg, msglen,
                         "'%.*s%s' must start with '/' (e.g. /api, the part of the "
                         "callback URL's path before the webhook path)",
                         QUOTED(v));
                return msg;
        }
        const char *err = store_text(L, field, v, true);
        char **p = field;
        if (!err && *p) {
                /* "/api/" + "/hooks/vidu" would sign "/api//hooks/vidu". */
                strip_trailing_slashes(*p);
                if (!**p) {
                        free(*p);
                        *p = NULL;
                }
        }
        return err;
}

/* http(s)://host...; empty = unset; kept without trailing '/'. */
/* What is wrong with an http(s) URL (or NULL): a scheme, a host, no space. */
static const char *url_problem(const char *v, const char *example, char *msg, size_t msglen)
{
        size_t scheme = strncmp(v, "http://", 7) == 0 ? 7 : strncmp(v, "https://", 8) == 0 ? 8 : 0;
        const char *why = NULL;
        if (!*v)
                return NULL;
        if (scheme == 0)
                why = "must start with http:// or https://";
        else if (v[scheme] == 0 || v[scheme] == '/' || v[scheme] == '?')
                why = "is not a URL with a host";
        for (const unsigned char *p = (const unsigned char *)v; !why && *p; p++)
                if (*p <= ' ' || *p == 0x7f || *p == '"' || *p == '<' || *p == '>' || *p == '\\')
                        why = "holds a space or a character a URL cannot hold unescaped";
        if (!why)
                return NULL;
        snprintf(msg, msglen, "'%.*s%s' %s (e.g. %s)", QUOTED(v), why, example);
        return msg;
}

PARSER(parse_url)
{
        const char *bad = url_problem(v, "https://api.example.com", msg, msglen);
        if (bad)
                return bad;
        const char *err = store_text(L, field, v, true);
        if (!err && *(char **)field)
                strip_trailing_slashes(*(char **)field);
        return err;
}

/* The URL the upstream calls back: http(s)://host..., kept exactly as written (a trailing '/' is
 * part of the path it calls); no fragment, nothing a URL cannot hold unescaped; empty = unset. */
PARSER(parse_callback_url)
{
        const char *why = url_problem(v, "https://hooks.example.com/hooks/vidu", msg, msglen);
        if (why)
                return why;
        if (strchr(v, '#'))
                why = "has a fragment (#...), which is never sent to a server";
        else if (strlen(v) > 2048)
                why = "is longer than 2048 bytes";
        if (why) {
                snprintf(msg, msglen, "'%.*s%s' %s", QUOTED(v), why);
                return msg;
        }
        return store_text(L, field, v, true); /* empty: callbacks off */
}

/* Where events go: an http(s) URL as written, or unix:/absolute/path. */
PARSER(parse_events_url)
{
        if (strncmp(v, "unix:", 5) == 0) {
                const char *path = v + 5;
                if (path[0] != '/' || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
                        snprintf(msg, msglen,
                                 "'%.*s%s' needs an absolute socket path shorter than %zu bytes "
                                 "(e.g. unix:/run/pipeline/events.sock)",
                                 QUOTED(v), sizeof(((struct sockaddr_un *)0)->sun_path));
                        return msg;
                }
        } else {
                const char *bad = url_problem(v,
                                              "https://pipeline.example.com/hooks/upscaled or "
                                              "unix:/run/pipeline/events.sock",
                                              msg, msglen);
                if (bad)
                        return bad;
        }
        return store_text(L, field, v, true);
}

/* A mask of the job states whose events are sent: type names, space or comma separated. */
PARSER(parse_event_types)
{
        unsigned mask = 0;
        char word[64];
        for (const char *p = v; *p;) {
                size_t n = strcspn(p, " ,");
                if (n > 0) {
                        snprintf(word, sizeof(word), "%.*s", (int)(n < sizeof(word) ? n : 0), p);
                        int st = n < sizeof(word) ? event_state_for_type(word) : -EINVAL;
                        if (st < 0) {
                                snprintf(msg, msglen,
                                         "unknown event type '%.*s' (use upscale.succeeded, "
                                         "upscale.failed, upscale.dead or upscale.uncertain)",
                                         (int)(n < QUOTE_MAX ? n : QUOTE_MAX), p);
                                return msg;
                        }
                        mask |= 1u << st;
                }
                p += n;
                p += strspn(p, " ,");
        }
        if (mask == 0)
                return "name at least one event type (upscale.succeeded, upscale.failed, "
                       "upscale.dead, upscale.uncertain), or leave events.url unset";
        *(unsigned *)field = mask;
        return NULL;
}

/* host:port, [v6]:port or unix:/path */
PARSER(parse_listen)
{
        if (!valid_listen(v)) {
                snprintf(msg, msglen,
                         "invalid address '%.*s%s' (use host:port as in 127.0.0.1:8080, "
                         "[::1]:8080, or unix:/run/vidu-upscaled.sock)",
                         QUOTED(v));
                return msg;
        }
        return store_text(L, field, v, false);
}

/* A URL path starting with '/'. */
PARSER(parse_webpath)
{
        if (v[0] != '/' || strchr(v, ' ') || strchr(v, '?') || strchr(v, '#')) {
                snprintf(msg, msglen,
                         "'%.*s%s' must be a URL path starting with '/' (e.g. /hooks/vidu), "
                         "without spaces, '?' or '#'",
                         QUOTED(v));
                return msg;
        }
        return store_text(L, field, v, false);
}

/* An address list, kept as written; one with no entry (empty) = everyone (NULL). */
PARSER(parse_cidrs)
{
        struct cidr_list l = {0};
        const char *bad = NULL;
        int r = cidr_list_parse(v, &l, &bad);
        if (r == -ENOMEM)
                return out_of_memory(L);
        if (r < 0) {
                const char *b = bad ? bad : v;
                int blen = (int)strcspn(b, ", \t");
                snprintf(msg, msglen,
                         "invalid address or CIDR '%.*s' (use e.g. 10.0.0.0/8, "
                         "192.168.1.7, ::1, fd00::/8, separated by commas or spaces)",
                         blen > QUOTE_MAX ? QUOTE_MAX : blen, b);
                return msg;
        }
        size_t n = l.n;
        cidr_list_clear(&l);
        return store_text(L, field, n > 0 ? v : "", true);
}

PARSER(parse_size_key)
{
        char lo[32], hi[32];
        uint64_t u;
        if (parse_size(v, &u) < 0) {
                snprintf(msg, msglen, "invalid size '%.*s%s' (use e.g. 512K, 1M, 65536)",
                         QUOTED(v));
                return msg;
        }
        if (u < key->min || u > key->max) {
                format_size(key->min, lo, sizeof(lo));
                format_size(key->max, hi, sizeof(hi));
                snprintf(msg, msglen, "'%.*s%s' is out of range (use %s to %s)", QUOTED(v), lo, hi);
                return msg;
        }
        *(uint64_t *)field = u;
        return NULL;
}

PARSER(parse_duration_key)
{
        char lo[32], hi[32];
        uint64_t u;
        if (parse_duration(v, &u) < 0) {
                snprintf(msg, msglen, "invalid duration '%.*s%s' (use e.g. 30s, 500ms, 5m, 1h)",
                         QUOTED(v));
                return msg;
        }
        if (u < key->min || u > key->max) {
                format_duration(key->min, lo, sizeof(lo));
                format_duration(key->max, hi, sizeof(hi));
                snprintf(msg, msglen, "'%.*s%s' is out of range (use %s to %s)", QUOTED(v), lo, hi);
                return msg;
        }
        *(uint64_t *)field = u;
        return NULL;
}

PARSER(parse_uint_key)
{
        uint64_t u;
        if (parse_uint(v, 0, UINT64_MAX, &u) == -EINVAL) {
                snprintf(msg, msglen,
                         "invalid number '%.*s%s' (use a whole number from %llu to %llu)",
                         QUOTED(v), (unsigned long long)key->min, (unsigned long long)key->max);
                return msg;
        }
        /* Too large for 64 bits (-ERANGE) is out of range too. */
        if (parse_uint(v, key->min, key->max, &u) < 0) {
                snprintf(msg, msglen, "'%.*s%s' is out of range (use %llu to %llu)", QUOTED(v),
                         (unsigned long long)key->min, (unsigned long long)key->max);
                return msg;
        }
        *(uint64_t *)field = u;
        return NULL;
}

/* An int-sized field (the enums, a syslog level): the index of the name, or values[index]. */
PARSER(parse_enum)
{
        char names[160];
        for (size_t i = 0; key->names[i]; i++)
                if (strcmp(v, key->names[i]) == 0) {
                        *(int *)field = key->values ? key->values[i] : (int)i;
                        return NULL;
                }
        describe_names(key->names, names, sizeof(names));
        snprintf(msg, msglen, "unknown value '%.*s%s' %s", QUOTED(v), names);
        return msg;
}

/* bool: full (true) | normal (false) */
PARSER(parse_synchronous)
{
        if (strcmp(v, "full") == 0)
                *(bool *)field = true;
        else if (strcmp(v, "normal") == 0)
                *(bool *)field = false;
        else {
                snprintf(msg, msglen, "unknown value '%.*s%s' (use full or normal)", QUOTED(v));
                return msg;
        }
        return NULL;
}

/* A libpq connection string, checked by libpq's own parser without connecting; empty = unset.
 * It may hold a password: a message quotes libpq's complaint only when it holds none. */
PARSER(parse_store_url)
{
        char *masked = NULL, *err = NULL;
        if (!*v)
                return store_text(L, field, v, true);
        int secret = conninfo_mask(v, &masked);
        free(masked);
        if (secret == -ENOMEM)
                return out_of_memory(L);
        if (pgconn_check_conninfo(v, &err) < 0) {
                if (secret == 0 && err && !strcasestr(v, "password"))
                        snprintf(msg, msglen,
                                 "not a libpq connection URI or key=value string: %.200s (e.g. "
                                 "postgresql://vidu@db.example.com/vidu?sslmode=verify-full)",
                                 err);
                else
                        snprintf(msg, msglen,
                                 "not a libpq connection URI or key=value string (libpq's "
                                 "complaint is not shown: the value holds a password; e.g. "
                                 "postgresql://vidu@db.example.com/vidu?sslmode=verify-full)");
                free(err);
                return msg;
        }
        if (secret < 0)
                return "a connection string whose password cannot be told apart from the rest; "
                       "write it as a URI (postgresql://...) or as key=value pairs";
        return store_text(L, field, v, true);
}

/* The name claims are made under: letters, digits and ._:@- (it shows in the ledger and the
 * journal), at most 100; empty = the default. */
PARSER(parse_instance)
{
        if (strlen(v) > 100 ||
            strspn(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-") !=
                strlen(v)) {
                snprintf(msg, msglen,
                         "'%.*s%s' is not an instance name (use up to 100 letters, digits and "
                         "._:@-, e.g. web-1; empty for the machine id and pid)",
                         QUOTED(v));
                return msg;
        }
        return store_text(L, field, v, true);
}

/* struct secret; empty = unset. Never quoted in a message. */
PARSER(parse_secret)
{
        struct secret *s = field;
        secret_clear(s);
        if (*v) {
                s->value = strdup(v);
                if (!s->value)
                        return out_of_memory(L);
                s->len = strlen(v);
        }
        return NULL;
}

/* A list of secrets (auth's secrets[] or events' events_secrets[], with their count): one more
 * per line. */
PARSER(parse_secret_list)
{
        if (!*v)
                return "empty secret; remove the line, or put the secret after '='";
        switch (add_secret(L->c, field, v, strlen(v))) {
        case 0:
                return NULL;
        case -E2BIG:
                snprintf(msg, msglen,
                         "too many secrets (at most %d); remove the oldest once senders use a "
                         "newer one",
                         CONFIG_MAX_SECRETS);
                return msg;
        default:
                return out_of_memory(L);
        }
}

/* uint64_t, in [min, max], or `source` (duration_source; the field then holds the fallback). */
PARSER(parse_upscale_duration)
{
        if (strcmp(v, "source") == 0) {
                L->c->duration_source = true;
                *(uint64_t *)field = UPSCALE_DURATION_FALLBACK;
                return NULL;
        }
        const char *err = parse_uint_key(key, field, v, L, msg, msglen);
        if (!err) {
                L->c->duration_source = false;
                return NULL;
        }
        if (err == msg) {
                size_t n = strlen(msg);
                snprintf(msg + n, msglen - n, ", or source (the source task's own duration)");
        }
        return err;
}

/* struct select_types: a space-separated list of type names. */
PARSER(parse_types)
{
        struct select_types t;
        const char *why = NULL;
        int r = select_types_parse(v, &t, &why);
        if (r == -ENOMEM)
                return out_of_memory(L);
        if (r < 0) {
                snprintf(msg, msglen, "'%.*s%s': %s", QUOTED(v), why);
                return msg;
        }
        select_types_clear(field);
        *(struct select_types *)field = t;
        return NULL;
}

/* One more select.match rule into the selection's rules (field is select.rules, beside
 * n_rules); an empty value removes every rule. */
PARSER(parse_rule)
{
        struct selection *sel = &L->c->select;
        struct select_rule rule;
        const char *why = NULL;
        if (isempty(v)) {
                release_rules(L->c, field);
                return NULL;
        }
        int r = select_rule_parse(v, &rule, &why);
        if (r == -ENOMEM)
                return out_of_memory(L);
        if (r < 0) {
                snprintf(msg, msglen, "'%.*s%s': %s", QUOTED(v), why);
                return msg;
        }
        struct select_rule *rules = realloc(sel->rules, (sel->n_rules + 1) * sizeof(*rules));
        if (!rules) {
                select_rule_clear(&rule);
                return out_of_memory(L);
        }
        sel->rules = rules;
        rules[sel->n_rules++] = rule;
        return NULL;
}

static void print_value(const struct config_key *key, const char *value, FILE *f)
{
        if (isempty(value))
                fprintf(f, "%s =\n", key->name);
        else
                fprintf(f, "%s = %s\n", key->name, value);
}

DUMPER(dump_text)
{
        print_value(key, *(char *const *)field, f);
}

DUMPER(dump_size)
{
        char buf[64];
        format_size(*(const uint64_t *)field, buf, sizeof(buf));
        print_value(key, buf, f);
}

DUMPER(dump_duration)
{
        char buf[64];
        format_duration(*(const uint64_t *)field, buf, sizeof(buf));
        print_value(key, buf, f);
}

DUMPER(dump_uint)
{
        fprintf(f, "%s = %llu\n", key->name, (unsigned long long)*(const uint64_t *)field);
}

DUMPER(dump_enum)
{
        int v = *(const int *)field;
        const char *name = "?";
        for (size_t i = 0; key->names[i]; i++)
                if ((key->values ? key->values[i] : (int)i) == v)
                        name = key->names[i];
        print_value(key, name, f);
}

DUMPER(dump_synchronous)
{
        print_value(key, *(const bool *)field ? "full" : "normal", f);
}

DUMPER(dump_secret)
{
        print_value(key, ((const struct secret *)field)->value ? "(set)" : "(unset)", f);
}

/* One line per secret, as they are written; never the value. */
DUMPER(dump_secret_list)
{
        size_t n = *secrets_count((struct config *)c, (struct secret *)field);
        if (n == 0)
                print_value(key, "(unset)", f);
        for (size_t i = 0; i < n; i++)
                print_value(key, "(set)", f);
}

DUMPER(dump_upscale_duration)
{
        if (c->duration_source)
                print_value(key, "source", f);
        else
                dump_uint(key, c, field, f);
}

DUMPER(dump_types)
{
        char *s = select_types_format(field);
        print_value(key, s ? s : "(out of memory)", f);
        free(s);
}

/* One line per rule, as parsed (single spaces); "match =" when there is none. */
DUMPER(dump_rules)
{
        const struct selection *sel = &c->select;
        if (sel->n_rules == 0)
                print_value(key, NULL, f);
        for (size_t i = 0; i < sel->n_rules; i++)
                print_value(key, sel->rules[i].text, f);
}

DUMPER(dump_event_types)
{
        unsigned mask = *(const unsigned *)field;
        fprintf(f, "%s =", key->name);
        for (int st = 0; st < _JOB_STATE_MAX; st++)
                if ((mask & (1u << st)) && event_type_for_state((enum job_state)st))
                        fprintf(f, " %s", event_type_for_state((enum job_state)st));
        fprintf(f, "\n");
}

/* The connection string with its password masked; parse_store_url let none through that
 * conninfo_mask cannot read. */
DUMPER(dump_store_url)
{
        const char *url = *(char *const *)field;
        char *masked = NULL;
        if (!url) {
                print_value(key, NULL, f);
                return;
        }
        int r = conninfo_mask(url, &masked);
        print_value(key, r >= 0 ? masked : "(unreadable)", f);
        free(masked);
}

/* For the ..._file keys: what they held is shown as the secret it provided. */
DUMPER(dump_nothing)
{
}

static void release_text(struct config *c, void *field)
{
        char **p = field;
        free(*p);
        *p = NULL;
}

static void release_secret(struct config *c, void *field)
{
        secret_clear(field);
}

static void release_secret_list(struct config *c, void *field)
{
        secrets_clear(c, field);
}

static void release_types(struct config *c, void *field)
{
        select_types_clear(field);
}

static void release_rules(struct config *c, void *field)
{
        struct selection *sel = &c->select;
        for (size_t i = 0; i < sel->n_rules; i++)
                select_rule_clear(&sel->rules[i]);
        free(sel->rules);
        sel->rules = NULL;
        sel->n_rules = 0;
}

/* Sets key k from text. Returns NULL, or a message (static or in msg) saying what to change. */
static const char *set_value(struct config_loader *L, size_t k, const char *v, char *msg,
                             size_t msglen)
{
        const struct config_key *key = &keys[k];

        /* Checked first: the parsers quote the value, and none of them wants a newline. */
        if (has_control(v, strlen(v)))
                return "contains a control character (a newline or tab?); remove it";
        /* A repeatable key's lines in one source add up; a later source replaces them. */
        if ((key->flags & CONFIG_KEY_REPEAT) && L->repeat_source[k] != L->source) {
                if (key->release)
                        key->release(L->c, (char *)L->c + key->offset);
                L->repeat_source[k] = L->source;
        }
        return key->parse(key, (char *)L->c + key->offset, v, L, msg, msglen);
}

static bool section_known(const char *section, size_t len)
{
        for (size_t i = 0; i < N_KEYS; i++)
                if (strlen(keys[i].section) == len && strncmp(keys[i].section, section, len) == 0)
                        return true;
        return false;
}

static ssize_t find_key(const char *section, const char *name)
{
        for (size_t i = 0; i < N_KEYS; i++)
                if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
                        return (ssize_t)i;
        return -1;
}

/* For "unknown key": the section a misplaced key belongs to, if any. */
static const char *home_section(const char *name)
{
        for (size_t i = 0; i < N_KEYS; i++)
                if (strcmp(keys[i].name, name) == 0)
                        return keys[i].section;
        return NULL;
}

/* "(use server, limits, ... or log)": every section, in table order. */
static void describe_sections(char *buf, size_t len)
{
        const char *sections[N_KEYS + 1];
        size_t n = 0;
        for (size_t i = 0; i < N_KEYS; i++) {
                size_t j = 0;
                while (j < n && strcmp(sections[j], keys[i].section) != 0)
                        j++;
                if (j == n)
                        sections[n++] = keys[i].section;
        }
        sections[n] = NULL;
        describe_names(sections, buf, len);
}

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
        struct config_loader *L = user;
        char msg[512];

        if (!name)
                return 1;
        if (!*section) {
                const char *home = home_section(name);
                add_error(L, "%s:%u: '%s' is outside any section; put it under [%s]", L->file,
                          L->line, name, home ? home : "its section");
                return 1;
        }
        if (!section_known(section, strlen(section))) {
                /* Normally reported once, at its header, by read_line. */
                if (!L->in_unknown_section) {
                        char sections[512];
                        describe_sections(sections, sizeof(sections));
                        add_error(L, "%s:%u: unknown section [%s] %s", L->file, L->line, section,
                                  sections);
                }
                return 1;
        }
        ssize_t k = find_key(section, name);
        if (k < 0) {
                const char *home = home_section(name);
                if (home)
                        add_error(L, "%s:%u: unknown key '%s' in [%s] (it belongs in [%s])",
                                  L->file, L->line, name, section, home);
                else
                        add_error(L, "%s:%u: unknown key '%s' in [%s]", L->file, L->line, name,
                                  section);
                return 1;
        }
        const char *err = set_value(L, (size_t)k, value, msg, sizeof(msg));
        if (err)
                add_error(L, "%s:%u: %s.%s: %s", L->file, L->line, section, name, err);
        else
                snprintf(L->where[k], WHERE_SIZE, "%s:%u", L->file, L->line);
        /* Always go on: every error in the file is wanted, not just the first. */
        return 1;
}

/* inih reads through this, one call per line, so the handler knows the current line.
 * Debian's libinih reads into a fixed buffer (200 bytes) and would take the rest of a longer line
 * as lines of its own; such a line is reported here and handed to inih as an empty one. Section
 * headers are checked here too, so an unknown section is reported once, at its header. */
static char *read_line(char *str, int num, void *stream)
{
        struct config_loader *L = stream;

        if (!fgets(str, num, L->stream)) {
                if (ferror(L->stream))
                        L->read_errno = errno != 0 ? errno : EIO;
                return NULL;
        }
        L->line++;
        size_t n = strlen(str);
        if (n > 0 && n + 1 == (size_t)num && str[n - 1] != '\n') {
                int ch = getc(L->stream);
                if (ch != EOF && ch != '\n') {
                        while (ch != EOF && ch != '\n')
                                ch = getc(L->stream);
                        add_error(L,
                                  "%s:%u: line longer than %d characters; shorten it (a long "
                                  "secret can go in secret_file or api_key_file)",
                                  L->file, L->line, num - 2);
                        str[0] = 0;
                        return str;
                }
        }

        const char *s = str;
        if (L->line == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
                s += 3;
        while (isspace((unsigned char)*s))
                s++;
        if (*s == '[') {
                const char *end = strchr(s + 1, ']');
                if (end) {
                        size_t len = (size_t)(end - s - 1);
                        L->in_unknown_section = !section_known(s + 1, len);
                        if (L->in_unknown_section) {
                                char sections[512];
                                describe_sections(sections, sizeof(sections));
                                add_error(L, "%s:%u: unknown section [%.*s] %s", L->file, L->line,
                                          (int)(len > 64 ? 64 : len), s + 1, sections);
                        }
                }
        }
        return str;
}

static void load_file(struct config_loader *L, const char *path, bool must_exist)
{
        FILE *f = fopen(path, "re");
        if (!f) {
                if (must_exist || errno != ENOENT)
                        add_error(L, "%s: cannot read: %s", path, strerror(errno));
                return;
        }
        L->file = path;
        L->source++;
        L->line = 0;
        L->read_errno = 0;
        L->in_unknown_section = false;
        L->stream = f;
        int r = ini_parse_stream(read_line, L, on_ini, L);
        if (L->read_errno != 0)
                add_error(L, "%s: cannot read: %s", path, strerror(L->read_errno));
        else if (r > 0)
                add_error(L,
                          "%s:%d: syntax error: expected [section], key = value, or a comment "
                          "starting with # or ;",
                          path, r);
        else if (r < 0) {
                L->oom = true;
                add_error(L, "%s: cannot parse: out of memory", path);
        }
        fclose(f);
        L->stream = NULL;
}

static int cmp_str(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads every "<dir of main_path>/conf.d/NAME.conf" in name (strcmp) order. */
static void load_dropins(struct config_loader *L, const char *main_path)
{
        char *copy = strdup(main_path);
        char *dir = NULL;
        char **names = NULL;
        size_t n = 0;

        if (!copy || asprintf(&dir, "%s/conf.d", dirname(copy)) < 0) {
                free(copy);
                add_error(L, "%s: cannot list its conf.d: out of memory", main_path);
                L->oom = true;
                return;
        }
        free(copy);
        DIR *d = opendir(dir);
        if (!d) {
                if (errno != ENOENT)
                        add_error(L, "%s: cannot read: %s", dir, strerror(errno));
                free(dir);
                return;
        }
        for (;;) {
                errno = 0;
                struct dirent *de = readdir(d);
                if (!de) {
                        if (errno != 0)
                                add_error(L, "%s: cannot read: %s", dir, strerror(errno));
                        break;
                }
                size_t len = strlen(de->d_name);
                if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".conf") != 0)
                        continue;
                char **nn = realloc(names, (n + 1) * sizeof(*nn));
                if (!nn || asprintf(&nn[n], "%s/%s", dir, de->d_name) < 0) {
                        if (nn)
                                names = nn;
                        add_error(L, "%s: cannot list: out of memory", dir);
                        L->oom = true;
                        break;
                }
                names = nn;
                n++;
        }
        closedir(d);
        free(dir);
        if (n > 1)
                qsort(names, n, sizeof(*names), cmp_str);
        for (size_t i = 0; i < n; i++)
                load_file(L, names[i], true);
        /* Messages and `where` hold copies of the names, so they can go now. */
        L->file = NULL;
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
}

static void env_name(const struct config_key *k, char *buf, size_t len)
{
        snprintf(buf, len, ENV_PREFIX "%s_%s", k->section, k->name);
        for (char *p = buf; *p; p++)
                *p = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
}

extern char **environ;

static void load_environment(struct config_loader *L)
{
        char msg[512];
        L->file = "environment";
        L->source++;
        for (char **e = environ; e && *e; e++) {
                if (strncmp(*e, ENV_PREFIX, strlen(ENV_PREFIX)) != 0)
                        continue;
                const char *eq = strchr(*e, '=');
                if (!eq)
                        continue;
                size_t nlen = (size_t)(eq - *e);
                bool found = false;
                for (size_t k = 0; k < N_KEYS && !found; k++) {
                        char name[128];
                        env_name(&keys[k], name, sizeof(name));
                        if (strlen(name) != nlen || strncmp(name, *e, nlen) != 0)
                                continue;
                        found = true;
                        const char *err = set_value(L, k, eq + 1, msg, sizeof(msg));
                        if (err)
                                add_error(L, "environment: %s: %s", name, err);
                        else
                                snprintf(L->where[k], WHERE_SIZE, "environment: %s", name);
                }
                if (!found)
                        add_error(L,
                                  "environment: %.*s: unknown setting (use "
                                  "VIDU_UPSCALED_<SECTION>_<KEY>, e.g. "
                                  "VIDU_UPSCALED_UPSTREAM_BASE_URL)",
                                  (int)(nlen > 128 ? 128 : nlen), *e);
        }
}

static const char *where_set(struct config_loader *L, const char *section, const char *name)
{
        ssize_t k = find_key(section, name);
        return k >= 0 && L->where[k][0] ? L->where[k] : NULL;
}

static const char *where_or_config(struct config_loader *L, const char *section, const char *name)
{
        const char *w = where_set(L, section, name);
        return w ? w : "configuration";
}

/* Reads a secret file: its non-empty lines, each without trailing CR, spaces or tabs, become the
 * secrets of list or, list NULL, the one secret one (the API key, the database password:
 * exactly one line). `where` and `what` name the setting in messages. Returns the number of
 * secrets, 0 if optional and absent, or -errno (reported). */
static int read_secret_file(struct config_loader *L, const char *path, const char *where,
                            const char *what, struct secret *list, struct secret *one,
                            bool optional)
{
        bool single = list == NULL;
        char *text = NULL;
        size_t len = 0, count = 0;
        int r = read_small_file(path, SECRET_MAX, false, &text, &len);
        if (r == -ENOENT && optional)
                return 0;
        if (r == -EFBIG) {
                add_error(L, "%s: %s: '%s' is larger than %dK; it should hold only the %s", where,
                          what, path, SECRET_MAX / 1024, single ? "key" : "secrets, one per line");
                return r;
        }
        if (r < 0) {
                if (r == -ENOMEM)
                        L->oom = true;
                add_error(L, "%s: %s: cannot read '%s': %s", where, what, path, strerror(-r));
                return r;
        }
        r = 0;
        for (char *p = text; p < text + len && r >= 0;) {
                char *nl = memchr(p, '\n', (size_t)(text + len - p));
                size_t n = nl ? (size_t)(nl - p) : (size_t)(text + len - p);
                size_t m = n;
                while (m > 0 && (p[m - 1] == '\r' || p[m - 1] == ' ' || p[m - 1] == '\t'))
                        m--;
                if (m > 0) {
                        count++;
                        if (has_control(p, m)) {
                                add_error(L,
                                          "%s: %s: '%s' line %zu has a control character; a "
                                          "secret is printable text",
                                          where, what, path, count);
                                r = -EINVAL;
                        } else if (single && count > 1) {
                                add_error(L,
                                          "%s: %s: '%s' has more than one line; put only the "
                                          "key in it",
                                          where, what, path);
                                r = -EINVAL;
                        } else if (single) {
                                secret_clear(one);
                                one->value = strndup_safe(p, m);
                                one->len = one->value ? m : 0;
                                if (!one->value)
                                        r = -ENOMEM;
                        } else
                                r = add_secret(L->c, list, p, m);
                        if (r == -E2BIG)
                                add_error(L,
                                          "%s: %s: '%s' has more than %d secrets; remove the "
                                          "oldest once senders use a newer one",
                                          where, what, path, CONFIG_MAX_SECRETS);
                        else if (r == -ENOMEM) {
                                L->oom = true;
                                add_error(L, "%s: %s: out of memory", where, what);
                        }
                }
                p += n + 1;
        }
        explicit_bzero(text, len);
        free(text);
        if (r >= 0 && count == 0) {
                add_error(L, "%s: %s: '%s' is empty; put the %s in it", where, what, path,
                          single ? "key" : "secret (one per line)");
                r = -EINVAL;
        }
        return r < 0 ? r : (int)count;
}

/* A list of secrets (section.secret, may repeat), else section.secret_file (one per line), else
 * the systemd credential `credential` when present. Records where they came from, for messages,
 * and whether a source was named but could not be used. */
static void resolve_secret_list(struct config_loader *L, const char *section, struct secret *list,
                                const char *file, const char *credential, char *where, bool *failed)
{
        const char *creds = getenv("CREDENTIALS_DIRECTORY");
        char what[64];
        if (*secrets_count(L->c, list) > 0) {
                snprintf(where, WHERE_SIZE, "%s: %s.secret", where_or_config(L, section, "secret"),
                         section);
                return;
        }
        if (file) {
                const char *w = where_or_config(L, section, "secret_file");
                snprintf(what, sizeof(what), "%s.secret_file", section);
                *failed = read_secret_file(L, file, w, what, list, NULL, false) < 0;
                snprintf(where, WHERE_SIZE, "%s: %s", w, what);
        } else if (!isempty(creds)) {
                char *path = NULL;
                if (asprintf(&path, "%s/%s", creds, credential) < 0) {
                        L->oom = *failed = true;
                        add_error(L, "configuration: out of memory");
                        return;
                }
                snprintf(what, sizeof(what), "credential %s", credential);
                *failed = read_secret_file(L, path, "configuration", what, list, NULL, true) < 0;
                snprintf(where, WHERE_SIZE, "configuration: %s", what);
                free(path);
        }
}

/* The database password, for postgresql only (sqlite never reads these): none is looked for
 * when store.url holds one; else store.password_file, else the credential db-password, else
 * nothing (libpq's own PGPASSFILE or ~/.pgpass, or no password at all). */
static void resolve_store_password(struct config_loader *L)
{
        struct config *c = L->c;
        const char *creds = getenv("CREDENTIALS_DIRECTORY");
        char *masked = NULL, *path = NULL;
        if (c->store_backend != STORE_BACKEND_POSTGRESQL || !c->store_url)
                return;
        int r = conninfo_mask(c->store_url, &masked);
        free(masked);
        if (r != 0)
                return; /* it holds one (or was refused) */
        if (c->store_password_file)
                (void)read_secret_file(L, c->store_password_file,
                                       where_or_config(L, "store", "password_file"),
                                       "store.password_file", NULL, &c->store_password, false);
        else if (!isempty(creds)) {
                if (asprintf(&path, "%s/db-password", creds) < 0) {
                        L->oom = true;
                        add_error(L, "configuration: out of memory");
                        return;
                }
                (void)read_secret_file(L, path, "configuration", "credential db-password", NULL,
                                       &c->store_password, true);
                free(path);
        }
}

static void resolve_secrets(struct config_loader *L)
{
        struct config *c = L->c;
        const char *creds = getenv("CREDENTIALS_DIRECTORY");
        const char *file;
        char *path = NULL;

        if (!c->api_key.value) {
                file = c->api_key_file;
                if (file)
                        L->api_key_failed =
                            read_secret_file(L, file,
                                             where_or_config(L, "upstream", "api_key_file"),
                                             "upstream.api_key_file", NULL, &c->api_key, false) < 0;
                else if (!isempty(creds)) {
                        if (asprintf(&path, "%s/api-key", creds) < 0) {
                                L->oom = L->api_key_failed = true;
                                add_error(L, "configuration: out of memory");
                        } else {
                                L->api_key_failed =
                                    read_secret_file(L, path, "configuration", "credential api-key",
                                                     NULL, &c->api_key, true) < 0;
                                free(path);
                                path = NULL;
                        }
                }
        }

        resolve_secret_list(L, "auth", c->secrets, c->secret_file, "webhook-secret",
                            L->secrets_where, &L->secrets_failed);
        resolve_secret_list(L, "events", c->events_secrets, c->events_secret_file, "events-secret",
                            L->events_secrets_where, &L->events_secrets_failed);
}

/* Standard Webhooks secrets: "whsec_" and base64 that auth.c can decode. */
static void check_whsec(struct config_loader *L, const struct secret *list, size_t n_list,
                        const char *where, const char *user)
{
        for (size_t i = 0; i < n_list; i++) {
                const char *v = list[i].value;
                ssize_t n = strncmp(v, "whsec_", 6) == 0 ? base64_decoded_len(v + 6) : -EINVAL;
                if (n <= 0)
                        add_error(L,
                                  "%s: secret %zu is not whsec_ followed by base64, as %s needs "
                                  "(e.g. whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw)",
                                  where, i + 1, user);
                else if (n > WHSEC_KEY_MAX)
                        add_error(L, "%s: secret %zu is longer than %d bytes once decoded", where,
                                  i + 1, WHSEC_KEY_MAX);
        }
}

static void validate(struct config_loader *L)
{
        struct config *c = L->c;
        char a[32], b[32];

        if (isempty(c->base_url))
                add_error(L,
                          "%s: upstream.base_url is required: set base_url = "
                          "https://api.example.com in [upstream]",
                          where_or_config(L, "upstream", "base_url"));
        if (!c->api_key.value && !L->api_key_failed)
                add_error(L, "configuration: upstream: no API key: set api_key_file (or api_key) "
                             "in [upstream], or provide the systemd credential api-key "
                             "(LoadCredential=api-key:/path/to/key)");
        if (c->auth_scheme != AUTH_SCHEME_NONE && c->n_secrets == 0 && !L->secrets_failed)
                add_error(L,
                          "%s: auth.scheme = %s needs a secret: set secret_file (or secret) in "
                          "[auth], or provide the systemd credential webhook-secret",
                          where_or_config(L, "auth", "scheme"),
                          auth_scheme_to_string(c->auth_scheme));
        if (c->auth_scheme == AUTH_SCHEME_STANDARD_WEBHOOKS)
                check_whsec(L, c->secrets, c->n_secrets, L->secrets_where, "standard-webhooks");
        check_whsec(L, c->events_secrets, c->n_events_secrets, L->events_secrets_where,
                    "events (Standard Webhooks)");
        if (c->events_url && c->n_events_secrets == 0 && !L->events_secrets_failed)
                add_error(L,
                          "%s: events.url needs a secret to sign the events with: set "
                          "secret_file (or secret) in [events] to a whsec_ secret, or provide the "
                          "systemd credential events-secret",
                          where_or_config(L, "events", "url"));
        if (c->store_backend == STORE_BACKEND_POSTGRESQL && !c->store_url)
                add_error(L,
                          "%s: store.backend = postgresql needs store.url: set url = "
                          "postgresql://USER@HOST/DATABASE in [store] (a libpq URI or key=value "
                          "string)",
                          where_or_config(L, "store", "backend"));
        if (!c->tls_cert != !c->tls_key)
                add_error(L,
                          "%s: server.tls_cert and server.tls_key go together: set both or "
                          "neither",
                          where_or_config(L, "server", c->tls_cert ? "tls_cert" : "tls_key"));
        if (c->max_delay < c->initial_delay) {
                const char *w = where_set(L, "retry", "max_delay");
                format_duration(c->max_delay, a, sizeof(a));
                format_duration(c->initial_delay, b, sizeof(b));
                add_error(L,
                          "%s: retry.max_delay (%s) is shorter than retry.initial_delay (%s); "
                          "raise max_delay or lower initial_delay",
                          w ? w : where_or_config(L, "retry", "initial_delay"), a, b);
        }
}

static void set_defaults(struct config_loader *L)
{
        char msg[512];
        L->file = "defaults";
        for (size_t k = 0; k < N_KEYS; k++)
                if (keys[k].default_text) {
                        const char *err = set_value(L, k, keys[k].default_text, msg, sizeof(msg));
                        if (err)
                                add_error(L, "configuration: default of %s.%s: %s", keys[k].section,
                                          keys[k].name, err);
                }
}

/* store.path unset (or set empty): the first of systemd's StateDirectory=, else the cwd. */
static void default_store_path(struct config_loader *L)
{
        const char *state = getenv("STATE_DIRECTORY");
        size_t n = state ? strcspn(state, ":") : 0;
        int r = n > 0 ? asprintf(&L->c->store_path, "%.*s/ledger.db", (int)n, state)
                      : asprintf(&L->c->store_path, "./ledger.db");
        if (r < 0) {
                L->c->store_path = NULL;
                L->oom = true;
                add_error(L, "configuration: out of memory");
        }
}

int config_load_full(const char *path, bool path_is_default, struct config **ret,
                     struct config_errors *errors)
{
        int r;

        struct config_loader *L = calloc(1, sizeof(*L));
        if (!L)
                return -ENOMEM;
        L->errors = errors;
        L->c = calloc(1, sizeof(*L->c));
        if (!L->c) {
                free(L);
                return -ENOMEM;
        }
        set_defaults(L);
        load_file(L, path, !path_is_default);
        load_dropins(L, path);
        load_environment(L);
        resolve_secrets(L);
        resolve_store_password(L);
        if (!L->c->store_path)
                default_store_path(L);
        validate(L);

        if (L->oom)
                r = -ENOMEM;
        else if (L->failed)
                r = -EINVAL;
        else {
                *ret = TAKE_PTR(L->c);
                r = 0;
        }
        config_free(L->c);
        free(L);
        return r;
}

int config_load(const char *path, struct config **ret, struct config_errors *errors)
{
        return config_load_full(path ? path : CONFIG_DEFAULT_PATH, !path, ret, errors);
}

void config_dump(const struct config *c, FILE *f)
{
        const char *section = "";
        for (size_t k = 0; k < N_KEYS; k++) {
                const struct config_key *key = &keys[k];
                if (key->dump == dump_nothing)
                        continue;
                if (strcmp(section, key->section) != 0) {
                        fprintf(f, "%s[%s]\n", *section ? "\n" : "", key->section);
                        section = key->section;
                }
                key->dump(key, c, (const char *)c + key->offset, f);
        }
}
