/* pgledger.h: the shared ledger on PostgreSQL for the operator commands (`vidu-upscaled jobs`,
 * `events`): blocking libpq, fine in a command, never in the daemon's loop. */
#pragma once

#include "ledger.h"

/* Connects (conninfo a libpq URI or key=value string; password used when it holds none, NULL for
 * libpq's own), creates or migrates the schema as the daemon does (pgschema_migrate, under the
 * advisory lock), and opens the ledger on it. A database whose schema is newer than this binary
 * is refused. 0, or -errno and *ret_error (free it): what failed, never the password. */
int pgledger_open(const char *conninfo, const char *password, struct ledger **ret,
                  char **ret_error);
