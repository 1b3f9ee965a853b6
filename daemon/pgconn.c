/* pgconn.c: one libpq connection on sd-event: PQconnectPoll on the socket's readiness, then
 * pipeline mode (every statement of a batch and one sync written together, PQflush on EPOLLOUT,
 * PQconsumeInput and PQgetResult on EPOLLIN), a loop-side timer for connects and batches, and
 * reconnection with capped exponential backoff (backoff.c). */
#include "pgconn.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "backoff.h"
#include "util.h"

#define GRACE_USEC (2 * USEC_PER_SEC)

enum phase {
        PHASE_WAITING,    /* no connection; the timer starts the next attempt */
        PHASE_CONNECTING, /* PQconnectPoll in progress */
        PHASE_READY,
};

/* pgconn_options.prepare: the statements a connection has named, by text, so each is parsed and
 * planned once a session rather than once a batch. Bounded: past it, statements go unnamed. */
#define MAX_PREPARED 64

enum prep_state {
        PREP_NONE, /* to be prepared with the next batch that uses it */
        PREP_SENT, /* its Parse is in a batch in flight (a batch behind it may use the name) */
        PREP_READY,
};

struct prepared {
        char *sql;
        char name[24];
        enum prep_state state;
};

/* One message on the wire whose answer is a result of its own. */
struct slot {
        int stmt; /* the caller's statement it is, or is for; -1: the statement timeout */
        int prep; /* >= 0: the Parse naming prepared[prep], ahead of stmt */
};

struct batch {
        pgconn_done_fn done;
        void *userdata;
        size_t n;     /* the caller's statements */
        size_t total; /* answers expected: the caller's, the timeout's, the Parses' */
        size_t cur;   /* the one whose results are being read */
        struct slot *slots;
        PGresult **results; /* one per slot */
        PGresult **user;    /* the caller's, in order, for its callback */
        bool failed;
        size_t failed_index;
        uint64_t deadline; /* CLOCK_MONOTONIC */
        struct batch *next;
};

struct pgconn {
        sd_event *event;
        char *conninfo;
        char *password; /* NULL: none given */
        uint64_t statement_timeout, batch_timeout, connect_timeout;
        unsigned max_in_flight;
        bool prepare;
        struct prepared prepared[MAX_PREPARED];
        size_t n_prepared;
        unsigned prepared_seq; /* names are never reused within a session */
        uint64_t backoff_initial, backoff_max;
        pgconn_state_fn state_cb;
        void *userdata;

        enum phase phase;
        PGconn *conn;
        sd_event_source *io;
        sd_event_source *timer;
        sd_event_source *lose_soon; /* a failure found inside pgconn_send, handled from the loop */
        int lose_error;
        bool losing;
        uint64_t deadline;                /* of the connect attempt, or of the reconnect wait */
        unsigned attempt;                 /* failed attempts since the last connection */
        struct batch *batch, *batch_tail; /* in flight, oldest first: results come in order */
        unsigned n_batches;
        char errmsg[512];
        struct pgconn_stats stats;
};

/* libpq's messages span lines ("...failed: ...\n\tIs the server running...?\n"): kept on one
 * line, for STATUS= and the journal's MESSAGE. */
static void set_errmsg(struct pgconn *c, const char *prefix, const char *msg)
{
        snprintf(c->errmsg, sizeof(c->errmsg), "%s%s", prefix, msg ? msg : "");
        size_t n = strlen(c->errmsg);
        while (n > 0 && (c->errmsg[n - 1] == '\n' || c->errmsg[n - 1] == ' '))
                c->errmsg[--n] = 0;
        for (char *p = c->errmsg; *p; p++)
                if (*p == '\n' || *p == '\t')
                        *p = ' ';
}

/* libpq prints the server's notices and warnings on stderr by default; library-like code does
 * not log. */
static void ignore_notice(void *arg, const char *message)
{
}

static uint64_t now_mono(struct pgconn *c)
{
        uint64_t now;
        if (sd_event_now(c->event, CLOCK_MONOTONIC, &now) < 0)
                now = now_monotonic_usec();
        return now;
}

static void arm_timer(struct pgconn *c)
{
        uint64_t at = UINT64_MAX;
        if (c->phase == PHASE_WAITING || c->phase == PHASE_CONNECTING)
                at = c->deadline;
        else if (c->batch)
                at = c->batch->deadline;
        if (at == UINT64_MAX) {
                sd_event_source_set_enabled(c->timer, SD_EVENT_OFF);
                return;
        }
        sd_event_source_set_time(c->timer, at);
        sd_event_source_set_enabled(c->timer, SD_EVENT_ONESHOT);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

/* Watches the connection's socket for events. libpq may change sockets while connecting (another
 * host, a retry without SSL), so the source is made again for each step there. */
static int watch(struct pgconn *c, uint32_t events, bool renew)
{
        int fd = PQsocket(c->conn);
        if (fd < 0)
                return -EBADF;
        if (c->io && renew)
                c->io = sd_event_source_disable_unref(c->io);
        if (c->io)
                return sd_event_source_set_io_events(c->io, events);
        int r = sd_event_add_io(c->event, &c->io, fd, events, on_io, c);
        if (r >= 0)
                sd_event_source_set_description(c->io, "pg-socket");
        return r;
}

static int error_from_sqlstate(const char *st)
{
        if (!st)
                return -EIO;
        if (strcmp(st, "23505") == 0)
                return -EEXIST;
        if (strcmp(st, "57014") == 0)
                return -ETIMEDOUT; /* query_canceled: the statement timeout */
        if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0)
                return -EAGAIN;
        if (strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0)
                return -ECONNRESET; /* connection exceptions, admin shutdown */
        return -EIO;
}

static void free_batch(struct batch *b)
{
        for (size_t i = 0; i < b->total; i++)
                PQclear(b->results[i]);
        free(b->results);
        free(b->slots);
        free(b->user);
        free(b);
}

/* A new session has no prepared statements. */
static void forget_prepared(struct pgconn *c)
{
        for (size_t i = 0; i < c->n_prepared; i++)
                free(c->prepared[i].sql);
        c->n_prepared = 0;
}

/* The entry for sql, made if there is room; NULL: send it unnamed. */
static struct prepared *find_prepared(struct pgconn *c, const char *sql)
{
        for (size_t i = 0; i < c->n_prepared; i++)
                if (c->prepared[i].sql == sql || strcmp(c->prepared[i].sql, sql) == 0)
                        return &c->prepared[i];
        if (c->n_prepared == MAX_PREPARED)
                return NULL;
        struct prepared *p = &c->prepared[c->n_prepared];
        p->sql = strdup(sql);
        if (!p->sql)
                return NULL;
        p->state = PREP_NONE;
        c->n_prepared++;
        return p;
}

/* Ends the oldest batch in flight: its callback runs with what it came to. */
static void finish_batch(struct pgconn *c, int error, bool lost)
{
        struct batch *b = c->batch;
        if (!b)
                return;
        c->batch = b->next;
        if (!c->batch)
                c->batch_tail = NULL;
        c->n_batches--;
        for (size_t i = 0; i < b->total; i++)
                if (b->slots[i].stmt >= 0 && b->slots[i].prep < 0)
                        b->user[b->slots[i].stmt] = b->results[i];
        struct pgconn_result res = {
            .error = error,
            .n = b->n,
            .results = b->user,
            .failed = -1,
            .sqlstate = "",
            .message = "",
        };
        if (b->failed) {
                const PGresult *fr = b->results[b->failed_index];
                const char *st = fr ? PQresultErrorField(fr, PG_DIAG_SQLSTATE) : NULL;
                res.sqlstate = st ? st : "";
                res.message = fr ? PQresultErrorMessage(fr) : "";
                int stmt = b->slots[b->failed_index].stmt;
                res.failed = stmt >= 0 ? stmt : 0;
                if (res.error == 0)
                        res.error = error_from_sqlstate(st);
                /* A statement named in this session that the server no longer has, or whose
                 * plan a change of the schema (another instance's migration) made stale: named
                 * anew from the next batch on. */
                if (st && (strcmp(st, "26000") == 0 || strcmp(st, "0A000") == 0))
                        for (size_t i = 0; i < c->n_prepared; i++)
                                c->prepared[i].state = PREP_NONE;
                /* A FATAL ends the session wherever it was: after a COMMIT statement had done
                 * its work but before its answer left, say; a failure with no severity is
                 * libpq's own (the connection broke mid-answer). Only a failure of the statement
                 * itself, from the server, proves the transaction undone. */
                const char *sev = fr ? PQresultErrorField(fr, PG_DIAG_SEVERITY_NONLOCALIZED) : NULL;
                if (lost && (!sev || strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0))
                        res.unknown_outcome = true;
        } else if (lost)
                /* Handed over, and neither an answer to its end nor a failure came back: its
                 * COMMIT (or its sync's implicit one) may have landed. */
                res.unknown_outcome = true;
        if (res.error < 0 && !*res.message)
                res.message = c->errmsg;
        arm_timer(c);
        b->done(c, &res, b->userdata);
        free_batch(b);
}

static void close_conn(struct pgconn *c)
{
        c->io = sd_event_source_disable_unref(c->io);
        if (c->conn) {
                PQfinish(c->conn);
                c->conn = NULL;
        }
}

static uint32_t random_u32(void)
{
        uint32_t v = 0;
        if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != sizeof(v))
                v = (uint32_t)now_monotonic_usec();
        return v;
}

/* The connection (or the attempt) is gone: fail the batch in flight, wait, try again. */
static void lose(struct pgconn *c, int error)
{
        bool was_ready = c->phase == PHASE_READY;
        close_conn(c);
        sd_event_source_set_enabled(c->lose_soon, SD_EVENT_OFF);
        c->losing = false;
        c->phase = PHASE_WAITING;
        c->attempt++;
        c->deadline = now_mono(c) +
                      backoff_delay(c->attempt, c->backoff_initial, c->backoff_max, random_u32());
        if (was_ready)
                c->stats.losses++;
        else
                c->stats.connect_failures++;
        /* Every batch handed over goes with it, each as it stood (a callback may send no more:
         * the connection is not ready). */
        while (c->batch)
                finish_batch(c, error, true);
        arm_timer(c);
        if (c->state_cb)
                c->state_cb(c, was_ready ? PGCONN_LOST : PGCONN_CONNECT_FAILED, c->userdata);
}

static void became_ready(struct pgconn *c)
{
        /* Pipeline mode needs the non-blocking sends: a batch larger than the socket's buffer
         * waits in libpq's until EPOLLOUT. */
        if (PQsetnonblocking(c->conn, 1) != 0 || PQenterPipelineMode(c->conn) != 1) {
                set_errmsg(c, "cannot enter pipeline mode: ", PQerrorMessage(c->conn));
                lose(c, -EIO);
                return;
        }
        if (watch(c, EPOLLIN, true) < 0) {
                set_errmsg(c, "cannot watch the connection's socket", NULL);
                lose(c, -EIO);
                return;
        }
        c->phase = PHASE_READY;
        forget_prepared(c);
        c->attempt = 0;
        c->errmsg[0] = 0;
        c->stats.connects++;
        arm_timer(c);
        if (c->state_cb)
                c->state_cb(c, PGCONN_CONNECTED, c->userdata);
}

static void connect_step(struct pgconn *c)
{
        switch (PQconnectPoll(c->conn)) {
        case PGRES_POLLING_READING:
                if (watch(c, EPOLLIN, true) < 0)
                        break;
                return;
        case PGRES_POLLING_WRITING:
                if (watch(c, EPOLLOUT, true) < 0)
                        break;
                return;
        case PGRES_POLLING_OK:
                became_ready(c);
                return;
        default:
                set_errmsg(c, "", PQerrorMessage(c->conn));
                lose(c, -ECONNREFUSED);
                return;
        }
        set_errmsg(c, "cannot watch the connection's socket", NULL);
        lose(c, -EIO);
}

static void start_connect(struct pgconn *c)
{
        /* Keywords are taken in order, a later one overriding: the password first, so that one
         * in the connection string wins. */
        const char *keys[] = {"password", "dbname", "fallback_application_name", NULL};
        const char *values[] = {c->password ? c->password : "", c->conninfo, "vidu-upscaled", NULL};
        c->conn = PQconnectStartParams(keys, values, 1);
        c->phase = PHASE_CONNECTING;
        c->deadline = now_mono(c) + c->connect_timeout;
        arm_timer(c);
        if (!c->conn) {
                set_errmsg(c, "out of memory", NULL);
                lose(c, -ENOMEM);
                return;
        }
        if (PQstatus(c->conn) == CONNECTION_BAD) {
                set_errmsg(c, "", PQerrorMessage(c->conn));
                lose(c, -ECONNREFUSED);
                return;
        }
        PQsetNoticeProcessor(c->conn, ignore_notice, NULL);
        /* Until the first PQconnectPoll, as if it had asked to write (libpq's documentation). */
        if (watch(c, EPOLLOUT, true) < 0) {
                set_errmsg(c, "cannot watch the connection's socket", NULL);
                lose(c, -EIO);
        }
}

/* Writes what libpq holds; waits for EPOLLOUT while some remains. false: connection lost. */
static bool flush(struct pgconn *c)
{
        int r = PQflush(c->conn);
        if (r < 0) {
                set_errmsg(c, "", PQerrorMessage(c->conn));
                return false;
        }
        if (r > 0)
                c->stats.send_blocked++;
        return watch(c, r > 0 ? EPOLLIN | EPOLLOUT : EPOLLIN, false) >= 0;
}

/* Reads every result libpq has whole, without waiting for more. */
static void drain(struct pgconn *c)
{
        while (c->batch && !PQisBusy(c->conn)) {
                struct batch *b = c->batch;
                PGresult *res = PQgetResult(c->conn);
                if (!res) {
                        /* The end of one statement's results. */
                        if (b->cur < b->total)
                                b->cur++;
                        continue;
                }
                ExecStatusType st = PQresultStatus(res);
                if (st == PGRES_PIPELINE_SYNC) {
                        PQclear(res);
                        finish_batch(c, 0, false);
                        continue;
                }
                if (b->cur >= b->total) {
                        PQclear(res); /* nothing asked for it */
                        continue;
                }
                c->stats.results++;
                int prep = b->slots[b->cur].prep;
                if (prep >= 0 && (size_t)prep < c->n_prepared &&
                    c->prepared[prep].state == PREP_SENT)
                        /* Not parsed (the batch failed before it): named anew when next used. */
                        c->prepared[prep].state = st == PGRES_COMMAND_OK ? PREP_READY : PREP_NONE;
                if (st == PGRES_FATAL_ERROR && !b->failed) {
                        b->failed = true;
                        b->failed_index = b->cur;
                }
                PQclear(b->results[b->cur]);
                b->results[b->cur] = res;
        }
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        struct pgconn *c = userdata;
        if (c->phase == PHASE_CONNECTING) {
                connect_step(c);
                return 0;
        }
        if (c->phase != PHASE_READY)
                return 0;
        if ((revents & EPOLLOUT) && !flush(c)) {
                lose(c, -ECONNRESET);
                return 0;
        }
        if (revents & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                if (!PQconsumeInput(c->conn)) {
                        set_errmsg(c, "", PQerrorMessage(c->conn));
                        lose(c, -ECONNRESET);
                        return 0;
                }
                drain(c);
        }
        if (c->conn && PQstatus(c->conn) == CONNECTION_BAD) {
                set_errmsg(c, "", PQerrorMessage(c->conn));
                lose(c, -ECONNRESET);
        }
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct pgconn *c = userdata;
        char buf[32];
        switch (c->phase) {
        case PHASE_WAITING:
                start_connect(c);
                break;
        case PHASE_CONNECTING:
                format_duration(c->connect_timeout, buf, sizeof(buf));
                snprintf(c->errmsg, sizeof(c->errmsg), "no connection within %s", buf);
                c->stats.timeouts++;
                lose(c, -ETIMEDOUT);
                break;
        case PHASE_READY:
                if (!c->batch || now_mono(c) < c->batch->deadline) {
                        arm_timer(c);
                        break;
                }
                format_duration(c->batch_timeout, buf, sizeof(buf));
                snprintf(c->errmsg, sizeof(c->errmsg),
                         "the server did not answer within %s; connection given up", buf);
                c->stats.timeouts++;
                lose(c, -ETIMEDOUT);
                break;
        }
        return 0;
}

static int on_lose_soon(sd_event_source *s, void *userdata)
{
        struct pgconn *c = userdata;
        if (c->phase == PHASE_READY)
                lose(c, c->lose_error);
        return 0;
}

int pgconn_new(sd_event *event, const struct pgconn_options *opts, pgconn_state_fn state_cb,
               void *userdata, struct pgconn **ret)
{
        if (!opts || isempty(opts->conninfo))
                return -EINVAL;
        struct pgconn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->event = sd_event_ref(event);
        c->state_cb = state_cb;
        c->userdata = userdata;
        c->conninfo = strdup(opts->conninfo);
        if (opts->password && !(c->password = strdup(opts->password))) {
                free(c->conninfo);
                c->conninfo = NULL;
        }
        c->statement_timeout = opts->statement_timeout_usec;
        c->prepare = opts->prepare;
        c->max_in_flight = opts->max_in_flight ? opts->max_in_flight : 1;
        c->batch_timeout = opts->batch_timeout_usec;
        if (c->batch_timeout == 0)
                c->batch_timeout =
                    c->statement_timeout ? c->statement_timeout + GRACE_USEC : 30 * USEC_PER_SEC;
        c->connect_timeout =
            opts->connect_timeout_usec ? opts->connect_timeout_usec : 10 * USEC_PER_SEC;
        c->backoff_initial =
            opts->reconnect_initial_usec ? opts->reconnect_initial_usec : 100 * USEC_PER_MSEC;
        c->backoff_max = opts->reconnect_max_usec ? opts->reconnect_max_usec : 10 * USEC_PER_SEC;
        if (c->backoff_max < c->backoff_initial)
                c->backoff_max = c->backoff_initial;
        c->phase = PHASE_WAITING;
        c->deadline = 0; /* the first attempt at once, from the loop */
        int r = c->conninfo ? 0 : -ENOMEM;
        if (r >= 0)
                r = sd_event_add_time(event, &c->timer, CLOCK_MONOTONIC, 0, 1, on_timer, c);
        if (r >= 0)
                r = sd_event_add_defer(event, &c->lose_soon, on_lose_soon, c);
        if (r < 0) {
                pgconn_free(c);
                return r;
        }
        sd_event_source_set_description(c->timer, "pg-timer");
        sd_event_source_set_enabled(c->lose_soon, SD_EVENT_OFF);
        arm_timer(c);
        *ret = c;
        return 0;
}

struct pgconn *pgconn_free(struct pgconn *c)
{
        if (!c)
                return NULL;
        while (c->batch) {
                struct batch *b = c->batch;
                c->batch = b->next;
                free_batch(b);
        }
        close_conn(c);
        forget_prepared(c);
        sd_event_source_disable_unref(c->timer);
        sd_event_source_disable_unref(c->lose_soon);
        sd_event_unref(c->event);
        free(c->conninfo);
        if (c->password) {
                explicit_bzero(c->password, strlen(c->password));
                free(c->password);
        }
        free(c);
        return NULL;
}

int pgconn_send(struct pgconn *c, const struct pgconn_stmt *stmts, size_t n, pgconn_done_fn done,
                void *userdata)
{
        if (!c || !stmts || n == 0 || !done)
                return -EINVAL;
        if (c->phase != PHASE_READY)
                return -ENOTCONN;
        if (c->n_batches >= c->max_in_flight)
                return -EBUSY;
        if (c->losing)
                return -ENOTCONN;
        struct batch *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        /* Outside a transaction, the batch's settings are set for the one it is; inside one (a
         * BEGIN left open by the previous batch) they hold already, and a transaction that
         * failed accepts nothing but its ROLLBACK. Behind a batch still in flight, that one
         * is taken to end its transaction (pgconn_options.max_in_flight): if it fails instead,
         * this one fails at its first statement, as it would have anyway. A lone ROLLBACK, the
         * end of a failed one, goes without: nothing else runs in a failed transaction. */
        bool settings = (c->statement_timeout || c->prepare) &&
                        (c->batch || PQtransactionStatus(c->conn) == PQTRANS_IDLE) &&
                        !(n == 1 && strcmp(stmts[0].sql, "ROLLBACK") == 0);
        /* At most one Parse a statement ahead of it. */
        b->n = n;
        b->slots = calloc(2 * n + 1, sizeof(*b->slots));
        b->results = calloc(2 * n + 1, sizeof(PGresult *));
        b->user = calloc(n, sizeof(PGresult *));
        if (!b->slots || !b->results || !b->user) {
                free_batch(b);
                return -ENOMEM;
        }
        b->done = done;
        b->userdata = userdata;
        if (c->batch_tail)
                c->batch_tail->next = b;
        else
                c->batch = b;
        c->batch_tail = b;
        c->n_batches++;

        bool ok = true;
        if (settings) {
                /* The server's own bound on the transaction (0: its default); named statements
                 * still planned for their values each time: a generic plan cannot see how
                 * long the arrays are, nor which ids they hold. */
                char ms[UINT_DEC_SIZE];
                format_uint((c->statement_timeout + USEC_PER_MSEC - 1) / USEC_PER_MSEC, ms);
                const char *p[] = {c->statement_timeout ? ms : NULL,
                                   c->prepare ? "force_custom_plan" : NULL};
                b->slots[b->total++] = (struct slot){.stmt = -1, .prep = -1};
                ok = PQsendQueryParams(c->conn,
                                       "SELECT set_config('statement_timeout', $1, true) "
                                       "WHERE $1 IS NOT NULL UNION ALL "
                                       "SELECT set_config('plan_cache_mode', $2, true) "
                                       "WHERE $2 IS NOT NULL",
                                       2, NULL, p, NULL, NULL, 0) == 1;
        }
        for (size_t i = 0; ok && i < n; i++) {
                /* The statements with parameters are the ones run again and again; the rest
                 * (BEGIN, COMMIT, the schema's DDL) have little to parse and never fill the
                 * table. */
                struct prepared *p =
                    c->prepare && stmts[i].n_params > 0 ? find_prepared(c, stmts[i].sql) : NULL;
                if (p && p->state == PREP_NONE) {
                        snprintf(p->name, sizeof(p->name), "vidu_%u", ++c->prepared_seq);
                        p->state = PREP_SENT;
                        b->slots[b->total++] =
                            (struct slot){.stmt = (int)i, .prep = (int)(p - c->prepared)};
                        ok = PQsendPrepare(c->conn, p->name, stmts[i].sql, stmts[i].n_params,
                                           NULL) == 1;
                        if (!ok)
                                break;
                }
                b->slots[b->total++] = (struct slot){.stmt = (int)i, .prep = -1};
                ok = p ? PQsendQueryPrepared(c->conn, p->name, stmts[i].n_params, stmts[i].params,
                                             NULL, NULL, 0) == 1
                       : PQsendQueryParams(c->conn, stmts[i].sql, stmts[i].n_params, NULL,
                                           stmts[i].params, NULL, NULL, 0) == 1;
        }
        ok = ok && PQpipelineSync(c->conn) == 1;
        c->stats.batches++;
        c->stats.statements += n;
        b->deadline = now_mono(c) + c->batch_timeout;
        arm_timer(c);
        if (ok) {
                c->stats.syncs++;
                ok = flush(c);
        } else
                set_errmsg(c, "", PQerrorMessage(c->conn));
        if (!ok) {
                /* Part of it may have left: the connection goes, from the loop, and the batch's
                 * callback says how it ended. */
                c->lose_error = -ECONNRESET;
                c->losing = true;
                sd_event_source_set_enabled(c->lose_soon, SD_EVENT_ONESHOT);
        }
        return 0;
}

bool pgconn_is_connected(const struct pgconn *c)
{
        return c && c->phase == PHASE_READY;
}

bool pgconn_busy(const struct pgconn *c)
{
        return c && c->batch;
}

const char *pgconn_errmsg(const struct pgconn *c)
{
        return c ? c->errmsg : "";
}

const struct pgconn_stats *pgconn_get_stats(const struct pgconn *c)
{
        return &c->stats;
}

int pgconn_backend_pid(const struct pgconn *c)
{
        return c && c->conn && c->phase == PHASE_READY ? PQbackendPID(c->conn) : 0;
}

int pgconn_check_conninfo(const char *conninfo, char **ret_error)
{
        char *err = NULL;
        PQconninfoOption *o = PQconninfoParse(conninfo ? conninfo : "", &err);
        if (!o) {
                if (ret_error) {
                        char *m = NULL;
                        if (asprintf(&m, "%s", err ? err : "out of memory") < 0)
                                m = NULL;
                        if (m) {
                                size_t len = strlen(m);
                                while (len > 0 && m[len - 1] == '\n')
                                        m[--len] = 0;
                        }
                        *ret_error = m;
                }
                PQfreemem(err);
                return -EINVAL;
        }
        PQconninfoFree(o);
        return 0;
}
