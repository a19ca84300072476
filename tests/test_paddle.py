"""fastctc.paddle against real PaddlePaddle (3.3.x, CPU): losses and gradients of every
reduction, norm_by_times, zero_infinity, warp-ctc's rules for targets that cannot fit and
for empty inputs, Paddle's mean (no clamp of label_lengths), and the error cases: the same
builtin exception class wherever Paddle raises, an exception (never a crash) wherever
Paddle crashes or returns meaningless numbers.

Paddle cannot share a process with MindSpore 2.10 and needs its own environment: .ci/run
creates .venv-paddle and runs this file there.  Where paddle is not installed the whole
module is skipped with the reason (pytest -ra prints it)."""
import warnings

import numpy as np
import pytest

paddle = pytest.importorskip("paddle", reason="paddlepaddle is not installed in this environment "
                                              "(.ci/run runs this file in .venv-paddle)")
import paddle.nn.functional as F  # noqa: E402

import fastctc  # noqa: E402
import fastctc.paddle as fp  # noqa: E402

warnings.filterwarnings("ignore", module="paddle")
paddle.set_device("cpu")


def _t(x, dtype=None):
    return paddle.to_tensor(np.asarray(x) if dtype is None else np.asarray(x, dtype))


def _loss_and_grad(fn, x, lab, il, ll, upstream=None, **kw):
    xt = paddle.to_tensor(x, stop_gradient=False)
    loss = fn(xt, _t(lab, np.int32), _t(il, np.int64), _t(ll, np.int64), **kw)
    out = loss if upstream is None else loss * _t(upstream, x.dtype)
    out.sum().backward()
    return loss.numpy(), xt.grad.numpy()


def _case(rng, dtype, T=9, C=6, S=4, blank=0):
    """A batch exercising every rule Paddle can be run on: a full-length sequence, shorter
    inputs, repeated labels, a target that cannot fit, an empty target.  (An empty input
    is not here: Paddle 3.3 crashes on input_length 0 now and then; see test_empty_input.)"""
    N = 6
    x = (rng.normal(size=(T, N, C)) * 2).astype(dtype)
    lab = rng.integers(0, C, size=(N, S)).astype(np.int32)
    lab[lab == blank] = (blank + 1) % C
    lab[1] = (blank + 2) % C  # all repeats: needs 2S - 1 = 7 frames
    lab[2, :2] = (blank + 3) % C
    il = np.array([T, 6, T - 2, 5, T, T - 1], np.int64)
    ll = np.array([S, S, 3, 0, 2, S], np.int64)
    return x, lab, il, ll


def test_documented_example():
    x = np.array([[[4.17021990e-01, 7.20324516e-01, 1.14374816e-04],
                   [3.02332580e-01, 1.46755889e-01, 9.23385918e-02]],
                  [[1.86260208e-01, 3.45560730e-01, 3.96767467e-01],
                   [5.38816750e-01, 4.19194520e-01, 6.85219526e-01]],
                  [[2.04452246e-01, 8.78117442e-01, 2.73875929e-02],
                   [6.70467496e-01, 4.17304814e-01, 5.58689833e-01]],
                  [[1.40386939e-01, 1.98101491e-01, 8.00744593e-01],
                   [9.68261600e-01, 3.13424170e-01, 6.92322612e-01]],
                  [[8.76389146e-01, 8.94606650e-01, 8.50442126e-02],
                   [3.90547849e-02, 1.69830427e-01, 8.78142476e-01]]], np.float32)
    args = (_t(x), _t([[1, 2, 2], [1, 2, 2]], np.int32), _t([5, 5], np.int64), _t([3, 3], np.int64))
    np.testing.assert_allclose(fp.ctc_loss(*args, blank=0, reduction="none").numpy(),
                               [3.91798496, 2.90765190], rtol=1e-6)
    np.testing.assert_allclose(fp.ctc_loss(*args, blank=0, reduction="mean").numpy(), 1.13760614, rtol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("norm_by_times", [False, True])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_matches_paddle(rng, dtype, tol, reduction, norm_by_times, zero_infinity):
    x, lab, il, ll = _case(rng, dtype, blank=2)
    if reduction == "mean":  # a zero label_length makes Paddle's mean inf/nan; tested below
        ll = np.maximum(ll, 1)
    kw = dict(blank=2, reduction=reduction, norm_by_times=norm_by_times, zero_infinity=zero_infinity)
    before = fp._rescaled_backwards
    got, ggot = _loss_and_grad(fp.ctc_loss, x, lab, il, ll, **kw)
    if not zero_infinity:  # the anticipated upstream weights were right: no rescaling pass
        assert fp._rescaled_backwards == before
    want, gwant = _loss_and_grad(F.ctc_loss, x, lab, il, ll, **kw)
    assert got.dtype == want.dtype and got.shape == want.shape and ggot.dtype == gwant.dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(ggot, gwant, rtol=tol, atol=tol)


def test_warp_ctc_rules(rng):
    """A target that cannot fit costs 0 with a zero gradient (the plain likelihood says
    +inf); an empty target over frames is finite; the rest is the plain likelihood."""
    x, lab, il, ll = _case(rng, np.float64)
    loss, grad = _loss_and_grad(fp.ctc_loss, x, lab, il, ll, reduction="none")
    assert loss[1] == 0 and np.all(grad[:, 1] == 0)  # 4 repeats need 7 frames, 6 given
    assert np.isfinite(loss[3]) and loss[3] > 0
    plain = fastctc.ctc_loss(x, lab, il, ll, blank=0, reduction="none", from_logits=True)
    assert np.isposinf(plain[1])
    mask = np.arange(len(ll)) != 1
    np.testing.assert_allclose(loss[mask], plain[mask], rtol=1e-12)


def test_empty_input():
    """input_length 0: Paddle 3.3 reads memory it should not there (it crashes now and then,
    so it is not run here); when it survives it returns +inf for an empty target and 0 for
    a non-empty one (the cannot-fit rule), which is what fastctc.paddle returns, always.
    zero_infinity turns the +inf into 0; norm_by_times leaves the (absent) rows at 0 where
    Paddle divides them by 0 (NaN)."""
    x = np.zeros((3, 3, 4), np.float32)
    lab, il, ll = np.ones((3, 2), np.int32), np.array([0, 0, 3]), np.array([0, 2, 1])
    loss, grad = _loss_and_grad(fp.ctc_loss, x, lab, il, ll, reduction="none", norm_by_times=True)
    assert np.isposinf(loss[0]) and loss[1] == 0 and np.isfinite(loss[2])
    assert np.all(grad[:, :2] == 0) and np.isfinite(grad).all()
    zi, _ = _loss_and_grad(fp.ctc_loss, x, lab, il, ll, reduction="none", zero_infinity=True)
    assert zi[0] == 0 and zi[1] == 0 and zi[2] == loss[2]


def test_mean_with_empty_target_is_inf_as_in_paddle(rng):
    """Paddle's mean divides by label_lengths unclamped: inf loss, non-finite gradient rows
    for that sequence; every other sequence's gradient is unaffected."""
    x, lab, il, ll = _case(rng, np.float32)
    got, ggot = _loss_and_grad(fp.ctc_loss, x, lab, il, ll, reduction="mean")
    want, gwant = _loss_and_grad(F.ctc_loss, x, lab, il, ll, reduction="mean")
    assert np.isposinf(got) and np.isposinf(want)
    np.testing.assert_array_equal(np.isfinite(ggot), np.isfinite(gwant))
    fin = np.isfinite(gwant)
    np.testing.assert_allclose(ggot[fin], gwant[fin], rtol=2e-5, atol=2e-5)


def test_custom_upstream_and_layer(rng):
    """An upstream gradient the forward did not anticipate (a weighted sum) is rescaled in
    backward; the CTCLoss layer is the functional form."""
    x, lab, il, ll = _case(rng, np.float64)
    w = rng.uniform(0.5, 2.0, size=len(ll))
    before = fp._rescaled_backwards
    got, ggot = _loss_and_grad(fp.ctc_loss, x, lab, il, ll, upstream=w, reduction="none")
    assert fp._rescaled_backwards == before + 1
    want, gwant = _loss_and_grad(F.ctc_loss, x, lab, il, ll, upstream=w, reduction="none")
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(ggot, gwant, rtol=1e-10, atol=1e-12)
    ours, theirs = fp.CTCLoss(blank=0, reduction="sum"), paddle.nn.CTCLoss(blank=0, reduction="sum")
    args = (_t(x), _t(lab, np.int32), _t(il, np.int64), _t(ll, np.int64))
    np.testing.assert_allclose(ours(*args, norm_by_times=True).numpy(), theirs(*args, norm_by_times=True).numpy(),
                               rtol=1e-10)
    assert "reduction='sum'" in repr(ours)


def test_gradient_finite_difference(rng):
    x, lab, il, ll = _case(rng, np.float64, T=7, C=4, S=3)
    ll = np.maximum(ll, 1)  # mean divides by label_lengths
    _, grad = _loss_and_grad(fp.ctc_loss, x, lab, il, ll, reduction="mean")

    def f(v):
        return float(fp.ctc_loss(_t(v), _t(lab, np.int32), _t(il, np.int64), _t(ll, np.int64)).numpy())
    eps = 1e-6
    for idx in [(0, 0, 1), (2, 2, 0), (4, 3, 3), (5, 0, 0), (6, 5, 2)]:
        up, dn = x.copy(), x.copy()
        up[idx] += eps
        dn[idx] -= eps
        np.testing.assert_allclose(grad[idx], (f(up) - f(dn)) / (2 * eps), atol=1e-7)


def test_no_grad_paths(rng):
    x, lab, il, ll = _case(rng, np.float32)
    args = (_t(lab, np.int32), _t(il, np.int64), _t(ll, np.int64))
    a = fp.ctc_loss(_t(x), *args, reduction="none")  # stop_gradient=True: loss only
    assert a.stop_gradient
    xt = paddle.to_tensor(x, stop_gradient=False)
    with paddle.no_grad():
        b = fp.ctc_loss(xt, *args, reduction="none")
    c = fp.ctc_loss(xt, *args, reduction="none")
    assert not c.stop_gradient
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(a.numpy(), c.numpy())


def _good():
    return (np.zeros((4, 2, 3), np.float32), np.ones((2, 2), np.int32),
            np.array([4, 4], np.int64), np.array([2, 1], np.int64))


def _call(fn, args, **kw):
    x, lab, il, ll = args
    return fn(_t(x), _t(lab), _t(il), _t(ll), **kw)


# Cases where Paddle itself raises: ours raises an exception of Paddle's builtin class.
PADDLE_RAISES = [
    ("blank = C", 0, None, {"blank": 3}),
    ("blank < 0", 0, None, {"blank": -1}),
    ("labels int64", 1, np.ones((2, 2), np.int64), {}),
    ("input_lengths int32", 2, np.array([4, 4], np.int32), {}),
    ("label_lengths int32", 3, np.array([2, 1], np.int32), {}),
    ("log_probs float16", 0, np.zeros((4, 2, 3), np.float16), {}),
    ("log_probs rank 2", 0, np.zeros((4, 3), np.float32), {}),
    ("label_lengths > S", 3, np.array([3, 1], np.int64), {}),
]


@pytest.mark.parametrize("name,which,value,kw", PADDLE_RAISES, ids=[c[0] for c in PADDLE_RAISES])
def test_errors_paddle_raises_too(name, which, value, kw):
    args = list(_good())
    if value is not None:
        args[which] = value
    with pytest.raises(Exception) as theirs:
        _call(F.ctc_loss, args, **kw)
    builtin = next(c for c in type(theirs.value).__mro__ if c.__module__ == "builtins")
    with pytest.raises(builtin) as ours:
        _call(fp.ctc_loss, args, **kw)
    assert isinstance(ours.value, (fastctc.CTCValueError, fastctc.CTCTypeError, fastctc.CTCRuntimeError))


# Cases where Paddle 3.3 crashes the process (heap corruption, segfault) or returns
# meaningless values: ours raises, naming the argument, index and bound.  Paddle is not run.
PADDLE_CRASHES = [
    ("input_lengths > T", 2, np.array([5, 4], np.int64), ValueError, r"input_lengths\[0\] = 5"),
    ("input_lengths < 0", 2, np.array([4, -1], np.int64), ValueError, r"input_lengths\[1\] = -1"),
    ("label_lengths < 0", 3, np.array([-1, 1], np.int64), ValueError, r"label_lengths\[0\] = -1"),
    ("input_lengths wrong N", 2, np.array([4, 4, 4], np.int64), ValueError, "input_lengths"),
    ("labels wrong N", 1, np.ones((1, 2), np.int32), ValueError, "labels"),
    ("label >= C", 1, np.array([[1, 3], [1, 1]], np.int32), ValueError, r"\[0, 1\] = 3"),
    ("label < 0", 1, np.array([[-1, 1], [1, 1]], np.int32), ValueError, r"\[0, 0\] = -1"),
]


@pytest.mark.parametrize("name,which,value,exc,match", PADDLE_CRASHES, ids=[c[0] for c in PADDLE_CRASHES])
def test_errors_where_paddle_crashes(name, which, value, exc, match):
    args = list(_good())
    args[which] = value
    with pytest.raises(exc, match=match):
        _call(fp.ctc_loss, args)


def test_label_equal_to_blank_is_refused():
    """warp-ctc scores a label equal to the blank with a trellis of its own (no skip into it);
    fastctc.paddle refuses it rather than return another number, and the test shows why."""
    x = np.random.default_rng(3).normal(size=(6, 1, 4)).astype(np.float64)
    lab, il, ll = np.array([[1, 0, 2]], np.int32), np.array([6], np.int64), np.array([3], np.int64)
    with pytest.raises(ValueError, match=r"labels\[0, 1\] = 0 equals blank"):
        _call(fp.ctc_loss, (x, lab, il, ll), reduction="none")
    theirs = _call(F.ctc_loss, (x, lab, il, ll), reduction="none").numpy()
    plain = fastctc.ctc_loss(x, lab, il, ll, reduction="none", from_logits=True)
    assert abs(theirs[0] - plain[0]) > 1e-3


def test_label_out_of_range_past_label_length_is_ignored():
    args = list(_good())
    args[1] = np.array([[1, 1], [1, 7]], np.int32)  # position 1 of row 1 is padding
    np.testing.assert_allclose(_call(fp.ctc_loss, args, reduction="none").numpy(),
                               _call(F.ctc_loss, args, reduction="none").numpy(), rtol=1e-6)


def test_other_argument_errors():
    with pytest.raises(ValueError, match="reduction"):  # Paddle: a bare AssertionError
        _call(fp.ctc_loss, _good(), reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        fp.CTCLoss(reduction="avg")
    with pytest.raises(TypeError, match="norm_by_times"):
        _call(fp.ctc_loss, _good(), norm_by_times="yes")
    with pytest.raises(TypeError, match="log_probs"):
        x, lab, il, ll = _good()
        fp.ctc_loss(x, _t(lab), _t(il), _t(ll))
    with pytest.raises(TypeError, match="labels"):
        x, lab, il, ll = _good()
        fp.ctc_loss(_t(x), lab, _t(il), _t(ll))
    with pytest.raises(ValueError, match="num_threads"):
        _call(fp.ctc_loss, _good(), num_threads=0)


def test_static_graph_is_refused():
    """Under paddle.jit.to_static the door cannot run (it calls the engine from Python): a
    RuntimeError that says so, not a wrong graph."""
    @paddle.jit.to_static(full_graph=True)
    def f(x, lab, il, ll):
        return fp.ctc_loss(x, lab, il, ll)
    with pytest.raises(RuntimeError, match="dynamic-graph mode only"):
        _call(f, _good())
