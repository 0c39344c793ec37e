/* The CUDA backend's kernels behind C launchers (private to cuda/ and the GPU
 * tests in tests/gpu). Every pointer here is device memory unless it says
 * otherwise; launchers only enqueue on the given stream and never synchronize,
 * so callers check cudaGetLastError() after them.
 *
 * Numerics follow the CPU engine (worker/kernels.c, worker/cpu.c) on purpose:
 * activations are quantized to 8 bits exactly as the CPU does (Q8_K-style per
 * 256 for the K-quants, Q8_0-style per 32 for the legacy quants), so the
 * integer dot products are identical and only the float summation order
 * differs. That is what makes cuda-vs-cpu parity checks tight. The exception:
 * steps of up to 16 entries (decode, apr_cu_gemv) quantize the K-quants'
 * activations Q8_0-style too, a scale per 32 as llama.cpp's CUDA backend
 * does, so that a producer owning whole 32-groups (attention's heads) can
 * quantize its own output with no kernel in between.
 */
#ifndef APR_CUDA_KERNELS_H
#define APR_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Launch choices fixed for a context's life: what the launchers need of the
 * device, and the measurement knobs of the environment. All zeros is the
 * engine's default everywhere (the device is then asked at each launch that
 * needs it), so a context that names only its stream launches as the engine
 * does; apr_cu_tune_env fills the rest once, before any graph is captured.
 * Tests and sweeps force shapes in their own copy. */
typedef struct {
    int sms;             /* multiprocessors (0: ask the device) */
    int pro_resident[8]; /* apr_cu_gemv_fused's blocks resident at once, by kernel (0: ask) */
    int gemv1_off;       /* APR_CUDA_GEMV1=0: quantized products on the older general kernel */
    int gemv1_anytype;   /* APR_CUDA_GEMV1_ANYTYPE=1: one-token launches on the every-type instance */
    int rows2_off;       /* APR_CUDA_GEMV1_ROWS2=0: no gemv1_rows2_kernel */
    int gemv1_minb;      /* APR_CUDA_GEMV1_MINB=3|4: one-token blocks a multiprocessor (0: by size) */
    int gemv1_u, gemv1_w;/* forced chunks a lane loads at once (1, 2; 3: a token's plain rows at two
                          * warps a row), warps a row (1, 2, 4, 8); 0: choose */
    int norm_gemv_off;   /* APR_CUDA_NORM_GEMV=0: apr_cu_gemv_norm declines */
    int pair48_off;      /* APR_CUDA_PAIR48=0: a token's rows of 48 chunks one a warp (gemv1), not two,
                          * and one segment of them by the waves rule (gemv1_wpr), as before */
    int pro_prefetch;    /* APR_CUDA_PREFETCH=N: the fused GEMV's row sets a block prefetches (0: 2, <0: none) */
    int pro_grid;        /* APR_CUDA_PRO_GRID=N: its blocks a multiprocessor (0: as many as fit, <0: a block a row set) */
    int mma_off;         /* APR_CUDA_MMA=0: every product on the GEMV */
    int mma_shape;       /* forced apr_cu_mma block shape (1 64x64, 2 64x32, 3 64x32 split; 0: choose) */
    int mma_split;       /* forced K split (1: never, 2..APR_CU_MMA_SPLIT_MAX; 0: choose) */
} apr_cu_tune;

/* The knobs above from the environment, and the device's figures; the
 * engine calls it once for its context. */
void apr_cu_tune_env(apr_cu_tune *t);
/* What the kernels need set on the device before their first launch (the
 * tensor-core kernels' shared-memory limits): once a process, before any
 * capture. 0 on success, -1 with the CUDA error left for cudaGetLastError. */
int apr_cu_prepare(void);

/* Where a launcher enqueues: the stream, and whether kernels may start while
 * the previous one finishes (programmatic dependent launch: each kernel waits
 * for its predecessor's results with griddepcontrol.wait before it reads
 * anything, so the overlap hides only the launch latency). */
typedef struct {
    apr_cu_tune tune;
    cudaStream_t stream;
    int pdl;
    /* device memory apr_cu_mma may use for partial sums when it splits a
     * product's K across blocks (NULL: it never does): APR_CU_MMA_WORK_BYTES
     * of mma_work_rows, for products of up to that many output rows */
    float *mma_work;
    int mma_work_rows;
    /* device memory for attention split across the context (flash-decoding)
     * in steps of up to APR_CU_ATT_SPLIT_TOK entries: att_work_bytes of at
     * least apr_cu_attention_work_bytes(shape), zeroed once; NULL: never split */
    void *att_work;
    size_t att_work_bytes;
    /* non-zero: apr_cu_norm_quant (and the products that fold a norm in,
     * apr_cu_gemv_norm and apr_cu_gemv_onorm) let the next kernel (a
     * product, whose blocks then load their weights, or attention) launch at
     * its start instead of after it has waited for its predecessor, under
     * programmatic dependent launch.
     * Every kernel still waits for its predecessor before it reads what the
     * step wrote, so this changes timing only. */
    int early;
    /* non-zero: the one-token product launched here was let in early (its
     * predecessor's `early`), so its blocks decode their first weights
     * (scales to floats, quants unpacked) before they wait, leaving only
     * the activations' arithmetic after it. Same bits either way. */
    int pre;
} apr_cu_ctx;

/* ------------------------------------------------------------ weights */
/* GPU layout of a weight matrix of n_out rows of n_in elements. Same bytes as
 * the file, rearranged so that every 16-byte load is aligned:
 *   F32, F16, Q4_K: unchanged (Q4_K's 144-byte blocks are 16-byte multiples)
 *   Q6_K: planes ql[nb][128] qh[nb][64] scales[nb][16] d[nb]  (blocks of 210 bytes are not)
 *   Q5_0: planes qs[nb][16] qh[nb][4] d[nb];  Q4_0: qs[nb][16] d[nb];  Q8_0: qs[nb][32] d[nb]
 * where nb counts the tensor's blocks row after row. */
typedef struct {
    const void *data; /* 256-byte aligned */
    uint32_t type;
    int n_in, n_out;
} apr_cu_weight;

/* Whether the GPU kernels take weights of this type. */
int apr_cu_supports(uint32_t type);
/* Bytes of the GPU layout (equal to the file's); 0 when unsupported or when
 * n_in is not a whole number of blocks. */
size_t apr_cu_weight_bytes(uint32_t type, int n_in, int n_out);
/* Whether apr_cu_repack moves bytes (else the file's bytes are the layout). */
int apr_cu_needs_repack(uint32_t type);
/* File layout (raw, any alignment) -> GPU layout (dst, 256-byte aligned). */
int apr_cu_repack(uint32_t type, int n_in, int n_out, const void *raw, void *dst, cudaStream_t s);

/* --------------------------------------------------------- activations */
/* ntok rows of activations as every GEMV consumer wants them. Row stride ld
 * elements (a multiple of 256) for f, qk and q0; ld/32 pairs for dsk/ds0. */
typedef struct {
    float *f;    /* f32 (F32/F16 weights read these) */
    int8_t *qk;  /* Q8_K-style: one d per 256 = max/-127, the CPU's quantize_q8_K */
    float *dsk;  /* [ld/32][2]: d of the 32-group (same for its 256) and the sum of its quants */
    /* The GEMV's K-quant dot products take a d per 32-group, so apr_cu_gemv
     * also accepts Q8_0-style rows as its qk/dsk (q0/ds0's pointers): the
     * decode steps do (see the top of this file); apr_cu_mma reads Q8_K only. */
    int8_t *q0;  /* Q8_0-style: per 32, d = amax/127 rounded to f16 */
    float *ds0;  /* [ld/32][2]: d and the sum of the quants */
    int ld;
    /* NULL, or rows that still owe the RMSNorm's 1/rms (apr_cu_gemv_onorm's
     * output): per token [ld/32] sums of squares of the norm's input, one per
     * 32-group of rms_n elements; apr_cu_gemv's SwiGLU products (steps of up
     * to APR_CU_MMA_MIN_TOK - 1, rms_n up to 2048) multiply their finished
     * sums by 1 / sqrt(sum / rms_n + rms_eps), every other consumer refuses
     * them */
    float *rms;
    float rms_eps;
    int rms_n;
} apr_cu_act;

/* Row t of out <- row rows[t] (rows NULL: t) of x, RMS-normalized with
 * weight w (w NULL: copied as is), then quantized both ways (Q8_K-style only
 * when n % 256 == 0, Q8_0-style when n % 32 == 0; a style whose pointer in
 * out is NULL is not written). x may be out->f when w is NULL and rows is
 * NULL (quantize in place). */
void apr_cu_norm_quant(const float *x, int ldx, const int32_t *rows, const float *w, float eps, int n,
                       int ntok, const apr_cu_act *out, const apr_cu_ctx *c);

/* ------------------------------------------------------------- GEMV */
enum {
    APR_CU_STORE = 0,  /* out[t][r] = w_r . a_t */
    APR_CU_ADD = 1,    /* out[t][r] += w_r . a_t   (residual connections) */
    APR_CU_SWIGLU = 2, /* out[t][r] = silu(w_r . a_t) * (w2_r . a_t)   (w2 has w's type and shape) */
};

typedef struct {
    apr_cu_weight w, w2; /* w2: SWIGLU only */
    float *out;
    int ldo;
    int mode;
    /* NULL, or (where apr_cu_gemv_argmax_ok says the product's kernel has
     * it; apr_cu_gemv refuses it elsewhere) greedy's argmax of the row the
     * product writes, atomically max-ed into APR_CU_ARGMAX_SPREAD words
     * APR_CU_ARGMAX_STRIDE apart (zero before, 8-byte aligned) for
     * apr_cu_topk_done_filled, which reads and zeroes them */
    unsigned long long *amax;
} apr_cu_gemv_seg;
#define APR_CU_ARGMAX_SPREAD 32
#define APR_CU_ARGMAX_STRIDE 16 /* words: one 128-byte line each */
#define APR_CU_ARGMAX_BYTES (APR_CU_ARGMAX_SPREAD * APR_CU_ARGMAX_STRIDE * 8)

/* Up to 3 products over the same activations in one launch (q/k/v): rows of
 * all segments are spread over warps together. ntok tokens; the weights are
 * read once per tile of up to 8 tokens. Returns -1 on a bad argument. */
#define APR_CU_MAX_SEG 3
int apr_cu_gemv(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_act *a, int ntok, const apr_cu_ctx *c);
/* Whether apr_cu_gemv of these segments takes apr_cu_gemv_seg.amax: the
 * one-token kernel of rows of 1536 quantized weights (the 1.5B's output
 * matrix), where the argmax costs a compare and an atomic a warp. */
int apr_cu_gemv_argmax_ok(const apr_cu_gemv_seg *seg, int n_seg, int ntok, const apr_cu_ctx *c);

/* One token whose activations are not yet quantized: the f32 row (row
 * rows[0] of x when rows is set, else row 0; stride ldx), RMS-normalized with
 * w unless w is NULL, n elements. */
typedef struct {
    const float *x;
    const int32_t *rows;
    int ldx;
    const float *w;
    float eps;
    int n;
} apr_cu_quant_src;

/* The decode GEMV (one token) that quantizes its own input: every block
 * normalizes and quantizes the row into its shared memory, bit for bit as
 * apr_cu_norm_quant would, then runs apr_cu_gemv's product on it. That saves
 * the separate norm/quantize kernel and its latency for a few KB of L2 reads
 * per block; the block also starts its weights towards L2 before it waits
 * for the previous kernel (programmatic dependent launch). Returns 0 when
 * launched, 1 when this case is not fused (F32/F16 weights, rows too wide for
 * the shared memory, misaligned rows: quantize and call apr_cu_gemv), -1 on a
 * bad argument. */
int apr_cu_gemv_fused(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_quant_src *src, const apr_cu_ctx *c);
/* The o product of a step of up to APR_CU_MMA_MIN_TOK - 1 entries with the
 * next RMSNorm's quantization folded in: seg (one ADD segment, x += W a, x's
 * rows ldo apart) as apr_cu_gemv computes it, and then, per token, x * g
 * (the norm's weight) quantized Q8_0-style into out's q0/ds0 and the sums of
 * squares of x's 32-groups into out->rms (its rms_eps, rms_n: the norm's eps
 * and n_out). A block owns one 32-group of rows, so no kernel has to wait for
 * the whole row before quantizing; the consumer applies 1/rms (apr_cu_act).
 * A token's outputs are the same bits for every ntok. Taken for Q4_K, Q6_K,
 * Q4_0, Q5_0 and Q8_0 weights of up to 64 chunks a row and n_out a multiple
 * of 32; returns 0 when launched, 1 when not taken (the caller runs the
 * product and apr_cu_norm_quant), -1 on a bad argument. */
int apr_cu_gemv_onorm(const apr_cu_gemv_seg *seg, const apr_cu_act *a, int ntok, const float *g, const apr_cu_act *out,
                      const apr_cu_ctx *c);

/* The q/k/v product of a step of up to APR_CU_MMA_MIN_TOK - 1 entries with
 * the RMSNorm folded in, so that no norm/quantize kernel runs before it: the
 * f32 rows x (ntok of them, ldx apart; rows must be NULL) times w (the norm's
 * weight, n elements), staged by each block in shared memory and multiplied
 * with the dequantized weights in f32, each output then times
 * 1 / sqrt(mean(x^2) + eps), which every row's warp works out alike. A
 * token's outputs are the same bits for every ntok. Taken for STORE segments
 * of Q4_K, Q6_K, Q4_0, Q5_0 and Q8_0 with n a multiple of 128 up to 1024 and
 * rows that fit on the GPU in one wave (where it measured faster: the 0.5B's
 * q/k/v, not the 1.5B's). Returns 0 when launched, 1 when this case is not
 * taken (the caller runs apr_cu_norm_quant + apr_cu_gemv), -1 on a bad
 * argument. */
int apr_cu_gemv_norm(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_quant_src *src, int ntok,
                     const apr_cu_ctx *c);

/* ------------------------------------------- tensor-core products (mma.cu) */
/* The same products, epilogues and numerics as apr_cu_gemv, as int8 mma.sync
 * tiles on the tensor cores: integer sums per 32-element block (16 for Q6_K)
 * times the weight and activation scales, accumulated in f32. For Q4_K,
 * Q6_K, Q5_0, Q4_0 and Q8_0 weights. Segments of different types take one
 * launch each. Returns -1 on a bad argument or an unsupported type. */
int apr_cu_mma_supports(uint32_t type);
int apr_cu_mma(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_act *a, int ntok, const apr_cu_ctx *c);
/* What the forward pass calls: apr_cu_mma when every segment's type has it
 * and there are APR_CU_MMA_ALL_TOK tokens or more, or APR_CU_MMA_MIN_TOK or
 * more and the product is wide (APR_CU_MMA_WIDE_ROWS output rows, SwiGLU's
 * counted twice); apr_cu_gemv otherwise (decode, small batches), and always
 * when the context says mma_off (APR_CUDA_MMA=0). The tensor cores' sums round
 * differently from the GEMV's, which give a token the same bits in any batch
 * they take: MIN_TOK 17 keeps steps of up to 16 entries (the graph buckets
 * up to 16, which pad the batch) on the GEMV, so that a sequence decoding
 * beside a few others or a short prompt gets the tokens it would get alone. */
#define APR_CU_MMA_MIN_TOK 17
#define APR_CU_MMA_SPLIT_MAX 4 /* blocks a product's K is split across, at most */
#define APR_CU_MMA_WORK_BYTES(max_rows) ((size_t)APR_CU_MMA_SPLIT_MAX * 64 * 2 * (size_t)(max_rows) * sizeof(float))
#define APR_CU_MMA_ALL_TOK 64
#define APR_CU_MMA_WIDE_ROWS 4096
int apr_cu_matmul(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_act *a, int ntok, const apr_cu_ctx *c);

/* ---------------------------------------------------- candidate rows */
/* For each of nrows rows of n logits: ks[r] (device memory; NULL: k_all for
 * every row) candidates, 0 skipping the row, at most APR_CU_TOPK_MAX; row r's
 * answer at out + r * stride bytes (stride >= APR_CU_TOPK_STRIDE): an int32
 * count, then that many {int32 id, float logit}, exactly apr_topk_select's
 * (worker/backend.h). work (apr_cu_topk_work_bytes(nrows) of device memory,
 * or NULL) lets a row be split across several blocks when rows are few; it
 * must be zeroed before its first use (the kernels leave it so: rows of k 1
 * keep a word there). -1 on a bad argument. */
#define APR_CU_TOPK_MAX 64
#define APR_CU_TOPK_STRIDE (4 + 8 * APR_CU_TOPK_MAX)
#define APR_CU_TOPK_PARTS 32
size_t apr_cu_topk_work_bytes(int nrows);
/* apr_cu_topk of one row whose answer goes to host memory mapped into the
 * device's space, then *ticket += 1 and the new count stored to *done
 * (host-mapped) once the answer is visible there: the host polls done. -1
 * where the row would take one block (no merge kernel to signal): the caller
 * then uses apr_cu_topk and apr_cu_copy16_done. */
int apr_cu_topk_done(const float *logits, int n, int nrows, const int32_t *ks, int k_all, void *out, size_t stride,
                     void *work, unsigned *ticket, unsigned *done, const apr_cu_ctx *c);
/* apr_cu_topk_done (ticket and done may be NULL) of a row whose product
 * also left its argmax in words (apr_cu_gemv_seg.amax): for k 1 the answer
 * comes from them without a scan of the row; every k zeroes them. */
int apr_cu_topk_done_filled(const float *logits, int n, const int32_t *ks, int k_all, void *out, size_t stride,
                            void *work, unsigned long long *words, unsigned *ticket, unsigned *done,
                            const apr_cu_ctx *c);
/* The parts apr_cu_topk splits each of nrows rows of n into (with a work
 * area): apr_cu_topk_done takes only rows of more than one. */
int apr_cu_topk_parts(int n, int nrows, const apr_cu_ctx *c);
/* The device's multiprocessors: the context's figure, else the device's. */
int apr_cu_sms(const apr_cu_ctx *c);
/* test_kernels_cuda --sync-bench: a kernel boundary against a grid barrier (cuda/sync_bench.cu). */
int apr_cu_sync_bench(void);
/* test_kernels_cuda --gemv-bench: a kernel that only reads bytes at p (shape 0:
 * a resident grid striding, 1: one short block per 16 KB), sink a device word. */
int apr_cu_read_bench(const void *p, size_t bytes, int shape, unsigned *sink, const apr_cu_ctx *c);
/* Writes the GPU's %globaltimer (ns) to *slot once the previous kernel is done (profiling). */
void apr_cu_stamp(unsigned long long *slot, const apr_cu_ctx *c);
/* dst <- src, bytes (a multiple of 16, both 16-byte aligned) in a kernel:
 * for pinned host memory mapped into the device's space (either side), a
 * graph node that, unlike a copy, lets the kernels around it overlap their
 * launches (programmatic dependent launch). */
void apr_cu_copy16(const void *src, void *dst, size_t bytes, const apr_cu_ctx *c);
/* The batch block in: the first B entries of each of `rows` rows (int32,
 * stride apart), src host memory mapped into the device's space. With rec
 * (host-mapped, 16-byte aligned) one entry instead, from four words tagged
 * in their top byte (token, pos, seq + 1, candidates): the kernel waits
 * until every tag is (*ticket + 1) mod 256, *ticket device memory. */
void apr_cu_batch_in(const int32_t *src, int32_t *dst, int rows, int B, int stride, const uint4 *rec,
                     const unsigned *ticket, const apr_cu_ctx *c);
/* apr_cu_copy16 of at most 16 KB in one block, then *ticket += 1 and the new
 * value stored to *done (host-mapped) after the copy is visible to the host:
 * the host polls done instead of synchronizing the stream. 0, or -1 (too
 * many bytes, or the launch failed). */
int apr_cu_copy16_done(const void *src, void *dst, size_t bytes, unsigned *ticket, unsigned *done,
                       const apr_cu_ctx *c);
int apr_cu_topk(const float *logits, int n, int nrows, const int32_t *ks, int k_all, void *out, size_t stride,
                void *work, const apr_cu_ctx *c);

/* ---------------------------------------------------------- the rest */
/* out[t][0..n_in) = dequantized row ids[t] of w (embedding lookup). */
void apr_cu_get_rows(const apr_cu_weight *w, const int32_t *ids, int ntok, float *out, int ldo,
                     const apr_cu_ctx *c);

/* Per token row of qkv = [q (n_head*hd) | k (n_kv*hd) | v (n_kv*hd)]: add the
 * biases (NULL: none), rotate q and k (RoPE at pos[t], neox or adjacent pairs;
 * theta of pair i is pos * theta_scale^i multiplied step by step as the CPU
 * does), and store k and v as F16 into the layer's cache at [seq][pos].
 * Entries with seq[t] < 0 are padding and are skipped. Cache layout of one
 * layer: [n_seq][n_ctx][n_kv*hd]; seq_stride = n_ctx * n_kv * hd. */
typedef struct {
    int n_head, n_head_kv, head_dim, rope_dim, neox;
    float theta_scale; /* powf(freq_base, -2 / rope_dim), computed once on the host */
    size_t seq_stride;
    int f16_acc; /* attention as the CPU engine does it, for parity checks: keys one
                    after another, V summed in an F16 accumulator; slow */
} apr_cu_attn_shape;

void apr_cu_qkv_post(float *qkv, int ldqkv, const float *bq, const float *bk, const float *bv,
                     const int32_t *pos, const int32_t *seq, int ntok, const apr_cu_attn_shape *sh,
                     uint16_t *k_cache, uint16_t *v_cache, const apr_cu_ctx *c);

/* Causal attention of each token's q heads over its sequence's cached keys
 * 0..pos[t] (GQA: q head h reads kv head h / (n_head / n_head_kv)). q is
 * rounded to F16 first, as the CPU does against its F16 cache; softmax and
 * the V accumulation are f32. out[t][h*hd + i]; padding entries get zeros.
 * q8 (NULL: no): the same rows also quantized Q8_0-style into q8->q0 and
 * q8->ds0 (row stride q8->ld), the bytes apr_cu_norm_quant would write for
 * them, so the o product needs no quantize kernel (each block owns its
 * head's whole 32-groups); needs head_dim % 32 == 0 and no f16_acc.
 * Returns -1 if head_dim is not a multiple of 8 or exceeds 256, or q8 is
 * set where it cannot be. */
#define APR_CU_ATT_SPLIT_TOK 16
size_t apr_cu_attention_work_bytes(const apr_cu_attn_shape *sh);
int apr_cu_attention(const float *q, int ldq, const uint16_t *k_cache, const uint16_t *v_cache,
                     const int32_t *pos, const int32_t *seq, int ntok, const apr_cu_attn_shape *sh,
                     float *out, int ldo, const apr_cu_act *q8, const apr_cu_ctx *c);

/* One decode token (ntok 1): apr_cu_qkv_post and apr_cu_attention in one
 * launch. Each attention block biases and rotates its own q head and its kv
 * head's new key (the same arithmetic), the first q head of each kv group
 * appends the key and value to the cache, and every block takes the token's
 * own position from shared memory instead of the cache. qkv is left as the
 * GEMV wrote it. Returns 1 where not fused (f16_acc: call the two), -1 as
 * apr_cu_attention. */
int apr_cu_attention_rope(float *qkv, int ldqkv, const float *bq, const float *bk, const float *bv,
                          const int32_t *pos, const int32_t *seq, const apr_cu_attn_shape *sh, uint16_t *k_cache,
                          uint16_t *v_cache, float *out, int ldo, const apr_cu_act *q8, const apr_cu_ctx *c);

#ifdef __cplusplus
}
#endif
#endif
