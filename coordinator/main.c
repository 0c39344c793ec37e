/* apr-coord: serves a GGUF model to ZeroMQ clients. Reads the flags, then
 * hands over to the event loop in server.c. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "coordinator/coord.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr-coord -m MODEL [options]\n"
            "Serves MODEL to ZeroMQ clients (protocol: proto/PROTOCOL.md); runs the forward\n"
            "passes in apr-worker processes that it starts, watches and restarts.\n"
            "  -m MODEL                GGUF model to serve (required)\n"
            "  --listen ENDPOINT       client endpoint, tcp:// or ipc:// (default tcp://127.0.0.1:5555)\n"
            "  --workers LIST          worker backends in order of preference: cpu, cuda or\n"
            "                          cuda,cpu (traffic goes to the first ready one; default cpu)\n"
            "  --threads N             threads per CPU worker (default: all cores)\n"
            "  --ctx N                 context per sequence, prompt included\n"
            "                          (default: the model's, at most 4096)\n"
            "  --max-batch N           sequences generated together (default 16)\n"
            "  --queue N               requests waiting for a free sequence before new ones\n"
            "                          get a 'busy' error (default 64)\n"
            "  --chunk N               prompt tokens per step, so long prompts do not stall\n"
            "                          running streams (default 256)\n"
            "  --heartbeat-timeout MS  restart a worker silent this long (default 2000)\n"
            "  --run-dir DIR           private runtime directory (mode 0700) for the worker\n"
            "                          sockets (default: a fresh one under $TMPDIR or /tmp)\n"
            "  --worker-bin PATH       apr-worker to run (default: next to apr-coord)\n"
            "  -v, --verbose           log more\n"
            "  -h, --help              this text\n"
            "SIGINT or SIGTERM stops it: the workers are shut down, pending requests get an\n"
            "'unavailable' error.\n");
}

static int int_arg(const char *flag, const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "apr-coord: %s: '%s' is not an integer in [%d, %d]\n", flag, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* apr-worker beside our own executable, unless told otherwise. */
static int default_worker_bin(char *buf, size_t cap)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return -1;
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (!slash) return -1;
    *slash = 0;
    if ((size_t)snprintf(buf, cap, "%s/apr-worker", self) >= cap) return -1;
    return 0;
}

int main(int argc, char **argv)
{
    coord_opts o = {
        .listen = "tcp://127.0.0.1:5555",
        .workers = "cpu",
        .max_batch = 16,
        .queue_limit = 64,
        .chunk = 256,
        .hb_timeout_ms = 2000,
    };
    char worker_bin[PATH_MAX];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o.verbose = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "apr-coord: unknown option or missing value: '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o.model_path = v;
        else if (!strcmp(a, "--listen")) o.listen = v;
        else if (!strcmp(a, "--workers")) o.workers = v;
        else if (!strcmp(a, "--run-dir")) o.run_dir = v;
        else if (!strcmp(a, "--worker-bin")) o.worker_bin = v;
        else if (!strcmp(a, "--threads")) bad = int_arg(a, v, 1, 1024, &o.n_threads);
        else if (!strcmp(a, "--ctx")) bad = int_arg(a, v, 2, 1 << 20, &o.n_ctx);
        else if (!strcmp(a, "--max-batch")) bad = int_arg(a, v, 1, 256, &o.max_batch);
        else if (!strcmp(a, "--queue")) bad = int_arg(a, v, 0, 100000, &o.queue_limit);
        else if (!strcmp(a, "--chunk")) bad = int_arg(a, v, 1, 3840, &o.chunk); /* + max-batch <= 4096 */
        else if (!strcmp(a, "--heartbeat-timeout")) bad = int_arg(a, v, 100, 600000, &o.hb_timeout_ms);
        else {
            fprintf(stderr, "apr-coord: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (bad) return 2;
        i++;
    }
    if (!o.model_path) {
        fprintf(stderr, "apr-coord: -m MODEL is required\n");
        usage(stderr);
        return 2;
    }
    if (strncmp(o.listen, "tcp://", 6) && strncmp(o.listen, "ipc://", 6)) {
        fprintf(stderr, "apr-coord: --listen: '%s' is not a tcp:// or ipc:// endpoint\n", o.listen);
        return 2;
    }
    if (!o.worker_bin) {
        if (default_worker_bin(worker_bin, sizeof worker_bin) < 0) {
            fprintf(stderr, "apr-coord: cannot find apr-worker; pass --worker-bin\n");
            return 2;
        }
        o.worker_bin = worker_bin;
    }
    if (access(o.worker_bin, X_OK) < 0) {
        fprintf(stderr, "apr-coord: %s: %s (pass --worker-bin)\n", o.worker_bin, strerror(errno));
        return 2;
    }

    coord c;
    char err[APR_ERRLEN];
    int rc;
    if (coord_init(&c, &o, err) < 0) {
        fprintf(stderr, "apr-coord: %s\n", err);
        rc = 1;
    } else {
        rc = coord_run(&c);
    }
    coord_free(&c);
    return rc;
}
