/* CPU kernel throughput: decode GEMV in GB/s of weights streamed and prefill
 * (64 tokens) in GFLOP/s, per ISA, on 1 and 2 threads, for the matrix shapes
 * of Qwen2.5-1.5B (Q4_K, Q6_K: 8960 rows of 1536) and 0.5B (Q5_0, Q8_0: 4864
 * rows of 896), beside this machine's memcpy bandwidth.
 *
 * The weights of each shape are replicated until they exceed the last-level
 * cache several times over, and the runs cycle through the copies, so the
 * GEMV figures are DRAM streaming as in a real decode step.
 *
 * usage: bench_kernels [seconds per figure, default 0.5] [TYPE: only that type]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/model.h"
#include "worker/kernels.h"

/* Bytes of weight copies cycled through (APR_BENCH_MB overrides: a small
 * value shows the in-cache, compute-bound speed). */
static size_t stream_bytes(void)
{
    const char *e = getenv("APR_BENCH_MB");
    long mb = e ? atol(e) : 256;
    return (size_t)(mb > 0 ? mb : 1) << 20;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

typedef struct {
    uint32_t type;
    int n, nrows;
    int ncopies;
    size_t row_bytes, mat_bytes;
    uint8_t *w;      /* ncopies matrices back to back */
    uint8_t *xq;     /* 64 quantized activation rows */
    size_t x_stride;
    float *out;      /* 64 x nrows */
} bench_mat;

static int mat_init(bench_mat *m, uint32_t type, int n, int nrows, char err[APR_ERRLEN])
{
    memset(m, 0, sizeof *m);
    m->type = type, m->n = n, m->nrows = nrows;
    m->row_bytes = apr_row_bytes(type, (uint64_t)n);
    m->mat_bytes = m->row_bytes * (size_t)nrows;
    m->ncopies = (int)(stream_bytes() / m->mat_bytes) + 1;
    m->x_stride = apr_act_row_bytes(type, n);
    m->w = aligned_alloc(64, (m->mat_bytes * (size_t)m->ncopies + 63) / 64 * 64);
    m->xq = malloc(m->x_stride * 64);
    m->out = malloc(sizeof(float) * 64 * (size_t)nrows);
    float *x = malloc(sizeof(float) * (size_t)n);
    if (!m->w || !m->xq || !m->out || !x) {
        free(x);
        snprintf(err, APR_ERRLEN, "out of memory for a %s %dx%d matrix",
                 apr_type_get(type)->name, nrows, n);
        return -1;
    }
    /* Random quants with small positive fp16 scales: any finite value does
     * for timing, and the first bytes of every block are its scales. */
    uint64_t s = 0x243f6a8885a308d3ull;
    const apr_type_info *ti = apr_type_get(type);
    size_t total = m->mat_bytes * (size_t)m->ncopies;
    for (size_t i = 0; i < total; i += 8) {
        uint64_t v = xorshift(&s);
        memcpy(m->w + i, &v, total - i < 8 ? total - i : 8);
    }
    uint16_t h = apr_f32_to_fp16(0.01f);
    if (type == APR_TYPE_F32 || type == APR_TYPE_F16 || type == APR_TYPE_BF16) {
        for (size_t i = 0; i + 1 < total; i += 2) memcpy(m->w + i, &h, 2);
    } else {
        size_t off = type == APR_TYPE_Q6_K ? offsetof(block_q6_K, d) : 0;
        for (size_t i = 0; i < total; i += ti->type_size) memcpy(m->w + i + off, &h, 2);
    }
    for (int t = 0; t < 64; t++) {
        for (int i = 0; i < n; i++) x[i] = (float)((int)(xorshift(&s) % 2001) - 1000) * 1e-3f;
        apr_act_quantize(APR_ISA_SCALAR, type, x, m->xq + m->x_stride * (size_t)t, n);
    }
    free(x);
    return 0;
}

static void mat_free(bench_mat *m)
{
    free(m->w), free(m->xq), free(m->out);
}

/* ------------------------------------------------------------- threads */

typedef struct {
    const bench_mat *m;
    apr_isa isa;
    int ntok;
    int r0, nr;      /* this thread's rows */
    int iters;
    pthread_barrier_t *bar;
} job;

static void run_iters(const job *j)
{
    const bench_mat *m = j->m;
    for (int it = 0; it < j->iters; it++) {
        const uint8_t *w = m->w + m->mat_bytes * (size_t)(it % m->ncopies);
        apr_matmul(j->isa, m->type, m->n, w + m->row_bytes * (size_t)j->r0, m->row_bytes, j->nr,
                   m->xq, m->x_stride, j->ntok, m->out + j->r0, (size_t)m->nrows);
        /* Each matrix product ends with all threads done, as in a forward pass. */
        if (j->bar) pthread_barrier_wait(j->bar);
    }
}

static void *thread_main(void *arg)
{
    run_iters(arg);
    return NULL;
}

/* Seconds for iters products on nthreads (1 or 2) threads, rows split evenly. */
static double timed_run(const bench_mat *m, apr_isa isa, int ntok, int nthreads, int iters)
{
    pthread_barrier_t bar;
    job jobs[2];
    pthread_t th;
    nthreads = nthreads > 1 ? 2 : 1;
    if (nthreads > 1) pthread_barrier_init(&bar, NULL, (unsigned)nthreads);
    int per = (m->nrows + nthreads - 1) / nthreads;
    for (int i = 0; i < nthreads; i++) {
        int r0 = i * per, nr = m->nrows - r0 < per ? m->nrows - r0 : per;
        jobs[i] = (job){m, isa, ntok, r0, nr, iters, nthreads > 1 ? &bar : NULL};
    }
    double t0 = now();
    if (nthreads > 1 && pthread_create(&th, NULL, thread_main, &jobs[1]) != 0) {
        /* No second thread: run its share here so the figure stays honest. */
        pthread_barrier_destroy(&bar);
        jobs[0].bar = jobs[1].bar = NULL;
        run_iters(&jobs[0]);
        run_iters(&jobs[1]);
        return now() - t0;
    }
    run_iters(&jobs[0]);
    if (nthreads > 1) {
        pthread_join(th, NULL);
        pthread_barrier_destroy(&bar);
    }
    return now() - t0;
}

/* Seconds per product: the best of 5 runs of about secs/5 each (the machine
 * is shared: other work only ever makes a run slower). */
static double measure(const bench_mat *m, apr_isa isa, int ntok, int nthreads, double secs)
{
    timed_run(m, isa, ntok, nthreads, 1); /* warm-up */
    int iters = 1;
    double t = timed_run(m, isa, ntok, nthreads, iters);
    while (t < secs / 5 && iters < (1 << 24)) {
        int next = t > 0 ? (int)(iters * (secs / 5 / t) * 1.1) + 1 : iters * 8;
        iters = next > iters * 8 ? iters * 8 : next;
        t = timed_run(m, isa, ntok, nthreads, iters);
    }
    double best = t / iters;
    for (int i = 0; i < 4; i++) {
        t = timed_run(m, isa, ntok, nthreads, iters) / iters;
        if (t < best) best = t;
    }
    return best;
}

static double memcpy_gbs(double secs)
{
    size_t n = 256u << 20;
    uint8_t *a = malloc(n), *b = malloc(n);
    if (!a || !b) {
        free(a), free(b);
        return 0;
    }
    memset(a, 1, n);
    memset(b, 2, n);
    /* memset may be elided for b (memcpy overwrites it): the first copy also
     * faults b's pages in, so take the best of several. */
    double best = 0, t_end = now() + secs;
    for (int i = 0; i < 4 || now() < t_end; i++) {
        double t = now();
        memcpy(b, a, n);
        t = now() - t;
        /* Read plus write bytes, as STREAM's copy counts them. */
        if (2.0 * (double)n / t > best) best = 2.0 * (double)n / t;
    }
    free(a), free(b);
    return best / 1e9;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.5;
    if (secs <= 0 || secs > 60) {
        fprintf(stderr, "usage: bench_kernels [seconds per figure, 0..60] [TYPE]\n");
        return 2;
    }
    apr_isa top = apr_isa_detect();
    printf("bench_kernels: best ISA %s; memcpy %.1f GB/s (1 thread, read+write)\n",
           apr_isa_name(top), memcpy_gbs(secs));
    printf("targets (issue 3, 2 threads): decode ~30 GB/s of weights (llama.cpp 1.5B Q4_K_M "
           "29.4 tok/s), prefill >= 172 GFLOP/s (80%% of llama.cpp's ~215)\n");
    printf("%-5s %5s x %-5s %-7s %4s %12s %14s\n", "type", "rows", "n", "isa", "thr",
           "GEMV GB/s", "prefill GFLOP/s");
    const struct { uint32_t type; int n, nrows; } shapes[] = {
        {APR_TYPE_Q4_K, 1536, 8960},
        {APR_TYPE_Q6_K, 1536, 8960},
        {APR_TYPE_Q5_0, 896, 4864},
        {APR_TYPE_Q8_0, 896, 4864},
        {APR_TYPE_F32, 896, 896},
    };
    const char *only = argc > 2 ? argv[2] : NULL;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        if (only && strcmp(only, apr_type_get(shapes[s].type)->name) != 0) continue;
        bench_mat m;
        char err[APR_ERRLEN];
        if (mat_init(&m, shapes[s].type, shapes[s].n, shapes[s].nrows, err) != 0) {
            fprintf(stderr, "bench_kernels: %s\n", err);
            mat_free(&m);
            return 1;
        }
        double flop64 = 2.0 * m.n * m.nrows * 64;
        for (int isa = 0; isa <= (int)top; isa++) {
            for (int nt = 1; nt <= 2; nt++) {
                /* The scalar path is the reference, not a contender: one thread. */
                if (isa == APR_ISA_SCALAR && nt > 1) continue;
                double tg = measure(&m, (apr_isa)isa, 1, nt, secs);
                double tp = measure(&m, (apr_isa)isa, 64, nt, secs);
                printf("%-5s %5d x %-5d %-7s %4d %12.1f %14.1f\n", apr_type_get(m.type)->name,
                       m.nrows, m.n, apr_isa_name((apr_isa)isa), nt,
                       (double)m.mat_bytes / tg / 1e9, flop64 / tp / 1e9);
                fflush(stdout);
            }
        }
        mat_free(&m);
    }
    return 0;
}
