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
 * Steps: the passes are written from the small functions below -- extended labels, the
 * band, the row shift, the first alpha row and the alpha step, the last beta row and the
 * beta step, log p from the last row, the occupancy and gradient row -- which the
 * one-thread pass (fastctc_sequence, here), the split pass (split.h) and the aligner
 * (align.h) share, so each rule has one definition and the passes give the same bits.
 *
 * Instantiated for float and double through template.h; the band, which does not depend
 * on the element type, is compiled once (FCTC_TRELLIS_COMMON_DONE).
 */

#ifndef FCTC_TRELLIS_COMMON_DONE
#define FCTC_TRELLIS_COMMON_DONE
/* The band of frame t of a T-frame trellis of S states: [fctc_band_lo, fctc_band_hi). */
static int fctc_band_lo(int T, int S, int t) { return fctc_max_int(0, S - 2 * (T - t)); }
static int fctc_band_hi(int S, int t) { return fctc_min_int(S, 2 * t + 2); }
#endif /* FCTC_TRELLIS_COMMON_DONE */

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

/* Gradient row t, written once from alpha row arow and beta row brow (both stored minus
 * their offsets; shift = the two offsets - log p): the occupancies gam[s] = exp(alpha +
 * beta - log p) of the states in [lo, hi), then the softmax part (logits, unless already
 * written) or zero, minus the occupancies summed per label in state order
 * (deterministic), all times the sequence's scale. */
static void FCTC_FN(fctc_grad_row)(const FCTC_FN(fctc_kernels) * k, const FCTC_FN(fastctc_job) * job, int t,
                                   const FCTC_T *arow, const FCTC_T *brow, FCTC_T shift, FCTC_T *gam, const int *ext,
                                   int lo, int hi, FCTC_T lse, int softmax_written, int stream) {
    const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
    FCTC_T *g = job->grad + (ptrdiff_t)t * job->grad_stride;
    const FCTC_T scale = (FCTC_T)job->grad_scale;
    int s;
    k->gamma_row(arow, brow, shift, gam, lo, hi);
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
static void FCTC_FN(fctc_extend_labels)(const int *labels, int L, int blank, int *ext, FCTC_T *skip) {
    const int S = 2 * L + 1;
    int s;
    for (s = 0; s < S; ++s) ext[s] = (s & 1) ? labels[s >> 1] : blank;
    ext[S] = ext[S + 1] = blank;
    for (s = 0; s < S + 2; ++s)
        skip[s] = (s < S && (s & 1) && s >= 3 && ext[s] != ext[s - 2]) ? (FCTC_T)0 : FCTC_NEG_INF;
}

/* The shift a row's values are stored under for the next step: the row's maximum, or 0
 * when the row is all -inf (or NaN, under the non-finite rule), so no -inf - -inf. */
static FCTC_T FCTC_FN(fctc_row_shift)(FCTC_T best) { return (best > FCTC_NEG_INF && best == best) ? best : (FCTC_T)0; }

/* Alpha row 0: -inf everywhere (pads included) but the band [lo, hi), which holds the
 * emissions x[l'(s)] - shift; returns the band's maximum. */
static FCTC_T FCTC_FN(fctc_alpha_first_row)(const FCTC_T *x, const int *ext, FCTC_T shift, FCTC_T *cur, int S, int lo,
                                            int hi) {
    FCTC_T best = FCTC_NEG_INF;
    int s;
    for (s = -2; s < S + 2; ++s) cur[s] = FCTC_NEG_INF;
    FCTC_FN(fctc_gather_emissions)(x, ext, shift, cur, lo, hi);
    for (s = lo; s < hi; ++s) best = cur[s] > best ? cur[s] : best;
    return best;
}

/* The forward pass's carried state: alpha(t, s) = stored(t, s) + offset (summed in
 * double), and the shift of the last row stored (fctc_row_shift). */
typedef struct {
    double offset;
    FCTC_T row_max;
} FCTC_FN(fctc_alpha_state);

/* Alpha row t over the band [lo, hi) into cur, from prev (row t - 1; unused at t = 0),
 * carrying st; returns the row's maximum (NaN when a band emission of a row t > 0 is NaN
 * or +inf).  prefetch: fetch frame t + 1's emissions meanwhile.  tmp: a row for the
 * kernel's gathered emissions. */
static FCTC_T FCTC_FN(fctc_alpha_step)(const FCTC_FN(fctc_kernels) * k, const FCTC_FN(fastctc_job) * job,
                                       const int *ext, const FCTC_T *skip, FCTC_T lse, int t, int lo, int hi,
                                       const FCTC_T *prev, FCTC_T *cur, FCTC_T *tmp, FCTC_FN(fctc_alpha_state) * st,
                                       int prefetch) {
    const int T = job->input_length, S = 2 * job->label_length + 1;
    const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
    FCTC_T best;
    if (t == 0) {
        best = FCTC_FN(fctc_alpha_first_row)(x, ext, lse, cur, S, lo, hi);
    } else {
        if (prefetch && t + 1 < T) {
            const int C = job->alphabet_size;
            FCTC_FN(fctc_prefetch_emissions)(x + job->act_stride, C, S, ext, lo, fctc_min_int(S, hi + 2));
        }
        best = k->alpha_row(prev, cur, x, ext, lse, skip, lo, hi, st->row_max, tmp);
        FCTC_FN(fctc_fence)(cur, lo, hi);
        st->offset += (double)st->row_max;
    }
    st->row_max = FCTC_FN(fctc_row_shift)(best);
    return best;
}

/* The non-finite rule's verdict on frame t of the forward pass (1: bad), given its
 * log-sum-exp and the maximum fctc_alpha_step returned: logits, the log-sum-exp; else
 * the band's emissions -- checked here for the first row and for rows widened beyond
 * the band (pruned == 0: forward variables), flagged by the row kernel (a NaN maximum)
 * for the others. */
static int FCTC_FN(fctc_alpha_bad)(const FCTC_FN(fastctc_job) * job, const int *ext, FCTC_T lse, int t, int pruned,
                                   FCTC_T best) {
    const int T = job->input_length, S = 2 * job->label_length + 1;
    if (job->from_logits) return FCTC_FN(fctc_lse_bad)(lse);
    if (t == 0 || !pruned)
        return FCTC_FN(fctc_band_bad)(job->acts + (ptrdiff_t)t * job->act_stride, ext, fctc_band_lo(T, S, t),
                                      fctc_band_hi(S, t));
    return best != best;
}

/* log p from the last alpha row (stored minus `offset`): lse of the two end states. */
static double FCTC_FN(fctc_log_likelihood)(const FCTC_T *last, int S, double offset) {
    double tail = S > 1 ? (double)FCTC_FN(fctc_lse2)(last[S - 1], last[S - 2]) : (double)last[S - 1];
    return tail + offset;
}

/* The backward pass's carried state: nb = beta(t+1) + emit(t+1) - offset, its spare
 * row, nb's shift (fctc_row_shift) and the running offset. */
typedef struct {
    FCTC_T *nb, *spare;
    FCTC_T nb_max;
    double offset;
} FCTC_FN(fctc_beta_state);

/* Beta row T - 1: 0 at the two end states, -inf elsewhere (pads included). */
static void FCTC_FN(fctc_beta_last_row)(FCTC_T *cur, int S) {
    for (int s = -2; s < S + 2; ++s) cur[s] = FCTC_NEG_INF;
    cur[S - 1] = 0;
    if (S > 1) cur[S - 2] = 0;
}

/* The first nb row, beta(T-1) + emit(T-1) over the band [lo, hi) of frame T - 1 (x),
 * from beta row cur; later ones come from fctc_beta_step. */
static void FCTC_FN(fctc_beta_first_nb)(const FCTC_T *x, const int *ext, FCTC_T lse, const FCTC_T *cur, int lo, int hi,
                                        FCTC_FN(fctc_beta_state) * st) {
    FCTC_T best = FCTC_NEG_INF;
    FCTC_FN(fctc_gather_emissions)(x, ext, lse, st->nb, lo, hi);
    for (int s = lo; s < hi; ++s) {
        FCTC_T v = cur[s] + st->nb[s];
        st->nb[s] = v;
        best = v > best ? v : best;
    }
    FCTC_FN(fctc_fence)(st->nb, lo, hi);
    st->nb_max = FCTC_FN(fctc_row_shift)(best);
}

/* Beta row t < T - 1 over the band [lo, hi) into cur (stored minus st->offset), and the
 * next nb row, carrying st.  Fetches frame t - 1's emissions meanwhile, and the label
 * lines of gradient row g_prev when not NULL.  tmp: a row for the kernel. */
static void FCTC_FN(fctc_beta_step)(const FCTC_FN(fctc_kernels) * k, const FCTC_FN(fastctc_job) * job, const int *ext,
                                    const FCTC_T *skip, FCTC_T lse, int t, int lo, int hi, FCTC_T *cur, FCTC_T *tmp,
                                    FCTC_FN(fctc_beta_state) * st, FCTC_T *g_prev) {
    const int S = 2 * job->label_length + 1;
    const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
    if (t > 0) {
        int plo = fctc_max_int(0, lo - 2);
        FCTC_FN(fctc_prefetch_emissions)(x - job->act_stride, job->alphabet_size, S, ext, plo, hi);
        if (g_prev) FCTC_FN(fctc_prefetch_grad_labels)(g_prev, job->alphabet_size, ext, plo, hi);
    }
    FCTC_T best = k->beta_row(st->nb, cur, st->spare, x, ext, lse, skip, lo, hi, st->nb_max, tmp);
    FCTC_FN(fctc_fence)(cur, lo, hi);
    FCTC_FN(fctc_fence)(st->spare, lo, hi);
    st->offset += (double)st->nb_max;
    FCTC_T *swap = st->nb;
    st->nb = st->spare;
    st->spare = swap;
    st->nb_max = FCTC_FN(fctc_row_shift)(best);
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
/* alpha row t: all T rows are kept for the gradient, else two in turn */
#define FCTC_ALPHA_ROW(t) (alpha_rows + (want_grad ? (size_t)(t) : (size_t)((t)&1)) * W + 2)

    /* The rows the vector kernels gather emissions into (tmp) are read whole, their
     * even entries discarded by a blend (rows_vec.h): start them defined. */
    for (s = 0; s < (int)W; ++s) emit[s] = gam[s] = 0;
    FCTC_FN(fctc_extend_labels)(job->labels, L, job->blank, ext, skip);

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
        FCTC_FN(fctc_alpha_state) fw = {0, 0};
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
            FCTC_T *cur = FCTC_ALPHA_ROW(t);
            int lo = prune ? fctc_band_lo(T, S, t) : 0, hi = fctc_band_hi(S, t);
            /* (the softmax row prefetched all of frame t + 1) */
            FCTC_T best =
                FCTC_FN(fctc_alpha_step)(k, job, ext, skip, frame_lse[t], t, lo, hi,
                                         t > 0 ? FCTC_ALPHA_ROW(t - 1) : NULL, cur, emit, &fw, !softmax_in_forward);
            bad |= FCTC_FN(fctc_alpha_bad)(job, ext, frame_lse[t], t, prune, best);
            row_offsets[t] = fw.offset;
            if (want_alpha && t < job->alpha_rows) {
                FCTC_T *out = job->log_alpha + (ptrdiff_t)t * job->alpha_stride;
                int ncopy = fctc_min_int(hi, job->alpha_cols);
                for (s = 0; s < ncopy; ++s) out[s] = (FCTC_T)((double)cur[s] + fw.offset);
                for (s = ncopy; s < job->alpha_cols; ++s) out[s] = FCTC_NEG_INF;
            }
        }
        /* An infeasible target's end states lie beyond the computed band (their cells
         * were never written): its loss is +inf, as in loss-only mode. */
        if (feasible) log_likelihood_d = FCTC_FN(fctc_log_likelihood)(FCTC_ALPHA_ROW(T - 1), S, row_offsets[T - 1]);
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
            FCTC_T *bcur = beta_rows + 2; /* beta(t) - the offset */
            /* nb in the second beta row; its spare receives beta(t) + emit(t) */
            FCTC_FN(fctc_beta_state) bw = {beta_rows + W + 2, emit + 2, 0, 0};
            for (t = T - 1; t >= 0; --t) {
                const FCTC_T *x = job->acts + (ptrdiff_t)t * job->act_stride;
                FCTC_T *g_prev = t > 0 ? job->grad + (ptrdiff_t)(t - 1) * job->grad_stride : NULL;
                int lo = prune ? fctc_band_lo(T, S, t) : 0, hi = fctc_band_hi(S, t);
                if (t == T - 1)
                    FCTC_FN(fctc_beta_last_row)(bcur, S);
                else
                    FCTC_FN(fctc_beta_step)(k, job, ext, skip, frame_lse[t], t, lo, hi, bcur, gam, &bw, g_prev);
                /* alpha + beta - log p, with the large parts combined in double so that
                 * float32 keeps its precision however far the log-probs reach. */
                const FCTC_T shift = (FCTC_T)(row_offsets[t] + bw.offset - log_likelihood_d);
                FCTC_FN(fctc_grad_row)
                (k, job, t, FCTC_ALPHA_ROW(t), bcur, shift, gam, ext, lo, hi, frame_lse[t], softmax_in_forward,
                 stream_grad);
                if (t == T - 1 && t > 0) FCTC_FN(fctc_beta_first_nb)(x, ext, frame_lse[t], bcur, lo, hi, &bw);
            }
        }
    }
#undef FCTC_ALPHA_ROW
    if (stream_grad) FCTC_STREAM_FENCE();
    return (FCTC_T)(-log_likelihood_d);
}
