/* journal.c: structured journal entries with the caller's source location, and readable lines on
 * stderr when a person is watching. */
#include "journal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#define SYSLOG_IDENTIFIER "vidu-upscaled"
#define MAX_FIELDS        24

static int max_level = LOG_INFO;
static bool to_journal = false;
static bool to_stderr = true;

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

static bool journal_socket_answers(void)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        const char *path = "/run/systemd/journal/socket";
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return false;
        strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
        bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        close(fd);
        return ok;
}

void journal_setup(int level)
{
        max_level = level;
        to_journal = journal_socket_answers();
        to_stderr = !to_journal || !stderr_is_journal();
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

struct fields {
        struct iovec iov[MAX_FIELDS];
        char *owned[MAX_FIELDS];
        size_t n;
};

static void add_field(struct fields *f, const char *name, const char *value)
{
        char *s;
        if (!value || f->n >= MAX_FIELDS)
                return;
        if (asprintf(&s, "%s=%s", name, value) < 0)
                return;
        f->owned[f->n] = s;
        f->iov[f->n].iov_base = s;
        f->iov[f->n].iov_len = strlen(s);
        f->n++;
}

static void add_uint(struct fields *f, const char *name, unsigned long long v)
{
        char buf[32];
        snprintf(buf, sizeof(buf), "%llu", v);
        add_field(f, name, buf);
}

static void emit(int priority, const char *file, int line, const char *func, const char *message_id,
                 const struct job_event *ev, const char *message)
{
        struct fields f = {.n = 0};
        char code_file[512], code_line[32];

        add_field(&f, "MESSAGE", message);
        add_uint(&f, "PRIORITY", (unsigned long long)priority);
        add_field(&f, "SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER);
        add_field(&f, "MESSAGE_ID", message_id);
        if (ev) {
                add_field(&f, "CREATION_ID", ev->creation_id);
                add_field(&f, "SOURCE_TASK_ID",
                          isempty(ev->source_task_id) ? NULL : ev->source_task_id);
                add_field(&f, "UPSCALE_TASK_ID",
                          isempty(ev->upscale_task_id) ? NULL : ev->upscale_task_id);
                add_field(&f, "JOB_STATE", ev->job_state);
                if (ev->attempt)
                        add_uint(&f, "ATTEMPT", ev->attempt);
                if (ev->http_status)
                        add_uint(&f, "HTTP_STATUS", (unsigned long long)ev->http_status);
                add_field(&f, "UPSTREAM_ERROR",
                          isempty(ev->upstream_error) ? NULL : ev->upstream_error);
                add_field(&f, "RESULT_URL", isempty(ev->result_url) ? NULL : ev->result_url);
        }
        if (to_journal) {
                snprintf(code_file, sizeof(code_file), "CODE_FILE=%s", file);
                snprintf(code_line, sizeof(code_line), "CODE_LINE=%d", line);
                sd_journal_sendv_with_location(code_file, code_line, func, f.iov, (int)f.n);
        }
        if (to_stderr) {
                char extra[1024] = "";
                size_t o = 0;
                /* Fields after the first four (MESSAGE, PRIORITY, identifier, id) read as
                 * key=value. */
                for (size_t i = 3; i < f.n && o < sizeof(extra); i++) {
                        if (strncmp(f.owned[i], "MESSAGE_ID=", 11) == 0)
                                continue;
                        int w = snprintf(extra + o, sizeof(extra) - o, " %s", f.owned[i]);
                        if (w < 0)
                                break;
                        o += (size_t)w;
                }
                fprintf(stderr, SYSLOG_IDENTIFIER "[%d]: <%s> %s%s%s%s\n", (int)getpid(),
                        priority_word(priority), message, *extra ? " [" : "",
                        *extra ? extra + 1 : "", *extra ? "]" : "");
        }
        for (size_t i = 0; i < f.n; i++)
                free(f.owned[i]);
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
