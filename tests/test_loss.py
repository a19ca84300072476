"""CPU engine: ctc_loss / ctc_loss_and_grad against float64 references, brute force,
finite differences and published values, at every SIMD level this machine has; and
number for number against PyTorch's own CPU CTC (random shapes, layouts, input forms
and awkward values; see the parity section)."""
import fastctc
import numpy as np
import published
import pytest
import reference as ref
from reference import random_labels, random_log_probs

try:
    import torch
    F = torch.nn.functional
except ImportError:  # the parity tests below skip, saying so
    torch = F = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed: no parity check against its CTC")


def _padded(rng, N, S, C, blank, lengths, avoid_blank=True):
    tg = rng.integers(0, C, size=(N, S))
    if avoid_blank and C > 1:
        tg = np.where(tg == blank, (blank + 1) % C, tg)
    return tg


# ---------------------------------------------------------------- exact values

def test_graves_values(simd_level):
    probs = np.array(published.GRAVES_PROBS)  # (N, T, C)
    lp = np.log(probs).transpose(1, 0, 2)      # (T, N, C)
    targets = published.GRAVES_TARGETS
    flat = np.concatenate([np.array(t) for t in targets])
    tl = [len(t) for t in targets]
    for dtype, tol in ((np.float64, 1e-5), (np.float32, 2e-5)):
        loss = fastctc.ctc_loss(lp.astype(dtype), flat, published.GRAVES_INPUT_LENGTHS, tl,
                                blank=published.GRAVES_BLANK, reduction="none")
        np.testing.assert_allclose(loss, published.GRAVES_LOSS, rtol=tol)
        # gradient with respect to logits: feed log(probs) as logits (softmax(log p) = p)
        _, grad = fastctc.ctc_loss_and_grad(lp.astype(dtype), flat, published.GRAVES_INPUT_LENGTHS, tl,
                                            blank=published.GRAVES_BLANK, reduction="sum", from_logits=True)
        np.testing.assert_allclose(grad.transpose(1, 0, 2), published.GRAVES_GRAD_LOGITS, atol=2e-6)


def test_warpctc_small_and_tutorial(simd_level):
    acts = np.array(published.WARPCTC_SMALL_ACTS)
    loss = fastctc.ctc_loss(acts, published.WARPCTC_SMALL_TARGETS, acts.shape[0],
                            len(published.WARPCTC_SMALL_TARGETS), reduction="sum", from_logits=True)
    np.testing.assert_allclose(loss, published.WARPCTC_SMALL_LOSS, rtol=1e-6)
    for acts, targets, expected in published.WARPCTC_TUTORIAL:
        acts = np.array(acts, dtype=np.float64)
        for dtype in (np.float32, np.float64):
            loss = fastctc.ctc_loss(acts.astype(dtype), targets, acts.shape[0], len(targets),
                                    reduction="sum", from_logits=True)
            np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_mindspore_example_loss(simd_level):
    lp = np.array(published.MINDSPORE_LOG_PROBS, dtype=np.float32)
    loss = fastctc.ctc_loss(lp, published.MINDSPORE_TARGETS, published.MINDSPORE_INPUT_LENGTHS,
                            published.MINDSPORE_TARGET_LENGTHS, reduction="none")
    np.testing.assert_allclose(loss, published.MINDSPORE_NLL, rtol=1e-6)


def test_cat_walkthrough(simd_level):
    lp = np.log(np.array(published.CAT_PROBS))
    for dtype in (np.float32, np.float64):
        loss = fastctc.ctc_loss(lp.astype(dtype), published.CAT_TARGETS, 5, 3, reduction="sum")
        np.testing.assert_allclose(loss, published.CAT_LOSS, atol=1e-4)
    # the same through the fused softmax on the raw probabilities' logs
    loss = fastctc.ctc_loss(lp, published.CAT_TARGETS, 5, 3, reduction="sum", from_logits=True)
    np.testing.assert_allclose(loss, published.CAT_LOSS, atol=1e-4)


# ---------------------------------------------------------------- references

@pytest.mark.parametrize("T,C,labels,blank", [
    (1, 2, [], 0), (1, 2, [1], 0), (3, 3, [1, 2], 0), (4, 3, [1, 1], 0), (3, 3, [1, 1], 0),
    (2, 3, [1, 1], 0), (4, 3, [0, 1], 2), (5, 2, [1, 1], 0), (4, 4, [3, 1, 3], 2), (5, 3, [], 1),
])
def test_brute_force(simd_level, rng, T, C, labels, blank):
    lp = random_log_probs(rng, T, 1, C)[:, 0, :]
    expected = ref.brute_force_nll(lp, labels, blank)
    got = fastctc.ctc_loss(lp, labels, T, len(labels), blank=blank, reduction="none")
    if np.isinf(expected):
        assert np.isinf(got) and got > 0
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(ref.nll(lp, labels, blank), expected, rtol=1e-12)


def _random_case(rng, dtype=np.float64, max_T=14, max_C=7, max_S=6):
    T = int(rng.integers(1, max_T))
    N = int(rng.integers(1, 5))
    C = int(rng.integers(2, max_C))
    S = int(rng.integers(0, max_S))
    blank = int(rng.choice([0, C - 1, C // 2]))
    lp = random_log_probs(rng, T, N, C, dtype=dtype)
    tg = rng.integers(0, C, size=(N, S))
    if rng.random() < 0.8:
        tg = np.where(tg == blank, (blank + 1) % C, tg)
    if S and rng.random() < 0.3:
        tg[:, 1:] = tg[:, :1]  # repeats
    il = rng.integers(0, T + 1, size=N)
    tl = rng.integers(0, S + 1, size=N)
    return lp, tg, il, tl, blank


@pytest.mark.parametrize("seed", range(12))
def test_against_reference(simd_level, seed):
    rng = np.random.default_rng(seed)
    for _ in range(10):
        lp, tg, il, tl, blank = _random_case(rng)
        expected = ref.batch_nll(lp, tg, il, tl, blank)
        got = fastctc.ctc_loss(lp, tg, il, tl, blank=blank, reduction="none")
        np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)
        loss, grad = fastctc.ctc_loss_and_grad(lp, tg, il, tl, blank=blank, reduction="sum")
        for n in range(lp.shape[1]):
            want = np.zeros(lp.shape[::2])
            want[: il[n]] = ref.grad_log_probs(lp[: il[n], n], list(tg[n, : tl[n]]), blank)
            np.testing.assert_allclose(grad[:, n], want, atol=1e-11)
        # logits mode: unnormalised inputs, gradient softmax - occupancy
        x = lp * 1.7 + 0.3
        got = fastctc.ctc_loss(x, tg, il, tl, blank=blank, reduction="none", from_logits=True)
        np.testing.assert_allclose(got, ref.batch_nll(x, tg, il, tl, blank, from_logits=True), rtol=1e-11, atol=1e-12)
        _, grad = fastctc.ctc_loss_and_grad(x, tg, il, tl, blank=blank, reduction="sum", from_logits=True)
        for n in range(lp.shape[1]):
            want = np.zeros(lp.shape[::2])
            if np.isfinite(got[n]):
                want[: il[n]] = ref.grad_logits(x[: il[n], n], list(tg[n, : tl[n]]), blank)
            np.testing.assert_allclose(grad[:, n], want, atol=1e-11)


def _fd_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        a = x.copy()
        a[i] += eps
        b = x.copy()
        b[i] -= eps
        g[i] = (f(a) - f(b)) / (2 * eps)
    return g


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_finite_differences(simd_level, from_logits, reduction):
    rng = np.random.default_rng(7)
    T, N, C = 6, 3, 4
    x = rng.normal(size=(T, N, C))
    tg = np.array([[1, 2, 2], [3, 1, 0], [2, 0, 0]])
    il, tl = [6, 5, 4], [3, 2, 0]

    def f(a):
        return np.sum(fastctc.ctc_loss(a, tg, il, tl, blank=0, reduction=reduction, from_logits=from_logits))

    _, grad = fastctc.ctc_loss_and_grad(x, tg, il, tl, blank=0, reduction=reduction, from_logits=from_logits)
    np.testing.assert_allclose(grad, _fd_grad(f, x), atol=1e-7)


# ---------------------------------------------------------------- semantics

def test_input_forms_agree(simd_level, rng):
    T, N, C, S = 9, 3, 5, 4
    lp = random_log_probs(rng, T, N, C)
    tg = rng.integers(1, C, size=(N, S))
    il = np.array([9, 7, 5])
    tl = np.array([4, 2, 0])
    padded = fastctc.ctc_loss(lp, tg, il, tl, reduction="none")
    flat = np.concatenate([tg[n, : tl[n]] for n in range(N)])
    np.testing.assert_array_equal(fastctc.ctc_loss(lp, flat, il, tl, reduction="none"), padded)
    np.testing.assert_array_equal(
        fastctc.ctc_loss(lp, tg.astype(np.int32), tuple(il), list(tl), reduction="none"), padded)
    for n in range(N):
        # unbatched, as PyTorch reads it: 1-D targets concatenated (exactly tl labels), (1, S) padded
        single = fastctc.ctc_loss(lp[:, n], tg[n, : tl[n]], int(il[n]), int(tl[n]), reduction="none")
        assert single.shape == ()
        np.testing.assert_allclose(single, padded[n], rtol=1e-13)
        single = fastctc.ctc_loss(lp[:, n], tg[n : n + 1], np.array([il[n]]), np.array(tl[n]), reduction="none")
        np.testing.assert_allclose(single, padded[n], rtol=1e-13)
    # batch-major memory read through strides, non-contiguous class axis copied
    bm = np.ascontiguousarray(lp.transpose(1, 0, 2)).transpose(1, 0, 2)
    np.testing.assert_array_equal(fastctc.ctc_loss(bm, tg, il, tl, reduction="none"), padded)
    strided_c = np.asfortranarray(lp)
    np.testing.assert_array_equal(fastctc.ctc_loss(strided_c, tg, il, tl, reduction="none"), padded)
    big_endian = lp.astype(">f8")
    np.testing.assert_array_equal(fastctc.ctc_loss(big_endian, tg, il, tl, reduction="none"), padded)
    # reductions
    np.testing.assert_allclose(fastctc.ctc_loss(lp, tg, il, tl, reduction="sum"), padded.sum(), rtol=1e-13)
    np.testing.assert_allclose(fastctc.ctc_loss(lp, tg, il, tl), np.mean(padded / np.maximum(tl, 1)), rtol=1e-13)
    assert fastctc.ctc_loss(lp, tg, il, tl).shape == ()


def test_gradient_shapes_and_dtypes(simd_level, rng):
    lp = random_log_probs(rng, 7, 2, 4, dtype=np.float32)
    loss, grad = fastctc.ctc_loss_and_grad(lp, [[1, 2], [3, 3]], [7, 4], [2, 2])
    assert loss.dtype == np.float32 and loss.shape == ()
    assert grad.dtype == np.float32 and grad.shape == lp.shape
    assert not grad[4:, 1].any()  # rows past the input length are zero
    loss, grad = fastctc.ctc_loss_and_grad(lp[:, 0], [1, 2], 7, 2, reduction="none")
    assert loss.shape == () and grad.shape == (7, 4)


def test_infeasible_and_zero_infinity(simd_level, rng):
    lp = random_log_probs(rng, 3, 3, 4)
    tg = np.array([[1, 2, 3, 1], [1, 1, 0, 0], [1, 2, 0, 0]])
    il, tl = [3, 2, 3], [4, 2, 2]  # 4 labels in 3 frames; a repeat needs 3 frames; fine
    loss, grad = fastctc.ctc_loss_and_grad(lp, tg, il, tl, reduction="none")
    assert np.isposinf(loss[0]) and np.isposinf(loss[1]) and np.isfinite(loss[2])
    assert not grad[:, :2].any() and not np.isnan(grad).any()
    loss, grad = fastctc.ctc_loss_and_grad(lp, tg, il, tl, reduction="mean", zero_infinity=True)
    np.testing.assert_allclose(loss, fastctc.ctc_loss(lp, tg, il, tl, reduction="none")[2] / 2 / 3)
    assert np.isposinf(fastctc.ctc_loss(lp, tg, il, tl, reduction="sum"))
    # zero-length input: empty target costs 0, any other target is infeasible
    np.testing.assert_array_equal(fastctc.ctc_loss(lp, tg, [0, 0, 3], [0, 1, 0], reduction="none")[:2], [0, np.inf])


def _peaky_logits(rng, T, N, C, L, scale):
    """Logits of a confident model whose argmax path is an alignment of the targets."""
    tg = rng.integers(1, C, size=(N, L))
    x = rng.normal(size=(T, N, C)) * 3
    seg = T // (L + 1)
    for n in range(N):
        for t in range(T):
            k = t // seg
            x[t, n, tg[n, k] if (k < L and t % seg < seg // 2) else 0] += scale
    return x, tg


@pytest.mark.parametrize("scale", [20.0, 60.0, 150.0])
def test_peaky_float32_matches_float64(simd_level, scale):
    """Real models are confident: log-probs reaching -40 .. -170 stay accurate in fp32."""
    rng = np.random.default_rng(3)
    x, tg = _peaky_logits(rng, 200, 4, 30, 40, scale)
    lp64 = ref.log_softmax(x)
    il, tl = [200, 190, 200, 180], [40, 40, 39, 38]
    want = fastctc.ctc_loss(lp64, tg, il, tl, reduction="none")
    got = fastctc.ctc_loss(lp64.astype(np.float32), tg, il, tl, reduction="none")
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    _, g64 = fastctc.ctc_loss_and_grad(lp64, tg, il, tl, reduction="sum", from_logits=True)
    _, g32 = fastctc.ctc_loss_and_grad(lp64.astype(np.float32), tg, il, tl, reduction="sum", from_logits=True)
    np.testing.assert_allclose(g32, g64, atol=1e-5)


def test_adversarial_float32(simd_level):
    """Confident model, unrelated targets: every path costs thousands of nats.  The loss
    keeps fp32's relative precision; occupancies are off by at most ~1e-3 because each
    frame adds a log-prob of magnitude ~300 in fp32 (documented in the README)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4, 30)) * 60.0
    lp64 = ref.log_softmax(x)
    tg = rng.integers(1, 30, size=(4, 40))
    il, tl = [200, 180, 150, 120], [40, 35, 30, 20]
    want = fastctc.ctc_loss(lp64, tg, il, tl, reduction="none")
    got = fastctc.ctc_loss(lp64.astype(np.float32), tg, il, tl, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    _, g64 = fastctc.ctc_loss_and_grad(lp64, tg, il, tl, reduction="sum", from_logits=True)
    _, g32 = fastctc.ctc_loss_and_grad(lp64.astype(np.float32), tg, il, tl, reduction="sum", from_logits=True)
    np.testing.assert_allclose(g32, g64, atol=2e-3)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_give_identical_results(simd_level, rng, threads):
    lp = random_log_probs(rng, 30, 9, 6, dtype=np.float32)
    tg = rng.integers(1, 6, size=(9, 8))
    il = rng.integers(10, 31, size=9)
    tl = rng.integers(0, 9, size=9)
    l1, g1 = fastctc.ctc_loss_and_grad(lp, tg, il, tl, reduction="none", num_threads=1)
    l2, g2 = fastctc.ctc_loss_and_grad(lp, tg, il, tl, reduction="none", num_threads=threads)
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_array_equal(g1, g2)


def test_empty_batch():
    lp = np.zeros((5, 0, 3))
    assert fastctc.ctc_loss(lp, np.zeros((0, 2), int), [], [], reduction="none").shape == (0,)
    loss, grad = fastctc.ctc_loss_and_grad(lp, np.zeros((0, 2), int), [], [], reduction="sum")
    assert loss == 0 and grad.shape == (5, 0, 3)


def test_info():
    info = fastctc.info()
    assert info["version"] == fastctc.__version__
    assert info["simd_level"] in info["simd_levels_available"]
    assert isinstance(info["openmp"], bool) and info["threads"] >= 1
    assert "available" in info["cuda"]


def test_split_sequence_is_repeatable(simd_level):
    """Regression: one sequence split over two threads (forward and backward halves at once)
    raced on a shared row; repeated calls must equal the single-thread result exactly."""
    rng = np.random.default_rng(11)
    lp = random_log_probs(rng, 60, 1, 7, dtype=np.float32)
    tg = rng.integers(1, 7, size=(1, 20))
    want = fastctc.ctc_loss_and_grad(lp, tg, [60], [20], reduction="sum", num_threads=1)
    for _ in range(40):
        got = fastctc.ctc_loss_and_grad(lp, tg, [60], [20], reduction="sum", num_threads=2)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)


# ---------------------------------------------------------------- parity with PyTorch's CPU CTC
# Parity with PyTorch's own CPU CTC (torch.nn.functional.ctc_loss), number for number:
# random shapes, blank at 0 / middle / C-1, repeated labels, zero-length targets and
# inputs, infeasible targets, float32/float64, every reduction and input form.
#
# PyTorch's gradient with respect to log_probs is ours plus exp(log_probs) times the
# sequence's weight (it assumes normalised inputs); where PyTorch's gradient is NaN (an
# infeasible sequence without zero_infinity) ours is zero, so those are compared only
# through the loss.  Targets that contain the blank index itself are compared by loss only:
# PyTorch's backward miscounts the occupancy of such a label at the last frame (our
# gradient there agrees with finite differences; see test_loss.py).
#
# The random probes (awkward shapes, layouts, input forms, -inf entries) run the NumPy API
# against torch.nn.functional.ctc_loss; they skip, saying so, where torch is not installed.

def _weights(reduction, tl, N):
    if reduction == "mean":
        return 1.0 / np.maximum(tl, 1) / N
    return np.ones(N)


def _parity_case(rng, dtype):
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


@needs_torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(4))
def test_random_parity(simd_level, dtype, seed):
    rng = np.random.default_rng(100 + seed)
    rtol = 1e-10 if dtype == np.float64 else 2e-5
    atol = 1e-10 if dtype == np.float64 else 2e-5
    for _ in range(6):
        lp, tg, il, tl, blank = _parity_case(rng, dtype)
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


@needs_torch
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


@needs_torch
def test_targets_containing_blank_match_torch_loss(rng):
    lp = random_log_probs(rng, 8, 2, 4)
    tg = np.array([[3, 2], [2, 3]])
    want = F.ctc_loss(torch.tensor(lp), torch.tensor(tg), torch.tensor([8, 6]), torch.tensor([2, 2]),
                      blank=2, reduction="none")
    got = fastctc.ctc_loss(lp, tg, [8, 6], [2, 2], blank=2, reduction="none")
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)


def _torch_loss_and_grad(lp, targets, il, tl, blank, reduction, zero_infinity):
    x = torch.tensor(lp, requires_grad=True)
    loss = F.ctc_loss(x, torch.as_tensor(np.asarray(targets)), torch.as_tensor(np.asarray(il)),
                      torch.as_tensor(np.asarray(tl)), blank=blank, reduction=reduction,
                      zero_infinity=zero_infinity)
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def _compare_grad(grad, lp, torch_grad, per_seq, il, tl, reduction, tol):
    T, N, _ = lp.shape
    w = _weights(reduction, np.asarray(tl), N)
    valid = (np.arange(T)[:, None] < np.asarray(il)[None, :])[:, :, None]
    assert not np.isnan(grad).any()
    for n in range(N):
        if np.isinf(per_seq[n]):
            assert not grad[:, n].any(), "infeasible sequence must have zero gradient rows"
            continue
        ours = grad[:, n].astype(np.float64) + np.exp(lp[:, n].astype(np.float64)) * w[n] * valid[:, n]
        theirs = torch_grad[:, n]
        finite = np.isfinite(theirs)
        np.testing.assert_allclose(ours[finite], theirs[finite], rtol=tol, atol=tol)
        assert not grad[:, n][~valid[:, n, 0]].any(), "rows past the input length must be zero"


@needs_torch
@pytest.mark.parametrize("seed", range(3))
def test_numpy_api_random_parity_with_torch(simd_level, seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(25):
        lp, tg, il, tl, blank = ref.random_problem(rng)
        T, N, C = lp.shape
        reduction = ["none", "sum", "mean"][int(rng.integers(3))]
        zero_infinity = bool(rng.random() < 0.5)
        flat = rng.random() < 0.3
        targets = np.concatenate([tg[n, : tl[n]] for n in range(N)]) if flat else tg
        want, torch_grad = _torch_loss_and_grad(lp, targets, il, tl, blank, reduction, zero_infinity)
        acts = ref.random_layout(rng, lp)
        if rng.random() < 0.3:  # a torch tensor (sometimes one that requires grad) as the input
            acts = torch.from_numpy(lp).requires_grad_(bool(rng.random() < 0.5))
        args = (acts, ref.random_form(rng, targets, "targets"), ref.random_form(rng, il, "lengths"),
                ref.random_form(rng, tl, "lengths"))
        kw = dict(blank=blank, reduction=reduction, zero_infinity=zero_infinity)
        tol = 2e-5 if lp.dtype == np.float32 else 1e-10
        got = fastctc.ctc_loss(*args, **kw)
        assert isinstance(got, np.ndarray) and got.dtype == lp.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
        loss, grad = fastctc.ctc_loss_and_grad(*args, **kw)
        # same value to rounding: a gradient call on fewer sequences than threads computes
        # log p where its forward and backward halves meet (see detail/trellis.h)
        np.testing.assert_allclose(loss, got, rtol=1e-13 if lp.dtype == np.float64 else 1e-6)
        assert grad.shape == lp.shape and grad.dtype == lp.dtype
        per_seq = F.ctc_loss(torch.tensor(lp), torch.tensor(tg), torch.tensor(il), torch.tensor(tl),
                             blank=blank, reduction="none").numpy()
        _compare_grad(grad, lp, torch_grad, per_seq, il, tl, reduction, tol * 10)


@needs_torch
@pytest.mark.parametrize("il_form", ["int", "np_scalar", "tensor0", "tensor1", "tuple", "list"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_unbatched_every_length_form(rng, il_form, reduction):
    T, C = 7, 5
    lp = ref.log_softmax(rng.normal(size=(T, C)) * 2)
    il, tl = 6, 3
    # PyTorch reads 1-D targets as the concatenated form (exactly tl labels) and (1, S) as padded
    targets = np.array([3, 3, 1]) if il_form in ("int", "tuple", "tensor0") else np.array([[3, 3, 1, 4, 2]])
    forms = {"int": lambda v: v, "np_scalar": np.int32, "tensor0": torch.tensor,
             "tensor1": lambda v: torch.tensor([v]), "tuple": lambda v: (v,), "list": lambda v: [v]}
    conv = forms[il_form]
    torch_forms = il_form in ("tensor0", "tensor1", "tuple", "list")  # torch rejects bare ints
    want, torch_grad = _torch_loss_and_grad(lp, targets, conv(il) if torch_forms else (il,),
                                            conv(tl) if torch_forms else (tl,), 0, reduction, False)
    loss, grad = fastctc.ctc_loss_and_grad(lp, targets, conv(il), conv(tl), reduction=reduction)
    assert loss.shape == () == want.shape
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    assert grad.shape == (T, C)
    w = 1.0 / tl if reduction == "mean" else 1.0
    valid = (np.arange(T) < il)[:, None]
    np.testing.assert_allclose(grad + np.exp(lp) * w * valid, torch_grad, rtol=1e-10, atol=1e-12)


@needs_torch
def test_edge_shapes_match_torch(rng):
    cases = [
        # (T, N, C, blank, targets, il, tl)
        (1, 2, 3, 0, [[1], [2]], [1, 1], [1, 0]),            # T = 1
        (4, 2, 1, 0, np.zeros((2, 0), int), [4, 2], [0, 0]),  # C = 1: only the blank
        (5, 3, 4, 3, [[0, 0, 0], [1, 2, 1], [2, 2, 0]], [5, 0, 3], [3, 0, 2]),  # blank C-1, il 0, repeats
        (9, 1, 3, 1, [[2, 2, 2, 2, 2]], [9], [5]),           # 5 repeats need 9 frames: fits exactly
        (8, 1, 3, 1, [[2, 2, 2, 2, 2]], [8], [5]),           # one frame short: +inf
        (3, 2, 5, 2, [[1, 3, 4], [0, 0, 0]], [3, 3], [3, 0]),
    ]
    for T, N, C, blank, tg, il, tl in cases:
        for dtype in (np.float32, np.float64):
            lp = ref.log_softmax(rng.normal(size=(T, N, C))).astype(dtype)
            tg = np.asarray(tg, dtype=np.int64).reshape(N, -1)
            for reduction in ("none", "sum", "mean"):
                for zero_infinity in (False, True):
                    want, torch_grad = _torch_loss_and_grad(lp, tg, il, tl, blank, reduction, zero_infinity)
                    loss, grad = fastctc.ctc_loss_and_grad(lp, tg, il, tl, blank=blank, reduction=reduction,
                                                           zero_infinity=zero_infinity)
                    tol = 2e-5 if dtype == np.float32 else 1e-10
                    np.testing.assert_allclose(loss, want, rtol=tol, atol=tol)
                    per_seq = F.ctc_loss(torch.tensor(lp), torch.tensor(tg), torch.tensor(il), torch.tensor(tl),
                                         blank=blank, reduction="none").numpy()
                    _compare_grad(grad, lp, torch_grad, per_seq, il, tl, reduction, tol * 10)


def test_infeasible_zero_grad_in_both_modes(rng):
    """(test_infeasible_and_zero_infinity checks log-probs mode in more detail.)"""
    lp = ref.log_softmax(rng.normal(size=(3, 2, 4)))
    tg = np.array([[1, 1, 2], [1, 2, 3]])
    for from_logits in (False, True):
        loss, grad = fastctc.ctc_loss_and_grad(lp, tg, [3, 3], [3, 3], reduction="none", from_logits=from_logits)
        assert np.isposinf(loss[0]) and np.isfinite(loss[1])
        assert not grad[:, 0].any() and grad[:, 1].any()
        loss, grad = fastctc.ctc_loss_and_grad(lp, tg, [3, 3], [3, 3], reduction="mean", zero_infinity=True,
                                               from_logits=from_logits)
        assert np.isfinite(loss) and not grad[:, 0].any()


@needs_torch
def test_huge_values_and_logits_mode(rng):
    """Logits of magnitude 1e4 (log_softmax fused) and a log-prob of -1e30 stay exact."""
    x = rng.normal(size=(6, 3, 5)) * 1e4
    tg, il, tl = np.array([[1, 2], [3, 3], [4, 1]]), [6, 6, 5], [2, 2, 1]
    xt = torch.tensor(x, requires_grad=True)
    want = F.ctc_loss(xt.log_softmax(-1), torch.tensor(tg), il, tl, reduction="sum")
    want.backward()
    loss, grad = fastctc.ctc_loss_and_grad(x, tg, il, tl, reduction="sum", from_logits=True)
    np.testing.assert_allclose(loss, want.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), atol=1e-9)
    lp = ref.log_softmax(rng.normal(size=(5, 1, 4)))
    lp[2, 0, 1] = -1e30
    np.testing.assert_allclose(fastctc.ctc_loss(lp, [[1, 2]], [5], [2], reduction="none"),
                               F.ctc_loss(torch.tensor(lp), torch.tensor([[1, 2]]), [5], [2], reduction="none"),
                               rtol=1e-12)
