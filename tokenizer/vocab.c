/* Vocabulary from GGUF metadata: token texts in one arena, open-addressing
 * tables for text -> id and merge pair -> rank, special ids and flags.
 * Loading the 151936-token Qwen2 vocabulary must stay well under 0.1 s, so
 * there is no per-token allocation and no string copying beyond the arena. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

/* Sane limits for hostile files: far above any real vocabulary. */
#define MAX_VOCAB (1u << 24)
#define MAX_ARENA (1u << 30)

uint64_t tok_hash(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 29);
}

int32_t tok_lookup_h(const apr_tokenizer *t, const char *s, size_t n, uint64_t h)
{
    uint32_t tag = (uint32_t)(h >> 32), i = (uint32_t)h & t->vocab_mask;
    for (;;) {
        uint64_t v = t->vocab_slots[i];
        if (!v) return -1;
        /* The tag spares the arena (a cache miss) on almost every probe that
         * is not the token. */
        if ((uint32_t)(v >> 32) == tag) {
            uint32_t id = (uint32_t)v - 1;
            if (t->off[id + 1] - t->off[id] == n && !memcmp(t->arena + t->off[id], s, n))
                return (int32_t)id;
        }
        i = (i + 1) & t->vocab_mask;
    }
}

int32_t tok_lookup(const apr_tokenizer *t, const char *s, size_t n)
{
    return tok_lookup_h(t, s, n, tok_hash(s, n));
}

/* A metadata string as one printable line for an error message (at most 40 bytes). */
static const char *show(gguf_str v, char out[48])
{
    size_t n = v.s ? (v.len > 40 ? 40 : (size_t)v.len) : 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v.s[i];
        out[i] = c < 0x20 || c == 0x7f || c == '\'' ? '?' : (char)c;
    }
    out[n] = 0;
    return out;
}

static uint32_t table_size(uint64_t n)
{
    uint32_t cap = 16;
    while (cap < 2 * n) cap *= 2; /* load factor at most 1/2 */
    return cap;
}

/* GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes are moved to U+0100 and up, in byte order. */
static uint32_t byte_to_cp(int b)
{
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (uint32_t)b;
    uint32_t n = 0;
    for (int i = 0; i < b; i++)
        if (!((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF))) n++;
    return 256 + n;
}

static int put_utf8(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

void apr_tok_free(apr_tokenizer *t)
{
    if (!t) return;
    free(t->arena);
    free(t->off);
    free(t->type);
    free(t->scores);
    free(t->vocab_slots);
    free(t->merges);
    free(t->special);
    free(t);
}

/* A numeric array of exactly n elements, or NULL with err set (missing is
 * fine when optional). */
static const gguf_value *num_array(const gguf_file *f, const char *key, uint64_t n, bool optional,
                                   char err[APR_ERRLEN])
{
    const gguf_value *v = gguf_get(f, key);
    if (!v) {
        if (!optional) snprintf(err, APR_ERRLEN, "tokenizer: missing %s", key);
        return NULL;
    }
    if (v->type != GGUF_ARR || v->arr.type == GGUF_STR || v->arr.type == GGUF_ARR) {
        snprintf(err, APR_ERRLEN, "tokenizer: %s is not an array of numbers", key);
        return NULL;
    }
    if (v->arr.n != n) {
        snprintf(err, APR_ERRLEN, "tokenizer: %s has %llu entries for %llu tokens", key,
                 (unsigned long long)v->arr.n, (unsigned long long)n);
        return NULL;
    }
    return v;
}

static int32_t special_id(const gguf_file *f, const char *key, int32_t dflt, int32_t n_vocab)
{
    int64_t v = gguf_get_int(f, key, dflt);
    /* Files use 0xFFFFFFFF (or any out-of-range id) for "none". */
    return v >= 0 && v < n_vocab ? (int32_t)v : -1;
}

static void vocab_insert(apr_tokenizer *t, uint32_t id, uint64_t h)
{
    const char *s = t->arena + t->off[id];
    size_t len = t->off[id + 1] - t->off[id];
    uint32_t i = (uint32_t)h & t->vocab_mask;
    for (;;) {
        uint64_t v = t->vocab_slots[i];
        if (!v) break;
        uint32_t o = (uint32_t)v - 1;
        if ((uint32_t)(v >> 32) == (uint32_t)(h >> 32) && t->off[o + 1] - t->off[o] == len &&
            !memcmp(t->arena + t->off[o], s, len))
            break;
        i = (i + 1) & t->vocab_mask;
    }
    t->vocab_slots[i] = (h >> 32) << 32 | (id + 1);
}

static int cmp_special(const void *a, const void *b, void *arg)
{
    const apr_tokenizer *t = arg;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = t->off[x + 1] - t->off[x], ly = t->off[y + 1] - t->off[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Matched in text: CONTROL and USER_DEFINED tokens with a non-empty, valid
 * UTF-8 text (so cutting text at them never splits a character). */
static bool is_special(const apr_tokenizer *t, int32_t i)
{
    if (t->type[i] != TT_CONTROL && t->type[i] != TT_USER_DEFINED) return false;
    size_t n = t->off[i + 1] - t->off[i];
    return n > 0 && utf8_invalid_at(t->arena + t->off[i], n) == SIZE_MAX;
}

static void add_eog(apr_tokenizer *t, int32_t id)
{
    if (id < 0) return;
    for (size_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return;
    if (t->n_eog < APR_TOK_MAX_EOG) t->eog[t->n_eog++] = id;
}

#define PF 8 /* merges hashed ahead of their lookups */

typedef struct {
    bool ok;
    const char *l, *r;
    size_t ll, rl;
    uint64_t ha, hb, hc;
    char cat[112]; /* the merged text, when short enough to hash ahead */
} merge_pend;

static void merge_prep(const apr_tokenizer *t, gguf_str s, merge_pend *p)
{
    /* Byte-level tokens never hold a raw space, so the first space after
     * the first byte separates the pair (as llama.cpp splits it). */
    const char *sp = s.len > 1 ? memchr(s.s + 1, ' ', s.len - 1) : NULL;
    p->ok = sp != NULL;
    if (!sp) return;
    p->l = s.s;
    p->ll = (size_t)(sp - s.s);
    p->r = sp + 1;
    p->rl = s.len - p->ll - 1;
    p->ha = tok_hash(p->l, p->ll);
    p->hb = tok_hash(p->r, p->rl);
    __builtin_prefetch(&t->vocab_slots[p->ha & t->vocab_mask]);
    __builtin_prefetch(&t->vocab_slots[p->hb & t->vocab_mask]);
    if (p->ll + p->rl <= sizeof p->cat) {
        memcpy(p->cat, p->l, p->ll);
        memcpy(p->cat + p->ll, p->r, p->rl);
        p->hc = tok_hash(p->cat, p->ll + p->rl);
        __builtin_prefetch(&t->vocab_slots[p->hc & t->vocab_mask]);
    }
}

/* Adds a prepared merge of the given rank: (left id, right id) -> merged id,
 * skipped when any of the three texts is not a token. */
static int merge_add(apr_tokenizer *t, const merge_pend *p, uint32_t rank)
{
    int32_t a = tok_lookup_h(t, p->l, p->ll, p->ha), b = tok_lookup_h(t, p->r, p->rl, p->hb);
    if (a < 0 || b < 0) return 0;
    int32_t c;
    if (p->ll + p->rl <= sizeof p->cat) {
        c = tok_lookup_h(t, p->cat, p->ll + p->rl, p->hc);
    } else {
        char *cat = malloc(p->ll + p->rl);
        if (!cat) return -1;
        memcpy(cat, p->l, p->ll);
        memcpy(cat + p->ll, p->r, p->rl);
        c = tok_lookup(t, cat, p->ll + p->rl);
        free(cat);
    }
    if (c < 0) return 0;
    uint64_t k = pair_key(a, b);
    uint32_t i = pair_slot(k, t->merge_mask);
    while (t->merges[i].key != UINT64_MAX && t->merges[i].key != k) i = (i + 1) & t->merge_mask;
    if (t->merges[i].key == k) return 0; /* a repeated pair keeps its first rank */
    t->merges[i] = (struct tok_merge_slot){k, rank, c};
    return 0;
}

static int load_merges(apr_tokenizer *t, const gguf_file *f, char err[APR_ERRLEN])
{
    const gguf_value *m = gguf_get(f, "tokenizer.ggml.merges");
    if (!m) {
        snprintf(err, APR_ERRLEN, "tokenizer: BPE vocabulary without tokenizer.ggml.merges");
        return -1;
    }
    if (m->type != GGUF_ARR || m->arr.type != GGUF_STR || (m->arr.n && !m->arr.strs)) {
        snprintf(err, APR_ERRLEN, "tokenizer: tokenizer.ggml.merges is not an array of strings");
        return -1;
    }
    if (m->arr.n > MAX_VOCAB) {
        snprintf(err, APR_ERRLEN, "tokenizer: %llu merges is too many",
                 (unsigned long long)m->arr.n);
        return -1;
    }
    uint32_t cap = table_size(m->arr.n);
    t->merge_mask = cap - 1;
    t->merges = malloc((size_t)cap * sizeof *t->merges);
    if (!t->merges) goto oom;
    for (uint32_t i = 0; i < cap; i++) t->merges[i].key = UINT64_MAX;

    /* The lookups are cache misses in a table of megabytes: hash merges
     * PF ahead and prefetch their slots, so the misses overlap. */
    merge_pend pend[PF];
    for (uint64_t r = 0; r < m->arr.n + PF; r++) {
        /* Slot r % PF holds merge r - PF until it is done, then merge r. */
        merge_pend *p = &pend[r % PF];
        if (r >= PF && p->ok && merge_add(t, p, (uint32_t)(r - PF)) < 0) goto oom;
        if (r < m->arr.n) merge_prep(t, m->arr.strs[r], p);
    }
    return 0;
oom:
    snprintf(err, APR_ERRLEN, "tokenizer: out of memory for %llu merges",
             (unsigned long long)m->arr.n);
    return -1;
}

apr_tokenizer *apr_tok_load(const gguf_file *f, char err[APR_ERRLEN])
{
    err[0] = 0;
    gguf_str model = gguf_get_str(f, "tokenizer.ggml.model");
    enum apr_tok_kind kind;
    if (gguf_str_eq(model, "gpt2")) {
        kind = APR_TOK_BPE;
    } else if (gguf_str_eq(model, "llama")) {
        kind = APR_TOK_SPM;
    } else if (!model.s) {
        snprintf(err, APR_ERRLEN, "tokenizer: missing tokenizer.ggml.model");
        return NULL;
    } else {
        char shown[48];
        snprintf(err, APR_ERRLEN, "tokenizer: model '%s' is not supported (gpt2 or llama)", show(model, shown));
        return NULL;
    }

    const gguf_value *toks = gguf_get(f, "tokenizer.ggml.tokens");
    if (!toks || toks->type != GGUF_ARR || toks->arr.type != GGUF_STR || (toks->arr.n && !toks->arr.strs)) {
        snprintf(err, APR_ERRLEN, "tokenizer: tokenizer.ggml.tokens missing or not an array of strings");
        return NULL;
    }
    uint64_t n = toks->arr.n;
    if (n == 0 || n > MAX_VOCAB) {
        snprintf(err, APR_ERRLEN, "tokenizer: vocabulary of %llu tokens is out of range",
                 (unsigned long long)n);
        return NULL;
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        total += toks->arr.strs[i].len;
        if (total > MAX_ARENA) {
            snprintf(err, APR_ERRLEN, "tokenizer: token texts exceed %u bytes", MAX_ARENA);
            return NULL;
        }
    }

    /* Metadata arrays are checked before anything is allocated. */
    const gguf_value *scores = num_array(f, "tokenizer.ggml.scores", n, true, err);
    if (!scores && err[0]) return NULL;
    const gguf_value *types = num_array(f, "tokenizer.ggml.token_type", n, true, err);
    if (!types && err[0]) return NULL;

    apr_tokenizer *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->kind = kind;
    t->n_vocab = (int32_t)n;
    t->chunk = 64u << 10;
    t->arena = malloc(total ? total : 1);
    t->off = malloc((n + 1) * sizeof *t->off);
    t->type = malloc(n);
    uint32_t cap = table_size(n);
    t->vocab_mask = cap - 1;
    t->vocab_slots = calloc(cap, sizeof *t->vocab_slots);
    if (!t->arena || !t->off || !t->type || !t->vocab_slots) goto oom;

    uint32_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        gguf_str s = toks->arr.strs[i];
        t->off[i] = pos;
        memcpy(t->arena + pos, s.s, s.len);
        pos += (uint32_t)s.len;
        if (s.len > t->max_piece) t->max_piece = s.len;
    }
    t->off[n] = pos;

    for (uint64_t i = 0; i < n; i++) {
        int64_t ty = types ? gguf_arr_int(types, i) : TT_NORMAL;
        t->type[i] = ty >= TT_NORMAL && ty <= TT_BYTE ? (uint8_t)ty : TT_NORMAL;
    }
    if (scores) {
        t->scores = malloc(n * sizeof *t->scores);
        if (!t->scores) goto oom;
        for (uint64_t i = 0; i < n; i++) t->scores[i] = (float)gguf_arr_float(scores, i);
    } else if (kind == APR_TOK_SPM) {
        t->scores = calloc(n, sizeof *t->scores);
        if (!t->scores) goto oom;
    }

    /* text -> id; a text seen twice maps to its last id, as in llama.cpp.
     * Hashes run PF tokens ahead so the slot misses overlap. */
    uint64_t hs[PF];
    for (uint32_t id = 0; id < n + PF; id++) {
        if (id >= PF) vocab_insert(t, id - PF, hs[id % PF]);
        if (id < n) {
            hs[id % PF] = tok_hash(t->arena + t->off[id], t->off[id + 1] - t->off[id]);
            __builtin_prefetch(&t->vocab_slots[hs[id % PF] & t->vocab_mask], 1);
        }
    }

    memset(t->unbyte, 0xFF, sizeof t->unbyte);
    for (int b = 0; b < 256; b++) {
        char buf[8];
        int len;
        if (kind == APR_TOK_BPE) {
            uint32_t cp = byte_to_cp(b);
            t->unbyte[cp] = (int16_t)b;
            len = put_utf8(cp, buf);
        } else {
            len = snprintf(buf, sizeof buf, "<0x%02X>", b);
        }
        t->byte_tok[b] = tok_lookup(t, buf, (size_t)len);
    }

    bool spm = kind == APR_TOK_SPM;
    t->bos = special_id(f, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, t->n_vocab);
    t->eos = special_id(f, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, t->n_vocab);
    t->unk = special_id(f, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, t->n_vocab);
    t->pad = special_id(f, "tokenizer.ggml.padding_token_id", -1, t->n_vocab);
    t->eot = special_id(f, "tokenizer.ggml.eot_token_id", -1, t->n_vocab);
    t->add_bos = gguf_get_bool(f, "tokenizer.ggml.add_bos_token", spm);
    t->add_eos = gguf_get_bool(f, "tokenizer.ggml.add_eos_token", false);
    t->add_space_prefix = gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", spm);

    /* End of generation: the declared ids plus the chat end markers llama.cpp
     * also stops on, found by their text. */
    add_eog(t, t->eos);
    add_eog(t, t->eot);
    static const char *const eog_texts[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>",
                                            "<end_of_turn>", "<|eom_id|>", "<|end_of_text|>", "<EOT>"};
    for (size_t i = 0; i < sizeof eog_texts / sizeof eog_texts[0]; i++)
        add_eog(t, tok_lookup(t, eog_texts[i], strlen(eog_texts[i])));

    if (kind == APR_TOK_BPE) {
        gguf_str pre = gguf_get_str(f, "tokenizer.ggml.pre");
        if (gguf_str_eq(pre, "qwen2")) {
            t->max_digits = 1;
            t->nfc = true;
        } else if (gguf_str_eq(pre, "llama-bpe") || gguf_str_eq(pre, "llama3")) {
            t->max_digits = 3;
            t->nfc = false;
        } else {
            char shown[48];
            snprintf(err, APR_ERRLEN, "tokenizer: BPE pre-tokenizer '%s' is not supported (qwen2, llama-bpe)",
                     show(pre, shown));
            apr_tok_free(t);
            return NULL;
        }
        for (int b = 0; b < 256; b++) {
            if (t->byte_tok[b] < 0) {
                snprintf(err, APR_ERRLEN, "tokenizer: BPE vocabulary lacks the token for byte 0x%02X", b);
                apr_tok_free(t);
                return NULL;
            }
        }
        if (load_merges(t, f, err) < 0) {
            apr_tok_free(t);
            return NULL;
        }
    }

    size_t ns = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_special(t, i)) ns++;
    t->special = malloc((ns ? ns : 1) * sizeof *t->special);
    if (!t->special) goto oom;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (is_special(t, i)) {
            t->special[t->n_special++] = i;
            uint8_t c = (uint8_t)t->arena[t->off[i]];
            t->special_first[c >> 3] |= (uint8_t)(1u << (c & 7));
        }
    }
    qsort_r(t->special, t->n_special, sizeof *t->special, cmp_special, t);
    return t;

oom:
    apr_tok_free(t);
    snprintf(err, APR_ERRLEN, "tokenizer: out of memory for a vocabulary of %llu tokens",
             (unsigned long long)n);
    return NULL;
}

enum apr_tok_kind apr_tok_kind(const apr_tokenizer *t) { return t->kind; }
int32_t apr_tok_n_vocab(const apr_tokenizer *t) { return t->n_vocab; }
int32_t apr_tok_bos(const apr_tokenizer *t) { return t->bos; }
int32_t apr_tok_eos(const apr_tokenizer *t) { return t->eos; }
bool apr_tok_add_bos(const apr_tokenizer *t) { return t->add_bos; }

bool apr_tok_is_eog(const apr_tokenizer *t, int32_t id)
{
    for (size_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return true;
    return false;
}

const char *apr_tok_text(const apr_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) return NULL;
    if (len) *len = t->off[id + 1] - t->off[id];
    return t->arena + t->off[id];
}

void apr_tok_set_chunk(apr_tokenizer *t, size_t bytes) { t->chunk = bytes; }

int32_t apr_tok_find(const apr_tokenizer *t, const char *text, size_t len)
{
    return tok_lookup(t, text, len);
}
