/* GGUF writer (version 3, alignment 32 unless general.alignment says otherwise).
 *
 * Metadata is serialized as it is set, so the header goes out in one buffered
 * write. Tensor data comes from a callback per tensor; while one tensor is
 * being written a second thread is already free to be filled by the caller's
 * callback (double buffering), so producing and writing overlap. The file is
 * written under a temporary name and renamed into place only when complete.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model.h"

#define ALIGN 32     /* default */
#define MAX_ALIGN 4096 /* larger general.alignment values are refused */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} bytes;

typedef struct {
    char *key;
    bytes val; /* value type + payload, serialized */
} wkv;

struct gguf_writer {
    wkv *kv;
    size_t n_kv, cap_kv;
    gguf_tensor *t;
    size_t n_t, cap_t;
    bool oom; /* a set_* call failed to allocate: reported by gguf_writer_write */
};

static void put(bytes *b, const void *src, size_t n)
{
    if (b->oom) return;
    if (n > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = true;
                return;
            }
            cap *= 2;
        }
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void put_le(bytes *b, uint64_t v, int n)
{
    uint8_t tmp[8];
    for (int i = 0; i < n; i++) tmp[i] = (uint8_t)(v >> (8 * i));
    put(b, tmp, (size_t)n);
}

static void put_str(bytes *b, const char *s, uint64_t n)
{
    put_le(b, n, 8);
    put(b, s, (size_t)n);
}

static int elem_size(uint32_t t)
{
    switch (t) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
    }
}

/* Payload of a value (without its type id). Unknown types mark the buffer
 * as failed rather than writing a file the reader would refuse. */
static void put_payload(bytes *b, const gguf_value *v, int depth)
{
    int sz = elem_size(v->type);
    if (sz) {
        uint64_t x = v->u;
        if (v->type == GGUF_F32) {
            float f = (float)v->f;
            uint32_t u;
            memcpy(&u, &f, 4);
            x = u;
        } else if (v->type == GGUF_F64) {
            memcpy(&x, &v->f, 8);
        } else if (v->type == GGUF_I8 || v->type == GGUF_I16 || v->type == GGUF_I32 || v->type == GGUF_I64) {
            x = (uint64_t)v->i;
        }
        put_le(b, x, sz);
        return;
    }
    if (v->type == GGUF_STR) {
        put_str(b, v->str.s, v->str.len);
        return;
    }
    if (v->type != GGUF_ARR || depth > 8) {
        b->oom = true;
        return;
    }
    put_le(b, v->arr.type, 4);
    put_le(b, v->arr.n, 8);
    int esz = elem_size(v->arr.type);
    if (esz) {
        if (v->arr.n > SIZE_MAX / (size_t)esz) b->oom = true;
        else if (v->arr.n) put(b, v->arr.data, (size_t)v->arr.n * (size_t)esz);
    } else if (v->arr.type == GGUF_STR) {
        for (uint64_t i = 0; i < v->arr.n && !b->oom; i++) put_str(b, v->arr.strs[i].s, v->arr.strs[i].len);
    } else if (v->arr.type == GGUF_ARR) {
        for (uint64_t i = 0; i < v->arr.n && !b->oom; i++) put_payload(b, &v->arr.vals[i], depth + 1);
    } else {
        b->oom = true;
    }
}

gguf_writer *gguf_writer_new(void) { return calloc(1, sizeof(gguf_writer)); }

void gguf_writer_free(gguf_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val.p);
    }
    free(w->kv);
    free(w->t);
    free(w);
}

static void set_key(gguf_writer *w, const char *key, uint64_t klen, const gguf_value *v)
{
    bytes b = {0};
    put_le(&b, v->type, 4);
    put_payload(&b, v, 0);
    if (b.oom || klen == 0) {
        free(b.p);
        w->oom = true;
        return;
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strlen(w->kv[i].key) == klen && !memcmp(w->kv[i].key, key, klen)) {
            free(w->kv[i].val.p);
            w->kv[i].val = b;
            return;
        }
    }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
        wkv *kv = realloc(w->kv, cap * sizeof *kv);
        if (!kv) {
            free(b.p);
            w->oom = true;
            return;
        }
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *k = malloc(klen + 1);
    if (!k) {
        free(b.p);
        w->oom = true;
        return;
    }
    memcpy(k, key, klen);
    k[klen] = 0;
    w->kv[w->n_kv++] = (wkv){k, b};
}

void gguf_writer_set_value(gguf_writer *w, const char *key, const gguf_value *v)
{
    set_key(w, key, strlen(key), v);
}

void gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v)
{
    gguf_value x = {.type = GGUF_U32, .u = v};
    set_key(w, key, strlen(key), &x);
}

void gguf_writer_set_f32(gguf_writer *w, const char *key, float v)
{
    gguf_value x = {.type = GGUF_F32, .f = v};
    set_key(w, key, strlen(key), &x);
}

void gguf_writer_set_bool(gguf_writer *w, const char *key, bool v)
{
    gguf_value x = {.type = GGUF_BOOL, .u = v};
    set_key(w, key, strlen(key), &x);
}

void gguf_writer_set_str(gguf_writer *w, const char *key, const char *v)
{
    gguf_value x = {.type = GGUF_STR, .str = {strlen(v), v}};
    set_key(w, key, strlen(key), &x);
}

void gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv)
{
    /* a key with a NUL inside could not be looked up again: refuse it */
    if (memchr(kv->key.s, 0, kv->key.len)) {
        w->oom = true;
        return;
    }
    set_key(w, kv->key.s, kv->key.len, &kv->val);
}

int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t ne[4], char err[APR_ERRLEN])
{
    size_t len = strlen(name);
    if (len == 0 || len >= sizeof w->t[0].name) {
        snprintf(err, APR_ERRLEN, "tensor name '%.64s' must be 1..127 bytes", name);
        return -1;
    }
    const apr_type_info *ti = apr_type_get(type);
    if (!ti) {
        snprintf(err, APR_ERRLEN, "tensor '%s': unknown type %u", name, type);
        return -1;
    }
    if (n_dims < 1 || n_dims > 4) {
        snprintf(err, APR_ERRLEN, "tensor '%s': n_dims %u (must be 1..4)", name, n_dims);
        return -1;
    }
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || ne[d] > (1ull << 40) / n) {
            snprintf(err, APR_ERRLEN, "tensor '%s': bad dimension %u", name, d);
            return -1;
        }
        n *= ne[d];
    }
    if (ne[0] % ti->block_size) {
        snprintf(err, APR_ERRLEN, "tensor '%s': row length %llu is not a multiple of the %s block size %u", name,
                 (unsigned long long)ne[0], ti->name, ti->block_size);
        return -1;
    }
    for (size_t i = 0; i < w->n_t; i++) {
        if (!strcmp(w->t[i].name, name)) {
            snprintf(err, APR_ERRLEN, "tensor '%s': duplicate name", name);
            return -1;
        }
    }
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? w->cap_t * 2 : 64;
        gguf_tensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) {
            snprintf(err, APR_ERRLEN, "out of memory");
            return -1;
        }
        w->t = t;
        w->cap_t = cap;
    }
    gguf_tensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, len + 1);
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < 4; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->type = type;
    t->nbytes = n / ti->block_size * ti->type_size;
    return 0;
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static int write_all(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n) {
        ssize_t k = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* One pending data write, run on a helper thread while the next tensor fills. */
typedef struct {
    int fd;
    const void *buf;
    size_t n;
    uint64_t align;
    int err; /* errno, 0 = fine */
} wjob;

static void *write_job(void *arg)
{
    wjob *j = arg;
    static const uint8_t zeros[MAX_ALIGN];
    size_t pad = (size_t)(align_up(j->n, j->align) - j->n);
    if (write_all(j->fd, j->buf, j->n) || write_all(j->fd, zeros, pad)) j->err = errno ? errno : EIO;
    return NULL;
}

int gguf_writer_write(gguf_writer *w, const char *path, gguf_fill_fn fill, void *ctx, char err[APR_ERRLEN])
{
    if (w->oom) {
        snprintf(err, APR_ERRLEN, "metadata could not be stored (out of memory or invalid value)");
        return -1;
    }
    /* honour a general.alignment the caller set (u32, power of two) */
    uint64_t align = ALIGN;
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, "general.alignment")) continue;
        const bytes *v = &w->kv[i].val;
        uint32_t type, a = 0;
        memcpy(&type, v->p, 4);
        if (type == GGUF_U32 && v->n == 8) memcpy(&a, v->p + 4, 4);
        if (a == 0 || (a & (a - 1)) || a > MAX_ALIGN) {
            snprintf(err, APR_ERRLEN, "general.alignment must be a u32 power of two up to %d", MAX_ALIGN);
            return -1;
        }
        align = a;
    }
    bytes h = {0};
    put(&h, "GGUF", 4);
    put_le(&h, 3, 4);
    put_le(&h, w->n_t, 8);
    put_le(&h, w->n_kv, 8);
    for (size_t i = 0; i < w->n_kv; i++) {
        put_str(&h, w->kv[i].key, strlen(w->kv[i].key));
        put(&h, w->kv[i].val.p, w->kv[i].val.n);
    }
    uint64_t off = 0, max_bytes = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        gguf_tensor *t = &w->t[i];
        put_str(&h, t->name, strlen(t->name));
        put_le(&h, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims; d++) put_le(&h, t->ne[d], 8);
        put_le(&h, t->type, 4);
        put_le(&h, off, 8);
        t->offset = off; /* made absolute below */
        off = align_up(off + t->nbytes, align);
        if (t->nbytes > max_bytes) max_bytes = t->nbytes;
    }
    uint64_t data_start = align_up(h.n, align);
    static const uint8_t zeros[MAX_ALIGN];
    put(&h, zeros, (size_t)(data_start - h.n));
    if (h.oom) {
        free(h.p);
        snprintf(err, APR_ERRLEN, "out of memory for the header");
        return -1;
    }
    for (size_t i = 0; i < w->n_t; i++) w->t[i].offset += data_start;

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 6);
    if (!tmp) {
        free(h.p);
        snprintf(err, APR_ERRLEN, "out of memory");
        return -1;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".part", 6);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, APR_ERRLEN, "cannot create '%s': %s", tmp, strerror(errno));
        free(tmp);
        free(h.p);
        return -1;
    }
    int rc = -1;
    uint8_t *buf[2] = {NULL, NULL};
    pthread_t th;
    bool running = false;
    wjob job = {0};
    if (write_all(fd, h.p, h.n)) {
        snprintf(err, APR_ERRLEN, "write '%s': %s", tmp, strerror(errno));
        goto out;
    }
    if (w->n_t) {
        buf[0] = malloc(max_bytes);
        buf[1] = malloc(max_bytes);
        if (!buf[0] || !buf[1]) {
            snprintf(err, APR_ERRLEN, "out of memory for a %llu-byte tensor buffer", (unsigned long long)max_bytes);
            goto out;
        }
    }
    for (size_t i = 0; i < w->n_t; i++) {
        uint8_t *b = buf[i & 1]; /* the other buffer may still be in flight */
        if (fill(ctx, i, &w->t[i], b)) {
            snprintf(err, APR_ERRLEN, "tensor '%s': producing data failed", w->t[i].name);
            goto out;
        }
        if (running) {
            pthread_join(th, NULL);
            running = false;
            if (job.err) {
                snprintf(err, APR_ERRLEN, "write '%s': %s", tmp, strerror(job.err));
                goto out;
            }
        }
        job = (wjob){fd, b, (size_t)w->t[i].nbytes, align, 0};
        if (pthread_create(&th, NULL, write_job, &job)) {
            write_job(&job); /* no thread: write inline */
            if (job.err) {
                snprintf(err, APR_ERRLEN, "write '%s': %s", tmp, strerror(job.err));
                goto out;
            }
        } else {
            running = true;
        }
    }
    if (running) {
        pthread_join(th, NULL);
        running = false;
        if (job.err) {
            snprintf(err, APR_ERRLEN, "write '%s': %s", tmp, strerror(job.err));
            goto out;
        }
    }
    if (close(fd)) {
        fd = -1;
        snprintf(err, APR_ERRLEN, "close '%s': %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path)) {
        snprintf(err, APR_ERRLEN, "rename to '%s': %s", path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (running) pthread_join(th, NULL);
    if (fd >= 0) close(fd);
    if (rc) unlink(tmp);
    free(buf[0]);
    free(buf[1]);
    free(tmp);
    free(h.p);
    return rc;
}
