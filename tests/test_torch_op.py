"""fastctc.torch as a real torch operator: torch.ops.fastctc.ctc_loss under torch.library.opcheck,
torch.compile(fullgraph=True) with no graph break (forward and backward, dynamic batch and
time sizes, the same numbers as eager), torch.export, gradcheck through the op, second
derivatives that raise instead of being silently wrong, float16/bfloat16 inputs and autocast.
The CUDA cases skip, saying so, on machines without a GPU."""
import pytest

torch = pytest.importorskip("torch")
import fastctc.torch as fct  # noqa: E402
import torch.nn.functional as F  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _case(T=10, N=3, C=6, S=4, seed=0, dtype=torch.float32, device="cpu"):
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
    x, tg, il, tl = _case(dtype=dtype)
    lp = x.log_softmax(-1).requires_grad_(want_grad)
    torch.library.opcheck(torch.ops.fastctc.ctc_loss.default, (lp, tg, il, tl, 0, False, want_grad, 0))
    concat = torch.cat([tg[n, : int(tl[n])] for n in range(tg.shape[0])])
    torch.library.opcheck(torch.ops.fastctc.ctc_loss.default, (x.requires_grad_(want_grad), concat, il, tl, 0,
                                                               True, want_grad, 1))


def test_opcheck_unbatched_and_backward_op():
    x, tg, il, tl = _case(N=1)
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
    x, tg, il, tl = _case(seed=3)

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
    x, tg, il, tl = _case(seed=4)
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
    x, tg, il, tl = _case(T=6, N=2, C=4, S=2, dtype=torch.float64)
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
    x, tg, il, tl = _case(dtype=torch.float64)
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
    x, tg, il, tl = _case(dtype=torch.float64)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(fct.ctc_loss(a.log_softmax(-1), tg, il, tl), a, create_graph=True)
    (gb,) = torch.autograd.grad(F.ctc_loss(b.log_softmax(-1), tg, il, tl), b)
    torch.testing.assert_close(ga.detach(), gb)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("from_logits", [False, True])
def test_half_precision_inputs(dtype, from_logits):
    x, tg, il, tl = _case(seed=5)
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
    x, tg, il, tl = _case(seed=6)
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
