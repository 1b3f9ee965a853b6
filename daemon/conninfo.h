/* conninfo.h: a libpq connection string (URI or key=value) with its password masked, for the
 * dump, messages and anything else a person may read. Pure text work, no libpq. */
#pragma once

#include <stdbool.h>

/* The mask a password is shown as. */
#define CONNINFO_MASK "(set)"

/* Copies s with every password in it (a URI's user:password@, its ?password= parameter, a
 * key=value string's password = value) replaced by CONNINFO_MASK. Returns 1 if one was
 * masked, 0 if there was none, -EINVAL when s cannot be read far enough to tell (*ret is then
 * NULL: show nothing of it), or -ENOMEM. */
int conninfo_mask(const char *s, char **ret);
