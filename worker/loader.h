/* io_uring model loader (private to worker/ and cuda/).
 *
 * Tensor data is read with many large reads in flight into memory the worker
 * owns. For the CPU worker that memory is a shared-memory segment, so that a
 * restarted worker can map the same weights again instead of re-reading them.
 */
#ifndef APR_LOADER_H
#define APR_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"

typedef struct {
    uint64_t bytes;
    double seconds;
    bool used_uring; /* false: io_uring was unavailable and pread was used */
} apr_load_stats;

enum {
    APR_LOAD_PROGRESS = 1, /* progress bar on stderr when it is a TTY */
    APR_LOAD_NO_URING = 2, /* force the pread path (benchmarks, tests) */
};

/* Read len bytes at offset off of the file into dst. io_uring with several MB
 * reads in flight; if io_uring cannot be set up (ENOSYS/EPERM), one notice on
 * stderr and pread instead. Short reads and EINTR are handled; reading past the
 * end of the file is an error. The notice comes once per call: a caller that
 * reads in many calls passes APR_LOAD_NO_URING after one returns
 * st->used_uring == false. Returns only when no read is in flight, so dst may
 * be freed right after, even on error. st may be NULL. */
int apr_load_read(const char *path, uint64_t off, uint64_t len, void *dst, int flags,
                  apr_load_stats *st, char err[APR_ERRLEN]);

/* A shared-memory segment (memfd), mapped read/write. The fd can be passed to
 * (or inherited by) another process, which maps it with apr_seg_map. The fd
 * is close-on-exec (pass it with SCM_RIGHTS, or clear FD_CLOEXEC before an
 * exec) and sealed against resizing, so a mapper can trust its size.
 * (proto.h's apr_shm is the inheritable kind, for the logits the coordinator
 * hands to its workers; weights must never leak into children.) */
typedef struct {
    int fd;
    void *addr;
    size_t len;
} apr_seg;

int apr_seg_create(apr_seg *s, const char *name, size_t len, char err[APR_ERRLEN]);
/* len from fstat; refuses an fd that is not a sealed segment. On success s
 * owns fd (apr_seg_close closes it); on failure the caller still does. */
int apr_seg_map(apr_seg *s, int fd, char err[APR_ERRLEN]);
/* Unmaps and closes; safe after a failed create/map and when called twice. */
void apr_seg_close(apr_seg *s);

#endif
