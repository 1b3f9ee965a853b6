/* jobs_cli.h: `vidu-upscaled jobs ...`: the operator's view of the ledger and the way back for
 * held and dead jobs, safe while the daemon runs. */
#pragma once

/* argv[0] is "jobs". config_path may be NULL. Returns an exit code. */
int jobs_cli_main(int argc, char **argv, const char *config_path);
