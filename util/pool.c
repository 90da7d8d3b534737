/*
 * pool.c - fork-join thread pool; see pool.h.
 *
 * Workers wait for a new generation number. They spin for a short while first (decode steps issue
 * hundreds of small parallel loops per token, and a condition-variable wake-up costs tens of
 * microseconds), then sleep on the condition variable.
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "alloc.h"
#include "log.h"

#define SPIN_ITERS 20000

struct worker_arg {
    struct sw_pool *p;
    int tid;
};

struct sw_pool {
    int nthreads;
    pthread_t *threads;
    struct worker_arg *args; /* one per thread, owned by the pool (not by the worker) */
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_cond_t done_cv;
    atomic_uint gen;
    atomic_int remaining;
    atomic_int stop;
    /* current job */
    sw_pool_fn fn;
    void *ctx;
    size_t n, grain;
};

static _Thread_local int in_task;

static void run_share(sw_pool_t *p, int tid)
{
    size_t chunks = (p->n + p->grain - 1) / p->grain;
    size_t per = chunks / (size_t)p->nthreads, extra = chunks % (size_t)p->nthreads;
    size_t c0 = (size_t)tid * per + ((size_t)tid < extra ? (size_t)tid : extra);
    size_t c1 = c0 + per + ((size_t)tid < extra ? 1 : 0);
    size_t b = c0 * p->grain, e = c1 * p->grain;

    if (e > p->n)
        e = p->n;
    if (b < e) {
        in_task = 1;
        p->fn(p->ctx, b, e, tid);
        in_task = 0;
    }
}

static void *worker(void *arg)
{
    sw_pool_t *p = ((struct worker_arg *)arg)->p;
    int tid = ((struct worker_arg *)arg)->tid;
    unsigned seen = 0;

    for (;;) {
        unsigned g;
        int spins = 0;

        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen && spins < SPIN_ITERS)
            spins++;
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = g;
        run_share(p, tid);
        if (atomic_fetch_sub_explicit(&p->remaining, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

int sw_pool_create(int nthreads, sw_pool_t **out)
{
    sw_pool_t *p;

    if (nthreads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = n > 0 ? (int)n : 1;
    }
    p = sw_calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->nthreads = nthreads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->threads = sw_calloc((size_t)nthreads, sizeof(pthread_t));
    p->args = sw_calloc((size_t)nthreads, sizeof(*p->args));
    if (!p->threads || !p->args) {
        p->nthreads = 1;
        sw_pool_destroy(p);
        return -ENOMEM;
    }
    for (int i = 1; i < nthreads; i++) {
        struct worker_arg *a = &p->args[i];

        a->p = p;
        a->tid = i;
        if (pthread_create(&p->threads[i], NULL, worker, a) != 0) {
            p->nthreads = i;
            sw_pool_destroy(p);
            return -EAGAIN;
        }
    }
    *out = p;
    return 0;
}

void sw_pool_destroy(sw_pool_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->nthreads; i++)
        if (p->threads && p->threads[i])
            pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done_cv);
    sw_free(p->threads);
    sw_free(p->args);
    sw_free(p);
}

int sw_pool_threads(const sw_pool_t *p)
{
    return p->nthreads;
}

void sw_pool_for(sw_pool_t *p, size_t n, size_t grain, sw_pool_fn fn, void *ctx)
{
    int spins = 0;

    if (n == 0)
        return;
    if (grain == 0)
        grain = 1;
    if (p->nthreads == 1 || in_task || n <= grain) {
        fn(ctx, 0, n, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->grain = grain;
    atomic_store(&p->remaining, p->nthreads - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_share(p, 0);
    while (atomic_load_explicit(&p->remaining, memory_order_acquire) > 0 && spins < SPIN_ITERS)
        spins++;
    if (atomic_load(&p->remaining) > 0) {
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->remaining) > 0)
            pthread_cond_wait(&p->done_cv, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

static sw_pool_t *global_pool;
static int default_threads;
static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
    if (sw_pool_create(default_threads, &global_pool) < 0) {
        SW_LOG_W("pool", "cannot start worker threads; running kernels on one thread");
        sw_pool_create(1, &global_pool);
    }
}

sw_pool_t *sw_pool_global(void)
{
    pthread_once(&global_once, global_init);
    return global_pool;
}

void sw_pool_set_default_threads(int nthreads)
{
    default_threads = nthreads;
}

int sw_pool_default_threads(void)
{
    long n;

    if (default_threads > 0)
        return default_threads;
    n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
