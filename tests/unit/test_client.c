/* client/: the JSON writer (escaping, bad UTF-8, whole replies), strict
 * number and id parsing, the shared generation flags against PROTOCOL.md's
 * ranges, endpoint and timeout flags, and a connection with no server. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"

/* ------------------------------------------------------------------ JSON */

/* What apr_json_str writes for s[0..n), in a malloc'd string. */
static char *json_of(const char *s, size_t n)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    apr_json_str(f, s, n);
    fclose(f);
    return buf;
}

#define JSON_IS(lit, want)                                   \
    do {                                                     \
        char *got_ = json_of(lit, sizeof(lit) - 1);          \
        ck_assert_str_eq(got_, want);                        \
        free(got_);                                          \
    } while (0)

START_TEST(json_escapes)
{
    JSON_IS("", "\"\"");
    JSON_IS("plain text", "\"plain text\"");
    JSON_IS("say \"hi\" \\ bye", "\"say \\\"hi\\\" \\\\ bye\"");
    JSON_IS("a\nb\rc\td", "\"a\\nb\\rc\\td\"");
    JSON_IS("\x01\x1f\b\f", "\"\\u0001\\u001f\\u0008\\u000c\"");
    JSON_IS("nul\0here", "\"nul\\u0000here\"");
    /* DEL and '/' are fine as they are */
    JSON_IS("\x7f/", "\"\x7f/\"");
    /* valid UTF-8 of every length passes through */
    JSON_IS("\xc3\xa9 \xe2\x82\xac \xf0\x9f\xa6\x99", "\"\xc3\xa9 \xe2\x82\xac \xf0\x9f\xa6\x99\"");
    JSON_IS("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\""); /* U+10FFFF */
}
END_TEST

START_TEST(json_bad_utf8)
{
    /* one U+FFFD per bad byte; the text around survives */
    JSON_IS("a\xff" "b", "\"a\\ufffdb\"");
    JSON_IS("\x80", "\"\\ufffd\"");                           /* lone continuation */
    JSON_IS("\xe2\x82", "\"\\ufffd\\ufffd\"");                /* cut at the end */
    JSON_IS("\xe2\x82z", "\"\\ufffd\\ufffdz\"");              /* cut in the middle */
    JSON_IS("\xc0\xaf", "\"\\ufffd\\ufffd\"");                /* overlong '/' */
    JSON_IS("\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"");     /* overlong, 3 bytes */
    JSON_IS("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");     /* surrogate */
    JSON_IS("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* past U+10FFFF */
    JSON_IS("\xf8\x88\x80\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\"");
    /* a bad byte right before a good character */
    JSON_IS("\xc3\xc3\xa9", "\"\\ufffd\xc3\xa9\"");
}
END_TEST

static char *reply_json(const apr_reply *r)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    apr_json_reply(f, r);
    fclose(f);
    return buf;
}

/* Encodes with proto's encoder and decodes with its parser, so the JSON is
 * written from exactly what a client receives. */
static void round_trip(msgpack_sbuffer *b, apr_reply *r)
{
    char err[APR_ERRLEN];
    ck_assert_msg(apr_reply_parse(b->data, b->size, r, err) == 0, "%s", err);
    msgpack_sbuffer_clear(b);
}

START_TEST(json_replies)
{
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    apr_reply r;
    apr_id id;
    char *s;

    apr_id_set_str(&id, "r\"1");
    ck_assert_int_eq(apr_reply_token(&b, &id, "He said \"hi\"\n", 13, 9707, 3), 0);
    round_trip(&b, &r);
    s = reply_json(&r);
    ck_assert_str_eq(s, "{\"event\":\"token\",\"id\":\"r\\\"1\",\"text\":\"He said \\\"hi\\\"\\n\","
                        "\"token\":9707,\"index\":3}");
    free(s);
    apr_reply_free(&r);

    apr_id_set_int(&id, -7);
    apr_usage u = {.prompt_tokens = 2, .completion_tokens = 8};
    apr_timings t = {.ttft_ms = 12.5, .prefill_tok_s = 160, .decode_tok_s = 0.1};
    ck_assert_int_eq(apr_reply_done(&b, &id, APR_FINISH_LENGTH, &u, &t, NULL, 0), 0);
    round_trip(&b, &r);
    s = reply_json(&r);
    ck_assert_str_eq(s, "{\"event\":\"done\",\"id\":-7,\"finish_reason\":\"length\","
                        "\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":8},"
                        "\"timings\":{\"ttft_ms\":12.5,\"prefill_tok_s\":160,\"decode_tok_s\":0.1}}");
    free(s);
    /* The parser refuses NaN, but JSON has none in any case: null stands
     * for it rather than output that does not parse. */
    r.timings.decode_tok_s = NAN;
    r.timings.ttft_ms = INFINITY;
    s = reply_json(&r);
    ck_assert_ptr_nonnull(strstr(s, "{\"ttft_ms\":null,\"prefill_tok_s\":160,\"decode_tok_s\":null}"));
    free(s);
    apr_reply_free(&r);

    ck_assert_int_eq(apr_reply_done(&b, &id, APR_FINISH_STOP, &u, &t, "all\tof it", 9), 0);
    round_trip(&b, &r);
    s = reply_json(&r);
    ck_assert_ptr_nonnull(strstr(s, ",\"text\":\"all\\tof it\"}"));
    free(s);
    apr_reply_free(&r);

    id.kind = APR_ID_NONE;
    ck_assert_int_eq(apr_reply_error(&b, &id, APR_PERR_INVALID_PARAM, "top_p: must be \"(0, 1]\""), 0);
    round_trip(&b, &r);
    s = reply_json(&r);
    ck_assert_str_eq(s, "{\"event\":\"error\",\"id\":null,\"code\":\"invalid_param\","
                        "\"message\":\"top_p: must be \\\"(0, 1]\\\"\"}");
    free(s);
    apr_reply_free(&r);

    apr_id_set_int(&id, 4);
    ck_assert_int_eq(apr_reply_cancel(&b, &id, true), 0);
    round_trip(&b, &r);
    s = reply_json(&r);
    ck_assert_str_eq(s, "{\"event\":\"cancel\",\"id\":4,\"found\":true}");
    free(s);
    apr_reply_free(&r);

    int32_t toks[] = {13048, 0};
    ck_assert_int_eq(apr_reply_tokens(&b, &id, toks, 2), 0);
    round_trip(&b, &r);
    s = reply_json(&r);
    ck_assert_str_eq(s, "{\"event\":\"tokens\",\"id\":4,\"tokens\":[13048,0]}");
    free(s);
    apr_reply_free(&r);

    apr_worker_status w[2] = {
        {.name = "cuda0", .backend = "cuda", .state = "restarting", .pid = 42, .restarts = 3},
        {.name = "cpu0", .backend = "cpu", .state = "ready", .pid = 43, .sequences = 1},
    };
    apr_status st = {.model = "m \"q\".gguf", .n_ctx = 4096, .n_vocab = 151936, .running = 1,
                     .queue_limit = 64, .restarts = 3, .uptime_s = 12.25, .workers = w,
                     .n_workers = 2};
    ck_assert_int_eq(apr_reply_status(&b, &id, &st), 0);
    round_trip(&b, &r);
    s = reply_json(&r);
    ck_assert_str_eq(s, "{\"event\":\"status\",\"id\":4,\"model\":\"m \\\"q\\\".gguf\",\"n_ctx\":4096,"
                        "\"n_vocab\":151936,\"running\":1,\"queued\":0,\"queue_limit\":64,"
                        "\"restarts\":3,\"uptime_s\":12.25,\"workers\":["
                        "{\"name\":\"cuda0\",\"backend\":\"cuda\",\"state\":\"restarting\",\"pid\":42,"
                        "\"restarts\":3,\"sequences\":0},"
                        "{\"name\":\"cpu0\",\"backend\":\"cpu\",\"state\":\"ready\",\"pid\":43,"
                        "\"restarts\":0,\"sequences\":1}]}");
    free(s);
    apr_reply_free(&r);
    msgpack_sbuffer_destroy(&b);
}
END_TEST

/* --------------------------------------------------------------- numbers */

START_TEST(numbers)
{
    double d;
    int64_t i;
    uint64_t u;
    ck_assert_int_eq(apr_parse_double("0.5", &d), 0);
    ck_assert(d == 0.5);
    ck_assert_int_eq(apr_parse_double("-2", &d), 0);
    ck_assert_int_eq(apr_parse_double("1e-3", &d), 0);
    ck_assert_int_eq(apr_parse_double(".25", &d), 0);
    ck_assert(d == 0.25);
    const char *bad_doubles[] = {"", " 1", "1 ", "1x", "abc", "nan", "-nan", "inf", "+inf",
                                 "1e999", "0x10", "1,5", "--1"};
    for (size_t k = 0; k < sizeof bad_doubles / sizeof bad_doubles[0]; k++)
        ck_assert_msg(apr_parse_double(bad_doubles[k], &d) == -1, "'%s' taken", bad_doubles[k]);

    ck_assert_int_eq(apr_parse_int("42", 0, 100, &i), 0);
    ck_assert_int_eq(i, 42);
    ck_assert_int_eq(apr_parse_int("-1", -1, 5, &i), 0);
    ck_assert_int_eq(i, -1);
    ck_assert_int_eq(apr_parse_int("+3", 0, 5, &i), 0);
    const char *bad_ints[] = {"", " 1", "1 ", "1.0", "1e3", "0x10", "abc", "-", "101", "-2",
                              "99999999999999999999"};
    for (size_t k = 0; k < sizeof bad_ints / sizeof bad_ints[0]; k++)
        ck_assert_msg(apr_parse_int(bad_ints[k], -1, 100, &i) == -1, "'%s' taken", bad_ints[k]);

    ck_assert_int_eq(apr_parse_u64("18446744073709551615", &u), 0);
    ck_assert(u == UINT64_MAX);
    ck_assert_int_eq(apr_parse_u64("0", &u), 0);
    ck_assert(u == 0);
    const char *bad_u64[] = {"", "-1", " 1", "18446744073709551616", "1.5", "1x"};
    for (size_t k = 0; k < sizeof bad_u64 / sizeof bad_u64[0]; k++)
        ck_assert_msg(apr_parse_u64(bad_u64[k], &u) == -1, "'%s' taken", bad_u64[k]);
}
END_TEST

START_TEST(token_ids)
{
    int32_t *ids;
    size_t n;
    char err[APR_ERRLEN];
    const char *good[] = {"1,2,3", "[1, 2, 3]", " [ 1 ,2, 3 ] ", "1, 2 ,3"};
    for (size_t k = 0; k < sizeof good / sizeof good[0]; k++) {
        ck_assert_msg(apr_parse_ids(good[k], 10, &ids, &n, err) == 0, "'%s': %s", good[k], err);
        ck_assert_uint_eq(n, 3);
        ck_assert(ids[0] == 1 && ids[1] == 2 && ids[2] == 3);
        free(ids);
    }
    ck_assert_int_eq(apr_parse_ids("2147483647", 10, &ids, &n, err), 0);
    ck_assert(n == 1 && ids[0] == 2147483647);
    free(ids);
    const char *bad[] = {"", "[]", "[", "1,", ",1", "1,,2", "-1", "2147483648", "1 2", "[1",
                         "1]", "[1]]", "a", "1.5", "0x10", "1,2,3,4,5,6,7,8,9,10,11"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        ids = (int32_t *)&n; /* must be reset on failure */
        ck_assert_msg(apr_parse_ids(bad[k], 10, &ids, &n, err) == -1, "'%s' taken", bad[k]);
        ck_assert_ptr_null(ids);
        ck_assert(err[0]);
    }
}
END_TEST

/* ------------------------------------------------------ generation flags */

/* Runs apr_gen_flag on "flag value"; its return value. */
static int gen1(apr_gen_flags *g, const char *flag, const char *value, char err[APR_ERRLEN])
{
    char *argv[] = {"apr", (char *)flag, (char *)value, NULL};
    int argc = value ? 3 : 2, i = 1;
    int rc = apr_gen_flag(g, argc, argv, &i, err);
    if (rc == 1)
        ck_assert_int_eq(i, 2); /* moved past the value */
    if (rc == 0)
        ck_assert_int_eq(i, 1); /* not ours: left alone */
    return rc;
}

START_TEST(gen_flags_ranges)
{
    apr_gen_flags g;
    apr_gen_flags_init(&g);
    char err[APR_ERRLEN];
    ck_assert(g.max_tokens == 0 && g.sampling.temperature == 0.8f && !g.sampling.has_seed);

    struct {
        const char *flag, *value;
        int want;
    } cases[] = {
        {"-n", "1", 1}, {"-n", "131072", 1}, {"-n", "0", -1}, {"-n", "131073", -1}, {"-n", "5.0", -1},
        {"--temperature", "0", 1}, {"--temperature", "100", 1}, {"--temperature", "100.1", -1},
        {"--temperature", "-0.1", -1}, {"--temperature", "nan", -1},
        {"--top-k", "0", 1}, {"--top-k", "2147483647", 1}, {"--top-k", "-1", -1}, {"--top-k", "1.5", -1},
        {"--top-p", "1", 1}, {"--top-p", "0.0001", 1}, {"--top-p", "0", -1}, {"--top-p", "1.01", -1},
        {"--min-p", "0", 1}, {"--min-p", "1", 1}, {"--min-p", "-0.01", -1}, {"--min-p", "2", -1},
        {"--repeat-penalty", "100", 1}, {"--repeat-penalty", "0", -1}, {"--repeat-penalty", "101", -1},
        {"--repeat-last-n", "-1", 1}, {"--repeat-last-n", "1048576", 1},
        {"--repeat-last-n", "-2", -1}, {"--repeat-last-n", "1048577", -1},
        {"--presence-penalty", "-2", 1}, {"--presence-penalty", "2.5", -1},
        {"--frequency-penalty", "2", 1}, {"--frequency-penalty", "-2.01", -1},
        {"--seed", "0", 1}, {"--seed", "18446744073709551615", 1}, {"--seed", "-1", 1},
        {"--seed", "-2", -1}, {"--seed", "18446744073709551616", -1}, {"--seed", "x", -1},
        {"--stop", "\n\n", 1}, {"--stop", "", -1}, {"--stop", "\xff", -1},
        {"--prompt", "x", 0}, {"-p", "x", 0}, {"--temp", "1", 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        err[0] = '\0';
        int rc = gen1(&g, cases[k].flag, cases[k].value, err);
        ck_assert_msg(rc == cases[k].want, "%s %s: %d, want %d", cases[k].flag, cases[k].value, rc,
                      cases[k].want);
        /* a refusal names the flag */
        if (rc < 0)
            ck_assert_msg(strstr(err, cases[k].flag) != NULL, "'%s' does not name %s", err,
                          cases[k].flag);
    }
    /* a flag without its value */
    ck_assert_int_eq(gen1(&g, "--top-p", NULL, err), -1);
    ck_assert_ptr_nonnull(strstr(err, "needs a value"));
}
END_TEST

START_TEST(gen_flags_apply)
{
    apr_gen_flags g;
    apr_gen_flags_init(&g);
    char err[APR_ERRLEN];
    ck_assert_int_eq(gen1(&g, "-n", "8", err), 1);
    ck_assert_int_eq(gen1(&g, "--temperature", "0", err), 1);
    ck_assert_int_eq(gen1(&g, "--top-k", "5", err), 1);
    ck_assert_int_eq(gen1(&g, "--top-p", "0.5", err), 1);
    ck_assert_int_eq(gen1(&g, "--min-p", "0.25", err), 1);
    ck_assert_int_eq(gen1(&g, "--repeat-penalty", "1.5", err), 1);
    ck_assert_int_eq(gen1(&g, "--repeat-last-n", "-1", err), 1);
    ck_assert_int_eq(gen1(&g, "--presence-penalty", "-0.5", err), 1);
    ck_assert_int_eq(gen1(&g, "--frequency-penalty", "0.75", err), 1);
    ck_assert_int_eq(gen1(&g, "--seed", "12345678901234567890", err), 1);
    ck_assert_int_eq(gen1(&g, "--stop", "END", err), 1);
    ck_assert_int_eq(gen1(&g, "--stop", "\n\n", err), 1);

    apr_request r;
    apr_request_init(&r, APR_OP_GENERATE);
    r.prompt = "hi";
    r.prompt_len = 2;
    apr_gen_flags_apply(&g, &r);
    apr_id_set_int(&r.id, 1);

    /* What the server's parser reads back is what the flags said. */
    msgpack_sbuffer b;
    msgpack_sbuffer_init(&b);
    ck_assert_int_eq(apr_request_encode(&b, &r), 0);
    apr_request got;
    apr_proto_error e;
    ck_assert_msg(apr_request_parse(b.data, b.size, &got, &e) == 0, "%s", e.message);
    ck_assert_uint_eq(got.max_tokens, 8);
    ck_assert(got.sampling.temperature == 0.0f);
    ck_assert_int_eq(got.sampling.top_k, 5);
    ck_assert(got.sampling.top_p == 0.5f);
    ck_assert(got.sampling.min_p == 0.25f);
    ck_assert(got.sampling.repeat_penalty == 1.5f);
    ck_assert_int_eq(got.sampling.repeat_last_n, -1);
    ck_assert(got.sampling.presence_penalty == -0.5f);
    ck_assert(got.sampling.frequency_penalty == 0.75f);
    ck_assert(got.sampling.has_seed && got.sampling.seed == 12345678901234567890ull);
    ck_assert_uint_eq(got.n_stop, 2);
    ck_assert_str_eq(got.stop[0], "END");
    ck_assert_str_eq(got.stop[1], "\n\n");
    apr_request_free(&got);
    msgpack_sbuffer_destroy(&b);

    /* --seed -1 takes an earlier seed back */
    ck_assert_int_eq(gen1(&g, "--seed", "-1", err), 1);
    ck_assert(!g.sampling.has_seed);
}
END_TEST

START_TEST(gen_flags_stop_limit)
{
    apr_gen_flags g;
    apr_gen_flags_init(&g);
    char err[APR_ERRLEN];
    for (int k = 0; k < APR_CLI_MAX_STOP; k++)
        ck_assert_int_eq(gen1(&g, "--stop", "x", err), 1);
    ck_assert_int_eq(gen1(&g, "--stop", "x", err), -1);
    char long_stop[258];
    memset(long_stop, 'a', 257);
    long_stop[257] = '\0';
    apr_gen_flags_init(&g);
    ck_assert_int_eq(gen1(&g, "--stop", long_stop, err), -1);
    long_stop[256] = '\0';
    ck_assert_int_eq(gen1(&g, "--stop", long_stop, err), 1);
}
END_TEST

/* ------------------------------------------------ endpoint and timeout */

START_TEST(endpoints)
{
    char err[APR_ERRLEN];
    const char *good[] = {"tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:65535",
                          "tcp://coord.example.com:5555", "ipc:///tmp/apr.sock", "ipc://rel"};
    for (size_t k = 0; k < sizeof good / sizeof good[0]; k++)
        ck_assert_msg(apr_endpoint_check(good[k], err) == 0, "%s: %s", good[k], err);
    char long_ipc[200] = "ipc:///";
    memset(long_ipc + 7, 'x', 150);
    const char *bad[] = {"", "127.0.0.1:5555", "tcp://", "tcp://host", "tcp://:5555",
                         "tcp://h:0", "tcp://h:65536", "tcp://h:5x", "tcp://h:", "tcp://h: 5",
                         "tcp://::1:5555", "tcp://[::1:5555", "tcp://[]:5555", "tcp://*:5555",
                         "tcp://a b:1", "udp://h:1", "http://h:1", "ipc://", "inproc://x",
                         long_ipc};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        err[0] = '\0';
        ck_assert_msg(apr_endpoint_check(bad[k], err) == -1, "'%s' taken", bad[k]);
        ck_assert(err[0]);
    }
}
END_TEST

START_TEST(endpoint_flag)
{
    char err[APR_ERRLEN];
    unsetenv("APR_ENDPOINT");
    ck_assert_str_eq(apr_cli_endpoint(NULL, err), APR_DEFAULT_ENDPOINT);
    setenv("APR_ENDPOINT", "", 1);
    ck_assert_str_eq(apr_cli_endpoint(NULL, err), APR_DEFAULT_ENDPOINT);
    setenv("APR_ENDPOINT", "ipc:///run/apr", 1);
    ck_assert_str_eq(apr_cli_endpoint(NULL, err), "ipc:///run/apr");
    /* the flag wins over the environment */
    ck_assert_str_eq(apr_cli_endpoint("tcp://h:7", err), "tcp://h:7");
    setenv("APR_ENDPOINT", "nonsense", 1);
    ck_assert_ptr_null(apr_cli_endpoint(NULL, err));
    ck_assert_ptr_nonnull(strstr(err, "APR_ENDPOINT"));
    ck_assert_ptr_null(apr_cli_endpoint("", err));
    ck_assert_ptr_nonnull(strstr(err, "--endpoint"));
    unsetenv("APR_ENDPOINT");
}
END_TEST

START_TEST(timeouts)
{
    int ms = 0;
    ck_assert_int_eq(apr_cli_timeout("5", &ms), 0);
    ck_assert_int_eq(ms, 5000);
    ck_assert_int_eq(apr_cli_timeout("1.5", &ms), 0);
    ck_assert_int_eq(ms, 1500);
    ck_assert_int_eq(apr_cli_timeout("0.0001", &ms), 0);
    ck_assert_int_eq(ms, 1);
    ck_assert_int_eq(apr_cli_timeout("0", &ms), 0);
    ck_assert_int_eq(ms, -1);
    ck_assert_int_eq(apr_cli_timeout("86400", &ms), 0);
    ck_assert_int_eq(ms, 86400000);
    const char *bad[] = {"-1", "86401", "", "x", "5s", "inf"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        ck_assert_msg(apr_cli_timeout(bad[k], &ms) == -1, "'%s' taken", bad[k]);
}
END_TEST

/* --------------------------------------------------------- connection */

START_TEST(conn_without_server)
{
    char err[APR_ERRLEN];
    ck_assert_ptr_null(apr_conn_open("tcp://nowhere", err));
    ck_assert_ptr_nonnull(strstr(err, "tcp://nowhere"));

    /* Connecting succeeds with nobody there (ZeroMQ retries in the
     * background); the request waits and no reply comes. Port 1 on the
     * loopback is never apr-coord. */
    apr_conn *c = apr_conn_open("tcp://127.0.0.1:1", err);
    ck_assert_msg(c != NULL, "%s", err);
    ck_assert_str_eq(apr_conn_endpoint(c), "tcp://127.0.0.1:1");
    ck_assert_int_eq(apr_conn_next_id(c), 1);
    ck_assert_int_eq(apr_conn_next_id(c), 2);
    apr_request r;
    apr_request_init(&r, APR_OP_STATUS);
    ck_assert_int_eq(apr_conn_send(c, &r, err), 0);
    apr_reply rep;
    ck_assert_int_eq(apr_conn_recv(c, 50, &rep, err), 0);
    apr_reply_free(&rep);
    apr_conn_close(c);
    apr_conn_close(NULL);
}
END_TEST

/* ------------------------------------------- measuring (bench, load) */

START_TEST(dists)
{
    apr_dist d;
    ck_assert_int_eq(apr_parse_dist("32", 1, 100, &d), 0);
    ck_assert_uint_eq(d.lo, 32);
    ck_assert_uint_eq(d.hi, 32);
    ck_assert_int_eq(apr_parse_dist("16-64", 1, 100, &d), 0);
    ck_assert_uint_eq(d.lo, 16);
    ck_assert_uint_eq(d.hi, 64);
    ck_assert_int_eq(apr_parse_dist("5-5", 1, 100, &d), 0);
    const char *bad[] = {"", "0", "101", "-5", "5-", "-", "9-3", "1-101", "1--2", "1-+2", "+1-2",
                         "1.5", "1-2-3", " 4", "4 ", "x", "1-x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(apr_parse_dist(bad[i], 1, 100, &d) == -1, "accepted '%s'", bad[i]);

    /* draws stay in range and reach both ends */
    apr_rand r;
    apr_rand_seed(&r, 42);
    apr_parse_dist("3-6", 1, 100, &d);
    bool seen[7] = {false};
    for (int i = 0; i < 1000; i++) {
        uint32_t x = apr_dist_draw(&d, &r);
        ck_assert(x >= 3 && x <= 6);
        seen[x] = true;
    }
    ck_assert(seen[3] && seen[4] && seen[5] && seen[6]);
}
END_TEST

START_TEST(rng_repeats)
{
    apr_rand a, b, c;
    apr_rand_seed(&a, 7);
    apr_rand_seed(&b, 7);
    apr_rand_seed(&c, 8);
    bool differs = false;
    for (int i = 0; i < 100; i++) {
        uint64_t x = apr_rand_next(&a);
        ck_assert_uint_eq(x, apr_rand_next(&b));
        differs |= x != apr_rand_next(&c);
        double u = apr_rand_unit(&a);
        apr_rand_unit(&b);
        ck_assert(u >= 0 && u < 1);
    }
    ck_assert(differs);
    ck_assert_uint_eq(apr_rand_range(&a, 5, 5), 5);
    /* the same seed gives the same words */
    apr_rand_seed(&a, 3);
    apr_rand_seed(&b, 3);
    char *w1 = apr_words(&a, 12), *w2 = apr_words(&b, 12), *w0 = apr_words(&a, 0);
    ck_assert_ptr_nonnull(w1);
    ck_assert_str_eq(w1, w2);
    ck_assert_str_eq(w0, "");
    size_t spaces = 0;
    for (const char *p = w1; *p; p++)
        spaces += *p == ' ';
    ck_assert_uint_eq(spaces, 11);
    free(w0);
    free(w1);
    free(w2);
}
END_TEST

START_TEST(samples)
{
    apr_samples s = {0};
    ck_assert(isnan(apr_samples_pct(&s, 50)));
    ck_assert(isnan(apr_samples_mean(&s)));
    ck_assert(apr_samples_std(&s) == 0);
    /* 1..100 in a scrambled order */
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(apr_samples_add(&s, (double)((i * 37) % 100 + 1)), 0);
    ck_assert_double_eq_tol(apr_samples_mean(&s), 50.5, 1e-12);
    ck_assert_double_eq_tol(apr_samples_std(&s), 29.011491975882016, 1e-9);
    ck_assert_double_eq(apr_samples_max(&s), 100);
    /* numpy: percentile(1..100, [0, 50, 90, 99, 100]) */
    ck_assert_double_eq_tol(apr_samples_pct(&s, 0), 1, 1e-12);
    ck_assert_double_eq_tol(apr_samples_pct(&s, 50), 50.5, 1e-12);
    ck_assert_double_eq_tol(apr_samples_pct(&s, 90), 90.1, 1e-12);
    ck_assert_double_eq_tol(apr_samples_pct(&s, 99), 99.01, 1e-12);
    ck_assert_double_eq_tol(apr_samples_pct(&s, 100), 100, 1e-12);
    apr_samples_free(&s);
    ck_assert_int_eq(apr_samples_add(&s, 3.5), 0);
    ck_assert_double_eq(apr_samples_pct(&s, 99), 3.5);
    apr_samples_free(&s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, json_escapes);
    tcase_add_test(tc, json_bad_utf8);
    tcase_add_test(tc, json_replies);
    tcase_add_test(tc, numbers);
    tcase_add_test(tc, token_ids);
    tcase_add_test(tc, gen_flags_ranges);
    tcase_add_test(tc, gen_flags_apply);
    tcase_add_test(tc, gen_flags_stop_limit);
    tcase_add_test(tc, endpoints);
    tcase_add_test(tc, endpoint_flag);
    tcase_add_test(tc, timeouts);
    tcase_add_test(tc, conn_without_server);
    tcase_add_test(tc, dists);
    tcase_add_test(tc, rng_repeats);
    tcase_add_test(tc, samples);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
