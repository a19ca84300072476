/* fastctc/detail/select.h: the kernel table for the SIMD level in use, per dtype.
 * Each ISA's row file defines its table (fctc_kernels_<isa>_<dtype>) when it is compiled
 * in; this function returns the one the dispatch level names, scalar otherwise.
 * Instantiated for float and double through template.h.
 */
static const FCTC_FN(fctc_kernels) FCTC_FN(fctc_kernels_scalar) = {
    FCTC_FN(fctc_alpha_row_scalar), FCTC_FN(fctc_beta_row_scalar), FCTC_FN(fctc_gamma_row_scalar),
    FCTC_FN(fctc_row_lse_scalar),   FCTC_FN(fctc_scaled_exp_row_scalar), FCTC_FN(fctc_fill_row_scalar),
    FCTC_FN(fctc_softmax_row_scalar), FCTC_FN(fctc_exp_array_scalar), FCTC_FN(fctc_log_array_scalar)};

/* The table of one level (scalar when that level is not compiled in). */
static const FCTC_FN(fctc_kernels) *FCTC_FN(fctc_kernels_for)(int level) {
    switch (level) {
#ifdef FCTC_HAVE_X86_KERNELS
    case FASTCTC_SIMD_AVX512: return &FCTC_FN(fctc_kernels_avx512);
    case FASTCTC_SIMD_AVX2: return &FCTC_FN(fctc_kernels_avx2);
#endif
#ifdef FCTC_HAVE_NEON_KERNELS
    case FASTCTC_SIMD_NEON: return &FCTC_FN(fctc_kernels_neon);
#endif
    default: return &FCTC_FN(fctc_kernels_scalar);
    }
}

static const FCTC_FN(fctc_kernels) *FCTC_FN(fctc_kernels_active)(void) {
    return FCTC_FN(fctc_kernels_for)(fastctc_simd_level());
}
