/* coordinator/ — apr-coord: the client API, the scheduler (continuous
 * batching), the supervisor of the worker processes and the sampler
 * (sampler.h). This header is the directory's interface between its files;
 * nothing outside coordinator/ includes it.
 *
 * One thread runs everything in an event loop (server.c): client frames on a
 * ROUTER, worker frames on another ROUTER, signals through a signalfd. The
 * forward pass runs in a worker process; the coordinator builds each step
 * from the running sequences, sends it, and when the worker answers "done"
 * it samples from the logits the worker left in shared memory.
 *
 * A sequence's state is its token history (prompt + generated) and how many
 * positions of it the worker has computed (n_computed). A step feeds
 * history[n_computed..] (a decode step is the case of one token), so a worker
 * that dies costs nothing but time: n_computed goes back to 0 and the next
 * steps re-prefill the history on the restarted worker, then continue.
 */
#ifndef APR_COORD_H
#define APR_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "coordinator/sampler.h"
#include "model/model.h"
#include "proto/proto.h"
#include "tokenizer/tokenizer.h"

#define COORD_MAX_WORKERS 4

typedef struct {
    const char *model_path;
    const char *listen;      /* client endpoint */
    const char *workers;     /* "cpu", "cuda", "cuda,cpu" */
    const char *worker_bin;  /* path of apr-worker */
    const char *run_dir;     /* NULL: a fresh private directory under $TMPDIR or /tmp */
    int n_threads;           /* per worker; 0: the worker decides */
    int n_ctx;               /* 0: min(n_ctx_train, 4096) */
    int max_batch;           /* sequences decoded together (KV slots) */
    int queue_limit;         /* requests waiting for a slot */
    int chunk;               /* prompt tokens per step */
    int hb_timeout_ms;       /* a worker silent this long is killed and restarted */
    bool verbose;
} coord_opts;

/* config.c: the options as `key = value` settings (keys are the long flags
 * with '_' for '-'), shared by the flags and the --config file. */
#define COORD_CONF_KEYS 12
typedef struct {
    char *val[COORD_CONF_KEYS]; /* the file's values; coord_opts points into them */
} coord_conf;

bool coord_opt_known(const char *key);
bool coord_opt_is_switch(const char *key); /* verbose: a flag without a value */
/* Checks val as the flag does and stores it (a pointer, for strings: val
 * must outlive o); err says why not, without the key. */
int coord_opt_set(coord_opts *o, const char *key, const char *val, char err[APR_ERRLEN]);
/* Applies the file's settings to o; err names file:line. cf owns the strings
 * o then points to: free it after o is no longer used, failure or not. */
#define COORD_CONF_ERRLEN 512 /* room for a path, a line number and the reason */
int coord_conf_load(coord_conf *cf, coord_opts *o, const char *path, char err[COORD_CONF_ERRLEN]);
void coord_conf_free(coord_conf *cf);
/* Writes o in the file format, so that loading it gives o back. */
int coord_conf_print(FILE *out, const coord_opts *o, char err[APR_ERRLEN]);

typedef enum { W_DOWN = 0, W_STARTING, W_READY } wstate;

typedef struct {
    char name[32];
    char backend[16];
    wstate state;
    pid_t pid;          /* the process we started (a CUDA worker's holder) */
    pid_t engine_pid;   /* the process that said hello (a CUDA worker's engine) */
    uint64_t restarts;  /* starts after the first, engine restarts included */
    uint64_t starts;
    bool ever_ready;
    char last_error[APR_ERRLEN];
    double started_at, last_hb, retry_at;
    int failures;       /* consecutive failed starts, for the back-off */
    apr_shm logits;     /* max_logits * n_vocab floats, reused across restarts */
    /* from hello */
    int n_vocab, n_ctx, n_seq, max_batch, max_logits;
    /* the step in flight, if any */
    bool busy;
    uint64_t step_id;
    double step_sent;
    /* the last message sent to it was a step (since its hello): the next
     * step may go through the step box too (proto.h) */
    bool last_sent_step;
} worker;

typedef enum { SEQ_FREE = 0, SEQ_QUEUED, SEQ_RUNNING, SEQ_ZOMBIE } seq_state;

/* One generation. Owned by the coordinator's sequence table. */
typedef struct {
    seq_state state;
    unsigned char ident[256]; /* the client's routing id */
    size_t ident_len;
    apr_id id;
    uint64_t order;       /* arrival order: queue and prefill are FIFO */
    int slot;             /* KV sequence in the worker; -1 while queued */
    int32_t *tokens;      /* prompt then generated */
    size_t n_tokens, cap_tokens, n_prompt;
    size_t n_computed;    /* positions the worker holds */
    size_t n_step;        /* entries of this sequence in the step in flight */
    uint32_t max_tokens;  /* 0: until EOS or the context is full */
    uint32_t n_generated;
    apr_sampler sampler;
    char **stop;
    size_t n_stop;
    bool stream;
    apr_detok detok;
    char *text;           /* the completion so far */
    size_t text_len, text_cap, emitted;
    double t_arrive, t_admit, t_first, t_last;
} seq;

typedef struct {
    coord_opts o;
    void *zctx;
    void *clients;        /* ROUTER, client endpoint */
    void *wsock;          /* ROUTER, ipc://run_dir/workers */
    int sigfd;
    char run_dir[256];
    char wendpoint[300];
    bool stopping;

    gguf_file *gguf;      /* metadata only */
    apr_tokenizer *tok;
    enum apr_chat_tmpl chat;
    const char *model_name;
    int n_vocab, n_ctx;
    apr_sampler_ws *ws;

    worker workers[COORD_MAX_WORKERS];
    int n_workers;
    int active;           /* index of the worker that runs the sequences, -1: none */

    seq *seqs;            /* max_batch + queue_limit entries */
    int n_seqs;
    uint64_t next_order;
    uint64_t next_step;   /* step ids only grow, across worker restarts too */
    uint64_t restarts;
    double t_start;

    /* the step in flight (on workers[active]) */
    int32_t *st_token, *st_pos, *st_seq;
    uint8_t *st_want;
    uint8_t *st_topk;     /* per entry: candidates asked (0: the full row) */
    int *st_row_seq;      /* logits row -> index in seqs */
    uint8_t *st_row_k;    /* per row: candidates asked (0: the full row) */
    /* per row: the candidate row as read (once) from shared memory and
     * checked, APR_TOPK_MAX slots a row, and how many it holds */
    apr_sampler_cand *st_cands;
    int32_t *st_row_ncand;
    uint64_t *cand_seen;  /* n_vocab bits, all clear between steps: duplicate ids */
    int st_n, st_rows;
    int *st_members;      /* indices in seqs that have entries in the step */
    int st_n_members;
} coord;

double coord_now(void); /* monotonic seconds */

/* server.c */
int coord_init(coord *c, const coord_opts *o, char err[APR_ERRLEN]);
int coord_run(coord *c);
void coord_free(coord *c);
void coord_send_client(coord *c, const unsigned char *ident, size_t ident_len,
                       const msgpack_sbuffer *b);

/* workers.c: the supervisor */
int workers_start(coord *c, char err[APR_ERRLEN]);
void workers_poll(coord *c);          /* reap, time out, restart */
bool workers_doorbells(coord *c);     /* dones rung in shared memory (proto.h, apr_doorbell) */
void workers_on_frame(coord *c, const unsigned char *ident, size_t ident_len, const void *data,
                      size_t len);
void workers_stop(coord *c);
int worker_send(coord *c, worker *w, const apr_wmsg *m);
/* Drops w's process (kill -9 if alive) and schedules a restart; the
 * sequences it held are rewound for re-prefill. */
void worker_lost(coord *c, worker *w, const char *why);

/* sched.c: sequences and steps */
void sched_on_request(coord *c, const unsigned char *ident, size_t ident_len, apr_request *r);
void sched_on_done(coord *c, worker *w, const apr_wmsg *m);
void sched_tick(coord *c);             /* admit queued requests, send the next step */
void sched_rewind(coord *c);           /* the worker's KV is gone: recompute from 0 */
/* w's engine was replaced while the step in flight was pending: drop that
 * step; with kv_kept, trim each sequence to what it had computed, else rewind. */
void sched_engine_restart(coord *c, worker *w, bool kv_kept);
void sched_client_gone(coord *c, const unsigned char *ident, size_t ident_len);
void sched_fail_all(coord *c, apr_perr code, const char *msg);
void sched_counts(const coord *c, uint32_t *running, uint32_t *queued);

#endif
