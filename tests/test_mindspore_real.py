"""fastctc.mindspore.CTCLossV2 (a differentiable mindspore.nn.Cell) against real MindSpore
(2.10, CPU), in PyNative and GRAPH mode: neg_log_likelihood, log_alpha and gradients on
finite sequences, the documented error types, and the three places where MindSpore's
library and its documentation disagree, each under behaviour='documented' (the default)
and behaviour='mindspore':
- zero_infinity=True: the documentation zeroes the loss and its gradient; the library
  keeps the loss at +inf and zeroes only the gradient;
- mixed int32/int64 targets and lengths: documented as a TypeError, accepted by the library;
- labels outside [0, C) inside the target length: the library returns meaningless values;
  fastctc raises ValueError under both behaviours.

MindSpore 2.10 needs NumPy < 2 and cannot share a process with Paddle: .ci/run creates
.venv-mindspore and runs this file there.  Without mindspore the module is skipped with the
reason (pytest -ra prints it)."""
import numpy as np
import pytest

ms = pytest.importorskip("mindspore", reason="mindspore is not installed in this environment "
                                             "(.ci/run runs this file in .venv-mindspore)")
from mindspore import Tensor, nn, ops  # noqa: E402

import fastctc  # noqa: E402
import fastctc.mindspore as fm  # noqa: E402

ms.set_context(device_target="CPU")


@pytest.fixture(params=["pynative", "graph"])
def mode(request):
    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE if request.param == "pynative" else ms.GRAPH_MODE)
    yield request.param
    ms.set_context(mode=before)


def _case(rng, dtype, T=8, N=5, C=6, S=3, blank=0, normalised=True):
    x = rng.normal(size=(T, N, C)) * 2
    if normalised:
        x = x - np.log(np.exp(x).sum(-1, keepdims=True))
    tg = rng.integers(0, C, size=(N, S)).astype(np.int32)
    tg[tg == blank] = (blank + 1) % C
    tg[0, :2] = tg[0, 0]  # a repeated label
    il = np.array([T, T - 1, 5, T, 4], np.int32)[:N]
    tl = np.array([S, 2, 3, 0, 1], np.int32)[:N]
    return x.astype(dtype), tg, il, tl


def _value_and_grad(op, x, tg, il, tl, weights=None):
    args = tuple(Tensor(a) for a in (tg, il, tl))
    w = Tensor(np.ones(x.shape[1], x.dtype) if weights is None else weights.astype(x.dtype))

    def f(v):
        return (op(v, *args)[0] * w).sum()

    nll, log_alpha = op(Tensor(x), *args)
    grad = ms.grad(f)(Tensor(x))
    return nll.asnumpy(), log_alpha.asnumpy(), grad.asnumpy()


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("normalised", [True, False])
def test_matches_mindspore(rng, mode, dtype, tol, normalised):
    """Finite sequences: nll, log_alpha and the gradient of a weighted sum of the losses.
    Unnormalised inputs too (MindSpore's own example feeds them)."""
    x, tg, il, tl = _case(rng, dtype, blank=2, normalised=normalised)
    w = rng.uniform(0.5, 2.0, size=x.shape[1])
    got = _value_and_grad(fm.CTCLossV2(blank=2), x, tg, il, tl, w)
    want = _value_and_grad(ops.CTCLossV2(blank=2), x, tg, il, tl, w)
    assert np.isfinite(want[0]).all()
    for g, h in zip(got, want):
        assert g.dtype == h.dtype and g.shape == h.shape
        np.testing.assert_allclose(g, h, rtol=tol, atol=tol)


def test_int64_operands(rng, mode):
    x, tg, il, tl = _case(rng, np.float32)
    tg, il, tl = (a.astype(np.int64) for a in (tg, il, tl))
    for g, h in zip(_value_and_grad(fm.CTCLossV2(), x, tg, il, tl), _value_and_grad(ops.CTCLossV2(), x, tg, il, tl)):
        np.testing.assert_allclose(g, h, rtol=2e-5, atol=2e-5)


def test_gradient_convention_and_finite_difference(rng):
    """MindSpore's gradient is exp(log_probs) - occupancy (PyTorch's convention): minus the
    exp term it is the exact derivative, checked by finite differences on unnormalised input."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x, tg, il, tl = _case(rng, np.float64, normalised=False)
    _, _, grad = _value_and_grad(fm.CTCLossV2(), x, tg, il, tl)
    exact = grad.copy()
    for n in range(x.shape[1]):
        exact[: il[n], n] -= np.exp(x[: il[n], n])
    assert np.all(grad[il[2]:, 2] == 0)  # padding frames
    op = fastctc.CTCLossV2()
    eps = 1e-6
    for idx in [(0, 0, 1), (3, 1, 0), (4, 2, 5), (7, 3, 2)]:
        up, dn = x.copy(), x.copy()
        up[idx] += eps
        dn[idx] -= eps
        fd = (op(up, tg, il, tl)[0].sum() - op(dn, tg, il, tl)[0].sum()) / (2 * eps)
        np.testing.assert_allclose(exact[idx], fd, atol=1e-7)


def test_documented_example(mode):
    import published
    nll, log_alpha = fm.CTCLossV2()(Tensor(np.array(published.MINDSPORE_LOG_PROBS, np.float32)),
                                    Tensor(np.array(published.MINDSPORE_TARGETS, np.int32)),
                                    Tensor(np.array(published.MINDSPORE_INPUT_LENGTHS, np.int32)),
                                    Tensor(np.array(published.MINDSPORE_TARGET_LENGTHS, np.int32)))
    np.testing.assert_allclose(nll.asnumpy(), published.MINDSPORE_NLL, rtol=1e-6)
    np.testing.assert_allclose(log_alpha.asnumpy(), published.MINDSPORE_LOG_ALPHA, rtol=1e-6)


def _infeasible():
    x = np.log(np.full((3, 2, 3), 1 / 3, np.float32))
    tg = np.array([[1, 1, 1], [1, 2, 0]], np.int32)  # row 0 needs 5 frames, has 3
    return x, tg, np.array([3, 3], np.int32), np.array([3, 2], np.int32)


def test_infinite_loss_without_zero_infinity(mode):
    """+inf loss as in MindSpore; its gradient rows are 0 where MindSpore's are NaN."""
    x, tg, il, tl = _infeasible()
    nll, _, grad = _value_and_grad(fm.CTCLossV2(), x, tg, il, tl)
    mnll, _, mgrad = _value_and_grad(ops.CTCLossV2(), x, tg, il, tl)
    assert np.isposinf(nll[0]) and np.isposinf(mnll[0])
    assert np.all(grad[:, 0] == 0) and np.isnan(mgrad[:, 0]).all()
    np.testing.assert_allclose(grad[:, 1], mgrad[:, 1], rtol=1e-6)


@pytest.mark.parametrize("behaviour", ["documented", "mindspore"])
def test_zero_infinity(mode, behaviour):
    x, tg, il, tl = _infeasible()
    nll, _, grad = _value_and_grad(fm.CTCLossV2(zero_infinity=True, behaviour=behaviour), x, tg, il, tl)
    mnll, _, mgrad = _value_and_grad(ops.CTCLossV2(zero_infinity=True), x, tg, il, tl)
    assert np.isposinf(mnll[0]) and np.all(mgrad[:, 0] == 0)  # the library: inf kept, gradient zeroed
    if behaviour == "mindspore":
        assert np.isposinf(nll[0])
    else:
        assert nll[0] == 0  # the documentation: "set infinite loss ... to zero"
    assert np.all(grad[:, 0] == 0)
    np.testing.assert_allclose(nll[1], mnll[1], rtol=1e-6)
    np.testing.assert_allclose(grad, mgrad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("behaviour", ["documented", "mindspore"])
def test_mixed_integer_dtypes(rng, behaviour):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x, tg, il, tl = _case(rng, np.float32)
    il64 = il.astype(np.int64)
    args = (Tensor(x), Tensor(tg), Tensor(il64), Tensor(tl))
    want = ops.CTCLossV2()(*args)[0].asnumpy()  # the library accepts the mix
    op = fm.CTCLossV2(behaviour=behaviour)
    if behaviour == "documented":
        with pytest.raises(TypeError, match="same dtype"):
            op(*args)
    else:
        np.testing.assert_allclose(op(*args)[0].asnumpy(), want, rtol=1e-6)
        np.testing.assert_allclose(_value_and_grad(op, x, tg, il64, tl)[2],
                                   _value_and_grad(ops.CTCLossV2(), x, tg, il64, tl)[2], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("behaviour", ["documented", "mindspore"])
def test_labels_out_of_range(behaviour):
    """MindSpore returns a number for a label >= C (the value depends on memory it should
    not read: it changes with the class count, not with anything the label means);
    fastctc raises ValueError naming the position, under both behaviours."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x = np.log(np.full((4, 2, 3), 1 / 3, np.float32))
    tg = np.array([[1, 3], [1, 1]], np.int32)
    args = [Tensor(a) for a in (tg, np.array([4, 4], np.int32), np.array([2, 1], np.int32))]
    assert np.isfinite(ops.CTCLossV2()(Tensor(x), *args)[0].asnumpy()).all()
    with pytest.raises(ValueError, match=r"targets\[0, 1\] = 3"):
        fm.CTCLossV2(behaviour=behaviour)(Tensor(x), *args)


def _good():
    return [np.zeros((4, 2, 3), np.float32), np.ones((2, 2), np.int32),
            np.array([4, 4], np.int32), np.array([2, 1], np.int32)]


ERRORS = [  # (argument, value, documented type): MindSpore raises the same type for each
    (0, np.zeros((4, 2, 3), np.float16), TypeError),
    (0, np.zeros((4, 2, 3), np.int32), TypeError),
    (0, np.zeros((4, 6), np.float32), ValueError),
    (1, np.ones((2, 2), np.float32), TypeError),
    (1, np.ones((2, 2), np.int16), TypeError),
    (1, np.ones(4, np.int32), ValueError),
    (2, np.array([4, 4], np.float32), TypeError),
    (3, np.array([2, 1], np.uint8), TypeError),
    (2, np.array([4, 4, 4], np.int32), ValueError),
    (3, np.array([2], np.int32), ValueError),
    (2, np.array([5, 4], np.int32), RuntimeError),
    (2, np.array([4, -1], np.int32), RuntimeError),
    (3, np.array([2, 3], np.int32), RuntimeError),
    (3, np.array([-1, 1], np.int32), RuntimeError),
]


@pytest.mark.parametrize("which,value,exc", ERRORS)
def test_documented_errors(which, value, exc):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    args = _good()
    args[which] = value
    with pytest.raises(exc):
        ops.CTCLossV2()(*[Tensor(a) for a in args])[0].asnumpy()  # asnumpy: errors of async launches
    with pytest.raises(exc):
        fm.CTCLossV2()(*[Tensor(a) for a in args])


@pytest.mark.parametrize("kwargs,exc", [({"blank": 3}, ValueError), ({"blank": -1}, ValueError)])
def test_blank_range(kwargs, exc):
    with pytest.raises(exc):
        ops.CTCLossV2(**kwargs)(*[Tensor(a) for a in _good()])
    with pytest.raises(exc, match="blank"):
        fm.CTCLossV2(**kwargs)(*[Tensor(a) for a in _good()])


@pytest.mark.parametrize("kwargs,exc", [({"zero_infinity": 1}, TypeError), ({"reduction": "mean"}, ValueError),
                                        ({"reduction": None}, TypeError), ({"behaviour": "torch"}, ValueError)])
def test_constructor_errors(kwargs, exc):
    if "behaviour" not in kwargs:
        with pytest.raises(exc):
            ops.CTCLossV2(**kwargs)
    with pytest.raises(exc):
        fm.CTCLossV2(**kwargs)


def test_inside_a_graph_mode_training_step(rng):
    """Nested in a Cell compiled in GRAPH mode (its arguments are only seen by the
    operator): the gradient reaches a parameter; bad values inside the graph come back as
    MindSpore's RuntimeError carrying fastctc's message."""
    ms.set_context(mode=ms.GRAPH_MODE)
    x, tg, il, tl = _case(rng, np.float32, normalised=False)

    class Model(nn.Cell):
        def __init__(self, loss_cls):
            super().__init__()
            self.bias = ms.Parameter(Tensor(np.zeros(x.shape[2], np.float32)), name="bias")
            self.log_softmax = nn.LogSoftmax(axis=-1)
            self.loss = loss_cls()

        def construct(self, v, t, a, b):
            return self.loss(self.log_softmax(v + self.bias), t, a, b)[0].mean()

    grads = []
    for loss_cls in (fm.CTCLossV2, ops.CTCLossV2):
        model = Model(loss_cls)
        fn = ms.value_and_grad(model, None, model.trainable_params())
        value, (g,) = fn(*(Tensor(a) for a in (x, tg, il, tl)))
        grads.append((value.asnumpy(), g.asnumpy()))
    np.testing.assert_allclose(grads[0][0], grads[1][0], rtol=1e-5)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)
    bad = il.copy()
    bad[1] = 99
    with pytest.raises(RuntimeError, match=r"input_lengths\[1\] = 99"):
        Model(fm.CTCLossV2)(*(Tensor(a) for a in (x, tg, bad, tl))).asnumpy()


def test_cell_built_in_one_mode_used_in_the_other(rng):
    """The backward's scaling is chosen by the mode at construction (for speed only): a Cell
    built in one mode gives the same gradients in the other."""
    x, tg, il, tl = _case(rng, np.float64)
    w = rng.uniform(0.5, 2.0, size=x.shape[1])
    for built, used in ((ms.PYNATIVE_MODE, ms.GRAPH_MODE), (ms.GRAPH_MODE, ms.PYNATIVE_MODE)):
        ms.set_context(mode=built)
        op = fm.CTCLossV2()
        ms.set_context(mode=used)
        got = _value_and_grad(op, x, tg, il, tl, w)
        want = _value_and_grad(ops.CTCLossV2(), x, tg, il, tl, w)
        for g, h in zip(got, want):
            np.testing.assert_allclose(g, h, rtol=1e-10, atol=1e-10)
    ms.set_context(mode=ms.PYNATIVE_MODE)
