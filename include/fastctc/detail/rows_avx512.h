/* fastctc/detail/rows_avx512.h: the AVX-512 (F + DQ) vector layer (16 floats / 8 doubles per
 * vector) and, through vecmath.h and rows_vec.h, the AVX-512 row kernels and their
 * table fctc_kernels_avx512_<dtype>.  Baseline compile: every function carries
 * __attribute__((target("avx512f,avx512dq,avx2,fma"))); dispatch.h selects this set only
 * when cpuid reports AVX512F and AVX512DQ and xgetbv says the OS saves the opmask and
 * ZMM state.  Masks are the native __mmask registers.  Conventions as in rows_avx2.h;
 * exponent split/build use the native getexp/getmant and scalef instructions.
 * Instantiated for float and double.
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

#define FCTC_ISA avx512
#define FCTC_VTARGET __attribute__((target("avx512f,avx512dq,avx2,fma")))
#if FCTC_IS_F64
#define VT __m512d
#define VM __mmask8
#define VW 8
#define V_LOAD(p) _mm512_loadu_pd(p)
#define V_STORE(p, v) _mm512_storeu_pd((p), (v))
#define V_STREAM(p, v) _mm512_stream_pd((p), (v)) /* p 64-byte aligned */
#define V_SET1(x) _mm512_set1_pd(x)
#define V_ADD(a, b) _mm512_add_pd((a), (b))
#define V_SUB(a, b) _mm512_sub_pd((a), (b))
#define V_MUL(a, b) _mm512_mul_pd((a), (b))
#define V_DIV(a, b) _mm512_div_pd((a), (b))
#define V_FMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define V_MAX(a, b) _mm512_max_pd((a), (b))
#define V_MIN(a, b) _mm512_min_pd((a), (b))
#define V_ROUND(x) _mm512_roundscale_pd((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_FLOOR(x) _mm512_roundscale_pd((x), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define V_CMP_EQ(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_EQ_OQ)
#define V_CMP_LT(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_LT_OQ)
#define V_CMP_GT(a, b) _mm512_cmp_pd_mask((a), (b), _CMP_GT_OQ)
#define V_CMP_NAN(a) _mm512_cmp_pd_mask((a), (a), _CMP_UNORD_Q)
#define V_MASK_OR(a, b) ((__mmask8)((a) | (b)))
#define V_SELECT(m, t, f) _mm512_mask_blend_pd((m), (f), (t))
/* 2^n for integral n: scalef(1, n) = 1 * 2^floor(n) */
#define V_POW2(n) _mm512_scalef_pd(_mm512_set1_pd(1.0), (n))
/* getmant with interval [1, 2) and getexp = floor(log2 x), exact for positive normals */
#define V_FREXP(x, e) ((e) = _mm512_getexp_pd(x), _mm512_getmant_pd((x), _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero))
#define V_HMAX(v) _mm512_reduce_max_pd(v)
#define V_HSUM(v) _mm512_reduce_add_pd(v)
#else
#define VT __m512
#define VM __mmask16
#define VW 16
#define V_LOAD(p) _mm512_loadu_ps(p)
#define V_STORE(p, v) _mm512_storeu_ps((p), (v))
#define V_STREAM(p, v) _mm512_stream_ps((p), (v)) /* p 64-byte aligned */
#define V_SET1(x) _mm512_set1_ps(x)
#define V_ADD(a, b) _mm512_add_ps((a), (b))
#define V_SUB(a, b) _mm512_sub_ps((a), (b))
#define V_MUL(a, b) _mm512_mul_ps((a), (b))
#define V_DIV(a, b) _mm512_div_ps((a), (b))
#define V_FMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define V_MAX(a, b) _mm512_max_ps((a), (b))
#define V_MIN(a, b) _mm512_min_ps((a), (b))
#define V_ROUND(x) _mm512_roundscale_ps((x), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_FLOOR(x) _mm512_roundscale_ps((x), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define V_CMP_EQ(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_EQ_OQ)
#define V_CMP_LT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_LT_OQ)
#define V_CMP_GT(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ)
#define V_CMP_NAN(a) _mm512_cmp_ps_mask((a), (a), _CMP_UNORD_Q)
#define V_MASK_OR(a, b) ((__mmask16)((a) | (b)))
#define V_SELECT(m, t, f) _mm512_mask_blend_ps((m), (f), (t))
#define V_POW2(n) _mm512_scalef_ps(_mm512_set1_ps(1.0f), (n))
#define V_FREXP(x, e) ((e) = _mm512_getexp_ps(x), _mm512_getmant_ps((x), _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero))
#define V_HMAX(v) _mm512_reduce_max_ps(v)
#define V_HSUM(v) _mm512_reduce_add_ps(v)
#endif

#include "vecmath.h"
#include "rows_vec.h"
#include "vec_undef.h"
#endif /* FCTC_HAVE_X86_KERNELS */
