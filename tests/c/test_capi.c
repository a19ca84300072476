/* tests/c/test_capi.c: self-checking test of fastctc's C API (fastctc.h), compiled by
 * tests/test_capi.py with the system C compiler(s), with and without OpenMP and under
 * AddressSanitizer + UndefinedBehaviorSanitizer.  Also valid C++ (test_cpp.cpp includes
 * it), so the same checks run through the extern "C" header in C++.
 *
 * Covers: the Graves vectors (TensorFlow's ctc_loss_op_test testBasic, also warp-ctc's)
 * in float32 and float64, both layouts, from_logits 0 and 1, 1 and 2 threads, internal,
 * caller-owned and misaligned workspaces; infeasible sequences (+inf cost, zero
 * gradient, 0 with zero_infinity); empty batches and sequences; every invalid argument
 * (FASTCTC_INVALID_ARGUMENT with costs and grads left untouched); a too-small
 * workspace (FASTCTC_WORKSPACE_TOO_SMALL, outputs untouched); status strings.
 * Prints one line per failed check and "test_capi: N checks, 0 failures" at the end;
 * the exit status is the number of failures (capped at 100).
 */
#ifndef TEST_CAPI_NO_IMPLEMENTATION
#define FASTCTC_IMPLEMENTATION
#endif
#include <fastctc/fastctc.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0, failures = 0;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        ++checks;                                                                                                      \
        if (!(cond)) {                                                                                                 \
            ++failures;                                                                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                                       \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, "\n");                                                                                     \
        }                                                                                                              \
    } while (0)

/* Graves vectors: probabilities [n][t][c], N = 2, T = 5, C = 6, blank = 5. */
enum { GT = 5, GN = 2, GC = 6, GBLANK = 5 };
static const double graves_probs[60] = {
    0.633766,   0.221185,   0.0917319,  0.0129757,  0.0142857, 0.0260553,  0.111121,   0.588392,   0.278779,
    0.0055756,  0.00569609, 0.010436,   0.0357786,  0.633813,  0.321418,   0.00249248, 0.00272882, 0.0037688,
    0.0663296,  0.643849,   0.280111,   0.00283995, 0.0035545, 0.00331533, 0.458235,   0.396634,   0.123377,
    0.00648837, 0.00903441, 0.00623107, 0.30176,    0.28562,   0.0831517,  0.0862751,  0.0816851,  0.161508,
    0.24082,    0.397533,   0.0557226,  0.0546814,  0.0557528, 0.19549,    0.230246,   0.450868,   0.0389607,
    0.038309,   0.0391602,  0.202456,   0.280884,   0.429522,  0.0326593,  0.0339046,  0.0326856,  0.190345,
    0.423286,   0.315517,   0.0338439,  0.0393744,  0.0339315, 0.154046,
};
/* d loss / d logits = softmax - occupancy, same [n][t][c] order. */
static const double graves_grad_logits[60] = {
    -0.366234,  0.221185,   0.0917319,  0.0129757,  0.0142857, 0.0260553,  0.111121,   -0.411608,  0.278779,
    0.0055756,  0.00569609, 0.010436,   0.0357786,  0.633813,  -0.678582,  0.00249248, 0.00272882, 0.0037688,
    0.0663296,  -0.356151,  0.280111,   0.00283995, 0.0035545, 0.00331533, -0.541765,  0.396634,   0.123377,
    0.00648837, 0.00903441, 0.00623107, -0.69824,   0.28562,   0.0831517,  0.0862751,  0.0816851,  0.161508,
    0.24082,    -0.602467,  0.0557226,  0.0546814,  0.0557528, 0.19549,    0.230246,   0.450868,   0.0389607,
    0.038309,   0.0391602,  -0.797544,  0.280884,   -0.570478, 0.0326593,  0.0339046,  0.0326856,  0.190345,
    -0.576714,  0.315517,   0.0338439,  0.0393744,  0.0339315, 0.154046,
};
static const double graves_loss[2] = {3.34211, 5.42262};
static const int graves_labels[9] = {0, 1, 2, 1, 0, 0, 1, 1, 0};
static const int graves_label_lengths[2] = {5, 4};
static const int graves_input_lengths[2] = {5, 5};

/* Index of (t, n, c) in a buffer of the given layout. */
static size_t at(int batch_major, int T, int N, int C, int t, int n, int c) {
    return batch_major ? ((size_t)n * T + t) * C + c : ((size_t)t * N + n) * C + c;
}

/* One call in either precision; acts/grads/costs given as double and converted. */
static fastctc_status run(int f32, const double *acts, double *grads, const int *labels, const int *ll, const int *il,
                          int T, int N, int C, double *costs, void *ws, size_t ws_bytes, const fastctc_options *o) {
    size_t count = (size_t)(T > 0 ? T : 0) * (size_t)(N > 0 ? N : 0) * (size_t)(C > 0 ? C : 0), i;
    fastctc_status st;
    /* Invalid calls may claim sizes far beyond the buffers (which hold at most 60
     * values); the call must refuse them before reading anything. */
    if (count > 60 || (size_t)T * (size_t)N > 60 || (size_t)N * (size_t)C > 60 || (size_t)T * (size_t)C > 60)
        count = 60;
    if (!f32) return fastctc_loss_f64(acts, grads, labels, ll, il, T, N, C, costs, ws, ws_bytes, o);
    {
        float *a = (float *)malloc(count * sizeof(float) + 1);
        float *g = (float *)malloc(count * sizeof(float) + 1);
        size_t nc = (size_t)(N > 0 && N < 60 ? N : 2);
        float *c = (float *)malloc(nc * sizeof(float));
        for (i = 0; acts && i < count; ++i) a[i] = (float)acts[i];
        for (i = 0; grads && i < count; ++i) g[i] = (float)grads[i];
        for (i = 0; costs && i < nc; ++i) c[i] = (float)costs[i];
        st = fastctc_loss_f32(acts ? a : NULL, grads ? g : NULL, labels, ll, il, T, N, C, costs ? c : NULL, ws,
                              ws_bytes, o);
        for (i = 0; grads && i < count; ++i) grads[i] = g[i];
        for (i = 0; costs && i < nc; ++i) costs[i] = c[i];
        free(a);
        free(g);
        free(c);
    }
    return st;
}

static void test_status_strings(void) {
    int s;
    for (s = 0; s <= 3; ++s) {
        const char *text = fastctc_status_string((fastctc_status)s);
        CHECK(text != NULL && strlen(text) > 0, "status %d has no string", s);
    }
    CHECK(strcmp(fastctc_status_string(FASTCTC_OK), fastctc_status_string(FASTCTC_INVALID_ARGUMENT)) != 0,
          "status strings are not distinct");
    CHECK(fastctc_status_string((fastctc_status)42) != NULL, "unknown status gives NULL");
}

/* Out-of-range SIMD levels are not levels: refused, never "supported". */
static void test_simd_level_ranges(void) {
    int bad[6] = {-1, -5, 4, 5, 100, -2147483647 - 1}, i, current = fastctc_simd_level();
    for (i = 0; i < 6; ++i) {
        CHECK(fastctc_simd_level_supported(bad[i]) == 0, "level %d reported supported", bad[i]);
        CHECK(fastctc_simd_set_level(bad[i]) == FASTCTC_INVALID_ARGUMENT, "set_level(%d) accepted", bad[i]);
    }
    CHECK(fastctc_simd_level() == current, "a refused set_level changed the level");
    CHECK(fastctc_simd_level_supported(FASTCTC_SIMD_SCALAR) == 1, "scalar not supported");
}

/* fastctc_align's outputs may not overlap its inputs: refused before anything is written. */
static void test_align_overlaps(void) {
    enum { T = 4, C = 3 };
    /* one buffer holding acts (T * C floats), then room the outputs may alias */
    float buf[T * C + 16];
    int ibuf[32], labels[2] = {1, 2}, ll[1] = {2}, il[1] = {T}, paths[T], i;
    float scores[T];
    for (i = 0; i < T * C; ++i) buf[i] = -1.0986123f;
    for (i = 0; i < 32; ++i) ibuf[i] = 0;
    CHECK(fastctc_align_f32(buf, labels, ll, il, T, 1, C, paths, scores, NULL, 0, NULL) == FASTCTC_OK,
          "plain align failed");
    /* scores over acts */
    CHECK(fastctc_align_f32(buf, labels, ll, il, T, 1, C, paths, buf + 2, NULL, 0, NULL) == FASTCTC_INVALID_ARGUMENT,
          "scores overlapping acts accepted");
    /* paths over the labels, over input_lengths, over label_lengths */
    ibuf[0] = 1;
    ibuf[1] = 2;
    ibuf[4] = T;
    ibuf[5] = 2;
    CHECK(fastctc_align_f32(buf, ibuf, ll, il, T, 1, C, ibuf, scores, NULL, 0, NULL) == FASTCTC_INVALID_ARGUMENT,
          "paths overlapping flat_labels accepted");
    CHECK(ibuf[0] == 1 && ibuf[1] == 2, "a refused call wrote paths");
    CHECK(fastctc_align_f32(buf, labels, ll, ibuf + 4, T, 1, C, ibuf + 2, scores, NULL, 0, NULL) ==
              FASTCTC_INVALID_ARGUMENT,
          "paths overlapping input_lengths accepted");
    CHECK(fastctc_align_f32(buf, labels, ibuf + 5, il, T, 1, C, ibuf + 2, scores, NULL, 0, NULL) ==
              FASTCTC_INVALID_ARGUMENT,
          "paths overlapping label_lengths accepted");
    /* paths over scores */
    CHECK(fastctc_align_f32(buf, labels, ll, il, T, 1, C, (int *)scores, scores, NULL, 0, NULL) ==
              FASTCTC_INVALID_ARGUMENT,
          "paths overlapping scores accepted");
}

/* Workspace modes: 0 internal, 1 exact caller-owned, 2 caller-owned at an odd address. */
static void graves_case(int f32, int batch_major, int from_logits, int threads, int ws_mode) {
    double acts[60], grads[60], costs[2];
    fastctc_options o;
    void *buf = NULL, *ws = NULL;
    size_t ws_bytes = 0;
    int t, n, c;
    double tol_loss = 1e-4, tol_grad = f32 ? 2e-5 : 2e-6;
    memset(&o, 0, sizeof o);
    o.blank = GBLANK;
    o.from_logits = from_logits;
    o.num_threads = threads;
    o.batch_major = batch_major;
    for (n = 0; n < GN; ++n)
        for (t = 0; t < GT; ++t)
            for (c = 0; c < GC; ++c)
                acts[at(batch_major, GT, GN, GC, t, n, c)] = log(graves_probs[(n * GT + t) * GC + c]);
    if (ws_mode) {
        CHECK(fastctc_workspace_size(graves_label_lengths, graves_input_lengths, GT, GN, GC, 1,
                                     f32 ? sizeof(float) : sizeof(double), &o, &ws_bytes) == FASTCTC_OK,
              "workspace_size failed");
        buf = malloc(ws_bytes + 1);
        ws = ws_mode == 2 ? (void *)((char *)buf + 1) : buf;
    }
    CHECK(run(f32, acts, grads, graves_labels, graves_label_lengths, graves_input_lengths, GT, GN, GC, costs, ws,
              ws_bytes, &o) == FASTCTC_OK,
          "graves call failed");
    for (n = 0; n < GN; ++n)
        CHECK(fabs(costs[n] - graves_loss[n]) < tol_loss, "graves f32=%d bm=%d logits=%d: cost[%d] = %.7g, want %.7g",
              f32, batch_major, from_logits, n, costs[n], graves_loss[n]);
    for (n = 0; n < GN; ++n)
        for (t = 0; t < GT; ++t)
            for (c = 0; c < GC; ++c) {
                size_t k = (size_t)(n * GT + t) * GC + c;
                /* log-prob mode: d loss / d log p = -occupancy = grad_logits - softmax. */
                double want = graves_grad_logits[k] - (from_logits ? 0.0 : graves_probs[k]);
                double got = grads[at(batch_major, GT, GN, GC, t, n, c)];
                CHECK(fabs(got - want) < tol_grad,
                      "graves f32=%d bm=%d logits=%d thr=%d ws=%d: grad[n=%d,t=%d,c=%d] = %.7g, want %.7g", f32,
                      batch_major, from_logits, threads, ws_mode, n, t, c, got, want);
            }
    free(buf);
}

/* Costs only (grads NULL) give the same costs. */
static void graves_costs_only(int f32) {
    double acts[60], costs[2];
    fastctc_options o;
    int k, n;
    memset(&o, 0, sizeof o);
    o.blank = GBLANK;
    o.batch_major = 1;
    for (k = 0; k < 60; ++k) acts[k] = log(graves_probs[k]);
    CHECK(run(f32, acts, NULL, graves_labels, graves_label_lengths, graves_input_lengths, GT, GN, GC, costs, NULL, 0,
              &o) == FASTCTC_OK,
          "costs-only call failed");
    for (n = 0; n < GN; ++n) CHECK(fabs(costs[n] - graves_loss[n]) < 1e-4, "costs-only cost[%d] = %g", n, costs[n]);
}

static void test_infeasible(int f32) {
    /* T = 3 frames, C = 3, blank 0. seq 0: labels (1, 1) need 3 frames: feasible with T=3,
     * infeasible with T=2.  seq 1: 4 labels in 3 frames.  seq 2: empty labels, T = 0. */
    enum { T = 3, N = 3, C = 3 };
    double acts[T * N * C], grads[T * N * C], costs[N];
    int labels[6] = {1, 1, 1, 2, 1, 2};
    int ll[N] = {2, 4, 0}, il[N] = {2, 3, 0};
    int zi, k, t, c;
    for (k = 0; k < T * N * C; ++k) acts[k] = log(1.0 / 3.0);
    for (zi = 0; zi < 2; ++zi) {
        fastctc_options o;
        memset(&o, 0, sizeof o);
        o.zero_infinity = zi;
        for (k = 0; k < T * N * C; ++k) grads[k] = 99.0;
        CHECK(run(f32, acts, grads, labels, ll, il, T, N, C, costs, NULL, 0, &o) == FASTCTC_OK,
              "infeasible call failed");
        CHECK(zi ? costs[0] == 0.0 : (isinf(costs[0]) && costs[0] > 0), "repeat without room: cost %g", costs[0]);
        CHECK(zi ? costs[1] == 0.0 : (isinf(costs[1]) && costs[1] > 0), "labels longer than input: cost %g", costs[1]);
        CHECK(costs[2] == 0.0, "empty sequence cost %g, want 0", costs[2]);
        for (t = 0; t < T; ++t)
            for (k = 0; k < N; ++k)
                for (c = 0; c < C; ++c)
                    CHECK(grads[at(0, T, N, C, t, k, c)] == 0.0, "grad of infeasible/empty seq %d at t=%d c=%d is %g",
                          k, t, c, grads[at(0, T, N, C, t, k, c)]);
    }
    /* The same (1, 1) with 3 frames is feasible: exactly one path b? no: 1 _ 1 -> p = (1/3)^3. */
    {
        int il3[1] = {3}, ll1[1] = {2};
        double cost1[1];
        CHECK(run(f32, acts, NULL, labels, ll1, il3, T, 1, C, cost1, NULL, 0, NULL) == FASTCTC_OK,
              "feasible repeat failed");
        CHECK(fabs(cost1[0] - 3.0 * log(3.0)) < 1e-5, "(1,1) over 3 frames: cost %g, want %g", cost1[0], 3 * log(3.0));
    }
}

static void test_empty(void) {
    double costs[1] = {5.0};
    CHECK(fastctc_loss_f64(NULL, NULL, NULL, NULL, NULL, 0, 0, 1, NULL, NULL, 0, NULL) == FASTCTC_OK,
          "empty batch with NULLs");
    CHECK(fastctc_loss_f32(NULL, NULL, NULL, NULL, NULL, 7, 0, 3, NULL, NULL, 0, NULL) == FASTCTC_OK,
          "empty batch with max_time");
    {
        int zero[1] = {0};
        CHECK(fastctc_loss_f64(NULL, NULL, NULL, zero, zero, 0, 1, 4, costs, NULL, 0, NULL) == FASTCTC_OK,
              "T = 0, L = 0");
        CHECK(costs[0] == 0.0, "T = 0, L = 0 cost %g", costs[0]);
    }
}

/* Every invalid argument: FASTCTC_INVALID_ARGUMENT, outputs untouched. */
static void expect_invalid(int f32, const char *what, const double *acts, double *grads, const int *labels,
                           const int *ll, const int *il, int T, int N, int C, double *costs, void *ws, size_t wsb,
                           const fastctc_options *o) {
    size_t count = 60, k;
    fastctc_status st;
    for (k = 0; grads && k < count; ++k) grads[k] = 12345.0;
    for (k = 0; costs && k < 2; ++k) costs[k] = 12345.0;
    st = run(f32, acts, grads, labels, ll, il, T, N, C, costs, ws, wsb, o);
    CHECK(st == FASTCTC_INVALID_ARGUMENT, "%s (f32=%d): status %d, want INVALID_ARGUMENT", what, f32, (int)st);
    for (k = 0; grads && k < count; ++k)
        CHECK(grads[k] == 12345.0, "%s (f32=%d): grads[%u] touched", what, f32, (unsigned)k);
    for (k = 0; costs && k < 2; ++k)
        CHECK(costs[k] == 12345.0, "%s (f32=%d): costs[%u] touched", what, f32, (unsigned)k);
}

static void test_invalid(int f32) {
    double acts[60], grads[60], costs[2];
    int labels[9], ll[2], il[2], k;
    fastctc_options o, bad;
    size_t size = 0;
    for (k = 0; k < 60; ++k) acts[k] = log(graves_probs[k]);
    memcpy(labels, graves_labels, sizeof labels);
    memcpy(ll, graves_label_lengths, sizeof ll);
    memcpy(il, graves_input_lengths, sizeof il);
    memset(&o, 0, sizeof o);
    o.blank = GBLANK;

#define INVALID(what, ...) expect_invalid(f32, what, __VA_ARGS__)
    INVALID("max_time < 0", acts, grads, labels, ll, il, -1, GN, GC, costs, NULL, 0, &o);
    INVALID("minibatch < 0", acts, grads, labels, ll, il, GT, -1, GC, costs, NULL, 0, &o);
    INVALID("alphabet_size 0", acts, grads, labels, ll, il, GT, GN, 0, costs, NULL, 0, &o);
    INVALID("alphabet_size < 0", acts, grads, labels, ll, il, GT, GN, -6, costs, NULL, 0, &o);
    INVALID("sizes overflow", acts, grads, labels, ll, il, INT_MAX, INT_MAX, INT_MAX, costs, NULL, 0, &o);
    bad = o;
    bad.blank = -1;
    INVALID("blank < 0", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &bad);
    bad = o;
    bad.blank = GC;
    INVALID("blank == alphabet_size", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &bad);
    bad = o;
    bad.from_logits = 2;
    INVALID("from_logits 2", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &bad);
    bad = o;
    bad.zero_infinity = -1;
    INVALID("zero_infinity -1", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &bad);
    bad = o;
    bad.batch_major = 3;
    INVALID("batch_major 3", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &bad);
    bad = o;
    bad.num_threads = -1;
    INVALID("num_threads -1", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &bad);
    INVALID("acts NULL", NULL, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    INVALID("costs NULL", acts, grads, labels, ll, il, GT, GN, GC, NULL, NULL, 0, &o);
    CHECK(run(f32, acts, grads, labels, ll, il, GT, GN, GC, NULL, NULL, 0, &o) == FASTCTC_INVALID_ARGUMENT &&
              grads[0] == 12345.0,
          "costs NULL: grads touched");
    INVALID("flat_labels NULL", acts, grads, NULL, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    INVALID("label_lengths NULL", acts, grads, labels, NULL, il, GT, GN, GC, costs, NULL, 0, &o);
    INVALID("input_lengths NULL", acts, grads, labels, ll, NULL, GT, GN, GC, costs, NULL, 0, &o);
    il[1] = -1;
    INVALID("input_length < 0", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    il[1] = GT + 1;
    INVALID("input_length > max_time", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    il[1] = INT_MIN;
    INVALID("input_length INT_MIN", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    il[1] = GT;
    ll[0] = -1;
    INVALID("label_length < 0", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    ll[0] = INT_MAX;
    INVALID("label_length INT_MAX", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    ll[0] = 5;
    labels[8] = -1;
    INVALID("label < 0", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    labels[8] = GC;
    INVALID("label == alphabet_size", acts, grads, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o);
    labels[8] = 0;
    /* Outputs overlapping inputs or each other. */
    {
        double shared[60 + 2];
        for (k = 0; k < 60; ++k) shared[k] = acts[k];
        CHECK(run(0, shared, shared, labels, ll, il, GT, GN, GC, costs, NULL, 0, &o) == FASTCTC_INVALID_ARGUMENT,
              "grads == acts accepted");
        CHECK(fastctc_loss_f64(shared, grads, labels, ll, il, GT, GN, GC, shared + 10, NULL, 0, &o) ==
                  FASTCTC_INVALID_ARGUMENT,
              "costs inside acts accepted");
        CHECK(fastctc_loss_f64(acts, shared, labels, ll, il, GT, GN, GC, shared + 59, NULL, 0, &o) ==
                  FASTCTC_INVALID_ARGUMENT,
              "costs overlapping grads accepted");
        CHECK(fastctc_loss_f64(acts, grads, labels, ll, il, GT, GN, GC, costs, grads, sizeof grads, &o) ==
                  FASTCTC_INVALID_ARGUMENT,
              "workspace == grads accepted");
    }
    /* fastctc_workspace_size's own checks. */
    CHECK(fastctc_workspace_size(ll, il, GT, GN, GC, 1, sizeof(double), &o, NULL) == FASTCTC_INVALID_ARGUMENT,
          "size_bytes NULL accepted");
    CHECK(fastctc_workspace_size(ll, il, GT, GN, GC, 1, 3, &o, &size) == FASTCTC_INVALID_ARGUMENT,
          "elem_size 3 accepted");
    CHECK(fastctc_workspace_size(NULL, il, GT, GN, GC, 1, 4, &o, &size) == FASTCTC_INVALID_ARGUMENT,
          "label_lengths NULL accepted by workspace_size");
    bad = o;
    bad.blank = 6;
    CHECK(fastctc_workspace_size(ll, il, GT, GN, GC, 1, 4, &bad, &size) == FASTCTC_INVALID_ARGUMENT,
          "bad blank accepted by workspace_size");
#undef INVALID
}

static void test_workspace_too_small(int f32) {
    double acts[60], grads[60], costs[2];
    unsigned char small[64];
    fastctc_options o;
    size_t need = 0, k;
    void *buf;
    memset(&o, 0, sizeof o);
    o.blank = GBLANK;
    o.batch_major = 1;
    for (k = 0; k < 60; ++k) acts[k] = log(graves_probs[k]);
    for (k = 0; k < 60; ++k) grads[k] = 12345.0;
    costs[0] = costs[1] = 12345.0;
    CHECK(run(f32, acts, grads, graves_labels, graves_label_lengths, graves_input_lengths, GT, GN, GC, costs, small,
              sizeof small, &o) == FASTCTC_WORKSPACE_TOO_SMALL,
          "64-byte workspace accepted");
    CHECK(run(f32, acts, grads, graves_labels, graves_label_lengths, graves_input_lengths, GT, GN, GC, costs, small, 0,
              &o) == FASTCTC_WORKSPACE_TOO_SMALL,
          "0-byte workspace accepted");
    for (k = 0; k < 60; ++k) CHECK(grads[k] == 12345.0, "too-small workspace: grads touched");
    CHECK(costs[0] == 12345.0 && costs[1] == 12345.0, "too-small workspace: costs touched");
    /* One thread's worth is enough (the call then runs on one thread). */
    o.num_threads = 1;
    CHECK(fastctc_workspace_size(graves_label_lengths, graves_input_lengths, GT, GN, GC, 1,
                                 f32 ? sizeof(float) : sizeof(double), &o, &need) == FASTCTC_OK,
          "workspace_size");
    buf = malloc(need);
    o.num_threads = 2;
    CHECK(run(f32, acts, grads, graves_labels, graves_label_lengths, graves_input_lengths, GT, GN, GC, costs, buf, need,
              &o) == FASTCTC_OK,
          "one thread's workspace with num_threads 2");
    CHECK(fabs(costs[0] - graves_loss[0]) < 1e-4, "cost with a one-thread workspace");
    /* Grads need more workspace than costs: the costs-only size is too small for grads. */
    free(buf);
}

int main(void) {
    int f32, bm, lg, th, ws;
    test_status_strings();
    test_simd_level_ranges();
    test_align_overlaps();
    test_empty();
    for (f32 = 0; f32 < 2; ++f32) {
        for (bm = 0; bm < 2; ++bm)
            for (lg = 0; lg < 2; ++lg)
                for (th = 1; th <= 2; ++th)
                    for (ws = 0; ws < 3; ++ws) graves_case(f32, bm, lg, th, ws);
        graves_costs_only(f32);
        test_infeasible(f32);
        test_invalid(f32);
        test_workspace_too_small(f32);
    }
    printf("test_capi: %d checks, %d failures\n", checks, failures);
    return failures > 100 ? 100 : failures;
}
