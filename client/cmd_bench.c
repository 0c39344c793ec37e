/* apr bench: the report's benchmark, reproducible. Sequential requests
 * through apr-coord, timed at the client: time to first token, prefill and
 * decode speeds kept apart, mean, standard deviation and coefficient of
 * variation over the runs, and the verdict against a baseline's bars. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client.h"

#define MAX_BASELINES 8

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr bench [--endpoint E] [-p PROMPT | --prompt-tokens N] [-n N] [options]\n"
            "  --endpoint E           apr-coord's address: tcp://HOST:PORT or ipc://PATH\n"
            "                         (default $APR_ENDPOINT, else " APR_DEFAULT_ENDPOINT ")\n"
            "  -p PROMPT              the prompt text (default \"Once upon a time\")\n"
            "  --prompt-tokens N      a prompt of exactly N tokens instead: simple English\n"
            "                         words from a fixed seed, tokenized by the server (BOS\n"
            "                         included when the model uses one) and cut to N, sent as\n"
            "                         prompt_tokens; the same prompt for every run\n"
            "  -n N                   new tokens asked per run (default 128); generation may\n"
            "                         still end early at EOS: the tokens really generated are\n"
            "                         reported, and decode tok/s counts only those\n"
            "  --runs N               measured runs, 1..100000 (default 30)\n"
            "  --warmup N             runs before them that are not counted (default 3)\n"
            "  --name NAME            this system's row in the table (default apr)\n"
            "  --baseline NAME=TOK_S  a baseline's decode tok/s to compare with; repeatable,\n"
            "                         up to 8\n"
            "  --bars LIST            the bars, any of cv=PCT,runs=N,min=TOK_S,over=PCT\n"
            "                         (default cv=5,runs=30,min=60,over=25, the report's): CV\n"
            "                         below PCT %%, at least N runs, a mean decode of at least\n"
            "                         TOK_S, and at least PCT %% faster than each baseline\n"
            "  --check                exit with status 3 when a bar fails\n"
            "  --json FILE            write every run's figures (and the summary) to FILE\n"
            "  --timeout SEC          a run fails when no reply comes for SEC seconds\n"
            "                         (default 60; 0 = never)\n"
            "Sampling flags as apr generate's, but greedy unless --temperature is given:\n"
            APR_GEN_FLAGS_HELP
            "Measured at the client, one request at a time: TTFT is from sending the request\n"
            "to the first token event; prefill tok/s is prompt tokens / TTFT; decode tok/s is\n"
            "(tokens - 1) / (time of the last token - time of the first); inter-token latency\n"
            "is the gap between consecutive token events. Prints a table (decode mean +- std,\n"
            "CV, TTFT, prefill, runs), one row per baseline with the speed-up, and PASS or\n"
            "FAIL per bar; a progress bar on stderr when it is a terminal. Exit status 0, 1\n"
            "when a run fails (error reply, lost or repeated tokens, no reply), 2 on bad\n"
            "usage, 3 with --check when a bar fails, 130 on Ctrl-C (which cancels the run\n"
            "in flight and still prints the runs done).\n");
}

typedef struct {
    char name[64];
    double tok_s;
} baseline;

typedef struct {
    double cv_pct;
    int64_t runs;
    double min_tok_s;
    double over_pct;
} bars;

/* One run's figures; itl_ms is owned. */
typedef struct {
    bool warmup;
    uint32_t prompt_tokens, tokens;
    double ttft_ms, prefill_tok_s, decode_tok_s; /* client-measured; NaN when undefined */
    apr_timings server;
    apr_finish finish;
    apr_samples itl_ms;
} run_rec;

/* The run being streamed. */
typedef struct {
    run_rec *rec;
    double t_send, t_first, t_prev;
    uint32_t next_index;
    bool index_error;
    bool oom;
    char failed[APR_ERRLEN];
} run_state;

static int on_reply(const apr_reply *r, void *arg, char err[APR_ERRLEN])
{
    (void)err;
    run_state *s = arg;
    run_rec *rec = s->rec;
    double now = apr_now_s();
    if (r->event == APR_EV_TOKEN) {
        if (r->index != s->next_index && !s->index_error) {
            s->index_error = true;
            snprintf(s->failed, APR_ERRLEN, "token event index %u where %u was due (%s)", r->index,
                     s->next_index, r->index < s->next_index ? "a repeated token" : "a lost token");
        }
        s->next_index = r->index + 1;
        if (rec->tokens == 0)
            s->t_first = now;
        else if (apr_samples_add(&rec->itl_ms, (now - s->t_prev) * 1e3))
            s->oom = true;
        s->t_prev = now;
        rec->tokens++;
    } else if (r->event == APR_EV_DONE) {
        rec->finish = r->finish;
        rec->prompt_tokens = r->usage.prompt_tokens;
        rec->server = r->timings;
        if (r->finish == APR_FINISH_ERROR)
            snprintf(s->failed, APR_ERRLEN, "the generation ended with finish_reason error");
        else if (r->usage.completion_tokens != rec->tokens && !s->failed[0])
            snprintf(s->failed, APR_ERRLEN, "%u token events but usage says %u tokens", rec->tokens,
                     r->usage.completion_tokens);
    } else if (r->event == APR_EV_ERROR) {
        snprintf(s->failed, APR_ERRLEN, "%s: %.160s", r->code_str, r->message ? r->message : "");
    }
    return 0;
}

/* -1 and a message when a run could not be done or went wrong, 0 when it
 * went well, 1 when a signal ended it. */
static int one_run(apr_conn *c, apr_request *req, run_rec *rec, int timeout_ms, int sig_fd,
                   char err[APR_ERRLEN])
{
    run_state s = {.rec = rec};
    apr_id_set_int(&req->id, apr_conn_next_id(c));
    s.t_send = apr_now_s();
    if (apr_conn_send(c, req, err))
        return -1;
    int signo;
    int rc = apr_stream(c, &req->id, timeout_ms, sig_fd, on_reply, &s, &signo, err);
    if (rc == 0)
        return 1;
    if (rc < 0)
        return -1;
    if (s.oom) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return -1;
    }
    if (s.failed[0]) {
        snprintf(err, APR_ERRLEN, "%s", s.failed);
        return -1;
    }
    rec->ttft_ms = rec->tokens ? (s.t_first - s.t_send) * 1e3 : NAN;
    rec->prefill_tok_s = rec->tokens ? rec->prompt_tokens / (s.t_first - s.t_send) : NAN;
    rec->decode_tok_s = rec->tokens >= 2 ? (rec->tokens - 1) / (s.t_prev - s.t_first) : NAN;
    return 0;
}

/* "NAME=TOK_S" with a positive speed. */
static int parse_baseline(const char *s, baseline *b)
{
    const char *eq = strrchr(s, '=');
    if (!eq || eq == s || (size_t)(eq - s) >= sizeof b->name)
        return -1;
    double v;
    if (apr_parse_double(eq + 1, &v) || !(v > 0))
        return -1;
    memcpy(b->name, s, (size_t)(eq - s));
    b->name[eq - s] = '\0';
    b->tok_s = v;
    return 0;
}

/* "cv=5,runs=30,min=60,over=25", any subset in any order. */
static int parse_bars(const char *s, bars *b, char err[APR_ERRLEN])
{
    char buf[256];
    if (strlen(s) >= sizeof buf) {
        snprintf(err, APR_ERRLEN, "--bars: too long");
        return -1;
    }
    strcpy(buf, s);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(item, '=');
        double v;
        int64_t n;
        if (!eq) {
            snprintf(err, APR_ERRLEN, "--bars: expected KEY=VALUE, got '%.40s'", item);
            return -1;
        }
        *eq = '\0';
        const char *val = eq + 1;
        if (!strcmp(item, "runs")) {
            if (apr_parse_int(val, 1, 100000, &n)) {
                snprintf(err, APR_ERRLEN, "--bars: runs wants a whole number in 1..100000");
                return -1;
            }
            b->runs = n;
            continue;
        }
        bool known = !strcmp(item, "cv") || !strcmp(item, "min") || !strcmp(item, "over");
        if (!known) {
            snprintf(err, APR_ERRLEN, "--bars: unknown bar '%.40s' (cv, runs, min, over)", item);
            return -1;
        }
        /* over may be negative: "no more than 10 %% slower" is a bar too */
        if (apr_parse_double(val, &v) || (strcmp(item, "over") && v < 0)) {
            snprintf(err, APR_ERRLEN, "--bars: %s wants a number, got '%.40s'", item, val);
            return -1;
        }
        if (!strcmp(item, "cv"))
            b->cv_pct = v;
        else if (!strcmp(item, "min"))
            b->min_tok_s = v;
        else
            b->over_pct = v;
    }
    return 0;
}

typedef struct {
    size_t runs;                  /* measured runs with a decode figure */
    double decode_mean, decode_std, cv_pct;
    double ttft_mean, prefill_mean;
    double server_decode_mean, server_ttft_mean;
    double itl_p50, itl_p99, itl_max;
    size_t n_gaps;
    uint32_t tokens_min, tokens_max, prompt_tokens;
    size_t early; /* runs that ended before -n tokens */
} summary;

static int summarize(const run_rec *recs, size_t n, uint32_t max_tokens, summary *sum)
{
    apr_samples dec = {0}, ttft = {0}, pre = {0}, sdec = {0}, sttft = {0}, gaps = {0};
    int rc = 0;
    memset(sum, 0, sizeof *sum);
    sum->tokens_min = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        const run_rec *r = &recs[i];
        if (r->warmup)
            continue;
        sum->prompt_tokens = r->prompt_tokens;
        if (r->tokens < sum->tokens_min)
            sum->tokens_min = r->tokens;
        if (r->tokens > sum->tokens_max)
            sum->tokens_max = r->tokens;
        sum->early += r->tokens < max_tokens;
        if (!isnan(r->decode_tok_s))
            rc |= apr_samples_add(&dec, r->decode_tok_s) | apr_samples_add(&sdec, r->server.decode_tok_s);
        if (!isnan(r->ttft_ms))
            rc |= apr_samples_add(&ttft, r->ttft_ms) | apr_samples_add(&pre, r->prefill_tok_s) |
                  apr_samples_add(&sttft, r->server.ttft_ms);
        for (size_t k = 0; k < r->itl_ms.n; k++)
            rc |= apr_samples_add(&gaps, r->itl_ms.v[k]);
    }
    if (sum->tokens_min == UINT32_MAX)
        sum->tokens_min = 0;
    sum->runs = dec.n;
    sum->decode_mean = apr_samples_mean(&dec);
    sum->decode_std = apr_samples_std(&dec);
    sum->cv_pct = 100.0 * sum->decode_std / sum->decode_mean;
    sum->ttft_mean = apr_samples_mean(&ttft);
    sum->prefill_mean = apr_samples_mean(&pre);
    sum->server_decode_mean = apr_samples_mean(&sdec);
    sum->server_ttft_mean = apr_samples_mean(&sttft);
    sum->n_gaps = gaps.n;
    sum->itl_p50 = apr_samples_pct(&gaps, 50);
    sum->itl_p99 = apr_samples_pct(&gaps, 99);
    sum->itl_max = apr_samples_max(&gaps);
    apr_samples_free(&dec);
    apr_samples_free(&ttft);
    apr_samples_free(&pre);
    apr_samples_free(&sdec);
    apr_samples_free(&sttft);
    apr_samples_free(&gaps);
    return rc ? -1 : 0;
}

/* One bar's verdict, printed and kept for --json. */
typedef struct {
    char what[96];
    char value[32];
    bool pass;
} verdict;

static size_t judge(const summary *s, const bars *b, const baseline *bl, size_t n_bl, verdict *v)
{
    size_t k = 0;
    snprintf(v[k].what, sizeof v[k].what, "CV < %g %%", b->cv_pct);
    snprintf(v[k].value, sizeof v[k].value, "%.2f %%", s->cv_pct);
    v[k++].pass = s->cv_pct < b->cv_pct; /* NaN fails */
    snprintf(v[k].what, sizeof v[k].what, "runs >= %lld", (long long)b->runs);
    snprintf(v[k].value, sizeof v[k].value, "%zu", s->runs);
    v[k++].pass = (int64_t)s->runs >= b->runs;
    snprintf(v[k].what, sizeof v[k].what, "decode >= %g tok/s", b->min_tok_s);
    snprintf(v[k].value, sizeof v[k].value, "%.1f tok/s", s->decode_mean);
    v[k++].pass = s->decode_mean >= b->min_tok_s;
    for (size_t i = 0; i < n_bl; i++) {
        double up = 100.0 * (s->decode_mean / bl[i].tok_s - 1.0);
        snprintf(v[k].what, sizeof v[k].what, "decode >= %+g %% vs %.40s", b->over_pct, bl[i].name);
        snprintf(v[k].value, sizeof v[k].value, "%+.1f %%", up);
        v[k++].pass = up >= b->over_pct;
    }
    return k;
}

static void print_report(FILE *out, const char *name, const summary *s, const baseline *bl,
                         size_t n_bl, const verdict *v, size_t n_v)
{
    fprintf(out, "\n%-16s %20s %8s %10s %14s %6s\n", "system", "decode tok/s", "CV", "TTFT ms",
            "prefill tok/s", "runs");
    char dec[48];
    snprintf(dec, sizeof dec, "%.1f +- %.1f", s->decode_mean, s->decode_std);
    fprintf(out, "%-16.16s %20s %7.2f%% %10.1f %14.1f %6zu\n", name, dec, s->cv_pct, s->ttft_mean,
            s->prefill_mean, s->runs);
    for (size_t i = 0; i < n_bl; i++)
        fprintf(out, "%-16.16s %20.1f %8s %10s %14s %6s   apr %+.1f %%\n", bl[i].name, bl[i].tok_s,
                "-", "-", "-", "-", 100.0 * (s->decode_mean / bl[i].tok_s - 1.0));
    fprintf(out, "\ninter-token latency: p50 %.2f ms, p99 %.2f ms, max %.2f ms (%zu gaps)\n",
            s->itl_p50, s->itl_p99, s->itl_max, s->n_gaps);
    fprintf(out, "server's own timings (mean): decode %.1f tok/s, TTFT %.1f ms\n",
            s->server_decode_mean, s->server_ttft_mean);
    fprintf(out, "\n%-40s %14s  %s\n", "bar", "value", "result");
    for (size_t i = 0; i < n_v; i++)
        fprintf(out, "%-40s %14s  %s\n", v[i].what, v[i].value, v[i].pass ? "PASS" : "FAIL");
}

static void json_samples(FILE *f, const apr_samples *s)
{
    fputc('[', f);
    for (size_t i = 0; i < s->n; i++) {
        if (i)
            fputc(',', f);
        fprintf(f, "%.4f", s->v[i]);
    }
    fputc(']', f);
}

static int write_json(const char *path, const char *endpoint, const char *name,
                      const apr_request *req, const run_rec *recs, size_t n, const summary *s,
                      const baseline *bl, size_t n_bl, const verdict *v, size_t n_v,
                      char err[APR_ERRLEN])
{
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, APR_ERRLEN, "cannot write %.200s: %s", path, strerror(errno));
        return -1;
    }
    fputs("{\"endpoint\":", f);
    apr_json_str(f, endpoint, strlen(endpoint));
    fputs(",\"system\":", f);
    apr_json_str(f, name, strlen(name));
    fprintf(f, ",\"max_tokens\":%u,\"temperature\":", req->max_tokens);
    apr_json_num(f, req->sampling.temperature);
    fputs(",\"runs\":[", f);
    for (size_t i = 0; i < n; i++) {
        const run_rec *r = &recs[i];
        fprintf(f, "%s{\"run\":%zu,\"warmup\":%s,\"prompt_tokens\":%u,\"completion_tokens\":%u",
                i ? "," : "", i, r->warmup ? "true" : "false", r->prompt_tokens, r->tokens);
        fprintf(f, ",\"finish_reason\":\"%s\",\"ttft_ms\":", apr_finish_str(r->finish));
        apr_json_num(f, r->ttft_ms);
        fputs(",\"prefill_tok_s\":", f);
        apr_json_num(f, r->prefill_tok_s);
        fputs(",\"decode_tok_s\":", f);
        apr_json_num(f, r->decode_tok_s);
        fputs(",\"server\":{\"ttft_ms\":", f);
        apr_json_num(f, r->server.ttft_ms);
        fputs(",\"prefill_tok_s\":", f);
        apr_json_num(f, r->server.prefill_tok_s);
        fputs(",\"decode_tok_s\":", f);
        apr_json_num(f, r->server.decode_tok_s);
        fputs("},\"itl_ms\":", f);
        json_samples(f, &r->itl_ms);
        fputc('}', f);
    }
    fprintf(f, "],\"summary\":{\"runs\":%zu,\"prompt_tokens\":%u,\"tokens_min\":%u,\"tokens_max\":%u",
            s->runs, s->prompt_tokens, s->tokens_min, s->tokens_max);
    const struct {
        const char *key;
        double v;
    } nums[] = {
        {"decode_tok_s_mean", s->decode_mean}, {"decode_tok_s_std", s->decode_std},
        {"cv_pct", s->cv_pct},                 {"ttft_ms_mean", s->ttft_mean},
        {"prefill_tok_s_mean", s->prefill_mean}, {"itl_ms_p50", s->itl_p50},
        {"itl_ms_p99", s->itl_p99},            {"itl_ms_max", s->itl_max},
        {"server_decode_tok_s_mean", s->server_decode_mean},
        {"server_ttft_ms_mean", s->server_ttft_mean},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        fprintf(f, ",\"%s\":", nums[i].key);
        apr_json_num(f, nums[i].v);
    }
    fputs("},\"baselines\":[", f);
    for (size_t i = 0; i < n_bl; i++) {
        fputs(i ? ",{\"name\":" : "{\"name\":", f);
        apr_json_str(f, bl[i].name, strlen(bl[i].name));
        fputs(",\"decode_tok_s\":", f);
        apr_json_num(f, bl[i].tok_s);
        fputs(",\"speedup_pct\":", f);
        apr_json_num(f, 100.0 * (s->decode_mean / bl[i].tok_s - 1.0));
        fputc('}', f);
    }
    fputs("],\"bars\":[", f);
    for (size_t i = 0; i < n_v; i++) {
        fputs(i ? ",{\"bar\":" : "{\"bar\":", f);
        apr_json_str(f, v[i].what, strlen(v[i].what));
        fputs(",\"value\":", f);
        apr_json_str(f, v[i].value, strlen(v[i].value));
        fprintf(f, ",\"pass\":%s}", v[i].pass ? "true" : "false");
    }
    fputs("]}\n", f);
    if (fclose(f)) {
        snprintf(err, APR_ERRLEN, "cannot write %.200s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int apr_cmd_bench(int argc, char **argv)
{
    const char *endpoint_flag = NULL, *prompt = NULL, *json_path = NULL, *name = "apr";
    int64_t prompt_tokens = 0, runs = 30, warmup = 3;
    int timeout_ms = 60000;
    bool check = false;
    baseline bl[MAX_BASELINES];
    size_t n_bl = 0;
    bars b = {.cv_pct = 5, .runs = 30, .min_tok_s = 60, .over_pct = 25};
    apr_gen_flags g;
    apr_gen_flags_init(&g);
    /* A benchmark should measure the same work every run. */
    g.sampling.temperature = 0;
    char err[APR_ERRLEN] = "";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int rc = apr_gen_flag(&g, argc, argv, &i, err);
        if (rc < 0) {
            fprintf(stderr, "apr bench: %s\n", err);
            return 2;
        }
        if (rc > 0)
            continue;
        bool has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--check")) {
            check = true;
        } else if (!strcmp(a, "--endpoint") && has_value) {
            endpoint_flag = argv[++i];
        } else if (!strcmp(a, "-p") && has_value) {
            prompt = argv[++i];
        } else if (!strcmp(a, "--name") && has_value) {
            name = argv[++i];
        } else if (!strcmp(a, "--json") && has_value) {
            json_path = argv[++i];
        } else if (!strcmp(a, "--prompt-tokens") && has_value) {
            if (apr_parse_int(argv[++i], 1, 262144, &prompt_tokens)) {
                fprintf(stderr, "apr bench: --prompt-tokens: expected a whole number in 1..262144, got '%.40s'\n",
                        argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--runs") && has_value) {
            if (apr_parse_int(argv[++i], 1, 100000, &runs)) {
                fprintf(stderr, "apr bench: --runs: expected a whole number in 1..100000, got '%.40s'\n",
                        argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--warmup") && has_value) {
            if (apr_parse_int(argv[++i], 0, 100000, &warmup)) {
                fprintf(stderr, "apr bench: --warmup: expected a whole number in 0..100000, got '%.40s'\n",
                        argv[i]);
                return 2;
            }
        } else if (!strcmp(a, "--baseline") && has_value) {
            if (n_bl == MAX_BASELINES) {
                fprintf(stderr, "apr bench: --baseline: at most %d baselines\n", MAX_BASELINES);
                return 2;
            }
            if (parse_baseline(argv[++i], &bl[n_bl])) {
                fprintf(stderr, "apr bench: --baseline: expected NAME=TOK_S with TOK_S > 0, got '%.60s'\n",
                        argv[i]);
                return 2;
            }
            n_bl++;
        } else if (!strcmp(a, "--bars") && has_value) {
            if (parse_bars(argv[++i], &b, err)) {
                fprintf(stderr, "apr bench: %s\n", err);
                return 2;
            }
        } else if (!strcmp(a, "--timeout") && has_value) {
            if (apr_cli_timeout(argv[++i], &timeout_ms)) {
                fprintf(stderr, "apr bench: --timeout: expected seconds in 0..86400, got '%.40s'\n",
                        argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "apr bench: unknown option or missing value: '%.100s' (see --help)\n", a);
            return 2;
        }
    }
    if (prompt && prompt_tokens) {
        fprintf(stderr, "apr bench: give -p PROMPT or --prompt-tokens N, not both\n");
        return 2;
    }
    if (!prompt && !prompt_tokens)
        prompt = "Once upon a time";
    size_t plen = prompt ? strlen(prompt) : 0;
    if (prompt && (plen > (1u << 20) || !apr_utf8_valid(prompt, plen))) {
        fprintf(stderr, "apr bench: -p: the prompt must be valid UTF-8 of at most 1 MiB\n");
        return 2;
    }
    if (!g.max_tokens)
        g.max_tokens = 128;
    const char *endpoint = apr_cli_endpoint(endpoint_flag, err);
    if (!endpoint) {
        fprintf(stderr, "apr bench: %s\n", err);
        return 2;
    }

    /* req points into argv and g; it owns only prompt_tokens */
    apr_request req;
    apr_request_init(&req, APR_OP_GENERATE);
    apr_gen_flags_apply(&g, &req);
    size_t n_runs = (size_t)(warmup + runs), done = 0;
    run_rec *recs = calloc(n_runs, sizeof *recs);
    int status = 1;
    bool interrupted = false;
    sigset_t sigs, old;
    apr_conn *c = NULL;
    apr_progress prog;
    apr_progress_init(&prog);
    err[0] = '\0';
    int sig_fd = apr_cli_sigfd(&sigs, err);
    if (sig_fd < 0 || !recs) {
        if (!recs)
            snprintf(err, APR_ERRLEN, "out of memory");
        goto out;
    }
    pthread_sigmask(SIG_BLOCK, &sigs, &old);
    c = apr_conn_open(endpoint, err);
    if (!c)
        goto out;
    if (prompt) {
        req.prompt = (char *)prompt;
        req.prompt_len = plen;
    } else {
        apr_rand rng;
        apr_rand_seed(&rng, 1);
        if (apr_prompt_tokens(c, &rng, (uint32_t)prompt_tokens, timeout_ms, &req.prompt_tokens, err))
            goto out;
        req.n_prompt_tokens = (size_t)prompt_tokens;
    }

    for (; done < n_runs; done++) {
        run_rec *r = &recs[done];
        r->warmup = done < (size_t)warmup;
        int rc = one_run(c, &req, r, timeout_ms, sig_fd, err);
        if (rc) {
            apr_progress_end(&prog);
            if (rc > 0) {
                interrupted = true;
            } else {
                char what[APR_ERRLEN];
                snprintf(what, sizeof what, "%s", err);
                snprintf(err, APR_ERRLEN, "run %zu%s: %.200s", done + 1, r->warmup ? " (warm-up)" : "",
                         what);
            }
            break;
        }
        char note[96];
        snprintf(note, sizeof note, "%s: %.1f tok/s decode, %u tokens",
                 r->warmup ? "warm-up" : "runs", r->decode_tok_s, r->tokens);
        apr_progress_show(&prog, done + 1, n_runs, note, true);
    }
    apr_progress_end(&prog);

    summary sum;
    if (summarize(recs, done, req.max_tokens, &sum)) {
        snprintf(err, APR_ERRLEN, "out of memory");
        goto out;
    }
    verdict v[3 + MAX_BASELINES];
    size_t n_v = judge(&sum, &b, bl, n_bl, v);
    if (done > (size_t)warmup) {
        printf("apr bench: %s; prompt %u tokens; %u new tokens asked, %u..%u generated%s; %s; "
               "%zu runs after %lld warm-up%s\n",
               endpoint, sum.prompt_tokens, req.max_tokens, sum.tokens_min, sum.tokens_max,
               sum.early ? " (some runs ended early at EOS)" : "",
               req.sampling.temperature == 0 ? "greedy" : "sampled", done - (size_t)warmup,
               (long long)warmup, interrupted ? " (interrupted)" : "");
        if (sum.runs < done - (size_t)warmup)
            printf("note: %zu runs generated fewer than 2 tokens and have no decode figure\n",
                   done - (size_t)warmup - sum.runs);
        print_report(stdout, name, &sum, bl, n_bl, v, n_v);
    }
    if (fflush(stdout) && !err[0])
        snprintf(err, APR_ERRLEN, "cannot write to stdout");
    if (json_path) {
        char jerr[APR_ERRLEN];
        if (write_json(json_path, endpoint, name, &req, recs, done, &sum, bl, n_bl, v, n_v, jerr) &&
            !err[0])
            snprintf(err, APR_ERRLEN, "%s", jerr);
    }
    if (err[0] || done < n_runs) {
        status = interrupted ? 130 : 1;
    } else {
        status = 0;
        for (size_t i = 0; i < n_v; i++)
            if (check && !v[i].pass)
                status = 3;
    }

out:
    if (err[0])
        fprintf(stderr, "apr bench: %s\n", err);
    apr_conn_close(c);
    if (sig_fd >= 0) {
        close(sig_fd);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    for (size_t i = 0; recs && i < n_runs; i++)
        apr_samples_free(&recs[i].itl_ms);
    free(recs);
    free(req.prompt_tokens);
    return status;
}
