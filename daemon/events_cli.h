/* events_cli.h: `vidu-upscaled events ...`: the operator's view of the outbox of outcome events
 * and the way to send dead ones again. */
#pragma once

/* argv[0] is "events". config_path may be NULL. Returns an exit code. */
int events_cli_main(int argc, char **argv, const char *config_path);
