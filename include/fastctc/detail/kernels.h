/* fastctc/detail/kernels.h: the table of row kernels the trellis calls, one per dtype.
 * Each ISA file (rows_scalar.h, rows_avx2.h, rows_avx512.h, rows_neon.h) fills
 * one table; select.h returns the one dispatch.h's level names, and trellis.h only
 * ever calls through it.  rows_scalar.h documents what each entry computes.
 * Instantiated for float and double through template.h.
 */

/* FCTC_IS_F64: 1 in the double instantiation, 0 in the float one (usable in #if). */
#define FCTC_ISF64_f32 0
#define FCTC_ISF64_f64 1
#undef FCTC_IS_F64
#define FCTC_IS_F64 FCTC_CAT(FCTC_ISF64, FCTC_SFX)

/* j & 1 for j = 0..16: loaded at offset 0 or 1, the parity of each lane's state (the
 * vector kernels' blank-lane masks, rows_vec.h; 16 is the widest vector). */
static const FCTC_T FCTC_FN(fctc_lane_parity)[17] = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0};

typedef struct FCTC_FN(fctc_kernels) {
    FCTC_T (*alpha_row)(const FCTC_T *prev, FCTC_T *cur, const FCTC_T *x, const int *ext, FCTC_T emit_shift,
                        const FCTC_T *skip, int lo, int hi, FCTC_T shift, FCTC_T *tmp);
    FCTC_T (*beta_row)(const FCTC_T *nb, FCTC_T *cur, FCTC_T *nb_out, const FCTC_T *x, const int *ext,
                       FCTC_T emit_shift, const FCTC_T *skip, int lo, int hi, FCTC_T shift, FCTC_T *tmp);
    void (*gamma_row)(const FCTC_T *a, const FCTC_T *b, FCTC_T offset, FCTC_T *out, int lo, int hi);
    FCTC_T (*row_lse)(const FCTC_T *x, int C, const FCTC_T *next);
    void (*scaled_exp_row)(const FCTC_T *x, FCTC_T shift, FCTC_T scale, FCTC_T *out, int C);
    void (*fill_row)(FCTC_T *out, FCTC_T value, int C, int stream);
    FCTC_T (*softmax_row)(const FCTC_T *x, int C, FCTC_T scale, FCTC_T *out, const FCTC_T *next);
    /* test hooks: the kernel set's exp and log over an array */
    void (*exp_array)(const FCTC_T *x, FCTC_T *out, ptrdiff_t n);
    void (*log_array)(const FCTC_T *x, FCTC_T *out, ptrdiff_t n);
} FCTC_FN(fctc_kernels);
