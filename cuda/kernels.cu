/* CUDA kernels of the forward pass: weight repacking, RMSNorm fused with the
 * activation quantizers, quantized GEMV (decode and token-tiled prefill),
 * embedding lookup, bias + RoPE + KV append, and attention.
 *
 * Decode is memory-bound: the GEMV streams each weight byte once with 16-byte
 * loads, one warp per output row, lanes spread over the row's 16-byte chunks,
 * and dp4a against activations that were quantized once per product (see
 * kernels.h for why they are quantized exactly as the CPU does). For one
 * token there are fused variants with fewer launches: a GEMV whose blocks
 * quantize their own input (apr_cu_gemv_fused) and attention that does bias
 * + RoPE + KV append itself (apr_cu_attention_rope).
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "model/model.h"
}
#include "cuda/argmax.cuh"
#include "cuda/kernels.h"
#include "cuda/launch.cuh"

/* ------------------------------------------------------------ helpers */

static __device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
static __device__ __forceinline__ uint16_t f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }

static __device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* warp_max and warp_sum where lanes 4k..4k+3 hold one value each (8 of them):
 * the same steps over lanes of one position in their groups, so the same
 * bits as the full trees over one lane a value (the other steps only add 0
 * or take the max of equal values). */
static __device__ __forceinline__ float keys8_max(float v)
{
#pragma unroll
    for (int o = 16; o > 2; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static __device__ __forceinline__ float keys8_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 2; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ int dp4a(int a, int b, int c) { return __dp4a(a, b, c); }

/* Two halves packed in a word, as floats. */
static __device__ __forceinline__ float2 half2_bits(uint32_t u)
{
    __half2 h;
    memcpy(&h, &u, sizeof h);
    return __half22float2(h);
}

/* Byte i (0..11) of a Q4_K block's packed scales: bytes 4..15 of its 16-byte header. */
static __device__ __forceinline__ int q4k_scale_byte(const uint4 &h, int i)
{
    uint32_t w = i < 4 ? h.y : (i < 8 ? h.z : h.w);
    return (int)((w >> (8 * (i & 3))) & 0xFF);
}

/* ggml's get_scale_min_k4 on the header: 6-bit scale and min of sub-block j. */
static __device__ __forceinline__ void q4k_scale_min(const uint4 &h, int j, int &sc, int &m)
{
    if (j < 4) {
        sc = q4k_scale_byte(h, j) & 63;
        m = q4k_scale_byte(h, j + 4) & 63;
    } else {
        sc = (q4k_scale_byte(h, j + 4) & 0xF) | ((q4k_scale_byte(h, j - 4) >> 6) << 4);
        m = (q4k_scale_byte(h, j + 4) >> 4) | ((q4k_scale_byte(h, j) >> 6) << 4);
    }
}

/* The scales and mins of sub-blocks 2g and 2g+1 (what q4k_scale_min gives
 * for them) times d and dmin, without a branch: S and M are the 16-bit words
 * at scale bytes 2g and 2g + 4, H the one at 2g - 4 (used for g >= 2). */
static __device__ __forceinline__ void q4k_pair_scales(const uint4 &h, int g, float &a0, float &a1, float &b0,
                                                       float &b1)
{
    const int sh = 16 * (g & 1);
    const uint32_t S = ((g & 2) ? h.z : h.y) >> sh, M = ((g & 2) ? h.w : h.z) >> sh, H = h.y >> sh;
    const uint32_t sc = (g & 2) ? (M & 0x0F0Fu) | ((H >> 2) & 0x3030u) : S & 0x3F3Fu;
    const uint32_t mn = (g & 2) ? ((M >> 4) & 0x0F0Fu) | ((S >> 2) & 0x3030u) : M & 0x3F3Fu;
    const float d = h2f((uint16_t)(h.x & 0xFFFF)), dmin = h2f((uint16_t)(h.x >> 16));
    a0 = d * (float)(sc & 0xFF);
    a1 = d * (float)((sc >> 8) & 0xFF);
    b0 = dmin * (float)(mn & 0xFF);
    b1 = dmin * (float)((mn >> 8) & 0xFF);
}

/* Bits 0..3 of x to bit 4 of each byte (Q5_0's fifth bits for 4 weights). */
static __device__ __forceinline__ uint32_t spread4(uint32_t x)
{
    /* one multiply: the four shifted copies of x's nibble (by 4, 11, 18,
     * 25) do not overlap, so bit i lands on 4 + 8 i with no carries */
    return ((x & 0xFu) * 0x02040810u) & 0x10101010u;
}

/* Makes the compiler finish computing these registers here: an empty asm
 * that reads and rewrites them. Placed before griddepcontrol.wait (itself a
 * volatile asm, kept in order with this one), it keeps a weight chunk's
 * decoding ahead of the wait, where a product launched early has time. */
static __device__ __forceinline__ void pin_reg(uint32_t &v) { asm volatile("" : "+r"(v)); }
static __device__ __forceinline__ void pin_reg(float &v) { asm volatile("" : "+f"(v)); }
static __device__ __forceinline__ void pin_reg(double &v) { asm volatile("" : "+d"(v)); }
template <class... T>
static __device__ __forceinline__ void pin_regs(T &...v)
{
    (pin_reg(v), ...);
}

static __device__ __forceinline__ uint32_t u4get(const uint4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
static __device__ __forceinline__ int i4get(const int4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* Eight small ints (each in -128..127) as eight bytes. */
static __device__ __forceinline__ int2 pack8(const int (&q)[8])
{
    int2 r;
    r.x = (q[0] & 0xFF) | (q[1] & 0xFF) << 8 | (q[2] & 0xFF) << 16 | (q[3] & 0xFF) << 24;
    r.y = (q[4] & 0xFF) | (q[5] & 0xFF) << 8 | (q[6] & 0xFF) << 16 | (q[7] & 0xFF) << 24;
    return r;
}

/* --------------------------------------------------------- layouts */

extern "C" int apr_cu_supports(uint32_t type)
{
    switch (type) {
    case APR_TYPE_F32: case APR_TYPE_F16: case APR_TYPE_Q4_0: case APR_TYPE_Q5_0:
    case APR_TYPE_Q8_0: case APR_TYPE_Q4_K: case APR_TYPE_Q6_K:
        return 1;
    }
    return 0;
}

extern "C" size_t apr_cu_weight_bytes(uint32_t type, int n_in, int n_out)
{
    if (!apr_cu_supports(type) || n_in <= 0 || n_out <= 0) return 0;
    return (size_t)apr_row_bytes(type, (uint64_t)n_in) * (size_t)n_out;
}

extern "C" int apr_cu_needs_repack(uint32_t type)
{
    return type == APR_TYPE_Q6_K || type == APR_TYPE_Q5_0 || type == APR_TYPE_Q4_0 || type == APR_TYPE_Q8_0;
}

/* One thread per block of the file's layout; byte copies, since the file's
 * blocks (210, 22, 18, 34 bytes) have no useful alignment. Runs once at load. */
static __global__ void repack_kernel(uint32_t type, const uint8_t *raw, uint8_t *dst, size_t nb)
{
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nb) return;
    switch (type) {
    case APR_TYPE_Q6_K: {
        const uint8_t *s = raw + b * 210;
        uint8_t *ql = dst + b * 128, *qh = dst + nb * 128 + b * 64, *sc = dst + nb * 192 + b * 16;
        uint8_t *d = dst + nb * 208 + b * 2;
        for (int i = 0; i < 128; i++) ql[i] = s[i];
        for (int i = 0; i < 64; i++) qh[i] = s[128 + i];
        for (int i = 0; i < 16; i++) sc[i] = s[192 + i];
        d[0] = s[208];
        d[1] = s[209];
        break;
    }
    case APR_TYPE_Q5_0: {
        const uint8_t *s = raw + b * 22;
        uint8_t *qs = dst + b * 16, *qh = dst + nb * 16 + b * 4, *d = dst + nb * 20 + b * 2;
        d[0] = s[0];
        d[1] = s[1];
        for (int i = 0; i < 4; i++) qh[i] = s[2 + i];
        for (int i = 0; i < 16; i++) qs[i] = s[6 + i];
        break;
    }
    case APR_TYPE_Q4_0: {
        const uint8_t *s = raw + b * 18;
        uint8_t *qs = dst + b * 16, *d = dst + nb * 16 + b * 2;
        d[0] = s[0];
        d[1] = s[1];
        for (int i = 0; i < 16; i++) qs[i] = s[2 + i];
        break;
    }
    case APR_TYPE_Q8_0: {
        const uint8_t *s = raw + b * 34;
        uint8_t *qs = dst + b * 32, *d = dst + nb * 32 + b * 2;
        d[0] = s[0];
        d[1] = s[1];
        for (int i = 0; i < 32; i++) qs[i] = s[2 + i];
        break;
    }
    }
}

extern "C" int apr_cu_repack(uint32_t type, int n_in, int n_out, const void *raw, void *dst, cudaStream_t s)
{
    size_t bytes = apr_cu_weight_bytes(type, n_in, n_out);
    if (!bytes) return -1;
    if (!apr_cu_needs_repack(type)) {
        return cudaMemcpyAsync(dst, raw, bytes, cudaMemcpyDeviceToDevice, s) == cudaSuccess ? 0 : -1;
    }
    size_t nb = bytes / apr_type_get(type)->type_size;
    unsigned grid = (unsigned)((nb + 255) / 256);
    repack_kernel<<<grid, 256, 0, s>>>(type, (const uint8_t *)raw, (uint8_t *)dst, nb);
    return 0;
}

/* Element (row, col) of a weight in the GPU layout: the embedding lookup's
 * reading, and a second reading of each layout for the tests. */
static __device__ float dequant_elem(const uint8_t *w, uint32_t type, int n_in, int n_out, int row, int col)
{
    switch (type) {
    case APR_TYPE_F32: return ((const float *)w)[(size_t)row * n_in + col];
    case APR_TYPE_F16: return h2f(((const uint16_t *)w)[(size_t)row * n_in + col]);
    case APR_TYPE_Q4_K: {
        const uint8_t *blk = w + ((size_t)row * (n_in / 256) + col / 256) * 144;
        const uint4 h = *(const uint4 *)blk;
        int e = col % 256, g = e / 64, hi = (e % 64) >= 32, l = e % 32, sc, m;
        q4k_scale_min(h, 2 * g + hi, sc, m);
        int q = blk[16 + 32 * g + l];
        q = hi ? q >> 4 : q & 0xF;
        float d = h2f((uint16_t)(h.x & 0xFFFF)), dmin = h2f((uint16_t)(h.x >> 16));
        return d * (float)sc * (float)q - dmin * (float)m;
    }
    case APR_TYPE_Q6_K: {
        size_t nbt = (size_t)n_out * (n_in / 256), gb = (size_t)row * (n_in / 256) + col / 256;
        const uint8_t *ql = w + gb * 128, *qh = w + nbt * 128 + gb * 64;
        const int8_t *sc = (const int8_t *)(w + nbt * 192 + gb * 16);
        float d = h2f(((const uint16_t *)(w + nbt * 208))[gb]);
        int e = col % 256, h = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
        int lo = quarter & 1 ? ql[64 * h + l + 32] : ql[64 * h + l];
        lo = quarter & 2 ? lo >> 4 : lo & 0xF;
        int hi2 = (qh[32 * h + l] >> (2 * quarter)) & 3;
        return d * (float)sc[e / 16] * (float)((lo | hi2 << 4) - 32);
    }
    case APR_TYPE_Q5_0: case APR_TYPE_Q4_0: case APR_TYPE_Q8_0: {
        size_t nbt = (size_t)n_out * (n_in / 32), gb = (size_t)row * (n_in / 32) + col / 32;
        int j = col % 32;
        if (type == APR_TYPE_Q8_0) {
            float d = h2f(((const uint16_t *)(w + nbt * 32))[gb]);
            return d * (float)((const int8_t *)w)[gb * 32 + j];
        }
        int byte = w[gb * 16 + j % 16], q = j < 16 ? byte & 0xF : byte >> 4;
        if (type == APR_TYPE_Q4_0) return h2f(((const uint16_t *)(w + nbt * 16))[gb]) * (float)(q - 8);
        uint32_t qh = ((const uint32_t *)(w + nbt * 16))[gb];
        q |= (int)((qh >> j) & 1) << 4;
        return h2f(((const uint16_t *)(w + nbt * 20))[gb]) * (float)(q - 16);
    }
    }
    return 0.0f;
}

/* Block (t, g): elements 256g .. 256g+255 of token t's row, one a thread, so
 * that the row's weight loads (a cold row: DRAM) are all in flight at once.
 * A block walking the row in rounds waited for each round's loads in turn:
 * 5.7 us for the 3B's 2048 at the start of every decode step (H100). */
static __global__ void get_rows_kernel(const uint8_t *w, uint32_t type, int n_in, int n_out, const int32_t *ids,
                                       float *out, int ldo)
{
    griddep();
    const int t = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c < n_in) out[(size_t)t * ldo + c] = dequant_elem(w, type, n_in, n_out, ids[t], c);
}

extern "C" void apr_cu_get_rows(const apr_cu_weight *w, const int32_t *ids, int ntok, float *out, int ldo,
                                const apr_cu_ctx *c)
{
    if (ntok <= 0 || w->n_in <= 0) return;
    launch(c, get_rows_kernel, dim3((unsigned)ntok, (unsigned)((w->n_in + 255) / 256)), dim3(256),
           (const uint8_t *)w->data, w->type, w->n_in, w->n_out, ids, out, ldo);
}

/* ------------------------------------------------------------ stamps */
/* The GPU's clock once the previous kernel is done (APR_CUDA_PROFILE=3). */
static __global__ void stamp_kernel(unsigned long long *slot)
{
    griddep();
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    *slot = t;
}

extern "C" void apr_cu_stamp(unsigned long long *slot, const apr_cu_ctx *c)
{
    launch(c, stamp_kernel, dim3(1), dim3(32), slot);
}

/* 16-byte words, read around the caches (__ldcv: host memory mapped into the
 * device's space changes between launches) */
static __global__ void copy16_kernel(const uint4 *src, uint4 *dst, int n)
{
    griddep();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) dst[i] = __ldcv(src + i);
}

extern "C" void apr_cu_copy16(const void *src, void *dst, size_t bytes, const apr_cu_ctx *c)
{
    const int n = (int)(bytes / 16);
    if (n <= 0) return;
    launch(c, copy16_kernel, dim3((unsigned)((n + 255) / 256 < 64 ? (n + 255) / 256 : 64)), dim3(256),
           (const uint4 *)src, (uint4 *)dst, n);
}

/* The batch block's rows, their first B entries each. With rec, a one-entry
 * step's entry instead (backend.cu, "h_rec"): thread 0 reads the four tagged
 * words over the bus until each carries the tag *ticket + 1 (a graph
 * launched before the host knew its step waits here), then writes them as
 * the rows' entry 0. */
static __global__ void batch_in_kernel(const int32_t *src, int32_t *dst, int rows, int B, int stride, const uint4 *rec,
                                       const unsigned *ticket)
{
    griddep();
    if (rec) {
        if (threadIdx.x == 0) {
            const unsigned want = ((*ticket + 1) & 0xffu) << 24, top = 0xffu << 24;
            uint4 v;
            do
                asm volatile("ld.relaxed.sys.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                             : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                             : "l"(rec)
                             : "memory");
            while ((v.x & top) != want || (v.y & top) != want || (v.z & top) != want || (v.w & top) != want);
            dst[0] = (int)(v.x & ~top);
            dst[stride] = (int)(v.y & ~top);
            dst[2 * stride] = (int)(v.z & ~top) - 1;
            dst[3 * stride] = 0;
            dst[4 * stride] = (int)(v.w & ~top);
        }
        return;
    }
    for (int i = threadIdx.x; i < rows * B; i += blockDim.x) {
        const int r = i / B, e = i - r * B;
        dst[r * stride + e] = __ldcv(src + r * stride + e);
    }
}

extern "C" void apr_cu_batch_in(const int32_t *src, int32_t *dst, int rows, int B, int stride, const uint4 *rec,
                                const unsigned *ticket, const apr_cu_ctx *c)
{
    launch(c, batch_in_kernel, dim3(1), dim3(rec ? 32 : 256), src, dst, rows, B, stride, rec, ticket);
}

/* apr_cu_copy16 in one block, then the step's end for the host: *ticket
 * counts it and *done (host memory) gets the count once the copied bytes
 * are visible there. */
static __global__ void copy16_done_kernel(const uint4 *src, uint4 *dst, int n, unsigned *ticket, unsigned *done)
{
    griddep();
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = __ldcv(src + i);
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0) release_done(ticket, done);
}

extern "C" int apr_cu_copy16_done(const void *src, void *dst, size_t bytes, unsigned *ticket, unsigned *done,
                                  const apr_cu_ctx *c)
{
    const int n = (int)(bytes / 16);
    if (n <= 0 || n > 1024) return -1;
    return launch(c, copy16_done_kernel, dim3(1), dim3(256), (const uint4 *)src, (uint4 *)dst, n, ticket, done) ==
                   cudaSuccess
               ? 0
               : -1;
}

/* ------------------------------------------------ norm + quantize */
/* Block (t, g) of 256 threads owns elements 256g .. 256g+255 of token row t,
 * one per thread, so a decode row of 8960 is quantized by 35 blocks at once
 * rather than by one block in 35 rounds. Each block of a normalized row
 * computes the whole row's sum of squares itself (a few KB from L2), in
 * double as the CPU's rmsnorm does, so the scales agree to the last bit
 * nearly always. Warp w of the block is the 32-group of the Q8_0-style
 * quantization and of the Q8_K-style group sums. */

#define NQ_THREADS 256

/* 1 / RMS of the row src[0..n) (with eps), for a block of THREADS threads
 * that all call it: the sum of squares in double, as the CPU's rmsnorm does,
 * in one fixed order (thread i takes i, i + THREADS, ...; then a warp tree,
 * then the warps in order). norm_quant_kernel and the fused GEMV's prologue
 * both call this with 256 threads, which is what makes their rows the same
 * bits. inv_n is 1.0 / n, worked out by the caller before its wait: tot *
 * inv_n is within a double's ulp of tot / n, so both round to the same float
 * unless tot / n lies within that of a float rounding boundary. */
template <int THREADS>
static __device__ __forceinline__ float rms_scale(const float *src, int n, float eps, double inv_n)
{
    __shared__ double red[THREADS / 32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* a thread's first 8 elements loaded at once, so that rows of up to
     * 8 * THREADS (the 3B's 2048) take one L2 round trip rather than one
     * per unrolled group; then added in the loop's order, so the same bits */
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = tid + k * THREADS < n ? src[tid + k * THREADS] : 0.f;
    double ss = 0.0;
#pragma unroll
    for (int k = 0; k < 8; k++)
        if (tid + k * THREADS < n) ss += (double)v[k] * v[k];
#pragma unroll 4
    for (int i = tid + 8 * THREADS; i < n; i += THREADS) ss += (double)src[i] * src[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    double tot = 0.0;
#pragma unroll
    for (int i = 0; i < THREADS / 32; i++) tot += red[i];
    return 1.0f / sqrtf((float)(tot * inv_n) + eps);
}

/* Where Q8_0-style rows go: norm_quant_kernel's, and attention's output for
 * the o product (q NULL: nowhere). */
struct q8_dev {
    int8_t *q;
    float2 *ds;
    int ld;
};

/* Thread i of the block holds element e0 + i of row t's output, v (n of
 * them, n % 32 == 0, so a warp is one whole 32-group or past the end): the
 * group's quants, d = amax / 127 rounded to f16 and the sum of the quants.
 * norm_quant_kernel and attention both write their rows with it, so
 * attention's quantized output is the bytes the quantize kernel would have
 * written for it. Every thread of the block calls it. */
static __device__ __forceinline__ void q8_store(const q8_dev &q8, int t, int e0, float v, int n)
{
    const int i = threadIdx.x;
    if (!q8.q || (i & ~31) >= n) return; /* warp-uniform */
    const unsigned full = 0xffffffffu;
    const float amax = __uint_as_float(__reduce_max_sync(full, __float_as_uint(fabsf(v))));
    const float d = amax / 127.f, id = amax != 0.f ? 127.f / amax : 0.f;
    const int q = __float2int_rn(v * id);
    const size_t e = (size_t)t * q8.ld + e0 + i;
    q8.q[e] = (int8_t)q;
    const int sum = __reduce_add_sync(full, q);
    if ((i & 31) == 0) q8.ds[e / 32] = make_float2(__half2float(__float2half_rn(d)), (float)sum);
}

static __global__ void __launch_bounds__(NQ_THREADS) norm_quant_kernel(const float *x, int ldx, const int32_t *rows,
                                                                       const float *w, float eps, int n,
                                                                       apr_cu_act a, int early)
{
    const int t = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int e = blockIdx.y * 256 + tid;
    const bool valid = e < n;
    if (early) griddep_trigger();
    const float we = w && valid ? w[e] : 0.f; /* a constant: loaded while the previous kernel finishes */
    double inv_n = 1.0 / n; /* rms_scale's mean, its division done before the wait */
    pin_reg(inv_n);
    griddep();
    const float *src = x + (size_t)(rows ? rows[t] : t) * ldx;
    float *dst = a.f + (size_t)t * a.ld;
    __shared__ float wa[NQ_THREADS / 32], wm[NQ_THREADS / 32];
    __shared__ int wi[NQ_THREADS / 32];
    float v = valid ? src[e] : 0.f;
    if (w) {
        const float scale = rms_scale<NQ_THREADS>(src, n, eps, inv_n); /* every thread: it synchronizes the block */
        v = valid ? v * scale * we : 0.f; /* v: src[e] (the barrier in rms_scale made the compiler load it again) */
    }
    if (valid && dst != src) dst[e] = v;

    /* Both styles in one-instruction warp reductions (redux.sync): a
     * non-negative float's bits order as its value does, and the sums of the
     * quants are integers. A style whose pointer is NULL is not wanted by the
     * product that reads this row (its weights' types) and is skipped. */
    const unsigned full = 0xffffffffu;
    const size_t qoff = (size_t)t * a.ld, doff = (size_t)t * (a.ld / 32);
    /* Q8_0-style: n % 32 == 0, so a warp is all valid or all not */
    if (n % 32 == 0) q8_store(q8_dev{a.q0, (float2 *)a.ds0, a.ld}, t, blockIdx.y * 256, v, n - blockIdx.y * 256);
    /* Q8_K-style: the scale comes from the element of largest magnitude with
     * its sign, the first such element winning ties (quantize_row_q8_K_ref) */
    if (a.qk && n % 256 == 0) {
        float amax = __uint_as_float(__reduce_max_sync(full, __float_as_uint(fabsf(v))));
        const int first = __ffs(__ballot_sync(full, fabsf(v) == amax)) - 1; /* -1 only for a NaN row */
        float mx = __shfl_sync(full, v, first & 31);
        int idx = warp * 32 + (first & 31);
        if (lane == 0) {
            wa[warp] = amax;
            wm[warp] = mx;
            wi[warp] = idx;
        }
        __syncthreads();
        amax = wa[0];
        mx = wm[0];
        idx = wi[0];
#pragma unroll
        for (int i = 1; i < NQ_THREADS / 32; i++)
            if (wa[i] > amax || (wa[i] == amax && wi[i] < idx)) {
                amax = wa[i];
                mx = wm[i];
                idx = wi[i];
            }
        int q = 0;
        float d = 0.f;
        if (amax != 0.f) {
            const float iscale = -127.f / mx;
            d = 1.f / iscale;
            q = min(127, __float2int_rn(iscale * v));
        }
        a.qk[qoff + e] = (int8_t)q;
        const int sum = __reduce_add_sync(full, q);
        if (lane == 0) {
            a.dsk[2 * (doff + e / 32)] = d;
            a.dsk[2 * (doff + e / 32) + 1] = (float)sum;
        }
    }
}

extern "C" void apr_cu_norm_quant(const float *x, int ldx, const int32_t *rows, const float *w, float eps, int n,
                                  int ntok, const apr_cu_act *out, const apr_cu_ctx *c)
{
    if (ntok <= 0 || n <= 0) return;
    const dim3 grid((unsigned)ntok, (unsigned)((n + 255) / 256));
    launch(c, norm_quant_kernel, grid, dim3(NQ_THREADS), x, ldx, rows, w, eps, n, *out, c->early != 0);
}

/* ------------------------------------------------------------- GEMV */
/* A row is cut into "chunks", the unit one lane handles per step: 16 bytes of
 * quants of one block (Q4_K, Q6_K: 32 weights; 8 chunks per 256-block), or a
 * whole 32-block (Q4_0, Q5_0, Q8_0), or 4 f32 / 8 f16 weights. Lanes stride
 * over a row's chunks; each lane keeps one partial sum per token of its tile;
 * a warp reduction finishes the row. */

struct act_dev {
    const float *f;
    const int8_t *qk;
    const float2 *dsk;
    const int8_t *q0;
    const float2 *ds0;
    int ld;
    const float *rms; /* apr_cu_act.rms: sums of squares a 32-group, per token ld / 32 apart */
    float rms_eps;
    int rms_n;
};

/* The norm's 1/rms for a product whose rows owe it (act_dev.rms), in two
 * steps so that the sums' L2 round trip overlaps the activations' loads:
 * rms_load right after the wait only loads (lane l: groups l and l + 32 of
 * token t: an add there would stall the warp before its activation loads,
 * once for every token of a tile), rms_finish after the dot products adds
 * the lane's groups in order and the warp's tree finishes: every lane gets
 * the same value, so the bits depend on the token only. */
struct rms_pre {
    float a, b;
    float *stage; /* tiles: the warp's token's sums in shared memory (rms_stage), else NULL */
};

static __device__ __forceinline__ rms_pre rms_load(const act_dev &a, int t, int lane)
{
    const float *pp = a.rms + (size_t)t * (a.ld / 32);
    const int np = a.rms_n / 32;
    return rms_pre{lane < np ? pp[lane] : 0.f, lane + 32 < np ? pp[lane + 32] : 0.f};
}

/* Tiles of several tokens: warp t's token's sums copied into shared memory
 * by cp.async right after the wait, so that no register is held through the
 * dot products (two more spilled the 4-token SwiGLU instance 48-68 bytes)
 * and no L2 round trip is left for the block's end. rms_finish_staged adds
 * them in rms_finish's order (the same bits). */
#define RMS_STAGE_MAX 64 /* groups: rows of up to 2048 (apr_cu_gemv_onorm's o product has <= 64 chunks) */
static __device__ __forceinline__ void rms_stage(const act_dev &a, int t, int lane, float *dst)
{
    const float *pp = a.rms + (size_t)t * (a.ld / 32);
    for (int i = lane; i < a.rms_n / 32; i += 32) {
        const unsigned sa = (unsigned)__cvta_generic_to_shared(dst + i);
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(sa), "l"(pp + i) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

static __device__ __forceinline__ float rms_finish_staged(const act_dev &a, int lane, const float *rs)
{
    asm volatile("cp.async.wait_all;" ::: "memory"); /* this lane's own copies */
    const int np = a.rms_n / 32;
    float s = (lane < np ? rs[lane] : 0.f) + (lane + 32 < np ? rs[lane + 32] : 0.f);
    for (int i = lane + 64; i < np; i += 32) s += rs[i];
    s = warp_sum(s);
    return 1.0f / sqrtf(s / (float)a.rms_n + a.rms_eps);
}

static __device__ __forceinline__ float rms_finish(const act_dev &a, int t, int lane, const rms_pre &r)
{
    const float *pp = a.rms + (size_t)t * (a.ld / 32);
    float s = r.a + r.b; /* the lane's groups in order (sums of squares: + 0 is exact) */
    for (int i = lane + 64; i < a.rms_n / 32; i += 32) s += pp[i];
    s = warp_sum(s);
    return 1.0f / sqrtf(s / (float)a.rms_n + a.rms_eps);
}

struct seg_dev {
    const uint8_t *w, *w2;
    uint32_t type;
    int n_in, n_out, row0; /* row0: the segment's first warp group */
    float *out;
    int ldo, mode;
};

/* The fused decode GEMV's input (apr_cu_gemv_fused): the f32 row it
 * normalizes and quantizes itself, and where in shared memory each style goes
 * (byte offsets; -1: that style is not needed by any segment). */
struct pro_dev {
    apr_cu_quant_src src;
    int off_qk, off_dsk, off_q0, off_ds0;
    int prefetch; /* groups of each warp whose weights go towards L2 before the wait */
};

/* The q/k/v product with the RMSNorm folded in (apr_cu_gemv_norm): the
 * residual rows x (ld apart), the norm's weight g, n elements. */
struct nrm_dev {
    const float *x, *g;
    float eps;
    int n, ld;
    int pitch; /* floats a token in shared memory */
};

struct gemv_params {
    seg_dev seg[APR_CU_MAX_SEG];
    int n_seg, rows, ntok; /* rows: warp groups in all */
    act_dev a;
    pro_dev pro;
    nrm_dev nrm;
    /* apr_cu_ctx.early, for the kernels that honour it (apr_cu_gemv_norm's
     * and apr_cu_gemv_onorm's): the next kernel launches at this one's start */
    int early;
    unsigned long long *amax; /* apr_cu_gemv_seg.amax (gemv1_pair48_kernel's AMAX) */
};

#define GEMV_WARPS 8

/* The norm-folded products' activations y = x * g (apr_cu_gemv_norm), staged
 * by the block in shared memory (nrm_stage), 4 floats of padding after every
 * 16 so that the lanes' chunks (16-32 floats apart) spread over the banks (an
 * XOR swizzle that spreads them further measured slower: H100, 0.5B
 * 1907-1913 -> 1843-1847 tok/s; reading x and g from global memory instead,
 * L1 hits but 16 float4 loads a chunk 64-128 bytes apart across the lanes,
 * 1660-1672). The row's 1 / rms multiplies the finished sum (gemv1_block). */
static __device__ __forceinline__ int nrm_pad(int e) { return e + (e >> 4) * 4; }

extern __shared__ __align__(16) float nrm_smem[];

static __device__ __forceinline__ float4 nrm_y4(const nrm_dev &m, int slot, int e)
{
    return *(const float4 *)(nrm_smem + slot * m.pitch + nrm_pad(e));
}

/* The two 16-element halves of a K-quant chunk: from e and from e + gap. */
static __device__ __forceinline__ void nrm_halves(const nrm_dev &m, int slot, int e, int gap, float4 (&lo)[4],
                                                  float4 (&hi)[4])
{
#pragma unroll
    for (int i = 0; i < 4; i++) {
        lo[i] = nrm_y4(m, slot, e + 4 * i);
        hi[i] = nrm_y4(m, slot, e + gap + 4 * i);
    }
}

/* This thread's float4 of the norm's weight: a constant, loaded before the
 * wait (after it, its DRAM round trip came on top of x's). */
static __device__ __forceinline__ float4 nrm_g(const nrm_dev &m)
{
    const int e = 4 * (int)threadIdx.x;
    return e < m.n ? *(const float4 *)(m.g + e) : make_float4(0.f, 0.f, 0.f, 0.f);
}

/* Every thread of the block, after the wait: the tile's y into shared memory
 * (rows of up to NRM_MAX_N, a float4 a thread; g from nrm_g). */
#define NRM_MAX_N (4 * GEMV_WARPS * 32)
template <int NT>
static __device__ __forceinline__ void nrm_stage(const nrm_dev &m, const int (&tt)[NT], const float4 &g)
{
    const int e = 4 * (int)threadIdx.x;
    if (e < m.n) {
        float4 x[NT];
#pragma unroll
        for (int t = 0; t < NT; t++) x[t] = *(const float4 *)(m.x + (size_t)tt[t] * m.ld + e);
#pragma unroll
        for (int t = 0; t < NT; t++)
            *(float4 *)(nrm_smem + t * m.pitch + nrm_pad(e)) =
                make_float4(x[t].x * g.x, x[t].y * g.y, x[t].z * g.z, x[t].w * g.w);
    }
    __syncthreads();
}

/* 1 / rms of token tok's row by one warp: lanes take float4s 128 floats apart
 * in order, then the butterfly sum (every row's warp gets the same bits). */
static __device__ __forceinline__ float nrm_scale(const nrm_dev &m, int tok, int lane)
{
    const float *xr = m.x + (size_t)tok * m.ld;
    float ss = 0.f;
    for (int k0 = 0; k0 < m.n; k0 += 512) {
        float4 xv[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int e = k0 + 128 * j + 4 * lane;
            xv[j] = e < m.n ? *(const float4 *)(xr + e) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            ss = fmaf(xv[j].x, xv[j].x, ss);
            ss = fmaf(xv[j].y, xv[j].y, ss);
            ss = fmaf(xv[j].z, xv[j].z, ss);
            ss = fmaf(xv[j].w, xv[j].w, ss);
        }
    }
    return 1.0f / sqrtf(warp_sum(ss) / (float)m.n + m.eps);
}

/* Byte b of v as a float minus off, without a conversion instruction: the
 * byte as the low mantissa bits of 2^23 (one byte permute), then a subtract
 * (exact: everything here is an integer under 2^24). */
static __device__ __forceinline__ float bytef(uint32_t v, int b, float off)
{
    return __int_as_float((int)__byte_perm(v, 0x4B000000u, 0x7650u | (unsigned)b)) - (8388608.f + off);
}

static __device__ __forceinline__ float f4get(const float4 &v, int i)
{
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

/* Each type is a pair of steps: load() fetches a chunk's weight bytes (the
 * DRAM traffic), dot() multiplies them with the tile's activations (L1/L2
 * hits). The row loop loads U chunks before it multiplies any, so every lane
 * keeps U 16-byte weight loads in flight instead of one. Token slots past the
 * batch (tt clamped to the last token) compute throwaway sums rather than
 * branch, so the activation loads of a tile can be issued together too. */

struct K_Q4_K {
    struct W { uint4 h, q; };
    static __device__ __forceinline__ int chunks(int n_in) { return n_in / 256 * 8; }
    static __device__ __forceinline__ size_t blocks(int n_in, int n_out) { return (size_t)n_out * (n_in / 256); }
    static __device__ __forceinline__ W load(const uint8_t *w, size_t nbt, int r, int n_in, int c)
    {
        (void)nbt;
        const uint8_t *blk = w + ((size_t)r * (n_in / 256) + (c >> 3)) * 144;
        return W{*(const uint4 *)blk, *(const uint4 *)(blk + 16 + 16 * (c & 7))};
    }
    /* decoded: the scales as floats; the quants stay packed (their masks
     * are three operations a word) */
    struct D {
        uint4 q;
        float a0, a1, b0, b1;
        __device__ __forceinline__ void pin() { pin_regs(a0, a1, b0, b1); }
    };
    static __device__ __forceinline__ D decode(const W &x, int c)
    {
        D d{x.q, 0.f, 0.f, 0.f, 0.f};
        q4k_pair_scales(x.h, (c & 7) >> 1, d.a0, d.a1, d.b0, d.b1);
        return d;
    }
    /* dot works out the chunk's scales where it always did, before the chunk's
     * offsets: written as dotd(decode()) the order changed and the 7B's step
     * measured ~1% slower (a few index instructions apart in PTX) */
    template <int NT>
    static __device__ __forceinline__ void dot(const W &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        const int j = c & 7, g = j >> 1, half = j & 1;
        float a0, a1, b0, b1; /* the chunk's scales once, for every token of the tile */
        q4k_pair_scales(x.h, g, a0, a1, b0, b1);
        const int e = (c >> 3) * 256 + 64 * g + 16 * half;
        sums<NT>(x.q, a0, a1, b0, b1, half, e, a, tt, acc);
    }
    template <int NT>
    static __device__ __forceinline__ void dotd(const D &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        const int j = c & 7, g = j >> 1, half = j & 1;
        const int e = (c >> 3) * 256 + 64 * g + 16 * half;
        sums<NT>(x.q, x.a0, x.a1, x.b0, x.b1, half, e, a, tt, acc);
    }
    template <int NT>
    static __device__ __forceinline__ void sums(const uint4 &wq, float a0, float a1, float b0, float b1, int half, int e,
                                                const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int8_t *q = a.qk + (size_t)tt[t] * a.ld + e;
            const int4 lo = *(const int4 *)q, hi = *(const int4 *)(q + 32);
            const float2 *ds = a.dsk + (size_t)tt[t] * (a.ld >> 5) + (e >> 5);
            const float2 ds0 = ds[0], ds1 = ds[1];
            int s0 = 0, s1 = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint32_t v = u4get(wq, i);
                s0 = dp4a((int)(v & 0x0F0F0F0Fu), i4get(lo, i), s0);
                s1 = dp4a((int)((v >> 4) & 0x0F0F0F0Fu), i4get(hi, i), s1);
            }
            /* each 32-group with its own scale: Q8_K-style rows repeat one
             * per 256, Q8_0-style rows (decode, kernels.h) have one per 32.
             * The mins term needs whole 32-group sums (.y): the half-0 chunk
             * adds it. */
            const float v0 = half ? a0 * (float)s0 : fmaf(a0, (float)s0, -b0 * ds0.y);
            const float v1 = half ? a1 * (float)s1 : fmaf(a1, (float)s1, -b1 * ds1.y);
            acc[t] += fmaf(ds0.x, v0, ds1.x * v1);
        }
    }
    /* f32 activations (apr_cu_gemv_norm): the same chunk, nibbles as floats,
     * each half-group's mins term from its own sum of activations */
    template <int NT>
    static __device__ __forceinline__ void dotf(const W &x, int c, const nrm_dev &m, const int (&tt)[NT], float (&acc)[NT])
    {
        const int j = c & 7, g = j >> 1, half = j & 1;
        float a0, a1, b0, b1;
        q4k_pair_scales(x.h, g, a0, a1, b0, b1);
        const int e = (c >> 3) * 256 + 64 * g + 16 * half;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float4 yl[4], yh[4];
            nrm_halves(m, t, e, 32, yl, yh);
            float s0 = 0.f, s1 = 0.f, y0 = 0.f, y1 = 0.f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint32_t v = u4get(x.q, i), vl = v & 0x0F0F0F0Fu, vh = (v >> 4) & 0x0F0F0F0Fu;
                const float4 lo = yl[i], hi = yh[i];
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    s0 = fmaf(bytef(vl, b, 0.f), f4get(lo, b), s0);
                    s1 = fmaf(bytef(vh, b, 0.f), f4get(hi, b), s1);
                    y0 += f4get(lo, b);
                    y1 += f4get(hi, b);
                }
            }
            acc[t] += fmaf(a0, s0, -b0 * y0) + fmaf(a1, s1, -b1 * y1);
        }
    }
};

/* Q4_K for the SwiGLU products: a unit is a pair of 32-groups that share
 * their bytes (qs[32g..32g+31]: low nibbles group 2g, high nibbles group
 * 2g+1), so one lane decodes the pair's scales and mins once for 64 weights.
 * --gemv-bench, H100, against K_Q4_K: gate/up 1.5B 9.6 -> 7.8 us, 7B 33.2 ->
 * 27.6, 32B 61.3 -> 56.4; the other Q4_K products were 0-18% slower with
 * pairs (the o product's 24 pairs for 64 lanes), so they keep K_Q4_K. */
struct K_Q4_K2 {
    struct W { uint4 h, q0, q1; };
    static __device__ __forceinline__ int chunks(int n_in) { return n_in / 256 * 4; }
    static __device__ __forceinline__ size_t blocks(int n_in, int n_out) { return (size_t)n_out * (n_in / 256); }
    static __device__ __forceinline__ W load(const uint8_t *w, size_t nbt, int r, int n_in, int c)
    {
        (void)nbt;
        const uint8_t *blk = w + ((size_t)r * (n_in / 256) + (c >> 2)) * 144;
        return W{*(const uint4 *)blk, *(const uint4 *)(blk + 16 + 32 * (c & 3)), *(const uint4 *)(blk + 32 + 32 * (c & 3))};
    }
    /* decoded: the scales as floats (the quants stay packed: their masks are
     * two operations a word, and unpacked they would hold 8 more registers) */
    struct D {
        uint4 q0, q1;
        float a0, a1, b0, b1;
        __device__ __forceinline__ void pin() { pin_regs(a0, a1, b0, b1); }
    };
    static __device__ __forceinline__ D decode(const W &x, int c)
    {
        D d{x.q0, x.q1, 0.f, 0.f, 0.f, 0.f};
        q4k_pair_scales(x.h, c & 3, d.a0, d.a1, d.b0, d.b1);
        return d;
    }
    template <int NT>
    static __device__ __forceinline__ void dot(const W &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        dotd<NT>(decode(x, c), c, a, tt, acc); /* the scales once for the tile's tokens */
    }
    template <int NT>
    static __device__ __forceinline__ void dotd(const D &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        const int g = c & 3;
        const float a0 = x.a0, a1 = x.a1, b0 = x.b0, b1 = x.b1;
        const int e = (c >> 2) * 256 + 64 * g;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int8_t *q = a.qk + (size_t)tt[t] * a.ld + e;
            const int4 x0 = *(const int4 *)q, x1 = *(const int4 *)(q + 16), x2 = *(const int4 *)(q + 32),
                       x3 = *(const int4 *)(q + 48);
            const float2 *ds = a.dsk + (size_t)tt[t] * (a.ld >> 5) + (e >> 5);
            const float2 ds0 = ds[0], ds1 = ds[1];
            int s0 = 0, s1 = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint32_t v = u4get(x.q0, i), w = u4get(x.q1, i);
                s0 = dp4a((int)(v & 0x0F0F0F0Fu), i4get(x0, i), s0);
                s0 = dp4a((int)(w & 0x0F0F0F0Fu), i4get(x1, i), s0);
                s1 = dp4a((int)((v >> 4) & 0x0F0F0F0Fu), i4get(x2, i), s1);
                s1 = dp4a((int)((w >> 4) & 0x0F0F0F0Fu), i4get(x3, i), s1);
            }
            /* each 32-group with its own scale: Q8_K-style rows repeat one
             * per 256, Q8_0-style rows (decode, kernels.h) have one per 32;
             * .y is the group's sum of quants, for the mins */
            acc[t] += fmaf(ds0.x, fmaf(a0, (float)s0, -b0 * ds0.y), ds1.x * fmaf(a1, (float)s1, -b1 * ds1.y));
        }
    }
};

struct K_Q6_K {
    struct W { uint4 ql, qh; int sclo, schi; float d; };
    static __device__ __forceinline__ int chunks(int n_in) { return n_in / 256 * 8; }
    static __device__ __forceinline__ size_t blocks(int n_in, int n_out) { return (size_t)n_out * (n_in / 256); }
    static __device__ __forceinline__ W load(const uint8_t *w, size_t nbt, int r, int n_in, int c)
    {
        const int j = c & 7, h = j >> 2, k = j & 3, qa = k >> 1, l0 = 16 * (k & 1);
        const size_t gb = (size_t)r * (n_in / 256) + (c >> 3);
        const int8_t *scp = (const int8_t *)(w + nbt * 192 + gb * 16);
        const int si = 8 * h + 2 * qa + (k & 1);
        return W{*(const uint4 *)(w + gb * 128 + 64 * h + 16 * k), *(const uint4 *)(w + nbt * 128 + gb * 64 + 32 * h + l0),
                 scp[si], scp[si + 4], h2f(((const uint16_t *)(w + nbt * 208))[gb])};
    }
    /* the chunk's 6-bit quants as stored (0..63), low and high 16 */
    static __device__ __forceinline__ void quants(const W &x, int qa, uint32_t (&vlo)[4], uint32_t (&vhi)[4])
    {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint32_t l = u4get(x.ql, i), hb = u4get(x.qh, i);
            vlo[i] = (l & 0x0F0F0F0Fu) | ((hb << (4 - 2 * qa)) & 0x30303030u);
            vhi[i] = ((l >> 4) & 0x0F0F0F0Fu) | ((hb >> (2 * qa)) & 0x30303030u);
        }
    }
    /* decoded: the 6-bit quants as stored (0..63) and the two scales */
    struct D {
        uint32_t vlo[4], vhi[4];
        float alo, ahi;
        __device__ __forceinline__ void pin()
        {
#pragma unroll
            for (int i = 0; i < 4; i++) pin_regs(vlo[i], vhi[i]);
            pin_regs(alo, ahi);
        }
    };
    static __device__ __forceinline__ D decode(const W &x, int c)
    {
        D d;
        quants(x, (c & 3) >> 1, d.vlo, d.vhi);
        d.alo = x.d * (float)x.sclo; /* once for the tile's tokens */
        d.ahi = x.d * (float)x.schi;
        return d;
    }
    /* Few tokens: the quants as stored (0..63) and the -32 as a dot product
     * of -32s with the activations, 9 integer operations a word fewer than
     * subtracting in every byte; the integer sums are the same, so is every
     * bit. Tiles of 4 and 8 tokens would pay the extra dot products per
     * token: they subtract. */
    template <int NT>
    static __device__ __forceinline__ void dot(const W &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        uint32_t vlo[4], vhi[4];
        quants(x, (c & 3) >> 1, vlo, vhi);
        if (NT > 2) offset(vlo, vhi);
        sums<NT>(vlo, vhi, x.d * (float)x.sclo, x.d * (float)x.schi, c, a, tt, acc); /* scales once for the tile */
    }
    template <int NT>
    static __device__ __forceinline__ void dotd(const D &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        uint32_t vlo[4], vhi[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            vlo[i] = x.vlo[i];
            vhi[i] = x.vhi[i];
        }
        if (NT > 2) offset(vlo, vhi);
        sums<NT>(vlo, vhi, x.alo, x.ahi, c, a, tt, acc);
    }
    static __device__ __forceinline__ void offset(uint32_t (&vlo)[4], uint32_t (&vhi)[4])
    {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            vlo[i] = __vsub4(vlo[i], 0x20202020u);
            vhi[i] = __vsub4(vhi[i], 0x20202020u);
        }
    }
    template <int NT>
    static __device__ __forceinline__ void sums(const uint32_t (&vlo)[4], const uint32_t (&vhi)[4], float alo, float ahi,
                                                int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        constexpr bool RAW = NT <= 2;
        const int j = c & 7, h = j >> 2, k = j & 3, qa = k >> 1, l0 = 16 * (k & 1);
        const int e = (c >> 3) * 256 + 128 * h + 32 * qa + l0;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int8_t *q = a.qk + (size_t)tt[t] * a.ld + e;
            const int4 lo = *(const int4 *)q, hi = *(const int4 *)(q + 64);
            const float2 *ds = a.dsk + (size_t)tt[t] * (a.ld >> 5) + (e >> 5);
            const float dlo = ds[0].x, dhi = ds[2].x; /* the 32-groups of lo and hi (64 apart) */
            int s0 = 0, s1 = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                s0 = dp4a((int)vlo[i], i4get(lo, i), s0);
                s1 = dp4a((int)vhi[i], i4get(hi, i), s1);
                if (RAW) {
                    s0 = dp4a((int)0xE0E0E0E0u, i4get(lo, i), s0); /* -32 in each byte */
                    s1 = dp4a((int)0xE0E0E0E0u, i4get(hi, i), s1);
                }
            }
            acc[t] += fmaf(dlo, alo * (float)s0, dhi * (ahi * (float)s1));
        }
    }
    template <int NT>
    static __device__ __forceinline__ void dotf(const W &x, int c, const nrm_dev &m, const int (&tt)[NT], float (&acc)[NT])
    {
        const int j = c & 7, h = j >> 2, k = j & 3, qa = k >> 1, l0 = 16 * (k & 1);
        uint32_t vlo[4], vhi[4];
        quants(x, qa, vlo, vhi);
        const int e = (c >> 3) * 256 + 128 * h + 32 * qa + l0;
        const float alo = x.d * (float)x.sclo, ahi = x.d * (float)x.schi;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float4 yl[4], yh[4];
            nrm_halves(m, t, e, 64, yl, yh);
            float s0 = 0.f, s1 = 0.f;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const float4 lo = yl[i], hi = yh[i];
#pragma unroll
                for (int b = 0; b < 4; b++) {
                    s0 = fmaf(bytef(vlo[i], b, 32.f), f4get(lo, b), s0);
                    s1 = fmaf(bytef(vhi[i], b, 32.f), f4get(hi, b), s1);
                }
            }
            acc[t] += fmaf(alo, s0, ahi * s1);
        }
    }
};

/* Q4_0, Q5_0, Q8_0: one chunk is one 32-block. */
template <int TYPE>
struct K_Q_0 {
    struct W { uint4 q0, q1; uint32_t qh; float d; };
    static __device__ __forceinline__ int chunks(int n_in) { return n_in / 32; }
    static __device__ __forceinline__ size_t blocks(int n_in, int n_out) { return (size_t)n_out * (n_in / 32); }
    static __device__ __forceinline__ W load(const uint8_t *w, size_t nbt, int r, int n_in, int c)
    {
        const size_t gb = (size_t)r * (n_in / 32) + c;
        W x;
        if (TYPE == APR_TYPE_Q8_0) {
            x.q0 = *(const uint4 *)(w + gb * 32);
            x.q1 = *(const uint4 *)(w + gb * 32 + 16);
            x.qh = 0;
            x.d = h2f(((const uint16_t *)(w + nbt * 32))[gb]);
        } else {
            x.q0 = *(const uint4 *)(w + gb * 16);
            x.q1 = make_uint4(0, 0, 0, 0);
            x.qh = TYPE == APR_TYPE_Q5_0 ? ((const uint32_t *)(w + nbt * 16))[gb] : 0;
            x.d = h2f(((const uint16_t *)(w + nbt * (TYPE == APR_TYPE_Q5_0 ? 20 : 16)))[gb]);
        }
        return x;
    }
    /* The block's quants as stored, element 4 i + b byte b of v[i]: Q8_0's
     * signed, Q4_0's and Q5_0's unsigned, OFF above their value (8, 16).
     * The dots take OFF off a group's sum once, from the sum of the
     * activations' quants (ds .y), rather than from every byte (__vsub4 is
     * several instructions a word): integer sums, so the same bits. */
    static constexpr int OFF = TYPE == APR_TYPE_Q5_0 ? 16 : TYPE == APR_TYPE_Q4_0 ? 8 : 0;
    static __device__ __forceinline__ void quants(const W &x, uint32_t (&v)[8])
    {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (TYPE == APR_TYPE_Q8_0) {
                v[i] = u4get(x.q0, i);
                v[i + 4] = u4get(x.q1, i);
            } else {
                const uint32_t q = u4get(x.q0, i);
                v[i] = q & 0x0F0F0F0Fu;
                v[i + 4] = (q >> 4) & 0x0F0F0F0Fu;
                if (TYPE == APR_TYPE_Q5_0) {
                    v[i] |= spread4(x.qh >> (4 * i));
                    v[i + 4] |= spread4(x.qh >> (16 + 4 * i));
                }
            }
        }
    }
    /* decoded: the block's quants as stored */
    struct D {
        uint32_t v[8];
        float d;
        __device__ __forceinline__ void pin()
        {
#pragma unroll
            for (int i = 0; i < 8; i += 2) pin_regs(v[i], v[i + 1]);
            pin_regs(d);
        }
    };
    static __device__ __forceinline__ D decode(const W &x, int c)
    {
        (void)c;
        D d;
        quants(x, d.v);
        d.d = x.d;
        return d;
    }
    template <int NT>
    static __device__ __forceinline__ void dot(const W &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        dotd<NT>(decode(x, c), c, a, tt, acc);
    }
    template <int NT>
    static __device__ __forceinline__ void dotd(const D &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int8_t *q = a.q0 + (size_t)tt[t] * a.ld + c * 32;
            const int4 x0 = *(const int4 *)q, x1 = *(const int4 *)(q + 16);
            const float2 ds = a.ds0[(size_t)tt[t] * (a.ld >> 5) + c];
            int s = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                s = dp4a((int)x.v[i], i4get(x0, i), s);
                s = dp4a((int)x.v[i + 4], i4get(x1, i), s);
            }
            if (OFF) s -= OFF * (int)ds.y; /* .y: the group's sum of quants, exact in a float */
            acc[t] += (float)s * (x.d * ds.x);
        }
    }
    template <int NT>
    static __device__ __forceinline__ void dotf(const W &x, int c, const nrm_dev &m, const int (&tt)[NT], float (&acc)[NT])
    {
        uint32_t v[8];
        quants(x, v);
        if (TYPE == APR_TYPE_Q8_0)
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] ^= 0x80808080u; /* signed bytes as q + 128 */
        constexpr float BIAS = TYPE == APR_TYPE_Q8_0 ? 128.f : (float)OFF;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            float4 yv[8];
#pragma unroll
            for (int i = 0; i < 8; i++) yv[i] = nrm_y4(m, t, c * 32 + 4 * i);
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float4 y = yv[i];
#pragma unroll
                for (int b = 0; b < 4; b++) s = fmaf(bytef(v[i], b, BIAS), f4get(y, b), s);
            }
            acc[t] += x.d * s;
        }
    }
};

/* F32 (4 weights a chunk) and F16 (8): f32 activations, as the CPU. */
template <int TYPE>
struct K_F {
    struct W { uint4 v; };
    static __device__ __forceinline__ int chunks(int n_in) { return TYPE == APR_TYPE_F32 ? n_in / 4 : n_in / 8; }
    static __device__ __forceinline__ size_t blocks(int n_in, int n_out) { return (size_t)n_out * chunks(n_in); }
    static __device__ __forceinline__ W load(const uint8_t *w, size_t nbt, int r, int n_in, int c)
    {
        (void)nbt;
        return W{((const uint4 *)(w + (size_t)r * n_in * (TYPE == APR_TYPE_F32 ? 4 : 2)))[c]};
    }
    /* nothing to decode ahead */
    struct D : W {
        __device__ __forceinline__ void pin() {}
    };
    static __device__ __forceinline__ D decode(const W &x, int c)
    {
        (void)c;
        return D{x};
    }
    template <int NT>
    static __device__ __forceinline__ void dotd(const D &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
        dot<NT>(x, c, a, tt, acc);
    }
    template <int NT>
    static __device__ __forceinline__ void dot(const W &x, int c, const act_dev &a, const int (&tt)[NT], float (&acc)[NT])
    {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (TYPE == APR_TYPE_F32) {
                const float4 xv = ((const float4 *)(a.f + (size_t)tt[t] * a.ld))[c];
                acc[t] += __uint_as_float(x.v.x) * xv.x + __uint_as_float(x.v.y) * xv.y +
                          __uint_as_float(x.v.z) * xv.z + __uint_as_float(x.v.w) * xv.w;
            } else {
                const float4 *xp = (const float4 *)(a.f + (size_t)tt[t] * a.ld + 8 * c);
                const float4 x0 = xp[0], x1 = xp[1];
                const float2 w0 = half2_bits(x.v.x), w1 = half2_bits(x.v.y), w2 = half2_bits(x.v.z),
                             w3 = half2_bits(x.v.w);
                acc[t] += w0.x * x0.x + w0.y * x0.y + w1.x * x0.z + w1.y * x0.w + w2.x * x1.x + w2.y * x1.y +
                          w3.x * x1.z + w3.y * x1.w;
            }
        }
    }
};

/* NR weight rows at once (wp[i], row rr[i]): U chunks of each loaded before
 * any is multiplied, so a lane has NR * U 16-byte loads in flight. */
template <class K, int NT, int U, int NR>
static __device__ __forceinline__ void rows_dot(const uint8_t *const (&wp)[NR], const int (&rr)[NR], int n_in,
                                                int n_out, const act_dev &a, const int (&tt)[NT], int lane,
                                                float (&acc)[NR][NT])
{
    const int nch = K::chunks(n_in);
    const size_t nbt = K::blocks(n_in, n_out);
    for (int c0 = lane; c0 < nch; c0 += 32 * U) {
        typename K::W x[NR][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < NR; i++) x[i][u] = K::load(wp[i], nbt, rr[i], n_in, min(c0 + 32 * u, nch - 1));
#pragma unroll
        for (int u = 0; u < U; u++)
            if (c0 + 32 * u < nch)
#pragma unroll
                for (int i = 0; i < NR; i++) K::template dot<NT>(x[i][u], c0 + 32 * u, a, tt, acc[i]);
    }
}

/* F32/F16 rows whose length is not a multiple of the chunk: one weight a step. */
template <int NT, int NR>
static __device__ void rows_dot_scalar(const uint8_t *const (&wp)[NR], const int (&rr)[NR], uint32_t type, int n_in,
                                       const act_dev &a, const int (&tt)[NT], int lane, float (&acc)[NR][NT])
{
    for (int c = lane; c < n_in; c += 32)
#pragma unroll
        for (int i = 0; i < NR; i++) {
            const size_t e = (size_t)rr[i] * n_in + c;
            const float wv = type == APR_TYPE_F32 ? ((const float *)wp[i])[e] : h2f(((const uint16_t *)wp[i])[e]);
#pragma unroll
            for (int t = 0; t < NT; t++) acc[i][t] += wv * a.f[(size_t)tt[t] * a.ld + c];
        }
}

/* The type switch is uniform across the warp (a warp's rows are of one matrix type). */
template <int NT, int U, int NR>
static __device__ __forceinline__ void rows_dot_any(uint32_t type, const uint8_t *const (&wp)[NR], const int (&rr)[NR],
                                                    int n_in, int n_out, const act_dev &a, const int (&tt)[NT],
                                                    int lane, float (&acc)[NR][NT])
{
    switch (type) {
    case APR_TYPE_Q4_K: rows_dot<K_Q4_K, NT, U, NR>(wp, rr, n_in, n_out, a, tt, lane, acc); break;
    case APR_TYPE_Q6_K: rows_dot<K_Q6_K, NT, U, NR>(wp, rr, n_in, n_out, a, tt, lane, acc); break;
    case APR_TYPE_Q5_0: rows_dot<K_Q_0<APR_TYPE_Q5_0>, NT, U, NR>(wp, rr, n_in, n_out, a, tt, lane, acc); break;
    case APR_TYPE_Q4_0: rows_dot<K_Q_0<APR_TYPE_Q4_0>, NT, U, NR>(wp, rr, n_in, n_out, a, tt, lane, acc); break;
    case APR_TYPE_Q8_0: rows_dot<K_Q_0<APR_TYPE_Q8_0>, NT, U, NR>(wp, rr, n_in, n_out, a, tt, lane, acc); break;
    case APR_TYPE_F32:
        if (n_in % 4 == 0) rows_dot<K_F<APR_TYPE_F32>, NT, 1, NR>(wp, rr, n_in, n_out, a, tt, lane, acc);
        else rows_dot_scalar<NT, NR>(wp, rr, type, n_in, a, tt, lane, acc);
        break;
    case APR_TYPE_F16:
        if (n_in % 8 == 0) rows_dot<K_F<APR_TYPE_F16>, NT, 1, NR>(wp, rr, n_in, n_out, a, tt, lane, acc);
        else rows_dot_scalar<NT, NR>(wp, rr, type, n_in, a, tt, lane, acc);
        break;
    }
}

/* ------------------------------------------ the fused decode prologue */

/* Asks the copy engine to bring nr rows of a weight matrix (from row r) into
 * L2: the planes of quants, which are nearly all of the bytes (scale planes
 * are left to the loads). A hint only; sizes and addresses are multiples of 16
 * bytes in every layout. */
static __device__ __forceinline__ void prefetch_span(const uint8_t *p, size_t bytes)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (bytes)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"((uint32_t)bytes) : "memory");
#endif
}

static __device__ __forceinline__ void prefetch_rows(const uint8_t *w, uint32_t type, int n_in, int n_out, int r,
                                                     int nr)
{
    if (nr <= 0) return;
    switch (type) {
    case APR_TYPE_Q4_K: {
        const size_t row = (size_t)(n_in / 256) * 144;
        prefetch_span(w + (size_t)r * row, (size_t)nr * row);
        break;
    }
    case APR_TYPE_Q6_K: {
        const size_t nb = (size_t)(n_in / 256), nbt = nb * (size_t)n_out;
        prefetch_span(w + (size_t)r * nb * 128, (size_t)nr * nb * 128);
        prefetch_span(w + nbt * 128 + (size_t)r * nb * 64, (size_t)nr * nb * 64);
        break;
    }
    case APR_TYPE_Q5_0: case APR_TYPE_Q4_0: {
        const size_t row = (size_t)(n_in / 32) * 16;
        prefetch_span(w + (size_t)r * row, (size_t)nr * row);
        break;
    }
    case APR_TYPE_Q8_0: {
        const size_t row = (size_t)(n_in / 32) * 32;
        prefetch_span(w + (size_t)r * row, (size_t)nr * row);
        break;
    }
    }
}

/* The block's own copy of the quantized input, in shared memory: what
 * norm_quant_kernel would have written for this one row, bit for bit (the
 * sum of squares in the same order over the same 256 threads, and the
 * quantizers' results do not depend on the order in which a group's maximum
 * and sums are found). Warp w takes the 256-groups w, w + 8, ...; lane l
 * holds the group's elements 8l..8l+7, so a 32-group is 4 lanes and a whole
 * group needs only shuffles. Then a points at shared memory (generic
 * pointers, so the GEMV's dot products read it unchanged). */
static __device__ __forceinline__ void quantize_block(const pro_dev &pr, uint8_t *smem, act_dev &a)
{
    const apr_cu_quant_src &in = pr.src;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, n = in.n;
    /* the norm weights of this warp's first group are constants: loaded
     * before the wait for the previous kernel */
    float4 w0 = make_float4(0.f, 0.f, 0.f, 0.f), w1 = w0;
    if (in.w && warp * 256 + 8 * lane < n) {
        w0 = *(const float4 *)(in.w + warp * 256 + 8 * lane);
        w1 = *(const float4 *)(in.w + warp * 256 + 8 * lane + 4);
    }
    double inv_n = 1.0 / n;
    pin_reg(inv_n);
    griddep();
    const float *src = in.x + (size_t)(in.rows ? in.rows[0] : 0) * in.ldx;
    /* a warp walks its groups one after another (35 rounds of 8 for a row of
     * 8960): pull the whole row into L1 at once so that only the first round
     * waits for L2 */
    for (int i = 32 * tid; i < n; i += 32 * GEMV_WARPS * 32)
        asm volatile("prefetch.global.L1 [%0];" ::"l"(src + i));
    const float scale = in.w ? rms_scale<GEMV_WARPS * 32>(src, n, in.eps, inv_n) : 1.f;
    int8_t *qk = (int8_t *)(smem + pr.off_qk), *q0 = (int8_t *)(smem + pr.off_q0);
    float2 *dsk = (float2 *)(smem + pr.off_dsk), *ds0 = (float2 *)(smem + pr.off_ds0);
    for (int g = warp; g * 256 < n; g += GEMV_WARPS) {
        const int e0 = g * 256 + 8 * lane;
        const bool valid = e0 < n; /* n % 32 == 0: a 32-group (4 lanes) is valid or not as a whole */
        float v[8];
        if (valid) {
            const float4 x0 = *(const float4 *)(src + e0), x1 = *(const float4 *)(src + e0 + 4);
            v[0] = x0.x, v[1] = x0.y, v[2] = x0.z, v[3] = x0.w, v[4] = x1.x, v[5] = x1.y, v[6] = x1.z, v[7] = x1.w;
            if (in.w) {
                if (g != warp) {
                    w0 = *(const float4 *)(in.w + e0);
                    w1 = *(const float4 *)(in.w + e0 + 4);
                }
                const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
                for (int i = 0; i < 8; i++) v[i] = v[i] * scale * wv[i];
            }
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = 0.f;
        }
        if (pr.off_q0 >= 0) { /* Q8_0-style: d = amax / 127 per 32 */
            float amax = 0.f;
#pragma unroll
            for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(v[i]));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
            const float d = amax / 127.f, id = amax != 0.f ? 127.f / amax : 0.f;
            int q[8], sum = 0;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                q[i] = __float2int_rn(v[i] * id);
                sum += q[i];
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            if (valid) {
                *(int2 *)(q0 + e0) = pack8(q);
                if ((lane & 3) == 0) ds0[e0 / 32] = make_float2(__half2float(__float2half_rn(d)), (float)sum);
            }
        }
        if (pr.off_qk >= 0) { /* Q8_K-style: the signed element of largest magnitude, the first on ties */
            float amax = fabsf(v[0]), mx = v[0];
            int idx = e0;
#pragma unroll
            for (int i = 1; i < 8; i++)
                if (fabsf(v[i]) > amax) {
                    amax = fabsf(v[i]);
                    mx = v[i];
                    idx = e0 + i;
                }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float oa = __shfl_xor_sync(0xffffffffu, amax, o), om = __shfl_xor_sync(0xffffffffu, mx, o);
                const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
                if (oa > amax || (oa == amax && oi < idx)) {
                    amax = oa;
                    mx = om;
                    idx = oi;
                }
            }
            int q[8], sum = 0;
            float d = 0.f;
            const float iscale = amax != 0.f ? -127.f / mx : 0.f;
            if (amax != 0.f) d = 1.f / iscale;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                q[i] = amax != 0.f ? min(127, __float2int_rn(iscale * v[i])) : 0;
                sum += q[i];
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            if (valid) {
                *(int2 *)(qk + e0) = pack8(q);
                if ((lane & 3) == 0) dsk[e0 / 32] = make_float2(d, (float)sum);
            }
        }
    }
    a.qk = qk;
    a.dsk = dsk;
    a.q0 = q0;
    a.ds0 = ds0;
    a.ld = 0; /* one token */
}

/* A warp owns a group of NR rows of one segment (SWIGLU: one row of gate and
 * the same row of up). grid.x: token tiles of NT (fastest, so the tiles of one
 * row block run together and the weights come from DRAM once); grid.y: blocks
 * of GEMV_WARPS groups over all segments, each segment's groups numbered from
 * its g0. */
/* The segment of warp group g (segments are numbered in order of their row0). */
static __device__ __forceinline__ const seg_dev &seg_of(const gemv_params &p, int g)
{
    int si = 0;
    if (p.n_seg > 1 && g >= p.seg[1].row0) si = 1;
    if (p.n_seg > 2 && g >= p.seg[2].row0) si = 2;
    return p.seg[si];
}

/* One warp group's rows: the dot products and the epilogue. */
template <int NT, int U, int NR, bool SWIGLU>
static __device__ __forceinline__ void gemv_group(const gemv_params &p, const act_dev &a, int group, int lane)
{
    const seg_dev &s = seg_of(p, group);
    const int rb = (group - s.row0) * (SWIGLU ? 1 : NR);
    const int t0 = blockIdx.x * NT, nt = min(NT, p.ntok - t0);
    int tt[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) tt[t] = min(t0 + t, p.ntok - 1);
    const uint8_t *wp[NR];
    int rr[NR];
#pragma unroll
    for (int i = 0; i < NR; i++) {
        wp[i] = SWIGLU && i == 1 ? s.w2 : s.w;
        rr[i] = SWIGLU ? rb : min(rb + i, s.n_out - 1); /* past the end: throwaway sums */
    }
    float acc[NR][NT];
#pragma unroll
    for (int i = 0; i < NR; i++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[i][t] = 0.f;
    rows_dot_any<NT, U, NR>(s.type, wp, rr, s.n_in, s.n_out, a, tt, lane, acc);
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (SWIGLU) {
            const float g = warp_sum(acc[0][t]), u = warp_sum(acc[NR - 1][t]);
            if (lane == t && t < nt) s.out[(size_t)(t0 + t) * s.ldo + rb] = g / (1.0f + expf(-g)) * u;
        } else {
#pragma unroll
            for (int i = 0; i < NR; i++) {
                const float v = warp_sum(acc[i][t]);
                if (lane == t && t < nt && rb + i < s.n_out) {
                    float *o = s.out + (size_t)(t0 + t) * s.ldo + rb + i;
                    if (s.mode == APR_CU_ADD) *o += v;
                    else *o = v;
                }
            }
        }
    }
}

/* ------------------------------------- the GEMV of decode-sized batches */
/* Decode reads every weight once and does little else with it, so what
 * counts is how many weight loads are in flight across the GPU. A block of
 * GEMV_WARPS warps takes GEMV_WARPS / WPR rows for a tile of NT tokens; the
 * WPR warps of a row split its chunks (lane l of slice s: chunks 32 s + l,
 * then every 32 WPR), so the long rows (8960, 18944 weights) still give every
 * multiprocessor several blocks instead of a warp walking 280 chunks alone
 * (the 1.5B's down: 96 blocks for 132 multiprocessors, 0.66 TB/s under ncu).
 * WAIT: the first round of weight loads is issued before
 * griddepcontrol.wait, since weights do not depend on the previous kernel;
 * under programmatic dependent launch they are in flight while it finishes
 * (the small q/k/v and o products are then mostly loaded before their input
 * exists). */
template <class K, int U, int WPR, int NT, bool SWIGLU, bool WAIT, bool NORM = false, bool RMS = false, bool PRE = false>
static __device__ __forceinline__ void gemv1_row(const seg_dev &s, const act_dev &a, const nrm_dev &m, int r,
                                                 const int (&tt)[NT], int slice, int lane, float (&acc)[2][NT],
                                                 rms_pre &rp, float (&xr)[NT])
{
    constexpr int STEP = 32 * WPR;
    const int nch = K::chunks(s.n_in);
    const size_t nbt = K::blocks(s.n_in, s.n_out);
    typename K::W x[U], y[U];
    /* PRE: every round's chunks decoded as they are loaded, the first
     * round's before the wait; otherwise each dot decodes its chunk */
    constexpr bool DEC = PRE && WAIT && !NORM;
    typename K::D dx[DEC ? U : 1], dy[DEC ? U : 1];
    const float4 g4 = NORM ? nrm_g(m) : make_float4(0.f, 0.f, 0.f, 0.f);
    for (int c0 = slice * 32 + lane, round = 0;; round++) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = min(c0 + STEP * u, nch - 1);
            x[u] = K::load(s.w, nbt, r, s.n_in, c);
            if (SWIGLU) y[u] = K::load(s.w2, nbt, r, s.n_in, c);
            if constexpr (DEC) {
                dx[u] = K::decode(x[u], c);
                if (SWIGLU) dy[u] = K::decode(y[u], c);
                if (round == 0) {
                    dx[u].pin();
                    if (SWIGLU) dy[u].pin();
                }
            }
        }
        if (WAIT && round == 0) {
            griddep();
            if constexpr (NORM) nrm_stage<NT>(m, tt, g4);
            /* RMS: the token's sums (tiles: warp t's token's, staged) */
            if constexpr (RMS && NT == 1) rp = rms_load(a, tt[0], lane);
            else if constexpr (RMS) {
                if (rp.stage) rms_stage(a, tt[threadIdx.x >> 5], lane, rp.stage);
            }
            /* ADD: the residual this lane will add to, fetched now rather
             * than after the sums (an L2 round trip off the critical path) */
            if (!SWIGLU && s.mode == APR_CU_ADD && lane == 0 && slice == 0)
#pragma unroll
                for (int t = 0; t < NT; t++) xr[t] = s.out[(size_t)tt[t] * s.ldo + r];
        }
#pragma unroll
        for (int u = 0; u < U; u++)
            if (c0 + STEP * u < nch) {
                if constexpr (NORM) K::template dotf<NT>(x[u], c0 + STEP * u, m, tt, acc[0]);
                else if constexpr (DEC) K::template dotd<NT>(dx[u], c0 + STEP * u, a, tt, acc[0]);
                else K::template dot<NT>(x[u], c0 + STEP * u, a, tt, acc[0]);
                if constexpr (SWIGLU && DEC) K::template dotd<NT>(dy[u], c0 + STEP * u, a, tt, acc[1]);
                else if (SWIGLU) K::template dot<NT>(y[u], c0 + STEP * u, a, tt, acc[1]);
            }
        c0 += STEP * U;
        if (c0 >= nch) break;
    }
}

/* Row g (over all segments) of this block for the tile of NT tokens from
 * blockIdx.y * NT: its sums reduced across the WPR slices in a fixed order,
 * the epilogue written by the row's first lane. Every thread of the block
 * calls it (it may synchronize). A token's sums do not depend on NT (each
 * lane takes the same chunks in the same order for every token of the tile),
 * so a sequence's logits are the same bits whatever else shares its step. */
/* TYPES: a mask of 1 << type of the weight types the launch holds (0: any),
 * so that an instance carries only their dots */
#define TYPE_BIT(t) (1u << (t))
/* The epilogue of row r's finished sums (v: the row, u: SwiGLU's up row) for
 * the tile's nt tokens from t0, by one lane. */
template <int NT, bool SWIGLU>
static __device__ __forceinline__ void gemv1_store(const seg_dev &s, int r, int t0, int nt, const float (&v)[NT],
                                                   const float (&u)[NT], const float *xr)
{
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t >= nt) break;
        float *o = s.out + (size_t)(t0 + t) * s.ldo + r;
        if (SWIGLU) *o = v[t] / (1.0f + expf(-v[t])) * u[t];
        else if (s.mode == APR_CU_ADD) *o = (xr ? xr[t] : *o) + v[t];
        else *o = v[t];
    }
}

template <int U, int WPR, int NT, bool SWIGLU, bool WAIT, uint32_t TYPES = 0, bool NORM = false, bool RMS = false,
          bool PRE = false>
static __device__ __forceinline__ void gemv1_block(const gemv_params &p, const act_dev &a, int g)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, slice = warp % WPR;
    const seg_dev &s = seg_of(p, min(g, p.rows - 1));
    const int r = min(g, p.rows - 1) - s.row0;
    const int t0 = blockIdx.y * NT, nt = min(NT, p.ntok - t0);
    int tt[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) tt[t] = min(t0 + t, p.ntok - 1); /* past the batch: throwaway sums */
    float acc[2][NT];
    /* RMS: this lane's groups of a token's sums of squares (gemv1_row); tiles: warp t < NT stages token t's */
    __shared__ float rsum[RMS && NT > 1 ? NT : 1][RMS && NT > 1 ? RMS_STAGE_MAX : 1];
    rms_pre rp = {0.f, 0.f, RMS && NT > 1 && warp < NT ? rsum[warp] : nullptr};
    float xr[NT];  /* ADD: the residual row's elements (gemv1_row, after the wait) */
#pragma unroll
    for (int t = 0; t < NT; t++) acc[0][t] = acc[1][t] = 0.f;
#define HAS(t) (TYPES == 0 || (TYPES & TYPE_BIT(t)))
    switch (s.type) { /* uniform across the warps of a row */
    case APR_TYPE_Q4_K:
        if constexpr (!HAS(APR_TYPE_Q4_K)) break;
        else if constexpr (!SWIGLU) gemv1_row<K_Q4_K, U, WPR, NT, SWIGLU, WAIT, NORM, RMS, PRE>(s, a, p.nrm, r, tt, slice, lane, acc, rp, xr);
        else if constexpr (U == 1 && NT <= 4) gemv1_row<K_Q4_K2, U, WPR, NT, SWIGLU, WAIT, NORM, RMS, PRE>(s, a, p.nrm, r, tt, slice, lane, acc, rp, xr);
        else __trap(); /* gemv1 launches SwiGLU's Q4_K pairs one a lane, in tiles of up to 4 (more spill) */
        break;
    case APR_TYPE_Q6_K:
        if constexpr (HAS(APR_TYPE_Q6_K)) gemv1_row<K_Q6_K, U, WPR, NT, SWIGLU, WAIT, NORM, RMS, PRE>(s, a, p.nrm, r, tt, slice, lane, acc, rp, xr);
        break;
    case APR_TYPE_Q5_0:
        if constexpr (HAS(APR_TYPE_Q5_0))
            gemv1_row<K_Q_0<APR_TYPE_Q5_0>, U, WPR, NT, SWIGLU, WAIT, NORM, RMS, PRE>(s, a, p.nrm, r, tt, slice, lane, acc, rp, xr);
        break;
    case APR_TYPE_Q4_0:
        if constexpr (HAS(APR_TYPE_Q4_0))
            gemv1_row<K_Q_0<APR_TYPE_Q4_0>, U, WPR, NT, SWIGLU, WAIT, NORM, RMS, PRE>(s, a, p.nrm, r, tt, slice, lane, acc, rp, xr);
        break;
    case APR_TYPE_Q8_0:
        if constexpr (HAS(APR_TYPE_Q8_0))
            gemv1_row<K_Q_0<APR_TYPE_Q8_0>, U, WPR, NT, SWIGLU, WAIT, NORM, RMS, PRE>(s, a, p.nrm, r, tt, slice, lane, acc, rp, xr);
        break;
    }
#undef HAS
    float v[NT], u[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) {
        v[t] = warp_sum(acc[0][t]);
        u[t] = SWIGLU ? warp_sum(acc[1][t]) : 0.f;
    }
    /* RMS: 1/rms of each token once a block (warp t for token t: an epilogue
     * of every token in every warp cost tiles of 8 tokens ~12%), one token's
     * by each warp itself */
    __shared__ float rinv[NT];
    float ri1 = 1.f;
    if constexpr (RMS) {
        if constexpr (NT == 1) {
            if (!WAIT) rp = rms_load(a, tt[0], lane); /* no wait in gemv1_row */
            ri1 = rms_finish(a, tt[0], lane, rp);
        } else {
            if (warp < NT) {
                if (!WAIT) rms_stage(a, tt[warp], lane, rp.stage); /* no wait in gemv1_row */
                const float ri = rms_finish_staged(a, lane, rp.stage);
                if (lane == 0) rinv[warp] = ri;
            }
            __syncthreads();
        }
    }
    if (WPR > 1) {
        __shared__ float part[GEMV_WARPS][2][NT];
        if (lane == 0)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                part[warp][0][t] = v[t];
                part[warp][1][t] = u[t];
            }
        __syncthreads();
        if (slice == 0)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                v[t] = 0.f;
                u[t] = 0.f;
#pragma unroll
                for (int i = 0; i < WPR; i++) {
                    v[t] += part[warp + i][0][t];
                    u[t] += part[warp + i][1][t];
                }
            }
        __syncthreads(); /* the fused kernel's blocks come back for more rows */
        if (slice != 0) return;
    }
    if constexpr (NORM)
#pragma unroll
        for (int t = 0; t < NT; t++) v[t] *= nrm_scale(p.nrm, tt[t], lane);
    if constexpr (RMS)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float ri = NT == 1 ? ri1 : rinv[t];
            v[t] *= ri;
            u[t] *= ri;
        }
    if (lane != 0 || g >= p.rows) return;
    gemv1_store<NT, SWIGLU>(s, r, t0, nt, v, u, WAIT ? xr : nullptr);
}

/* grid.x: blocks of GEMV_WARPS / WPR rows; grid.y: tiles of NT tokens.
 * MINB: blocks a multiprocessor must hold (the register budget). One-token
 * products of over GEMV1_BIG_BYTES take 4 (at most 64 registers): H200
 * --gemv-bench, 3 -> 4: the 7B's gate/up 33.4 -> 31.7 us and down 20.7 ->
 * 19.6, the 1.5B's output matrix 87.0 -> 79.8; but the 1.5B's gate/up 9.0 ->
 * 9.6 and down 5.3 -> 5.9, so the smaller ones keep 3, except rows of 112
 * chunks or more in matrices of 3584 rows or more (the 7B's and 32B's q/k/v
 * and o, H100: 7B o 6.8 -> 5.9 us, 32B q/k/v 14.2 -> 13.0, o 12.0 -> 10.4). */
#define GEMV1_BIG_BYTES (32u << 20)
template <int U, int WPR, int NT, bool SWIGLU, int MINB, uint32_t TYPES = 0, bool NORM = false, bool RMS = false,
          bool PRE = false>
static __global__ void __launch_bounds__(GEMV_WARPS * 32, MINB) gemv1_kernel(const __grid_constant__ gemv_params p)
{
    if (p.early) griddep_trigger();
    gemv1_block<U, WPR, NT, SWIGLU, true, TYPES, NORM, RMS, PRE>(p, p.a,
                                                      blockIdx.x * (GEMV_WARPS / WPR) + (int)(threadIdx.x >> 5) / WPR);
}

/* One token, one warp a row, one chunk a lane, one segment: two row groups a
 * block, both rows' chunks loaded before the wait, for products of one to
 * two waves' worth of groups (the 0.5B's gate/up: 608 groups, 396 resident
 * blocks), so the product is one wave of one round of loads. Lane l takes
 * chunk l of each row and the epilogue is gemv1_block's: the same bits. */
template <class K, bool SWIGLU, bool RMS, bool PRE>
static __device__ __forceinline__ void rows2_dot(const seg_dev &s, const act_dev &a, int r0, int r1, int lane,
                                                 float (&acc)[2][2][1], rms_pre &rp, float (&xr)[2])
{
    const int nch = K::chunks(s.n_in), c = min(lane, nch - 1), tt[1] = {0};
    const size_t nbt = K::blocks(s.n_in, s.n_out);
    const typename K::W x0 = K::load(s.w, nbt, r0, s.n_in, c), x1 = K::load(s.w, nbt, r1, s.n_in, c);
    typename K::W y0 = x0, y1 = x1;
    if (SWIGLU) {
        y0 = K::load(s.w2, nbt, r0, s.n_in, c);
        y1 = K::load(s.w2, nbt, r1, s.n_in, c);
    }
    /* PRE: the chunks decoded before the wait (gemv1_kernel's PRE) */
    typename K::D d[4];
    if constexpr (PRE) {
        d[0] = K::decode(x0, c);
        d[1] = K::decode(x1, c);
        d[0].pin();
        d[1].pin();
        if (SWIGLU) {
            d[2] = K::decode(y0, c);
            d[3] = K::decode(y1, c);
            d[2].pin();
            d[3].pin();
        }
    }
    griddep();
    if constexpr (RMS) rp = rms_load(a, 0, lane);
    if (!SWIGLU && s.mode == APR_CU_ADD && lane == 0) { /* as gemv1_row's */
        xr[0] = s.out[r0];
        xr[1] = s.out[r1];
    }
    if (lane >= nch) return;
    if constexpr (PRE) {
        K::template dotd<1>(d[0], lane, a, tt, acc[0][0]);
        if (SWIGLU) K::template dotd<1>(d[2], lane, a, tt, acc[0][1]);
        K::template dotd<1>(d[1], lane, a, tt, acc[1][0]);
        if (SWIGLU) K::template dotd<1>(d[3], lane, a, tt, acc[1][1]);
        return;
    }
    K::template dot<1>(x0, lane, a, tt, acc[0][0]);
    if (SWIGLU) K::template dot<1>(y0, lane, a, tt, acc[0][1]);
    K::template dot<1>(x1, lane, a, tt, acc[1][0]);
    if (SWIGLU) K::template dot<1>(y1, lane, a, tt, acc[1][1]);
}

template <bool SWIGLU, int MINB, uint32_t TYPE, bool RMS = false, bool PRE = false>
static __global__ void __launch_bounds__(GEMV_WARPS * 32, MINB) gemv1_rows2_kernel(const __grid_constant__ gemv_params p)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g[2] = {(int)blockIdx.x * GEMV_WARPS + warp, (int)(blockIdx.x + gridDim.x) * GEMV_WARPS + warp};
    const seg_dev &s = p.seg[0];
    const int r0 = min(g[0], p.rows - 1), r1 = min(g[1], p.rows - 1);
    float acc[2][2][1] = {}, xr[2] = {};
    rms_pre rp = {0.f, 0.f};
    if constexpr (TYPE == APR_TYPE_Q4_K) {
        if constexpr (SWIGLU) rows2_dot<K_Q4_K2, SWIGLU, RMS, PRE>(s, p.a, r0, r1, lane, acc, rp, xr);
        else rows2_dot<K_Q4_K, SWIGLU, RMS, PRE>(s, p.a, r0, r1, lane, acc, rp, xr);
    } else if constexpr (TYPE == APR_TYPE_Q6_K) {
        rows2_dot<K_Q6_K, SWIGLU, RMS, PRE>(s, p.a, r0, r1, lane, acc, rp, xr);
    } else {
        rows2_dot<K_Q_0<TYPE>, SWIGLU, RMS, PRE>(s, p.a, r0, r1, lane, acc, rp, xr);
    }
    const float ri = RMS ? rms_finish(p.a, 0, lane, rp) : 1.f; /* as gemv1_block's */
#pragma unroll
    for (int i = 0; i < 2; i++) {
        float v[1] = {warp_sum(acc[i][0][0])}, u[1] = {SWIGLU ? warp_sum(acc[i][1][0]) : 0.f};
        if (RMS) {
            v[0] *= ri;
            u[0] *= ri;
        }
        if (lane == 0 && g[i] < p.rows) gemv1_store<1, SWIGLU>(s, g[i], 0, 1, v, u, &xr[i]);
    }
}

/* One token, rows of 48 chunks at one warp a row (1536 wide: the 1.5B's
 * output matrix and o product): gemv1 gives a lane chunks l and l + 32, so lanes 16-31
 * sit out the second round, and the 1.5B's output took as long as the 3B's
 * (64 chunks, every lane busy) for three quarters of the bytes. Here a warp
 * takes two rows as 96 slots, slot s = row s / 48, chunk s % 48, and lane l
 * slots l, l + 32, l + 64: three chunks, none idle. Row 0's chunks land on
 * the lanes gemv1 puts them on, in the same order; row 1's on lane l ^ 16
 * (chunks m and m + 32 on lane m + 16, chunk m + 16 on lane m, m < 16), and
 * warp_sum's first step adds lanes l and l ^ 16, so both rows' sums are the
 * bits gemv1 gives them (kernel tests: equal to it and to token tiles).
 * H100, --gemv-bench: the 1.5B's output 73.7 -> 64.2 us (2.60 -> 2.98 TB/s);
 * decode 1.5B 1185-1194 -> 1205-1209 tok/s in one call, same tokens. */
template <class K, int MINB, bool AMAX>
static __global__ void __launch_bounds__(GEMV_WARPS * 32, MINB) gemv1_pair48_kernel(const __grid_constant__ gemv_params p)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const seg_dev &s = p.seg[0];
    const int g0 = 2 * ((int)blockIdx.x * GEMV_WARPS + warp);
    const int r0 = min(g0, p.rows - 1), r1 = min(g0 + 1, p.rows - 1);
    const size_t nbt = K::blocks(s.n_in, s.n_out);
    const bool lo = lane < 16;
    const int cb = lo ? lane + 32 : lane - 16; /* slot l + 32: row 0's second chunk, or row 1's first */
    const typename K::W xa = K::load(s.w, nbt, r0, s.n_in, lane), xb = K::load(s.w, nbt, lo ? r0 : r1, s.n_in, cb),
                        xc = K::load(s.w, nbt, r1, s.n_in, lane + 16);
    griddep();
    float xr[2] = {0.f, 0.f};
    if (s.mode == APR_CU_ADD && lane == 0) { /* as gemv1_row's: fetched before the sums */
        xr[0] = s.out[r0];
        xr[1] = s.out[r1];
    }
    const int tt[1] = {0};
    float acc0[1] = {0.f}, acc1[1] = {0.f};
    K::template dot<1>(xa, lane, p.a, tt, acc0);
    float mid[1] = {lo ? acc0[0] : 0.f}; /* one dot for both halves: the accumulator chosen, not the code */
    K::template dot<1>(xb, cb, p.a, tt, mid);
    if (lo) acc0[0] = mid[0];
    else acc1[0] = mid[0];
    K::template dot<1>(xc, lane + 16, p.a, tt, acc1);
    const float v0[1] = {warp_sum(acc0[0])}, v1[1] = {warp_sum(acc1[0])}, none[1] = {0.f};
    if (lane != 0) return;
    if constexpr (AMAX) {
        unsigned long long key = g0 < p.rows ? argmax_key(v0[0], g0) : 0ull;
        if (g0 + 1 < p.rows) key = max(key, argmax_key(v1[0], g0 + 1));
        argmax_offer(key, p.amax, (int)blockIdx.x * GEMV_WARPS + warp);
    }
    if (g0 < p.rows) gemv1_store<1, false>(s, g0, 0, 1, v0, none, &xr[0]);
    if (g0 + 1 < p.rows) gemv1_store<1, false>(s, g0 + 1, 0, 1, v1, none, &xr[1]);
}

/* Warps a row gets (measured, --gemv-bench sweeps on an H100 and an H200;
 * the 7B's and 32B's shapes on an H100, 2026-11-26):
 * - up to 32 chunks: one;
 * - 33-64: two while their blocks (4 rows each) are at most one and a half
 *   waves of 3 a multiprocessor (o, q/k/v: twice the blocks of a
 *   latency-bound product), one beyond (gate/up, the output matrix, and the
 *   3B's q/k/v: 640 blocks at two, H100 3.28 -> 2.32 us at one warp a row);
 * - 65-256 (the 3584- and 5120-wide inputs): one where its blocks (8 rows
 *   each, 4 a multiprocessor) fill their last wave to 80% or more, else two
 *   (more, smaller blocks: a better last wave). One: 7B gate/up 33.4 -> 32.6
 *   us, output 171.8 -> 160.3, o 5.9 -> 5.1 (one wave of 448 blocks); 32B
 *   gate/up 64.9 -> 63.3, q/k/v 12.9 -> 12.0 (896 blocks, 85% of 2 waves).
 *   Two: 7B q/k/v (576 blocks, 55%: 6.9 against 8.0), 32B o (640: 10.4
 *   against 10.7). (Four for the 0.5B's down, 896 rows of 152 chunks, one
 *   chunk a lane at a time: 2.93 -> 2.59 us Q5_0 in one-token launches, but
 *   its tiles of 8 tokens lost 4-5% of the 0.5B's 8-32-stream steps, and
 *   the split must be the same for every batch);
 * - over 256 (down): two walking the row in rounds (280-592 chunks: 10-30%
 *   faster than 4 or 8: fewer blocks, each streaming longer, less
 *   reduction), four where the matrix has 4096 rows or more (the 32B's 864
 *   chunks: 39.9 -> 36.6 us Q4_K, 49.0 -> 44.7 Q6_K).
 * - 48 (1536 wide) in one plain segment: one at every size, so that a
 *   token's rows go two a warp (gemv1_pair48_kernel). H100: the 1.5B's o
 *   1.84 -> 1.57 us (--gemv-bench), decode 1232-1238 -> 1244-1249 tok/s,
 *   8 / 16 streams +1.5% (its tiles at one warp a row too).
 * Token tiles take the same split, so a token's sums are the same bits in
 * any batch; so does the self-quantizing GEMV (apr_cu_gemv_fused). */
static int gemv1_wpr(int nch, int rows, int sms, bool plain_one)
{
    if (nch <= 32 || (plain_one && nch == 48)) return 1;
    if (nch <= 64) return 2 * ((rows + 3) / 4) <= 9 * sms ? 2 : 1;
    if (nch <= 256) {
        const int blocks = (rows + 7) / 8, wave = 4 * sms, waves = (blocks + wave - 1) / wave;
        return 5 * blocks >= 4 * waves * wave ? 1 : 2;
    }
    return rows >= 4096 ? 4 : 2;
}

static int chunks_of(uint32_t type, int n_in)
{
    return type == APR_TYPE_Q4_K || type == APR_TYPE_Q6_K ? n_in / 256 * 8 : n_in / 32;
}


template <int NT, int U, int NR, bool SWIGLU>
static __global__ void __launch_bounds__(GEMV_WARPS * 32, NT >= 4 ? 2 : 1)
    gemv_kernel(const __grid_constant__ gemv_params p)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = blockIdx.y * GEMV_WARPS + warp;
    griddep();
    if (g < p.rows) gemv_group<NT, U, NR, SWIGLU>(p, p.a, g, lane);
}

/* How many of a block's row sets the fused GEMV sends towards L2 before it
 * waits: enough to cover the wait and the prologue, few enough that the
 * prefetches of all resident blocks stay far below L2's 50 MB. */
#define PRO_PREFETCH_GROUPS 2

/* The fused decode GEMV: the block quantizes its input first
 * (quantize_block), and since that costs every block the same, the grid is
 * only as large as fits on the GPU at once and each block strides over the
 * row sets of apr_cu_gemv's one-token kernel (gemv1_block, so the sums are
 * the same to the bit). */
template <int WPR, bool SWIGLU>
static __global__ void __launch_bounds__(GEMV_WARPS * 32, 2) gemv_pro_kernel(const __grid_constant__ gemv_params p)
{
    const int warp = threadIdx.x >> 5, per_block = GEMV_WARPS / WPR;
    const int nblk = (p.rows + per_block - 1) / per_block;
    /* weights do not depend on the previous kernel: start them towards L2
     * while it finishes and while this block quantizes its input */
    if ((threadIdx.x & 31) == 0 && warp % WPR == 0)
        for (int b = blockIdx.x, k = 0; b < nblk && k < p.pro.prefetch; b += gridDim.x, k++) {
            const int g = b * per_block + warp / WPR;
            if (g >= p.rows) break;
            const seg_dev &s = seg_of(p, g);
            prefetch_rows(s.w, s.type, s.n_in, s.n_out, g - s.row0, 1);
            if (SWIGLU) prefetch_rows(s.w2, s.type, s.n_in, s.n_out, g - s.row0, 1);
        }
    extern __shared__ __align__(16) uint8_t pro_smem[];
    act_dev a = p.a;
    quantize_block(p.pro, pro_smem, a); /* waits for the previous kernel (griddep) itself */
    __syncthreads();
    for (int b = blockIdx.x; b < nblk; b += gridDim.x) gemv1_block<SWIGLU ? 1 : 2, WPR, 1, SWIGLU, false>(p, a, b * per_block + warp / WPR);
}

/* Checks the segments and fills p (per_group: rows a warp writes); -1 on a bad argument. */
static int gemv_setup(const apr_cu_gemv_seg *seg, int n_seg, int ntok, int ld, bool have_qk, int per_group,
                      gemv_params &p)
{
    if (n_seg < 1 || n_seg > APR_CU_MAX_SEG || ntok < 1) return -1;
    const bool swiglu = seg[0].mode == APR_CU_SWIGLU;
    p.n_seg = n_seg;
    p.ntok = ntok;
    int groups = 0;
    for (int i = 0; i < n_seg; i++) {
        const apr_cu_gemv_seg *g = &seg[i];
        if (!apr_cu_weight_bytes(g->w.type, g->w.n_in, g->w.n_out) || g->w.n_in > ld) return -1;
        if ((g->mode == APR_CU_SWIGLU) != swiglu) return -1; /* one kind of epilogue per launch */
        if (swiglu && (g->w2.type != g->w.type || g->w2.n_in != g->w.n_in || g->w2.n_out != g->w.n_out)) return -1;
        if ((g->w.type == APR_TYPE_Q4_K || g->w.type == APR_TYPE_Q6_K) && !have_qk) return -1;
        if (g->amax && (n_seg != 1 || ntok != 1 || g->mode != APR_CU_STORE)) return -1;
        p.seg[i] = seg_dev{(const uint8_t *)g->w.data, (const uint8_t *)g->w2.data, g->w.type, g->w.n_in,
                           g->w.n_out, groups, g->out, g->ldo, g->mode};
        groups += (g->w.n_out + per_group - 1) / per_group;
    }
    p.rows = groups; /* in groups */
    p.amax = seg[0].amax;
    if ((groups + GEMV_WARPS - 1) / GEMV_WARPS > 65535) return -1;
    return 0;
}

/* The kernels' view of an activation buffer. */
static act_dev act_of(const apr_cu_act *a)
{
    return act_dev{a->f,  a->qk,  (const float2 *)a->dsk, a->q0, (const float2 *)a->ds0,
                   a->ld, a->rms, a->rms_eps,                a->rms_n};
}

static int max_n_in(const apr_cu_gemv_seg *seg, int n_seg)
{
    int m = 0;
    for (int i = 0; i < n_seg; i++)
        if (seg[i].w.n_in > m) m = seg[i].w.n_in;
    return m;
}

/* The knobs (apr_cu_tune): APR_CUDA_GEMV1=0 puts quantized products on the
 * older kernel (warp a row, token tiles in grid.x) to measure what this one
 * buys. APR_CUDA_GEMV1_ANYTYPE=1 puts one-token launches on the instance
 * that holds every type's dot, as all did before; by default a launch of one
 * weight type, or of the q/k/v pairs Q4_K + Q6_K and Q5_0 + Q8_0, takes an
 * instance with those types' dots only: fewer registers and instructions
 * around the loop (H100 decode, one type: 0.5B 1726-1728 -> 1774-1781
 * tok/s, 1.5B 1124-1129 -> 1143-1144, 7B 458-459 -> 462).
 * APR_CUDA_GEMV1_MINB=3 or 4: the one-token kernel's blocks a multiprocessor
 * for every product instead of by size (GEMV1_BIG_BYTES). */

/* The launch of the instance gemv1's shape picked: a template, so that the
 * instances other shapes would take are discarded rather than named (from a
 * plain function the untaken `if constexpr` branches drew ~900 nvcc warnings
 * #20280, and the untaken runtime ones compiled instances nothing launched). */
#define GEMV1_TP(U, WPR, NT, SW, MINB, R, P)                                                                  \
    do {                                                                                               \
        if constexpr (NT == 1) {                                                                       \
            if (c->tune.gemv1_anytype) launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, 0, false, R>, grid, block, p); \
            else switch (types) {                                                                           \
            case TYPE_BIT(APR_TYPE_Q4_K): launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, TYPE_BIT(APR_TYPE_Q4_K), false, R, P>, grid, block, p); break; \
            case TYPE_BIT(APR_TYPE_Q6_K): launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, TYPE_BIT(APR_TYPE_Q6_K), false, R, P>, grid, block, p); break; \
            case TYPE_BIT(APR_TYPE_Q5_0): launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, TYPE_BIT(APR_TYPE_Q5_0), false, R, P>, grid, block, p); break; \
            case TYPE_BIT(APR_TYPE_Q8_0): launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, TYPE_BIT(APR_TYPE_Q8_0), false, R, P>, grid, block, p); break; \
            case TYPE_BIT(APR_TYPE_Q4_K) | TYPE_BIT(APR_TYPE_Q6_K): /* the K-quant models' q/k/v */           \
                if constexpr (!SW) launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, TYPE_BIT(APR_TYPE_Q4_K) | TYPE_BIT(APR_TYPE_Q6_K), false, R, P>, grid, block, p); \
                else launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, 0, false, R>, grid, block, p);                   \
                break;                                                                                 \
            case TYPE_BIT(APR_TYPE_Q5_0) | TYPE_BIT(APR_TYPE_Q8_0): /* the 0.5B's */                    \
                if constexpr (!SW) launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, TYPE_BIT(APR_TYPE_Q5_0) | TYPE_BIT(APR_TYPE_Q8_0), false, R, P>, grid, block, p); \
                else launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, 0, false, R>, grid, block, p);                   \
                break;                                                                                 \
            default: launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, 0, false, R>, grid, block, p); break;            \
            }                                                                                          \
        } else launch(c, gemv1_kernel<U, WPR, NT, SW, MINB, 0, false, R>, grid, block, p);                         \
    } while (0)
#define GEMV1_T(U, WPR, NT, SW, MINB, R)                                                  \
    do {                                                                               \
        if (NT == 1 && c->pre && !c->tune.gemv1_anytype) GEMV1_TP(U, WPR, NT, SW, MINB, R, true); \
        else GEMV1_TP(U, WPR, NT, SW, MINB, R, false);                                 \
    } while (0)
#define GEMV1_B(U, WPR, NT, MINB)                                                               \
    do {                                                                                        \
        if (rms) GEMV1_T(U, WPR, NT, true, MINB, true);                                         \
        else if (swiglu) GEMV1_T(U, WPR, NT, true, MINB, false);                                \
        else GEMV1_T(U, WPR, NT, false, MINB, false);                                           \
    } while (0)
template <int U, int WPR, int NT>
static void gemv1_launch(const apr_cu_ctx *c, dim3 grid, dim3 block, const gemv_params &p, bool big, bool rms,
                         bool swiglu, uint32_t types)
{
    if constexpr (NT >= 4) GEMV1_B(U, WPR, NT, 2);
    else if constexpr (NT == 1) {
        if (big) GEMV1_B(U, WPR, NT, 4);
        else GEMV1_B(U, WPR, NT, 3);
    } else GEMV1_B(U, WPR, NT, 3);
}
#undef GEMV1_B
#undef GEMV1_T
#undef GEMV1_TP

/* A token's plain rows of one type at two warps a row with three chunks of
 * each lane in flight at once (gemv1's rule says where). Its own launcher:
 * through gemv1_launch three chunks would be compiled for every tile, split,
 * epilogue and register budget, where one shape uses it. 1 where not taken.
 * PRE: apr_cu_ctx.pre (weights decoded before the wait). */
template <bool PRE>
static int gemv1_three_pre(const apr_cu_ctx *c, dim3 grid, dim3 block, const gemv_params &p, uint32_t types)
{
#define THREE(T) launch(c, gemv1_kernel<3, 2, 1, false, 3, TYPE_BIT(T), false, false, PRE>, grid, block, p)
    switch (types) {
    case TYPE_BIT(APR_TYPE_Q4_K): THREE(APR_TYPE_Q4_K); return 0;
    case TYPE_BIT(APR_TYPE_Q6_K): THREE(APR_TYPE_Q6_K); return 0;
    case TYPE_BIT(APR_TYPE_Q5_0): THREE(APR_TYPE_Q5_0); return 0;
    case TYPE_BIT(APR_TYPE_Q8_0): THREE(APR_TYPE_Q8_0); return 0;
    default: return 1;
    }
#undef THREE
}

static int gemv1_three(const apr_cu_ctx *c, dim3 grid, dim3 block, const gemv_params &p, uint32_t types)
{
    return c->pre ? gemv1_three_pre<true>(c, grid, block, p, types) : gemv1_three_pre<false>(c, grid, block, p, types);
}

/* How gemv1 runs a product: the kernel (gemv1_kind) and its shape, from the
 * product's shape and the knobs (apr_cu_tune) that override it; in one
 * place, so that apr_cu_gemv_argmax_ok says what gemv1 will launch. */
enum gemv1_kind { G1_ROWS2, G1_PAIR48, G1_THREE, G1_PLAIN };
struct gemv1_plan {
    int nch, wpr, u, nt;
    uint32_t types; /* TYPE_BIT of every segment's type: the instance with only their dots (gemv1_anytype) */
    bool pairs, swiglu, big;
    gemv1_kind kind;
    dim3 grid;
};

/* 1 where a segment's type has no gemv1 path (F32, F16). */
static int gemv1_plan_of(const apr_cu_gemv_seg *seg, int n_seg, int ntok, bool rms, const apr_cu_ctx *c,
                         gemv1_plan &pl)
{
    int nch = 0, rows = 0;
    bool pairs = false; /* SwiGLU's Q4_K: K_Q4_K2, one pair a lane, tiles of up to 4 tokens */
    uint32_t types = 0;
    for (int i = 0; i < n_seg; i++) {
        const uint32_t t = seg[i].w.type;
        if (t == APR_TYPE_F32 || t == APR_TYPE_F16) return 1;
        pairs = pairs || (t == APR_TYPE_Q4_K && seg[0].mode == APR_CU_SWIGLU);
        nch = max(nch, chunks_of(t, seg[i].w.n_in));
        rows += seg[i].w.n_out;
        types |= TYPE_BIT(t);
    }
    const bool swiglu = seg[0].mode == APR_CU_SWIGLU;
    /* the forced shape of 8 warps a row exists for one-token tiles only */
    const int sms = apr_cu_sms(c);
    int wpr = c->tune.gemv1_w ? c->tune.gemv1_w
                              : gemv1_wpr(nch, rows, sms, !c->tune.pair48_off && n_seg == 1 && !swiglu && !rms);
    if (ntok > 1 && wpr > 4) wpr = 4;
    /* chunks a lane loads at once (the sums' order does not depend on it):
     * one where that covers the row (a second would be a clamped, wasted
     * load: 1.5B q/k/v 3.2 -> 1.9 us, 0.5B 1.6 -> 1.4), else two, except for
     * SwiGLU's pairs of rows at one warp a row where pairs would leave the
     * last round half idle (the 32B's rows of 160 chunks, H100: gate/up 63.3
     * -> 61.1 us; its output matrix, one row, prefers two: 217.6 against
     * 225.9, and so do the 0.5B's and 1.5B's down: 2.63 against 3.21 us Q8_0,
     * 5.09 against 5.81 Q4_K), and for a token's long Q6_K rows, whose chunks
     * hold more registers (the 3B's down, 344 chunks at two warps a row: 9.57
     * -> 7.65 us, the 7B's 22.9 -> 22.5; the 1.5B's 280: 5.71 against 5.80,
     * so from 160 chunks a warp). */
    int u = nch <= 32 * wpr ? 1 : 2;
    if (swiglu && wpr == 1 && nch > 64 && nch % 64 && nch % 64 <= 32) u = 1;
    /* A token's rows of 65-96 chunks a warp at two warps a row (the 0.5B's
     * down, 76) take three, which makes them one round (gemv1_three): H100
     * --gemv-bench Q5_0 2.92 -> 2.48 us, Q8_0 2.62 -> 2.75; decode 2183-2194
     * -> 2236-2251 tok/s, same tokens. Up to 160 a warp too (the 1.5B's
     * down, 140: alone Q4_K 5.05 -> 4.42 us, Q6_K 5.69 -> 5.42): slower in
     * the step of the ninth pass's kernels (decode 1198-1204 -> 1184-1195),
     * faster in today's, where down launches early (2026-11-27: 1326.4-1327.9
     * -> 1326.3-1331.4 tok/s, six pairs in both orders, same tokens). Longer
     * rows keep two (the 3B's 172 measured slower with three). */
    const int cpw = (nch + wpr - 1) / wpr;
    if (ntok == 1 && wpr == 2 && !swiglu && n_seg == 1 && cpw > 64 && cpw <= 160) u = 3;
    if (ntok == 1 && n_seg == 1 && seg[0].w.type == APR_TYPE_Q6_K && nch / wpr >= 160) u = 1;
    /* a lane's gate and up rows at one Q4_K pair each already hold what two
     * chunks of each did; two pairs spill at 64-80 registers */
    if (pairs) u = 1;
    if (c->tune.gemv1_u && !pairs) u = c->tune.gemv1_u;
    /* tiles of up to 8 tokens: 16 (one pass over the weights for a bucket of
     * 16) measured 2.5x slower on the H100 (128 registers, half the blocks) */
    int nt = ntok == 1 ? 1 : ntok == 2 ? 2 : ntok <= 4 ? 4 : 8;
    /* SwiGLU's Q4_K pairs: tiles of 8 spill (4 int4 of activations a token) */
    if (pairs && nt > 4) nt = 4;
    const int per_block = GEMV_WARPS / wpr;
    size_t bytes = 0;
    for (int i = 0; i < n_seg; i++)
        bytes += apr_cu_weight_bytes(seg[i].w.type, seg[i].w.n_in, seg[i].w.n_out) * (swiglu ? 2 : 1);
    const int minb = c->tune.gemv1_minb;
    const bool big = nt == 1 && (minb == 3 || minb == 4 ? minb == 4 : bytes > GEMV1_BIG_BYTES || (nch >= 112 && rows >= 3584));
    pl = gemv1_plan{nch, wpr, u, nt, types, pairs, swiglu, big, G1_PLAIN,
                    dim3((unsigned)((rows + per_block - 1) / per_block), (unsigned)((ntok + nt - 1) / nt))};
    /* one token, one round of loads, one to two waves' worth of blocks: two
     * groups a block (gemv1_rows2_kernel). H100 decode, same tokens: 0.5B
     * (gate/up, 608 blocks) 1984-1998 -> 2042-2063 tok/s; the 1.5B's gate/up
     * (1120 blocks, 560 with two groups) measured slower, 1154-1167 ->
     * 1094-1102, so more waves keep a block a group */
    const bool one_chunk = pairs ? nch <= 64 : nch <= 32; /* a lane's only chunk (Q4_K pairs: its only pair) */
    if (!c->tune.rows2_off && nt == 1 && wpr == 1 && u == 1 && one_chunk && n_seg == 1 && !big &&
        (int)pl.grid.x > 3 * sms && (int)pl.grid.x <= 6 * sms)
        pl.kind = G1_ROWS2;
    else if (nt == 1 && wpr == 1 && u == 2 && nch == 48 && n_seg == 1 && !rms && !swiglu && !c->tune.pair48_off &&
             !c->tune.gemv1_anytype)
        pl.kind = G1_PAIR48;
    else if (u == 3 && nt == 1 && wpr == 2 && !big && !rms && !swiglu && !c->tune.gemv1_anytype &&
             (types == TYPE_BIT(APR_TYPE_Q4_K) || types == TYPE_BIT(APR_TYPE_Q6_K) ||
              types == TYPE_BIT(APR_TYPE_Q5_0) || types == TYPE_BIT(APR_TYPE_Q8_0))) /* gemv1_three's instances */
        pl.kind = G1_THREE;
    if (pl.kind == G1_PLAIN && pl.u > 2) pl.u = 2;
    return 0;
}

/* Greedy's argmax is in gemv1_pair48_kernel only (gemv_params.amax). */
extern "C" int apr_cu_gemv_argmax_ok(const apr_cu_gemv_seg *seg, int n_seg, int ntok, const apr_cu_ctx *c)
{
    gemv1_plan pl;
    if (c->tune.gemv1_off || n_seg != 1 || ntok != 1 || seg[0].mode != APR_CU_STORE ||
        gemv1_plan_of(seg, n_seg, ntok, false, c, pl))
        return 0;
    return pl.kind == G1_PAIR48;
}

/* The one-token product for quantized weights; 1 where a segment's type has
 * no such path (F32, F16: apr_cu_gemv's general kernel takes it). */
static int gemv1(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_act *a, int ntok, const apr_cu_ctx *c)
{
    const bool rms = a->rms != NULL;
    gemv1_plan pl;
    if (gemv1_plan_of(seg, n_seg, ntok, rms, c, pl)) return 1;
    gemv_params p = {};
    if (gemv_setup(seg, n_seg, ntok, a->ld, a->qk != NULL, 1, p)) return -1;
    if (p.amax && (rms || pl.kind != G1_PAIR48)) return -1; /* only that kernel has the argmax */
    p.a = act_of(a);
    const bool swiglu = pl.swiglu, big = pl.big;
    if (rms && !swiglu) return -1; /* rows owing 1/rms are gate/up's (apr_cu_gemv_onorm) */
    if (rms && a->rms_n > 32 * RMS_STAGE_MAX) return -1;
    const uint32_t types = pl.types;
    const int wpr = pl.wpr, u = pl.u, nt = pl.nt;
    const dim3 grid = pl.grid, block(GEMV_WARPS * 32);
    const bool pre = c->pre != 0;
    if (pl.kind == G1_ROWS2) {
        const dim3 g2((grid.x + 1) / 2);
#define ROWS2(T)                                                                                        \
    do {                                                                                                \
        if (rms && pre) launch(c, gemv1_rows2_kernel<true, 3, T, true, true>, g2, block, p);           \
        else if (rms) launch(c, gemv1_rows2_kernel<true, 3, T, true>, g2, block, p);                   \
        else if (swiglu && pre) launch(c, gemv1_rows2_kernel<true, 3, T, false, true>, g2, block, p);  \
        else if (swiglu) launch(c, gemv1_rows2_kernel<true, 3, T>, g2, block, p);                      \
        else if (pre) launch(c, gemv1_rows2_kernel<false, 3, T, false, true>, g2, block, p);           \
        else launch(c, gemv1_rows2_kernel<false, 3, T>, g2, block, p);                                 \
    } while (0)
        switch (seg[0].w.type) {
        case APR_TYPE_Q4_K: ROWS2(APR_TYPE_Q4_K); return 0;
        case APR_TYPE_Q6_K: ROWS2(APR_TYPE_Q6_K); return 0;
        case APR_TYPE_Q5_0: ROWS2(APR_TYPE_Q5_0); return 0;
        case APR_TYPE_Q4_0: ROWS2(APR_TYPE_Q4_0); return 0;
        case APR_TYPE_Q8_0: ROWS2(APR_TYPE_Q8_0); return 0;
        default: break;
        }
#undef ROWS2
    }
    if (pl.kind == G1_PAIR48) {
        const dim3 g2((unsigned)((p.rows + 2 * GEMV_WARPS - 1) / (2 * GEMV_WARPS)));
#define PAIR48(K)                                                                     \
    do {                                                                              \
        if (big && p.amax) launch(c, gemv1_pair48_kernel<K, 4, true>, g2, block, p);  \
        else if (big) launch(c, gemv1_pair48_kernel<K, 4, false>, g2, block, p);      \
        else if (p.amax) launch(c, gemv1_pair48_kernel<K, 3, true>, g2, block, p);    \
        else launch(c, gemv1_pair48_kernel<K, 3, false>, g2, block, p);               \
        return 0;                                                                     \
    } while (0)
        switch (seg[0].w.type) {
        case APR_TYPE_Q4_K: PAIR48(K_Q4_K);
        case APR_TYPE_Q6_K: PAIR48(K_Q6_K);
        case APR_TYPE_Q5_0: PAIR48(K_Q_0<APR_TYPE_Q5_0>);
        case APR_TYPE_Q4_0: PAIR48(K_Q_0<APR_TYPE_Q4_0>);
        case APR_TYPE_Q8_0: PAIR48(K_Q_0<APR_TYPE_Q8_0>);
        default: break;
        }
#undef PAIR48
    }
    if (pl.kind == G1_THREE) return gemv1_three(c, grid, block, p, types) ? -1 : 0;
#define GEMV1(U, WPR, NT) gemv1_launch<U, WPR, NT>(c, grid, block, p, big, rms, swiglu, types)
#define GEMV1_W(U)                                                   \
    do {                                                             \
        if (nt == 1) {                                               \
            switch (wpr) {                                           \
            case 1: GEMV1(U, 1, 1); break;                           \
            case 2: GEMV1(U, 2, 1); break;                           \
            case 4: GEMV1(U, 4, 1); break;                           \
            default: GEMV1(U, 8, 1); break;                          \
            }                                                        \
        } else if (nt == 2) {                                        \
            if (wpr == 1) GEMV1(U, 1, 2);                            \
            else if (wpr == 2) GEMV1(U, 2, 2);                       \
            else GEMV1(U, 4, 2);                                     \
        } else if (nt == 4) {                                        \
            if (wpr == 1) GEMV1(U, 1, 4);                            \
            else if (wpr == 2) GEMV1(U, 2, 4);                       \
            else GEMV1(U, 4, 4);                                     \
        } else {                                                     \
            if (wpr == 1) GEMV1(U, 1, 8);                            \
            else if (wpr == 2) GEMV1(U, 2, 8);                       \
            else GEMV1(U, 4, 8);                                     \
        }                                                            \
    } while (0)
    if (u == 1) GEMV1_W(1);
    else GEMV1_W(2);
#undef GEMV1_W
#undef GEMV1
    return 0;
}

extern "C" int apr_cu_gemv(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_act *a, int ntok, const apr_cu_ctx *c)
{
    if (n_seg < 1) return -1;
    const bool swiglu = seg[0].mode == APR_CU_SWIGLU;
    /* F32/F16 (and everything with APR_CUDA_GEMV1=0): 2 rows a warp in
     * decode, 2 chunks of each in flight, 4 when rows are long (over 2048
     * weights: more than 64 chunks of 32) */
    if (!c->tune.gemv1_off) {
        const int rc = gemv1(seg, n_seg, a, ntok, c);
        if (rc <= 0) return rc;
    }
    if (a->rms || seg[0].amax) return -1; /* only gemv1 applies the norm's 1/rms, and has the argmax */
    const int per_group = swiglu ? 1 : ntok == 1 ? 2 : 1; /* rows a warp writes */
    gemv_params p = {};
    if (gemv_setup(seg, n_seg, ntok, a->ld, a->qk != NULL, per_group, p)) return -1;
    p.a = act_of(a);
    const unsigned gy = (unsigned)((p.rows + GEMV_WARPS - 1) / GEMV_WARPS);
    const dim3 block(GEMV_WARPS * 32);
    const bool long_rows = max_n_in(seg, n_seg) > 2048;
#define GEMV(NT, U, NR, GX)                                                                 \
    do {                                                                                    \
        if (swiglu) launch(c, gemv_kernel<NT, U, 2, true>, dim3(GX, gy), block, p);          \
        else launch(c, gemv_kernel<NT, U, NR, false>, dim3(GX, gy), block, p);               \
    } while (0)
    if (ntok == 1) {
        if (long_rows) GEMV(1, 4, 2, 1);
        else GEMV(1, 2, 2, 1);
    } else if (ntok == 2) GEMV(2, 2, 1, 1);
    else if (ntok <= 4) GEMV(4, 1, 1, 1);
    else GEMV(8, 1, 1, (unsigned)((ntok + 7) / 8));
#undef GEMV
    return 0;
}

/* APR_CUDA_NORM_GEMV=0 (apr_cu_tune.norm_gemv_off): q/k/v after the
 * norm/quantize kernel, as before apr_cu_gemv_norm (measurement). */
/* One warp a row, one chunk a lane; NT tokens a tile. */
template <int NT>
static void launch_norm(const apr_cu_ctx *c, dim3 grid, size_t smem, const gemv_params &p, uint32_t types)
{
    constexpr int MINB = NT >= 4 ? 2 : 3;
    constexpr uint32_t KQ = TYPE_BIT(APR_TYPE_Q4_K) | TYPE_BIT(APR_TYPE_Q6_K),
                       Q0 = TYPE_BIT(APR_TYPE_Q5_0) | TYPE_BIT(APR_TYPE_Q8_0);
    const dim3 block(GEMV_WARPS * 32);
    if constexpr (NT == 1) {
        if (!c->tune.gemv1_anytype && (types & ~KQ) == 0) { /* Q4_K, Q6_K or both */
            launch_smem(c, smem, gemv1_kernel<1, 1, 1, false, MINB, KQ, true>, grid, block, p);
            return;
        }
        if (!c->tune.gemv1_anytype && (types & ~Q0) == 0) { /* the 0.5B's Q5_0 + Q8_0 */
            launch_smem(c, smem, gemv1_kernel<1, 1, 1, false, MINB, Q0, true>, grid, block, p);
            return;
        }
    }
    launch_smem(c, smem, gemv1_kernel<1, 1, NT, false, MINB, 0, true>, grid, block, p);
}

extern "C" int apr_cu_gemv_norm(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_quant_src *src, int ntok,
                                const apr_cu_ctx *c)
{
    if (n_seg < 1 || n_seg > APR_CU_MAX_SEG || !src || !src->x || !src->w || src->n <= 0 || ntok < 1) return -1;
    if (c->tune.gemv1_off || c->tune.norm_gemv_off || src->rows || ntok >= APR_CU_MMA_MIN_TOK || src->n % 128 ||
        src->n > NRM_MAX_N || src->ldx % 4 || ((uintptr_t)src->x | (uintptr_t)src->w) % 16)
        return 1;
    int nch = 0;
    uint32_t types = 0;
    for (int i = 0; i < n_seg; i++) {
        const uint32_t t = seg[i].w.type;
        if ((t != APR_TYPE_Q4_K && t != APR_TYPE_Q6_K && t != APR_TYPE_Q4_0 && t != APR_TYPE_Q5_0 &&
             t != APR_TYPE_Q8_0) ||
            seg[i].mode != APR_CU_STORE || seg[i].w.n_in != src->n)
            return 1;
        nch = max(nch, chunks_of(t, src->n));
        types |= TYPE_BIT(t);
    }
    gemv_params p = {};
    if (gemv_setup(seg, n_seg, ntok, src->ldx, true, 1, p)) return -1;
    p.nrm = nrm_dev{src->x, src->w, src->eps, src->n, src->ldx, 0};
    p.early = c->early;
    /* Only products that one warp a row covers in one chunk a lane (rows of
     * up to 1024) and whose blocks fit on the GPU at once: every block stages
     * the row, and what that adds to a block's latency pays only where the
     * product is one round of loads a lane in one wave. H100, decode against
     * the norm kernel + gemv1: 0.5B (896 wide, 144 blocks) 1773-1781 ->
     * 1936-1943 tok/s; 1.5B (1536, 48 chunks) at one warp a row, two chunks
     * a lane: 1147-1148 -> 1106-1130, at two warps a row (512 blocks, two
     * waves) 1143-1150 -> 1125-1135; 7B (3584, 1152 blocks) 452-455 ->
     * 412-425. The choice depends on the rows only, so every step size of a
     * model takes the same path. */
    if (nch > 32 || (p.rows + GEMV_WARPS - 1) / GEMV_WARPS > 3 * apr_cu_sms(c)) return 1;
    const int nt = ntok == 1 ? 1 : ntok == 2 ? 2 : ntok <= 4 ? 4 : 8;
    p.nrm.pitch = src->n + src->n / 4; /* the padding: 4 floats after every 16 */
    const size_t smem = (size_t)nt * p.nrm.pitch * sizeof(float); /* at most 40 KB */
    const dim3 grid((unsigned)((p.rows + GEMV_WARPS - 1) / GEMV_WARPS), (unsigned)((ntok + nt - 1) / nt));
    if (nt == 1) launch_norm<1>(c, grid, smem, p, types);
    else if (nt == 2) launch_norm<2>(c, grid, smem, p, types);
    else if (nt == 4) launch_norm<4>(c, grid, smem, p, types);
    else launch_norm<8>(c, grid, smem, p, types);
    return 0;
}

/* ------------------------------------ the o product + the next norm's quantize */
/* apr_cu_gemv_onorm: a block of ON_WARPS warps owns 32 rows of x (one
 * 32-group of the norm's output), two a warp; lane l takes chunks l and
 * l + 32 of both rows, all loaded before the wait. After the sums, warp t of
 * the block takes token t's 32 new x: x * g quantized as q8_store does, and
 * the group's sum of squares. The norm's 1/rms is the same for every
 * element of the row, so its consumer multiplies its finished sums by it
 * (rms_finish): no kernel waits for the whole row before quantizing, and no
 * block waits for another. */
#define ON_WARPS 16
struct onorm_dev {
    const float *g;
    int8_t *q;
    float2 *ds;
    float *part;
    int ld;
};

template <class K, int U, int NT>
static __global__ void __launch_bounds__(ON_WARPS * 32, 1)
    gemv_onorm_kernel(const __grid_constant__ gemv_params p, const onorm_dev on)
{
    static_assert(NT <= ON_WARPS, "a warp a token quantizes");
    if (p.early) griddep_trigger();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const seg_dev &s = p.seg[0];
    const int rb = blockIdx.x * 32, r0 = rb + 2 * warp, t0 = blockIdx.y * NT, nt = min(NT, p.ntok - t0);
    int tt[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) tt[t] = min(t0 + t, p.ntok - 1); /* past the batch: throwaway sums */
    const int nch = K::chunks(s.n_in);
    const size_t nbt = K::blocks(s.n_in, s.n_out);
    typename K::W w[2][U];
#pragma unroll
    for (int u = 0; u < U; u++)
#pragma unroll
        for (int i = 0; i < 2; i++) w[i][u] = K::load(s.w, nbt, r0 + i, s.n_in, min(lane + 32 * u, nch - 1));
    const float ge = on.g[rb + lane]; /* a constant: loaded while the previous kernel finishes */
    griddep();
    float xr[2][NT]; /* lane 0: the residual rows' elements, fetched before the sums (as gemv1_row) */
    if (lane == 0)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            xr[0][t] = s.out[(size_t)tt[t] * s.ldo + r0];
            xr[1][t] = s.out[(size_t)tt[t] * s.ldo + r0 + 1];
        }
    float acc[2][NT];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[i][t] = 0.f;
#pragma unroll
    for (int u = 0; u < U; u++)
        if (lane + 32 * u < nch)
#pragma unroll
            for (int i = 0; i < 2; i++) K::template dot<NT>(w[i][u], lane + 32 * u, p.a, tt, acc[i]);
    __shared__ float nx[NT][32];
#pragma unroll
    for (int t = 0; t < NT; t++)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const float v = warp_sum(acc[i][t]);
            if (lane == 0 && t < nt) {
                const float xn = xr[i][t] + v; /* APR_CU_ADD, as gemv1_store */
                s.out[(size_t)(t0 + t) * s.ldo + r0 + i] = xn;
                nx[t][2 * warp + i] = xn;
            }
        }
    __syncthreads();
    if (warp >= nt) return;
    const int t = t0 + warp;
    const float xn = nx[warp][lane], z = xn * ge;
    const float ss = warp_sum(xn * xn);
    const unsigned full = 0xffffffffu;
    const float amax = __uint_as_float(__reduce_max_sync(full, __float_as_uint(fabsf(z))));
    const float d = amax / 127.f, id = amax != 0.f ? 127.f / amax : 0.f;
    const int q = __float2int_rn(z * id);
    on.q[(size_t)t * on.ld + rb + lane] = (int8_t)q;
    const int sum = __reduce_add_sync(full, q);
    if (lane == 0) {
        on.ds[(size_t)t * (on.ld / 32) + blockIdx.x] = make_float2(__half2float(__float2half_rn(d)), (float)sum);
        on.part[(size_t)t * (on.ld / 32) + blockIdx.x] = ss;
    }
}

template <class K, int U>
static void launch_onorm(const apr_cu_ctx *c, dim3 grid, int nt, const gemv_params &p, const onorm_dev &on)
{
    const dim3 block(ON_WARPS * 32);
    if (nt == 1) launch(c, gemv_onorm_kernel<K, U, 1>, grid, block, p, on);
    else if (nt == 2) launch(c, gemv_onorm_kernel<K, U, 2>, grid, block, p, on);
    else if (nt == 4) launch(c, gemv_onorm_kernel<K, U, 4>, grid, block, p, on);
    else launch(c, gemv_onorm_kernel<K, U, 8>, grid, block, p, on);
}

extern "C" int apr_cu_gemv_onorm(const apr_cu_gemv_seg *seg, const apr_cu_act *a, int ntok, const float *g,
                                 const apr_cu_act *out, const apr_cu_ctx *c)
{
    if (!seg || !a || !g || !out || ntok < 1 || !out->q0 || !out->ds0 || !out->rms || out->ld % 32) return -1;
    const apr_cu_weight *w = &seg->w;
    const uint32_t t = w->type;
    if (c->tune.gemv1_off || ntok >= APR_CU_MMA_MIN_TOK || seg->mode != APR_CU_ADD || w->n_out % 32 ||
        w->n_out > out->ld || out->rms_n != w->n_out || a->rms ||
        (t != APR_TYPE_Q4_K && t != APR_TYPE_Q6_K && t != APR_TYPE_Q4_0 && t != APR_TYPE_Q5_0 && t != APR_TYPE_Q8_0))
        return 1;
    const int nch = chunks_of(t, w->n_in);
    if (nch > 64) return 1;
    gemv_params p = {};
    if (gemv_setup(seg, 1, ntok, a->ld, a->qk != NULL, 1, p)) return -1;
    p.a = act_of(a);
    p.early = c->early;
    const onorm_dev on = {g, out->q0, (float2 *)out->ds0, out->rms, out->ld};
    const int nt = ntok == 1 ? 1 : ntok == 2 ? 2 : ntok <= 4 ? 4 : 8; /* gemv1's tiles */
    const dim3 grid((unsigned)(w->n_out / 32), (unsigned)((ntok + nt - 1) / nt));
#define ONORM(KT)                                              \
    do {                                                        \
        if (nch <= 32) launch_onorm<KT, 1>(c, grid, nt, p, on); \
        else launch_onorm<KT, 2>(c, grid, nt, p, on);           \
    } while (0)
    switch (t) {
    case APR_TYPE_Q4_K: ONORM(K_Q4_K); break;
    case APR_TYPE_Q6_K: ONORM(K_Q6_K); break;
    case APR_TYPE_Q5_0: ONORM(K_Q_0<APR_TYPE_Q5_0>); break;
    case APR_TYPE_Q4_0: ONORM(K_Q_0<APR_TYPE_Q4_0>); break;
    default: ONORM(K_Q_0<APR_TYPE_Q8_0>); break;
    }
#undef ONORM
    return 0;
}

/* Most shared memory a fused GEMV block may ask for without opting in. */
#define PRO_SMEM_MAX (48 * 1024)

/* The fused GEMV's kernels by index: 2 * (1, 2, 4, 8 warps a row as 0..3)
 * + SwiGLU. */
static const void *pro_kernel(int ki)
{
    switch (ki) {
    case 0: return (const void *)gemv_pro_kernel<1, false>;
    case 1: return (const void *)gemv_pro_kernel<1, true>;
    case 2: return (const void *)gemv_pro_kernel<2, false>;
    case 3: return (const void *)gemv_pro_kernel<2, true>;
    case 4: return (const void *)gemv_pro_kernel<4, false>;
    case 5: return (const void *)gemv_pro_kernel<4, true>;
    case 6: return (const void *)gemv_pro_kernel<8, false>;
    default: return (const void *)gemv_pro_kernel<8, true>;
    }
}

/* How many blocks of fused kernel ki the GPU holds at once, with the most
 * shared memory a launch may ask for. */
static int pro_resident(int ki, int sms)
{
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pro_kernel(ki), GEMV_WARPS * 32, PRO_SMEM_MAX) !=
        cudaSuccess)
        per_sm = 0;
    return sms * (per_sm > 0 ? per_sm : 1);
}

static int env_int(const char *name, int dflt)
{
    const char *e = getenv(name);
    return e && *e ? atoi(e) : dflt;
}

extern "C" int apr_cu_sms(const apr_cu_ctx *c)
{
    if (c && c->tune.sms > 0) return c->tune.sms;
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        n = 0;
    return n > 0 ? n : 1;
}

/* Measurement knobs: APR_CUDA_PREFETCH=N prefetches N row sets a block in the
 * fused GEMV (0: none; default PRO_PREFETCH_GROUPS); APR_CUDA_PRO_GRID=N caps
 * its grid at N blocks a multiprocessor (fewer leave room for the next
 * kernel's blocks to start early and prefetch), 0 launches one block per row
 * set (every block quantizes); default: as many as fit. The rest: kernels.h. */
extern "C" void apr_cu_tune_env(apr_cu_tune *t)
{
    memset(t, 0, sizeof *t);
    const int prefetch = env_int("APR_CUDA_PREFETCH", -1), grid = env_int("APR_CUDA_PRO_GRID", -1);
    t->pro_prefetch = prefetch < 0 ? 0 : prefetch == 0 ? -1 : prefetch;
    t->pro_grid = grid < 0 ? 0 : grid == 0 ? -1 : grid;
    t->gemv1_off = env_int("APR_CUDA_GEMV1", 1) == 0;
    t->gemv1_anytype = env_int("APR_CUDA_GEMV1_ANYTYPE", 0) != 0;
    t->rows2_off = env_int("APR_CUDA_GEMV1_ROWS2", 1) == 0;
    t->norm_gemv_off = env_int("APR_CUDA_NORM_GEMV", 1) == 0;
    t->pair48_off = env_int("APR_CUDA_PAIR48", 1) == 0;
    t->mma_off = env_int("APR_CUDA_MMA", 1) == 0;
    t->gemv1_minb = env_int("APR_CUDA_GEMV1_MINB", 0); /* gemv1 takes 3 or 4, anything else as 0 */
    t->sms = apr_cu_sms(NULL);
    for (int i = 0; i < 8; i++) t->pro_resident[i] = pro_resident(i, t->sms);
}

extern "C" int apr_cu_gemv_fused(const apr_cu_gemv_seg *seg, int n_seg, const apr_cu_quant_src *src,
                                 const apr_cu_ctx *c)
{
    if (n_seg < 1 || n_seg > APR_CU_MAX_SEG || !src || !src->x || src->n <= 0) return -1;
    if (seg[0].amax) return 1; /* the norm kernel and apr_cu_gemv take it */
    const int n = src->n;
    bool need_k = false, need_0 = false;
    for (int i = 0; i < n_seg; i++) {
        const uint32_t t = seg[i].w.type;
        if (t == APR_TYPE_Q4_K || t == APR_TYPE_Q6_K) need_k = true;
        else if (t == APR_TYPE_Q4_0 || t == APR_TYPE_Q5_0 || t == APR_TYPE_Q8_0) need_0 = true;
        else return 1; /* F32/F16 read f32 activations: not fused */
        if (seg[i].w.n_in != n) return -1;
    }
    /* the prologue's float4 loads; Q8_K-style needs whole 256-groups */
    if (n % 32 || (need_k && n % 256) || src->ldx % 4 || ((uintptr_t)src->x & 15) || ((uintptr_t)src->w & 15))
        return 1;
    const int npad = (n + 255) / 256 * 256;
    gemv_params p = {};
    p.pro = pro_dev{*src, -1, -1, -1, -1, 1};
    int off = 0;
    if (need_k) {
        p.pro.off_qk = off;
        p.pro.off_dsk = off + npad;
        off += npad + npad / 32 * 8;
    }
    if (need_0) {
        p.pro.off_q0 = off;
        p.pro.off_ds0 = off + npad;
        off += npad + npad / 32 * 8;
    }
    if (off > PRO_SMEM_MAX) return 1;
    const bool swiglu = seg[0].mode == APR_CU_SWIGLU;
    if (gemv_setup(seg, n_seg, 1, npad, need_k, 1, p)) return -1;
    int nch = 0;
    for (int i = 0; i < n_seg; i++) nch = max(nch, chunks_of(seg[i].w.type, n));
    const apr_cu_tune *t = &c->tune;
    const int sms = apr_cu_sms(c), wpr = gemv1_wpr(nch, p.rows, sms, !t->pair48_off && n_seg == 1 && !swiglu);
    const int ki = 2 * (wpr == 1 ? 0 : wpr == 2 ? 1 : wpr == 4 ? 2 : 3) + (swiglu ? 1 : 0);
    p.pro.prefetch = t->pro_prefetch == 0 ? PRO_PREFETCH_GROUPS : max(t->pro_prefetch, 0);
    const int blocks = (p.rows + GEMV_WARPS / wpr - 1) / (GEMV_WARPS / wpr);
    const int resident = t->pro_resident[ki] > 0 ? t->pro_resident[ki] : pro_resident(ki, sms);
    const int cap = t->pro_grid == 0 ? resident : t->pro_grid < 0 ? blocks : min(t->pro_grid * sms, resident);
    launch_smem(c, (size_t)off, (void (*)(gemv_params))pro_kernel(ki), dim3((unsigned)min(blocks, cap)),
                dim3(GEMV_WARPS * 32), p);
    return 0;
}

/* ------------------------------------------- bias + RoPE + KV append */

/* One RoPE rotation, written out so that both paths (qkv_post_kernel for
 * steps of several entries, rope_decode inside one-token attention) round
 * exactly alike: the compiler may not contract these into different fused
 * multiply-adds, so a sequence's keys, and its tokens, do not depend on
 * whether its step had company. */
static __device__ __forceinline__ float rope_theta(int p, int i, float theta_scale)
{
    float theta = (float)p;
    for (int k = 0; k < i; k++) theta = __fmul_rn(theta, theta_scale);
    return theta;
}

static __device__ __forceinline__ void rope_rotate_cs(float x0, float x1, float c, float s, float &y0, float &y1)
{
    y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    y1 = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

static __device__ __forceinline__ void rope_rotate(float x0, float x1, float theta, float &y0, float &y1)
{
    rope_rotate_cs(x0, x1, cosf(theta), sinf(theta), y0, y1);
}

static __global__ void qkv_post_kernel(float *qkv, int ld, const float *bq, const float *bk, const float *bv,
                                       const int32_t *pos, const int32_t *seq, apr_cu_attn_shape sh,
                                       uint16_t *kc, uint16_t *vc)
{
    griddep();
    const int t = blockIdx.x, sq = seq[t];
    if (sq < 0) return;
    const int p = pos[t], hd = sh.head_dim;
    const int q_dim = sh.n_head * hd, kv_dim = sh.n_head_kv * hd;
    float *row = qkv + (size_t)t * ld;
    if (bq) {
        for (int i = threadIdx.x; i < q_dim + 2 * kv_dim; i += blockDim.x)
            row[i] += i < q_dim ? bq[i] : i < q_dim + kv_dim ? bk[i - q_dim] : bv[i - q_dim - kv_dim];
        __syncthreads();
    }
    const int half = sh.rope_dim / 2, pairs = (sh.n_head + sh.n_head_kv) * half;
    for (int pi = threadIdx.x; pi < pairs; pi += blockDim.x) {
        const int h = pi / half, i = pi % half;
        float *v = row + (size_t)h * hd; /* k heads follow the q heads */
        const int ia = sh.neox ? i : 2 * i, ib = sh.neox ? i + half : 2 * i + 1;
        rope_rotate(v[ia], v[ib], rope_theta(p, i, sh.theta_scale), v[ia], v[ib]);
    }
    __syncthreads();
    const size_t off = (size_t)sq * sh.seq_stride + (size_t)p * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kc[off + i] = f2h(row[q_dim + i]);
        vc[off + i] = f2h(row[q_dim + kv_dim + i]);
    }
}

extern "C" void apr_cu_qkv_post(float *qkv, int ldqkv, const float *bq, const float *bk, const float *bv,
                                const int32_t *pos, const int32_t *seq, int ntok, const apr_cu_attn_shape *sh,
                                uint16_t *k_cache, uint16_t *v_cache, const apr_cu_ctx *c)
{
    if (ntok <= 0) return;
    launch(c, qkv_post_kernel, dim3(ntok), dim3(512), qkv, ldqkv, bq, bk, bv, pos, seq, *sh, k_cache, v_cache);
}

/* --------------------------------------------------------- attention */
/* One block per (token, q head, chunk of the context); its ATT_WARPS warps
 * take turns over tiles of 32 keys (warp w: tiles w, w+ATT_WARPS, ...), each
 * with its own online softmax; the warps' states are merged at the end. In a
 * tile, lane j scores key j (its whole K row loaded before the dot product);
 * then every lane accumulates the tile's V rows for its DPL dimensions, 16
 * rows loaded at a time. Key indices past the query's position are clamped to
 * it and their weights are zero, so no lane branches around a load. Prefill
 * has blocks enough with one chunk (the whole context); steps of up to 16
 * entries split the context into chunks of 512 keys (split_dev) so that a
 * long context keeps the GPU busy in decode. */

#define ATT_WARPS 16
#define ATT_NARROW_SPAN 256 /* keys a block walks in narrow tiles at most (attention_kernel) */
static_assert(ATT_WARPS * 32 >= 512, "rope_decode gives threads 256 + i the v elements (head_dim <= 256)");

/* DPL consecutive halves of a V row as floats. */
template <int DPL>
static __device__ __forceinline__ void load_v(const uint16_t *p, float (&out)[DPL])
{
    if (DPL == 1) {
        out[0] = h2f(p[0]);
    } else if (DPL == 2) {
        const float2 f = half2_bits(*(const uint32_t *)p);
        out[0] = f.x;
        out[DPL - 1] = f.y;
    } else if (DPL == 4) {
        const uint2 u = *(const uint2 *)p;
        const float2 f0 = half2_bits(u.x), f1 = half2_bits(u.y);
        out[0] = f0.x, out[1 % DPL] = f0.y, out[2 % DPL] = f1.x, out[3 % DPL] = f1.y;
    } else {
        const uint4 u = *(const uint4 *)p;
#pragma unroll
        for (int i = 0; i < DPL / 2; i++) {
            const float2 f = half2_bits(u4get(u, i % 4));
            out[(2 * i) % DPL] = f.x;
            out[(2 * i + 1) % DPL] = f.y;
        }
    }
}

/* The decode step's own key and value (ROPE variant): biases, rotation and
 * cache append of one token done by the attention blocks themselves. */
struct rope_dev {
    const float *bq, *bk, *bv;
    uint16_t *kc, *vc; /* the same cache the kernel reads, written at the token's position */
};

/* Bias and RoPE of this block's q head and of its kv head's new key, as
 * qkv_post_kernel computes them for the whole row (same arithmetic); the new
 * key and value go to shared memory as F16 and, from the first q head of each
 * kv group, to the cache. The block reads position p from shared memory, never
 * from the cache, so no block waits for another's write.
 *
 * Split in two so that what does not depend on the q/k/v product (angles,
 * sines and cosines, biases) is done before the kernel waits for it. Threads
 * 0 .. rope_dim - 1 rotate one pair each (q pairs, then k pairs); threads
 * 256 + i (i < hd) take element i of v and, past rope_dim, of q and k. */
struct rope_pre {
    float c, s, b0, b1, bq, bk, bv;
    int which, i; /* threads < rope_dim: q (0) or k (1), and the pair (integer divisions kept before the wait) */
};

static __device__ __forceinline__ rope_pre rope_prepare(const apr_cu_attn_shape &sh, const rope_dev &rd, int h, int kvh,
                                                        int p)
{
    const int hd = sh.head_dim, half = sh.rope_dim / 2, tid = threadIdx.x; /* blockDim.x >= 256 + hd */
    rope_pre r = {1.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0, 0};
    if (tid < 2 * half) {
        const int which = tid / half, i = tid % half;
        r.which = which;
        r.i = i;
        const int ia = sh.neox ? i : 2 * i, ib = sh.neox ? i + half : 2 * i + 1;
        const float theta = rope_theta(p, i, sh.theta_scale);
        r.c = cosf(theta);
        r.s = sinf(theta);
        const float *b = which ? rd.bk : rd.bq;
        const int b0 = (which ? kvh : h) * hd;
        if (b) {
            r.b0 = b[b0 + ia];
            r.b1 = b[b0 + ib];
        }
    } else if (tid >= 256 && tid < 256 + hd) {
        const int i = tid - 256;
        if (rd.bv) r.bv = rd.bv[kvh * hd + i];
        if (i >= sh.rope_dim && rd.bq) r.bq = rd.bq[h * hd + i];
        if (i >= sh.rope_dim && rd.bk) r.bk = rd.bk[kvh * hd + i];
    }
    return r;
}

static __device__ __forceinline__ float round_half(float x) { return __half2float(__float2half_rn(x)); }

/* q's element i in attention's shared copy: 4 floats of padding after every
 * 1 << qsh (attention_kernel's narrow tiles) */
static __device__ __forceinline__ int q_at(int i, int qsh) { return i + ((i >> qsh) << 2); }

/* The caller synchronizes the block before qs, knew and vnew are read. */
static __device__ __forceinline__ void rope_decode(const float *row, const apr_cu_attn_shape &sh, const rope_dev &rd,
                                                   const rope_pre &r, int h, int kvh, int p, int sq, bool writer,
                                                   float *qs, int qsh, uint16_t *knew, uint16_t *vnew)
{
    const int hd = sh.head_dim, q_dim = sh.n_head * hd, kv_dim = sh.n_head_kv * hd, tid = threadIdx.x;
    const int half = sh.rope_dim / 2;
    const size_t off = (size_t)sq * sh.seq_stride + (size_t)p * kv_dim + (size_t)kvh * hd;
    if (tid < 2 * half) {
        const int which = r.which, i = r.i;
        const int ia = sh.neox ? i : 2 * i, ib = sh.neox ? i + half : 2 * i + 1;
        const float *src = row + (which ? q_dim + kvh * hd : h * hd);
        const bool has_b = which ? rd.bk != NULL : rd.bq != NULL;
        const float x0 = has_b ? src[ia] + r.b0 : src[ia], x1 = has_b ? src[ib] + r.b1 : src[ib];
        float y0, y1;
        rope_rotate_cs(x0, x1, r.c, r.s, y0, y1);
        if (!which) {
            qs[q_at(ia, qsh)] = round_half(y0);
            qs[q_at(ib, qsh)] = round_half(y1);
        } else {
            knew[ia] = f2h(y0);
            knew[ib] = f2h(y1);
            if (writer) {
                rd.kc[off + ia] = knew[ia];
                rd.kc[off + ib] = knew[ib];
            }
        }
    } else if (tid >= 256 && tid < 256 + hd) {
        const int i = tid - 256;
        const float v = row[q_dim + kv_dim + kvh * hd + i];
        vnew[i] = f2h(rd.bv ? v + r.bv : v);
        if (writer) rd.vc[off + i] = vnew[i];
        if (i >= sh.rope_dim) { /* dimensions past the rotated ones */
            const float q = row[h * hd + i], k = row[q_dim + kvh * hd + i];
            qs[q_at(i, qsh)] = round_half(rd.bq ? q + r.bq : q);
            knew[i] = f2h(rd.bk ? k + r.bk : k);
            if (writer) rd.kc[off + i] = knew[i];
        }
    }
}

/* The context split across blocks (flash-decoding), for steps of up to
 * APR_CU_ATT_SPLIT_TOK entries: block z takes keys [z chunk, (z + 1) chunk);
 * a token whose keys span several chunks gets each chunk's softmax state
 * (max, sum, unnormalized V sums) in part, and the last of its blocks to
 * finish (count) merges them in chunk order. chunk is a multiple of
 * ATT_WARPS * 32, so a warp's 32-key tiles never straddle two blocks; a
 * chunk of at least the context is the unsplit kernel. */
struct split_dev {
    float *part;     /* [APR_CU_ATT_SPLIT_TOK][n_head][n_chunks][2 + hd] */
    unsigned *count; /* [APR_CU_ATT_SPLIT_TOK][n_head], zero between launches */
    int chunk, n_chunks;
};

/* HD: the head dimension when known at compile time (loops unroll fully), 0
 * otherwise. ROPE: one decode token whose q/k/v row is not yet biased, rotated
 * or appended (rope_decode); positions before p come from the cache. SPLIT:
 * the context split across blockIdx.z (split_dev); without it the kernel is
 * the plain one, as prefill-sized steps want it (the split's bookkeeping cost
 * the 512-token step 2%). */
template <int DPL, int HD, bool ROPE, bool SPLIT>
static __global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_kernel(const float *q, int ldq, const uint16_t *kc, const uint16_t *vc, const int32_t *pos,
                     const int32_t *seq, apr_cu_attn_shape sh, float scale, float *out, int ldo, rope_dev rd,
                     split_dev sp, q8_dev q8, int early)
{
    if (early) griddep_trigger(); /* apr_cu_ctx.early: the o product may launch now */
    const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hd = HD ? HD : sh.head_dim, kv_dim = sh.n_head_kv * hd;
    const int k0 = SPLIT ? blockIdx.z * sp.chunk : 0; /* this block's first key */
    /* Narrow tiles (heads of 64 and 128, a block's span of keys up to
     * ATT_NARROW_SPAN): a warp takes 8 keys a pass, 4 lanes a key with HD / 4
     * dimensions each (two shuffles finish a key's dot product). With 32 keys
     * a warp, one lane a key, a context of a hundred keys left most of the 16
     * warps idle and each busy one walked a 128-long chain; longer spans keep
     * the wide tiles (4 passes of 8 keys cost more than one of 32: 1.5B after
     * 2000 tokens 752 -> 632 tok/s with narrow tiles everywhere). */
    constexpr bool NARROW = HD == 64 || HD == 128;
    constexpr int DLN = NARROW ? HD / 4 : 8; /* a narrow lane's dimensions */
    auto narrow_at = [&](int pp) { /* from the token's position: the same choice before and after the wait */
        return NARROW && (SPLIT ? min(pp, k0 + sp.chunk - 1) : pp) - k0 + 1 <= ATT_NARROW_SPAN;
    };
    /* the first tile's key (this lane's part), loaded before the wait; heads
     * that have narrow tiles take only those into registers (a whole 128-key
     * row in 16 more registers spilled the kernel), the wide ones towards L1.
     * Heads of 64 load the narrow tile's values into registers too (vpre:
     * the lane's two halves of each of the warp's 8 rows, as F16 pairs;
     * H100, 0.5B decode +2%);
     * heads of 128 prefetch them (in 16 more registers the 1.5B and the 3B
     * lost 1%). */
    constexpr bool VPRE = ROPE && NARROW && HD == 64;
    uint4 kpre[ROPE && HD ? (NARROW ? DLN / 8 : HD / 8) : 1];
    uint32_t vpre[VPRE ? 8 : 1];
    bool pre = false;
    rope_pre rp = {};
    int sq0 = -1, p0 = 0; /* ROPE: the token's sequence and position, read once */
    bool writer = false;   /* ROPE: this block appends the token's key and value to the cache */
    int nc0 = 1;           /* ROPE: the token's chunks (integer divisions kept before the wait, as kvh) */
    const int kvh = h / (sh.n_head / sh.n_head_kv);
    if (ROPE) {
        /* One decode token: the cache rows before its position were written
         * by earlier steps and the batch block by the graph's first copy, so
         * the warp's first tile of keys (into registers) and values (towards
         * L1) are fetched while the q/k/v product finishes, as are
         * RoPE's angles and the biases: at short contexts the tile's DRAM
         * round trips and the rotation's arithmetic were most of this kernel. */
        sq0 = seq[t];
        p0 = pos[t];
        const bool nar0 = narrow_at(p0);
        const int j = k0 + (nar0 ? warp * 8 + (lane >> 2) : warp * 32 + lane);
        if (SPLIT && k0 > p0 && blockIdx.z > 0) return; /* a chunk past the token's keys (chunk 0 zeroes padding) */
        rp = rope_prepare(sh, rd, h, kvh, p0);
        nc0 = SPLIT ? p0 / sp.chunk + 1 : 1;
        /* the first q head of each kv group, in the token's last chunk */
        writer = (!SPLIT || (int)blockIdx.z == nc0 - 1) && h % (sh.n_head / sh.n_head_kv) == 0;
        if (sq0 >= 0 && j < p0) {
            const size_t off = (size_t)sq0 * sh.seq_stride + (size_t)j * kv_dim +
                               (size_t)kvh * hd + (nar0 ? (lane & 3) * DLN : 0);
            const bool in_regs = HD && (nar0 || !NARROW);
            if (in_regs) {
#pragma unroll
                for (int d8 = 0; d8 < (int)(sizeof kpre / sizeof kpre[0]); d8++)
                    kpre[d8] = ((const uint4 *)(kc + off))[d8];
                pre = true;
            }
            for (int b = 0; b < 2 * (nar0 ? DLN : hd); b += 128) {
                if (!in_regs) asm volatile("prefetch.global.L1 [%0];" ::"l"((const uint8_t *)(kc + off) + b));
                if (!(VPRE && nar0)) asm volatile("prefetch.global.L1 [%0];" ::"l"((const uint8_t *)(vc + off) + b));
            }
        }
        if constexpr (VPRE) {
            if (sq0 >= 0 && nar0) { /* rows past the position are clamped to one before it (unused) */
                const uint16_t *vb0 = vc + (size_t)sq0 * sh.seq_stride +
                                      (size_t)kvh * hd + min(lane * DPL, hd - DPL);
#pragma unroll
                for (int jj = 0; jj < 8; jj++)
                    vpre[jj] = *(const uint32_t *)(vb0 + (size_t)min(k0 + warp * 8 + jj, max(p0 - 1, 0)) * kv_dim);
            }
        }
    }
    griddep();
    float *o = out + (size_t)t * ldo + (size_t)h * hd;
    /* ROPE: sq0 and p0 (read again after the wait they were no L1 hits:
     * 603 cycles p50 at the 0.5B, stamped) */
    const int sq = ROPE ? sq0 : seq[t];
    if (sq < 0) {
        if (!SPLIT || blockIdx.z == 0) {
            for (int i = threadIdx.x; i < hd; i += blockDim.x) o[i] = 0.f;
            q8_store(q8, t, h * hd, 0.f, hd);
        }
        return;
    }
    const int p = ROPE ? p0 : pos[t];
    if (SPLIT && k0 > p) return; /* a chunk past the token's keys */
    /* the block's last key; the chunks of the token */
    const int kend = SPLIT ? min(p, k0 + sp.chunk - 1) : p, nc = ROPE ? nc0 : SPLIT ? p / sp.chunk + 1 : 1;
    /* q; for narrow tiles each lane's quarter 4 floats apart from the next:
     * the 4 lanes of a key read the same offset of 4 quarters at once, which
     * without the padding were 128 (64) bytes apart, one bank, a 4-way (2-way)
     * conflict on every read of the dot products. The wide tiles' lanes all
     * read one element at a time (a broadcast): no padding. */
    const bool narrow = narrow_at(p);
    const int qsh = NARROW && narrow ? (HD == 128 ? 5 : 4) : 30;
    __shared__ __align__(16) float qs[256 + (NARROW ? 4 * 256 / DLN : 0)];
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wacc[ATT_WARPS][256];
    __shared__ __align__(16) uint16_t knew[ROPE ? 256 : 8], vnew[ROPE ? 256 : 8];
    if (ROPE) {
        rope_decode(q + (size_t)t * ldq, sh, rd, rp, h, kvh, p, sq, writer, qs, qsh, knew, vnew);
        __syncthreads();
    } else {
        for (int i = threadIdx.x; i < hd; i += blockDim.x)
            qs[q_at(i, qsh)] = __half2float(__float2half_rn(q[(size_t)t * ldq + (size_t)h * hd + i]));
        __syncthreads();
    }

    const size_t base = (size_t)sq * sh.seq_stride + (size_t)kvh * hd;
    const uint16_t *kb = kc + base, *vb = vc + base;
    /* key/value row j: the cache, or (ROPE) shared memory for the token's own position */
#define KROW(j) (ROPE && (j) == p ? knew : kb + (size_t)(j) * kv_dim)
#define VROW(j) (ROPE && (j) == p ? vnew : vb + (size_t)(j) * kv_dim)
    const int dim0 = min(lane * DPL, hd - DPL); /* lanes past the head read a valid column, unused */
    float m = -INFINITY, l = 0.f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.f;

    /* One pass (narrow tiles, every warp at most one tile of 8 keys: the
     * block's span up to ATT_WARPS * 8 keys): the block's largest score is
     * found first (one barrier, while the values are in flight), so every
     * warp weighs its keys by it and the merge is plain sums, without each
     * warp's rescale factor and its barrier. */
    const bool one = NARROW && narrow && kend - k0 < ATT_WARPS * 8;
    if constexpr (NARROW) {
        if (narrow) {
            const int kk = lane >> 2, part = lane & 3; /* this lane's key of the warp's 8, and its quarter */
            /* the lane's key's dot product with q (its 4 lanes' quarters added) */
            auto kdot = [&](int kt) {
                const int j = kt + kk;
                const uint4 *kr = (const uint4 *)(KROW(min(j, p)) + part * DLN);
                uint4 kv[DLN / 8];
                if (ROPE && pre && kt == k0 + warp * 8) { /* the lanes of the token's own key load it below */
#pragma unroll
                    for (int d8 = 0; d8 < DLN / 8; d8++) kv[d8] = kpre[d8];
                } else {
#pragma unroll
                    for (int d8 = 0; d8 < DLN / 8; d8++) kv[d8] = kr[d8];
                }
                /* explicit fmaf: the same bits in every instantiation (fused or not) */
                const float *qp = qs + part * (DLN + 4); /* q_at(part * DLN) */
                float dot = 0.f;
#pragma unroll
                for (int d8 = 0; d8 < DLN / 8; d8++)
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const float2 kf = half2_bits(u4get(kv[d8], i));
                        dot = fmaf(qp[8 * d8 + 2 * i], kf.x, dot);
                        dot = fmaf(qp[8 * d8 + 2 * i + 1], kf.y, dot);
                    }
                dot = __fadd_rn(dot, __shfl_xor_sync(0xffffffffu, dot, 1));
                return __fadd_rn(dot, __shfl_xor_sync(0xffffffffu, dot, 2));
            };
            /* the tile's 8 value rows, this lane's DPL dimensions of each */
            auto vload = [&](int kt, float (&vv)[8][DPL]) {
                const bool first = VPRE && kt == k0 + warp * 8; /* vpre holds its rows before p */
#pragma unroll
                for (int jj = 0; jj < 8; jj++) {
                    if (first && kt + jj < p) { /* uniform across the warp */
                        const float2 f = half2_bits(vpre[jj % (sizeof vpre / sizeof vpre[0])]);
                        vv[jj][0] = f.x;
                        vv[jj][DPL - 1] = f.y; /* DPL 2 */
                    } else {
                        load_v<DPL>(VROW(min(kt + jj, p)) + dim0, vv[jj]);
                    }
                }
            };
            auto vsum = [&](float pj, const float (&vv)[8][DPL]) {
#pragma unroll
                for (int jj = 0; jj < 8; jj++) {
                    const float pv = __shfl_sync(0xffffffffu, pj, 4 * jj);
#pragma unroll
                    for (int i = 0; i < DPL; i++) acc[i] = fmaf(pv, vv[jj][i], acc[i]);
                }
            };
            if (one) {
                const int kt = k0 + warp * 8;
                const bool has = kt <= kend; /* uniform across the warp */
                float sc = -INFINITY, vv[8][DPL];
                if (has) { /* the values' loads first: in flight through the scores and the barrier */
                    vload(kt, vv);
                    const float dot = kdot(kt);
                    sc = kt + kk <= p ? __fmul_rn(dot, scale) : -INFINITY;
                }
                const float wmax = keys8_max(sc);
                if (lane == 0) wm[warp] = wmax; /* -inf for a warp without keys */
                __syncthreads();
                m = -INFINITY;
#pragma unroll
                for (int w = 0; w < ATT_WARPS; w++) m = fmaxf(m, wm[w]);
                if (has) {
                    const float pj = sc != -INFINITY ? expf(sc - m) : 0.f;
                    l = keys8_sum(pj);
                    vsum(pj, vv);
                }
            } else
                for (int kt = k0 + warp * 8; kt <= kend; kt += ATT_WARPS * 8) {
                    const float dot = kdot(kt);
                    const bool live = kt + kk <= p;
                    const float sc = live ? __fmul_rn(dot, scale) : -INFINITY;
                    /* the 4 lanes of a key hold the same score and weight: the
                     * max and the sum of the warp's 8 keys in three steps (the
                     * bits of the five-step trees over one lane a key) */
                    const float mn = fmaxf(m, keys8_max(sc));
                    const float corr = expf(m - mn); /* 0 while m is -inf */
                    const float pj = live ? expf(sc - mn) : 0.f;
                    l = fmaf(l, corr, keys8_sum(pj)); /* each key once */
#pragma unroll
                    for (int i = 0; i < DPL; i++) acc[i] = __fmul_rn(acc[i], corr);
                    m = mn;
                    float vv[8][DPL];
                    vload(kt, vv);
                    vsum(pj, vv);
                }
        }
    }
    /* the wide tiles: 32 keys a warp a pass, one lane a key */
    if (!narrow)
    for (int kt = k0 + warp * 32; kt <= kend; kt += ATT_WARPS * 32) {
        const uint4 *kr = (const uint4 *)KROW(min(kt + lane, p));
        float dot = 0.f;
        if (HD) {
            uint4 kv[HD / 8 > 0 ? HD / 8 : 1];
            if (!NARROW && ROPE && pre && kt == k0 + warp * 32) { /* lanes whose key is the token's own load it below */
#pragma unroll
                for (int d8 = 0; d8 < HD / 8; d8++) /* (the modulo only keeps dead NARROW code in bounds) */
                    kv[d8] = kpre[d8 % (sizeof kpre / sizeof kpre[0])];
            } else {
#pragma unroll
                for (int d8 = 0; d8 < HD / 8; d8++) kv[d8] = kr[d8];
            }
#pragma unroll
            for (int d8 = 0; d8 < HD / 8; d8++)
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float2 kf = half2_bits(u4get(kv[d8], i));
                    dot += qs[8 * d8 + 2 * i] * kf.x + qs[8 * d8 + 2 * i + 1] * kf.y;
                }
        } else {
#pragma unroll 4
            for (int d8 = 0; d8 < hd / 8; d8++) {
                const uint4 kv = kr[d8];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float2 kf = half2_bits(u4get(kv, i));
                    dot += qs[8 * d8 + 2 * i] * kf.x + qs[8 * d8 + 2 * i + 1] * kf.y;
                }
            }
        }
        const bool live = kt + lane <= p;
        const float sc = live ? dot * scale : -INFINITY;
        const float mn = fmaxf(m, warp_max(sc));
        const float corr = expf(m - mn); /* 0 while m is -inf */
        const float pj = live ? expf(sc - mn) : 0.f;
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] *= corr;
        m = mn;
#pragma unroll
        for (int jb = 0; jb < 32; jb += 16) {
            if (kt + jb > p) break; /* uniform: the warp's whole tile */
            float vv[16][DPL];
#pragma unroll
            for (int j = 0; j < 16; j++) load_v<DPL>(VROW(min(kt + jb + j, p)) + dim0, vv[j]);
#pragma unroll
            for (int j = 0; j < 16; j++) {
                const float pv = __shfl_sync(0xffffffffu, pj, jb + j);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[i] += pv * vv[j][i];
            }
        }
    }
    if (lane == 0) {
        if (!one) wm[warp] = m; /* one pass: wm holds the warps' largest scores, m the block's */
        wl[warp] = l;
    }
    if (lane * DPL < hd)
#pragma unroll
        for (int i = 0; i < DPL; i++) wacc[warp][lane * DPL + i] = acc[i];
    __syncthreads();
    /* warps past the block's last key had none (their m is -inf): not visited */
    const int nw = min(ATT_WARPS, ((kend - k0) >> (narrow ? 3 : 5)) + 1);
    /* Every warp wrote its state, so the threads that merge (the output's
     * hd, and the first ATT_WARPS for the factors) load all of them at once
     * (fully unrolled, the loads independent) and combine those of the nw
     * warps in order: one round of shared memory latency where loops of
     * dependent loads took ~1200 cycles for the output alone; the other
     * warps stay out (the same loads in all 16 warps cost ~700 cycles of
     * shared memory bandwidth). */
    const bool merger = (int)threadIdx.x < max(hd, ATT_WARPS);
    bool live[ATT_WARPS] = {};
    float M = -INFINITY, f[ATT_WARPS] = {}, L = 0.f;
    if (one) { /* every warp's keys weighed by the block's largest score: no factors */
        M = m;
        if (merger)
#pragma unroll
            for (int w = 0; w < ATT_WARPS; w++) {
                live[w] = w < nw;
                f[w] = 1.f;
                const float lw = wl[w];
                if (live[w]) L += lw;
            }
    } else {
        if (merger)
#pragma unroll
            for (int w = 0; w < ATT_WARPS; w++) {
                const float mw = wm[w];
                live[w] = w < nw && mw != -INFINITY;
                if (w < nw) M = fmaxf(M, mw);
            }
        /* each warp's rescale factor once (16 expf a thread were most of the merge) */
        __shared__ float wf[ATT_WARPS];
        if (threadIdx.x < nw) wf[threadIdx.x] = wm[threadIdx.x] != -INFINITY ? expf(wm[threadIdx.x] - M) : 0.f;
        __syncthreads();
        if (merger)
#pragma unroll
            for (int w = 0; w < ATT_WARPS; w++) {
                f[w] = wf[w];
                const float lw = wl[w];
                if (live[w]) L += lw * f[w];
            }
    }
    float *part = sp.part + ((size_t)(t * sh.n_head + h) * sp.n_chunks) * (2 + hd);
    const float inv = L == 0.f ? 0.f : 1.f / L;
    float fin = 0.f; /* thread i's output element (hd <= 256 < the block's threads) */
    if (threadIdx.x < hd) {
        const int i = threadIdx.x;
        float a[ATT_WARPS], v = 0.f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) a[w] = wacc[w][i];
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++)
            if (live[w]) v += a[w] * f[w];
        if (!SPLIT || nc == 1) o[i] = fin = v * inv;
        else part[(size_t)blockIdx.z * (2 + hd) + 2 + i] = v;
    }
    if (!SPLIT || nc == 1) {
        q8_store(q8, t, h * hd, fin, hd);
        return;
    }
    /* several chunks: publish this one's state; the last block of the token's head merges */
    __shared__ bool last;
    if (threadIdx.x == 0) {
        part[(size_t)blockIdx.z * (2 + hd)] = M;
        part[(size_t)blockIdx.z * (2 + hd) + 1] = L;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&sp.count[t * sh.n_head + h], 1u) == (unsigned)nc - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    /* other blocks' writes: read from L2 (__ldcg), never a stale L1 line */
    float Mx = -INFINITY, Lx = 0.f;
    for (int cc = 0; cc < nc; cc++) Mx = fmaxf(Mx, __ldcg(part + (size_t)cc * (2 + hd)));
    for (int cc = 0; cc < nc; cc++)
        Lx += __ldcg(part + (size_t)cc * (2 + hd) + 1) * expf(__ldcg(part + (size_t)cc * (2 + hd)) - Mx);
    const float ix = Lx == 0.f ? 0.f : 1.f / Lx;
    if (threadIdx.x < hd) {
        const int i = threadIdx.x;
        float v = 0.f;
        for (int cc = 0; cc < nc; cc++)
            v += __ldcg(part + (size_t)cc * (2 + hd) + 2 + i) * expf(__ldcg(part + (size_t)cc * (2 + hd)) - Mx);
        o[i] = fin = v * ix;
    }
    q8_store(q8, t, h * hd, fin, hd);
    if (threadIdx.x == 0) sp.count[t * sh.n_head + h] = 0; /* ready for the next launch */
#undef KROW
#undef VROW
}

/* The CPU engine's attention step for step (worker/cpu.c): keys in order, one
 * online-softmax update each, the V accumulator rounded to F16 after every
 * update as llama.cpp's CPU flash attention keeps it. One warp per (token,
 * head), lanes own DPL dimensions. Only for parity checks: it tells the GPU's
 * f32 accumulation apart from everything else. */
template <int DPL>
static __global__ void attention_f16acc_kernel(const float *q, int ldq, const uint16_t *kc, const uint16_t *vc,
                                               const int32_t *pos, const int32_t *seq, apr_cu_attn_shape sh,
                                               float scale, float *out, int ldo)
{
    griddep();
    const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    const int hd = sh.head_dim, kv_dim = sh.n_head_kv * hd;
    const bool owns = lane * DPL < hd;
    float *o = out + (size_t)t * ldo + (size_t)h * hd;
    const int sq = seq[t];
    if (sq < 0) {
        if (owns)
            for (int i = 0; i < DPL; i++) o[lane * DPL + i] = 0.f;
        return;
    }
    const int p = pos[t], kvh = h / (sh.n_head / sh.n_head_kv);
    const size_t base = (size_t)sq * sh.seq_stride + (size_t)kvh * hd + (owns ? lane * DPL : 0);
    float qv[DPL], acc[DPL];
    for (int i = 0; i < DPL; i++) {
        qv[i] = owns ? __half2float(__float2half_rn(q[(size_t)t * ldq + (size_t)h * hd + lane * DPL + i])) : 0.f;
        acc[i] = 0.f;
    }
    float mx = -INFINITY, sum = 0.f;
    for (int k = 0; k <= p; k++) {
        float part = 0.f;
        if (owns)
            for (int i = 0; i < DPL; i++) part += qv[i] * h2f(kc[base + (size_t)k * kv_dim + i]);
        const float s = warp_sum(part) * scale;
        float ms = 1.f, vs = 1.f;
        if (s > mx) {
            ms = expf(mx - s);
            mx = s;
            for (int i = 0; i < DPL; i++) acc[i] = __half2float(__float2half_rn(acc[i] * ms));
        } else {
            vs = expf(s - mx);
        }
        if (owns)
            for (int i = 0; i < DPL; i++)
                acc[i] = __half2float(__float2half_rn(fmaf(vs, h2f(vc[base + (size_t)k * kv_dim + i]), acc[i])));
        sum = sum * ms + vs;
    }
    const float inv = sum == 0.f ? 0.f : 1.f / sum;
    if (owns)
        for (int i = 0; i < DPL; i++) o[lane * DPL + i] = acc[i] * inv;
}

/* The split of a step's attention: chunks of 512 keys (one pass of the
 * block's warps), more where the context would need over APR_CU_ATT_CHUNKS
 * of them; unsplit (one chunk of the whole context) for steps of more
 * entries, which have blocks enough, or without c's workspace. */
#define APR_CU_ATT_CHUNKS 64

static void att_geometry(const apr_cu_attn_shape *sh, int &chunk, int &n_chunks)
{
    const int n_ctx = (int)(sh->seq_stride / ((size_t)sh->n_head_kv * sh->head_dim));
    const int pass = ATT_WARPS * 32, passes = (n_ctx + pass - 1) / pass;
    chunk = pass * ((passes + APR_CU_ATT_CHUNKS - 1) / APR_CU_ATT_CHUNKS);
    n_chunks = (n_ctx + chunk - 1) / chunk;
}

extern "C" size_t apr_cu_attention_work_bytes(const apr_cu_attn_shape *sh)
{
    int chunk, n_chunks;
    att_geometry(sh, chunk, n_chunks);
    const size_t counts = (size_t)APR_CU_ATT_SPLIT_TOK * sh->n_head * sizeof(unsigned);
    return (counts + 255) / 256 * 256 +
           (size_t)APR_CU_ATT_SPLIT_TOK * sh->n_head * n_chunks * (2 + sh->head_dim) * sizeof(float);
}

static split_dev att_split(const apr_cu_attn_shape *sh, int ntok, const apr_cu_ctx *c)
{
    const int n_ctx = (int)(sh->seq_stride / ((size_t)sh->n_head_kv * sh->head_dim));
    split_dev sp = {NULL, NULL, n_ctx > 0 ? n_ctx : 1, 1};
    int chunk, n_chunks;
    att_geometry(sh, chunk, n_chunks);
    if (ntok > APR_CU_ATT_SPLIT_TOK || n_chunks < 2 || !c->att_work || c->att_work_bytes < apr_cu_attention_work_bytes(sh))
        return sp;
    const size_t counts = (size_t)APR_CU_ATT_SPLIT_TOK * sh->n_head * sizeof(unsigned);
    sp.count = (unsigned *)c->att_work;
    sp.part = (float *)((uint8_t *)c->att_work + (counts + 255) / 256 * 256);
    sp.chunk = chunk;
    sp.n_chunks = n_chunks;
    return sp;
}

template <bool ROPE>
static void attention_launch(const float *q, int ldq, const uint16_t *k_cache, const uint16_t *v_cache,
                             const int32_t *pos, const int32_t *seq, int ntok, const apr_cu_attn_shape *sh, float *out,
                             int ldo, rope_dev rd, const apr_cu_act *q8a, const apr_cu_ctx *c)
{
    const q8_dev q8 = q8a ? q8_dev{q8a->q0, (float2 *)q8a->ds0, q8a->ld} : q8_dev{NULL, NULL, 0};
    const int hd = sh->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    const split_dev sp = att_split(sh, ntok, c);
    const dim3 grid((unsigned)ntok, (unsigned)sh->n_head, (unsigned)sp.n_chunks), block(ATT_WARPS * 32);
#define ATT(DPL, HD)                                                                                               \
    do {                                                                                                           \
        if (sp.n_chunks > 1)                                                                                       \
            launch(c, attention_kernel<DPL, HD, ROPE, true>, grid, block, q, ldq, k_cache, v_cache, pos, seq, *sh, \
                   scale, out, ldo, rd, sp, q8, c->early);                                                         \
        else                                                                                                       \
            launch(c, attention_kernel<DPL, HD, ROPE, false>, grid, block, q, ldq, k_cache, v_cache, pos, seq, *sh,\
                   scale, out, ldo, rd, sp, q8, c->early);                                                         \
    } while (0)
    if (hd == 128) ATT(4, 128);
    else if (hd == 64) ATT(2, 64);
    else if (hd <= 32) ATT(1, 0);
    else if (hd <= 64) ATT(2, 0);
    else if (hd <= 128) ATT(4, 0);
    else ATT(8, 0);
#undef ATT
}

extern "C" int apr_cu_attention(const float *q, int ldq, const uint16_t *k_cache, const uint16_t *v_cache,
                                const int32_t *pos, const int32_t *seq, int ntok, const apr_cu_attn_shape *sh,
                                float *out, int ldo, const apr_cu_act *q8, const apr_cu_ctx *c)
{
    const int hd = sh->head_dim;
    if (hd % 8 || hd > 256 || hd < 8 || sh->n_head_kv < 1 || sh->n_head % sh->n_head_kv) return -1;
    if (q8 && (hd % 32 || sh->f16_acc || !q8->q0 || !q8->ds0 || q8->ld % 32)) return -1;
    if (ntok <= 0) return 0;
    const float scale = 1.0f / sqrtf((float)hd);
    const dim3 grid((unsigned)ntok, (unsigned)sh->n_head);
    if (sh->f16_acc) {
        const int dpl = hd <= 32 ? 1 : hd <= 64 ? 2 : hd <= 128 ? 4 : 8;
#define ATT16(DPL) launch(c, attention_f16acc_kernel<DPL>, grid, dim3(32), q, ldq, k_cache, v_cache, pos, seq, *sh, scale, out, ldo)
        if (dpl == 1) ATT16(1);
        else if (dpl == 2) ATT16(2);
        else if (dpl == 4) ATT16(4);
        else ATT16(8);
#undef ATT16
        return 0;
    }
    attention_launch<false>(q, ldq, k_cache, v_cache, pos, seq, ntok, sh, out, ldo, rope_dev{}, q8, c);
    return 0;
}

extern "C" int apr_cu_attention_rope(float *qkv, int ldqkv, const float *bq, const float *bk, const float *bv,
                                     const int32_t *pos, const int32_t *seq, const apr_cu_attn_shape *sh,
                                     uint16_t *k_cache, uint16_t *v_cache, float *out, int ldo, const apr_cu_act *q8,
                                     const apr_cu_ctx *c)
{
    const int hd = sh->head_dim;
    if (hd % 8 || hd > 256 || hd < 8 || sh->n_head_kv < 1 || sh->n_head % sh->n_head_kv) return -1;
    if (sh->f16_acc) return 1;
    if (q8 && (hd % 32 || !q8->q0 || !q8->ds0 || q8->ld % 32)) return -1;
    attention_launch<true>(qkv, ldqkv, k_cache, v_cache, pos, seq, 1, sh, out, ldo,
                           rope_dev{bq, bk, bv, k_cache, v_cache}, q8, c);
    return 0;
}
