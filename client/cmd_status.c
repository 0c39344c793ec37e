/* apr status: what apr-coord is serving and the state of its workers. The
 * exit status says whether it can serve: 0 when a worker is ready. */
#include <string.h>

#include "client/client.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr status [--endpoint E] [--json] [--timeout SEC]\n"
            "  --endpoint E   apr-coord's address: tcp://HOST:PORT or ipc://PATH\n"
            "                 (default $APR_ENDPOINT, else " APR_DEFAULT_ENDPOINT ")\n"
            "  --json         print the status reply as one JSON object\n"
            "  --timeout SEC  give up when no reply comes within SEC seconds (default 5;\n"
            "                 0 = never)\n"
            "Prints the model, context and vocabulary sizes, sequences running and queued,\n"
            "worker restarts, uptime, and one line per worker. Exit status 0 when at least\n"
            "one worker is ready, 1 when none is or nothing answers, 2 on bad usage.\n");
}

static void print_status(const apr_status *s)
{
    printf("model     %s\n", s->model);
    printf("context   %u tokens\n", s->n_ctx);
    printf("vocab     %u tokens\n", s->n_vocab);
    printf("running   %u sequences\n", s->running);
    printf("queued    %u of %u\n", s->queued, s->queue_limit);
    printf("restarts  %llu\n", (unsigned long long)s->restarts);
    printf("uptime    %.1f s\n", s->uptime_s);
    printf("%-10s %-8s %-11s %8s %9s %10s\n", "worker", "backend", "state", "pid", "restarts",
           "sequences");
    for (size_t i = 0; i < s->n_workers; i++) {
        const apr_worker_status *w = &s->workers[i];
        printf("%-10s %-8s %-11s %8lld %9llu %10u\n", w->name, w->backend, w->state,
               (long long)w->pid, (unsigned long long)w->restarts, w->sequences);
    }
}

typedef struct {
    bool json;
    int status;
} output;

static int on_reply(const apr_reply *r, void *arg, char err[APR_ERRLEN])
{
    output *o = arg;
    if (o->json && (r->event == APR_EV_STATUS || r->event == APR_EV_ERROR)) {
        apr_json_reply(stdout, r);
        fputc('\n', stdout);
    }
    if (r->event == APR_EV_ERROR) {
        snprintf(err, APR_ERRLEN, "%s: %s", r->code_str, r->message ? r->message : "");
        return 0;
    }
    if (r->event != APR_EV_STATUS) {
        snprintf(err, APR_ERRLEN, "unexpected %s reply to status", apr_event_str(r->event));
        return 0;
    }
    if (!o->json)
        print_status(&r->status);
    err[0] = '\0';
    for (size_t i = 0; i < r->status.n_workers; i++)
        if (!strcmp(r->status.workers[i].state, "ready"))
            o->status = 0;
    if (o->status)
        snprintf(err, APR_ERRLEN, "no worker is ready");
    return 0;
}

int apr_cmd_status(int argc, char **argv)
{
    const char *endpoint_flag = NULL;
    int timeout_ms = 5000;
    bool json = false;
    char err[APR_ERRLEN] = "";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--endpoint") && has_value) {
            endpoint_flag = argv[++i];
        } else if (!strcmp(a, "--timeout") && has_value) {
            if (apr_cli_timeout(argv[++i], &timeout_ms)) {
                fprintf(stderr, "apr status: --timeout: expected seconds in 0..86400, got '%.40s'\n",
                        argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "apr status: unknown option or missing value: '%.100s' (see --help)\n",
                    a);
            return 2;
        }
    }
    const char *endpoint = apr_cli_endpoint(endpoint_flag, err);
    if (!endpoint) {
        fprintf(stderr, "apr status: %s\n", err);
        return 2;
    }

    output o = {.json = json, .status = 1};
    apr_conn *c = apr_conn_open(endpoint, err);
    if (c) {
        apr_request req;
        apr_request_init(&req, APR_OP_STATUS);
        apr_id_set_int(&req.id, apr_conn_next_id(c));
        int signo;
        if (apr_conn_send(c, &req, err) == 0)
            apr_stream(c, &req.id, timeout_ms, -1, on_reply, &o, &signo, err);
    }
    if (fflush(stdout) && !err[0]) {
        snprintf(err, APR_ERRLEN, "cannot write to stdout");
        o.status = 1;
    }
    if (o.status && err[0])
        fprintf(stderr, "apr status: %s\n", err);
    apr_conn_close(c);
    return o.status;
}
