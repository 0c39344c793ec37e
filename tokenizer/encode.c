/* apr_tok_encode: validate, cut the text at special-token texts, tokenize the
 * plain fragments in between with BPE or SentencePiece. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

int idvec_push(idvec *iv, int32_t id)
{
    if (iv->n == iv->cap) {
        size_t cap = iv->cap ? 2 * iv->cap : 64;
        int32_t *v = realloc(iv->v, cap * sizeof *v);
        if (!v) return -1;
        iv->v = v;
        iv->cap = cap;
    }
    iv->v[iv->n++] = id;
    return 0;
}

/* The special token whose text starts at s (longest first), or -1. */
static int32_t match_special(const apr_tokenizer *t, const char *s, size_t left)
{
    uint8_t c = (uint8_t)s[0];
    if (!(t->special_first[c >> 3] & (1u << (c & 7)))) return -1;
    for (size_t k = 0; k < t->n_special; k++) {
        int32_t id = t->special[k];
        size_t n = t->off[id + 1] - t->off[id];
        if (n <= left && !memcmp(s, t->arena + t->off[id], n)) return id;
    }
    return -1;
}

static int encode_fragment(const apr_tokenizer *t, const char *s, size_t n, idvec *out,
                           char err[APR_ERRLEN])
{
    if (t->kind == APR_TOK_BPE) return bpe_encode(t, s, n, out, err);
    /* Every fragment starts the text or follows a special token, and
     * SentencePiece gives each its leading space, as llama.cpp does. */
    return spm_encode(t, s, n, t->add_space_prefix, out, err);
}

int apr_tok_encode(const apr_tokenizer *t, const char *text, size_t len, bool add_bos,
                   bool parse_special, int32_t **ids, size_t *n_ids, char err[APR_ERRLEN])
{
    *ids = NULL;
    *n_ids = 0;
    if (!text && len) {
        snprintf(err, APR_ERRLEN, "tokenizer: no text");
        return -1;
    }
    size_t bad = utf8_invalid_at(text, len);
    if (bad != SIZE_MAX) {
        snprintf(err, APR_ERRLEN, "tokenizer: invalid UTF-8 at byte %zu", bad);
        return -1;
    }
    idvec out = {0};
    if (add_bos && t->bos >= 0 && idvec_push(&out, t->bos) < 0) goto oom;

    size_t start = 0;
    if (parse_special && t->n_special) {
        for (size_t i = 0; i < len;) {
            /* Only at character starts: a fragment must stay valid UTF-8. */
            int32_t id = ((uint8_t)text[i] & 0xC0) == 0x80 ? -1 : match_special(t, text + i, len - i);
            if (id < 0) {
                i++;
                continue;
            }
            if (i > start) {
                if (encode_fragment(t, text + start, i - start, &out, err) < 0) goto fail;
            }
            if (idvec_push(&out, id) < 0) goto oom;
            i += t->off[id + 1] - t->off[id];
            start = i;
        }
    }
    if (len > start && encode_fragment(t, text + start, len - start, &out, err) < 0)
        goto fail;
    if (!out.v && idvec_push(&out, 0) == 0) out.n = 0; /* a valid pointer even for no ids */
    if (!out.v) goto oom;
    *ids = out.v;
    *n_ids = out.n;
    return 0;
oom:
    snprintf(err, APR_ERRLEN, "tokenizer: out of memory encoding %zu bytes", len);
fail:
    free(out.v);
    return -1;
}
