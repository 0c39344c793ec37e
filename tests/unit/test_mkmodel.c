/* apr_mkmodel: the 0.5B shape written to a temp dir, then checked against an
 * independent statement of llama.cpp's Q4_K_M rule (type of every tensor),
 * the Qwen2.5-0.5B shapes, finite fp16 scales, and the statistics of the
 * dequantized weights (zero mean, the intended spread). Also: determinism
 * across thread counts and clear errors for bad arguments. */
#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"

/* Check records every passing ck_assert (a write per call): loops over
 * millions of values use this instead. */
#define REQUIRE(cond, ...)                  \
    do {                                    \
        if (!(cond)) ck_abort_msg(__VA_ARGS__); \
    } while (0)

static char dir[256];
static char vocab[512];
static char model_path[512];
static uint64_t vocab_n;

static void rm_rf(void)
{
    char p[600];
    snprintf(p, sizeof p, "%s/vocab.gguf", dir);
    unlink(p);
    unlink(model_path);
    snprintf(p, sizeof p, "%s/again.gguf", dir);
    unlink(p);
    rmdir(dir);
}

/* The vocabulary: the real Qwen2 one when the fixtures are here, else a
 * small one made with the writer so the test still runs. */
static int setup(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/apr-mkmodel-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return -1;
    }
    snprintf(model_path, sizeof model_path, "%s/m05.gguf", dir);
    const char *sh = getenv("SHARED");
    snprintf(vocab, sizeof vocab, "%s/models/tiny-qwen2-a.gguf", sh && *sh ? sh : "../shared");
    if (access(vocab, R_OK) == 0) {
        vocab_n = 151936;
        return 0;
    }
    printf("note: %s absent: using a small synthetic vocabulary\n", vocab);
    snprintf(vocab, sizeof vocab, "%s/vocab.gguf", dir);
    gguf_writer *w = gguf_writer_new();
    enum { N = 1000 };
    static gguf_str toks[N];
    static char text[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(text[i], sizeof text[i], "t%d", i);
        toks[i] = (gguf_str){strlen(text[i]), text[i]};
    }
    gguf_value v = {.type = GGUF_ARR, .arr = {.type = GGUF_STR, .n = N, .strs = toks}};
    gguf_writer_set_value(w, "tokenizer.ggml.tokens", &v);
    gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    gguf_writer_set_str(w, "general.name", "not copied");
    char err[APR_ERRLEN];
    int rc = gguf_writer_write(w, vocab, NULL, NULL, err);
    gguf_writer_free(w);
    if (rc) {
        fprintf(stderr, "writing %s: %s\n", vocab, err);
        return -1;
    }
    vocab_n = N;
    return 0;
}

/* ---------------------------------------------- reference dequantization */

static float h2f(uint16_t h) { return apr_fp16_to_f32(h); }

static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void deq_q4_k(const block_q4_K *b, float *y)
{
    float d = h2f(b->d), min = h2f(b->dmin);
    const uint8_t *q = b->qs;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
        uint8_t sc, m;
        scale_min_k4(is, b->scales, &sc, &m);
        float d1 = d * sc, m1 = min * m;
        scale_min_k4(is + 1, b->scales, &sc, &m);
        float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
    }
}

static void deq_q6_k(const block_q6_K *b, float *y)
{
    float d = h2f(b->d);
    const uint8_t *ql = b->ql, *qh = b->qh;
    const int8_t *sc = b->scales;
    for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = (int)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * sc[is] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
        }
    }
}

static void deq_q5_0(const block_q5_0 *b, float *y)
{
    float d = h2f(b->d);
    uint32_t qh;
    memcpy(&qh, b->qh, 4);
    for (int j = 0; j < 16; j++) {
        uint8_t h0 = (uint8_t)(((qh >> j) << 4) & 0x10), h1 = (uint8_t)((qh >> (j + 12)) & 0x10);
        y[j] = (float)(((b->qs[j] & 0xF) | h0) - 16) * d;
        y[j + 16] = (float)(((b->qs[j] >> 4) | h1) - 16) * d;
    }
}

static void deq_q8_0(const block_q8_0 *b, float *y)
{
    float d = h2f(b->d);
    for (int j = 0; j < 32; j++) y[j] = b->qs[j] * d;
}

/* Dequantizes row r of t; false if a scale is not finite. */
static bool deq_row(const gguf_file *f, const gguf_tensor *t, uint64_t r, float *y)
{
    const apr_type_info *ti = apr_type_get(t->type);
    uint64_t rb = apr_row_bytes(t->type, t->ne[0]);
    const uint8_t *p = f->base + t->offset + r * rb;
    for (uint64_t b = 0; b < t->ne[0] / ti->block_size; b++, p += ti->type_size, y += ti->block_size) {
        switch (t->type) {
        case APR_TYPE_Q4_K: {
            const block_q4_K *q = (const block_q4_K *)p;
            if (!isfinite(h2f(q->d)) || !isfinite(h2f(q->dmin))) return false;
            deq_q4_k(q, y);
            break;
        }
        case APR_TYPE_Q6_K:
            if (!isfinite(h2f(((const block_q6_K *)p)->d))) return false;
            deq_q6_k((const block_q6_K *)p, y);
            break;
        case APR_TYPE_Q5_0:
            if (!isfinite(h2f(((const block_q5_0 *)p)->d))) return false;
            deq_q5_0((const block_q5_0 *)p, y);
            break;
        case APR_TYPE_Q8_0:
            if (!isfinite(h2f(((const block_q8_0 *)p)->d))) return false;
            deq_q8_0((const block_q8_0 *)p, y);
            break;
        default: ck_abort_msg("unexpected type %u", t->type);
        }
    }
    return true;
}

/* Every fp16 scale of a quantized tensor is finite (all blocks). */
static void check_scales(const gguf_file *f, const gguf_tensor *t)
{
    const apr_type_info *ti = apr_type_get(t->type);
    uint64_t nb = t->nbytes / ti->type_size;
    const uint8_t *p = f->base + t->offset;
    size_t off = t->type == APR_TYPE_Q6_K ? offsetof(block_q6_K, d) : 0;
    for (uint64_t b = 0; b < nb; b++, p += ti->type_size) {
        uint16_t d;
        memcpy(&d, p + off, 2);
        REQUIRE(isfinite(h2f(d)) && h2f(d) != 0.0f, "%s block %llu: scale %g", t->name,
                      (unsigned long long)b, h2f(d));
        if (t->type == APR_TYPE_Q4_K) {
            memcpy(&d, p + 2, 2);
            REQUIRE(isfinite(h2f(d)), "%s block %llu: dmin not finite", t->name, (unsigned long long)b);
        }
    }
}

/* ----------------------------------------------------------- the rule */

/* llama.cpp Q4_K_M, stated independently of model/mkmodel.c. */
static uint32_t expected_type(const char *name, int layer, int n_layer, uint64_t row, bool tied)
{
    uint32_t t;
    if (strstr(name, "norm") || strstr(name, ".bias")) return APR_TYPE_F32;
    if (!strcmp(name, "output.weight")) t = APR_TYPE_Q6_K;
    else if (!strcmp(name, "token_embd.weight")) t = tied ? APR_TYPE_Q6_K : APR_TYPE_Q4_K;
    else if (strstr(name, "attn_v.weight") || strstr(name, "ffn_down.weight")) {
        bool more = layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
        t = more ? APR_TYPE_Q6_K : APR_TYPE_Q4_K;
    } else t = APR_TYPE_Q4_K;
    if (row % 256) t = t == APR_TYPE_Q6_K ? APR_TYPE_Q8_0 : APR_TYPE_Q5_0;
    return t;
}

START_TEST(mkmodel_05b)
{
    char err[APR_ERRLEN];
    ck_assert_msg(apr_mkmodel("qwen2.5-0.5b", vocab, model_path, 42, 2, false, err) == 0, "%s", err);
    gguf_file *f = gguf_open(model_path, err);
    ck_assert_msg(f != NULL, "%s", err);
    apr_hparams hp;
    ck_assert_msg(apr_hparams_load(f, &hp, err) == 0, "%s", err);
    ck_assert_int_eq(hp.arch, APR_ARCH_QWEN2);
    ck_assert_uint_eq(hp.n_vocab, vocab_n);
    ck_assert_uint_eq(hp.n_embd, 896);
    ck_assert_uint_eq(hp.n_layer, 24);
    ck_assert_uint_eq(hp.n_head, 14);
    ck_assert_uint_eq(hp.n_head_kv, 2);
    ck_assert_uint_eq(hp.head_dim, 64);
    ck_assert_uint_eq(hp.n_ff, 4864);
    ck_assert_uint_eq(hp.n_ctx_train, 32768);
    ck_assert_float_eq(hp.rope_freq_base, 1e6f);
    ck_assert_int_eq(gguf_get_int(f, "general.file_type", 0), 15);
    /* the vocabulary's tokenizer keys came along, nothing else from it */
    const gguf_value *tok = gguf_get(f, "tokenizer.ggml.tokens");
    ck_assert(tok && tok->arr.n == vocab_n);
    ck_assert(gguf_str_eq(gguf_get_str(f, "tokenizer.ggml.model"), "gpt2"));
    ck_assert(!gguf_str_eq(gguf_get_str(f, "general.name"), "not copied"));
    if (vocab_n == 151936) {
        ck_assert_int_eq(gguf_get_int(f, "tokenizer.ggml.eos_token_id", 0), 151645);
        ck_assert(gguf_get_str(f, "tokenizer.chat_template").s != NULL);
        ck_assert_uint_eq(gguf_get(f, "tokenizer.ggml.merges")->arr.n, 151387);
    }

    const int L = 24;
    const uint64_t E = 896, Q = 896, KV = 128, F = 4864;
    ck_assert_uint_eq(f->n_tensors, 1 + 12 * L + 1); /* tied: no output.weight */
    ck_assert(gguf_find_tensor(f, "output.weight") == NULL);
    struct {
        const char *suffix;
        uint64_t ne0, ne1;
    } parts[] = {
        {"attn_norm.weight", E, 1}, {"attn_q.weight", E, Q},  {"attn_k.weight", E, KV}, {"attn_v.weight", E, KV},
        {"attn_q.bias", Q, 1},      {"attn_k.bias", KV, 1},   {"attn_v.bias", KV, 1},   {"attn_output.weight", Q, E},
        {"ffn_norm.weight", E, 1},  {"ffn_gate.weight", E, F}, {"ffn_up.weight", E, F}, {"ffn_down.weight", F, E},
    };
    int n_checked = 0, n_q6 = 0;
    float *row = malloc(sizeof(float) * F);
    ck_assert(row != NULL);
    for (int layer = -1; layer <= L; layer++) {
        size_t np = layer < 0 || layer == L ? 1 : sizeof parts / sizeof parts[0];
        for (size_t k = 0; k < np; k++) {
            char name[64];
            uint64_t ne0, ne1;
            if (layer < 0) {
                snprintf(name, sizeof name, "token_embd.weight");
                ne0 = E;
                ne1 = vocab_n;
            } else if (layer == L) {
                snprintf(name, sizeof name, "output_norm.weight");
                ne0 = E;
                ne1 = 1;
            } else {
                snprintf(name, sizeof name, "blk.%d.%s", layer, parts[k].suffix);
                ne0 = parts[k].ne0;
                ne1 = parts[k].ne1;
            }
            const gguf_tensor *t = gguf_find_tensor(f, name);
            ck_assert_msg(t != NULL, "%s missing", name);
            ck_assert_uint_eq(t->ne[0], ne0);
            ck_assert_uint_eq(t->ne[1], ne1);
            ck_assert_uint_eq(t->n_dims, ne1 == 1 ? 1 : 2);
            uint32_t want = expected_type(name, layer, L, ne0, true);
            ck_assert_msg(t->type == want, "%s: %s, expected %s", name, apr_type_get(t->type)->name,
                          apr_type_get(want)->name);
            n_checked++;
            if (t->type == APR_TYPE_Q8_0 && strstr(name, "blk.")) n_q6++;

            if (t->type == APR_TYPE_F32) {
                const float *v = (const float *)(f->base + t->offset);
                for (uint64_t i = 0; i < ne0; i++) {
                    if (strstr(name, "norm")) REQUIRE(v[i] >= 0.8f && v[i] <= 1.2f, "%s[%llu] = %g", name, (unsigned long long)i, v[i]);
                    else REQUIRE(fabsf(v[i]) <= 0.1f, "%s[%llu] = %g", name, (unsigned long long)i, v[i]);
                }
                continue;
            }
            check_scales(f, t);
            /* three rows: the spread is what a unit-variance input needs */
            double sum = 0, sq = 0;
            uint64_t rows[3] = {0, ne1 / 2, ne1 - 1};
            for (int r = 0; r < 3; r++) {
                REQUIRE(deq_row(f, t, rows[r], row), "%s: a scale is not finite", name);
                for (uint64_t i = 0; i < ne0; i++) {
                    REQUIRE(isfinite(row[i]), "%s: weight %llu not finite", name, (unsigned long long)i);
                    sum += row[i];
                    sq += (double)row[i] * row[i];
                }
            }
            double n = 3.0 * (double)ne0, mean = sum / n, sd = sqrt(sq / n - mean * mean);
            double want_sd = (layer < 0 ? 4.0 : 1.0) / sqrt((double)ne0);
            ck_assert_msg(sd > 0.7 * want_sd && sd < 1.3 * want_sd, "%s: sd %g, expected about %g", name, sd, want_sd);
            ck_assert_msg(fabs(mean) < 0.1 * want_sd, "%s: mean %g (sd %g)", name, mean, sd);
        }
    }
    ck_assert_int_eq(n_checked, (int)f->n_tensors);
    ck_assert_int_gt(n_q6, 0); /* the more-bits layers exist (as Q8_0 here) */
    free(row);
    gguf_close(f);
}
END_TEST

static const uint8_t *map_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    ck_assert(fd >= 0);
    struct stat st;
    ck_assert(fstat(fd, &st) == 0);
    *len = (size_t)st.st_size;
    void *p = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    ck_assert(p != MAP_FAILED);
    return p;
}

START_TEST(mkmodel_deterministic)
{
    char err[APR_ERRLEN], again[600];
    snprintf(again, sizeof again, "%s/again.gguf", dir);
    /* the small test shape: the generator is the same for every shape */
    ck_assert_msg(apr_mkmodel("qwen2-tiny", vocab, model_path, 3, 1, false, err) == 0, "%s", err);
    ck_assert_msg(apr_mkmodel("qwen2-tiny", vocab, again, 3, 3, false, err) == 0, "%s", err);
    size_t a_len, b_len;
    const uint8_t *a = map_file(model_path, &a_len), *b = map_file(again, &b_len);
    ck_assert_uint_eq(a_len, b_len);
    ck_assert_msg(memcmp(a, b, a_len) == 0, "same seed, different thread count: different bytes");
    munmap((void *)a, a_len);
    munmap((void *)b, b_len);
    /* another seed changes the weights */
    ck_assert_msg(apr_mkmodel("qwen2-tiny", vocab, again, 4, 2, false, err) == 0, "%s", err);
    gguf_file *f1 = gguf_open(model_path, err), *f2 = gguf_open(again, err);
    ck_assert(f1 && f2);
    const gguf_tensor *t1 = gguf_find_tensor(f1, "blk.0.attn_q.weight"), *t2 = gguf_find_tensor(f2, "blk.0.attn_q.weight");
    ck_assert(memcmp(f1->base + t1->offset, f2->base + t2->offset, (size_t)t1->nbytes) != 0);
    gguf_close(f1);
    gguf_close(f2);
    unlink(again);
}
END_TEST

START_TEST(mkmodel_errors)
{
    char err[APR_ERRLEN], out[600];
    snprintf(out, sizeof out, "%s/bad.gguf", dir);
    ck_assert_int_eq(apr_mkmodel("qwen2.5-9b", vocab, out, 0, 1, false, err), -2);
    ck_assert_ptr_nonnull(strstr(err, "unknown shape 'qwen2.5-9b'"));
    ck_assert_int_eq(apr_mkmodel("tiny", vocab, out, 0, 1, false, err), -2);
    ck_assert_int_eq(apr_mkmodel("qwen2.5-0.5b", "/nonexistent/vocab.gguf", out, 0, 1, false, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/vocab.gguf"));
    ck_assert_int_eq(apr_mkmodel("qwen2.5-0.5b", vocab, "/nonexistent-dir/x.gguf", 0, 1, false, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "cannot create"));
    ck_assert(access(out, F_OK) != 0);
}
END_TEST

int main(void)
{
    if (setup()) return 1;
    Suite *s = suite_create("mkmodel");
    TCase *tc = tcase_create("mkmodel");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, mkmodel_05b);
    tcase_add_test(tc, mkmodel_deterministic);
    tcase_add_test(tc, mkmodel_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    rm_rf();
    return failed ? 1 : 0;
}
