/* jobs_cli.c: lists jobs by state, releases (retry) or abandons them by creation id or by state,
 * and pauses or resumes every submission. Every change is one short transaction; the running
 * daemon sees it on its next scheduling pass. */
#include "jobs_cli.h"

#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "control.h"
#include "journal.h"
#include "ledger.h"
#include "pgledger.h"
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
            "  retry --state STATE [--since DURATION]\n"
            "                          release every dead, uncertain or failed job (changed in\n"
            "                          the last DURATION, e.g. 2h); prints how many\n"
            "  counts                  jobs per state, and whether submissions are paused\n"
            "  pause                   stop every submission (notifications are still taken,\n"
            "                          submitted upscales still followed), kept in the ledger\n"
            "  resume                  lift the pause\n"
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
        /* The settings.duration its submission sends; null for a job recorded before it was. */
        json_object_object_add(o, "duration",
                               j->duration ? json_object_new_int((int)j->duration) : NULL);
        json_object_object_add(o, "created_at", json_object_new_string(created));
        json_object_object_add(o, "updated_at", json_object_new_string(updated));
        json_object_object_add(o, "next_at", json_object_new_string(next));
        /* The upscale's cost as the upstream reported it; null while unknown. */
        json_object_object_add(o, "credits",
                               j->credits >= 0 ? json_object_new_int64(j->credits) : NULL);
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
        uint64_t counts[_JOB_STATE_MAX], since = 0;
        char when[32];
        if (ledger_count_states(l, counts) < 0) {
                fprintf(stderr, "jobs counts: %s\n", ledger_errmsg(l));
                return 1;
        }
        for (size_t i = 0; i < _JOB_STATE_MAX; i++)
                printf("%-10s %llu\n", job_state_to_string((enum job_state)i),
                       (unsigned long long)counts[i]);
        int r = control_operator_paused(l, &since);
        if (r < 0) {
                fprintf(stderr, "jobs counts: %s\n", ledger_errmsg(l));
                return 1;
        }
        format_time(since, when, sizeof(when));
        if (r > 0)
                printf("submissions paused by an operator since %s (vidu-upscaled jobs resume)\n",
                       when);
        struct control_budget b;
        r = control_budget_blocked(l, &b);
        if (r > 0) {
                format_time(b.free_at, when, sizeof(when));
                printf("budget reached (%s), next submission at %s\n",
                       budget_window_to_string(b.full), when);
        }
        return 0;
}

/* The operator's switch: written in the ledger (the daemon reads it at each dispatch decision);
 * the journal entry comes from here, the one who acted, once per change. */
static int cmd_pause(struct ledger *l, bool pause)
{
        uint64_t now = now_realtime_usec();
        int r = ledger_begin(l);
        if (r >= 0)
                r = control_set_operator_pause(l, pause, now);
        int changed = r;
        if (r >= 0)
                r = ledger_commit(l);
        if (r < 0) {
                ledger_rollback(l);
                fprintf(stderr, "jobs %s: %s\n", pause ? "pause" : "resume", ledger_errmsg(l));
                return 1;
        }
        if (changed == 0) {
                printf("submissions were already %s\n", pause ? "paused" : "running");
                return 0;
        }
        if (pause)
                log_full(LOG_WARNING, MSGID_OPERATOR_PAUSED,
                         "Submissions paused by an operator (vidu-upscaled jobs pause): "
                         "notifications are still accepted and submitted upscales followed; "
                         "nothing is submitted until vidu-upscaled jobs resume");
        else
                log_full(LOG_NOTICE, MSGID_OPERATOR_RESUMED,
                         "Submissions resumed by an operator (vidu-upscaled jobs resume)");
        printf("submissions %s\n", pause ? "paused" : "resumed");
        return 0;
}

struct bulk_ctx {
        uint64_t since; /* changed at or after (0: any time) */
        char (*ids)[JOB_ID_SIZE];
        size_t n, cap;
};

static int collect_id(const struct job *j, void *userdata)
{
        struct bulk_ctx *ctx = userdata;
        if (j->updated_at < ctx->since)
                return 0;
        if (ctx->n == ctx->cap) {
                size_t cap = ctx->cap ? ctx->cap * 2 : 64;
                char(*ids)[JOB_ID_SIZE] = realloc(ctx->ids, cap * sizeof(*ids));
                if (!ids)
                        return -ENOMEM;
                ctx->ids = ids;
                ctx->cap = cap;
        }
        memcpy(ctx->ids[ctx->n++], j->creation_id, JOB_ID_SIZE);
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

/* Changes each named job in its own transaction, so one bad id does not hold back the rest.
 * *ret_changed counts the jobs changed. */
static int change_jobs(struct ledger *l, bool retry, size_t argc, char **argv, size_t *ret_changed)
{
        int ret = 0;
        *ret_changed = 0;
        for (size_t i = 0; i < argc; i++) {
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
                (*ret_changed)++;
        }
        return ret;
}

/* jobs retry --state STATE [--since DURATION]: every job in that state (changed within the
 * duration), each released as `jobs retry ID` would. */
static int cmd_retry_bulk(struct ledger *l, int argc, char **argv)
{
        int state = -1;
        uint64_t since = 0;
        bool has_since = false;
        for (int i = 0; i < argc; i++) {
                bool has_value = i + 1 < argc;
                if (strcmp(argv[i], "--state") == 0 && has_value) {
                        state = job_state_from_string(argv[++i]);
                        if (state != JOB_DEAD && state != JOB_UNCERTAIN && state != JOB_FAILED) {
                                fprintf(stderr,
                                        "jobs retry: --state '%s': use dead, uncertain or failed\n",
                                        argv[i]);
                                return EXIT_CONFIG;
                        }
                } else if (strcmp(argv[i], "--since") == 0 && has_value) {
                        if (parse_duration(argv[++i], &since) < 0 || since == 0) {
                                fprintf(stderr,
                                        "jobs retry: --since '%s' is not a duration (use e.g. "
                                        "30m, 2h, 86400s)\n",
                                        argv[i]);
                                return EXIT_CONFIG;
                        }
                        has_since = true;
                } else {
                        fprintf(stderr,
                                "jobs retry: unexpected '%s' (use --state STATE [--since "
                                "DURATION], or creation ids alone)\n",
                                argv[i]);
                        return EXIT_CONFIG;
                }
        }
        if (state < 0) {
                fprintf(stderr, "jobs retry: --since needs --state dead, uncertain or failed\n");
                return EXIT_CONFIG;
        }
        uint64_t now = now_realtime_usec();
        struct bulk_ctx ctx = {.since = has_since && since < now ? now - since : 0};
        int r = ledger_foreach(l, state, collect_id, &ctx);
        if (r < 0) {
                fprintf(stderr, "jobs retry: %s\n",
                        r == -ENOMEM ? "out of memory" : ledger_errmsg(l));
                free(ctx.ids);
                return 1;
        }
        char **ids = calloc(ctx.n ? ctx.n : 1, sizeof(*ids));
        if (!ids) {
                free(ctx.ids);
                return 1;
        }
        for (size_t i = 0; i < ctx.n; i++)
                ids[i] = ctx.ids[i];
        size_t changed = 0;
        int ret = change_jobs(l, true, ctx.n, ids, &changed);
        printf("released %zu %s job%s\n", changed, job_state_to_string((enum job_state)state),
               changed == 1 ? "" : "s");
        free(ids);
        free(ctx.ids);
        return ret;
}

static int cmd_change(struct ledger *l, bool retry, int argc, char **argv)
{
        size_t changed;
        if (argc > 0 && strncmp(argv[0], "--", 2) == 0 && retry)
                return cmd_retry_bulk(l, argc, argv);
        if (argc == 0) {
                fprintf(stderr, "jobs %s: name at least one creation id%s\n",
                        retry ? "retry" : "abandon", retry ? ", or --state STATE" : "");
                return EXIT_CONFIG;
        }
        return change_jobs(l, retry, (size_t)argc, argv, &changed);
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
        /* --store names an SQLite file; otherwise the configured backend. */
        bool pg = cfg && cfg->store_backend == STORE_BACKEND_POSTGRESQL;
        if (pg ? pgledger_open(cfg->store_url, cfg->store_password.value, &l, &err) < 0
               : ledger_open(store, &lo, &l, &err) < 0) {
                fprintf(stderr, "%s: %s\n", what, err ? err : "cannot open the ledger");
                free(err);
                config_free(cfg);
                return 1;
        }
        *ret_ledger = l;
        *ret_config = cfg;
        return 0;
}

int cli_parse_common(int argc, char **argv, void (*print_usage)(FILE *f), const char **ret_store)
{
        static const struct option options[] = {
            {"store", required_argument, NULL, 's'},
            {"help", no_argument, NULL, 'h'},
            {0},
        };
        int c;
        *ret_store = NULL;
        optind = 1;
        while ((c = getopt_long(argc, argv, "+s:h", options, NULL)) != -1) {
                switch (c) {
                case 's':
                        *ret_store = optarg;
                        break;
                case 'h':
                        print_usage(stdout);
                        return CLI_EXIT_HELP;
                default:
                        print_usage(stderr);
                        return -EXIT_CONFIG;
                }
        }
        if (optind >= argc) {
                print_usage(stderr);
                return -EXIT_CONFIG;
        }
        return optind;
}

int jobs_cli_main(int argc, char **argv, const char *config_path)
{
        const char *store = NULL;
        int r = cli_parse_common(argc, argv, usage, &store);
        if (r < 0)
                return cli_exit_code(r);
        optind = r;
        const char *cmd = argv[optind];
        int sub_argc = argc - optind - 1;
        char **sub_argv = argv + optind + 1;

        bool writes = strcmp(cmd, "retry") == 0 || strcmp(cmd, "abandon") == 0 ||
                      strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0;
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
        else if ((strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0) && sub_argc > 0) {
                fprintf(stderr, "jobs %s takes no arguments\n", cmd);
                ret = EXIT_CONFIG;
        } else if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0)
                ret = cmd_pause(l, strcmp(cmd, "pause") == 0);
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
