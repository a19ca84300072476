"""fastctc.mindspore: mindspore.ops.CTCLossV2 as a differentiable mindspore.nn.Cell.

    from fastctc.mindspore import CTCLossV2
    loss_fn = CTCLossV2(blank=0, reduction="none", zero_infinity=False)
    neg_log_likelihood, log_alpha = loss_fn(log_probs, targets, input_lengths, target_lengths)

Same interface, shapes and values as MindSpore's operator (log_probs (T, N, C) used exactly
as given; neg_log_likelihood (N,); log_alpha (N, T, 2S+1), -inf past each sequence's
lengths), computed on CPU by fastctc's SIMD engine.  The engine runs inside a
mindspore.ops.Custom operator of func_type "pyfunc" whose bprop scales a gradient that the
forward pass computed at the same time (one forward-backward sweep), so the Cell works in
PyNative mode and in GRAPH mode, with mindspore.grad / value_and_grad and in training steps.

Gradient: MindSpore's, i.e. w_n * (exp(log_probs) - occupancy) on each sequence's frames
and 0 on padding frames (the same convention as PyTorch's native CTC backward, which
assumes normalised inputs; after a log_softmax it is the exact gradient upstream).  Only
d neg_log_likelihood flows back; log_alpha is an output without a gradient, as in
MindSpore.  A sequence whose loss is +inf (a target that cannot fit) gets zero gradient
rows; MindSpore returns NaN there unless zero_infinity is set.

Where MindSpore's library and its documentation disagree, `behaviour` chooses:
- behaviour="documented" (default):
  * zero_infinity=True sets the infinite losses to 0 and zeroes their gradient, as the
    documentation says;
  * targets, input_lengths and target_lengths must share one dtype (TypeError otherwise).
- behaviour="mindspore" (what MindSpore 2.10 does):
  * zero_infinity=True keeps the loss at +inf and only zeroes the gradient;
  * int32 and int64 may be mixed among targets and the two lengths.
In both, labels outside [0, C) inside a target's length raise ValueError: MindSpore reads
them anyway and returns meaningless numbers, which no one can rely on.

Errors: the documented types (TypeError, ValueError, RuntimeError; as fastctc's
CTC*Error subclasses), raised before any kernel runs when the Cell is called from Python
(PyNative mode, or a top-level call in GRAPH mode).  Inside a compiled graph, arguments
are only seen by the operator itself: MindSpore then reports the same message wrapped in
its own exception (a RuntimeError).  CPU tensors only: MindSpore hands the pyfunc operator
host arrays.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from ._mindspore import CTCLossV2 as _NumpyCTCLossV2
from ._mindspore import check_inputs
from ._reduction import zero_infinite
from ._validate import CTCTypeError, CTCValueError, check_dtype

__all__ = ["CTCLossV2"]

_BEHAVIOURS = ("documented", "mindspore")
_EXP_CHUNK_BYTES = 1 << 21  # exp(log_probs) is added a few frames at a time, in cache


def _add_exp_rows(grad, log_probs, input_lengths, costs):
    """grad[t, n] += exp(log_probs[t, n]) for t < input_lengths[n] where costs[n] is finite:
    the term MindSpore's gradient has on top of the exact d nll / d log_probs."""
    T, N, C = log_probs.shape
    if grad.size == 0:
        return
    live = np.isfinite(costs)
    step = max(1, _EXP_CHUNK_BYTES // max(1, N * C * log_probs.itemsize))
    buf = np.empty((min(step, T), N, C), dtype=log_probs.dtype)
    shortest = int(input_lengths.min()) if live.all() else -1
    for t0 in range(0, T, step):
        t1 = min(T, t0 + step)
        b = buf[: t1 - t0]
        np.exp(log_probs[t0:t1], out=b)
        if t1 > shortest:
            for n in np.flatnonzero((input_lengths < t1) | ~live):  # padding frames, infinite losses
                first = max(0, int(input_lengths[n]) - t0) if live[n] else 0
                b[first:, n, :] = 0
        grad[t0:t1] += b


def _make_kernel(blank, zero_infinity, behaviour):
    """The pyfunc operator's Python side (numpy arrays in, numpy arrays out): the engine's
    losses, forward variables and gradient (weight 1 per sequence), MindSpore's convention."""
    numpy_op = _NumpyCTCLossV2(blank=blank, reduction="none", zero_infinity=False)

    def fastctc_ctc_loss_v2(log_probs, targets, input_lengths, target_lengths):
        if behaviour == "mindspore":  # mixed int32/int64 accepted: one dtype for the checks
            input_lengths = np.asarray(input_lengths).astype(np.asarray(targets).dtype, copy=False)
            target_lengths = np.asarray(target_lengths).astype(np.asarray(targets).dtype, copy=False)
        costs, log_alpha, grad = numpy_op.loss_and_grad(log_probs, targets, input_lengths, target_lengths)
        _add_exp_rows(grad, np.asarray(log_probs), np.asarray(input_lengths, np.int64), costs)
        if zero_infinity and behaviour == "documented":
            costs = zero_infinite(costs)  # infinite losses already have zero gradient rows
        return costs, log_alpha, grad

    return fastctc_ctc_loss_v2


def _infer_shape(lp, tg, il, tl):
    T, N, C = lp
    S = tg[1] if len(tg) == 2 else 0
    return (N,), (N, T, 2 * S + 1), (T, N, C)


def _infer_dtype(lp, tg, il, tl):
    return lp, lp, lp


class CTCLossV2(nn.Cell):
    """mindspore.ops.CTCLossV2 as a Cell computed by fastctc (see the module docstring).

    A differentiable Cell for PyNative and GRAPH mode: only d neg_log_likelihood flows back
    (MindSpore's gradient convention, see the module docstring); log_alpha has no gradient.

    Parameters
    ----------
    blank : int, default 0
        The blank class index, in [0, C).
    reduction : str, default 'none'
        'none' only (case-insensitive), as in MindSpore.
    zero_infinity : bool, default False
        What happens to infinite losses depends on behaviour.
    behaviour : {'documented', 'mindspore'}, default 'documented'
        Keyword-only.  Where MindSpore's library and its documentation disagree:
        'documented' sets infinite losses to 0 with zero_infinity (and zeroes their
        gradient) and requires one dtype for targets and both lengths; 'mindspore' (what
        MindSpore 2.10 does) keeps the loss at +inf with zero_infinity, only zeroing the
        gradient, and accepts int32 and int64 mixed.

    Raises
    ------
    CTCTypeError
        blank not an int, reduction not a str, zero_infinity not a bool.
    CTCValueError
        A reduction other than 'none', a behaviour other than 'documented'/'mindspore'.

    Examples
    --------
    >>> import mindspore as ms
    >>> import numpy as np
    >>> from fastctc.mindspore import CTCLossV2
    >>> loss_fn = CTCLossV2(blank=0)
    >>> log_probs = ms.Tensor(np.log(np.full((2, 1, 2), 0.5, dtype=np.float32)))   # (T, N, C)
    >>> ints = [ms.Tensor(np.array(v, dtype=np.int32)) for v in ([[1]], [2], [1])]
    >>> nll, log_alpha = loss_fn(log_probs, *ints)
    >>> print(nll.asnumpy().round(4), log_alpha.shape)
    [0.2877] (1, 2, 3)
    """

    def __init__(self, blank=0, reduction="none", zero_infinity=False, *, behaviour="documented"):
        super().__init__()
        # the constructor errors of MindSpore's operator, with its documented types
        self._checker = _NumpyCTCLossV2(blank=blank, reduction=reduction, zero_infinity=zero_infinity)
        if not isinstance(behaviour, str) or behaviour not in _BEHAVIOURS:
            raise CTCValueError(f"behaviour must be 'documented' or 'mindspore', got {behaviour!r}")
        self.blank = int(blank)
        self.zero_infinity = bool(zero_infinity)
        self.behaviour = behaviour
        kernel = _make_kernel(self.blank, self.zero_infinity, behaviour)
        grad_scale = ops.Custom(_scale_grad, out_shape=_scale_shape, out_dtype=_scale_dtype, func_type="pyfunc")

        # Backward scales the forward's gradient by each loss's upstream gradient.  Which
        # way is faster depends on the mode (measured on the bpe shape, 2 threads): in GRAPH
        # mode MindSpore's multiply (92 ms against 112 ms per step); in PyNative mode a pyfunc
        # (205 ms against 536 ms), which also returns the gradient untouched when the upstream
        # gradient is all ones.  The mode current at construction chooses; both are exact.
        def bprop_pyfunc(log_probs, targets, input_lengths, target_lengths, out, dout):
            return (grad_scale(out[2], dout[0]), ops.zeros_like(targets), ops.zeros_like(input_lengths),
                    ops.zeros_like(target_lengths))

        def bprop_multiply(log_probs, targets, input_lengths, target_lengths, out, dout):
            return (out[2] * ops.reshape(dout[0], (1, -1, 1)), ops.zeros_like(targets),
                    ops.zeros_like(input_lengths), ops.zeros_like(target_lengths))

        graph = ms.get_context("mode") == ms.GRAPH_MODE
        self._op = ops.Custom(kernel, out_shape=_infer_shape, out_dtype=_infer_dtype, func_type="pyfunc",
                              bprop=bprop_multiply if graph else bprop_pyfunc)

    def extra_repr(self):
        return f"blank={self.blank}, reduction='none', zero_infinity={self.zero_infinity}, behaviour={self.behaviour!r}"

    def __call__(self, log_probs, targets, input_lengths, target_lengths):
        """The per-sequence negative log-likelihood and the forward variables.

        Parameters
        ----------
        log_probs : mindspore.Tensor, (T, N, C), float32 or float64
            Used exactly as given; CPU tensors only.
        targets : mindspore.Tensor, (N, S), int32 or int64
            Padded targets; labels inside each target's length must lie in [0, C).
        input_lengths : mindspore.Tensor, (N,), int32 or int64
            Frames of each sequence, in [0, T].
        target_lengths : mindspore.Tensor, (N,), int32 or int64
            Labels of each target, in [0, min(input_lengths[n], S)].

        Returns
        -------
        neg_log_likelihood : mindspore.Tensor, (N,)
            In log_probs' dtype.
        log_alpha : mindspore.Tensor, (N, T, 2S+1)
            -inf past each sequence's lengths; no gradient flows through it.

        Raises
        ------
        CTCTypeError, CTCValueError, CTCRuntimeError
            MindSpore's documented errors with their documented builtin types, raised from
            Python before anything runs (PyNative mode, or a top-level call in GRAPH mode).
            Inside a compiled graph MindSpore reports the same message wrapped in its own
            RuntimeError.
        """
        self._validate(log_probs, targets, input_lengths, target_lengths)
        return super().__call__(log_probs, targets, input_lengths, target_lengths)

    def construct(self, log_probs, targets, input_lengths, target_lengths):
        nll, log_alpha, _ = self._op(log_probs, targets, input_lengths, target_lengths)
        return nll, log_alpha

    def _validate(self, log_probs, targets, input_lengths, target_lengths):
        """The documented errors, from Python, before anything is compiled or run: shapes and
        dtypes from the tensors' metadata, values from the (small) integer operands."""
        if not isinstance(log_probs, ms.Tensor):
            raise CTCTypeError(f"log_probs must be a mindspore.Tensor, got {type(log_probs).__name__}")
        names = {"float32": np.float32, "float64": np.float64}
        kind = check_dtype(log_probs, "log_probs", tuple(names))
        shape = tuple(log_probs.shape)
        row = np.zeros(max(shape[-1] if shape else 1, 1), names[kind])
        probe = np.lib.stride_tricks.as_strided(row, shape=shape, strides=(0,) * (len(shape) - 1) + (row.itemsize,),
                                                writeable=False) if shape else row[:0]
        ints = []
        for x, name in ((targets, "targets"), (input_lengths, "input_lengths"), (target_lengths, "target_lengths")):
            ints.append(x.asnumpy() if isinstance(x, ms.Tensor) else x)
        tg, il, tl = ints
        if self.behaviour == "mindspore":
            tdt = getattr(tg, "dtype", None)
            if tdt in (np.int32, np.int64):
                il, tl = ([np.asarray(v).astype(tdt) if getattr(v, "dtype", None) in (np.int32, np.int64) else v
                           for v in (il, tl)])
        check_inputs(self.blank, probe, tg, il, tl)


def _scale_grad(grad, dnll):
    """grad (computed with weight 1 per sequence) times the upstream gradient of each loss."""
    dnll = np.asarray(dnll, dtype=grad.dtype)
    if np.all(dnll == 1):
        return grad
    return grad * dnll[None, :, None]


def _scale_shape(g, d):
    return g


def _scale_dtype(g, d):
    return g
