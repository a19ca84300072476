"""fastctc.CTCLossV2 (MindSpore's ops.CTCLossV2 interface): the documented example, the
float64 reference's forward variables and losses on random batches, zero_infinity, and
every documented error with its documented exception type.  MindSpore itself is optional:
when installed, the same random cases are compared with it."""
import fastctc
import numpy as np
import published
import pytest
import reference as ref
from reference import random_labels, random_log_probs


def test_documented_example(simd_level):
    loss_fn = fastctc.CTCLossV2(blank=0, reduction="none", zero_infinity=False)
    nll, log_alpha = loss_fn(np.array(published.MINDSPORE_LOG_PROBS, np.float32),
                             np.array(published.MINDSPORE_TARGETS, np.int32),
                             np.array(published.MINDSPORE_INPUT_LENGTHS, np.int32),
                             np.array(published.MINDSPORE_TARGET_LENGTHS, np.int32))
    assert nll.dtype == np.float32 and log_alpha.dtype == np.float32
    np.testing.assert_allclose(nll, published.MINDSPORE_NLL, rtol=1e-6)
    np.testing.assert_allclose(log_alpha, published.MINDSPORE_LOG_ALPHA, rtol=1e-6)


def _random_case(rng, T, N, C, S, blank, dtype):
    lp = random_log_probs(rng, T, N, C, dtype=dtype)
    il = rng.integers(max(1, T // 2), T + 1, size=N)
    tl = np.array([rng.integers(0, min(S, il[n]) + 1) for n in range(N)])
    tg = random_labels(rng, (N, S), C, blank)
    tg[0, :2] = tg[0, 0]  # a repeated label
    return lp, tg, il, tl


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
def test_against_reference(rng, simd_level, dtype, tol):
    T, N, C, S, blank = 9, 5, 5, 4, 2
    lp, tg, il, tl = _random_case(rng, T, N, C, S, blank, dtype)
    nll, log_alpha = fastctc.CTCLossV2(blank=blank)(lp, tg, il, tl)
    assert nll.shape == (N,) and log_alpha.shape == (N, T, 2 * S + 1)
    for n in range(N):
        alpha, ll = ref.forward(lp[: il[n], n].astype(np.float64), tg[n, : tl[n]], blank)
        want = np.full((T, 2 * S + 1), -np.inf)
        want[: il[n], : 2 * tl[n] + 1] = alpha
        got = log_alpha[n].astype(np.float64)
        assert np.array_equal(np.isneginf(got), np.isneginf(want)), n
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol)
        np.testing.assert_allclose(nll[n], -ll, rtol=tol, atol=tol)


def test_tuple_lengths_and_case_insensitive_reduction(rng):
    lp, tg, il, tl = _random_case(rng, 6, 3, 4, 3, 0, np.float64)
    a = fastctc.CTCLossV2(reduction="NoNe")(lp, tg, tuple(int(v) for v in il), tuple(int(v) for v in tl))
    b = fastctc.CTCLossV2()(lp, tg, il, tl)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_zero_infinity():
    lp = np.log(np.full((3, 1, 3), 1 / 3))
    tg = np.array([[1, 1, 1]], np.int64)  # needs 5 frames, only 3
    il, tl = np.array([3]), np.array([3])
    nll, _ = fastctc.CTCLossV2()(lp, tg, il, tl)
    assert np.isposinf(nll[0])
    nll, _ = fastctc.CTCLossV2(zero_infinity=True)(lp, tg, il, tl)
    assert nll[0] == 0
    nll, _, grad = fastctc.CTCLossV2(zero_infinity=True).loss_and_grad(lp, tg, il, tl)
    assert nll[0] == 0 and np.all(grad == 0)


def test_loss_and_grad_finite_difference(rng):
    lp, tg, il, tl = _random_case(rng, 6, 2, 4, 2, 0, np.float64)
    fn = fastctc.CTCLossV2()
    _, _, grad = fn.loss_and_grad(lp, tg, il, tl)
    eps = 1e-6
    for idx in [(0, 0, 1), (2, 1, 0), (4, 0, 3)]:
        up, dn = lp.copy(), lp.copy()
        up[idx] += eps
        dn[idx] -= eps
        fd = (fn(up, tg, il, tl)[0].sum() - fn(dn, tg, il, tl)[0].sum()) / (2 * eps)
        np.testing.assert_allclose(grad[idx], fd, atol=1e-6)


def test_random_forms_against_reference(rng):
    """Random shapes down to C = 1, unnormalised log_probs, lengths as tuples, torch
    tensors or arrays of int32/int64, reduction in any case, zero_infinity."""
    torch = pytest.importorskip("torch")
    for _ in range(40):
        T, N, C, S = (int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(1, 5)),
                      int(rng.integers(0, 4)))
        blank = int(rng.integers(0, C))
        dtype = [np.float32, np.float64][int(rng.integers(2))]
        lp = rng.normal(size=(T, N, C)).astype(dtype)  # unnormalised, used as given
        tg = rng.integers(0, C, size=(N, S))
        il = rng.integers(0, T + 1, size=N)
        tl = np.minimum(rng.integers(0, S + 1, size=N), il)
        idt = [np.int32, np.int64][int(rng.integers(2))]
        zero_infinity = bool(rng.random() < 0.5)
        form = int(rng.integers(3))
        lengths = ((tuple(map(int, il)), tuple(map(int, tl))) if form == 0 else
                   (torch.tensor(il.astype(idt)), torch.tensor(tl.astype(idt))) if form == 1 else
                   (il.astype(idt), tl.astype(idt)))
        reduction = ["none", "NONE", "None"][int(rng.integers(3))]
        nll, log_alpha = fastctc.CTCLossV2(blank=blank, reduction=reduction, zero_infinity=zero_infinity)(
            lp, tg.astype(idt), *lengths)
        assert nll.shape == (N,) and log_alpha.shape == (N, T, 2 * S + 1)
        assert nll.dtype == log_alpha.dtype == dtype
        tol = 1e-4 if dtype == np.float32 else 1e-10
        for n in range(N):
            alpha, ll = ref.forward(lp[: il[n], n].astype(np.float64), tg[n, : tl[n]], blank)
            want = np.full((T, 2 * S + 1), -np.inf)
            want[: il[n], : 2 * tl[n] + 1] = alpha
            got = log_alpha[n].astype(np.float64)
            assert np.array_equal(np.isneginf(got), np.isneginf(want))
            np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=tol, atol=tol)
            expected = 0.0 if zero_infinity and ll == -np.inf else -ll
            np.testing.assert_allclose(nll[n], expected, rtol=tol, atol=tol)


def _good():
    return (np.zeros((4, 2, 3), np.float32), np.ones((2, 2), np.int32),
            np.array([4, 4], np.int32), np.array([2, 1], np.int32))


@pytest.mark.parametrize("kwargs,exc", [
    ({"zero_infinity": 1}, TypeError),
    ({"zero_infinity": "yes"}, TypeError),
    ({"reduction": None}, TypeError),
    ({"reduction": "mean"}, ValueError),
    ({"reduction": "sum"}, ValueError),
])
def test_constructor_errors(kwargs, exc):
    with pytest.raises(exc):
        fastctc.CTCLossV2(**kwargs)


@pytest.mark.parametrize("which,value,exc,match", [
    (0, np.zeros((4, 2, 3), np.float16), TypeError, "log_probs"),
    (0, np.zeros((4, 2, 3), np.int32), TypeError, "log_probs"),
    (0, np.zeros((4, 6), np.float32), ValueError, "rank 3"),
    (1, np.ones((2, 2), np.float32), TypeError, "targets"),
    (1, np.ones((2, 2), np.int16), TypeError, "targets"),
    (1, np.ones(4, np.int32), ValueError, "rank 2"),
    (2, np.array([4, 4], np.float32), TypeError, "input_lengths"),
    (3, np.array([2, 1], np.uint8), TypeError, "target_lengths"),
    (2, np.array([4, 4], np.int64), TypeError, "same dtype"),
    (3, np.array([2, 1], np.int64), TypeError, "same dtype"),
    (2, np.array([4, 4, 4], np.int32), ValueError, "input_lengths"),
    (3, np.array([2], np.int32), ValueError, "target_lengths"),
    (3, np.array([[2, 1]], np.int32), ValueError, "target_lengths"),
    (2, np.array([5, 4], np.int32), RuntimeError, r"input_lengths\[0\] = 5"),
    (2, np.array([4, -1], np.int32), RuntimeError, r"input_lengths\[1\] = -1"),
    (3, np.array([2, 3], np.int32), RuntimeError, r"target_lengths\[1\] = 3"),
    (2, np.array([1, 4], np.int32), RuntimeError, r"target_lengths\[0\] = 2 is outside \[0, 1\]"),
    (3, np.array([-1, 1], np.int32), RuntimeError, r"target_lengths\[0\] = -1"),
    (1, np.array([[1, 3], [1, 1]], np.int32), ValueError, r"targets\[0, 1\] = 3"),
])
def test_call_errors(which, value, exc, match):
    args = list(_good())
    args[which] = value
    with pytest.raises(exc, match=match):
        fastctc.CTCLossV2()(*args)


def test_error_classes_and_blank_range():
    with pytest.raises(fastctc.CTCValueError, match="blank"):
        fastctc.CTCLossV2(blank=3)(*_good())
    with pytest.raises(fastctc.CTCValueError, match="blank"):
        fastctc.CTCLossV2(blank=-1)(*_good())
    with pytest.raises(fastctc.CTCRuntimeError):
        args = list(_good())
        args[2] = (5, 4)
        fastctc.CTCLossV2()(*args)
    with pytest.raises(fastctc.CTCTypeError):
        fastctc.CTCLossV2(zero_infinity=None)


def test_against_mindspore_if_installed(rng):
    ms = pytest.importorskip("mindspore")
    lp, tg, il, tl = _random_case(rng, 7, 3, 5, 3, 0, np.float32)
    op = ms.ops.CTCLossV2(blank=0, reduction="none", zero_infinity=False)
    want_nll, want_alpha = op(ms.Tensor(lp), ms.Tensor(tg.astype(np.int32)),
                              ms.Tensor(il.astype(np.int32)), ms.Tensor(tl.astype(np.int32)))
    nll, log_alpha = fastctc.CTCLossV2()(lp, tg.astype(np.int32), il.astype(np.int32), tl.astype(np.int32))
    np.testing.assert_allclose(nll, want_nll.asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_alpha, want_alpha.asnumpy(), rtol=1e-5, atol=1e-5)
