/* The cost of a dependency between two steps of work on the GPU, measured
 * two ways (test_kernels_cuda --sync-bench): a kernel boundary under a CUDA
 * graph with programmatic dependent launch (what the decode step pays ~255
 * times a token), and a grid-wide barrier inside one persistent kernel (what
 * a one-kernel decode step would pay instead). */
#include <cuda_runtime.h>
#include <stdio.h>

#include "cuda/kernels.h"
#include "cuda/launch.cuh"

/* Every block of the grid arrives, then waits until all have: thread 0
 * publishes the block's writes (release) and spins on the count (acquire).
 * target: gridDim.x times the barrier's ordinal (the count starts at 0). */
static __device__ __forceinline__ void grid_barrier(unsigned *count, unsigned target)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(count) : "memory");
        } while (v < target);
    }
    __syncthreads();
}

static __global__ void sync_empty_kernel(unsigned *sink)
{
    griddep();
    if (threadIdx.x == 0 && blockIdx.x == 0) sink[1] += 1;
}

static __global__ void sync_barrier_kernel(unsigned *count, int rounds)
{
    for (int i = 1; i <= rounds; i++) grid_barrier(count, (unsigned)i * gridDim.x);
}

/* Per-dependency microseconds of a graph of `rounds` dependent launches of
 * `blocks` blocks, and of one persistent kernel of `blocks` blocks crossing
 * `rounds` barriers; printed as a table. 0 on success. */
extern "C" int apr_cu_sync_bench(void)
{
    cudaStream_t s;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) return -1;
    unsigned *d = NULL;
    if (cudaMalloc((void **)&d, 64) != cudaSuccess) return -1;
    cudaMemset(d, 0, 64);
    apr_cu_init();
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, sync_barrier_kernel, 256, 0);
    const int sms = apr_cu_sms(), rounds = 200;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    printf("%-44s %8s %10s\n", "dependency", "blocks", "us each");
    const int shapes[] = {6, sms, 2 * sms, 3 * sms};
    for (int pdl = 0; pdl < 2; pdl++)
        for (int si = 0; si < 4; si++) {
            const apr_cu_ctx c = {s, pdl, NULL, 0, NULL, 0};
            cudaGraph_t g;
            cudaGraphExec_t ge;
            cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
            for (int i = 0; i < rounds; i++) launch(&c, sync_empty_kernel, dim3(shapes[si]), dim3(256), d);
            cudaStreamEndCapture(s, &g);
            if (cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) return -1;
            cudaGraphDestroy(g);
            cudaGraphLaunch(ge, s);
            cudaEventRecord(e0, s);
            for (int k = 0; k < 10; k++) cudaGraphLaunch(ge, s);
            cudaEventRecord(e1, s);
            cudaEventSynchronize(e1);
            float ms = 0.f;
            cudaEventElapsedTime(&ms, e0, e1);
            printf("%-44s %8d %10.3f\n", pdl ? "kernel boundary, graph + PDL" : "kernel boundary, graph", shapes[si],
                   1000.0 * ms / (10 * rounds));
            cudaGraphExecDestroy(ge);
        }
    for (int si = 0; si < 4; si++) {
        if (shapes[si] > per_sm * sms) continue;
        for (int k = 0; k < 11; k++) {
            if (k == 1) cudaEventRecord(e0, s);
            cudaMemsetAsync(d, 0, 4, s);
            sync_barrier_kernel<<<shapes[si], 256, 0, s>>>(d, rounds);
        }
        cudaEventRecord(e1, s);
        cudaEventSynchronize(e1);
        float ms = 0.f;
        cudaEventElapsedTime(&ms, e0, e1);
        printf("%-44s %8d %10.3f\n", "grid barrier in one kernel", shapes[si], 1000.0 * ms / (10 * rounds));
    }
    const cudaError_t err = cudaStreamSynchronize(s);
    if (err != cudaSuccess) printf("sync bench: %s\n", cudaGetErrorString(err));
    cudaFree(d);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(s);
    return err == cudaSuccess ? 0 : -1;
}
