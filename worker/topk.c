/* Exact top-k of a logits row (backend.h), for the worker's candidate rows:
 * instead of 600 KB of logits crossing to the coordinator's core every step,
 * the worker picks the few candidates the sampler needs while the row is
 * still in its own cache.
 *
 * The order is the sampler's (coordinator/sampler.c, `better`): higher logit
 * first, ties by lower id. Scanning ids upwards, an entry that merely equals
 * the worst kept one comes later and so loses the tie: once k are kept, only
 * entries strictly above the k-th can enter, and the scan can test 32 at a
 * time against that threshold and skip the block when none passes, which is
 * nearly every block after the first few thousand entries. The same strict
 * test against -inf is what leaves out NaN (every comparison false) and -inf. */
#include <math.h>
#include <string.h>

#include "worker/backend.h"

/* GCC/Clang vector extensions: plain C that compiles to SSE/AVX without
 * intrinsics. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

#define BLOCK 32

static inline v4f vload(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Whether any of l[0..BLOCK) is > t. */
static inline bool block_passes(const float *l, float t)
{
    v4f vt = {t, t, t, t};
    v4i a = (vload(l) > vt) | (vload(l + 4) > vt);
    v4i b = (vload(l + 8) > vt) | (vload(l + 12) > vt);
    v4i c = (vload(l + 16) > vt) | (vload(l + 20) > vt);
    v4i d = (vload(l + 24) > vt) | (vload(l + 28) > vt);
    v4i g = (a | b) | (c | d);
    return (g[0] | g[1] | g[2] | g[3]) != 0;
}

/* Puts entry j (known to be > the threshold) among the h kept, sorted; the
 * worst one falls out when k are kept already. */
static inline void insert(int32_t *ids, float *vals, int *h, int k, int32_t j, float x)
{
    int pos = *h < k ? (*h)++ : k - 1;
    /* an equal value kept earlier has a lower id: it stays in front */
    while (pos > 0 && vals[pos - 1] < x) {
        vals[pos] = vals[pos - 1];
        ids[pos] = ids[pos - 1];
        pos--;
    }
    vals[pos] = x;
    ids[pos] = j;
}

int apr_topk_select(const float *l, int n, int k, int32_t *ids, float *vals)
{
    if (k < 1 || n < 1)
        return 0;
    int h = 0;
    float t = -INFINITY; /* entries must be > t: the k-th kept once there are k */
    int i = 0;
    for (; i + BLOCK <= n; i += BLOCK) {
        if (!block_passes(l + i, t))
            continue;
        for (int j = i; j < i + BLOCK; j++) {
            if (!(l[j] > t))
                continue;
            insert(ids, vals, &h, k, j, l[j]);
            if (h == k)
                t = vals[k - 1];
        }
    }
    for (; i < n; i++) {
        if (!(l[i] > t))
            continue;
        insert(ids, vals, &h, k, i, l[i]);
        if (h == k)
            t = vals[k - 1];
    }
    return h;
}
