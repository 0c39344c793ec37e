/* tokenizer/ — vocabulary from GGUF metadata, byte-level BPE (qwen2/gpt2),
 * SentencePiece (llama), special tokens, UTF-8-safe streaming detokenizer and
 * chat templates. */
#ifndef APR_TOKENIZER_H
#define APR_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

typedef struct apr_tokenizer apr_tokenizer;

enum apr_tok_kind { APR_TOK_BPE = 1, APR_TOK_SPM = 2 };

/* Builds the tokenizer from tokenizer.ggml.* metadata (the file may be closed
 * afterwards: everything needed is copied). */
apr_tokenizer *apr_tok_load(const gguf_file *f, char err[APR_ERRLEN]);
void apr_tok_free(apr_tokenizer *t);

enum apr_tok_kind apr_tok_kind(const apr_tokenizer *t);
int32_t apr_tok_n_vocab(const apr_tokenizer *t);
int32_t apr_tok_bos(const apr_tokenizer *t); /* -1 when none */
int32_t apr_tok_eos(const apr_tokenizer *t); /* -1 when none */
bool apr_tok_add_bos(const apr_tokenizer *t); /* tokenizer.ggml.add_bos_token */
/* End of generation: eos, eot, and Qwen's <|im_end|> / <|endoftext|>. */
bool apr_tok_is_eog(const apr_tokenizer *t, int32_t id);
/* Token text as stored in the vocabulary (for --pieces); NULL if out of range. */
const char *apr_tok_text(const apr_tokenizer *t, int32_t id, size_t *len);
/* Look up a token by its exact vocabulary text; -1 when absent. */
int32_t apr_tok_find(const apr_tokenizer *t, const char *text, size_t len);

/* Encode text (must be valid UTF-8, else an error) into ids. *ids is malloc'd
 * and owned by the caller. parse_special: match CONTROL/USER_DEFINED token text. */
int apr_tok_encode(const apr_tokenizer *t, const char *text, size_t len, bool add_bos,
                   bool parse_special, int32_t **ids, size_t *n_ids, char err[APR_ERRLEN]);

/* BPE pre-tokenizes long text in chunks of about this many bytes (default
 * 64 KiB; SIZE_MAX: never), cut only where no pre-token can cross. Results
 * never depend on it: the knob exists so tests can show that. */
void apr_tok_set_chunk(apr_tokenizer *t, size_t bytes);

/* Bytes a token stands for when detokenized (byte-level mapping undone, SPM's
 * U+2581 turned into a space, <0xNN> into the byte); control, unknown and
 * unused tokens give "", user-defined ones their text. Writes at most cap
 * bytes (no NUL) and returns the piece's full length, as snprintf does. */
size_t apr_tok_piece(const apr_tokenizer *t, int32_t id, char *buf, size_t cap);
/* Longest piece of any token. */
size_t apr_tok_max_piece(const apr_tokenizer *t);
/* One-shot decode into a malloc'd NUL-terminated string (*len without the NUL);
 * bytes that do not form valid UTF-8 become U+FFFD, one per byte; SPM drops
 * the leading space of the first non-empty piece. NULL when out of memory. */
char *apr_tok_decode(const apr_tokenizer *t, const int32_t *ids, size_t n, size_t *len);

/* Streaming detokenizer: feeds one id at a time, emits only complete UTF-8
 * characters; the concatenation of all emits plus the final flush equals the
 * one-shot decode. */
typedef struct {
    const apr_tokenizer *t;
    char pending[8];
    size_t n_pending;
    bool first; /* SPM: strip the leading space of the first piece */
} apr_detok;

void apr_detok_init(apr_detok *d, const apr_tokenizer *t);
/* Appends complete characters to out (capacity cap); returns bytes written.
 * cap >= apr_detok_cap(t) always suffices (a smaller cap may lose output). */
size_t apr_detok_push(apr_detok *d, int32_t id, char *out, size_t cap);
/* Emits whatever is left (invalid trailing bytes become U+FFFD). */
size_t apr_detok_flush(apr_detok *d, char *out, size_t cap);
size_t apr_detok_cap(const apr_tokenizer *t);

/* Chat templates. */
typedef struct {
    const char *role; /* system | user | assistant */
    const char *content;
} apr_chat_msg;

/* CHATML: plain <|im_start|>role ... <|im_end|> turns. QWEN2: Qwen2.5's
 * ChatML, which adds its default system prompt when the first message is not
 * a system one. LLAMA2: Meta's [INST] template (emits <s> and </s> as text,
 * so encode it with parse_special and without add_bos). */
enum apr_chat_tmpl {
    APR_CHAT_UNKNOWN = 0,
    APR_CHAT_CHATML = 1,
    APR_CHAT_LLAMA2 = 2,
    APR_CHAT_QWEN2 = 3,
};

/* Recognise tokenizer.chat_template of the model. */
enum apr_chat_tmpl apr_chat_detect(const gguf_file *f);
enum apr_chat_tmpl apr_chat_detect_str(const char *tmpl, size_t len);
const char *apr_chat_name(enum apr_chat_tmpl tmpl);
/* Render messages into a malloc'd prompt. Roles: system, user, assistant
 * (and tool for ChatML); anything else is an error. Unknown template: error
 * unless allow_plain, which concatenates the contents, a newline after each. */
char *apr_chat_render(enum apr_chat_tmpl tmpl, const apr_chat_msg *msgs, size_t n,
                      bool add_generation_prompt, bool allow_plain, char err[APR_ERRLEN]);

#endif
