/* jobs_cli.h: `vidu-upscaled jobs ...`: the operator's view of the ledger and the way back for
 * held and dead jobs, safe while the daemon runs. */
#pragma once

#include <stdbool.h>
#include <stdio.h>

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

/* The options every operator command takes before its own (--store PATH, --help). Returns the
 * index of the command word in argv with *ret_store set (NULL when not given), or a negative exit
 * code's negation: -0 is not possible, so --help returns -1000 (exit 0) and a usage error
 * -EXIT_CONFIG, after print_usage() printed what applies. */
#define CLI_EXIT_HELP (-1000)
int cli_parse_common(int argc, char **argv, void (*print_usage)(FILE *f), const char **ret_store);
/* The exit code for a negative cli_parse_common result. */
static inline int cli_exit_code(int r)
{
        return r == CLI_EXIT_HELP ? 0 : -r;
}
