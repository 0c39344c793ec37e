/* Hyper-parameters of the llama and qwen2 architectures, read from GGUF
 * metadata and checked for ranges the forward pass relies on. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/model.h"

/* Upper bounds well above any real model, low enough that products of them
 * (KV cache sizes, n_embd * n_vocab) stay far from overflowing 64 bits. */
#define MAX_EMBD (1u << 16)
#define MAX_LAYER 1024u
#define MAX_HEAD 1024u
#define MAX_HEAD_DIM 1024u
#define MAX_FF (1u << 20)
#define MAX_VOCAB (1u << 22)
#define MAX_CTX (1u << 24)

/* Reads {arch}.{name} as an unsigned integer in [1, max]; missing -> dflt
 * (0 means required). */
static int get_u32(const gguf_file *f, const char *arch, const char *name, uint32_t dflt, uint32_t max,
                   uint32_t *out, char err[APR_ERRLEN])
{
    char key[96];
    snprintf(key, sizeof key, "%s.%s", arch, name);
    const gguf_value *v = gguf_get(f, key);
    if (!v) {
        if (!dflt) {
            snprintf(err, APR_ERRLEN, "missing key '%s'", key);
            return -1;
        }
        *out = dflt;
        return 0;
    }
    bool is_int = v->type <= GGUF_I32 || v->type == GGUF_U64 || v->type == GGUF_I64;
    if (!is_int) {
        snprintf(err, APR_ERRLEN, "key '%s': not an integer", key);
        return -1;
    }
    int64_t x = gguf_get_int(f, key, -1); /* a u64 above INT64_MAX reads as -1 */
    if (x < 1 || x > (int64_t)max) {
        snprintf(err, APR_ERRLEN, "key '%s': %lld out of range 1..%u", key, (long long)x, max);
        return -1;
    }
    *out = (uint32_t)x;
    return 0;
}

static int get_f32(const gguf_file *f, const char *arch, const char *name, double dflt, double lo, double hi,
                   float *out, char err[APR_ERRLEN])
{
    char key[96];
    snprintf(key, sizeof key, "%s.%s", arch, name);
    const gguf_value *v = gguf_get(f, key);
    if (!v) {
        if (dflt < 0) {
            snprintf(err, APR_ERRLEN, "missing key '%s'", key);
            return -1;
        }
        *out = (float)dflt;
        return 0;
    }
    double x = gguf_get_float(f, key, NAN);
    if (!(x >= lo && x <= hi)) {
        snprintf(err, APR_ERRLEN, "key '%s': %g out of range %g..%g", key, x, lo, hi);
        return -1;
    }
    *out = (float)x;
    return 0;
}

int apr_hparams_load(const gguf_file *f, apr_hparams *hp, char err[APR_ERRLEN])
{
    memset(hp, 0, sizeof *hp);
    gguf_str a = gguf_get_str(f, "general.architecture");
    if (!a.s) {
        snprintf(err, APR_ERRLEN, "missing key 'general.architecture'");
        return -1;
    }
    if (gguf_str_eq(a, "llama")) {
        hp->arch = APR_ARCH_LLAMA;
    } else if (gguf_str_eq(a, "qwen2")) {
        hp->arch = APR_ARCH_QWEN2;
    } else {
        char shown[40];
        size_t n = a.len < 32 ? (size_t)a.len : 32;
        for (size_t i = 0; i < n; i++) shown[i] = (a.s[i] < 0x20 || a.s[i] == 0x7f) ? '?' : a.s[i];
        shown[n] = 0;
        snprintf(err, APR_ERRLEN, "unsupported architecture '%s%s' (apr runs llama and qwen2)", shown,
                 a.len > 32 ? "..." : "");
        return -1;
    }
    const char *arch = hp->arch == APR_ARCH_LLAMA ? "llama" : "qwen2";
    snprintf(hp->arch_name, sizeof hp->arch_name, "%s", arch);
    hp->rope_neox = hp->arch == APR_ARCH_QWEN2;

    if (get_u32(f, arch, "context_length", 0, MAX_CTX, &hp->n_ctx_train, err) ||
        get_u32(f, arch, "embedding_length", 0, MAX_EMBD, &hp->n_embd, err) ||
        get_u32(f, arch, "block_count", 0, MAX_LAYER, &hp->n_layer, err) ||
        get_u32(f, arch, "feed_forward_length", 0, MAX_FF, &hp->n_ff, err) ||
        get_u32(f, arch, "attention.head_count", 0, MAX_HEAD, &hp->n_head, err) ||
        get_u32(f, arch, "attention.head_count_kv", hp->n_head, MAX_HEAD, &hp->n_head_kv, err))
        return -1;
    if (get_f32(f, arch, "attention.layer_norm_rms_epsilon", -1, 1e-12, 1e-1, &hp->rms_eps, err) ||
        get_f32(f, arch, "rope.freq_base", 10000.0, 1.0, 1e12, &hp->rope_freq_base, err))
        return -1;

    if (hp->n_head % hp->n_head_kv) {
        snprintf(err, APR_ERRLEN, "head_count %u is not a multiple of head_count_kv %u", hp->n_head, hp->n_head_kv);
        return -1;
    }
    char key[96];
    snprintf(key, sizeof key, "%s.attention.key_length", arch);
    if (gguf_get(f, key)) {
        if (get_u32(f, arch, "attention.key_length", 0, MAX_HEAD_DIM, &hp->head_dim, err)) return -1;
    } else {
        if (hp->n_embd % hp->n_head) {
            snprintf(err, APR_ERRLEN, "embedding_length %u is not a multiple of head_count %u", hp->n_embd,
                     hp->n_head);
            return -1;
        }
        hp->head_dim = hp->n_embd / hp->n_head;
        if (hp->head_dim > MAX_HEAD_DIM) {
            snprintf(err, APR_ERRLEN, "head dimension %u is larger than %u", hp->head_dim, MAX_HEAD_DIM);
            return -1;
        }
    }
    if (get_u32(f, arch, "rope.dimension_count", hp->head_dim, MAX_HEAD_DIM, &hp->rope_dim, err)) return -1;
    if (hp->rope_dim > hp->head_dim || hp->rope_dim % 2) {
        snprintf(err, APR_ERRLEN, "rope.dimension_count %u must be even and at most the head dimension %u",
                 hp->rope_dim, hp->head_dim);
        return -1;
    }
    if (hp->head_dim % 2) {
        snprintf(err, APR_ERRLEN, "head dimension %u is odd", hp->head_dim);
        return -1;
    }

    const gguf_value *tok = gguf_get(f, "tokenizer.ggml.tokens");
    const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    uint64_t nv = 0;
    if (tok && tok->type == GGUF_ARR) nv = tok->arr.n;
    else if (emb && emb->n_dims >= 2) nv = emb->ne[1];
    if (nv == 0 || nv > MAX_VOCAB) {
        snprintf(err, APR_ERRLEN, "vocabulary size %llu (need tokenizer.ggml.tokens or token_embd.weight, 1..%u)",
                 (unsigned long long)nv, MAX_VOCAB);
        return -1;
    }
    hp->n_vocab = (uint32_t)nv;
    return 0;
}
