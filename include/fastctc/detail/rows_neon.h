/* fastctc/detail/rows_neon.h: the AArch64 NEON vector layer (4 floats / 2 doubles per vector)
 * and, through vecmath.h and rows_vec.h, the NEON row kernels and their table
 * fctc_kernels_neon_<dtype>.  NEON is architectural on AArch64, so no target attribute is
 * needed and dispatch.h chooses it at compile time.  vmaxq/vminq propagate NaN from
 * either operand (stricter than the x86 rule the shared code assumes, never weaker).
 * Exponent split/build through the bit patterns, as in rows_avx2.h.  Instantiated for
 * float and double.
 */
#ifdef FCTC_HAVE_NEON_KERNELS
#include <arm_neon.h>

#define FCTC_ISA neon
#define FCTC_VTARGET
#if FCTC_IS_F64
#define VT float64x2_t
#define VM uint64x2_t
#define VW 2
#define V_LOAD(p) vld1q_f64(p)
#define V_STORE(p, v) vst1q_f64((p), (v))
#define V_STREAM(p, v) vst1q_f64((p), (v)) /* NEON has no non-temporal vector store intrinsic */
#define V_SET1(x) vdupq_n_f64(x)
#define V_ADD(a, b) vaddq_f64((a), (b))
#define V_SUB(a, b) vsubq_f64((a), (b))
#define V_MUL(a, b) vmulq_f64((a), (b))
#define V_DIV(a, b) vdivq_f64((a), (b))
#define V_FMA(a, b, c) vfmaq_f64((c), (a), (b))
#define V_MAX(a, b) vmaxq_f64((a), (b))
#define V_MIN(a, b) vminq_f64((a), (b))
#define V_ROUND(x) vrndnq_f64(x)
#define V_FLOOR(x) vrndmq_f64(x)
#define V_CMP_EQ(a, b) vceqq_f64((a), (b))
#define V_CMP_LT(a, b) vcltq_f64((a), (b))
#define V_CMP_GT(a, b) vcgtq_f64((a), (b))
#define V_CMP_NAN(a) FCTC_NEON_NOT_U64(vceqq_f64((a), (a)))
#define V_MASK_OR(a, b) vorrq_u64((a), (b))
#define V_SELECT(m, t, f) vbslq_f64((m), (t), (f))
#define FCTC_NEON_NOT_U64(m) vreinterpretq_u64_u32(vmvnq_u32(vreinterpretq_u32_u64(m)))
static inline float64x2_t fctc_neon_pow2_f64(float64x2_t n) {
    int64x2_t k = vaddq_s64(vcvtq_s64_f64(n), vdupq_n_s64(1023));
    return vreinterpretq_f64_s64(vshlq_n_s64(k, 52));
}
static inline float64x2_t fctc_neon_frexp_f64(float64x2_t x, float64x2_t *e) {
    uint64x2_t bits = vreinterpretq_u64_f64(x);
    *e = vsubq_f64(vcvtq_f64_u64(vshrq_n_u64(bits, 52)), vdupq_n_f64(1023.0));
    return vreinterpretq_f64_u64(
        vorrq_u64(vandq_u64(bits, vdupq_n_u64(0x000fffffffffffffULL)), vdupq_n_u64(0x3ff0000000000000ULL)));
}
#define V_POW2(n) fctc_neon_pow2_f64(n)
#define V_FREXP(x, e) fctc_neon_frexp_f64((x), &(e))
#define V_HMAX(v) vmaxvq_f64(v)
#define V_HSUM(v) vaddvq_f64(v)
#else
#define VT float32x4_t
#define VM uint32x4_t
#define VW 4
#define V_LOAD(p) vld1q_f32(p)
#define V_STORE(p, v) vst1q_f32((p), (v))
#define V_STREAM(p, v) vst1q_f32((p), (v))
#define V_SET1(x) vdupq_n_f32(x)
#define V_ADD(a, b) vaddq_f32((a), (b))
#define V_SUB(a, b) vsubq_f32((a), (b))
#define V_MUL(a, b) vmulq_f32((a), (b))
#define V_DIV(a, b) vdivq_f32((a), (b))
#define V_FMA(a, b, c) vfmaq_f32((c), (a), (b))
#define V_MAX(a, b) vmaxq_f32((a), (b))
#define V_MIN(a, b) vminq_f32((a), (b))
#define V_ROUND(x) vrndnq_f32(x)
#define V_FLOOR(x) vrndmq_f32(x)
#define V_CMP_EQ(a, b) vceqq_f32((a), (b))
#define V_CMP_LT(a, b) vcltq_f32((a), (b))
#define V_CMP_GT(a, b) vcgtq_f32((a), (b))
#define V_CMP_NAN(a) vmvnq_u32(vceqq_f32((a), (a)))
#define V_MASK_OR(a, b) vorrq_u32((a), (b))
#define V_SELECT(m, t, f) vbslq_f32((m), (t), (f))
static inline float32x4_t fctc_neon_pow2_f32(float32x4_t n) {
    int32x4_t k = vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127));
    return vreinterpretq_f32_s32(vshlq_n_s32(k, 23));
}
static inline float32x4_t fctc_neon_frexp_f32(float32x4_t x, float32x4_t *e) {
    uint32x4_t bits = vreinterpretq_u32_f32(x);
    *e = vsubq_f32(vcvtq_f32_u32(vshrq_n_u32(bits, 23)), vdupq_n_f32(127.0f));
    return vreinterpretq_f32_u32(vorrq_u32(vandq_u32(bits, vdupq_n_u32(0x007fffffu)), vdupq_n_u32(0x3f800000u)));
}
#define V_POW2(n) fctc_neon_pow2_f32(n)
#define V_FREXP(x, e) fctc_neon_frexp_f32((x), &(e))
#define V_HMAX(v) vmaxvq_f32(v)
#define V_HSUM(v) vaddvq_f32(v)
#endif

#include "vecmath.h"
#include "rows_vec.h"
#include "vec_undef.h"
#endif /* FCTC_HAVE_NEON_KERNELS */
