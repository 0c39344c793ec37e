/* apr chat: an interactive conversation through apr-coord. Each line read is
 * a user turn; the whole history goes with every request (the server keeps
 * no conversation state), and the streamed answer joins the history. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/client.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr chat [--endpoint E] [--system TEXT] [options]\n"
            "  --endpoint E           apr-coord's address: tcp://HOST:PORT or ipc://PATH\n"
            "                         (default $APR_ENDPOINT, else " APR_DEFAULT_ENDPOINT ")\n"
            "  --system TEXT          a system message that starts the conversation\n"
            APR_GEN_FLAGS_HELP
            "  --timeout SEC          give up when no reply comes for SEC seconds, for the\n"
            "                         first token and between tokens (default 60; 0 = never)\n"
            "Reads one user message per line from standard input (prompting with \"> \" on a\n"
            "terminal) and streams each answer to standard output. The line /reset forgets\n"
            "the conversation (the system message stays). Ctrl-C during an answer stops it\n"
            "and drops that exchange; at the prompt, Ctrl-C or end of input ends the chat.\n"
            "Exit status: 0, or 1 when a request failed (an error reply is reported and the\n"
            "chat goes on; no reply within the timeout ends it at once), 2 on bad usage.\n");
}

typedef struct {
    apr_wire_msg *msgs; /* contents owned; roles are string constants */
    size_t n, cap;
} history;

/* Takes content (malloc'd) whether or not it succeeds. */
static int history_push(history *h, const char *role, char *content, size_t len)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        apr_wire_msg *grown = realloc(h->msgs, cap * sizeof *grown);
        if (!grown) {
            free(content);
            return -1;
        }
        h->msgs = grown;
        h->cap = cap;
    }
    /* The request encoder only reads roles, so a constant is safe here. */
    h->msgs[h->n++] = (apr_wire_msg){.role = (char *)role, .content = content, .content_len = len};
    return 0;
}

static void history_truncate(history *h, size_t n)
{
    while (h->n > n)
        free(h->msgs[--h->n].content);
}

/* The answer being streamed. */
typedef struct {
    char *text;
    size_t len, cap;
    bool midline; /* stdout does not end with a newline yet */
    bool done;    /* a done event ended it normally */
    bool error;   /* an error event or a done with finish error */
} answer;

static int on_reply(const apr_reply *r, void *arg, char err[APR_ERRLEN])
{
    answer *a = arg;
    if (r->event == APR_EV_TOKEN && r->text_len) {
        if (a->len + r->text_len + 1 > a->cap) {
            size_t cap = (a->len + r->text_len + 1) * 2;
            char *grown = realloc(a->text, cap);
            if (!grown) {
                snprintf(err, APR_ERRLEN, "out of memory for the answer");
                return -1;
            }
            a->text = grown;
            a->cap = cap;
        }
        memcpy(a->text + a->len, r->text, r->text_len);
        a->len += r->text_len;
        a->text[a->len] = '\0';
        fwrite(r->text, 1, r->text_len, stdout);
        a->midline = r->text[r->text_len - 1] != '\n';
        if (fflush(stdout)) {
            snprintf(err, APR_ERRLEN, "cannot write to stdout: %s", strerror(errno));
            return -1;
        }
    } else if (r->event == APR_EV_DONE) {
        a->done = r->finish == APR_FINISH_STOP || r->finish == APR_FINISH_LENGTH;
        a->error = r->finish == APR_FINISH_ERROR;
    } else if (r->event == APR_EV_ERROR) {
        if (a->midline)
            fputc('\n', stdout);
        a->midline = false;
        fflush(stdout);
        fprintf(stderr, "apr chat: %s: %s\n", r->code_str, r->message ? r->message : "");
        a->error = true;
    }
    return 0;
}

/* One exchange: sends the history, streams the answer and, when it
 * completes, adds it to the history. 0 when the chat can go on (the
 * exchange may have failed: *failed says so), -1 when it cannot. */
static int exchange(apr_conn *c, history *h, apr_gen_flags *g, int timeout_ms, int sig_fd,
                    const sigset_t *sigs, bool *failed, char err[APR_ERRLEN])
{
    apr_request req;
    apr_request_init(&req, APR_OP_CHAT);
    apr_gen_flags_apply(g, &req);
    req.messages = h->msgs;
    req.n_messages = h->n;
    apr_id_set_int(&req.id, apr_conn_next_id(c));

    answer a = {0};
    sigset_t old;
    int signo = 0, rc = -1;
    /* Ctrl-C cancels the answer only while one streams; at the prompt it
     * keeps its usual meaning. */
    pthread_sigmask(SIG_BLOCK, sigs, &old);
    if (apr_conn_send(c, &req, err) == 0)
        rc = apr_stream(c, &req.id, timeout_ms, sig_fd, on_reply, &a, &signo, err);
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (a.midline)
        fputc('\n', stdout);
    fflush(stdout);
    if (rc > 0 && a.done) {
        /* history_push takes the text, even when it fails */
        char *text = a.text ? a.text : strdup("");
        if (!text || history_push(h, "assistant", text, a.len)) {
            snprintf(err, APR_ERRLEN, "out of memory for the history");
            return -1;
        }
        return 0;
    }
    free(a.text);
    history_truncate(h, h->n - 1); /* the user turn goes with its answer */
    if (rc == 0) {
        fprintf(stderr, "(stopped)\n");
        return 0;
    }
    if (rc > 0) {
        *failed = *failed || a.error;
        return 0;
    }
    return -1;
}

int apr_cmd_chat(int argc, char **argv)
{
    const char *endpoint_flag = NULL, *system = NULL;
    int timeout_ms = 60000;
    apr_gen_flags g;
    apr_gen_flags_init(&g);
    char err[APR_ERRLEN] = "";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int rc = apr_gen_flag(&g, argc, argv, &i, err);
        if (rc < 0) {
            fprintf(stderr, "apr chat: %s\n", err);
            return 2;
        }
        if (rc > 0)
            continue;
        bool has_value = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--endpoint") && has_value) {
            endpoint_flag = argv[++i];
        } else if (!strcmp(a, "--system") && has_value) {
            system = argv[++i];
        } else if (!strcmp(a, "--timeout") && has_value) {
            if (apr_cli_timeout(argv[++i], &timeout_ms)) {
                fprintf(stderr, "apr chat: --timeout: expected seconds in 0..86400, got '%.40s'\n",
                        argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "apr chat: unknown option or missing value: '%.100s' (see --help)\n", a);
            return 2;
        }
    }
    const char *endpoint = apr_cli_endpoint(endpoint_flag, err);
    if (!endpoint) {
        fprintf(stderr, "apr chat: %s\n", err);
        return 2;
    }
    if (system && !apr_utf8_valid(system, strlen(system))) {
        fprintf(stderr, "apr chat: --system: not valid UTF-8\n");
        return 2;
    }

    int status = 1;
    bool failed = false, tty = isatty(0);
    history h = {0};
    char *line = NULL;
    size_t line_cap = 0;
    sigset_t sigs;
    apr_conn *c = NULL;
    int sig_fd = apr_cli_sigfd(&sigs, err);
    if (sig_fd < 0)
        goto out;
    c = apr_conn_open(endpoint, err);
    if (!c)
        goto out;
    if (system) {
        char *copy = strdup(system);
        if (!copy || history_push(&h, "system", copy, strlen(system))) {
            snprintf(err, APR_ERRLEN, "out of memory");
            goto out;
        }
    }
    size_t keep = h.n; /* what /reset leaves */

    for (;;) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        errno = 0;
        ssize_t n = getline(&line, &line_cap, stdin);
        if (n < 0) {
            if (errno) {
                snprintf(err, APR_ERRLEN, "reading standard input: %s", strerror(errno));
                goto out;
            }
            if (tty)
                fputc('\n', stdout);
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (!strcmp(line, "/reset")) {
            history_truncate(&h, keep);
            fprintf(stderr, "(conversation cleared)\n");
            continue;
        }
        if (n == 0)
            continue;
        if (!apr_utf8_valid(line, (size_t)n)) {
            fprintf(stderr, "apr chat: that line is not valid UTF-8; not sent\n");
            failed = true;
            continue;
        }
        char *copy = strdup(line);
        if (!copy || history_push(&h, "user", copy, (size_t)n)) {
            snprintf(err, APR_ERRLEN, "out of memory");
            goto out;
        }
        if (exchange(c, &h, &g, timeout_ms, sig_fd, &sigs, &failed, err))
            goto out;
    }
    status = failed;

out:
    if (status && err[0])
        fprintf(stderr, "apr chat: %s\n", err);
    apr_conn_close(c);
    if (sig_fd >= 0)
        close(sig_fd);
    history_truncate(&h, 0);
    free(h.msgs);
    free(line);
    return status;
}
