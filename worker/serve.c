/* The worker's side of the coordinator <-> worker protocol (proto.h):
 * heartbeats from a thread of their own, hello once the backend is open,
 * then one "done" per "step", logits written straight into shared memory.
 *
 * The coordinator is trusted to be of the same build but not to be free of
 * bugs: every step is checked against what this worker announced, and a
 * step the backend refuses gets done{ok:false} while the worker keeps
 * serving (the coordinator decides whether to restart us). */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"
#include "worker/backend.h"

#define CTL_LINGER_MS 500 /* long enough for a last hello/done to leave */

static void wlog(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void wlog(const char *name, const char *fmt, ...)
{
    /* one fprintf per line, so lines from two threads never interleave */
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "apr-worker[%s]: %s\n", name, line);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------ heartbeat */

typedef struct {
    void *sock; /* created by the main thread, used and closed by the beat thread */
    const char *name;
    int64_t pid;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC, so clock steps do not stall beats */
    bool stop;
    pthread_t thread;
    bool running;
} heartbeat;

static void *beat_main(void *arg)
{
    heartbeat *h = arg;
    apr_wmsg m = {.type = APR_W_HB, .pid = h->pid};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (apr_wmsg_encode(&sb, &m) != 0) {
        wlog(h->name, "heartbeat: out of memory");
        msgpack_sbuffer_destroy(&sb);
        zmq_close(h->sock);
        return NULL;
    }
    pthread_mutex_lock(&h->mu);
    while (!h->stop) {
        pthread_mutex_unlock(&h->mu);
        /* never block: while the coordinator is not there yet (or busy) a
         * missed beat is better than a stuck thread; stale ones are dropped */
        if (zmq_send(h->sock, sb.data, sb.size, ZMQ_DONTWAIT) < 0 && errno != EAGAIN && errno != EINTR)
            wlog(h->name, "heartbeat: zmq_send: %s", zmq_strerror(errno));
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += (long)APR_HEARTBEAT_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&h->mu);
        while (!h->stop && pthread_cond_timedwait(&h->cv, &h->mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&h->mu);
    msgpack_sbuffer_destroy(&sb);
    zmq_close(h->sock);
    return NULL;
}

/* Connects NAME.hb and starts beating; 0, or -1 with a message. */
static int beat_start(heartbeat *h, void *zctx, const char *endpoint, const char *name, char *err)
{
    memset(h, 0, sizeof *h);
    h->name = name;
    h->pid = (int64_t)getpid();
    char ident[256];
    int len = snprintf(ident, sizeof ident, "%s.hb", name);
    int linger = 0, hwm = 4;
    h->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (h->sock == NULL) {
        snprintf(err, APR_ERRLEN, "heartbeat socket: %s", zmq_strerror(errno));
        return -1;
    }
    if (zmq_setsockopt(h->sock, ZMQ_ROUTING_ID, ident, (size_t)len) != 0 ||
        zmq_setsockopt(h->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(h->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_connect(h->sock, endpoint) != 0) {
        snprintf(err, APR_ERRLEN, "heartbeat socket to %s: %s", endpoint, zmq_strerror(errno));
        zmq_close(h->sock);
        return -1;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&h->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&h->mu, NULL);
    int rc = pthread_create(&h->thread, NULL, beat_main, h);
    if (rc != 0) {
        snprintf(err, APR_ERRLEN, "heartbeat thread: %s", strerror(rc));
        pthread_cond_destroy(&h->cv);
        pthread_mutex_destroy(&h->mu);
        zmq_close(h->sock);
        return -1;
    }
    h->running = true;
    return 0;
}

static void beat_stop(heartbeat *h)
{
    if (!h->running)
        return;
    pthread_mutex_lock(&h->mu);
    h->stop = true;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    pthread_cond_destroy(&h->cv);
    pthread_mutex_destroy(&h->mu);
    h->running = false;
}

/* ---------------------------------------------------------------- serve */

typedef struct {
    const apr_worker_opts *o;
    void *ctl;
    apr_backend *b;
    apr_shm logits;
    int n_vocab, n_seq;
} worker;

static int send_msg(worker *w, const apr_wmsg *m)
{
    char err[APR_ERRLEN];
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = apr_wmsg_encode(&sb, m);
    if (rc != 0)
        snprintf(err, sizeof err, "out of memory");
    else
        rc = apr_zmq_send(w->ctl, sb.data, sb.size, err);
    if (rc != 0)
        wlog(w->o->name, "sending %s: %s", apr_wtype_str(m->type), err);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static void run_step(worker *w, const apr_wmsg *m)
{
    apr_wmsg done = {.type = APR_W_DONE, .step = m->step};
    int n_want = 0;
    for (int i = 0; i < m->n; i++)
        n_want += m->want[i] != 0;
    if (m->n > w->o->max_batch) {
        snprintf(done.error, sizeof done.error, "step of %d entries; this worker takes at most %d",
                 (int)m->n, w->o->max_batch);
    } else if (n_want > w->o->max_logits) {
        snprintf(done.error, sizeof done.error, "step wants %d logit rows; the shared memory holds %d",
                 n_want, w->o->max_logits);
    } else {
        apr_batch batch = {.n = m->n, .token = m->token, .pos = m->pos, .seq = m->seq,
                           .want_logits = m->want};
        double t0 = now_ms();
        done.ok = apr_backend_step(w->b, &batch, w->logits.base, done.error) == 0;
        done.ms = now_ms() - t0;
        if (done.ok)
            done.n_logits = n_want;
    }
    if (!done.ok)
        wlog(w->o->name, "step %llu refused: %s", (unsigned long long)m->step, done.error);
    send_msg(w, &done);
}

static void run_trim(worker *w, const apr_wmsg *m)
{
    /* the parser guarantees both are >= 0 */
    if (m->trim_seq >= w->n_seq) {
        wlog(w->o->name, "trim of sequence %d ignored (0..%d)", (int)m->trim_seq, w->n_seq - 1);
        return;
    }
    apr_backend_seq_trim(w->b, m->trim_seq, m->trim_from);
}

/* Until shutdown (0) or a broken socket (1). */
static int serve_loop(worker *w)
{
    for (;;) {
        char err[APR_ERRLEN];
        void *data = NULL;
        size_t len = 0;
        bool multipart = false;
        int got = apr_zmq_recv(w->ctl, -1, &data, &len, &multipart, err);
        if (got < 0) {
            wlog(w->o->name, "receiving: %s", err);
            return 1;
        }
        if (got == 0)
            continue; /* EINTR */
        apr_wmsg m;
        int rc = apr_wmsg_parse(data, len, &m, err);
        free(data);
        if (rc != 0) {
            wlog(w->o->name, "ignored a bad message: %s", err);
            continue;
        }
        if (multipart)
            wlog(w->o->name, "extra frames after a %s message dropped", apr_wtype_str(m.type));
        switch (m.type) {
        case APR_W_STEP:
            run_step(w, &m);
            break;
        case APR_W_TRIM:
            run_trim(w, &m);
            break;
        case APR_W_SHUTDOWN:
            apr_wmsg_free(&m);
            return 0;
        default:
            wlog(w->o->name, "ignored a %s message (not for workers)", apr_wtype_str(m.type));
            break;
        }
        apr_wmsg_free(&m);
    }
}

/* Opens the backend and the logits memory; on failure err says why. */
static int setup(worker *w, char *err)
{
    const apr_worker_opts *o = w->o;
    apr_backend_opts bo = {.n_threads = o->n_threads, .n_ctx = o->n_ctx, .n_seq = o->n_seq};
    double t0 = now_ms();
    char why[APR_ERRLEN];
    w->b = apr_backend_open(o->backend, o->model, &bo, why);
    if (w->b == NULL) {
        /* the coordinator logs this line as it is: say which file */
        snprintf(err, APR_ERRLEN, "%.120s: %.128s", o->model, why);
        return -1;
    }
    w->n_vocab = (int)apr_backend_hparams(w->b)->n_vocab;
    w->n_seq = apr_backend_n_seq(w->b);
    size_t need = (size_t)o->max_logits * (size_t)w->n_vocab * sizeof(float);
    if (apr_shm_attach(&w->logits, o->logits_fd, need, err) != 0)
        return -1; /* the message names the fd and both sizes */
    wlog(o->name, "%s backend, %s: n_vocab %d, n_ctx %d, n_seq %d, loaded in %.2f s", o->backend,
         o->model, w->n_vocab, apr_backend_n_ctx(w->b), w->n_seq, (now_ms() - t0) / 1e3);
    return 0;
}

int apr_worker_serve(const apr_worker_opts *o)
{
    char err[APR_ERRLEN] = "";
    worker w = {.o = o};
    w.logits.fd = -1;
    heartbeat hb = {0};
    int status = 1;
    int linger = CTL_LINGER_MS;

    void *zctx = zmq_ctx_new();
    if (zctx == NULL) {
        wlog(o->name, "zmq_ctx_new: %s", zmq_strerror(errno));
        return 1;
    }
    /* beats first: loading a large model takes a while and must not look
     * like a hang */
    if (beat_start(&hb, zctx, o->endpoint, o->name, err) != 0) {
        wlog(o->name, "%s", err);
        goto out;
    }
    w.ctl = zmq_socket(zctx, ZMQ_DEALER);
    if (w.ctl == NULL || zmq_setsockopt(w.ctl, ZMQ_ROUTING_ID, o->name, strlen(o->name)) != 0 ||
        zmq_setsockopt(w.ctl, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_connect(w.ctl, o->endpoint) != 0) {
        wlog(o->name, "control socket to %s: %s", o->endpoint, zmq_strerror(errno));
        goto out;
    }

    apr_wmsg hello = {.type = APR_W_HELLO, .pid = (int64_t)getpid()};
    snprintf(hello.backend, sizeof hello.backend, "%s", o->backend);
    if (setup(&w, hello.error) != 0) {
        wlog(o->name, "%s", hello.error);
        send_msg(&w, &hello);
        goto out;
    }
    hello.ok = true;
    hello.n_vocab = w.n_vocab;
    hello.n_ctx = apr_backend_n_ctx(w.b);
    hello.n_seq = w.n_seq;
    hello.max_batch = o->max_batch;
    hello.max_logits = o->max_logits;
    if (send_msg(&w, &hello) != 0)
        goto out;
    status = serve_loop(&w);

out:
    if (w.ctl)
        zmq_close(w.ctl);
    beat_stop(&hb);
    zmq_ctx_term(zctx);
    apr_shm_close(&w.logits);
    apr_backend_close(w.b);
    return status;
}
