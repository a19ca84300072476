# The engine's C-level entry for other compiled modules of the package (fastctc._fast's
# one-call path cimports it; Cython shares it through a capsule, so the engine is
# compiled once, in _core).

cdef struct EngineCall:
    # One validated batch.  Strides are in elements; pointers may be NULL where unused.
    bint is_f64              # float64 arrays (else float32)
    const char *acts         # (T, N, C), class axis contiguous
    Py_ssize_t T, N, C
    Py_ssize_t t_stride, n_stride
    const int *labels        # flat labels; sequence n's start at offsets[n]
    const Py_ssize_t *offsets
    const int *label_lengths
    const int *input_lengths
    int blank
    bint from_logits
    char *grad               # (T, N, C) or NULL
    Py_ssize_t gt_stride, gn_stride
    const double *grad_scale  # (N,) weight of each sequence's gradient rows
    char *log_alpha          # (N, rows, cols) or NULL
    Py_ssize_t an_stride, at_stride
    int alpha_rows, alpha_cols
    char *costs              # (N,) of the acts' dtype
    int num_threads          # threads asked for (capped by fctc_team_cap)
    Py_ssize_t split_min_cells  # SPLIT_MIN_CELLS of the caller's moment

cdef int engine_run(const EngineCall *call) noexcept nogil
cdef int budget_threads(object num_threads) except -1
cdef void budget_release() noexcept nogil
