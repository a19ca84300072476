/* fastctc/trellis.inl: the CTC forward-backward for one sequence, written once.
 *
 * Design
 * ------
 * Extended target: l' = (blank, y1, blank, y2, ..., yL, blank), S = 2L + 1 states.
 * alpha(t, s) = log P(prefix of l' ending in state s | frames 0..t), emission of t included.
 * beta(t, s)  = log P(frames t+1..T-1 complete l' | state s at t), emission of t excluded.
 * log p(y|x)  = lse(alpha(T-1, S-1), alpha(T-1, S-2)).
 * Occupancy gamma(t, s) = exp(alpha + beta - log p); d log p / d lp(t, c) = sum over the
 * states s whose label is c of gamma(t, s).
 *
 * Each frame's row depends only on the previous row, so every row is a data-parallel
 * loop over states (the row kernels of rows_*.inl); gathering the frame's emissions
 * into a contiguous row first (emit[s] = lp(t, l'(s))) keeps those loops free of
 * indirection, which is what lets the vector kernels work on contiguous lanes.
 *
 * Band: at frame t only states in [S - 2(T - t), 2t + 2) can both be reached from the
 * start and still reach an end state, so only those are computed (warp-ctc's CPU path
 * does the same).  The lower bound is dropped when the caller asks for log_alpha,
 * whose values below it are real (if useless for the loss).  Two -inf cells are kept on
 * each side of the computed band so the neighbours s-2..s+2 need no bounds checks.
 *
 * Memory: the loss alone keeps two alpha rows; the gradient keeps the sequence's alpha
 * (T rows) and two beta rows, and writes every gradient row exactly once, walking time
 * backwards.  Nothing is allocated here: the caller passes scratch of
 * fastctc_sequence_scratch_bytes() bytes.
 *
 * Instantiated for float and double through template.h.
 */

static FCTC_T *FCTC_FN(fctc_carve)(unsigned char **cursor, size_t count) {
    FCTC_T *p = (FCTC_T *)*cursor;
    *cursor += fctc_round_up(count * sizeof(FCTC_T), FCTC_ALIGN);
    return p;
}

/* Gather one frame's emissions for states [lo, hi): emit[s] = x[l'(s)] - shift. */
static void FCTC_FN(fctc_gather_emissions)(const FCTC_T *x, const int *ext, FCTC_T shift,
                                           FCTC_T *emit, int lo, int hi) {
    for (int s = lo; s < hi; ++s) emit[s] = x[ext[s]] - shift;
}

/* Mark the two cells on each side of a computed band [lo, hi) as -inf. */
static void FCTC_FN(fctc_fence)(FCTC_T *row, int lo, int hi) {
    row[lo - 1] = FCTC_NEG_INF;
    row[lo - 2] = FCTC_NEG_INF;
    row[hi] = FCTC_NEG_INF;
    row[hi + 1] = FCTC_NEG_INF;
}

FASTCTC_DEF FCTC_T FCTC_FN(fastctc_sequence)(const FCTC_FN(fastctc_job) *job, void *scratch) {
    const FCTC_FN(fctc_kernels) *k = FCTC_FN(fctc_kernels_active)();
    const int T = job->input_length, L = job->label_length, C = job->alphabet_size;
    const int S = 2 * L + 1;
    const int blank = job->blank;
    const int want_grad = job->grad != NULL;
    const int want_alpha = job->log_alpha != NULL;
    const FCTC_T scale = (FCTC_T)job->grad_scale;
    const size_t W = fctc_row_width(L);
    int t, s;

    /* Carve the scratch (layout mirrors fastctc_sequence_scratch_bytes). */
    unsigned char *cursor = (unsigned char *)scratch;
    int *ext = (int *)cursor;
    cursor += fctc_round_up((size_t)(S + 2) * sizeof(int), FCTC_ALIGN);
    FCTC_T *skip = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *emit = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *gam = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *beta_rows = FCTC_FN(fctc_carve)(&cursor, 2 * W);
    FCTC_T *frame_lse = FCTC_FN(fctc_carve)(&cursor, (size_t)(T > 0 ? T : 1));
    double *row_offsets = (double *)cursor;
    cursor += fctc_round_up((size_t)(T > 0 ? T : 1) * sizeof(double), FCTC_ALIGN);
    FCTC_T *alpha_rows = FCTC_FN(fctc_carve)(&cursor, (want_grad ? (size_t)(T > 0 ? T : 1) : 2) * W);

    /* Extended labels and the skip mask (0 where s-2 -> s is allowed, else -inf). */
    int repeats = 0;
    for (s = 0; s < S; ++s) ext[s] = (s & 1) ? job->labels[s >> 1] : blank;
    ext[S] = ext[S + 1] = blank;
    for (s = 0; s < S + 2; ++s)
        skip[s] = (s < S && (s & 1) && s >= 3 && ext[s] != ext[s - 2]) ? (FCTC_T)0 : FCTC_NEG_INF;
    for (s = 1; s < L; ++s) repeats += job->labels[s] == job->labels[s - 1];

    /* Feasible iff T >= L + (number of adjacent repeats): each repeat needs a blank between. */
    const int feasible = T >= L + repeats;
    const int prune = !want_alpha;
    double log_likelihood_d = -HUGE_VAL;

    if (T == 0) {
        log_likelihood_d = (L == 0) ? 0.0 : -HUGE_VAL;
    } else if (feasible || want_alpha) {
        if (job->from_logits)
            for (t = 0; t < T; ++t) frame_lse[t] = k->row_lse(job->acts + (ptrdiff_t)t * job->act_stride, C);
        else
            for (t = 0; t < T; ++t) frame_lse[t] = 0;

        double offset = 0;   /* alpha(t, s) = stored(t, s) + offset, summed in double */
        FCTC_T row_max = 0;  /* maximum of the previous stored row (0 when it is all -inf) */
        for (t = 0; t < T; ++t) {
            const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
            FCTC_T *cur = alpha_rows + (want_grad ? (size_t)t : (size_t)(t & 1)) * W + 2;
            int lo = prune ? fctc_max_int(0, S - 2 * (T - t)) : 0;
            int hi = fctc_min_int(S, 2 * t + 2);
            FCTC_T best;
            if (t == 0) {
                for (s = -2; s < S + 2; ++s) cur[s] = FCTC_NEG_INF;
                FCTC_FN(fctc_gather_emissions)(x, ext, frame_lse[0], cur, lo, hi);
                best = FCTC_NEG_INF;
                for (s = lo; s < hi; ++s) best = cur[s] > best ? cur[s] : best;
            } else {
                const FCTC_T *prev = alpha_rows + (want_grad ? (size_t)(t - 1) : (size_t)((t - 1) & 1)) * W + 2;
                best = k->alpha_row(prev, cur, x, ext, frame_lse[t], skip, lo, hi, row_max);
                FCTC_FN(fctc_fence)(cur, lo, hi);
                offset += (double)row_max;
            }
            row_offsets[t] = offset;
            row_max = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
            if (want_alpha && t < job->alpha_rows) {
                FCTC_T *out = job->log_alpha + (ptrdiff_t)t * job->alpha_stride;
                int ncopy = fctc_min_int(hi, job->alpha_cols);
                for (s = 0; s < ncopy; ++s) out[s] = (FCTC_T)((double)cur[s] + offset);
                for (s = ncopy; s < job->alpha_cols; ++s) out[s] = FCTC_NEG_INF;
            }
        }
        const FCTC_T *last = alpha_rows + (want_grad ? (size_t)(T - 1) : (size_t)((T - 1) & 1)) * W + 2;
        double tail = S > 1 ? (double)FCTC_FN(fctc_lse2)(last[S - 1], last[S - 2]) : (double)last[S - 1];
        log_likelihood_d = tail + row_offsets[T - 1];
    }

    if (want_alpha) {
        int first_blank_row = (T > 0 && (feasible || want_alpha)) ? T : 0;
        for (t = first_blank_row; t < job->alpha_rows; ++t) {
            FCTC_T *out = job->log_alpha + (ptrdiff_t)t * job->alpha_stride;
            for (s = 0; s < job->alpha_cols; ++s) out[s] = FCTC_NEG_INF;
        }
    }

    const FCTC_T log_likelihood = (FCTC_T)log_likelihood_d;
    if (want_grad) {
        /* Rows past the input length, and every row of an infeasible sequence: zero. */
        int zero_from = (log_likelihood == FCTC_NEG_INF) ? 0 : T;
        for (t = zero_from; t < job->grad_rows; ++t)
            k->fill_row(job->grad + (ptrdiff_t)t * job->grad_stride, (FCTC_T)0, C);
        if (log_likelihood != FCTC_NEG_INF && T > 0) {
            FCTC_T *bcur = beta_rows + 2;          /* beta(t) - beta_offset */
            FCTC_T *bnext = beta_rows + W + 2;     /* beta(t+1) + emit(t+1) - beta_offset */
            FCTC_T *bspare = emit + 2;             /* receives beta(t) + emit(t) */
            double beta_offset = 0;
            FCTC_T next_max = 0;                   /* maximum of bnext (0 when all -inf) */
            for (t = T - 1; t >= 0; --t) {
                const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
                const FCTC_T *arow = alpha_rows + (size_t)t * W + 2;
                FCTC_T *g = job->grad + (ptrdiff_t)t * job->grad_stride;
                int lo = prune ? fctc_max_int(0, S - 2 * (T - t)) : 0;
                int hi = fctc_min_int(S, 2 * t + 2);
                if (t == T - 1) {
                    for (s = -2; s < S + 2; ++s) bcur[s] = FCTC_NEG_INF;
                    bcur[S - 1] = 0;
                    if (S > 1) bcur[S - 2] = 0;
                } else {
                    FCTC_T best = k->beta_row(bnext, bcur, bspare, x, ext, frame_lse[t], skip, lo, hi, next_max);
                    FCTC_FN(fctc_fence)(bcur, lo, hi);
                    FCTC_FN(fctc_fence)(bspare, lo, hi);
                    beta_offset += (double)next_max;
                    FCTC_T *swap = bnext;
                    bnext = bspare;
                    bspare = swap;
                    next_max = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
                }
                /* alpha + beta - log p, with the large parts combined in double so that
                 * float32 keeps its precision however far the log-probs reach. */
                k->gamma_row(arow, bcur, (FCTC_T)(row_offsets[t] + beta_offset - log_likelihood_d), gam, lo, hi);

                /* Gradient row: softmax part (logits) or zero, then minus the occupancy
                 * of every state, summed per label in state order (deterministic). */
                if (job->from_logits) k->scaled_exp_row(x, frame_lse[t], scale, g, C);
                else k->fill_row(g, (FCTC_T)0, C);
                FCTC_T blank_occupancy = 0;
                for (s = lo + (lo & 1); s < hi; s += 2) blank_occupancy += gam[s];
                g[blank] -= scale * blank_occupancy;
                for (s = lo | 1; s < hi; s += 2) g[ext[s]] -= scale * gam[s];

                if (t == T - 1 && t > 0) {
                    /* the first nb row: beta(T-1) + emit(T-1); later ones come from beta_row */
                    FCTC_T best = FCTC_NEG_INF;
                    FCTC_FN(fctc_gather_emissions)(x, ext, frame_lse[t], bnext, lo, hi);
                    for (s = lo; s < hi; ++s) {
                        FCTC_T v = bcur[s] + bnext[s];
                        bnext[s] = v;
                        best = v > best ? v : best;
                    }
                    FCTC_FN(fctc_fence)(bnext, lo, hi);
                    next_max = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
                }
            }
        }
    }
    return (FCTC_T)(-log_likelihood_d);
}
