/* What the files of the apr-worker process share (internal to worker/):
 * logging, ticking threads (heartbeats to the coordinator, an engine's
 * liveness for its holder), and the block a CUDA holder shares with its
 * engine. worker/serve.c runs a CPU worker or an engine; worker/holder.c
 * runs a CUDA worker's holder. */
#ifndef APR_WORKER_PROC_H
#define APR_WORKER_PROC_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "proto/proto.h"
#include "worker/backend.h"

#define CTL_LINGER_MS 500 /* long enough for a last hello/done to leave */

/* One line on stderr, "apr-worker[NAME]: ...", written whole. */
void wlog(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* CLOCK_MONOTONIC in ns: one clock for the holder and its engine. */
int64_t mono_ns(void);

/* A thread that calls tick(arg) at once and then every period_ms until
 * stopped. */
typedef struct {
    void (*tick)(void *arg);
    void *arg;
    int period_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC, so clock steps do not stall it */
    bool stop, running;
    pthread_t thread;
} ticker;

int ticker_start(ticker *t, int period_ms, void (*tick)(void *), void *arg, char err[APR_ERRLEN]);
void ticker_stop(ticker *t); /* safe on a zeroed or stopped one */

/* Heartbeats to the coordinator on NAME.hb with this process's pid, from
 * process start, so that loading or a long step never looks like a hang. */
typedef struct {
    void *sock; /* created here, used by the ticker's thread, closed by beat_stop */
    const char *name;
    msgpack_sbuffer msg;
    ticker t;
} heartbeat;

int beat_start(heartbeat *h, void *zctx, const char *endpoint, const char *name, char err[APR_ERRLEN]);
void beat_stop(heartbeat *h); /* safe on a zeroed one */

/* ------------------------------------------------- holder <-> engine */
/* The block a CUDA holder shares with its engine: a memfd the engine
 * inherits (--ipc-fd). The holder fills it before it starts an engine; then
 * the engine writes beat and ready_ns and the holder reads them. Both sides
 * use __atomic builtins on those: two processes, no lock. */
#define ENGINE_BLOCK_MAGIC 0x31656e6967726170ull /* "pargine1" */
#define ENGINE_BEAT_MS 100       /* how often a live engine bumps beat */
#define ENGINE_EXIT_DEVICE 3     /* an engine's exit status after a device failure */

typedef struct {
    uint64_t magic;
    int64_t holder_pid;  /* an engine whose parent is not this has lost its holder */
    uint64_t generation; /* engines started so far, this one included: > 1 means the
                          * KV cache holds what an earlier engine computed */
    uint64_t beat;       /* the engine's liveness */
    int64_t ready_ns;    /* mono_ns() when the engine's hello went out; 0 before */
    _Alignas(64) unsigned char exp[APR_BACKEND_EXPORT_BYTES]; /* apr_backend_hold_open's */
} engine_block;

/* The CUDA worker's holder: returns the process exit status as
 * apr_worker_serve does. */
int apr_worker_hold(const apr_worker_opts *o);

#endif
