"""fastctc.torch, the PyTorch door, against PyTorch's own CTC (torch.nn.functional.ctc_loss).

* Values and gradients: every input form and reduction, gradients after log_softmax,
  gradcheck in float64, zero-copy reading of CPU tensors, random forward/backward parity
  with awkward values, the CTCLoss module.
* Errors: wherever torch.nn.functional.ctc_loss raises, fastctc.torch raises an exception
  of the same builtin class (RuntimeError for bad lengths, shapes, dtypes and empty inputs;
  ValueError for a bad reduction), which is also a fastctc error naming the argument;
  wherever torch returns a value, so does fastctc, the same one.  The few deliberate
  differences are listed in DIFFERENT and checked as such.
* The registered operator torch.ops.fastctc.ctc_loss: torch.library.opcheck,
  torch.compile(fullgraph=True) with no graph break (forward and backward, dynamic batch
  and time sizes, the same numbers as eager), torch.export, gradcheck through the op,
  second derivatives that raise instead of being silently wrong, float16/bfloat16 inputs
  and autocast.
* CUDA: the error for CUDA tensors when no GPU path exists; the CUDA cases skip, saying so,
  on machines without a GPU (the CUDA route itself: tests/test_torch_cuda_route.py on every
  machine, tests/test_cuda.py on a GPU).

The fast eager route's own tests (the compiled argument check) are in test_torch_fast.py.
"""
import sys

import numpy as np
import pytest
import reference as ref

torch = pytest.importorskip("torch")
import fastctc  # noqa: E402
import fastctc.torch as fct  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fastctc import _engine, _fast  # noqa: E402
from fastctc._validate import CTCTypeError, CTCValueError  # noqa: E402


def _case(seed, T=12, N=4, C=6, S=5, blank=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, N, C, generator=g, dtype=dtype) * 2
    il = torch.randint(T // 2, T + 1, (N,), generator=g)
    il[0] = T
    tl = torch.stack([torch.randint(0, int(min(S, il[n] // 2)) + 1, (1,), generator=g)[0] for n in range(N)])
    tg = torch.randint(1, C, (N, S), generator=g)
    tg = torch.where(tg == blank, torch.full_like(tg, (blank + 1) % C), tg)
    tg[0, :2] = tg[0, 0]  # repeated label
    return logits, tg, il, tl


def _concat(tg, tl):
    return torch.cat([tg[n, : int(tl[n])] for n in range(tg.shape[0])])


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("form", ["padded", "concat", "tuple", "list"])
def test_forward_and_grad_match_pytorch(reduction, dtype, form):
    logits, tg, il, tl = _case(3, dtype=dtype)
    if form == "concat":
        targets, ilx, tlx = _concat(tg, tl), il, tl
    elif form == "tuple":
        targets, ilx, tlx = tg, tuple(il.tolist()), tuple(tl.tolist())
    elif form == "list":
        targets, ilx, tlx = _concat(tg, tl).to(torch.int32), il.tolist(), tl.tolist()
    else:
        targets, ilx, tlx = tg.to(torch.int32), il, tl
    results = []
    for fn in (F.ctc_loss, fct.ctc_loss):
        x = logits.clone().requires_grad_(True)
        loss = fn(x.log_softmax(2), targets, ilx, tlx, blank=0, reduction=reduction)
        (loss * torch.linspace(0.5, 2.0, loss.numel(), dtype=dtype).reshape(loss.shape)).sum().backward()
        results.append((loss.detach(), x.grad))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    assert results[1][0].dtype == dtype and results[1][0].shape == results[0][0].shape
    torch.testing.assert_close(results[1][0], results[0][0], **tol)
    torch.testing.assert_close(results[1][1], results[0][1], **tol)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_unbatched(reduction):
    logits, tg, il, tl = _case(5, N=1)
    lp = logits[:, 0].log_softmax(-1)
    for il_form, tl_form in (((int(il[0]),), (int(tl[0]),)), (il[0], tl[0]), (il[:1], tl[:1])):
        want = F.ctc_loss(lp, tg[0, : int(tl[0])], il_form, tl_form, reduction=reduction)
        got = fct.ctc_loss(lp, tg[0, : int(tl[0])], il_form, tl_form, reduction=reduction)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)
    x1 = logits[:, 0].clone().requires_grad_(True)
    x2 = logits[:, 0].clone().requires_grad_(True)
    F.ctc_loss(x1.log_softmax(-1), tg[0, : int(tl[0])], il[0], tl[0], reduction=reduction).backward()
    fct.ctc_loss(x2.log_softmax(-1), tg[0, : int(tl[0])], int(il[0]), int(tl[0]), reduction=reduction).backward()
    torch.testing.assert_close(x2.grad, x1.grad)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradcheck_float64(reduction):
    logits, tg, il, tl = _case(7, T=6, N=3, C=4, S=3)
    lp = logits.log_softmax(2).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fct.ctc_loss(x, tg, il, tl, reduction=reduction), (lp,),
                                    eps=1e-6, atol=1e-5)
    # unnormalised inputs too: the gradient is the true partial derivative
    raw = logits.detach().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fct.ctc_loss(x, tg, il, tl, reduction=reduction), (raw,),
                                    eps=1e-6, atol=1e-5)


def test_gradient_differs_from_pytorch_by_exp_log_probs():
    logits, tg, il, tl = _case(11)
    lp = logits.log_softmax(2).detach()
    a = lp.clone().requires_grad_(True)
    b = lp.clone().requires_grad_(True)
    F.ctc_loss(a, tg, il, tl, reduction="sum").backward()
    fct.ctc_loss(b, tg, il, tl, reduction="sum").backward()
    mask = (torch.arange(lp.shape[0])[:, None] < il[None, :]).unsqueeze(-1).to(lp.dtype)
    torch.testing.assert_close(a.grad, b.grad + lp.exp() * mask)


def test_module_and_zero_infinity():
    lp = torch.full((3, 2, 3), 1 / 3, dtype=torch.float64).log().requires_grad_(True)
    tg = torch.tensor([[1, 1, 1], [1, 2, 0]])
    il, tl = torch.tensor([3, 3]), torch.tensor([3, 2])  # sequence 0 cannot fit
    for zi in (False, True):
        mod = fct.CTCLoss(blank=0, reduction="none", zero_infinity=zi)
        ref_loss = torch.nn.CTCLoss(blank=0, reduction="none", zero_infinity=zi)(lp, tg, il, tl)
        loss = mod(lp, tg, il, tl)
        torch.testing.assert_close(loss, ref_loss)
        assert torch.isposinf(loss[0]) != zi
    lp.grad = None
    fct.CTCLoss(reduction="sum", zero_infinity=True)(lp, tg, il, tl).backward()
    assert torch.all(lp.grad[:, 0] == 0) and torch.all(torch.isfinite(lp.grad))
    assert "zero_infinity=True" in repr(fct.CTCLoss(zero_infinity=True))


def test_batch_major_view_and_no_copy(monkeypatch):
    logits, tg, il, tl = _case(13)
    bm = logits.permute(1, 0, 2).contiguous()          # (N, T, C) storage
    view = bm.permute(1, 0, 2)                          # (T, N, C) view, class axis contiguous
    torch.testing.assert_close(fct.ctc_loss(view, tg, il, tl), F.ctc_loss(view, tg, il, tl))
    seen = []
    real_run, real_call = _engine.run, _fast.ctc_call

    def spy(batch, *args, **kwargs):
        seen.append(batch.acts.ctypes.data)
        return real_run(batch, *args, **kwargs)

    def spy_call(acts, *args):  # the compiled one-call path reads the same memory
        seen.append(acts.ctypes.data)
        return real_call(acts, *args)

    monkeypatch.setattr(_engine, "run", spy)
    monkeypatch.setattr(_fast, "ctc_call", spy_call)
    lp = logits.log_softmax(2).contiguous()
    fct.ctc_loss(lp, tg, il, tl)
    fct.ctc_loss(view, tg, il, tl)
    assert seen == [lp.data_ptr(), view.data_ptr()]


def test_from_logits_matches_log_softmax_path():
    logits, tg, il, tl = _case(17)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    la = fct.ctc_loss(a.log_softmax(2), tg, il, tl)
    lb = fct.ctc_loss(b, tg, il, tl, from_logits=True)
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)


def test_errors():
    logits, tg, il, tl = _case(19)
    lp = logits.log_softmax(2)
    with pytest.raises(ValueError, match="input_lengths"):
        fct.ctc_loss(lp, tg, il + 100, tl)
    with pytest.raises(ValueError, match="targets"):
        fct.ctc_loss(lp, tg + 100, il, tl)
    with pytest.raises(TypeError, match="log_probs"):
        fct.ctc_loss(lp.to(torch.int32), tg, il, tl)
    with pytest.raises(TypeError):
        fct.ctc_loss(lp, tg.float(), il, tl)
    with pytest.raises(ValueError, match="reduction"):
        fct.CTCLoss(reduction="avg")
    with pytest.raises(ValueError, match="blank"):
        fct.ctc_loss(lp, tg, il, tl, blank=lp.shape[2])


def test_cuda_tensor_without_gpu_path_is_a_clear_error(monkeypatch):
    import fastctc
    monkeypatch.setitem(sys.modules, "fastctc._cuda", None)  # import fails
    monkeypatch.delattr(fastctc, "_cuda", raising=False)     # even if it was imported before
    ok, reason = fct.gpu_status()
    assert not ok and "_cuda" in reason
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device to build a CUDA tensor on (the status path was checked above)")
    logits, tg, il, tl = _case(23)
    with pytest.raises(RuntimeError, match="GPU path is unavailable"):
        fct.ctc_loss(logits.cuda().log_softmax(2), tg, il, tl)


def test_random_forward_backward_awkward_inputs(rng):
    """Random problems with -inf entries, zero lengths, garbage past target lengths and
    every input form, through log_softmax, against torch with a weighted backward."""
    for _ in range(30):
        lp, tg, il, tl, blank = ref.random_problem(rng)
        T, N, C = lp.shape
        logits = torch.tensor(np.where(np.isfinite(lp), lp, -50.0) + rng.normal(size=lp.shape),
                              requires_grad=True)
        reduction = ["none", "sum", "mean"][int(rng.integers(3))]
        zero_infinity = bool(rng.random() < 0.5)
        targets = np.concatenate([tg[n, : tl[n]] for n in range(N)]) if rng.random() < 0.3 else tg
        args = (ref.random_form(rng, targets, "targets"), ref.random_form(rng, il, "lengths"),
                ref.random_form(rng, tl, "lengths"))
        t_args = tuple(torch.as_tensor(np.asarray(a)) if not isinstance(a, torch.Tensor) else a for a in args)
        if rng.random() < 0.5:
            logits_in = logits
        else:  # a batch-major tensor viewed as (T, N, C): read in place through strides
            logits_in = logits.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
        ours = fct.ctc_loss(logits_in.log_softmax(-1), *args, blank=blank, reduction=reduction,
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
def test_gradcheck_unbatched(rng, reduction):
    """(T, C) input with 1-D targets, a 0-d tensor and a tuple as lengths (the batched
    gradcheck is test_gradcheck_float64)."""
    u = torch.tensor(ref.log_softmax(rng.normal(size=(4, 3))), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: fct.ctc_loss(v, torch.tensor([2, 1]), torch.tensor(4), (2,),
                                                           blank=0, reduction=reduction), (u,))


def test_unbatched_forms_and_module():
    u = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    for il, tl in [(torch.tensor(6), torch.tensor(2)), (torch.tensor([6]), torch.tensor([2])), ((6,), (2,)),
                   ([6], [2])]:
        for reduction in ("none", "mean", "sum"):
            u.grad = None
            fct.CTCLoss(blank=3, reduction=reduction)(u.log_softmax(-1), torch.tensor([[1, 2, 0]]), il, tl).backward()
            g = u.grad.clone()
            u.grad = None
            want = torch.nn.CTCLoss(blank=3, reduction=reduction)(u.log_softmax(-1), torch.tensor([[1, 2, 0]]), il, tl)
            want.backward()
            torch.testing.assert_close(g, u.grad)
    m = fct.CTCLoss(blank=2, reduction="sum", zero_infinity=True)
    ref_m = torch.nn.CTCLoss(blank=2, reduction="sum", zero_infinity=True)
    assert isinstance(m, torch.nn.Module)
    assert (m.blank, m.reduction, m.zero_infinity) == (ref_m.blank, ref_m.reduction, ref_m.zero_infinity)
    assert "blank=2" in repr(m) and "sum" in repr(m)


def test_non_tensor_and_meta_inputs():
    """(The other bad inputs of the acceptance probes are test_errors' and the
    case-by-case table's.)"""
    tg, il, tl = torch.tensor([[1, 2], [1, 1]]), [4, 4], [2, 2]
    with pytest.raises(TypeError, match="log_probs"):
        fct.ctc_loss(np.zeros((4, 2, 3)), tg, il, tl)
    with pytest.raises(RuntimeError, match="meta"):  # neither CPU nor CUDA
        fct.ctc_loss(torch.empty(4, 2, 3, device="meta"), tg, il, tl)


# ----------------------------------------------------------------------
# Errors, case by case against torch 2.13

T, N, C, S = 6, 2, 4, 3


def _error_base():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(T, N, C, generator=g).log_softmax(2)
    tg = torch.randint(1, C, (N, S), generator=g)
    return lp, tg, torch.full((N,), T), torch.full((N,), S)


def _error_cases():
    lp, tg, il, tl = _error_base()
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


@pytest.mark.parametrize("name", sorted(_error_cases()))
@pytest.mark.parametrize("reduction", ["mean", "none", "sum"])
def test_same_outcome_as_torch(name, reduction):
    args, kwargs = _error_cases()[name]
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
    lp, tg, il, tl = _error_base()
    with pytest.raises(RuntimeError, match=r"input_lengths\[0\] = 7 is outside \[0, 6\]") as info:
        fct.ctc_loss(lp, tg, torch.tensor([T + 1, T]), tl)
    assert isinstance(info.value, ValueError) and isinstance(info.value, fastctc.CTCValueRuntimeError)
    with pytest.raises(RuntimeError, match="target_lengths must hold integers") as info:
        fct.ctc_loss(lp, tg, il, tl.float())
    assert isinstance(info.value, TypeError)


def test_documented_differences():
    lp, tg, il, tl = _error_base()
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


# ----------------------------------------------------------------------
# The registered operator: opcheck, torch.compile, export, half precision

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _op_case(T=10, N=3, C=6, S=4, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, C, generator=g, dtype=dtype)
    tg = torch.randint(1, C, (N, S), generator=g)
    il = torch.randint(T // 2 + 1, T + 1, (N,), generator=g)
    il[0] = T
    tl = torch.randint(1, S + 1, (N,), generator=g)
    return x.to(device), tg.to(device), il.to(device), tl.to(device)


class _Head(torch.nn.Module):
    """A model ending in fastctc.torch.CTCLoss (or torch's, for the reference)."""

    def __init__(self, loss):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(8, 6)
        self.loss = loss

    def forward(self, x, tg, il, tl):
        return self.loss(self.lin(x).log_softmax(-1), tg, il, tl)


def _inputs(T, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, N, 8, generator=g), torch.randint(1, 6, (N, 3), generator=g),
            torch.full((N,), T), torch.randint(1, 4, (N,), generator=g))


@pytest.mark.parametrize("want_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(want_grad, dtype):
    x, tg, il, tl = _op_case(dtype=dtype)
    lp = x.log_softmax(-1).requires_grad_(want_grad)
    torch.library.opcheck(torch.ops.fastctc.ctc_loss.default, (lp, tg, il, tl, 0, False, want_grad, 0))
    concat = torch.cat([tg[n, : int(tl[n])] for n in range(tg.shape[0])])
    torch.library.opcheck(torch.ops.fastctc.ctc_loss.default, (x.requires_grad_(want_grad), concat, il, tl, 0,
                                                               True, want_grad, 1))


def test_opcheck_unbatched_and_backward_op():
    x, tg, il, tl = _op_case(N=1)
    lp = x[:, 0].log_softmax(-1).requires_grad_(True)
    torch.library.opcheck(torch.ops.fastctc.ctc_loss.default, (lp, tg[0, : int(tl[0])], il[0], tl[0], 0, False,
                                                               True, 0))
    torch.library.opcheck(torch.ops.fastctc.ctc_loss_backward.default, (torch.randn(5, 3, 4), torch.randn(3)))


def test_compile_fullgraph_no_graph_break_dynamic_sizes():
    model = _Head(fct.CTCLoss())
    explain = torch._dynamo.explain(model)(*_inputs(10, 2))
    assert explain.graph_break_count == 0, explain.break_reasons
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for T, N in ((10, 2), (13, 3), (17, 5)):  # new batch and time sizes: no recompile failure
        args = _inputs(T, N, seed=T)
        model.zero_grad()
        want = model(*args)
        want.backward()
        want_grad = model.lin.weight.grad.clone()
        model.zero_grad()
        got = compiled(*args)
        got.backward()
        torch.testing.assert_close(got.detach(), want.detach())
        torch.testing.assert_close(model.lin.weight.grad, want_grad)
        # and the same as torch's own CTC
        ref = _Head(torch.nn.CTCLoss())
        torch.testing.assert_close(ref(*args).detach(), want.detach())


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_compiled_function_matches_eager_every_reduction(reduction):
    x, tg, il, tl = _op_case(seed=3)

    def step(x):
        return fct.ctc_loss(x.log_softmax(-1), tg, il, tl, reduction=reduction, zero_infinity=True)

    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    la, lb = step(a), torch.compile(step, fullgraph=True)(b)
    torch.testing.assert_close(lb, la)
    la.sum().backward()
    lb.sum().backward()
    torch.testing.assert_close(b.grad, a.grad)


def test_compile_from_logits_and_list_lengths():
    x, tg, il, tl = _op_case(seed=4)
    il_list, tl_list = il.tolist(), tl.tolist()

    def step(x):
        return fct.ctc_loss(x, tg, il_list, tl_list, from_logits=True)

    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    step(a).backward()
    torch.compile(step, fullgraph=True)(b).backward()
    torch.testing.assert_close(b.grad, a.grad)


def test_export():
    model = _Head(fct.CTCLoss(reduction="sum"))
    args = _inputs(10, 2)
    program = torch.export.export(model, args)
    assert "fastctc.ctc_loss" in str(program.graph)
    torch.testing.assert_close(program.module()(*args), model(*args).detach())
    T = torch.export.Dim("T", min=2, max=100)
    N = torch.export.Dim("N", min=1, max=64)
    dynamic = torch.export.export(model, args, dynamic_shapes=({0: T, 1: N}, {0: N}, {0: N}, {0: N}))
    other = _inputs(20, 5, seed=1)
    torch.testing.assert_close(dynamic.module()(*other), model(*other).detach())


@pytest.mark.parametrize("from_logits", [False, True])
def test_gradcheck_through_the_op(from_logits):
    x, tg, il, tl = _op_case(T=6, N=2, C=4, S=2, dtype=torch.float64)
    x.requires_grad_(True)

    def f(x):
        costs, _ = torch.ops.fastctc.ctc_loss(x, tg, il, tl, 0, from_logits, True, 0)
        return costs

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)
    # the compiled path too (the wrapper's op route)
    g = torch.compile(lambda x: fct.ctc_loss(x, tg, il, tl, reduction="none", from_logits=from_logits),
                      fullgraph=True)
    assert torch.autograd.gradcheck(g, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("route", ["eager", "op"])
def test_second_derivative_raises(route):
    x, tg, il, tl = _op_case(dtype=torch.float64)
    x.requires_grad_(True)
    if route == "eager":
        loss = fct.ctc_loss(x.log_softmax(-1), tg, il, tl)
    else:
        costs, _ = torch.ops.fastctc.ctc_loss(x.log_softmax(-1), tg, il, tl, 0, False, True, 0)
        loss = costs.sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(g.sum(), x)
    # PyTorch raises a RuntimeError at the same point
    ref = F.ctc_loss(x.log_softmax(-1), tg, il, tl)
    (gr,) = torch.autograd.grad(ref, x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gr.sum(), x)


def test_first_derivative_with_create_graph_is_still_right():
    x, tg, il, tl = _op_case(dtype=torch.float64)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(fct.ctc_loss(a.log_softmax(-1), tg, il, tl), a, create_graph=True)
    (gb,) = torch.autograd.grad(F.ctc_loss(b.log_softmax(-1), tg, il, tl), b)
    torch.testing.assert_close(ga.detach(), gb)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("from_logits", [False, True])
def test_half_precision_inputs(dtype, from_logits):
    x, tg, il, tl = _op_case(seed=5)
    acts = x if from_logits else x.log_softmax(-1)
    half = acts.to(dtype).requires_grad_(True)
    wide = half.detach().float().requires_grad_(True)  # the same values, rounded once
    lh = fct.ctc_loss(half, tg, il, tl, reduction="sum", from_logits=from_logits)
    lw = fct.ctc_loss(wide, tg, il, tl, reduction="sum", from_logits=from_logits)
    assert lh.dtype == torch.float32
    torch.testing.assert_close(lh, lw)
    lh.backward()
    lw.backward()
    assert half.grad.dtype == dtype
    torch.testing.assert_close(half.grad, wide.grad.to(dtype))


def test_autocast_bfloat16_matches_float32():
    model = _Head(fct.CTCLoss())
    args = _inputs(12, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin_out = model.lin(args[0])
        assert lin_out.dtype == torch.bfloat16
        loss = fct.ctc_loss(lin_out.log_softmax(-1), *args[1:])
        op_loss = torch.compile(lambda z: fct.ctc_loss(z, *args[1:], from_logits=True), fullgraph=True)(lin_out)
    ref = fct.ctc_loss(lin_out.detach().float().log_softmax(-1), *args[1:])  # float32 from the bf16 values
    torch.testing.assert_close(loss.float(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(op_loss.float(), ref, rtol=1e-2, atol=1e-2)
    loss.backward()
    assert model.lin.weight.grad is not None and torch.isfinite(model.lin.weight.grad).all()
    full = _Head(fct.CTCLoss())(*args)  # float32 throughout
    torch.testing.assert_close(loss.float(), full.detach(), rtol=3e-2, atol=3e-2)


@needs_cuda
def test_cuda_op_matches_cpu():
    x, tg, il, tl = _op_case(seed=6)
    cpu = x.clone().requires_grad_(True)
    dev = x.cuda().requires_grad_(True)
    lc = fct.ctc_loss(cpu.log_softmax(-1), tg, il, tl)
    ld = torch.compile(lambda z: fct.ctc_loss(z.log_softmax(-1), tg.cuda(), il.cuda(), tl.cuda()),
                       fullgraph=True)(dev)
    torch.testing.assert_close(ld.cpu(), lc.detach(), rtol=1e-4, atol=1e-5)
    lc.backward()
    ld.backward()
    torch.testing.assert_close(dev.grad.cpu(), cpu.grad, rtol=1e-4, atol=1e-5)
    torch.library.opcheck(torch.ops.fastctc.ctc_loss.default,
                          (x.cuda().log_softmax(-1), tg.cuda(), il.cuda(), tl.cuda(), 0, False, False, 0))
