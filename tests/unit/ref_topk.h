/* Test helper shared by test_sampler.c and test_worker.c: the reference that
 * candidate rows are checked against, written the slow obvious way (a full
 * sort) rather than with the library's apr_topk_select. */
#ifndef APR_TEST_REF_TOPK_H
#define APR_TEST_REF_TOPK_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    float l;
    int32_t id;
} ref_pair;

/* The sampler's order: higher logit first, ties by lower id. */
static int ref_cmp_pair(const void *pa, const void *pb)
{
    const ref_pair *a = pa, *b = pb;
    if (a->l != b->l)
        return a->l > b->l ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* The min(k, finite or +inf) best of l[0..n) into out (NaN and -inf left
 * out); returns how many. */
static int32_t ref_topk(const float *l, int32_t n, int32_t k, ref_pair *out)
{
    ref_pair *a = malloc((size_t)n * sizeof *a);
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++)
        if (l[i] > -INFINITY)
            a[m++] = (ref_pair){l[i], i};
    qsort(a, (size_t)m, sizeof *a, ref_cmp_pair);
    const int32_t c = m < k ? m : k;
    memcpy(out, a, (size_t)c * sizeof *out);
    free(a);
    return c;
}

#endif
