/* fastctc/detail/rows_vec.h: the CTC row kernels written once against the thin vector layer.
 *
 * Included by each ISA file (rows_avx2.h, rows_avx512.h, rows_neon.h) after it has
 * defined VT (a vector of VW FCTC_T lanes), the V_* operations, FCTC_ISA and FCTC_VTARGET
 * (the target attribute every function here carries), and after vecmath.h.  Semantics
 * are those of rows_scalar.h, which documents each kernel; these differ only in
 * rounding (vector exp/log, summation order).
 *
 * How the rows vectorise: the states of one frame depend only on the previous frame, so
 * a row is a straight loop over s with unaligned loads at s, s-1, s-2 (the padded rows
 * make the neighbours readable).  A band [lo, hi) that is not a multiple of VW ends with
 * one vector placed at hi - VW, overlapping the previous one: every kernel here is a pure
 * function of rows it does not write, so recomputing a few states gives the same values
 * and the loop needs neither masks nor a scalar tail.  Bands narrower than one vector go
 * to the scalar kernels.  Emissions x[ext[s]] are first gathered into the caller's
 * scratch row with scalar loads: measured faster than the AVX2 gather instruction on
 * the AMD cores this was tuned on (the row is hot in L1 when the vector loop reads it).
 *
 * log-add-exp of three terms: with m the largest, md the middle and mn the smallest,
 * lse = m + log(1 + e^(md-m) + e^(mn-m)): two exponentials and one log per state instead
 * of three and one, the sum lies in [1, 3] (so the log needs no special cases), and when
 * all three are -inf the result is forced to -inf (never NaN).
 */

/* A row's emissions x[l'(s)]: the even states all hold the blank, so only the odd
 * (label) states are gathered, with scalar loads, into tmp[s]; a vector of states
 * [s, s + VW) is then tmp's vector with the blank broadcast into the lanes of even
 * states (blend masks for even and odd s, from the lane parities).  Half the scalar
 * gathers of gathering every state: those loads and stores were about a sixth of the
 * alpha row's time on the char shape.  The even entries of tmp are never used. */
#define FCTC_EMISSIONS_BEGIN()                                                                                         \
    for (int q = lo | 1; q < hi; q += 2) tmp[q] = x[ext[q]];                                                           \
    const VT blank_emission = V_SET1(x[ext[0]]);                                                                       \
    const VM blank_lanes[2] = {V_CMP_EQ(V_LOAD(FCTC_FN(fctc_lane_parity)), FCTC_C(0.0)),                               \
                               V_CMP_EQ(V_LOAD(FCTC_FN(fctc_lane_parity) + 1), FCTC_C(0.0))}
#define FCTC_EMISSIONS_AT(s) V_SELECT(blank_lanes[(s)&1], blank_emission, V_LOAD(tmp + (s)))

static inline FCTC_VTARGET VT FCTC_VN(fctc_vlse3)(VT a, VT b, VT c, VT *m_out) {
    VT ab_hi = V_MAX(a, b), ab_lo = V_MIN(a, b);
    VT m = V_MAX(ab_hi, c);
    VT mn = V_MIN(ab_lo, c);
    VT md = V_MAX(ab_lo, V_MIN(ab_hi, c));
    VT sum = V_ADD(V_ADD(FCTC_C(1.0), FCTC_VN(fctc_vexp_neg)(V_SUB(md, m))), FCTC_VN(fctc_vexp_neg)(V_SUB(mn, m)));
    *m_out = m;
    return FCTC_VN(fctc_vlog_1to3)(sum);
}

static FCTC_VTARGET FCTC_T FCTC_VN(fctc_alpha_row)(const FCTC_T *prev, FCTC_T *cur, const FCTC_T *x, const int *ext,
                                                   FCTC_T emit_shift, const FCTC_T *skip, int lo, int hi, FCTC_T shift,
                                                   FCTC_T *tmp) {
    if (hi - lo < VW) return FCTC_FN(fctc_alpha_row_scalar)(prev, cur, x, ext, emit_shift, skip, lo, hi, shift, tmp);
    FCTC_EMISSIONS_BEGIN();
    const VT neg_inf = FCTC_C(-HUGE_VAL);
    const VT sh = V_SET1(emit_shift + shift);
    VT best = neg_inf;
    for (int s = lo;; s += VW) {
        if (s > hi - VW) s = hi - VW;
        VT a = V_LOAD(prev + s), b = V_LOAD(prev + s - 1);
        VT c = V_ADD(V_LOAD(prev + s - 2), V_LOAD(skip + s));
        VT m;
        VT l = FCTC_VN(fctc_vlse3)(a, b, c, &m);
        VT e = V_SUB(FCTC_EMISSIONS_AT(s), sh);
        /* (e + m) + l, l taken as 0 where every predecessor is -inf: e + m is then -inf for
         * any emission but NaN or +inf, which come out NaN -- the non-finite rule's signal,
         * carried by the band to the end states (trellis.h); the operation count of the
         * select of -inf it replaces */
        VT v = V_ADD(V_ADD(e, m), V_SELECT(V_CMP_EQ(m, neg_inf), FCTC_C(0.0), l));
        /* x86 max/min drop a NaN first operand; the scalar kernel propagates NaN, so put
         * it back: a + b + c is NaN exactly when an input is NaN (or +inf meets -inf, which
         * the scalar kernel also turns into NaN). */
        VT probe = V_ADD(V_ADD(a, b), c);
        v = V_SELECT(V_CMP_EQ(probe, probe), v, probe);
        V_STORE(cur + s, v);
        best = V_MAX(best, v);
        if (s == hi - VW) break;
    }
    return V_HMAX(best);
}

static FCTC_VTARGET FCTC_T FCTC_VN(fctc_beta_row)(const FCTC_T *nb, FCTC_T *cur, FCTC_T *nb_out, const FCTC_T *x,
                                                  const int *ext, FCTC_T emit_shift, const FCTC_T *skip, int lo, int hi,
                                                  FCTC_T shift, FCTC_T *tmp) {
    if (hi - lo < VW)
        return FCTC_FN(fctc_beta_row_scalar)(nb, cur, nb_out, x, ext, emit_shift, skip, lo, hi, shift, tmp);
    FCTC_EMISSIONS_BEGIN();
    const VT neg_inf = FCTC_C(-HUGE_VAL);
    const VT sh = V_SET1(shift), esh = V_SET1(emit_shift);
    VT best = neg_inf;
    for (int s = lo;; s += VW) {
        if (s > hi - VW) s = hi - VW;
        VT a = V_LOAD(nb + s), b = V_LOAD(nb + s + 1);
        VT c = V_ADD(V_LOAD(nb + s + 2), V_LOAD(skip + s + 2));
        VT m;
        VT l = FCTC_VN(fctc_vlse3)(a, b, c, &m);
        VT v = V_SELECT(V_CMP_EQ(m, neg_inf), neg_inf, V_ADD(V_SUB(m, sh), l));
        VT probe = V_ADD(V_ADD(a, b), c); /* NaN propagation, as in alpha_row */
        v = V_SELECT(V_CMP_EQ(probe, probe), v, probe);
        V_STORE(cur + s, v);
        VT o = V_ADD(v, V_SUB(FCTC_EMISSIONS_AT(s), esh));
        V_STORE(nb_out + s, o);
        best = V_MAX(best, o);
        if (s == hi - VW) break;
    }
    return V_HMAX(best);
}

static FCTC_VTARGET void FCTC_VN(fctc_gamma_row)(const FCTC_T *a, const FCTC_T *b, FCTC_T offset, FCTC_T *out, int lo,
                                                 int hi) {
    if (hi - lo < VW) {
        FCTC_FN(fctc_gamma_row_scalar)(a, b, offset, out, lo, hi);
        return;
    }
    const VT off = V_SET1(offset);
    for (int s = lo;; s += VW) {
        if (s > hi - VW) s = hi - VW;
        V_STORE(out + s, FCTC_VN(fctc_vexp_occ)(V_ADD(V_ADD(V_LOAD(a + s), V_LOAD(b + s)), off)));
        if (s == hi - VW) break;
    }
}

/* Loads the last C % VW elements of a row into a vector padded with `pad`. */
static inline FCTC_VTARGET VT FCTC_VN(fctc_load_tail)(const FCTC_T *x, int n, FCTC_T pad) {
    FCTC_T buf[VW];
    int i;
    for (i = 0; i < VW; ++i) buf[i] = i < n ? x[i] : pad;
    return V_LOAD(buf);
}

static FCTC_VTARGET FCTC_T FCTC_VN(fctc_row_lse)(const FCTC_T *x, int C, const FCTC_T *next) {
    const int body = C - C % VW;
    VT m0 = FCTC_C(-HUGE_VAL), m1 = m0;
    int c = 0;
    for (; c + 2 * VW <= body; c += 2 * VW) {
        m0 = V_MAX(m0, V_LOAD(x + c));
        m1 = V_MAX(m1, V_LOAD(x + c + VW));
    }
    for (; c < body; c += VW) m0 = V_MAX(m0, V_LOAD(x + c));
    if (body < C) m1 = V_MAX(m1, FCTC_VN(fctc_load_tail)(x + body, C - body, (FCTC_T)-HUGE_VAL));
    FCTC_T m = V_HMAX(V_MAX(m0, m1));
    if (m == (FCTC_T)-HUGE_VAL || m != m) return m;
    const VT mv = V_SET1(m);
    VT s0 = FCTC_C(0.0), s1 = s0;
    for (c = 0; c + 2 * VW <= body; c += 2 * VW) {
        s0 = V_ADD(s0, FCTC_VN(fctc_vexp_neg)(V_SUB(V_LOAD(x + c), mv)));
        s1 = V_ADD(s1, FCTC_VN(fctc_vexp_neg)(V_SUB(V_LOAD(x + c + VW), mv)));
        if (next) FCTC_PREFETCH_LINES(next + c, 2 * VW * sizeof(FCTC_T));
    }
    for (; c < body; c += VW) s0 = V_ADD(s0, FCTC_VN(fctc_vexp_neg)(V_SUB(V_LOAD(x + c), mv)));
    if (body < C)
        s1 = V_ADD(s1,
                   FCTC_VN(fctc_vexp_occ)(V_SUB(FCTC_VN(fctc_load_tail)(x + body, C - body, (FCTC_T)-HUGE_VAL), mv)));
    FCTC_T sum = V_HSUM(V_ADD(s0, s1));
    return m + FCTC_LOG(sum);
}

static FCTC_VTARGET void FCTC_VN(fctc_scaled_exp_row)(const FCTC_T *x, FCTC_T shift, FCTC_T scale, FCTC_T *out, int C) {
    const int body = C - C % VW;
    const VT sh = V_SET1(shift), sc = V_SET1(scale);
    int c;
    for (c = 0; c < body; c += VW) V_STORE(out + c, V_MUL(sc, FCTC_VN(fctc_vexp_occ)(V_SUB(V_LOAD(x + c), sh))));
    if (body < C) {
        FCTC_T buf[VW];
        V_STORE(buf, V_MUL(sc, FCTC_VN(fctc_vexp_occ)(V_SUB(FCTC_VN(fctc_load_tail)(x + body, C - body, 0), sh))));
        for (c = body; c < C; ++c) out[c] = buf[c - body];
    }
}

/* Where streaming (non-temporal) stores may start: the number of leading elements of
 * out[0, C) before the first vector-aligned address, or -1 when out is not aligned to
 * its element size or the row is too short for the aligned part to hold a vector. */
static inline int FCTC_VN(fctc_stream_head)(const FCTC_T *out, int C) {
    const uintptr_t vbytes = VW * sizeof(FCTC_T), a = (uintptr_t)out;
    if (a % sizeof(FCTC_T)) return -1;
    int head = (int)(((vbytes - a % vbytes) % vbytes) / sizeof(FCTC_T));
    return C - head >= VW ? head : -1;
}

/* out[0, C) = value; with `stream`, the aligned body with non-temporal stores (the
 * caller fences, FCTC_STREAM_FENCE, before another thread may read the row). */
static FCTC_VTARGET void FCTC_VN(fctc_fill_row)(FCTC_T *out, FCTC_T value, int C, int stream) {
    const VT v = V_SET1(value);
    int c = 0, head = stream ? FCTC_VN(fctc_stream_head)(out, C) : -1;
    if (head >= 0) {
        for (; c < head; ++c) out[c] = value;
        for (; c + VW <= C; c += VW) V_STREAM(out + c, v);
    }
    for (; c + VW <= C; c += VW) V_STORE(out + c, v);
    for (; c < C; ++c) out[c] = value;
}

/* rows_scalar.h's softmax_row: one vector exp per class, the row rescaled in cache. */
static FCTC_VTARGET FCTC_T FCTC_VN(fctc_softmax_row)(const FCTC_T *x, int C, FCTC_T scale, FCTC_T *out,
                                                     const FCTC_T *next) {
    const int body = C - C % VW;
    VT m0 = FCTC_C(-HUGE_VAL), m1 = m0;
    int c;
    for (c = 0; c + 2 * VW <= body; c += 2 * VW) {
        m0 = V_MAX(m0, V_LOAD(x + c));
        m1 = V_MAX(m1, V_LOAD(x + c + VW));
    }
    for (; c < body; c += VW) m0 = V_MAX(m0, V_LOAD(x + c));
    if (body < C) m1 = V_MAX(m1, FCTC_VN(fctc_load_tail)(x + body, C - body, (FCTC_T)-HUGE_VAL));
    FCTC_T m = V_HMAX(V_MAX(m0, m1));
    /* (x86 max may drop a NaN here; exp(NaN - m) then makes the sum, the log-sum-exp and
     * the row NaN, as in the scalar kernel) */
    if (m == (FCTC_T)-HUGE_VAL || m != m) {
        FCTC_VN(fctc_scaled_exp_row)(x, m, scale, out, C);
        return m;
    }
    /* summed exactly as row_lse sums (same exps, same two accumulators, same order), so
     * the log-sum-exp, and with it the loss, is bit-identical whether or not a gradient
     * is computed */
    const VT mv = V_SET1(m);
    VT s0 = FCTC_C(0.0), s1 = s0;
    for (c = 0; c + 2 * VW <= body; c += 2 * VW) {
        VT e0 = FCTC_VN(fctc_vexp_neg)(V_SUB(V_LOAD(x + c), mv));
        VT e1 = FCTC_VN(fctc_vexp_neg)(V_SUB(V_LOAD(x + c + VW), mv));
        if (next) FCTC_PREFETCH_LINES(next + c, 2 * VW * sizeof(FCTC_T));
        V_STORE(out + c, e0);
        V_STORE(out + c + VW, e1);
        s0 = V_ADD(s0, e0);
        s1 = V_ADD(s1, e1);
    }
    for (; c < body; c += VW) {
        VT e0 = FCTC_VN(fctc_vexp_neg)(V_SUB(V_LOAD(x + c), mv));
        V_STORE(out + c, e0);
        s0 = V_ADD(s0, e0);
    }
    if (body < C) {
        FCTC_T buf[VW];
        VT e1 = FCTC_VN(fctc_vexp_occ)(V_SUB(FCTC_VN(fctc_load_tail)(x + body, C - body, (FCTC_T)-HUGE_VAL), mv));
        V_STORE(buf, e1);
        for (c = body; c < C; ++c) out[c] = buf[c - body];
        s1 = V_ADD(s1, e1);
    }
    FCTC_T sum = V_HSUM(V_ADD(s0, s1));
    const FCTC_T r = scale / sum;
    const VT rv = V_SET1(r);
    for (c = 0; c < body; c += VW) V_STORE(out + c, V_MUL(V_LOAD(out + c), rv));
    for (; c < C; ++c) out[c] *= r;
    return m + FCTC_LOG(sum);
}

/* Test hooks: the vector exp / log over an array (whole vectors, then a padded tail). */
static FCTC_VTARGET void FCTC_VN(fctc_exp_array)(const FCTC_T *x, FCTC_T *out, ptrdiff_t n) {
    ptrdiff_t i;
    for (i = 0; i + VW <= n; i += VW) V_STORE(out + i, FCTC_VN(fctc_vexp)(V_LOAD(x + i)));
    if (i < n) {
        FCTC_T buf[VW];
        V_STORE(buf, FCTC_VN(fctc_vexp)(FCTC_VN(fctc_load_tail)(x + i, (int)(n - i), 0)));
        for (; i < n; ++i) out[i] = buf[i % VW];
    }
}

static FCTC_VTARGET void FCTC_VN(fctc_log_array)(const FCTC_T *x, FCTC_T *out, ptrdiff_t n) {
    ptrdiff_t i;
    for (i = 0; i + VW <= n; i += VW) V_STORE(out + i, FCTC_VN(fctc_vlog)(V_LOAD(x + i)));
    if (i < n) {
        FCTC_T buf[VW];
        V_STORE(buf, FCTC_VN(fctc_vlog)(FCTC_VN(fctc_load_tail)(x + i, (int)(n - i), 1)));
        for (; i < n; ++i) out[i] = buf[i % VW];
    }
}

static const FCTC_FN(fctc_kernels)
    FCTC_VN(fctc_kernels) = {FCTC_VN(fctc_alpha_row),   FCTC_VN(fctc_beta_row),       FCTC_VN(fctc_gamma_row),
                             FCTC_VN(fctc_row_lse),     FCTC_VN(fctc_scaled_exp_row), FCTC_VN(fctc_fill_row),
                             FCTC_VN(fctc_softmax_row), FCTC_VN(fctc_exp_array),      FCTC_VN(fctc_log_array)};

#undef FCTC_EMISSIONS_BEGIN
#undef FCTC_EMISSIONS_AT
#undef FCTC_VEXP_POLY_FAST
#undef FCTC_EXP_MAGIC
#undef FCTC_VEXP_LO
#undef FCTC_VEXP_HI
#undef FCTC_VEXP_FLUSH
#undef FCTC_LN2_HI
#undef FCTC_LN2_LO
#undef FCTC_LOG2E
#undef FCTC_MIN_NORMAL
#undef FCTC_SUBNORMAL_SCALE
#undef FCTC_SUBNORMAL_EXP
