// cuda/ctc.cu: fastctc's GPU kernels (CTC loss, forward variables and gradient).
//
// Compiled at run time by NVRTC (pyx/fastctc/_cuda_build.py) for the device's own arch,
// so nothing here includes a header: the few helpers that would come from the CUDA
// headers (infinities, half/bfloat16 conversions) are written below.  The same source
// compiles as host C++ under FCTC_EMULATION (tests/test_gpu_emulation.py): every CUDA
// thread is a host thread, a warp's 32 lanes meet at a per-warp barrier inside each
// shuffle and __syncwarp, a block meets at a per-block barrier in __syncthreads, so the
// CPU-only test machine runs the kernels at their real geometry against the CPU engine,
// and ThreadSanitizer checks that every shared-memory exchange is fenced.
//
// Design (docs/gpu.md has the numbers behind it):
//  * fctc_lse_*: log-sum-exp of every (frame, sequence) row, one warp per row, in logits
//    mode (log_softmax fused).  A full-grid bandwidth-bound kernel.
//  * fctc_trellis_*: the forward (alpha) and the backward (beta) recursions run at the
//    same time, blockIdx.y = 0 and 1: both only read the inputs, so a small batch keeps
//    twice as many SMs busy.  The backward recursion is the forward one on the reversed
//    labels and reversed time, so one code path serves both.  A sequence is handled by a
//    warp (several sequences per CTA, _w kernels, extended targets of up to 32 K states)
//    or by a whole block of up to 1024 threads (_b kernels, longer targets).  Thread i owns
//    the K consecutive states [iK, iK + K) in registers; the two states its right
//    neighbour needs cross by one shuffle (by shared memory at warp boundaries, which is
//    the block kernels' one barrier per frame).  Labels are staged in shared memory once;
//    each frame's emissions are loaded one frame ahead (register double buffer) so the
//    gather's latency overlaps the previous frame's arithmetic.
//  * normalisation off the critical path (lagged): row t is stored relative to the
//    absolute maximum of row t - 3 and the offsets are summed in double.  The maxima are
//    exact in any order: a warp butterfly of the previous row overlapping this row's
//    arithmetic, plus in the block kernels the per-warp maxima crossing at the barrier the
//    frame needs anyway.
//  * fctc_grad_*: the gradient, one warp per (frame, sequence) row over the whole grid:
//    occupancies exp(alpha + beta - log p) (the large parts combined in double), the
//    blank's summed in fixed chunks of 64 states, each label class's summed along a
//    precomputed chain in label order; every row is written with coalesced (vectorised
//    when aligned) stores, then the few label columns are overwritten after a __syncwarp.
//    No atomics; every sum has a fixed order that depends only on the sequence itself.
//  * determinism: no value depends on the launch geometry, on K, on the warp/block
//    choice or on the other sequences of the batch (the row maximum is exact, every
//    sum has a fixed order, NVRTC is run with --fmad=false so that no context-dependent
//    contraction changes a rounding), so results are bit-identical across runs, streams,
//    processes and batch compositions on one device and one NVRTC version.
//  * workspace: rows of W >= 2 Lcap + 1 states (W a multiple of 4), Lcap = min(longest
//    label sequence (or its bound), T): a target longer than T cannot fit, its loss is
//    +inf without any trellis, and no state beyond 2T is ever reachable.
//  * float16/bfloat16 inputs are read as such and computed in float32; their gradient is
//    written in the input type, costs and log_alpha in float32.
// Bad values that the host could not check without synchronising (lengths or labels
// living on the device) never cause an out-of-bounds access: the sequence's cost is NaN,
// its gradient rows 0 and its log_alpha rows -inf.  Non-finite scores follow the CPU
// engine's rule (include/fastctc/fastctc.h): an infeasible target costs +inf with zero
// gradient whatever the scores; a feasible one with a NaN or +inf in a cell it reads at a
// frame t < T_n inside the band S - 2(T_n - t) <= s < 2t + 2 (logits: any class of the
// frame, or a frame with no finite score) costs NaN with NaN gradient rows [0, T_n).

#ifndef FCTC_EMULATION
#define FCTC_DEV __device__ __forceinline__
#define FCTC_ENTRY extern "C" __global__
#define FCTC_DYN_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

typedef long long fctc_i64;

// ------------------------------------------------------------------ scalar helpers

template <class A> struct fctc_lim;
template <> struct fctc_lim<float> {
    static FCTC_DEV float ninf() { return __int_as_float(0xff800000); }
    static FCTC_DEV float pinf() { return __int_as_float(0x7f800000); }
    static FCTC_DEV float nan() { return __int_as_float(0x7fc00000); }
};
template <> struct fctc_lim<double> {
    static FCTC_DEV double ninf() { return __longlong_as_double(0xfff0000000000000LL); }
    static FCTC_DEV double pinf() { return __longlong_as_double(0x7ff0000000000000LL); }
    static FCTC_DEV double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
};

// Trellis exp/log.  float: the hardware ex2/lg2 approximations (__expf/__logf, a few
// ulp; the log argument is always in [1, 3] and the exp argument <= 0, where their
// absolute error is ~1e-7), double: the correctly rounded library functions.
#ifdef FCTC_EMULATION
FCTC_DEV float fctc_exp(float x) { return expf(x); }
FCTC_DEV float fctc_log(float x) { return logf(x); }
#else
FCTC_DEV float fctc_exp(float x) { return __expf(x); }
FCTC_DEV float fctc_log(float x) { return __logf(x); }
#endif
FCTC_DEV double fctc_exp(double x) { return exp(x); }
FCTC_DEV double fctc_log(double x) { return log(x); }

template <class A> FCTC_DEV A fctc_max(A a, A b) { return a > b ? a : b; }
template <class A> FCTC_DEV A fctc_min(A a, A b) { return a < b ? a : b; }
// Row maxima: NaN-ignoring, so the result is the same in any reduction order.
FCTC_DEV float fctc_nmax(float a, float b) { return fmaxf(a, b); }
FCTC_DEV double fctc_nmax(double a, double b) { return fmax(a, b); }
template <class A> FCTC_DEV bool fctc_finite(A v) {
    return v == v && v > fctc_lim<A>::ninf() && v < fctc_lim<A>::pinf();
}

// 16-bit storage types: raw bits, converted by hand (no cuda_fp16.h under NVRTC).
struct fctc_half {
    unsigned short bits;
};
struct fctc_bf16 {
    unsigned short bits;
};

FCTC_DEV float fctc_load(const float *p) { return *p; }
FCTC_DEV double fctc_load(const double *p) { return *p; }
FCTC_DEV float fctc_load(const fctc_bf16 *p) { return __uint_as_float(((unsigned)p->bits) << 16); }
FCTC_DEV float fctc_load(const fctc_half *p) {
#ifdef FCTC_EMULATION
    return fctc_emu_half_to_float(p->bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->bits));
    return f;
#endif
}

FCTC_DEV unsigned short fctc_bits(fctc_bf16 *, float v) {
    // round to nearest even; NaN stays a (quiet) NaN
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
FCTC_DEV unsigned short fctc_bits(fctc_half *, float v) {
#ifdef FCTC_EMULATION
    return fctc_emu_float_to_half(v);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
#endif
}
FCTC_DEV void fctc_store(float *p, float v) { *p = v; }
FCTC_DEV void fctc_store(double *p, double v) { *p = v; }
FCTC_DEV void fctc_store(fctc_bf16 *p, float v) { p->bits = fctc_bits(p, v); }
FCTC_DEV void fctc_store(fctc_half *p, float v) { p->bits = fctc_bits(p, v); }

// Four consecutive values at a 16-byte aligned address (8-byte for 16-bit types): one
// vector access instead of four.
struct __align__(16) fctc_f4 {
    float v[4];
};
struct __align__(16) fctc_d2 {
    double v[2];
};
struct __align__(8) fctc_h4 {
    unsigned short v[4];
};
FCTC_DEV void fctc_load4(const float *p, float *o) {
    const fctc_f4 q = *(const fctc_f4 *)p;
    for (int i = 0; i < 4; ++i) o[i] = q.v[i];
}
FCTC_DEV void fctc_load4(const double *p, double *o) {
    const fctc_d2 q0 = *(const fctc_d2 *)p, q1 = *(const fctc_d2 *)(p + 2);
    o[0] = q0.v[0];
    o[1] = q0.v[1];
    o[2] = q1.v[0];
    o[3] = q1.v[1];
}
template <class H> FCTC_DEV void fctc_load4(const H *p, float *o) {
    const fctc_h4 q = *(const fctc_h4 *)p;
    for (int i = 0; i < 4; ++i) {
        H h;
        h.bits = q.v[i];
        o[i] = fctc_load(&h);
    }
}
FCTC_DEV void fctc_store4(float *p, const float *o) {
    fctc_f4 q;
    for (int i = 0; i < 4; ++i) q.v[i] = o[i];
    *(fctc_f4 *)p = q;
}
FCTC_DEV void fctc_store4(double *p, const double *o) {
    fctc_d2 q0, q1;
    q0.v[0] = o[0];
    q0.v[1] = o[1];
    q1.v[0] = o[2];
    q1.v[1] = o[3];
    *(fctc_d2 *)p = q0;
    *(fctc_d2 *)(p + 2) = q1;
}
template <class H> FCTC_DEV void fctc_store4(H *p, const float *o) {
    fctc_h4 q;
    for (int i = 0; i < 4; ++i) q.v[i] = fctc_bits(p, o[i]);
    *(fctc_h4 *)p = q;
}

// An integer of a length or label array that is int32 or int64 on the device.
FCTC_DEV fctc_i64 fctc_load_int(const void *p, int is64, fctc_i64 index) {
    return is64 ? ((const long long *)p)[index] : (fctc_i64)((const int *)p)[index];
}

// ------------------------------------------------------------------ frame log-sum-exp
// lse[t * N + n] = log(sum_c exp(acts[t, n, c])), one warp per row (logits mode).  A row
// with NaN or +inf gives NaN, a row of -inf gives -inf: both mark the frame undefined.

template <class In, class A>
FCTC_DEV void fctc_frame_lse(const In *acts, fctc_i64 st_t, fctc_i64 st_n, int T, int N, int C, A *lse) {
    const int lane = threadIdx.x & 31;
    const fctc_i64 row = (fctc_i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= (fctc_i64)T * N) return; // whole warps leave together
    const fctc_i64 t = row / N, n = row % N;
    const In *x = acts + t * st_t + n * st_n;
    A m = fctc_lim<A>::ninf();
    for (int c = lane; c < C; c += 32) m = fctc_max(m, (A)fctc_load(x + c));
    for (int o = 16; o > 0; o >>= 1) m = fctc_max(m, __shfl_xor_sync(0xffffffffu, m, o));
    A s = 0;
    const bool finite = m > fctc_lim<A>::ninf() && m == m;
    if (finite)
        for (int c = lane; c < C; c += 32) s += exp((A)fctc_load(x + c) - m);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) lse[row] = finite ? m + log(s) : m;
}

// ------------------------------------------------------------------ arguments

// Every argument of the trellis and gradient kernels, in launch order: (type, name).  The
// kernels take them as separate parameters (cuda.core launches scalars and pointers, not
// structs); fastctc/_cuda_launch.py's TRELLIS_ARGS lists the same names in the same order
// (a test compares them).
// (an X-macro table, kept as written)
// clang-format off
#define FCTC_FIELDS(X)                                                                      \
    /* activations (T, N, C), class axis contiguous; strides in elements */                 \
    X(const void *, acts) X(fctc_i64, st_t) X(fctc_i64, st_n) X(int, T) X(int, N) X(int, C)   \
    /* targets: padded (N, Smax) with strides, or concatenated (concat = 1, stride st_s,  \
       tg_count labels in all).  Smax bounds every target length; Lcap = min(Smax, T)     \
       sizes the rows (W >= 2 Lcap + 1 states, a multiple of 4). */                         \
    X(const void *, targets) X(int, tg64) X(int, concat) X(fctc_i64, tg_st_n)               \
    X(fctc_i64, tg_st_s) X(fctc_i64, tg_count) X(int, Smax) X(int, Lcap) X(int, W)          \
    X(const void *, in_len) X(int, il64) X(fctc_i64, il_st)                                 \
    X(const void *, tg_len) X(int, tl64) X(fctc_i64, tl_st)                                 \
    X(int, blank) X(int, from_logits)                                                       \
    /* this launch handles the sequences with sel_lo < 2 L + 1 <= sel_hi (invalid ones    \
       count as 1) */                                                                        \
    X(int, sel_lo) X(int, sel_hi)                                                           \
    /* gradient weight of sequence n: w_mul * w[n * w_st] (w_kind 0: none, 1: f32,        \
       2: f64), divided by max(target_length, 1) * N when mean != 0; vec: rows and acts   \
       are 16-byte aligned with C % 4 == 0 (vector stores) */                              \
    X(const void *, w) X(int, w_kind) X(fctc_i64, w_st) X(double, w_mul) X(int, mean)       \
    X(int, vec)                                                                             \
    /* outputs: costs (N,) A; grad (T, N, C) In contiguous or null; log_alpha            \
       (N, alpha_rows, alpha_cols) A or null */                                             \
    X(void *, costs) X(void *, grad) X(void *, log_alpha) X(int, alpha_rows)                \
    X(int, alpha_cols)                                                                      \
    /* workspace: alpha and beta rows (N, T, W) A (null for a loss-only call), their      \
       offsets (N, T) double, lse (T, N) A (logits mode), labels / next-same-label chain  \
       / first-of-its-class flags (N, Lcap) int, info (N, 4) int, log p (N) double */     \
    X(void *, ws_alpha) X(void *, ws_beta) X(double *, ws_offa) X(double *, ws_offb)       \
    X(const void *, ws_lse) X(int *, ws_lab) X(int *, ws_nxt) X(int *, ws_first)            \
    X(int *, ws_info) X(double *, ws_ll)
// clang-format on

#define FCTC_DECLARE(type, name) type name;
struct fctc_args {
    FCTC_FIELDS(FCTC_DECLARE)
};

// info[n]: target length L, input length Tn, status, whether a label equals blank
enum { FCTC_OK = 0, FCTC_BAD_VALUES = 1, FCTC_UNDEFINED = 2 };

// ------------------------------------------------------------------ group primitives
// A group is one warp (WARP) or the whole block.  `red` is 32 slots of shared scratch.

template <bool WARP> FCTC_DEV void fctc_group_sync() {
    if (WARP)
        __syncwarp(0xffffffffu);
    else
        __syncthreads();
}

template <bool WARP> FCTC_DEV fctc_i64 fctc_group_sum(fctc_i64 v, fctc_i64 *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (WARP) return v;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    fctc_i64 s = 0;
    for (int w = 0; w < nw; ++w) s += red[w]; // integers: exact in any order
    __syncthreads(); // red may be reused at once
    return s;
}

// ------------------------------------------------------------------ the trellis

// One group (a warp, or the block) at work on one sequence, in one direction: forward
// (alpha rows) or backward (rev: the same recursion on the reversed labels and reversed
// time, which gives beta + emission; the stored row is beta without the frame's
// emission).  Stored rows are shifted by the sum of the earlier rows' maxima, kept in
// double in offa / offb.  fctc_trellis runs its three parts: fctc_load_labels,
// fctc_recursion (both directions), fctc_finish (forward: log p and the cost).
template <class A> struct fctc_group {
    int lane, warp, gsize, gtid, n;
    bool rev;
    // shared memory of this group: labels (Lcap ints, at most 32 K / 2 in the warp
    // kernels), reduction scratch, and in the block kernels the edge states and the warp
    // maxima of two frames (double-buffered so one barrier per frame suffices)
    int *lab;
    fctc_i64 *red;
    A *edge; // [2 frames][32 warps][2]
    A *wmax; // [2 frames][32 warps]
    A *fin; // the last row's two final states
    A *la; // this sequence's log_alpha (forward, when asked for), else null
};

// What fctc_load_labels learns of the group's sequence.
struct fctc_seq {
    int L, Tn; // target and input length
    int Lc, S; // labels kept (L > Lcap: longer than T, infeasible), states 2 Lc + 1
    bool feasible;
    fctc_i64 blank_in; // a label equals the blank
};

// Lengths, labels (every one checked, the first Lc staged in shared memory, reversed for
// beta), validity and feasibility of the group's sequence, and the gradient's label
// chains.  False when the group has nothing more to do: the sequence is another launch's
// share, its beta is not needed, or it is invalid (its outputs are written here).
template <class A, bool WARP> FCTC_DEV bool fctc_load_labels(const fctc_args &a, const fctc_group<A> &g, fctc_seq &q) {
    const A NINF = fctc_lim<A>::ninf();
    const int n = g.n, gtid = g.gtid, gsize = g.gsize, C = a.C, Lcap = a.Lcap;
    const bool rev = g.rev;
    int *lab = g.lab;

    // ---- lengths and validity (no trust in device-resident values)
    const fctc_i64 Tn64 = fctc_load_int(a.in_len, a.il64, n * a.il_st);
    const fctc_i64 L64 = fctc_load_int(a.tg_len, a.tl64, n * a.tl_st);
    bool valid = Tn64 >= 0 && Tn64 <= a.T && L64 >= 0 && L64 <= a.Smax && a.blank >= 0 && a.blank < C;
    fctc_i64 start = 0; // first label of sequence n in concatenated targets
    if (a.concat) {
        // the earlier lengths, summed by the group; an earlier bad length, or labels
        // running past tg_count, make this sequence invalid too (its labels cannot be
        // located), so nothing is read outside the targets; clamping keeps the sum small
        fctc_i64 part = 0, bad = 0;
        for (int j = gtid; j < n; j += gsize) {
            fctc_i64 l = fctc_load_int(a.tg_len, a.tl64, (fctc_i64)j * a.tl_st);
            if (l < 0 || l > a.Smax) {
                bad = 1;
                l = 0;
            }
            part += l;
        }
        start = fctc_group_sum<WARP>(part, g.red);
        if (fctc_group_sum<WARP>(bad, g.red) != 0) valid = false;
        if (valid && start + L64 > a.tg_count) valid = false;
    }
    q.L = valid ? (int)L64 : 0;
    q.Tn = valid ? (int)Tn64 : 0;
    q.Lc = q.L < Lcap ? q.L : Lcap;
    q.S = 2 * q.Lc + 1;
    { // this launch's share of the batch (the whole group agrees: same values)
        const int Ssel = valid ? 2 * q.L + 1 : 1;
        const int Sc = Ssel < 2 * Lcap + 1 ? Ssel : 2 * Lcap + 1;
        if (!(Sc > a.sel_lo && Sc <= a.sel_hi)) return false;
    }
    if (rev && (!valid || q.L > q.Lc || q.Tn == 0 || a.ws_beta == 0)) return false; // beta unused

    // ---- labels
    fctc_i64 badl = 0, blank_in = 0;
    for (int i = gtid; i < q.L; i += gsize) {
        fctc_i64 v = a.concat ? fctc_load_int(a.targets, a.tg64, (start + i) * a.tg_st_s)
                              : fctc_load_int(a.targets, a.tg64, n * a.tg_st_n + i * a.tg_st_s);
        if (v < 0 || v >= C) {
            badl = 1;
            v = 0;
        }
        if (v == a.blank) blank_in = 1;
        if (i < q.Lc) lab[rev ? q.Lc - 1 - i : i] = (int)v;
    }
    fctc_group_sync<WARP>(); // publishes lab (a shuffle is no memory fence)
    if (fctc_group_sum<WARP>(badl, g.red) != 0) valid = false;
    q.blank_in = fctc_group_sum<WARP>(blank_in, g.red);
    if (!valid) {
        if (rev) return false;
        if (gtid == 0) {
            ((A *)a.costs)[n] = fctc_lim<A>::nan();
            a.ws_info[4 * n + 0] = 0;
            a.ws_info[4 * n + 1] = 0;
            a.ws_info[4 * n + 2] = FCTC_BAD_VALUES;
            a.ws_info[4 * n + 3] = 0;
            a.ws_ll[n] = 0;
        }
        if (g.la)
            for (fctc_i64 i = gtid; i < (fctc_i64)a.alpha_rows * a.alpha_cols; i += gsize) g.la[i] = NINF;
        return false;
    }
    // feasibility: a target fits iff T_n >= L + (adjacent repeats); an infeasible one has
    // cost +inf and zero gradient whatever its scores, and needs no trellis (except for
    // log_alpha, whose reachable states have real values)
    fctc_i64 rep = 0;
    for (int i = 1 + gtid; i < q.Lc; i += gsize) rep += lab[i] == lab[i - 1];
    rep = fctc_group_sum<WARP>(rep, g.red);
    q.feasible = q.L <= q.Lc && (fctc_i64)q.Tn >= q.L + rep;
    if (rev && !q.feasible) return false;
    if (!rev && a.ws_alpha && q.Lc > 0) {
        // chains for the gradient: nxt[i] = next index with the same label (-1: none),
        // first[i] = no earlier index has it.  Scans from shared memory, once per sequence.
        int *nxt = a.ws_nxt + (fctc_i64)n * Lcap, *first = a.ws_first + (fctc_i64)n * Lcap;
        int *glab = a.ws_lab + (fctc_i64)n * Lcap;
        for (int i = gtid; i < q.Lc; i += gsize) {
            const int v = lab[i];
            int j = i + 1;
            while (j < q.Lc && lab[j] != v) ++j;
            int k = 0;
            while (k < i && lab[k] != v) ++k;
            nxt[i] = j < q.Lc ? j : -1;
            first[i] = k == i;
            glab[i] = v;
        }
    }
    return true;
}

// The recursion over the sequence's frames, one direction: thread gtid owns states
// s = gtid * K + j, j < K (K even).  Stores the rows and offsets (when the workspace has
// them) and the forward variables (g.la); leaves the last row in v and its offset in off.
// Returns 1 when a NaN or +inf was read in a cell of the band (the non-finite rule).
template <class In, class A, int K, bool WARP>
FCTC_DEV fctc_i64 fctc_recursion(const fctc_args &a, const fctc_group<A> &g, const fctc_seq &q, A (&v)[K],
                                 double &off) {
    const A NINF = fctc_lim<A>::ninf();
    const int lane = g.lane, warp = g.warp, gtid = g.gtid, n = g.n, T = a.T, S = q.S, Tn = q.Tn;
    const bool rev = g.rev, feasible = q.feasible;
    const int *lab = g.lab;
    A *edge = g.edge, *wmax = g.wmax, *la = g.la;
    const In *acts = (const In *)a.acts;
    const A *lse = (const A *)a.ws_lse;
    const int s0 = gtid * K;
    int col[K]; // class read by each state (-1: beyond S)
    bool skip[K]; // transition s - 2 -> s allowed
    for (int j = 0; j < K; ++j) {
        const int s = s0 + j;
        col[j] = s >= S ? -1 : (s & 1) ? lab[s >> 1] : a.blank;
        skip[j] = s < S && (s & 1) && s >= 3 && lab[s >> 1] != lab[(s >> 1) - 1];
    }
    A *rows = (A *)(rev ? a.ws_beta : a.ws_alpha);
    double *offs = rev ? a.ws_offb : a.ws_offa;
    if (rows) {
        rows += (fctc_i64)n * T * a.W;
        offs += (fctc_i64)n * T;
    }
    // emissions of frame `step` (time Tn - 1 - step for beta), prefetched a frame ahead
    A e_cur[K], e_nxt[K];
#define FCTC_EMIT(dst, step)                                                                                           \
    {                                                                                                                  \
        const int tt = rev ? Tn - 1 - (step) : (step);                                                                 \
        const In *x = acts + tt * a.st_t + (fctc_i64)n * a.st_n;                                                       \
        const A sh = a.from_logits ? lse[(fctc_i64)tt * a.N + n] : (A)0;                                               \
        for (int j = 0; j < K; ++j) dst[j] = col[j] < 0 ? NINF : (A)fctc_load(x + col[j]) - sh;                        \
    }
    for (int j = 0; j < K; ++j) v[j] = NINF;
    // Lagged normalisation: row t is stored relative to O_t = the absolute maximum of row
    // t - 3 (O_t = O_{t-1} while that is unknown), so the row maxima are reduced off the
    // critical path: the butterfly of row t - 1 (and in the block kernels the cross-warp
    // step of row t - 2, after the barrier the edges need anyway) overlaps row t's
    // arithmetic.  Values then stay within about three frames of log-probabilities of 0,
    // and the offsets are summed in double, so float32 keeps its accuracy.  The lag is
    // the same in every kernel: no value depends on the geometry.
    off = 0; // O_{t-1}, then O_t
    double o1 = 0, o2 = 0; // O_{t-1}, O_{t-2} at the start of step t
    A q_m = NINF, r_m = NINF; // queued maxima (relative) ...
    double q_o = 0, r_o = 0; // ... and the offsets they are relative to
    A lb_prev = NINF; // this thread's maximum of the previous row
    fctc_i64 undefined = 0;
    const int steps = (feasible || la) ? Tn : 0;
    if (steps > 0) FCTC_EMIT(e_cur, 0)
    for (int step = 0; step < steps; ++step) {
        if (step + 1 < steps) FCTC_EMIT(e_nxt, step + 1)
        // the two states left of this thread's first one, from the previous row
        A l1 = __shfl_up_sync(0xffffffffu, v[K - 1], 1), l2 = __shfl_up_sync(0xffffffffu, v[K - 2], 1);
        if (lane == 0) {
            if (WARP || warp == 0 || step == 0) {
                l1 = NINF;
                l2 = NINF;
            } else {
                l1 = edge[((step & 1) * 32 + warp - 1) * 2 + 1];
                l2 = edge[((step & 1) * 32 + warp - 1) * 2];
            }
        }
        // the shift of this row: O_t - O_{t-1}, towards the absolute maximum of row t - 3
        const A prev_max = fctc_finite(r_m) ? (A)((double)r_m + r_o - off) : (A)0;
        off += (double)prev_max;
        A nv[K], stored[K];
        A best = NINF;
        // the band of states a complete path passes through at this frame (the same
        // formula in the reversed coordinates of beta): the non-finite rule looks there,
        // and the row maximum too, so that a +inf no path uses cannot stall the shifts
        const int blo = feasible ? S - 2 * (Tn - step) : 0, bhi = feasible ? 2 * step + 2 : S;
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const bool in_band = s0 + j >= blo && s0 + j < bhi;
            // the non-finite rule: NaN or +inf in a cell the sequence reads, in its band
            if (in_band && col[j] >= 0 && !(e_cur[j] < fctc_lim<A>::pinf())) undefined = 1;
            A b; // the row's log-add-exp part, shifted by the previous row's maximum
            if (step == 0) {
                b = s0 + j < 2 ? (A)0 : NINF;
            } else if ((j & 1) == 0) {
                // even state (blank; s0 is a multiple of K, so j's parity is s's): two
                // predecessors, log(1 + exp(lo - hi)) -- one exp instead of two
                const A p0 = v[j], p1 = j >= 1 ? v[j - 1] : l1;
                const A hi = fctc_max(p0, p1), lo = fctc_min(p0, p1);
                b = hi == NINF ? NINF : (hi - prev_max) + fctc_log((A)1 + fctc_exp(lo - hi));
            } else {
                // odd state (a label): three predecessors when the skip is allowed; the
                // maximum's own term is exactly 1, so two exps
                const A p0 = v[j], p1 = j >= 1 ? v[j - 1] : l1;
                const A p2 = skip[j] ? (j >= 2 ? v[j - 2] : j == 1 ? l1 : l2) : NINF;
                const A h01 = fctc_max(p0, p1), l01 = fctc_min(p0, p1);
                const A m = fctc_max(h01, p2), mid = fctc_min(h01, p2);
                b = m == NINF ? NINF : (m - prev_max) + fctc_log((A)1 + fctc_exp(l01 - m) + fctc_exp(mid - m));
            }
            nv[j] = b == NINF ? NINF : e_cur[j] + b;
            stored[j] = rev ? b : nv[j];
            if (in_band) best = fctc_nmax(best, nv[j]);
        }
        // maxima of earlier rows, independent of this row's arithmetic above
        A wm = lb_prev; // row step - 1: this warp's maximum
        for (int o = 16; o > 0; o >>= 1) wm = fctc_nmax(wm, __shfl_xor_sync(0xffffffffu, wm, o));
        lb_prev = best;
        if (WARP) {
            // row step - 1 is known now; step + 1 uses row step - 2
            r_m = q_m;
            r_o = q_o;
            q_m = wm;
            q_o = o1;
        } else {
            // row step - 2: the per-warp maxima written before the last barrier
            A bm = step >= 1 && lane < (int)(blockDim.x >> 5) ? wmax[(step & 1) * 32 + lane] : NINF;
            for (int o = 16; o > 0; o >>= 1) bm = fctc_nmax(bm, __shfl_xor_sync(0xffffffffu, bm, o));
            r_m = step >= 2 ? bm : NINF;
            r_o = o2;
            const int buf = (step + 1) & 1; // read at the next step
            if (lane == 31) {
                edge[(buf * 32 + warp) * 2] = nv[K - 2];
                edge[(buf * 32 + warp) * 2 + 1] = nv[K - 1];
            }
            if (lane == 0) wmax[buf * 32 + warp] = wm;
            __syncthreads();
        }
        o2 = o1;
        o1 = off;
        const int tt = rev ? Tn - 1 - step : step;
        if (rows) {
            A *row = rows + (fctc_i64)tt * a.W;
            for (int j = 0; j < K; ++j) {
                const int s = s0 + j;
                if (s < S) row[rev ? S - 1 - s : s] = stored[j];
            }
            if (gtid == 0) offs[tt] = off;
        }
        if (la && tt < a.alpha_rows)
            for (int j = 0; j < K; ++j) {
                const int s = s0 + j;
                if (s < S && s < a.alpha_cols) la[(fctc_i64)tt * a.alpha_cols + s] = (A)((double)nv[j] + off);
            }
        for (int j = 0; j < K; ++j) {
            v[j] = nv[j];
            e_cur[j] = e_nxt[j];
        }
    }
#undef FCTC_EMIT
    return undefined;
}

// Log p, the cost and the sequence's info from the last alpha row v (stored minus off);
// log_alpha past the sequence's frames and states: -inf.  Forward only.
template <class A, int K, bool WARP>
FCTC_DEV void fctc_finish(const fctc_args &a, const fctc_group<A> &g, const fctc_seq &q, const A (&v)[K], double off,
                          fctc_i64 undefined) {
    const A NINF = fctc_lim<A>::ninf();
    const int n = g.n, gtid = g.gtid, gsize = g.gsize, S = q.S, Tn = q.Tn;
    const bool feasible = q.feasible;
    const int s0 = gtid * K;
    A *fin = g.fin, *la = g.la, *costs = (A *)a.costs;
    for (int j = 0; j < K; ++j) {
        const int s = s0 + j;
        if (s == S - 1) fin[0] = v[j];
        if (s == S - 2) fin[1] = v[j];
    }
    fctc_group_sync<WARP>();
    double ll;
    if (!feasible)
        ll = fctc_lim<double>::ninf();
    else if (Tn == 0)
        ll = 0.0; // (L == 0: feasible)
    else {
        const A u = fin[0], w = S > 1 ? fin[1] : NINF;
        const A m = fctc_max(u, w);
        ll = m == NINF ? fctc_lim<double>::ninf() : (double)(m + log(exp(u - m) + exp(w - m))) + off;
    }
    // the non-finite rule (the CPU engine's): a feasible sequence with a NaN or +inf in a
    // cell it reads in its band (logits: anywhere in the frame, through the log-sum-exp;
    // a frame with no finite score too) has cost NaN and NaN gradient rows
    int status = FCTC_OK;
    if (fctc_group_sum<WARP>(feasible ? undefined : 0, g.red) != 0) status = FCTC_UNDEFINED;
    const A cost = (A)(-ll);
    if (gtid == 0) {
        costs[n] = status == FCTC_UNDEFINED ? fctc_lim<A>::nan() : cost;
        a.ws_info[4 * n + 0] = q.L;
        a.ws_info[4 * n + 1] = Tn;
        a.ws_info[4 * n + 2] = status;
        a.ws_info[4 * n + 3] = (int)(q.blank_in != 0);
        a.ws_ll[n] = ll;
    }
    if (la) {
        // states past S, and frames past Tn: -inf
        for (fctc_i64 i = gtid; i < (fctc_i64)a.alpha_rows * a.alpha_cols; i += gsize) {
            const fctc_i64 t = i / a.alpha_cols, s = i % a.alpha_cols;
            if (t >= Tn || s >= S) la[i] = NINF;
        }
    }
}

template <class In, class A, int K, bool WARP> FCTC_DEV void fctc_trellis(const fctc_args &a, unsigned char *shm) {
    fctc_group<A> g;
    g.lane = threadIdx.x & 31;
    g.warp = threadIdx.x >> 5;
    g.gsize = WARP ? 32 : (int)blockDim.x;
    g.gtid = WARP ? g.lane : (int)threadIdx.x;
    g.n = WARP ? (int)(blockIdx.x * (blockDim.x >> 5)) + g.warp : (int)blockIdx.x;
    if (g.n >= a.N) return; // a whole warp (or block)
    g.rev = blockIdx.y == 1;
    const int lab_slots = WARP ? 16 * K : a.Lcap;
    const int lab_pad = (lab_slots + 3) & ~3;
    const int group_bytes = lab_pad * 4 + 32 * 8 + (WARP ? 0 : (2 * 32 * 2 + 2 * 32) * (int)sizeof(A)) + 32;
    unsigned char *mine = shm + (WARP ? g.warp * group_bytes : 0);
    g.lab = (int *)mine;
    g.red = (fctc_i64 *)(mine + lab_pad * 4);
    g.edge = (A *)(mine + lab_pad * 4 + 32 * 8);
    g.wmax = g.edge + 2 * 32 * 2;
    g.fin = (A *)(mine + group_bytes - 32);
    g.la = (!g.rev && a.log_alpha) ? (A *)a.log_alpha + (fctc_i64)g.n * a.alpha_rows * a.alpha_cols : (A *)0;

    fctc_seq q;
    if (!fctc_load_labels<A, WARP>(a, g, q)) return;
    A v[K];
    double off;
    const fctc_i64 undefined = fctc_recursion<In, A, K, WARP>(a, g, q, v, off);
    if (!g.rev) fctc_finish<A, K, WARP>(a, g, q, v, off, undefined);
}

// ------------------------------------------------------------------ the gradient

// One warp per (frame, sequence) row: grad[t, n, :] = weight * (softmax - occupancy) in
// logits mode, -weight * occupancy for log-probabilities; 0 past the input length and for
// infeasible or invalid sequences; NaN for undefined ones.
template <class In, class A> FCTC_DEV void fctc_gradient(const fctc_args &a) {
    __shared__ A part[8][257]; // blank partial sums, one slot per chunk of 64 states
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const fctc_i64 row = (fctc_i64)blockIdx.x * (blockDim.x >> 5) + warp;
    if (row >= (fctc_i64)a.T * a.N) return; // whole warps
    const int t = (int)(row / a.N), n = (int)(row % a.N);
    const int C = a.C;
    In *g = (In *)a.grad + row * C;
    const int *info = a.ws_info + 4 * n;
    const int L = info[0], Tn = info[1], status = info[2], blank_in = info[3];
    const double ll = a.ws_ll[n];
    const bool live = status == FCTC_OK && t < Tn && ll > fctc_lim<double>::ninf() && L <= a.Lcap;
    if (!live) {
        const A fill = (status == FCTC_UNDEFINED && t < Tn) ? fctc_lim<A>::nan() : (A)0;
        for (int c = lane; c < C; c += 32) fctc_store(g + c, fill);
        return;
    }
    double weight = a.w_mul;
    if (a.w_kind == 1) weight *= (double)((const float *)a.w)[n * a.w_st];
    if (a.w_kind == 2) weight *= ((const double *)a.w)[n * a.w_st];
    if (a.mean) weight /= (double)(L > 1 ? L : 1) * (double)a.N;
    const A scale = (A)weight;
    const int S = 2 * L + 1;
    const A *arow = (const A *)a.ws_alpha + ((fctc_i64)n * a.T + t) * a.W;
    const A *brow = (const A *)a.ws_beta + ((fctc_i64)n * a.T + t) * a.W;
    const A gofs = (A)(a.ws_offa[(fctc_i64)n * a.T + t] + a.ws_offb[(fctc_i64)n * a.T + t] - ll);
    // a state off every complete path has alpha or beta -inf: occupancy 0, whatever the
    // other side holds (a NaN or +inf score no path reads must not leak in)
#define FCTC_OCC(s)                                                                                                    \
    ((arow[s] == fctc_lim<A>::ninf() || brow[s] == fctc_lim<A>::ninf()) ? (A)0 : fctc_exp(arow[s] + brow[s] + gofs))
    // blank occupancy: chunk k sums the even states of [64 k, 64 k + 64) in order, then
    // the chunks are summed in order (the same sum whatever the launch)
    const int chunks = (S + 63) >> 6;
    for (int k = lane; k < chunks; k += 32) {
        A sum = 0;
        const int end = 64 * k + 64 < S ? 64 * k + 64 : S;
        for (int s = 64 * k; s < end; s += 2) sum += FCTC_OCC(s);
        part[warp][k] = sum;
    }
    __syncwarp(0xffffffffu);
    A blank_occ = 0;
    for (int k = 0; k < chunks; ++k) blank_occ += part[warp][k];
    const In *x = (const In *)a.acts + (fctc_i64)t * a.st_t + (fctc_i64)n * a.st_n;
    const A shift = a.from_logits ? ((const A *)a.ws_lse)[(fctc_i64)t * a.N + n] : (A)0;
#define FCTC_BASE(c) (a.from_logits ? scale * fctc_exp((A)fctc_load(x + (c)) - shift) : (A)0)
    // every class: the softmax term (coalesced, four classes a lane-step when aligned)
    if (a.vec) {
        for (int c = 4 * lane; c < C; c += 128) {
            A o[4];
            fctc_load4(x + c, o);
            for (int q = 0; q < 4; ++q) o[q] = a.from_logits ? scale * fctc_exp(o[q] - shift) : (A)0;
            fctc_store4(g + c, o);
        }
    } else {
        for (int c = lane; c < C; c += 32) fctc_store(g + c, FCTC_BASE(c));
    }
    __syncwarp(0xffffffffu); // the label columns below overwrite some of those stores
    const int *glab = a.ws_lab + (fctc_i64)n * a.Lcap;
    const int *nxt = a.ws_nxt + (fctc_i64)n * a.Lcap;
    const int *first = a.ws_first + (fctc_i64)n * a.Lcap;
    for (int i = lane; i < L; i += 32) {
        if (!first[i]) continue;
        A occ = 0;
        for (int j = i; j >= 0; j = nxt[j]) occ += FCTC_OCC(2 * j + 1);
        const int c = glab[i];
        if (c == a.blank) occ += blank_occ;
        fctc_store(g + c, FCTC_BASE(c) - scale * occ);
    }
    if (lane == 0 && !blank_in) fctc_store(g + a.blank, FCTC_BASE(a.blank) - scale * blank_occ);
#undef FCTC_OCC
#undef FCTC_BASE
}

// ------------------------------------------------------------------ the loss reduction

// torch's reduction of the per-sequence costs (fastctc/_reduction.py reduce_losses) in one
// launch, so that a reduced loss costs the caller one kernel instead of a chain of framework
// operations.  c_n = costs[n], +inf -> 0 when zero_inf (NaN and -inf stay):
//   mode 0 ('none'): out[n] = c_n (out may be costs: each value is read, then written, by
//                    the same thread);
//   mode 1 ('sum'):  out[0] = sum_n c_n;
//   mode 2 ('mean'): out[0] = sum_n c_n * w_n, w_n = 1 / (max(target_length_n, 1) * N), the
//                    CPU engine's weight written the same way (pyx/fastctc/_fast.pyx
//                    _mean_weight); N == 0 gives NaN (the mean of no losses), 'sum' gives 0.
// The sums are in double, rounded once to A.  Their order depends on N only, not on the
// launch (one block of up to 256 threads): virtual lane v < 256 sums n = v, v + 256, v + 512,
// ... in that order (lanes are dealt to the threads, tid, tid + blockDim.x, ...), then the 256
// partials meet in a fixed tree, part[v] += part[v + h] for h = 128, 64, ..., 1, one barrier
// a level.  With --fmad=false the result is bit-identical across runs, streams and devices.
enum { FCTC_REDUCE_LANES = 256 };

template <class A>
FCTC_DEV void fctc_reduce(const A *costs, int N, const void *tg_len, int tl64, fctc_i64 tl_st, int mode, int zero_inf,
                          A *out) {
    __shared__ double part[FCTC_REDUCE_LANES];
    const int tid = threadIdx.x, nth = blockDim.x;
    if (mode == 0) {
        for (int n = tid; n < N; n += nth) {
            const A c = costs[n];
            out[n] = zero_inf && c == fctc_lim<A>::pinf() ? (A)0 : c;
        }
        return;
    }
    for (int v = tid; v < FCTC_REDUCE_LANES; v += nth) {
        double s = 0;
        for (int n = v; n < N; n += FCTC_REDUCE_LANES) {
            double c = (double)costs[n];
            if (zero_inf && c == fctc_lim<double>::pinf()) c = 0;
            if (mode == 2) {
                const fctc_i64 tl = fctc_load_int(tg_len, tl64, (fctc_i64)n * tl_st);
                const double d = tl > 1 ? (double)tl : 1.0;
                c *= 1.0 / (d * N);
            }
            s += c;
        }
        part[v] = s;
    }
    __syncthreads();
    for (int h = FCTC_REDUCE_LANES / 2; h > 0; h >>= 1) {
        for (int v = tid; v < h; v += nth) part[v] += part[v + h];
        __syncthreads();
    }
    if (tid == 0) out[0] = mode == 2 && N == 0 ? fctc_lim<A>::nan() : (A)part[0];
}

// ------------------------------------------------------------------ entry points

#define FCTC_PARAM(type, name) type name,
#define FCTC_FILL(type, name) a.name = name;

// Launch bounds: 4 warps per CTA in the warp kernels; the block kernels take up to 1024
// threads with 4 states each, or up to 512 with 16 (registers: 64 and 128 a thread).
#define FCTC_TRELLIS(suffix, In, A, tag, K, WARP, BOUND)                                                               \
    FCTC_ENTRY void __launch_bounds__(BOUND)                                                                           \
        fctc_trellis_##suffix##_##tag##K(FCTC_FIELDS(FCTC_PARAM) int end_marker) {                                     \
        FCTC_DYN_SHARED(fctc_shm);                                                                                     \
        fctc_args a;                                                                                                   \
        FCTC_FIELDS(FCTC_FILL)                                                                                         \
        (void)end_marker;                                                                                              \
        fctc_trellis<In, A, K, WARP>(a, fctc_shm);                                                                     \
    }

#define FCTC_KERNELS(suffix, In, A)                                                                                    \
    FCTC_ENTRY void fctc_lse_##suffix(const In *acts, fctc_i64 st_t, fctc_i64 st_n, int T, int N, int C, A *lse) {     \
        fctc_frame_lse<In, A>(acts, st_t, st_n, T, N, C, lse);                                                         \
    }                                                                                                                  \
    FCTC_TRELLIS(suffix, In, A, w, 2, true, 128)                                                                       \
    FCTC_TRELLIS(suffix, In, A, w, 4, true, 128)                                                                       \
    FCTC_TRELLIS(suffix, In, A, w, 8, true, 128)                                                                       \
    FCTC_TRELLIS(suffix, In, A, b, 4, false, 1024)                                                                     \
    FCTC_TRELLIS(suffix, In, A, b, 16, false, 512)                                                                     \
    FCTC_ENTRY void __launch_bounds__(256) fctc_grad_##suffix(FCTC_FIELDS(FCTC_PARAM) int end_marker) {                \
        fctc_args a;                                                                                                   \
        FCTC_FIELDS(FCTC_FILL)                                                                                         \
        (void)end_marker;                                                                                              \
        fctc_gradient<In, A>(a);                                                                                       \
    }

FCTC_KERNELS(f32, float, float)
FCTC_KERNELS(f64, double, double)
FCTC_KERNELS(f16, fctc_half, float)
FCTC_KERNELS(bf16, fctc_bf16, float)

// The reduction of the costs (fctc_reduce above): one block of 256 threads.
#define FCTC_REDUCE(suffix, A)                                                                                         \
    FCTC_ENTRY void __launch_bounds__(256) fctc_reduce_##suffix(const A *costs, int N, const void *tg_len, int tl64,   \
                                                                fctc_i64 tl_st, int mode, int zero_inf, A *out) {      \
        fctc_reduce<A>(costs, N, tg_len, tl64, tl_st, mode, zero_inf, out);                                            \
    }

FCTC_REDUCE(f32, float)
FCTC_REDUCE(f64, double)
