/* apr mkmodel: writes a synthetic Qwen2.5 model (real shapes, Q4_K_M mix,
 * a real vocabulary) for benchmarks and tests. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client/client.h"
#include "model/model.h"

static void usage(FILE *out)
{
    fputs("usage: apr mkmodel --shape NAME --vocab-from GGUF -o OUT [--seed S] [--threads T]\n"
          "  Writes a synthetic Qwen2.5 model with the real shapes, llama.cpp's Q4_K_M\n"
          "  tensor-type mix, random but numerically sane weights and the vocabulary\n"
          "  (every tokenizer.* key) of GGUF.\n"
          "  --shape NAME     qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b, qwen2.5-7b, qwen2.5-14b,\n"
          "                   qwen2.5-32b (the qwen2.5- prefix may be left out), or\n"
          "                   qwen2-tiny (4 small layers, for tests)\n"
          "  --vocab-from F   GGUF file whose vocabulary and chat template to copy\n"
          "  -o, --output F   output file (written as F.part, renamed when complete)\n"
          "  --seed S         random seed (default 0); same seed, same file\n"
          "  --threads T      worker threads (default: all cores)\n",
          out);
}

static int parse_u64(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-') return -1;
    unsigned long long x = strtoull(s, &end, 0);
    if (errno || *end) return -1;
    *v = x;
    return 0;
}

int apr_cmd_mkmodel(int argc, char **argv)
{
    const char *shape = NULL, *vocab = NULL, *out = NULL;
    uint64_t seed = 0, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "apr mkmodel: %s '%s'\n", a[0] == '-' ? "missing value after" : "unexpected argument", a);
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "--shape")) {
            shape = v;
        } else if (!strcmp(a, "--vocab-from")) {
            vocab = v;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            out = v;
        } else if (!strcmp(a, "--seed")) {
            if (parse_u64(v, &seed)) {
                fprintf(stderr, "apr mkmodel: --seed: '%s' is not a non-negative integer\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--threads")) {
            if (parse_u64(v, &threads) || threads < 1 || threads > 1024) {
                fprintf(stderr, "apr mkmodel: --threads: '%s' is not a number in 1..1024\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "apr mkmodel: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!shape || !vocab || !out) {
        fprintf(stderr, "apr mkmodel: --shape, --vocab-from and -o are required\n");
        usage(stderr);
        return 2;
    }

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char err[APR_ERRLEN];
    int rc = apr_mkmodel(shape, vocab, out, seed, (int)threads, isatty(2) != 0, err);
    if (rc) {
        fprintf(stderr, "apr mkmodel: %s\n", err);
        return rc == -2 ? 2 : 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    struct stat st;
    double bytes = stat(out, &st) == 0 ? (double)st.st_size : 0.0;
    fprintf(stderr, "apr mkmodel: wrote %s: %.2f GB in %.2f s (%.2f GB/s)\n", out, bytes / 1e9, secs,
            secs > 0 ? bytes / 1e9 / secs : 0.0);
    return 0;
}
