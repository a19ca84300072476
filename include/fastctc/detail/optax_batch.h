/* fastctc/detail/optax_batch.h: optax's CTC (optax.ctc_loss / ctc_loss_with_forward_probs
 * semantics) over a batch, on the SIMD engine of fastctc_sequence_*; the driver behind
 * fastctc.optax_ctc_loss, fastctc.ctc_loss_with_forward_probs and the XLA FFI handler of
 * fastctc.jax.  Written once for float and double.
 *
 * How optax's recurrence maps onto the engine
 * -------------------------------------------
 * optax keeps, per frame, phi[n] (blank after n labels, n = 0..N) and emit[n] (label n just
 * emitted, n < N) over the whole padded label row, with log_epsilon standing in for log 0:
 * a transition CTC forbids is not dropped but costs log_epsilon.  When exp(log_epsilon) is
 * negligible (log_epsilon <= FCTC_OPTAX_FAST_EPS) those paths add nothing a float can hold,
 * and optax's numbers are the ordinary CTC ones:
 *     phi[t][n] = alpha(t, 2n),  emit[t][n] = alpha(t, 2n + 1),
 *     loss = -lse(alpha(T-1, 2L), alpha(T-1, 2L - 1))  (L = N - sum(label_paddings)),
 *     d loss / d logits = softmax - occupancy (0 on padded frames),
 * which is what fastctc_sequence_* computes (from_logits = 1).  A padded frame (pad = 1)
 * carries the state over unchanged, so the engine runs on the valid frames only: in place
 * when they form one run (the usual right- or left-padding), else copied into a per-thread
 * buffer first (and the gradient rows scattered back).  Forward probabilities come from
 * the engine's log_alpha rows over all N labels (optax runs its trellis over the padded
 * labels too); a state no alignment reaches (-inf there) is written as log_epsilon, where
 * optax holds log_epsilon plus the log-probabilities of the frames so far.
 *
 * Everything else takes optax's own recurrence, computed literally (optax.h, scalar):
 * labels that cannot fit the valid frames (optax's finite loss of about -log_epsilon is
 * wanted, not +inf), log_epsilon above FCTC_OPTAX_FAST_EPS, paddings other than 0.0/1.0
 * (optax blends them), label lengths outside [0, N], labels outside [0, K) where the
 * engine would read them, and any sequence whose engine result is not finite (NaN/inf
 * logits: optax's propagation is reproduced).  `exact` sends every sequence there.
 *
 * Before including: fastctc.h with FASTCTC_IMPLEMENTATION, FCTC_USE_F32/F64 + template.h,
 * and optax.h for the same type.  The team, the split decision and the loop are the batch
 * driver's (driver.h).  Nothing is allocated, printed or aborted inside the parallel loop:
 * one malloc before it (per-thread scratch), freed after.
 */
#ifndef FASTCTC_OPTAX_BATCH_ARGS
#define FASTCTC_OPTAX_BATCH_ARGS
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* log_epsilon at or below this: optax's penalised paths are negligible (exp(-100) ~ 4e-44,
 * far below a double's resolution even times the ~1e8 places a penalty could sit). */
#define FCTC_OPTAX_FAST_EPS (-100.0)

/* One batch; element strides (not bytes); the class axis of x and grad is contiguous, as
 * is the label axis of labels.  Pointers are FCTC_T of the instantiation unless noted. */
typedef struct {
    int B, T, K, N, blank;
    const void *x;
    ptrdiff_t x_bs, x_ts; /* logits[b*x_bs + t*x_ts + k] */
    const void *pad;
    ptrdiff_t pad_bs, pad_ts; /* logit_paddings[b*pad_bs + t*pad_ts] */
    const int *labels;
    ptrdiff_t lab_bs; /* labels[b*lab_bs + n] */
    const void *lpad;
    ptrdiff_t lpad_bs, lpad_ns; /* label_paddings[b*lpad_bs + n*lpad_ns] */
    const void *eps;
    ptrdiff_t eps_group; /* log_epsilon[b / eps_group] */
    void *loss; /* out: loss[b] */
    void *grad;
    ptrdiff_t g_bs, g_ts; /* out or NULL: d loss[b] / d logits */
    void *phi;
    ptrdiff_t phi_bs, phi_ts; /* out or NULL: logalpha_blank[t*phi_ts + b*phi_bs + n] */
    void *emit;
    ptrdiff_t emit_bs, emit_ts; /* out (with phi): logalpha_nonblank */
    int exact; /* 1: every sequence through optax.h */
    int num_threads; /* 0: OpenMP's default */
} fctc_optax_batch_args;

enum { FCTC_OX_FAST = 0, FCTC_OX_EXACT = 1 };

typedef struct {
    int route, L, first, count, contiguous;
} fctc_optax_seq_info;

/* What each sequence's step reads: the batch, the routes, and the byte sizes of the
 * per-thread buffers (engine scratch, compacted frames, their gradient rows, forward
 * variables, optax.h's work, its forward rows when the caller wants none). */
typedef struct {
    const fctc_optax_batch_args *a;
    fctc_optax_seq_info *info;
    size_t eng, xb, gb, ab, wk, tmp;
} fctc_optax_ctx;

static size_t fctc_ox_bytes(size_t count, size_t elem) { return fctc_round_up(count * elem, FCTC_ALIGN); }
#endif

/* Per-sequence routing and valid-frame layout; returns 1 if the sequence needs the
 * compaction buffers (fast route, valid frames not one run). */
static int FCTC_FN(fctc_optax_classify)(const fctc_optax_batch_args *a, int b, fctc_optax_seq_info *info) {
    const FCTC_T *pad = (const FCTC_T *)a->pad + (ptrdiff_t)b * a->pad_bs;
    const FCTC_T *lpad = (const FCTC_T *)a->lpad + (ptrdiff_t)b * a->lpad_bs;
    const int *lab = a->labels + (ptrdiff_t)b * a->lab_bs;
    const double eps = (double)((const FCTC_T *)a->eps)[b / a->eps_group];
    const int want_alpha = a->phi != NULL;
    int t, n, first = -1, last = -1, count = 0, repeats = 0, L;
    double padded = 0;
    info->route = FCTC_OX_EXACT;
    info->L = 0;
    info->first = info->count = 0;
    info->contiguous = 1;
    /* optax: L = N - int32(sum(label_paddings)), XLA's conversion: truncated toward zero,
     * NaN -> 0, out-of-range sums clamped (which leaves L outside [0, N]: the loss then
     * selects no state, optax's -0.0) */
    for (n = 0; n < a->N; ++n) padded += (double)lpad[(ptrdiff_t)n * a->lpad_ns];
    if (padded != padded)
        L = a->N;
    else if (padded > -1e9 && padded < 1e9)
        L = a->N - (int)padded;
    else
        L = -1;
    info->L = L;
    if (a->exact || !(eps <= FCTC_OPTAX_FAST_EPS) || L < 0 || L > a->N) return 0;
    for (t = 0; t < a->T; ++t) {
        FCTC_T p = pad[(ptrdiff_t)t * a->pad_ts];
        if (p == 0) {
            if (first < 0) first = t;
            last = t;
            ++count;
        } else if (p != 1) {
            return 0;
        }
    }
    for (n = 0; n < (want_alpha ? a->N : L); ++n)
        if (lab[n] < 0 || lab[n] >= a->K) return 0;
    for (n = 1; n < L; ++n) repeats += lab[n] == lab[n - 1];
    if (count < L + repeats) return 0; /* labels do not fit: optax's finite value */
    info->route = FCTC_OX_FAST;
    info->first = first < 0 ? 0 : first;
    info->count = count;
    info->contiguous = count == 0 || last - first + 1 == count;
    return !info->contiguous;
}

/* optax's own recurrence for sequence b (optax.h). */
static void FCTC_FN(fctc_optax_exact_one)(const fctc_optax_batch_args *a, int b, int L, FCTC_T *work, FCTC_T *phi_tmp,
                                          FCTC_T *emit_tmp) {
    const int T = a->T, N = a->N;
    const FCTC_T eps = ((const FCTC_T *)a->eps)[b / a->eps_group];
    FCTC_T *phi, *emit;
    ptrdiff_t phi_ts, emit_ts;
    if (a->phi) {
        phi = (FCTC_T *)a->phi + (ptrdiff_t)b * a->phi_bs;
        emit = (FCTC_T *)a->emit + (ptrdiff_t)b * a->emit_bs;
        phi_ts = a->phi_ts;
        emit_ts = a->emit_ts;
    } else {
        phi = phi_tmp;
        emit = emit_tmp;
        phi_ts = N + 1;
        emit_ts = N;
    }
    FCTC_FN(fctc_optax_sequence)
    ((const FCTC_T *)a->x + (ptrdiff_t)b * a->x_bs, a->x_ts, T, a->K, (const FCTC_T *)a->pad + (ptrdiff_t)b * a->pad_bs,
     a->pad_ts, a->labels + (ptrdiff_t)b * a->lab_bs, N, L, a->blank, eps, phi, phi_ts, emit, emit_ts,
     a->grad ? (FCTC_T *)a->grad + (ptrdiff_t)b * a->g_bs : NULL, a->g_ts, work, (FCTC_T *)a->loss + b);
}

/* The engine on sequence b's valid frames; returns 0 when the result is not finite (the
 * caller then reruns the sequence through optax.h). */
static int FCTC_FN(fctc_optax_fast_one)(const fctc_optax_batch_args *a, int b, const fctc_optax_seq_info *info,
                                        void *engine_scratch, FCTC_T *xbuf, FCTC_T *gbuf, FCTC_T *abuf, int split) {
    const int T = a->T, K = a->K, N = a->N, want_alpha = a->phi != NULL;
    const FCTC_T *x = (const FCTC_T *)a->x + (ptrdiff_t)b * a->x_bs;
    const FCTC_T *pad = (const FCTC_T *)a->pad + (ptrdiff_t)b * a->pad_bs;
    FCTC_T *grad = a->grad ? (FCTC_T *)a->grad + (ptrdiff_t)b * a->g_bs : NULL;
    const FCTC_T eps = ((const FCTC_T *)a->eps)[b / a->eps_group];
    FCTC_FN(fastctc_job) job;
    FCTC_T cost;
    int t, n, j;
    memset(&job, 0, sizeof job);
    if (info->contiguous) {
        job.acts = x + (ptrdiff_t)info->first * a->x_ts;
        job.act_stride = a->x_ts;
    } else {
        for (t = 0, j = 0; t < T; ++t)
            if (pad[(ptrdiff_t)t * a->pad_ts] == 0)
                memcpy(xbuf + (ptrdiff_t)(j++) * K, x + (ptrdiff_t)t * a->x_ts, (size_t)K * sizeof(FCTC_T));
        job.acts = xbuf;
        job.act_stride = K;
    }
    job.labels = a->labels + (ptrdiff_t)b * a->lab_bs;
    job.label_length = want_alpha ? N : info->L;
    job.input_length = info->count;
    job.alphabet_size = K;
    job.blank = a->blank;
    job.from_logits = 1;
    job.grad_scale = 1.0;
    if (grad) {
        if (info->contiguous) {
            for (t = 0; t < info->first; ++t) memset(grad + (ptrdiff_t)t * a->g_ts, 0, (size_t)K * sizeof(FCTC_T));
            job.grad = grad + (ptrdiff_t)info->first * a->g_ts;
            job.grad_stride = a->g_ts;
            job.grad_rows = T - info->first;
        } else {
            job.grad = gbuf;
            job.grad_stride = K;
            job.grad_rows = info->count;
        }
    }
    if (want_alpha) {
        job.log_alpha = abuf;
        job.alpha_stride = 2 * (ptrdiff_t)N + 1;
        job.alpha_rows = info->count;
        job.alpha_cols = 2 * N + 1;
    }
    cost = split ? FCTC_FN(fctc_sequence_split)(&job, engine_scratch) : FCTC_FN(fastctc_sequence)(&job, engine_scratch);
    if (grad && !info->contiguous) {
        for (t = 0, j = 0; t < T; ++t) {
            FCTC_T *g = grad + (ptrdiff_t)t * a->g_ts;
            if (pad[(ptrdiff_t)t * a->pad_ts] == 0)
                memcpy(g, gbuf + (ptrdiff_t)(j++) * K, (size_t)K * sizeof(FCTC_T));
            else
                memset(g, 0, (size_t)K * sizeof(FCTC_T));
        }
    }
    if (want_alpha) {
        /* optax's rows: valid frames from the engine's log_alpha (-inf -> log_epsilon),
         * padded frames a copy of the previous row (the initial state before any) */
        FCTC_T *phi = (FCTC_T *)a->phi + (ptrdiff_t)b * a->phi_bs;
        FCTC_T *emit = (FCTC_T *)a->emit + (ptrdiff_t)b * a->emit_bs;
        FCTC_T *ph = phi, *em = emit;
        for (t = 0, j = 0; t < T; ++t) {
            ph = phi + (ptrdiff_t)t * a->phi_ts;
            em = emit + (ptrdiff_t)t * a->emit_ts;
            if (pad[(ptrdiff_t)t * a->pad_ts] == 0) {
                const FCTC_T *row = abuf + (ptrdiff_t)(j++) * (2 * (ptrdiff_t)N + 1);
                for (n = 0; n <= N; ++n) ph[n] = row[2 * n] < eps ? eps : row[2 * n]; /* NaN stays NaN */
                for (n = 0; n < N; ++n) em[n] = row[2 * n + 1] < eps ? eps : row[2 * n + 1];
            } else if (t == 0) {
                ph[0] = 0;
                for (n = 1; n <= N; ++n) ph[n] = eps;
                for (n = 0; n < N; ++n) em[n] = eps;
            } else {
                memcpy(ph, ph - a->phi_ts, (size_t)(N + 1) * sizeof(FCTC_T));
                if (N) memcpy(em, em - a->emit_ts, (size_t)N * sizeof(FCTC_T));
            }
        }
        /* the final emit -> blank transition, on the last row (padded or not), as optax does */
        for (n = N; n >= 1; --n) ph[n] = FCTC_FN(fctc_ox_lae)(ph[n], em[n - 1]);
        cost = -ph[info->L];
    }
    ((FCTC_T *)a->loss)[b] = cost;
    return cost == cost && cost != (FCTC_T)HUGE_VAL && cost != -(FCTC_T)HUGE_VAL;
}

/* One sequence of the batch on its thread's scratch (fctc_batch_loop's step): the
 * engine, or optax.h when the sequence needs it or the engine's result is not finite. */
static void FCTC_FN(fctc_optax_one)(const void *ctx_, int b, void *scratch, int split) {
    const fctc_optax_ctx *ctx = (const fctc_optax_ctx *)ctx_;
    unsigned char *mine = (unsigned char *)scratch;
    FCTC_T *xbuf = (FCTC_T *)(mine + ctx->eng);
    FCTC_T *gbuf = (FCTC_T *)((unsigned char *)xbuf + ctx->xb);
    FCTC_T *abuf = (FCTC_T *)((unsigned char *)gbuf + ctx->gb);
    FCTC_T *work = (FCTC_T *)((unsigned char *)abuf + ctx->ab);
    FCTC_T *phi_tmp = (FCTC_T *)((unsigned char *)work + ctx->wk);
    FCTC_T *emit_tmp = (FCTC_T *)((unsigned char *)phi_tmp + ctx->tmp / 2);
    if (ctx->info[b].route == FCTC_OX_FAST &&
        FCTC_FN(fctc_optax_fast_one)(ctx->a, b, &ctx->info[b], mine, xbuf, gbuf, abuf, split))
        return;
    FCTC_FN(fctc_optax_exact_one)(ctx->a, b, ctx->info[b].L, work, phi_tmp, emit_tmp);
}

/* The batch; returns FASTCTC_OK, FASTCTC_INVALID_ARGUMENT (sizes) or FASTCTC_OUT_OF_MEMORY. */
static fastctc_status FCTC_FN(fctc_optax_batch)(const fctc_optax_batch_args *a) {
    const int B = a->B, T = a->T, K = a->K, N = a->N;
    const size_t es = sizeof(FCTC_T);
    const int want_alpha = a->phi != NULL, want_grad = a->grad != NULL;
    fctc_optax_ctx ctx;
    fctc_batch_plan plan;
    int b, split, any_fast = 0, any_compact = 0;
    size_t eng = 0;
    unsigned char *owned;
    if (B < 0 || T < 1 || K < 1 || N < 0 || a->blank < 0 || a->blank >= K || a->eps_group < 1 || N > (INT_MAX - 8) / 2)
        return FASTCTC_INVALID_ARGUMENT;
    if (want_alpha && want_grad) return FASTCTC_INVALID_ARGUMENT;
    if (B == 0) return FASTCTC_OK;
    /* every per-thread buffer is at most T * max(K, 2N + 2) elements: that must fit */
    if ((size_t)T > ((size_t)PTRDIFF_MAX / 16) / ((size_t)K + 2 * (size_t)N + 2)) return FASTCTC_INVALID_ARGUMENT;
    memset(&ctx, 0, sizeof ctx);
    ctx.a = a;
    ctx.info = (fctc_optax_seq_info *)malloc((size_t)B * sizeof *ctx.info);
    if (!ctx.info) return FASTCTC_OUT_OF_MEMORY;
    for (b = 0; b < B; ++b) {
        any_compact |= FCTC_FN(fctc_optax_classify)(a, b, &ctx.info[b]);
        any_fast |= ctx.info[b].route == FCTC_OX_FAST;
    }
    /* Fewer sequences than threads, with a gradient: one sequence at a time, each split
     * over two threads (forward and backward halves at once, split.h), as the loss does. */
    plan.threads = fctc_batch_threads(a->num_threads, B, want_grad, &split);
    plan.split = split;
    if (any_fast) {
        eng = fastctc_sequence_scratch_bytes(T, N, want_grad, es);
        if (split) {
            size_t two = fctc_split_scratch_bytes(T, N, es);
            eng = (two == 0 || eng == 0) ? 0 : (two > eng ? two : eng);
        }
        if (eng == 0) {
            free(ctx.info);
            return FASTCTC_INVALID_ARGUMENT;
        }
        if (any_compact) {
            ctx.xb = fctc_ox_bytes((size_t)T * (size_t)K, es);
            if (want_grad) ctx.gb = ctx.xb;
        }
        if (want_alpha) ctx.ab = fctc_ox_bytes((size_t)T * (2 * (size_t)N + 1), es);
    }
    ctx.eng = fctc_round_up(eng, FCTC_ALIGN);
    /* optax.h's scratch is reserved even when every sequence is routed to the engine: a
     * non-finite engine result is redone there (it is small: about 2T(N+1) elements) */
    ctx.wk = fctc_ox_bytes((size_t)FCTC_FN(fctc_optax_work_size)(T, N), es);
    if (!want_alpha) ctx.tmp = 2 * fctc_ox_bytes((size_t)T * (size_t)(N + 1), es);
    plan.per_thread = ctx.eng + ctx.xb + ctx.gb + ctx.ab + ctx.wk + ctx.tmp;
    plan.fixed = FCTC_ALIGN;
    owned = (unsigned char *)malloc(plan.per_thread * (size_t)plan.threads + plan.fixed);
    if (!owned) {
        free(ctx.info);
        return FASTCTC_OUT_OF_MEMORY;
    }
    fctc_batch_loop(&plan, B, fctc_batch_base(owned), FCTC_FN(fctc_optax_one), &ctx);
    free(owned);
    free(ctx.info);
    return FASTCTC_OK;
}
