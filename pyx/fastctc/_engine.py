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

# Threads a call gets by default: OMP_NUM_THREADS, else every core this process may use
# (kept in _core, where the compiled one-call path reads it too).
default_threads = _core.default_threads


class ThreadBudget:
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
    # ThreadBudget's accounting, inline (the context manager costs microseconds per call)
    threads = _core.threads_enter(num_threads)
    try:
        _core.run_batch(acts, batch.labels, batch.offsets, batch.label_lengths, batch.input_lengths,
                        blank, bool(from_logits), grad, grad_weights, log_alpha, costs, threads)
    finally:
        _core.threads_exit()
    return costs, grad, log_alpha


def _batch(log_probs, targets, input_lengths, target_lengths, blank, from_logits, try_compiled):
    """(Batch, blank): the compiled check for the common forms (unless the caller's
    compiled call already declined these inputs: try_compiled False), else check_ctc_inputs,
    which handles the form or raises the documented error."""
    checked = _fast.prepare(log_probs, targets, input_lengths, target_lengths, blank) if try_compiled else None
    if checked is None:
        checked = check_ctc_inputs(log_probs, targets, input_lengths, target_lengths, blank,
                                   acts_name="logits" if from_logits else "log_probs")
    return checked


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

    Parameters
    ----------
    log_probs : array_like, (T, N, C) or unbatched (T, C), float32 or float64
        Log-probabilities, used exactly as given (no normalisation check); or unnormalised
        scores with ``from_logits=True``.  Read in place through its strides when the class
        axis is contiguous.
    targets : array_like of int, (N, S) or (sum(target_lengths),)
        Padded (N, S) or 1-D concatenated targets.  Unbatched input is a batch of one, as in
        PyTorch: 1-D targets hold exactly target_length labels, (1, S) targets are padded.
    input_lengths : array_like of int, (N,)
        Frames of each sequence, in [0, T].  Sequences or arrays, read by element count as
        PyTorch does (an (N, 1) array works); a scalar (or one value) when unbatched.
    target_lengths : array_like of int, (N,)
        Labels of each target; same forms as input_lengths.
    blank : int, default 0
        The blank class, in [0, C).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'none' returns the (N,) per-sequence losses (a 0-d array unbatched); 'sum' their
        sum; 'mean' divides each loss by max(target_length, 1), then averages over the batch.
    zero_infinity : bool, default False
        Turn the +inf loss of an infeasible target into 0.
    from_logits : bool, default False
        Keyword-only.  Read the first argument as unnormalised scores and fuse the
        log_softmax over the classes into the same pass.
    num_threads : int or None, default None
        Keyword-only.  Threads of this call; None: OMP_NUM_THREADS, else every core this
        process may use (calls made at once share that budget).

    Returns
    -------
    numpy.ndarray
        The loss in log_probs' dtype: (N,) for reduction='none' (0-d unbatched), 0-d for
        'sum' and 'mean'.  An infeasible target gives +inf (0 with zero_infinity).

    Raises
    ------
    CTCTypeError
        A dtype other than float32/float64 for log_probs, non-integer targets or lengths,
        or an option of the wrong type.
    CTCValueError
        A rank or shape that does not fit, the blank outside [0, C), a length outside its
        bound, a label outside [0, C), or an unknown reduction.  The message names the
        argument, the index, the value and the bound.

    Notes
    -----
    A NaN or +inf in a cell a sequence reads gives a NaN loss for that sequence;
    -inf is a legal log-probability.  Every input is validated before any kernel runs.

    Examples
    --------
    Two frames of a uniform two-class distribution; the target [1] is emitted by the paths
    (1, 1), (blank, 1) and (1, blank), so the loss is -log(3/4):

    >>> import numpy as np
    >>> import fastctc
    >>> log_probs = np.log(np.full((2, 1, 2), 0.5))        # (T, N, C)
    >>> loss = fastctc.ctc_loss(log_probs, np.array([[1]]), [2], [1], reduction="none")
    >>> print(np.round(loss, 4))
    [0.2877]
    """
    if on_gpu(log_probs):
        return _gpu_call(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                         zero_infinity, from_logits, False)[0]
    reduction, zero_infinity, from_logits, num_threads = check_call_options(reduction, zero_infinity, from_logits,
                                                                            num_threads)
    done = _fast.ctc_call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                          from_logits, False, num_threads)  # the plain call, compiled end to end
    if done is not None:
        return done[0]
    batch, blank = _batch(log_probs, targets, input_lengths, target_lengths, blank, from_logits, False)
    costs, _, _ = run(batch, blank, from_logits, num_threads=num_threads)
    loss = _fast.reduce(costs, batch.label_lengths, reduction, zero_infinity)
    if batch.unbatched and reduction == "none":
        loss = loss.reshape(())
    return loss


def ctc_loss_and_grad(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                      zero_infinity=False, *, from_logits=False, num_threads=None, grad_out=None):
    """CTC loss and its gradient with respect to the first argument, in one pass.

    Takes ctc_loss's arguments (see `ctc_loss`) and returns its value together with the
    gradient of the reduced loss (for reduction='none', of the sum of the losses), from one
    forward-backward pass.

    Parameters
    ----------
    log_probs : array_like, (T, N, C) or unbatched (T, C), float32 or float64
        Log-probabilities (unnormalised scores with ``from_logits=True``).
    targets : array_like of int, (N, S) or (sum(target_lengths),)
        Padded or concatenated targets, as for `ctc_loss`.
    input_lengths : array_like of int, (N,)
        Frames of each sequence, in [0, T] (a scalar when unbatched).
    target_lengths : array_like of int, (N,)
        Labels of each target (a scalar when unbatched).
    blank : int, default 0
        The blank class, in [0, C).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As for `ctc_loss`; the gradient is that of the reduced loss.
    zero_infinity : bool, default False
        Turn the +inf loss of an infeasible target into 0 (its gradient rows are 0 anyway).
    from_logits : bool, default False
        Keyword-only.  Read the first argument as unnormalised scores; the log_softmax is
        fused in and the gradient is taken with respect to those scores.
    num_threads : int or None, default None
        Keyword-only.  Threads of this call (default: OMP_NUM_THREADS, else every core).
    grad_out : numpy.ndarray or None, default None
        Keyword-only.  An array of the first argument's shape and dtype (contiguous class
        axis, sharing no memory with it, nor with targets or the lengths) that receives
        the gradient, every element overwritten, and is returned as ``grad``.  A training
        loop that passes the same buffer each step skips the allocation, and the page
        faults of first touching fresh memory, which on large alphabets cost as much as the
        gradient pass itself.

    Returns
    -------
    loss : numpy.ndarray
        As `ctc_loss` returns it.
    grad : numpy.ndarray
        The gradient, with the first argument's shape and dtype (grad_out itself when given).
        With from_logits=False, d loss / d log_probs, the true partial derivative (no
        normalisation assumed); with from_logits=True, d loss / d logits = weight *
        (softmax - occupancy).  Rows of infeasible sequences are 0.

    Raises
    ------
    CTCTypeError
        As for `ctc_loss`; also a grad_out that is not a NumPy array or has another dtype.
    CTCValueError
        As for `ctc_loss`; also a grad_out of another shape, read-only, not contiguous
        along its class axis, or sharing memory with an input.
    NotImplementedError
        grad_out with CUDA arrays (the GPU path allocates its gradient).

    Notes
    -----
    PyTorch's CTC backward returns d loss / d log_probs plus exp(log_probs) times each
    sequence's weight (it assumes normalised inputs); after a log_softmax both give the
    same gradient upstream.

    Examples
    --------
    In the example of `ctc_loss`, frame by frame the blank is emitted by one path in three
    and the label by two: the gradient is minus that occupancy.

    >>> import numpy as np
    >>> import fastctc
    >>> log_probs = np.log(np.full((2, 1, 2), 0.5))
    >>> loss, grad = fastctc.ctc_loss_and_grad(log_probs, np.array([[1]]), [2], [1])
    >>> print(np.round(grad[:, 0], 4))
    [[-0.3333 -0.6667]
     [-0.3333 -0.6667]]
    """
    if on_gpu(log_probs):
        if grad_out is not None:
            raise NotImplementedError("grad_out is supported for CPU (NumPy) arrays only; on the GPU the "
                                      "gradient is allocated by the GPU path")
        return _gpu_call(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                         zero_infinity, from_logits, True)
    reduction, zero_infinity, from_logits, num_threads = check_call_options(reduction, zero_infinity, from_logits,
                                                                            num_threads)
    if grad_out is None:
        done = _fast.ctc_call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                              from_logits, True, num_threads)  # the plain call, compiled end to end
        if done is not None:
            return done
    batch, blank = _batch(log_probs, targets, input_lengths, target_lengths, blank, from_logits,
                          try_compiled=grad_out is not None)
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
