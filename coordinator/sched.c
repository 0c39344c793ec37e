/* The scheduler: requests become sequences, sequences become steps, step
 * results become tokens on the client's stream.
 *
 * Continuous batching: between two steps, queued requests take free KV slots
 * and every running sequence contributes what it needs next — one token when
 * decoding, a chunk of its prompt (or, after a worker restart, of its whole
 * history) when prefilling. Decode entries go first and prefill takes what is
 * left of the step's token budget, so a long prompt never stalls the streams
 * already running. Each sequence samples with its own seeded sampler, and the
 * CPU backend's arithmetic per entry does not depend on the rest of the batch,
 * so a greedy output is the same whatever else is running.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "coordinator/coord.h"

static void admit(coord *c, const int *idx, int n);

/* ------------------------------------------------------------ replies */

static void reply_error(coord *c, const unsigned char *ident, size_t ident_len, const apr_id *id,
                        apr_perr code, const char *msg)
{
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    if (apr_reply_error(&b, id, code, msg) == 0) coord_send_client(c, ident, ident_len, &b);
    msgpack_sbuffer_destroy(&b);
}

static void seq_release(coord *c, seq *s)
{
    (void)c;
    free(s->tokens);
    free(s->text);
    for (size_t i = 0; i < s->n_stop; i++) free(s->stop[i]);
    free(s->stop);
    memset(s, 0, sizeof *s);
    s->state = SEQ_FREE;
    s->slot = -1;
}

/* A slot's KV is wiped (trim from 0) before the slot is given out again: see
 * sched_tick. A sequence that is in the step in flight stays a zombie until
 * the step's result is in. */
static void seq_finish(coord *c, seq *s, apr_finish fin)
{
    apr_usage u = {(uint32_t)s->n_prompt, s->n_generated};
    apr_timings t = {0, 0, 0};
    double now = coord_now();
    if (s->t_first > 0) {
        t.ttft_ms = (s->t_first - s->t_arrive) * 1000.0;
        if (s->t_first > s->t_admit) t.prefill_tok_s = (double)s->n_prompt / (s->t_first - s->t_admit);
        if (s->n_generated > 1 && s->t_last > s->t_first)
            t.decode_tok_s = (double)(s->n_generated - 1) / (s->t_last - s->t_first);
    }
    (void)now;
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    int rc = apr_reply_done(&b, &s->id, fin, &u, &t, s->stream ? NULL : (s->text ? s->text : ""),
                            s->stream ? 0 : s->emitted);
    if (rc == 0) coord_send_client(c, s->ident, s->ident_len, &b);
    msgpack_sbuffer_destroy(&b);
    if (s->state == SEQ_RUNNING && s->n_step > 0) s->state = SEQ_ZOMBIE;
    else seq_release(c, s);
}

static int text_append(seq *s, const char *p, size_t n)
{
    if (s->text_len + n + 1 > s->text_cap) {
        size_t cap = s->text_cap ? s->text_cap : 256;
        while (cap < s->text_len + n + 1) cap *= 2;
        char *t = realloc(s->text, cap);
        if (!t) return -1;
        s->text = t;
        s->text_cap = cap;
    }
    memcpy(s->text + s->text_len, p, n);
    s->text_len += n;
    s->text[s->text_len] = 0;
    return 0;
}

static int tokens_push(seq *s, int32_t t)
{
    if (s->n_tokens == s->cap_tokens) {
        size_t cap = s->cap_tokens ? s->cap_tokens * 2 : 64;
        int32_t *p = realloc(s->tokens, cap * sizeof *p);
        if (!p) return -1;
        s->tokens = p;
        s->cap_tokens = cap;
    }
    s->tokens[s->n_tokens++] = t;
    return 0;
}

/* Sends the completion text released so far as the event of token `tok`. */
static void emit_token(coord *c, seq *s, int32_t tok, size_t upto)
{
    size_t from = s->emitted;
    s->emitted = upto;
    if (!s->stream) return;
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    if (apr_reply_token(&b, &s->id, s->text + from, upto - from, tok, s->n_generated - 1) == 0)
        coord_send_client(c, s->ident, s->ident_len, &b);
    msgpack_sbuffer_destroy(&b);
}

/* One sampled token: append, detokenize, stop strings, limits. */
static void seq_accept(coord *c, seq *s, int32_t tok)
{
    double now = coord_now();
    if (s->t_first == 0) s->t_first = now;
    s->t_last = now;
    bool eog = apr_tok_is_eog(c->tok, tok);
    if (tokens_push(s, tok) < 0) {
        seq_finish(c, s, APR_FINISH_ERROR);
        return;
    }
    s->n_generated += eog ? 0 : 1;
    size_t cap = apr_detok_cap(c->tok);
    char *piece = malloc(cap + 8);
    if (!piece) {
        seq_finish(c, s, APR_FINISH_ERROR);
        return;
    }
    size_t n = eog ? 0 : apr_detok_push(&s->detok, tok, piece, cap);
    bool full = s->max_tokens && s->n_generated >= s->max_tokens;
    bool ctx_full = s->n_tokens >= (size_t)c->n_ctx;
    bool last = eog || full || ctx_full;
    if (last) n += apr_detok_flush(&s->detok, piece + n, cap + 8 - n);
    int rc = text_append(s, piece, n);
    free(piece);
    if (rc < 0) {
        seq_finish(c, s, APR_FINISH_ERROR);
        return;
    }
    bool matched = false;
    size_t ok = apr_stop_check(s->text, s->text_len, s->emitted, (const char *const *)s->stop,
                               s->n_stop, &matched);
    if (matched) {
        s->text_len = ok; /* the stop string and anything after it are never sent */
        s->text[ok] = 0;
        if (ok > s->emitted || !eog) emit_token(c, s, tok, ok);
        seq_finish(c, s, APR_FINISH_STOP);
        return;
    }
    if (last) ok = s->text_len; /* nothing can grow into a stop any more */
    /* the end-of-generation token is not part of the completion: it gets an
     * event only to carry text that was held back until now */
    if (!eog || ok > s->emitted) emit_token(c, s, tok, ok);
    if (eog) seq_finish(c, s, APR_FINISH_STOP);
    else if (last) seq_finish(c, s, APR_FINISH_LENGTH);
}

/* ----------------------------------------------------------- requests */

static seq *seq_alloc(coord *c)
{
    for (int i = 0; i < c->n_seqs; i++)
        if (c->seqs[i].state == SEQ_FREE) return &c->seqs[i];
    return NULL;
}

static void build_sampler(apr_sampler *smp, const apr_sampling *p)
{
    apr_sampler_params sp;
    apr_sampler_params_default(&sp);
    sp.temperature = p->temperature;
    sp.top_k = p->top_k;
    sp.top_p = p->top_p;
    sp.min_p = p->min_p;
    sp.repeat_penalty = p->repeat_penalty;
    sp.repeat_last_n = p->repeat_last_n;
    sp.presence_penalty = p->presence_penalty;
    sp.frequency_penalty = p->frequency_penalty;
    if (p->has_seed) sp.seed = p->seed;
    else if (getrandom(&sp.seed, sizeof sp.seed, 0) != sizeof sp.seed) sp.seed = (uint64_t)(coord_now() * 1e9);
    apr_sampler_init(smp, &sp);
}

/* The prompt of a generate or chat request as token ids (malloc'd). */
static int request_tokens(coord *c, const apr_request *r, int32_t **ids, size_t *n, apr_perr *code,
                          char msg[APR_ERRLEN])
{
    *code = APR_PERR_INVALID_PARAM;
    if (r->op == APR_OP_GENERATE && r->prompt_tokens) {
        for (size_t i = 0; i < r->n_prompt_tokens; i++)
            if (r->prompt_tokens[i] >= c->n_vocab) {
                snprintf(msg, APR_ERRLEN, "prompt_tokens[%zu]: id %d is outside the vocabulary (%d)", i,
                         r->prompt_tokens[i], c->n_vocab);
                return -1;
            }
        *ids = malloc(r->n_prompt_tokens * sizeof **ids);
        if (!*ids) goto oom;
        memcpy(*ids, r->prompt_tokens, r->n_prompt_tokens * sizeof **ids);
        *n = r->n_prompt_tokens;
        return 0;
    }
    const char *text = r->prompt;
    size_t len = r->prompt_len;
    char *rendered = NULL;
    bool add_bos = r->add_special && apr_tok_add_bos(c->tok);
    bool special = r->parse_special;
    if (r->op == APR_OP_CHAT) {
        if (c->chat == APR_CHAT_UNKNOWN) {
            snprintf(msg, APR_ERRLEN, "messages: the model's chat template is not supported; use generate");
            return -1;
        }
        apr_chat_msg *m = calloc(r->n_messages ? r->n_messages : 1, sizeof *m);
        if (!m) goto oom;
        for (size_t i = 0; i < r->n_messages; i++) {
            if (memchr(r->messages[i].content, 0, r->messages[i].content_len)) {
                snprintf(msg, APR_ERRLEN, "messages[%zu].content: contains a NUL byte", i);
                free(m);
                return -1;
            }
            m[i].role = r->messages[i].role;
            m[i].content = r->messages[i].content;
        }
        rendered = apr_chat_render(c->chat, m, r->n_messages, true, false, msg);
        free(m);
        if (!rendered) return -1;
        text = rendered;
        len = strlen(rendered);
        add_bos = apr_tok_add_bos(c->tok);
        special = true;
    }
    int rc = apr_tok_encode(c->tok, text, len, add_bos, special, ids, n, msg);
    free(rendered);
    if (rc < 0) return -1;
    if (*n == 0) {
        free(*ids);
        *ids = NULL;
        snprintf(msg, APR_ERRLEN, "prompt: empty after tokenization (nothing to continue from)");
        return -1;
    }
    return 0;
oom:
    *code = APR_PERR_INTERNAL;
    snprintf(msg, APR_ERRLEN, "out of memory");
    return -1;
}

static void on_generate(coord *c, const unsigned char *ident, size_t ident_len, apr_request *r)
{
    uint32_t running, queued;
    sched_counts(c, &running, &queued);
    if (queued >= (uint32_t)c->o.queue_limit || !seq_alloc(c)) {
        char msg[96];
        snprintf(msg, sizeof msg, "the queue is full (%d waiting); try again later", c->o.queue_limit);
        reply_error(c, ident, ident_len, &r->id, APR_PERR_BUSY, msg);
        return;
    }
    bool hope = false; /* some worker served once, or is still on its first start */
    for (int i = 0; i < c->n_workers; i++) hope |= c->workers[i].ever_ready || c->workers[i].failures == 0;
    if (!hope) {
        char msg[APR_ERRLEN + 64];
        snprintf(msg, sizeof msg, "no worker can serve: %s", c->workers[0].last_error);
        reply_error(c, ident, ident_len, &r->id, APR_PERR_UNAVAILABLE, msg);
        return;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    apr_perr code;
    char msg[APR_ERRLEN];
    if (request_tokens(c, r, &ids, &n, &code, msg) < 0) {
        reply_error(c, ident, ident_len, &r->id, code, msg);
        return;
    }
    if (n + 1 > (size_t)c->n_ctx) {
        snprintf(msg, sizeof msg, "the prompt is %zu tokens; the context holds %d (prompt + at least one token)",
                 n, c->n_ctx);
        reply_error(c, ident, ident_len, &r->id, APR_PERR_CONTEXT_LENGTH, msg);
        free(ids);
        return;
    }
    seq *s = seq_alloc(c);
    memset(s, 0, sizeof *s);
    s->state = SEQ_QUEUED;
    memcpy(s->ident, ident, ident_len);
    s->ident_len = ident_len;
    s->id = r->id;
    s->order = c->next_order++;
    s->slot = -1;
    s->tokens = ids;
    s->n_tokens = s->cap_tokens = s->n_prompt = n;
    s->max_tokens = r->max_tokens;
    s->stream = r->stream;
    s->stop = r->stop; /* taken over from the request */
    s->n_stop = r->n_stop;
    r->stop = NULL;
    r->n_stop = 0;
    build_sampler(&s->sampler, &r->sampling);
    apr_detok_init(&s->detok, c->tok);
    s->detok.first = false; /* a continuation keeps its leading space */
    s->t_arrive = coord_now();
    /* a free slot is taken at once, so the queue limit counts only requests
     * that really wait */
    int me = (int)(s - c->seqs);
    if (queued == 0) admit(c, &me, 1);
}

static void on_tokenize(coord *c, const unsigned char *ident, size_t ident_len, const apr_request *r)
{
    int32_t *ids = NULL;
    size_t n = 0;
    char msg[APR_ERRLEN];
    bool bos = r->add_special && apr_tok_add_bos(c->tok);
    if (apr_tok_encode(c->tok, r->text, r->text_len, bos, r->parse_special, &ids, &n, msg) < 0) {
        reply_error(c, ident, ident_len, &r->id, APR_PERR_INVALID_PARAM, msg);
        return;
    }
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    if (apr_reply_tokens(&b, &r->id, ids, n) == 0) coord_send_client(c, ident, ident_len, &b);
    msgpack_sbuffer_destroy(&b);
    free(ids);
}

static void on_detokenize(coord *c, const unsigned char *ident, size_t ident_len, const apr_request *r)
{
    for (size_t i = 0; i < r->n_tokens; i++)
        if (r->tokens[i] >= c->n_vocab) {
            char msg[96];
            snprintf(msg, sizeof msg, "tokens[%zu]: id %d is outside the vocabulary (%d)", i, r->tokens[i],
                     c->n_vocab);
            reply_error(c, ident, ident_len, &r->id, APR_PERR_INVALID_PARAM, msg);
            return;
        }
    size_t len = 0;
    char *text = apr_tok_decode(c->tok, r->tokens, r->n_tokens, &len);
    if (!text) {
        reply_error(c, ident, ident_len, &r->id, APR_PERR_INTERNAL, "out of memory");
        return;
    }
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    if (apr_reply_text(&b, &r->id, text, len) == 0) coord_send_client(c, ident, ident_len, &b);
    msgpack_sbuffer_destroy(&b);
    free(text);
}

static void on_status(coord *c, const unsigned char *ident, size_t ident_len, const apr_request *r)
{
    apr_status st;
    memset(&st, 0, sizeof st);
    apr_worker_status ws[COORD_MAX_WORKERS];
    snprintf(st.model, sizeof st.model, "%s", c->model_name);
    st.n_ctx = (uint32_t)c->n_ctx;
    st.n_vocab = (uint32_t)c->n_vocab;
    sched_counts(c, &st.running, &st.queued);
    st.queue_limit = (uint32_t)c->o.queue_limit;
    st.restarts = c->restarts;
    st.uptime_s = coord_now() - c->t_start;
    for (int i = 0; i < c->n_workers; i++) {
        const worker *w = &c->workers[i];
        memset(&ws[i], 0, sizeof ws[i]);
        snprintf(ws[i].name, sizeof ws[i].name, "%s", w->name);
        snprintf(ws[i].backend, sizeof ws[i].backend, "%s", w->backend);
        const char *state = w->state == W_READY ? "ready"
                            : w->state == W_STARTING ? (w->starts > 1 ? "restarting" : "starting")
                                                     : (w->starts > 0 ? "restarting" : "dead");
        snprintf(ws[i].state, sizeof ws[i].state, "%s", state);
        ws[i].pid = w->pid;
        ws[i].restarts = w->restarts;
        ws[i].sequences = i == c->active ? st.running : 0;
    }
    st.workers = ws;
    st.n_workers = (size_t)c->n_workers;
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    if (apr_reply_status(&b, &r->id, &st) == 0) coord_send_client(c, ident, ident_len, &b);
    msgpack_sbuffer_destroy(&b);
}

static void on_cancel(coord *c, const unsigned char *ident, size_t ident_len, const apr_request *r)
{
    seq *found = NULL;
    for (int i = 0; i < c->n_seqs && !found; i++) {
        seq *s = &c->seqs[i];
        if ((s->state == SEQ_QUEUED || s->state == SEQ_RUNNING) && s->ident_len == ident_len &&
            !memcmp(s->ident, ident, ident_len) && apr_id_equal(&s->id, &r->id))
            found = s;
    }
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    if (apr_reply_cancel(&b, &r->id, found != NULL) == 0) coord_send_client(c, ident, ident_len, &b);
    msgpack_sbuffer_destroy(&b);
    if (found) seq_finish(c, found, APR_FINISH_CANCELLED);
}

void sched_on_request(coord *c, const unsigned char *ident, size_t ident_len, apr_request *r)
{
    switch (r->op) {
    case APR_OP_GENERATE:
    case APR_OP_CHAT:
        on_generate(c, ident, ident_len, r);
        break;
    case APR_OP_TOKENIZE:
        on_tokenize(c, ident, ident_len, r);
        break;
    case APR_OP_DETOKENIZE:
        on_detokenize(c, ident, ident_len, r);
        break;
    case APR_OP_STATUS:
        on_status(c, ident, ident_len, r);
        break;
    case APR_OP_CANCEL:
        on_cancel(c, ident, ident_len, r);
        break;
    default:
        reply_error(c, ident, ident_len, &r->id, APR_PERR_UNKNOWN_OP, "unknown op");
        break;
    }
}

void sched_client_gone(coord *c, const unsigned char *ident, size_t ident_len)
{
    for (int i = 0; i < c->n_seqs; i++) {
        seq *s = &c->seqs[i];
        if ((s->state == SEQ_QUEUED || s->state == SEQ_RUNNING) && s->ident_len == ident_len &&
            !memcmp(s->ident, ident, ident_len)) {
            s->stream = true; /* nobody to send the text to */
            s->ident_len = 0; /* and nothing more is sent */
            seq_finish(c, s, APR_FINISH_CANCELLED);
        }
    }
}

void sched_fail_all(coord *c, apr_perr code, const char *msg)
{
    for (int i = 0; i < c->n_seqs; i++) {
        seq *s = &c->seqs[i];
        if (s->state == SEQ_QUEUED || s->state == SEQ_RUNNING) {
            reply_error(c, s->ident, s->ident_len, &s->id, code, msg);
            seq_release(c, s);
        } else if (s->state == SEQ_ZOMBIE) {
            seq_release(c, s);
        }
    }
}

void sched_counts(const coord *c, uint32_t *running, uint32_t *queued)
{
    *running = *queued = 0;
    for (int i = 0; i < c->n_seqs; i++) {
        if (c->seqs[i].state == SEQ_RUNNING) ++*running;
        if (c->seqs[i].state == SEQ_QUEUED) ++*queued;
    }
}

/* -------------------------------------------------------------- steps */

void sched_rewind(coord *c)
{
    for (int i = 0; i < c->n_seqs; i++) {
        seq *s = &c->seqs[i];
        s->n_step = 0;
        if (s->state == SEQ_ZOMBIE) seq_release(c, s);
        else if (s->state == SEQ_RUNNING) s->n_computed = 0;
    }
    c->st_n = c->st_rows = c->st_n_members = 0;
}

void sched_engine_restart(coord *c, worker *w, bool kv_kept)
{
    if (!kv_kept) {
        sched_rewind(c);
        return;
    }
    for (int i = 0; i < c->n_seqs; i++) {
        seq *s = &c->seqs[i];
        s->n_step = 0;
        if (s->state == SEQ_ZOMBIE) seq_release(c, s);
    }
    c->st_n = c->st_rows = c->st_n_members = 0;
    for (int i = 0; i < c->n_seqs; i++) {
        seq *s = &c->seqs[i];
        if (s->state != SEQ_RUNNING || s->n_computed == 0) continue;
        apr_wmsg t;
        memset(&t, 0, sizeof t);
        t.type = APR_W_TRIM;
        t.trim_seq = s->slot;
        t.trim_from = (int32_t)s->n_computed;
        if (worker_send(c, w, &t) < 0) return; /* the worker was dropped and everything rewound */
    }
}

/* Candidate row r of the step (proto.h, "candidate rows"), read once from
 * shared memory into st_cands and checked as anything from a worker is:
 * count within what was asked, ids in the vocabulary and not repeated,
 * no NaN or -inf, and the sampler's order. 0, or -1 with why. */
static int read_cands(coord *c, const worker *w, int r, char *why, size_t cap)
{
    const unsigned char *row = (const unsigned char *)w->logits.base + (size_t)r * (size_t)c->n_vocab * sizeof(float);
    int32_t n;
    memcpy(&n, row, sizeof n);
    if (n < 0 || n > c->st_row_k[r]) {
        snprintf(why, cap, "candidate row %d holds %d candidates, %d asked", r, (int)n, c->st_row_k[r]);
        return -1;
    }
    apr_sampler_cand *out = c->st_cands + (size_t)r * APR_TOPK_MAX;
    int rc = 0;
    int32_t j = 0;
    for (; j < n; j++) {
        apr_wcand x;
        memcpy(&x, row + APR_TOPK_ROW_BYTES(j), sizeof x);
        const char *bad = NULL;
        if (x.id < 0 || x.id >= c->n_vocab) bad = "an id outside the vocabulary";
        else if (!(x.logit > -INFINITY)) bad = "a NaN or -inf logit";
        else if (j > 0 && !(out[j - 1].logit > x.logit || (out[j - 1].logit == x.logit && out[j - 1].id < x.id)))
            bad = "candidates out of order";
        else if (c->cand_seen[x.id / 64] >> (x.id % 64) & 1) bad = "an id twice";
        if (bad) {
            snprintf(why, cap, "candidate row %d, candidate %d (id %d): %s", r, (int)j, (int)x.id, bad);
            rc = -1;
            break;
        }
        c->cand_seen[x.id / 64] |= (uint64_t)1 << (x.id % 64);
        out[j] = (apr_sampler_cand){x.id, x.logit};
    }
    for (int32_t i = 0; i < j; i++) /* leave the bitmap clear for the next row */
        c->cand_seen[out[i].id / 64] &= ~((uint64_t)1 << (out[i].id % 64));
    c->st_row_ncand[r] = n;
    return rc;
}

void sched_on_done(coord *c, worker *w, const apr_wmsg *m)
{
    if (!m->ok || m->n_logits != c->st_rows) {
        char why[APR_ERRLEN + 64];
        if (!m->ok) snprintf(why, sizeof why, "step failed: %s", m->error);
        else snprintf(why, sizeof why, "step returned %d logit rows, %d asked", m->n_logits, c->st_rows);
        /* the coordinator built that step, so a refusal is a bug on one side
         * or the other: start from a clean worker rather than guess */
        worker_lost(c, w, why);
        return;
    }
    /* every candidate row is checked before any token is taken, so that a
     * bad one leaves the sequences as they were for the rewind */
    for (int r = 0; r < c->st_rows; r++) {
        char why[160];
        if (c->st_row_k[r] && read_cands(c, w, r, why, sizeof why) < 0) {
            worker_lost(c, w, why);
            return;
        }
    }
    for (int k = 0; k < c->st_n_members; k++) {
        seq *s = &c->seqs[c->st_members[k]];
        s->n_computed += s->n_step;
        s->n_step = 0;
    }
    const float *logits = w->logits.base;
    for (int r = 0; r < c->st_rows; r++) {
        seq *s = &c->seqs[c->st_row_seq[r]];
        if (s->state != SEQ_RUNNING) continue;
        int32_t tok = c->st_row_k[r]
                          ? apr_sampler_sample_cands(&s->sampler, c->ws, c->st_cands + (size_t)r * APR_TOPK_MAX,
                                                     c->st_row_ncand[r])
                          : apr_sampler_sample(&s->sampler, c->ws, logits + (size_t)r * (size_t)c->n_vocab,
                                               s->tokens, s->n_tokens);
        if (tok < 0) {
            seq_finish(c, s, APR_FINISH_ERROR);
            continue;
        }
        seq_accept(c, s, tok);
    }
    for (int k = 0; k < c->st_n_members; k++) {
        seq *s = &c->seqs[c->st_members[k]];
        if (s->state == SEQ_ZOMBIE) seq_release(c, s);
    }
    c->st_n = c->st_rows = c->st_n_members = 0;
}

static int cmp_order(const void *a, const void *b, void *ctx)
{
    const coord *c = ctx;
    uint64_t x = c->seqs[*(const int *)a].order, y = c->seqs[*(const int *)b].order;
    return x < y ? -1 : x > y;
}

static bool slot_taken(const coord *c, int slot)
{
    for (int i = 0; i < c->n_seqs; i++)
        if ((c->seqs[i].state == SEQ_RUNNING || c->seqs[i].state == SEQ_ZOMBIE) && c->seqs[i].slot == slot)
            return true;
    return false;
}

/* Queued sequences (idx: by arrival) take the free KV slots. */
static void admit(coord *c, const int *idx, int n)
{
    for (int k = 0; k < n; k++) {
        seq *s = &c->seqs[idx[k]];
        if (s->state != SEQ_QUEUED) continue;
        int slot = -1;
        for (int j = 0; j < c->o.max_batch && slot < 0; j++)
            if (!slot_taken(c, j)) slot = j;
        if (slot < 0) break;
        s->slot = slot;
        s->state = SEQ_RUNNING;
        s->n_computed = 0;
        s->t_admit = coord_now();
    }
}

void sched_tick(coord *c)
{
    if (c->active < 0) return;
    worker *w = &c->workers[c->active];
    if (w->state != W_READY || w->busy) return;

    /* sequences by arrival */
    int *idx = malloc((size_t)c->n_seqs * sizeof *idx);
    if (!idx) return;
    int n = 0;
    for (int i = 0; i < c->n_seqs; i++)
        if (c->seqs[i].state == SEQ_QUEUED || c->seqs[i].state == SEQ_RUNNING) idx[n++] = i;
    qsort_r(idx, (size_t)n, sizeof *idx, cmp_order, c);

    admit(c, idx, n);

    /* decode entries first, then prompt chunks from what is left of the budget */
    int budget = w->max_batch < c->o.chunk + c->o.max_batch ? w->max_batch : c->o.chunk + c->o.max_batch;
    int prefill_budget = c->o.chunk;
    int e = 0, rows = 0, members = 0;
    bool any_k = false;
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < n && e < budget; k++) {
            seq *s = &c->seqs[idx[k]];
            if (s->state != SEQ_RUNNING || s->n_step) continue;
            size_t pending = s->n_tokens - s->n_computed;
            if (pending == 0 || (pass == 0) != (pending == 1)) continue;
            size_t take = pending;
            if (pass == 1) {
                if (prefill_budget <= 0) continue;
                if (take > (size_t)prefill_budget) take = (size_t)prefill_budget;
                if (take > (size_t)(budget - e)) take = (size_t)(budget - e);
                prefill_budget -= (int)take;
            }
            if (s->n_computed == 0) {
                /* the slot may hold another sequence's positions */
                apr_wmsg t;
                memset(&t, 0, sizeof t);
                t.type = APR_W_TRIM;
                t.trim_seq = s->slot;
                t.trim_from = 0;
                if (worker_send(c, w, &t) < 0) {
                    free(idx);
                    return;
                }
            }
            /* candidates instead of the row where the sampler is exact on
             * them (and they fit the row's slot) */
            int32_t kk = apr_sampler_cands_needed(&s->sampler.p, c->n_vocab, APR_TOPK_MAX);
            if (APR_TOPK_ROW_BYTES(kk) > (size_t)c->n_vocab * sizeof(float)) kk = 0;
            for (size_t j = 0; j < take; j++) {
                c->st_token[e] = s->tokens[s->n_computed + j];
                c->st_pos[e] = (int32_t)(s->n_computed + j);
                c->st_seq[e] = s->slot;
                c->st_want[e] = s->n_computed + j + 1 == s->n_tokens;
                c->st_topk[e] = c->st_want[e] ? (uint8_t)kk : 0;
                if (c->st_want[e]) {
                    c->st_row_k[rows] = (uint8_t)kk;
                    c->st_row_seq[rows++] = idx[k];
                    any_k |= kk > 0;
                }
                e++;
            }
            s->n_step = take;
            c->st_members[members++] = idx[k];
        }
    }
    free(idx);
    if (e == 0) return;
    c->st_n = e;
    c->st_rows = rows;
    c->st_n_members = members;

    apr_wmsg m;
    memset(&m, 0, sizeof m);
    m.type = APR_W_STEP;
    m.step = ++c->next_step;
    m.n = e;
    m.token = c->st_token;
    m.pos = c->st_pos;
    m.seq = c->st_seq;
    m.want = c->st_want;
    m.topk = any_k ? c->st_topk : NULL;
    /* one stream and nothing waiting: its next step is one entry again, sent
     * as soon as this one's token is sampled, unless this token is its last
     * by length (an end-of-generation token or a stop string cannot be seen
     * coming: the engine then lets the queued step go) */
    if (e == 1 && n == 1) {
        const seq *s = &c->seqs[c->st_members[0]];
        m.ahead = !(s->max_tokens && s->n_generated + 1 >= s->max_tokens) && s->n_tokens + 1 < (size_t)c->n_ctx;
    }
    w->busy = true;
    w->step_id = m.step;
    w->step_sent = coord_now();
    worker_send(c, w, &m); /* on failure the worker is dropped and the step rewound */
}
