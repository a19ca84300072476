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
    ctypedef struct fastctc_align_job_f32:
        const float *acts
        Py_ssize_t act_stride
        const int *labels
        int label_length
        int input_length
        int alphabet_size
        int blank
        int from_logits
        int *path
        float *scores
        int out_rows

    ctypedef struct fastctc_align_job_f64:
        const double *acts
        Py_ssize_t act_stride
        const int *labels
        int label_length
        int input_length
        int alphabet_size
        int blank
        int from_logits
        int *path
        double *scores
        int out_rows

    size_t fastctc_align_scratch_bytes(int max_time, int max_label_length, size_t elem_size)
    float fastctc_align_sequence_f32(const fastctc_align_job_f32 *job, void *scratch)
    double fastctc_align_sequence_f64(const fastctc_align_job_f64 *job, void *scratch)


def scratch_bytes(int max_time, int max_label_length, size_t elem_size):
    """Per-thread scratch of one sequence's alignment; 0 when the size overflows."""
    return fastctc_align_scratch_bytes(max_time, max_label_length, elem_size)


cdef double _one_f32(const float *acts, Py_ssize_t act_stride, const int *labels, int label_length,
                     int input_length, int alphabet_size, int blank, int *path, float *scores,
                     int out_rows, void *scratch) noexcept nogil:
    # The job lives on this thread's stack: prange bodies must not share it.
    cdef fastctc_align_job_f32 job
    job.acts = acts
    job.act_stride = act_stride
    job.labels = labels
    job.label_length = label_length
    job.input_length = input_length
    job.alphabet_size = alphabet_size
    job.blank = blank
    job.from_logits = 0
    job.path = path
    job.scores = scores
    job.out_rows = out_rows
    return fastctc_align_sequence_f32(&job, scratch)


cdef double _one_f64(const double *acts, Py_ssize_t act_stride, const int *labels, int label_length,
                     int input_length, int alphabet_size, int blank, int *path, double *scores,
                     int out_rows, void *scratch) noexcept nogil:
    cdef fastctc_align_job_f64 job
    job.acts = acts
    job.act_stride = act_stride
    job.labels = labels
    job.label_length = label_length
    job.input_length = input_length
    job.alphabet_size = alphabet_size
    job.blank = blank
    job.from_logits = 0
    job.path = path
    job.scores = scores
    job.out_rows = out_rows
    return fastctc_align_sequence_f64(&job, scratch)


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
    cdef const float[:, :, :] a32
    cdef const double[:, :, :] a64
    cdef float[:, ::1] s32
    cdef double[:, ::1] s64
    cdef const float *p32 = NULL
    cdef const double *p64 = NULL
    cdef bint is_f32 = acts.dtype == np.float32
    cdef const int *lab0
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
    if is_f32:
        a32 = acts
        s32 = scores
        p32 = &a32[0, 0, 0] if C > 0 else NULL
        for n in prange(N, nogil=True, schedule="dynamic", chunksize=1, num_threads=n_threads):
            totals[n] = _one_f32(p32 + n * n_stride, t_stride,
                                 lab0 + label_offsets[n] if lab0 != NULL else NULL,
                                 label_lengths[n], input_lengths[n], <int>C, blank,
                                 &paths[n, 0], &s32[n, 0], <int>T, base + per_thread * threadid())
    else:
        a64 = acts
        s64 = scores
        p64 = &a64[0, 0, 0] if C > 0 else NULL
        for n in prange(N, nogil=True, schedule="dynamic", chunksize=1, num_threads=n_threads):
            totals[n] = _one_f64(p64 + n * n_stride, t_stride,
                                 lab0 + label_offsets[n] if lab0 != NULL else NULL,
                                 label_lengths[n], input_lengths[n], <int>C, blank,
                                 &paths[n, 0], &s64[n, 0], <int>T, base + per_thread * threadid())
