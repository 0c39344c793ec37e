/* The coordinator's sampler: penalties, top-k, top-p, min-p, temperature and
 * a seeded draw, in llama.cpp's order (see sampler.h), plus stop strings.
 *
 * Speed matters at a 152k vocabulary and dozens of sequences a step, so no
 * path sorts the whole vocabulary unless the distribution is so flat that the
 * answer needs it: top-k selects with a k-sized heap, top-p sorts only the
 * tokens within a logit window under the maximum (widened until it holds the
 * needed mass) and min-p is a logit threshold. The full-vocabulary loops keep
 * 16 independent lanes so the compiler can vectorize them, with an exp that
 * is branch-free for the same reason. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/sampler.h"

typedef struct {
    float logit;
    int32_t id;
    float w; /* exp(logit - max), where a stage needs it */
} cand;

struct apr_sampler_ws {
    int32_t n_vocab;
    float *logits;    /* penalized copy of the input */
    uint32_t *counts; /* occurrences in the penalty window; all zero between calls */
    int32_t *uniq;    /* distinct tokens of the window */
    cand *cands;      /* candidates (top-k heap, gathered window) */
};

/* ---------------------------------------------------------------- PRNG */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void apr_rng_seed(apr_rng *r, uint64_t seed)
{
    /* splitmix64 spreads any seed (0 included) over the whole state */
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t apr_rng_next(apr_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double apr_rng_uniform(apr_rng *r)
{
    return (double)(apr_rng_next(r) >> 11) * 0x1.0p-53;
}

/* ---------------------------------------------------------------- setup */

void apr_sampler_params_default(apr_sampler_params *p)
{
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repeat_penalty = 1.0f;
}

void apr_sampler_init(apr_sampler *s, const apr_sampler_params *p)
{
    s->p = *p;
    apr_rng_seed(&s->rng, p->seed);
}

apr_sampler_ws *apr_sampler_ws_new(int32_t n_vocab, char err[APR_ERRLEN])
{
    if (n_vocab <= 0) {
        snprintf(err, APR_ERRLEN, "sampler: vocabulary size %d", n_vocab);
        return NULL;
    }
    apr_sampler_ws *ws = calloc(1, sizeof *ws);
    if (ws == NULL)
        goto oom;
    size_t n = (size_t)n_vocab;
    ws->n_vocab = n_vocab;
    ws->logits = malloc(n * sizeof *ws->logits);
    ws->counts = calloc(n, sizeof *ws->counts);
    ws->uniq = malloc(n * sizeof *ws->uniq);
    ws->cands = malloc(n * sizeof *ws->cands);
    if (ws->logits && ws->counts && ws->uniq && ws->cands)
        return ws;
    apr_sampler_ws_free(ws);
oom:
    snprintf(err, APR_ERRLEN, "sampler: out of memory for a vocabulary of %d", n_vocab);
    return NULL;
}

void apr_sampler_ws_free(apr_sampler_ws *ws)
{
    if (ws == NULL)
        return;
    free(ws->logits);
    free(ws->counts);
    free(ws->uniq);
    free(ws->cands);
    free(ws);
}

/* ---------------------------------------------------------------- kernels */

/* exp(x) to about 2 ulp (Cephes' expf polynomial). Inputs below -87 give
 * ~1e-38 rather than 0 (NaN too): callers only add these up or compare them,
 * and that is far below the precision of any sum. vexp is the same
 * arithmetic four lanes at a time, so both give bit-identical results. */
static inline float fexp(float x)
{
    x = x >= -87.0f ? x : -87.0f;
    x = x <= 88.0f ? x : 88.0f;
    float t = x * 1.44269504088896341f + 12582912.0f; /* round to nearest via 1.5 * 2^23 */
    float n = t - 12582912.0f;
    float g = x - n * 0.693359375f;
    g = g - n * -2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * g + 1.3981999507e-3f;
    y = y * g + 8.3334519073e-3f;
    y = y * g + 4.1665795894e-2f;
    y = y * g + 1.6666665459e-1f;
    y = y * g + 5.0000001201e-1f;
    y = y * g * g + g + 1.0f;
    union {
        uint32_t u;
        float f;
    } scale = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return y * scale.f;
}

/* GCC/Clang vector extensions: plain C that compiles to SSE (or NEON)
 * without intrinsics, for the loops over the whole vocabulary. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f vload(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline v4f vsplat(float x)
{
    return (v4f){x, x, x, x};
}

/* mask ? a : b, lane by lane (mask lanes are all ones or all zeros) */
static inline v4f vsel(v4i mask, v4f a, v4f b)
{
    return (v4f)(((v4i)a & mask) | ((v4i)b & ~mask));
}

static inline v4f vexp(v4f x)
{
    x = vsel(x >= vsplat(-87.0f), x, vsplat(-87.0f));
    x = vsel(x <= vsplat(88.0f), x, vsplat(88.0f));
    v4f t = x * 1.44269504088896341f + 12582912.0f;
    v4f n = t - 12582912.0f;
    v4f g = x - n * 0.693359375f;
    g = g - n * -2.12194440e-4f;
    v4f y = vsplat(1.9875691500e-4f);
    y = y * g + 1.3981999507e-3f;
    y = y * g + 8.3334519073e-3f;
    y = y * g + 4.1665795894e-2f;
    y = y * g + 1.6666665459e-1f;
    y = y * g + 5.0000001201e-1f;
    y = y * g * g + g + 1.0f;
    v4i e = (__builtin_convertvector(n, v4i) + 127) << 23;
    return y * (v4f)e;
}

/* The largest logit; NaNs never win (x > m is false for them). */
static float max_logit(const float *l, int32_t n)
{
    v4f a = vsplat(-INFINITY), b = a;
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        v4f x = vload(l + i), y = vload(l + i + 4);
        a = vsel(x > a, x, a);
        b = vsel(y > b, y, b);
    }
    float m = -INFINITY;
    for (; i < n; i++)
        m = l[i] > m ? l[i] : m;
    for (int j = 0; j < 4; j++) {
        m = a[j] > m ? a[j] : m;
        m = b[j] > m ? b[j] : m;
    }
    return m;
}

/* The first index holding m (so ties go to the lowest id). */
static int32_t first_of(const float *l, int32_t n, float m)
{
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        v4i eq = vload(l + i) == vsplat(m);
        if (eq[0] | eq[1] | eq[2] | eq[3])
            break;
    }
    for (; i < n; i++)
        if (l[i] == m)
            return i;
    return -1;
}

/* sum of exp((l - m) * s) over l[0..n) in four-lane order; draw_all relies
 * on blocks summed with it adding up to the same total. */
static float block_sum(const float *l, int32_t n, float m, float s)
{
    v4f a = vsplat(0), b = a;
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a += vexp((vload(l + i) - m) * s);
        b += vexp((vload(l + i + 4) - m) * s);
    }
    a += b;
    float sum = (a[0] + a[1]) + (a[2] + a[3]);
    for (; i < n; i++)
        sum += fexp((l[i] - m) * s);
    return sum;
}

#define BLOCK 256

static double sum_exp(const float *l, int32_t n, float m, float s)
{
    double sum = 0;
    for (int32_t i = 0; i < n; i += BLOCK)
        sum += block_sum(l + i, n - i < BLOCK ? n - i : BLOCK, m, s);
    return sum;
}

/* ---------------------------------------------------------------- stages */

static bool penalties_on(const apr_sampler_params *p)
{
    return p->repeat_last_n != 0 &&
           (p->repeat_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f);
}

/* Copies the logits and applies llama.cpp's penalties to the tokens of the
 * last repeat_last_n history entries: a positive logit is divided by the
 * repeat penalty and a negative one multiplied, then count * frequency +
 * presence is subtracted. */
static const float *penalize(apr_sampler_ws *ws, const apr_sampler_params *p, const float *logits,
                             const int32_t *hist, size_t n_hist)
{
    size_t win = p->repeat_last_n < 0 ? n_hist : (size_t)p->repeat_last_n;
    if (win > n_hist)
        win = n_hist;
    if (win == 0)
        return logits;
    memcpy(ws->logits, logits, (size_t)ws->n_vocab * sizeof *logits);
    size_t nu = 0;
    for (size_t i = n_hist - win; i < n_hist; i++) {
        int32_t t = hist[i];
        if (t < 0 || t >= ws->n_vocab)
            continue;
        if (ws->counts[t]++ == 0)
            ws->uniq[nu++] = t;
    }
    for (size_t i = 0; i < nu; i++) {
        int32_t t = ws->uniq[i];
        float x = ws->logits[t];
        x = x <= 0 ? x * p->repeat_penalty : x / p->repeat_penalty;
        x -= (float)ws->counts[t] * p->frequency_penalty + p->presence_penalty;
        ws->logits[t] = x;
        ws->counts[t] = 0; /* leave the table clean for the next call */
    }
    return ws->logits;
}

/* Ordering of candidates: higher logit first, then lower id. */
static bool better(cand a, cand b)
{
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

static int cmp_cand(const void *pa, const void *pb)
{
    cand a = *(const cand *)pa, b = *(const cand *)pb;
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

/* The k best tokens, sorted, into c; returns how many (fewer when the rest
 * are -inf or NaN). A min-heap on `better` keeps the worst kept at the root. */
static int32_t top_k_select(const float *l, int32_t n, int32_t k, cand *c)
{
    int32_t h = 0;
    for (int32_t i = 0; i < n; i++) {
        cand x = {l[i], i, 0};
        if (!(x.logit > -INFINITY))
            continue;
        int32_t pos;
        if (h < k) {
            pos = h++;
            while (pos > 0 && better(c[(pos - 1) / 2], x)) { /* sift up */
                c[pos] = c[(pos - 1) / 2];
                pos = (pos - 1) / 2;
            }
            c[pos] = x;
            continue;
        }
        if (!better(x, c[0]))
            continue;
        pos = 0; /* replace the root, sift down */
        for (;;) {
            int32_t ch = 2 * pos + 1;
            if (ch >= h)
                break;
            if (ch + 1 < h && better(c[ch], c[ch + 1]))
                ch++;
            if (!better(x, c[ch]))
                break;
            c[pos] = c[ch];
            pos = ch;
        }
        c[pos] = x;
    }
    qsort(c, (size_t)h, sizeof *c, cmp_cand);
    return h;
}

/* Tokens with logit >= tau, in id order, with their weights; *mass is their
 * sum. */
static int32_t gather(const float *l, int32_t n, float tau, float m, cand *c, double *mass)
{
    int32_t k = 0, i = 0;
    double sum = 0;
    for (; i < n; i++) {
        if (i + 4 <= n && (i & 3) == 0) { /* skip four at a time: most fail */
            v4i ge = vload(l + i) >= vsplat(tau);
            if (!(ge[0] | ge[1] | ge[2] | ge[3])) {
                i += 3;
                continue;
            }
        }
        if (l[i] >= tau) {
            c[k].logit = l[i];
            c[k].id = i;
            c[k].w = fexp(l[i] - m);
            sum += c[k].w;
            k++;
        }
    }
    *mass = sum;
    return k;
}

static void swap(cand *a, cand *b)
{
    cand t = *a;
    *a = *b;
    *b = t;
}

/* top-p without sorting: reorders c[0..k) so that c[0..L) holds the first L
 * tokens of the sorted order, L being the shortest prefix whose weight
 * reaches target (quickselect on weight). Returns L, or 0 when all k fall
 * short. The order inside c[0..L) is arbitrary but fixed by the input. */
static int32_t mass_select(cand *c, int32_t k, double target)
{
    int32_t lo = 0, hi = k;
    double above = 0; /* weight of c[0..lo), all in the set */
    while (hi - lo > 16) {
        int32_t mid = lo + (hi - lo) / 2;
        /* median of three as the pivot, parked at hi - 1 */
        if (better(c[mid], c[lo]))
            swap(&c[mid], &c[lo]);
        if (better(c[hi - 1], c[lo]))
            swap(&c[hi - 1], &c[lo]);
        if (better(c[mid], c[hi - 1]))
            swap(&c[mid], &c[hi - 1]);
        cand pv = c[hi - 1];
        int32_t st = lo;
        double left = 0;
        for (int32_t j = lo; j < hi - 1; j++) {
            if (better(c[j], pv)) {
                left += c[j].w;
                swap(&c[st++], &c[j]);
            }
        }
        swap(&c[st], &c[hi - 1]);
        if (above + left >= target) {
            hi = st;
        } else if (above + left + pv.w >= target) {
            return st + 1;
        } else {
            above += left + pv.w;
            lo = st + 1;
        }
    }
    qsort(c + lo, (size_t)(hi - lo), sizeof *c, cmp_cand);
    for (int32_t i = lo; i < hi; i++) {
        above += c[i].w;
        if (above >= target)
            return i + 1;
    }
    return 0;
}

/* Length of the sorted prefix whose mass (relative to m, out of total z)
 * first reaches p; 0 when the whole list falls short. */
static int32_t top_p_cut(const cand *c, int32_t k, float m, double z, float p)
{
    double cum = 0, target = (double)p * z;
    for (int32_t i = 0; i < k; i++) {
        cum += fexp(c[i].logit - m);
        if (cum >= target)
            return i + 1;
    }
    return 0;
}

/* Length of the sorted prefix with logit >= tau (at least 1). */
static int32_t min_p_cut(const cand *c, int32_t k, float tau)
{
    int32_t i = 1;
    while (i < k && c[i].logit >= tau)
        i++;
    return i;
}

/* Draws from softmax(logit / T) over c[0..k). */
static int32_t draw(apr_rng *rng, const cand *c, int32_t k, float m, float inv_t)
{
    double sum = 0;
    for (int32_t i = 0; i < k; i++)
        sum += fexp((c[i].logit - m) * inv_t);
    double target = apr_rng_uniform(rng) * sum, cum = 0;
    for (int32_t i = 0; i < k; i++) {
        cum += fexp((c[i].logit - m) * inv_t);
        if (cum > target)
            return c[i].id;
    }
    return c[k - 1].id; /* rounding left the target just past the end */
}

/* Draws from softmax(l / T) over the whole vocabulary without candidates:
 * block sums find the block the draw falls in, then one block is scanned. */
static int32_t draw_all(apr_rng *rng, const float *l, int32_t n, float m, float inv_t)
{
    double target = apr_rng_uniform(rng) * sum_exp(l, n, m, inv_t), cum = 0;
    int32_t last = -1;
    for (int32_t b = 0; b < n; b += BLOCK) {
        int32_t len = n - b < BLOCK ? n - b : BLOCK;
        float bs = block_sum(l + b, len, m, inv_t);
        if (cum + bs <= target) {
            cum += bs;
            continue;
        }
        for (int32_t i = b; i < b + len; i++) {
            if (!(l[i] > -INFINITY))
                continue;
            cum += fexp((l[i] - m) * inv_t);
            last = i;
            if (cum > target)
                return i;
        }
    }
    if (last < 0) /* rounding: the target sat at the very end */
        for (int32_t i = n - 1; i >= 0 && last < 0; i--)
            if (l[i] > -INFINITY)
                last = i;
    return last;
}

/* The chain from top-k on, over the k best tokens sorted best first: top-p
 * (at temperature 1, within those k), min-p, then the draw at temperature.
 * m is the maximum logit (c[0].logit). Both entry points end here, so a
 * candidate row from the worker gives the very token the full row gives. */
static int32_t sample_top(apr_sampler *s, cand *c, int32_t k, float m)
{
    const apr_sampler_params *p = &s->p;
    float inv_t = 1.0f / p->temperature;
    if (p->top_p < 1.0f) {
        double z = 0;
        for (int32_t i = 0; i < k; i++)
            z += fexp(c[i].logit - m);
        int32_t cut = top_p_cut(c, k, m, z, p->top_p);
        if (cut > 0)
            k = cut;
    }
    /* min-p keeps p_i >= min_p * p_max, that is logit >= m + ln(min_p) */
    if (p->min_p > 0.0f)
        k = min_p_cut(c, k, m + logf(p->min_p));
    return draw(&s->rng, c, k, m, inv_t);
}

int32_t apr_sampler_cands_needed(const apr_sampler_params *p, int32_t n_vocab, int32_t max_k)
{
    if (penalties_on(p))
        return 0; /* any token's logit may move: the order is not known yet */
    if (p->temperature <= 0 || p->top_k == 1)
        return 1;
    /* apr_sampler_sample's top-k stage runs for 1 < top_k < n_vocab */
    if (p->top_k > 1 && p->top_k < n_vocab && p->top_k <= max_k)
        return p->top_k;
    return 0;
}

int32_t apr_sampler_sample_cands(apr_sampler *s, apr_sampler_ws *ws, const apr_sampler_cand *cands,
                                 int32_t k)
{
    const apr_sampler_params *p = &s->p;
    if (k <= 0)
        return -1; /* every logit was -inf or NaN */
    float m = cands[0].logit;
    /* greedy (PRNG untouched), and +inf as in apr_sampler_sample: the
     * first +inf, which the order puts at the front */
    if (p->temperature <= 0 || p->top_k == 1 || m == INFINITY)
        return cands[0].id;
    /* the top-k stage keeps top_k of them; more given is not an error */
    if (p->top_k > 1 && k > p->top_k)
        k = p->top_k;
    if (k > ws->n_vocab)
        k = ws->n_vocab;
    cand *c = ws->cands;
    for (int32_t i = 0; i < k; i++)
        c[i] = (cand){cands[i].logit, cands[i].id, 0};
    return sample_top(s, c, k, m);
}

int32_t apr_sampler_sample(apr_sampler *s, apr_sampler_ws *ws, const float *logits,
                           const int32_t *history, size_t n_history)
{
    const apr_sampler_params *p = &s->p;
    int32_t n = ws->n_vocab;
    const float *l = logits;
    if (penalties_on(p) && history && n_history)
        l = penalize(ws, p, logits, history, n_history);

    float m = max_logit(l, n);
    if (!(m > -INFINITY))
        return -1;
    /* +inf logits leave no distribution to draw from: the first one wins */
    if (p->temperature <= 0 || p->top_k == 1 || m == INFINITY)
        return first_of(l, n, m);

    float inv_t = 1.0f / p->temperature;
    bool use_k = p->top_k > 1 && p->top_k < n;
    bool use_p = p->top_p < 1.0f;
    bool use_min = p->min_p > 0.0f;
    /* min-p keeps p_i >= min_p * p_max, that is logit >= m + ln(min_p) */
    float tau_min = use_min ? m + logf(p->min_p) : -INFINITY;
    cand *c = ws->cands;
    int32_t k;

    if (use_k)
        return sample_top(s, c, top_k_select(l, n, p->top_k, c), m);
    if (!use_p && !use_min)
        return draw_all(&s->rng, l, n, m, inv_t);
    double mass;
    if (!use_p) {
        k = gather(l, n, tau_min, m, c, &mass); /* id order: no sort needed to draw */
        return draw(&s->rng, c, k, m, inv_t);
    }

    /* top-p over the whole vocabulary: its set lies within a window under
     * the maximum; start narrow and widen only while the window's weight is
     * short of the target. When min-p's threshold is the tighter bound, its
     * set is the answer whenever top-p's would be larger. */
    double target = (double)p->top_p * sum_exp(l, n, m, 1.0f);
    for (float width = 8.0f;; width *= 4.0f) {
        bool last = width > 200.0f;
        float tau = last ? -INFINITY : m - width;
        bool min_binds = tau_min >= tau;
        k = gather(l, n, min_binds ? tau_min : tau, m, c, &mass);
        if (mass < target && !min_binds && !last)
            continue;
        int32_t cut = mass_select(c, k, target);
        return draw(&s->rng, c, cut > 0 ? cut : k, m, inv_t);
    }
}

/* ---------------------------------------------------------------- stops */

size_t apr_stop_check(const char *text, size_t len, size_t emitted, const char *const *stops,
                      size_t n_stops, bool *matched)
{
    *matched = false;
    if (emitted > len)
        emitted = len;
    /* No stop can begin before `emitted`: it would have been held back. */
    size_t earliest = len;
    for (size_t i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (sl == 0 || sl > len - emitted)
            continue;
        const char *hit = memmem(text + emitted, len - emitted, stops[i], sl);
        if (hit && (size_t)(hit - text) < earliest) {
            earliest = (size_t)(hit - text);
            *matched = true;
        }
    }
    if (*matched)
        return earliest;
    /* Hold back the longest tail that is a proper prefix of some stop. */
    size_t hold = 0;
    for (size_t i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        size_t k = sl ? sl - 1 : 0;
        if (k > len - emitted)
            k = len - emitted;
        for (; k > hold; k--) {
            if (memcmp(text + len - k, stops[i], k) == 0) {
                hold = k;
                break;
            }
        }
    }
    size_t safe = len - hold;
    /* never split a UTF-8 character (stops start on one, but be sure) */
    while (safe > emitted && safe < len && ((unsigned char)text[safe] & 0xc0) == 0x80)
        safe--;
    return safe;
}
