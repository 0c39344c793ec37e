/* worker/loader: io_uring and pread reads of file ranges into plain memory and
 * shared-memory segments; shm segments seen from another process. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "worker/loader.h"

/* Odd size, not a multiple of any chunk size the loader may use. */
#define FILE_SIZE ((size_t)(37u << 20) + 12347u)

typedef struct {
    char path[256];
    uint8_t *data; /* what the file holds */
} fixture;

static fixture fx;

static void make_file(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(fx.path, sizeof fx.path, "%s/apr-test-loader-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(fx.path);
    ck_assert_msg(fd >= 0, "mkstemp: %s", strerror(errno));
    fx.data = malloc(FILE_SIZE);
    ck_assert_ptr_nonnull(fx.data);
    uint64_t x = 0x9E3779B97F4A7C15ull; /* xorshift64: cheap, no repeating pattern */
    for (size_t i = 0; i < FILE_SIZE; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        fx.data[i] = (uint8_t)(x >> 24);
    }
    for (size_t done = 0; done < FILE_SIZE;) {
        ssize_t n = write(fd, fx.data + done, FILE_SIZE - done);
        ck_assert_msg(n > 0, "write: %s", strerror(errno));
        done += (size_t)n;
    }
    close(fd);
}

static void drop_file(void)
{
    unlink(fx.path);
    free(fx.data);
    fx.data = NULL;
}

static bool uring_available(void)
{
    struct io_uring ring;
    if (io_uring_queue_init(4, &ring, 0) != 0)
        return false;
    io_uring_queue_exit(&ring);
    return true;
}

/* Reads [off, off+len) with the given flags into dst and checks every byte. */
static void check_range(uint64_t off, uint64_t len, int flags, uint8_t *dst)
{
    char err[APR_ERRLEN] = "";
    apr_load_stats st;
    memset(dst, 0xA5, len);
    int rc = apr_load_read(fx.path, off, len, dst, flags, &st, err);
    ck_assert_msg(rc == 0, "read off=%llu len=%llu flags=%d: %s", (unsigned long long)off,
                  (unsigned long long)len, flags, err);
    ck_assert_uint_eq(st.bytes, len);
    ck_assert(st.seconds >= 0);
    if (flags & APR_LOAD_NO_URING)
        ck_assert(!st.used_uring);
    else if (len > 0 && uring_available())
        ck_assert(st.used_uring);
    ck_assert_msg(memcmp(dst, fx.data + off, len) == 0, "bytes differ off=%llu len=%llu flags=%d",
                  (unsigned long long)off, (unsigned long long)len, flags);
}

static const int modes[2] = {0, APR_LOAD_NO_URING};

START_TEST(test_ranges_into_memory)
{
    int flags = modes[_i];
    uint8_t *buf = malloc(FILE_SIZE + 1);
    ck_assert_ptr_nonnull(buf);
    check_range(0, FILE_SIZE, flags, buf);                      /* whole file */
    check_range(12345, 7000001, flags, buf);                    /* odd offset and length */
    check_range(3, 1, flags, buf);                              /* one byte */
    check_range(FILE_SIZE - 4097, 4097, flags, buf);            /* ends exactly at EOF */
    check_range((4u << 20) - 1, (16u << 20) + 3, flags, buf);   /* straddles chunk edges */
    check_range(FILE_SIZE, 0, flags, buf);                      /* empty range at EOF */

    char err[APR_ERRLEN] = "";
    apr_load_stats st;
    ck_assert_int_eq(apr_load_read(fx.path, 100, 0, NULL, flags, &st, err), 0); /* zero length */
    ck_assert_uint_eq(st.bytes, 0);
    free(buf);
}
END_TEST

START_TEST(test_errors)
{
    int flags = modes[_i];
    uint8_t *buf = malloc(FILE_SIZE + 1);
    ck_assert_ptr_nonnull(buf);
    char err[APR_ERRLEN] = "";
    apr_load_stats st;

    /* One byte past EOF */
    ck_assert_int_eq(apr_load_read(fx.path, FILE_SIZE - 100, 101, buf, flags, &st, err), -1);
    ck_assert_msg(strstr(err, "shorter than expected") && strstr(err, fx.path), "message: %s", err);
    ck_assert_uint_eq(st.bytes, 0);

    /* Whole file plus one */
    err[0] = 0;
    ck_assert_int_eq(apr_load_read(fx.path, 0, FILE_SIZE + 1, buf, flags, &st, err), -1);
    ck_assert_msg(strstr(err, "shorter than expected"), "message: %s", err);

    /* Starting past EOF, even for an empty range */
    err[0] = 0;
    ck_assert_int_eq(apr_load_read(fx.path, FILE_SIZE + 1, 0, buf, flags, &st, err), -1);
    ck_assert_msg(strstr(err, "shorter than expected"), "message: %s", err);

    /* Offset + length overflows */
    err[0] = 0;
    ck_assert_int_eq(apr_load_read(fx.path, UINT64_MAX - 10, 100, buf, flags, &st, err), -1);
    ck_assert_msg(err[0] != 0, "no message");

    /* Missing file: the message names it */
    err[0] = 0;
    ck_assert_int_eq(apr_load_read("/nonexistent/apr-model.gguf", 0, 10, buf, flags, &st, err), -1);
    ck_assert_msg(strstr(err, "/nonexistent/apr-model.gguf") && strstr(err, "No such file"),
                  "message: %s", err);

    /* No destination */
    err[0] = 0;
    ck_assert_int_eq(apr_load_read(fx.path, 0, 10, NULL, flags, &st, err), -1);
    ck_assert_msg(err[0] != 0, "no message");
    free(buf);
}
END_TEST

START_TEST(test_into_shm_and_child)
{
    int flags = modes[_i];
    char err[APR_ERRLEN] = "";
    apr_seg s;
    ck_assert_msg(apr_seg_create(&s, "apr-test", FILE_SIZE, err) == 0, "%s", err);
    ck_assert_uint_eq(s.len, FILE_SIZE);
    ck_assert_ptr_nonnull(s.addr);
    ck_assert_int_ge(s.fd, 0);
    ck_assert_uint_eq((uintptr_t)s.addr % 4096, 0);

    apr_load_stats st;
    ck_assert_msg(apr_load_read(fx.path, 0, FILE_SIZE, s.addr, flags, &st, err) == 0, "%s", err);
    ck_assert(memcmp(s.addr, fx.data, FILE_SIZE) == 0);

    /* Another process maps the segment by fd alone: it sees the loaded bytes
     * at its own address, and what it writes comes back to us. */
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        apr_seg c;
        char cerr[APR_ERRLEN];
        int fd = dup(s.fd);
        if (fd < 0 || apr_seg_map(&c, fd, cerr) != 0)
            _exit(2);
        if (c.len != FILE_SIZE || c.addr == s.addr)
            _exit(3);
        if (memcmp(c.addr, fx.data, FILE_SIZE) != 0)
            _exit(4);
        ((uint8_t *)c.addr)[FILE_SIZE - 1] ^= 0xFF;
        ((uint8_t *)c.addr)[0] ^= 0xFF;
        apr_seg_close(&c);
        _exit(0);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %d", status);
    const uint8_t *p = s.addr;
    ck_assert_uint_eq(p[0], (uint8_t)(fx.data[0] ^ 0xFF));
    ck_assert_uint_eq(p[FILE_SIZE - 1], (uint8_t)(fx.data[FILE_SIZE - 1] ^ 0xFF));
    ck_assert(memcmp(p + 1, fx.data + 1, FILE_SIZE - 2) == 0);

    /* An odd range at an odd place inside the segment */
    memset(s.addr, 0, FILE_SIZE);
    ck_assert_msg(apr_load_read(fx.path, 777, 5000003, (uint8_t *)s.addr + 4099, flags, &st, err) == 0,
                  "%s", err);
    ck_assert(memcmp(p + 4099, fx.data + 777, 5000003) == 0);
    ck_assert_uint_eq(p[4098], 0);
    ck_assert_uint_eq(p[4099 + 5000003], 0);

    apr_seg_close(&s);
    ck_assert_int_eq(s.fd, -1);
    ck_assert_ptr_null(s.addr);
    apr_seg_close(&s); /* closing twice is harmless */
}
END_TEST

START_TEST(test_shm_refuses)
{
    char err[APR_ERRLEN] = "";
    apr_seg s;
    ck_assert_int_eq(apr_seg_create(&s, "apr-test", 0, err), -1);
    ck_assert_msg(strstr(err, "size"), "message: %s", err);
    ck_assert_int_eq(s.fd, -1);
    apr_seg_close(&s); /* a failed create leaves something safe to close */

    err[0] = 0;
    ck_assert_int_eq(apr_seg_map(&s, -1, err), -1);
    ck_assert_msg(err[0] != 0, "no message");

    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    err[0] = 0;
    ck_assert_int_eq(apr_seg_map(&s, pfd[0], err), -1); /* not a memory segment */
    ck_assert_msg(err[0] != 0, "no message");
    close(pfd[0]);
    close(pfd[1]);

    /* An unsealed file could be truncated under the mapping: refused. */
    int fd = open(fx.path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    err[0] = 0;
    ck_assert_int_eq(apr_seg_map(&s, fd, err), -1);
    ck_assert_msg(strstr(err, "sealed"), "message: %s", err);
    close(fd);

    /* An empty memfd */
    fd = memfd_create("apr-empty", MFD_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    err[0] = 0;
    ck_assert_int_eq(apr_seg_map(&s, fd, err), -1);
    ck_assert_msg(err[0] != 0, "no message");
    close(fd);

    /* A created segment cannot be resized by anyone holding the fd. */
    ck_assert_msg(apr_seg_create(&s, "apr-test", 12345, err) == 0, "%s", err);
    ck_assert_int_eq(ftruncate(s.fd, 100), -1);
    ck_assert_int_eq(ftruncate(s.fd, 1 << 20), -1);
    apr_seg_close(&s);
}
END_TEST

/* Runs a whole-file read with flags while stderr is a pty (or, if tty is
 * false, a pipe) and returns what appeared on it. */
static char *stderr_of_read(int flags, bool tty)
{
    int rd, wr;
    if (tty) {
        rd = posix_openpt(O_RDWR | O_NOCTTY);
        ck_assert_int_ge(rd, 0);
        ck_assert_int_eq(grantpt(rd), 0);
        ck_assert_int_eq(unlockpt(rd), 0);
        wr = open(ptsname(rd), O_RDWR | O_NOCTTY);
    } else {
        int p[2];
        ck_assert_int_eq(pipe(p), 0);
        rd = p[0];
        wr = p[1];
    }
    ck_assert_int_ge(wr, 0);
    int saved = dup(STDERR_FILENO);
    ck_assert_int_ge(saved, 0);
    dup2(wr, STDERR_FILENO);
    uint8_t *buf = malloc(FILE_SIZE);
    char err[APR_ERRLEN] = "";
    int rc = apr_load_read(fx.path, 0, FILE_SIZE, buf, flags, NULL, err);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(wr); /* the pipe's reader now sees EOF; the pty's gets EIO once drained */
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert(memcmp(buf, fx.data, FILE_SIZE) == 0);
    free(buf);

    size_t cap = 1 << 16, n = 0;
    char *out = calloc(cap, 1);
    for (;;) {
        ssize_t r = read(rd, out + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(rd);
    out[n] = 0;
    return out;
}

START_TEST(test_progress_bar)
{
    int mode = modes[_i];
    char *out = stderr_of_read(APR_LOAD_PROGRESS | mode, true);
    ck_assert_msg(strstr(out, "100%") && strstr(out, "GB/s"), "bar: [%s]", out);
    size_t n = strlen(out);
    ck_assert_msg(n > 0 && out[n - 1] == '\n', "bar does not end with a newline: [%s]", out);
    free(out);

    out = stderr_of_read(mode, true); /* not asked for */
    ck_assert_msg(out[0] == 0, "unexpected output: [%s]", out);
    free(out);

    out = stderr_of_read(APR_LOAD_PROGRESS | mode, false); /* not a terminal */
    ck_assert_msg(out[0] == 0, "unexpected output: [%s]", out);
    free(out);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("loader");
    TCase *tc = tcase_create("loader");
    tcase_add_unchecked_fixture(tc, make_file, drop_file);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_ranges_into_memory, 0, 2);
    tcase_add_loop_test(tc, test_errors, 0, 2);
    tcase_add_loop_test(tc, test_into_shm_and_child, 0, 2);
    tcase_add_test(tc, test_shm_refuses);
    tcase_add_loop_test(tc, test_progress_bar, 0, 2);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
