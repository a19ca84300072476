/* fastctc/detail/logmath.h: scalar log-space helpers shared by every kernel.
 *
 * CTC probabilities underflow after a few frames, so the whole trellis works with
 * log-probabilities.  Sums of probabilities become log-add-exp, always evaluated as
 * m + log(sum(exp(x_i - m))) with m = max(x_i): every exponent is <= 0, so nothing
 * overflows, and the largest term contributes exactly 1, so nothing underflows to a
 * log(0) unless every term is -inf (then the result is -inf, never NaN).
 *
 * Internal header: included by fastctc.h under FASTCTC_IMPLEMENTATION.
 */
#ifndef FASTCTC_LOGMATH_H
#define FASTCTC_LOGMATH_H

#include <math.h>

#define FCTC_NEG_INF_F32 (-HUGE_VALF)
#define FCTC_NEG_INF_F64 (-HUGE_VAL)

/* log(exp(a) + exp(b)); -inf when both are -inf. */
static inline double fctc_lse2_f64(double a, double b) {
    double m = a > b ? a : b;
    if (m == FCTC_NEG_INF_F64) return FCTC_NEG_INF_F64;
    return m + log(exp(a - m) + exp(b - m));
}

static inline float fctc_lse2_f32(float a, float b) {
    float m = a > b ? a : b;
    if (m == FCTC_NEG_INF_F32) return FCTC_NEG_INF_F32;
    return m + logf(expf(a - m) + expf(b - m));
}

/* log(exp(a) + exp(b) + exp(c)); -inf when all three are -inf. */
static inline double fctc_lse3_f64(double a, double b, double c) {
    double m = a > b ? a : b;
    m = m > c ? m : c;
    if (m == FCTC_NEG_INF_F64) return FCTC_NEG_INF_F64;
    return m + log(exp(a - m) + exp(b - m) + exp(c - m));
}

static inline float fctc_lse3_f32(float a, float b, float c) {
    float m = a > b ? a : b;
    m = m > c ? m : c;
    if (m == FCTC_NEG_INF_F32) return FCTC_NEG_INF_F32;
    return m + logf(expf(a - m) + expf(b - m) + expf(c - m));
}

#endif /* FASTCTC_LOGMATH_H */
