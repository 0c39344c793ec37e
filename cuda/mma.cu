/* Quantized matrix products on the tensor cores, for prefill and batched
 * decode (apr_cu_matmul's routing is at the end): the products apr_cu_gemv computes,
 * with the same epilogues and the same numerics on Q8_K-style rows, as int8
 * mma.sync (decode-sized steps give apr_cu_gemv Q8_0-style rows instead,
 * cuda/kernels.h).
 *
 * What is multiplied: the weights' integer quants (Q4_K and Q4_0 nibbles,
 * Q6_K and Q5_0 6-/5-bit values, Q8_0 bytes) against the activations'
 * 8-bit quants, which the existing quantizer wrote exactly as the CPU does
 * (kernels.h). An m16n8k32 s8 x s8 -> s32 MMA over one 32-element block gives
 * the very integer the CPU's dot product forms for that block; the scales
 * are applied to it afterwards, as the CPU does:
 *   Q4_K  per 256: (d * dx) * sum_j sc_j * S_j  -  sum_j (dmin * m_j) * (dx * bsum_j)
 *         (sc_j * S_j summed as integers over the 8 sub-blocks, as the CPU's sumi)
 *   Q6_K  per 256: (d * dx) * sum_g sc_g * S_g over 16 groups of 16 (m16n8k16 MMAs)
 *   Q8_0, Q5_0, Q4_0  per 32: (float)S * (d * dx)
 * so results differ from the CPU's only in the order of the float sums.
 *
 * Tiling. A block computes BM weight rows x BN tokens (BM = 32 x WM warps,
 * BN = 32 x WN warps), each warp a 32 x 32 tile: 2 m16 tiles x 4 n8 tiles,
 * so one A fragment serves 4 MMAs and one B fragment 2 (the accumulators,
 * 32 f32 plus 32 int32 for the K-quants' integer block sums, are what bound
 * the tile: ~160 registers). The K loop walks stages of 256 elements (one
 * K-quant super-block, or 8 legacy blocks):
 *   - the weights' quant bytes, still packed, and the activation bytes go to
 *     shared memory by cp.async, two stages deep, so the next stage's loads
 *     fly while this one is multiplied. Rows are padded by 16 bytes, so the
 *     ldmatrix reads of 8 rows hit 8 different 16-byte bank groups.
 *   - the scales travel with the stage (Q4_K headers, Q6_K scales and the
 *     activations' (d, sum) pairs by cp.async, the 2-byte d planes by plain
 *     loads into registers) and are decoded into small shared arrays (per
 *     row: sc_j, dmin*m_j, d; per token: dx, dx*bsum_j) after the barrier,
 *     once per block rather than once per warp.
 *   - unpacking happens on the fragments: one ldmatrix of packed Q4_K bytes
 *     gives the A fragments of two sub-blocks (low and high nibbles); a Q6_K
 *     fragment ORs the 2 high bits in from the qh plane's fragment, which
 *     ldmatrix lays out at the same (row, k) positions.
 * SwiGLU: a warp's two m16 tiles are the same 16 rows of gate and of up, so
 * one thread holds both sums of an output and applies silu(g) * u itself.
 * Shapes: 64 x 64 (4 warps); 64 x 32 (2 warps) for up to 32 tokens; and
 * where the GPU can hold all its blocks at once (the 1.5B's o and down at
 * 512 tokens: 24 row tiles x 16), 64 x 32 with the stage's K split between
 * two warp groups (4 warps), whose sums meet in shared memory at the end.
 * No split across blocks: every output is summed in a fixed order by one
 * block, so the result is deterministic and the residual add needs no
 * atomics.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "model/model.h"
}
#include "cuda/kernels.h"
#include "cuda/launch.cuh"

/* ------------------------------------------------------------ helpers */

static __device__ __forceinline__ float mma_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

static __device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void cp_async16(void *dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src) : "memory");
}
static __device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
static __device__ __forceinline__ void cp_async_wait_all(void) { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

/* Four 8x8 matrices of 16-byte rows; lanes 8m..8m+7 give matrix m's row
 * addresses, and register m gets, in lane l, bytes 4(l%4)..4(l%4)+3 of row
 * l/4 of matrix m: exactly the mma fragments' (row, k) assignment. */
static __device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* c = A (16x32, s8) x B (32x8, s8), from zero. Fragments (g = lane/4, q = lane%4):
 *   a0 = A[g][4q..4q+3]  a1 = A[g+8][4q..]  a2 = A[g][16+4q..]  a3 = A[g+8][16+4q..]
 *   b0 = B[4q..4q+3][g]  b1 = B[16+4q..][g]
 *   c0 = C[g][2q]  c1 = C[g][2q+1]  c2 = C[g+8][2q]  c3 = C[g+8][2q+1] */
static __device__ __forceinline__ void mma_k32(int (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%10,%10,%10};\n"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

/* The k16 shape (Q6_K's scales cover 16 elements): a0 = A[g][4q..], a1 = A[g+8][4q..], b = B[4q..][g]. */
static __device__ __forceinline__ void mma_k16(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t b)
{
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};\n"
        : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
        : "r"(a0), "r"(a1), "r"(b), "r"(0));
}

/* Bits 0..3 of x to bit 4 of each byte (Q5_0's fifth bits). */
static __device__ __forceinline__ uint32_t mma_spread4(uint32_t x)
{
    return ((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25);
}

static constexpr __host__ __device__ bool is_kquant(int t) { return t == APR_TYPE_Q4_K || t == APR_TYPE_Q6_K; }

/* Bytes of quants one weight row contributes to a 256-element stage. */
static constexpr __host__ __device__ int stage_bytes(int t) { return t == APR_TYPE_Q6_K ? 192 : t == APR_TYPE_Q8_0 ? 256 : 128; }

/* -------------------------------------------------------- parameters */

struct mma_seg {
    const uint8_t *w, *w2; /* w2: SwiGLU's up */
    float *out;
    int n_in, n_out, ldo, mode;
    int blk0; /* the segment's first row block (blockIdx.y) */
};

struct mma_params {
    mma_seg seg[APR_CU_MAX_SEG];
    int n_seg, ntok, ld;
    const int8_t *q;  /* activation quants: Q8_K-style for the K-quants, Q8_0-style otherwise */
    const float2 *ds; /* their (d, sum of quants) per 32 */
    /* split > 1: blockIdx.z takes that share of the stages and writes its raw
     * sums to part[z][tok][2 * n_out] (SwiGLU's up at n_out + r), which
     * mma_split_kernel adds in z order and finishes (one segment only) */
    int split;
    float *part;
};

/* Shared memory of one block, in bytes from the start:
 *   A  [2 stages][BM rows][AS]   weight quant bytes as stored (AS = stage bytes + 16)
 *   B  [2 stages][BN tokens][BS] activation quants (BS = 256 + 16)
 *   HR [2 stages][BM rows][16]   Q4_K block headers, Q6_K scales, as stored
 *   TR [2 stages][BN tokens][8]  the activations' (d, sum) pairs of the stage, as stored
 *   ri [16][BM] int    per row: Q4_K sc_j, Q6_K sc_g, Q5_0 qh_j
 *   rf [9][BM] float   per row: Q4_K dmin*m_j and d (index 8), Q6_K d (0), legacy d_j
 *   tf [9][BN] float   per token: Q4_K dx*bsum_j and dx (8), Q6_K dx (0), legacy dx_j
 * The raw buffers travel with the stage's cp.async; ri/rf/tf are decoded
 * from them (and from a few registers) once per stage. */
template <int TYPE, int WM, int WN, int KS>
struct mma_tile {
    static constexpr int BM = 32 * WM, BN = 32 * WN, NTHR = 32 * WM * WN * KS;
    static constexpr int AB = stage_bytes(TYPE), AS = AB + 16, BS = 256 + 16;
    static constexpr int A_OFF = 0;
    static constexpr int B_OFF = A_OFF + 2 * BM * AS;
    static constexpr int HR_OFF = B_OFF + 2 * BN * BS;
    static constexpr int TR_OFF = HR_OFF + 2 * BM * 16;
    static constexpr int RI_OFF = TR_OFF + 2 * BN * 64;
    static constexpr int RF_OFF = RI_OFF + 16 * BM * 4;
    static constexpr int TF_OFF = RF_OFF + 9 * BM * 4;
    static constexpr int BYTES = TF_OFF + 9 * BN * 4;
    static constexpr int TJ = 8 / (WM * KS); /* (token, 32-group) entries a thread decodes: BN * 8 / NTHR */
    static constexpr int RJ = 8 / (WN * KS); /* (row, block) entries a thread fetches (legacy): BM * 8 / NTHR */
    static_assert(WM * WN * 32 * 32 * 4 <= 2 * BM * AS, "the K split's reduction fits the A buffers");
};

/* The weight row that tile row i holds, and from which matrix. SwiGLU tiles
 * alternate gate and up by 16 rows, so warp w's m16 tiles are the gate and
 * up rows of outputs 16w..16w+15. Rows past the end repeat the last row:
 * their sums are computed and thrown away. */
template <bool SWIGLU>
static __device__ __forceinline__ int tile_row(const mma_seg &s, int r0, int i, const uint8_t *&w)
{
    int r = r0 + i;
    w = s.w;
    if (SWIGLU) {
        r = r0 + (i >> 5) * 16 + (i & 15);
        if (i & 16) w = s.w2;
    }
    return min(r, s.n_out - 1);
}

/* The scales cp.async cannot move (2-byte aligned), held in registers while
 * the current stage is multiplied: Q6_K's d of row tid (d[0]); the legacy
 * types' d and Q5_0's fifth bits of RJ (row, block) entries. */
struct meta_regs {
    uint32_t d[8], qh[8];
};

/* --------------------------------------------------------- one stage */

/* Stage st into buffer buf: cp.async of the quant bytes, the block headers
 * and the activations' (d, sum) pairs; plain loads of the rest into m. */
template <int TYPE, int WM, int WN, int KS, bool SWIGLU>
static __device__ __forceinline__ void load_stage(const mma_params &p, const mma_seg &s, int r0, int t0, int nbr,
                                                  size_t nbt, int st, uint8_t *smem, int buf, int tid, meta_regs &m)
{
    using T = mma_tile<TYPE, WM, WN, KS>;
    uint8_t *sA = smem + T::A_OFF + buf * T::BM * T::AS, *sB = smem + T::B_OFF + buf * T::BN * T::BS;
    uint8_t *sH = smem + T::HR_OFF + buf * T::BM * 16, *sT = smem + T::TR_OFF + buf * T::BN * 64;
    constexpr int ACH = T::AB / 16; /* 16-byte chunks per row */
    for (int idx = tid; idx < T::BM * ACH; idx += T::NTHR) {
        const int i = idx / ACH, c = idx % ACH;
        const uint8_t *w;
        const size_t r = (size_t)tile_row<SWIGLU>(s, r0, i, w);
        const uint8_t *src;
        if constexpr (TYPE == APR_TYPE_Q4_K) {
            src = w + (r * nbr + st) * 144 + 16 + 16 * c; /* past the 16-byte header */
        } else if constexpr (TYPE == APR_TYPE_Q6_K) {
            const size_t gb = r * nbr + st; /* ql plane: 8 chunks, then qh plane: 4 */
            src = c < 8 ? w + gb * 128 + 16 * c : w + nbt * 128 + gb * 64 + 16 * (c - 8);
        } else if constexpr (TYPE == APR_TYPE_Q8_0) {
            src = w + (r * nbr + min(st * 8 + c / 2, nbr - 1)) * 32 + 16 * (c & 1);
        } else { /* Q5_0, Q4_0: one chunk is one block's 16 bytes */
            src = w + (r * nbr + min(st * 8 + c, nbr - 1)) * 16;
        }
        cp_async16(sA + i * T::AS + 16 * c, src);
    }
    for (int idx = tid; idx < T::BN * 16; idx += T::NTHR) {
        const int n = idx >> 4, c = idx & 15;
        const int tok = min(t0 + n, p.ntok - 1); /* tokens past the end: thrown away */
        cp_async16(sB + n * T::BS + 16 * c, p.q + (size_t)tok * p.ld + st * 256 + 16 * c);
    }
    /* (d, sum) of the stage's 8 groups of 32: 64 bytes, 64-byte aligned since ld % 256 == 0 */
    for (int idx = tid; idx < T::BN * 4; idx += T::NTHR) {
        const int n = idx >> 2, c = idx & 3;
        const int tok = min(t0 + n, p.ntok - 1);
        cp_async16(sT + n * 64 + 16 * c, p.ds + (size_t)tok * (p.ld / 32) + st * 8 + 2 * c);
    }
    if constexpr (is_kquant(TYPE)) {
        if (tid < T::BM) {
            const uint8_t *w;
            const size_t gb = (size_t)tile_row<SWIGLU>(s, r0, tid, w) * nbr + st;
            if constexpr (TYPE == APR_TYPE_Q4_K) {
                cp_async16(sH + 16 * tid, w + gb * 144);
            } else {
                cp_async16(sH + 16 * tid, w + nbt * 192 + gb * 16);
                m.d[0] = __ldg((const uint16_t *)(w + nbt * 208) + gb);
            }
        }
    } else {
        constexpr size_t doff = TYPE == APR_TYPE_Q8_0 ? 32 : TYPE == APR_TYPE_Q5_0 ? 20 : 16; /* d plane, per block */
#pragma unroll
        for (int k = 0; k < T::RJ; k++) {
            const int idx = tid + k * T::NTHR, i = idx >> 3, j = idx & 7;
            const uint8_t *w;
            const size_t gb = (size_t)tile_row<SWIGLU>(s, r0, i, w) * nbr + min(st * 8 + j, nbr - 1);
            m.d[k] = __ldg((const uint16_t *)(w + nbt * doff) + gb);
            if constexpr (TYPE == APR_TYPE_Q5_0) m.qh[k] = __ldg((const uint32_t *)(w + nbt * 16) + gb);
        }
    }
    cp_async_commit();
}

/* ggml's get_scale_min_k4 on a Q4_K header (bytes 4..15 hold the scales). */
static __device__ __forceinline__ void q4k_sc_m(const uint4 &h, int j, int &sc, int &m)
{
    auto byte = [&](int i) -> int {
        const uint32_t w = i < 4 ? h.y : (i < 8 ? h.z : h.w);
        return (int)((w >> (8 * (i & 3))) & 0xFF);
    };
    if (j < 4) {
        sc = byte(j) & 63;
        m = byte(j + 4) & 63;
    } else {
        sc = (byte(j + 4) & 0xF) | ((byte(j - 4) >> 6) << 4);
        m = (byte(j + 4) >> 4) | ((byte(j) >> 6) << 4);
    }
}

/* Stage buf's scales, decoded into ri/rf/tf (after the barrier that ends the
 * previous stage's reads of them, and the one that makes buf's bytes visible). */
template <int TYPE, int WM, int WN, int KS>
static __device__ __forceinline__ void store_meta(const uint8_t *smem, int buf, const meta_regs &m, int tid, int *ri,
                                                  float *rf, float *tf)
{
    using T = mma_tile<TYPE, WM, WN, KS>;
    const uint4 *sH = (const uint4 *)(smem + T::HR_OFF + buf * T::BM * 16);
    const float2 *sT = (const float2 *)(smem + T::TR_OFF + buf * T::BN * 64);
    if constexpr (TYPE == APR_TYPE_Q4_K) {
        if (tid < T::BM) {
            const uint4 h = sH[tid];
            const float d = mma_h2f((uint16_t)(h.x & 0xFFFF)), dmin = mma_h2f((uint16_t)(h.x >> 16));
#pragma unroll
            for (int j = 0; j < 8; j++) {
                int sc, mn;
                q4k_sc_m(h, j, sc, mn);
                ri[j * T::BM + tid] = sc;
                rf[j * T::BM + tid] = dmin * (float)mn;
            }
            rf[8 * T::BM + tid] = d;
        }
#pragma unroll
        for (int k = 0; k < T::TJ; k++) {
            const int idx = tid + k * T::NTHR, n = idx >> 3, j = idx & 7;
            const float2 v = sT[idx]; /* = sT[8n + j] */
            tf[j * T::BN + n] = v.x * v.y;
            if (j == 0) tf[8 * T::BN + n] = v.x;
        }
    } else if constexpr (TYPE == APR_TYPE_Q6_K) {
        if (tid < T::BM) {
            const uint4 h = sH[tid];
#pragma unroll
            for (int k = 0; k < 16; k++) {
                const uint32_t w = k < 4 ? h.x : k < 8 ? h.y : k < 12 ? h.z : h.w;
                ri[k * T::BM + tid] = (int)(int8_t)((w >> (8 * (k & 3))) & 0xFF);
            }
            rf[tid] = mma_h2f((uint16_t)m.d[0]);
        }
        if (tid < T::BN) tf[tid] = sT[8 * tid].x;
    } else {
#pragma unroll
        for (int k = 0; k < T::RJ; k++) {
            const int idx = tid + k * T::NTHR, i = idx >> 3, j = idx & 7;
            rf[j * T::BM + i] = mma_h2f((uint16_t)m.d[k]);
            if constexpr (TYPE == APR_TYPE_Q5_0) ri[j * T::BM + i] = (int)m.qh[k];
        }
#pragma unroll
        for (int k = 0; k < T::TJ; k++) {
            const int idx = tid + k * T::NTHR, n = idx >> 3, j = idx & 7;
            tf[j * T::BN + n] = sT[idx].x;
        }
    }
}

/* B fragments of the warp's 4 n8 tiles at k offset col: one ldmatrix.x4 per
 * pair of tiles (matrices: tokens 0-7 k 0-15, tokens 0-7 k 16-31, tokens
 * 8-15 k 0-15, tokens 8-15 k 16-31). */
template <int BS>
static __device__ __forceinline__ void load_b(const uint8_t *bw, int col, uint32_t (&b)[4][2])
{
#pragma unroll
    for (int np = 0; np < 2; np++) {
        uint32_t r[4];
        ldsm_x4(r, bw + np * 16 * BS + col);
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
    }
}

/* The warp's share of one stage: 2 m16 x 4 n8 tiles over 256 elements, or
 * over half of them when the block splits K in two (KS = 2: warp group kg
 * takes elements 128 kg .. 128 kg + 127).
 * aw, bw: this lane's ldmatrix row addresses in the stage's A and B buffers
 * (A: row 16 mi + lane % 16, byte 16 (lane / 16); B: token lane % 8 + 8 (lane / 16),
 * byte 16 ((lane / 8) % 2)); ra: the lane's first tile row (32 wm + g), tn: its
 * first token (32 wn + 2q); nvalid: legacy blocks of this stage inside the row. */
template <int TYPE, int WM, int WN, int KS>
static __device__ __forceinline__ void mma_stage(const uint8_t *aw, const uint8_t *bw, const int *ri, const float *rf,
                                                 const float *tf, int ra, int tn, int tq, int nvalid, int kg,
                                                 float (&acc)[2][4][4])
{
    using T = mma_tile<TYPE, WM, WN, KS>;
    constexpr int BM = T::BM, BN = T::BN;
    if constexpr (TYPE == APR_TYPE_Q4_K) {
        int isum[2][4][4];
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) isum[mi][ni][e] = 0;
#pragma unroll 1
        for (int gp = kg * 4 / KS; gp < (kg + 1) * 4 / KS; gp++) {
            /* bytes 32gp..32gp+31: sub-block 2gp in the low nibbles, 2gp+1 in the high */
            uint32_t pa[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) ldsm_x4(pa[mi], aw + mi * 16 * T::AS + 32 * gp);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int j = 2 * gp + h;
                uint32_t b[4][2];
                load_b<T::BS>(bw, 32 * j, b);
                float2 bx[4];
#pragma unroll
                for (int ni = 0; ni < 4; ni++) bx[ni] = *(const float2 *)&tf[j * BN + tn + 8 * ni];
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    uint32_t a[4];
#pragma unroll
                    for (int k = 0; k < 4; k++) a[k] = (h ? pa[mi][k] >> 4 : pa[mi][k]) & 0x0F0F0F0Fu;
                    const int r = ra + 16 * mi;
                    const int sc0 = ri[j * BM + r], sc1 = ri[j * BM + r + 8];
                    const float dm0 = rf[j * BM + r], dm1 = rf[j * BM + r + 8];
#pragma unroll
                    for (int ni = 0; ni < 4; ni++) {
                        int c[4];
                        mma_k32(c, a, b[ni][0], b[ni][1]);
                        isum[mi][ni][0] += sc0 * c[0];
                        isum[mi][ni][1] += sc0 * c[1];
                        isum[mi][ni][2] += sc1 * c[2];
                        isum[mi][ni][3] += sc1 * c[3];
                        acc[mi][ni][0] -= dm0 * bx[ni].x;
                        acc[mi][ni][1] -= dm0 * bx[ni].y;
                        acc[mi][ni][2] -= dm1 * bx[ni].x;
                        acc[mi][ni][3] -= dm1 * bx[ni].y;
                    }
                }
            }
        }
#pragma unroll
        for (int mi = 0; mi < 2; mi++) {
            const float d0 = rf[8 * BM + ra + 16 * mi], d1 = rf[8 * BM + ra + 16 * mi + 8];
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const float2 dx = *(const float2 *)&tf[8 * BN + tn + 8 * ni];
                acc[mi][ni][0] += d0 * dx.x * (float)isum[mi][ni][0];
                acc[mi][ni][1] += d0 * dx.y * (float)isum[mi][ni][1];
                acc[mi][ni][2] += d1 * dx.x * (float)isum[mi][ni][2];
                acc[mi][ni][3] += d1 * dx.y * (float)isum[mi][ni][3];
            }
        }
    } else if constexpr (TYPE == APR_TYPE_Q6_K) {
        int isum[2][4][4];
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) isum[mi][ni][e] = 0;
        /* element 128hh + 32quarter + l: low 4 bits from ql byte 64hh + 32(quarter&1) + l
         * (high nibble for quarters 2, 3), 2 high bits from qh byte 32hh + l */
#pragma unroll 1
        for (int hh = kg * 2 / KS; hh < (kg + 1) * 2 / KS; hh++) {
            uint32_t qf[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) ldsm_x4(qf[mi], aw + mi * 16 * T::AS + 128 + 32 * hh);
#pragma unroll
            for (int qp = 0; qp < 2; qp++) {
                uint32_t pl[2][4];
#pragma unroll
                for (int mi = 0; mi < 2; mi++) ldsm_x4(pl[mi], aw + mi * 16 * T::AS + 64 * hh + 32 * qp);
#pragma unroll
                for (int nib = 0; nib < 2; nib++) {
                    const int quarter = qp + 2 * nib, e0 = 128 * hh + 32 * quarter, sg = e0 / 16;
                    uint32_t b[4][2];
                    load_b<T::BS>(bw, e0, b);
#pragma unroll
                    for (int mi = 0; mi < 2; mi++) {
                        uint32_t a[4];
#pragma unroll
                        for (int k = 0; k < 4; k++) {
                            const uint32_t lo = (nib ? pl[mi][k] >> 4 : pl[mi][k]) & 0x0F0F0F0Fu;
                            const uint32_t hi = ((qf[mi][k] >> (2 * quarter)) & 0x03030303u) << 4;
                            a[k] = __vsub4(lo | hi, 0x20202020u);
                        }
                        const int r = ra + 16 * mi;
                        const int sl0 = ri[sg * BM + r], sh0 = ri[(sg + 1) * BM + r];
                        const int sl1 = ri[sg * BM + r + 8], sh1 = ri[(sg + 1) * BM + r + 8];
#pragma unroll
                        for (int ni = 0; ni < 4; ni++) {
                            int c1[4], c2[4];
                            mma_k16(c1, a[0], a[1], b[ni][0]);
                            mma_k16(c2, a[2], a[3], b[ni][1]);
                            isum[mi][ni][0] += sl0 * c1[0] + sh0 * c2[0];
                            isum[mi][ni][1] += sl0 * c1[1] + sh0 * c2[1];
                            isum[mi][ni][2] += sl1 * c1[2] + sh1 * c2[2];
                            isum[mi][ni][3] += sl1 * c1[3] + sh1 * c2[3];
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int mi = 0; mi < 2; mi++) {
            const float d0 = rf[ra + 16 * mi], d1 = rf[ra + 16 * mi + 8];
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const float2 dx = *(const float2 *)&tf[tn + 8 * ni];
                acc[mi][ni][0] += d0 * dx.x * (float)isum[mi][ni][0];
                acc[mi][ni][1] += d0 * dx.y * (float)isum[mi][ni][1];
                acc[mi][ni][2] += d1 * dx.x * (float)isum[mi][ni][2];
                acc[mi][ni][3] += d1 * dx.y * (float)isum[mi][ni][3];
            }
        }
    } else {
        /* Q8_0: block j is bytes 32j..32j+31 of the row, the fragment as is.
         * Q5_0/Q4_0: block j is bytes 16j..16j+15, elements 0-15 in the low
         * nibbles, 16-31 in the high; one ldmatrix covers 2 blocks. */
#pragma unroll 1
        for (int jp = kg * 4 / KS; jp < (kg + 1) * 4 / KS; jp++) {
            if (2 * jp >= nvalid) break; /* uniform: the row's last stage may be partial */
            uint32_t pa[2][4];
            if constexpr (TYPE != APR_TYPE_Q8_0) {
#pragma unroll
                for (int mi = 0; mi < 2; mi++) ldsm_x4(pa[mi], aw + mi * 16 * T::AS + 32 * jp);
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int j = 2 * jp + h;
                if (j >= nvalid) break;
                uint32_t b[4][2];
                load_b<T::BS>(bw, 32 * j, b);
                float2 dx[4];
#pragma unroll
                for (int ni = 0; ni < 4; ni++) dx[ni] = *(const float2 *)&tf[j * BN + tn + 8 * ni];
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    const int r = ra + 16 * mi;
                    uint32_t a[4];
                    if constexpr (TYPE == APR_TYPE_Q8_0) {
                        ldsm_x4(a, aw + mi * 16 * T::AS + 32 * j);
                    } else {
                        const uint32_t xg = pa[mi][2 * h], xg8 = pa[mi][2 * h + 1]; /* rows g, g+8 */
                        a[0] = xg & 0x0F0F0F0Fu;
                        a[1] = xg8 & 0x0F0F0F0Fu;
                        a[2] = (xg >> 4) & 0x0F0F0F0Fu;
                        a[3] = (xg8 >> 4) & 0x0F0F0F0Fu;
                        if constexpr (TYPE == APR_TYPE_Q5_0) {
                            const uint32_t qa = (uint32_t)ri[j * BM + r], qb = (uint32_t)ri[j * BM + r + 8];
                            a[0] |= mma_spread4(qa >> (4 * tq));
                            a[1] |= mma_spread4(qb >> (4 * tq));
                            a[2] |= mma_spread4(qa >> (16 + 4 * tq));
                            a[3] |= mma_spread4(qb >> (16 + 4 * tq));
                        }
                        const uint32_t off = TYPE == APR_TYPE_Q5_0 ? 0x10101010u : 0x08080808u;
#pragma unroll
                        for (int k = 0; k < 4; k++) a[k] = __vsub4(a[k], off);
                    }
                    const float dw0 = rf[j * BM + r], dw1 = rf[j * BM + r + 8];
#pragma unroll
                    for (int ni = 0; ni < 4; ni++) {
                        int c[4];
                        mma_k32(c, a, b[ni][0], b[ni][1]);
                        acc[mi][ni][0] += (float)c[0] * (dw0 * dx[ni].x);
                        acc[mi][ni][1] += (float)c[1] * (dw0 * dx[ni].y);
                        acc[mi][ni][2] += (float)c[2] * (dw1 * dx[ni].x);
                        acc[mi][ni][3] += (float)c[3] * (dw1 * dx[ni].y);
                    }
                }
            }
        }
    }
}

/* ------------------------------------------------------------ kernel */

/* grid.x: token tiles of BN; grid.y: row tiles of all segments, segment i's
 * from seg[i].blk0. */
template <int TYPE, int WM, int WN, int KS, bool SWIGLU>
static __global__ void __launch_bounds__(32 * WM * WN * KS, WM * WN * KS <= 2 ? 5 : 3) mma_kernel(const __grid_constant__ mma_params p)
{
    using T = mma_tile<TYPE, WM, WN, KS>;
    extern __shared__ __align__(16) uint8_t smem[];
    uint8_t *sA = smem + T::A_OFF, *sB = smem + T::B_OFF;
    int *ri = (int *)(smem + T::RI_OFF);
    float *rf = (float *)(smem + T::RF_OFF), *tf = (float *)(smem + T::TF_OFF);

    griddep();
    const int tid = threadIdx.x, lane = tid & 31, warp = (tid >> 5) % (WM * WN), kg = (tid >> 5) / (WM * WN);
    const int wm = warp % WM, wn = warp / WM, g = lane >> 2, tq = lane & 3;
    int si = 0;
    if (p.n_seg > 1 && (int)blockIdx.y >= p.seg[1].blk0) si = 1;
    if (p.n_seg > 2 && (int)blockIdx.y >= p.seg[2].blk0) si = 2;
    const mma_seg &s = p.seg[si];
    const int r0 = ((int)blockIdx.y - s.blk0) * (SWIGLU ? T::BM / 2 : T::BM);
    const int t0 = (int)blockIdx.x * T::BN;
    const int nbr = is_kquant(TYPE) ? s.n_in / 256 : s.n_in / 32; /* blocks per row */
    const size_t nbt = (size_t)s.n_out * nbr;
    const int n_all = is_kquant(TYPE) ? nbr : (nbr + 7) / 8;
    /* this block's share of the stages (all of them unless K is split) */
    const int st0 = (int)((long)n_all * blockIdx.z / p.split), n_stage = (int)((long)n_all * (blockIdx.z + 1) / p.split);

    /* this lane's ldmatrix rows and fragment coordinates */
    const int a_off = (32 * wm + (lane & 15)) * T::AS + 16 * (lane >> 4);
    const int b_off = (32 * wn + (lane & 7) + 8 * (lane >> 4)) * T::BS + 16 * ((lane >> 3) & 1);
    const int ra = 32 * wm + g, tn = 32 * wn + 2 * tq;

    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.f;

    meta_regs m;
    load_stage<TYPE, WM, WN, KS, SWIGLU>(p, s, r0, t0, nbr, nbt, st0, smem, st0 & 1, tid, m);
    cp_async_wait_all();
    __syncthreads();
    store_meta<TYPE, WM, WN, KS>(smem, st0 & 1, m, tid, ri, rf, tf);
    __syncthreads();
    for (int st = st0; st < n_stage; st++) {
        const int buf = st & 1;
        if (st + 1 < n_stage) load_stage<TYPE, WM, WN, KS, SWIGLU>(p, s, r0, t0, nbr, nbt, st + 1, smem, buf ^ 1, tid, m);
        mma_stage<TYPE, WM, WN, KS>(sA + buf * T::BM * T::AS + a_off, sB + buf * T::BN * T::BS + b_off, ri, rf, tf, ra,
                                tn, tq, min(8, nbr - st * 8), kg, acc);
        if (st + 1 < n_stage) {
            cp_async_wait_all();
            __syncthreads(); /* stage st's buffers and scales are free, stage st+1's bytes have landed */
            store_meta<TYPE, WM, WN, KS>(smem, buf ^ 1, m, tid, ri, rf, tf);
            __syncthreads();
        }
    }

    if constexpr (KS == 2) {
        /* the second warp group's sums join the first's through shared memory
         * (the A buffers, free now), always in the same order */
        float *red = (float *)smem + warp * 32 * 32 + lane;
        __syncthreads();
        if (kg == 1) {
#pragma unroll
            for (int i = 0; i < 32; i++) red[32 * i] = acc[i / 16][(i / 4) % 4][i % 4];
        }
        __syncthreads();
        if (kg == 1) return;
#pragma unroll
        for (int i = 0; i < 32; i++) acc[i / 16][(i / 4) % 4][i % 4] += red[32 * i];
    }

    /* epilogue: lane holds rows ra(+8) of each m16 tile, tokens tn(+1) of each n8 tile */
#pragma unroll
    for (int ni = 0; ni < 4; ni++)
#pragma unroll
        for (int odd = 0; odd < 2; odd++) {
            const int tok = t0 + tn + 8 * ni + odd;
            if (tok >= p.ntok) continue;
            /* split: raw sums for mma_split_kernel, SwiGLU's up at n_out + r */
            float *prow = p.split > 1 ? p.part + ((size_t)blockIdx.z * p.ntok + tok) * 2 * (size_t)s.n_out : NULL;
            float *orow = s.out + (size_t)tok * s.ldo;
            if (SWIGLU) {
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    const int r = r0 + 16 * wm + g + 8 * half;
                    if (r >= s.n_out) continue;
                    const float gt = acc[0][ni][2 * half + odd], up = acc[1][ni][2 * half + odd];
                    if (prow) {
                        prow[r] = gt;
                        prow[s.n_out + r] = up;
                    } else
                        orow[r] = gt / (1.0f + expf(-gt)) * up;
                }
            } else {
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
#pragma unroll
                    for (int half = 0; half < 2; half++) {
                        const int r = r0 + ra + 16 * mi + 8 * half;
                        if (r >= s.n_out) continue;
                        const float v = acc[mi][ni][2 * half + odd];
                        if (prow) prow[r] = v;
                        else if (s.mode == APR_CU_ADD) orow[r] += v;
                        else orow[r] = v;
                    }
            }
        }
}

/* The split product's sums: part[0] + part[1] + ... in that order, then the
 * epilogue mma_kernel would have applied. One thread an output. */
static __global__ void mma_split_kernel(const __grid_constant__ mma_params p)
{
    griddep();
    const mma_seg &s = p.seg[0];
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)p.ntok * s.n_out) return;
    const int tok = (int)(i / s.n_out), r = (int)(i % s.n_out);
    float v = 0.f, u = 0.f;
    for (int z = 0; z < p.split; z++) {
        const float *prow = p.part + ((size_t)z * p.ntok + tok) * 2 * (size_t)s.n_out;
        v += prow[r];
        if (s.mode == APR_CU_SWIGLU) u += prow[s.n_out + r];
    }
    float *o = s.out + (size_t)tok * s.ldo + r;
    if (s.mode == APR_CU_SWIGLU) *o = v / (1.0f + expf(-v)) * u;
    else if (s.mode == APR_CU_ADD) *o += v;
    else *o = v;
}

/* ---------------------------------------------------------- launchers */

template <int TYPE, int WM, int WN, int KS, bool SWIGLU>
static cudaError_t launch_mma(const mma_params &p, int row_blocks, const apr_cu_ctx *c)
{
    using T = mma_tile<TYPE, WM, WN, KS>;
    auto kernel = mma_kernel<TYPE, WM, WN, KS, SWIGLU>; /* its shared-memory limit: apr_cu_prepare */
    const cudaError_t e = launch_smem(c, T::BYTES, kernel,
                                      dim3((unsigned)((p.ntok + T::BN - 1) / T::BN), (unsigned)row_blocks,
                                           (unsigned)p.split),
                                      dim3(T::NTHR), p);
    if (e != cudaSuccess || p.split <= 1) return e;
    const long outs = (long)p.ntok * p.seg[0].n_out;
    return launch(c, mma_split_kernel, dim3((unsigned)((outs + 255) / 256)), dim3(256), p);
}

/* The block shapes: 64 rows x 64 tokens (4 warps); 64 x 32 (2 warps) for
 * batches of up to 32; 64 x 32 with K split between two warp groups (4
 * warps) where the others would leave multiprocessors short of warps. */
enum { SHAPE_AUTO, SHAPE_64x64, SHAPE_64x32, SHAPE_64x32_SPLIT };

/* Each shape's template arguments (warps down, warps across, K split), named
 * once for launch_type and prepare_type. */
#define SHAPE_64x64_ARGS 2, 2, 1
#define SHAPE_64x32_ARGS 2, 1, 1
#define SHAPE_SPLIT_ARGS 2, 1, 2

template <bool SWIGLU>
static cudaError_t launch_type(uint32_t type, const mma_params &p, int shape, int row_blocks, const apr_cu_ctx *c)
{
#define SHAPES(TYPE)                                                                                            \
    return shape == SHAPE_64x64   ? launch_mma<TYPE, SHAPE_64x64_ARGS, SWIGLU>(p, row_blocks, c)                  \
           : shape == SHAPE_64x32 ? launch_mma<TYPE, SHAPE_64x32_ARGS, SWIGLU>(p, row_blocks, c)                  \
                                  : launch_mma<TYPE, SHAPE_SPLIT_ARGS, SWIGLU>(p, row_blocks, c)
    switch (type) {
    case APR_TYPE_Q4_K: SHAPES(APR_TYPE_Q4_K);
    case APR_TYPE_Q6_K: SHAPES(APR_TYPE_Q6_K);
    case APR_TYPE_Q5_0: SHAPES(APR_TYPE_Q5_0);
    case APR_TYPE_Q4_0: SHAPES(APR_TYPE_Q4_0);
    case APR_TYPE_Q8_0: SHAPES(APR_TYPE_Q8_0);
    }
#undef SHAPES
    return cudaErrorInvalidValue;
}

/* The tensor-core kernels ask for more than 48 KB of shared memory, which
 * each instance must be allowed once before its first launch. */
template <int TYPE, int WM, int WN, int KS>
static cudaError_t prepare_shape()
{
    const int bytes = mma_tile<TYPE, WM, WN, KS>::BYTES;
    cudaError_t e = cudaFuncSetAttribute(mma_kernel<TYPE, WM, WN, KS, false>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(mma_kernel<TYPE, WM, WN, KS, true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 bytes);
    return e;
}

template <int TYPE>
static cudaError_t prepare_type()
{
    cudaError_t e = prepare_shape<TYPE, SHAPE_64x64_ARGS>();
    if (e == cudaSuccess) e = prepare_shape<TYPE, SHAPE_64x32_ARGS>();
    if (e == cudaSuccess) e = prepare_shape<TYPE, SHAPE_SPLIT_ARGS>();
    return e;
}

extern "C" int apr_cu_prepare(void)
{
    cudaError_t e = prepare_type<APR_TYPE_Q4_K>();
    if (e == cudaSuccess) e = prepare_type<APR_TYPE_Q6_K>();
    if (e == cudaSuccess) e = prepare_type<APR_TYPE_Q5_0>();
    if (e == cudaSuccess) e = prepare_type<APR_TYPE_Q4_0>();
    if (e == cudaSuccess) e = prepare_type<APR_TYPE_Q8_0>();
    return e == cudaSuccess ? 0 : -1;
}

extern "C" int apr_cu_mma_supports(uint32_t type)
{
    return type == APR_TYPE_Q4_K || type == APR_TYPE_Q6_K || type == APR_TYPE_Q5_0 || type == APR_TYPE_Q4_0 ||
           type == APR_TYPE_Q8_0;
}

extern "C" int apr_cu_mma(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_act *a, int ntok, const apr_cu_ctx *c)
{
    if (n_seg < 1 || n_seg > APR_CU_MAX_SEG || ntok < 1 || a->rms || seg[0].amax)
        return -1; /* rows owing 1/rms and the argmax: apr_cu_gemv's */
    const bool swiglu = seg[0].mode == APR_CU_SWIGLU;
    for (int i = 0; i < n_seg; i++) {
        const apr_cu_gemv_seg *g = &seg[i];
        const uint32_t t = g->w.type;
        if (!apr_cu_mma_supports(t) || !apr_cu_weight_bytes(t, g->w.n_in, g->w.n_out) || g->w.n_in > a->ld ||
            a->ld % 256)
            return -1;
        if ((g->mode == APR_CU_SWIGLU) != swiglu) return -1;
        if (swiglu && (g->w2.type != t || g->w2.n_in != g->w.n_in || g->w2.n_out != g->w.n_out)) return -1;
        if (is_kquant((int)t) ? !a->qk || !a->dsk : !a->q0 || !a->ds0) return -1;
    }
    /* one launch per weight type (q/k/v of one type share a launch) */
    bool done[APR_CU_MAX_SEG] = {false, false, false};
    for (int i = 0; i < n_seg; i++) {
        if (done[i]) continue;
        const uint32_t type = seg[i].w.type;
        const bool kq = is_kquant((int)type);
        mma_params p;
        memset(&p, 0, sizeof p);
        p.ntok = ntok;
        p.ld = a->ld;
        p.q = kq ? a->qk : a->q0;
        p.ds = (const float2 *)(kq ? a->dsk : a->ds0);
        for (int k = i; k < n_seg; k++)
            if (!done[k] && seg[k].w.type == type) {
                const apr_cu_gemv_seg *g = &seg[k];
                p.seg[p.n_seg++] = mma_seg{(const uint8_t *)g->w.data, (const uint8_t *)g->w2.data, g->out,
                                           g->w.n_in, g->w.n_out, g->ldo, g->mode, 0};
                done[k] = true;
            }
        const int rows = swiglu ? 32 : 64; /* output rows of a block */
        int blk = 0;
        for (int k = 0; k < p.n_seg; k++) {
            p.seg[k].blk0 = blk;
            blk += (p.seg[k].n_out + rows - 1) / rows;
        }
        /* 3 blocks of 4 warps fit a multiprocessor (registers). Where the
         * split shape's blocks all fit the GPU at once, take it: it doubles
         * the warps at work. Measured (1.5B layer, H100), every choice below
         * the faster one: at 512 tokens o and down split (384 blocks; down
         * 0.115 -> 0.100 ms), q/k/v not (512 blocks: 0.027 -> 0.033 split);
         * at 64 tokens q/k/v, o, down split (1.2-1.3x), gate/up not (560
         * blocks: 0.036 vs 0.044 ms); at 16-32 tokens gate/up splits too. */
        int shape = ntok <= 32 ? SHAPE_64x32 : SHAPE_64x64;
        const int sms = apr_cu_sms(c), forced_shape = c->tune.mma_shape, forced_split = c->tune.mma_split;
        if ((long)blk * ((ntok + 31) / 32) <= 3L * sms) shape = SHAPE_64x32_SPLIT;
        if (forced_shape >= SHAPE_64x64 && forced_shape <= SHAPE_64x32_SPLIT) shape = forced_shape;
        if (blk > 65535) return -1;
        /* Few blocks even so (batched decode: the 1.5B's down product at 64
         * tokens is 24 row blocks x 2 for 132 multiprocessors): split K across
         * up to APR_CU_MMA_SPLIT_MAX blocks, whose raw sums a second kernel
         * adds in a fixed order. One segment, a workspace, and at least 4
         * stages a block. */
        const long blocks = (long)blk * ((ntok + 31) / 32);
        const int n_stages = kq ? p.seg[0].n_in / 256 : (p.seg[0].n_in / 32 + 7) / 8;
        p.split = 1;
        const bool forced = forced_split >= 1 && forced_split <= APR_CU_MMA_SPLIT_MAX;
        if (c->mma_work && p.n_seg == 1 && ntok <= 64 && !(forced && forced_split == 1)) {
            int sp = forced ? forced_split : (int)(2L * sms / (blocks > 0 ? blocks : 1));
            if (sp > APR_CU_MMA_SPLIT_MAX) sp = APR_CU_MMA_SPLIT_MAX;
            if (!forced && sp > n_stages / 4) sp = n_stages / 4;
            if (sp > n_stages) sp = n_stages;
            if (sp > 1 && p.seg[0].n_out <= c->mma_work_rows) {
                p.split = sp;
                p.part = c->mma_work;
            }
        }
        const cudaError_t e = swiglu ? launch_type<true>(type, p, shape, blk, c) : launch_type<false>(type, p, shape, blk, c);
        if (e != cudaSuccess) return -1;
    }
    return 0;
}

/* Below APR_CU_MMA_ALL_TOK tokens only the wide products take the tensor
 * cores: measured on the H100 at 16 tokens, gate/up (2 x 8960 rows) ran 1.3x
 * faster there, but q/k/v, o and down (1536-2048 rows: 24-32 row tiles, too
 * few blocks for their long K loops) 0.4-0.8x as fast as the GEMV; at 64
 * tokens all of them won except the Q6_K down (0.9x). */
extern "C" int apr_cu_matmul(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_act *a, int ntok,
                             const apr_cu_ctx *c)
{
    bool mma = ntok >= APR_CU_MMA_MIN_TOK && n_seg >= 1 && n_seg <= APR_CU_MAX_SEG && !c->tune.mma_off;
    long rows = 0;
    for (int i = 0; mma && i < n_seg; i++) {
        mma = apr_cu_mma_supports(seg[i].w.type) != 0;
        rows += (long)seg[i].w.n_out * (seg[i].mode == APR_CU_SWIGLU ? 2 : 1);
    }
    if (ntok < APR_CU_MMA_ALL_TOK && rows < APR_CU_MMA_WIDE_ROWS) mma = false;
    return mma ? apr_cu_mma(seg, n_seg, a, ntok, c) : apr_cu_gemv(seg, n_seg, a, ntok, c);
}
