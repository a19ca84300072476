"""Large-alphabet gradient rows and caller-owned gradient buffers (grad_out=).

Rows of 4 KiB and more in a sequence block of 1 MiB and more are written with
non-temporal stores (include/fastctc/fastctc.h, fctc_stream_rows), whose aligned body,
unaligned head and tail, and zero-filled rows past an input length all have their own
code; the shapes here are chosen to cross those thresholds, in float32 and float64, at
every SIMD level, against the float64 reference.  grad_out= must give the same numbers
as a fresh gradient, overwrite every element, accept any strided (T, N, C) view with a
contiguous class axis, and refuse what it cannot honour with a named error.
"""
import fastctc
import numpy as np
import pytest
import reference as ref
from reference import random_log_probs

# C * itemsize >= 4096 and T * C * itemsize >= 1 MiB: the streaming threshold, in both dtypes
T, C = 256, 1031
LABELS = [[5, 17, 17, 1030], [900, 3, 44, 2], [7, 8, 9, 10]]
INPUT_LENGTHS = [256, 200, 256]


def _problem(rng, dtype, from_logits):
    x = rng.normal(size=(T, len(LABELS), C)) * 2.0 if from_logits else random_log_probs(rng, T, len(LABELS), C)
    return x.astype(dtype), np.array(LABELS), np.array(INPUT_LENGTHS), np.full(len(LABELS), 4)


def _reference(x, from_logits):
    grad = np.zeros(x.shape, dtype=np.float64)
    losses = []
    for n, labels in enumerate(LABELS):
        frames = x[: INPUT_LENGTHS[n], n].astype(np.float64)
        lp = ref.log_softmax(frames) if from_logits else frames
        losses.append(ref.nll(lp, labels, 0))
        grad[: INPUT_LENGTHS[n], n] = (ref.grad_logits(frames, labels, 0) if from_logits
                                       else ref.grad_log_probs(frames, labels, 0))
    return np.array(losses), grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [False, True])
def test_large_rows_match_reference(simd_level, rng, dtype, from_logits):
    x, targets, il, tl = _problem(rng, dtype, from_logits)
    loss, grad = fastctc.ctc_loss_and_grad(x, targets, il, tl, reduction="none", from_logits=from_logits)
    want_loss, want_grad = _reference(x, from_logits)
    if dtype == np.float32:
        # 256 frames of float32 recursion: occupancies carry ~1e-5 absolute rounding (PyTorch's
        # float32 CTC gradient is 1e-3 away from the reference on this very problem)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, atol=5e-5)
    else:
        np.testing.assert_allclose(loss, want_loss, rtol=1e-11)
        np.testing.assert_allclose(grad, want_grad, atol=1e-11)
    assert not grad[200:, 1].any()  # rows past sequence 1's input length are exactly zero


def _misaligned(shape, dtype):
    """A C-contiguous array starting one element past a 64-byte boundary."""
    size = int(np.prod(shape))
    item = np.dtype(dtype).itemsize
    raw = np.empty(size + 64 // item + 1, dtype=dtype)
    start = (-raw.ctypes.data % 64) // item + 1
    out = raw[start:start + size].reshape(shape)
    assert out.ctypes.data % 64 == item
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("from_logits", [False, True])
def test_grad_out_equals_fresh_gradient(simd_level, rng, dtype, from_logits):
    x, targets, il, tl = _problem(rng, dtype, from_logits)
    loss, grad = fastctc.ctc_loss_and_grad(x, targets, il, tl, from_logits=from_logits)
    N = len(LABELS)
    outs = {
        "contiguous": np.empty_like(x),
        "misaligned": _misaligned(x.shape, dtype),
        "batch-major buffer": np.empty((N, T, C), dtype=dtype).transpose(1, 0, 2),
    }
    for name, out in outs.items():
        out[...] = np.nan  # every element must be overwritten
        loss2, grad2 = fastctc.ctc_loss_and_grad(x, targets, il, tl, from_logits=from_logits, grad_out=out)
        assert grad2 is out, name
        assert loss2 == loss, name
        np.testing.assert_array_equal(grad2, grad, err_msg=name)
        # reused: a second call into the same buffer gives the same numbers
        fastctc.ctc_loss_and_grad(x, targets, il, tl, from_logits=from_logits, grad_out=out)
        np.testing.assert_array_equal(out, grad, err_msg=name)


def test_grad_out_unbatched_and_threads(rng):
    x, targets, il, tl = _problem(rng, np.float32, True)
    frames = x[:, 0]
    _, want = fastctc.ctc_loss_and_grad(frames, targets[0], T, 4, from_logits=True)
    out = np.full((T, C), np.nan, dtype=np.float32)
    _, got = fastctc.ctc_loss_and_grad(frames, targets[0], T, 4, from_logits=True, grad_out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)
    _, want = fastctc.ctc_loss_and_grad(x, targets, il, tl, num_threads=1)
    out = np.full_like(x, np.nan)
    fastctc.ctc_loss_and_grad(x, targets, il, tl, num_threads=2, grad_out=out)
    np.testing.assert_array_equal(out, want)


def test_grad_out_small_problem_and_empty_batch(rng):
    lp = random_log_probs(rng, 6, 2, 5, dtype=np.float32)
    targets, il, tl = np.array([[1, 2], [3, 3]]), np.array([6, 5]), np.array([2, 2])
    _, want = fastctc.ctc_loss_and_grad(lp, targets, il, tl)
    out = np.full_like(lp, np.nan)
    fastctc.ctc_loss_and_grad(lp, targets, il, tl, grad_out=out)
    np.testing.assert_array_equal(out, want)
    empty = np.zeros((6, 0, 5), dtype=np.float32)
    out = np.zeros_like(empty)
    _, g = fastctc.ctc_loss_and_grad(empty, np.zeros((0, 2), int), np.zeros(0, int), np.zeros(0, int),
                                     reduction="sum", grad_out=out)
    assert g is out


def test_grad_out_errors(rng):
    lp = random_log_probs(rng, 6, 2, 5, dtype=np.float32)
    args = (lp, np.array([[1, 2], [3, 3]]), np.array([6, 5]), np.array([2, 2]))
    read_only = np.zeros_like(lp)
    read_only.flags.writeable = False
    cases = [
        (np.zeros_like(lp, dtype=np.float64), TypeError, "dtype of log_probs, float32, got float64"),
        (np.zeros((6, 2, 6), np.float32), ValueError, r"shape of log_probs, \(6, 2, 5\), got \(6, 2, 6\)"),
        (lp.tolist(), TypeError, "must be a NumPy array"),
        (read_only, ValueError, "read-only"),
        (np.zeros((6, 2, 10), np.float32)[:, :, ::2], ValueError, "contiguous along its last"),
        (np.zeros((6, 2, 5), np.dtype(">f4")), TypeError, "dtype of log_probs"),
        (lp, ValueError, "shares memory with log_probs"),
        (lp[::-1], ValueError, "shares memory with log_probs"),
    ]
    for out, exc, message in cases:
        with pytest.raises(exc, match=message):
            fastctc.ctc_loss_and_grad(*args, grad_out=out)
    with pytest.raises(ValueError, match="shares memory with logits"):
        fastctc.ctc_loss_and_grad(*args, from_logits=True, grad_out=lp)


def test_engine_bridge_refuses_mismatched_buffers():
    """_core.run_batch reads raw pointers: a wrong dtype, shape or stride is an error, not a bad read."""
    from fastctc import _core
    acts = np.zeros((4, 2, 3), np.float32)
    labels, offsets = np.array([1, 2], np.int32), np.array([0, 1], np.intp)
    lengths, inputs = np.array([1, 1], np.int32), np.array([4, 4], np.int32)
    weights = np.ones(2)
    good_costs = np.empty(2, np.float32)
    bad = [
        dict(grad=np.zeros((4, 2, 3), np.float64), costs=good_costs),
        dict(grad=np.zeros((4, 2, 2), np.float32), costs=good_costs),
        dict(grad=np.zeros((4, 2, 6), np.float32)[:, :, ::2], costs=good_costs),
        dict(grad=None, costs=np.empty(2, np.float64)),
        dict(grad=None, costs=np.empty(3, np.float32)),
    ]
    for case in bad:
        with pytest.raises(ValueError, match="run_batch"):
            _core.run_batch(acts, labels, offsets, lengths, inputs, 0, False, case["grad"], weights, None,
                            case["costs"], 1)
    _core.run_batch(acts, labels, offsets, lengths, inputs, 0, False, np.zeros_like(acts), weights, None,
                    good_costs, 1)
    assert np.all(np.isfinite(good_costs))
