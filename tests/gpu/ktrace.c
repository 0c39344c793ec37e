/* A kernel timeline through CUPTI, for a process that does not know it is
 * traced: LD_PRELOAD=libktrace.so KTRACE_OUT=FILE apr eval ... writes one
 * line a kernel (graph nodes included): start and end in ns (the GPU's
 * clock), graph id, grid and block x, mangled name. Built and used by
 * tests/gpu/timeline.sh; the overlap that programmatic dependent launch gives
 * shows as a start before the previous kernel's end, which per-kernel stamps
 * (APR_CUDA_PROFILE=3) break. */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE *ktrace_out; /* the process's one trace file: CUPTI's callbacks take no user pointer */

static void CUPTIAPI buffer_requested(uint8_t **buf, size_t *size, size_t *max_records)
{
    *size = 16u << 20;
    *buf = aligned_alloc(8, *size);
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid)
{
    (void)ctx, (void)stream, (void)size;
    CUpti_Activity *r = NULL;
    while (cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
        if (r->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)r;
        if (ktrace_out)
            fprintf(ktrace_out, "%llu,%llu,%u,%d,%d,%s\n", (unsigned long long)k->start, (unsigned long long)k->end,
                    k->graphId, k->gridX, k->blockX, k->name);
    }
    free(buf);
}

static void ktrace_flush(void)
{
    cuptiActivityFlushAll(1);
    if (ktrace_out) fclose(ktrace_out);
    ktrace_out = NULL;
}

__attribute__((constructor)) static void ktrace_init(void)
{
    const char *path = getenv("KTRACE_OUT");
    if (!path || !(ktrace_out = fopen(path, "w"))) return;
    if (cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
        cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
        fprintf(stderr, "ktrace: CUPTI refused the kernel activity\n");
        return;
    }
    atexit(ktrace_flush);
}
