/* fastctc/detail/template.h: the token-pasting helpers behind fastctc's "write once, instantiate
 * for float and double" files (*.h).  A templated file is included once with
 *   FCTC_T = float,  FCTC_SFX = f32, FCTC_EXP = expf, FCTC_LOG = logf
 * and once with the double equivalents; FCTC_FN(name) pastes the suffix on.
 * Internal header.
 */
#ifndef FASTCTC_TEMPLATE_H
#define FASTCTC_TEMPLATE_H
#define FCTC_CAT_(a, b) a##_##b
#define FCTC_CAT(a, b) FCTC_CAT_(a, b)
#define FCTC_FN(name) FCTC_CAT(name, FCTC_SFX)
#endif

/* Set up one instantiation: define FCTC_USE_F32 or FCTC_USE_F64, then include this file. */
#ifdef FCTC_USE_F32
#undef FCTC_USE_F32
#undef FCTC_T
#undef FCTC_SFX
#undef FCTC_EXP
#undef FCTC_LOG
#undef FCTC_NEG_INF
#define FCTC_T float
#define FCTC_SFX f32
#define FCTC_EXP expf
#define FCTC_LOG logf
#define FCTC_NEG_INF FCTC_NEG_INF_F32
#endif
#ifdef FCTC_USE_F64
#undef FCTC_USE_F64
#undef FCTC_T
#undef FCTC_SFX
#undef FCTC_EXP
#undef FCTC_LOG
#undef FCTC_NEG_INF
#define FCTC_T double
#define FCTC_SFX f64
#define FCTC_EXP exp
#define FCTC_LOG log
#define FCTC_NEG_INF FCTC_NEG_INF_F64
#endif
