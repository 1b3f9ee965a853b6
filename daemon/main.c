/* main.c: the command line: run the daemon, check the configuration, list its keys, print the
 * version. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "events_cli.h"
#include "jobs_cli.h"
#include "manager.h"

static void help(void)
{
        printf(
            "Usage: vidu-upscaled [-c FILE] [--check-config] [--list-keys] [--version] [--help]\n"
            "       vidu-upscaled [-c FILE] jobs [--store PATH] list|show|retry|abandon|counts "
            "...\n"
            "       vidu-upscaled [-c FILE] events [--store PATH] list|retry ...\n"
            "\n"
            "Upscales every finished Vidu creation exactly once, from webhook notifications.\n"
            "\n"
            "  -c, --config FILE   configuration file (default " CONFIG_DEFAULT_PATH ");\n"
            "                      drop-ins are read from conf.d/ beside it\n"
            "      --check-config  validate, print the effective settings (secrets masked), exit\n"
            "      --list-keys     print every configuration key as section.key, one per line\n"
            "      --version       print the version\n"
            "  -h, --help          this help\n"
            "\n"
            "Exit codes: 0 normal stop, 78 configuration error, 1 any other failure.\n");
}

static int list_keys(void)
{
        size_t n;
        const struct config_key *keys = config_keys(&n);
        for (size_t i = 0; i < n; i++)
                printf("%s.%s\n", keys[i].section, keys[i].name);
        return fflush(stdout) == 0 ? 0 : 1;
}

static int check_config(const char *path)
{
        struct config *cfg = NULL;
        struct config_errors errors = {0};
        if (config_load(path, &cfg, &errors) < 0) {
                for (size_t i = 0; i < errors.n; i++)
                        fprintf(stderr, "%s\n", errors.lines[i]);
                config_errors_clear(&errors);
                return EXIT_CONFIG;
        }
        config_dump(cfg, stdout);
        config_free(cfg);
        return 0;
}

int main(int argc, char **argv)
{
        static const struct option options[] = {
            {"config", required_argument, NULL, 'c'},
            {"check-config", no_argument, NULL, 'C'},
            {"list-keys", no_argument, NULL, 'L'}, /* what the README and man page must cover */
            {"version", no_argument, NULL, 'V'},
            {"help", no_argument, NULL, 'h'},
            {0},
        };
        const char *path = NULL;
        bool check = false;
        int c;
        while ((c = getopt_long(argc, argv, "+c:h", options, NULL)) != -1) {
                switch (c) {
                case 'c':
                        path = optarg;
                        break;
                case 'C':
                        check = true;
                        break;
                case 'L':
                        return list_keys();
                case 'V':
                        printf("vidu-upscaled %s\n", VIDU_VERSION);
                        return 0;
                case 'h':
                        help();
                        return 0;
                default:
                        fprintf(stderr, "Try 'vidu-upscaled --help'.\n");
                        return EXIT_CONFIG;
                }
        }
        if (optind < argc && strcmp(argv[optind], "jobs") == 0)
                return jobs_cli_main(argc - optind, argv + optind, path);
        if (optind < argc && strcmp(argv[optind], "events") == 0)
                return events_cli_main(argc - optind, argv + optind, path);
        if (optind < argc) {
                fprintf(stderr,
                        "vidu-upscaled: unexpected argument '%s'. Try 'vidu-upscaled --help'.\n",
                        argv[optind]);
                return EXIT_CONFIG;
        }
        if (check)
                return check_config(path);
        return manager_run(path);
}
