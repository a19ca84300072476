/* fastctc/detail/batch_common.h: argument checks and workspace sizing shared by the float and
 * double batch entry points (fastctc_loss_f32/_f64).  Internal header.
 *
 * Workspace layout: [per-thread scratch] x threads, then minibatch label offsets
 * (ptrdiff_t).  Each thread's scratch is fastctc_sequence_scratch_bytes() for the
 * longest input and label of the batch, so no allocation happens inside the parallel
 * loop.  The first byte used is the workspace rounded up to 64 bytes, which is why
 * one extra FCTC_ALIGN is counted.
 */
#ifndef FASTCTC_BATCH_COMMON_H
#define FASTCTC_BATCH_COMMON_H

static const fastctc_options fctc_default_options = {0, 0, 0, 0, 0};

/* Threads a call with this many sequences uses: the request (or the OpenMP default),
 * at most one per sequence, capped by fctc_team_cap (threads.h); 1 without OpenMP. */
static int fctc_threads_for(const fastctc_options *o, int minibatch) {
#ifdef _OPENMP
    int t = o->num_threads > 0 ? o->num_threads : omp_get_max_threads();
    if (t > minibatch) t = minibatch;
    return fctc_team_cap(t);
#else
    (void)o;
    (void)minibatch;
    return 1;
#endif
}

/* Adjacent repeated labels: each needs a blank between, hence one extra frame. */
static int fctc_count_repeats(const int *labels, int L) {
    int r = 0;
    for (int i = 1; i < L; ++i) r += labels[i] == labels[i - 1];
    return r;
}

/* A sequence is feasible (has at least one alignment) iff T >= L + repeats. */
static int fctc_feasible(int T, int L, const int *labels) {
    return L <= T && T - L >= fctc_count_repeats(labels, L);
}

/* The label length a call's scratch must hold for a sequence: a target that cannot fit
 * its input (L > T) is infeasible and is never laid out as a trellis, so it needs no
 * more than T (a 2e6-label target on 2000 frames must not ask for gigabytes). */
static int fctc_scratch_label_length(int T, int L) { return L < T ? L : (T > 0 ? T : 0); }

/* Checks sizes, lengths and options, finds the longest input and label and the number of
 * labels; 0 when all is well. */
static int fctc_check_sizes(const int *label_lengths, const int *input_lengths, int max_time,
                            int minibatch, int alphabet_size, const fastctc_options *o,
                            int *longest_input, int *longest_label, size_t *total_labels) {
    int n;
    if (max_time < 0 || minibatch < 0 || alphabet_size < 1) return 1;
    if (minibatch > 0 && (!label_lengths || !input_lengths)) return 1;
    if (o->blank < 0 || o->blank >= alphabet_size || o->num_threads < 0) return 1;
    if ((o->from_logits != 0 && o->from_logits != 1) || (o->zero_infinity != 0 && o->zero_infinity != 1) ||
        (o->batch_major != 0 && o->batch_major != 1))
        return 1;
    /* acts (max_time * minibatch * alphabet_size elements of up to 8 bytes) must be
     * addressable, and every element index must fit a ptrdiff_t; checked one factor at
     * a time so that the check itself cannot overflow. */
    {
        size_t limit = (size_t)PTRDIFF_MAX / 8;
        size_t a = (size_t)alphabet_size;
        if ((size_t)max_time > limit / a) return 1;
        a *= (size_t)max_time;
        if (a > 0 && (size_t)minibatch > limit / a) return 1;
    }
    *longest_input = 0;
    *longest_label = 0;
    *total_labels = 0;
    for (n = 0; n < minibatch; ++n) {
        if (input_lengths[n] < 0 || input_lengths[n] > max_time) return 1;
        if (label_lengths[n] < 0 || label_lengths[n] > (INT_MAX - 8) / 2) return 1;
        if (input_lengths[n] > *longest_input) *longest_input = input_lengths[n];
        if (fctc_scratch_label_length(input_lengths[n], label_lengths[n]) > *longest_label)
            *longest_label = fctc_scratch_label_length(input_lengths[n], label_lengths[n]);
        if ((size_t)label_lengths[n] > (size_t)PTRDIFF_MAX / sizeof(int) - *total_labels) return 1;
        *total_labels += (size_t)label_lengths[n];
    }
    return 0;
}

/* 1 when the byte ranges [a, a + a_bytes) and [b, b + b_bytes) share a byte.  Compared as
 * integers: relational operators on pointers into different objects are undefined. */
static int fctc_overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    if (!a || !b || a_bytes == 0 || b_bytes == 0) return 0;
    return pa < pb + b_bytes && pb < pa + a_bytes;
}

/* Per-thread scratch and total workspace; 0 on overflow. */
static size_t fctc_workspace_bytes(int longest_input, int longest_label, int want_grad, size_t elem_size,
                                   int threads, int minibatch, size_t *per_thread) {
    size_t one = fastctc_sequence_scratch_bytes(longest_input, longest_label, want_grad, elem_size);
    size_t fixed = fctc_round_up((size_t)minibatch * sizeof(ptrdiff_t), FCTC_ALIGN) + FCTC_ALIGN;
    if (one == 0) return 0;
    if ((size_t)threads > (SIZE_MAX / 4 - fixed) / one) return 0;
    *per_thread = one;
    return one * (size_t)threads + fixed;
}

FASTCTC_DEF fastctc_status fastctc_workspace_size(const int *label_lengths, const int *input_lengths,
                                                  int max_time, int minibatch, int alphabet_size,
                                                  int want_grad, size_t elem_size,
                                                  const fastctc_options *options, size_t *size_bytes) {
    const fastctc_options *o = options ? options : &fctc_default_options;
    int longest_input, longest_label;
    size_t total, per_thread, bytes;
    if (!size_bytes || (elem_size != sizeof(float) && elem_size != sizeof(double))) return FASTCTC_INVALID_ARGUMENT;
    if (fctc_check_sizes(label_lengths, input_lengths, max_time, minibatch, alphabet_size, o, &longest_input,
                         &longest_label, &total))
        return FASTCTC_INVALID_ARGUMENT;
    bytes = fctc_workspace_bytes(longest_input, longest_label, want_grad != 0, elem_size,
                                 fctc_threads_for(o, minibatch), minibatch, &per_thread);
    if (bytes == 0) return FASTCTC_INVALID_ARGUMENT;
    *size_bytes = bytes;
    return FASTCTC_OK;
}

#endif /* FASTCTC_BATCH_COMMON_H */
