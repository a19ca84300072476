"""fastctc._cuda: the GPU path.  Compiles cuda/ctc.cu with NVRTC (through cuda.core) for
the device's arch on first use, caches the cubin on disk, and launches the kernels on the
caller's stream with no host synchronisation.

Imported lazily (fastctc never imports it at start-up, and this module imports cuda.core,
torch and CuPy only inside functions), so `import fastctc` never needs CUDA.

    status()      -> dict, cheap, never raises (used by fastctc.info())
    run_device(acts, targets, input_lengths, target_lengths, *, blank, from_logits,
               want_grad, grad_weights=None, want_alpha=False)
                  -> (costs (N,), grad (T, N, C) or None, log_alpha (N, T, 2S+1) or None)
    compile_cubin(arch) -> bytes (NVRTC only: works without a GPU or a driver)

Arrays: torch tensors and CuPy arrays are used as they are; anything else exposing
__cuda_array_interface__ or DLPack on a CUDA device (JAX, ...) is viewed through torch
(zero-copy DLPack) and the results are handed back as the caller's kind.  Targets and
lengths may live on the device (then only their shapes and dtypes are checked here; the
kernel turns out-of-range values into a NaN cost instead of reading out of bounds) or on
the host (then every value is checked and they are copied to the device from pinned
memory without blocking).  Results: costs and log_alpha in the input dtype (float32 for
float16/bfloat16 input), the gradient in the input dtype.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading

import numpy as np

from ._validate import CTCRuntimeError, CTCTypeError, CTCValueError

# Kernel arguments of fctc_ctc_*, in the order of FCTC_FIELDS in cuda/ctc.cu.
# kinds: p = pointer, i = int32, q = int64, d = double.
_TRELLIS_ARGS = (
    ("acts", "p"), ("st_t", "q"), ("st_n", "q"), ("T", "i"), ("N", "i"), ("C", "i"),
    ("targets", "p"), ("tg64", "i"), ("concat", "i"), ("tg_st_n", "q"), ("tg_st_s", "q"), ("tg_count", "q"),
    ("Smax", "i"),
    ("in_len", "p"), ("il64", "i"), ("il_st", "q"),
    ("tg_len", "p"), ("tl64", "i"), ("tl_st", "q"),
    ("blank", "i"), ("from_logits", "i"),
    ("w", "p"), ("w_kind", "i"), ("w_st", "q"), ("w_mul", "d"), ("mean", "i"),
    ("costs", "p"), ("grad", "p"), ("log_alpha", "p"), ("alpha_rows", "i"), ("alpha_cols", "i"),
    ("ws_alpha", "p"), ("ws_alpha_n", "q"), ("ws_beta", "p"), ("ws_gamma", "p"), ("ws_gsum", "p"),
    ("ws_off", "p"), ("ws_lse", "p"), ("ws_lab", "p"), ("ws_next", "p"), ("ws_cls", "p"),
    ("end_marker", "i"),
)
_LSE_ARGS = (("acts", "p"), ("st_t", "q"), ("st_n", "q"), ("T", "i"), ("N", "i"), ("C", "i"), ("lse", "p"))

# input dtype name -> (kernel suffix, accumulator dtype name).  The workspace, costs and
# log_alpha hold accumulator values, so every byte size of them comes from the accumulator
# (_acc_size), never from the input's itemsize: sizing them by the 2-byte half/bfloat16
# input once made the workspace regions overlap (the last sequences' alpha rows shared
# memory with beta and gamma, a race that corrupted their costs).
_KERNEL_TYPES = {
    "float32": ("f32", "float32"),
    "float64": ("f64", "float64"),
    "float16": ("f16", "float32"),
    "bfloat16": ("bf16", "float32"),
}
_ACC_SIZES = {"float32": 4, "float64": 8}


def _acc_size(acc: str) -> int:
    """Bytes of one accumulator value (the kernels' A type)."""
    return _ACC_SIZES[acc]
_ALIGN = 256
_NVRTC_OPTIONS = ("-std=c++17",)
_lock = threading.Lock()
_modules = {}  # (device ordinal) -> {kernel name: Kernel}


# ------------------------------------------------------------------ source, compile, cache

def source_path() -> str:
    """Where ctc.cu is: $FASTCTC_CUDA_SOURCE, next to the package (wheel), or the source tree."""
    env = os.environ.get("FASTCTC_CUDA_SOURCE")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "cuda", "ctc.cu"),
                      os.path.normpath(os.path.join(here, "..", "..", "cuda", "ctc.cu"))):
        if os.path.isfile(candidate):
            return candidate
    raise CTCRuntimeError("fastctc's CUDA source cuda/ctc.cu is not installed next to the package")


def cache_dir() -> str:
    return os.environ.get("FASTCTC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastctc")


def nvrtc_version() -> str:
    from cuda.bindings import nvrtc
    err, major, minor = nvrtc.nvrtcVersion()
    if int(err) != 0:
        raise CTCRuntimeError(f"nvrtcVersion failed: {err}")
    return f"{major}.{minor}"


class CUDACompileError(CTCRuntimeError):
    """NVRTC rejected cuda/ctc.cu; the message holds the log and the numbered source."""


def _numbered(source: str) -> str:
    return "\n".join(f"{i + 1:5d}  {line}" for i, line in enumerate(source.splitlines()))


def compile_cubin(arch: str, source: str | None = None, use_cache: bool = True) -> bytes:
    """cubin bytes of ctc.cu for `arch` ('sm_90', ...), from the disk cache when present.

    The cache key covers the source text, the arch, the NVRTC version and the options,
    so an edited kernel or a new NVRTC never reuses a stale binary.  Writes go to a
    temporary file in the cache folder, then os.replace: concurrent processes never see
    a half-written file."""
    if source is None:
        with open(source_path(), encoding="utf-8") as f:
            source = f.read()
    version = nvrtc_version()
    key = hashlib.sha256("\0".join((source, arch, version, *_NVRTC_OPTIONS)).encode()).hexdigest()[:32]
    folder = cache_dir()
    path = os.path.join(folder, f"ctc-{arch}-{key}.cubin")
    if use_cache and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        if data:
            return data
    from cuda.core import Program, ProgramOptions
    options = ProgramOptions(name="ctc.cu", arch=arch, std="c++17")
    try:
        program = Program(source, "c++", options)
        code = program.compile("cubin")
    except Exception as exc:  # cuda.core raises with NVRTC's log in the message
        raise CUDACompileError(f"NVRTC {version} could not compile ctc.cu for {arch}:\n{exc}\n\n"
                               f"source:\n{_numbered(source)}") from exc
    data = bytes(code.code)
    if use_cache:
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".ctc-", suffix=".tmp", dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache is not an error: the compile just is not reused
    return data


# ------------------------------------------------------------------ device status

def _driver_error(driver, err) -> str:
    """'CUDA_ERROR_NO_DEVICE' for a CUresult (its name when the driver can give it)."""
    try:
        e2, name = driver.cuGetErrorName(err)
        if int(e2) == 0 and name:
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    return str(err)


def status() -> dict:
    """Whether the GPU path can run here, and why not.  Cheap; never raises.

    Keys: available (bool); reason ('ok' or what is missing and how to get it); device
    (name of device 0), arch ('sm_90'), devices (count); nvrtc, driver (CUDA versions
    'major.minor'); cuda_core (package version); warning (only when something may fail at
    run time, e.g. a driver older than NVRTC).  The device is found through the CUDA driver
    API (libcuda), not NVML, which some containers lack even with a working GPU."""
    out = {"available": False, "reason": "", "device": None, "arch": None, "devices": 0, "nvrtc": None,
           "driver": None, "cuda_core": None}
    try:
        import cuda.core as cc
        out["cuda_core"] = getattr(cc, "__version__", "unknown")
    except Exception as exc:
        out["reason"] = f"cuda-core is not installed ({exc.__class__.__name__}): pip install fastctc[cuda]"
        return out
    try:
        out["nvrtc"] = nvrtc_version()
    except Exception as exc:
        out["reason"] = (f"NVRTC cannot be loaded ({exc.__class__.__name__}: {exc}): "
                         "pip install nvidia-cuda-nvrtc (part of fastctc[cuda])")
        return out
    try:
        from cuda.bindings import driver
    except Exception as exc:
        out["reason"] = f"cuda-bindings is not installed ({exc.__class__.__name__}): pip install fastctc[cuda]"
        return out
    try:
        (err,) = driver.cuInit(0)
    except Exception as exc:  # libcuda.so missing: no NVIDIA driver on this machine
        out["reason"] = (f"no NVIDIA driver: libcuda cannot be loaded ({exc.__class__.__name__}); "
                         "this machine has no GPU, or its driver is not installed/mounted")
        return out
    if int(err) != 0:
        name = _driver_error(driver, err)
        out["reason"] = ("no CUDA device (the driver sees none)" if name == "CUDA_ERROR_NO_DEVICE"
                         else f"the CUDA driver failed to start: cuInit returned {name}")
        return out
    try:
        err, version = driver.cuDriverGetVersion()
        if int(err) == 0:
            out["driver"] = f"{int(version) // 1000}.{int(version) % 1000 // 10}"
        err, count = driver.cuDeviceGetCount()
        out["devices"] = int(count) if int(err) == 0 else 0
        if not out["devices"]:
            out["reason"] = "no CUDA device (the driver sees none)"
            return out
        from cuda.core import Device
        dev = Device(0)
        out["device"] = dev.name
        out["arch"] = f"sm_{dev.arch}"
    except Exception as exc:
        out["reason"] = f"the CUDA device cannot be queried ({exc.__class__.__name__}: {exc})"
        return out
    try:
        from cuda.bindings import nvrtc
        err, archs = nvrtc.nvrtcGetSupportedArchs()
        if int(err) == 0 and archs and int(out["arch"][3:]) not in [int(a) for a in archs]:
            out["reason"] = (f"NVRTC {out['nvrtc']} cannot compile for {out['arch']} "
                             f"(it supports sm_{min(archs)} to sm_{max(archs)}): install an NVRTC wheel "
                             "that supports this GPU")
            return out
    except Exception:
        pass  # an older NVRTC without the query: the compile itself will tell
    # cubins load on any driver of the same CUDA major version (minor version
    # compatibility), not on an older major one
    if out["driver"] and int(out["driver"].split(".")[0]) < int(out["nvrtc"].split(".")[0]):
        major = out["driver"].split(".")[0]
        out["warning"] = (f"the driver supports CUDA {out['driver']} but NVRTC is {out['nvrtc']}: the compiled "
                          f"kernels may not load; install the CUDA {major} NVRTC wheel "
                          f"(nvidia-cuda-nvrtc-cu{major}) or a newer driver")
    out["available"] = True
    out["reason"] = "ok"
    return out


def _kernels(ordinal: int) -> dict:
    with _lock:
        kernels = _modules.get(ordinal)
        if kernels is not None:
            return kernels
        from cuda.core import Device, ObjectCode
        dev = Device(ordinal)
        dev.set_current()
        cubin = compile_cubin(f"sm_{dev.arch}")
        code = ObjectCode.from_cubin(cubin, name="ctc.cu")
        kernels = {}
        for suffix, _ in _KERNEL_TYPES.values():
            for stem in ("fctc_lse_", "fctc_ctc_"):
                kernels[stem + suffix] = code.get_kernel(stem + suffix)
        _modules[ordinal] = kernels
        return kernels


# ------------------------------------------------------------------ arrays

def is_cuda_array(x) -> bool:
    """True for torch CUDA tensors, CuPy/Numba arrays and DLPack producers on a CUDA device."""
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        return bool(getattr(x, "is_cuda", False))
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in (2, 13)  # kDLCUDA, kDLCUDAManaged
        except Exception:
            return False
    return False


_TORCH_NAMES = {"torch.float32": "float32", "torch.float64": "float64", "torch.float16": "float16",
                "torch.bfloat16": "bfloat16", "torch.int32": "int32", "torch.int64": "int64"}


class _Torch:
    """Allocation and pointers through torch (its caching allocator is stream-ordered)."""

    def __init__(self, device):
        import torch
        self.torch = torch
        self.device = device
        self.stream = torch.cuda.current_stream(device).cuda_stream

    def dtype_name(self, x):
        return _TORCH_NAMES.get(str(x.dtype), str(x.dtype))

    def empty(self, shape, name):
        return self.torch.empty(shape, dtype=getattr(self.torch, name), device=self.device)

    @staticmethod
    def ptr(x):
        return x.data_ptr()

    @staticmethod
    def shape(x):
        return tuple(x.shape)

    @staticmethod
    def strides(x):
        return tuple(x.stride())

    def from_host(self, arr):
        t = self.torch.from_numpy(np.ascontiguousarray(arr))
        if t.numel():
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def contiguous(self, x):
        return x.contiguous()


class _CuPy:
    def __init__(self, device):
        import cupy
        self.cp = cupy
        self.device = device
        self.stream = cupy.cuda.get_current_stream().ptr

    @staticmethod
    def dtype_name(x):
        return str(x.dtype)

    def empty(self, shape, name):
        with self.cp.cuda.Device(self.device):
            return self.cp.empty(shape, dtype=name)

    @staticmethod
    def ptr(x):
        return x.data.ptr

    @staticmethod
    def shape(x):
        return tuple(x.shape)

    @staticmethod
    def strides(x):
        return tuple(s // x.itemsize for s in x.strides)

    def from_host(self, arr):
        with self.cp.cuda.Device(self.device):
            return self.cp.asarray(np.ascontiguousarray(arr))

    def contiguous(self, x):
        return self.cp.ascontiguousarray(x)


def _backend_for(acts):
    """(backend, acts as the backend's array, converter of results to the caller's kind)."""
    mod = type(acts).__module__.split(".")[0]
    if mod == "torch":
        return _Torch(acts.device), acts, lambda r: r
    if mod == "cupy":
        return _CuPy(acts.device.id), acts, lambda r: r
    try:
        import torch
    except ImportError:
        raise CTCTypeError(f"{type(acts).__name__} arrays reach the GPU path through torch (DLPack); "
                           "install torch or pass a torch/CuPy array") from None
    try:
        view = torch.from_dlpack(acts)
    except Exception:
        view = torch.as_tensor(acts, device="cuda")  # __cuda_array_interface__
    if mod in ("jax", "jaxlib"):
        import jax.dlpack

        def back(r):
            return None if r is None else jax.dlpack.from_dlpack(r)
    else:
        def back(r):
            return r
    return _Torch(view.device), view, back


def _int_operand(be, x, name, shape_ok):
    """A device integer array (int32/int64) for targets or lengths: (array, is64, strides).
    Host values are checked by the caller before this and copied without blocking."""
    if is_cuda_array(x) and type(x).__module__.split(".")[0] in ("torch", "cupy"):
        kind = be.dtype_name(x)
        if kind not in ("int32", "int64"):
            raise CTCTypeError(f"{name} on the device must be int32 or int64, got {kind}")
        if not shape_ok(be.shape(x)):
            raise CTCValueError(f"{name} has shape {be.shape(x)}, which does not fit the activations")
        return x, int(kind == "int64"), be.strides(x)
    if is_cuda_array(x):
        return _int_operand(be, be.torch.from_dlpack(x), name, shape_ok)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise CTCTypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if not shape_ok(arr.shape):
        raise CTCValueError(f"{name} has shape {arr.shape}, which does not fit the activations")
    dev = be.from_host(arr.astype(np.int64))
    return dev, 1, be.strides(dev)


def _check_host_ints(x, name, low, high):
    if is_cuda_array(x):
        return
    arr = np.asarray(x)
    if arr.size and arr.dtype.kind in "iu":
        bad = (arr < low) | (arr > high)
        if bad.any():
            i = np.unravel_index(int(np.flatnonzero(bad)[0]), arr.shape)
            idx = ", ".join(str(int(k)) for k in i)
            raise CTCValueError(f"{name}[{idx}] = {int(arr[i])} is outside [{low}, {high}]")


def _layout(N, T, Smax, C, want_grad, from_logits, acc):
    """Byte offsets of every workspace region (mirrors the kernel's per-sequence strides):
    (offsets, total bytes, alpha elements per sequence).  `acc` is the accumulator dtype
    name ('float32' for float16/bfloat16 inputs too)."""
    acc_size = _acc_size(acc)
    W = 2 * Smax + 5
    LS = max(Smax, 1)
    rows = T if want_grad else 2
    regions = [("ws_alpha", N * rows * W * acc_size), ("ws_beta", N * 2 * W * acc_size if want_grad else 0),
               ("ws_gamma", N * W * acc_size if want_grad else 0), ("ws_gsum", N * LS * acc_size),
               ("ws_off", N * max(T, 1) * 8), ("ws_lse", T * N * acc_size if from_logits else 0),
               ("ws_lab", N * LS * 4), ("ws_next", N * LS * 4), ("ws_cls", N * C * 4 if want_grad else 0)]
    offsets, total = {}, 0
    for name, size in regions:
        offsets[name] = total
        total += -(-max(size, 1) // _ALIGN) * _ALIGN
    return offsets, total, rows * W


def pack_args(values: dict, spec=_TRELLIS_ARGS):
    """Kernel arguments as numpy scalars (pointers as Python ints), in the kernel's order."""
    out = []
    for name, kind in spec:
        v = values[name]
        if kind == "p":
            out.append(int(v))
        elif kind == "i":
            out.append(np.int32(v))
        elif kind == "q":
            out.append(np.int64(v))
        else:
            out.append(np.float64(v))
    return out


def _block_threads(Smax, C):
    return 256 if (2 * Smax + 5 > 128 or C > 2048) else 128


def run_device(acts, targets, input_lengths, target_lengths, *, blank, from_logits, want_grad,
               grad_weights=None, want_alpha=False, max_target_length=None, mean_weights=False):
    """The engine on the GPU (see the module docstring and fastctc._engine.run).

    max_target_length: bound for concatenated targets whose lengths live on the device
    (default: the number of concatenated labels).  mean_weights: multiply each
    sequence's gradient weight by 1 / (max(target_length, 1) * N) on the device."""
    be, x, back = _backend_for(acts)
    kind = be.dtype_name(x)
    if kind not in _KERNEL_TYPES:
        raise CTCTypeError(f"acts must be float32, float64, float16 or bfloat16, got {kind}")
    shape = be.shape(x)
    if len(shape) != 3:
        raise CTCValueError(f"acts must have shape (T, N, C), got {shape}")
    T, N, C = shape
    if C < 1:
        raise CTCValueError("acts must have at least one class (C >= 1), got C = 0")
    if isinstance(blank, (bool, np.bool_)) or not 0 <= int(blank) < C:
        raise CTCValueError(f"blank must be in [0, {C}), got {blank}")
    if be.strides(x)[2] != 1 or any(s < 0 for s in be.strides(x)):
        x = be.contiguous(x)
    st_t, st_n, _ = be.strides(x)
    suffix, acc = _KERNEL_TYPES[kind]

    # targets and lengths: shapes always, values too when they are on the host
    tshape = tuple(be.shape(targets)) if is_cuda_array(targets) and hasattr(targets, "shape") \
        else np.shape(targets)
    concat = len(tshape) == 1
    if len(tshape) not in (1, 2) or (not concat and tshape[0] != N):
        raise CTCValueError(f"targets must have shape (N, S) = ({N}, S) or (sum(target_lengths),), got {tshape}")
    _check_host_ints(input_lengths, "input_lengths", 0, T)
    if concat:
        if max_target_length is not None:
            Smax = int(max_target_length)
        elif not is_cuda_array(target_lengths):
            Smax = int(np.max(np.asarray(target_lengths))) if N else 0
        else:
            Smax = int(tshape[0])
        _check_host_ints(target_lengths, "target_lengths", 0, Smax)
        if not is_cuda_array(target_lengths) and int(np.sum(np.asarray(target_lengths, dtype=np.int64))) != tshape[0]:
            raise CTCValueError(f"concatenated targets must hold sum(target_lengths) values, got {tshape[0]}")
    else:
        Smax = int(tshape[1])
        _check_host_ints(target_lengths, "target_lengths", 0, Smax)
    if not is_cuda_array(targets):
        tg_host = np.asarray(targets)
        tl_host = np.asarray(target_lengths) if not is_cuda_array(target_lengths) else None
        if tl_host is not None and tg_host.size:
            if concat:
                bad = (tg_host < 0) | (tg_host >= C)
            else:
                bad = ((tg_host < 0) | (tg_host >= C)) & (np.arange(Smax)[None, :] < tl_host.reshape(-1, 1))
            if bad.any():
                i = np.unravel_index(int(np.flatnonzero(bad)[0]), tg_host.shape)
                raise CTCValueError(f"targets[{', '.join(map(str, i))}] = {int(tg_host[i])} is outside [0, {C})")
    tg, tg64, tg_st = _int_operand(be, targets, "targets", lambda s: s == tuple(tshape))
    il, il64, il_st = _int_operand(be, input_lengths, "input_lengths", lambda s: s == (N,))
    tl, tl64, tl_st = _int_operand(be, target_lengths, "target_lengths", lambda s: s == (N,))

    w_kind, w_ptr, w_st, w_arr = 0, 0, 0, None
    if grad_weights is not None and want_grad:
        if is_cuda_array(grad_weights):
            w_arr = grad_weights if type(grad_weights).__module__.split(".")[0] in ("torch", "cupy") \
                else be.torch.from_dlpack(grad_weights)
            wk = be.dtype_name(w_arr)
            if wk not in ("float32", "float64"):
                w_arr = w_arr.double() if hasattr(w_arr, "double") else w_arr.astype("float64")
                wk = "float64"
            wshape = be.shape(w_arr)
            if wshape not in ((N,), (), (1,)):
                raise CTCValueError(f"grad_weights must have shape (N,) = ({N},), got {wshape}")
            w_kind = 1 if wk == "float32" else 2
            w_st = be.strides(w_arr)[0] if wshape == (N,) else 0
        else:
            host = np.asarray(grad_weights, dtype=np.float64).reshape(-1)
            if host.shape not in ((N,), (1,)):
                raise CTCValueError(f"grad_weights must have shape (N,) = ({N},), got {np.shape(grad_weights)}")
            w_arr = be.from_host(host)
            w_kind, w_st = 2, (1 if host.shape == (N,) else 0)
        w_ptr = be.ptr(w_arr)

    costs = be.empty((N,), acc)
    grad = be.empty((T, N, C), kind) if want_grad else None
    alpha_cols = 2 * Smax + 1
    log_alpha = be.empty((N, T, alpha_cols), acc) if want_alpha else None
    if N == 0:
        return back(costs), back(grad), back(log_alpha)

    offsets, total, alpha_n = _layout(N, T, Smax, C, want_grad, from_logits, acc)
    ws = be.empty((total,), "uint8")
    base = be.ptr(ws)
    values = dict(acts=be.ptr(x), st_t=st_t, st_n=st_n, T=T, N=N, C=C,
                  targets=be.ptr(tg), tg64=tg64, concat=int(concat), tg_st_n=0 if concat else tg_st[0],
                  tg_st_s=tg_st[-1], tg_count=int(tshape[0]) if concat else 0, Smax=Smax, in_len=be.ptr(il), il64=il64, il_st=il_st[0],
                  tg_len=be.ptr(tl), tl64=tl64, tl_st=tl_st[0], blank=int(blank), from_logits=int(bool(from_logits)),
                  w=w_ptr, w_kind=w_kind, w_st=w_st, w_mul=1.0, mean=int(bool(mean_weights)),
                  costs=be.ptr(costs), grad=be.ptr(grad) if want_grad else 0,
                  log_alpha=be.ptr(log_alpha) if want_alpha else 0, alpha_rows=T, alpha_cols=alpha_cols,
                  ws_alpha_n=alpha_n, end_marker=0)
    for name, off in offsets.items():
        values[name] = base + off

    from cuda.core import LaunchConfig, Stream, launch
    kernels = _kernels(x.device.index if hasattr(x.device, "index") else int(be.device))
    stream = Stream.from_handle(int(be.stream))
    if from_logits and T:
        rows_per_block = 8
        launch(stream, LaunchConfig(grid=-(-T * N // rows_per_block), block=32 * rows_per_block),
               kernels["fctc_lse_" + suffix],
               *pack_args(dict(acts=be.ptr(x), st_t=st_t, st_n=st_n, T=T, N=N, C=C, lse=values["ws_lse"]),
                          _LSE_ARGS))
    launch(stream, LaunchConfig(grid=N, block=_block_threads(Smax, C)), kernels["fctc_ctc_" + suffix],
           *pack_args(values))
    # keep the workspace and host-copied operands alive until the kernels have run: the
    # torch/CuPy allocators are stream-ordered, so releasing them now is safe for reuse
    # on the same stream; record_stream covers other streams.
    return back(costs), back(grad), back(log_alpha)


# ------------------------------------------------------------------ PyTorch-style API on device

def reduce_device(costs, target_lengths, reduction, zero_infinity):
    """torch's reductions on a device costs vector (torch or CuPy), without synchronising."""
    mod = type(costs).__module__.split(".")[0]
    if mod == "torch":
        import torch as xp
    elif mod == "cupy":
        import cupy as xp
    else:
        raise CTCTypeError(f"cannot reduce a {type(costs).__name__} on the device")
    if zero_infinity:
        costs = xp.where(xp.isinf(costs) & (costs > 0), xp.zeros_like(costs), costs)
    if reduction == "none":
        return costs
    if reduction == "sum":
        return costs.sum()
    N = costs.shape[0]
    if is_cuda_array(target_lengths):
        tl = target_lengths
        if mod == "torch" and type(tl).__module__.split(".")[0] != "torch":
            tl = xp.from_dlpack(tl)
        tl = tl.to(costs.dtype) if mod == "torch" else tl.astype(costs.dtype)
    else:
        host = np.maximum(np.asarray(target_lengths, dtype=np.float64), 1.0).astype(str(costs.dtype).split(".")[-1])
        tl = xp.asarray(host, device=costs.device) if mod == "torch" else xp.asarray(host)
    tl = tl.clamp(min=1) if mod == "torch" else xp.maximum(tl, 1)
    return (costs / tl).sum() / N


def ctc_loss_device(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                    from_logits, want_grad):
    """fastctc.ctc_loss / ctc_loss_and_grad for device arrays: (loss, grad or None)."""
    be, x, back = _backend_for(log_probs)
    unbatched = len(be.shape(x)) == 2
    if unbatched:
        x = x[:, None, :]  # targets keep their form: 1-D concatenated or (1, S) padded, as in PyTorch
        input_lengths = np.asarray(input_lengths).reshape(1) if not is_cuda_array(input_lengths) \
            else input_lengths.reshape(1)
        target_lengths = np.asarray(target_lengths).reshape(1) if not is_cuda_array(target_lengths) \
            else target_lengths.reshape(1)
    mean = reduction == "mean"
    costs, grad, _ = run_device(x, targets, input_lengths, target_lengths, blank=blank,
                                from_logits=from_logits, want_grad=want_grad, mean_weights=mean)
    loss = reduce_device(costs, target_lengths, reduction, zero_infinity)
    if unbatched:
        if reduction == "none":
            loss = loss.reshape(())
        if grad is not None:
            grad = grad[:, 0, :]
    return back(loss), back(grad) if grad is not None else None
