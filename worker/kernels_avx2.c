/* AVX2 + FMA kernels for apr_matmul (machines without AVX-512 VNNI).
 *
 * Same tiling as kernels_avx512.c (R weight rows x T tokens, a row's result
 * independent of its tile), with ggml's AVX2 integer recipe per 32 elements:
 * vpmaddubsw (unsigned weights x signed activations -> int16 pairs, which
 * cannot saturate for these ranges: at most 2 * 63 * 127, or 2 * 128 * 127
 * with the sign trick) and vpmaddwd with the sub-block scale -> int32.
 * Only 16 ymm registers: tiles are 4 rows x 2 tokens.
 */
#include <immintrin.h>
#include <string.h>

#include "model/model.h"
#include "worker/kernels.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) TGT

typedef struct {
    const uint8_t *w;
    size_t ws;
    const uint8_t *x;
    size_t xs;
    float *out;
    size_t os;
    int n;
    size_t pf; /* prefetch distance: whole rows, about 12 KB */
} mm_args;

INL float half(const uint16_t *p) { return _cvtsh_ss(*p); }

INL float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL void prefetch_block(const uint8_t *row, int b, size_t bsz)
{
    const char *p = (const char *)row + (size_t)b * bsz;
    for (size_t o = 0; o < bsz; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
}

/* ------------------------------------------------------------ K-quants */

/* Q4_K/Q5_K 12-byte scales -> bytes 0..7 scales, 8..15 mins (ggml's utmp). */
INL void k4_scales(const uint8_t *s, uint8_t out[16])
{
    uint32_t u[4];
    memcpy(u, s, 12);
    const uint32_t km1 = 0x3f3f3f3f, km2 = 0x0f0f0f0f, km3 = 0x03030303;
    u[3] = ((u[2] >> 4) & km2) | (((u[1] >> 6) & km3) << 4);
    uint32_t aux = u[1] & km1;
    u[1] = (u[2] & km2) | (((u[0] >> 6) & km3) << 4);
    u[2] = aux;
    u[0] &= km1;
    memcpy(out, u, 16);
}

/* Mins times the pairs of 16-element activation sums, as int32 x8. */
INL __m256i k4_mins(const uint8_t sm[16], const block_q8_K *a)
{
    const __m128i dup = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    __m256i m16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)sm), dup));
    return _mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i *)a->bsums));
}

/* Q4_K (hbits == NULL) or Q5_K block dot, accumulated into acc. */
INL __m256 k45_dot(const uint8_t *qs, const uint8_t *qh, const uint8_t *scales, uint16_t d,
                   uint16_t dmin, const block_q8_K *a, __m256 acc)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    uint8_t sm[16];
    k4_scales(scales, sm);
    __m256i hb = qh ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
    __m256i isum = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int g = 0; g < 4; g++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (qh) {
            /* Bit 2g of qh[l] is the fifth bit of element 64g+l, 2g+1 of 64g+32+l. */
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(
                     _mm256_and_si256(_mm256_srli_epi16(hb, 2 * g), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(
                     _mm256_and_si256(_mm256_srli_epi16(hb, 2 * g + 1), one), 4));
        }
        __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(a->qs + 64 * g)));
        __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(a->qs + 64 * g + 32)));
        p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sm[2 * g]));
        p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sm[2 * g + 1]));
        isum = _mm256_add_epi32(isum, _mm256_add_epi32(p0, p1));
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(half(&d) * a->d), acc);
    return _mm256_fnmadd_ps(_mm256_cvtepi32_ps(k4_mins(sm, a)),
                            _mm256_set1_ps(half(&dmin) * a->d), acc);
}

/* Q6_K enters as unsigned 0..63 and the -32 as 32 * scale times the bsums. */
INL __m256 q6k_dot(const block_q6_K *w, const block_q8_K *a, __m256 acc)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    __m256i isum = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) {
        int h = c / 4, quarter = c % 4;
        __m256i l = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * h + 32 * (quarter & 1)));
        l = quarter & 2 ? _mm256_and_si256(_mm256_srli_epi16(l, 4), m4) : _mm256_and_si256(l, m4);
        __m256i hi = _mm256_loadu_si256((const __m256i *)(w->qh + 32 * h));
        hi = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, 2 * quarter), m3), 4);
        __m256i p = _mm256_maddubs_epi16(_mm256_or_si256(l, hi),
                                         _mm256_loadu_si256((const __m256i *)(a->qs + 32 * c)));
        /* 32 elements = two sub-blocks of 16: int16 lanes 0..7, then 8..15. */
        __m256i sc = _mm256_setr_m128i(_mm_set1_epi16(w->scales[2 * c]),
                                       _mm_set1_epi16(w->scales[2 * c + 1]));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, sc));
    }
    __m256i corr = _mm256_slli_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w->scales)), 5);
    isum = _mm256_sub_epi32(isum, _mm256_madd_epi16(corr, _mm256_loadu_si256((const __m256i *)a->bsums)));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(half(&w->d) * a->d), acc);
}

INL size_t ksize(int wtype)
{
    return wtype == APR_TYPE_Q4_K ? sizeof(block_q4_K)
         : wtype == APR_TYPE_Q5_K ? sizeof(block_q5_K) : sizeof(block_q6_K);
}

INL __m256 kdot(const uint8_t *row, int b, const block_q8_K *a, __m256 acc, int wtype)
{
    if (wtype == APR_TYPE_Q4_K) {
        const block_q4_K *p = (const block_q4_K *)row + b;
        return k45_dot(p->qs, NULL, p->scales, p->d, p->dmin, a, acc);
    }
    if (wtype == APR_TYPE_Q5_K) {
        const block_q5_K *p = (const block_q5_K *)row + b;
        return k45_dot(p->qs, p->qh, p->scales, p->d, p->dmin, a, acc);
    }
    return q6k_dot((const block_q6_K *)row + b, a, acc);
}

INL void ktile(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out, const int R,
               const int T, int wtype)
{
    int nb = m->n / APR_QK_K;
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            prefetch_block(w + m->pf + (size_t)r * m->ws, b, ksize(wtype));
#pragma GCC unroll 2
            for (int t = 0; t < T; t++)
                acc[r][t] = kdot(w + (size_t)r * m->ws, b,
                                 (const block_q8_K *)(x + (size_t)t * m->xs) + b, acc[r][t], wtype);
        }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) out[(size_t)t * m->os + r] = hsum256(acc[r][t]);
}

/* ------------------------------------------------- Q4_0 / Q5_0 / Q8_0 */

/* 0xFF in byte i where bit i of x is set (ggml's bytes_from_bits_32). */
INL __m256i bits_to_bytes(uint32_t x)
{
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* The block's 32 signed weights and its d. */
INL __m256i lweights(const uint8_t *row, int b, float *d, int wtype)
{
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    if (wtype == APR_TYPE_Q8_0) {
        const block_q8_0 *p = (const block_q8_0 *)row + b;
        *d = half(&p->d);
        return _mm256_loadu_si256((const __m256i *)p->qs);
    }
    if (wtype == APR_TYPE_Q4_0) {
        const block_q4_0 *p = (const block_q4_0 *)row + b;
        __m128i q = _mm_loadu_si128((const __m128i *)p->qs);
        *d = half(&p->d);
        __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
        return _mm256_sub_epi8(u, _mm256_set1_epi8(8));
    }
    const block_q5_0 *p = (const block_q5_0 *)row + b;
    __m128i q = _mm_loadu_si128((const __m128i *)p->qs);
    uint32_t qh;
    memcpy(&qh, p->qh, 4);
    *d = half(&p->d);
    __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
    u = _mm256_or_si256(u, _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
    return _mm256_sub_epi8(u, _mm256_set1_epi8(16));
}

INL size_t lsize(int wtype)
{
    return wtype == APR_TYPE_Q8_0 ? sizeof(block_q8_0)
         : wtype == APR_TYPE_Q4_0 ? sizeof(block_q4_0) : sizeof(block_q5_0);
}

INL void ltile(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out, const int R,
               const int T, int wtype)
{
    int nb = m->n / APR_QK;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            /* Every block's first byte: no line is skipped (blocks < 64 bytes). */
            _mm_prefetch((const char *)w + m->pf + (size_t)r * m->ws + (size_t)b * lsize(wtype),
                         _MM_HINT_T1);
            float d;
            __m256i v = lweights(w + (size_t)r * m->ws, b, &d, wtype);
            __m256i av = _mm256_abs_epi8(v);
#pragma GCC unroll 2
            for (int t = 0; t < T; t++) {
                const block_q8_0 *a = (const block_q8_0 *)(x + (size_t)t * m->xs) + b;
                __m256i s = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)a->qs), v);
                s = _mm256_madd_epi16(_mm256_maddubs_epi16(av, s), ones);
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(d * half(&a->d)),
                                            acc[r][t]);
            }
        }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) out[(size_t)t * m->os + r] = hsum256(acc[r][t]);
}

/* ------------------------------------------------------ F32 / F16 / BF16 */

INL __m256 load_wf(const uint8_t *w, int i, int wtype)
{
    if (wtype == APR_TYPE_F32) return _mm256_loadu_ps((const float *)w + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (wtype == APR_TYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INL float load_wf1(const uint8_t *w, int i, int wtype)
{
    if (wtype == APR_TYPE_F32) return ((const float *)w)[i];
    uint16_t h;
    memcpy(&h, w + 2 * (size_t)i, 2);
    return wtype == APR_TYPE_F16 ? apr_fp16_to_f32(h) : apr_bf16_to_f32(h);
}

INL void ftile(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out, const int R,
               const int T, int wtype)
{
    __m256 acc[4][2];
    int n8 = m->n / 8 * 8;
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int i = 0; i < n8; i += 8) {
        __m256 xv[2];
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps((const float *)(x + (size_t)t * m->xs) + i);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            _mm_prefetch((const char *)w + m->pf + (size_t)r * m->ws +
                             (size_t)i * (wtype == APR_TYPE_F32 ? 4 : 2), _MM_HINT_T1);
            __m256 wv = load_wf(w + (size_t)r * m->ws, i, wtype);
#pragma GCC unroll 2
            for (int t = 0; t < T; t++) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int t = 0; t < T; t++) {
            float s = hsum256(acc[r][t]);
            const float *xt = (const float *)(x + (size_t)t * m->xs);
            for (int i = n8; i < m->n; i++) s += load_wf1(w + (size_t)r * m->ws, i, wtype) * xt[i];
            out[(size_t)t * m->os + r] = s;
        }
}

/* ------------------------------------------------------------- driver */

#define TILE_FN(name, tile, wtype, R, T)                                                    \
    static TGT void name(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out)  \
    {                                                                                       \
        tile(m, w, x, out, R, T, wtype);                                                    \
    }
#define TILE_SET(pfx, tile, wtype)                 \
    TILE_FN(pfx##_42, tile, wtype, 4, 2)           \
    TILE_FN(pfx##_41, tile, wtype, 4, 1)           \
    TILE_FN(pfx##_12, tile, wtype, 1, 2)           \
    TILE_FN(pfx##_11, tile, wtype, 1, 1)           \
    static const tile_fn pfx##_set[4] = {pfx##_11, pfx##_12, pfx##_41, pfx##_42};

typedef void (*tile_fn)(const mm_args *m, const uint8_t *w, const uint8_t *x, float *out);

TILE_SET(q4k, ktile, APR_TYPE_Q4_K)
TILE_SET(q5k, ktile, APR_TYPE_Q5_K)
TILE_SET(q6k, ktile, APR_TYPE_Q6_K)
TILE_SET(q40, ltile, APR_TYPE_Q4_0)
TILE_SET(q50, ltile, APR_TYPE_Q5_0)
TILE_SET(q80, ltile, APR_TYPE_Q8_0)
TILE_SET(f32, ftile, APR_TYPE_F32)
TILE_SET(f16, ftile, APR_TYPE_F16)
TILE_SET(bf16, ftile, APR_TYPE_BF16)

/* set[0] = 1x1, [1] = 1x2, [2] = 4x1, [3] = 4x2 (rows x tokens). */
static void run_tiles(const tile_fn set[4], const mm_args *m, int nrows, int ntok)
{
    /* Rows in chunks of 16, all tokens for each chunk: the chunk's weights stay
     * in L1/L2 while every token passes over them, and the weights stream
     * from memory once. */
    for (int r0 = 0; r0 < nrows; r0 += 16) {
        int r1 = nrows - r0 < 16 ? nrows : r0 + 16;
        int t = 0;
        for (; t + 2 <= ntok; t += 2) {
            const uint8_t *x = m->x + (size_t)t * m->xs;
            float *out = m->out + (size_t)t * m->os;
            int r = r0;
            for (; r + 4 <= r1; r += 4) set[3](m, m->w + (size_t)r * m->ws, x, out + r);
            for (; r < r1; r++) set[1](m, m->w + (size_t)r * m->ws, x, out + r);
        }
        for (; t < ntok; t++) {
            const uint8_t *x = m->x + (size_t)t * m->xs;
            float *out = m->out + (size_t)t * m->os;
            int r = r0;
            for (; r + 4 <= r1; r += 4) set[2](m, m->w + (size_t)r * m->ws, x, out + r);
            for (; r < r1; r++) set[0](m, m->w + (size_t)r * m->ws, x, out + r);
        }
    }
}

int apr_matmul_avx2(uint32_t wtype, int n, const void *w, size_t w_stride, int nrows,
                    const void *xq, size_t x_stride, int ntok, float *out, size_t out_stride)
{
    const tile_fn *set;
    switch (wtype) {
    case APR_TYPE_Q4_K: set = q4k_set; break;
    case APR_TYPE_Q5_K: set = q5k_set; break;
    case APR_TYPE_Q6_K: set = q6k_set; break;
    case APR_TYPE_Q4_0: set = q40_set; break;
    case APR_TYPE_Q5_0: set = q50_set; break;
    case APR_TYPE_Q8_0: set = q80_set; break;
    case APR_TYPE_F32: set = f32_set; break;
    case APR_TYPE_F16: set = f16_set; break;
    case APR_TYPE_BF16: set = bf16_set; break;
    default: return 0;
    }
    /* Prefetch the rows about 12 KB ahead, at least a tile ahead (see
     * kernels_avx512.c: decode is latency-bound without it). */
    size_t ahead = (12288 + w_stride - 1) / w_stride;
    mm_args m = {w, w_stride, xq, x_stride, out, out_stride, n, (ahead < 4 ? 4 : ahead) * w_stride};
    run_tiles(set, &m, nrows, ntok);
    return 1;
}
