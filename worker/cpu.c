/* The CPU engine: a Llama / Qwen2 transformer forward pass.
 *
 * Weights stay in the GGUF file's quantized blocks, read once with io_uring
 * into a shared-memory segment; matrix products go through worker/kernels.h,
 * which quantizes the activations to 8 bits as llama.cpp does. The KV cache is
 * F16 (llama.cpp's default), one slab of n_ctx positions per sequence.
 *
 * forward() reads top to bottom like llama2.c's transformer(): embed, then per
 * layer attention and SwiGLU FFN with residuals, then the final norm and the
 * output projection for the entries that want logits.
 */
#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/cpu.h"
#include "worker/kernels.h"
#include "worker/loader.h"
#include "worker/pool.h"


typedef struct {
    const uint8_t *data;
    uint32_t type;
    size_t row_bytes;
    int n_in, n_out;
} weight;

typedef struct {
    const float *attn_norm, *ffn_norm;
    const float *bq, *bk, *bv; /* qwen2 only */
    weight wq, wk, wv, wo;
    weight gate, up, down;
} layer;

/* Scratch for one step of up to cap entries. */
typedef struct {
    int cap;
    float *x, *xn;          /* [cap][n_embd] */
    float *q, *k, *v, *att; /* [cap][q_dim] / [cap][kv_dim] */
    float *gate, *up;       /* [cap][n_ff] */
    uint8_t *xq;            /* quantized activations */
    size_t xq_cap;
} scratch;

struct cpu_model {
    apr_hparams hp;
    apr_isa isa;
    int n_ctx, n_seq;
    int q_dim, kv_dim;
    apr_seg weights; /* the file's data section */
    weight tok_embd, output;
    const float *output_norm;
    layer *layers;
    uint16_t *k_cache, *v_cache; /* [n_seq][n_layer][n_ctx][kv_dim], F16 */
    int *seq_len;                /* positions held per sequence */
    pool *pool;
    scratch s;
};

/* ------------------------------------------------------------ loading */

static const gguf_tensor *need_tensor(const gguf_file *f, const char *name, int n_dims,
                                      uint64_t ne0, uint64_t ne1, char err[APR_ERRLEN])
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) {
        snprintf(err, APR_ERRLEN, "tensor '%s' is missing", name);
        return NULL;
    }
    bool ok = t->ne[0] == ne0 && (n_dims == 1 ? t->n_dims == 1 : t->ne[1] == ne1);
    for (uint32_t d = (uint32_t)n_dims; d < 4; d++) ok = ok && t->ne[d] == 1;
    if (!ok) {
        snprintf(err, APR_ERRLEN, "tensor '%s' has shape [%llu, %llu], expected [%llu, %llu]",
                 name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                 (unsigned long long)ne0, (unsigned long long)(n_dims == 1 ? 1 : ne1));
        return NULL;
    }
    return t;
}

static const uint8_t *tensor_data(const cpu_model *m, const gguf_file *f, const gguf_tensor *t)
{
    return (const uint8_t *)m->weights.addr + (t->offset - f->data_offset);
}

static int load_vector(cpu_model *m, const gguf_file *f, const char *name, uint64_t n,
                       const float **out, char err[APR_ERRLEN])
{
    const gguf_tensor *t = need_tensor(f, name, 1, n, 1, err);
    if (!t) return -1;
    if (t->type != APR_TYPE_F32) {
        snprintf(err, APR_ERRLEN, "tensor '%s': type %s is not supported for a vector (F32 only)",
                 name, apr_type_get(t->type)->name);
        return -1;
    }
    *out = (const float *)tensor_data(m, f, t);
    return 0;
}

static int load_matrix(cpu_model *m, const gguf_file *f, const char *name, uint64_t n_in,
                       uint64_t n_out, weight *w, char err[APR_ERRLEN])
{
    const gguf_tensor *t = need_tensor(f, name, 2, n_in, n_out, err);
    if (!t) return -1;
    if (!apr_kernel_supports(t->type)) {
        snprintf(err, APR_ERRLEN, "tensor '%s': type %s is not supported", name,
                 apr_type_get(t->type)->name);
        return -1;
    }
    w->data = tensor_data(m, f, t);
    w->type = t->type;
    w->row_bytes = apr_row_bytes(t->type, n_in);
    w->n_in = (int)n_in;
    w->n_out = (int)n_out;
    return 0;
}

static int load_layer(cpu_model *m, const gguf_file *f, int il, char err[APR_ERRLEN])
{
    const apr_hparams *hp = &m->hp;
    layer *L = &m->layers[il];
    char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d." suffix, il), name)
    if (load_vector(m, f, NAME("attn_norm.weight"), hp->n_embd, &L->attn_norm, err) ||
        load_vector(m, f, NAME("ffn_norm.weight"), hp->n_embd, &L->ffn_norm, err) ||
        load_matrix(m, f, NAME("attn_q.weight"), hp->n_embd, (uint64_t)m->q_dim, &L->wq, err) ||
        load_matrix(m, f, NAME("attn_k.weight"), hp->n_embd, (uint64_t)m->kv_dim, &L->wk, err) ||
        load_matrix(m, f, NAME("attn_v.weight"), hp->n_embd, (uint64_t)m->kv_dim, &L->wv, err) ||
        load_matrix(m, f, NAME("attn_output.weight"), (uint64_t)m->q_dim, hp->n_embd, &L->wo, err) ||
        load_matrix(m, f, NAME("ffn_gate.weight"), hp->n_embd, hp->n_ff, &L->gate, err) ||
        load_matrix(m, f, NAME("ffn_up.weight"), hp->n_embd, hp->n_ff, &L->up, err) ||
        load_matrix(m, f, NAME("ffn_down.weight"), hp->n_ff, hp->n_embd, &L->down, err))
        return -1;
    if (hp->arch == APR_ARCH_QWEN2) {
        if (load_vector(m, f, NAME("attn_q.bias"), (uint64_t)m->q_dim, &L->bq, err) ||
            load_vector(m, f, NAME("attn_k.bias"), (uint64_t)m->kv_dim, &L->bk, err) ||
            load_vector(m, f, NAME("attn_v.bias"), (uint64_t)m->kv_dim, &L->bv, err))
            return -1;
    }
#undef NAME
    return 0;
}

static void scratch_free(scratch *s)
{
    free(s->x);
    free(s->xn);
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->att);
    free(s->gate);
    free(s->up);
    free(s->xq);
    memset(s, 0, sizeof *s);
}

static int scratch_reserve(cpu_model *m, int n)
{
    if (n <= m->s.cap) return 0;
    int cap = n < 16 ? 16 : n;
    scratch_free(&m->s);
    const apr_hparams *hp = &m->hp;
    size_t c = (size_t)cap;
    scratch *s = &m->s;
    s->x = malloc(c * hp->n_embd * sizeof(float));
    s->xn = malloc(c * hp->n_embd * sizeof(float));
    s->q = malloc(c * (size_t)m->q_dim * sizeof(float));
    s->k = malloc(c * (size_t)m->kv_dim * sizeof(float));
    s->v = malloc(c * (size_t)m->kv_dim * sizeof(float));
    s->att = malloc(c * (size_t)m->q_dim * sizeof(float));
    s->gate = malloc(c * hp->n_ff * sizeof(float));
    s->up = malloc(c * hp->n_ff * sizeof(float));
    /* the widest activation row is n_ff (ffn_down) or q_dim; F32 is the largest format */
    size_t widest = hp->n_ff > (uint32_t)m->q_dim ? hp->n_ff : (size_t)m->q_dim;
    if (widest < hp->n_embd) widest = hp->n_embd;
    s->xq_cap = c * (widest * sizeof(float) + 64);
    s->xq = aligned_alloc(64, (s->xq_cap + 63) / 64 * 64);
    if (!s->x || !s->xn || !s->q || !s->k || !s->v || !s->att || !s->gate || !s->up || !s->xq) {
        scratch_free(s);
        return -1;
    }
    s->cap = cap;
    return 0;
}

void cpu_model_close(cpu_model *m)
{
    if (!m) return;
    if (m->pool) pool_free(m->pool);
    scratch_free(&m->s);
    free(m->layers);
    free(m->k_cache);
    free(m->v_cache);
    free(m->seq_len);
    apr_seg_close(&m->weights);
    free(m);
}

cpu_model *cpu_model_open(const char *path, const apr_backend_opts *opts, char err[APR_ERRLEN])
{
    char why[APR_ERRLEN];
    gguf_file *f = gguf_open(path, why);
    if (!f) {
        snprintf(err, APR_ERRLEN, "%s", why);
        return NULL;
    }
    cpu_model *m = calloc(1, sizeof *m);
    if (!m) {
        gguf_close(f);
        snprintf(err, APR_ERRLEN, "out of memory");
        return NULL;
    }
    m->weights.fd = -1;
    apr_hparams *hp = &m->hp;
    if (apr_hparams_load(f, hp, err)) goto fail;
    if (hp->head_dim > 512) {
        snprintf(err, APR_ERRLEN, "head dimension %u is not supported (at most 512)", hp->head_dim);
        goto fail;
    }
    m->q_dim = (int)(hp->n_head * hp->head_dim);
    m->kv_dim = (int)(hp->n_head_kv * hp->head_dim);
    m->isa = apr_isa_detect();

    int n_ctx = opts && opts->n_ctx > 0 ? opts->n_ctx : (int)(hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
    int n_seq = opts && opts->n_seq > 0 ? opts->n_seq : 1;
    if (n_ctx < 1 || n_ctx > 1 << 20 || n_seq > 4096) {
        snprintf(err, APR_ERRLEN, "context %d x %d sequences is out of range", n_ctx, n_seq);
        goto fail;
    }
    m->n_ctx = n_ctx;
    m->n_seq = n_seq;

    /* The data section goes into a shared-memory segment: a restarted worker
     * can map it again instead of reading the file. */
    uint64_t data_len = f->size - f->data_offset;
    if (apr_seg_create(&m->weights, "apr-weights", data_len ? data_len : 1, err)) goto fail;
    apr_load_stats st;
    int flags = opts && opts->progress ? APR_LOAD_PROGRESS : 0;
    if (apr_load_read(path, f->data_offset, data_len, m->weights.addr, flags, &st, err)) goto fail;

    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    if (!m->layers) goto oom;
    if (load_matrix(m, f, "token_embd.weight", hp->n_embd, hp->n_vocab, &m->tok_embd, err) ||
        load_vector(m, f, "output_norm.weight", hp->n_embd, &m->output_norm, err))
        goto fail;
    if (gguf_find_tensor(f, "output.weight")) {
        if (load_matrix(m, f, "output.weight", hp->n_embd, hp->n_vocab, &m->output, err)) goto fail;
    } else {
        m->output = m->tok_embd; /* tied embeddings */
    }
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if (load_layer(m, f, (int)il, err)) goto fail;

    size_t kv_elems = (size_t)n_seq * hp->n_layer * (size_t)n_ctx * (size_t)m->kv_dim;
    m->k_cache = calloc(kv_elems, sizeof(uint16_t));
    m->v_cache = calloc(kv_elems, sizeof(uint16_t));
    m->seq_len = calloc((size_t)n_seq, sizeof(int));
    if (!m->k_cache || !m->v_cache || !m->seq_len) goto oom;

    int n_threads = opts && opts->n_threads > 0 ? opts->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (n_threads < 1) n_threads = 1;
    m->pool = pool_new(n_threads);
    if (!m->pool || scratch_reserve(m, 1)) goto oom;
    gguf_close(f);
    return m;
oom:
    snprintf(err, APR_ERRLEN, "out of memory (context %d x %d sequences)", m->n_ctx, m->n_seq);
fail:
    gguf_close(f);
    cpu_model_close(m);
    return NULL;
}

const apr_hparams *cpu_model_hparams(const cpu_model *m) { return &m->hp; }
int cpu_model_n_ctx(const cpu_model *m) { return m->n_ctx; }
int cpu_model_n_seq(const cpu_model *m) { return m->n_seq; }

void cpu_model_seq_trim(cpu_model *m, int seq, int from_pos)
{
    if (seq < 0 || seq >= m->n_seq || from_pos < 0) return;
    if (from_pos < m->seq_len[seq]) m->seq_len[seq] = from_pos;
}

/* -------------------------------------------------- parallel matmuls */

/* Up to three products over the same activations, run in one dispatch
 * (q/k/v, gate/up), so a layer costs few thread wake-ups. */
typedef struct {
    const cpu_model *m;
    int n_w;
    const weight *w[3];
    float *out[3];
    const uint8_t *xq;
    size_t x_stride;
    int ntok;
} matmul_job;

static void matmul_worker(void *ctx, int ith, int nth)
{
    const matmul_job *j = ctx;
    for (int k = 0; k < j->n_w; k++) {
        const weight *w = j->w[k];
        /* rows in chunks of 16 so SIMD kernels get whole tiles */
        int chunks = (w->n_out + 15) / 16;
        int c0 = chunks * ith / nth, c1 = chunks * (ith + 1) / nth;
        int r0 = c0 * 16, r1 = c1 * 16 < w->n_out ? c1 * 16 : w->n_out;
        if (r1 <= r0) continue;
        apr_matmul(j->m->isa, w->type, w->n_in, w->data + (size_t)r0 * w->row_bytes, w->row_bytes,
                   r1 - r0, j->xq, j->x_stride, j->ntok, j->out[k] + r0, (size_t)w->n_out);
    }
}

/* The step's activations quantized in the format of weights of wtype, into
 * the scratch, a range of tokens a thread. */
typedef struct {
    cpu_model *m;
    uint32_t wtype;
    const float *x;
    int n_in, ntok;
    size_t x_stride;
} quant_job;

static void quant_worker(void *ctx, int ith, int nth)
{
    const quant_job *j = ctx;
    for (int t = j->ntok * ith / nth; t < j->ntok * (ith + 1) / nth; t++)
        apr_act_quantize(j->m->isa, j->wtype, j->x + (size_t)t * j->n_in, j->m->s.xq + (size_t)t * j->x_stride,
                         j->n_in);
}

/* Steps of this many entries or more spread their per-token work (the
 * activations' quantization, norms, bias + RoPE + cache, residuals, SwiGLU)
 * across the pool; alone on the calling thread it left the others spinning
 * (1.5B prefill of 65 tokens, 2 threads: ~9% of the step). A decode step's
 * is too small to pay for a dispatch. */
#define PAR_MIN_TOK 4

/* out_k[t][r] = W_k[r] . x[t] for each weight; all weights share n_in and type
 * family (they are quantized against the first weight's activation format,
 * so callers group only weights of the same type). */
static void matmul(cpu_model *m, int n_w, const weight *const *w, float *const *out,
                   const float *x, int ntok)
{
    const int n_in = w[0]->n_in;
    const size_t x_stride = apr_act_row_bytes(w[0]->type, n_in);
    quant_job q = {m, w[0]->type, x, n_in, ntok, x_stride};
    if (ntok >= PAR_MIN_TOK) pool_run(m->pool, quant_worker, &q);
    else quant_worker(&q, 0, 1);
    matmul_job j = {.m = m, .n_w = n_w, .xq = m->s.xq, .x_stride = x_stride, .ntok = ntok};
    for (int k = 0; k < n_w; k++) {
        j.w[k] = w[k];
        j.out[k] = out[k];
    }
    pool_run(m->pool, matmul_worker, &j);
}

static void matmul1(cpu_model *m, const weight *w, float *out, const float *x, int ntok)
{
    matmul(m, 1, &w, &out, x, ntok);
}

/* The activation format a weight type is multiplied against (kernels.h). */
static uint32_t act_type(uint32_t wtype)
{
    switch (wtype) {
    case APR_TYPE_F32: case APR_TYPE_F16: case APR_TYPE_BF16: return APR_TYPE_F32;
    case APR_TYPE_Q4_0: case APR_TYPE_Q5_0: case APR_TYPE_Q8_0: return APR_TYPE_Q8_0;
    case APR_TYPE_Q4_1: case APR_TYPE_Q5_1: return APR_TYPE_Q8_1;
    default: return APR_TYPE_Q8_K;
    }
}

/* Weights that share an activation format go in one dispatch (a Q4_K q with a
 * Q6_K v does; a Q4_K with a Q5_0 does not). */
static void matmul_group(cpu_model *m, int n_w, const weight *const *w, float *const *out,
                         const float *x, int ntok)
{
    int start = 0;
    while (start < n_w) {
        int end = start + 1;
        while (end < n_w && act_type(w[end]->type) == act_type(w[start]->type)) end++;
        matmul(m, end - start, w + start, out + start, x, ntok);
        start = end;
    }
}

/* ------------------------------------------------------------ pieces */

static void rmsnorm(float *out, const float *x, const float *w, int n, float eps)
{
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* Rotary embedding of one head at position pos; theta advances by a constant
 * factor per pair, as llama.cpp computes it. */
static void rope(float *v, int pos, int rope_dim, float freq_base, bool neox)
{
    const float theta_scale = powf(freq_base, -2.0f / (float)rope_dim);
    float theta = (float)pos;
    for (int i = 0; i < rope_dim / 2; i++) {
        float c = cosf(theta), s = sinf(theta);
        int a = neox ? i : 2 * i;
        int b = neox ? i + rope_dim / 2 : 2 * i + 1;
        float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
        theta *= theta_scale;
    }
}

/* F16 cache rows against f32 vectors: the attention's inner loops. */
static float dot_f16_scalar(const float *q, const uint16_t *k, int n)
{
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += q[i] * apr_fp16_to_f32(k[i]);
    return s;
}

/* acc is an F16 accumulator kept in f32 registers: every update is rounded
 * to F16, as llama.cpp's CPU flash attention accumulates V (VKQ16). */
static float round_f16(float x) { return apr_fp16_to_f32(apr_f32_to_fp16(x)); }

static void axpy_f16_scalar(float *acc, float a, const uint16_t *v, int n)
{
    for (int i = 0; i < n; i++) acc[i] = round_f16(acc[i] + a * apr_fp16_to_f32(v[i]));
}

__attribute__((target("avx2,fma,f16c"))) static float dot_f16_avx2(const float *q, const uint16_t *k, int n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i)));
        __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + i + 8)));
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), k0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), k1, acc1);
    }
    acc0 = _mm256_add_ps(acc0, acc1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
    h = _mm_hadd_ps(h, h);
    h = _mm_hadd_ps(h, h);
    float s = _mm_cvtss_f32(h);
    for (; i < n; i++) s += q[i] * apr_fp16_to_f32(k[i]);
    return s;
}

__attribute__((target("avx2,fma,f16c"))) static void axpy_f16_avx2(float *acc, float a, const uint16_t *v, int n)
{
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
        __m256 y = _mm256_fmadd_ps(va, x, _mm256_loadu_ps(acc + i));
        y = _mm256_cvtph_ps(_mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT));
        _mm256_storeu_ps(acc + i, y);
    }
    for (; i < n; i++) acc[i] = round_f16(acc[i] + a * apr_fp16_to_f32(v[i]));
}

/* acc[i] = round_f16(acc[i] * a): the accumulator rescaled when a new
 * maximum turns up, in F16C's rounding (round_f16's, bit for bit) */
__attribute__((target("avx2,fma,f16c"))) static void scale_f16_avx2(float *acc, float a, int n)
{
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(acc + i), va);
        _mm256_storeu_ps(acc + i, _mm256_cvtph_ps(_mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT)));
    }
    for (; i < n; i++) acc[i] = round_f16(acc[i] * a);
}

/* dst[i] = round_f16(src[i]) */
__attribute__((target("avx2,fma,f16c"))) static void round_f16_row_avx2(float *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++) dst[i] = round_f16(src[i]);
}

/* dst[i] = src[i] as F16 */
__attribute__((target("avx2,fma,f16c"))) static void to_f16_avx2(uint16_t *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = apr_f32_to_fp16(src[i]);
}

static void to_f16(uint16_t *dst, const float *src, int n, bool simd)
{
    if (simd) {
        to_f16_avx2(dst, src, n);
        return;
    }
    for (int i = 0; i < n; i++) dst[i] = apr_f32_to_fp16(src[i]);
}

typedef struct {
    cpu_model *m;
    const apr_batch *b;
    int il;
} attn_job;

/* Attention of every (entry, head) pair, split across threads. Keys and values
 * of the entry's sequence up to its own position are in the cache already. */
static void attn_worker(void *ctx, int ith, int nth)
{
    const attn_job *j = ctx;
    cpu_model *m = j->m;
    const apr_hparams *hp = &m->hp;
    const int hd = (int)hp->head_dim;
    const int group = (int)(hp->n_head / hp->n_head_kv);
    const float scale = 1.0f / sqrtf((float)hd);
    const int pairs = j->b->n * (int)hp->n_head;
    const bool simd = m->isa != APR_ISA_SCALAR;
    float acc[512], qh[512];
    for (int p = pairs * ith / nth; p < pairs * (ith + 1) / nth; p++) {
        int t = p / (int)hp->n_head, h = p % (int)hp->n_head;
        int seq = j->b->seq[t], pos = j->b->pos[t];
        size_t base = (((size_t)seq * hp->n_layer + (size_t)j->il) * (size_t)m->n_ctx) * (size_t)m->kv_dim +
                      (size_t)(h / group) * (size_t)hd;
        const uint16_t *kc = m->k_cache + base, *vc = m->v_cache + base;
        /* q is rounded to F16 like llama.cpp's F16-cache dot product */
        const float *q = m->s.q + (size_t)t * m->q_dim + (size_t)h * hd;
        if (simd) round_f16_row_avx2(qh, q, hd);
        else for (int i = 0; i < hd; i++) qh[i] = round_f16(q[i]);
        /* online softmax over the positions 0..pos */
        float mx = -INFINITY, sum = 0.0f;
        for (int i = 0; i < hd; i++) acc[i] = 0.0f;
        for (int k = 0; k <= pos; k++) {
            const uint16_t *kr = kc + (size_t)k * m->kv_dim;
            float s = (simd ? dot_f16_avx2(qh, kr, hd) : dot_f16_scalar(qh, kr, hd)) * scale;
            float ms = 1.0f, vs = 1.0f;
            if (s > mx) {
                ms = expf(mx - s);
                mx = s;
                if (simd) scale_f16_avx2(acc, ms, hd);
                else for (int i = 0; i < hd; i++) acc[i] = round_f16(acc[i] * ms);
            } else {
                vs = expf(s - mx);
            }
            const uint16_t *vr = vc + (size_t)k * m->kv_dim;
            if (simd) axpy_f16_avx2(acc, vs, vr, hd);
            else axpy_f16_scalar(acc, vs, vr, hd);
            sum = sum * ms + vs;
        }
        float *out = m->s.att + (size_t)t * m->q_dim + (size_t)h * hd;
        const float inv = sum == 0.0f ? 0.0f : 1.0f / sum;
        for (int i = 0; i < hd; i++) out[i] = acc[i] * inv;
    }
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* The per-token work between a layer's products, token t of the step. */
typedef enum {
    PART_ATTN_NORM, /* xn = rmsnorm(x) with the attention norm */
    PART_QKV,       /* q, k, v: bias, RoPE, k and v into the cache */
    PART_FFN_NORM,  /* x += xn (the o product's output), xn = rmsnorm(x) with the ffn norm */
    PART_SWIGLU,    /* gate = silu(gate) * up */
    PART_RESIDUAL,  /* x += xn (the down product's output) */
} part_kind;

typedef struct {
    cpu_model *m;
    const apr_batch *b;
    int il;
    part_kind kind;
} part_job;

static void part_token(const part_job *j, int t)
{
    cpu_model *m = j->m;
    const apr_hparams *hp = &m->hp;
    const layer *L = &m->layers[j->il];
    scratch *s = &m->s;
    const int E = (int)hp->n_embd, hd = (int)hp->head_dim, F = (int)hp->n_ff;
    float *x = s->x + (size_t)t * E, *xn = s->xn + (size_t)t * E;
    switch (j->kind) {
    case PART_ATTN_NORM: rmsnorm(xn, x, L->attn_norm, E, hp->rms_eps); break;
    case PART_QKV: {
        float *q = s->q + (size_t)t * m->q_dim, *k = s->k + (size_t)t * m->kv_dim;
        float *v = s->v + (size_t)t * m->kv_dim;
        const int pos = j->b->pos[t];
        if (L->bq) {
            for (int i = 0; i < m->q_dim; i++) q[i] += L->bq[i];
            for (int i = 0; i < m->kv_dim; i++) k[i] += L->bk[i];
            for (int i = 0; i < m->kv_dim; i++) v[i] += L->bv[i];
        }
        for (uint32_t h = 0; h < hp->n_head; h++)
            rope(q + h * hd, pos, (int)hp->rope_dim, hp->rope_freq_base, hp->rope_neox);
        for (uint32_t h = 0; h < hp->n_head_kv; h++)
            rope(k + h * hd, pos, (int)hp->rope_dim, hp->rope_freq_base, hp->rope_neox);
        size_t off = (((size_t)j->b->seq[t] * hp->n_layer + (size_t)j->il) * (size_t)m->n_ctx + (size_t)pos) *
                     (size_t)m->kv_dim;
        to_f16(m->k_cache + off, k, m->kv_dim, m->isa != APR_ISA_SCALAR);
        to_f16(m->v_cache + off, v, m->kv_dim, m->isa != APR_ISA_SCALAR);
        break;
    }
    case PART_FFN_NORM:
        for (int i = 0; i < E; i++) x[i] += xn[i];
        rmsnorm(xn, x, L->ffn_norm, E, hp->rms_eps);
        break;
    case PART_SWIGLU: {
        float *g = s->gate + (size_t)t * F;
        const float *u = s->up + (size_t)t * F;
        for (int i = 0; i < F; i++) g[i] = silu(g[i]) * u[i];
        break;
    }
    case PART_RESIDUAL:
        for (int i = 0; i < E; i++) x[i] += xn[i];
        break;
    }
}

static void part_worker(void *ctx, int ith, int nth)
{
    const part_job *j = ctx;
    const int n = j->b->n;
    for (int t = n * ith / nth; t < n * (ith + 1) / nth; t++) part_token(j, t);
}

static void run_part(cpu_model *m, const apr_batch *b, int il, part_kind kind)
{
    part_job j = {m, b, il, kind};
    if (b->n >= PAR_MIN_TOK) pool_run(m->pool, part_worker, &j);
    else part_worker(&j, 0, 1);
}

/* ------------------------------------------------------------ forward */

int cpu_model_step(cpu_model *m, const apr_batch *b, float *logits, char err[APR_ERRLEN])
{
    if (apr_batch_check(b, m->n_seq, m->n_ctx, m->hp.n_vocab, m->seq_len, err)) return -1;
    if (scratch_reserve(m, b->n)) {
        snprintf(err, APR_ERRLEN, "out of memory for a batch of %d", b->n);
        return -1;
    }
    const apr_hparams *hp = &m->hp;
    const int n = b->n, E = (int)hp->n_embd;
    scratch *s = &m->s;

    /* token embeddings */
    for (int t = 0; t < n; t++)
        apr_dequant_row(m->tok_embd.type, m->tok_embd.data + (size_t)b->token[t] * m->tok_embd.row_bytes,
                        s->x + (size_t)t * E, E);

    for (int il = 0; il < (int)hp->n_layer; il++) {
        const layer *L = &m->layers[il];

        /* attention: norm, q/k/v projections, rope, cache, attend, project */
        run_part(m, b, il, PART_ATTN_NORM);
        const weight *qkv_w[3] = {&L->wq, &L->wk, &L->wv};
        float *qkv_out[3] = {s->q, s->k, s->v};
        matmul_group(m, 3, qkv_w, qkv_out, s->xn, n);
        run_part(m, b, il, PART_QKV);
        attn_job aj = {m, b, il};
        pool_run(m->pool, attn_worker, &aj);
        matmul1(m, &L->wo, s->xn, s->att, n);

        /* feed-forward: residual, norm, gate and up, SwiGLU, down, residual */
        run_part(m, b, il, PART_FFN_NORM);
        const weight *gu_w[2] = {&L->gate, &L->up};
        float *gu_out[2] = {s->gate, s->up};
        matmul_group(m, 2, gu_w, gu_out, s->xn, n);
        run_part(m, b, il, PART_SWIGLU);
        matmul1(m, &L->down, s->xn, s->gate, n);
        run_part(m, b, il, PART_RESIDUAL);
    }

    /* the sequences now hold these positions */
    for (int t = 0; t < n; t++)
        if (b->pos[t] + 1 > m->seq_len[b->seq[t]]) m->seq_len[b->seq[t]] = b->pos[t] + 1;

    /* final norm and output projection for the entries that want logits */
    int n_out = 0;
    for (int t = 0; t < n; t++) {
        bool want = b->want_logits ? b->want_logits[t] != 0 : t == n - 1;
        if (want) rmsnorm(s->xn + (size_t)n_out++ * E, s->x + (size_t)t * E, m->output_norm, E, hp->rms_eps);
    }
    if (n_out) matmul1(m, &m->output, logits, s->xn, n_out);
    return 0;
}
