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
 * loop over states (the row kernels of rows_*.inl, chosen once by dispatch.h); the
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
#define FCTC_PREFETCH_LABEL_LINES(PREFETCH, row, ext, lo, hi)                               \
    do {                                                                                    \
        PREFETCH((row) + (ext)[0]);                                                         \
        for (int fctc_s_ = (lo) | 1; fctc_s_ < (hi); fctc_s_ += 2) PREFETCH((row) + (ext)[fctc_s_]); \
    } while (0)
#endif

static void FCTC_FN(fctc_prefetch_emissions)(const FCTC_T *x, int C, int S, const int *ext, int lo, int hi) {
    size_t bytes = (size_t)C * sizeof(FCTC_T);
    if (bytes < 1024) return;
    if (bytes / 64 <= 2 * (size_t)S && bytes <= 131072) FCTC_PREFETCH_LINES(x, bytes);
    else FCTC_PREFETCH_LABEL_LINES(FCTC_PREFETCH, x, ext, lo, hi);
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

/* Gradient row t, written once: the softmax part (logits) or zero, then minus the
 * occupancy gam[s] of every state in [lo, hi), summed per label in state order
 * (deterministic), all times the sequence's scale. */
static void FCTC_FN(fctc_grad_row)(const FCTC_FN(fctc_kernels) *k, const FCTC_FN(fastctc_job) *job,
                                   const FCTC_T *x, FCTC_T *g, FCTC_T lse, const FCTC_T *gam, const int *ext,
                                   int lo, int hi, int softmax_written, int stream) {
    const FCTC_T scale = (FCTC_T)job->grad_scale;
    int s;
    if (!job->from_logits) k->fill_row(g, (FCTC_T)0, job->alphabet_size, stream);
    else if (!softmax_written) k->scaled_exp_row(x, lse, scale, g, job->alphabet_size);
    FCTC_T blank_occupancy = 0;
    for (s = lo + (lo & 1); s < hi; s += 2) blank_occupancy += gam[s];
    g[job->blank] -= scale * blank_occupancy;
    for (s = lo | 1; s < hi; s += 2) g[ext[s]] -= scale * gam[s];
}

FASTCTC_DEF FCTC_T FCTC_FN(fastctc_sequence)(const FCTC_FN(fastctc_job) *job, void *scratch) {
    const FCTC_FN(fctc_kernels) *k = FCTC_FN(fctc_kernels_active)();
    const int T = job->input_length, L = job->label_length, C = job->alphabet_size;
    const int S = 2 * L + 1;
    const int blank = job->blank;
    const int want_grad = job->grad != NULL;
    const int want_alpha = job->log_alpha != NULL;
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

    /* The rows the vector kernels gather emissions into (tmp) are read whole, their
     * even entries discarded by a blend (rows_vec.inl): start them defined. */
    for (s = 0; s < (int)W; ++s) emit[s] = gam[s] = 0;

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
    /* Logits mode with a gradient: each frame's softmax row is written while the frame is
     * in cache for its log-sum-exp (one exp per class, one read of the frame from memory);
     * the backward pass then only subtracts the occupancies.  An infeasible sequence's
     * rows are zeroed afterwards as usual. */
    const int softmax_in_forward = want_grad && job->from_logits && feasible;
    const int stream_grad = want_grad && fctc_stream_rows(job->grad_rows, C, sizeof(FCTC_T));

    if (T == 0) {
        log_likelihood_d = (L == 0) ? 0.0 : -HUGE_VAL;
    } else if (feasible || want_alpha) {
        double offset = 0;   /* alpha(t, s) = stored(t, s) + offset, summed in double */
        FCTC_T row_max = 0;  /* maximum of the previous stored row (0 when it is all -inf) */
        for (t = 0; t < T; ++t) {
            const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
            /* the frame's log-sum-exp just before its alpha row: the row is still cached
             * when the alpha kernel gathers its labels */
            if (!job->from_logits) frame_lse[t] = 0;
            else if (softmax_in_forward) /* the gradient's softmax part, written once, now */
                frame_lse[t] = k->softmax_row(x, C, (FCTC_T)job->grad_scale, job->grad + (ptrdiff_t)t * job->grad_stride,
                                              t + 1 < T ? x + job->act_stride : NULL);
            else frame_lse[t] = k->row_lse(x, C, t + 1 < T ? x + job->act_stride : NULL);
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
            k->fill_row(job->grad + (ptrdiff_t)t * job->grad_stride, (FCTC_T)0, C, stream_grad);
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

/* ---- One sequence on two threads: forward and backward meet in the middle ----
 *
 * When a batch has fewer sequences than threads (one long utterance), the gradient
 * pass of one sequence is split: with m = T / 2, role 0 computes alpha for frames
 * [0, m) and role 1 beta for frames [m, T) (and beta(m-1)), at the same time, into the
 * same T stored rows (rows < m hold alpha, rows >= m hold beta; row_offsets[t] holds
 * that row's offset).  After a barrier both know log p = lse_s(alpha(m-1, s) +
 * beta(m-1, s)); then role 0 carries alpha on through [m, T) and writes gradient rows
 * [m, T) from the stored beta, while role 1 carries beta down through [0, m) and writes
 * gradient rows [0, m) from the stored alpha.  Each role computes the per-frame
 * log-sum-exp (logits mode) of its own frames.  The only synchronisation is one barrier
 * between the phases (each thread then computes log p itself, bit-identically), which
 * keeps the cost low when the machine is oversubscribed and a thread gets descheduled.
 * Memory: the serial path's plus four rows (the second role's private rows).  One
 * OpenMP region of at most `threads` threads (threads beyond two idle); with one thread
 * (or OpenMP absent, or nested parallelism off) the roles run one after the other.
 * log p comes from the middle frame rather than the last one: equal mathematically,
 * within rounding of the serial path's value.
 */
FASTCTC_DEF FCTC_T FCTC_FN(fctc_sequence_threads)(const FCTC_FN(fastctc_job) *job, void *scratch, int threads) {
    const int T = job->input_length, L = job->label_length, C = job->alphabet_size;
    const int S = 2 * L + 1;
    int s, repeats = 0;
    for (s = 1; s < L; ++s) repeats += job->labels[s] == job->labels[s - 1];
    if (threads < 2 || job->grad == NULL || job->log_alpha != NULL || T < 8 || T < L + repeats)
        return FCTC_FN(fastctc_sequence)(job, scratch);

    const FCTC_FN(fctc_kernels) *k = FCTC_FN(fctc_kernels_active)();
    const size_t W = fctc_row_width(L);
    const int m = T / 2;
    unsigned char *cursor = (unsigned char *)scratch;
    int *ext = (int *)cursor;
    cursor += fctc_round_up((size_t)(S + 2) * sizeof(int), FCTC_ALIGN);
    FCTC_T *skip = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *a_row0 = FCTC_FN(fctc_carve)(&cursor, W) + 2; /* role 0: two alpha rows and a gamma row */
    FCTC_T *a_gam = FCTC_FN(fctc_carve)(&cursor, W);
    FCTC_T *beta2 = FCTC_FN(fctc_carve)(&cursor, 2 * W);
    FCTC_T *a_row1 = beta2 + 2; /* (the second half of beta2 is unused here) */
    FCTC_T *frame_lse = FCTC_FN(fctc_carve)(&cursor, (size_t)T);
    double *row_offsets = (double *)cursor;
    cursor += fctc_round_up((size_t)T * sizeof(double), FCTC_ALIGN);
    FCTC_T *rows = FCTC_FN(fctc_carve)(&cursor, (size_t)T * W);
    FCTC_T *b_nb0 = FCTC_FN(fctc_carve)(&cursor, W) + 2; /* role 1: two nb rows, beta row, gamma row */
    FCTC_T *b_nb1 = FCTC_FN(fctc_carve)(&cursor, W) + 2;
    FCTC_T *b_cur = FCTC_FN(fctc_carve)(&cursor, W) + 2;
    FCTC_T *b_gam = FCTC_FN(fctc_carve)(&cursor, W);

    for (s = 0; s < S; ++s) ext[s] = (s & 1) ? job->labels[s >> 1] : job->blank;
    ext[S] = ext[S + 1] = job->blank;
    for (s = 0; s < S + 2; ++s)
        skip[s] = (s < S && (s & 1) && s >= 3 && ext[s] != ext[s - 2]) ? (FCTC_T)0 : FCTC_NEG_INF;
    for (s = 0; s < (int)W; ++s) a_gam[s] = b_gam[s] = 0; /* see fastctc_sequence */

    /* state carried from phase 1 to phase 2, per role */
    double off[2] = {0, 0};
    FCTC_T maxv[2] = {0, 0};
    FCTC_T *nb_keep = b_nb0, *nb_spare = b_nb1;
    double log_p = -HUGE_VAL;

#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
        const int tid = 0, nth = 1;
#endif
        int role, tt, ss;

        /* phase 1 (each role also computes the per-frame log-sum-exp of its own frames) */
        for (role = tid; role < 2; role += nth) {
            for (tt = role == 0 ? 0 : m; tt < (role == 0 ? m : T); ++tt)
                frame_lse[tt] = job->from_logits ? k->row_lse(job->acts + (ptrdiff_t)tt * job->act_stride, C,
                                                              tt + 1 < T ? job->acts + (ptrdiff_t)(tt + 1) * job->act_stride : NULL)
                                                  : (FCTC_T)0;
            if (role == 0) {
                double offset = 0;
                FCTC_T row_max = 0;
                for (tt = 0; tt < m; ++tt) {
                    const FCTC_T *x = job->acts + (ptrdiff_t)tt * job->act_stride;
                    FCTC_T *cur = rows + (size_t)tt * W + 2;
                    int lo = fctc_max_int(0, S - 2 * (T - tt)), hi = fctc_min_int(S, 2 * tt + 2);
                    FCTC_T best;
                    if (tt == 0) {
                        for (ss = -2; ss < S + 2; ++ss) cur[ss] = FCTC_NEG_INF;
                        FCTC_FN(fctc_gather_emissions)(x, ext, frame_lse[0], cur, lo, hi);
                        best = FCTC_NEG_INF;
                        for (ss = lo; ss < hi; ++ss) best = cur[ss] > best ? cur[ss] : best;
                    } else {
                        best = k->alpha_row(cur - W, cur, x, ext, frame_lse[tt], skip, lo, hi, row_max, a_gam);
                        FCTC_FN(fctc_fence)(cur, lo, hi);
                        offset += (double)row_max;
                    }
                    row_offsets[tt] = offset;
                    row_max = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
                }
                off[0] = offset;
                maxv[0] = row_max;
            } else {
                double boff = 0;
                FCTC_T nmax, best = FCTC_NEG_INF;
                FCTC_T *nb = b_nb0, *spare = b_nb1;
                FCTC_T *last = rows + (size_t)(T - 1) * W + 2;
                const FCTC_T *x = job->acts + (ptrdiff_t)(T - 1) * job->act_stride;
                int lo = fctc_max_int(0, S - 2), hi = fctc_min_int(S, 2 * T);
                for (ss = -2; ss < S + 2; ++ss) last[ss] = FCTC_NEG_INF;
                last[S - 1] = 0;
                if (S > 1) last[S - 2] = 0;
                row_offsets[T - 1] = 0;
                FCTC_FN(fctc_gather_emissions)(x, ext, frame_lse[T - 1], nb, lo, hi);
                for (ss = lo; ss < hi; ++ss) {
                    nb[ss] += last[ss];
                    best = nb[ss] > best ? nb[ss] : best;
                }
                FCTC_FN(fctc_fence)(nb, lo, hi);
                nmax = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
                for (tt = T - 2; tt >= m - 1; --tt) {
                    FCTC_T *dst = tt >= m ? rows + (size_t)tt * W + 2 : b_cur;
                    x = job->acts + (ptrdiff_t)tt * job->act_stride;
                    lo = fctc_max_int(0, S - 2 * (T - tt));
                    hi = fctc_min_int(S, 2 * tt + 2);
                    /* frame m-1 belongs to role 0, which may not have reached it: own copy */
                    FCTC_T lse = tt >= m ? frame_lse[tt] : job->from_logits ? k->row_lse(x, C, NULL) : (FCTC_T)0;
                    best = k->beta_row(nb, dst, spare, x, ext, lse, skip, lo, hi, nmax, b_gam);
                    FCTC_FN(fctc_fence)(dst, lo, hi);
                    FCTC_FN(fctc_fence)(spare, lo, hi);
                    boff += (double)nmax;
                    if (tt >= m) row_offsets[tt] = boff;
                    FCTC_T *swap = nb;
                    nb = spare;
                    spare = swap;
                    nmax = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
                }
                off[1] = boff;
                maxv[1] = nmax;
                nb_keep = nb;
                nb_spare = spare;
            }
        }
#ifdef _OPENMP
#pragma omp barrier
#endif
        /* log p at the middle frame: every thread computes it, bit-identically, from the
         * same rows (no further synchronisation needed); role 0 reports it. */
        double lp_mid;
        {
            const FCTC_T *arow = rows + (size_t)(m - 1) * W + 2;
            int lo = fctc_max_int(0, S - 2 * (T - m + 1)), hi = fctc_min_int(S, 2 * m);
            double mx = -HUGE_VAL, sum = 0;
            for (ss = lo; ss < hi; ++ss) {
                double v = (double)arow[ss] + (double)b_cur[ss];
                mx = v > mx ? v : mx;
            }
            if (mx > -HUGE_VAL) {
                for (ss = lo; ss < hi; ++ss) sum += exp((double)arow[ss] + (double)b_cur[ss] - mx);
                mx += log(sum) + row_offsets[m - 1] + off[1];
            }
            lp_mid = mx;
        }
        if (tid == 0) log_p = lp_mid;
        const int dead = !(lp_mid > -HUGE_VAL);
#ifdef _OPENMP
        /* Role 1 overwrites b_cur in phase 2: every thread must have read it first. */
#pragma omp barrier
#endif

        /* phase 2 */
        for (role = tid; role < 2; role += nth) {
            int from = role == 0 ? m : 0, to = role == 0 ? job->grad_rows : m;
            if (dead) {
                for (tt = from; tt < to; ++tt) k->fill_row(job->grad + (ptrdiff_t)tt * job->grad_stride, (FCTC_T)0, C, 0);
                continue;
            }
            if (role == 0) {
                double offset = off[0];
                FCTC_T row_max = maxv[0];
                const FCTC_T *prev = rows + (size_t)(m - 1) * W + 2;
                for (tt = m; tt < T; ++tt) {
                    const FCTC_T *x = job->acts + (ptrdiff_t)tt * job->act_stride;
                    FCTC_T *cur = (tt & 1) ? a_row1 : a_row0;
                    int lo = fctc_max_int(0, S - 2 * (T - tt)), hi = fctc_min_int(S, 2 * tt + 2);
                    FCTC_T best = k->alpha_row(prev, cur, x, ext, frame_lse[tt], skip, lo, hi, row_max, a_gam);
                    FCTC_FN(fctc_fence)(cur, lo, hi);
                    offset += (double)row_max;
                    row_max = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
                    k->gamma_row(cur, rows + (size_t)tt * W + 2, (FCTC_T)(offset + row_offsets[tt] - lp_mid), a_gam,
                                 lo, hi);
                    FCTC_FN(fctc_grad_row)(k, job, x, job->grad + (ptrdiff_t)tt * job->grad_stride, frame_lse[tt],
                                           a_gam, ext, lo, hi, 0, 0);
                    prev = cur;
                }
                for (tt = T; tt < job->grad_rows; ++tt)
                    k->fill_row(job->grad + (ptrdiff_t)tt * job->grad_stride, (FCTC_T)0, C, 0);
            } else {
                double boff = off[1];
                FCTC_T nmax = maxv[1];
                FCTC_T *nb = nb_keep, *spare = nb_spare;
                for (tt = m - 1; tt >= 0; --tt) {
                    const FCTC_T *x = job->acts + (ptrdiff_t)tt * job->act_stride;
                    int lo = fctc_max_int(0, S - 2 * (T - tt)), hi = fctc_min_int(S, 2 * tt + 2);
                    if (tt < m - 1) {
                        FCTC_T best = k->beta_row(nb, b_cur, spare, x, ext, frame_lse[tt], skip, lo, hi, nmax, b_gam);
                        FCTC_FN(fctc_fence)(b_cur, lo, hi);
                        FCTC_FN(fctc_fence)(spare, lo, hi);
                        boff += (double)nmax;
                        FCTC_T *swap = nb;
                        nb = spare;
                        spare = swap;
                        nmax = (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0;
                    }
                    k->gamma_row(rows + (size_t)tt * W + 2, b_cur, (FCTC_T)(row_offsets[tt] + boff - lp_mid), b_gam,
                                 lo, hi);
                    FCTC_FN(fctc_grad_row)(k, job, x, job->grad + (ptrdiff_t)tt * job->grad_stride, frame_lse[tt],
                                           b_gam, ext, lo, hi, 0, 0);
                }
            }
        }
    }
    return (FCTC_T)(-log_p);
}
