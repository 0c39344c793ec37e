/* GGUF reader, writer and hyper-parameters: facts of the shared fixtures, a
 * writer round trip, and hostile inputs (truncations, huge counts, bad types,
 * bad dimensions and offsets) that must each fail with a clear message. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model/model.h"

/* ------------------------------------------------------------ helpers */

static const char *shared_dir(void)
{
    const char *s = getenv("SHARED");
    return s && *s ? s : "../shared";
}

/* NULL (and a skip note) when the fixtures are absent. */
static gguf_file *open_fixture(const char *name)
{
    char path[1024], err[APR_ERRLEN];
    snprintf(path, sizeof path, "%s/models/%s", shared_dir(), name);
    if (access(path, R_OK)) {
        printf("skip: fixture %s absent (set SHARED)\n", path);
        return NULL;
    }
    gguf_file *f = gguf_open(path, err);
    ck_assert_msg(f != NULL, "%s: %s", path, err);
    return f;
}

static const char *type_of(const gguf_file *f, const char *tensor)
{
    const gguf_tensor *t = gguf_find_tensor(f, tensor);
    ck_assert_msg(t != NULL, "tensor %s missing", tensor);
    return apr_type_get(t->type)->name;
}

/* A growable byte buffer for building files by hand. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
} bb;

static void bb_put(bb *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        ck_assert(b->p != NULL);
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void bb_u32(bb *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(bb *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(bb *b, const char *s)
{
    bb_u64(b, strlen(s));
    bb_put(b, s, strlen(s));
}
static void bb_hdr(bb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    bb_put(b, "GGUF", 4);
    bb_u32(b, version);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}
static void bb_kv_u32(bb *b, const char *key, uint32_t v)
{
    bb_str(b, key);
    bb_u32(b, GGUF_U32);
    bb_u32(b, v);
}
static void bb_tensor(bb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off)
{
    bb_str(b, name);
    bb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) bb_u64(b, ne[d]);
    bb_u32(b, type);
    bb_u64(b, off);
}
/* Pads to 32 and appends n data bytes. */
static void bb_data(bb *b, size_t n)
{
    static const uint8_t z[64];
    bb_put(b, z, (32 - b->n % 32) % 32);
    while (n) {
        size_t k = n < sizeof z ? n : sizeof z;
        bb_put(b, z, k);
        n -= k;
    }
}

/* Parses a copy of exactly len bytes (so ASan sees any overread) and checks
 * the outcome: expect_ok, or a failure whose message contains want. */
static void expect_fail(const uint8_t *buf, size_t len, const char *want)
{
    uint8_t *copy = malloc(len ? len : 1);
    ck_assert(copy != NULL);
    memcpy(copy, buf, len);
    char err[APR_ERRLEN] = "";
    gguf_file *f = gguf_parse(copy, len, err);
    ck_assert_msg(f == NULL, "parse succeeded, expected failure with '%s'", want);
    ck_assert_msg(err[0] != 0, "empty error message");
    ck_assert_msg(strchr(err, '\n') == NULL, "error is not one line: %s", err);
    ck_assert_msg(strstr(err, want) != NULL, "error '%s' does not mention '%s'", err, want);
    free(copy);
}

static void bb_expect_fail(bb *b, const char *want)
{
    expect_fail(b->p, b->n, want);
    free(b->p);
    memset(b, 0, sizeof *b);
}

static char *tmp_path(const char *tag)
{
    const char *d = getenv("TMPDIR");
    char *p = malloc(1024);
    ck_assert(p != NULL);
    snprintf(p, 1024, "%s/apr-test-%s-%d.gguf", d && *d ? d : "/tmp", tag, (int)getpid());
    return p;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)n + 1);
    ck_assert(p != NULL);
    ck_assert(fread(p, 1, (size_t)n, fp) == (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return p;
}

/* Tensor data of the round-trip file: a pattern depending on tensor and byte. */
static int fill_pattern(void *ctx, uint64_t i, const gguf_tensor *t, void *buf)
{
    (void)ctx;
    uint8_t *p = buf;
    for (uint64_t j = 0; j < t->nbytes; j++) p[j] = (uint8_t)(i * 31 + j * 7 + 1);
    return 0;
}

/* ------------------------------------------------------------ fixtures */

START_TEST(fixture_qwen2_a)
{
    gguf_file *f = open_fixture("tiny-qwen2-a.gguf");
    if (!f) return;
    ck_assert_uint_eq(f->version, 3);
    ck_assert(gguf_str_eq(gguf_get_str(f, "general.architecture"), "qwen2"));
    ck_assert_int_eq(gguf_get_int(f, "qwen2.block_count", 0), 4);
    ck_assert_int_eq(gguf_get_int(f, "qwen2.embedding_length", 0), 256);
    ck_assert_int_eq(gguf_get_int(f, "qwen2.attention.head_count", 0), 2);
    ck_assert_int_eq(gguf_get_int(f, "qwen2.attention.head_count_kv", 0), 1);
    ck_assert_int_eq(gguf_get_int(f, "qwen2.feed_forward_length", 0), 768);
    ck_assert_int_eq(gguf_get_int(f, "tokenizer.ggml.eos_token_id", 0), 151645);
    ck_assert(!gguf_get_bool(f, "tokenizer.ggml.add_bos_token", true));

    const gguf_value *tok = gguf_get(f, "tokenizer.ggml.tokens");
    ck_assert(tok && tok->type == GGUF_ARR && tok->arr.type == GGUF_STR);
    ck_assert_uint_eq(tok->arr.n, 151936);
    ck_assert(gguf_str_eq(tok->arr.strs[0], "!"));
    ck_assert(gguf_str_eq(tok->arr.strs[151645], "<|im_end|>"));
    const gguf_value *mer = gguf_get(f, "tokenizer.ggml.merges");
    ck_assert(mer && mer->arr.type == GGUF_STR);
    ck_assert_uint_eq(mer->arr.n, 151387);
    ck_assert(gguf_str_eq(mer->arr.strs[0], "\xc4\xa0 \xc4\xa0")); /* "Ġ Ġ" */
    const gguf_value *tt = gguf_get(f, "tokenizer.ggml.token_type");
    ck_assert(tt && tt->arr.type == GGUF_I32 && tt->arr.n == 151936);
    ck_assert_int_eq(gguf_arr_int(tt, 0), 1);
    ck_assert_int_eq(gguf_arr_int(tt, 151645), 3); /* CONTROL */
    gguf_str tpl = gguf_get_str(f, "tokenizer.chat_template");
    ck_assert(tpl.s && tpl.len > 100);

    ck_assert_str_eq(type_of(f, "token_embd.weight"), "Q6_K"); /* tied output */
    ck_assert(gguf_find_tensor(f, "output.weight") == NULL);
    ck_assert_str_eq(type_of(f, "blk.0.attn_q.weight"), "Q4_K");
    ck_assert_str_eq(type_of(f, "blk.0.attn_q.bias"), "F32");
    ck_assert_str_eq(type_of(f, "blk.0.attn_norm.weight"), "F32");
    ck_assert_str_eq(type_of(f, "blk.2.attn_v.weight"), "Q6_K");
    ck_assert_str_eq(type_of(f, "blk.2.ffn_down.weight"), "Q6_K");
    ck_assert_str_eq(type_of(f, "blk.1.ffn_down.weight"), "Q4_K");
    const gguf_tensor *e = gguf_find_tensor(f, "token_embd.weight");
    ck_assert_uint_eq(e->n_dims, 2);
    ck_assert_uint_eq(e->ne[0], 256);
    ck_assert_uint_eq(e->ne[1], 151936);
    ck_assert_uint_eq(e->nbytes, 151936ull * 210);
    ck_assert_uint_eq(e->offset % f->alignment, 0);
    ck_assert(e->offset >= f->data_offset && e->offset + e->nbytes <= f->size);
    ck_assert(gguf_find_tensor(f, "blk.4.attn_q.weight") == NULL);

    apr_hparams hp;
    char err[APR_ERRLEN];
    ck_assert_msg(apr_hparams_load(f, &hp, err) == 0, "%s", err);
    ck_assert_int_eq(hp.arch, APR_ARCH_QWEN2);
    ck_assert_str_eq(hp.arch_name, "qwen2");
    ck_assert_uint_eq(hp.n_vocab, 151936);
    ck_assert_uint_eq(hp.n_embd, 256);
    ck_assert_uint_eq(hp.n_layer, 4);
    ck_assert_uint_eq(hp.n_head, 2);
    ck_assert_uint_eq(hp.n_head_kv, 1);
    ck_assert_uint_eq(hp.head_dim, 128);
    ck_assert_uint_eq(hp.rope_dim, 128);
    ck_assert_uint_eq(hp.n_ff, 768);
    ck_assert_uint_eq(hp.n_ctx_train, 32768);
    ck_assert(hp.rope_neox);
    ck_assert_float_eq(hp.rope_freq_base, 1e6f);
    ck_assert_float_eq_tol(hp.rms_eps, 1e-6f, 1e-12f);
    gguf_close(f);
}
END_TEST

START_TEST(fixture_qwen2_b)
{
    gguf_file *f = open_fixture("tiny-qwen2-b.gguf");
    if (!f) return;
    /* rows of 192 are not a multiple of 256: Q4_K -> Q5_0, Q6_K -> Q8_0 */
    ck_assert_str_eq(type_of(f, "token_embd.weight"), "Q8_0");
    ck_assert_str_eq(type_of(f, "blk.0.attn_q.weight"), "Q5_0");
    ck_assert_str_eq(type_of(f, "blk.2.attn_v.weight"), "Q8_0");
    ck_assert_str_eq(type_of(f, "blk.0.ffn_down.weight"), "Q4_K"); /* rows of 512 */
    ck_assert_str_eq(type_of(f, "blk.2.ffn_down.weight"), "Q6_K");
    apr_hparams hp;
    char err[APR_ERRLEN];
    ck_assert_msg(apr_hparams_load(f, &hp, err) == 0, "%s", err);
    ck_assert_uint_eq(hp.n_embd, 192);
    ck_assert_uint_eq(hp.n_head, 3);
    ck_assert_uint_eq(hp.head_dim, 64);
    ck_assert_uint_eq(hp.n_layer, 3);
    ck_assert_uint_eq(hp.n_ff, 512);
    gguf_close(f);
}
END_TEST

START_TEST(fixture_stories)
{
    gguf_file *f = open_fixture("stories260K.gguf");
    if (!f) return;
    ck_assert(f->n_tensors > 0);
    for (uint64_t i = 0; i < f->n_tensors; i++)
        ck_assert_msg(f->tensors[i].type == APR_TYPE_F32, "%s is not F32", f->tensors[i].name);
    apr_hparams hp;
    char err[APR_ERRLEN];
    ck_assert_msg(apr_hparams_load(f, &hp, err) == 0, "%s", err);
    ck_assert_int_eq(hp.arch, APR_ARCH_LLAMA);
    ck_assert(!hp.rope_neox);
    ck_assert_uint_eq(hp.n_vocab, 512);
    ck_assert_uint_eq(hp.n_embd, 64);
    ck_assert_uint_eq(hp.n_head, 8);
    ck_assert_uint_eq(hp.n_head_kv, 4);
    ck_assert_uint_eq(hp.head_dim, 8);
    ck_assert_uint_eq(hp.rope_dim, 8);
    ck_assert_float_eq(hp.rope_freq_base, 10000.0f);
    ck_assert(gguf_find_tensor(f, "output.weight") != NULL);
    gguf_close(f);
}
END_TEST

START_TEST(fixture_llama_vocab)
{
    gguf_file *f = open_fixture("ggml-vocab-llama-spm.gguf");
    if (!f) return;
    ck_assert_uint_eq(f->n_tensors, 0);
    const gguf_value *sc = gguf_get(f, "tokenizer.ggml.scores");
    ck_assert(sc && sc->arr.type == GGUF_F32 && sc->arr.n == 32000);
    ck_assert(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", false));
    ck_assert_int_eq(gguf_get_int(f, "tokenizer.ggml.bos_token_id", -1), 1);
    gguf_close(f);
}
END_TEST

START_TEST(vocab_parse_is_fast)
{
    char path[1024], err[APR_ERRLEN];
    snprintf(path, sizeof path, "%s/models/tiny-qwen2-a.gguf", shared_dir());
    if (access(path, R_OK)) {
        printf("skip: fixture %s absent\n", path);
        return;
    }
    size_t len;
    uint8_t *buf = read_all(path, &len);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    gguf_file *f = gguf_parse(buf, len, err);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_msg(f != NULL, "%s", err);
    /* a figure, not an assertion: tests never assert on wall-clock time */
    printf("parse of the 151936-token vocab file (in memory): %.2f ms\n",
           (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    gguf_close(f);
    free(buf);
}
END_TEST

/* ------------------------------------------------------------ round trip */

static const uint8_t u8s[] = {0, 1, 255};
static const int16_t i16s[] = {-32768, 0, 32767};
static const float f32s[] = {1.5f, -2.25f, 1e-6f};
static const uint64_t u64s[] = {0, 1ull << 63, 42};
static const double f64s[] = {3.14159, -1e300};
static const uint8_t bools[] = {1, 0, 1};

START_TEST(writer_round_trip)
{
    char *path = tmp_path("rt");
    char err[APR_ERRLEN];
    gguf_writer *w = gguf_writer_new();
    ck_assert(w != NULL);
    gguf_writer_set_str(w, "general.architecture", "test");
    gguf_writer_set_u32(w, "k.u32", 4000000000u);
    gguf_writer_set_f32(w, "k.f32", 0.125f);
    gguf_writer_set_bool(w, "k.bool", true);
    gguf_writer_set_u32(w, "k.replaced", 1);
    gguf_writer_set_u32(w, "k.replaced", 2);
    gguf_value v;
    v = (gguf_value){.type = GGUF_U8, .u = 200};
    gguf_writer_set_value(w, "k.u8", &v);
    v = (gguf_value){.type = GGUF_I8, .i = -100};
    gguf_writer_set_value(w, "k.i8", &v);
    v = (gguf_value){.type = GGUF_U16, .u = 65535};
    gguf_writer_set_value(w, "k.u16", &v);
    v = (gguf_value){.type = GGUF_I16, .i = -30000};
    gguf_writer_set_value(w, "k.i16", &v);
    v = (gguf_value){.type = GGUF_I32, .i = -2000000000};
    gguf_writer_set_value(w, "k.i32", &v);
    v = (gguf_value){.type = GGUF_U64, .u = 1ull << 63};
    gguf_writer_set_value(w, "k.u64", &v);
    v = (gguf_value){.type = GGUF_I64, .i = -(1ll << 62)};
    gguf_writer_set_value(w, "k.i64", &v);
    v = (gguf_value){.type = GGUF_F64, .f = -1e300};
    gguf_writer_set_value(w, "k.f64", &v);
    static const char nul_str[] = {'a', 0, 'b'};
    v = (gguf_value){.type = GGUF_STR, .str = {3, nul_str}};
    gguf_writer_set_value(w, "k.strnul", &v);
    v = (gguf_value){.type = GGUF_STR, .str = {0, ""}};
    gguf_writer_set_value(w, "k.empty", &v);

    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_U8, .n = 3, .data = u8s}};
    gguf_writer_set_value(w, "a.u8", &v);
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_I16, .n = 3, .data = (const uint8_t *)i16s}};
    gguf_writer_set_value(w, "a.i16", &v);
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_F32, .n = 3, .data = (const uint8_t *)f32s}};
    gguf_writer_set_value(w, "a.f32", &v);
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_U64, .n = 3, .data = (const uint8_t *)u64s}};
    gguf_writer_set_value(w, "a.u64", &v);
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_F64, .n = 2, .data = (const uint8_t *)f64s}};
    gguf_writer_set_value(w, "a.f64", &v);
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_BOOL, .n = 3, .data = bools}};
    gguf_writer_set_value(w, "a.bool", &v);
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_I32, .n = 0, .data = NULL}};
    gguf_writer_set_value(w, "a.empty", &v);
    gguf_str strs[3] = {{5, "hello"}, {0, ""}, {4, "\xe4\xbd\xa0\xe5"}};
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_STR, .n = 3, .strs = strs}};
    gguf_writer_set_value(w, "a.str", &v);
    /* [[1,2,3],[],[["x"]]] as nested arrays */
    static const uint32_t u32s[] = {1, 2, 3};
    gguf_str xs[1] = {{1, "x"}};
    gguf_value inner2[1] = {{.type = GGUF_ARR, .arr = {.type = GGUF_STR, .n = 1, .strs = xs}}};
    gguf_value inner[3] = {
        {.type = GGUF_ARR, .arr = {.type = GGUF_U32, .n = 3, .data = (const uint8_t *)u32s}},
        {.type = GGUF_ARR, .arr = {.type = GGUF_U32, .n = 0}},
        {.type = GGUF_ARR, .arr = {.type = GGUF_ARR, .n = 1, .vals = inner2}},
    };
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_ARR, .n = 3, .vals = inner}};
    gguf_writer_set_value(w, "a.nested", &v);

    struct {
        const char *name;
        uint32_t type, n_dims;
        uint64_t ne[4];
    } ts[] = {
        {"t.f32", APR_TYPE_F32, 2, {8, 3, 1, 1}},
        {"t.q4k", APR_TYPE_Q4_K, 2, {256, 2, 1, 1}},
        {"t.q8_0", APR_TYPE_Q8_0, 1, {32, 1, 1, 1}},
        {"t.f16", APR_TYPE_F16, 4, {4, 2, 3, 5}},
        {"t.q6k", APR_TYPE_Q6_K, 3, {512, 1, 3, 1}},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        ck_assert_msg(gguf_writer_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].ne, err) == 0, "%s", err);
    /* the writer refuses what the reader would refuse */
    uint64_t bad[4] = {100, 1, 1, 1};
    ck_assert(gguf_writer_add_tensor(w, "t.bad", APR_TYPE_Q4_K, 1, bad, err) != 0);
    ck_assert(gguf_writer_add_tensor(w, "t.f32", APR_TYPE_F32, 1, bad, err) != 0);
    ck_assert_ptr_nonnull(strstr(err, "duplicate"));
    ck_assert(gguf_writer_add_tensor(w, "t.x", 99, 1, bad, err) != 0);
    ck_assert_msg(gguf_writer_write(w, path, fill_pattern, NULL, err) == 0, "%s", err);
    gguf_writer_free(w);

    gguf_file *f = gguf_open(path, err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_uint_eq(f->version, 3);
    ck_assert_uint_eq(f->alignment, 32);
    ck_assert(gguf_str_eq(gguf_get_str(f, "general.architecture"), "test"));
    ck_assert_int_eq(gguf_get_int(f, "k.u32", 0), 4000000000ll);
    ck_assert_double_eq(gguf_get_float(f, "k.f32", 0), 0.125);
    ck_assert(gguf_get_bool(f, "k.bool", false));
    ck_assert_int_eq(gguf_get_int(f, "k.replaced", 0), 2);
    ck_assert_int_eq(gguf_get_int(f, "k.u8", 0), 200);
    ck_assert_int_eq(gguf_get_int(f, "k.i8", 0), -100);
    ck_assert_int_eq(gguf_get_int(f, "k.u16", 0), 65535);
    ck_assert_int_eq(gguf_get_int(f, "k.i16", 0), -30000);
    ck_assert_int_eq(gguf_get_int(f, "k.i32", 0), -2000000000);
    ck_assert_int_eq(gguf_get_int(f, "k.u64", 7), 7); /* does not fit int64: default */
    ck_assert_uint_eq(gguf_get(f, "k.u64")->u, 1ull << 63);
    ck_assert_int_eq(gguf_get_int(f, "k.i64", 0), -(1ll << 62));
    ck_assert_double_eq(gguf_get_float(f, "k.f64", 0), -1e300);
    ck_assert_double_eq(gguf_get_float(f, "k.u16", 0), 65535.0); /* integers convert */
    ck_assert_int_eq(gguf_get_int(f, "k.f32", -5), -5);          /* floats are another kind */
    ck_assert_int_eq(gguf_get_int(f, "missing", -9), -9);
    ck_assert(gguf_get_str(f, "k.u32").s == NULL);
    gguf_str sn = gguf_get_str(f, "k.strnul");
    ck_assert(sn.len == 3 && !memcmp(sn.s, nul_str, 3));
    ck_assert(!gguf_str_eq(sn, "a"));
    ck_assert(gguf_str_eq(gguf_get_str(f, "k.empty"), ""));

    const gguf_value *a = gguf_get(f, "a.u8");
    ck_assert(a && a->type == GGUF_ARR && a->arr.type == GGUF_U8 && a->arr.n == 3);
    ck_assert_int_eq(gguf_arr_int(a, 2), 255);
    a = gguf_get(f, "a.i16");
    ck_assert_int_eq(gguf_arr_int(a, 0), -32768);
    ck_assert_int_eq(gguf_arr_int(a, 2), 32767);
    a = gguf_get(f, "a.f32");
    ck_assert_double_eq(gguf_arr_float(a, 1), -2.25);
    ck_assert_double_eq(gguf_arr_float(a, 2), (double)1e-6f);
    a = gguf_get(f, "a.u64");
    ck_assert_int_eq(gguf_arr_int(a, 2), 42);
    a = gguf_get(f, "a.f64");
    ck_assert_double_eq(gguf_arr_float(a, 0), 3.14159);
    a = gguf_get(f, "a.bool");
    ck_assert_int_eq(gguf_arr_int(a, 0), 1);
    ck_assert_int_eq(gguf_arr_int(a, 1), 0);
    a = gguf_get(f, "a.empty");
    ck_assert(a && a->arr.n == 0 && a->arr.type == GGUF_I32);
    a = gguf_get(f, "a.str");
    ck_assert(a && a->arr.type == GGUF_STR && a->arr.n == 3);
    ck_assert(gguf_str_eq(a->arr.strs[0], "hello"));
    ck_assert(gguf_str_eq(a->arr.strs[1], ""));
    ck_assert(a->arr.strs[2].len == 4 && !memcmp(a->arr.strs[2].s, "\xe4\xbd\xa0\xe5", 4));
    a = gguf_get(f, "a.nested");
    ck_assert(a && a->arr.type == GGUF_ARR && a->arr.n == 3);
    ck_assert(a->arr.vals[0].arr.type == GGUF_U32 && a->arr.vals[0].arr.n == 3);
    ck_assert_int_eq(gguf_arr_int(&a->arr.vals[0], 2), 3);
    ck_assert_uint_eq(a->arr.vals[1].arr.n, 0);
    const gguf_value *deep = &a->arr.vals[2].arr.vals[0];
    ck_assert(deep->arr.type == GGUF_STR && deep->arr.n == 1 && gguf_str_eq(deep->arr.strs[0], "x"));

    ck_assert_uint_eq(f->n_tensors, sizeof ts / sizeof ts[0]);
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        const gguf_tensor *t = gguf_find_tensor(f, ts[i].name);
        ck_assert_msg(t != NULL, "%s", ts[i].name);
        ck_assert_uint_eq(t->type, ts[i].type);
        ck_assert_uint_eq(t->n_dims, ts[i].n_dims);
        uint64_t n = 1;
        for (int d = 0; d < 4; d++) {
            ck_assert_uint_eq(t->ne[d], ts[i].ne[d]);
            n *= ts[i].ne[d];
        }
        const apr_type_info *ti = apr_type_get(ts[i].type);
        ck_assert_uint_eq(t->nbytes, n / ti->block_size * ti->type_size);
        ck_assert_uint_eq(t->offset % 32, 0);
        for (uint64_t j = 0; j < t->nbytes; j++)
            if (f->base[t->offset + j] != (uint8_t)(i * 31 + j * 7 + 1)) ck_abort_msg("%s: byte %llu differs", t->name, (unsigned long long)j);
    }
    ck_assert(gguf_find_tensor(f, "t.bad") == NULL);
    gguf_close(f);
    unlink(path);
    free(path);
}
END_TEST

/* A small valid file with every kind of section, via the writer. */
static uint8_t *small_file(size_t *len)
{
    char *path = tmp_path("small");
    char err[APR_ERRLEN];
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_u32(w, "general.alignment", 32);
    gguf_str strs[2] = {{3, "abc"}, {2, "de"}};
    gguf_value v = {.type = GGUF_ARR, .arr = {.type = GGUF_STR, .n = 2, .strs = strs}};
    gguf_writer_set_value(w, "tokenizer.ggml.tokens", &v);
    gguf_value inner[1] = {{.type = GGUF_ARR, .arr = {.type = GGUF_U8, .n = 3, .data = u8s}}};
    v = (gguf_value){.type = GGUF_ARR, .arr = {.type = GGUF_ARR, .n = 1, .vals = inner}};
    gguf_writer_set_value(w, "x.nested", &v);
    gguf_writer_set_f32(w, "x.f", 1.0f);
    uint64_t ne1[4] = {32, 2, 1, 1}, ne2[4] = {5, 1, 1, 1};
    ck_assert(gguf_writer_add_tensor(w, "blk.0.attn_q.weight", APR_TYPE_Q8_0, 2, ne1, err) == 0);
    ck_assert(gguf_writer_add_tensor(w, "blk.0.attn_norm.weight", APR_TYPE_F32, 1, ne2, err) == 0);
    ck_assert_msg(gguf_writer_write(w, path, fill_pattern, NULL, err) == 0, "%s", err);
    gguf_writer_free(w);
    uint8_t *buf = read_all(path, len);
    unlink(path);
    free(path);
    return buf;
}

START_TEST(truncation_everywhere)
{
    size_t len;
    uint8_t *buf = small_file(&len);
    char err[APR_ERRLEN];
    gguf_file *f = gguf_parse(buf, len, err);
    ck_assert_msg(f != NULL, "%s", err);
    uint64_t end = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        uint64_t e = f->tensors[i].offset + f->tensors[i].nbytes;
        if (e > end) end = e;
    }
    gguf_close(f);
    ck_assert(end <= len);
    int ok = 0;
    for (size_t n = 0; n <= len; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, buf, n);
        err[0] = 0;
        f = gguf_parse(copy, n, err);
        if (n < end) {
            ck_assert_msg(f == NULL, "truncated to %zu of %llu bytes but parsed", n, (unsigned long long)end);
            ck_assert_msg(err[0] && !strchr(err, '\n'), "length %zu: bad message '%s'", n, err);
        } else {
            ck_assert_msg(f != NULL, "length %zu (complete) refused: %s", n, err);
            ok++;
        }
        gguf_close(f);
        free(copy);
    }
    ck_assert_int_eq(ok, (int)(len - end + 1));
    /* the message names where it stopped */
    expect_fail(buf, 30, "truncated");
    free(buf);
}
END_TEST

START_TEST(bad_header)
{
    bb b = {0};
    bb_put(&b, "GGUX", 4);
    bb_u32(&b, 3);
    bb_u64(&b, 0);
    bb_u64(&b, 0);
    bb_expect_fail(&b, "bad magic");
    expect_fail((const uint8_t *)"GG", 2, "too small");
    expect_fail((const uint8_t *)"", 0, "too small");

    bb_hdr(&b, 1, 0, 0);
    bb_expect_fail(&b, "version 1");
    bb_hdr(&b, 4, 0, 0);
    bb_expect_fail(&b, "version 4");
    bb_hdr(&b, 0x03000000u, 0, 0);
    bb_expect_fail(&b, "big-endian");

    bb_hdr(&b, 3, 1ull << 40, 0);
    bb_expect_fail(&b, "tensor count");
    bb_hdr(&b, 3, 0, 1ull << 40);
    bb_expect_fail(&b, "metadata count");
    bb_hdr(&b, 3, 0, UINT64_MAX);
    bb_expect_fail(&b, "metadata count");
    /* counts that claim more entries than the bytes could hold */
    bb_hdr(&b, 3, 0, 100);
    bb_kv_u32(&b, "a", 1);
    bb_expect_fail(&b, "metadata count");

    /* v2 is accepted, with zero everything */
    bb_hdr(&b, 2, 0, 0);
    char err[APR_ERRLEN];
    gguf_file *f = gguf_parse(b.p, b.n, err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_uint_eq(f->version, 2);
    gguf_close(f);
    free(b.p);
}
END_TEST

START_TEST(bad_metadata)
{
    bb b = {0};
    /* huge key length */
    bb_hdr(&b, 3, 0, 1);
    bb_u64(&b, 1ull << 62);
    bb_put(&b, "abcdefghijklmnop", 16);
    bb_expect_fail(&b, "exceeds");
    /* empty key */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "");
    bb_u32(&b, GGUF_U8);
    bb_u32(&b, 0);
    bb_expect_fail(&b, "key length 0");
    /* huge string value */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "my.key");
    bb_u32(&b, GGUF_STR);
    bb_u64(&b, UINT64_MAX);
    bb_put(&b, "xxxxxxxx", 8);
    bb_expect_fail(&b, "key 'my.key'");
    /* unknown value type */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "my.key");
    bb_u32(&b, 13);
    bb_u64(&b, 0);
    bb_expect_fail(&b, "unknown value type 13");
    /* huge array length, for each element kind */
    uint32_t kinds[] = {GGUF_U8, GGUF_F64, GGUF_STR, GGUF_ARR};
    for (size_t k = 0; k < 4; k++) {
        bb_hdr(&b, 3, 0, 1);
        bb_str(&b, "arr.key");
        bb_u32(&b, GGUF_ARR);
        bb_u32(&b, kinds[k]);
        bb_u64(&b, 1ull << 61);
        bb_u64(&b, 0);
        bb_u64(&b, 0);
        bb_expect_fail(&b, "key 'arr.key': array length");
    }
    /* array of an unknown type */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "arr.key");
    bb_u32(&b, GGUF_ARR);
    bb_u32(&b, 77);
    bb_u64(&b, 1);
    bb_u64(&b, 0);
    bb_expect_fail(&b, "array of unknown value type 77");
    /* string element too long */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "arr.key");
    bb_u32(&b, GGUF_ARR);
    bb_u32(&b, GGUF_STR);
    bb_u64(&b, 2);
    bb_str(&b, "ok");
    bb_u64(&b, 1ull << 50);
    bb_expect_fail(&b, "string 1 length");
    /* nesting bomb: 100 levels of arrays of one array */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "bomb");
    bb_u32(&b, GGUF_ARR);
    for (int d = 0; d < 100; d++) {
        bb_u32(&b, GGUF_ARR);
        bb_u64(&b, 1);
    }
    bb_u32(&b, GGUF_U8);
    bb_u64(&b, 0);
    bb_expect_fail(&b, "nested deeper");
    /* width bomb: an array claiming 2^30 empty arrays in a few bytes */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "bomb");
    bb_u32(&b, GGUF_ARR);
    bb_u32(&b, GGUF_ARR);
    bb_u64(&b, 1ull << 30);
    for (int i = 0; i < 10; i++) {
        bb_u32(&b, GGUF_U8);
        bb_u64(&b, 0);
    }
    bb_expect_fail(&b, "array length");
    /* duplicate key */
    bb_hdr(&b, 3, 0, 2);
    bb_kv_u32(&b, "dup.key", 1);
    bb_kv_u32(&b, "dup.key", 2);
    bb_expect_fail(&b, "key 'dup.key': duplicate key");
    /* bool that is neither 0 nor 1 */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "b");
    bb_u32(&b, GGUF_BOOL);
    bb_put(&b, "\x02", 1);
    bb_expect_fail(&b, "bool value 2");
    /* alignment: 0, 3, wrong type */
    uint32_t aligns[] = {0, 3, 48};
    for (size_t k = 0; k < 3; k++) {
        bb_hdr(&b, 3, 0, 1);
        bb_kv_u32(&b, "general.alignment", aligns[k]);
        bb_expect_fail(&b, "general.alignment");
    }
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, GGUF_U64);
    bb_u64(&b, 32);
    bb_expect_fail(&b, "must be u32");
    /* a valid alignment other than 32 is honoured */
    bb_hdr(&b, 3, 0, 1);
    bb_kv_u32(&b, "general.alignment", 64);
    char err[APR_ERRLEN];
    gguf_file *f = gguf_parse(b.p, b.n, err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_uint_eq(f->alignment, 64);
    gguf_close(f);
    free(b.p);
}
END_TEST

/* One tensor info with the given fields, then data of nbytes. */
static void one_tensor(bb *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off,
                       size_t nbytes)
{
    bb_hdr(b, 3, 1, 0);
    bb_tensor(b, name, n_dims, ne, type, off);
    bb_data(b, nbytes);
}

START_TEST(bad_tensors)
{
    bb b = {0};
    uint64_t ne[5] = {32, 2, 1, 1, 1};
    /* sanity: the builder makes a valid file */
    one_tensor(&b, "w", 2, ne, APR_TYPE_F32, 0, 256);
    char err[APR_ERRLEN];
    gguf_file *f = gguf_parse(b.p, b.n, err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert_uint_eq(f->tensors[0].offset, f->data_offset);
    gguf_close(f);
    free(b.p);
    memset(&b, 0, sizeof b);

    one_tensor(&b, "blk.0.w", 0, ne, APR_TYPE_F32, 0, 256);
    bb_expect_fail(&b, "tensor 'blk.0.w': n_dims 0");
    one_tensor(&b, "blk.0.w", 5, ne, APR_TYPE_F32, 0, 256);
    bb_expect_fail(&b, "tensor 'blk.0.w': n_dims 5");
    uint64_t zero[2] = {32, 0};
    one_tensor(&b, "blk.0.w", 2, zero, APR_TYPE_F32, 0, 256);
    bb_expect_fail(&b, "tensor 'blk.0.w': dimension 1 is zero");
    uint64_t huge[4] = {1ull << 32, 1ull << 32, 1ull << 32, 1ull << 32};
    one_tensor(&b, "blk.0.w", 4, huge, APR_TYPE_F32, 0, 256);
    bb_expect_fail(&b, "tensor 'blk.0.w': more than 2^40");
    uint64_t wrap[2] = {UINT64_MAX, 2};
    one_tensor(&b, "blk.0.w", 2, wrap, APR_TYPE_F32, 0, 256);
    bb_expect_fail(&b, "2^40");
    one_tensor(&b, "blk.0.w", 2, ne, 99, 0, 256);
    bb_expect_fail(&b, "tensor 'blk.0.w': unknown type 99");
    uint64_t odd[2] = {100, 2};
    one_tensor(&b, "blk.0.w", 2, odd, APR_TYPE_Q4_K, 0, 4096);
    bb_expect_fail(&b, "tensor 'blk.0.w': row length 100 is not a multiple of the Q4_K block size 256");
    one_tensor(&b, "blk.0.w", 2, ne, APR_TYPE_F32, 4, 512);
    bb_expect_fail(&b, "tensor 'blk.0.w': data offset 4 is not aligned");
    one_tensor(&b, "blk.3.attn_q.weight", 2, ne, APR_TYPE_F32, 1ull << 40, 256);
    bb_expect_fail(&b, "tensor 'blk.3.attn_q.weight': data offset past end of file");
    one_tensor(&b, "blk.0.w", 2, ne, APR_TYPE_F32, 0, 255);
    bb_expect_fail(&b, "tensor 'blk.0.w': data extends past end of file");
    one_tensor(&b, "blk.0.w", 2, ne, APR_TYPE_F32, UINT64_MAX - 31, 256);
    bb_expect_fail(&b, "tensor 'blk.0.w'");
    /* name checks */
    char longname[200];
    memset(longname, 'n', 128);
    longname[128] = 0;
    one_tensor(&b, longname, 2, ne, APR_TYPE_F32, 0, 256);
    bb_expect_fail(&b, "name length 128");
    longname[127] = 0; /* 127 is the longest allowed */
    one_tensor(&b, longname, 2, ne, APR_TYPE_F32, 0, 256);
    f = gguf_parse(b.p, b.n, err);
    ck_assert_msg(f != NULL, "%s", err);
    ck_assert(gguf_find_tensor(f, longname) != NULL);
    gguf_close(f);
    free(b.p);
    memset(&b, 0, sizeof b);
    one_tensor(&b, "", 2, ne, APR_TYPE_F32, 0, 256);
    bb_expect_fail(&b, "name length 0");
    bb_hdr(&b, 3, 1, 0);
    bb_u64(&b, 3);
    bb_put(&b, "a\0b", 3);
    bb_u32(&b, 1);
    bb_u64(&b, 1);
    bb_u32(&b, 0);
    bb_u64(&b, 0);
    bb_data(&b, 32);
    bb_expect_fail(&b, "NUL");
    /* duplicate names, overlapping data */
    bb_hdr(&b, 3, 2, 0);
    bb_tensor(&b, "same", 2, ne, APR_TYPE_F32, 0);
    bb_tensor(&b, "same", 2, ne, APR_TYPE_F32, 256);
    bb_data(&b, 512);
    bb_expect_fail(&b, "tensor 'same': duplicate tensor name");
    bb_hdr(&b, 3, 2, 0);
    bb_tensor(&b, "first", 2, ne, APR_TYPE_F32, 0);
    bb_tensor(&b, "second", 2, ne, APR_TYPE_F32, 128);
    bb_data(&b, 512);
    bb_expect_fail(&b, "overlaps");
    /* huge tensor count against a tiny file */
    bb_hdr(&b, 3, 1u << 20, 0);
    bb_tensor(&b, "a", 1, ne, APR_TYPE_F32, 0);
    bb_expect_fail(&b, "tensor count");
    /* truncated inside the tensor infos */
    bb_hdr(&b, 3, 2, 0);
    bb_tensor(&b, "first", 2, ne, APR_TYPE_F32, 0);
    bb_str(&b, "cut.with.a.long.name.so.the.count.check.passes");
    bb_u32(&b, 2);
    bb_u64(&b, 32);
    bb_expect_fail(&b, "tensor 'cut.with.a.long.name.so.the.count.check.passes': truncated");
}
END_TEST

/* ------------------------------------------------------------ hparams */

static gguf_file *hp_file(const char *arch, uint32_t n_head, uint32_t n_head_kv, uint32_t n_embd, int with_key_len,
                          uint8_t **img)
{
    char *path = tmp_path("hp");
    char err[APR_ERRLEN], key[64];
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", arch);
#define K(name, v)                                              \
    do {                                                        \
        snprintf(key, sizeof key, "%s.%s", arch, name);         \
        gguf_writer_set_u32(w, key, v);                         \
    } while (0)
    K("context_length", 4096);
    K("embedding_length", n_embd);
    K("block_count", 2);
    K("feed_forward_length", 512);
    K("attention.head_count", n_head);
    if (n_head_kv) K("attention.head_count_kv", n_head_kv);
    if (with_key_len) K("attention.key_length", 64);
#undef K
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    gguf_writer_set_f32(w, key, 1e-5f);
    gguf_str toks[3] = {{1, "a"}, {1, "b"}, {1, "c"}};
    gguf_value v = {.type = GGUF_ARR, .arr = {.type = GGUF_STR, .n = 3, .strs = toks}};
    gguf_writer_set_value(w, "tokenizer.ggml.tokens", &v);
    ck_assert_msg(gguf_writer_write(w, path, fill_pattern, NULL, err) == 0, "%s", err);
    gguf_writer_free(w);
    size_t len;
    *img = read_all(path, &len);
    unlink(path);
    free(path);
    gguf_file *f = gguf_parse(*img, len, err);
    ck_assert_msg(f != NULL, "%s", err);
    return f;
}

START_TEST(hparams_checks)
{
    uint8_t *img;
    apr_hparams hp;
    char err[APR_ERRLEN];
    gguf_file *f = hp_file("llama", 8, 0, 512, 0, &img);
    ck_assert_msg(apr_hparams_load(f, &hp, err) == 0, "%s", err);
    ck_assert_uint_eq(hp.n_head_kv, 8); /* default: head_count */
    ck_assert_uint_eq(hp.head_dim, 64);
    ck_assert_uint_eq(hp.rope_dim, 64);
    ck_assert_float_eq(hp.rope_freq_base, 10000.0f);
    ck_assert_uint_eq(hp.n_vocab, 3);
    ck_assert(!hp.rope_neox);
    gguf_close(f);
    free(img);

    f = hp_file("gpt9", 8, 0, 512, 0, &img);
    ck_assert(apr_hparams_load(f, &hp, err) != 0);
    ck_assert_ptr_nonnull(strstr(err, "unsupported architecture 'gpt9'"));
    gguf_close(f);
    free(img);

    f = hp_file("qwen2", 8, 3, 512, 0, &img);
    ck_assert(apr_hparams_load(f, &hp, err) != 0);
    ck_assert_ptr_nonnull(strstr(err, "head_count_kv"));
    gguf_close(f);
    free(img);

    f = hp_file("qwen2", 6, 2, 512, 0, &img); /* 512 % 6 != 0 */
    ck_assert(apr_hparams_load(f, &hp, err) != 0);
    ck_assert_ptr_nonnull(strstr(err, "not a multiple of head_count"));
    gguf_close(f);
    free(img);

    f = hp_file("qwen2", 6, 2, 512, 1, &img); /* key_length given: allowed */
    ck_assert_msg(apr_hparams_load(f, &hp, err) == 0, "%s", err);
    ck_assert_uint_eq(hp.head_dim, 64);
    ck_assert(hp.rope_neox);
    gguf_close(f);
    free(img);

    f = hp_file("qwen2", 0, 0, 512, 0, &img);
    ck_assert(apr_hparams_load(f, &hp, err) != 0);
    ck_assert_ptr_nonnull(strstr(err, "qwen2.attention.head_count"));
    gguf_close(f);
    free(img);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("fixtures");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, fixture_qwen2_a);
    tcase_add_test(tc, fixture_qwen2_b);
    tcase_add_test(tc, fixture_stories);
    tcase_add_test(tc, fixture_llama_vocab);
    tcase_add_test(tc, vocab_parse_is_fast);
    suite_add_tcase(s, tc);
    tc = tcase_create("writer");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, writer_round_trip);
    suite_add_tcase(s, tc);
    tc = tcase_create("hostile");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, truncation_everywhere);
    tcase_add_test(tc, bad_header);
    tcase_add_test(tc, bad_metadata);
    tcase_add_test(tc, bad_tensors);
    suite_add_tcase(s, tc);
    tc = tcase_create("hparams");
    tcase_add_test(tc, hparams_checks);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
