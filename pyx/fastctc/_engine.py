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

import os
import threading

import numpy as np

from . import _core, _fast
from ._reduction import loss_weights, reduce_losses
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
_budget_lock = threading.Lock()
_active_calls = 0


_cores = None  # cores this process may use, read once: the system call costs more than a tiny problem


def default_threads() -> int:
    global _cores
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env:
        env = env.split(",")[0].strip()
        if env.isdigit() and int(env) > 0:
            return int(env)
    if _cores is None:
        try:
            _cores = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            _cores = max(1, os.cpu_count() or 1)
    return _cores


class ThreadBudget:
    """Context manager giving this call its share of the thread budget."""

    def __init__(self, requested):
        self.requested = requested

    def __enter__(self) -> int:
        global _active_calls
        with _budget_lock:
            _active_calls += 1
            active = _active_calls
        if self.requested is not None:
            return self.requested
        return max(1, default_threads() // active)

    def __exit__(self, *exc):
        global _active_calls
        with _budget_lock:
            _active_calls -= 1
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
    # ThreadBudget's accounting, inline (the context manager costs microseconds per call)
    global _active_calls
    with _budget_lock:
        _active_calls += 1
        active = _active_calls
    try:
        threads = num_threads if num_threads is not None else max(1, default_threads() // active)
        _core.run_batch(acts, batch.labels, batch.offsets, batch.label_lengths, batch.input_lengths,
                        blank, bool(from_logits), grad, grad_weights, log_alpha, costs, threads)
    finally:
        with _budget_lock:
            _active_calls -= 1
    return costs, grad, log_alpha


def _reduce(costs: np.ndarray, label_lengths: np.ndarray, reduction: str, zero_infinity: bool):
    """(reduced loss, per-sequence gradient weights): the pair tests/test_torch_fast.py
    compares fastctc._fast with; both come from fastctc._reduction."""
    return reduce_losses(costs, label_lengths, reduction, zero_infinity), loss_weights(label_lengths, reduction)


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


def on_gpu(log_probs) -> bool:
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
    if on_gpu(log_probs):
        return _gpu_call(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                         zero_infinity, from_logits, False)[0]
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
    if on_gpu(log_probs):
        if grad_out is not None:
            raise NotImplementedError("grad_out is supported for CPU (NumPy) arrays only; on the GPU the "
                                      "gradient is allocated by the GPU path")
        return _gpu_call(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                         zero_infinity, from_logits, True)
    batch, blank, reduction, zero_infinity, from_logits, num_threads = _prepare(
        log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
        from_logits, num_threads)
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
    weights = loss_weights(batch.label_lengths, reduction)
    costs, grad, _ = run(batch, blank, from_logits, want_grad=True, grad_weights=weights,
                         num_threads=num_threads, grad=engine_grad)
    loss = reduce_losses(costs, batch.label_lengths, reduction, zero_infinity)
    if grad_out is not None:
        grad = grad_out
    elif batch.unbatched:
        grad = grad[:, 0, :]
        if reduction == "none":
            loss = loss.reshape(())
    return loss, grad
