/* fastctc/detail/trellis.h: the CTC forward-backward for one sequence, written once.
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
 * loop over states (the row kernels of rows_*.h, chosen once by dispatch.h); the
 * kernels gather the frame's emissions (lp(t, l'(s))) into a scratch row first, which
 * keeps the vector loops free of indirection.  The beta kernel also emits the next
 * step's beta + emission row, so each frame's emissions are gathered once per pass.
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

/* Large alphabets: the trellis reads a few scattered classes of every frame (the
 * labels and the blank), one cache miss each, and the row kernel waits for all of them.
 * Fetching them one frame ahead, while this frame's row is computed, hides that wait:
 *  - frames of 1 to 128 KiB with at most two lines per state: the whole frame (one
 *    streaming read; most lines hold a label);
 *  - larger frames, or more lines than two per state: only the lines of the blank and
 *    of the labels of states [lo, hi) (fetching whole frames there was measured 1.7x
 *    slower on vocab5k's loss: 121 states in 313 lines, most of them unread).
 * Smaller frames are a line or two, which the hardware prefetcher handles. */
/* PREFETCH (FCTC_PREFETCH or FCTC_PREFETCH_W) the lines of row[blank] (ext[0]) and of
 * row[label] for the label states of [lo, hi). */
#ifndef FCTC_PREFETCH_LABEL_LINES
#define FCTC_PREFETCH_LABEL_LINES(PREFETCH, row, ext, lo, hi)                                                          \
    do {                                                                                                               \
        PREFETCH((row) + (ext)[0]);                                                                                    \
        for (int fctc_s_ = (lo) | 1; fctc_s_ < (hi); fctc_s_ += 2) PREFETCH((row) + (ext)[fctc_s_]);                   \
    } while (0)
#endif

static void FCTC_FN(fctc_prefetch_emissions)(const FCTC_T *x, int C, int S, const int *ext, int lo, int hi) {
    size_t bytes = (size_t)C * sizeof(FCTC_T);
    if (bytes < 1024) return;
    if (bytes / 64 <= 2 * (size_t)S && bytes <= 131072)
        FCTC_PREFETCH_LINES(x, bytes);
    else
        FCTC_PREFETCH_LABEL_LINES(FCTC_PREFETCH, x, ext, lo, hi);
}

/* The backward pass subtracts occupancies at the label columns of gradient row g: with
 * rows of 1 KiB and more, fetch those lines (for writing) one frame ahead as well. */
static void FCTC_FN(fctc_prefetch_grad_labels)(FCTC_T *g, int C, const int *ext, int lo, int hi) {
    if ((size_t)C * sizeof(FCTC_T) >= 1024) FCTC_PREFETCH_LABEL_LINES(FCTC_PREFETCH_W, g, ext, lo, hi);
}

static FCTC_T *FCTC_FN(fctc_carve)(unsigned char **cursor, size_t count) {
    FCTC_T *p = (FCTC_T *)*cursor;
    *cursor += fctc_round_up(count * sizeof(FCTC_T), FCTC_ALIGN);
    return p;
}

/* Gather one frame's emissions for states [lo, hi): emit[s] = x[l'(s)] - shift. */
static void FCTC_FN(fctc_gather_emissions)(const FCTC_T *x, const int *ext, FCTC_T shift, FCTC_T *emit, int lo,
                                           int hi) {
    for (int s = lo; s < hi; ++s) emit[s] = x[ext[s]] - shift;
}

/* Mark the two cells on each side of a computed band [lo, hi) as -inf. */
static void FCTC_FN(fctc_fence)(FCTC_T *row, int lo, int hi) {
    row[lo - 1] = FCTC_NEG_INF;
    row[lo - 2] = FCTC_NEG_INF;
    row[hi] = FCTC_NEG_INF;
    row[hi + 1] = FCTC_NEG_INF;
}

/* Gradient row t, written once: the softmax part (logits) or zero, then minus the
 * occupancy gam[s] of every state in [lo, hi), summed per label in state order
 * (deterministic), all times the sequence's scale. */
static void FCTC_FN(fctc_grad_row)(const FCTC_FN(fctc_kernels) * k, const FCTC_FN(fastctc_job) * job, const FCTC_T *x,
                                   FCTC_T *g, FCTC_T lse, const FCTC_T *gam, const int *ext, int lo, int hi,
                                   int softmax_written, int stream) {
    const FCTC_T scale = (FCTC_T)job->grad_scale;
    int s;
    if (!job->from_logits)
        k->fill_row(g, (FCTC_T)0, job->alphabet_size, stream);
    else if (!softmax_written)
        k->scaled_exp_row(x, lse, scale, g, job->alphabet_size);
    FCTC_T blank_occupancy = 0;
    for (s = lo + (lo & 1); s < hi; s += 2) blank_occupancy += gam[s];
    g[job->blank] -= scale * blank_occupancy;
    for (s = lo | 1; s < hi; s += 2) g[ext[s]] -= scale * gam[s];
}

/* ---- The non-finite rule ----
 *
 * A NaN or +inf in a cell a feasible sequence reads makes its loss NaN and its gradient
 * rows [0, T) NaN (rows past T stay 0); -inf is a legal log-probability.  The cells read:
 *  - log-probabilities: at each frame t < T, the emissions of the states in the trellis
 *    band [S - 2(T - t), 2t + 2) -- the cells through which a path of T frames could pass
 *    (the loss and gradient depend on no other cell; cells of the band that repeats make
 *    unusable count too, since the two passes read them);
 *  - logits: every column of every frame t < T (the log-softmax reads them all; a frame
 *    with no score above -inf has no log-softmax and counts too).
 * An infeasible target reads nothing: +inf, gradient 0, whatever the values.  One rule
 * whatever the path (one thread, the split pass, loss only or with gradient or forward
 * variables, every SIMD level): an optimiser never sees a finite loss with a non-finite
 * gradient, or a NaN loss with a clean gradient.  Checked per frame while the frame is in
 * cache: the band's emissions were just gathered by the row kernel, so these loads hit L1. */

/* 1 when a log_probs frame holds NaN or +inf at a state of [lo, hi): `!(v < inf)` is
 * true for exactly those two, branch-free. */
static int FCTC_FN(fctc_band_bad)(const FCTC_T *x, const int *ext, int lo, int hi) {
    int bad = 0;
    if (lo < hi && (!(lo & 1) || lo + 1 < hi)) bad |= !(x[ext[0]] < (FCTC_T)HUGE_VAL); /* a blank state */
    for (int q = lo | 1; q < hi; q += 2) bad |= !(x[ext[q]] < (FCTC_T)HUGE_VAL);
    return bad;
}

/* 1 when a logits frame's log-sum-exp is not finite: NaN or +inf anywhere in the frame
 * (the row kernels' exp pass turns either into NaN), or no score above -inf. */
static int FCTC_FN(fctc_lse_bad)(FCTC_T lse) { return !(lse - lse == (FCTC_T)0); }

/* Gradient rows of a sequence whose loss is NaN (bad) or +inf: rows [0, T) NaN or 0, the
 * rest 0. */
static void FCTC_FN(fctc_fill_grad)(const FCTC_FN(fctc_kernels) * k, const FCTC_FN(fastctc_job) * job, int bad,
                                    int stream) {
    for (int t = 0; t < job->grad_rows; ++t)
        k->fill_row(job->grad + (ptrdiff_t)t * job->grad_stride,
                    (bad && t < job->input_length) ? (FCTC_T)NAN : (FCTC_T)0, job->alphabet_size, stream);
}

/* An infeasible target (T < L + repeats), without forward variables: no trellis is laid
 * out (so no scratch is needed) and no cell is read: the loss is +inf, the gradient 0. */
static FCTC_T FCTC_FN(fctc_infeasible)(const FCTC_FN(fctc_kernels) * k, const FCTC_FN(fastctc_job) * job) {
    if (job->grad) FCTC_FN(fctc_fill_grad)(k, job, 0, 0);
    return (FCTC_T)HUGE_VAL;
}

/* Extended labels (blank, y1, blank, ..., yL, blank, then two blank pads) and the skip
 * row (0 where the s-2 -> s transition is allowed, else -inf). */
static void FCTC_FN(fctc_extend_labels)(const FCTC_FN(fastctc_job) * job, int *ext, FCTC_T *skip) {
    const int S = 2 * job->label_length + 1;
    int s;
    for (s = 0; s < S; ++s) ext[s] = (s & 1) ? job->labels[s >> 1] : job->blank;
    ext[S] = ext[S + 1] = job->blank;
    for (s = 0; s < S + 2; ++s)
        skip[s] = (s < S && (s & 1) && s >= 3 && ext[s] != ext[s - 2]) ? (FCTC_T)0 : FCTC_NEG_INF;
}

FASTCTC_DEF FCTC_T FCTC_FN(fastctc_sequence)(const FCTC_FN(fastctc_job) * job, void *scratch) {
    const FCTC_FN(fctc_kernels) *k = FCTC_FN(fctc_kernels_active)();
    const int T = job->input_length, L = job->label_length, C = job->alphabet_size;
    const int S = 2 * L + 1;
    const int want_grad = job->grad != NULL;
    const int want_alpha = job->log_alpha != NULL;
    /* Feasible iff T >= L + (number of adjacent repeats): each repeat needs a blank between. */
    const int feasible = fctc_feasible(T, L, job->labels);
    int t, s;
    if (!feasible && !want_alpha) return FCTC_FN(fctc_infeasible)(k, job);
    const size_t W = fctc_row_width(L);

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

    /* The rows the vector kernels gather emissions into (tmp) are read whole, their
     * even entries discarded by a blend (rows_vec.h): start them defined. */
    for (s = 0; s < (int)W; ++s) emit[s] = gam[s] = 0;
    FCTC_FN(fctc_extend_labels)(job, ext, skip);

    const int prune = !want_alpha;
    int bad = 0; /* the non-finite rule */
    double log_likelihood_d = -HUGE_VAL;
    /* Logits mode with a gradient: each frame's softmax row is written while the frame is
     * in cache for its log-sum-exp (one exp per class, one read of the frame from memory);
     * the backward pass then only subtracts the occupancies.  An infeasible sequence's
     * rows are zeroed afterwards as usual. */
    const int softmax_in_forward = want_grad && job->from_logits && feasible;
    const int stream_grad = want_grad && fctc_stream_rows(job->grad_rows, C, sizeof(FCTC_T));

    if (T == 0) {
        log_likelihood_d = (L == 0) ? 0.0 : -HUGE_VAL;
    } else {
        double offset = 0; /* alpha(t, s) = stored(t, s) + offset, summed in double */
        FCTC_T row_max = 0; /* maximum of the previous stored row (0 when it is all -inf) */
        for (t = 0; t < T; ++t) {
            const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
            /* the frame's log-sum-exp just before its alpha row: the row is still cached
             * when the alpha kernel gathers its labels */
            if (!job->from_logits)
                frame_lse[t] = 0;
            else if (softmax_in_forward) /* the gradient's softmax part, written once, now */
                frame_lse[t] =
                    k->softmax_row(x, C, (FCTC_T)job->grad_scale, job->grad + (ptrdiff_t)t * job->grad_stride,
                                   t + 1 < T ? x + job->act_stride : NULL);
            else
                frame_lse[t] = k->row_lse(x, C, t + 1 < T ? x + job->act_stride : NULL);
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
                if (t + 1 < T && !softmax_in_forward) /* (the softmax row prefetched all of it) */
                    FCTC_FN(fctc_prefetch_emissions)(x + job->act_stride, C, S, ext, lo, fctc_min_int(S, hi + 2));
                best = k->alpha_row(prev, cur, x, ext, frame_lse[t], skip, lo, hi, row_max, emit);
                FCTC_FN(fctc_fence)(cur, lo, hi);
                offset += (double)row_max;
            }
            /* The non-finite rule: the row kernel flags a NaN or +inf emission of its
             * band with a NaN maximum; the first row, and the band of a row widened for
             * forward variables, are checked here. */
            if (job->from_logits)
                bad |= FCTC_FN(fctc_lse_bad)(frame_lse[t]);
            else if (t == 0 || !prune)
                bad |= FCTC_FN(fctc_band_bad)(x, ext, fctc_max_int(0, S - 2 * (T - t)), hi);
            else
                bad |= best != best;
            row_offsets[t] = offset;
            row_max = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
            if (want_alpha && t < job->alpha_rows) {
                FCTC_T *out = job->log_alpha + (ptrdiff_t)t * job->alpha_stride;
                int ncopy = fctc_min_int(hi, job->alpha_cols);
                for (s = 0; s < ncopy; ++s) out[s] = (FCTC_T)((double)cur[s] + offset);
                for (s = ncopy; s < job->alpha_cols; ++s) out[s] = FCTC_NEG_INF;
            }
        }
        /* An infeasible target's end states lie beyond the computed band (their cells
         * were never written): its loss is +inf, as in loss-only mode. */
        if (feasible) {
            const FCTC_T *last = alpha_rows + (want_grad ? (size_t)(T - 1) : (size_t)((T - 1) & 1)) * W + 2;
            double tail = S > 1 ? (double)FCTC_FN(fctc_lse2)(last[S - 1], last[S - 2]) : (double)last[S - 1];
            log_likelihood_d = tail + row_offsets[T - 1];
        }
    }

    if (want_alpha) {
        for (t = T; t < job->alpha_rows; ++t) {
            FCTC_T *out = job->log_alpha + (ptrdiff_t)t * job->alpha_stride;
            for (s = 0; s < job->alpha_cols; ++s) out[s] = FCTC_NEG_INF;
        }
    }
    /* The non-finite rule: a NaN or +inf emission in the band reaches the end states
     * (rows_scalar.h's alpha_row), so log p comes out NaN or +inf. */
    if (feasible && !(log_likelihood_d < HUGE_VAL)) bad = 1;
    if (bad && feasible)
        log_likelihood_d = NAN;
    else
        bad = 0;

    const FCTC_T log_likelihood = (FCTC_T)log_likelihood_d;
    if (want_grad) {
        if (bad || log_likelihood == FCTC_NEG_INF) {
            /* NaN rows under the non-finite rule; 0 for an infeasible sequence */
            FCTC_FN(fctc_fill_grad)(k, job, bad, stream_grad);
        } else {
            /* Rows past the input length: zero. */
            for (t = T; t < job->grad_rows; ++t)
                k->fill_row(job->grad + (ptrdiff_t)t * job->grad_stride, (FCTC_T)0, C, stream_grad);
        }
        if (!bad && log_likelihood != FCTC_NEG_INF && T > 0) {
            FCTC_T *bcur = beta_rows + 2; /* beta(t) - beta_offset */
            FCTC_T *bnext = beta_rows + W + 2; /* beta(t+1) + emit(t+1) - beta_offset */
            FCTC_T *bspare = emit + 2; /* receives beta(t) + emit(t) */
            double beta_offset = 0;
            FCTC_T next_max = 0; /* maximum of bnext (0 when all -inf) */
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
                    if (t > 0) {
                        int plo = fctc_max_int(0, lo - 2);
                        FCTC_FN(fctc_prefetch_emissions)(x - job->act_stride, C, S, ext, plo, hi);
                        FCTC_FN(fctc_prefetch_grad_labels)(g - job->grad_stride, C, ext, plo, hi);
                    }
                    FCTC_T best = k->beta_row(bnext, bcur, bspare, x, ext, frame_lse[t], skip, lo, hi, next_max, gam);
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

                FCTC_FN(fctc_grad_row)(k, job, x, g, frame_lse[t], gam, ext, lo, hi, softmax_in_forward, stream_grad);

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
    if (stream_grad) FCTC_STREAM_FENCE();
    return (FCTC_T)(-log_likelihood_d);
}
