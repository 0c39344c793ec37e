/* libFuzzer target for the GGUF reader: parse, load hyper-parameters, then
 * touch every value and tensor so the sanitizers see any read the reader let
 * through that it should not have. */
#include <stdint.h>
#include <string.h>

#include "model/model.h"

static uint64_t sink;

static void touch_value(const gguf_value *v, int depth)
{
    if (depth > 16) __builtin_trap(); /* the reader limits nesting */
    switch (v->type) {
    case GGUF_STR:
        for (uint64_t i = 0; i < v->str.len; i++) sink += (unsigned char)v->str.s[i];
        break;
    case GGUF_ARR:
        for (uint64_t i = 0; i < v->arr.n; i++) {
            if (v->arr.type == GGUF_STR) {
                gguf_str s = v->arr.strs[i];
                if (s.len) sink += (unsigned char)s.s[0] + (unsigned char)s.s[s.len - 1];
            } else if (v->arr.type == GGUF_ARR) {
                touch_value(&v->arr.vals[i], depth + 1);
            } else {
                sink += (uint64_t)gguf_arr_int(v, i);
                sink += (uint64_t)(gguf_arr_float(v, i) != 0);
            }
        }
        break;
    default:
        sink += v->u;
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[APR_ERRLEN];
    gguf_file *f = gguf_parse(data, size, err);
    if (!f) {
        if (!err[0] || strchr(err, '\n')) __builtin_trap(); /* one clear line */
        return 0;
    }
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (kv->key.len) sink += (unsigned char)kv->key.s[kv->key.len - 1];
        touch_value(&kv->val, 0);
        if (gguf_get(f, "general.architecture") == NULL) sink++;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (gguf_find_tensor(f, t->name) != t) __builtin_trap();
        if (t->offset < f->data_offset || t->offset > f->size || t->nbytes > f->size - t->offset) __builtin_trap();
        sink += f->base[t->offset] + f->base[t->offset + t->nbytes - 1];
    }
    apr_hparams hp;
    if (apr_hparams_load(f, &hp, err) == 0) sink += hp.n_vocab + hp.head_dim;
    gguf_close(f);
    return 0;
}
