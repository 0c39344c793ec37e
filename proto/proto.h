/* proto/ — the client wire protocol (msgpack maps, one per ZeroMQ frame) and
 * the few ZeroMQ helpers every process uses. PROTOCOL.md is the reference.
 *
 * Requests come from anyone who can connect: apr_request_parse validates
 * every byte (structure, types, ranges, UTF-8, sizes) before the rest of the
 * coordinator sees it, and says what was wrong with a stable code string and
 * a one-line message that names the field. Replies are produced by the
 * apr_reply_* encoders and read back (by the apr client and tests) with
 * apr_reply_parse, which is just as strict about types but ignores unknown
 * keys so that newer servers can add fields.
 */
#ifndef APR_PROTO_H
#define APR_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>
#include <zmq.h>

#include "model/model.h" /* APR_ERRLEN */

#define APR_PROTO_VERSION 1 /* major version; requests may carry `v` */
#define APR_ID_MAX 128      /* bytes of a string id */

/* ---------------------------------------------------------------- limits */

typedef struct {
    size_t max_frame;          /* bytes of one request frame (4 MiB) */
    size_t max_prompt_bytes;   /* prompt / tokenize text / all chat contents (1 MiB) */
    uint32_t max_input_tokens; /* prompt_tokens, detokenize tokens (262144) */
    uint32_t max_new_tokens;   /* upper bound of max_tokens (131072) */
    uint32_t max_messages;     /* chat messages (1024) */
    uint32_t max_stop;         /* stop strings (16) */
    uint32_t max_stop_bytes;   /* bytes of one stop string (256) */
} apr_proto_limits;

void apr_proto_limits_default(apr_proto_limits *l);

/* ---------------------------------------------------------------- errors */

/* Stable codes; apr_proto_code_str gives the wire string. The first group is
 * what apr_request_parse reports; the second is for the server's own use. */
typedef enum {
    APR_PERR_NONE = 0,
    APR_PERR_BAD_REQUEST,         /* "bad_request": not msgpack, not a map, truncated, trailing bytes, too deep */
    APR_PERR_UNKNOWN_OP,          /* "unknown_op" */
    APR_PERR_TOO_LARGE,           /* "too_large": frame, prompt or token array over a limit */
    APR_PERR_INVALID_PARAM,       /* "invalid_param": a field has the wrong type, range, is unknown or missing */
    APR_PERR_UNSUPPORTED_VERSION, /* "unsupported_version" */
    APR_PERR_BUSY,                /* "busy": the queue is full */
    APR_PERR_NOT_FOUND,           /* "not_found" */
    APR_PERR_CONTEXT_LENGTH,      /* "context_length": the prompt does not fit the context */
    APR_PERR_UNAVAILABLE,         /* "unavailable": no worker can serve */
    APR_PERR_INTERNAL,            /* "internal" */
    APR_PERR_COUNT_
} apr_perr;

const char *apr_proto_code_str(apr_perr code);

/* A request id as the client sent it: absent, an integer or a short string.
 * A plain value (no heap), so it can be copied into replies and errors. */
enum { APR_ID_NONE = 0, APR_ID_INT, APR_ID_STR };
typedef struct {
    int kind;
    int64_t num;
    char str[APR_ID_MAX + 1]; /* NUL-terminated; ids never contain NUL */
} apr_id;

void apr_id_set_int(apr_id *id, int64_t v);
/* Truncates to APR_ID_MAX bytes; the caller passes valid UTF-8. */
void apr_id_set_str(apr_id *id, const char *s);
bool apr_id_equal(const apr_id *a, const apr_id *b);

typedef struct {
    apr_perr code;
    char message[APR_ERRLEN];
    apr_id id; /* the request's id when it could be read, so the error reply can echo it */
} apr_proto_error;

/* -------------------------------------------------------------- requests */

typedef enum {
    APR_OP_NONE = 0,
    APR_OP_GENERATE,
    APR_OP_CHAT,
    APR_OP_TOKENIZE,
    APR_OP_DETOKENIZE,
    APR_OP_STATUS,
    APR_OP_CANCEL,
    APR_OP_COUNT_
} apr_op;

const char *apr_op_str(apr_op op); /* "generate" ...; "?" for others */

typedef struct {
    char *role; /* "system" | "user" | "assistant" | "tool" */
    char *content;
    size_t content_len;
} apr_wire_msg;

typedef struct {
    float temperature;       /* [0, 100]; 0 = greedy (default 0.8) */
    int32_t top_k;           /* >= 0; 0 = off (default 40) */
    float top_p;             /* (0, 1]; 1 = off (default 0.95) */
    float min_p;             /* [0, 1]; 0 = off (default 0.05) */
    float repeat_penalty;    /* (0, 100]; 1 = off (default 1) */
    int32_t repeat_last_n;   /* -1 = whole history, 0 = off, else last n (default 64) */
    float presence_penalty;  /* [-2, 2] (default 0) */
    float frequency_penalty; /* [-2, 2] (default 0) */
    bool has_seed;           /* false: the server picks one */
    uint64_t seed;
} apr_sampling;

typedef struct {
    apr_op op;
    uint32_t version;
    apr_id id;

    /* generate: exactly one of prompt / prompt_tokens */
    char *prompt; /* NUL-terminated copy; prompt_len excludes the NUL */
    size_t prompt_len;
    int32_t *prompt_tokens;
    size_t n_prompt_tokens;
    /* chat */
    apr_wire_msg *messages;
    size_t n_messages;
    /* tokenize */
    char *text;
    size_t text_len;
    /* detokenize */
    int32_t *tokens;
    size_t n_tokens;

    /* generate, tokenize */
    bool add_special;   /* add BOS etc. as the model wants (generate: true, tokenize: false) */
    bool parse_special; /* special-token text becomes special tokens (true) */

    /* generate, chat */
    uint32_t max_tokens; /* 0 = until EOS or the context is full (default) */
    apr_sampling sampling;
    char **stop; /* stop strings, each NUL-terminated, non-empty */
    size_t n_stop;
    bool stream; /* false: no token events; the done event carries the text */
} apr_request;

/* Defaults for op (as if the client had sent only `op`); owns nothing yet. */
void apr_request_init(apr_request *r, apr_op op);
void apr_sampling_default(apr_sampling *s);

/* Parses and validates one request frame with the default limits. On success
 * returns 0 and *out owns its memory (apr_request_free). On failure returns -1,
 * *out is left empty (free is still safe) and *e says why. */
int apr_request_parse(const void *frame, size_t len, apr_request *out, apr_proto_error *e);
int apr_request_parse_ex(const void *frame, size_t len, const apr_proto_limits *lim,
                         apr_request *out, apr_proto_error *e);
void apr_request_free(apr_request *r);

/* Encodes a request (clients, tests). Every field the op uses is written
 * except max_tokens == 0 and an unset seed. 0 on success, -1 when out of memory. */
int apr_request_encode(msgpack_sbuffer *b, const apr_request *r);

/* ---------------------------------------------------------------- replies */

typedef enum {
    APR_FINISH_NONE = 0,
    APR_FINISH_STOP,      /* EOS or a stop string */
    APR_FINISH_LENGTH,    /* max_tokens or the context */
    APR_FINISH_CANCELLED,
    APR_FINISH_ERROR,
    APR_FINISH_COUNT_
} apr_finish;

const char *apr_finish_str(apr_finish f);

typedef struct {
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
} apr_usage;

typedef struct {
    double ttft_ms;
    double prefill_tok_s;
    double decode_tok_s;
} apr_timings;

#define APR_STATUS_MAX_WORKERS 64

typedef struct {
    char name[32];    /* "cpu0" */
    char backend[16]; /* "cpu" | "cuda" */
    char state[16];   /* "starting" | "ready" | "restarting" | "dead" */
    int64_t pid;
    uint64_t restarts;
    uint32_t sequences;
} apr_worker_status;

typedef struct {
    char model[256];
    uint32_t n_ctx;
    uint32_t n_vocab;
    uint32_t running; /* sequences being decoded */
    uint32_t queued;
    uint32_t queue_limit;
    uint64_t restarts; /* all workers, since start */
    double uptime_s;
    apr_worker_status *workers;
    size_t n_workers;
} apr_status;

typedef enum {
    APR_EV_NONE = 0,
    APR_EV_TOKEN,  /* "token" */
    APR_EV_DONE,   /* "done" */
    APR_EV_ERROR,  /* "error" */
    APR_EV_TOKENS, /* "tokens": the tokenize reply */
    APR_EV_TEXT,   /* "text": the detokenize reply */
    APR_EV_STATUS, /* "status" */
    APR_EV_CANCEL, /* "cancel": the cancel reply */
    APR_EV_COUNT_
} apr_event;

const char *apr_event_str(apr_event ev);

/* Encoders append one reply map to b; 0 on success, -1 when out of memory.
 * Strings must be valid UTF-8 (the server replaces bad bytes before this). */
int apr_reply_token(msgpack_sbuffer *b, const apr_id *id, const char *text, size_t len,
                    int32_t token, uint32_t index);
/* text may be NULL (streamed requests); it is the whole completion otherwise. */
int apr_reply_done(msgpack_sbuffer *b, const apr_id *id, apr_finish finish, const apr_usage *u,
                   const apr_timings *t, const char *text, size_t len);
int apr_reply_error(msgpack_sbuffer *b, const apr_id *id, apr_perr code, const char *message);
int apr_reply_tokens(msgpack_sbuffer *b, const apr_id *id, const int32_t *tokens, size_t n);
int apr_reply_text(msgpack_sbuffer *b, const apr_id *id, const char *text, size_t len);
int apr_reply_status(msgpack_sbuffer *b, const apr_id *id, const apr_status *s);
int apr_reply_cancel(msgpack_sbuffer *b, const apr_id *id, bool found);

/* A decoded reply; which fields mean something depends on event. */
typedef struct {
    apr_event event;
    apr_id id;
    char *text; /* token, text, done (non-stream; may be NULL); NUL-terminated */
    size_t text_len;
    int32_t token; /* token */
    uint32_t index;
    apr_finish finish; /* done */
    apr_usage usage;
    apr_timings timings;
    apr_perr code; /* error; APR_PERR_INTERNAL stands for a code this client does not know */
    char code_str[32];
    char *message;
    int32_t *tokens; /* tokens */
    size_t n_tokens;
    apr_status status; /* status */
    bool found;        /* cancel */
} apr_reply;

#define APR_REPLY_MAX_FRAME ((size_t)64 << 20)

/* 0 and *out owns its memory (apr_reply_free), or -1 and a message in err. */
int apr_reply_parse(const void *frame, size_t len, apr_reply *out, char err[APR_ERRLEN]);
void apr_reply_free(apr_reply *r);

/* Strict UTF-8: no overlongs, surrogates or code points past U+10FFFF. */
bool apr_utf8_valid(const char *s, size_t len);

/* ---------------------------------------------------------------- ZeroMQ */
/* Clients use DEALER sockets and send one frame per request, no empty
 * delimiter; the server's ROUTER sees [identity, body]. All helpers return -1
 * with a message in err on failure; receives return 0 on timeout. A negative
 * timeout waits forever. EINTR counts as a timeout, so callers can check flags. */

int apr_zmq_send(void *sock, const void *data, size_t len, char err[APR_ERRLEN]);
/* Receives one message into a malloc'd buffer (*data, *len; caller frees).
 * Extra frames of a multipart message are dropped and *multipart is set. */
int apr_zmq_recv(void *sock, int timeout_ms, void **data, size_t *len, bool *multipart,
                 char err[APR_ERRLEN]);

typedef struct {
    unsigned char ident[256]; /* ZeroMQ routing ids are 1..255 bytes */
    size_t ident_len;
    zmq_msg_t body;  /* valid after a return of 1 until apr_zframe_close */
    bool multipart;  /* the peer sent more than one body frame (extras dropped) */
} apr_zframe;

/* Polls items without sleeping until one is ready or spin_ns have passed;
 * true if one is. For a thread whose next message is due within tens of
 * microseconds: it saves the wake-up of a sleeping thread (10-25 us each,
 * two of them a round trip) for a busy core while it spins. */
bool apr_zmq_spin(zmq_pollitem_t *items, int n, long long spin_ns);

/* ROUTER side: 1 and *f filled (close it with apr_zframe_close), 0 on timeout. */
int apr_zmq_router_recv(void *router, int timeout_ms, apr_zframe *f, char err[APR_ERRLEN]);
void apr_zframe_close(apr_zframe *f);
int apr_zmq_router_send(void *router, const void *ident, size_t ident_len, const void *data,
                        size_t len, char err[APR_ERRLEN]);

/* ------------------------------------------------ coordinator <-> worker */
/* The coordinator binds a ROUTER on ipc://RUNDIR/workers (RUNDIR private,
 * mode 0700). Each worker connects two DEALER sockets: routing id NAME
 * ("cpu0") for control, and NAME + ".hb" for heartbeats, sent every
 * APR_HEARTBEAT_MS by a thread of their own from process start (loading
 * included), so a long step never looks like a hang. One msgpack map per
 * frame, key "t" gives the type. Logits never travel through ZeroMQ: the
 * worker inherits a shared-memory fd (--logits-fd) of max_logits * n_vocab
 * floats and writes row r of a step's logits at r * n_vocab before it sends
 * "done". The coordinator validates worker messages as strictly as client
 * ones (a confused worker is restarted, never trusted).
 *
 * Candidate rows: where the sampler needs only the K best tokens (greedy is
 * K = 1; top-k without penalties is K = top_k), the step's optional `topk`
 * array asks for them instead of the row: 0 = the full row, 1..APR_TOPK_MAX
 * = the K best. Such a row's slot (still at r * n_vocab floats) starts with
 * an int32 count, 0..K, followed by that many apr_wcand, best first: higher
 * logit first, equal logits by lower id first (the sampler's order), NaN
 * counted as -inf and -inf entries left out, which is why a row may hold
 * fewer than K. The slot must hold it: 1 + 2K <= n_vocab (the worker refuses
 * the step otherwise). The 600 KB of a 152k-vocabulary row then stay in the
 * worker's cache, and about 0.5 KB cross to the coordinator's core.
 *
 *   worker -> coordinator
 *     hello     {t:"hello", ok, error?, backend, pid, n_vocab, n_ctx, n_seq, max_batch, max_logits,
 *               kv_kept?} sent after the model is loaded (ok=true) or refused (ok=false, error);
 *               again, with a new pid, when a CUDA worker's engine was restarted by its holder
 *     hb        {t:"hb", pid}                                     (on the NAME.hb socket)
 *     done      {t:"done", step, ok, error?, n_logits, ms}        one per step, in order
 *   coordinator -> worker
 *     step      {t:"step", step, token:[n], pos:[n], seq:[n], want:[n] (bools), topk?:[n],
 *               ahead?} topk is sent only when some entry asks for candidates;
 *               a non-zero topk[i] needs want[i]; ahead (bool) only when true
 *     trim      {t:"trim", seq, from}   forget positions >= from of seq (0 clears it)
 *     shutdown  {t:"shutdown"}          exit 0 at once
 */
#define APR_HEARTBEAT_MS 250
#define APR_WORKER_MAX_BATCH 4096 /* entries of one step, an upper bound for parsing */
#define APR_TOPK_MAX 64           /* candidates a row may ask for */

/* One candidate of a candidate row (8 bytes, no padding). */
typedef struct {
    int32_t id;
    float logit;
} apr_wcand;

/* Bytes of a candidate row of k candidates: the int32 count, then k pairs. */
#define APR_TOPK_ROW_BYTES(k) (sizeof(int32_t) + (size_t)(k) * sizeof(apr_wcand))

typedef enum {
    APR_W_NONE = 0,
    APR_W_HELLO,
    APR_W_HB,
    APR_W_DONE,
    APR_W_STEP,
    APR_W_TRIM,
    APR_W_SHUTDOWN,
    APR_W_COUNT_
} apr_wtype;

typedef struct {
    apr_wtype type;
    bool ok;                 /* hello, done */
    char error[APR_ERRLEN];  /* hello, done when !ok */
    char backend[16];        /* hello: "cpu" | "cuda" */
    int64_t pid;             /* hello, hb */
    int32_t n_vocab, n_ctx, n_seq; /* hello */
    int32_t max_batch;       /* hello: entries per step the worker accepts */
    int32_t max_logits;      /* hello: logit rows per step (shm capacity) */
    bool kv_kept;            /* hello (optional, default false): a restarted engine of this
                              * worker found the KV cache of the one before it. Every slot's
                              * length counts as n_ctx until the coordinator trims it, which
                              * it does at once for each sequence it is running (to the
                              * positions it knows were computed) */
    uint64_t step;           /* step, done */
    int32_t n_logits;        /* done: rows written */
    double ms;               /* done: time in the backend */
    int32_t n;               /* step: entries */
    int32_t *token, *pos, *seq; /* step: [n] each, owned (apr_wmsg_free) */
    uint8_t *want;           /* step: [n] 0/1, owned */
    uint8_t *topk;           /* step: [n] 0..APR_TOPK_MAX, owned; NULL: all 0 (full rows) */
    bool ahead;              /* step (optional, default false): the coordinator's next step is
                              * this one's stream alone, sent once its done is in (the engine
                              * may queue it now: worker/backend.h, apr_batch.ahead) */
    int32_t trim_seq, trim_from; /* trim */
} apr_wmsg;

const char *apr_wtype_str(apr_wtype t);
/* 0, or -1 when out of memory. */
int apr_wmsg_encode(msgpack_sbuffer *b, const apr_wmsg *m);
/* Strict: right types, n <= APR_WORKER_MAX_BATCH, arrays of equal length,
 * every int in int32 range and >= 0 where it is a count, id or position,
 * topk[i] <= APR_TOPK_MAX and 0 where want[i] is false.
 * 0 and *out owns its arrays, or -1 with a message (out left freeable). */
int apr_wmsg_parse(const void *frame, size_t len, apr_wmsg *out, char err[APR_ERRLEN]);
void apr_wmsg_free(apr_wmsg *m);

/* -------------------------------------------------------- shared memory */
/* An anonymous shared segment (memfd) that a child inherits by fd number. */
typedef struct {
    int fd;
    void *base;
    size_t size;
} apr_shm;

/* Creates (fd without CLOEXEC, so an exec'd child keeps it) and maps it. */
int apr_shm_create(apr_shm *s, const char *name, size_t size, char err[APR_ERRLEN]);
/* Maps an inherited fd (sealed against shrinking, as apr_shm_create makes
 * it); its size comes from fstat and must be >= min_size. On success s owns
 * the fd; apr_shm_close is safe after a failed create/attach. */
int apr_shm_attach(apr_shm *s, int fd, size_t min_size, char err[APR_ERRLEN]);
void apr_shm_close(apr_shm *s);

/* The last 64 bytes of a worker's logits segment: the step the worker has
 * finished, stored after its rows and candidates (release), so that a
 * coordinator waiting awake takes the done without the trip through ZeroMQ;
 * the done message still follows (and carries failures, which ring no bell).
 * Step ids only grow, so a bell left by a dead worker never matches. */
typedef struct {
    uint64_t step;    /* stored last */
    int32_t n_logits; /* the rows written, as the done message says */
    int32_t pad[13];
} apr_doorbell;
#define APR_DOORBELL_BYTES 64

/* Before the doorbell, the step box: the coordinator's step message (the
 * bytes it sends on the socket) for a worker that waits awake for its next
 * step (an engine, for 0.5 ms after each done), which takes it from here
 * without the two ZeroMQ I/O threads' wake-ups; the message still follows on
 * the socket and is dropped there (a step id it has run). The coordinator
 * writes the bytes, then len, then step (release), and only for a step whose
 * previous message to that worker was the previous step, which is done: so
 * no earlier message (a trim) can still be on its way, and nobody reads the
 * box while it is written. A worker takes a box only after a step from the
 * socket in its life and only with a step id above every one it ran, so a
 * box left for a process that died is never run. Too long a message goes by
 * the socket alone. */
#define APR_STEPBOX_BYTES 16384
typedef struct {
    uint64_t step; /* stored last */
    uint32_t len;
    uint32_t pad[13];
    unsigned char msg[APR_STEPBOX_BYTES - 64];
} apr_stepbox;

/* The segment for rows_bytes of logits: the rows, the step box, then the
 * doorbell on 64 bytes. */
static inline size_t apr_logits_shm_bytes(size_t rows_bytes)
{
    return (rows_bytes + 63) / 64 * 64 + APR_STEPBOX_BYTES + APR_DOORBELL_BYTES;
}
static inline apr_doorbell *apr_doorbell_of(const apr_shm *s)
{
    return (apr_doorbell *)((char *)s->base + s->size - APR_DOORBELL_BYTES);
}
static inline apr_stepbox *apr_stepbox_of(const apr_shm *s)
{
    return (apr_stepbox *)((char *)s->base + s->size - APR_DOORBELL_BYTES - APR_STEPBOX_BYTES);
}

#endif
