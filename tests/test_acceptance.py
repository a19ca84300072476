"""Acceptance probes: the public contract of issues 2, 4, 6 and 7 fed random cases and bad
inputs beyond the ones the feature tests name, checked against the real libraries
(PyTorch 2.13's CTC, optax 0.2.8, JAX) and against independent float64 references.

Every random case draws its shape, blank position, dtype, reduction, input form (NumPy
arrays, torch tensors incl. ones that require grad, tuples, lists, NumPy scalars, int32 or
int64), memory layout (batch-major, Fortran order, negative strides) and awkward values
(-inf entries, garbage past the target lengths, zero lengths, repeats) from a seeded
generator, so a failure names a reproducible case.

Gradient convention (documented): ours is d loss / d log_probs; PyTorch's CTC backward is
ours + exp(log_probs) * weight, and is NaN at -inf entries (exp(-inf) - exp(-inf + inf)),
so those entries are compared only where PyTorch's is finite.
"""
import functools
import itertools

import numpy as np
import pytest

import fastctc
import reference as ref
from fastctc import CTCRuntimeError, CTCTypeError, CTCValueError

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _log_softmax(x):
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def _torch_loss_and_grad(lp, targets, il, tl, blank, reduction, zero_infinity):
    x = torch.tensor(lp, requires_grad=True)
    loss = F.ctc_loss(x, torch.as_tensor(np.asarray(targets)), torch.as_tensor(np.asarray(il)),
                      torch.as_tensor(np.asarray(tl)), blank=blank, reduction=reduction,
                      zero_infinity=zero_infinity)
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def _random_problem(rng):
    T = int(rng.integers(1, 12))
    N = int(rng.integers(1, 5))
    C = int(rng.integers(1, 7))
    S = int(rng.integers(0, 7))
    blank = int(rng.choice([0, C - 1, C // 2]))
    dtype = [np.float32, np.float64][int(rng.integers(2))]
    lp = _log_softmax(rng.normal(size=(T, N, C)) * float(rng.choice([0.5, 3.0, 30.0])))
    if rng.random() < 0.25:  # some impossible emissions
        lp = np.where(rng.random(lp.shape) < 0.2, -np.inf, lp)
    lp = lp.astype(dtype)
    if C > 1:
        tg = rng.integers(0, C - 1, size=(N, S))
        tg = np.where(tg >= blank, tg + 1, tg)
    else:
        tg = np.zeros((N, S), dtype=np.int64)
    if S > 1 and rng.random() < 0.4:
        tg[:, :] = tg[:, :1]  # long runs of one label: each repeat needs a blank between
    il = rng.integers(0, T + 1, size=N)
    tl = rng.integers(0, S + 1, size=N) if C > 1 else np.zeros(N, dtype=np.int64)
    for n in range(N):  # garbage past each target length must be ignored
        tg[n, tl[n]:] = rng.integers(-9, 99, size=S - tl[n])
    return lp, tg, il, tl, blank


def _layout(rng, lp):
    kind = int(rng.integers(4))
    if kind == 0:
        return lp
    if kind == 1:  # batch-major memory seen as (T, N, C)
        return np.ascontiguousarray(lp.transpose(1, 0, 2)).transpose(1, 0, 2)
    if kind == 2:  # reversed class axis: negative stride, must be copied or handled
        return np.ascontiguousarray(lp[:, :, ::-1])[:, :, ::-1]
    return np.asfortranarray(lp)


def _form(rng, x, kind):
    """x (an integer array) in one of the forms torch.nn.functional.ctc_loss accepts."""
    choice = int(rng.integers(4))
    if choice == 0:
        return torch.tensor(x.astype(np.int32 if rng.random() < 0.5 else np.int64))
    if choice == 1 and kind == "lengths":
        return tuple(int(v) for v in x)
    if choice == 2 and kind == "lengths":
        return [int(v) for v in x]
    return x.astype(np.int32 if rng.random() < 0.5 else np.int64)


def _weights(reduction, tl, N):
    return 1.0 / np.maximum(tl, 1) / N if reduction == "mean" else np.ones(N)


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


# ------------------------------------------------------------ NumPy API vs PyTorch

@pytest.mark.parametrize("seed", range(3))
def test_numpy_api_random_parity_with_torch(simd_level, seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(25):
        lp, tg, il, tl, blank = _random_problem(rng)
        T, N, C = lp.shape
        reduction = ["none", "sum", "mean"][int(rng.integers(3))]
        zero_infinity = bool(rng.random() < 0.5)
        flat = rng.random() < 0.3
        targets = np.concatenate([tg[n, : tl[n]] for n in range(N)]) if flat else tg
        want, torch_grad = _torch_loss_and_grad(lp, targets, il, tl, blank, reduction, zero_infinity)
        acts = _layout(rng, lp)
        if rng.random() < 0.3:  # a torch tensor (sometimes one that requires grad) as the input
            acts = torch.from_numpy(lp).requires_grad_(bool(rng.random() < 0.5))
        args = (acts, _form(rng, targets, "targets"), _form(rng, il, "lengths"), _form(rng, tl, "lengths"))
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


@pytest.mark.parametrize("il_form", ["int", "np_scalar", "tensor0", "tensor1", "tuple", "list"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_unbatched_every_length_form(rng, il_form, reduction):
    T, C = 7, 5
    lp = _log_softmax(rng.normal(size=(T, C)) * 2)
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
            lp = _log_softmax(rng.normal(size=(T, N, C))).astype(dtype)
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


def test_infeasible_is_inf_with_zero_grad_and_zero_infinity(rng):
    lp = _log_softmax(rng.normal(size=(3, 2, 4)))
    tg = np.array([[1, 1, 2], [1, 2, 3]])
    for from_logits in (False, True):
        loss, grad = fastctc.ctc_loss_and_grad(lp, tg, [3, 3], [3, 3], reduction="none", from_logits=from_logits)
        assert np.isposinf(loss[0]) and np.isfinite(loss[1])
        assert not grad[:, 0].any() and grad[:, 1].any()
        loss, grad = fastctc.ctc_loss_and_grad(lp, tg, [3, 3], [3, 3], reduction="mean", zero_infinity=True,
                                               from_logits=from_logits)
        assert np.isfinite(loss) and not grad[:, 0].any()


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
    lp = _log_softmax(rng.normal(size=(5, 1, 4)))
    lp[2, 0, 1] = -1e30
    np.testing.assert_allclose(fastctc.ctc_loss(lp, [[1, 2]], [5], [2], reduction="none"),
                               F.ctc_loss(torch.tensor(lp), torch.tensor([[1, 2]]), [5], [2], reduction="none"),
                               rtol=1e-12)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_in_nan_out(from_logits, bad):
    """An undefined input (NaN, +inf) gives a NaN loss, as PyTorch does, and zero_infinity
    must not hide it by turning it into 0 (regression: it used to come out +inf -> 0)."""
    lp = np.log(np.full((5, 2, 4), 0.25))
    lp[2, 0, :] = bad
    for zero_infinity in (False, True):
        loss, grad = fastctc.ctc_loss_and_grad(lp, [[1, 2], [1, 2]], [5, 5], [2, 2], reduction="none",
                                               zero_infinity=zero_infinity, from_logits=from_logits)
        assert np.isnan(loss[0]) and np.isfinite(loss[1])
        assert np.isnan(grad[:, 0]).any() and np.isfinite(grad[:, 1]).all()
        assert np.isnan(fastctc.ctc_loss(lp, [[1, 2], [1, 2]], [5, 5], [2, 2], zero_infinity=zero_infinity,
                                         from_logits=from_logits))
    # past the input length the bad frame is not read
    assert np.isfinite(fastctc.ctc_loss(lp, [[1, 2], [1, 2]], [2, 5], [2, 2], from_logits=from_logits))


def test_logits_frame_without_finite_score_is_nan():
    x = np.zeros((4, 1, 3))
    x[1, 0, :] = -np.inf  # log_softmax of this frame is undefined (PyTorch: NaN)
    want = F.ctc_loss(torch.tensor(x).log_softmax(-1), torch.tensor([[1]]), [4], [1], reduction="none")
    assert torch.isnan(want).all()
    assert np.isnan(fastctc.ctc_loss(x, [[1]], [4], [1], reduction="none", from_logits=True)).all()


# ------------------------------------------------------------ bad inputs

def _check_message(exc, *needles):
    msg = str(exc.value)
    for needle in needles:
        assert str(needle) in msg, (needle, msg)


BASE = dict(T=6, N=2, C=4)


def _base():
    lp = _log_softmax(np.random.default_rng(0).normal(size=(6, 2, 4)))
    return lp, np.array([[1, 2, 1], [3, 3, 0]]), np.array([6, 5]), np.array([3, 2])


# (name, mutate(lp, tg, il, tl) -> args, error class, message fragments, torch also raises)
BAD_INPUTS = [
    ("input_length above T", lambda lp, tg, il, tl: (lp, tg, [7, 5], tl), CTCValueError,
     ("input_lengths", "[0]", "7", "6"), True),
    ("negative input_length", lambda lp, tg, il, tl: (lp, tg, [6, -1], tl), CTCValueError,
     ("input_lengths", "[1]", "-1"), True),
    ("target_length above S", lambda lp, tg, il, tl: (lp, tg, il, [3, 4]), CTCValueError,
     ("target_lengths", "[1]", "4", "3"), True),
    ("negative target_length", lambda lp, tg, il, tl: (lp, tg, il, [-2, 2]), CTCValueError,
     ("target_lengths", "[0]", "-2"), True),
    ("target value >= C", lambda lp, tg, il, tl: (lp, [[1, 2, 1], [3, 4, 0]], il, tl), CTCValueError,
     ("targets", "[1, 1]", "4", "4"), False),  # torch reads out of bounds instead
    ("negative target value", lambda lp, tg, il, tl: (lp, [[1, 2, -3], [3, 3, 0]], il, tl), CTCValueError,
     ("targets", "[0, 2]", "-3"), False),
    ("flat target value", lambda lp, tg, il, tl: (lp, [1, 2, 1, 3, 9], il, tl), CTCValueError,
     ("targets", "[4]", "9"), False),
    ("flat targets too short", lambda lp, tg, il, tl: (lp, [1, 2, 1, 3], il, tl), CTCValueError,
     ("targets", "5", "4"), True),
    ("flat targets too long", lambda lp, tg, il, tl: (lp, [1, 2, 1, 3, 3, 3], il, tl), CTCValueError,
     ("targets", "5", "6"), True),
    ("input_lengths wrong size", lambda lp, tg, il, tl: (lp, tg, [6, 5, 4], tl), CTCValueError,
     ("input_lengths", "(2,)", "(3,)"), True),
    ("target_lengths wrong size", lambda lp, tg, il, tl: (lp, tg, il, [3]), CTCValueError,
     ("target_lengths", "(2,)", "(1,)"), True),
    ("targets wrong batch", lambda lp, tg, il, tl: (lp, tg[:1], il, tl), CTCValueError,
     ("targets", "2", "(1, 3)"), True),
    ("targets rank 3", lambda lp, tg, il, tl: (lp, tg[None], il, tl), CTCValueError,
     ("targets", "(1, 2, 3)"), True),
    ("log_probs rank 4", lambda lp, tg, il, tl: (lp[None], tg, il, tl), CTCValueError,
     ("log_probs", "(1, 6, 2, 4)"), True),
    ("log_probs rank 1", lambda lp, tg, il, tl: (lp[:, 0, 0], tg, il, tl), CTCValueError,
     ("log_probs", "(6,)"), True),
    ("float targets", lambda lp, tg, il, tl: (lp, tg.astype(np.float32), il, tl), CTCTypeError,
     ("targets", "float32"), False),  # torch casts silently
    ("float lengths", lambda lp, tg, il, tl: (lp, tg, il.astype(float), tl), CTCTypeError,
     ("input_lengths", "float64"), True),
    ("bool lengths", lambda lp, tg, il, tl: (lp, tg, il, np.array([True, True])), CTCTypeError,
     ("target_lengths", "bool"), False),
    ("integer log_probs", lambda lp, tg, il, tl: (lp.astype(np.int64), tg, il, tl), CTCTypeError,
     ("log_probs", "int64"), True),
    ("float16 log_probs", lambda lp, tg, il, tl: (lp.astype(np.float16), tg, il, tl), CTCTypeError,
     ("log_probs", "float16"), True),
    ("ragged targets", lambda lp, tg, il, tl: (lp, [[1, 2], [3]], il, tl), CTCTypeError,
     ("targets",), True),
    ("None targets", lambda lp, tg, il, tl: (lp, None, il, tl), CTCTypeError, ("targets",), True),
    ("zero classes", lambda lp, tg, il, tl: (lp[:, :, :0], tg, il, tl), CTCValueError,
     ("C", "0"), True),
    ("huge int64 length", lambda lp, tg, il, tl: (lp, tg, il, [2**40, 1]), CTCValueError,
     ("target_lengths", "[0]", str(2**40)), True),
    ("huge flat lengths", lambda lp, tg, il, tl: (lp, [1], il, [2**31 - 1, -(2**31 - 2)]), CTCValueError,
     ("target_lengths", "[0]"), True),
    ("unbatched input_lengths of two values", lambda lp, tg, il, tl: (lp[:, 0], tg[0], [6, 6], 3), CTCValueError,
     ("input_lengths", "(2,)"), True),
    ("lengths (N, 2)", lambda lp, tg, il, tl: (lp, tg, il, np.array([[3, 2], [3, 2]])), CTCValueError,
     ("target_lengths", "(2, 2)"), True),
    ("unbatched 1-D targets longer than target_length", lambda lp, tg, il, tl: (lp[:, 0], tg[0], 6, 2),
     CTCValueError, ("targets", "2", "3"), True),
    ("unbatched padded targets of batch 2", lambda lp, tg, il, tl: (lp[:, 0], tg, 6, 2), CTCValueError,
     ("targets", "(2, 3)"), True),
]


@pytest.mark.parametrize("name,mutate,error,needles,torch_raises", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_raise_before_any_kernel(name, mutate, error, needles, torch_raises):
    args = mutate(*_base())
    for fn in (fastctc.ctc_loss, fastctc.ctc_loss_and_grad, fastctc.ctc_posteriors):
        with pytest.raises(error) as exc:
            fn(*args)
        _check_message(exc, *needles)
    if torch_raises:  # PyTorch refuses it too (or cannot even take it)
        def to_t(v):
            arr = np.asarray(v) if not isinstance(v, list) or name != "ragged targets" else None
            return torch.as_tensor(arr) if arr is not None and arr.dtype != object else v
        with pytest.raises(Exception):
            F.ctc_loss(*(to_t(a) for a in args))


@pytest.mark.parametrize("kw,error,needles", [
    (dict(blank=-1), CTCValueError, ("blank", "-1", "4")),
    (dict(blank=4), CTCValueError, ("blank", "4")),
    (dict(blank=1.0), CTCTypeError, ("blank", "float")),
    (dict(blank=True), CTCTypeError, ("blank", "bool")),
    (dict(reduction="MEAN"), CTCValueError, ("reduction", "MEAN")),
    (dict(reduction=None), CTCTypeError, ("reduction",)),
    (dict(zero_infinity=2), CTCTypeError, ("zero_infinity", "2")),
    (dict(zero_infinity="yes"), CTCTypeError, ("zero_infinity",)),
    (dict(from_logits="no"), CTCTypeError, ("from_logits",)),
    (dict(num_threads=0), CTCValueError, ("num_threads", "0")),
    (dict(num_threads=2**31), CTCValueError, ("num_threads",)),
    (dict(num_threads=1.5), CTCTypeError, ("num_threads",)),
])
def test_bad_options(kw, error, needles):
    lp, tg, il, tl = _base()
    for fn in (fastctc.ctc_loss, fastctc.ctc_loss_and_grad):
        with pytest.raises(error) as exc:
            fn(lp, tg, il, tl, **kw)
        _check_message(exc, *needles)


def test_accepted_quirks():
    """Inputs PyTorch also accepts: byte-swapped and misaligned arrays, read-only broadcast
    views, a 0-d tensor as blank, NumPy bools as flags, N = 0 (NaN mean, as torch.mean)."""
    lp, tg, il, tl = _base()
    want = fastctc.ctc_loss(lp, tg, il, tl)
    np.testing.assert_allclose(fastctc.ctc_loss(lp.astype(">f8"), tg.astype(">i4"), il.astype(">i8"), tl), want)
    raw = np.frombuffer(bytearray(lp.nbytes + 1), dtype=np.uint8)[1:].view(np.float64).reshape(lp.shape)
    raw[...] = lp
    np.testing.assert_allclose(fastctc.ctc_loss_and_grad(raw, tg, il, tl)[0], want)
    row = np.broadcast_to(lp[:1], lp.shape)
    np.testing.assert_allclose(fastctc.ctc_loss(row, tg, il, tl),
                               F.ctc_loss(torch.tensor(np.array(row)), torch.tensor(tg), torch.tensor(il),
                                          torch.tensor(tl)).item(), rtol=1e-12)
    np.testing.assert_allclose(fastctc.ctc_loss(lp, tg, il, tl, blank=torch.tensor(0), zero_infinity=np.False_),
                               want)
    as_column = F.ctc_loss(torch.tensor(lp), torch.tensor(tg), torch.tensor(il)[:, None], torch.tensor(tl)[None, :])
    np.testing.assert_allclose(fastctc.ctc_loss(lp, tg, torch.tensor(il)[:, None], tl[None, :]), as_column.item(),
                               rtol=1e-12)  # lengths read by element count, as PyTorch does
    xt = torch.tensor(lp, requires_grad=True)  # a tensor that requires grad, read without a copy
    np.testing.assert_allclose(fastctc.ctc_loss_and_grad(xt, tg, il, tl)[0], want)
    assert np.isnan(fastctc.ctc_loss(lp[:, :0], np.zeros((0, 3), int), [], []))
    assert fastctc.ctc_loss(lp[:, :0], [], [], [], reduction="sum") == 0


# ------------------------------------------------------------ fastctc.torch

ft = pytest.importorskip("fastctc.torch")


def test_torch_adapter_random_forward_backward(rng):
    for _ in range(30):
        lp, tg, il, tl, blank = _random_problem(rng)
        T, N, C = lp.shape
        logits = torch.tensor(np.where(np.isfinite(lp), lp, -50.0) + rng.normal(size=lp.shape),
                              requires_grad=True)
        reduction = ["none", "sum", "mean"][int(rng.integers(3))]
        zero_infinity = bool(rng.random() < 0.5)
        targets = np.concatenate([tg[n, : tl[n]] for n in range(N)]) if rng.random() < 0.3 else tg
        args = (_form(rng, targets, "targets"), _form(rng, il, "lengths"), _form(rng, tl, "lengths"))
        t_args = tuple(torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a for a in args)
        if rng.random() < 0.5:
            logits_in = logits
        else:  # a batch-major tensor viewed as (T, N, C): read in place through strides
            logits_in = logits.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
        ours = ft.ctc_loss(logits_in.log_softmax(-1), *args, blank=blank, reduction=reduction,
                           zero_infinity=zero_infinity)
        weight = torch.linspace(0.5, 1.5, max(ours.numel(), 1), dtype=ours.dtype)[: ours.numel()].reshape(ours.shape)
        (ours * weight).sum().backward()
        g_ours = logits_in.grad.clone()
        x2 = logits.detach().clone().requires_grad_()
        theirs = F.ctc_loss(x2.log_softmax(-1), *t_args, blank=blank, reduction=reduction,
                            zero_infinity=zero_infinity)
        (theirs * weight).sum().backward()
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
        finite = torch.isfinite(x2.grad)
        torch.testing.assert_close(g_ours[finite], x2.grad[finite], rtol=1e-9, atol=1e-10)
        if (~finite).any():  # PyTorch's is NaN for infinite losses; ours is zero
            assert not g_ours[~finite].any()


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_torch_adapter_gradcheck(rng, reduction):
    x = torch.tensor(_log_softmax(rng.normal(size=(5, 3, 4))), requires_grad=True)
    tg = torch.tensor([[1, 1], [2, 3], [3, 0]])
    assert torch.autograd.gradcheck(lambda v: ft.ctc_loss(v, tg, [5, 4, 3], [2, 2, 1], blank=0,
                                                          reduction=reduction), (x,))
    u = torch.tensor(_log_softmax(rng.normal(size=(4, 3))), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ft.ctc_loss(v, torch.tensor([2, 1]), torch.tensor(4), (2,),
                                                          blank=0, reduction=reduction), (u,))


def test_torch_adapter_unbatched_forms_and_module():
    u = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    for il, tl in [(torch.tensor(6), torch.tensor(2)), (torch.tensor([6]), torch.tensor([2])), ((6,), (2,)),
                   ([6], [2])]:
        for reduction in ("none", "mean", "sum"):
            u.grad = None
            ft.CTCLoss(blank=3, reduction=reduction)(u.log_softmax(-1), torch.tensor([[1, 2, 0]]), il, tl).backward()
            g = u.grad.clone()
            u.grad = None
            want = torch.nn.CTCLoss(blank=3, reduction=reduction)(u.log_softmax(-1), torch.tensor([[1, 2, 0]]), il, tl)
            want.backward()
            torch.testing.assert_close(g, u.grad)
    m = ft.CTCLoss(blank=2, reduction="sum", zero_infinity=True)
    ref_m = torch.nn.CTCLoss(blank=2, reduction="sum", zero_infinity=True)
    assert isinstance(m, torch.nn.Module)
    assert (m.blank, m.reduction, m.zero_infinity) == (ref_m.blank, ref_m.reduction, ref_m.zero_infinity)
    assert "blank=2" in repr(m) and "sum" in repr(m)
    with pytest.raises(ValueError):
        ft.CTCLoss(reduction="avg")


def test_torch_adapter_bad_inputs():
    x = torch.zeros(4, 2, 3)
    tg, il, tl = torch.tensor([[1, 2], [1, 1]]), [4, 4], [2, 2]
    with pytest.raises(TypeError, match="log_probs"):
        ft.ctc_loss(np.zeros((4, 2, 3)), tg, il, tl)
    with pytest.raises(TypeError, match="int32"):  # float16/bfloat16 are computed in float32 (issue 14)
        ft.ctc_loss(x.int(), tg, il, tl)
    with pytest.raises(TypeError, match="targets"):
        ft.ctc_loss(x, tg.float(), il, tl)
    with pytest.raises(TypeError, match="input_lengths"):
        ft.ctc_loss(x, tg, torch.tensor([True, True]), tl)
    with pytest.raises(ValueError, match="input_lengths"):
        ft.ctc_loss(x, tg, [5, 4], tl)
    with pytest.raises(ValueError, match="targets"):
        ft.ctc_loss(x, torch.tensor([[1, 3], [1, 1]]), il, tl)
    with pytest.raises(RuntimeError, match="meta"):  # neither CPU nor CUDA
        ft.ctc_loss(torch.empty(4, 2, 3, device="meta"), tg, il, tl)


# ------------------------------------------------------------ CTCLossV2 (MindSpore)

def test_ctclossv2_random_against_reference(rng):
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


def _v2_args():
    lp = np.zeros((5, 2, 4), np.float32)
    return lp, np.array([[1, 2], [3, 3]], np.int32), np.array([5, 4], np.int32), np.array([2, 2], np.int32)


V2_BAD = [
    ("zero_infinity int", dict(zero_infinity=1), None, TypeError),
    ("reduction not str", dict(reduction=0), None, TypeError),
    ("reduction mean", dict(reduction="mean"), None, ValueError),
    ("log_probs float16", {}, lambda a: (a[0].astype(np.float16),) + a[1:], TypeError),
    ("log_probs int", {}, lambda a: (a[0].astype(np.int32),) + a[1:], TypeError),
    ("targets float", {}, lambda a: (a[0], a[1].astype(np.float32), a[2], a[3]), TypeError),
    ("targets int16", {}, lambda a: (a[0], a[1].astype(np.int16), a[2], a[3]), TypeError),
    ("lengths dtype differs", {}, lambda a: (a[0], a[1], a[2].astype(np.int64), a[3]), TypeError),
    ("lengths float", {}, lambda a: (a[0], a[1], a[2], a[3].astype(np.float64)), TypeError),
    ("log_probs rank 2", {}, lambda a: (a[0][:, 0],) + a[1:], ValueError),
    ("targets rank 1", {}, lambda a: (a[0], a[1][0], a[2], a[3]), ValueError),
    ("input_lengths shape", {}, lambda a: (a[0], a[1], a[2][:1], a[3]), ValueError),
    ("target_lengths shape", {}, lambda a: (a[0], a[1], a[2], a[3][None]), ValueError),
    ("blank >= C", dict(blank=4), None, ValueError),
    ("blank < 0", dict(blank=-1), None, ValueError),
    ("input length > T", {}, lambda a: (a[0], a[1], np.array([6, 4], np.int32), a[3]), RuntimeError),
    ("target length > input length", {}, lambda a: (a[0], a[1], np.array([1, 4], np.int32), a[3]), RuntimeError),
    ("negative target length", {}, lambda a: (a[0], a[1], a[2], np.array([-1, 2], np.int32)), RuntimeError),
]


@pytest.mark.parametrize("name,ctor,mutate,error", V2_BAD, ids=[c[0] for c in V2_BAD])
def test_ctclossv2_documented_errors(name, ctor, mutate, error):
    args = _v2_args() if mutate is None else mutate(_v2_args())
    with pytest.raises(error):
        fastctc.CTCLossV2(**ctor)(*args)


# ------------------------------------------------------------ optax / JAX

@pytest.fixture(scope="module")
def jax_x64():
    """float64 JAX for this module, set globally: the thread-local `jax.enable_x64(True)`
    context is not seen by the thread that may run a pure_callback, which then
    canonicalises the float64 operands to float32 (a JAX behaviour, see the report)."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


def _optax_case(rng, B, T, K, N, dtype):
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


def test_optax_random_against_real_optax(jax_x64):
    import optax
    import fastctc.jax as fj
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
        x, fp, lab, lp, blank, eps = _optax_case(rng, B, T, K, N, dtype)
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


def test_jax_vmap_matches_loop(jax_x64):
    import fastctc.jax as fj
    jnp = jax_x64.numpy
    rng = np.random.default_rng(5)
    cases = [_optax_case(rng, 2, 6, 4, 3, np.float64) for _ in range(3)]
    stack = [jnp.asarray(np.stack([c[k] for c in cases])) for k in range(4)]
    eps = jnp.asarray([c[5] for c in cases])
    fn = jax_x64.jit(jax_x64.vmap(lambda x, fp, lab, lp, e: fj.ctc_loss(x, fp, lab, lp, blank_id=1, log_epsilon=e)))
    got = fn(*stack, eps)
    for m, c in enumerate(cases):
        np.testing.assert_allclose(got[m], fastctc.optax_ctc_loss(*c[:4], blank_id=1, log_epsilon=c[5]),
                                   rtol=1e-12)


@pytest.mark.parametrize("mutate,error", [
    (lambda a: (a[0][0],) + a[1:], ValueError),                       # logits rank 2
    (lambda a: (a[0].astype(np.float16),) + a[1:], TypeError),        # float16 logits (NumPy API)
    (lambda a: (a[0], a[1], a[2].astype(float), a[3]), TypeError),    # float labels
    (lambda a: (a[0], a[1][:, :2], a[2], a[3]), ValueError),          # logit_paddings shape
    (lambda a: (a[0], a[1], a[2], a[3][:, :1]), ValueError),          # label_paddings shape
    (lambda a: (a[0], a[1], np.array([[1, 9], [1, 1]]), a[3]), ValueError),   # label >= K
    (lambda a: (a[0], a[1] + 0.5, a[2], a[3]), ValueError),           # paddings not 0/1
    (lambda a: (a[0], a[1], a[2], np.array([[1.0, 0.0], [0, 0]])), ValueError),  # not right-padded
    (lambda a: (a[0][:, :0], a[1][:, :0], a[2], a[3]), ValueError),   # T = 0
])
def test_optax_bad_inputs(mutate, error):
    args = (np.zeros((2, 5, 4), np.float32), np.zeros((2, 5), np.float32), np.array([[1, 2], [3, 3]]),
            np.zeros((2, 2), np.float32))
    with pytest.raises(error):
        fastctc.ctc_loss_with_forward_probs(*mutate(args))
    for kw in (dict(blank_id=4), dict(blank_id=-1)):
        with pytest.raises(ValueError, match="blank_id"):
            fastctc.optax_ctc_loss(*args, **kw)
    with pytest.raises(ValueError, match="log_epsilon"):
        fastctc.optax_ctc_loss(*args, log_epsilon=-np.inf)


# ------------------------------------------------------------ alignment

def test_forced_align_and_posteriors_brute_force(rng):
    checked = 0
    for _ in range(60):
        B, T, C, L = int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(2, 4)), int(rng.integers(0, 3))
        blank = int(rng.integers(0, C))
        dtype = [np.float32, np.float64][int(rng.integers(2))]
        lp = np.log(rng.dirichlet(np.ones(C), size=(B, T)))
        if rng.random() < 0.3:
            lp = np.round(lp)  # many ties
        lp = lp.astype(dtype)
        tg = rng.integers(0, C - 1, size=(B, L))
        tg = np.where(tg >= blank, tg + 1, tg)
        il, tl = rng.integers(0, T + 1, size=B), rng.integers(0, L + 1, size=B)
        repeats = [sum(tg[b, i] == tg[b, i - 1] for i in range(1, tl[b])) for b in range(B)]
        if any(il[b] < tl[b] + repeats[b] for b in range(B)):
            with pytest.raises(RuntimeError, match="targets length is too long for CTC"):
                fastctc.forced_align(lp, tg, il, tl, blank=blank)
            continue
        paths, scores = fastctc.forced_align(lp, tg, il, tl, blank=blank)
        assert paths.shape == scores.shape == (B, T) and scores.dtype == dtype
        post = fastctc.ctc_posteriors(lp.transpose(1, 0, 2), tg, il, tl, blank=blank)
        for b in range(B):
            n = int(il[b])
            best = max((sum(float(lp[b, t, c]) for t, c in enumerate(p))
                        for p in itertools.product(range(C), repeat=n)
                        if ref.collapse(p, blank) == list(tg[b, : tl[b]])), default=-np.inf)
            assert ref.collapse(paths[b, :n], blank) == list(tg[b, : tl[b]])
            np.testing.assert_allclose(scores[b, :n], lp[b, np.arange(n), paths[b, :n]])
            np.testing.assert_allclose(scores[b].astype(np.float64).sum(), best, rtol=1e-5, atol=1e-5)
            assert (paths[b, n:] == blank).all() and not scores[b, n:].any()
            want = np.zeros((T, C))
            want[:n] = ref.occupancy(lp[b, :n].astype(np.float64), tg[b, : tl[b]], blank)
            np.testing.assert_allclose(post[:, b], want, atol=1e-5)
            checked += 1
    assert checked > 20


def test_merge_tokens_against_definition(rng):
    for _ in range(30):
        n = int(rng.integers(0, 12))
        tokens = rng.integers(0, 3, size=n)
        scores = rng.normal(size=n)
        spans = fastctc.merge_tokens(tokens, scores, blank=0)
        want = []
        for tok, grp in itertools.groupby(range(n), key=lambda i: int(tokens[i])):
            idx = list(grp)
            if tok != 0:
                want.append((tok, idx[0], idx[-1] + 1, float(np.mean(scores[idx]))))
        assert [(s.token, s.start, s.end) for s in spans] == [w[:3] for w in want]
        np.testing.assert_allclose([s.score for s in spans], [w[3] for w in want])


@pytest.mark.parametrize("mutate,error,needle", [
    (lambda lp, tg: (lp, np.array([[0, 1]])), ValueError, "blank"),          # target is the blank
    (lambda lp, tg: (lp, np.array([[1, 5]])), ValueError, "5"),              # target >= C
    (lambda lp, tg: (lp, tg.astype(np.float32)), TypeError, "targets"),
    (lambda lp, tg: (lp[0], tg), ValueError, "log_probs"),
    (lambda lp, tg: (lp, tg[0]), ValueError, "targets"),
    (lambda lp, tg: (lp[:, :2], np.array([[1, 1]])), RuntimeError, "targets length is too long"),
])
def test_forced_align_errors(mutate, error, needle):
    lp = np.log(np.full((1, 5, 3), 1 / 3))
    with pytest.raises(error, match=needle):
        fastctc.forced_align(*mutate(lp, np.array([[1, 2]])))
