/* apr-worker as a real process, driven the way apr-coord drives it: a ROUTER
 * on ipc://, a memfd for the logits, hello, steps, trim, shutdown. The logits
 * it leaves in shared memory must equal an in-process backend run on the same
 * batches. Also: heartbeats, refused steps that leave it serving, refused
 * models and backends (hello ok=false, exit 1), and death with its parent.
 *
 * The binary is $APR_BIN/apr-worker (tests/run_tests.sh sets APR_BIN to the
 * build being tested, so the ASan run drives the ASan worker), else
 * build/apr-worker. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proto/proto.h"
#include "worker/backend.h"
#include "ref_topk.h"

#define N_SEQ 2
#define N_CTX 64
#define MAX_BATCH 16
#define MAX_LOGITS 8
#define HELLO_MS 60000 /* model load under ASan on a busy machine */
#define DONE_MS 30000

static char model[512], worker_bin[512];

static bool have_fixtures(void)
{
    const char *shared = getenv("SHARED") ? getenv("SHARED") : "../shared";
    snprintf(model, sizeof model, "%s/models/stories260K.gguf", shared);
    return access(model, R_OK) == 0;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ------------------------------------------------- a small coordinator */

typedef struct {
    char dir[256], endpoint[300], name[32];
    void *zctx, *router;
    apr_shm shm;
    pid_t pid;    /* the worker */
    int64_t want_pid; /* what its messages must say (0: the same as pid) */
    int heartbeats;
    uint64_t next_step;
} harness;

static void h_open(harness *h, const char *name, size_t shm_bytes)
{
    memset(h, 0, sizeof *h);
    h->shm.fd = -1;
    snprintf(h->name, sizeof h->name, "%s", name);
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(h->dir, sizeof h->dir, "%s/apr-test-worker-XXXXXX", tmp);
    ck_assert_msg(mkdtemp(h->dir) != NULL, "mkdtemp %s: %s", h->dir, strerror(errno));
    snprintf(h->endpoint, sizeof h->endpoint, "ipc://%s/w", h->dir);
    char err[APR_ERRLEN];
    ck_assert_msg(apr_shm_create(&h->shm, "apr-test-logits", shm_bytes, err) == 0, "%s", err);
}

/* Binds the ROUTER (before or after the worker starts: it reconnects). */
static void h_bind(harness *h)
{
    h->zctx = zmq_ctx_new();
    h->router = zmq_socket(h->zctx, ZMQ_ROUTER);
    int linger = 0;
    zmq_setsockopt(h->router, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_msg(zmq_bind(h->router, h->endpoint) == 0, "bind %s: %s", h->endpoint, zmq_strerror(errno));
}

/* Starts apr-worker with the common options plus extra (NULL-terminated);
 * its stderr goes to errlog when given. */
static void h_spawn(harness *h, const char *backend, const char *model_path, const char *const *extra,
                    const char *errlog)
{
    char fd[16];
    snprintf(fd, sizeof fd, "%d", h->shm.fd);
    const char *argv[40] = {worker_bin, "--backend", backend, "-m", model_path, "--connect", h->endpoint,
                            "--name", h->name, "--logits-fd", fd};
    int argc = 11;
    for (int i = 0; extra && extra[i]; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        /* async-signal-safe calls only: the backend's threads exist here */
        if (errlog) {
            int e = open(errlog, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (e >= 0)
                dup2(e, 2);
        }
        execv(worker_bin, (char *const *)argv);
        _exit(127);
    }
    h->pid = pid;
}

/* The next message on the control socket; heartbeats are checked and counted
 * on the way. 0 when nothing came in time. */
static int h_next(harness *h, int timeout_ms, apr_wmsg *m)
{
    double end = now_ms() + timeout_ms;
    size_t nlen = strlen(h->name);
    int64_t pid = h->want_pid ? h->want_pid : h->pid;
    for (;;) {
        int left = (int)(end - now_ms());
        if (left <= 0)
            return 0;
        apr_zframe f;
        char err[APR_ERRLEN];
        int rc = apr_zmq_router_recv(h->router, left, &f, err);
        ck_assert_msg(rc >= 0, "%s", err);
        if (rc == 0)
            continue;
        rc = apr_wmsg_parse(zmq_msg_data(&f.body), zmq_msg_size(&f.body), m, err);
        ck_assert_msg(rc == 0, "the worker sent a bad message: %s", err);
        ck_assert(!f.multipart);
        bool is_hb = f.ident_len == nlen + 3 && !memcmp(f.ident, h->name, nlen) &&
                     !memcmp(f.ident + nlen, ".hb", 3);
        bool is_ctl = f.ident_len == nlen && !memcmp(f.ident, h->name, nlen);
        apr_zframe_close(&f);
        ck_assert_msg(is_hb || is_ctl, "a message from an unknown routing id");
        if (is_hb) {
            ck_assert_msg(m->type == APR_W_HB, "%s on the heartbeat socket", apr_wtype_str(m->type));
            ck_assert_int_eq(m->pid, pid);
            h->heartbeats++;
            apr_wmsg_free(m);
            continue;
        }
        ck_assert_msg(m->type != APR_W_HB, "a heartbeat on the control socket");
        return 1;
    }
}

static void h_send(harness *h, const apr_wmsg *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    ck_assert_int_eq(apr_wmsg_encode(&sb, m), 0);
    char err[APR_ERRLEN];
    ck_assert_msg(apr_zmq_router_send(h->router, h->name, strlen(h->name), sb.data, sb.size, err) == 0,
                  "%s", err);
    msgpack_sbuffer_destroy(&sb);
}

static void h_send_raw(harness *h, const void *data, size_t len)
{
    char err[APR_ERRLEN];
    ck_assert_msg(apr_zmq_router_send(h->router, h->name, strlen(h->name), data, len, err) == 0, "%s", err);
}

/* The exit status (as waitpid gives it), or -1 when it did not end in time. */
static int wait_exit(pid_t pid, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    while (now_ms() < end) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        ck_assert_int_eq(r, 0);
        usleep(10000);
    }
    return -1;
}

static void h_close(harness *h)
{
    if (h->pid > 0 && waitpid(h->pid, NULL, WNOHANG) == 0) {
        kill(h->pid, SIGKILL);
        waitpid(h->pid, NULL, 0);
    }
    if (h->router)
        zmq_close(h->router);
    if (h->zctx)
        zmq_ctx_term(h->zctx);
    apr_shm_close(&h->shm);
    char path[320];
    snprintf(path, sizeof path, "%s/w", h->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/err.log", h->dir);
    unlink(path);
    rmdir(h->dir);
}

static apr_wmsg wait_hello(harness *h)
{
    apr_wmsg m;
    ck_assert_msg(h_next(h, HELLO_MS, &m) == 1, "no hello from the worker in %d ms", HELLO_MS);
    ck_assert_msg(m.type == APR_W_HELLO, "first message is %s, not hello", apr_wtype_str(m.type));
    return m;
}

/* ------------------------------------------------------------ steps */

typedef struct {
    int n;
    int32_t token[MAX_BATCH + 4], pos[MAX_BATCH + 4], seq[MAX_BATCH + 4];
    uint8_t want[MAX_BATCH + 4];
    uint8_t topk[MAX_BATCH + 4]; /* candidates asked per entry, 0: the full row */
} batch;

static void add(batch *b, int32_t seq, int32_t pos, int32_t token, bool want)
{
    ck_assert_int_lt(b->n, MAX_BATCH + 4);
    b->seq[b->n] = seq;
    b->pos[b->n] = pos;
    b->token[b->n] = token;
    b->want[b->n] = want;
    b->n++;
}

/* Sends the batch as the next step and returns the worker's done. */
static apr_wmsg run_remote(harness *h, const batch *b)
{
    apr_wmsg step = {.type = APR_W_STEP, .step = h->next_step++, .n = b->n, .token = (int32_t *)b->token,
                     .pos = (int32_t *)b->pos, .seq = (int32_t *)b->seq, .want = (uint8_t *)b->want,
                     .topk = (uint8_t *)b->topk};
    h_send(h, &step);
    apr_wmsg done;
    ck_assert_msg(h_next(h, DONE_MS, &done) == 1, "no done for step %llu", (unsigned long long)step.step);
    ck_assert_msg(done.type == APR_W_DONE, "got %s, expected done", apr_wtype_str(done.type));
    ck_assert_msg(done.step == step.step, "done for step %llu, expected %llu",
                  (unsigned long long)done.step, (unsigned long long)step.step);
    return done;
}

/* Candidate row `row` (proto.h) must hold exactly the k best of want[]. */
static void check_cand_row(const void *row, const float *want, int nv, int k)
{
    ref_pair best[APR_TOPK_MAX];
    int n = ref_topk(want, nv, k, best);
    int32_t cnt;
    memcpy(&cnt, row, sizeof cnt);
    ck_assert_int_eq(cnt, n);
    for (int j = 0; j < n; j++) {
        apr_wcand c;
        memcpy(&c, (const unsigned char *)row + APR_TOPK_ROW_BYTES(j), sizeof c);
        ck_assert_msg(c.id == best[j].id, "candidate %d of %d: id %d, want %d", j, k, c.id, best[j].id);
        ck_assert_msg(c.logit == best[j].l, "candidate %d: logit %g, want %g", j, c.logit, best[j].l);
    }
}

/* The step on both sides; the worker's logits rows must equal ours, and its
 * candidate rows must be the top-K of ours. */
static float run_both(harness *h, apr_backend *ref, const batch *b)
{
    int nv = (int)apr_backend_hparams(ref)->n_vocab, rows = 0;
    for (int i = 0; i < b->n; i++)
        rows += b->want[i];
    apr_wmsg done = run_remote(h, b);
    ck_assert_msg(done.ok, "step refused: %s", done.error);
    ck_assert_int_eq(done.n_logits, rows);
    ck_assert(done.ms >= 0);
    /* the doorbell rang for this step before the message came */
    const apr_doorbell *db = apr_doorbell_of(&h->shm);
    ck_assert_uint_eq(__atomic_load_n(&db->step, __ATOMIC_ACQUIRE), done.step);
    ck_assert_int_eq(db->n_logits, rows);

    float *want = malloc(sizeof(float) * (size_t)(rows ? rows : 1) * (size_t)nv);
    char err[APR_ERRLEN];
    apr_batch ab = {.n = b->n, .token = b->token, .pos = b->pos, .seq = b->seq, .want_logits = b->want};
    ck_assert_msg(apr_backend_step(ref, &ab, want, err) == 0, "reference: %s", err);
    const float *got = h->shm.base;
    float worst = 0;
    for (int i = 0, r = 0; i < b->n; i++) {
        if (!b->want[i])
            continue;
        size_t at = (size_t)r++ * (size_t)nv;
        if (b->topk[i]) {
            check_cand_row(got + at, want + at, nv, b->topk[i]);
            continue;
        }
        for (size_t j = at; j < at + (size_t)nv; j++) {
            float d = fabsf(got[j] - want[j]) / fmaxf(1.0f, fabsf(want[j]));
            worst = fmaxf(worst, d);
        }
    }
    free(want);
    ck_assert_msg(worst <= 1e-6f, "logits differ from the in-process backend by %g", worst);
    return worst;
}

static void expect_refused(harness *h, const batch *b, const char *in_msg)
{
    const uint64_t rung = apr_doorbell_of(&h->shm)->step;
    apr_wmsg done = run_remote(h, b);
    ck_assert_msg(!done.ok, "a bad step was accepted (expected '%s')", in_msg);
    ck_assert_uint_eq(apr_doorbell_of(&h->shm)->step, rung); /* a refusal rings no bell */
    ck_assert_int_eq(done.n_logits, 0);
    ck_assert_msg(strstr(done.error, in_msg), "error '%s' does not say '%s'", done.error, in_msg);
}

static apr_backend *open_reference(void)
{
    char err[APR_ERRLEN] = "";
    apr_backend_opts o = {.n_threads = 1, .n_ctx = N_CTX, .n_seq = N_SEQ};
    apr_backend *b = apr_backend_open("cpu", model, &o, err);
    ck_assert_msg(b != NULL, "open %s: %s", model, err);
    return b;
}

/* The reference backend (*nv: its vocabulary) and a CPU worker with opts
 * serving the same model on h's sockets and logits segment. */
static apr_backend *start_cpu_worker(harness *h, const char *const *opts, int *nv)
{
    apr_backend *ref = open_reference();
    *nv = (int)apr_backend_hparams(ref)->n_vocab;
    h_open(h, "w0", apr_logits_shm_bytes(sizeof(float) * (size_t)MAX_LOGITS * (size_t)*nv));
    h_bind(h);
    h_spawn(h, "cpu", model, opts, NULL);
    return ref;
}

static const char *const serve_opts[] = {"--threads", "1", "--ctx", "64", "--n-seq", "2",
                                         "--max-batch", "16", "--max-logits", "8", NULL};

START_TEST(serves_like_the_backend)
{
    harness h;
    int nv;
    apr_backend *ref = start_cpu_worker(&h, serve_opts, &nv);

    apr_wmsg hello = wait_hello(&h);
    ck_assert_msg(hello.ok, "hello refused: %s", hello.error);
    ck_assert_str_eq(hello.backend, "cpu");
    ck_assert_int_eq(hello.pid, h.pid);
    ck_assert_int_eq(hello.n_vocab, nv);
    ck_assert_int_eq(hello.n_ctx, N_CTX);
    ck_assert_int_eq(hello.n_seq, N_SEQ);
    ck_assert_int_eq(hello.max_batch, MAX_BATCH);
    ck_assert_int_eq(hello.max_logits, MAX_LOGITS);

    /* prefill of two prompts in one step, rows for a middle and both last entries */
    static const int32_t p0[5] = {1, 403, 407, 261, 378}, p1[3] = {1, 432, 383};
    batch b = {0};
    for (int i = 0; i < 5; i++)
        add(&b, 0, i, p0[i], i == 2 || i == 4);
    for (int i = 0; i < 3; i++)
        add(&b, 1, i, p1[i], i == 2);
    float worst = run_both(&h, ref, &b);
    int len0 = 5, len1 = 3;

    /* decode steps over both sequences */
    for (int k = 0; k < 3; k++) {
        b = (batch){0};
        add(&b, 0, len0++, 286 + k, true);
        add(&b, 1, len1++, 261 + k, true);
        worst = fmaxf(worst, run_both(&h, ref, &b));
    }

    /* refused steps leave the worker serving, its sequences untouched */
    b = (batch){0};
    add(&b, 0, len0 + 2, 300, true);
    expect_refused(&h, &b, "expects position");
    b = (batch){0};
    for (int i = 0; i < MAX_BATCH + 1; i++)
        add(&b, 1, len1 + i, 300, false);
    expect_refused(&h, &b, "at most 16");
    b = (batch){0};
    for (int i = 0; i < MAX_LOGITS + 1; i++)
        add(&b, 1, len1 + i, 300, true);
    expect_refused(&h, &b, "holds 8");
    b = (batch){0};
    add(&b, 2, 0, 300, true);
    expect_refused(&h, &b, "sequence 2 out of range");

    /* a frame that does not parse and a trim of a sequence it does not
     * have are logged and ignored */
    h_send_raw(&h, "\xc1", 1);
    apr_wmsg trim = {.type = APR_W_TRIM, .trim_seq = 7, .trim_from = 0};
    h_send(&h, &trim);

    /* trim: sequence 1 forgets positions >= 2, then continues from there */
    trim = (apr_wmsg){.type = APR_W_TRIM, .trim_seq = 1, .trim_from = 2};
    h_send(&h, &trim);
    apr_backend_seq_trim(ref, 1, 2);
    len1 = 2;
    b = (batch){0};
    add(&b, 0, len0++, 290, true);
    add(&b, 1, len1++, 291, false);
    add(&b, 1, len1++, 292, true);
    worst = fmaxf(worst, run_both(&h, ref, &b));
    /* 0 clears it */
    trim.trim_from = 0;
    h_send(&h, &trim);
    apr_backend_seq_trim(ref, 1, 0);
    b = (batch){0};
    add(&b, 1, 0, 1, true);
    worst = fmaxf(worst, run_both(&h, ref, &b));

    /* candidate rows: K of 1 (greedy), a few, APR_TOPK_MAX, beside full
     * rows in the same step, in a prefill and in decode steps */
    b = (batch){0};
    add(&b, 1, 1, 1, false);
    add(&b, 1, 2, 403, true);
    b.topk[1] = 1;
    add(&b, 1, 3, 407, true);
    b.topk[2] = APR_TOPK_MAX;
    len1 = 4;
    add(&b, 0, len0++, 300, true);
    b.topk[3] = 0;
    worst = fmaxf(worst, run_both(&h, ref, &b));
    for (int k = 0; k < 4; k++) {
        b = (batch){0};
        add(&b, 0, len0++, 310 + k, true);
        b.topk[0] = (uint8_t)(k == 0 ? 1 : k == 1 ? 7 : k == 2 ? 40 : 0);
        add(&b, 1, len1++, 320 + k, true);
        b.topk[1] = (uint8_t)(k == 3 ? 2 : APR_TOPK_MAX - k);
        worst = fmaxf(worst, run_both(&h, ref, &b));
    }
    printf("worker vs in-process backend: max relative logit difference %g\n", worst);

    /* heartbeats came all along on NAME.hb (the first at start) */
    apr_wmsg extra;
    double end = now_ms() + 5 * APR_HEARTBEAT_MS;
    while (h.heartbeats < 2 && now_ms() < end)
        ck_assert_msg(h_next(&h, APR_HEARTBEAT_MS, &extra) == 0, "unexpected %s", apr_wtype_str(extra.type));
    ck_assert_msg(h.heartbeats >= 2, "%d heartbeats", h.heartbeats);

    apr_wmsg bye = {.type = APR_W_SHUTDOWN};
    h_send(&h, &bye);
    int st = wait_exit(h.pid, 10000);
    ck_assert_msg(st != -1, "the worker did not exit after shutdown");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "shutdown: status 0x%x", st);
    h.pid = 0;
    h_close(&h);
    apr_backend_close(ref);
}
END_TEST

/* apr_topk_select against a full sort, on rows real models rarely give:
 * ties, NaN, -inf, +inf, fewer finite entries than k, every length around
 * the 32-entry blocks. */
/* Writes step m into the step box the way apr-coord does (proto.h). */
static void box_put(harness *h, const apr_wmsg *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    ck_assert_int_eq(apr_wmsg_encode(&sb, m), 0);
    apr_stepbox *box = apr_stepbox_of(&h->shm);
    ck_assert_uint_le(sb.size, sizeof box->msg);
    memcpy(box->msg, sb.data, sb.size);
    __atomic_store_n(&box->len, (uint32_t)sb.size, __ATOMIC_RELAXED);
    __atomic_store_n(&box->step, m->step, __ATOMIC_RELEASE);
    msgpack_sbuffer_destroy(&sb);
}

static apr_wmsg expect_done(harness *h, uint64_t step)
{
    apr_wmsg done;
    ck_assert_msg(h_next(h, DONE_MS, &done) == 1, "no done for step %llu", (unsigned long long)step);
    ck_assert_msg(done.type == APR_W_DONE, "got %s, expected done", apr_wtype_str(done.type));
    ck_assert_msg(done.step == step, "done for step %llu, expected %llu", (unsigned long long)done.step,
                  (unsigned long long)step);
    ck_assert_msg(done.ok, "step %llu refused: %s", (unsigned long long)step, done.error);
    return done;
}

/* A worker that waits awake (--spin-us, as an engine does) takes its next
 * step from the step box: only after a step from the socket, only a step id
 * above those it ran, never a malformed box; the socket's copy of a step it
 * took is dropped, and the logits are the backend's. */
START_TEST(takes_steps_from_the_box)
{
    static const char *const opts[] = {"--threads", "1", "--ctx", "64", "--n-seq", "2", "--max-batch", "16",
                                       "--max-logits", "8", "--spin-us", "1000000", NULL};
    harness h;
    int nv;
    apr_backend *ref = start_cpu_worker(&h, opts, &nv);
    apr_wmsg hello = wait_hello(&h);
    ck_assert_msg(hello.ok, "hello refused: %s", hello.error);
    h.next_step = 10;

    /* a box before any step from the socket (a dead process's leftover) is not run */
    batch b = {0};
    add(&b, 0, 0, 1, true);
    apr_wmsg step = {.type = APR_W_STEP, .step = 9, .n = b.n, .token = b.token, .pos = b.pos, .seq = b.seq,
                     .want = b.want};
    box_put(&h, &step);
    usleep(200000);
    float worst = run_both(&h, ref, &b); /* step 10, from the socket: the first done is its */

    /* step 11 in the box alone: taken, its rows the backend's */
    b = (batch){0};
    add(&b, 0, 1, 403, true);
    step = (apr_wmsg){.type = APR_W_STEP, .step = 11, .n = b.n, .token = b.token, .pos = b.pos, .seq = b.seq,
                      .want = b.want, .topk = b.topk};
    box_put(&h, &step);
    apr_wmsg done = expect_done(&h, 11);
    ck_assert_uint_eq(__atomic_load_n(&apr_doorbell_of(&h.shm)->step, __ATOMIC_ACQUIRE), 11);
    float *want = malloc(sizeof(float) * (size_t)nv);
    char err[APR_ERRLEN];
    apr_batch ab = {.n = b.n, .token = b.token, .pos = b.pos, .seq = b.seq, .want_logits = b.want};
    ck_assert_msg(apr_backend_step(ref, &ab, want, err) == 0, "reference: %s", err);
    const float *got = h.shm.base;
    for (int j = 0; j < nv; j++)
        worst = fmaxf(worst, fabsf(got[j] - want[j]) / fmaxf(1.0f, fabsf(want[j])));
    free(want);
    ck_assert_msg(worst <= 1e-6f, "logits differ from the in-process backend by %g", worst);
    ck_assert_int_eq(done.n_logits, 1);

    /* its copy on the socket is dropped: the next done is step 12's */
    h_send(&h, &step);
    h.next_step = 12;
    b = (batch){0};
    add(&b, 0, 2, 407, true);
    worst = fmaxf(worst, run_both(&h, ref, &b));

    /* a malformed box (a length past the box, then bytes that do not
     * parse) is ignored and the socket's step runs */
    apr_stepbox *box = apr_stepbox_of(&h.shm);
    __atomic_store_n(&box->len, (uint32_t)sizeof box->msg + 1, __ATOMIC_RELAXED);
    __atomic_store_n(&box->step, 13, __ATOMIC_RELEASE);
    usleep(100000);
    b = (batch){0};
    add(&b, 0, 3, 261, true);
    worst = fmaxf(worst, run_both(&h, ref, &b)); /* step 13 by the socket */
    memset(box->msg, 0xc1, 8);
    __atomic_store_n(&box->len, 8, __ATOMIC_RELAXED);
    __atomic_store_n(&box->step, 14, __ATOMIC_RELEASE);
    usleep(100000);
    b = (batch){0};
    add(&b, 0, 4, 378, true);
    worst = fmaxf(worst, run_both(&h, ref, &b)); /* step 14 by the socket */

    /* a trim by the socket, then the next step by the socket: in order */
    apr_wmsg trim = {.type = APR_W_TRIM, .trim_seq = 0, .trim_from = 4};
    h_send(&h, &trim);
    apr_backend_seq_trim(ref, 0, 4);
    b = (batch){0};
    add(&b, 0, 4, 286, true);
    worst = fmaxf(worst, run_both(&h, ref, &b)); /* step 15 */
    printf("step box: max relative logit difference %g\n", worst);

    apr_wmsg bye = {.type = APR_W_SHUTDOWN};
    h_send(&h, &bye);
    ck_assert_int_eq(wait_exit(h.pid, 10000), 0);
    h.pid = 0;
    apr_wmsg_free(&hello);
    apr_backend_close(ref);
    h_close(&h);
}
END_TEST

START_TEST(topk_select_is_exact)
{
    uint64_t s = 0x243f6a8885a308d3ULL;
    float *l = malloc(5000 * sizeof *l);
    int32_t ids[APR_TOPK_MAX];
    float vals[APR_TOPK_MAX];
    ref_pair best[APR_TOPK_MAX];
    int rows = 0;
    for (int trial = 0; trial < 3000; trial++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        int n = trial < 200 ? 1 + trial : 1 + (int)((s >> 33) % 5000);
        int k = 1 + (int)((s >> 20) % APR_TOPK_MAX);
        int kind = trial % 6;
        for (int i = 0; i < n; i++) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            uint32_t u = (uint32_t)(s >> 32);
            /* few distinct values in some rows, so ties are everywhere */
            l[i] = kind == 0 ? (float)(u % 7) : ((float)u / 4294967296.0f - 0.5f) * 20.0f;
            if (kind == 1 && u % 5 == 0)
                l[i] = NAN;
            if (kind == 2 && u % 3 == 0)
                l[i] = -INFINITY;
            if (kind == 3 && u % 97 == 0)
                l[i] = INFINITY;
            if (kind == 4 && u % 50 != 0) /* mostly nothing finite */
                l[i] = u % 2 ? NAN : -INFINITY;
        }
        if (kind == 5 && n > 40) /* the best at the very end and ties across blocks */
            l[n - 1] = l[n - 33] = l[5] = 1e30f;
        int got = apr_topk_select(l, n, k, ids, vals);
        int want = ref_topk(l, n, k, best);
        ck_assert_msg(got == want, "n %d k %d kind %d: %d candidates, want %d", n, k, kind, got, want);
        for (int j = 0; j < got; j++)
            ck_assert_msg(ids[j] == best[j].id && (vals[j] == best[j].l || (isinf(vals[j]) && isinf(best[j].l))),
                          "n %d k %d kind %d, candidate %d: %d (%g), want %d (%g)", n, k, kind, j, ids[j],
                          vals[j], best[j].id, best[j].l);
        rows++;
    }
    ck_assert_int_eq(apr_topk_select(l, 10, 0, ids, vals), 0);
    ck_assert_int_eq(apr_topk_select(l, 0, 5, ids, vals), 0);
    free(l);
    printf("topk_select: %d rows equal a full sort\n", rows);
}
END_TEST

/* hello{ok:false} with a useful error, then exit status 1. */
static void expect_hello_refused(const char *backend, const char *model_path, const char *const *extra,
                                 size_t shm_bytes, const char *in_error)
{
    harness h;
    h_open(&h, "bad", shm_bytes);
    char errlog[320];
    snprintf(errlog, sizeof errlog, "%s/err.log", h.dir);
    h_bind(&h);
    h_spawn(&h, backend, model_path, extra, errlog);
    apr_wmsg hello = wait_hello(&h);
    ck_assert_msg(!hello.ok, "hello ok with %s %s", backend, model_path);
    ck_assert_str_eq(hello.backend, backend);
    ck_assert_int_eq(hello.pid, h.pid);
    ck_assert_msg(strstr(hello.error, in_error), "hello error '%s' does not say '%s'", hello.error, in_error);
    int st = wait_exit(h.pid, 10000);
    ck_assert_msg(st != -1, "the worker did not exit after a refused hello");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 1, "status 0x%x, expected exit 1", st);
    h.pid = 0;

    char log[4096] = "";
    FILE *f = fopen(errlog, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(log, 1, sizeof log - 1, f);
    log[n] = 0;
    fclose(f);
    ck_assert_msg(strstr(log, "apr-worker[bad]: ") && strstr(log, in_error), "stderr: %s", log);
    h_close(&h);
}

START_TEST(bad_model_is_refused)
{
    expect_hello_refused("cpu", "/nonexistent/model.gguf", NULL, 4096, "/nonexistent/model.gguf");
}
END_TEST

START_TEST(cuda_refusal_reaches_the_coordinator)
{
    /* whatever the in-process backend says (no device, no CUDA build) must
     * come out in the hello */
    char why[APR_ERRLEN] = "";
    apr_backend_opts o = {.n_threads = 1, .n_ctx = N_CTX, .n_seq = 1};
    apr_backend *b = apr_backend_open("cuda", model, &o, why);
    if (b != NULL) {
        printf("test_worker: a CUDA backend opened here; nothing refused to check\n");
        apr_backend_close(b);
        return;
    }
    expect_hello_refused("cuda", model, NULL, 4096, why);
}
END_TEST

START_TEST(small_logits_memory_is_refused)
{
    static const char *const opts[] = {"--max-logits", "4", NULL};
    expect_hello_refused("cpu", model, opts, 4096, "needed");
}
END_TEST

/* A killed coordinator leaves no worker behind: the worker's parent here is
 * a stand-in process; this test process adopts the orphan (subreaper) so it
 * can see how it ended. */
START_TEST(dies_with_its_parent)
{
    ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    harness h;
    h_open(&h, "orphan", 1 << 20);
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t parent = fork();
    ck_assert_int_ge(parent, 0);
    if (parent == 0) {
        close(pfd[0]);
        h_spawn(&h, "cpu", model, serve_opts, NULL);
        if (write(pfd[1], &h.pid, sizeof h.pid) != sizeof h.pid)
            _exit(1);
        for (;;)
            pause();
    }
    close(pfd[1]);
    h_bind(&h); /* after the fork: the stand-in stays single-threaded */
    pid_t worker = 0;
    ck_assert_int_eq(read(pfd[0], &worker, sizeof worker), sizeof worker);
    close(pfd[0]);
    h.pid = parent; /* h_close kills the stand-in if something fails */
    h.want_pid = worker;
    apr_wmsg hello = wait_hello(&h);
    ck_assert_msg(hello.ok, "%s", hello.error);

    kill(parent, SIGKILL);
    waitpid(parent, NULL, 0);
    int st = wait_exit(worker, 10000);
    if (st == -1)
        kill(worker, SIGKILL);
    ck_assert_msg(st != -1, "the worker outlived its parent");
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status 0x%x", st);
    h.pid = 0;
    h_close(&h);
}
END_TEST

static int run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

int main(void)
{
    /* the selection needs no model */
    Suite *ts = suite_create("topk");
    TCase *tt = tcase_create("topk");
    tcase_set_timeout(tt, 120);
    tcase_add_test(tt, topk_select_is_exact);
    suite_add_tcase(ts, tt);
    if (run_suite(ts))
        return 1;
    if (!have_fixtures()) {
        printf("test_worker: SKIP: fixtures under $SHARED (../shared) are absent\n");
        return 0;
    }
    snprintf(worker_bin, sizeof worker_bin, "%s/apr-worker", getenv("APR_BIN") ? getenv("APR_BIN") : "build");
    if (access(worker_bin, X_OK) != 0) {
        printf("test_worker: %s is missing (build it first, or set APR_BIN)\n", worker_bin);
        return 1;
    }
    printf("test_worker: driving %s\n", worker_bin);
    Suite *s = suite_create("worker");
    TCase *tc = tcase_create("worker");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, serves_like_the_backend);
    tcase_add_test(tc, takes_steps_from_the_box);
    tcase_add_test(tc, bad_model_is_refused);
    tcase_add_test(tc, cuda_refusal_reaches_the_coordinator);
    tcase_add_test(tc, small_logits_memory_is_refused);
    tcase_add_test(tc, dies_with_its_parent);
    suite_add_tcase(s, tc);
    return run_suite(s) ? 1 : 0;
}
