/* Token pieces, one-shot decoding and the streaming detokenizer.
 *
 * Both decoders turn bytes that are not valid UTF-8 into U+FFFD by the same
 * rule, one replacement per byte that does not start a complete character,
 * so a stream of pushes and a final flush always equals the one-shot result.
 * SentencePiece text loses the single leading space its tokenizer added: the
 * first non-empty piece drops one leading space. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Writes the piece into out when it fits; returns its full length. */
size_t apr_tok_piece(const apr_tokenizer *t, int32_t id, char *out, size_t cap)
{
    if (id < 0 || id >= t->n_vocab) return 0;
    const char *s = t->arena + t->off[id];
    size_t n = t->off[id + 1] - t->off[id], w = 0;
    uint8_t ty = t->type[id];
#define PUT(c) do { if (w < cap) out[w] = (char)(c); w++; } while (0)
    switch (ty) {
    case TT_CONTROL: case TT_UNKNOWN: case TT_UNUSED:
        return 0;
    case TT_BYTE:
        if (t->kind == APR_TOK_SPM && n == 6 && !memcmp(s, "<0x", 3) && s[5] == '>' &&
            hex_digit(s[3]) >= 0 && hex_digit(s[4]) >= 0) {
            PUT(hex_digit(s[3]) << 4 | hex_digit(s[4]));
            return w;
        }
        break;
    case TT_NORMAL:
        if (t->kind == APR_TOK_BPE) {
            /* Undo the byte-level mapping; anything outside it (only in a
             * damaged vocabulary) is passed through unchanged. */
            for (size_t i = 0; i < n;) {
                const uint8_t *p = (const uint8_t *)s + i;
                int l = utf8_valid_char(p, n - i);
                uint32_t cp = 0;
                if (l > 0) utf8_decode(p, &cp);
                if (l > 0 && cp < 0x180 && t->unbyte[cp] >= 0) {
                    PUT(t->unbyte[cp]);
                } else {
                    if (l <= 0) l = 1;
                    for (int k = 0; k < l; k++) PUT(p[k]);
                }
                i += (size_t)l;
            }
            return w;
        }
        for (size_t i = 0; i < n; i++) {
            if (i + 3 <= n && !memcmp(s + i, "\xE2\x96\x81", 3)) {
                PUT(' ');
                i += 2;
            } else {
                PUT(s[i]);
            }
        }
        return w;
    default:
        break;
    }
    for (size_t i = 0; i < n; i++) PUT(s[i]);
#undef PUT
    return w;
}

size_t apr_tok_max_piece(const apr_tokenizer *t) { return t->max_piece; }

size_t apr_detok_cap(const apr_tokenizer *t) { return 3 * (t->max_piece + 4) + 16; }

char *apr_tok_decode(const apr_tokenizer *t, const int32_t *ids, size_t n, size_t *len)
{
    /* Gather the raw bytes first, then replace invalid sequences in one pass. */
    size_t cap = 256, raw_n = 0;
    char *raw = malloc(cap);
    if (!raw) return NULL;
    bool strip = t->kind == APR_TOK_SPM && t->add_space_prefix;
    for (size_t i = 0; i < n; i++) {
        size_t pl = apr_tok_piece(t, ids[i], NULL, 0);
        if (raw_n + pl > cap) {
            while (raw_n + pl > cap) cap *= 2;
            char *r = realloc(raw, cap);
            if (!r) {
                free(raw);
                return NULL;
            }
            raw = r;
        }
        apr_tok_piece(t, ids[i], raw + raw_n, pl);
        if (strip && pl) {
            strip = false;
            if (raw[raw_n] == ' ') {
                memmove(raw + raw_n, raw + raw_n + 1, pl - 1);
                pl--;
            }
        }
        raw_n += pl;
    }
    /* Each byte becomes at most three (U+FFFD). */
    char *out = malloc(3 * raw_n + 1);
    if (!out) {
        free(raw);
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < raw_n;) {
        int l = utf8_valid_char((const uint8_t *)raw + i, raw_n - i);
        if (l > 0) {
            memcpy(out + o, raw + i, (size_t)l);
            o += (size_t)l;
            i += (size_t)l;
        } else {
            memcpy(out + o, replacement, 3);
            o += 3;
            i++;
        }
    }
    free(raw);
    out[o] = 0;
    if (len) *len = o;
    return out;
}

void apr_detok_init(apr_detok *d, const apr_tokenizer *t)
{
    memset(d, 0, sizeof *d);
    d->t = t;
    d->first = true;
}

/* Copies what fits; the documented capacity makes truncation impossible. */
static void emit(char *out, size_t cap, size_t *w, const char *s, size_t n)
{
    size_t k = *w < cap ? cap - *w : 0;
    memcpy(out + *w, s, n < k ? n : k);
    *w += n < k ? n : k;
}

size_t apr_detok_push(apr_detok *d, int32_t id, char *out, size_t cap)
{
    const apr_tokenizer *t = d->t;
    char small[512];
    size_t pl = apr_tok_piece(t, id, NULL, 0);
    size_t need = d->n_pending + pl;
    char *buf = need <= sizeof small ? small : malloc(need);
    if (!buf) return 0;
    memcpy(buf, d->pending, d->n_pending);
    char *piece = buf + d->n_pending;
    apr_tok_piece(t, id, piece, pl);
    if (t->kind == APR_TOK_SPM && t->add_space_prefix && d->first && pl) {
        d->first = false;
        if (piece[0] == ' ') {
            memmove(piece, piece + 1, pl - 1);
            need--;
        }
    }
    size_t w = 0, i = 0;
    d->n_pending = 0;
    while (i < need) {
        int r = utf8_check((const uint8_t *)buf + i, need - i);
        if (r > 0) {
            emit(out, cap, &w, buf + i, (size_t)r);
            i += (size_t)r;
        } else if (r < 0) {
            /* The start of a character whose rest comes with a later piece. */
            memcpy(d->pending, buf + i, need - i);
            d->n_pending = need - i;
            break;
        } else {
            emit(out, cap, &w, replacement, 3);
            i++;
        }
    }
    if (buf != small) free(buf);
    return w;
}

size_t apr_detok_flush(apr_detok *d, char *out, size_t cap)
{
    size_t w = 0;
    /* A held start of a character never got its end: every byte of it is
     * invalid now (the first is a lead byte, the rest continuation bytes). */
    for (size_t i = 0; i < d->n_pending; i++) emit(out, cap, &w, replacement, 3);
    d->n_pending = 0;
    return w;
}
