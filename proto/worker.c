/* The coordinator <-> worker messages and the shared-memory segment the
 * logits travel through (the contract is in proto.h).
 *
 * Both ends are of the same build, so unknown keys are simply ignored; but
 * each side treats the other as fallible: a worker that sends nonsense is
 * restarted, and a coordinator bug must never make a worker allocate or
 * index out of bounds. So the parser is as strict about the keys it knows as
 * apr_request_parse is with clients. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/proto_internal.h"

_Static_assert(sizeof(apr_stepbox) == APR_STEPBOX_BYTES, "the step box is laid out as proto.h says");
_Static_assert(sizeof(apr_doorbell) == APR_DOORBELL_BYTES, "the doorbell is 64 bytes");

/* A step of APR_WORKER_MAX_BATCH entries is at most ~90 KB; anything near
 * this is not one of ours. */
#define WMSG_MAX_FRAME ((size_t)1 << 20)
/* The five step arrays plus a generous allowance for keys and scalars. */
#define WMSG_MAX_OBJECTS (5 * (size_t)APR_WORKER_MAX_BATCH + 256)

static const char *const wtype_names[APR_W_COUNT_] = {
    [APR_W_NONE] = "?",
    [APR_W_HELLO] = "hello",
    [APR_W_HB] = "hb",
    [APR_W_DONE] = "done",
    [APR_W_STEP] = "step",
    [APR_W_TRIM] = "trim",
    [APR_W_SHUTDOWN] = "shutdown",
};

const char *apr_wtype_str(apr_wtype t)
{
    if ((int)t <= 0 || t >= APR_W_COUNT_)
        return "?";
    return wtype_names[t];
}

/* ---------------------------------------------------------------- encode */

#define KEY(name) apr_mp_pack_cstr(pk, name)

/* Packs a fixed-size text field as valid UTF-8: it may hold a file name or a
 * message cut by snprintf in the middle of a character, and the parser on
 * the other side refuses invalid text. Bad bytes become '?'. */
static int pack_text(msgpack_packer *pk, const char *s, size_t cap)
{
    char clean[APR_ERRLEN];
    size_t n = strnlen(s, cap < sizeof clean ? cap : sizeof clean - 1);
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t w = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        if (w <= n - i && apr_utf8_valid(s + i, w)) {
            memcpy(clean + i, s + i, w);
            i += w;
        } else {
            clean[i++] = '?';
        }
    }
    return apr_mp_pack_str(pk, clean, n);
}

static int pack_bool(msgpack_packer *pk, bool v)
{
    return v ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
}

static int pack_i32s(msgpack_packer *pk, const int32_t *v, size_t n)
{
    if (msgpack_pack_array(pk, n))
        return -1;
    for (size_t i = 0; i < n; i++)
        if (msgpack_pack_int32(pk, v[i]))
            return -1;
    return 0;
}

int apr_wmsg_encode(msgpack_sbuffer *b, const apr_wmsg *m)
{
    msgpack_packer packer, *pk = &packer;
    msgpack_packer_init(pk, b, msgpack_sbuffer_write);
    const char *t = apr_wtype_str(m->type);
    int err = 0;
    switch (m->type) {
    case APR_W_HELLO:
        /* a refused worker knows nothing about the model: no sizes then */
        err |= msgpack_pack_map(pk, m->ok ? 9 + (m->kv_kept ? 1 : 0) : 5);
        err |= KEY("t") | apr_mp_pack_cstr(pk, t);
        err |= KEY("ok") | pack_bool(pk, m->ok);
        if (!m->ok)
            err |= KEY("error") | pack_text(pk, m->error, sizeof m->error);
        err |= KEY("backend") | pack_text(pk, m->backend, sizeof m->backend);
        err |= KEY("pid") | msgpack_pack_int64(pk, m->pid);
        if (m->ok) {
            err |= KEY("n_vocab") | msgpack_pack_int32(pk, m->n_vocab);
            err |= KEY("n_ctx") | msgpack_pack_int32(pk, m->n_ctx);
            err |= KEY("n_seq") | msgpack_pack_int32(pk, m->n_seq);
            err |= KEY("max_batch") | msgpack_pack_int32(pk, m->max_batch);
            err |= KEY("max_logits") | msgpack_pack_int32(pk, m->max_logits);
            if (m->kv_kept) err |= KEY("kv_kept") | pack_bool(pk, true);
        }
        break;
    case APR_W_HB:
        err |= msgpack_pack_map(pk, 2);
        err |= KEY("t") | apr_mp_pack_cstr(pk, t);
        err |= KEY("pid") | msgpack_pack_int64(pk, m->pid);
        break;
    case APR_W_DONE:
        err |= msgpack_pack_map(pk, m->ok ? 5 : 6);
        err |= KEY("t") | apr_mp_pack_cstr(pk, t);
        err |= KEY("step") | msgpack_pack_uint64(pk, m->step);
        err |= KEY("ok") | pack_bool(pk, m->ok);
        if (!m->ok)
            err |= KEY("error") | pack_text(pk, m->error, sizeof m->error);
        err |= KEY("n_logits") | msgpack_pack_int32(pk, m->n_logits);
        err |= KEY("ms") | msgpack_pack_double(pk, m->ms);
        break;
    case APR_W_STEP: {
        size_t n = m->n > 0 ? (size_t)m->n : 0;
        /* topk only when some entry asks for candidates: full-row steps stay
         * as they were, byte for byte */
        bool topk = false;
        for (size_t i = 0; m->topk && i < n && !topk; i++)
            topk = m->topk[i] != 0;
        err |= msgpack_pack_map(pk, 6 + (topk ? 1 : 0) + (m->ahead ? 1 : 0));
        err |= KEY("t") | apr_mp_pack_cstr(pk, t);
        err |= KEY("step") | msgpack_pack_uint64(pk, m->step);
        err |= KEY("token") | pack_i32s(pk, m->token, n);
        err |= KEY("pos") | pack_i32s(pk, m->pos, n);
        err |= KEY("seq") | pack_i32s(pk, m->seq, n);
        err |= KEY("want") | msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n && !err; i++)
            err |= pack_bool(pk, m->want[i] != 0);
        if (topk) {
            err |= KEY("topk") | msgpack_pack_array(pk, n);
            for (size_t i = 0; i < n && !err; i++)
                err |= msgpack_pack_uint8(pk, m->topk[i]);
        }
        if (m->ahead)
            err |= KEY("ahead") | pack_bool(pk, true);
        break;
    }
    case APR_W_TRIM:
        err |= msgpack_pack_map(pk, 3);
        err |= KEY("t") | apr_mp_pack_cstr(pk, t);
        err |= KEY("seq") | msgpack_pack_int32(pk, m->trim_seq);
        err |= KEY("from") | msgpack_pack_int32(pk, m->trim_from);
        break;
    case APR_W_SHUTDOWN:
        err |= msgpack_pack_map(pk, 1);
        err |= KEY("t") | apr_mp_pack_cstr(pk, t);
        break;
    default:
        return -1;
    }
    return err ? -1 : 0;
}

/* ---------------------------------------------------------------- decode */

static int bad(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, APR_ERRLEN, fmt, ap);
    va_end(ap);
    return -1;
}

enum {
    K_OK, K_ERROR, K_BACKEND, K_PID, K_N_VOCAB, K_N_CTX, K_N_SEQ, K_MAX_BATCH, K_MAX_LOGITS, K_KV_KEPT,
    K_STEP, K_N_LOGITS, K_MS, K_TOKEN, K_POS, K_SEQ, K_WANT, K_TOPK, K_AHEAD, K_FROM,
    K_COUNT
};

#define TB(t) (1u << (t))

/* Which message types read each key; other types ignore it like any
 * unknown key. "seq" is an array in a step and a number in a trim. */
static const struct {
    const char *name;
    unsigned types;
} keys[K_COUNT] = {
    [K_OK] = {"ok", TB(APR_W_HELLO) | TB(APR_W_DONE)},
    [K_ERROR] = {"error", TB(APR_W_HELLO) | TB(APR_W_DONE)},
    [K_BACKEND] = {"backend", TB(APR_W_HELLO)},
    [K_PID] = {"pid", TB(APR_W_HELLO) | TB(APR_W_HB)},
    [K_N_VOCAB] = {"n_vocab", TB(APR_W_HELLO)},
    [K_N_CTX] = {"n_ctx", TB(APR_W_HELLO)},
    [K_N_SEQ] = {"n_seq", TB(APR_W_HELLO)},
    [K_MAX_BATCH] = {"max_batch", TB(APR_W_HELLO)},
    [K_MAX_LOGITS] = {"max_logits", TB(APR_W_HELLO)},
    [K_KV_KEPT] = {"kv_kept", TB(APR_W_HELLO)},
    [K_STEP] = {"step", TB(APR_W_DONE) | TB(APR_W_STEP)},
    [K_N_LOGITS] = {"n_logits", TB(APR_W_DONE)},
    [K_MS] = {"ms", TB(APR_W_DONE)},
    [K_TOKEN] = {"token", TB(APR_W_STEP)},
    [K_POS] = {"pos", TB(APR_W_STEP)},
    [K_SEQ] = {"seq", TB(APR_W_STEP) | TB(APR_W_TRIM)},
    [K_WANT] = {"want", TB(APR_W_STEP)},
    [K_TOPK] = {"topk", TB(APR_W_STEP)},
    [K_AHEAD] = {"ahead", TB(APR_W_STEP)},
    [K_FROM] = {"from", TB(APR_W_TRIM)},
};

#define KB(k) (1u << (k))
#define HELLO_SIZES (KB(K_N_VOCAB) | KB(K_N_CTX) | KB(K_N_SEQ) | KB(K_MAX_BATCH) | KB(K_MAX_LOGITS))

/* Keys every message of a type carries; hello and done add some by "ok". */
static const unsigned required[APR_W_COUNT_] = {
    [APR_W_HELLO] = KB(K_OK) | KB(K_BACKEND) | KB(K_PID),
    [APR_W_HB] = KB(K_PID),
    [APR_W_DONE] = KB(K_STEP) | KB(K_OK) | KB(K_N_LOGITS) | KB(K_MS),
    [APR_W_STEP] = KB(K_STEP) | KB(K_TOKEN) | KB(K_POS) | KB(K_SEQ) | KB(K_WANT),
    [APR_W_TRIM] = KB(K_SEQ) | KB(K_FROM),
    [APR_W_SHUTDOWN] = 0,
};

/* An integer in [lo, hi]; msgpack-c reports non-negative numbers as
 * POSITIVE_INTEGER whatever the encoding, negative ones as NEGATIVE. */
static int get_int(const msgpack_object *v, const char *t, const char *field, int64_t lo, int64_t hi,
                   int64_t *out, char *err)
{
    int64_t x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= (uint64_t)INT64_MAX)
        x = (int64_t)v->via.u64;
    else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        x = v->via.i64;
    else
        return bad(err, "%s %s: must be an integer in [%lld, %lld]", t, field, (long long)lo,
                   (long long)hi);
    if (x < lo || x > hi)
        return bad(err, "%s %s: %lld is out of range [%lld, %lld]", t, field, (long long)x,
                   (long long)lo, (long long)hi);
    *out = x;
    return 0;
}

static int get_i32(const msgpack_object *v, const char *t, const char *field, int32_t lo, int32_t hi,
                   int32_t *out, char *err)
{
    int64_t x = 0;
    if (get_int(v, t, field, lo, hi, &x, err))
        return -1;
    *out = (int32_t)x;
    return 0;
}

static int get_bool(const msgpack_object *v, const char *t, const char *field, bool *out, char *err)
{
    if (v->type != MSGPACK_OBJECT_BOOLEAN)
        return bad(err, "%s %s: must be true or false", t, field);
    *out = v->via.boolean;
    return 0;
}

/* Text into a fixed field: shorter than cap, valid UTF-8, no NUL. */
static int get_text(const msgpack_object *v, const char *t, const char *field, char *dst, size_t cap,
                    char *err)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return bad(err, "%s %s: must be a string", t, field);
    size_t n = v->via.str.size;
    const char *s = v->via.str.ptr;
    if (n >= cap || !apr_utf8_valid(s, n) || memchr(s, 0, n))
        return bad(err, "%s %s: must be UTF-8 text under %zu bytes without NUL", t, field, cap);
    memcpy(dst, s, n);
    dst[n] = 0;
    return 0;
}

/* One of the step arrays: 1..APR_WORKER_MAX_BATCH entries, checked before
 * anything is allocated; *n is the length (the caller compares them). */
static int get_array(const msgpack_object *v, const char *field, int32_t *n, char *err)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return bad(err, "step %s: must be an array", field);
    uint32_t size = v->via.array.size;
    if (size < 1 || size > APR_WORKER_MAX_BATCH)
        return bad(err, "step %s: %u entries (1..%d allowed)", field, size, APR_WORKER_MAX_BATCH);
    *n = (int32_t)size;
    return 0;
}

static int get_ints(const msgpack_object *v, const char *field, int32_t **out, int32_t *n, char *err)
{
    if (get_array(v, field, n, err))
        return -1;
    int32_t *a = malloc((size_t)*n * sizeof *a);
    if (a == NULL)
        return bad(err, "step %s: out of memory", field);
    *out = a; /* owned by the message from here, so errors below free it */
    char name[32];
    for (int32_t i = 0; i < *n; i++) {
        snprintf(name, sizeof name, "%s[%d]", field, (int)i);
        if (get_i32(&v->via.array.ptr[i], "step", name, 0, INT32_MAX, &a[i], err))
            return -1;
    }
    return 0;
}

/* topk: unsigned, 0..APR_TOPK_MAX each (want[i] is checked once all keys
 * are read: the map's order is the sender's). */
static int get_topk(const msgpack_object *v, uint8_t **out, int32_t *n, char *err)
{
    if (get_array(v, "topk", n, err))
        return -1;
    uint8_t *a = malloc((size_t)*n);
    if (a == NULL)
        return bad(err, "step topk: out of memory");
    *out = a;
    for (int32_t i = 0; i < *n; i++) {
        int32_t k = 0;
        char name[32];
        snprintf(name, sizeof name, "topk[%d]", (int)i);
        if (get_i32(&v->via.array.ptr[i], "step", name, 0, APR_TOPK_MAX, &k, err))
            return -1;
        a[i] = (uint8_t)k;
    }
    return 0;
}

static int get_bools(const msgpack_object *v, uint8_t **out, int32_t *n, char *err)
{
    if (get_array(v, "want", n, err))
        return -1;
    uint8_t *a = malloc((size_t)*n);
    if (a == NULL)
        return bad(err, "step want: out of memory");
    *out = a;
    for (int32_t i = 0; i < *n; i++) {
        bool b = false;
        char name[32];
        snprintf(name, sizeof name, "want[%d]", (int)i);
        if (get_bool(&v->via.array.ptr[i], "step", name, &b, err))
            return -1;
        a[i] = b;
    }
    return 0;
}

/* The step array lengths, for the equal-length check. */
typedef struct {
    int32_t token, pos, seq, want, topk; /* topk: -1 when absent */
} lens;

static int read_key(int k, const msgpack_object *v, apr_wmsg *m, lens *ln, char *err)
{
    const char *t = apr_wtype_str(m->type);
    int64_t x = 0;
    int rc = 0;
    switch (k) {
    case K_OK:
        return get_bool(v, t, "ok", &m->ok, err);
    case K_ERROR:
        return get_text(v, t, "error", m->error, sizeof m->error, err);
    case K_BACKEND:
        rc = get_text(v, t, "backend", m->backend, sizeof m->backend, err);
        if (rc == 0 && strcmp(m->backend, "cpu") && strcmp(m->backend, "cuda"))
            rc = bad(err, "hello backend: must be \"cpu\" or \"cuda\"");
        return rc;
    case K_PID:
        rc = get_int(v, t, "pid", 1, INT32_MAX, &x, err);
        m->pid = x;
        return rc;
    case K_N_VOCAB:
        return get_i32(v, t, "n_vocab", 1, INT32_MAX, &m->n_vocab, err);
    case K_N_CTX:
        return get_i32(v, t, "n_ctx", 1, INT32_MAX, &m->n_ctx, err);
    case K_N_SEQ:
        return get_i32(v, t, "n_seq", 1, INT32_MAX, &m->n_seq, err);
    case K_MAX_BATCH:
        return get_i32(v, t, "max_batch", 1, APR_WORKER_MAX_BATCH, &m->max_batch, err);
    case K_MAX_LOGITS:
        return get_i32(v, t, "max_logits", 1, APR_WORKER_MAX_BATCH, &m->max_logits, err);
    case K_KV_KEPT:
        return get_bool(v, t, "kv_kept", &m->kv_kept, err);
    case K_STEP:
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return bad(err, "%s step: must be an integer in [0, 2^64-1]", t);
        m->step = v->via.u64;
        return 0;
    case K_N_LOGITS:
        return get_i32(v, t, "n_logits", 0, APR_WORKER_MAX_BATCH, &m->n_logits, err);
    case K_MS:
        if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
            m->ms = v->via.f64;
        else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            m->ms = (double)v->via.u64;
        else
            return bad(err, "done ms: must be a number");
        if (!isfinite(m->ms) || m->ms < 0)
            return bad(err, "done ms: must be a finite number >= 0");
        return 0;
    case K_TOKEN:
        return get_ints(v, "token", &m->token, &ln->token, err);
    case K_POS:
        return get_ints(v, "pos", &m->pos, &ln->pos, err);
    case K_SEQ:
        if (m->type == APR_W_TRIM)
            return get_i32(v, t, "seq", 0, INT32_MAX, &m->trim_seq, err);
        return get_ints(v, "seq", &m->seq, &ln->seq, err);
    case K_WANT:
        return get_bools(v, &m->want, &ln->want, err);
    case K_TOPK:
        return get_topk(v, &m->topk, &ln->topk, err);
    case K_AHEAD:
        return get_bool(v, t, "ahead", &m->ahead, err);
    case K_FROM:
        return get_i32(v, t, "from", 0, INT32_MAX, &m->trim_from, err);
    }
    return bad(err, "internal: key %d", k);
}

static int parse_map(const msgpack_object *root, apr_wmsg *m, char *err)
{
    if (root->type != MSGPACK_OBJECT_MAP)
        return bad(err, "worker message is not a msgpack map");
    const msgpack_object_kv *kv = root->via.map.ptr;
    uint32_t n = root->via.map.size;

    /* the type first: it decides what the other keys mean */
    for (uint32_t i = 0; i < n; i++) {
        if (kv[i].key.type != MSGPACK_OBJECT_STR)
            return bad(err, "worker message: map keys must be strings");
        if (!apr_mp_key_is(&kv[i].key, "t"))
            continue;
        if (m->type != APR_W_NONE)
            return bad(err, "worker message: duplicate key t");
        for (int w = 1; w < APR_W_COUNT_ && m->type == APR_W_NONE; w++)
            if (apr_mp_key_is(&kv[i].val, wtype_names[w]))
                m->type = (apr_wtype)w;
        if (m->type == APR_W_NONE) {
            if (kv[i].val.type != MSGPACK_OBJECT_STR)
                return bad(err, "worker message: unknown type t (not a string)");
            char q[64];
            apr_mp_quote(q, sizeof q, kv[i].val.via.str.ptr, kv[i].val.via.str.size);
            return bad(err, "worker message: unknown type t '%s'", q);
        }
    }
    if (m->type == APR_W_NONE)
        return bad(err, "worker message has no type (key t)");

    unsigned got = 0;
    lens ln = {0, 0, 0, 0, -1};
    for (uint32_t i = 0; i < n; i++) {
        for (int k = 0; k < K_COUNT; k++) {
            if (!(keys[k].types & TB(m->type)) || !apr_mp_key_is(&kv[i].key, keys[k].name))
                continue;
            if (got & KB(k))
                return bad(err, "%s: duplicate key %s", apr_wtype_str(m->type), keys[k].name);
            got |= KB(k);
            if (read_key(k, &kv[i].val, m, &ln, err))
                return -1;
        }
    }

    unsigned need = required[m->type];
    if (m->type == APR_W_HELLO)
        need |= m->ok ? HELLO_SIZES : KB(K_ERROR);
    if (m->type == APR_W_DONE && !m->ok)
        need |= KB(K_ERROR);
    for (int k = 0; k < K_COUNT; k++)
        if ((need & ~got) & KB(k))
            return bad(err, "%s: missing key %s", apr_wtype_str(m->type), keys[k].name);

    if (m->type == APR_W_STEP) {
        if (ln.pos != ln.token || ln.seq != ln.token || ln.want != ln.token)
            return bad(err, "step: token, pos, seq and want must be as long (%d, %d, %d, %d)",
                       (int)ln.token, (int)ln.pos, (int)ln.seq, (int)ln.want);
        if (ln.topk >= 0 && ln.topk != ln.token)
            return bad(err, "step: topk has %d entries, token %d", (int)ln.topk, (int)ln.token);
        for (int32_t i = 0; m->topk && i < ln.token; i++)
            if (m->topk[i] && !m->want[i])
                return bad(err, "step topk[%d]: %d candidates for an entry without want", (int)i,
                           (int)m->topk[i]);
        m->n = ln.token;
    }
    return 0;
}

int apr_wmsg_parse(const void *frame, size_t len, apr_wmsg *out, char err[APR_ERRLEN])
{
    memset(out, 0, sizeof *out);
    if (frame == NULL || len == 0)
        return bad(err, "empty worker message");
    if (len > WMSG_MAX_FRAME)
        return bad(err, "worker message of %zu bytes is over the limit (%zu)", len, WMSG_MAX_FRAME);
    /* before msgpack-c: it allocates by declared counts */
    if (apr_mp_scan(frame, len, APR_MP_MAX_DEPTH, WMSG_MAX_OBJECTS, err) != APR_PERR_NONE)
        return -1;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rc = apr_mp_unpack(frame, len, &u, err);
    if (rc == 0)
        rc = parse_map(&u.data, out, err);
    msgpack_unpacked_destroy(&u);
    if (rc)
        apr_wmsg_free(out);
    return rc;
}

void apr_wmsg_free(apr_wmsg *m)
{
    if (m == NULL)
        return;
    free(m->token);
    free(m->pos);
    free(m->seq);
    free(m->want);
    free(m->topk);
    memset(m, 0, sizeof *m);
}

/* -------------------------------------------------------- shared memory */

static void shm_reset(apr_shm *s)
{
    s->fd = -1;
    s->base = NULL;
    s->size = 0;
}

int apr_shm_create(apr_shm *s, const char *name, size_t size, char err[APR_ERRLEN])
{
    shm_reset(s);
    if (size == 0)
        return bad(err, "shm %s: size 0", name);
    /* no MFD_CLOEXEC: the worker we exec inherits the fd by number */
    int fd = memfd_create(name, MFD_ALLOW_SEALING);
    if (fd < 0)
        return bad(err, "memfd_create %s: %s", name, strerror(errno));
    if (ftruncate(fd, (off_t)size) != 0) {
        bad(err, "shm %s: resizing to %zu bytes: %s", name, size, strerror(errno));
        close(fd);
        return -1;
    }
    /* The worker holds the same fd: a confused one that shrank it would
     * turn our reads past the new end into SIGBUS. Seal the size. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        bad(err, "shm %s: sealing: %s", name, strerror(errno));
        close(fd);
        return -1;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        bad(err, "shm %s: mmap of %zu bytes: %s", name, size, strerror(errno));
        close(fd);
        return -1;
    }
    s->fd = fd;
    s->base = p;
    s->size = size;
    return 0;
}

int apr_shm_attach(apr_shm *s, int fd, size_t min_size, char err[APR_ERRLEN])
{
    shm_reset(s);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0)
        return bad(err, "shared memory fd %d: %s", fd, fd < 0 ? "not a descriptor" : strerror(errno));
    if (!S_ISREG(st.st_mode))
        return bad(err, "shared memory fd %d: not a memory file", fd);
    size_t size = (size_t)st.st_size;
    if (size == 0 || size < min_size)
        return bad(err, "shared memory fd %d: %zu bytes, %zu needed", fd, size, min_size);
    /* the peer holds the fd too: unless it cannot shrink, writes past a new
     * end would kill us with SIGBUS */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK))
        return bad(err, "shared memory fd %d: not sealed against shrinking (not from apr_shm_create)", fd);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return bad(err, "shared memory fd %d: mmap of %zu bytes: %s", fd, size, strerror(errno));
    s->fd = fd;
    s->base = p;
    s->size = size;
    return 0;
}

void apr_shm_close(apr_shm *s)
{
    /* base is set only after a successful create/attach: a zeroed struct
     * must not close fd 0 */
    if (s == NULL || s->base == NULL)
        return;
    munmap(s->base, s->size);
    close(s->fd);
    shm_reset(s);
}
