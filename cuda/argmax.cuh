/* cuda/ (private, for the .cu files): greedy's argmax as one 64-bit word.
 *
 * A row of k 1 (greedy decoding) needs only its best (logit, id). Whoever
 * sees part of the row (a top-k part, topk.cu; the output product's warps,
 * apr_cu_gemv_seg.amax) atomicMax-es one key into the row's word (or one of
 * the spread words the product's warps share out): the value's
 * bits made monotone (-0 as +0, so equal values fall to the id) above the
 * id's complement (the lower id wins a tie), so the word ends as the
 * sampler's better() would choose. NaN and -inf are never keys; 0 is
 * "none". topk.cu's argmax_answer turns the key into the candidate row. */
#ifndef APR_CUDA_ARGMAX_CUH
#define APR_CUDA_ARGMAX_CUH
#include <math.h>
#include <stdint.h>

#include "cuda/kernels.h"

static __device__ __forceinline__ uint32_t argmax_ordered(float v)
{
    const uint32_t u = __float_as_uint(v == 0.f ? 0.f : v);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

static __device__ __forceinline__ float argmax_unordered(uint32_t o)
{
    return __uint_as_float(o & 0x80000000u ? o & 0x7fffffffu : ~o);
}

/* The key of (v, id); 0 where v can never be chosen (NaN fails the test). */
static __device__ __forceinline__ unsigned long long argmax_key(float v, int id)
{
    return v > -INFINITY ? (unsigned long long)argmax_ordered(v) << 32 | ~(uint32_t)id : 0ull;
}

/* The largest of the warp's keys, in two 32-bit reductions. */
static __device__ __forceinline__ unsigned long long argmax_warp(unsigned long long key)
{
    const uint32_t hi = __reduce_max_sync(0xffffffffu, (uint32_t)(key >> 32));
    const uint32_t lo = __reduce_max_sync(0xffffffffu, (uint32_t)(key >> 32) == hi ? (uint32_t)key : 0u);
    return (unsigned long long)hi << 32 | lo;
}

/* The largest of the block's keys (WARPS warps), in its first warp; every
 * thread calls it (the top-k's parts). */
template <int WARPS>
static __device__ __forceinline__ unsigned long long argmax_block(unsigned long long key)
{
    __shared__ unsigned long long wk[WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned long long wmax = argmax_warp(key);
    if (lane == 0) wk[warp] = wmax;
    __syncthreads();
    return warp == 0 ? argmax_warp(lane < WARPS ? wk[lane] : 0ull) : 0ull;
}

/* A GEMV warp's key (0: none) into the spread words of apr_cu_gemv_seg.amax,
 * the warp's own slot choosing the word: one word for all ~76k warps of the
 * 1.5B's output product (or any read of it to filter) made an L2 hot spot
 * that cost the product 4 us; a block-wide reduction first, shared memory
 * and a barrier, cost more. */
static __device__ __forceinline__ void argmax_offer(unsigned long long key, unsigned long long *words, int slot)
{
    if (key) atomicMax(words + (size_t)(slot % APR_CU_ARGMAX_SPREAD) * APR_CU_ARGMAX_STRIDE, key);
}

/* The best of the spread words, in every lane of the calling warp, which
 * also zeroes them for the next product. */
static __device__ __forceinline__ unsigned long long argmax_gather(unsigned long long *words)
{
    static_assert(APR_CU_ARGMAX_SPREAD == 32, "a lane a word");
    unsigned long long *w = words + (size_t)(threadIdx.x & 31) * APR_CU_ARGMAX_STRIDE;
    const unsigned long long k = __ldcg(w);
    *w = 0;
    return argmax_warp(k);
}

#endif
