"""fastctc.torch against PyTorch's own CTC (torch.nn.functional.ctc_loss): forward values in
every input form and reduction, gradients after log_softmax, gradcheck in float64,
zero-copy reading of CPU tensors, the CUDA dispatch contract (with a stand-in module)
and the error for CUDA tensors when no GPU path exists."""
import sys
import types

import pytest

torch = pytest.importorskip("torch")
import fastctc  # noqa: E402
import fastctc.torch as fct  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from fastctc import _engine, _fast  # noqa: E402


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


def test_device_dispatch_contract(monkeypatch):
    """The device branch with a stand-in fastctc._cuda (computing on the CPU engine): the
    arguments it is given and what is made of its results (reduction, backward)."""
    calls = []

    def run_device(acts, targets_padded, input_lengths, target_lengths, *, blank, from_logits, want_grad,
                   grad_weights, want_alpha):
        calls.append(dict(S=targets_padded.shape, blank=blank, want_grad=want_grad))
        costs, grad = [], []
        for n in range(acts.shape[1]):
            L = int(target_lengths[n])
            c, g = _engine.ctc_loss_and_grad(acts[:, n : n + 1].numpy(), targets_padded[n : n + 1, :L].numpy(),
                                             input_lengths[n : n + 1].numpy(), [L], blank=blank,
                                             reduction="sum", from_logits=from_logits)
            costs.append(float(c))
            grad.append(torch.from_numpy(g))
        return torch.tensor(costs, dtype=acts.dtype), torch.cat(grad, 1) if want_grad else None, None

    fake = types.SimpleNamespace(status=lambda: {"available": True}, run_device=run_device)
    monkeypatch.setitem(sys.modules, "fastctc._cuda", fake)
    monkeypatch.setattr(fastctc, "_cuda", fake, raising=False)
    logits, tg, il, tl = _case(29)
    want = logits.clone().requires_grad_(True)
    F.ctc_loss(want.log_softmax(2), tg, il, tl).backward()
    got = logits.clone().requires_grad_(True)
    lp = got.log_softmax(2)
    batch, blank = fct._validate(lp, _concat(tg, tl), il, tl, 0, False)
    costs, grad = fct._run_device(lp, batch, blank, False, True)
    assert calls[-1] == dict(S=(4, int(tl.max())), blank=0, want_grad=True)
    torch.testing.assert_close(costs, F.ctc_loss(lp, tg, il, tl, reduction="none"))
    assert grad.shape == lp.shape
