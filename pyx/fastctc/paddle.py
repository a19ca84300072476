"""fastctc.paddle: drop-ins for paddle.nn.functional.ctc_loss and paddle.nn.CTCLoss.

    from fastctc.paddle import ctc_loss, CTCLoss   # instead of paddle.nn.functional / paddle.nn

Paddle's CTC is Baidu's warp-ctc: the first argument (named log_probs) holds
*unnormalised* scores, (T, N, C) time-major, and the softmax is fused into the loss; the
gradient is taken with respect to those scores.  fastctc runs the same computation on its
SIMD engine (from_logits=True), as a paddle.autograd.PyLayer over CPU tensors, read in
place and handed back without copies (DLPack both ways).

Paddle's semantics, kept here because code written for Paddle relies on them:
- labels (N, S) int32, padded; input_lengths and label_lengths (N,) int64.
- A target that cannot fit its input (label_length + repeated neighbours > input_length)
  has loss 0 and a zero gradient (warp-ctc's rule), not +inf; only an empty input with an
  empty target (input_length = label_length = 0) gives +inf.  (Paddle 3.3 reads memory it
  should not for input_length 0 and crashes now and then; when it survives, those are its
  values, and fastctc.paddle returns them always.  With norm_by_times Paddle then also
  returns NaN gradient rows for that sequence; fastctc.paddle returns zeros.)
- zero_infinity=True turns +inf losses into 0 (after the rule above, so only that last case).
- reduction='mean' divides each loss by its label_length (no clamp: a zero label_length
  gives inf or nan, as in Paddle) and averages; 'sum' adds; 'none' returns (N,).
- norm_by_times=True divides each sequence's gradient (not its loss) by its input_length.
The reduction and zero_infinity are done with the same Paddle operations as Paddle's own
function, so their values and gradients are Paddle's.

Where Paddle 3.3 crashes the process or returns meaningless numbers, this module raises
instead, before any kernel runs (see docs/frameworks.md): input_lengths outside [0, T]
(Paddle: heap corruption), negative lengths or lengths of the wrong batch size (Paddle:
segfault or garbage), labels outside [0, C) inside label_length (Paddle: reads out of
bounds).  A label equal to the blank (inside label_length) raises ValueError: warp-ctc
gives such targets a trellis of its own (no skip into that label) that the engine does
not run, and a silently different value would be worse.  A reduction other than
'none'/'mean'/'sum' raises ValueError (Paddle: a bare AssertionError).  Errors Paddle
does raise keep its builtin class: ValueError for a bad
blank, rank, batch size, label_lengths > S, and for labels that are not int32 or lengths
that are not int64; RuntimeError for activations that are not float32/float64.  (The
dtype errors are fastctc.CTCTypeError subclasses too, so `except TypeError` catches them.)

Speed: the forward pass computes the gradient at the same time (one forward-backward
sweep), already scaled by the weight the reduction will give each loss, so backward
normally hands the buffer over untouched; an unexpected upstream gradient costs one
rescaling pass.  GPU tensors are refused with an error that says to move them to the CPU
(Paddle's GPU warp-ctc is the fast path there).  Dynamic-graph mode only: under
paddle.jit.to_static the call raises.
"""
from __future__ import annotations

import numpy as np
import paddle
from paddle.autograd import PyLayer

from . import _engine
from ._validate import (
    CTCRuntimeError,
    CTCTypeError,
    CTCValueError,
    check_batch_size,
    check_ctc_inputs,
    check_dtype,
    check_flag,
    check_index,
    check_num_threads,
    check_rank,
    check_reduction,
    check_shape,
    first_offender,
    padded_mask,
    repeats,
)

__all__ = ["ctc_loss", "CTCLoss"]

# backward passes whose upstream gradient differed from the anticipated weights (each cost
# one rescaling pass over the gradient); the tests check the common reductions add none
_rescaled_backwards = 0


class PaddleDtypeValueError(CTCTypeError, ValueError):
    """A wrong integer dtype: a TypeError by fastctc's convention, a ValueError as in Paddle."""


class PaddleDtypeRuntimeError(CTCTypeError, RuntimeError):
    """A wrong float dtype: a TypeError by fastctc's convention, a RuntimeError as in Paddle
    (whose kernel lookup fails with one)."""


def _is_tensor(x) -> bool:
    return isinstance(x, paddle.Tensor)


def _host(x: "paddle.Tensor") -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (no copy)."""
    return np.from_dlpack(x.detach())


def _int_input(x, name: str, dtype: str) -> np.ndarray:
    if not _is_tensor(x):
        raise CTCTypeError(f"{name} must be a paddle.Tensor of dtype {dtype}, got {type(x).__name__}")
    check_dtype(x, name, (dtype,), PaddleDtypeValueError, "as paddle.nn.functional.ctc_loss requires")
    if not x.place.is_cpu_place():
        x = x.cpu()
    return _host(x)


def _validate(log_probs, labels, input_lengths, label_lengths, blank, reduction):
    if not paddle.in_dynamic_mode():
        raise CTCRuntimeError("fastctc.paddle runs in Paddle's dynamic-graph mode only (it calls a CPU "
                              "engine from Python); under paddle.jit.to_static use paddle.nn.functional.ctc_loss")
    if not _is_tensor(log_probs):
        raise CTCTypeError(f"log_probs must be a paddle.Tensor, got {type(log_probs).__name__}")
    if not log_probs.place.is_cpu_place():
        raise CTCRuntimeError(f"log_probs is on {log_probs.place}; fastctc.paddle computes on CPU tensors only. "
                              f"Move the inputs with .cpu(), or use paddle.nn.functional.ctc_loss on the GPU.")
    check_dtype(log_probs, "log_probs", ("float32", "float64"), PaddleDtypeRuntimeError)
    T, N, C = check_rank(log_probs.shape, "log_probs", 3,
                         "(T, N, C) = [max_logit_length, batch_size, num_classes + 1]")
    check_reduction(reduction, CTCValueError)
    check_index(blank, "blank", C)  # before the labels, as Paddle orders its checks
    lab = _int_input(labels, "labels", "int32")
    il = _int_input(input_lengths, "input_lengths", "int64")
    ll = _int_input(label_lengths, "label_lengths", "int64")
    check_rank(lab.shape, "labels", 2, "(N, S) = [batch_size, max_label_length]")
    check_batch_size(lab.shape, "labels", N, "(N, S) = [batch_size, max_label_length]")
    for arr, name in ((il, "input_lengths"), (ll, "label_lengths")):
        check_shape(arr.shape, name, (N,), "(N,)", "matching log_probs' batch size")
    acts = _host(log_probs)
    # ranges (lengths within [0, T] and [0, S], labels within [0, C)) and the flat labels
    try:
        batch, blank = check_ctc_inputs(acts, lab, il, ll, blank, acts_name="log_probs", allow_unbatched=False)
    except (CTCValueError, CTCTypeError) as exc:  # the shared checks use PyTorch's names
        raise type(exc)(str(exc).replace("target_lengths", "label_lengths").replace("targets", "labels")) from None
    # warp-ctc never lets a path skip into a label equal to the blank (the blank-interleaved
    # trellis of PyTorch, which the engine runs, does), so such targets would get another
    # value than Paddle's: refuse them rather than differ silently
    hit = first_offender((lab == blank) & padded_mask(batch.label_lengths, lab.shape[1]))
    if hit is not None:
        n, s = hit
        raise CTCValueError(f"labels[{n}, {s}] = {blank} equals blank = {blank}; warp-ctc (Paddle) scores such "
                            f"targets with its own trellis rule, which fastctc.paddle does not reproduce: remove "
                            f"the blank from the labels or use paddle.nn.functional.ctc_loss")
    # warp-ctc's feasibility test: a target needs one frame per label plus one per
    # repeated neighbour (the blank that must separate them)
    L = batch.label_lengths.astype(np.int64)
    cannot_fit = L + repeats(lab, L) > batch.input_lengths
    empty = (batch.input_lengths == 0) & (L == 0)
    return batch, blank, cannot_fit, empty


def _warp_ctc_rules(costs, cannot_fit, empty):
    """Paddle's (warp-ctc's) values where the likelihood alone answers differently: a
    target that cannot fit costs 0, an empty input with an empty target +inf."""
    costs[cannot_fit] = 0
    costs[empty] = np.inf


class _WarpCTC(PyLayer):
    """Per-sequence losses (N,); the gradient is computed in the forward pass with the
    anticipated upstream weights and rescaled in backward only if they were not met."""

    @staticmethod
    def forward(ctx, log_probs, batch, blank, cannot_fit, empty, weights, time_scale, num_threads):
        base = weights if np.all(np.isfinite(weights) & (weights != 0)) else np.ones_like(weights)
        costs, grad, _ = _engine.run(batch, blank, True, want_grad=True,
                                     grad_weights=base.astype(np.float64) * time_scale, num_threads=num_threads)
        _warp_ctc_rules(costs, cannot_fit, empty)
        if cannot_fit.any():
            grad[:, cannot_fit, :] = 0  # the engine already gives zero rows; warp-ctc's rule says so too
        ctx.grad = grad
        ctx.base = base.astype(costs.dtype)
        return paddle.to_tensor(costs)

    @staticmethod
    def backward(ctx, dloss):
        grad = ctx.grad
        ctx.grad = None  # the buffer is handed to Paddle; a second backward is refused below
        if grad is None:
            raise CTCRuntimeError("fastctc.paddle: backward called twice, or on a loss computed without a "
                                  "gradient (log_probs.stop_gradient was True or gradients were disabled)")
        upstream = np.asarray(dloss.numpy(), dtype=grad.dtype).reshape(-1)
        if not np.array_equal(upstream, ctx.base):
            global _rescaled_backwards
            _rescaled_backwards += 1
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                grad *= (upstream / ctx.base)[None, :, None]
        return paddle.utils.dlpack.from_dlpack(grad)  # no copy: the tensor keeps the array alive


def _anticipated_weights(reduction, label_lengths, N, dtype):
    """The upstream gradient each sequence's loss will receive when the reduced loss is
    backpropagated with 1 (for 'none': when the losses are summed), as Paddle computes it."""
    if reduction == "mean":
        with np.errstate(divide="ignore"):
            return (np.asarray(1.0, dtype) / dtype.type(N)) / label_lengths.astype(dtype)
    return np.ones(N, dtype=dtype)


def ctc_loss(log_probs, labels, input_lengths, label_lengths, blank=0, reduction="mean",
             norm_by_times=False, zero_infinity=False, *, num_threads=None):
    """paddle.nn.functional.ctc_loss computed by fastctc: same arguments, values and gradients.

    Paddle's CTC is warp-ctc: the first argument holds unnormalised scores and the softmax
    is fused into the loss (see the module docstring for the rules kept from Paddle).

    Parameters
    ----------
    log_probs : paddle.Tensor, (T, N, C), float32 or float64
        Unnormalised scores (despite the name, as in Paddle), time-major, on the CPU.
    labels : paddle.Tensor, (N, S), int32
        Padded labels; inside label_length they must lie in [0, C) and differ from blank.
    input_lengths : paddle.Tensor, (N,), int64
        Frames of each sequence, in [0, T].
    label_lengths : paddle.Tensor, (N,), int64
        Labels of each target, in [0, S].
    blank : int, default 0
        The blank class, in [0, C).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'mean' divides each loss by its label_length (no clamp: a zero label_length gives
        inf or nan, as in Paddle) and averages; 'sum' adds; 'none' returns (N,).
    norm_by_times : bool, default False
        Divide each sequence's gradient (not its loss) by its input_length.
    zero_infinity : bool, default False
        Turn +inf losses into 0 (after warp-ctc's rule, only an empty input with an
        empty target has one).
    num_threads : int or None, default None
        Keyword-only.  Caps the CPU threads of this call.

    Returns
    -------
    paddle.Tensor
        (N,) for reduction='none', else the reduced loss; log_probs' dtype.
        Differentiable with respect to log_probs.  A target that cannot fit its input
        (label_length + repeated neighbours > input_length) has loss 0 and a zero
        gradient (warp-ctc's rule).

    Raises
    ------
    ValueError
        As in Paddle: a bad blank, rank, batch size, label_lengths > S
        (fastctc.CTCValueError); labels not int32 or lengths not int64
        (PaddleDtypeValueError, also a CTCTypeError).  Where Paddle crashes or returns
        meaningless numbers: input_lengths outside [0, T], negative lengths, labels
        outside [0, C) or equal to blank, a reduction other than 'none'/'mean'/'sum'.
    RuntimeError
        log_probs not float32/float64 (PaddleDtypeRuntimeError, also a CTCTypeError);
        log_probs not on the CPU, or a static-graph call (fastctc.CTCRuntimeError).
    CTCTypeError
        An argument that is not a paddle.Tensor; norm_by_times, zero_infinity or
        num_threads of the wrong type.

    Examples
    --------
    >>> import paddle
    >>> from fastctc.paddle import ctc_loss
    >>> logits = paddle.zeros([2, 1, 2], dtype="float64")       # (T, N, C), uniform
    >>> logits.stop_gradient = False
    >>> labels = paddle.to_tensor([[1]], dtype="int32")
    >>> lengths = paddle.to_tensor([2], dtype="int64"), paddle.to_tensor([1], dtype="int64")
    >>> loss = ctc_loss(logits, labels, *lengths, reduction="sum")
    >>> loss.backward()
    >>> print(round(float(loss), 4))
    0.2877
    >>> print(logits.grad.numpy()[:, 0].round(4))              # softmax - occupancy
    [[ 0.1667 -0.1667]
     [ 0.1667 -0.1667]]
    """
    norm_by_times = check_flag(norm_by_times, "norm_by_times")
    zero_infinity = check_flag(zero_infinity, "zero_infinity")
    num_threads = check_num_threads(num_threads)
    batch, blank, cannot_fit, empty = _validate(log_probs, labels, input_lengths, label_lengths, blank, reduction)
    N = batch.acts.shape[1]
    dtype = batch.acts.dtype
    want_grad = (not log_probs.stop_gradient) and paddle.is_grad_enabled()
    weights = _anticipated_weights(reduction, batch.label_lengths, N, dtype)
    time_scale = np.ones(N)
    if norm_by_times:
        # an empty input has no gradient rows to scale: Paddle divides its zero rows by 0
        # and returns NaN there (all T rows); fastctc keeps them 0
        time_scale = 1.0 / np.maximum(batch.input_lengths.astype(np.float64), 1.0)
    if want_grad:
        loss = _WarpCTC.apply(log_probs, batch, blank, cannot_fit, empty, weights, time_scale, num_threads)
    else:
        costs, _, _ = _engine.run(batch, blank, True, num_threads=num_threads)
        _warp_ctc_rules(costs, cannot_fit, empty)
        loss = paddle.to_tensor(costs)
    # the rest is Paddle's own code path, so values and gradients match it exactly
    if zero_infinity:
        loss = paddle.where(paddle.isinf(loss), paddle.zeros_like(loss), loss)
    if reduction == "mean":
        loss = paddle.mean(loss / label_lengths.astype(loss.dtype))
    elif reduction == "sum":
        loss = paddle.sum(loss)
    return loss


class CTCLoss(paddle.nn.Layer):
    """paddle.nn.CTCLoss computed by fastctc: a Layer whose forward is `ctc_loss`.

    Called as ``loss(log_probs, labels, input_lengths, label_lengths, norm_by_times=False)``.

    Parameters
    ----------
    blank : int, default 0
        The blank class, in [0, C) (checked at call time).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As for `ctc_loss`.
    zero_infinity : bool, default False
        As for `ctc_loss`.
    num_threads : int or None, default None
        Keyword-only.  Caps the CPU threads of each call.

    Raises
    ------
    CTCValueError
        A reduction other than 'none', 'mean' or 'sum'.
    CTCTypeError
        zero_infinity or num_threads of the wrong type.
    """

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False,
                 *, num_threads=None):
        super().__init__()
        check_reduction(reduction, CTCValueError)
        self.blank = blank
        self.reduction = reduction
        self.zero_infinity = check_flag(zero_infinity, "zero_infinity")
        self.num_threads = check_num_threads(num_threads)

    def extra_repr(self):
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}"

    def forward(self, log_probs, labels, input_lengths, label_lengths, norm_by_times=False):
        """The loss of a batch, as `ctc_loss` computes it with this layer's options.

        Parameters
        ----------
        log_probs : paddle.Tensor, (T, N, C), float32 or float64
            As for `ctc_loss`.
        labels : paddle.Tensor, (N, S), int32
            As for `ctc_loss`.
        input_lengths : paddle.Tensor, (N,), int64
            As for `ctc_loss`.
        label_lengths : paddle.Tensor, (N,), int64
            As for `ctc_loss`.
        norm_by_times : bool, default False
            As for `ctc_loss`.

        Returns
        -------
        paddle.Tensor
            As `ctc_loss` returns it.
        """
        return ctc_loss(log_probs, labels, input_lengths, label_lengths, self.blank, self.reduction,
                        norm_by_times=norm_by_times, zero_infinity=self.zero_infinity,
                        num_threads=self.num_threads)
