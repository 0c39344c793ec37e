/* The CUDA engine: a Llama / Qwen2 forward pass on one GPU, behind the same
 * backend interface as the CPU engine (worker/backend.h).
 *
 * Memory is three big cudaMalloc regions: the weights (in the GPU layout of
 * cuda/kernels.h, never dequantized), the F16 KV cache, and the scratch of
 * one forward chunk. Weights stream from the file through two pinned buffers
 * (io_uring reads of one overlapping the copy of the other). Under apr-worker
 * the first two belong to a holder process (apr_cuda_hold), which exports
 * each with one cudaIpcGetMemHandle; the engine process that runs the steps
 * imports them and has only the scratch of its own, so it can die and be
 * replaced without a reload (worker/holder.c).
 *
 * forward() reads like the CPU's: embed; per layer norm, q/k/v in one GEMV
 * launch, bias + RoPE + KV append, attention, output projection added to the
 * residual, norm, gate/up with SwiGLU in one launch, down added to the
 * residual; final norm of the rows that want logits and the output GEMV.
 * Steps of up to 64 entries replay a CUDA graph captured once per
 * batch-size bucket, so a decode token costs one graph launch. A one-entry
 * step (decode) fuses further: the attention kernel does bias + RoPE + KV
 * append (GEMVs that quantize their own input exist too, off by default:
 * which fusions pay was measured, see the default of APR_CUDA_FUSE below and
 * docs/PERF.md).
 *
 * Environment, for measurements and checks (all default to the fast path):
 *   APR_CUDA_GRAPHS=0   plain launches instead of graphs
 *   APR_CUDA_PDL=0      no programmatic dependent launch (default: in steps of up to 64
 *                       entries; 2: in the larger prefill steps too)
 *   APR_CUDA_PROFILE=1  per-kernel-class times of plain-launch steps, printed at close
 *   APR_CUDA_PROFILE=2  GPU and wall time of graph steps per bucket, printed at close
 *   APR_CUDA_PROFILE=3  per-kernel-class times inside the one-entry graph (GPU clock stamps)
 *   APR_CUDA_F16_ACC=1  attention with the CPU engine's F16 V accumulator (parity checks)
 *   APR_CUDA_ATT_Q8=0   steps of up to 16 entries quantize attention's output in a kernel of
 *                       its own instead of in attention
 *   APR_CUDA_FUSE=0     one-token steps as separate kernels too (norm/quantize before each
 *                       GEMV, bias + RoPE + KV append before attention); a mask of FUSE_*
 *                       chooses fusions (63: all; default: RoPE only, see open_model)
 *   APR_CUDA_PREFETCH=N, APR_CUDA_PRO_GRID=N  knobs of the fused GEMV (cuda/kernels.cu)
 *   APR_CUDA_MAPPED=0   graphs upload the batch and download the candidates with copies
 *                       instead of kernels on mapped pinned memory
 *   APR_CUDA_NORM_GEMV=0  steps of up to 16 entries normalize and quantize q/k/v's input
 *                       in a kernel of its own instead of in the product (apr_cu_gemv_norm)
 *   APR_CUDA_PAIR48=0   1536-wide products (rows of 48 chunks) as before the fourteenth pass:
 *                       one row a warp, the o product at two warps a row (cuda/kernels.cu)
 *   APR_CUDA_EARLY=MASK  one-token steps: the products (FUSE_* bits) whose norm/quantize
 *                       kernel lets them launch at its start (gate/up: also the o product
 *                       that folds its norm in; FUSE_ROPE: attention at the start of q/k/v
 *                       with the norm folded in; FUSE_WO: the o product at attention's
 *                       start). Default by width: down and gate/up up to 1024, q/k/v,
 *                       gate/up, down and o up to 2047, the first three wider
 *   APR_CUDA_PRE=MASK   of those launched early, the products that decode their first
 *                       weights before their wait. Default: gate/up from 1025 to 2048 wide
 */
#include <cuda_runtime.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cuda/cuda.h"
#include "cuda/kernels.h"
extern "C" {
#include "worker/loader.h"
}

#define CHUNK_CAP 512   /* entries per forward pass (a longer batch runs in chunks) */
#define N_BUCKETS 7     /* graphs for 1, 2, 4, ... 64 entries */
#define LOGIT_ROWS 64   /* pinned logits rows (the largest bucket) */
#define BATCH_ROWS 5    /* rows of the batch block uploaded each step */
#define CAND_STRIDE APR_CU_TOPK_STRIDE /* bytes of a candidate row on the device */
#define STAGE_BYTES (64u << 20)
#define HEADROOM (512ull << 20) /* context, graphs, and what the estimate misses */

static const int bucket_size[N_BUCKETS] = {1, 2, 4, 8, 16, 32, 64};

typedef struct {
    const float *attn_norm, *ffn_norm, *bq, *bk, *bv;
    apr_cu_weight wq, wk, wv, wo, gate, up, down;
} cu_layer;

/* A tensor to upload: where it goes and what points at it. */
typedef struct {
    const gguf_tensor *t;
    size_t off; /* in the weights region */
    int n_in, n_out;
    apr_cu_weight *w; /* matrices */
    const float **vec; /* vectors */
} upload;

struct apr_cuda_model {
    apr_hparams hp;
    int n_ctx, n_seq, q_dim, kv_dim, ldqkv;
    cudaStream_t stream;
    apr_cu_ctx cu;      /* the stream, and programmatic dependent launch on or off */
    uint8_t *d_weights; /* region 1 */
    uint8_t *d_weights_ipc; /* an engine's: the holder's weights as imported (d_weights: its own copy, or this) */
    uint16_t *d_kv;     /* region 2: K [n_layer][n_seq][n_ctx][kv_dim], then V alike */
    uint8_t *d_scratch; /* region 3 */
    bool imported;      /* regions 1 and 2 are a holder's (CUDA IPC), not ours to free */
    size_t weights_bytes, kv_bytes, scratch_bytes, layer_elems;
    apr_cu_weight tok_embd, output;
    const float *output_norm;
    cu_layer *layers;
    apr_cu_attn_shape ash;
    /* views of the scratch region */
    float *x, *qkv, *att, *hb, *logits;
    apr_cu_act act;
    /* steps of up to 16 entries: the ffn norm's input quantized by the o
     * product (apr_cu_gemv_onorm) and its groups' sums of squares, for gate/up */
    apr_cu_act ffn_act;
    int pre;    /* APR_CUDA_PRE: products launched early that decode weights before their wait */
    bool onorm; /* APR_CUDA_ONORM: the ffn norm's quantize in the o product (apr_cu_gemv_onorm) */
    int32_t *d_batch; /* [BATCH_ROWS][CHUNK_CAP]: token, pos, seq, logits row source, candidates wanted */
    int32_t *h_batch; /* pinned mirror */
    /* h_batch and h_cands as the device sees them (mapped pinned memory):
     * graphs move them with kernels rather than copies (APR_CUDA_MAPPED) */
    void *hd_batch, *hd_cands;
    float *h_logits;  /* pinned [LOGIT_ROWS][n_vocab] */
    uint8_t *d_cands; /* [LOGIT_ROWS][CAND_STRIDE]: a graph step's candidate rows (apr_cu_topk) */
    uint8_t *d_cand_work; /* apr_cu_topk's, for rows split across blocks */
    unsigned long long *d_argmax; /* the output product's argmax words (apr_cu_gemv_seg.amax) */
    uint8_t *h_cands; /* pinned mirror */
    /* One-entry steps (graph[0]) take their entry from h_rec, four words
     * (token, pos, seq + 1, candidates) each tagged in its top byte with the
     * count of one-entry steps the host released: the graph's first kernel
     * polls them until every tag is *d_ticket + 1 (d_ticket: the count of
     * those done), so one read over the bus brings both the go and the entry,
     * and a graph launched ahead of its step (apr_batch.ahead) simply waits.
     * Its last kernel stores the new count to *h_done, which the host polls.
     * h_rec and h_done sit past the batch block and the candidate rows in
     * their pinned allocations. */
    uint32_t *h_rec;
    unsigned *h_done, *d_ticket;
    unsigned released;
    bool solo_ok;  /* mapped memory, graphs, entries that fit the tagged words */
    bool ahead_ok; /* solo_ok, no per-step profile; APR_CUDA_AHEAD=0: never */
    bool armed;    /* graph[0] is in the stream waiting for a step not yet given */
    /* graph[0]'s greedy answer from the output product's epilogue
     * (apr_cu_gemv_seg.amax; APR_CUDA_ARGMAX=0: from the top-k's scan), and
     * whether the graph being captured takes it */
    bool argmax_ok, argmax_now;
    cudaEvent_t done_ev;
    int *seq_len;
    cudaGraphExec_t graph[N_BUCKETS];
    bool use_graphs;
    int fuse; /* one-token steps: which fusions (FUSE_*) are on */
    int early; /* one-token steps: the products (FUSE_*) whose norm/quantize kernel lets them launch
                  at its start (APR_CUDA_EARLY, a mask) */
    bool att_q8; /* steps of up to 16 entries: attention quantizes the o product's input (APR_CUDA_ATT_Q8=0: off) */
    int pdl;  /* APR_CUDA_PDL: 0 never, 1 steps of up to 64 entries, 2 always */
    /* APR_CUDA_PROFILE=1: events between the launches of plain (graph-less)
     * steps, summed per kernel class, printed at close */
    bool profile;
    /* APR_CUDA_PROFILE=2: GPU time of each graph step (events around the
     * launch) against its wall time, summed per bucket and printed at close:
     * whether a step's time is the device's or the host's */
    cudaEvent_t gev[2];
    double g_gpu_ms[N_BUCKETS], g_wall_ms[N_BUCKETS];
    long g_n[N_BUCKETS];
    cudaEvent_t *pev;
    /* APR_CUDA_PROFILE=3: a one-thread kernel after each kernel of the
     * one-entry graph writes %globaltimer to d_stamps (in the graph, with
     * PDL, so each class's time is what it adds to the chain, plus one
     * stamp's cost: the class "stamp alone") */
    bool stamps, stamping;
    unsigned long long *d_stamps, *h_stamps;
    int stamp_n;
    uint8_t *pcls;
    int pn, pcap, psteps[2];
    double pus[2][16];
};

/* The one-token step's fusions (APR_CUDA_FUSE is a mask of them; the default depends on the model's width). */
enum {
    FUSE_QKV = 1,     /* attn_norm into the q/k/v GEMV */
    FUSE_ROPE = 2,    /* bias + RoPE + KV append into attention */
    FUSE_WO = 4,      /* the attention output's quantization into the o GEMV */
    FUSE_GATEUP = 8,  /* ffn_norm into the gate/up GEMV */
    FUSE_DOWN = 16,   /* the SwiGLU output's quantization into the down GEMV */
    FUSE_OUTPUT = 32, /* the final norm into the output GEMV */
    FUSE_ALL = 63
};

enum { P_EMBED, P_NORM, P_QKV, P_POST, P_ATTN, P_QUANT, P_WO, P_GATEUP, P_DOWN, P_OUTPUT, P_TOPK, P_STAMP, N_PCLS };
static const char *const pcls_name[N_PCLS] = {"embed",     "rmsnorm+quant", "gemv qkv",  "bias+rope+kv",
                                              "attention", "quant",         "gemv o+res", "gemv gate/up+swiglu",
                                              "gemv down+res", "gemv output", "top-k candidates", "stamp alone"};

/* Marks the end of the launch just enqueued (class cls; -1: the start). */
static void mark(apr_cuda_model *m, int cls)
{
    if (m->stamping && m->pn < m->pcap) {
        apr_cu_stamp(m->d_stamps + m->pn, &m->cu);
        m->pcls[m->pn++] = (uint8_t)(cls < 0 ? N_PCLS : cls);
        return;
    }
    if (!m->profile || m->pn >= m->pcap) return;
    if (cudaEventRecord(m->pev[m->pn], m->stream) != cudaSuccess) return;
    m->pcls[m->pn++] = (uint8_t)(cls < 0 ? N_PCLS : cls);
}

static int cuda_fail(cudaError_t e, const char *what, char err[APR_ERRLEN]);

/* After a graph step of one entry under APR_CUDA_PROFILE=3: the time between stamps, per class. */
static int stamps_collect(apr_cuda_model *m, char err[APR_ERRLEN])
{
    if (cuda_fail(cudaMemcpy(m->h_stamps, m->d_stamps, (size_t)m->stamp_n * sizeof *m->h_stamps, cudaMemcpyDeviceToHost),
                  "cudaMemcpy (stamps)", err))
        return -1;
    for (int i = 1; i < m->stamp_n; i++)
        if (m->pcls[i] < N_PCLS) m->pus[0][m->pcls[i]] += (double)(m->h_stamps[i] - m->h_stamps[i - 1]) / 1e3;
    if (m->stamp_n > 1) m->psteps[0]++;
    return 0;
}

/* After a profiled step has finished: the time between marks, per class. */
static void profile_collect(apr_cuda_model *m, int n)
{
    const int slot = n == 1 ? 0 : 1;
    for (int i = 1; i < m->pn; i++) {
        float ms = 0.f;
        if (cudaEventElapsedTime(&ms, m->pev[i - 1], m->pev[i]) == cudaSuccess && m->pcls[i] < N_PCLS)
            m->pus[slot][m->pcls[i]] += ms * 1e3;
    }
    if (m->pn > 1) m->psteps[slot]++;
    m->pn = 0;
}

static void profile_print(const apr_cuda_model *m)
{
    for (int slot = 0; slot < 2; slot++) {
        if (!m->psteps[slot]) continue;
        double tot = 0;
        for (int c = 0; c < N_PCLS; c++) tot += m->pus[slot][c];
        fprintf(stderr, "cuda profile, %s: %d steps, %.1f us per step\n", slot ? "steps of several entries" : "decode steps (1 entry)",
                m->psteps[slot], tot / m->psteps[slot]);
        for (int c = 0; c < N_PCLS; c++)
            if (m->pus[slot][c] > 0)
                fprintf(stderr, "  %-22s %9.1f us/step %5.1f%%\n", pcls_name[c], m->pus[slot][c] / m->psteps[slot],
                        100 * m->pus[slot][c] / tot);
    }
}

static size_t align256(size_t x) { return (x + 255) & ~(size_t)255; }

static int cuda_fail(cudaError_t e, const char *what, char err[APR_ERRLEN])
{
    if (e == cudaSuccess) return 0;
    snprintf(err, APR_ERRLEN, "CUDA error in %s: %s", what, cudaGetErrorString(e));
    return -1;
}

/* ------------------------------------------------------------ loading */

typedef struct {
    const gguf_file *f;
    upload *list;
    int n, cap;
    size_t bytes;
} upload_list;

static const gguf_tensor *need_tensor(const gguf_file *f, const char *name, int n_dims, uint64_t ne0,
                                      uint64_t ne1, char err[APR_ERRLEN])
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) {
        snprintf(err, APR_ERRLEN, "tensor '%s' is missing", name);
        return NULL;
    }
    bool ok = t->ne[0] == ne0 && (n_dims == 1 ? t->n_dims == 1 : t->ne[1] == ne1);
    for (uint32_t d = (uint32_t)n_dims; d < 4; d++) ok = ok && t->ne[d] == 1;
    if (!ok) {
        snprintf(err, APR_ERRLEN, "tensor '%s' has shape [%llu, %llu], expected [%llu, %llu]", name,
                 (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (unsigned long long)ne0,
                 (unsigned long long)(n_dims == 1 ? 1 : ne1));
        return NULL;
    }
    return t;
}

static int add_tensor(upload_list *l, const gguf_tensor *t, int n_in, int n_out, apr_cu_weight *w,
                      const float **vec, char err[APR_ERRLEN])
{
    if (l->n == l->cap) {
        snprintf(err, APR_ERRLEN, "internal error: upload list overflow");
        return -1;
    }
    size_t bytes = apr_cu_weight_bytes(t->type, n_in, n_out);
    if (!bytes || bytes != t->nbytes) {
        const apr_type_info *ti = apr_type_get(t->type);
        snprintf(err, APR_ERRLEN, "tensor '%s': type %s is not supported by the CUDA backend", t->name,
                 ti ? ti->name : "?");
        return -1;
    }
    upload *u = &l->list[l->n++];
    *u = upload{t, l->bytes, n_in, n_out, w, vec};
    l->bytes = align256(l->bytes + bytes);
    return 0;
}

static int add_matrix(upload_list *l, const char *name, int n_in, int n_out, apr_cu_weight *w,
                      char err[APR_ERRLEN])
{
    const gguf_tensor *t = need_tensor(l->f, name, 2, (uint64_t)n_in, (uint64_t)n_out, err);
    if (!t) return -1;
    w->type = t->type;
    w->n_in = n_in;
    w->n_out = n_out;
    return add_tensor(l, t, n_in, n_out, w, NULL, err);
}

static int add_vector(upload_list *l, const char *name, int n, const float **v, char err[APR_ERRLEN])
{
    const gguf_tensor *t = need_tensor(l->f, name, 1, (uint64_t)n, 1, err);
    if (!t) return -1;
    if (t->type != APR_TYPE_F32) {
        snprintf(err, APR_ERRLEN, "tensor '%s': type %s is not supported for a vector (F32 only)", name,
                 apr_type_get(t->type)->name);
        return -1;
    }
    return add_tensor(l, t, n, 1, NULL, v, err);
}

static int plan_layer(apr_cuda_model *m, upload_list *l, int il, char err[APR_ERRLEN])
{
    const apr_hparams *hp = &m->hp;
    cu_layer *L = &m->layers[il];
    const int E = (int)hp->n_embd, F = (int)hp->n_ff;
    char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d." suffix, il), name)
    if (add_vector(l, NAME("attn_norm.weight"), E, &L->attn_norm, err) ||
        add_vector(l, NAME("ffn_norm.weight"), E, &L->ffn_norm, err) ||
        add_matrix(l, NAME("attn_q.weight"), E, m->q_dim, &L->wq, err) ||
        add_matrix(l, NAME("attn_k.weight"), E, m->kv_dim, &L->wk, err) ||
        add_matrix(l, NAME("attn_v.weight"), E, m->kv_dim, &L->wv, err) ||
        add_matrix(l, NAME("attn_output.weight"), m->q_dim, E, &L->wo, err) ||
        add_matrix(l, NAME("ffn_gate.weight"), E, F, &L->gate, err) ||
        add_matrix(l, NAME("ffn_up.weight"), E, F, &L->up, err) ||
        add_matrix(l, NAME("ffn_down.weight"), F, E, &L->down, err))
        return -1;
    if (hp->arch == APR_ARCH_QWEN2 &&
        (add_vector(l, NAME("attn_q.bias"), m->q_dim, &L->bq, err) ||
         add_vector(l, NAME("attn_k.bias"), m->kv_dim, &L->bk, err) ||
         add_vector(l, NAME("attn_v.bias"), m->kv_dim, &L->bv, err)))
        return -1;
    if (L->gate.type != L->up.type) {
        /* the fused SwiGLU GEMV reads both with one kernel path */
        snprintf(err, APR_ERRLEN, "layer %d: ffn_gate and ffn_up of different types are not supported", il);
        return -1;
    }
#undef NAME
    return 0;
}

static int cmp_upload(const void *a, const void *b)
{
    uint64_t x = ((const upload *)a)->t->offset, y = ((const upload *)b)->t->offset;
    return x < y ? -1 : x > y;
}

/* Streams the planned tensors from the file into the weights region in file
 * order: reads of STAGE_BYTES into one pinned buffer while the other is being
 * copied; tensors whose GPU layout differs go through a device staging buffer
 * and are repacked there. */
static int upload_weights(apr_cuda_model *m, const char *path, const gguf_file *f, upload *list, int n,
                          char err[APR_ERRLEN])
{
    qsort(list, (size_t)n, sizeof *list, cmp_upload);
    size_t stage_dev = 0;
    for (int i = 0; i < n; i++)
        if (apr_cu_needs_repack(list[i].t->type) && list[i].t->nbytes > stage_dev) stage_dev = list[i].t->nbytes;

    uint8_t *pin[2] = {NULL, NULL}, *staging = NULL;
    cudaEvent_t ev[2] = {NULL, NULL};
    int rc = -1, flags = 0, k = 1;
    uint64_t cs = 0, ce = 0; /* file range now in pin[k] */
    cudaStream_t s = m->stream;
    if (cuda_fail(cudaHostAlloc((void **)&pin[0], STAGE_BYTES, cudaHostAllocDefault), "cudaHostAlloc", err) ||
        cuda_fail(cudaHostAlloc((void **)&pin[1], STAGE_BYTES, cudaHostAllocDefault), "cudaHostAlloc", err) ||
        cuda_fail(cudaEventCreateWithFlags(&ev[0], cudaEventDisableTiming), "cudaEventCreate", err) ||
        cuda_fail(cudaEventCreateWithFlags(&ev[1], cudaEventDisableTiming), "cudaEventCreate", err) ||
        (stage_dev && cuda_fail(cudaMalloc((void **)&staging, stage_dev), "cudaMalloc (staging)", err)))
        goto out;
    for (int i = 0; i < n; i++) {
        const upload *u = &list[i];
        const bool repack = apr_cu_needs_repack(u->t->type);
        uint8_t *dst = repack ? staging : m->d_weights + u->off;
        for (uint64_t done = 0; done < u->t->nbytes;) {
            const uint64_t fo = u->t->offset + done;
            if (fo < cs || fo >= ce) {
                k ^= 1;
                if (cuda_fail(cudaEventSynchronize(ev[k]), "cudaEventSynchronize", err)) goto out;
                uint64_t len = f->size - fo < STAGE_BYTES ? f->size - fo : STAGE_BYTES;
                apr_load_stats st;
                if (apr_load_read(path, fo, len, pin[k], flags, &st, err)) goto out;
                if (!st.used_uring) flags |= APR_LOAD_NO_URING; /* one notice is enough */
                cs = fo;
                ce = fo + len;
            }
            uint64_t piece = u->t->nbytes - done < ce - fo ? u->t->nbytes - done : ce - fo;
            if (cuda_fail(cudaMemcpyAsync(dst + done, pin[k] + (fo - cs), piece, cudaMemcpyHostToDevice, s),
                          "cudaMemcpyAsync (weights)", err) ||
                cuda_fail(cudaEventRecord(ev[k], s), "cudaEventRecord", err))
                goto out;
            done += piece;
        }
        if (repack && apr_cu_repack(u->t->type, u->n_in, u->n_out, staging, m->d_weights + u->off, s)) {
            snprintf(err, APR_ERRLEN, "tensor '%s': repack failed", u->t->name);
            goto out;
        }
    }
    if (cuda_fail(cudaStreamSynchronize(s), "loading the weights", err)) goto out;
    rc = 0;
out:
    if (rc) cudaStreamSynchronize(s); /* nothing may still read the buffers freed below */
    if (ev[0]) cudaEventDestroy(ev[0]);
    if (ev[1]) cudaEventDestroy(ev[1]);
    cudaFreeHost(pin[0]);
    cudaFreeHost(pin[1]);
    cudaFree(staging);
    return rc;
}

/* Scratch of one forward chunk, carved from one allocation. With base NULL
 * only the size is computed. */
static size_t carve_scratch(apr_cuda_model *m, uint8_t *base)
{
    const apr_hparams *hp = &m->hp;
    const size_t C = CHUNK_CAP;
    int widest = (int)hp->n_embd;
    if (m->q_dim > widest) widest = m->q_dim;
    if ((int)hp->n_ff > widest) widest = (int)hp->n_ff;
    const int ld = (widest + 255) / 256 * 256;
    size_t off = 0;
#define CARVE(ptr, type, count)                                     \
    do {                                                            \
        if (base) ptr = (type *)(base + off);                       \
        off = align256(off + (size_t)(count) * sizeof(type));       \
    } while (0)
    CARVE(m->x, float, C * hp->n_embd);
    CARVE(m->qkv, float, C * (size_t)m->ldqkv);
    CARVE(m->att, float, C * (size_t)m->q_dim);
    CARVE(m->hb, float, C * hp->n_ff);
    CARVE(m->logits, float, C * hp->n_vocab);
    CARVE(m->act.f, float, C * (size_t)ld);
    CARVE(m->act.qk, int8_t, C * (size_t)ld);
    CARVE(m->act.q0, int8_t, C * (size_t)ld);
    CARVE(m->act.dsk, float, C * (size_t)(ld / 32) * 2);
    CARVE(m->act.ds0, float, C * (size_t)(ld / 32) * 2);
    CARVE(m->ffn_act.q0, int8_t, (size_t)APR_CU_MMA_MIN_TOK * ld);
    CARVE(m->ffn_act.ds0, float, (size_t)APR_CU_MMA_MIN_TOK * (ld / 32) * 2);
    CARVE(m->ffn_act.rms, float, (size_t)APR_CU_MMA_MIN_TOK * (ld / 32));
    CARVE(m->d_batch, int32_t, BATCH_ROWS * C);
    CARVE(m->d_ticket, unsigned, 1);
    CARVE(m->d_cands, uint8_t, (size_t)LOGIT_ROWS * CAND_STRIDE);
    CARVE(m->d_cand_work, uint8_t, apr_cu_topk_work_bytes(LOGIT_ROWS));
    CARVE(m->d_argmax, unsigned long long, APR_CU_ARGMAX_BYTES / sizeof(unsigned long long));
    /* partial sums of products split across blocks (batched decode): every
     * product but the output matrix's */
    int split_rows = (int)hp->n_ff > m->ldqkv ? (int)hp->n_ff : m->ldqkv;
    if ((int)hp->n_embd > split_rows) split_rows = (int)hp->n_embd;
    CARVE(m->cu.mma_work, float, APR_CU_MMA_WORK_BYTES(split_rows) / sizeof(float));
    m->cu.mma_work_rows = split_rows;
    m->cu.att_work_bytes = apr_cu_attention_work_bytes(&m->ash); /* zeroed with the rest by prepare_steps */
    CARVE(m->cu.att_work, uint8_t, m->cu.att_work_bytes);
#undef CARVE
    m->act.ld = ld;
    m->ffn_act.qk = m->ffn_act.q0; /* Q8_0-style rows for every type, as the GEMV's steps take them */
    m->ffn_act.dsk = m->ffn_act.ds0;
    m->ffn_act.ld = ld;
    m->ffn_act.rms_eps = hp->rms_eps;
    m->ffn_act.rms_n = (int)hp->n_embd;
    return off;
}

static void release(apr_cuda_model *m);
static int disarm(apr_cuda_model *m, char err[APR_ERRLEN]);

extern "C" void apr_cuda_close(apr_cuda_model *m)
{
    if (!m) return;
    char err[APR_ERRLEN];
    if (m->armed && disarm(m, err)) fprintf(stderr, "cuda: %s\n", err);
    if (m->stream) cudaStreamSynchronize(m->stream);
    if (m->done_ev) cudaEventDestroy(m->done_ev);
    if (m->profile || m->stamps) profile_print(m);
    for (int i = 0; i < N_BUCKETS; i++)
        if (m->g_n[i])
            fprintf(stderr, "cuda: %ld graph steps of bucket %d: %.3f ms on the GPU, %.3f ms launch to synchronized\n",
                    m->g_n[i], bucket_size[i], m->g_gpu_ms[i] / m->g_n[i], m->g_wall_ms[i] / m->g_n[i]);
    if (m->gev[0]) cudaEventDestroy(m->gev[0]);
    if (m->gev[1]) cudaEventDestroy(m->gev[1]);
    for (int i = 0; i < m->pcap; i++)
        if (m->pev[i]) cudaEventDestroy(m->pev[i]);
    free(m->pev);
    free(m->pcls);
    if (m->d_stamps) cudaFree(m->d_stamps);
    if (m->h_stamps) cudaFreeHost(m->h_stamps);
    for (int i = 0; i < N_BUCKETS; i++)
        if (m->graph[i]) cudaGraphExecDestroy(m->graph[i]);
    if (m->imported) {
        if (m->d_weights != m->d_weights_ipc) cudaFree(m->d_weights);
        if (m->d_weights_ipc) cudaIpcCloseMemHandle(m->d_weights_ipc);
        if (m->d_kv) cudaIpcCloseMemHandle(m->d_kv);
    } else {
        cudaFree(m->d_weights);
        cudaFree(m->d_kv);
    }
    cudaFree(m->d_scratch);
    cudaFreeHost(m->h_batch);
    cudaFreeHost(m->h_logits);
    cudaFreeHost(m->h_cands);
    if (m->stream) cudaStreamDestroy(m->stream);
    free(m->layers);
    free(m->seq_len);
    free(m);
}

static double gib(size_t b) { return (double)b / (1u << 30); }

static int get_graph(apr_cuda_model *m, int bi, char err[APR_ERRLEN]);
static int enqueue_forward(apr_cuda_model *m, int n, int n_out);

/* Entry 0 of the batch block a padding entry: token 0 at position 0 of no
 * sequence (seq -1: the kernels touch no cache), no logits row wanted. */
static void padding_entry(int32_t *h)
{
    h[0] = 0;
    h[CHUNK_CAP] = 0;
    h[2 * CHUNK_CAP] = -1;
    h[3 * CHUNK_CAP] = 0;
    h[4 * CHUNK_CAP] = 0;
}

/* One pass of a padding entry (it touches no sequence): every kernel runs
 * once, so a broken build or device fails here with a clear error rather
 * than in the first step. Every batch-size bucket's graph is captured now,
 * so that an engine restarted under load serves its first step of any size
 * without a capture, and nobody times one. */
static int warm_up(apr_cuda_model *m, char err[APR_ERRLEN])
{
    if (apr_cu_prepare()) {
        snprintf(err, APR_ERRLEN, "CUDA: preparing the kernels: %s", cudaGetErrorString(cudaGetLastError()));
        return -1;
    }
    padding_entry(m->h_batch);
    if (m->use_graphs) {
        for (int bi = 0; bi < N_BUCKETS; bi++)
            if (get_graph(m, bi, err)) return -1;
        if (m->solo_ok) release(m); /* graph[0] waits for it */
        if (cuda_fail(cudaGraphLaunch(m->graph[0], m->stream), "cudaGraphLaunch", err)) return -1;
    } else {
        if (cuda_fail(cudaMemcpyAsync(m->d_batch, m->h_batch, BATCH_ROWS * CHUNK_CAP * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, m->stream),
                      "cudaMemcpyAsync", err))
            return -1;
        if (enqueue_forward(m, 1, 1)) {
            snprintf(err, APR_ERRLEN, "internal error: a kernel refused its arguments");
            cudaStreamSynchronize(m->stream);
            return -1;
        }
    }
    if (cuda_fail(cudaGetLastError(), "warm-up launch", err)) return -1;
    m->pn = 0; /* not a step: its marks are not counted */
    return cuda_fail(cudaStreamSynchronize(m->stream), "warm-up pass", err);
}

/* ------------------------------------------------------------ opening */

/* Who opens the model. apr eval and the tests run it alone; under apr-worker
 * a holder process owns weights and KV cache, and engine processes import
 * them and run the steps (worker/holder.c), so that an engine can die
 * without taking the memory with it. */
typedef enum { ROLE_ALONE, ROLE_HOLDER, ROLE_ENGINE } open_role;

/* What a holder writes for its engines (the export area): the handles of its
 * two regions, and what must agree for an engine's plan of the weights, made
 * again from the file's metadata, to address the holder's bytes. */
typedef struct {
    uint32_t magic, version;
    int32_t n_ctx, n_seq;
    uint64_t weights_bytes, kv_bytes;
    uint64_t file_dev, file_ino, file_size;
    int64_t file_mtime_ns;
    cudaIpcMemHandle_t weights, kv;
} cuda_export;
static_assert(sizeof(cuda_export) <= APR_BACKEND_EXPORT_BYTES, "the export area is too small");
static_assert((size_t)LOGIT_ROWS * CAND_STRIDE % 16 == 0 && BATCH_ROWS * CHUNK_CAP * sizeof(int32_t) % 16 == 0,
              "apr_cu_copy16 moves the batch block and the candidate rows in 16-byte words");

#define EXPORT_MAGIC 0x43525041u /* "APRC" */
#define EXPORT_VERSION 1u

static int file_identity(const char *path, cuda_export *x, char err[APR_ERRLEN])
{
    struct stat st;
    if (stat(path, &st) != 0) {
        snprintf(err, APR_ERRLEN, "cannot stat: %s", strerror(errno));
        return -1;
    }
    x->file_dev = (uint64_t)st.st_dev;
    x->file_ino = (uint64_t)st.st_ino;
    x->file_size = (uint64_t)st.st_size;
    x->file_mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    return 0;
}

static int export_regions(apr_cuda_model *m, const char *path, cuda_export *x, char err[APR_ERRLEN])
{
    memset(x, 0, sizeof *x);
    if (file_identity(path, x, err) ||
        cuda_fail(cudaIpcGetMemHandle(&x->weights, m->d_weights), "cudaIpcGetMemHandle (weights)", err) ||
        cuda_fail(cudaIpcGetMemHandle(&x->kv, m->d_kv), "cudaIpcGetMemHandle (KV cache)", err))
        return -1;
    x->n_ctx = m->n_ctx;
    x->n_seq = m->n_seq;
    x->weights_bytes = m->weights_bytes;
    x->kv_bytes = m->kv_bytes;
    x->version = EXPORT_VERSION;
    x->magic = EXPORT_MAGIC;
    return 0;
}

static int import_regions(apr_cuda_model *m, const char *path, const cuda_export *x, char err[APR_ERRLEN])
{
    if (x->magic != EXPORT_MAGIC || x->version != EXPORT_VERSION) {
        snprintf(err, APR_ERRLEN, "the holder's export is not of this build");
        return -1;
    }
    cuda_export now;
    if (file_identity(path, &now, err)) return -1;
    if (now.file_dev != x->file_dev || now.file_ino != x->file_ino || now.file_size != x->file_size ||
        now.file_mtime_ns != x->file_mtime_ns) {
        snprintf(err, APR_ERRLEN, "the model file changed since the holder loaded it");
        return -1;
    }
    if (x->n_ctx != m->n_ctx || x->n_seq != m->n_seq || x->weights_bytes != m->weights_bytes ||
        x->kv_bytes != m->kv_bytes) {
        snprintf(err, APR_ERRLEN,
                 "the holder's layout differs: context %d/%d, sequences %d/%d, weights %llu/%llu bytes, "
                 "KV cache %llu/%llu bytes",
                 x->n_ctx, m->n_ctx, x->n_seq, m->n_seq, (unsigned long long)x->weights_bytes,
                 (unsigned long long)m->weights_bytes, (unsigned long long)x->kv_bytes,
                 (unsigned long long)m->kv_bytes);
        return -1;
    }
    m->imported = true;
    void *w = NULL, *kv = NULL;
    if (cuda_fail(cudaIpcOpenMemHandle(&w, x->weights, cudaIpcMemLazyEnablePeerAccess),
                  "cudaIpcOpenMemHandle (weights)", err))
        return -1;
    m->d_weights = m->d_weights_ipc = (uint8_t *)w;
    /* Kernels read weights imported through CUDA IPC ~18% slower than
     * weights of this process's own allocation (H100, 1.5B decode step 1.342
     * against 1.138 ms on the GPU; the importer's mapping, not the bytes).
     * Where the GPU has room for a second copy, the engine works from its
     * own (a device-to-device copy: ~1 ms a GB, redone by every engine
     * restart); the holder's stays the one that survives a crash.
     * APR_CUDA_ENGINE_COPY=0 keeps the mapping. */
    const char *cp = getenv("APR_CUDA_ENGINE_COPY");
    size_t free_b = 0, total_b = 0;
    void *own = NULL;
    if (!(cp && !strcmp(cp, "0")) && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess &&
        free_b > m->weights_bytes + m->scratch_bytes + HEADROOM && cudaMalloc(&own, m->weights_bytes) == cudaSuccess) {
        if (cuda_fail(cudaMemcpy(own, w, m->weights_bytes, cudaMemcpyDeviceToDevice), "copying the weights", err)) {
            cudaFree(own);
            return -1;
        }
        m->d_weights = (uint8_t *)own;
    }
    cudaGetLastError(); /* a refused cudaMalloc leaves its error behind: the mapping serves */
    fprintf(stderr, "cuda: engine reads %s (%.2f GB)\n",
            own ? "its own copy of the weights" : "the holder's weights through CUDA IPC (no room for a copy)",
            (double)m->weights_bytes / 1e9);
    if (cuda_fail(cudaIpcOpenMemHandle(&kv, x->kv, cudaIpcMemLazyEnablePeerAccess),
                  "cudaIpcOpenMemHandle (KV cache)", err))
        return -1;
    m->d_kv = (uint16_t *)kv;
    return 0;
}

/* Weights and a zeroed KV cache of our own, the weights read from the file. */
static int allocate_and_load(apr_cuda_model *m, const char *path, const gguf_file *f, upload *list, int n,
                             open_role role, char err[APR_ERRLEN])
{
    size_t free_b = 0, total_b = 0;
    if (cuda_fail(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo", err)) return -1;
    size_t stage = 0; /* device staging of the largest tensor that is repacked while loading */
    for (int i = 0; i < n; i++)
        if (apr_cu_needs_repack(list[i].t->type) && list[i].t->nbytes > stage) stage = list[i].t->nbytes;
    /* a holder leaves room for its engine: that process's own context and scratch */
    size_t headroom = role == ROLE_HOLDER ? 2 * HEADROOM : HEADROOM;
    size_t need = m->weights_bytes + m->kv_bytes + m->scratch_bytes + stage + headroom;
    if (need > free_b) {
        snprintf(err, APR_ERRLEN,
                 "the model does not fit the GPU: weights %.2f GiB + KV cache %.2f GiB (%d positions x %d "
                 "sequences) + scratch %.2f GiB + %.2f GiB staging and headroom > %.2f GiB free",
                 gib(m->weights_bytes), gib(m->kv_bytes), m->n_ctx, m->n_seq, gib(m->scratch_bytes),
                 gib(stage + headroom), gib(free_b));
        return -1;
    }
    if (cuda_fail(cudaMalloc((void **)&m->d_weights, m->weights_bytes), "cudaMalloc (weights)", err) ||
        cuda_fail(cudaMalloc((void **)&m->d_kv, m->kv_bytes), "cudaMalloc (KV cache)", err))
        return -1;
    /* zeros, so padding entries and unused positions read finite values */
    if (cuda_fail(cudaMemsetAsync(m->d_kv, 0, m->kv_bytes, m->stream), "cudaMemset", err)) return -1;
    return upload_weights(m, path, f, list, n, err);
}

/* Points the model's tensors into the weights region. */
static void bind_weights(apr_cuda_model *m, const upload *list, int n, bool tied)
{
    for (int i = 0; i < n; i++) {
        if (list[i].w) list[i].w->data = m->d_weights + list[i].off;
        if (list[i].vec) *list[i].vec = (const float *)(m->d_weights + list[i].off);
    }
    if (tied) m->output = m->tok_embd;
}

/* What running steps takes beyond weights and KV cache: scratch, pinned
 * buffers, profile events, the graphs. */
static int prepare_steps(apr_cuda_model *m, char err[APR_ERRLEN])
{
    const apr_hparams *hp = &m->hp;
    if (cuda_fail(cudaMalloc((void **)&m->d_scratch, m->scratch_bytes), "cudaMalloc (scratch)", err) ||
        cuda_fail(cudaHostAlloc((void **)&m->h_batch, BATCH_ROWS * CHUNK_CAP * sizeof(int32_t) + 64,
                                cudaHostAllocMapped),
                  "cudaHostAlloc", err) ||
        cuda_fail(cudaHostAlloc((void **)&m->h_logits, (size_t)LOGIT_ROWS * hp->n_vocab * sizeof(float),
                                cudaHostAllocDefault),
                  "cudaHostAlloc", err) ||
        cuda_fail(cudaHostAlloc((void **)&m->h_cands, (size_t)LOGIT_ROWS * CAND_STRIDE + 64, cudaHostAllocMapped),
                  "cudaHostAlloc", err))
        return -1;
    m->h_rec = (uint32_t *)(m->h_batch + BATCH_ROWS * CHUNK_CAP);
    m->h_done = (unsigned *)(m->h_cands + (size_t)LOGIT_ROWS * CAND_STRIDE);
    memset(m->h_rec, 0, 16);
    *m->h_done = 0;
    /* A copy node at each end of a graph: the first kernel cannot launch
     * before the upload is done, nor the download start before the last
     * kernel is (no programmatic dependent launch across copies). */
    const char *mp = getenv("APR_CUDA_MAPPED");
    if (!(mp && !strcmp(mp, "0")) && (cudaHostGetDevicePointer(&m->hd_batch, m->h_batch, 0) != cudaSuccess ||
                                      cudaHostGetDevicePointer(&m->hd_cands, m->h_cands, 0) != cudaSuccess)) {
        cudaGetLastError(); /* not fatal: copies instead */
        m->hd_batch = m->hd_cands = NULL;
    }
    const char *ah = getenv("APR_CUDA_AHEAD"); /* "0": no graph launched ahead of its step */
    m->solo_ok = m->hd_batch && m->use_graphs && hp->n_vocab < (1u << 24) && m->n_ctx < (1 << 24) &&
                 m->n_seq < (1 << 24) - 1;
    m->ahead_ok = m->solo_ok && !m->gev[1] && !m->stamps && !(ah && !strcmp(ah, "0")) &&
                  !cuda_fail(cudaEventCreateWithFlags(&m->done_ev, cudaEventDisableTiming), "cudaEventCreate", err);
    const char *am = getenv("APR_CUDA_ARGMAX");
    m->argmax_ok = !(am && !strcmp(am, "0"));
    carve_scratch(m, m->d_scratch);
    if (m->profile || m->stamps) {
        m->pcap = 12 * (int)hp->n_layer + 8;
        m->pev = (cudaEvent_t *)calloc((size_t)m->pcap, sizeof *m->pev);
        m->pcls = (uint8_t *)calloc((size_t)m->pcap, 1);
        if (m->stamps && (cuda_fail(cudaMalloc((void **)&m->d_stamps, (size_t)m->pcap * sizeof *m->d_stamps),
                                    "cudaMalloc (stamps)", err) ||
                          cuda_fail(cudaHostAlloc((void **)&m->h_stamps, (size_t)m->pcap * sizeof *m->h_stamps,
                                                  cudaHostAllocDefault),
                                    "cudaHostAlloc (stamps)", err)))
            return -1;
        if (!m->pev || !m->pcls) {
            m->pcap = 0;
            snprintf(err, APR_ERRLEN, "out of memory");
            return -1;
        }
        for (int i = 0; m->profile && i < m->pcap; i++)
            if (cuda_fail(cudaEventCreate(&m->pev[i]), "cudaEventCreate", err)) return -1;
    }
    if (cuda_fail(cudaMemsetAsync(m->d_scratch, 0, m->scratch_bytes, m->stream), "cudaMemset", err)) return -1;
    return warm_up(m, err);
}

static apr_cuda_model *open_model(const char *path, const apr_backend_opts *opts, open_role role, void *exp,
                                  char err[APR_ERRLEN])
{
    char why[APR_ERRLEN];
    gguf_file *f = gguf_open(path, why);
    if (!f) {
        snprintf(err, APR_ERRLEN, "%s", why);
        return NULL;
    }
    apr_cuda_model *m = (apr_cuda_model *)calloc(1, sizeof *m);
    upload *list = NULL;
    if (!m) {
        gguf_close(f);
        snprintf(err, APR_ERRLEN, "out of memory");
        return NULL;
    }
    apr_hparams *hp = &m->hp;
    if (apr_hparams_load(f, hp, err)) goto fail;
    if (hp->head_dim % 8 || hp->head_dim > 256 || hp->n_head % hp->n_head_kv) {
        snprintf(err, APR_ERRLEN, "head dimension %u is not supported by the CUDA backend (a multiple of 8, at most 256)",
                 hp->head_dim);
        goto fail;
    }
    m->q_dim = (int)(hp->n_head * hp->head_dim);
    m->kv_dim = (int)(hp->n_head_kv * hp->head_dim);
    m->ldqkv = m->q_dim + 2 * m->kv_dim;
    {
        int n_ctx = opts && opts->n_ctx > 0 ? opts->n_ctx : (int)(hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
        int n_seq = opts && opts->n_seq > 0 ? opts->n_seq : 1;
        if (n_ctx < 1 || n_ctx > 1 << 20 || n_seq > 4096) {
            snprintf(err, APR_ERRLEN, "context %d x %d sequences is out of range", n_ctx, n_seq);
            goto fail;
        }
        m->n_ctx = n_ctx;
        m->n_seq = n_seq;
    }
    m->ash = apr_cu_attn_shape{(int)hp->n_head, (int)hp->n_head_kv, (int)hp->head_dim, (int)hp->rope_dim,
                               hp->rope_neox ? 1 : 0, powf(hp->rope_freq_base, -2.0f / (float)hp->rope_dim),
                               (size_t)m->n_ctx * (size_t)m->kv_dim, 0};
    {
        const char *g = getenv("APR_CUDA_GRAPHS"); /* "0": plain launches, for measuring what graphs buy */
        m->use_graphs = !(g && !strcmp(g, "0"));
        const char *pr = getenv("APR_CUDA_PROFILE");
        m->profile = pr && !strcmp(pr, "1");
        m->stamps = pr && !strcmp(pr, "3") && m->use_graphs;
        if (pr && !strcmp(pr, "2") &&
            (cudaEventCreate(&m->gev[0]) != cudaSuccess || cudaEventCreate(&m->gev[1]) != cudaSuccess))
            m->gev[0] = m->gev[1] = NULL;
        if (m->profile) m->use_graphs = false; /* events between kernels need plain launches */
        /* programmatic dependent launch: on unless "0" (1.5B decode +13%, H100,
         * same logits), but not in prefill steps of over 64 entries unless "2"
         * (there 3% slower with it: its early blocks sit on multiprocessors
         * that the big products' last waves could use) */
        const char *pdl = getenv("APR_CUDA_PDL");
        m->pdl = pdl && !strcmp(pdl, "0") ? 0 : pdl && !strcmp(pdl, "2") ? 2 : 1;
        apr_cu_tune_env(&m->cu.tune); /* the device's figures and the kernels' knobs, outside any capture */
        m->cu.pdl = m->pdl != 0;
        /* "0": the one-token step as separate kernels (norm/quantize, bias+RoPE+KV).
         * Default, as measured (docs/PERF.md, 2026-11-26): RoPE + KV append in
         * attention (1.5B +4%). The GEMVs that quantize their own input were
         * the 7B's default until the one-token GEMV (apr_cu_gemv's gemv1)
         * streamed weights well enough that their prologue became the larger
         * cost (H200: 7B 367 tok/s without, 164 with) */
        const char *fu = getenv("APR_CUDA_FUSE");
        m->fuse = fu ? (int)strtol(fu, NULL, 0) & FUSE_ALL : FUSE_ROPE;
        /* Which norm/quantize kernels let their product launch at their
         * start (its blocks then load their weights while the kernel runs),
         * as measured (H100 decode, same tokens; docs/PERF.md, fifteenth pass):
         * - up to 1024 wide (the 0.5B's 896, whose q/k/v and o products fold
         *   the norms in): the down product's (1892-1899 -> 1958-1976 tok/s
         *   when it came in) and gate/up's at the o product's start
         *   (apr_cu_gemv_onorm: 2277-2292 -> 2304-2317); attention's at
         *   q/k/v's start (FUSE_ROPE, off) 2253-2286, slower; the output's, noise.
         * - wider (1.5B, 3B, 7B, 32B): q/k/v's, gate/up's and down's: 1.5B
         *   1226-1242 -> 1281 with the first two; the down product's as well
         *   cost the 1.5B then (1268-1274) but gains since the sixteenth
         *   pass's kernels (1263-1295 -> 1292-1302, six runs each); 3B 795-798
         *   -> 808-811, 7B 462-465 -> 477-478, 32B 121.4 -> 122.2-122.3.
         * - the o product's at attention's start (FUSE_WO): the 1.5B only,
         *   1291-1303 -> 1307-1311 (sixteenth pass); the 0.5B lost 1%
         *   (2420-2439 -> 2407-2408), the 3B 1% (828-833 -> 821-824).
         * The ninth and twelfth passes found these neutral or slower on the
         * kernels of their day; the products' shapes have changed since. */
        const char *ea = getenv("APR_CUDA_EARLY");
        m->early = ea ? (int)strtol(ea, NULL, 0) & FUSE_ALL
                   : hp->n_embd <= 1024 ? FUSE_DOWN | FUSE_GATEUP
                   : hp->n_embd < 2048  ? FUSE_QKV | FUSE_GATEUP | FUSE_DOWN | FUSE_WO
                                        : FUSE_QKV | FUSE_GATEUP | FUSE_DOWN;
        /* Which of the products launched early decode their first weights
         * before they wait (apr_cu_ctx.pre; a mask of FUSE_* bits), as
         * measured (H100 decode, same tokens, docs/PERF.md, sixteenth pass):
         * gate/up's at the 1.5B (+1.2-2.0% in four calls, e.g. 1268-1278 ->
         * 1290-1297 tok/s) and the 3B (796-821 -> 814-834); q/k/v's alone
         * nothing at the 1.5B; the 0.5B's gate/up and down lost ~1% (their
         * blocks have ~1.7 us before the wait), the 7B's gate/up 1-2%. */
        const char *pre = getenv("APR_CUDA_PRE");
        m->pre = pre ? (int)strtol(pre, NULL, 0) & FUSE_ALL
                     : hp->n_embd > 1024 && hp->n_embd <= 2048 ? FUSE_GATEUP : 0;
        /* The ffn norm's quantize folded into the o product, steps of up to
         * 16 entries (apr_cu_gemv_onorm; it then takes gate/up over
         * APR_CUDA_FUSE's gate/up fusion). "1" on, "0" off; by default on
         * where the model is narrow, as measured (H100, docs/PERF.md, tenth
         * pass, against off in one call): 0.5B decode 2095 -> 2167 tok/s,
         * 8/16 streams -0.4/-1.8%; 1.5B decode 1187 -> 1208 but 8/16 streams
         * 3246 -> 2964 / 3917 -> 3605, so not there. Parity as before. */
        const char *on = getenv("APR_CUDA_ONORM");
        m->onorm = on ? strcmp(on, "0") != 0 : hp->n_embd <= 1024;
        const char *aq = getenv("APR_CUDA_ATT_Q8");
        m->att_q8 = !(aq && !strcmp(aq, "0"));
        const char *f16 = getenv("APR_CUDA_F16_ACC"); /* "1": the CPU's attention numerics (parity checks) */
        m->ash.f16_acc = f16 && !strcmp(f16, "1");
    }

    /* what goes where */
    m->layers = (cu_layer *)calloc(hp->n_layer, sizeof *m->layers);
    m->seq_len = (int *)calloc((size_t)m->n_seq, sizeof(int));
    {
        int cap = (int)hp->n_layer * 12 + 3;
        list = (upload *)calloc((size_t)cap, sizeof *list);
        if (!m->layers || !m->seq_len || !list) {
            snprintf(err, APR_ERRLEN, "out of memory");
            goto fail;
        }
        upload_list l = {f, list, 0, cap, 0};
        if (add_matrix(&l, "token_embd.weight", (int)hp->n_embd, (int)hp->n_vocab, &m->tok_embd, err) ||
            add_vector(&l, "output_norm.weight", (int)hp->n_embd, &m->output_norm, err))
            goto fail;
        bool tied = !gguf_find_tensor(f, "output.weight");
        if (!tied && add_matrix(&l, "output.weight", (int)hp->n_embd, (int)hp->n_vocab, &m->output, err)) goto fail;
        for (uint32_t il = 0; il < hp->n_layer; il++)
            if (plan_layer(m, &l, (int)il, err)) goto fail;

        m->weights_bytes = l.bytes;
        m->layer_elems = (size_t)m->n_seq * (size_t)m->n_ctx * (size_t)m->kv_dim;
        m->kv_bytes = 2 * (size_t)hp->n_layer * m->layer_elems * sizeof(uint16_t);
        m->scratch_bytes = carve_scratch(m, NULL);
        if (cuda_fail(cudaSetDevice(0), "cudaSetDevice", err) ||
            cuda_fail(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking), "cudaStreamCreate", err))
            goto fail;
        m->cu.stream = m->stream;
        if (role == ROLE_ENGINE ? import_regions(m, path, (const cuda_export *)opts->import, err)
                                : allocate_and_load(m, path, f, list, l.n, role, err))
            goto fail;
        bind_weights(m, list, l.n, tied);
        if (role == ROLE_HOLDER ? export_regions(m, path, (cuda_export *)exp, err) : prepare_steps(m, err))
            goto fail;
        if (role == ROLE_ENGINE && opts->kv_kept)
            for (int s = 0; s < m->n_seq; s++) m->seq_len[s] = m->n_ctx; /* until the coordinator trims it */
    }
    free(list);
    gguf_close(f);
    return m;
fail:
    free(list);
    gguf_close(f);
    apr_cuda_close(m);
    return NULL;
}

extern "C" apr_cuda_model *apr_cuda_open(const char *path, const apr_backend_opts *opts, char err[APR_ERRLEN])
{
    return open_model(path, opts, opts && opts->import ? ROLE_ENGINE : ROLE_ALONE, NULL, err);
}

extern "C" apr_cuda_model *apr_cuda_hold(const char *path, const apr_backend_opts *opts, void *exp,
                                         char err[APR_ERRLEN])
{
    return open_model(path, opts, ROLE_HOLDER, exp, err);
}
extern "C" const apr_hparams *apr_cuda_hparams(const apr_cuda_model *m) { return &m->hp; }
extern "C" int apr_cuda_n_ctx(const apr_cuda_model *m) { return m->n_ctx; }
extern "C" int apr_cuda_n_seq(const apr_cuda_model *m) { return m->n_seq; }

extern "C" void apr_cuda_seq_trim(apr_cuda_model *m, int seq, int from_pos)
{
    if (seq < 0 || seq >= m->n_seq || from_pos < 0) return;
    if (from_pos < m->seq_len[seq]) m->seq_len[seq] = from_pos;
}

/* ------------------------------------------------------------ forward */

/* The context for a kernel that may let the next one (product `next`, a
 * FUSE_* bit) launch at its start: one-token steps, as APR_CUDA_EARLY says. */
static apr_cu_ctx early_ctx(const apr_cuda_model *m, int n, int next)
{
    apr_cu_ctx c = m->cu;
    c.early = n == 1 && (m->early & next);
    c.pre = c.early && (m->pre & next); /* read by the product only (the kernel before it ignores it) */
    return c;
}

/* The context for the product a kernel of context c let in early: pre as c
 * has it, no early trigger of its own. */
static apr_cu_ctx product_ctx(const apr_cu_ctx *c)
{
    apr_cu_ctx p = *c;
    p.early = 0;
    return p;
}

/* One product of the forward pass over the n rows src describes: for one
 * token the GEMV that quantizes its own input (apr_cu_gemv_fused), else the
 * norm/quantize kernel (profile class qcls) and then apr_cu_matmul (cls).
 * src NULL: the rows are in m->act already, quantized as this step's GEMV
 * wants them (attention wrote them). Steps of up to 16 entries (always
 * apr_cu_gemv) quantize every type's activations Q8_0-style (cuda/kernels.h);
 * larger ones Q8_K-style for the K-quants, which apr_cu_mma reads. */
static int product(apr_cuda_model *m, const apr_cu_gemv_seg *seg, int n_seg, int n, const apr_cu_quant_src *src,
                   int fuse, int qcls, int cls)
{
    const bool per32 = n < APR_CU_MMA_MIN_TOK;
    apr_cu_act use = m->act;
    if (per32) {
        use.qk = m->act.q0;
        use.dsk = m->act.ds0;
    }
    if (!src) {
        if (apr_cu_matmul(seg, n_seg, &use, n, &m->cu)) return -1;
        mark(m, cls);
        return 0;
    }
    /* q/k/v: the attention norm folded into the product (every step size that
     * takes the GEMV, so a sequence's bits do not depend on its batch) */
    if (fuse == FUSE_QKV && per32) {
        const apr_cu_ctx qc = early_ctx(m, n, FUSE_ROPE); /* attention may launch at its start */
        const int rc = apr_cu_gemv_norm(seg, n_seg, src, n, &qc);
        if (rc < 0) return -1;
        if (rc == 0) {
            mark(m, cls);
            return 0;
        }
    }
    if (n == 1 && (m->fuse & fuse)) {
        const int rc = apr_cu_gemv_fused(seg, n_seg, src, &m->cu);
        if (rc < 0) return -1;
        if (rc == 0) {
            mark(m, cls);
            return 0;
        }
    }
    /* only the styles the segments' weights read (the f32 row is always written) */
    apr_cu_act act = m->act;
    bool want_k = false, want_0 = false;
    for (int i = 0; i < n_seg; i++) {
        const uint32_t t = seg[i].w.type;
        if (t == APR_TYPE_Q4_K || t == APR_TYPE_Q6_K) (per32 ? want_0 : want_k) = true;
        if (t == APR_TYPE_Q4_0 || t == APR_TYPE_Q5_0 || t == APR_TYPE_Q8_0) want_0 = true;
    }
    if (!want_k) act.qk = NULL;
    if (!want_0) act.q0 = NULL;
    const apr_cu_ctx cc = early_ctx(m, n, fuse);
    apr_cu_norm_quant(src->x, src->ldx, src->rows, src->w, src->eps, src->n, n, &act, &cc);
    mark(m, qcls);
    const apr_cu_ctx pc = product_ctx(&cc);
    if (apr_cu_matmul(seg, n_seg, &use, n, &pc)) return -1;
    mark(m, cls);
    return 0;
}

/* Weights the one-token GEMV takes with 8-bit activations. */
static bool quantized(uint32_t t)
{
    return t == APR_TYPE_Q4_K || t == APR_TYPE_Q6_K || t == APR_TYPE_Q4_0 || t == APR_TYPE_Q5_0 || t == APR_TYPE_Q8_0;
}

/* Enqueues the forward pass of n entries whose (token, pos, seq, logits row)
 * are in d_batch; logits for n_out rows (0: none). Nothing here reads the
 * host, so the same sequence can be captured into a graph. */
static int enqueue_forward(apr_cuda_model *m, int n, int n_out)
{
    const apr_hparams *hp = &m->hp;
    const int E = (int)hp->n_embd, F = (int)hp->n_ff;
    const int32_t *tok = m->d_batch, *pos = m->d_batch + CHUNK_CAP, *seq = m->d_batch + 2 * CHUNK_CAP;
    const int32_t *orow = m->d_batch + 3 * CHUNK_CAP;
    apr_cu_weight none = {NULL, 0, 0, 0};

    mark(m, -1);
    mark(m, P_STAMP);
    apr_cu_get_rows(&m->tok_embd, tok, n, m->x, E, &m->cu);
    mark(m, P_EMBED);
    for (int il = 0; il < (int)hp->n_layer; il++) {
        const cu_layer *L = &m->layers[il];
        uint16_t *kc = m->d_kv + (size_t)il * m->layer_elems;
        uint16_t *vc = m->d_kv + ((size_t)hp->n_layer + (size_t)il) * m->layer_elems;

        apr_cu_gemv_seg qkv[3] = {{L->wq, none, m->qkv, m->ldqkv, APR_CU_STORE, NULL},
                                  {L->wk, none, m->qkv + m->q_dim, m->ldqkv, APR_CU_STORE, NULL},
                                  {L->wv, none, m->qkv + m->q_dim + m->kv_dim, m->ldqkv, APR_CU_STORE, NULL}};
        const apr_cu_quant_src attn_in = {m->x, NULL, E, L->attn_norm, hp->rms_eps, E};
        if (product(m, qkv, 3, n, &attn_in, FUSE_QKV, P_NORM, P_QKV)) return -1;
        /* attention quantizes its output for the o product itself where the
         * GEMV takes it (steps of up to 16 entries) and a head is whole
         * 32-groups; else the quantize kernel does */
        const bool wo_q = L->wo.type != APR_TYPE_F32 && L->wo.type != APR_TYPE_F16;
        const apr_cu_act *q8 = m->att_q8 && n < APR_CU_MMA_MIN_TOK && wo_q && m->ash.head_dim % 32 == 0 &&
                                       !m->ash.f16_acc && !(n == 1 && (m->fuse & FUSE_WO))
                                   ? &m->act
                                   : NULL;
        int arc = 1; /* 1: bias + RoPE + KV append as a kernel of its own */
        const apr_cu_ctx ac = early_ctx(m, n, FUSE_WO); /* the o product may launch at attention's start */
        if (n == 1 && (m->fuse & FUSE_ROPE))
            arc = apr_cu_attention_rope(m->qkv, m->ldqkv, L->bq, L->bk, L->bv, pos, seq, &m->ash, kc, vc, m->att,
                                        m->q_dim, q8, &ac);
        if (arc < 0) return -1;
        if (arc > 0) {
            apr_cu_qkv_post(m->qkv, m->ldqkv, L->bq, L->bk, L->bv, pos, seq, n, &m->ash, kc, vc, &m->cu);
            mark(m, P_POST);
            if (apr_cu_attention(m->qkv, m->ldqkv, kc, vc, pos, seq, n, &m->ash, m->att, m->q_dim, q8, &m->cu))
                return -1;
        }
        mark(m, P_ATTN);
        apr_cu_gemv_seg wo = {L->wo, none, m->x, E, APR_CU_ADD, NULL};
        apr_cu_gemv_seg gu = {L->gate, L->up, m->hb, F, APR_CU_SWIGLU, NULL};
        /* Steps whose attention quantized o's input: the o product also
         * quantizes the ffn norm's input, a 32-group a block, and gate/up
         * applies 1/rms to its sums (apr_cu_gemv_onorm): no norm kernel */
        int orc = 1;
        if (q8 && m->onorm && quantized(L->gate.type)) {
            apr_cu_act in = m->act;
            in.qk = in.q0;
            in.dsk = in.ds0;
            const apr_cu_ctx oc = early_ctx(m, n, FUSE_GATEUP); /* gate/up may launch at its start */
            orc = apr_cu_gemv_onorm(&wo, &in, n, L->ffn_norm, &m->ffn_act, &oc);
            if (orc < 0) return -1;
            if (orc == 0) {
                mark(m, P_WO);
                const apr_cu_ctx gc = product_ctx(&oc);
                if (apr_cu_matmul(&gu, 1, &m->ffn_act, n, &gc)) return -1;
                mark(m, P_GATEUP);
            }
        }
        if (orc) {
            const apr_cu_quant_src att_in = {m->att, NULL, m->q_dim, NULL, 0.f, m->q_dim};
            if (product(m, &wo, 1, n, q8 ? NULL : &att_in, FUSE_WO, P_QUANT, P_WO)) return -1;
            const apr_cu_quant_src ffn_in = {m->x, NULL, E, L->ffn_norm, hp->rms_eps, E};
            if (product(m, &gu, 1, n, &ffn_in, FUSE_GATEUP, P_NORM, P_GATEUP)) return -1;
        }
        apr_cu_gemv_seg down = {L->down, none, m->x, E, APR_CU_ADD, NULL};
        const apr_cu_quant_src hb_in = {m->hb, NULL, F, NULL, 0.f, F};
        if (product(m, &down, 1, n, &hb_in, FUSE_DOWN, P_QUANT, P_DOWN)) return -1;
    }
    if (n_out > 0) {
        apr_cu_gemv_seg out = {m->output, none, m->logits, (int)hp->n_vocab, APR_CU_STORE,
                               m->argmax_now ? m->d_argmax : NULL};
        const apr_cu_quant_src out_in = {m->x, orow, E, m->output_norm, hp->rms_eps, E};
        if (product(m, &out, 1, n_out, &out_in, FUSE_OUTPUT, P_NORM, P_OUTPUT)) return -1;
    }
    return 0;
}

/* The graph of bucket bi: batch upload, forward of bucket_size[bi] entries
 * with logits for all of them, the candidate rows the batch block asks for
 * (row 4: 0 for none) and their download into h_cands. Whole rows are
 * downloaded after the graph, only when some entry wants one. */
static int get_graph(apr_cuda_model *m, int bi, char err[APR_ERRLEN])
{
    if (m->graph[bi]) return 0;
    const int B = bucket_size[bi];
    cudaStream_t s = m->stream;
    cudaGraph_t g = NULL;
    if (cuda_fail(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture", err))
        return -1;
    const bool solo = bi == 0 && m->solo_ok; /* waits for its step, ends with done */
    if (m->hd_batch)
        apr_cu_batch_in((const int32_t *)m->hd_batch, m->d_batch, BATCH_ROWS, B, CHUNK_CAP,
                        solo ? (const uint4 *)((int32_t *)m->hd_batch + BATCH_ROWS * CHUNK_CAP) : NULL, m->d_ticket,
                        &m->cu);
    else cudaMemcpyAsync(m->d_batch, m->h_batch, BATCH_ROWS * CHUNK_CAP * sizeof(int32_t), cudaMemcpyHostToDevice, s);
    m->stamping = m->stamps && B == 1;
    m->pn = 0;
    /* graph[0]'s candidates go straight to the host where the top-k splits
     * the row (its last kernel can signal their arrival), else through
     * d_cands; greedy's answer there comes from the output product */
    const bool direct_ok = solo && m->hd_cands && apr_cu_topk_parts((int)m->hp.n_vocab, 1, &m->cu) > 1;
    const apr_cu_gemv_seg out = {m->output, {NULL, 0, 0, 0}, m->logits, (int)m->hp.n_vocab, APR_CU_STORE, NULL};
    m->argmax_now = direct_ok && m->argmax_ok && apr_cu_gemv_argmax_ok(&out, 1, 1, &m->cu);
    int frc = enqueue_forward(m, B, B);
    unsigned *hd_done = m->hd_cands ? (unsigned *)((uint8_t *)m->hd_cands + (size_t)LOGIT_ROWS * CAND_STRIDE) : NULL;
    const int32_t *ks = m->d_batch + 4 * CHUNK_CAP;
    bool direct = false;
    if (!frc && direct_ok) {
        frc = m->argmax_now ? apr_cu_topk_done_filled(m->logits, (int)m->hp.n_vocab, ks, 0, m->hd_cands, CAND_STRIDE,
                                                      m->d_cand_work, m->d_argmax, m->d_ticket, hd_done, &m->cu)
                            : apr_cu_topk_done(m->logits, (int)m->hp.n_vocab, 1, ks, 0, m->hd_cands, CAND_STRIDE,
                                               m->d_cand_work, m->d_ticket, hd_done, &m->cu);
        direct = !frc;
    }
    m->argmax_now = false;
    if (!frc && !direct)
        frc = apr_cu_topk(m->logits, (int)m->hp.n_vocab, B, ks, 0, m->d_cands, CAND_STRIDE,
                          m->d_cand_work, &m->cu);
    mark(m, P_TOPK);
    if (m->stamping) m->stamp_n = m->pn;
    m->stamping = false;
    m->pn = 0;
    if (direct) {
    } else if (solo) {
        if (apr_cu_copy16_done(m->d_cands, m->hd_cands, (CAND_STRIDE + 15) / 16 * 16, m->d_ticket, hd_done, &m->cu))
            frc = -1;
    } else if (m->hd_cands) apr_cu_copy16(m->d_cands, m->hd_cands, ((size_t)B * CAND_STRIDE + 15) / 16 * 16, &m->cu);
    else cudaMemcpyAsync(m->h_cands, m->d_cands, (size_t)B * CAND_STRIDE, cudaMemcpyDeviceToHost, s);
    cudaError_t e = cudaStreamEndCapture(s, &g);
    if (frc) {
        if (g) cudaGraphDestroy(g);
        snprintf(err, APR_ERRLEN, "internal error: a kernel refused its arguments");
        return -1;
    }
    if (cuda_fail(e, "cudaStreamEndCapture", err)) return -1;
    e = cudaGraphInstantiate(&m->graph[bi], g, 0);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) m->graph[bi] = NULL;
    return cuda_fail(e, "cudaGraphInstantiate", err);
}

/* ------------------------------------------- one-entry steps launched ahead */
/* A one-entry step of a caller that says another follows at once
 * (apr_batch.ahead) launches graph[0] again right behind its own: the next
 * graph is then in the stream, its first kernel polling h_rec, while the host
 * reads this step's result and the caller picks the next token. The next
 * step only writes its batch and releases it (~1 us over the bus), where a
 * launch costs ~10 us of host and GPU time between graphs. A graph whose
 * step never comes (the next is of another size, the caller goes idle or
 * closes) is released on a padding entry, which touches no sequence. */

/* graph[0]'s batch is in h_batch: let the graph in the stream (or the next
 * one launched) take it */
static void release(apr_cuda_model *m)
{
    m->released++;
    const uint32_t tag = (m->released & 0xffu) << 24;
    const int32_t *h = m->h_batch;
    /* the graph takes the words when all four carry the tag: any order */
    __atomic_store_n(&m->h_rec[0], tag | (uint32_t)h[0], __ATOMIC_RELAXED);
    __atomic_store_n(&m->h_rec[1], tag | (uint32_t)h[CHUNK_CAP], __ATOMIC_RELAXED);
    __atomic_store_n(&m->h_rec[2], tag | (uint32_t)(h[2 * CHUNK_CAP] + 1), __ATOMIC_RELAXED);
    __atomic_store_n(&m->h_rec[3], tag | (uint32_t)h[4 * CHUNK_CAP], __ATOMIC_RELAXED);
}

/* Until graph[0]'s latest released step is done (its candidate rows are in
 * h_cands). Polls host memory; asks the stream now and then so that a failed
 * device ends the wait. */
static int wait_done(apr_cuda_model *m, char err[APR_ERRLEN])
{
    for (unsigned spins = 1;; spins++) {
        if (__atomic_load_n(m->h_done, __ATOMIC_ACQUIRE) == m->released) return 0;
        if (spins % 4096 == 0) {
            const cudaError_t e = cudaStreamQuery(m->stream);
            if (e == cudaErrorNotReady) continue;
            if (cuda_fail(e, "the forward pass", err)) return -1;
            if (__atomic_load_n(m->h_done, __ATOMIC_ACQUIRE) == m->released) return 0;
            snprintf(err, APR_ERRLEN, "CUDA: the step's graph ended without its done word");
            return -1;
        }
    }
}

/* The graph launched ahead, if any, runs on a padding entry; returns once it
 * has read its batch and is done (the caller then rewrites h_batch). */
static int disarm(apr_cuda_model *m, char err[APR_ERRLEN])
{
    if (!m->armed) return 0;
    padding_entry(m->h_batch);
    m->armed = false;
    release(m);
    return wait_done(m, err);
}

extern "C" void apr_cuda_idle(apr_cuda_model *m)
{
    char err[APR_ERRLEN];
    if (disarm(m, err)) fprintf(stderr, "cuda: %s\n", err); /* the next step reports the device's state */
}

/* One chunk of at most CHUNK_CAP entries; logits of its wanting entries are
 * appended at *out_row of the caller's buffer. */
static int step_chunk(apr_cuda_model *m, const apr_batch *b, int c0, int nc, float *logits, int *out_row,
                      char err[APR_ERRLEN])
{
    const size_t V = m->hp.n_vocab;
    const int last = b->n - 1;
    int32_t *h = m->h_batch;
    cudaStream_t s = m->stream;
#define WANT(i) (b->want_logits ? b->want_logits[i] != 0 : (i) == last)
    int bi = 0, whole = 0;
    while (bi < N_BUCKETS && bucket_size[bi] < nc) bi++;
    const bool solo = bi == 0 && m->solo_ok; /* graph[0]: released, polled */
    if (!solo && disarm(m, err)) return -1;
    if (m->use_graphs && bi < N_BUCKETS) {
        const int B = bucket_size[bi];
        for (int i = 0; i < B; i++) {
            const bool real = i < nc;
            h[i] = real ? b->token[c0 + i] : 0;
            h[CHUNK_CAP + i] = real ? b->pos[c0 + i] : 0;
            h[2 * CHUNK_CAP + i] = real ? b->seq[c0 + i] : -1; /* padding: skipped by the kernels */
            h[3 * CHUNK_CAP + i] = i;
            h[4 * CHUNK_CAP + i] = real && b->topk && WANT(c0 + i) ? b->topk[c0 + i] : 0;
            if (real && WANT(c0 + i) && !h[4 * CHUNK_CAP + i]) whole++;
        }
        if (get_graph(m, bi, err)) return -1;
        struct timespec w0, w1;
        if (m->gev[1]) {
            clock_gettime(CLOCK_MONOTONIC, &w0);
            cudaEventRecord(m->gev[0], s);
        }
        if (solo) release(m);
        const bool launch_now = !m->armed; /* else it is in the stream, released above */
        m->armed = false;
        /* the next graph[0] goes in behind this step's work: one-entry steps, a
         * caller that says one follows, a single chunk */
        const bool ahead = solo && m->ahead_ok && b->ahead && b->n == 1;
        if ((launch_now && cuda_fail(cudaGraphLaunch(m->graph[bi], s), "cudaGraphLaunch", err)) ||
            (m->gev[1] && cuda_fail(cudaEventRecord(m->gev[1], s), "cudaEventRecord", err)) ||
            (whole && cuda_fail(cudaMemcpyAsync(m->h_logits, m->logits, (size_t)nc * V * sizeof(float),
                                                cudaMemcpyDeviceToHost, s),
                                "cudaMemcpyAsync (logits)", err)) ||
            (ahead && whole && cuda_fail(cudaEventRecord(m->done_ev, s), "cudaEventRecord", err)))
            return -1;
        if (ahead) {
            if (cuda_fail(cudaGraphLaunch(m->graph[0], s), "cudaGraphLaunch", err)) return -1;
            m->armed = true;
        }
        /* graph[0]'s end is its done word; whole rows come after it */
        if (solo && !whole ? wait_done(m, err)
                           : cuda_fail(ahead ? cudaEventSynchronize(m->done_ev) : cudaStreamSynchronize(s),
                                       "the forward pass", err))
            return -1;
        if (m->gev[1]) {
            float ms = 0;
            clock_gettime(CLOCK_MONOTONIC, &w1);
            cudaEventElapsedTime(&ms, m->gev[0], m->gev[1]);
            m->g_gpu_ms[bi] += ms;
            m->g_wall_ms[bi] += (double)(w1.tv_sec - w0.tv_sec) * 1e3 + (double)(w1.tv_nsec - w0.tv_nsec) / 1e6;
            m->g_n[bi]++;
        }
        if (m->stamps && bi == 0 && stamps_collect(m, err)) return -1;
        for (int i = 0; i < nc; i++) {
            if (!WANT(c0 + i)) continue;
            uint8_t *dst = (uint8_t *)(logits + (size_t)(*out_row)++ * V);
            const int k = h[4 * CHUNK_CAP + i];
            if (!k) {
                memcpy(dst, m->h_logits + (size_t)i * V, V * sizeof(float));
                continue;
            }
            /* the GPU picked min(k, 64) best: the first k of them are the k best */
            const uint8_t *src = m->h_cands + (size_t)i * CAND_STRIDE;
            int32_t cnt;
            memcpy(&cnt, src, 4);
            if (cnt > k) cnt = k;
            memcpy(dst, &cnt, 4);
            memcpy(dst + 4, src + 4, 8 * (size_t)cnt);
        }
        return 0;
    }
    int n_out = 0;
    for (int i = 0; i < nc; i++) {
        h[i] = b->token[c0 + i];
        h[CHUNK_CAP + i] = b->pos[c0 + i];
        h[2 * CHUNK_CAP + i] = b->seq[c0 + i];
        if (WANT(c0 + i)) h[3 * CHUNK_CAP + n_out++] = i;
    }
    if (cuda_fail(cudaMemcpyAsync(m->d_batch, h, BATCH_ROWS * CHUNK_CAP * sizeof(int32_t), cudaMemcpyHostToDevice, s),
                  "cudaMemcpyAsync", err))
        return -1;
    m->cu.pdl = m->pdl == 2 || (m->pdl == 1 && nc <= 64);
    const int bad = enqueue_forward(m, nc, n_out);
    m->cu.pdl = m->pdl != 0; /* what graph captures use */
    if (bad) {
        snprintf(err, APR_ERRLEN, "internal error: a kernel refused its arguments");
        cudaStreamSynchronize(s);
        return -1;
    }
    if (cuda_fail(cudaGetLastError(), "a kernel launch", err)) return -1;
    for (int r0 = 0; r0 < n_out; r0 += LOGIT_ROWS) {
        const int rows = n_out - r0 < LOGIT_ROWS ? n_out - r0 : LOGIT_ROWS;
        if (cuda_fail(cudaMemcpyAsync(m->h_logits, m->logits + (size_t)r0 * V, (size_t)rows * V * sizeof(float),
                                      cudaMemcpyDeviceToHost, s),
                      "cudaMemcpyAsync (logits)", err) ||
            cuda_fail(cudaStreamSynchronize(s), "the forward pass", err))
            return -1;
        memcpy(logits + (size_t)*out_row * V, m->h_logits, (size_t)rows * V * sizeof(float));
        *out_row += rows;
    }
    /* candidate rows of a graph-less step (prefill chunks, plain launches):
     * picked here from the whole rows, in place */
    if (b->topk)
        for (int i = 0, r = *out_row - n_out; i < nc; i++)
            if (WANT(c0 + i)) {
                float *row = logits + (size_t)r++ * V;
                if (b->topk[c0 + i]) apr_cand_row((uint8_t *)row, row, (uint32_t)V, b->topk[c0 + i]);
            }
    /* h_batch is read by the upload above: it must be done before the next chunk refills it */
    if (cuda_fail(cudaStreamSynchronize(s), "the forward pass", err)) return -1;
    if (m->profile) profile_collect(m, nc);
    return 0;
#undef WANT
}

extern "C" int apr_cuda_step(apr_cuda_model *m, const apr_batch *b, float *logits, char err[APR_ERRLEN])
{
    if (apr_batch_check(b, m->n_seq, m->n_ctx, m->hp.n_vocab, m->seq_len, err)) return -1;
    int out_row = 0;
    for (int c0 = 0; c0 < b->n; c0 += CHUNK_CAP) {
        const int nc = b->n - c0 < CHUNK_CAP ? b->n - c0 : CHUNK_CAP;
        /* past the checks, any failure is the device's (or a launch this
         * build got wrong): the stream's state is unknown, so say so */
        if (step_chunk(m, b, c0, nc, logits, &out_row, err)) return -2;
        for (int i = c0; i < c0 + nc; i++)
            if (b->pos[i] + 1 > m->seq_len[b->seq[i]]) m->seq_len[b->seq[i]] = b->pos[i] + 1;
    }
    return 0;
}
