/* httpc.h: outbound HTTP on the event loop: libcurl's multi interface driven by sd-event, with
 * keep-alive, capped answers and transport errors told apart (sent or not). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "upstream.h"

struct httpc;

struct httpc_response {
        enum upstream_transport transport;
        const char *transport_error; /* curl's words, or NULL */
        long status;
        const char *body; /* NUL-terminated, capped at HTTPC_MAX_BODY */
        size_t body_len;
        const char *retry_after; /* header value or NULL */
        uint64_t elapsed_usec;
};

#define HTTPC_MAX_BODY (1024 * 1024)

/* Called once per request, from the loop; the response is only valid during the call. */
typedef void (*httpc_done_fn)(const struct httpc_response *resp, void *userdata);

#define HTTPC_ONCE_MAX_IDLE_SEC 2

int httpc_new(sd_event *event, unsigned max_connections, struct httpc **ret);
/* Aborts whatever is still in flight without calling its callbacks. */
struct httpc *httpc_free(struct httpc *h);
/* Aborts whatever is still in flight, handing each request's userdata to release (which frees
 * what the caller allocated for it) instead of calling its callback. */
void httpc_abandon(struct httpc *h, void (*release)(void *userdata));

struct httpc_request {
        const char *method; /* "GET" or "POST" */
        const char *url;
        const char *authorization; /* full header value, e.g. "Bearer KEY"; never logged */
        const char *body;          /* JSON, or NULL */
        uint64_t timeout_usec;
        uint64_t connect_timeout_usec;
        /* Sent at most once (a paid submission). libcurl silently sends a request again when a
         * reused keep-alive connection dies before any answer; with this set, that second send
         * is refused just before it leaves, so such a transfer fails (as "cut after sending",
         * which the caller treats as uncertain) instead. Connections idle longer than
         * HTTPC_ONCE_MAX_IDLE_SEC are not reused for it, well inside any upstream's keep-alive
         * timeout, so that case stays rare. */
        bool once;
        /* More header lines ("Name: value"), NULL-terminated, for this request alone; or NULL. */
        const char *const *extra_headers;
        /* Connect to this AF_UNIX socket instead of the URL's host (the URL still names the
         * path and Host); or NULL. */
        const char *unix_socket;
};

int httpc_start(struct httpc *h, const struct httpc_request *req, httpc_done_fn done,
                void *userdata);
size_t httpc_in_flight(const struct httpc *h);
/* Sends what httpc_start queued at once, instead of from the next loop iteration (curl's "start
 * now" timer): one iteration less between a durable commit and its request on the wire. */
void httpc_send_now(struct httpc *h);
