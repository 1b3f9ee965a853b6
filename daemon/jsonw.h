/* jsonw.h: writing small JSON texts directly into a buffer sized by the caller, the bytes json-c's
 * plain output would give, without building json-c objects first. */
#pragma once

#include <stddef.h>

/* The most bytes jsonw_string can write for s: every byte escaped (6), and the quotes. */
size_t jsonw_string_max(const char *s);
/* Appends s at *o in dst as a quoted JSON string, escaped as json-c escapes it. */
void jsonw_string(char *dst, size_t *o, const char *s);
/* Appends s at *o in dst as it is (JSON the caller wrote). */
void jsonw_raw(char *dst, size_t *o, const char *s);
