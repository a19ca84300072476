"""fastctc._cuda_build: the GPU path's compile, cache and status jobs.

    source_path()            -> where cuda/ctc.cu is
    NVRTC_OPTIONS            the one source of the compile options (cache key, NVRTC, nvcc test)
    nvcc_flags(), NVCC_FLAGS NVRTC_OPTIONS spelt for nvcc
    compile_cubin(arch)      -> cubin bytes (NVRTC only: works without a GPU or a driver)
    cache_key(source, arch)  -> the disk-cache key: source, arch, every option, NVRTC and
                                cuda-core versions
    kernels(ordinal)         -> {kernel name: cuda.core Kernel} for that device, compiled or
                                loaded once per process; a cached cubin that does not load is
                                recompiled (once) and its cache entry replaced; the caller's
                                current device/context is restored
    status()                 -> dict, cheap, never raises (used by fastctc.info())

Imported lazily: nothing here runs at `import fastctc`, and cuda.core / cuda.bindings are
imported inside functions only.  The launch side is fastctc._cuda_launch.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import threading

from ._validate import CTCRuntimeError

# NVRTC options, as cuda.core ProgramOptions keywords: the one list of compile options
# (the cache key, NVRTC and, spelt by nvcc_flags, the nvcc compile test read it).
# fma=False (--fmad=false): no multiply-add contraction, so that a value never depends on
# how the compiler scheduled the context it was inlined into (the warp and block kernels
# share their arithmetic and must agree bit for bit).
NVRTC_OPTIONS = (("std", "c++17"), ("fma", False))
PROGRAM_NAME = "ctc.cu"  # NVRTC's name for the program (its messages quote it); in the key too


def nvcc_flags(options=None) -> tuple:
    """NVRTC_OPTIONS spelt for nvcc; an option without an nvcc spelling here is an error,
    so that a new option cannot reach NVRTC but not the nvcc compile test."""
    spell = {"std": lambda v: f"-std={v}", "fma": lambda v: f"--fmad={'true' if v else 'false'}"}
    out = []
    for key, value in NVRTC_OPTIONS if options is None else options:
        if key not in spell:
            raise KeyError(f"NVRTC option {key!r} has no nvcc spelling in fastctc._cuda_build.nvcc_flags")
        out.append(spell[key](value))
    return tuple(out)


NVCC_FLAGS = nvcc_flags()
# Bumped whenever the cache layout or the meaning of a cached file changes.
_CACHE_FORMAT = "2"

_lock = threading.Lock()
_loaded = {}  # device ordinal -> {kernel name: Kernel}


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


def read_source() -> str:
    with open(source_path(), encoding="utf-8") as f:
        return f.read()


def cache_dir() -> str:
    return os.environ.get("FASTCTC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastctc")


def nvrtc_version() -> str:
    from cuda.bindings import nvrtc
    err, major, minor = nvrtc.nvrtcVersion()
    if int(err) != 0:
        raise CTCRuntimeError(f"nvrtcVersion failed: {err}")
    return f"{major}.{minor}"


def cuda_core_version() -> str:
    import cuda.core as cc
    return str(getattr(cc, "__version__", "unknown"))


class CUDACompileError(CTCRuntimeError):
    """NVRTC rejected cuda/ctc.cu; the message holds the log and the numbered source."""


def _numbered(source: str) -> str:
    return "\n".join(f"{i + 1:5d}  {line}" for i, line in enumerate(source.splitlines()))


def cache_key(source: str, arch: str) -> str:
    """Everything that can change the cubin: the source, the arch, every compile option,
    the NVRTC and cuda-core versions, and the cache format."""
    parts = [_CACHE_FORMAT, source, arch, PROGRAM_NAME, nvrtc_version(), cuda_core_version(),
             *(f"{k}={v!r}" for k, v in NVRTC_OPTIONS)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def cache_path(source: str, arch: str) -> str:
    return os.path.join(cache_dir(), f"ctc-{arch}-{cache_key(source, arch)}.cubin")


def compile_cubin(arch: str, source: str | None = None, use_cache: bool = True) -> bytes:
    """cubin bytes of ctc.cu for `arch` ('sm_90', ...), from the disk cache when present.

    Writes go to a temporary file in the cache folder, then os.replace: concurrent
    processes never see a half-written file; a read-only cache only costs the reuse."""
    if source is None:
        source = read_source()
    path = cache_path(source, arch)
    if use_cache and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        if data:
            return data
    from cuda.core import Program, ProgramOptions
    options = ProgramOptions(name=PROGRAM_NAME, arch=arch, **dict(NVRTC_OPTIONS))
    try:
        code = Program(source, "c++", options).compile("cubin")
    except Exception as exc:  # cuda.core raises with NVRTC's log in the message
        raise CUDACompileError(f"NVRTC {nvrtc_version()} could not compile ctc.cu for {arch}:\n{exc}\n\n"
                               f"source:\n{_numbered(source)}") from exc
    data = bytes(code.code)
    if use_cache:
        store_cubin(path, data)
    return data


def store_cubin(path: str, data: bytes) -> None:
    """Writes a cache entry atomically (a temporary file, then os.replace); a cache folder
    that cannot be written only costs the reuse."""
    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ctc-", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass


def kernel_names() -> list:
    """Every entry point of ctc.cu (the FCTC_KERNELS and FCTC_REDUCE instantiations)."""
    names = []
    for suffix in ("f32", "f64", "f16", "bf16"):
        names += [f"fctc_lse_{suffix}", f"fctc_grad_{suffix}"]
        names += [f"fctc_trellis_{suffix}_{tag}" for tag in ("w2", "w4", "w8", "b4", "b16")]
    return names + ["fctc_reduce_f32", "fctc_reduce_f64"]


def _load(cubin: bytes) -> dict:
    from cuda.core import ObjectCode
    code = ObjectCode.from_cubin(cubin, name="ctc.cu")
    return {name: code.get_kernel(name) for name in kernel_names()}


class _KeepContext:
    """Restores the calling thread's current CUDA context on exit: loading a module needs
    the device's context current, but the caller's current device must not change."""

    def __enter__(self):
        from cuda.bindings import driver
        self.driver = driver
        err, self.ctx = driver.cuCtxGetCurrent()
        self.ok = int(err) == 0
        return self

    def __exit__(self, *exc):
        if self.ok:
            self.driver.cuCtxSetCurrent(self.ctx)
        return False


def kernels(ordinal: int) -> dict:
    """The device's kernels, compiled (or read from the cache) and loaded once per process.
    A cached cubin that fails to load (a truncated file, a driver that rejects it) is
    compiled afresh and the cache entry replaced."""
    with _lock:
        found = _loaded.get(ordinal)
        if found is not None:
            return found
        from cuda.core import Device
        with _KeepContext():
            dev = Device(ordinal)
            dev.set_current()
            arch = f"sm_{dev.arch}"
            source = read_source()
            try:
                found = _load(compile_cubin(arch, source))
            except CUDACompileError:
                raise
            except Exception:
                try:
                    os.remove(cache_path(source, arch))
                except OSError:
                    pass
                fresh = compile_cubin(arch, source, use_cache=False)
                found = _load(fresh)
                store_cubin(cache_path(source, arch), fresh)  # the next process loads it (no second compile)
        _loaded[ordinal] = found
        return found


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
