/* Pieces both directions of the protocol share: code strings, ids, UTF-8
 * validation and the structural pre-scan that runs before msgpack-c. */
#include <stdio.h>
#include <string.h>

#include "proto/proto_internal.h"

static const char *const perr_names[APR_PERR_COUNT_] = {
    [APR_PERR_NONE] = "ok",
    [APR_PERR_BAD_REQUEST] = "bad_request",
    [APR_PERR_UNKNOWN_OP] = "unknown_op",
    [APR_PERR_TOO_LARGE] = "too_large",
    [APR_PERR_INVALID_PARAM] = "invalid_param",
    [APR_PERR_UNSUPPORTED_VERSION] = "unsupported_version",
    [APR_PERR_BUSY] = "busy",
    [APR_PERR_NOT_FOUND] = "not_found",
    [APR_PERR_CONTEXT_LENGTH] = "context_length",
    [APR_PERR_UNAVAILABLE] = "unavailable",
    [APR_PERR_INTERNAL] = "internal",
};

const char *apr_proto_code_str(apr_perr code)
{
    if ((int)code < 0 || code >= APR_PERR_COUNT_)
        return "internal";
    return perr_names[code];
}

void apr_proto_limits_default(apr_proto_limits *l)
{
    l->max_frame = (size_t)4 << 20;
    l->max_prompt_bytes = (size_t)1 << 20;
    l->max_input_tokens = 262144;
    l->max_new_tokens = 131072;
    l->max_messages = 1024;
    l->max_stop = 16;
    l->max_stop_bytes = 256;
}

void apr_id_set_int(apr_id *id, int64_t v)
{
    memset(id, 0, sizeof *id);
    id->kind = APR_ID_INT;
    id->num = v;
}

void apr_id_set_str(apr_id *id, const char *s)
{
    memset(id, 0, sizeof *id);
    id->kind = APR_ID_STR;
    size_t n = strnlen(s, APR_ID_MAX);
    memcpy(id->str, s, n);
}

bool apr_id_equal(const apr_id *a, const apr_id *b)
{
    if (a->kind != b->kind)
        return false;
    if (a->kind == APR_ID_INT)
        return a->num == b->num;
    if (a->kind == APR_ID_STR)
        return strcmp(a->str, b->str) == 0;
    return true;
}

bool apr_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false; /* continuation byte, 0xc0/0xc1 overlongs, > U+10FFFF leads */
        }
        if (len - i <= n)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

static uint64_t be(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

apr_perr apr_mp_scan(const unsigned char *buf, size_t len, int max_depth, size_t max_objects,
                     char msg[APR_ERRLEN])
{
    /* pending[d]: objects still to read at nesting level d (level 0: the root) */
    uint64_t pending[APR_MP_MAX_DEPTH + 2];
    int depth = 0;
    size_t off = 0, objects = 0;
    if (max_depth > APR_MP_MAX_DEPTH)
        max_depth = APR_MP_MAX_DEPTH;
    pending[0] = 1;
    while (depth >= 0) {
        if (pending[depth] == 0) {
            depth--;
            continue;
        }
        pending[depth]--;
        if (off >= len)
            goto truncated;
        if (++objects > max_objects) {
            snprintf(msg, APR_ERRLEN, "frame has more than %zu msgpack objects", max_objects);
            return APR_PERR_TOO_LARGE;
        }
        unsigned b = buf[off++];
        uint64_t skip = 0, count = 0; /* payload bytes to skip / children to read */
        int lenbytes = 0;
        bool container = false;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool: no payload */
        } else if (b >= 0x80 && b <= 0x8f) {
            container = true;
            count = 2 * (uint64_t)(b & 0x0f);
        } else if (b >= 0x90 && b <= 0x9f) {
            container = true;
            count = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;               /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break;               /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;               /* bin32, str32 */
            case 0xc7: lenbytes = 1; skip = 1; break;                /* ext8: + type byte */
            case 0xc8: lenbytes = 2; skip = 1; break;
            case 0xc9: lenbytes = 4; skip = 1; break;
            case 0xca: skip = 4; break;                              /* float32 */
            case 0xcb: skip = 8; break;                              /* float64 */
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;                              /* fixext 1..16 + type */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: container = true; lenbytes = 2; break;        /* array16 */
            case 0xdd: container = true; lenbytes = 4; break;        /* array32 */
            case 0xde: container = true; lenbytes = 2; break;        /* map16 */
            case 0xdf: container = true; lenbytes = 4; break;        /* map32 */
            default:
                snprintf(msg, APR_ERRLEN, "not msgpack: byte 0x%02x at offset %zu", b, off - 1);
                return APR_PERR_BAD_REQUEST;
            }
            if (lenbytes) {
                if (len - off < (size_t)lenbytes)
                    goto truncated;
                uint64_t n = be(buf + off, lenbytes);
                off += lenbytes;
                if (container)
                    count = (b == 0xde || b == 0xdf) ? 2 * n : n;
                else
                    skip += n;
            }
        }
        if (container) {
            if (count == 0)
                continue;
            /* every child takes at least one byte */
            if (count > len - off)
                goto truncated;
            if (depth + 1 > max_depth) {
                snprintf(msg, APR_ERRLEN, "msgpack nesting deeper than %d levels", max_depth);
                return APR_PERR_BAD_REQUEST;
            }
            pending[++depth] = count;
        } else {
            if (skip > len - off)
                goto truncated;
            off += skip;
        }
    }
    if (off != len) {
        snprintf(msg, APR_ERRLEN, "%zu trailing bytes after the msgpack object", len - off);
        return APR_PERR_BAD_REQUEST;
    }
    return APR_PERR_NONE;
truncated:
    snprintf(msg, APR_ERRLEN, "truncated msgpack (frame of %zu bytes)", len);
    return APR_PERR_BAD_REQUEST;
}

int apr_mp_unpack(const void *buf, size_t len, msgpack_unpacked *u, char msg[APR_ERRLEN])
{
    size_t off = 0;
    msgpack_unpack_return rc = msgpack_unpack_next(u, buf, len, &off);
    if (rc != MSGPACK_UNPACK_SUCCESS || off != len) {
        snprintf(msg, APR_ERRLEN, "msgpack decoding failed (%d)", (int)rc);
        return -1;
    }
    return 0;
}

void apr_mp_quote(char *dst, size_t cap, const char *s, size_t len)
{
    size_t o = 0;
    if (cap < 8) {
        if (cap)
            dst[0] = 0;
        return;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 > cap) { /* room for one escape, then "..." and the NUL */
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
            dst[o++] = (char)c;
        } else {
            o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", c);
        }
    }
    dst[o] = 0;
}

int apr_mp_pack_str(msgpack_packer *pk, const char *s, size_t len)
{
    if (msgpack_pack_str(pk, len) != 0)
        return -1;
    return msgpack_pack_str_body(pk, s, len);
}

int apr_mp_pack_cstr(msgpack_packer *pk, const char *s)
{
    return apr_mp_pack_str(pk, s, strlen(s));
}

int apr_mp_pack_id(msgpack_packer *pk, const apr_id *id)
{
    if (id == NULL || id->kind == APR_ID_NONE)
        return msgpack_pack_nil(pk);
    if (id->kind == APR_ID_INT)
        return msgpack_pack_int64(pk, id->num);
    return apr_mp_pack_cstr(pk, id->str);
}

int apr_mp_read_id(const msgpack_object *v, apr_id *id, char msg[APR_ERRLEN])
{
    memset(id, 0, sizeof *id);
    switch (v->type) {
    case MSGPACK_OBJECT_NIL:
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (v->via.u64 > (uint64_t)INT64_MAX) {
            snprintf(msg, APR_ERRLEN, "id: integer ids must fit in int64");
            return -1;
        }
        apr_id_set_int(id, (int64_t)v->via.u64);
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        apr_id_set_int(id, v->via.i64);
        return 0;
    case MSGPACK_OBJECT_STR: {
        const char *s = v->via.str.ptr;
        size_t n = v->via.str.size;
        if (n > APR_ID_MAX) {
            snprintf(msg, APR_ERRLEN, "id: string ids are at most %d bytes (got %zu)", APR_ID_MAX, n);
            return -1;
        }
        if (!apr_utf8_valid(s, n) || memchr(s, 0, n)) {
            snprintf(msg, APR_ERRLEN, "id: not valid UTF-8 text (or contains NUL)");
            return -1;
        }
        id->kind = APR_ID_STR;
        memcpy(id->str, s, n);
        id->str[n] = 0;
        return 0;
    }
    default:
        snprintf(msg, APR_ERRLEN, "id: must be a string or an integer");
        return -1;
    }
}

bool apr_mp_key_is(const msgpack_object *k, const char *name)
{
    size_t n = strlen(name);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
           memcmp(k->via.str.ptr, name, n) == 0;
}
