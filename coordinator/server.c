/* The event loop: client requests on one ROUTER, workers on another, signals
 * on a signalfd, all in one zmq_poll. Nothing a client sends reaches the
 * scheduler before apr_request_parse has validated it; every frame that fails
 * gets an error reply and the loop goes on. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "coordinator/coord.h"

double coord_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Replies to a client that went away (or stopped reading for so long that
 * ZeroMQ's queue is full) cannot be delivered: its generations are cancelled
 * rather than left running for nobody. */
void coord_send_client(coord *c, const unsigned char *ident, size_t ident_len, const msgpack_sbuffer *b)
{
    if (ident_len == 0) return;
    char err[APR_ERRLEN];
    if (apr_zmq_router_send(c->clients, ident, ident_len, b->data, b->size, err) == 0) return;
    if (c->o.verbose) fprintf(stderr, "apr-coord: a client is gone (%s); its requests are cancelled\n", err);
    sched_client_gone(c, ident, ident_len);
}

static int make_run_dir(coord *c, char err[APR_ERRLEN])
{
    if (c->o.run_dir) {
        if (mkdir(c->o.run_dir, 0700) < 0 && errno != EEXIST) {
            snprintf(err, APR_ERRLEN, "--run-dir %s: %s", c->o.run_dir, strerror(errno));
            return -1;
        }
        struct stat st;
        if (stat(c->o.run_dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
            (st.st_mode & 077)) {
            snprintf(err, APR_ERRLEN, "--run-dir %s: must be a directory of ours with mode 0700", c->o.run_dir);
            return -1;
        }
        snprintf(c->run_dir, sizeof c->run_dir, "%s", c->o.run_dir);
    } else {
        const char *base = getenv("TMPDIR");
        if (!base || !*base || strlen(base) > 64) base = "/tmp";
        snprintf(c->run_dir, sizeof c->run_dir, "%s/apr-coord.XXXXXX", base);
        if (!mkdtemp(c->run_dir)) { /* mode 0700 */
            snprintf(err, APR_ERRLEN, "cannot create a runtime directory in %s: %s", base, strerror(errno));
            c->run_dir[0] = 0;
            return -1;
        }
    }
    snprintf(c->wendpoint, sizeof c->wendpoint, "ipc://%s/workers", c->run_dir);
    if (strlen(c->wendpoint) - 6 >= 100) {
        snprintf(err, APR_ERRLEN, "runtime directory path too long for an ipc socket: %.180s", c->run_dir);
        return -1;
    }
    return 0;
}

int coord_init(coord *c, const coord_opts *o, char err[APR_ERRLEN])
{
    memset(c, 0, sizeof *c);
    c->o = *o;
    c->sigfd = -1;
    c->active = -1;
    c->t_start = coord_now();
    const char *slash = strrchr(o->model_path, '/');
    c->model_name = slash ? slash + 1 : o->model_path;

    /* the model: metadata only */
    c->gguf = gguf_open(o->model_path, err);
    if (!c->gguf) return -1;
    apr_hparams hp;
    if (apr_hparams_load(c->gguf, &hp, err) < 0) return -1;
    c->tok = apr_tok_load(c->gguf, err);
    if (!c->tok) return -1;
    c->n_vocab = (int)hp.n_vocab;
    if (apr_tok_n_vocab(c->tok) != c->n_vocab) {
        snprintf(err, APR_ERRLEN, "the vocabulary has %d tokens, the model %d", apr_tok_n_vocab(c->tok), c->n_vocab);
        return -1;
    }
    c->chat = apr_chat_detect(c->gguf);
    int train = hp.n_ctx_train > 0 ? (int)(hp.n_ctx_train < (1u << 20) ? hp.n_ctx_train : 1u << 20) : 4096;
    c->n_ctx = o->n_ctx > 0 ? o->n_ctx : (train < 4096 ? train : 4096);
    if (c->n_ctx > train) {
        snprintf(err, APR_ERRLEN, "--ctx %d is more than the model was trained for (%d)", c->n_ctx, train);
        return -1;
    }
    c->ws = apr_sampler_ws_new(c->n_vocab, err);
    if (!c->ws) return -1;

    /* tables */
    c->n_seqs = o->max_batch + o->queue_limit;
    int n_entries = o->chunk + o->max_batch;
    c->seqs = calloc((size_t)c->n_seqs, sizeof *c->seqs);
    c->st_token = malloc((size_t)n_entries * sizeof *c->st_token);
    c->st_pos = malloc((size_t)n_entries * sizeof *c->st_pos);
    c->st_seq = malloc((size_t)n_entries * sizeof *c->st_seq);
    c->st_want = malloc((size_t)n_entries);
    c->st_topk = malloc((size_t)n_entries);
    c->st_row_seq = malloc((size_t)o->max_batch * sizeof *c->st_row_seq);
    c->st_row_k = malloc((size_t)o->max_batch);
    c->st_cands = malloc((size_t)o->max_batch * APR_TOPK_MAX * sizeof *c->st_cands);
    c->st_row_ncand = malloc((size_t)o->max_batch * sizeof *c->st_row_ncand);
    c->cand_seen = calloc(((size_t)c->n_vocab + 63) / 64, sizeof *c->cand_seen);
    c->st_members = malloc((size_t)o->max_batch * sizeof *c->st_members);
    if (!c->seqs || !c->st_token || !c->st_pos || !c->st_seq || !c->st_want || !c->st_topk || !c->st_row_seq ||
        !c->st_row_k || !c->st_cands || !c->st_row_ncand || !c->cand_seen || !c->st_members) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return -1;
    }
    for (int i = 0; i < c->n_seqs; i++) c->seqs[i].slot = -1;

    /* signals arrive as readable data, in the loop like everything else */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    c->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (c->sigfd < 0) {
        snprintf(err, APR_ERRLEN, "signalfd: %s", strerror(errno));
        return -1;
    }

    if (make_run_dir(c, err) < 0) return -1;
    c->zctx = zmq_ctx_new();
    if (!c->zctx) {
        snprintf(err, APR_ERRLEN, "zmq_ctx_new: %s", zmq_strerror(errno));
        return -1;
    }
    c->clients = zmq_socket(c->zctx, ZMQ_ROUTER);
    c->wsock = zmq_socket(c->zctx, ZMQ_ROUTER);
    if (!c->clients || !c->wsock) {
        snprintf(err, APR_ERRLEN, "zmq_socket: %s", zmq_strerror(errno));
        return -1;
    }
    int one = 1, zero = 0, hwm = 100000;
    /* frames past 4 MiB get a too_large reply; only absurd ones are cut off */
    int64_t maxmsg = 64 << 20;
    zmq_setsockopt(c->clients, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(c->clients, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(c->clients, ZMQ_SNDTIMEO, &zero, sizeof zero);
    zmq_setsockopt(c->clients, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(c->clients, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
    zmq_setsockopt(c->wsock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(c->wsock, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(c->clients, o->listen) < 0) {
        snprintf(err, APR_ERRLEN, "cannot listen on %.200s: %s", o->listen, zmq_strerror(errno));
        return -1;
    }
    if (zmq_bind(c->wsock, c->wendpoint) < 0) {
        snprintf(err, APR_ERRLEN, "cannot bind %.200s: %s", c->wendpoint, zmq_strerror(errno));
        return -1;
    }
    if (workers_start(c, err) < 0) return -1;
    fprintf(stderr, "apr-coord: %s: %s, vocab %d, ctx %d, chat template %s; listening on %s\n", c->model_name,
            hp.arch == APR_ARCH_QWEN2 ? "qwen2" : "llama", c->n_vocab, c->n_ctx, apr_chat_name(c->chat), o->listen);
    return 0;
}

static void on_client_frame(coord *c, apr_zframe *f)
{
    apr_request r;
    apr_proto_error e;
    const void *data = zmq_msg_data(&f->body);
    size_t len = zmq_msg_size(&f->body);
    if (f->multipart) {
        msgpack_sbuffer b;
        msgpack_sbuffer_init(&b);
        apr_id none = {0};
        if (apr_reply_error(&b, &none, APR_PERR_BAD_REQUEST, "one frame per request (got a multipart message)") == 0)
            coord_send_client(c, f->ident, f->ident_len, &b);
        msgpack_sbuffer_destroy(&b);
        return;
    }
    if (apr_request_parse(data, len, &r, &e) < 0) {
        msgpack_sbuffer b;
        msgpack_sbuffer_init(&b);
        if (apr_reply_error(&b, &e.id, e.code, e.message) == 0) coord_send_client(c, f->ident, f->ident_len, &b);
        msgpack_sbuffer_destroy(&b);
        apr_request_free(&r);
        return;
    }
    sched_on_request(c, f->ident, f->ident_len, &r);
    apr_request_free(&r);
}

/* True while the coordinator has no worker that ever served and every one of
 * them failed to start: then nothing will work and the user should know. */
static bool hopeless(const coord *c)
{
    for (int i = 0; i < c->n_workers; i++)
        if (c->workers[i].ever_ready || c->workers[i].failures == 0) return false;
    return true;
}

/* Seconds the coordinator may still wait awake for a CUDA worker's done:
 * while a GPU step is in flight, watching the worker's doorbell (proto.h)
 * and the sockets without sleeping saves ZeroMQ's thread wake-ups on every
 * token, ~10% of a 1 ms step; a step that outlasts COORD_SPIN_S (a long
 * prefill) is waited for asleep. CPU workers share the host's cores with this
 * thread, so their steps are never waited for awake. */
#define COORD_SPIN_S 0.02
static double spin_left(const coord *c)
{
    const double now = coord_now();
    double left = 0;
    for (int i = 0; i < c->n_workers; i++) {
        const worker *w = &c->workers[i];
        if (w->busy && !strcmp(w->backend, "cuda") && w->step_sent + COORD_SPIN_S - now > left)
            left = w->step_sent + COORD_SPIN_S - now;
    }
    return left;
}

int coord_run(coord *c)
{
    int rc = 0;
    while (!c->stopping) {
        zmq_pollitem_t items[3] = {
            {c->clients, 0, ZMQ_POLLIN, 0},
            {c->wsock, 0, ZMQ_POLLIN, 0},
            {NULL, c->sigfd, ZMQ_POLLIN, 0},
        };
        /* awake: a frame or a worker's doorbell, whichever comes first */
        bool rung = false;
        for (double spin = spin_left(c); spin > 0 && !rung; spin = spin_left(c)) {
            if (apr_zmq_spin(items, 3, spin < 20e-6 ? (long long)(spin * 1e9) : 20000)) break;
            rung = workers_doorbells(c);
        }
        if (zmq_poll(items, 3, rung ? 0 : 50) < 0 && errno != EINTR) {
            fprintf(stderr, "apr-coord: zmq_poll: %s\n", zmq_strerror(errno));
            rc = 1;
            break;
        }
        if (items[2].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            while (read(c->sigfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGINT || si.ssi_signo == SIGTERM) {
                    fprintf(stderr, "apr-coord: %s, shutting down\n", strsignal((int)si.ssi_signo));
                    c->stopping = true;
                }
            }
        }
        char err[APR_ERRLEN];
        /* a step's result can ring before its message arrives */
        workers_doorbells(c);
        /* worker frames first: they free slots and carry results */
        for (int k = 0; k < 1000; k++) {
            apr_zframe f;
            int got = apr_zmq_router_recv(c->wsock, 0, &f, err);
            if (got <= 0) break;
            workers_on_frame(c, f.ident, f.ident_len, zmq_msg_data(&f.body), zmq_msg_size(&f.body));
            apr_zframe_close(&f);
        }
        /* a bounded number of client frames per turn, so a flood of requests
         * cannot starve the running streams */
        for (int k = 0; k < 256; k++) {
            apr_zframe f;
            int got = apr_zmq_router_recv(c->clients, 0, &f, err);
            if (got <= 0) break;
            on_client_frame(c, &f);
            apr_zframe_close(&f);
        }
        workers_poll(c);
        if (hopeless(c)) {
            fprintf(stderr, "apr-coord: no worker could start: %s\n", c->workers[0].last_error);
            rc = 1;
            break;
        }
        sched_tick(c);
    }
    sched_fail_all(c, APR_PERR_UNAVAILABLE, "the server is shutting down");
    return rc;
}

void coord_free(coord *c)
{
    workers_stop(c);
    if (c->seqs) sched_fail_all(c, APR_PERR_UNAVAILABLE, "the server is shutting down");
    if (c->clients) zmq_close(c->clients);
    if (c->wsock) zmq_close(c->wsock);
    if (c->zctx) zmq_ctx_term(c->zctx);
    if (c->run_dir[0]) {
        char path[320];
        snprintf(path, sizeof path, "%s/workers", c->run_dir);
        unlink(path);
        if (!c->o.run_dir) rmdir(c->run_dir);
    }
    if (c->sigfd >= 0) close(c->sigfd);
    free(c->seqs);
    free(c->st_token);
    free(c->st_pos);
    free(c->st_seq);
    free(c->st_want);
    free(c->st_topk);
    free(c->st_row_seq);
    free(c->st_row_k);
    free(c->st_cands);
    free(c->st_row_ncand);
    free(c->cand_seen);
    free(c->st_members);
    apr_sampler_ws_free(c->ws);
    apr_tok_free(c->tok);
    if (c->gguf) gguf_close(c->gguf);
}
