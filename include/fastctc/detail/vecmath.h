/* fastctc/detail/vecmath.h: vector exp and log, written once against the thin per-ISA vector
 * layer (rows_avx2.h, rows_avx512.h, rows_neon.h define the V_* macros, VT, VW,
 * FCTC_ISA and FCTC_VTARGET, then include this file and rows_vec.h).  Instantiated per
 * ISA and per dtype (FCTC_IS_F64 says which).
 *
 * exp(x): x = n ln2 + r with n = round(x / ln2), |r| <= ln2/2; ln2 is split in a part
 *   with trailing zero bits (n * LN2_HI is exact) and a small remainder, so r carries no
 *   cancellation error.  e^r is its Taylor polynomial (degree 7 for float: truncation
 *   below 5.2e-9 relative; degree 13 for double: below 4.1e-18).  2^n is built in the
 *   exponent field in two halves (2^n1 * 2^n2, each factor a normal number), so results
 *   in the subnormal range and the overflow to +inf are rounded like libm does.
 *   Inputs are clamped to [LO, HI] first: every x above HI overflows to +inf, every x
 *   below LO underflows to 0; NaN passes through the clamp (the V_MAX/V_MIN convention:
 *   a NaN second operand is returned) and gives NaN.
 * log(x): x = m 2^e with m in [sqrt(1/2), sqrt(2)); log(m) = 2 atanh(u), u = (m-1)/(m+1),
 *   |u| <= 0.1716, as the odd series u + u^3/3 + ... (to u^9 for float: truncation below
 *   2e-9 relative; to u^21 for double: below 1e-18); e ln2 is added in two parts.
 *   Subnormal x is scaled by 2^24 (2^54) first; x = 0 -> -inf, x < 0 or NaN -> NaN,
 *   +inf -> +inf.
 * Maximum error against NumPy, measured by tests/test_simd.py over 4 million random
 *   float32 bit patterns (every range: subnormals, the specials, the overflow and
 *   underflow thresholds) and a million float64 ones: float32 exp 2 ulp, log 4 ulp;
 *   float64 exp 1 ulp, log 2 ulp (the test allows one ulp more).  NumPy's own float32
 *   exp differs from libm's expf by 2 ulp as well.  Far below what the CTC sums need:
 *   the trellis evaluates exp only at x <= 0 and log only on [1, 3]
 *   (fctc_vexp_neg, fctc_vexp_occ and fctc_vlog_1to3 below: the same reductions, with
 *   the range handling those arguments need and nothing more; in float, exp there uses
 *   a degree-5 polynomial, about 3 ulp, whose results are only ever added to 1 or
 *   multiplied into a gradient: measured 5% faster on the char shape, with the float32
 *   losses still within 1e-7 relative of float64 in the tests).
 */

#if FCTC_IS_F64
#define FCTC_VEXP_LO (-746.0)
#define FCTC_VEXP_HI (710.0)
#define FCTC_VEXP_FLUSH (-707.0)
#define FCTC_LN2_HI 6.93147180369123816490e-01
#define FCTC_LN2_LO 1.90821492927058770002e-10
#define FCTC_LOG2E 1.44269504088896338700e+00
#define FCTC_MIN_NORMAL 2.2250738585072014e-308
#define FCTC_SUBNORMAL_SCALE 18014398509481984.0 /* 2^54 */
#define FCTC_SUBNORMAL_EXP (-54.0)
#else
#define FCTC_VEXP_LO (-104.0f)
#define FCTC_VEXP_HI (89.0f)
#define FCTC_VEXP_FLUSH (-87.0f)
#define FCTC_LN2_HI 0.693359375f
#define FCTC_LN2_LO (-2.12194440e-4f)
#define FCTC_LOG2E 1.44269504088896341f
#define FCTC_MIN_NORMAL 1.17549435e-38f
#define FCTC_SUBNORMAL_SCALE 16777216.0f /* 2^24 */
#define FCTC_SUBNORMAL_EXP (-24.0f)
#endif
#if FCTC_IS_F64
#define FCTC_EXP_MAGIC (6755399441055744.0 + 1023.0) /* 1.5 * 2^52 + bias */
#else
#define FCTC_EXP_MAGIC (12582912.0f + 127.0f) /* 1.5 * 2^23 + bias */
#endif
#ifndef V_POW2_MAGIC
#define V_POW2_MAGIC(y, n) V_POW2(n)
#endif
#define FCTC_VN(name) FCTC_FN(FCTC_CAT(name, FCTC_ISA))
#define FCTC_C(x) V_SET1((FCTC_T)(x))

/* e^r for |r| <= ln2/2: the Taylor polynomial (degree 7 / 13), evaluated in Estrin's
 * scheme (pairs, then pairs of pairs, with r^2, r^4, r^8) rather than Horner's: a few
 * more operations but a dependency chain of 3-5 instead of 7-13 fused multiply-adds,
 * which is what bounds the trellis kernels (they are latency-bound, not port-bound). */
static inline FCTC_VTARGET VT FCTC_VN(fctc_vexp_poly)(VT r) {
    VT r2 = V_MUL(r, r), r4 = V_MUL(r2, r2);
    VT p01 = V_FMA(r, FCTC_C(1.0), FCTC_C(1.0));
    VT p23 = V_FMA(r, FCTC_C(1.0 / 6.0), FCTC_C(0.5));
    VT p45 = V_FMA(r, FCTC_C(1.0 / 120.0), FCTC_C(1.0 / 24.0));
    VT p67 = V_FMA(r, FCTC_C(1.0 / 5040.0), FCTC_C(1.0 / 720.0));
    VT q03 = V_FMA(p23, r2, p01), q47 = V_FMA(p67, r2, p45);
#if FCTC_IS_F64
    VT r8 = V_MUL(r4, r4);
    VT p89 = V_FMA(r, FCTC_C(1.0 / 362880.0), FCTC_C(1.0 / 40320.0));
    VT p1011 = V_FMA(r, FCTC_C(1.0 / 39916800.0), FCTC_C(1.0 / 3628800.0));
    VT p1213 = V_FMA(r, FCTC_C(1.0 / 6227020800.0), FCTC_C(1.0 / 479001600.0));
    VT q811 = V_FMA(p1011, r2, p89);
    VT o813 = V_FMA(p1213, r4, q811);
    return V_FMA(o813, r8, V_FMA(q47, r4, q03));
#else
    return V_FMA(q47, r4, q03);
#endif
}

/* e^r for |r| <= ln2/2, float only: a degree-5 near-minimax polynomial (relative error
 * 7.5e-8 before rounding; about 3 ulp evaluated in float), for the exponentials whose
 * results are summed with 1 or scaled into a gradient (fctc_vexp_neg, fctc_vexp_occ):
 * two operations fewer than the degree-7 Taylor polynomial.  Coefficients fitted by
 * Lawson's iteratively reweighted least squares on Chebyshev nodes. */
#if !FCTC_IS_F64
static inline FCTC_VTARGET VT FCTC_VN(fctc_vexp_poly5)(VT r) {
    VT r2 = V_MUL(r, r), r4 = V_MUL(r2, r2);
    VT p01 = V_FMA(r, FCTC_C(0.9999997019767761), FCTC_C(1.0000001192092896));
    VT p23 = V_FMA(r, FCTC_C(0.16667574644088745), FCTC_C(0.49998894333839417));
    VT p45 = V_FMA(r, FCTC_C(0.008297654800117016), FCTC_C(0.04191538318991661));
    return V_FMA(p45, r4, V_FMA(p23, r2, p01));
}
#define FCTC_VEXP_POLY_FAST FCTC_VN(fctc_vexp_poly5)
#else
#define FCTC_VEXP_POLY_FAST FCTC_VN(fctc_vexp_poly)
#endif

/* e^x for every x (see above). */

static inline FCTC_VTARGET VT FCTC_VN(fctc_vexp)(VT x) {
    VT xc = V_MIN(FCTC_C(FCTC_VEXP_HI), V_MAX(FCTC_C(FCTC_VEXP_LO), x));
    VT n = V_ROUND(V_MUL(xc, FCTC_C(FCTC_LOG2E)));
    VT r = V_FMA(n, FCTC_C(-FCTC_LN2_HI), xc);
    r = V_FMA(n, FCTC_C(-FCTC_LN2_LO), r);
    VT p = FCTC_VN(fctc_vexp_poly)(r);
    VT n1 = V_FLOOR(V_MUL(n, FCTC_C(0.5)));
    VT n2 = V_SUB(n, n1);
    return V_MUL(V_MUL(p, V_POW2(n1)), V_POW2(n2));
}

/* e^x for x <= 0, used where the result is added to 1 (the log-add-exp sums): inputs
 * below FCTC_VEXP_FLUSH give e^FCTC_VEXP_FLUSH (about 1e-38 / 1e-307, nothing next to
 * 1), so 2^n is one normal factor; NaN in, NaN out; fctc_vexp's reduction (n rounded
 * by the magic-number FMA below) and FCTC_VEXP_POLY_FAST (degree 5 in float, fctc_vexp's
 * degree 13 in double). */
static inline FCTC_VTARGET VT FCTC_VN(fctc_vexp_neg)(VT x) {
    VT xc = V_MAX(FCTC_C(FCTC_VEXP_FLUSH), x);
    /* n = round(x / ln2) by the magic-number trick: adding 1.5 * 2^23 (2^52) in the FMA
     * rounds x log2(e) to an integer (one rounding of the exact product) and leaves n + bias
     * in the low mantissa bits, which V_POW2_MAGIC shifts into an exponent field: three
     * operations instead of round + add + shift's four. */
    VT y = V_FMA(xc, FCTC_C(FCTC_LOG2E), FCTC_C(FCTC_EXP_MAGIC));
    VT n = V_SUB(y, FCTC_C(FCTC_EXP_MAGIC));
    VT r = V_FMA(n, FCTC_C(-FCTC_LN2_HI), xc);
    r = V_FMA(n, FCTC_C(-FCTC_LN2_LO), r);
    VT p = FCTC_VEXP_POLY_FAST(r);
    return V_MUL(p, V_POW2_MAGIC(y, n));
}

/* e^x for x <= ~88 (the occupancies, whose exponent is <= 0 up to rounding): like
 * fctc_vexp_neg, but inputs below FCTC_VEXP_FLUSH give exactly 0 (so -inf -> 0 and
 * unreachable states contribute nothing); one 2^n factor, so no subnormal results. */
static inline FCTC_VTARGET VT FCTC_VN(fctc_vexp_occ)(VT x) {
    return V_SELECT(V_CMP_LT(x, FCTC_C(FCTC_VEXP_FLUSH)), FCTC_C(0.0), FCTC_VN(fctc_vexp_neg)(x));
}

/* log(m) + e ln2 for m in [1, 2) (from V_FREXP, or y in [1, 3] with e = 0) and
 * integral e; no special cases.  m above sqrt(2) is halved (e + 1), so u = (m-1)/(m+1)
 * lies in [-0.172, 0.2].  log(m) = 2 atanh(u) = 2u (1 + s), s = u2/3 + u2^2/5 + ...,
 * in Estrin's scheme: to u2^10/21 for double; for float to u2^4/9, or, with `trimmed`
 * (a compile-time constant at every call), to u2^3/7: the dropped term 2 u^9 / 9 is at
 * most 1.1e-7 absolute (u = 0.2), about one ulp of a result near log 3, for one multiply
 * and one FMA fewer. */
static inline FCTC_VTARGET VT FCTC_VN(fctc_vlog_parts)(VT m, VT e, const int trimmed) {
    VM big = V_CMP_GT(m, FCTC_C(1.41421356237309504880));
    m = V_SELECT(big, V_MUL(m, FCTC_C(0.5)), m);
    e = V_SELECT(big, V_ADD(e, FCTC_C(1.0)), e);
    VT u = V_DIV(V_SUB(m, FCTC_C(1.0)), V_ADD(m, FCTC_C(1.0)));
    VT u2 = V_MUL(u, u);
    VT w2 = V_MUL(u2, u2);
    VT qa = V_FMA(u2, FCTC_C(1.0 / 5.0), FCTC_C(1.0 / 3.0));
#if FCTC_IS_F64
    (void)trimmed;
    VT qb = V_FMA(u2, FCTC_C(1.0 / 9.0), FCTC_C(1.0 / 7.0));
    VT w4 = V_MUL(w2, w2);
    VT qc = V_FMA(u2, FCTC_C(1.0 / 13.0), FCTC_C(1.0 / 11.0));
    VT qd = V_FMA(u2, FCTC_C(1.0 / 17.0), FCTC_C(1.0 / 15.0));
    VT qe = V_FMA(u2, FCTC_C(1.0 / 21.0), FCTC_C(1.0 / 19.0));
    VT lo4 = V_FMA(qb, w2, qa), hi4 = V_FMA(qd, w2, qc);
    VT s = V_MUL(V_FMA(qe, V_MUL(w4, w4), V_FMA(hi4, w4, lo4)), u2);
#else
    VT qb = trimmed ? FCTC_C(1.0 / 7.0) : V_FMA(u2, FCTC_C(1.0 / 9.0), FCTC_C(1.0 / 7.0));
    VT s = V_MUL(V_FMA(qb, w2, qa), u2);
#endif
    VT two_u = V_ADD(u, u);
    VT logm = V_FMA(two_u, s, two_u);
    return V_FMA(e, FCTC_C(FCTC_LN2_HI), V_FMA(e, FCTC_C(FCTC_LN2_LO), logm));
}

/* log(y) for y in [1, 3] (the log-add-exp sums): y itself or y/2 is the mantissa, so
 * the exponent split is one compare inside fctc_vlog_parts (no exponent extraction, a
 * shorter dependency chain than the general fctc_vlog); the float series is trimmed. */
static inline FCTC_VTARGET VT FCTC_VN(fctc_vlog_1to3)(VT y) {
    return FCTC_VN(fctc_vlog_parts)(y, FCTC_C(0.0), 1);
}

/* log(x) for every x (see above). */
static inline FCTC_VTARGET VT FCTC_VN(fctc_vlog)(VT x) {
    VM sub = V_CMP_LT(x, FCTC_C(FCTC_MIN_NORMAL));
    VT xs = V_SELECT(sub, V_MUL(x, FCTC_C(FCTC_SUBNORMAL_SCALE)), x);
    VT e;
    VT m = V_FREXP(xs, e);
    e = V_ADD(e, V_SELECT(sub, FCTC_C(FCTC_SUBNORMAL_EXP), FCTC_C(0.0)));
    VT r = FCTC_VN(fctc_vlog_parts)(m, e, 0);
    r = V_SELECT(V_CMP_EQ(x, FCTC_C(HUGE_VAL)), x, r);
    r = V_SELECT(V_CMP_EQ(x, FCTC_C(0.0)), FCTC_C(-HUGE_VAL), r);
    /* x < 0 or NaN: NaN (0 * inf) */
    VM bad = V_MASK_OR(V_CMP_LT(x, FCTC_C(0.0)), V_CMP_NAN(x));
    return V_SELECT(bad, V_MUL(FCTC_C(0.0), FCTC_C(HUGE_VAL)), r);
}
