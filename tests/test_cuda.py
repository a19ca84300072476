"""GPU path (cuda/ctc.cu + fastctc._cuda_build / _cuda_launch).

Layers, so that the kernels are checked on every machine, not only on one with a GPU:
  * compile: NVRTC (cuda-bindings + cuda-core + the NVRTC wheel; no GPU or driver needed)
    builds ctc.cu for sm_80 / sm_90 / sm_100; nvcc -c does too when it is installed, with the
    same options; the kernels' argument list matches the launcher's; the disk cache (its
    key, recompiling a cubin that does not load) and the compile-error report work.
  * emulation: tests/test_gpu_emulation.py (the kernels at their real geometry on the host).
  * stand-ins (every machine): status() on each branch with fake cuda modules; CTCLossV2's
    routing of device arrays to run_device with a fake _cuda.
  * device (skipped without a usable CUDA GPU): parity with the CPU engine and a float64
    reference, determinism, the long case, float16/bfloat16, CTCLossV2, the torch adapter.
    benchmarks/gpu_check.py runs these and the device-only checks in one command.
Run the GPU part alone with:  PYTHONPATH=$PWD/pyx python -m pytest -q tests/test_cuda.py -m "not slow or slow"
"""
import os
import re
import shutil
import subprocess
import types

import fastctc
import numpy as np
import pytest
from fastctc import _cuda, _cuda_build
from reference import random_case
from test_gpu_emulation import ref_log_alpha

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
SOURCE = os.path.join(ROOT, "cuda", "ctc.cu")


def _nvrtc_or_skip():
    pytest.importorskip("cuda.core", reason="cuda-core is not installed (pip install cuda-core cuda-bindings)")
    try:
        return _cuda.nvrtc_version()
    except Exception as exc:  # bindings present but libnvrtc missing
        pytest.skip(f"NVRTC cannot be loaded: {exc} (pip install nvidia-cuda-nvrtc)")


# ---------------------------------------------------------------- compile (every machine)

# one arch in the fast suite (an NVRTC compile of every kernel takes ~30 s on 2 cores)
@pytest.mark.parametrize("arch", ["sm_90", pytest.param("sm_80", marks=pytest.mark.slow),
                                  pytest.param("sm_100", marks=pytest.mark.slow)])
def test_nvrtc_compiles(arch, tmp_path, monkeypatch):
    _nvrtc_or_skip()
    monkeypatch.setenv("FASTCTC_CACHE_DIR", str(tmp_path))
    cubin = _cuda.compile_cubin(arch)
    assert cubin[:4] == b"\x7fELF"
    # cached: one file, named after the arch, read back identically
    files = os.listdir(tmp_path)
    assert len(files) == 1 and arch in files[0] and files[0].endswith(".cubin")
    assert _cuda.compile_cubin(arch) == cubin
    for kernel in _cuda_build.kernel_names():  # every entry point the launcher loads
        assert kernel.encode() in cubin, kernel


def test_compile_error_is_readable(tmp_path, monkeypatch):
    _nvrtc_or_skip()
    monkeypatch.setenv("FASTCTC_CACHE_DIR", str(tmp_path))
    bad = 'extern "C" __global__ void k(float *x) {\n  x[0] = undefined_name;\n}\n'
    with pytest.raises(_cuda.CUDACompileError) as info:
        _cuda.compile_cubin("sm_80", source=bad)
    msg = str(info.value)
    assert "undefined_name" in msg and "    2  " in msg
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ["sm_90", pytest.param("sm_80", marks=pytest.mark.slow)])
def test_nvcc_compiles(arch, tmp_path):
    out = subprocess.run(["nvcc", "-c", "-x", "cu", *_cuda.NVCC_FLAGS, f"-arch={arch}", "-Werror", "all-warnings",
                          "-o", str(tmp_path / "ctc.o"), SOURCE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_kernel_arguments_match_launcher():
    text = open(SOURCE).read()
    block = text[text.index("#define FCTC_FIELDS(X)"):text.index("#define FCTC_DECLARE")]
    block = re.sub(r"/\*.*?\*/", "", block, flags=re.S)
    fields = re.findall(r"X\(([^,]+),\s*(\w+)\)", block)
    kinds = {"int": "i", "fctc_i64": "q", "double": "d"}
    got = [(name, "p" if "*" in ctype else kinds[ctype.strip()]) for ctype, name in fields]
    assert got + [("end_marker", "i")] == list(_cuda.TRELLIS_ARGS)


def test_nvcc_flags_and_nvrtc_options_agree():
    """One source for the options: NVCC_FLAGS is NVRTC_OPTIONS spelt for nvcc, made from it
    (a changed option changes both; an option nvcc_flags cannot spell is an error)."""
    opts = dict(_cuda.NVRTC_OPTIONS)
    assert f"-std={opts['std']}" in _cuda.NVCC_FLAGS
    assert ("--fmad=false" in _cuda.NVCC_FLAGS) == (opts["fma"] is False)
    assert _cuda.NVCC_FLAGS == _cuda_build.nvcc_flags()
    assert _cuda_build.nvcc_flags((("std", "c++20"), ("fma", True))) == ("-std=c++20", "--fmad=true")
    with pytest.raises(KeyError, match="no nvcc spelling"):
        _cuda_build.nvcc_flags((("std", "c++17"), ("device_code_optimize", True)))


def test_cache_key_covers_options_and_versions(monkeypatch):
    _nvrtc_or_skip()
    src = "x"
    base = _cuda_build.cache_key(src, "sm_90")
    assert _cuda_build.cache_key(src, "sm_80") != base and _cuda_build.cache_key("y", "sm_90") != base
    monkeypatch.setattr(_cuda_build, "NVRTC_OPTIONS", (("std", "c++17"), ("fma", True)))
    assert _cuda_build.cache_key(src, "sm_90") != base
    monkeypatch.undo()
    monkeypatch.setattr(_cuda_build, "cuda_core_version", lambda: "0.0.1")
    assert _cuda_build.cache_key(src, "sm_90") != base
    monkeypatch.undo()
    monkeypatch.setattr(_cuda_build, "nvrtc_version", lambda: "99.0")
    assert _cuda_build.cache_key(src, "sm_90") != base
    monkeypatch.undo()
    monkeypatch.setattr(_cuda_build, "PROGRAM_NAME", "other.cu")
    assert _cuda_build.cache_key(src, "sm_90") != base


def test_cubin_that_does_not_load_is_recompiled(tmp_path, monkeypatch):
    """A cached cubin the driver rejects (truncated, foreign) is compiled afresh, the cache
    entry replaced, and the caller's current context restored (stand-in driver/device)."""
    import sys
    import types
    monkeypatch.setenv("FASTCTC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cuda_build, "_loaded", {})
    monkeypatch.setattr(_cuda_build, "read_source", lambda: "source text")
    monkeypatch.setattr(_cuda_build, "cache_key", lambda source, arch: "k")
    compiled = []

    def fake_compile(arch, source=None, use_cache=True):
        path = _cuda_build.cache_path(source, arch)
        if use_cache and os.path.isfile(path):
            return open(path, "rb").read()
        compiled.append(use_cache)
        data = b"\x7fELF good"
        if use_cache:
            open(path, "wb").write(data)
        return data

    def fake_load(cubin):
        if cubin != b"\x7fELF good":
            raise RuntimeError("CUDA_ERROR_INVALID_IMAGE")
        return {"fctc_grad_f32": "kernel"}

    monkeypatch.setattr(_cuda_build, "compile_cubin", fake_compile)
    monkeypatch.setattr(_cuda_build, "_load", fake_load)
    current = ["caller"]
    drv = types.SimpleNamespace(cuCtxGetCurrent=lambda: (0, current[0]),
                                cuCtxSetCurrent=lambda ctx: current.__setitem__(0, ctx) or (0,))

    class Dev:
        arch = "90"

        def __init__(self, ordinal):
            pass

        def set_current(self):
            current[0] = "device 0"

    monkeypatch.setitem(sys.modules, "cuda.core", types.SimpleNamespace(Device=Dev))
    monkeypatch.setitem(sys.modules, "cuda.bindings", types.SimpleNamespace(driver=drv))
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", drv)
    (tmp_path / "ctc-sm_90-k.cubin").write_bytes(b"\x7fELF trunc")
    assert _cuda_build.kernels(0) == {"fctc_grad_f32": "kernel"}
    assert compiled == [False]                            # one fresh compile, its cubin then cached
    assert (tmp_path / "ctc-sm_90-k.cubin").read_bytes() == b"\x7fELF good"
    assert current[0] == "caller"                         # the caller's context is current again


def test_import_fastctc_does_not_import_cuda():
    code = ("import sys, fastctc; fastctc.ctc_loss; "
            "assert 'cuda.core' not in sys.modules and 'fastctc._cuda' not in sys.modules")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "pyx"))
    subprocess.run(["python", "-c", code], check=True, env=env)


def test_status_never_raises():
    st = _cuda.status()
    assert set(st) >= {"available", "reason", "device", "nvrtc"}
    assert isinstance(st["available"], bool) and st["reason"]


def _fake_cuda_stack(monkeypatch, *, libcuda=True, init=0, count=1, arch="90", name="Fake GPU", driver=12080,
                     nvrtc=(12, 8), archs=(75, 80, 86, 89, 90)):
    """Stand-in cuda.core / cuda.bindings modules, so status() is checked on every branch."""
    import sys
    import types

    class Err(int):
        pass

    drv = types.SimpleNamespace()

    def cuInit(flags):
        if not libcuda:
            raise OSError("libcuda.so.1: cannot open shared object file")
        return (Err(init),)

    drv.cuInit = cuInit
    drv.cuGetErrorName = lambda e: (0, {100: b"CUDA_ERROR_NO_DEVICE", 999: b"CUDA_ERROR_UNKNOWN"}[int(e)])
    drv.cuDriverGetVersion = lambda: (0, driver)
    drv.cuDeviceGetCount = lambda: (0, count)
    nv = types.SimpleNamespace(nvrtcVersion=lambda: (0, *nvrtc), nvrtcGetSupportedArchs=lambda: (0, list(archs)))
    bindings = types.SimpleNamespace(driver=drv, nvrtc=nv)
    core = types.SimpleNamespace(__version__="9.9", Device=lambda i: types.SimpleNamespace(name=name, arch=arch))
    for key, mod in (("cuda.core", core), ("cuda.bindings", bindings), ("cuda.bindings.driver", drv),
                     ("cuda.bindings.nvrtc", nv)):
        monkeypatch.setitem(sys.modules, key, mod)


def test_status_reports_device_arch_and_versions(monkeypatch):
    _fake_cuda_stack(monkeypatch)
    st = _cuda.status()
    assert st["available"] and st["reason"] == "ok"
    assert (st["device"], st["arch"], st["devices"], st["nvrtc"], st["driver"]) == ("Fake GPU", "sm_90", 1, "12.8",
                                                                                   "12.8")
    assert "warning" not in st
    assert fastctc.info()["cuda"] == st


@pytest.mark.parametrize("case,expect", [
    (dict(libcuda=False), "no NVIDIA driver"),
    (dict(init=100), "no CUDA device"),
    (dict(init=999), "cuInit returned CUDA_ERROR_UNKNOWN"),
    (dict(count=0), "no CUDA device"),
    (dict(arch="70"), "cannot compile for sm_70"),
])
def test_status_says_why_not(monkeypatch, case, expect):
    _fake_cuda_stack(monkeypatch, **case)
    st = _cuda.status()
    assert not st["available"] and expect in st["reason"]


def test_status_warns_when_driver_is_older_than_nvrtc(monkeypatch, capsys):
    _fake_cuda_stack(monkeypatch, driver=12040, nvrtc=(13, 0))
    st = _cuda.status()
    assert st["available"] and "nvidia-cuda-nvrtc-cu12" in st["warning"]
    from fastctc import cli
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if "CUDA" in ln]
    assert len(line) == 1 and "Fake GPU" in line[0] and "sm_90" in line[0] and "13.0" in line[0]
    assert "None" not in line[0] and len(out.splitlines()) <= 24


def test_info_without_cuda_core_says_how_to_get_it(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "cuda.core", None)
    st = fastctc.info()["cuda"]
    assert st["available"] is False and "pip install fastctc[cuda]" in st["reason"]
    from fastctc import cli
    assert cli.main(["info"]) == 0
    assert "pip install fastctc[cuda]" in capsys.readouterr().out


# ---------------------------------------------------------------- helpers of the device tests

def _cpu(acts, targets, il, tl, blank, from_logits, weights=None):
    """The CPU engine's loss and gradient (its plain mode: never want_alpha, whose values
    for infeasible targets are not a reference)."""
    batch, blank = fastctc._validate.check_ctc_inputs(acts, targets, il, tl, blank)
    c, g, _ = fastctc._engine.run(batch, blank, from_logits, want_grad=True, grad_weights=weights)
    return c, g, None




# ---------------------------------------------------------------- CTCLossV2 routing (stand-in device)

class _FakeDeviceArray(np.ndarray):
    """A host array that claims to live on a CUDA device, for the routing contract."""
    __cuda_array_interface__ = {}


def _fake_dev(x):
    return np.asarray(x).view(_FakeDeviceArray)


def _fake_cuda_module(calls):
    """A stand-in fastctc._cuda: is_cuda_array / run_device on the CPU engine, results as
    _FakeDeviceArray (the 'caller's kind')."""
    import types

    def run_device(acts, targets, input_lengths, target_lengths, *, blank, from_logits, want_grad,
                   grad_weights=None, want_alpha=False, **extra):
        calls.append(dict(kinds=tuple(type(a).__name__ for a in (acts, targets, input_lengths, target_lengths)),
                          blank=blank, from_logits=from_logits, want_grad=want_grad, grad_weights=grad_weights,
                          want_alpha=want_alpha, extra=extra))
        acts, tg = np.asarray(acts), np.asarray(targets)
        batch, b = fastctc._validate.check_ctc_inputs(acts, tg, np.asarray(input_lengths), np.asarray(target_lengths),
                                                      blank)
        c, g, la = fastctc._engine.run(batch, b, from_logits, want_grad=want_grad, want_alpha=want_alpha,
                                       alpha_cols=2 * tg.shape[1] + 1)
        return tuple(None if r is None else _fake_dev(r) for r in (c, g, la))

    return types.SimpleNamespace(is_cuda_array=lambda x: isinstance(x, _FakeDeviceArray), run_device=run_device,
                                 status=lambda: {"available": True, "reason": "ok"})


@pytest.fixture
def fake_cuda(monkeypatch):
    import sys
    calls = []
    fake = _fake_cuda_module(calls)
    monkeypatch.setitem(sys.modules, "fastctc._cuda", fake)
    monkeypatch.setattr(fastctc, "_cuda", fake, raising=False)
    return calls


def test_ctclossv2_routes_device_arrays_to_run_device(fake_cuda, rng):
    acts, tg, il, tl = random_case(rng, 9, 4, 5, 3, 0, np.float64)
    lp = acts.astype(np.float32)
    il[1] = 2                                     # infeasible: +inf, 0 with zero_infinity
    tg32, il32, tl32 = tg.astype(np.int32), il.astype(np.int32), tl.astype(np.int32)
    tl32[1] = 2                                   # MindSpore requires target_length <= input_length,
    tg32[1, :2] = 1                               # so a repeated label makes sequence 1 infeasible
    for zero_inf in (False, True):
        loss = fastctc.CTCLossV2(blank=0, zero_infinity=zero_inf)
        before = len(fake_cuda)
        cpu_nll, cpu_la = loss(lp, tg32, il32, tl32)
        cpu3 = loss.loss_and_grad(lp, tg32, il32, tl32)
        assert len(fake_cuda) == before           # host arrays never reach the device path
        for dev_ints in (False, True):
            ints = [_fake_dev(a) if dev_ints else a for a in (tg32, il32, tl32)]
            nll, la = loss(_fake_dev(lp), *ints)
            call = fake_cuda[-1]
            assert call["want_alpha"] is True and call["want_grad"] is False and call["from_logits"] is False
            assert call["blank"] == 0 and call["grad_weights"] is None
            assert call["kinds"][0] == "_FakeDeviceArray"
            assert (call["kinds"][1] == "_FakeDeviceArray") == dev_ints
            assert isinstance(nll, _FakeDeviceArray) and isinstance(la, _FakeDeviceArray)
            np.testing.assert_array_equal(np.asarray(nll), cpu_nll)
            np.testing.assert_array_equal(np.asarray(la), cpu_la)
            three = loss.loss_and_grad(_fake_dev(lp), *ints)
            assert fake_cuda[-1]["want_grad"] is True and fake_cuda[-1]["want_alpha"] is True
            assert all(isinstance(r, _FakeDeviceArray) for r in three)
            for got, want in zip(three, cpu3):
                np.testing.assert_array_equal(np.asarray(got), want)
        assert (cpu_nll[1] == 0) if zero_inf else np.isposinf(cpu_nll[1])


def test_ctclossv2_device_errors_before_the_kernel(fake_cuda, rng):
    acts, tg, il, tl = random_case(rng, 6, 3, 4, 2, 0, np.float32)
    lp = _fake_dev(acts)
    tg32, il32, tl32 = tg.astype(np.int32), il.astype(np.int32), np.minimum(tl, il).astype(np.int32)
    loss = fastctc.CTCLossV2()
    bad = [
        ((_fake_dev(acts.astype(np.float16)), tg32, il32, tl32), fastctc.CTCTypeError, "float32 or float64"),
        ((_fake_dev(acts[0]), tg32, il32, tl32), fastctc.CTCValueError, "rank 3"),
        ((lp, tg32.astype(np.float32), il32, tl32), fastctc.CTCTypeError, "targets"),
        ((lp, tg32, il32.astype(np.int64), tl32), fastctc.CTCTypeError, "same dtype"),
        ((lp, tg32, _fake_dev(il32.astype(np.int64)), tl32), fastctc.CTCTypeError, "same dtype"),
        ((lp, tg32[:2], il32, tl32), fastctc.CTCValueError, "N = 3"),
        ((lp, tg32, _fake_dev(il32[:2]), tl32), fastctc.CTCValueError, "input_lengths"),
        ((lp, tg32, np.array([7, 1, 1], np.int32), tl32), fastctc.CTCRuntimeError, "input_lengths\\[0\\] = 7"),
        ((lp, tg32, il32, np.array([0, 0, 3], np.int32)), fastctc.CTCRuntimeError, "target_lengths\\[2\\]"),
        ((lp, np.where(np.arange(2) == 0, 9, tg32).astype(np.int32), il32, np.maximum(tl32, 1)),
         fastctc.CTCValueError, "targets\\[0, 0\\] = 9"),
    ]
    for args, exc, match in bad:
        with pytest.raises(exc, match=match):
            loss(*args)
    with pytest.raises(fastctc.CTCValueError, match="blank"):
        fastctc.CTCLossV2(blank=4)(lp, tg32, il32, tl32)
    assert not fake_cuda                          # every error came before run_device


# ---------------------------------------------------------------- on a GPU

_ST = _cuda.status()
gpu = pytest.mark.skipif(not _ST["available"], reason=f"no usable CUDA GPU: {_ST['reason']}")


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA support here")
    return torch


@gpu
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_parity_with_cpu_engine(rng, from_logits, dtype):
    torch = _torch_cuda()
    rtol, atol = (1e-9, 1e-10) if dtype == np.float64 else (2e-4, 2e-5)
    cases = [(1, 1, 2, 1, 0), (12, 4, 5, 3, 0), (50, 8, 20, 10, 3), (80, 5, 30, 40, 29), (200, 3, 50, 90, 0),
             (30, 16, 2, 14, 1), (7, 3, 6, 0, 0), (400, 2, 10, 300, 0)]
    for T, N, C, S, blank in cases:
        acts, tg, il, tl = random_case(rng, T, N, C, max(S, 1), blank, dtype, repeats=True)
        if S == 0:
            tg, tl = tg[:, :0], np.zeros(N, dtype=np.int64)
        for device_ints in (False, True):
            tgd = torch.from_numpy(tg).cuda() if device_ints else tg
            ild = torch.from_numpy(il).cuda() if device_ints else il
            tld = torch.from_numpy(tl).cuda() if device_ints else tl
            c, g, _ = _cuda.run_device(torch.from_numpy(acts).cuda(), tgd, ild, tld, blank=blank,
                                       from_logits=from_logits, want_grad=True)
            c2, _, la = _cuda.run_device(torch.from_numpy(acts).cuda(), tgd, ild, tld, blank=blank,
                                         from_logits=from_logits, want_grad=False, want_alpha=True)
            # reference: the CPU engine's plain loss + gradient mode, and for log_alpha a
            # float64 NumPy recursion (the CPU's want_alpha mode is no reference for
            # infeasible targets)
            ec, eg, _ = _cpu(acts, tg, il, tl, blank, from_logits)
            ela = ref_log_alpha(acts, tg, il, tl, blank, from_logits, 2 * max(S, 1) + 1 if S else 1)
            np.testing.assert_allclose(c.cpu().numpy(), ec, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
            np.testing.assert_allclose(c2.cpu().numpy(), ec, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
            np.testing.assert_allclose(g.cpu().numpy(), eg, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
            la = la.cpu().numpy()
            assert np.array_equal(np.isneginf(la), np.isneginf(ela)), (T, N, C, S)
            fin = np.isfinite(ela)
            np.testing.assert_allclose(la[fin], ela[fin], rtol=rtol * 10, atol=atol * 10)


@gpu
def test_gpu_public_api_routes_and_matches(rng):
    torch = _torch_cuda()
    acts, tg, il, tl = random_case(rng, 40, 6, 12, 8, 0)
    for reduction in ("none", "sum", "mean"):
        for zero_inf in (False, True):
            l_cpu, g_cpu = fastctc.ctc_loss_and_grad(acts, tg, il, tl, reduction=reduction, zero_infinity=zero_inf)
            l_gpu, g_gpu = fastctc.ctc_loss_and_grad(torch.from_numpy(acts).cuda(), tg, il, tl,
                                                     reduction=reduction, zero_infinity=zero_inf)
            assert g_gpu.is_cuda
            np.testing.assert_allclose(l_gpu.cpu().numpy(), l_cpu, rtol=1e-9)
            np.testing.assert_allclose(g_gpu.cpu().numpy(), g_cpu, rtol=1e-9, atol=1e-12)
            l2 = fastctc.ctc_loss(torch.from_numpy(acts).cuda(), tg, il, tl, reduction=reduction,
                                  zero_infinity=zero_inf)
            np.testing.assert_allclose(l2.cpu().numpy(), l_cpu, rtol=1e-9)


@gpu
def test_gpu_deterministic(rng):
    torch = _torch_cuda()
    acts, tg, il, tl = random_case(rng, 300, 32, 40, 60, 0, np.float32, repeats=True)
    x = torch.from_numpy(acts).cuda()
    first = None
    for _ in range(10):
        c, g, _ = _cuda.run_device(x, tg, il, tl, blank=0, from_logits=True, want_grad=True)
        cur = (c.cpu().numpy().tobytes(), g.cpu().numpy().tobytes())
        first = first or cur
        assert cur == first


@gpu
@pytest.mark.slow
def test_gpu_long_sequences(rng):
    torch = _torch_cuda()
    T, N, C, S = 4000, 2, 40, 1200
    acts, tg, il, tl = random_case(rng, T, N, C, S, 0, np.float32)
    il[:] = T
    tl[:] = S
    c, g, _ = _cuda.run_device(torch.from_numpy(acts).cuda(), tg, il, tl, blank=0, from_logits=False,
                               want_grad=True)
    ec, eg, _ = _cpu(acts, tg, il, tl, 0, False)
    np.testing.assert_allclose(c.cpu().numpy(), ec, rtol=1e-4)
    np.testing.assert_allclose(g.cpu().numpy(), eg, atol=1e-4)


@gpu
@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_gpu_half_inputs(rng, kind):
    torch = _torch_cuda()
    acts, tg, il, tl = random_case(rng, 60, 8, 20, 12, 0, np.float32)
    x = torch.from_numpy(acts).to(getattr(torch, kind)).cuda()
    c, g, _ = _cuda.run_device(x, tg, il, tl, blank=0, from_logits=True, want_grad=True)
    assert c.dtype == torch.float32 and g.dtype == x.dtype
    ec, eg, _ = _cpu(x.double().cpu().numpy(), tg, il, tl, 0, True)
    np.testing.assert_allclose(c.cpu().numpy(), ec, rtol=1e-4)
    np.testing.assert_allclose(g.double().cpu().numpy(), eg, atol=1e-2 if kind == "bfloat16" else 2e-3)


@gpu
def test_gpu_torch_adapter_and_gradcheck(rng):
    torch = _torch_cuda()
    ft = pytest.importorskip("fastctc.torch", reason="fastctc.torch (front-ends issue) is not in this tree")
    acts, tg, il, tl = random_case(rng, 12, 3, 5, 4, 0)
    x = torch.from_numpy(acts).cuda().requires_grad_()
    lp = torch.log_softmax(x, -1)
    ours = ft.ctc_loss(lp, torch.from_numpy(tg).cuda(), torch.from_numpy(il).cuda(), torch.from_numpy(tl).cuda())
    ref = torch.nn.functional.ctc_loss(lp.cpu(), torch.from_numpy(tg), torch.from_numpy(il), torch.from_numpy(tl))
    np.testing.assert_allclose(ours.item(), ref.item(), rtol=1e-9)
    f = lambda z: ft.ctc_loss(torch.log_softmax(z, -1), torch.from_numpy(tg).cuda(),  # noqa: E731
                              torch.from_numpy(il).cuda(), torch.from_numpy(tl).cuda())
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


@gpu
def test_gpu_ctclossv2_matches_cpu(rng):
    torch = _torch_cuda()
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 2e-4)):
        acts, tg, il, tl = random_case(rng, 40, 6, 12, 8, 0, dtype, repeats=True)
        tl = np.minimum(tl, il // 2)  # feasible: the CPU's log_alpha is the reference here
        tg, il, tl = tg.astype(np.int32), il.astype(np.int32), tl.astype(np.int32)
        for zero_inf in (False, True):
            loss = fastctc.CTCLossV2(zero_infinity=zero_inf)
            want = loss.loss_and_grad(acts, tg, il, tl)
            for dev_ints in (False, True):
                ints = [torch.from_numpy(a).cuda() if dev_ints else a for a in (tg, il, tl)]
                got = loss.loss_and_grad(torch.from_numpy(acts).cuda(), *ints)
                assert all(g.is_cuda for g in got)
                for g, w in zip(got, want):
                    np.testing.assert_allclose(g.cpu().numpy(), w, rtol=tol, atol=tol)
                nll, la = loss(torch.from_numpy(acts).cuda(), *ints)
                np.testing.assert_allclose(la.cpu().numpy(), want[1], rtol=tol, atol=tol)


# ---------------------------------------------------------------- fastctc.torch on a GPU
# (the route's plumbing is checked on every machine by tests/test_torch_cuda_route.py)

def _ft():
    return pytest.importorskip("fastctc.torch")


def _torch_case(torch, T=40, N=6, C=12, S=8, seed=0):
    """float64 logits (T, N, C) and CPU int64 targets / lengths; sequence 1 cannot fit (the
    CPU-runnable route tests' case, imported here once torch is known to be present)."""
    from test_torch_cuda_route import _case
    return _case(seed, T=T, N=N, C=C, S=S)


def _forms(torch, tg, il, tl):
    """(name, targets, input_lengths, target_lengths) in the forms users pass on CUDA."""
    flat = torch.cat([tg[n, : int(tl[n])] for n in range(tg.shape[0])])
    return [("device padded", tg.cuda(), il.cuda(), tl.cuda()), ("device concat", flat.cuda(), il.cuda(), tl.cuda()),
            ("device targets, host lengths", tg.cuda(), il, tl),
            ("host int32 (cuDNN style)", flat.to(torch.int32), il.to(torch.int32), tl.to(torch.int32)),
            ("lists", flat.tolist(), il.tolist(), tl.tolist())]


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_torch_route_matches_cpu_route(dtype):
    torch = _torch_cuda()
    ft = _ft()
    x, tg, il, tl = _torch_case(torch)
    x = x.to(getattr(torch, dtype))
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for name, *ints in _forms(torch, tg, il, tl):
        host_ints = [t.cpu() if isinstance(t, torch.Tensor) else t for t in ints]
        for reduction in ("none", "sum", "mean"):
            for zero_inf in (False, True):
                for fl in (False, True):
                    got, want = x.cuda().requires_grad_(), x.clone().requires_grad_()
                    lg = ft.ctc_loss(got if fl else got.log_softmax(-1), *ints, reduction=reduction,
                                     zero_infinity=zero_inf, from_logits=fl)
                    lw = ft.ctc_loss(want if fl else want.log_softmax(-1), *host_ints, reduction=reduction,
                                     zero_infinity=zero_inf, from_logits=fl)
                    w = torch.linspace(0.5, 2.0, lw.numel(), dtype=lw.dtype).reshape(lw.shape)
                    (lg * w.cuda()).sum().backward()
                    (lw * w).sum().backward()
                    what = (name, reduction, zero_inf, fl)
                    assert lg.is_cuda and got.grad.is_cuda, what
                    torch.testing.assert_close(lg.cpu(), lw.detach(), **tol, msg=str(what))
                    torch.testing.assert_close(got.grad.cpu(), want.grad, **tol, msg=str(what))


@gpu
@pytest.mark.parametrize("where", ["device", "host"])
def test_gpu_torch_route_never_synchronises(where):
    """torch.cuda.set_sync_debug_mode("error") around fastctc.torch forward + backward: every
    reduction, zero_infinity, logits and log-probabilities, no-grad calls, targets and
    lengths on the device or on the host (then uploaded from pinned memory)."""
    torch = _torch_cuda()
    ft = _ft()
    x, tg, il, tl = _torch_case(torch, seed=1)
    ints = [t.cuda() for t in (tg, il, tl)] if where == "device" else [tg.to(torch.int32), il, tl]
    xd = x.float().cuda()
    ft.ctc_loss(xd.clone().requires_grad_(), *ints, from_logits=True).backward()  # kernels loaded first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for reduction in ("none", "sum", "mean"):
            for zero_inf in (False, True):
                for fl in (False, True):
                    z = xd.clone().requires_grad_()
                    inp = z if fl else z.log_softmax(-1)
                    loss = ft.ctc_loss(inp, *ints, reduction=reduction, zero_infinity=zero_inf, from_logits=fl)
                    loss.sum().backward()
                    with torch.no_grad():
                        ft.ctc_loss(inp, *ints, reduction=reduction, zero_infinity=zero_inf, from_logits=fl)
                    ft.CTCLoss(reduction=reduction, zero_infinity=zero_inf)(inp.detach(), *ints)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@gpu
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gpu_torch_route_cuda_graph(reduction):
    """fastctc.torch forward + backward captured in a CUDA graph (so every launch went to the
    capturing stream) and replayed on new values: the numbers of an eager call, bit for bit."""
    torch = _torch_cuda()
    ft = _ft()
    x, tg, il, tl = _torch_case(torch, seed=2)
    tg, il, tl = (t.cuda() for t in (tg, il, tl))
    static = x.float().cuda().requires_grad_()
    w = torch.linspace(0.5, 2.0, x.shape[1], device="cuda") if reduction == "none" else None

    def step(z):
        loss = ft.ctc_loss(z, tg, il, tl, reduction=reduction, from_logits=True)
        (loss * w).sum().backward() if w is not None else loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            static.grad = None
            step(static)
    torch.cuda.current_stream().wait_stream(side)
    static.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(static)
    static_grad = static.grad
    for seed in (3, 4):
        new = _torch_case(torch, seed=seed)[0].float().cuda()
        with torch.no_grad():
            static.copy_(new)
        graph.replay()
        torch.cuda.synchronize()
        z = new.clone().requires_grad_()
        loss = step(z)
        assert torch.equal(static_loss, loss.detach()) and torch.equal(static_grad, z.grad), seed


@gpu
@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_gpu_torch_half_autograd(kind):
    """float16 / bfloat16 through fastctc.torch: float32 loss, gradient in the input dtype,
    equal to the float32 route on the same rounded values (math in float32, one rounding)."""
    torch = _torch_cuda()
    ft = _ft()
    dt = getattr(torch, kind)
    x, tg, il, tl = _torch_case(torch, seed=5)
    ints = [t.cuda() for t in (tg, il, tl)]
    for fl in (True, False):
        vals = (x if fl else x.log_softmax(-1)).to(dt)
        h, f = vals.cuda().requires_grad_(), vals.float().cuda().requires_grad_()
        for reduction in ("mean", "none"):
            h.grad = f.grad = None
            lh = ft.ctc_loss(h, *ints, reduction=reduction, zero_infinity=True, from_logits=fl)
            lf = ft.ctc_loss(f, *ints, reduction=reduction, zero_infinity=True, from_logits=fl)
            lh.sum().backward()
            lf.sum().backward()
            assert lh.dtype == torch.float32 and h.grad.dtype == dt
            assert torch.equal(lh, lf), (kind, fl, reduction)
            assert torch.equal(h.grad, f.grad.to(dt)), (kind, fl, reduction)


@gpu
def test_gpu_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) on CUDA (the registered op): eager numbers, device or
    host lengths."""
    torch = _torch_cuda()
    ft = _ft()
    x, tg, il, tl = _torch_case(torch, seed=6)

    def f(z, targets, input_lengths, target_lengths):
        return ft.ctc_loss(z.log_softmax(-1), targets, input_lengths, target_lengths, zero_infinity=True)

    compiled = torch.compile(f, fullgraph=True)
    for ints in ((tg.cuda(), il.cuda(), tl.cuda()), (tg.cuda(), il, tl)):
        ze, zc = x.float().cuda().requires_grad_(), x.float().cuda().requires_grad_()
        le, lc = f(ze, *ints), compiled(zc, *ints)
        le.backward()
        lc.backward()
        torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(zc.grad, ze.grad, rtol=1e-5, atol=1e-6)


@gpu
def test_gpu_torch_bad_values(rng):
    """Bad targets/lengths on the device: that sequence's loss is NaN (checked on the device,
    no exception, no fault, the next call fine); the same values on the host raise."""
    torch = _torch_cuda()
    ft = _ft()
    x, tg, il, tl = _torch_case(torch, seed=7)
    tg[0, 0], tl[0] = 99, max(int(tl[0]), 1)  # >= C, inside target 0
    il[2] = 41     # > T
    z = x.float().cuda().requires_grad_()
    loss = ft.ctc_loss(z, tg.cuda(), il.cuda(), tl.cuda(), reduction="none", from_logits=True)
    loss.sum().backward()
    c = loss.detach().cpu()
    assert torch.isnan(c[[0, 2]]).all() and torch.isfinite(c[[3, 4, 5]]).all()
    assert torch.isfinite(z.grad[:, 3:]).all()
    with pytest.raises(RuntimeError, match=r"targets\[0, 0\] = 99"):
        ft.ctc_loss(z, tg, il.clamp(max=40), tl, from_logits=True)
    with pytest.raises(RuntimeError, match=r"input_lengths\[2\] = 41"):
        ft.ctc_loss(z, tg.cuda(), il, tl, from_logits=True)
    ok = ft.ctc_loss(z, tg.clamp(max=11).cuda(), il.clamp(max=40).cuda(), tl.cuda(), zero_infinity=True,
                     from_logits=True)
    assert torch.isfinite(ok).item()


@gpu
def test_gpu_torch_other_device_keeps_current_device():
    """Inputs on cuda:1 while cuda:0 is current: computed there, on that device's stream;
    the current device is still cuda:0 afterwards."""
    torch = _torch_cuda()
    ft = _ft()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    x, tg, il, tl = _torch_case(torch, seed=8)
    torch.cuda.set_device(0)
    results = []
    for d in ("cuda:0", "cuda:1"):
        z = x.float().to(d).requires_grad_()
        loss = ft.ctc_loss(z, tg.to(d), il.to(d), tl.to(d), from_logits=True)
        loss.backward()
        assert torch.cuda.current_device() == 0 and loss.device == torch.device(d)
        results.append((loss.cpu(), z.grad.cpu()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_launches_keep_the_callers_current_device(monkeypatch):
    """_DeviceGuard (stand-in driver): no switch when the arrays' device is current; else
    that device is made current for the launches and the caller's context put back."""
    import sys
    import types

    from fastctc import _cuda_launch as L
    state = {"ctx": "ctx0", "dev": 0, "switches": 0}
    drv = types.SimpleNamespace(cuCtxGetDevice=lambda: (0, state["dev"]),
                                cuCtxGetCurrent=lambda: (0, state["ctx"]),
                                cuCtxSetCurrent=lambda c: state.update(ctx=c, dev=int(str(c)[-1])) or (0,),
                                CUcontext=lambda v: "ctx-null0")

    class Dev:
        def __init__(self, i):
            self.i = i

        def set_current(self):
            state.update(ctx=f"ctx{self.i}", dev=self.i, switches=state["switches"] + 1)

    monkeypatch.setitem(sys.modules, "cuda.bindings", types.SimpleNamespace(driver=drv))
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", drv)
    monkeypatch.setitem(sys.modules, "cuda.core", types.SimpleNamespace(Device=Dev))
    with L._DeviceGuard(0):
        assert state["ctx"] == "ctx0"
    assert state["switches"] == 0
    with L._DeviceGuard(1):
        assert state["ctx"] == "ctx1" and state["dev"] == 1
    assert state["ctx"] == "ctx0" and state["dev"] == 0 and state["switches"] == 1


def _fake_cupy(monkeypatch):
    """A stand-in CuPy with two devices: arrays remember their device, every operation
    checks that it runs with that device current (as CuPy needs), and each device has its
    own current stream.  Returns (module, array class, current device holder)."""
    import sys

    current = [0]

    class Device:
        def __init__(self, i):
            self.id = i

        def __enter__(self):
            self.prev = current[0]
            current[0] = self.id
            return self

        def __exit__(self, *exc):
            current[0] = self.prev
            return False

    class Arr:
        __cuda_array_interface__ = {}

        def __init__(self, values, dev):
            self.v, self.device = np.asarray(values), Device(dev)
            self.shape, self.dtype = self.v.shape, self.v.dtype

        def _op(self, other, f):
            assert current[0] == self.device.id, f"CuPy work on device {current[0]} for an array on {self.device.id}"
            o = other.v if isinstance(other, Arr) else other
            return Arr(f(self.v, o), self.device.id)

        def __gt__(self, o):
            return self._op(o, np.greater)

        def __and__(self, o):
            return self._op(o, np.logical_and)

        def __mul__(self, o):
            return self._op(o, np.multiply)

        def __rtruediv__(self, o):
            return self._op(o, lambda a, b: b / a)

        def sum(self, dtype=None):
            return self._op(None, lambda a, _: a.sum(dtype=dtype))

        def astype(self, dt):
            return self._op(None, lambda a, _: a.astype(dt))

        def reshape(self, *shape):
            return self._op(None, lambda a, _: a.reshape(*shape))

    Arr.__module__ = "cupy._core.core"
    here = lambda: current[0]  # noqa: E731
    cp = types.ModuleType("cupy")
    cp.float64 = np.float64
    cp.cuda = types.SimpleNamespace(Device=Device, get_current_stream=lambda: types.SimpleNamespace(ptr=1000 + here()))
    cp.isinf = lambda a: a._op(None, lambda x, _: np.isinf(x))
    cp.zeros_like = lambda a: a._op(None, lambda x, _: np.zeros_like(x))
    cp.ones_like = lambda a: a._op(None, lambda x, _: np.ones_like(x))
    cp.where = lambda c, a, b: c._op(None, lambda x, _: np.where(x, a.v, b.v))
    cp.maximum = lambda a, m: a._op(m, np.maximum)
    cp.asarray = lambda h: Arr(h, here())
    monkeypatch.setitem(sys.modules, "cupy", cp)
    return cp, Arr, current


def test_cupy_arrays_use_their_devices_stream_and_keep_the_current_device(monkeypatch):
    """CuPy arrays on a device other than the current one: the launcher takes that device's
    current stream, the reductions and zero_infinity (fastctc._reduction, every door's)
    run on that device, and the caller's current device is the same afterwards (stand-in
    CuPy, every machine)."""
    from fastctc import _cuda_launch as L
    from fastctc import _reduction
    cp, Arr, current = _fake_cupy(monkeypatch)
    be = L._CuPy(1)
    assert be.stream == 1001 and be.ordinal == 1 and current[0] == 0
    costs = Arr([1.0, np.inf, 3.0], 1)
    for reduction, want in (("none", [1.0, 0.0, 3.0]), ("sum", 4.0), ("mean", (1.0 / 2 + 0.0 + 3.0 / 3) / 3)):
        got = _reduction.reduce_losses(costs, [2, 5, 3], reduction, True)
        assert got.device.id == 1 and np.allclose(got.v, want), reduction
        assert current[0] == 0
    got = _reduction.reduce_losses(costs, Arr([2, 5, 3], 1), "mean", False)
    assert np.isposinf(got.v) and current[0] == 0
    z = _reduction.zero_infinite(costs)
    assert z.device.id == 1 and z.v.tolist() == [1.0, 0.0, 3.0] and current[0] == 0
    w = _reduction.loss_weights([2, 5, 3], "mean", like=costs)
    assert w.device.id == 1 and np.allclose(w.v, [1 / 6, 1 / 15, 1 / 9]) and current[0] == 0
