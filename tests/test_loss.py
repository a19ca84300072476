"""CPU engine: ctc_loss / ctc_loss_and_grad against float64 references, brute force,
finite differences and published values, at every SIMD level this machine has."""
import fastctc
import numpy as np
import published
import pytest
import reference as ref
from reference import random_log_probs


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
