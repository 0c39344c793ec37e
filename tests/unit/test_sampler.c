/* The coordinator's sampler against straightforward reference computations
 * done here in double precision (full sorts, exp from libm), and the stop
 * string hold-back rules. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/sampler.h"
#include "ref_topk.h"

static apr_sampler_ws *ws_new(int32_t n)
{
    char err[APR_ERRLEN];
    apr_sampler_ws *ws = apr_sampler_ws_new(n, err);
    ck_assert_msg(ws != NULL, "%s", err);
    return ws;
}

static void fill_gauss(float *l, int32_t n, apr_rng *r, float scale)
{
    for (int32_t i = 0; i < n; i++) {
        double u = apr_rng_uniform(r) + 1e-12, v = apr_rng_uniform(r);
        l[i] = (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v)) * scale;
    }
}

static int32_t naive_argmax(const float *l, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[best])
            best = i;
    return best;
}

static apr_sampler_params params(float t, int32_t k, float p, float minp, uint64_t seed)
{
    apr_sampler_params sp;
    apr_sampler_params_default(&sp);
    sp.temperature = t;
    sp.top_k = k;
    sp.top_p = p;
    sp.min_p = minp;
    sp.seed = seed;
    return sp;
}

START_TEST(greedy_is_argmax)
{
    const int32_t n = 5000;
    float *l = malloc(n * sizeof *l);
    apr_sampler_ws *ws = ws_new(n);
    apr_rng r;
    apr_rng_seed(&r, 1);
    for (int trial = 0; trial < 50; trial++) {
        fill_gauss(l, n, &r, 3);
        if (trial % 5 == 0) { /* a tie: the lower id must win */
            int32_t a = (int32_t)(apr_rng_next(&r) % n), b = (int32_t)(apr_rng_next(&r) % n);
            l[a] = l[b] = 100;
        }
        apr_sampler_params sp = params(0, 0, 1, 0, 99);
        apr_sampler s;
        apr_sampler_init(&s, &sp);
        apr_rng before = s.rng;
        ck_assert_int_eq(apr_sampler_sample(&s, ws, l, NULL, 0), naive_argmax(l, n));
        /* greedy leaves the PRNG alone */
        ck_assert(memcmp(&before, &s.rng, sizeof before) == 0);
        /* top_k == 1 is greedy at any temperature */
        sp = params(5, 1, 1, 0, 99);
        apr_sampler_init(&s, &sp);
        ck_assert_int_eq(apr_sampler_sample(&s, ws, l, NULL, 0), naive_argmax(l, n));
    }
    /* every size around the vector width, with the maximum at the end */
    for (int32_t m = 1; m <= 37; m++) {
        apr_sampler_ws *w2 = ws_new(m);
        for (int32_t i = 0; i < m; i++)
            l[i] = (float)i * 0.5f - 3;
        apr_sampler_params sp = params(0, 0, 1, 0, 0);
        apr_sampler s;
        apr_sampler_init(&s, &sp);
        ck_assert_int_eq(apr_sampler_sample(&s, w2, l, NULL, 0), m - 1);
        apr_sampler_ws_free(w2);
    }
    apr_sampler_ws_free(ws);
    free(l);
}
END_TEST

START_TEST(nan_and_inf)
{
    float l[6] = {NAN, -INFINITY, 1.0f, NAN, 2.0f, -INFINITY};
    apr_sampler_ws *ws = ws_new(6);
    apr_sampler s;
    apr_sampler_params sp = params(0, 0, 1, 0, 0);
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, l, NULL, 0), 4);
    sp = params(1, 0, 1, 0, 3);
    apr_sampler_init(&s, &sp);
    for (int i = 0; i < 500; i++) {
        int32_t t = apr_sampler_sample(&s, ws, l, NULL, 0);
        ck_assert_msg(t == 2 || t == 4, "drew %d", t);
    }
    float none[6] = {NAN, -INFINITY, NAN, -INFINITY, NAN, NAN};
    ck_assert_int_eq(apr_sampler_sample(&s, ws, none, NULL, 0), -1);
    apr_sampler_ws_free(ws);
}
END_TEST

START_TEST(seeds)
{
    const int32_t n = 2000;
    float *l = malloc(n * sizeof *l);
    apr_sampler_ws *ws = ws_new(n);
    apr_rng r;
    apr_rng_seed(&r, 2);
    fill_gauss(l, n, &r, 2);
    apr_sampler_params cfg[] = {params(0.8f, 0, 1, 0, 0), params(0.8f, 40, 0.95f, 0.05f, 0),
                                params(1.0f, 0, 0.9f, 0, 0), params(1.2f, 0, 1, 0.02f, 0)};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        apr_sampler a, b, d;
        apr_sampler_params pa = cfg[c], pd = cfg[c];
        pa.seed = 1234;
        pd.seed = 1235;
        apr_sampler_init(&a, &pa);
        apr_sampler_init(&b, &pa);
        apr_sampler_init(&d, &pd);
        int differ = 0;
        for (int i = 0; i < 1000; i++) {
            int32_t ta = apr_sampler_sample(&a, ws, l, NULL, 0);
            /* an unrelated sequence sampling in between must not matter */
            apr_sampler_sample(&d, ws, l, NULL, 0);
            int32_t tb = apr_sampler_sample(&b, ws, l, NULL, 0);
            ck_assert_int_eq(ta, tb);
            differ += ta != apr_sampler_sample(&d, ws, l, NULL, 0);
        }
        ck_assert_msg(differ > 100, "config %zu: seeds 1234 and 1235 agree too often", c);
    }
    apr_sampler_ws_free(ws);
    free(l);
}
END_TEST

/* Draws many samples and compares the histogram with the expected
 * probabilities by chi-square (df = number of bins - 1). */
static void check_freq(const float *l, int32_t n, apr_sampler_params sp, const double *want,
                       int draws)
{
    apr_sampler_ws *ws = ws_new(n);
    apr_sampler s;
    apr_sampler_init(&s, &sp);
    int *hist = calloc((size_t)n, sizeof *hist);
    for (int i = 0; i < draws; i++) {
        int32_t t = apr_sampler_sample(&s, ws, l, NULL, 0);
        ck_assert(t >= 0 && t < n);
        hist[t]++;
    }
    double chi = 0;
    int bins = 0;
    for (int32_t i = 0; i < n; i++) {
        if (want[i] == 0) {
            ck_assert_msg(hist[i] == 0, "token %d excluded but drawn %d times", i, hist[i]);
            continue;
        }
        double e = want[i] * draws;
        chi += (hist[i] - e) * (hist[i] - e) / e;
        bins++;
    }
    /* 99.9th percentile of chi-square for df up to 9 is under 28; the seed
     * is fixed, so this is deterministic, yet a biased sampler fails it */
    ck_assert_msg(bins >= 2 && chi < 28.0, "chi-square %.2f over %d bins", chi, bins);
    free(hist);
    apr_sampler_ws_free(ws);
}

static void softmax_over(const float *l, int32_t n, const bool *keep, double t, double *out)
{
    double m = -INFINITY, z = 0;
    for (int32_t i = 0; i < n; i++)
        if (keep[i] && l[i] > m)
            m = l[i];
    for (int32_t i = 0; i < n; i++)
        z += keep[i] ? exp((l[i] - m) / t) : 0;
    for (int32_t i = 0; i < n; i++)
        out[i] = keep[i] ? exp((l[i] - m) / t) / z : 0;
}

START_TEST(frequencies)
{
    const float l[8] = {1.0f, 2.5f, 0.3f, -1.0f, 2.0f, 0.0f, 1.7f, -0.5f};
    bool all[8], keep[8];
    double want[8];
    for (int i = 0; i < 8; i++)
        all[i] = true;
    /* plain temperature over everything */
    softmax_over(l, 8, all, 0.7, want);
    check_freq(l, 8, params(0.7f, 0, 1, 0, 11), want, 20000);
    softmax_over(l, 8, all, 1.5, want);
    check_freq(l, 8, params(1.5f, 0, 1, 0, 12), want, 20000);
    /* top-k 3 keeps ids 1, 4, 6 */
    for (int i = 0; i < 8; i++)
        keep[i] = i == 1 || i == 4 || i == 6;
    softmax_over(l, 8, keep, 0.9, want);
    check_freq(l, 8, params(0.9f, 3, 1, 0, 13), want, 20000);
    /* top-p 0.6 at T=1: p = .39 .24 .18 ... -> {1, 4} (0.63) */
    softmax_over(l, 8, all, 1.0, want);
    ck_assert(want[1] + want[4] >= 0.6 && want[1] < 0.6);
    for (int i = 0; i < 8; i++)
        keep[i] = i == 1 || i == 4;
    softmax_over(l, 8, keep, 0.8, want);
    check_freq(l, 8, params(0.8f, 0, 0.6f, 0, 14), want, 20000);
    /* min-p 0.4: logit >= 2.5 + ln 0.4 = 1.58 -> {1, 4, 6} */
    for (int i = 0; i < 8; i++)
        keep[i] = i == 1 || i == 4 || i == 6;
    softmax_over(l, 8, keep, 1.3, want);
    check_freq(l, 8, params(1.3f, 0, 1, 0.4f, 15), want, 20000);
    /* top-k 5 then top-p 0.8 within it, then temperature */
    for (int i = 0; i < 8; i++)
        keep[i] = i == 0 || i == 1 || i == 4 || i == 6 || i == 2;
    softmax_over(l, 8, keep, 1.0, want);
    /* sorted within the top 5: 1, 4, 6, 0, 2 */
    double cum = 0;
    const int order[5] = {1, 4, 6, 0, 2};
    for (int i = 0; i < 8; i++)
        keep[i] = false;
    for (int j = 0; j < 5 && cum < 0.8; j++) {
        cum += want[order[j]];
        keep[order[j]] = true;
    }
    softmax_over(l, 8, keep, 0.6, want);
    check_freq(l, 8, params(0.6f, 5, 0.8f, 0, 16), want, 20000);
}
END_TEST

/* The allowed set by a full sort in double. p_slack widens top-p a little so
 * that rounding at the boundary cannot make a correct sample look wrong. */
static void allowed_set(const float *l, int32_t n, apr_sampler_params sp, double p_slack, bool *ok)
{
    ref_pair *c = malloc((size_t)n * sizeof *c); /* sorted in the sampler's order (ref_topk.h), summed in double */
    for (int32_t i = 0; i < n; i++) {
        c[i].l = l[i];
        c[i].id = i;
        ok[i] = false;
    }
    qsort(c, (size_t)n, sizeof *c, ref_cmp_pair);
    int32_t k = sp.top_k > 0 && sp.top_k < n ? sp.top_k : n;
    double z = 0, cum = 0;
    for (int32_t i = 0; i < k; i++)
        z += exp((double)c[i].l - c[0].l);
    int32_t keep = k;
    if (sp.top_p < 1) {
        for (int32_t i = 0; i < k; i++) {
            cum += exp((double)c[i].l - c[0].l) / z;
            if (cum >= sp.top_p + p_slack) {
                keep = i + 1;
                break;
            }
        }
    }
    for (int32_t i = 0; i < keep; i++)
        if (sp.min_p <= 0 || (double)c[i].l >= (double)c[0].l + log(sp.min_p) - 1e-6)
            ok[c[i].id] = true;
    free(c);
}

START_TEST(filters_exclude)
{
    /* small, Qwen-sized flat and Qwen-sized peaked vocabularies: the last
     * two drive top-p through its window and its widening */
    const int32_t sizes[3] = {3000, 151936, 151936};
    apr_rng r;
    apr_rng_seed(&r, 5);
    for (int v = 0; v < 3; v++) {
        int32_t n = sizes[v];
        float *l = malloc((size_t)n * sizeof *l);
        bool *ok = malloc((size_t)n);
        apr_sampler_ws *ws = ws_new(n);
        fill_gauss(l, n, &r, v == 1 ? 1.0f : 2.0f);
        if (v == 2)
            for (int j = 0; j < 6; j++)
                l[apr_rng_next(&r) % n] = 18.0f - (float)j;
        apr_sampler_params cfg[] = {
            params(1, 20, 1, 0, 1),    params(1, 0, 0.5f, 0, 2),   params(1, 0, 0.95f, 0, 3),
            params(1, 0, 1, 0.3f, 4),  params(1, 50, 0.7f, 0.1f, 5), params(2, 0, 0.3f, 0.2f, 6),
            params(0.5f, 0, 0.99f, 0.01f, 7),
        };
        int draws = n > 10000 ? 60 : 400;
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
            allowed_set(l, n, cfg[c], 1e-4, ok);
            apr_sampler s;
            apr_sampler_init(&s, &cfg[c]);
            for (int i = 0; i < draws; i++) {
                int32_t t = apr_sampler_sample(&s, ws, l, NULL, 0);
                ck_assert_msg(t >= 0 && t < n && ok[t],
                              "vocab %d config %zu: drew excluded token %d (logit %g)", n, c, t,
                              t >= 0 ? l[t] : 0);
            }
        }
        apr_sampler_ws_free(ws);
        free(ok);
        free(l);
    }
}
END_TEST

START_TEST(top_p_frequencies_large)
{
    /* top-p through the whole-vocabulary path: a handful of tokens hold the
     * mass, the rest is background far below; compare with the reference */
    const int32_t n = 151936;
    float *l = malloc(n * sizeof *l);
    double *want = calloc(n, sizeof *want);
    bool *keep = calloc(n, 1);
    apr_rng r;
    apr_rng_seed(&r, 9);
    fill_gauss(l, n, &r, 1.0f);
    const int32_t ids[5] = {17, 40000, 90001, 151935, 5};
    const float top[5] = {16.0f, 15.5f, 15.0f, 14.0f, 13.0f};
    for (int j = 0; j < 5; j++)
        l[ids[j]] = top[j];
    apr_sampler_params sp = params(0.9f, 0, 0.85f, 0, 21);
    allowed_set(l, n, sp, 0, keep);
    int kept = 0;
    for (int32_t i = 0; i < n; i++)
        kept += keep[i];
    ck_assert_int_eq(kept, 3);
    softmax_over(l, n, keep, 0.9, want);
    check_freq(l, n, sp, want, 4000);
    free(keep);
    free(want);
    free(l);
}
END_TEST

START_TEST(penalties)
{
    apr_sampler_ws *ws = ws_new(4);
    apr_sampler s;
    apr_sampler_params sp = params(0, 0, 1, 0, 0);
    const int32_t h0[1] = {0};
    const int32_t h00[2] = {0, 0};

    /* repeat: a positive logit is divided: 2.0 / 1.2 = 1.67 < 1.9 */
    float a[4] = {2.0f, 1.9f, 0.0f, -5.0f};
    sp.repeat_penalty = 1.2f;
    sp.repeat_last_n = 64;
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, a, NULL, 0), 0);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, a, h0, 1), 1);
    ck_assert(a[0] == 2.0f); /* the input is not modified */
    /* a negative logit is multiplied: -1 * 1.5 = -1.5 < -1.1 */
    float b[4] = {-1.0f, -1.1f, -3.0f, -4.0f};
    sp.repeat_penalty = 1.5f;
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, b, h0, 1), 1);
    /* outside the window: no penalty; -1 means the whole history */
    const int32_t hist[5] = {0, 3, 3, 3, 3};
    sp.repeat_last_n = 4;
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, b, hist, 5), 0);
    sp.repeat_last_n = -1;
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, b, hist, 5), 1);
    sp.repeat_last_n = 0; /* off */
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, b, hist, 5), 0);

    /* presence: subtract once; frequency: subtract per occurrence */
    float c[4] = {1.0f, 0.8f, 0.0f, 0.0f};
    sp = params(0, 0, 1, 0, 0);
    sp.repeat_last_n = 64;
    sp.presence_penalty = 0.3f;
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, c, h0, 1), 1);
    sp.presence_penalty = 0;
    sp.frequency_penalty = 0.15f;
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, c, h0, 1), 0);  /* 0.85 > 0.8 */
    ck_assert_int_eq(apr_sampler_sample(&s, ws, c, h00, 2), 1); /* 0.70 < 0.8 */
    /* tokens outside the vocabulary in the history are ignored */
    const int32_t junk[3] = {-7, 4, 1 << 30};
    ck_assert_int_eq(apr_sampler_sample(&s, ws, c, junk, 3), 0);
    /* and the counts are reset between calls */
    ck_assert_int_eq(apr_sampler_sample(&s, ws, c, h0, 1), 0);
    apr_sampler_ws_free(ws);
}
END_TEST

/* ------------------------------------------------- candidate rows */

/* What a worker sends for K: the min(K, finite or +inf) best (ref_topk.h). */
static int32_t ref_cands(const float *l, int32_t n, int32_t k, apr_sampler_cand *out)
{
    ref_pair *b = malloc((size_t)(k > 0 ? k : 1) * sizeof *b);
    const int32_t c = ref_topk(l, n, k, b);
    for (int32_t i = 0; i < c; i++)
        out[i] = (apr_sampler_cand){b[i].id, b[i].l};
    free(b);
    return c;
}

/* A row with what real ones rarely have: ties (several ids sharing the top
 * values and values within the candidates), -inf, NaN, now and then +inf,
 * or almost nothing finite. */
static void hostile_row(float *l, int32_t n, apr_rng *r, int kind)
{
    fill_gauss(l, n, r, kind % 3 == 0 ? 0.5f : 3.0f);
    int32_t q = n / 50 + 1;
    for (int32_t j = 0; j < q; j++) {
        l[apr_rng_next(r) % (uint64_t)n] = -INFINITY;
        l[apr_rng_next(r) % (uint64_t)n] = NAN;
    }
    float top = 12.0f + (float)(kind % 4);
    for (int j = 0; j < 6; j++) /* ties at the top and just below */
        l[apr_rng_next(r) % (uint64_t)n] = top - (float)(j / 2) * 0.25f;
    for (int j = 0; j < 40; j++) /* ties among the rest of the candidates */
        l[apr_rng_next(r) % (uint64_t)n] = l[apr_rng_next(r) % (uint64_t)n];
    if (kind % 11 == 5) { /* +inf: the first of them wins */
        l[apr_rng_next(r) % (uint64_t)n] = INFINITY;
        l[apr_rng_next(r) % (uint64_t)n] = INFINITY;
    }
    if (kind % 13 == 7) /* fewer finite than any K */
        for (int32_t i = 0; i < n; i++)
            if (i % 97 != 3)
                l[i] = i % 2 ? -INFINITY : NAN;
}

START_TEST(cands_equal_full_row)
{
    /* the same seed and parameters give the same token and leave the PRNG in
     * the same state, over many rows (one sampler state carried through a
     * sequence of rows, as a generation does) */
    const int32_t sizes[3] = {300, 5000, 151936};
    const float temps[] = {0.0f, 0.3f, 0.8f, 1.0f, 1.7f};
    const int32_t ks[] = {1, 2, 3, 5, 17, 40, 64};
    const float tps[] = {1.0f, 0.99f, 0.95f, 0.7f, 0.3f, 0.05f};
    const float mps[] = {0.0f, 0.01f, 0.05f, 0.3f, 0.9f};
    apr_rng r;
    apr_rng_seed(&r, 77);
    apr_sampler_cand cands[64];
    long compared = 0, not_first = 0;
    for (int v = 0; v < 3; v++) {
        int32_t n = sizes[v];
        float *l = malloc((size_t)n * sizeof *l);
        apr_sampler_ws *ws = ws_new(n);
        int n_params = v == 2 ? 12 : 150, n_rows = v == 2 ? 6 : 20;
        for (int pi = 0; pi < n_params; pi++) {
            apr_sampler_params sp = params(temps[apr_rng_next(&r) % 5], ks[apr_rng_next(&r) % 7],
                                           tps[apr_rng_next(&r) % 6], mps[apr_rng_next(&r) % 5],
                                           apr_rng_next(&r));
            if (pi % 7 == 3) { /* penalties that are off leave candidates exact */
                sp.repeat_penalty = 1.3f;
                sp.presence_penalty = 0.5f;
                sp.repeat_last_n = 0;
            }
            int32_t k = apr_sampler_cands_needed(&sp, n, 64);
            ck_assert_int_eq(k, sp.temperature <= 0 || sp.top_k == 1 ? 1 : sp.top_k);
            apr_sampler full, part;
            apr_sampler_init(&full, &sp);
            apr_sampler_init(&part, &sp);
            for (int row = 0; row < n_rows; row++) {
                hostile_row(l, n, &r, pi * 31 + row);
                int32_t nc = ref_cands(l, n, k, cands);
                int32_t a = apr_sampler_sample(&full, ws, l, NULL, 0);
                int32_t b = apr_sampler_sample_cands(&part, ws, cands, nc);
                ck_assert_msg(a == b, "vocab %d, T %g top_k %d top_p %g min_p %g, row %d: full row %d, "
                              "candidates %d", n, sp.temperature, sp.top_k, sp.top_p, sp.min_p, row, a, b);
                ck_assert_msg(!memcmp(&full.rng, &part.rng, sizeof full.rng), "PRNG states differ");
                compared++;
                not_first += nc > 0 && a != cands[0].id;
            }
        }
        apr_sampler_ws_free(ws);
        free(l);
    }
    /* the draws did more than pick the best */
    ck_assert_msg(not_first > compared / 10, "%ld of %ld draws were not the best candidate", not_first, compared);
    printf("cands_equal_full_row: %ld draws identical, %ld of them not the best candidate\n", compared,
           not_first);
}
END_TEST

START_TEST(cands_greedy)
{
    const int32_t n = 20000;
    float *l = malloc(n * sizeof *l);
    apr_sampler_ws *ws = ws_new(n);
    apr_rng r;
    apr_rng_seed(&r, 8);
    apr_sampler_cand c[1];
    for (int trial = 0; trial < 300; trial++) {
        hostile_row(l, n, &r, trial);
        if (trial % 3 == 0) { /* a tie for the maximum: the lower id wins */
            int32_t a = (int32_t)(apr_rng_next(&r) % n), b = (int32_t)(apr_rng_next(&r) % n);
            l[a] = l[b] = 1000;
        }
        apr_sampler_params sp = params(trial % 2 ? 0.0f : 2.0f, trial % 2 ? 40 : 1, 0.9f, 0.05f, 5);
        ck_assert_int_eq(apr_sampler_cands_needed(&sp, n, 64), 1);
        apr_sampler s;
        apr_sampler_init(&s, &sp);
        apr_rng before = s.rng;
        int32_t nc = ref_cands(l, n, 1, c);
        int32_t want = apr_sampler_sample(&s, ws, l, NULL, 0);
        ck_assert_int_eq(apr_sampler_sample_cands(&s, ws, c, nc), want);
        ck_assert(memcmp(&before, &s.rng, sizeof before) == 0); /* greedy draws nothing */
    }
    /* nothing finite: no token either way */
    for (int32_t i = 0; i < n; i++)
        l[i] = i % 2 ? NAN : -INFINITY;
    apr_sampler_params sp = params(0.7f, 40, 1, 0, 1);
    apr_sampler s;
    apr_sampler_init(&s, &sp);
    ck_assert_int_eq(apr_sampler_sample(&s, ws, l, NULL, 0), -1);
    ck_assert_int_eq(apr_sampler_sample_cands(&s, ws, c, 0), -1);
    apr_sampler_ws_free(ws);
    free(l);
}
END_TEST

START_TEST(cands_needed)
{
    apr_sampler_params sp = params(0.8f, 40, 0.95f, 0.05f, 1);
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 64), 40);
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 40, 64), 0);  /* top-k is off at top_k >= n */
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 41, 64), 40);
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 39), 0); /* more than the worker sends */
    sp.top_k = 0; /* the whole distribution counts */
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 64), 0);
    sp.temperature = 0; /* greedy, whatever top_k says */
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 64), 1);
    sp = params(0.8f, 1, 1, 0, 1);
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 64), 1);
    /* penalties move logits: the full row, even for greedy */
    sp = params(0, 40, 1, 0, 1);
    sp.repeat_last_n = 64;
    sp.repeat_penalty = 1.1f;
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 64), 0);
    sp.repeat_penalty = 1;
    sp.presence_penalty = 0.1f;
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 64), 0);
    sp.presence_penalty = 0;
    sp.frequency_penalty = -0.1f;
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 64), 0);
    sp.repeat_last_n = 0; /* a window of nothing: no penalty applies */
    ck_assert_int_eq(apr_sampler_cands_needed(&sp, 151936, 64), 1);
}
END_TEST

/* Feeds text piece by piece as generation would and returns what was emitted
 * and whether a stop matched. */
static bool run_stops(const char *const *pieces, const char *const *stops, size_t n_stops,
                      char *out, size_t *emitted_after)
{
    char text[512] = "";
    size_t len = 0, emitted = 0;
    bool matched = false;
    out[0] = 0;
    for (size_t i = 0; pieces[i] && !matched; i++) {
        size_t pl = strlen(pieces[i]);
        memcpy(text + len, pieces[i], pl);
        len += pl;
        size_t safe = apr_stop_check(text, len, emitted, stops, n_stops, &matched);
        ck_assert(safe >= emitted && safe <= len);
        strncat(out, text + emitted, safe - emitted);
        emitted = safe;
        if (emitted_after)
            emitted_after[i] = emitted;
    }
    return matched;
}

START_TEST(stop_strings)
{
    char out[512];
    size_t em[16];
    {
        /* a stop split across tokens; text before it is emitted, it is not */
        const char *p[] = {"Hello", " wor", "ld<", "|e", "nd|>", " more", NULL};
        const char *s[] = {"<|end|>"};
        ck_assert(run_stops(p, s, 1, out, em));
        ck_assert_str_eq(out, "Hello world");
        ck_assert_uint_eq(em[2], strlen("Hello world")); /* "<" held back */
    }
    {
        /* a partial prefix that diverges is released */
        const char *p[] = {"a <", "|e", "x", "!", NULL};
        const char *s[] = {"<|end|>"};
        ck_assert(!run_stops(p, s, 1, out, em));
        ck_assert_str_eq(out, "a <|ex!");
        ck_assert_uint_eq(em[0], 2);
        ck_assert_uint_eq(em[1], 2);
        ck_assert_uint_eq(em[2], 6);
    }
    {
        /* several stops: the earliest occurrence wins */
        const char *p[] = {"one", " two", "\n\nthree END", NULL};
        const char *s[] = {"END", "\n\n", "two three"};
        ck_assert(run_stops(p, s, 3, out, NULL));
        ck_assert_str_eq(out, "one two");
    }
    {
        /* a stop inside one token, with text after it in the same token */
        const char *p[] = {"abc", "dSTOPef", NULL};
        const char *s[] = {"STOP"};
        ck_assert(run_stops(p, s, 1, out, NULL));
        ck_assert_str_eq(out, "abcd");
    }
    {
        /* UTF-8: a stop of multi-byte characters, and a shared lead that
         * diverges in the middle of a character's bytes */
        const char *p[] = {"caf\xc3\xa9 ", "\xe2\x80", "\xa6", " \xe2\x80", "\x94x", NULL};
        const char *s[] = {"\xe2\x80\x94"}; /* em dash; the ellipsis shares two bytes */
        ck_assert(run_stops(p, s, 1, out, em));
        ck_assert_str_eq(out, "caf\xc3\xa9 \xe2\x80\xa6 ");
        ck_assert_uint_eq(em[1], strlen("caf\xc3\xa9 "));
    }
    {
        /* the longest held tail over several stops; empty stops ignored */
        const char *s[] = {"", "xyz", "yzzz"};
        bool m;
        ck_assert_uint_eq(apr_stop_check("abxy", 4, 0, s, 3, &m), 2);
        ck_assert(!m);
        ck_assert_uint_eq(apr_stop_check("abyzz", 5, 0, s, 3, &m), 2);
        ck_assert_uint_eq(apr_stop_check("abyzzq", 6, 0, s, 3, &m), 6);
        ck_assert_uint_eq(apr_stop_check("ab", 2, 0, s, 0, &m), 2);
        ck_assert_uint_eq(apr_stop_check("xyz", 3, 0, s, 3, &m), 0);
        ck_assert(m);
    }
}
END_TEST

START_TEST(rng_uniform)
{
    apr_rng r;
    apr_rng_seed(&r, 0);
    double sum = 0;
    for (int i = 0; i < 100000; i++) {
        double u = apr_rng_uniform(&r);
        ck_assert(u >= 0 && u < 1);
        sum += u;
    }
    ck_assert_double_eq_tol(sum / 100000, 0.5, 0.01);
    apr_rng a, b;
    apr_rng_seed(&a, 42);
    apr_rng_seed(&b, 42);
    ck_assert_uint_eq(apr_rng_next(&a), apr_rng_next(&b));
    apr_rng_seed(&b, 43);
    ck_assert_uint_ne(apr_rng_next(&a), apr_rng_next(&b));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, greedy_is_argmax);
    tcase_add_test(tc, nan_and_inf);
    tcase_add_test(tc, seeds);
    tcase_add_test(tc, frequencies);
    tcase_add_test(tc, filters_exclude);
    tcase_add_test(tc, top_p_frequencies_large);
    tcase_add_test(tc, penalties);
    tcase_add_test(tc, cands_equal_full_row);
    tcase_add_test(tc, cands_greedy);
    tcase_add_test(tc, cands_needed);
    tcase_add_test(tc, stop_strings);
    tcase_add_test(tc, rng_uniform);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
