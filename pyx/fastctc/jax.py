"""fastctc.jax: optax.ctc_loss's signature and semantics, computed by fastctc's SIMD engine
through XLA's FFI.

    from fastctc.jax import ctc_loss        # instead of optax.ctc_loss
    loss = ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0, log_epsilon=-1e5)

The loss is an XLA custom call (jax.ffi.ffi_call, target "fastctc_optax_ctc", CPU): the
handler is C code inside fastctc's compiled extension (pyx/fastctc/_xla_ffi.h), registered
with jax.ffi.register_ffi_target once, when this module is imported.  Compiled JAX code calls
it directly, with no Python and no host callback on the way; it runs the same engine as
fastctc.ctc_loss (include/fastctc/detail/optax_batch.h maps optax's semantics onto it).

- jax.jit: yes.  jax.vmap: vmap_method="broadcast_all", so a vmapped call is one call over
  the mapped batch (log_epsilon may be mapped too).  jax.grad: a jax.custom_vjp whose
  forward pass computes the loss and d loss / d logits in one engine call; the backward
  pass scales the rows by the cotangent.  Paddings and log_epsilon get zero cotangents
  (optax's own gradient with respect to them is not a meaningful quantity); labels are
  integers.
- Numbers: those of optax.ctc_loss within float rounding wherever exp(log_epsilon) is
  negligible (log_epsilon <= -100, optax's default is -1e5) and the labels fit the valid
  frames; there optax's recurrence is ordinary CTC.  Labels that cannot fit, log_epsilon
  above -100, paddings other than 0/1 and labels outside [0, K) are computed by optax's own
  recurrence, operation for operation (scalar code, so optax's finite values come out).
- float32 and float64 (under jax_enable_x64); float16/bfloat16 are computed in float32 and
  cast back.  CPU only (the target is registered for the "cpu" platform).
- Threads: num_threads (keyword), else OMP_NUM_THREADS, else every core.

Values are not checked inside a trace (they are not known there): as in optax, paddings
are read as blend weights and a label outside [0, K) emits with log-probability 0; the
handler never reads outside its arrays.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _optax_core
from ._validate import (
    CTCTypeError,
    check_at_least_one,
    check_batch_size,
    check_index,
    check_integer_dtype,
    check_num_threads,
    check_rank,
    check_shape,
)

__all__ = ["ctc_loss"]

_TARGET = "fastctc_optax_ctc"
jax.ffi.register_ffi_target(_TARGET, _optax_core.xla_handler(), platform="cpu")


def _call(logits, logit_paddings, labels, label_paddings, log_epsilon, blank, threads, want_grad):
    B, T, K = logits.shape
    shapes = [jax.ShapeDtypeStruct((B,), logits.dtype)]
    if want_grad:
        shapes.append(jax.ShapeDtypeStruct((B, T, K), logits.dtype))
    out = jax.ffi.ffi_call(_TARGET, shapes, vmap_method="broadcast_all")(
        logits, logit_paddings, labels, label_paddings, log_epsilon, blank=np.int64(blank),
        num_threads=np.int64(threads))
    return tuple(out) if want_grad else out[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _ctc(logits, logit_paddings, labels, label_paddings, log_epsilon, blank, threads):
    return _call(logits, logit_paddings, labels, label_paddings, log_epsilon, blank, threads, False)


def _ctc_fwd(logits, logit_paddings, labels, label_paddings, log_epsilon, blank, threads):
    loss, grad = _call(logits, logit_paddings, labels, label_paddings, log_epsilon, blank, threads, True)
    return loss, (grad, logit_paddings, labels, label_paddings, log_epsilon)


def _ctc_bwd(blank, threads, residuals, g):
    grad, logit_paddings, labels, label_paddings, log_epsilon = residuals
    labels_ct = np.zeros(np.shape(labels), dtype=jax.dtypes.float0)
    return (grad * g[..., None, None].astype(grad.dtype), jnp.zeros_like(logit_paddings), labels_ct,
            jnp.zeros_like(label_paddings), jnp.zeros_like(log_epsilon))


_ctc.defvjp(_ctc_fwd, _ctc_bwd)


def ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=0, log_epsilon=-1e5, *, num_threads=None):
    """optax.ctc_loss: per-sequence CTC loss (B,) of unnormalised logits (B, T, K).

    An XLA custom call on CPU: works under jax.jit, jax.vmap (one call over the mapped
    batch) and jax.grad (a custom VJP; the forward pass computes the loss and d loss /
    d logits in one engine call).

    Parameters
    ----------
    logits : jax.Array or array_like, (B, T, K), floating point
        Unnormalised scores (the log_softmax is fused in).  float32 and float64 (under
        jax_enable_x64) are computed as given; float16/bfloat16 in float32, cast back.
    logit_paddings : jax.Array or array_like, (B, T)
        1.0 for padded frames, 0.0 for real ones (values are not checked: others are read
        as blend weights, as optax reads them).
    labels : jax.Array or array_like of int, (B, N)
        Label ids, right-padded; int64 labels are clipped to int32, not wrapped.
    label_paddings : jax.Array or array_like, (B, N)
        1.0 for padded labels, 0.0 for real ones.
    blank_id : int, default 0
        The blank class, in [0, K); a concrete integer, not a traced value.
    log_epsilon : float, default -1e5
        Stands in for log(0), so labels that cannot fit give a finite loss of about
        -log_epsilon.  A scalar (it may be mapped under vmap).
    num_threads : int or None, default None
        Keyword-only.  Threads of the engine (default: OMP_NUM_THREADS, else every core).

    Returns
    -------
    jax.Array, (B,)
        Per-sequence loss, in logits' dtype.  Differentiable with respect to logits;
        paddings and log_epsilon get zero cotangents.

    Raises
    ------
    CTCValueError
        Ranks or shapes that do not fit, T or K zero, blank_id outside [0, K), a
        log_epsilon that is not a scalar.
    CTCTypeError
        Labels that are not integers, logits that are not floating point, blank_id or
        num_threads of the wrong type.

    Notes
    -----
    Values are not checked inside a trace (they are not known there): as in optax,
    paddings are read as blend weights and a label outside [0, K) emits with
    log-probability 0; the handler never reads outside its arrays.  Wherever
    exp(log_epsilon) is negligible and the labels fit, the numbers are optax.ctc_loss's
    within float rounding; elsewhere optax's own recurrence runs, operation for operation.

    Examples
    --------
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import numpy as np
    >>> from fastctc.jax import ctc_loss
    >>> logits = jnp.zeros((1, 2, 2))                       # (B, T, K): uniform scores
    >>> args = (jnp.zeros((1, 2)), jnp.array([[1]]), jnp.zeros((1, 1)))
    >>> print(round(float(jax.jit(ctc_loss)(logits, *args)[0]), 4))
    0.2877
    >>> grad = jax.grad(lambda x: ctc_loss(x, *args).sum())(logits)   # softmax - occupancy
    >>> print(np.round(np.asarray(grad[0]), 4))
    [[ 0.1667 -0.1667]
     [ 0.1667 -0.1667]]
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    logit_paddings = jnp.asarray(logit_paddings)
    label_paddings = jnp.asarray(label_paddings)
    B, T, K = check_rank(logits.shape, "logits", 3, "(B, T, K)")
    check_rank(labels.shape, "labels", 2, "(B, N)")
    check_batch_size(labels.shape, "labels", B, "(B, N)", "B")
    check_shape(label_paddings.shape, "label_paddings", labels.shape, "labels' shape (B, N)")
    check_shape(logit_paddings.shape, "logit_paddings", (B, T), "(B, T)")
    check_at_least_one(T, "logits", "frame", "T")
    check_at_least_one(K, "logits", "class", "K")
    check_integer_dtype(labels, "labels")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise CTCTypeError(f"logits must be floating point, got dtype {logits.dtype}")
    blank = check_index(blank_id, "blank_id", K)
    threads = check_num_threads(num_threads) or 0
    dtype = logits.dtype
    compute = dtype if dtype in (jnp.float32, jnp.float64) else jnp.float32
    log_epsilon = jnp.asarray(log_epsilon, dtype=compute)
    check_rank(log_epsilon.shape, "log_epsilon", 0, "() (a scalar)")
    if labels.dtype.itemsize > 4 or labels.dtype == jnp.uint32:
        # clipped, not wrapped: a label outside [0, K) must stay outside (optax: log-prob 0)
        labels = jnp.clip(labels, -2 ** 31, 2 ** 31 - 1)
    loss = _ctc(logits.astype(compute), logit_paddings.astype(compute), labels.astype(jnp.int32),
                label_paddings.astype(compute), log_epsilon, blank, threads)
    return loss.astype(dtype)
