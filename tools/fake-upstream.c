/* fake-upstream.c: a fake of the Vidu task API (the gateway's POST /vidu/v1/tasks and GET
 * /vidu/v1/tasks/{id}, the official POST /ent/v2/upscale-new and GET /ent/v2/tasks/{id}/creations)
 * for tests, benchmarks and the README's try-it command. Tasks complete on their own, and call
 * back a submission's callback_url when it ends (signed with the vidu scheme on demand, withheld
 * on demand: POST /_fake/callbacks); faults are injected on demand through POST /_fake/faults;
 * GET /_fake/tasks?creation_id=ID lists the tasks made for ID with the body each was submitted
 * with, its polls and its callbacks; GET /_fake/stats counts what arrived (and the
 * settings.duration each creation was last submitted with),
 * GET /_fake/arrivals?creation_id=ID says when each submission for ID arrived, and
 * GET /_fake/wait?submits=N answers once N submissions have arrived (a measuring client waits
 * without polling, so it takes no CPU from what it measures). State answers carry "credits" when
 * --credits N or POST /_fake/credits {"credits": N} sets it (-1: none). */
#include <errno.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/random.h>

#define MAX_BODY   (1024 * 1024)
#define MAX_FAULTS 1024
#define TABLE_SIZE (1 << 18)

enum action { ACT_RESPOND, ACT_DROP, ACT_GARBAGE, ACT_NO_ID, ACT_TRICKLE, ACT_DELAY };
enum on { ON_SUBMIT, ON_POLL, ON_ANY };

struct fault {
        enum on on;
        char *creation_id;
        long times; /* -1 forever */
        int status;
        char *body;
        char *content_type;
        char *retry_after;
        long delay_ms;
        long trickle_ms;
        enum action action;
        bool create;
};

#define MAX_CALLBACKS 4

struct task {
        char id[32];
        char *creation_id;
        uint64_t created_ms;
        bool v2;            /* submitted to /ent/v2/upscale-new */
        char *body;         /* the submission's body as received */
        char *callback_url; /* from the body; NULL: no callback */
        char *payload;      /* ent-v2: the body's payload, returned by polls and callbacks */
        long polls;
        /* CLOCK_REALTIME (ns) when it was created and first polled (0: never), so a test can
         * tell how long the daemon waited before its first poll. */
        long long created_real_ns, first_poll_real_ns;
        /* Callbacks sent: the state each reported and the status it was answered with (0: no
         * answer). */
        int n_callbacks;
        char callback_state[MAX_CALLBACKS][12];
        long callback_status[MAX_CALLBACKS];
        bool processing_sent;
        struct task *next;
        struct task *callback_next; /* in the list of tasks with a callback still to send */
};

#define MAX_ARRIVALS 8

struct count {
        char *creation_id;
        long created;
        char *fail_err; /* outcome: tasks for this creation end failed */
        bool withhold_callbacks;
        /* CLOCK_REALTIME (ns), the daemon's scheduling clock, when each of the first
         * MAX_ARRIVALS submissions arrived, so a test can measure the daemon's wait between
         * attempts where the wait happens. */
        long long arrival_ns[MAX_ARRIVALS];
        long n_arrivals;
        long duration; /* settings.duration of the last submission, for GET /_fake/stats */
        struct count *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t submit_arrived; /* submit_requests grew; waits on CLOCK_MONOTONIC */
static struct task *tasks[TABLE_SIZE];
static struct count *counts[TABLE_SIZE];
static struct fault faults[MAX_FAULTS];
static size_t n_faults;
static uint64_t next_id = 2371000000000001ULL;
static long submit_requests, tasks_created, polls, unauthorized;
/* Submissions that arrived on a connection which had already carried a request (keep-alive). */
static long reused_submit_requests;
/* CLOCK_MONOTONIC when the last submission arrived, for latency measured across processes. */
static long long last_submit_mono_ns;
static char *last_submit_body;
static bool last_auth_ok;
static long complete_after_ms = 1000;
/* "credits" in every state answer (as the official API's query answers carry it); -1: none. */
static long long credits = -1;
static const char *api_key, *auth_word = "Bearer";
static char host_port[128];
static volatile sig_atomic_t stop;
/* Callbacks: the tasks with one still to send, woken when one is added. */
static struct task *callback_head;
static pthread_cond_t callback_wake;
static bool callbacks_signed, callbacks_withheld, callbacks_processing;
static sigset_t stop_signals;

static uint64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static long long realtime_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static unsigned hash(const char *s)
{
        unsigned h = 2166136261u;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 16777619u;
        return h & (TABLE_SIZE - 1);
}

static struct count *count_of(const char *cid, bool create)
{
        unsigned h = hash(cid);
        for (struct count *c = counts[h]; c; c = c->next)
                if (strcmp(c->creation_id, cid) == 0)
                        return c;
        if (!create)
                return NULL;
        struct count *c = calloc(1, sizeof(*c));
        if (!c || !(c->creation_id = strdup(cid))) {
                free(c);
                return NULL;
        }
        c->next = counts[h];
        counts[h] = c;
        return c;
}

static struct task *task_of(const char *id)
{
        for (struct task *t = tasks[hash(id)]; t; t = t->next)
                if (strcmp(t->id, id) == 0)
                        return t;
        return NULL;
}

/* Called with the lock held; cnt is the creation's count (NULL when it could not be made). */
static struct task *create_task(const char *cid, struct count *cnt, bool v2, const char *body,
                                const char *callback_url, const char *payload)
{
        struct task *t = calloc(1, sizeof(*t));
        if (!t || !(t->creation_id = strdup(cid))) {
                free(t);
                return NULL;
        }
        snprintf(t->id, sizeof(t->id), "%llu", (unsigned long long)next_id++);
        t->created_ms = now_ms();
        t->created_real_ns = realtime_ns();
        t->v2 = v2;
        t->body = body ? strdup(body) : NULL;
        t->callback_url = callback_url ? strdup(callback_url) : NULL;
        t->payload = payload ? strdup(payload) : NULL;
        if (t->callback_url) {
                t->callback_next = callback_head;
                callback_head = t;
                pthread_cond_signal(&callback_wake);
        }
        unsigned h = hash(t->id);
        t->next = tasks[h];
        tasks[h] = t;
        if (cnt)
                cnt->created++;
        tasks_created++;
        return t;
}

static void fault_free(struct fault *f)
{
        free(f->creation_id);
        free(f->body);
        free(f->content_type);
        free(f->retry_after);
        memset(f, 0, sizeof(*f));
}

/* Takes the first matching fault (one use); copies it out. Called with the lock held. */
static bool take_fault(enum on on, const char *cid, struct fault *out)
{
        for (size_t i = 0; i < n_faults; i++) {
                struct fault *f = &faults[i];
                if (f->times == 0 || (f->on != ON_ANY && f->on != on))
                        continue;
                if (f->creation_id && (!cid || strcmp(f->creation_id, cid) != 0))
                        continue;
                *out = *f;
                out->creation_id = f->creation_id ? strdup(f->creation_id) : NULL;
                out->body = f->body ? strdup(f->body) : NULL;
                out->content_type = f->content_type ? strdup(f->content_type) : NULL;
                out->retry_after = f->retry_after ? strdup(f->retry_after) : NULL;
                if (f->times > 0)
                        f->times--;
                return true;
        }
        return false;
}

struct req {
        char *body;
        size_t len;
        bool too_big;
};

static enum MHD_Result reply(struct MHD_Connection *c, int status, const char *body,
                             const char *ctype, const char *retry_after)
{
        struct MHD_Response *r =
            MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
        if (!r)
                return MHD_NO;
        MHD_add_response_header(r, "Content-Type", ctype ? ctype : "application/json");
        if (retry_after)
                MHD_add_response_header(r, "Retry-After", retry_after);
        enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, r);
        MHD_destroy_response(r);
        return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *c, int status, json_object *o)
{
        enum MHD_Result r = reply(c, status,
                                  json_object_to_json_string_ext(
                                      o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
                                  NULL, NULL);
        json_object_put(o);
        return r;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, int status, const char *reason)
{
        char buf[256];
        snprintf(buf, sizeof(buf), "{\"code\":%d,\"reason\":\"%s\",\"message\":\"%s\"}", status,
                 reason, reason);
        return reply(c, status, buf, NULL, NULL);
}

static json_object *task_json(const struct task *t, const char *state, const char *err,
                              bool with_creation)
{
        json_object *o = json_object_new_object(), *input = json_object_new_object(),
                    *cr = json_object_new_array();
        json_object_object_add(o, "id", json_object_new_string(t->id));
        json_object_object_add(o, "type", json_object_new_string("upscale"));
        json_object_object_add(o, "state", json_object_new_string(state));
        json_object_object_add(input, "creation_id", json_object_new_string(t->creation_id));
        json_object_object_add(o, "input", input);
        if (with_creation) {
                char id[40], uri[256];
                json_object *c = json_object_new_object();
                snprintf(id, sizeof(id), "9%s", t->id);
                snprintf(uri, sizeof(uri), "http://%s/media/%s.mp4", host_port, t->id);
                json_object_object_add(c, "id", json_object_new_string(id));
                json_object_object_add(c, "task_id", json_object_new_string(t->id));
                json_object_object_add(c, "type", json_object_new_string("video"));
                json_object_object_add(c, "grade", json_object_new_string("hd"));
                json_object_object_add(c, "uri", json_object_new_string(uri));
                json_object_array_add(cr, c);
        }
        json_object_object_add(o, "creations", cr);
        json_object_object_add(o, "err_code", json_object_new_string(err ? err : ""));
        json_object_object_add(o, "created_at",
                               json_object_new_string("2024-07-31T16:25:00.000000Z"));
        return o;
}

/* The official API's view of an upscale task (GET /ent/v2/tasks/{id}/creations, and its
 * callbacks): task_id, state, err_code, credits, payload, creations with `url`. */
static json_object *official_json(const struct task *t, const char *state, const char *err)
{
        json_object *o = json_object_new_object(), *cr = json_object_new_array();
        bool success = strcmp(state, "success") == 0;
        json_object_object_add(o, "id", json_object_new_string(t->id));
        json_object_object_add(o, "task_id", json_object_new_string(t->id));
        json_object_object_add(o, "state", json_object_new_string(state));
        json_object_object_add(o, "err_code", json_object_new_string(err ? err : ""));
        /* --credits / POST /_fake/credits, else what an upscale costs (the caller holds the lock).
         */
        json_object_object_add(o, "credits",
                               json_object_new_int64(credits >= 0 ? credits
                                                     : success    ? 4
                                                                  : 0));
        json_object_object_add(o, "payload", json_object_new_string(t->payload ? t->payload : ""));
        if (success) {
                char id[40], url[256], cover[256];
                json_object *c = json_object_new_object();
                snprintf(id, sizeof(id), "9%s", t->id);
                snprintf(url, sizeof(url), "http://%s/media/%s.mp4", host_port, t->id);
                snprintf(cover, sizeof(cover), "http://%s/media/%s.jpg", host_port, t->id);
                json_object_object_add(c, "id", json_object_new_string(id));
                json_object_object_add(c, "url", json_object_new_string(url));
                json_object_object_add(c, "cover_url", json_object_new_string(cover));
                json_object_array_add(cr, c);
        }
        json_object_object_add(o, "creations", cr);
        return o;
}

/* What a task reports at age_ms: its state and, once failed, why (NULL otherwise). */
static const char *task_state_at(uint64_t age_ms, const char *fail)
{
        if ((long)age_ms < complete_after_ms)
                return (long)age_ms * 2 < complete_after_ms ? "queueing" : "processing";
        return fail ? "failed" : "success";
}

struct trickle {
        char *body;
        size_t len;
        long ms;
};

static ssize_t trickle_read(void *cls, uint64_t pos, char *buf, size_t max)
{
        struct trickle *t = cls;
        if (pos >= t->len)
                return MHD_CONTENT_READER_END_OF_STREAM;
        usleep((useconds_t)t->ms * 1000);
        if (stop)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        buf[0] = t->body[pos];
        return 1;
}

static void trickle_free(void *cls)
{
        struct trickle *t = cls;
        free(t->body);
        free(t);
}

/* Answers per the fault; returns true when it answered (or dropped). */
static bool apply_fault(struct MHD_Connection *c, struct fault *f, struct task *t,
                        enum MHD_Result *ret)
{
        if (f->delay_ms > 0)
                usleep((useconds_t)f->delay_ms * 1000);
        switch (f->action) {
        case ACT_DELAY:
                return false;
        case ACT_DROP:
                *ret = MHD_NO;
                return true;
        case ACT_GARBAGE:
                *ret = reply(c, f->status ? f->status : 200, "this is not json{",
                             "application/json", f->retry_after);
                return true;
        case ACT_NO_ID: {
                *ret = reply(c, f->status ? f->status : 200,
                             "{\"type\":\"upscale\",\"state\":\"queueing\"}", NULL, f->retry_after);
                return true;
        }
        case ACT_TRICKLE: {
                struct trickle *tr = calloc(1, sizeof(*tr));
                json_object *o =
                    t ? task_json(t, "queueing", NULL, false) : json_object_new_object();
                tr->body = strdup(json_object_to_json_string_ext(
                    o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
                tr->len = strlen(tr->body);
                tr->ms = f->trickle_ms > 0 ? f->trickle_ms : 1000;
                struct MHD_Response *r =
                    MHD_create_response_from_callback(tr->len, 1, trickle_read, tr, trickle_free);
                MHD_add_response_header(r, "Content-Type", "application/json");
                *ret = MHD_queue_response(c, 200, r);
                MHD_destroy_response(r);
                return true;
        }
        case ACT_RESPOND:
                break;
        }
        /* add_fault gives every "respond" fault a body: the raw one, or an API error from reason.
         */
        const char *body = f->body ? f->body : "{}";
        const char *ctype =
            f->content_type ? f->content_type : (body[0] == '<' ? "text/html" : "application/json");
        *ret = reply(c, f->status ? f->status : 500, body, ctype, f->retry_after);
        return true;
}

static const char *get_str(json_object *o, const char *key)
{
        json_object *v;
        if (!o || !json_object_object_get_ex(o, key, &v) ||
            !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

/* Whether the request carries "Authorization: <word> <key>" (always, without --api-key). */
static bool authorized(struct MHD_Connection *c)
{
        char want[512];
        if (!api_key)
                return true;
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        snprintf(want, sizeof(want), "%s %s", auth_word, api_key);
        return auth && strcmp(auth, want) == 0;
}

static enum MHD_Result handle_submit(struct MHD_Connection *c, struct req *rq, bool v2)
{
        bool auth_ok = authorized(c);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        bool reused = ci && ci->socket_context && *(long *)ci->socket_context > 0;
        struct timespec now, wall;
        clock_gettime(CLOCK_MONOTONIC, &now);
        clock_gettime(CLOCK_REALTIME, &wall);
        long long arrival_ns = (long long)wall.tv_sec * 1000000000LL + wall.tv_nsec;
        pthread_mutex_lock(&lock);
        submit_requests++;
        last_submit_mono_ns = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
        pthread_cond_broadcast(&submit_arrived);
        if (reused)
                reused_submit_requests++;
        last_auth_ok = auth_ok;
        free(last_submit_body);
        last_submit_body = strndup(rq->body ? rq->body : "", rq->len);
        if (!auth_ok)
                unauthorized++;
        pthread_mutex_unlock(&lock);
        if (!auth_ok)
                return reply_error(c, 401, "Unauthorized");

        json_object *o = rq->body ? json_tokener_parse(rq->body) : NULL, *input = NULL,
                    *settings = NULL, *v;
        const char *cid = NULL;
        bool ok;
        if (v2) {
                cid = get_str(o, "video_creation_id");
                ok = cid && *cid && get_str(o, "upscale_resolution") &&
                     (!json_object_object_get_ex(o, "payload", &v) ||
                      json_object_is_type(v, json_type_string));
        } else {
                if (o && json_object_object_get_ex(o, "input", &input))
                        cid = get_str(input, "creation_id");
                const char *type = get_str(o, "type");
                ok = cid && *cid && type && strcmp(type, "upscale") == 0 &&
                     json_object_object_get_ex(o, "settings", &settings) &&
                     get_str(settings, "model") &&
                     json_object_object_get_ex(settings, "duration", &v) &&
                     json_object_is_type(v, json_type_int);
        }
        if (!ok) {
                json_object_put(o);
                return reply_error(c, 400, "FieldInvalid");
        }
        struct fault f;
        pthread_mutex_lock(&lock);
        struct count *arrived = count_of(cid, true);
        if (arrived && arrived->n_arrivals < MAX_ARRIVALS)
                arrived->arrival_ns[arrived->n_arrivals++] = arrival_ns;
        if (arrived)
                arrived->duration = (long)json_object_get_int64(v);
        bool faulted = take_fault(ON_SUBMIT, cid, &f);
        bool create = !faulted || f.create;
        struct task *t = create
                             ? create_task(cid, arrived, v2, rq->body, get_str(o, "callback_url"),
                                           v2 ? get_str(o, "payload") : NULL)
                             : NULL;
        struct task copy = t ? *t : (struct task){0};
        if (t)
                copy.creation_id = strdup(t->creation_id);
        pthread_mutex_unlock(&lock);
        enum MHD_Result ret = MHD_YES;
        if (faulted) {
                bool answered = apply_fault(c, &f, t ? &copy : NULL, &ret);
                fault_free(&f);
                if (answered) {
                        free(copy.creation_id);
                        json_object_put(o);
                        return ret;
                }
        }
        json_object *resp;
        if (v2) {
                resp = json_object_new_object();
                json_object_object_add(resp, "task_id", json_object_new_string(copy.id));
                json_object_object_add(resp, "state", json_object_new_string("created"));
                json_object_object_add(resp, "video_creation_id", json_object_new_string(cid));
                json_object_object_add(resp, "created_at",
                                       json_object_new_string("2025-05-06T12:09:42.000000Z"));
        } else {
                resp = task_json(&copy, "queueing", NULL, false);
                json_object_object_add(resp, "settings", json_object_get(settings));
        }
        free(copy.creation_id);
        json_object_put(o);
        return reply_json(c, 200, resp);
}

static enum MHD_Result handle_poll(struct MHD_Connection *c, const char *id, bool v2)
{
        struct fault f;
        pthread_mutex_lock(&lock);
        polls++;
        struct task *t = task_of(id);
        if (t && t->polls++ == 0)
                t->first_poll_real_ns = realtime_ns();
        struct task copy = t ? *t : (struct task){0};
        char *fail = NULL;
        if (t) {
                copy.creation_id = strdup(t->creation_id);
                struct count *cnt = count_of(t->creation_id, false);
                if (cnt && cnt->fail_err)
                        fail = strdup(cnt->fail_err);
        }
        bool faulted = take_fault(ON_POLL, t ? t->creation_id : NULL, &f);
        pthread_mutex_unlock(&lock);
        enum MHD_Result ret = MHD_YES;
        if (faulted) {
                bool answered = apply_fault(c, &f, t ? &copy : NULL, &ret);
                fault_free(&f);
                if (answered) {
                        free(copy.creation_id);
                        free(fail);
                        return ret;
                }
        }
        if (!t)
                return reply_error(c, 404, "TaskNotFound");
        const char *state = task_state_at(now_ms() - copy.created_ms, fail);
        bool failed = strcmp(state, "failed") == 0;
        json_object *o;
        if (v2) {
                pthread_mutex_lock(&lock);
                struct task *now = task_of(id); /* its payload, under the lock */
                o = official_json(now ? now : &copy, state, failed ? fail : NULL);
                pthread_mutex_unlock(&lock);
        } else {
                o = task_json(&copy, state, failed ? fail : NULL, strcmp(state, "success") == 0);
                pthread_mutex_lock(&lock);
                long long cost = credits;
                pthread_mutex_unlock(&lock);
                if (cost >= 0)
                        json_object_object_add(o, "credits", json_object_new_int64(cost));
        }
        free(copy.creation_id);
        free(fail);
        return reply_json(c, 200, o);
}

static enum on parse_on(const char *s)
{
        if (s && strcmp(s, "poll") == 0)
                return ON_POLL;
        if (s && strcmp(s, "any") == 0)
                return ON_ANY;
        return ON_SUBMIT;
}

static enum action parse_action(const char *s)
{
        static const char *names[] = {"respond", "drop", "garbage", "no_id", "trickle", "delay"};
        for (size_t i = 0; s && i < sizeof(names) / sizeof(names[0]); i++)
                if (strcmp(s, names[i]) == 0)
                        return (enum action)i;
        return ACT_RESPOND;
}

static long get_long(json_object *o, const char *key, long dflt)
{
        json_object *v;
        if (!json_object_object_get_ex(o, key, &v))
                return dflt;
        return (long)json_object_get_int64(v);
}

static bool add_fault(json_object *o)
{
        if (!json_object_is_type(o, json_type_object) || n_faults >= MAX_FAULTS)
                return false;
        struct fault *f = &faults[n_faults];
        memset(f, 0, sizeof(*f));
        f->on = parse_on(get_str(o, "on"));
        f->creation_id = get_str(o, "creation_id") ? strdup(get_str(o, "creation_id")) : NULL;
        f->times = get_long(o, "times", 1);
        f->action = parse_action(get_str(o, "action"));
        f->status = (int)get_long(o, "status", f->action == ACT_RESPOND ? 500 : 0);
        f->delay_ms = get_long(o, "delay_ms", 0);
        f->trickle_ms = get_long(o, "trickle_ms", 1000);
        const char *reason = get_str(o, "reason"), *body = get_str(o, "body");
        if (body)
                f->body = strdup(body);
        else if (f->action == ACT_RESPOND) {
                char buf[256];
                snprintf(buf, sizeof(buf), "{\"code\":%d,\"reason\":\"%s\",\"message\":\"%s\"}",
                         f->status, reason ? reason : "", reason ? reason : "injected fault");
                f->body = strdup(buf);
        }
        f->content_type = get_str(o, "content_type") ? strdup(get_str(o, "content_type")) : NULL;
        f->retry_after = get_str(o, "retry_after") ? strdup(get_str(o, "retry_after")) : NULL;
        json_object *cr;
        if (json_object_object_get_ex(o, "create", &cr))
                f->create = json_object_get_boolean(cr);
        else
                f->create = f->action == ACT_DROP || f->action == ACT_GARBAGE ||
                            f->action == ACT_NO_ID || f->action == ACT_TRICKLE ||
                            f->action == ACT_DELAY;
        n_faults++;
        return true;
}

static void reset_all(void)
{
        for (size_t i = 0; i < TABLE_SIZE; i++) {
                while (tasks[i]) {
                        struct task *t = tasks[i];
                        tasks[i] = t->next;
                        free(t->creation_id);
                        free(t->body);
                        free(t->callback_url);
                        free(t->payload);
                        free(t);
                }
                while (counts[i]) {
                        struct count *c = counts[i];
                        counts[i] = c->next;
                        free(c->creation_id);
                        free(c->fail_err);
                        free(c);
                }
        }
        for (size_t i = 0; i < n_faults; i++)
                fault_free(&faults[i]);
        n_faults = 0;
        callback_head = NULL;
        callbacks_signed = callbacks_withheld = callbacks_processing = false;
        submit_requests = tasks_created = polls = unauthorized = reused_submit_requests = 0;
        free(last_submit_body);
        last_submit_body = NULL;
        last_auth_ok = false;
}

static enum MHD_Result handle_control(struct MHD_Connection *c, const char *method, const char *url,
                                      struct req *rq)
{
        if (strcmp(url, "/_fake/health") == 0)
                return reply(c, 200, "ok", "text/plain", NULL);
        if (strcmp(url, "/_fake/stats") == 0 && strcmp(method, "GET") == 0) {
                json_object *o = json_object_new_object(), *created = json_object_new_object(),
                            *durations = json_object_new_object();
                pthread_mutex_lock(&lock);
                for (size_t i = 0; i < TABLE_SIZE; i++)
                        for (struct count *cnt = counts[i]; cnt; cnt = cnt->next) {
                                if (cnt->created)
                                        json_object_object_add(created, cnt->creation_id,
                                                               json_object_new_int64(cnt->created));
                                if (cnt->n_arrivals)
                                        json_object_object_add(
                                            durations, cnt->creation_id,
                                            json_object_new_int64(cnt->duration));
                        }
                json_object_object_add(o, "submit_requests",
                                       json_object_new_int64(submit_requests));
                json_object_object_add(o, "reused_submit_requests",
                                       json_object_new_int64(reused_submit_requests));
                json_object_object_add(o, "last_submit_mono_ns",
                                       json_object_new_int64(last_submit_mono_ns));
                json_object_object_add(o, "created", created);
                json_object_object_add(o, "durations", durations);
                json_object_object_add(o, "tasks_created", json_object_new_int64(tasks_created));
                json_object_object_add(o, "polls", json_object_new_int64(polls));
                json_object_object_add(o, "unauthorized", json_object_new_int64(unauthorized));
                json_object_object_add(o, "last_submit_body",
                                       last_submit_body ? json_object_new_string(last_submit_body)
                                                        : NULL);
                json_object_object_add(o, "last_authorization_ok",
                                       json_object_new_boolean(last_auth_ok));
                pthread_mutex_unlock(&lock);
                return reply_json(c, 200, o);
        }
        if (strcmp(url, "/_fake/wait") == 0 && strcmp(method, "GET") == 0) {
                /* Each connection has a thread of its own: only this one waits. */
                const char *n = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "submits");
                const char *t = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "timeout_ms");
                long want = n ? atol(n) : 1, ms = t ? atol(t) : 5000;
                if (ms < 0 || ms > 60000)
                        ms = 60000;
                uint64_t end = now_ms() + (uint64_t)ms;
                struct timespec until = {.tv_sec = (time_t)(end / 1000),
                                         .tv_nsec = (long)(end % 1000) * 1000000L};
                json_object *o = json_object_new_object();
                pthread_mutex_lock(&lock);
                while (submit_requests < want &&
                       pthread_cond_timedwait(&submit_arrived, &lock, &until) != ETIMEDOUT)
                        ;
                json_object_object_add(o, "submit_requests",
                                       json_object_new_int64(submit_requests));
                json_object_object_add(o, "last_submit_mono_ns",
                                       json_object_new_int64(last_submit_mono_ns));
                pthread_mutex_unlock(&lock);
                return reply_json(c, 200, o);
        }
        if (strcmp(url, "/_fake/tasks") == 0 && strcmp(method, "GET") == 0) {
                const char *cid =
                    MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "creation_id");
                json_object *a = json_object_new_array();
                pthread_mutex_lock(&lock);
                for (size_t i = 0; cid && i < TABLE_SIZE; i++)
                        for (struct task *t = tasks[i]; t; t = t->next) {
                                if (strcmp(t->creation_id, cid) != 0)
                                        continue;
                                json_object *o = json_object_new_object(),
                                            *cbs = json_object_new_array();
                                json_object_object_add(o, "id", json_object_new_string(t->id));
                                json_object_object_add(
                                    o, "flavor", json_object_new_string(t->v2 ? "ent-v2" : "v1"));
                                json_object_object_add(
                                    o, "body", t->body ? json_object_new_string(t->body) : NULL);
                                json_object_object_add(o, "polls", json_object_new_int64(t->polls));
                                json_object_object_add(o, "created_ns",
                                                       json_object_new_int64(t->created_real_ns));
                                json_object_object_add(
                                    o, "first_poll_ns",
                                    json_object_new_int64(t->first_poll_real_ns));
                                for (int k = 0; k < t->n_callbacks; k++) {
                                        json_object *cb = json_object_new_object();
                                        json_object_object_add(
                                            cb, "state",
                                            json_object_new_string(t->callback_state[k]));
                                        json_object_object_add(
                                            cb, "status",
                                            json_object_new_int64(t->callback_status[k]));
                                        json_object_array_add(cbs, cb);
                                }
                                json_object_object_add(o, "callbacks", cbs);
                                json_object_array_add(a, o);
                        }
                pthread_mutex_unlock(&lock);
                return reply_json(c, 200, a);
        }
        if (strcmp(url, "/_fake/arrivals") == 0 && strcmp(method, "GET") == 0) {
                const char *cid =
                    MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "creation_id");
                json_object *a = json_object_new_array();
                pthread_mutex_lock(&lock);
                struct count *cnt = cid ? count_of(cid, false) : NULL;
                for (long i = 0; cnt && i < cnt->n_arrivals; i++)
                        json_object_array_add(a, json_object_new_int64(cnt->arrival_ns[i]));
                pthread_mutex_unlock(&lock);
                return reply_json(c, 200, a);
        }
        if (strcmp(method, "POST") != 0)
                return reply_error(c, 405, "MethodNotAllowed");
        json_object *o = rq->body ? json_tokener_parse(rq->body) : NULL;
        bool ok = true;
        pthread_mutex_lock(&lock);
        if (strcmp(url, "/_fake/faults") == 0) {
                if (json_object_is_type(o, json_type_array))
                        for (size_t i = 0; i < json_object_array_length(o); i++)
                                ok = add_fault(json_object_array_get_idx(o, i)) && ok;
                else
                        ok = add_fault(o);
        } else if (strcmp(url, "/_fake/outcome") == 0) {
                const char *cid = get_str(o, "creation_id"), *state = get_str(o, "state");
                struct count *cnt = cid ? count_of(cid, true) : NULL;
                if (cnt && state && strcmp(state, "failed") == 0) {
                        free(cnt->fail_err);
                        cnt->fail_err =
                            strdup(get_str(o, "err_code") ? get_str(o, "err_code") : "failed");
                } else
                        ok = false;
        } else if (strcmp(url, "/_fake/credits") == 0) {
                json_object *v;
                if (json_object_object_get_ex(o, "credits", &v) &&
                    json_object_is_type(v, json_type_int))
                        credits = json_object_get_int64(v);
                else
                        ok = false;
        } else if (strcmp(url, "/_fake/callbacks") == 0 &&
                   json_object_is_type(o, json_type_object)) {
                /* {"sign": bool, "processing": bool, "withhold": bool, "creation_id": ID}: withhold
                 * applies to ID's tasks when given, else to every task. */
                json_object *v;
                const char *cid = get_str(o, "creation_id");
                if (json_object_object_get_ex(o, "sign", &v))
                        callbacks_signed = json_object_get_boolean(v);
                if (json_object_object_get_ex(o, "processing", &v))
                        callbacks_processing = json_object_get_boolean(v);
                if (json_object_object_get_ex(o, "withhold", &v)) {
                        struct count *cnt = cid ? count_of(cid, true) : NULL;
                        if (cnt)
                                cnt->withhold_callbacks = json_object_get_boolean(v);
                        else if (!cid)
                                callbacks_withheld = json_object_get_boolean(v);
                        else
                                ok = false;
                }
                pthread_cond_signal(&callback_wake);
        } else if (strcmp(url, "/_fake/reset") == 0)
                reset_all();
        else {
                pthread_mutex_unlock(&lock);
                json_object_put(o);
                return reply_error(c, 404, "NotFound");
        }
        pthread_mutex_unlock(&lock);
        json_object_put(o);
        return ok ? reply(c, 200, "{\"ok\":true}", NULL, NULL) : reply_error(c, 400, "BadRequest");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *size, void **con_cls)
{
        struct req *rq = *con_cls;
        if (!rq) {
                rq = calloc(1, sizeof(*rq));
                if (!rq)
                        return MHD_NO;
                *con_cls = rq;
                return MHD_YES;
        }
        if (*size) {
                if (rq->len + *size > MAX_BODY)
                        rq->too_big = true;
                else {
                        char *b = realloc(rq->body, rq->len + *size + 1);
                        if (!b)
                                return MHD_NO;
                        rq->body = b;
                        memcpy(rq->body + rq->len, data, *size);
                        rq->len += *size;
                        rq->body[rq->len] = 0;
                }
                *size = 0;
                return MHD_YES;
        }
        if (rq->too_big)
                return reply_error(c, 413, "PayloadTooLarge");
        if (strncmp(url, "/_fake/", 7) == 0)
                return handle_control(c, method, url, rq);
        if (strcmp(url, "/ent/v2/upscale-new") == 0)
                return strcmp(method, "POST") == 0 ? handle_submit(c, rq, true)
                                                   : reply_error(c, 405, "MethodNotAllowed");
        if (strncmp(url, "/ent/v2/tasks/", 14) == 0) {
                size_t n = strlen(url);
                const char *tail = "/creations";
                if (n > 14 + strlen(tail) && strcmp(url + n - strlen(tail), tail) == 0 &&
                    strcmp(method, "GET") == 0) {
                        char id[64];
                        snprintf(id, sizeof(id), "%.*s", (int)(n - 14 - strlen(tail)), url + 14);
                        if (!authorized(c)) {
                                pthread_mutex_lock(&lock);
                                unauthorized++;
                                pthread_mutex_unlock(&lock);
                                return reply_error(c, 401, "Unauthorized");
                        }
                        return handle_poll(c, id, true);
                }
                return reply_error(c, 404, "NotFound");
        }
        if (strncmp(url, "/vidu/v1/tasks", 14) == 0) {
                if (strcmp(url, "/vidu/v1/tasks") == 0)
                        return strcmp(method, "POST") == 0
                                   ? handle_submit(c, rq, false)
                                   : reply_error(c, 405, "MethodNotAllowed");
                if (url[14] == '/' && strcmp(method, "GET") == 0) {
                        if (!authorized(c)) {
                                pthread_mutex_lock(&lock);
                                unauthorized++;
                                pthread_mutex_unlock(&lock);
                                return reply_error(c, 401, "Unauthorized");
                        }
                        return handle_poll(c, url + 15, false);
                }
                return reply_error(c, 405, "MethodNotAllowed");
        }
        return reply_error(c, 404, "NotFound");
}

/* Each connection counts the requests it carried, to tell a kept-alive one. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
        if (toe == MHD_CONNECTION_NOTIFY_STARTED)
                *socket_context = calloc(1, sizeof(long));
        else {
                free(*socket_context);
                *socket_context = NULL;
        }
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
                    enum MHD_RequestTerminationCode toe)
{
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        if (ci && ci->socket_context)
                ++*(long *)ci->socket_context;
        struct req *rq = *con_cls;
        if (rq) {
                free(rq->body);
                free(rq);
        }
        *con_cls = NULL;
}

static size_t discard(char *p, size_t size, size_t n, void *userdata)
{
        return size * n;
}

/* The official callback signature (the vidu scheme): base64(HMAC-SHA256(key, S)) where S is, a
 * line each: the method, the URL's path, its raw query, "vidu", the Date, then "Name:Value" for
 * Date and x-request-nonce. Written from the documented algorithm, not shared with the daemon. */
static void vidu_signature(const char *key, const char *url, const char *date, const char *nonce,
                           char out[64])
{
        const char *p = strstr(url, "://");
        p = p ? strchr(p + 3, '/') : NULL;
        size_t path_len = p ? strcspn(p, "?#") : 0;
        const char *q = p ? strchr(p, '?') : NULL;
        size_t query_len = q ? strcspn(q + 1, "#") : 0;
        char *s = NULL;
        int n = asprintf(&s, "POST\n%.*s\n%.*s\nvidu\n%s\nDate:%s\nx-request-nonce:%s\n",
                         p && path_len ? (int)path_len : 1, p && path_len ? p : "/", (int)query_len,
                         q ? q + 1 : "", date, date, nonce);
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned mac_len = 0;
        out[0] = 0;
        if (n < 0)
                return;
        if (HMAC(EVP_sha256(), key, (int)strlen(key), (unsigned char *)s, (size_t)n, mac, &mac_len))
                EVP_EncodeBlock((unsigned char *)out, mac, (int)mac_len);
        free(s);
}

/* POSTs one callback; the answer's status, or 0 when none came. */
static long send_callback(const char *url, const char *body, bool sign)
{
        CURL *e = curl_easy_init();
        if (!e)
                return 0;
        struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
        char line[256];
        if (sign && api_key) {
                char date[64], nonce[33], sig[64];
                unsigned char rnd[16];
                time_t now = time(NULL);
                struct tm tm;
                gmtime_r(&now, &tm);
                strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
                if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd))
                        memset(rnd, 0, sizeof(rnd));
                for (size_t i = 0; i < sizeof(rnd); i++)
                        snprintf(nonce + 2 * i, 3, "%02x", rnd[i]);
                vidu_signature(api_key, url, date, nonce, sig);
                snprintf(line, sizeof(line), "Date: %s", date);
                h = curl_slist_append(h, line);
                snprintf(line, sizeof(line), "x-request-nonce: %s", nonce);
                h = curl_slist_append(h, line);
                h = curl_slist_append(h, "X-HMAC-SIGNED-HEADERS: Date;x-request-nonce");
                h = curl_slist_append(h, "X-HMAC-ALGORITHM: hmac-sha256");
                h = curl_slist_append(h, "X-HMAC-ACCESS-KEY: vidu");
                snprintf(line, sizeof(line), "X-HMAC-SIGNATURE: %s", sig);
                h = curl_slist_append(h, line);
        }
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
        long status = 0;
        if (curl_easy_perform(e) == CURLE_OK)
                curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_slist_free_all(h);
        curl_easy_cleanup(e);
        return status;
}

/* Calls back every task that has a callback_url: `processing` half-way when asked to, then its
 * outcome once it ends, unless withheld. One at a time, in the order they become due. */
static void *callback_thread(void *arg)
{
        pthread_mutex_lock(&lock);
        while (!stop) {
                struct task *due = NULL;
                const char *state = NULL;
                bool final = false;
                uint64_t now = now_ms();
                for (struct task *t = callback_head; t && !due; t = t->callback_next) {
                        struct count *cnt = count_of(t->creation_id, false);
                        if (callbacks_withheld || (cnt && cnt->withhold_callbacks))
                                continue;
                        const char *st =
                            task_state_at(now - t->created_ms, cnt ? cnt->fail_err : NULL);
                        if (strcmp(st, "success") == 0 || strcmp(st, "failed") == 0) {
                                state = st;
                                final = true;
                        } else if (strcmp(st, "processing") == 0 && callbacks_processing &&
                                   !t->processing_sent)
                                state = st;
                        else
                                continue;
                        due = t;
                }
                if (!due) {
                        if (!callback_head)
                                pthread_cond_wait(&callback_wake, &lock);
                        else {
                                uint64_t end = now_ms() + 10;
                                struct timespec until = {.tv_sec = (time_t)(end / 1000),
                                                         .tv_nsec = (long)(end % 1000) * 1000000L};
                                pthread_cond_timedwait(&callback_wake, &lock, &until);
                        }
                        continue;
                }
                if (final) {
                        /* Out of the list: sent once, as the official API does (its retries are
                         * not faked). */
                        for (struct task **pp = &callback_head; *pp; pp = &(*pp)->callback_next)
                                if (*pp == due) {
                                        *pp = due->callback_next;
                                        break;
                                }
                } else
                        due->processing_sent = true;
                struct count *cnt = count_of(due->creation_id, false);
                const char *err = cnt && cnt->fail_err ? cnt->fail_err : "failed";
                json_object *o =
                    due->v2 ? official_json(due, state,
                                            final && strcmp(state, "failed") == 0 ? err : NULL)
                            : task_json(due, state, strcmp(state, "failed") == 0 ? err : NULL,
                                        strcmp(state, "success") == 0);
                char *body = strdup(json_object_to_json_string_ext(
                    o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
                json_object_put(o);
                char *url = strdup(due->callback_url);
                char id[32];
                snprintf(id, sizeof(id), "%s", due->id);
                bool sign = callbacks_signed;
                pthread_mutex_unlock(&lock);
                long status = body && url ? send_callback(url, body, sign) : 0;
                free(body);
                free(url);
                pthread_mutex_lock(&lock);
                struct task *t = task_of(id); /* a reset may have freed it meanwhile */
                if (t && t->n_callbacks < MAX_CALLBACKS) {
                        snprintf(t->callback_state[t->n_callbacks], sizeof(t->callback_state[0]),
                                 "%s", state);
                        t->callback_status[t->n_callbacks++] = status;
                }
        }
        pthread_mutex_unlock(&lock);
        return NULL;
}

static void *exit_soon(void *arg)
{
        sleep(2);
        _exit(0);
}

int main(int argc, char **argv)
{
        const char *listen_spec = "127.0.0.1:0", *port_file = NULL;
        bool quiet = false;
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&submit_arrived, &ca);
        pthread_cond_init(&callback_wake, &ca);
        pthread_condattr_destroy(&ca);
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
                        listen_spec = argv[++i];
                else if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc)
                        port_file = argv[++i];
                else if (strcmp(argv[i], "--api-key") == 0 && i + 1 < argc)
                        api_key = argv[++i];
                else if (strcmp(argv[i], "--auth-word") == 0 && i + 1 < argc)
                        auth_word = argv[++i];
                else if (strcmp(argv[i], "--complete-after") == 0 && i + 1 < argc)
                        complete_after_ms = atol(argv[++i]);
                else if (strcmp(argv[i], "--credits") == 0 && i + 1 < argc)
                        credits = atoll(argv[++i]);
                else if (strcmp(argv[i], "--quiet") == 0)
                        quiet = true;
                else {
                        fprintf(
                            stderr,
                            "Usage: fake-upstream [--listen HOST:PORT] [--port-file "
                            "FILE] [--auth-word WORD]\n"
                            "                     [--complete-after MS] [--credits N] [--quiet]\n"
                            "The expected API key comes from $VIDU_FAKE_API_KEY.\n");
                        return 2;
                }
        }
        if (!api_key && getenv("VIDU_FAKE_API_KEY") && *getenv("VIDU_FAKE_API_KEY"))
                api_key = getenv("VIDU_FAKE_API_KEY");

        char host[64] = "127.0.0.1";
        const char *colon = strrchr(listen_spec, ':');
        if (!colon || (size_t)(colon - listen_spec) >= sizeof(host)) {
                fprintf(stderr, "fake-upstream: bad --listen %s\n", listen_spec);
                return 2;
        }
        memcpy(host, listen_spec, (size_t)(colon - listen_spec));
        host[colon - listen_spec] = 0;
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)atoi(colon + 1))};
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
                fprintf(stderr, "fake-upstream: only IPv4 addresses: %s\n", host);
                return 2;
        }
        /* Block the stop signals before libmicrohttpd starts its threads, so that they inherit the
         * mask and the main thread alone takes the signal in sigwait(). */
        sigemptyset(&stop_signals);
        sigaddset(&stop_signals, SIGTERM);
        sigaddset(&stop_signals, SIGINT);
        pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
        struct MHD_Daemon *d = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG, 0,
            NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_NOTIFY_COMPLETED,
            on_done, NULL, MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
            MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_END);
        if (!d) {
                fprintf(stderr, "fake-upstream: cannot listen on %s: %s\n", listen_spec,
                        strerror(errno));
                return 1;
        }
        curl_global_init(CURL_GLOBAL_DEFAULT);
        pthread_t callbacks;
        if (pthread_create(&callbacks, NULL, callback_thread, NULL) == 0)
                pthread_detach(callbacks);
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        unsigned port = info ? info->port : 0;
        snprintf(host_port, sizeof(host_port), "%s:%u", host, port);
        if (!quiet)
                printf("fake-upstream listening on http://%s\n", host_port);
        fflush(stdout);
        if (port_file) {
                char tmp[4096];
                snprintf(tmp, sizeof(tmp), "%s.tmp", port_file);
                FILE *f = fopen(tmp, "w");
                if (!f || fprintf(f, "%u\n", port) < 0 || fclose(f) != 0 ||
                    rename(tmp, port_file) < 0) {
                        fprintf(stderr, "fake-upstream: cannot write %s\n", port_file);
                        MHD_stop_daemon(d);
                        return 1;
                }
        }
        /* Blocked in every thread (set before the daemon started), taken here. */
        int sig;
        sigwait(&stop_signals, &sig);
        stop = 1;
        /* libmicrohttpd waits for every connection thread, and an idle keep-alive connection can
         * hold one for its whole timeout: give them two seconds, then leave anyway. */
        pthread_t guard;
        if (pthread_create(&guard, NULL, exit_soon, NULL) == 0)
                pthread_detach(guard);
        MHD_stop_daemon(d);
        reset_all();
        return 0;
}
