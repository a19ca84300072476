# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastctc._fast: the common-case argument check of torch.nn.functional.ctc_loss-style calls,
compiled, so that a small call does not pay tens of microseconds of NumPy bookkeeping.

    prepare(acts, targets, input_lengths, target_lengths, blank) -> (Batch, blank) or None

accepts only the forms training loops pass (NumPy arrays: float32/float64 activations of
rank 2 or 3 that the engine can read in place, int32/int64 targets of rank 1 or 2,
int32/int64 lengths holding one value per sequence, a Python int blank) and checks every
value with plain C loops: the same conditions as _validate.check_ctc_inputs.  It never
raises for bad input: anything it does not accept, and any value out of range, returns
None, and the caller then runs check_ctc_inputs, which handles the unusual form or raises
the documented error with its full message.  So error messages have exactly one source,
and this module only decides that an input is fine.

No kernel lives here (the engine, with its SIMD level and thread budget, stays in _core).
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

from ._validate import Batch

cnp.import_array()

cdef Py_ssize_t INT32_MAX = 2147483647
cdef Py_ssize_t CONCAT_MAX = 2147483647 // 2 - 8   # check_ctc_inputs' bound on concatenated lengths


cdef inline bint _float_ok(cnp.ndarray a):
    # float32/float64, native order, aligned, class axis contiguous, strides in whole elements
    cdef int t = cnp.PyArray_TYPE(a)
    cdef Py_ssize_t item, k
    if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
        return False
    if not cnp.PyArray_ISNOTSWAPPED(a) or not cnp.PyArray_ISALIGNED(a):
        return False
    item = cnp.PyArray_ITEMSIZE(a)
    if cnp.PyArray_STRIDE(a, cnp.PyArray_NDIM(a) - 1) != item:
        return False
    for k in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_STRIDE(a, k) % item:
            return False
    return True


cdef inline int _int_kind(object x):
    # 4 or 8 for a native, aligned int32/int64 ndarray, else 0
    cdef cnp.ndarray a
    cdef int t
    if type(x) is not np.ndarray:
        return 0
    a = <cnp.ndarray>x
    t = cnp.PyArray_TYPE(a)
    if not cnp.PyArray_ISNOTSWAPPED(a) or not cnp.PyArray_ISALIGNED(a):
        return 0
    if t == cnp.NPY_INT32:
        return 4
    if t == cnp.NPY_INT64:
        return 8
    return 0


cdef inline int64_t _at(const char *base, Py_ssize_t byte_off, int kind) noexcept nogil:
    if kind == 8:
        return (<const int64_t *>(base + byte_off))[0]
    return (<const int32_t *>(base + byte_off))[0]


cdef bint _lengths(object x, Py_ssize_t n, Py_ssize_t low, Py_ssize_t high, int32_t[::1] out):
    # one value per sequence, read by element count (any rank, as PyTorch reads lengths),
    # each in [low, high]; False when the form or a value is not plain
    cdef int kind = _int_kind(x)
    cdef cnp.ndarray a
    cdef Py_ssize_t i, stride
    cdef int64_t v
    cdef const char *base
    if kind == 0:
        return False
    a = <cnp.ndarray>x
    if cnp.PyArray_SIZE(a) != n:
        return False
    if cnp.PyArray_NDIM(a) > 1:
        if not cnp.PyArray_IS_C_CONTIGUOUS(a):
            return False
        stride = kind
    elif cnp.PyArray_NDIM(a) == 1:
        stride = cnp.PyArray_STRIDE(a, 0)
    else:
        stride = 0
    base = <const char *>cnp.PyArray_DATA(a)
    for i in range(n):
        v = _at(base, i * stride, kind)
        if v < low or v > high:
            return False
        out[i] = <int32_t>v
    return True


def prepare(acts, targets, input_lengths, target_lengths, blank):
    """(Batch, blank) for a plain, valid call, as check_ctc_inputs returns them; or None
    (then run check_ctc_inputs, which handles the form or raises the documented error)."""
    cdef cnp.ndarray a, tg
    cdef Py_ssize_t T, N, C, S = 0, n, s, k, total, pos
    cdef int tkind, nd
    cdef bint unbatched
    cdef const char *tbase
    cdef Py_ssize_t tst0 = 0, tst1 = 0
    cdef int64_t v
    cdef int32_t[::1] il_v, tl_v, lab_v
    cdef Py_ssize_t[::1] off_v
    if type(acts) is not np.ndarray or type(blank) is not int:
        return None
    a = <cnp.ndarray>acts
    nd = cnp.PyArray_NDIM(a)
    if (nd != 2 and nd != 3) or cnp.PyArray_SIZE(a) == 0 or not _float_ok(a):
        return None
    unbatched = nd == 2
    T = cnp.PyArray_DIM(a, 0)
    N = 1 if unbatched else cnp.PyArray_DIM(a, 1)
    C = cnp.PyArray_DIM(a, nd - 1)
    if T > INT32_MAX or N > INT32_MAX or C > INT32_MAX:
        return None
    if blank < 0 or blank >= C:
        return None
    tkind = _int_kind(targets)
    if tkind == 0:
        return None
    tg = <cnp.ndarray>targets
    if cnp.PyArray_NDIM(tg) == 2:
        if cnp.PyArray_DIM(tg, 0) != N:
            return None
        S = cnp.PyArray_DIM(tg, 1)
        tst0 = cnp.PyArray_STRIDE(tg, 0)
        tst1 = cnp.PyArray_STRIDE(tg, 1)
    elif cnp.PyArray_NDIM(tg) == 1:
        S = CONCAT_MAX
        tst1 = cnp.PyArray_STRIDE(tg, 0)
    else:
        return None
    il = np.empty(N, dtype=np.int32)
    tl = np.empty(N, dtype=np.int32)
    il_v = il
    tl_v = tl
    if not _lengths(input_lengths, N, 0, T, il_v) or not _lengths(target_lengths, N, 0, S, tl_v):
        return None
    total = 0
    for n in range(N):
        total += tl_v[n]
    if cnp.PyArray_NDIM(tg) == 1 and total != cnp.PyArray_DIM(tg, 0):
        return None
    labels = np.empty(total, dtype=np.int32)
    offsets = np.empty(N, dtype=np.intp)
    lab_v = labels
    off_v = offsets
    tbase = <const char *>cnp.PyArray_DATA(tg)
    pos = 0
    for n in range(N):
        off_v[n] = pos
        for s in range(tl_v[n]):
            if cnp.PyArray_NDIM(tg) == 2:
                v = _at(tbase, n * tst0 + s * tst1, tkind)
            else:
                v = _at(tbase, pos * tst1, tkind)
            if v < 0 or v >= C:
                return None
            lab_v[pos] = <int32_t>v
            pos += 1
    view = a[:, None, :] if unbatched else a
    return Batch(acts=view, labels=labels, offsets=offsets, label_lengths=tl, input_lengths=il,
                 unbatched=unbatched, original_shape=acts.shape), blank


def grad_weights(label_lengths, str reduction):
    """Per-sequence weight of each loss in the reduced loss (float64 (N,)): 1 for 'none'
    and 'sum', 1 / (max(target_length, 1) * N) for 'mean', as _engine._reduce computes it."""
    cdef const int32_t[::1] tl = label_lengths
    cdef Py_ssize_t n, N = tl.shape[0]
    w = np.empty(N, dtype=np.float64)
    cdef double[::1] wv = w
    cdef double d
    for n in range(N):
        if reduction == "mean":
            d = tl[n] if tl[n] > 1 else 1.0
            wv[n] = 1.0 / (d * N)
        else:
            wv[n] = 1.0
    return w


def reduce(costs, label_lengths, str reduction, bint zero_infinity):
    """_engine._reduce's loss, without its NumPy calls on small batches: costs (N,)
    float32/float64 (modified in place when zero_infinity), label_lengths int32 (N,).
    Returns costs for 'none', else a 0-d array of costs' dtype.  The sums run in float64
    in index order, which is NumPy's order below 8 elements; larger batches use NumPy."""
    cdef cnp.ndarray c = <cnp.ndarray>costs
    cdef Py_ssize_t n, N = cnp.PyArray_SIZE(c)
    cdef bint f32 = cnp.PyArray_TYPE(c) == cnp.NPY_FLOAT32
    cdef float *cf = <float *>cnp.PyArray_DATA(c)
    cdef double *cd = <double *>cnp.PyArray_DATA(c)
    cdef double x, acc = 0.0
    cdef double inf = float("inf")
    if zero_infinity:
        for n in range(N):
            if f32 and cf[n] == inf:
                cf[n] = 0
            elif not f32 and cd[n] == inf:
                cd[n] = 0
    if reduction == "none":
        return costs
    if N >= 8 or N == 0:
        if reduction == "sum":
            return np.asarray(costs.sum(dtype=np.float64), dtype=costs.dtype)
        if N == 0:
            return np.asarray(np.nan, dtype=costs.dtype)
        w = grad_weights(label_lengths, "mean")
        return np.asarray((costs.astype(np.float64) * w).sum(), dtype=costs.dtype)
    cdef const int32_t[::1] tl = label_lengths
    cdef double d
    for n in range(N):
        x = cf[n] if f32 else cd[n]
        if reduction == "mean":
            d = tl[n] if tl[n] > 1 else 1.0
            x = x * (1.0 / (d * N))
        acc += x
    return np.asarray(acc, dtype=costs.dtype)
