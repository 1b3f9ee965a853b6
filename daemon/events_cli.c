/* events_cli.c: `vidu-upscaled events ...`: lists the outbox of outcome events and sends dead or
 * delivered ones again (same webhook-id). Safe while the daemon runs: it picks the change up on
 * its next look at the outbox. */
#include "events_cli.h"

#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "jobs_cli.h"
#include "ledger.h"
#include "util.h"

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: vidu-upscaled [-c FILE] events [--store PATH] COMMAND\n"
                "\n"
                "  list [--state pending|delivered|dead] [--json]\n"
                "                          outcome events, oldest first: id, type, creation id,\n"
                "                          state, delivery attempts, last error\n"
                "  retry ID...|--dead      send delivered or dead events again (same webhook-id),\n"
                "                          or every dead one\n"
                "\n"
                "The ledger comes from store.path in the configuration (or, with store.backend =\n"
                "postgresql, the database at store.url), or --store PATH (an SQLite file).\n");
}

static void format_time(uint64_t usec, char *buf, size_t len)
{
        time_t t = (time_t)(usec / USEC_PER_SEC);
        struct tm tm;
        if (usec == 0 || !gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(buf, len, "-");
}

struct list_ctx {
        bool json;
        size_t n;
};

static int print_event(const struct ledger_event *e, void *userdata)
{
        struct list_ctx *ctx = userdata;
        char created[32], updated[32], next[32];
        format_time(e->created_at, created, sizeof(created));
        format_time(e->updated_at, updated, sizeof(updated));
        format_time(e->next_at, next, sizeof(next));
        if (ctx->json) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "id", json_object_new_string(e->id));
                json_object_object_add(o, "type", json_object_new_string(e->type));
                json_object_object_add(o, "creation_id", json_object_new_string(e->creation_id));
                json_object_object_add(
                    o, "state", json_object_new_string(ledger_event_state_to_string(e->state)));
                json_object_object_add(o, "attempts", json_object_new_int((int)e->attempts));
                if (e->http_status)
                        json_object_object_add(o, "http_status",
                                               json_object_new_int(e->http_status));
                if (!isempty(e->error))
                        json_object_object_add(o, "error", json_object_new_string(e->error));
                json_object_object_add(o, "created_at", json_object_new_string(created));
                json_object_object_add(o, "updated_at", json_object_new_string(updated));
                if (e->state == LEDGER_EVENT_PENDING)
                        json_object_object_add(o, "next_at", json_object_new_string(next));
                printf("%s\n", json_object_to_json_string_ext(
                                   o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
        } else
                printf("%-28s %-18s %-20s %-9s %3u  %s\n", e->id, e->type, e->creation_id,
                       ledger_event_state_to_string(e->state), e->attempts,
                       isempty(e->error) ? "" : e->error);
        ctx->n++;
        return 0;
}

static int cmd_list(struct ledger *l, int argc, char **argv)
{
        struct list_ctx ctx = {0};
        int state = -1;
        for (int i = 0; i < argc; i++) {
                const char *name = argv[i];
                if (strcmp(argv[i], "--json") == 0) {
                        ctx.json = true;
                        continue;
                }
                if (strcmp(argv[i], "--state") == 0) {
                        if (i + 1 >= argc) {
                                fprintf(stderr, "events list: --state needs a state\n");
                                return EXIT_CONFIG;
                        }
                        name = argv[++i];
                } else if (strncmp(argv[i], "--state=", 8) == 0)
                        name = argv[i] + 8;
                if ((state = ledger_event_state_from_string(name)) < 0) {
                        fprintf(stderr,
                                "events list: unknown state '%s' (pending, delivered or dead)\n",
                                name);
                        return EXIT_CONFIG;
                }
        }
        if (!ctx.json)
                printf("%-28s %-18s %-20s %-9s %3s  %s\n", "EVENT_ID", "TYPE", "CREATION_ID",
                       "STATE", "TRY", "LAST ERROR");
        int r = ledger_events_foreach(l, state, print_event, &ctx);
        if (r < 0) {
                fprintf(stderr, "events list: %s\n", ledger_errmsg(l));
                return 1;
        }
        if (!ctx.json)
                printf("(%zu event%s)\n", ctx.n, ctx.n == 1 ? "" : "s");
        return 0;
}

static int cmd_retry(struct ledger *l, int argc, char **argv)
{
        if (argc == 0) {
                fprintf(stderr, "events retry: name event ids, or --dead\n");
                return EXIT_CONFIG;
        }
        int ret = 0;
        for (int i = 0; i < argc; i++) {
                bool dead = strcmp(argv[i], "--dead") == 0;
                uint64_t now = now_realtime_usec();
                int r =
                    dead ? ledger_events_retry_dead(l, now) : ledger_event_retry(l, argv[i], now);
                if (r < 0) {
                        fprintf(stderr, "events retry: %s: %s\n", argv[i], ledger_errmsg(l));
                        ret = 1;
                } else if (dead)
                        printf("%d dead event%s -> pending\n", r, r == 1 ? "" : "s");
                else if (r == 0) {
                        fprintf(stderr, "events retry: %s: no such event, or already pending\n",
                                argv[i]);
                        ret = 1;
                } else
                        printf("%s -> pending\n", argv[i]);
        }
        return ret;
}

int events_cli_main(int argc, char **argv, const char *config_path)
{
        const char *store = NULL;
        int r = cli_parse_common(argc, argv, usage, &store);
        if (r < 0)
                return cli_exit_code(r);
        optind = r;
        const char *cmd = argv[optind];
        bool list = strcmp(cmd, "list") == 0, retry = strcmp(cmd, "retry") == 0;
        if (!list && !retry) {
                fprintf(stderr, "events: unknown command '%s'\n", cmd);
                usage(stderr);
                return EXIT_CONFIG;
        }
        struct config *cfg = NULL;
        struct ledger *l = NULL;
        int ret = cli_open_ledger("events", config_path, store, retry, &l, &cfg);
        if (ret != 0)
                return ret;
        if (list)
                ret = cmd_list(l, argc - optind - 1, argv + optind + 1);
        else
                ret = cmd_retry(l, argc - optind - 1, argv + optind + 1);
        ledger_close(l);
        config_free(cfg);
        return ret;
}
