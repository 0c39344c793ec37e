/* coordinator/ — the sampler (private to the coordinator).
 *
 * Per sequence: an apr_sampler, a plain struct with the parameters and a
 * seeded PRNG, so the same seed and logits give the same tokens whatever else
 * is running. Per sampling thread: an apr_sampler_ws, the scratch buffers
 * sized for the vocabulary (a few MiB at 152k), shared by all its sequences.
 *
 * The chain is llama.cpp's default order: penalties (repeat, presence,
 * frequency over the last repeat_last_n tokens), top-k, top-p, min-p,
 * temperature, then a draw from the softmax. top-p and min-p see the
 * distribution at temperature 1, as in llama.cpp. temperature == 0 or
 * top_k == 1 is greedy argmax (ties go to the lowest id) and leaves the PRNG
 * untouched, so greedy output does not depend on the seed.
 */
#ifndef APR_COORD_SAMPLER_H
#define APR_COORD_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h" /* APR_ERRLEN */

typedef struct {
    float temperature;       /* 0 = greedy */
    int32_t top_k;           /* 0 = off */
    float top_p;             /* 1 = off */
    float min_p;             /* 0 = off */
    float repeat_penalty;    /* 1 = off; > 0 */
    int32_t repeat_last_n;   /* 0 = off, -1 = the whole history */
    float presence_penalty;  /* 0 = off */
    float frequency_penalty; /* 0 = off */
    uint64_t seed;
} apr_sampler_params;

typedef struct {
    uint64_t s[4]; /* xoshiro256** */
} apr_rng;

typedef struct {
    apr_sampler_params p;
    apr_rng rng;
} apr_sampler;

/* Everything off: plain softmax sampling at temperature 1. */
void apr_sampler_params_default(apr_sampler_params *p);
void apr_sampler_init(apr_sampler *s, const apr_sampler_params *p);

void apr_rng_seed(apr_rng *r, uint64_t seed);
uint64_t apr_rng_next(apr_rng *r);
double apr_rng_uniform(apr_rng *r); /* [0, 1) with 53 random bits */

typedef struct apr_sampler_ws apr_sampler_ws;

apr_sampler_ws *apr_sampler_ws_new(int32_t n_vocab, char err[APR_ERRLEN]);
void apr_sampler_ws_free(apr_sampler_ws *ws);

/* Picks the next token from n_vocab logits (not modified). history is the
 * sequence's tokens so far (prompt and output), for the penalties; ids outside
 * the vocabulary are ignored. NaN logits count as -inf. Returns -1 only when
 * no token is possible (every logit -inf or NaN). */
int32_t apr_sampler_sample(apr_sampler *s, apr_sampler_ws *ws, const float *logits,
                           const int32_t *history, size_t n_history);

/* Candidates instead of the full row: a worker can send the K best logits
 * of a row (proto.h, "candidate rows") where the sampler provably needs no
 * more, and the coordinator samples from them the very token the full row
 * would give, the PRNG used the same way. */
typedef struct {
    int32_t id;
    float logit;
} apr_sampler_cand;

/* K for these parameters: 1 when greedy (temperature 0 or top_k 1), top_k
 * when 1 < top_k < n_vocab and top_k <= max_k, and 0 (the full row is
 * needed) otherwise, or when a penalty is on (it may move any logit). */
int32_t apr_sampler_cands_needed(const apr_sampler_params *p, int32_t n_vocab, int32_t max_k);

/* Picks the next token from the row's best candidates: cands[0..k) as the
 * worker sends them for K = apr_sampler_cands_needed(&s->p, ...), that is
 * the min(K, number of finite or +inf logits) best, higher logit first,
 * equal logits by lower id first, no NaN or -inf among them (the caller
 * checks this, as it checks anything from a worker). Runs apr_sampler_sample's
 * chain from the top-k stage on and returns what it returns for the full row
 * with the same state: -1 when k is 0 (no token possible). */
int32_t apr_sampler_sample_cands(apr_sampler *s, apr_sampler_ws *ws, const apr_sampler_cand *cands,
                                 int32_t k);

/* Stop strings over the text generated so far (text[0..len), the completion
 * only). `emitted` is how much of it was already sent: the previous return
 * value, 0 at first. Returns how many bytes from the start may be sent now:
 * text that could still grow into a stop string is held back, and a prefix
 * that diverges is released. When a stop string occurs, *matched is set and
 * the return value is where it begins (the stop itself is never sent).
 * Stops are NUL-terminated; empty ones are ignored. */
size_t apr_stop_check(const char *text, size_t len, size_t emitted, const char *const *stops,
                      size_t n_stops, bool *matched);

#endif
