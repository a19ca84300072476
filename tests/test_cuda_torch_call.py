"""fastctc._cuda_fast.torch_call, the compiled CUDA route of fastctc.torch (the default launch mode),
checked without a GPU: CPU tensors stand in for one device (the module's emulate hook) and
the C recorder stands in for cuLaunchKernel.

* launch parity: for every input kind the route accepts, its lse / trellis / gradient
  launches are byte for byte the ones the Python route's _Call makes through the same C
  launcher for the same tensors and workspace (tests/test_cuda_fast_launch.py ties that
  route to what cuda.core is given); the reduction launch's arguments are decoded and
  checked field by field;
* declines: everything that is not plain (host-held operands, other ranks and strides,
  bad blanks, empty batches, kernels not loaded, targets over the kernels' limit) returns
  None without a launch, so fastctc.torch's Python route (the owner of every error
  message) takes the call;
* the plan it reads is the one fastctc._cuda_launch.plan returns.
The emulated-kernel run of the whole autograd route is in tests/test_gpu_emulation.py.
"""
import contextlib
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import gpu_emu  # noqa: E402
from fastctc import _cuda_build  # noqa: E402
from fastctc import _cuda_fast as F  # noqa: E402
from fastctc import _cuda_launch as L  # noqa: E402

NAMES = _cuda_build.kernel_names()
HANDLES = {name: 0x1000 + 0x10 * i for i, name in enumerate(NAMES)}
BY_HANDLE = {v: k for k, v in HANDLES.items()}
_SIZE = {"p": 8, "i": 4, "q": 8, "d": 8}
_FMT = {"p": "<Q", "i": "<i", "q": "<q", "d": "<d"}
REDUCTIONS = L.REDUCE_MODES


@pytest.fixture
def compiled(monkeypatch):
    """CPU tensors as device 0, launches recorded; yields take() -> [(name, grid, block, shm, stream, {arg: value})]."""
    F.emulate(True)
    F.recorder_enable()
    F.set_kernels(0, HANDLES)

    def take():
        out = []
        for r in F.recorder_take():
            name = BY_HANDLE[r["f"]]
            spec = gpu_emu.kernel_spec(name)
            assert len(r["params"]) == len(spec) and not r["extra"]
            vals = {n: struct.unpack(_FMT[k], p[:_SIZE[k]])[0] for p, (n, k) in zip(r["params"], spec)}
            raw = [p[:_SIZE[k]] for p, (_, k) in zip(r["params"], spec)]
            out.append((name, r["grid"], r["block"], r["shm"], r["stream"], vals, raw))
        return out

    yield take
    F.set_kernels(0, {})
    F.emulate(False)
    F.recorder_disable()


@pytest.fixture
def python_route(monkeypatch):
    """_cuda_launch._Call on the same CPU tensors, launched by the same C launcher."""
    class CpuTorch(L._Torch):
        def __init__(self):
            self.torch, self.device, self.ordinal, self.stream = torch, torch.device("cpu"), 0, 0

        def refresh_stream(self):
            pass

    monkeypatch.setattr(L, "_backend_for", lambda acts: (CpuTorch(), acts, lambda r: r))
    monkeypatch.setattr(L, "is_cuda_array", lambda x: isinstance(x, torch.Tensor))
    monkeypatch.setattr(L, "_DeviceGuard", lambda ordinal: contextlib.nullcontext())
    monkeypatch.setattr(L, "_kernel_handles", lambda ordinal: HANDLES)
    monkeypatch.setattr(L, "LAUNCH_MODE", "c")
    L._c_launcher()  # the specs (the recorder is on: no driver is asked for)


def _case(seed, T=10, N=3, C=6, S=4, dtype=torch.float32, int_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, N, C, generator=g, dtype=torch.float64) * 2).to(dtype)
    il = torch.randint(T // 2, T + 1, (N,), generator=g).to(int_dtype)
    il[0] = T
    tl = torch.randint(1, S + 1, (N,), generator=g).to(int_dtype)
    tl[-1] = S
    tg = torch.randint(1, C, (N, S), generator=g).to(int_dtype)
    return x, tg, il, tl


def _cases():
    def concat(x, tg, il, tl):
        return x, torch.cat([tg[n, : int(tl[n])] for n in range(tg.shape[0])]), il, tl

    def strided(x, tg, il, tl):  # strided targets and lengths, activations with padded rows
        big = torch.zeros(x.shape[0], x.shape[1], x.shape[2] + 3, dtype=x.dtype)
        big[:, :, : x.shape[2]] = x
        tgw = torch.zeros(tg.shape[0], 2 * tg.shape[1], dtype=tg.dtype)
        tgw[:, ::2] = tg
        ilw = torch.stack([il, il], 1)[:, 0]
        tlw = torch.stack([tl, tl], 1)[:, 1]
        return big[:, :, : x.shape[2]], tgw[:, ::2], ilw, tlw

    out = {}
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        out[dtype] = dict(case=_case(1, dtype=getattr(torch, dtype)))
    out["int32 operands"] = dict(case=_case(2, int_dtype=torch.int32))
    out["concatenated targets"] = dict(case=concat(*_case(3)))
    out["strided operands"] = dict(case=strided(*_case(4)))
    out["C % 4 == 0 (vector rows)"] = dict(case=_case(5, C=8))
    out["warp and block kernels"] = dict(case=_case(6, T=300, N=2, C=7, S=140))
    out["blank 3"] = dict(case=_case(7), blank=3)
    return out


CASES = _cases()


def _planned(ws, reduction, x):
    """The planned part of the compiled route's workspace: a reduced loss's costs follow it
    (N accumulators, rounded up to 256 bytes)."""
    if reduction == "none":
        return ws
    acc = 8 if x.dtype == torch.float64 else 4
    extra = -(-x.shape[1] * acc // 256) * 256
    return ws[: ws.shape[0] - extra]


@pytest.mark.parametrize("reduction,zero_infinity", [("none", False), ("none", True), ("sum", False),
                                                     ("mean", True), ("mean", False)])
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_launches_equal_the_python_routes(compiled, python_route, case, reduction, zero_infinity, from_logits):
    x, tg, il, tl = CASES[case]["case"]
    blank = CASES[case].get("blank", 0)
    out = F.torch_call(x, tg, il, tl, blank, REDUCTIONS[reduction], zero_infinity, from_logits, True)
    assert out is not None
    loss, call, saved = out
    assert [t is s for t, s in zip((tg, il, tl), saved[:3])] == [True] * 3
    ws = saved[3]
    w = torch.rand(x.shape[1], dtype=torch.float64) if reduction == "none" else torch.tensor(0.5)
    grad = call.backward(w, reduction == "mean")
    got = compiled()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    assert grad.dtype == x.dtype and grad.shape == x.shape and loss.dtype == acc
    assert loss.shape == ((x.shape[1],) if reduction == "none" else ())

    # the Python route: one _Call on the same tensors and workspace, through the C launcher
    ref = L._Call(x, tg, il, tl, blank=blank, from_logits=from_logits, want_grad=True,
                  workspace=_planned(ws, reduction, x))
    costs_ptr = loss.data_ptr() if reduction == "none" else None
    red = [r for r in got if r[0].startswith("fctc_reduce_")]
    if reduction != "none" or zero_infinity:
        assert len(red) == 1
        costs_ptr = red[0][5]["costs"]
    ref.values["costs"] = costs_ptr
    ref.launch_forward()
    ref.values.update(costs=0, grad=grad.data_ptr())
    ref.set_weights(w, reduction == "mean")
    ref.launch_grad()
    want = compiled()
    mine = [r for r in got if not r[0].startswith("fctc_reduce_")]
    assert [r[:5] for r in mine] == [r[:5] for r in want]
    for a, b in zip(mine, want):
        assert a[6] == b[6], [(n, a[5][n], b[5][n]) for n in a[5] if a[5][n] != b[5][n]]
    names = [r[0] for r in got]
    sfx = L.KERNEL_TYPES[str(x.dtype).split(".")[1]][0]
    assert names[0] == (f"fctc_lse_{sfx}" if from_logits else names[0])
    assert names[-1] == f"fctc_grad_{sfx}"

    # the reduction: after the trellis, before the gradient, on the costs the trellis wrote
    if red:
        (name, grid, block, shm, stream, v, _) = red[0]
        assert names.index(name) == len(names) - 2
        assert name == ("fctc_reduce_f64" if acc == torch.float64 else "fctc_reduce_f32")
        assert grid == (1, 1, 1) and block == (256, 1, 1) and shm == 0 and stream == 0
        trellis = [r for r in got if r[0].startswith("fctc_trellis_")]
        assert all(r[5]["costs"] == v["costs"] for r in trellis)
        assert v["N"] == x.shape[1] and v["tg_len"] == tl.data_ptr() and v["tl_st"] == tl.stride(0)
        assert v["tl64"] == int(tl.dtype == torch.int64)
        assert v["mode"] == REDUCTIONS[reduction] and v["zero_inf"] == int(zero_infinity)
        assert v["out"] == loss.data_ptr()
        assert (v["out"] == v["costs"]) == (reduction == "none")
        if reduction != "none":  # the costs sit past the planned workspace, clear of its regions
            planned = _planned(ws, reduction, x)
            assert v["costs"] == ws.data_ptr() + planned.shape[0]
            assert v["costs"] + (8 if acc == torch.float64 else 4) * x.shape[1] <= ws.data_ptr() + ws.shape[0]


def test_loss_only_call_launches_no_gradient_and_keeps_nothing(compiled):
    x, tg, il, tl = _case(8)
    loss, call, saved = F.torch_call(x, tg, il, tl, 0, 2, False, True, False)
    assert call is None and saved is None and loss.shape == ()
    names = [r[0] for r in compiled()]
    assert names == ["fctc_lse_f32", "fctc_trellis_f32_w2", "fctc_reduce_f32"]
    got = L.plan(10, 3, 6, 4, want_grad=False, from_logits=True, acc="float32")
    assert got["offsets"]["ws_alpha"] is None  # loss-only: no trellis rows


def test_reads_the_plan_of_cuda_launch(compiled):
    """The workspace size and every launch's geometry are fastctc._cuda_launch.plan's."""
    for T, N, C, S in ((10, 3, 6, 4), (300, 2, 7, 140), (50, 9, 5, 0), (5, 2, 4, 30)):
        x, tg, il, tl = _case(9, T=T, N=N, C=C, S=max(S, 1))
        tg = tg[:, :S]
        tl = tl.clamp(max=S)
        p = L.plan(T, N, C, S, want_grad=True, from_logits=False, acc="float32")
        loss, call, saved = F.torch_call(x, tg, il, tl, 0, 0, False, False, True)
        assert saved[3].shape == (p["total"],)
        trellis = [r for r in compiled() if r[0].startswith("fctc_trellis_")]
        assert [(r[0].rsplit("_", 1)[1], r[1][:2], r[2][0], r[3], r[5]["sel_lo"], r[5]["sel_hi"])
                for r in trellis] == [tuple(launch) for launch in p["launches"]]
        v = trellis[0][5]
        base = saved[3].data_ptr()
        for region, off in p["offsets"].items():
            assert v[region] == (0 if off is None else base + off), region


def _declined():
    x, tg, il, tl = _case(10)
    host = torch.ones(3, dtype=torch.int64)
    yield "unbatched log_probs", (x[:, 0], tg[:1], il[:1], tl[:1], 0)
    yield "class axis strided", (x.transpose(0, 2).contiguous().transpose(0, 2), tg, il, tl, 0)
    yield "empty batch", (x[:, :0], tg[:0], il[:0], tl[:0], 0)
    yield "no frames", (x[:0], tg, il, tl, 0)
    yield "int8 targets", (x, tg.to(torch.int8), il, tl, 0)
    yield "float lengths", (x, tg, il.double(), tl, 0)
    yield "lengths of the wrong shape", (x, tg, il[:2], tl, 0)
    yield "lengths (N, 1)", (x, tg, il[:, None], tl, 0)
    yield "targets of rank 3", (x, tg[:, :, None], il, tl, 0)
    yield "targets of another batch", (x, tg[:2], il, tl, 0)
    yield "a list of lengths", (x, tg, [10, 10, 10], tl, 0)
    yield "a NumPy array of targets", (x, tg.numpy(), il, tl, 0)
    yield "blank out of range", (x, tg, il, tl, 6)
    yield "negative blank", (x, tg, il, tl, -1)
    yield "blank as a bool", (x, tg, il, tl, True)
    yield "blank as a NumPy integer", (x, tg, il, tl, np.int64(0))
    yield "int32 activations", (x.to(torch.int32), tg, il, tl, 0)
    yield "NumPy activations", (x.numpy(), tg, il, tl, 0)
    yield "T > int32 (expanded)", (x[:1].expand(2**31, -1, -1), tg, il, tl, 0)
    yield "targets over the kernels' limit", (torch.zeros(5000, 1, 3), torch.ones(1, 4200, dtype=torch.int64),
                                              host[:1], host[:1], 0)


@pytest.mark.parametrize("label,args", list(_declined()), ids=[d[0] for d in _declined()])
def test_declines_what_is_not_plain(compiled, label, args):
    assert F.torch_call(*args, 2, False, True, True) is None
    assert compiled() == []


def test_declines_without_the_kernels_it_needs(compiled):
    x, tg, il, tl = _case(11)
    F.set_kernels(0, {k: v for k, v in HANDLES.items() if not k.startswith("fctc_reduce_")})
    assert F.torch_call(x, tg, il, tl, 0, 2, False, True, True) is None  # 'mean' needs the reduction kernel
    assert F.torch_call(x, tg, il, tl, 0, 0, False, True, True) is not None  # 'none' does not
    F.set_kernels(0, {k: v for k, v in HANDLES.items() if not k.startswith("fctc_lse_")})
    assert F.torch_call(x, tg, il, tl, 0, 0, False, True, True) is None  # logits need the row sums
    F.set_kernels(0, {})
    assert F.torch_call(x, tg, il, tl, 0, 0, False, False, False) is None
    compiled()


def test_declines_device_tensors_when_emulating_and_host_tensors_otherwise(compiled):
    x, tg, il, tl = _case(12)
    F.emulate(False)  # a real device is then required: CPU tensors are not plain
    assert F.torch_call(x, tg, il, tl, 0, 2, False, True, True) is None
    assert compiled() == []


def test_backward_weights(compiled):
    x, tg, il, tl = _case(13)
    _, call, _ = F.torch_call(x, tg, il, tl, 0, 0, False, True, True)
    compiled()
    for w, kind, st in ((torch.ones(3), 1, 1), (torch.ones(3, dtype=torch.float64), 2, 1),
                        (torch.ones(6)[::2], 1, 2), (torch.tensor(2.0), 1, 0), (torch.ones(1), 1, 0),
                        (torch.ones(3, dtype=torch.float16), 2, 1), (None, 0, 0)):
        grad = call.backward(w, False, like=x)
        (r,) = compiled()
        v = r[5]
        assert r[0] == "fctc_grad_f32" and v["w_kind"] == kind and v["w_st"] == st
        assert v["grad"] == grad.data_ptr() and v["costs"] == 0 and v["mean"] == 0
        if w is not None and w.dtype != torch.float16:
            assert v["w"] == w.data_ptr()
    with pytest.raises(ValueError, match=r"grad_weights must have shape \(N,\) = \(3,\), got \(2,\)"):
        call.backward(torch.ones(2), False)
    assert compiled() == []


def test_route_fields_are_the_kernels_arguments():
    assert F.FIELD_NAMES == tuple(n for n, _ in L.TRELLIS_ARGS)
    assert [F.kernel_name(t, k) for t in range(4) for k in (0, 6)] == [
        f"fctc_{k}_{s}" for s in ("f32", "f64", "f16", "bf16") for k in ("lse", "grad")]
    assert set(F.kernel_name(t, k) for t in range(4) for k in range(8)) <= set(HANDLES)


class Host(torch.Tensor):
    """A CPU tensor standing in for a host-held one (the other CPU tensors are the device's)."""


@pytest.mark.parametrize("form", ["padded", "concatenated", "int32 strided"])
@pytest.mark.parametrize("from_logits", [True, False])
def test_host_operands_uploaded_once_in_the_python_routes_form(compiled, python_route, form, from_logits):
    x, tg, il, tl = _case(14, T=12, N=4, C=7, S=5)
    if form == "concatenated":
        tg = torch.cat([tg[n, : int(tl[n])] for n in range(4)])
    if form == "int32 strided":
        tg = torch.stack([tg, tg], 2).to(torch.int32)[:, :, 1]
        il, tl = il.to(torch.int32), torch.stack([tl, tl], 1)[:, 0]
    F.emulate(True, Host)
    h = lambda t: t.as_subclass(Host)  # noqa: E731
    loss, call, saved = F.torch_call(x, h(tg), h(il), h(tl), 0, 2, False, from_logits, True)
    upload, _, _, ws = saved
    total = int(tl.sum())
    labels = torch.cat([tg[n, : int(tl[n])] for n in range(4)]) if tg.dim() == 2 else tg
    assert upload.dtype == torch.int64 and upload.shape == (total + 8,)
    assert upload.tolist() == labels.tolist() + il.tolist() + tl.tolist()
    w = torch.tensor(1.0)
    grad = call.backward(w, True)
    got = [r for r in compiled() if not r[0].startswith("fctc_reduce_")]
    F.emulate(True)
    ref = L._Call(x, upload[:total], upload[total:total + 4], upload[total + 4:], blank=0, from_logits=from_logits,
                  want_grad=True, max_target_length=int(tl.max()), workspace=_planned(ws, "mean", x))
    ref.values["costs"] = got[-2][5]["costs"]
    ref.launch_forward()
    ref.values.update(costs=0, grad=grad.data_ptr())
    ref.set_weights(w, True)
    ref.launch_grad()
    want = compiled()
    assert [r[:5] for r in got] == [r[:5] for r in want]
    for a, b in zip(got, want):
        assert a[6] == b[6], [(n, a[5][n], b[5][n]) for n in a[5] if a[5][n] != b[5][n]]


def _declined_host():
    x, tg, il, tl = _case(15, T=10, N=3, C=6, S=4)
    h = lambda t: t.as_subclass(Host)  # noqa: E731
    yield "mixed: device targets, host lengths", (tg, h(il), h(tl))
    yield "mixed: host targets, device lengths", (h(tg), il, tl)
    yield "input length > T", (h(tg), h(il + 20), h(tl))
    yield "negative input length", (h(tg), h(il - 20), h(tl))
    yield "target length > S", (h(tg), h(il), h(tl + 5))
    yield "negative target length", (h(tg), h(il), h(tl - 9))
    bad = tg.clone()
    bad[0, 0] = 6
    yield "label = C", (h(bad), h(il), h(tl))
    bad = tg.clone()
    bad[1, 0] = -1
    yield "negative label", (h(bad), h(il), h(tl))
    flat = torch.cat([tg[n, : int(tl[n])] for n in range(3)])
    yield "concatenated: sum(target_lengths) != count", (h(flat[:-1]), h(il), h(tl))
    yield "host float lengths", (h(tg), h(il.double()), h(tl))


@pytest.mark.parametrize("label,ops", list(_declined_host()), ids=[d[0] for d in _declined_host()])
def test_declines_host_operands_the_validator_rejects(compiled, label, ops):
    x = _case(15, T=10, N=3, C=6, S=4)[0]
    F.emulate(True, Host)
    assert F.torch_call(x, *ops, 0, 2, False, True, True) is None
    assert compiled() == []


def test_host_labels_past_the_target_length_are_not_read(compiled):
    """Padding past each target length may hold anything (the validator masks it too)."""
    x, tg, il, tl = _case(16, T=10, N=3, C=6, S=4)
    tl[:] = 2
    tg[:, 2:] = 99
    F.emulate(True, Host)
    h = lambda t: t.as_subclass(Host)  # noqa: E731
    loss, call, saved = F.torch_call(x, h(tg), h(il), h(tl), 0, 2, False, True, True)
    assert saved[0][:6].tolist() == tg[:, :2].reshape(-1).tolist()
    compiled()


# ---------------------------------------------------------------- through the emulated kernels

@pytest.fixture
def emulated(monkeypatch, emu):
    """fastctc.torch's CUDA route with the compiled route on, its launches run by the emulated
    kernels through gpu_emu's stand-in for cuLaunchKernel (CPU tensors as the device's,
    Host instances as host-held); the Python route's _Call is unavailable, so a call the
    compiled route declined would fail."""
    import fastctc.torch as fct
    lib = emu
    address, handles = gpu_emu.driver(lib)
    F.set_driver_launch(address)
    F.emulate(True, Host)
    F.set_kernels(0, handles)
    monkeypatch.setattr(L, "LAUNCH_MODE", "c")
    monkeypatch.setattr(L, "_fast", F)
    monkeypatch.setattr(fct, "_launcher", lambda: L)

    class NoCall:
        def __init__(self, *args, **kwargs):
            raise AssertionError("the compiled route declined a plain call")

    monkeypatch.setattr(L, "_Call", NoCall)
    yield fct
    F.reset_driver()
    F.emulate(False)
    F.set_kernels(0, {})


@pytest.mark.parametrize("form", ["device padded", "device concatenated int32", "host padded"])
@pytest.mark.parametrize("reduction,zero_infinity", [("none", False), ("none", True), ("sum", False),
                                                     ("mean", False), ("mean", True)])
@pytest.mark.parametrize("from_logits", [True, False])
def test_emulated_route_matches_cpu_route(emulated, form, reduction, zero_infinity, from_logits):
    fct = emulated
    x, tg, il, tl = _case(20, T=12, N=4, C=6, S=4, dtype=torch.float64)
    il[1] = 3  # target 1 cannot fit: +inf (0 with zero_infinity), zero gradient
    tl[1] = 4
    if "concatenated" in form:
        tg = torch.cat([tg[n, : int(tl[n])] for n in range(4)]).to(torch.int32)
        il, tl = il.to(torch.int32), tl.to(torch.int32)
    ops = [t.as_subclass(Host) for t in (tg, il, tl)] if "host" in form else [tg, il, tl]
    xin = x if from_logits else x.log_softmax(-1)
    up = torch.rand(4, dtype=torch.float64) if reduction == "none" else torch.tensor(0.7, dtype=torch.float64)
    xd = xin.clone().requires_grad_()
    ld = fct._cuda_ctc_loss(xd, *ops, 0, reduction, zero_infinity, from_logits)
    ld.backward(up)
    xc = xin.clone().requires_grad_()
    lc = fct.ctc_loss(xc, tg.long(), il.long(), tl.long(), reduction=reduction, zero_infinity=zero_infinity,
                      from_logits=from_logits)
    lc.backward(up)
    np.testing.assert_allclose(ld.detach().numpy(), lc.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xd.grad.numpy(), xc.grad.numpy(), rtol=1e-9, atol=1e-12)
    if reduction == "none":
        assert np.isinf(ld[1].item()) != zero_infinity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_emulated_route_reduced_precision(emulated, dtype):
    fct = emulated
    x, tg, il, tl = _case(21, T=10, N=3, C=5, S=3)
    x = x.to(dtype)
    xd = x.clone().requires_grad_()
    ld = fct._cuda_ctc_loss(xd, tg, il, tl, 0, "mean", False, True)
    ld.backward()
    xc = x.float().clone().requires_grad_()
    lc = fct.ctc_loss(xc, tg, il, tl, from_logits=True)
    lc.backward()
    assert ld.dtype == torch.float32 and xd.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    np.testing.assert_allclose(ld.item(), lc.item(), rtol=tol)
    np.testing.assert_allclose(xd.grad.float().numpy(), xc.grad.to(dtype).float().numpy(), rtol=tol, atol=tol)


def test_emulated_route_retain_graph_and_no_grad(emulated):
    fct = emulated
    x, tg, il, tl = _case(22, dtype=torch.float64)
    xd = x.clone().requires_grad_()
    loss = fct._cuda_ctc_loss(xd, tg, il, tl, 0, "sum", False, True)
    loss.backward(retain_graph=True)
    first = xd.grad.clone()
    loss.backward()
    np.testing.assert_array_equal(xd.grad.numpy(), 2 * first.numpy())  # same bits a backward
    with torch.no_grad():
        again = fct._cuda_ctc_loss(xd, tg, il, tl, 0, "sum", False, True)
    assert again.item() == loss.item()
    with pytest.raises(RuntimeError):
        xs = x.clone().requires_grad_()
        g, = torch.autograd.grad(fct._cuda_ctc_loss(xs, tg, il, tl, 0, "sum", False, True), xs, create_graph=True)
        g.sum().backward()


def test_emulated_op_matches_cpu_op(emulated):
    fct = emulated
    x, tg, il, tl = _case(23, dtype=torch.float64)
    costs, grad = fct._cuda_op(x, tg, il, tl, 0, True, True)
    ref_costs, ref_grad = torch.ops.fastctc.ctc_loss(x, tg, il, tl, 0, True, True, 0)
    np.testing.assert_allclose(costs.numpy(), ref_costs.numpy(), rtol=1e-10)
    np.testing.assert_allclose(grad.numpy(), ref_grad.numpy(), rtol=1e-9, atol=1e-12)
    costs, empty = fct._cuda_op(x, tg, il, tl, 0, True, False)
    assert empty.numel() == 0
    np.testing.assert_allclose(costs.numpy(), ref_costs.numpy(), rtol=1e-10)


# ---------------------------------------------------------------- the current context

class FakeContexts:
    """ctypes stand-ins for cuCtxGetDevice / cuCtxSetCurrent / cuDeviceGet /
    cuDevicePrimaryCtxRetain: `current` is the device whose context is current (None: no
    context on the thread); calls are logged."""

    def __init__(self, current):
        import ctypes
        self.current, self.log = current, []
        c_int_p, c_void_pp = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p)

        def get_device(dev):
            self.log.append("get_device")
            if self.current is None:
                return 201  # CUDA_ERROR_INVALID_CONTEXT
            dev[0] = self.current
            return 0

        def set_current(ctx):
            self.log.append(("set_current", ctx))
            self.current = ctx - 0xC000 if ctx else None
            return 0

        def device_get(dev, ordinal):
            self.log.append(("device_get", ordinal))
            dev[0] = ordinal
            return 0

        def retain(ctx, dev):
            self.log.append(("retain", dev))
            ctx[0] = 0xC000 + dev
            return 0

        self.fns = [ctypes.CFUNCTYPE(ctypes.c_int, c_int_p)(get_device),
                    ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(set_current),
                    ctypes.CFUNCTYPE(ctypes.c_int, c_int_p, ctypes.c_int)(device_get),
                    ctypes.CFUNCTYPE(ctypes.c_int, c_void_pp, ctypes.c_int)(retain)]
        F.set_driver_context(*[ctypes.cast(f, ctypes.c_void_p).value for f in self.fns])


@pytest.fixture
def contexts(compiled):
    made = []

    def make(current):
        made.append(FakeContexts(current))
        return made[-1]
    yield make
    F.set_driver_context(0, 0, 0, 0)


def test_the_devices_context_current(contexts, compiled):
    ctx = contexts(0)
    x, tg, il, tl = _case(30)
    _, call, _ = F.torch_call(x, tg, il, tl, 0, 2, False, True, True)
    call.backward(torch.tensor(1.0), True)
    assert ctx.log == ["get_device", "get_device"]  # one query a direction, nothing changed
    assert len(compiled()) == 4  # lse, trellis, reduce, grad


def test_no_context_on_the_thread_gets_the_primary_one(contexts, compiled):
    """An autograd worker thread of device 0 has no current context before its first runtime
    call: the route makes the primary context current (retained once) instead of declining."""
    ctx = contexts(None)
    x, tg, il, tl = _case(31)
    _, call, _ = F.torch_call(x, tg, il, tl, 0, 2, False, True, True)
    assert ctx.log == ["get_device", ("device_get", 0), ("retain", 0), ("set_current", 0xC000)]
    ctx.current, ctx.log = None, []
    call.backward(torch.tensor(1.0), True)
    assert ctx.log == ["get_device", ("set_current", 0xC000)]  # retained once, reused
    assert len(compiled()) == 4  # lse, trellis, reduce, grad


def test_another_devices_context_declines_and_the_backward_switches(contexts, compiled, monkeypatch):
    ctx = contexts(0)
    x, tg, il, tl = _case(32)
    _, call, _ = F.torch_call(x, tg, il, tl, 0, 2, False, True, True)
    compiled()
    ctx.current = 1
    assert F.torch_call(x, tg, il, tl, 0, 2, False, True, True) is None
    assert compiled() == []
    entered = []

    @contextlib.contextmanager
    def guard(ordinal):
        entered.append(ordinal)
        yield

    F.set_device_guard(guard)
    try:
        call.backward(torch.tensor(1.0), True)
    finally:
        F.set_device_guard(None)
    assert entered == [0]
    assert [r[0] for r in compiled()] == ["fctc_grad_f32"]


# ---------------------------------------------------------------- both routes, through the emulated kernels

@pytest.fixture
def both_routes(monkeypatch, emu):
    """fastctc.torch's CUDA route through the emulated kernels, the compiled route on or off:
    yields (fct, state).  state['compiled'] False makes _compiled_call return None, so the
    Python route (_cuda_operands, _Call, _cuda_loss, through the same C launcher) takes the
    call; state['taken'] counts the calls the compiled route took.  CPU tensors are the
    device's, Host instances host-held."""
    import fastctc.torch as fct
    lib = emu
    address, handles = gpu_emu.driver(lib)

    class CpuTorch(L._Torch):
        def __init__(self):
            self.torch, self.device, self.ordinal, self.stream = torch, torch.device("cpu"), 0, 0

        def refresh_stream(self):
            pass

        def from_host(self, arr):
            return torch.from_numpy(np.ascontiguousarray(arr))

    device = lambda x: isinstance(x, torch.Tensor) and not isinstance(x, Host)  # noqa: E731
    F.set_driver_launch(address)
    F.emulate(True, Host)
    F.set_kernels(0, handles)
    monkeypatch.setattr(L, "_backend_for", lambda acts: (CpuTorch(), acts, lambda r: r))
    monkeypatch.setattr(L, "is_cuda_array", device)
    monkeypatch.setattr(L, "_DeviceGuard", lambda ordinal: contextlib.nullcontext())
    monkeypatch.setattr(L, "_kernel_handles", lambda ordinal: handles)
    monkeypatch.setattr(L, "LAUNCH_MODE", "c")
    monkeypatch.setattr(L, "_fast", F)
    monkeypatch.setattr(L, "_specs", (F.Spec(L.TRELLIS_ARGS), F.Spec(L.LSE_ARGS)))
    monkeypatch.setattr(L, "_reduce_spec", F.Spec(L.REDUCE_ARGS))
    monkeypatch.setattr(fct, "_launcher", lambda: L)
    monkeypatch.setattr(fct, "_on_device", device)
    monkeypatch.setattr(fct, "_upload", lambda arr, dev: torch.from_numpy(arr))
    real = fct._compiled_call
    state = dict(compiled=True, taken=0)

    def compiled_call(*args):
        if not state["compiled"]:
            return None
        out = real(*args)
        state["taken"] += out is not None
        return out

    monkeypatch.setattr(fct, "_compiled_call", compiled_call)
    yield fct, state
    F.reset_driver()
    F.emulate(False)
    F.set_kernels(0, {})


def _same(a, b):
    """Same dtype, shape and bits (NaN equal to NaN)."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    np.testing.assert_array_equal(a.detach().float().numpy() if a.dtype == torch.bfloat16 else a.detach().numpy(),
                                  b.detach().float().numpy() if b.dtype == torch.bfloat16 else b.detach().numpy())


def _both(fct, state, scenario):
    """scenario() -> tensors, run on the compiled route, then on the Python route; asserts
    the compiled route took it and that every tensor is the same."""
    state.update(compiled=True, taken=0)
    got = scenario()
    assert state["taken"] >= 1, "the compiled route declined"
    state.update(compiled=False)
    want = scenario()
    assert len(got) == len(want)
    for a, b in zip(got, want):
        _same(a, b)
    return got


def _loss_and_grad(fct, x, ops, blank=0, reduction="mean", zero_infinity=False, from_logits=True, up=None,
                   leaf=None):
    """(loss, d loss / d leaf) through fastctc.torch's eager CUDA entry; leaf: what requires
    grad (default x, cloned)."""
    if leaf is None:
        leaf = x = x.detach().clone().requires_grad_()
    loss = fct._cuda_ctc_loss(x, *ops, blank, reduction, zero_infinity, from_logits)
    (grad,) = torch.autograd.grad(loss, leaf, up)
    return loss, grad


def _parity_scenarios():
    """name -> scenario(fct): inputs the compiled route takes, with the forms the brief
    singles out (strides, expanded operands, upstream gradients, bounds, empty targets)."""
    def case(seed=30, **kw):
        return _case(seed, **{**dict(T=9, N=3, C=5, S=3, dtype=torch.float64), **kw})

    def plain(**kw):
        def run(fct):
            x, tg, il, tl = case()
            up = torch.linspace(0.3, 1.7, 3, dtype=torch.float64) if kw["reduction"] == "none" else None
            return _loss_and_grad(fct, x, (tg, il, tl), up=up, **kw)
        return run

    out = {}
    for reduction in ("none", "sum", "mean"):
        for zi in (False, True):
            out[f"{reduction} zero_infinity={zi}"] = plain(reduction=reduction, zero_infinity=zi)

    def expanded_log_probs(fct):  # stride 0 over the batch: one row of scores for every sequence
        x, tg, il, tl = case()
        base = x[:, :1].clone().requires_grad_()
        return _loss_and_grad(fct, base.expand(-1, 3, -1), (tg, il, tl), reduction="sum", leaf=base)
    out["log_probs expanded over N (stride 0)"] = expanded_log_probs

    def expanded_time(fct):
        x, tg, il, tl = case()
        base = x[:1].clone().requires_grad_()
        return _loss_and_grad(fct, base.expand(9, -1, -1), (tg, il, tl), reduction="none",
                              up=torch.linspace(0.3, 1.7, 3, dtype=torch.float64), leaf=base)
    out["log_probs expanded over T (stride 0)"] = expanded_time

    def batch_first(fct):  # (N, T, C) model output, transposed: st_n > st_t
        x, tg, il, tl = case()
        y = x.transpose(0, 1).contiguous().requires_grad_()
        return _loss_and_grad(fct, y.transpose(0, 1), (tg, il, tl), leaf=y)
    out["batch-first log_probs, transposed"] = batch_first

    def up_broadcast(fct):  # 'none' then .sum(): the upstream gradient is expanded (stride 0)
        x, tg, il, tl = case()
        x = x.clone().requires_grad_()
        fct._cuda_ctc_loss(x, tg, il, tl, 0, "none", False, True).sum().backward()
        return (x.grad,)
    out["grad_out expanded (stride 0)"] = up_broadcast

    def up_strided(fct):
        x, tg, il, tl = case()
        return _loss_and_grad(fct, x, (tg, il, tl), reduction="none",
                              up=torch.arange(6, dtype=torch.float64)[::2] + 0.5)
    out["grad_out (N,) strided"] = up_strided

    def up_float32(fct):  # float32 upstream gradient of a float64 loss (autograd casts it)
        x, tg, il, tl = case()
        return _loss_and_grad(fct, x, (tg, il, tl), reduction="none", up=torch.linspace(0.3, 1.7, 3))
    out["grad_out float32 for a float64 loss"] = up_float32

    def parameter(fct):
        x, tg, il, tl = case()
        p = torch.nn.Parameter(x.clone())
        loss = fct._cuda_ctc_loss(p, tg, il, tl, 0, "mean", False, True)
        loss.backward()
        return loss, p.grad
    out["a Parameter as log_probs"] = parameter

    def retain_graph(fct):
        x, tg, il, tl = case()
        x = x.clone().requires_grad_()
        loss = fct._cuda_ctc_loss(x, tg, il, tl, 0, "sum", False, True)
        loss.backward(retain_graph=True)
        first = x.grad.clone()
        loss.backward()
        return loss, first, x.grad
    out["retain_graph, two backwards"] = retain_graph

    def no_grad(fct):
        x, tg, il, tl = case()
        x = x.clone().requires_grad_()
        with torch.no_grad():
            a = fct._cuda_ctc_loss(x, tg, il, tl, 0, "mean", False, True)
        with torch.inference_mode():
            b = fct._cuda_ctc_loss(x, tg, il, tl, 0, "none", True, True)
        assert not a.requires_grad and not b.requires_grad
        return a, b.clone()
    out["no_grad and inference_mode"] = no_grad

    def empty_padded(fct):  # padded targets of width 0: every target empty
        x, tg, il, tl = case()
        return _loss_and_grad(fct, x, (tg[:, :0], il, tl * 0), reduction="sum")
    out["padded targets with S = 0 (device)"] = empty_padded

    def empty_padded_host(fct):
        x, tg, il, tl = case()
        return _loss_and_grad(fct, x, (tg[:, :0].as_subclass(Host), il.as_subclass(Host),
                                       (tl * 0).as_subclass(Host)), reduction="mean")
    out["padded targets with S = 0 (host)"] = empty_padded_host

    def empty_concat(fct):
        x, tg, il, tl = case()
        return _loss_and_grad(fct, x, (tg.reshape(-1)[:0], il, tl * 0), reduction="mean")
    out["concatenated targets, no labels (device)"] = empty_concat

    def bounds(fct):  # blank = C - 1, labels 0 and C - 2, a zero input length, lengths at T and S
        x, tg, il, tl = case(C=4)
        tg[:, 0], tg[:, 1] = 0, 2
        il[1] = 0
        tl[1] = 0
        return _loss_and_grad(fct, x, (tg, il, tl), blank=3, reduction="none", zero_infinity=False,
                              up=torch.ones(3, dtype=torch.float64))
    out["bounds: blank C - 1, a zero input length"] = bounds

    def one_class(fct):  # C = 1: blank only, empty targets
        x = torch.randn(4, 2, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(31))
        z = torch.zeros(2, dtype=torch.int64)
        return _loss_and_grad(fct, x, (z[:, None][:, :0], torch.tensor([4, 2]), z), reduction="sum")
    out["C = 1"] = one_class

    def expanded_targets(fct):  # device targets and lengths with stride 0
        x, tg, il, tl = case()
        return _loss_and_grad(fct, x, (tg[:1].expand(3, -1), il[:1].expand(3), tl[:1].expand(3)))
    out["device targets and lengths expanded (stride 0)"] = expanded_targets

    def host_concat_int32(fct):
        x, tg, il, tl = case()
        flat = torch.cat([tg[n, : int(tl[n])] for n in range(3)]).to(torch.int32)
        return _loss_and_grad(fct, x, [t.as_subclass(Host) for t in (flat, il.to(torch.int32), tl)],
                              reduction="mean", zero_infinity=True)
    out["host concatenated int32"] = host_concat_int32

    def registered_op(fct):  # fastctc::ctc_loss's CUDA kernel (torch.compile): costs and the gradient of their sum
        x, tg, il, tl = case()
        host = [t.as_subclass(Host) for t in (tg, il, tl)]
        return (*fct._cuda_op(x, tg, il, tl, 0, True, True), *fct._cuda_op(x, *host, 0, False, True),
                fct._cuda_op(x, tg, il, tl, 0, True, False)[0])
    out["the registered op's CUDA kernel"] = registered_op

    for dtype in ("float32", "float16", "bfloat16"):
        def half(fct, dtype=getattr(torch, dtype)):
            x, tg, il, tl = case(dtype=dtype)
            return _loss_and_grad(fct, x, (tg, il, tl), reduction="none", up=torch.linspace(0.3, 1.7, 3))
        out[f"{dtype} 'none'"] = half
    return out


PARITY = _parity_scenarios()


@pytest.mark.parametrize("name", list(PARITY))
def test_compiled_route_gives_the_python_routes_results(both_routes, name):
    fct, state = both_routes
    _both(fct, state, lambda: PARITY[name](fct))


def _neg_view(x):
    """x's values held as a view with torch's negative bit (lazy negation, as z.conj().imag
    gives): its memory holds -x.  The last axis keeps unit stride when it has one element."""
    v = torch.complex(torch.zeros_like(x), -x).conj().imag
    if x.dim() and x.shape[-1] == 1:
        v = v.squeeze(-1).unsqueeze(-1)  # a trailing axis of one element gets stride 1
    assert v.is_neg() and torch.equal(v, x)
    return v


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled route", "Python route"])
def test_negative_bit_log_probs_are_read_as_their_values(both_routes, compiled):
    """A view with torch's negative bit holds -values in memory: both routes must read its
    values, not the raw memory a kernel would see (C = 1: the class axis then has unit
    stride, so neither route copies it)."""
    fct, state = both_routes
    state.update(compiled=compiled)
    x = torch.linspace(-3.0, -0.5, 8, dtype=torch.float64).reshape(4, 2, 1)
    ops = (torch.zeros(2, 0, dtype=torch.int64), torch.tensor([4, 3]), torch.zeros(2, dtype=torch.int64))
    want = _loss_and_grad(fct, x, ops, reduction="none", from_logits=False, up=torch.ones(2, dtype=torch.float64))
    np.testing.assert_allclose(want[0].detach().numpy(), [-x[:4, 0, 0].sum(), -x[:3, 1, 0].sum()])
    xn = _neg_view(x).requires_grad_()
    assert xn.stride(2) == 1
    got = _loss_and_grad(fct, xn, ops, reduction="none", from_logits=False, up=torch.ones(2, dtype=torch.float64),
                         leaf=xn)
    for a, b in zip(got, want):
        _same(a, b)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled route", "Python route"])
def test_negative_bit_upstream_gradient_is_read_as_its_values(both_routes, compiled):
    fct, state = both_routes
    state.update(compiled=compiled, taken=0)
    x, tg, il, tl = _case(33, T=9, N=3, C=5, S=3, dtype=torch.float64)
    up = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    want = _loss_and_grad(fct, x, (tg, il, tl), reduction="none", up=up)
    got = _loss_and_grad(fct, x, (tg, il, tl), reduction="none", up=_neg_view(up))
    assert state["taken"] == (2 if compiled else 0)
    for a, b in zip(got, want):
        _same(a, b)


@pytest.mark.parametrize("form", ["padded (N, 2**30)", "concatenated (2**30,)"])
def test_declines_targets_whose_trellis_width_is_not_an_int32(compiled, python_route, form):
    """alpha_cols = 2 Smax + 1 is an int32 kernel argument: for Smax >= 2**30 the Python
    route's packing raises (OverflowError), so the compiled route must leave the call to it
    rather than launch a truncated value (device targets: Smax is their width or count)."""
    x, tg, il, tl = _case(34, T=10, N=2, C=5, S=3)
    if form.startswith("padded"):
        wide = tg[:, :1].expand(2, 2**30)  # stride 0: no memory
        lengths = tl.clamp(max=1)
    else:
        wide = tg[0, :1].expand(2**30)
        lengths = torch.tensor([2**29, 2**29])
    with pytest.raises(OverflowError, match="alpha_cols"):
        ref = L._Call(x, wide, il, lengths, blank=0, from_logits=True, want_grad=True)
        ref.launch_forward()
    compiled()
    assert F.torch_call(x, wide, il, lengths, 0, 2, False, True, True) is None
    assert compiled() == []


def _foreign_operands():
    x, tg, il, tl = _case(35, T=10, N=3, C=6, S=4)
    meta = lambda t: torch.empty_like(t, device="meta")  # noqa: E731
    yield "meta targets", (meta(tg), il, tl)
    yield "meta lengths", (tg, meta(il), meta(tl))
    yield "sparse input lengths", (tg, il.to_sparse(), tl)
    yield "sparse targets", (tg.to_sparse(), il, tl)


@pytest.mark.parametrize("label,ops", list(_foreign_operands()), ids=[d[0] for d in _foreign_operands()])
def test_declines_operands_that_are_not_strided_cpu_or_device_memory(compiled, label, ops):
    """Meta and sparse tensors have no memory a kernel or _check_host can read (a meta
    tensor's data_ptr() is 0, a sparse one's raises): the route declines them, and the
    Python route (which copies host-side operands with .cpu()) says what is wrong.  As
    host-held operands (no Host stand-in exists for them): the next test."""
    x = _case(35, T=10, N=3, C=6, S=4)[0]
    assert F.torch_call(x, *ops, 0, 2, False, True, True) is None
    assert compiled() == []


_FOREIGN_ON_A_REAL_DEVICE = """
import torch
from fastctc import _cuda_fast as F
class FakeCuda(torch.Tensor):  # what the route sees of a cuda:0 tensor
    __torch_function__ = torch._C._disabled_torch_function_impl
    is_cuda = property(lambda self: True)
    def get_device(self):
        return 0
F.recorder_enable()
F.set_kernels(0, {F.kernel_name(t, k): 0x1000 + 16 * (8 * t + k) for t in range(4) for k in range(8)})
x = torch.randn(10, 2, 5).as_subclass(FakeCuda)
meta = lambda *s: torch.ones(*s, dtype=torch.int64, device="meta")
print(F.torch_call(x, meta(2, 3), meta(2), meta(2), 0, 0, False, False, True), len(F.recorder_take()))
one = torch.ones(2, dtype=torch.int64)
print(F.torch_call(x, one[:, None], one, one.to_sparse(), 0, 0, False, False, True), len(F.recorder_take()))
"""


def test_foreign_operands_with_a_device_log_probs_are_declined_not_read():
    """Not emulating: a tensor whose get_device() is -1 is not necessarily a host one: a
    meta tensor's is -1 too (its data_ptr() 0: reading it as host memory crashed), a sparse
    CPU tensor's too (its data_ptr() raised instead of the route declining)."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run([sys.executable, "-c", _FOREIGN_ON_A_REAL_DEVICE], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.split() == ["None", "0", "None", "0"]


@pytest.mark.parametrize("T,N,S,dtype", [(2**31 - 1, 32902, 4095, torch.float64),
                                         (2**31 - 1, 268194, 1000, torch.float32),
                                         (2**31 - 1, 9, 3, torch.float32)])
def test_declines_batches_of_more_rows_than_the_kernels_grid(compiled, T, N, S, dtype):
    """An expanded (stride 0) log_probs costs no memory whatever T and N: with T N past the
    row-sum and gradient kernels' grid (8 rows a block, 2^31 - 1 blocks) the grid size was
    truncated, and the first two cases' workspace size wrapped around to 256 bytes (the
    kernels' regions then lay ~2^62 bytes past it).  Both routes share the plan, which now
    refuses: the compiled route declines, the Python route raises a CTCValueError."""
    x = torch.zeros(1, 1, 3, dtype=dtype).expand(T, N, 3)
    tg = torch.ones(1, 1, dtype=torch.int64).expand(N, S)
    il = torch.zeros(1, dtype=torch.int64).expand(N)
    acc = "float64" if dtype == torch.float64 else "float32"
    for want_grad, from_logits in ((True, False), (False, True)):
        assert F.torch_call(x, tg, il, il, 0, 0, False, from_logits, want_grad) is None
        assert compiled() == []
        with pytest.raises(ValueError, match=r"T \* N = .* rows exceed the GPU kernels' limit"):
            L.plan(T, N, 3, S, want_grad=want_grad, from_logits=from_logits, acc=acc)
    p = L.plan(2**31 - 1, 8, 3, S, want_grad=True, from_logits=True, acc="float32")  # at the bound
    assert p["total"] > 8 * (2**31 - 1) * 8
