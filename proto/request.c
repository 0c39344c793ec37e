/* Client requests: strict parsing (every frame is hostile) and encoding.
 *
 * Policy, also in PROTOCOL.md: unknown keys are an error (invalid_param), so
 * a misspelt parameter never silently falls back to its default; a known key
 * that the op does not use is an error too. nil stands for "default" on every
 * optional key. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto_internal.h"

static const char *const op_names[APR_OP_COUNT_] = {
    [APR_OP_NONE] = "?",
    [APR_OP_GENERATE] = "generate",
    [APR_OP_CHAT] = "chat",
    [APR_OP_TOKENIZE] = "tokenize",
    [APR_OP_DETOKENIZE] = "detokenize",
    [APR_OP_STATUS] = "status",
    [APR_OP_CANCEL] = "cancel",
};

const char *apr_op_str(apr_op op)
{
    if ((int)op <= 0 || op >= APR_OP_COUNT_)
        return "?";
    return op_names[op];
}

#define OPB(op) (1u << (op))
#define OPS_ALL 0xfffeu
#define OPS_GEN (OPB(APR_OP_GENERATE) | OPB(APR_OP_CHAT))

enum {
    K_V, K_ID, K_OP,
    K_PROMPT, K_PROMPT_TOKENS, K_MESSAGES, K_TEXT, K_TOKENS,
    K_ADD_SPECIAL, K_PARSE_SPECIAL,
    K_MAX_TOKENS, K_TEMPERATURE, K_TOP_K, K_TOP_P, K_MIN_P, K_REPEAT_PENALTY, K_REPEAT_LAST_N,
    K_PRESENCE, K_FREQUENCY, K_SEED, K_STOP, K_STREAM,
    K_COUNT
};

static const struct {
    const char *name;
    unsigned ops;
} keys[K_COUNT] = {
    [K_V] = {"v", OPS_ALL},
    [K_ID] = {"id", OPS_ALL},
    [K_OP] = {"op", OPS_ALL},
    [K_PROMPT] = {"prompt", OPB(APR_OP_GENERATE)},
    [K_PROMPT_TOKENS] = {"prompt_tokens", OPB(APR_OP_GENERATE)},
    [K_MESSAGES] = {"messages", OPB(APR_OP_CHAT)},
    [K_TEXT] = {"text", OPB(APR_OP_TOKENIZE)},
    [K_TOKENS] = {"tokens", OPB(APR_OP_DETOKENIZE)},
    [K_ADD_SPECIAL] = {"add_special", OPB(APR_OP_GENERATE) | OPB(APR_OP_TOKENIZE)},
    [K_PARSE_SPECIAL] = {"parse_special", OPB(APR_OP_GENERATE) | OPB(APR_OP_TOKENIZE)},
    [K_MAX_TOKENS] = {"max_tokens", OPS_GEN},
    [K_TEMPERATURE] = {"temperature", OPS_GEN},
    [K_TOP_K] = {"top_k", OPS_GEN},
    [K_TOP_P] = {"top_p", OPS_GEN},
    [K_MIN_P] = {"min_p", OPS_GEN},
    [K_REPEAT_PENALTY] = {"repeat_penalty", OPS_GEN},
    [K_REPEAT_LAST_N] = {"repeat_last_n", OPS_GEN},
    [K_PRESENCE] = {"presence_penalty", OPS_GEN},
    [K_FREQUENCY] = {"frequency_penalty", OPS_GEN},
    [K_SEED] = {"seed", OPS_GEN},
    [K_STOP] = {"stop", OPS_GEN},
    [K_STREAM] = {"stream", OPS_GEN},
};

static const char *const roles[] = {"system", "user", "assistant", "tool"};

void apr_sampling_default(apr_sampling *s)
{
    /* llama.cpp's defaults, so results are comparable */
    memset(s, 0, sizeof *s);
    s->temperature = 0.8f;
    s->top_k = 40;
    s->top_p = 0.95f;
    s->min_p = 0.05f;
    s->repeat_penalty = 1.0f;
    s->repeat_last_n = 64;
}

void apr_request_init(apr_request *r, apr_op op)
{
    memset(r, 0, sizeof *r);
    r->op = op;
    r->version = APR_PROTO_VERSION;
    r->add_special = op == APR_OP_GENERATE;
    r->parse_special = true;
    r->stream = true;
    apr_sampling_default(&r->sampling);
}

void apr_request_free(apr_request *r)
{
    if (r == NULL)
        return;
    free(r->prompt);
    free(r->prompt_tokens);
    for (size_t i = 0; i < r->n_messages; i++) {
        free(r->messages[i].role);
        free(r->messages[i].content);
    }
    free(r->messages);
    free(r->text);
    free(r->tokens);
    for (size_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->stop);
    apr_request_init(r, APR_OP_NONE);
}

/* ---------------------------------------------------------------- readers */

static int fail(apr_proto_error *e, apr_perr code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(apr_proto_error *e, apr_perr code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->code = code;
    return -1;
}

/* Copies a msgpack string after checking type, size and UTF-8. The copy is
 * NUL-terminated; embedded NULs are allowed only where allow_nul. */
static int read_str(const msgpack_object *v, const char *field, size_t max, apr_perr too_long,
                    bool allow_nul, char **out, size_t *outlen, apr_proto_error *e)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return fail(e, APR_PERR_INVALID_PARAM, "%s: must be a string", field);
    size_t n = v->via.str.size;
    if (n > max)
        return fail(e, too_long, "%s: %zu bytes, the limit is %zu", field, n, max);
    if (!apr_utf8_valid(v->via.str.ptr, n))
        return fail(e, APR_PERR_INVALID_PARAM, "%s: not valid UTF-8", field);
    if (!allow_nul && memchr(v->via.str.ptr, 0, n))
        return fail(e, APR_PERR_INVALID_PARAM, "%s: contains a NUL byte", field);
    char *s = malloc(n + 1);
    if (s == NULL)
        return fail(e, APR_PERR_INTERNAL, "%s: out of memory", field);
    memcpy(s, v->via.str.ptr, n);
    s[n] = 0;
    *out = s;
    if (outlen)
        *outlen = n;
    return 0;
}

static int read_int(const msgpack_object *v, const char *field, int64_t lo, int64_t hi,
                    int64_t *out, apr_proto_error *e)
{
    int64_t x;
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (v->via.u64 > (uint64_t)INT64_MAX)
            goto range;
        x = (int64_t)v->via.u64;
    } else if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        x = v->via.i64;
    } else {
        return fail(e, APR_PERR_INVALID_PARAM, "%s: must be an integer", field);
    }
    if (x < lo || x > hi)
        goto range;
    *out = x;
    return 0;
range:
    return fail(e, APR_PERR_INVALID_PARAM, "%s: must be an integer in [%lld, %lld]", field,
                (long long)lo, (long long)hi);
}

/* A number (integer or float) in [lo, hi], with either end open on request. */
static int read_num(const msgpack_object *v, const char *field, double lo, bool lo_open,
                    double hi, float *out, apr_proto_error *e)
{
    double x;
    switch (v->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER: x = (double)v->via.u64; break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: x = (double)v->via.i64; break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: x = v->via.f64; break;
    default: return fail(e, APR_PERR_INVALID_PARAM, "%s: must be a number", field);
    }
    /* written so that NaN fails */
    if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
        return fail(e, APR_PERR_INVALID_PARAM, "%s: must be a number in %c%g, %g]", field,
                    lo_open ? '(' : '[', lo, hi);
    *out = (float)x;
    return 0;
}

static int read_bool(const msgpack_object *v, const char *field, bool *out, apr_proto_error *e)
{
    if (v->type != MSGPACK_OBJECT_BOOLEAN)
        return fail(e, APR_PERR_INVALID_PARAM, "%s: must be true or false", field);
    *out = v->via.boolean;
    return 0;
}

static int read_tokens(const msgpack_object *v, const char *field, uint32_t max, int32_t **out,
                       size_t *n, apr_proto_error *e)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(e, APR_PERR_INVALID_PARAM, "%s: must be an array of token ids", field);
    size_t cnt = v->via.array.size;
    if (cnt == 0)
        return fail(e, APR_PERR_INVALID_PARAM, "%s: must not be empty", field);
    if (cnt > max)
        return fail(e, APR_PERR_TOO_LARGE, "%s: %zu tokens, the limit is %u", field, cnt, max);
    int32_t *t = malloc(cnt * sizeof *t);
    if (t == NULL)
        return fail(e, APR_PERR_INTERNAL, "%s: out of memory", field);
    for (size_t i = 0; i < cnt; i++) {
        const msgpack_object *x = &v->via.array.ptr[i];
        if (x->type != MSGPACK_OBJECT_POSITIVE_INTEGER || x->via.u64 > INT32_MAX) {
            free(t);
            return fail(e, APR_PERR_INVALID_PARAM, "%s[%zu]: must be an integer in [0, %d]", field,
                        i, INT32_MAX);
        }
        t[i] = (int32_t)x->via.u64;
    }
    *out = t;
    *n = cnt;
    return 0;
}

static int read_messages(const msgpack_object *v, const apr_proto_limits *lim, apr_request *r,
                         apr_proto_error *e)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(e, APR_PERR_INVALID_PARAM, "messages: must be an array of {role, content}");
    size_t cnt = v->via.array.size;
    if (cnt == 0)
        return fail(e, APR_PERR_INVALID_PARAM, "messages: must not be empty");
    if (cnt > lim->max_messages)
        return fail(e, APR_PERR_TOO_LARGE, "messages: %zu messages, the limit is %u", cnt,
                    lim->max_messages);
    r->messages = calloc(cnt, sizeof *r->messages);
    if (r->messages == NULL)
        return fail(e, APR_PERR_INTERNAL, "messages: out of memory");
    size_t total = 0;
    char field[64];
    for (size_t i = 0; i < cnt; i++) {
        const msgpack_object *m = &v->via.array.ptr[i];
        apr_wire_msg *out = &r->messages[i];
        r->n_messages = i + 1; /* so apr_request_free sees what was taken */
        if (m->type != MSGPACK_OBJECT_MAP)
            return fail(e, APR_PERR_INVALID_PARAM, "messages[%zu]: must be a map {role, content}", i);
        for (uint32_t j = 0; j < m->via.map.size; j++) {
            const msgpack_object *k = &m->via.map.ptr[j].key, *val = &m->via.map.ptr[j].val;
            if (apr_mp_key_is(k, "role")) {
                snprintf(field, sizeof field, "messages[%zu].role", i);
                if (out->role)
                    return fail(e, APR_PERR_INVALID_PARAM, "%s: duplicate key", field);
                if (read_str(val, field, 32, APR_PERR_INVALID_PARAM, false, &out->role, NULL, e))
                    return -1;
                bool known = false;
                for (size_t q = 0; q < sizeof roles / sizeof roles[0]; q++)
                    known |= strcmp(out->role, roles[q]) == 0;
                if (!known)
                    return fail(e, APR_PERR_INVALID_PARAM,
                                "%s: must be system, user, assistant or tool", field);
            } else if (apr_mp_key_is(k, "content")) {
                snprintf(field, sizeof field, "messages[%zu].content", i);
                if (out->content)
                    return fail(e, APR_PERR_INVALID_PARAM, "%s: duplicate key", field);
                if (read_str(val, field, lim->max_prompt_bytes - total, APR_PERR_TOO_LARGE, true,
                             &out->content, &out->content_len, e))
                    return -1;
                total += out->content_len;
            } else {
                char q[48] = "(not a string)";
                if (k->type == MSGPACK_OBJECT_STR)
                    apr_mp_quote(q, sizeof q, k->via.str.ptr, k->via.str.size);
                return fail(e, APR_PERR_INVALID_PARAM, "messages[%zu]: unknown key '%s'", i, q);
            }
        }
        if (out->role == NULL || out->content == NULL)
            return fail(e, APR_PERR_INVALID_PARAM, "messages[%zu]: needs both role and content", i);
    }
    return 0;
}

static int read_stop(const msgpack_object *v, const apr_proto_limits *lim, apr_request *r,
                     apr_proto_error *e)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return fail(e, APR_PERR_INVALID_PARAM, "stop: must be an array of strings");
    size_t cnt = v->via.array.size;
    if (cnt > lim->max_stop)
        return fail(e, APR_PERR_INVALID_PARAM, "stop: %zu strings, the limit is %u", cnt,
                    lim->max_stop);
    if (cnt == 0)
        return 0;
    r->stop = calloc(cnt, sizeof *r->stop);
    if (r->stop == NULL)
        return fail(e, APR_PERR_INTERNAL, "stop: out of memory");
    char field[32];
    for (size_t i = 0; i < cnt; i++) {
        snprintf(field, sizeof field, "stop[%zu]", i);
        size_t n;
        if (read_str(&v->via.array.ptr[i], field, lim->max_stop_bytes, APR_PERR_INVALID_PARAM,
                     false, &r->stop[i], &n, e))
            return -1;
        r->n_stop = i + 1;
        if (n == 0)
            return fail(e, APR_PERR_INVALID_PARAM, "%s: must not be empty", field);
    }
    return 0;
}

static int find_key(const msgpack_object *k)
{
    for (int i = 0; i < K_COUNT; i++)
        if (apr_mp_key_is(k, keys[i].name))
            return i;
    return -1;
}

static int parse_field(int key, const msgpack_object *v, const apr_proto_limits *lim,
                       apr_request *r, apr_proto_error *e)
{
    apr_sampling *s = &r->sampling;
    int64_t x;
    switch (key) {
    case K_PROMPT:
        return read_str(v, "prompt", lim->max_prompt_bytes, APR_PERR_TOO_LARGE, true, &r->prompt,
                        &r->prompt_len, e);
    case K_PROMPT_TOKENS:
        return read_tokens(v, "prompt_tokens", lim->max_input_tokens, &r->prompt_tokens,
                           &r->n_prompt_tokens, e);
    case K_MESSAGES:
        return read_messages(v, lim, r, e);
    case K_TEXT:
        return read_str(v, "text", lim->max_prompt_bytes, APR_PERR_TOO_LARGE, true, &r->text,
                        &r->text_len, e);
    case K_TOKENS:
        return read_tokens(v, "tokens", lim->max_input_tokens, &r->tokens, &r->n_tokens, e);
    case K_ADD_SPECIAL:
        return read_bool(v, "add_special", &r->add_special, e);
    case K_PARSE_SPECIAL:
        return read_bool(v, "parse_special", &r->parse_special, e);
    case K_STREAM:
        return read_bool(v, "stream", &r->stream, e);
    case K_MAX_TOKENS:
        if (read_int(v, "max_tokens", 1, lim->max_new_tokens, &x, e))
            return -1;
        r->max_tokens = (uint32_t)x;
        return 0;
    case K_TEMPERATURE:
        return read_num(v, "temperature", 0, false, 100, &s->temperature, e);
    case K_TOP_K:
        if (read_int(v, "top_k", 0, INT32_MAX, &x, e))
            return -1;
        s->top_k = (int32_t)x;
        return 0;
    case K_TOP_P:
        return read_num(v, "top_p", 0, true, 1, &s->top_p, e);
    case K_MIN_P:
        return read_num(v, "min_p", 0, false, 1, &s->min_p, e);
    case K_REPEAT_PENALTY:
        return read_num(v, "repeat_penalty", 0, true, 100, &s->repeat_penalty, e);
    case K_REPEAT_LAST_N:
        if (read_int(v, "repeat_last_n", -1, 1 << 20, &x, e))
            return -1;
        s->repeat_last_n = (int32_t)x;
        return 0;
    case K_PRESENCE:
        return read_num(v, "presence_penalty", -2, false, 2, &s->presence_penalty, e);
    case K_FREQUENCY:
        return read_num(v, "frequency_penalty", -2, false, 2, &s->frequency_penalty, e);
    case K_SEED:
        if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && v->via.i64 == -1)
            return 0; /* llama.cpp's "random" */
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return fail(e, APR_PERR_INVALID_PARAM, "seed: must be an integer in [0, 2^64) or -1");
        s->has_seed = true;
        s->seed = v->via.u64;
        return 0;
    case K_STOP:
        return read_stop(v, lim, r, e);
    default:
        return fail(e, APR_PERR_INTERNAL, "unhandled key");
    }
}

static int parse_map(const msgpack_object *root, const apr_proto_limits *lim, apr_request *r,
                     apr_proto_error *e)
{
    if (root->type != MSGPACK_OBJECT_MAP)
        return fail(e, APR_PERR_BAD_REQUEST, "a request must be a msgpack map");
    const msgpack_object_kv *kv = root->via.map.ptr;
    uint32_t n = root->via.map.size;
    const msgpack_object *opv = NULL, *vv = NULL, *idv = NULL;

    /* First the keys that decide how to read the rest: id (so errors can echo
     * it), v and op. */
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &kv[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            return fail(e, APR_PERR_BAD_REQUEST, "map keys must be strings (key %u is not)", i);
        const msgpack_object **slot = apr_mp_key_is(k, "op") ? &opv
                                      : apr_mp_key_is(k, "v") ? &vv
                                      : apr_mp_key_is(k, "id") ? &idv
                                                               : NULL;
        if (slot == NULL)
            continue;
        if (*slot)
            return fail(e, APR_PERR_INVALID_PARAM, "%.*s: duplicate key", (int)k->via.str.size,
                        k->via.str.ptr);
        *slot = &kv[i].val;
    }
    if (idv) {
        if (apr_mp_read_id(idv, &e->id, e->message)) {
            e->code = APR_PERR_INVALID_PARAM;
            return -1;
        }
        r->id = e->id;
    }
    if (vv && vv->type != MSGPACK_OBJECT_NIL) {
        if (vv->type != MSGPACK_OBJECT_POSITIVE_INTEGER && vv->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return fail(e, APR_PERR_INVALID_PARAM, "v: must be an integer protocol version");
        if (vv->type != MSGPACK_OBJECT_POSITIVE_INTEGER || vv->via.u64 != APR_PROTO_VERSION)
            return fail(e, APR_PERR_UNSUPPORTED_VERSION, "v: this server speaks version %d",
                        APR_PROTO_VERSION);
    }
    if (opv == NULL)
        return fail(e, APR_PERR_BAD_REQUEST, "op: missing (generate, chat, tokenize, ...)");
    if (opv->type != MSGPACK_OBJECT_STR)
        return fail(e, APR_PERR_INVALID_PARAM, "op: must be a string");
    apr_op op = APR_OP_NONE;
    for (int i = 1; i < APR_OP_COUNT_; i++)
        if (apr_mp_key_is(opv, op_names[i]))
            op = (apr_op)i;
    if (op == APR_OP_NONE) {
        char q[48];
        apr_mp_quote(q, sizeof q, opv->via.str.ptr, opv->via.str.size);
        return fail(e, APR_PERR_UNKNOWN_OP, "op: unknown op '%s'", q);
    }
    apr_id keep = r->id;
    apr_request_init(r, op);
    r->id = keep;

    uint32_t seen = 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &kv[i].key, *v = &kv[i].val;
        int key = find_key(k);
        if (key < 0) {
            char q[48];
            apr_mp_quote(q, sizeof q, k->via.str.ptr, k->via.str.size);
            return fail(e, APR_PERR_INVALID_PARAM, "unknown key '%s'", q);
        }
        if (key == K_V || key == K_ID || key == K_OP)
            continue;
        if (seen & (1u << key))
            return fail(e, APR_PERR_INVALID_PARAM, "%s: duplicate key", keys[key].name);
        seen |= 1u << key;
        if (!(keys[key].ops & OPB(op)))
            return fail(e, APR_PERR_INVALID_PARAM, "%s: does not apply to op %s", keys[key].name,
                        op_names[op]);
        if (v->type == MSGPACK_OBJECT_NIL)
            continue;
        if (parse_field(key, v, lim, r, e))
            return -1;
    }

    switch (op) {
    case APR_OP_GENERATE:
        if ((r->prompt != NULL) == (r->prompt_tokens != NULL))
            return fail(e, APR_PERR_INVALID_PARAM, "generate: needs exactly one of prompt, prompt_tokens");
        break;
    case APR_OP_CHAT:
        if (r->messages == NULL)
            return fail(e, APR_PERR_INVALID_PARAM, "messages: missing");
        break;
    case APR_OP_TOKENIZE:
        if (r->text == NULL)
            return fail(e, APR_PERR_INVALID_PARAM, "text: missing");
        break;
    case APR_OP_DETOKENIZE:
        if (r->tokens == NULL)
            return fail(e, APR_PERR_INVALID_PARAM, "tokens: missing");
        break;
    case APR_OP_CANCEL:
        if (r->id.kind == APR_ID_NONE)
            return fail(e, APR_PERR_INVALID_PARAM, "id: cancel needs the id of the request to cancel");
        break;
    default:
        break;
    }
    return 0;
}

int apr_request_parse_ex(const void *frame, size_t len, const apr_proto_limits *lim,
                         apr_request *out, apr_proto_error *e)
{
    memset(e, 0, sizeof *e);
    apr_request_init(out, APR_OP_NONE);
    if (frame == NULL && len > 0)
        return fail(e, APR_PERR_BAD_REQUEST, "no frame");
    if (len > lim->max_frame)
        return fail(e, APR_PERR_TOO_LARGE, "frame of %zu bytes, the limit is %zu", len,
                    lim->max_frame);
    if (len == 0)
        return fail(e, APR_PERR_BAD_REQUEST, "empty frame");
    /* The most objects a valid request can hold: keys and scalars, the stop
     * strings, five per chat message and the token array. */
    size_t max_objects = 2 * K_COUNT + 1 + (size_t)lim->max_stop + 1 + 5 * (size_t)lim->max_messages +
                         1 + lim->max_input_tokens;
    apr_perr code = apr_mp_scan(frame, len, APR_MP_MAX_DEPTH, max_objects, e->message);
    if (code != APR_PERR_NONE) {
        e->code = code;
        return -1;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rc;
    if (apr_mp_unpack(frame, len, &u, e->message)) {
        e->code = APR_PERR_BAD_REQUEST;
        rc = -1;
    } else {
        rc = parse_map(&u.data, lim, out, e);
    }
    msgpack_unpacked_destroy(&u);
    if (rc) {
        apr_request_free(out);
        return -1;
    }
    return 0;
}

int apr_request_parse(const void *frame, size_t len, apr_request *out, apr_proto_error *e)
{
    apr_proto_limits lim;
    apr_proto_limits_default(&lim);
    return apr_request_parse_ex(frame, len, &lim, out, e);
}

/* ---------------------------------------------------------------- encode */

static int pack_tokens(msgpack_packer *pk, const int32_t *t, size_t n)
{
    if (msgpack_pack_array(pk, n))
        return -1;
    for (size_t i = 0; i < n; i++)
        if (msgpack_pack_int32(pk, t[i]))
            return -1;
    return 0;
}

#define KEY(name) apr_mp_pack_cstr(pk, name)

int apr_request_encode(msgpack_sbuffer *b, const apr_request *r)
{
    msgpack_packer packer, *pk = &packer;
    msgpack_packer_init(pk, b, msgpack_sbuffer_write);
    const apr_sampling *s = &r->sampling;
    size_t n = 2 + (r->id.kind != APR_ID_NONE);
    bool gen = r->op == APR_OP_GENERATE || r->op == APR_OP_CHAT;
    switch (r->op) {
    case APR_OP_GENERATE: n += 3; break;
    case APR_OP_CHAT: n += 1; break;
    case APR_OP_TOKENIZE: n += 3; break;
    case APR_OP_DETOKENIZE: n += 1; break;
    default: break;
    }
    if (gen)
        n += 10 + (r->max_tokens > 0) + s->has_seed;
    int err = msgpack_pack_map(pk, n);
    err |= KEY("v") | msgpack_pack_uint32(pk, r->version);
    err |= KEY("op") | apr_mp_pack_cstr(pk, apr_op_str(r->op));
    if (r->id.kind != APR_ID_NONE)
        err |= KEY("id") | apr_mp_pack_id(pk, &r->id);
    switch (r->op) {
    case APR_OP_GENERATE:
        if (r->prompt_tokens)
            err |= KEY("prompt_tokens") | pack_tokens(pk, r->prompt_tokens, r->n_prompt_tokens);
        else
            err |= KEY("prompt") | apr_mp_pack_str(pk, r->prompt ? r->prompt : "", r->prompt_len);
        err |= KEY("add_special") | (r->add_special ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
        err |= KEY("parse_special") |
               (r->parse_special ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
        break;
    case APR_OP_CHAT:
        err |= KEY("messages") | msgpack_pack_array(pk, r->n_messages);
        for (size_t i = 0; i < r->n_messages; i++) {
            err |= msgpack_pack_map(pk, 2);
            err |= KEY("role") | apr_mp_pack_cstr(pk, r->messages[i].role);
            err |= KEY("content") |
                   apr_mp_pack_str(pk, r->messages[i].content, r->messages[i].content_len);
        }
        break;
    case APR_OP_TOKENIZE:
        err |= KEY("text") | apr_mp_pack_str(pk, r->text ? r->text : "", r->text_len);
        err |= KEY("add_special") | (r->add_special ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
        err |= KEY("parse_special") |
               (r->parse_special ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
        break;
    case APR_OP_DETOKENIZE:
        err |= KEY("tokens") | pack_tokens(pk, r->tokens, r->n_tokens);
        break;
    default:
        break;
    }
    if (gen) {
        if (r->max_tokens > 0)
            err |= KEY("max_tokens") | msgpack_pack_uint32(pk, r->max_tokens);
        err |= KEY("temperature") | msgpack_pack_float(pk, s->temperature);
        err |= KEY("top_k") | msgpack_pack_int32(pk, s->top_k);
        err |= KEY("top_p") | msgpack_pack_float(pk, s->top_p);
        err |= KEY("min_p") | msgpack_pack_float(pk, s->min_p);
        err |= KEY("repeat_penalty") | msgpack_pack_float(pk, s->repeat_penalty);
        err |= KEY("repeat_last_n") | msgpack_pack_int32(pk, s->repeat_last_n);
        err |= KEY("presence_penalty") | msgpack_pack_float(pk, s->presence_penalty);
        err |= KEY("frequency_penalty") | msgpack_pack_float(pk, s->frequency_penalty);
        if (s->has_seed)
            err |= KEY("seed") | msgpack_pack_uint64(pk, s->seed);
        err |= KEY("stop") | msgpack_pack_array(pk, r->n_stop);
        for (size_t i = 0; i < r->n_stop; i++)
            err |= apr_mp_pack_cstr(pk, r->stop[i]);
        err |= KEY("stream") | (r->stream ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
    }
    return err ? -1 : 0;
}
