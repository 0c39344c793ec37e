/* The backend interface: one door to the CPU engine and (when built) the CUDA
 * engine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/backend.h"
#include "worker/cpu.h"
#ifdef APR_HAVE_CUDA
#include "cuda/cuda.h"
#endif

struct apr_backend {
    cpu_model *cpu;
};

apr_backend *apr_backend_open(const char *kind, const char *model_path,
                              const apr_backend_opts *opts, char err[APR_ERRLEN])
{
    if (!strcmp(kind, "cuda")) {
#ifdef APR_HAVE_CUDA
        char why[APR_ERRLEN] = "";
        if (apr_cuda_device_count(why, sizeof why) <= 0) {
            snprintf(err, APR_ERRLEN, "%s", why);
            return NULL;
        }
        snprintf(err, APR_ERRLEN, "the CUDA backend is not implemented yet");
#else
        snprintf(err, APR_ERRLEN, "no CUDA device: this build has no CUDA support");
#endif
        return NULL;
    }
    if (strcmp(kind, "cpu")) {
        snprintf(err, APR_ERRLEN, "unknown backend '%s' (cpu or cuda)", kind);
        return NULL;
    }
    apr_backend *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return NULL;
    }
    b->cpu = cpu_model_open(model_path, opts, err);
    if (!b->cpu) {
        free(b);
        return NULL;
    }
    return b;
}

void apr_backend_close(apr_backend *b)
{
    if (!b) return;
    cpu_model_close(b->cpu);
    free(b);
}

const apr_hparams *apr_backend_hparams(const apr_backend *b) { return cpu_model_hparams(b->cpu); }
int apr_backend_n_ctx(const apr_backend *b) { return cpu_model_n_ctx(b->cpu); }
int apr_backend_n_seq(const apr_backend *b) { return cpu_model_n_seq(b->cpu); }

int apr_backend_step(apr_backend *b, const apr_batch *batch, float *logits, char err[APR_ERRLEN])
{
    return cpu_model_step(b->cpu, batch, logits, err);
}

void apr_backend_seq_trim(apr_backend *b, int seq, int from_pos)
{
    cpu_model_seq_trim(b->cpu, seq, from_pos);
}
