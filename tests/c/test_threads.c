/* tests/c/test_threads.c: concurrent calls of fastctc_loss_f32/_f64 from several POSIX
 * threads give the same bits as one call made alone (the API keeps no state between
 * calls; each call owns its workspace).  Threads mix precisions, layouts, thread counts,
 * internal and caller-owned workspaces.  Built by tests/test_capi.py with -pthread, with
 * and without OpenMP, and (without OpenMP) under ThreadSanitizer when it is available.
 */
#define FASTCTC_IMPLEMENTATION
#include <fastctc/fastctc.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T = 40, N = 6, C = 12, MAXL = 12, WORKERS = 4, ROUNDS = 25 };

static double acts_tm[T * N * C], acts_bm[T * N * C];
static float acts_tm32[T * N * C];
static int labels[N * MAXL], ll[N], il[N];
static double ref_costs[N], ref_grads[T * N * C];
static float ref_costs32[N], ref_grads32[T * N * C];

static unsigned lcg(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

static void *worker(void *arg) {
    long id = (long)arg;
    long *bad = (long *)calloc(1, sizeof(long));
    int round;
    for (round = 0; round < ROUNDS; ++round) {
        fastctc_options o;
        int kind = (int)((id + round) % 4);
        memset(&o, 0, sizeof o);
        o.num_threads = 1 + (round & 1);
        o.blank = 0;
        if (kind == 0 || kind == 1) {
            double costs[N], *grads = (double *)malloc(sizeof(double) * T * N * C);
            void *ws = NULL;
            size_t wsb = 0;
            int t, n, c;
            o.batch_major = kind;
            if (round & 2) {
                fastctc_workspace_size(ll, il, T, N, C, 1, sizeof(double), &o, &wsb);
                ws = malloc(wsb);
            }
            if (fastctc_loss_f64(kind ? acts_bm : acts_tm, grads, labels, ll, il, T, N, C, costs, ws, wsb, &o) !=
                FASTCTC_OK)
                ++*bad;
            if (memcmp(costs, ref_costs, sizeof costs)) ++*bad;
            for (t = 0; t < T; ++t)
                for (n = 0; n < N; ++n)
                    for (c = 0; c < C; ++c) {
                        size_t i = kind ? ((size_t)n * T + t) * C + c : ((size_t)t * N + n) * C + c;
                        if (grads[i] != ref_grads[((size_t)t * N + n) * C + c]) ++*bad;
                    }
            free(ws);
            free(grads);
        } else {
            float costs[N], *grads = (float *)malloc(sizeof(float) * T * N * C);
            o.from_logits = 0;
            if (fastctc_loss_f32(acts_tm32, kind == 3 ? grads : NULL, labels, ll, il, T, N, C, costs, NULL, 0, &o) !=
                FASTCTC_OK)
                ++*bad;
            if (memcmp(costs, ref_costs32, sizeof costs)) ++*bad;
            if (kind == 3 && memcmp(grads, ref_grads32, sizeof(float) * T * N * C)) ++*bad;
            free(grads);
        }
    }
    return bad;
}

int main(void) {
    unsigned seed = 2024;
    int t, n, c, k, off = 0, failures = 0;
    pthread_t th[WORKERS];
    fastctc_options o;
    for (n = 0; n < N; ++n) {
        il[n] = T - 3 * n;
        ll[n] = 2 + (int)(lcg(&seed) % (MAXL - 1));
        for (k = 0; k < ll[n]; ++k) labels[off + k] = 1 + (int)(lcg(&seed) % (C - 1));
        off += ll[n];
    }
    ll[N - 1] = 0; /* an empty target too */
    for (t = 0; t < T; ++t)
        for (n = 0; n < N; ++n) {
            double lse = 0, x[C];
            for (c = 0; c < C; ++c) {
                x[c] = (double)(lcg(&seed) % 1000) / 150.0;
                lse += exp(x[c]);
            }
            for (c = 0; c < C; ++c) {
                double v = x[c] - log(lse);
                acts_tm[((size_t)t * N + n) * C + c] = v;
                acts_bm[((size_t)n * T + t) * C + c] = v;
                acts_tm32[((size_t)t * N + n) * C + c] = (float)v;
            }
        }
    /* The references: one call, alone, on one thread. */
    memset(&o, 0, sizeof o);
    o.num_threads = 1;
    if (fastctc_loss_f64(acts_tm, ref_grads, labels, ll, il, T, N, C, ref_costs, NULL, 0, &o) != FASTCTC_OK) return 1;
    if (fastctc_loss_f32(acts_tm32, ref_grads32, labels, ll, il, T, N, C, ref_costs32, NULL, 0, &o) != FASTCTC_OK)
        return 1;
    for (n = 0; n < N; ++n)
        if (!(ref_costs[n] > 0 && ref_costs[n] < 1e4)) return 2;
    for (k = 0; k < WORKERS; ++k) pthread_create(&th[k], NULL, worker, (void *)(long)k);
    for (k = 0; k < WORKERS; ++k) {
        void *bad;
        pthread_join(th[k], &bad);
        if (*(long *)bad) {
            fprintf(stderr, "worker %d: %ld mismatches\n", k, *(long *)bad);
            ++failures;
        }
        free(bad);
    }
    printf("test_threads: %d workers x %d rounds, %d failing workers\n", WORKERS, ROUNDS, failures);
    return failures;
}
