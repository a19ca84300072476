# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastctc._core: the compiled bridge between the Python facade and the C engine.

Design
------
The numerics live in the header-only C core (include/fastctc/fastctc.h, the same code
the C API serves); this module only walks a batch.  ``run_batch`` receives arrays the
facade has already validated and normalised:

* acts: a (T, N, C) view whose class axis is contiguous and whose time and batch axes
  may have any stride, so time-major and batch-major inputs are read in place;
* labels: one flat int32 array plus per-sequence offsets;
* optional outputs: grad (a (T, N, C) view, same rules), log_alpha (N, T, K).

``engine_run`` (run_batch's, and fastctc._fast's, way in) describes the batch as one job
of the C batch driver (include/fastctc/detail/driver.h, the one the C API runs too) and
runs it without the GIL: the team, the split pass for lone long sequences, the
workspace (allocated before the loop, freed after it), the per-thread scratch and the
OpenMP loop are the driver's.  Nothing here checks values: every check happens in
_validate.py, before this is called.
"""
import os

import numpy as np
cimport numpy as cnp
from libc.string cimport memset

from fastctc._driver cimport fctc_batch_job, run_job

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fctc_openmp_enabled(void) { return 1; }
    static int fctc_openmp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fctc_openmp_enabled(void) { return 0; }
    static int fctc_openmp_max_threads(void) { return 1; }
    #endif
    """
    int fctc_openmp_enabled() nogil
    int fctc_openmp_max_threads() nogil

cdef extern from "fastctc/fastctc.h" nogil:
    size_t fastctc_sequence_scratch_bytes(int max_time, int max_label_length, int want_grad, size_t elem_size)
    int fctc_team_cap(int wanted)
    void fctc_fork_guard_install()
    int fctc_in_forked_child()
    int fastctc_simd_level()
    int fastctc_simd_level_supported(int level)
    const char *fastctc_simd_level_name(int level)
    int fastctc_simd_set_level(int level)
    int FASTCTC_SIMD_SCALAR, FASTCTC_SIMD_NEON, FASTCTC_SIMD_AVX2, FASTCTC_SIMD_AVX512

cdef extern from *:
    """
    /* Test hook: one level's vector exp (which == 0) or log (which == 1) over an array. */
    static void fctc_vec_math_f32(int level, int which, const float *x, float *out, Py_ssize_t n) {
        const fctc_kernels_f32 *k = fctc_kernels_for_f32(level);
        if (which) k->log_array(x, out, n); else k->exp_array(x, out, n);
    }
    static void fctc_vec_math_f64(int level, int which, const double *x, double *out, Py_ssize_t n) {
        const fctc_kernels_f64 *k = fctc_kernels_for_f64(level);
        if (which) k->log_array(x, out, n); else k->exp_array(x, out, n);
    }
    """
    void fctc_vec_math_f32(int level, int which, const float *x, float *out, Py_ssize_t n) nogil
    void fctc_vec_math_f64(int level, int which, const double *x, double *out, Py_ssize_t n) nogil

SIMD_LEVELS = ("scalar", "neon", "avx2", "avx512")

# Smallest trellis (frames x states of the longest sequence) worth splitting over two
# threads when a batch has fewer sequences than threads: below it the parallel region's
# fixed cost exceeds the half of the work it saves (measured: T=10, S=5 split was ~4 us
# slower than one thread; T=50, S=21 about even).
SPLIT_MIN_CELLS = 4096

def _warn_unknown_simd_env():
    """FASTCTC_SIMD names a level to force; an unknown name is ignored by the C dispatch
    (the best level runs), which must not happen silently."""
    import os
    import warnings
    value = os.environ.get("FASTCTC_SIMD")
    if not value:
        return
    if value not in SIMD_LEVELS:
        warnings.warn(f"FASTCTC_SIMD={value!r} is not a SIMD level (one of {', '.join(SIMD_LEVELS)}); "
                      f"ignored, using {simd_level()}", RuntimeWarning, stacklevel=2)
    elif value not in simd_levels_supported():
        warnings.warn(f"FASTCTC_SIMD={value!r}: this CPU/build cannot run it (supported: "
                      f"{', '.join(simd_levels_supported())}); using {simd_level()}", RuntimeWarning, stacklevel=2)


# A process forked after this import runs every call on one thread (threads.h): the
# OpenMP runtime's inherited thread pool would hang its next parallel region.
fctc_fork_guard_install()


cdef extern from *:
    """
    #include <stdlib.h>
    /* Calls in flight on the engine (all doors), so that concurrent calls share the
     * thread budget instead of each taking all of it. */
    static int fctc_calls_in_flight = 0;
    #if defined(_MSC_VER)
    #include <intrin.h>
    static int fctc_calls_add(int d) { return _InterlockedExchangeAdd((long volatile *)&fctc_calls_in_flight, d) + d; }
    #else
    static int fctc_calls_add(int d) { return __atomic_add_fetch(&fctc_calls_in_flight, d, __ATOMIC_SEQ_CST); }
    #endif
    /* OMP_NUM_THREADS's first entry when it is a positive integer, else 0.  Read on every
     * call (os.environ changes reach the C environment through putenv). */
    static int fctc_env_threads(void) {
        const char *s = getenv("OMP_NUM_THREADS");
        long long v = 0;
        int digits = 0;
        if (s == NULL) return 0;
        while (*s == 32 || (*s >= 9 && *s <= 13)) s++; /* C isspace, locale-free */
        for (; *s >= '0' && *s <= '9'; s++, digits++)
            if (v < 1000000000) v = v * 10 + (*s - '0');
        while (*s == 32 || (*s >= 9 && *s <= 13)) s++; /* C isspace, locale-free */
        if (!digits || (*s != 0 && *s != 44 /* ',' */) || v <= 0) return 0;
        return v > 1000000000 ? 1000000000 : (int)v;
    }
    """
    int fctc_calls_add(int d) nogil
    int fctc_env_threads() nogil


def _usable_cores():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


cdef int _cores = _usable_cores()  # read once: the system call costs more than a tiny problem


def default_threads():
    """Threads a call gets by default: OMP_NUM_THREADS (its first entry), else every core
    this process may use."""
    cdef int env = fctc_env_threads()
    return env if env > 0 else _cores


cdef int budget_threads(object num_threads) except -1:
    # Enters a call into the budget; returns its thread count: num_threads when given, else
    # its share of the default (budget_release() must follow, also on error).
    cdef int requested = 0 if num_threads is None else num_threads  # (converted before entering)
    cdef int active = fctc_calls_add(1)
    cdef int env
    if num_threads is not None:
        return requested
    env = fctc_env_threads()
    return max(1, (env if env > 0 else _cores) // active)


cdef void budget_release() noexcept nogil:
    fctc_calls_add(-1)


def threads_enter(num_threads=None):
    """Python face of the thread budget: enter a call, get its thread count (num_threads,
    or its share of default_threads() among the calls in flight).  Pair with threads_exit()."""
    return budget_threads(num_threads)


def threads_exit():
    budget_release()


def calls_in_flight():
    """Engine calls running now (test hook for the budget)."""
    return fctc_calls_add(0)


def team_size(int wanted):
    """The OpenMP team a call asking for `wanted` threads gets (threads.h): capped at the
    usable processors and at what the OS lets this process create; 1 in a forked child."""
    return fctc_team_cap(max(1, wanted))


def in_forked_child():
    """True in a process forked after fastctc was imported (calls then run on one thread)."""
    return bool(fctc_in_forked_child())


def openmp_enabled():
    """True when this extension was compiled with OpenMP."""
    return bool(fctc_openmp_enabled())


def openmp_max_threads():
    """OpenMP's default team size (1 without OpenMP)."""
    return fctc_openmp_max_threads()


def simd_level():
    """Name of the SIMD level in use."""
    return fastctc_simd_level_name(fastctc_simd_level()).decode()


def simd_levels_supported():
    """Names of the levels this CPU and build can run, lowest first."""
    return [name for i, name in enumerate(SIMD_LEVELS) if fastctc_simd_level_supported(i)]


def set_simd_level(name):
    """Force a supported level by name (tests, benchmarks); ValueError otherwise."""
    if name not in SIMD_LEVELS or fastctc_simd_set_level(SIMD_LEVELS.index(name)) != 0:
        raise ValueError(
            f"SIMD level {name!r} is not supported here; supported: {simd_levels_supported()}")


def vec_math(name, x, level):
    """Test hook: the exp or log ("exp" / "log") of one SIMD level's kernel set, applied to
    a float32 or float64 array (returns a new array of the same dtype and shape)."""
    if name not in ("exp", "log"):
        raise ValueError(f"vec_math: name must be 'exp' or 'log', got {name!r}")
    if level not in SIMD_LEVELS or not fastctc_simd_level_supported(SIMD_LEVELS.index(level)):
        raise ValueError(f"SIMD level {level!r} is not supported here; supported: {simd_levels_supported()}")
    arr = np.ascontiguousarray(x)
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"vec_math: dtype must be float32 or float64, got {arr.dtype}")
    out = np.empty_like(arr)
    cdef int lvl = SIMD_LEVELS.index(level), which = name == "log"
    cdef float[::1] xf, of
    cdef double[::1] xd, od
    if arr.size == 0:
        return out
    if arr.dtype == np.float32:
        xf = arr.reshape(-1)
        of = out.reshape(-1)
        with nogil:
            fctc_vec_math_f32(lvl, which, &xf[0], &of[0], xf.shape[0])
    else:
        xd = arr.reshape(-1)
        od = out.reshape(-1)
        with nogil:
            fctc_vec_math_f64(lvl, which, &xd[0], &od[0], xd.shape[0])
    return out


def scratch_bytes(int max_time, int max_label_length, bint want_grad, size_t elem_size):
    """Per-thread scratch of one sequence; 0 when the size overflows."""
    return fastctc_sequence_scratch_bytes(max_time, max_label_length, want_grad, elem_size)


cdef inline Py_ssize_t _elem_stride(Py_ssize_t byte_stride, Py_ssize_t itemsize) noexcept nogil:
    return byte_stride // itemsize


def run_batch(acts, const int[::1] labels, const Py_ssize_t[::1] label_offsets,
              const int[::1] label_lengths, const int[::1] input_lengths,
              int blank, bint from_logits, grad, const double[::1] grad_scale,
              log_alpha, out_costs, int num_threads):
    """Run the engine over a validated batch; fills out_costs (N,), grad, log_alpha.

    acts (T, N, C) float32/float64 with acts.strides[2] == itemsize; grad None or the
    same shape and dtype, same rule; log_alpha None or (N, T_a, K) of the same dtype with
    a contiguous last axis; out_costs (N,) of the same dtype, contiguous.
    """
    _run(acts, labels, label_offsets, label_lengths, input_lengths, blank, from_logits,
         grad, grad_scale, log_alpha, out_costs, num_threads)



cdef inline void *_data(object arr):
    return cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef _require(object arr, str name, object dtype, int ndim):
    # The engine reads these through raw pointers: a caller bug must not become a bad read.
    if (not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim
            or (arr.size and arr.strides[ndim - 1] != arr.itemsize)
            or any(s % arr.itemsize for s in arr.strides)):
        raise ValueError(f"run_batch: {name} must be a {ndim}-d {np.dtype(dtype)} array with a contiguous "
                         f"last axis")


cdef _run(object acts_obj, const int[::1] labels, const Py_ssize_t[::1] offsets,
          const int[::1] label_lengths, const int[::1] input_lengths, int blank, bint from_logits,
          object grad_obj, const double[::1] grad_scale, object alpha_obj, object costs_obj,
          int num_threads):
    # Checks the arrays' forms (a caller bug must not become a bad read), then describes
    # them to engine_run.
    cdef bint is_f64 = acts_obj.dtype == np.float64
    cdef Py_ssize_t item = 8 if is_f64 else 4
    cdef EngineCall call
    cdef int status
    _require(acts_obj, "acts", acts_obj.dtype if acts_obj.dtype in (np.float32, np.float64) else np.float32, 3)
    _require(costs_obj, "out_costs", acts_obj.dtype, 1)
    cdef Py_ssize_t N = acts_obj.shape[1]
    if costs_obj.shape[0] != N:
        raise ValueError("run_batch: out_costs must have one entry per sequence")
    if (label_lengths.shape[0] != N or input_lengths.shape[0] != N or offsets.shape[0] != N
            or grad_scale.shape[0] != N):
        raise ValueError("run_batch: offsets, lengths and grad_scale must have one entry per sequence")
    if grad_obj is not None:
        _require(grad_obj, "grad", acts_obj.dtype, 3)
        if grad_obj.shape != acts_obj.shape:
            raise ValueError("run_batch: grad must have acts' shape")
    if alpha_obj is not None:
        _require(alpha_obj, "log_alpha", acts_obj.dtype, 3)
    if N == 0:
        return
    call.is_f64 = is_f64
    call.T = acts_obj.shape[0]
    call.N = N
    call.C = acts_obj.shape[2]
    call.acts = <const char *>_data(acts_obj) if call.T > 0 and call.C > 0 else NULL
    call.t_stride = _elem_stride(acts_obj.strides[0], item)
    call.n_stride = _elem_stride(acts_obj.strides[1], item)
    call.labels = &labels[0] if labels.shape[0] > 0 else NULL
    call.offsets = &offsets[0]
    call.label_lengths = &label_lengths[0]
    call.input_lengths = &input_lengths[0]
    call.blank = blank
    call.from_logits = from_logits
    call.grad = NULL
    call.gt_stride = call.gn_stride = 0
    if grad_obj is not None:
        call.grad = <char *>_data(grad_obj)
        call.gt_stride = _elem_stride(grad_obj.strides[0], item)
        call.gn_stride = _elem_stride(grad_obj.strides[1], item)
    call.grad_scale = &grad_scale[0]
    call.log_alpha = NULL
    call.an_stride = call.at_stride = 0
    call.alpha_rows = call.alpha_cols = 0
    if alpha_obj is not None:
        call.log_alpha = <char *>_data(alpha_obj)
        call.an_stride = _elem_stride(alpha_obj.strides[0], item)
        call.at_stride = _elem_stride(alpha_obj.strides[1], item)
        call.alpha_rows = <int>alpha_obj.shape[1]
        call.alpha_cols = <int>alpha_obj.shape[2]
    call.costs = <char *>_data(costs_obj)
    call.num_threads = num_threads
    call.split_min_cells = SPLIT_MIN_CELLS
    with nogil:
        status = engine_run(&call)
    if status != 0:
        raise MemoryError("run_batch: the engine's scratch for this batch could not be allocated "
                          "(its size overflows or memory is exhausted)")


cdef int engine_run(const EngineCall *c) noexcept nogil:
    """Runs a described batch through the batch driver; 0 on success, -1 when the
    workspace cannot be allocated (its size overflows or memory is exhausted)."""
    cdef fctc_batch_job job
    if c.N == 0:
        return 0
    memset(&job, 0, sizeof(job))
    job.minibatch = <int>c.N
    job.max_time = <int>c.T
    job.alphabet_size = <int>c.C
    job.blank = c.blank
    job.from_logits = c.from_logits
    job.acts = c.acts
    job.act_batch_stride = c.n_stride
    job.act_time_stride = c.t_stride
    job.labels = c.labels
    job.label_offsets = c.offsets
    job.label_lengths = c.label_lengths
    job.input_lengths = c.input_lengths
    job.costs = c.costs
    job.grad = c.grad
    job.grad_batch_stride = c.gn_stride
    job.grad_time_stride = c.gt_stride
    job.grad_scale = c.grad_scale
    job.log_alpha = c.log_alpha
    job.alpha_batch_stride = c.an_stride
    job.alpha_time_stride = c.at_stride
    job.alpha_rows = c.alpha_rows
    job.alpha_cols = c.alpha_cols
    # The team is capped at the usable processors, at what the OS can create, 1 in a forked
    # child (threads.h); with fewer sequences than threads, a trellis of at least
    # split_min_cells cells is split over two threads (bit-identical to one thread).
    job.num_threads = max(1, c.num_threads)
    job.split_min_cells = c.split_min_cells
    return 0 if run_job(&job, 8 if c.is_f64 else 4) == 0 else -1


_warn_unknown_simd_env()   # (here: it reports the level chosen, defined above)
