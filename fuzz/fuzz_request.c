/* fuzz_request.c: the whole request path (libmicrohttpd, routing, limits, webhook parsing,
 * staging, group commit into a real ledger) fed raw bytes over a loopback connection. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include "config.h"
#include "dispatcher.h"
#include "http.h"
#include "journal.h"
#include "ledger.h"
#include "metrics.h"
#include "webhook.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static sd_event *event;
static struct http_server *server;
static struct webhook *webhook;
static struct metrics metrics;
static unsigned short port;

static bool healthy(void *u)
{
        return true;
}

static void render(FILE *f, void *u)
{
        metrics_render(&metrics, f);
}

static const struct http_handlers handlers = {
    .webhook = webhook_handle, .healthy = healthy, .metrics = render};

static void setup(void)
{
        char dir[] = "/tmp/vidu-fuzz-request-XXXXXX", path[128], db[128];
        if (!mkdtemp(dir))
                abort();
        snprintf(path, sizeof(path), "%s/fuzz.conf", dir);
        snprintf(db, sizeof(db), "%s/ledger.db", dir);
        /* A free port: bind to port 0, read what the kernel chose, and let the daemon take it. */
        int probe = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in any = {.sin_family = AF_INET};
        socklen_t sl = sizeof(any);
        any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (probe < 0 || bind(probe, (struct sockaddr *)&any, sizeof(any)) < 0 ||
            getsockname(probe, (struct sockaddr *)&any, &sl) < 0)
                abort();
        close(probe);
        FILE *f = fopen(path, "w");
        if (!f)
                abort();
        /* Port 9 on loopback refuses: the dispatcher pauses as for an outage and sends nothing. */
        fprintf(f,
                "[server]\nlisten = 127.0.0.1:%u\nmax_body = 64K\nrequest_timeout = 2s\n"
                "[upstream]\nbase_url = http://127.0.0.1:9\napi_key = fuzz\n[store]\npath = %s\n"
                "synchronous = normal\n[log]\nlevel = err\n",
                (unsigned)ntohs(any.sin_port), db);
        fclose(f);
        struct config *cfg = NULL;
        struct config_errors errors = {0};
        if (config_load(path, &cfg, &errors) < 0) {
                for (size_t i = 0; i < errors.n; i++)
                        fprintf(stderr, "%s\n", errors.lines[i]);
                abort();
        }
        journal_setup(LOG_ERR);
        struct ledger *l = NULL;
        struct ledger_options lo = {.synchronous_full = false, .busy_timeout_ms = 10};
        struct dispatcher *d = NULL;
        struct txn *txn = NULL;
        if (sd_event_new(&event) < 0 || ledger_open(db, &lo, &l, NULL) < 0 ||
            txn_new(event, l, &metrics, &txn) < 0 ||
            dispatcher_new(event, l, txn, cfg, &metrics, &d) < 0 ||
            webhook_new(event, l, txn, cfg, &metrics, d, &webhook) < 0 ||
            http_server_new(event, cfg, &handlers, webhook, &server) < 0)
                abort();
        const char *desc = http_server_description(server);
        const char *colon = strrchr(desc, ':');
        if (!colon)
                abort();
        port = (unsigned short)atoi(colon + 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        if (!event)
                setup();
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0)
                abort();
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)
                abort();
        size_t sent = 0;
        bool closed = false;
        char buf[4096];
        /* Drive the loop until the server closes the connection, or briefly: an incomplete request
         * would otherwise wait for server.request_timeout, and the fuzzer would crawl. */
        for (int i = 0; i < 100 && !closed; i++) { /* at most ~100 ms an input */
                if (sent < size) {
                        ssize_t n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
                        if (n > 0)
                                sent += (size_t)n;
                        else if (n < 0 && errno != EAGAIN)
                                sent = size;
                        if (sent == size)
                                shutdown(fd, SHUT_WR);
                } else if (size == 0 && i == 0)
                        shutdown(fd, SHUT_WR);
                sd_event_run(event, 1000);
                ssize_t n = recv(fd, buf, sizeof(buf), 0);
                if (n == 0 || (n < 0 && errno != EAGAIN))
                        closed = true;
        }
        close(fd);
        /* Let the server notice the close and free the connection. */
        for (int i = 0; i < 4; i++)
                sd_event_run(event, 0);
        return 0;
}
