/* fastctc/detail/rows_scalar.h: the portable (scalar) row kernels of the CTC trellis.
 *
 * The trellis (trellis.h) is written against six row operations (plus two test
 * hooks, exp and log over an array); each ISA provides
 * them (rows_avx2.h, rows_avx512.h, rows_neon.h) and dispatch.h picks one set
 * at run time.  This file is the reference every vector version must match, and the
 * fallback on any CPU.
 *
 * Row conventions (S = number of extended states, 2L+1):
 *  - alpha/beta rows are padded: row[-2], row[-1] and row[S], row[S+1] exist, and the
 *    trellis keeps the two cells on each side of the computed band at -inf, so the
 *    s-1, s-2 (alpha) and s+1, s+2 (beta) neighbours are always readable.
 *  - skip[s] is 0 where the transition s-2 -> s is allowed (s odd, label differs from
 *    the label two states back) and -inf elsewhere, so "prev[s-2] + skip[s]" needs no
 *    branch; skip[S], skip[S+1] are -inf.
 * Instantiated for float and double through template.h.
 */

/* cur[s] = emit(s) + lse(prev[s], prev[s-1], prev[s-2] + skip[s]) - shift for s in [lo, hi),
 * with emit(s) = x[ext[s]] - emit_shift, the frame's log-probability of state s's label
 * (emit_shift is the frame's log-sum-exp in logits mode, else 0); returns max over
 * [lo, hi) of cur (-inf when the band is empty or all -inf).  A NaN or +inf emission
 * makes its state NaN or +inf even where the state is unreachable (-inf + e), and a NaN
 * in prev carries on to the states it feeds: the non-finite rule's signal, which the band
 * carries to the end states (trellis.h).  The caller passes the previous row's maximum as shift, which keeps every stored row's maximum near 0 (the
 * removed offsets are summed in double by the trellis).  tmp: a scratch row (W
 * elements, same padding) the vector kernels gather the emissions into. */
static FCTC_T FCTC_FN(fctc_alpha_row_scalar)(const FCTC_T *prev, FCTC_T *cur, const FCTC_T *x, const int *ext,
                                             FCTC_T emit_shift, const FCTC_T *skip, int lo, int hi, FCTC_T shift,
                                             FCTC_T *tmp) {
    (void)tmp;
    FCTC_T best = FCTC_NEG_INF;
    for (int s = lo; s < hi; ++s) {
        FCTC_T a = prev[s], b = prev[s - 1], c = prev[s - 2] + skip[s];
        FCTC_T m = a > b ? a : b;
        m = m > c ? m : c;
        /* e + m: -inf for an unreachable state (m = -inf) unless the emission is NaN or +inf */
        FCTC_T em = (x[ext[s]] - (emit_shift + shift)) + m;
        FCTC_T v = (m == FCTC_NEG_INF) ? em : em + FCTC_LOG(FCTC_EXP(a - m) + FCTC_EXP(b - m) + FCTC_EXP(c - m));
        FCTC_T probe = a + b + c; /* NaN exactly when an input is NaN (or +inf meets -inf) */
        if (probe != probe) v = probe;
        cur[s] = v;
        best = v > best ? v : best;
    }
    return best;
}

/* cur[s] = lse(nb[s], nb[s+1], nb[s+2] + skip[s+2]) - shift for s in [lo, hi), where nb
 * holds beta(t+1) + emit(t+1), the backward variable including its frame's emission;
 * shift is nb's maximum (see alpha_row).  Also writes nb_out[s] = cur[s] + emit(t, s)
 * (the next step's nb, emit as in alpha_row) and returns its maximum over [lo, hi). */
static FCTC_T FCTC_FN(fctc_beta_row_scalar)(const FCTC_T *nb, FCTC_T *cur, FCTC_T *nb_out, const FCTC_T *x,
                                            const int *ext, FCTC_T emit_shift, const FCTC_T *skip, int lo, int hi,
                                            FCTC_T shift, FCTC_T *tmp) {
    (void)tmp;
    FCTC_T best = FCTC_NEG_INF;
    for (int s = lo; s < hi; ++s) {
        FCTC_T a = nb[s], b = nb[s + 1], c = nb[s + 2] + skip[s + 2];
        FCTC_T m = a > b ? a : b;
        FCTC_T e = x[ext[s]];
        m = m > c ? m : c;
        FCTC_T v = (m == FCTC_NEG_INF) ? FCTC_NEG_INF
                                       : (m - shift) + FCTC_LOG(FCTC_EXP(a - m) + FCTC_EXP(b - m) + FCTC_EXP(c - m));
        cur[s] = v;
        FCTC_T o = v + (e - emit_shift);
        nb_out[s] = o;
        best = o > best ? o : best;
    }
    return best;
}

/* out[s] = exp(a[s] + b[s] + offset) for s in [lo, hi): the state occupancy, where
 * offset = (alpha and beta row offsets) - log p, formed in double by the trellis. */
static void FCTC_FN(fctc_gamma_row_scalar)(const FCTC_T *a, const FCTC_T *b, FCTC_T offset, FCTC_T *out, int lo,
                                           int hi) {
    for (int s = lo; s < hi; ++s) out[s] = FCTC_EXP(a[s] + b[s] + offset);
}

/* log(sum_c exp(x[c])) over one frame, max-shifted.  All -inf gives -inf. */
static FCTC_T FCTC_FN(fctc_row_lse_scalar)(const FCTC_T *x, int C, const FCTC_T *next) {
    (void)next;
    FCTC_T m = FCTC_NEG_INF;
    int c;
    for (c = 0; c < C; ++c) m = x[c] > m ? x[c] : m;
    if (m == FCTC_NEG_INF || m != m) return m;
    FCTC_T sum = 0;
    for (c = 0; c < C; ++c) sum += FCTC_EXP(x[c] - m);
    return m + FCTC_LOG(sum);
}

/* out[c] = scale * exp(x[c] - shift): the softmax part of the logits gradient. */
static void FCTC_FN(fctc_scaled_exp_row_scalar)(const FCTC_T *x, FCTC_T shift, FCTC_T scale, FCTC_T *out, int C) {
    for (int c = 0; c < C; ++c) out[c] = scale * FCTC_EXP(x[c] - shift);
}

/* out[c] = value for c in [0, C). */
static void FCTC_FN(fctc_fill_row_scalar)(FCTC_T *out, FCTC_T value, int C, int stream) {
    (void)stream;
    for (int c = 0; c < C; ++c) out[c] = value;
}

/* Test hooks: libm's exp / log over an array (the reference the vector versions match). */
static void FCTC_FN(fctc_exp_array_scalar)(const FCTC_T *x, FCTC_T *out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; ++i) out[i] = FCTC_EXP(x[i]);
}

static void FCTC_FN(fctc_log_array_scalar)(const FCTC_T *x, FCTC_T *out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; ++i) out[i] = FCTC_LOG(x[i]);
}

/* out[c] = scale * softmax(x)[c]; returns log(sum_c exp(x[c])), max-shifted.  One exp per
 * class (exp(x - max) is stored, summed, then rescaled while the row is still in cache),
 * where row_lse + scaled_exp_row take two.  A row whose maximum is -inf or NaN gives what
 * those two give (the log-sum-exp is that maximum, the row NaN). */
static FCTC_T FCTC_FN(fctc_softmax_row_scalar)(const FCTC_T *x, int C, FCTC_T scale, FCTC_T *out, const FCTC_T *next) {
    (void)next;
    FCTC_T m = FCTC_NEG_INF, sum = 0;
    int c;
    for (c = 0; c < C; ++c) m = x[c] > m ? x[c] : m;
    if (m == FCTC_NEG_INF || m != m) {
        for (c = 0; c < C; ++c) out[c] = scale * FCTC_EXP(x[c] - m);
        return m;
    }
    for (c = 0; c < C; ++c) {
        FCTC_T e = FCTC_EXP(x[c] - m);
        out[c] = e;
        sum += e;
    }
    FCTC_T r = scale / sum;
    for (c = 0; c < C; ++c) out[c] *= r;
    return m + FCTC_LOG(sum);
}
