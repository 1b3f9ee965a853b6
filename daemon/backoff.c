/* backoff.c: retry delays: capped exponential backoff with jitter, and Retry-After (pure). */
#include "backoff.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <time.h>

#include "util.h"

uint64_t backoff_delay(unsigned attempt, uint64_t initial_usec, uint64_t max_usec, uint32_t random)
{
        uint64_t d = initial_usec;
        if (attempt == 0)
                attempt = 1;
        for (unsigned i = 1; i < attempt && d < max_usec; i++)
                d = d > UINT64_MAX / 2 ? UINT64_MAX : d * 2;
        if (d > max_usec)
                d = max_usec;
        /* Jitter spreads retries of jobs that failed together, so they do not return together. */
        uint64_t span = d / 2;
        if (span > 0)
                d = d - d / 4 + (uint64_t)(((unsigned __int128)span * random) >> 32);
        if (d < initial_usec)
                d = initial_usec;
        if (d > max_usec)
                d = max_usec;
        return d;
}

static int month_from_name(const char *s)
{
        static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
        for (int i = 0; i < 12; i++)
                if (strncmp(s, months + i * 3, 3) == 0)
                        return i;
        return -1;
}

static const char *parse_digits(const char *p, int n_min, int n_max, int *ret)
{
        int v = 0, n = 0;
        while (n < n_max && isdigit((unsigned char)*p)) {
                v = v * 10 + (*p - '0');
                p++;
                n++;
        }
        if (n < n_min)
                return NULL;
        *ret = v;
        return p;
}

/* hh:mm:ss */
static const char *parse_clock(const char *p, struct tm *tm)
{
        p = parse_digits(p, 2, 2, &tm->tm_hour);
        if (!p || *p++ != ':')
                return NULL;
        p = parse_digits(p, 2, 2, &tm->tm_min);
        if (!p || *p++ != ':')
                return NULL;
        return parse_digits(p, 2, 2, &tm->tm_sec);
}

int backoff_parse_http_date(const char *value, int64_t *ret_epoch)
{
        struct tm tm = {0};
        const char *p = value;
        int mon;

        if (!p)
                return -EINVAL;
        while (*p == ' ')
                p++;
        /* Skip the weekday: "Sun," (IMF), "Sunday," (RFC 850) or "Sun " (asctime). */
        while (isalpha((unsigned char)*p))
                p++;
        if (*p == ',') {
                p++;
                if (*p++ != ' ')
                        return -EINVAL;
                p = parse_digits(p, 1, 2, &tm.tm_mday);
                if (!p || (*p != ' ' && *p != '-'))
                        return -EINVAL;
                p++;
                mon = month_from_name(p);
                if (mon < 0)
                        return -EINVAL;
                tm.tm_mon = mon;
                p += 3;
                if (*p != ' ' && *p != '-')
                        return -EINVAL;
                p++;
                int year;
                const char *q = parse_digits(p, 2, 4, &year);
                if (!q)
                        return -EINVAL;
                if (q - p == 2)
                        year += year < 70 ? 2000 : 1900;
                tm.tm_year = year - 1900;
                p = q;
                if (*p++ != ' ')
                        return -EINVAL;
                p = parse_clock(p, &tm);
                if (!p)
                        return -EINVAL;
                while (*p == ' ')
                        p++;
                if (strcmp(p, "GMT") != 0 && strcmp(p, "UTC") != 0)
                        return -EINVAL;
        } else if (*p == ' ') {
                /* asctime: "Sun Nov  6 08:49:37 1994" */
                p++;
                mon = month_from_name(p);
                if (mon < 0)
                        return -EINVAL;
                tm.tm_mon = mon;
                p += 3;
                while (*p == ' ')
                        p++;
                p = parse_digits(p, 1, 2, &tm.tm_mday);
                if (!p || *p++ != ' ')
                        return -EINVAL;
                p = parse_clock(p, &tm);
                if (!p || *p++ != ' ')
                        return -EINVAL;
                int year;
                p = parse_digits(p, 4, 4, &year);
                if (!p || *p)
                        return -EINVAL;
                tm.tm_year = year - 1900;
        } else
                return -EINVAL;
        if (tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
            tm.tm_sec > 60)
                return -EINVAL;
        time_t t = timegm(&tm);
        if (t == (time_t)-1)
                return -EINVAL;
        *ret_epoch = (int64_t)t;
        return 0;
}

int backoff_parse_retry_after(const char *value, uint64_t now_realtime_usec,
                              uint64_t *ret_delay_usec)
{
        uint64_t secs;
        if (isempty(value))
                return -EINVAL;
        while (*value == ' ')
                value++;
        if (isdigit((unsigned char)value[0])) {
                char buf[32];
                size_t n = strcspn(value, " ");
                if (n >= sizeof(buf) || value[n + strspn(value + n, " ")] != 0)
                        return -EINVAL;
                memcpy(buf, value, n);
                buf[n] = 0;
                /* A day is plenty; larger values are treated as a day, not an overflow. */
                if (parse_uint(buf, 0, UINT64_MAX, &secs) < 0)
                        return -EINVAL;
                if (secs > 86400)
                        secs = 86400;
                *ret_delay_usec = secs * USEC_PER_SEC;
                return 0;
        }
        int64_t when;
        if (backoff_parse_http_date(value, &when) < 0)
                return -EINVAL;
        int64_t now = (int64_t)(now_realtime_usec / USEC_PER_SEC);
        int64_t d = when - now;
        if (d < 0)
                d = 0;
        if (d > 86400)
                d = 86400;
        *ret_delay_usec = (uint64_t)d * USEC_PER_SEC;
        return 0;
}
