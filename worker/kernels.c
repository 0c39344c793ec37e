/* CPU dot-product kernels: activation quantization, the scalar reference of
 * every weight type, dequantization and the per-ISA dispatch.
 *
 * The scalar code follows ggml's reference semantics exactly (integer dot
 * products per block, then one float scale per block), because parity with
 * llama.cpp's logits depends on it; the SIMD paths in kernels_avx2.c and
 * kernels_avx512.c compute the same integers in a different order.
 */
#include <math.h>
#include <string.h>

#include "model/model.h"
#include "worker/kernels.h"

/* ------------------------------------------------------------------ ISA */

apr_isa apr_isa_detect(void)
{
    __builtin_cpu_init();
    /* The AVX-512 path is written around vpdpbusd, so it needs VNNI too. */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return APR_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return APR_ISA_AVX2;
    return APR_ISA_SCALAR;
}

const char *apr_isa_name(apr_isa isa)
{
    switch (isa) {
    case APR_ISA_SCALAR: return "scalar";
    case APR_ISA_AVX2: return "avx2";
    case APR_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

int apr_kernel_supports(uint32_t wtype)
{
    switch (wtype) {
    case APR_TYPE_F32: case APR_TYPE_F16: case APR_TYPE_BF16:
    case APR_TYPE_Q4_0: case APR_TYPE_Q4_1: case APR_TYPE_Q5_0: case APR_TYPE_Q5_1:
    case APR_TYPE_Q8_0: case APR_TYPE_Q4_K: case APR_TYPE_Q5_K: case APR_TYPE_Q6_K:
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------- activation formats */

enum act_fmt { ACT_NONE, ACT_F32, ACT_Q8_0, ACT_Q8_1, ACT_Q8_K };

static enum act_fmt act_format(uint32_t wtype)
{
    switch (wtype) {
    case APR_TYPE_F32: case APR_TYPE_F16: case APR_TYPE_BF16: return ACT_F32;
    case APR_TYPE_Q4_0: case APR_TYPE_Q5_0: case APR_TYPE_Q8_0: return ACT_Q8_0;
    case APR_TYPE_Q4_1: case APR_TYPE_Q5_1: return ACT_Q8_1;
    case APR_TYPE_Q4_K: case APR_TYPE_Q5_K: case APR_TYPE_Q6_K: return ACT_Q8_K;
    }
    return ACT_NONE;
}

size_t apr_act_row_bytes(uint32_t wtype, int n)
{
    if (n <= 0) return 0;
    switch (act_format(wtype)) {
    case ACT_F32: return (size_t)n * sizeof(float);
    case ACT_Q8_0: return n % APR_QK ? 0 : (size_t)(n / APR_QK) * sizeof(block_q8_0);
    case ACT_Q8_1: return n % APR_QK ? 0 : (size_t)(n / APR_QK) * sizeof(block_q8_1);
    case ACT_Q8_K: return n % APR_QK_K ? 0 : (size_t)(n / APR_QK_K) * sizeof(block_q8_K);
    case ACT_NONE: break;
    }
    return 0;
}

/* Round to nearest, ties to even, for |f| < 2^22: ggml's nearest_int, which
 * is also what the SIMD quantizers' round-to-nearest instructions do. */
static inline int nearest_int(float f)
{
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* ggml's quantize_row_q8_0 (x86 SIMD flavour: ties to even). */
static void quantize_q8_0(const float *x, block_q8_0 *y, int n)
{
    for (int b = 0; b < n / APR_QK; b++, x += APR_QK) {
        float amax = 0;
        for (int j = 0; j < APR_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.f;
        float id = amax != 0 ? 127.f / amax : 0.f;
        y[b].d = apr_f32_to_fp16(d);
        for (int j = 0; j < APR_QK; j++) y[b].qs[j] = (int8_t)nearest_int(x[j] * id);
    }
}

/* As Q8_0, plus s = d * sum(q) for the min term of Q4_1/Q5_1. */
static void quantize_q8_1(const float *x, block_q8_1 *y, int n)
{
    for (int b = 0; b < n / APR_QK; b++, x += APR_QK) {
        float amax = 0;
        for (int j = 0; j < APR_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.f;
        float id = amax != 0 ? 127.f / amax : 0.f;
        int sum = 0;
        for (int j = 0; j < APR_QK; j++) {
            int q = nearest_int(x[j] * id);
            y[b].qs[j] = (int8_t)q;
            sum += q;
        }
        y[b].d = apr_f32_to_fp16(d);
        y[b].s = apr_f32_to_fp16(d * (float)sum);
    }
}

/* ggml's quantize_row_q8_K_ref: the scale comes from the element of largest
 * magnitude *with its sign* (d = max / -127), so that element maps to -127. */
static void quantize_q8_K(const float *x, block_q8_K *y, int n)
{
    for (int b = 0; b < n / APR_QK_K; b++, x += APR_QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < APR_QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float iscale = -127.f / max;
        for (int j = 0; j < APR_QK_K; j++) {
            int v = nearest_int(iscale * x[j]);
            y[b].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int g = 0; g < APR_QK_K / 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += y[b].qs[g * 16 + j];
            y[b].bsums[g] = (int16_t)sum;
        }
        y[b].d = 1 / iscale;
    }
}

void apr_act_quantize(apr_isa isa, uint32_t wtype, const float *x, void *xq, int n)
{
    /* One format for every ISA: the quantized bytes never depend on the path. */
    if (apr_act_row_bytes(wtype, n) == 0) return;
    if (isa >= APR_ISA_AVX512 && apr_act_quantize_avx512(wtype, x, xq, n)) return;
    switch (act_format(wtype)) {
    case ACT_F32: memcpy(xq, x, (size_t)n * sizeof(float)); break;
    case ACT_Q8_0: quantize_q8_0(x, xq, n); break;
    case ACT_Q8_1: quantize_q8_1(x, xq, n); break;
    case ACT_Q8_K: quantize_q8_K(x, xq, n); break;
    case ACT_NONE: break;
    }
}

/* ------------------------------------------------------- K-quant scales */

/* Sub-block j's 6-bit scale and min from the 12 packed bytes of Q4_K/Q5_K
 * (ggml's get_scale_min_k4). */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* ---------------------------------------------------------- dequantize */

static void dequant_q4_0(const block_q4_0 *x, float *y, int nb)
{
    for (int b = 0; b < nb; b++, y += APR_QK) {
        float d = apr_fp16_to_f32(x[b].d);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((x[b].qs[j] & 0xF) - 8) * d;
            y[j + 16] = (float)((x[b].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const block_q4_1 *x, float *y, int nb)
{
    for (int b = 0; b < nb; b++, y += APR_QK) {
        float d = apr_fp16_to_f32(x[b].d), m = apr_fp16_to_f32(x[b].m);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(x[b].qs[j] & 0xF) * d + m;
            y[j + 16] = (float)(x[b].qs[j] >> 4) * d + m;
        }
    }
}

/* Q5_0/Q5_1: bit j of qh is the fifth bit of element j (0..31). */
static void dequant_q5_0(const block_q5_0 *x, float *y, int nb)
{
    for (int b = 0; b < nb; b++, y += APR_QK) {
        float d = apr_fp16_to_f32(x[b].d);
        uint32_t qh;
        memcpy(&qh, x[b].qh, 4);
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (float)(((x[b].qs[j] & 0xF) | h0) - 16) * d;
            y[j + 16] = (float)(((x[b].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

static void dequant_q5_1(const block_q5_1 *x, float *y, int nb)
{
    for (int b = 0; b < nb; b++, y += APR_QK) {
        float d = apr_fp16_to_f32(x[b].d), m = apr_fp16_to_f32(x[b].m);
        uint32_t qh;
        memcpy(&qh, x[b].qh, 4);
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (float)((x[b].qs[j] & 0xF) | h0) * d + m;
            y[j + 16] = (float)((x[b].qs[j] >> 4) | h1) * d + m;
        }
    }
}

static void dequant_q8_0(const block_q8_0 *x, float *y, int nb)
{
    for (int b = 0; b < nb; b++, y += APR_QK) {
        float d = apr_fp16_to_f32(x[b].d);
        for (int j = 0; j < APR_QK; j++) y[j] = (float)x[b].qs[j] * d;
    }
}

/* Q4_K: 8 sub-blocks of 32; qs byte l of 32-byte group g holds element
 * 64g+l (low nibble) and 64g+32+l (high nibble). */
static void dequant_q4_K(const block_q4_K *x, float *y, int nb)
{
    for (int b = 0; b < nb; b++) {
        float d = apr_fp16_to_f32(x[b].d), dmin = apr_fp16_to_f32(x[b].dmin);
        const uint8_t *q = x[b].qs;
        for (int g = 0; g < 4; g++, q += 32) {
            int sc0, m0, sc1, m1;
            scale_min_k4(2 * g, x[b].scales, &sc0, &m0);
            scale_min_k4(2 * g + 1, x[b].scales, &sc1, &m1);
            float d0 = d * (float)sc0, mm0 = dmin * (float)m0;
            float d1 = d * (float)sc1, mm1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++) *y++ = d0 * (float)(q[l] & 0xF) - mm0;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] >> 4) - mm1;
        }
    }
}

/* Q5_K: as Q4_K plus a fifth bit: bit 2g of qh[l] for element 64g+l, bit
 * 2g+1 for element 64g+32+l. */
static void dequant_q5_K(const block_q5_K *x, float *y, int nb)
{
    for (int b = 0; b < nb; b++) {
        float d = apr_fp16_to_f32(x[b].d), dmin = apr_fp16_to_f32(x[b].dmin);
        const uint8_t *q = x[b].qs, *qh = x[b].qh;
        for (int g = 0; g < 4; g++, q += 32) {
            int sc0, m0, sc1, m1;
            scale_min_k4(2 * g, x[b].scales, &sc0, &m0);
            scale_min_k4(2 * g + 1, x[b].scales, &sc1, &m1);
            float d0 = d * (float)sc0, mm0 = dmin * (float)m0;
            float d1 = d * (float)sc1, mm1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++)
                *y++ = d0 * (float)((q[l] & 0xF) + ((qh[l] >> (2 * g)) & 1) * 16) - mm0;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)((q[l] >> 4) + ((qh[l] >> (2 * g + 1)) & 1) * 16) - mm1;
        }
    }
}

/* Q6_K value of element e (0..255) of a block, offset removed: -32..31. */
static inline int q6_K_value(const block_q6_K *x, int e)
{
    int h = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
    const uint8_t *ql = x->ql + 64 * h, *qh = x->qh + 32 * h;
    int lo = quarter & 1 ? ql[l + 32] : ql[l];
    lo = quarter & 2 ? lo >> 4 : lo & 0xF;
    int hi = (qh[l] >> (2 * quarter)) & 3;
    return (lo | hi << 4) - 32;
}

/* Written in ggml's loop form rather than with q6_K_value, so that the tests'
 * comparison of the dot product against the dequantized row checks one
 * reading of the layout against another. */
static void dequant_q6_K(const block_q6_K *x, float *y, int nb)
{
    for (int b = 0; b < nb; b++) {
        float d = apr_fp16_to_f32(x[b].d);
        const uint8_t *ql = x[b].ql, *qh = x[b].qh;
        const int8_t *sc = x[b].scales;
        for (int h = 0; h < 2; h++, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0xF) | ((qh[l] >> 0) & 3) << 4) - 32;
                int q2 = ((ql[l + 32] & 0xF) | ((qh[l] >> 2) & 3) << 4) - 32;
                int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

void apr_dequant_row(uint32_t wtype, const void *w, float *out, int n)
{
    if (n <= 0 || apr_row_bytes(wtype, (uint64_t)n) == 0) return;
    switch (wtype) {
    case APR_TYPE_F32: memcpy(out, w, (size_t)n * sizeof(float)); break;
    case APR_TYPE_F16: {
        const uint8_t *p = w;
        for (int i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = apr_fp16_to_f32(h);
        }
        break;
    }
    case APR_TYPE_BF16: {
        const uint8_t *p = w;
        for (int i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            out[i] = apr_bf16_to_f32(h);
        }
        break;
    }
    case APR_TYPE_Q4_0: dequant_q4_0(w, out, n / APR_QK); break;
    case APR_TYPE_Q4_1: dequant_q4_1(w, out, n / APR_QK); break;
    case APR_TYPE_Q5_0: dequant_q5_0(w, out, n / APR_QK); break;
    case APR_TYPE_Q5_1: dequant_q5_1(w, out, n / APR_QK); break;
    case APR_TYPE_Q8_0: dequant_q8_0(w, out, n / APR_QK); break;
    case APR_TYPE_Q4_K: dequant_q4_K(w, out, n / APR_QK_K); break;
    case APR_TYPE_Q5_K: dequant_q5_K(w, out, n / APR_QK_K); break;
    case APR_TYPE_Q6_K: dequant_q6_K(w, out, n / APR_QK_K); break;
    }
}

/* ------------------------------------------------- scalar dot products */
/* One weight row against one activation row; n is a multiple of the block. */

static float dot_f32(const float *w, const float *x, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static float dot_f16(const uint8_t *w, const float *x, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, w + 2 * i, 2);
        s += apr_fp16_to_f32(h) * x[i];
    }
    return s;
}

static float dot_bf16(const uint8_t *w, const float *x, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, w + 2 * i, 2);
        s += apr_bf16_to_f32(h) * x[i];
    }
    return s;
}

static float dot_q4_0(const block_q4_0 *w, const block_q8_0 *x, int nb)
{
    float s = 0;
    for (int b = 0; b < nb; b++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += ((w[b].qs[j] & 0xF) - 8) * x[b].qs[j];
            sumi += ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
        }
        s += (float)sumi * (apr_fp16_to_f32(w[b].d) * apr_fp16_to_f32(x[b].d));
    }
    return s;
}

static float dot_q4_1(const block_q4_1 *w, const block_q8_1 *x, int nb)
{
    float s = 0;
    for (int b = 0; b < nb; b++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            sumi += (w[b].qs[j] & 0xF) * x[b].qs[j];
            sumi += (w[b].qs[j] >> 4) * x[b].qs[j + 16];
        }
        s += (float)sumi * (apr_fp16_to_f32(w[b].d) * apr_fp16_to_f32(x[b].d)) +
             apr_fp16_to_f32(w[b].m) * apr_fp16_to_f32(x[b].s);
    }
    return s;
}

static float dot_q5_0(const block_q5_0 *w, const block_q8_0 *x, int nb)
{
    float s = 0;
    for (int b = 0; b < nb; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            sumi += (((w[b].qs[j] & 0xF) | h0) - 16) * x[b].qs[j];
            sumi += (((w[b].qs[j] >> 4) | h1) - 16) * x[b].qs[j + 16];
        }
        s += (float)sumi * (apr_fp16_to_f32(w[b].d) * apr_fp16_to_f32(x[b].d));
    }
    return s;
}

static float dot_q5_1(const block_q5_1 *w, const block_q8_1 *x, int nb)
{
    float s = 0;
    for (int b = 0; b < nb; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            sumi += ((w[b].qs[j] & 0xF) | h0) * x[b].qs[j];
            sumi += ((w[b].qs[j] >> 4) | h1) * x[b].qs[j + 16];
        }
        s += (float)sumi * (apr_fp16_to_f32(w[b].d) * apr_fp16_to_f32(x[b].d)) +
             apr_fp16_to_f32(w[b].m) * apr_fp16_to_f32(x[b].s);
    }
    return s;
}

static float dot_q8_0(const block_q8_0 *w, const block_q8_0 *x, int nb)
{
    float s = 0;
    for (int b = 0; b < nb; b++) {
        int sumi = 0;
        for (int j = 0; j < APR_QK; j++) sumi += w[b].qs[j] * x[b].qs[j];
        s += (float)sumi * (apr_fp16_to_f32(w[b].d) * apr_fp16_to_f32(x[b].d));
    }
    return s;
}

/* Q4_K x Q8_K: sum over sub-blocks of scale * (q . a), minus the mins term,
 * which needs only the activation's 16-element sums (bsums). */
static float dot_q4_K(const block_q4_K *w, const block_q8_K *x, int nb)
{
    float s = 0;
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = w[b].qs;
        const int8_t *a = x[b].qs;
        int sumi = 0, summ = 0;
        for (int g = 0; g < 4; g++, q += 32, a += 64) {
            int sc0, m0, sc1, m1;
            scale_min_k4(2 * g, w[b].scales, &sc0, &m0);
            scale_min_k4(2 * g + 1, w[b].scales, &sc1, &m1);
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (q[l] & 0xF) * a[l];
                s1 += (q[l] >> 4) * a[l + 32];
            }
            sumi += sc0 * s0 + sc1 * s1;
            summ += m0 * (x[b].bsums[4 * g] + x[b].bsums[4 * g + 1]) +
                    m1 * (x[b].bsums[4 * g + 2] + x[b].bsums[4 * g + 3]);
        }
        s += apr_fp16_to_f32(w[b].d) * x[b].d * (float)sumi -
             apr_fp16_to_f32(w[b].dmin) * x[b].d * (float)summ;
    }
    return s;
}

static float dot_q5_K(const block_q5_K *w, const block_q8_K *x, int nb)
{
    float s = 0;
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = w[b].qs, *qh = w[b].qh;
        const int8_t *a = x[b].qs;
        int sumi = 0, summ = 0;
        for (int g = 0; g < 4; g++, q += 32, a += 64) {
            int sc0, m0, sc1, m1;
            scale_min_k4(2 * g, w[b].scales, &sc0, &m0);
            scale_min_k4(2 * g + 1, w[b].scales, &sc1, &m1);
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += ((q[l] & 0xF) | ((qh[l] >> (2 * g)) & 1) << 4) * a[l];
                s1 += ((q[l] >> 4) | ((qh[l] >> (2 * g + 1)) & 1) << 4) * a[l + 32];
            }
            sumi += sc0 * s0 + sc1 * s1;
            summ += m0 * (x[b].bsums[4 * g] + x[b].bsums[4 * g + 1]) +
                    m1 * (x[b].bsums[4 * g + 2] + x[b].bsums[4 * g + 3]);
        }
        s += apr_fp16_to_f32(w[b].d) * x[b].d * (float)sumi -
             apr_fp16_to_f32(w[b].dmin) * x[b].d * (float)summ;
    }
    return s;
}

static float dot_q6_K(const block_q6_K *w, const block_q8_K *x, int nb)
{
    float s = 0;
    for (int b = 0; b < nb; b++) {
        int sumi = 0;
        for (int g = 0; g < 16; g++) {
            int sg = 0;
            for (int j = 0; j < 16; j++) sg += q6_K_value(&w[b], 16 * g + j) * x[b].qs[16 * g + j];
            sumi += w[b].scales[g] * sg;
        }
        s += apr_fp16_to_f32(w[b].d) * x[b].d * (float)sumi;
    }
    return s;
}

static float dot_row(uint32_t wtype, const void *w, const void *x, int n)
{
    switch (wtype) {
    case APR_TYPE_F32: return dot_f32(w, x, n);
    case APR_TYPE_F16: return dot_f16(w, x, n);
    case APR_TYPE_BF16: return dot_bf16(w, x, n);
    case APR_TYPE_Q4_0: return dot_q4_0(w, x, n / APR_QK);
    case APR_TYPE_Q4_1: return dot_q4_1(w, x, n / APR_QK);
    case APR_TYPE_Q5_0: return dot_q5_0(w, x, n / APR_QK);
    case APR_TYPE_Q5_1: return dot_q5_1(w, x, n / APR_QK);
    case APR_TYPE_Q8_0: return dot_q8_0(w, x, n / APR_QK);
    case APR_TYPE_Q4_K: return dot_q4_K(w, x, n / APR_QK_K);
    case APR_TYPE_Q5_K: return dot_q5_K(w, x, n / APR_QK_K);
    case APR_TYPE_Q6_K: return dot_q6_K(w, x, n / APR_QK_K);
    }
    return 0;
}

void apr_matmul_scalar(uint32_t wtype, int n, const void *w, size_t w_stride, int nrows,
                       const void *xq, size_t x_stride, int ntok, float *out,
                       size_t out_stride)
{
    const uint8_t *wb = w, *xb = xq;
    for (int t = 0; t < ntok; t++)
        for (int r = 0; r < nrows; r++)
            out[(size_t)t * out_stride + r] =
                dot_row(wtype, wb + (size_t)r * w_stride, xb + (size_t)t * x_stride, n);
}

void apr_matmul(apr_isa isa, uint32_t wtype, int n, const void *w, size_t w_stride, int nrows,
                const void *xq, size_t x_stride, int ntok, float *out, size_t out_stride)
{
    if (nrows <= 0 || ntok <= 0 || apr_act_row_bytes(wtype, n) == 0 ||
        !apr_kernel_supports(wtype))
        return;
    if (isa >= APR_ISA_AVX512 &&
        apr_matmul_avx512(wtype, n, w, w_stride, nrows, xq, x_stride, ntok, out, out_stride))
        return;
    if (isa >= APR_ISA_AVX2 &&
        apr_matmul_avx2(wtype, n, w, w_stride, nrows, xq, x_stride, ntok, out, out_stride))
        return;
    apr_matmul_scalar(wtype, n, w, w_stride, nrows, xq, x_stride, ntok, out, out_stride);
}
