/* config.h: the daemon's settings, loaded from INI files, conf.d drop-ins, the environment and
 * systemd credentials, validated with FILE:LINE errors. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "select.h"

#define CONFIG_DEFAULT_PATH "/etc/vidu-upscaled/vidu-upscaled.conf"
#define CONFIG_MAX_SECRETS  8
#define EXIT_CONFIG         78
/* upscale.duration = source, and the source task does not say: the seed's value. */
#define UPSCALE_DURATION_FALLBACK 4

enum auth_scheme {
        AUTH_SCHEME_NONE,
        AUTH_SCHEME_TOKEN,
        AUTH_SCHEME_HMAC_SHA256,
        AUTH_SCHEME_STANDARD_WEBHOOKS,
        AUTH_SCHEME_VIDU,
};

enum upstream_flavor {
        UPSTREAM_FLAVOR_V1,
        UPSTREAM_FLAVOR_ENT_V2,
};

enum store_backend {
        STORE_BACKEND_SQLITE,
        STORE_BACKEND_POSTGRESQL,
};

enum store_pooler {
        STORE_POOLER_NONE,        /* a direct connection, or a pooler in session mode */
        STORE_POOLER_TRANSACTION, /* a pooler in transaction mode (PgBouncer pool_mode) */
};

enum uncertain_policy {
        UNCERTAIN_HOLD,
        UNCERTAIN_RESUBMIT,
};

/* A secret is bytes (a whsec_ secret is stored decoded only by auth.c; here it is the text). */
struct secret {
        char *value;
        size_t len;
};

struct config {
        /* [server] */
        char *listen;              /* "127.0.0.1:8080", "[::1]:8080", "unix:/run/x.sock" */
        char *webhook_path;        /* "/hooks/vidu" */
        uint64_t max_body;         /* bytes, default 1M */
        uint64_t max_header;       /* bytes of request line + headers, default 16K */
        uint64_t max_header_lines; /* header lines in one request, default 100 */
        uint64_t max_connections;  /* default 512 */
        uint64_t max_per_ip;       /* connections per client address, default 64 */
        uint64_t idle_timeout;     /* usec, default 30s: a connection silent this long is closed */
        uint64_t request_timeout;  /* usec, default 60s: a request not fully received is closed */
        char *allow_from;          /* CIDR list, space or comma separated; NULL = everyone */
        char *tls_cert;            /* PEM file path; both or neither with tls_key */
        char *tls_key;
        /* usec, default 10s: how long in-flight upstream calls get at stop */
        uint64_t drain_timeout;

        /* [limits] */
        uint64_t max_json_depth; /* default 32 */
        uint64_t max_tasks;      /* tasks in one notification, default 1000 */
        uint64_t max_creations;  /* creations in one notification, default 10000 */

        /* [auth] */
        enum auth_scheme auth_scheme;
        struct secret secrets[CONFIG_MAX_SECRETS]; /* several for rotation, as written */
        size_t n_secrets;
        char *secret_file;       /* where the secrets were read from, when none was set itself */
        char *auth_header;       /* hmac-sha256 header, default "X-Hub-Signature-256" */
        uint64_t auth_tolerance; /* usec, default 5m: timestamp / Date skew allowed */
        /* vidu scheme: path prefix the sender saw, when a proxy rewrote it; NULL = none, else
         * starts with '/' and has no trailing '/' */
        char *public_url_prefix;

        /* [upstream] */
        char *base_url;        /* required */
        struct secret api_key; /* required, never printed */
        /* where api_key was read from, when it was not set itself; NULL = not named */
        char *api_key_file;
        char *auth_word; /* "Bearer" */
        enum upstream_flavor flavor;
        uint64_t timeout;         /* usec per request, default 30s */
        uint64_t connect_timeout; /* usec, default 10s */
        uint64_t concurrency;     /* default 8, 1..1024 */
        uint64_t poll_interval;   /* usec, default 30s */
        /* Where the upstream calls back with an upscale's outcome (this daemon's public webhook
         * URL); NULL = no callbacks, outcomes are polled for. */
        char *callback_url;
        uint64_t callback_grace; /* usec, default 10m: with callback_url, the first poll waits */

        /* [upscale] */
        char *model;          /* "stable" */
        uint64_t duration;    /* 4; UPSCALE_DURATION_FALLBACK when duration_source */
        bool duration_source; /* duration = source: the source task's settings.duration */
        char *resolution;     /* ent-v2: "1080p" */

        /* [select] which finished tasks and creations trigger an upscale */
        struct selection select;

        /* [store] */
        char *store_path;                 /* $STATE_DIRECTORY/ledger.db, else ./ledger.db */
        bool synchronous_full;            /* synchronous = full (default) | normal */
        enum store_backend store_backend; /* sqlite (default) | postgresql */
        /* postgresql: a libpq URI or key=value string; may hold a password, so never printed
         * or logged unmasked (conninfo_mask) */
        char *store_url;
        char *store_password_file; /* where store_password was read from; NULL = not named */
        /* postgresql: the password when store_url has none: from store.password_file, else the
         * credential db-password; unset = libpq's own (PGPASSFILE, ~/.pgpass) */
        struct secret store_password;
        char *store_instance; /* the name this instance claims jobs under; NULL = default */
        uint64_t store_lease; /* usec, default 30s: how long a claim holds without renewal */
        uint64_t store_statement_timeout; /* usec, default 5s: bounds each turn's transaction */
        uint64_t store_reconnect_max;     /* usec, default 5s: the reconnection backoff's cap */
        /* none (default): turns pipelined two deep; transaction: one turn in flight at a time */
        enum store_pooler store_pooler;

        /* [retry] */
        uint64_t max_attempts;  /* default 10 */
        uint64_t initial_delay; /* usec, default 5s */
        uint64_t max_delay;     /* usec, default 1h */
        enum uncertain_policy uncertain;

        /* [budget]: the spend guard; 0 = no limit */
        uint64_t budget_per_hour;        /* submissions in the last 60 minutes */
        uint64_t budget_per_day;         /* submissions in the last 24 hours */
        uint64_t budget_credits_per_day; /* credits of the last 24 hours' submissions */
        uint64_t budget_assumed_credits; /* what a submission of unknown cost counts as */
        /* [events] */
        char *events_url;       /* http(s)://... or unix:/path; NULL = no events */
        unsigned events_states; /* job states that make an event, mask of (1u << state) */
        struct secret events_secrets[CONFIG_MAX_SECRETS]; /* whsec_...; the first signs */
        size_t n_events_secrets;
        char *events_secret_file;    /* where they were read from, when none was set itself */
        uint64_t events_concurrency; /* deliveries in flight at once, default 4 */
        uint64_t events_timeout;     /* usec, one delivery attempt, default 10s */
        uint64_t events_max_age;     /* usec, default 24h: then an undelivered event is dead */
        uint64_t events_keep;        /* usec, default 7d: delivered events purged after */

        /* [log] */
        int log_level;     /* syslog priority, default LOG_INFO */
        int fold_accepted; /* 1 (yes, default): `accepted` folds into a `submitted` within 1 s */
};

/* One error: "FILE:LINE: message" (or "environment: VAR: message"). */
struct config_errors {
        char **lines;
        size_t n;
};

/* Loads the configuration.
 * path: the main file; NULL means CONFIG_DEFAULT_PATH, which may be missing. A path given
 *       explicitly must exist.
 * Drop-ins: every "*.conf" in "<directory of path>/conf.d/" in name order, after the main file.
 * Then the environment: VIDU_UPSCALED_<SECTION>_<KEY> (upper case) overrides a key; an unknown
 * variable with that prefix is an error.
 * Secrets: api_key, else api_key_file, else $CREDENTIALS_DIRECTORY/api-key; auth secret(s) from
 * secret (may repeat), secret_file (one per line), else $CREDENTIALS_DIRECTORY/webhook-secret;
 * the events secret(s) the same way from [events] and the credential events-secret; with
 * store.backend = postgresql, the database password (when store.url has none) from
 * store.password_file, else $CREDENTIALS_DIRECTORY/db-password.
 * Errors are appended to *errors as "FILE:LINE: message", "PATH: message", "environment: VAR:
 * message" or "configuration: message" (a rule across keys set nowhere in particular).
 * Returns 0 with *ret set, or -EINVAL with every error in *errors (also on I/O errors), or -ENOMEM
 * (the errors may then be incomplete). */
int config_load(const char *path, struct config **ret, struct config_errors *errors);
/* config_load() with the main file's name given: path_is_default says whether it may be missing
 * (as CONFIG_DEFAULT_PATH may); conf.d is looked for beside it either way. For tests and tools. */
int config_load_full(const char *path, bool path_is_default, struct config **ret,
                     struct config_errors *errors);

struct config *config_free(struct config *c);
void config_errors_clear(struct config_errors *e);

/* Writes the effective settings as INI to f, every secret masked as "(set)" / "(unset)" (one
 * "secret = (set)" line per auth secret); sizes as bytes or with a K/M/G suffix when exact. */
void config_dump(const struct config *c, FILE *f);

/* The key table: every key the loader accepts, once, in the order config_dump prints them.
 * Parsing, the environment names, the defaults, config_free and config_dump all walk it. */
struct config_loader; /* the loader's state, private to config.c */
struct config_key;

/* Parses value (control characters already refused) into field, the key's place in the struct
 * config being loaded. Returns NULL, or what to change: a static message or one written to msg. */
typedef const char *(*config_parse_fn)(const struct config_key *key, void *field, const char *value,
                                       struct config_loader *L, char *msg, size_t msglen);
/* Writes the key's "name = value" line(s) for config_dump: nothing for a key not shown, a mask
 * for a secret. */
typedef void (*config_dump_fn)(const struct config_key *key, const struct config *c,
                               const void *field, FILE *f);
/* Frees what the parser stored in field and leaves it unset (NULL: nothing to free). */
typedef void (*config_release_fn)(struct config *c, void *field);

enum {
        CONFIG_KEY_SECRET = 1 << 0, /* never printed, never quoted in a message */
        CONFIG_KEY_REPEAT = 1 << 1, /* may repeat: lines of one source add up, the next replaces */
        CONFIG_KEY_NONEMPTY = 1 << 2, /* text: an empty value is an error */
        CONFIG_KEY_TOKEN = 1 << 3,    /* text: an HTTP token (header name, auth word) */
};

struct config_key {
        const char *section;
        const char *name;
        config_parse_fn parse;
        config_dump_fn dump;
        config_release_fn release;
        size_t offset;            /* of the field in struct config */
        uint64_t min, max;        /* numbers: the accepted range */
        const char *const *names; /* enums and choices: the accepted words, NULL-terminated */
        const int *values;        /* enums: the value of each name (NULL: its index) */
        unsigned flags;           /* CONFIG_KEY_* */
        const char *default_text; /* parsed like a file's value before any file; NULL = unset */
};

/* The table, *n rows. */
const struct config_key *config_keys(size_t *n);

const char *auth_scheme_to_string(enum auth_scheme s);
const char *store_backend_to_string(enum store_backend b);
/* store.instance, or its default: the machine id, '-', the pid. 0, or -errno. */
int config_store_instance(const struct config *c, char *buf, size_t len);
const char *upstream_flavor_to_string(enum upstream_flavor f);
