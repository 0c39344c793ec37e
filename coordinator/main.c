/* apr-coord: the coordinator. Until the pipeline lands it only validates its
 * flags and the model, and says so. */
#include <stdio.h>
#include <string.h>

#include "model/model.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr-coord -m MODEL [--listen ENDPOINT] [--workers cpu|cuda|cuda,cpu]\n"
            "  -m MODEL           GGUF model to serve\n"
            "  --listen ENDPOINT  client endpoint (default tcp://127.0.0.1:5555)\n"
            "  --workers LIST     worker backends (default cpu)\n"
            "  -h, --help         this text\n"
            "note: serving is not implemented yet; apr-coord checks the model and exits.\n");
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "-m") && i + 1 < argc) {
            model = argv[++i];
        } else if ((!strcmp(argv[i], "--listen") || !strcmp(argv[i], "--workers")) && i + 1 < argc) {
            i++;
        } else {
            fprintf(stderr, "apr-coord: unknown or incomplete option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "apr-coord: -m MODEL is required\n");
        return 2;
    }
    char err[APR_ERRLEN];
    gguf_file *f = gguf_open(model, err);
    if (!f) {
        fprintf(stderr, "apr-coord: %s\n", err);
        return 1;
    }
    gguf_close(f);
    fprintf(stderr, "apr-coord: serving is not implemented yet\n");
    return 1;
}
