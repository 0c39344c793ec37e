/* apr eval: run a backend in-process, greedy, and print each position's argmax
 * and top-5 logits (the parity harness's view of an engine). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/client.h"
#include "tokenizer/tokenizer.h"
#include "worker/backend.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr eval -m MODEL (-p PROMPT | --tokens IDS) -n N [options]\n"
            "  -m MODEL            GGUF model\n"
            "  -p PROMPT           prompt text (special tokens like <|im_start|> are parsed)\n"
            "  --tokens 1,2,3      prompt token ids instead of text\n"
            "  -n N                positions to generate (default 16)\n"
            "  --bos               prepend the BOS token to a text prompt\n"
            "  --force 5,6,7       feed these ids instead of the argmax (teacher forcing)\n"
            "  --ignore-eos        keep going after an end-of-generation token\n"
            "  --threads T         CPU threads (default: all cores)\n"
            "  --ctx N             context length (default: prompt + N)\n"
            "  --backend cpu|cuda  engine (default cpu)\n"
            "  --json              one JSON line per position: {\"step\",\"token\",\"top\"}\n"
            "  --logits-out FILE   write every position's full logits (float32, n_vocab each)\n"
            "  --whole-rows        read every position's whole logits row from the engine (the\n"
            "                      default, unless --logits-out, is its best few, as serving reads)\n"
            "  --cands K           how many best (1-5, default 5) the engine picks a position;\n"
            "                      --json prints them. Greedy decoding needs 1, what apr-coord\n"
            "                      asks of a greedy stream\n"
            "A last line on stderr reports prefill and decode tok/s.\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Parses "1,2,3" into a malloc'd array; -1 on a bad list. */
static int parse_ids(const char *s, int32_t **out, size_t *n)
{
    size_t cap = 16, k = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return -1;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            free(ids);
            return -1;
        }
        if (k == cap) {
            int32_t *grown = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!grown) {
                free(ids);
                return -1;
            }
            ids = grown;
        }
        ids[k++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    *out = ids;
    *n = k;
    return 0;
}

/* The five largest logits, largest first (ties: lower id first). */
static void top5(const float *logits, int n, int32_t ids[5])
{
    for (int k = 0; k < 5; k++) ids[k] = -1;
    for (int i = 0; i < n; i++) {
        int k = 5;
        while (k > 0 && (ids[k - 1] < 0 || logits[i] > logits[ids[k - 1]])) k--;
        if (k == 5) continue;
        memmove(&ids[k + 1], &ids[k], (size_t)(4 - k) * sizeof ids[0]);
        ids[k] = i;
    }
}

/* The five best entries of a step's row, largest first (ids -1 past the
 * end): from the whole logits row, or from the candidate row (worker/backend.h)
 * the engine wrote in its place. -1 when a candidate row is malformed or
 * empty (no finite logit). */
static int best5(const float *row, int n_vocab, int cands, int32_t ids[5], float vals[5])
{
    if (!cands) {
        top5(row, n_vocab, ids);
        for (int k = 0; k < 5; k++) vals[k] = ids[k] >= 0 ? row[ids[k]] : 0.f;
        return 0;
    }
    int32_t cnt;
    memcpy(&cnt, row, sizeof cnt);
    if (cnt < 1 || cnt > cands) return -1;
    for (int k = 0; k < 5; k++) {
        ids[k] = -1;
        vals[k] = 0.f;
    }
    for (int k = 0; k < cnt; k++) {
        memcpy(&ids[k], (const char *)row + 4 + 8 * (size_t)k, 4);
        memcpy(&vals[k], (const char *)row + 8 + 8 * (size_t)k, 4);
        if (ids[k] < 0 || ids[k] >= n_vocab) return -1;
    }
    return 0;
}

int apr_cmd_eval(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL, *tokens_arg = NULL, *force_arg = NULL;
    const char *backend = "cpu", *logits_path = NULL;
    long n_gen = 16, n_threads = 0, n_ctx = 0, n_cands = 5;
    bool bos = false, json = false, ignore_eos = false, whole = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-m") && has) model = argv[++i];
        else if (!strcmp(a, "-p") && has) prompt = argv[++i];
        else if (!strcmp(a, "--tokens") && has) tokens_arg = argv[++i];
        else if (!strcmp(a, "--force") && has) force_arg = argv[++i];
        else if (!strcmp(a, "--backend") && has) backend = argv[++i];
        else if (!strcmp(a, "--logits-out") && has) logits_path = argv[++i];
        else if (!strcmp(a, "--cands") && has) {
            char *end;
            errno = 0;
            n_cands = strtol(argv[++i], &end, 10);
            if (*end || errno || n_cands < 1 || n_cands > 5) {
                fprintf(stderr, "apr eval: --cands wants a number in 1..5, got '%s'\n", argv[i]);
                return 2;
            }
        } else if ((!strcmp(a, "-n") || !strcmp(a, "--threads") || !strcmp(a, "--ctx")) && has) {
            char *end;
            errno = 0;
            long v = strtol(argv[++i], &end, 10);
            if (*end || errno || v < 0 || v > 1 << 20) {
                fprintf(stderr, "apr eval: %s wants a number in 0..%d, got '%s'\n", a, 1 << 20, argv[i]);
                return 2;
            }
            *(a[1] == 'n' ? &n_gen : a[2] == 't' ? &n_threads : &n_ctx) = v;
        } else if (!strcmp(a, "--bos")) bos = true;
        else if (!strcmp(a, "--json")) json = true;
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = true;
        else if (!strcmp(a, "--whole-rows")) whole = true;
        else {
            fprintf(stderr, "apr eval: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model || (!prompt == !tokens_arg)) {
        fprintf(stderr, "apr eval: -m MODEL and one of -p PROMPT or --tokens IDS are required\n");
        usage(stderr);
        return 2;
    }

    int rc = 1;
    char err[APR_ERRLEN];
    int32_t *prompt_ids = NULL, *forced = NULL;
    size_t n_prompt = 0, n_forced = 0;
    apr_tokenizer *tok = NULL;
    apr_backend *be = NULL;
    float *logits = NULL;
    FILE *logits_out = NULL;
    int32_t *batch_tok = NULL, *batch_pos = NULL, *batch_seq = NULL;
    uint8_t *batch_k = NULL;

    gguf_file *f = gguf_open(model, err);
    if (!f) {
        fprintf(stderr, "apr eval: %s: %s\n", model, err);
        return 1;
    }
    tok = apr_tok_load(f, err);
    gguf_close(f);
    if (!tok) {
        fprintf(stderr, "apr eval: %s: %s\n", model, err);
        return 1;
    }
    if (prompt) {
        if (apr_tok_encode(tok, prompt, strlen(prompt), bos, true, &prompt_ids, &n_prompt, err)) {
            fprintf(stderr, "apr eval: prompt: %s\n", err);
            goto out;
        }
    } else if (parse_ids(tokens_arg, &prompt_ids, &n_prompt)) {
        fprintf(stderr, "apr eval: --tokens wants comma-separated ids, got '%s'\n", tokens_arg);
        goto out;
    }
    if (force_arg && parse_ids(force_arg, &forced, &n_forced)) {
        fprintf(stderr, "apr eval: --force wants comma-separated ids, got '%s'\n", force_arg);
        goto out;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "apr eval: the prompt is empty (no tokens)\n");
        goto out;
    }
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt_ids[i] < 0 || prompt_ids[i] >= apr_tok_n_vocab(tok)) {
            fprintf(stderr, "apr eval: prompt token %d is out of range (vocabulary %d)\n", prompt_ids[i],
                    apr_tok_n_vocab(tok));
            goto out;
        }

    apr_backend_opts opts = {.n_threads = (int)n_threads,
                             .n_ctx = n_ctx ? (int)n_ctx : (int)(n_prompt + (size_t)n_gen + 1),
                             .n_seq = 1,
                             .progress = true};
    be = apr_backend_open(backend, model, &opts, err);
    if (!be) {
        fprintf(stderr, "apr eval: %s\n", err);
        goto out;
    }
    const int n_vocab = (int)apr_backend_hparams(be)->n_vocab;
    if ((long)n_prompt + n_gen > apr_backend_n_ctx(be)) {
        fprintf(stderr, "apr eval: prompt (%zu) + %ld positions exceed the context (%d)\n", n_prompt, n_gen,
                apr_backend_n_ctx(be));
        goto out;
    }
    logits = malloc((size_t)n_vocab * sizeof(float));
    batch_tok = malloc(n_prompt * sizeof(int32_t));
    batch_pos = malloc(n_prompt * sizeof(int32_t));
    batch_seq = calloc(n_prompt, sizeof(int32_t));
    batch_k = calloc(n_prompt, 1);
    if (!logits || !batch_tok || !batch_pos || !batch_seq || !batch_k) {
        fprintf(stderr, "apr eval: out of memory\n");
        goto out;
    }

    if (logits_path && !(logits_out = fopen(logits_path, "wb"))) {
        fprintf(stderr, "apr eval: cannot write %s: %s\n", logits_path, strerror(errno));
        goto out;
    }

    /* prefill: the whole prompt in one step */
    for (size_t i = 0; i < n_prompt; i++) {
        batch_tok[i] = prompt_ids[i];
        batch_pos[i] = (int32_t)i;
    }
    /* the few best of each row are all greedy decoding and --json print: the
     * engine picks them (on the GPU for cuda) and sends 4 + 8 k bytes, not a
     * row of n_vocab floats, as it does for apr-coord (0: whole rows) */
    const int cands =
        !whole && !logits_path && APR_CAND_ROW_BYTES(n_cands) <= (size_t)n_vocab * sizeof(float) ? (int)n_cands : 0;
    uint8_t want_k = (uint8_t)cands;
    batch_k[n_prompt - 1] = want_k;
    apr_batch b = {.n = (int)n_prompt, .token = batch_tok, .pos = batch_pos, .seq = batch_seq, .topk = batch_k};
    double t0 = now_s();
    if (apr_backend_step(be, &b, logits, err)) {
        fprintf(stderr, "apr eval: prefill: %s\n", err);
        goto out;
    }
    double t_prefill = now_s() - t0;

    apr_detok dt;
    apr_detok_init(&dt, tok);
    char text[1024];
    double t_decode = 0;
    long n_decoded = 0;
    for (long step = 0; step < n_gen; step++) {
        int32_t top[5];
        float val[5];
        if (best5(logits, n_vocab, cands, top, val) || top[0] < 0) {
            fprintf(stderr, "apr eval: step %ld: the engine found no best token (non-finite logits?)\n", step);
            goto out;
        }
        int32_t next = top[0];
        if (logits_out && fwrite(logits, sizeof(float), (size_t)n_vocab, logits_out) != (size_t)n_vocab) {
            fprintf(stderr, "apr eval: writing %s failed\n", logits_path);
            goto out;
        }
        if (json) {
            printf("{\"step\":%ld,\"token\":%d,\"top\":[", step, next);
            for (int k = 0; k < 5 && top[k] >= 0; k++)
                printf("%s[%d,%.6g]", k ? "," : "", top[k], (double)val[k]);
            printf("]}\n");
        }
        int32_t feed = (size_t)step < n_forced ? forced[step] : next;
        if (feed < 0 || feed >= n_vocab) {
            fprintf(stderr, "apr eval: forced token %d is out of range\n", feed);
            goto out;
        }
        if (!json) {
            size_t k = apr_detok_push(&dt, feed, text, sizeof text);
            fwrite(text, 1, k, stdout);
        }
        fflush(stdout);
        if (!ignore_eos && (size_t)step >= n_forced && apr_tok_is_eog(tok, next)) break;
        if (step + 1 == n_gen) break;
        int32_t pos = (int32_t)(n_prompt + (size_t)step), seq = 0;
        /* ahead: the loop steps again at once unless this is its last step */
        apr_batch one = {.n = 1, .token = &feed, .pos = &pos, .seq = &seq, .topk = &want_k, .ahead = step + 2 < n_gen};
        double t1 = now_s();
        if (apr_backend_step(be, &one, logits, err)) {
            fprintf(stderr, "apr eval: step %ld: %s\n", step, err);
            goto out;
        }
        t_decode += now_s() - t1;
        n_decoded++;
    }
    if (!json) {
        size_t k = apr_detok_flush(&dt, text, sizeof text);
        fwrite(text, 1, k, stdout);
        printf("\n");
    }
    fprintf(stderr, "prefill: %zu tokens, %.1f ms, %.2f tok/s; decode: %ld tokens, %.1f ms, %.2f tok/s\n",
            n_prompt, t_prefill * 1e3, n_prompt / t_prefill, n_decoded, t_decode * 1e3,
            n_decoded ? n_decoded / t_decode : 0.0);
    rc = 0;
out:
    if (logits_out && fclose(logits_out) && rc == 0) {
        fprintf(stderr, "apr eval: writing %s failed\n", logits_path);
        rc = 1;
    }
    free(batch_tok);
    free(batch_pos);
    free(batch_seq);
    free(batch_k);
    free(logits);
    free(prompt_ids);
    free(forced);
    apr_backend_close(be);
    apr_tok_free(tok);
    return rc;
}
