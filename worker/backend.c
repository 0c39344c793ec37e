/* The backend interface: one door to the CPU engine and (when built) the CUDA
 * engine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend.h"
#include "worker/cpu.h"
#ifdef APR_HAVE_CUDA
#include "cuda/cuda.h"
#endif

/* Exactly one engine is set. */
struct apr_backend {
    cpu_model *cpu;
#ifdef APR_HAVE_CUDA
    apr_cuda_model *cuda;
#endif
};

apr_backend *apr_backend_open(const char *kind, const char *model_path,
                              const apr_backend_opts *opts, char err[APR_ERRLEN])
{
    bool cuda = !strcmp(kind, "cuda");
    if (!cuda && strcmp(kind, "cpu")) {
        snprintf(err, APR_ERRLEN, "unknown backend '%s' (cpu or cuda)", kind);
        return NULL;
    }
#ifndef APR_HAVE_CUDA
    if (cuda) {
        snprintf(err, APR_ERRLEN, "no CUDA device: this build has no CUDA support");
        return NULL;
    }
#endif
    apr_backend *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return NULL;
    }
#ifdef APR_HAVE_CUDA
    if (cuda) {
        char why[APR_ERRLEN] = "";
        if (apr_cuda_device_count(why, sizeof why) <= 0) {
            snprintf(err, APR_ERRLEN, "%s", why);
            free(b);
            return NULL;
        }
        b->cuda = apr_cuda_open(model_path, opts, err);
        if (!b->cuda) {
            free(b);
            return NULL;
        }
        return b;
    }
#endif
    b->cpu = cpu_model_open(model_path, opts, err);
    if (!b->cpu) {
        free(b);
        return NULL;
    }
    return b;
}

void apr_backend_close(apr_backend *b)
{
    if (!b) return;
#ifdef APR_HAVE_CUDA
    if (b->cuda) apr_cuda_close(b->cuda);
#endif
    if (b->cpu) cpu_model_close(b->cpu);
    free(b);
}

#ifdef APR_HAVE_CUDA
#define DISPATCH(cuda_call, cpu_call) return b->cuda ? cuda_call : cpu_call
#else
#define DISPATCH(cuda_call, cpu_call) return cpu_call
#endif

const apr_hparams *apr_backend_hparams(const apr_backend *b)
{
    DISPATCH(apr_cuda_hparams(b->cuda), cpu_model_hparams(b->cpu));
}
int apr_backend_n_ctx(const apr_backend *b) { DISPATCH(apr_cuda_n_ctx(b->cuda), cpu_model_n_ctx(b->cpu)); }
int apr_backend_n_seq(const apr_backend *b) { DISPATCH(apr_cuda_n_seq(b->cuda), cpu_model_n_seq(b->cpu)); }

int apr_backend_step(apr_backend *b, const apr_batch *batch, float *logits, char err[APR_ERRLEN])
{
#ifdef APR_HAVE_CUDA
    if (b->cuda) return apr_cuda_step(b->cuda, batch, logits, err); /* picks candidates on the GPU */
#endif
    int rc = cpu_model_step(b->cpu, batch, logits, err);
    if (rc == 0 && batch->topk) apr_cand_rows_inplace(batch, logits, cpu_model_hparams(b->cpu)->n_vocab);
    return rc;
}

void apr_cand_row(void *dst, const float *row, uint32_t n, int k)
{
    int32_t ids[APR_BACKEND_TOPK_MAX];
    float vals[APR_BACKEND_TOPK_MAX];
    if (k > APR_BACKEND_TOPK_MAX)
        k = APR_BACKEND_TOPK_MAX;
    int32_t cnt = apr_topk_select(row, (int)n, k, ids, vals);
    unsigned char *o = dst;
    memcpy(o, &cnt, 4);
    for (int32_t j = 0; j < cnt; j++) {
        memcpy(o + APR_CAND_ROW_BYTES(j), &ids[j], 4);
        memcpy(o + APR_CAND_ROW_BYTES(j) + 4, &vals[j], 4);
    }
}

void apr_cand_rows_inplace(const apr_batch *b, float *logits, uint32_t n_vocab)
{
    int r = 0;
    for (int i = 0; i < b->n; i++) {
        bool want = b->want_logits ? b->want_logits[i] != 0 : i == b->n - 1;
        if (!want)
            continue;
        float *row = logits + (size_t)r++ * n_vocab;
        if (b->topk && b->topk[i])
            apr_cand_row(row, row, n_vocab, b->topk[i]);
    }
}

void apr_backend_idle(apr_backend *b)
{
#ifdef APR_HAVE_CUDA
    if (b->cuda) apr_cuda_idle(b->cuda);
#else
    (void)b;
#endif
}

void apr_backend_seq_trim(apr_backend *b, int seq, int from_pos)
{
#ifdef APR_HAVE_CUDA
    if (b->cuda) {
        apr_cuda_seq_trim(b->cuda, seq, from_pos);
        return;
    }
#endif
    cpu_model_seq_trim(b->cpu, seq, from_pos);
}

/* Only the GPU worker is split into holder and engine: a CPU worker's memory
 * is shared memory that a restarted process maps again. */
struct apr_backend_hold {
#ifdef APR_HAVE_CUDA
    apr_cuda_model *cuda;
#else
    int unused;
#endif
};

apr_backend_hold *apr_backend_hold_open(const char *kind, const char *model_path,
                                        const apr_backend_opts *opts, void *exp, char err[APR_ERRLEN])
{
    if (strcmp(kind, "cuda")) {
        snprintf(err, APR_ERRLEN, "backend '%s' has no holder (cuda only)", kind);
        return NULL;
    }
#ifdef APR_HAVE_CUDA
    char why[APR_ERRLEN] = "";
    if (apr_cuda_device_count(why, sizeof why) <= 0) {
        snprintf(err, APR_ERRLEN, "%s", why);
        return NULL;
    }
    apr_backend_hold *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return NULL;
    }
    h->cuda = apr_cuda_hold(model_path, opts, exp, err);
    if (!h->cuda) {
        free(h);
        return NULL;
    }
    return h;
#else
    (void)model_path;
    (void)opts;
    (void)exp;
    snprintf(err, APR_ERRLEN, "no CUDA device: this build has no CUDA support");
    return NULL;
#endif
}

void apr_backend_hold_close(apr_backend_hold *h)
{
    if (!h) return;
#ifdef APR_HAVE_CUDA
    apr_cuda_close(h->cuda);
#endif
    free(h);
}

int apr_batch_check(const apr_batch *b, int n_seq, int n_ctx, uint32_t n_vocab, const int *seq_len,
                    char err[APR_ERRLEN])
{
    if (b->n < 1 || b->n > APR_BACKEND_MAX_BATCH) {
        snprintf(err, APR_ERRLEN, "batch of %d entries (1..%d allowed)", b->n, APR_BACKEND_MAX_BATCH);
        return -1;
    }
    /* next expected position per sequence, as the entries so far leave it */
    int *next = malloc((size_t)n_seq * sizeof(int));
    if (!next) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return -1;
    }
    memcpy(next, seq_len, (size_t)n_seq * sizeof(int));
    int rc = 0;
    for (int i = 0; i < b->n && !rc; i++) {
        int s = b->seq[i], p = b->pos[i], tok = b->token[i];
        if (s < 0 || s >= n_seq)
            rc = snprintf(err, APR_ERRLEN, "entry %d: sequence %d out of range (0..%d)", i, s, n_seq - 1);
        else if (tok < 0 || (uint32_t)tok >= n_vocab)
            rc = snprintf(err, APR_ERRLEN, "entry %d: token %d out of range", i, tok);
        else if (p >= n_ctx)
            rc = snprintf(err, APR_ERRLEN, "entry %d: position %d exceeds the context (%d)", i, p, n_ctx);
        else if (p != next[s])
            rc = snprintf(err, APR_ERRLEN, "entry %d: sequence %d expects position %d, got %d", i, s, next[s], p);
        else if (b->topk && b->topk[i] > APR_BACKEND_TOPK_MAX)
            rc = snprintf(err, APR_ERRLEN, "entry %d: %d candidates asked for (at most %d)", i, b->topk[i],
                          APR_BACKEND_TOPK_MAX);
        else if (b->topk && b->topk[i] && !(b->want_logits ? b->want_logits[i] : i == b->n - 1))
            rc = snprintf(err, APR_ERRLEN, "entry %d: candidates asked for without logits", i);
        else if (b->topk && APR_CAND_ROW_BYTES(b->topk[i]) > (size_t)n_vocab * sizeof(float))
            rc = snprintf(err, APR_ERRLEN, "entry %d: %d candidates do not fit a row of %u logits", i, b->topk[i],
                          n_vocab);
        else
            next[s] = p + 1;
    }
    free(next);
    return rc ? -1 : 0;
}
