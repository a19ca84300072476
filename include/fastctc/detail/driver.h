/* fastctc/detail/driver.h: the one batch driver.  Every batch of fastctc -- the C API's
 * loss and alignment (batch.h), the Python module's loss (_core.pyx) and alignment
 * (_align_core.pyx) -- is described by one fctc_batch_job and run here; optax's driver
 * (optax_batch.h) shares the thread plan and the loop.  Internal header.
 *
 * What the driver does, once for all of them:
 *  - sizes the workspace (fctc_batch_workspace, the one size function): one scratch area
 *    per thread for the longest input and label of the batch, then (when the caller has
 *    none) the label offsets, plus FCTC_ALIGN bytes of slack so any address will do;
 *  - picks the team (fctc_batch_threads): the request or OpenMP's default, at most one
 *    thread per sequence, capped by fctc_team_cap (threads.h: usable processors, what
 *    the OS can create, 1 in a forked child); and, for a gradient batch with fewer
 *    sequences than threads and a trellis large enough to repay a parallel region, the
 *    split pass instead (split.h: each sequence over two threads, one at a time);
 *  - runs the loop (fctc_batch_loop): on the calling thread when one thread runs (no
 *    parallel region at all: a forked child must not start one), else an OpenMP loop
 *    with a dynamic schedule (lengths differ), each thread on its own scratch.
 * Nothing inside the loop allocates, prints or fails: every value was checked by the
 * caller (the C API's checks, or the Python facade's).  Results do not depend on the
 * plan: the split pass gives the one-thread pass's bits.
 *
 * The job and the plan do not depend on the element type; fctc_batch_run_f32/_f64 read
 * acts and write the outputs as float or double.
 */
#ifndef FCTC_DRIVER_COMMON_DONE
#define FCTC_DRIVER_COMMON_DONE

/* One batch.  Strides count elements, not bytes; the class axis of acts and grad is
 * contiguous.  Pointers to values are float for fctc_batch_run_f32, double for _f64. */
typedef struct {
    int align; /* 0: the CTC loss (costs, optional gradient, forward variables); 1: alignment */
    int minibatch, max_time, alphabet_size, blank, from_logits, zero_infinity;
    const void *acts; /* acts[n * act_batch_stride + t * act_time_stride + c]; NULL if empty */
    ptrdiff_t act_batch_stride, act_time_stride;
    const int *labels; /* every sequence's labels back to back; NULL when there are none */
    const ptrdiff_t *label_offsets; /* sequence n's labels start at labels + label_offsets[n];
                                       NULL: the running sum of label_lengths (in the workspace) */
    const int *label_lengths, *input_lengths;
    void *costs; /* out: minibatch costs (loss), or best-path log-probabilities (alignment, may be NULL) */
    /* loss */
    void *grad; /* out or NULL: max_time rows per sequence, zero past its input length */
    ptrdiff_t grad_batch_stride, grad_time_stride;
    const double *grad_scale; /* per-sequence gradient weights; NULL: 1 */
    void *log_alpha; /* out or NULL: log_alpha[n * alpha_batch_stride + t * alpha_time_stride + s] */
    ptrdiff_t alpha_batch_stride, alpha_time_stride;
    int alpha_rows, alpha_cols;
    /* alignment */
    int *paths; /* out: paths[n * path_batch_stride + t], t < max_time */
    void *scores; /* out or NULL: same layout */
    ptrdiff_t path_batch_stride;
    /* threads */
    int num_threads; /* 0: OpenMP's default */
    long long split_min_cells; /* the smallest trellis (frames x states) the split pass may take; < 0: never */
} fctc_batch_job;

/* How a job runs, from fctc_batch_workspace. */
typedef struct {
    int threads; /* scratch areas, and the loop's team */
    int split; /* 1: the sequences one at a time, each split over two threads */
    size_t per_thread; /* bytes of one scratch area (a multiple of FCTC_ALIGN) */
    size_t fixed; /* bytes after them: the label offsets (if computed) and the alignment slack */
} fctc_batch_plan;

/* The threads a batch of `minibatch` sequences runs on: the request (0: OpenMP's default),
 * at most one per sequence, capped by fctc_team_cap.  may_split: the batch may take the
 * split pass, which needs a thread more than there are sequences; *split says whether it
 * does (then the loop runs on one thread, the pass on two).  1 without OpenMP. */
static int fctc_batch_threads(int num_threads, int minibatch, int may_split, int *split) {
#ifdef _OPENMP
    int wanted = num_threads > 0 ? num_threads : omp_get_max_threads();
#else
    int wanted = 1;
    (void)num_threads;
#endif
    int team;
    /* (asking for one thread more than sequences, never more, keeps the probe small) */
    if (wanted > minibatch) wanted = may_split && minibatch < INT_MAX ? minibatch + 1 : minibatch;
    team = fctc_team_cap(wanted);
    *split = may_split && minibatch < team;
    if (*split) return 1;
    return team < minibatch ? team : (minibatch > 0 ? minibatch : 1);
}

/* Sizes the workspace of a job and plans its run; returns the bytes (alignment slack
 * included: any address will do), 0 when the size overflows. */
static size_t fctc_batch_workspace(const fctc_batch_job *job, size_t elem_size, fctc_batch_plan *plan) {
    int longest_input = 0, longest_label = 0, n, split = 0;
    size_t one;
    const int want_grad = !job->align && job->grad != NULL, want_alpha = !job->align && job->log_alpha != NULL;
    for (n = 0; n < job->minibatch; ++n) {
        int T = job->input_lengths[n], L = job->label_lengths[n];
        if (!want_alpha) L = fctc_scratch_label_length(T, L); /* (forward variables lay out every label) */
        if (T > longest_input) longest_input = T;
        if (L > longest_label) longest_label = L;
    }
    /* the split pass: a gradient without forward variables, a trellis large enough to
     * repay a parallel region (two thread wake-ups, two barriers) */
    plan->threads =
        fctc_batch_threads(job->num_threads, job->minibatch,
                           want_grad && !want_alpha && job->split_min_cells >= 0 &&
                               (long long)longest_input * (2 * (long long)longest_label + 1) >= job->split_min_cells,
                           &split);
    plan->split = split;
    if (job->align)
        one = fastctc_align_scratch_bytes(longest_input, longest_label, elem_size);
    else if (split)
        one = fctc_split_scratch_bytes(longest_input, longest_label, elem_size);
    else
        one = fastctc_sequence_scratch_bytes(longest_input, longest_label, want_grad, elem_size);
    plan->per_thread = one;
    plan->fixed =
        (job->label_offsets ? 0 : fctc_round_up((size_t)job->minibatch * sizeof(ptrdiff_t), FCTC_ALIGN)) + FCTC_ALIGN;
    if (one == 0 || (size_t)plan->threads > (SIZE_MAX / 4 - plan->fixed) / one) return 0;
    return one * (size_t)plan->threads + plan->fixed;
}

/* A caller's workspace of `bytes` bytes: enough for the plan's threads runs them all; one
 * that holds fewer areas (at least one) runs on as many threads as it holds. */
static fastctc_status fctc_batch_fit(fctc_batch_plan *plan, size_t bytes) {
    size_t fit;
    if (bytes < plan->fixed || bytes - plan->fixed < plan->per_thread) return FASTCTC_WORKSPACE_TOO_SMALL;
    fit = (bytes - plan->fixed) / plan->per_thread;
    if (fit < (size_t)plan->threads) plan->threads = (int)fit;
    return FASTCTC_OK;
}

/* The workspace's first aligned byte: where thread 0's scratch starts. */
static unsigned char *fctc_batch_base(void *workspace) {
    return (unsigned char *)fctc_round_up((size_t)(uintptr_t)workspace, FCTC_ALIGN);
}

/* One sequence of a batch: ctx, its index, its thread's scratch, and whether it is split
 * over two threads. */
typedef void (*fctc_batch_one_fn)(const void *ctx, int n, void *scratch, int split);

/* Runs one() over the minibatch as the plan says (the file comment). */
static void fctc_batch_loop(const fctc_batch_plan *plan, int minibatch, unsigned char *base, fctc_batch_one_fn one,
                            const void *ctx) {
    int n;
    if (plan->threads <= 1) {
        for (n = 0; n < minibatch; ++n) one(ctx, n, base, plan->split);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(plan->threads)
#endif
    for (n = 0; n < minibatch; ++n) {
#ifdef _OPENMP
        /* A team never has more threads than asked for, so tid < threads. */
        int tid = omp_get_thread_num();
#else
        int tid = 0;
#endif
        one(ctx, n, base + plan->per_thread * (size_t)tid, 0);
    }
}

/* What the per-sequence step of fctc_batch_run reads. */
typedef struct {
    const fctc_batch_job *job;
    const ptrdiff_t *offsets;
} fctc_batch_ctx;

#endif /* FCTC_DRIVER_COMMON_DONE */

/* ---- per element type ---- */

/* Sequence n's inputs: the leading fields both per-sequence job types have (fastctc.h). */
#define FCTC_BATCH_INPUTS(job, b, ctx, n)                                                                              \
    do {                                                                                                               \
        (job).acts = (b)->acts ? (const FCTC_T *)(b)->acts + (ptrdiff_t)(n) * (b)->act_batch_stride : NULL;            \
        (job).act_stride = (b)->act_time_stride;                                                                       \
        (job).labels = (b)->labels ? (b)->labels + (ctx)->offsets[n] : NULL;                                           \
        (job).label_length = (b)->label_lengths[n];                                                                    \
        (job).input_length = (b)->input_lengths[n];                                                                    \
        (job).alphabet_size = (b)->alphabet_size;                                                                      \
        (job).blank = (b)->blank;                                                                                      \
        (job).from_logits = (b)->from_logits;                                                                          \
    } while (0)

static void FCTC_FN(fctc_batch_one)(const void *ctx_, int n, void *scratch, int split) {
    const fctc_batch_ctx *ctx = (const fctc_batch_ctx *)ctx_;
    const fctc_batch_job *b = ctx->job;
    if (b->align) {
        FCTC_FN(fastctc_align_job) job;
        FCTC_T total;
        FCTC_BATCH_INPUTS(job, b, ctx, n);
        job.path = b->paths + (ptrdiff_t)n * b->path_batch_stride;
        job.scores = b->scores ? (FCTC_T *)b->scores + (ptrdiff_t)n * b->path_batch_stride : NULL;
        job.out_rows = b->max_time;
        total = FCTC_FN(fastctc_align_sequence)(&job, scratch);
        if (b->costs) ((FCTC_T *)b->costs)[n] = total;
    } else {
        FCTC_FN(fastctc_job) job;
        FCTC_T cost;
        FCTC_BATCH_INPUTS(job, b, ctx, n);
        job.grad = b->grad ? (FCTC_T *)b->grad + (ptrdiff_t)n * b->grad_batch_stride : NULL;
        job.grad_stride = b->grad_time_stride;
        job.grad_rows = b->max_time;
        job.grad_scale = b->grad_scale ? b->grad_scale[n] : 1.0;
        job.log_alpha = b->log_alpha ? (FCTC_T *)b->log_alpha + (ptrdiff_t)n * b->alpha_batch_stride : NULL;
        job.alpha_stride = b->alpha_time_stride;
        job.alpha_rows = b->alpha_rows;
        job.alpha_cols = b->alpha_cols;
        cost = split ? FCTC_FN(fctc_sequence_split)(&job, scratch) : FCTC_FN(fastctc_sequence)(&job, scratch);
        if (b->zero_infinity && cost == (FCTC_T)HUGE_VAL) cost = 0;
        ((FCTC_T *)b->costs)[n] = cost;
    }
}
#undef FCTC_BATCH_INPUTS

/* Runs a job as planned, in a workspace of at least fctc_batch_workspace() bytes (or one
 * fctc_batch_fit accepted). */
static void FCTC_FN(fctc_batch_run)(const fctc_batch_job *job, const fctc_batch_plan *plan, void *workspace) {
    unsigned char *base = fctc_batch_base(workspace);
    fctc_batch_ctx ctx;
    ctx.job = job;
    ctx.offsets = job->label_offsets;
    if (!ctx.offsets) {
        ptrdiff_t *offsets = (ptrdiff_t *)(base + plan->per_thread * (size_t)plan->threads), running = 0;
        for (int n = 0; n < job->minibatch; ++n) {
            offsets[n] = running;
            running += job->label_lengths[n];
        }
        ctx.offsets = offsets;
    }
    fctc_batch_loop(plan, job->minibatch, base, FCTC_FN(fctc_batch_one), &ctx);
}

/* Runs a job in the caller's workspace (with as many threads as it holds: fctc_batch_fit)
 * or, when workspace is NULL, in one allocated here and freed on return.  Returns
 * FASTCTC_OK, FASTCTC_INVALID_ARGUMENT (the size overflows), FASTCTC_WORKSPACE_TOO_SMALL
 * or FASTCTC_OUT_OF_MEMORY; nothing is written unless FASTCTC_OK. */
static fastctc_status FCTC_FN(fctc_batch_execute)(const fctc_batch_job *job, void *workspace, size_t workspace_bytes) {
    fctc_batch_plan plan;
    void *owned = NULL;
    size_t need = fctc_batch_workspace(job, sizeof(FCTC_T), &plan);
    if (need == 0) return FASTCTC_INVALID_ARGUMENT;
    if (workspace) {
        fastctc_status status = fctc_batch_fit(&plan, workspace_bytes);
        if (status != FASTCTC_OK) return status;
    } else {
        owned = malloc(need);
        if (!owned) return FASTCTC_OUT_OF_MEMORY;
        workspace = owned;
    }
    FCTC_FN(fctc_batch_run)(job, &plan, workspace);
    free(owned);
    return FASTCTC_OK;
}
