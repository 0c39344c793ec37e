/* Test helper shared by the proto/ unit tests (test_proto.c, test_wmsg.c):
 * write msgpack frames in a readable notation instead of packer calls. */
#ifndef APR_TEST_MINI_H
#define APR_TEST_MINI_H

#include <check.h>
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

/* ------------------------------------------------------------------------
 * A tiny notation for test frames, so each case reads like the message:
 *   {op:'generate', prompt:'hi\xff', stop:['a'], temperature:0.5, seed:-1}
 * Strings are single-quoted with \xNN escapes; numbers with '.', 'e' or
 * 'nan' are float64; bin'..' packs a bin; nil, true, false. */

typedef struct {
    const char *s;
    msgpack_packer pk;
} mini;

static void mini_value(mini *m);

static void skip_ws(mini *m)
{
    while (*m->s == ' ' || *m->s == ',' || *m->s == ':')
        m->s++;
}

static void mini_string(mini *m, bool bin)
{
    char buf[4096];
    size_t n = 0;
    ck_assert(*m->s == '\'');
    m->s++;
    while (*m->s != '\'') {
        ck_assert(*m->s && n < sizeof buf);
        if (m->s[0] == '\\' && m->s[1] == 'x') {
            char hex[3] = {m->s[2], m->s[3], 0};
            buf[n++] = (char)strtol(hex, NULL, 16);
            m->s += 4;
        } else {
            buf[n++] = *m->s++;
        }
    }
    m->s++;
    if (bin) {
        msgpack_pack_bin(&m->pk, n);
        msgpack_pack_bin_body(&m->pk, buf, n);
    } else {
        msgpack_pack_str(&m->pk, n);
        msgpack_pack_str_body(&m->pk, buf, n);
    }
}

static size_t mini_count(const char *s, char close)
{
    /* items at depth 1 up to the matching close bracket */
    int depth = 0;
    size_t items = 0;
    bool any = false, quoted = false;
    for (; *s; s++) {
        if (quoted) {
            quoted = *s != '\'';
            continue;
        }
        if (*s == '\'')
            quoted = true;
        if (*s == '[' || *s == '{')
            depth++;
        else if (*s == ']' || *s == '}') {
            if (depth == 0)
                break;
            depth--;
        } else if (*s == ',' && depth == 0)
            items++;
        if (!isspace((unsigned char)*s))
            any = true;
    }
    (void)close;
    return any ? items + 1 : 0;
}

static void mini_value(mini *m)
{
    skip_ws(m);
    const char *s = m->s;
    if (*s == '{') {
        m->s++;
        msgpack_pack_map(&m->pk, mini_count(m->s, '}'));
        for (;;) {
            skip_ws(m);
            if (*m->s == '}')
                break;
            if (*m->s == '\'' ) {
                mini_string(m, false);
            } else { /* bare key */
                const char *k = m->s;
                while (isalnum((unsigned char)*m->s) || *m->s == '_')
                    m->s++;
                msgpack_pack_str(&m->pk, (size_t)(m->s - k));
                msgpack_pack_str_body(&m->pk, k, (size_t)(m->s - k));
            }
            mini_value(m);
        }
        m->s++;
    } else if (*s == '[') {
        m->s++;
        msgpack_pack_array(&m->pk, mini_count(m->s, ']'));
        for (;;) {
            skip_ws(m);
            if (*m->s == ']')
                break;
            mini_value(m);
        }
        m->s++;
    } else if (*s == '\'') {
        mini_string(m, false);
    } else if (!strncmp(s, "bin'", 4)) {
        m->s += 3;
        mini_string(m, true);
    } else if (!strncmp(s, "nil", 3)) {
        msgpack_pack_nil(&m->pk);
        m->s += 3;
    } else if (!strncmp(s, "true", 4)) {
        msgpack_pack_true(&m->pk);
        m->s += 4;
    } else if (!strncmp(s, "false", 5)) {
        msgpack_pack_false(&m->pk);
        m->s += 5;
    } else if (!strncmp(s, "nan", 3)) {
        msgpack_pack_double(&m->pk, NAN);
        m->s += 3;
    } else {
        char *end;
        size_t span = strspn(s, "-+0123456789.e");
        ck_assert_msg(span > 0, "mini: bad value at '%s'", s);
        if (memchr(s, '.', span) || memchr(s, 'e', span)) {
            msgpack_pack_double(&m->pk, strtod(s, &end));
        } else if (*s == '-') {
            msgpack_pack_int64(&m->pk, strtoll(s, &end, 10));
        } else {
            msgpack_pack_uint64(&m->pk, strtoull(s, &end, 10));
        }
        m->s = end;
    }
}

/* Packs the notation into sb (cleared first). */
static void mk(msgpack_sbuffer *sb, const char *text)
{
    msgpack_sbuffer_clear(sb);
    mini m = {.s = text};
    msgpack_packer_init(&m.pk, sb, msgpack_sbuffer_write);
    mini_value(&m);
}

#endif
