/* Byte-level BPE with the qwen2 (and llama-bpe) pre-tokenizer.
 *
 * The Hugging Face split regex
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,k}
 *   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * is matched by hand over code points classified once with utf8proc: every
 * alternative is a greedy run whose only backtracking is worked out below,
 * so one left-to-right pass finds the same pieces as the regex engine. Each
 * piece is then merged by rank on token ids (bytes mapped to their
 * byte-level tokens first), never on strings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer/tok_internal.h"

enum { C_L = 1, C_N = 2, C_WS = 4, C_NL = 8 };

static uint8_t classify(uint32_t cp)
{
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return C_L;
        if (cp >= '0' && cp <= '9') return C_N;
        if (cp == '\n' || cp == '\r') return C_WS | C_NL;
        if (cp == ' ' || (cp >= '\t' && cp <= '\f')) return C_WS;
        return 0;
    }
    if (cp == 0x85) return C_WS; /* NEL: \s in Oniguruma, not a separator category */
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
        return C_L;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        return C_N;
    case UTF8PROC_CATEGORY_ZS: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP:
        return C_WS;
    default:
        return 0;
    }
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d) at an apostrophe: length in code points or 0.
 * U+017F (long s) case-folds to s, so the regex takes it too. */
static int contraction(const uint32_t *cp, size_t i, size_t n)
{
    if (i + 1 >= n) return 0;
    uint32_t a = cp[i + 1] < 0x80 ? (cp[i + 1] | 0x20) : cp[i + 1];
    if (a == 's' || a == 0x17F || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 >= n) return 0;
    uint32_t b = cp[i + 2] < 0x80 ? (cp[i + 2] | 0x20) : cp[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* End (exclusive) of the pre-token starting at code point i. */
static size_t next_piece(const uint32_t *cp, const uint8_t *cls, size_t i, size_t n, int max_digits)
{
    uint8_t c = cls[i];
    size_t j;
    if (cp[i] == '\'') {
        int l = contraction(cp, i, n);
        if (l) return i + (size_t)l;
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (c & C_L) {
        for (j = i + 1; j < n && (cls[j] & C_L); j++) {}
        return j;
    }
    if (!(c & (C_NL | C_N)) && i + 1 < n && (cls[i + 1] & C_L)) {
        for (j = i + 2; j < n && (cls[j] & C_L); j++) {}
        return j;
    }
    /* \p{N}{1,k} */
    if (c & C_N) {
        for (j = i + 1; j < n && j - i < (size_t)max_digits && (cls[j] & C_N); j++) {}
        return j;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    j = i;
    if (cp[i] == ' ' && i + 1 < n && !(cls[i + 1] & (C_WS | C_L | C_N))) j = i + 1;
    if (!(cls[j] & (C_WS | C_L | C_N))) {
        for (j++; j < n && !(cls[j] & (C_WS | C_L | C_N)); j++) {}
        while (j < n && (cls[j] & C_NL)) j++;
        return j;
    }
    /* Only whitespace is left: let [i, e) be its run. */
    size_t e;
    for (e = i + 1; e < n && (cls[e] & C_WS); e++) {}
    /* \s*[\r\n]+ : the greedy \s* gives back up to the run's last newline. */
    for (j = e; j > i; j--)
        if (cls[j - 1] & C_NL) return j;
    /* \s+(?!\S) : the whole run at the end of text, else all but its last
     * space (which then leads the next word); \s+ when the run is one long. */
    if (e == n || e - i == 1) return e;
    return e - 1;
}

typedef struct {
    uint32_t rank;
    int32_t pos;
    int32_t lid, rid;
} bigram;

static bool bg_less(const bigram *a, const bigram *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(bigram *h, size_t *n, bigram b)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_less(&b, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = b;
}

static bigram heap_pop(bigram *h, size_t *n)
{
    bigram top = h[0], last = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && bg_less(&h[c + 1], &h[c])) c++;
        if (!bg_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = last;
    return top;
}

/* Scratch memory of one encode call, grown to the longest piece. */
typedef struct {
    int32_t *id, *prev, *next;
    uint32_t *rank;
    bigram *heap;
    size_t cap;
} scratch;

static int scratch_fit(scratch *s, size_t n)
{
    if (n <= s->cap) return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    int32_t *id = realloc(s->id, cap * sizeof *id);
    if (id) s->id = id;
    int32_t *prev = realloc(s->prev, cap * sizeof *prev);
    if (prev) s->prev = prev;
    int32_t *next = realloc(s->next, cap * sizeof *next);
    if (next) s->next = next;
    uint32_t *rank = realloc(s->rank, cap * sizeof *rank);
    if (rank) s->rank = rank;
    bigram *heap = realloc(s->heap, 3 * cap * sizeof *heap);
    if (heap) s->heap = heap;
    if (!id || !prev || !next || !rank || !heap) return -1;
    s->cap = cap;
    return 0;
}

static void scratch_free(scratch *s)
{
    free(s->id);
    free(s->prev);
    free(s->next);
    free(s->rank);
    free(s->heap);
}

/* Short pieces (nearly all of them): a flat array with the rank of each
 * adjacent pair cached, lowest rank (leftmost on ties) merged each round. */
static int merge_short(const apr_tokenizer *t, const uint8_t *s, size_t m, scratch *sc, idvec *out)
{
    int32_t *id = sc->id;
    uint32_t *rank = sc->rank;
    int32_t merged;
    for (size_t k = 0; k < m; k++) id[k] = t->byte_tok[s[k]];
    for (size_t k = 0; k + 1 < m; k++) rank[k] = tok_merge(t, id[k], id[k + 1], &merged);
    while (m > 1) {
        size_t best = 0;
        for (size_t k = 1; k + 1 < m; k++)
            if (rank[k] < rank[best]) best = k;
        if (rank[best] == UINT32_MAX) break;
        tok_merge(t, id[best], id[best + 1], &id[best]);
        memmove(id + best + 1, id + best + 2, (m - best - 2) * sizeof *id);
        if (m >= best + 3) memmove(rank + best + 1, rank + best + 2, (m - best - 3) * sizeof *rank);
        m--;
        if (best > 0) rank[best - 1] = tok_merge(t, id[best - 1], id[best], &merged);
        if (best + 1 < m) rank[best] = tok_merge(t, id[best], id[best + 1], &merged);
    }
    for (size_t k = 0; k < m; k++)
        if (idvec_push(out, id[k]) < 0) return -1;
    return 0;
}

/* Long pieces: a linked list of symbols and a heap of candidate pairs; stale
 * entries are recognised by their ids no longer matching. */
static int merge_long(const apr_tokenizer *t, const uint8_t *s, size_t m, scratch *sc, idvec *out)
{
    int32_t *id = sc->id, *prev = sc->prev, *next = sc->next;
    bigram *heap = sc->heap;
    size_t nh = 0;
    int32_t merged;
    for (size_t k = 0; k < m; k++) {
        id[k] = t->byte_tok[s[k]];
        prev[k] = (int32_t)k - 1;
        next[k] = k + 1 < m ? (int32_t)k + 1 : -1;
    }
    for (size_t k = 0; k + 1 < m; k++) {
        uint32_t r = tok_merge(t, id[k], id[k + 1], &merged);
        if (r != UINT32_MAX) heap_push(heap, &nh, (bigram){r, (int32_t)k, id[k], id[k + 1]});
    }
    while (nh) {
        bigram b = heap_pop(heap, &nh);
        int32_t l = b.pos, r = next[l];
        if (id[l] != b.lid || r < 0 || id[r] != b.rid) continue;
        tok_merge(t, id[l], id[r], &id[l]);
        id[r] = -1;
        next[l] = next[r];
        if (next[r] >= 0) prev[next[r]] = l;
        /* At most two new pairs per merge, so 3m entries always suffice. */
        if (prev[l] >= 0) {
            int32_t p = prev[l];
            uint32_t rk = tok_merge(t, id[p], id[l], &merged);
            if (rk != UINT32_MAX) heap_push(heap, &nh, (bigram){rk, p, id[p], id[l]});
        }
        if (next[l] >= 0) {
            int32_t q = next[l];
            uint32_t rk = tok_merge(t, id[l], id[q], &merged);
            if (rk != UINT32_MAX) heap_push(heap, &nh, (bigram){rk, l, id[l], id[q]});
        }
    }
    for (int32_t k = 0; k >= 0; k = next[k])
        if (idvec_push(out, id[k]) < 0) return -1;
    return 0;
}

#define SHORT_PIECE 48

static int encode_chunk(const apr_tokenizer *t, const char *text, size_t len, idvec *out,
                        char err[APR_ERRLEN])
{
    if (len >= UINT32_MAX) { /* offsets below are 32-bit */
        snprintf(err, APR_ERRLEN, "tokenizer: %zu bytes without a line break is too long", len);
        return -1;
    }
    int rc = -1;
    utf8proc_uint8_t *norm = NULL;
    uint32_t *cp = NULL, *off = NULL;
    uint8_t *cls = NULL;
    scratch sc = {0};

    /* NFC only changes text holding a code point at or above U+0300 (lead
     * byte 0xCC or higher), so plain Latin text skips utf8proc_map. */
    if (t->nfc) {
        bool needs = false;
        for (size_t i = 0; i < len && !needs; i++) needs = (uint8_t)text[i] >= 0xCC;
        if (needs) {
            utf8proc_ssize_t nl = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len,
                                               &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (nl < 0) {
                snprintf(err, APR_ERRLEN, "tokenizer: NFC normalization failed: %s", utf8proc_errmsg(nl));
                return -1;
            }
            text = (const char *)norm;
            len = (size_t)nl;
        }
    }
    if (len >= UINT32_MAX) {
        snprintf(err, APR_ERRLEN, "tokenizer: %zu bytes without a line break is too long", len);
        free(norm);
        return -1;
    }

    cp = malloc(len * sizeof *cp);
    off = malloc((len + 1) * sizeof *off);
    cls = malloc(len);
    if (!cp || !off || !cls) goto oom;
    const uint8_t *s = (const uint8_t *)text;
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        off[n] = (uint32_t)i;
        if (s[i] < 0x80) {
            cp[n] = s[i++];
        } else {
            i += (size_t)utf8_decode(s + i, &cp[n]);
        }
        cls[n] = classify(cp[n]);
    }
    off[n] = (uint32_t)len;

    for (size_t i = 0; i < n;) {
        size_t j = next_piece(cp, cls, i, n, t->max_digits);
        const uint8_t *w = s + off[i];
        size_t m = off[j] - off[i];
        if (m == 1) {
            if (idvec_push(out, t->byte_tok[w[0]]) < 0) goto oom;
        } else {
            if (scratch_fit(&sc, m) < 0) goto oom;
            if ((m <= SHORT_PIECE ? merge_short(t, w, m, &sc, out) : merge_long(t, w, m, &sc, out)) < 0)
                goto oom;
        }
        i = j;
    }
    rc = 0;
    goto done;
oom:
    snprintf(err, APR_ERRLEN, "tokenizer: out of memory encoding %zu bytes", len);
done:
    scratch_free(&sc);
    free(cp);
    free(off);
    free(cls);
    free(norm);
    return rc;
}

/* Long texts go through in chunks of about t->chunk bytes (64 KiB), cut where a newline
 * is followed by an ASCII non-space character: no pre-token spans such a
 * point (every alternative either stops at the newline or cannot hold the
 * character after it), and NFC cannot compose across it. This bounds the
 * scratch memory (9 bytes per code point) and keeps it in cache. */
int bpe_encode(const apr_tokenizer *t, const char *text, size_t len, idvec *out, char err[APR_ERRLEN])
{
    while (len > 0) {
        size_t n = len;
        for (size_t i = t->chunk ? t->chunk - 1 : 0; i + 1 < len; i++) {
            uint8_t c = (uint8_t)text[i], d = (uint8_t)text[i + 1];
            if ((c == '\n' || c == '\r') && d > ' ' && d < 0x7F) {
                n = i + 1;
                break;
            }
        }
        if (encode_chunk(t, text, n, out, err) < 0) return -1;
        text += n;
        len -= n;
    }
    return 0;
}
