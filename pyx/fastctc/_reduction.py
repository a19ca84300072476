"""fastctc._reduction: PyTorch's CTC loss reductions, written once for every array kind.

    reduce_losses(costs, label_lengths, reduction, zero_infinity) -> the reduced loss
    loss_weights(label_lengths, reduction, like=None)             -> d loss / d costs (N,)
    zero_infinite(costs)                                          -> costs, +inf -> 0

The same code serves NumPy arrays (the CPU engine), torch tensors (fastctc.torch on CPU and
CUDA, eager and under torch.compile, where autograd sees every operation) and CuPy arrays
(the GPU path): each array is reduced with its own namespace's operations, on its own
device, without reading a value back to the host (a GPU call stays free of
synchronisations).  JAX arrays are accepted by zero_infinite.

torch.nn.functional.ctc_loss's rules:
- zero_infinity: +inf losses (targets that cannot fit) become 0; NaN stays NaN (an
  undefined sequence stays undefined).
- 'none': the losses; 'sum': their sum; 'mean': sum over n of loss_n * w_n with
  w_n = 1 / (max(target_length_n, 1) * N), i.e. each loss divided by its target length
  (at least 1), then averaged; NaN for an empty batch.
Sums accumulate in float64 and the result has the losses' dtype, so every array kind
gives the same number up to summation order, and NumPy's is bit for bit the one of
fastctc._fast.reduce / grad_weights, the compiled twins the eager paths use on small
batches (tests/test_reduction.py holds them to it).
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np

__all__ = ["reduce_losses", "loss_weights", "zero_infinite", "namespace"]


def namespace(x):
    """The module whose functions operate on x: numpy, torch, cupy or jax.numpy."""
    if isinstance(x, np.ndarray):
        return np
    mod = type(x).__module__.split(".")[0]
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if mod == "torch" or (torch is not None and isinstance(x, torch.Tensor)):  # subclasses too
        return torch if torch is not None else __import__("torch")
    if mod == "cupy":
        import cupy
        return cupy
    if mod in ("jax", "jaxlib"):
        import jax.numpy as jnp
        return jnp
    return np


def _on_device_of(xp, x):
    """A context in which CuPy works on x's device (CuPy allocates and launches on the
    current device, with that device's current stream; the caller's current device is
    restored on exit); nothing for other kinds, whose operations follow their operands."""
    if xp is not np and xp.__name__ == "cupy":
        return xp.cuda.Device(x.device.id)
    return contextlib.nullcontext()


def _astype(xp, x, dtype):
    """x converted to dtype in its own namespace (a 0-d ndarray for NumPy, as the engine returns)."""
    if xp is np:
        return np.asarray(x, dtype=dtype)
    if xp.__name__ == "torch":
        return x.to(dtype)
    return x.astype(dtype)


def zero_infinite(costs):
    """costs with +inf replaced by 0 (a new array of the same kind, on the same device)."""
    xp = namespace(costs)
    if xp is np:  # a copy keeps an ndarray subclass (np.where would not)
        out = costs.copy()
        out[np.isposinf(out)] = 0
        return out
    with _on_device_of(xp, costs):
        return xp.where(xp.isinf(costs) & (costs > 0), xp.zeros_like(costs), costs)


def _lengths_like(xp, like, label_lengths):
    """label_lengths as a float64 (N,) array of like's kind on like's device; host values
    are uploaded from pinned memory without blocking the host."""
    if xp is np:
        return np.asarray(label_lengths).reshape(-1).astype(np.float64)
    if xp.__name__ == "torch":
        tl = label_lengths
        device = like.device
        if not isinstance(tl, xp.Tensor):
            if hasattr(tl, "__cuda_array_interface__") or (hasattr(tl, "__dlpack_device__")
                                                           and not isinstance(tl, np.ndarray)):
                tl = xp.from_dlpack(tl)  # another framework's array (JAX, CuPy), where it lives
            else:
                tl = xp.from_numpy(np.ascontiguousarray(np.asarray(tl), dtype=np.float64))
        if tl.device != device and tl.device.type == "cpu" and device.type == "cuda" \
                and not xp.compiler.is_compiling():
            tl = tl.pin_memory().to(device, non_blocking=True)  # no synchronisation
        return tl.reshape(-1).to(device=device, dtype=xp.float64)
    # CuPy: device arrays as they are, host values (NumPy, sequences, CPU tensors) uploaded
    tl = label_lengths
    if not hasattr(tl, "__cuda_array_interface__"):
        if type(tl).__module__.split(".")[0] == "torch":
            tl = tl.detach().numpy()
        with xp.cuda.Device(like.device.id):
            tl = xp.asarray(np.asarray(tl))
    return tl.reshape(-1).astype(xp.float64)


def loss_weights(label_lengths, reduction: str, like=None):
    """Each loss's weight in the reduced loss, float64 (N,): 1 for 'none' and 'sum',
    1 / (max(target_length, 1) * N) for 'mean'.  like: an array whose kind and device the
    result takes (default: a NumPy array)."""
    xp = np if like is None else namespace(like)
    with _on_device_of(xp, like):
        tl = _lengths_like(xp, like, label_lengths)
        if reduction != "mean":
            return xp.ones_like(tl)
        return 1.0 / (xp.maximum(tl, xp.ones_like(tl)) * tl.shape[0])


def reduce_losses(costs, label_lengths, reduction: str, zero_infinity: bool):
    """torch.nn.functional.ctc_loss's reduction of the per-sequence losses costs (N,):
    costs for 'none', else a 0-d array of costs' kind, dtype and device (see the module
    docstring).  label_lengths: (N,) integers of any kind (read only for 'mean')."""
    xp = namespace(costs)
    with _on_device_of(xp, costs):
        if zero_infinity:
            costs = zero_infinite(costs)
        if reduction == "none":
            return costs
        if reduction == "sum":
            total = costs.sum(dtype=xp.float64)
        else:
            total = (costs * loss_weights(label_lengths, "mean", like=costs)).sum(dtype=xp.float64)
            if costs.shape[0] == 0:
                total = total + float("nan")  # the mean of no losses
        return _astype(xp, total, costs.dtype)
