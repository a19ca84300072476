"""fastctc.ctc_loss_with_forward_probs / optax_ctc_loss against the real optax (values,
forward probabilities, gradients under jax.grad) on random batches with repeated labels,
labels that cannot fit, padded frames in the middle, small log_epsilon, float32 and
float64; plus the float64 CTC reference (optax's loss is the ordinary CTC loss when
everything fits and log_epsilon is very negative) and input errors."""
import functools

import numpy as np
import pytest

import fastctc
import reference as ref
from fastctc import _optax

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy


def make_case(seed, B=5, T=10, K=6, N=4, dtype=np.float32, blank=0):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(B, T, K)) * 2.5).astype(dtype)
    logit_pad = np.zeros((B, T), dtype)
    label_pad = np.zeros((B, N), dtype)
    labels = rng.integers(0, K, size=(B, N))
    labels = np.where(labels == blank, (blank + 1) % K, labels)
    labels[0, 1] = labels[0, 0]                      # repeated label
    if B > 1:
        logit_pad[1, T - 3:] = 1                     # trailing padding
        label_pad[1, N - 1:] = 1
    if B > 2:
        logit_pad[2, [2, 5]] = 1                     # padded frames in the middle
        label_pad[2, 2:] = 1
        labels[2, 2:] = -1                           # padding value outside [0, K)
    if B > 3:
        labels[3, :] = labels[3, 0]                  # all repeats: needs 2N-1 frames
        logit_pad[3, 5:] = 1                         # only 5 frames: cannot fit
    if B > 4:
        label_pad[4, :] = 1                          # empty target
    return logits, logit_pad, labels, label_pad


# jitted once per (blank, dtype): the random cases share shapes, so compilation is reused
@functools.partial(jax.jit, static_argnames=("blank",))
def _optax_all(logits, logit_pad, labels, label_pad, eps, blank):
    outs = optax.ctc_loss_with_forward_probs(logits, logit_pad, labels, label_pad, blank_id=blank, log_epsilon=eps)
    grad = jax.grad(lambda x: optax.ctc_loss(x, logit_pad, labels, label_pad, blank_id=blank,
                                             log_epsilon=eps).sum())(logits)
    return outs, grad


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [-1e5, -6.0])
def test_matches_optax(seed, dtype, eps):
    blank = 2 * (seed % 2)
    case = make_case(seed, dtype=dtype, blank=blank)
    with jax.enable_x64(dtype == np.float64):
        outs, want_grad = _optax_all(*[jnp.asarray(a) for a in case], jnp.asarray(eps, dtype), blank)
        want = [np.asarray(a) for a in outs]
        want_grad = np.asarray(want_grad)
    got = fastctc.ctc_loss_with_forward_probs(*case, blank_id=blank, log_epsilon=eps)
    tol = dict(rtol=2e-5, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-9)
    for w, g, name in zip(want, got, ("loss", "logalpha_blank", "logalpha_nonblank")):
        assert g.shape == w.shape and g.dtype == dtype, name
        np.testing.assert_allclose(g, w, err_msg=name, **tol)
    np.testing.assert_allclose(fastctc.optax_ctc_loss(*case, blank, eps), want[0], **tol)
    loss, grad = _optax.loss_and_grad(*case, blank_id=blank, log_epsilon=eps)
    np.testing.assert_allclose(grad, want_grad, rtol=tol["rtol"] * 10, atol=tol["atol"] / 10)
    if eps == -1e5:
        assert 0.5e5 < loss[3] < 2e5  # the infeasible sequence: finite, about -log_epsilon


def test_shapes_follow_optax_code_not_docstring():
    case = make_case(0, B=2, T=7, K=4, N=3)
    _, blank_alpha, label_alpha = fastctc.ctc_loss_with_forward_probs(*case)
    assert blank_alpha.shape == (7, 2, 4) and label_alpha.shape == (7, 2, 3)


def test_against_float64_reference_when_feasible():
    rng = np.random.default_rng(7)
    B, T, K, N = 4, 9, 5, 3
    logits = rng.normal(size=(B, T, K))
    labels = rng.integers(1, K, size=(B, N))
    labels[0, :2] = 2
    label_pad = np.zeros((B, N))
    label_pad[1, 2:] = 1
    logit_pad = np.zeros((B, T))
    logit_pad[2, 6:] = 1
    logit_pad[3, [1, 4]] = 1  # padded frames in the middle are simply skipped
    loss = fastctc.optax_ctc_loss(logits, logit_pad, labels, label_pad)
    for b in range(B):
        keep = logit_pad[b] == 0
        L = int(N - label_pad[b].sum())
        want = ref.nll(ref.log_softmax(logits[b][keep]), labels[b, :L], 0)
        np.testing.assert_allclose(loss[b], want, rtol=1e-10)


def test_gradient_finite_difference_float64():
    case = make_case(3, B=3, T=6, K=4, N=3, dtype=np.float64)
    logits = case[0]
    _, grad = _optax.loss_and_grad(*case, log_epsilon=-8.0)
    h = 1e-6
    for idx in [(0, 0, 1), (1, 2, 0), (2, 4, 3), (0, 5, 2)]:
        up, dn = logits.copy(), logits.copy()
        up[idx] += h
        dn[idx] -= h
        fd = (fastctc.optax_ctc_loss(up, *case[1:], log_epsilon=-8.0)[idx[0]]
              - fastctc.optax_ctc_loss(dn, *case[1:], log_epsilon=-8.0)[idx[0]]) / (2 * h)
        np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-7)


def test_strided_and_batch_of_zero():
    case = make_case(5, dtype=np.float64)
    big = np.zeros(case[0].shape[:2] + (case[0].shape[2] * 2,))
    big[..., ::2] = case[0]
    strided = big[..., ::2]  # class axis not contiguous: copied once
    np.testing.assert_array_equal(fastctc.optax_ctc_loss(strided, *case[1:]), fastctc.optax_ctc_loss(*case))
    loss, a, b = fastctc.ctc_loss_with_forward_probs(np.zeros((0, 3, 4)), np.zeros((0, 3)),
                                                    np.zeros((0, 2), int), np.zeros((0, 2)))
    assert loss.shape == (0,) and a.shape == (3, 0, 3) and b.shape == (3, 0, 2)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda c: (c[0].astype(np.int32),) + c[1:], TypeError, "logits"),
    (lambda c: (c[0][0],) + c[1:], ValueError, "rank 3"),
    (lambda c: (c[0], c[1][:, :-1]) + c[2:], ValueError, "logit_paddings"),
    (lambda c: c[:2] + (c[2].astype(np.float32), c[3]), TypeError, "labels"),
    (lambda c: c[:2] + (c[2][:-1], c[3][:-1]), ValueError, "batch size"),
    (lambda c: c[:3] + (c[3][:, :-1],), ValueError, "label_paddings"),
    (lambda c: (c[0], c[1] + 0.5) + c[2:], ValueError, r"logit_paddings\[0, 0\]"),
    (lambda c: c[:2] + (np.where(np.arange(4) == 1, 99, c[2]), c[3]), ValueError, r"labels\[0, 1\] = 99"),
    (lambda c: c[:3] + (np.tile([1.0, 0, 0, 0], (5, 1)),), ValueError, "right-padded"),
])
def test_errors(mutate, exc, match):
    case = make_case(1)
    with pytest.raises(exc, match=match):
        fastctc.ctc_loss_with_forward_probs(*mutate(case))


def test_blank_and_epsilon_errors():
    case = make_case(1)
    with pytest.raises(ValueError, match="blank_id"):
        fastctc.ctc_loss_with_forward_probs(*case, blank_id=6)
    with pytest.raises(TypeError, match="log_epsilon"):
        fastctc.ctc_loss_with_forward_probs(*case, log_epsilon="small")
    with pytest.raises(ValueError, match="T >= 1"):
        fastctc.ctc_loss_with_forward_probs(np.zeros((1, 0, 3)), np.zeros((1, 0)), np.zeros((1, 1), int),
                                            np.zeros((1, 1)))
