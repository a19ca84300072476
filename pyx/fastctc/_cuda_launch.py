"""fastctc._cuda_launch: the GPU path's launch side (arrays, workspace, geometry, launches).

Entry points (none of them synchronises with the host; all work is queued on the stream
the inputs' framework calls current for the inputs' device, whose current device is never
changed):

    torch_forward(log_probs, targets, input_lengths, target_lengths, *, blank=0,
                  from_logits=False, want_grad=True, max_target_length=None)
        -> (costs, workspace)
        log_probs: CUDA tensor (T, N, C) float32/float64/float16/bfloat16, class axis
        contiguous (other strides are read in place).  targets: (N, S) padded or 1-D
        concatenated; targets and lengths: CUDA tensors (values are then not checked on
        the host: an out-of-range value makes that sequence's cost NaN) or host tensors /
        arrays / sequences (checked, then copied through pinned memory without blocking).
        costs: (N,) float32 (float64 for float64 input), -log p per sequence, +inf when the
        target cannot fit, NaN for bad device values or undefined inputs (NaN/+inf scores).
        workspace: uint8 CUDA tensor holding the forward and backward variables when
        want_grad (pass it to torch_backward), else a small tensor.
    torch_backward(log_probs, targets, input_lengths, target_lengths, workspace, weights,
                   *, blank=0, from_logits=False, mean=False, max_target_length=None)
        -> grad (T, N, C), log_probs' dtype
        The same first four arguments as the forward call (same tensors, unchanged).
        weights: the upstream gradient of the costs: a CUDA tensor of shape (N,) (reduction
        'none') or () / (1,) (one weight for every sequence: 'sum', 'mean'), float32 or
        float64; mean=True further divides sequence n's weight by max(target_length, 1) * N
        on the device (torch's 'mean').  grad = weight_n * d cost_n / d log_probs
        (from_logits: d cost_n / d logits = weight_n * (softmax - occupancy)); rows past
        input_lengths[n] and infinite costs' rows are 0, undefined sequences' rows NaN.
    torch_ctc(log_probs, targets, input_lengths, target_lengths, weights=None, *, blank=0,
              from_logits=False, mean=False, max_target_length=None) -> (costs, grad)
        Both in one call (weights None: 1 for every sequence).
    forward_call(...) -> (costs, call); backward_call(call, weights, *, mean=False) -> grad
        torch_forward / torch_backward keeping the forward's checked operands, plan and
        workspace (call.ws) for the backward (what fastctc.torch's autograd uses: the
        backward then costs one argument packing and one launch); call.arrays() /
        call.release() let the caller own the arrays the call reads.

    run_device(acts, targets, input_lengths, target_lengths, *, blank, from_logits,
               want_grad, grad_weights=None, want_alpha=False, max_target_length=None,
               mean_weights=False) -> (costs (N,), grad (T, N, C) or None, log_alpha or None)
        The engine's contract for any CUDA array: torch tensors, CuPy arrays (on any
        device: that device's current stream), or anything exposing DLPack /
        __cuda_array_interface__ (viewed through torch, results handed back as the caller's
        kind).  log_alpha: (N, T, 2 S + 1), -inf past each sequence's lengths.
    ctc_loss_device(...): fastctc.ctc_loss[_and_grad] on device arrays (reduced by
        fastctc._reduction, on the device).

Graph capture: every launch goes to the current stream and no call reads a device value
on the host, so torch_forward / torch_backward can be captured in a CUDA graph.  Pass
targets and lengths as CUDA tensors when capturing: host values are uploaded from a pinned
buffer at capture time and a replay would reuse that buffer.

Launch route (LAUNCH_MODE, from FASTCTC_CUDA_LAUNCH at import): by default ("c") the
launches go through the compiled launcher fastctc._cuda_fast: the arguments are packed in C
straight from the call's values and handed to the driver's cuLaunchKernel (its address from
cuda-bindings' cuGetProcAddress, looked up on first use), and fastctc.torch's plain calls
take its compiled route (_cuda_fast.torch_call) before any of this module's Python runs.
FASTCTC_CUDA_LAUNCH=python packs every argument as a NumPy scalar and launches through
cuda.core's launch().  Same kernels, same arguments, same bits.

Workspace: alpha and beta rows of W >= 2 Lcap + 1 states (W a multiple of 4), with Lcap
= min(longest target, T); for concatenated targets whose lengths live on the device the
longest target is not known without a synchronisation, so it is bounded by
min(total labels, T) unless max_target_length is given.
"""
from __future__ import annotations

import operator
import os
import warnings

import numpy as np

from . import _cuda_fast
from ._reduction import reduce_losses
from ._validate import (
    CTCTypeError,
    CTCValueError,
    check_at_least_one,
    check_batch_size,
    check_dtype,
    check_index,
    check_integer_dtype,
    check_range,
    check_rank,
    padded_mask,
)

# Kernel arguments of fctc_trellis_* and fctc_grad_*, in the order of FCTC_FIELDS in
# cuda/ctc.cu.  kinds: p = pointer, i = int32, q = int64, d = double.
TRELLIS_ARGS = (
    ("acts", "p"), ("st_t", "q"), ("st_n", "q"), ("T", "i"), ("N", "i"), ("C", "i"),
    ("targets", "p"), ("tg64", "i"), ("concat", "i"), ("tg_st_n", "q"), ("tg_st_s", "q"), ("tg_count", "q"),
    ("Smax", "i"), ("Lcap", "i"), ("W", "i"),
    ("in_len", "p"), ("il64", "i"), ("il_st", "q"),
    ("tg_len", "p"), ("tl64", "i"), ("tl_st", "q"),
    ("blank", "i"), ("from_logits", "i"), ("sel_lo", "i"), ("sel_hi", "i"),
    ("w", "p"), ("w_kind", "i"), ("w_st", "q"), ("w_mul", "d"), ("mean", "i"), ("vec", "i"),
    ("costs", "p"), ("grad", "p"), ("log_alpha", "p"), ("alpha_rows", "i"), ("alpha_cols", "i"),
    ("ws_alpha", "p"), ("ws_beta", "p"), ("ws_offa", "p"), ("ws_offb", "p"), ("ws_lse", "p"),
    ("ws_lab", "p"), ("ws_nxt", "p"), ("ws_first", "p"), ("ws_info", "p"), ("ws_ll", "p"),
    ("end_marker", "i"),
)
LSE_ARGS = (("acts", "p"), ("st_t", "q"), ("st_n", "q"), ("T", "i"), ("N", "i"), ("C", "i"), ("lse", "p"))
# fctc_reduce_*: the costs' reduction (mode REDUCE_MODES[reduction]; zero_inf: +inf -> 0)
REDUCE_ARGS = (("costs", "p"), ("N", "i"), ("tg_len", "p"), ("tl64", "i"), ("tl_st", "q"), ("mode", "i"),
               ("zero_inf", "i"), ("out", "p"))
REDUCE_MODES = {"none": 0, "sum": 1, "mean": 2}
REDUCE_BLOCK = _cuda_fast.LIMITS["REDUCE_BLOCK"]  # fctc_reduce's one block (its result does not depend on it)

# input dtype name -> (kernel suffix, accumulator dtype name).  Workspace, costs and
# log_alpha hold accumulator values: their sizes come from the accumulator, never from
# the 2-byte half/bfloat16 input.
KERNEL_TYPES = {
    "float32": ("f32", "float32"),
    "float64": ("f64", "float64"),
    "float16": ("f16", "float32"),
    "bfloat16": ("bf16", "float32"),
}
_ACC_SIZES = {"float32": 4, "float64": 8}
# the plan's constants (fastctc._cuda_fast holds the plan itself, shared with the compiled route)
WARPS_PER_CTA = _cuda_fast.LIMITS["WARPS_PER_CTA"]  # sequences per CTA in the warp kernels
GRAD_WARPS = _cuda_fast.LIMITS["GRAD_WARPS"]        # rows per CTA in the gradient kernel
LSE_ROWS = _cuda_fast.LIMITS["LSE_ROWS"]            # rows per CTA in the row-sum kernel (a warp a row)
MAX_STATES = _cuda_fast.LIMITS["MAX_STATES"]        # the largest extended target a block kernel holds


def acc_size(acc: str) -> int:
    """Bytes of one accumulator value (the kernels' A type)."""
    return _ACC_SIZES[acc]


def group_bytes(K: int, warp: bool, Lcap: int, acc: str) -> int:
    """Bytes of dynamic shared memory of one group (mirrors fctc_trellis's layout)."""
    return _cuda_fast.group_bytes(K, warp, Lcap, acc_size(acc))


def plan(T, N, C, Smax, *, want_grad, from_logits, acc):
    """Workspace layout and launches of one call (fastctc._cuda_fast.plan, the one copy).

    Returns dict(Lcap, W, offsets {region: byte offset or None}, total bytes, launches:
    [(kernel tag, grid (x, y), block, shared bytes, sel_lo, sel_hi)]).  Sequences with an
    extended target of up to 256 states go to the warp kernels, longer ones to a block
    kernel; both launches are made when the batch's bound allows both (each kernel skips
    the other's sequences), so nothing on the host depends on device-resident lengths.
    C does not enter the layout (kept for the callers' symmetry)."""
    found = _cuda_fast.plan(int(T), int(N), int(Smax), bool(want_grad), bool(from_logits), acc_size(acc))
    if found is None:
        L = min(int(Smax), int(T))
        raise CTCValueError(f"targets of up to {L} labels (2 L + 1 = {2 * L + 1} states) exceed "
                            f"the GPU kernels' limit of {MAX_STATES} states (L <= {(MAX_STATES - 1) // 2}); "
                            "pass max_target_length when concatenated targets' lengths live on the device")
    return found


_DTYPES = {"i": np.int32, "q": np.int64, "d": np.float64}
_SPECS = {}


def pack_args(values: dict, spec=TRELLIS_ARGS):
    """Kernel arguments as numpy scalars (pointers as Python ints), in the kernel's order.
    Scalars of one kind are made by one array conversion, their values fetched by one
    itemgetter (this runs on every call, and the host cost per call is what a tiny batch
    pays)."""
    groups = _SPECS.get(id(spec))
    if groups is None:
        groups = []
        for kind in ("p", "i", "q", "d"):
            idx = tuple(i for i, (_, k) in enumerate(spec) if k == kind)
            names = [n for n, k in spec if k == kind]
            if not names:
                continue
            get = operator.itemgetter(*names) if len(names) > 1 else (lambda d, n=names[0]: (d[n],))
            groups.append((idx, get, _DTYPES.get(kind)))
        _SPECS[id(spec)] = groups
    out = [None] * len(spec)
    for idx, get, dtype in groups:
        vals = get(values)
        if dtype is not None:
            vals = np.array(vals, dtype=dtype)  # iterating it yields numpy scalars of that type
        for i, v in zip(idx, vals):
            out[i] = v
    return out


# ------------------------------------------------------------------ launch route

def _launch_mode_from_env():
    raw = os.environ.get("FASTCTC_CUDA_LAUNCH", "").strip().lower()
    if raw in ("", "c"):
        return "c"
    if raw == "python":
        return "python"
    warnings.warn(f"FASTCTC_CUDA_LAUNCH={raw!r} is not one of 'c', 'python': using the default (c)",
                  RuntimeWarning, stacklevel=2)
    return "c"


# "c" (the default): fastctc._cuda_fast, the compiled launcher and torch route;
# "python" (FASTCTC_CUDA_LAUNCH=python): cuda.core's launch() from Python.  When the driver
# does not give the compiled launcher its entry points, the default falls back to
# "python" (once, with a RuntimeWarning); FASTCTC_CUDA_LAUNCH=c then raises instead.
# Benchmarks and the device check flip it in one process to compare the two.
LAUNCH_MODE = _launch_mode_from_env()
_LAUNCH_EXPLICIT = os.environ.get("FASTCTC_CUDA_LAUNCH", "").strip().lower() == "c"

_fast = None       # fastctc._cuda_fast once the driver's cuLaunchKernel is installed
_specs = None      # (TRELLIS_ARGS, LSE_ARGS) as _cuda_fast.Spec
_reduce_spec = None  # REDUCE_ARGS as _cuda_fast.Spec
_handles = {}      # device ordinal -> {kernel name: CUkernel address}


def _driver_address(symbol: str) -> int:
    """The address of a driver entry point (legacy default-stream semantics, as the stream
    handles torch and CuPy give are), through cuda-bindings' cuGetProcAddress."""
    from cuda.bindings import driver
    flags = driver.CUdriverProcAddress_flags.CU_GET_PROC_ADDRESS_LEGACY_STREAM
    err, pfn, found = driver.cuGetProcAddress(symbol.encode(), 12000, flags)
    ok = driver.CUdriverProcAddressQueryResult.CU_GET_PROC_ADDRESS_SUCCESS
    if int(err) != 0 or int(found) != int(ok) or not int(pfn):
        raise RuntimeError(f"the compiled CUDA launcher needs the driver's {symbol}, which cuGetProcAddress does "
                           f"not give ({err}, {found}); set FASTCTC_CUDA_LAUNCH=python to use cuda.core's launch")
    return int(pfn)


def compiled_route():
    """fastctc._cuda_fast when the compiled launcher is in use (LAUNCH_MODE "c", the
    default; its torch_call is fastctc.torch's compiled CUDA route), else None."""
    if LAUNCH_MODE != "c":
        return None
    return _fast or _c_launcher()


def _c_ready() -> bool:
    """Whether this call's launches go through the compiled launcher."""
    return LAUNCH_MODE == "c" and (_fast is not None or _c_launcher() is not None)


def _c_launcher():
    """fastctc._cuda_fast with cuLaunchKernel installed (the driver is asked on first use
    only: importing the module touches no driver, so it imports on machines without CUDA).
    None when the driver does not give the entry points under the default launch mode,
    which then becomes "python"."""
    global _fast, _specs, _reduce_spec, LAUNCH_MODE
    if _fast is not None:
        return _fast
    if _specs is None:
        _specs = (_cuda_fast.Spec(TRELLIS_ARGS), _cuda_fast.Spec(LSE_ARGS))
        _reduce_spec = _cuda_fast.Spec(REDUCE_ARGS)
    if not _cuda_fast.driver_installed() and not _cuda_fast.recording():
        try:
            launch = _driver_address("cuLaunchKernel")
            context = [_driver_address(name) for name in ("cuCtxGetDevice", "cuCtxSetCurrent", "cuDeviceGet",
                                                          "cuDevicePrimaryCtxRetain")]
        except Exception as exc:
            if _LAUNCH_EXPLICIT:
                raise
            warnings.warn(f"fastctc: {exc}; launching through cuda.core instead", RuntimeWarning, stacklevel=2)
            LAUNCH_MODE = "python"
            return None
        _cuda_fast.set_driver_launch(launch)
        _cuda_fast.set_driver_context(*context)
        _cuda_fast.set_device_guard(_DeviceGuard)
    if _cuda_fast.driver_installed():  # kept once the driver is in (not while only the test recorder is)
        _fast = _cuda_fast
    return _cuda_fast


def _kernel_handles(ordinal: int) -> dict:
    """{kernel name: CUkernel address} of the device's kernels (loaded once per process;
    cuLaunchKernel takes a CUkernel cast to CUfunction and launches it in the context of
    the stream it is given)."""
    found = _handles.get(ordinal)
    if found is None:
        from . import _cuda_build
        found = _handles[ordinal] = {name: int(k.handle) for name, k in _cuda_build.kernels(ordinal).items()}
        _cuda_fast.set_kernels(ordinal, found)  # the compiled route launches them from here on
    return found


_SEL = (TRELLIS_ARGS.index(("sel_lo", "i")), TRELLIS_ARGS.index(("sel_hi", "i")))
# the arguments a backward changes after its forward (weights, outputs): a gradient launch
# after a forward launch of the same call repacks these only
_GRAD_FIELDS = tuple((i, n, k) for i, (n, k) in enumerate(TRELLIS_ARGS)
                     if n in ("w", "w_kind", "w_st", "w_mul", "mean", "costs", "grad", "log_alpha"))


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
        self.ordinal = device.index if device.index is not None else torch.cuda.current_device()
        # the current stream *of that device*: no change of the current device
        self.stream = torch.cuda.current_stream(device).cuda_stream

    def refresh_stream(self):
        if self.device.type == "cuda":
            self.stream = self.torch.cuda.current_stream(self.device).cuda_stream

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
    """CuPy arrays on any device: the stream CuPy calls current for *that* device."""

    def __init__(self, device_id):
        import cupy
        self.cp = cupy
        self.device = device_id
        self.ordinal = device_id
        self.refresh_stream()

    def refresh_stream(self):
        with self.cp.cuda.Device(self.device):  # restores the caller's current device on exit
            self.stream = self.cp.cuda.get_current_stream().ptr

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
        with self.cp.cuda.Device(self.device):
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
    mod = type(x).__module__.split(".")[0]
    if is_cuda_array(x) and mod in ("torch", "cupy"):
        kind = check_dtype(be.dtype_name(x), f"{name} on the device", ("int32", "int64"))
        if not shape_ok(be.shape(x)):
            raise CTCValueError(f"{name} has shape {be.shape(x)}, which does not fit the activations")
        return x, int(kind == "int64"), be.strides(x) or (0,)
    if is_cuda_array(x):
        return _int_operand(be, be.torch.from_dlpack(x), name, shape_ok)
    if mod == "torch":
        x = x.detach().numpy()  # a CPU tensor: host values, no device involved
    arr = np.asarray(x)
    check_integer_dtype(arr, name)
    if not shape_ok(arr.shape):
        raise CTCValueError(f"{name} has shape {arr.shape}, which does not fit the activations")
    dev = be.from_host(arr.astype(np.int64))
    return dev, 1, be.strides(dev) or (0,)


def _host(x):
    """Host values of x as NumPy, or None when x lives on a device."""
    if is_cuda_array(x):
        return None
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().numpy()
    return np.asarray(x)


def _check_host_ints(x, name, low, high):
    """Values of host integers in [low, high]; device values are not read (no synchronisation)."""
    arr = _host(x)
    if arr is not None and arr.dtype.kind in "iu":
        check_range(arr, name, low, high)


def _shape_of(x):
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


class _Call:
    """One call's checked operands, workspace and kernel arguments (no launch yet)."""

    def __init__(self, acts, targets, input_lengths, target_lengths, *, blank, from_logits, want_grad,
                 want_alpha=False, max_target_length=None, workspace=None):
        be, x, back = _backend_for(acts)
        self.be, self.back = be, back
        kind = check_dtype(be.dtype_name(x), "acts", tuple(KERNEL_TYPES))
        T, N, C = check_rank(be.shape(x), "acts", 3, "(T, N, C)")
        check_at_least_one(C, "acts", "class", "C")
        blank = check_index(blank, "blank", C)
        if be.strides(x)[2] != 1 or any(s < 0 for s in be.strides(x)):
            x = be.contiguous(x)
        st_t, st_n, _ = be.strides(x)
        self.kind, (self.suffix, self.acc) = kind, KERNEL_TYPES[kind]
        self.T, self.N, self.C, self.x = T, N, C, x

        tshape = _shape_of(targets)
        concat = len(tshape) == 1
        check_rank(tshape, "targets", (2, 1), "(N, S) padded or (sum(target_lengths),) concatenated")
        if not concat:
            check_batch_size(tshape, "targets", N, "(N, S)")
        _check_host_ints(input_lengths, "input_lengths", 0, T)
        tl_host = _host(target_lengths)
        if concat:
            if max_target_length is not None:
                Smax = int(max_target_length)
            elif tl_host is not None:
                Smax = int(np.max(tl_host)) if N and tl_host.size else 0
            else:
                Smax = int(tshape[0])  # bound without a synchronisation; Lcap caps it at T
            _check_host_ints(target_lengths, "target_lengths", 0, Smax)
            if tl_host is not None and int(np.sum(tl_host.astype(np.int64))) != tshape[0]:
                raise CTCValueError(f"concatenated targets must hold sum(target_lengths) values, got {tshape[0]}")
        else:
            Smax = int(tshape[1])
            _check_host_ints(target_lengths, "target_lengths", 0, Smax)
        tg_host = _host(targets)
        if tg_host is not None and tl_host is not None and tg_host.size:
            mask = None if concat else padded_mask(tl_host.reshape(-1), Smax)
            check_range(tg_host, "targets", 0, C, "C = number of classes", mask=mask, exclusive=True)
        self.tg, tg64, tg_st = _int_operand(be, targets, "targets", lambda s: tuple(s) == tuple(tshape))
        self.il, il64, il_st = _int_operand(be, input_lengths, "input_lengths", lambda s: tuple(s) == (N,))
        self.tl, tl64, tl_st = _int_operand(be, target_lengths, "target_lengths", lambda s: tuple(s) == (N,))

        self.plan = plan(T, N, C, Smax, want_grad=want_grad, from_logits=from_logits, acc=self.acc)
        total = self.plan["total"]
        if workspace is None:
            workspace = be.empty((total,), "uint8")
        elif be.shape(workspace) != (total,):
            raise CTCValueError(f"workspace has shape {be.shape(workspace)}, expected ({total},): pass the "
                                "forward call's workspace with the same inputs")
        self.ws = workspace
        base = be.ptr(workspace)
        vec = int(C % 4 == 0 and be.ptr(x) % 16 == 0 and st_t % 4 == 0 and st_n % 4 == 0)
        self.values = dict(
            acts=be.ptr(x), st_t=st_t, st_n=st_n, T=T, N=N, C=C,
            targets=be.ptr(self.tg), tg64=tg64, concat=int(concat), tg_st_n=0 if concat else tg_st[0],
            tg_st_s=tg_st[-1], tg_count=int(tshape[0]) if concat else 0, Smax=Smax, Lcap=self.plan["Lcap"],
            W=self.plan["W"], in_len=be.ptr(self.il), il64=il64, il_st=il_st[0], tg_len=be.ptr(self.tl), tl64=tl64,
            tl_st=tl_st[0], blank=int(blank), from_logits=int(bool(from_logits)), sel_lo=0, sel_hi=0,
            w=0, w_kind=0, w_st=0, w_mul=1.0, mean=0, vec=vec, costs=0, grad=0, log_alpha=0, alpha_rows=T,
            alpha_cols=2 * Smax + 1, end_marker=0)
        for name, off in self.plan["offsets"].items():
            self.values[name] = 0 if off is None else base + off
        self.Smax = Smax
        self.from_logits = bool(from_logits)
        self._keep = []
        self._args = None
        self._fwd_args = None

    def arrays(self):
        """The arrays this call's launches read: activations (as launched), targets,
        lengths, workspace.  A caller that keeps the call after its forward keeps these
        alive itself (autograd: as saved tensors) and drops the call's own references with
        release(), so that they are freed with the caller's, not with the call."""
        return self.x, self.tg, self.il, self.tl, self.ws

    def release(self):
        """Drops the call's references to its arrays (see arrays()): it keeps their
        addresses only, valid while the caller keeps the arrays."""
        self.x = self.tg = self.il = self.tl = self.ws = None
        self._keep = []

    def set_weights(self, grad_weights, mean):
        be, N = self.be, self.N
        self._args = None
        if grad_weights is None:
            self.values.update(w=0, w_kind=0, w_st=0, mean=int(bool(mean)))
            return
        if is_cuda_array(grad_weights):
            w = grad_weights if type(grad_weights).__module__.split(".")[0] in ("torch", "cupy") \
                else be.torch.from_dlpack(grad_weights)
            wk = be.dtype_name(w)
            if wk not in ("float32", "float64"):
                w = w.double() if hasattr(w, "double") else w.astype("float64")
                wk = "float64"
            wshape = be.shape(w)
            if wshape not in ((N,), (), (1,)):
                raise CTCValueError(f"grad_weights must have shape (N,) = ({N},), got {wshape}")
            kind, st = (1 if wk == "float32" else 2), (be.strides(w)[0] if wshape == (N,) else 0)
        else:
            host = np.asarray(grad_weights, dtype=np.float64).reshape(-1)
            if host.shape not in ((N,), (1,)):
                raise CTCValueError(f"grad_weights must have shape (N,) = ({N},), got {np.shape(grad_weights)}")
            w = be.from_host(host)
            kind, st = 2, (1 if host.shape == (N,) else 0)
        self._keep.append(w)
        self.values.update(w=be.ptr(w), w_kind=kind, w_st=st, mean=int(bool(mean)))
        self._args = None

    # -- launches (cuda.core, on the backend's stream)
    def _launch(self, name, grid, block, shm, args):
        from cuda.core import Stream, launch

        from . import _cuda_build
        kernel = _cuda_build.kernels(self.be.ordinal)[name]
        launch(Stream.from_handle(int(self.be.stream)), _config(grid, block, shm), kernel, *args)

    def launch_forward(self):
        v = self.values
        if self.N == 0:
            return
        if _c_ready():
            return self._forward_c()
        todo = []
        if self.from_logits and self.T:
            rows = self.T * self.N
            v["lse"] = v["ws_lse"]
            todo.append(("fctc_lse_" + self.suffix, -(-rows // LSE_ROWS), 32 * LSE_ROWS, 0, pack_args(v, LSE_ARGS)))
        args = self._args = self._fwd_args = pack_args(v)
        for tag, grid, block, shm, lo, hi in self.plan["launches"]:
            a = list(args)
            a[_SEL[0]], a[_SEL[1]] = np.int32(lo), np.int32(hi)
            todo.append((f"fctc_trellis_{self.suffix}_{tag}", grid, block, shm, a))
        with _DeviceGuard(self.be.ordinal):
            for launch in todo:
                self._launch(*launch)

    def launch_grad(self):
        if self.N == 0 or self.T == 0:
            return
        rows = self.T * self.N
        if _c_ready():
            return self._grad_c(rows)
        with _DeviceGuard(self.be.ordinal):
            # the forward's arguments when this call made them (sel_lo / sel_hi unused here),
            # with the weights and outputs of this launch when they changed since
            args = self._args
            if args is None and self._fwd_args is not None:
                args = list(self._fwd_args)
                v = self.values
                for i, name, kind in _GRAD_FIELDS:
                    args[i] = v[name] if kind == "p" else _DTYPES[kind](v[name])
            elif args is None:
                args = pack_args(self.values)
            self._launch("fctc_grad_" + self.suffix, -(-rows // GRAD_WARPS), 32 * GRAD_WARPS, 0, args)

    # -- launches through fastctc._cuda_fast (LAUNCH_MODE "c"): the arguments are
    # packed in C from self.values, which holds exactly what pack_args would pack at this
    # point (the forward's and the gradient's launches alike), so no NumPy scalar is made
    def _forward_c(self):
        fast = _fast or _c_launcher()
        trellis, lse = _specs
        v, ordinal = self.values, self.be.ordinal
        stream = int(self.be.stream)
        handles = _kernel_handles(ordinal)
        with _DeviceGuard(ordinal):
            if self.from_logits and self.T:
                v["lse"] = v["ws_lse"]
                name = "fctc_lse_" + self.suffix
                fast.launch(name, handles[name], stream, -(-(self.T * self.N) // LSE_ROWS), 32 * LSE_ROWS, 0, lse, v)
            for tag, grid, block, shm, lo, hi in self.plan["launches"]:
                name = f"fctc_trellis_{self.suffix}_{tag}"
                fast.launch(name, handles[name], stream, grid, block, shm, trellis, v, lo, hi)

    def launch_reduce(self, costs_ptr, out_ptr, mode, zero_inf):
        """Queues fctc_reduce_<acc> on the call's stream: out = the reduction of the costs at
        costs_ptr ((N,) accumulator values, e.g. the forward's costs) with this call's target
        lengths; mode 0 'none' (out (N,), +inf -> 0 when zero_inf; out may be costs_ptr),
        1 'sum', 2 'mean' (out: one value; see REDUCE_MODES).  Nothing is read on the host."""
        if mode == 0 and self.N == 0:
            return  # nothing to write
        v = self.values
        values = dict(costs=int(costs_ptr), N=self.N, tg_len=v["tg_len"], tl64=v["tl64"], tl_st=v["tl_st"],
                      mode=int(mode), zero_inf=int(bool(zero_inf)), out=int(out_ptr))
        name = "fctc_reduce_" + ("f64" if self.acc == "float64" else "f32")
        ordinal = self.be.ordinal
        if _c_ready():
            fast = _fast or _c_launcher()
            handle = _kernel_handles(ordinal)[name]
            with _DeviceGuard(ordinal):
                fast.launch(name, handle, int(self.be.stream), 1, REDUCE_BLOCK, 0, _reduce_spec, values)
            return
        with _DeviceGuard(ordinal):
            self._launch(name, 1, REDUCE_BLOCK, 0, pack_args(values, REDUCE_ARGS))

    def _grad_c(self, rows):
        fast = _fast or _c_launcher()
        name = "fctc_grad_" + self.suffix
        ordinal = self.be.ordinal
        handle = _kernel_handles(ordinal)[name]
        with _DeviceGuard(ordinal):
            fast.launch(name, handle, int(self.be.stream), -(-rows // GRAD_WARPS), 32 * GRAD_WARPS, 0,
                        _specs[0], self.values)


class _DeviceGuard:
    """Makes the arrays' device current for the launches when it is not (a kernel handle is
    launched in the current context), and puts the caller's context back afterwards: the
    caller's current device never changes.  One driver query when it already is current."""

    def __init__(self, ordinal):
        self.ordinal = ordinal
        self.prev = None

    def __enter__(self):
        from cuda.bindings import driver
        err, dev = driver.cuCtxGetDevice()
        if int(err) == 0 and int(dev) == self.ordinal:
            return self
        err, ctx = driver.cuCtxGetCurrent()
        self.prev = (ctx,) if int(err) == 0 else (None,)
        from cuda.core import Device
        Device(self.ordinal).set_current()
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            from cuda.bindings import driver
            ctx = self.prev[0]
            driver.cuCtxSetCurrent(ctx if ctx is not None else driver.CUcontext(0))
        return False


_configs = {}


def _config(grid, block, shm):
    """A cuda.core LaunchConfig, made once per geometry."""
    key = (grid, block, shm)
    cfg = _configs.get(key)
    if cfg is None:
        from cuda.core import LaunchConfig
        if len(_configs) > 4096:
            _configs.clear()
        cfg = _configs[key] = LaunchConfig(grid=grid, block=block, shmem_size=shm)
    return cfg


def run_device(acts, targets, input_lengths, target_lengths, *, blank, from_logits, want_grad,
               grad_weights=None, want_alpha=False, max_target_length=None, mean_weights=False):
    """The engine on the GPU (see the module docstring and fastctc._engine.run)."""
    call = _Call(acts, targets, input_lengths, target_lengths, blank=blank, from_logits=from_logits,
                 want_grad=want_grad, want_alpha=want_alpha, max_target_length=max_target_length)
    be, T, N, C = call.be, call.T, call.N, call.C
    costs = be.empty((N,), call.acc)
    grad = be.empty((T, N, C), call.kind) if want_grad else None
    log_alpha = be.empty((N, T, 2 * call.Smax + 1), call.acc) if want_alpha else None
    call.values.update(costs=be.ptr(costs), grad=be.ptr(grad) if want_grad else 0,
                       log_alpha=be.ptr(log_alpha) if want_alpha else 0)
    if want_grad:
        call.set_weights(grad_weights, mean_weights)
    call.launch_forward()
    if want_grad:
        call.launch_grad()
    # the workspace and uploaded operands are released here: the torch/CuPy allocators are
    # stream-ordered, so their memory is reused only by work queued after these kernels
    return call.back(costs), call.back(grad), call.back(log_alpha)


# ------------------------------------------------------------------ torch entry points

def torch_forward(log_probs, targets, input_lengths, target_lengths, *, blank=0, from_logits=False,
                  want_grad=True, max_target_length=None):
    """(costs, workspace) without a host synchronisation; see the module docstring."""
    costs, call = forward_call(log_probs, targets, input_lengths, target_lengths, blank=blank,
                               from_logits=from_logits, want_grad=want_grad, max_target_length=max_target_length)
    return costs, call.ws


def forward_call(log_probs, targets, input_lengths, target_lengths, *, blank=0, from_logits=False,
                 want_grad=True, max_target_length=None):
    """torch_forward's work, returning (costs, call): the checked operands, plan and
    workspace (call.ws) of this call, which backward_call turns into the gradient without
    checking and planning the same operands again.  The call holds its arrays (so they stay
    allocated) until call.release(); fastctc.torch's autograd saves call.arrays() as saved
    tensors instead, so they are freed after the backward as any saved tensor is."""
    call = _Call(log_probs, targets, input_lengths, target_lengths, blank=blank, from_logits=from_logits,
                 want_grad=want_grad, max_target_length=max_target_length)
    costs = call.be.empty((call.N,), call.acc)
    call.values["costs"] = call.be.ptr(costs)
    call.launch_forward()
    call.values["costs"] = 0  # the forward's output is the caller's: a later launch must not touch it
    call.want_grad = bool(want_grad)
    return costs, call


def backward_call(call, weights, *, mean=False):
    """torch_backward for a call forward_call made with want_grad=True: grad (T, N, C) in
    the input's dtype, on the current stream of the inputs' device (read again: a backward
    may run on another stream than its forward), without a host synchronisation."""
    if not getattr(call, "want_grad", False):
        raise CTCValueError("backward_call needs a forward_call made with want_grad=True (its workspace holds "
                            "the forward and backward variables)")
    be = call.be
    be.refresh_stream()
    grad = be.empty((call.T, call.N, call.C), call.kind)
    call.values["grad"] = be.ptr(grad)
    call.set_weights(weights, mean)
    call.launch_grad()
    call.values["grad"] = 0
    return grad


def torch_backward(log_probs, targets, input_lengths, target_lengths, workspace, weights, *, blank=0,
                   from_logits=False, mean=False, max_target_length=None):
    """grad (T, N, C) from torch_forward's workspace, without a host synchronisation."""
    call = _Call(log_probs, targets, input_lengths, target_lengths, blank=blank, from_logits=from_logits,
                 want_grad=True, max_target_length=max_target_length, workspace=workspace)
    grad = call.be.empty((call.T, call.N, call.C), call.kind)
    call.values["grad"] = call.be.ptr(grad)
    call.set_weights(weights, mean)
    call.launch_grad()
    return grad


def torch_ctc(log_probs, targets, input_lengths, target_lengths, weights=None, *, blank=0, from_logits=False,
              mean=False, max_target_length=None):
    """(costs, grad) in one call, without a host synchronisation."""
    costs, grad, _ = run_device(log_probs, targets, input_lengths, target_lengths, blank=blank,
                                from_logits=from_logits, want_grad=True, grad_weights=weights,
                                max_target_length=max_target_length, mean_weights=mean)
    return costs, grad


# ------------------------------------------------------------------ PyTorch-style API on device

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
    loss = reduce_losses(costs, target_lengths, reduction, zero_infinity)
    if unbatched:
        if reduction == "none":
            loss = loss.reshape(())
        if grad is not None:
            grad = grad[:, 0, :]
    return back(loss), back(grad) if grad is not None else None
