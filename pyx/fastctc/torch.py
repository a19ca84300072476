"""fastctc.torch: autograd drop-ins for torch.nn.functional.ctc_loss and torch.nn.CTCLoss,
and the registered torch operator `torch.ops.fastctc.ctc_loss` behind them.

    from fastctc.torch import ctc_loss, CTCLoss     # instead of torch.nn.functional / torch.nn

Same arguments, every input form PyTorch accepts (batched (T, N, C) or unbatched (T, C)
log_probs; padded (N, S) or concatenated 1-D targets; lengths as tensors, tuples or
lists), same reductions ('none', 'sum', 'mean': each loss divided by max(target_length, 1),
then averaged), same forward values.

Two routes to the same engine:

* eager calls (the common case) go through a small torch.autograd.Function whose
  argument check is compiled (fastctc._fast) and which reads CPU tensors in place, so a
  call costs a few microseconds beyond the trellis itself.  A torch.library op costs
  25-40 us of Python dispatch per call, more than a whole small CTC problem.
* under torch.compile / torch.export (and for tensor subclasses such as FakeTensor) the
  call is the registered custom op `fastctc::ctc_loss` (torch.library.custom_op with a fake
  kernel for shapes, an autograd formula and an autocast rule), so compiled models trace
  it with no graph break, with dynamic batch and time sizes.

Gradient: the true derivative d loss / d log_probs, so torch.autograd.gradcheck passes in
float64.  PyTorch's own CTC backward returns that plus exp(log_probs) (it assumes the
inputs are normalised); after a log_softmax both give the same gradient with respect to
the logits.  Infinite losses (targets that cannot fit) have zero gradient rows.  There is
no second derivative: a double backward through the loss raises RuntimeError, as PyTorch's
does (it never returns a silently wrong Hessian).

Dtypes: float32 and float64 are computed as given; float16 and bfloat16 are computed in
float32 (the loss is float32, the gradient comes back in the input's dtype), and under
torch.autocast the op runs in float32.

Errors: every input error is a fastctc error that is also a RuntimeError
(CTCValueRuntimeError / CTCTypeRuntimeError: subclasses of ValueError / TypeError and of
RuntimeError, the class torch.nn.functional.ctc_loss raises for bad lengths, shapes and
dtypes), so `except RuntimeError` keeps working.  Empty
log_probs (T, N or C zero) raise as PyTorch 2.13 does.

CUDA tensors go to the GPU path's sync-free entry points (fastctc._cuda_launch's
torch_forward / torch_backward, as forward_call / backward_call) when it is available,
otherwise a RuntimeError says why it is not.  On CUDA nothing waits for the device:
targets and lengths may live on the device (their values are then checked there: an
out-of-range value makes that sequence's loss NaN) or on the host (checked as on the CPU,
uploaded without blocking); reduction 'mean' and zero_infinity are computed on the device;
every kernel runs on the current stream; with targets and lengths on the device a forward +
backward can be captured in a CUDA graph.  The eager gradient is computed in the backward,
already scaled by the upstream gradient (docs/gpu.md, "fastctc.torch on CUDA tensors").
"""
from __future__ import annotations

import numpy as np
import torch

from . import _engine, _fast
from ._validate import (
    CTCRuntimeError,
    CTCTypeError,
    CTCTypeRuntimeError,
    CTCValueError,
    CTCValueRuntimeError,
    as_runtime_error,
    check_call_options,
    check_ctc_inputs,
    check_flag,
    check_reduction,
)

__all__ = ["ctc_loss", "CTCLoss", "gpu_status"]

_HALF = (torch.float16, torch.bfloat16)
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_REDUCTIONS = ("none", "mean", "sum")
_NO_SECOND_DERIVATIVE = (
    "fastctc.torch: the CTC loss has no second derivative (its gradient is computed by the engine, "
    "not by differentiable torch operations); a double backward (create_graph=True followed by "
    "another backward) through it is not supported, as PyTorch's own "
    "'derivative for aten::_ctc_loss_backward is not implemented'")


def _host_ints(x, name):
    """Targets or lengths as a NumPy integer array (tensors copied to the host if on a device)."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise CTCTypeRuntimeError(f"{name} must hold integers, got dtype {x.dtype}")
        return x.detach().numpy() if x.device.type == "cpu" else x.detach().cpu().numpy()
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return np.asarray(x)
    return x  # sequences and arrays: the validator checks them


def _cpu_ints(x, name):
    """_host_ints, with the common case (a CPU integer tensor) first and cheapest: its
    NumPy view (a float or bool one is then rejected by the validator's dtype check)."""
    if type(x) is torch.Tensor:
        try:
            arr = x.numpy()  # raises for CUDA tensors; integer tensors cannot require grad
        except Exception:
            return _host_ints(x, name)
        if arr.dtype.kind in "iu":
            return arr
    return _host_ints(x, name)


def gpu_status():
    """Whether CUDA tensors can be handled, and why not if they cannot.

    Returns
    -------
    available : bool
        True when fastctc's GPU path can compute on CUDA tensors here.
    reason : str
        Empty when available; otherwise why not (the GPU path is not part of this build,
        no driver or device, its status check failed).

    Examples
    --------
    >>> from fastctc.torch import gpu_status
    >>> available, reason = gpu_status()
    >>> available == (reason == "")
    True
    """
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


def _check_acts(log_probs, acts_name):
    """Type, dtype, device and emptiness of the activations (PyTorch's own first checks)."""
    if not isinstance(log_probs, torch.Tensor):
        raise CTCTypeError(f"{acts_name} must be a torch.Tensor, got {type(log_probs).__name__}")
    if log_probs.dtype not in _FLOATS:
        raise CTCTypeRuntimeError(f"{acts_name} must have dtype torch.float32, torch.float64, torch.float16 or "
                                  f"torch.bfloat16, got {log_probs.dtype}")
    if log_probs.device.type not in ("cpu", "cuda"):
        raise CTCRuntimeError(f"{acts_name} is on device {log_probs.device}; fastctc computes on CPU and CUDA "
                              f"tensors only")
    if log_probs.dim() in (2, 3) and log_probs.numel() == 0:
        # PyTorch 2.13 raises RuntimeError('log_probs tensor must not be empty') here
        raise CTCValueRuntimeError(f"{acts_name} must not be empty (T, N and C at least 1), got shape "
                                   f"{tuple(log_probs.shape)}")


def _shape_probe(log_probs):
    """A tiny NumPy stand-in with log_probs' shape and dtype (for validating device tensors
    without copying them to the host): every element aliases one row of C zeros."""
    dt = np.float64 if log_probs.dtype == torch.float64 else np.float32
    C = log_probs.shape[-1]
    row = np.zeros(max(C, 1), dtype=dt)
    strides = (0,) * (log_probs.dim() - 1) + (row.itemsize,)
    return np.lib.stride_tricks.as_strided(row, shape=tuple(log_probs.shape), strides=strides, writeable=False)


def _validate(log_probs, targets, input_lengths, target_lengths, blank, from_logits, acts=None):
    """(Batch, blank) for the engine; input errors as CTCValueRuntimeError / CTCTypeRuntimeError.
    acts: the NumPy view of a CPU log_probs (computed by the caller), else derived here."""
    acts_name = "logits" if from_logits else "log_probs"
    try:
        if acts is None:
            _check_acts(log_probs, acts_name)
            if log_probs.device.type == "cpu":
                acts = _host_acts(log_probs).numpy()
            else:
                acts = _shape_probe(log_probs)
        tg = _cpu_ints(targets, "targets")
        il = _cpu_ints(input_lengths, "input_lengths")
        tl = _cpu_ints(target_lengths, "target_lengths")
        fast = _fast.prepare(acts, tg, il, tl, blank)
        if fast is not None:
            return fast
        return check_ctc_inputs(acts, tg, il, tl, blank, acts_name=acts_name)
    except (CTCValueError, CTCTypeError) as exc:
        if isinstance(exc, RuntimeError):
            raise
        raise as_runtime_error(exc) from None


def _host_acts(log_probs):
    """The CPU activations the engine reads: the tensor's own memory for float32/float64
    (no copy), a float32 copy for float16/bfloat16."""
    acts = log_probs.detach()
    return acts.float() if acts.dtype in _HALF else acts


# ---------------------------------------------------------------------------------------
# CUDA route: fastctc._cuda_launch's sync-free entry points (torch_forward / torch_backward,
# as forward_call / backward_call).
#
# Nothing here reads a CUDA tensor's values on the host: targets and lengths that live on
# the device are checked for dtype, shape and device only (a bad value makes that
# sequence's cost NaN, on the device); targets and lengths held on the host are checked
# as on the CPU route (the same errors) and uploaded in one pinned, non-blocking copy.
# Every launch goes to the current stream of log_probs' device, so the route can be
# captured in a CUDA graph when targets and lengths are CUDA tensors.
#
# Eager autograd (_CudaCTCFunction): the forward keeps the trellis (alpha and beta rows,
# 2 L + 1 states a frame) in a workspace (with the launcher's checked call, so that the
# backward is one argument packing and one launch) and the backward's one bandwidth-bound kernel
# writes the final gradient, already scaled by the upstream gradient and, for 'mean', by
# 1 / (max(target_length, 1) N) on the device.  Lazier than a gradient made in the forward:
# no (T, N, C) buffer held between forward and backward (the workspace is T N (2 L + 1)
# accumulators, C / (2 L) times smaller on large alphabets), no second pass multiplying it
# by the upstream gradient, and no gradient at all when backward never runs.
# The registered op (torch.compile) keeps its functional contract (losses and the gradient
# of their sum, computed in the forward; its backward op scales it): a custom op's outputs
# must be described by its fake kernel from shapes alone, and the workspace's size depends
# on the longest target, a value held on the host.

_GPU_CHECKED = [None]  # the fastctc._cuda module whose status() said the GPU path works


def _launcher():
    """fastctc._cuda_launch, after making sure the GPU path is available (asked once per
    process: the status query costs driver calls), else a RuntimeError saying why."""
    import sys
    mod = sys.modules.get("fastctc._cuda")
    if mod is None or mod is not _GPU_CHECKED[0]:
        ok, reason = gpu_status()
        if not ok:
            raise CTCRuntimeError(f"log_probs is on a CUDA device, but fastctc's GPU path is unavailable: {reason}. "
                                  "Move the inputs to the CPU (.cpu()) to use the CPU engine.")
        _GPU_CHECKED[0] = sys.modules.get("fastctc._cuda")
    from . import _cuda_launch
    return _cuda_launch


def _on_device(x):
    """Whether x is a CUDA tensor (its values are then never read on the host)."""
    return isinstance(x, torch.Tensor) and x.is_cuda


def _upload(arr, device):
    """Host integers (int64 ndarray) to the device without blocking the host: copied into
    pinned memory, then an asynchronous copy on the current stream (the caching host
    allocator does not reuse the pinned block before that copy has run)."""
    return torch.from_numpy(arr).pin_memory().to(device, non_blocking=True)


def _cuda_operands(log_probs, targets, input_lengths, target_lengths, blank, from_logits):
    """The launcher's operands for a CUDA log_probs, checked without reading a device value:
    (acts (T, N, C) view, targets, input_lengths (N,), target_lengths (N,), blank,
    max_target_length or None, unbatched).  Host-held targets and lengths: checked by the CPU
    route's validator (same errors) and uploaded together, int64, in one copy; CUDA-held
    ones: dtype, shape and device checked here, values on the device."""
    acts_name = "logits" if from_logits else "log_probs"
    ops = (targets, input_lengths, target_lengths)
    on = tuple(_on_device(x) for x in ops)
    try:
        _check_acts(log_probs, acts_name)
        if log_probs.dim() not in (2, 3):
            raise CTCValueError(f"{acts_name} must have rank 2 or 3, shape (T, N, C) or unbatched (T, C); "
                                f"got shape {tuple(log_probs.shape)}")
        device = log_probs.device
        for x, name, dev in zip(ops, ("targets", "input_lengths", "target_lengths"), on):
            if dev and x.device != device:
                raise CTCValueError(f"{name} is on {x.device} but {acts_name} is on {device}: pass it on "
                                    f"{device} or on the host")
            if dev and x.dtype not in (torch.int32, torch.int64):
                raise CTCTypeError(f"{name} on the device must have dtype torch.int32 or torch.int64, got {x.dtype}")
    except (CTCValueError, CTCTypeError) as exc:
        raise as_runtime_error(exc) from None
    unbatched = log_probs.dim() == 2
    acts = log_probs.detach().resolve_neg()  # a negative-bit view holds -values: the kernels read memory
    if unbatched:
        acts = acts.unsqueeze(1)
    N = acts.shape[1]
    if all(on):  # nothing held on the host: shapes only, no validator pass over stand-ins
        from ._validate import check_index
        try:
            return (acts, *_device_shapes(acts, targets, input_lengths, target_lengths, unbatched, acts_name),
                    check_index(blank, "blank", acts.shape[2]), None, unbatched)
        except (CTCValueError, CTCTypeError) as exc:
            raise as_runtime_error(exc) from None
    if not any(on):
        probe = _shape_probe(log_probs)  # shape and dtype only: the values stay on the device
        batch, blank = _validate(log_probs, targets, input_lengths, target_lengths, blank, from_logits, acts=probe)
        total = batch.labels.shape[0]
        buf = _upload(np.concatenate([batch.labels, batch.input_lengths, batch.label_lengths]).astype(np.int64),
                      device)
        lmax = int(batch.label_lengths.max()) if N else 0
        return acts, buf[:total], buf[total:total + N], buf[total + N:], blank, lmax, unbatched
    # Some operands on the device: the validator checks the host-held ones, seeing zeros in
    # place of the device-held ones (the validator's own shape rules apply to those; for
    # concatenated targets with device lengths, lengths summing to their count, so that
    # every host-held label is range-checked).
    zeros = lambda shape: np.broadcast_to(np.zeros((), np.int64), tuple(shape))  # noqa: E731
    tg_h = zeros(targets.shape) if on[0] else _cpu_ints(targets, "targets")
    il_h = zeros(input_lengths.shape) if on[1] else input_lengths
    if on[2]:
        tl_h = np.zeros(tuple(target_lengths.shape), np.int64)
        if np.ndim(tg_h) == 1 and tl_h.size:
            tl_h.reshape(-1)[0] = np.shape(tg_h)[0]
    else:
        tl_h = target_lengths
    batch, blank = _validate(log_probs, tg_h, il_h, tl_h, blank, from_logits, acts=_shape_probe(log_probs))
    host, shapes = [], []
    if not on[0]:
        host.append(np.asarray(tg_h, dtype=np.int64).reshape(-1))
        shapes.append(np.shape(tg_h))
    if not on[1]:
        host.append(batch.input_lengths.astype(np.int64))
        shapes.append((N,))
    if not on[2]:
        host.append(batch.label_lengths.astype(np.int64))
        shapes.append((N,))
    parts = []
    if host:
        buf, pos = _upload(np.concatenate(host), device), 0
        for a, shape in zip(host, shapes):
            parts.append(buf[pos:pos + a.shape[0]].view(shape))
            pos += a.shape[0]
    parts.reverse()
    tg = targets if on[0] else parts.pop()
    il = input_lengths.reshape(N) if on[1] else parts.pop()
    tl = target_lengths.reshape(N) if on[2] else parts.pop()
    lmax = None if on[2] else (int(batch.label_lengths.max()) if N else 0)
    return acts, tg, il, tl, blank, lmax, unbatched


def _device_shapes(acts, targets, input_lengths, target_lengths, unbatched, acts_name):
    """(targets, input_lengths (N,), target_lengths (N,)) for device-held operands, their
    shapes checked by the validator's own rules (zero stand-ins of the same shapes for the
    lengths, which it reads by element count)."""
    from ._validate import INT32_MAX, check_batch_size, check_lengths, check_rank
    T, N, C = acts.shape
    for dim_name, dim in (("T", T), ("N", N), ("C", C)):
        if dim > INT32_MAX:
            raise CTCValueError(f"{acts_name} dimension {dim_name} = {dim} exceeds {INT32_MAX}")
    if targets.dim() == 2:
        check_batch_size(tuple(targets.shape), "targets", N, "(N, S)")
    elif targets.dim() != 1:
        check_rank(tuple(targets.shape), "targets", (2, 1), "(N, S) padded or (sum(target_lengths),) concatenated")
    for x, name in ((input_lengths, "input_lengths"), (target_lengths, "target_lengths")):
        check_lengths(np.broadcast_to(np.zeros((), np.int64), tuple(x.shape)), name, N, unbatched)
    return targets, input_lengths.reshape(N), target_lengths.reshape(N)


def _launched(fn, *args, **kwargs):
    """A launcher entry point, its input errors raised as the torch door's RuntimeError classes."""
    try:
        return fn(*args, **kwargs)
    except (CTCValueError, CTCTypeError) as exc:
        if isinstance(exc, RuntimeError):
            raise
        raise as_runtime_error(exc) from None


def _compiled_call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, from_logits,
                   want_grad):
    """The compiled CUDA route (the default launch mode: fastctc._cuda_fast.torch_call): (loss,
    call, saved tensors) for a plain call, else None (the Python route then runs)."""
    L = _launcher()
    fast = L.compiled_route()
    if fast is None:
        return None
    return fast.torch_call(log_probs, targets, input_lengths, target_lengths, blank, L.REDUCE_MODES[reduction],
                           zero_infinity, from_logits, want_grad)


def _cuda_costs(log_probs, targets, input_lengths, target_lengths, blank, from_logits, want_grad):
    """(costs (N,) on the device, the launcher's call (its operands, plan and workspace: what
    the backward needs), operands): the trellis queued, nothing read back.  The launcher's
    forward_call / backward_call are torch_forward / torch_backward keeping the call, so a
    backward does not check and plan the same operands again."""
    L = _launcher()
    ops = _cuda_operands(log_probs, targets, input_lengths, target_lengths, blank, from_logits)
    acts, tg, il, tl, blank, lmax, _ = ops
    costs, call = _launched(L.forward_call, acts, tg, il, tl, blank=blank, from_logits=from_logits,
                            want_grad=want_grad, max_target_length=lmax)
    return costs, call, ops


def _cuda_grad(call, weights, mean, unbatched):
    """The gradient (like log_probs) from the forward's call: weights[n] (or one weight for
    all; None: 1) times d cost_n / d acts, further divided by max(target_length_n, 1) N on
    the device when mean."""
    grad = _launched(_launcher().backward_call, call, weights, mean=mean)
    return grad[:, 0] if unbatched else grad


def _cuda_loss(costs, call, ops, reduction, zero_infinity):
    """The reduced loss: by the launcher's reduction kernel (one launch, the compiled
    route's numbers) when the call has one, else by torch operations."""
    reduce = getattr(call, "launch_reduce", None)
    if reduce is None:
        loss = _reduce(costs, ops[3], reduction, zero_infinity)
    elif reduction == "none" and not zero_infinity:
        loss = costs
    else:
        loss = costs if reduction == "none" else costs.new_empty(())
        reduce(costs.data_ptr(), loss.data_ptr(), _launcher().REDUCE_MODES[reduction], zero_infinity)
    return loss.reshape(()) if ops[6] and reduction == "none" else loss


class _CudaCTCFunction(torch.autograd.Function):
    """Eager autograd on CUDA: forward = trellis + reduction on the device (workspace kept),
    backward = one gradient kernel weighted by the upstream gradient (see the note above).
    args: (targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
    from_logits), one tuple so that autograd does not inspect each of them per call."""

    @staticmethod
    def forward(ctx, log_probs, args):
        targets, input_lengths, target_lengths, blank, reduction, zero_infinity, from_logits = args
        done = _compiled_call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                              from_logits, True)
        if done is not None:  # the compiled route: checks, launches and reduction in one C call
            loss, call, saved = done
            ctx.save_for_backward(log_probs, *saved)
            ctx.call, ctx.mean, ctx.unbatched, ctx.compiled = call, reduction == "mean", False, True
            return loss
        ctx.compiled = False
        costs, call, ops = _cuda_costs(log_probs, targets, input_lengths, target_lengths, blank, from_logits, True)
        # the arrays the call reads (activations, targets, lengths, workspace) become saved
        # tensors: freed after the backward like any (a graph kept alive by a loss tensor
        # does not hold the workspace), and autograd refuses a backward after an in-place
        # change of one of them; the call itself keeps their addresses only
        ctx.save_for_backward(log_probs, *call.arrays())
        call.release()
        ctx.call, ctx.mean, ctx.unbatched = call, reduction == "mean", ops[6]
        return _cuda_loss(costs, call, ops, reduction, zero_infinity)

    @staticmethod
    def backward(ctx, grad_out):
        log_probs = ctx.saved_tensors[0]
        # grad_out: (N,) for 'none', () otherwise: the kernel reads it with its stride, on the
        # device, as memory (so a view with torch's negative bit is resolved first)
        grad_out = grad_out.resolve_neg()
        if ctx.compiled:
            grad = ctx.call.backward(grad_out, ctx.mean)
        else:
            grad = _cuda_grad(ctx.call, grad_out, ctx.mean, ctx.unbatched)
        if torch.is_grad_enabled():  # create_graph=True: mark the result as not differentiable again
            grad = _NoSecondDerivative.apply(grad, log_probs)
        return grad, None


def _cuda_ctc_loss(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, from_logits):
    """ctc_loss for a CUDA log_probs (eager): sync-free, graph-capturable with device targets."""
    if log_probs.requires_grad and torch.is_grad_enabled():
        return _CudaCTCFunction.apply(log_probs, (targets, input_lengths, target_lengths, blank, reduction,
                                                  zero_infinity, from_logits))
    done = _compiled_call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                          from_logits, False)
    if done is not None:
        return done[0]
    costs, call, ops = _cuda_costs(log_probs, targets, input_lengths, target_lengths, blank, from_logits, False)
    return _cuda_loss(costs, call, ops, reduction, zero_infinity)


def _cuda_forward(log_probs, args, want_grad):
    """_forward's contract on CUDA: (loss, gradient rows weighted by the reduction or None)."""
    targets, input_lengths, target_lengths, blank, reduction, zero_infinity, from_logits, _ = args
    costs, call, ops = _cuda_costs(log_probs, targets, input_lengths, target_lengths, blank, from_logits, want_grad)
    grad = _cuda_grad(call, None, reduction == "mean", ops[6]) if want_grad else None
    return _cuda_loss(costs, call, ops, reduction, zero_infinity), grad


def _cuda_op(acts, targets, input_lengths, target_lengths, blank, from_logits, want_grad):
    """fastctc::ctc_loss's CUDA kernel: (costs (N,), gradient of their sum or an empty tensor)."""
    done = _compiled_call(acts, targets, input_lengths, target_lengths, blank, "none", False, from_logits, want_grad)
    if done is not None:
        # the workspace and operands may be freed once launched: torch's allocator is
        # stream-ordered, so their memory is reused only by work queued after these kernels
        costs, call, _ = done
        return costs, (call.backward(None, False, like=acts) if want_grad else acts.new_empty(0))
    costs, call, ops = _cuda_costs(acts, targets, input_lengths, target_lengths, blank, from_logits, want_grad)
    return costs, (_cuda_grad(call, None, False, ops[6]) if want_grad else acts.new_empty(0))


def _costs_and_grad(log_probs, targets, input_lengths, target_lengths, blank, from_logits, want_grad,
                    num_threads, weights_for=None):
    """The CPU engine (CUDA tensors take _cuda_costs): (costs tensor (N,), grad tensor like log_probs or None,
    label_lengths ndarray, unbatched).  weights_for: a reduction whose per-sequence weights
    the CPU engine folds into the gradient rows (saves a multiplication in backward)."""
    acts_name = "logits" if from_logits else "log_probs"
    try:
        _check_acts(log_probs, acts_name)
    except CTCTypeError as exc:
        raise as_runtime_error(exc) from None
    acts_t = _host_acts(log_probs)
    batch, blank = _validate(log_probs, targets, input_lengths, target_lengths, blank, from_logits,
                             acts=acts_t.numpy())
    weights = None if weights_for is None else _fast.grad_weights(batch.label_lengths, weights_for)
    costs, grad, _ = _engine.run(batch, blank, from_logits, want_grad=want_grad, grad_weights=weights,
                                 num_threads=num_threads)
    costs = torch.from_numpy(costs)
    if grad is not None:
        grad = torch.from_numpy(grad)
        if batch.unbatched:
            grad = grad[:, 0, :]
        if grad.dtype != log_probs.dtype:
            grad = grad.to(log_probs.dtype)
    return costs, grad, batch.label_lengths, batch.unbatched


# ---------------------------------------------------------------------------------------
# Eager route: one autograd.Function, engine gradient computed in the forward sweep.

class _NoSecondDerivative(torch.autograd.Function):
    """Identity on a first-order gradient that depends on log_probs; differentiating it
    again raises (the CTC gradient is not built from differentiable torch operations)."""

    @staticmethod
    def forward(ctx, grad, log_probs):
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, *unused):
        raise RuntimeError(_NO_SECOND_DERIVATIVE)


def _forward(log_probs, args, want_grad):
    """The eager computation: (loss tensor, gradient rows already weighted by the
    reduction (like log_probs) or None).  args: (targets, input_lengths, target_lengths,
    blank, reduction, zero_infinity, from_logits, num_threads).

    The common call (float32/float64 CPU log_probs, CPU integer tensors, every value valid)
    is one compiled call on the tensors' NumPy views (_fast.ctc_call: check, engine,
    reduction); anything else, valid or not, takes the general path, which says what is wrong."""
    targets, input_lengths, target_lengths, blank, reduction, zero_infinity, from_logits, num_threads = args
    if (log_probs.is_cpu and type(targets) is torch.Tensor and type(input_lengths) is torch.Tensor
            and type(target_lengths) is torch.Tensor
            and (log_probs.dtype is torch.float32 or log_probs.dtype is torch.float64)):
        try:
            views = (log_probs.detach().numpy(), targets.numpy(), input_lengths.numpy(), target_lengths.numpy())
        except Exception:  # a device or a grad-requiring index tensor: the general path says what is wrong
            views = None
        if views is not None:
            done = _fast.ctc_call(*views, blank, reduction, zero_infinity, from_logits, want_grad, num_threads)
            if done is not None:
                loss, grad = done
                return torch.from_numpy(loss), (None if grad is None else torch.from_numpy(grad))
    return _forward_general(log_probs, args, want_grad)


def _forward_general(log_probs, args, want_grad):
    if _on_device(log_probs):
        return _cuda_forward(log_probs, args, want_grad)
    targets, input_lengths, target_lengths, blank, reduction, zero_infinity, from_logits, num_threads = args
    costs, grad, label_lengths, unbatched = _costs_and_grad(
        log_probs, targets, input_lengths, target_lengths, blank, from_logits, want_grad, num_threads,
        weights_for=reduction if want_grad else None)
    loss = torch.from_numpy(_fast.reduce(costs.numpy(), label_lengths, reduction, zero_infinity))
    if unbatched and reduction == "none":
        loss = loss.reshape(())
    return loss, grad


class _CTCLossFunction(torch.autograd.Function):
    """Forward: the engine's losses and, in the same sweep, its gradient rows (weighted by
    the reduction).  Backward: those rows times the upstream gradient.  The non-tensor
    arguments travel as one tuple: autograd inspects every argument of apply, per call."""

    @staticmethod
    def forward(ctx, log_probs, args):
        loss, grad = _forward(log_probs, args, True)
        ctx.per_sequence = args[4] == "none" and log_probs.dim() == 3
        ctx.save_for_backward(grad, log_probs)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad, log_probs = ctx.saved_tensors
        if ctx.per_sequence:
            out = grad * grad_out.reshape(1, -1, 1)
        else:
            out = grad * grad_out
        if out.dtype != grad.dtype:  # half inputs: a float32 loss's gradient, back to the input dtype
            out = out.to(grad.dtype)
        if torch.is_grad_enabled():  # create_graph=True: mark the result as not differentiable again
            out = _NoSecondDerivative.apply(out, log_probs)
        return out, None


def _reduce(costs, label_lengths, reduction, zero_infinity):
    """PyTorch's reductions with torch operations (traceable; autograd sees the weights)."""
    from ._reduction import reduce_losses
    return reduce_losses(costs, label_lengths, reduction, zero_infinity)


# ---------------------------------------------------------------------------------------
# Registered op route (torch.compile, torch.export, tensor subclasses).

@torch.library.custom_op("fastctc::ctc_loss", mutates_args=())
def _ctc_op(acts: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
            target_lengths: torch.Tensor, blank: int, from_logits: bool, want_grad: bool,
            num_threads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence CTC losses (N,) (float32 for half inputs) and, when want_grad, the
    gradient of their sum with respect to acts (acts' shape and dtype); else an empty
    tensor.  acts: (T, N, C) or unbatched (T, C) log-probabilities (logits if from_logits)."""
    if acts.is_cuda:
        return _cuda_op(acts, targets, input_lengths, target_lengths, blank, from_logits, want_grad)
    costs, grad, _, _ = _costs_and_grad(acts, targets, input_lengths, target_lengths, blank, from_logits,
                                        want_grad, num_threads if num_threads > 0 else None)
    if grad is None:
        grad = acts.new_empty(0)
    elif grad.data_ptr() == acts.data_ptr():  # never alias an input (a custom op's contract)
        grad = grad.clone()
    return costs.to(acts.device), grad


@_ctc_op.register_fake
def _ctc_op_fake(acts, targets, input_lengths, target_lengths, blank, from_logits, want_grad, num_threads):
    acts_name = "logits" if from_logits else "log_probs"
    if acts.dtype not in _FLOATS:
        raise CTCTypeRuntimeError(f"{acts_name} must have dtype torch.float32, torch.float64, torch.float16 or "
                                  f"torch.bfloat16, got {acts.dtype}")
    if acts.dim() not in (2, 3):
        raise CTCValueRuntimeError(f"{acts_name} must have rank 2 or 3, shape (T, N, C) or unbatched (T, C); "
                                   f"got shape {tuple(acts.shape)}")
    N = acts.shape[1] if acts.dim() == 3 else 1
    cost_dtype = torch.float32 if acts.dtype in _HALF else acts.dtype
    costs = acts.new_empty((N,), dtype=cost_dtype)
    grad = torch.empty_like(acts) if want_grad else acts.new_empty(0)
    return costs, grad


@torch.library.custom_op("fastctc::ctc_loss_backward", mutates_args=())
def _ctc_backward_op(grad: torch.Tensor, grad_costs: torch.Tensor) -> torch.Tensor:
    """The engine's gradient rows (T, N, C) or (T, C) times the upstream gradient of each
    sequence's loss (N,)."""
    scale = grad_costs.reshape(1, -1, 1) if grad.dim() == 3 else grad_costs.reshape(1, 1)
    return (grad * scale).to(grad.dtype)


@_ctc_backward_op.register_fake
def _ctc_backward_op_fake(grad, grad_costs):
    return torch.empty_like(grad)


def _ctc_op_setup(ctx, inputs, output):
    ctx.want_grad = inputs[6]
    ctx.save_for_backward(output[1])


def _ctc_op_backward(ctx, grad_costs, grad_of_grad):
    (grad,) = ctx.saved_tensors
    if not ctx.want_grad:
        raise RuntimeError("fastctc::ctc_loss was called with want_grad=False, so it has no gradient to give; "
                           "call it with want_grad=True when acts requires grad")
    return _ctc_backward_op(grad, grad_costs), None, None, None, None, None, None, None


def _ctc_backward_op_backward(ctx, grad_out):
    raise RuntimeError(_NO_SECOND_DERIVATIVE)


_ctc_op.register_autograd(_ctc_op_backward, setup_context=_ctc_op_setup)
_ctc_backward_op.register_autograd(_ctc_backward_op_backward)
for _device in ("cpu", "cuda"):
    # under autocast the op computes in float32 (as torch's own ctc_loss does)
    torch.library.register_autocast("fastctc::ctc_loss", _device, torch.float32)


def _index_tensor(x, device):
    """Targets / lengths as a tensor for the op; host values stay on the host for a CUDA
    log_probs (the op checks them there and uploads them without blocking)."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(x, device=device if device.type == "cpu" else "cpu")


def _ctc_loss_op(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                 from_logits, num_threads):
    """ctc_loss through torch.ops.fastctc.ctc_loss (traceable by dynamo and export)."""
    if not isinstance(log_probs, torch.Tensor):
        raise CTCTypeError(f"{'logits' if from_logits else 'log_probs'} must be a torch.Tensor, "
                           f"got {type(log_probs).__name__}")
    want_grad = log_probs.requires_grad and torch.is_grad_enabled()
    device = log_probs.device
    targets = _index_tensor(targets, device)
    input_lengths = _index_tensor(input_lengths, device)
    target_lengths = _index_tensor(target_lengths, device)
    costs, _ = torch.ops.fastctc.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank,
                                          from_logits, want_grad, num_threads or 0)
    if reduction == "mean" and costs.device != target_lengths.device:  # no blocking upload for the divisor
        target_lengths = target_lengths.to(costs.device, non_blocking=True)
    loss = _reduce(costs, target_lengths, reduction, zero_infinity)
    if log_probs.dim() == 2 and reduction == "none":
        loss = loss.reshape(())
    return loss


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
             zero_infinity=False, *, from_logits=False, num_threads=None):
    """torch.nn.functional.ctc_loss, computed by fastctc (autograd-aware, torch.compile-able).

    Same arguments, input forms, reductions and forward values as PyTorch's function.

    Parameters
    ----------
    log_probs : torch.Tensor, (T, N, C) or unbatched (T, C)
        Log-probabilities (unnormalised scores with from_logits=True); float32 and float64
        are computed as given, float16 and bfloat16 in float32.  CPU tensors are read in
        place; CUDA tensors go to the GPU path when it is available.
    targets : torch.Tensor or sequence of int, (N, S) or (sum(target_lengths),)
        Padded or concatenated targets (unbatched: 1-D holds exactly target_length labels,
        (1, S) is padded).
    input_lengths : torch.Tensor or sequence of int, (N,)
        Frames of each sequence, in [0, T] (tensors, tuples or lists; a scalar unbatched).
    target_lengths : torch.Tensor or sequence of int, (N,)
        Labels of each target; same forms as input_lengths.
    blank : int, default 0
        The blank class, in [0, C).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        'none': the (N,) losses; 'sum'; 'mean': each loss divided by max(target_length, 1),
        then averaged.
    zero_infinity : bool, default False
        Turn infinite losses (targets that cannot fit) into 0.
    from_logits : bool, default False
        Keyword-only.  Read log_probs as unnormalised scores and fuse the log_softmax; the
        gradient is then d loss / d logits (on large alphabets this saves the whole
        log_softmax backward).
    num_threads : int or None, default None
        Keyword-only.  Caps the CPU threads of this call (default: OMP_NUM_THREADS, else
        every core).

    Returns
    -------
    torch.Tensor
        The loss: (N,) for reduction='none' (0-d unbatched), 0-d otherwise; float32 for
        half inputs, else log_probs' dtype; on log_probs' device.  Differentiable with
        respect to log_probs (once: a double backward raises RuntimeError, as PyTorch's).

    Raises
    ------
    CTCValueRuntimeError
        A bad shape, length, label or blank (a ValueError and a RuntimeError, the class
        PyTorch raises), or empty log_probs.
    CTCTypeRuntimeError
        A dtype not accepted (a TypeError and a RuntimeError).
    CTCTypeError, CTCValueError
        A reduction, zero_infinity, from_logits or num_threads of the wrong type or value.
    CTCRuntimeError
        log_probs on a device other than CPU and CUDA, or a CUDA tensor when the GPU path
        is unavailable (the message says why).

    Notes
    -----
    The gradient is the true derivative d loss / d log_probs, so torch.autograd.gradcheck
    passes in float64.  PyTorch's own CTC backward returns that plus exp(log_probs) (it
    assumes normalised inputs); after a log_softmax both give the same gradient with
    respect to the logits.  Infinite losses have zero gradient rows.

    Examples
    --------
    >>> import torch
    >>> from fastctc.torch import ctc_loss
    >>> log_probs = torch.full((2, 1, 2), 0.5, dtype=torch.float64).log().requires_grad_()
    >>> loss = ctc_loss(log_probs, torch.tensor([[1]]), torch.tensor([2]), torch.tensor([1]))
    >>> loss.backward()
    >>> print(round(loss.item(), 4))
    0.2877
    >>> print(log_probs.grad[:, 0].numpy().round(4))
    [[-0.3333 -0.6667]
     [-0.3333 -0.6667]]
    """
    if (type(reduction) is not str or reduction not in _REDUCTIONS or type(zero_infinity) is not bool
            or type(from_logits) is not bool or num_threads is not None):
        reduction, zero_infinity, from_logits, num_threads = check_call_options(reduction, zero_infinity, from_logits,
                                                                           num_threads)
    if torch.compiler.is_compiling() or (type(log_probs) is not torch.Tensor
                                         and not isinstance(log_probs, torch.nn.Parameter)):
        return _ctc_loss_op(log_probs, targets, input_lengths, target_lengths, blank, reduction,
                            zero_infinity, from_logits, num_threads)
    if log_probs.is_cuda:  # the sync-free CUDA route (lazy gradient)
        return _cuda_ctc_loss(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                              from_logits)
    args = (targets, input_lengths, target_lengths, blank, reduction, zero_infinity, from_logits, num_threads)
    if log_probs.requires_grad and torch.is_grad_enabled():
        return _CTCLossFunction.apply(log_probs, args)
    return _forward(log_probs, args, False)[0]  # nothing to differentiate: no autograd node


class CTCLoss(torch.nn.Module):
    """torch.nn.CTCLoss, computed by fastctc.

    A module whose forward is `ctc_loss` with the options given here.

    Parameters
    ----------
    blank : int, default 0
        The blank class, in [0, C) (checked at call time, when C is known).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        As for `ctc_loss`.
    zero_infinity : bool, default False
        Turn infinite losses (targets that cannot fit) into 0.

    Raises
    ------
    CTCTypeError, CTCValueError
        A reduction or zero_infinity of the wrong type or value.

    Examples
    --------
    >>> import torch
    >>> from fastctc.torch import CTCLoss
    >>> loss_fn = CTCLoss(reduction="sum")
    >>> loss_fn
    CTCLoss(blank=0, reduction='sum', zero_infinity=False)
    >>> log_probs = torch.full((2, 1, 2), 0.5).log()
    >>> print(round(loss_fn(log_probs, torch.tensor([[1]]), torch.tensor([2]), torch.tensor([1])).item(), 4))
    0.2877
    """

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False):
        super().__init__()
        self.blank = blank
        self.reduction = check_reduction(reduction)
        self.zero_infinity = check_flag(zero_infinity, "zero_infinity")

    def extra_repr(self):
        return f"blank={self.blank}, reduction={self.reduction!r}, zero_infinity={self.zero_infinity}"

    def forward(self, log_probs, targets, input_lengths, target_lengths):
        """The loss of a batch, as `ctc_loss` computes it with this module's options.

        Parameters
        ----------
        log_probs : torch.Tensor, (T, N, C) or unbatched (T, C)
            As for `ctc_loss`.
        targets : torch.Tensor or sequence of int, (N, S) or (sum(target_lengths),)
            As for `ctc_loss`.
        input_lengths : torch.Tensor or sequence of int, (N,)
            As for `ctc_loss`.
        target_lengths : torch.Tensor or sequence of int, (N,)
            As for `ctc_loss`.

        Returns
        -------
        torch.Tensor
            As `ctc_loss` returns it.
        """
        return ctc_loss(log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction,
                        self.zero_infinity)
