# fastctc/_driver.pxd: the C batch driver (include/fastctc/detail/driver.h) as the compiled
# bridges see it.  _core (the loss) and _align_core (the alignment) only fill a
# fctc_batch_job and hand it to run_job, which the driver sizes (its one workspace
# function), allocates and runs, without the GIL.

cdef extern from "fastctc/fastctc.h" nogil:
    ctypedef struct fctc_batch_job:
        int align
        int minibatch, max_time, alphabet_size, blank, from_logits, zero_infinity
        const void *acts
        Py_ssize_t act_batch_stride, act_time_stride
        const int *labels
        const Py_ssize_t *label_offsets
        const int *label_lengths
        const int *input_lengths
        void *costs
        void *grad
        Py_ssize_t grad_batch_stride, grad_time_stride
        const double *grad_scale
        void *log_alpha
        Py_ssize_t alpha_batch_stride, alpha_time_stride
        int alpha_rows, alpha_cols
        int *paths
        void *scores
        Py_ssize_t path_batch_stride
        int num_threads
        long long split_min_cells

    ctypedef struct fctc_batch_plan:
        int threads
        int split
        size_t per_thread
        size_t fixed

    size_t fctc_batch_workspace(const fctc_batch_job *job, size_t elem_size, fctc_batch_plan *plan)
    int fctc_batch_execute_f32(const fctc_batch_job *job, void *workspace, size_t workspace_bytes)
    int fctc_batch_execute_f64(const fctc_batch_job *job, void *workspace, size_t workspace_bytes)


cdef inline int run_job(const fctc_batch_job *job, size_t elem_size) noexcept nogil:
    # Runs a filled job (float64 when elem_size is 8, else float32) in a workspace the
    # driver allocates (before its loop; freed on return).  0, or the driver's status
    # (the size overflows, or memory is exhausted).
    if elem_size == 8:
        return fctc_batch_execute_f64(job, NULL, 0)
    return fctc_batch_execute_f32(job, NULL, 0)
