"""fastctc._reduction: PyTorch's 'none' / 'sum' / 'mean' reductions with zero_infinity, one
function for NumPy arrays, torch tensors and CuPy arrays.  Checked against the compiled
twins the eager paths use on small batches (fastctc._fast.reduce / grad_weights: bit for
bit), against torch.nn.functional.ctc_loss's own reductions, and across array kinds."""
import numpy as np
import pytest
from fastctc import _fast
from fastctc._reduction import loss_weights, reduce_losses, zero_infinite


def _costs(N, dtype, seed=0):
    rng = np.random.default_rng(seed + N)
    costs = (rng.random(N) * 50).astype(dtype)
    if N > 2:
        costs[1] = np.inf
    if N > 5:
        costs[4] = np.nan  # an undefined sequence stays NaN, zero_infinity or not
    tl = rng.integers(0, 9, N).astype(np.int32)  # zeros included: divided by max(0, 1)
    return costs, tl


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [0, 1, 3, 7, 8, 33, 20000])
def test_numpy_matches_compiled_reduce_bit_for_bit(reduction, dtype, N):
    """N = 20000 passes NumPy's 8192-element buffer of a casting sum."""
    costs, tl = _costs(N, dtype)
    for zero_infinity in (False, True):
        want = _fast.reduce(costs.copy(), tl, reduction, zero_infinity)
        got = reduce_losses(costs.copy(), tl, reduction, zero_infinity)
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loss_weights(tl, reduction), _fast.grad_weights(tl, reduction))


def test_rules():
    costs = np.array([np.inf, 2.0, np.nan, 6.0])
    tl = np.array([3, 0, 1, 3])
    np.testing.assert_array_equal(zero_infinite(costs), [0.0, 2.0, np.nan, 6.0])
    assert np.isposinf(costs[0])  # the input is not modified
    assert np.isposinf(reduce_losses(costs[:2], tl[:2], "sum", False))
    assert reduce_losses(costs[[0, 1, 3]], tl[[0, 1, 3]], "sum", True) == 8.0
    # mean: each loss over max(target_length, 1), then averaged over the batch
    assert reduce_losses(costs[[1, 3]], tl[[1, 3]], "mean", False) == (2.0 / 1 + 6.0 / 3) / 2
    assert np.isnan(reduce_losses(costs[:0], tl[:0], "mean", False))
    assert np.isnan(reduce_losses(costs, tl, "mean", True))  # NaN is not infinite
    np.testing.assert_array_equal(loss_weights([3, 0], "mean"), [1 / 6, 1 / 2])
    np.testing.assert_array_equal(loss_weights([3, 0], "sum"), [1.0, 1.0])


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_tensors_agree_with_numpy_and_differentiate(reduction, dtype):
    torch = pytest.importorskip("torch")
    costs, tl = _costs(33, dtype)
    costs[4] = 1.5
    for zero_infinity in (False, True):
        x = torch.tensor(costs, requires_grad=True)
        for lengths in (tl, torch.from_numpy(tl), tl.tolist()):
            got = reduce_losses(x, lengths, reduction, zero_infinity)
            want = reduce_losses(costs, tl, reduction, zero_infinity)
            assert isinstance(got, torch.Tensor) and got.dtype == x.dtype and tuple(got.shape) == want.shape
            np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-15 if dtype == np.float64 else 1e-6)
        if reduction != "none" and zero_infinity:
            got.backward()
            w = loss_weights(tl, reduction).astype(dtype)
            w[1] = 0  # zeroed by zero_infinity: no gradient through it
            np.testing.assert_allclose(x.grad.numpy(), w, rtol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_torch_ctc_loss_reduction(reduction, rng):
    """The per-sequence losses of torch's own ctc_loss, reduced by us, equal torch's reduced loss."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    lp = torch.log_softmax(torch.tensor(rng.standard_normal((12, 5, 6))), -1)
    tg = torch.tensor(rng.integers(1, 6, (5, 4)))
    il = torch.tensor([12, 10, 3, 12, 7])
    tl = torch.tensor([4, 0, 3, 2, 4])  # sequence 2 cannot fit: +inf; sequence 1 empty: max(0, 1)
    for zero_infinity in (False, True):
        per = F.ctc_loss(lp, tg, il, tl, reduction="none", zero_infinity=False)
        want = F.ctc_loss(lp, tg, il, tl, reduction=reduction, zero_infinity=zero_infinity)
        got = reduce_losses(per, tl, reduction, zero_infinity)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-13)
        np.testing.assert_allclose(reduce_losses(per.numpy(), tl.numpy(), reduction, zero_infinity),
                                   want.numpy(), rtol=1e-13)


def test_jax_arrays_zero_infinite():
    jnp = pytest.importorskip("jax.numpy")
    got = zero_infinite(jnp.asarray(np.array([np.inf, -np.inf, np.nan, 1.0], np.float32)))
    assert type(got).__module__.split(".")[0] in ("jax", "jaxlib")
    np.testing.assert_array_equal(np.asarray(got), [0.0, -np.inf, np.nan, 1.0])


def test_cupy_arrays_on_the_device():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed: the CuPy kind is checked on a GPU machine")
    costs, tl = _costs(33, np.float32)
    for reduction in ("none", "sum", "mean"):
        for lengths in (tl, cp.asarray(tl)):
            got = reduce_losses(cp.asarray(costs), lengths, reduction, True)
            assert isinstance(got, cp.ndarray) and got.dtype == np.float32
            np.testing.assert_allclose(cp.asnumpy(got), reduce_losses(costs, tl, reduction, True), rtol=1e-6)
