/* fastctc/detail/align.h: CTC forced alignment (the Viterbi best path), one sequence at a
 * time and the batch C API fastctc_align_f32 / fastctc_align_f64.
 *
 * Design
 * ------
 * Same extended target as trellis.h: l' = (blank, y1, blank, ..., yL, blank),
 * S = 2L + 1 states.  The trellis is the max-plus version of the forward pass:
 *     v(t, s) = max(v(t-1, s), v(t-1, s-1), v(t-1, s-2) if the skip is allowed) + lp(t, l'(s))
 * with one backpointer (0, 1 or 2 states back) kept per cell, then a walk back from the
 * better of the two end states.  No log-add-exp, so no row normalisation is needed:
 * every value is a plain sum of log-probabilities, exactly as a reference computes it.
 *
 * Ties are broken exactly as torchaudio.functional.forced_align does, so both give the
 * same path on the same input: the skip (s-2) is taken only when strictly greater than
 * both others, then the previous state (s-1) only when strictly greater than staying,
 * else stay; at the end the trailing blank (S-1) only when strictly greater than the last
 * label (S-2).  The values themselves are computed in the input's precision in the same
 * order (best predecessor + emission), so exact ties are seen as ties by both.
 *
 * Band: only states in [S - 2(T - t), 2t + 2) at frame t can be reached from the start
 * and still reach an end state (the same conservative band as trellis.h).  torchaudio
 * computes a tighter band; the result is the same, because the predecessors of a state
 * that can finish can themselves finish, so the cells compared on the path are equal in
 * both.  Two -inf cells on each side of the computed band make s-1, s-2 readable.
 *
 * Memory: two value rows, one emission row, and T * S one-byte backpointers per sequence
 * (the walk back needs them all).  Nothing is allocated here; the batch entry point
 * sizes one scratch per thread before its OpenMP loop.
 *
 * Row kernel: written once as an always-inline function, compiled twice on x86 with
 * GCC/Clang: at the baseline ISA and inside an AVX2 target function, chosen through
 * the SIMD level (fastctc_simd_level()).  The loop is branch-free (selects), so the
 * compiler vectorises both.
 *
 * Instantiated for float and double through template.h; the parts that do not depend
 * on the element type are compiled once (FCTC_ALIGN_COMMON_DONE).
 */

#ifndef FCTC_ALIGN_COMMON_DONE
#define FCTC_ALIGN_COMMON_DONE

#if defined(__GNUC__) || defined(__clang__)
#define FCTC_ALIGN_INLINE static inline __attribute__((always_inline))
#define FCTC_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define FCTC_ALIGN_INLINE static __forceinline
#define FCTC_RESTRICT __restrict
#else
#define FCTC_ALIGN_INLINE static inline
#define FCTC_RESTRICT
#endif

#if defined(FCTC_X86) && (defined(__GNUC__) || defined(__clang__)) && !defined(FASTCTC_NO_SIMD)
#define FCTC_ALIGN_AVX2 1
#endif

FASTCTC_DEF size_t fastctc_align_scratch_bytes(int max_time, int max_label_length, size_t elem_size) {
    if (max_time < 0 || max_label_length < 0 || max_label_length > (INT_MAX - 8) / 2 ||
        (elem_size != 4 && elem_size != 8))
        return 0;
    size_t S = 2 * (size_t)max_label_length + 1;
    size_t W = fctc_row_width(max_label_length);
    size_t T = max_time > 0 ? (size_t)max_time : 1;
    if (S > (SIZE_MAX / 4) / T) return 0; /* backpointers: T * S bytes */
    size_t bytes = fctc_round_up((S + 2) * sizeof(int), FCTC_ALIGN); /* extended labels */
    bytes += 4 * fctc_round_up(W * elem_size, FCTC_ALIGN); /* 2 value rows, emit, skip */
    bytes += fctc_round_up(T * elem_size, FCTC_ALIGN); /* per-frame log-sum-exp */
    bytes += fctc_round_up(T * S, FCTC_ALIGN); /* backpointers */
    return bytes;
}

#endif /* FCTC_ALIGN_COMMON_DONE */

/* ---- per element type ---- */

/* One frame of the max-plus recursion over states [lo, hi):
 *   cur[s] = best of (prev[s], prev[s-1], prev[s-2] where skip[s] == 0) + emit[s],
 * bp[s] = how many states back the best one is.  Branch-free so that it vectorises;
 * the comparisons are the tie-breaking rule of the file comment.  The five rows never
 * overlap (restrict: no run-time aliasing checks in front of the vector loop). */
FCTC_ALIGN_INLINE void FCTC_FN(fctc_viterbi_row_body)(const FCTC_T *FCTC_RESTRICT prev, FCTC_T *FCTC_RESTRICT cur,
                                                      const FCTC_T *FCTC_RESTRICT emit,
                                                      const FCTC_T *FCTC_RESTRICT skip, unsigned char *FCTC_RESTRICT bp,
                                                      int lo, int hi) {
    for (int s = lo; s < hi; ++s) {
        FCTC_T x0 = prev[s], x1 = prev[s - 1];
        FCTC_T x2 = skip[s] == 0 ? prev[s - 2] : FCTC_NEG_INF; /* (skip: trellis.h's row) */
        int move = x1 > x0; /* s-1 beats staying */
        int take2 = (x2 > x1) & (x2 > x0); /* the skip beats both */
        FCTC_T m01 = move ? x1 : x0;
        FCTC_T best = take2 ? x2 : m01;
        bp[s] = (unsigned char)(2 * take2 + (move & (take2 ^ 1)));
        cur[s] = best + emit[s];
    }
}

static void FCTC_FN(fctc_viterbi_row_base)(const FCTC_T *FCTC_RESTRICT prev, FCTC_T *FCTC_RESTRICT cur,
                                           const FCTC_T *FCTC_RESTRICT emit, const FCTC_T *FCTC_RESTRICT skip,
                                           unsigned char *FCTC_RESTRICT bp, int lo, int hi) {
    FCTC_FN(fctc_viterbi_row_body)(prev, cur, emit, skip, bp, lo, hi);
}

#ifdef FCTC_ALIGN_AVX2
__attribute__((target("avx2,fma"))) static void
FCTC_FN(fctc_viterbi_row_avx2)(const FCTC_T *FCTC_RESTRICT prev, FCTC_T *FCTC_RESTRICT cur,
                               const FCTC_T *FCTC_RESTRICT emit, const FCTC_T *FCTC_RESTRICT skip,
                               unsigned char *FCTC_RESTRICT bp, int lo, int hi) {
    FCTC_FN(fctc_viterbi_row_body)(prev, cur, emit, skip, bp, lo, hi);
}
#endif

typedef void (*FCTC_FN(fctc_viterbi_row_fn))(const FCTC_T *, FCTC_T *, const FCTC_T *, const FCTC_T *, unsigned char *,
                                             int, int);

static FCTC_FN(fctc_viterbi_row_fn) FCTC_FN(fctc_viterbi_row_active)(void) {
#ifdef FCTC_ALIGN_AVX2
    int level = fastctc_simd_level();
    if (level == FASTCTC_SIMD_AVX2 || level == FASTCTC_SIMD_AVX512) return FCTC_FN(fctc_viterbi_row_avx2);
#endif
    return FCTC_FN(fctc_viterbi_row_base);
}

/* Rows [from, out_rows) of the outputs: blank, score 0. */
static void FCTC_FN(fctc_align_blank_rows)(const FCTC_FN(fastctc_align_job) * job, int from) {
    for (int t = from; t < job->out_rows; ++t) {
        job->path[t] = job->blank;
        if (job->scores) job->scores[t] = 0;
    }
}

FASTCTC_DEF FCTC_T FCTC_FN(fastctc_align_sequence)(const FCTC_FN(fastctc_align_job) * job, void *scratch) {
    const int T = job->input_length, L = job->label_length, C = job->alphabet_size;
    const int S = 2 * L + 1;
    int t, s;
    /* No frames, or labels that cannot fit: no trellis is laid out (so the scratch need not
     * hold the labels, as for the loss); every row blank, score 0. */
    if (T == 0 || !fctc_feasible(T, L, job->labels)) {
        FCTC_FN(fctc_align_blank_rows)(job, 0);
        return (T == 0 && L == 0) ? (FCTC_T)0 : FCTC_NEG_INF;
    }
    const size_t W = fctc_row_width(L);
    const FCTC_FN(fctc_viterbi_row_fn) row = FCTC_FN(fctc_viterbi_row_active)();

    /* Carve the scratch (layout mirrors fastctc_align_scratch_bytes). */
    unsigned char *cursor = (unsigned char *)scratch;
    int *ext = (int *)cursor;
    cursor += fctc_round_up((size_t)(S + 2) * sizeof(int), FCTC_ALIGN);
    FCTC_T *rows[2];
    rows[0] = FCTC_FN(fctc_carve)(&cursor, W) + 2;
    rows[1] = FCTC_FN(fctc_carve)(&cursor, W) + 2;
    FCTC_T *emit = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *skip = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *frame_lse = FCTC_FN(fctc_carve)(&cursor, (size_t)T);
    unsigned char *bp = cursor;

    FCTC_FN(fctc_extend_labels)(job->labels, L, job->blank, ext, skip);
    if (job->from_logits) {
        const FCTC_FN(fctc_kernels) *k = FCTC_FN(fctc_kernels_active)();
        for (t = 0; t < T; ++t)
            frame_lse[t] = k->row_lse(job->acts + (ptrdiff_t)t * job->act_stride, C,
                                      t + 1 < T ? job->acts + (ptrdiff_t)(t + 1) * job->act_stride : NULL);
    }
    for (t = 0; t < T; ++t) {
        const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
        FCTC_T *cur = rows[t & 1];
        int lo = fctc_band_lo(T, S, t), hi = fctc_band_hi(S, t);
        /* the emissions' shift: log_softmax's, or none (x - 0 is x, bit for bit) */
        FCTC_T shift = job->from_logits ? frame_lse[t] : (FCTC_T)0;
        if (t == 0) {
            (void)FCTC_FN(fctc_alpha_first_row)(x, ext, shift, cur, S, lo, hi);
        } else {
            FCTC_FN(fctc_gather_emissions)(x, ext, shift, emit, lo, hi);
            row(rows[(t - 1) & 1], cur, emit, skip, bp + (size_t)t * (size_t)S, lo, hi);
            FCTC_FN(fctc_fence)(cur, lo, hi);
        }
    }
    const FCTC_T *last = rows[(T - 1) & 1];
    const int end_state = (S == 1 || last[S - 1] > last[S - 2]) ? S - 1 : S - 2;
    const FCTC_T total = last[end_state];

    /* Walk back.  Off the band the backpointers were not written this call; a path
     * only gets there when every value is -inf or NaN (no finite path), and then it
     * stays put, so the walk is always in bounds. */
    s = end_state;
    for (t = T - 1; t >= 0; --t) {
        const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
        int c = ext[s];
        job->path[t] = c;
        if (job->scores) job->scores[t] = job->from_logits ? x[c] - frame_lse[t] : x[c];
        if (t > 0) {
            int back =
                (s >= fctc_band_lo(T, S, t) && s < fctc_band_hi(S, t)) ? bp[(size_t)t * (size_t)S + (size_t)s] : 0;
            if (back > s) back = s;
            s -= back;
        }
    }
    FCTC_FN(fctc_align_blank_rows)(job, T); /* rows past the input length */
    return total;
}
