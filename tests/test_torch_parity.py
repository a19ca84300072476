"""Parity with PyTorch's own CPU CTC (torch.nn.functional.ctc_loss), number for number:
random shapes, blank at 0 / middle / C-1, repeated labels, zero-length targets and
inputs, infeasible targets, float32/float64, every reduction and input form.

PyTorch's gradient with respect to log_probs is ours plus exp(log_probs) times the
sequence's weight (it assumes normalised inputs); where PyTorch's gradient is NaN (an
infeasible sequence without zero_infinity) ours is zero, so those are compared only
through the loss.  Targets that contain the blank index itself are compared by loss only:
PyTorch's backward miscounts the occupancy of such a label at the last frame (our
gradient there agrees with finite differences; see test_loss.py)."""
import fastctc
import numpy as np
import pytest
from reference import random_labels, random_log_probs

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _weights(reduction, tl, N):
    if reduction == "mean":
        return 1.0 / np.maximum(tl, 1) / N
    return np.ones(N)


def _case(rng, dtype):
    T = int(rng.integers(1, 40))
    N = int(rng.integers(1, 6))
    C = int(rng.integers(2, 12))
    S = int(rng.integers(0, 15))
    blank = int(rng.choice([0, C // 2, C - 1]))
    lp = random_log_probs(rng, T, N, C, dtype=dtype, scale=3.0)
    tg = random_labels(rng, (N, S), C, blank)
    if S > 2 and rng.random() < 0.4:
        tg[:, 2] = tg[:, 1]
    il = rng.integers(0, T + 1, size=N)
    il[0] = T
    tl = rng.integers(0, S + 1, size=N)
    return lp, tg, il, tl, blank


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(4))
def test_random_parity(simd_level, dtype, seed):
    rng = np.random.default_rng(100 + seed)
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    atol = 1e-10 if dtype == np.float64 else 2e-5
    for _ in range(6):
        lp, tg, il, tl, blank = _case(rng, dtype)
        N = lp.shape[1]
        flat = np.concatenate([tg[n, : tl[n]] for n in range(N)]) if N else tg.reshape(-1)
        for reduction in ("none", "sum", "mean"):
            for zero_infinity in (False, True):
                for form in ("padded", "flat"):
                    targets = tg if form == "padded" else flat
                    lpt = torch.tensor(lp, requires_grad=True)
                    want = F.ctc_loss(lpt, torch.tensor(targets), torch.tensor(il), torch.tensor(tl),
                                      blank=blank, reduction=reduction, zero_infinity=zero_infinity)
                    got = fastctc.ctc_loss(lp, targets, il, tl, blank=blank, reduction=reduction,
                                           zero_infinity=zero_infinity)
                    assert got.dtype == lp.dtype
                    np.testing.assert_allclose(got, want.detach().numpy(), rtol=rtol, atol=atol)
                    loss, grad = fastctc.ctc_loss_and_grad(lp, targets, il, tl, blank=blank,
                                                           reduction=reduction, zero_infinity=zero_infinity)
                    np.testing.assert_allclose(loss, got, rtol=1e-6 if dtype == np.float32 else 1e-12)
                    want.sum().backward()
                    per_seq = fastctc.ctc_loss(lp, tg, il, tl, blank=blank, reduction="none")
                    w = _weights(reduction, tl, N)
                    valid_t = np.arange(lp.shape[0])[:, None] < il[None, :]
                    torch_grad = lpt.grad.numpy()
                    for n in range(N):
                        if np.isinf(per_seq[n]):
                            assert not grad[:, n].any()
                            continue
                        ours = grad[:, n] + np.exp(lp[:, n]) * w[n] * valid_t[:, n, None]
                        np.testing.assert_allclose(ours, torch_grad[:, n], rtol=rtol, atol=atol * 10)


def test_unbatched_parity(simd_level, rng):
    lp = random_log_probs(rng, 12, 1, 5)[:, 0]
    tg = np.array([1, 2, 2, 4])
    for reduction in ("none", "sum", "mean"):
        want = F.ctc_loss(torch.tensor(lp), torch.tensor(tg), torch.tensor(12), torch.tensor(4),
                          reduction=reduction)
        got = fastctc.ctc_loss(lp, tg, 12, 4, reduction=reduction)
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)


def test_logits_mode_matches_torch_after_log_softmax(simd_level, rng):
    x = rng.normal(size=(20, 3, 7)) * 4
    tg = np.array([[1, 2, 3], [4, 4, 1], [6, 0, 0]])
    il, tl = [20, 15, 9], [3, 3, 1]
    xt = torch.tensor(x, requires_grad=True)
    want = F.ctc_loss(xt.log_softmax(-1), torch.tensor(tg), torch.tensor(il), torch.tensor(tl),
                      blank=5, reduction="mean")
    want.backward()
    loss, grad = fastctc.ctc_loss_and_grad(x, tg, il, tl, blank=5, reduction="mean", from_logits=True)
    np.testing.assert_allclose(loss, want.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), atol=1e-12)


def test_targets_containing_blank_match_torch_loss(rng):
    lp = random_log_probs(rng, 8, 2, 4)
    tg = np.array([[3, 2], [2, 3]])
    want = F.ctc_loss(torch.tensor(lp), torch.tensor(tg), torch.tensor([8, 6]), torch.tensor([2, 2]),
                      blank=2, reduction="none")
    got = fastctc.ctc_loss(lp, tg, [8, 6], [2, 2], blank=2, reduction="none")
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)
