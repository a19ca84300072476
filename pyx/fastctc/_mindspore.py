"""fastctc._mindspore: a drop-in for mindspore.ops.CTCLossV2 on NumPy-readable arrays.

MindSpore's operator returns the per-sequence negative log-likelihood and the forward
variables of the blank-interleaved ("extended") target:

    CTCLossV2(blank=0, reduction="none", zero_infinity=False)(
        log_probs, targets, input_lengths, target_lengths) -> (neg_log_likelihood (N,),
                                                                log_alpha (N, T, 2S+1))

Shapes: MindSpore's documentation lists log_probs as (T, C, N) in its Inputs section,
but its own example (and its kernels) use (T, N, C); we follow the example.  log_probs
are used exactly as given (the documented example feeds unnormalised numbers).
log_alpha[n, t, s] is -inf for t >= input_lengths[n] and for s >= 2 * target_lengths[n] + 1.

Every documented error is raised, with the documented builtin type (as the CTC*Error
subclasses), before any kernel runs.

GPU: when log_probs is a CUDA array (torch, CuPy, JAX, anything fastctc._cuda accepts),
the call runs on the GPU through fastctc._cuda.run_device (want_alpha=True) without
copying anything back to the host, and the results are arrays of log_probs' kind on its
device.  Shapes and dtypes are checked as on the CPU; values of targets and lengths are
checked when they are on the host (on the device, out-of-range values give a NaN loss
instead of an exception, as documented for fastctc._cuda).
"""
from __future__ import annotations

import numpy as np

from . import _engine
from ._reduction import zero_infinite
from ._validate import (
    CTCRuntimeError,
    CTCTypeError,
    CTCValueError,
    check_batch_size,
    check_ctc_inputs,
    check_dtype,
    check_index,
    check_integer,
    check_range,
    check_rank,
    check_shape,
    padded_mask,
)

__all__ = ["CTCLossV2"]

_INTS = ("int32", "int64")
_FLOATS = ("float32", "float64")


def _to_numpy(x, name):
    """A NumPy view of x: arrays, MindSpore tensors (.asnumpy()), torch CPU tensors, tuples."""
    if hasattr(x, "asnumpy") and callable(x.asnumpy):
        x = x.asnumpy()
    elif hasattr(x, "detach") and hasattr(x, "numpy"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:
        raise CTCTypeError(f"{name} could not be read as an array: {exc}") from exc


def _check_length_meta(x, name, n, targets_dtype):
    """dtype and shape of a lengths array (host or device): int32/int64 like the targets, (N,)."""
    kind = check_dtype(x, name, _INTS)
    if kind != targets_dtype:
        raise CTCTypeError(f"targets and {name} must have the same dtype, got {targets_dtype} and {kind}")
    check_shape(x.shape, name, (n,), "(N,)", "matching log_probs' batch size")


def _lengths(x, name, n, targets_dtype):
    """Lengths as an int64 (N,) array; tuples/lists of ints adopt the targets' dtype."""
    if isinstance(x, (tuple, list)):
        for i, v in enumerate(x):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise CTCTypeError(f"{name}[{i}] must be an int, got {type(v).__name__} {v!r}")
        arr = np.asarray(x, dtype=np.int64) if len(x) else np.zeros(0, np.int64)
        check_shape(arr.shape, name, (n,), "(N,)", "matching log_probs' batch size")
    else:
        arr = _to_numpy(x, name)
        _check_length_meta(arr, name, n, targets_dtype)
    return arr.astype(np.int64, copy=False)


def _check_length_values(il, tl, T, S):
    """MindSpore's RuntimeErrors for lengths out of range (either may be None: on the device)."""
    if il is not None:
        check_range(il, "input_lengths", 0, T, "T = log_probs.shape[0]", cls=CTCRuntimeError)
    if tl is not None:
        if il is not None:
            check_range(tl, "target_lengths", 0, il, "input_lengths[{i}]", cls=CTCRuntimeError)
        check_range(tl, "target_lengths", 0, S, "the padded target width S", cls=CTCRuntimeError)


def check_inputs(blank, log_probs, targets, input_lengths, target_lengths):
    """Every documented error of a call with host operands (fastctc.mindspore's Cell checks
    its arguments with it too); returns (Batch, blank, S)."""
    lp = _to_numpy(log_probs, "log_probs")
    check_dtype(lp, "log_probs", _FLOATS)
    T, N, C = check_rank(lp.shape, "log_probs", 3, "(T, N, C)")
    tg = _to_numpy(targets, "targets")
    tg_kind = check_dtype(tg, "targets", _INTS)
    S = _targets_width(tg.shape, N)
    il = _lengths(input_lengths, "input_lengths", N, tg_kind)
    tl = _lengths(target_lengths, "target_lengths", N, tg_kind)
    check_index(blank, "blank", C)
    _check_length_values(il, tl, T, S)
    # label values in [0, C) are checked (CTCValueError) by the shared validator
    batch, blank = check_ctc_inputs(lp, tg, il, tl, blank, allow_unbatched=False)
    return batch, blank, S


def _targets_width(shape, N):
    """S of padded (N, S) targets."""
    check_rank(shape, "targets", 2, "(N, S)")
    check_batch_size(shape, "targets", N, "(N, S)")
    return shape[1]


class CTCLossV2:
    """CTC loss with mindspore.ops.CTCLossV2's interface and errors, on NumPy-readable arrays.

    Calling it returns the per-sequence negative log-likelihood and the forward variables
    of the blank-interleaved ("extended") target (see `__call__`).

    Parameters
    ----------
    blank : int, default 0
        The blank class index, in [0, C) (checked at call time, when C is known).
    reduction : str, default 'none'
        Only 'none' (case-insensitive) is supported, as in MindSpore.
    zero_infinity : bool, default False
        Infinite losses (targets that cannot fit) become 0, and so do their gradients
        (see `loss_and_grad`).

    Raises
    ------
    CTCTypeError
        blank not an int, reduction not a str, zero_infinity not a bool.
    CTCValueError
        A reduction other than 'none'.

    Notes
    -----
    MindSpore's documentation lists log_probs as (T, C, N) in its Inputs section, but its
    own example (and its kernels) use (T, N, C); so does this class.  For a CUDA log_probs
    (torch, CuPy, JAX) the call runs on the GPU and returns arrays of log_probs' kind on its
    device; there, out-of-range values of device-resident targets or lengths give a NaN
    loss instead of an exception.

    Examples
    --------
    >>> import numpy as np
    >>> import fastctc
    >>> loss_fn = fastctc.CTCLossV2(blank=0)
    >>> log_probs = np.log(np.full((2, 1, 2), 0.5))         # (T, N, C)
    >>> nll, log_alpha = loss_fn(log_probs, np.array([[1]]), np.array([2]), np.array([1]))
    >>> print(np.round(nll, 4), log_alpha.shape)
    [0.2877] (1, 2, 3)
    """

    def __init__(self, blank=0, reduction="none", zero_infinity=False):
        if not isinstance(zero_infinity, (bool, np.bool_)):
            raise CTCTypeError(f"zero_infinity must be a bool, got {type(zero_infinity).__name__} {zero_infinity!r}")
        if not isinstance(reduction, str):
            raise CTCTypeError(f"reduction must be a str, got {type(reduction).__name__} {reduction!r}")
        if reduction.lower() != "none":
            raise CTCValueError(f"reduction must be 'none' (case-insensitive), got {reduction!r}")
        self.blank = check_integer(blank, "blank")
        self.reduction = "none"
        self.zero_infinity = bool(zero_infinity)

    def __repr__(self):
        return f"CTCLossV2(blank={self.blank}, reduction='none', zero_infinity={self.zero_infinity})"

    # ------------------------------------------------------------------ GPU routing
    def _check_device(self, log_probs, targets, input_lengths, target_lengths):
        """check_inputs() for a CUDA log_probs: shapes and dtypes everywhere, values of host operands.
        Returns (targets, input_lengths, target_lengths) ready for run_device."""
        check_dtype(log_probs, "log_probs", _FLOATS)
        T, N, C = check_rank(log_probs.shape, "log_probs", 3, "(T, N, C)")
        tg_dev = _engine.on_gpu(targets)
        tg = targets if tg_dev else _to_numpy(targets, "targets")
        tg_kind = check_dtype(tg, "targets", _INTS)
        S = _targets_width(tuple(tg.shape), N)
        lengths = []
        for x, name in ((input_lengths, "input_lengths"), (target_lengths, "target_lengths")):
            if _engine.on_gpu(x):
                _check_length_meta(x, name, N, tg_kind)
                lengths.append(x)
            else:
                lengths.append(_lengths(x, name, N, tg_kind))
        il, tl = lengths
        check_index(self.blank, "blank", C)
        il_host = None if _engine.on_gpu(il) else il
        tl_host = None if _engine.on_gpu(tl) else tl
        _check_length_values(il_host, tl_host, T, S)
        if tl_host is not None and not tg_dev:
            check_range(tg, "targets", 0, C, "C = log_probs.shape[2]", mask=padded_mask(tl_host, S), exclusive=True)
        return tg, il, tl

    def _run_gpu(self, want_grad, log_probs, targets, input_lengths, target_lengths):
        from . import _cuda
        tg, il, tl = self._check_device(log_probs, targets, input_lengths, target_lengths)
        costs, grad, log_alpha = _cuda.run_device(log_probs, tg, il, tl, blank=self.blank, from_logits=False,
                                                  want_grad=want_grad, grad_weights=None, want_alpha=True)
        if self.zero_infinity:
            costs = zero_infinite(costs)
            # infeasible sequences already have zero gradient rows in the kernel
        return costs, log_alpha, grad

    # ------------------------------------------------------------------ CPU
    def _run(self, want_grad, log_probs, targets, input_lengths, target_lengths):
        if _engine.on_gpu(log_probs):
            return self._run_gpu(want_grad, log_probs, targets, input_lengths, target_lengths)
        batch, blank, S = check_inputs(self.blank, log_probs, targets, input_lengths, target_lengths)
        costs, grad, log_alpha = _engine.run(batch, blank, False, want_grad=want_grad,
                                             want_alpha=True, alpha_cols=2 * S + 1)
        if self.zero_infinity:
            costs = zero_infinite(costs)
            # infeasible sequences already have zero gradient rows in the engine
        return costs, log_alpha, grad

    def __call__(self, log_probs, targets, input_lengths, target_lengths):
        """The per-sequence negative log-likelihood and the forward variables.

        Parameters
        ----------
        log_probs : array_like, (T, N, C), float32 or float64
            Used exactly as given (MindSpore's documented example feeds unnormalised
            numbers).  NumPy arrays, MindSpore tensors (``.asnumpy()``), CPU torch tensors,
            or CUDA arrays (GPU path).
        targets : array_like, (N, S), int32 or int64
            Padded targets; labels inside each target's length must lie in [0, C).
        input_lengths : array_like, (N,), int32 or int64
            Frames of each sequence, in [0, T].  Arrays must have targets' dtype; tuples and
            lists of ints adopt it.
        target_lengths : array_like, (N,), int32 or int64
            Labels of each target, in [0, min(input_lengths[n], S)]; same forms as
            input_lengths.

        Returns
        -------
        neg_log_likelihood : numpy.ndarray, (N,)
            A NumPy array of log_probs' dtype; for a CUDA log_probs, an array of its kind
            on its device (GPU path).  So is log_alpha.
        log_alpha : numpy.ndarray, (N, T, 2S+1)
            log_alpha[n, t, s] is -inf for t >= input_lengths[n] and for
            s >= 2 * target_lengths[n] + 1.

        Raises
        ------
        CTCTypeError
            A dtype of log_probs or targets not accepted, lengths of another dtype than
            targets, a non-int element of a length tuple.
        CTCValueError
            Ranks or shapes that do not fit, the blank outside [0, C), a label outside
            [0, C).
        CTCRuntimeError
            input_lengths outside [0, T], target_lengths outside [0, input_lengths] or
            above S (MindSpore documents these as RuntimeError).
        """
        costs, log_alpha, _ = self._run(False, log_probs, targets, input_lengths, target_lengths)
        return costs, log_alpha

    def loss_and_grad(self, log_probs, targets, input_lengths, target_lengths):
        """The call's two outputs and the gradient of the summed loss.

        Parameters
        ----------
        log_probs : array_like, (T, N, C), float32 or float64
            As for `__call__`.
        targets : array_like, (N, S), int32 or int64
            As for `__call__`.
        input_lengths : array_like, (N,), int32 or int64
            As for `__call__`.
        target_lengths : array_like, (N,), int32 or int64
            As for `__call__`.

        Returns
        -------
        neg_log_likelihood : numpy.ndarray, (N,)
            As `__call__` returns it.
        log_alpha : numpy.ndarray, (N, T, 2S+1)
            As `__call__` returns it.
        grad : numpy.ndarray, (T, N, C)
            d sum(neg_log_likelihood) / d log_probs, the true partial derivative (no
            normalisation assumed); rows of infinite losses are 0.

        Raises
        ------
        CTCTypeError, CTCValueError, CTCRuntimeError
            As for `__call__`.
        """
        return self._run(True, log_probs, targets, input_lengths, target_lengths)
