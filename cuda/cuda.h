/* cuda/ — the CUDA backend. Everything here is compiled only when nvcc is found
 * (APR_HAVE_CUDA); callers go through worker/backend.h and these few queries. */
#ifndef APR_CUDA_H
#define APR_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Number of usable CUDA devices; 0 with a reason in err when there are none
 * (no driver, no device). */
int apr_cuda_device_count(char *err, size_t errlen);
/* One line describing device i (name, compute capability, memory). */
int apr_cuda_device_describe(int i, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
