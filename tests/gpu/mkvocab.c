/* mkvocab IN.gguf OUT.gguf: a GGUF that holds only IN's tokenizer.* metadata,
 * a few MB, which is all `apr mkmodel --vocab-from` reads; the device harness
 * carries it instead of a 40 MB model. */
#include <stdio.h>
#include <string.h>

#include "model/model.h"

static int no_tensors(void *ctx, uint64_t i, const gguf_tensor *t, void *buf)
{
    (void)ctx, (void)i, (void)t, (void)buf;
    return -1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: mkvocab IN.gguf OUT.gguf\n");
        return 2;
    }
    char err[APR_ERRLEN];
    gguf_file *f = gguf_open(argv[1], err);
    if (!f) {
        fprintf(stderr, "mkvocab: %s: %s\n", argv[1], err);
        return 1;
    }
    gguf_writer *w = gguf_writer_new();
    int rc = 1;
    if (!w) {
        fprintf(stderr, "mkvocab: out of memory\n");
        goto out;
    }
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (kv->key.len > 10 && !memcmp(kv->key.s, "tokenizer.", 10)) gguf_writer_copy_kv(w, kv);
    }
    if (gguf_writer_write(w, argv[2], no_tensors, NULL, err)) {
        fprintf(stderr, "mkvocab: %s: %s\n", argv[2], err);
        goto out;
    }
    rc = 0;
out:
    gguf_writer_free(w);
    gguf_close(f);
    return rc;
}
