"""fastctc.torch's errors against torch 2.13's, case by case: wherever
torch.nn.functional.ctc_loss raises, fastctc.torch raises an exception of the same builtin
class (RuntimeError for bad lengths, shapes, dtypes and empty inputs; ValueError for a bad
reduction), which is also a fastctc error naming the argument; wherever torch returns a
value, so does fastctc, the same one.  The few deliberate differences are listed in
DIFFERENT and checked as such."""
import pytest

torch = pytest.importorskip("torch")
import fastctc  # noqa: E402
import fastctc.torch as fct  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fastctc._validate import CTCTypeError, CTCValueError  # noqa: E402

T, N, C, S = 6, 2, 4, 3


def _base():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(T, N, C, generator=g).log_softmax(2)
    tg = torch.randint(1, C, (N, S), generator=g)
    return lp, tg, torch.full((N,), T), torch.full((N,), S)


def _cases():
    lp, tg, il, tl = _base()
    long = dict(dtype=torch.long)
    return {
        "target_length_beyond_padded_width": ((lp, tg, il, torch.tensor([S + 1, 1])), {}),
        "target_length_beyond_input_length": ((lp, tg, torch.tensor([2, T]), tl), {}),  # value: inf
        "input_length_beyond_T": ((lp, tg, torch.tensor([T + 1, T]), tl), {}),
        "negative_input_length": ((lp, tg, torch.tensor([-1, T]), tl), {}),
        "negative_target_length": ((lp, tg, il, torch.tensor([-1, 1])), {}),
        "float_input_lengths": ((lp, tg, il.float(), tl), {}),
        "float_target_lengths": ((lp, tg, il, tl.float()), {}),
        "bool_input_lengths": ((lp, tg, il.bool(), tl), {}),
        "float_list_input_lengths": ((lp, tg, [6.0, 6.0], tl), {}),
        "input_lengths_wrong_batch": ((lp, tg, torch.tensor([T]), tl), {}),
        "target_lengths_wrong_batch": ((lp, tg, il, torch.tensor([S])), {}),
        "targets_wrong_batch": ((lp, tg[:1], il, tl), {}),
        "concatenated_targets_wrong_total": ((lp, tg.reshape(-1)[:5], il, tl), {}),
        "targets_rank_3": ((lp, tg[None], il, tl), {}),
        "log_probs_rank_1": ((lp[:, 0, 0], tg, il, tl), {}),
        "log_probs_rank_4": ((lp[None], tg, il, tl), {}),
        "log_probs_int64": ((lp.long(), tg, il, tl), {}),
        "blank_equal_to_C": ((lp, tg, il, tl), dict(blank=C)),
        "negative_blank": ((lp, tg, il, tl), dict(blank=-1)),
        "bad_reduction": ((lp, tg, il, tl), dict(reduction="avg")),
        "unbatched_lengths_of_two": ((lp[:, 0], tg[0], torch.tensor([T, T]), torch.tensor([S])), {}),
        "int32_lengths": ((lp, tg, il.int(), tl.int()), {}),
        "int16_targets": ((lp, tg.short(), il, tl), {}),
        "uint8_targets": ((lp, tg.byte(), il, tl), {}),
        "zero_target_lengths": ((lp, torch.zeros(N, 0, **long), il, torch.zeros(N, **long)), {}),
        "zero_input_lengths": ((lp, tg, torch.zeros(N, **long), torch.zeros(N, **long)), {}),
        "empty_batch": ((torch.zeros(T, 0, C), torch.zeros(0, S, **long), torch.zeros(0, **long),
                         torch.zeros(0, **long)), {}),
        "empty_time": ((torch.zeros(0, N, C), tg, torch.zeros(N, **long), torch.zeros(N, **long)), {}),
        "empty_time_with_targets": ((torch.zeros(0, N, C), tg, torch.zeros(N, **long), tl), {}),
        "no_classes": ((torch.zeros(T, N, 0), tg, il, tl), {}),
        "empty_unbatched": ((torch.zeros(0, C), tg[0], torch.tensor(0), torch.tensor(0)), {}),
    }


# Deliberate differences: (what torch does, what fastctc does instead, why)
DIFFERENT = {
    # torch computes garbage (or reads out of bounds) with labels outside [0, C); fastctc refuses
    "targets_out_of_range": "fastctc raises",
    # torch silently truncates float targets; fastctc refuses to guess labels
    "float_targets": "fastctc raises",
    # torch's CPU kernel has no half precision; fastctc computes it in float32
    "half_log_probs": "fastctc computes",
}


def _outcome(fn, args, kwargs):
    try:
        return fn(*args, **kwargs), None
    except Exception as exc:  # noqa: BLE001 - the class is what is compared
        return None, exc


def _builtin(exc_type):
    for cls in exc_type.__mro__:
        if cls in (RuntimeError, ValueError, TypeError):
            return cls
    raise AssertionError(f"unexpected exception class {exc_type}")


@pytest.mark.parametrize("name", sorted(_cases()))
@pytest.mark.parametrize("reduction", ["mean", "none", "sum"])
def test_same_outcome_as_torch(name, reduction):
    args, kwargs = _cases()[name]
    kwargs = dict(kwargs)
    kwargs.setdefault("reduction", reduction)
    want, want_exc = _outcome(F.ctc_loss, args, kwargs)
    got, got_exc = _outcome(fct.ctc_loss, args, kwargs)
    if want_exc is not None:
        assert got_exc is not None, f"torch raised {want_exc!r}, fastctc returned {got!r}"
        assert isinstance(got_exc, _builtin(type(want_exc))), (want_exc, got_exc)
        # and it is fastctc's own error, with its message
        assert isinstance(got_exc, (CTCValueError, CTCTypeError)), got_exc
        assert str(got_exc)
    else:
        assert got_exc is None, f"torch returned {want!r}, fastctc raised {got_exc!r}"
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got, want)


def test_runtime_error_catches_value_errors_with_our_message():
    lp, tg, il, tl = _base()
    with pytest.raises(RuntimeError, match=r"input_lengths\[0\] = 7 is outside \[0, 6\]") as info:
        fct.ctc_loss(lp, tg, torch.tensor([T + 1, T]), tl)
    assert isinstance(info.value, ValueError) and isinstance(info.value, fastctc.CTCValueRuntimeError)
    with pytest.raises(RuntimeError, match="target_lengths must hold integers") as info:
        fct.ctc_loss(lp, tg, il, tl.float())
    assert isinstance(info.value, TypeError)


def test_documented_differences():
    lp, tg, il, tl = _base()
    with pytest.raises(RuntimeError, match=r"targets\[0, 0\] = 4 is outside \[0, 4\)"):
        fct.ctc_loss(lp, torch.full_like(tg, C), il, tl)
    with pytest.raises(TypeError, match="targets must hold integers"):
        fct.ctc_loss(lp, tg.float(), il, tl)
    with pytest.raises(NotImplementedError):
        F.ctc_loss(lp.half(), tg, il, tl)
    assert fct.ctc_loss(lp.half(), tg, il, tl).dtype == torch.float32
    assert set(DIFFERENT) == {"targets_out_of_range", "float_targets", "half_log_probs"}


def test_empty_inputs_never_give_a_silent_nan():
    # torch 2.13 raises RuntimeError('log_probs tensor must not be empty') for every empty
    # log_probs; so does fastctc, under every reduction, where an empty mean would be NaN
    for reduction in ("mean", "none", "sum"):
        with pytest.raises(RuntimeError, match="must not be empty"):
            fct.ctc_loss(torch.zeros(5, 0, 3), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                         torch.zeros(0, dtype=torch.long), reduction=reduction)
