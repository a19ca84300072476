/* fastctc/detail/rows_avx2.h: the AVX2+FMA vector layer (8 floats / 4 doubles per vector) and,
 * through vecmath.h and rows_vec.h, the AVX2 row kernels and their table
 * fctc_kernels_avx2_<dtype>.  Compiled with baseline flags: every function carries
 * __attribute__((target("avx2,fma"))), and dispatch.h calls them only when cpuid and
 * xgetbv say the CPU and OS support AVX2 and FMA.  Instantiated for float and double.
 *
 * Conventions the shared code relies on: V_MAX(a, b) / V_MIN(a, b) return b when either
 * is NaN (the x86 max/min rule), V_SELECT(mask, if_true, if_false), V_FREXP(x, e) splits
 * a positive normal x into a mantissa in [1, 2) (returned) and its exponent (stored in e,
 * as a float vector), V_POW2(n) builds 2^n for integral n in the normal exponent range.
 * The float <-> exponent conversions use the 2^23 (2^52) "magic number" trick: adding
 * 2^23 + 127 to a small integral float leaves n + 127 in the low mantissa bits, so no
 * int/float conversion instruction (AVX2 has none for 64-bit lanes) is needed.
 */
#ifdef FCTC_HAVE_X86_KERNELS
/* GCC 12's AVX-512 intrinsic headers trip its own -Wmaybe-uninitialized (their
 * "undefined" vectors) when compiled as C++; silence that for the header's lines only. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#define FCTC_ISA avx2
#define FCTC_VTARGET __attribute__((target("avx2,fma")))
#if FCTC_IS_F64
#define VT __m256d
#define VM __m256d
#define VW 4
#define V_LOAD(p) _mm256_loadu_pd(p)
#define V_STORE(p, v) _mm256_storeu_pd((p), (v))
#define V_STREAM(p, v) _mm256_stream_pd((p), (v)) /* p 32-byte aligned */
#define V_SET1(x) _mm256_set1_pd(x)
#define V_ADD(a, b) _mm256_add_pd((a), (b))
#define V_SUB(a, b) _mm256_sub_pd((a), (b))
#define V_MUL(a, b) _mm256_mul_pd((a), (b))
#define V_DIV(a, b) _mm256_div_pd((a), (b))
#define V_FMA(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#define V_MAX(a, b) _mm256_max_pd((a), (b))
#define V_MIN(a, b) _mm256_min_pd((a), (b))
#define V_ROUND(x) _mm256_round_pd((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_FLOOR(x) _mm256_round_pd((x), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define V_CMP_EQ(a, b) _mm256_cmp_pd((a), (b), _CMP_EQ_OQ)
#define V_CMP_LT(a, b) _mm256_cmp_pd((a), (b), _CMP_LT_OQ)
#define V_CMP_GT(a, b) _mm256_cmp_pd((a), (b), _CMP_GT_OQ)
#define V_CMP_NAN(a) _mm256_cmp_pd((a), (a), _CMP_UNORD_Q)
#define V_MASK_OR(a, b) _mm256_or_pd((a), (b))
#define V_SELECT(m, t, f) _mm256_blendv_pd((f), (t), (m))
static inline FCTC_VTARGET __m256d fctc_avx2_pow2_f64(__m256d n) {
    __m256i bits = _mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(4503599627370496.0 + 1023.0)));
    return _mm256_castsi256_pd(_mm256_slli_epi64(bits, 52));
}
static inline FCTC_VTARGET __m256d fctc_avx2_frexp_f64(__m256d x, __m256d *e) {
    __m256i bits = _mm256_castpd_si256(x);
    __m256i ebits = _mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000LL));
    *e = _mm256_sub_pd(_mm256_castsi256_pd(ebits), _mm256_set1_pd(4503599627370496.0 + 1023.0));
    return _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000fffffffffffffLL)),
                                               _mm256_set1_epi64x(0x3ff0000000000000LL)));
}
static inline FCTC_VTARGET double fctc_avx2_hmax_f64(__m256d v) {
    __m128d m = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(m, _mm_unpackhi_pd(m, m)));
}
static inline FCTC_VTARGET double fctc_avx2_hsum_f64(__m256d v) {
    __m128d m = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(m, _mm_unpackhi_pd(m, m)));
}
#define V_POW2(n) fctc_avx2_pow2_f64(n)
#define V_POW2_MAGIC(y, n) _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(y), 52))
#define V_FREXP(x, e) fctc_avx2_frexp_f64((x), &(e))
#define V_HMAX(v) fctc_avx2_hmax_f64(v)
#define V_HSUM(v) fctc_avx2_hsum_f64(v)
#else
#define VT __m256
#define VM __m256
#define VW 8
#define V_LOAD(p) _mm256_loadu_ps(p)
#define V_STORE(p, v) _mm256_storeu_ps((p), (v))
#define V_STREAM(p, v) _mm256_stream_ps((p), (v)) /* p 32-byte aligned */
#define V_SET1(x) _mm256_set1_ps(x)
#define V_ADD(a, b) _mm256_add_ps((a), (b))
#define V_SUB(a, b) _mm256_sub_ps((a), (b))
#define V_MUL(a, b) _mm256_mul_ps((a), (b))
#define V_DIV(a, b) _mm256_div_ps((a), (b))
#define V_FMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define V_MAX(a, b) _mm256_max_ps((a), (b))
#define V_MIN(a, b) _mm256_min_ps((a), (b))
#define V_ROUND(x) _mm256_round_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_FLOOR(x) _mm256_round_ps((x), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define V_CMP_EQ(a, b) _mm256_cmp_ps((a), (b), _CMP_EQ_OQ)
#define V_CMP_LT(a, b) _mm256_cmp_ps((a), (b), _CMP_LT_OQ)
#define V_CMP_GT(a, b) _mm256_cmp_ps((a), (b), _CMP_GT_OQ)
#define V_CMP_NAN(a) _mm256_cmp_ps((a), (a), _CMP_UNORD_Q)
#define V_MASK_OR(a, b) _mm256_or_ps((a), (b))
#define V_SELECT(m, t, f) _mm256_blendv_ps((f), (t), (m))
static inline FCTC_VTARGET __m256 fctc_avx2_pow2_f32(__m256 n) {
    __m256i bits = _mm256_castps_si256(_mm256_add_ps(n, _mm256_set1_ps(8388608.0f + 127.0f)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(bits, 23));
}
static inline FCTC_VTARGET __m256 fctc_avx2_frexp_f32(__m256 x, __m256 *e) {
    __m256i bits = _mm256_castps_si256(x);
    __m256i ebits = _mm256_or_si256(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(0x4b000000));
    *e = _mm256_sub_ps(_mm256_castsi256_ps(ebits), _mm256_set1_ps(8388608.0f + 127.0f));
    return _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f800000)));
}
static inline FCTC_VTARGET float fctc_avx2_hmax_f32(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
static inline FCTC_VTARGET float fctc_avx2_hsum_f32(__m256 v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_add_ss(m, _mm_shuffle_ps(m, m, 1)));
}
#define V_POW2(n) fctc_avx2_pow2_f32(n)
#define V_POW2_MAGIC(y, n) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(y), 23))
#define V_FREXP(x, e) fctc_avx2_frexp_f32((x), &(e))
#define V_HMAX(v) fctc_avx2_hmax_f32(v)
#define V_HSUM(v) fctc_avx2_hsum_f32(v)
#endif

#include "vecmath.h"
#include "rows_vec.h"
#include "vec_undef.h"
#endif /* FCTC_HAVE_X86_KERNELS */
