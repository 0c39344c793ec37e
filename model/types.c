/* Tensor type table and half-precision conversions. */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "model/model.h"

static_assert(sizeof(block_q4_0) == 18, "block_q4_0");
static_assert(sizeof(block_q4_1) == 20, "block_q4_1");
static_assert(sizeof(block_q5_0) == 22, "block_q5_0");
static_assert(sizeof(block_q5_1) == 24, "block_q5_1");
static_assert(sizeof(block_q8_0) == 34, "block_q8_0");
static_assert(sizeof(block_q8_1) == 36, "block_q8_1");
static_assert(sizeof(block_q2_K) == 84, "block_q2_K");
static_assert(sizeof(block_q3_K) == 110, "block_q3_K");
static_assert(sizeof(block_q4_K) == 144, "block_q4_K");
static_assert(sizeof(block_q5_K) == 176, "block_q5_K");
static_assert(sizeof(block_q6_K) == 210, "block_q6_K");
static_assert(sizeof(block_q8_K) == 292, "block_q8_K");

static const struct {
    uint32_t id;
    apr_type_info info;
} type_table[] = {
    {APR_TYPE_F32, {"F32", 1, 4}},
    {APR_TYPE_F16, {"F16", 1, 2}},
    {APR_TYPE_Q4_0, {"Q4_0", APR_QK, sizeof(block_q4_0)}},
    {APR_TYPE_Q4_1, {"Q4_1", APR_QK, sizeof(block_q4_1)}},
    {APR_TYPE_Q5_0, {"Q5_0", APR_QK, sizeof(block_q5_0)}},
    {APR_TYPE_Q5_1, {"Q5_1", APR_QK, sizeof(block_q5_1)}},
    {APR_TYPE_Q8_0, {"Q8_0", APR_QK, sizeof(block_q8_0)}},
    {APR_TYPE_Q8_1, {"Q8_1", APR_QK, sizeof(block_q8_1)}},
    {APR_TYPE_Q2_K, {"Q2_K", APR_QK_K, sizeof(block_q2_K)}},
    {APR_TYPE_Q3_K, {"Q3_K", APR_QK_K, sizeof(block_q3_K)}},
    {APR_TYPE_Q4_K, {"Q4_K", APR_QK_K, sizeof(block_q4_K)}},
    {APR_TYPE_Q5_K, {"Q5_K", APR_QK_K, sizeof(block_q5_K)}},
    {APR_TYPE_Q6_K, {"Q6_K", APR_QK_K, sizeof(block_q6_K)}},
    {APR_TYPE_Q8_K, {"Q8_K", APR_QK_K, sizeof(block_q8_K)}},
    {APR_TYPE_I8, {"I8", 1, 1}},
    {APR_TYPE_I16, {"I16", 1, 2}},
    {APR_TYPE_I32, {"I32", 1, 4}},
    {APR_TYPE_I64, {"I64", 1, 8}},
    {APR_TYPE_F64, {"F64", 1, 8}},
    {APR_TYPE_BF16, {"BF16", 1, 2}},
};

const apr_type_info *apr_type_get(uint32_t type)
{
    for (size_t i = 0; i < sizeof type_table / sizeof type_table[0]; i++)
        if (type_table[i].id == type) return &type_table[i].info;
    return NULL;
}

uint64_t apr_row_bytes(uint32_t type, uint64_t n)
{
    const apr_type_info *ti = apr_type_get(type);
    if (!ti || n % ti->block_size) return 0;
    return n / ti->block_size * ti->type_size;
}

float apr_fp16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp == 0) {
        /* zero or subnormal: value = man * 2^-24 */
        float v = ldexpf((float)man, -24);
        return sign ? -v : v;
    } else {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t apr_f32_to_fp16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t exp = (x >> 23) & 0xff;
    uint32_t man = x & 0x7fffff;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f) return (uint16_t)(sign | 0x7c00); /* overflow: inf */
    if (e <= 0) {
        /* subnormal half (or zero): round to nearest even on the shifted mantissa */
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000;
        int shift = 14 - e;
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++; /* may carry into exp: correct */
    return (uint16_t)(sign | half);
}

float apr_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t apr_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 64); /* quiet nan */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
