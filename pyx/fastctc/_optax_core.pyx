# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastctc._optax_core: compiled bridge for optax's CTC semantics on fastctc's engine.

Two doors into the same C driver (include/fastctc/detail/optax_batch.h, which runs the SIMD
engine of fastctc_sequence_* and falls back to optax's literal recurrence, detail/optax.h,
only where the engine cannot give optax's numbers):

* ``run``: NumPy arrays validated by fastctc._optax, read in place through their strides
  (any strides, negative ones included, as long as the class axis is contiguous).
* ``xla_handler``: a PyCapsule holding the XLA FFI handler (pyx/fastctc/_xla_ffi.h) that
  fastctc.jax registers once with jax.ffi; JAX calls it from compiled code with no Python
  on the path.

Nothing here checks values: the driver never reads outside its arrays whatever they hold.
"""
import numpy as np
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_New

cnp.import_array()

cdef extern from *:
    """
    #include "fastctc/fastctc.h"
    #define FCTC_USE_F32
    #include "fastctc/detail/template.h"
    #define FCTC_OX_LOG1P log1pf
    #include "fastctc/detail/optax.h"
    #include "fastctc/detail/optax_batch.h"
    #undef FCTC_OX_LOG1P
    #define FCTC_USE_F64
    #include "fastctc/detail/template.h"
    #define FCTC_OX_LOG1P log1p
    #include "fastctc/detail/optax.h"
    #include "fastctc/detail/optax_batch.h"
    #undef FCTC_OX_LOG1P
    #include "_xla_ffi.h"
    static void *fctc_xla_handler_address(void) { return (void *)&fctc_xla_optax_ctc; }
    """
    ctypedef struct fctc_optax_batch_args:
        int B, T, K, N, blank
        const void *x
        Py_ssize_t x_bs, x_ts
        const void *pad
        Py_ssize_t pad_bs, pad_ts
        const int *labels
        Py_ssize_t lab_bs
        const void *lpad
        Py_ssize_t lpad_bs, lpad_ns
        const void *eps
        Py_ssize_t eps_group
        void *loss
        void *grad
        Py_ssize_t g_bs, g_ts
        void *phi
        Py_ssize_t phi_bs, phi_ts
        void *emit
        Py_ssize_t emit_bs, emit_ts
        int exact
        int num_threads
    int fctc_optax_batch_f32(const fctc_optax_batch_args *a) nogil
    int fctc_optax_batch_f64(const fctc_optax_batch_args *a) nogil
    void *fctc_xla_handler_address()
    int fastctc_simd_level()
    int fastctc_simd_set_level(int level)
    double FCTC_OPTAX_FAST_EPS


FAST_EPS = FCTC_OPTAX_FAST_EPS  # log_epsilon at or below this takes the engine


def xla_handler():
    """The XLA FFI handler of target "fastctc_optax_ctc" as a PyCapsule (see _xla_ffi.h)."""
    return PyCapsule_New(fctc_xla_handler_address(), NULL, NULL)


def simd_level():
    """This module's SIMD level (it has its own copy of the engine's dispatch)."""
    return fastctc_simd_level()


def set_simd_level(int level):
    """Force a level by number (fastctc._core.SIMD_LEVELS index); tests only."""
    if fastctc_simd_set_level(level) != 0:
        raise ValueError(f"SIMD level {level} is not supported here")


cdef inline Py_ssize_t _es(cnp.ndarray a, int axis):
    return a.strides[axis] // a.itemsize


def run(cnp.ndarray x, cnp.ndarray pad, cnp.ndarray labels, cnp.ndarray lpad, cnp.ndarray eps,
        int blank, cnp.ndarray loss, grad, phi, emit, bint exact, int num_threads):
    """x (B, T, K) (class axis contiguous), pad (B, T), lpad (B, N) and eps (1,) of x's
    dtype; labels (B, N) int32 C-contiguous; loss (B,) contiguous; grad (B, T, K) or None;
    phi (T, B, N+1) and emit (T, B, N) or None.  Every array native-endian and aligned."""
    cdef fctc_optax_batch_args a
    cdef cnp.ndarray g, p, e
    cdef int status
    cdef bint f64 = x.dtype == np.float64
    a.B = x.shape[0]
    a.T = x.shape[1]
    a.K = x.shape[2]
    a.N = labels.shape[1]
    a.blank = blank
    a.x = cnp.PyArray_DATA(x)
    a.x_bs = _es(x, 0)
    a.x_ts = _es(x, 1)
    a.pad = cnp.PyArray_DATA(pad)
    a.pad_bs = _es(pad, 0)
    a.pad_ts = _es(pad, 1)
    a.labels = <const int *>cnp.PyArray_DATA(labels)
    a.lab_bs = a.N
    a.lpad = cnp.PyArray_DATA(lpad)
    a.lpad_bs = _es(lpad, 0)
    a.lpad_ns = _es(lpad, 1)
    a.eps = cnp.PyArray_DATA(eps)
    a.eps_group = max(a.B, 1)
    a.loss = cnp.PyArray_DATA(loss)
    a.grad = NULL
    a.g_bs = a.g_ts = 0
    a.phi = a.emit = NULL
    a.phi_bs = a.phi_ts = a.emit_bs = a.emit_ts = 0
    if grad is not None:
        g = grad
        a.grad = cnp.PyArray_DATA(g)
        a.g_bs = _es(g, 0)
        a.g_ts = _es(g, 1)
    if phi is not None:
        p = phi
        e = emit
        a.phi = cnp.PyArray_DATA(p)
        a.phi_ts = _es(p, 0)
        a.phi_bs = _es(p, 1)
        a.emit = cnp.PyArray_DATA(e)
        a.emit_ts = _es(e, 0)
        a.emit_bs = _es(e, 1)
    a.exact = exact
    a.num_threads = num_threads
    with nogil:
        status = fctc_optax_batch_f64(&a) if f64 else fctc_optax_batch_f32(&a)
    if status == 3:
        raise MemoryError("fastctc: out of memory for the optax driver's scratch")
    if status != 0:
        raise ValueError(f"fastctc: sizes out of range for the optax driver (B={a.B}, T={a.T}, K={a.K}, N={a.N})")
