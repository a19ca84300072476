"""fastctc.jax: optax.ctc_loss's signature and semantics, computed by fastctc's C kernel.

    from fastctc.jax import ctc_loss        # instead of optax.ctc_loss
    loss = ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0, log_epsilon=-1e5)

Works under jax.jit, jax.vmap and jax.grad on CPU.  The kernel runs on the host through
jax.pure_callback (vmap_method="broadcast_all": a vmapped call arrives as one larger batch,
so the C kernel still sees a single call).  Differentiation is a jax.custom_vjp whose
gradient comes from the kernel's own reverse sweep (include/fastctc/optax.inl), computed
in the same call as the loss, not from autodiff through a scan; it equals what jax.grad of
optax.ctc_loss gives with respect to the logits.  The paddings and log_epsilon are treated
as constants (zero cotangent); labels are integers (no cotangent).

Logits must be float32 or float64 (float16/bfloat16 are computed in float32 and the
results cast back).  Values are not checked inside a trace (they are not known there):
as in optax, paddings are read as 0/1 blend weights and a label outside [0, K) emits with
log-probability 0; the kernel never reads outside its arrays.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _optax
from ._validate import CTCTypeError, CTCValueError, check_index

__all__ = ["ctc_loss"]


def _host(logits, logit_paddings, labels, label_paddings, log_epsilon, *, blank, want_grad):
    """NumPy side of the callback.  Leading (vmapped) axes are folded into the batch."""
    logits = np.asarray(logits)
    lead = logits.shape[:-3]
    B, T, K = logits.shape[-3:]
    N = labels.shape[-1]
    x = logits.reshape((-1, B, T, K))
    fp = np.asarray(logit_paddings).reshape((-1, B, T))
    lab = np.asarray(labels).reshape((-1, B, N))
    lp = np.asarray(label_paddings).reshape((-1, B, N))
    eps = np.broadcast_to(np.asarray(log_epsilon), lead).reshape(-1) if lead else np.asarray(log_epsilon).reshape(1)
    M = x.shape[0]
    loss = np.empty((M, B), dtype=logits.dtype)
    grad = np.empty((M, B, T, K), dtype=logits.dtype) if want_grad else None
    groups = [slice(0, M)] if np.all(eps == eps[0]) else [slice(m, m + 1) for m in range(M)]
    for sl in groups:
        m = sl.stop - sl.start
        args = (x[sl].reshape((m * B, T, K)), fp[sl].reshape((m * B, T)), lab[sl].reshape((m * B, N)),
                lp[sl].reshape((m * B, N)))
        if want_grad:
            l, g = _optax.loss_and_grad(*args, blank_id=blank, log_epsilon=float(eps[sl.start]), check_values=False)
            grad[sl] = g.reshape((m, B, T, K))
        else:
            prepared = _optax._prepare(*args, blank, float(eps[sl.start]), check_values=False)
            l = _optax._run(*prepared, want_grad=False)[0]
        loss[sl] = l.reshape((m, B))
    loss = loss.reshape(lead + (B,))
    if want_grad:
        return loss, grad.reshape(lead + (B, T, K))
    return loss


def _to_words(x):
    """float64 -> uint32 pairs (a trailing axis of 2), bit for bit."""
    return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _from_words(x):
    return jax.lax.bitcast_convert_type(x, jnp.float64)


def _np_from_words(a):
    a = np.ascontiguousarray(a)
    return a.view(np.float64).reshape(a.shape[:-1])


def _np_to_words(a):
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a.view(np.uint32).reshape(a.shape + (2,))


def _host_words(logits, logit_paddings, labels, label_paddings, log_epsilon, *, blank, want_grad):
    """_host for float64 data that crossed the callback boundary as uint32 pairs."""
    out = _host(_np_from_words(logits), _np_from_words(logit_paddings), labels, _np_from_words(label_paddings),
                _np_from_words(log_epsilon), blank=blank, want_grad=want_grad)
    return tuple(_np_to_words(o) for o in out) if want_grad else _np_to_words(out)


def _callback(logits, logit_paddings, labels, label_paddings, log_epsilon, blank, want_grad):
    B, T, K = logits.shape
    if logits.dtype == jnp.float64:
        # float64 travels as uint32 pairs: `with jax.enable_x64(True)` is thread-local, and
        # JAX may run the callback on another thread where float64 would be narrowed to
        # float32 ("Incorrect output dtype").  Integers are not narrowed; bits are exact.
        loss_shape = jax.ShapeDtypeStruct((B, 2), jnp.uint32)
        shapes = (loss_shape, jax.ShapeDtypeStruct((B, T, K, 2), jnp.uint32)) if want_grad else loss_shape
        fn = functools.partial(_host_words, blank=blank, want_grad=want_grad)
        out = jax.pure_callback(fn, shapes, _to_words(logits), _to_words(logit_paddings), labels,
                                _to_words(label_paddings), _to_words(log_epsilon), vmap_method="broadcast_all")
        return tuple(_from_words(o) for o in out) if want_grad else _from_words(out)
    loss_shape = jax.ShapeDtypeStruct((B,), logits.dtype)
    shapes = (loss_shape, jax.ShapeDtypeStruct((B, T, K), logits.dtype)) if want_grad else loss_shape
    fn = functools.partial(_host, blank=blank, want_grad=want_grad)
    return jax.pure_callback(fn, shapes, logits, logit_paddings, labels, label_paddings, log_epsilon,
                             vmap_method="broadcast_all")


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _ctc(logits, logit_paddings, labels, label_paddings, log_epsilon, blank):
    return _callback(logits, logit_paddings, labels, label_paddings, log_epsilon, blank, False)


def _ctc_fwd(logits, logit_paddings, labels, label_paddings, log_epsilon, blank):
    loss, grad = _callback(logits, logit_paddings, labels, label_paddings, log_epsilon, blank, True)
    return loss, (grad, logit_paddings, labels, label_paddings, log_epsilon)


def _ctc_bwd(blank, residuals, g):
    grad, logit_paddings, labels, label_paddings, log_epsilon = residuals
    labels_ct = np.zeros(np.shape(labels), dtype=jax.dtypes.float0)
    return (grad * g[:, None, None].astype(grad.dtype), jnp.zeros_like(logit_paddings), labels_ct,
            jnp.zeros_like(label_paddings), jnp.zeros_like(log_epsilon))


_ctc.defvjp(_ctc_fwd, _ctc_bwd)


def ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0, log_epsilon=-1e5):
    """optax.ctc_loss: per-sequence CTC loss (B,) of unnormalised logits (B, T, K).

    logit_paddings (B, T) and label_paddings (B, N) are 1.0 where padded (labels right-padded);
    blank_id is the blank class; log_epsilon stands in for log(0), so labels that cannot fit
    give a finite loss of about -log_epsilon.  Differentiable with respect to logits.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    logit_paddings = jnp.asarray(logit_paddings)
    label_paddings = jnp.asarray(label_paddings)
    if logits.ndim != 3:
        raise CTCValueError(f"logits must have rank 3, shape (B, T, K); got shape {logits.shape}")
    if labels.ndim != 2:
        raise CTCValueError(f"labels must have rank 2, shape (B, N); got shape {labels.shape}")
    B, T, K = logits.shape
    if labels.shape[0] != B:
        raise CTCValueError(f"labels must have batch size B = {B}, got shape {labels.shape}")
    if label_paddings.shape != labels.shape:
        raise CTCValueError(f"label_paddings must have labels' shape {labels.shape}, got {label_paddings.shape}")
    if logit_paddings.shape != (B, T):
        raise CTCValueError(f"logit_paddings must have shape (B, T) = {(B, T)}, got {logit_paddings.shape}")
    if T < 1 or K < 1:
        raise CTCValueError(f"logits must have T >= 1 frames and K >= 1 classes, got shape {logits.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise CTCTypeError(f"labels must hold integers, got dtype {labels.dtype}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise CTCTypeError(f"logits must be floating point, got dtype {logits.dtype}")
    blank = check_index(blank_id, "blank_id", K)
    dtype = logits.dtype
    compute = dtype if dtype in (jnp.float32, jnp.float64) else jnp.float32
    log_epsilon = jnp.asarray(log_epsilon, dtype=compute)
    if log_epsilon.ndim != 0:
        raise CTCValueError(f"log_epsilon must be a scalar, got shape {log_epsilon.shape}")
    loss = _ctc(logits.astype(compute), logit_paddings.astype(compute), labels.astype(jnp.int32),
                label_paddings.astype(compute), log_epsilon, blank)
    return loss.astype(dtype)
