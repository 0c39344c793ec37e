/* CPU dot-product kernels (private to worker/).
 *
 * Weights stay in their GGUF block format; activations are quantized once per
 * matrix product into the format the weight type pairs with, as llama.cpp does:
 *   Q4_K, Q5_K, Q6_K (and Q2_K, Q3_K) -> Q8_K blocks
 *   Q4_0, Q4_1, Q5_0, Q5_1, Q8_0     -> Q8_0 blocks (Q8_1 for the _1 types)
 *   F32                              -> f32 (copied)
 *   F16, BF16                        -> f32 (weights converted in the kernel)
 * Every type has a scalar reference; AVX2+FMA and AVX-512 (VNNI where present)
 * paths are chosen by the caller with an explicit ISA, so tests can run each.
 */
#ifndef APR_KERNELS_H
#define APR_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { APR_ISA_SCALAR = 0, APR_ISA_AVX2 = 1, APR_ISA_AVX512 = 2 } apr_isa;

/* Best ISA this CPU runs (cpuid). */
apr_isa apr_isa_detect(void);
const char *apr_isa_name(apr_isa isa);

/* Whether the kernels support weights of this type. */
int apr_kernel_supports(uint32_t wtype);

/* Bytes of one quantized activation row of n elements for weights of wtype
 * (n a multiple of the weight type's block size). */
size_t apr_act_row_bytes(uint32_t wtype, int n);
/* Quantize one activation row x[n] into xq (apr_act_row_bytes bytes). The
 * bytes are the same whatever the ISA (the SIMD quantizers are exact copies). */
void apr_act_quantize(apr_isa isa, uint32_t wtype, const float *x, void *xq, int n);

/* out[t * out_stride + r] = dot(weight row r, activation t)
 *   for r in [0, nrows), t in [0, ntok).
 * w: nrows rows of n elements, rows w_stride bytes apart (apr_row_bytes).
 * xq: ntok quantized activation rows, x_stride bytes apart.
 * Blocked so that a tile of weight rows is read once for all ntok activations. */
void apr_matmul(apr_isa isa, uint32_t wtype, int n,
                const void *w, size_t w_stride, int nrows,
                const void *xq, size_t x_stride, int ntok,
                float *out, size_t out_stride);

/* Dequantize one row of n elements to f32 (embedding lookups, tests). */
void apr_dequant_row(uint32_t wtype, const void *w, float *out, int n);

/* Internal to kernels*.c: the per-ISA paths behind apr_matmul. The SIMD ones
 * return 0 when they have no kernel for wtype (the caller then falls back). */
void apr_matmul_scalar(uint32_t wtype, int n, const void *w, size_t w_stride, int nrows,
                       const void *xq, size_t x_stride, int ntok, float *out,
                       size_t out_stride);
int apr_matmul_avx2(uint32_t wtype, int n, const void *w, size_t w_stride, int nrows,
                    const void *xq, size_t x_stride, int ntok, float *out, size_t out_stride);
int apr_matmul_avx512(uint32_t wtype, int n, const void *w, size_t w_stride, int nrows,
                      const void *xq, size_t x_stride, int ntok, float *out,
                      size_t out_stride);
/* Bit-identical to the scalar quantizer; 0 when it has none for wtype. */
int apr_act_quantize_avx512(uint32_t wtype, const float *x, void *xq, int n);

#endif
