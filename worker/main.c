/* apr-worker: a worker process. The coordinator starts it with the model,
 * its endpoint and a shared-memory fd for the logits; it runs forward steps
 * until told to shut down (worker/serve.c). It also lists the CUDA devices. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "proto/proto.h"
#include "worker/backend.h"
#ifdef APR_HAVE_CUDA
#include "cuda/cuda.h"
#endif

#define NAME_MAX_LEN 64

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr-worker --backend cpu|cuda -m MODEL --connect ENDPOINT --name NAME\n"
            "                  --logits-fd FD [options]\n"
            "       apr-worker --devices\n"
            "\n"
            "Runs forward steps for apr-coord, which starts it; not meant to be run by hand.\n"
            "It connects two DEALER sockets to ENDPOINT (routing ids NAME and NAME.hb),\n"
            "heartbeats every %d ms from the start, loads the model, says hello, then\n"
            "serves steps, writing logits into the inherited shared memory FD. It exits\n"
            "when its parent dies.\n"
            "\n"
            "With --backend cuda this process is the holder: it keeps the weights and the\n"
            "KV cache in GPU memory and heartbeats, and runs the steps in an engine process\n"
            "(this binary with --engine) that imports that memory through CUDA IPC; an\n"
            "engine that dies or hangs is replaced without reloading anything.\n"
            "\n"
            "  --backend KIND     cpu or cuda\n"
            "  -m, --model PATH   GGUF model file\n"
            "  --connect ENDPOINT the coordinator's worker socket (ipc://RUNDIR/workers)\n"
            "  --name NAME        worker name, 1..%d of [A-Za-z0-9._-] (\"cpu0\")\n"
            "  --logits-fd FD     inherited shared memory of at least\n"
            "                     max_logits * n_vocab * 4 bytes\n"
            "  --threads T        CPU threads (default: all online cores)\n"
            "  --ctx N            positions per sequence (default: min(training context, 4096))\n"
            "  --n-seq S          sequences in the KV cache, 1..4096 (default 16)\n"
            "  --max-batch B      entries per step, 1..%d (default 512)\n"
            "  --max-logits L     logit rows per step, 1..%d (default: the --n-seq value)\n"
            "  --engine           run as a CUDA holder's engine (the holder starts it)\n"
            "  --ipc-fd FD        engine: the block shared with the holder\n"
            "  --spin-us US       after each done, wait awake this long for the next step,\n"
            "                     on the socket and in the step box (0..1000000; default:\n"
            "                     500 for an engine, 0 otherwise)\n"
            "  --devices          list the CUDA devices and exit\n"
            "  -h, --help         this text\n"
            "\n"
            "Exit status: 0 after the coordinator's shutdown, 1 when the model or the\n"
            "shared memory could not be set up (the hello says why), 2 on bad arguments.\n",
            APR_HEARTBEAT_MS, NAME_MAX_LEN, APR_WORKER_MAX_BATCH, APR_WORKER_MAX_BATCH);
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

/* A whole decimal number in [lo, hi], or a message and false. */
static bool parse_int(const char *opt, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (s == NULL || *s == 0 || *end != 0 || errno || v < lo || v > hi) {
        fprintf(stderr, "apr-worker: %s needs a whole number in [%ld, %ld] (got '%s')\n", opt, lo, hi,
                s ? s : "");
        return false;
    }
    *out = (int)v;
    return true;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

int main(int argc, char **argv)
{
    /* A killed coordinator must not leave workers behind: die with the
     * parent, and check it did not die before the request took hold. */
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        fprintf(stderr, "apr-worker: prctl(PR_SET_PDEATHSIG): %s\n", strerror(errno));
    if (getppid() != parent)
        return 1;

    apr_worker_opts o = {.logits_fd = -1, .n_seq = 16, .max_batch = 512, .max_logits = 0, .ipc_fd = -1, .spin_us = -1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--devices")) {
            return list_devices();
        } else if (!strcmp(a, "--engine")) {
            o.engine = true;
            continue; /* no value */
        } else if (!strcmp(a, "--backend") && v) {
            o.backend = v;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) {
            o.model = v;
        } else if (!strcmp(a, "--connect") && v) {
            o.endpoint = v;
        } else if (!strcmp(a, "--name") && v) {
            o.name = v;
        } else if (!strcmp(a, "--logits-fd")) {
            ok = parse_int(a, v, 0, INT_MAX, &o.logits_fd);
        } else if (!strcmp(a, "--threads")) {
            ok = parse_int(a, v, 0, 1024, &o.n_threads);
        } else if (!strcmp(a, "--ctx")) {
            ok = parse_int(a, v, 1, 1 << 20, &o.n_ctx);
        } else if (!strcmp(a, "--n-seq")) {
            ok = parse_int(a, v, 1, 4096, &o.n_seq);
        } else if (!strcmp(a, "--max-batch")) {
            ok = parse_int(a, v, 1, APR_WORKER_MAX_BATCH, &o.max_batch);
        } else if (!strcmp(a, "--max-logits")) {
            ok = parse_int(a, v, 1, APR_WORKER_MAX_BATCH, &o.max_logits);
        } else if (!strcmp(a, "--ipc-fd")) {
            ok = parse_int(a, v, 0, INT_MAX, &o.ipc_fd);
        } else if (!strcmp(a, "--spin-us")) {
            ok = parse_int(a, v, 0, 1000000, &o.spin_us);
        } else {
            fprintf(stderr, "apr-worker: unknown option or missing value: %s\n", a);
            usage(stderr);
            return 2;
        }
        if (!ok)
            return 2;
        i++;
    }
    if (!o.backend || !o.model || !o.endpoint || !o.name || o.logits_fd < 0) {
        fprintf(stderr, "apr-worker: --backend, -m, --connect, --name and --logits-fd are required\n");
        usage(stderr);
        return 2;
    }
    if (strcmp(o.backend, "cpu") && strcmp(o.backend, "cuda")) {
        fprintf(stderr, "apr-worker: --backend must be cpu or cuda (got '%s')\n", o.backend);
        return 2;
    }
    if (o.engine != (o.ipc_fd >= 0) || (o.engine && strcmp(o.backend, "cuda"))) {
        fprintf(stderr, "apr-worker: --engine and --ipc-fd go together, with --backend cuda\n");
        return 2;
    }
    if (!valid_name(o.name)) {
        fprintf(stderr, "apr-worker: --name must be 1..%d of [A-Za-z0-9._-] (got '%s')\n", NAME_MAX_LEN,
                o.name);
        return 2;
    }
    if (o.max_logits == 0)
        o.max_logits = o.n_seq;
    return apr_worker_serve(&o);
}
