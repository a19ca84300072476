"""fastctc.ctc_loss_with_forward_probs / optax_ctc_loss against the real optax (values,
forward probabilities, gradients under jax.grad) on random batches with repeated labels,
labels that cannot fit, padded frames in the middle, small log_epsilon, float32 and
float64; plus the float64 CTC reference (optax's loss is the ordinary CTC loss when
everything fits and log_epsilon is very negative) and input errors."""
import functools

import fastctc
import numpy as np
import pytest
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


def _optax_reference(case, blank, eps, dtype):
    with jax.enable_x64(dtype == np.float64):
        outs, want_grad = _optax_all(*[jnp.asarray(a) for a in case], jnp.asarray(eps, dtype), blank)
        return [np.asarray(a) for a in outs], np.asarray(want_grad)


def _optax_core_fast_eps():
    return _optax._optax_core.FAST_EPS


def _tol(dtype):
    return dict(rtol=2e-5, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [-1e5, -6.0])
def test_matches_optax(seed, dtype, eps):
    """Default path (the engine where optax's recurrence is ordinary CTC, detail/optax.h for
    the rest): loss and gradient match optax everywhere; forward probabilities match
    wherever an alignment reaches the state, and hold log_epsilon (+ log 2 after the last
    row's final transition) where none does, optax having log_epsilon plus log-probs."""
    blank = 2 * (seed % 2)
    case = make_case(seed, dtype=dtype, blank=blank)
    want, want_grad = _optax_reference(case, blank, eps, dtype)
    got = fastctc.ctc_loss_with_forward_probs(*case, blank_id=blank, log_epsilon=eps)
    tol = _tol(dtype)
    for w, g, name in zip(want, got, ("loss", "logalpha_blank", "logalpha_nonblank")):
        assert g.shape == w.shape and g.dtype == dtype, name
        # log_epsilon above -100: every sequence takes optax's own recurrence
        reached = w > eps / 2 if eps <= _optax_core_fast_eps() else np.ones(w.shape, bool)
        np.testing.assert_allclose(g[reached], w[reached], err_msg=name, **tol)
        # unreached states: still unreached, log_epsilon (+ log 2 on the last row) on the engine's
        # route, where optax holds log_epsilon plus a few nats per frame
        assert np.all(g[~reached] <= eps / 2), name
        if name != "loss" and eps <= _optax_core_fast_eps():
            seq0 = g[:, 0][~reached[:, 0]]  # sequence 0 takes the engine's route
            assert seq0.size and np.all((seq0 >= eps) & (seq0 <= eps + np.log(2) * 1.0001)), name
        np.testing.assert_allclose(g[~reached], w[~reached], rtol=2e-3, err_msg=name)
    np.testing.assert_allclose(fastctc.optax_ctc_loss(*case, blank, eps), want[0], **tol)
    loss, grad = _optax.loss_and_grad(*case, blank_id=blank, log_epsilon=eps)
    np.testing.assert_allclose(loss, want[0], **tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol["rtol"] * 10, atol=tol["atol"] / 10)
    if eps == -1e5:
        assert 0.5e5 < loss[3] < 2e5  # the infeasible sequence: finite, about -log_epsilon


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_option_reproduces_optax_everywhere(seed, dtype):
    blank = seed
    case = make_case(seed + 10, dtype=dtype, blank=blank)
    want, want_grad = _optax_reference(case, blank, -1e5, dtype)
    got = fastctc.ctc_loss_with_forward_probs(*case, blank_id=blank, exact=True)
    for w, g, name in zip(want, got, ("loss", "logalpha_blank", "logalpha_nonblank")):
        np.testing.assert_allclose(g, w, err_msg=name, **_tol(dtype))
    loss, grad = _optax.loss_and_grad(*case, blank_id=blank, exact=True)
    np.testing.assert_allclose(grad, want_grad, rtol=_tol(dtype)["rtol"] * 10, atol=_tol(dtype)["atol"] / 10)
    with pytest.raises(TypeError, match="exact"):
        fastctc.optax_ctc_loss(*case, exact="yes")


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
    logit_pad[0, :2] = 1      # ... and so are leading ones
    loss = fastctc.optax_ctc_loss(logits, logit_pad, labels, label_pad)
    probs_loss = fastctc.ctc_loss_with_forward_probs(logits, logit_pad, labels, label_pad)[0]
    loss2, grad = _optax.loss_and_grad(logits, logit_pad, labels, label_pad)
    for b in range(B):
        keep = logit_pad[b] == 0
        L = int(N - label_pad[b].sum())
        want = ref.nll(ref.log_softmax(logits[b][keep]), labels[b, :L], 0)
        np.testing.assert_allclose([loss[b], probs_loss[b], loss2[b]], want, rtol=1e-10)
        assert not np.any(grad[b][~keep])  # padded frames get no gradient


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


def test_gradient_finite_difference_engine_path_float64():
    """log_epsilon = -1e5 and feasible labels: the engine's gradient, with padded frames
    at the start, in the middle and at the end (compacted and in-place runs)."""
    rng = np.random.default_rng(11)
    B, T, K, N = 3, 9, 5, 3
    logits = rng.normal(size=(B, T, K))
    labels = rng.integers(1, K, size=(B, N))
    logit_pad = np.zeros((B, T))
    logit_pad[0, [0, 1]] = 1
    logit_pad[1, [3, 5]] = 1
    logit_pad[2, 7:] = 1
    label_pad = np.zeros((B, N))
    label_pad[2, 2] = 1
    _, grad = _optax.loss_and_grad(logits, logit_pad, labels, label_pad)
    h = 1e-6
    for idx in [(0, 3, 1), (1, 4, 0), (1, 6, labels[1, 1]), (2, 0, 4), (2, 6, labels[2, 0])]:
        up, dn = logits.copy(), logits.copy()
        up[idx] += h
        dn[idx] -= h
        fd = (fastctc.optax_ctc_loss(up, logit_pad, labels, label_pad)[idx[0]]
              - fastctc.optax_ctc_loss(dn, logit_pad, labels, label_pad)[idx[0]]) / (2 * h)
        np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("view", ["prefix", "reversed", "every_other_batch"])
def test_strided_views_read_in_place(view):
    """Any view (time prefix, reversed time, batch step) gives the numbers of a contiguous
    copy, bit for bit, for the loss, the forward probabilities and the gradient."""
    rng = np.random.default_rng(3)
    big = make_case(8, B=6, T=14, K=6, N=4)
    logits, logit_pad, labels, label_pad = big
    if view == "prefix":
        sl = (slice(None), slice(0, 10))
    elif view == "reversed":
        sl = (slice(None), slice(None, None, -1))
    else:
        sl = (slice(None, None, 2), slice(None))
    x, fp = logits[sl], logit_pad[sl]
    lab, lp = labels[sl[0]], label_pad[sl[0]]
    assert not x.flags.c_contiguous
    copies = [np.ascontiguousarray(a) for a in (x, fp, lab, lp)]
    for fn in (fastctc.optax_ctc_loss, fastctc.ctc_loss_with_forward_probs, _optax.loss_and_grad):
        got, want = fn(x, fp, lab, lp), fn(*copies)
        for g, w in zip(got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want]):
            np.testing.assert_array_equal(g, w)
    del rng


def test_nan_and_infeasible_follow_optax():
    """A NaN logit gives optax's NaN (the engine's result is redone by optax's recurrence);
    labels longer than the frames give optax's finite value, with its gradient."""
    case = list(make_case(6, B=3, T=8, K=5, N=3))
    case[0] = case[0].copy()
    case[0][0, 2, 1] = np.nan
    case[1] = np.zeros_like(case[1])
    case[1][1, 2:] = 1  # two frames for three labels
    want, want_grad = _optax_reference(case, 0, -1e5, np.float32)
    loss, grad = _optax.loss_and_grad(*case)
    assert np.isnan(loss[0]) and np.isnan(want[0][0])
    np.testing.assert_allclose(loss[1:], want[0][1:], rtol=2e-5)
    np.testing.assert_allclose(grad[1:], want_grad[1:], rtol=2e-4, atol=2e-5)
    assert 0.5e5 < loss[1] < 2e5


def test_simd_levels_agree():
    """Every SIMD level this CPU has gives the same numbers within rounding."""
    from fastctc import _core
    case = make_case(9, B=4, T=12, K=7, N=4, dtype=np.float64)
    levels = [_core.SIMD_LEVELS.index(n) for n in _core.simd_levels_supported()]
    before = _optax._optax_core.simd_level()
    results = []
    try:
        for level in levels:
            _optax._optax_core.set_simd_level(level)
            results.append(_optax.loss_and_grad(*case))
    finally:
        _optax._optax_core.set_simd_level(before)
    for loss, grad in results[1:]:
        np.testing.assert_allclose(loss, results[0][0], rtol=1e-12)
        np.testing.assert_allclose(grad, results[0][1], rtol=1e-9, atol=1e-12)


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
    (lambda c: (c[0].astype(np.float16),) + c[1:], TypeError, "logits"),
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
    with pytest.raises(ValueError, match="blank_id"):
        fastctc.optax_ctc_loss(*case, blank_id=-1)
    with pytest.raises(ValueError, match="log_epsilon"):
        fastctc.optax_ctc_loss(*case, log_epsilon=-np.inf)
    with pytest.raises(TypeError, match="log_epsilon"):
        fastctc.ctc_loss_with_forward_probs(*case, log_epsilon="small")
    with pytest.raises(ValueError, match="T >= 1"):
        fastctc.ctc_loss_with_forward_probs(np.zeros((1, 0, 3)), np.zeros((1, 0)), np.zeros((1, 1), int),
                                            np.zeros((1, 1)))


def test_every_output_element_is_written(monkeypatch):
    """The outputs are allocated uninitialised: fill them with NaN first and check that
    every route (engine in place, engine on compacted frames, optax's recurrence) writes
    every element, padded rows included."""
    real_empty = np.empty

    def nan_empty(shape, dtype=float):
        return np.full(shape, np.nan, dtype) if np.dtype(dtype).kind == "f" else real_empty(shape, dtype)

    monkeypatch.setattr(_optax.np, "empty", nan_empty)
    for dtype in (np.float32, np.float64):
        case = make_case(12, B=5, T=10, K=6, N=4, dtype=dtype)
        for exact in (False, True):
            outs = fastctc.ctc_loss_with_forward_probs(*case, exact=exact)
            outs += _optax.loss_and_grad(*case, exact=exact)
            outs += (fastctc.optax_ctc_loss(*case, exact=exact),)
            for a in outs:
                assert not np.isnan(a).any()


def test_single_sequence_split_over_two_threads():
    """B = 1 with a gradient and two threads: the sequence's forward and backward halves run
    at once (fctc_sequence_split); same bits as one thread, padded frames included, and
    closer to the float64 result than optax's own float32 rounding (exact=True)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 120, 20)).astype(np.float32)
    fp = np.zeros((1, 120), np.float32)
    fp[0, [3, 50, 51]] = 1
    fp[0, 110:] = 1
    lab = rng.integers(1, 20, size=(1, 30))
    lp = np.zeros((1, 30), np.float32)
    one = _optax.loss_and_grad(x, fp, lab, lp, num_threads=1)
    two = _optax.loss_and_grad(x, fp, lab, lp, num_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    ref64 = _optax.loss_and_grad(x.astype(np.float64), fp.astype(np.float64), lab, lp.astype(np.float64))
    optax_rounding = _optax.loss_and_grad(x, fp, lab, lp, exact=True)
    np.testing.assert_allclose(two[1], ref64[1], atol=5e-5)
    assert np.abs(two[1] - ref64[1]).max() <= np.abs(optax_rounding[1] - ref64[1]).max()


# ---------------------------------------------------------------- random probes in float32 and float64

def random_optax_case(rng, B, T, K, N, dtype):
    """(logits, logit_paddings, labels, label_paddings, blank, log_epsilon): padded frames
    anywhere, runs of one label, garbage labels under padding, log_epsilon from -1e5 to -1."""
    blank = int(rng.integers(0, K))
    x = (rng.normal(size=(B, T, K)) * float(rng.choice([1.0, 3.0, 10.0]))).astype(dtype)
    fpad = (rng.random((B, T)) < 0.3).astype(dtype)  # padded frames anywhere, middle included
    labels = rng.integers(0, K, size=(B, N))
    if rng.random() < 0.3:
        labels[:, :] = labels[:, :1]
    lengths = rng.integers(0, N + 1, size=B)
    lpad = (np.arange(N)[None, :] >= lengths[:, None]).astype(dtype)
    labels = np.where(lpad == 1, rng.integers(-3, K + 3, size=(B, N)), labels)
    eps = float(rng.choice([-1e5, -1e3, -30.0, -7.0, -1.0]))
    return x, fpad, labels, lpad, blank, eps


def test_random_against_real_optax_and_fastctc_jax(jax_x64):
    """Random paddings, labels and log_epsilon: the NumPy API's values and forward
    probabilities, and fastctc.jax's value and gradient under jit, against optax."""
    import fastctc.jax as fj
    import optax
    jax, jnp = jax_x64, jax_x64.numpy

    @functools.partial(jax.jit, static_argnames=("blank",))
    def theirs(x, fp, lab, lp, eps, w, blank):
        out = optax.ctc_loss_with_forward_probs(x, fp, lab, lp, blank_id=blank, log_epsilon=eps)
        g = jax.grad(lambda z: (optax.ctc_loss(z, fp, lab, lp, blank_id=blank, log_epsilon=eps) * w).sum())(x)
        return out, g

    @functools.partial(jax.jit, static_argnames=("blank",))
    def ours_jax(x, fp, lab, lp, eps, w, blank):
        return jax.value_and_grad(
            lambda z: (fj.ctc_loss(z, fp, lab, lp, blank_id=blank, log_epsilon=eps) * w).sum())(x)

    rng = np.random.default_rng(77)
    shapes = [(3, 7, 4, 3), (2, 5, 3, 4), (1, 1, 1, 2)]
    for i in range(24):
        dtype = [np.float32, np.float64][i % 2]
        B, T, K, N = shapes[i % 3]
        x, fp, lab, lp, blank, eps = random_optax_case(rng, B, T, K, N, dtype)
        # float32 cases run optax in pure float32: x64 is switched off in this thread only
        # (the global setting keeps the callback's thread from narrowing anything)
        with jax.enable_x64(dtype == np.float64):
            loss, phi, emit = fastctc.ctc_loss_with_forward_probs(x, fp, lab, lp, blank_id=blank,
                                                                  log_epsilon=eps)
            w = np.linspace(0.5, 2.0, B).astype(dtype)
            jargs = (jnp.asarray(x), jnp.asarray(fp), jnp.asarray(lab), jnp.asarray(lp),
                     jnp.asarray(eps, dtype), jnp.asarray(w))
            (o_loss, o_phi, o_emit), o_grad = theirs(*jargs, blank=blank)
            value, grad = ours_jax(*jargs, blank=blank)
        assert loss.dtype == o_loss.dtype == grad.dtype == dtype
        assert phi.shape == o_phi.shape == (T, B, N + 1) and emit.shape == o_emit.shape == (T, B, N)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(loss, o_loss, **tol)
        for ours, want in ((phi, np.asarray(o_phi)), (emit, np.asarray(o_emit))):
            # states no alignment reaches: log_epsilon on the engine's route (log_epsilon <= -100),
            # optax's log_epsilon plus log-probs; reached states (and every other route) agree
            reached = want > eps / 2 if eps <= -100 else np.ones(want.shape, bool)
            np.testing.assert_allclose(ours[reached], want[reached], **tol)
            assert np.all(ours[~reached] <= eps / 2)
        # the loss-only pass and the forward-probabilities pass agree within rounding
        np.testing.assert_allclose(fastctc.optax_ctc_loss(x, fp, lab, lp, blank, eps), loss,
                                   rtol=1e-6 if dtype == np.float32 else 1e-13)
        np.testing.assert_allclose(value, (np.asarray(o_loss) * w).sum(), **tol)
        gtol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(grad, o_grad, **gtol)
