/* CPU kernels: fp16 conversions, activation quantization, the block layouts
 * (known-answer blocks built with ggml's packing rules), the scalar dot
 * products against float dots of dequantized data, and every SIMD path this
 * machine runs against the scalar reference. No fixtures needed. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "worker/kernels.h"

/* ------------------------------------------------------------- helpers */

typedef struct { uint64_t s; } rng;

static uint64_t rng_next(rng *r)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return r->s;
}

static float rng_unif(rng *r) /* [-1, 1) */
{
    return (float)((rng_next(r) >> 40) * (1.0 / (1 << 23)) - 1.0);
}

static const uint32_t all_types[] = {
    APR_TYPE_F32, APR_TYPE_F16, APR_TYPE_BF16, APR_TYPE_Q4_0, APR_TYPE_Q4_1, APR_TYPE_Q5_0,
    APR_TYPE_Q5_1, APR_TYPE_Q8_0, APR_TYPE_Q4_K, APR_TYPE_Q5_K, APR_TYPE_Q6_K,
};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

static int is_k_quant(uint32_t t)
{
    return t == APR_TYPE_Q4_K || t == APR_TYPE_Q5_K || t == APR_TYPE_Q6_K;
}

static uint16_t rand_scale(rng *r, float lo, float hi)
{
    float u = (rng_unif(r) + 1) / 2;
    float v = lo + (hi - lo) * u;
    return apr_f32_to_fp16(rng_next(r) & 1 ? -v : v);
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* Random bytes for the quants, finite sane fp16 scales at their offsets. */
static void fill_row(rng *r, uint32_t type, uint8_t *w, int n)
{
    const apr_type_info *ti = apr_type_get(type);
    size_t bytes = apr_row_bytes(type, (uint64_t)n);
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)rng_next(r);
    int nb = n / (int)ti->block_size;
    for (int b = 0; b < nb; b++) {
        uint8_t *blk = w + (size_t)b * ti->type_size;
        switch (type) {
        case APR_TYPE_F32:
            for (int j = 0; j < n; j++) {
                float f = rng_unif(r) * 0.1f;
                memcpy(w + 4 * j, &f, 4);
            }
            return;
        case APR_TYPE_F16:
            for (int j = 0; j < n; j++) put16(w + 2 * j, apr_f32_to_fp16(rng_unif(r) * 0.1f));
            return;
        case APR_TYPE_BF16:
            for (int j = 0; j < n; j++) put16(w + 2 * j, apr_f32_to_bf16(rng_unif(r) * 0.1f));
            return;
        case APR_TYPE_Q4_0: case APR_TYPE_Q5_0: case APR_TYPE_Q8_0:
            put16(blk, rand_scale(r, 0.001f, 0.01f));
            break;
        case APR_TYPE_Q4_1: case APR_TYPE_Q5_1:
        case APR_TYPE_Q4_K: case APR_TYPE_Q5_K:
            put16(blk, rand_scale(r, 0.0005f, 0.005f));
            put16(blk + 2, rand_scale(r, 0.0005f, 0.005f));
            break;
        case APR_TYPE_Q6_K:
            put16(blk + offsetof(block_q6_K, d), rand_scale(r, 0.0001f, 0.001f));
            break;
        }
    }
}

static void fill_acts(rng *r, float *x, int n)
{
    for (int i = 0; i < n; i++) x[i] = rng_unif(r);
    /* A few outliers, as real hidden states have. */
    for (int i = 0; i < n / 97; i++) x[rng_next(r) % (uint64_t)n] = rng_unif(r) * 20;
}

static apr_isa max_isa(void) { return apr_isa_detect(); }

/* ------------------------------------------------------------- fp16 */

START_TEST(fp16_edges)
{
    ck_assert_float_eq(apr_fp16_to_f32(0x0000), 0.0f);
    ck_assert(signbit(apr_fp16_to_f32(0x8000)));
    ck_assert_float_eq(apr_fp16_to_f32(0x3c00), 1.0f);
    ck_assert_float_eq(apr_fp16_to_f32(0xc000), -2.0f);
    ck_assert_float_eq(apr_fp16_to_f32(0x7bff), 65504.0f);
    ck_assert_float_eq(apr_fp16_to_f32(0x0001), ldexpf(1, -24));
    ck_assert_float_eq(apr_fp16_to_f32(0x03ff), ldexpf(1023, -24));
    ck_assert_float_eq(apr_fp16_to_f32(0x0400), ldexpf(1, -14));
    ck_assert(isinf(apr_fp16_to_f32(0x7c00)) && apr_fp16_to_f32(0x7c00) > 0);
    ck_assert(isinf(apr_fp16_to_f32(0xfc00)) && apr_fp16_to_f32(0xfc00) < 0);
    ck_assert(isnan(apr_fp16_to_f32(0x7e00)));
    /* Rounding to nearest even, overflow, underflow. */
    ck_assert_uint_eq(apr_f32_to_fp16(1.0f + ldexpf(1, -11)), 0x3c00);
    ck_assert_uint_eq(apr_f32_to_fp16(1.0f + 3 * ldexpf(1, -11)), 0x3c02);
    ck_assert_uint_eq(apr_f32_to_fp16(65519.0f), 0x7bff);
    ck_assert_uint_eq(apr_f32_to_fp16(65520.0f), 0x7c00);
    ck_assert_uint_eq(apr_f32_to_fp16(1e9f), 0x7c00);
    ck_assert_uint_eq(apr_f32_to_fp16(-1e9f), 0xfc00);
    ck_assert_uint_eq(apr_f32_to_fp16(ldexpf(1, -24)), 0x0001);
    ck_assert_uint_eq(apr_f32_to_fp16(ldexpf(1, -26)), 0x0000);
    ck_assert_uint_eq(apr_f32_to_fp16(ldexpf(3, -26)), 0x0001);
    ck_assert_uint_eq(apr_f32_to_fp16(-0.0f), 0x8000);
    ck_assert_uint_eq(apr_f32_to_fp16(NAN) & 0x7c00, 0x7c00);
    ck_assert_uint_ne(apr_f32_to_fp16(NAN) & 0x03ff, 0);
    /* Every finite half survives the round trip. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        ck_assert_uint_eq(apr_f32_to_fp16(apr_fp16_to_f32((uint16_t)h)), h);
    }
    /* bf16: truncation of the f32 bits, rounding to nearest even. */
    ck_assert_float_eq(apr_bf16_to_f32(0x3f80), 1.0f);
    ck_assert_uint_eq(apr_f32_to_bf16(1.0f), 0x3f80);
    ck_assert_uint_eq(apr_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3f80);
    ck_assert_uint_eq(apr_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3f82);
}
END_TEST

/* ------------------------------------------------ activation quantizers */

START_TEST(act_row_bytes)
{
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_F32, 48), 48 * 4);
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_F16, 48), 48 * 4);
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_Q8_0, 64), 2 * sizeof(block_q8_0));
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_Q5_0, 896), 28 * sizeof(block_q8_0));
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_Q4_1, 64), 2 * sizeof(block_q8_1));
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_Q4_K, 512), 2 * sizeof(block_q8_K));
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_Q6_K, 896), 0);
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_Q8_0, 33), 0);
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_Q2_K, 256), 0);
    ck_assert_uint_eq(apr_act_row_bytes(APR_TYPE_F32, 0), 0);
    for (int i = 0; i < N_TYPES; i++) ck_assert(apr_kernel_supports(all_types[i]));
    ck_assert(!apr_kernel_supports(APR_TYPE_Q2_K));
    ck_assert(!apr_kernel_supports(APR_TYPE_I32));
    ck_assert(!apr_kernel_supports(9999));
}
END_TEST

START_TEST(quant_q8_K)
{
    rng r = {0x1234567};
    enum { N = 1024 };
    float x[N];
    block_q8_K q[N / APR_QK_K];
    fill_acts(&r, x, N);
    x[300] = -25.0f; /* the largest magnitude of block 1, negative */
    memset(x + 768, 0, 256 * sizeof(float)); /* an all-zero block */
    apr_act_quantize(APR_ISA_SCALAR, APR_TYPE_Q4_K, x, q, N);
    for (int b = 0; b < N / APR_QK_K; b++) {
        float amax = 0;
        for (int j = 0; j < APR_QK_K; j++) amax = fmaxf(amax, fabsf(x[b * 256 + j]));
        ck_assert_float_eq_tol(fabsf(q[b].d), amax / 127, amax * 1e-6f + 1e-30f);
        for (int j = 0; j < APR_QK_K; j++) {
            float err = fabsf(q[b].d * q[b].qs[j] - x[b * 256 + j]);
            ck_assert_msg(err <= fabsf(q[b].d) * 0.5001f + 1e-7f, "block %d elt %d err %g", b, j,
                          err);
        }
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += q[b].qs[g * 16 + j];
            ck_assert_int_eq(q[b].bsums[g], s);
        }
    }
    /* ggml's sign convention: the largest-magnitude element becomes -127. */
    ck_assert_int_eq(q[1].qs[300 - 256], -127);
    ck_assert(q[1].d > 0);
    ck_assert_float_eq(q[3].d, 0);
    for (int j = 0; j < 256; j++) ck_assert_int_eq(q[3].qs[j], 0);
    /* Ties go to even, as ggml's nearest_int does: 0.5 step -> 0, 1.5 -> 2. */
    float t[256] = {0};
    t[0] = -127.0f;
    t[1] = -0.5f;
    t[2] = -1.5f;
    t[3] = -2.5f;
    apr_act_quantize(APR_ISA_SCALAR, APR_TYPE_Q6_K, t, q, 256);
    ck_assert_float_eq(q[0].d, 1.0f);
    ck_assert_int_eq(q[0].qs[1], 0);
    ck_assert_int_eq(q[0].qs[2], -2);
    ck_assert_int_eq(q[0].qs[3], -2);
}
END_TEST

START_TEST(quant_q8_0)
{
    rng r = {0x77};
    enum { N = 896 };
    float x[N];
    block_q8_0 q[N / APR_QK];
    block_q8_1 q1[N / APR_QK];
    fill_acts(&r, x, N);
    memset(x + 64, 0, 32 * sizeof(float));
    apr_act_quantize(APR_ISA_SCALAR, APR_TYPE_Q5_0, x, q, N);
    apr_act_quantize(APR_ISA_SCALAR, APR_TYPE_Q4_1, x, q1, N);
    for (int b = 0; b < N / APR_QK; b++) {
        float amax = 0;
        for (int j = 0; j < APR_QK; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = apr_fp16_to_f32(q[b].d);
        ck_assert_float_eq_tol(d, amax / 127, amax / 127 * 1e-3f + 1e-30f);
        int sum = 0;
        for (int j = 0; j < APR_QK; j++) {
            /* Half a step, plus the fp16 rounding of d times |q| <= 127. */
            float err = fabsf(d * q[b].qs[j] - x[b * 32 + j]);
            ck_assert_msg(err <= amax / 127 * 0.57f + 1e-7f, "block %d elt %d err %g", b, j, err);
            ck_assert_int_eq(q1[b].qs[j], q[b].qs[j]);
            sum += q[b].qs[j];
        }
        ck_assert_uint_eq(q1[b].d, q[b].d);
        ck_assert_float_eq_tol(apr_fp16_to_f32(q1[b].s), amax / 127 * sum,
                               fabsf(amax / 127 * sum) * 1e-3f + 1e-6f);
    }
    ck_assert_uint_eq(q[2].d, 0);
}
END_TEST

/* The quantized bytes are the same whichever ISA quantized them. */
START_TEST(quant_same_bytes)
{
    const uint32_t fmts[] = {APR_TYPE_Q4_K, APR_TYPE_Q8_0, APR_TYPE_Q4_1, APR_TYPE_F32};
    rng r = {0xfeed};
    enum { N = 4864 };
    float *x = malloc(sizeof(float) * N);
    uint8_t *a = malloc(N * 4), *b = malloc(N * 4);
    for (int rep = 0; rep < 20; rep++) {
        fill_acts(&r, x, N);
        if (rep % 4 == 1) memset(x + 256, 0, 512 * sizeof(float));
        if (rep % 4 == 2) /* exact ties after scaling: max -127 makes iscale 1 */
            for (int i = 0; i < N; i++) x[i] = i % 256 == 5 ? -127.f : (float)(i % 17) - 8.5f;
        if (rep % 4 == 3) /* equal magnitudes, opposite signs: the first one wins */
            for (int i = 0; i < N; i += 64) x[i] = i % 128 ? -30.f : 30.f;
        for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
            size_t nb = apr_act_row_bytes(fmts[f], N);
            apr_act_quantize(APR_ISA_SCALAR, fmts[f], x, a, N);
            for (int isa = 1; isa <= (int)max_isa(); isa++) {
                memset(b, 0x5a, nb);
                apr_act_quantize((apr_isa)isa, fmts[f], x, b, N);
                ck_assert_msg(memcmp(a, b, nb) == 0, "%s quantizer of %s differs (rep %d)",
                              apr_isa_name((apr_isa)isa), apr_type_get(fmts[f])->name, rep);
            }
        }
    }
    free(x), free(a), free(b);
}
END_TEST

/* ---------------------------------------------- known-answer block layouts */
/* Blocks packed with the rules of ggml's reference quantizers, so the
 * dequantizer is checked against an independent reading of the format. */

static void pack_k4_scales(uint8_t s[12], const int sc[8], const int m[8])
{
    memset(s, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] = (uint8_t)sc[j];
            s[j + 4] = (uint8_t)m[j];
        } else {
            s[j + 4] = (uint8_t)((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
            s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            s[j] |= (uint8_t)((m[j] >> 4) << 6);
        }
    }
}

START_TEST(layout_q4_K_q5_K)
{
    int sc[8] = {1, 17, 33, 63, 5, 48, 31, 60}, m[8] = {0, 63, 16, 2, 47, 9, 32, 61};
    int L[256];
    for (int i = 0; i < 256; i++) L[i] = (i * 7 + i / 32) % 32;
    block_q4_K b4;
    block_q5_K b5;
    memset(&b4, 0, sizeof b4);
    memset(&b5, 0, sizeof b5);
    b4.d = b5.d = apr_f32_to_fp16(0.5f);
    b4.dmin = b5.dmin = apr_f32_to_fp16(0.25f);
    pack_k4_scales(b4.scales, sc, m);
    memcpy(b5.scales, b4.scales, 12);
    for (int n = 0, u1 = 1, u2 = 2; n < 256; n += 64, u1 <<= 2, u2 <<= 2)
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            b4.qs[n / 2 + j] = (uint8_t)((l1 & 0xF) | (l2 & 0xF) << 4);
            if (l1 > 15) b5.qh[j] |= (uint8_t)u1;
            if (l2 > 15) b5.qh[j] |= (uint8_t)u2;
            b5.qs[n / 2 + j] = (uint8_t)((l1 & 0xF) | (l2 & 0xF) << 4);
        }
    float y4[256], y5[256];
    apr_dequant_row(APR_TYPE_Q4_K, &b4, y4, 256);
    apr_dequant_row(APR_TYPE_Q5_K, &b5, y5, 256);
    for (int i = 0; i < 256; i++) {
        int s = i / 32;
        ck_assert_float_eq_tol(y4[i], 0.5f * sc[s] * (L[i] & 0xF) - 0.25f * m[s], 1e-4);
        ck_assert_float_eq_tol(y5[i], 0.5f * sc[s] * L[i] - 0.25f * m[s], 1e-4);
    }
}
END_TEST

START_TEST(layout_q6_K)
{
    int L[256]; /* 0..63, value L - 32 */
    int8_t sc[16] = {1, -2, 3, -4, 127, -128, 7, 8, 9, 10, -11, 12, 13, 14, 15, -16};
    for (int i = 0; i < 256; i++) L[i] = (i * 13 + i / 16) % 64;
    block_q6_K b;
    memset(&b, 0, sizeof b);
    b.d = apr_f32_to_fp16(0.125f);
    memcpy(b.scales, sc, 16);
    for (int j = 0; j < 256; j += 128)
        for (int l = 0; l < 32; l++) {
            uint8_t *ql = b.ql + j / 2, *qh = b.qh + j / 4;
            ql[l] = (uint8_t)((L[j + l] & 0xF) | (L[j + l + 64] & 0xF) << 4);
            ql[l + 32] = (uint8_t)((L[j + l + 32] & 0xF) | (L[j + l + 96] & 0xF) << 4);
            qh[l] = (uint8_t)((L[j + l] >> 4) | (L[j + l + 32] >> 4) << 2 |
                              (L[j + l + 64] >> 4) << 4 | (L[j + l + 96] >> 4) << 6);
        }
    float y[256];
    apr_dequant_row(APR_TYPE_Q6_K, &b, y, 256);
    for (int i = 0; i < 256; i++)
        ck_assert_float_eq_tol(y[i], 0.125f * sc[i / 16] * (L[i] - 32), 1e-4);
}
END_TEST

START_TEST(layout_legacy)
{
    int L[32];
    for (int i = 0; i < 32; i++) L[i] = (i * 11 + 3) % 32;
    block_q4_0 b40 = {apr_f32_to_fp16(2.0f), {0}};
    block_q4_1 b41 = {apr_f32_to_fp16(2.0f), apr_f32_to_fp16(-3.0f), {0}};
    block_q5_0 b50 = {apr_f32_to_fp16(2.0f), {0}, {0}};
    block_q5_1 b51 = {apr_f32_to_fp16(2.0f), apr_f32_to_fp16(-3.0f), {0}, {0}};
    block_q8_0 b80 = {apr_f32_to_fp16(0.5f), {0}};
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        uint8_t v = (uint8_t)((L[j] & 0xF) | (L[j + 16] & 0xF) << 4);
        b40.qs[j] = b41.qs[j] = b50.qs[j] = b51.qs[j] = v;
        qh |= (uint32_t)((L[j] & 0x10) >> 4) << j;
        qh |= (uint32_t)((L[j + 16] & 0x10) >> 4) << (j + 16);
    }
    memcpy(b50.qh, &qh, 4);
    memcpy(b51.qh, &qh, 4);
    for (int j = 0; j < 32; j++) b80.qs[j] = (int8_t)(j * 7 - 100);
    float y[5][32];
    apr_dequant_row(APR_TYPE_Q4_0, &b40, y[0], 32);
    apr_dequant_row(APR_TYPE_Q4_1, &b41, y[1], 32);
    apr_dequant_row(APR_TYPE_Q5_0, &b50, y[2], 32);
    apr_dequant_row(APR_TYPE_Q5_1, &b51, y[3], 32);
    apr_dequant_row(APR_TYPE_Q8_0, &b80, y[4], 32);
    for (int j = 0; j < 32; j++) {
        ck_assert_float_eq(y[0][j], 2.0f * ((L[j] & 0xF) - 8));
        ck_assert_float_eq(y[1][j], 2.0f * (L[j] & 0xF) - 3.0f);
        ck_assert_float_eq(y[2][j], 2.0f * (L[j] - 16));
        ck_assert_float_eq(y[3][j], 2.0f * L[j] - 3.0f);
        ck_assert_float_eq(y[4][j], 0.5f * (j * 7 - 100));
    }
}
END_TEST

/* --------------------------------------------- scalar reference vs floats */

/* Float image of a quantized activation row (what the integer dot sees). */
static void dequant_act(uint32_t wtype, const void *xq, float *y, int n)
{
    if (is_k_quant(wtype)) {
        const block_q8_K *q = xq;
        for (int i = 0; i < n; i++) y[i] = q[i / 256].d * q[i / 256].qs[i % 256];
    } else if (wtype == APR_TYPE_Q4_1 || wtype == APR_TYPE_Q5_1) {
        const block_q8_1 *q = xq;
        for (int i = 0; i < n; i++) y[i] = apr_fp16_to_f32(q[i / 32].d) * q[i / 32].qs[i % 32];
    } else if (wtype == APR_TYPE_Q4_0 || wtype == APR_TYPE_Q5_0 || wtype == APR_TYPE_Q8_0) {
        const block_q8_0 *q = xq;
        for (int i = 0; i < n; i++) y[i] = apr_fp16_to_f32(q[i / 32].d) * q[i / 32].qs[i % 32];
    } else {
        memcpy(y, xq, (size_t)n * sizeof(float));
    }
}

START_TEST(scalar_vs_float)
{
    uint32_t type = all_types[_i];
    int bs = (int)apr_type_get(type)->block_size;
    const int sizes[] = {256, 512, 4864, 96, 896, 172};
    rng r = {0x9e3779b97f4a7c15ull + (uint64_t)_i};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        int n = sizes[si];
        if (n % bs || (bs > 1 && n % 32) || (is_k_quant(type) && n % 256)) continue;
        size_t wb = apr_row_bytes(type, (uint64_t)n), xb = apr_act_row_bytes(type, n);
        uint8_t *w = malloc(wb), *xq = malloc(xb);
        float *x = malloc(n * sizeof(float)), *wd = malloc(n * sizeof(float)),
              *xd = malloc(n * sizeof(float));
        for (int rep = 0; rep < 4; rep++) {
            fill_row(&r, type, w, n);
            fill_acts(&r, x, n);
            apr_act_quantize(APR_ISA_SCALAR, type, x, xq, n);
            float got;
            apr_matmul(APR_ISA_SCALAR, type, n, w, wb, 1, xq, xb, 1, &got, 1);
            apr_dequant_row(type, w, wd, n);
            dequant_act(type, xq, xd, n);
            /* Against the dequantized activations: only float rounding apart.
             * (Q8_1's s is an fp16 of the block sum: a little looser.) */
            double exact = 0, mag = 0, vsx = 0, bound = 0;
            for (int i = 0; i < n; i++) {
                exact += (double)wd[i] * xd[i];
                mag += fabs((double)wd[i] * xd[i]);
                vsx += (double)wd[i] * x[i];
                bound += fabs((double)wd[i]) * fabs((double)x[i] - xd[i]);
            }
            double tol = (type == APR_TYPE_Q4_1 || type == APR_TYPE_Q5_1 ? 2e-3 : 1e-5) * mag;
            ck_assert_msg(fabs(got - exact) <= tol + 1e-6, "%s n=%d: %g vs %g (mag %g)",
                          apr_type_get(type)->name, n, got, exact, mag);
            /* Against the float activations: within the quantization error. */
            ck_assert_msg(fabs(got - vsx) <= bound * 1.01 + tol + 1e-6,
                          "%s n=%d: %g vs float %g, bound %g", apr_type_get(type)->name, n, got,
                          vsx, bound);
        }
        free(w), free(xq), free(x), free(wd), free(xd);
    }
}
END_TEST

/* ------------------------------------------------- SIMD paths vs scalar */

typedef struct {
    uint32_t type;
    int n, nrows, ntok;
    uint8_t *w, *xq;
    size_t wb, xb;
    float *ref, *mag;
} mm_case;

static void mm_case_init(mm_case *c, rng *r, uint32_t type, int n, int nrows, int ntok)
{
    c->type = type, c->n = n, c->nrows = nrows, c->ntok = ntok;
    c->wb = apr_row_bytes(type, (uint64_t)n);
    c->xb = apr_act_row_bytes(type, n);
    c->w = malloc(c->wb * (size_t)nrows);
    c->xq = malloc(c->xb * (size_t)ntok);
    c->ref = malloc(sizeof(float) * (size_t)nrows * (size_t)ntok);
    c->mag = malloc(sizeof(float) * (size_t)nrows * (size_t)ntok);
    float *x = malloc(sizeof(float) * (size_t)n), *wd = malloc(sizeof(float) * (size_t)n * nrows),
          *xd = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < nrows; i++) {
        fill_row(r, type, c->w + c->wb * (size_t)i, n);
        apr_dequant_row(type, c->w + c->wb * (size_t)i, wd + (size_t)n * i, n);
    }
    for (int t = 0; t < ntok; t++) {
        fill_acts(r, x, n);
        apr_act_quantize(APR_ISA_SCALAR, type, x, c->xq + c->xb * (size_t)t, n);
        dequant_act(type, c->xq + c->xb * (size_t)t, xd, n);
        for (int i = 0; i < nrows; i++) {
            double m = 0;
            for (int j = 0; j < n; j++) m += fabs((double)wd[(size_t)n * i + j] * xd[j]);
            c->mag[(size_t)t * nrows + i] = (float)m;
        }
    }
    apr_matmul(APR_ISA_SCALAR, type, n, c->w, c->wb, nrows, c->xq, c->xb, ntok, c->ref, nrows);
    free(x), free(wd), free(xd);
}

static void mm_case_free(mm_case *c)
{
    free(c->w), free(c->xq), free(c->ref), free(c->mag);
}

/* Runs one ISA on the case with a padded output stride and checks every value
 * against the scalar reference; the padding must stay untouched. */
static void mm_check(const mm_case *c, apr_isa isa)
{
    size_t stride = (size_t)c->nrows + 3;
    float *out = malloc(sizeof(float) * stride * (size_t)c->ntok);
    for (size_t i = 0; i < stride * (size_t)c->ntok; i++) out[i] = -12345.f;
    apr_matmul(isa, c->type, c->n, c->w, c->wb, c->nrows, c->xq, c->xb, c->ntok, out, stride);
    for (int t = 0; t < c->ntok; t++) {
        for (int i = 0; i < c->nrows; i++) {
            float got = out[(size_t)t * stride + i], want = c->ref[(size_t)t * c->nrows + i];
            float tol = 2e-6f * c->mag[(size_t)t * c->nrows + i] + 1e-6f;
            /* Q8_1's fp16 s term is the same in both; no wider tolerance needed. */
            ck_assert_msg(fabsf(got - want) <= tol, "%s %s n=%d rows=%d tok=%d [%d,%d]: %.7g vs %.7g",
                          apr_isa_name(isa), apr_type_get(c->type)->name, c->n, c->nrows,
                          c->ntok, t, i, got, want);
        }
        for (size_t i = (size_t)c->nrows; i < stride; i++)
            ck_assert_float_eq(out[(size_t)t * stride + i], -12345.f);
    }
    free(out);
}

START_TEST(simd_vs_scalar)
{
    uint32_t type = all_types[_i];
    const int rows[] = {1, 3, 7, 33}, toks[] = {1, 2, 3, 5, 17, 37};
    const int sizes_k[] = {256, 512, 4864}, sizes_l[] = {32, 96, 256, 896, 4864};
    /* Float rows may have any length (stories260K's hidden size is 172). */
    const int sizes_f[] = {1, 17, 172, 288, 4864};
    int is_float = type == APR_TYPE_F32 || type == APR_TYPE_F16 || type == APR_TYPE_BF16;
    const int *sizes = is_k_quant(type) ? sizes_k : is_float ? sizes_f : sizes_l;
    int nsizes = is_k_quant(type) ? 3 : 5;
    rng r = {0xabcdef12345ull + (uint64_t)_i * 77};
    apr_isa top = max_isa();
    if (top == APR_ISA_SCALAR) {
        printf("test_kernels: this CPU has no AVX2: SIMD paths not tested\n");
        return;
    }
    for (int si = 0; si < nsizes; si++)
        for (int ri = 0; ri < 4; ri++)
            for (int ti = 0; ti < 6; ti++) {
                int n = sizes[si], nr = rows[ri], nt = toks[ti];
                /* Keep the big rows to a few shapes: the run stays short. */
                if ((n == 4864 && (nr > 7 || nt > 5)) || (nt > 17 && nr > 7)) continue;
                mm_case c;
                mm_case_init(&c, &r, type, n, nr, nt);
                for (int isa = APR_ISA_AVX2; isa <= (int)top; isa++) mm_check(&c, (apr_isa)isa);
                mm_case_free(&c);
            }
}
END_TEST

/* Rows [r0, r0+k) and tokens [t0, t0+j) computed alone equal the same rows
 * and tokens of the whole product, bit for bit: the caller splits rows across
 * threads in any way, and prompts come in any length. 37 tokens take every
 * tile shape (16, 4 and 1 tokens). */
START_TEST(row_ranges)
{
    uint32_t type = all_types[_i];
    int is_float = type == APR_TYPE_F32 || type == APR_TYPE_F16 || type == APR_TYPE_BF16;
    int n = is_k_quant(type) ? 512 : is_float ? 172 : 96;
    enum { NR = 37, NT = 37 };
    rng r = {0x5151 + (uint64_t)_i};
    mm_case c;
    mm_case_init(&c, &r, type, n, NR, NT);
    float *all = malloc(sizeof(float) * NR * NT), *part = malloc(sizeof(float) * NR * NT);
    for (int isa = 0; isa <= (int)max_isa(); isa++) {
        apr_matmul((apr_isa)isa, type, n, c.w, c.wb, NR, c.xq, c.xb, NT, all, NR);
        const int cuts[][4] = {{0, 1, 0, 37}, {1, 5, 2, 17}, {6, 13, 5, 3}, {19, 18, 1, 36},
                               {36, 1, 20, 16}, {3, 34, 0, 5}, {16, 16, 30, 7}};
        for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
            int r0 = cuts[k][0], nr = cuts[k][1], t0 = cuts[k][2], nt = cuts[k][3];
            apr_matmul((apr_isa)isa, type, n, c.w + c.wb * (size_t)r0, c.wb, nr,
                       c.xq + c.xb * (size_t)t0, c.xb, nt, part, NR);
            for (int t = 0; t < nt; t++)
                for (int i = 0; i < nr; i++)
                    ck_assert_msg(part[t * NR + i] == all[(t + t0) * NR + r0 + i],
                                  "%s %s rows %d+%d tokens %d+%d [%d,%d]: %.9g vs %.9g",
                                  apr_isa_name((apr_isa)isa), apr_type_get(type)->name, r0, nr,
                                  t0, nt, t, i, part[t * NR + i], all[(t + t0) * NR + r0 + i]);
        }
    }
    free(all), free(part);
    mm_case_free(&c);
}
END_TEST

START_TEST(isa_names)
{
    apr_isa isa = apr_isa_detect();
    ck_assert(isa >= APR_ISA_SCALAR && isa <= APR_ISA_AVX512);
    ck_assert_str_eq(apr_isa_name(APR_ISA_SCALAR), "scalar");
    ck_assert_str_eq(apr_isa_name(APR_ISA_AVX2), "avx2");
    ck_assert_str_eq(apr_isa_name(APR_ISA_AVX512), "avx512");
    printf("test_kernels: this CPU runs %s\n", apr_isa_name(isa));
}
END_TEST

static Suite *kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, isa_names);
    tcase_add_test(tc, fp16_edges);
    tcase_add_test(tc, act_row_bytes);
    tcase_add_test(tc, quant_q8_K);
    tcase_add_test(tc, quant_q8_0);
    tcase_add_test(tc, quant_same_bytes);
    tcase_add_test(tc, layout_q4_K_q5_K);
    tcase_add_test(tc, layout_q6_K);
    tcase_add_test(tc, layout_legacy);
    tcase_add_loop_test(tc, scalar_vs_float, 0, N_TYPES);
    tcase_add_loop_test(tc, simd_vs_scalar, 0, N_TYPES);
    tcase_add_loop_test(tc, row_ranges, 0, N_TYPES);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(kernels_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
