/* What the client subcommands share: strict flag parsing, the sampling flags
 * of generate and chat, endpoint and timeout flags, and JSON output. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"

/* ---------------------------------------------------------------- JSON */

void apr_json_str(FILE *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', out);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c == '"' || c == '\\') {
            fprintf(out, "\\%c", c);
        } else if (c == '\n') {
            fputs("\\n", out);
        } else if (c == '\r') {
            fputs("\\r", out);
        } else if (c == '\t') {
            fputs("\\t", out);
        } else if (c < 0x20) {
            fprintf(out, "\\u%04x", c);
        } else if (c < 0x80) {
            fputc((int)c, out);
        } else {
            /* The length its lead byte claims, then the strict check on
             * exactly that sequence; a bad byte is replaced on its own so
             * the characters after it survive. */
            size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            if (i + need <= n && apr_utf8_valid(s + i, need)) {
                fwrite(p + i, 1, need, out);
                i += need;
                continue;
            }
            fputs("\\ufffd", out);
        }
        i++;
    }
    fputc('"', out);
}

/* JSON has no NaN or infinity. */
void apr_json_num(FILE *out, double v)
{
    if (isfinite(v))
        fprintf(out, "%.15g", v);
    else
        fputs("null", out);
}

static void json_key(FILE *out, const char *key)
{
    fprintf(out, ",\"%s\":", key);
}

static void json_id(FILE *out, const apr_id *id)
{
    if (id->kind == APR_ID_INT)
        fprintf(out, "%lld", (long long)id->num);
    else if (id->kind == APR_ID_STR)
        apr_json_str(out, id->str, strlen(id->str));
    else
        fputs("null", out);
}

static void json_cstr(FILE *out, const char *s)
{
    apr_json_str(out, s, strlen(s));
}

static void json_status(FILE *out, const apr_status *s)
{
    json_key(out, "model");
    json_cstr(out, s->model);
    fprintf(out, ",\"n_ctx\":%u,\"n_vocab\":%u,\"running\":%u,\"queued\":%u,\"queue_limit\":%u",
            s->n_ctx, s->n_vocab, s->running, s->queued, s->queue_limit);
    fprintf(out, ",\"restarts\":%llu", (unsigned long long)s->restarts);
    json_key(out, "uptime_s");
    apr_json_num(out, s->uptime_s);
    fputs(",\"workers\":[", out);
    for (size_t i = 0; i < s->n_workers; i++) {
        const apr_worker_status *w = &s->workers[i];
        fputs(i ? ",{\"name\":" : "{\"name\":", out);
        json_cstr(out, w->name);
        json_key(out, "backend");
        json_cstr(out, w->backend);
        json_key(out, "state");
        json_cstr(out, w->state);
        fprintf(out, ",\"pid\":%lld,\"restarts\":%llu,\"sequences\":%u}", (long long)w->pid,
                (unsigned long long)w->restarts, w->sequences);
    }
    fputc(']', out);
}

void apr_json_reply(FILE *out, const apr_reply *r)
{
    fputs("{\"event\":", out);
    json_cstr(out, apr_event_str(r->event));
    json_key(out, "id");
    json_id(out, &r->id);
    switch (r->event) {
    case APR_EV_TOKEN:
        json_key(out, "text");
        apr_json_str(out, r->text, r->text_len);
        fprintf(out, ",\"token\":%d,\"index\":%u", r->token, r->index);
        break;
    case APR_EV_DONE:
        json_key(out, "finish_reason");
        json_cstr(out, apr_finish_str(r->finish));
        fprintf(out, ",\"usage\":{\"prompt_tokens\":%u,\"completion_tokens\":%u}",
                r->usage.prompt_tokens, r->usage.completion_tokens);
        fputs(",\"timings\":{\"ttft_ms\":", out);
        apr_json_num(out, r->timings.ttft_ms);
        json_key(out, "prefill_tok_s");
        apr_json_num(out, r->timings.prefill_tok_s);
        json_key(out, "decode_tok_s");
        apr_json_num(out, r->timings.decode_tok_s);
        fputc('}', out);
        if (r->text) {
            json_key(out, "text");
            apr_json_str(out, r->text, r->text_len);
        }
        break;
    case APR_EV_ERROR:
        json_key(out, "code");
        json_cstr(out, r->code_str);
        json_key(out, "message");
        json_cstr(out, r->message ? r->message : "");
        break;
    case APR_EV_TOKENS:
        fputs(",\"tokens\":[", out);
        for (size_t i = 0; i < r->n_tokens; i++)
            fprintf(out, i ? ",%d" : "%d", r->tokens[i]);
        fputc(']', out);
        break;
    case APR_EV_TEXT:
        json_key(out, "text");
        apr_json_str(out, r->text, r->text_len);
        break;
    case APR_EV_STATUS:
        json_status(out, &r->status);
        break;
    case APR_EV_CANCEL:
        fprintf(out, ",\"found\":%s", r->found ? "true" : "false");
        break;
    default:
        break;
    }
    fputc('}', out);
}

/* ------------------------------------------------------------- numbers */

/* strto* skip leading space and take a sign; a flag value should be just
 * the number, so both are checked before. */
static bool starts_like_number(const char *s)
{
    return s[0] == '-' || s[0] == '+' || s[0] == '.' || (s[0] >= '0' && s[0] <= '9');
}

int apr_parse_double(const char *s, double *out)
{
    /* strtod also reads hex floats, "inf" and "nan": none is a sane flag. */
    if (!starts_like_number(s) || strpbrk(s, "xXiInN"))
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    /* ERANGE on underflow gives a tiny or zero number, which is harmless;
     * overflow gives HUGE_VAL, which isfinite catches. */
    if (end == s || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int apr_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    if (!starts_like_number(s) || s[0] == '.')
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int apr_parse_u64(const char *s, uint64_t *out)
{
    /* strtoull takes "-1" and wraps it: only digits here. */
    if (!(s[0] >= '0' && s[0] <= '9') && s[0] != '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || errno)
        return -1;
    *out = v;
    return 0;
}

int apr_parse_ids(const char *s, size_t max, int32_t **ids, size_t *n, char err[APR_ERRLEN])
{
    *ids = NULL;
    *n = 0;
    const char *p = s;
    while (*p == ' ')
        p++;
    bool bracket = *p == '[';
    if (bracket)
        p++;
    size_t cap = 0, k = 0;
    int32_t *v = NULL;
    for (;;) {
        while (*p == ' ')
            p++;
        if (!(*p >= '0' && *p <= '9')) {
            snprintf(err, APR_ERRLEN, "expected a token id (0..2147483647) at '%.40s'", p);
            goto fail;
        }
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (errno || x > INT32_MAX) {
            snprintf(err, APR_ERRLEN, "token id %.*s is out of range", (int)(end - p), p);
            goto fail;
        }
        if (k == max) {
            snprintf(err, APR_ERRLEN, "more than %zu token ids", max);
            goto fail;
        }
        if (k == cap) {
            cap = cap ? cap * 2 : 64;
            int32_t *grown = realloc(v, cap * sizeof *v);
            if (!grown) {
                snprintf(err, APR_ERRLEN, "out of memory");
                goto fail;
            }
            v = grown;
        }
        v[k++] = (int32_t)x;
        p = end;
        while (*p == ' ')
            p++;
        if (*p != ',')
            break;
        p++;
    }
    if (bracket && *p == ']') {
        p++;
        while (*p == ' ')
            p++;
    } else if (bracket) {
        snprintf(err, APR_ERRLEN, "missing ']'");
        goto fail;
    }
    if (*p) {
        snprintf(err, APR_ERRLEN, "unexpected '%.40s' after the token ids", p);
        goto fail;
    }
    *ids = v;
    *n = k;
    return 0;
fail:
    free(v);
    return -1;
}

/* ---------------------------------------------- generation and sampling */

void apr_gen_flags_init(apr_gen_flags *g)
{
    memset(g, 0, sizeof *g);
    apr_sampling_default(&g->sampling);
}

/* A float sampling flag, the field it sets and the range PROTOCOL.md gives
 * it; an open lower end is excluded. */
typedef struct {
    const char *flag;
    size_t field; /* offset in apr_sampling */
    double lo, hi;
    bool lo_open;
    const char *range; /* as the message shows it */
} float_flag;

static const float_flag float_flags[] = {
    {"--temperature", offsetof(apr_sampling, temperature), 0, 100, false, "0..100"},
    {"--top-p", offsetof(apr_sampling, top_p), 0, 1, true, "(0, 1]"},
    {"--min-p", offsetof(apr_sampling, min_p), 0, 1, false, "0..1"},
    {"--repeat-penalty", offsetof(apr_sampling, repeat_penalty), 0, 100, true, "(0, 100]"},
    {"--presence-penalty", offsetof(apr_sampling, presence_penalty), -2, 2, false, "-2..2"},
    {"--frequency-penalty", offsetof(apr_sampling, frequency_penalty), -2, 2, false, "-2..2"},
};

int apr_gen_flag(apr_gen_flags *g, int argc, char **argv, int *i, char err[APR_ERRLEN])
{
    const char *a = argv[*i];
    size_t nf = sizeof float_flags / sizeof float_flags[0];
    size_t which = nf;
    for (size_t k = 0; k < nf; k++)
        if (!strcmp(a, float_flags[k].flag))
            which = k;
    bool known = which < nf || !strcmp(a, "-n") || !strcmp(a, "--top-k") ||
                 !strcmp(a, "--repeat-last-n") || !strcmp(a, "--seed") || !strcmp(a, "--stop");
    if (!known)
        return 0;
    if (*i + 1 >= argc) {
        snprintf(err, APR_ERRLEN, "%s needs a value", a);
        return -1;
    }
    const char *v = argv[++*i];
    int64_t x;

    if (which < nf) {
        const float_flag *f = &float_flags[which];
        double d;
        if (apr_parse_double(v, &d) || d < f->lo || d > f->hi || (f->lo_open && d == f->lo)) {
            snprintf(err, APR_ERRLEN, "%s: expected a number in %s, got '%.40s'", a, f->range, v);
            return -1;
        }
        *(float *)((char *)&g->sampling + f->field) = (float)d;
    } else if (!strcmp(a, "-n")) {
        if (apr_parse_int(v, 1, 131072, &x)) {
            snprintf(err, APR_ERRLEN, "-n: expected a whole number in 1..131072, got '%.40s'", v);
            return -1;
        }
        g->max_tokens = (uint32_t)x;
    } else if (!strcmp(a, "--top-k")) {
        if (apr_parse_int(v, 0, INT32_MAX, &x)) {
            snprintf(err, APR_ERRLEN, "--top-k: expected a whole number >= 0, got '%.40s'", v);
            return -1;
        }
        g->sampling.top_k = (int32_t)x;
    } else if (!strcmp(a, "--repeat-last-n")) {
        if (apr_parse_int(v, -1, 1048576, &x)) {
            snprintf(err, APR_ERRLEN, "--repeat-last-n: expected a whole number in -1..1048576, got '%.40s'",
                     v);
            return -1;
        }
        g->sampling.repeat_last_n = (int32_t)x;
    } else if (!strcmp(a, "--seed")) {
        uint64_t seed;
        if (!strcmp(v, "-1")) {
            g->sampling.has_seed = false;
        } else if (apr_parse_u64(v, &seed) == 0) {
            g->sampling.has_seed = true;
            g->sampling.seed = seed;
        } else {
            snprintf(err, APR_ERRLEN, "--seed: expected a whole number in 0..2^64-1 or -1, got '%.40s'",
                     v);
            return -1;
        }
    } else { /* --stop */
        size_t len = strlen(v);
        if (g->n_stop == APR_CLI_MAX_STOP) {
            snprintf(err, APR_ERRLEN, "--stop: at most %d stop strings", APR_CLI_MAX_STOP);
            return -1;
        }
        if (len == 0 || len > 256 || !apr_utf8_valid(v, len)) {
            snprintf(err, APR_ERRLEN, "--stop: expected 1..256 bytes of UTF-8 text");
            return -1;
        }
        g->stop[g->n_stop++] = argv[*i];
    }
    return 1;
}

void apr_gen_flags_apply(apr_gen_flags *g, apr_request *r)
{
    r->max_tokens = g->max_tokens;
    r->sampling = g->sampling;
    r->stop = g->n_stop ? g->stop : NULL;
    r->n_stop = g->n_stop;
}

/* ------------------------------------------------- endpoint and timeout */

const char *apr_cli_endpoint(const char *flag_value, char err[APR_ERRLEN])
{
    const char *e = flag_value, *from = "--endpoint";
    if (!e) {
        /* An empty variable is as good as unset, as shells treat it. */
        e = getenv("APR_ENDPOINT");
        from = "APR_ENDPOINT";
        if (!e || !e[0])
            return APR_DEFAULT_ENDPOINT;
    }
    char why[APR_ERRLEN];
    if (apr_endpoint_check(e, why)) {
        snprintf(err, APR_ERRLEN, "%s: %.200s", from, why);
        return NULL;
    }
    return e;
}

int apr_cli_timeout(const char *s, int *ms)
{
    double sec;
    if (apr_parse_double(s, &sec) || sec < 0 || sec > 86400)
        return -1;
    if (sec == 0) {
        *ms = -1;
        return 0;
    }
    /* A tiny positive timeout still waits a little rather than forever. */
    *ms = sec * 1000 < 1 ? 1 : (int)(sec * 1000);
    return 0;
}
