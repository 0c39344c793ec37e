/* io_uring model loader and shared-memory segments.
 *
 * apr_load_read keeps QDEPTH reads of CHUNK bytes in flight over the requested
 * range and refills the queue as completions arrive, so the device always has
 * work queued; a short read is resubmitted for its remainder. Reads are
 * buffered (no O_DIRECT): GGUF tensor data starts at arbitrary 32-byte
 * aligned offsets and lands at arbitrary destinations, so O_DIRECT would need
 * bounce buffers for the edges, and a model that was just written or read is
 * usually in the page cache anyway.
 */
#include "worker/loader.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK ((uint64_t)4 << 20)       /* bytes per io_uring read */
#define QDEPTH 16                       /* reads in flight */
#ifndef APR_LOADER_ASYNC /* -DAPR_LOADER_ASYNC=0 to measure without */
#define APR_LOADER_ASYNC 1
#endif
#define PREAD_CHUNK ((uint64_t)8 << 20) /* bytes per pread in the fallback */

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- progress */

typedef struct {
    bool on;
    uint64_t total;
    double t0, last;
} progress;

static void progress_init(progress *p, int flags, uint64_t total)
{
    p->on = (flags & APR_LOAD_PROGRESS) && total > 0 && isatty(STDERR_FILENO);
    p->total = total;
    p->t0 = p->last = now_sec();
}

static void progress_draw(progress *p, uint64_t done, bool final)
{
    if (!p->on)
        return;
    double t = now_sec();
    if (!final && t - p->last < 0.1) /* a terminal redraw costs more than it tells */
        return;
    p->last = t;
    double el = t - p->t0;
    double gb = done / 1e9;
    fprintf(stderr, "\rapr: loading %3d%%  %.2f / %.2f GB  %.2f GB/s ", (int)(done * 100 / p->total),
            gb, p->total / 1e9, el > 0 ? gb / el : 0.0);
    if (final)
        fputc('\n', stderr);
    fflush(stderr);
}

/* ---------------------------------------------------------------- pread */

static int read_pread(int fd, const char *path, uint64_t off, uint64_t len, uint8_t *dst,
                      progress *pg, char err[APR_ERRLEN])
{
    uint64_t done = 0;
    while (done < len) {
        uint64_t want = len - done < PREAD_CHUNK ? len - done : PREAD_CHUNK;
        ssize_t n = pread(fd, dst + done, want, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            snprintf(err, APR_ERRLEN, "%s: read at offset %" PRIu64 " failed: %s", path, off + done,
                     strerror(errno));
            return -1;
        }
        if (n == 0) {
            snprintf(err, APR_ERRLEN, "%s: file is shorter than expected (end at offset %" PRIu64 ")",
                     path, off + done);
            return -1;
        }
        done += (uint64_t)n;
        progress_draw(pg, done, false);
    }
    return 0;
}

/* ---------------------------------------------------------------- io_uring */

typedef struct {
    uint64_t pos; /* file offset of the next byte this slot reads */
    uint64_t left;
} slot;

static void prep_slot(struct io_uring *ring, int fd, slot *s, uint64_t off, uint8_t *dst, int idx)
{
    /* The SQ has QDEPTH entries and at most QDEPTH reads are ever queued, so
     * a free SQE always exists. */
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    unsigned n = s->left < CHUNK ? (unsigned)s->left : (unsigned)CHUNK;
    io_uring_prep_read(sqe, fd, dst + (s->pos - off), n, s->pos);
    /* Straight to io-wq workers: the copies out of the page cache (and the
     * faults on a fresh destination) then run on several cores at once,
     * instead of one after another inside io_uring_submit. */
    if (APR_LOADER_ASYNC)
        io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
    io_uring_sqe_set_data64(sqe, (uint64_t)idx);
}

/* Returns 0, or -1 with err set. Never returns while a read is still in
 * flight: the kernel would keep writing into dst after the caller freed it. */
static int read_uring(struct io_uring *ring, int fd, const char *path, uint64_t off, uint64_t len,
                      uint8_t *dst, progress *pg, char err[APR_ERRLEN])
{
    slot slots[QDEPTH];
    uint64_t next = off, end = off + len, done = 0;
    int inflight = 0, rc = 0;
    bool dropped = false;

    for (int i = 0; i < QDEPTH && next < end; i++) {
        slots[i].pos = next;
        slots[i].left = end - next < CHUNK ? end - next : CHUNK;
        next += slots[i].left;
        prep_slot(ring, fd, &slots[i], off, dst, i);
        inflight++;
    }

    while (inflight > 0) {
        int r;
        if (rc == 0) {
            r = io_uring_submit_and_wait(ring, 1);
        } else {
            /* Draining after an error: only wait for what the kernel has. */
            struct io_uring_cqe *c;
            r = io_uring_wait_cqe(ring, &c);
        }
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
            if (rc == 0)
                snprintf(err, APR_ERRLEN, "%s: io_uring submit failed: %s", path, strerror(-r));
            else if (r != -ETIME)
                break; /* cannot even wait: nothing sane is left to do */
            rc = -1;
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(ring, head, cqe)
        {
            seen++;
            int i = (int)io_uring_cqe_get_data64(cqe);
            int res = cqe->res;
            slot *s = &slots[i];
            if (rc != 0) {
                inflight--;
                continue;
            }
            if (res == -EINTR || res == -EAGAIN) {
                prep_slot(ring, fd, s, off, dst, i);
                continue;
            }
            if (res < 0 || res == 0) {
                if (res < 0)
                    snprintf(err, APR_ERRLEN, "%s: read at offset %" PRIu64 " failed: %s", path,
                             s->pos, strerror(-res));
                else
                    snprintf(err, APR_ERRLEN,
                             "%s: file is shorter than expected (end at offset %" PRIu64 ")", path,
                             s->pos);
                rc = -1;
                inflight--;
                continue;
            }
            s->pos += (uint64_t)res;
            s->left -= (uint64_t)res;
            done += (uint64_t)res;
            if (s->left == 0 && next < end) {
                s->left = end - next < CHUNK ? end - next : CHUNK;
                s->pos = next;
                next += s->left;
            }
            if (s->left > 0)
                prep_slot(ring, fd, s, off, dst, i); /* short read: the rest, or a new chunk */
            else
                inflight--;
        }
        io_uring_cq_advance(ring, seen);
        /* Reads prepared but never handed to the kernel (a failed submit, or
         * resubmissions made before an error showed up) will not complete;
         * they stay in the SQ and die with the ring. */
        if (rc != 0 && !dropped) {
            inflight -= (int)io_uring_sq_ready(ring);
            dropped = true;
        }
        progress_draw(pg, done, false);
    }
    return rc;
}

/* ---------------------------------------------------------------- entry */

int apr_load_read(const char *path, uint64_t off, uint64_t len, void *dst, int flags,
                  apr_load_stats *st, char err[APR_ERRLEN])
{
    double t0 = now_sec();
    if (st)
        *st = (apr_load_stats){0};
    if (!path || (len > 0 && !dst)) {
        snprintf(err, APR_ERRLEN, "apr_load_read: no %s given", path ? "destination" : "path");
        return -1;
    }
    if (len > UINT64_MAX - off || off + len > (uint64_t)INT64_MAX) {
        snprintf(err, APR_ERRLEN, "%s: range at offset %" PRIu64 " of %" PRIu64 " bytes is out of range",
                 path, off, len);
        return -1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, APR_ERRLEN, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        snprintf(err, APR_ERRLEN, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    /* Checked up front for a clear message; the read loops check again,
     * since the file may shrink while we read it. */
    if (S_ISREG(sb.st_mode) && off + len > (uint64_t)sb.st_size) {
        snprintf(err, APR_ERRLEN,
                 "%s: file is shorter than expected (%" PRIu64 " bytes, need %" PRIu64 ")", path,
                 (uint64_t)sb.st_size, off + len);
        close(fd);
        return -1;
    }
    if (len == 0) {
        close(fd);
        if (st)
            st->seconds = now_sec() - t0;
        return 0;
    }
    posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_SEQUENTIAL); /* a hint; failure is harmless */

    progress pg;
    progress_init(&pg, flags, len);
    bool uring = false;
    struct io_uring ring;
    if (!(flags & APR_LOAD_NO_URING)) {
        int r = io_uring_queue_init(QDEPTH, &ring, 0);
        if (r == 0)
            uring = true;
        else /* seccomp (EPERM), old kernels (ENOSYS), locked-memory limits (ENOMEM) */
            fprintf(stderr, "apr: io_uring unavailable (%s), reading with pread\n", strerror(-r));
    }
    int rc = uring ? read_uring(&ring, fd, path, off, len, dst, &pg, err)
                   : read_pread(fd, path, off, len, dst, &pg, err);
    if (uring)
        io_uring_queue_exit(&ring);
    close(fd);
    if (rc == 0)
        progress_draw(&pg, len, true);
    else if (pg.on)
        fputc('\n', stderr); /* leave the partial bar on its own line above the error */
    if (st) {
        st->bytes = rc == 0 ? len : 0;
        st->seconds = now_sec() - t0;
        st->used_uring = uring;
    }
    return rc;
}

/* ---------------------------------------------------------------- shm */

int apr_seg_create(apr_seg *s, const char *name, size_t len, char err[APR_ERRLEN])
{
    *s = (apr_seg){.fd = -1, .addr = NULL, .len = 0};
    if (len == 0 || len > (size_t)INT64_MAX) {
        snprintf(err, APR_ERRLEN, "shm: invalid segment size %zu", len);
        return -1;
    }
    /* Sealed against shrinking and growing once sized, so that a process
     * mapping it by fd can trust fstat and never takes SIGBUS from a peer
     * truncating it under the mapping. */
    int fd = memfd_create(name ? name : "apr", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        snprintf(err, APR_ERRLEN, "shm: memfd_create(%s) failed: %s", name ? name : "apr",
                 strerror(errno));
        return -1;
    }
    if (ftruncate(fd, (off_t)len) != 0) {
        snprintf(err, APR_ERRLEN, "shm: cannot size segment to %zu bytes: %s", len, strerror(errno));
        close(fd);
        return -1;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        snprintf(err, APR_ERRLEN, "shm: cannot seal segment: %s", strerror(errno));
        close(fd);
        return -1;
    }
    void *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (a == MAP_FAILED) {
        snprintf(err, APR_ERRLEN, "shm: cannot map %zu bytes: %s", len, strerror(errno));
        close(fd);
        return -1;
    }
    /* Where shmem THP is enabled ("advise"), 2 MB pages cut the faults taken
     * while loading by 512x; elsewhere this is a no-op. */
    madvise(a, len, MADV_HUGEPAGE);
    *s = (apr_seg){.fd = fd, .addr = a, .len = len};
    return 0;
}

int apr_seg_map(apr_seg *s, int fd, char err[APR_ERRLEN])
{
    *s = (apr_seg){.fd = -1, .addr = NULL, .len = 0};
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        snprintf(err, APR_ERRLEN, "shm: bad fd %d: %s", fd, fd < 0 ? "negative" : strerror(errno));
        return -1;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size <= 0 || (uint64_t)sb.st_size > SIZE_MAX) {
        snprintf(err, APR_ERRLEN, "shm: fd %d is not a non-empty memory segment", fd);
        return -1;
    }
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
        snprintf(err, APR_ERRLEN, "shm: fd %d is not a sealed apr segment (could shrink under us)", fd);
        return -1;
    }
    size_t len = (size_t)sb.st_size;
    void *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (a == MAP_FAILED) {
        snprintf(err, APR_ERRLEN, "shm: cannot map fd %d (%zu bytes): %s", fd, len, strerror(errno));
        return -1;
    }
    *s = (apr_seg){.fd = fd, .addr = a, .len = len};
    return 0;
}

void apr_seg_close(apr_seg *s)
{
    if (s->addr)
        munmap(s->addr, s->len);
    if (s->fd >= 0)
        close(s->fd);
    *s = (apr_seg){.fd = -1, .addr = NULL, .len = 0};
}
