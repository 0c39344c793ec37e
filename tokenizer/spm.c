/* SentencePiece-style tokenization as llama.cpp does it for
 * tokenizer.ggml.model = llama: spaces become U+2581, then characters are
 * merged pairwise, always the pair whose merged text is the vocabulary token
 * with the best score (leftmost on ties); what never forms a token falls back
 * to <0xNN> byte tokens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

typedef struct {
    uint32_t start, n; /* bytes in the escaped text; n == 0 once merged away */
    int32_t prev, next;
} symbol;

typedef struct {
    float score;
    int32_t left, right;
    uint32_t size;
} bigram;

/* Max-heap on score; the smaller left index wins a tie. */
static bool bg_before(const bigram *a, const bigram *b)
{
    return a->score != b->score ? a->score > b->score : a->left < b->left;
}

typedef struct {
    bigram *v;
    size_t n, cap;
} heap;

static int heap_push(heap *h, bigram b)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 64;
        bigram *v = realloc(h->v, cap * sizeof *v);
        if (!v) return -1;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_before(&b, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return 0;
}

static bigram heap_pop(heap *h)
{
    bigram top = h->v[0], last = h->v[--h->n];
    size_t i = 0, m = h->n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && bg_before(&h->v[c + 1], &h->v[c])) c++;
        if (!bg_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (m) h->v[i] = last;
    return top;
}

/* SentencePiece never produces control, unknown or byte pieces from text. */
static int32_t text_token(const apr_tokenizer *t, const char *s, size_t n)
{
    int32_t id = tok_lookup(t, s, n);
    if (id >= 0 && t->type[id] != TT_NORMAL && t->type[id] != TT_USER_DEFINED) return -1;
    return id;
}

static int try_bigram(const apr_tokenizer *t, const char *buf, const symbol *sym, int32_t l, int32_t r,
                      heap *h)
{
    if (l < 0 || r < 0) return 0;
    uint32_t size = sym[l].n + sym[r].n;
    int32_t id = text_token(t, buf + sym[l].start, size);
    if (id < 0) return 0;
    return heap_push(h, (bigram){t->scores[id], l, r, size});
}

int spm_encode(const apr_tokenizer *t, const char *text, size_t len, bool space_prefix, idvec *out,
               char err[APR_ERRLEN])
{
    static const char sp[3] = {(char)0xE2, (char)0x96, (char)0x81}; /* U+2581 */
    size_t n_space = 0;
    for (size_t i = 0; i < len; i++) n_space += text[i] == ' ';
    size_t blen = len + 2 * n_space + (space_prefix ? 3 : 0);
    if (blen == 0) return 0;
    if (blen > UINT32_MAX) {
        snprintf(err, APR_ERRLEN, "tokenizer: text of %zu bytes is too long", len);
        return -1;
    }
    int rc = -1;
    heap h = {0};
    symbol *sym = NULL;
    char *buf = malloc(blen);
    if (!buf) goto oom;
    size_t b = 0;
    if (space_prefix) {
        memcpy(buf, sp, 3);
        b = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(buf + b, sp, 3);
            b += 3;
        } else {
            buf[b++] = text[i];
        }
    }

    sym = malloc(blen * sizeof *sym);
    if (!sym) goto oom;
    int32_t ns = 0;
    for (size_t i = 0; i < blen;) {
        int l = utf8_valid_char((const uint8_t *)buf + i, blen - i);
        if (l <= 0) l = 1; /* cannot happen on validated text; keeps the loop finite */
        sym[ns] = (symbol){(uint32_t)i, (uint32_t)l, ns - 1, -1};
        if (ns > 0) sym[ns - 1].next = ns;
        ns++;
        i += (size_t)l;
    }
    for (int32_t i = 1; i < ns; i++)
        if (try_bigram(t, buf, sym, i - 1, i, &h) < 0) goto oom;

    while (h.n) {
        bigram g = heap_pop(&h);
        symbol *l = &sym[g.left], *r = &sym[g.right];
        /* Symbols only grow, so a changed size means the pair is stale. */
        if (l->n == 0 || r->n == 0 || l->n + r->n != g.size) continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = g.left;
        if (try_bigram(t, buf, sym, l->prev, g.left, &h) < 0) goto oom;
        if (try_bigram(t, buf, sym, g.left, l->next, &h) < 0) goto oom;
    }

    for (int32_t i = 0; i >= 0; i = sym[i].next) {
        int32_t id = text_token(t, buf + sym[i].start, sym[i].n);
        if (id >= 0) {
            if (idvec_push(out, id) < 0) goto oom;
            continue;
        }
        for (uint32_t k = 0; k < sym[i].n; k++) {
            id = t->byte_tok[(uint8_t)buf[sym[i].start + k]];
            if (id < 0) id = t->unk;
            if (id < 0) {
                snprintf(err, APR_ERRLEN, "tokenizer: no token for byte 0x%02X and no <unk>",
                         (uint8_t)buf[sym[i].start + k]);
                goto done;
            }
            if (idvec_push(out, id) < 0) goto oom;
        }
    }
    rc = 0;
    goto done;
oom:
    snprintf(err, APR_ERRLEN, "tokenizer: out of memory encoding %zu bytes", len);
done:
    free(h.v);
    free(sym);
    free(buf);
    return rc;
}
