/* Writes the small seed files of tests/fuzz/corpus/fuzz_gguf with the GGUF
 * writer. Build and run by hand when the format coverage should change:
 *   gcc -std=c17 -D_GNU_SOURCE -I. tests/fuzz/mkseeds.c model/[a-z]*.c -lm -pthread -o /tmp/mkseeds
 *   /tmp/mkseeds tests/fuzz/corpus/fuzz_gguf
 * (no .gguf suffix: the repository ignores *.gguf)
 */
#include <stdio.h>
#include <string.h>

#include "model/model.h"

static int fill(void *ctx, uint64_t i, const gguf_tensor *t, void *buf)
{
    (void)ctx;
    uint8_t *p = buf;
    for (uint64_t j = 0; j < t->nbytes; j++) p[j] = (uint8_t)(i * 13 + j);
    return 0;
}

static int model_seed(const char *dir, const char *arch, int nested)
{
    char path[512], key[96], err[APR_ERRLEN];
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", arch);
    const struct { const char *k; uint32_t v; } u[] = {
        {"context_length", 64}, {"embedding_length", 32}, {"block_count", 1},
        {"feed_forward_length", 64}, {"attention.head_count", 4}, {"attention.head_count_kv", 2},
    };
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++) {
        snprintf(key, sizeof key, "%s.%s", arch, u[i].k);
        gguf_writer_set_u32(w, key, u[i].v);
    }
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    gguf_writer_set_f32(w, key, 1e-6f);
    gguf_str toks[4] = {{1, "a"}, {1, "b"}, {2, "ab"}, {5, "<eos>"}};
    gguf_value v = {.type = GGUF_ARR, .arr = {.type = GGUF_STR, .n = 4, .strs = toks}};
    gguf_writer_set_value(w, "tokenizer.ggml.tokens", &v);
    static const float scores[4] = {0, -1, -2, 0};
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_F32, .n = 4, .data = (const uint8_t *)scores}};
    gguf_writer_set_value(w, "tokenizer.ggml.scores", &v);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 3);
    gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", false);
    if (nested) {
        static const int16_t s16[3] = {-1, 2, -3};
        gguf_value in[2] = {
            {.type = GGUF_ARR, .arr = {.type = GGUF_I16, .n = 3, .data = (const uint8_t *)s16}},
            {.type = GGUF_ARR, .arr = {.type = GGUF_STR, .n = 2, .strs = toks}},
        };
        v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_ARR, .n = 2, .vals = in}};
        gguf_writer_set_value(w, "x.nested", &v);
        v = (gguf_value){.type = GGUF_F64, .f = 2.5};
        gguf_writer_set_value(w, "x.f64", &v);
        gguf_writer_set_u32(w, "general.alignment", 64);
    }
    static const struct { const char *name; uint32_t type; uint64_t ne0, ne1; } ts[] = {
        {"token_embd.weight", APR_TYPE_Q8_0, 32, 4}, {"output_norm.weight", APR_TYPE_F32, 32, 1},
        {"blk.0.attn_q.weight", APR_TYPE_Q4_0, 32, 32}, {"blk.0.attn_k.bias", APR_TYPE_F16, 16, 1},
        {"blk.0.ffn_down.weight", APR_TYPE_Q4_K, 256, 1}, {"blk.0.ffn_up.weight", APR_TYPE_BF16, 32, 2},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        uint64_t ne[4] = {ts[i].ne0, ts[i].ne1, 1, 1};
        if (gguf_writer_add_tensor(w, ts[i].name, ts[i].type, ts[i].ne1 > 1 ? 2 : 1, ne, err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
    }
    snprintf(path, sizeof path, "%s/%s%s", dir, arch, nested ? "-nested" : "");
    int rc = gguf_writer_write(w, path, fill, NULL, err);
    if (rc) fprintf(stderr, "%s\n", err);
    gguf_writer_free(w);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: mkseeds DIR\n");
        return 2;
    }
    char path[512], err[APR_ERRLEN];
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.name", "empty");
    snprintf(path, sizeof path, "%s/metadata-only", argv[1]);
    int rc = gguf_writer_write(w, path, fill, NULL, err);
    gguf_writer_free(w);
    if (rc) fprintf(stderr, "%s\n", err);
    return rc || model_seed(argv[1], "qwen2", 0) || model_seed(argv[1], "llama", 1);
}
