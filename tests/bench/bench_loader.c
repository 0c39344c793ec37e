/* Load speed: apr_load_read (io_uring, and its pread fallback) against a plain
 * read() loop over the same file, with the page cache warm and cold, and the
 * cost of loading into a fresh shared-memory segment (page faults included).
 *
 *   bench_loader [PATH]     default: a 1 GB temp file (APR_BENCH_LOADER_MB)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "worker/loader.h"

#define READ_CHUNK ((size_t)4 << 20)
#define WARM_RUNS 3
#define COLD_RUNS 2

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int make_file(char *path, size_t cap, size_t size)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(path, cap, "%s/apr-bench-loader-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, "bench_loader: mkstemp %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t blen = 8 << 20;
    uint64_t *b = malloc(blen), x = 88172645463325252ull;
    int rc = b ? 0 : -1;
    for (size_t done = 0; rc == 0 && done < size;) {
        for (size_t i = 0; i < blen / 8; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b[i] = x;
        }
        size_t n = size - done < blen ? size - done : blen;
        for (size_t w = 0; w < n;) {
            ssize_t r = write(fd, (char *)b + w, n - w);
            if (r <= 0) {
                fprintf(stderr, "bench_loader: write %s: %s\n", path, strerror(errno));
                rc = -1;
                break;
            }
            w += (size_t)r;
        }
        done += n;
    }
    free(b);
    if (rc == 0 && fsync(fd) != 0)
        rc = -1;
    close(fd);
    if (rc != 0)
        unlink(path);
    return rc;
}

/* Drops the file's pages from the page cache and returns the fraction still
 * resident afterwards (mincore), or -1 if that could not be measured. */
static double drop_cache(const char *path, size_t size)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    fdatasync(fd); /* dirty pages cannot be dropped */
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    double frac = -1;
    void *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), np = (size + pg - 1) / pg;
    unsigned char *vec = malloc(np);
    if (m != MAP_FAILED && vec && mincore(m, size, vec) == 0) {
        size_t in = 0;
        for (size_t i = 0; i < np; i++)
            in += vec[i] & 1;
        frac = (double)in / np;
    }
    free(vec);
    if (m != MAP_FAILED)
        munmap(m, size);
    close(fd);
    return frac;
}

static int plain_read(const char *path, void *dst, size_t size)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    size_t done = 0;
    while (done < size) {
        size_t want = size - done < READ_CHUNK ? size - done : READ_CHUNK;
        ssize_t n = read(fd, (char *)dst + done, want);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    close(fd);
    return done == size ? 0 : -1;
}

static uint64_t checksum(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i += 4096) /* one byte a page: catches a missed chunk */
        h = (h ^ b[i]) * 1099511628211ull;
    return (h ^ b[n - 1]) * 1099511628211ull;
}

enum { M_READ, M_URING, M_PREAD, N_METHODS };
static const char *const method_name[N_METHODS] = {"read() 4 MB loop", "apr io_uring", "apr pread fallback"};

/* One timed load with method m into dst; returns GB/s or -1. */
static double run_method(int m, const char *path, void *dst, size_t size)
{
    char err[APR_ERRLEN];
    apr_load_stats st;
    double t0 = now_sec();
    int rc = m == M_READ ? plain_read(path, dst, size)
                         : apr_load_read(path, 0, size, dst, m == M_PREAD ? APR_LOAD_NO_URING : 0, &st, err);
    double t = now_sec() - t0;
    if (rc != 0) {
        fprintf(stderr, "bench_loader: %s failed: %s\n", method_name[m], m == M_READ ? strerror(errno) : err);
        return -1;
    }
    if (m == M_URING && !st.used_uring)
        fprintf(stderr, "bench_loader: note: io_uring was unavailable, the io_uring row is pread\n");
    return size / t / 1e9;
}

/* Creates a fresh segment, optionally pre-faults it, loads the file into it
 * with io_uring; returns the GB/s of the whole (create + fault + load). */
static double shm_load(const char *path, size_t size, int populate)
{
    char err[APR_ERRLEN];
    apr_seg s;
    double t0 = now_sec();
    if (apr_seg_create(&s, "apr-bench", size, err) != 0) {
        fprintf(stderr, "bench_loader: %s\n", err);
        return -1;
    }
#ifdef MADV_POPULATE_WRITE
    if (populate && madvise(s.addr, s.len, MADV_POPULATE_WRITE) != 0)
        fprintf(stderr, "bench_loader: MADV_POPULATE_WRITE: %s\n", strerror(errno));
#else
    (void)populate;
#endif
    int rc = apr_load_read(path, 0, size, s.addr, 0, NULL, err);
    double t = now_sec() - t0;
    apr_seg_close(&s);
    if (rc != 0) {
        fprintf(stderr, "bench_loader: %s\n", err);
        return -1;
    }
    return size / t / 1e9;
}

int main(int argc, char **argv)
{
    char tmp[512];
    const char *path;
    bool own = false;
    if (argc > 1) {
        path = argv[1];
    } else {
        const char *mb = getenv("APR_BENCH_LOADER_MB");
        size_t n = (size_t)(mb ? strtoull(mb, NULL, 10) : 1024) << 20;
        if (n == 0) {
            fprintf(stderr, "bench_loader: APR_BENCH_LOADER_MB must be a positive number\n");
            return 1;
        }
        if (make_file(tmp, sizeof tmp, n) != 0)
            return 1;
        path = tmp;
        own = true;
    }
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size == 0) {
        fprintf(stderr, "bench_loader: %s: not a non-empty regular file\n", path);
        return 1;
    }
    size_t size = (size_t)sb.st_size;
    /* One destination for every method, faulted in up front, so the rows
     * compare reading and nothing else. */
    void *dst = NULL;
    if (posix_memalign(&dst, 2 << 20, size) != 0) {
        fprintf(stderr, "bench_loader: cannot allocate %zu bytes\n", size);
        return 1;
    }
    memset(dst, 0, size);

    printf("loader: %s, %.2f GB\n", path, size / 1e9);
    double warm[N_METHODS] = {0}, cold[N_METHODS] = {0};
    uint64_t sum[N_METHODS] = {0};
    double resident = 0;
    int status = 0;
    for (int m = 0; m < N_METHODS; m++) {
        run_method(m, path, dst, size); /* warms the cache */
        for (int r = 0; r < WARM_RUNS; r++) {
            double g = run_method(m, path, dst, size);
            if (g < 0)
                status = 1;
            if (g > warm[m])
                warm[m] = g;
        }
        sum[m] = checksum(dst, size);
        for (int r = 0; r < COLD_RUNS; r++) {
            double f = drop_cache(path, size);
            if (f > resident)
                resident = f;
            double g = run_method(m, path, dst, size);
            if (g > cold[m])
                cold[m] = g;
        }
        if (sum[m] != sum[0]) {
            fprintf(stderr, "bench_loader: %s read different bytes than read()\n", method_name[m]);
            status = 1;
        }
    }
    printf("%-22s %10s %10s\n", "method", "warm GB/s", "cold GB/s");
    for (int m = 0; m < N_METHODS; m++)
        printf("%-22s %10.2f %10.2f\n", method_name[m], warm[m], cold[m]);
    if (resident < 0)
        printf("cold: could not check the page cache (mincore failed)\n");
    else
        printf("cold: page cache dropped with POSIX_FADV_DONTNEED: %s (at most %.1f%% still resident)\n",
               resident < 0.01 ? "yes" : "NO", resident * 100);

    /* Into a fresh segment, warm cache: what a worker start really pays. */
    double sh = 0, shp = 0;
    for (int r = 0; r < WARM_RUNS; r++) {
        double g = shm_load(path, size, 0), gp = shm_load(path, size, 1);
        sh = g > sh ? g : sh;
        shp = gp > shp ? gp : shp;
    }
    printf("fresh shm + io_uring load, warm cache:          %.2f GB/s\n", sh);
    printf("fresh shm, MADV_POPULATE_WRITE, then load:      %.2f GB/s\n", shp);

    free(dst);
    if (own)
        unlink(path);
    return status;
}
