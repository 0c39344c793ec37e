/* cuda/ (private, for the .cu files): how every kernel is launched and how
 * it waits for its predecessor under programmatic dependent launch. */
#ifndef APR_CUDA_LAUNCH_CUH
#define APR_CUDA_LAUNCH_CUH
#include <cuda_runtime.h>

#include "cuda/kernels.h"

/* Programmatic dependent launch (sm_90): wait until the previous kernel in
 * the stream has finished and its writes are visible, then let the next one
 * be scheduled (it waits the same way, so triggering at once is safe). Both
 * are no-ops for a kernel launched without the attribute. */
static __device__ __forceinline__ void griddep(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/* The trigger alone, for a kernel that lets its successor launch before it
 * waits (apr_cu_ctx.early); griddep() still follows. */
static __device__ __forceinline__ void griddep_trigger(void)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/* A one-entry graph's end for the host (backend.cu, "h_done"), by one
 * thread whose own writes (or, after a fence and a barrier, its block's) are
 * the step's answer: *ticket counts the step, and its release store puts the
 * count in *done (host memory) after them. */
static __device__ __forceinline__ void release_done(unsigned *ticket, unsigned *done)
{
    const unsigned t = *ticket + 1;
    *ticket = t;
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(done), "r"(t) : "memory");
}

/* A launch on c's stream, with the programmatic-serialization attribute
 * where c asks for it. Errors also surface in cudaGetLastError(). */
template <typename... KArgs, typename... Args>
static cudaError_t launch_smem(const apr_cu_ctx *c, size_t smem, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                               Args... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = c->stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = c->pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <typename... KArgs, typename... Args>
static cudaError_t launch(const apr_cu_ctx *c, void (*kernel)(KArgs...), dim3 grid, dim3 block, Args... args)
{
    return launch_smem(c, 0, kernel, grid, block, args...);
}

#endif
