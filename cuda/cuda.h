/* cuda/ — the CUDA backend. Everything here is compiled only when nvcc is found
 * (APR_HAVE_CUDA); callers go through worker/backend.h, which dispatches to the
 * engine below for kind "cuda", and these few queries. */
#ifndef APR_CUDA_H
#define APR_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "worker/backend.h"

/* Number of usable CUDA devices; 0 with a reason in err when there are none
 * (no driver, no device). */
int apr_cuda_device_count(char *err, size_t errlen);
/* One line describing device i (name, compute capability, memory). */
int apr_cuda_device_describe(int i, char *buf, size_t len);

/* The engine on device 0: the backend interface's calls, same contracts. */
typedef struct apr_cuda_model apr_cuda_model;

/* With opts->import set (a holder's export area), the weights and KV cache
 * are the holder's, imported rather than loaded: an engine process. */
apr_cuda_model *apr_cuda_open(const char *path, const apr_backend_opts *opts, char err[APR_ERRLEN]);
/* A holder: allocates and loads the weights and a zeroed KV cache as
 * apr_cuda_open does, prepares no steps (none may be run on it), and writes
 * into exp (APR_BACKEND_EXPORT_BYTES) what an engine needs to import them.
 * apr_cuda_close frees it. */
apr_cuda_model *apr_cuda_hold(const char *path, const apr_backend_opts *opts, void *exp, char err[APR_ERRLEN]);
void apr_cuda_close(apr_cuda_model *m);
const apr_hparams *apr_cuda_hparams(const apr_cuda_model *m);
int apr_cuda_n_ctx(const apr_cuda_model *m);
int apr_cuda_n_seq(const apr_cuda_model *m);
/* 0, -1 (refused), or -2 (the device failed), as apr_backend_step. */
int apr_cuda_step(apr_cuda_model *m, const apr_batch *b, float *logits, char err[APR_ERRLEN]);
void apr_cuda_seq_trim(apr_cuda_model *m, int seq, int from_pos);
void apr_cuda_idle(apr_cuda_model *m);

#ifdef __cplusplus
}
#endif
#endif
