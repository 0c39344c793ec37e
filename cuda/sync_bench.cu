/* Benchmarks' own kernels. The cost of a dependency between two steps of
 * work on the GPU, measured two ways (test_kernels_cuda --sync-bench): a
 * kernel boundary under a CUDA graph with programmatic dependent launch (what
 * the decode step pays ~255 times a token), and a grid-wide barrier inside one
 * persistent kernel (what a one-kernel decode step would pay instead). And a
 * kernel that only reads (--gemv-bench's ceiling for a product's bytes). */
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
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, sync_barrier_kernel, 256, 0);
    const int sms = apr_cu_sms(NULL), rounds = 200;
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    printf("%-44s %8s %10s\n", "dependency", "blocks", "us each");
    const int shapes[] = {6, sms, 2 * sms, 3 * sms};
    for (int pdl = 0; pdl < 2; pdl++)
        for (int si = 0; si < 4; si++) {
            apr_cu_ctx c = {};
            c.stream = s;
            c.pdl = pdl;
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

/* Reads n16 16-byte words and keeps nothing: U loads a thread in flight, the
 * first round issued before the wait for the previous kernel, as the GEMV's
 * are. The xor goes to sink only on an impossible value, so the loads stay. */
template <int U>
static __global__ void read_kernel(const uint4 *p, size_t n16, unsigned *sink)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    unsigned acc = 0;
    bool waited = false;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += U * stride) {
        uint4 v[U];
#pragma unroll
        for (int u = 0; u < U; u++) v[u] = i + u * stride < n16 ? p[i + u * stride] : make_uint4(0, 0, 0, 0);
        if (!waited) griddep();
        waited = true;
#pragma unroll
        for (int u = 0; u < U; u++) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
    if (!waited) griddep();
    if (acc == 0x9e3779b9u) sink[0] = acc;
}

/* shape 0: a resident grid (8 blocks of 256 a multiprocessor) striding with
 * 4 loads a thread in flight; 1: a block per 16 KB, each thread's 4 loads
 * once (the GEMV's many short blocks). bytes: a multiple of 16. */
extern "C" int apr_cu_read_bench(const void *p, size_t bytes, int shape, unsigned *sink, const apr_cu_ctx *c)
{
    const size_t n16 = bytes / 16, per_block = 256 * 4;
    const unsigned grid = shape ? (unsigned)((n16 + per_block - 1) / per_block) : (unsigned)(8 * apr_cu_sms(c));
    return launch(c, read_kernel<4>, dim3(grid), dim3(256), (const uint4 *)p, n16, sink) == cudaSuccess ? 0 : -1;
}
