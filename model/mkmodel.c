/* Synthetic Qwen2.5 models: the real shapes, llama.cpp's Q4_K_M tensor-type
 * mix and a real vocabulary, with random but numerically sane weights, so the
 * engines can be benchmarked and tested at full size without carrying model
 * files around.
 *
 * Weights: every row gets values of roughly zero mean and standard deviation
 * 1/sqrt(row length), so activations keep their scale through the matmuls;
 * the embedding is wider (4/sqrt(n_embd)) so logits spread and greedy
 * decoding has clear winners. Norm weights are near 1, biases small.
 *
 * Determinism: each quant block draws from its own counter-based generator
 * keyed by (seed, tensor index, block index), so the bytes do not depend on
 * the number of threads. Tensors are produced one at a time (split across
 * threads) and streamed to the writer, so a 19 GB model never sits in memory.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"

typedef struct {
    const char *name;
    uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff;
    bool tied; /* output shares token_embd (0.5B..3B) */
} mk_shape;

static const mk_shape shapes[] = {
    {"qwen2.5-0.5b", 896, 24, 14, 2, 4864, true},    {"qwen2.5-1.5b", 1536, 28, 12, 2, 8960, true},
    {"qwen2.5-3b", 2048, 36, 16, 2, 11008, true},    {"qwen2.5-7b", 3584, 28, 28, 4, 18944, false},
    {"qwen2.5-14b", 5120, 48, 40, 8, 13824, false},  {"qwen2.5-32b", 5120, 64, 40, 8, 27648, false},
    /* not a real model: small and quick, for tests (tiny-qwen2-a's body) */
    {"qwen2-tiny", 256, 4, 2, 1, 768, true},
};

#define MAX_THREADS 256

/* ------------------------------------------------------------ random */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t stream_seed(uint64_t seed, uint64_t tensor, uint64_t block)
{
    uint64_t s = seed ^ 0x5851f42d4c957f2dull;
    uint64_t a = splitmix(&s) ^ (tensor * 0xd1342543de82ef95ull);
    a = splitmix(&a) ^ block;
    return splitmix(&a);
}

static void rand_bytes(uint64_t *s, uint8_t *p, size_t n)
{
    while (n >= 8) {
        uint64_t x = splitmix(s);
        memcpy(p, &x, 8);
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t x = splitmix(s);
        memcpy(p, &x, n);
    }
}

/* Uniform in [0, 1). */
static float rand_unit(uint64_t *s) { return (float)(splitmix(s) >> 40) * (1.0f / 16777216.0f); }

static uint32_t rand_range(uint64_t *s, uint32_t lo, uint32_t hi) /* inclusive */
{
    return lo + (uint32_t)(splitmix(s) % (hi - lo + 1));
}

/* ------------------------------------------------------------ blocks */
/* sigma is the standard deviation wanted for the dequantized weights. */

static void gen_q4_k(uint64_t *s, block_q4_K *b, float sigma)
{
    uint8_t sc[8], m[8];
    /* q is uniform on 0..15 (std 4.61, mean 7.5); the sub-block scale sets the
     * spread and min = 7.5 * scale cancels the mean exactly. A mean left in
     * the weights would add the same offset to every output of a matmul, and
     * over the layers that common direction swamps the input: every prompt
     * would then predict the same token. */
    float d = sigma / (4.61f * 51.5f);
    float dmin = apr_fp16_to_f32(apr_f32_to_fp16(d)) * 7.5f;
    for (int j = 0; j < 8; j++) {
        sc[j] = (uint8_t)rand_range(s, 40, 63);
        m[j] = sc[j];
    }
    for (int j = 0; j < 4; j++) {
        b->scales[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        b->scales[j + 4] = (uint8_t)((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        b->scales[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
    }
    b->d = apr_f32_to_fp16(d);
    b->dmin = apr_f32_to_fp16(dmin);
    rand_bytes(s, b->qs, sizeof b->qs);
}

static void gen_q6_k(uint64_t *s, block_q6_K *b, float sigma)
{
    /* q is uniform on 0..63, centred at 32 (std 18.5); scales of either sign */
    rand_bytes(s, b->ql, sizeof b->ql);
    rand_bytes(s, b->qh, sizeof b->qh);
    for (int j = 0; j < 16; j++) {
        int v = (int)rand_range(s, 16, 63);
        b->scales[j] = (int8_t)(splitmix(s) & 1 ? v : -v);
    }
    b->d = apr_f32_to_fp16(sigma / (18.5f * 39.5f));
}

static void gen_q5_0(uint64_t *s, block_q5_0 *b, float sigma)
{
    /* weights are q - 16 for a 5-bit q: a uniform q (mean 15.5) would leave a
     * mean of -0.5; mapping q = 0 to 16 makes the values symmetric about 0 */
    rand_bytes(s, b->qh, sizeof b->qh);
    rand_bytes(s, b->qs, sizeof b->qs);
    uint32_t qh = (uint32_t)b->qh[0] | (uint32_t)b->qh[1] << 8 | (uint32_t)b->qh[2] << 16 | (uint32_t)b->qh[3] << 24;
    for (int j = 0; j < 16; j++) {
        if ((b->qs[j] & 0x0f) == 0 && !(qh >> j & 1)) qh |= 1u << j;
        if ((b->qs[j] >> 4) == 0 && !(qh >> (j + 16) & 1)) qh |= 1u << (j + 16);
    }
    for (int k = 0; k < 4; k++) b->qh[k] = (uint8_t)(qh >> (8 * k));
    b->d = apr_f32_to_fp16(sigma / 8.80f); /* std of the symmetric values */
}

static void gen_q8_0(uint64_t *s, block_q8_0 *b, float sigma)
{
    /* int8 without -128, so the values are symmetric about 0 */
    rand_bytes(s, (uint8_t *)b->qs, sizeof b->qs);
    for (int j = 0; j < 32; j++)
        if (b->qs[j] == -128) b->qs[j] = 0;
    b->d = apr_f32_to_fp16(sigma / 73.5f);
}

/* ------------------------------------------------------------ tensors */

typedef struct {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[2];
    float sigma; /* weights; 0 for the F32 norm/bias vectors */
} mk_tensor;

/* llama.cpp's Q4_K_M: more bits for attn_v and ffn_down in these layers. */
static bool use_more_bits(uint32_t i, uint32_t n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* Rows that do not split into 256-blocks fall back to legacy quants. */
static uint32_t fallback(uint32_t type, uint64_t row)
{
    if (row % APR_QK_K == 0) return type;
    return type == APR_TYPE_Q6_K ? APR_TYPE_Q8_0 : APR_TYPE_Q5_0;
}

typedef struct {
    mk_tensor *t;
    size_t n, cap;
} mk_list;

static int add(mk_list *l, const char *name, uint32_t type, uint32_t n_dims, uint64_t ne0, uint64_t ne1, float sigma)
{
    if (l->n == l->cap) return -1;
    mk_tensor *t = &l->t[l->n++];
    t->name = name;
    t->type = type == APR_TYPE_F32 ? type : fallback(type, ne0);
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->sigma = sigma;
    return 0;
}

/* Fills one tensor's blocks [b0, b1) (each block a row-chunk of the type). */
typedef struct {
    uint64_t seed, tensor;
    const mk_tensor *mt;
    uint8_t *buf;
    uint64_t b0, b1;
} fill_job;

static void *fill_blocks(void *arg)
{
    const fill_job *j = arg;
    const apr_type_info *ti = apr_type_get(j->mt->type);
    for (uint64_t bi = j->b0; bi < j->b1; bi++) {
        uint64_t s = stream_seed(j->seed, j->tensor, bi);
        uint8_t *p = j->buf + bi * ti->type_size;
        switch (j->mt->type) {
        case APR_TYPE_Q4_K: gen_q4_k(&s, (block_q4_K *)p, j->mt->sigma); break;
        case APR_TYPE_Q6_K: gen_q6_k(&s, (block_q6_K *)p, j->mt->sigma); break;
        case APR_TYPE_Q5_0: gen_q5_0(&s, (block_q5_0 *)p, j->mt->sigma); break;
        case APR_TYPE_Q8_0: gen_q8_0(&s, (block_q8_0 *)p, j->mt->sigma); break;
        default: break;
        }
    }
    return NULL;
}

typedef struct {
    const mk_tensor *list;
    uint64_t seed;
    int n_threads;
    bool progress;
    uint64_t total, done;
    int shown; /* percent last drawn */
} mk_ctx;

static void draw_progress(mk_ctx *c)
{
    int pct = c->total ? (int)(c->done * 100 / c->total) : 100;
    if (pct == c->shown) return;
    c->shown = pct;
    char bar[41];
    int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++) bar[i] = i < fill ? '#' : '.';
    bar[40] = 0;
    fprintf(stderr, "\rmkmodel [%s] %3d%% %6.0f / %.0f MiB", bar, pct, c->done / 1048576.0, c->total / 1048576.0);
    if (pct == 100) fputc('\n', stderr);
    fflush(stderr);
}

static int fill_tensor(void *ctx, uint64_t i, const gguf_tensor *t, void *buf)
{
    mk_ctx *c = ctx;
    const mk_tensor *mt = &c->list[i];
    if (mt->type == APR_TYPE_F32) {
        /* norms near 1, biases small: one stream, these are short vectors */
        uint64_t s = stream_seed(c->seed, i, 0);
        float *v = buf;
        bool bias = strstr(mt->name, ".bias") != NULL;
        for (uint64_t k = 0; k < t->ne[0] * t->ne[1]; k++) {
            float u = rand_unit(&s) * 2.0f - 1.0f;
            v[k] = bias ? 0.05f * u : 1.0f + 0.1f * u;
        }
    } else {
        const apr_type_info *ti = apr_type_get(mt->type);
        uint64_t n_blocks = t->nbytes / ti->type_size;
        int nt = c->n_threads;
        if (t->nbytes < (4u << 20)) nt = 1;
        fill_job jobs[MAX_THREADS];
        pthread_t th[MAX_THREADS];
        bool started[MAX_THREADS];
        for (int k = 0; k < nt; k++) {
            jobs[k] = (fill_job){c->seed, i, mt, buf, n_blocks * (uint64_t)k / (uint64_t)nt,
                                 n_blocks * (uint64_t)(k + 1) / (uint64_t)nt};
            started[k] = k > 0 && pthread_create(&th[k], NULL, fill_blocks, &jobs[k]) == 0;
            if (k > 0 && !started[k]) fill_blocks(&jobs[k]); /* no thread: do it here */
        }
        fill_blocks(&jobs[0]);
        for (int k = 1; k < nt; k++)
            if (started[k]) pthread_join(th[k], NULL);
    }
    c->done += t->nbytes;
    if (c->progress) draw_progress(c);
    return 0;
}

static const mk_shape *find_shape(const char *name)
{
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        if (!strcmp(shapes[i].name, name)) return &shapes[i];
        if (!strncmp(shapes[i].name, "qwen2.5-", 8) && !strcmp(shapes[i].name + 8, name))
            return &shapes[i]; /* "1.5b" */
    }
    return NULL;
}

/* Tensor names live in one buffer owned by the caller: n * 48 bytes. */
#define NAME_LEN 48

static int build_list(const mk_shape *sh, uint64_t n_vocab, mk_list *l, char *names)
{
    uint32_t hd = sh->n_embd / sh->n_head;
    uint64_t E = sh->n_embd, Q = (uint64_t)sh->n_head * hd, KV = (uint64_t)sh->n_head_kv * hd, F = sh->n_ff;
    float emb_sigma = 4.0f / sqrtf((float)E);
    int rc = add(l, "token_embd.weight", sh->tied ? APR_TYPE_Q6_K : APR_TYPE_Q4_K, 2, E, n_vocab, emb_sigma);
    for (uint32_t i = 0; i < sh->n_layer; i++) {
        static const struct {
            const char *suffix;
            int rows; /* 0 E, 1 Q, 2 KV, 3 F, -1 vector */
            int cols; /* input dimension: 0 E, 1 Q, 3 F */
            int kind; /* 0 plain Q4_K, 1 more bits rule, 2 F32 */
        } parts[] = {
            {"attn_norm.weight", -1, 0, 2}, {"attn_q.weight", 1, 0, 0},  {"attn_k.weight", 2, 0, 0},
            {"attn_v.weight", 2, 0, 1},     {"attn_q.bias", -1, 1, 2},   {"attn_k.bias", -1, 2, 2},
            {"attn_v.bias", -1, 2, 2},      {"attn_output.weight", 0, 1, 0}, {"ffn_norm.weight", -1, 0, 2},
            {"ffn_gate.weight", 3, 0, 0},   {"ffn_up.weight", 3, 0, 0},  {"ffn_down.weight", 0, 3, 1},
        };
        for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
            const uint64_t dims[4] = {E, Q, KV, F};
            char *name = names + l->n * NAME_LEN;
            snprintf(name, NAME_LEN, "blk.%u.%s", i, parts[k].suffix);
            if (parts[k].kind == 2) {
                rc |= add(l, name, APR_TYPE_F32, 1, dims[parts[k].cols], 1, 0);
            } else {
                uint32_t type = parts[k].kind == 1 && use_more_bits(i, sh->n_layer) ? APR_TYPE_Q6_K : APR_TYPE_Q4_K;
                uint64_t in = dims[parts[k].cols];
                rc |= add(l, name, type, 2, in, dims[parts[k].rows], 1.0f / sqrtf((float)in));
            }
        }
    }
    rc |= add(l, "output_norm.weight", APR_TYPE_F32, 1, E, 1, 0);
    if (!sh->tied) rc |= add(l, "output.weight", APR_TYPE_Q6_K, 2, E, n_vocab, emb_sigma);
    return rc;
}

int apr_mkmodel(const char *shape, const char *vocab_from, const char *out_path, uint64_t seed, int n_threads,
                bool progress, char err[APR_ERRLEN])
{
    const mk_shape *sh = find_shape(shape);
    if (!sh) {
        snprintf(err, APR_ERRLEN, "unknown shape '%.64s' (qwen2.5-0.5b, -1.5b, -3b, -7b, -14b, -32b, or qwen2-tiny)", shape);
        return -2;
    }
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;

    char verr[APR_ERRLEN];
    gguf_file *vf = gguf_open(vocab_from, verr);
    if (!vf) {
        snprintf(err, APR_ERRLEN, "vocabulary '%.64s': %.150s", vocab_from, verr);
        return -1;
    }
    const gguf_value *tok = gguf_get(vf, "tokenizer.ggml.tokens");
    if (!tok || tok->type != GGUF_ARR || tok->arr.type != GGUF_STR || tok->arr.n == 0 || tok->arr.n > (1u << 22)) {
        snprintf(err, APR_ERRLEN, "vocabulary '%.64s': no usable tokenizer.ggml.tokens array", vocab_from);
        gguf_close(vf);
        return -1;
    }
    uint64_t n_vocab = tok->arr.n;

    size_t cap = (size_t)sh->n_layer * 12 + 3;
    mk_tensor list[64 * 12 + 3];
    char *names = NULL;
    gguf_writer *w = gguf_writer_new();
    mk_list l = {list, 0, cap};
    int rc = -1;
    if (!w || !(names = calloc(cap, NAME_LEN))) {
        snprintf(err, APR_ERRLEN, "out of memory");
        goto out;
    }
    if (cap > sizeof list / sizeof list[0] || build_list(sh, n_vocab, &l, names)) {
        snprintf(err, APR_ERRLEN, "internal error: tensor list overflow");
        goto out;
    }

    char name[96];
    snprintf(name, sizeof name, "synthetic %s (seed %llu)", sh->name, (unsigned long long)seed);
    gguf_writer_set_str(w, "general.architecture", "qwen2");
    gguf_writer_set_str(w, "general.name", name);
    gguf_writer_set_u32(w, "qwen2.context_length", 32768);
    gguf_writer_set_u32(w, "qwen2.embedding_length", sh->n_embd);
    gguf_writer_set_u32(w, "qwen2.block_count", sh->n_layer);
    gguf_writer_set_u32(w, "qwen2.feed_forward_length", sh->n_ff);
    gguf_writer_set_u32(w, "qwen2.attention.head_count", sh->n_head);
    gguf_writer_set_u32(w, "qwen2.attention.head_count_kv", sh->n_head_kv);
    gguf_writer_set_f32(w, "qwen2.rope.freq_base", 1000000.0f);
    gguf_writer_set_f32(w, "qwen2.attention.layer_norm_rms_epsilon", 1e-6f);
    gguf_writer_set_u32(w, "general.file_type", 15); /* MOSTLY_Q4_K_M */
    for (uint64_t i = 0; i < vf->n_kv; i++) {
        const gguf_kv *kv = &vf->kv[i];
        if (kv->key.len > 10 && !memcmp(kv->key.s, "tokenizer.", 10)) gguf_writer_copy_kv(w, kv);
    }
    mk_ctx c = {list, seed, n_threads, progress, 0, 0, -1};
    for (size_t i = 0; i < l.n; i++) {
        uint64_t ne[4] = {list[i].ne[0], list[i].ne[1], 1, 1};
        if (gguf_writer_add_tensor(w, list[i].name, list[i].type, list[i].n_dims, ne, err)) goto out;
        c.total += apr_row_bytes(list[i].type, ne[0]) * ne[1];
    }
    rc = gguf_writer_write(w, out_path, fill_tensor, &c, err);
out:
    gguf_writer_free(w);
    free(names);
    gguf_close(vf);
    return rc;
}
