/* Server replies: encoders (the coordinator) and a decoder (the apr client,
 * tests). The decoder checks the types of every key it knows and ignores
 * keys it does not, so a newer server can add fields without breaking old
 * clients. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto_internal.h"

static const char *const event_names[APR_EV_COUNT_] = {
    [APR_EV_NONE] = "?",
    [APR_EV_TOKEN] = "token",
    [APR_EV_DONE] = "done",
    [APR_EV_ERROR] = "error",
    [APR_EV_TOKENS] = "tokens",
    [APR_EV_TEXT] = "text",
    [APR_EV_STATUS] = "status",
    [APR_EV_CANCEL] = "cancel",
};

static const char *const finish_names[APR_FINISH_COUNT_] = {
    [APR_FINISH_NONE] = "?",
    [APR_FINISH_STOP] = "stop",
    [APR_FINISH_LENGTH] = "length",
    [APR_FINISH_CANCELLED] = "cancelled",
    [APR_FINISH_ERROR] = "error",
};

const char *apr_event_str(apr_event ev)
{
    if ((int)ev <= 0 || ev >= APR_EV_COUNT_)
        return "?";
    return event_names[ev];
}

const char *apr_finish_str(apr_finish f)
{
    if ((int)f <= 0 || f >= APR_FINISH_COUNT_)
        return "?";
    return finish_names[f];
}

/* ---------------------------------------------------------------- encode */

#define KEY(name) apr_mp_pack_cstr(pk, name)

/* Starts a reply map of n entries with event and id (two of the n). */
static int head(msgpack_packer *pk, msgpack_sbuffer *b, size_t n, apr_event ev, const apr_id *id)
{
    msgpack_packer_init(pk, b, msgpack_sbuffer_write);
    int err = msgpack_pack_map(pk, n);
    err |= KEY("event") | apr_mp_pack_cstr(pk, event_names[ev]);
    err |= KEY("id") | apr_mp_pack_id(pk, id);
    return err;
}

int apr_reply_token(msgpack_sbuffer *b, const apr_id *id, const char *text, size_t len,
                    int32_t token, uint32_t index)
{
    msgpack_packer packer, *pk = &packer;
    int err = head(pk, b, 5, APR_EV_TOKEN, id);
    err |= KEY("text") | apr_mp_pack_str(pk, text, len);
    err |= KEY("token") | msgpack_pack_int32(pk, token);
    err |= KEY("index") | msgpack_pack_uint32(pk, index);
    return err ? -1 : 0;
}

int apr_reply_done(msgpack_sbuffer *b, const apr_id *id, apr_finish finish, const apr_usage *u,
                   const apr_timings *t, const char *text, size_t len)
{
    msgpack_packer packer, *pk = &packer;
    int err = head(pk, b, 5 + (text != NULL), APR_EV_DONE, id);
    err |= KEY("finish_reason") | apr_mp_pack_cstr(pk, apr_finish_str(finish));
    err |= KEY("usage") | msgpack_pack_map(pk, 2);
    err |= KEY("prompt_tokens") | msgpack_pack_uint32(pk, u->prompt_tokens);
    err |= KEY("completion_tokens") | msgpack_pack_uint32(pk, u->completion_tokens);
    err |= KEY("timings") | msgpack_pack_map(pk, 3);
    err |= KEY("ttft_ms") | msgpack_pack_double(pk, t->ttft_ms);
    err |= KEY("prefill_tok_s") | msgpack_pack_double(pk, t->prefill_tok_s);
    err |= KEY("decode_tok_s") | msgpack_pack_double(pk, t->decode_tok_s);
    if (text)
        err |= KEY("text") | apr_mp_pack_str(pk, text, len);
    return err ? -1 : 0;
}

int apr_reply_error(msgpack_sbuffer *b, const apr_id *id, apr_perr code, const char *message)
{
    msgpack_packer packer, *pk = &packer;
    int err = head(pk, b, 4, APR_EV_ERROR, id);
    err |= KEY("code") | apr_mp_pack_cstr(pk, apr_proto_code_str(code));
    err |= KEY("message") | apr_mp_pack_cstr(pk, message ? message : "");
    return err ? -1 : 0;
}

int apr_reply_tokens(msgpack_sbuffer *b, const apr_id *id, const int32_t *tokens, size_t n)
{
    msgpack_packer packer, *pk = &packer;
    int err = head(pk, b, 3, APR_EV_TOKENS, id);
    err |= KEY("tokens") | msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n && !err; i++)
        err |= msgpack_pack_int32(pk, tokens[i]);
    return err ? -1 : 0;
}

int apr_reply_text(msgpack_sbuffer *b, const apr_id *id, const char *text, size_t len)
{
    msgpack_packer packer, *pk = &packer;
    int err = head(pk, b, 3, APR_EV_TEXT, id);
    err |= KEY("text") | apr_mp_pack_str(pk, text, len);
    return err ? -1 : 0;
}

static int pack_fixed(msgpack_packer *pk, const char *s, size_t cap)
{
    return apr_mp_pack_str(pk, s, strnlen(s, cap));
}

int apr_reply_status(msgpack_sbuffer *b, const apr_id *id, const apr_status *s)
{
    msgpack_packer packer, *pk = &packer;
    int err = head(pk, b, 12, APR_EV_STATUS, id);
    err |= KEY("version") | msgpack_pack_uint32(pk, APR_PROTO_VERSION);
    err |= KEY("model") | pack_fixed(pk, s->model, sizeof s->model);
    err |= KEY("n_ctx") | msgpack_pack_uint32(pk, s->n_ctx);
    err |= KEY("n_vocab") | msgpack_pack_uint32(pk, s->n_vocab);
    err |= KEY("running") | msgpack_pack_uint32(pk, s->running);
    err |= KEY("queued") | msgpack_pack_uint32(pk, s->queued);
    err |= KEY("queue_limit") | msgpack_pack_uint32(pk, s->queue_limit);
    err |= KEY("restarts") | msgpack_pack_uint64(pk, s->restarts);
    err |= KEY("uptime_s") | msgpack_pack_double(pk, s->uptime_s);
    err |= KEY("workers") | msgpack_pack_array(pk, s->n_workers);
    for (size_t i = 0; i < s->n_workers; i++) {
        const apr_worker_status *w = &s->workers[i];
        err |= msgpack_pack_map(pk, 6);
        err |= KEY("name") | pack_fixed(pk, w->name, sizeof w->name);
        err |= KEY("backend") | pack_fixed(pk, w->backend, sizeof w->backend);
        err |= KEY("state") | pack_fixed(pk, w->state, sizeof w->state);
        err |= KEY("pid") | msgpack_pack_int64(pk, w->pid);
        err |= KEY("restarts") | msgpack_pack_uint64(pk, w->restarts);
        err |= KEY("sequences") | msgpack_pack_uint32(pk, w->sequences);
    }
    return err ? -1 : 0;
}

int apr_reply_cancel(msgpack_sbuffer *b, const apr_id *id, bool found)
{
    msgpack_packer packer, *pk = &packer;
    int err = head(pk, b, 3, APR_EV_CANCEL, id);
    err |= KEY("found") | (found ? msgpack_pack_true(pk) : msgpack_pack_false(pk));
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

static int get_u64(const msgpack_object *v, const char *field, uint64_t max, uint64_t *out, char *err)
{
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > max)
        return bad(err, "reply %s: must be an integer in [0, %llu]", field, (unsigned long long)max);
    *out = v->via.u64;
    return 0;
}

static int get_u32(const msgpack_object *v, const char *field, uint32_t *out, char *err)
{
    uint64_t x = 0;
    if (get_u64(v, field, UINT32_MAX, &x, err))
        return -1;
    *out = (uint32_t)x;
    return 0;
}

static int get_dbl(const msgpack_object *v, const char *field, double *out, char *err)
{
    double x;
    if (v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64)
        x = v->via.f64;
    else if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        x = (double)v->via.u64;
    else
        return bad(err, "reply %s: must be a number", field);
    if (!isfinite(x) || x < 0)
        return bad(err, "reply %s: must be a finite number >= 0", field);
    *out = x;
    return 0;
}

static int get_text(const msgpack_object *v, const char *field, char **out, size_t *len, char *err)
{
    if (v->type != MSGPACK_OBJECT_STR)
        return bad(err, "reply %s: must be a string", field);
    if (!apr_utf8_valid(v->via.str.ptr, v->via.str.size))
        return bad(err, "reply %s: not valid UTF-8", field);
    if (*out)
        return bad(err, "reply %s: duplicate key", field);
    char *s = malloc(v->via.str.size + 1);
    if (s == NULL)
        return bad(err, "reply %s: out of memory", field);
    memcpy(s, v->via.str.ptr, v->via.str.size);
    s[v->via.str.size] = 0;
    *out = s;
    if (len)
        *len = v->via.str.size;
    return 0;
}

/* Copies a short string into a fixed field (NUL-terminated, no NUL inside). */
static int get_fixed(const msgpack_object *v, const char *field, char *dst, size_t cap, char *err)
{
    if (v->type != MSGPACK_OBJECT_STR || v->via.str.size >= cap ||
        !apr_utf8_valid(v->via.str.ptr, v->via.str.size) ||
        memchr(v->via.str.ptr, 0, v->via.str.size))
        return bad(err, "reply %s: must be a UTF-8 string under %zu bytes", field, cap);
    memcpy(dst, v->via.str.ptr, v->via.str.size);
    dst[v->via.str.size] = 0;
    return 0;
}

static int get_tokens(const msgpack_object *v, apr_reply *r, char *err)
{
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return bad(err, "reply tokens: must be an array");
    if (r->tokens)
        return bad(err, "reply tokens: duplicate key");
    size_t n = v->via.array.size;
    r->tokens = malloc((n ? n : 1) * sizeof *r->tokens);
    if (r->tokens == NULL)
        return bad(err, "reply tokens: out of memory");
    for (size_t i = 0; i < n; i++) {
        uint64_t x = 0;
        if (get_u64(&v->via.array.ptr[i], "tokens[]", INT32_MAX, &x, err))
            return -1;
        r->tokens[i] = (int32_t)x;
    }
    r->n_tokens = n;
    return 0;
}

static int get_usage(const msgpack_object *v, apr_usage *u, char *err)
{
    if (v->type != MSGPACK_OBJECT_MAP)
        return bad(err, "reply usage: must be a map");
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key, *x = &v->via.map.ptr[i].val;
        if (apr_mp_key_is(k, "prompt_tokens") && get_u32(x, "usage.prompt_tokens", &u->prompt_tokens, err))
            return -1;
        if (apr_mp_key_is(k, "completion_tokens") &&
            get_u32(x, "usage.completion_tokens", &u->completion_tokens, err))
            return -1;
    }
    return 0;
}

static int get_timings(const msgpack_object *v, apr_timings *t, char *err)
{
    if (v->type != MSGPACK_OBJECT_MAP)
        return bad(err, "reply timings: must be a map");
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key, *x = &v->via.map.ptr[i].val;
        if (apr_mp_key_is(k, "ttft_ms") && get_dbl(x, "timings.ttft_ms", &t->ttft_ms, err))
            return -1;
        if (apr_mp_key_is(k, "prefill_tok_s") && get_dbl(x, "timings.prefill_tok_s", &t->prefill_tok_s, err))
            return -1;
        if (apr_mp_key_is(k, "decode_tok_s") && get_dbl(x, "timings.decode_tok_s", &t->decode_tok_s, err))
            return -1;
    }
    return 0;
}

static int get_worker(const msgpack_object *v, apr_worker_status *w, char *err)
{
    if (v->type != MSGPACK_OBJECT_MAP)
        return bad(err, "reply workers[]: must be a map");
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key, *x = &v->via.map.ptr[i].val;
        int rc = 0;
        if (apr_mp_key_is(k, "name"))
            rc = get_fixed(x, "workers[].name", w->name, sizeof w->name, err);
        else if (apr_mp_key_is(k, "backend"))
            rc = get_fixed(x, "workers[].backend", w->backend, sizeof w->backend, err);
        else if (apr_mp_key_is(k, "state"))
            rc = get_fixed(x, "workers[].state", w->state, sizeof w->state, err);
        else if (apr_mp_key_is(k, "pid")) {
            if (x->type == MSGPACK_OBJECT_POSITIVE_INTEGER && x->via.u64 <= INT64_MAX)
                w->pid = (int64_t)x->via.u64;
            else if (x->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
                w->pid = x->via.i64;
            else
                rc = bad(err, "reply workers[].pid: must be an integer");
        } else if (apr_mp_key_is(k, "restarts"))
            rc = get_u64(x, "workers[].restarts", UINT64_MAX, &w->restarts, err);
        else if (apr_mp_key_is(k, "sequences"))
            rc = get_u32(x, "workers[].sequences", &w->sequences, err);
        if (rc)
            return -1;
    }
    return 0;
}

static int get_status_key(const msgpack_object *k, const msgpack_object *x, apr_status *s, char *err)
{
    if (apr_mp_key_is(k, "model"))
        return get_fixed(x, "model", s->model, sizeof s->model, err);
    if (apr_mp_key_is(k, "n_ctx"))
        return get_u32(x, "n_ctx", &s->n_ctx, err);
    if (apr_mp_key_is(k, "n_vocab"))
        return get_u32(x, "n_vocab", &s->n_vocab, err);
    if (apr_mp_key_is(k, "running"))
        return get_u32(x, "running", &s->running, err);
    if (apr_mp_key_is(k, "queued"))
        return get_u32(x, "queued", &s->queued, err);
    if (apr_mp_key_is(k, "queue_limit"))
        return get_u32(x, "queue_limit", &s->queue_limit, err);
    if (apr_mp_key_is(k, "restarts"))
        return get_u64(x, "restarts", UINT64_MAX, &s->restarts, err);
    if (apr_mp_key_is(k, "uptime_s"))
        return get_dbl(x, "uptime_s", &s->uptime_s, err);
    if (apr_mp_key_is(k, "workers")) {
        if (x->type != MSGPACK_OBJECT_ARRAY || x->via.array.size > APR_STATUS_MAX_WORKERS)
            return bad(err, "reply workers: must be an array of at most %d", APR_STATUS_MAX_WORKERS);
        if (s->workers)
            return bad(err, "reply workers: duplicate key");
        s->workers = calloc(x->via.array.size + 1, sizeof *s->workers);
        if (s->workers == NULL)
            return bad(err, "reply workers: out of memory");
        s->n_workers = x->via.array.size;
        for (size_t i = 0; i < s->n_workers; i++)
            if (get_worker(&x->via.array.ptr[i], &s->workers[i], err))
                return -1;
    }
    return 0;
}

/* The keys each event must carry, as bits of the key names below. */
enum { R_TEXT = 1, R_TOKEN = 2, R_INDEX = 4, R_FINISH = 8, R_CODE = 16, R_MESSAGE = 32,
       R_TOKENS = 64, R_FOUND = 128 };

static const unsigned required[APR_EV_COUNT_] = {
    [APR_EV_TOKEN] = R_TEXT | R_TOKEN | R_INDEX,
    [APR_EV_DONE] = R_FINISH,
    [APR_EV_ERROR] = R_CODE | R_MESSAGE,
    [APR_EV_TOKENS] = R_TOKENS,
    [APR_EV_TEXT] = R_TEXT,
    [APR_EV_CANCEL] = R_FOUND,
};

static int parse_reply(const msgpack_object *root, apr_reply *r, char *err)
{
    if (root->type != MSGPACK_OBJECT_MAP)
        return bad(err, "reply is not a msgpack map");
    const msgpack_object_kv *kv = root->via.map.ptr;
    uint32_t n = root->via.map.size;
    for (uint32_t i = 0; i < n; i++) {
        if (!apr_mp_key_is(&kv[i].key, "event"))
            continue;
        for (int ev = 1; ev < APR_EV_COUNT_; ev++)
            if (apr_mp_key_is(&kv[i].val, event_names[ev]))
                r->event = (apr_event)ev;
        if (r->event == APR_EV_NONE)
            return bad(err, "reply event: unknown or not a string");
    }
    if (r->event == APR_EV_NONE)
        return bad(err, "reply has no event");

    unsigned got = 0;
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *k = &kv[i].key, *v = &kv[i].val;
        int rc = 0;
        if (k->type != MSGPACK_OBJECT_STR)
            return bad(err, "reply map keys must be strings");
        if (apr_mp_key_is(k, "id")) {
            rc = apr_mp_read_id(v, &r->id, err);
        } else if (r->event == APR_EV_STATUS) {
            rc = get_status_key(k, v, &r->status, err);
        } else if (apr_mp_key_is(k, "text") &&
                   (r->event == APR_EV_TOKEN || r->event == APR_EV_TEXT || r->event == APR_EV_DONE)) {
            rc = get_text(v, "text", &r->text, &r->text_len, err);
            got |= R_TEXT;
        } else if (apr_mp_key_is(k, "token") && r->event == APR_EV_TOKEN) {
            uint64_t x = 0;
            rc = get_u64(v, "token", INT32_MAX, &x, err);
            r->token = (int32_t)x;
            got |= R_TOKEN;
        } else if (apr_mp_key_is(k, "index") && r->event == APR_EV_TOKEN) {
            rc = get_u32(v, "index", &r->index, err);
            got |= R_INDEX;
        } else if (apr_mp_key_is(k, "finish_reason") && r->event == APR_EV_DONE) {
            for (int f = 1; f < APR_FINISH_COUNT_; f++)
                if (apr_mp_key_is(v, finish_names[f]))
                    r->finish = (apr_finish)f;
            if (r->finish == APR_FINISH_NONE)
                rc = bad(err, "reply finish_reason: unknown");
            got |= R_FINISH;
        } else if (apr_mp_key_is(k, "usage") && r->event == APR_EV_DONE) {
            rc = get_usage(v, &r->usage, err);
        } else if (apr_mp_key_is(k, "timings") && r->event == APR_EV_DONE) {
            rc = get_timings(v, &r->timings, err);
        } else if (apr_mp_key_is(k, "code") && r->event == APR_EV_ERROR) {
            rc = get_fixed(v, "code", r->code_str, sizeof r->code_str, err);
            r->code = APR_PERR_INTERNAL;
            for (int c = 1; c < APR_PERR_COUNT_ && !rc; c++)
                if (strcmp(r->code_str, apr_proto_code_str((apr_perr)c)) == 0)
                    r->code = (apr_perr)c;
            got |= R_CODE;
        } else if (apr_mp_key_is(k, "message") && r->event == APR_EV_ERROR) {
            rc = get_text(v, "message", &r->message, NULL, err);
            got |= R_MESSAGE;
        } else if (apr_mp_key_is(k, "tokens") && r->event == APR_EV_TOKENS) {
            rc = get_tokens(v, r, err);
            got |= R_TOKENS;
        } else if (apr_mp_key_is(k, "found") && r->event == APR_EV_CANCEL) {
            if (v->type != MSGPACK_OBJECT_BOOLEAN)
                rc = bad(err, "reply found: must be true or false");
            else
                r->found = v->via.boolean;
            got |= R_FOUND;
        }
        if (rc)
            return -1;
    }
    unsigned missing = required[r->event] & ~got;
    if (missing)
        return bad(err, "reply %s: missing a required key (mask 0x%x)", event_names[r->event], missing);
    return 0;
}

int apr_reply_parse(const void *frame, size_t len, apr_reply *out, char err[APR_ERRLEN])
{
    memset(out, 0, sizeof *out);
    if (frame == NULL || len == 0)
        return bad(err, "empty reply frame");
    if (len > APR_REPLY_MAX_FRAME)
        return bad(err, "reply frame of %zu bytes is over the limit", len);
    /* A tokens reply is one object per token; more than this is not ours,
     * and bounds what msgpack-c allocates (24 bytes an object). */
    if (apr_mp_scan(frame, len, APR_MP_MAX_DEPTH, (size_t)1 << 21, err) != APR_PERR_NONE)
        return -1;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rc = apr_mp_unpack(frame, len, &u, err);
    if (rc == 0)
        rc = parse_reply(&u.data, out, err);
    msgpack_unpacked_destroy(&u);
    if (rc)
        apr_reply_free(out);
    return rc;
}

void apr_reply_free(apr_reply *r)
{
    if (r == NULL)
        return;
    free(r->text);
    free(r->message);
    free(r->tokens);
    free(r->status.workers);
    memset(r, 0, sizeof *r);
}
