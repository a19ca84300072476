/* fastctc/detail/batch.h: the C API's batch entry points -- fastctc_workspace_size,
 * fastctc_align_workspace_size, fastctc_loss_f32/_f64 and fastctc_align_f32/_f64.  Each
 * validates everything (before any output is written), describes the call as one
 * fctc_batch_job, and runs it through the batch driver (driver.h): sized by its one
 * workspace function, in the caller's workspace or one the driver allocates (before its
 * loop, freed after it).  The C API never takes the split pass (its workspace
 * sizes stay those of the one-thread pass).
 * Instantiated for float and double through template.h; the size queries, which do not
 * depend on the element type, are compiled once (FCTC_BATCH_COMMON_DONE).
 */
#ifndef FCTC_BATCH_COMMON_DONE
#define FCTC_BATCH_COMMON_DONE

/* The job of a C API call, without outputs: acts in the options' layout, the labels back
 * to back (offsets computed by the driver). */
static void fctc_capi_job(fctc_batch_job *job, int align, const void *acts, const int *flat_labels,
                          const int *label_lengths, const int *input_lengths, int max_time, int minibatch,
                          int alphabet_size, const fastctc_options *o) {
    const ptrdiff_t C = alphabet_size;
    memset(job, 0, sizeof *job);
    job->align = align;
    job->minibatch = minibatch;
    job->max_time = max_time;
    job->alphabet_size = alphabet_size;
    job->blank = o->blank;
    job->from_logits = o->from_logits;
    job->zero_infinity = o->zero_infinity;
    job->acts = acts;
    job->act_batch_stride = o->batch_major ? (ptrdiff_t)max_time * C : C;
    job->act_time_stride = o->batch_major ? C : (ptrdiff_t)minibatch * C;
    job->labels = flat_labels;
    job->label_lengths = label_lengths;
    job->input_lengths = input_lengths;
    job->num_threads = o->num_threads;
    job->split_min_cells = -1;
}

/* The workspace size of a C API call (want_grad: the loss with a gradient). */
static fastctc_status fctc_capi_workspace_size(int align, const int *label_lengths, const int *input_lengths,
                                               int max_time, int minibatch, int alphabet_size, int want_grad,
                                               size_t elem_size, const fastctc_options *options, size_t *size_bytes) {
    const fastctc_options *o = options ? options : &fctc_default_options;
    fctc_batch_job job;
    fctc_batch_plan plan;
    size_t total, bytes;
    if (!size_bytes || (elem_size != sizeof(float) && elem_size != sizeof(double))) return FASTCTC_INVALID_ARGUMENT;
    if (fctc_check_sizes(label_lengths, input_lengths, max_time, minibatch, alphabet_size, o, &total))
        return FASTCTC_INVALID_ARGUMENT;
    fctc_capi_job(&job, align, NULL, NULL, label_lengths, input_lengths, max_time, minibatch, alphabet_size, o);
    job.grad = want_grad ? &job : NULL; /* (only whether there is one counts here) */
    bytes = fctc_batch_workspace(&job, elem_size, &plan);
    if (bytes == 0) return FASTCTC_INVALID_ARGUMENT;
    *size_bytes = bytes;
    return FASTCTC_OK;
}

FASTCTC_DEF fastctc_status fastctc_workspace_size(const int *label_lengths, const int *input_lengths, int max_time,
                                                  int minibatch, int alphabet_size, int want_grad, size_t elem_size,
                                                  const fastctc_options *options, size_t *size_bytes) {
    return fctc_capi_workspace_size(0, label_lengths, input_lengths, max_time, minibatch, alphabet_size, want_grad != 0,
                                    elem_size, options, size_bytes);
}

FASTCTC_DEF fastctc_status fastctc_align_workspace_size(const int *label_lengths, const int *input_lengths,
                                                        int max_time, int minibatch, int alphabet_size,
                                                        size_t elem_size, const fastctc_options *options,
                                                        size_t *size_bytes) {
    return fctc_capi_workspace_size(1, label_lengths, input_lengths, max_time, minibatch, alphabet_size, 0, elem_size,
                                    options, size_bytes);
}

#endif /* FCTC_BATCH_COMMON_DONE */

/* ---- per element type ---- */

FASTCTC_DEF fastctc_status FCTC_FN(fastctc_loss)(const FCTC_T *acts, FCTC_T *grads, const int *flat_labels,
                                                 const int *label_lengths, const int *input_lengths, int max_time,
                                                 int minibatch, int alphabet_size, FCTC_T *costs, void *workspace,
                                                 size_t workspace_bytes, const fastctc_options *options) {
    const fastctc_options *o = options ? options : &fctc_default_options;
    fctc_batch_job job;
    size_t total_labels, k, act_bytes, cost_bytes, label_bytes, length_bytes;
    if (fctc_check_sizes(label_lengths, input_lengths, max_time, minibatch, alphabet_size, o, &total_labels))
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
    if (workspace && (fctc_overlap(workspace, workspace_bytes, acts, act_bytes) ||
                      fctc_overlap(workspace, workspace_bytes, grads, act_bytes) ||
                      fctc_overlap(workspace, workspace_bytes, costs, cost_bytes) ||
                      fctc_overlap(workspace, workspace_bytes, flat_labels, label_bytes) ||
                      fctc_overlap(workspace, workspace_bytes, label_lengths, length_bytes) ||
                      fctc_overlap(workspace, workspace_bytes, input_lengths, length_bytes)))
        return FASTCTC_INVALID_ARGUMENT;
    if (minibatch == 0) return FASTCTC_OK;
    fctc_capi_job(&job, 0, acts, flat_labels, label_lengths, input_lengths, max_time, minibatch, alphabet_size, o);
    job.costs = costs;
    job.grad = grads;
    job.grad_batch_stride = job.act_batch_stride;
    job.grad_time_stride = job.act_time_stride;
    return FCTC_FN(fctc_batch_execute)(&job, workspace, workspace_bytes);
}

FASTCTC_DEF fastctc_status FCTC_FN(fastctc_align)(const FCTC_T *acts, const int *flat_labels, const int *label_lengths,
                                                  const int *input_lengths, int max_time, int minibatch,
                                                  int alphabet_size, int *paths, FCTC_T *scores, void *workspace,
                                                  size_t workspace_bytes, const fastctc_options *options) {
    const fastctc_options *o = options ? options : &fctc_default_options;
    fctc_batch_job job;
    size_t total_labels;
    if (fctc_align_check(flat_labels, label_lengths, input_lengths, max_time, minibatch, alphabet_size, o,
                         &total_labels))
        return FASTCTC_INVALID_ARGUMENT;
    if (minibatch > 0 && max_time > 0 && (!paths || !acts)) return FASTCTC_INVALID_ARGUMENT;
    {
        /* The outputs (and the workspace) may not overlap anything the call reads, or
         * each other: checked before anything is written. */
        const size_t cells = (size_t)max_time * (size_t)minibatch;
        const void *in[4] = {acts, flat_labels, label_lengths, input_lengths};
        size_t in_bytes[4] = {cells * (size_t)alphabet_size * sizeof(FCTC_T), total_labels * sizeof(int),
                              (size_t)minibatch * sizeof(int), (size_t)minibatch * sizeof(int)};
        const void *out[3] = {paths, scores, workspace};
        size_t out_bytes[3] = {cells * sizeof(int), cells * sizeof(FCTC_T), workspace ? workspace_bytes : 0};
        int i, j;
        for (i = 0; i < 3; ++i) {
            for (j = 0; j < 4; ++j)
                if (fctc_overlap(out[i], out_bytes[i], in[j], in_bytes[j])) return FASTCTC_INVALID_ARGUMENT;
            for (j = i + 1; j < 3; ++j)
                if (fctc_overlap(out[i], out_bytes[i], out[j], out_bytes[j])) return FASTCTC_INVALID_ARGUMENT;
        }
    }
    if (minibatch == 0 || max_time == 0) return FASTCTC_OK;
    fctc_capi_job(&job, 1, acts, flat_labels, label_lengths, input_lengths, max_time, minibatch, alphabet_size, o);
    job.paths = paths;
    job.scores = scores;
    job.path_batch_stride = max_time;
    return FCTC_FN(fctc_batch_execute)(&job, workspace, workspace_bytes);
}
