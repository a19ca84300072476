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
    bytes += 4 * fctc_round_up(W * elem_size, FCTC_ALIGN);            /* 2 value rows, emit, skip */
    bytes += fctc_round_up(T * elem_size, FCTC_ALIGN);                /* per-frame log-sum-exp */
    bytes += fctc_round_up(T * S, FCTC_ALIGN);                        /* backpointers */
    return bytes;
}

/* Checks every argument of the batch call (nothing is written); 0 when all is well. */
static int fctc_align_check(const int *flat_labels, const int *label_lengths, const int *input_lengths,
                            int max_time, int minibatch, int alphabet_size, const fastctc_options *o,
                            int *longest_input, int *longest_label, size_t *total_labels) {
    size_t total = 0, offset = 0;
    if (fctc_check_sizes(label_lengths, input_lengths, max_time, minibatch, alphabet_size, o, longest_input,
                         longest_label, &total))
        return 1;
    if (total > 0 && !flat_labels) return 1;
    for (int n = 0; n < minibatch; ++n) {
        const int *lab = flat_labels ? flat_labels + offset : NULL;
        int L = label_lengths[n];
        for (int i = 0; i < L; ++i)
            if (lab[i] < 0 || lab[i] >= alphabet_size || lab[i] == o->blank) return 1;
        /* T >= L + repeats: the labels must fit (torchaudio's "targets length is too long") */
        if (L > 0 && (long long)input_lengths[n] < (long long)L + fctc_count_repeats(lab, L)) return 1;
        offset += (size_t)L;
    }
    *total_labels = total;
    return 0;
}

/* Per-thread scratch and total workspace of the batch call; 0 on overflow. */
static size_t fctc_align_workspace_bytes(int longest_input, int longest_label, size_t elem_size, int threads,
                                         int minibatch, size_t *per_thread) {
    size_t one = fastctc_align_scratch_bytes(longest_input, longest_label, elem_size);
    if (one == 0) return 0;
    if ((size_t)threads > (SIZE_MAX / 4) / one) return 0;
    *per_thread = one;
    return one * (size_t)threads + fctc_round_up((size_t)minibatch * sizeof(ptrdiff_t), FCTC_ALIGN) + FCTC_ALIGN;
}

FASTCTC_DEF fastctc_status fastctc_align_workspace_size(const int *label_lengths, const int *input_lengths,
                                                        int max_time, int minibatch, int alphabet_size,
                                                        size_t elem_size, const fastctc_options *options,
                                                        size_t *size_bytes) {
    const fastctc_options *o = options ? options : &fctc_default_options;
    int longest_input, longest_label;
    size_t total, per_thread;
    if (!size_bytes || (elem_size != sizeof(float) && elem_size != sizeof(double))) return FASTCTC_INVALID_ARGUMENT;
    if (fctc_check_sizes(label_lengths, input_lengths, max_time, minibatch, alphabet_size, o, &longest_input,
                         &longest_label, &total))
        return FASTCTC_INVALID_ARGUMENT;
    size_t bytes = fctc_align_workspace_bytes(longest_input, longest_label, elem_size, fctc_threads_for(o, minibatch),
                                              minibatch, &per_thread);
    if (bytes == 0) return FASTCTC_INVALID_ARGUMENT;
    *size_bytes = bytes;
    return FASTCTC_OK;
}

#endif /* FCTC_ALIGN_COMMON_DONE */

/* ---- per element type ---- */

/* One frame of the max-plus recursion over states [lo, hi):
 *   cur[s] = best of (prev[s], prev[s-1], prev[s-2] where skip_ok[s] != 0) + emit[s],
 * bp[s] = how many states back the best one is.  Branch-free so that it vectorises;
 * the comparisons are the tie-breaking rule of the file comment.  The five rows never
 * overlap (restrict: no run-time aliasing checks in front of the vector loop). */
FCTC_ALIGN_INLINE void FCTC_FN(fctc_viterbi_row_body)(const FCTC_T *FCTC_RESTRICT prev, FCTC_T *FCTC_RESTRICT cur,
                                                      const FCTC_T *FCTC_RESTRICT emit,
                                                      const FCTC_T *FCTC_RESTRICT skip_ok,
                                                      unsigned char *FCTC_RESTRICT bp, int lo, int hi) {
    for (int s = lo; s < hi; ++s) {
        FCTC_T x0 = prev[s], x1 = prev[s - 1];
        FCTC_T x2 = skip_ok[s] > 0 ? prev[s - 2] : FCTC_NEG_INF;
        int move = x1 > x0;                  /* s-1 beats staying */
        int take2 = (x2 > x1) & (x2 > x0);   /* the skip beats both */
        FCTC_T m01 = move ? x1 : x0;
        FCTC_T best = take2 ? x2 : m01;
        bp[s] = (unsigned char)(2 * take2 + (move & (take2 ^ 1)));
        cur[s] = best + emit[s];
    }
}

static void FCTC_FN(fctc_viterbi_row_base)(const FCTC_T *FCTC_RESTRICT prev, FCTC_T *FCTC_RESTRICT cur,
                                           const FCTC_T *FCTC_RESTRICT emit, const FCTC_T *FCTC_RESTRICT skip_ok,
                                           unsigned char *FCTC_RESTRICT bp, int lo, int hi) {
    FCTC_FN(fctc_viterbi_row_body)(prev, cur, emit, skip_ok, bp, lo, hi);
}

#ifdef FCTC_ALIGN_AVX2
__attribute__((target("avx2,fma"))) static void FCTC_FN(fctc_viterbi_row_avx2)(
    const FCTC_T *FCTC_RESTRICT prev, FCTC_T *FCTC_RESTRICT cur, const FCTC_T *FCTC_RESTRICT emit,
    const FCTC_T *FCTC_RESTRICT skip_ok, unsigned char *FCTC_RESTRICT bp, int lo, int hi) {
    FCTC_FN(fctc_viterbi_row_body)(prev, cur, emit, skip_ok, bp, lo, hi);
}
#endif

typedef void (*FCTC_FN(fctc_viterbi_row_fn))(const FCTC_T *, FCTC_T *, const FCTC_T *, const FCTC_T *,
                                              unsigned char *, int, int);

static FCTC_FN(fctc_viterbi_row_fn) FCTC_FN(fctc_viterbi_row_active)(void) {
#ifdef FCTC_ALIGN_AVX2
    int level = fastctc_simd_level();
    if (level == FASTCTC_SIMD_AVX2 || level == FASTCTC_SIMD_AVX512) return FCTC_FN(fctc_viterbi_row_avx2);
#endif
    return FCTC_FN(fctc_viterbi_row_base);
}

FASTCTC_DEF FCTC_T FCTC_FN(fastctc_align_sequence)(const FCTC_FN(fastctc_align_job) *job, void *scratch) {
    const int T = job->input_length, L = job->label_length, C = job->alphabet_size;
    const int S = 2 * L + 1;
    const int blank = job->blank;
    const size_t W = fctc_row_width(L);
    const FCTC_FN(fctc_viterbi_row_fn) row = FCTC_FN(fctc_viterbi_row_active)();
    FCTC_T total = FCTC_NEG_INF;
    int t, s;

    /* Carve the scratch (layout mirrors fastctc_align_scratch_bytes). */
    unsigned char *cursor = (unsigned char *)scratch;
    int *ext = (int *)cursor;
    cursor += fctc_round_up((size_t)(S + 2) * sizeof(int), FCTC_ALIGN);
    FCTC_T *rows[2];
    rows[0] = FCTC_FN(fctc_carve)(&cursor, W) + 2;
    rows[1] = FCTC_FN(fctc_carve)(&cursor, W) + 2;
    FCTC_T *emit = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *skip_ok = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *frame_lse = FCTC_FN(fctc_carve)(&cursor, (size_t)(T > 0 ? T : 1));
    unsigned char *bp = cursor;

    for (s = 0; s < S; ++s) ext[s] = (s & 1) ? job->labels[s >> 1] : blank;
    ext[S] = ext[S + 1] = blank;
    for (s = 0; s < S + 2; ++s)
        skip_ok[s] = (s < S && (s & 1) && s >= 3 && ext[s] != ext[s - 2]) ? (FCTC_T)1 : (FCTC_T)0;
    const int feasible = L == 0 || (T >= L + fctc_count_repeats(job->labels, L));

    int end_state = -1;
    if (T > 0 && feasible) {
        if (job->from_logits) {
            const FCTC_FN(fctc_kernels) *k = FCTC_FN(fctc_kernels_active)();
            for (t = 0; t < T; ++t) frame_lse[t] = k->row_lse(job->acts + (ptrdiff_t)t * job->act_stride, C,
                                                               t + 1 < T ? job->acts + (ptrdiff_t)(t + 1) * job->act_stride : NULL);
        }
        for (t = 0; t < T; ++t) {
            const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
            FCTC_T *cur = rows[t & 1];
            int lo = fctc_max_int(0, S - 2 * (T - t));
            int hi = fctc_min_int(S, 2 * t + 2);
            if (job->from_logits)
                for (s = lo; s < hi; ++s) emit[s] = x[ext[s]] - frame_lse[t];
            else
                for (s = lo; s < hi; ++s) emit[s] = x[ext[s]];
            if (t == 0) {
                for (s = -2; s < S + 2; ++s) cur[s] = FCTC_NEG_INF;
                for (s = lo; s < hi; ++s) cur[s] = emit[s];
            } else {
                row(rows[(t - 1) & 1], cur, emit, skip_ok, bp + (size_t)t * (size_t)S, lo, hi);
                FCTC_FN(fctc_fence)(cur, lo, hi);
            }
        }
        const FCTC_T *last = rows[(T - 1) & 1];
        end_state = (S == 1 || last[S - 1] > last[S - 2]) ? S - 1 : S - 2;
        total = last[end_state];

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
                int lo = fctc_max_int(0, S - 2 * (T - t));
                int hi = fctc_min_int(S, 2 * t + 2);
                int back = (s >= lo && s < hi) ? bp[(size_t)t * (size_t)S + (size_t)s] : 0;
                if (back > s) back = s;
                s -= back;
            }
        }
    } else if (T == 0 && L == 0) {
        total = 0;
    }

    /* Rows past the input length, and every row of an infeasible sequence: blank, 0. */
    for (t = (T > 0 && feasible) ? T : 0; t < job->out_rows; ++t) {
        job->path[t] = blank;
        if (job->scores) job->scores[t] = 0;
    }
    return total;
}

FASTCTC_DEF fastctc_status FCTC_FN(fastctc_align)(const FCTC_T *acts, const int *flat_labels,
                                                  const int *label_lengths, const int *input_lengths,
                                                  int max_time, int minibatch, int alphabet_size, int *paths,
                                                  FCTC_T *scores, void *workspace, size_t workspace_bytes,
                                                  const fastctc_options *options) {
    const fastctc_options *o = options ? options : &fctc_default_options;
    int longest_input, longest_label, n;
    size_t per_thread, total_labels;
    if (fctc_align_check(flat_labels, label_lengths, input_lengths, max_time, minibatch, alphabet_size, o,
                         &longest_input, &longest_label, &total_labels))
        return FASTCTC_INVALID_ARGUMENT;
    if (minibatch > 0 && max_time > 0 && (!paths || !acts)) return FASTCTC_INVALID_ARGUMENT;
    {
        /* The outputs (and the workspace) may not overlap anything the call reads, or
         * each other: checked before anything is written. */
        const size_t cells = (size_t)max_time * (size_t)minibatch;
        const void *in[4] = {acts, flat_labels, label_lengths, input_lengths};
        size_t in_bytes[4] = {cells * (size_t)alphabet_size * sizeof(FCTC_T), total_labels * sizeof(int),
                              (size_t)minibatch * sizeof(int), (size_t)minibatch * sizeof(int)};
        const void *out[3] = {paths, scores, workspace};
        size_t out_bytes[3] = {cells * sizeof(int), cells * sizeof(FCTC_T), workspace ? workspace_bytes : 0};
        int i, j;
        for (i = 0; i < 3; ++i) {
            for (j = 0; j < 4; ++j)
                if (fctc_overlap(out[i], out_bytes[i], in[j], in_bytes[j])) return FASTCTC_INVALID_ARGUMENT;
            for (j = i + 1; j < 3; ++j)
                if (fctc_overlap(out[i], out_bytes[i], out[j], out_bytes[j])) return FASTCTC_INVALID_ARGUMENT;
        }
    }
    if (minibatch == 0 || max_time == 0) return FASTCTC_OK;

    int threads = fctc_threads_for(o, minibatch);
    if (threads > minibatch) threads = minibatch;
    size_t need = fctc_align_workspace_bytes(longest_input, longest_label, sizeof(FCTC_T), threads, minibatch,
                                             &per_thread);
    if (need == 0) return FASTCTC_INVALID_ARGUMENT;
    void *owned = NULL;
    if (workspace) {
        /* Sized for fewer threads than wanted: use that many. */
        size_t fixed = fctc_round_up((size_t)minibatch * sizeof(ptrdiff_t), FCTC_ALIGN) + FCTC_ALIGN;
        if (workspace_bytes < fixed + per_thread) return FASTCTC_WORKSPACE_TOO_SMALL;
        size_t fit = (workspace_bytes - fixed) / per_thread;
        if (fit < (size_t)threads) threads = (int)fit;
    } else {
        owned = malloc(need);
        if (!owned) return FASTCTC_OUT_OF_MEMORY;
        workspace = owned;
    }
    unsigned char *base = (unsigned char *)fctc_round_up((size_t)(uintptr_t)workspace, FCTC_ALIGN);
    ptrdiff_t *offsets = (ptrdiff_t *)(base + per_thread * (size_t)threads);
    ptrdiff_t running = 0;
    for (n = 0; n < minibatch; ++n) {
        offsets[n] = running;
        running += label_lengths[n];
    }
    const ptrdiff_t C = alphabet_size;
    const ptrdiff_t frame_stride = o->batch_major ? C : (ptrdiff_t)minibatch * C;

#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (n = 0; n < minibatch; ++n) {
#ifdef _OPENMP
        int tid = omp_get_thread_num();
#else
        int tid = 0;
#endif
        FCTC_FN(fastctc_align_job) job;
        job.acts = acts + (o->batch_major ? (ptrdiff_t)n * max_time * C : (ptrdiff_t)n * C);
        job.act_stride = frame_stride;
        job.labels = flat_labels ? flat_labels + offsets[n] : NULL;
        job.label_length = label_lengths[n];
        job.input_length = input_lengths[n];
        job.alphabet_size = alphabet_size;
        job.blank = o->blank;
        job.from_logits = o->from_logits;
        job.path = paths + (ptrdiff_t)n * max_time;
        job.scores = scores ? scores + (ptrdiff_t)n * max_time : NULL;
        job.out_rows = max_time;
        (void)FCTC_FN(fastctc_align_sequence)(&job, base + per_thread * (size_t)tid);
    }
    free(owned);
    return FASTCTC_OK;
}
