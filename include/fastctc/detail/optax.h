/* fastctc/detail/optax.h: one sequence of optax-style CTC (optax.ctc_loss_with_forward_probs
 * semantics), forward and reverse-mode gradient, written once for float and double.
 *
 * Why a second trellis: optax's recurrence is not the PyTorch-style one in trellis.h.
 *   - Impossible states hold log_epsilon (a finite stand-in for log 0), never -inf, and the
 *     transitions that CTC forbids are not skipped but penalised by adding log_epsilon, so
 *     a target that cannot fit still has a finite loss of about -log_epsilon.
 *   - Padded frames (pad = 1) may sit anywhere: the state is carried over unchanged, as a
 *     blend pad * previous + (1 - pad) * next (computed literally, as optax does).
 *   - The state is split into phi[n] (blank after n labels, n = 0..N) and emit[n] (label n
 *     just emitted, n = 0..N-1) over the full padded label width N, label padding included;
 *     a label outside [0, K) emits with log-probability 0 (optax's one-hot of such a label
 *     is all zeros).
 * To give the same numbers, every operation is done in the same order and precision as
 * optax's scan: logaddexp as max + log1p(exp(-|a - b|)), log_softmax as
 * (x - max) - log(sum(exp(x - max))).  The gradient is the exact reverse-mode derivative of
 * that recurrence (what jax.grad of optax.ctc_loss gives, with logaddexp's derivative
 * exp(a - out) and infinities replaced by 0 as JAX does), pulled back through the
 * log_softmax: d loss / d logits.  It does not depend on the padding indicators'
 * derivative (padding is treated as a constant).
 *
 * Before including: define FCTC_USE_F32 or FCTC_USE_F64 and include template.h, and define
 * FCTC_OX_LOG1P (log1pf / log1p).  Internal; nothing here allocates, prints or aborts.
 *
 * Layouts (element strides, class axis contiguous):
 *   x[t * x_ts + k]           logits, t < T, k < K
 *   pad[t * pad_s]            frame padding indicator
 *   labels[n]                 n < N (the whole padded row); label_len = N - #padded labels
 *   phi[t * phi_ts + n]       out: log alpha_blank,    n <= N (row T-1 after the last
 *                             epsilon transition, as optax returns it)
 *   emit[t * emit_ts + n]     out: log alpha_nonblank, n < N
 *   grad[t * grad_ts + k]     out (optional, NULL = none): d loss / d logits
 *   work                      FCTC_FN(fctc_optax_work_size)(T, N) elements
 * Returns 0 (the only status: inputs are validated by the caller).
 */
#include <math.h>
#include <stddef.h>

static inline FCTC_T FCTC_FN(fctc_ox_lae)(FCTC_T a, FCTC_T b) {
    FCTC_T d = a - b;
    if (d != d) return a + b; /* NaN, or infinities of the same sign */
    FCTC_T m = a > b ? a : b;
    return m + FCTC_OX_LOG1P(FCTC_EXP(d < 0 ? d : -d)); /* max + log1p(exp(-|d|)) */
}

/* d logaddexp(a, b) / d a = exp(a - out), with +-inf replaced by 0 first (JAX's rule). */
static inline FCTC_T FCTC_FN(fctc_ox_dlae)(FCTC_T a, FCTC_T out) {
    FCTC_T ra = isinf(a) ? (FCTC_T)0 : a;
    FCTC_T ro = isinf(out) ? (FCTC_T)0 : out;
    return FCTC_EXP(ra - ro);
}

static inline ptrdiff_t FCTC_FN(fctc_optax_work_size)(ptrdiff_t T, ptrdiff_t N) {
    /* lse shift+log per frame (2T), pre-final phi row (N+1), pphi (N+1),
       adjoints: g_phi, g_emit, g_pphi, g_phi_prev, g_emit_prev (3(N+1) + 2N) */
    return 2 * T + 5 * (N + 1) + 2 * N + 2;
}

/* log_softmax pieces of frame t: max and log(sum(exp(x - max))) */
static inline void FCTC_FN(fctc_ox_lse)(const FCTC_T *xt, int K, FCTC_T *mx, FCTC_T *lsum) {
    FCTC_T m = xt[0];
    for (int k = 1; k < K; ++k) m = xt[k] > m ? xt[k] : m;
    FCTC_T s = 0;
    for (int k = 0; k < K; ++k) s += FCTC_EXP(xt[k] - m);
    *mx = m;
    *lsum = FCTC_LOG(s);
}

static inline FCTC_T FCTC_FN(fctc_ox_lp)(const FCTC_T *xt, int k, int K, FCTC_T mx, FCTC_T lsum) {
    if (k < 0 || k >= K) return (FCTC_T)0;
    return (xt[k] - mx) - lsum;
}

/* The blank scores a frame starts from: the previous frame's blanks (the initial state at
 * t = 0: pphi_src and pemit_src NULL), each n > 0 merged with the previous emission of
 * label n-1 through the epsilon transition (free unless label n-1 repeats as label n).
 * Used by the forward sweep and, recomputed, by the reverse sweep. */
static inline void FCTC_FN(fctc_ox_prev_blanks)(const FCTC_T *pphi_src, const FCTC_T *pemit_src, const int *labels,
                                                int N, FCTC_T eps, FCTC_T *pphi) {
    const FCTC_T zero = 0;
    pphi[0] = pphi_src ? pphi_src[0] : zero;
    for (int n = 1; n <= N; ++n) {
        FCTC_T prev = pphi_src ? pphi_src[n] : eps;
        FCTC_T pe = pemit_src ? pemit_src[n - 1] : eps;
        FCTC_T rep = n < N && labels[n - 1] == labels[n] ? (FCTC_T)1 : zero;
        pphi[n] = FCTC_FN(fctc_ox_lae)(prev, pe + eps * rep);
    }
}

static int FCTC_FN(fctc_optax_sequence)(const FCTC_T *x, ptrdiff_t x_ts, int T, int K, const FCTC_T *pad,
                                        ptrdiff_t pad_s, const int *labels, int N, int label_len, int blank, FCTC_T eps,
                                        FCTC_T *phi, ptrdiff_t phi_ts, FCTC_T *emit, ptrdiff_t emit_ts, FCTC_T *grad,
                                        ptrdiff_t grad_ts, FCTC_T *work, FCTC_T *loss) {
    FCTC_T *mxs = work, *lsums = work + T;
    FCTC_T *phi_pre = lsums + T; /* row T-1 before the final epsilon transition */
    FCTC_T *pphi = phi_pre + (N + 1);
    FCTC_T *g_phi = pphi + (N + 1);
    FCTC_T *g_pphi = g_phi + (N + 1);
    FCTC_T *g_phi_prev = g_pphi + (N + 1);
    FCTC_T *g_emit = g_phi_prev + (N + 1);
    FCTC_T *g_emit_prev = g_emit + N;
    const FCTC_T one = 1, zero = 0;
#define REP(n) ((n) + 1 < N && labels[(n)] == labels[(n) + 1] ? one : zero)

    if (T <= 0) {
        *loss = 0;
        return 0;
    }
    for (int t = 0; t < T; ++t) {
        const FCTC_T *xt = x + (ptrdiff_t)t * x_ts;
        FCTC_T mx, lsum;
        FCTC_FN(fctc_ox_lse)(xt, K, &mx, &lsum);
        mxs[t] = mx;
        lsums[t] = lsum;
        FCTC_T *nphi = phi + (ptrdiff_t)t * phi_ts, *nemit = emit + (ptrdiff_t)t * emit_ts;
        const FCTC_T *pphi_src = t ? phi + (ptrdiff_t)(t - 1) * phi_ts : NULL;
        const FCTC_T *pemit_src = t ? emit + (ptrdiff_t)(t - 1) * emit_ts : NULL;
        FCTC_T p = pad[(ptrdiff_t)t * pad_s];
        FCTC_T lpp = FCTC_FN(fctc_ox_lp)(xt, blank, K, mx, lsum);
        /* previous state (the initial one at t = 0) and its epsilon-updated blank scores */
        FCTC_FN(fctc_ox_prev_blanks)(pphi_src, pemit_src, labels, N, eps, pphi);
        /* emissions first (they read nothing written this frame), then blanks; the blank
           row may alias nothing of the previous one since rows differ in t */
        for (int n = 0; n < N; ++n) {
            FCTC_T pe = pemit_src ? pemit_src[n] : eps;
            FCTC_T lpe = FCTC_FN(fctc_ox_lp)(xt, labels[n], K, mx, lsum);
            FCTC_T raw = FCTC_FN(fctc_ox_lae)(pphi[n] + lpe, pe + lpe);
            nemit[n] = p * pe + (one - p) * raw;
        }
        for (int n = 0; n <= N; ++n) {
            FCTC_T prev = pphi_src ? pphi_src[n] : (n == 0 ? zero : eps);
            FCTC_T raw = pphi[n] + lpp;
            if (n > 0) {
                FCTC_T pe = pemit_src ? pemit_src[n - 1] : eps;
                raw = FCTC_FN(fctc_ox_lae)(raw, pe + lpp + eps * (one - REP(n - 1)));
            }
            nphi[n] = p * prev + (one - p) * raw;
        }
    }
    /* the last epsilon transition (emit n -> blank n+1, no penalty), written into row T-1 */
    {
        FCTC_T *last = phi + (ptrdiff_t)(T - 1) * phi_ts;
        const FCTC_T *lemit = emit + (ptrdiff_t)(T - 1) * emit_ts;
        for (int n = 0; n <= N; ++n) phi_pre[n] = last[n];
        for (int n = 0; n < N; ++n) last[n + 1] = FCTC_FN(fctc_ox_lae)(last[n + 1], lemit[n]);
        /* loss = -<last, one_hot(label_len)>: a label length outside [0, N] selects nothing */
        *loss = (label_len >= 0 && label_len <= N) ? -last[label_len] : -zero;
    }
    if (!grad) return 0;

    /* ---- reverse mode: adjoints of loss with respect to each state, frame by frame ---- */
    {
        const FCTC_T *last = phi + (ptrdiff_t)(T - 1) * phi_ts;
        const FCTC_T *lemit = emit + (ptrdiff_t)(T - 1) * emit_ts;
        for (int n = 0; n <= N; ++n) g_phi[n] = 0;
        for (int n = 0; n < N; ++n) g_emit[n] = 0;
        if (label_len >= 0 && label_len <= N) {
            FCTC_T gl = -one;
            int n = label_len;
            if (n == 0)
                g_phi[0] = gl;
            else {
                g_phi[n] = gl * FCTC_FN(fctc_ox_dlae)(phi_pre[n], last[n]);
                g_emit[n - 1] = gl * FCTC_FN(fctc_ox_dlae)(lemit[n - 1], last[n]);
            }
        }
    }
    for (int t = T - 1; t >= 0; --t) {
        const FCTC_T *xt = x + (ptrdiff_t)t * x_ts;
        FCTC_T *gt = grad + (ptrdiff_t)t * grad_ts;
        FCTC_T mx = mxs[t], lsum = lsums[t];
        const FCTC_T *pphi_src = t ? phi + (ptrdiff_t)(t - 1) * phi_ts : NULL; /* rows < T-1: unmodified */
        const FCTC_T *pemit_src = t ? emit + (ptrdiff_t)(t - 1) * emit_ts : NULL;
        FCTC_T p = pad[(ptrdiff_t)t * pad_s];
        FCTC_T lpp = FCTC_FN(fctc_ox_lp)(xt, blank, K, mx, lsum);
        FCTC_T g_lpp = 0;
        for (int k = 0; k < K; ++k) gt[k] = 0;
        /* recompute this frame's epsilon-updated blank scores */
        FCTC_FN(fctc_ox_prev_blanks)(pphi_src, pemit_src, labels, N, eps, pphi);
        for (int n = 0; n <= N; ++n) {
            g_pphi[n] = 0;
            g_phi_prev[n] = p * g_phi[n]; /* carried over on padded frames */
        }
        for (int n = 0; n < N; ++n) g_emit_prev[n] = p * g_emit[n];
        /* blanks: nphi_raw[n] = lae(pphi[n] + lpp, emit[n-1] + lpp + eps (1 - rep)) */
        for (int n = 0; n <= N; ++n) {
            FCTC_T g = (one - p) * g_phi[n];
            FCTC_T c = pphi[n] + lpp;
            if (n == 0) {
                g_pphi[0] += g;
                g_lpp += g;
                continue;
            }
            FCTC_T pe = pemit_src ? pemit_src[n - 1] : eps;
            FCTC_T v = pe + lpp + eps * (one - REP(n - 1));
            FCTC_T out = FCTC_FN(fctc_ox_lae)(c, v);
            FCTC_T gc = g * FCTC_FN(fctc_ox_dlae)(c, out);
            FCTC_T gv = g * FCTC_FN(fctc_ox_dlae)(v, out);
            g_pphi[n] += gc;
            g_lpp += gc + gv;
            g_emit_prev[n - 1] += gv;
        }
        /* emissions: nemit_raw[n] = lae(pphi[n] + lpe, emit[n] + lpe) */
        for (int n = 0; n < N; ++n) {
            FCTC_T g = (one - p) * g_emit[n];
            FCTC_T pe = pemit_src ? pemit_src[n] : eps;
            int lab = labels[n];
            FCTC_T lpe = FCTC_FN(fctc_ox_lp)(xt, lab, K, mx, lsum);
            FCTC_T a = pphi[n] + lpe, b = pe + lpe;
            FCTC_T out = FCTC_FN(fctc_ox_lae)(a, b);
            FCTC_T ga = g * FCTC_FN(fctc_ox_dlae)(a, out);
            FCTC_T gb = g * FCTC_FN(fctc_ox_dlae)(b, out);
            g_pphi[n] += ga;
            g_emit_prev[n] += gb;
            if (lab >= 0 && lab < K) gt[lab] += ga + gb;
        }
        if (blank >= 0 && blank < K) gt[blank] += g_lpp;
        /* pphi[n] = lae(phi[n], emit[n-1] + eps rep): back to the previous state */
        g_phi_prev[0] += g_pphi[0];
        for (int n = 1; n <= N; ++n) {
            FCTC_T prev = pphi_src ? pphi_src[n] : eps;
            FCTC_T pe = pemit_src ? pemit_src[n - 1] : eps;
            FCTC_T u = pe + eps * REP(n - 1);
            g_phi_prev[n] += g_pphi[n] * FCTC_FN(fctc_ox_dlae)(prev, pphi[n]);
            g_emit_prev[n - 1] += g_pphi[n] * FCTC_FN(fctc_ox_dlae)(u, pphi[n]);
        }
        /* log_softmax pulled back: g_x = g_lp - softmax * sum(g_lp) */
        {
            FCTC_T s = 0;
            for (int k = 0; k < K; ++k) s += gt[k];
            for (int k = 0; k < K; ++k) gt[k] -= FCTC_EXP((xt[k] - mx) - lsum) * s;
        }
        for (int n = 0; n <= N; ++n) g_phi[n] = g_phi_prev[n];
        for (int n = 0; n < N; ++n) g_emit[n] = g_emit_prev[n];
    }
#undef REP
    return 0;
}
