/* What apr bench and apr load share: a seeded RNG, length distributions,
 * generated prompts, sample statistics and a progress bar. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/client.h"

double apr_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ RNG */

void apr_rand_seed(apr_rand *r, uint64_t seed)
{
    r->state = seed;
}

uint64_t apr_rand_next(apr_rand *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t apr_rand_range(apr_rand *r, uint64_t lo, uint64_t hi)
{
    uint64_t span = hi - lo + 1;
    if (span == 0) /* the whole 64-bit range */
        return apr_rand_next(r);
    /* Rejecting the top partial block keeps every value equally likely. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t x;
    do
        x = apr_rand_next(r);
    while (x >= limit);
    return lo + x % span;
}

double apr_rand_unit(apr_rand *r)
{
    return (apr_rand_next(r) >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------------- distributions */

int apr_parse_dist(const char *s, uint32_t min, uint32_t max, apr_dist *d)
{
    const char *dash = strchr(s, '-');
    int64_t lo, hi;
    if (!dash) {
        if (apr_parse_int(s, min, max, &lo))
            return -1;
        d->lo = d->hi = (uint32_t)lo;
        return 0;
    }
    /* Both halves must be plain numbers: "-5" or "3-" are mistakes. */
    char first[32];
    size_t n = (size_t)(dash - s);
    if (n == 0 || n >= sizeof first)
        return -1;
    memcpy(first, s, n);
    first[n] = '\0';
    if (first[0] == '+' || dash[1] == '+' || dash[1] == '-')
        return -1;
    if (apr_parse_int(first, min, max, &lo) || apr_parse_int(dash + 1, min, max, &hi) || lo > hi)
        return -1;
    d->lo = (uint32_t)lo;
    d->hi = (uint32_t)hi;
    return 0;
}

uint32_t apr_dist_draw(const apr_dist *d, apr_rand *r)
{
    return (uint32_t)apr_rand_range(r, d->lo, d->hi);
}

/* -------------------------------------------------------------- prompts */

/* Words a TinyStories model knows well, so that prompts look like its
 * training text and the continuations are ordinary. */
static const char *const words[] = {
    "once", "upon", "a", "time", "there", "was", "little", "girl", "boy", "named", "Lily",
    "Tom", "Ben", "Mia", "Sue", "she", "he", "they", "loved", "to", "play", "with", "her",
    "his", "big", "red", "ball", "dog", "cat", "bird", "fish", "tree", "park", "house",
    "mom", "dad", "friend", "happy", "sad", "one", "day", "went", "the", "and", "saw", "in",
    "on", "it", "very", "sun", "sky", "blue", "green", "toy", "car", "box", "found",
    "said", "smiled", "ran", "jumped", "wanted", "help", "look", "at", "garden", "flower",
    "water", "cake", "apple", "kind", "nice", "funny", "small", "soft", "bear", "rabbit",
    "duck", "hat", "shoe", "book", "story", "night", "moon", "star", "sleep", "bed",
    "door", "window", "school", "teacher", "share", "sorry", "thank", "you", "yes", "no",
};

char *apr_words(apr_rand *r, size_t n_words)
{
    size_t nw = sizeof words / sizeof words[0];
    size_t cap = 1, len = 0;
    for (size_t i = 0; i < nw; i++)
        if (strlen(words[i]) + 1 > cap)
            cap = strlen(words[i]) + 1;
    /* longest word plus a space, per word, plus the NUL */
    cap = cap * (n_words ? n_words : 1) + 1;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    for (size_t i = 0; i < n_words; i++) {
        const char *w = words[apr_rand_range(r, 0, nw - 1)];
        if (i)
            s[len++] = ' ';
        size_t wl = strlen(w);
        memcpy(s + len, w, wl);
        len += wl;
    }
    s[len] = '\0';
    return s;
}

typedef struct {
    int32_t *ids;
    size_t n;
    char failed[APR_ERRLEN];
} tok_reply;

static int on_tokens(const apr_reply *r, void *arg, char err[APR_ERRLEN])
{
    (void)err;
    tok_reply *t = arg;
    if (r->event == APR_EV_ERROR) {
        snprintf(t->failed, APR_ERRLEN, "tokenize: %s: %.150s", r->code_str,
                 r->message ? r->message : "");
    } else if (r->event != APR_EV_TOKENS) {
        snprintf(t->failed, APR_ERRLEN, "unexpected %s reply to tokenize", apr_event_str(r->event));
    } else {
        free(t->ids);
        t->n = 0;
        t->ids = malloc((r->n_tokens ? r->n_tokens : 1) * sizeof *t->ids);
        if (!t->ids) {
            snprintf(t->failed, APR_ERRLEN, "out of memory");
            return 0;
        }
        memcpy(t->ids, r->tokens, r->n_tokens * sizeof *t->ids);
        t->n = r->n_tokens;
    }
    return 0;
}

int apr_prompt_tokens(apr_conn *c, apr_rand *r, uint32_t n, int timeout_ms, int32_t **ids,
                      char err[APR_ERRLEN])
{
    *ids = NULL;
    /* Every word is at least one token, so n words are enough unless a
     * tokenizer merges across spaces; a few doublings cover that too. */
    size_t n_words = n;
    for (int attempt = 0; attempt < 4; attempt++, n_words *= 2) {
        char *text = apr_words(r, n_words);
        if (!text) {
            snprintf(err, APR_ERRLEN, "out of memory");
            return -1;
        }
        apr_request req;
        apr_request_init(&req, APR_OP_TOKENIZE);
        apr_id_set_int(&req.id, apr_conn_next_id(c));
        req.text = text;
        req.text_len = strlen(text);
        req.add_special = true;
        tok_reply t = {0};
        int signo, rc = apr_conn_send(c, &req, err);
        if (rc == 0)
            rc = apr_stream(c, &req.id, timeout_ms, -1, on_tokens, &t, &signo, err) == 1 ? 0 : -1;
        free(text);
        if (rc == 0 && t.failed[0]) {
            snprintf(err, APR_ERRLEN, "%s", t.failed);
            rc = -1;
        }
        if (rc) {
            free(t.ids);
            return -1;
        }
        if (t.n >= n) {
            *ids = t.ids;
            return 0;
        }
        free(t.ids);
    }
    snprintf(err, APR_ERRLEN, "could not make a prompt of %u tokens from words", n);
    return -1;
}

/* ------------------------------------------------------------ statistics */

int apr_samples_add(apr_samples *s, double x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        double *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

void apr_samples_free(apr_samples *s)
{
    free(s->v);
    memset(s, 0, sizeof *s);
}

double apr_samples_mean(const apr_samples *s)
{
    if (!s->n)
        return NAN;
    double sum = 0;
    for (size_t i = 0; i < s->n; i++)
        sum += s->v[i];
    return sum / (double)s->n;
}

double apr_samples_std(const apr_samples *s)
{
    if (s->n < 2)
        return 0;
    double m = apr_samples_mean(s), ss = 0;
    for (size_t i = 0; i < s->n; i++)
        ss += (s->v[i] - m) * (s->v[i] - m);
    return sqrt(ss / (double)(s->n - 1));
}

double apr_samples_max(const apr_samples *s)
{
    double m = s->n ? s->v[0] : NAN;
    for (size_t i = 1; i < s->n; i++)
        if (s->v[i] > m)
            m = s->v[i];
    return m;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double apr_samples_pct(apr_samples *s, double p)
{
    if (!s->n)
        return NAN;
    qsort(s->v, s->n, sizeof *s->v, cmp_double);
    double rank = p / 100.0 * (double)(s->n - 1);
    size_t lo = (size_t)floor(rank);
    if (lo + 1 >= s->n)
        return s->v[s->n - 1];
    return s->v[lo] + (rank - (double)lo) * (s->v[lo + 1] - s->v[lo]);
}

/* ------------------------------------------------------------- progress */

void apr_progress_init(apr_progress *p)
{
    p->on = isatty(2);
    p->drawn = false;
    p->last = 0;
}

void apr_progress_show(apr_progress *p, size_t done, size_t total, const char *note, bool force)
{
    if (!p->on)
        return;
    double now = apr_now_s();
    if (!force && now - p->last < 0.1)
        return;
    p->last = now;
    enum { WIDTH = 30 };
    char bar[WIDTH + 1];
    size_t fill = total ? (done >= total ? WIDTH : done * WIDTH / total) : 0;
    for (size_t i = 0; i < WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = '\0';
    if (total)
        fprintf(stderr, "\r\033[K[%s] %zu/%zu %s", bar, done, total, note ? note : "");
    else
        fprintf(stderr, "\r\033[K%zu %s", done, note ? note : "");
    fflush(stderr);
    p->drawn = true;
}

void apr_progress_end(apr_progress *p)
{
    if (p->on && p->drawn)
        fputs("\r\033[K", stderr);
    p->drawn = false;
}
