/* jobs_cli.c: lists jobs by state and releases (retry) or abandons them by creation id. Every
 * change is one short transaction; the running daemon sees it on its next scheduling pass. */
#include "jobs_cli.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "journal.h"
#include "ledger.h"
#include "util.h"

static void usage(FILE *f)
{
        fprintf(
            f,
            "Usage: vidu-upscaled [-c FILE] jobs [--store PATH] COMMAND\n"
            "\n"
            "  list [STATE] [--json]   jobs, all or in one state (pending, submitting, waiting,\n"
            "                          submitted, succeeded, failed, dead, uncertain)\n"
            "  show CREATION_ID...     one job in full, as JSON\n"
            "  retry CREATION_ID...    release held (uncertain), dead or failed jobs: submit "
            "again\n"
            "                          with a fresh set of attempts\n"
            "  abandon CREATION_ID...  give up pending, waiting or uncertain jobs: never "
            "submitted\n"
            "  counts                  jobs per state\n"
            "\n"
            "The ledger comes from store.path in the configuration, or --store PATH.\n");
}

static void format_time(uint64_t usec, char *buf, size_t len)
{
        time_t t = (time_t)(usec / USEC_PER_SEC);
        struct tm tm;
        if (usec == 0 || !gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
                snprintf(buf, len, "-");
}

static json_object *job_to_json(const struct job *j)
{
        char created[32], updated[32], next[32];
        json_object *o = json_object_new_object();
        format_time(j->created_at, created, sizeof(created));
        format_time(j->updated_at, updated, sizeof(updated));
        format_time(j->next_at, next, sizeof(next));
        json_object_object_add(o, "creation_id", json_object_new_string(j->creation_id));
        json_object_object_add(o, "source_task_id", json_object_new_string(j->source_task_id));
        json_object_object_add(o, "state", json_object_new_string(job_state_to_string(j->state)));
        json_object_object_add(o, "attempt", json_object_new_int((int)j->attempt));
        json_object_object_add(o, "upscale_task_id", json_object_new_string(j->upscale_task_id));
        json_object_object_add(o, "http_status", json_object_new_int(j->http_status));
        json_object_object_add(o, "upstream_error", json_object_new_string(j->upstream_error));
        json_object_object_add(o, "result_url", json_object_new_string(j->result_url));
        json_object_object_add(o, "created_at", json_object_new_string(created));
        json_object_object_add(o, "updated_at", json_object_new_string(updated));
        json_object_object_add(o, "next_at", json_object_new_string(next));
        return o;
}

struct list_ctx {
        bool json;
        size_t n;
};

static int print_job(const struct job *j, void *userdata)
{
        struct list_ctx *ctx = userdata;
        if (ctx->json) {
                json_object *o = job_to_json(j);
                printf("%s\n", json_object_to_json_string_ext(
                                   o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
        } else {
                char updated[32];
                format_time(j->updated_at, updated, sizeof(updated));
                printf("%-20s %-10s %3u  %-20s %-20s %s\n", j->creation_id,
                       job_state_to_string(j->state), j->attempt,
                       isempty(j->upscale_task_id) ? "-" : j->upscale_task_id, updated,
                       isempty(j->upstream_error) ? "" : j->upstream_error);
        }
        ctx->n++;
        return 0;
}

static int cmd_list(struct ledger *l, int argc, char **argv)
{
        struct list_ctx ctx = {0};
        int state = -1;
        for (int i = 0; i < argc; i++) {
                if (strcmp(argv[i], "--json") == 0)
                        ctx.json = true;
                else if ((state = job_state_from_string(argv[i])) < 0) {
                        fprintf(stderr, "jobs list: unknown state '%s'\n", argv[i]);
                        return EXIT_CONFIG;
                }
        }
        if (!ctx.json)
                printf("%-20s %-10s %3s  %-20s %-20s %s\n", "CREATION_ID", "STATE", "TRY",
                       "UPSCALE_TASK_ID", "UPDATED", "LAST ERROR");
        int r = ledger_foreach(l, state, print_job, &ctx);
        if (r < 0) {
                fprintf(stderr, "jobs list: %s\n", ledger_errmsg(l));
                return 1;
        }
        if (!ctx.json)
                printf("(%zu job%s)\n", ctx.n, ctx.n == 1 ? "" : "s");
        return 0;
}

static int cmd_counts(struct ledger *l)
{
        uint64_t counts[_JOB_STATE_MAX];
        if (ledger_count_states(l, counts) < 0) {
                fprintf(stderr, "jobs counts: %s\n", ledger_errmsg(l));
                return 1;
        }
        for (size_t i = 0; i < _JOB_STATE_MAX; i++)
                printf("%-10s %llu\n", job_state_to_string((enum job_state)i),
                       (unsigned long long)counts[i]);
        return 0;
}

static int cmd_show(struct ledger *l, int argc, char **argv)
{
        int ret = 0;
        for (int i = 0; i < argc; i++) {
                struct job j;
                int r = ledger_get(l, argv[i], &j);
                if (r <= 0) {
                        fprintf(stderr, "jobs show: %s: %s\n", argv[i],
                                r < 0 ? ledger_errmsg(l) : "no such job");
                        ret = 1;
                        continue;
                }
                json_object *o = job_to_json(&j);
                printf("%s\n", json_object_to_json_string_ext(
                                   o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
        }
        return ret;
}

/* Changes each named job in its own transaction, so one bad id does not hold back the rest. */
static int cmd_change(struct ledger *l, bool retry, int argc, char **argv)
{
        int ret = 0;
        if (argc == 0) {
                fprintf(stderr, "jobs %s: name at least one creation id\n",
                        retry ? "retry" : "abandon");
                return EXIT_CONFIG;
        }
        for (int i = 0; i < argc; i++) {
                struct job j;
                uint64_t now = now_realtime_usec();
                int r = ledger_begin(l);
                if (r >= 0)
                        r = ledger_get(l, argv[i], &j);
                if (r == 0) {
                        ledger_rollback(l);
                        fprintf(stderr, "jobs: %s: no such job\n", argv[i]);
                        ret = 1;
                        continue;
                }
                bool allowed =
                    r > 0 && (retry ? (j.state == JOB_DEAD || j.state == JOB_UNCERTAIN ||
                                       j.state == JOB_FAILED)
                                    : (j.state == JOB_PENDING || j.state == JOB_WAITING ||
                                       j.state == JOB_UNCERTAIN));
                if (r > 0 && !allowed) {
                        ledger_rollback(l);
                        fprintf(stderr, "jobs: %s is %s; %s only %s jobs\n", argv[i],
                                job_state_to_string(j.state),
                                retry ? "retry releases" : "abandon gives up",
                                retry ? "dead, uncertain or failed"
                                      : "pending, waiting or uncertain");
                        ret = 1;
                        continue;
                }
                enum job_state before = j.state;
                if (r > 0) {
                        if (retry) {
                                j.state = JOB_WAITING;
                                j.attempt = 0;
                                j.next_at = now;
                                j.upscale_task_id[0] = 0;
                                j.result_url[0] = 0;
                                snprintf(j.upstream_error, sizeof(j.upstream_error),
                                         "released by an operator");
                        } else {
                                j.state = JOB_DEAD;
                                snprintf(j.upstream_error, sizeof(j.upstream_error),
                                         "abandoned by an operator");
                        }
                        r = ledger_save(l, &j, now);
                }
                if (r >= 0)
                        r = ledger_commit(l);
                if (r < 0) {
                        ledger_rollback(l);
                        fprintf(stderr, "jobs: %s: %s\n", argv[i], ledger_errmsg(l));
                        ret = 1;
                        continue;
                }
                struct job_event ev = {
                    .message_id = retry ? MSGID_RELEASED : MSGID_ABANDONED,
                    .creation_id = j.creation_id,
                    .source_task_id = j.source_task_id,
                    .job_state = retry ? "retrying" : "dead",
                    .upstream_error = j.upstream_error,
                };
                log_job(LOG_NOTICE, &ev, "Upscale of %s %s by an operator (was %s)", j.creation_id,
                        retry ? "released for submission" : "abandoned",
                        job_state_to_string(before));
                printf("%s: %s -> %s\n", j.creation_id, job_state_to_string(before),
                       job_state_to_string(j.state));
        }
        return ret;
}

int cli_open_ledger(const char *what, const char *config_path, const char *store, bool writes,
                    struct ledger **ret_ledger, struct config **ret_config)
{
        struct config *cfg = NULL;
        if (!store) {
                struct config_errors errors = {0};
                if (config_load(config_path, &cfg, &errors) < 0) {
                        for (size_t i = 0; i < errors.n; i++)
                                fprintf(stderr, "%s\n", errors.lines[i]);
                        fprintf(stderr,
                                "%s: cannot read the configuration; name the ledger with "
                                "--store PATH\n",
                                what);
                        config_errors_clear(&errors);
                        return EXIT_CONFIG;
                }
                store = cfg->store_path;
        }
        journal_setup(LOG_INFO);
        struct ledger_options lo = {
            .synchronous_full = true, .busy_timeout_ms = 5000, .read_only = !writes};
        struct ledger *l = NULL;
        char *err = NULL;
        if (ledger_open(store, &lo, &l, &err) < 0) {
                fprintf(stderr, "%s: %s\n", what, err ? err : "cannot open the ledger");
                free(err);
                config_free(cfg);
                return 1;
        }
        *ret_ledger = l;
        *ret_config = cfg;
        return 0;
}

int jobs_cli_main(int argc, char **argv, const char *config_path)
{
        static const struct option options[] = {
            {"store", required_argument, NULL, 's'},
            {"help", no_argument, NULL, 'h'},
            {0},
        };
        const char *store = NULL;
        int c;
        optind = 1;
        while ((c = getopt_long(argc, argv, "+s:h", options, NULL)) != -1) {
                switch (c) {
                case 's':
                        store = optarg;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return EXIT_CONFIG;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return EXIT_CONFIG;
        }
        const char *cmd = argv[optind];
        int sub_argc = argc - optind - 1;
        char **sub_argv = argv + optind + 1;

        bool writes = strcmp(cmd, "retry") == 0 || strcmp(cmd, "abandon") == 0;
        struct config *cfg = NULL;
        struct ledger *l = NULL;
        int ret = cli_open_ledger("jobs", config_path, store, writes, &l, &cfg);
        if (ret != 0)
                return ret;
        if (strcmp(cmd, "list") == 0)
                ret = cmd_list(l, sub_argc, sub_argv);
        else if (strcmp(cmd, "counts") == 0)
                ret = cmd_counts(l);
        else if (strcmp(cmd, "show") == 0)
                ret = cmd_show(l, sub_argc, sub_argv);
        else if (writes)
                ret = cmd_change(l, strcmp(cmd, "retry") == 0, sub_argc, sub_argv);
        else {
                fprintf(stderr, "jobs: unknown command '%s'\n", cmd);
                usage(stderr);
                ret = EXIT_CONFIG;
        }
        ledger_close(l);
        config_free(cfg);
        return ret;
}
