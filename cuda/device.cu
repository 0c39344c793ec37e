/* Device discovery: the first thing the CUDA worker does, and what `apr-worker
 * --devices` prints. */
#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda/cuda.h"

extern "C" int apr_cuda_device_count(char *err, size_t errlen)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "no CUDA device: %s", cudaGetErrorString(e));
        return 0;
    }
    if (n == 0) snprintf(err, errlen, "no CUDA device");
    return n;
}

extern "C" int apr_cuda_device_describe(int i, char *buf, size_t len)
{
    cudaDeviceProp p;
    cudaError_t e = cudaGetDeviceProperties(&p, i);
    if (e != cudaSuccess) {
        snprintf(buf, len, "device %d: %s", i, cudaGetErrorString(e));
        return -1;
    }
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(i) == cudaSuccess) cudaMemGetInfo(&free_b, &total_b);
    snprintf(buf, len, "device %d: %s, sm_%d%d, %d SMs, %.1f GiB (%.1f GiB free)", i, p.name,
             p.major, p.minor, p.multiProcessorCount, (double)p.totalGlobalMem / (1 << 30),
             (double)free_b / (1 << 30));
    return 0;
}
