/* idle_floor.c: the machine's floor for the idle notification-to-submit chain (bench): a bare
 * server that, for each request, makes 4 KiB durable (pwrite + fdatasync), answers 202, and posts
 * one upscale submission to the fake upstream on a kept connection. No parsing, no ledger, no
 * journal, no event loop: only the system calls any durable-ack daemon must make, in the order
 * vidu-upscaled makes them. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)

static void usage(void)
{
        fprintf(stderr, "Usage: idle_floor --upstream-port PORT --sync-file PATH --port-file PATH\n"
                        "Serves 127.0.0.1 on a free port (written to --port-file); the API key "
                        "comes from $VIDU_FAKE_API_KEY.\n");
}

static int write_all(int fd, const char *p, size_t len)
{
        while (len > 0) {
                ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

/* Reads one HTTP message (headers and a Content-Length body) into buf; its length, 0 at a clean
 * end of the stream, -1 on error. What follows it in buf is dropped: the bench's client and the
 * fake send one message at a time. */
static ssize_t read_message(int fd, char *buf, size_t cap)
{
        size_t have = 0;
        for (;;) {
                char *end = have ? memmem(buf, have, "\r\n\r\n", 4) : NULL;
                if (end) {
                        size_t head = (size_t)(end - buf) + 4, body = 0;
                        *end = '\0'; /* the header block as a string, for a moment */
                        const char *cl = strcasestr(buf, "\r\ncontent-length:");
                        if (cl)
                                body = strtoul(cl + strlen("\r\ncontent-length:"), NULL, 10);
                        *end = '\r';
                        if (head + body > cap)
                                return -1;
                        if (have >= head + body)
                                return (ssize_t)(head + body);
                }
                if (have == cap)
                        return -1;
                ssize_t n = recv(fd, buf + have, cap - have, 0);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n == 0 && have == 0 ? 0 : -1;
                have += (size_t)n;
        }
}

static int connect_upstream(int port)
{
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
        if (fd < 0)
                return -1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

int main(int argc, char **argv)
{
        const char *sync_path = NULL, *port_file = NULL;
        int upstream_port = 0;
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--upstream-port") == 0 && i + 1 < argc)
                        upstream_port = atoi(argv[++i]);
                else if (strcmp(argv[i], "--sync-file") == 0 && i + 1 < argc)
                        sync_path = argv[++i];
                else if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc)
                        port_file = argv[++i];
                else {
                        usage();
                        return 2;
                }
        }
        const char *key = getenv("VIDU_FAKE_API_KEY");
        if (upstream_port <= 0 || upstream_port > 65535 || !sync_path || !port_file) {
                usage();
                return 2;
        }
        /* The record's file, written once so that each later write overwrites allocated blocks,
         * as the daemon's WAL does (walvfs.c). */
        static char page[4096];
        int sfd = open(sync_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (sfd < 0 || pwrite(sfd, page, sizeof(page), 0) != (ssize_t)sizeof(page) ||
            fsync(sfd) < 0) {
                perror("idle_floor: the sync file");
                return 1;
        }

        int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
        struct sockaddr_in a = {.sin_family = AF_INET};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t alen = sizeof(a);
        if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(lfd, 16) < 0 ||
            getsockname(lfd, (struct sockaddr *)&a, &alen) < 0) {
                perror("idle_floor: listening");
                return 1;
        }
        char tmp_port[4096];
        snprintf(tmp_port, sizeof(tmp_port), "%s.tmp", port_file);
        FILE *pf = fopen(tmp_port, "w");
        if (!pf || fprintf(pf, "%d\n", ntohs(a.sin_port)) < 0 || fclose(pf) != 0 ||
            rename(tmp_port, port_file) < 0) {
                perror("idle_floor: the port file");
                return 1;
        }

        static char in[BUF_SIZE], answer[BUF_SIZE];
        static const char ack[] = "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                                  "Content-Length: 2\r\n\r\n{}";
        int ufd = -1;
        unsigned long long n = 0;
        for (;;) {
                int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EINTR)
                                continue;
                        perror("idle_floor: accept");
                        return 1;
                }
                setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                while (read_message(cfd, in, sizeof(in)) > 0) {
                        if (pwrite(sfd, in, sizeof(page), 0) != (ssize_t)sizeof(page) ||
                            fdatasync(sfd) < 0) {
                                perror("idle_floor: recording");
                                return 1;
                        }
                        if (write_all(cfd, ack, sizeof(ack) - 1) < 0)
                                break;
                        char body[256], req[1024];
                        int blen = snprintf(body, sizeof(body),
                                            "{\"input\":{\"creation_id\":\"floor%d-%llu\"},"
                                            "\"type\":\"upscale\",\"settings\":{\"model\":"
                                            "\"stable\",\"duration\":4}}",
                                            (int)getpid(), n++);
                        int rlen = snprintf(req, sizeof(req),
                                            "POST /vidu/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                                            "Authorization: Bearer %s\r\nContent-Type: "
                                            "application/json\r\nContent-Length: %d\r\n\r\n%s",
                                            upstream_port, key ? key : "", blen, body);
                        if (rlen <= 0 || (size_t)rlen >= sizeof(req))
                                return 1;
                        /* On the kept connection; once more on a new one if the upstream
                         * closed it meanwhile. */
                        bool sent = false;
                        for (int attempt = 0; attempt < 2 && !sent; attempt++) {
                                if (ufd < 0)
                                        ufd = connect_upstream(upstream_port);
                                sent = ufd >= 0 && write_all(ufd, req, (size_t)rlen) == 0 &&
                                       read_message(ufd, answer, sizeof(answer)) > 0;
                                if (!sent && ufd >= 0) {
                                        close(ufd);
                                        ufd = -1;
                                }
                        }
                        if (!sent) {
                                fprintf(stderr, "idle_floor: the upstream did not answer\n");
                                return 1;
                        }
                }
                close(cfd);
        }
}
