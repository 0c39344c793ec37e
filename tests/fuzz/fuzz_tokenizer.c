/* libFuzzer target for the tokenizers: the input bytes are encoded with the
 * Qwen2 byte-level BPE (tiny-qwen2-a.gguf) and the Llama SentencePiece
 * vocabulary (ggml-vocab-llama-spm.gguf), with special-token parsing on and
 * off. Checked: encoding succeeds exactly when the bytes are valid UTF-8
 * (utf8proc is the second opinion); decode(encode(s)) is NFC(s) for BPE and
 * s for SPM (with any U+2581 of s read back as the space it stands for); the streaming detokenizer equals the one-shot decoder; the
 * input read as raw token ids decodes without harm; chat rendering of it.
 * Fixtures: $SHARED (default ../shared), loaded once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tokenizer.h"

/* libFuzzer's interface leaves no other place for state loaded once. */
static gguf_file *files[2];
static apr_tokenizer *toks[2];

static apr_tokenizer *load(const char *dir, const char *name, gguf_file **f)
{
    char path[1024], err[APR_ERRLEN];
    snprintf(path, sizeof path, "%s/models/%s", dir, name);
    *f = gguf_open(path, err);
    apr_tokenizer *t = *f ? apr_tok_load(*f, err) : NULL;
    if (!t) {
        fprintf(stderr, "fuzz_tokenizer: %s: %s (set SHARED to the fixtures folder)\n", path, err);
        exit(1);
    }
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *sh = getenv("SHARED");
    const char *dir = sh && *sh ? sh : "../shared";
    toks[0] = load(dir, "tiny-qwen2-a.gguf", &files[0]);
    toks[1] = load(dir, "ggml-vocab-llama-spm.gguf", &files[1]);
    return 0;
}

static void check_decoders(const apr_tokenizer *t, const int32_t *ids, size_t n, const char *want, size_t wl)
{
    size_t len;
    char *a = apr_tok_decode(t, ids, n, &len);
    if (!a) abort();
    if (utf8proc_decompose((const utf8proc_uint8_t *)a, (utf8proc_ssize_t)len, NULL, 0, 0) < 0)
        __builtin_trap(); /* decoded text is not valid UTF-8 */
    if (want && (len != wl || memcmp(a, want, wl))) __builtin_trap(); /* round trip lost text */

    /* The stream must produce the same bytes, so one-shot length plus one
     * push's worth of room is all it may use. */
    size_t cap = apr_detok_cap(t), o = 0;
    char *b = malloc(len + cap);
    if (!b) abort();
    apr_detok d;
    apr_detok_init(&d, t);
    for (size_t i = 0; i < n; i++) {
        size_t w = apr_detok_push(&d, ids[i], b + o, cap);
        if (o + w > len || memcmp(a + o, b + o, w)) __builtin_trap(); /* stream differs from one-shot */
        o += w;
    }
    o += apr_detok_flush(&d, b + o, cap);
    if (o != len || memcmp(a, b, len)) __builtin_trap();
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    bool valid = size == 0 ||
                 utf8proc_decompose((const utf8proc_uint8_t *)data, (utf8proc_ssize_t)size, NULL, 0, 0) >= 0;
    for (int k = 0; k < 2; k++) {
        const apr_tokenizer *t = toks[k];
        for (int special = 0; special < 2; special++) {
            char err[APR_ERRLEN];
            int32_t *ids;
            size_t n;
            int rc = apr_tok_encode(t, text, size, special, special, &ids, &n, err);
            if ((rc == 0) != valid) __builtin_trap(); /* disagrees with utf8proc on validity */
            if (rc < 0) continue;
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= apr_tok_n_vocab(t)) __builtin_trap();
            if (special) {
                check_decoders(t, ids, n, NULL, 0);
            } else if (k == 0) {
                utf8proc_uint8_t *norm = NULL;
                utf8proc_ssize_t nl = utf8proc_map(data, (utf8proc_ssize_t)size, &norm,
                                                   UTF8PROC_STABLE | UTF8PROC_COMPOSE);
                if (nl < 0) __builtin_trap();
                check_decoders(t, ids, n, (const char *)norm, (size_t)nl);
                free(norm);
            } else {
                char *want = malloc(size + 1);
                if (!want) abort();
                size_t wl = 0;
                for (size_t i = 0; i < size; i++) {
                    if (i + 3 <= size && !memcmp(text + i, "\xE2\x96\x81", 3)) {
                        want[wl++] = ' ';
                        i += 2;
                    } else {
                        want[wl++] = text[i];
                    }
                }
                check_decoders(t, ids, n, want, wl);
                free(want);
            }
            free(ids);
        }
        /* The same bytes as token ids, in range or not. */
        size_t n = size / 4;
        int32_t *raw = malloc((n ? n : 1) * sizeof *raw);
        if (!raw) abort();
        memcpy(raw, data, n * 4);
        for (size_t i = 0; i < n; i++) {
            if (i % 2) raw[i] = (int32_t)((uint32_t)raw[i] % (uint32_t)apr_tok_n_vocab(t));
            char piece[8];
            apr_tok_piece(t, raw[i], piece, sizeof piece);
        }
        check_decoders(t, raw, n, NULL, 0);
        free(raw);
    }
    if (valid && size < 4096) {
        char *content = malloc(size + 1);
        if (!content) abort();
        memcpy(content, data, size);
        content[size] = 0;
        apr_chat_msg m[] = {{"system", content}, {"user", content}, {"assistant", content}};
        char err[APR_ERRLEN];
        for (int tmpl = 0; tmpl <= 3; tmpl++) {
            char *s = apr_chat_render((enum apr_chat_tmpl)tmpl, m, 3, true, true, err);
            if (!s) __builtin_trap(); /* every template takes these roles */
            free(s);
        }
        free(content);
    }
    return 0;
}
