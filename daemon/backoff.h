/* backoff.h: retry delays: capped exponential backoff with jitter, and Retry-After (pure). */
#pragma once

#include <stdint.h>

/* Delay before retry number `attempt` (1 = first retry): initial * 2^(attempt-1), capped at max,
 * with +-25% jitter from `random` (any 32-bit value), and always within [initial, max]. */
uint64_t backoff_delay(unsigned attempt, uint64_t initial_usec, uint64_t max_usec, uint32_t random);

/* Parses a Retry-After value: delta seconds ("120") or an HTTP date ("Wed, 21 Oct 2015 07:28:00
 * GMT", also the obsolete RFC 850 and asctime forms). Returns 0 and the delay from now (0 if the
 * date has passed), or -EINVAL. */
int backoff_parse_retry_after(const char *value, uint64_t now_realtime_usec,
                              uint64_t *ret_delay_usec);

/* Parses an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") into seconds since the epoch, without
 * locale. Returns 0 or -EINVAL. Shared with the vidu signature check. */
int backoff_parse_http_date(const char *value, int64_t *ret_epoch);
