/* pgconn.h: one PostgreSQL connection driven by the sd-event loop, never blocking it: libpq's
 * non-blocking connect and pipeline mode, so a batch of statements costs one round trip; a
 * per-batch timeout on the server and on the loop; reconnection with capped backoff.
 * Library-like: returns -errno, never logs; pgconn_errmsg() says why. */
#pragma once

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

struct pgconn;

struct pgconn_options {
        /* A libpq URI or key=value string. Give the host as an address or a socket directory: a
         * host name is looked up by libpq synchronously, on the loop. */
        const char *conninfo;
        /* Used when conninfo holds no password (conninfo's own wins); NULL: libpq's own
         * (PGPASSFILE, ~/.pgpass). Never put in conninfo, so messages cannot show it. */
        const char *password;
        /* Set for each batch on the server (set_config(..., true): a transaction's own, so it
         * holds through PgBouncer in transaction mode); 0: the server's default. */
        uint64_t statement_timeout_usec;
        /* The loop's own bound on a batch's answer: past it the connection is given up (a server
         * that stopped, a cut network). 0: statement_timeout + 2 s, or 30 s without one. */
        uint64_t batch_timeout_usec;
        uint64_t connect_timeout_usec; /* 0: 10 s */
        /* How many batches may be in flight at once (0: 1). More than one pipelines them: the
         * next is written while the server still works on the one before, each ending its own
         * transaction. Not through a pooler in transaction mode (PgBouncer 1.18), which hands
         * the server connection on at the first batch's end, with the next one on it. */
        unsigned max_in_flight;
        /* Names each statement with parameters (by its text) the first time a session uses
         * it, so the server parses it once a session instead of once a batch (at most 64; the
         * rest go unnamed); each batch still plans them for their values (plan_cache_mode =
         * force_custom_plan, the batch's own). Not through a pooler in transaction mode
         * (PgBouncer 1.18), whose next transaction may run on a server connection that never
         * saw the name. */
        bool prepare;
        uint64_t reconnect_initial_usec; /* 0: 100 ms */
        uint64_t reconnect_max_usec;     /* 0: 10 s */
};

enum pgconn_event {
        PGCONN_CONNECTED,      /* ready for batches */
        PGCONN_LOST,           /* an established connection went; reconnecting */
        PGCONN_CONNECT_FAILED, /* an attempt failed; another follows after the backoff */
};
typedef void (*pgconn_state_fn)(struct pgconn *c, enum pgconn_event ev, void *userdata);

/* What a batch came to; valid during the callback only. */
struct pgconn_result {
        /* 0: every statement succeeded and the batch is committed (when it wrote). Otherwise:
         * -EEXIST a unique violation, -ETIMEDOUT the statement timeout or the loop's, -EAGAIN a
         * serialization failure or deadlock (try again), -ECONNRESET the connection was lost,
         * -EIO any other failure; nothing the batch wrote is committed, unless unknown_outcome. */
        int error;
        /* The connection went after the batch was handed over and before its end was answered,
         * with no statement failing first (or only with the session's own FATAL end): it may or
         * may not have committed. Meaningless for a batch that writes nothing. */
        bool unknown_outcome;
        size_t n;
        /* One per statement of the batch, in order; NULL for one with no answer. */
        PGresult *const *results;
        int failed;           /* index of the statement that failed, or -1 */
        const char *sqlstate; /* the failure's SQLSTATE, or "" */
        const char *message;  /* the failure in words, or "" */
};
/* Callbacks (this one and pgconn_state_fn) may send the next batch; they must not free c. */
typedef void (*pgconn_done_fn)(struct pgconn *c, const struct pgconn_result *res, void *userdata);

/* One statement: parameters in text form, NULL for SQL NULL; copied during pgconn_send. */
struct pgconn_stmt {
        const char *sql; /* exactly one statement, $1.. for parameters */
        int n_params;
        const char *const *params;
};

struct pgconn_stats {
        uint64_t connects, connect_failures, losses, timeouts;
        uint64_t batches, statements, syncs;
        uint64_t results;      /* statements' results read */
        uint64_t send_blocked; /* times the batch did not fit the socket at once (EPOLLOUT) */
};

/* Connects from the loop, soon after; state_cb (may be NULL) hears of every change. */
int pgconn_new(sd_event *event, const struct pgconn_options *opts, pgconn_state_fn state_cb,
               void *userdata, struct pgconn **ret);
/* Closes the connection; a batch still in flight is abandoned without its callback. */
struct pgconn *pgconn_free(struct pgconn *c);

/* Sends n statements as one batch: one pipeline, one sync, one round trip, one transaction
 * (the statements between two syncs run in one implicit transaction, committed at its end; a
 * batch may also hold BEGIN and leave the transaction open for the next batch). done is called
 * once, from the loop, never from inside this call, and batches end in the order sent. -ENOTCONN
 * while not connected (nothing sent), -EBUSY while max_in_flight batches are in flight, -EINVAL,
 * -ENOMEM. */
int pgconn_send(struct pgconn *c, const struct pgconn_stmt *stmts, size_t n, pgconn_done_fn done,
                void *userdata);

bool pgconn_is_connected(const struct pgconn *c);
bool pgconn_busy(const struct pgconn *c);
/* The last failure in words (libpq's or the loop's); "" when none. */
const char *pgconn_errmsg(const struct pgconn *c);
const struct pgconn_stats *pgconn_get_stats(const struct pgconn *c);
/* The server process serving the connection (PgBouncer's own number through it), or 0. */
int pgconn_backend_pid(const struct pgconn *c);

/* Checks a connection string without connecting. 0, or -EINVAL and *ret_error (free it). */
int pgconn_check_conninfo(const char *conninfo, char **ret_error);
