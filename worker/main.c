/* apr-worker: a worker process. Until the pipeline lands it answers --help and
 * lists the CUDA devices it can see. */
#include <stdio.h>
#include <string.h>

#ifdef APR_HAVE_CUDA
#include "cuda/cuda.h"
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr-worker --backend cpu|cuda [options]\n"
            "  --backend KIND   cpu or cuda\n"
            "  --devices        list the CUDA devices and exit\n"
            "  -h, --help       this text\n"
            "note: the worker protocol is not implemented yet.\n");
}

static int list_devices(void)
{
#ifdef APR_HAVE_CUDA
    char err[256] = "";
    int n = apr_cuda_device_count(err, sizeof err);
    if (n <= 0) {
        fprintf(stderr, "apr-worker: %s\n", err);
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char line[512];
        apr_cuda_device_describe(i, line, sizeof line);
        printf("%s\n", line);
    }
    return 0;
#else
    fprintf(stderr, "apr-worker: no CUDA device: built without CUDA (nvcc was not found)\n");
    return 1;
#endif
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--devices")) return list_devices();
    }
    usage(stderr);
    return 2;
}
