/* httpc.c: libcurl multi on sd-event (the ephiperfifo pattern): sockets and the timer are event
 * sources; finished transfers are found again through CURLINFO_PRIVATE. */
#include "httpc.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "util.h"

/* A request's header lines, made once for each authorization value and kind of request (with a
 * body or not) and shared by the transfers that send them: a list of its own cost each request
 * four allocations and copies and the authorization line formatted again. Counted, so a new key
 * after a reload leaves the old list to the transfers still using it. */
struct headers {
        unsigned refs;
        struct curl_slist *list;
        const char *authorization; /* the value it was made for, inside its line, or NULL */
};

#define AUTHORIZATION "Authorization: "

struct transfer {
        struct httpc *owner;
        CURL *easy;
        struct headers *headers;
        char *upload; /* the request body, sent with the headers in one write */
        size_t upload_len;
        unsigned sends;      /* times libcurl was about to send a `once` request */
        bool resend_refused; /* its second send, stopped by on_prereq */
        char *body;
        size_t len, cap;
        bool too_big;
        char retry_after[128];
        bool has_retry_after;
        uint64_t started;
        httpc_done_fn done;
        void *userdata;
        struct transfer *prev, *next;
};

/* Finished transfers leave their easy handle here for the next one: creating a handle and its
 * buffers costs more than the request itself on a kept-alive connection. */
#define SPARE_MAX 64

struct httpc {
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;
        sd_event_source *soon; /* curl's timeout 0, "call me again now", without a timerfd */
        struct transfer *transfers;
        size_t n;
        CURL *spare[SPARE_MAX];
        size_t n_spare, spare_max;
        struct headers *headers[2]; /* the lists in use, [with a body] */
};

static void headers_unref(struct headers *hs)
{
        if (!hs || --hs->refs > 0)
                return;
        /* The authorization line holds the API key. */
        for (struct curl_slist *l = hs->list; l; l = l->next)
                explicit_bzero(l->data, strlen(l->data));
        curl_slist_free_all(hs->list);
        free(hs);
}

/* Appends a copy of line to hs's list; false when out of memory. */
static bool headers_add(struct headers *hs, const char *line)
{
        struct curl_slist *l = curl_slist_append(hs->list, line);
        if (l)
                hs->list = l;
        return l != NULL;
}

static struct headers *headers_new(const char *authorization, bool body)
{
        struct headers *hs = calloc(1, sizeof(*hs));
        if (!hs)
                return NULL;
        hs->refs = 1;
        /* The body of a POST must not be held back waiting for "100 Continue". */
        bool ok = headers_add(hs, "Expect:") && headers_add(hs, "Accept: application/json") &&
                  (!body || headers_add(hs, "Content-Type: application/json"));
        if (ok && authorization) {
                char *line = NULL;
                ok = asprintf(&line, AUTHORIZATION "%s", authorization) >= 0;
                if (!ok)
                        line = NULL;
                ok = ok && headers_add(hs, line);
                erase_free(line);
                if (ok) {
                        struct curl_slist *last = hs->list;
                        while (last->next)
                                last = last->next;
                        hs->authorization = last->data + strlen(AUTHORIZATION);
                }
        }
        if (!ok) {
                headers_unref(hs);
                return NULL;
        }
        return hs;
}

static bool same_value(const char *a, const char *b)
{
        return a && b ? strcmp(a, b) == 0 : a == b;
}

/* The list for this request, shared: a reference the caller owns. */
static struct headers *headers_for(struct httpc *h, const struct httpc_request *req)
{
        bool body = req->body != NULL;
        struct headers *hs = h->headers[body];
        if (!hs || !same_value(hs->authorization, req->authorization)) {
                hs = headers_new(req->authorization, body);
                if (!hs)
                        return NULL;
                headers_unref(h->headers[body]);
                h->headers[body] = hs;
        }
        hs->refs++;
        return hs;
}

/* A list of the request's own, with its extra lines: not shared. */
static struct headers *headers_with(const struct httpc_request *req)
{
        struct headers *hs = headers_new(req->authorization, req->body != NULL);
        if (!hs)
                return NULL;
        for (const char *const *l = req->extra_headers; *l; l++)
                if (!headers_add(hs, *l)) {
                        headers_unref(hs);
                        return NULL;
                }
        return hs;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
        struct transfer *t = userdata;
        size_t n = size * nmemb;
        if (t->len + n > HTTPC_MAX_BODY) {
                t->too_big = true;
                return 0;
        }
        if (t->len + n + 1 > t->cap) {
                size_t cap = t->cap ? t->cap : 4096;
                while (cap < t->len + n + 1)
                        cap *= 2;
                char *b = realloc(t->body, cap);
                if (!b)
                        return 0;
                t->body = b;
                t->cap = cap;
        }
        memcpy(t->body + t->len, data, n);
        t->len += n;
        t->body[t->len] = 0;
        return n;
}

/* libcurl calls this just before the request goes out on a connection, again when it silently
 * sends it a second time (a reused keep-alive connection that died before any answer): set only
 * for a request marked `once`, and refusing that second time, so a paid submission is never
 * sent twice. */
static int on_prereq(void *userdata, char *conn_primary_ip, char *conn_local_ip,
                     int conn_primary_port, int conn_local_port)
{
        struct transfer *t = userdata;
        if (++t->sends > 1) {
                t->resend_refused = true;
                return CURL_PREREQFUNC_ABORT;
        }
        return CURL_PREREQFUNC_OK;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
        struct transfer *t = userdata;
        size_t n = size * nmemb;
        static const char name[] = "retry-after:";
        if (n > sizeof(name) - 1 && strncasecmp(data, name, sizeof(name) - 1) == 0) {
                const char *v = data + sizeof(name) - 1;
                size_t vl = n - (sizeof(name) - 1);
                while (vl > 0 && (*v == ' ' || *v == '\t')) {
                        v++;
                        vl--;
                }
                while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
                        vl--;
                if (vl < sizeof(t->retry_after)) {
                        memcpy(t->retry_after, v, vl);
                        t->retry_after[vl] = 0;
                        t->has_retry_after = true;
                }
        }
        /* A new status line (after 100 Continue or a redirect) starts a new header set. */
        if (n >= 5 && strncmp(data, "HTTP/", 5) == 0)
                t->has_retry_after = false;
        return n;
}

static void transfer_free(struct transfer *t)
{
        if (!t)
                return;
        if (t->easy) {
                struct httpc *h = t->owner;
                curl_multi_remove_handle(h->multi, t->easy);
                if (h->n_spare < h->spare_max) {
                        /* Every option back to its default, the headers and body included. */
                        curl_easy_reset(t->easy);
                        h->spare[h->n_spare++] = t->easy;
                } else
                        curl_easy_cleanup(t->easy);
        }
        headers_unref(t->headers);
        free(t->upload);
        free(t->body);
        if (t->prev)
                t->prev->next = t->next;
        else if (t->owner->transfers == t)
                t->owner->transfers = t->next;
        if (t->next)
                t->next->prev = t->prev;
        t->owner->n--;
        free(t);
}

/* Whether any of the request left this host, which decides if a failure is certain or not. */
static enum upstream_transport transport_of(const struct transfer *t, CURLcode rc)
{
        if (t->resend_refused)
                /* A reused connection died after the request went out, unanswered; libcurl
                 * wanted to send it again and on_prereq refused. */
                return UPSTREAM_TRANSPORT_CUT;
        long request_size = 0;
        curl_easy_getinfo(t->easy, CURLINFO_REQUEST_SIZE, &request_size);
        bool sent = request_size > 0;
        switch (rc) {
        case CURLE_OK:
                return UPSTREAM_TRANSPORT_OK;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_CONNECT:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_URL_MALFORMAT:
        case CURLE_UNSUPPORTED_PROTOCOL:
                return UPSTREAM_TRANSPORT_NOT_SENT;
        case CURLE_OPERATION_TIMEDOUT:
                return sent ? UPSTREAM_TRANSPORT_TIMEOUT : UPSTREAM_TRANSPORT_NOT_SENT;
        default:
                return sent ? UPSTREAM_TRANSPORT_CUT : UPSTREAM_TRANSPORT_NOT_SENT;
        }
}

static void check_done(struct httpc *h)
{
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(h->multi, &left))) {
                if (msg->msg != CURLMSG_DONE)
                        continue;
                struct transfer *t = NULL;
                CURLcode rc = msg->data.result;
                curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
                if (!t)
                        continue;
                struct httpc_response resp = {0};
                resp.transport = transport_of(t, rc);
                if (t->too_big && rc == CURLE_WRITE_ERROR) {
                        /* We stopped reading, not the network: the answer arrived, too large. */
                        resp.transport = UPSTREAM_TRANSPORT_OK;
                }
                resp.transport_error = rc == CURLE_OK ? NULL : curl_easy_strerror(rc);
                curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &resp.status);
                if (resp.transport == UPSTREAM_TRANSPORT_OK && !t->too_big) {
                        resp.body = t->body ? t->body : "";
                        resp.body_len = t->len;
                } else {
                        resp.body = "";
                        resp.body_len = 0;
                }
                /* The transfer is freed before the callback runs: copy what it points into. */
                char retry_after[sizeof(t->retry_after)];
                memcpy(retry_after, t->retry_after, sizeof(retry_after));
                resp.retry_after = t->has_retry_after ? retry_after : NULL;
                resp.elapsed_usec = now_monotonic_usec() - t->started;
                httpc_done_fn done = t->done;
                void *ud = t->userdata;
                /* Free first: the callback may start a new transfer reusing the connection. */
                char *body = TAKE_PTR(t->body);
                if (resp.body == body)
                        t->body = NULL;
                transfer_free(t);
                done(&resp, ud);
                free(body);
        }
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        struct httpc *h = userdata;
        int action = 0, running;
        if (revents & EPOLLIN)
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & (EPOLLERR | EPOLLHUP))
                action |= CURL_CSELECT_ERR;
        curl_multi_socket_action(h->multi, fd, action, &running);
        check_done(h);
        return 0;
}

static void run_due(struct httpc *h)
{
        int running;
        /* This call is the "now" curl asked for; it may ask again from inside. */
        sd_event_source_set_enabled(h->soon, SD_EVENT_OFF);
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        check_done(h);
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        run_due(userdata);
        return 0;
}

static int on_soon(sd_event_source *s, void *userdata)
{
        run_due(userdata);
        return 0;
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
        struct httpc *h = userp;
        sd_event_source *src = socketp;
        if (what == CURL_POLL_REMOVE) {
                if (src) {
                        sd_event_source_disable_unref(src);
                        curl_multi_assign(h->multi, fd, NULL);
                }
                return 0;
        }
        uint32_t events = 0;
        if (what & CURL_POLL_IN)
                events |= EPOLLIN;
        if (what & CURL_POLL_OUT)
                events |= EPOLLOUT;
        if (src) {
                sd_event_source_set_io_events(src, events);
                return 0;
        }
        if (sd_event_add_io(h->event, &src, fd, events, on_io, h) < 0)
                return -1;
        sd_event_source_set_description(src, "upstream-socket");
        curl_multi_assign(h->multi, fd, src);
        return 0;
}

static int on_timer_change(CURLM *multi, long timeout_ms, void *userp)
{
        struct httpc *h = userp;
        if (timeout_ms < 0) {
                sd_event_source_set_enabled(h->soon, SD_EVENT_OFF);
                return sd_event_source_set_enabled(h->timer, SD_EVENT_OFF) < 0 ? -1 : 0;
        }
        /* Every new transfer asks for 0; arming the timerfd for it would cost a system call, and
         * an extra wake-up, each time. A timer set earlier may still fire: run_due then finds
         * nothing due, and curl says when it next wants to be called. */
        if (timeout_ms == 0)
                return sd_event_source_set_enabled(h->soon, SD_EVENT_ONESHOT) < 0 ? -1 : 0;
        return event_timer_in(h->timer, (uint64_t)timeout_ms * USEC_PER_MSEC) < 0 ? -1 : 0;
}

int httpc_new(sd_event *event, unsigned max_connections, struct httpc **ret)
{
        static bool global_init;
        if (!global_init) {
                if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                        return -EIO;
                global_init = true;
        }
        struct httpc *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->event = sd_event_ref(event);
        h->spare_max = max_connections + 2 < SPARE_MAX ? max_connections + 2 : SPARE_MAX;
        h->multi = curl_multi_init();
        if (!h->multi) {
                httpc_free(h);
                return -ENOMEM;
        }
        /* Accuracy 1 µs: with the default (250 ms) a transfer added to the multi handle would wait
         * that long for curl's "start now" timeout. */
        int r = sd_event_add_time(event, &h->timer, CLOCK_MONOTONIC, UINT64_MAX, 1, on_timer, h);
        if (r < 0) {
                httpc_free(h);
                return r;
        }
        sd_event_source_set_enabled(h->timer, SD_EVENT_OFF);
        sd_event_source_set_description(h->timer, "upstream-timer");
        r = sd_event_add_defer(event, &h->soon, on_soon, h);
        if (r < 0) {
                httpc_free(h);
                return r;
        }
        sd_event_source_set_enabled(h->soon, SD_EVENT_OFF);
        sd_event_source_set_description(h->soon, "upstream-soon");
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)max_connections + 2);
        curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)max_connections + 2);
        *ret = h;
        return 0;
}

void httpc_abandon(struct httpc *h, void (*release)(void *userdata))
{
        while (h && h->transfers) {
                void *userdata = h->transfers->userdata;
                transfer_free(h->transfers);
                if (release)
                        release(userdata);
        }
}

struct httpc *httpc_free(struct httpc *h)
{
        if (!h)
                return NULL;
        h->spare_max = 0; /* the transfers' handles go, not to the spares */
        while (h->transfers)
                transfer_free(h->transfers);
        while (h->n_spare > 0)
                curl_easy_cleanup(h->spare[--h->n_spare]);
        if (h->multi)
                curl_multi_cleanup(h->multi);
        sd_event_source_disable_unref(h->timer);
        sd_event_source_disable_unref(h->soon);
        sd_event_unref(h->event);
        headers_unref(h->headers[0]);
        headers_unref(h->headers[1]);
        free(h);
        return NULL;
}

size_t httpc_in_flight(const struct httpc *h)
{
        return h ? h->n : 0;
}

int httpc_start(struct httpc *h, const struct httpc_request *req, httpc_done_fn done,
                void *userdata)
{
        struct transfer *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->owner = h;
        t->done = done;
        t->userdata = userdata;
        t->started = now_monotonic_usec();
        t->next = h->transfers;
        if (h->transfers)
                h->transfers->prev = t;
        h->transfers = t;
        h->n++;

        t->easy = h->n_spare > 0 ? h->spare[--h->n_spare] : curl_easy_init();
        if (!t->easy) {
                transfer_free(t);
                return -ENOMEM;
        }
        CURL *e = t->easy;
        curl_easy_setopt(e, CURLOPT_URL, req->url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, t);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(req->timeout_usec / USEC_PER_MSEC));
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(req->connect_timeout_usec / USEC_PER_MSEC));
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        if (req->once) {
                curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
                curl_easy_setopt(e, CURLOPT_PREREQDATA, t);
                curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, (long)HTTPC_ONCE_MAX_IDLE_SEC);
        }
        curl_easy_setopt(e, CURLOPT_USERAGENT, "vidu-upscaled/" VIDU_VERSION);
        if (req->unix_socket)
                curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, req->unix_socket);
        t->headers = req->extra_headers ? headers_with(req) : headers_for(h, req);
        if (!t->headers) {
                transfer_free(t);
                return -ENOMEM;
        }
        if (req->body) {
                t->upload = strdup(req->body);
                if (!t->upload) {
                        transfer_free(t);
                        return -ENOMEM;
                }
                t->upload_len = strlen(t->upload);
                /* Not copied (the transfer owns it); small enough that libcurl writes it in the
                 * same send as the headers. */
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->upload_len);
                curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->upload);
        }
        if (strcmp(req->method, "GET") != 0 && !req->body)
                curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers->list);
        if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
                curl_easy_cleanup(t->easy);
                t->easy = NULL;
                transfer_free(t);
                return -EIO;
        }
        return 0;
}

void httpc_send_now(struct httpc *h)
{
        if (h && h->n > 0)
                run_due(h);
}
