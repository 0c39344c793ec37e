/* apr load: scripted load on apr-coord from many DEALER sockets in one
 * process, all polled together. Closed loop (each socket keeps one request
 * in flight) or open loop (Poisson arrivals at a rate), with seeded prompts
 * so that a run can be repeated; optionally checks every stream against a
 * single-stream reference (--verify) and kills workers while it runs
 * (--chaos) to see what the clients notice. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "client/client.h"

#define MAX_CHAOS 16
#define MAX_CODES 16
#define MAX_SOCKETS 1000 /* under ZeroMQ's default of 1023 per context */
#define STATUS_POLL_S 0.02  /* how often a restart is checked for */
#define RESTART_WAIT_S 60.0 /* a worker not back by then counts as a failure */
#define CANCEL_WAIT_S 2.0   /* after Ctrl-C, for the cancelled streams to end */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr load [--endpoint E] (--requests N | --duration T) [options]\n"
            "  --endpoint E         apr-coord's address: tcp://HOST:PORT or ipc://PATH\n"
            "                       (default $APR_ENDPOINT, else " APR_DEFAULT_ENDPOINT ")\n"
            "  --concurrency C      sockets, 1..%d (default 1). Closed loop: each keeps one\n"
            "                       request in flight and sends the next when it ends\n"
            "  --rate R             open loop instead: requests arrive at random (Poisson)\n"
            "                       R times a second on average, whatever is in flight; they\n"
            "                       go round-robin over the C sockets\n"
            "  --requests N         send N requests in all\n"
            "  --duration T         send no new request after T seconds (waits for those in\n"
            "                       flight); with --requests, whichever comes first\n"
            "  --prompt-len DIST    prompt tokens per request (default 16-64)\n"
            "  --max-tokens DIST    max_tokens per request (default 32)\n"
            "                       DIST is N, or LO-HI for a uniform draw from LO to HI\n"
            "                       inclusive. A prompt is simple English words from the\n"
            "                       seeded RNG, tokenized by the server before the load\n"
            "                       starts (BOS included where the model has one) and cut to\n"
            "                       its length, then sent as prompt_tokens. A request may end\n"
            "                       before max_tokens at EOS\n"
            "  --prompts P          distinct prompts; request i uses prompt i %% P (default:\n"
            "                       the number of requests, at most 256)\n"
            "  --seed S             seeds prompts, lengths and arrivals (default 1)\n"
            "  --temperature T      sample at T instead of greedy; each prompt then has its\n"
            "                       own seed, so the text is still repeatable\n"
            "  --verify             first run every prompt alone, one at a time, as the\n"
            "                       reference; then every completed stream must equal its\n"
            "                       reference token for token\n"
            "  --chaos LIST         kill-worker@T[,kill-worker@T...]: T seconds after the\n"
            "                       start, ask the server's status and kill -9 the first\n"
            "                       worker in state ready (it must be an apr-worker process\n"
            "                       on this host), then poll status until that worker is\n"
            "                       ready again; a bare T repeats the previous action\n"
            "  --timeout SEC        a request fails when no reply comes for SEC seconds\n"
            "                       (default 60; 0 = never)\n"
            "  --json FILE          write the summary and every request's figures to FILE\n"
            "Every stream is checked for lost or repeated tokens (token index 0, 1, 2 ...\n"
            "without gaps, and as many tokens as usage says). Reports throughput (requests/s,\n"
            "generated tok/s), time to first token and inter-token latency p50/p90/p99,\n"
            "errors and busy replies by code, and for --chaos the restart times, the\n"
            "requests in flight at each kill and their longest silence. A progress bar goes\n"
            "to stderr when it is a terminal. Exit status 0; 1 when a request failed (busy\n"
            "replies are counted but are not failures), a stream lost or repeated a token,\n"
            "a --verify comparison differed, or a --chaos kill or restart did not happen;\n"
            "2 on bad usage; 130 on Ctrl-C (requests in flight are cancelled).\n",
            MAX_SOCKETS);
}

/* ------------------------------------------------------------ state */

/* A prompt and its length limit; requests i, i + P, ... share it. */
typedef struct {
    int32_t *prompt;
    uint32_t n_prompt;
    uint32_t max_tokens;
    uint64_t seed; /* sampling seed, when sampled */
    int32_t *ref;  /* the reference completion (--verify) */
    uint32_t n_ref;
} job;

typedef enum { RQ_INFLIGHT = 1, RQ_DONE, RQ_BUSY, RQ_FAILED, RQ_CANCELLED } rq_state;

typedef struct {
    size_t job, sock;
    rq_state state;
    double t_send, t_first, t_last, t_end;
    uint32_t n_tokens, next_index, prompt_tokens;
    double max_gap; /* seconds between consecutive tokens */
    bool index_error;
    int32_t *tokens; /* --verify only */
    size_t cap;
    apr_finish finish;
    char why[160]; /* a failure, for the report */
} rq;

typedef struct {
    double at; /* seconds after the start */
    bool fired, restarted, failed;
    double t_kill, restart_s;
    char worker[32];
    int64_t pid, new_pid;
    char why[160];
} chaos_ev;

typedef enum { CH_IDLE = 0, CH_KILL, CH_WATCH } chaos_phase;

typedef struct {
    char code[32];
    size_t n;
} code_count;

typedef struct {
    /* options */
    const char *endpoint, *json_path;
    int64_t concurrency, requests, n_prompts;
    double rate, duration;
    apr_dist prompt_len, max_tokens;
    uint64_t seed;
    double temperature;
    bool verify;
    int timeout_ms;
    chaos_ev chaos[MAX_CHAOS];
    size_t n_chaos;

    /* connections */
    void *zctx;
    apr_conn **socks;
    uint32_t *sock_load; /* requests in flight per socket */
    apr_conn *ctrl;      /* prompts, reference, status */

    job *jobs;
    size_t n_jobs;
    rq *rqs;
    size_t n_rqs, cap_rqs;
    size_t *inflight; /* indices into rqs */
    size_t n_inflight;

    apr_samples gaps_ms;
    code_count codes[MAX_CODES];
    size_t n_codes;
    size_t n_done, n_busy, n_failed, n_cancelled;
    uint64_t gen_tokens, prompt_tokens;
    double t0, t_last_end;

    apr_rand arrivals;
    double next_arrival;

    size_t chaos_next;
    chaos_phase phase;
    bool status_pending;
    apr_id status_id;
    double status_at;
    int64_t status_seq;
} load;

static void count_code(load *L, const char *code)
{
    /* The last slot gathers whatever does not fit, so no count is lost. */
    for (;;) {
        for (size_t i = 0; i < L->n_codes; i++)
            if (!strcmp(L->codes[i].code, code)) {
                L->codes[i].n++;
                return;
            }
        if (L->n_codes < MAX_CODES - 1 || !strcmp(code, "other")) {
            snprintf(L->codes[L->n_codes].code, sizeof L->codes[0].code, "%s", code);
            L->codes[L->n_codes++].n = 1;
            return;
        }
        code = "other";
    }
}

/* ------------------------------------------------------------ flags */

static int parse_chaos(const char *s, load *L, char err[APR_ERRLEN])
{
    char buf[512];
    if (strlen(s) >= sizeof buf) {
        snprintf(err, APR_ERRLEN, "--chaos: too long");
        return -1;
    }
    strcpy(buf, s);
    bool have_action = false;
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        const char *t = item;
        if (!strncmp(item, "kill-worker@", 12)) {
            t = item + 12;
            have_action = true;
        } else if (!have_action) {
            snprintf(err, APR_ERRLEN, "--chaos: expected kill-worker@SECONDS, got '%.40s'", item);
            return -1;
        }
        double at;
        if (apr_parse_double(t, &at) || at < 0 || at > 86400) {
            snprintf(err, APR_ERRLEN, "--chaos: expected seconds in 0..86400, got '%.40s'", t);
            return -1;
        }
        if (L->n_chaos == MAX_CHAOS) {
            snprintf(err, APR_ERRLEN, "--chaos: at most %d events", MAX_CHAOS);
            return -1;
        }
        if (L->n_chaos && at < L->chaos[L->n_chaos - 1].at) {
            snprintf(err, APR_ERRLEN, "--chaos: times must not go down");
            return -1;
        }
        L->chaos[L->n_chaos++] = (chaos_ev){.at = at};
    }
    if (!L->n_chaos) {
        snprintf(err, APR_ERRLEN, "--chaos: no event given");
        return -1;
    }
    return 0;
}

/* 0, 1 for --help (printed), or 2 after a usage message. */
static int parse_flags(int argc, char **argv, load *L)
{
    const char *endpoint_flag = NULL;
    char err[APR_ERRLEN];
    bool have_requests = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--verify")) {
            L->verify = true;
            continue;
        } else if (!v) {
            fprintf(stderr, "apr load: unknown option or missing value: '%.100s' (see --help)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--endpoint")) {
            endpoint_flag = v;
        } else if (!strcmp(a, "--json")) {
            L->json_path = v;
        } else if (!strcmp(a, "--concurrency")) {
            if (apr_parse_int(v, 1, MAX_SOCKETS, &L->concurrency))
                goto bad_number;
        } else if (!strcmp(a, "--requests")) {
            if (apr_parse_int(v, 1, 10000000, &L->requests))
                goto bad_number;
            have_requests = true;
        } else if (!strcmp(a, "--prompts")) {
            if (apr_parse_int(v, 1, 100000, &L->n_prompts))
                goto bad_number;
        } else if (!strcmp(a, "--rate")) {
            if (apr_parse_double(v, &L->rate) || !(L->rate > 0) || L->rate > 1e6)
                goto bad_number;
        } else if (!strcmp(a, "--duration")) {
            if (apr_parse_double(v, &L->duration) || !(L->duration > 0) || L->duration > 86400 * 7)
                goto bad_number;
        } else if (!strcmp(a, "--prompt-len")) {
            if (apr_parse_dist(v, 1, 262144, &L->prompt_len)) {
                fprintf(stderr, "apr load: --prompt-len: expected N or LO-HI within 1..262144, got '%.40s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--max-tokens")) {
            if (apr_parse_dist(v, 1, 131072, &L->max_tokens)) {
                fprintf(stderr, "apr load: --max-tokens: expected N or LO-HI within 1..131072, got '%.40s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--seed")) {
            if (apr_parse_u64(v, &L->seed))
                goto bad_number;
        } else if (!strcmp(a, "--temperature")) {
            if (apr_parse_double(v, &L->temperature) || L->temperature < 0 || L->temperature > 100)
                goto bad_number;
        } else if (!strcmp(a, "--timeout")) {
            if (apr_cli_timeout(v, &L->timeout_ms))
                goto bad_number;
        } else if (!strcmp(a, "--chaos")) {
            if (parse_chaos(v, L, err)) {
                fprintf(stderr, "apr load: %s\n", err);
                return 2;
            }
        } else {
            fprintf(stderr, "apr load: unknown option: '%.100s' (see --help)\n", a);
            return 2;
        }
        continue;
    bad_number:
        fprintf(stderr, "apr load: %s: '%.40s' is not a valid value (see --help)\n", a, v);
        return 2;
    }
    if (!have_requests && L->duration == 0) {
        fprintf(stderr, "apr load: give --requests N or --duration T (or both)\n");
        return 2;
    }
    if (!have_requests)
        L->requests = 0; /* no limit */
    if (!L->n_prompts)
        L->n_prompts = have_requests && L->requests < 256 ? L->requests : 256;
    L->endpoint = apr_cli_endpoint(endpoint_flag, err);
    if (!L->endpoint) {
        fprintf(stderr, "apr load: %s\n", err);
        return 2;
    }
    return 0;
}

/* ------------------------------------------------------------ requests */

static void build_request(const load *L, const job *j, apr_request *r)
{
    apr_request_init(r, APR_OP_GENERATE);
    r->prompt_tokens = j->prompt;
    r->n_prompt_tokens = j->n_prompt;
    r->max_tokens = j->max_tokens;
    r->sampling.temperature = (float)L->temperature;
    if (L->temperature > 0) {
        r->sampling.has_seed = true;
        r->sampling.seed = j->seed;
    }
}

static int make_jobs(load *L, apr_progress *prog, char err[APR_ERRLEN])
{
    L->n_jobs = (size_t)L->n_prompts;
    L->jobs = calloc(L->n_jobs, sizeof *L->jobs);
    if (!L->jobs) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return -1;
    }
    apr_rand rng;
    apr_rand_seed(&rng, L->seed);
    for (size_t i = 0; i < L->n_jobs; i++) {
        job *j = &L->jobs[i];
        j->n_prompt = apr_dist_draw(&L->prompt_len, &rng);
        j->max_tokens = apr_dist_draw(&L->max_tokens, &rng);
        j->seed = apr_rand_next(&rng);
        if (apr_prompt_tokens(L->ctrl, &rng, j->n_prompt, L->timeout_ms, &j->prompt, err))
            return -1;
        apr_progress_show(prog, i + 1, L->n_jobs, "prompts tokenized", false);
    }
    apr_progress_end(prog);
    return 0;
}

/* The reference a stream is checked against: this job alone on the server. */
typedef struct {
    job *j;
    size_t cap;
    uint32_t next_index;
    char failed[APR_ERRLEN];
} ref_state;

static int push_token(int32_t **v, size_t *n_cap, uint32_t n, int32_t t)
{
    if (n == *n_cap) {
        size_t cap = *n_cap ? *n_cap * 2 : 64;
        int32_t *grown = realloc(*v, cap * sizeof *grown);
        if (!grown)
            return -1;
        *v = grown;
        *n_cap = cap;
    }
    (*v)[n] = t;
    return 0;
}

static int on_ref_reply(const apr_reply *r, void *arg, char err[APR_ERRLEN])
{
    ref_state *s = arg;
    if (r->event == APR_EV_TOKEN) {
        if (r->index != s->next_index) {
            snprintf(err, APR_ERRLEN, "token index %u where %u was due", r->index, s->next_index);
            return -1;
        }
        s->next_index++;
        if (push_token(&s->j->ref, &s->cap, s->j->n_ref, r->token)) {
            snprintf(err, APR_ERRLEN, "out of memory");
            return -1;
        }
        s->j->n_ref++;
    } else if (r->event == APR_EV_ERROR) {
        snprintf(s->failed, APR_ERRLEN, "%s: %.160s", r->code_str, r->message ? r->message : "");
    } else if (r->event == APR_EV_DONE && r->finish == APR_FINISH_ERROR) {
        snprintf(s->failed, APR_ERRLEN, "finish_reason error");
    }
    return 0;
}

static int run_reference(load *L, int sig_fd, apr_progress *prog, int *signo, char err[APR_ERRLEN])
{
    for (size_t i = 0; i < L->n_jobs; i++) {
        ref_state s = {.j = &L->jobs[i]};
        apr_request req;
        build_request(L, s.j, &req);
        apr_id_set_int(&req.id, apr_conn_next_id(L->ctrl));
        if (apr_conn_send(L->ctrl, &req, err))
            return -1;
        int rc = apr_stream(L->ctrl, &req.id, L->timeout_ms, sig_fd, on_ref_reply, &s, signo, err);
        if (rc == 0)
            return -1;
        if (rc < 0 || s.failed[0]) {
            char why[APR_ERRLEN];
            snprintf(why, sizeof why, "%s", s.failed[0] ? s.failed : err);
            snprintf(err, APR_ERRLEN, "reference run of prompt %zu: %.200s", i, why);
            return -1;
        }
        apr_progress_show(prog, i + 1, L->n_jobs, "reference streams, one at a time", false);
    }
    apr_progress_end(prog);
    return 0;
}

static bool may_launch(const load *L, double now)
{
    if (L->requests && L->n_rqs >= (size_t)L->requests)
        return false;
    return L->duration == 0 || now - L->t0 < L->duration;
}

static int launch(load *L, size_t sock, double now, char err[APR_ERRLEN])
{
    if (L->n_rqs == L->cap_rqs) {
        /* inflight never holds more than all requests, so it grows with them */
        size_t cap = L->cap_rqs ? L->cap_rqs * 2 : 256;
        rq *grown = realloc(L->rqs, cap * sizeof *grown);
        if (grown)
            L->rqs = grown;
        size_t *grown_inflight = realloc(L->inflight, cap * sizeof *grown_inflight);
        if (grown_inflight)
            L->inflight = grown_inflight;
        if (!grown || !grown_inflight) {
            snprintf(err, APR_ERRLEN, "out of memory");
            return -1;
        }
        L->cap_rqs = cap;
    }
    size_t k = L->n_rqs;
    rq *q = &L->rqs[k];
    memset(q, 0, sizeof *q);
    q->job = k % L->n_jobs;
    q->sock = sock;
    apr_request req;
    build_request(L, &L->jobs[q->job], &req);
    /* The id is the request's index, so a reply finds its request at once. */
    apr_id_set_int(&req.id, (int64_t)k);
    q->t_send = now;
    if (apr_conn_send(L->socks[sock], &req, err))
        return -1;
    q->state = RQ_INFLIGHT;
    L->n_rqs++;
    L->sock_load[sock]++;
    L->inflight[L->n_inflight++] = k;
    return 0;
}

static void finish(load *L, rq *q, rq_state st, double now)
{
    q->state = st;
    q->t_end = now;
    L->sock_load[q->sock]--;
    size_t k = (size_t)(q - L->rqs);
    for (size_t i = 0; i < L->n_inflight; i++)
        if (L->inflight[i] == k) {
            L->inflight[i] = L->inflight[--L->n_inflight];
            break;
        }
    if (now > L->t_last_end)
        L->t_last_end = now;
    if (st == RQ_DONE)
        L->n_done++;
    else if (st == RQ_BUSY)
        L->n_busy++;
    else if (st == RQ_CANCELLED)
        L->n_cancelled++;
    else
        L->n_failed++;
}

static void fail_rq(load *L, rq *q, const char *code, const char *why, double now)
{
    if (why != q->why) /* a stream error is already written there */
        snprintf(q->why, sizeof q->why, "%s", why);
    count_code(L, code);
    finish(L, q, RQ_FAILED, now);
}

static int on_reply(load *L, const apr_reply *r, double now, char err[APR_ERRLEN])
{
    if (r->id.kind != APR_ID_INT || r->id.num < 0 || (size_t)r->id.num >= L->n_rqs) {
        /* An error the server could not tie to a request means it could not
         * read ours: the client is broken, not the server busy. */
        if (r->event == APR_EV_ERROR) {
            snprintf(err, APR_ERRLEN, "an error reply without our id: %s: %.150s", r->code_str,
                     r->message ? r->message : "");
            return -1;
        }
        return 0;
    }
    rq *q = &L->rqs[r->id.num];
    if (q->state != RQ_INFLIGHT)
        return 0; /* the tail of a request already given up on */
    char why[160];
    switch (r->event) {
    case APR_EV_TOKEN:
        if (r->index != q->next_index && !q->index_error) {
            q->index_error = true;
            snprintf(q->why, sizeof q->why, "token index %u where %u was due (%s)", r->index,
                     q->next_index, r->index < q->next_index ? "repeated" : "lost");
        }
        q->next_index = r->index + 1;
        if (q->n_tokens == 0) {
            q->t_first = now;
        } else {
            double gap = now - q->t_last;
            if (gap > q->max_gap)
                q->max_gap = gap;
            if (apr_samples_add(&L->gaps_ms, gap * 1e3)) {
                snprintf(err, APR_ERRLEN, "out of memory");
                return -1;
            }
        }
        q->t_last = now;
        if (L->verify && push_token(&q->tokens, &q->cap, q->n_tokens, r->token)) {
            snprintf(err, APR_ERRLEN, "out of memory");
            return -1;
        }
        q->n_tokens++;
        L->gen_tokens++;
        break;
    case APR_EV_DONE:
        q->finish = r->finish;
        q->prompt_tokens = r->usage.prompt_tokens;
        L->prompt_tokens += r->usage.prompt_tokens;
        if (r->finish == APR_FINISH_ERROR) {
            fail_rq(L, q, "finish_error", "finish_reason error", now);
        } else if (q->index_error) {
            fail_rq(L, q, "lost_or_repeated", q->why, now);
        } else if (r->usage.completion_tokens != q->n_tokens) {
            snprintf(why, sizeof why, "%u token events but usage says %u", q->n_tokens,
                     r->usage.completion_tokens);
            fail_rq(L, q, "lost_or_repeated", why, now);
        } else {
            finish(L, q, r->finish == APR_FINISH_CANCELLED ? RQ_CANCELLED : RQ_DONE, now);
        }
        break;
    case APR_EV_ERROR:
        if (r->code == APR_PERR_BUSY) {
            count_code(L, "busy");
            finish(L, q, RQ_BUSY, now);
        } else {
            snprintf(why, sizeof why, "%s: %.120s", r->code_str, r->message ? r->message : "");
            fail_rq(L, q, r->code_str, why, now);
        }
        break;
    default:
        break; /* a cancel acknowledgement; the done event follows */
    }
    return 0;
}

/* ------------------------------------------------------------ chaos */

/* The worker pid must really be an apr-worker here: a remote server's pid
 * means nothing on this host, and killing a stranger is not a test. */
static int is_apr_worker(int64_t pid)
{
    char path[64], comm[64] = "";
    snprintf(path, sizeof path, "/proc/%lld/comm", (long long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    if (!fgets(comm, sizeof comm, f))
        comm[0] = '\0';
    fclose(f);
    return !strncmp(comm, "apr-worker", 10);
}

static int send_status(load *L, double now, char err[APR_ERRLEN])
{
    apr_request req;
    apr_request_init(&req, APR_OP_STATUS);
    apr_id_set_int(&req.id, ++L->status_seq);
    L->status_id = req.id;
    if (apr_conn_send(L->ctrl, &req, err))
        return -1;
    L->status_pending = true;
    L->status_at = now;
    return 0;
}

static void chaos_fail(load *L, chaos_ev *ev, const char *why)
{
    snprintf(ev->why, sizeof ev->why, "%s", why);
    ev->failed = true;
    L->phase = CH_IDLE;
    L->chaos_next++;
}

static void on_status(load *L, const apr_status *st, double now)
{
    chaos_ev *ev = &L->chaos[L->chaos_next];
    if (L->phase == CH_KILL) {
        const apr_worker_status *w = NULL;
        for (size_t i = 0; i < st->n_workers && !w; i++)
            if (!strcmp(st->workers[i].state, "ready"))
                w = &st->workers[i];
        if (!w)
            return; /* none ready yet (a restart still going on): ask again */
        char why[160];
        if (!is_apr_worker(w->pid)) {
            snprintf(why, sizeof why, "pid %lld of %s is not an apr-worker process on this host",
                     (long long)w->pid, w->name);
            chaos_fail(L, ev, why);
            return;
        }
        if (kill((pid_t)w->pid, SIGKILL)) {
            snprintf(why, sizeof why, "kill -9 %lld: %s", (long long)w->pid, strerror(errno));
            chaos_fail(L, ev, why);
            return;
        }
        ev->fired = true;
        ev->t_kill = now;
        ev->pid = w->pid;
        snprintf(ev->worker, sizeof ev->worker, "%s", w->name);
        L->phase = CH_WATCH;
        return;
    }
    for (size_t i = 0; i < st->n_workers; i++) {
        const apr_worker_status *w = &st->workers[i];
        if (!strcmp(w->name, ev->worker) && !strcmp(w->state, "ready") && w->pid != ev->pid) {
            ev->restarted = true;
            ev->restart_s = now - ev->t_kill;
            ev->new_pid = w->pid;
            L->phase = CH_IDLE;
            L->chaos_next++;
            return;
        }
    }
    if (now - ev->t_kill > RESTART_WAIT_S)
        chaos_fail(L, ev, "the worker was not ready again within 60 s");
}

static int chaos_step(load *L, double now, char err[APR_ERRLEN])
{
    if (L->chaos_next == L->n_chaos || L->status_pending)
        return 0;
    chaos_ev *ev = &L->chaos[L->chaos_next];
    if (L->phase == CH_IDLE) {
        if (now - L->t0 < ev->at)
            return 0;
        L->phase = CH_KILL;
        return send_status(L, now, err);
    }
    if (L->phase == CH_KILL && now - L->t0 - ev->at > RESTART_WAIT_S) {
        chaos_fail(L, ev, "no worker was ready to kill for 60 s");
        return 0;
    }
    if (now - L->status_at < STATUS_POLL_S)
        return 0;
    return send_status(L, now, err);
}

static int read_ctrl(load *L, double now, char err[APR_ERRLEN])
{
    for (;;) {
        apr_reply r;
        int rc = apr_conn_recv(L->ctrl, 0, &r, err);
        if (rc <= 0)
            return rc;
        if (L->status_pending && apr_id_equal(&r.id, &L->status_id)) {
            L->status_pending = false;
            if (r.event == APR_EV_STATUS && L->chaos_next < L->n_chaos)
                on_status(L, &r.status, now);
        }
        apr_reply_free(&r);
    }
}

/* ------------------------------------------------------------ the loop */

/* Seconds until the next thing the loop must do on its own. */
static double next_wakeup(const load *L, double now)
{
    double t = now + 0.1; /* progress bar and timeouts */
    if (L->rate > 0 && may_launch(L, now) && L->next_arrival < t)
        t = L->next_arrival;
    if (L->chaos_next < L->n_chaos) {
        double c = L->phase == CH_IDLE ? L->t0 + L->chaos[L->chaos_next].at
                                       : L->status_at + STATUS_POLL_S;
        if (c < t)
            t = c;
    }
    return t > now ? t - now : 0;
}

static void check_timeouts(load *L, double now)
{
    if (L->timeout_ms < 0)
        return;
    for (size_t i = 0; i < L->n_inflight;) {
        rq *q = &L->rqs[L->inflight[i]];
        double last = q->n_tokens ? q->t_last : q->t_send;
        if (now - last > L->timeout_ms / 1000.0) {
            char ignored[APR_ERRLEN], why[96];
            apr_id id;
            apr_id_set_int(&id, (int64_t)(q - L->rqs));
            apr_conn_cancel(L->socks[q->sock], &id, ignored);
            snprintf(why, sizeof why, "no reply for %g s", L->timeout_ms / 1000.0);
            fail_rq(L, q, "timeout", why, now); /* removes it from inflight */
        } else {
            i++;
        }
    }
}

static void cancel_all(load *L)
{
    char ignored[APR_ERRLEN];
    for (size_t i = 0; i < L->n_inflight; i++) {
        apr_id id;
        apr_id_set_int(&id, (int64_t)L->inflight[i]);
        apr_conn_cancel(L->socks[L->rqs[L->inflight[i]].sock], &id, ignored);
    }
}

/* 0 when the load ran to its end, 1 when a signal stopped it, -1 and a
 * message when the client itself failed. */
static int run_load(load *L, int sig_fd, apr_progress *prog, int *signo, char err[APR_ERRLEN])
{
    size_t n_items = (size_t)L->concurrency + 2;
    zmq_pollitem_t *items = calloc(n_items, sizeof *items);
    if (!items) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return -1;
    }
    int rc = 0;
    double cancel_deadline = 0;
    L->t0 = L->next_arrival = apr_now_s();
    for (;;) {
        double now = apr_now_s();
        bool launching = !*signo && may_launch(L, now);
        if (launching && L->rate > 0) {
            while (launching && now >= L->next_arrival) {
                size_t sock = L->n_rqs % (size_t)L->concurrency;
                if ((rc = launch(L, sock, now, err)))
                    goto out;
                L->next_arrival += -log(1.0 - apr_rand_unit(&L->arrivals)) / L->rate;
                launching = may_launch(L, now);
            }
        } else if (launching) {
            for (size_t s = 0; s < (size_t)L->concurrency && may_launch(L, now); s++)
                if (!L->sock_load[s] && (rc = launch(L, s, now, err)))
                    goto out;
        }
        if ((rc = chaos_step(L, now, err)))
            goto out;
        bool chaos_left = L->chaos_next < L->n_chaos && L->phase != CH_IDLE;
        if (!may_launch(L, now) && !L->n_inflight && !chaos_left)
            break;
        if (*signo && (!L->n_inflight || now > cancel_deadline))
            break;

        for (size_t s = 0; s < (size_t)L->concurrency; s++)
            items[s] = (zmq_pollitem_t){.socket = apr_conn_socket(L->socks[s]), .events = ZMQ_POLLIN};
        items[n_items - 2] = (zmq_pollitem_t){.socket = apr_conn_socket(L->ctrl), .events = ZMQ_POLLIN};
        items[n_items - 1] = (zmq_pollitem_t){.fd = sig_fd, .events = ZMQ_POLLIN};
        long wait_ms = (long)ceil(next_wakeup(L, now) * 1e3);
        if (zmq_poll(items, (int)n_items, wait_ms) < 0 && errno != EINTR) {
            snprintf(err, APR_ERRLEN, "zmq_poll: %s", zmq_strerror(errno));
            rc = -1;
            goto out;
        }
        if (items[n_items - 1].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            /* a second signal ends the wait for the cancelled streams */
            if (read(sig_fd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (*signo)
                    break;
                *signo = (int)si.ssi_signo;
                cancel_all(L);
                cancel_deadline = apr_now_s() + CANCEL_WAIT_S;
            }
        }
        for (size_t s = 0; s < (size_t)L->concurrency; s++) {
            if (!(items[s].revents & ZMQ_POLLIN))
                continue;
            for (;;) {
                apr_reply r;
                int got = apr_conn_recv(L->socks[s], 0, &r, err);
                if (got < 0) {
                    rc = -1;
                    goto out;
                }
                if (got == 0)
                    break;
                rc = on_reply(L, &r, apr_now_s(), err);
                apr_reply_free(&r);
                if (rc)
                    goto out;
            }
        }
        if ((items[n_items - 2].revents & ZMQ_POLLIN) && (rc = read_ctrl(L, apr_now_s(), err)) < 0)
            goto out;
        rc = 0;
        now = apr_now_s();
        check_timeouts(L, now);
        char note[128];
        snprintf(note, sizeof note, "requests, %zu in flight, %.0f tok/s", L->n_inflight,
                 L->gen_tokens / (now - L->t0 > 0 ? now - L->t0 : 1));
        apr_progress_show(prog, L->n_rqs - L->n_inflight, (size_t)L->requests, note, false);
    }
out:
    apr_progress_end(prog);
    free(items);
    if (rc < 0)
        return -1;
    return *signo ? 1 : 0;
}

/* ------------------------------------------------------------ report */

typedef struct {
    size_t compared, mismatched, not_compared;
} verify_result;

static verify_result verify_streams(load *L, FILE *out)
{
    verify_result v = {0};
    for (size_t k = 0; k < L->n_rqs; k++) {
        rq *q = &L->rqs[k];
        if (q->state != RQ_DONE) {
            v.not_compared++;
            continue;
        }
        const job *j = &L->jobs[q->job];
        v.compared++;
        uint32_t n = q->n_tokens < j->n_ref ? q->n_tokens : j->n_ref;
        uint32_t at = 0;
        while (at < n && q->tokens[at] == j->ref[at])
            at++;
        if (at == n && q->n_tokens == j->n_ref)
            continue;
        if (v.mismatched++ < 10) {
            if (at < n)
                fprintf(out, "  MISMATCH request %zu (prompt %zu): token %u is %d, the reference has %d\n",
                        k, q->job, at, q->tokens[at], j->ref[at]);
            else
                fprintf(out, "  MISMATCH request %zu (prompt %zu): %u tokens, the reference has %u\n", k,
                        q->job, q->n_tokens, j->n_ref);
        }
        snprintf(q->why, sizeof q->why, "differs from the reference from token %u", at);
    }
    return v;
}

/* Requests in flight at time t, and the longest silence among them: time
 * without a token, counted from the send for one that had none yet. */
static void around(const load *L, double t, size_t *n, double *silence)
{
    *n = 0;
    *silence = 0;
    for (size_t k = 0; k < L->n_rqs; k++) {
        const rq *q = &L->rqs[k];
        if (q->t_send > t || (q->t_end && q->t_end < t))
            continue;
        (*n)++;
        double s = q->max_gap;
        double ttft = q->n_tokens ? q->t_first - q->t_send : q->t_end - q->t_send;
        if (ttft > s)
            s = ttft;
        if (s > *silence)
            *silence = s;
    }
}

static void print_report(load *L, FILE *out, double wall, bool interrupted)
{
    apr_samples ttft = {0};
    double max_gap = 0;
    size_t max_gap_rq = 0;
    for (size_t k = 0; k < L->n_rqs; k++) {
        const rq *q = &L->rqs[k];
        if (q->n_tokens)
            apr_samples_add(&ttft, (q->t_first - q->t_send) * 1e3);
        if (q->max_gap > max_gap) {
            max_gap = q->max_gap;
            max_gap_rq = k;
        }
    }
    char mode[96];
    if (L->rate > 0)
        snprintf(mode, sizeof mode, "open loop, %g requests/s over %lld sockets", L->rate,
                 (long long)L->concurrency);
    else
        snprintf(mode, sizeof mode, "closed loop, concurrency %lld", (long long)L->concurrency);
    fprintf(out, "apr load: %s; %s; prompts %u-%u tokens (%zu distinct), max_tokens %u-%u, %s, seed %llu%s\n",
            L->endpoint, mode, L->prompt_len.lo, L->prompt_len.hi, L->n_jobs, L->max_tokens.lo,
            L->max_tokens.hi, L->temperature > 0 ? "sampled" : "greedy", (unsigned long long)L->seed,
            interrupted ? " (interrupted)" : "");
    fprintf(out, "  time         %.2f s\n", wall);
    fprintf(out, "  requests     %zu sent: %zu done, %zu failed, %zu busy", L->n_rqs, L->n_done, L->n_failed,
            L->n_busy);
    if (L->n_cancelled)
        fprintf(out, ", %zu cancelled", L->n_cancelled);
    fputc('\n', out);
    fprintf(out, "  throughput   %.2f requests/s, %.1f generated tok/s (%llu tokens; prompts %llu tokens)\n",
            L->n_done / wall, L->gen_tokens / wall, (unsigned long long)L->gen_tokens,
            (unsigned long long)L->prompt_tokens);
    fprintf(out, "  TTFT         p50 %.1f ms, p90 %.1f ms, p99 %.1f ms\n", apr_samples_pct(&ttft, 50),
            apr_samples_pct(&ttft, 90), apr_samples_pct(&ttft, 99));
    fprintf(out, "  inter-token  p50 %.2f ms, p90 %.2f ms, p99 %.2f ms; longest gap %.1f ms (request %zu)\n",
            apr_samples_pct(&L->gaps_ms, 50), apr_samples_pct(&L->gaps_ms, 90),
            apr_samples_pct(&L->gaps_ms, 99), max_gap * 1e3, max_gap_rq);
    fprintf(out, "  errors      ");
    if (!L->n_codes)
        fprintf(out, " none");
    for (size_t i = 0; i < L->n_codes; i++)
        fprintf(out, "%s %s %zu", i ? "," : "", L->codes[i].code, L->codes[i].n);
    fputc('\n', out);
    size_t shown = 0;
    for (size_t k = 0; k < L->n_rqs && shown < 10; k++)
        if (L->rqs[k].state == RQ_FAILED) {
            fprintf(out, "  FAILED request %zu: %s\n", k, L->rqs[k].why);
            shown++;
        }
    apr_samples_free(&ttft);
}

static void print_chaos(const load *L, FILE *out, double t_end)
{
    for (size_t i = 0; i < L->n_chaos; i++) {
        const chaos_ev *ev = &L->chaos[i];
        fprintf(out, "  chaos %zu      kill-worker@%g s: ", i + 1, ev->at);
        if (ev->failed && !ev->fired) {
            fprintf(out, "FAILED: %s\n", ev->why);
            continue;
        }
        if (!ev->fired) {
            fprintf(out, "FAILED: not done, the load ended at %.2f s (use --duration or more requests)\n",
                    t_end - L->t0);
            continue;
        }
        size_t n;
        double silence;
        around(L, ev->t_kill, &n, &silence);
        fprintf(out, "%s pid %lld killed at %.2f s; ", ev->worker, (long long)ev->pid, ev->t_kill - L->t0);
        if (ev->restarted)
            fprintf(out, "ready again after %.0f ms (pid %lld)", ev->restart_s * 1e3, (long long)ev->new_pid);
        else
            fprintf(out, "FAILED: %s", ev->why[0] ? ev->why : "not ready again when the load ended");
        fprintf(out, "; %zu requests in flight, longest silence %.0f ms\n", n, silence * 1e3);
    }
}

static bool chaos_ok(const load *L)
{
    for (size_t i = 0; i < L->n_chaos; i++)
        if (!L->chaos[i].restarted)
            return false;
    return true;
}

static const char *state_str(rq_state s)
{
    switch (s) {
    case RQ_DONE:
        return "done";
    case RQ_BUSY:
        return "busy";
    case RQ_FAILED:
        return "failed";
    case RQ_CANCELLED:
        return "cancelled";
    default:
        return "in_flight";
    }
}

static int write_json(const load *L, double wall, const verify_result *v, char err[APR_ERRLEN])
{
    FILE *f = fopen(L->json_path, "w");
    if (!f) {
        snprintf(err, APR_ERRLEN, "cannot write %.200s: %s", L->json_path, strerror(errno));
        return -1;
    }
    fputs("{\"endpoint\":", f);
    apr_json_str(f, L->endpoint, strlen(L->endpoint));
    fprintf(f, ",\"concurrency\":%lld,\"rate\":", (long long)L->concurrency);
    apr_json_num(f, L->rate);
    fprintf(f, ",\"seed\":%llu,\"temperature\":", (unsigned long long)L->seed);
    apr_json_num(f, L->temperature);
    fprintf(f, ",\"wall_s\":");
    apr_json_num(f, wall);
    fprintf(f, ",\"sent\":%zu,\"done\":%zu,\"failed\":%zu,\"busy\":%zu,\"generated_tokens\":%llu",
            L->n_rqs, L->n_done, L->n_failed, L->n_busy, (unsigned long long)L->gen_tokens);
    fputs(",\"errors\":{", f);
    for (size_t i = 0; i < L->n_codes; i++)
        fprintf(f, "%s\"%s\":%zu", i ? "," : "", L->codes[i].code, L->codes[i].n);
    fputc('}', f);
    if (v)
        fprintf(f, ",\"verify\":{\"compared\":%zu,\"mismatched\":%zu,\"not_compared\":%zu}",
                v->compared, v->mismatched, v->not_compared);
    fputs(",\"chaos\":[", f);
    for (size_t i = 0; i < L->n_chaos; i++) {
        const chaos_ev *ev = &L->chaos[i];
        fprintf(f, "%s{\"at_s\":", i ? "," : "");
        apr_json_num(f, ev->at);
        fprintf(f, ",\"killed\":%s,\"worker\":", ev->fired ? "true" : "false");
        apr_json_str(f, ev->worker, strlen(ev->worker));
        fprintf(f, ",\"pid\":%lld,\"kill_s\":", (long long)ev->pid);
        apr_json_num(f, ev->fired ? ev->t_kill - L->t0 : NAN);
        fputs(",\"restart_ms\":", f);
        apr_json_num(f, ev->restarted ? ev->restart_s * 1e3 : NAN);
        fputs(",\"error\":", f);
        apr_json_str(f, ev->why, strlen(ev->why));
        fputc('}', f);
    }
    fputs("],\"requests\":[", f);
    for (size_t k = 0; k < L->n_rqs; k++) {
        const rq *q = &L->rqs[k];
        const job *j = &L->jobs[q->job];
        fprintf(f, "%s{\"i\":%zu,\"prompt\":%zu,\"socket\":%zu,\"state\":\"%s\",\"prompt_tokens\":%u",
                k ? "," : "", k, q->job, q->sock, state_str(q->state), j->n_prompt);
        fprintf(f, ",\"max_tokens\":%u,\"tokens\":%u,\"finish_reason\":\"%s\",\"sent_s\":", j->max_tokens,
                q->n_tokens, apr_finish_str(q->finish));
        apr_json_num(f, q->t_send - L->t0);
        fputs(",\"ttft_ms\":", f);
        apr_json_num(f, q->n_tokens ? (q->t_first - q->t_send) * 1e3 : NAN);
        fputs(",\"e2e_ms\":", f);
        apr_json_num(f, q->t_end ? (q->t_end - q->t_send) * 1e3 : NAN);
        fputs(",\"max_gap_ms\":", f);
        apr_json_num(f, q->max_gap * 1e3);
        fputs(",\"error\":", f);
        apr_json_str(f, q->why, strlen(q->why));
        fputc('}', f);
    }
    fputs("]}\n", f);
    if (fclose(f)) {
        snprintf(err, APR_ERRLEN, "cannot write %.200s: %s", L->json_path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ main */

static void load_free(load *L)
{
    for (size_t s = 0; L->socks && s < (size_t)L->concurrency; s++)
        apr_conn_close(L->socks[s]);
    apr_conn_close(L->ctrl);
    if (L->zctx)
        zmq_ctx_term(L->zctx);
    for (size_t i = 0; L->jobs && i < L->n_jobs; i++) {
        free(L->jobs[i].prompt);
        free(L->jobs[i].ref);
    }
    for (size_t k = 0; k < L->n_rqs; k++)
        free(L->rqs[k].tokens);
    free(L->jobs);
    free(L->rqs);
    free(L->socks);
    free(L->sock_load);
    free(L->inflight);
    apr_samples_free(&L->gaps_ms);
}

static int open_sockets(load *L, char err[APR_ERRLEN])
{
    L->zctx = zmq_ctx_new();
    size_t n = (size_t)L->concurrency;
    L->socks = calloc(n, sizeof *L->socks);
    L->sock_load = calloc(n, sizeof *L->sock_load);
    if (!L->zctx || !L->socks || !L->sock_load) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return -1;
    }
    L->ctrl = apr_conn_open_in(L->zctx, L->endpoint, err);
    if (!L->ctrl)
        return -1;
    for (size_t s = 0; s < n; s++)
        if (!(L->socks[s] = apr_conn_open_in(L->zctx, L->endpoint, err)))
            return -1;
    return 0;
}

int apr_cmd_load(int argc, char **argv)
{
    load L = {
        .concurrency = 1,
        .prompt_len = {16, 64},
        .max_tokens = {32, 32},
        .seed = 1,
        .timeout_ms = 60000,
    };
    int rc = parse_flags(argc, argv, &L);
    if (rc)
        return rc == 1 ? 0 : 2;

    char err[APR_ERRLEN] = "";
    int status = 1, signo = 0;
    sigset_t sigs, old;
    apr_progress prog;
    apr_progress_init(&prog);
    int sig_fd = apr_cli_sigfd(&sigs, err);
    if (sig_fd < 0)
        goto out;
    pthread_sigmask(SIG_BLOCK, &sigs, &old);
    apr_rand_seed(&L.arrivals, L.seed ^ 0x5bd1e995u);
    if (open_sockets(&L, err) || make_jobs(&L, &prog, err))
        goto out;
    if (L.verify && run_reference(&L, sig_fd, &prog, &signo, err)) {
        if (signo)
            status = 128 + signo;
        goto out;
    }
    rc = run_load(&L, sig_fd, &prog, &signo, err);
    if (rc < 0)
        goto out;
    double wall = (L.t_last_end > L.t0 ? L.t_last_end : apr_now_s()) - L.t0;
    print_report(&L, stdout, wall, rc > 0);
    verify_result v = {0};
    bool streams_ok = true;
    for (size_t k = 0; k < L.n_rqs; k++)
        streams_ok &= !L.rqs[k].index_error;
    if (L.verify) {
        v = verify_streams(&L, stdout);
        printf("  verify       %zu of %zu completed streams equal the single-stream reference%s\n",
               v.compared - v.mismatched, v.compared,
               v.not_compared ? " (the others failed, were busy or cancelled)" : "");
    }
    printf("  streams      %s\n", streams_ok ? "no token lost or repeated"
                                             : "LOST OR REPEATED TOKENS (see the failed requests)");
    print_chaos(&L, stdout, L.t_last_end);
    if (fflush(stdout))
        snprintf(err, APR_ERRLEN, "cannot write to stdout");
    if (L.json_path && !err[0])
        write_json(&L, wall, L.verify ? &v : NULL, err);
    if (rc > 0)
        status = 128 + signo;
    else if (!err[0] && !L.n_failed && !v.mismatched && streams_ok && chaos_ok(&L))
        status = 0;

out:
    if (err[0])
        fprintf(stderr, "apr load: %s\n", err);
    load_free(&L);
    if (sig_fd >= 0) {
        close(sig_fd);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    return status;
}
