"""fastctc._optax: optax's CTC on NumPy arrays, computed by fastctc's C kernel.

    ctc_loss_with_forward_probs(logits, logit_paddings, labels, label_paddings, *,
                                blank_id=0, log_epsilon=-1e5)
        -> (loss (B,), logalpha_blank (T, B, N+1), logalpha_nonblank (T, B, N))
    optax_ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0,
                   log_epsilon=-1e5) -> loss (B,)

Semantics are optax 0.2.8's (optax.ctc_loss_with_forward_probs / optax.ctc_loss):
logits (B, T, K) are unnormalised (the log_softmax is fused in); paddings are 1.0 where
padded; padded frames may sit anywhere (the forward state carries over them); labels are
right-padded; impossible states hold log_epsilon rather than -inf, so the loss of labels
that cannot fit is finite (about -log_epsilon).  Output shapes are what optax 0.2.8 returns:
its docstring says (T, B, N+1) for both forward-probability arrays, but the code returns
(T, B, N) for logalpha_nonblank, and so do we.  The last row of logalpha_blank includes the
final epsilon transition, as optax's does.

Computed by include/fastctc/detail/optax_batch.h through fastctc._optax_core: the SIMD engine
(fastctc_sequence_*) wherever optax's recurrence is ordinary CTC (log_epsilon <= -100,
0/1 paddings, labels that fit and lie in [0, K)), optax's literal recurrence
(include/fastctc/detail/optax.h) for every other sequence, or for all of them with exact=True.
On the engine's route, states of the forward probabilities that no alignment reaches hold
log_epsilon (optax: log_epsilon plus the log-probabilities of the frames so far); the
rest agrees with optax within rounding (docs/jax.md).  Arrays are read in place through
their strides (views such as x[:, :50] or x[:, ::-1]); only a class axis that is not
contiguous is copied.  loss_and_grad() also returns d loss / d logits.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _engine, _optax_core
from ._validate import (
    CTCTypeError,
    CTCValueError,
    check_at_least_one,
    check_batch_size,
    check_dtype,
    check_flag,
    check_index,
    check_integer_dtype,
    check_num_threads,
    check_range,
    check_rank,
    check_shape,
    first_offender,
    index_text,
)

__all__ = ["ctc_loss_with_forward_probs", "optax_ctc_loss", "loss_and_grad"]

_I32 = np.iinfo(np.int32)


def _prepare(logits, logit_paddings, labels, label_paddings, blank_id, log_epsilon, check_values=True):
    """Arrays laid out for the driver: (x, pad, labels int32, label_paddings, blank, eps); the
    label lengths (N - sum(label_paddings), as optax) are computed in C."""
    x = np.asarray(logits)
    check_dtype(x, "logits", ("float32", "float64"))
    B, T, K = check_rank(x.shape, "logits", 3, "(B, T, K)")
    check_at_least_one(T, "logits", "frame", "T")
    check_at_least_one(K, "logits", "class", "K")
    lab = np.asarray(labels)
    check_integer_dtype(lab, "labels")
    check_rank(lab.shape, "labels", 2, "(B, N)")
    check_batch_size(lab.shape, "labels", B, "(B, N)", "B", "(logits.shape[0])")
    N = lab.shape[1]
    lpad = np.asarray(label_paddings)
    check_shape(lpad.shape, "label_paddings", lab.shape, "labels' shape (B, N)")
    fpad = np.asarray(logit_paddings)
    check_shape(fpad.shape, "logit_paddings", (B, T), "(B, T)")
    for name, arr in (("logit_paddings", fpad), ("label_paddings", lpad)):
        if arr.dtype.kind not in "fiub":
            raise CTCTypeError(f"{name} must be a real array of 0.0/1.0, got dtype {arr.dtype}")
    blank = check_index(blank_id, "blank_id", K)
    if isinstance(log_epsilon, (bool, np.bool_)) or \
            not isinstance(log_epsilon, (numbers.Real, np.ndarray, np.generic)) \
            or np.ndim(log_epsilon) != 0:
        raise CTCTypeError(f"log_epsilon must be a real scalar, got {log_epsilon!r}")
    eps = float(log_epsilon)
    if check_values:
        for name, arr in (("logit_paddings", fpad), ("label_paddings", lpad)):
            idx = first_offender((arr != 0) & (arr != 1))
            if idx is not None:
                raise CTCValueError(f"{name}[{index_text(idx)}] = {arr[idx]} must be 0.0 or 1.0")
        if N > 1:
            idx = first_offender((lpad[:, 1:] == 0) & (lpad[:, :-1] == 1))
            if idx is not None:
                b, n = idx
                raise CTCValueError(f"labels must be right-padded: label_paddings[{b}, {n + 1}] = 0 follows a "
                                    f"padded position label_paddings[{b}, {n}] = 1")
        check_range(lab, "labels", 0, K, "K = number of classes", mask=lpad == 0, exclusive=True)
        if not np.isfinite(eps):
            raise CTCValueError(f"log_epsilon must be finite, got {eps}")
    dt = x.dtype.newbyteorder("=")
    # Read in place through any strides (negative ones too); only a class axis that is not
    # contiguous, a foreign byte order or a misaligned buffer costs a copy.
    if x.size and (x.strides[-1] != x.itemsize or not x.dtype.isnative or not x.flags.aligned
                   or any(s % x.itemsize for s in x.strides)):
        x = np.ascontiguousarray(x, dtype=dt)
    pad = _native(fpad, dt)
    lpad_f = _native(lpad, dt)
    # labels beyond int32 are clipped: any value outside [0, K) emits with log-probability 0
    lab32 = np.ascontiguousarray(np.clip(lab, _I32.min, _I32.max) if lab.dtype.itemsize > 4 or lab.dtype == np.uint32
                                 else lab, dtype=np.int32)
    return x, pad, lab32, lpad_f, blank, eps


def _native(arr, dt):
    """arr as dt, native-endian and aligned; strided views are kept (no copy) when they
    already are."""
    out = np.asarray(arr, dtype=dt)
    if out.size and (not out.flags.aligned or any(s % out.itemsize for s in out.strides)):
        out = np.ascontiguousarray(out)
    return out


def _run(x, pad, lab32, lpad, blank, eps, want_grad, want_alpha=True, num_threads=None, exact=False):
    B, T, K = x.shape
    N = lab32.shape[1]
    dt = x.dtype
    # every element of every output is written by the driver (padded rows included)
    loss = np.empty(B, dtype=dt)
    phi = np.empty((T, B, N + 1), dtype=dt) if want_alpha else None
    emit = np.empty((T, B, N), dtype=dt) if want_alpha else None
    grad = np.empty((B, T, K), dtype=dt) if want_grad else None
    if B == 0:
        return loss, phi, emit, grad
    eps_arr = np.full(1, eps, dtype=dt)
    with _engine.ThreadBudget(num_threads) as threads:
        _optax_core.run(x, pad, lab32, lpad, eps_arr, blank, loss, grad, phi, emit, bool(exact), threads)
    return loss, phi, emit, grad


def ctc_loss_with_forward_probs(logits, logit_paddings, labels, label_paddings, *, blank_id=0,
                                log_epsilon=-1e5, num_threads=None, exact=False):
    """optax.ctc_loss_with_forward_probs on NumPy arrays, computed by fastctc's engine.

    Parameters
    ----------
    logits : array_like, (B, T, K), float32 or float64
        Unnormalised scores (the log_softmax is fused in).  Read in place through any
        strides; only a class axis that is not contiguous is copied.
    logit_paddings : array_like, (B, T)
        1.0 where a frame is padding, 0.0 where it is real; padded frames may sit anywhere
        (the forward state carries over them).
    labels : array_like of int, (B, N)
        Right-padded label ids; unpadded ones must lie in [0, K).
    label_paddings : array_like, (B, N)
        1.0 where a label is padding, 0.0 where it is real.
    blank_id : int, default 0
        The blank class, in [0, K).
    log_epsilon : float, default -1e5
        Stands in for log(0): impossible states hold it rather than -inf, so the loss of
        labels that cannot fit is finite (about -log_epsilon).
    num_threads : int or None, default None
        Keyword-only.  Threads of this call (default: OMP_NUM_THREADS, else every core).
    exact : bool, default False
        Keyword-only.  Run optax's own recurrence operation for operation for every sequence
        (scalar code, several times slower) instead of the SIMD engine.

    Returns
    -------
    loss : numpy.ndarray, (B,)
        Per-sequence loss, in logits' dtype (so are the other two).
    logalpha_blank : numpy.ndarray, (T, B, N+1)
        Forward log-probabilities of the blank states; the last row includes the final
        epsilon transition, as optax's does.
    logalpha_nonblank : numpy.ndarray, (T, B, N)
        Forward log-probabilities of the label states ((T, B, N), as optax 0.2.8's code
        returns it, although its docstring says (T, B, N+1)).

    Raises
    ------
    CTCTypeError
        logits not float32/float64, labels not integers, paddings not real, blank_id not an
        integer, log_epsilon not a real scalar, exact not a bool.
    CTCValueError
        Ranks or shapes that do not fit, T or K zero, blank_id outside [0, K), paddings
        other than 0.0/1.0, labels not right-padded, an unpadded label outside [0, K), a
        log_epsilon that is not finite.  The message names the argument, the index and
        the value.

    Notes
    -----
    Semantics are optax 0.2.8's.  States that no alignment reaches hold log_epsilon
    (optax: log_epsilon plus the frames' log-probabilities so far); the rest agrees with
    optax within rounding (docs/jax.md).  Sequences whose recurrence is not ordinary CTC
    (log_epsilon above -100, paddings other than 0/1, labels that cannot fit) take optax's
    literal recurrence; see the module docstring.

    Examples
    --------
    Uniform scores over two classes, two frames, the label [1]: the loss is -log(3/4).

    >>> import numpy as np
    >>> import fastctc
    >>> loss, blank, nonblank = fastctc.ctc_loss_with_forward_probs(
    ...     np.zeros((1, 2, 2)), np.zeros((1, 2)), np.array([[1]]), np.zeros((1, 1)))
    >>> print(np.round(loss, 4), blank.shape, nonblank.shape)
    [0.2877] (2, 1, 2) (2, 1, 1)
    """
    num_threads = check_num_threads(num_threads)
    prepared = _prepare(logits, logit_paddings, labels, label_paddings, blank_id, log_epsilon)
    loss, phi, emit, _ = _run(*prepared, want_grad=False, num_threads=num_threads, exact=check_flag(exact, "exact"))
    return loss, phi, emit


def optax_ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0, log_epsilon=-1e5,
                   *, num_threads=None, exact=False):
    """optax.ctc_loss on NumPy arrays: the per-sequence loss (B,).

    The loss of `ctc_loss_with_forward_probs`, without the forward probabilities.

    Parameters
    ----------
    logits, logit_paddings, labels, label_paddings : array_like
        Scores (B, T, K), frame paddings (B, T), label ids (B, N) and label paddings
        (B, N), as for `ctc_loss_with_forward_probs`.
    blank_id : int, default 0
        The blank class, in [0, K).
    log_epsilon : float, default -1e5
        Stands in for log(0) (optax's convention).
    num_threads : int or None, default None
        Keyword-only.  Threads of this call.
    exact : bool, default False
        Keyword-only.  Run optax's literal recurrence (as for `ctc_loss_with_forward_probs`).

    Returns
    -------
    numpy.ndarray, (B,)
        Per-sequence loss, in logits' dtype.

    Raises
    ------
    CTCTypeError, CTCValueError
        As for `ctc_loss_with_forward_probs`.

    Examples
    --------
    >>> import numpy as np
    >>> import fastctc
    >>> loss = fastctc.optax_ctc_loss(np.zeros((1, 2, 2)), np.zeros((1, 2)), np.array([[1]]), np.zeros((1, 1)))
    >>> print(np.round(loss, 4))
    [0.2877]
    """
    num_threads = check_num_threads(num_threads)
    prepared = _prepare(logits, logit_paddings, labels, label_paddings, blank_id, log_epsilon)
    exact = check_flag(exact, "exact")
    return _run(*prepared, want_grad=False, want_alpha=False, num_threads=num_threads, exact=exact)[0]


def loss_and_grad(logits, logit_paddings, labels, label_paddings, *, blank_id=0, log_epsilon=-1e5,
                  num_threads=None, check_values=True, exact=False):
    """The loss and the gradient optax's loss has under jax.grad, in one call.

    One forward and one backward pass; paddings are held constant.

    Parameters
    ----------
    logits, logit_paddings, labels, label_paddings : array_like
        The arrays `optax_ctc_loss` takes, with the same shapes and checks.
    blank_id, log_epsilon, num_threads : optional
        Keyword-only.  As for `optax_ctc_loss`.
    check_values : bool, default True
        Keyword-only.  False skips the checks that read values; the driver stays in bounds
        regardless (values optax would blend or ignore take optax's literal recurrence).
    exact : bool, default False
        Keyword-only.  Run optax's literal recurrence (as for `ctc_loss_with_forward_probs`).

    Returns
    -------
    loss : numpy.ndarray, (B,)
        Per-sequence loss, in logits' dtype.
    grad : numpy.ndarray, (B, T, K)
        d loss[b] / d logits[b].

    Raises
    ------
    CTCTypeError, CTCValueError
        As for `ctc_loss_with_forward_probs`.
    """
    num_threads = check_num_threads(num_threads)
    prepared = _prepare(logits, logit_paddings, labels, label_paddings, blank_id, log_epsilon,
                        check_values=check_values)
    loss, _, _, grad = _run(*prepared, want_grad=True, want_alpha=False, num_threads=num_threads,
                            exact=check_flag(exact, "exact"))
    return loss, grad

