/* apr-coord's options as `key = value` settings. The command-line flags and
 * the --config file both go through coord_opt_set, so a value the flags
 * refuse is refused in the file too, with the same words.
 *
 * The file format is deliberately small (a hand-edited file read by a
 * service that runs as its own user is hostile input): one `key = value` per
 * line, blank lines, and comment lines whose first non-blank character is
 * '#'. A '#' after a value is refused rather than taken as a comment, so
 * `threads = 4  # cores` cannot quietly become part of a path. */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/coord.h"

/* Room for the longest path we take (PATH_MAX) and its key: a longer line is
 * a mistake or an attack, not a setting. */
#define CONF_MAX_LINE 8192

enum kind { K_STR, K_INT, K_BOOL };

static const struct key {
    const char *name;
    enum kind kind;
    size_t off;          /* offsetof the field in coord_opts */
    int lo, hi;          /* K_INT range */
    const char *unset;   /* how --print-config says the default is in force */
} keys[COORD_CONF_KEYS] = {
    {"model", K_STR, offsetof(coord_opts, model_path), 0, 0, "required"},
    {"listen", K_STR, offsetof(coord_opts, listen), 0, 0, NULL},
    {"workers", K_STR, offsetof(coord_opts, workers), 0, 0, NULL},
    {"threads", K_INT, offsetof(coord_opts, n_threads), 1, 1024, "the worker uses all cores"},
    {"ctx", K_INT, offsetof(coord_opts, n_ctx), 2, 1 << 20, "the model's context, at most 4096"},
    {"max_batch", K_INT, offsetof(coord_opts, max_batch), 1, 256, NULL},
    {"queue", K_INT, offsetof(coord_opts, queue_limit), 0, 100000, NULL},
    /* a step holds chunk + max_batch entries and the worker takes 4096 */
    {"chunk", K_INT, offsetof(coord_opts, chunk), 1, 3840, NULL},
    {"heartbeat_timeout", K_INT, offsetof(coord_opts, hb_timeout_ms), 100, 600000, NULL},
    {"run_dir", K_STR, offsetof(coord_opts, run_dir), 0, 0,
     "a fresh private directory under $TMPDIR or /tmp"},
    {"worker_bin", K_STR, offsetof(coord_opts, worker_bin), 0, 0, "apr-worker next to apr-coord"},
    {"verbose", K_BOOL, offsetof(coord_opts, verbose), 0, 0, NULL},
};

static int find_key(const char *name)
{
    for (int i = 0; i < COORD_CONF_KEYS; i++)
        if (!strcmp(keys[i].name, name)) return i;
    return -1;
}

bool coord_opt_known(const char *key) { return find_key(key) >= 0; }

bool coord_opt_is_switch(const char *key)
{
    int k = find_key(key);
    return k >= 0 && keys[k].kind == K_BOOL;
}

static bool has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f) return true;
    return false;
}

/* Every entry one of the backends workers.c knows, at most as many as it
 * supervises: checked here so a bad list is a usage error (exit 2) rather
 * than a failure after the model is open. */
static int check_workers(const char *v, char err[APR_ERRLEN])
{
    int n = 0;
    const char *p = v;
    for (;;) {
        size_t len = strcspn(p, ",");
        if (!((len == 3 && !strncmp(p, "cpu", 3)) || (len == 4 && !strncmp(p, "cuda", 4)))) {
            snprintf(err, APR_ERRLEN, "'%.64s' is not a list of cpu and cuda (e.g. cuda,cpu)", v);
            return -1;
        }
        if (++n > COORD_MAX_WORKERS) {
            snprintf(err, APR_ERRLEN, "'%.64s': at most %d workers", v, COORD_MAX_WORKERS);
            return -1;
        }
        if (!p[len]) return 0;
        p += len + 1;
    }
}

int coord_opt_set(coord_opts *o, const char *key, const char *val, char err[APR_ERRLEN])
{
    int k = find_key(key);
    if (k < 0) {
        snprintf(err, APR_ERRLEN, "unknown option");
        return -1;
    }
    const struct key *d = &keys[k];
    void *field = (char *)o + d->off;
    if (d->kind == K_INT) {
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end || v < d->lo || v > d->hi) {
            snprintf(err, APR_ERRLEN, "'%.64s' is not an integer in [%d, %d]", val, d->lo, d->hi);
            return -1;
        }
        *(int *)field = (int)v;
        return 0;
    }
    if (d->kind == K_BOOL) {
        if (strcmp(val, "true") && strcmp(val, "false")) {
            snprintf(err, APR_ERRLEN, "'%.64s' is not true or false", val);
            return -1;
        }
        *(bool *)field = !strcmp(val, "true");
        return 0;
    }
    if (!*val) {
        snprintf(err, APR_ERRLEN, "empty value");
        return -1;
    }
    if (has_control(val)) {
        snprintf(err, APR_ERRLEN, "the value contains a control character");
        return -1;
    }
    if (strlen(val) >= PATH_MAX) {
        snprintf(err, APR_ERRLEN, "the value is longer than %d bytes", PATH_MAX - 1);
        return -1;
    }
    if (!strcmp(key, "listen") && strncmp(val, "tcp://", 6) && strncmp(val, "ipc://", 6)) {
        snprintf(err, APR_ERRLEN, "'%.64s' is not a tcp:// or ipc:// endpoint", val);
        return -1;
    }
    if (!strcmp(key, "workers") && check_workers(val, err) < 0) return -1;
    *(const char **)field = val;
    return 0;
}

static bool is_blank(int ch) { return ch == ' ' || ch == '\t' || ch == '\r'; }

static char *trim(char *s)
{
    while (is_blank((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && is_blank((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

/* A value the file format cannot carry: one that would read back
 * differently (surrounding blanks are trimmed, " #" is refused). */
static const char *unwritable(const char *v)
{
    size_t n = strlen(v);
    if (n && (is_blank((unsigned char)v[0]) || is_blank((unsigned char)v[n - 1])))
        return "it starts or ends with a blank";
    for (const char *p = v; (p = strchr(p, '#')); p++)
        if (p > v && is_blank((unsigned char)p[-1]))
            return "a '#' after a blank (comments go on their own line)";
    return NULL;
}

/* Reads one line into buf (CONF_MAX_LINE + 1 bytes), without its newline.
 * Returns its length, -1 at end of file, -2 when it is too long, -3 when it
 * holds a NUL byte; a read error is left in ferror(f). */
static long read_line(FILE *f, char *buf)
{
    size_t n = 0;
    bool nul = false;
    int ch;
    while ((ch = getc(f)) != EOF && ch != '\n') {
        if (n == CONF_MAX_LINE) return -2;
        if (ch == 0) nul = true;
        buf[n++] = (char)ch;
    }
    if (ch == EOF && n == 0) return -1;
    buf[n] = 0;
    return nul ? -3 : (long)n;
}

static int parse_line(coord_conf *cf, coord_opts *o, char *line, int lineno, int *set_on,
                      char err[APR_ERRLEN])
{
    char *s = trim(line);
    if (!*s || *s == '#') return 0;
    if (has_control(s)) {
        snprintf(err, APR_ERRLEN, "a control character in the line");
        return -1;
    }
    char *eq = strchr(s, '=');
    if (!eq) {
        snprintf(err, APR_ERRLEN, "expected 'key = value', got '%.48s'", s);
        return -1;
    }
    *eq = 0;
    char *key = trim(s), *val = trim(eq + 1);
    int k = find_key(key);
    if (k < 0) {
        char alt[64];
        snprintf(alt, sizeof alt, "%s", key);
        for (char *p = alt; *p; p++)
            if (*p == '-') *p = '_';
        if (find_key(alt) >= 0) {
            snprintf(err, APR_ERRLEN, "unknown key '%.48s' (keys use '_': %s)", key, alt);
            return -1;
        }
        char known[160] = "";
        for (int i = 0; i < COORD_CONF_KEYS; i++)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", i ? ", " : "",
                     keys[i].name);
        snprintf(err, APR_ERRLEN, "unknown key '%.48s' (known: %s)", key, known);
        return -1;
    }
    if (set_on[k]) {
        snprintf(err, APR_ERRLEN, "duplicate key '%s' (first set on line %d)", key, set_on[k]);
        return -1;
    }
    const char *why = unwritable(val);
    if (why) {
        snprintf(err, APR_ERRLEN, "%s: %s", key, why);
        return -1;
    }
    set_on[k] = lineno;
    /* coord_opts keeps pointers: the string must outlive this buffer */
    cf->val[k] = strdup(val);
    if (!cf->val[k]) {
        snprintf(err, APR_ERRLEN, "out of memory");
        return -1;
    }
    char why_bad[APR_ERRLEN];
    if (coord_opt_set(o, key, cf->val[k], why_bad) < 0) {
        snprintf(err, APR_ERRLEN, "%s: %.200s", key, why_bad);
        return -1;
    }
    return 0;
}

int coord_conf_load(coord_conf *cf, coord_opts *o, const char *path, char err[COORD_CONF_ERRLEN])
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, COORD_CONF_ERRLEN, "--config %.200s: %s", path, strerror(errno));
        return -1;
    }
    char *buf = malloc(CONF_MAX_LINE + 1);
    if (!buf) {
        fclose(f);
        snprintf(err, COORD_CONF_ERRLEN, "out of memory");
        return -1;
    }
    int set_on[COORD_CONF_KEYS] = {0}; /* line of each key, 0: not yet */
    int rc = 0, lineno = 0;
    for (;;) {
        long n = read_line(f, buf);
        lineno++;
        char why[APR_ERRLEN];
        if (n == -1) {
            if (ferror(f)) {
                snprintf(err, COORD_CONF_ERRLEN, "--config %.200s: %s", path, strerror(errno));
                rc = -1;
            }
            break;
        }
        if (n == -2)
            snprintf(why, sizeof why, "line longer than %d bytes", CONF_MAX_LINE);
        else if (n == -3)
            snprintf(why, sizeof why, "a NUL byte in the line");
        if (n < 0 || parse_line(cf, o, buf, lineno, set_on, why) < 0) {
            snprintf(err, COORD_CONF_ERRLEN, "%.200s:%d: %s", path, lineno, why);
            rc = -1;
            break;
        }
    }
    free(buf);
    fclose(f);
    return rc;
}

void coord_conf_free(coord_conf *cf)
{
    for (int i = 0; i < COORD_CONF_KEYS; i++) {
        free(cf->val[i]);
        cf->val[i] = NULL;
    }
}

int coord_conf_print(FILE *out, const coord_opts *o, char err[APR_ERRLEN])
{
    /* check everything first, so a refusal prints nothing on stdout */
    for (int i = 0; i < COORD_CONF_KEYS; i++) {
        if (keys[i].kind != K_STR) continue;
        const char *v = *(const char *const *)((const char *)o + keys[i].off);
        const char *why = v ? unwritable(v) : NULL;
        if (why) {
            snprintf(err, APR_ERRLEN, "%s cannot be written to a config file: %s", keys[i].name, why);
            return -1;
        }
    }
    fprintf(out, "# apr-coord configuration (apr-coord --print-config): key = value, one per line\n");
    for (int i = 0; i < COORD_CONF_KEYS; i++) {
        const struct key *d = &keys[i];
        const void *field = (const char *)o + d->off;
        if (d->kind == K_INT) {
            int v = *(const int *)field;
            if (v == 0 && d->unset)
                fprintf(out, "# %s: unset, %s\n", d->name, d->unset);
            else
                fprintf(out, "%s = %d\n", d->name, v);
        } else if (d->kind == K_BOOL) {
            fprintf(out, "%s = %s\n", d->name, *(const bool *)field ? "true" : "false");
        } else {
            const char *v = *(const char *const *)field;
            if (v)
                fprintf(out, "%s = %s\n", d->name, v);
            else
                fprintf(out, "# %s: unset, %s\n", d->name, d->unset ? d->unset : "the default");
        }
    }
    if (fflush(out) != 0 || ferror(out)) {
        snprintf(err, APR_ERRLEN, "cannot write the configuration: %s", strerror(errno));
        return -1;
    }
    return 0;
}
