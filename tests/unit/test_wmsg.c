/* proto/worker.c: coordinator <-> worker messages (round trip of every type,
 * hostile frames refused with a message, random bytes) and the shared-memory
 * segment (create, attach, size and seal checks). */
#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "proto/proto.h"
#include "tests/unit/mini.h"

static void round_trip(const apr_wmsg *in, apr_wmsg *out)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    ck_assert_int_eq(apr_wmsg_encode(&sb, in), 0);
    char err[APR_ERRLEN] = "";
    ck_assert_msg(apr_wmsg_parse(sb.data, sb.size, out, err) == 0, "%s: %s", apr_wtype_str(in->type), err);
    ck_assert_int_eq(out->type, in->type);
    msgpack_sbuffer_destroy(&sb);
}

START_TEST(round_trip_every_type)
{
    apr_wmsg m = {0}, r;

    m = (apr_wmsg){.type = APR_W_HELLO, .ok = true, .pid = 4242, .n_vocab = 151936, .n_ctx = 4096,
                   .n_seq = 16, .max_batch = 512, .max_logits = 16};
    strcpy(m.backend, "cpu");
    round_trip(&m, &r);
    ck_assert(r.ok);
    ck_assert_str_eq(r.backend, "cpu");
    ck_assert_int_eq(r.pid, 4242);
    ck_assert_int_eq(r.n_vocab, 151936);
    ck_assert_int_eq(r.n_ctx, 4096);
    ck_assert_int_eq(r.n_seq, 16);
    ck_assert_int_eq(r.max_batch, 512);
    ck_assert_int_eq(r.max_logits, 16);
    ck_assert(!r.kv_kept);
    apr_wmsg_free(&r);

    m.kv_kept = true; /* an engine restarted by its holder */
    round_trip(&m, &r);
    ck_assert(r.kv_kept);
    apr_wmsg_free(&r);

    m = (apr_wmsg){.type = APR_W_HELLO, .ok = false, .pid = 7};
    strcpy(m.backend, "cuda");
    strcpy(m.error, "no CUDA device: this build has no CUDA support");
    round_trip(&m, &r);
    ck_assert(!r.ok);
    ck_assert_str_eq(r.backend, "cuda");
    ck_assert_str_eq(r.error, m.error);
    ck_assert_int_eq(r.n_vocab, 0);
    apr_wmsg_free(&r);

    m = (apr_wmsg){.type = APR_W_HB, .pid = 99};
    round_trip(&m, &r);
    ck_assert_int_eq(r.pid, 99);
    apr_wmsg_free(&r);

    m = (apr_wmsg){.type = APR_W_DONE, .step = UINT64_MAX, .ok = true, .n_logits = 3, .ms = 12.25};
    round_trip(&m, &r);
    ck_assert(r.ok && r.step == UINT64_MAX && r.n_logits == 3 && r.ms == 12.25);
    apr_wmsg_free(&r);

    m = (apr_wmsg){.type = APR_W_DONE, .step = 5, .ok = false};
    strcpy(m.error, "entry 1: sequence 0 expects position 3, got 7");
    round_trip(&m, &r);
    ck_assert(!r.ok && r.step == 5);
    ck_assert_str_eq(r.error, m.error);
    apr_wmsg_free(&r);

    int32_t token[3] = {1, 2, INT32_MAX}, pos[3] = {0, 1, 0}, seq[3] = {0, 0, 4095};
    uint8_t want[3] = {0, 1, 1};
    m = (apr_wmsg){.type = APR_W_STEP, .step = 77, .n = 3, .token = token, .pos = pos, .seq = seq,
                   .want = want};
    round_trip(&m, &r);
    ck_assert_int_eq(r.n, 3);
    ck_assert(r.step == 77);
    ck_assert(!memcmp(r.token, token, sizeof token) && !memcmp(r.pos, pos, sizeof pos));
    ck_assert(!memcmp(r.seq, seq, sizeof seq) && !memcmp(r.want, want, sizeof want));
    apr_wmsg_free(&r);
    ck_assert_ptr_null(r.token); /* free leaves it empty; freeing twice is safe */
    apr_wmsg_free(&r);

    /* candidate rows: topk goes out only when some entry asks for them */
    uint8_t topk[3] = {0, 0, 0};
    m.topk = topk;
    msgpack_sbuffer plain, zeros;
    msgpack_sbuffer_init(&plain);
    msgpack_sbuffer_init(&zeros);
    apr_wmsg no_topk = m;
    no_topk.topk = NULL;
    ck_assert_int_eq(apr_wmsg_encode(&plain, &no_topk), 0);
    ck_assert_int_eq(apr_wmsg_encode(&zeros, &m), 0);
    ck_assert(plain.size == zeros.size && !memcmp(plain.data, zeros.data, plain.size));
    msgpack_sbuffer_destroy(&plain);
    msgpack_sbuffer_destroy(&zeros);
    round_trip(&m, &r);
    ck_assert_ptr_null(r.topk);
    apr_wmsg_free(&r);
    topk[1] = 1;
    topk[2] = APR_TOPK_MAX;
    round_trip(&m, &r);
    ck_assert_ptr_nonnull(r.topk);
    ck_assert(!memcmp(r.topk, topk, sizeof topk) && !memcmp(r.want, want, sizeof want));
    ck_assert(!r.ahead);
    apr_wmsg_free(&r);
    ck_assert_ptr_null(r.topk);
    /* ahead: sent only when true, read back */
    m.ahead = true;
    round_trip(&m, &r);
    ck_assert(r.ahead && r.n == 3 && r.topk);
    apr_wmsg_free(&r);
    m.ahead = false;

    m = (apr_wmsg){.type = APR_W_TRIM, .trim_seq = 3, .trim_from = 10};
    round_trip(&m, &r);
    ck_assert(r.trim_seq == 3 && r.trim_from == 10);
    apr_wmsg_free(&r);

    m = (apr_wmsg){.type = APR_W_SHUTDOWN};
    round_trip(&m, &r);
    apr_wmsg_free(&r);

    ck_assert_str_eq(apr_wtype_str(APR_W_STEP), "step");
    ck_assert_str_eq(apr_wtype_str((apr_wtype)99), "?");
}
END_TEST

/* PROTOCOL.md's example of a step with candidate rows, byte for byte. */
START_TEST(documented_topk_step)
{
    static const unsigned char doc[] = {
        0x87, 0xa1, 0x74, 0xa4, 0x73, 0x74, 0x65, 0x70, 0xa4, 0x73, 0x74, 0x65, 0x70, 0x08, 0xa5, 0x74,
        0x6f, 0x6b, 0x65, 0x6e, 0x92, 0xcd, 0x01, 0x1e, 0xcd, 0x01, 0x93, 0xa3, 0x70, 0x6f, 0x73, 0x92,
        0x03, 0x05, 0xa3, 0x73, 0x65, 0x71, 0x92, 0x00, 0x01, 0xa4, 0x77, 0x61, 0x6e, 0x74, 0x92, 0xc3,
        0xc3, 0xa4, 0x74, 0x6f, 0x70, 0x6b, 0x92, 0x01, 0x28};
    int32_t token[2] = {286, 403}, pos[2] = {3, 5}, seq[2] = {0, 1};
    uint8_t want[2] = {1, 1}, topk[2] = {1, 40};
    apr_wmsg m = {.type = APR_W_STEP, .step = 8, .n = 2, .token = token, .pos = pos, .seq = seq,
                  .want = want, .topk = topk};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    ck_assert_int_eq(apr_wmsg_encode(&sb, &m), 0);
    ck_assert_uint_eq(sb.size, sizeof doc);
    ck_assert(!memcmp(sb.data, doc, sizeof doc));
    msgpack_sbuffer_destroy(&sb);
    /* and the candidate row's layout */
    ck_assert_uint_eq(sizeof(apr_wcand), 8);
    ck_assert_uint_eq(APR_TOPK_ROW_BYTES(2), 20);
}
END_TEST

/* Text cut in the middle of a character or holding a file name's stray
 * bytes still goes out as valid UTF-8. */
START_TEST(error_text_is_made_valid)
{
    apr_wmsg m = {.type = APR_W_DONE, .step = 1}, r;
    strcpy(m.error, "open /models/caf\xc3\xa9-\xff.gguf: no such file \xe2\x82");
    round_trip(&m, &r);
    ck_assert_str_eq(r.error, "open /models/caf\xc3\xa9-?.gguf: no such file ??");
    apr_wmsg_free(&r);

    memset(m.error, 'x', sizeof m.error); /* not NUL-terminated: cut at the field */
    round_trip(&m, &r);
    ck_assert_uint_eq(strlen(r.error), sizeof m.error - 1);
    apr_wmsg_free(&r);
}
END_TEST

/* Parses the notation and expects a refusal whose message contains in_msg. */
static void refused(const char *text, const char *in_msg)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mk(&sb, text);
    apr_wmsg m;
    char err[APR_ERRLEN] = "";
    int rc = apr_wmsg_parse(sb.data, sb.size, &m, err);
    ck_assert_msg(rc == -1, "%s: parsed", text);
    ck_assert_msg(err[0] != 0, "%s: no message", text);
    ck_assert_msg(strstr(err, in_msg), "%s: message '%s' does not say '%s'", text, err, in_msg);
    ck_assert_ptr_null(m.token); /* nothing left to free */
    ck_assert_ptr_null(m.want);
    ck_assert_ptr_null(m.topk);
    apr_wmsg_free(&m);
    msgpack_sbuffer_destroy(&sb);
}

static void accepted(const char *text, apr_wmsg *m)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mk(&sb, text);
    char err[APR_ERRLEN] = "";
    ck_assert_msg(apr_wmsg_parse(sb.data, sb.size, m, err) == 0, "%s: %s", text, err);
    msgpack_sbuffer_destroy(&sb);
}

START_TEST(hostile_maps)
{
    refused("['step']", "not a msgpack map");
    refused("{step:1}", "no type");
    refused("{t:'steps'}", "unknown type t 'steps'");
    refused("{t:1}", "unknown type");
    refused("{t:'trim', t:'trim', seq:0, from:0}", "duplicate key t");

    /* step: required keys, types, ranges, lengths */
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0]}", "missing key want");
    refused("{t:'step', token:[1], pos:[0], seq:[0], want:[true]}", "missing key step");
    refused("{t:'step', step:-1, token:[1], pos:[0], seq:[0], want:[true]}", "step step");
    refused("{t:'step', step:1, token:[1], pos:[-1], seq:[0], want:[true]}", "pos[0]");
    refused("{t:'step', step:1, token:[1, 2], pos:[0, -5], seq:[0, 0], want:[true, true]}", "pos[1]: -5");
    refused("{t:'step', step:1, token:[1], pos:[2147483648], seq:[0], want:[true]}", "pos[0]");
    refused("{t:'step', step:1, token:[1.0], pos:[0], seq:[0], want:[true]}", "token[0]");
    refused("{t:'step', step:1, token:['a'], pos:[0], seq:[0], want:[true]}", "token[0]");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[1]}", "want[0]: must be true or false");
    refused("{t:'step', step:1, token:1, pos:[0], seq:[0], want:[true]}", "token: must be an array");
    refused("{t:'step', step:1, token:[], pos:[], seq:[], want:[]}", "0 entries");
    refused("{t:'step', step:1, token:[1, 2], pos:[0, 1], seq:[0], want:[true, true]}", "as long (2, 2, 1, 2)");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true, false]}", "as long");
    refused("{t:'step', step:1, token:[1], token:[1], pos:[0], seq:[0], want:[true]}", "duplicate key token");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[nil], want:[true]}", "seq[0]");

    /* topk: same length, 0..APR_TOPK_MAX, unsigned integers, only where want */
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[65]}", "topk[0]: 65 is out of range [0, 64]");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[-1]}", "topk[0]");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[4294967297]}", "topk[0]");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[1.0]}", "topk[0]");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[true]}", "topk[0]");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[nil]}", "topk[0]");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:1}", "topk: must be an array");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:{a:1}}", "topk: must be an array");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[]}", "topk: 0 entries");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], ahead:1}", "step ahead: must be true or false");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], ahead:true, ahead:false}", "duplicate key ahead");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[1, 1]}", "topk has 2 entries, token 1");
    refused("{t:'step', step:1, token:[1, 2], pos:[0, 1], seq:[0, 0], want:[false, true], topk:[3]}",
            "topk has 1 entries, token 2");
    refused("{t:'step', step:1, token:[1, 2], pos:[0, 1], seq:[0, 0], want:[false, true], topk:[3, 3]}",
            "topk[0]: 3 candidates for an entry without want");
    /* the order of the keys does not matter to that check */
    refused("{t:'step', topk:[2, 0], step:1, token:[1, 2], pos:[0, 1], seq:[0, 0], want:[false, true]}",
            "topk[0]");
    refused("{t:'step', step:1, token:[1], pos:[0], seq:[0], want:[true], topk:[1], topk:[1]}",
            "duplicate key topk");

    /* the others */
    refused("{t:'trim', seq:0}", "missing key from");
    refused("{t:'trim', seq:-1, from:0}", "trim seq");
    refused("{t:'trim', seq:0, from:-3}", "trim from");
    refused("{t:'trim', seq:[0], from:0}", "trim seq");
    refused("{t:'hb'}", "missing key pid");
    refused("{t:'hb', pid:0}", "hb pid");
    refused("{t:'hb', pid:'1'}", "hb pid");
    refused("{t:'done', step:1, ok:false, n_logits:0, ms:1.5}", "missing key error");
    refused("{t:'done', step:1, ok:true, n_logits:0}", "missing key ms");
    refused("{t:'done', step:1, ok:1, n_logits:0, ms:0}", "done ok");
    refused("{t:'done', step:1, ok:true, n_logits:4097, ms:0}", "done n_logits");
    refused("{t:'done', step:1, ok:true, n_logits:1, ms:nan}", "done ms");
    refused("{t:'done', step:1, ok:true, n_logits:1, ms:-1.0}", "done ms");
    refused("{t:'done', step:1, ok:false, error:'a\\x00b', n_logits:0, ms:0}", "done error");
    refused("{t:'done', step:1, ok:false, error:'\\xff', n_logits:0, ms:0}", "done error");
    refused("{t:'done', step:1, ok:false, error:bin'x', n_logits:0, ms:0}", "done error");
    refused("{t:'hello', ok:true, backend:'cpu', pid:1, n_vocab:10, n_ctx:8, n_seq:1, max_batch:4}",
            "missing key max_logits");
    refused("{t:'hello', ok:true, backend:'tpu', pid:1, n_vocab:10, n_ctx:8, n_seq:1, max_batch:4, max_logits:1}",
            "backend");
    refused("{t:'hello', ok:true, backend:'cpu', pid:1, n_vocab:0, n_ctx:8, n_seq:1, max_batch:4, max_logits:1}",
            "hello n_vocab");
    refused("{t:'hello', ok:true, backend:'cpu', pid:1, n_vocab:9, n_ctx:8, n_seq:1, max_batch:5000, max_logits:1}",
            "hello max_batch");
    refused("{t:'hello', ok:false, backend:'cpu', pid:1}", "missing key error");

    /* unknown keys, and known keys another type uses, are ignored */
    apr_wmsg m;
    accepted("{later:{a:[1, 2]}, t:'trim', seq:2, from:0, pid:'x', step:'y'}", &m);
    ck_assert(m.type == APR_W_TRIM && m.trim_seq == 2 && m.trim_from == 0);
    apr_wmsg_free(&m);
    accepted("{t:'hello', ok:false, error:'no model', backend:'cpu', pid:5}", &m);
    ck_assert(!m.ok && !strcmp(m.error, "no model") && m.n_vocab == 0);
    apr_wmsg_free(&m);
    /* a step of one entry that wants nothing is well-formed (the backend decides) */
    accepted("{t:'step', step:0, token:[3], pos:[0], seq:[0], want:[false]}", &m);
    ck_assert(m.n == 1 && m.want[0] == 0 && m.topk == NULL);
    apr_wmsg_free(&m);
    /* topk first in the map, zeros and the range's ends */
    accepted("{topk:[0, 1, 64, 0], t:'step', step:2, token:[3, 4, 5, 6], pos:[0, 0, 0, 1], seq:[0, 1, 2, 0], "
             "want:[false, true, true, true]}", &m);
    ck_assert(m.n == 4 && m.topk && m.topk[0] == 0 && m.topk[1] == 1 && m.topk[2] == 64 && m.topk[3] == 0);
    apr_wmsg_free(&m);
    /* topk means nothing to other types */
    accepted("{t:'trim', seq:1, from:0, topk:'x'}", &m);
    apr_wmsg_free(&m);
}
END_TEST

static void refused_bytes(const void *buf, size_t len, const char *in_msg)
{
    apr_wmsg m;
    char err[APR_ERRLEN] = "";
    ck_assert_int_eq(apr_wmsg_parse(buf, len, &m, err), -1);
    ck_assert_msg(strstr(err, in_msg), "message '%s' does not say '%s'", err, in_msg);
    apr_wmsg_free(&m);
}

START_TEST(hostile_bytes)
{
    /* {t:'shutdown'} with pieces missing */
    static const unsigned char ok[] = {0x81, 0xa1, 't', 0xa8, 's', 'h', 'u', 't', 'd', 'o', 'w', 'n'};
    apr_wmsg m;
    char err[APR_ERRLEN];
    ck_assert_int_eq(apr_wmsg_parse(ok, sizeof ok, &m, err), 0);
    for (size_t n = 1; n < sizeof ok; n++)
        refused_bytes(ok, n, "truncated");
    unsigned char trailing[sizeof ok + 1];
    memcpy(trailing, ok, sizeof ok);
    trailing[sizeof ok] = 0xc0;
    refused_bytes(trailing, sizeof trailing, "trailing");
    refused_bytes(ok, 0, "empty");
    refused_bytes(NULL, 5, "empty");

    /* a tiny frame declaring 2^32-1 array entries: refused before any allocation */
    static const unsigned char huge[] = {0x82, 0xa1, 't', 0xa4, 's', 't', 'e', 'p', 0xa5, 't', 'o', 'k',
                                         'e', 'n', 0xdd, 0xff, 0xff, 0xff, 0xff, 0x00};
    refused_bytes(huge, sizeof huge, "truncated");
    static const unsigned char huge_map[] = {0xdf, 0x7f, 0xff, 0xff, 0xff, 0xa1, 't'};
    refused_bytes(huge_map, sizeof huge_map, "truncated");
    static const unsigned char int_key[] = {0x82, 0xa1, 't', 0xa2, 'h', 'b', 0x01, 0x02}; /* {t:'hb', 1:2} */
    refused_bytes(int_key, sizeof int_key, "keys must be strings");
    static const unsigned char deep[] = {0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x91, 0x90};
    refused_bytes(deep, sizeof deep, "nesting");

    /* a real step one entry over the limit */
    int n = APR_WORKER_MAX_BATCH + 1;
    int32_t *v = calloc((size_t)n, sizeof *v);
    uint8_t *w = calloc((size_t)n, 1);
    apr_wmsg big = {.type = APR_W_STEP, .n = n, .token = v, .pos = v, .seq = v, .want = w};
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    ck_assert_int_eq(apr_wmsg_encode(&sb, &big), 0);
    refused_bytes(sb.data, sb.size, "4097 entries (1..4096 allowed)");
    /* and exactly at it */
    msgpack_sbuffer_clear(&sb);
    big.n = APR_WORKER_MAX_BATCH;
    ck_assert_int_eq(apr_wmsg_encode(&sb, &big), 0);
    ck_assert_msg(apr_wmsg_parse(sb.data, sb.size, &m, err) == 0, "%s", err);
    ck_assert_int_eq(m.n, APR_WORKER_MAX_BATCH);
    apr_wmsg_free(&m);
    /* the largest step there is: every entry wants APR_TOPK_MAX candidates */
    uint8_t *k = malloc((size_t)n);
    memset(w, 1, (size_t)n);
    memset(k, APR_TOPK_MAX, (size_t)n);
    big.topk = k;
    msgpack_sbuffer_clear(&sb);
    ck_assert_int_eq(apr_wmsg_encode(&sb, &big), 0);
    ck_assert_msg(apr_wmsg_parse(sb.data, sb.size, &m, err) == 0, "%s", err);
    ck_assert(m.n == APR_WORKER_MAX_BATCH && m.topk[APR_WORKER_MAX_BATCH - 1] == APR_TOPK_MAX);
    apr_wmsg_free(&m);
    msgpack_sbuffer_destroy(&sb);
    free(k);
    free(v);
    free(w);

    /* over the frame limit, whatever it holds */
    size_t len = ((size_t)1 << 20) + 1;
    unsigned char *blob = calloc(len, 1);
    refused_bytes(blob, len, "over the limit");
    free(blob);
}
END_TEST

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: reproducible and good enough to make junk */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

/* Whatever parses must encode and parse back the same. */
static void check_junk(const unsigned char *buf, size_t len, size_t *parsed)
{
    apr_wmsg m, back;
    char err[APR_ERRLEN] = "";
    if (apr_wmsg_parse(buf, len, &m, err) != 0) {
        ck_assert_msg(err[0] != 0, "a refusal without a message");
        return;
    }
    ++*parsed;
    round_trip(&m, &back);
    ck_assert(back.step == m.step && back.n == m.n && back.ok == m.ok && back.pid == m.pid);
    if (m.n)
        ck_assert(!memcmp(back.pos, m.pos, (size_t)m.n * sizeof *m.pos) &&
                  !memcmp(back.want, m.want, (size_t)m.n));
    for (int32_t i = 0; i < m.n; i++) /* absent and all-zero are the same */
        ck_assert_int_eq(m.topk ? m.topk[i] : 0, back.topk ? back.topk[i] : 0);
    apr_wmsg_free(&back);
    apr_wmsg_free(&m);
}

START_TEST(random_bytes)
{
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    unsigned char buf[256];
    size_t parsed = 0;
    /* pure junk */
    for (int i = 0; i < 20000; i++) {
        size_t len = 1 + rng_next(&s) % sizeof buf;
        for (size_t k = 0; k < len; k++)
            buf[k] = (unsigned char)rng_next(&s);
        check_junk(buf, len, &parsed);
    }
    /* valid frames with a few bytes flipped, so the parser sees deep paths */
    static const char *seeds[] = {
        "{t:'step', step:9, token:[1, 2, 3], pos:[0, 1, 2], seq:[0, 0, 0], want:[false, false, true]}",
        "{t:'done', step:9, ok:false, error:'bad', n_logits:0, ms:1.5}",
        "{t:'hello', ok:true, backend:'cpu', pid:12, n_vocab:512, n_ctx:64, n_seq:2, max_batch:16, max_logits:2}",
        "{t:'trim', seq:1, from:4}",
        "{t:'step', step:9, token:[1, 2, 3], pos:[0, 1, 2], seq:[0, 0, 1], want:[false, true, true], topk:[0, 1, 40]}",
    };
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (int i = 0; i < 20000; i++) {
        mk(&sb, seeds[i % 5]);
        ck_assert(sb.size <= sizeof buf);
        memcpy(buf, sb.data, sb.size);
        int flips = 1 + (int)(rng_next(&s) % 3);
        for (int f = 0; f < flips; f++)
            buf[rng_next(&s) % sb.size] ^= (unsigned char)(1u << (rng_next(&s) % 8));
        size_t len = sb.size - (rng_next(&s) % 4 == 0 ? rng_next(&s) % sb.size : 0);
        check_junk(buf, len, &parsed);
    }
    msgpack_sbuffer_destroy(&sb);
    printf("random_bytes: %zu of 40000 frames parsed (and round-tripped)\n", parsed);
}
END_TEST

/* ---------------------------------------------------------------- shm */

START_TEST(shm_create_attach)
{
    char err[APR_ERRLEN] = "";
    apr_shm a, b;
    ck_assert_msg(apr_shm_create(&a, "apr-test-logits", 4096 * 3, err) == 0, "%s", err);
    ck_assert_uint_eq(a.size, 4096 * 3);
    ck_assert_int_eq(fcntl(a.fd, F_GETFD) & FD_CLOEXEC, 0); /* an exec'd child keeps it */
    float *fa = a.base;
    fa[0] = 1.5f;
    fa[3071] = -2.0f;

    /* attach takes ownership of its fd, as a worker would of the inherited one */
    ck_assert_msg(apr_shm_attach(&b, dup(a.fd), 4096 * 3, err) == 0, "%s", err);
    ck_assert_uint_eq(b.size, 4096 * 3);
    float *fb = b.base;
    ck_assert(fb[0] == 1.5f && fb[3071] == -2.0f);
    fb[1] = 7.0f;
    ck_assert(fa[1] == 7.0f);
    apr_shm_close(&b);
    ck_assert_ptr_null(b.base);
    apr_shm_close(&b); /* twice is harmless */

    /* too small for what the worker needs */
    int fd = dup(a.fd);
    ck_assert_int_eq(apr_shm_attach(&b, fd, 4096 * 3 + 1, err), -1);
    ck_assert_msg(strstr(err, "12288 bytes, 12289 needed"), "%s", err);
    ck_assert_ptr_null(b.base);
    apr_shm_close(&b);
    close(fd); /* a failed attach leaves the fd to the caller */

    /* the size is sealed: neither side can shrink it under the other */
    ck_assert_int_ne(ftruncate(a.fd, 16), 0);
    apr_shm_close(&a);

    /* not a sealed memory segment */
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    ck_assert_int_eq(apr_shm_attach(&b, pfd[0], 1, err), -1);
    ck_assert_msg(strstr(err, "not a memory file"), "%s", err);
    close(pfd[0]);
    close(pfd[1]);
    fd = memfd_create("unsealed", 0);
    ck_assert_int_eq(ftruncate(fd, 64), 0);
    ck_assert_int_eq(apr_shm_attach(&b, fd, 1, err), -1);
    ck_assert_msg(strstr(err, "sealed"), "%s", err);
    close(fd);
    ck_assert_int_eq(apr_shm_attach(&b, -1, 1, err), -1);
    ck_assert_int_eq(apr_shm_create(&a, "zero", 0, err), -1);
    apr_shm_close(&a);

    apr_shm zeroed = {0}; /* never created: closing must not touch fd 0 */
    int fd0 = fcntl(0, F_GETFD);
    apr_shm_close(&zeroed);
    ck_assert_int_eq(fcntl(0, F_GETFD), fd0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wmsg");
    TCase *tc = tcase_create("wmsg");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, round_trip_every_type);
    tcase_add_test(tc, documented_topk_step);
    tcase_add_test(tc, error_text_is_made_valid);
    tcase_add_test(tc, hostile_maps);
    tcase_add_test(tc, hostile_bytes);
    tcase_add_test(tc, random_bytes);
    tcase_add_test(tc, shm_create_attach);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
