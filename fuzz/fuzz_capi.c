/* fuzz/fuzz_capi.c: a libFuzzer harness over fastctc's C entry points
 * (fastctc_workspace_size, fastctc_loss_f32, fastctc_loss_f64).
 *
 * Each input is decoded into one call: sizes, options, lengths and labels that are
 * usually valid and sometimes not (negative, past their bound, INT_MIN/INT_MAX, null
 * pointers, outputs aliasing inputs, too-small workspaces), and activations drawn from
 * a table that includes NaN, +-inf, +-1e30 and denormals.  Every buffer is allocated at
 * its exact size so AddressSanitizer sees any read or write past it.
 *
 * Beyond "no crash", the harness checks the contract and aborts (a finding) when:
 *  - the status differs from what an independent re-statement of the rules predicts;
 *  - a failed call touched costs or grads (they are pre-filled with a sentinel);
 *  - f32 and f64 disagree about validity;
 *  - gradient rows past an input length, or of an infeasible sequence, are not 0, or an
 *    infeasible sequence's cost is not +inf (0 with zero_infinity);
 *  - with finite acts and from_logits = 1, a cost is negative or a gradient row does not
 *    sum to ~0 (softmax and occupancy both sum to 1 over the alphabet);
 *  - results change (bitwise) with the layout, the thread count or the workspace owner.
 *
 * Build (clang):  clang -g -O1 -fsanitize=fuzzer,address,undefined -fopenmp \
 *                   -I include fuzz/fuzz_capi.c -o fuzz_capi -lm
 * Replay without libFuzzer (any C compiler): add fuzz/replay_main.c to the command.
 */
#define FASTCTC_IMPLEMENTATION
#include <fastctc/fastctc.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENTINEL 7777.0

typedef struct {
    const uint8_t *data;
    size_t size, pos;
} reader;

static unsigned next_byte(reader *r) { return r->pos < r->size ? r->data[r->pos++] : 0u; }

static void fail(const char *what) {
    fprintf(stderr, "fuzz_capi: contract broken: %s\n", what);
    abort();
}

/* A size in [lo, hi] most of the time; bytes >= 248 give an out-of-range value. */
static int pick(reader *r, int lo, int hi) {
    static const int odd[8] = {-1, -2, INT_MIN, INT_MAX, INT_MAX / 2, -1000, 1 << 30, 0};
    unsigned b = next_byte(r);
    long long span = (long long)hi - lo + 1;
    if (b >= 248) {
        int v = odd[b - 248];
        return v == 0 ? (hi < INT_MAX ? hi + 1 : -3) : v;
    }
    if (span > 256) span = 256;
    return lo + (int)(b % (unsigned)span);
}

static double pick_act(reader *r) {
    unsigned b = next_byte(r);
    switch (b) {
    case 255: return NAN;
    case 254: return HUGE_VAL;
    case 253: return -HUGE_VAL;
    case 252: return 1e30;
    case 251: return -1e30;
    case 250: return 1e-310;
    case 249: return -400.0;
    case 248: return 90.0;
    default: return ((double)b - 124.0) / 12.0; /* roughly [-10, 10] */
    }
}

typedef struct {
    int T, N, C;
    fastctc_options opt;
    int *input_lengths, *label_lengths, *labels;
    size_t total_labels;
    double *acts64; /* time-major */
    int valid; /* what the rules say the status must be */
    int finite;
} problem;

static int feasible(const int *labels, int L, int T) {
    int repeats = 0, s;
    for (s = 1; s < L; ++s) repeats += labels[s] == labels[s - 1];
    return T >= L + repeats;
}

/* 1 when T * N * C elements of 8 bytes do not fit PTRDIFF_MAX (all three >= 0). */
static int dims_overflow(int T, int N, int C) {
    double bytes = 8.0 * (T > 0 ? T : 0) * (N > 0 ? N : 0) * (C > 0 ? C : 0);
    if (T < 0 || N < 0 || C < 1) return 0;
    return bytes > (double)PTRDIFF_MAX;
}

/* The documented rules, restated independently of batch_common.h. */
static int rules_ok(const problem *p) {
    int n;
    size_t k;
    if (p->T < 0 || p->N < 0 || p->C < 1) return 0;
    if (dims_overflow(p->T, p->N, p->C)) return 0;
    if (p->opt.blank < 0 || p->opt.blank >= p->C) return 0;
    if (p->opt.from_logits < 0 || p->opt.from_logits > 1 || p->opt.zero_infinity < 0 || p->opt.zero_infinity > 1 ||
        p->opt.batch_major < 0 || p->opt.batch_major > 1 || p->opt.num_threads < 0)
        return 0;
    for (n = 0; n < p->N; ++n) {
        if (p->input_lengths[n] < 0 || p->input_lengths[n] > p->T) return 0;
        if (p->label_lengths[n] < 0 || p->label_lengths[n] > (INT_MAX - 8) / 2) return 0;
    }
    for (k = 0; k < p->total_labels; ++k)
        if (p->labels[k] < 0 || p->labels[k] >= p->C) return 0;
    return 1;
}

/* acts for the layout, converted to the element type. */
static void *make_acts(const problem *p, int batch_major, int f32) {
    size_t count, i;
    void *out;
    int t, n, c;
    if (p->T <= 0 || p->N <= 0 || p->C <= 0 || dims_overflow(p->T, p->N, p->C)) return malloc(1);
    count = (size_t)p->T * (size_t)p->N * (size_t)p->C;
    out = malloc(count ? count * (f32 ? 4 : 8) : 1);
    for (t = 0; t < p->T; ++t)
        for (n = 0; n < p->N; ++n)
            for (c = 0; c < p->C; ++c) {
                size_t src = ((size_t)t * p->N + n) * p->C + c;
                size_t dst = batch_major ? ((size_t)n * p->T + t) * p->C + c : src;
                if (f32)
                    ((float *)out)[dst] = (float)p->acts64[src];
                else
                    ((double *)out)[dst] = p->acts64[src];
            }
    (void)i;
    return out;
}

static double get(const void *a, size_t i, int f32) {
    return f32 ? (double)((const float *)a)[i] : ((const double *)a)[i];
}

static fastctc_status call(const problem *p, int f32, const void *acts, void *grads, void *costs, const int *labels,
                           const int *ll, const int *il, void *ws, size_t ws_bytes, const fastctc_options *o) {
    if (f32)
        return fastctc_loss_f32((const float *)acts, (float *)grads, labels, ll, il, p->T, p->N, p->C, (float *)costs,
                                ws, ws_bytes, o);
    return fastctc_loss_f64((const double *)acts, (double *)grads, labels, ll, il, p->T, p->N, p->C, (double *)costs,
                            ws, ws_bytes, o);
}

static void fill_sentinel(void *a, size_t count, int f32) {
    size_t i;
    for (i = 0; i < count; ++i) {
        if (f32)
            ((float *)a)[i] = (float)SENTINEL;
        else
            ((double *)a)[i] = SENTINEL;
    }
}

static void check_untouched(const void *a, size_t count, int f32, const char *what) {
    size_t i;
    for (i = 0; i < count; ++i)
        if (get(a, i, f32) != SENTINEL) fail(what);
}

/* The non-finite rule (fastctc.h), restated: for a feasible sequence, a NaN or +inf in a
 * cell it reads at one of its frames -- for log-probabilities the emission of a state s
 * of the band S - 2(T - t) <= s < 2t + 2, for logits any column (and a frame with nothing
 * above -inf) -- makes its cost NaN.  An infeasible sequence reads nothing. */
static int nonfinite_rule(const problem *p, int n, const int *lab, int L, int Tn) {
    int t, c, s, S = 2 * L + 1;
    if (!feasible(lab, L, Tn)) return 0;
    for (t = 0; t < Tn; ++t) {
        const double *x = p->acts64 + ((size_t)t * p->N + n) * p->C;
        double m = -HUGE_VAL;
        if (p->opt.from_logits) {
            for (c = 0; c < p->C; ++c) {
                if (isnan(x[c]) || x[c] == HUGE_VAL) return 1;
                if (x[c] > m) m = x[c];
            }
            if (m == -HUGE_VAL) return 1;
        } else {
            for (s = 0; s < S; ++s) {
                double v = x[(s & 1) ? lab[s >> 1] : p->opt.blank];
                if (s < S - 2 * (Tn - t) || s >= 2 * t + 2) continue;
                if (isnan(v) || v == HUGE_VAL) return 1;
            }
        }
    }
    return 0;
}

/* Contract checks on a successful call (time-major or batch-major results). */
static void check_results(const problem *p, int f32, int batch_major, const void *grads, const void *costs) {
    int n, t, c, bad;
    size_t offset = 0;
    for (n = 0; n < p->N; ++n) {
        const int *lab = p->labels + offset;
        int L = p->label_lengths[n], Tn = p->input_lengths[n];
        int ok = feasible(lab, L, Tn), has_blank = 0, s;
        double cost = get(costs, (size_t)n, f32);
        offset += (size_t)L;
        /* A label equal to blank is accepted, but then several alignments spell the
         * same frame sequence and the "probability" can exceed 1: no sign check. */
        for (s = 0; s < L; ++s) has_blank |= lab[s] == p->opt.blank;
        bad = nonfinite_rule(p, n, lab, L, Tn);
        if (bad) {
            if (!isnan(cost)) fail("non-finite input, cost not NaN");
        } else if (!ok) {
            if (p->opt.zero_infinity ? cost != 0.0 : !(cost == HUGE_VAL)) fail("infeasible sequence's cost");
        } else if (isnan(cost) && p->finite) {
            /* (absurd finite values such as log-probabilities of 1e30 may overflow inside
             * the trellis; only moderate inputs promise a clean result) */
            fail("NaN cost without a non-finite input");
        }
        if (p->finite && p->opt.from_logits && !has_blank && cost < -1e-3 * (1.0 + Tn))
            fail("negative cost from logits");
        if (!grads) continue;
        for (t = 0; t < p->T; ++t) {
            double sum = 0, mag = 0;
            for (c = 0; c < p->C; ++c) {
                size_t i = batch_major ? ((size_t)n * p->T + t) * p->C + c : ((size_t)t * p->N + n) * p->C + c;
                double g = get(grads, i, f32);
                if (bad) {
                    if (t < Tn ? !isnan(g) : g != 0.0) fail("non-finite input: gradient rows not NaN (0 past T)");
                    continue;
                }
                if ((t >= Tn || !ok) && g != 0.0) fail("gradient not zero past the input length / infeasible");
                if (p->finite && (isnan(g) || isinf(g))) fail("non-finite gradient entry with a clean input");
                sum += g;
                mag += fabs(g);
            }
            if (p->finite && p->opt.from_logits && ok && t < Tn && isfinite(cost) &&
                fabs(sum) > (f32 ? 1e-3 : 1e-9) * (1.0 + mag) * p->C)
                fail("logits gradient row does not sum to 0");
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    reader r = {data, size, 0};
    problem p;
    unsigned mode, flags, null_mask;
    int n, f32, bad_ptr, huge, nloop;
    size_t k, acts_count, cap;
    memset(&p, 0, sizeof p);
    if (size < 8) return 0;

    p.T = pick(&r, 0, 24);
    p.N = pick(&r, 0, 5);
    p.C = pick(&r, 1, 9);
    /* Sizes so large that acts could not be addressed must be refused before any array
     * is read; other large sizes would need buffers this harness cannot provide. */
    huge = dims_overflow(p.T, p.N, p.C);
    if (!huge && (p.T > 64 || p.N > 64 || p.C > 64)) return 0;
    flags = next_byte(&r);
    p.opt.from_logits = (int)(flags & 1);
    p.opt.zero_infinity = (int)((flags >> 1) & 1);
    p.opt.batch_major = (int)((flags >> 2) & 1);
    p.opt.num_threads = (int)((flags >> 3) & 3);
    if ((flags >> 5) == 7) { /* occasionally an option out of range */
        unsigned w = next_byte(&r);
        int v = (w & 0x80) ? -1 - (int)(w & 3) : 2 + (int)(w & 3);
        if ((w & 0x60) == 0)
            p.opt.from_logits = v;
        else if ((w & 0x60) == 0x20)
            p.opt.zero_infinity = v;
        else if ((w & 0x60) == 0x40)
            p.opt.batch_major = v;
        else
            p.opt.num_threads = -1 - (int)(w & 3);
    }
    p.opt.blank = pick(&r, 0, p.C > 0 ? p.C - 1 : 0);
    mode = next_byte(&r);
    null_mask = next_byte(&r);

    /* Lengths; invalid ones come only from the odd table, so labels stay small. */
    cap = p.N > 0 ? (size_t)(p.N > 64 ? 1 : p.N) : 0; /* huge: never read */
    nloop = p.N > 64 ? 1 : p.N;
    p.input_lengths = (int *)malloc(cap ? cap * sizeof(int) : 1);
    p.label_lengths = (int *)malloc(cap ? cap * sizeof(int) : 1);
    for (n = 0; n < nloop; ++n) {
        p.input_lengths[n] = pick(&r, 0, p.T > 0 ? p.T : 0);
        p.label_lengths[n] = pick(&r, 0, 10);
        if (p.label_lengths[n] == 11) p.label_lengths[n] = -5; /* only invalid odd lengths */
        if (p.label_lengths[n] > 0 && p.label_lengths[n] <= 10) p.total_labels += (size_t)p.label_lengths[n];
    }
    p.labels = (int *)malloc(p.total_labels ? p.total_labels * sizeof(int) : 1);
    for (k = 0; k < p.total_labels; ++k) {
        unsigned b = next_byte(&r);
        p.labels[k] = b == 255 ? -1 : b == 254 ? p.C : b == 253 ? INT_MIN : (int)(b % (unsigned)(p.C > 0 ? p.C : 1));
    }
    acts_count = (!huge && p.T > 0 && p.N > 0 && p.C > 0) ? (size_t)p.T * p.N * p.C : 0;
    p.acts64 = (double *)malloc(acts_count ? acts_count * sizeof(double) : 1);
    p.finite = 1;
    for (k = 0; k < acts_count; ++k) {
        p.acts64[k] = pick_act(&r);
        if (!isfinite(p.acts64[k]) || fabs(p.acts64[k]) > 1e6) p.finite = 0;
    }
    p.valid = rules_ok(&p);
    bad_ptr = 0;

    for (f32 = 0; f32 < 2; ++f32) {
        int want_grad = (mode & 1) != 0;
        size_t elem = f32 ? 4 : 8, ws_size = 0;
        void *acts = make_acts(&p, p.opt.batch_major, f32);
        void *grads = malloc(acts_count ? acts_count * elem : 1);
        void *costs = malloc(cap ? cap * elem : 1);
        const void *a_arg = acts;
        void *g_arg = want_grad ? grads : NULL, *c_arg = costs, *ws = NULL, *ws_buf = NULL;
        const int *lab = p.labels, *ll = p.label_lengths, *il = p.input_lengths;
        fastctc_status st, ws_st, expect;
        int valid = p.valid;
        size_t ws_bytes = 0;

        /* Null pointers and aliasing, each a documented invalid argument when it matters. */
        if (null_mask & 1) {
            a_arg = NULL;
            if (p.T > 0 && p.N > 0) valid = 0;
        }
        if (null_mask & 2) {
            c_arg = NULL;
            if (p.N > 0) valid = 0;
        }
        if (null_mask & 4) {
            lab = NULL;
            if (p.total_labels > 0) valid = 0;
        }
        if (null_mask & 8) {
            ll = NULL;
            if (p.N > 0) valid = 0;
        }
        if (null_mask & 16) {
            il = NULL;
            if (p.N > 0) valid = 0;
        }
        if ((null_mask & 0xe0) == 0x20 && want_grad && acts_count && a_arg) {
            g_arg = (void *)a_arg;
            valid = 0;
        }
        if ((null_mask & 0xe0) == 0x40 && acts_count && p.N > 0 && a_arg) {
            c_arg = (void *)a_arg;
            valid = 0;
        }
        if (!ll || !il) bad_ptr = 1;

        /* Workspace: internal, exact, short by one, or much too small. */
        ws_st = FASTCTC_INVALID_ARGUMENT;
        if (!bad_ptr || p.N <= 0)
            ws_st = fastctc_workspace_size(ll, il, p.T, p.N, p.C, want_grad, elem, &p.opt, &ws_size);
        if (ws_st == FASTCTC_OK && !p.valid && p.total_labels == 0) fail("workspace_size accepted bad sizes");
        if (ws_st != FASTCTC_OK && p.valid && !bad_ptr) fail("workspace_size refused good sizes");
        if ((mode >> 1) & 3) {
            if (ws_st == FASTCTC_OK) {
                unsigned wm = (mode >> 1) & 3;
                ws_bytes = wm == 1 ? ws_size : wm == 2 ? ws_size - 1 : ws_size / 8;
            } else {
                ws_bytes = 256;
            }
            ws_buf = malloc(ws_bytes ? ws_bytes : 1);
            ws = ws_buf;
        }

        if (acts_count) fill_sentinel(grads, acts_count, f32);
        if (cap) fill_sentinel(costs, cap, f32);
        st = call(&p, f32, a_arg, g_arg, c_arg, lab, ll, il, ws, ws_bytes, &p.opt);
        expect = valid ? FASTCTC_OK : FASTCTC_INVALID_ARGUMENT;
        if (st == FASTCTC_WORKSPACE_TOO_SMALL) {
            if (!valid || !ws || ((mode >> 1) & 3) == 1) fail("WORKSPACE_TOO_SMALL where it cannot be");
        } else if (st != expect) {
            fprintf(stderr, "status %d, expected %d\n", (int)st, (int)expect);
            fail("status differs from the rules");
        }
        if (st != FASTCTC_OK) {
            if (acts_count) check_untouched(grads, acts_count, f32, "a failed call wrote grads");
            if (cap) check_untouched(costs, cap, f32, "a failed call wrote costs");
        } else if (valid && p.N > 0) {
            /* Same problem, other layout, other thread count, internal workspace: the
             * same bits. */
            fastctc_options o2 = p.opt;
            void *acts2, *grads2 = malloc(acts_count ? acts_count * elem : 1), *costs2 = malloc(cap * elem);
            int t, c;
            check_results(&p, f32, p.opt.batch_major, g_arg, costs);
            o2.batch_major = !p.opt.batch_major;
            o2.num_threads = p.opt.num_threads == 1 ? 2 : 1;
            acts2 = make_acts(&p, o2.batch_major, f32);
            if (call(&p, f32, acts2, g_arg ? grads2 : NULL, costs2, lab, ll, il, NULL, 0, &o2) != FASTCTC_OK)
                fail("the other layout failed");
            if (memcmp(costs, costs2, cap * elem)) fail("costs depend on layout / threads / workspace");
            if (g_arg)
                for (n = 0; n < p.N; ++n)
                    for (t = 0; t < p.T; ++t)
                        for (c = 0; c < p.C; ++c) {
                            size_t tm = ((size_t)t * p.N + n) * p.C + c, bm = ((size_t)n * p.T + t) * p.C + c;
                            size_t i1 = p.opt.batch_major ? bm : tm, i2 = o2.batch_major ? bm : tm;
                            if (memcmp((const char *)grads + i1 * elem, (const char *)grads2 + i2 * elem, elem))
                                fail("grads depend on layout / threads / workspace");
                        }
            free(acts2);
            free(grads2);
            free(costs2);
        }
        free(ws_buf);
        free(acts);
        free(grads);
        free(costs);
    }
    free(p.input_lengths);
    free(p.label_lengths);
    free(p.labels);
    free(p.acts64);
    return 0;
}
