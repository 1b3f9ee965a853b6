/* util.c: small shared helpers (clocks, a one-shot loop timer, size and duration parsing,
 * constant-time compare). */
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-event.h>
#include <time.h>
#include <unistd.h>

static uint64_t clock_usec(clockid_t id)
{
        struct timespec ts;
        clock_gettime(id, &ts);
        return (uint64_t)ts.tv_sec * USEC_PER_SEC + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t now_realtime_usec(void)
{
        return clock_usec(CLOCK_REALTIME);
}

uint64_t now_monotonic_usec(void)
{
        return clock_usec(CLOCK_MONOTONIC);
}

#define EVENT_TIMER_SLACK_USEC (250 * USEC_PER_MSEC)

int event_timer_in(sd_event_source *s, uint64_t delay_usec)
{
        uint64_t now;
        int r = sd_event_now(sd_event_source_get_event(s), CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        r = sd_event_source_set_time_accuracy(s, delay_usec >= USEC_PER_SEC ? EVENT_TIMER_SLACK_USEC
                                                                            : 1);
        if (r >= 0)
                r = sd_event_source_set_time(s, now + delay_usec);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return r;
}

/* Splits "<digits><suffix>" and multiplies by the suffix's factor, refusing overflow. */
static int parse_scaled(const char *s, const char *const *suffixes, const uint64_t *factors,
                        size_t n, const char *bare_suffix, uint64_t *ret)
{
        const char *p = s;
        uint64_t v = 0;

        if (isempty(s))
                return -EINVAL;
        while (*p == ' ')
                p++;
        if (!isdigit((unsigned char)*p))
                return -EINVAL;
        for (; isdigit((unsigned char)*p); p++) {
                unsigned d = (unsigned)(*p - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        const char *suffix = *p ? p : bare_suffix;
        size_t slen = strlen(suffix);
        while (slen > 0 && suffix[slen - 1] == ' ')
                slen--;
        for (size_t i = 0; i < n; i++) {
                if (strlen(suffixes[i]) == slen && strncmp(suffixes[i], suffix, slen) == 0) {
                        if (factors[i] != 0 && v > UINT64_MAX / factors[i])
                                return -ERANGE;
                        *ret = v * factors[i];
                        return 0;
                }
        }
        return -EINVAL;
}

int parse_size(const char *s, uint64_t *ret)
{
        static const char *const suffixes[] = {"",   "B",   "K", "KB", "KiB", "M",
                                               "MB", "MiB", "G", "GB", "GiB"};
        static const uint64_t factors[] = {1,
                                           1,
                                           1024,
                                           1024,
                                           1024,
                                           1024 * 1024,
                                           1024 * 1024,
                                           1024 * 1024,
                                           1024ULL * 1024 * 1024,
                                           1024ULL * 1024 * 1024,
                                           1024ULL * 1024 * 1024};
        return parse_scaled(s, suffixes, factors, ELEMENTSOF(suffixes), "", ret);
}

int parse_duration(const char *s, uint64_t *ret_usec)
{
        static const char *const suffixes[] = {"us", "ms", "s", "sec", "m", "min", "h", "d"};
        static const uint64_t factors[] = {1,
                                           USEC_PER_MSEC,
                                           USEC_PER_SEC,
                                           USEC_PER_SEC,
                                           60 * USEC_PER_SEC,
                                           60 * USEC_PER_SEC,
                                           3600 * USEC_PER_SEC,
                                           86400 * USEC_PER_SEC};
        return parse_scaled(s, suffixes, factors, ELEMENTSOF(suffixes), "s", ret_usec);
}

size_t format_uint(uint64_t v, char *buf)
{
        char rev[UINT_DEC_SIZE];
        size_t n = 0;
        do {
                rev[n++] = (char)('0' + v % 10);
                v /= 10;
        } while (v);
        for (size_t i = 0; i < n; i++)
                buf[i] = rev[n - 1 - i];
        buf[n] = '\0';
        return n;
}

void format_duration(uint64_t usec, char *buf, size_t len)
{
        static const struct {
                uint64_t f;
                const char *s;
        } units[] = {{86400 * USEC_PER_SEC, "d"}, {3600 * USEC_PER_SEC, "h"},
                     {60 * USEC_PER_SEC, "m"},    {USEC_PER_SEC, "s"},
                     {USEC_PER_MSEC, "ms"},       {1, "us"}};
        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (usec % units[i].f == 0 && (usec != 0 || units[i].f == USEC_PER_SEC)) {
                        snprintf(buf, len, "%llu%s", (unsigned long long)(usec / units[i].f),
                                 units[i].s);
                        return;
                }
        snprintf(buf, len, "%lluus", (unsigned long long)usec);
}

int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
        uint64_t v = 0;
        if (isempty(s))
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (!isdigit((unsigned char)*p))
                        return -EINVAL;
                unsigned d = (unsigned)(*p - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        if (v < min || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

bool memeq_consttime(const void *a, size_t alen, const void *b, size_t blen)
{
        const unsigned char *x = a, *y = b;
        unsigned char diff = 0;
        if (alen != blen)
                return false;
        for (size_t i = 0; i < alen; i++)
                diff |= (unsigned char)(x[i] ^ y[i]);
        return diff == 0;
}

char *strndup_safe(const char *s, size_t n)
{
        char *r = malloc(n + 1);
        if (!r)
                return NULL;
        memcpy(r, s, n);
        r[n] = 0;
        return r;
}

void erase_free(char *s)
{
        if (!s)
                return;
        explicit_bzero(s, strlen(s));
        free(s);
}

int read_small_file(const char *path, size_t max, bool strip_newline, char **ret, size_t *ret_len)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        char *buf = malloc(max + 1);
        if (!buf) {
                close(fd);
                return -ENOMEM;
        }
        size_t len = 0;
        for (;;) {
                ssize_t n = read(fd, buf + len, max + 1 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        int r = -errno;
                        explicit_bzero(buf, len);
                        free(buf);
                        close(fd);
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
                if (len > max) {
                        explicit_bzero(buf, len); /* it may hold part of a secret */
                        free(buf);
                        close(fd);
                        return -EFBIG;
                }
        }
        close(fd);
        if (strip_newline && len > 0 && buf[len - 1] == '\n') {
                len--;
                if (len > 0 && buf[len - 1] == '\r')
                        len--;
        }
        buf[len] = 0;
        *ret = buf;
        if (ret_len)
                *ret_len = len;
        return 0;
}

void format_clock(uint64_t usec, char *buf, size_t len)
{
        time_t t = (time_t)(usec / USEC_PER_SEC), now = time(NULL);
        struct tm tm, today;
        bool ok = localtime_r(&t, &tm) && localtime_r(&now, &today);
        bool same_day = ok && tm.tm_year == today.tm_year && tm.tm_yday == today.tm_yday;
        if (!ok || strftime(buf, len, same_day ? "%H:%M" : "%Y-%m-%d %H:%M", &tm) == 0)
                snprintf(buf, len, "?");
}
