"""fastctc._engine: the one engine every front end maps onto, and the PyTorch-style API.

    run(batch, blank, from_logits, want_grad, grad_weights, want_alpha, alpha_cols)

takes a validated `Batch` (see _validate.py) and returns per-sequence negative
log-likelihoods, optionally the gradient (same (T, N, C) layout as the batch view,
each sequence's rows multiplied by its weight) and the forward variables (N, T, K).
ctc_loss / ctc_loss_and_grad below are torch.nn.functional.ctc_loss's contract on top
of it; CTCLossV2, the optax and torch front ends call `run` the same way.

Threads: the call's num_threads, else OMP_NUM_THREADS, else every core this process
may use.  Calls made at once from several Python threads share that budget rather than
each taking all of it (no oversubscription).
"""
from __future__ import annotations

import numpy as np

from . import _core, _fast
from ._validate import (
    Batch,
    as_float_array,
    check_call_options,
    check_ctc_inputs,
    check_flag,
    check_grad_out,
    check_reduction,
)

_UNIT_WEIGHTS = np.ones(256, dtype=np.float64)
_UNIT_WEIGHTS.flags.writeable = False

# Threads a call gets by default: OMP_NUM_THREADS, else every core this process may use
# (kept in _core, where the compiled one-call path reads it too).
default_threads = _core.default_threads


class _ThreadBudget:
    """Context manager giving this call its share of the thread budget (_core counts the
    calls in flight across every door)."""

    def __init__(self, requested):
        self.requested = requested

    def __enter__(self) -> int:
        return _core.threads_enter(self.requested)

    def __exit__(self, *exc):
        _core.threads_exit()
        return False


def run(batch: Batch, blank: int, from_logits: bool, want_grad: bool = False,
        grad_weights=None, want_alpha: bool = False, alpha_cols: int = 0, num_threads=None,
        alpha_rows: int | None = None, grad=None):
    """Runs the engine; returns (costs (N,), grad (T, N, C) or None, log_alpha (N, T, K) or None).
    grad: None, or a validated (T, N, C) array the gradient is written into (every element)."""
    acts = batch.acts
    T, N, C = acts.shape
    dtype = acts.dtype
    costs = np.empty(N, dtype=dtype)
    if want_grad and grad is None:
        grad = np.empty((T, N, C), dtype=dtype)
    log_alpha = None
    if want_alpha:
        rows = T if alpha_rows is None else alpha_rows
        log_alpha = np.empty((N, rows, alpha_cols), dtype=dtype)
    if grad_weights is None:
        # unit weights; small batches share one read-only array (np.ones costs a microsecond)
        grad_weights = _UNIT_WEIGHTS[:N] if N <= _UNIT_WEIGHTS.shape[0] else np.ones(N, dtype=np.float64)
    elif (type(grad_weights) is not np.ndarray or grad_weights.dtype != np.float64 or grad_weights.ndim != 1
          or not grad_weights.flags.c_contiguous):
        grad_weights = np.ascontiguousarray(grad_weights, dtype=np.float64)
    if N == 0:
        return costs, grad, log_alpha
    # _ThreadBudget's accounting, inline (the context manager costs microseconds per call)
    threads = _core.threads_enter(num_threads)
    try:
        _core.run_batch(acts, batch.labels, batch.offsets, batch.label_lengths, batch.input_lengths,
                        blank, bool(from_logits), grad, grad_weights, log_alpha, costs, threads)
    finally:
        _core.threads_exit()
    return costs, grad, log_alpha


def _reduce(costs: np.ndarray, label_lengths: np.ndarray, reduction: str, zero_infinity: bool):
    """(reduced loss, per-sequence gradient weights) for torch's reductions."""
    N = costs.shape[0]
    if zero_infinity:
        costs = np.where(np.isinf(costs) & (costs > 0), np.zeros((), costs.dtype), costs)
    if reduction == "none":
        return costs, np.ones(N)
    if reduction == "sum":
        return np.asarray(costs.sum(dtype=np.float64), dtype=costs.dtype), np.ones(N)
    # mean: each loss divided by its target length (at least 1), then averaged over the batch
    divisor = np.maximum(label_lengths.astype(np.float64), 1.0)
    if N == 0:
        return np.asarray(np.nan, dtype=costs.dtype), np.ones(0)
    weights = 1.0 / (divisor * N)
    return np.asarray((costs.astype(np.float64) * weights).sum(), dtype=costs.dtype), weights


def _prepare(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
             from_logits, num_threads):
    reduction, zero_infinity, from_logits, num_threads = check_call_options(reduction, zero_infinity, from_logits,
                                                                            num_threads)
    # the compiled check takes the common forms; anything else (or anything wrong) goes
    # through check_ctc_inputs, which handles it or raises the documented error
    checked = _fast.prepare(log_probs, targets, input_lengths, target_lengths, blank)
    if checked is None:
        checked = check_ctc_inputs(log_probs, targets, input_lengths, target_lengths, blank,
                                   acts_name="logits" if from_logits else "log_probs")
    batch, blank = checked
    return batch, blank, reduction, zero_infinity, from_logits, num_threads


def _on_gpu(log_probs) -> bool:
    """True when the activations live on a CUDA device (the GPU path takes the call)."""
    if type(log_probs) is np.ndarray:
        return False
    mod = type(log_probs).__module__.split(".")[0]
    if mod == "numpy" or isinstance(log_probs, (list, tuple)):
        return False
    if not (hasattr(log_probs, "__cuda_array_interface__") or hasattr(log_probs, "__dlpack_device__")
            or mod == "torch"):
        return False
    from . import _cuda
    return _cuda.is_cuda_array(log_probs)


def _gpu_call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
              from_logits, want_grad):
    from . import _cuda
    reduction = check_reduction(reduction)
    return _cuda.ctc_loss_device(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                                 check_flag(zero_infinity, "zero_infinity"),
                                 check_flag(from_logits, "from_logits"), want_grad)


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
             zero_infinity=False, *, from_logits=False, num_threads=None):
    """CTC loss with torch.nn.functional.ctc_loss's semantics, on NumPy arrays.

    log_probs: (T, N, C) or unbatched (T, C), float32/float64 log-probabilities (or
        unnormalised scores with from_logits=True: log_softmax is fused in).
    targets: (N, S) padded or 1-D concatenated (sum(target_lengths),).  Unbatched input is a
        batch of one, as in PyTorch: 1-D targets hold exactly target_length labels, (1, S) are padded.
    input_lengths, target_lengths: N integers (sequences or arrays, read by element count as
        PyTorch does); a scalar (or one value) when unbatched.
    reduction: 'none' -> (N,) (or () unbatched); 'sum'; 'mean' (each loss divided by
        max(target_length, 1), then the batch mean).  Returns NumPy arrays of log_probs'
        dtype (0-d for sum/mean).  Infeasible targets give +inf (0 with zero_infinity).
    """
    if _on_gpu(log_probs):
        return _gpu_call(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                         zero_infinity, from_logits, False)[0]
    reduction, zero_infinity, from_logits, num_threads = check_call_options(reduction, zero_infinity, from_logits,
                                                                            num_threads)
    done = _fast.ctc_call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                          from_logits, False, num_threads)  # the plain call, compiled end to end
    if done is not None:
        return done[0]
    batch, blank, reduction, zero_infinity, from_logits, num_threads = _prepare(
        log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
        from_logits, num_threads)
    costs, _, _ = run(batch, blank, from_logits, num_threads=num_threads)
    loss = _fast.reduce(costs, batch.label_lengths, reduction, zero_infinity)
    if batch.unbatched and reduction == "none":
        loss = loss.reshape(())
    return loss


def ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                      zero_infinity=False, *, from_logits=False, num_threads=None, grad_out=None):
    """(loss, grad): ctc_loss's value and the gradient of the reduced loss (for
    reduction='none', of the sum of the losses) with respect to the first argument, with
    its shape and dtype, from one forward-backward pass.

    from_logits=False: grad = d loss / d log_probs, the true partial derivative (no
    normalisation assumed).  PyTorch's CTC backward returns this plus exp(log_probs)
    times each sequence's weight; after a log_softmax both give the same gradient upstream.
    from_logits=True: grad = d loss / d logits = weight * (softmax - occupancy).
    Infeasible sequences: loss +inf (0 with zero_infinity), gradient rows 0.

    grad_out: None, or a NumPy array of the first argument's shape and dtype (contiguous
    class axis, sharing no memory with it) that receives the gradient, every element
    overwritten, and is returned as `grad`.  A training loop that passes the same buffer
    each step skips the allocation, and the page faults of first touching fresh memory,
    which on large alphabets cost as much as the gradient pass itself.
    """
    if _on_gpu(log_probs):
        if grad_out is not None:
            raise NotImplementedError("grad_out is supported for CPU (NumPy) arrays only; on the GPU the "
                                      "gradient is allocated by the GPU path")
        return _gpu_call(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                         zero_infinity, from_logits, True)
    if grad_out is None:
        reduction, zero_infinity, from_logits, num_threads = check_call_options(reduction, zero_infinity,
                                                                                from_logits, num_threads)
        done = _fast.ctc_call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                              from_logits, True, num_threads)  # the plain call, compiled end to end
        if done is not None:
            return done
    batch, blank, reduction, zero_infinity, from_logits, num_threads = _prepare(
        log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
        from_logits, num_threads)
    N = batch.acts.shape[1]
    engine_grad = None
    if grad_out is not None:
        acts_name = "logits" if from_logits else "log_probs"
        views = (batch.acts, as_float_array(log_probs, acts_name))
        others = [("targets", targets), ("targets", batch.labels), ("input_lengths", input_lengths),
                  ("input_lengths", batch.input_lengths), ("target_lengths", target_lengths),
                  ("target_lengths", batch.label_lengths)]
        grad_out = check_grad_out(grad_out, batch.original_shape, batch.acts.dtype, acts_name, views, others)
        engine_grad = grad_out[:, None, :] if batch.unbatched else grad_out
    # Weights depend only on the reduction and the lengths, so they are known before the pass.
    _, weights = _reduce(np.zeros(N, dtype=batch.acts.dtype), batch.label_lengths, reduction, False)
    costs, grad, _ = run(batch, blank, from_logits, want_grad=True, grad_weights=weights,
                         num_threads=num_threads, grad=engine_grad)
    loss, _ = _reduce(costs, batch.label_lengths, reduction, zero_infinity)
    if grad_out is not None:
        grad = grad_out
    elif batch.unbatched:
        grad = grad[:, 0, :]
        if reduction == "none":
            loss = loss.reshape(())
    return loss, grad
