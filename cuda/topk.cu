/* Candidate rows on the GPU: the k best logits of each row, so that a
 * sampling step copies a few hundred bytes a row to the host instead of the
 * whole 600 KB row (152k vocabulary), which at 64 rows a step is 39 MB.
 *
 * Exactly apr_topk_select's answer (worker/topk.c): higher logit first, equal
 * logits by lower id, NaN and -inf never chosen. One block a row; each warp
 * scans a contiguous part of the row keeping its own sorted best-64 (lane l
 * holds places l and l + 32), admitting an element only when it beats the
 * k-th kept one, which after the first few thousand elements almost none
 * does, so the scan runs at the speed of the loads; then one warp merges the
 * warps' lists. */
#include <climits>
#include <cstdint>

#include "cuda/argmax.cuh"
#include "cuda/kernels.h"
#include "cuda/launch.cuh"

#define TOPK_WARPS 16
#define TOPK_MAX 64
#define FULL 0xffffffffu
#define FLOOR_ONE_PASS 8 /* k up to this: the floor from the first elements, one pass (see topk_kernel) */

static_assert(APR_CU_TOPK_MAX == TOPK_MAX, "one limit");
static_assert(APR_CU_TOPK_PARTS <= 32 && TOPK_WARPS <= 32, "merge_seq: a lane a list");

/* The work area (apr_cu_topk_work_bytes) of a row split in parts: a slot
 * for each part's candidate row, then the row's argmax word (argmax_part),
 * which the kernels leave at zero. The slots' stride is the candidate rows'
 * least, whatever stride the answer has. */
#define WSTRIDE APR_CU_TOPK_STRIDE
#define WROW ((size_t)APR_CU_TOPK_PARTS * WSTRIDE + sizeof(unsigned long long))
static_assert(APR_CU_TOPK_PARTS * WSTRIDE % 8 == 0 && WROW % 8 == 0, "the argmax words are 8-byte aligned");

static __device__ __forceinline__ uint8_t *part_slot(uint8_t *work, int row, int part)
{
    return work + (size_t)row * WROW + (size_t)part * WSTRIDE;
}

static __device__ __forceinline__ unsigned long long *row_state(uint8_t *work, int row)
{
    return (unsigned long long *)(work + (size_t)row * WROW + (size_t)APR_CU_TOPK_PARTS * WSTRIDE);
}

/* The sampler's order: a before b. */
static __device__ __forceinline__ bool better(float av, int ai, float bv, int bi)
{
    return av > bv || (av == bv && ai < bi);
}

/* A warp's sorted list of up to 64 entries: places l (av, ai) and l + 32
 * (bv, bi) in lane l; empty places hold (-inf, INT_MAX), which nothing
 * admitted is worse than. */
struct wlist {
    float av, bv;
    int ai, bi;
    int h;      /* entries kept, <= k */
    float tv;   /* the k-th entry once h == k (the bar) */
    int ti;
    float floor; /* no value below it can be among the part's k best (topk_kernel) */
};

/* Inserts (v, i) (warp-uniform) at its place; the entry at place k falls out
 * of what counts (places >= k are never read). */
static __device__ __forceinline__ void insert(wlist &w, float v, int i, int k, int lane)
{
    const int p = __popc(__ballot_sync(FULL, better(w.av, w.ai, v, i))) +
                  __popc(__ballot_sync(FULL, better(w.bv, w.bi, v, i)));
    float au = __shfl_up_sync(FULL, w.av, 1), bu = __shfl_up_sync(FULL, w.bv, 1);
    int aiu = __shfl_up_sync(FULL, w.ai, 1), biu = __shfl_up_sync(FULL, w.bi, 1);
    const float a31 = __shfl_sync(FULL, w.av, 31);
    const int ai31 = __shfl_sync(FULL, w.ai, 31);
    if (lane == 0) {
        bu = a31;
        biu = ai31;
    }
    if (lane > p) {
        w.av = au;
        w.ai = aiu;
    } else if (lane == p) {
        w.av = v;
        w.ai = i;
    }
    if (lane + 32 > p) {
        w.bv = bu;
        w.bi = biu;
    } else if (lane + 32 == p) {
        w.bv = v;
        w.bi = i;
    }
    if (w.h < k) w.h++;
    if (w.h == k) {
        const int q = (k - 1) & 31;
        w.tv = __shfl_sync(FULL, k - 1 < 32 ? w.av : w.bv, q);
        w.ti = __shfl_sync(FULL, k - 1 < 32 ? w.ai : w.bi, q);
    }
}

/* Offers 32 elements, one a lane (v, i; invalid lanes pass -inf). */
static __device__ __forceinline__ void offer(wlist &w, float v, int i, int k, int lane)
{
    const bool pass = v > -INFINITY && v >= w.floor && (w.h < k || better(v, i, w.tv, w.ti));
    unsigned m = __ballot_sync(FULL, pass);
    while (m) {
        const int src = __ffs(m) - 1;
        m &= m - 1;
        const float nv = __shfl_sync(FULL, v, src);
        const int ni = __shfl_sync(FULL, i, src);
        if (w.h == k && !better(nv, ni, w.tv, w.ti)) continue; /* an earlier insert raised the bar */
        insert(w, nv, ni, k, lane);
    }
}

/* Keeps m1 >= m2 the two largest values seen (NaN compares false: passed over). */
static __device__ __forceinline__ void top2(float &m1, float &m2, float x)
{
    if (x > m1) {
        m2 = m1;
        m1 = x;
    } else if (x > m2) m2 = x;
}

/* The k-th largest (k <= 32) of the lanes' m: the k lanes ranked above it
 * hold k elements >= it. */
static __device__ __forceinline__ float kth_of_32(float m, int k, int lane)
{
    int rank = 0; /* lanes ahead: larger, or equal on a lower lane */
    for (int j = 0; j < 32; j++) {
        const float o = __shfl_sync(FULL, m, j);
        rank += o > m || (o == m && j < lane);
    }
    return __shfl_sync(FULL, m, __ffs(__ballot_sync(FULL, rank == k - 1)) - 1);
}

/* The k-th largest (k <= 64) of the warp's 64 values, each lane's two
 * largest elements m1 >= m2 (-inf where it has fewer): if it is finite, the
 * k values ranked above it are k distinct elements, all >= it. */
static __device__ __forceinline__ float kth_of_64(float m1, float m2, int k, int lane)
{
    int r1 = 0, r2 = 0; /* values ahead (larger, or equal at a lower place: m1 at place lane, m2 at 32 + lane) */
    for (int j = 0; j < 32; j++) {
        const float o1 = __shfl_sync(FULL, m1, j), o2 = __shfl_sync(FULL, m2, j);
        r1 += (o1 > m1 || (o1 == m1 && j < lane)) + (o2 > m1);
        r2 += (o1 >= m2) + (o2 > m2 || (o2 == m2 && j < lane));
    }
    const unsigned a1 = __ballot_sync(FULL, r1 == k - 1), a2 = __ballot_sync(FULL, r2 == k - 1);
    return a1 ? __shfl_sync(FULL, m1, __ffs(a1) - 1) : __shfl_sync(FULL, m2, __ffs(a2) - 1);
}

/* One warp merges nl (<= 32) sorted lists into the first k of their
 * union, written at o as a candidate row: k rounds of a warp reduction, the
 * cheaper way for small k. */
static __device__ void merge_seq(const float (*lv)[TOPK_MAX], const int (*li)[TOPK_MAX], const int *lh, int nl,
                                   int k, uint8_t *o, int lane)
{
    int head = 0;
    int32_t cnt = 0;
    for (; cnt < k; cnt++) {
        const bool has = lane < nl && head < lh[lane];
        float bv = has ? lv[lane][head] : -INFINITY;
        int bi = has ? li[lane][head] : INT_MAX, bl = has ? lane : -1;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(FULL, bv, off);
            const int oi = __shfl_xor_sync(FULL, bi, off), ol = __shfl_xor_sync(FULL, bl, off);
            if (ol >= 0 && (bl < 0 || better(ov, oi, bv, bi))) {
                bv = ov;
                bi = oi;
                bl = ol;
            }
        }
        if (bl < 0) break; /* every list is used up: fewer than k valid */
        if (lane == bl) head++;
        if (lane == 0) {
            int32_t *pair = (int32_t *)(o + 4 + 8 * (size_t)cnt);
            pair[0] = bi;
            ((float *)pair)[1] = bv;
        }
    }
    if (lane == 0) *(int32_t *)o = cnt;
}

/* The first k of the union of nl (<= TOPK_WARPS) sorted lists (best
 * first, lh[j] entries each, ids distinct), written at o as a candidate row
 * by the block's nthreads threads together: an entry's place in the union
 * is its place in its list plus, in every other list, how many entries are
 * better (a binary search); entries placed past k stop counting early. The
 * block synchronizes before calling it. For k past FLOOR_ONE_PASS: at k 40
 * one warp's k rounds were ~4 us a merge. */
static __device__ void merge_rank(const float (*lv)[TOPK_MAX], const int (*li)[TOPK_MAX], const int *lh, int nl,
                                  int k, uint8_t *o, int tid, int nthreads)
{
    for (int e = tid; e < nl * TOPK_MAX; e += nthreads) {
        const int a = e / TOPK_MAX, q = e % TOPK_MAX;
        if (q >= min(lh[a], k)) continue;
        const float v = lv[a][q];
        const int id = li[a][q];
        int place = q;
        for (int b = 0; b < nl && place < k; b++) {
            if (b == a) continue;
            int lo = 0, hi = min(lh[b], k); /* entries of b better than this one: [0, lo) */
            while (lo < hi) {
                const int mid = (lo + hi) >> 1;
                if (better(lv[b][mid], li[b][mid], v, id)) lo = mid + 1;
                else hi = mid;
            }
            place += lo;
        }
        if (place < k) {
            int32_t *pair = (int32_t *)(o + 4 + 8 * (size_t)place);
            pair[0] = id;
            ((float *)pair)[1] = v;
        }
    }
    if (tid == 0) {
        int total = 0;
        for (int j = 0; j < nl; j++) total += min(lh[j], k);
        *(int32_t *)o = min(total, k);
    }
}

/* The parts a row of k candidates is cut into where parts were launched:
 * all of them for k up to FLOOR_ONE_PASS (one row, k 5: 32 parts 10.4 us a
 * launch against 16 parts' 12.3), at most TOPK_WARPS above, whose merge by
 * rank grows with the lists (k 40: 73 us with 32 parts, 40 with 16). */
static __device__ __forceinline__ int parts_for(int k, int parts)
{
    return k <= FLOOR_ONE_PASS ? parts : min(parts, TOPK_WARPS);
}

/* The argmax of rows of k 1 split in parts (greedy decoding, every step of
 * apr-coord's greedy streams): no lists and no merge by rounds. Each part's
 * best goes into the row's word in the state area (cuda/argmax.cuh);
 * topk_merge_kernel turns the word into the row and zeroes it. */

/* Part [p0, p1) of a row of k 1: every thread strides over it (increasing
 * ids, so a strict > keeps the lowest id of equal values, as better()). */
static __device__ void argmax_part(const float *l, int p0, int p1, unsigned long long *state)
{
    float bv = -INFINITY;
    int bi = INT_MAX;
    constexpr int T = TOPK_WARPS * 32;
    for (int base = p0 + (int)threadIdx.x; base < p1; base += 8 * T) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) v[u] = base + u * T < p1 ? l[base + u * T] : -INFINITY;
#pragma unroll
        for (int u = 0; u < 8; u++)
            if (v[u] > bv) {
                bv = v[u];
                bi = base + u * T;
            }
    }
    const unsigned long long b = argmax_block<TOPK_WARPS>(argmax_key(bv, bi));
    if (threadIdx.x == 0 && b) atomicMax(state, b);
}

/* A row of k 1's key into its candidate row (l: the row's logits, for the
 * sign of a zero). */
static __device__ void argmax_answer(const float *l, unsigned long long b, uint8_t *o)
{
    int32_t *row = (int32_t *)o;
    if (!b) {
        row[0] = 0;
        return;
    }
    const int id = (int)~(uint32_t)b;
    const uint32_t h = (uint32_t)(b >> 32);
    row[0] = 1;
    row[1] = id;
    ((float *)row)[2] = h == argmax_ordered(0.f) ? l[id] : argmax_unordered(h);
}

/* The state word of a row of k 1 into its candidate row, and the word back
 * to zero. */
static __device__ void argmax_finish(const float *l, unsigned long long *state, uint8_t *o)
{
    const unsigned long long b = __ldcg(state); /* the parts' atomics, at L2 */
    *state = 0;
    argmax_answer(l, b, o);
}

/* ks[r] (or k_all where ks is NULL): candidates of row r; 0 skips the row.
 * Block b takes part b % parts of row b / parts (a row in several parts
 * keeps the GPU busy when rows are few) and writes its best k as a candidate
 * row: the answer (out + r * stride) where parts == 1, else into work for
 * topk_merge_kernel. words (one row, apr_cu_topk_done_filled): the product
 * left the row's argmax there; block 0's first warp takes and clears them,
 * and for k 1 answers and signals done: the merge kernel has nothing left to
 * do. */
static __global__ void __launch_bounds__(TOPK_WARPS * 32) topk_kernel(const float *logits, int n, const int32_t *ks,
                                                                      int k_all, uint8_t *out, size_t stride,
                                                                      int parts, uint8_t *work,
                                                                      unsigned long long *words, unsigned *ticket,
                                                                      unsigned *done)
{
    __shared__ float lv[TOPK_WARPS][TOPK_MAX];
    __shared__ int li[TOPK_WARPS][TOPK_MAX], lh[TOPK_WARPS];
    const int row = blockIdx.x / parts, part = blockIdx.x % parts, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    griddep();
    int k = ks ? ks[row] : k_all;
    if (words) {
        if (blockIdx.x == 0 && warp == 0) {
            const unsigned long long b = argmax_gather(words);
            if (k == 1 && lane == 0) { /* its own writes: released by its own store */
                argmax_answer(logits, b, out);
                if (done) release_done(ticket, done);
            }
        }
        if (k == 1) return;
    }
    if (k <= 0) return;
    k = min(k, TOPK_MAX);
    const int np = parts_for(k, parts);
    if (part >= np) return;
    const float *l = logits + (size_t)row * n;
    const int plen = (n + np - 1) / np, p0 = part * plen, p1 = min(n, p0 + plen);
    if (k == 1 && np > 1) {
        argmax_part(l, p0, p1, row_state(work, row));
        return;
    }
    wlist w = {-INFINITY, -INFINITY, INT_MAX, INT_MAX, 0, -INFINITY, INT_MAX, -INFINITY};
    const int per = (p1 - p0 + TOPK_WARPS - 1) / TOPK_WARPS, s0 = p0 + warp * per, s1 = min(p1, s0 + per);
    /* A floor: no value below it can be among the part's k best, so only
     * what reaches it is offered, sparing most of the serial inserts (a
     * one-row step at k 40 spent most of its ~70 us admitting a warp's
     * first elements one by one). Up to FLOOR_ONE_PASS the floor is the
     * k-th of the lanes' largest among the warp's first 256 elements and
     * the scan is one pass. Above, a first pass takes each lane's two
     * largest over the whole range, each warp the k-th of its 64, and the
     * part's floor is the largest of these (each has k elements >= it):
     * about k offers a part; the second pass reads from L1. Eight loads in flight a lane, the range's end among them.
     * better() is a total order: which elements are offered, and in what
     * order, does not change the answer. */
    const bool two = k > FLOOR_ONE_PASS; /* uniform in the block */
    __shared__ float wfloor[TOPK_WARPS];
    float m1 = -INFINITY, m2 = -INFINITY;
    for (int base = s0; two && base < s1; base += 256) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) v[u] = base + 32 * u + lane < s1 ? l[base + 32 * u + lane] : -INFINITY;
#pragma unroll
        for (int u = 0; u < 8; u++) top2(m1, m2, v[u]);
    }
    if (two) {
        const float f = kth_of_64(m1, m2, k, lane);
        if (lane == 0) wfloor[warp] = f;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < TOPK_WARPS; j++) w.floor = fmaxf(w.floor, wfloor[j]);
    }
    for (int base = s0; base < s1; base += 256) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) v[u] = base + 32 * u + lane < s1 ? l[base + 32 * u + lane] : -INFINITY;
        if (!two && base == s0) {
#pragma unroll
            for (int u = 0; u < 8; u++) m1 = fmaxf(m1, v[u]); /* fmaxf passes NaN over */
            w.floor = kth_of_32(m1, k, lane);
        }
#pragma unroll
        for (int u = 0; u < 8; u++) offer(w, v[u], base + 32 * u + lane, k, lane);
    }
    lv[warp][lane] = w.av;
    li[warp][lane] = w.ai;
    lv[warp][lane + 32] = w.bv;
    li[warp][lane + 32] = w.bi;
    if (lane == 0) lh[warp] = w.h;
    __syncthreads();
    uint8_t *o = parts == 1 ? out + (size_t)row * stride : part_slot(work, row, part);
    if (two) merge_rank(lv, li, lh, TOPK_WARPS, k, o, threadIdx.x, TOPK_WARPS * 32);
    else if (warp == 0) merge_seq(lv, li, lh, TOPK_WARPS, k, o, lane);
}

/* The step's end for the host (apr_cu_topk's done): every thread's
 * writes of the answer are visible there before *done gets the new count. */
static __device__ void signal_done(unsigned *ticket, unsigned *done)
{
    __threadfence_system();
    __syncthreads();
    if (threadIdx.x == 0) release_done(ticket, done);
}

/* The parts' candidate rows of each row (work) merged into its answer. */
static __global__ void __launch_bounds__(TOPK_WARPS * 32) topk_merge_kernel(const float *logits, int n, const int32_t *ks,
                                                                            int k_all, uint8_t *out, size_t stride,
                                                                            int parts, uint8_t *work, int filled,
                                                                            unsigned *ticket, unsigned *done)
{
    __shared__ float lv[APR_CU_TOPK_PARTS][TOPK_MAX];
    __shared__ int li[APR_CU_TOPK_PARTS][TOPK_MAX], lh[APR_CU_TOPK_PARTS];
    const int row = blockIdx.x, tid = threadIdx.x;
    griddep();
    int k = ks ? ks[row] : k_all;
    if (k == 1 && filled) return; /* topk_kernel answered */
    if (k <= 0 || k == 1) {
        /* k 1: the parts' best is one word (argmax_part). Thread 0 alone
         * writes the answer, so its own release orders it before done: no
         * block-wide fence */
        if (tid == 0) {
            if (k == 1) argmax_finish(logits + (size_t)row * n, row_state(work, row), out + (size_t)row * stride);
            if (done) release_done(ticket, done);
        }
        return;
    }
    k = min(k, TOPK_MAX);
    const int np = parts_for(k, parts);
    /* every part's count at once (a lane a part), then the entries of all
     * parts with the lanes striding over them: a few round trips to L2 in
     * all, where a part after another took three each (a one-row step: 16
     * parts, ~25 us of the 30 this kernel pair took) */
    const uint8_t *base = part_slot(work, row, 0);
    if (tid < np) lh[tid] = min(*(const int32_t *)(base + (size_t)tid * WSTRIDE), k);
    __syncthreads();
    for (int e = tid; e < np * k; e += TOPK_WARPS * 32) {
        const int j = e / k, q = e % k;
        if (q < lh[j]) {
            const uint8_t *src = base + (size_t)j * WSTRIDE + 4 + 8 * (size_t)q;
            li[j][q] = *(const int32_t *)src;
            lv[j][q] = *(const float *)(src + 4);
        }
    }
    __syncthreads();
    if (k > FLOOR_ONE_PASS) merge_rank(lv, li, lh, np, k, out + (size_t)row * stride, tid, TOPK_WARPS * 32);
    else if (tid < 32) merge_seq(lv, li, lh, np, k, out + (size_t)row * stride, tid);
    if (done) signal_done(ticket, done);
}

extern "C" size_t apr_cu_topk_work_bytes(int nrows)
{
    return (size_t)nrows * WROW;
}

/* parts a row: about two blocks a multiprocessor in all (a 152k row in one
 * block takes ~60 us on an H100, mostly load latency), each part still
 * thousands of elements */
extern "C" int apr_cu_topk_parts(int n, int nrows, const apr_cu_ctx *c)
{
    if (n < 1 || nrows < 1) return 1;
    int parts = 2 * apr_cu_sms(c) / nrows;
    if (parts > APR_CU_TOPK_PARTS) parts = APR_CU_TOPK_PARTS;
    if (parts > n / 4096) parts = n / 4096;
    return parts < 1 ? 1 : parts;
}

static int topk_launch(const float *logits, int n, int nrows, const int32_t *ks, int k_all, void *out, size_t stride,
                       void *work, unsigned long long *words, unsigned *ticket, unsigned *done,
                       const apr_cu_ctx *c)
{
    if (n < 1 || nrows < 1 || stride < APR_CU_TOPK_STRIDE || stride % 4 || (done && (nrows != 1 || !ticket)) ||
        (words && (nrows != 1 || !work || (uintptr_t)words % 8)))
        return -1;
    const int parts = work ? apr_cu_topk_parts(n, nrows, c) : 1;
    if (done && parts == 1) return -1; /* the merge kernel signals */
    launch(c, topk_kernel, dim3((unsigned)(nrows * parts)), dim3(TOPK_WARPS * 32), logits, n, ks, k_all,
           (uint8_t *)out, stride, parts, (uint8_t *)work, words, ticket, done);
    if (parts > 1)
        launch(c, topk_merge_kernel, dim3((unsigned)nrows), dim3(TOPK_WARPS * 32), logits, n, ks, k_all, (uint8_t *)out,
               stride, parts, (uint8_t *)work, words != NULL, ticket, done);
    return 0;
}

extern "C" int apr_cu_topk(const float *logits, int n, int nrows, const int32_t *ks, int k_all, void *out,
                           size_t stride, void *work, const apr_cu_ctx *c)
{
    return topk_launch(logits, n, nrows, ks, k_all, out, stride, work, NULL, NULL, NULL, c);
}

extern "C" int apr_cu_topk_done(const float *logits, int n, int nrows, const int32_t *ks, int k_all, void *out,
                                size_t stride, void *work, unsigned *ticket, unsigned *done, const apr_cu_ctx *c)
{
    return topk_launch(logits, n, nrows, ks, k_all, out, stride, work, NULL, ticket, done, c);
}

extern "C" int apr_cu_topk_done_filled(const float *logits, int n, const int32_t *ks, int k_all, void *out,
                                       size_t stride, void *work, unsigned long long *words, unsigned *ticket,
                                       unsigned *done, const apr_cu_ctx *c)
{
    if (!words) return -1;
    return topk_launch(logits, n, 1, ks, k_all, out, stride, work, words, ticket, done, c);
}
