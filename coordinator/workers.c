/* The supervisor: starts apr-worker processes, reads their hello, heartbeats
 * and step results, and restarts any that die or go silent. Workers are
 * exec'd children in their own process group; each inherits its logits
 * segment by fd and dies with the coordinator (PR_SET_PDEATHSIG). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coordinator/coord.h"

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "apr-coord: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static const double backoff_s[] = {0.0, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0};

static void spawn(coord *c, worker *w)
{
    char fdbuf[16], ctx[16], nseq[16], thr[16], maxb[16], maxl[16];
    snprintf(fdbuf, sizeof fdbuf, "%d", w->logits.fd);
    snprintf(ctx, sizeof ctx, "%d", c->n_ctx);
    snprintf(nseq, sizeof nseq, "%d", c->o.max_batch);
    snprintf(thr, sizeof thr, "%d", c->o.n_threads);
    snprintf(maxb, sizeof maxb, "%d", c->o.chunk + c->o.max_batch);
    snprintf(maxl, sizeof maxl, "%d", c->o.max_batch);
    char *argv[] = {(char *)c->o.worker_bin, "--backend", w->backend, "-m", (char *)c->o.model_path,
                    "--connect", c->wendpoint, "--name", w->name, "--logits-fd", fdbuf,
                    "--ctx", ctx, "--n-seq", nseq, "--max-batch", maxb, "--max-logits", maxl,
                    c->o.n_threads > 0 ? "--threads" : NULL, thr, NULL};

    w->starts++;
    if (w->starts > 1) {
        w->restarts++;
        c->restarts++;
    }
    w->state = W_STARTING;
    w->busy = false;
    w->last_sent_step = false;
    w->started_at = w->last_hb = coord_now();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(w->last_error, sizeof w->last_error, "fork: %s", strerror(errno));
        logf_("worker %s: %s", w->name, w->last_error);
        w->state = W_DOWN;
        w->retry_at = coord_now() + 1.0;
        return;
    }
    if (pid == 0) {
        /* only async-signal-safe calls until exec: the parent has threads */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setpgid(0, 0); /* a Ctrl-C for the coordinator is its business, not the worker's */
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* survives exec: no orphan if we die right now */
        fcntl(w->logits.fd, F_SETFD, 0);
        execv(c->o.worker_bin, argv);
        static const char msg[] = "apr-coord: cannot exec the worker binary\n";
        if (write(2, msg, sizeof msg - 1) < 0) _exit(127);
        _exit(127);
    }
    w->pid = pid;
    logf_("worker %s (%s) started, pid %d%s", w->name, w->backend, (int)pid,
          w->starts > 1 ? " (restart)" : "");
}

int workers_start(coord *c, char err[APR_ERRLEN])
{
    char list[64];
    snprintf(list, sizeof list, "%s", c->o.workers);
    int n_cpu = 0, n_cuda = 0;
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (c->n_workers == COORD_MAX_WORKERS) {
            snprintf(err, APR_ERRLEN, "--workers: at most %d workers", COORD_MAX_WORKERS);
            return -1;
        }
        worker *w = &c->workers[c->n_workers];
        memset(w, 0, sizeof *w);
        w->logits.fd = -1;
        if (!strcmp(t, "cpu"))
            snprintf(w->name, sizeof w->name, "cpu%d", n_cpu++);
        else if (!strcmp(t, "cuda"))
            snprintf(w->name, sizeof w->name, "cuda%d", n_cuda++);
        else {
            snprintf(err, APR_ERRLEN, "--workers: unknown backend '%s' (cpu or cuda)", t);
            return -1;
        }
        snprintf(w->backend, sizeof w->backend, "%s", t);
        size_t bytes = apr_logits_shm_bytes((size_t)c->o.max_batch * (size_t)c->n_vocab * sizeof(float));
        if (apr_shm_create(&w->logits, w->name, bytes, err) < 0) return -1;
        /* only the worker it belongs to may inherit it (spawn clears this in the child) */
        fcntl(w->logits.fd, F_SETFD, FD_CLOEXEC);
        c->n_workers++;
    }
    if (c->n_workers == 0) {
        snprintf(err, APR_ERRLEN, "--workers: empty list");
        return -1;
    }
    for (int i = 0; i < c->n_workers; i++) spawn(c, &c->workers[i]);
    return 0;
}

static worker *find(coord *c, const unsigned char *ident, size_t len, bool *hb)
{
    for (int i = 0; i < c->n_workers; i++) {
        worker *w = &c->workers[i];
        size_t n = strlen(w->name);
        if (len == n && !memcmp(ident, w->name, n)) {
            *hb = false;
            return w;
        }
        if (len == n + 3 && !memcmp(ident, w->name, n) && !memcmp(ident + n, ".hb", 3)) {
            *hb = true;
            return w;
        }
    }
    return NULL;
}

/* The worker that should run the sequences: the first ready one in --workers
 * order, so a restarted GPU worker takes the traffic back from the CPU. */
static void pick_active(coord *c)
{
    int best = -1;
    for (int i = 0; i < c->n_workers && best < 0; i++)
        if (c->workers[i].state == W_READY) best = i;
    if (best == c->active) return;
    if (c->active >= 0 && c->workers[c->active].busy) return; /* switch after its step */
    if (best >= 0)
        logf_("sequences now run on worker %s", c->workers[best].name);
    c->active = best;
    sched_rewind(c);
}

/* reaped: waitpid already collected the process (its pid may be reused). */
static void lose(coord *c, worker *w, const char *why, bool reaped)
{
    if (w->state == W_DOWN) return;
    logf_("worker %s (pid %d) lost: %s; restarting", w->name, (int)w->pid, why);
    snprintf(w->last_error, sizeof w->last_error, "%s", why);
    if (w->pid > 0 && !reaped) {
        kill(w->pid, SIGKILL);
        waitpid(w->pid, NULL, 0);
    }
    w->pid = 0;
    bool was_active = c->active == (int)(w - c->workers);
    w->state = W_DOWN;
    w->busy = false;
    if (!w->ever_ready) w->failures++;
    else w->failures = 1;
    int k = w->failures < (int)(sizeof backoff_s / sizeof backoff_s[0]) ? w->failures
                                                                         : (int)(sizeof backoff_s / sizeof backoff_s[0]) - 1;
    w->retry_at = coord_now() + backoff_s[k];
    if (was_active) {
        c->active = -1;
        sched_rewind(c);
    }
    pick_active(c);
}

void worker_lost(coord *c, worker *w, const char *why) { lose(c, w, why, false); }

void workers_poll(coord *c)
{
    double now = coord_now();
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < c->n_workers; i++) {
            worker *w = &c->workers[i];
            if (w->pid != pid) continue;
            char why[96];
            if (WIFSIGNALED(status))
                snprintf(why, sizeof why, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
            else
                snprintf(why, sizeof why, "exited with status %d", WEXITSTATUS(status));
            if (w->state != W_DOWN) {
                char msg[APR_ERRLEN + 128];
                if (w->state == W_STARTING && w->last_error[0])
                    snprintf(msg, sizeof msg, "%s: %s", why, w->last_error);
                else
                    snprintf(msg, sizeof msg, "%s", why);
                lose(c, w, msg, true);
            }
            w->pid = 0;
        }
    }
    for (int i = 0; i < c->n_workers; i++) {
        worker *w = &c->workers[i];
        if (w->state != W_DOWN && now - w->last_hb > c->o.hb_timeout_ms / 1000.0) {
            char why[96];
            snprintf(why, sizeof why, "no heartbeat for %.1f s", now - w->last_hb);
            worker_lost(c, w, why);
        }
        if (w->state == W_DOWN && !c->stopping && now >= w->retry_at) spawn(c, w);
    }
}

int worker_send(coord *c, worker *w, const apr_wmsg *m)
{
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    char err[APR_ERRLEN];
    bool unreachable = false;
    int rc = apr_wmsg_encode(&b, m);
    if (rc == 0 && m->type == APR_W_STEP && w->last_sent_step && w->logits.base &&
        b.size <= sizeof ((apr_stepbox *)0)->msg) {
        /* the previous message was the previous step, done: nothing the
         * worker has not run can be ahead of this one (proto.h, step box) */
        apr_stepbox *box = apr_stepbox_of(&w->logits);
        memcpy(box->msg, b.data, b.size);
        __atomic_store_n(&box->len, (uint32_t)b.size, __ATOMIC_RELAXED);
        __atomic_store_n(&box->step, m->step, __ATOMIC_RELEASE);
    }
    w->last_sent_step = m->type == APR_W_STEP;
    if (rc == 0) {
        rc = apr_zmq_router_send(c->wsock, w->name, strlen(w->name), b.data, b.size, err);
        unreachable = rc < 0 && errno == EHOSTUNREACH; /* zmq_send's, kept by the helper */
    } else {
        snprintf(err, sizeof err, "out of memory");
    }
    msgpack_sbuffer_destroy(&b);
    /* A CUDA worker's engine may be between two lives while its holder still
     * beats: the next engine's hello resumes the sequences (on_engine_restart)
     * and what did not get through is sent again then. */
    if (unreachable && w->state == W_READY && !strcmp(w->backend, "cuda")) return 0;
    if (rc < 0) worker_lost(c, w, err);
    return rc;
}

/* A hello from a worker that is already serving: its holder replaced a dead
 * engine (CUDA). With the KV cache kept, the sequences continue from the
 * positions the coordinator knows were computed; the step in flight is lost
 * and simply sent again. */
static void on_engine_restart(coord *c, worker *w, const apr_wmsg *m)
{
    if (!m->ok || m->pid == w->engine_pid) {
        worker_lost(c, w, !m->ok ? m->error : "a second hello");
        return;
    }
    w->restarts++;
    c->restarts++;
    w->busy = false;
    w->last_sent_step = false; /* a new process: its first step goes by the socket alone */
    w->engine_pid = (pid_t)m->pid;
    bool active = c->active == (int)(w - c->workers);
    logf_("worker %s: engine restarted (pid %d), KV cache %s", w->name, (int)m->pid,
          m->kv_kept ? "kept: sequences resume where they were" : "lost: sequences are prefilled again");
    if (active) sched_engine_restart(c, w, m->kv_kept);
}

static void on_hello(coord *c, worker *w, const apr_wmsg *m)
{
    if (w->state == W_READY) {
        on_engine_restart(c, w, m);
        return;
    }
    if (w->state != W_STARTING) {
        worker_lost(c, w, "a hello out of turn");
        return;
    }
    if (!m->ok) {
        snprintf(w->last_error, sizeof w->last_error, "%s", m->error);
        logf_("worker %s could not start: %s", w->name, m->error);
        return; /* it exits; workers_poll reaps it and retries with back-off */
    }
    if (m->n_vocab != c->n_vocab || m->n_ctx < c->n_ctx || m->n_seq < c->o.max_batch ||
        m->max_logits < c->o.max_batch || m->max_batch < 1) {
        char why[160];
        snprintf(why, sizeof why, "hello does not match (vocab %d/%d, ctx %d/%d, seq %d/%d, logits %d/%d)",
                 m->n_vocab, c->n_vocab, m->n_ctx, c->n_ctx, m->n_seq, c->o.max_batch, m->max_logits,
                 c->o.max_batch);
        snprintf(w->last_error, sizeof w->last_error, "%s", why);
        worker_lost(c, w, why);
        return;
    }
    w->n_vocab = m->n_vocab;
    w->n_ctx = m->n_ctx;
    w->n_seq = m->n_seq;
    w->max_batch = m->max_batch;
    w->max_logits = m->max_logits;
    w->state = W_READY;
    w->engine_pid = (pid_t)m->pid;
    w->ever_ready = true;
    w->failures = 0;
    w->last_error[0] = 0;
    logf_("worker %s ready in %.2f s (pid %d)", w->name, coord_now() - w->started_at, (int)w->pid);
    pick_active(c);
}

/* The step in flight on w is over (its done message, or its doorbell). */
static void step_done(coord *c, worker *w, const apr_wmsg *m)
{
    w->busy = false;
    sched_on_done(c, w, m);
    pick_active(c); /* a switch waits for the step in flight */
}

void workers_on_frame(coord *c, const unsigned char *ident, size_t ident_len, const void *data,
                      size_t len)
{
    bool hb = false;
    worker *w = find(c, ident, ident_len, &hb);
    if (!w) return; /* a stray peer on our private socket: ignore */
    apr_wmsg m;
    char err[APR_ERRLEN];
    if (apr_wmsg_parse(data, len, &m, err) < 0) {
        if (w->state != W_DOWN) {
            char why[APR_ERRLEN + 32];
            snprintf(why, sizeof why, "bad message: %s", err);
            worker_lost(c, w, why);
        }
        apr_wmsg_free(&m);
        return;
    }
    /* Heartbeats come from the process we started (a CPU worker, or a CUDA
     * worker's holder): any other pid is one we already gave up on. */
    if (w->state == W_DOWN || (m.type == APR_W_HB && m.pid != w->pid)) {
        apr_wmsg_free(&m);
        return;
    }
    if (m.type == APR_W_HB) w->last_hb = coord_now();
    if (hb) {
        apr_wmsg_free(&m);
        return;
    }
    switch (m.type) {
    case APR_W_HELLO:
        on_hello(c, w, &m);
        break;
    case APR_W_HB:
        break;
    case APR_W_DONE:
        /* Step ids only grow, so an older id is the answer of a process we
         * already replaced (it was queued when that one died): drop it. */
        if (w->state != W_READY || !w->busy || m.step < w->step_id) break;
        if (m.step != w->step_id) {
            worker_lost(c, w, "a result for a step never sent");
            break;
        }
        step_done(c, w, &m);
        break;
    default:
        worker_lost(c, w, "an unexpected message type");
        break;
    }
    apr_wmsg_free(&m);
}

/* The dones that ready workers rang in shared memory for their step in
 * flight, taken as the message would be (the message, when it comes, is an
 * old step's and is dropped). True if there was one. */
bool workers_doorbells(coord *c)
{
    bool any = false;
    for (int i = 0; i < c->n_workers; i++) {
        worker *w = &c->workers[i];
        if (w->state != W_READY || !w->busy || !w->logits.base) continue;
        const apr_doorbell *db = apr_doorbell_of(&w->logits);
        if (__atomic_load_n(&db->step, __ATOMIC_ACQUIRE) != w->step_id) continue;
        apr_wmsg m;
        memset(&m, 0, sizeof m);
        m.type = APR_W_DONE;
        m.step = w->step_id;
        m.ok = true;
        m.n_logits = __atomic_load_n(&db->n_logits, __ATOMIC_RELAXED);
        step_done(c, w, &m); /* checks n_logits against the step as for a message */
        any = true;
    }
    return any;
}

void workers_stop(coord *c)
{
    apr_wmsg m;
    memset(&m, 0, sizeof m);
    m.type = APR_W_SHUTDOWN;
    for (int i = 0; i < c->n_workers; i++) {
        worker *w = &c->workers[i];
        if (w->pid > 0 && w->state == W_READY) worker_send(c, w, &m);
    }
    double deadline = coord_now() + 2.0;
    for (int i = 0; i < c->n_workers; i++) {
        worker *w = &c->workers[i];
        while (w->pid > 0 && coord_now() < deadline) {
            if (waitpid(w->pid, NULL, WNOHANG) == w->pid) w->pid = 0;
            else usleep(10000);
        }
        if (w->pid > 0) {
            kill(w->pid, SIGKILL);
            waitpid(w->pid, NULL, 0);
            w->pid = 0;
        }
        apr_shm_close(&w->logits);
        w->state = W_DOWN;
    }
}
