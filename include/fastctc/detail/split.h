/* fastctc/detail/split.h: one sequence's gradient on two threads, the same bits as one.
 *
 * When a batch has fewer sequences than threads (one long utterance), the gradient
 * pass of one sequence is split in three phases, with m = T / 2 and a barrier between:
 *   1. role 0: alpha rows [0, m);               role 1: beta rows [T-1 .. m]
 *   2. role 0: alpha rows [m, T), then log p from alpha(T-1), exactly as the one-thread
 *              pass forms it;                    role 1: beta rows [m-1 .. 0]
 *   3. role 0: occupancies and gradient rows [m, T); role 1: rows [0, m).
 * Each role computes the log-sum-exp (logits: and the softmax part of the gradient) and
 * the non-finite check of the frames of its phase-1 rows.  Every row, offset and
 * gradient entry comes from the same kernel call on the same inputs as in
 * fastctc_sequence, so the loss and the gradient are bit-identical to the one-thread
 * pass whatever the thread count, the team size the runtime grants, or concurrent
 * calls.  Memory: alpha and beta are both kept whole (fctc_split_scratch_bytes: about
 * twice fastctc_sequence's).  One OpenMP region of two threads (with one -- a runtime
 * that grants fewer -- the roles run one after the other).  Only the plain
 * gradient job of a feasible sequence with T >= 8 takes this path; any other job runs
 * fastctc_sequence.  The batch driver (driver.h) chooses this pass; it is not part of the
 * C API.
 *
 * Instantiated for float and double through template.h; the scratch size, which does not
 * depend on the element type, is compiled once (FCTC_SPLIT_COMMON_DONE).
 */

#ifndef FCTC_SPLIT_COMMON_DONE
#define FCTC_SPLIT_COMMON_DONE
/* Scratch of one fctc_sequence_split_* call; 0 on overflow. */
static size_t fctc_split_scratch_bytes(int max_time, int max_label_length, size_t elem_size) {
    if (max_time < 0 || max_label_length < 0 || max_label_length > (INT_MAX - 8) / 2) return 0;
    size_t S = 2 * (size_t)max_label_length + 1;
    size_t W = fctc_row_width(max_label_length);
    size_t T = max_time > 0 ? (size_t)max_time : 1;
    if (W > (SIZE_MAX / 8) / elem_size / T) return 0;
    size_t bytes = fctc_round_up((S + 2) * sizeof(int), FCTC_ALIGN);
    bytes += 7 * fctc_round_up(W * elem_size, FCTC_ALIGN); /* skip; the roles' private rows */
    bytes += 2 * fctc_round_up(T * W * elem_size, FCTC_ALIGN); /* alpha and beta, whole */
    bytes += fctc_round_up(T * elem_size, FCTC_ALIGN); /* per-frame log-sum-exp */
    bytes += 2 * fctc_round_up(T * sizeof(double), FCTC_ALIGN); /* alpha and beta offsets */
    return bytes;
}
#endif /* FCTC_SPLIT_COMMON_DONE */

/* Alpha rows [from, to) into arows (T rows of W) and their offsets into aoff, carrying
 * st, as fastctc_sequence's forward pass makes them; *bad |= the non-finite rule's
 * verdict on those frames. */
static void FCTC_FN(fctc_alpha_range)(const FCTC_FN(fctc_kernels) * k, const FCTC_FN(fastctc_job) * job, const int *ext,
                                      const FCTC_T *skip, const FCTC_T *frame_lse, FCTC_T *arows, double *aoff,
                                      size_t W, int from, int to, FCTC_FN(fctc_alpha_state) * st, FCTC_T *tmp,
                                      int *bad) {
    const int T = job->input_length, S = 2 * job->label_length + 1;
    for (int t = from; t < to; ++t) {
        FCTC_T *cur = arows + (size_t)t * W + 2;
        /* (logits: phase 1's softmax rows prefetched the frames) */
        FCTC_T best =
            FCTC_FN(fctc_alpha_step)(k, job, ext, skip, frame_lse[t], t, fctc_band_lo(T, S, t), fctc_band_hi(S, t),
                                     t > 0 ? cur - W : NULL, cur, tmp, st, !job->from_logits);
        *bad |= FCTC_FN(fctc_alpha_bad)(job, ext, frame_lse[t], t, 1, best);
        aoff[t] = st->offset;
    }
}

/* Beta rows from `from` down to `to` (inclusive) into brows and their offsets into boff,
 * carrying st, as fastctc_sequence's backward pass makes them; from == T - 1 starts the
 * pass.  bad: NULL, or *bad |= the non-finite rule's verdict on those frames' emissions
 * (checked here, not by the beta kernel: the one-thread pass has checked every frame in
 * its forward pass already). */
static void FCTC_FN(fctc_beta_range)(const FCTC_FN(fctc_kernels) * k, const FCTC_FN(fastctc_job) * job, const int *ext,
                                     const FCTC_T *skip, const FCTC_T *frame_lse, FCTC_T *brows, double *boff, size_t W,
                                     int from, int to, FCTC_FN(fctc_beta_state) * st, FCTC_T *tmp, int *bad) {
    const int T = job->input_length, S = 2 * job->label_length + 1;
    for (int t = from; t >= to; --t) {
        const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
        FCTC_T *cur = brows + (size_t)t * W + 2;
        int lo = fctc_band_lo(T, S, t), hi = fctc_band_hi(S, t);
        if (t == T - 1) {
            FCTC_FN(fctc_beta_last_row)(cur, S);
            FCTC_FN(fctc_beta_first_nb)(x, ext, frame_lse[t], cur, lo, hi, st);
        } else {
            FCTC_FN(fctc_beta_step)(k, job, ext, skip, frame_lse[t], t, lo, hi, cur, tmp, st, NULL);
        }
        boff[t] = st->offset;
        if (bad) *bad |= FCTC_FN(fctc_band_bad)(x, ext, lo, hi); /* (frame t's emissions are in L1 now) */
    }
}

static FCTC_T FCTC_FN(fctc_sequence_split)(const FCTC_FN(fastctc_job) * job, void *scratch) {
    const int T = job->input_length, L = job->label_length, C = job->alphabet_size;
    const int S = 2 * L + 1;
    int s;
    if (job->grad == NULL || job->log_alpha != NULL || T < 8 || !fctc_feasible(T, L, job->labels))
        return FCTC_FN(fastctc_sequence)(job, scratch);

    const FCTC_FN(fctc_kernels) *k = FCTC_FN(fctc_kernels_active)();
    const size_t W = fctc_row_width(L);
    const int m = T / 2;
    unsigned char *cursor = (unsigned char *)scratch;
    int *ext = (int *)cursor;
    cursor += fctc_round_up((size_t)(S + 2) * sizeof(int), FCTC_ALIGN);
    FCTC_T *skip = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *tmp[2], *gam[2];
    tmp[0] = FCTC_FN(fctc_carve)(&cursor, W);
    gam[0] = FCTC_FN(fctc_carve)(&cursor, W);
    tmp[1] = FCTC_FN(fctc_carve)(&cursor, W);
    gam[1] = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *nb_a = FCTC_FN(fctc_carve)(&cursor, W) + 2;
    FCTC_T *nb_b = FCTC_FN(fctc_carve)(&cursor, W) + 2;
    FCTC_T *arows = FCTC_FN(fctc_carve)(&cursor, (size_t)T * W);
    FCTC_T *brows = FCTC_FN(fctc_carve)(&cursor, (size_t)T * W);
    FCTC_T *frame_lse = FCTC_FN(fctc_carve)(&cursor, (size_t)T);
    double *aoff = (double *)cursor;
    cursor += fctc_round_up((size_t)T * sizeof(double), FCTC_ALIGN);
    double *boff = (double *)cursor;

    FCTC_FN(fctc_extend_labels)(job->labels, L, job->blank, ext, skip);
    for (s = 0; s < (int)W; ++s) tmp[0][s] = gam[0][s] = tmp[1][s] = gam[1][s] = 0; /* see fastctc_sequence */

    /* state carried between phases (shared; the barriers order it) */
    int bad[2] = {0, 0};
    double log_p = -HUGE_VAL;
    FCTC_FN(fctc_alpha_state) alpha = {0, 0};
    FCTC_FN(fctc_beta_state) beta = {nb_a, nb_b, 0, 0};

#ifdef _OPENMP
#pragma omp parallel num_threads(2)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        const int tid = 0, nth = 1;
#endif
        int role, t;

        /* phase 1 */
        for (role = tid; role < 2; role += nth) {
            const int first = role == 0 ? 0 : m, end = role == 0 ? m : T;
            for (t = first; t < end; ++t) {
                const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
                const FCTC_T *next = t + 1 < end ? x + job->act_stride : NULL;
                if (!job->from_logits)
                    frame_lse[t] = 0;
                else /* the gradient's softmax part, as the one-thread pass writes it */
                    frame_lse[t] = k->softmax_row(x, C, (FCTC_T)job->grad_scale,
                                                  job->grad + (ptrdiff_t)t * job->grad_stride, next);
                if (job->from_logits) bad[role] |= FCTC_FN(fctc_lse_bad)(frame_lse[t]);
            }
            /* (log-probabilities: the rows' kernels check the emissions of these frames) */
            if (role == 0)
                FCTC_FN(fctc_alpha_range)(k, job, ext, skip, frame_lse, arows, aoff, W, 0, m, &alpha, tmp[0], &bad[0]);
            else
                FCTC_FN(fctc_beta_range)(k, job, ext, skip, frame_lse, brows, boff, W, T - 1, m, &beta, tmp[1], NULL);
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
        const int any_bad = bad[0] | bad[1];

        /* phase 2 */
        for (role = tid; role < 2 && !any_bad; role += nth) {
            int checked_in_phase_1 = 0; /* (these frames' emissions were checked by the other role) */
            if (role == 0) {
                FCTC_FN(fctc_alpha_range)
                (k, job, ext, skip, frame_lse, arows, aoff, W, m, T, &alpha, tmp[0], &checked_in_phase_1);
                log_p = FCTC_FN(fctc_log_likelihood)(arows + (size_t)(T - 1) * W + 2, S, aoff[T - 1]);
            } else {
                FCTC_FN(fctc_beta_range)(k, job, ext, skip, frame_lse, brows, boff, W, m - 1, 0, &beta, tmp[1], NULL);
            }
        }
#ifdef _OPENMP
#pragma omp barrier
#endif

        /* phase 3 (the non-finite rule: a bad emission in the band made log p NaN or +inf) */
        const int nonfinite = any_bad || !(log_p < HUGE_VAL);
        const double lp = nonfinite ? NAN : log_p;
        const int dead = nonfinite || (FCTC_T)lp == FCTC_NEG_INF;
        for (role = tid; role < 2; role += nth) {
            const int first = role == 0 ? m : 0, end = role == 0 ? job->grad_rows : m;
            for (t = first; t < end; ++t) {
                FCTC_T *g = job->grad + (ptrdiff_t)t * job->grad_stride;
                if (dead || t >= T) {
                    k->fill_row(g, (nonfinite && t < T) ? (FCTC_T)NAN : (FCTC_T)0, C, 0);
                    continue;
                }
                FCTC_FN(fctc_grad_row)
                (k, job, t, arows + (size_t)t * W + 2, brows + (size_t)t * W + 2, (FCTC_T)(aoff[t] + boff[t] - lp),
                 gam[role], ext, fctc_band_lo(T, S, t), fctc_band_hi(S, t), frame_lse[t], job->from_logits, 0);
            }
        }
    }
    return (FCTC_T)(-((bad[0] | bad[1]) || !(log_p < HUGE_VAL) ? NAN : log_p));
}
