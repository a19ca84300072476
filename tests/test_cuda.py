"""GPU path (cuda/ctc.cu + fastctc._cuda).

Three layers, so that the kernels are checked on every machine, not only on one with a GPU:
  * compile: NVRTC (cuda-bindings + cuda-core + the NVRTC wheel; no GPU or driver needed)
    builds ctc.cu for sm_80 and sm_90; nvcc -c does too when it is installed; the kernel's
    argument list matches the launcher's; the disk cache and the compile-error report work.
  * emulation: ctc.cu compiled as host C++ (FCTC_EMULATION) with a block run by ordinary
    threads, __syncthreads a barrier and warp shuffles a shared exchange, then compared
    with the CPU engine: the kernels' arithmetic, band, chains and reductions, without a GPU.
  * stand-ins (every machine): status() on each branch (device, versions, reasons) with fake
    cuda modules; CTCLossV2's routing of device arrays to run_device with a fake _cuda.
  * device (skipped without a usable CUDA GPU): parity with the CPU engine, determinism,
    the long case, float16/bfloat16, CTCLossV2, and the torch adapter on CUDA tensors.
Run the GPU part alone with:  PYTHONPATH=$PWD/pyx python -m pytest -q tests/test_cuda.py -m "not slow or slow"
"""
import ctypes
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import fastctc
from fastctc import _cuda
from conftest import random_log_probs

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
SOURCE = os.path.join(ROOT, "cuda", "ctc.cu")


def _nvrtc_or_skip():
    pytest.importorskip("cuda.core", reason="cuda-core is not installed (pip install cuda-core cuda-bindings)")
    try:
        return _cuda.nvrtc_version()
    except Exception as exc:  # bindings present but libnvrtc missing
        pytest.skip(f"NVRTC cannot be loaded: {exc} (pip install nvidia-cuda-nvrtc)")


# ---------------------------------------------------------------- compile (every machine)

@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvrtc_compiles(arch, tmp_path, monkeypatch):
    _nvrtc_or_skip()
    monkeypatch.setenv("FASTCTC_CACHE_DIR", str(tmp_path))
    cubin = _cuda.compile_cubin(arch)
    assert cubin[:4] == b"\x7fELF"
    # cached: one file, named after the arch, read back identically
    files = os.listdir(tmp_path)
    assert len(files) == 1 and arch in files[0] and files[0].endswith(".cubin")
    assert _cuda.compile_cubin(arch) == cubin


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
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles(arch, tmp_path):
    out = subprocess.run(["nvcc", "-c", "-x", "cu", "-std=c++17", f"-arch={arch}", "-Werror", "all-warnings",
                          "-o", str(tmp_path / "ctc.o"), SOURCE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_kernel_arguments_match_launcher():
    text = open(SOURCE).read()
    block = text[text.index("#define FCTC_FIELDS(X)"):text.index("#define FCTC_DECLARE")]
    block = re.sub(r"/\*.*?\*/", "", block, flags=re.S)
    fields = re.findall(r"X\(([^,]+),\s*(\w+)\)", block)
    kinds = {"int": "i", "fctc_i64": "q", "double": "d"}
    got = [(name, "p" if "*" in ctype else kinds[ctype.strip()]) for ctype, name in fields]
    assert got + [("end_marker", "i")] == list(_cuda._TRELLIS_ARGS)


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


# ---------------------------------------------------------------- host emulation of the kernels

SHIM = r"""
// Host emulation of the CUDA features ctc.cu uses: one std::thread per CUDA thread,
// __syncthreads = a block barrier, warp shuffles = exchange through a block buffer,
// __shared__ = static storage (blocks run one after another).
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
#define FCTC_EMULATION 1
#define FCTC_DEV inline
#define FCTC_WARP 4
#define FCTC_ENTRY static
#define __shared__ static
struct fctc_dim { unsigned x; };
static thread_local fctc_dim threadIdx;
static fctc_dim blockIdx, blockDim;
static std::barrier<> *emu_barrier;
inline void __syncthreads() { emu_barrier->arrive_and_wait(); }
template <class V> inline V __shfl_xor_sync(unsigned, V v, int m) {
    static V buf[1024];
    buf[threadIdx.x] = v;
    __syncthreads();
    V r = buf[threadIdx.x ^ m];
    __syncthreads();
    return r;
}
template <class D, class S> inline D emu_bits(S s) { D d; std::memcpy(&d, &s, sizeof d); return d; }
inline float __int_as_float(int i) { return emu_bits<float>(i); }
inline float __uint_as_float(unsigned i) { return emu_bits<float>(i); }
inline unsigned __float_as_uint(float f) { return emu_bits<unsigned>(f); }
inline double __longlong_as_double(long long i) { return emu_bits<double>(i); }
inline float fctc_emu_half_to_float(unsigned short b) { return (float)emu_bits<_Float16>(b); }
inline unsigned short fctc_emu_float_to_half(float f) { return emu_bits<unsigned short>((_Float16)f); }
#include "ctc.cu"
template <class F> static void emu_launch(int grid, int block, F body) {
    blockDim.x = block;
    for (int b = 0; b < grid; ++b) {
        blockIdx.x = b;
        std::barrier<> bar(block);
        emu_barrier = &bar;
        std::vector<std::thread> threads;
        for (int i = 0; i < block; ++i) threads.emplace_back([=] { threadIdx.x = i; body(); });
        for (auto &t : threads) t.join();
    }
}
template <class In, class A>
static void emu_call_lse(void (*f)(const In *, fctc_i64, fctc_i64, int, int, int, A *), int grid, int block,
                         const void *acts, long long st_t, long long st_n, int T, int N, int C, void *lse) {
    emu_launch(grid, block, [=] { f((const In *)acts, st_t, st_n, T, N, C, (A *)lse); });
}
#define EMU_NAME(type, name) name,
#define EMU(suffix)                                                                               \
    extern "C" void emu_lse_##suffix(int grid, int block, const void *acts, long long st_t,      \
                                     long long st_n, int T, int N, int C, void *lse) {             \
        emu_call_lse(fctc_lse_##suffix, grid, block, acts, st_t, st_n, T, N, C, lse);             \
    }                                                                                             \
    extern "C" void emu_ctc_##suffix(int grid, int block, FCTC_FIELDS(FCTC_PARAM) int end_marker) { \
        emu_launch(grid, block, [=] { fctc_ctc_##suffix(FCTC_FIELDS(EMU_NAME) end_marker); });   \
    }
EMU(f32)
EMU(f64)
EMU(f16)
EMU(bf16)
"""


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed: the host emulation of ctc.cu needs it")
    folder = tmp_path_factory.mktemp("emu")
    shim = folder / "emu.cpp"
    shim.write_text(SHIM)
    lib = folder / "emu.so"
    # FASTCTC_EMU_CFLAGS: extra flags, e.g. "-fsanitize=address,undefined" (then run pytest
    # with LD_PRELOAD=$(g++ -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0)
    extra = os.environ.get("FASTCTC_EMU_CFLAGS", "").split()
    out = subprocess.run([gxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", *extra, "-I",
                          os.path.dirname(SOURCE), "-o", str(lib), str(shim)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-4000:]
    return ctypes.CDLL(str(lib))


_CT = {"p": ctypes.c_void_p, "i": ctypes.c_int, "q": ctypes.c_longlong, "d": ctypes.c_double}
_EMU_BLOCK = 8  # two emulated warps of 4 threads: strided states, cross-warp reductions


def _ptr(a):
    return a.ctypes.data if a is not None else 0


def emu_run(lib, acts, targets, input_lengths, target_lengths, *, blank, from_logits, want_grad,
            want_alpha=False, grad_weights=None, mean=False, kind=None):
    """run_device's contract on host arrays, through the emulated kernels."""
    T, N, C = acts.shape
    kind = kind or str(acts.dtype)
    suffix, acc = _cuda._KERNEL_TYPES[kind]
    targets = np.asarray(targets)
    concat = targets.ndim == 1
    tl = np.asarray(target_lengths)
    Smax = (int(tl.max()) if N else 0) if concat else targets.shape[1]
    costs = np.full(N, -7.0, dtype=acc)
    store = {"float16": np.uint16, "bfloat16": np.uint16}.get(kind, acts.dtype)
    grad = np.full((T, N, C), 99, dtype=store) if want_grad else None
    la = np.full((N, T, 2 * Smax + 1), 5.0, dtype=acc) if want_alpha else None
    offsets, total, alpha_n = _cuda._layout(N, T, Smax, C, want_grad, from_logits, acc)
    ws = np.full(total, 0x5A, dtype=np.uint8)  # garbage: the kernels must not rely on zeroed memory
    base = ws.ctypes.data
    tg = np.ascontiguousarray(targets)
    il = np.ascontiguousarray(input_lengths)
    tlc = np.ascontiguousarray(tl)
    w = None if grad_weights is None else np.ascontiguousarray(grad_weights, dtype=np.float64)
    isz = acts.itemsize
    values = dict(acts=_ptr(acts), st_t=acts.strides[0] // isz, st_n=acts.strides[1] // isz, T=T, N=N, C=C,
                  targets=_ptr(tg), tg64=int(tg.dtype == np.int64), concat=int(concat),
                  tg_st_n=0 if concat else tg.strides[0] // tg.itemsize, tg_st_s=tg.strides[-1] // tg.itemsize,
                  tg_count=tg.shape[0] if concat else 0,
                  Smax=Smax, in_len=_ptr(il), il64=int(il.dtype == np.int64), il_st=1,
                  tg_len=_ptr(tlc), tl64=int(tlc.dtype == np.int64), tl_st=1, blank=blank,
                  from_logits=int(from_logits), w=_ptr(w), w_kind=0 if w is None else 2, w_st=1, w_mul=1.0,
                  mean=int(mean), costs=_ptr(costs), grad=_ptr(grad), log_alpha=_ptr(la), alpha_rows=T,
                  alpha_cols=2 * Smax + 1, ws_alpha_n=alpha_n, end_marker=0)
    for name, off in offsets.items():
        values[name] = base + off
    if from_logits and T * N:
        fn = getattr(lib, "emu_lse_" + suffix)
        fn.argtypes = [ctypes.c_int, ctypes.c_int] + [_CT[k] for _, k in _cuda._LSE_ARGS]
        fn(-(-T * N // 2), 2 * 4, *[values[n] if n != "lse" else values["ws_lse"] for n, _ in _cuda._LSE_ARGS])
    fn = getattr(lib, "emu_ctc_" + suffix)
    fn.argtypes = [ctypes.c_int, ctypes.c_int] + [_CT[k] for _, k in _cuda._TRELLIS_ARGS]
    if N:
        fn(N, _EMU_BLOCK, *[values[n] for n, _ in _cuda._TRELLIS_ARGS])
    return costs, grad, la


def _cpu(acts, targets, il, tl, blank, from_logits, want_alpha=False, weights=None):
    batch, blank = fastctc._validate.check_ctc_inputs(acts, targets, il, tl, blank)
    S = np.asarray(targets).shape[1] if np.asarray(targets).ndim == 2 else int(np.max(tl))
    return fastctc._engine.run(batch, blank, from_logits, want_grad=True, grad_weights=weights,
                               want_alpha=want_alpha, alpha_cols=2 * S + 1)


def _random_case(rng, T, N, C, S, blank, dtype=np.float64, repeats=False):
    acts = random_log_probs(rng, T, N, C, dtype=dtype, scale=3.0)
    tg = rng.integers(0, C, size=(N, S))
    tg = np.where(tg == blank, (blank + 1) % C, tg)
    if repeats and S > 1:
        tg[:, 1::3] = tg[:, 0::3][:, :tg[:, 1::3].shape[1]]
    il = rng.integers(0, T + 1, size=N)
    il[0] = T
    tl = rng.integers(0, S + 1, size=N)
    tl[-1] = S
    return acts, tg, il, tl


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_emulated_kernels_match_cpu_engine(emu, rng, from_logits, dtype):
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    atol = 1e-10 if dtype == np.float64 else 2e-5
    cases = [(12, 4, 5, 3, 0, False), (9, 3, 4, 4, 2, True), (20, 2, 7, 9, 1, True), (1, 2, 3, 1, 0, False),
             (6, 3, 2, 5, 0, True), (15, 2, 30, 6, 29, False)]
    for T, N, C, S, blank, rep in cases:
        acts, tg, il, tl = _random_case(rng, T, N, C, S, blank, dtype, rep)
        w = rng.uniform(0.5, 2.0, size=N)
        costs, grad, la = emu_run(emu, acts, tg, il.astype(np.int32), tl, blank=blank, from_logits=from_logits,
                                  want_grad=True, grad_weights=w)
        ec, eg, _ = _cpu(acts, tg, il, tl, blank, from_logits, weights=w)
        np.testing.assert_allclose(costs, ec, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
        np.testing.assert_allclose(grad, eg, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
        # loss only, and log_alpha (no band pruning) through the same kernels
        c2, _, la = emu_run(emu, acts, tg, il, tl.astype(np.int32), blank=blank, from_logits=from_logits,
                            want_grad=False, want_alpha=True)
        _, _, ela = _cpu(acts, tg, il, tl, blank, from_logits, want_alpha=True)
        np.testing.assert_allclose(c2, ec, rtol=rtol, atol=atol)
        np.testing.assert_allclose(la, ela, rtol=rtol, atol=atol)


def test_emulated_infeasible_empty_and_concatenated(emu, rng):
    acts = random_log_probs(rng, 4, 4, 4)
    tg = np.array([[1, 1, 1], [1, 2, 3], [2, 3, 0], [0, 0, 0]])
    il = np.array([4, 2, 0, 0])
    tl = np.array([3, 3, 2, 0])
    costs, grad, _ = emu_run(emu, acts, tg, il, tl, blank=0, from_logits=False, want_grad=True)
    ec, eg, _ = _cpu(acts, tg, il, tl, 0, False)
    assert np.isinf(costs[:3]).all() and (costs[:3] > 0).all() and costs[3] == 0
    np.testing.assert_array_equal(costs, ec)
    np.testing.assert_array_equal(grad[:, :3], 0)
    np.testing.assert_allclose(grad, eg, atol=1e-12)
    # concatenated targets give the same as padded ones
    acts, tg, il, tl = _random_case(rng, 10, 3, 6, 4, 0)
    flat = np.concatenate([tg[i, :tl[i]] for i in range(3)]).astype(np.int64)
    c1, g1, _ = emu_run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True)
    c2, g2, _ = emu_run(emu, acts, flat, il, tl, blank=0, from_logits=True, want_grad=True)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(g1, g2)


def test_emulated_bad_device_values_give_nan_not_a_crash(emu, rng):
    acts = random_log_probs(rng, 5, 4, 3)
    tg = np.array([[1, 2], [1, 7], [1, 2], [1, 2]])   # 7 >= C
    il = np.array([5, 5, 9, 5])                        # 9 > T
    tl = np.array([2, 2, 2, -1])                       # -1 < 0
    costs, grad, la = emu_run(emu, acts, tg, il, tl, blank=0, from_logits=False, want_grad=True, want_alpha=True)
    assert np.isfinite(costs[0]) and np.isnan(costs[1:]).all()
    np.testing.assert_array_equal(grad[:, 1:], 0)
    assert np.isneginf(la[1:]).all()


def test_emulated_concatenated_lengths_past_the_labels_give_nan(emu, rng):
    """Device-resident lengths that do not fit the concatenated targets: the sequences whose
    labels cannot be located get a NaN cost and zero gradient, and nothing is read outside
    the targets (here a view inside a larger array whose next values are valid labels, so a
    read past the end would give a finite cost)."""
    acts = random_log_probs(rng, 6, 3, 4)
    big = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], np.int64)
    flat = big[4:7]                                   # 3 labels: [2, 3, 1]
    costs, grad, _ = emu_run(emu, acts, flat, np.array([6, 6, 6]), np.array([2, 1, 1]), blank=0,
                             from_logits=False, want_grad=True)
    ec, eg, _ = _cpu(acts[:, :2], np.array([[2, 3], [1, 0]]), np.array([6, 6]), np.array([2, 1]), 0, False)
    np.testing.assert_allclose(costs[:2], ec, rtol=1e-12)   # 2 + 1 labels fit
    assert np.isnan(costs[2])                               # 2 + 1 + 1 > 3
    np.testing.assert_array_equal(grad[:, 2], 0)
    np.testing.assert_allclose(grad[:, :2], eg, atol=1e-12)
    # a bad earlier length: the later sequences cannot be located either
    costs, grad, _ = emu_run(emu, acts, big[6:9], np.array([6, 6, 6]), np.array([1, -4, 2]), blank=0,
                             from_logits=False, want_grad=True)
    assert np.isfinite(costs[0]) and np.isnan(costs[1:]).all()
    np.testing.assert_array_equal(grad[:, 1:], 0)


def test_emulated_mean_weights_and_deterministic(emu, rng):
    acts, tg, il, tl = _random_case(rng, 14, 3, 5, 4, 0, np.float32)
    runs = [emu_run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True, mean=True) for _ in range(3)]
    for c, g, _ in runs[1:]:
        assert c.tobytes() == runs[0][0].tobytes() and g.tobytes() == runs[0][1].tobytes()
    w = 1.0 / (np.maximum(tl, 1) * 3)
    _, eg, _ = _cpu(acts, tg, il, tl, 0, True, weights=w)
    np.testing.assert_allclose(runs[0][1], eg, rtol=2e-4, atol=2e-6)


def _to_half_bits(torch, x, kind):
    """(raw 16-bit storage of x rounded to `kind`, the rounded values as float64)."""
    half = torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, kind))
    return half.view(torch.int16).numpy().view(np.uint16).copy(), half.to(torch.float64).numpy()


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_emulated_half_inputs(emu, rng, kind):
    """float16/bfloat16 kernels == the float32 kernels on the same (rounded) values, bit for
    bit, on every run, and close to the CPU engine.  Regression: the workspace used to be
    sized from the 2-byte input instead of the float32 accumulator, so the last sequences'
    alpha rows overlapped beta/gamma and their costs came out wrong on some runs."""
    torch = pytest.importorskip("torch")
    for T, N, C, S in [(10, 3, 6, 3), (16, 6, 7, 5)]:
        acts, tg, il, tl = _random_case(rng, T, N, C, S, 0, np.float32, repeats=True)
        bits, rounded = _to_half_bits(torch, acts, kind)
        for from_logits in (True, False):
            c32, g32, _ = emu_run(emu, rounded.astype(np.float32), tg, il, tl, blank=0, from_logits=from_logits,
                                  want_grad=True)
            g32_bits, _ = _to_half_bits(torch, g32, kind)
            ec, eg, _ = _cpu(rounded, tg, il, tl, 0, from_logits)
            for _ in range(3):
                costs, grad, _ = emu_run(emu, bits, tg, il, tl, blank=0, from_logits=from_logits, want_grad=True,
                                         kind=kind)
                assert costs.dtype == np.float32
                np.testing.assert_array_equal(costs, c32, err_msg=str((T, N, C, S, from_logits)))
                np.testing.assert_array_equal(grad, g32_bits)
            np.testing.assert_allclose(costs, ec, rtol=1e-4)
            g = torch.from_numpy(grad.view(np.int16)).view(getattr(torch, kind)).to(torch.float64).numpy()
            np.testing.assert_allclose(g, eg, atol=1e-2 if kind == "bfloat16" else 2e-3)
            # loss only with log_alpha: the same values as the float32 kernel
            c2, _, la = emu_run(emu, bits, tg, il, tl, blank=0, from_logits=from_logits, want_grad=False,
                                want_alpha=True, kind=kind)
            _, _, la32 = emu_run(emu, rounded.astype(np.float32), tg, il, tl, blank=0, from_logits=from_logits,
                                 want_grad=False, want_alpha=True)
            np.testing.assert_array_equal(c2, c32)
            np.testing.assert_array_equal(la, la32)


@pytest.mark.parametrize("kind", sorted(_cuda._KERNEL_TYPES))
def test_workspace_regions_hold_accumulator_values(kind):
    """Every workspace region holds what the kernel indexes in it (per-sequence strides
    times the accumulator's size, float32 for float16/bfloat16 inputs), aligned and
    without overlap.  Regression for the 2-byte sizing of half-precision workspaces."""
    suffix, acc = _cuda._KERNEL_TYPES[kind]
    a = {"float32": 4, "float64": 8}[acc]
    assert a >= np.dtype(kind if kind != "bfloat16" else "float16").itemsize
    for N, T, Smax, C in [(1, 1, 0, 1), (3, 10, 3, 6), (7, 33, 17, 5), (2, 4000, 1200, 40)]:
        for want_grad in (False, True):
            for from_logits in (False, True):
                offsets, total, alpha_n = _cuda._layout(N, T, Smax, C, want_grad, from_logits, acc)
                W, LS = 2 * Smax + 5, max(Smax, 1)
                assert alpha_n == (T if want_grad else 2) * W
                need = {"ws_alpha": N * alpha_n * a, "ws_beta": N * 2 * W * a if want_grad else 0,
                        "ws_gamma": N * W * a if want_grad else 0, "ws_gsum": N * LS * a, "ws_off": N * T * 8,
                        "ws_lse": T * N * a if from_logits else 0, "ws_lab": N * LS * 4, "ws_next": N * LS * 4,
                        "ws_cls": N * C * 4 if want_grad else 0}
                assert set(offsets) == set(need)
                order = sorted(offsets, key=offsets.get)
                ends = [offsets[k] for k in order[1:]] + [total]
                for name, end in zip(order, ends):
                    assert offsets[name] % 256 == 0, name
                    assert offsets[name] + need[name] <= end, (kind, name, N, T, Smax, C, want_grad, from_logits)


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
    acts, tg, il, tl = _random_case(rng, 9, 4, 5, 3, 0, np.float64)
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
    acts, tg, il, tl = _random_case(rng, 6, 3, 4, 2, 0, np.float32)
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
        acts, tg, il, tl = _random_case(rng, T, N, C, max(S, 1), blank, dtype, repeats=True)
        if S == 0:
            tg, tl = tg[:, :0], np.zeros(N, dtype=np.int64)
        for device_ints in (False, True):
            tgd = torch.from_numpy(tg).cuda() if device_ints else tg
            ild = torch.from_numpy(il).cuda() if device_ints else il
            tld = torch.from_numpy(tl).cuda() if device_ints else tl
            c, g, la = _cuda.run_device(torch.from_numpy(acts).cuda(), tgd, ild, tld, blank=blank,
                                        from_logits=from_logits, want_grad=True, want_alpha=True)
            ec, eg, ela = _cpu(acts, tg, il, tl, blank, from_logits, want_alpha=True)
            np.testing.assert_allclose(c.cpu().numpy(), ec, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
            np.testing.assert_allclose(g.cpu().numpy(), eg, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
            np.testing.assert_allclose(la.cpu().numpy(), ela, rtol=rtol, atol=atol)


@gpu
def test_gpu_public_api_routes_and_matches(rng):
    torch = _torch_cuda()
    acts, tg, il, tl = _random_case(rng, 40, 6, 12, 8, 0)
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
    acts, tg, il, tl = _random_case(rng, 300, 32, 40, 60, 0, np.float32, repeats=True)
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
    acts, tg, il, tl = _random_case(rng, T, N, C, S, 0, np.float32)
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
    acts, tg, il, tl = _random_case(rng, 60, 8, 20, 12, 0, np.float32)
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
    acts, tg, il, tl = _random_case(rng, 12, 3, 5, 4, 0)
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
        acts, tg, il, tl = _random_case(rng, 40, 6, 12, 8, 0, dtype, repeats=True)
        tl = np.minimum(tl, il)
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
