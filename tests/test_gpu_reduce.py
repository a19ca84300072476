"""cuda/ctc.cu's loss reduction (fctc_reduce_f32 / _f64) and the emulated driver
(tests/gpu_emu.py's emu_cuLaunchKernel), run on the host (no GPU).

* the reduction kernel at its launch geometry (one block of 256 threads) against
  fastctc._reduction.reduce_losses on NumPy, for every mode ('none' with zero_infinity,
  'sum', 'mean'), zero_infinity on and off, float32 / float64 costs with +inf, NaN and
  -inf mixed in, target lengths int32 / int64 with strides 1 and 2, lengths 0 and large,
  N from 0 to 1000.  Tolerances: float32 results within 1 ulp (float32) of reduce_losses'
  float64 sum; float64 results within the kernel order's rounding bound,
  (ceil(N / 256) + 8) * eps * sum |term| (every partial is a sum of at most ceil(N / 256)
  terms, and the tree is 8 levels deep), of the exactly rounded sum (math.fsum);
  non-finite results equal (NaN where the reference is NaN, the same infinity).  And bit
  for bit: a model of the kernel's documented summation order in Python floats, two runs,
  and blocks of 32 / 96 / 256 threads (the order depends on N only);
* the emulated driver: launches through emu_cuLaunchKernel (arguments packed by hand as a
  void ** array, as the driver reads them) give gpu_emu.launch's bits for a trellis +
  gradient flow (warp and block kernels, logits) and a reduction; an unknown handle or a
  geometry the emulation does not run returns an error code;
* fastctc._cuda_launch._Call.launch_reduce through the emulated kernels, both launch
  routes (cuda.core's, redirected to gpu_emu, and the compiled one, whose packed bytes are
  run by the emulated driver), gives reduce_losses' value.
"""
import ctypes
import math
import os
import subprocess
import sys

import gpu_emu
import numpy as np
import pytest
from fastctc import _cuda_build
from fastctc import _cuda_launch as L
from fastctc._reduction import reduce_losses
from reference import random_case

LANES = 256


def _costs(rng, N, dtype, special):
    """Non-negative losses (as the engine gives) with special values mixed in."""
    c = rng.uniform(0.0, 50.0, size=N) * rng.choice([1e-3, 1.0, 1e3], size=N)
    if N:
        picks = {"finite": [], "+inf": [np.inf], "nan": [np.nan], "-inf": [-np.inf],
                 "+inf -inf": [np.inf, -np.inf], "+inf nan": [np.inf, np.nan, np.inf]}[special]
        for v in picks:
            c[rng.integers(0, N)] = v
    return c.astype(dtype)


def _lengths(rng, N, kind):
    """(device-side view, host values): target lengths int32/int64, stride 1 or 2, with 0, 1
    and large values (the weight uses max(length, 1))."""
    dtype, stride = {"i32": (np.int32, 1), "i64": (np.int64, 1), "i32/2": (np.int32, 2),
                     "i64/2": (np.int64, 2)}[kind]
    big = np.iinfo(np.int32).max if dtype == np.int32 else 2 ** 40 + 3
    tl = rng.integers(0, 40, size=N).astype(dtype)
    if N:
        tl[0] = 0
        tl[-1] = big
        tl[N // 2] = 1
    store = np.full(N * stride, -12345, dtype=dtype)  # the skipped slots hold garbage
    store[::stride] = tl
    return store, tl


def _model(costs, tl, mode, zero_inf):
    """The kernel's documented summation order, in Python floats (IEEE double)."""
    N = len(costs)
    part = [0.0] * LANES
    for v in range(LANES):
        s = 0.0
        for n in range(v, N, LANES):
            c = float(costs[n])
            if zero_inf and c == math.inf:
                c = 0.0
            if mode == 2:
                t = int(tl[n])
                d = float(t) if t > 1 else 1.0
                c *= 1.0 / (d * N)
            s += c
        part[v] = s
    h = LANES // 2
    while h:
        for v in range(h):
            part[v] += part[v + h]
        h //= 2
    return math.nan if mode == 2 and N == 0 else part[0]


def _reduce(lib, costs, store, mode, zero_inf, *, block=LANES, out=None):
    """One emulated launch of fctc_reduce_<costs' type>; returns out."""
    N = len(costs)
    if out is None:
        out = np.full(N if mode == 0 else 1, 7.0, dtype=costs.dtype)
    stride = 2 if len(store) == 2 * N and N else 1
    suffix = "f64" if costs.dtype == np.float64 else "f32"
    gpu_emu.launch(lib, "fctc_reduce_" + suffix, 1, block, 0,
                   [costs.ctypes.data, N, store.ctypes.data, int(store.dtype == np.int64), stride, mode,
                    int(zero_inf), out.ctypes.data], L.REDUCE_ARGS)
    return out


def _check_close(got, want, terms, dtype):
    """got (the kernel's) against want (reduce_losses' float64 sum, or the exact sum)."""
    got, want = float(got), float(want)
    if not math.isfinite(want):
        assert (math.isnan(got) and math.isnan(want)) or got == want, (got, want)
        return
    if dtype == np.float32:
        assert abs(got - want) <= np.spacing(np.float32(abs(want))), (got, want)
    else:
        exact = math.fsum(terms)
        bound = (-(-len(terms) // LANES) + 8) * np.finfo(np.float64).eps * math.fsum(abs(t) for t in terms)
        assert abs(got - exact) <= bound, (got, exact, bound)


def _terms(costs, tl, mode, zero_inf):
    c = costs.astype(np.float64)
    if zero_inf:
        c = np.where(c == np.inf, 0.0, c)
    if mode == 2:
        d = np.where(tl > 1, tl, 1).astype(np.float64)
        c = c * (1.0 / (d * len(c)))
    return list(c)


NS = (0, 1, 3, 7, 8, 300, 1000)
SPECIALS = ("finite", "+inf", "nan", "-inf", "+inf -inf", "+inf nan")
TL_KINDS = ("i32", "i64", "i32/2", "i64/2")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reduce_matches_reduce_losses(emu, dtype, reduction):
    mode = L.REDUCE_MODES[reduction]
    rng = np.random.default_rng(5 + mode)
    for i, N in enumerate(NS):
        for j, special in enumerate(SPECIALS):
            kind = TL_KINDS[(i + j) % len(TL_KINDS)]  # every length layout meets every N and special
            costs = _costs(rng, N, dtype, special)
            store, tl = _lengths(rng, N, kind)
            for zero_inf in (False, True):
                got = _reduce(emu, costs, store, mode, zero_inf)[0]
                with np.errstate(invalid="ignore"):  # +inf + -inf: NaN, as the kernel gives
                    want = reduce_losses(costs.copy(), tl, reduction, zero_inf)
                assert want.dtype == dtype
                where = (N, special, kind, zero_inf)
                _check_close(got, want, _terms(costs, tl, mode, zero_inf), dtype)
                model = dtype(_model(costs, tl, mode, zero_inf))
                assert got.tobytes() == model.tobytes() or (np.isnan(got) and np.isnan(model)), (where, got, model)
                if N == 0:
                    assert (np.isnan(got) if reduction == "mean" else got == 0), where


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduce_none_zeroes_infinities(emu, dtype):
    """mode 0: +inf -> 0, NaN and -inf kept; into another array and in place."""
    rng = np.random.default_rng(3)
    for N in NS:
        for special in ("+inf", "+inf -inf", "+inf nan"):
            costs = _costs(rng, N, dtype, special)
            store, tl = _lengths(rng, N, "i64")
            want = reduce_losses(costs.copy(), tl, "none", True)
            got = _reduce(emu, costs, store, 0, True)
            np.testing.assert_array_equal(got, want)
            inplace = costs.copy()
            _reduce(emu, inplace, store, 0, True, out=inplace)
            np.testing.assert_array_equal(inplace, want)


def test_reduce_is_bitwise_deterministic(emu):
    """Two runs, and blocks of 32, 96 and 256 threads: the same bits (the order is N's only)."""
    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        for N in (7, 300, 1000):
            costs = _costs(rng, N, dtype, "finite")
            store, tl = _lengths(rng, N, "i32")
            for mode in (1, 2):
                runs = [_reduce(emu, costs, store, mode, True, block=b).tobytes() for b in (256, 256, 32, 96)]
                assert len(set(runs)) == 1, (dtype, N, mode)


def test_reduce_kernels_are_loaded_and_compiled():
    """The launcher loads them (kernel_names) and ctc.cu defines them with REDUCE_ARGS' order."""
    names = _cuda_build.kernel_names()
    assert "fctc_reduce_f32" in names and "fctc_reduce_f64" in names
    text = open(gpu_emu.SOURCE).read()
    sig = text[text.index("fctc_reduce_##suffix("):]
    sig = sig[sig.index("(") + 1:sig.index(")")].replace("\\", " ")
    params = [p.split()[-1].lstrip("*") for p in sig.split(",")]
    assert params == [n for n, _ in L.REDUCE_ARGS]


# ---------------------------------------------------------------- the emulated driver

_CT = {"p": ctypes.c_void_p, "i": ctypes.c_int, "q": ctypes.c_longlong, "d": ctypes.c_double}
_LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, *[ctypes.c_uint] * 7, ctypes.c_void_p,
                           ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p))


def _driver_launcher(lib, record=None):
    """gpu_emu.launch's signature, launching through emu_cuLaunchKernel: each argument in a
    value of its own type, params[i] pointing at argument i."""
    address, handles = gpu_emu.driver(lib)
    fn = _LAUNCH(address)

    def launch(lib_, name, grid, block, shm, args, spec=None):
        spec = gpu_emu.kernel_spec(name) if spec is None else spec
        assert len(args) == len(spec)
        vals = [_CT[k](a) for a, (_, k) in zip(args, spec)]
        params = (ctypes.c_void_p * len(vals))(*[ctypes.addressof(v) for v in vals])
        gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
        rc = fn(handles[name], gx, gy, 1, block, 1, 1, shm, 0xABC, params, None)
        assert rc == 0, (name, rc)
        if record is not None:
            record.append(name)
    return launch


def test_driver_handles_name_every_kernel(emu):
    _, handles = gpu_emu.driver(emu)
    assert sorted(handles) == sorted(_cuda_build.kernel_names())
    assert sorted(handles.values()) == list(range(1, len(handles) + 1))


@pytest.mark.parametrize("force_block", [False, True])
def test_driver_runs_trellis_and_gradient_as_launch_does(emu, monkeypatch, force_block):
    rng = np.random.default_rng(4)
    acts, tg, il, tl = random_case(rng, 12, 4, 6, 3, 0, np.float32)
    kw = dict(blank=0, from_logits=True, want_grad=True, grad_weights=rng.uniform(0.5, 2, 4), mean=True,
              force_block=force_block)
    direct = gpu_emu.run(emu, acts, tg, il, tl, **kw)
    names = []
    monkeypatch.setattr(gpu_emu, "launch", _driver_launcher(emu, names))
    driven = gpu_emu.run(emu, acts, tg, il, tl, **kw)
    assert names[0] == "fctc_lse_f32" and names[-1] == "fctc_grad_f32" and len(names) >= 3
    assert ("fctc_trellis_f32_b4" in names) == force_block
    for a, b in zip(direct, driven):
        if a is not None:
            assert a.tobytes() == b.tobytes()
    assert np.isfinite(direct[0]).any()


def test_driver_runs_a_reduction_as_launch_does(emu):
    rng = np.random.default_rng(6)
    costs = _costs(rng, 300, np.float64, "+inf")
    store, tl = _lengths(rng, 300, "i32/2")
    direct = _reduce(emu, costs, store, 2, True)
    out = np.full(1, 7.0)
    _driver_launcher(emu)(emu, "fctc_reduce_f64", 1, 256, 0,
                          [costs.ctypes.data, 300, store.ctypes.data, 0, 2, 2, 1, out.ctypes.data], L.REDUCE_ARGS)
    assert out.tobytes() == direct.tobytes()
    _check_close(out[0], reduce_losses(costs.copy(), tl, "mean", True), _terms(costs, tl, 2, True), np.float64)


def test_driver_rejects_unknown_handles_and_geometry(emu):
    address, handles = gpu_emu.driver(emu)
    fn = _LAUNCH(address)
    out = np.full(1, 7.0)
    costs = np.ones(3)
    vals = [ctypes.c_void_p(costs.ctypes.data), ctypes.c_int(3), ctypes.c_void_p(0), ctypes.c_int(0),
            ctypes.c_longlong(1), ctypes.c_int(1), ctypes.c_int(0), ctypes.c_void_p(out.ctypes.data)]
    params = (ctypes.c_void_p * 8)(*[ctypes.addressof(v) for v in vals])
    for bad in (0, len(handles) + 1, 0xDEADBEEF):
        assert fn(bad, 1, 1, 1, 256, 1, 1, 0, None, params, None) == 400
    h = handles["fctc_reduce_f64"]
    assert fn(h, 1, 1, 2, 256, 1, 1, 0, None, params, None) == 1   # a 3-D grid
    assert fn(h, 1, 1, 1, 256, 2, 1, 0, None, params, None) == 1   # a 2-D block
    assert fn(h, 1, 1, 1, 256, 1, 1, 0, None, None, None) == 1     # no params
    assert out[0] == 7.0  # none of those ran
    assert fn(h, 1, 1, 1, 256, 1, 1, 0, None, params, None) == 0
    assert out[0] == 3.0


# ---------------------------------------------------------------- _Call.launch_reduce

@pytest.fixture
def emu_calls(emu, monkeypatch):
    """fastctc._cuda_launch on CPU torch tensors, its launches run by the emulated kernels
    (a tensor with `_fake_cuda = True` counts as living on the device)."""
    torch = pytest.importorskip("torch")
    gpu_emu.install_python_route(monkeypatch, emu, torch, lambda x: bool(getattr(x, "_fake_cuda", False)))
    return torch


def _call_cases(torch, rng):
    """(call, host target lengths, costs dtype) for float32 / float64 calls with lengths
    uploaded from the host (int64), on the device as int32, and a stride-2 device view."""
    out = []
    for dtype, form in ((np.float32, "host"), (np.float64, "device"), (np.float32, "strided")):
        N = 5
        acts, tg, il, tl = random_case(rng, 10, N, 6, 3, 0, dtype)
        tl[0] = 0
        if form == "host":
            tl_arg = torch.from_numpy(tl)
        elif form == "device":
            tl_arg = torch.from_numpy(tl.astype(np.int32))
            tl_arg._fake_cuda = True
        else:
            base = torch.from_numpy(np.repeat(tl.astype(np.int32), 2))
            tl_arg = base[::2]
            tl_arg._fake_cuda = True
            assert tl_arg.stride() == (2,)
        call = L._Call(torch.from_numpy(acts), torch.from_numpy(tg), torch.from_numpy(il), tl_arg, blank=0,
                       from_logits=True, want_grad=False)
        out.append((call, tl, dtype, tl_arg))
    return out


def _check_call_reduce(torch, rng, cases):
    for call, tl, dtype, _keep in cases:
        for reduction, zero_inf in (("none", True), ("sum", False), ("sum", True), ("mean", False), ("mean", True)):
            costs = torch.from_numpy(_costs(rng, call.N, dtype, "+inf"))
            want = reduce_losses(costs.numpy().copy(), tl, reduction, zero_inf)
            out = torch.full((call.N,) if reduction == "none" else (1,), 7.0, dtype=costs.dtype)
            call.launch_reduce(costs.data_ptr(), out.data_ptr(), L.REDUCE_MODES[reduction], zero_inf)
            got = out.numpy() if reduction == "none" else out.numpy()[0]
            if reduction == "none":
                np.testing.assert_array_equal(got, want)
            else:
                _check_close(got, want, _terms(costs.numpy(), tl, L.REDUCE_MODES[reduction], zero_inf), dtype)


def test_call_launch_reduce_default_route(emu_calls):
    torch = emu_calls
    rng = np.random.default_rng(12)
    _check_call_reduce(torch, rng, _call_cases(torch, rng))


def test_call_launch_reduce_c_route(emu, emu_calls, monkeypatch):
    """The compiled launcher's packed bytes (its recorder standing in for the driver) handed
    to the emulated driver, as the driver would read them."""
    from fastctc import _cuda_fast as F
    torch = emu_calls
    address, handles = gpu_emu.driver(emu)
    fn = _LAUNCH(address)
    names = {h: n for n, h in handles.items()}
    real = F.launch
    launched = []

    def launch_and_run(name, f, stream, grid, block, shm, spec, values, lo=-1, hi=-1):
        real(name, f, stream, grid, block, shm, spec, values, lo, hi)
        (r,) = F.recorder_take()
        assert names[r["f"]] == name and r["stream"] == 0 and not r["extra"]
        slots = [ctypes.create_string_buffer(p, 8) for p in r["params"]]
        params = (ctypes.c_void_p * len(slots))(*[ctypes.addressof(s) for s in slots])
        assert fn(r["f"], *r["grid"], *r["block"], r["shm"], r["stream"], params, None) == 0
        launched.append(name)

    class Fast:
        launch = staticmethod(launch_and_run)

    F.recorder_enable()
    try:
        L._c_launcher()  # makes the specs (the recorder is on: no driver is asked for)
        monkeypatch.setattr(L, "_fast", Fast)
        monkeypatch.setattr(L, "_kernel_handles", lambda ordinal: handles)
        monkeypatch.setattr(L, "LAUNCH_MODE", "c")
        rng = np.random.default_rng(13)
        _check_call_reduce(torch, rng, _call_cases(torch, rng))
    finally:
        F.recorder_disable()
    assert set(launched) == {"fctc_reduce_f32", "fctc_reduce_f64"}


def test_call_launch_reduce_of_an_empty_batch(emu_calls):
    torch = emu_calls
    call = L._Call(torch.zeros(4, 0, 3), torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                   torch.zeros(0, dtype=torch.int64), blank=0, from_logits=False, want_grad=False)
    costs = torch.zeros(0)
    for reduction, want in (("sum", 0.0), ("mean", math.nan)):
        out = torch.full((1,), 7.0)
        call.launch_reduce(costs.data_ptr(), out.data_ptr(), L.REDUCE_MODES[reduction], True)
        np.testing.assert_array_equal(out.numpy(), [want])
    call.launch_reduce(costs.data_ptr(), costs.data_ptr(), 0, True)  # nothing to do, nothing launched


def test_compiled_launcher_drives_the_emulated_driver(emu, tmp_path):
    """fastctc._cuda_fast with emu_cuLaunchKernel installed as the driver (in a child process:
    the driver, once installed, stays for the process): _Call.launch_reduce in the C route
    runs the kernel through the real packing and the driver-side unpacking."""
    lib_path = emu._name
    code = f"""
import contextlib, math, sys, ctypes
import numpy as np, torch
sys.path.insert(0, {os.path.dirname(__file__)!r})
import gpu_emu
from fastctc import _cuda_fast as F, _cuda_launch as L
from fastctc._reduction import reduce_losses
lib = ctypes.CDLL({lib_path!r})
address, handles = gpu_emu.driver(lib)
F.set_driver_launch(address)

class CpuTorch(L._Torch):
    def __init__(self):
        self.torch, self.device, self.ordinal, self.stream = torch, torch.device("cpu"), 0, 0
    def from_host(self, arr):
        return torch.from_numpy(np.ascontiguousarray(arr))

L._backend_for = lambda acts: (CpuTorch(), acts, lambda r: r)
L.is_cuda_array = lambda x: False
L._DeviceGuard = lambda ordinal: contextlib.nullcontext()
L._kernel_handles = lambda ordinal: handles
L.LAUNCH_MODE = "c"
tl = np.array([0, 3, 1, 2, 5], dtype=np.int64)
call = L._Call(torch.zeros(6, 5, 4), torch.ones(5, 5, dtype=torch.int64), torch.full((5,), 6), torch.from_numpy(tl),
               blank=0, from_logits=True, want_grad=False)
costs = torch.tensor([1.5, float("inf"), 2.0, 0.25, 3.0])
out = torch.full((1,), 7.0)
call.launch_reduce(costs.data_ptr(), out.data_ptr(), 2, 1)
want = reduce_losses(costs.numpy().copy(), tl, "mean", True)
assert abs(float(out[0]) - float(want)) <= np.spacing(np.float32(want)), (out, want)
try:
    F.launch("nosuch", len(handles) + 1, 0, 1, 256, 0, F.Spec(L.REDUCE_ARGS),
             dict(costs=0, N=0, tg_len=0, tl64=0, tl_st=1, mode=1, zero_inf=0, out=0))
except RuntimeError as e:
    assert "400" in str(e), e
else:
    raise SystemExit("an unknown handle launched")
print("driver-ok", float(out[0]))
"""
    pyx = os.path.dirname(os.path.dirname(L.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pyx, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and "driver-ok" in out.stdout, out.stderr[-4000:]
