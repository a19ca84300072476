# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastctc._align_core: the compiled bridge for forced alignment (Viterbi best path).

``align_batch`` walks a batch the facade (_align.py) has already validated: acts as a
(N, T, C) view whose class axis is contiguous (time and batch strides are free, so any
layout is read in place), flat int32 labels with per-sequence offsets, int32 lengths.
It fills paths (N, T) int32 and scores (N, T) of acts' dtype, both C-contiguous.

The batch is one job of the C batch driver (include/fastctc/detail/driver.h, the one the
loss and the C API run too): this module fills it and runs it without the GIL (team,
workspace, per-thread scratch, OpenMP loop: the driver's).  Values are not checked here: labels in range and not blank, and
input_length >= label_length + repeats, are the facade's job.
"""
import numpy as np
cimport numpy as cnp
from libc.string cimport memset

from fastctc._driver cimport fctc_batch_job, run_job

cnp.import_array()

cdef extern from "fastctc/fastctc.h" nogil:
    size_t fastctc_align_scratch_bytes(int max_time, int max_label_length, size_t elem_size)


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
    cdef Py_ssize_t itemsize = acts.itemsize
    cdef fctc_batch_job job
    cdef int status
    if acts.dtype not in (np.float32, np.float64) or scores.dtype != acts.dtype or (acts.size and acts.strides[2] != itemsize):
        raise ValueError("align_batch: acts must be float32/float64 with a contiguous class axis, scores the same dtype")
    if scores.shape != (N, T) or not scores.flags.c_contiguous or paths.shape[0] != N or paths.shape[1] != T:
        raise ValueError("align_batch: paths and scores must be C-contiguous (N, T)")
    if N == 0 or T == 0:
        return
    costs = np.empty(N, dtype=acts.dtype)  # the driver writes acts' dtype; totals are float64
    memset(&job, 0, sizeof(job))
    job.align = 1
    job.minibatch = <int>N
    job.max_time = <int>T
    job.alphabet_size = <int>C
    job.blank = blank
    job.acts = cnp.PyArray_DATA(<cnp.ndarray>acts) if C > 0 else NULL
    job.act_batch_stride = acts.strides[0] // itemsize
    job.act_time_stride = acts.strides[1] // itemsize
    job.labels = &labels[0] if labels.shape[0] > 0 else NULL
    job.label_offsets = &label_offsets[0]
    job.label_lengths = &label_lengths[0]
    job.input_lengths = &input_lengths[0]
    job.costs = cnp.PyArray_DATA(<cnp.ndarray>costs)
    job.paths = &paths[0, 0]
    job.scores = cnp.PyArray_DATA(<cnp.ndarray>scores)
    job.path_batch_stride = T
    job.num_threads = max(1, num_threads)
    job.split_min_cells = -1
    with nogil:
        status = run_job(&job, itemsize)
    if status != 0:
        raise MemoryError("align_batch: the workspace for this batch could not be allocated (its size overflows "
                          "or memory is exhausted)")
    np.asarray(totals)[:] = costs
