/* tokenizer/: the reference tokenizations in ../shared (Hugging Face's ids for
 * 47 strings per vocabulary, llama.cpp's prompt tokens and pieces in the
 * golden runs), round trips over random text, the streaming detokenizer at
 * every split point, special tokens, invalid UTF-8 and chat templates. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "tokenizer/tokenizer.h"

typedef struct {
    char dir[512];
    gguf_file *qf, *sf, *stf; /* tiny-qwen2-a, llama-spm, stories260K */
    apr_tokenizer *qwen, *spm, *stories;
} fixture;

static fixture fx;

static gguf_file *open_model(const char *name)
{
    char path[700], err[APR_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/models/%s", fx.dir, name);
    gguf_file *f = gguf_open(path, err);
    ck_assert_msg(f != NULL, "%s: %s", path, err);
    return f;
}

static apr_tokenizer *load_tok(const gguf_file *f)
{
    char err[APR_ERRLEN] = "";
    apr_tokenizer *t = apr_tok_load(f, err);
    ck_assert_msg(t != NULL, "apr_tok_load: %s", err);
    return t;
}

static void setup(void)
{
    fx.qf = open_model("tiny-qwen2-a.gguf");
    fx.sf = open_model("ggml-vocab-llama-spm.gguf");
    fx.stf = open_model("stories260K.gguf");
    fx.qwen = load_tok(fx.qf);
    fx.spm = load_tok(fx.sf);
    fx.stories = load_tok(fx.stf);
}

static void teardown(void)
{
    apr_tok_free(fx.qwen);
    apr_tok_free(fx.spm);
    apr_tok_free(fx.stories);
    gguf_close(fx.qf);
    gguf_close(fx.sf);
    gguf_close(fx.stf);
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    ck_assert_ptr_nonnull(buf);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            ck_assert_ptr_nonnull(buf);
        }
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static int32_t *encode(const apr_tokenizer *t, const char *s, size_t len, bool bos, bool special, size_t *n)
{
    char err[APR_ERRLEN] = "";
    int32_t *ids = NULL;
    int rc = apr_tok_encode(t, s, len, bos, special, &ids, n, err);
    ck_assert_msg(rc == 0, "encode: %s", err);
    return ids;
}

static void fmt_ids(const int32_t *ids, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < n && o + 16 < cap; i++) o += (size_t)snprintf(out + o, cap - o, " %d", ids[i]);
}

/* The llama.cpp vocab test files: cases separated by "\n__ggml_vocab_test__\n"
 * in .inp, one line of ids per case in .out (the part after the last
 * separator is empty in both, and is checked too: "" gives no ids). */
static void vocab_file(const apr_tokenizer *t, const char *name)
{
    char path[700];
    size_t il, ol;
    snprintf(path, sizeof path, "%s/tokenizer/%s.inp", fx.dir, name);
    char *inp = read_all(path, &il);
    snprintf(path, sizeof path, "%s/tokenizer/%s.out", fx.dir, name);
    char *out = read_all(path, &ol);
    const char *sep = "\n__ggml_vocab_test__\n";
    char *ip = inp, *op = out;
    int cases = 0, passed = 0;
    for (;;) {
        char *end = strstr(ip, sep);
        size_t cl = end ? (size_t)(end - ip) : strlen(ip);
        char *eol = strchr(op, '\n');
        size_t ll = eol ? (size_t)(eol - op) : strlen(op);
        int32_t want[4096];
        size_t nw = 0;
        char *q = op;
        while (q < op + ll) {
            char *e;
            long v = strtol(q, &e, 10);
            if (e == q) break;
            ck_assert(nw < 4096);
            want[nw++] = (int32_t)v;
            q = e;
        }
        size_t n;
        int32_t *ids = encode(t, ip, cl, false, false, &n);
        cases++;
        if (n == nw && !memcmp(ids, want, n * sizeof *ids)) {
            passed++;
        } else {
            char got[2048], exp[2048];
            fmt_ids(ids, n, got, sizeof got);
            fmt_ids(want, nw, exp, sizeof exp);
            fprintf(stderr, "%s case %d '%.*s':\n  got %s\n want %s\n", name, cases, (int)(cl > 60 ? 60 : cl),
                    ip, got, exp);
        }
        free(ids);
        if (!end || !eol) break;
        ip = end + strlen(sep);
        op = eol + 1;
    }
    printf("%s: %d/%d cases match\n", name, passed, cases);
    ck_assert_int_ge(cases, 47);
    ck_assert_int_eq(passed, cases);
    free(inp);
    free(out);
}

START_TEST(test_qwen2_cases) { vocab_file(fx.qwen, "qwen2"); }
END_TEST

START_TEST(test_llama_spm_cases) { vocab_file(fx.spm, "llama-spm"); }
END_TEST

/* ---- a tiny JSON reader for the golden records (flat, known keys) */

static void put_utf8(uint32_t cp, char **o)
{
    utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)*o);
    *o += n;
}

/* Parses the JSON string at p (on its opening quote) into out (NUL-terminated);
 * returns the position after the closing quote. */
static const char *json_str(const char *p, char *out, size_t *len)
{
    ck_assert(*p == '"');
    char *o = out;
    for (p++; *p != '"'; p++) {
        ck_assert(*p);
        if (*p != '\\') {
            *o++ = *p;
            continue;
        }
        p++;
        switch (*p) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': {
            uint32_t cp = (uint32_t)strtoul((char[5]){p[1], p[2], p[3], p[4], 0}, NULL, 16);
            p += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && p[1] == '\\' && p[2] == 'u') {
                uint32_t lo = (uint32_t)strtoul((char[5]){p[3], p[4], p[5], p[6], 0}, NULL, 16);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            put_utf8(cp, &o);
            break;
        }
        default: *o++ = *p; break;
        }
    }
    *o = 0;
    *len = (size_t)(o - out);
    return p + 1;
}

static const char *after_key(const char *rec, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(rec, pat);
    ck_assert_msg(p != NULL, "golden record without %s", key);
    return p + strlen(pat);
}

static const apr_tokenizer *by_model(const char *model)
{
    if (!strcmp(model, "stories260K.gguf")) return fx.stories;
    /* tiny-qwen2-a and -b share the Qwen2.5 vocabulary. */
    if (!strncmp(model, "tiny-qwen2-", 11)) return fx.qwen;
    ck_abort_msg("golden record for unknown model %s", model);
    return NULL;
}

START_TEST(test_golden)
{
    static const char *files[] = {"stories260K.jsonl", "tiny-qwen2-a.jsonl", "tiny-qwen2-b.jsonl"};
    int records = 0, ok = 0, pieces = 0, pieces_ok = 0;
    for (size_t fi = 0; fi < 3; fi++) {
        char path[700];
        size_t len;
        snprintf(path, sizeof path, "%s/golden/%s", fx.dir, files[fi]);
        char *all = read_all(path, &len);
        char *buf = malloc(len + 1);
        ck_assert_ptr_nonnull(buf);
        for (char *rec = all; *rec;) {
            char *nl = strchr(rec, '\n');
            if (nl) *nl = 0;
            if (!*rec) break;
            size_t n, plen;
            json_str(after_key(rec, "model"), buf, &n);
            const apr_tokenizer *t = by_model(buf);
            bool bos = !strncmp(after_key(rec, "add_bos"), "true", 4);
            json_str(after_key(rec, "prompt"), buf, &plen);
            int32_t want[1024];
            size_t nw = 0;
            const char *p = after_key(rec, "prompt_tokens");
            ck_assert(*p == '[');
            for (p++; *p != ']';) {
                char *e;
                want[nw++] = (int32_t)strtol(p, &e, 10);
                p = e;
                while (*p == ',' || *p == ' ') p++;
            }
            int32_t *ids = encode(t, buf, plen, bos, true, &n);
            records++;
            if (n == nw && !memcmp(ids, want, n * sizeof *ids)) {
                ok++;
            } else {
                char got[2048], exp[2048];
                fmt_ids(ids, n, got, sizeof got);
                fmt_ids(want, nw, exp, sizeof exp);
                fprintf(stderr, "%s '%s':\n  got %s\n want %s\n", files[fi], buf, got, exp);
            }
            free(ids);
            /* Every generated step: our piece for the token is llama.cpp's. */
            for (p = strstr(p, "{\"token\": "); p; p = strstr(p, "{\"token\": ")) {
                int32_t tok = (int32_t)strtol(p + 10, NULL, 10);
                p = json_str(after_key(p, "piece"), buf, &plen);
                char piece[512];
                size_t pl = apr_tok_piece(t, tok, piece, sizeof piece);
                pieces++;
                if (pl == plen && !memcmp(piece, buf, pl)) pieces_ok++;
                else fprintf(stderr, "%s token %d: piece '%.*s', golden '%s'\n", files[fi], tok, (int)pl, piece, buf);
            }
            rec = nl ? nl + 1 : rec + strlen(rec);
        }
        free(buf);
        free(all);
    }
    printf("golden: %d/%d prompts tokenized as llama.cpp did, %d/%d step pieces equal\n", ok, records,
           pieces_ok, pieces);
    ck_assert_int_eq(records, 11);
    ck_assert_int_eq(ok, records);
    ck_assert_int_gt(pieces, 0);
    ck_assert_int_eq(pieces_ok, pieces);
}
END_TEST

/* ---- random text */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Random valid UTF-8 mixing what tokenizers trip on: ASCII words and code,
 * runs of spaces, newlines, digits, apostrophes, accents (precomposed and
 * combining), CJK, emoji with joiners, other scripts. */
static size_t random_text(uint64_t *rng, char *out, size_t max_chars)
{
    static const uint32_t pool[] = {' ', ' ', ' ', '\n', '\t', '\r', '\'', '.', ',', '(', ')', '{', '}', ';',
                                    '=', '<', '>', '|', '_', '-', '"', 0xE9, 0xFC, 0xC5, 0x301, 0x308,
                                    0x327, 0x4E2D, 0x6587, 0x4E16, 0x754C, 0x3001, 0x1F600, 0x1F30D,
                                    0x200D, 0xFE0F, 0x444, 0x3B1, 0x5D0, 0x627, 0xE01, 0x1780, 0xA0,
                                    0x3000, 0x2028, 0x85, 0xBD, 0x660, 0x17F, 0x212A};
    static const char *words[] = {"the", "The", "int", "return", "Hello", "world", "'s", "'LL", "don't",
                                  "12345", "0x1F", "    ", "\n\n", "<|im_start|>", "printf", "ÿ"};
    char *o = out;
    size_t n = (size_t)(rng_next(rng) % max_chars);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next(rng) % 10;
        if (r < 3) {
            const char *w = words[rng_next(rng) % (sizeof words / sizeof *words)];
            memcpy(o, w, strlen(w));
            o += strlen(w);
        } else if (r < 6) {
            *o++ = (char)(rng_next(rng) % 2 ? 'a' + rng_next(rng) % 26 : '0' + rng_next(rng) % 10);
        } else {
            put_utf8(pool[rng_next(rng) % (sizeof pool / sizeof *pool)], &o);
        }
    }
    *o = 0;
    return (size_t)(o - out);
}

static char *stream_decode(const apr_tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = apr_detok_cap(t);
    char *out = malloc(cap * (n + 1) + 1);
    ck_assert_ptr_nonnull(out);
    apr_detok d;
    apr_detok_init(&d, t);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t w = apr_detok_push(&d, ids[i], out + o, cap);
        /* Never half a character: what came out so far is valid UTF-8. */
        ck_assert(utf8proc_decompose((utf8proc_uint8_t *)out, (utf8proc_ssize_t)(o + w), NULL, 0, 0) >= 0 ||
                  o + w == 0);
        o += w;
    }
    o += apr_detok_flush(&d, out + o, cap);
    out[o] = 0;
    *len = o;
    return out;
}

/* Streaming equals one-shot for every prefix of ids (every split point). */
static void check_stream(const apr_tokenizer *t, const int32_t *ids, size_t n)
{
    for (size_t k = 0; k <= n; k++) {
        size_t l1, l2;
        char *a = apr_tok_decode(t, ids, k, &l1);
        ck_assert_ptr_nonnull(a);
        char *b = stream_decode(t, ids, k, &l2);
        ck_assert_msg(l1 == l2 && !memcmp(a, b, l1), "stream and one-shot differ at split %zu of %zu", k, n);
        free(a);
        free(b);
    }
}

static void roundtrip(const apr_tokenizer *t, bool nfc, int count, uint64_t seed, const char *what)
{
    uint64_t rng = seed;
    char *text = malloc(64 * 1024);
    ck_assert_ptr_nonnull(text);
    int ok = 0, streamed = 0;
    for (int i = 0; i < count; i++) {
        size_t len = random_text(&rng, text, i % 50 == 0 ? 2000 : 60);
        size_t n, dl;
        int32_t *ids = encode(t, text, len, false, false, &n);
        char *dec = apr_tok_decode(t, ids, n, &dl);
        ck_assert_ptr_nonnull(dec);
        char *want = text;
        utf8proc_uint8_t *norm = NULL;
        size_t wl = len;
        if (nfc) {
            utf8proc_ssize_t r = utf8proc_map((utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &norm,
                                              UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            ck_assert(r >= 0);
            want = (char *)norm;
            wl = (size_t)r;
        }
        if (dl == wl && !memcmp(dec, want, wl)) ok++;
        else fprintf(stderr, "%s round trip %d differs:\n  in  '%s'\n  out '%s'\n", what, i, want, dec);
        if (n <= 80) {
            check_stream(t, ids, n);
            streamed++;
        }
        free(norm);
        free(dec);
        free(ids);
    }
    printf("%s: %d/%d random strings round-trip, streaming checked at every split of %d\n", what, ok, count,
           streamed);
    ck_assert_int_eq(ok, count);
    free(text);
}

START_TEST(test_bpe_roundtrip) { roundtrip(fx.qwen, true, 3000, 0x5EED1234ABCDull, "qwen2 BPE"); }
END_TEST

START_TEST(test_spm_roundtrip) { roundtrip(fx.spm, false, 1500, 0xC0FFEE12345ull, "llama SPM"); }
END_TEST

/* Arbitrary id sequences (byte tokens splitting characters, control tokens)
 * still stream exactly as they decode in one go, and always as valid UTF-8. */
START_TEST(test_stream_random_ids)
{
    const apr_tokenizer *toks[] = {fx.qwen, fx.spm, fx.stories};
    uint64_t rng = 42;
    int seqs = 0;
    for (int ti = 0; ti < 3; ti++) {
        const apr_tokenizer *t = toks[ti];
        int32_t nv = apr_tok_n_vocab(t);
        for (int s = 0; s < 200; s++) {
            int32_t ids[40];
            size_t n = 1 + rng_next(&rng) % 40;
            for (size_t i = 0; i < n; i++) {
                uint64_t r = rng_next(&rng);
                /* Mostly low ids: the byte and byte-level tokens live there. */
                ids[i] = (int32_t)(r % 3 ? (r >> 8) % 300 : (r >> 8) % (uint64_t)nv);
            }
            check_stream(t, ids, n);
            size_t l;
            char *d = apr_tok_decode(t, ids, n, &l);
            ck_assert(utf8proc_decompose((utf8proc_uint8_t *)d, (utf8proc_ssize_t)l, NULL, 0, 0) >= 0);
            free(d);
            seqs++;
        }
    }
    printf("stream: %d random id sequences equal one-shot decoding at every split\n", seqs);
}
END_TEST

/* Long text is pre-tokenized in chunks; where the cuts fall never shows. */
START_TEST(test_chunks)
{
    uint64_t rng = 7;
    size_t cap = 400 * 1024, len = 0;
    char *text = malloc(cap + 8192);
    ck_assert_ptr_nonnull(text);
    while (len < cap) {
        len += random_text(&rng, text + len, 40);
        text[len++] = rng_next(&rng) % 3 ? '\n' : '\r';
    }
    size_t chunks[] = {1, 100, 4096, 64u << 10, SIZE_MAX};
    size_t n0;
    apr_tok_set_chunk(fx.qwen, SIZE_MAX);
    int32_t *whole = encode(fx.qwen, text, len, false, false, &n0);
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
        apr_tok_set_chunk(fx.qwen, chunks[c]);
        size_t n;
        int32_t *ids = encode(fx.qwen, text, len, false, false, &n);
        ck_assert_msg(n == n0 && !memcmp(ids, whole, n * sizeof *ids), "chunks of %zu change the ids", chunks[c]);
        free(ids);
    }
    printf("chunks: %zu bytes, %zu tokens, the same for 5 chunk sizes\n", len, n0);
    apr_tok_set_chunk(fx.qwen, 64u << 10);
    free(whole);
    free(text);
}
END_TEST

START_TEST(test_special)
{
    const char *text = "<|im_start|>user\nhi<|im_end|>\n";
    size_t n, n2, n3;
    int32_t *on = encode(fx.qwen, text, strlen(text), false, true, &n);
    int32_t *mid = encode(fx.qwen, "user\nhi", 7, false, false, &n2);
    ck_assert_uint_ge(n, 4);
    ck_assert_int_eq(on[0], 151644);
    ck_assert_mem_eq(on + 1, mid, n2 * sizeof *mid);
    ck_assert_int_eq(on[1 + n2], 151645);
    ck_assert_int_eq(on[2 + n2], 198); /* "\n" */
    ck_assert_uint_eq(n, n2 + 3);

    /* Off: the same text in ordinary tokens, which decode back to it. */
    int32_t *off = encode(fx.qwen, text, strlen(text), false, false, &n3);
    for (size_t i = 0; i < n3; i++) ck_assert_int_lt(off[i], 151643);
    size_t dl;
    char *d = apr_tok_decode(fx.qwen, off, n3, &dl);
    ck_assert_str_eq(d, text);
    free(d);
    /* On: control tokens decode to nothing; user-defined ones to their text. */
    d = apr_tok_decode(fx.qwen, on, n, &dl);
    ck_assert_str_eq(d, "user\nhi\n");
    free(d);
    int32_t td[] = {151657, 9707, 151658};
    d = apr_tok_decode(fx.qwen, td, 3, &dl);
    ck_assert_str_eq(d, "<tool_call>Hello</tool_call>");
    free(d);
    free(on);
    free(mid);
    free(off);

    /* Longest match first: "<|im_start|>" wins over any shorter prefix, and
     * a broken marker is plain text. */
    on = encode(fx.qwen, "<|im_start|<|im_end|>", 21, false, true, &n);
    ck_assert_int_eq(on[n - 1], 151645);
    for (size_t i = 0; i + 1 < n; i++) ck_assert_int_lt(on[i], 151643);
    free(on);

    /* SPM: <s> in text is BOS, and the text after it gets its space prefix. */
    on = encode(fx.spm, "<s>Hello", 8, false, true, &n);
    off = encode(fx.spm, "Hello", 5, false, false, &n2);
    ck_assert_int_eq(on[0], 1);
    ck_assert_uint_eq(n, n2 + 1);
    ck_assert_mem_eq(on + 1, off, n2 * sizeof *off);
    free(on);
    free(off);
    on = encode(fx.spm, "<s>Hello", 8, false, false, &n);
    for (size_t i = 0; i < n; i++) ck_assert_int_ne(on[i], 1);
    free(on);

    /* BOS on request. */
    on = encode(fx.stories, "Once upon a time", 16, true, true, &n);
    ck_assert_int_eq(on[0], 1);
    free(on);
    on = encode(fx.qwen, "", 0, true, true, &n);
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(on[0], 151643);
    free(on);
}
END_TEST

START_TEST(test_invalid_utf8)
{
    static const char *bad[] = {"\x80", "abc\xC0\x80", "\xED\xA0\x80", "\xF5\x80\x80\x80", "ok\xE2\x82",
                                "\xFF", "\xF4\x90\x80\x80", "\xE0\x9F\xBF", "a\xC3"};
    const apr_tokenizer *toks[] = {fx.qwen, fx.spm};
    int rejected = 0;
    for (int ti = 0; ti < 2; ti++) {
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            char err[APR_ERRLEN] = "";
            int32_t *ids = (int32_t *)1;
            size_t n = 99;
            int rc = apr_tok_encode(toks[ti], bad[i], strlen(bad[i]), false, true, &ids, &n, err);
            ck_assert_int_eq(rc, -1);
            ck_assert_ptr_null(ids);
            ck_assert_uint_eq(n, 0);
            ck_assert_msg(strstr(err, "invalid UTF-8"), "message: %s", err);
            rejected++;
        }
    }
    printf("invalid UTF-8: %d/%d inputs rejected\n", rejected, rejected);
    /* Embedded NUL is valid UTF-8 and survives. */
    size_t n, dl;
    int32_t *ids = encode(fx.qwen, "a\0b", 3, false, false, &n);
    char *d = apr_tok_decode(fx.qwen, ids, n, &dl);
    ck_assert_uint_eq(dl, 3);
    ck_assert_mem_eq(d, "a\0b", 3);
    free(d);
    free(ids);
}
END_TEST

START_TEST(test_vocab_facts)
{
    ck_assert_int_eq(apr_tok_kind(fx.qwen), APR_TOK_BPE);
    ck_assert_int_eq(apr_tok_n_vocab(fx.qwen), 151936);
    ck_assert_int_eq(apr_tok_eos(fx.qwen), 151645);
    ck_assert(!apr_tok_add_bos(fx.qwen));
    ck_assert(apr_tok_is_eog(fx.qwen, 151645));
    ck_assert(apr_tok_is_eog(fx.qwen, 151643));
    ck_assert(!apr_tok_is_eog(fx.qwen, 151644));
    ck_assert(!apr_tok_is_eog(fx.qwen, 9707));
    ck_assert_int_eq(apr_tok_find(fx.qwen, "<|im_start|>", 12), 151644);
    ck_assert_int_eq(apr_tok_find(fx.qwen, "\xC4\xA0Hello", 7), 21927); /* "ĠHello" */
    ck_assert_int_eq(apr_tok_find(fx.qwen, "no such token at all", 20), -1);
    size_t l;
    ck_assert_ptr_null(apr_tok_text(fx.qwen, 151936, &l));
    ck_assert_ptr_null(apr_tok_text(fx.qwen, -1, &l));
    char buf[16];
    ck_assert_uint_eq(apr_tok_piece(fx.qwen, 21927, buf, sizeof buf), 6);
    ck_assert_mem_eq(buf, " Hello", 6);
    ck_assert_uint_eq(apr_tok_piece(fx.qwen, 151644, buf, sizeof buf), 0);
    ck_assert_uint_eq(apr_tok_piece(fx.qwen, 1 << 30, buf, sizeof buf), 0);

    ck_assert_int_eq(apr_tok_kind(fx.spm), APR_TOK_SPM);
    ck_assert_int_eq(apr_tok_bos(fx.spm), 1);
    ck_assert(apr_tok_add_bos(fx.spm));
    ck_assert(apr_tok_is_eog(fx.spm, 2));
    ck_assert_uint_eq(apr_tok_piece(fx.spm, 3 + 0x41, buf, sizeof buf), 1); /* <0x41> */
    ck_assert_int_eq(buf[0], 'A');
}
END_TEST

START_TEST(test_chat)
{
    ck_assert_int_eq(apr_chat_detect(fx.qf), APR_CHAT_QWEN2);
    ck_assert_int_eq(apr_chat_detect(fx.sf), APR_CHAT_UNKNOWN);
    char path[700];
    size_t len;
    snprintf(path, sizeof path, "%s/tokenizer/qwen2.5-chat-template.jinja", fx.dir);
    char *jinja = read_all(path, &len);
    ck_assert_int_eq(apr_chat_detect_str(jinja, len), APR_CHAT_QWEN2);
    free(jinja);
    const char *chatml = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>'}}";
    ck_assert_int_eq(apr_chat_detect_str(chatml, strlen(chatml)), APR_CHAT_CHATML);
    const char *l2 = "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}";
    ck_assert_int_eq(apr_chat_detect_str(l2, strlen(l2)), APR_CHAT_LLAMA2);
    ck_assert_int_eq(apr_chat_detect_str("{{ messages }}", 14), APR_CHAT_UNKNOWN);

    char err[APR_ERRLEN] = "";
    /* Expected strings written from reading the Jinja text by hand. */
    apr_chat_msg m1[] = {{"user", "hi"}};
    char *s = apr_chat_render(APR_CHAT_QWEN2, m1, 1, true, false, err);
    ck_assert_str_eq(s, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                        "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(s);
    apr_chat_msg m2[] = {{"system", "Be brief."}, {"user", "2+2?"}, {"assistant", "4"}, {"user", "and 3+3?"}};
    s = apr_chat_render(APR_CHAT_QWEN2, m2, 4, true, false, err);
    ck_assert_str_eq(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nand 3+3?<|im_end|>\n"
                        "<|im_start|>assistant\n");
    free(s);
    s = apr_chat_render(APR_CHAT_QWEN2, m2, 2, false, false, err);
    ck_assert_str_eq(s, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n");
    free(s);
    /* A later system message is an ordinary turn; tool results become a user turn. */
    apr_chat_msg m3[] = {{"user", "a"}, {"system", "b"}, {"tool", "r1"}, {"tool", "r2"}};
    s = apr_chat_render(APR_CHAT_QWEN2, m3, 4, false, false, err);
    ck_assert_str_eq(s, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                        "assistant.<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>system\nb<|im_end|>\n"
                        "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n"
                        "</tool_response><|im_end|>\n");
    free(s);
    s = apr_chat_render(APR_CHAT_CHATML, m1, 1, true, false, err);
    ck_assert_str_eq(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(s);
    apr_chat_msg m4[] = {{"system", " Sys "}, {"user", " Q1 "}, {"assistant", " A1 "}, {"user", "Q2"}};
    s = apr_chat_render(APR_CHAT_LLAMA2, m4, 4, true, false, err);
    ck_assert_str_eq(s, "<s>[INST] <<SYS>>\n Sys \n<</SYS>>\n\n Q1 [/INST] A1 </s><s>[INST] Q2 [/INST]");
    free(s);

    ck_assert_ptr_null(apr_chat_render(APR_CHAT_UNKNOWN, m1, 1, true, false, err));
    ck_assert_msg(strstr(err, "template"), "message: %s", err);
    s = apr_chat_render(APR_CHAT_UNKNOWN, m2, 2, true, true, err);
    ck_assert_str_eq(s, "Be brief.\n2+2?\n");
    free(s);
    apr_chat_msg bad[] = {{"wizard", "x"}};
    ck_assert_ptr_null(apr_chat_render(APR_CHAT_QWEN2, bad, 1, true, false, err));
    ck_assert_msg(strstr(err, "wizard"), "message: %s", err);
    apr_chat_msg twice[] = {{"user", "a"}, {"user", "b"}};
    ck_assert_ptr_null(apr_chat_render(APR_CHAT_LLAMA2, twice, 2, true, false, err));

    /* The rendered prompt tokenizes with the special tokens as ids. */
    s = apr_chat_render(APR_CHAT_QWEN2, m1, 1, true, false, err);
    size_t n;
    int32_t *ids = encode(fx.qwen, s, strlen(s), false, true, &n);
    ck_assert_int_eq(ids[0], 151644);
    ck_assert_int_eq(ids[n - 3], 151644);
    ck_assert_int_eq(ids[n - 2], 77091); /* "assistant" */
    ck_assert_int_eq(ids[n - 1], 198);
    free(ids);
    free(s);
}
END_TEST

/* ---- synthetic vocabularies written with the GGUF writer: damaged
 * metadata is refused with a clear message, odd but valid metadata works. */

typedef struct {
    const char *model, *pre;
    const char *const *toks;
    size_t n_toks;
    bool toks_as_ints;
    const float *scores;
    size_t n_scores;
    const int32_t *types;
    size_t n_types;
    const char *const *merges;
    size_t n_merges;
    int64_t bos; /* < -1: not written */
} synth_vocab;

static gguf_str *strs_of(const char *const *v, size_t n)
{
    gguf_str *s = calloc(n ? n : 1, sizeof *s);
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < n; i++) s[i] = (gguf_str){strlen(v[i]), v[i]};
    return s;
}

/* Writes the vocabulary as a tensor-less GGUF, loads it; NULL + err on refusal. */
static apr_tokenizer *synth_load(const synth_vocab *sv, char err[APR_ERRLEN])
{
    char path[] = "/tmp/apr-test-tok-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "llama");
    if (sv->model) gguf_writer_set_str(w, "tokenizer.ggml.model", sv->model);
    if (sv->pre) gguf_writer_set_str(w, "tokenizer.ggml.pre", sv->pre);
    gguf_str *ts = strs_of(sv->toks, sv->n_toks), *ms = strs_of(sv->merges, sv->merges ? sv->n_merges : 0);
    int32_t *ints = calloc(sv->n_toks + 1, sizeof *ints);
    gguf_value v = {.type = GGUF_ARR};
    if (sv->toks_as_ints) {
        v.arr.type = GGUF_I32;
        v.arr.n = sv->n_toks;
        v.arr.data = (const uint8_t *)ints;
    } else {
        v.arr.type = GGUF_STR;
        v.arr.n = sv->n_toks;
        v.arr.strs = ts;
    }
    gguf_writer_set_value(w, "tokenizer.ggml.tokens", &v);
    if (sv->scores) {
        gguf_value sc = {.type = GGUF_ARR, .arr = {.type = GGUF_F32, .n = sv->n_scores, .data = (const uint8_t *)sv->scores}};
        gguf_writer_set_value(w, "tokenizer.ggml.scores", &sc);
    }
    if (sv->types) {
        gguf_value ty = {.type = GGUF_ARR, .arr = {.type = GGUF_I32, .n = sv->n_types, .data = (const uint8_t *)sv->types}};
        gguf_writer_set_value(w, "tokenizer.ggml.token_type", &ty);
    }
    if (sv->merges) {
        gguf_value mv = {.type = GGUF_ARR, .arr = {.type = GGUF_STR, .n = sv->n_merges, .strs = ms}};
        gguf_writer_set_value(w, "tokenizer.ggml.merges", &mv);
    }
    if (sv->bos >= -1) gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)sv->bos);
    ck_assert_msg(gguf_writer_write(w, path, NULL, NULL, err) == 0, "write: %s", err);
    gguf_writer_free(w);
    free(ts);
    free(ms);
    free(ints);
    gguf_file *f = gguf_open(path, err);
    ck_assert_msg(f != NULL, "open: %s", err);
    unlink(path);
    err[0] = 0;
    apr_tokenizer *t = apr_tok_load(f, err);
    gguf_close(f);
    return t;
}

static void refused(const synth_vocab *sv, const char *what)
{
    char err[APR_ERRLEN] = "";
    apr_tokenizer *t = synth_load(sv, err);
    ck_assert_msg(t == NULL, "accepted a vocabulary with %s", what);
    ck_assert_msg(strstr(err, what) != NULL, "message '%s' lacks '%s'", err, what);
    ck_assert_ptr_null(strchr(err, '\n'));
}

START_TEST(test_bad_vocab)
{
    /* The 256 byte-level characters of GPT-2 plus a few merged tokens. */
    static char texts[256][4];
    const char *toks[262];
    int k = 0;
    for (int b = 0; b < 256; b++) {
        bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        uint32_t cp = self ? (uint32_t)b : 256u + (uint32_t)k++;
        char *o = texts[b];
        put_utf8(cp, &o);
        *o = 0;
        toks[b] = texts[b];
    }
    toks[256] = "he";
    toks[257] = "ll";
    toks[258] = "hell";
    toks[259] = "hello";
    toks[260] = "<|end|>";
    toks[261] = "\xC4\xA0w"; /* "Ġw" */
    int32_t types[262];
    for (int i = 0; i < 262; i++) types[i] = 1;
    types[260] = 3;
    const char *merges[] = {"h e", "l l", "he ll", "hell o", "nosuch pair", "nospace", "Ġ w", "x y z"};
    synth_vocab ok = {.model = "gpt2", .pre = "qwen2", .toks = toks, .n_toks = 262, .types = types,
                      .n_types = 262, .merges = merges, .n_merges = 8, .bos = 99999};
    char err[APR_ERRLEN] = "";
    apr_tokenizer *t = synth_load(&ok, err);
    ck_assert_msg(t != NULL, "%s", err);
    ck_assert_int_eq(apr_tok_bos(t), -1); /* out of range: none */
    size_t n;
    int32_t *ids = encode(t, "hello<|end|> world", 18, true, true, &n);
    int32_t want[] = {259, 260, 261, 'o', 'r', 'l', 'd'}; /* a byte's token id is the byte here */
    ck_assert_uint_eq(n, 7);
    ck_assert_mem_eq(ids, want, sizeof want);
    free(ids);
    apr_tok_free(t);

    synth_vocab bad = ok;
    bad.model = NULL;
    refused(&bad, "missing tokenizer.ggml.model");
    bad = ok;
    bad.model = "bert";
    refused(&bad, "not supported");
    bad = ok;
    bad.pre = "gpt-4o";
    refused(&bad, "pre-tokenizer 'gpt-4o' is not supported");
    bad = ok;
    bad.merges = NULL;
    refused(&bad, "without tokenizer.ggml.merges");
    bad = ok;
    bad.toks_as_ints = true;
    refused(&bad, "not an array of strings");
    bad = ok;
    bad.n_types = 261;
    refused(&bad, "token_type has 261 entries for 262 tokens");
    bad = ok;
    bad.n_toks = 200; /* the byte-level alphabet is incomplete */
    bad.n_types = 200;
    refused(&bad, "lacks the token for byte");
    bad = ok;
    bad.n_toks = 0;
    bad.n_types = 0;
    refused(&bad, "vocabulary of 0 tokens");
    float scores[3] = {0, -1, -2};
    const char *stoks[] = {"<unk>", "\xE2\x96\x81" "a", "a"};
    synth_vocab spm = {.model = "llama", .toks = stoks, .n_toks = 3, .scores = scores, .n_scores = 2, .bos = -2};
    refused(&spm, "scores has 2 entries for 3 tokens");

    /* SentencePiece without byte tokens: unknown text becomes <unk>. */
    spm.n_scores = 3;
    t = synth_load(&spm, err);
    ck_assert_msg(t != NULL, "%s", err);
    ids = encode(t, "a b", 3, false, false, &n);
    /* "▁a", then "▁" (3 bytes) and "b" have neither a token nor byte tokens. */
    int32_t want_spm[] = {1, 0, 0, 0, 0};
    ck_assert_uint_eq(n, 5);
    ck_assert_mem_eq(ids, want_spm, sizeof want_spm);
    free(ids);
    apr_tok_free(t);
}
END_TEST

int main(void)
{
    const char *sh = getenv("SHARED");
    snprintf(fx.dir, sizeof fx.dir, "%s", sh && *sh ? sh : "../shared");
    struct stat st;
    bool have = stat(fx.dir, &st) == 0 && S_ISDIR(st.st_mode);
    Suite *su = suite_create("tokenizer");
    TCase *syn = tcase_create("synthetic");
    tcase_add_test(syn, test_bad_vocab);
    suite_add_tcase(su, syn);
    TCase *tc = tcase_create("tokenizer");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_qwen2_cases);
    tcase_add_test(tc, test_llama_spm_cases);
    tcase_add_test(tc, test_golden);
    tcase_add_test(tc, test_vocab_facts);
    tcase_add_test(tc, test_special);
    tcase_add_test(tc, test_chunks);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_bpe_roundtrip);
    tcase_add_test(tc, test_spm_roundtrip);
    tcase_add_test(tc, test_stream_random_ids);
    tcase_add_test(tc, test_chat);
    if (have) suite_add_tcase(su, tc);
    else printf("test_tokenizer: SKIP fixture tests: folder %s is absent (set SHARED)\n", fx.dir);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
