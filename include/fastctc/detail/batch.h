/* fastctc/detail/batch.h: fastctc_loss_f32 / fastctc_loss_f64, the batch entry points of the
 * C API: validate everything (before any output is written), size or check the
 * workspace, then one OpenMP loop over sequences (dynamic schedule: lengths differ)
 * calling fastctc_sequence_*.  Nothing inside the loop allocates, prints or fails.
 * Instantiated for float and double through template.h.
 */
FASTCTC_DEF fastctc_status FCTC_FN(fastctc_loss)(const FCTC_T *acts, FCTC_T *grads, const int *flat_labels,
                                                 const int *label_lengths, const int *input_lengths,
                                                 int max_time, int minibatch, int alphabet_size,
                                                 FCTC_T *costs, void *workspace, size_t workspace_bytes,
                                                 const fastctc_options *options) {
    const fastctc_options *o = options ? options : &fctc_default_options;
    int longest_input, longest_label, n, threads;
    size_t total_labels, per_thread, k, need, act_bytes, cost_bytes, label_bytes, length_bytes;
    void *owned = NULL;
    if (fctc_check_sizes(label_lengths, input_lengths, max_time, minibatch, alphabet_size, o, &longest_input,
                         &longest_label, &total_labels))
        return FASTCTC_INVALID_ARGUMENT;
    if (minibatch > 0 && (!costs || (!acts && max_time > 0))) return FASTCTC_INVALID_ARGUMENT;
    if (total_labels > 0 && !flat_labels) return FASTCTC_INVALID_ARGUMENT;
    for (k = 0; k < total_labels; ++k)
        if (flat_labels[k] < 0 || flat_labels[k] >= alphabet_size) return FASTCTC_INVALID_ARGUMENT;

    /* Outputs may not overlap inputs or each other: the backward pass reads a frame of
     * acts after writing that frame's gradient, so in-place use would give wrong
     * numbers without any sign of it. */
    act_bytes = (size_t)max_time * (size_t)minibatch * (size_t)alphabet_size * sizeof(FCTC_T);
    cost_bytes = (size_t)minibatch * sizeof(FCTC_T);
    label_bytes = total_labels * sizeof(int);
    length_bytes = (size_t)minibatch * sizeof(int);
    if (fctc_overlap(grads, act_bytes, acts, act_bytes) || fctc_overlap(grads, act_bytes, costs, cost_bytes) ||
        fctc_overlap(costs, cost_bytes, acts, act_bytes))
        return FASTCTC_INVALID_ARGUMENT;
    if (fctc_overlap(grads, act_bytes, flat_labels, label_bytes) ||
        fctc_overlap(costs, cost_bytes, flat_labels, label_bytes) ||
        fctc_overlap(grads, act_bytes, label_lengths, length_bytes) ||
        fctc_overlap(costs, cost_bytes, label_lengths, length_bytes) ||
        fctc_overlap(grads, act_bytes, input_lengths, length_bytes) ||
        fctc_overlap(costs, cost_bytes, input_lengths, length_bytes))
        return FASTCTC_INVALID_ARGUMENT;
    if (workspace &&
        (fctc_overlap(workspace, workspace_bytes, acts, act_bytes) ||
         fctc_overlap(workspace, workspace_bytes, grads, act_bytes) ||
         fctc_overlap(workspace, workspace_bytes, costs, cost_bytes) ||
         fctc_overlap(workspace, workspace_bytes, flat_labels, label_bytes) ||
         fctc_overlap(workspace, workspace_bytes, label_lengths, length_bytes) ||
         fctc_overlap(workspace, workspace_bytes, input_lengths, length_bytes)))
        return FASTCTC_INVALID_ARGUMENT;
    if (minibatch == 0) return FASTCTC_OK;

    threads = fctc_threads_for(o, minibatch);
    need = fctc_workspace_bytes(longest_input, longest_label, grads != NULL, sizeof(FCTC_T), threads, minibatch,
                                &per_thread);
    if (need == 0) return FASTCTC_INVALID_ARGUMENT;
    if (workspace) {
        /* A workspace sized for more threads than this call uses is fine; one sized for
         * fewer (but at least one) makes the call use as many threads as it holds. */
        size_t fixed = fctc_round_up((size_t)minibatch * sizeof(ptrdiff_t), FCTC_ALIGN) + FCTC_ALIGN;
        size_t fit;
        if (workspace_bytes < fixed || workspace_bytes - fixed < per_thread) return FASTCTC_WORKSPACE_TOO_SMALL;
        fit = (workspace_bytes - fixed) / per_thread;
        if (fit < (size_t)threads) threads = (int)fit;
    } else {
        owned = malloc(need);
        if (!owned) return FASTCTC_OUT_OF_MEMORY;
        workspace = owned;
    }
    {
        unsigned char *base = (unsigned char *)fctc_round_up((size_t)(uintptr_t)workspace, FCTC_ALIGN);
        ptrdiff_t *offsets = (ptrdiff_t *)(base + per_thread * (size_t)threads);
        ptrdiff_t running = 0;
        const ptrdiff_t C = alphabet_size;
        const ptrdiff_t frame_stride = o->batch_major ? C : (ptrdiff_t)minibatch * C;
        for (n = 0; n < minibatch; ++n) {
            offsets[n] = running;
            running += label_lengths[n];
        }

#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
        for (n = 0; n < minibatch; ++n) {
#ifdef _OPENMP
            /* A team never has more threads than asked for, so tid < threads. */
            int tid = omp_get_thread_num();
#else
            int tid = 0;
#endif
            ptrdiff_t first = o->batch_major ? (ptrdiff_t)n * max_time * C : (ptrdiff_t)n * C;
            FCTC_FN(fastctc_job) job;
            FCTC_T cost;
            job.acts = acts ? acts + first : NULL;
            job.act_stride = frame_stride;
            job.labels = flat_labels ? flat_labels + offsets[n] : NULL;
            job.label_length = label_lengths[n];
            job.input_length = input_lengths[n];
            job.alphabet_size = alphabet_size;
            job.blank = o->blank;
            job.from_logits = o->from_logits;
            job.grad = grads ? grads + first : NULL;
            job.grad_stride = frame_stride;
            job.grad_rows = max_time;
            job.grad_scale = 1.0;
            job.log_alpha = NULL;
            job.alpha_stride = 0;
            job.alpha_rows = 0;
            job.alpha_cols = 0;
            cost = FCTC_FN(fastctc_sequence)(&job, base + per_thread * (size_t)tid);
            if (o->zero_infinity && cost == (FCTC_T)HUGE_VAL) cost = 0;
            costs[n] = cost;
        }
    }
    free(owned);
    return FASTCTC_OK;
}
