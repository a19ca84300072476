"""fastctc.torch's CUDA route (torch.py's _cuda_* functions and _CudaCTCFunction), checked
without a GPU: CPU tensors of a subclass whose host reads raise (.cpu(), .item(), .numpy(),
.tolist(), bool/int/float, np.asarray) stand in for CUDA tensors.

* contract (a stand-in fastctc._cuda_launch computing with the CPU engine): the route hands
  torch_forward / torch_backward device tensors only, uploads the host-held targets and
  lengths in one copy (none when they live on the device, none in the backward), never
  reads a device value on the host, gives the backward the forward's workspace and the
  upstream gradient as a device tensor with 'mean' left to the kernel; its losses and
  gradients equal the CPU route's in every input form, reduction, zero_infinity, dtype
  (float16 / bfloat16 gradients in the input dtype) and for unbatched input; the registered
  op's CUDA kernel; the errors.
* emulated: the same comparisons through the real fastctc._cuda_launch and cuda/ctc.cu's
  kernels run on the host (tests/gpu_emu.py), and bad device values giving NaN losses.
The device-only checks (sync-debug mode, CUDA graphs, torch.compile) are in tests/test_cuda.py.
"""
import contextlib
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastctc  # noqa: E402
import fastctc.torch as fct  # noqa: E402
from fastctc import _cuda_launch as L  # noqa: E402

_HOST_READS = {torch.Tensor.cpu, torch.Tensor.item, torch.Tensor.numpy, torch.Tensor.tolist, torch.Tensor.__bool__,
               torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.__array__,
               torch.Tensor.is_nonzero, torch.Tensor.nonzero, torch.nonzero}


class Dev(torch.Tensor):
    """A CPU tensor standing in for a CUDA one: reading its values on the host raises (a
    .to('cpu') of it is a stand-in again, whose values cannot be read either)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            raise AssertionError(f"host read of a device tensor: {getattr(func, '__name__', func)}")
        return super().__torch_function__(func, types, args, kwargs)


def dev(t):
    return torch.as_tensor(t).detach().clone().as_subclass(Dev)


def host(t):
    """The values of a tensor (a stand-in included), as the test sees them."""
    with torch._C.DisableTorchFunctionSubclass():
        t = t.detach()
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()  # NumPy has no bfloat16


def _case(seed, T=12, N=4, C=6, S=5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, C, generator=g, dtype=torch.float64) * 2
    il = torch.randint(T // 2, T + 1, (N,), generator=g)
    il[0] = T
    tl = torch.randint(0, S + 1, (N,), generator=g)
    tl[-1] = S
    tg = torch.randint(1, C, (N, S), generator=g)
    tg[0, :2] = tg[0, 0]
    if N > 1:
        il[1], tl[1], tg[1, :3] = 3, 3, 2  # infeasible: 3 repeated labels need 5 frames
    return x.to(dtype), tg, il, tl


def _concat(tg, tl):
    return torch.cat([tg[n, : int(tl[n])] for n in range(tg.shape[0])])


# forms: (targets, input_lengths, target_lengths) as the caller passes them; "d" = on the
# device, "h" = a CPU tensor, "l" = a list
FORMS = {
    "device padded": ("padded", "ddd"), "device concat": ("concat", "ddd"), "host tensors": ("padded", "hhh"),
    "lists": ("concat", "lll"), "device targets, host lengths": ("padded", "dhh"),
    "host targets, device lengths": ("padded", "hdd"), "device concat, host lengths": ("concat", "dhl"),
    "host concat, device lengths": ("concat", "hdd"), "device input lengths only": ("padded", "hdh"),
}


def _operands(tg, il, tl, form):
    layout, where = FORMS[form]
    targets = tg if layout == "padded" else _concat(tg, tl)
    out = []
    for t, w in zip((targets, il, tl), where):
        out.append(dev(t) if w == "d" else t.tolist() if w == "l" else t.clone())
    return out


class FakeCall:
    """The stand-in launcher's call: the CPU engine's unit gradient, and the arrays a real
    call reads (arrays() / release() as fastctc._cuda_launch._Call)."""

    def __init__(self, grad, want_grad, operands, tl_values):
        self.grad, self.want_grad, self.tl_values = grad, want_grad, tl_values
        self.N, self.dtype = operands[0].shape[1], operands[0].dtype
        self._arrays = (*operands, dev(torch.zeros(16 if want_grad else 1, dtype=torch.uint8)))
        self.released = False

    def arrays(self):
        return self._arrays

    def release(self):
        self._arrays, self.released = None, True


class FakeLauncher:
    """fastctc._cuda_launch's forward_call / backward_call (torch_forward / torch_backward
    keeping the call) contract on the CPU engine, recording what it is given and checking
    that it is given device tensors."""

    def __init__(self):
        self.calls, self.work = [], {}

    @staticmethod
    def compiled_route():
        return None  # the Python route: the one this stand-in records

    @staticmethod
    def _values(acts, tg, il, tl, blank, from_logits):
        a = host(acts)
        a = a.astype(np.float64 if a.dtype == np.float64 else np.float32)
        batch, b = fastctc._validate.check_ctc_inputs(a, host(tg), host(il), host(tl), blank)
        costs, grad, _ = fastctc._engine.run(batch, b, from_logits, want_grad=True)
        return costs, grad

    def forward_call(self, acts, tg, il, tl, *, blank, from_logits, want_grad, max_target_length):
        for name, t in (("acts", acts), ("targets", tg), ("input_lengths", il), ("target_lengths", tl)):
            assert isinstance(t, Dev), f"{name} reached the launcher as {type(t).__name__}, not a device tensor"
        assert acts.dim() == 3 and il.shape == tl.shape == (acts.shape[1],)
        self.calls.append(("forward", dict(want_grad=want_grad, max_target_length=max_target_length,
                                           concat=tg.dim() == 1)))
        costs, grad = self._values(acts, tg, il, tl, blank, from_logits)
        if max_target_length is not None:  # the bound the route passes must hold every target
            assert max_target_length >= host(tl).max(initial=0)
        call = FakeCall(grad, want_grad, (acts, tg, il, tl), host(tl))
        self.work[id(call)] = call
        return dev(torch.from_numpy(costs)), call

    def backward_call(self, call, weights, *, mean):
        assert self.work.get(id(call)) is call, "backward_call must get a call of this launcher's forward_call"
        assert call.want_grad, "backward_call was given a loss-only forward"
        grad, N, tl = call.grad, call.N, call.tl_values
        if weights is None:
            w = np.ones(N)
        else:
            assert isinstance(weights, torch.Tensor) and weights.shape in ((N,), (), (1,))
            assert weights.dtype in (torch.float32, torch.float64)
            w = np.broadcast_to(host(weights).astype(np.float64).reshape(-1), (N,))
        self.calls.append(("backward", dict(mean=mean, weights=None if weights is None else tuple(weights.shape))))
        if mean:
            w = w / (np.maximum(tl, 1) * N)
        out = torch.from_numpy(grad.astype(np.float64) * w[None, :, None]).to(call.dtype)
        return dev(out)


@pytest.fixture
def route(monkeypatch):
    """The CUDA route with the stand-in launcher; returns (launcher, uploads)."""
    fake, uploads = FakeLauncher(), []

    def upload(arr, device):
        assert arr.dtype == np.int64 and arr.ndim == 1
        uploads.append(arr.copy())
        return dev(torch.from_numpy(arr.copy()))

    monkeypatch.setattr(fct, "_launcher", lambda: fake)
    monkeypatch.setattr(fct, "_on_device", lambda x: isinstance(x, Dev))
    monkeypatch.setattr(fct, "_upload", upload)
    return fake, uploads


def _cpu_reference(lp, targets, il, tl, reduction, zero_infinity, from_logits, upstream):
    x = lp.detach().clone().requires_grad_(True)
    ints = [t if isinstance(t, list) else torch.from_numpy(host(t)) for t in (targets, il, tl)]
    loss = fct.ctc_loss(x, *ints, reduction=reduction, zero_infinity=zero_infinity, from_logits=from_logits)
    loss.backward(upstream)
    return loss.detach(), x.grad


def _upstream(loss_shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(loss_shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_route_matches_cpu_route(route, form, reduction):
    fake, uploads = route
    x, tg, il, tl = _case(1)
    lp = x.log_softmax(-1)
    for zero_infinity in (False, True):
        fake.calls.clear()
        uploads.clear()
        ops = _operands(tg, il, tl, form)
        xd = dev(lp).requires_grad_(True)
        loss = fct._cuda_ctc_loss(xd, *ops, 0, reduction, zero_infinity, False)
        assert isinstance(loss, Dev) and loss.dtype == torch.float64
        # the call kept for the backward holds no arrays: autograd's saved tensors do
        assert [c.released for c in fake.work.values()][-1:] == [True]
        w = _upstream(loss.shape, loss.dtype)
        loss.backward(dev(w))
        want_loss, want_grad = _cpu_reference(lp, *ops, reduction, zero_infinity, False, w)
        np.testing.assert_allclose(host(loss), want_loss.numpy(), rtol=1e-12)
        np.testing.assert_allclose(host(xd.grad), want_grad.numpy(), rtol=1e-10, atol=1e-13)
        assert np.isposinf(host(loss)).any() == (not zero_infinity)  # sequence 1 cannot fit
        kinds = [c[0] for c in fake.calls]
        assert kinds == ["forward", "backward"], kinds
        fwd, bwd = fake.calls[0][1], fake.calls[1][1]
        # the upstream gradient and 'mean' go to the kernel: no host-side scaling pass
        assert bwd == dict(mean=reduction == "mean", weights=tuple(loss.shape))
        where = FORMS[form][1]
        assert len(uploads) == (0 if where == "ddd" else 1)  # one copy, in the forward only
        if where[2] != "d":   # host target lengths: the exact longest target bounds the workspace
            assert fwd["max_target_length"] == int(tl.max())
        elif FORMS[form][0] == "concat":  # device lengths: the launcher bounds it without a sync
            assert fwd["max_target_length"] is None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("from_logits", [False, True])
def test_route_dtypes(route, dtype, from_logits):
    x, tg, il, tl = _case(2)
    inp = (x if from_logits else x.log_softmax(-1)).to(dtype)
    ops = _operands(tg, il, tl, "device padded")
    xd = dev(inp).requires_grad_(True)
    loss = fct._cuda_ctc_loss(xd, *ops, 0, "mean", True, from_logits)
    loss.backward(dev(torch.ones((), dtype=loss.dtype)))
    assert loss.dtype == (torch.float32 if dtype != torch.float64 else dtype)
    assert xd.grad.dtype == dtype  # the gradient comes back in the input's dtype
    want_loss, want_grad = _cpu_reference(inp, *ops, "mean", True, from_logits, None)
    assert want_grad.dtype == dtype
    np.testing.assert_allclose(host(loss), want_loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(host(xd.grad).astype(np.float64), want_grad.double().numpy(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("where", ["device", "host"])
def test_route_unbatched(route, reduction, where):
    fake, uploads = route
    x, tg, il, tl = _case(3, N=1)
    tl[0] = 3
    lp = x[:, 0].log_softmax(-1)
    ops = [tg[0, :3], il[0], tl[0]]  # PyTorch's unbatched form: 1-D targets, scalar lengths
    if where == "device":
        ops = [dev(t) for t in ops]
    xd = dev(lp).requires_grad_(True)
    loss = fct._cuda_ctc_loss(xd, *ops, 0, reduction, False, False)
    assert loss.shape == ()
    loss.backward(dev(torch.tensor(1.5, dtype=torch.float64)))
    assert xd.grad.shape == lp.shape
    want_loss, want_grad = _cpu_reference(lp, *[t if where == "host" else torch.from_numpy(host(t)) for t in ops],
                                          reduction, False, False, torch.tensor(1.5, dtype=torch.float64))
    np.testing.assert_allclose(host(loss), want_loss.numpy(), rtol=1e-12)
    np.testing.assert_allclose(host(xd.grad), want_grad.numpy(), rtol=1e-10, atol=1e-13)


def test_route_without_grad_asks_for_no_gradient(route):
    fake, _ = route
    x, tg, il, tl = _case(4)
    ops = _operands(tg, il, tl, "device padded")
    loss = fct._cuda_ctc_loss(dev(x.log_softmax(-1)).requires_grad_(True).detach(), *ops, 0, "sum", False, False)
    with torch.no_grad():
        fct._cuda_ctc_loss(dev(x.log_softmax(-1)).requires_grad_(True), *ops, 0, "sum", False, False)
    assert [c[0] for c in fake.calls] == ["forward", "forward"]
    assert not any(c[1]["want_grad"] for c in fake.calls)
    assert isinstance(loss, Dev) and loss.grad_fn is None


def test_route_second_derivative_raises(route):
    x, tg, il, tl = _case(5)
    ops = _operands(tg, il, tl, "device padded")
    xd = dev(x.log_softmax(-1)).requires_grad_(True)
    loss = fct._cuda_ctc_loss(xd, *ops, 0, "sum", False, False)
    (g,) = torch.autograd.grad(loss, xd, dev(torch.ones((), dtype=torch.float64)), create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative"):
        g.sum().backward()


def test_route_workspace_kept_for_retain_graph(route):
    fake, _ = route
    x, tg, il, tl = _case(6)
    xd = dev(x.log_softmax(-1)).requires_grad_(True)
    loss = fct._cuda_ctc_loss(xd, *_operands(tg, il, tl, "device concat"), 0, "mean", False, False)
    one = dev(torch.ones((), dtype=torch.float64))
    loss.backward(one, retain_graph=True)
    first = host(xd.grad)
    loss.backward(one)
    np.testing.assert_allclose(host(xd.grad), 2 * first, rtol=1e-14)
    assert [c[0] for c in fake.calls] == ["forward", "backward", "backward"]


@pytest.mark.parametrize("want_grad", [False, True])
def test_op_cuda_kernel_matches_cpu_op(route, want_grad):
    fake, uploads = route
    x, tg, il, tl = _case(7, dtype=torch.float32)
    lp = x.log_softmax(-1)
    for form in ("device padded", "host tensors"):
        ops = _operands(tg, il, tl, form)
        costs, grad = fct._cuda_op(dev(lp), *[t if isinstance(t, torch.Tensor) else torch.tensor(t) for t in ops],
                                   0, False, want_grad)
        want_c, want_g = torch.ops.fastctc.ctc_loss(lp, tg, il, tl, 0, False, want_grad, 0)
        np.testing.assert_allclose(host(costs), want_c.numpy(), rtol=1e-6)
        assert host(grad).shape == tuple(want_g.shape)
        np.testing.assert_allclose(host(grad), want_g.numpy(), rtol=1e-5, atol=1e-7)
    if want_grad:  # the gradient of the sum: unit weights, no 'mean' in the kernel
        assert [c[1] for c in fake.calls if c[0] == "backward"] == [dict(mean=False, weights=None)] * 2


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_forward_contract_on_cuda(route, reduction):
    """_forward's (loss, weighted gradient rows) contract, for a CUDA tensor reaching it."""
    x, tg, il, tl = _case(8)
    lp = x.log_softmax(-1)
    ops = _operands(tg, il, tl, "device padded")
    args = (*ops, 0, reduction, True, False, None)
    loss, grad = fct._forward_general(dev(lp), args, True)
    want_loss, want_grad = fct._forward(lp, (tg, il, tl, 0, reduction, True, False, None), True)
    np.testing.assert_allclose(host(loss), want_loss.numpy(), rtol=1e-12)
    np.testing.assert_allclose(host(grad), want_grad.numpy(), rtol=1e-10, atol=1e-13)


def test_route_errors(route):
    fake, uploads = route
    x, tg, il, tl = _case(9)
    lp = dev(x.log_softmax(-1))
    bad_tg, long_tl = tg.clone(), tl.clone()
    bad_tg[0, 0], long_tl[0] = 7, max(int(tl[0]), 1)
    cases = [
        ((tg, torch.tensor([12, 99, 6, 6]), tl), fastctc.CTCValueRuntimeError, r"input_lengths\[1\] = 99"),
        ((bad_tg, dev(il), long_tl), fastctc.CTCValueRuntimeError, r"targets\[0, 0\] = 7"),
        ((dev(tg), il, torch.tensor([0, 0, 9, 5])), fastctc.CTCValueRuntimeError, r"target_lengths\[2\] = 9"),
        ((dev(tg.short()), il, tl), fastctc.CTCTypeRuntimeError, "targets on the device must have dtype"),
        ((tg, dev(il.float()), tl), fastctc.CTCTypeRuntimeError, "input_lengths on the device"),
        ((dev(tg[:3]), il, tl), fastctc.CTCValueRuntimeError, "targets must have shape"),
        ((tg, dev(il[:3]), tl), fastctc.CTCValueRuntimeError, "input_lengths must have shape"),
        ((dev(_concat(tg, tl))[:-1], dev(il), tl), fastctc.CTCValueRuntimeError, "sum\\(target_lengths\\)"),
    ]
    for ops, exc, match in cases:
        with pytest.raises(exc, match=match):
            fct._cuda_ctc_loss(lp, *ops, 0, "mean", False, False)
        with pytest.raises(RuntimeError):  # the torch door's errors are RuntimeErrors too
            fct._cuda_ctc_loss(lp, *ops, 0, "mean", False, False)
    all_device = [  # nothing on the host: the shape checks alone, same messages
        ((dev(tg[:3]), dev(il), dev(tl)), "targets must have shape \\(N, S\\) with batch size N = 4"),
        ((dev(tg[0, 0]), dev(il), dev(tl)), "targets must have rank 2"),
        ((dev(tg), dev(il[:3]), dev(tl)), "input_lengths must have shape \\(N,\\) = \\(4,\\)"),
        ((dev(tg), dev(il), dev(tl[:1])), "target_lengths must have shape"),
    ]
    for ops, match in all_device:
        with pytest.raises(fastctc.CTCValueRuntimeError, match=match):
            fct._cuda_ctc_loss(lp, *ops, 0, "mean", False, False)
        with pytest.raises(fastctc.CTCValueRuntimeError, match=match):  # the CPU route's words
            fct.ctc_loss(x, *[torch.from_numpy(host(t)) for t in ops])
    with pytest.raises(fastctc.CTCValueRuntimeError, match="unbatched"):
        fct._cuda_ctc_loss(dev(x[:, 0]), dev(tg[0]), dev(il), dev(tl[:1]), 0, "mean", False, False)
    for ints in ((tg, il, tl), (dev(tg), dev(il), dev(tl))):
        with pytest.raises(fastctc.CTCValueRuntimeError, match="blank"):
            fct._cuda_ctc_loss(lp, *ints, 6, "mean", False, False)
    with pytest.raises(fastctc.CTCValueRuntimeError, match="rank 2 or 3"):
        fct._cuda_ctc_loss(dev(x[0, 0]), tg, il, tl, 0, "mean", False, False)
    assert not fake.calls and not uploads  # every error before any upload or launch


def test_launcher_is_asked_for_status_once(monkeypatch):
    """The GPU status (driver queries) is asked once per process, not per call, and the
    unavailable path is a RuntimeError saying why."""
    import sys
    asked = []
    fake_cuda = types.SimpleNamespace(status=lambda: asked.append(1) or {"available": True, "reason": "ok"})
    monkeypatch.setitem(sys.modules, "fastctc._cuda", fake_cuda)
    monkeypatch.setattr(fastctc, "_cuda", fake_cuda, raising=False)
    monkeypatch.setattr(fct, "_GPU_CHECKED", [None])
    assert fct._launcher() is L and fct._launcher() is L
    assert len(asked) == 1
    down = types.SimpleNamespace(status=lambda: {"available": False, "reason": "no CUDA device (stand-in)"})
    monkeypatch.setitem(sys.modules, "fastctc._cuda", down)
    monkeypatch.setattr(fastctc, "_cuda", down, raising=False)
    with pytest.raises(RuntimeError, match="unavailable: no CUDA device \\(stand-in\\)"):
        fct._launcher()


# ---------------------------------------------------------------- through the emulated kernels

@pytest.fixture
def emulated(monkeypatch, emu):
    """The CUDA route on the real fastctc._cuda_launch, its launches run by the emulated
    kernels and its arrays stand-in device tensors."""
    import gpu_emu
    lib = emu

    class CpuTorch(L._Torch):
        def __init__(self):
            self.torch, self.device, self.ordinal, self.stream = torch, torch.device("cpu"), 0, 0

        def empty(self, shape, name):
            return torch.empty(shape, dtype=getattr(torch, name)).as_subclass(Dev)

        def from_host(self, arr):
            raise AssertionError("the torch route uploads host values itself, once")

    def launch(self, name, grid, block, shm, args):
        spec = gpu_emu.kernel_spec(name)
        gpu_emu.launch(lib, name, grid, block, shm, [a.item() if hasattr(a, "item") else a for a in args], spec)

    monkeypatch.setattr(L, "_backend_for", lambda acts: (CpuTorch(), acts, lambda r: r))
    monkeypatch.setattr(L, "is_cuda_array", lambda x: isinstance(x, torch.Tensor))
    monkeypatch.setattr(L._Call, "_launch", launch)
    monkeypatch.setattr(L, "LAUNCH_MODE", "python")  # _Call._launch is the Python launch
    monkeypatch.setattr(L, "_DeviceGuard", lambda ordinal: contextlib.nullcontext())
    monkeypatch.setattr(fct, "_launcher", lambda: L)
    monkeypatch.setattr(fct, "_on_device", lambda x: isinstance(x, Dev))
    monkeypatch.setattr(fct, "_upload", lambda arr, device: dev(torch.from_numpy(arr.copy())))


@pytest.mark.parametrize("form", ["device padded", "host concat, device lengths", "lists"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_emulated_route_matches_cpu_route(emulated, form, reduction):
    x, tg, il, tl = _case(11, T=10, N=3, C=5, S=3)
    for from_logits, zero_infinity in ((False, True), (True, False)):
        inp = x if from_logits else x.log_softmax(-1)
        ops = _operands(tg, il, tl, form)
        xd = dev(inp).requires_grad_(True)
        loss = fct._cuda_ctc_loss(xd, *ops, 0, reduction, zero_infinity, from_logits)
        w = _upstream(loss.shape, loss.dtype, seed=1)
        loss.backward(dev(w))
        want_loss, want_grad = _cpu_reference(inp, *ops, reduction, zero_infinity, from_logits, w)
        np.testing.assert_allclose(host(loss), want_loss.numpy(), rtol=1e-10)
        np.testing.assert_allclose(host(xd.grad), want_grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_half_autograd(emulated, dtype):
    x, tg, il, tl = _case(12, T=10, N=3, C=5, S=3)
    inp = x.to(dtype)
    ops = _operands(tg, il, tl, "device padded")
    xd = dev(inp).requires_grad_(True)
    loss = fct._cuda_ctc_loss(xd, *ops, 0, "mean", True, True)
    loss.backward(dev(torch.ones((), dtype=torch.float32)))
    assert loss.dtype == torch.float32 and xd.grad.dtype == dtype
    # against the float32 route on the same (rounded) values: same math, gradient rounded once
    xf = dev(inp.float()).requires_grad_(True)
    lf = fct._cuda_ctc_loss(xf, *ops, 0, "mean", True, True)
    lf.backward(dev(torch.ones((), dtype=torch.float32)))
    assert host(loss) == host(lf)
    assert np.array_equal(host(xd.grad.view(torch.int16)), host(xf.grad.to(dtype).view(torch.int16)))


def test_emulated_bad_device_values_make_nan_not_an_error(emulated):
    x, tg, il, tl = _case(13, T=10, N=3, C=5, S=3)
    tg2, il2 = tg.clone(), il.clone()
    tl2 = tl.clone()
    tg2[0, 0], tl2[0] = 9, max(int(tl[0]), 1)  # label >= C, inside the target
    il2[2] = 11                                # input length > T
    xd = dev(x.log_softmax(-1)).requires_grad_(True)
    loss = fct._cuda_ctc_loss(xd, dev(tg2), dev(il2), dev(tl2), 0, "none", True, False)
    c = host(loss)
    assert np.isnan(c[0]) and np.isnan(c[2]) and not np.isnan(c[1])  # NaN stays NaN with zero_infinity
    loss.backward(dev(torch.ones(3, dtype=torch.float64)))
    g = host(xd.grad)
    assert np.isfinite(g[:, 1]).all()


def test_emulated_op_matches_cpu_op(emulated):
    x, tg, il, tl = _case(14, T=10, N=3, C=5, S=3)
    lp = x.log_softmax(-1)
    costs, grad = fct._cuda_op(dev(lp), dev(tg), il, dev(tl), 0, False, True)
    want_c, want_g = torch.ops.fastctc.ctc_loss(lp, tg, il, tl, 0, False, True, 0)
    np.testing.assert_allclose(host(costs), want_c.numpy(), rtol=1e-10)
    np.testing.assert_allclose(host(grad), want_g.numpy(), rtol=1e-9, atol=1e-12)


def test_emulated_forward_call_and_backward_call_are_torch_forward_and_backward(emulated):
    """The launcher's forward_call / backward_call (the call kept from forward to backward)
    give torch_forward / torch_backward's bits; a loss-only call has no gradient to give."""
    x, tg, il, tl = _case(15, T=10, N=3, C=5, S=3)
    acts, ints = dev(x), [dev(t) for t in (tg, il, tl)]
    w = dev(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    costs, ws = L.torch_forward(acts, *ints, from_logits=True)
    grad = L.torch_backward(acts, *ints, ws, w, from_logits=True, mean=True)
    costs2, call = L.forward_call(acts, *ints, from_logits=True)
    grad2 = L.backward_call(call, w, mean=True)
    assert torch.equal(costs, costs2) and torch.equal(grad, grad2)
    assert torch.equal(L.backward_call(call, w, mean=True), grad)  # a second backward (retain_graph)
    _, loss_only = L.forward_call(acts, *ints, from_logits=True, want_grad=False)
    with pytest.raises(fastctc.CTCValueError, match="want_grad=True"):
        L.backward_call(loss_only, w)


def test_emulated_graph_kept_alive_does_not_hold_the_workspace(emulated, monkeypatch):
    """A loss tensor kept after its backward (a graph alive) does not keep the workspace or
    the activations the kernels read: they are saved tensors, freed by the backward."""
    import gc
    import weakref
    refs = []
    real = L.forward_call

    def spy(*args, **kwargs):
        costs, call = real(*args, **kwargs)
        refs.append(weakref.ref(call.ws))
        return costs, call

    monkeypatch.setattr(L, "forward_call", spy)
    x, tg, il, tl = _case(16, T=10, N=3, C=5, S=3)
    xd = dev(x).requires_grad_(True)
    kept = fct._cuda_ctc_loss(xd, *[dev(t) for t in (tg, il, tl)], 0, "mean", False, True)
    kept.backward(dev(torch.ones((), dtype=torch.float64)), retain_graph=True)
    gc.collect()
    assert refs[0]() is not None  # retain_graph: a second backward will need it
    kept.backward(dev(torch.ones((), dtype=torch.float64)))
    gc.collect()
    assert refs[0]() is None and kept.grad_fn is not None
