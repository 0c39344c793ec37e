/* The holder of a CUDA worker: the process apr-coord starts for
 * `--backend cuda`. It owns the GPU memory that must outlive a crash (the
 * weights and the KV cache), sends the worker's heartbeats, and runs the
 * steps in another process, the engine (apr-worker --engine), which imports
 * that memory through CUDA IPC. An engine that dies (a signal, a sticky CUDA
 * error) or stops showing signs of life is replaced at once; the new one
 * says hello with kv_kept and the coordinator resumes its sequences where
 * they were: nothing is loaded again.
 *
 * Engines are started with posix_spawn, never by fork: a forked copy of a
 * process with a CUDA context cannot use CUDA. They are started from this
 * process's main thread, which lives as long as the process: an engine asks
 * to die with its parent (PR_SET_PDEATHSIG), and Linux sends that signal
 * when the thread that created it ends. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "worker/proc.h"

extern char **environ;

#define WATCH_MS 10 /* how often the holder looks at its engine: bounds the restart's detection delay */
#define ENGINE_SILENT_NS (2 * 1000000000LL) /* no beat for this long: hung, killed */
/* An engine that dies before its hello or this soon after it died quickly;
 * that many in a row is a crash loop that a fresh worker may escape (a
 * whole-worker restart has back-off), so the holder gives up. */
#define QUICK_NS (2 * 1000000000LL)
#define MAX_QUICK_DEATHS 5

typedef struct {
    const apr_worker_opts *o;
    engine_block *blk;
    int blk_fd;
    char exe[PATH_MAX]; /* this binary, as apr-coord started it */
    pid_t parent;       /* apr-coord */
    pid_t engine;       /* 0: none running */
} holder;

/* hello{ok:false} from a control socket of its own: the holder has no other
 * (its engine's is the worker's), and the coordinator should log why. */
static void refuse(void *zctx, const apr_worker_opts *o, const char *why)
{
    wlog(o->name, "%s", why);
    apr_wmsg hello = {.type = APR_W_HELLO, .pid = (int64_t)getpid()};
    snprintf(hello.backend, sizeof hello.backend, "%s", o->backend);
    snprintf(hello.error, sizeof hello.error, "%s", why);
    char err[APR_ERRLEN];
    int linger = CTL_LINGER_MS;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    void *s = zmq_socket(zctx, ZMQ_DEALER);
    if (s == NULL || zmq_setsockopt(s, ZMQ_ROUTING_ID, o->name, strlen(o->name)) != 0 ||
        zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger) != 0 || zmq_connect(s, o->endpoint) != 0)
        wlog(o->name, "control socket to %s: %s", o->endpoint, zmq_strerror(errno));
    else if (apr_wmsg_encode(&sb, &hello) != 0)
        wlog(o->name, "sending hello: out of memory");
    else if (apr_zmq_send(s, sb.data, sb.size, err) != 0)
        wlog(o->name, "sending hello: %s", err);
    if (s)
        zmq_close(s);
    msgpack_sbuffer_destroy(&sb);
}

/* The engine: this binary with the worker's own flags, --engine and the
 * block's fd. It inherits the block and the logits memory (neither is
 * close-on-exec). */
static pid_t spawn_engine(holder *h, char err[APR_ERRLEN])
{
    const apr_worker_opts *o = h->o;
    char ipc[16], lfd[16], thr[16], nseq[16], mb[16], ml[16], ctx[16];
    snprintf(ipc, sizeof ipc, "%d", h->blk_fd);
    snprintf(lfd, sizeof lfd, "%d", o->logits_fd);
    snprintf(thr, sizeof thr, "%d", o->n_threads);
    snprintf(nseq, sizeof nseq, "%d", o->n_seq);
    snprintf(mb, sizeof mb, "%d", o->max_batch);
    snprintf(ml, sizeof ml, "%d", o->max_logits);
    snprintf(ctx, sizeof ctx, "%d", o->n_ctx);
    char *argv[] = {h->exe, "--engine", "--ipc-fd", ipc, "--backend", (char *)o->backend,
                    "-m", (char *)o->model, "--connect", (char *)o->endpoint, "--name", (char *)o->name,
                    "--logits-fd", lfd, "--threads", thr, "--n-seq", nseq, "--max-batch", mb,
                    "--max-logits", ml,
                    o->n_ctx > 0 ? "--ctx" : NULL, ctx, /* 0: the backend's default, which --ctx cannot say */
                    NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, h->exe, NULL, NULL, argv, environ);
    if (rc != 0) {
        snprintf(err, APR_ERRLEN, "cannot start the engine %.160s: %.60s", h->exe, strerror(rc));
        return -1;
    }
    return pid;
}

static void kill_engine(holder *h, int *status)
{
    kill(h->engine, SIGKILL);
    while (waitpid(h->engine, status, 0) < 0 && errno == EINTR)
        ;
    h->engine = 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* a signal cutting it short only makes the next look sooner */
}

/* Watches the running engine until it is gone (true; *status as waitpid
 * says, *ready_ns its hello's time or 0) or the coordinator is (false).
 * since_ns: when the wait for this engine began, for the log. */
static bool watch(holder *h, int64_t since_ns, bool restart, int *status, int64_t *ready_ns)
{
    uint64_t last_beat = __atomic_load_n(&h->blk->beat, __ATOMIC_RELAXED);
    int64_t last_change = mono_ns();
    *ready_ns = 0;
    for (;;) {
        pid_t r = waitpid(h->engine, status, WNOHANG);
        if (r == h->engine || (r < 0 && errno == ECHILD)) {
            h->engine = 0;
            return true;
        }
        if (getppid() != h->parent) {
            kill_engine(h, status);
            return false;
        }
        int64_t now = mono_ns();
        if (*ready_ns == 0 && (*ready_ns = __atomic_load_n(&h->blk->ready_ns, __ATOMIC_ACQUIRE)) != 0)
            wlog(h->o->name, "engine pid %d serving, %.1f ms after %s", (int)h->engine,
                 (double)(*ready_ns - since_ns) / 1e6,
                 restart ? "the last one died (weights and KV cache kept)" : "it was started");
        uint64_t beat = __atomic_load_n(&h->blk->beat, __ATOMIC_RELAXED);
        if (beat != last_beat) {
            last_beat = beat;
            last_change = now;
        } else if (now - last_change > ENGINE_SILENT_NS) {
            wlog(h->o->name, "engine pid %d showed no sign of life for %.1f s: killing it", (int)h->engine,
                 (double)(now - last_change) / 1e9);
            kill_engine(h, status);
            return true;
        }
        sleep_ms(WATCH_MS);
    }
}

static void describe(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status) && WEXITSTATUS(status) == ENGINE_EXIT_DEVICE)
        snprintf(buf, len, "exited after a device error");
    else
        snprintf(buf, len, "exited with status %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* Runs engines until one ends the worker: 0 after the coordinator's
 * shutdown, 1 when an engine could not start or they keep dying, or the
 * coordinator is gone. */
static int supervise(holder *h)
{
    int quick = 0;
    int64_t died_ns = 0; /* when the last engine was found dead; 0 before the first start */
    for (uint64_t gen = 1;; gen++) {
        __atomic_store_n(&h->blk->ready_ns, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&h->blk->generation, gen, __ATOMIC_RELEASE);
        int64_t started = mono_ns();
        char err[APR_ERRLEN];
        h->engine = spawn_engine(h, err);
        if (h->engine < 0) {
            h->engine = 0;
            wlog(h->o->name, "%s", err);
            return 1;
        }
        pid_t pid = h->engine;
        int status = 0;
        int64_t ready = 0;
        if (!watch(h, died_ns ? died_ns : started, died_ns != 0, &status, &ready))
            return 1; /* we are about to die with the coordinator anyway */
        died_ns = mono_ns();

        char how[96];
        describe(status, how, sizeof how);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
            return 0; /* the coordinator's shutdown */
        if (ready == 0 && WIFEXITED(status) && (WEXITSTATUS(status) == 1 || WEXITSTATUS(status) == 2)) {
            /* it refused (its hello ok=false says why) or was given bad flags:
             * another one would do the same */
            wlog(h->o->name, "engine pid %d could not start (it %s)", (int)pid, how);
            return 1;
        }
        quick = ready == 0 || died_ns - ready < QUICK_NS ? quick + 1 : 0;
        if (quick >= MAX_QUICK_DEATHS) {
            wlog(h->o->name, "engine pid %d %s, the %dth in a row to die within %.0f s of starting: giving up",
                 (int)pid, how, quick, QUICK_NS / 1e9);
            return 1;
        }
        wlog(h->o->name, "engine pid %d %s; starting another on the same weights and KV cache", (int)pid, how);
    }
}

int apr_worker_hold(const apr_worker_opts *o)
{
    char err[APR_ERRLEN] = "";
    int status = 1;
    heartbeat hb = {0};
    apr_shm block = {.fd = -1};
    apr_backend_hold *mem = NULL;
    holder h = {.o = o, .parent = getppid()};

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
    ssize_t n = readlink("/proc/self/exe", h.exe, sizeof h.exe - 1);
    if (n <= 0) {
        snprintf(err, sizeof err, "cannot find its own binary: %s", strerror(errno));
        refuse(zctx, o, err);
        goto out;
    }
    h.exe[n] = 0;
    if (apr_shm_create(&block, o->name, sizeof(engine_block), err) != 0) {
        refuse(zctx, o, err);
        goto out;
    }
    h.blk = block.base;
    h.blk_fd = block.fd;
    h.blk->magic = ENGINE_BLOCK_MAGIC;
    h.blk->holder_pid = (int64_t)getpid();

    apr_backend_opts bo = {.n_threads = o->n_threads, .n_ctx = o->n_ctx, .n_seq = o->n_seq};
    int64_t t0 = mono_ns();
    char why[APR_ERRLEN];
    mem = apr_backend_hold_open(o->backend, o->model, &bo, h.blk->exp, why);
    if (mem == NULL) {
        /* the coordinator logs this line as it is: say which file */
        snprintf(err, sizeof err, "%.120s: %.128s", o->model, why);
        refuse(zctx, o, err);
        goto out;
    }
    wlog(o->name, "%s holder, %s: weights and KV cache loaded in %.2f s; starting the engine", o->backend,
         o->model, (double)(mono_ns() - t0) / 1e9);
    status = supervise(&h);

out:
    if (h.engine > 0)
        kill_engine(&h, &(int){0});
    /* only now: the memory must outlive every engine that maps it */
    apr_backend_hold_close(mem);
    apr_shm_close(&block);
    beat_stop(&hb);
    zmq_ctx_term(zctx);
    return status;
}
