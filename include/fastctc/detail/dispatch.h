/* fastctc/detail/dispatch.h: choose the row-kernel set (scalar, AVX2+FMA, AVX-512, NEON) once.
 *
 * x86-64: cpuid says what the CPU implements, xgetbv says whether the OS saves the
 * wider registers; both must agree before a level is usable.  AArch64: NEON is
 * architectural, chosen at compile time.  The environment variable FASTCTC_SIMD
 * (scalar|avx2|avx512|neon) may lower the level, never raise it past what the CPU has.
 * The choice is made on first use and cached (a benign race: every thread computes and
 * stores the same value); fastctc_simd_set_level() changes it explicitly, for tests.
 * Internal header, included by fastctc.h under FASTCTC_IMPLEMENTATION.
 */
#ifndef FASTCTC_DISPATCH_H
#define FASTCTC_DISPATCH_H

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define FCTC_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

#if defined(__aarch64__) || defined(_M_ARM64)
#define FCTC_ARM64 1
#endif

/* The vector kernel files need GCC/Clang (target attributes, vector operators); other
 * compilers get the scalar kernels.  FASTCTC_NO_SIMD forces scalar-only builds. */
#if defined(FCTC_X86) && (defined(__GNUC__) || defined(__clang__)) && !defined(FASTCTC_NO_SIMD)
#define FCTC_HAVE_X86_KERNELS 1
#endif
#if defined(FCTC_ARM64) && (defined(__GNUC__) || defined(__clang__)) && !defined(FASTCTC_NO_SIMD)
#define FCTC_HAVE_NEON_KERNELS 1
#endif

#ifdef FCTC_HAVE_X86_KERNELS
static void fctc_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
#if defined(_MSC_VER)
    int v[4];
    __cpuidex(v, (int)leaf, (int)sub);
    r[0] = (unsigned)v[0]; r[1] = (unsigned)v[1]; r[2] = (unsigned)v[2]; r[3] = (unsigned)v[3];
#else
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}

static unsigned long long fctc_xgetbv0(void) {
#if defined(_MSC_VER)
    return _xgetbv(0);
#else
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
#endif
}
#endif

/* Highest level this CPU and OS support (and this build compiled in). */
static int fctc_simd_detect(void) {
#if defined(FCTC_HAVE_X86_KERNELS)
    unsigned r[4];
    fctc_cpuid(0, 0, r);
    unsigned max_leaf = r[0];
    fctc_cpuid(1, 0, r);
    int osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1, fma = (r[2] >> 12) & 1;
    if (!osxsave || !avx || max_leaf < 7) return FASTCTC_SIMD_SCALAR;
    unsigned long long xcr0 = fctc_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return FASTCTC_SIMD_SCALAR; /* XMM + YMM state */
    fctc_cpuid(7, 0, r);
    int avx2 = (r[1] >> 5) & 1;
    int avx512f = (r[1] >> 16) & 1, avx512dq = (r[1] >> 17) & 1;
    int level = (avx2 && fma) ? FASTCTC_SIMD_AVX2 : FASTCTC_SIMD_SCALAR;
    /* opmask + upper ZMM + high 16 ZMM state */
    if (level == FASTCTC_SIMD_AVX2 && avx512f && avx512dq && (xcr0 & 0xe0) == 0xe0)
        level = FASTCTC_SIMD_AVX512;
    return level;
#elif defined(FCTC_HAVE_NEON_KERNELS)
    return FASTCTC_SIMD_NEON;
#else
    return FASTCTC_SIMD_SCALAR;
#endif
}

FASTCTC_DEF int fastctc_simd_level_supported(int level) {
    int best = fctc_simd_detect();
    if (level < FASTCTC_SIMD_SCALAR || level > FASTCTC_SIMD_AVX512) return 0; /* not a level */
    if (level == FASTCTC_SIMD_SCALAR) return 1;
    if (level == FASTCTC_SIMD_NEON) return best == FASTCTC_SIMD_NEON;
    if (best == FASTCTC_SIMD_NEON) return 0;
    return level <= best;
}

FASTCTC_DEF const char *fastctc_simd_level_name(int level) {
    switch (level) {
    case FASTCTC_SIMD_SCALAR: return "scalar";
    case FASTCTC_SIMD_NEON: return "neon";
    case FASTCTC_SIMD_AVX2: return "avx2";
    case FASTCTC_SIMD_AVX512: return "avx512";
    default: return "unknown";
    }
}

static int fctc_simd_from_env(int best) {
    const char *env = getenv("FASTCTC_SIMD");
    if (!env || !*env) return best;
    int want = -1;
    if (!strcmp(env, "scalar")) want = FASTCTC_SIMD_SCALAR;
    else if (!strcmp(env, "neon")) want = FASTCTC_SIMD_NEON;
    else if (!strcmp(env, "avx2")) want = FASTCTC_SIMD_AVX2;
    else if (!strcmp(env, "avx512")) want = FASTCTC_SIMD_AVX512;
    if (want < 0 || !fastctc_simd_level_supported(want)) return best; /* never raise */
    return want;
}

/* -1: not chosen yet. */
static int fctc_simd_level_cached = -1;

/* Relaxed atomic access where the compiler offers it: threads racing on the first call all
 * store the same value, but a plain int would still be a data race in C11's terms. */
#if defined(__GNUC__) || defined(__clang__)
#define FCTC_LOAD_LEVEL() __atomic_load_n(&fctc_simd_level_cached, __ATOMIC_RELAXED)
#define FCTC_STORE_LEVEL(v) __atomic_store_n(&fctc_simd_level_cached, (v), __ATOMIC_RELAXED)
#else
#define FCTC_LOAD_LEVEL() (fctc_simd_level_cached)
#define FCTC_STORE_LEVEL(v) (fctc_simd_level_cached = (v))
#endif

FASTCTC_DEF int fastctc_simd_level(void) {
    int level = FCTC_LOAD_LEVEL();
    if (level < 0) {
        level = fctc_simd_from_env(fctc_simd_detect());
        FCTC_STORE_LEVEL(level);
    }
    return level;
}

FASTCTC_DEF fastctc_status fastctc_simd_set_level(int level) {
    if (!fastctc_simd_level_supported(level)) return FASTCTC_INVALID_ARGUMENT;
    FCTC_STORE_LEVEL(level);
    return FASTCTC_OK;
}

#endif /* FASTCTC_DISPATCH_H */
