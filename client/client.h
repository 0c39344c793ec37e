/* client/ — the apr command-line tool and the small client library that it,
 * later tools (apr bench, apr load) and tests use to talk to apr-coord.
 *
 * Each subcommand is one function taking its own argv (argv[0] is the
 * subcommand name) and returning the exit status. */
#ifndef APR_CLIENT_H
#define APR_CLIENT_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto/proto.h"

int apr_cmd_inspect(int argc, char **argv);
int apr_cmd_tokenize(int argc, char **argv);
int apr_cmd_eval(int argc, char **argv);
int apr_cmd_mkmodel(int argc, char **argv);
int apr_cmd_generate(int argc, char **argv);
int apr_cmd_chat(int argc, char **argv);
int apr_cmd_status(int argc, char **argv);
int apr_cmd_bench(int argc, char **argv);
int apr_cmd_load(int argc, char **argv);

/* ------------------------------------------------------- the connection */
/* One DEALER socket to apr-coord (PROTOCOL.md). Any number of requests may
 * be in flight; replies come back in the server's order and carry the id of
 * their request, so give each request its own id (apr_conn_next_id). Not
 * thread-safe: one thread per connection, as with any ZeroMQ socket. */

#define APR_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"

typedef struct apr_conn apr_conn;

/* 0 when endpoint is tcp://HOST:PORT (HOST a name, IPv4 or [IPv6], PORT
 * 1..65535) or ipc://PATH; -1 and a message naming it otherwise. */
int apr_endpoint_check(const char *endpoint, char err[APR_ERRLEN]);

/* Checks the endpoint and connects. ZeroMQ connects in the background, so
 * success says nothing about the server: only a reply does. Requests sent
 * before the server is up wait for it. NULL and a message on failure. */
apr_conn *apr_conn_open(const char *endpoint, char err[APR_ERRLEN]);
/* The same on a ZeroMQ context the caller owns and terminates after closing
 * every connection on it: each context has its own I/O threads, and a load
 * generator with hundreds of sockets wants only one set of them. */
apr_conn *apr_conn_open_in(void *zmq_ctx, const char *endpoint, char err[APR_ERRLEN]);
/* Gives unsent requests (a last cancel) up to 100 ms to go out, then drops
 * them and anything unread. NULL is fine. */
void apr_conn_close(apr_conn *c);

const char *apr_conn_endpoint(const apr_conn *c);
/* The socket, for zmq_poll together with other sockets or fds. */
void *apr_conn_socket(apr_conn *c);
/* Integer ids 1, 2, 3 ... unique on this connection. */
int64_t apr_conn_next_id(apr_conn *c);

/* Encodes and sends one request. 0, or -1 and a message. */
int apr_conn_send(apr_conn *c, const apr_request *r, char err[APR_ERRLEN]);
/* Sends {op: cancel, id}. 0, or -1 and a message. */
int apr_conn_cancel(apr_conn *c, const apr_id *id, char err[APR_ERRLEN]);
/* Waits up to timeout_ms (negative: forever) for the next reply, whatever
 * its id: 1 and *out filled (apr_reply_free it), 0 on timeout, -1 and a
 * message when the socket fails or the reply does not parse (*out is then
 * empty, and freeing it is still safe). */
int apr_conn_recv(apr_conn *c, int timeout_ms, apr_reply *out, char err[APR_ERRLEN]);

/* ---------------------------------------------------------------- JSON */

/* s[0..n) as a quoted JSON string. Bytes that are not valid UTF-8 become
 * \ufffd, so the output always parses. */
void apr_json_str(FILE *out, const char *s, size_t n);
/* A number with 15 significant digits; null for NaN and infinities, which
 * JSON lacks. */
void apr_json_num(FILE *out, double v);
/* One reply as a JSON object on one line, with the protocol's key names
 * (no newline). */
void apr_json_reply(FILE *out, const apr_reply *r);

/* ------------------------------------------- command-line flag parsing */
/* Strict: the whole string is the number, no leading space, no trailing
 * text, in range (and finite for doubles). 0, or -1 when not. */
int apr_parse_double(const char *s, double *out);
int apr_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out);
int apr_parse_u64(const char *s, uint64_t *out);
/* "1,2,3" or a JSON array "[1, 2, 3]" (what apr tokenize prints) of ids in
 * [0, 2^31-1], 1 to max of them, into a malloc'd array. -1 and a message. */
int apr_parse_ids(const char *s, size_t max, int32_t **ids, size_t *n, char err[APR_ERRLEN]);

/* The flags apr generate, apr chat and later tools share: -n, sampling,
 * --stop. Values are checked against PROTOCOL.md's ranges, so a mistake is
 * a usage error here rather than an error reply. */
#define APR_CLI_MAX_STOP 16

typedef struct {
    uint32_t max_tokens; /* 0: until EOS or the context is full */
    apr_sampling sampling;
    char *stop[APR_CLI_MAX_STOP]; /* point into argv */
    size_t n_stop;
} apr_gen_flags;

#define APR_GEN_FLAGS_HELP                                                                 \
    "  -n N                   at most N new tokens, 1..131072 (default: until EOS or the\n" \
    "                         context is full)\n"                                          \
    "  --temperature T        0..100; 0 is greedy (default 0.8)\n"                        \
    "  --top-k K              keep the K most likely tokens; 0 is off (default 40)\n"      \
    "  --top-p P              nucleus, in (0, 1]; 1 is off (default 0.95)\n"               \
    "  --min-p P              0..1; 0 is off (default 0.05)\n"                             \
    "  --repeat-penalty R     (0, 100]; 1 is off (default 1)\n"                            \
    "  --repeat-last-n N      tokens it looks back, -1..1048576; -1 all, 0 off (default 64)\n" \
    "  --presence-penalty X   -2..2 (default 0)\n"                                         \
    "  --frequency-penalty X  -2..2 (default 0)\n"                                         \
    "  --seed S               0..2^64-1: same seed, same text; -1 random (default)\n"     \
    "  --stop STR             end before STR (never printed); up to 16, each 1..256 bytes\n"

void apr_gen_flags_init(apr_gen_flags *g);
/* If argv[*i] is one of the shared flags, reads its value, moves *i past it
 * and returns 1; returns 0 when argv[*i] is not one of them; -1 and a message
 * naming the flag when the value is missing or wrong. */
int apr_gen_flag(apr_gen_flags *g, int argc, char **argv, int *i, char err[APR_ERRLEN]);
/* Copies the flags into a generate or chat request; r->stop then points
 * into g, so g must outlive r's use. */
void apr_gen_flags_apply(apr_gen_flags *g, apr_request *r);

/* --endpoint's value, else $APR_ENDPOINT, else the default; checked. NULL
 * and a message naming where it came from when it is not an endpoint. */
const char *apr_cli_endpoint(const char *flag_value, char err[APR_ERRLEN]);
/* --timeout SEC: 0..86400, fractions allowed; 0 waits forever (*ms = -1).
 * 0, or -1 when the value is wrong. */
int apr_cli_timeout(const char *s, int *ms);

/* ------------------------------------------- streaming one request */

/* A signalfd for SIGINT and SIGTERM (close-on-exec), and the set in *set.
 * It reports them only while they are blocked (pthread_sigmask), so a
 * command blocks them for as long as Ctrl-C should cancel rather than kill.
 * -1 and a message on failure. */
int apr_cli_sigfd(sigset_t *set, char err[APR_ERRLEN]);

/* Called for each reply to the request being streamed; 0 to go on, -1 (with
 * a message) to stop, which cancels the request. */
typedef int (*apr_reply_fn)(const apr_reply *r, void *arg, char err[APR_ERRLEN]);

/* Hands the replies to request id to fn until its last one: done or error
 * for generate and chat, the one reply of the other ops (a cancel reply is
 * not last: the done event follows it). Replies to other ids are dropped.
 * An error event without an id counts as this request's (the server could
 * not read the id of a request it refused). timeout_ms (negative: forever)
 * bounds the wait for the first reply and between replies; on a timeout a
 * cancel is sent, as the server may only be slow. When sig_fd (or -1)
 * reports a signal, a cancel is sent and the done event is awaited for up to
 * 2 s more (still handed to fn; a second signal stops the wait); *signo then
 * says which signal. Returns 1 when the last reply came, 0 when a signal
 * ended it, -1 and a message on a timeout, a socket or reply failure, or
 * fn's -1. */
int apr_stream(apr_conn *c, const apr_id *id, int timeout_ms, int sig_fd, apr_reply_fn fn,
               void *arg, int *signo, char err[APR_ERRLEN]);

/* ------------------------------------- measuring: apr bench, apr load */

/* Monotonic clock in seconds. */
double apr_now_s(void);

/* splitmix64: small, fast and the same sequence everywhere for a seed, so a
 * load run is repeatable from its --seed. Not for anything secret. */
typedef struct {
    uint64_t state;
} apr_rand;

void apr_rand_seed(apr_rand *r, uint64_t seed);
uint64_t apr_rand_next(apr_rand *r);
/* Uniform in [lo, hi] (lo <= hi). */
uint64_t apr_rand_range(apr_rand *r, uint64_t lo, uint64_t hi);
/* Uniform in [0, 1). */
double apr_rand_unit(apr_rand *r);

/* A whole number or a uniform range, as --prompt-len and --max-tokens take
 * them: "32" or "16-64" (both ends included). */
typedef struct {
    uint32_t lo, hi;
} apr_dist;

/* 0, or -1 when s is not N or LO-HI with min <= LO <= HI <= max. */
int apr_parse_dist(const char *s, uint32_t min, uint32_t max, apr_dist *d);
uint32_t apr_dist_draw(const apr_dist *d, apr_rand *r);

/* n_words words of simple English (TinyStories-like), space-separated, in a
 * malloc'd string; NULL when out of memory. */
char *apr_words(apr_rand *r, size_t n_words);

/* A prompt of exactly n tokens: words from r, tokenized by the server (with
 * the model's BOS, as a text prompt would get) and cut to n. Asks for more
 * words until the text is long enough. 0 and *ids (malloc'd, n of them), or
 * -1 and a message. */
int apr_prompt_tokens(apr_conn *c, apr_rand *r, uint32_t n, int timeout_ms, int32_t **ids,
                      char err[APR_ERRLEN]);

/* A growing set of measurements. */
typedef struct {
    double *v;
    size_t n, cap;
} apr_samples;

/* 0, or -1 when out of memory (the sample is then lost). */
int apr_samples_add(apr_samples *s, double x);
void apr_samples_free(apr_samples *s);
double apr_samples_mean(const apr_samples *s);
/* Sample standard deviation (n - 1); 0 for fewer than two. */
double apr_samples_std(const apr_samples *s);
double apr_samples_max(const apr_samples *s);
/* The p-th percentile (0..100), interpolated between the two nearest ranks
 * as numpy's default does; sorts s->v. NaN when empty. */
double apr_samples_pct(apr_samples *s, double p);

/* A one-line progress bar on stderr, drawn only when stderr is a terminal,
 * at most ten times a second. */
typedef struct {
    bool on;
    bool drawn;
    double last;
} apr_progress;

void apr_progress_init(apr_progress *p);
/* done of total (total 0: unknown), then note. force draws now. */
void apr_progress_show(apr_progress *p, size_t done, size_t total, const char *note, bool force);
/* Clears the line, so what is printed next starts clean. */
void apr_progress_end(apr_progress *p);

#endif
