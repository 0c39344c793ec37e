/* The CPU engine (private to worker/): a Llama/Qwen2 forward pass over GGUF
 * weights kept in their quantized blocks. worker/backend.c wraps it in the
 * backend interface. */
#ifndef APR_CPU_H
#define APR_CPU_H

#include "worker/backend.h"

typedef struct cpu_model cpu_model;

cpu_model *cpu_model_open(const char *path, const apr_backend_opts *opts, char err[APR_ERRLEN]);
void cpu_model_close(cpu_model *m);
const apr_hparams *cpu_model_hparams(const cpu_model *m);
int cpu_model_n_ctx(const cpu_model *m);
int cpu_model_n_seq(const cpu_model *m);
int cpu_model_step(cpu_model *m, const apr_batch *b, float *logits, char err[APR_ERRLEN]);
void cpu_model_seq_trim(cpu_model *m, int seq, int from_pos);

#endif
