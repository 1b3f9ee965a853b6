/* http.c: libmicrohttpd driven by sd-event (as systemd-journal-remote does): listeners, limits,
 * routing, and the three calls of the access handler (start; body chunks; final). */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "cidr.h"
#include "journal.h"
#include "util.h"

#define MAX_LISTENERS 16
#define SWEEP_USEC    (500 * USEC_PER_MSEC)

/* One accepted connection, so a request that takes too long overall can be cut. */
struct conn_track {
        struct MHD_Connection *conn;
        int fd;
        uint64_t since; /* monotonic: when the current request (or the wait for one) began */
        bool suspended;
        bool received; /* the whole request is in: its answer is ours to send, never cut */
        struct conn_track *prev, *next;
};

struct listener {
        struct http_server *server;
        struct MHD_Daemon *mhd;
        int fd;
        bool is_unix;
        sd_event_source *io;
        sd_event_source *timer;
        char name[128];
};

struct http_server {
        sd_event *event;
        const struct config *cfg;
        const struct http_handlers *h;
        void *userdata;
        struct listener listeners[MAX_LISTENERS];
        size_t n_listeners;
        size_t pending;
        bool quiesced;
        sd_event_source *run_defer;
        sd_event_source *sweeper;
        struct conn_track *conns;
        struct cidr_list allow;
        char *tls_key, *tls_cert;
        uint64_t refused;
        char description[512];
};

struct http_request {
        struct http_server *server;
        struct listener *listener;
        struct MHD_Connection *conn;
        char *uri; /* raw, as received: path and query */
        bool uri_too_long;
        bool too_big;          /* the body passed server.max_body while streaming */
        bool route_get;        /* /healthz or /metrics, answered on the final call */
        uint64_t arrived_usec; /* CLOCK_MONOTONIC, when its request line was read */
        char *path;
        const char *query; /* into uri */
        const char *method;
        bool started;
        bool answered; /* a response was queued */
        bool suspended;
        bool counted; /* counted in server->pending */
        unsigned status;
        char *resp_body;
        char *retry_after;
        uint8_t *body;
        size_t len, cap;
        char peer[INET6_ADDRSTRLEN + 8];
};

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
        struct http_request *r = calloc(1, sizeof(*r));
        if (!r)
                return NULL;
        r->listener = cls;
        r->server = r->listener->server;
        r->conn = conn;
        r->arrived_usec = now_monotonic_usec();
        size_t max = r->server->cfg->max_header;
        size_t n = strnlen(uri, max + 1);
        r->uri_too_long = n > max;
        r->uri = strndup_safe(uri, n > max ? max : n);
        if (!r->uri) {
                free(r);
                return NULL;
        }
        char *q = strchr(r->uri, '?');
        r->path = q ? strndup_safe(r->uri, (size_t)(q - r->uri)) : strdup(r->uri);
        r->query = q ? q + 1 : NULL;
        if (!r->path) {
                free(r->uri);
                free(r);
                return NULL;
        }
        return r;
}

static void request_free(struct http_request *r)
{
        if (!r)
                return;
        if (r->counted)
                r->server->pending--;
        free(r->uri);
        free(r->path);
        free(r->resp_body);
        free(r->retry_after);
        free(r->body);
        free(r);
}

static struct conn_track *track_of(struct MHD_Connection *conn)
{
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        return ci ? ci->socket_context : NULL;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
        struct conn_track *t = track_of(conn);
        if (t) {
                t->since = now_monotonic_usec(); /* a keep-alive connection starts a new wait */
                t->received = false;
        }
        request_free(*con_cls);
        *con_cls = NULL;
}

const char *http_request_method(const struct http_request *r)
{
        return r->method;
}

const char *http_request_path(const struct http_request *r)
{
        return r->path;
}

const char *http_request_query(const struct http_request *r)
{
        return r->query;
}

const char *http_request_header(void *request, const char *name)
{
        struct http_request *r = request;
        return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const uint8_t *http_request_body(const struct http_request *r, size_t *ret_len)
{
        *ret_len = r->len;
        return r->body ? r->body : (const uint8_t *)"";
}

const char *http_request_peer(const struct http_request *r)
{
        return r->peer;
}

struct http_server *http_request_server(const struct http_request *r)
{
        return r->server;
}

int http_request_answer(struct http_request *r, unsigned status, const char *body,
                        const char *retry_after)
{
        free(r->resp_body);
        free(r->retry_after);
        r->resp_body = strdup(body ? body : "");
        r->retry_after = retry_after ? strdup(retry_after) : NULL;
        r->status = status;
        return r->resp_body ? 0 : -ENOMEM;
}

static void schedule_run(struct http_server *s)
{
        sd_event_source_set_enabled(s->run_defer, SD_EVENT_ONESHOT);
}

void http_request_suspend(struct http_request *r)
{
        struct conn_track *t = track_of(r->conn);
        if (t)
                t->suspended = true;
        r->suspended = true;
        MHD_suspend_connection(r->conn);
}

void http_request_resume(struct http_request *r)
{
        if (!r->suspended)
                return;
        r->suspended = false;
        struct conn_track *t = track_of(r->conn);
        if (t)
                t->suspended = false;
        MHD_resume_connection(r->conn);
        schedule_run(r->server);
}

/* Queues r's stored answer as a JSON response. */
static enum MHD_Result send_answer(struct http_request *r)
{
        const char *body = r->resp_body ? r->resp_body : "";
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
        if (!resp)
                return MHD_NO;
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                r->status == 200 && strcmp(r->path, "/metrics") == 0
                                    ? "text/plain; version=0.0.4; charset=utf-8"
                                    : "application/json");
        if (r->retry_after)
                MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, r->retry_after);
        if (r->status == 405)
                MHD_add_response_header(
                    resp, MHD_HTTP_HEADER_ALLOW,
                    strcmp(r->path, r->server->cfg->webhook_path) == 0 ? "POST" : "GET, HEAD");
        enum MHD_Result ret = MHD_queue_response(r->conn, r->status, resp);
        MHD_destroy_response(resp);
        r->answered = true;
        if (r->server->h->answered && strcmp(r->path, r->server->cfg->webhook_path) == 0)
                r->server->h->answered(r->status, now_monotonic_usec() - r->arrived_usec,
                                       r->server->userdata);
        return ret;
}

/* The whole request is in: from here on the sweeper leaves the connection alone, so a stalled
 * loop cannot cut an answer that is ready (a durable 202 among them); a reader too slow to take
 * it meets server.idle_timeout. Not for early answers (413 on Content-Length and the like): a
 * sender may still be trickling the body those refuse. */
static void mark_received(struct http_request *r)
{
        struct conn_track *t = track_of(r->conn);
        if (t)
                t->received = true;
}

static enum MHD_Result answer_now(struct http_request *r, unsigned status, const char *message)
{
        char body[512];
        if (message)
                snprintf(body, sizeof(body), "{\"error\":\"%s\"}", message);
        http_request_answer(r, status, message ? body : "{}", NULL);
        return send_answer(r);
}

/* application/json, or any application/<x>+json; parameters (charset) allowed. */
static bool content_type_is_json(const char *ct)
{
        if (!ct)
                return false;
        size_t n = strcspn(ct, ";");
        while (n > 0 && ct[n - 1] == ' ')
                n--;
        if (n == 16 && strncasecmp(ct, "application/json", 16) == 0)
                return true;
        return n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
               strncasecmp(ct + n - 5, "+json", 5) == 0;
}

static enum MHD_Result serve_metrics(struct http_request *r)
{
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
                return answer_now(r, 500, "out of memory");
        r->server->h->metrics(f, r->server->userdata);
        fclose(f);
        r->status = 200;
        free(r->resp_body);
        r->resp_body = buf;
        return send_answer(r);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
        struct http_request *r = *con_cls;
        struct http_server *s = cls;
        const struct config *cfg = s->cfg;
        if (!r)
                return MHD_NO;

        if (!r->started) {
                r->started = true;
                r->method = method;
                const union MHD_ConnectionInfo *ci =
                    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
                if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
                        inet_ntop(AF_INET, &((struct sockaddr_in *)ci->client_addr)->sin_addr,
                                  r->peer, sizeof(r->peer));
                else if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET6)
                        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ci->client_addr)->sin6_addr,
                                  r->peer, sizeof(r->peer));
                else
                        snprintf(r->peer, sizeof(r->peer), "local");
                bool is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
                if (r->uri_too_long)
                        return answer_now(r, 414, "URL too long");
                if (MHD_get_connection_values(conn, MHD_HEADER_KIND, NULL, NULL) >
                    (int)cfg->max_header_lines)
                        return answer_now(r, 431, "too many header lines");

                /* GET routes answer on the final call: a response queued on the first one makes
                 * libmicrohttpd close the connection, and monitoring keeps its connections. */
                if (strcmp(r->path, "/healthz") == 0 || strcmp(r->path, "/metrics") == 0) {
                        if (!is_get)
                                return answer_now(r, 405, "method not allowed");
                        r->route_get = true;
                        return MHD_YES;
                }
                if (strcmp(r->path, cfg->webhook_path) != 0)
                        return answer_now(r, 404, "not found");
                if (strcmp(method, "POST") != 0)
                        return answer_now(r, 405, "method not allowed: use POST");
                if (!content_type_is_json(MHD_lookup_connection_value(
                        conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE)))
                        return answer_now(r, 415, "content type must be application/json");
                /* Decide on the declared size before reading any of the body. */
                const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                             MHD_HTTP_HEADER_CONTENT_LENGTH);
                uint64_t declared;
                if (cl && parse_uint(cl, 0, UINT64_MAX, &declared) >= 0 && declared > cfg->max_body)
                        return answer_now(r, 413, "body too large");
                r->counted = true;
                s->pending++;
                return MHD_YES;
        }

        if (r->answered) {
                /* Already answered (413 mid-stream): swallow what is still coming. */
                *upload_data_size = 0;
                return MHD_YES;
        }

        if (*upload_data_size > 0) {
                size_t n = *upload_data_size;
                *upload_data_size = 0;
                /* Too large while streaming (chunked, no Content-Length): libmicrohttpd 0.9.75
                 * cannot answer before the body ends, so stop keeping it, discard the rest
                 * (server.request_timeout bounds how long), and answer 413 at its end. */
                if (r->too_big || r->len + n > cfg->max_body) {
                        r->too_big = true;
                        free(r->body);
                        r->body = NULL;
                        r->len = r->cap = 0;
                        return MHD_YES;
                }
                if (r->len + n > r->cap) {
                        size_t cap = r->cap ? r->cap : 4096;
                        while (cap < r->len + n)
                                cap *= 2;
                        if (cap > cfg->max_body)
                                cap = cfg->max_body;
                        uint8_t *b = realloc(r->body, cap + 1);
                        if (!b)
                                return answer_now(r, 503, "out of memory");
                        r->body = b;
                        r->cap = cap;
                }
                memcpy(r->body + r->len, upload_data, n);
                r->len += n;
                r->body[r->len] = 0;
                return MHD_YES;
        }

        /* The final call: the whole body is here, or we were resumed with an answer. */
        mark_received(r);
        if (r->status)
                return send_answer(r);
        if (r->too_big)
                return answer_now(r, 413, "body too large");
        if (r->route_get) {
                if (strcmp(r->path, "/metrics") == 0)
                        return serve_metrics(r);
                bool ok = s->h->healthy(s->userdata);
                http_request_answer(r, ok ? 200 : 503,
                                    ok ? "{\"status\":\"ok\"}" : "{\"status\":\"unavailable\"}",
                                    ok ? NULL : "5");
                return send_answer(r);
        }
        s->h->webhook(r, s->userdata);
        if (r->suspended)
                return MHD_YES;
        if (!r->status)
                http_request_answer(r, 500, "{\"error\":\"internal error\"}", NULL);
        return send_answer(r);
}

static void update_timer(struct listener *l)
{
        MHD_UNSIGNED_LONG_LONG ms;
        if (MHD_get_timeout(l->mhd, &ms) == MHD_YES)
                event_timer_in(l->timer, ms * USEC_PER_MSEC);
        else
                sd_event_source_set_enabled(l->timer, SD_EVENT_OFF);
}

static void run_listener(struct listener *l)
{
        MHD_run(l->mhd);
        update_timer(l);
}

static int on_io(sd_event_source *src, int fd, uint32_t revents, void *userdata)
{
        run_listener(userdata);
        return 0;
}

static int on_timer(sd_event_source *src, uint64_t usec, void *userdata)
{
        run_listener(userdata);
        return 0;
}

static int on_run_all(sd_event_source *src, void *userdata)
{
        struct http_server *s = userdata;
        for (size_t i = 0; i < s->n_listeners; i++)
                run_listener(&s->listeners[i]);
        return 0;
}

void http_server_flush(struct http_server *s)
{
        int enabled = SD_EVENT_OFF;
        if (!s || sd_event_source_get_enabled(s->run_defer, &enabled) < 0 ||
            enabled == SD_EVENT_OFF)
                return;
        sd_event_source_set_enabled(s->run_defer, SD_EVENT_OFF);
        on_run_all(s->run_defer, s);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
        char buf[512];
        vsnprintf(buf, sizeof(buf), fmt, ap);
        buf[strcspn(buf, "\n")] = 0;
        log_debug("libmicrohttpd: %s", buf);
}

/* Opens "host:port", "[v6]:port" or "unix:/path" as a listening, non-blocking socket. */
static int open_listener(const char *spec, bool *ret_unix)
{
        int fd;
        *ret_unix = false;
        if (strncmp(spec, "unix:", 5) == 0) {
                struct sockaddr_un sa = {.sun_family = AF_UNIX};
                const char *path = spec + 5;
                if (strlen(path) >= sizeof(sa.sun_path))
                        return -ENAMETOOLONG;
                strcpy(sa.sun_path, path);
                fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                if (fd < 0)
                        return -errno;
                (void)unlink(path);
                if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, SOMAXCONN) < 0) {
                        int r = -errno;
                        close(fd);
                        return r;
                }
                *ret_unix = true;
                return fd;
        }
        char host[256];
        const char *port;
        if (spec[0] == '[') {
                const char *end = strchr(spec, ']');
                if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof(host))
                        return -EINVAL;
                memcpy(host, spec + 1, (size_t)(end - spec - 1));
                host[end - spec - 1] = 0;
                port = end + 2;
        } else {
                const char *colon = strrchr(spec, ':');
                if (!colon || (size_t)(colon - spec) >= sizeof(host))
                        return -EINVAL;
                memcpy(host, spec, (size_t)(colon - spec));
                host[colon - spec] = 0;
                port = colon + 1;
        }
        struct addrinfo hints = {.ai_family = AF_UNSPEC,
                                 .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                        *ai = NULL;
        int rc = getaddrinfo(*host ? host : NULL, port, &hints, &ai);
        if (rc != 0)
                return -EADDRNOTAVAIL;
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
                int r = -errno;
                freeaddrinfo(ai);
                return r;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
                setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
                int r = -errno;
                close(fd);
                freeaddrinfo(ai);
                return r;
        }
        freeaddrinfo(ai);
        return fd;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
        struct http_server *s = cls;
        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                struct conn_track *t = calloc(1, sizeof(*t));
                if (!t)
                        return;
                const union MHD_ConnectionInfo *ci =
                    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
                t->conn = conn;
                t->fd = ci ? ci->connect_fd : -1;
                t->since = now_monotonic_usec();
                t->next = s->conns;
                if (s->conns)
                        s->conns->prev = t;
                s->conns = t;
                *socket_context = t;
        } else {
                struct conn_track *t = *socket_context;
                if (!t)
                        return;
                if (t->prev)
                        t->prev->next = t->next;
                else
                        s->conns = t->next;
                if (t->next)
                        t->next->prev = t->prev;
                free(t);
                *socket_context = NULL;
        }
}

/* A sender that trickles bytes keeps resetting the idle timeout; this bounds a request's total
 * time. Shutting the socket down makes libmicrohttpd close the connection on its next read. */
static int on_sweep(sd_event_source *src, uint64_t usec, void *userdata)
{
        struct http_server *s = userdata;
        uint64_t now = now_monotonic_usec();
        for (struct conn_track *t = s->conns; t; t = t->next)
                if (!t->suspended && !t->received && t->fd >= 0 &&
                    now - t->since > s->cfg->request_timeout) {
                        shutdown(t->fd, SHUT_RDWR);
                        t->fd = -1;
                        log_debug("Closed a connection whose request took longer than "
                                  "server.request_timeout");
                }
        sd_event_source_set_time(src, usec + SWEEP_USEC);
        return 0;
}

static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
        struct http_server *s = cls;
        if (s->allow.n == 0 || !addr || addr->sa_family == AF_UNIX)
                return MHD_YES;
        if (cidr_list_match(&s->allow, addr))
                return MHD_YES;
        s->refused++;
        return MHD_NO;
}

static int start_listener(struct http_server *s, int fd, bool is_unix, const char *name)
{
        if (s->n_listeners >= MAX_LISTENERS)
                return -E2BIG;
        struct listener *l = &s->listeners[s->n_listeners];
        const struct config *cfg = s->cfg;
        memset(l, 0, sizeof(*l));
        l->server = s;
        l->fd = fd;
        l->is_unix = is_unix;
        snprintf(l->name, sizeof(l->name), "%s", name);
        unsigned int mem = cfg->max_header < 8192 ? 8192 : (unsigned)cfg->max_header;
        unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
        bool tls = s->tls_cert && !is_unix;
        if (tls)
                flags |= MHD_USE_TLS;
        l->mhd = MHD_start_daemon(
            flags, 0, on_accept, s, on_access, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
            MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_URI_LOG_CALLBACK, on_uri, l,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, l, MHD_OPTION_NOTIFY_CONNECTION,
            on_connection, s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
            MHD_OPTION_PER_IP_CONNECTION_LIMIT, is_unix ? 0u : (unsigned)cfg->max_per_ip,
            MHD_OPTION_CONNECTION_TIMEOUT,
            (unsigned)((cfg->idle_timeout + USEC_PER_SEC - 1) / USEC_PER_SEC),
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)mem,
            tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, s->tls_key, MHD_OPTION_HTTPS_MEM_CERT,
            s->tls_cert, MHD_OPTION_END);
        if (!l->mhd)
                return -EIO;
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(l->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        if (!info) {
                MHD_stop_daemon(l->mhd);
                return -EIO;
        }
        int r = sd_event_add_io(s->event, &l->io, info->epoll_fd, EPOLLIN, on_io, l);
        if (r >= 0)
                /* Accuracy 1 µs: the default (250 ms) would delay a "run again now" that long. */
                r = sd_event_add_time(s->event, &l->timer, CLOCK_MONOTONIC, UINT64_MAX, 1, on_timer,
                                      l);
        if (r < 0) {
                sd_event_source_disable_unref(l->io);
                MHD_stop_daemon(l->mhd);
                return r;
        }
        sd_event_source_set_description(l->io, "http");
        update_timer(l);
        s->n_listeners++;
        return 0;
}

static void describe_fd(int fd, char *buf, size_t len)
{
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        char host[INET6_ADDRSTRLEN] = "?";
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
                snprintf(buf, len, "fd %d", fd);
                return;
        }
        if (ss.ss_family == AF_UNIX)
                snprintf(buf, len, "unix:%.100s", ((struct sockaddr_un *)&ss)->sun_path);
        else if (ss.ss_family == AF_INET) {
                inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof(host));
                snprintf(buf, len, "%s:%u", host, ntohs(((struct sockaddr_in *)&ss)->sin_port));
        } else if (ss.ss_family == AF_INET6) {
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof(host));
                snprintf(buf, len, "[%s]:%u", host, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
        } else
                snprintf(buf, len, "fd %d", fd);
}

int http_server_new(sd_event *event, const struct config *cfg, const struct http_handlers *h,
                    void *userdata, struct http_server **ret)
{
        struct http_server *s = calloc(1, sizeof(*s));
        int r;
        if (!s)
                return -ENOMEM;
        s->event = sd_event_ref(event);
        s->cfg = cfg;
        s->h = h;
        s->userdata = userdata;
        r = sd_event_add_defer(event, &s->run_defer, on_run_all, s);
        if (r < 0)
                goto fail;
        sd_event_source_set_enabled(s->run_defer, SD_EVENT_OFF);
        uint64_t now;
        sd_event_now(event, CLOCK_MONOTONIC, &now);
        r = sd_event_add_time(event, &s->sweeper, CLOCK_MONOTONIC, now + SWEEP_USEC,
                              100 * USEC_PER_MSEC, on_sweep, s);
        if (r < 0)
                goto fail;
        sd_event_source_set_enabled(s->sweeper, SD_EVENT_ON);
        if (!isempty(cfg->allow_from)) {
                r = cidr_list_parse(cfg->allow_from, &s->allow, NULL);
                if (r < 0) {
                        log_error("server.allow_from cannot be parsed");
                        goto fail;
                }
        }
        if (!isempty(cfg->tls_cert)) {
                if (!MHD_is_feature_supported(MHD_FEATURE_TLS)) {
                        log_error(
                            "server.tls_cert is set but this libmicrohttpd has no TLS support");
                        r = -EOPNOTSUPP;
                        goto fail;
                }
                r = read_small_file(cfg->tls_cert, 1024 * 1024, false, &s->tls_cert, NULL);
                if (r >= 0)
                        r = read_small_file(cfg->tls_key, 1024 * 1024, false, &s->tls_key, NULL);
                if (r < 0) {
                        log_error("Cannot read server.tls_cert %s or server.tls_key: %s",
                                  cfg->tls_cert, strerror(-r));
                        goto fail;
                }
        }

        int n = sd_listen_fds(1);
        if (n < 0) {
                r = n;
                goto fail;
        }
        size_t o = 0;
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                char name[128];
                if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
                        log_warning(
                            "Ignoring passed file descriptor %d: not a listening stream socket",
                            fd);
                        continue;
                }
                fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
                describe_fd(fd, name, sizeof(name));
                r = start_listener(s, fd, sd_is_socket(fd, AF_UNIX, SOCK_STREAM, 1) > 0, name);
                if (r < 0)
                        goto fail;
                o += (size_t)snprintf(s->description + o, sizeof(s->description) - o,
                                      "%s%s (socket activation)", o ? ", " : "", name);
                if (o >= sizeof(s->description))
                        o = sizeof(s->description) - 1;
        }
        if (s->n_listeners == 0) {
                bool is_unix;
                int fd = open_listener(cfg->listen, &is_unix);
                if (fd < 0) {
                        r = fd;
                        log_error("Cannot listen on %s: %s", cfg->listen, strerror(-fd));
                        goto fail;
                }
                char name[128];
                describe_fd(fd, name, sizeof(name));
                r = start_listener(s, fd, is_unix, name);
                if (r < 0) {
                        close(fd);
                        goto fail;
                }
                snprintf(s->description, sizeof(s->description), "%s", name);
        }
        *ret = s;
        return 0;
fail:
        http_server_free(s);
        return r;
}

struct http_server *http_server_free(struct http_server *s)
{
        if (!s)
                return NULL;
        for (size_t i = 0; i < s->n_listeners; i++) {
                struct listener *l = &s->listeners[i];
                sd_event_source_disable_unref(l->io);
                sd_event_source_disable_unref(l->timer);
                if (l->mhd)
                        MHD_stop_daemon(l->mhd);
                if (l->fd >= 0)
                        close(l->fd);
        }
        sd_event_source_disable_unref(s->run_defer);
        sd_event_source_disable_unref(s->sweeper);
        cidr_list_clear(&s->allow);
        erase_free(s->tls_key);
        free(s->tls_cert);
        sd_event_unref(s->event);
        free(s);
        return NULL;
}

void http_server_set_config(struct http_server *s, const struct config *cfg)
{
        s->cfg = cfg;
}

void http_server_quiesce(struct http_server *s)
{
        if (s->quiesced)
                return;
        s->quiesced = true;
        for (size_t i = 0; i < s->n_listeners; i++) {
                struct listener *l = &s->listeners[i];
                /* MHD gives the listening socket back; closing it refuses new connections. */
                MHD_socket fd = MHD_quiesce_daemon(l->mhd);
                if (fd != MHD_INVALID_SOCKET) {
                        close(fd);
                        l->fd = -1;
                }
        }
}

size_t http_server_pending(const struct http_server *s)
{
        return s ? s->pending : 0;
}

const char *http_server_description(const struct http_server *s)
{
        return s->description;
}
