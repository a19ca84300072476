/* fastctc/detail/batch_common.h: the C API's argument checks, shared by the float and
 * double batch entry points (batch.h), and the feasibility rule the trellis, the aligner
 * and the driver share.  Internal header, not templated.
 */
#ifndef FASTCTC_BATCH_COMMON_H
#define FASTCTC_BATCH_COMMON_H

static const fastctc_options fctc_default_options = {0, 0, 0, 0, 0};

/* Adjacent repeated labels: each needs a blank between, hence one extra frame. */
static int fctc_count_repeats(const int *labels, int L) {
    int r = 0;
    for (int i = 1; i < L; ++i) r += labels[i] == labels[i - 1];
    return r;
}

/* A sequence is feasible (has at least one alignment) iff T >= L + repeats. */
static int fctc_feasible(int T, int L, const int *labels) { return L <= T && T - L >= fctc_count_repeats(labels, L); }

/* The label length a call's scratch must hold for a sequence: a target that cannot fit
 * its input (L > T) is infeasible and is never laid out as a trellis, so it needs no
 * more than T (a 2e6-label target on 2000 frames must not ask for gigabytes). */
static int fctc_scratch_label_length(int T, int L) { return L < T ? L : (T > 0 ? T : 0); }

/* Checks sizes, lengths and options, and counts the labels; 0 when all is well. */
static int fctc_check_sizes(const int *label_lengths, const int *input_lengths, int max_time, int minibatch,
                            int alphabet_size, const fastctc_options *o, size_t *total_labels) {
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
    *total_labels = 0;
    for (n = 0; n < minibatch; ++n) {
        if (input_lengths[n] < 0 || input_lengths[n] > max_time) return 1;
        if (label_lengths[n] < 0 || label_lengths[n] > (INT_MAX - 8) / 2) return 1;
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

/* Checks every argument of an alignment batch call (nothing is written); 0 when all is well. */
static int fctc_align_check(const int *flat_labels, const int *label_lengths, const int *input_lengths, int max_time,
                            int minibatch, int alphabet_size, const fastctc_options *o, size_t *total_labels) {
    size_t total = 0, offset = 0;
    if (fctc_check_sizes(label_lengths, input_lengths, max_time, minibatch, alphabet_size, o, &total)) return 1;
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

#endif /* FASTCTC_BATCH_COMMON_H */
