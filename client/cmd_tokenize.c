/* apr tokenize: the token ids of a text as a JSON array (with --pieces, an
 * array of [id, "piece"] pairs). Errors are one line on stderr and exit 1;
 * bad usage exits 2. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "tokenizer/tokenizer.h"

#define MAX_TEXT ((size_t)1 << 30) /* refuse to slurp more than 1 GiB */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: apr tokenize -m MODEL [--bos] [--no-special] [--pieces] [-f FILE | -f - | TEXT]\n"
            "  -m, --model MODEL  GGUF file whose tokenizer.ggml.* vocabulary is used\n"
            "  --bos              put the model's BOS id first\n"
            "  --no-special       treat special-token text (<|im_start|> ...) as plain text\n"
            "  --pieces           print [id, \"piece\"] pairs instead of bare ids\n"
            "  -f FILE            read the text from FILE (- for standard input)\n"
            "The text must be valid UTF-8. Output: one JSON array on one line.\n");
}

static char *read_input(const char *path, size_t *len, char err[APR_ERRLEN])
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        snprintf(err, APR_ERRLEN, "cannot open %s: %m", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
        if (n == cap) {
            if (cap >= MAX_TEXT) {
                snprintf(err, APR_ERRLEN, "%s: input larger than %zu bytes", path, MAX_TEXT);
                free(buf);
                buf = NULL;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    if (buf && ferror(f)) {
        snprintf(err, APR_ERRLEN, "cannot read %s", path);
        free(buf);
        buf = NULL;
    } else if (!buf && !err[0]) {
        snprintf(err, APR_ERRLEN, "out of memory reading %s", path);
    }
    if (f != stdin) fclose(f);
    *len = n;
    return buf;
}

/* A JSON string; bytes that are not valid UTF-8 (a byte token's half of a
 * character) become U+FFFD so the output always parses. */
static void json_str(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    putchar('"');
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t l = 1;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7F) printf("\\u%04x", c);
        else if (c < 0x80) putchar((int)c);
        else {
            /* Strict UTF-8: shortest form, no surrogates, <= U+10FFFF. */
            int need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
            bool ok = need && c <= 0xF4 && i + (size_t)need <= n;
            for (int k = 1; ok && k < need; k++) ok = (p[i + k] & 0xC0) == 0x80;
            if (ok && need == 3) {
                unsigned c1 = p[i + 1];
                ok = !(c == 0xE0 && c1 < 0xA0) && !(c == 0xED && c1 > 0x9F);
            }
            if (ok && need == 4) {
                unsigned c1 = p[i + 1];
                ok = !(c == 0xF0 && c1 < 0x90) && !(c == 0xF4 && c1 > 0x8F);
            }
            if (ok) {
                fwrite(p + i, 1, (size_t)need, stdout);
                l = (size_t)need;
            } else {
                fputs("\\ufffd", stdout);
            }
        }
        i += l;
    }
    putchar('"');
}

int apr_cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *file = NULL, *text = NULL;
    bool bos = false, special = true, pieces = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(a, "-f") && i + 1 < argc) {
            file = argv[++i];
        } else if (!strcmp(a, "--bos")) {
            bos = true;
        } else if (!strcmp(a, "--no-special")) {
            special = false;
        } else if (!strcmp(a, "--pieces")) {
            pieces = true;
        } else if (a[0] == '-' && a[1] && strcmp(a, "--")) {
            fprintf(stderr, "apr tokenize: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        } else {
            if (!strcmp(a, "--") && i + 1 < argc) a = argv[++i];
            if (text) {
                fprintf(stderr, "apr tokenize: give the text as one argument (quote it)\n");
                return 2;
            }
            text = a;
        }
    }
    if (!model) {
        fprintf(stderr, "apr tokenize: -m MODEL is required\n");
        usage(stderr);
        return 2;
    }
    if (!text == !file) {
        fprintf(stderr, "apr tokenize: give either TEXT or -f FILE\n");
        usage(stderr);
        return 2;
    }

    char err[APR_ERRLEN] = "";
    char *buf = NULL;
    size_t len;
    if (file) {
        buf = read_input(file, &len, err);
        if (!buf) {
            fprintf(stderr, "apr tokenize: %s\n", err);
            return 1;
        }
    } else {
        len = strlen(text);
    }
    int rc = 1;
    apr_tokenizer *t = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    gguf_file *f = gguf_open(model, err);
    if (f) {
        t = apr_tok_load(f, err);
        gguf_close(f);
    }
    if (!t) {
        /* The reader's messages do not name the file. */
        fprintf(stderr, "apr tokenize: %s: %s\n", model, err);
        goto out;
    }
    if (apr_tok_encode(t, buf ? buf : text, len, bos, special, &ids, &n, err) < 0) goto out;

    putchar('[');
    char small[256];
    for (size_t i = 0; i < n; i++) {
        if (i) fputs(", ", stdout);
        if (!pieces) {
            printf("%d", ids[i]);
            continue;
        }
        printf("[%d, ", ids[i]);
        size_t pl = apr_tok_piece(t, ids[i], small, sizeof small);
        char *p = small;
        if (pl > sizeof small) {
            p = malloc(pl);
            if (!p) {
                snprintf(err, APR_ERRLEN, "out of memory");
                goto out;
            }
            apr_tok_piece(t, ids[i], p, pl);
        }
        if (pl == 0) {
            /* Control tokens have no piece: show their text instead. */
            const char *s = apr_tok_text(t, ids[i], &pl);
            json_str(s, pl);
        } else {
            json_str(p, pl);
        }
        if (p != small) free(p);
        putchar(']');
    }
    puts("]");
    rc = fflush(stdout) == 0 ? 0 : 1;
    if (rc) snprintf(err, APR_ERRLEN, "cannot write the output");
out:
    if (rc && t) fprintf(stderr, "apr tokenize: %s\n", err);
    free(ids);
    apr_tok_free(t);
    free(buf);
    return rc;
}
