/* journal.c: structured journal entries with the caller's source location, and readable lines on
 * stderr when a person is watching. Entries go out over the journal's native protocol on a
 * non-blocking socket; while journald is busy they wait in a bounded queue that the event loop
 * drains, so a slow or restarting journald does not stall the daemon (only a full queue does).
 * Under the loop, what an event's callback logs leaves together right after it, in one
 * sendmmsg(). */
#include "journal.h"

#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#define SYSLOG_IDENTIFIER "vidu-upscaled"
#define JOURNAL_SOCKET    "/run/systemd/journal/socket"
/* Entries waiting for journald; past this the daemon waits for it, as libsystemd always does. */
#define QUEUE_MAX_BYTES (4u << 20)
#define EXIT_FLUSH_MSEC 5000
/* Datagrams per sendmmsg(). */
#define SEND_BATCH 64

static int max_level = LOG_INFO;
static bool to_journal = false;
static bool to_stderr = true;

struct pending {
        struct pending *next;
        size_t len;
        char data[];
};

static int jfd = -1;
static struct pending *queue_head, *queue_tail;
static size_t queue_bytes;
static sd_event_source *writable; /* EPOLLOUT on jfd while the queue holds entries */
/* Two sources send what was logged, whichever runs first. A post source runs after the next event
 * the loop dispatches: under load, after every event, so what it logged leaves in one sendmmsg().
 * But one enabled during the loop's last callback before it goes idle waits for the next event,
 * which can be a timer half a second away; a defer source at idle priority, which runs only when
 * nothing else is pending, sends those at once. (That one alone is no good under load: always
 * behind pending work, it let 2 MiB of entries wait.) */
static sd_event_source *flusher, *idle_flusher;
static const char *socket_path = JOURNAL_SOCKET;

/* True if stderr is the stream systemd connected to the journal for us. */
static bool stderr_is_journal(void)
{
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

/* A connected socket, so that poll() tells when journald has room again. */
static int journal_connect(void)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        strncpy(sa.sun_path, socket_path, sizeof(sa.sun_path) - 1);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        int size = 8 << 20;
        (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
        return fd;
}

/* Sends one datagram without waiting: 1 sent (or given up on), 0 journald is busy. */
static int send_datagram(const char *data, size_t len)
{
        for (int attempt = 0; attempt < 2; attempt++) {
                if (jfd < 0) {
                        jfd = journal_connect();
                        if (jfd < 0)
                                return 1; /* no journal any more: nothing to wait for */
                }
                if (send(jfd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0)
                        return 1;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                        return 0;
                if (errno == EMSGSIZE || errno == ENOBUFS) {
                        /* Too large for a datagram: libsystemd passes it in a memfd. */
                        struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
                        (void)sd_journal_sendv(&iov, 1);
                        return 1;
                }
                /* journald's socket was made anew (ECONNREFUSED): connect again, once. */
                close(jfd);
                jfd = -1;
        }
        return 1;
}

static void drop_head(size_t n)
{
        while (n-- > 0 && queue_head) {
                struct pending *p = queue_head;
                queue_head = p->next;
                if (!queue_head)
                        queue_tail = NULL;
                queue_bytes -= p->len;
                free(p);
        }
}

/* Sends what waits, oldest first, until journald is busy. True when the queue is empty. */
static bool flush_queue(void)
{
        while (queue_head) {
                struct mmsghdr msgs[SEND_BATCH];
                struct iovec iov[SEND_BATCH];
                unsigned n = 0;
                for (struct pending *p = queue_head; p && n < SEND_BATCH; p = p->next, n++) {
                        iov[n] = (struct iovec){.iov_base = p->data, .iov_len = p->len};
                        msgs[n] =
                            (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[n], .msg_iovlen = 1}};
                }
                int sent = jfd >= 0 ? sendmmsg(jfd, msgs, n, MSG_DONTWAIT | MSG_NOSIGNAL) : -1;
                if (sent <= 0) {
                        /* The oldest alone, through the path that tells busy from each error. */
                        if (send_datagram(queue_head->data, queue_head->len) == 0)
                                break;
                        sent = 1;
                }
                drop_head((size_t)sent);
        }
        if (writable)
                sd_event_source_set_enabled(writable, queue_head ? SD_EVENT_ON : SD_EVENT_OFF);
        return !queue_head;
}

/* Waits (blocking) until at most `keep` bytes wait, or timeout_msec passed (-1: for as long as
 * journald takes). */
static void flush_blocking(size_t keep, int timeout_msec)
{
        int waited = 0;
        while (!flush_queue() && queue_bytes > keep && jfd >= 0) {
                struct pollfd pfd = {.fd = jfd, .events = POLLOUT};
                int step = timeout_msec < 0 ? 1000 : timeout_msec - waited;
                if (step <= 0)
                        return;
                if (step > 1000)
                        step = 1000;
                if (poll(&pfd, 1, step) == 0)
                        waited += step;
        }
}

static void enqueue(const char *data, size_t len)
{
        /* Without the loop each entry leaves at once; under it, after the callback that logs it. */
        if (!flusher && !queue_head && send_datagram(data, len))
                return;
        struct pending *p = malloc(sizeof(*p) + len);
        if (!p) {
                flush_blocking(0, -1);
                (void)send_datagram(data, len);
                return;
        }
        memcpy(p->data, data, len);
        p->len = len;
        p->next = NULL;
        if (queue_tail)
                queue_tail->next = p;
        else
                queue_head = p;
        queue_tail = p;
        queue_bytes += len;
        if (queue_bytes > QUEUE_MAX_BYTES)
                /* Back under the limit by a little, not empty: a short wait, as backpressure. */
                flush_blocking(QUEUE_MAX_BYTES - QUEUE_MAX_BYTES / 16, -1);
        else if (flusher) {
                sd_event_source_set_enabled(flusher, SD_EVENT_ONESHOT);
                sd_event_source_set_enabled(idle_flusher, SD_EVENT_ONESHOT);
        } else
                flush_queue();
}

static int on_writable(sd_event_source *s, int fd, uint32_t revents, void *userdata)
{
        flush_queue();
        return 0;
}

static int on_flush(sd_event_source *s, void *userdata)
{
        flush_queue();
        /* Sent (or waiting for journald to read, which on_writable handles): no other turn. */
        sd_event_source_set_enabled(flusher, SD_EVENT_OFF);
        sd_event_source_set_enabled(idle_flusher, SD_EVENT_OFF);
        return 0;
}

static void flush_at_exit(void)
{
        flush_blocking(0, EXIT_FLUSH_MSEC);
}

void journal_use_socket(const char *path)
{
        socket_path = path ? path : JOURNAL_SOCKET;
        if (jfd >= 0) {
                close(jfd);
                jfd = -1;
        }
}

void journal_setup(int level)
{
        static bool registered;
        max_level = level;
        if (jfd < 0)
                jfd = journal_connect();
        to_journal = jfd >= 0;
        to_stderr = !to_journal || !stderr_is_journal();
        if (!registered) {
                atexit(flush_at_exit);
                registered = true;
        }
}

int journal_attach_event(sd_event *event)
{
        if (jfd < 0 || writable)
                return 0;
        int r = sd_event_add_io(event, &writable, jfd, EPOLLOUT, on_writable, NULL);
        if (r < 0)
                return r;
        sd_event_source_set_description(writable, "journal-writable");
        sd_event_source_set_enabled(writable, queue_head ? SD_EVENT_ON : SD_EVENT_OFF);
        r = sd_event_add_post(event, &flusher, on_flush, NULL);
        if (r >= 0)
                r = sd_event_add_defer(event, &idle_flusher, on_flush, NULL);
        if (r < 0) {
                flusher = sd_event_source_disable_unref(flusher);
                writable = sd_event_source_disable_unref(writable);
                return r;
        }
        sd_event_source_set_description(flusher, "journal-flush");
        sd_event_source_set_enabled(flusher, SD_EVENT_OFF);
        sd_event_source_set_priority(idle_flusher, SD_EVENT_PRIORITY_IDLE);
        sd_event_source_set_description(idle_flusher, "journal-flush-idle");
        sd_event_source_set_enabled(idle_flusher, SD_EVENT_OFF);
        return 0;
}

void journal_detach_event(void)
{
        flusher = sd_event_source_disable_unref(flusher);
        idle_flusher = sd_event_source_disable_unref(idle_flusher);
        writable = sd_event_source_disable_unref(writable);
        flush_queue();
}

size_t journal_queued_bytes(void)
{
        return queue_bytes;
}

void journal_set_level(int level)
{
        max_level = level;
}

bool journal_to_stderr(void)
{
        return to_stderr;
}

static const char *priority_word(int p)
{
        static const char *const words[] = {"emerg",   "alert",  "crit", "error",
                                            "warning", "notice", "info", "debug"};
        return p >= 0 && p < 8 ? words[p] : "info";
}

/* One entry in the native protocol: NAME=value lines, or NAME, a 64-bit little-endian length and
 * the bytes for a value with a newline in it. */
struct entry {
        char buf[8192];
        char *big; /* when buf is too small */
        size_t len, cap;
        bool failed;
};

static void put(struct entry *e, const void *data, size_t n)
{
        char *dst = e->big ? e->big : e->buf;
        size_t cap = e->big ? e->cap : sizeof(e->buf);
        if (e->failed)
                return;
        if (e->len + n > cap) {
                size_t ncap = cap * 2;
                while (ncap < e->len + n)
                        ncap *= 2;
                char *b = e->big ? realloc(e->big, ncap) : malloc(ncap);
                if (!b) {
                        e->failed = true;
                        return;
                }
                if (!e->big)
                        memcpy(b, e->buf, e->len);
                e->big = b;
                e->cap = ncap;
                dst = b;
        }
        memcpy(dst + e->len, data, n);
        e->len += n;
}

static void put_field(struct entry *e, const char *name, const char *value)
{
        if (!value)
                return;
        size_t nl = strlen(name), vl = strlen(value);
        if (memchr(value, '\n', vl)) {
                uint64_t le = htole64((uint64_t)vl);
                put(e, name, nl);
                put(e, "\n", 1);
                put(e, &le, sizeof(le));
                put(e, value, vl);
                put(e, "\n", 1);
                return;
        }
        /* NAME=value and its newline in place when they fit, as nearly every field does: one
         * capacity check and two copies instead of four calls of put(). */
        size_t cap = e->big ? e->cap : sizeof(e->buf);
        if (!e->failed && e->len + nl + vl + 2 <= cap) {
                char *p = (e->big ? e->big : e->buf) + e->len;
                memcpy(p, name, nl);
                p[nl] = '=';
                memcpy(p + nl + 1, value, vl);
                p[nl + 1 + vl] = '\n';
                e->len += nl + vl + 2;
                return;
        }
        put(e, name, nl);
        put(e, "=", 1);
        put(e, value, vl);
        put(e, "\n", 1);
}

static void put_uint(struct entry *e, const char *name, uint64_t v)
{
        char buf[UINT_DEC_SIZE];
        format_uint(v, buf);
        put_field(e, name, buf);
}

/* The job fields an entry carries, in the contract's order; empty ones are left out. */
struct job_fields {
        const char *name[12], *value[12];
        size_t n;
        char attempt[UINT_DEC_SIZE], status[UINT_DEC_SIZE], accepted_at[UINT_DEC_SIZE];
};

static void job_fields(const struct job_event *ev, struct job_fields *f)
{
        f->n = 0;
        if (!ev)
                return;
        /* Only the fields an entry carries are formatted (two of three entries have no status). */
        if (ev->attempt)
                format_uint(ev->attempt, f->attempt);
        if (ev->http_status > 0)
                format_uint((uint64_t)ev->http_status, f->status);
        if (ev->accepted_at)
                format_uint(ev->accepted_at, f->accepted_at);
        const char *const names[] = {"CREATION_ID", "SOURCE_TASK_ID", "UPSCALE_TASK_ID",
                                     "JOB_STATE",   "ACCEPTED_AT",    "ATTEMPT",
                                     "HTTP_STATUS", "UPSTREAM_ERROR", "RESULT_URL",
                                     "SELECT_RULE", "EVENT_ID",       "EVENT_TYPE"};
        const char *const values[] = {ev->creation_id,
                                      ev->source_task_id,
                                      ev->upscale_task_id,
                                      ev->job_state,
                                      ev->accepted_at ? f->accepted_at : NULL,
                                      ev->attempt ? f->attempt : NULL,
                                      ev->http_status > 0 ? f->status : NULL,
                                      ev->upstream_error,
                                      ev->result_url,
                                      ev->select_rule,
                                      ev->event_id,
                                      ev->event_type};
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (!isempty(values[i])) {
                        f->name[f->n] = names[i];
                        f->value[f->n] = values[i];
                        f->n++;
                }
}

static void emit(int priority, const char *file, int line, const char *func, const char *message_id,
                 const struct job_event *ev, const char *message)
{
        struct job_fields jf;
        job_fields(ev, &jf);
        if (to_journal) {
                struct entry e; /* buf is written before it is read: no need to clear it */
                e.big = NULL;
                e.len = e.cap = 0;
                e.failed = false;
                put_field(&e, "MESSAGE", message);
                put_uint(&e, "PRIORITY", (uint64_t)priority);
                put_field(&e, "SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER);
                put_field(&e, "MESSAGE_ID", message_id);
                for (size_t i = 0; i < jf.n; i++)
                        put_field(&e, jf.name[i], jf.value[i]);
                put_field(&e, "CODE_FILE", file);
                put_uint(&e, "CODE_LINE", (uint64_t)line);
                put_field(&e, "CODE_FUNC", func);
                if (!e.failed)
                        enqueue(e.big ? e.big : e.buf, e.len);
                free(e.big);
        }
        if (to_stderr) {
                char extra[1024] = "";
                size_t o = 0;
                for (size_t i = 0; i < jf.n && o < sizeof(extra); i++) {
                        int w = snprintf(extra + o, sizeof(extra) - o, " %s=%s", jf.name[i],
                                         jf.value[i]);
                        if (w > 0)
                                o += (size_t)w;
                }
                fprintf(stderr, SYSLOG_IDENTIFIER "[%d]: <%s> %s%s%s%s\n", (int)getpid(),
                        priority_word(priority), message, *extra ? " [" : "",
                        *extra ? extra + 1 : "", *extra ? "]" : "");
        }
}

/* Formats and emits one entry; errno survives, so callers may log between a failure and %m. */
static void emitv(int priority, const char *file, int line, const char *func,
                  const char *message_id, const struct job_event *ev, const char *fmt, va_list ap)
    _printf_(7, 0);
static void emitv(int priority, const char *file, int line, const char *func,
                  const char *message_id, const struct job_event *ev, const char *fmt, va_list ap)
{
        char message[2048];
        if (priority > max_level)
                return;
        int saved_errno = errno;
        vsnprintf(message, sizeof(message), fmt, ap);
        emit(priority, file, line, func, message_id, ev, message);
        errno = saved_errno;
}

void journal_log_internal(int priority, const char *file, int line, const char *func,
                          const char *message_id, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        emitv(priority, file, line, func, message_id, NULL, fmt, ap);
        va_end(ap);
}

void journal_job_internal(int priority, const char *file, int line, const char *func,
                          const struct job_event *ev, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        emitv(priority, file, line, func, ev->message_id, ev, fmt, ap);
        va_end(ap);
}
