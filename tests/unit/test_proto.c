/* proto/: request parsing (valid, hostile, every field's type and range),
 * request and reply round trips, the reply decoder on hostile input, and a
 * real ROUTER/DEALER exchange over tcp://127.0.0.1. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/proto.h"
#include "tests/unit/mini.h"

/* Parses the notation as a request and expects `code` (APR_PERR_NONE: success). */
static void expect_ex(const char *text, apr_perr code, const char *in_msg, const apr_proto_limits *lim)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mk(&sb, text);
    apr_request r;
    apr_proto_error e;
    int rc = lim ? apr_request_parse_ex(sb.data, sb.size, lim, &r, &e)
                 : apr_request_parse(sb.data, sb.size, &r, &e);
    if (code == APR_PERR_NONE) {
        ck_assert_msg(rc == 0, "%s: unexpected %s: %s", text, apr_proto_code_str(e.code), e.message);
    } else {
        ck_assert_msg(rc == -1, "%s: parsed, expected %s", text, apr_proto_code_str(code));
        ck_assert_msg(e.code == code, "%s: got %s (%s), expected %s", text,
                      apr_proto_code_str(e.code), e.message, apr_proto_code_str(code));
        ck_assert(e.message[0] != 0);
        if (in_msg)
            ck_assert_msg(strstr(e.message, in_msg), "%s: message '%s' does not name '%s'", text,
                          e.message, in_msg);
    }
    apr_request_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

static void expect(const char *text, apr_perr code, const char *in_msg)
{
    expect_ex(text, code, in_msg, NULL);
}

/* ------------------------------------------------------------------------ */

START_TEST(request_defaults)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mk(&sb, "{op:'generate', prompt:'Hello'}");
    apr_request r;
    apr_proto_error e;
    ck_assert_int_eq(apr_request_parse(sb.data, sb.size, &r, &e), 0);
    ck_assert_int_eq(r.op, APR_OP_GENERATE);
    ck_assert_str_eq(r.prompt, "Hello");
    ck_assert_uint_eq(r.prompt_len, 5);
    ck_assert_int_eq(r.id.kind, APR_ID_NONE);
    ck_assert_uint_eq(r.max_tokens, 0);
    ck_assert(r.stream && r.add_special && r.parse_special);
    ck_assert_float_eq(r.sampling.temperature, 0.8f);
    ck_assert_int_eq(r.sampling.top_k, 40);
    ck_assert_float_eq(r.sampling.top_p, 0.95f);
    ck_assert_float_eq(r.sampling.min_p, 0.05f);
    ck_assert_float_eq(r.sampling.repeat_penalty, 1.0f);
    ck_assert_int_eq(r.sampling.repeat_last_n, 64);
    ck_assert(!r.sampling.has_seed);
    apr_request_free(&r);

    /* nil means default; tokenize does not add BOS by default */
    mk(&sb, "{op:'tokenize', text:'a', add_special:nil, id:'x'}");
    ck_assert_int_eq(apr_request_parse(sb.data, sb.size, &r, &e), 0);
    ck_assert(!r.add_special && r.parse_special);
    ck_assert_str_eq(r.id.str, "x");
    apr_request_free(&r);

    /* -1 seed is "random"; integers work where floats are expected */
    mk(&sb, "{op:'chat', v:1, id:-3, messages:[{role:'user', content:'hi'}], seed:-1, temperature:1}");
    ck_assert_int_eq(apr_request_parse(sb.data, sb.size, &r, &e), 0);
    ck_assert(!r.sampling.has_seed);
    ck_assert_float_eq(r.sampling.temperature, 1.0f);
    ck_assert_int_eq(r.id.kind, APR_ID_INT);
    ck_assert_int_eq(r.id.num, -3);
    ck_assert_uint_eq(r.n_messages, 1);
    ck_assert_str_eq(r.messages[0].role, "user");
    apr_request_free(&r);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* Encodes r, parses it back and checks every field the op carries. */
static void round_trip(const apr_request *r)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    ck_assert_int_eq(apr_request_encode(&sb, r), 0);
    apr_request p;
    apr_proto_error e;
    ck_assert_msg(apr_request_parse(sb.data, sb.size, &p, &e) == 0, "%s: %s", apr_op_str(r->op),
                  e.message);
    ck_assert_int_eq(p.op, r->op);
    ck_assert(apr_id_equal(&p.id, &r->id));
    ck_assert_uint_eq(p.prompt_len, r->prompt_len);
    if (r->prompt)
        ck_assert(memcmp(p.prompt, r->prompt, r->prompt_len) == 0);
    ck_assert_uint_eq(p.n_prompt_tokens, r->n_prompt_tokens);
    if (r->n_prompt_tokens)
        ck_assert(!memcmp(p.prompt_tokens, r->prompt_tokens, r->n_prompt_tokens * 4));
    ck_assert_uint_eq(p.n_messages, r->n_messages);
    for (size_t i = 0; i < r->n_messages; i++) {
        ck_assert_str_eq(p.messages[i].role, r->messages[i].role);
        ck_assert_uint_eq(p.messages[i].content_len, r->messages[i].content_len);
        ck_assert(!memcmp(p.messages[i].content, r->messages[i].content, r->messages[i].content_len));
    }
    ck_assert_uint_eq(p.text_len, r->text_len);
    if (r->text)
        ck_assert(!memcmp(p.text, r->text, r->text_len));
    ck_assert_uint_eq(p.n_tokens, r->n_tokens);
    if (r->n_tokens)
        ck_assert(!memcmp(p.tokens, r->tokens, r->n_tokens * 4));
    if (r->op == APR_OP_GENERATE || r->op == APR_OP_TOKENIZE) {
        ck_assert_int_eq(p.add_special, r->add_special);
        ck_assert_int_eq(p.parse_special, r->parse_special);
    }
    if (r->op == APR_OP_GENERATE || r->op == APR_OP_CHAT) {
        ck_assert_uint_eq(p.max_tokens, r->max_tokens);
        const apr_sampling *a = &p.sampling, *b = &r->sampling;
        ck_assert(a->temperature == b->temperature && a->top_k == b->top_k &&
                  a->top_p == b->top_p && a->min_p == b->min_p &&
                  a->repeat_penalty == b->repeat_penalty && a->repeat_last_n == b->repeat_last_n &&
                  a->presence_penalty == b->presence_penalty &&
                  a->frequency_penalty == b->frequency_penalty && a->has_seed == b->has_seed &&
                  a->seed == b->seed);
        ck_assert_int_eq(p.stream, r->stream);
        ck_assert_uint_eq(p.n_stop, r->n_stop);
        for (size_t i = 0; i < r->n_stop; i++)
            ck_assert_str_eq(p.stop[i], r->stop[i]);
    }
    apr_request_free(&p);
    msgpack_sbuffer_destroy(&sb);
}

START_TEST(request_round_trips)
{
    apr_request r;
    char prompt[] = "Once upon a time \xe2\x80\x94 <|im_start|>";
    int32_t toks[] = {0, 1, 151643, INT32_MAX};
    char *stops[] = {"\n\n", "END", "\xe2\x80\x94"};
    char role0[] = "system", role1[] = "user", c0[] = "Be brief.", c1[] = "Hi \xf0\x9f\x98\x80";
    apr_wire_msg msgs[2] = {{role0, c0, strlen(c0)}, {role1, c1, strlen(c1)}};

    apr_request_init(&r, APR_OP_GENERATE);
    apr_id_set_str(&r.id, "req-1");
    r.prompt = prompt;
    r.prompt_len = strlen(prompt);
    r.max_tokens = 77;
    r.sampling = (apr_sampling){.temperature = 0.25f, .top_k = 7, .top_p = 0.5f, .min_p = 0.1f,
                                .repeat_penalty = 1.3f, .repeat_last_n = -1,
                                .presence_penalty = -0.5f, .frequency_penalty = 1.5f,
                                .has_seed = true, .seed = UINT64_MAX};
    r.stop = stops;
    r.n_stop = 3;
    r.stream = false;
    r.add_special = false;
    r.parse_special = false;
    round_trip(&r);

    apr_request_init(&r, APR_OP_GENERATE);
    apr_id_set_int(&r.id, 42);
    r.prompt_tokens = toks;
    r.n_prompt_tokens = 4;
    r.sampling.temperature = 0;
    round_trip(&r);

    apr_request_init(&r, APR_OP_CHAT);
    apr_id_set_int(&r.id, INT64_MIN);
    r.messages = msgs;
    r.n_messages = 2;
    r.max_tokens = 1;
    round_trip(&r);

    apr_request_init(&r, APR_OP_TOKENIZE);
    r.text = prompt;
    r.text_len = strlen(prompt);
    r.add_special = true;
    round_trip(&r);

    apr_request_init(&r, APR_OP_DETOKENIZE);
    r.tokens = toks;
    r.n_tokens = 4;
    round_trip(&r);

    apr_request_init(&r, APR_OP_STATUS);
    round_trip(&r);

    apr_request_init(&r, APR_OP_CANCEL);
    apr_id_set_str(&r.id, "req-1");
    round_trip(&r);

    /* an empty prompt is valid at this level (BOS models generate from it) */
    apr_request_init(&r, APR_OP_GENERATE);
    r.prompt = prompt;
    r.prompt_len = 0;
    round_trip(&r);
}
END_TEST

START_TEST(request_structure)
{
    apr_request r;
    apr_proto_error e;
    /* not msgpack / not a map / empty / trailing bytes */
    const unsigned char c1[] = {0xc1};
    ck_assert_int_eq(apr_request_parse(c1, 1, &r, &e), -1);
    ck_assert_int_eq(e.code, APR_PERR_BAD_REQUEST);
    ck_assert_int_eq(apr_request_parse("", 0, &r, &e), -1);
    ck_assert_int_eq(e.code, APR_PERR_BAD_REQUEST);
    ck_assert_int_eq(apr_request_parse(NULL, 0, &r, &e), -1);
    expect("['generate']", APR_PERR_BAD_REQUEST, "map");
    expect("5", APR_PERR_BAD_REQUEST, "map");
    expect("'op'", APR_PERR_BAD_REQUEST, "map");
    expect("{}", APR_PERR_BAD_REQUEST, "op");
    expect("{prompt:'x'}", APR_PERR_BAD_REQUEST, "op");
    const unsigned char trailing[] = {0x81, 0xa2, 'o', 'p', 0xa6, 's', 't', 'a', 't', 'u', 's', 0xc0};
    ck_assert_int_eq(apr_request_parse(trailing, sizeof trailing - 1, &r, &e), 0);
    apr_request_free(&r);
    ck_assert_int_eq(apr_request_parse(trailing, sizeof trailing, &r, &e), -1);
    ck_assert_int_eq(e.code, APR_PERR_BAD_REQUEST);
    ck_assert(strstr(e.message, "trailing"));
    /* non-string keys */
    const unsigned char intkey[] = {0x81, 0x01, 0x02};
    ck_assert_int_eq(apr_request_parse(intkey, 3, &r, &e), -1);
    ck_assert_int_eq(e.code, APR_PERR_BAD_REQUEST);
    /* huge declared sizes in tiny frames: must not allocate by the claim */
    const unsigned char huge[][6] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0}, /* array32 of 4G */
        {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0}, /* map32 of 4G */
        {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'},  /* str32 of 4G */
        {0xc9, 0xff, 0xff, 0xff, 0xff, 0x01}, /* ext32 of 4G */
        {0x81, 0xa1, 'a', 0xdc, 0xff, 0xff},  /* array16 value cut */
    };
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        ck_assert_int_eq(apr_request_parse(huge[i], 6, &r, &e), -1);
        ck_assert_int_eq(e.code, APR_PERR_BAD_REQUEST);
    }
    /* deep nesting inside a value */
    unsigned char deep[200];
    memcpy(deep, "\x82\xa2op\xa6status\xa1x", 13);
    for (int i = 13; i < 199; i++)
        deep[i] = 0x91;
    deep[199] = 0xc0;
    ck_assert_int_eq(apr_request_parse(deep, sizeof deep, &r, &e), -1);
    ck_assert_int_eq(e.code, APR_PERR_BAD_REQUEST);
    ck_assert(strstr(e.message, "nesting"));
    /* oversized frame */
    apr_proto_limits lim;
    apr_proto_limits_default(&lim);
    ck_assert_uint_eq(lim.max_frame, 4u << 20);
    size_t big = lim.max_frame + 1;
    unsigned char *buf = calloc(big, 1);
    ck_assert_int_eq(apr_request_parse(buf, big, &r, &e), -1);
    ck_assert_int_eq(e.code, APR_PERR_TOO_LARGE);
    free(buf);
    lim.max_frame = 16;
    expect_ex("{op:'generate', prompt:'a long enough prompt'}", APR_PERR_TOO_LARGE, "frame", &lim);
    /* too many objects for any valid request: a 4 MiB array of nils */
    size_t nn = (4u << 20) - 64;
    buf = malloc(nn);
    memcpy(buf, "\x82\xa2op\xa6status\xa1x\xdd", 14);
    buf[14] = (unsigned char)((nn - 18) >> 24);
    buf[15] = (unsigned char)((nn - 18) >> 16);
    buf[16] = (unsigned char)((nn - 18) >> 8);
    buf[17] = (unsigned char)(nn - 18);
    memset(buf + 18, 0xc0, nn - 18);
    ck_assert_int_eq(apr_request_parse(buf, nn, &r, &e), -1);
    ck_assert_int_eq(e.code, APR_PERR_TOO_LARGE);
    free(buf);
}
END_TEST

START_TEST(request_ops_keys_version)
{
    expect("{op:'generat', prompt:'x'}", APR_PERR_UNKNOWN_OP, "generat");
    expect("{op:'\\xff\\x00'}", APR_PERR_UNKNOWN_OP, "\\xff");
    expect("{op:5}", APR_PERR_INVALID_PARAM, "op");
    expect("{op:bin'status'}", APR_PERR_INVALID_PARAM, "op");
    expect("{op:'status', op:'status'}", APR_PERR_INVALID_PARAM, "duplicate");
    expect("{op:'status', v:1}", APR_PERR_NONE, NULL);
    expect("{op:'status', v:2}", APR_PERR_UNSUPPORTED_VERSION, "v");
    expect("{op:'status', v:0}", APR_PERR_UNSUPPORTED_VERSION, "v");
    expect("{op:'status', v:-1}", APR_PERR_UNSUPPORTED_VERSION, "v");
    expect("{op:'status', v:'1'}", APR_PERR_INVALID_PARAM, "v");
    expect("{op:'status', v:1.0}", APR_PERR_INVALID_PARAM, "v");
    /* version is checked before the op, so a v2 op is not "unknown" */
    expect("{op:'embed', v:2}", APR_PERR_UNSUPPORTED_VERSION, "v");
    expect("{op:'generate', prompt:'x', temprature:0.5}", APR_PERR_INVALID_PARAM, "temprature");
    /* hostile key names are quoted, escaped and cut in the message */
    char key[400] = "{op:'status', '";
    for (int i = 0; i < 60; i++)
        strcat(key, i % 3 ? "\\x01" : "k");
    strcat(key, "':1}");
    expect(key, APR_PERR_INVALID_PARAM, "unknown key 'k\\x01\\x01k");
    expect("{op:'status', 'a\\x00b':1}", APR_PERR_INVALID_PARAM, "'a\\x00b'");
    expect("{op:'tokenize', text:'x', temperature:0.5}", APR_PERR_INVALID_PARAM, "temperature");
    expect("{op:'status', prompt:'x'}", APR_PERR_INVALID_PARAM, "prompt");
    expect("{op:'generate', prompt:'x', top_k:1, top_k:2}", APR_PERR_INVALID_PARAM, "duplicate");
    expect("{op:'generate'}", APR_PERR_INVALID_PARAM, "prompt");
    expect("{op:'generate', prompt:'x', prompt_tokens:[1]}", APR_PERR_INVALID_PARAM, "prompt");
    expect("{op:'chat'}", APR_PERR_INVALID_PARAM, "messages");
    expect("{op:'tokenize'}", APR_PERR_INVALID_PARAM, "text");
    expect("{op:'detokenize'}", APR_PERR_INVALID_PARAM, "tokens");
    expect("{op:'cancel'}", APR_PERR_INVALID_PARAM, "id");
    expect("{op:'cancel', id:nil}", APR_PERR_INVALID_PARAM, "id");
    expect("{op:'cancel', id:7}", APR_PERR_NONE, NULL);

    /* the error carries the id when it could be read */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mk(&sb, "{id:'abc', op:'generate', prompt:'x', top_p:0}");
    apr_request r;
    apr_proto_error e;
    ck_assert_int_eq(apr_request_parse(sb.data, sb.size, &r, &e), -1);
    ck_assert_int_eq(e.id.kind, APR_ID_STR);
    ck_assert_str_eq(e.id.str, "abc");
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

START_TEST(request_wrong_types)
{
    /* every key, every msgpack type it must refuse */
    static const struct {
        const char *base; /* request with the key's slot as %s */
        const char *key;
        const char *ok;   /* type letters accepted: s i f b a m */
    } fields[] = {
        {"{op:'generate', %s}", "prompt", "s"},
        {"{op:'generate', %s}", "prompt_tokens", "a"},
        {"{op:'chat', %s}", "messages", ""},
        {"{op:'tokenize', %s}", "text", "s"},
        {"{op:'detokenize', %s}", "tokens", "a"},
        {"{op:'generate', prompt:'p', %s}", "add_special", "b"},
        {"{op:'tokenize', text:'p', %s}", "parse_special", "b"},
        {"{op:'generate', prompt:'p', %s}", "max_tokens", "i"},
        {"{op:'generate', prompt:'p', %s}", "temperature", "if"},
        {"{op:'generate', prompt:'p', %s}", "top_k", "i"},
        {"{op:'generate', prompt:'p', %s}", "top_p", "if"},
        {"{op:'chat', messages:[{role:'user', content:'c'}], %s}", "min_p", "if"},
        {"{op:'generate', prompt:'p', %s}", "repeat_penalty", "if"},
        {"{op:'generate', prompt:'p', %s}", "repeat_last_n", "i"},
        {"{op:'generate', prompt:'p', %s}", "presence_penalty", "if"},
        {"{op:'generate', prompt:'p', %s}", "frequency_penalty", "if"},
        {"{op:'generate', prompt:'p', %s}", "seed", "i"},
        {"{op:'generate', prompt:'p', %s}", "stop", ""},
        {"{op:'chat', messages:[{role:'user', content:'c'}], %s}", "stream", "b"},
        {"{op:'status', %s}", "id", "si"},
    };
    static const struct {
        char type;
        const char *value;
    } values[] = {
        {'s', "'x'"}, {'i', "1"}, {'f', "0.5"}, {'b', "true"}, {'a', "[1]"}, {'m', "{a:1}"},
        {'x', "bin'x'"},
    };
    char key_and_value[128], text[512];
    for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
        for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
            if (strchr(fields[f].ok, values[v].type))
                continue;
            snprintf(key_and_value, sizeof key_and_value, "%s:%s", fields[f].key, values[v].value);
            snprintf(text, sizeof text, fields[f].base, key_and_value);
            expect(text, APR_PERR_INVALID_PARAM, fields[f].key);
        }
    }
    /* element types inside arrays and maps */
    expect("{op:'generate', prompt_tokens:[1, 'x']}", APR_PERR_INVALID_PARAM, "prompt_tokens[1]");
    expect("{op:'generate', prompt_tokens:[1, 2.0]}", APR_PERR_INVALID_PARAM, "prompt_tokens[1]");
    expect("{op:'detokenize', tokens:[[1]]}", APR_PERR_INVALID_PARAM, "tokens[0]");
    expect("{op:'generate', prompt:'p', stop:['a', 1]}", APR_PERR_INVALID_PARAM, "stop[1]");
    expect("{op:'chat', messages:[{role:'user', content:1}]}", APR_PERR_INVALID_PARAM, "messages[0].content");
    expect("{op:'chat', messages:[{role:2, content:'x'}]}", APR_PERR_INVALID_PARAM, "messages[0].role");
    expect("{op:'chat', messages:['hi']}", APR_PERR_INVALID_PARAM, "messages[0]");
    expect("{op:'chat', messages:[{role:'user'}]}", APR_PERR_INVALID_PARAM, "messages[0]");
    expect("{op:'chat', messages:[{role:'user', content:'a', name:'b'}]}", APR_PERR_INVALID_PARAM, "name");
    expect("{op:'chat', messages:[{role:'user', content:'a', role:'user'}]}", APR_PERR_INVALID_PARAM, "duplicate");
    expect("{op:'chat', messages:[{role:'wizard', content:'a'}]}", APR_PERR_INVALID_PARAM, "role");
}
END_TEST

START_TEST(request_ranges)
{
#define G(x) "{op:'generate', prompt:'p', " x "}"
    expect(G("temperature:0"), APR_PERR_NONE, NULL);
    expect(G("temperature:100"), APR_PERR_NONE, NULL);
    expect(G("temperature:-0.1"), APR_PERR_INVALID_PARAM, "temperature");
    expect(G("temperature:100.5"), APR_PERR_INVALID_PARAM, "temperature");
    expect(G("temperature:nan"), APR_PERR_INVALID_PARAM, "temperature");
    expect(G("top_p:1"), APR_PERR_NONE, NULL);
    expect(G("top_p:0"), APR_PERR_INVALID_PARAM, "top_p");
    expect(G("top_p:1.01"), APR_PERR_INVALID_PARAM, "top_p");
    expect(G("top_p:nan"), APR_PERR_INVALID_PARAM, "top_p");
    expect(G("top_k:0"), APR_PERR_NONE, NULL);
    expect(G("top_k:-1"), APR_PERR_INVALID_PARAM, "top_k");
    expect(G("top_k:2147483648"), APR_PERR_INVALID_PARAM, "top_k");
    expect(G("min_p:0"), APR_PERR_NONE, NULL);
    expect(G("min_p:-0.01"), APR_PERR_INVALID_PARAM, "min_p");
    expect(G("min_p:1.5"), APR_PERR_INVALID_PARAM, "min_p");
    expect(G("max_tokens:1"), APR_PERR_NONE, NULL);
    expect(G("max_tokens:131072"), APR_PERR_NONE, NULL);
    expect(G("max_tokens:0"), APR_PERR_INVALID_PARAM, "max_tokens");
    expect(G("max_tokens:-5"), APR_PERR_INVALID_PARAM, "max_tokens");
    expect(G("max_tokens:131073"), APR_PERR_INVALID_PARAM, "max_tokens");
    expect(G("max_tokens:18446744073709551615"), APR_PERR_INVALID_PARAM, "max_tokens");
    expect(G("repeat_penalty:0"), APR_PERR_INVALID_PARAM, "repeat_penalty");
    expect(G("repeat_penalty:-1.1"), APR_PERR_INVALID_PARAM, "repeat_penalty");
    expect(G("repeat_penalty:0.9"), APR_PERR_NONE, NULL);
    expect(G("repeat_last_n:-1"), APR_PERR_NONE, NULL);
    expect(G("repeat_last_n:-2"), APR_PERR_INVALID_PARAM, "repeat_last_n");
    expect(G("presence_penalty:-2"), APR_PERR_NONE, NULL);
    expect(G("presence_penalty:2.5"), APR_PERR_INVALID_PARAM, "presence_penalty");
    expect(G("frequency_penalty:-2.01"), APR_PERR_INVALID_PARAM, "frequency_penalty");
    expect(G("seed:18446744073709551615"), APR_PERR_NONE, NULL);
    expect(G("seed:-2"), APR_PERR_INVALID_PARAM, "seed");
    expect(G("stop:[]"), APR_PERR_NONE, NULL);
    expect(G("stop:['']"), APR_PERR_INVALID_PARAM, "stop[0]");
    expect(G("stop:['a','b','c','d','e','f','g','h','i','j','k','l','m','n','o','p']"), APR_PERR_NONE, NULL);
    expect(G("stop:['a','b','c','d','e','f','g','h','i','j','k','l','m','n','o','p','q']"),
           APR_PERR_INVALID_PARAM, "stop");
    char longstop[400];
    snprintf(longstop, sizeof longstop, G("stop:['%0257d']"), 0);
    expect(longstop, APR_PERR_INVALID_PARAM, "stop[0]");
    expect(G("stop:['a\\x00b']"), APR_PERR_INVALID_PARAM, "stop[0]");
#undef G
    /* token ids */
    expect("{op:'generate', prompt_tokens:[0, 2147483647]}", APR_PERR_NONE, NULL);
    expect("{op:'generate', prompt_tokens:[2147483648]}", APR_PERR_INVALID_PARAM, "prompt_tokens[0]");
    expect("{op:'generate', prompt_tokens:[5, -1]}", APR_PERR_INVALID_PARAM, "prompt_tokens[1]");
    expect("{op:'generate', prompt_tokens:[]}", APR_PERR_INVALID_PARAM, "prompt_tokens");
    expect("{op:'detokenize', tokens:[18446744073709551615]}", APR_PERR_INVALID_PARAM, "tokens[0]");
    expect("{op:'chat', messages:[]}", APR_PERR_INVALID_PARAM, "messages");
    /* ids */
    char longid[400];
    snprintf(longid, sizeof longid, "{op:'status', id:'%0129d'}", 0);
    expect(longid, APR_PERR_INVALID_PARAM, "id");
    snprintf(longid, sizeof longid, "{op:'status', id:'%0128d'}", 0);
    expect(longid, APR_PERR_NONE, NULL);
    expect("{op:'status', id:9223372036854775808}", APR_PERR_INVALID_PARAM, "id");
    expect("{op:'status', id:'a\\x00'}", APR_PERR_INVALID_PARAM, "id");
}
END_TEST

START_TEST(request_utf8)
{
    static const char *const bad[] = {
        "\\xff", "\\xc0\\x80" /* overlong NUL */, "\\xe0\\x80\\x80", "\\xed\\xa0\\x80" /* surrogate */,
        "\\xf4\\x90\\x80\\x80" /* > U+10FFFF */, "\\xe2\\x82", "a\\x80", "\\xf0\\x9f\\x98",
    };
    static const char *const where[][2] = {
        {"{op:'generate', prompt:'%s'}", "prompt"},
        {"{op:'tokenize', text:'%s'}", "text"},
        {"{op:'generate', prompt:'p', stop:['%s']}", "stop[0]"},
        {"{op:'chat', messages:[{role:'user', content:'%s'}]}", "messages[0].content"},
        {"{op:'status', id:'%s'}", "id"},
    };
    char text[256];
    for (size_t w = 0; w < sizeof where / sizeof where[0]; w++) {
        for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
            snprintf(text, sizeof text, where[w][0], bad[b]);
            expect(text, APR_PERR_INVALID_PARAM, where[w][1]);
        }
        snprintf(text, sizeof text, where[w][0], "ok \\xc3\\xa9\\xe2\\x80\\x94\\xf0\\x9f\\x98\\x80");
        expect(text, APR_PERR_NONE, NULL);
    }
    ck_assert(apr_utf8_valid("", 0));
    ck_assert(apr_utf8_valid("\xf4\x8f\xbf\xbf", 4));  /* U+10FFFF */
    ck_assert(!apr_utf8_valid("\xf8\x88\x80\x80\x80", 5));
}
END_TEST

START_TEST(request_sizes)
{
    apr_proto_limits lim;
    apr_proto_limits_default(&lim);
    lim.max_prompt_bytes = 8;
    lim.max_input_tokens = 3;
    lim.max_messages = 2;
    lim.max_stop = 1;
    lim.max_stop_bytes = 2;
    lim.max_new_tokens = 10;
    expect_ex("{op:'generate', prompt:'12345678'}", APR_PERR_NONE, NULL, &lim);
    expect_ex("{op:'generate', prompt:'123456789'}", APR_PERR_TOO_LARGE, "prompt", &lim);
    expect_ex("{op:'tokenize', text:'123456789'}", APR_PERR_TOO_LARGE, "text", &lim);
    expect_ex("{op:'generate', prompt_tokens:[1,2,3,4]}", APR_PERR_TOO_LARGE, "prompt_tokens", &lim);
    expect_ex("{op:'detokenize', tokens:[1,2,3,4]}", APR_PERR_TOO_LARGE, "tokens", &lim);
    expect_ex("{op:'chat', messages:[{role:'user', content:'1234'}, {role:'user', content:'5678'}]}",
              APR_PERR_NONE, NULL, &lim);
    /* chat contents count together */
    expect_ex("{op:'chat', messages:[{role:'user', content:'1234'}, {role:'user', content:'56789'}]}",
              APR_PERR_TOO_LARGE, "messages[1].content", &lim);
    expect_ex("{op:'chat', messages:[{role:'user', content:'1'}, {role:'user', content:'2'}, "
              "{role:'user', content:'3'}]}", APR_PERR_TOO_LARGE, "messages", &lim);
    expect_ex("{op:'generate', prompt:'p', stop:['ab']}", APR_PERR_NONE, NULL, &lim);
    expect_ex("{op:'generate', prompt:'p', stop:['abc']}", APR_PERR_INVALID_PARAM, "stop[0]", &lim);
    expect_ex("{op:'generate', prompt:'p', stop:['a', 'b']}", APR_PERR_INVALID_PARAM, "stop", &lim);
    expect_ex("{op:'generate', prompt:'p', max_tokens:11}", APR_PERR_INVALID_PARAM, "max_tokens", &lim);

    /* a 3 MB prompt with the default limits */
    apr_request r;
    apr_proto_error e;
    size_t n = 3u << 20;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    char *big = malloc(n);
    memset(big, 'a', n);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str(&pk, 2);
    msgpack_pack_str_body(&pk, "op", 2);
    msgpack_pack_str(&pk, 8);
    msgpack_pack_str_body(&pk, "generate", 8);
    msgpack_pack_str(&pk, 6);
    msgpack_pack_str_body(&pk, "prompt", 6);
    msgpack_pack_str(&pk, n);
    msgpack_pack_str_body(&pk, big, n);
    ck_assert_int_eq(apr_request_parse(sb.data, sb.size, &r, &e), -1);
    ck_assert_int_eq(e.code, APR_PERR_TOO_LARGE);
    ck_assert(strstr(e.message, "prompt"));
    free(big);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* Every prefix of valid frames is an error (and never a crash or a leak). */
START_TEST(request_truncations)
{
    static const char *const frames[] = {
        "{op:'generate', id:'q', prompt:'Hello \\xe2\\x80\\x94', max_tokens:5, temperature:0.7, "
        "seed:99, stop:['\\n', 'END'], stream:false}",
        "{op:'generate', prompt_tokens:[1, 200, 70000, 2147483647], top_p:0.9}",
        "{op:'chat', id:12, messages:[{role:'system', content:'s'}, {role:'user', content:'u'}]}",
        "{op:'tokenize', text:'abc', add_special:true}",
        "{op:'detokenize', tokens:[1, 2, 3]}",
        "{op:'cancel', id:'q'}",
        "{op:'status'}",
    };
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (size_t f = 0; f < sizeof frames / sizeof frames[0]; f++) {
        mk(&sb, frames[f]);
        apr_request r;
        apr_proto_error e;
        ck_assert_msg(apr_request_parse(sb.data, sb.size, &r, &e) == 0, "%s: %s", frames[f], e.message);
        apr_request_free(&r);
        for (size_t cut = 0; cut < sb.size; cut++) {
            ck_assert_int_eq(apr_request_parse(sb.data, cut, &r, &e), -1);
            ck_assert_int_eq(e.code, APR_PERR_BAD_REQUEST);
            apr_request_free(&r);
        }
    }
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

static bool known_request_code(apr_perr c)
{
    return c == APR_PERR_BAD_REQUEST || c == APR_PERR_UNKNOWN_OP || c == APR_PERR_TOO_LARGE ||
           c == APR_PERR_INVALID_PARAM || c == APR_PERR_UNSUPPORTED_VERSION;
}

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

START_TEST(request_random_bytes)
{
    uint64_t seed = 0x5eed;
    unsigned char buf[512];
    apr_request r;
    apr_proto_error e;
    /* pure noise, and noise that starts like a map */
    for (int i = 0; i < 20000; i++) {
        size_t n = rnd(&seed) % sizeof buf;
        for (size_t j = 0; j < n; j++)
            buf[j] = (unsigned char)rnd(&seed);
        if (i & 1 && n > 0)
            buf[0] = 0x80 | (buf[0] & 0x0f);
        if (apr_request_parse(buf, n, &r, &e) == 0) {
            ck_assert(r.op > APR_OP_NONE && r.op < APR_OP_COUNT_);
        } else {
            ck_assert_msg(known_request_code(e.code), "code %d", e.code);
            ck_assert(e.message[0]);
        }
        apr_request_free(&r);
    }
    /* bit flips and byte changes in valid frames */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mk(&sb, "{op:'generate', id:'q', prompt:'Hi', max_tokens:5, temperature:0.7, top_k:3, "
            "stop:['x'], seed:nil, stream:true}");
    unsigned ok = 0;
    for (int i = 0; i < 20000; i++) {
        memcpy(buf, sb.data, sb.size);
        int flips = 1 + (int)(rnd(&seed) % 3);
        for (int f = 0; f < flips; f++) {
            size_t at = rnd(&seed) % sb.size;
            if (rnd(&seed) & 1)
                buf[at] ^= (unsigned char)(1u << (rnd(&seed) % 8));
            else
                buf[at] = (unsigned char)rnd(&seed);
        }
        if (apr_request_parse(buf, sb.size, &r, &e) == 0)
            ok++;
        else
            ck_assert_msg(known_request_code(e.code), "code %d", e.code);
        apr_request_free(&r);
    }
    ck_assert(ok < 20000); /* the mutations did reach the checks */
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* ------------------------------------------------------------------ replies */

static void decode(msgpack_sbuffer *sb, apr_reply *out)
{
    char err[APR_ERRLEN];
    ck_assert_msg(apr_reply_parse(sb->data, sb->size, out, err) == 0, "%s", err);
    /* every truncation fails cleanly */
    for (size_t cut = 0; cut < sb->size; cut++) {
        apr_reply t;
        ck_assert_int_eq(apr_reply_parse(sb->data, cut, &t, err), -1);
        apr_reply_free(&t);
    }
}

START_TEST(reply_round_trips)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    apr_reply r;
    apr_id id, none = {0};
    apr_id_set_str(&id, "req-9");

    ck_assert_int_eq(apr_reply_token(&sb, &id, "caf\xc3\xa9", 5, 151643, 17), 0);
    decode(&sb, &r);
    ck_assert_int_eq(r.event, APR_EV_TOKEN);
    ck_assert(apr_id_equal(&r.id, &id));
    ck_assert_str_eq(r.text, "caf\xc3\xa9");
    ck_assert_int_eq(r.token, 151643);
    ck_assert_uint_eq(r.index, 17);
    apr_reply_free(&r);

    msgpack_sbuffer_clear(&sb);
    apr_usage u = {12, 34};
    apr_timings t = {5.5, 1234.25, 99.125};
    ck_assert_int_eq(apr_reply_done(&sb, &id, APR_FINISH_LENGTH, &u, &t, NULL, 0), 0);
    decode(&sb, &r);
    ck_assert_int_eq(r.event, APR_EV_DONE);
    ck_assert_int_eq(r.finish, APR_FINISH_LENGTH);
    ck_assert_uint_eq(r.usage.prompt_tokens, 12);
    ck_assert_uint_eq(r.usage.completion_tokens, 34);
    ck_assert(r.timings.ttft_ms == 5.5 && r.timings.prefill_tok_s == 1234.25 &&
              r.timings.decode_tok_s == 99.125);
    ck_assert_ptr_null(r.text);
    apr_reply_free(&r);

    for (apr_finish f = APR_FINISH_STOP; f < APR_FINISH_COUNT_; f++) {
        msgpack_sbuffer_clear(&sb);
        ck_assert_int_eq(apr_reply_done(&sb, &none, f, &u, &t, "all of it", 9), 0);
        decode(&sb, &r);
        ck_assert_int_eq(r.finish, f);
        ck_assert_int_eq(r.id.kind, APR_ID_NONE);
        ck_assert_str_eq(r.text, "all of it");
        apr_reply_free(&r);
    }

    for (apr_perr c = APR_PERR_BAD_REQUEST; c < APR_PERR_COUNT_; c++) {
        msgpack_sbuffer_clear(&sb);
        apr_id nid;
        apr_id_set_int(&nid, -5);
        ck_assert_int_eq(apr_reply_error(&sb, &nid, c, "top_p: must be in (0, 1]"), 0);
        decode(&sb, &r);
        ck_assert_int_eq(r.event, APR_EV_ERROR);
        ck_assert_int_eq(r.code, c);
        ck_assert_str_eq(r.code_str, apr_proto_code_str(c));
        ck_assert_str_eq(r.message, "top_p: must be in (0, 1]");
        ck_assert_int_eq(r.id.num, -5);
        apr_reply_free(&r);
    }

    msgpack_sbuffer_clear(&sb);
    int32_t toks[5] = {0, 1, 2, 151645, INT32_MAX};
    ck_assert_int_eq(apr_reply_tokens(&sb, &id, toks, 5), 0);
    decode(&sb, &r);
    ck_assert_int_eq(r.event, APR_EV_TOKENS);
    ck_assert_uint_eq(r.n_tokens, 5);
    ck_assert(!memcmp(r.tokens, toks, sizeof toks));
    apr_reply_free(&r);

    msgpack_sbuffer_clear(&sb);
    ck_assert_int_eq(apr_reply_tokens(&sb, &id, NULL, 0), 0);
    decode(&sb, &r);
    ck_assert_uint_eq(r.n_tokens, 0);
    apr_reply_free(&r);

    msgpack_sbuffer_clear(&sb);
    ck_assert_int_eq(apr_reply_text(&sb, &id, "a\0b", 3), 0);
    decode(&sb, &r);
    ck_assert_int_eq(r.event, APR_EV_TEXT);
    ck_assert_uint_eq(r.text_len, 3);
    ck_assert(!memcmp(r.text, "a\0b", 3));
    apr_reply_free(&r);

    msgpack_sbuffer_clear(&sb);
    apr_worker_status w[2] = {{"cpu0", "cpu", "ready", 1234, 0, 3}, {"cuda0", "cuda", "restarting", 99, 7, 0}};
    apr_status st = {.n_ctx = 4096, .n_vocab = 151936, .running = 3, .queued = 1, .queue_limit = 64,
                     .restarts = 7, .uptime_s = 12.5, .workers = w, .n_workers = 2};
    strcpy(st.model, "qwen2.5-1.5b-instruct-q4_k_m.gguf");
    ck_assert_int_eq(apr_reply_status(&sb, &id, &st), 0);
    decode(&sb, &r);
    ck_assert_int_eq(r.event, APR_EV_STATUS);
    ck_assert_str_eq(r.status.model, st.model);
    ck_assert_uint_eq(r.status.n_ctx, 4096);
    ck_assert_uint_eq(r.status.n_vocab, 151936);
    ck_assert_uint_eq(r.status.running, 3);
    ck_assert_uint_eq(r.status.queued, 1);
    ck_assert_uint_eq(r.status.queue_limit, 64);
    ck_assert_uint_eq(r.status.restarts, 7);
    ck_assert(r.status.uptime_s == 12.5);
    ck_assert_uint_eq(r.status.n_workers, 2);
    for (int i = 0; i < 2; i++) {
        ck_assert_str_eq(r.status.workers[i].name, w[i].name);
        ck_assert_str_eq(r.status.workers[i].backend, w[i].backend);
        ck_assert_str_eq(r.status.workers[i].state, w[i].state);
        ck_assert_int_eq(r.status.workers[i].pid, w[i].pid);
        ck_assert_uint_eq(r.status.workers[i].restarts, w[i].restarts);
        ck_assert_uint_eq(r.status.workers[i].sequences, w[i].sequences);
    }
    apr_reply_free(&r);

    msgpack_sbuffer_clear(&sb);
    ck_assert_int_eq(apr_reply_cancel(&sb, &id, true), 0);
    decode(&sb, &r);
    ck_assert_int_eq(r.event, APR_EV_CANCEL);
    ck_assert(r.found);
    apr_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

static void reply_expect_fail(const char *text)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mk(&sb, text);
    apr_reply r;
    char err[APR_ERRLEN] = "";
    ck_assert_msg(apr_reply_parse(sb.data, sb.size, &r, err) == -1, "%s: decoded", text);
    ck_assert(err[0]);
    apr_reply_free(&r);
    msgpack_sbuffer_destroy(&sb);
}

START_TEST(reply_hostile)
{
    reply_expect_fail("[1]");
    reply_expect_fail("{id:1}");
    reply_expect_fail("{event:'tok', id:1}");
    reply_expect_fail("{event:5}");
    reply_expect_fail("{event:'token', id:1, text:'a', token:1}"); /* no index */
    reply_expect_fail("{event:'token', id:1, text:5, token:1, index:0}");
    reply_expect_fail("{event:'token', id:1, text:'\\xff', token:1, index:0}");
    reply_expect_fail("{event:'token', id:1, text:'a', token:-1, index:0}");
    reply_expect_fail("{event:'done', id:1}");
    reply_expect_fail("{event:'done', id:1, finish_reason:'bored'}");
    reply_expect_fail("{event:'done', id:1, finish_reason:'stop', usage:[1]}");
    reply_expect_fail("{event:'done', id:1, finish_reason:'stop', timings:{ttft_ms:'x'}}");
    reply_expect_fail("{event:'done', id:1, finish_reason:'stop', timings:{ttft_ms:nan}}");
    reply_expect_fail("{event:'error', id:1, code:'busy'}");
    reply_expect_fail("{event:'tokens', id:1, tokens:[1, 'x']}");
    reply_expect_fail("{event:'status', id:1, workers:[5]}");
    reply_expect_fail("{event:'cancel', id:1, found:1}");
    reply_expect_fail("{event:'token', id:[1], text:'a', token:1, index:0}");

    /* unknown keys and unknown error codes are tolerated (newer servers) */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    mk(&sb, "{event:'error', id:'x', code:'shiny_new_code', message:'m', extra:[1, {a:2}]}");
    apr_reply r;
    char err[APR_ERRLEN];
    ck_assert_int_eq(apr_reply_parse(sb.data, sb.size, &r, err), 0);
    ck_assert_int_eq(r.code, APR_PERR_INTERNAL);
    ck_assert_str_eq(r.code_str, "shiny_new_code");
    apr_reply_free(&r);

    uint64_t seed = 77;
    unsigned char buf[300];
    for (int i = 0; i < 20000; i++) {
        size_t n = rnd(&seed) % sizeof buf;
        for (size_t j = 0; j < n; j++)
            buf[j] = (unsigned char)rnd(&seed);
        if (n && (i & 1))
            buf[0] = 0x80 | (buf[0] & 0x0f);
        apr_reply_parse(buf, n, &r, err);
        apr_reply_free(&r);
    }
    msgpack_sbuffer_destroy(&sb);
}
END_TEST

/* ---------------------------------------------------------------- ZeroMQ */

/* A ROUTER bound to bind_ep (a wildcard port allowed) and a DEALER connected
 * to where it ended up, neither lingering at close. */
static void router_dealer(void *ctx, const char *bind_ep, void **router, void **dealer)
{
    *router = zmq_socket(ctx, ZMQ_ROUTER);
    *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(*router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(*dealer, ZMQ_LINGER, &linger, sizeof linger);
    ck_assert_int_eq(zmq_bind(*router, bind_ep), 0);
    char endpoint[256];
    size_t elen = sizeof endpoint;
    ck_assert_int_eq(zmq_getsockopt(*router, ZMQ_LAST_ENDPOINT, endpoint, &elen), 0);
    ck_assert_int_eq(zmq_connect(*dealer, endpoint), 0);
}

START_TEST(zmq_router_dealer)
{
    char err[APR_ERRLEN];
    void *ctx = zmq_ctx_new(), *router, *dealer;
    router_dealer(ctx, "tcp://127.0.0.1:*", &router, &dealer);

    /* nothing yet: a timeout, not an error */
    apr_zframe f;
    ck_assert_int_eq(apr_zmq_router_recv(router, 10, &f, err), 0);

    /* a request goes in ... */
    apr_request req;
    apr_request_init(&req, APR_OP_GENERATE);
    apr_id_set_str(&req.id, "z1");
    char prompt[] = "Hello";
    req.prompt = prompt;
    req.prompt_len = 5;
    req.max_tokens = 2;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    ck_assert_int_eq(apr_request_encode(&sb, &req), 0);
    ck_assert_int_eq(apr_zmq_send(dealer, sb.data, sb.size, err), 0);

    ck_assert_int_eq(apr_zmq_router_recv(router, 5000, &f, err), 1);
    ck_assert(!f.multipart);
    apr_request got;
    apr_proto_error e;
    ck_assert_int_eq(apr_request_parse(zmq_msg_data(&f.body), zmq_msg_size(&f.body), &got, &e), 0);
    apr_zframe_close(&f);
    ck_assert_str_eq(got.prompt, "Hello");
    ck_assert_uint_eq(got.max_tokens, 2);

    /* ... and the events come back to the sender */
    const char *pieces[2] = {" world", "!"};
    for (uint32_t i = 0; i < 2; i++) {
        msgpack_sbuffer_clear(&sb);
        apr_reply_token(&sb, &got.id, pieces[i], strlen(pieces[i]), 100 + (int32_t)i, i);
        ck_assert_int_eq(apr_zmq_router_send(router, f.ident, f.ident_len, sb.data, sb.size, err), 0);
    }
    msgpack_sbuffer_clear(&sb);
    apr_usage u = {1, 2};
    apr_timings t = {1, 2, 3};
    apr_reply_done(&sb, &got.id, APR_FINISH_LENGTH, &u, &t, NULL, 0);
    ck_assert_int_eq(apr_zmq_router_send(router, f.ident, f.ident_len, sb.data, sb.size, err), 0);
    apr_request_free(&got);

    char text[64] = "";
    for (int i = 0; i < 3; i++) {
        void *data;
        size_t len;
        bool multi;
        ck_assert_int_eq(apr_zmq_recv(dealer, 5000, &data, &len, &multi, err), 1);
        apr_reply r;
        ck_assert_msg(apr_reply_parse(data, len, &r, err) == 0, "%s", err);
        free(data);
        ck_assert_str_eq(r.id.str, "z1");
        if (i < 2) {
            ck_assert_int_eq(r.event, APR_EV_TOKEN);
            ck_assert_uint_eq(r.index, (uint32_t)i);
            strcat(text, r.text);
        } else {
            ck_assert_int_eq(r.event, APR_EV_DONE);
            ck_assert_int_eq(r.finish, APR_FINISH_LENGTH);
            ck_assert_uint_eq(r.usage.completion_tokens, 2);
        }
        apr_reply_free(&r);
    }
    ck_assert_str_eq(text, " world!");

    /* garbage gets an error reply with a code; a multipart message is flagged */
    ck_assert_int_eq(apr_zmq_send(dealer, "\xc1\x00garbage", 9, err), 0);
    ck_assert_int_eq(apr_zmq_router_recv(router, 5000, &f, err), 1);
    ck_assert_int_eq(apr_request_parse(zmq_msg_data(&f.body), zmq_msg_size(&f.body), &got, &e), -1);
    msgpack_sbuffer_clear(&sb);
    apr_reply_error(&sb, &e.id, e.code, e.message);
    ck_assert_int_eq(apr_zmq_router_send(router, f.ident, f.ident_len, sb.data, sb.size, err), 0);
    apr_zframe_close(&f);
    void *data;
    size_t len;
    bool multi;
    ck_assert_int_eq(apr_zmq_recv(dealer, 5000, &data, &len, &multi, err), 1);
    apr_reply r;
    ck_assert_int_eq(apr_reply_parse(data, len, &r, err), 0);
    ck_assert_int_eq(r.event, APR_EV_ERROR);
    ck_assert_int_eq(r.code, APR_PERR_BAD_REQUEST);
    apr_reply_free(&r);
    free(data);

    zmq_send(dealer, "a", 1, ZMQ_SNDMORE);
    zmq_send(dealer, "b", 1, ZMQ_SNDMORE);
    zmq_send(dealer, "c", 1, 0);
    ck_assert_int_eq(apr_zmq_router_recv(router, 5000, &f, err), 1);
    ck_assert(f.multipart);
    ck_assert_uint_eq(zmq_msg_size(&f.body), 1);
    apr_zframe_close(&f);
    ck_assert_int_eq(apr_zmq_router_recv(router, 10, &f, err), 0); /* nothing left over */

    msgpack_sbuffer_destroy(&sb);
    zmq_close(dealer);
    zmq_close(router);
    zmq_ctx_term(ctx);
}
END_TEST

/* apr_zmq_spin: false after its time with nothing to read (and not much
 * later), true as soon as a message waits, and the message is still there. */
static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

START_TEST(zmq_spin)
{
    char err[APR_ERRLEN];
    void *ctx = zmq_ctx_new(), *router, *dealer;
    router_dealer(ctx, "inproc://spin", &router, &dealer);
    zmq_pollitem_t items[2] = {{router, 0, ZMQ_POLLIN, 0}, {dealer, 0, ZMQ_POLLIN, 0}};
    double t0 = mono_s();
    ck_assert(!apr_zmq_spin(items, 2, 20 * 1000000LL));
    const double waited = mono_s() - t0;
    ck_assert_msg(waited >= 0.02 && waited < 2.0, "spun %.4f s for 0.02", waited);
    ck_assert_int_eq(apr_zmq_send(dealer, "x", 1, err), 0);
    t0 = mono_s();
    ck_assert(apr_zmq_spin(items, 2, 5LL * 1000000000LL));
    ck_assert_msg(mono_s() - t0 < 4.0, "a waiting message took %.3f s to see", mono_s() - t0);
    ck_assert(items[0].revents & ZMQ_POLLIN);
    apr_zframe f;
    ck_assert_int_eq(apr_zmq_router_recv(router, 0, &f, err), 1);
    ck_assert_uint_eq(zmq_msg_size(&f.body), 1);
    apr_zframe_close(&f);
    zmq_close(dealer);
    zmq_close(router);
    zmq_ctx_term(ctx);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, request_defaults);
    tcase_add_test(tc, request_round_trips);
    tcase_add_test(tc, request_structure);
    tcase_add_test(tc, request_ops_keys_version);
    tcase_add_test(tc, request_wrong_types);
    tcase_add_test(tc, request_ranges);
    tcase_add_test(tc, request_utf8);
    tcase_add_test(tc, request_sizes);
    tcase_add_test(tc, request_truncations);
    tcase_add_test(tc, request_random_bytes);
    tcase_add_test(tc, reply_round_trips);
    tcase_add_test(tc, reply_hostile);
    tcase_add_test(tc, zmq_router_dealer);
    tcase_add_test(tc, zmq_spin);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
