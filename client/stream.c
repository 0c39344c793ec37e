/* Streaming the replies to one request, with Ctrl-C turned into a cancel:
 * the signals are blocked and read from a signalfd polled next to the
 * socket, so no handler and no global flag are needed. */
#include <errno.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "client/client.h"

/* How long a cancelled request gets to send its done event. */
#define CANCEL_WAIT_MS 2000

int apr_cli_sigfd(sigset_t *set, char err[APR_ERRLEN])
{
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    int fd = signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0)
        snprintf(err, APR_ERRLEN, "signalfd: %s", strerror(errno));
    return fd;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The number of a signal waiting on fd, or 0. */
static int read_signal(int fd)
{
    struct signalfd_siginfo si;
    ssize_t n = read(fd, &si, sizeof si);
    return n == (ssize_t)sizeof si ? (int)si.ssi_signo : 0;
}

static bool is_ours(const apr_reply *r, const apr_id *id)
{
    return apr_id_equal(&r->id, id) || (r->event == APR_EV_ERROR && r->id.kind == APR_ID_NONE);
}

int apr_stream(apr_conn *c, const apr_id *id, int timeout_ms, int sig_fd, apr_reply_fn fn,
               void *arg, int *signo, char err[APR_ERRLEN])
{
    *signo = 0;
    bool answered = false;
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        long wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0)
                break;
            wait = (long)left;
        }
        zmq_pollitem_t items[2] = {
            {.socket = apr_conn_socket(c), .events = ZMQ_POLLIN},
            {.socket = NULL, .fd = sig_fd, .events = ZMQ_POLLIN},
        };
        if (zmq_poll(items, sig_fd >= 0 ? 2 : 1, wait) < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, APR_ERRLEN, "zmq_poll: %s", zmq_strerror(errno));
            return -1;
        }
        if (sig_fd >= 0 && (items[1].revents & ZMQ_POLLIN)) {
            int s = read_signal(sig_fd);
            if (s && *signo)
                return 0; /* a second Ctrl-C: stop waiting for the done event */
            if (s) {
                *signo = s;
                if (apr_conn_cancel(c, id, err))
                    return -1;
                deadline = now_ms() + CANCEL_WAIT_MS;
            }
        }
        if (!(items[0].revents & ZMQ_POLLIN))
            continue;

        apr_reply r;
        int rc = apr_conn_recv(c, 0, &r, err);
        if (rc < 0)
            return -1;
        if (rc == 0 || !is_ours(&r, id)) {
            apr_reply_free(&r);
            continue;
        }
        answered = true;
        /* Token events stream and a cancel reply precedes the done event;
         * every other event is the request's last. */
        bool last = r.event != APR_EV_TOKEN && r.event != APR_EV_CANCEL;
        rc = fn(&r, arg, err);
        apr_reply_free(&r);
        if (rc) {
            /* The caller cannot take more (stdout closed, say): the server
             * should stop spending time on it. */
            char ignored[APR_ERRLEN];
            if (!last)
                apr_conn_cancel(c, id, ignored);
            return -1;
        }
        if (last)
            return *signo ? 0 : 1;
        if (!*signo && timeout_ms >= 0)
            deadline = now_ms() + timeout_ms;
    }

    if (*signo)
        return 0; /* cancelled; the done event did not come in time */
    /* The server may only be slow: ask it to drop the request anyway. */
    char ignored[APR_ERRLEN];
    apr_conn_cancel(c, id, ignored);
    if (answered)
        snprintf(err, APR_ERRLEN, "no reply from %.160s for %g s (is apr-coord still running?)",
                 apr_conn_endpoint(c), timeout_ms / 1000.0);
    else
        snprintf(err, APR_ERRLEN, "no reply from %.160s within %g s (is apr-coord running?)",
                 apr_conn_endpoint(c), timeout_ms / 1000.0);
    return -1;
}
