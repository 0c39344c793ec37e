/* tokenizer/ internals shared by vocab.c, bpe.c, spm.c, encode.c and decode.c.
 * Not part of the interface: other directories include tokenizer/tokenizer.h. */
#ifndef APR_TOK_INTERNAL_H
#define APR_TOK_INTERNAL_H

#include "tokenizer/tokenizer.h"

/* llama.cpp's token types, as tokenizer.ggml.token_type stores them. */
enum {
    TT_UNDEFINED = 0,
    TT_NORMAL = 1,
    TT_UNKNOWN = 2,
    TT_CONTROL = 3,
    TT_USER_DEFINED = 4,
    TT_UNUSED = 5,
    TT_BYTE = 6,
};

#define APR_TOK_MAX_EOG 16

struct apr_tokenizer {
    enum apr_tok_kind kind;
    int32_t n_vocab;

    /* Token texts live in one arena: token i is arena[off[i] .. off[i+1]). */
    char *arena;
    uint32_t *off;
    uint8_t *type;
    float *scores; /* SPM only */

    /* text -> id, open addressing; a slot holds the hash's top 32 bits over
     * id + 1, 0 when empty. */
    uint64_t *vocab_slots;
    uint32_t vocab_mask;

    /* (left id, right id) -> merge rank and merged id (BPE only); one struct
     * per slot so a lookup touches one cache line. */
    struct tok_merge_slot {
        uint64_t key; /* UINT64_MAX when empty */
        uint32_t rank;
        int32_t out;
    } *merges;
    uint32_t merge_mask;

    /* BPE: id of the byte-level character for byte b; SPM: id of <0xNN>.
     * -1 when the vocabulary lacks it. */
    int32_t byte_tok[256];
    /* BPE decoding: byte for a code point below 0x180 of the GPT-2 byte-level
     * alphabet, -1 for code points outside it. */
    int16_t unbyte[0x180];

    /* CONTROL and USER_DEFINED tokens matched in text, longest first. */
    int32_t *special;
    size_t n_special;
    uint8_t special_first[32]; /* bitmap of their first bytes */

    int32_t bos, eos, unk, pad, eot;
    int32_t eog[APR_TOK_MAX_EOG];
    size_t n_eog;
    bool add_bos, add_eos, add_space_prefix;

    /* Pre-tokenizer settings (BPE): how many digits one \p{N}{1,k} takes and
     * whether the text is NFC-normalized first. */
    int max_digits;
    bool nfc;

    size_t max_piece; /* longest apr_tok_piece output */
    size_t chunk;     /* BPE pre-tokenizes long text in chunks of about this size */
};

/* Growable id list of one encode call. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} idvec;

int idvec_push(idvec *iv, int32_t id);

uint64_t tok_hash(const char *s, size_t n);
/* Vocabulary lookup over the arena; -1 when absent. */
int32_t tok_lookup(const apr_tokenizer *t, const char *s, size_t n);
/* The same with h = tok_hash(s, n) already known. */
int32_t tok_lookup_h(const apr_tokenizer *t, const char *s, size_t n, uint64_t h);

static inline uint64_t pair_key(int32_t a, int32_t b)
{
    return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

static inline uint32_t pair_slot(uint64_t k, uint32_t mask)
{
    uint64_t h = k * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 32 ^ h) & mask;
}

/* Rank of the merge (a, b) and the merged id, or UINT32_MAX when the pair
 * never merges. */
static inline uint32_t tok_merge(const apr_tokenizer *t, int32_t a, int32_t b, int32_t *out)
{
    uint64_t k = pair_key(a, b);
    uint32_t i = pair_slot(k, t->merge_mask);
    for (;;) {
        const struct tok_merge_slot *s = &t->merges[i];
        if (s->key == k) {
            *out = s->out;
            return s->rank;
        }
        if (s->key == UINT64_MAX) return UINT32_MAX;
        i = (i + 1) & t->merge_mask;
    }
}

/* Decodes the code point of already validated UTF-8 at s; returns its length. */
int utf8_decode(const uint8_t *s, uint32_t *cp);
/* The character at s (n bytes left): its length when complete and valid, -1
 * when the bytes are a valid but unfinished start of one, 0 when invalid
 * (overlong, surrogate, above U+10FFFF, stray continuation byte). */
int utf8_check(const uint8_t *s, size_t n);
/* Length of the complete valid character at s, else 0. */
int utf8_valid_char(const uint8_t *s, size_t n);
/* Offset of the first invalid byte, SIZE_MAX when all of text is valid. */
size_t utf8_invalid_at(const char *text, size_t len);

/* Tokenize one fragment of plain text (no special tokens in it). */
int bpe_encode(const apr_tokenizer *t, const char *text, size_t len, idvec *out,
               char err[APR_ERRLEN]);
int spm_encode(const apr_tokenizer *t, const char *text, size_t len, bool space_prefix,
               idvec *out, char err[APR_ERRLEN]);

#endif
