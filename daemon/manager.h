/* manager.h: owns the event loop and everything on it: configuration, ledger, HTTP server,
 * webhook, dispatcher; answers signals, systemd's notify protocol and the watchdog. */
#pragma once

/* Runs the daemon until SIGTERM/SIGINT. config_path may be NULL (the default path). Returns an
 * exit code: 0 after a clean stop, EXIT_CONFIG for configuration errors, 1 otherwise. */
int manager_run(const char *config_path);
