/* AVX-512 (+VNNI) kernels for apr_matmul.
 *
 * Every kernel is a tile of R weight rows x T activation rows: each weight
 * block is unpacked once into registers (nibbles spread to bytes in natural
 * element order, per-lane scale vectors) and then dotted with T activation
 * blocks. Decode runs T = 1 tiles of 4 rows, so four independent streams of
 * weights are in flight; prefill runs 4 x 4 tiles, so each unpacked block
 * serves four tokens. A row's result never depends on the tile it falls in
 * (same operations in the same order), so any split of rows across threads
 * gives bit-identical outputs.
 *
 * Integer semantics match ggml: per block, the sum of scale * (q . a) in
 * int32, then one float multiply by d_w * d_a. vpdpbusd multiplies unsigned
 * by signed bytes, so signed weights (Q6_K's q-32) enter as unsigned q with
 * a correction from the activation's bsums, and Q8_0-style weights as |w|
 * against a with w's sign.
 */
#include <immintrin.h>
#include <string.h>

#include "model/model.h"
#include "worker/kernels.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) TGT

#ifndef PF_BYTES
#define PF_BYTES 12288
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif

typedef struct {
    const uint8_t *w;
    size_t ws;
    const uint8_t *x;
    size_t xs;
    float *out;
    size_t os;
    int n;
    size_t pf; /* prefetch distance: whole rows, about PF_BYTES */
} mm_args;

INL float half(const uint16_t *p) { return _cvtsh_ss(*p); }

/* ------------------------------------------------------------ K-quants */

/* One Q4_K/Q5_K/Q6_K block unpacked: 4 chunks of 64 unsigned values in
 * element order, the int16 scale of each vpmaddubsw pair, and the per-16
 * correction weights (mins, or Q6_K's 32 * scale) as int16 for the bsums. */
typedef struct {
    __m512i q[4];
    __m512i sc[4];
    __m256i corr; /* int16 x16, paired with bsums[16] */
    float d, dmin;
} kblock;

/* int16 lane l of chunk k (after vpmaddubsw) covers elements 64k + 2l, +1:
 * sub-block (of 32) 2k + l/16, or (of 16) 4k + l/8. */
INL __m512i word_idx_32(int k)
{
    __m512i lo = _mm512_set1_epi16((short)(2 * k)), hi = _mm512_set1_epi16((short)(2 * k + 1));
    return _mm512_mask_mov_epi16(lo, 0xFFFF0000u, hi);
}

INL __m512i word_idx_16(int k)
{
    const __m512i base = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2,
                                          1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_add_epi16(base, _mm512_set1_epi16((short)(4 * k)));
}

/* Q4_K/Q5_K 12-byte scales -> bytes 0..7 scales, 8..15 mins (ggml's utmp). */
INL __m128i k4_scales(const uint8_t *s)
{
    uint32_t u[4];
    memcpy(u, s, 12);
    const uint32_t km1 = 0x3f3f3f3f, km2 = 0x0f0f0f0f, km3 = 0x03030303;
    u[3] = ((u[2] >> 4) & km2) | (((u[1] >> 6) & km3) << 4);
    uint32_t aux = u[1] & km1;
    u[1] = (u[2] & km2) | (((u[0] >> 6) & km3) << 4);
    u[2] = aux;
    u[0] &= km1;
    return _mm_loadu_si128((const __m128i *)u);
}

INL void k4_scale_vectors(kblock *kb, __m128i s16)
{
    __m512i s = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(s16));
#pragma GCC unroll 16
    for (int k = 0; k < 4; k++) kb->sc[k] = _mm512_permutexvar_epi16(word_idx_32(k), s);
    /* Each min pairs with two 16-element bsums. */
    const __m128i dup = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    kb->corr = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(s16, dup));
}

INL void unpack_q4_K(const block_q4_K *b, kblock *kb)
{
    const __m512i shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0), m4 = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 16
    for (int k = 0; k < 4; k++) {
        __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * k)));
        kb->q[k] = _mm512_and_si512(_mm512_srlv_epi64(q, shift), m4);
    }
    k4_scale_vectors(kb, k4_scales(b->scales));
    kb->d = half(&b->d);
    kb->dmin = half(&b->dmin);
}

INL void unpack_q5_K(const block_q5_K *b, kblock *kb)
{
    const __m512i shift = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0), m4 = _mm512_set1_epi8(0x0F),
                  m16 = _mm512_set1_epi8(0x10);
    __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->qh));
#pragma GCC unroll 16
    for (int k = 0; k < 4; k++) {
        __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * k)));
        /* Bit 2k of qh[l] is the fifth bit of element 64k+l, bit 2k+1 of 64k+32+l. */
        __m512i hs = _mm512_set_epi64(2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k, 2 * k,
                                      2 * k, 2 * k);
        __m512i hb = _mm512_and_si512(_mm512_slli_epi64(_mm512_srlv_epi64(h, hs), 4), m16);
        kb->q[k] = _mm512_or_si512(_mm512_and_si512(_mm512_srlv_epi64(q, shift), m4), hb);
    }
    k4_scale_vectors(kb, k4_scales(b->scales));
    kb->d = half(&b->d);
    kb->dmin = half(&b->dmin);
}

/* Q6_K enters as unsigned 0..63; the -32 becomes corr = 32 * scale per 16. */
INL void unpack_q6_K(const block_q6_K *b, kblock *kb)
{
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const __m512i sl = _mm512_set_epi64(2, 2, 2, 2, 4, 4, 4, 4);
    const __m512i sr = _mm512_set_epi64(2, 2, 2, 2, 0, 0, 0, 0);
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i l = _mm512_loadu_si512(b->ql + 64 * h);
        __m512i hi = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
        kb->q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4),
                                       _mm512_and_si512(_mm512_sllv_epi64(hi, sl), m30));
        kb->q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                           _mm512_and_si512(_mm512_srlv_epi64(hi, sr), m30));
    }
    __m128i s8 = _mm_loadu_si128((const __m128i *)b->scales);
    __m512i s = _mm512_zextsi256_si512(_mm256_cvtepi8_epi16(s8));
#pragma GCC unroll 16
    for (int k = 0; k < 4; k++) kb->sc[k] = _mm512_permutexvar_epi16(word_idx_16(k), s);
    kb->corr = _mm256_slli_epi16(_mm256_cvtepi8_epi16(s8), 5);
    kb->d = half(&b->d);
    kb->dmin = 0;
}

/* acc += this block's contribution for one activation block. */
INL __m512 kblock_dot(const kblock *kb, const block_q8_K *a, __m512 acc, int wtype)
{
    /* vpmaddubsw cannot saturate here: at most 2 * 63 * 127 per pair. */
    __m512i s = _mm512_setzero_si512();
#pragma GCC unroll 16
    for (int k = 0; k < 4; k++)
        s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(kb->q[k], _mm512_loadu_si512(a->qs + 64 * k)),
                                kb->sc[k]);
    __m256i c = _mm256_madd_epi16(kb->corr, _mm256_loadu_si256((const __m256i *)a->bsums));
    if (wtype == APR_TYPE_Q6_K) {
        s = _mm512_sub_epi32(s, _mm512_zextsi256_si512(c));
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(kb->d * a->d), acc);
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(kb->d * a->d), acc);
    return _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi256_si512(c)),
                            _mm512_set1_ps(kb->dmin * a->d), acc);
}

INL void unpack_k(const uint8_t *w, int b, kblock *kb, int wtype)
{
    if (wtype == APR_TYPE_Q4_K) unpack_q4_K((const block_q4_K *)w + b, kb);
    else if (wtype == APR_TYPE_Q5_K) unpack_q5_K((const block_q5_K *)w + b, kb);
    else unpack_q6_K((const block_q6_K *)w + b, kb);
}

INL size_t ksize(int wtype)
{
    return wtype == APR_TYPE_Q4_K ? sizeof(block_q4_K)
         : wtype == APR_TYPE_Q5_K ? sizeof(block_q5_K) : sizeof(block_q6_K);
}

/* Block b of a row: the cache lines it spans. Prefetching past the end of
 * the matrix is harmless (prefetches never fault). */
INL void prefetch_block(const uint8_t *row, int b, size_t bsz)
{
    const char *p = (const char *)row + (size_t)b * bsz;
    for (size_t o = 0; o < bsz; o += 64) _mm_prefetch(p + o, PF_HINT);
}

/* R rows from w, T tokens from x. */
INL void ktile(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out, const int R,
               const int T, int wtype)
{
    int nb = m->n / APR_QK_K;
    __m512 acc[4][16];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            kblock kb;
            /* The next tile of rows follows this one: ask for it early, as
             * the hardware prefetcher alone leaves decode latency-bound. */
            prefetch_block(w + m->pf + (size_t)r * m->ws, b, ksize(wtype));
            unpack_k(w + (size_t)r * m->ws, b, &kb, wtype);
#pragma GCC unroll 16
            for (int t = 0; t < T; t++)
                acc[r][t] = kblock_dot(&kb, (const block_q8_K *)(x + (size_t)t * m->xs) + b,
                                       acc[r][t], wtype);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) out[(size_t)t * m->os + r] = _mm512_reduce_add_ps(acc[r][t]);
}

/* ------------------------------------------------- Q4_0 / Q5_0 / Q8_0 */

/* A 32-element block as |w| bytes, the mask of negative w, and d. */
typedef struct {
    __m256i q;
    __mmask32 neg;
    float d;
} lblock;

INL void unpack_l(const uint8_t *w, int b, lblock *lb, int wtype)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i v;
    if (wtype == APR_TYPE_Q8_0) {
        const block_q8_0 *p = (const block_q8_0 *)w + b;
        v = _mm256_loadu_si256((const __m256i *)p->qs);
        lb->d = half(&p->d);
    } else if (wtype == APR_TYPE_Q4_0) {
        const block_q4_0 *p = (const block_q4_0 *)w + b;
        __m128i q = _mm_loadu_si128((const __m128i *)p->qs);
        __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
        v = _mm256_sub_epi8(u, _mm256_set1_epi8(8));
        lb->d = half(&p->d);
    } else { /* Q5_0 */
        const block_q5_0 *p = (const block_q5_0 *)w + b;
        __m128i q = _mm_loadu_si128((const __m128i *)p->qs);
        __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
        uint32_t qh;
        memcpy(&qh, p->qh, 4);
        /* Bit j of qh is the fifth bit of element j: a byte mask does it. */
        u = _mm256_mask_add_epi8(u, (__mmask32)qh, u, _mm256_set1_epi8(0x10));
        v = _mm256_sub_epi8(u, _mm256_set1_epi8(16));
        lb->d = half(&p->d);
    }
    lb->q = _mm256_abs_epi8(v);
    lb->neg = _mm256_movepi8_mask(v);
}

INL __m256 lblock_dot(const lblock *lb, const block_q8_0 *a, __m256 acc)
{
    __m256i av = _mm256_loadu_si256((const __m256i *)a->qs);
    av = _mm256_mask_sub_epi8(av, lb->neg, _mm256_setzero_si256(), av);
    __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), lb->q, av);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(lb->d * half(&a->d)), acc);
}

INL float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL size_t lsize(int wtype)
{
    return wtype == APR_TYPE_Q8_0 ? sizeof(block_q8_0)
         : wtype == APR_TYPE_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q5_0);
}

/* Two consecutive blocks in one zmm as unsigned bytes u = w + offset (8 for
 * Q4_0, 16 for Q5_0, 128 for Q8_0), and d per half (lanes 0..7 block b, 8..15
 * block b+1, as vpdpbusd's int32 lanes fall). The offset comes back out as
 * offset * (sum of each lane's four activations), once per token. */
typedef struct {
    __m512i q;
    __m512 d;
} lpair;

/* Two fp16 scales -> lanes 0..7 and 8..15, converted together. */
INL __m512 two_scales(const uint16_t *d0, const uint16_t *d1)
{
    __m128i h = _mm_insert_epi16(_mm_cvtsi32_si128(*d0), *d1, 1);
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_cvtph_ps(h)));
}

INL int loffset(int wtype)
{
    return wtype == APR_TYPE_Q8_0 ? 128 : wtype == APR_TYPE_Q4_0 ? 8 : 16;
}

/* The 16 quant bytes of a 4-bit block -> 32 values in element order: low
 * nibbles (elements 0..15), then high nibbles (16..31). */
INL __m512i nibbles_pair(const uint8_t *qs0, const uint8_t *qs1)
{
    __m256i q = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)qs1),
                                 _mm_loadu_si128((const __m128i *)qs0));
    __m512i z = _mm512_srlv_epi64(_mm512_broadcast_i64x4(q), _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0));
    z = _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
    /* [lo0, lo1, hi0, hi1] -> [lo0, hi0, lo1, hi1] in 128-bit units. */
    return _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
}

INL void unpack_lpair(const uint8_t *w, int b, lpair *lp, int wtype)
{
    if (wtype == APR_TYPE_Q8_0) {
        const block_q8_0 *p = (const block_q8_0 *)w + b;
        __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p[0].qs)),
            _mm256_loadu_si256((const __m256i *)p[1].qs), 1);
        lp->q = _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
        lp->d = two_scales(&p[0].d, &p[1].d);
    } else if (wtype == APR_TYPE_Q4_0) {
        const block_q4_0 *p = (const block_q4_0 *)w + b;
        lp->q = nibbles_pair(p[0].qs, p[1].qs);
        lp->d = two_scales(&p[0].d, &p[1].d);
    } else { /* Q5_0: bit j of qh is the fifth bit of element j */
        const block_q5_0 *p = (const block_q5_0 *)w + b;
        uint32_t h0, h1;
        memcpy(&h0, p[0].qh, 4);
        memcpy(&h1, p[1].qh, 4);
        __m512i u = nibbles_pair(p[0].qs, p[1].qs);
        lp->q = _mm512_mask_add_epi8(u, (__mmask64)h1 << 32 | h0, u, _mm512_set1_epi8(0x10));
        lp->d = two_scales(&p[0].d, &p[1].d);
    }
}

INL void ltile(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out, const int R,
               const int T, int wtype)
{
    int nb = m->n / APR_QK;
    const __m512i z = _mm512_setzero_si512();
    __m512 acc[4][4];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        lpair lp[4];
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            /* First and last byte of the pair (44 to 68 bytes): every line. */
            const char *pf = (const char *)w + m->pf + (size_t)r * m->ws + (size_t)b * lsize(wtype);
            _mm_prefetch(pf, PF_HINT);
            _mm_prefetch(pf + 2 * lsize(wtype) - 1, PF_HINT);
            unpack_lpair(w + (size_t)r * m->ws, b, &lp[r], wtype);
        }
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) {
            const block_q8_0 *a = (const block_q8_0 *)(x + (size_t)t * m->xs) + b;
            __m512i av = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a[0].qs)),
                _mm256_loadu_si256((const __m256i *)a[1].qs), 1);
            __m512 ad = two_scales(&a[0].d, &a[1].d);
            /* -offset * a, summed by fours: the starting value of every row's sum. */
            __m512i base = _mm512_dpbusd_epi32(z, _mm512_set1_epi8((char)loffset(wtype)),
                                               _mm512_sub_epi8(z, av));
#pragma GCC unroll 16
            for (int r = 0; r < R; r++) {
                __m512i s = _mm512_dpbusd_epi32(base, lp[r].q, av);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(lp[r].d, ad),
                                            acc[r][t]);
            }
        }
    }
    /* An odd last block (rows of 32 * odd): the single-block path. */
    __m256 tail[4][4];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) tail[r][t] = _mm256_setzero_ps();
    if (b < nb) {
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            lblock lb;
            unpack_l(w + (size_t)r * m->ws, b, &lb, wtype);
#pragma GCC unroll 16
            for (int t = 0; t < T; t++)
                tail[r][t] = lblock_dot(&lb, (const block_q8_0 *)(x + (size_t)t * m->xs) + b,
                                        tail[r][t]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int t = 0; t < T; t++)
            out[(size_t)t * m->os + r] = _mm512_reduce_add_ps(acc[r][t]) + hsum256(tail[r][t]);
}

/* ------------------------------------------------------ F32 / F16 / BF16 */

INL __m512 load_wf(const uint8_t *w, int i, __mmask16 k, int wtype)
{
    if (wtype == APR_TYPE_F32) return _mm512_maskz_loadu_ps(k, (const float *)w + i);
    __m256i h = _mm256_maskz_loadu_epi16(k, (const uint16_t *)w + i);
    if (wtype == APR_TYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INL void ftile(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out, const int R,
               const int T, int wtype)
{
    __m512 acc[4][4];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    for (int i = 0; i < m->n; i += 16) {
        __mmask16 k = m->n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (m->n - i)) - 1);
        __m512 xv[4];
#pragma GCC unroll 16
        for (int t = 0; t < T; t++)
            xv[t] = _mm512_maskz_loadu_ps(k, (const float *)(x + (size_t)t * m->xs) + i);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)w + m->pf + (size_t)r * m->ws + (size_t)i * (wtype == APR_TYPE_F32 ? 4 : 2), PF_HINT);
            __m512 wv = load_wf(w + (size_t)r * m->ws, i, k, wtype);
#pragma GCC unroll 16
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 16
        for (int t = 0; t < T; t++) out[(size_t)t * m->os + r] = _mm512_reduce_add_ps(acc[r][t]);
}

/* ------------------------------------------------ activation quantizers */
/* Bit-identical to the scalar quantizers in kernels.c: the same products,
 * rounded to nearest-even by vcvtps2dq as nearest_int does, and the same
 * choice of the first element of largest magnitude. */

static TGT void quantize_q8_K_avx512(const float *x, block_q8_K *y, int n)
{
    for (int b = 0; b < n / APR_QK_K; b++, x += APR_QK_K) {
        __m512 am = _mm512_setzero_ps();
        for (int j = 0; j < APR_QK_K; j += 16)
            am = _mm512_max_ps(am, _mm512_abs_ps(_mm512_loadu_ps(x + j)));
        float amax = _mm512_reduce_max_ps(am);
        if (!(amax > 0)) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float max = 0;
        __m512 va = _mm512_set1_ps(amax);
        for (int j = 0; j < APR_QK_K; j += 16) {
            __mmask16 k = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + j)), va,
                                             _CMP_EQ_OQ);
            if (k) {
                max = x[j + __builtin_ctz(k)];
                break;
            }
        }
        float iscale = -127.f / max;
        __m512 vs = _mm512_set1_ps(iscale);
        for (int g = 0; g < APR_QK_K / 16; g++) {
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + 16 * g), vs));
            v = _mm512_min_epi32(v, _mm512_set1_epi32(127));
            _mm_storeu_si128((__m128i *)(y[b].qs + 16 * g), _mm512_cvtsepi32_epi8(v));
            y[b].bsums[g] = (int16_t)_mm512_reduce_add_epi32(v);
        }
        y[b].d = 1 / iscale;
    }
}

/* Q8_0, and Q8_1 when y1 is given (then y is unused). */
static TGT void quantize_q8_0_avx512(const float *x, block_q8_0 *y, block_q8_1 *y1, int n)
{
    for (int b = 0; b < n / APR_QK; b++, x += APR_QK) {
        __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        float amax = _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float d = amax / 127.f;
        float id = amax != 0 ? 127.f / amax : 0.f;
        __m512 vid = _mm512_set1_ps(id);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vid));
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vid));
        int8_t *qs = y1 ? y1[b].qs : y[b].qs;
        _mm_storeu_si128((__m128i *)qs, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtsepi32_epi8(q1));
        if (y1) {
            y1[b].d = apr_f32_to_fp16(d);
            y1[b].s = apr_f32_to_fp16(d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)));
        } else {
            y[b].d = apr_f32_to_fp16(d);
        }
    }
}

int apr_act_quantize_avx512(uint32_t wtype, const float *x, void *xq, int n)
{
    switch (wtype) {
    case APR_TYPE_Q4_K: case APR_TYPE_Q5_K: case APR_TYPE_Q6_K:
        quantize_q8_K_avx512(x, xq, n);
        return 1;
    case APR_TYPE_Q4_0: case APR_TYPE_Q5_0: case APR_TYPE_Q8_0:
        quantize_q8_0_avx512(x, xq, NULL, n);
        return 1;
    case APR_TYPE_Q4_1: case APR_TYPE_Q5_1:
        quantize_q8_0_avx512(x, NULL, xq, n);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------- driver */

/* Tiles of 4 x 4, then the leftover tokens and rows one at a time. Each
 * instantiation below has constant R, T and wtype, so the tile loops unroll
 * and the accumulators live in registers. */
#define TILE_FN(name, tile, wtype, R, T)                                                    \
    static TGT void name(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out)  \
    {                                                                                       \
        tile(m, w, x, out, R, T, wtype);                                                    \
    }
/* The tiles of one weight type: rows x tokens. */
typedef void (*tile_fn)(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out);
typedef struct {
    tile_fn big, big1;  /* RT x TT, 1 x TT */
    tile_fn mid, mid1;  /* 4 x 4, 1 x 4 */
    tile_fn one, one1;  /* 4 x 1, 1 x 1 */
    int rt, tt;
} tile_set;
#define TILE_SET(pfx, tile, wtype, RT, TT)                                      \
    TILE_FN(pfx##_big, tile, wtype, RT, TT)                                     \
    TILE_FN(pfx##_big1, tile, wtype, 1, TT)                                     \
    TILE_FN(pfx##_mid, tile, wtype, 4, 4)                                       \
    TILE_FN(pfx##_mid1, tile, wtype, 1, 4)                                      \
    TILE_FN(pfx##_one, tile, wtype, 4, 1)                                       \
    TILE_FN(pfx##_one1, tile, wtype, 1, 1)                                      \
    static const tile_set pfx##_set = {pfx##_big, pfx##_big1, pfx##_mid, pfx##_mid1, \
                                       pfx##_one, pfx##_one1, RT, TT};

/* K-quants: one row x 16 tokens, so a block is unpacked once per 16 tokens
 * (the unpack costs more than a dot; measured +12% over 4 x 4). Legacy
 * quants build each token's pair vector once per tile, so 4 x 4 suits them. */
TILE_SET(q4k, ktile, APR_TYPE_Q4_K, 1, 16)
TILE_SET(q5k, ktile, APR_TYPE_Q5_K, 1, 16)
TILE_SET(q6k, ktile, APR_TYPE_Q6_K, 1, 16)
TILE_SET(q40, ltile, APR_TYPE_Q4_0, 4, 4)
TILE_SET(q50, ltile, APR_TYPE_Q5_0, 4, 4)
TILE_SET(q80, ltile, APR_TYPE_Q8_0, 4, 4)
TILE_SET(f32, ftile, APR_TYPE_F32, 4, 4)
TILE_SET(f16, ftile, APR_TYPE_F16, 4, 4)
TILE_SET(bf16, ftile, APR_TYPE_BF16, 4, 4)

/* Tokens [t0, t1) in steps of tt, with tiles of rt rows, then single rows. */
static int run_band(tile_fn f, tile_fn f1, int rt, int tt, const mm_args *m, int r0, int r1,
                    int t, int ntok)
{
    for (; t + tt <= ntok; t += tt) {
        const uint8_t *x = m->x + (size_t)t * m->xs;
        float *out = m->out + (size_t)t * m->os;
        int r = r0;
        for (; r + rt <= r1; r += rt) f(m, m->w + (size_t)r * m->ws, x, out + r);
        for (; r < r1; r++) f1(m, m->w + (size_t)r * m->ws, x, out + r);
    }
    return t;
}

static void run_tiles(const tile_set *s, const mm_args *m, int nrows, int ntok)
{
    /* Rows in chunks of 16, all tokens for each chunk: the chunk's weights stay
     * in L1/L2 while every token passes over them, and the weights stream
     * from memory once. */
    for (int r0 = 0; r0 < nrows; r0 += 16) {
        int r1 = nrows - r0 < 16 ? nrows : r0 + 16;
        int t = run_band(s->big, s->big1, s->rt, s->tt, m, r0, r1, 0, ntok);
        t = run_band(s->mid, s->mid1, 4, 4, m, r0, r1, t, ntok);
        run_band(s->one, s->one1, 4, 1, m, r0, r1, t, ntok);
    }
}

int apr_matmul_avx512(uint32_t wtype, int n, const void *w, size_t w_stride, int nrows,
                      const void *xq, size_t x_stride, int ntok, float *out, size_t out_stride)
{
    const tile_set *set;
    switch (wtype) {
    case APR_TYPE_Q4_K: set = &q4k_set; break;
    case APR_TYPE_Q5_K: set = &q5k_set; break;
    case APR_TYPE_Q6_K: set = &q6k_set; break;
    case APR_TYPE_Q4_0: set = &q40_set; break;
    case APR_TYPE_Q5_0: set = &q50_set; break;
    case APR_TYPE_Q8_0: set = &q80_set; break;
    case APR_TYPE_F32: set = &f32_set; break;
    case APR_TYPE_F16: set = &f16_set; break;
    case APR_TYPE_BF16: set = &bf16_set; break;
    default: return 0;
    }
    /* Decode is latency-bound without software prefetch: fetch the rows
     * about PF_BYTES ahead (measured best here), at least a tile ahead. */
    size_t ahead = (PF_BYTES + w_stride - 1) / w_stride;
    mm_args m = {w, w_stride, xq, x_stride, out, out_stride, n, (ahead < 4 ? 4 : ahead) * w_stride};
    run_tiles(set, &m, nrows, ntok);
    return 1;
}
