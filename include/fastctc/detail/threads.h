/* fastctc/detail/threads.h: how many OpenMP threads a call may really use.  Internal header,
 * included by fastctc.h under FASTCTC_IMPLEMENTATION (not templated).
 *
 * Three things can make a team the runtime is asked for impossible, and the OpenMP
 * runtime has no way to report any of them except hanging or ending the process:
 *
 *  - fork() after an OpenMP region: the child inherits the runtime's bookkeeping but not
 *    its threads, and the next parallel region waits forever for them (libgomp; any
 *    library's region in the parent counts, torch's included).  A pthread_atfork child
 *    handler marks the process, and every later call in it runs on its calling thread
 *    alone (no parallel region at all).  The handler is installed when the library is
 *    first used (the Python module installs it at import), so a fork before that is not
 *    seen -- but then this library's runtime state in the child is fresh.
 *  - more threads than the OS will create (an address-space limit, as batch schedulers
 *    set): libgomp prints "Thread creation failed" and calls exit().  Before a team
 *    larger than any started so far, fctc_team_cap creates (and joins) that many plain
 *    threads with default attributes, and caps the team at what could be created.
 *  - more threads than processors the process may run on: never faster, so the team is
 *    capped at omp_get_num_procs() (libgomp counts the affinity mask).
 * Results never depend on the team size (the engine's split pass is bit-identical to
 * the one-thread pass), so these caps change speed only.
 */
#ifndef FASTCTC_THREADS_H
#define FASTCTC_THREADS_H

/* A file that calls only some entry points (or a build without OpenMP) leaves some of
 * these unused; that must still build with -Werror. */
#if defined(__GNUC__) || defined(__clang__)
#define FCTC_MAYBE_UNUSED __attribute__((unused))
#else
#define FCTC_MAYBE_UNUSED
#endif

/* More threads than this are never started, whatever num_threads says. */
#define FCTC_MAX_THREADS 1024

#if defined(_OPENMP) && (defined(__unix__) || defined(__APPLE__)) && (defined(__GNUC__) || defined(__clang__))
#define FCTC_HAVE_PTHREAD_PROBE 1
#include <pthread.h>

static int fctc_forked_child = 0;         /* set in a child after fork() */
static int fctc_team_verified = 1;        /* teams up to this size are known to start */
static int fctc_team_ceiling = FCTC_MAX_THREADS; /* a probe could not create more */
static pthread_mutex_t fctc_probe_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t fctc_fork_once = PTHREAD_ONCE_INIT;

FCTC_MAYBE_UNUSED static void fctc_after_fork_in_child(void) { __atomic_store_n(&fctc_forked_child, 1, __ATOMIC_RELAXED); }
FCTC_MAYBE_UNUSED static void fctc_install_fork_handler(void) { (void)pthread_atfork(NULL, NULL, fctc_after_fork_in_child); }

/* Installs the fork handler (once per process; safe to call from any thread). */
FCTC_MAYBE_UNUSED static void fctc_fork_guard_install(void) { (void)pthread_once(&fctc_fork_once, fctc_install_fork_handler); }

/* 1 in a process forked after the handler was installed. */
FCTC_MAYBE_UNUSED static int fctc_in_forked_child(void) { return __atomic_load_n(&fctc_forked_child, __ATOMIC_RELAXED); }

FCTC_MAYBE_UNUSED static void *fctc_probe_body(void *arg) { return arg; }

/* How many of `extra` threads the OS lets this process create at once right now. */
FCTC_MAYBE_UNUSED static int fctc_probe_threads(int extra) {
    pthread_t ids[FCTC_MAX_THREADS];
    int made = 0, i;
    while (made < extra && pthread_create(&ids[made], NULL, fctc_probe_body, NULL) == 0) ++made;
    for (i = 0; i < made; ++i) (void)pthread_join(ids[i], NULL);
    return made;
}
#else
FCTC_MAYBE_UNUSED static void fctc_fork_guard_install(void) {}
FCTC_MAYBE_UNUSED static int fctc_in_forked_child(void) { return 0; }
#endif

/* The team a call asking for `wanted` threads gets: at least 1, at most wanted, the
 * usable processors and FCTC_MAX_THREADS; 1 in a forked child and without OpenMP. */
FCTC_MAYBE_UNUSED static int fctc_team_cap(int wanted) {
#ifdef _OPENMP
    int procs = omp_get_num_procs();
    fctc_fork_guard_install();
    if (fctc_in_forked_child()) return 1;
    if (wanted > FCTC_MAX_THREADS) wanted = FCTC_MAX_THREADS;
    if (procs > 0 && wanted > procs) wanted = procs;
    if (wanted <= 1) return 1;
#ifdef FCTC_HAVE_PTHREAD_PROBE
    {
        int ceiling = __atomic_load_n(&fctc_team_ceiling, __ATOMIC_RELAXED);
        if (wanted > ceiling) wanted = ceiling;
        if (wanted <= __atomic_load_n(&fctc_team_verified, __ATOMIC_ACQUIRE)) return wanted;
        (void)pthread_mutex_lock(&fctc_probe_lock);
        if (wanted > fctc_team_verified) {
            int made = fctc_probe_threads(wanted - 1);
            if (made == wanted - 1) {
                __atomic_store_n(&fctc_team_verified, wanted, __ATOMIC_RELEASE);
            } else {
                /* one thread fewer than could be made: the runtime needs a little more
                 * than a bare thread */
                int fit = made > 1 ? made : 1;
                __atomic_store_n(&fctc_team_ceiling, fit, __ATOMIC_RELAXED);
                if (fit > fctc_team_verified) __atomic_store_n(&fctc_team_verified, fit, __ATOMIC_RELEASE);
                wanted = fit;
            }
        }
        (void)pthread_mutex_unlock(&fctc_probe_lock);
        return wanted > 0 ? wanted : 1;
    }
#else
    return wanted;
#endif
#else
    (void)wanted;
    return 1;
#endif
}

#endif /* FASTCTC_THREADS_H */
