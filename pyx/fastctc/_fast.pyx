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
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy, memset

from fastctc._core cimport EngineCall, budget_release, budget_threads, engine_run

from . import _core as _core_module
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


cdef bint _lengths(object x, Py_ssize_t n, Py_ssize_t low, Py_ssize_t high, int32_t *out):
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


cdef struct Plain:
    # A plain, valid call's batch, as check_ctc_inputs would describe it.  The four arrays
    # live in one block (`block`, PyMem_Malloc'd; the caller frees it).
    Py_ssize_t T, N, C, total
    bint unbatched
    int32_t *input_lengths
    int32_t *label_lengths
    int32_t *labels
    Py_ssize_t *offsets
    void *block


cdef bint _plain(object acts, object targets, object input_lengths, object target_lengths, object blank,
                 Plain *out) except -1:
    # True (out filled, out.block to free) when the call is plain and valid; False otherwise
    # (nothing to free).  Raises only MemoryError.
    cdef cnp.ndarray a, tg
    cdef Py_ssize_t T, N, C, S = 0, n, s, total, pos
    cdef int tkind, nd, tnd
    cdef const char *tbase
    cdef Py_ssize_t tst0 = 0, tst1 = 0
    cdef int64_t v
    cdef char *mem
    if type(acts) is not np.ndarray or type(blank) is not int:
        return False
    a = <cnp.ndarray>acts
    nd = cnp.PyArray_NDIM(a)
    if (nd != 2 and nd != 3) or cnp.PyArray_SIZE(a) == 0 or not _float_ok(a):
        return False
    T = cnp.PyArray_DIM(a, 0)
    N = 1 if nd == 2 else cnp.PyArray_DIM(a, 1)
    C = cnp.PyArray_DIM(a, nd - 1)
    if T > INT32_MAX or N > INT32_MAX or C > INT32_MAX:
        return False
    if blank < 0 or blank >= C:
        return False
    tkind = _int_kind(targets)
    if tkind == 0:
        return False
    tg = <cnp.ndarray>targets
    tnd = cnp.PyArray_NDIM(tg)
    if tnd == 2:
        if cnp.PyArray_DIM(tg, 0) != N:
            return False
        S = cnp.PyArray_DIM(tg, 1)
        tst0 = cnp.PyArray_STRIDE(tg, 0)
        tst1 = cnp.PyArray_STRIDE(tg, 1)
    elif tnd == 1:
        S = CONCAT_MAX
        tst1 = cnp.PyArray_STRIDE(tg, 0)
    else:
        return False
    # lengths first (2N int32), then offsets; labels are sized once the lengths are known
    mem = <char *>PyMem_Malloc(N * (2 * sizeof(int32_t) + sizeof(Py_ssize_t)) + 16)
    if mem == NULL:
        raise MemoryError()
    out.offsets = <Py_ssize_t *>mem
    out.input_lengths = <int32_t *>(mem + N * sizeof(Py_ssize_t))
    out.label_lengths = out.input_lengths + N
    if (not _lengths(input_lengths, N, 0, T, out.input_lengths)
            or not _lengths(target_lengths, N, 0, S, out.label_lengths)):
        PyMem_Free(mem)
        return False
    total = 0
    for n in range(N):
        total += out.label_lengths[n]
    if tnd == 1 and total != cnp.PyArray_DIM(tg, 0):
        PyMem_Free(mem)
        return False
    out.labels = <int32_t *>PyMem_Malloc(total * sizeof(int32_t) + 4)
    if out.labels == NULL:
        PyMem_Free(mem)
        raise MemoryError()
    tbase = <const char *>cnp.PyArray_DATA(tg)
    pos = 0
    for n in range(N):
        out.offsets[n] = pos
        for s in range(out.label_lengths[n]):
            if tnd == 2:
                v = _at(tbase, n * tst0 + s * tst1, tkind)
            else:
                v = _at(tbase, pos * tst1, tkind)
            if v < 0 or v >= C:
                PyMem_Free(out.labels)
                PyMem_Free(mem)
                return False
            out.labels[pos] = <int32_t>v
            pos += 1
    out.T = T
    out.N = N
    out.C = C
    out.total = total
    out.unbatched = nd == 2
    out.block = mem
    return True


cdef void _plain_free(Plain *p) noexcept:
    PyMem_Free(p.labels)
    PyMem_Free(p.block)


cdef object _copy_i32(const int32_t *src, Py_ssize_t n):
    arr = np.empty(n, dtype=np.int32)
    if n:
        memcpy(cnp.PyArray_DATA(<cnp.ndarray>arr), src, n * sizeof(int32_t))
    return arr


def prepare(acts, targets, input_lengths, target_lengths, blank):
    """(Batch, blank) for a plain, valid call, as check_ctc_inputs returns them; or None
    (then run check_ctc_inputs, which handles the form or raises the documented error)."""
    cdef Plain p
    memset(&p, 0, sizeof(Plain))
    if not _plain(acts, targets, input_lengths, target_lengths, blank, &p):
        return None
    try:
        offsets = np.empty(p.N, dtype=np.intp)
        memcpy(cnp.PyArray_DATA(<cnp.ndarray>offsets), p.offsets, p.N * sizeof(Py_ssize_t))
        batch = Batch(acts=acts[:, None, :] if p.unbatched else acts, labels=_copy_i32(p.labels, p.total),
                      offsets=offsets, label_lengths=_copy_i32(p.label_lengths, p.N),
                      input_lengths=_copy_i32(p.input_lengths, p.N), unbatched=p.unbatched,
                      original_shape=acts.shape)
    finally:
        _plain_free(&p)
    return batch, blank


cdef inline double _mean_weight(int32_t target_length, Py_ssize_t N) noexcept nogil:
    # a loss's weight under 'mean': 1 / (max(target_length, 1) * N)
    cdef double d = target_length if target_length > 1 else 1.0
    return 1.0 / (d * N)


def grad_weights(label_lengths, str reduction):
    """Per-sequence weight of each loss in the reduced loss (float64 (N,)): 1 for 'none'
    and 'sum', 1 / (max(target_length, 1) * N) for 'mean', as fastctc._reduction.loss_weights computes it."""
    cdef const int32_t[::1] tl = label_lengths
    cdef Py_ssize_t n, N = tl.shape[0]
    w = np.empty(N, dtype=np.float64)
    cdef double[::1] wv = w
    for n in range(N):
        if reduction == "mean":
            wv[n] = _mean_weight(tl[n], N)
        else:
            wv[n] = 1.0
    return w


cdef object _reduce(cnp.ndarray c, const int32_t *tl, Py_ssize_t N, str reduction, bint zero_infinity):
    # reduce()'s body, reading the target lengths through a pointer
    cdef bint f32 = cnp.PyArray_TYPE(c) == cnp.NPY_FLOAT32
    cdef float *cf = <float *>cnp.PyArray_DATA(c)
    cdef double *cd = <double *>cnp.PyArray_DATA(c)
    cdef double x, acc = 0.0
    cdef double inf = float("inf")
    cdef Py_ssize_t n
    if zero_infinity:
        for n in range(N):
            if f32 and cf[n] == inf:
                cf[n] = 0
            elif not f32 and cd[n] == inf:
                cd[n] = 0
    if reduction == "none":
        return c
    if N >= 8 or N == 0:
        if reduction == "sum":
            return np.asarray(c.sum(dtype=np.float64), dtype=c.dtype)
        if N == 0:
            return np.asarray(np.nan, dtype=c.dtype)
        w = grad_weights(_copy_i32(tl, N), "mean")
        return np.asarray((c.astype(np.float64) * w).sum(), dtype=c.dtype)
    for n in range(N):
        x = cf[n] if f32 else cd[n]
        if reduction == "mean":
            x = x * _mean_weight(tl[n], N)
        acc += x
    return np.asarray(acc, dtype=c.dtype)


def reduce(costs, label_lengths, str reduction, bint zero_infinity):
    """fastctc._reduction.reduce_losses's loss, without its NumPy calls on small batches: costs (N,)
    float32/float64 (modified in place when zero_infinity), label_lengths int32 (N,).
    Returns costs for 'none', else a 0-d array of costs' dtype.  The sums run in float64
    in index order, which is NumPy's order below 8 elements; larger batches use NumPy."""
    cdef const int32_t[::1] tl = label_lengths
    cdef cnp.ndarray c = <cnp.ndarray>costs
    return _reduce(c, &tl[0] if tl.shape[0] else NULL, cnp.PyArray_SIZE(c), reduction, zero_infinity)


def ctc_call(acts, targets, input_lengths, target_lengths, blank, str reduction, bint zero_infinity,
             bint from_logits, bint want_grad, num_threads):
    """A whole plain loss call, compiled: (loss, grad) as fastctc.ctc_loss_and_grad returns
    them (grad None unless want_grad; loss reshaped to () for an unbatched 'none'), or None
    when the call is not plain (then the general path handles it or raises).

    The same steps as the general path (check, engine with its thread budget, reduction),
    with no Python in between: a tiny training step is dominated by fixed costs.
    reduction, zero_infinity, from_logits, num_threads: already checked by the caller."""
    cdef Plain p
    cdef EngineCall call
    cdef cnp.ndarray a, costs, grad_arr
    cdef int status, threads
    cdef Py_ssize_t n, item
    cdef double *weights
    memset(&p, 0, sizeof(Plain))
    if not _plain(acts, targets, input_lengths, target_lengths, blank, &p):
        return None
    a = <cnp.ndarray>acts
    try:
        item = cnp.PyArray_ITEMSIZE(a)
        costs = cnp.PyArray_EMPTY(1, <cnp.npy_intp *>&p.N, cnp.PyArray_TYPE(a), 0)
        grad = None
        weights = <double *>PyMem_Malloc(p.N * sizeof(double) + 8)
        if weights == NULL:
            raise MemoryError()
        try:
            for n in range(p.N):  # grad_weights(): 'mean' weighs the gradient rows
                weights[n] = _mean_weight(p.label_lengths[n], p.N) if reduction == "mean" else 1.0
            memset(&call, 0, sizeof(EngineCall))
            call.is_f64 = item == 8
            call.acts = <const char *>cnp.PyArray_DATA(a)
            call.T = p.T
            call.N = p.N
            call.C = p.C
            call.t_stride = cnp.PyArray_STRIDE(a, 0) // item
            call.n_stride = 0 if p.unbatched else cnp.PyArray_STRIDE(a, 1) // item
            call.labels = <const int *>p.labels
            call.offsets = p.offsets
            call.label_lengths = <const int *>p.label_lengths
            call.input_lengths = <const int *>p.input_lengths
            call.blank = blank
            call.from_logits = from_logits
            if want_grad:
                grad_arr = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), cnp.PyArray_TYPE(a), 0)
                grad = grad_arr
                call.grad = <char *>cnp.PyArray_DATA(grad_arr)
                call.gt_stride = p.N * p.C
                call.gn_stride = p.C
            call.grad_scale = weights
            call.costs = <char *>cnp.PyArray_DATA(costs)
            call.split_min_cells = _core_module.SPLIT_MIN_CELLS
            threads = budget_threads(num_threads)
            call.num_threads = threads
            with nogil:
                status = engine_run(&call)
            budget_release()
        finally:
            PyMem_Free(weights)
        if status != 0:
            raise MemoryError("the engine's scratch for this batch could not be allocated")
        loss = _reduce(costs, p.label_lengths, p.N, reduction, zero_infinity)
        if p.unbatched and reduction == "none":
            loss = loss.reshape(())
    finally:
        _plain_free(&p)
    return loss, grad
