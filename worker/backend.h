/* worker/ — the backend interface every engine implements (cpu here, cuda in
 * cuda/), the io_uring loader and the worker's protocol loop.
 *
 * A backend owns the weights and a KV cache of n_seq sequences of n_ctx
 * positions each. A step takes a batch of (sequence, position, token) entries
 * and returns logits for the entries that ask for them. Within one step a
 * sequence's entries have consecutive positions, and every earlier position of
 * that sequence has been computed by an earlier step (or earlier in this one).
 */
#ifndef APR_BACKEND_H
#define APR_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "model/model.h"

typedef struct {
    int n_threads; /* 0: all online cores */
    int n_ctx;     /* positions per sequence; 0: min(n_ctx_train, 4096) */
    int n_seq;     /* sequences the KV cache holds; 0: 1 */
    bool progress; /* progress bar while loading (only shown on a TTY) */
    /* An engine under a holder (cuda): the holder's export area
     * (apr_backend_hold_open) to import weights and KV cache from instead of
     * loading them. NULL: load. */
    const void *import;
    /* With import: an earlier engine used this KV cache, so every sequence
     * counts as n_ctx positions long until it is trimmed. */
    bool kv_kept;
} apr_backend_opts;

typedef struct {
    int n;                      /* entries */
    const int32_t *token;       /* [n] */
    const int32_t *pos;         /* [n] */
    const int32_t *seq;         /* [n], 0 <= seq < n_seq */
    const uint8_t *want_logits; /* [n]; NULL: only the last entry */
    /* [n] or NULL: 1..APR_BACKEND_TOPK_MAX asks for that entry's candidate
     * row (below) instead of its logits; 0 (and NULL) the full row. Non-zero
     * only where the entry wants logits. */
    const uint8_t *topk;
    /* The caller sends another step of one entry as soon as this one's
     * result is in (a decode loop): the engine may queue that step's work
     * now (cuda: its graph, whose first kernel polls for the batch and keeps
     * its blocks, and the early-launched ones behind it, on the device). A
     * caller that then does not step, or steps another engine of the same
     * process first, calls apr_backend_idle. */
    bool ahead;
} apr_batch;

/* A candidate row, in the slot of n_vocab floats where the entry's logits
 * would have gone: an int32 count (0..k), then that many {int32 id, float
 * logit}, apr_topk_select's k best. The worker hands these rows to the
 * coordinator as they are (proto.h, "candidate rows": the same layout). The
 * slot must hold it: 1 + 2 k <= n_vocab. */
#define APR_BACKEND_TOPK_MAX 64
#define APR_CAND_ROW_BYTES(k) (4 + 8 * (size_t)(k))

typedef struct apr_backend apr_backend;

/* kind: "cpu" or "cuda". */
apr_backend *apr_backend_open(const char *kind, const char *model_path,
                              const apr_backend_opts *opts, char err[APR_ERRLEN]);
void apr_backend_close(apr_backend *b);

const apr_hparams *apr_backend_hparams(const apr_backend *b);
int apr_backend_n_ctx(const apr_backend *b);
int apr_backend_n_seq(const apr_backend *b);

/* logits: n_vocab floats for each entry that wants them, in batch order (a
 * candidate row in that slot where batch->topk asks for one).
 * 0; -1 when the step was refused (err says why; the backend still serves);
 * -2 when the device failed (err says how; the backend is unusable, and an
 * engine process exits so that its holder starts a fresh one). */
int apr_backend_step(apr_backend *b, const apr_batch *batch, float *logits,
                     char err[APR_ERRLEN]);
/* No step follows soon: work queued by a step's `ahead` is let go (cuda:
 * the graph runs on a padding entry). Steps and close do it themselves. */
void apr_backend_idle(apr_backend *b);
/* Forget positions >= from_pos of a sequence (0 clears it). */
void apr_backend_seq_trim(apr_backend *b, int seq, int from_pos);

#define APR_BACKEND_MAX_BATCH 4096 /* entries of one step, any backend */

/* For backends: checks a batch against the interface's rules (see the top of
 * this header) given the positions each sequence holds (seq_len[n_seq]).
 * 0, or -1 with the first offending entry named in err. */
int apr_batch_check(const apr_batch *b, int n_seq, int n_ctx, uint32_t n_vocab, const int *seq_len,
                    char err[APR_ERRLEN]);

/* The k best of n logits (1 <= k), best first: higher logit first, equal
 * logits by lower index first; NaN and -inf are never chosen, so fewer than
 * k come back when fewer are finite or +inf. Writes ids and values [0, ret)
 * and returns how many. One pass whose common case is a vector compare of
 * 32 logits against the k-th best so far. (The worker's candidate rows,
 * proto.h; here so that it can be tested on its own.) */
int apr_topk_select(const float *logits, int n, int k, int32_t *ids, float *vals);

/* The candidate row of the k best of row[0..n) written at dst (which may be
 * row itself: the candidates are picked before anything is written). */
void apr_cand_row(void *dst, const float *row, uint32_t n, int k);

/* For backends that compute whole rows: turns the rows of `logits` (the
 * step's output, as apr_backend_step lays it out) that b->topk asks for into
 * candidate rows, in place. */
void apr_cand_rows_inplace(const apr_batch *b, float *logits, uint32_t n_vocab);

/* ------------------------------------------------- memory for an engine */
/* Fault isolation of the GPU worker: a holder process allocates and loads
 * the weights and the KV cache, and writes into `exp` what an engine process
 * needs to import them (opts.import); exp is APR_BACKEND_EXPORT_BYTES of
 * memory the two share. The holder runs no steps. "cuda" only. */
#define APR_BACKEND_EXPORT_BYTES 1024

typedef struct apr_backend_hold apr_backend_hold;

apr_backend_hold *apr_backend_hold_open(const char *kind, const char *model_path,
                                        const apr_backend_opts *opts, void *exp,
                                        char err[APR_ERRLEN]);
void apr_backend_hold_close(apr_backend_hold *h);

/* ------------------------------------------------------- the worker loop */
/* apr-worker's protocol side (proto.h, "coordinator <-> worker"): connect to
 * the coordinator, heartbeat from the start, open the backend, say hello,
 * then run steps until told to shut down. A cuda worker is two processes:
 * the one apr-coord starts is the holder (memory and heartbeats,
 * worker/holder.c), which starts engines (apr-worker --engine) that say hello
 * and run the steps, and replaces any that dies. */
typedef struct {
    const char *backend;  /* "cpu" | "cuda" */
    const char *model;    /* GGUF path */
    const char *endpoint; /* the coordinator's ROUTER, e.g. ipc://RUNDIR/workers */
    const char *name;     /* routing id; heartbeats come from NAME.hb */
    int logits_fd;        /* inherited shared memory, max_logits * n_vocab floats */
    int n_threads;        /* 0: all online cores */
    int n_ctx;            /* 0: the backend's default */
    int n_seq;            /* sequences in the KV cache (>= 1) */
    int max_batch;        /* entries per step, 1..APR_WORKER_MAX_BATCH */
    int max_logits;       /* logit rows per step, 1..APR_WORKER_MAX_BATCH */
    bool engine;          /* a cuda holder's engine (started by the holder, not apr-coord) */
    int ipc_fd;           /* engine: the block shared with the holder (worker/holder.h) */
    int spin_us;          /* waiting awake for the next step after a done; -1: 500 for an engine, else 0 */
} apr_worker_opts;

/* Returns the process exit status: 0 after "shutdown", 1 when the backend
 * or the shared memory could not be set up (hello ok=false went out) or the
 * connection failed; an engine also 3 when the device failed in a step. */
int apr_worker_serve(const apr_worker_opts *o);

#endif
