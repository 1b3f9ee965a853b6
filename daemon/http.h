/* http.h: the HTTP server: libmicrohttpd in external epoll mode on sd-event, one daemon per
 * listening socket, limits enforced before bodies are read, routes to the webhook, /healthz and
 * /metrics. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "config.h"

struct http_server;
struct http_request;

struct http_handlers {
        /* A complete webhook body, authenticated by the caller's auth step inside: the handler
         * either answers now (http_request_answer) or suspends the request and answers later
         * (http_request_answer then http_request_resume). */
        void (*webhook)(struct http_request *req, void *userdata);
        bool (*healthy)(void *userdata);
        /* Renders /metrics into f. */
        void (*metrics)(FILE *f, void *userdata);
        /* Counts each answer by status; elapsed_usec runs from the request line's arrival to
         * the answer being queued (for a 202, after its commit). */
        void (*answered)(unsigned status, uint64_t elapsed_usec, void *userdata);
};

/* Opens listeners: sockets passed by systemd (sd_listen_fds) take precedence over
 * cfg->listen. */
int http_server_new(sd_event *event, const struct config *cfg, const struct http_handlers *h,
                    void *userdata, struct http_server **ret);
struct http_server *http_server_free(struct http_server *s);
void http_server_set_config(struct http_server *s, const struct config *cfg);

/* Stops accepting connections (drain); requests in progress go on. */
void http_server_quiesce(struct http_server *s);
/* Requests received but not yet answered. */
size_t http_server_pending(const struct http_server *s);
/* Names of the listeners, e.g. "127.0.0.1:8080 (socket activation)". */
const char *http_server_description(const struct http_server *s);

/* Request accessors for the webhook handler. */
const char *http_request_method(const struct http_request *r);
const char *http_request_path(const struct http_request *r);
const char *http_request_query(const struct http_request *r);     /* raw, without '?', or NULL */
const char *http_request_header(void *request, const char *name); /* auth_request-compatible */
const uint8_t *http_request_body(const struct http_request *r, size_t *ret_len);
const char *http_request_peer(const struct http_request *r);
struct http_server *http_request_server(const struct http_request *r);

/* Sets the answer; body is copied. retry_after may be NULL. */
int http_request_answer(struct http_request *r, unsigned status, const char *body,
                        const char *retry_after);
/* Suspends the request until http_request_resume (group commit). */
void http_request_suspend(struct http_request *r);
void http_request_resume(struct http_request *r);
/* Sends the answers of resumed requests now instead of from the next loop iteration. Never from
 * inside a handler (libmicrohttpd is not reentrant). */
void http_server_flush(struct http_server *s);
