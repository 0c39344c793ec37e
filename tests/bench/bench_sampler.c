/* Microseconds per sample at Qwen2.5's vocabulary (151936) for the sampler
 * configurations that matter, on two kinds of logits: "peaked" (a few tokens
 * well above a Gaussian background, like a trained model's) and "flat" (pure
 * Gaussian, the worst case for top-p). Prints figures; asserts nothing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "coordinator/sampler.h"

#define N_VOCAB 151936

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static float gauss(apr_rng *r)
{
    double u = apr_rng_uniform(r) + 1e-12, v = apr_rng_uniform(r);
    return (float)(sqrt(-2 * log(u)) * cos(2 * M_PI * v));
}

static void fill(float *l, bool peaked, apr_rng *r)
{
    for (int i = 0; i < N_VOCAB; i++)
        l[i] = gauss(r) * (peaked ? 2.5f : 1.0f);
    if (peaked)
        for (int j = 0; j < 8; j++)
            l[apr_rng_next(r) % N_VOCAB] = 20.0f - (float)j;
}

int main(void)
{
    char err[APR_ERRLEN];
    apr_sampler_ws *ws = apr_sampler_ws_new(N_VOCAB, err);
    float *l = malloc(N_VOCAB * sizeof *l);
    int32_t hist[256];
    if (ws == NULL || l == NULL) {
        fprintf(stderr, "bench_sampler: %s\n", ws ? "out of memory" : err);
        return 1;
    }
    apr_rng r;
    apr_rng_seed(&r, 7);
    for (int i = 0; i < 256; i++)
        hist[i] = (int32_t)(apr_rng_next(&r) % N_VOCAB);

    struct {
        const char *name;
        float t, top_p, min_p, rep;
        int32_t top_k;
    } cfg[] = {
        {"greedy", 0, 1, 0, 1, 0},
        {"greedy + repeat_penalty 1.1 (64)", 0, 1, 0, 1.1f, 0},
        {"top-p 0.9, T 0.8", 0.8f, 0.9f, 0, 1, 0},
        {"T 1 (full softmax)", 1, 1, 0, 1, 0},
        {"min-p 0.05, T 0.8", 0.8f, 1, 0.05f, 1, 0},
        {"llama.cpp defaults (k40 p.95 m.05 T.8)", 0.8f, 0.95f, 0.05f, 1, 40},
    };
    printf("sampler, vocab %d: us per sample\n", N_VOCAB);
    printf("%-42s %10s %10s\n", "config", "peaked", "flat");
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        apr_sampler_params p;
        apr_sampler_params_default(&p);
        p.temperature = cfg[c].t;
        p.top_p = cfg[c].top_p;
        p.min_p = cfg[c].min_p;
        p.top_k = cfg[c].top_k;
        p.repeat_penalty = cfg[c].rep;
        p.repeat_last_n = 64;
        p.seed = 1;
        double us[2];
        for (int flat = 0; flat < 2; flat++) {
            apr_sampler s;
            apr_sampler_init(&s, &p);
            fill(l, !flat, &r);
            int iters = 200;
            long sink = 0;
            double t0 = now_us();
            for (int i = 0; i < iters; i++)
                sink += apr_sampler_sample(&s, ws, l, hist, 256);
            us[flat] = (now_us() - t0) / iters;
            if (sink < 0)
                printf("(no token)\n");
        }
        printf("%-42s %10.1f %10.1f\n", cfg[c].name, us[0], us[1]);
    }
    free(l);
    apr_sampler_ws_free(ws);
    return 0;
}
