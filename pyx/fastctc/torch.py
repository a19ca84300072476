"""fastctc.torch: autograd drop-ins for torch.nn.functional.ctc_loss and torch.nn.CTCLoss.

    from fastctc.torch import ctc_loss, CTCLoss     # instead of torch.nn.functional / torch.nn

Same arguments, every input form PyTorch accepts (batched (T, N, C) or unbatched (T, C)
log_probs; padded (N, S) or concatenated 1-D targets; lengths as tensors, tuples or
lists), same reductions ('none', 'sum', 'mean': each loss divided by max(target_length, 1),
then averaged), same forward values.

CPU tensors are handed to the C engine without copying (a contiguous tensor is read in
place through `tensor.detach().numpy()`; so is any layout whose class axis is contiguous,
e.g. a batch-major tensor transposed to (T, N, C)).  The forward pass computes the
gradient at the same time (one forward-backward sweep) when log_probs requires grad.

Gradient: the true derivative d loss / d log_probs, so torch.autograd.gradcheck passes in
float64.  PyTorch's own CTC backward returns that plus exp(log_probs) (it assumes the
inputs are normalised); after a log_softmax both give the same gradient with respect to
the logits.  Infinite losses (targets that cannot fit) have zero gradient rows.

CUDA tensors go to fastctc._cuda.run_device when the GPU path is available; otherwise a
RuntimeError says why it is not.
"""
from __future__ import annotations

import numpy as np
import torch

from . import _engine
from ._validate import (CTCRuntimeError, CTCTypeError, check_ctc_inputs, check_flag, check_num_threads,
                        check_reduction)

__all__ = ["ctc_loss", "CTCLoss", "gpu_status"]


def _host_ints(x, name):
    """Targets or lengths as a NumPy integer array (tensors copied to the host if on a device)."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise CTCTypeError(f"{name} must hold integers, got dtype {x.dtype}")
        return x.detach().cpu().numpy()
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return np.asarray(x)
    return x  # sequences and arrays: the validator checks them


def gpu_status():
    """(available, reason): whether CUDA tensors can be handled, and why not if they cannot."""
    try:
        from . import _cuda
    except ImportError as exc:
        return False, f"fastctc._cuda could not be imported ({exc}); this build has no GPU path"
    try:
        status = _cuda.status()
    except Exception as exc:  # a broken driver must not take the CPU path down with it
        return False, f"fastctc._cuda.status() failed: {exc}"
    if not status.get("available"):
        return False, status.get("reason", "fastctc._cuda reports the GPU path unavailable")
    return True, ""


def _shape_probe(log_probs):
    """A tiny NumPy stand-in with log_probs' shape and dtype (for validating device tensors
    without copying them to the host): every element aliases one row of C zeros."""
    dt = np.float32 if log_probs.dtype == torch.float32 else np.float64
    C = log_probs.shape[-1]
    row = np.zeros(max(C, 1), dtype=dt)
    strides = (0,) * (log_probs.dim() - 1) + (row.itemsize,)
    return np.lib.stride_tricks.as_strided(row, shape=tuple(log_probs.shape), strides=strides, writeable=False)


def _validate(log_probs, targets, input_lengths, target_lengths, blank, from_logits):
    if not isinstance(log_probs, torch.Tensor):
        raise CTCTypeError(f"log_probs must be a torch.Tensor, got {type(log_probs).__name__}")
    if log_probs.dtype not in (torch.float32, torch.float64):
        raise CTCTypeError(f"log_probs must have dtype torch.float32 or torch.float64, got {log_probs.dtype}")
    acts_name = "logits" if from_logits else "log_probs"
    if log_probs.device.type not in ("cpu", "cuda"):
        raise CTCRuntimeError(f"log_probs is on device {log_probs.device}; fastctc computes on CPU and CUDA "
                              f"tensors only")
    if log_probs.device.type == "cpu":
        acts = log_probs.detach().numpy()  # shares memory: no copy
    else:
        acts = _shape_probe(log_probs)
    return check_ctc_inputs(acts, _host_ints(targets, "targets"), _host_ints(input_lengths, "input_lengths"),
                            _host_ints(target_lengths, "target_lengths"), blank, acts_name=acts_name)


def _run_device(log_probs, batch, blank, from_logits, want_grad):
    """(costs (N,), grad (T, N, C) or None) on log_probs' device through fastctc._cuda."""
    ok, reason = gpu_status()
    if not ok:
        raise CTCRuntimeError(f"log_probs is on {log_probs.device}, but fastctc's GPU path is unavailable: "
                              f"{reason}. Move the inputs to the CPU (.cpu()) to use the CPU engine.")
    from . import _cuda
    device = log_probs.device
    N = batch.label_lengths.shape[0]
    S = int(batch.label_lengths.max()) if N else 0
    padded = np.zeros((N, S), dtype=np.int32)
    if S:
        mask = np.arange(S)[None, :] < batch.label_lengths[:, None]
        padded[mask] = batch.labels
    acts = log_probs.detach()
    if acts.dim() == 2:
        acts = acts.unsqueeze(1)
    costs, grad, _ = _cuda.run_device(
        acts, torch.from_numpy(padded).to(device), torch.from_numpy(batch.input_lengths).to(device),
        torch.from_numpy(batch.label_lengths).to(device), blank=blank, from_logits=from_logits,
        want_grad=want_grad, grad_weights=None, want_alpha=False)
    if grad is not None and log_probs.dim() == 2:
        grad = grad[:, 0, :]
    return costs, grad


def _reduce(costs, label_lengths, reduction, zero_infinity):
    """(reduced loss, per-sequence weight of each loss in it) with PyTorch's reductions."""
    if zero_infinity:
        costs = torch.where(torch.isposinf(costs), torch.zeros((), dtype=costs.dtype, device=costs.device), costs)
    N = costs.shape[0]
    if reduction == "none":
        return costs, None
    if reduction == "sum":
        return costs.sum(), None
    divisor = label_lengths.clamp(min=1).to(device=costs.device, dtype=costs.dtype)
    return (costs / divisor).mean(), 1.0 / (divisor * N)


class _CTCLossFunction(torch.autograd.Function):
    """Forward: the engine's losses (and, when needed, its per-sequence gradient rows).
    Backward: those rows scaled by the upstream gradient of each sequence's loss."""

    @staticmethod
    def forward(ctx, log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                from_logits, num_threads):
        batch, blank = _validate(log_probs, targets, input_lengths, target_lengths, blank, from_logits)
        want_grad = bool(ctx.needs_input_grad[0])
        if log_probs.device.type == "cpu":
            costs, grad, _ = _engine.run(batch, blank, from_logits, want_grad=want_grad, num_threads=num_threads)
            costs = torch.from_numpy(costs)
            if grad is not None:
                grad = torch.from_numpy(grad)
                if batch.unbatched:
                    grad = grad[:, 0, :]
        else:
            costs, grad = _run_device(log_probs, batch, blank, from_logits, want_grad)
        label_lengths = torch.from_numpy(batch.label_lengths)
        loss, weights = _reduce(costs, label_lengths, reduction, zero_infinity)
        if batch.unbatched and reduction == "none":
            loss = loss.reshape(())
        if zero_infinity and grad is not None:
            # the engine already returns zero rows for infinite losses; this keeps any other
            # backend honest about zero_infinity's "and its gradient" promise
            bad = torch.isposinf(costs).to(grad.device)
            if bad.any():
                if batch.unbatched:
                    grad.zero_()
                else:
                    grad[:, bad, :] = 0
        ctx.reduction = reduction
        ctx.unbatched = batch.unbatched
        ctx.save_for_backward(grad, weights)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        grad, weights = ctx.saved_tensors
        if grad is None:
            return (None,) * 9
        if ctx.reduction == "none" and not ctx.unbatched:
            scale = grad_out.to(grad.dtype).reshape(1, -1, 1)
        elif weights is not None:  # mean
            w = weights.to(grad.dtype) * grad_out.to(grad.dtype)
            scale = w.reshape(1, -1) if ctx.unbatched else w.reshape(1, -1, 1)
            if ctx.unbatched:
                scale = scale.reshape(())
        else:
            scale = grad_out.to(grad.dtype)
        return (grad * scale,) + (None,) * 8


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
             zero_infinity=False, *, from_logits=False, num_threads=None):
    """torch.nn.functional.ctc_loss, computed by fastctc (autograd-aware).

    Extra keyword-only options: from_logits=True reads log_probs as unnormalised scores and
    fuses the log_softmax (the gradient is then d loss / d logits); num_threads caps the
    CPU threads used for this call.
    """
    reduction = check_reduction(reduction)
    zero_infinity = check_flag(zero_infinity, "zero_infinity")
    from_logits = check_flag(from_logits, "from_logits")
    num_threads = check_num_threads(num_threads)
    return _CTCLossFunction.apply(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                                  zero_infinity, from_logits, num_threads)


class CTCLoss(torch.nn.Module):
    """torch.nn.CTCLoss, computed by fastctc: CTCLoss(blank=0, reduction='mean', zero_infinity=False)."""

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False):
        super().__init__()
        self.blank = blank
        self.reduction = check_reduction(reduction)
        self.zero_infinity = check_flag(zero_infinity, "zero_infinity")

    def extra_repr(self):
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}"

    def forward(self, log_probs, targets, input_lengths, target_lengths):
        return ctc_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction,
                        self.zero_infinity)
