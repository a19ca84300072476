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
"""
from __future__ import annotations

import numpy as np

from . import _engine
from ._validate import CTCRuntimeError, CTCTypeError, CTCValueError, check_ctc_inputs

__all__ = ["CTCLossV2"]

_INT_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


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


def _lengths(x, name, n, targets_dtype):
    """Lengths as an int64 (N,) array; tuples/lists of ints adopt the targets' dtype."""
    is_sequence = isinstance(x, (tuple, list))
    if is_sequence:
        for i, v in enumerate(x):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise CTCTypeError(f"{name}[{i}] must be an int, got {type(v).__name__} {v!r}")
        arr = np.asarray(x, dtype=np.int64) if len(x) else np.zeros(0, np.int64)
    else:
        arr = _to_numpy(x, name)
        if arr.dtype not in _INT_DTYPES:
            raise CTCTypeError(f"{name} must have dtype int32 or int64, got {arr.dtype}")
        if arr.dtype != targets_dtype:
            raise CTCTypeError(f"targets and {name} must have the same dtype, got {targets_dtype} and {arr.dtype}")
    if arr.shape != (n,):
        raise CTCValueError(f"{name} must have shape (N,) = ({n},) matching log_probs' batch size, "
                            f"got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


class CTCLossV2:
    """CTC loss with mindspore.ops.CTCLossV2's interface and errors.

    blank: the blank class index, in [0, C) (checked at call time, when C is known).
    reduction: only 'none' (case-insensitive) is supported, as in MindSpore.
    zero_infinity: infinite losses (targets that cannot fit) become 0, and so do their
        gradients (see loss_and_grad).

    Calling it returns (neg_log_likelihood (N,), log_alpha (N, T, 2S+1)) as NumPy arrays of
    log_probs' dtype.
    """

    def __init__(self, blank=0, reduction="none", zero_infinity=False):
        if not isinstance(zero_infinity, (bool, np.bool_)):
            raise CTCTypeError(f"zero_infinity must be a bool, got {type(zero_infinity).__name__} {zero_infinity!r}")
        if not isinstance(reduction, str):
            raise CTCTypeError(f"reduction must be a str, got {type(reduction).__name__} {reduction!r}")
        if reduction.lower() != "none":
            raise CTCValueError(f"reduction must be 'none' (case-insensitive), got {reduction!r}")
        if isinstance(blank, (bool, np.bool_)) or not isinstance(blank, (int, np.integer)):
            raise CTCTypeError(f"blank must be an int, got {type(blank).__name__} {blank!r}")
        self.blank = int(blank)
        self.reduction = "none"
        self.zero_infinity = bool(zero_infinity)

    def __repr__(self):
        return f"CTCLossV2(blank={self.blank}, reduction='none', zero_infinity={self.zero_infinity})"

    def _check(self, log_probs, targets, input_lengths, target_lengths):
        lp = _to_numpy(log_probs, "log_probs")
        if lp.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise CTCTypeError(f"log_probs must have dtype float32 or float64, got {lp.dtype}")
        if lp.ndim != 3:
            raise CTCValueError(f"log_probs must have rank 3, shape (T, N, C); got shape {lp.shape}")
        T, N, C = lp.shape
        tg = _to_numpy(targets, "targets")
        if tg.dtype not in _INT_DTYPES:
            raise CTCTypeError(f"targets must have dtype int32 or int64, got {tg.dtype}")
        if tg.ndim != 2:
            raise CTCValueError(f"targets must have rank 2, shape (N, S); got shape {tg.shape}")
        if tg.shape[0] != N:
            raise CTCValueError(f"targets must have shape (N, S) with N = {N}, got shape {tg.shape}")
        il = _lengths(input_lengths, "input_lengths", N, tg.dtype)
        tl = _lengths(target_lengths, "target_lengths", N, tg.dtype)
        if not 0 <= self.blank < C:
            raise CTCValueError(f"blank must be in [0, C) = [0, {C}), got {self.blank}")
        for i in range(N):
            if not 0 <= il[i] <= T:
                raise CTCRuntimeError(f"input_lengths[{i}] = {int(il[i])} is outside [0, {T}] (T = log_probs.shape[0])")
        S = tg.shape[1]
        for i in range(N):
            if not 0 <= tl[i] <= il[i]:
                raise CTCRuntimeError(f"target_lengths[{i}] = {int(tl[i])} is outside [0, input_lengths[{i}]] "
                                      f"= [0, {int(il[i])}]")
            if tl[i] > S:
                raise CTCRuntimeError(f"target_lengths[{i}] = {int(tl[i])} exceeds the padded target width S = {S}")
        # label values in [0, C) are checked (CTCValueError) by the shared validator
        batch, blank = check_ctc_inputs(lp, tg, il, tl, self.blank, allow_unbatched=False)
        return batch, blank, S

    def _run(self, want_grad, log_probs, targets, input_lengths, target_lengths):
        batch, blank, S = self._check(log_probs, targets, input_lengths, target_lengths)
        costs, grad, log_alpha = _engine.run(batch, blank, False, want_grad=want_grad,
                                             want_alpha=True, alpha_cols=2 * S + 1)
        if self.zero_infinity:
            bad = np.isinf(costs) & (costs > 0)
            costs[bad] = 0
            # infeasible sequences already have zero gradient rows in the engine
        return costs, log_alpha, grad

    def __call__(self, log_probs, targets, input_lengths, target_lengths):
        costs, log_alpha, _ = self._run(False, log_probs, targets, input_lengths, target_lengths)
        return costs, log_alpha

    def loss_and_grad(self, log_probs, targets, input_lengths, target_lengths):
        """(neg_log_likelihood (N,), log_alpha (N, T, 2S+1), grad (T, N, C)): grad is
        d sum(neg_log_likelihood) / d log_probs, the true partial derivative (no
        normalisation assumed); rows of infinite losses are 0."""
        return self._run(True, log_probs, targets, input_lengths, target_lengths)
