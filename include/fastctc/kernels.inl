/* fastctc/kernels.inl: the table of row kernels the trellis calls, one per dtype.
 * dispatch.h fills one table per ISA level; trellis.inl only ever calls through it.
 * Instantiated for float and double through template.h.
 */
typedef struct FCTC_FN(fctc_kernels) {
    FCTC_T (*alpha_row)(const FCTC_T *prev, FCTC_T *cur, const FCTC_T *emit, const FCTC_T *skip,
                        int lo, int hi, FCTC_T shift);
    void (*beta_row)(const FCTC_T *nb, FCTC_T *cur, const FCTC_T *skip, int lo, int hi, FCTC_T shift);
    void (*gamma_row)(const FCTC_T *a, const FCTC_T *b, FCTC_T offset, FCTC_T *out, int lo, int hi);
    FCTC_T (*row_lse)(const FCTC_T *x, int C);
    void (*scaled_exp_row)(const FCTC_T *x, FCTC_T shift, FCTC_T scale, FCTC_T *out, int C);
    void (*fill_row)(FCTC_T *out, FCTC_T value, int C);
} FCTC_FN(fctc_kernels);
