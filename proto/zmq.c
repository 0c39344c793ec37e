/* The few ZeroMQ calls every process repeats: one-frame send, receive with a
 * timeout, and the ROUTER envelope ([identity, body]). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/proto.h"

/* 1 readable, 0 timeout (or EINTR), -1 error. */
static int wait_in(void *sock, int timeout_ms, char *err)
{
    zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLIN};
    int rc = zmq_poll(&item, 1, timeout_ms < 0 ? -1 : timeout_ms);
    if (rc < 0) {
        if (errno == EINTR)
            return 0;
        snprintf(err, APR_ERRLEN, "zmq_poll: %s", zmq_strerror(errno));
        return -1;
    }
    return rc > 0 && (item.revents & ZMQ_POLLIN);
}

bool apr_zmq_spin(zmq_pollitem_t *items, int n, long long spin_ns)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        const int rc = zmq_poll(items, n, 0);
        if (rc > 0) return true;
        if (rc < 0 && errno != EINTR) return false;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000000000LL + (t.tv_nsec - t0.tv_nsec) >= spin_ns) return false;
    }
}

/* Drops the rest of a multipart message; true if there was any. */
static bool drain(void *sock)
{
    bool any = false;
    int more = 0;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        int rc = zmq_msg_recv(&m, sock, 0);
        zmq_msg_close(&m);
        if (rc < 0)
            break;
        any = true;
        sz = sizeof more;
    }
    return any;
}

int apr_zmq_send(void *sock, const void *data, size_t len, char err[APR_ERRLEN])
{
    while (zmq_send(sock, data, len, 0) < 0) {
        if (errno == EINTR)
            continue;
        snprintf(err, APR_ERRLEN, "zmq_send: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

int apr_zmq_recv(void *sock, int timeout_ms, void **data, size_t *len, bool *multipart,
                 char err[APR_ERRLEN])
{
    *data = NULL;
    *len = 0;
    if (multipart)
        *multipart = false;
    int ready = wait_in(sock, timeout_ms, err);
    if (ready <= 0)
        return ready;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        if (errno == EAGAIN || errno == EINTR)
            return 0;
        snprintf(err, APR_ERRLEN, "zmq_msg_recv: %s", zmq_strerror(errno));
        return -1;
    }
    bool more = zmq_msg_more(&m);
    size_t n = zmq_msg_size(&m);
    void *buf = malloc(n ? n : 1);
    if (buf == NULL) {
        zmq_msg_close(&m);
        if (more)
            drain(sock);
        snprintf(err, APR_ERRLEN, "out of memory for a %zu-byte message", n);
        return -1;
    }
    memcpy(buf, zmq_msg_data(&m), n);
    zmq_msg_close(&m);
    if (more && drain(sock) && multipart)
        *multipart = true;
    *data = buf;
    *len = n;
    return 1;
}

int apr_zmq_router_recv(void *router, int timeout_ms, apr_zframe *f, char err[APR_ERRLEN])
{
    f->ident_len = 0;
    f->multipart = false;
    for (;;) {
        int ready = wait_in(router, timeout_ms, err);
        if (ready <= 0)
            return ready;
        zmq_msg_t id;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            snprintf(err, APR_ERRLEN, "zmq_msg_recv: %s", zmq_strerror(errno));
            return -1;
        }
        size_t n = zmq_msg_size(&id);
        bool more = zmq_msg_more(&id);
        if (n == 0 || n > sizeof f->ident || !more) {
            /* A ROUTER always prefixes the identity; anything else is not a
             * client message and has no one to answer. */
            zmq_msg_close(&id);
            if (more)
                drain(router);
            continue;
        }
        memcpy(f->ident, zmq_msg_data(&id), n);
        f->ident_len = n;
        zmq_msg_close(&id);
        /* the rest of the message is already here: ZeroMQ delivers it whole */
        zmq_msg_init(&f->body);
        if (zmq_msg_recv(&f->body, router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f->body);
            snprintf(err, APR_ERRLEN, "zmq_msg_recv: %s", zmq_strerror(errno));
            return -1;
        }
        if (zmq_msg_more(&f->body))
            f->multipart = drain(router);
        return 1;
    }
}

void apr_zframe_close(apr_zframe *f)
{
    zmq_msg_close(&f->body);
}

int apr_zmq_router_send(void *router, const void *ident, size_t ident_len, const void *data,
                        size_t len, char err[APR_ERRLEN])
{
    while (zmq_send(router, ident, ident_len, ZMQ_SNDMORE) < 0) {
        if (errno == EINTR)
            continue;
        snprintf(err, APR_ERRLEN, "zmq_send (identity): %s", zmq_strerror(errno));
        return -1;
    }
    return apr_zmq_send(router, data, len, err);
}
