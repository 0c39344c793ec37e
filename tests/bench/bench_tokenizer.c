/* Tokenizer throughput on a few MB of mixed English and C text (the license
 * texts in /usr/share/common-licenses and the headers in /usr/include, read
 * at run time) and the load time of the Qwen2 vocabulary.
 *   bench_tokenizer [MODEL]   (default $SHARED/models/tiny-qwen2-a.gguf) */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/tokenizer.h"

#define TARGET_BYTES (4u << 20)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    char *s;
    size_t n, cap;
} text;

/* Appends the file when it is valid UTF-8 (the tokenizer is the judge). */
static void add_file(text *tx, const apr_tokenizer *t, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return;
    char buf[1 << 16];
    size_t n, start = tx->n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        if (tx->n + n > tx->cap) {
            size_t cap = tx->cap ? tx->cap * 2 : 1 << 20;
            while (tx->n + n > cap) cap *= 2;
            char *p = realloc(tx->s, cap);
            if (!p) break;
            tx->s = p;
            tx->cap = cap;
        }
        memcpy(tx->s + tx->n, buf, n);
        tx->n += n;
    }
    fclose(f);
    char err[APR_ERRLEN];
    int32_t *ids;
    size_t nid;
    if (apr_tok_encode(t, tx->s + start, tx->n - start, false, false, &ids, &nid, err) < 0) tx->n = start;
    else free(ids);
}

/* Best of 3 encodes of the whole text in one call; returns seconds. */
static double time_encode(const apr_tokenizer *t, const char *s, size_t n, size_t *n_ids, int32_t **keep)
{
    char err[APR_ERRLEN];
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        int32_t *ids;
        double t0 = now();
        if (apr_tok_encode(t, s, n, false, true, &ids, n_ids, err) < 0) {
            fprintf(stderr, "bench_tokenizer: %s\n", err);
            exit(1);
        }
        double dt = now() - t0;
        if (dt < best) best = dt;
        if (keep && r == 2) *keep = ids;
        else free(ids);
    }
    return best;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

static void add_dir(text *tx, const apr_tokenizer *t, const char *dir, const char *suffix, size_t limit)
{
    struct dirent **ents;
    int n = scandir(dir, &ents, NULL, by_name);
    if (n < 0) return;
    for (int i = 0; i < n; i++) {
        const char *nm = ents[i]->d_name;
        size_t l = strlen(nm), sl = strlen(suffix);
        if (nm[0] != '.' && tx->n < limit && l >= sl && !strcmp(nm + l - sl, suffix)) {
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", dir, nm);
            add_file(tx, t, path);
        }
        free(ents[i]);
    }
    free(ents);
}

int main(int argc, char **argv)
{
    const char *sh = getenv("SHARED");
    char path[1024];
    if (argc > 1) snprintf(path, sizeof path, "%s", argv[1]);
    else snprintf(path, sizeof path, "%s/models/tiny-qwen2-a.gguf", sh && *sh ? sh : "../shared");
    char err[APR_ERRLEN];

    /* Vocabulary load: best of 5, GGUF parse and tokenizer build apart. */
    double best_open = 1e9, best_load = 1e9;
    gguf_file *f = NULL;
    apr_tokenizer *t = NULL;
    for (int r = 0; r < 5; r++) {
        apr_tok_free(t);
        gguf_close(f);
        double t0 = now();
        f = gguf_open(path, err);
        if (!f) {
            fprintf(stderr, "bench_tokenizer: %s\n", err);
            return 1;
        }
        double t1 = now();
        t = apr_tok_load(f, err);
        if (!t) {
            fprintf(stderr, "bench_tokenizer: %s\n", err);
            gguf_close(f);
            return 1;
        }
        double t2 = now();
        if (t1 - t0 < best_open) best_open = t1 - t0;
        if (t2 - t1 < best_load) best_load = t2 - t1;
    }
    printf("vocab load (%d tokens): gguf_open %.1f ms + apr_tok_load %.1f ms = %.1f ms (best of 5)\n",
           apr_tok_n_vocab(t), best_open * 1e3, best_load * 1e3, (best_open + best_load) * 1e3);

    text tx = {0};
    add_dir(&tx, t, "/usr/share/common-licenses", "", TARGET_BYTES / 8);
    size_t english = tx.n;
    add_dir(&tx, t, "/usr/include", ".h", TARGET_BYTES);
    if (tx.n == 0) {
        fprintf(stderr, "bench_tokenizer: no text found in /usr/share/common-licenses or /usr/include\n");
        return 1;
    }

    size_t n_ids, n_part;
    int32_t *ids = NULL;
    double best = time_encode(t, tx.s, tx.n, &n_ids, &ids);
    printf("encode: %.2f MB (%.2f MB English licenses + %.2f MB C headers) -> %zu tokens, %.2f bytes/token\n",
           tx.n / 1e6, english / 1e6, (tx.n - english) / 1e6, n_ids, (double)tx.n / (double)n_ids);
    printf("encode: %.3f s, %.2f MB/s, %.0f tokens/s (one core, best of 3)\n", best, tx.n / 1e6 / best,
           n_ids / best);
    double te = time_encode(t, tx.s, english, &n_part, NULL);
    double tc = time_encode(t, tx.s + english, tx.n - english, &n_part, NULL);
    printf("encode: English alone %.2f MB/s, C alone %.2f MB/s\n", english / 1e6 / te, (tx.n - english) / 1e6 / tc);

    double t0 = now();
    size_t dl;
    char *dec = apr_tok_decode(t, ids, n_ids, &dl);
    double dt = now() - t0;
    printf("decode: %.2f MB/s, round trip %s\n", dl / 1e6 / dt, dec && dl == tx.n && !memcmp(dec, tx.s, dl) ? "exact" : "DIFFERS");
    free(dec);

    apr_detok d;
    apr_detok_init(&d, t);
    size_t cap = apr_detok_cap(t), total = 0;
    char *out = malloc(cap);
    t0 = now();
    for (size_t i = 0; i < n_ids && out; i++) total += apr_detok_push(&d, ids[i], out, cap);
    if (out) total += apr_detok_flush(&d, out, cap);
    dt = now() - t0;
    printf("streaming decode: %.2f MB/s, %.0f ns/token\n", total / 1e6 / dt, dt * 1e9 / (double)n_ids);
    free(out);
    free(ids);
    apr_tok_free(t);
    gguf_close(f);

    /* SentencePiece on the same text, for comparison (no pre-tokenizer: the
     * whole text is one merge queue per special-token-free fragment). */
    snprintf(path, sizeof path, "%s/models/ggml-vocab-llama-spm.gguf", sh && *sh ? sh : "../shared");
    f = argc > 1 ? NULL : gguf_open(path, err);
    t = f ? apr_tok_load(f, err) : NULL;
    if (t) {
        best = time_encode(t, tx.s, tx.n, &n_ids, NULL);
        printf("SPM (llama-spm vocab) encode: %.2f MB/s, %zu tokens\n", tx.n / 1e6 / best, n_ids);
    }
    apr_tok_free(t);
    gguf_close(f);
    free(tx.s);
    return 0;
}
