/* apr-coord: serves a GGUF model to ZeroMQ clients. Reads the flags and the
 * --config file (config.c), then hands over to the event loop in server.c. */
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
            "       apr-coord --config FILE [options]\n"
            "Serves MODEL to ZeroMQ clients (protocol: proto/PROTOCOL.md); runs the forward\n"
            "passes in apr-worker processes that it starts, watches and restarts.\n"
            "  -m, --model MODEL       GGUF model to serve (required)\n"
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
            "  --config FILE           read settings from FILE: one 'key = value' a line, keys\n"
            "                          are the long flags with '_' for '-' (max_batch = 8,\n"
            "                          verbose = true), '#' starts a comment line; flags given\n"
            "                          on the command line win over the file, wherever they are\n"
            "  --print-config          print the effective settings in that format and exit\n"
            "  -h, --help              this text\n"
            "SIGINT or SIGTERM stops it: the workers are shut down, pending requests get an\n"
            "'unavailable' error. Exit status 2: bad flags or configuration.\n");
}

/* The key a flag sets (its long name with '_' for '-'), or NULL when it is
 * not one of the settings. */
static const char *flag_key(const char *flag, char *buf, size_t cap)
{
    if (!strcmp(flag, "-m")) return "model";
    if (!strcmp(flag, "-v")) return "verbose";
    if (strncmp(flag, "--", 2) || strchr(flag, '_') || strlen(flag + 2) >= cap) return NULL;
    snprintf(buf, cap, "%s", flag + 2);
    for (char *p = buf; *p; p++)
        if (*p == '-') *p = '_';
    return coord_opt_known(buf) ? buf : NULL;
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

/* Flags in two passes, so that they win over --config wherever it stands:
 * the first finds --config and checks that every flag is known and has its
 * value, the file is loaded, then the second applies the flags. */
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
    const char *config = NULL;
    bool print_config = false;
    char keybuf[32];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--print-config")) {
            print_config = true;
            continue;
        }
        const char *key = strcmp(a, "--config") ? flag_key(a, keybuf, sizeof keybuf) : "config";
        if (!key) {
            fprintf(stderr, "apr-coord: unknown option '%s' (see --help)\n", a);
            return 2;
        }
        if (coord_opt_is_switch(key)) continue;
        if (i + 1 == argc) {
            fprintf(stderr, "apr-coord: %s needs a value (see --help)\n", a);
            return 2;
        }
        if (!strcmp(key, "config")) {
            if (config) {
                fprintf(stderr, "apr-coord: --config given twice\n");
                return 2;
            }
            config = argv[i + 1];
        }
        i++;
    }

    coord_conf conf = {0}; /* owns the file's strings that o points to */
    char err[COORD_CONF_ERRLEN];
    char worker_bin[PATH_MAX];
    int rc = 2;
    if (config && coord_conf_load(&conf, &o, config, err) < 0) {
        fprintf(stderr, "apr-coord: %s\n", err);
        goto out;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--print-config")) continue;
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        const char *key = flag_key(a, keybuf, sizeof keybuf);
        const char *v = coord_opt_is_switch(key) ? "true" : argv[++i];
        if (coord_opt_set(&o, key, v, err) < 0) {
            fprintf(stderr, "apr-coord: %s: %s\n", a, err);
            goto out;
        }
    }
    if (!o.model_path) {
        fprintf(stderr, "apr-coord: no model: pass -m MODEL or set model = in the --config file\n");
        goto out;
    }
    if (!o.worker_bin) {
        if (default_worker_bin(worker_bin, sizeof worker_bin) < 0) {
            fprintf(stderr, "apr-coord: cannot find apr-worker; pass --worker-bin\n");
            goto out;
        }
        o.worker_bin = worker_bin;
    }
    if (access(o.worker_bin, X_OK) < 0) {
        fprintf(stderr, "apr-coord: %s: %s (pass --worker-bin)\n", o.worker_bin, strerror(errno));
        goto out;
    }
    if (print_config) {
        rc = 0;
        if (coord_conf_print(stdout, &o, err) < 0) {
            fprintf(stderr, "apr-coord: --print-config: %s\n", err);
            rc = 2;
        }
        goto out;
    }

    coord c;
    if (coord_init(&c, &o, err) < 0) {
        fprintf(stderr, "apr-coord: %s\n", err);
        rc = 1;
    } else {
        rc = coord_run(&c);
    }
    coord_free(&c);
out:
    coord_conf_free(&conf);
    return rc;
}
