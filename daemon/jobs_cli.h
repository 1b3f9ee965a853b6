/* jobs_cli.h: `vidu-upscaled jobs ...`: the operator's view of the ledger and the way back for
 * held and dead jobs, safe while the daemon runs. */
#pragma once

#include <stdbool.h>

#include "config.h"
#include "ledger.h"

/* argv[0] is "jobs". config_path may be NULL. Returns an exit code. */
int jobs_cli_main(int argc, char **argv, const char *config_path);

/* The ledger an operator command works on: --store PATH (store), else store.path from the
 * configuration; read-only unless writes. Messages start with `what`. Returns 0 with both set
 * (*ret_config NULL with a store given; the caller frees both), or an exit code after saying why.
 */
int cli_open_ledger(const char *what, const char *config_path, const char *store, bool writes,
                    struct ledger **ret_ledger, struct config **ret_config);
