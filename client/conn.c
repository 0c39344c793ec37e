/* The client library's connection: one DEALER socket to apr-coord, one
 * msgpack map per frame each way (PROTOCOL.md). */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "client/client.h"

struct apr_conn {
    void *ctx;
    bool own_ctx; /* false when the caller shares its context among many */
    void *sock;
    char *endpoint;
    int64_t last_id;
    msgpack_sbuffer buf; /* reused for every request */
};

static int bad_endpoint(const char *endpoint, const char *why, char err[APR_ERRLEN])
{
    snprintf(err, APR_ERRLEN, "endpoint '%.120s': %.120s", endpoint, why);
    return -1;
}

int apr_endpoint_check(const char *endpoint, char err[APR_ERRLEN])
{
    if (!strncmp(endpoint, "ipc://", 6)) {
        const char *path = endpoint + 6;
        /* The socket path has to fit sockaddr_un; ZeroMQ would only say
         * "File name too long" at connect time. */
        if (!path[0])
            return bad_endpoint(endpoint, "ipc:// needs a path", err);
        if (strlen(path) >= sizeof ((struct sockaddr_un *)0)->sun_path)
            return bad_endpoint(endpoint, "ipc path is too long for a Unix socket", err);
        return 0;
    }
    if (strncmp(endpoint, "tcp://", 6))
        return bad_endpoint(endpoint, "expected tcp://HOST:PORT or ipc://PATH", err);

    const char *host = endpoint + 6;
    const char *colon = strrchr(host, ':');
    if (!colon || colon == host)
        return bad_endpoint(endpoint, "expected tcp://HOST:PORT", err);
    if (host[0] == '[' && colon[-1] != ']')
        return bad_endpoint(endpoint, "an IPv6 address goes in brackets: tcp://[::1]:5555", err);
    if (host[0] != '[' && memchr(host, ':', (size_t)(colon - host)))
        return bad_endpoint(endpoint, "an IPv6 address goes in brackets: tcp://[::1]:5555", err);
    for (const char *p = host; p < colon; p++)
        if (isspace((unsigned char)*p) || *p == ';' || *p == '*')
            return bad_endpoint(endpoint, "bad character in the host", err);
    if (host[0] == '[' && colon - host < 3)
        return bad_endpoint(endpoint, "empty IPv6 address", err);
    int64_t port;
    if (apr_parse_int(colon + 1, 1, 65535, &port))
        return bad_endpoint(endpoint, "the port must be a number in 1..65535", err);
    return 0;
}

apr_conn *apr_conn_open(const char *endpoint, char err[APR_ERRLEN])
{
    return apr_conn_open_in(NULL, endpoint, err);
}

apr_conn *apr_conn_open_in(void *zmq_ctx, const char *endpoint, char err[APR_ERRLEN])
{
    if (apr_endpoint_check(endpoint, err))
        return NULL;
    apr_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return NULL;
    }
    msgpack_sbuffer_init(&c->buf);
    c->endpoint = strdup(endpoint);
    c->own_ctx = zmq_ctx == NULL;
    c->ctx = zmq_ctx ? zmq_ctx : zmq_ctx_new();
    if (!c->endpoint || !c->ctx) {
        snprintf(err, APR_ERRLEN, "cannot set up ZeroMQ: %s",
                 c->endpoint ? zmq_strerror(errno) : "out of memory");
        goto fail;
    }
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    if (!c->sock) {
        snprintf(err, APR_ERRLEN, "zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    /* A cancel sent just before closing should still go out, but a server
     * that is not there must not hold up the exit for long. */
    int linger = 100;
    /* A dropped reply would leave its request waiting forever, so the
     * client queues all the server sends; the server bounds what that is. */
    int rcvhwm = 0;
    /* A reply frame larger than the decoder takes is refused by ZeroMQ
     * before it is allocated. */
    int64_t maxmsg = (int64_t)APR_REPLY_MAX_FRAME;
    int ipv6 = !strncmp(endpoint, "tcp://[", 7);
    if (zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger) ||
        zmq_setsockopt(c->sock, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm) ||
        zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) ||
        zmq_setsockopt(c->sock, ZMQ_IPV6, &ipv6, sizeof ipv6)) {
        snprintf(err, APR_ERRLEN, "zmq_setsockopt: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_connect(c->sock, endpoint)) {
        snprintf(err, APR_ERRLEN, "cannot connect to %.200s: %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    return c;
fail:
    apr_conn_close(c);
    return NULL;
}

void apr_conn_close(apr_conn *c)
{
    if (!c)
        return;
    if (c->sock)
        zmq_close(c->sock);
    if (c->ctx && c->own_ctx)
        zmq_ctx_term(c->ctx);
    msgpack_sbuffer_destroy(&c->buf);
    free(c->endpoint);
    free(c);
}

const char *apr_conn_endpoint(const apr_conn *c)
{
    return c->endpoint;
}

void *apr_conn_socket(apr_conn *c)
{
    return c->sock;
}

int64_t apr_conn_next_id(apr_conn *c)
{
    return ++c->last_id;
}

int apr_conn_send(apr_conn *c, const apr_request *r, char err[APR_ERRLEN])
{
    msgpack_sbuffer_clear(&c->buf);
    if (apr_request_encode(&c->buf, r)) {
        snprintf(err, APR_ERRLEN, "out of memory encoding a %s request", apr_op_str(r->op));
        return -1;
    }
    return apr_zmq_send(c->sock, c->buf.data, c->buf.size, err);
}

int apr_conn_cancel(apr_conn *c, const apr_id *id, char err[APR_ERRLEN])
{
    apr_request r;
    apr_request_init(&r, APR_OP_CANCEL);
    r.id = *id;
    return apr_conn_send(c, &r, err);
}

int apr_conn_recv(apr_conn *c, int timeout_ms, apr_reply *out, char err[APR_ERRLEN])
{
    memset(out, 0, sizeof *out);
    void *data;
    size_t len;
    bool multipart;
    int rc = apr_zmq_recv(c->sock, timeout_ms, &data, &len, &multipart, err);
    if (rc <= 0)
        return rc;
    if (multipart) {
        snprintf(err, APR_ERRLEN, "a reply from %.200s came in several frames; is it apr-coord?",
                 c->endpoint);
        free(data);
        return -1;
    }
    char perr[APR_ERRLEN];
    rc = apr_reply_parse(data, len, out, perr);
    free(data);
    if (rc) {
        snprintf(err, APR_ERRLEN, "bad reply from %.100s: %.130s", c->endpoint, perr);
        return -1;
    }
    return 1;
}
