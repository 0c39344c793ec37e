/* A small fixed thread pool (private to worker/): pool_run calls fn on every
 * thread (the caller is thread 0) and returns when all are done. Workers spin
 * briefly between jobs, because a decode step dispatches a few hundred jobs. */
#ifndef APR_POOL_H
#define APR_POOL_H

typedef void (*pool_fn)(void *ctx, int ith, int nth);
typedef struct pool pool;

pool *pool_new(int n_threads); /* n_threads >= 1, the caller included */
int pool_size(const pool *p);
void pool_run(pool *p, pool_fn fn, void *ctx);
void pool_free(pool *p);

#endif
