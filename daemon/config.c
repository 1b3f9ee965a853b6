/* config.c: loads the INI configuration (main file, conf.d drop-ins, environment overrides,
 * secrets from files or systemd credentials) into struct config, collecting every error as
 * "FILE:LINE: message". */
#include "config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <ini.h>
#include <libgen.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "cidr.h"
#include "util.h"

#define ENV_PREFIX "VIDU_UPSCALED_"
#define SECRET_MAX (64 * 1024)
#define WHERE_SIZE 600

enum vtype {
        T_STR,      /* char * */
        T_PATH,     /* char *, absolute or relative path */
        T_URL,      /* char *, http(s)://, trailing '/' stripped */
        T_LISTEN,   /* char *, host:port, [v6]:port or unix:/path */
        T_WEBPATH,  /* char *, starts with '/' */
        T_CIDRS,    /* char *, address list */
        T_SIZE,     /* uint64_t bytes */
        T_DUR,      /* uint64_t usec */
        T_UINT,     /* uint64_t in [min, max] */
        T_ENUM,     /* int, index into names (or values) */
        T_BOOLSYNC, /* bool: full|normal */
        T_SECRET,   /* struct secret */
        T_SECRETS,  /* the auth secret list (repeatable) */
        T_LOADER,   /* char * kept in the loader (…_file keys) */
};

struct key {
        const char *section;
        const char *name;
        enum vtype type;
        size_t off;
        uint64_t min, max;
        const char *const *names; /* T_ENUM */
        const int *values;        /* T_ENUM: the value for each name (else the index) */
        const char *dflt;
};

static const char *const scheme_names[] = {"none", "token", "hmac-sha256", "standard-webhooks",
                                           "vidu", NULL};
static const char *const flavor_names[] = {"v1", "ent-v2", NULL};
static const char *const uncertain_names[] = {"hold", "resubmit", NULL};
static const char *const level_names[] = {"debug", "info", "notice", "warning", "err", NULL};
static const int level_values[] = {LOG_DEBUG, LOG_INFO, LOG_NOTICE, LOG_WARNING, LOG_ERR};
static const char *const resolution_names[] = {"1080p", "2K", "4K", "8K", NULL};

enum { LOADER_API_KEY_FILE, LOADER_SECRET_FILE, _LOADER_MAX };

#define F(field) offsetof(struct config, field)
static const struct key keys[] = {
    {"server", "listen", T_LISTEN, F(listen), 0, 0, NULL, NULL, "127.0.0.1:8080"},
    {"server", "webhook_path", T_WEBPATH, F(webhook_path), 0, 0, NULL, NULL, "/hooks/vidu"},
    {"server", "max_body", T_SIZE, F(max_body), 1, 1ULL << 30, NULL, NULL, "1M"},
    {"server", "max_header", T_SIZE, F(max_header), 1024, 1 << 20, NULL, NULL, "16K"},
    {"server", "max_connections", T_UINT, F(max_connections), 1, 1000000, NULL, NULL, "512"},
    {"server", "max_per_ip", T_UINT, F(max_per_ip), 0, 1000000, NULL, NULL, "64"},
    {"server", "idle_timeout", T_DUR, F(idle_timeout), USEC_PER_SEC, 86400 * USEC_PER_SEC, NULL,
     NULL, "30s"},
    {"server", "request_timeout", T_DUR, F(request_timeout), USEC_PER_SEC, 86400 * USEC_PER_SEC,
     NULL, NULL, "60s"},
    {"server", "allow_from", T_CIDRS, F(allow_from), 0, 0, NULL, NULL, NULL},
    {"server", "tls_cert", T_PATH, F(tls_cert), 0, 0, NULL, NULL, NULL},
    {"server", "tls_key", T_PATH, F(tls_key), 0, 0, NULL, NULL, NULL},
    {"server", "drain_timeout", T_DUR, F(drain_timeout), 0, 3600 * USEC_PER_SEC, NULL, NULL, "10s"},
    {"limits", "max_json_depth", T_UINT, F(max_json_depth), 2, 1000, NULL, NULL, "32"},
    {"limits", "max_tasks", T_UINT, F(max_tasks), 1, 1000000, NULL, NULL, "1000"},
    {"limits", "max_creations", T_UINT, F(max_creations), 1, 10000000, NULL, NULL, "10000"},
    {"auth", "scheme", T_ENUM, F(auth_scheme), 0, 0, scheme_names, NULL, "none"},
    {"auth", "secret", T_SECRETS, 0, 0, 0, NULL, NULL, NULL},
    {"auth", "secret_file", T_LOADER, LOADER_SECRET_FILE, 0, 0, NULL, NULL, NULL},
    {"auth", "header", T_STR, F(auth_header), 0, 0, NULL, NULL, "X-Hub-Signature-256"},
    {"auth", "tolerance", T_DUR, F(auth_tolerance), USEC_PER_SEC, 86400 * USEC_PER_SEC, NULL, NULL,
     "5m"},
    {"auth", "public_url_prefix", T_STR, F(public_url_prefix), 0, 0, NULL, NULL, NULL},
    {"upstream", "base_url", T_URL, F(base_url), 0, 0, NULL, NULL, NULL},
    {"upstream", "api_key", T_SECRET, F(api_key), 0, 0, NULL, NULL, NULL},
    {"upstream", "api_key_file", T_LOADER, LOADER_API_KEY_FILE, 0, 0, NULL, NULL, NULL},
    {"upstream", "auth_scheme", T_STR, F(auth_word), 0, 0, NULL, NULL, "Bearer"},
    {"upstream", "flavor", T_ENUM, F(flavor), 0, 0, flavor_names, NULL, "v1"},
    {"upstream", "timeout", T_DUR, F(timeout), 100 * USEC_PER_MSEC, 3600 * USEC_PER_SEC, NULL, NULL,
     "30s"},
    {"upstream", "connect_timeout", T_DUR, F(connect_timeout), 100 * USEC_PER_MSEC,
     3600 * USEC_PER_SEC, NULL, NULL, "10s"},
    {"upstream", "concurrency", T_UINT, F(concurrency), 1, 1024, NULL, NULL, "8"},
    {"upstream", "poll_interval", T_DUR, F(poll_interval), 100 * USEC_PER_MSEC,
     86400 * USEC_PER_SEC, NULL, NULL, "30s"},
    {"upscale", "model", T_STR, F(model), 0, 0, NULL, NULL, "stable"},
    {"upscale", "duration", T_UINT, F(duration), 1, 3600, NULL, NULL, "4"},
    {"upscale", "resolution", T_STR, F(resolution), 0, 0, resolution_names, NULL, "1080p"},
    {"store", "path", T_PATH, F(store_path), 0, 0, NULL, NULL, NULL},
    {"store", "synchronous", T_BOOLSYNC, F(synchronous_full), 0, 0, NULL, NULL, "full"},
    {"retry", "max_attempts", T_UINT, F(max_attempts), 1, 1000, NULL, NULL, "10"},
    {"retry", "initial_delay", T_DUR, F(initial_delay), USEC_PER_MSEC, 86400 * USEC_PER_SEC, NULL,
     NULL, "5s"},
    {"retry", "max_delay", T_DUR, F(max_delay), USEC_PER_MSEC, 7 * 86400 * USEC_PER_SEC, NULL, NULL,
     "1h"},
    {"retry", "uncertain", T_ENUM, F(uncertain), 0, 0, uncertain_names, NULL, "hold"},
    {"log", "level", T_ENUM, F(log_level), 0, 0, level_names, level_values, "info"},
};
#undef F
#define N_KEYS ELEMENTSOF(keys)

struct loader {
        struct config *c;
        struct config_errors *errors;
        const char *file; /* current source, for messages */
        unsigned line;    /* current line of the current file */
        FILE *stream;
        char *files[_LOADER_MAX];
        char where[N_KEYS][WHERE_SIZE]; /* where each key was last set */
        const char *secrets_owner;      /* the source whose secret lines are in effect */
};

static void add_error(struct config_errors *e, const char *fmt, ...) _printf_(2, 3);
static void add_error(struct config_errors *e, const char *fmt, ...)
{
        va_list ap;
        char *line = NULL;
        va_start(ap, fmt);
        if (vasprintf(&line, fmt, ap) < 0)
                line = NULL;
        va_end(ap);
        char **lines = realloc(e->lines, (e->n + 1) * sizeof(*lines));
        if (!line || !lines) {
                free(line);
                if (lines)
                        e->lines = lines;
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

static void secrets_clear(struct config *c)
{
        for (size_t i = 0; i < c->n_secrets; i++)
                secret_clear(&c->secrets[i]);
        c->n_secrets = 0;
}

struct config *config_free(struct config *c)
{
        if (!c)
                return NULL;
        for (size_t i = 0; i < N_KEYS; i++) {
                void *p = (char *)c + keys[i].off;
                switch (keys[i].type) {
                case T_STR:
                case T_PATH:
                case T_URL:
                case T_LISTEN:
                case T_WEBPATH:
                case T_CIDRS:
                        free(*(char **)p);
                        break;
                case T_SECRET:
                        secret_clear(p);
                        break;
                default:
                        break;
                }
        }
        secrets_clear(c);
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

static bool valid_listen(const char *v)
{
        if (strncmp(v, "unix:", 5) == 0)
                return v[5] == '/' && strlen(v + 5) < 108;
        const char *port;
        if (v[0] == '[') {
                const char *end = strchr(v, ']');
                if (!end || end[1] != ':')
                        return false;
                char host[64];
                size_t n = (size_t)(end - v - 1);
                if (n == 0 || n >= sizeof(host))
                        return false;
                memcpy(host, v + 1, n);
                host[n] = 0;
                struct cidr_list l;
                if (cidr_list_parse(host, &l, NULL) < 0 || l.n != 1)
                        return false;
                cidr_list_clear(&l);
                port = end + 2;
        } else {
                const char *colon = strrchr(v, ':');
                if (!colon || colon == v || memchr(v, ':', (size_t)(colon - v)))
                        return false;
                port = colon + 1;
        }
        uint64_t p;
        return parse_uint(port, 0, 65535, &p) >= 0;
}

static bool valid_base64(const char *s)
{
        size_t n = strlen(s);
        if (n == 0 || n % 4 != 0)
                return false;
        for (size_t i = 0; i < n; i++) {
                char ch = s[i];
                bool pad = ch == '=' && i >= n - 2;
                if (!isalnum((unsigned char)ch) && ch != '+' && ch != '/' && !pad)
                        return false;
                if (ch == '=' && i == n - 2 && s[n - 1] != '=')
                        return false;
        }
        return true;
}

static int add_secret(struct config *c, const char *v, size_t len)
{
        if (c->n_secrets >= CONFIG_MAX_SECRETS)
                return -E2BIG;
        char *copy = strndup_safe(v, len);
        if (!copy)
                return -ENOMEM;
        c->secrets[c->n_secrets].value = copy;
        c->secrets[c->n_secrets].len = len;
        c->n_secrets++;
        return 0;
}

/* Sets key k from text; returns NULL or a message (static or in msgbuf). */
static const char *set_value(struct loader *L, size_t k, const char *v, char *msgbuf, size_t msglen)
{
        const struct key *key = &keys[k];
        struct config *c = L->c;
        void *p = (char *)c + key->off;
        uint64_t u;
        char *copy;

        switch (key->type) {
        case T_STR:
        case T_PATH:
        case T_URL:
        case T_LISTEN:
        case T_WEBPATH:
        case T_CIDRS:
                if (key->type == T_URL && *v && strncmp(v, "http://", 7) != 0 &&
                    strncmp(v, "https://", 8) != 0)
                        return "must start with http:// or https://";
                if (key->type == T_LISTEN && !valid_listen(v))
                        return "invalid address (use 127.0.0.1:8080, [::1]:8080 or "
                               "unix:/run/vidu-upscaled.sock)";
                if (key->type == T_WEBPATH && v[0] != '/')
                        return "must start with '/'";
                if (key->type == T_CIDRS && *v) {
                        struct cidr_list l;
                        const char *bad = NULL;
                        if (cidr_list_parse(v, &l, &bad) < 0) {
                                snprintf(msgbuf, msglen, "invalid address or CIDR '%.*s'",
                                         (int)strcspn(bad ? bad : v, ", \t"), bad ? bad : v);
                                return msgbuf;
                        }
                        cidr_list_clear(&l);
                }
                if (key->names) {
                        bool ok = false;
                        for (size_t i = 0; key->names[i]; i++)
                                ok = ok || strcmp(v, key->names[i]) == 0;
                        if (!ok)
                                return "unknown value (see the README for the accepted ones)";
                }
                copy = strdup(v);
                if (!copy)
                        return "out of memory";
                if (key->type == T_URL) {
                        size_t n = strlen(copy);
                        while (n > 0 && copy[n - 1] == '/')
                                copy[--n] = 0;
                }
                free(*(char **)p);
                *(char **)p = *copy || key->type == T_STR ? copy : (free(copy), NULL);
                return NULL;
        case T_SIZE:
                if (parse_size(v, &u) < 0)
                        return "invalid size (use e.g. 512K, 1M)";
                if (u < key->min || u > key->max) {
                        snprintf(msgbuf, msglen, "out of range (%llu to %llu bytes)",
                                 (unsigned long long)key->min, (unsigned long long)key->max);
                        return msgbuf;
                }
                *(uint64_t *)p = u;
                return NULL;
        case T_DUR:
                if (parse_duration(v, &u) < 0)
                        return "invalid duration (use e.g. 30s, 500ms, 5m, 1h)";
                if (u < key->min || u > key->max) {
                        char lo[32], hi[32];
                        format_duration(key->min, lo, sizeof(lo));
                        format_duration(key->max, hi, sizeof(hi));
                        snprintf(msgbuf, msglen, "out of range (%s to %s)", lo, hi);
                        return msgbuf;
                }
                *(uint64_t *)p = u;
                return NULL;
        case T_UINT:
                if (parse_uint(v, 0, UINT64_MAX, &u) < 0)
                        return "not a whole number";
                if (u < key->min || u > key->max) {
                        snprintf(msgbuf, msglen, "out of range (%llu to %llu)",
                                 (unsigned long long)key->min, (unsigned long long)key->max);
                        return msgbuf;
                }
                *(uint64_t *)p = u;
                return NULL;
        case T_ENUM:
                for (size_t i = 0; key->names[i]; i++)
                        if (strcmp(v, key->names[i]) == 0) {
                                int val = key->values ? key->values[i] : (int)i;
                                /* Enums are stored as int-sized fields. */
                                *(int *)p = val;
                                return NULL;
                        }
                {
                        size_t o = (size_t)snprintf(msgbuf, msglen, "unknown value '%s' (use", v);
                        for (size_t i = 0; key->names[i] && o < msglen; i++)
                                o += (size_t)snprintf(msgbuf + o, msglen - o, "%s %s", i ? "," : "",
                                                      key->names[i]);
                        if (o < msglen)
                                snprintf(msgbuf + o, msglen - o, ")");
                }
                return msgbuf;
        case T_BOOLSYNC:
                if (strcmp(v, "full") == 0)
                        *(bool *)p = true;
                else if (strcmp(v, "normal") == 0)
                        *(bool *)p = false;
                else
                        return "unknown value (use full or normal)";
                return NULL;
        case T_SECRET:
                secret_clear(p);
                if (*v) {
                        ((struct secret *)p)->value = strdup(v);
                        if (!((struct secret *)p)->value)
                                return "out of memory";
                        ((struct secret *)p)->len = strlen(v);
                }
                return NULL;
        case T_SECRETS:
                /* Lines in one source accumulate; a later source replaces the list. */
                if (L->secrets_owner != L->file) {
                        secrets_clear(c);
                        L->secrets_owner = L->file;
                }
                if (!*v)
                        return "empty secret";
                if (add_secret(c, v, strlen(v)) < 0)
                        return "too many secrets (at most 8)";
                return NULL;
        case T_LOADER:
                copy = strdup(v);
                if (!copy)
                        return "out of memory";
                free(L->files[key->off]);
                L->files[key->off] = *copy ? copy : (free(copy), NULL);
                return NULL;
        }
        return "unsupported";
}

static ssize_t find_key(const char *section, const char *name, bool *ret_section_known)
{
        *ret_section_known = false;
        for (size_t i = 0; i < N_KEYS; i++) {
                if (strcmp(keys[i].section, section) != 0)
                        continue;
                *ret_section_known = true;
                if (strcmp(keys[i].name, name) == 0)
                        return (ssize_t)i;
        }
        return -1;
}

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
        struct loader *L = user;
        char msg[256];
        bool section_known;
        if (!name)
                return 1;
        ssize_t k = find_key(section, name, &section_known);
        if (!*section)
                add_error(L->errors, "%s:%u: '%s' outside any [section]", L->file, L->line, name);
        else if (!section_known)
                add_error(L->errors, "%s:%u: unknown section [%s]", L->file, L->line, section);
        else if (k < 0)
                add_error(L->errors, "%s:%u: unknown key '%s' in [%s]", L->file, L->line, name,
                          section);
        else {
                const char *err = set_value(L, (size_t)k, value, msg, sizeof(msg));
                if (err)
                        add_error(L->errors, "%s:%u: %s.%s: %s", L->file, L->line, section, name,
                                  err);
                else
                        snprintf(L->where[k], WHERE_SIZE, "%s:%u", L->file, L->line);
        }
        return 1;
}

/* inih reads line by line through this, so the handler knows the current line. */
static char *read_line(char *str, int num, void *stream)
{
        struct loader *L = stream;
        char *r = fgets(str, num, L->stream);
        if (r)
                L->line++;
        return r;
}

static void load_file(struct loader *L, const char *path, bool must_exist)
{
        FILE *f = fopen(path, "re");
        if (!f) {
                if (must_exist || errno != ENOENT)
                        add_error(L->errors, "%s: cannot read: %s", path, strerror(errno));
                return;
        }
        L->file = path;
        L->line = 0;
        L->stream = f;
        int r = ini_parse_stream(read_line, L, on_ini, L);
        if (r > 0)
                add_error(L->errors,
                          "%s:%d: syntax error (expected [section], key = value, or a # comment)",
                          path, r);
        else if (r < 0)
                add_error(L->errors, "%s: cannot parse: out of memory", path);
        fclose(f);
        L->stream = NULL;
}

static int cmp_str(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

static void load_dropins(struct loader *L, const char *main_path, char ***ret_names, size_t *ret_n)
{
        char *copy = strdup(main_path);
        char *dir = NULL;
        if (!copy || asprintf(&dir, "%s/conf.d", dirname(copy)) < 0) {
                free(copy);
                return;
        }
        free(copy);
        DIR *d = opendir(dir);
        if (!d) {
                if (errno != ENOENT)
                        add_error(L->errors, "%s: cannot read: %s", dir, strerror(errno));
                free(dir);
                return;
        }
        char **names = NULL;
        size_t n = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
                size_t len = strlen(de->d_name);
                if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".conf") != 0)
                        continue;
                char **nn = realloc(names, (n + 1) * sizeof(*nn));
                if (!nn)
                        break;
                names = nn;
                if (asprintf(&names[n], "%s/%s", dir, de->d_name) < 0)
                        break;
                n++;
        }
        closedir(d);
        free(dir);
        qsort(names, n, sizeof(*names), cmp_str);
        for (size_t i = 0; i < n; i++)
                load_file(L, names[i], true);
        /* The names stay alive: errors and `where` refer to them until loading ends. */
        *ret_names = names;
        *ret_n = n;
}

static void env_name(const struct key *k, char *buf, size_t len)
{
        size_t o = (size_t)snprintf(buf, len, ENV_PREFIX "%s_%s", k->section, k->name);
        for (size_t i = 0; i < o && i < len; i++)
                buf[i] = buf[i] == '-' ? '_' : (char)toupper((unsigned char)buf[i]);
}

extern char **environ;

static void load_environment(struct loader *L)
{
        char msg[256];
        L->file = "environment";
        for (char **e = environ; e && *e; e++) {
                if (strncmp(*e, ENV_PREFIX, strlen(ENV_PREFIX)) != 0)
                        continue;
                const char *eq = strchr(*e, '=');
                if (!eq)
                        continue;
                size_t nlen = (size_t)(eq - *e);
                bool found = false;
                for (size_t k = 0; k < N_KEYS; k++) {
                        char name[128];
                        env_name(&keys[k], name, sizeof(name));
                        if (strlen(name) != nlen || strncmp(name, *e, nlen) != 0)
                                continue;
                        found = true;
                        const char *err = set_value(L, k, eq + 1, msg, sizeof(msg));
                        if (err)
                                add_error(L->errors, "environment: %s: %s", name, err);
                        else
                                snprintf(L->where[k], WHERE_SIZE, "environment: %s", name);
                }
                if (!found)
                        add_error(L->errors, "environment: %.*s: unknown setting", (int)nlen, *e);
        }
}

/* Reads secrets, one per line; blank lines skipped. */
static int read_secret_lines(struct loader *L, const char *path, const char *what, bool single)
{
        char *text = NULL;
        size_t len = 0;
        int r = read_small_file(path, SECRET_MAX, false, &text, &len);
        if (r < 0) {
                add_error(L->errors, "%s: cannot read %s: %s", path, what, strerror(-r));
                return r;
        }
        size_t count = 0;
        for (char *p = text; p < text + len;) {
                char *nl = memchr(p, '\n', (size_t)(text + len - p));
                size_t n = nl ? (size_t)(nl - p) : (size_t)(text + len - p);
                size_t m = n;
                while (m > 0 && (p[m - 1] == '\r' || p[m - 1] == ' ' || p[m - 1] == '\t'))
                        m--;
                if (m > 0) {
                        if (single) {
                                if (count == 0) {
                                        secret_clear(&L->c->api_key);
                                        L->c->api_key.value = strndup_safe(p, m);
                                        L->c->api_key.len = m;
                                }
                        } else if (add_secret(L->c, p, m) < 0) {
                                add_error(L->errors, "%s: too many secrets (at most 8)", path);
                                break;
                        }
                        count++;
                }
                p += n + 1;
        }
        explicit_bzero(text, len);
        free(text);
        if (count == 0)
                add_error(L->errors, "%s: %s is empty", path, what);
        return 0;
}

static void resolve_secrets(struct loader *L)
{
        struct config *c = L->c;
        const char *creds = getenv("CREDENTIALS_DIRECTORY");
        char *path = NULL;

        if (!c->api_key.value) {
                if (L->files[LOADER_API_KEY_FILE])
                        read_secret_lines(L, L->files[LOADER_API_KEY_FILE], "upstream.api_key_file",
                                          true);
                else if (!isempty(creds) && asprintf(&path, "%s/api-key", creds) >= 0) {
                        if (access(path, F_OK) == 0)
                                read_secret_lines(L, path, "the api-key credential", true);
                        free(path);
                        path = NULL;
                }
        }
        if (c->n_secrets == 0) {
                if (L->files[LOADER_SECRET_FILE])
                        read_secret_lines(L, L->files[LOADER_SECRET_FILE], "auth.secret_file",
                                          false);
                else if (!isempty(creds) && asprintf(&path, "%s/webhook-secret", creds) >= 0) {
                        if (access(path, F_OK) == 0)
                                read_secret_lines(L, path, "the webhook-secret credential", false);
                        free(path);
                }
        }
}

static const char *where(struct loader *L, const char *section, const char *name)
{
        bool known;
        ssize_t k = find_key(section, name, &known);
        return k >= 0 && L->where[k][0] ? L->where[k] : "configuration";
}

static void validate(struct loader *L)
{
        struct config *c = L->c;
        if (isempty(c->base_url))
                add_error(L->errors,
                          "%s: upstream.base_url is required (e.g. https://api.example.com)",
                          where(L, "upstream", "base_url"));
        if (!c->api_key.value || c->api_key.len == 0)
                add_error(
                    L->errors,
                    "configuration: no upstream API key: set upstream.api_key_file, or the systemd "
                    "credential api-key (LoadCredential=api-key:...)");
        if (c->auth_scheme != AUTH_SCHEME_NONE && c->n_secrets == 0)
                add_error(
                    L->errors,
                    "%s: auth.scheme = %s needs a secret: set auth.secret_file, or the systemd "
                    "credential webhook-secret",
                    where(L, "auth", "scheme"), auth_scheme_to_string(c->auth_scheme));
        if (c->auth_scheme == AUTH_SCHEME_STANDARD_WEBHOOKS)
                for (size_t i = 0; i < c->n_secrets; i++)
                        if (strncmp(c->secrets[i].value, "whsec_", 6) != 0 ||
                            !valid_base64(c->secrets[i].value + 6))
                                add_error(L->errors,
                                          "%s: auth secret %zu is not a whsec_<base64> secret, as "
                                          "standard-webhooks needs",
                                          where(L, "auth", "secret"), i + 1);
        if (!isempty(c->tls_cert) != !isempty(c->tls_key))
                add_error(L->errors,
                          "%s: server.tls_cert and server.tls_key go together: set both or neither",
                          where(L, "server", isempty(c->tls_cert) ? "tls_key" : "tls_cert"));
        if (c->max_delay < c->initial_delay)
                add_error(L->errors, "%s: retry.max_delay is shorter than retry.initial_delay",
                          where(L, "retry", "max_delay"));
        if (isempty(c->auth_word))
                add_error(L->errors, "%s: upstream.auth_scheme must not be empty",
                          where(L, "upstream", "auth_scheme"));
}

static int set_defaults(struct loader *L)
{
        char msg[256];
        L->file = "defaults";
        for (size_t k = 0; k < N_KEYS; k++)
                if (keys[k].dflt) {
                        const char *err = set_value(L, k, keys[k].dflt, msg, sizeof(msg));
                        if (err)
                                return -EINVAL;
                }
        const char *state = getenv("STATE_DIRECTORY");
        if (!isempty(state)) {
                size_t n = strcspn(state, ":");
                if (asprintf(&L->c->store_path, "%.*s/ledger.db", (int)n, state) < 0)
                        return -ENOMEM;
        } else if (!(L->c->store_path = strdup("./ledger.db")))
                return -ENOMEM;
        return 0;
}

int config_load(const char *path, struct config **ret, struct config_errors *errors)
{
        struct loader *L = calloc(1, sizeof(*L));
        char **dropins = NULL;
        size_t n_dropins = 0;
        int r = -EINVAL;
        if (!L)
                return -ENOMEM;
        L->errors = errors;
        L->c = calloc(1, sizeof(*L->c));
        if (!L->c || set_defaults(L) < 0) {
                add_error(errors, "configuration: out of memory");
                goto out;
        }
        const char *main_path = path ? path : CONFIG_DEFAULT_PATH;
        load_file(L, main_path, path != NULL);
        load_dropins(L, main_path, &dropins, &n_dropins);
        load_environment(L);
        resolve_secrets(L);
        validate(L);
        if (errors->n == 0) {
                *ret = TAKE_PTR(L->c);
                r = 0;
        }
out:
        config_free(L->c);
        for (size_t i = 0; i < _LOADER_MAX; i++)
                free(L->files[i]);
        for (size_t i = 0; i < n_dropins; i++)
                free(dropins[i]);
        free(dropins);
        free(L);
        return r;
}

void config_dump(const struct config *c, FILE *f)
{
        const char *section = "";
        for (size_t k = 0; k < N_KEYS; k++) {
                const struct key *key = &keys[k];
                const void *p = (const char *)c + key->off;
                char buf[64];
                if (strcmp(section, key->section) != 0) {
                        fprintf(f, "%s[%s]\n", *section ? "\n" : "", key->section);
                        section = key->section;
                }
                switch (key->type) {
                case T_STR:
                case T_PATH:
                case T_URL:
                case T_LISTEN:
                case T_WEBPATH:
                case T_CIDRS:
                        fprintf(f, "%s = %s\n", key->name,
                                *(char *const *)p ? *(char *const *)p : "");
                        break;
                case T_SIZE:
                        fprintf(f, "%s = %llu\n", key->name,
                                (unsigned long long)*(const uint64_t *)p);
                        break;
                case T_DUR:
                        format_duration(*(const uint64_t *)p, buf, sizeof(buf));
                        fprintf(f, "%s = %s\n", key->name, buf);
                        break;
                case T_UINT:
                        fprintf(f, "%s = %llu\n", key->name,
                                (unsigned long long)*(const uint64_t *)p);
                        break;
                case T_ENUM: {
                        int v = *(const int *)p;
                        const char *name = "?";
                        for (size_t i = 0; key->names[i]; i++)
                                if ((key->values ? key->values[i] : (int)i) == v)
                                        name = key->names[i];
                        fprintf(f, "%s = %s\n", key->name, name);
                        break;
                }
                case T_BOOLSYNC:
                        fprintf(f, "%s = %s\n", key->name, *(const bool *)p ? "full" : "normal");
                        break;
                case T_SECRET:
                        fprintf(f, "%s = %s\n", key->name,
                                ((const struct secret *)p)->value ? "(set)" : "(unset)");
                        break;
                case T_SECRETS:
                        if (c->n_secrets)
                                fprintf(f, "%s = (%zu set)\n", key->name, c->n_secrets);
                        else
                                fprintf(f, "%s = (unset)\n", key->name);
                        break;
                case T_LOADER:
                        break;
                }
        }
}
