/* libFuzzer target: the request parser, the reply decoder and the
 * coordinator <-> worker parser on arbitrary bytes. A request or worker
 * message that parses must survive encode -> parse unchanged in its kind and
 * sizes (so the parser and the encoder agree on the format). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    apr_request r;
    apr_proto_error e;
    if (apr_request_parse(data, size, &r, &e) == 0) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        if (apr_request_encode(&sb, &r) != 0)
            abort();
        apr_request back;
        if (apr_request_parse(sb.data, sb.size, &back, &e) != 0)
            abort();
        if (back.op != r.op || !apr_id_equal(&back.id, &r.id) || back.prompt_len != r.prompt_len ||
            back.n_prompt_tokens != r.n_prompt_tokens || back.n_messages != r.n_messages ||
            back.n_tokens != r.n_tokens || back.n_stop != r.n_stop || back.text_len != r.text_len ||
            back.max_tokens != r.max_tokens || back.sampling.seed != r.sampling.seed)
            abort();
        apr_request_free(&back);
        msgpack_sbuffer_destroy(&sb);
    } else if (e.code == APR_PERR_NONE || e.message[0] == 0) {
        abort(); /* every failure names a code and says why */
    }
    apr_request_free(&r);

    apr_reply rep;
    char err[APR_ERRLEN];
    if (apr_reply_parse(data, size, &rep, err) == 0 && rep.event == APR_EV_NONE)
        abort();
    apr_reply_free(&rep);

    apr_wmsg w;
    if (apr_wmsg_parse(data, size, &w, err) == 0) {
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        if (apr_wmsg_encode(&sb, &w) != 0)
            abort();
        apr_wmsg back;
        if (apr_wmsg_parse(sb.data, sb.size, &back, err) != 0)
            abort();
        if (back.type != w.type || back.n != w.n || back.step != w.step || back.ok != w.ok ||
            (w.n && memcmp(back.pos, w.pos, (size_t)w.n * sizeof *w.pos) != 0))
            abort();
        apr_wmsg_free(&back);
        msgpack_sbuffer_destroy(&sb);
    } else if (err[0] == 0) {
        abort();
    }
    apr_wmsg_free(&w);
    return 0;
}
