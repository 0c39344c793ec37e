/* CPU engine: prefill in one step equals token-by-token, batches of several
 * sequences equal each sequence alone, bad batches and bad models are refused
 * with clear errors. (Parity with llama.cpp is tests/integration/parity.py.) */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "worker/backend.h"

static char model_a[512], model_s[512], tmpdir[256];

static bool have_fixtures(void)
{
    const char *shared = getenv("SHARED") ? getenv("SHARED") : "../shared";
    snprintf(model_a, sizeof model_a, "%s/models/tiny-qwen2-a.gguf", shared);
    snprintf(model_s, sizeof model_s, "%s/models/stories260K.gguf", shared);
    return access(model_a, R_OK) == 0 && access(model_s, R_OK) == 0;
}

static apr_backend *open_model(const char *path, int n_seq)
{
    char err[APR_ERRLEN] = "";
    apr_backend_opts o = {.n_threads = 2, .n_ctx = 64, .n_seq = n_seq};
    apr_backend *b = apr_backend_open("cpu", path, &o, err);
    ck_assert_msg(b != NULL, "open %s: %s", path, err);
    return b;
}

static float max_rel_diff(const float *a, const float *b, size_t n)
{
    float amax = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        amax = fmaxf(amax, fabsf(b[i]));
        d = fmaxf(d, fabsf(a[i] - b[i]));
    }
    return d / (amax > 0 ? amax : 1);
}

static const int32_t prompt[9] = {1, 403, 407, 261, 378, 432, 383, 286, 261};

/* All positions' logits from one prefill step vs one token per step. */
static void prefill_vs_steps(const char *path)
{
    apr_backend *b = open_model(path, 1);
    const int nv = (int)apr_backend_hparams(b)->n_vocab, n = 9;
    float *all = malloc(sizeof(float) * (size_t)nv * n), *one = malloc(sizeof(float) * (size_t)nv);
    int32_t pos[9], seq[9] = {0};
    uint8_t want[9];
    for (int i = 0; i < n; i++) pos[i] = i, want[i] = 1;
    char err[APR_ERRLEN];
    apr_batch batch = {.n = n, .token = prompt, .pos = pos, .seq = seq, .want_logits = want};
    ck_assert_msg(apr_backend_step(b, &batch, all, err) == 0, "%s", err);
    apr_backend_seq_trim(b, 0, 0);
    float worst = 0;
    for (int i = 0; i < n; i++) {
        apr_batch single = {.n = 1, .token = &prompt[i], .pos = &pos[i], .seq = seq};
        ck_assert_msg(apr_backend_step(b, &single, one, err) == 0, "%s", err);
        worst = fmaxf(worst, max_rel_diff(one, all + (size_t)i * nv, (size_t)nv));
    }
    printf("%s: prefill vs token-by-token max relative diff %.3g\n", path, worst);
    ck_assert_msg(worst < 1e-4, "prefill and token-by-token differ by %g", worst);
    free(all);
    free(one);
    apr_backend_close(b);
}

START_TEST(prefill_equals_steps_f32) { prefill_vs_steps(model_s); }
END_TEST

START_TEST(prefill_equals_steps_quant) { prefill_vs_steps(model_a); }
END_TEST

/* Two sequences interleaved in one batch give what each gives alone. */
START_TEST(batch_of_sequences_is_invariant)
{
    apr_backend *b = open_model(model_a, 2);
    const int nv = (int)apr_backend_hparams(b)->n_vocab;
    char err[APR_ERRLEN];
    float *alone = malloc(sizeof(float) * (size_t)nv * 2), *both = malloc(sizeof(float) * (size_t)nv * 2);
    const int32_t ta[4] = {9707, 11, 1879, 0}, tb[3] = {750, 16523, 1445};
    int32_t pa[4] = {0, 1, 2, 3}, pb[3] = {0, 1, 2}, s0[4] = {0, 0, 0, 0}, s1[3] = {1, 1, 1};
    apr_batch a = {.n = 4, .token = ta, .pos = pa, .seq = s0};
    apr_batch bb = {.n = 3, .token = tb, .pos = pb, .seq = s1};
    ck_assert_msg(apr_backend_step(b, &a, alone, err) == 0, "%s", err);
    ck_assert_msg(apr_backend_step(b, &bb, alone + nv, err) == 0, "%s", err);
    apr_backend_seq_trim(b, 0, 0);
    apr_backend_seq_trim(b, 1, 0);
    /* interleaved: b0 a0 a1 b1 a2 b2 a3, logits for a3 and b2 */
    const int32_t tok[7] = {750, 9707, 11, 16523, 1879, 1445, 0};
    const int32_t pos[7] = {0, 0, 1, 1, 2, 2, 3}, seq[7] = {1, 0, 0, 1, 0, 1, 0};
    const uint8_t want[7] = {0, 0, 0, 0, 0, 1, 1};
    apr_batch mix = {.n = 7, .token = tok, .pos = pos, .seq = seq, .want_logits = want};
    ck_assert_msg(apr_backend_step(b, &mix, both, err) == 0, "%s", err);
    float d_b = max_rel_diff(both, alone + nv, (size_t)nv), d_a = max_rel_diff(both + nv, alone, (size_t)nv);
    ck_assert_msg(d_a < 1e-5 && d_b < 1e-5, "batched differs from alone: %g %g", d_a, d_b);
    free(alone);
    free(both);
    apr_backend_close(b);
}
END_TEST

START_TEST(bad_batches_are_refused)
{
    apr_backend *b = open_model(model_s, 2);
    const int nv = (int)apr_backend_hparams(b)->n_vocab;
    float *logits = malloc(sizeof(float) * (size_t)nv);
    char err[APR_ERRLEN];
    int32_t tok = 1, pos = 0, seq = 0, badtok = nv, badseq = 2, badpos = 5, farpos = 64;
    apr_batch wrong_tok = {.n = 1, .token = &badtok, .pos = &pos, .seq = &seq};
    ck_assert_int_ne(apr_backend_step(b, &wrong_tok, logits, err), 0);
    ck_assert_ptr_nonnull(strstr(err, "token"));
    apr_batch wrong_seq = {.n = 1, .token = &tok, .pos = &pos, .seq = &badseq};
    ck_assert_int_ne(apr_backend_step(b, &wrong_seq, logits, err), 0);
    ck_assert_ptr_nonnull(strstr(err, "sequence"));
    apr_batch gap = {.n = 1, .token = &tok, .pos = &badpos, .seq = &seq};
    ck_assert_int_ne(apr_backend_step(b, &gap, logits, err), 0);
    ck_assert_ptr_nonnull(strstr(err, "position"));
    apr_batch past_ctx = {.n = 1, .token = &tok, .pos = &farpos, .seq = &seq};
    ck_assert_int_ne(apr_backend_step(b, &past_ctx, logits, err), 0);
    apr_batch empty = {.n = 0, .token = &tok, .pos = &pos, .seq = &seq};
    ck_assert_int_ne(apr_backend_step(b, &empty, logits, err), 0);
    uint8_t no = 0, k65 = APR_BACKEND_TOPK_MAX + 1, k3 = 3;
    apr_batch too_many = {.n = 1, .token = &tok, .pos = &pos, .seq = &seq, .topk = &k65};
    ck_assert_int_ne(apr_backend_step(b, &too_many, logits, err), 0);
    ck_assert_ptr_nonnull(strstr(err, "candidates"));
    apr_batch unwanted = {.n = 1, .token = &tok, .pos = &pos, .seq = &seq, .want_logits = &no, .topk = &k3};
    ck_assert_int_ne(apr_backend_step(b, &unwanted, logits, err), 0);
    ck_assert_ptr_nonnull(strstr(err, "without logits"));
    /* still works afterwards */
    apr_batch ok = {.n = 1, .token = &tok, .pos = &pos, .seq = &seq};
    ck_assert_msg(apr_backend_step(b, &ok, logits, err) == 0, "%s", err);
    for (int i = 0; i < nv; i++) ck_assert(isfinite(logits[i]));
    /* the same step asking for its 3 best: the candidate row of those logits */
    apr_backend_seq_trim(b, 0, 0);
    float *cands = malloc(sizeof(float) * (size_t)nv);
    apr_batch top3 = {.n = 1, .token = &tok, .pos = &pos, .seq = &seq, .topk = &k3};
    ck_assert_msg(apr_backend_step(b, &top3, cands, err) == 0, "%s", err);
    int32_t ids[3], cnt, id;
    float vals[3], v;
    ck_assert_int_eq(apr_topk_select(logits, nv, 3, ids, vals), 3);
    memcpy(&cnt, cands, 4);
    ck_assert_int_eq(cnt, 3);
    for (int j = 0; j < 3; j++) {
        memcpy(&id, (uint8_t *)cands + 4 + 8 * j, 4);
        memcpy(&v, (uint8_t *)cands + 8 + 8 * j, 4);
        ck_assert_int_eq(id, ids[j]);
        ck_assert(v == vals[j]);
    }
    free(cands);
    free(logits);
    apr_backend_close(b);
}
END_TEST

/* Rewrite stories260K with one tensor dropped, reshaped or retyped. */
typedef struct {
    const gguf_file *src;
    const char *victim;
} copy_ctx;

static int copy_fill(void *ctx, uint64_t i, const gguf_tensor *t, void *buf)
{
    (void)i;
    const copy_ctx *c = ctx;
    const gguf_tensor *s = gguf_find_tensor(c->src, t->name);
    if (s && s->nbytes == t->nbytes) memcpy(buf, c->src->base + s->offset, t->nbytes);
    else memset(buf, 0, t->nbytes);
    return 0;
}

enum damage { DROP, RESHAPE, RETYPE };

static void write_damaged(const char *out, const char *victim, enum damage how)
{
    char err[APR_ERRLEN];
    gguf_file *f = gguf_open(model_s, err);
    ck_assert_msg(f != NULL, "%s", err);
    gguf_writer *w = gguf_writer_new();
    for (uint64_t i = 0; i < f->n_kv; i++) gguf_writer_copy_kv(w, &f->kv[i]);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        uint64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        uint32_t type = t->type;
        if (!strcmp(t->name, victim)) {
            if (how == DROP) continue;
            if (how == RESHAPE) ne[1] += 1;
            if (how == RETYPE) type = APR_TYPE_I32;
        }
        ck_assert_msg(gguf_writer_add_tensor(w, t->name, type, t->n_dims, ne, err) == 0, "%s", err);
    }
    copy_ctx c = {f, victim};
    ck_assert_msg(gguf_writer_write(w, out, copy_fill, &c, err) == 0, "%s", err);
    gguf_writer_free(w);
    gguf_close(f);
}

static void expect_refused(const char *victim, enum damage how, const char *words)
{
    char path[512], err[APR_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/damaged.gguf", tmpdir);
    write_damaged(path, victim, how);
    apr_backend_opts o = {.n_threads = 1, .n_ctx = 16};
    apr_backend *b = apr_backend_open("cpu", path, &o, err);
    ck_assert_msg(b == NULL, "a model with %s damaged was accepted", victim);
    ck_assert_msg(strstr(err, victim) && strstr(err, words), "unclear error: '%s'", err);
    unlink(path);
}

START_TEST(bad_models_are_refused)
{
    expect_refused("blk.2.attn_q.weight", DROP, "missing");
    expect_refused("blk.0.ffn_down.weight", RESHAPE, "shape");
    expect_refused("blk.1.ffn_up.weight", RETYPE, "not supported");
    expect_refused("output_norm.weight", RETYPE, "not supported");
}
END_TEST

START_TEST(cuda_without_device_is_a_clear_error)
{
    char err[APR_ERRLEN] = "";
    apr_backend_opts o = {0};
    apr_backend *b = apr_backend_open("cuda", model_s, &o, err);
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err, "CUDA") != NULL, "unclear error: '%s'", err);
    b = apr_backend_open("tpu", model_s, &o, err);
    ck_assert_ptr_null(b);
    ck_assert_ptr_nonnull(strstr(err, "unknown backend"));
}
END_TEST

int main(void)
{
    if (!have_fixtures()) {
        printf("test_cpu: SKIP: fixtures under $SHARED (../shared) are absent\n");
        return 0;
    }
    snprintf(tmpdir, sizeof tmpdir, "/tmp/apr-test-cpu-XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    Suite *s = suite_create("cpu");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, prefill_equals_steps_f32);
    tcase_add_test(tc, prefill_equals_steps_quant);
    tcase_add_test(tc, batch_of_sequences_is_invariant);
    tcase_add_test(tc, bad_batches_are_refused);
    tcase_add_test(tc, bad_models_are_refused);
    tcase_add_test(tc, cuda_without_device_is_a_clear_error);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    rmdir(tmpdir);
    return failed ? 1 : 0;
}
