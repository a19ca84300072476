"""fastctc._cuda_fast, the compiled launcher (the default launch mode), checked without a
GPU: its C recorder stands in for cuLaunchKernel and keeps the bytes the driver would read.

* byte parity: for real _Call flows (fastctc.torch forward+backward in every reduction,
  logits and log-probs, float32/float64, padded/concatenated targets, device and host
  lengths, run_device with log_alpha, torch_backward, a batch that also needs the block
  kernel) the C route makes the same launches (kernel, grid, block, shared bytes, stream)
  with the same argument bytes, in the same order, as the default route hands cuda.core
  (cuda.core's own ParamHolder packing where cuda.core is installed, and the kinds' model:
  NumPy scalars by their bytes, Python ints as 8-byte pointers, always);
* through the emulated kernels: the recorded launches, decoded and run by tests/gpu_emu.py,
  give fastctc.torch the CPU route's losses and gradients;
* the module imports and packs without a driver, a failed launch raises RuntimeError naming
  the kernel and the CUresult, and bad values name the argument.
The device check (benchmarks/gpu_check.py, "fixed cost" and "C launch parity") runs it on a GPU.
"""
import contextlib
import ctypes
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastctc.torch as fct  # noqa: E402
import gpu_emu  # noqa: E402  (kernel_spec only: the emulation is built by the tests that run it)
from fastctc import _cuda_build  # noqa: E402
from fastctc import _cuda_fast as F  # noqa: E402
from fastctc import _cuda_launch as L  # noqa: E402

HANDLES = {name: 0x1000 + 0x10 * i for i, name in enumerate(_cuda_build.kernel_names())}
STREAM = 0x5EED
_SIZE = {"p": 8, "i": 4, "q": 8, "d": 8}


def _param_holder():
    try:
        from cuda.core._kernel_arg_handler import ParamHolder
    except ImportError:
        try:
            from cuda.core.cu13._kernel_arg_handler import ParamHolder
        except ImportError:
            return None
    return ParamHolder


def _model_bytes(args, spec):
    """What cuda.core packs for pack_args' list: a NumPy scalar's bytes, a Python int as intptr_t."""
    out = []
    for a, (name, kind) in zip(args, spec):
        if isinstance(a, np.generic):
            assert a.dtype == {"i": np.int32, "q": np.int64, "d": np.float64}[kind], (name, a.dtype)
            out.append(a.tobytes())
        else:
            assert kind == "p" and isinstance(a, int), (name, a)
            out.append(struct.pack("<Q", a))
    return out


def _holder_bytes(holder_cls, args, spec):
    """The bytes cuda.core's own packer would hand the driver for args."""
    h = holder_cls(args)
    out = []
    for i, (_, kind) in enumerate(spec):
        addr = ctypes.c_void_p.from_address(h.ptr + 8 * i).value
        out.append(ctypes.string_at(addr, _SIZE[kind]))
    return out


@pytest.fixture
def standin(monkeypatch):
    """The real _cuda_launch on CPU tensors (stream STREAM, kernel handles HANDLES); returns
    run(mode, fn) -> list of launches (name, handle, grid, block, shm, stream, [bytes])."""
    class CpuTorch(L._Torch):
        def __init__(self):
            self.torch, self.device, self.ordinal, self.stream = torch, torch.device("cpu"), 0, STREAM

        def refresh_stream(self):
            pass

        def from_host(self, arr):
            return torch.from_numpy(np.ascontiguousarray(arr))

    holder = _param_holder()
    py_launches = []

    def py_launch(self, name, grid, block, shm, args):
        spec = gpu_emu.kernel_spec(name)
        assert len(args) == len(spec)
        model = _model_bytes(args, spec)
        if holder is not None:
            assert _holder_bytes(holder, args, spec) == model, name
        py_launches.append((name, HANDLES[name], grid if isinstance(grid, tuple) else (grid, 1), block, shm,
                            int(self.be.stream), model))

    monkeypatch.setattr(L, "_backend_for", lambda acts: (CpuTorch(), acts, lambda r: r))
    monkeypatch.setattr(L, "is_cuda_array", lambda x: isinstance(x, torch.Tensor))
    monkeypatch.setattr(L._Call, "_launch", py_launch)
    monkeypatch.setattr(L, "_DeviceGuard", lambda ordinal: contextlib.nullcontext())
    monkeypatch.setattr(L, "_kernel_handles", lambda ordinal: HANDLES)
    monkeypatch.setattr(fct, "_launcher", lambda: L)
    monkeypatch.setattr(fct, "_on_device", lambda x: isinstance(x, torch.Tensor) and not getattr(x, "_host", False))
    monkeypatch.setattr(fct, "_upload", lambda arr, device: torch.from_numpy(arr.copy()))
    names = {v: k for k, v in HANDLES.items()}
    F.recorder_enable()

    def run(mode, fn):
        monkeypatch.setattr(L, "LAUNCH_MODE", mode)
        py_launches.clear()
        F.recorder_take()
        keep = fn()  # results kept alive until the comparison (addresses must not be reused)
        if mode == "python":
            return list(py_launches), keep
        assert not py_launches, "the C route went through cuda.core's launch"
        out = []
        for r in F.recorder_take():
            name = names[r["f"]]
            spec = gpu_emu.kernel_spec(name)
            assert r["grid"][2] == 1 and r["block"][1:] == (1, 1) and not r["extra"]
            assert len(r["params"]) == len(spec)
            out.append((name, r["f"], r["grid"][:2], r["block"][0], r["shm"], r["stream"],
                        [p[:_SIZE[k]] for p, (_, k) in zip(r["params"], spec)]))
        return out, keep

    yield run
    F.recorder_disable()


def _decode(params, spec):
    fmt = {"p": "<Q", "i": "<i", "q": "<q", "d": "<d"}
    return [struct.unpack(fmt[k], p[:_SIZE[k]])[0] for p, (_, k) in zip(params, spec)]


def _case(seed, T=10, N=3, C=6, S=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, N, C, generator=g, dtype=torch.float64) * 2).to(dtype)
    il = torch.randint(T // 2, T + 1, (N,), generator=g)
    il[0] = T
    tl = torch.randint(1, S + 1, (N,), generator=g)
    tl[-1] = S
    tg = torch.randint(1, C, (N, S), generator=g)
    return x, tg, il, tl


def _flows():
    """name -> function running one flow on the stand-in launcher (returning what must stay alive)."""
    def route(dtype, reduction, from_logits, concat=False, host=False):
        def f():
            x, tg, il, tl = _case(3, dtype=dtype)
            if concat:
                tg = torch.cat([tg[n, : int(tl[n])] for n in range(tg.shape[0])])
            if host:
                for t in (tg, il, tl):
                    t._host = True
            xin = x if from_logits else x.log_softmax(-1)
            xl = xin.clone().requires_grad_()
            loss = fct._cuda_ctc_loss(xl, tg, il, tl, 0, reduction, False, from_logits)
            (loss.sum() if reduction == "none" else loss).backward()
            return xl, loss
        return f

    def entry_alpha():
        x, tg, il, tl = _case(4, dtype=torch.float64)
        return L.run_device(x, tg, il, tl, blank=0, from_logits=True, want_grad=True, want_alpha=True,
                            grad_weights=torch.rand(3, dtype=torch.float64), mean_weights=True)

    def split_backward():
        x, tg, il, tl = _case(5)
        costs, ws = L.torch_forward(x, tg, il, tl, from_logits=True)
        grad = L.torch_backward(x, tg, il, tl, ws, torch.ones(()), from_logits=True, mean=True)
        return costs, ws, grad

    def block_kernel():  # 2 S + 1 > 256 states: the warp and the block kernel both launch, split by sel
        x, tg, il, tl = _case(6, T=300, N=2, C=7, S=140)
        return L.torch_ctc(x, tg, il, tl, from_logits=False)

    flows = {f"torch {d} {r} {'logits' if fl else 'log_probs'}": route(getattr(torch, d), r, fl)
             for d in ("float32", "float64") for r in ("mean", "sum", "none") for fl in (True, False)}
    flows["torch concat device lengths"] = route(torch.float32, "mean", True, concat=True)
    flows["torch host targets/lengths"] = route(torch.float32, "sum", True, host=True)
    flows["run_device with log_alpha and weights"] = entry_alpha
    flows["torch_forward / torch_backward"] = split_backward
    flows["warp and block kernels"] = block_kernel
    return flows


@pytest.mark.parametrize("flow", list(_flows()))
def test_c_route_packs_what_cuda_core_is_given(standin, flow):
    fn = _flows()[flow]
    py, keep_py = standin("python", fn)
    c, keep_c = standin("c", fn)
    assert len(py) == len(c) >= 2
    # addresses differ between the two runs (fresh tensors): compare everything else exactly,
    # and pointers by whether they are null; the same run's addresses are compared below
    for a, b in zip(py, c):
        assert a[:6] == b[:6], (a[:6], b[:6])
        spec = gpu_emu.kernel_spec(a[0])
        for (name, kind), pa, pb in zip(spec, a[6], b[6]):
            if kind == "p":
                assert (pa == bytes(8)) == (pb == bytes(8)), name
            else:
                assert pa == pb, (flow, a[0], name, _decode([pa], [(name, kind)]), _decode([pb], [(name, kind)]))
    if "block" in flow:
        assert [n for n, *_ in c] == ["fctc_trellis_f32_w8", "fctc_trellis_f32_b4", "fctc_grad_f32"]


def test_c_route_packs_the_same_addresses_as_the_python_route(standin, monkeypatch):
    """One _Call, launched by both routes: the pointers too are byte-identical."""
    x, tg, il, tl = _case(7)
    costs = torch.empty(3)
    grad = torch.empty_like(x)
    w = torch.rand(3)
    call = L._Call(x, tg, il, tl, blank=0, from_logits=True, want_grad=True)
    call.values.update(costs=costs.data_ptr(), grad=grad.data_ptr())
    call.set_weights(w, True)
    out = {}
    for mode in ("python", "c"):
        def run():
            call.launch_forward()
            call.launch_grad()
        out[mode], _ = standin(mode, run)
    assert [r[:6] for r in out["python"]] == [r[:6] for r in out["c"]]
    assert [r[6] for r in out["python"]] == [r[6] for r in out["c"]]
    names = [r[0] for r in out["c"]]
    assert names == ["fctc_lse_f32", "fctc_trellis_f32_w2", "fctc_grad_f32"]
    vals = _decode(out["c"][2][6], L.TRELLIS_ARGS)
    got = dict(zip([n for n, _ in L.TRELLIS_ARGS], vals))
    assert got["w"] == w.data_ptr() and got["grad"] == grad.data_ptr() and got["mean"] == 1 and got["w_kind"] == 1


def test_emulated_c_route_matches_cpu_route(standin, monkeypatch, emu):
    """The C route's recorded launches, decoded and run by the emulated kernels as they are
    made: fastctc.torch's losses and gradients equal the CPU route's."""
    lib = emu
    names = {v: k for k, v in HANDLES.items()}
    real = F.launch

    def launch_and_run(name, f, stream, grid, block, shm, spec, values, lo=-1, hi=-1):
        real(name, f, stream, grid, block, shm, spec, values, lo, hi)
        (r,) = F.recorder_take()
        assert names[r["f"]] == name
        kinds = gpu_emu.kernel_spec(name)
        gpu_emu.launch(lib, name, r["grid"][:2], r["block"][0], r["shm"], _decode(r["params"], kinds), kinds)

    class Fast:  # the _Call route's C launches (the compiled torch route declines: tests/test_cuda_torch_call.py)
        launch = staticmethod(launch_and_run)
        torch_call = staticmethod(lambda *args: None)

    L._c_launcher()  # makes the specs (the recorder is on: no driver is asked for)
    monkeypatch.setattr(L, "_fast", Fast)
    monkeypatch.setattr(L, "LAUNCH_MODE", "c")
    for reduction in ("none", "mean"):
        for from_logits in (True, False):
            x, tg, il, tl = _case(8, T=12, N=3, C=5, S=3, dtype=torch.float64)
            xin = x if from_logits else x.log_softmax(-1)
            xd = xin.clone().requires_grad_()
            ld = fct._cuda_ctc_loss(xd, tg, il, tl, 0, reduction, False, from_logits)
            (ld.sum() if reduction == "none" else ld).backward()
            xc = xin.clone().requires_grad_()
            lc = fct.ctc_loss(xc, tg, il, tl, reduction=reduction, from_logits=from_logits)
            (lc.sum() if reduction == "none" else lc).backward()
            np.testing.assert_allclose(ld.detach().numpy(), lc.detach().numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(xd.grad.numpy(), xc.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_launch_errors_name_the_kernel_and_the_argument():
    spec = F.Spec(L.LSE_ARGS)
    values = dict(acts=16, st_t=5, st_n=5, T=8, N=1, C=5, lse=32)
    F.recorder_enable(result=700)
    try:
        with pytest.raises(RuntimeError, match=r"fctc_lse_f32.*700"):
            F.launch("fctc_lse_f32", 1, 2, 1, 256, 0, spec, values)
        F.recorder_enable()
        with pytest.raises(OverflowError, match="'T'"):
            F.launch("fctc_lse_f32", 1, 2, 1, 256, 0, spec, dict(values, T=2 ** 31))
        with pytest.raises(OverflowError, match="'acts'"):
            F.launch("fctc_lse_f32", 1, 2, 1, 256, 0, spec, dict(values, acts=-1))
        with pytest.raises(TypeError, match="'C'"):
            F.launch("fctc_lse_f32", 1, 2, 1, 256, 0, spec, dict(values, C="5"))
        with pytest.raises(KeyError, match="'lse'"):
            F.launch("fctc_lse_f32", 1, 2, 1, 256, 0, spec, {k: v for k, v in values.items() if k != "lse"})
        assert F.recorder_take() == []  # nothing was launched with a bad value
        F.launch("fctc_lse_f32", 7, 9, (3, 2), 64, 128, spec, values)
        (r,) = F.recorder_take()
        assert (r["f"], r["stream"], r["grid"], r["block"], r["shm"]) == (7, 9, (3, 2, 1), (64, 1, 1), 128)
        assert _decode(r["params"], L.LSE_ARGS) == [16, 5, 5, 8, 1, 5, 32]
    finally:
        F.recorder_disable()
    with pytest.raises(ValueError, match="kind"):
        F.Spec([("a", "x")])


def test_module_touches_no_driver_until_used():
    """Importing fastctc._cuda_fast installs no driver function (it would need libcuda):
    without set_driver_launch a launch says so instead of crashing."""
    import os
    import subprocess
    import sys
    code = ("from fastctc import _cuda_fast as F\n"
            "assert not F.driver_installed() and not F.recording()\n"
            "try:\n"
            "    F.launch('k', 1, 0, 1, 32, 0, F.Spec([('a', 'i')]), {'a': 1})\n"
            "except RuntimeError as e:\n"
            "    assert 'not installed' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('launched without a driver')\n"
            "print('ok')\n")
    pyx = os.path.dirname(os.path.dirname(F.__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=pyx))
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_launch_mode_from_env(monkeypatch):
    for raw, mode in (("", "c"), ("c", "c"), (" C ", "c"), ("python", "python"), (" Python", "python")):
        monkeypatch.setenv("FASTCTC_CUDA_LAUNCH", raw)
        assert L._launch_mode_from_env() == mode
    monkeypatch.setenv("FASTCTC_CUDA_LAUNCH", "fast")
    with pytest.warns(RuntimeWarning, match="FASTCTC_CUDA_LAUNCH"):
        assert L._launch_mode_from_env() == "c"


@pytest.mark.parametrize("explicit", [False, True])
def test_default_mode_falls_back_when_the_driver_gives_no_entry_point(monkeypatch, explicit):
    """The default ("c") becomes "python" with a warning when cuGetProcAddress gives nothing;
    FASTCTC_CUDA_LAUNCH=c raises instead."""
    def no_driver(symbol):
        raise RuntimeError(f"the compiled CUDA launcher needs the driver's {symbol}")

    F.recorder_disable()
    F.reset_driver()
    monkeypatch.setattr(L, "_driver_address", no_driver)
    monkeypatch.setattr(L, "_fast", None)
    monkeypatch.setattr(L, "LAUNCH_MODE", "c")
    monkeypatch.setattr(L, "_LAUNCH_EXPLICIT", explicit)
    if explicit:
        with pytest.raises(RuntimeError, match="cuLaunchKernel"):
            L.compiled_route()
        assert L.LAUNCH_MODE == "c"
        return
    with pytest.warns(RuntimeWarning, match="launching through cuda.core instead"):
        assert L.compiled_route() is None
    assert L.LAUNCH_MODE == "python" and not L._c_ready()
    assert not F.driver_installed()
