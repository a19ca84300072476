// cuda/ctc.cu: fastctc's GPU kernels (CTC loss, forward variables and gradient).
//
// Compiled at run time by NVRTC (pyx/fastctc/_cuda.py) for the device's own arch, so
// nothing here may include a header: the few helpers that would come from the CUDA
// headers (infinities, half/bfloat16 conversions) are written below.  The same source
// also compiles as host C++ under FCTC_EMULATION (tests/test_cuda.py), where a block is
// run by ordinary threads with a barrier for __syncthreads; that lets the CPU-only test
// machine check the kernels' arithmetic against the CPU engine.
//
// Algorithm (the same as include/fastctc/trellis.inl, one CUDA block per sequence):
//  * extended target l' = (blank, y1, blank, ..., yL, blank), S = 2L + 1 states; the
//    block's threads take the states of a row in strides of blockDim, so any S works.
//  * one row per frame, log space, max-shifted log-add-exp; each stored row is shifted
//    by the previous row's maximum and the removed offsets are summed in double, so
//    float32 stays accurate however many nats the log-probabilities span.
//  * feasible band: at frame t only states in [S - 2(T - t), 2t + 2) lie on a complete
//    path; the lower bound is dropped when log_alpha is requested (its values are real).
//  * rows live in a global workspace sized from the padded shapes: two rows for a
//    loss-only call, the sequence's alpha (T rows) for a gradient call (beta keeps two
//    rows), never alpha and beta for the whole batch at once.
//  * gradient without atomics: walking time backwards, the occupancies of a row are
//    summed per label along a precomputed "next state with the same label" chain, the
//    blank's by a fixed-shape block reduction, and then each (t, c) gradient value is
//    written exactly once.  Reductions use a fixed tree (butterfly shuffles, then the
//    warps in index order), so repeated runs give bit-identical results.
//  * float16/bfloat16 inputs are read as such and computed in float32; their gradient
//    is written in the input type, costs and log_alpha in float32.
// Bad values that the host could not check without synchronising (lengths or labels
// living on the device) never cause an out-of-bounds access: the sequence's cost is NaN,
// its gradient rows 0 and its log_alpha rows -inf.

#ifndef FCTC_EMULATION
#define FCTC_DEV __device__ __forceinline__
#define FCTC_WARP 32
#endif

typedef long long fctc_i64;

// ------------------------------------------------------------------ scalar helpers

template <class A> struct fctc_lim;
template <> struct fctc_lim<float> {
    static FCTC_DEV float ninf() { return __int_as_float(0xff800000); }
    static FCTC_DEV float nan() { return __int_as_float(0x7fc00000); }
};
template <> struct fctc_lim<double> {
    static FCTC_DEV double ninf() { return __longlong_as_double(0xfff0000000000000LL); }
    static FCTC_DEV double nan() { return __longlong_as_double(0x7ff8000000000000LL); }
};

FCTC_DEV float fctc_exp(float x) { return expf(x); }
FCTC_DEV double fctc_exp(double x) { return exp(x); }
FCTC_DEV float fctc_log(float x) { return logf(x); }
FCTC_DEV double fctc_log(double x) { return log(x); }

template <class A> FCTC_DEV A fctc_max(A a, A b) { return a > b ? a : b; }

// 16-bit storage types: raw bits, converted by hand (no cuda_fp16.h under NVRTC).
struct fctc_half { unsigned short bits; };
struct fctc_bf16 { unsigned short bits; };

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

FCTC_DEV void fctc_store(float *p, float v) { *p = v; }
FCTC_DEV void fctc_store(double *p, double v) { *p = v; }
FCTC_DEV void fctc_store(fctc_bf16 *p, float v) {
    // round to nearest even; NaN stays a (quiet) NaN
    unsigned u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p->bits = (unsigned short)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    p->bits = (unsigned short)(u >> 16);
}
FCTC_DEV void fctc_store(fctc_half *p, float v) {
#ifdef FCTC_EMULATION
    p->bits = fctc_emu_float_to_half(v);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p->bits = h;
#endif
}

// An integer of a length or label array that is int32 or int64 on the device.
FCTC_DEV fctc_i64 fctc_load_int(const void *p, int is64, fctc_i64 index) {
    return is64 ? ((const long long *)p)[index] : (fctc_i64)((const int *)p)[index];
}

// ------------------------------------------------------------------ block reductions
// Butterfly within each warp (every lane ends with the same bits: partners always add
// the same two operands), then the warp results in warp order.  `slot` alternates
// between the two halves of `red` so that one __syncthreads per reduction suffices.

struct fctc_op_max { template <class A> FCTC_DEV A operator()(A a, A b) const { return a > b ? a : b; } };
struct fctc_op_sum { template <class A> FCTC_DEV A operator()(A a, A b) const { return a + b; } };

template <class A, class Op>
FCTC_DEV A fctc_block_reduce(A v, A *red, int &slot, Op op) {
    for (int o = FCTC_WARP / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / FCTC_WARP, nwarps = blockDim.x / FCTC_WARP;
    A *r = red + slot * 32;
    if (threadIdx.x % FCTC_WARP == 0) r[warp] = v;
    __syncthreads();
    A total = r[0];
    for (int w = 1; w < nwarps; ++w) total = op(total, r[w]);
    slot ^= 1;
    return total;
}

// ------------------------------------------------------------------ frame log-sum-exp
// lse[t * N + n] = log(sum_c exp(acts[t, n, c])), one warp per frame (logits mode).

template <class In, class A>
FCTC_DEV void fctc_frame_lse(const In *acts, fctc_i64 st_t, fctc_i64 st_n, int T, int N, int C, A *lse) {
    const int lane = threadIdx.x % FCTC_WARP;
    const fctc_i64 row = (fctc_i64)blockIdx.x * (blockDim.x / FCTC_WARP) + threadIdx.x / FCTC_WARP;
    const bool live = row < (fctc_i64)T * N;
    const int t = live ? (int)(row / N) : 0, n = live ? (int)(row % N) : 0;
    const In *x = acts + t * st_t + n * st_n;
    A m = fctc_lim<A>::ninf();
    if (live)
        for (int c = lane; c < C; c += FCTC_WARP) m = fctc_max(m, (A)fctc_load(x + c));
    for (int o = FCTC_WARP / 2; o > 0; o >>= 1) m = fctc_max(m, __shfl_xor_sync(0xffffffffu, m, o));
    A s = 0;
    const bool finite = m > fctc_lim<A>::ninf() && m == m;
    if (live && finite)
        for (int c = lane; c < C; c += FCTC_WARP) s += fctc_exp((A)fctc_load(x + c) - m);
    for (int o = FCTC_WARP / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (live && lane == 0) lse[row] = finite ? m + fctc_log(s) : m;
}

// ------------------------------------------------------------------ the trellis

// Every argument of the trellis kernel, in launch order: (type, name).  The kernel takes
// them as separate parameters (cuda.core launches scalars and pointers, not structs) and
// _cuda.py's _TRELLIS_ARGS lists the same names in the same order (a test compares them).
#define FCTC_FIELDS(X)                                                                      \
    /* activations (T, N, C), class axis contiguous; strides in elements */                 \
    X(const void *, acts) X(fctc_i64, st_t) X(fctc_i64, st_n) X(int, T) X(int, N) X(int, C)   \
    /* targets: padded (N, Smax) with strides, or concatenated (concat = 1, stride st_s,  \
       tg_count labels in all) */                                                           \
    X(const void *, targets) X(int, tg64) X(int, concat) X(fctc_i64, tg_st_n)               \
    X(fctc_i64, tg_st_s) X(fctc_i64, tg_count) X(int, Smax)                                 \
    X(const void *, in_len) X(int, il64) X(fctc_i64, il_st)                                 \
    X(const void *, tg_len) X(int, tl64) X(fctc_i64, tl_st)                                 \
    X(int, blank) X(int, from_logits)                                                       \
    /* gradient weight of sequence n: w_mul * w[n * w_st] (w_kind 0: none, 1: f32,        \
       2: f64), divided by max(target_length, 1) * N when mean != 0 */                      \
    X(const void *, w) X(int, w_kind) X(fctc_i64, w_st) X(double, w_mul) X(int, mean)       \
    /* outputs: costs (N,) A; grad (T, N, C) In contiguous or null; log_alpha            \
       (N, alpha_rows, alpha_cols) A or null */                                             \
    X(void *, costs) X(void *, grad) X(void *, log_alpha) X(int, alpha_rows)                \
    X(int, alpha_cols)                                                                      \
    /* workspace, rows of width W = 2 Smax + 5: alpha (ws_alpha_n elements per sequence:  \
       T rows with a gradient, else 2), beta (2 rows), gamma (1 row), gsum / lab / next   \
       (max(Smax, 1) each), off (T doubles), lse (T * N, logits mode), cls (C ints,        \
       gradient) */                                                                         \
    X(void *, ws_alpha) X(fctc_i64, ws_alpha_n) X(void *, ws_beta) X(void *, ws_gamma)     \
    X(void *, ws_gsum) X(double *, ws_off) X(const void *, ws_lse) X(int *, ws_lab)          \
    X(int *, ws_next) X(int *, ws_cls)

#define FCTC_DECLARE(type, name) type name;
struct fctc_args { FCTC_FIELDS(FCTC_DECLARE) };

template <class In, class A>
FCTC_DEV void fctc_trellis(const fctc_args &a) {
    __shared__ A red[64];
    int slot = 0;
    const A NINF = fctc_lim<A>::ninf();
    const int n = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    const int T = a.T, C = a.C, Smax = a.Smax;
    const bool want_grad = a.grad != 0, want_alpha = a.log_alpha != 0;
    const fctc_i64 W = 2 * (fctc_i64)Smax + 5;
    const fctc_i64 LS = Smax > 0 ? Smax : 1;

    // ---- lengths, labels, validity (no trust in device-resident values)
    const fctc_i64 Tn64 = fctc_load_int(a.in_len, a.il64, n * a.il_st);
    const fctc_i64 L64 = fctc_load_int(a.tg_len, a.tl64, n * a.tl_st);
    bool valid = Tn64 >= 0 && Tn64 <= T && L64 >= 0 && L64 <= Smax;
    fctc_i64 start = 0;  // first label of sequence n in concatenated targets
    if (a.concat) {
        // every thread sums the earlier lengths itself: same value everywhere, no sync.
        // An earlier bad length, or labels running past the tg_count given, make this
        // sequence invalid too (its labels cannot be located), so nothing is read outside
        // the targets array; lengths are clamped so the sum cannot overflow.
        for (int j = 0; j < n; ++j) {
            fctc_i64 l = fctc_load_int(a.tg_len, a.tl64, j * a.tl_st);
            if (l < 0 || l > Smax) { valid = false; l = 0; }
            start += l;
        }
        if (valid && start + L64 > a.tg_count) valid = false;
    }
    // after every validity check: L sizes the label reads below
    const int Tn = valid ? (int)Tn64 : 0, L = valid ? (int)L64 : 0;
    int *lab = a.ws_lab + n * LS, *nxt = a.ws_next + n * LS;
    int *cls = want_grad ? a.ws_cls + (fctc_i64)n * C : (int *)0;
    A bad = 0, repeats = 0;
    for (int i = tid; i < L; i += nt) {
        fctc_i64 v = a.concat ? fctc_load_int(a.targets, a.tg64, (start + i) * a.tg_st_s)
                              : fctc_load_int(a.targets, a.tg64, n * a.tg_st_n + i * a.tg_st_s);
        if (v < 0 || v >= C) { bad = 1; v = 0; }
        lab[i] = (int)v;
    }
    if (want_grad)
        for (int c = tid; c < C; c += nt) cls[c] = -1;
    if (!(a.blank >= 0 && a.blank < C)) bad = 1;
    if (fctc_block_reduce(bad, red, slot, fctc_op_max()) > 0) valid = false;  // also publishes lab
    for (int i = 1 + tid; i < L; i += nt) repeats += (A)(lab[i] == lab[i - 1]);
    repeats = fctc_block_reduce(repeats, red, slot, fctc_op_sum());
    if (want_grad && valid) {
        // chains: nxt[i] = next label index with the same class; cls[c] = first index of c
        for (int i = tid; i < L; i += nt) {
            int v = lab[i], j = i + 1;
            while (j < L && lab[j] != v) ++j;
            nxt[i] = j < L ? j : -1;
            int k = 0;
            while (k < i && lab[k] != v) ++k;
            if (k == i) cls[v] = i;
        }
    }
    __syncthreads();

    const int S = 2 * L + 1;
    const bool feasible = valid && Tn >= L + (int)repeats;
    const bool prune = !want_alpha;
    const In *acts = (const In *)a.acts;
    const A *lse = (const A *)a.ws_lse;
    A *alpha = (A *)a.ws_alpha + n * a.ws_alpha_n;
    double *off_rows = a.ws_off + (fctc_i64)n * T;
    A *la = want_alpha ? (A *)a.log_alpha + (fctc_i64)n * a.alpha_rows * a.alpha_cols : (A *)0;
#define FCTC_EXT(s) (((s) & 1) ? lab[(s) >> 1] : a.blank)
#define FCTC_SKIP(s) (((s) & 1) && (s) >= 3 && lab[(s) >> 1] != lab[((s) >> 1) - 1])

    // ---- forward
    double loglik = fctc_lim<double>::ninf();
    double off = 0;
    if (!valid) {
        loglik = 0;  // unused: the cost becomes NaN
    } else if (Tn == 0) {
        loglik = L == 0 ? 0.0 : fctc_lim<double>::ninf();
    } else if (feasible || want_alpha) {
        A prev_max = 0;
        for (int t = 0; t < Tn; ++t) {
            const In *x = acts + t * a.st_t + n * a.st_n;
            const A shift = a.from_logits ? lse[(fctc_i64)t * a.N + n] : (A)0;
            A *cur = alpha + (want_grad ? (fctc_i64)t : (fctc_i64)(t & 1)) * W + 2;
            const A *prev = alpha + (want_grad ? (fctc_i64)(t - 1) : (fctc_i64)((t - 1) & 1)) * W + 2;
            const int lo = prune ? fctc_max(0, S - 2 * (Tn - t)) : 0;
            const int hi = S < 2 * t + 2 ? S : 2 * t + 2;
            if (t > 0) off += (double)prev_max;
            A best = NINF;
            for (int s = tid - 2; s < S + 2; s += nt) {
                A v = NINF;
                if (s >= lo && s < hi) {
                    const A e = (A)fctc_load(x + FCTC_EXT(s)) - shift;
                    if (t == 0) {
                        v = e;
                    } else {
                        const A p0 = prev[s], p1 = prev[s - 1], p2 = FCTC_SKIP(s) ? prev[s - 2] : NINF;
                        const A m = fctc_max(fctc_max(p0, p1), p2);
                        if (m != NINF)
                            v = (e - prev_max) + m + fctc_log(fctc_exp(p0 - m) + fctc_exp(p1 - m) + fctc_exp(p2 - m));
                    }
                }
                cur[s] = v;
                best = fctc_max(best, v);
                if (la && t < a.alpha_rows && s >= 0 && s < a.alpha_cols)
                    la[(fctc_i64)t * a.alpha_cols + s] = s < hi ? (A)((double)v + off) : NINF;
            }
            if (la && t < a.alpha_rows)
                for (int s = S + 2 + tid; s < a.alpha_cols; s += nt) la[(fctc_i64)t * a.alpha_cols + s] = NINF;
            if (want_grad && tid == 0) off_rows[t] = off;
            best = fctc_block_reduce(best, red, slot, fctc_op_max());  // also publishes cur
            prev_max = (best > NINF && best == best) ? best : (A)0;
        }
        const A *last = alpha + (want_grad ? (fctc_i64)(Tn - 1) : (fctc_i64)((Tn - 1) & 1)) * W + 2;
        const A u = last[S - 1];
        const A v = S > 1 ? last[S - 2] : NINF;
        const A m = fctc_max(u, v);
        const double tail = m == NINF ? fctc_lim<double>::ninf() : (double)(m + fctc_log(fctc_exp(u - m) + fctc_exp(v - m)));
        loglik = tail + off;
    }
    if (la) {
        const int from = (valid && Tn > 0) ? Tn : 0;
        for (fctc_i64 i = (fctc_i64)from * a.alpha_cols + tid; i < (fctc_i64)a.alpha_rows * a.alpha_cols; i += nt)
            la[i] = NINF;
    }
    if (tid == 0) ((A *)a.costs)[n] = valid ? (A)(-loglik) : fctc_lim<A>::nan();

    // ---- backward: gradient rows, written once each
    if (!want_grad) return;
    In *g = (In *)a.grad;
    const A ll = (A)loglik;
    const bool walk = valid && Tn > 0 && ll != NINF;
    for (fctc_i64 i = tid; i < (fctc_i64)(T - (walk ? Tn : 0)) * C; i += nt) {
        const fctc_i64 t = (walk ? Tn : 0) + i / C, c = i % C;
        fctc_store(g + (t * a.N + n) * C + c, (A)0);
    }
    if (!walk) return;
    double weight = a.w_mul;
    if (a.w_kind == 1) weight *= (double)((const float *)a.w)[n * a.w_st];
    if (a.w_kind == 2) weight *= ((const double *)a.w)[n * a.w_st];
    if (a.mean) weight /= (double)(L > 1 ? L : 1) * (double)a.N;
    const A scale = (A)weight;
    A *beta = (A *)a.ws_beta + (fctc_i64)n * 2 * W;
    A *gam = (A *)a.ws_gamma + (fctc_i64)n * W;
    A *gsum = (A *)a.ws_gsum + n * LS;
    double beta_off = 0;
    A next_max = 0;
    for (int t = Tn - 1; t >= 0; --t) {
        const In *x = acts + t * a.st_t + n * a.st_n;
        const A shift = a.from_logits ? lse[(fctc_i64)t * a.N + n] : (A)0;
        const A *arow = alpha + (fctc_i64)t * W + 2;
        A *bcur = beta + (fctc_i64)(t & 1) * W + 2;          // beta(t) - beta_off
        const A *bnext = beta + (fctc_i64)((t + 1) & 1) * W + 2;  // beta(t+1) + emit(t+1) - beta_off
        const int lo = prune ? fctc_max(0, S - 2 * (Tn - t)) : 0;
        const int hi = S < 2 * t + 2 ? S : 2 * t + 2;
        if (t < Tn - 1) beta_off += (double)next_max;
        // alpha + beta - log p, the large parts combined in double (see trellis.inl)
        const A gofs = (A)(off_rows[t] + beta_off - loglik);
        A blank_part = 0;
        for (int s = tid - 2; s < S + 2; s += nt) {
            A v = NINF;
            if (s >= lo && s < hi) {
                if (t == Tn - 1) {
                    v = (s >= S - 2) ? (A)0 : NINF;
                } else {
                    const A b0 = bnext[s], b1 = bnext[s + 1], b2 = s + 2 < S && FCTC_SKIP(s + 2) ? bnext[s + 2] : NINF;
                    const A m = fctc_max(fctc_max(b0, b1), b2);
                    if (m != NINF)
                        v = (m - next_max) + fctc_log(fctc_exp(b0 - m) + fctc_exp(b1 - m) + fctc_exp(b2 - m));
                }
            }
            bcur[s] = v;
            if (s >= 0 && s < S) {
                const A occ = (s >= lo && s < hi) ? fctc_exp(arow[s] + v + gofs) : (A)0;
                gam[s] = occ;
                if (!(s & 1)) blank_part += occ;
            }
        }
        const A blank_occ = fctc_block_reduce(blank_part, red, slot, fctc_op_sum());  // publishes gam
        for (int i = tid; i < L; i += nt) {
            if (cls[lab[i]] != i) continue;
            A sum = 0;
            for (int j = i; j >= 0; j = nxt[j]) sum += gam[2 * j + 1];
            gsum[i] = sum;
        }
        A best = NINF;
        if (t > 0) {
            for (int s = tid - 2; s < S + 2; s += nt) {
                A v = NINF;
                if (s >= lo && s < hi && bcur[s] != NINF) v = bcur[s] + ((A)fctc_load(x + FCTC_EXT(s)) - shift);
                bcur[s] = v;  // becomes bnext of frame t - 1
                best = fctc_max(best, v);
            }
        }
        best = fctc_block_reduce(best, red, slot, fctc_op_max());  // publishes gsum, bcur
        next_max = (best > NINF && best == best) ? best : (A)0;
        In *grow = g + ((fctc_i64)t * a.N + n) * C;
        for (int c = tid; c < C; c += nt) {
            A occ = c == a.blank ? blank_occ : (A)0;
            const int first = cls[c];
            if (first >= 0) occ += gsum[first];
            const A base = a.from_logits ? scale * fctc_exp((A)fctc_load(x + c) - shift) : (A)0;
            fctc_store(grow + c, base - scale * occ);
        }
    }
#undef FCTC_EXT
#undef FCTC_SKIP
}

// ------------------------------------------------------------------ entry points

#ifndef FCTC_EMULATION
#define FCTC_ENTRY extern "C" __global__
#endif

#define FCTC_PARAM(type, name) type name,
#define FCTC_FILL(type, name) a.name = name;

#define FCTC_KERNELS(suffix, In, A)                                                              \
    FCTC_ENTRY void fctc_lse_##suffix(const In *acts, fctc_i64 st_t, fctc_i64 st_n, int T, int N, \
                                      int C, A *lse) {                                          \
        fctc_frame_lse<In, A>(acts, st_t, st_n, T, N, C, lse);                                  \
    }                                                                                            \
    FCTC_ENTRY void fctc_ctc_##suffix(FCTC_FIELDS(FCTC_PARAM) int end_marker) {                  \
        fctc_args a;                                                                             \
        FCTC_FIELDS(FCTC_FILL)                                                                   \
        (void)end_marker;                                                                        \
        fctc_trellis<In, A>(a);                                                                  \
    }

FCTC_KERNELS(f32, float, float)
FCTC_KERNELS(f64, double, double)
FCTC_KERNELS(f16, fctc_half, float)
FCTC_KERNELS(bf16, fctc_bf16, float)
