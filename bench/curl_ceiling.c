/* curl_ceiling.c: the bare libcurl-multi submission ceiling against the fake upstream (bench). */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct slot {
        CURL *easy;
        char body[256];
};

static double now_sec(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The answer is not looked at; only its status counts. */
static size_t discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
        (void)ptr;
        (void)userdata;
        return size * nmemb;
}

/* This process's peak RSS in KiB (VmHWM), 0 when unknown. getrusage's ru_maxrss would also count
 * the parent's pages from before exec; VmHWM belongs to this image alone. */
static long peak_rss_kb(void)
{
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        long kb = 0;
        if (!f)
                return 0;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
                        break;
        fclose(f);
        return kb;
}

static void usage(void)
{
        fprintf(stderr,
                "Usage: curl_ceiling --url URL [--parallel N] [--seconds T] [--prefix P]\n"
                "Posts upscale submissions to URL as fast as N parallel transfers allow for\n"
                "T seconds and prints one JSON line. The API key comes from "
                "$VIDU_FAKE_API_KEY.\n");
}

/* Gives the slot a fresh creation id, so the fake sees every submission as a new task. */
static void arm(struct slot *s, const char *prefix, unsigned long long n)
{
        snprintf(s->body, sizeof(s->body),
                 "{\"input\":{\"creation_id\":\"%s%llu\"},\"type\":\"upscale\","
                 "\"settings\":{\"model\":\"stable\",\"duration\":4}}",
                 prefix, n);
        curl_easy_setopt(s->easy, CURLOPT_POSTFIELDS, s->body);
        curl_easy_setopt(s->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(s->body));
}

int main(int argc, char **argv)
{
        const char *url = NULL, *prefix = "ceiling";
        long parallel = 8;
        double seconds = 5;
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--url") == 0 && i + 1 < argc)
                        url = argv[++i];
                else if (strcmp(argv[i], "--parallel") == 0 && i + 1 < argc)
                        parallel = strtol(argv[++i], NULL, 10);
                else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
                        seconds = strtod(argv[++i], NULL);
                else if (strcmp(argv[i], "--prefix") == 0 && i + 1 < argc)
                        prefix = argv[++i];
                else {
                        usage();
                        return 2;
                }
        }
        const char *key = getenv("VIDU_FAKE_API_KEY");
        if (!url || parallel < 1 || parallel > 1024 || !(seconds > 0) || seconds > 3600 ||
            strlen(prefix) > 64) {
                usage();
                return 2;
        }
        char auth[512];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", key ? key : "");

        if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
                return 1;
        CURLM *multi = curl_multi_init();
        struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
        if (headers)
                headers = curl_slist_append(headers, auth);
        struct slot *slots = calloc((size_t)parallel, sizeof(*slots));
        if (!multi || !headers || !slots) {
                fprintf(stderr, "curl_ceiling: out of memory\n");
                return 1;
        }
        /* As many cached connections as transfers, so every transfer keeps its connection. */
        curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, parallel);
        unsigned long long next = 0, ok = 0, failed = 0;
        for (long i = 0; i < parallel; i++) {
                struct slot *s = &slots[i];
                s->easy = curl_easy_init();
                if (!s->easy) {
                        fprintf(stderr, "curl_ceiling: out of memory\n");
                        return 1;
                }
                curl_easy_setopt(s->easy, CURLOPT_URL, url);
                curl_easy_setopt(s->easy, CURLOPT_HTTPHEADER, headers);
                curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, discard);
                curl_easy_setopt(s->easy, CURLOPT_PRIVATE, s);
                curl_easy_setopt(s->easy, CURLOPT_TIMEOUT, 30L);
                curl_easy_setopt(s->easy, CURLOPT_NOSIGNAL, 1L);
                arm(s, prefix, next++);
                curl_multi_add_handle(multi, s->easy);
        }

        double start = now_sec(), end = start + seconds;
        int running = 1;
        while (running > 0) {
                if (curl_multi_perform(multi, &running) != CURLM_OK)
                        break;
                CURLMsg *m;
                int left;
                bool stop_now = now_sec() >= end;
                while ((m = curl_multi_info_read(multi, &left))) {
                        if (m->msg != CURLMSG_DONE)
                                continue;
                        struct slot *s = NULL;
                        long code = 0;
                        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&s);
                        curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
                        if (m->data.result == CURLE_OK && code >= 200 && code < 300)
                                ok++;
                        else
                                failed++;
                        curl_multi_remove_handle(multi, s->easy);
                        if (!stop_now) {
                                arm(s, prefix, next++);
                                curl_multi_add_handle(multi, s->easy);
                                running++;
                        }
                }
                if (running > 0 && curl_multi_poll(multi, NULL, 0, 100, NULL) != CURLM_OK)
                        break;
        }
        double elapsed = now_sec() - start;
        printf("{\"parallel\":%ld,\"seconds\":%.3f,\"ok\":%llu,\"failed\":%llu,\"rps\":%.1f,"
               "\"peak_rss_kb\":%ld}\n",
               parallel, elapsed, ok, failed, (double)ok / elapsed, peak_rss_kb());
        for (long i = 0; i < parallel; i++)
                curl_easy_cleanup(slots[i].easy);
        free(slots);
        curl_slist_free_all(headers);
        curl_multi_cleanup(multi);
        curl_global_cleanup();
        return failed > 0 && ok == 0 ? 1 : 0;
}
