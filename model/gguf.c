/* GGUF reader.
 *
 * The file is treated as hostile: every count, length, type id, dimension and
 * offset is checked against the bytes that are actually left before it is
 * used, with arithmetic that cannot overflow. Strings and scalar arrays point
 * into the image (no copies, no per-string allocation), so a 150k-entry vocab
 * costs one allocation for its string index and parses in a few ms.
 *
 * Layout (v2 and v3 are identical apart from v3 allowing big-endian files,
 * which we refuse): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, the
 * key/value pairs, the tensor infos, padding to general.alignment, then data.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define MAX_DEPTH 8            /* nested arrays deeper than this are refused */
#define MAX_KV (1u << 16)      /* real files have a few dozen keys */
#define MAX_TENSORS (1u << 20)
#define MAX_KEY_LEN 65535
#define MAX_ELEMS (1ull << 40) /* elements in one tensor */
#define MAX_ALIGNMENT (1u << 30)

/* Smallest encodings, used to bound counts by the bytes left before any
 * allocation: a key/value needs a key length, one key byte, a type and one
 * value byte; a tensor info a name length, one name byte, n_dims, one
 * dimension, a type and an offset; a string its length. */
#define MIN_KV_BYTES (8 + 1 + 4 + 1)
#define MIN_TENSOR_BYTES (8 + 1 + 4 + 8 + 4 + 8)
#define MIN_STR_BYTES 8
#define MIN_ARR_BYTES (4 + 8)

/* Every allocation the reader makes for one file hangs off this list, so
 * gguf_close (and every error path) frees it in one walk. */
typedef struct alloc_hdr {
    struct alloc_hdr *next;
    max_align_t data[];
} alloc_hdr;

typedef struct {
    alloc_hdr *allocs;
    uint32_t *kv_hash; /* index + 1 into kv, 0 = empty */
    uint64_t kv_cap;   /* power of two */
    uint32_t *t_hash;  /* index + 1 into tensors */
    uint64_t t_cap;
    void *map; /* gguf_open's mapping, NULL for gguf_parse */
    size_t map_len;
} reader_priv;

typedef struct {
    const uint8_t *p;
    uint64_t len, pos;
    reader_priv *pv;
    char *err;
} reader;

static int fail(reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(reader *r, const char *fmt, ...)
{
    if (r->err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, APR_ERRLEN, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static void *palloc(reader_priv *pv, uint64_t size)
{
    if (size > SIZE_MAX - sizeof(alloc_hdr)) return NULL;
    alloc_hdr *h = malloc(sizeof(alloc_hdr) + (size_t)size);
    if (!h) return NULL;
    h->next = pv->allocs;
    pv->allocs = h;
    return h->data;
}

/* A printable, bounded copy of a name from the file for error messages:
 * control bytes and quotes become '?', long names are cut with "...". */
static const char *printable(gguf_str s, char out[72])
{
    size_t n = s.len < 64 ? (size_t)s.len : 64, j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.s[i];
        out[j++] = (c < 0x20 || c == 0x7f || c == '\'') ? '?' : (char)c;
    }
    if (s.len > 64) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = 0;
    return out;
}

static const char *printable_c(const char *name, char out[72])
{
    gguf_str s = {.s = name, .len = strlen(name)};
    return printable(s, out);
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static uint64_t left(const reader *r) { return r->len - r->pos; }

/* Reads an n-byte little-endian integer; what names it for the error. */
static int rd_int(reader *r, int n, uint64_t *v, const char *ctx, const char *what)
{
    *v = 0;
    if (left(r) < (uint64_t)n)
        return fail(r, "%s%struncated: file ends inside %s", ctx, *ctx ? ": " : "", what);
    *v = le(r->p + r->pos, n);
    r->pos += (uint64_t)n;
    return 0;
}

static int rd_u32(reader *r, uint32_t *v, const char *ctx, const char *what)
{
    uint64_t x = 0;
    if (rd_int(r, 4, &x, ctx, what)) return -1;
    *v = (uint32_t)x;
    return 0;
}

static int rd_str(reader *r, gguf_str *s, const char *ctx, const char *what)
{
    uint64_t n;
    if (rd_int(r, 8, &n, ctx, what)) return -1;
    if (n > left(r))
        return fail(r, "%s%s%s length %llu exceeds the %llu bytes left in the file", ctx,
                    *ctx ? ": " : "", what, (unsigned long long)n, (unsigned long long)left(r));
    s->len = n;
    s->s = (const char *)r->p + r->pos;
    r->pos += n;
    return 0;
}

static const char *vtype_name(uint32_t t)
{
    static const char *const names[] = {"u8",  "i8",  "u16",  "i16", "u32", "i32", "f32",
                                        "bool", "str", "arr", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}

/* Bytes per element of a scalar value type, 0 for str/arr/unknown. */
static int scalar_size(uint32_t t)
{
    switch (t) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
    }
}

/* Decodes one scalar of type t from raw little-endian bytes. */
static void scalar_decode(uint32_t t, const uint8_t *p, gguf_value *v)
{
    uint64_t x = le(p, scalar_size(t));
    v->type = t;
    switch (t) {
    case GGUF_I8: v->i = (int8_t)x; break;
    case GGUF_I16: v->i = (int16_t)x; break;
    case GGUF_I32: v->i = (int32_t)x; break;
    case GGUF_I64: v->i = (int64_t)x; break;
    case GGUF_F32: {
        uint32_t b = (uint32_t)x;
        float f;
        memcpy(&f, &b, 4);
        v->f = f;
        break;
    }
    case GGUF_F64: memcpy(&v->f, &x, 8); break;
    default: v->u = x; break;
    }
}

static int parse_value(reader *r, uint32_t type, gguf_value *v, int depth, const char *ctx)
{
    memset(v, 0, sizeof *v);
    v->type = type;
    int sz = scalar_size(type);
    if (sz) {
        if (left(r) < (uint64_t)sz) return fail(r, "%s: truncated: file ends inside the value", ctx);
        scalar_decode(type, r->p + r->pos, v);
        r->pos += (uint64_t)sz;
        if (type == GGUF_BOOL && v->u > 1) return fail(r, "%s: bool value %llu", ctx, (unsigned long long)v->u);
        return 0;
    }
    if (type == GGUF_STR) return rd_str(r, &v->str, ctx, "string");
    if (type != GGUF_ARR) return fail(r, "%s: unknown value type %u", ctx, type);

    if (depth >= MAX_DEPTH) return fail(r, "%s: arrays nested deeper than %d", ctx, MAX_DEPTH);
    uint32_t et;
    uint64_t n;
    if (rd_u32(r, &et, ctx, "array type") || rd_int(r, 8, &n, ctx, "array length")) return -1;
    v->arr.type = et;
    v->arr.n = n;
    int esz = scalar_size(et);
    uint64_t min = esz ? (uint64_t)esz : et == GGUF_STR ? MIN_STR_BYTES : et == GGUF_ARR ? MIN_ARR_BYTES : 0;
    if (!min) return fail(r, "%s: array of unknown value type %u", ctx, et);
    if (n > left(r) / min)
        return fail(r, "%s: array length %llu exceeds the %llu bytes left in the file", ctx,
                    (unsigned long long)n, (unsigned long long)left(r));
    if (esz) {
        v->arr.data = r->p + r->pos;
        r->pos += n * (uint64_t)esz;
        if (et == GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (v->arr.data[i] > 1) return fail(r, "%s: bool value %u at index %llu", ctx, v->arr.data[i], (unsigned long long)i);
        return 0;
    }
    if (n == 0) return 0;
    if (et == GGUF_STR) {
        /* n <= left/8, so this allocation is at most twice the bytes left */
        gguf_str *s = palloc(r->pv, n * sizeof *s);
        if (!s) return fail(r, "%s: out of memory for %llu strings", ctx, (unsigned long long)n);
        v->arr.strs = s;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t len;
            if (left(r) < 8) return fail(r, "%s: truncated: file ends inside string %llu", ctx, (unsigned long long)i);
            len = le(r->p + r->pos, 8);
            r->pos += 8;
            if (len > left(r))
                return fail(r, "%s: string %llu length %llu exceeds the %llu bytes left in the file", ctx,
                            (unsigned long long)i, (unsigned long long)len, (unsigned long long)left(r));
            s[i].len = len;
            s[i].s = (const char *)r->p + r->pos;
            r->pos += len;
        }
        return 0;
    }
    /* nested arrays: n <= left/12 bounds the allocation to a few times the
     * bytes left, and the depth limit bounds the recursion */
    gguf_value *vals = palloc(r->pv, n * sizeof *vals);
    if (!vals) return fail(r, "%s: out of memory for %llu arrays", ctx, (unsigned long long)n);
    v->arr.vals = vals;
    for (uint64_t i = 0; i < n; i++)
        if (parse_value(r, GGUF_ARR, &vals[i], depth + 1, ctx)) return -1;
    return 0;
}

static uint64_t hash_bytes(const char *s, uint64_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (uint64_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t hash_cap(uint64_t n)
{
    uint64_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

static const gguf_kv *find_kv(const gguf_file *f, const char *key, uint64_t klen)
{
    const reader_priv *pv = f->priv;
    if (!pv || !pv->kv_hash) return NULL;
    uint64_t m = pv->kv_cap - 1;
    for (uint64_t h = hash_bytes(key, klen) & m;; h = (h + 1) & m) {
        uint32_t ix = pv->kv_hash[h];
        if (!ix) return NULL;
        const gguf_kv *kv = &f->kv[ix - 1];
        if (kv->key.len == klen && !memcmp(kv->key.s, key, klen)) return kv;
    }
}

static int parse_kvs(reader *r, gguf_file *f)
{
    reader_priv *pv = r->pv;
    if (f->n_kv > MAX_KV || f->n_kv > left(r) / MIN_KV_BYTES)
        return fail(r, "metadata count %llu does not fit in the %llu bytes left (file truncated or corrupt)",
                    (unsigned long long)f->n_kv, (unsigned long long)left(r));
    f->kv = palloc(pv, f->n_kv * sizeof *f->kv + 1);
    pv->kv_cap = hash_cap(f->n_kv);
    pv->kv_hash = palloc(pv, pv->kv_cap * sizeof *pv->kv_hash);
    if (!f->kv || !pv->kv_hash) return fail(r, "out of memory for %llu metadata entries", (unsigned long long)f->n_kv);
    memset(pv->kv_hash, 0, pv->kv_cap * sizeof *pv->kv_hash);

    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        char ctx[96], name[72];
        snprintf(ctx, sizeof ctx, "metadata entry %llu", (unsigned long long)i);
        if (rd_str(r, &kv->key, ctx, "key")) return -1;
        if (kv->key.len == 0 || kv->key.len > MAX_KEY_LEN)
            return fail(r, "%s: key length %llu (must be 1..%d)", ctx, (unsigned long long)kv->key.len, MAX_KEY_LEN);
        snprintf(ctx, sizeof ctx, "key '%s'", printable(kv->key, name));
        uint32_t type;
        if (rd_u32(r, &type, ctx, "value type")) return -1;
        if (parse_value(r, type, &kv->val, 0, ctx)) return -1;

        uint64_t m = pv->kv_cap - 1, h = hash_bytes(kv->key.s, kv->key.len) & m;
        for (; pv->kv_hash[h]; h = (h + 1) & m) {
            const gguf_kv *o = &f->kv[pv->kv_hash[h] - 1];
            if (o->key.len == kv->key.len && !memcmp(o->key.s, kv->key.s, kv->key.len))
                return fail(r, "%s: duplicate key", ctx);
        }
        pv->kv_hash[h] = (uint32_t)(i + 1);
    }
    f->alignment = 32;
    const gguf_kv *al = find_kv(f, "general.alignment", strlen("general.alignment"));
    if (al) {
        if (al->val.type != GGUF_U32)
            return fail(r, "key 'general.alignment': type %s (must be u32)", vtype_name(al->val.type));
        uint64_t a = al->val.u;
        if (a == 0 || (a & (a - 1)) || a > MAX_ALIGNMENT)
            return fail(r, "key 'general.alignment': %llu is not a power of two up to 2^30", (unsigned long long)a);
        f->alignment = a;
    }
    return 0;
}

static int parse_tensor_info(reader *r, gguf_file *f, uint64_t i)
{
    gguf_tensor *t = &f->tensors[i];
    char ctx[160];
    gguf_str name;
    snprintf(ctx, sizeof ctx, "tensor %llu", (unsigned long long)i);
    if (rd_str(r, &name, ctx, "name")) return -1;
    if (name.len == 0 || name.len >= sizeof t->name)
        return fail(r, "%s: name length %llu (must be 1..%zu)", ctx, (unsigned long long)name.len, sizeof t->name - 1);
    if (memchr(name.s, 0, name.len)) return fail(r, "%s: name contains a NUL byte", ctx);
    memcpy(t->name, name.s, name.len);
    t->name[name.len] = 0;
    char pname[72];
    snprintf(ctx, sizeof ctx, "tensor '%s'", printable(name, pname));

    if (rd_u32(r, &t->n_dims, ctx, "n_dims")) return -1;
    if (t->n_dims < 1 || t->n_dims > 4) return fail(r, "%s: n_dims %u (must be 1..4)", ctx, t->n_dims);
    uint64_t n_elem = 1;
    for (uint32_t d = 0; d < 4; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (rd_int(r, 8, &t->ne[d], ctx, "dimensions")) return -1;
        if (t->ne[d] == 0) return fail(r, "%s: dimension %u is zero", ctx, d);
        if (t->ne[d] > MAX_ELEMS / n_elem)
            return fail(r, "%s: more than 2^40 elements", ctx);
        n_elem *= t->ne[d];
    }
    if (rd_u32(r, &t->type, ctx, "type")) return -1;
    const apr_type_info *ti = apr_type_get(t->type);
    if (!ti) return fail(r, "%s: unknown type %u", ctx, t->type);
    if (t->ne[0] % ti->block_size)
        return fail(r, "%s: row length %llu is not a multiple of the %s block size %u", ctx,
                    (unsigned long long)t->ne[0], ti->name, ti->block_size);
    /* n_elem <= 2^40 and type_size/block_size <= 8: no overflow */
    t->nbytes = n_elem / ti->block_size * ti->type_size;
    if (rd_int(r, 8, &t->offset, ctx, "data offset")) return -1;

    reader_priv *pv = r->pv;
    uint64_t m = pv->t_cap - 1, h = hash_bytes(t->name, name.len) & m;
    for (; pv->t_hash[h]; h = (h + 1) & m)
        if (!strcmp(f->tensors[pv->t_hash[h] - 1].name, t->name)) return fail(r, "%s: duplicate tensor name", ctx);
    pv->t_hash[h] = (uint32_t)(i + 1);
    return 0;
}

static int cmp_offset(const void *a, const void *b, void *arg)
{
    const gguf_tensor *t = arg;
    uint64_t x = t[*(const uint32_t *)a].offset, y = t[*(const uint32_t *)b].offset;
    return x < y ? -1 : x > y;
}

static int parse_tensors(reader *r, gguf_file *f)
{
    reader_priv *pv = r->pv;
    if (f->n_tensors > MAX_TENSORS || f->n_tensors > left(r) / MIN_TENSOR_BYTES)
        return fail(r, "tensor count %llu does not fit in the %llu bytes left (file truncated or corrupt)",
                    (unsigned long long)f->n_tensors, (unsigned long long)left(r));
    f->tensors = palloc(pv, f->n_tensors * sizeof *f->tensors + 1);
    pv->t_cap = hash_cap(f->n_tensors);
    pv->t_hash = palloc(pv, pv->t_cap * sizeof *pv->t_hash);
    if (!f->tensors || !pv->t_hash) return fail(r, "out of memory for %llu tensors", (unsigned long long)f->n_tensors);
    memset(pv->t_hash, 0, pv->t_cap * sizeof *pv->t_hash);
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (parse_tensor_info(r, f, i)) return -1;

    /* r->pos <= len < 2^63 and alignment <= 2^30: cannot overflow */
    f->data_offset = (r->pos + f->alignment - 1) / f->alignment * f->alignment;
    if (f->n_tensors == 0) return 0;
    if (f->data_offset > f->size) return fail(r, "truncated: data section starts past end of file");
    uint64_t data_len = f->size - f->data_offset;
    char pa[72], pb[72];
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset % f->alignment)
            return fail(r, "tensor '%s': data offset %llu is not aligned to %llu", printable_c(t->name, pa),
                        (unsigned long long)t->offset, (unsigned long long)f->alignment);
        if (t->offset >= data_len)
            return fail(r, "tensor '%s': data offset past end of file", printable_c(t->name, pa));
        if (t->nbytes > data_len - t->offset)
            return fail(r, "tensor '%s': data extends past end of file", printable_c(t->name, pa));
        t->offset += f->data_offset;
    }
    /* overlapping data means a corrupt or malicious index */
    uint32_t *ord = malloc(f->n_tensors * sizeof *ord);
    if (!ord) return fail(r, "out of memory");
    for (uint64_t i = 0; i < f->n_tensors; i++) ord[i] = (uint32_t)i;
    qsort_r(ord, f->n_tensors, sizeof *ord, cmp_offset, f->tensors);
    int rc = 0;
    for (uint64_t i = 1; i < f->n_tensors && !rc; i++) {
        const gguf_tensor *a = &f->tensors[ord[i - 1]], *b = &f->tensors[ord[i]];
        if (a->offset + a->nbytes > b->offset)
            rc = fail(r, "tensor '%s': data overlaps tensor '%s'", printable_c(b->name, pa), printable_c(a->name, pb));
    }
    free(ord);
    return rc;
}

static void free_priv(reader_priv *pv)
{
    if (!pv) return;
    for (alloc_hdr *h = pv->allocs, *n; h; h = n) {
        n = h->next;
        free(h);
    }
    if (pv->map) munmap(pv->map, pv->map_len);
    free(pv);
}

gguf_file *gguf_parse(const uint8_t *buf, size_t len, char err[APR_ERRLEN])
{
    if (err) err[0] = 0;
    gguf_file *f = calloc(1, sizeof *f);
    reader_priv *pv = calloc(1, sizeof *pv);
    if (!f || !pv) {
        free(f);
        free(pv);
        if (err) snprintf(err, APR_ERRLEN, "out of memory");
        return NULL;
    }
    f->priv = pv;
    f->base = buf;
    f->size = len;
    reader r = {.p = buf, .len = len, .pos = 0, .pv = pv, .err = err};

    uint64_t magic, version = 0;
    if (len < 4 || !buf) {
        fail(&r, "file too small to be GGUF (%zu bytes)", len);
        goto bad;
    }
    magic = le(buf, 4);
    r.pos = 4;
    if (magic != GGUF_MAGIC) {
        fail(&r, "not a GGUF file (bad magic)");
        goto bad;
    }
    if (rd_int(&r, 4, &version, "", "header")) goto bad;
    if (version != 2 && version != 3) {
        if (version == 1) fail(&r, "GGUF version 1 is not supported (only 2 and 3)");
        else if ((version & 0xffff) == 0) fail(&r, "big-endian GGUF is not supported");
        else fail(&r, "unsupported GGUF version %llu (only 2 and 3)", (unsigned long long)version);
        goto bad;
    }
    f->version = (uint32_t)version;
    if (rd_int(&r, 8, &f->n_tensors, "", "header") || rd_int(&r, 8, &f->n_kv, "", "header")) goto bad;
    if (parse_kvs(&r, f) || parse_tensors(&r, f)) goto bad;
    return f;
bad:
    if (err && !err[0]) snprintf(err, APR_ERRLEN, "invalid GGUF file");
    free_priv(pv);
    free(f);
    return NULL;
}

gguf_file *gguf_open(const char *path, char err[APR_ERRLEN])
{
    if (err) err[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (err) snprintf(err, APR_ERRLEN, "cannot open: %s", strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        if (err) snprintf(err, APR_ERRLEN, "cannot stat: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        if (err) snprintf(err, APR_ERRLEN, "%s", S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
        close(fd);
        return NULL;
    }
    if (st.st_size < 4) {
        if (err) snprintf(err, APR_ERRLEN, "file too small to be GGUF (%lld bytes)", (long long)st.st_size);
        close(fd);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        if (err) snprintf(err, APR_ERRLEN, "cannot map: %s", strerror(e));
        return NULL;
    }
    gguf_file *f = gguf_parse(map, len, err);
    if (!f) {
        munmap(map, len);
        return NULL;
    }
    reader_priv *pv = f->priv;
    pv->map = map;
    pv->map_len = len;
    return f;
}

void gguf_close(gguf_file *f)
{
    if (!f) return;
    free_priv(f->priv);
    free(f);
}

/* ------------------------------------------------------------ getters */

const gguf_value *gguf_get(const gguf_file *f, const char *key)
{
    if (!f || !key) return NULL;
    const gguf_kv *kv = find_kv(f, key, strlen(key));
    return kv ? &kv->val : NULL;
}

/* Integer value of a scalar integer; false for other kinds or when a u64
 * does not fit in int64_t. */
static bool value_int(const gguf_value *v, int64_t *out)
{
    switch (v->type) {
    case GGUF_U8: case GGUF_U16: case GGUF_U32: case GGUF_U64:
        if (v->u > INT64_MAX) return false;
        *out = (int64_t)v->u;
        return true;
    case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64:
        *out = v->i;
        return true;
    default:
        return false;
    }
}

int64_t gguf_get_int(const gguf_file *f, const char *key, int64_t dflt)
{
    const gguf_value *v = gguf_get(f, key);
    int64_t x;
    return v && value_int(v, &x) ? x : dflt;
}

double gguf_get_float(const gguf_file *f, const char *key, double dflt)
{
    const gguf_value *v = gguf_get(f, key);
    int64_t x;
    if (!v) return dflt;
    if (v->type == GGUF_F32 || v->type == GGUF_F64) return v->f;
    return value_int(v, &x) ? (double)x : dflt;
}

bool gguf_get_bool(const gguf_file *f, const char *key, bool dflt)
{
    const gguf_value *v = gguf_get(f, key);
    return v && v->type == GGUF_BOOL ? v->u != 0 : dflt;
}

gguf_str gguf_get_str(const gguf_file *f, const char *key)
{
    const gguf_value *v = gguf_get(f, key);
    if (v && v->type == GGUF_STR) return v->str;
    return (gguf_str){0, NULL};
}

bool gguf_str_eq(gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.s && s.len == n && !memcmp(s.s, c, n);
}

int64_t gguf_arr_int(const gguf_value *arr, uint64_t i)
{
    if (!arr || arr->type != GGUF_ARR || i >= arr->arr.n || !arr->arr.data) return 0;
    gguf_value v;
    scalar_decode(arr->arr.type, arr->arr.data + i * (uint64_t)scalar_size(arr->arr.type), &v);
    int64_t x;
    if (value_int(&v, &x)) return x;
    if (v.type == GGUF_BOOL) return (int64_t)v.u;
    /* floats: truncate, saturating instead of undefined behaviour */
    if (!(v.f == v.f)) return 0;
    if (v.f >= 9.2e18) return INT64_MAX;
    if (v.f <= -9.2e18) return INT64_MIN;
    return (int64_t)v.f;
}

double gguf_arr_float(const gguf_value *arr, uint64_t i)
{
    if (!arr || arr->type != GGUF_ARR || i >= arr->arr.n || !arr->arr.data) return 0;
    gguf_value v;
    scalar_decode(arr->arr.type, arr->arr.data + i * (uint64_t)scalar_size(arr->arr.type), &v);
    if (v.type == GGUF_F32 || v.type == GGUF_F64) return v.f;
    int64_t x;
    if (value_int(&v, &x)) return (double)x;
    return (double)v.u; /* bool, or a u64 above INT64_MAX */
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name)
{
    const reader_priv *pv = f ? f->priv : NULL;
    if (!pv || !pv->t_hash || !name) return NULL;
    uint64_t m = pv->t_cap - 1;
    for (uint64_t h = hash_bytes(name, strlen(name)) & m;; h = (h + 1) & m) {
        uint32_t ix = pv->t_hash[h];
        if (!ix) return NULL;
        if (!strcmp(f->tensors[ix - 1].name, name)) return &f->tensors[ix - 1];
    }
}
