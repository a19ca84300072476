# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastctc._align_core: the compiled bridge for forced alignment (Viterbi best path).

``align_batch`` walks a batch the facade (_align.py) has already validated: acts as a
(N, T, C) view whose class axis is contiguous (time and batch strides are free, so any
layout is read in place), flat int32 labels with per-sequence offsets, int32 lengths.
It fills paths (N, T) int32 and scores (N, T) of acts' dtype, both C-contiguous.

The loop over sequences is an OpenMP ``prange`` (dynamic schedule: lengths differ)
without the GIL; each thread owns a slice of one scratch buffer allocated before the
loop (fastctc_align_scratch_bytes for the longest sequence), so nothing is allocated
inside it.  Values are not checked here: labels in range and not blank, and
input_length >= label_length + repeats, are the facade's job.
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange, threadid
from libc.stdint cimport uintptr_t

cnp.import_array()

cdef extern from "fastctc/fastctc.h" nogil:
    size_t fastctc_align_scratch_bytes(int max_time, int max_label_length, size_t elem_size)

cdef extern from *:
    """
    /* One sequence's alignment, either dtype: the job on the calling thread's stack (prange
     * bodies must not share it); acts and scores point at float or double (is_f64). */
    #define FCTC_ALIGN_ONE(T_, SFX)                                                              \
        do {                                                                                     \
            fastctc_align_job_##SFX job = {.acts = (const T_ *)acts, .act_stride = act_stride,   \
                                           .labels = labels, .label_length = label_length,      \
                                           .input_length = input_length,                        \
                                           .alphabet_size = alphabet_size, .blank = blank,      \
                                           .from_logits = 0, .path = path,                      \
                                           .scores = (T_ *)scores, .out_rows = out_rows};       \
            return (double)fastctc_align_sequence_##SFX(&job, scratch);                          \
        } while (0)
    static double fctc_align_one(int is_f64, const void *acts, Py_ssize_t act_stride, const int *labels,
                                 int label_length, int input_length, int alphabet_size, int blank,
                                 int *path, void *scores, int out_rows, void *scratch) {
        if (is_f64) FCTC_ALIGN_ONE(double, f64);
        FCTC_ALIGN_ONE(float, f32);
    }
    """
    double fctc_align_one(int is_f64, const void *acts, Py_ssize_t act_stride, const int *labels,
                          int label_length, int input_length, int alphabet_size, int blank,
                          int *path, void *scores, int out_rows, void *scratch) nogil


def scratch_bytes(int max_time, int max_label_length, size_t elem_size):
    """Per-thread scratch of one sequence's alignment; 0 when the size overflows."""
    return fastctc_align_scratch_bytes(max_time, max_label_length, elem_size)


def align_batch(acts, const int[::1] labels, const Py_ssize_t[::1] label_offsets,
                const int[::1] label_lengths, const int[::1] input_lengths, int blank,
                int[:, ::1] paths, scores, double[::1] totals, int num_threads):
    """Fill paths (N, T), scores (N, T) and totals (N,): each sequence's best path,
    per-frame log-probabilities and their sum (-inf when the labels do not fit).

    acts (N, T, C) float32/float64 with acts.strides[2] == itemsize; scores (N, T) of
    the same dtype, C-contiguous.
    """
    cdef Py_ssize_t N = acts.shape[0], T = acts.shape[1], C = acts.shape[2]
    cdef Py_ssize_t n, itemsize = acts.itemsize
    cdef Py_ssize_t n_stride = acts.strides[0] // itemsize, t_stride = acts.strides[1] // itemsize
    cdef int max_t = 0, max_l = 0, n_threads
    cdef size_t per_thread
    cdef unsigned char *base
    cdef bint is_f64 = acts.dtype == np.float64
    cdef const char *acts_ptr
    cdef char *scores_ptr
    cdef const int *lab0
    if acts.dtype not in (np.float32, np.float64) or scores.dtype != acts.dtype or (acts.size and acts.strides[2] != itemsize):
        raise ValueError("align_batch: acts must be float32/float64 with a contiguous class axis, scores the same dtype")
    if scores.shape != (N, T) or not scores.flags.c_contiguous or paths.shape[0] != N or paths.shape[1] != T:
        raise ValueError("align_batch: paths and scores must be C-contiguous (N, T)")
    if N == 0 or T == 0:
        return
    for n in range(N):
        max_t = max(max_t, input_lengths[n])
        max_l = max(max_l, label_lengths[n])
    per_thread = fastctc_align_scratch_bytes(max_t, max_l, itemsize)
    if per_thread == 0:
        raise MemoryError(f"alignment scratch for T={max_t}, L={max_l} overflows the address space")
    n_threads = <int>max(1, min(num_threads, N))
    scratch = np.empty(per_thread * n_threads + 64, dtype=np.uint8)
    base = <unsigned char *>((<uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>scratch) + 63) & ~(<uintptr_t>63))
    lab0 = &labels[0] if labels.shape[0] > 0 else NULL
    acts_ptr = <const char *>cnp.PyArray_DATA(<cnp.ndarray>acts) if C > 0 else NULL
    scores_ptr = <char *>cnp.PyArray_DATA(<cnp.ndarray>scores)
    for n in prange(N, nogil=True, schedule="dynamic", chunksize=1, num_threads=n_threads):
        totals[n] = fctc_align_one(is_f64, acts_ptr + n * n_stride * itemsize if acts_ptr != NULL else NULL,
                                   t_stride, lab0 + label_offsets[n] if lab0 != NULL else NULL,
                                   label_lengths[n], input_lengths[n], <int>C, blank,
                                   &paths[n, 0], scores_ptr + n * T * itemsize, <int>T,
                                   base + per_thread * threadid())
