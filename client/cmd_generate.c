/* apr generate: one completion from apr-coord, streamed to stdout as the
 * tokens come, with the timings on stderr at the end. Ctrl-C cancels the
 * request on the server before exiting. Exit 0 when done, 1 on an error
 * reply, no reply or a failure, 2 on bad usage, 128+signal when cancelled. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr generate [--endpoint E] (-p PROMPT | -f FILE | --tokens IDS) [options]\n"
            "  --endpoint E           apr-coord's address: tcp://HOST:PORT or ipc://PATH\n"
            "                         (default $APR_ENDPOINT, else " APR_DEFAULT_ENDPOINT ")\n"
            "  -p PROMPT              the prompt text (up to 1 MiB of UTF-8)\n"
            "  -f FILE                read the prompt from FILE (- for standard input)\n"
            "  --tokens IDS           the prompt as token ids: 1,2,3 or [1, 2, 3]\n"
            "  --no-special           special-token text (<|im_start|> ...) stays plain text\n"
            APR_GEN_FLAGS_HELP
            "  --timeout SEC          give up when no reply comes for SEC seconds, for the\n"
            "                         first token and between tokens (default 60; 0 = never)\n"
            "  --json                 one JSON object per reply event on stdout instead of text\n"
            "Prints exactly the generated text, no newline added; then one line on stderr:\n"
            "tokens, time to first token, prefill and decode tok/s, and why it finished.\n"
            "Ctrl-C cancels the generation on the server and exits with status 130.\n");
}

/* Reads a whole file (or stdin for "-") of at most max bytes. */
static char *read_prompt(const char *path, size_t max, size_t *len, char err[APR_ERRLEN])
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        snprintf(err, APR_ERRLEN, "cannot open %.200s: %s", path, strerror(errno));
        return NULL;
    }
    /* One byte more than allowed tells a file at the limit from one past it. */
    char *buf = malloc(max + 1);
    size_t n = 0;
    bool ok = false;
    if (!buf)
        snprintf(err, APR_ERRLEN, "out of memory");
    else if ((n = fread(buf, 1, max + 1, f)), ferror(f))
        snprintf(err, APR_ERRLEN, "cannot read %.200s", path);
    else if (n > max)
        snprintf(err, APR_ERRLEN, "%.200s: a prompt is at most %zu bytes", path, max);
    else
        ok = true;
    if (f != stdin)
        fclose(f);
    if (!ok) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

typedef struct {
    bool json;
    bool same_terminal; /* stdout and stderr both a terminal */
    bool midline;       /* the text so far does not end with a newline */
    int status;         /* exit status the final event asks for */
} output;

/* Puts the stderr line on a line of its own when both go to one terminal. */
static void end_text_line(output *o)
{
    if (o->same_terminal && o->midline)
        fputc('\n', stderr);
    o->midline = false;
}

static int on_reply(const apr_reply *r, void *arg, char err[APR_ERRLEN])
{
    output *o = arg;
    if (o->json) {
        apr_json_reply(stdout, r);
        fputc('\n', stdout);
    } else if (r->event == APR_EV_TOKEN && r->text_len) {
        fwrite(r->text, 1, r->text_len, stdout);
        o->midline = r->text[r->text_len - 1] != '\n';
    }
    /* Each event shows at once, even through a pipe. */
    if (fflush(stdout)) {
        snprintf(err, APR_ERRLEN, "cannot write to stdout: %s", strerror(errno));
        return -1;
    }
    if (r->event == APR_EV_DONE) {
        end_text_line(o);
        fprintf(stderr,
                "%u tokens (prompt %u), ttft %.1f ms, prefill %.1f tok/s, decode %.1f tok/s, "
                "finish: %s\n",
                r->usage.completion_tokens, r->usage.prompt_tokens, r->timings.ttft_ms,
                r->timings.prefill_tok_s, r->timings.decode_tok_s, apr_finish_str(r->finish));
        o->status = r->finish == APR_FINISH_ERROR;
    } else if (r->event == APR_EV_ERROR) {
        end_text_line(o);
        fprintf(stderr, "apr generate: %s: %s\n", r->code_str, r->message ? r->message : "");
        o->status = 1;
    }
    return 0;
}

int apr_cmd_generate(int argc, char **argv)
{
    const char *endpoint_flag = NULL, *file = NULL, *tokens = NULL;
    char *prompt = NULL;
    bool json = false, special = true;
    int timeout_ms = 60000;
    apr_gen_flags g;
    apr_gen_flags_init(&g);
    char err[APR_ERRLEN] = "";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int rc = apr_gen_flag(&g, argc, argv, &i, err);
        if (rc < 0) {
            fprintf(stderr, "apr generate: %s\n", err);
            return 2;
        }
        if (rc > 0)
            continue;
        bool has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--no-special")) {
            special = false;
        } else if (!strcmp(a, "--endpoint") && has_value) {
            endpoint_flag = argv[++i];
        } else if (!strcmp(a, "-p") && has_value) {
            prompt = argv[++i];
        } else if (!strcmp(a, "-f") && has_value) {
            file = argv[++i];
        } else if (!strcmp(a, "--tokens") && has_value) {
            tokens = argv[++i];
        } else if (!strcmp(a, "--timeout") && has_value) {
            if (apr_cli_timeout(argv[++i], &timeout_ms)) {
                fprintf(stderr, "apr generate: --timeout: expected seconds in 0..86400, got '%.40s'\n",
                        argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "apr generate: unknown option or missing value: '%.100s' (see --help)\n",
                    a);
            return 2;
        }
    }
    if ((prompt != NULL) + (file != NULL) + (tokens != NULL) != 1) {
        fprintf(stderr, "apr generate: give exactly one of -p PROMPT, -f FILE, --tokens IDS\n");
        return 2;
    }
    const char *endpoint = apr_cli_endpoint(endpoint_flag, err);
    if (!endpoint) {
        fprintf(stderr, "apr generate: %s\n", err);
        return 2;
    }
    apr_proto_limits lim;
    apr_proto_limits_default(&lim);

    /* req points into argv, file_buf and g; it owns nothing but the ids */
    apr_request req;
    apr_request_init(&req, APR_OP_GENERATE);
    char *file_buf = NULL;
    req.parse_special = special;
    apr_gen_flags_apply(&g, &req);
    if (tokens) {
        if (apr_parse_ids(tokens, lim.max_input_tokens, &req.prompt_tokens, &req.n_prompt_tokens,
                          err)) {
            fprintf(stderr, "apr generate: --tokens: %s\n", err);
            return 2;
        }
    } else if (file) {
        file_buf = read_prompt(file, lim.max_prompt_bytes, &req.prompt_len, err);
        if (!file_buf) {
            fprintf(stderr, "apr generate: %s\n", err);
            return 1;
        }
        req.prompt = file_buf;
    } else {
        req.prompt = prompt;
        req.prompt_len = strlen(prompt);
        if (req.prompt_len > lim.max_prompt_bytes) {
            fprintf(stderr, "apr generate: -p: a prompt is at most %zu bytes\n", lim.max_prompt_bytes);
            return 1;
        }
    }
    if (req.prompt && !apr_utf8_valid(req.prompt, req.prompt_len)) {
        fprintf(stderr, "apr generate: the prompt is not valid UTF-8\n");
        free(file_buf);
        return 1;
    }

    /* From here err holds a message only when something failed. */
    err[0] = '\0';
    int status = 1, signo = 0;
    sigset_t sigs, old;
    apr_conn *c = NULL;
    int sig_fd = apr_cli_sigfd(&sigs, err);
    if (sig_fd < 0)
        goto out;
    /* Ctrl-C becomes a cancel; a closed stdout becomes a write error that
     * also cancels, instead of killing us with the request still running. */
    sigaddset(&sigs, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &sigs, &old);

    c = apr_conn_open(endpoint, err);
    if (!c)
        goto out;
    apr_id_set_int(&req.id, apr_conn_next_id(c));
    if (apr_conn_send(c, &req, err))
        goto out;
    output o = {.json = json, .same_terminal = isatty(1) && isatty(2), .status = 1};
    int rc = apr_stream(c, &req.id, timeout_ms, sig_fd, on_reply, &o, &signo, err);
    if (rc > 0)
        status = o.status;
    else if (rc == 0)
        status = 128 + signo;
    else
        end_text_line(&o);

out:
    if (err[0])
        fprintf(stderr, "apr generate: %s\n", err);
    apr_conn_close(c);
    if (sig_fd >= 0) {
        close(sig_fd);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    free(file_buf);
    free(req.prompt_tokens);
    return status;
}
