/* fastctc/batch_common.h: argument checks and workspace sizing shared by the float and
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

/* More threads than this are never started, whatever num_threads says: a huge request
 * would otherwise make the OpenMP runtime fail to create threads, and it has no way to
 * report that except by ending the process. */
#define FCTC_MAX_THREADS 1024

/* Threads a call with this many sequences uses: the request (or the OpenMP default),
 * at most one per sequence, at most FCTC_MAX_THREADS, 1 without OpenMP. */
static int fctc_threads_for(const fastctc_options *o, int minibatch) {
#ifdef _OPENMP
    int t = o->num_threads > 0 ? o->num_threads : omp_get_max_threads();
    if (t > minibatch) t = minibatch;
    if (t > FCTC_MAX_THREADS) t = FCTC_MAX_THREADS;
    return t > 0 ? t : 1;
#else
    (void)o;
    (void)minibatch;
    return 1;
#endif
}

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
        if (label_lengths[n] > *longest_label) *longest_label = label_lengths[n];
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
