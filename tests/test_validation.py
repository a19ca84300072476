"""Every bad input to ctc_loss / ctc_loss_and_grad raises a clear Python exception
(a subclass of the builtin ValueError/TypeError) naming the argument, the index, the
value and the bound, before any kernel runs; nothing crashes or reads out of bounds."""
import fastctc
import numpy as np
import pytest
import reference as ref
from fastctc import CTCTypeError, CTCValueError

LP = np.log(np.full((6, 2, 4), 0.25))
TG = np.array([[1, 2], [3, 3]])
IL = [6, 5]
TL = [2, 2]


@pytest.mark.parametrize("args,kwargs,exc,words", [
    ((LP[0, 0], TG, IL, TL), {}, CTCValueError, ["log_probs", "rank"]),       # 1-D
    ((LP[None], TG, IL, TL), {}, CTCValueError, ["log_probs", "rank", "(1, 6, 2, 4)"]),
    ((LP.astype(np.float16), TG, IL, TL), {}, CTCTypeError, ["log_probs", "float16"]),
    ((LP.astype(np.int64), TG, IL, TL), {}, CTCTypeError, ["log_probs", "int64"]),
    ((LP.astype(np.complex128), TG, IL, TL), {}, CTCTypeError, ["log_probs"]),
    ((LP, TG.astype(np.float64), IL, TL), {}, CTCTypeError, ["targets", "float64"]),
    ((LP, TG.astype(bool), IL, TL), {}, CTCTypeError, ["targets", "bool"]),
    ((LP, TG, [6.0, 5.0], TL), {}, CTCTypeError, ["input_lengths"]),
    ((LP, TG, IL, np.array([2.0, 2.0])), {}, CTCTypeError, ["target_lengths"]),
    ((LP, TG[None], IL, TL), {}, CTCValueError, ["targets", "rank"]),
    ((LP, TG[:1], IL, TL), {}, CTCValueError, ["targets", "N = 2"]),
    ((LP, TG, [6], TL), {}, CTCValueError, ["input_lengths", "(2,)"]),
    ((LP, TG, IL, [2, 2, 2]), {}, CTCValueError, ["target_lengths", "(2,)"]),
    ((LP, TG, [6, 7], TL), {}, CTCValueError, ["input_lengths[1] = 7", "6"]),
    ((LP, TG, [-1, 5], TL), {}, CTCValueError, ["input_lengths[0] = -1"]),
    ((LP, TG, IL, [2, 3]), {}, CTCValueError, ["target_lengths[1] = 3", "S = 2"]),
    ((LP, TG, IL, [-2, 1]), {}, CTCValueError, ["target_lengths[0] = -2"]),
    ((LP, [[1, 4], [3, 3]], IL, TL), {}, CTCValueError, ["targets[0, 1] = 4", "[0, 4)"]),
    ((LP, [[1, 2], [-3, 3]], IL, TL), {}, CTCValueError, ["targets[1, 0] = -3"]),
    ((LP, [1, 2, 3, 9], IL, TL), {}, CTCValueError, ["targets[3] = 9", "[0, 4)"]),
    ((LP, [1, 2, 3], IL, TL), {}, CTCValueError, ["sum(target_lengths) = 4", "3"]),
    ((LP, TG, IL, TL), {"blank": 4}, CTCValueError, ["blank", "[0, 4)", "4"]),
    ((LP, TG, IL, TL), {"blank": -1}, CTCValueError, ["blank", "-1", "4"]),
    ((LP, TG, IL, TL), {"blank": 1.5}, CTCTypeError, ["blank"]),
    ((LP, TG, IL, TL), {"blank": 1.0}, CTCTypeError, ["blank", "float"]),
    ((LP, TG, IL, TL), {"blank": True}, CTCTypeError, ["blank", "bool"]),
    ((LP, TG, IL, TL), {"reduction": "avg"}, CTCValueError, ["reduction", "avg"]),
    ((LP, TG, IL, TL), {"reduction": "MEAN"}, CTCValueError, ["reduction", "MEAN"]),
    ((LP, TG, IL, TL), {"reduction": None}, CTCTypeError, ["reduction"]),
    ((LP, TG, IL, TL), {"zero_infinity": "yes"}, CTCTypeError, ["zero_infinity"]),
    ((LP, TG, IL, TL), {"zero_infinity": 2}, CTCTypeError, ["zero_infinity", "2"]),
    ((LP, TG, IL, TL), {"from_logits": "no"}, CTCTypeError, ["from_logits"]),
    ((LP, TG, IL, TL), {"num_threads": 0}, CTCValueError, ["num_threads", "0"]),
    ((LP, TG, IL, TL), {"num_threads": 2**31}, CTCValueError, ["num_threads"]),
    ((LP, TG, IL, TL), {"num_threads": 1.5}, CTCTypeError, ["num_threads"]),
    ((LP[:, 0], [1, 2], [6, 6], 2), {}, CTCValueError, ["input_lengths", "unbatched"]),
    ((LP[:, 0], [1, 2, 0], 6, 2), {}, CTCValueError, ["targets", "unbatched"]),  # 1-D = concatenated, as torch
    ((LP[:, :, :0], TG, IL, TL), {}, CTCValueError, ["C >= 1"]),
    ((LP, TG, IL, [2**40, 1]), {}, CTCValueError, ["target_lengths[0]"]),
    ((LP, TG, [2**40, 1], TL), {}, CTCValueError, ["input_lengths[0]"]),
])
def test_bad_inputs(args, kwargs, exc, words):
    fns = [fastctc.ctc_loss, fastctc.ctc_loss_and_grad]
    if set(kwargs) <= {"blank", "num_threads"}:
        fns.append(fastctc.ctc_posteriors)
    for fn in fns:
        with pytest.raises(exc) as info:
            fn(*args, **kwargs)
        for word in words:
            assert word in str(info.value), (fn.__name__, word, str(info.value))


def test_error_classes_are_builtin_subclasses():
    assert issubclass(CTCValueError, ValueError)
    assert issubclass(CTCTypeError, TypeError)
    assert issubclass(fastctc.CTCRuntimeError, RuntimeError)


def test_padding_values_past_target_length_are_ignored():
    """Only the first target_length labels of each padded row are read (PyTorch does the same)."""
    tg = np.array([[1, 2, -100, 99], [3, 3, 1234, -1]])
    a = fastctc.ctc_loss(LP, tg, IL, TL, reduction="none")
    b = fastctc.ctc_loss(LP, TG, IL, TL, reduction="none")
    np.testing.assert_array_equal(a, b)


def test_non_finite_values_do_not_crash(simd_level):
    lp = LP.copy()
    lp[2, 0, 1] = np.nan
    lp[3, 1, :] = -np.inf
    lp[1, 1, 2] = np.inf
    loss, grad = fastctc.ctc_loss_and_grad(lp, TG, IL, TL, reduction="none")
    assert np.isnan(loss[0])
    assert np.isposinf(loss[1]) or np.isnan(loss[1])
    loss = fastctc.ctc_loss(lp, TG, IL, TL, reduction="none", from_logits=True)
    assert loss.shape == (2,)


def test_huge_label_values_and_lengths_are_rejected_not_read():
    # int64 values beyond int32 must be caught before any narrowing cast
    with pytest.raises(CTCValueError):
        fastctc.ctc_loss(LP, np.array([[1, 2**33 + 1], [3, 3]]), IL, TL)
    with pytest.raises(CTCValueError):
        fastctc.ctc_loss(LP, np.array([1, 2, 3, 2**40]), IL, TL)


def test_accepts_lists_and_unsigned():
    a = fastctc.ctc_loss(LP.tolist(), TG.tolist(), IL, TL, reduction="none")
    b = fastctc.ctc_loss(LP, TG.astype(np.uint8), np.array(IL, np.uint16), np.array(TL, np.int32), reduction="none")
    np.testing.assert_allclose(a, b)


def test_huge_thread_counts_are_capped_not_crashing():
    """Regression (fuzz finding): num_threads=10**6 with fewer sequences than threads took
    the split path and asked OpenMP for a million threads, which ends the process."""
    want = fastctc.ctc_loss_and_grad(LP, TG, IL, TL, reduction="none", num_threads=1)
    for threads in (3, 10**6, 2**31 - 1):
        got = fastctc.ctc_loss_and_grad(LP, TG, IL, TL, reduction="none", num_threads=threads)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], want[1], atol=1e-12)
        got = fastctc.ctc_loss(LP[:, :1], TG[:1], IL[:1], TL[:1], reduction="none", num_threads=threads)
        np.testing.assert_allclose(got, want[0][:1], rtol=1e-12)


# ---------------------------------------------------------------- more bad inputs, and quirks PyTorch accepts
# The acceptance probes: inputs test_bad_inputs does not cover, each also given to
# PyTorch's ctc_loss where it refuses them as well; and inputs both accept.

def _check_message(exc, *needles):
    msg = str(exc.value)
    for needle in needles:
        assert str(needle) in msg, (needle, msg)


def _probe_base():
    lp = ref.log_softmax(np.random.default_rng(0).normal(size=(6, 2, 4)))
    return lp, np.array([[1, 2, 1], [3, 3, 0]]), np.array([6, 5]), np.array([3, 2])


# (name, mutate(lp, tg, il, tl) -> args, error class, message fragments, torch also raises)
PROBES = [
    ("flat targets too long", lambda lp, tg, il, tl: (lp, [1, 2, 1, 3, 3, 3], il, tl), CTCValueError,
     ("targets", "5", "6"), True),
    ("bool lengths", lambda lp, tg, il, tl: (lp, tg, il, np.array([True, True])), CTCTypeError,
     ("target_lengths", "bool"), False),
    ("ragged targets", lambda lp, tg, il, tl: (lp, [[1, 2], [3]], il, tl), CTCTypeError,
     ("targets",), True),
    ("None targets", lambda lp, tg, il, tl: (lp, None, il, tl), CTCTypeError, ("targets",), True),
    ("huge flat lengths", lambda lp, tg, il, tl: (lp, [1], il, [2**31 - 1, -(2**31 - 2)]), CTCValueError,
     ("target_lengths", "[0]"), True),
    ("lengths (N, 2)", lambda lp, tg, il, tl: (lp, tg, il, np.array([[3, 2], [3, 2]])), CTCValueError,
     ("target_lengths", "(2, 2)"), True),
    ("unbatched padded targets of batch 2", lambda lp, tg, il, tl: (lp[:, 0], tg, 6, 2), CTCValueError,
     ("targets", "(2, 3)"), True),
]


@pytest.mark.parametrize("name,mutate,error,needles,torch_raises", PROBES, ids=[c[0] for c in PROBES])
def test_bad_inputs_raise_before_any_kernel(name, mutate, error, needles, torch_raises):
    """Every entry point refuses them with its message; where torch_raises, PyTorch's own
    ctc_loss refuses them too (the cases test_bad_inputs covers were dropped here)."""
    args = mutate(*_probe_base())
    for fn in (fastctc.ctc_loss, fastctc.ctc_loss_and_grad, fastctc.ctc_posteriors):
        with pytest.raises(error) as exc:
            fn(*args)
        _check_message(exc, *needles)
    if torch_raises:  # PyTorch refuses it too (or cannot even take it)
        torch = pytest.importorskip("torch")
        F = torch.nn.functional

        def to_t(v):
            arr = np.asarray(v) if not isinstance(v, list) or name != "ragged targets" else None
            return torch.as_tensor(arr) if arr is not None and arr.dtype != object else v
        with pytest.raises(Exception):
            F.ctc_loss(*(to_t(a) for a in args))


def test_accepted_quirks():
    """Inputs PyTorch also accepts: byte-swapped and misaligned arrays, read-only broadcast
    views, a 0-d tensor as blank, NumPy bools as flags, N = 0 (NaN mean, as torch.mean)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    lp, tg, il, tl = _probe_base()
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
