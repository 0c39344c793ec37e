/* The worker's side of the coordinator <-> worker protocol (proto.h):
 * heartbeats from a thread of their own, hello once the backend is open,
 * then one "done" per "step", logits (or candidate rows) written into shared
 * memory.
 * A CPU worker is one process; a CUDA worker's engine runs this same loop
 * without heartbeats (its holder sends them, worker/holder.c) and instead
 * shows its holder that it lives.
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

#include "worker/proc.h"

/* An engine's main thread busy with one thing (its setup, one step) for this
 * long is taken for hung, say on a kernel that never ends: its liveness stops
 * and its holder replaces it. A step takes milliseconds, setup a second. */
#define ENGINE_STUCK_NS (30 * 1000000000LL)
/* How long an engine waits awake for its next step (on the socket and in
 * the step box) before it sleeps in zmq_poll, unless --spin-us says: covers
 * the coordinator's turn between a done and the next step (0.07-0.15 ms on
 * the H100 host), not the gaps between requests. */
#define ENGINE_SPIN_US 500

void wlog(const char *name, const char *fmt, ...)
{
    /* one fprintf per line, so lines from two threads never interleave */
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "apr-worker[%s]: %s\n", name, line);
}

int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------ tail figures */

/* Latencies of one kind at 10 us resolution up to 50 ms (the last bin holds
 * everything longer), for the exit line's medians and tails: a mean hides
 * the occasional slow step that a client sees as a p99. */
#define HIST_BINS 5000
#define HIST_NS 10000
typedef struct {
    uint32_t *bin; /* HIST_BINS counts, or NULL: not kept */
    int64_t n, max_ns;
} lat_hist;

static void hist_add(lat_hist *h, int64_t ns)
{
    if (h->bin == NULL || ns < 0)
        return;
    int64_t b = ns / HIST_NS;
    h->bin[b < HIST_BINS ? b : HIST_BINS - 1]++;
    h->n++;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

/* The q-quantile (0 < q <= 1) in ms: the upper edge of its bin. */
static double hist_ms(const lat_hist *h, double q)
{
    if (h->bin == NULL || h->n == 0)
        return 0;
    int64_t want = (int64_t)(q * (double)h->n + 0.999999), seen = 0;
    for (int b = 0; b < HIST_BINS; b++) {
        seen += h->bin[b];
        if (seen >= want)
            return (double)(b + 1) * HIST_NS / 1e6;
    }
    return (double)h->max_ns / 1e6;
}

/* --------------------------------------------------------------- ticker */

static void *tick_main(void *arg)
{
    ticker *t = arg;
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        pthread_mutex_unlock(&t->mu);
        t->tick(t->arg);
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += (long)t->period_ms * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&t->mu);
        while (!t->stop && pthread_cond_timedwait(&t->cv, &t->mu, &until) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

int ticker_start(ticker *t, int period_ms, void (*tick)(void *), void *arg, char err[APR_ERRLEN])
{
    memset(t, 0, sizeof *t);
    t->tick = tick;
    t->arg = arg;
    t->period_ms = period_ms;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&t->mu, NULL);
    int rc = pthread_create(&t->thread, NULL, tick_main, t);
    if (rc != 0) {
        snprintf(err, APR_ERRLEN, "thread: %s", strerror(rc));
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        return -1;
    }
    t->running = true;
    return 0;
}

void ticker_stop(ticker *t)
{
    if (!t->running)
        return;
    pthread_mutex_lock(&t->mu);
    t->stop = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    t->running = false;
}

/* ------------------------------------------------------------ heartbeat */

static void beat_tick(void *arg)
{
    heartbeat *h = arg;
    /* never block: while the coordinator is not there yet (or busy) a
     * missed beat is better than a stuck thread; stale ones are dropped */
    if (zmq_send(h->sock, h->msg.data, h->msg.size, ZMQ_DONTWAIT) < 0 && errno != EAGAIN && errno != EINTR)
        wlog(h->name, "heartbeat: zmq_send: %s", zmq_strerror(errno));
}

int beat_start(heartbeat *h, void *zctx, const char *endpoint, const char *name, char err[APR_ERRLEN])
{
    memset(h, 0, sizeof *h);
    h->name = name;
    msgpack_sbuffer_init(&h->msg);
    apr_wmsg m = {.type = APR_W_HB, .pid = (int64_t)getpid()};
    char ident[256];
    int len = snprintf(ident, sizeof ident, "%s.hb", name);
    int linger = 0, hwm = 4;
    if (apr_wmsg_encode(&h->msg, &m) != 0) {
        snprintf(err, APR_ERRLEN, "heartbeat: out of memory");
        goto fail;
    }
    h->sock = zmq_socket(zctx, ZMQ_DEALER);
    if (h->sock == NULL) {
        snprintf(err, APR_ERRLEN, "heartbeat socket: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_setsockopt(h->sock, ZMQ_ROUTING_ID, ident, (size_t)len) != 0 ||
        zmq_setsockopt(h->sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(h->sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_connect(h->sock, endpoint) != 0) {
        snprintf(err, APR_ERRLEN, "heartbeat socket to %s: %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    /* the socket moves to the ticker's thread; pthread_create is the full
     * memory barrier ZeroMQ asks for when a socket changes threads */
    char why[APR_ERRLEN];
    if (ticker_start(&h->t, APR_HEARTBEAT_MS, beat_tick, h, why) != 0) {
        snprintf(err, APR_ERRLEN, "heartbeat %.200s", why);
        goto fail;
    }
    return 0;
fail:
    if (h->sock)
        zmq_close(h->sock);
    msgpack_sbuffer_destroy(&h->msg);
    memset(h, 0, sizeof *h);
    return -1;
}

void beat_stop(heartbeat *h)
{
    ticker_stop(&h->t); /* joined: the socket is this thread's again */
    if (h->sock)
        zmq_close(h->sock);
    msgpack_sbuffer_destroy(&h->msg);
    memset(h, 0, sizeof *h);
}

/* ------------------------------------------------------------- liveness */
/* An engine's sign of life for its holder: beat goes up every
 * ENGINE_BEAT_MS, unless the main thread has been stuck in one thing for
 * ENGINE_STUCK_NS. A stopped process, a deadlock and a kernel that never
 * returns all look the same to the holder: no beat. */

typedef struct {
    engine_block *blk;
    int64_t busy_since; /* mono_ns() when the main thread began its setup or step; 0 when idle */
    ticker t;
} liveness;

static void live_tick(void *arg)
{
    liveness *l = arg;
    int64_t since = __atomic_load_n(&l->busy_since, __ATOMIC_RELAXED);
    if (since != 0 && mono_ns() - since > ENGINE_STUCK_NS)
        return;
    __atomic_fetch_add(&l->blk->beat, 1, __ATOMIC_RELAXED);
}

static void live_busy(liveness *l, bool busy)
{
    if (l)
        __atomic_store_n(&l->busy_since, busy ? mono_ns() : 0, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- serve */

typedef struct {
    const apr_worker_opts *o;
    void *ctl;
    apr_backend *b;
    apr_shm logits;
    int n_vocab, n_seq;
    /* max_logits * n_vocab floats of this process's own: where a step that
     * asks for candidate rows has the backend write its output (the CPU
     * backend picks them from rows that stay in this core's cache, the CUDA
     * backend on the GPU), so that only the candidates cross to the
     * coordinator (proto.h, "candidate rows") */
    float *scratch;
    /* an engine's: the block shared with its holder, and its liveness
     * (alive points at live once its thread runs) */
    apr_shm block;
    liveness live, *alive;
    bool kv_kept;
    /* Steps of one entry (batch-1 decode), for the line at exit that splits
     * a token's time between the backend, this loop, and the wait for the
     * next step (the coordinator's turn plus the round trip). */
    int64_t t_recv, last_done_ns;
    /* the step box (proto.h): taken only after a step from the socket
     * (socket_step), and only for a step id above last_step, the last run;
     * box_refused: one found malformed */
    int64_t spin_ns;
    uint64_t last_step, box_refused;
    bool socket_step;
    unsigned char *box_copy; /* sizeof apr_stepbox.msg */
    int64_t solo_n, solo_backend_ns, solo_loop_ns, solo_wait_ns;
    int64_t solo_rows_ns; /* part of solo_loop_ns: candidates picked or rows copied */
    lat_hist solo_backend, solo_wait; /* the same steps' backend time and wait, for the tails */
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

_Static_assert(APR_TOPK_MAX == APR_BACKEND_TOPK_MAX && APR_TOPK_ROW_BYTES(3) == APR_CAND_ROW_BYTES(3),
               "the backend's candidate rows are the protocol's");

/* The step's rows from scratch into shared memory, in batch order: whole, or
 * as much of the slot as the candidate row the backend left there holds. */
static void write_rows(worker *w, const apr_wmsg *m)
{
    size_t nv = (size_t)w->n_vocab;
    int r = 0;
    for (int i = 0; i < m->n; i++) {
        if (!m->want[i])
            continue;
        const unsigned char *src = (const unsigned char *)(w->scratch + (size_t)r * nv);
        unsigned char *dst = (unsigned char *)w->logits.base + (size_t)r * nv * sizeof(float);
        r++;
        size_t bytes = nv * sizeof(float);
        if (m->topk && m->topk[i]) {
            int32_t cnt;
            memcpy(&cnt, src, sizeof cnt); /* the backend's: 0..topk[i] */
            if (cnt < 0 || cnt > m->topk[i])
                cnt = m->topk[i]; /* never copy past the slot; the coordinator checks the row */
            bytes = APR_TOPK_ROW_BYTES(cnt);
        }
        memcpy(dst, src, bytes);
    }
}

/* 0, or ENGINE_EXIT_DEVICE when this engine must end. */
static int run_step(worker *w, const apr_wmsg *m)
{
    apr_wmsg done = {.type = APR_W_DONE, .step = m->step};
    w->last_step = m->step;
    int64_t t0 = 0, t1 = 0, t2 = 0;
    int n_want = 0, max_k = 0;
    for (int i = 0; i < m->n; i++) {
        n_want += m->want[i] != 0;
        if (m->topk && m->topk[i] > max_k)
            max_k = m->topk[i];
    }
    if (m->n > w->o->max_batch) {
        snprintf(done.error, sizeof done.error, "step of %d entries; this worker takes at most %d",
                 (int)m->n, w->o->max_batch);
    } else if (n_want > w->o->max_logits) {
        snprintf(done.error, sizeof done.error, "step wants %d logit rows; the shared memory holds %d",
                 n_want, w->o->max_logits);
    } else if (APR_TOPK_ROW_BYTES(max_k) > (size_t)w->n_vocab * sizeof(float)) {
        snprintf(done.error, sizeof done.error, "step asks for %d candidates; a row of %d logits holds fewer",
                 max_k, w->n_vocab);
    } else {
        /* the coordinator says the next step is this stream's alone; it
         * comes within the spin below, or the spin lets it go */
        apr_batch batch = {.n = m->n, .token = m->token, .pos = m->pos, .seq = m->seq,
                           .want_logits = m->want, .topk = max_k > 0 ? m->topk : NULL,
                           .ahead = m->ahead && m->n == 1 && w->spin_ns > 0};
        t0 = mono_ns();
        live_busy(w->alive, true);
        /* full rows only: straight into shared memory, no copy */
        float *out = max_k > 0 ? w->scratch : w->logits.base;
        int rc = apr_backend_step(w->b, &batch, out, done.error);
        live_busy(w->alive, false);
        t1 = mono_ns();
        if (rc == 0 && max_k > 0)
            write_rows(w, m);
        t2 = mono_ns();
        done.ms = (double)(t1 - t0) / 1e6;
        if (rc == -2 && w->o->engine) {
            /* a CUDA error sticks to this process's context: only a new
             * process gets a clean one. No done: the coordinator sends the
             * step again to the engine that says hello next. */
            wlog(w->o->name, "step %llu: %s; exiting so that the holder starts a new engine",
                 (unsigned long long)m->step, done.error);
            return ENGINE_EXIT_DEVICE;
        }
        done.ok = rc == 0;
        if (done.ok)
            done.n_logits = n_want;
    }
    if (!done.ok)
        wlog(w->o->name, "step %llu refused: %s", (unsigned long long)m->step, done.error);
    else { /* the rows are in place: ring, then send the message all the same */
        apr_doorbell *db = apr_doorbell_of(&w->logits);
        __atomic_store_n(&db->n_logits, done.n_logits, __ATOMIC_RELAXED);
        __atomic_store_n(&db->step, m->step, __ATOMIC_RELEASE);
    }
    send_msg(w, &done);
    int64_t sent = mono_ns();
    if (done.ok && m->n == 1 && w->last_done_ns) {
        w->solo_n++;
        w->solo_backend_ns += t1 - t0;
        w->solo_loop_ns += (t0 - w->t_recv) + (sent - t1);
        w->solo_rows_ns += t2 - t1;
        w->solo_wait_ns += w->t_recv - w->last_done_ns;
        hist_add(&w->solo_backend, t1 - t0);
        hist_add(&w->solo_wait, w->t_recv - w->last_done_ns);
    }
    w->last_done_ns = sent;
    return 0;
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

/* The step in the step box (proto.h), if it is one to run now: 1 when it
 * ran, -1 when the engine must exit (as run_step), 0 when there is none. */
static int take_box(worker *w)
{
    const apr_stepbox *box = apr_stepbox_of(&w->logits);
    const uint64_t step = __atomic_load_n(&box->step, __ATOMIC_ACQUIRE);
    if (!w->socket_step || step <= w->last_step || step == w->box_refused)
        return 0;
    const uint32_t len = __atomic_load_n(&box->len, __ATOMIC_RELAXED);
    char err[APR_ERRLEN] = "";
    apr_wmsg m;
    memset(&m, 0, sizeof m);
    int rc = -1;
    if (len == 0 || len > sizeof box->msg) {
        snprintf(err, sizeof err, "length %u", (unsigned)len);
    } else {
        /* a copy: the bytes are the coordinator's memory */
        memcpy(w->box_copy, box->msg, len);
        rc = apr_wmsg_parse(w->box_copy, len, &m, err);
        if (rc == 0 && (m.type != APR_W_STEP || m.step != step)) {
            snprintf(err, sizeof err, "a %s message for step %llu", apr_wtype_str(m.type), (unsigned long long)m.step);
            rc = -1;
        }
    }
    if (rc != 0) {
        /* the socket still brings the step */
        wlog(w->o->name, "step box for step %llu ignored: %s", (unsigned long long)step, err);
        w->box_refused = step;
        apr_wmsg_free(&m);
        return 0;
    }
    w->t_recv = mono_ns();
    rc = run_step(w, &m);
    apr_wmsg_free(&m);
    return rc != 0 ? -1 : 1;
}

/* After a done: waits awake up to spin_ns for the next step, in the step
 * box or on the socket. 1: a step from the box ran; -1: the engine must
 * exit; 0: read the socket (a message is there, or the wait is over). */
static int wait_awake(worker *w)
{
    zmq_pollitem_t item = {w->ctl, 0, ZMQ_POLLIN, 0};
    const int64_t end = mono_ns() + w->spin_ns;
    do {
        const int r = take_box(w);
        if (r != 0)
            return r;
        if (zmq_poll(&item, 1, 0) != 0) /* a message, or an error recv reports */
            return 0;
    } while (mono_ns() < end);
    live_busy(w->alive, true); /* what the last step queued ahead for the next one runs empty */
    apr_backend_idle(w->b);
    live_busy(w->alive, false);
    return 0;
}

/* Until shutdown (0), a broken socket (1) or a failed device (an engine's
 * ENGINE_EXIT_DEVICE). */
static int serve_loop(worker *w)
{
    bool stepped = false;
    for (;;) {
        char err[APR_ERRLEN];
        void *data = NULL;
        size_t len = 0;
        bool multipart = false;
        if (stepped && w->spin_ns > 0) {
            /* the next step follows the done by ~0.1 ms while the
             * coordinator streams: waiting awake for it saves wake-ups */
            const int r = wait_awake(w);
            if (r < 0)
                return ENGINE_EXIT_DEVICE;
            if (r > 0)
                continue;
        }
        int got = apr_zmq_recv(w->ctl, -1, &data, &len, &multipart, err);
        if (got < 0) {
            wlog(w->o->name, "receiving: %s", err);
            return 1;
        }
        if (got == 0)
            continue; /* EINTR */
        w->t_recv = mono_ns();
        apr_wmsg m;
        int rc = apr_wmsg_parse(data, len, &m, err);
        free(data);
        if (rc != 0) {
            wlog(w->o->name, "ignored a bad message: %s", err);
            continue;
        }
        if (multipart)
            wlog(w->o->name, "extra frames after a %s message dropped", apr_wtype_str(m.type));
        int end = -1;
        switch (m.type) {
        case APR_W_STEP:
            if (w->socket_step && m.step <= w->last_step)
                break; /* the copy of a step taken from the step box */
            if (run_step(w, &m) != 0)
                end = ENGINE_EXIT_DEVICE;
            w->socket_step = true;
            stepped = true;
            break;
        case APR_W_TRIM:
            run_trim(w, &m);
            break;
        case APR_W_SHUTDOWN:
            end = 0;
            break;
        default:
            wlog(w->o->name, "ignored a %s message (not for workers)", apr_wtype_str(m.type));
            break;
        }
        apr_wmsg_free(&m);
        if (end >= 0)
            return end;
    }
}

/* An engine's first steps: the holder's block, checked, then its liveness. */
static int engine_attach(worker *w, char err[APR_ERRLEN])
{
    if (apr_shm_attach(&w->block, w->o->ipc_fd, sizeof(engine_block), err) != 0)
        return -1;
    engine_block *blk = w->block.base;
    if (blk->magic != ENGINE_BLOCK_MAGIC) {
        snprintf(err, APR_ERRLEN, "--ipc-fd %d is not a holder's block", w->o->ipc_fd);
        return -1;
    }
    /* the holder may have died before this process asked to die with it */
    if ((int64_t)getppid() != blk->holder_pid) {
        snprintf(err, APR_ERRLEN, "the holder (pid %lld) is gone", (long long)blk->holder_pid);
        return -1;
    }
    w->live.blk = blk;
    w->live.busy_since = mono_ns();
    char why[APR_ERRLEN];
    if (ticker_start(&w->live.t, ENGINE_BEAT_MS, live_tick, &w->live, why) != 0) {
        snprintf(err, APR_ERRLEN, "liveness %.200s", why);
        return -1;
    }
    w->alive = &w->live;
    w->kv_kept = __atomic_load_n(&blk->generation, __ATOMIC_ACQUIRE) > 1;
    return 0;
}

/* Opens the backend and the logits memory; on failure err says why. */
static int setup(worker *w, char *err)
{
    const apr_worker_opts *o = w->o;
    apr_backend_opts bo = {.n_threads = o->n_threads, .n_ctx = o->n_ctx, .n_seq = o->n_seq};
    int64_t t0 = mono_ns();
    if (o->engine) {
        if (engine_attach(w, err) != 0)
            return -1;
        bo.import = ((engine_block *)w->block.base)->exp;
        bo.kv_kept = w->kv_kept;
    }
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
    w->scratch = malloc(need);
    if (w->scratch == NULL) {
        snprintf(err, APR_ERRLEN, "out of memory for %d logit rows of %d", o->max_logits, w->n_vocab);
        return -1;
    }
    if (apr_shm_attach(&w->logits, o->logits_fd, apr_logits_shm_bytes(need), err) != 0)
        return -1; /* the message names the fd and both sizes */
    wlog(o->name, "%s %s, %s: n_vocab %d, n_ctx %d, n_seq %d, %s in %.2f s", o->backend,
         o->engine ? "engine" : "backend", o->model, w->n_vocab, apr_backend_n_ctx(w->b), w->n_seq,
         !o->engine ? "loaded" : w->kv_kept ? "imported (KV cache kept)" : "imported",
         (double)(mono_ns() - t0) / 1e9);
    return 0;
}

int apr_worker_serve(const apr_worker_opts *o)
{
    if (!strcmp(o->backend, "cuda") && !o->engine)
        return apr_worker_hold(o);

    char err[APR_ERRLEN] = "";
    worker w = {.o = o};
    w.logits.fd = -1;
    w.block.fd = -1;
    heartbeat hb = {0};
    int status = 1;
    int linger = CTL_LINGER_MS;

    void *zctx = zmq_ctx_new();
    if (zctx == NULL) {
        wlog(o->name, "zmq_ctx_new: %s", zmq_strerror(errno));
        return 1;
    }
    /* beats first: loading a large model takes a while and must not look
     * like a hang. An engine's holder beats for it. */
    if (!o->engine && beat_start(&hb, zctx, o->endpoint, o->name, err) != 0) {
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
    w.spin_ns = 1000LL * (o->spin_us >= 0 ? o->spin_us : o->engine ? ENGINE_SPIN_US : 0);
    w.box_copy = malloc(sizeof ((apr_stepbox *)0)->msg);
    /* the tail figures are optional: without memory for them the line has means only */
    w.solo_backend.bin = calloc(HIST_BINS, sizeof *w.solo_backend.bin);
    w.solo_wait.bin = calloc(HIST_BINS, sizeof *w.solo_wait.bin);
    if (!w.box_copy) {
        snprintf(hello.error, sizeof hello.error, "out of memory");
        send_msg(&w, &hello);
        goto out;
    }
    hello.ok = true;
    hello.n_vocab = w.n_vocab;
    hello.n_ctx = apr_backend_n_ctx(w.b);
    hello.n_seq = w.n_seq;
    hello.max_batch = o->max_batch;
    hello.max_logits = o->max_logits;
    hello.kv_kept = w.kv_kept;
    if (send_msg(&w, &hello) != 0)
        goto out;
    if (w.alive) {
        live_busy(w.alive, false);
        engine_block *blk = w.block.base;
        __atomic_store_n(&blk->ready_ns, mono_ns(), __ATOMIC_RELEASE);
    }
    status = serve_loop(&w);
    if (w.solo_n > 0) {
        double n = (double)w.solo_n * 1e6;
        wlog(o->name, "%lld steps of one entry, per step: %.3f ms in the backend, %.3f ms in this loop "
             "(%.3f ms of it writing candidate or copied rows), %.3f ms from done to the next step",
             (long long)w.solo_n, (double)w.solo_backend_ns / n, (double)w.solo_loop_ns / n,
             (double)w.solo_rows_ns / n, (double)w.solo_wait_ns / n);
        if (w.solo_backend.n > 0 && w.solo_wait.n > 0)
            wlog(o->name, "steps of one entry, p50 / p99 / max: %.2f / %.2f / %.2f ms in the backend, "
                 "%.2f / %.2f / %.2f ms from done to the next step",
                 hist_ms(&w.solo_backend, 0.5), hist_ms(&w.solo_backend, 0.99),
                 (double)w.solo_backend.max_ns / 1e6, hist_ms(&w.solo_wait, 0.5), hist_ms(&w.solo_wait, 0.99),
                 (double)w.solo_wait.max_ns / 1e6);
    }

out:
    if (w.ctl)
        zmq_close(w.ctl);
    beat_stop(&hb);
    if (w.alive)
        ticker_stop(&w.alive->t);
    zmq_ctx_term(zctx);
    apr_shm_close(&w.logits);
    free(w.scratch);
    free(w.box_copy);
    free(w.solo_backend.bin);
    free(w.solo_wait.bin);
    apr_backend_close(w.b);
    apr_shm_close(&w.block);
    return status;
}
