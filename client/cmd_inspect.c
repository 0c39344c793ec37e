/* apr inspect: a GGUF file's metadata, hyper-parameters, tokenizer summary and
 * tensor table, as text or as one JSON object. A file the reader refuses gets
 * one line on stderr and exit status 1. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "client/client.h"
#include "model/model.h"

#define SHOW_ELEMS 5 /* array elements shown */
#define SHOW_CHARS 80 /* string characters shown in text mode */

static const char *vtype_name(uint32_t t)
{
    static const char *const names[] = {"u8",  "i8",  "u16",  "i16", "u32", "i32", "f32",
                                        "bool", "str", "arr", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* JSON string: escapes controls, quotes and backslashes; invalid UTF-8
 * becomes U+FFFD so the output always parses. */
static void json_str(FILE *out, const char *s, uint64_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', out);
    for (uint64_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c == '"' || c == '\\') {
            fprintf(out, "\\%c", c);
            i++;
        } else if (c == '\n') {
            fputs("\\n", out);
            i++;
        } else if (c == '\t') {
            fputs("\\t", out);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(out, "\\u%04x", c);
            i++;
        } else {
            size_t k = utf8_len(p + i, (size_t)(n - i < 4 ? n - i : 4));
            if (k) fwrite(p + i, 1, k, out);
            else fputs("\\ufffd", out);
            i += k ? k : 1;
        }
    }
    fputc('"', out);
}

/* Text mode: a string shown on one line, escaped and cut at max chars. */
static void text_str(FILE *out, const char *s, uint64_t n, uint64_t max)
{
    fputc('"', out);
    uint64_t shown = n < max ? n : max;
    for (uint64_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", out);
        else if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c < 0x20 || c == 0x7f) fprintf(out, "\\x%02x", c);
        else fputc(c, out);
    }
    fputc('"', out);
    if (n > max) fprintf(out, "... (%" PRIu64 " bytes)", n);
}

static void json_double(FILE *out, double x)
{
    if (isfinite(x)) fprintf(out, "%.17g", x);
    else fputs("null", out);
}

/* A scalar value (not str/arr). */
static void print_scalar(FILE *out, const gguf_value *v)
{
    switch (v->type) {
    case GGUF_BOOL: fputs(v->u ? "true" : "false", out); break;
    case GGUF_F32: /* shortest form that reads back as the same float, roughly */
        if (isfinite(v->f)) fprintf(out, "%.7g", v->f);
        else fputs("null", out);
        break;
    case GGUF_F64: json_double(out, v->f); break;
    case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64: fprintf(out, "%" PRId64, v->i); break;
    default: fprintf(out, "%" PRIu64, v->u); break;
    }
}

/* Element i of an array as a value (scalar arrays are raw bytes). */
static gguf_value arr_elem(const gguf_value *a, uint64_t i)
{
    gguf_value v = {.type = a->arr.type};
    switch (a->arr.type) {
    case GGUF_STR: v.str = a->arr.strs[i]; break;
    case GGUF_ARR: v = a->arr.vals[i]; break;
    case GGUF_F32: case GGUF_F64: v.f = gguf_arr_float(a, i); break;
    case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64: v.i = gguf_arr_int(a, i); break;
    case GGUF_U64: {
        uint64_t x;
        memcpy(&x, a->arr.data + 8 * i, 8); /* little-endian host */
        v.u = x;
        break;
    }
    default: v.u = (uint64_t)gguf_arr_int(a, i); break;
    }
    return v;
}

static void text_value(FILE *out, const gguf_value *v)
{
    if (v->type == GGUF_STR) {
        text_str(out, v->str.s, v->str.len, SHOW_CHARS);
    } else if (v->type == GGUF_ARR) {
        fprintf(out, "%s[%" PRIu64 "] [", vtype_name(v->arr.type), v->arr.n);
        for (uint64_t i = 0; i < v->arr.n && i < SHOW_ELEMS; i++) {
            gguf_value e = arr_elem(v, i);
            if (i) fputs(", ", out);
            if (e.type == GGUF_STR) text_str(out, e.str.s, e.str.len, 24);
            else if (e.type == GGUF_ARR) fprintf(out, "%s[%" PRIu64 "]", vtype_name(e.arr.type), e.arr.n);
            else print_scalar(out, &e);
        }
        fputs(v->arr.n > SHOW_ELEMS ? ", ...]" : "]", out);
    } else {
        print_scalar(out, v);
    }
}

static void json_value(FILE *out, const gguf_value *v)
{
    if (v->type == GGUF_STR) {
        json_str(out, v->str.s, v->str.len);
    } else if (v->type == GGUF_ARR) {
        fprintf(out, "{\"type\":\"%s\",\"count\":%" PRIu64 ",\"first\":[", vtype_name(v->arr.type), v->arr.n);
        for (uint64_t i = 0; i < v->arr.n && i < SHOW_ELEMS; i++) {
            gguf_value e = arr_elem(v, i);
            if (i) fputc(',', out);
            json_value(out, &e);
        }
        fputs("]}", out);
    } else {
        print_scalar(out, v);
    }
}

typedef struct {
    gguf_str model, pre;
    uint64_t n_tokens, n_merges;
    int64_t bos, eos;
    bool has_template;
    uint64_t template_len;
} tok_summary;

static bool tok_load(const gguf_file *f, tok_summary *t)
{
    memset(t, 0, sizeof *t);
    t->model = gguf_get_str(f, "tokenizer.ggml.model");
    t->pre = gguf_get_str(f, "tokenizer.ggml.pre");
    const gguf_value *v = gguf_get(f, "tokenizer.ggml.tokens");
    if (v && v->type == GGUF_ARR) t->n_tokens = v->arr.n;
    v = gguf_get(f, "tokenizer.ggml.merges");
    if (v && v->type == GGUF_ARR) t->n_merges = v->arr.n;
    t->bos = gguf_get_int(f, "tokenizer.ggml.bos_token_id", -1);
    t->eos = gguf_get_int(f, "tokenizer.ggml.eos_token_id", -1);
    gguf_str tpl = gguf_get_str(f, "tokenizer.chat_template");
    t->has_template = tpl.s != NULL;
    t->template_len = tpl.len;
    return t->model.s || t->n_tokens;
}

typedef struct {
    uint64_t bytes, elems;
} totals;

static totals sum_tensors(const gguf_file *f)
{
    totals s = {0, 0};
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        s.bytes += t->nbytes;
        s.elems += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    return s;
}

static void print_text(FILE *out, const char *path, const gguf_file *f)
{
    fprintf(out, "file: %s\n", path);
    fprintf(out, "GGUF v%u, alignment %" PRIu64 ", %" PRIu64 " metadata keys, %" PRIu64
                 " tensors, data at offset %" PRIu64 ", %" PRIu64 " bytes\n",
            f->version, f->alignment, f->n_kv, f->n_tensors, f->data_offset, f->size);

    gguf_str arch = gguf_get_str(f, "general.architecture");
    fputs("\narchitecture: ", out);
    if (arch.s) text_str(out, arch.s, arch.len, SHOW_CHARS);
    else fputs("(none)", out);
    fputc('\n', out);
    if (gguf_str_eq(arch, "llama") || gguf_str_eq(arch, "qwen2")) {
        apr_hparams hp;
        char err[APR_ERRLEN];
        if (apr_hparams_load(f, &hp, err)) {
            fprintf(out, "hyper-parameters: invalid: %s\n", err);
        } else {
            fprintf(out, "hyper-parameters:\n");
            fprintf(out, "  n_vocab %u, n_embd %u, n_layer %u, n_ff %u\n", hp.n_vocab, hp.n_embd, hp.n_layer,
                    hp.n_ff);
            fprintf(out, "  n_head %u, n_head_kv %u, head_dim %u, n_ctx_train %u\n", hp.n_head, hp.n_head_kv,
                    hp.head_dim, hp.n_ctx_train);
            fprintf(out, "  rope %s, rope_dim %u, rope_freq_base %g, rms_eps %g\n", hp.rope_neox ? "neox" : "normal",
                    hp.rope_dim, hp.rope_freq_base, hp.rms_eps);
        }
    }

    tok_summary tk;
    if (tok_load(f, &tk)) {
        fputs("tokenizer:\n  model ", out);
        if (tk.model.s) text_str(out, tk.model.s, tk.model.len, 32);
        else fputs("(none)", out);
        if (tk.pre.s) {
            fputs(", pre ", out);
            text_str(out, tk.pre.s, tk.pre.len, 32);
        }
        fprintf(out, ", %" PRIu64 " tokens, %" PRIu64 " merges\n", tk.n_tokens, tk.n_merges);
        fprintf(out, "  bos %" PRId64 ", eos %" PRId64 ", chat template: ", tk.bos, tk.eos);
        if (tk.has_template) fprintf(out, "yes (%" PRIu64 " bytes)\n", tk.template_len);
        else fputs("no\n", out);
    }

    fputs("\nmetadata:\n", out);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        fputs("  ", out);
        text_str(out, kv->key.s, kv->key.len, SHOW_CHARS);
        fprintf(out, " %s = ", vtype_name(kv->val.type));
        text_value(out, &kv->val);
        fputc('\n', out);
    }

    fprintf(out, "\ntensors:\n  %-32s %-5s %-26s %14s\n", "name", "type", "shape", "bytes");
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char shape[96];
        int n = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%" PRIu64, d ? " x " : "", t->ne[d]);
        fprintf(out, "  %-32s %-5s %-26s %14" PRIu64 "\n", t->name, apr_type_get(t->type)->name, shape, t->nbytes);
    }
    totals s = sum_tensors(f);
    fprintf(out, "\ntotals: %" PRIu64 " tensors, %" PRIu64 " bytes (%.1f MiB), %" PRIu64 " weights, %.2f bits per weight\n",
            f->n_tensors, s.bytes, s.bytes / 1048576.0, s.elems, s.elems ? 8.0 * s.bytes / s.elems : 0.0);
}

static void print_json(FILE *out, const char *path, const gguf_file *f)
{
    fputs("{\"file\":", out);
    json_str(out, path, strlen(path));
    fprintf(out, ",\"version\":%u,\"alignment\":%" PRIu64 ",\"data_offset\":%" PRIu64 ",\"size\":%" PRIu64,
            f->version, f->alignment, f->data_offset, f->size);
    gguf_str arch = gguf_get_str(f, "general.architecture");
    fputs(",\"architecture\":", out);
    if (arch.s) json_str(out, arch.s, arch.len);
    else fputs("null", out);

    fputs(",\"hparams\":", out);
    apr_hparams hp;
    char err[APR_ERRLEN];
    if (!(gguf_str_eq(arch, "llama") || gguf_str_eq(arch, "qwen2"))) {
        fputs("null", out);
    } else if (apr_hparams_load(f, &hp, err)) {
        fputs("{\"error\":", out);
        json_str(out, err, strlen(err));
        fputc('}', out);
    } else {
        fprintf(out,
                "{\"n_vocab\":%u,\"n_embd\":%u,\"n_layer\":%u,\"n_ff\":%u,\"n_head\":%u,\"n_head_kv\":%u,"
                "\"head_dim\":%u,\"n_ctx_train\":%u,\"rope_dim\":%u,\"rope_neox\":%s,\"rope_freq_base\":",
                hp.n_vocab, hp.n_embd, hp.n_layer, hp.n_ff, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ctx_train,
                hp.rope_dim, hp.rope_neox ? "true" : "false");
        json_double(out, hp.rope_freq_base);
        fputs(",\"rms_eps\":", out);
        json_double(out, hp.rms_eps);
        fputc('}', out);
    }

    tok_summary tk;
    fputs(",\"tokenizer\":", out);
    if (tok_load(f, &tk)) {
        fputs("{\"model\":", out);
        if (tk.model.s) json_str(out, tk.model.s, tk.model.len);
        else fputs("null", out);
        fputs(",\"pre\":", out);
        if (tk.pre.s) json_str(out, tk.pre.s, tk.pre.len);
        else fputs("null", out);
        fprintf(out, ",\"tokens\":%" PRIu64 ",\"merges\":%" PRIu64 ",\"bos\":%" PRId64 ",\"eos\":%" PRId64
                     ",\"chat_template\":%s}",
                tk.n_tokens, tk.n_merges, tk.bos, tk.eos, tk.has_template ? "true" : "false");
    } else {
        fputs("null", out);
    }

    fputs(",\"metadata\":{", out);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        if (i) fputc(',', out);
        json_str(out, f->kv[i].key.s, f->kv[i].key.len);
        fputc(':', out);
        json_value(out, &f->kv[i].val);
    }
    fputs("},\"tensors\":[", out);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        fprintf(out, "%s{\"name\":", i ? "," : "");
        json_str(out, t->name, strlen(t->name));
        fprintf(out, ",\"type\":\"%s\",\"shape\":[", apr_type_get(t->type)->name);
        for (uint32_t d = 0; d < t->n_dims; d++) fprintf(out, "%s%" PRIu64, d ? "," : "", t->ne[d]);
        fprintf(out, "],\"offset\":%" PRIu64 ",\"bytes\":%" PRIu64 "}", t->offset, t->nbytes);
    }
    totals s = sum_tensors(f);
    fprintf(out, "],\"totals\":{\"tensors\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"weights\":%" PRIu64 ",\"bits_per_weight\":",
            f->n_tensors, s.bytes, s.elems);
    json_double(out, s.elems ? 8.0 * s.bytes / s.elems : 0.0);
    fputs("}}\n", out);
}

static void usage(FILE *out)
{
    fputs("usage: apr inspect MODEL [--json]\n"
          "  Prints a GGUF file's architecture, hyper-parameters, tokenizer summary,\n"
          "  metadata and tensor table. A damaged file: one line on stderr, exit 1.\n"
          "  --json   one JSON object instead of text\n",
          out);
}

int apr_cmd_inspect(int argc, char **argv)
{
    const char *path = NULL;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "apr inspect: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (!path) {
            path = argv[i];
        } else {
            fprintf(stderr, "apr inspect: more than one file given\n");
            return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    char err[APR_ERRLEN];
    gguf_file *f = gguf_open(path, err);
    if (!f) {
        fprintf(stderr, "apr inspect: %s: %s\n", path, err);
        return 1;
    }
    if (json) print_json(stdout, path, f);
    else print_text(stdout, path, f);
    gguf_close(f);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "apr inspect: write error on standard output\n");
        return 1;
    }
    return 0;
}
