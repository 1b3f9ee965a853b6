/* util.h: small shared helpers (ownership macros, clocks, a one-shot loop timer, size and duration
 * parsing). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define USEC_PER_MSEC 1000ULL
#define USEC_PER_SEC  1000000ULL

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

/* Take ownership of a pointer out of a variable that a cleanup attribute would free. */
#define TAKE_PTR(p)                                                                                \
        ({                                                                                         \
                __typeof__(p) _p_ = (p);                                                           \
                (p) = NULL;                                                                        \
                _p_;                                                                               \
        })

static inline void freep(void *p)
{
        free(*(void **)p);
}
#define _cleanup_(f)   __attribute__((cleanup(f)))
#define _cleanup_free_ _cleanup_(freep)
#define _unused_       __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _warn_unused_  __attribute__((warn_unused_result))

/* Microseconds on CLOCK_REALTIME (persisted schedules) and CLOCK_MONOTONIC (latencies). */
uint64_t now_realtime_usec(void);
uint64_t now_monotonic_usec(void);

/* Arms a one-shot CLOCK_MONOTONIC timer `delay_usec` after the loop's now. A delay under a second
 * fires on time; a longer one (a connection's idle timeout) may fire up to 250 ms late, so that
 * sd-event can keep the timerfd it armed instead of rearming it each time the deadline moves. It
 * sets the source's accuracy too: arm a source through this alone, or set its accuracy again. */
typedef struct sd_event_source sd_event_source;
int event_timer_in(sd_event_source *s, uint64_t delay_usec);

/* "1M", "512K", "1024" -> bytes. Returns 0 or -EINVAL / -ERANGE. */
int parse_size(const char *s, uint64_t *ret);
/* "30s", "250ms", "5m", "1h", "2" (seconds) -> microseconds. Returns 0 or -EINVAL / -ERANGE. */
int parse_duration(const char *s, uint64_t *ret_usec);
/* Formats a duration back into the shortest exact unit ("1h", "30s", "250ms"). */
void format_duration(uint64_t usec, char *buf, size_t len);

/* A CLOCK_REALTIME time as the local "HH:MM" when it is today, else "YYYY-MM-DD HH:MM" (for
 * STATUS= and messages). */
void format_clock(uint64_t usec, char *buf, size_t len);

/* Writes v in decimal and a NUL into buf (UINT_DEC_SIZE bytes at least); returns the digits'
 * count. For hot paths where snprintf's format parsing costs more than the digits. */
#define UINT_DEC_SIZE 21
size_t format_uint(uint64_t v, char *buf);

/* Strict decimal parse of a whole string into a bounded integer. Returns 0 or -EINVAL / -ERANGE. */
int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *ret);

/* True if the string is empty or NULL. */
static inline bool isempty(const char *s)
{
        return !s || !*s;
}

/* Constant-time comparison of two byte strings; lengths are not secret. */
bool memeq_consttime(const void *a, size_t alen, const void *b, size_t blen);

/* Duplicates at most n bytes, always NUL-terminated; NULL on allocation failure. */
char *strndup_safe(const char *s, size_t n);

/* Zeroes a string that may hold a secret (an API key, a private key), then frees it; NULL is
 * fine. */
void erase_free(char *s);

/* Reads a whole small file (secrets, configuration) with a hard cap. Strips one trailing newline
 * if strip_newline. Returns 0 or -errno (-EFBIG over the cap). */
int read_small_file(const char *path, size_t max, bool strip_newline, char **ret, size_t *ret_len);
