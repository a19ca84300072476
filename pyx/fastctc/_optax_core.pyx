# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastctc._optax_core: compiled bridge to include/fastctc/optax.inl, the optax-semantics
CTC trellis (forward variables, loss and d loss / d logits), one sequence per OpenMP
iteration without the GIL.  Arrays arrive validated and laid out by fastctc._optax;
nothing here checks values (the kernel itself never indexes outside its arrays: labels
outside [0, K) are read as log-probability 0, as optax's one-hot does)."""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport prange
from cython cimport floating

cnp.import_array()

cdef extern from *:
    """
    #include <math.h>
    #define FCTC_USE_F32
    #include "fastctc/template.h"
    #define FCTC_OX_LOG1P log1pf
    #include "fastctc/optax.inl"
    #undef FCTC_OX_LOG1P
    #define FCTC_USE_F64
    #include "fastctc/template.h"
    #define FCTC_OX_LOG1P log1p
    #include "fastctc/optax.inl"
    #undef FCTC_OX_LOG1P
    """
    Py_ssize_t fctc_optax_work_size_f64(Py_ssize_t T, Py_ssize_t N) nogil
    int fctc_optax_sequence_f32(const float *x, Py_ssize_t x_ts, int T, int K, const float *pad, Py_ssize_t pad_s,
                                const int *labels, int N, int label_len, int blank, float eps,
                                float *phi, Py_ssize_t phi_ts, float *emit, Py_ssize_t emit_ts,
                                float *grad, Py_ssize_t grad_ts, float *work, float *loss) nogil
    int fctc_optax_sequence_f64(const double *x, Py_ssize_t x_ts, int T, int K, const double *pad, Py_ssize_t pad_s,
                                const int *labels, int N, int label_len, int blank, double eps,
                                double *phi, Py_ssize_t phi_ts, double *emit, Py_ssize_t emit_ts,
                                double *grad, Py_ssize_t grad_ts, double *work, double *loss) nogil


def work_size(Py_ssize_t T, Py_ssize_t N):
    """Scratch elements one sequence needs."""
    return fctc_optax_work_size_f64(T, N)


def run(const floating[:, :, ::1] x, const floating[:, :] pad, const int[:, ::1] labels, const int[::1] label_len,
        int blank, double eps, floating[:, :, ::1] phi, floating[:, :, ::1] emit, grad,
        floating[::1] loss, floating[:, ::1] work, int num_threads):
    """x (B, T, K) logits; pad (B, T); labels (B, N) int32; label_len (B,); outputs
    phi (T, B, N+1), emit (T, B, N), loss (B,), grad (B, T, K) of x's dtype or None;
    work (B, work_size(T, N))."""
    cdef Py_ssize_t B = x.shape[0], T = x.shape[1], K = x.shape[2], N = labels.shape[1]
    cdef Py_ssize_t b
    cdef floating[:, :, ::1] g
    cdef bint want_grad = grad is not None
    cdef floating *gp
    cdef floating dummy_emit = 0
    cdef Py_ssize_t pad_s = pad.strides[1] // sizeof(floating)
    cdef Py_ssize_t pad_b = pad.strides[0] // sizeof(floating)
    cdef Py_ssize_t phi_ts = phi.strides[0] // sizeof(floating)
    cdef Py_ssize_t emit_ts = emit.strides[0] // sizeof(floating)
    cdef Py_ssize_t x_b = x.strides[0] // sizeof(floating)
    cdef Py_ssize_t x_ts = x.strides[1] // sizeof(floating)
    cdef const floating *xp = &x[0, 0, 0]
    cdef const floating *padp = &pad[0, 0]
    cdef floating *phip = &phi[0, 0, 0]
    cdef floating *emitp = &dummy_emit
    if B == 0 or T == 0:
        return
    if N > 0:
        emitp = &emit[0, 0, 0]
    if want_grad:
        g = grad
        gp = &g[0, 0, 0]
    else:
        gp = NULL
    for b in prange(B, nogil=True, schedule="dynamic", num_threads=num_threads):
        if floating is float:
            fctc_optax_sequence_f32(xp + b * x_b, x_ts, T, K, padp + b * pad_b, pad_s, &labels[b, 0], N,
                                    label_len[b], blank, <float>eps, phip + b * (N + 1), phi_ts,
                                    emitp + b * N, emit_ts, (gp + b * T * K) if want_grad else NULL, K,
                                    &work[b, 0], &loss[b])
        else:
            fctc_optax_sequence_f64(xp + b * x_b, x_ts, T, K, padp + b * pad_b, pad_s, &labels[b, 0], N,
                                    label_len[b], blank, eps, phip + b * (N + 1), phi_ts,
                                    emitp + b * N, emit_ts, (gp + b * T * K) if want_grad else NULL, K,
                                    &work[b, 0], &loss[b])
