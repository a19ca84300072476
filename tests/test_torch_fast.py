"""fastctc._fast, the compiled common-case check behind fastctc.torch and fastctc.ctc_loss:
on every input it accepts it must build exactly the Batch that _validate.check_ctc_inputs
builds, and on every input it cannot vouch for (any out-of-range value, an unusual form) it
must decline (None) so that check_ctc_inputs handles it or raises its documented error.
Also its small-batch reduce against fastctc._reduction, bit for bit."""
import numpy as np
import pytest
from fastctc import _engine, _fast
from fastctc._reduction import loss_weights, reduce_losses
from fastctc._validate import check_ctc_inputs


def _fields(batch):
    return (batch.acts, batch.labels, batch.offsets, batch.label_lengths, batch.input_lengths)


def _same(a, b):
    (ba, blank_a), (bb, blank_b) = a, b
    assert blank_a == blank_b and ba.unbatched == bb.unbatched and ba.original_shape == bb.original_shape
    for x, y in zip(_fields(ba), _fields(bb)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    assert ba.acts.ctypes.data == bb.acts.ctypes.data  # both read the caller's memory in place


def _random_call(rng):
    T, N, C = int(rng.integers(1, 12)), int(rng.integers(1, 5)), int(rng.integers(1, 7))
    S = int(rng.integers(0, 6))
    dtype = rng.choice([np.float32, np.float64])
    acts = rng.standard_normal((T, N, C)).astype(dtype)
    if rng.random() < 0.3:
        acts = np.ascontiguousarray(acts.transpose(1, 0, 2)).transpose(1, 0, 2)  # batch-major storage
    idt = rng.choice([np.int32, np.int64])
    tg = rng.integers(0, C, (N, S)).astype(idt)
    il = rng.integers(0, T + 1, N).astype(rng.choice([np.int32, np.int64]))
    tl = rng.integers(0, S + 1, N).astype(rng.choice([np.int32, np.int64]))
    blank = int(rng.integers(0, C))
    if rng.random() < 0.4:  # concatenated targets
        tg = np.concatenate([tg[n, : tl[n]] for n in range(N)]).astype(idt)
    if rng.random() < 0.2 and N == 1:  # unbatched
        acts = acts[:, 0]
        il, tl = il[0:1].reshape(()), tl[0:1]
        if tg.ndim == 2:
            tg = tg[0, : int(tl[0])]
    return acts, tg, il, tl, blank


def test_accepts_exactly_what_check_ctc_inputs_builds():
    rng = np.random.default_rng(0)
    accepted = 0
    for _ in range(400):
        args = _random_call(rng)
        fast = _fast.prepare(*args)
        slow = check_ctc_inputs(*args)
        if fast is not None:
            accepted += 1
            _same(fast, slow)
    assert accepted > 300  # the common forms do take the fast path


def _corrupt(rng, args):
    acts, tg, il, tl, blank = args
    acts, tg, il, tl = acts.copy(), tg.copy(), il.copy(), tl.copy()
    T, C = acts.shape[0], acts.shape[-1]
    kind = int(rng.integers(0, 8))
    if kind == 0:
        il.reshape(-1)[0] = T + 1
    elif kind == 1:
        il.reshape(-1)[0] = -1
    elif kind == 2:
        tl.reshape(-1)[0] = -1
    elif kind == 3:
        tl.reshape(-1)[0] = (tg.shape[1] if tg.ndim == 2 else tg.shape[0]) + 1
    elif kind == 4:
        blank = C
    elif kind == 5:
        blank = -1
    elif kind == 6:
        if tg.size == 0:
            return None
        tg.reshape(-1)[:] = C
    else:
        il = il.astype(np.float64)
    return acts, tg, il, tl, blank


def test_declines_every_bad_input_and_the_slow_check_raises():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(400):
        bad = _corrupt(rng, _random_call(rng))
        if bad is None:
            continue
        try:
            check_ctc_inputs(*bad)
        except (ValueError, TypeError):
            checked += 1
            assert _fast.prepare(*bad) is None
    assert checked > 200


@pytest.mark.parametrize("x", [
    [[1.0]], np.zeros((3, 2, 4), dtype=np.float16), np.zeros((3, 0, 4), dtype=np.float32),
    np.zeros((3, 2, 4), dtype=np.float32)[:, :, ::2], np.zeros((3, 2, 4), dtype=">f4"),
])
def test_declines_unusual_activations(x):
    assert _fast.prepare(x, np.zeros((2, 1), np.int64), np.ones(2, np.int64), np.ones(2, np.int64), 0) is None


def test_declines_non_integer_and_odd_index_forms():
    acts = np.zeros((4, 2, 3), np.float32)
    tg = np.ones((2, 2), np.int64)
    il, tl = np.full(2, 4), np.full(2, 2)
    assert _fast.prepare(acts, tg, il, tl, 0) is not None
    assert _fast.prepare(acts, tg.astype(np.int16), il, tl, 0) is None     # check_ctc_inputs converts it
    assert _fast.prepare(acts, [[1, 1], [1, 1]], il, tl, 0) is None        # lists too
    assert _fast.prepare(acts, tg, il.astype(np.uint8), tl, 0) is None
    assert _fast.prepare(acts, tg, il, tl, True) is None                    # bool blank: the slow check says no
    assert _fast.prepare(acts, tg, il, tl, np.int64(0)) is None
    assert _fast.prepare(acts, tg, il, tl, 2**70) is None


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [0, 1, 3, 7, 8, 33])
def test_reduce_matches_engine_bit_for_bit(reduction, dtype, N):
    rng = np.random.default_rng(N)
    costs = (rng.random(N) * 50).astype(dtype)
    if N > 2:
        costs[1] = np.inf
    tl = rng.integers(0, 9, N).astype(np.int32)
    for zero_infinity in (False, True):
        want = reduce_losses(costs.copy(), tl, reduction, zero_infinity)
        got = _fast.reduce(costs.copy(), tl, reduction, zero_infinity)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    if reduction != "none" or N:
        np.testing.assert_array_equal(_fast.grad_weights(tl, reduction), loss_weights(tl, reduction))


def _general_path(args, reduction, zero_infinity, from_logits, want_grad):
    """What the Python path computes for a call: check_ctc_inputs, _engine.run, _reduction."""
    batch, blank = check_ctc_inputs(*args)
    weights = loss_weights(batch.label_lengths, reduction)
    costs, grad, _ = _engine.run(batch, blank, from_logits, want_grad=want_grad, grad_weights=weights)
    loss = reduce_losses(costs, batch.label_lengths, reduction, zero_infinity)
    if batch.unbatched:
        if reduction == "none":
            loss = loss.reshape(())
        if grad is not None:
            grad = grad[:, 0, :]
    return loss, grad


def test_ctc_call_is_the_general_path_bit_for_bit():
    """The compiled one-call path (_fast.ctc_call, behind fastctc.torch and fastctc.ctc_loss)
    gives the same bits as the general path on every plain input, and declines the rest."""
    rng = np.random.default_rng(2)
    accepted = 0
    for i in range(300):
        args = _random_call(rng)
        reduction = ("none", "sum", "mean")[i % 3]
        zero_infinity, from_logits, want_grad = bool(i % 2), bool(i % 5 == 0), bool(i % 4 != 3)
        got = _fast.ctc_call(*args, reduction, zero_infinity, from_logits, want_grad, None)
        if got is None:
            continue
        accepted += 1
        want = _general_path(args, reduction, zero_infinity, from_logits, want_grad)
        for g, w in zip(got, want):
            if w is None:
                assert g is None
                continue
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
    assert accepted > 200
    assert _core_calls_in_flight() == 0  # the thread budget's counter is released every time


def test_ctc_call_declines_what_prepare_declines():
    rng = np.random.default_rng(3)
    declined = 0
    for _ in range(300):
        bad = _corrupt(rng, _random_call(rng))
        if bad is None:
            continue
        if _fast.prepare(*bad) is None:
            declined += 1
            assert _fast.ctc_call(*bad, "mean", False, False, True, None) is None
    assert declined > 150


def test_ctc_call_thread_counts_give_the_same_bits():
    rng = np.random.default_rng(4)
    acts = rng.standard_normal((60, 5, 7)).astype(np.float32)
    tg = rng.integers(1, 7, (5, 12)).astype(np.int64)
    il, tl = np.full(5, 60), rng.integers(1, 13, 5)
    base = _fast.ctc_call(acts, tg, il, tl, 0, "none", False, False, True, 1)
    for threads in (2, 3, None):
        got = _fast.ctc_call(acts, tg, il, tl, 0, "none", False, False, True, threads)
        np.testing.assert_array_equal(got[0], base[0])
        np.testing.assert_array_equal(got[1], base[1])


def _core_calls_in_flight():
    from fastctc import _core
    return _core.calls_in_flight()
