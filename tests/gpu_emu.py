"""Host emulation of cuda/ctc.cu at the real launch geometry (used by tests/test_gpu_emulation.py
and benchmarks/gpu_check.py's self-test).

The kernels are compiled as host C++ with a small CUDA-builtins shim: every CUDA thread of a
block is a host thread; a warp is 32 of them, and its shuffles and __syncwarp meet at that
warp's own barrier (other warps run on); __syncthreads is a barrier of the whole block.  The
blocks of a launch run one after another on the same threads, so __shared__ storage can be
one static array.  Shuffles exchange values through relaxed atomics and their barrier uses
relaxed atomics plus fences: ThreadSanitizer therefore sees no ordering from a shuffle (as on
the GPU, where a shuffle is no memory fence), and a shared-memory exchange that relies on one
instead of __syncwarp / __syncthreads is reported as a race.

launch(lib, name, grid, block, shm, args) runs one kernel; run(lib, ...) is run_device's
contract on NumPy arrays (fastctc._cuda_launch.plan decides the workspace and launches,
exactly as on a device).  driver(lib) gives the emulated driver: the address of a C function
with cuLaunchKernel's signature (emu_cuLaunchKernel, which runs the kernel before it returns)
and the kernel handles it takes, so that a compiled launcher can be run against the
emulation exactly as it calls the driver.
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np
from fastctc import _cuda_launch as L

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
SOURCE = os.path.join(ROOT, "cuda", "ctc.cu")

SHIM = r"""
#include <atomic>
#include <cmath>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstring>
#include <thread>
#include <vector>
#define FCTC_EMULATION 1
#define FCTC_DEV inline
#define FCTC_ENTRY static
#define __shared__ static
#define __align__(n) alignas(n)
#define __launch_bounds__(n)
#define FCTC_DYN_SHARED(name) unsigned char *name = emu_shm
struct emu_dim { unsigned x, y; };
static thread_local emu_dim threadIdx, blockIdx;
static emu_dim blockDim;
static unsigned char *emu_shm;

// Barrier of `size` threads: the last arrival resets the count and bumps the generation,
// the others sleep on the generation (futex, so that a 2-core machine does not spend its
// time spinning through hundreds of threads).  `sync` barriers order memory
// (acquire/release: __syncwarp, __syncthreads); shuffle barriers use relaxed atomics and
// fences, which ThreadSanitizer does not take as ordering.
static void emu_futex_wait(std::atomic<int> *a, int v) {
    syscall(SYS_futex, (int *)a, FUTEX_WAIT_PRIVATE, v, nullptr, nullptr, 0);
}
static void emu_futex_wake(std::atomic<int> *a) {
    syscall(SYS_futex, (int *)a, FUTEX_WAKE_PRIVATE, 1 << 30, nullptr, nullptr, 0);
}
struct emu_barrier {
    std::atomic<int> count{0}, gen{0};
    int size = 1;
    void wait(bool sync) {
        const auto rmw = sync ? std::memory_order_acq_rel : std::memory_order_relaxed;
        const auto ld = sync ? std::memory_order_acquire : std::memory_order_relaxed;
        if (!sync) std::atomic_thread_fence(std::memory_order_seq_cst);
        const int g = gen.load(ld);
        if (count.fetch_add(1, rmw) == size - 1) {
            count.store(0, std::memory_order_relaxed);
            if (!sync) std::atomic_thread_fence(std::memory_order_seq_cst);
            gen.fetch_add(1, rmw);
            emu_futex_wake(&gen);
        } else {
            for (int spin = 0; gen.load(ld) == g; ++spin)
                if (spin > 32) emu_futex_wait(&gen, g);
        }
        if (!sync) std::atomic_thread_fence(std::memory_order_seq_cst);
    }
};
static emu_barrier emu_block_bar;
static emu_barrier emu_warp_bar[32];
static std::atomic<unsigned long long> emu_slot[2][1024];  // double-buffered: one barrier a shuffle
static thread_local int emu_parity;

inline void __syncthreads() { emu_block_bar.wait(true); }
inline void __syncwarp(unsigned) { emu_warp_bar[threadIdx.x >> 5].wait(true); }
template <class V> inline V emu_shfl(V v, int src) {
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    const int lane = threadIdx.x & 31, base = threadIdx.x - lane;
    // slot set `emu_parity` is written again two shuffles later, after every lane has
    // passed the next shuffle's barrier, hence after it read this one
    auto *slot = emu_slot[emu_parity];
    emu_parity ^= 1;
    slot[threadIdx.x].store(bits, std::memory_order_relaxed);
    emu_warp_bar[threadIdx.x >> 5].wait(false);
    unsigned long long got = slot[base + src].load(std::memory_order_relaxed);
    V r;
    std::memcpy(&r, &got, sizeof r);
    return r;
}
template <class V> inline V __shfl_xor_sync(unsigned, V v, int m) { return emu_shfl(v, (threadIdx.x & 31) ^ m); }
template <class V> inline V __shfl_up_sync(unsigned, V v, int d) {
    const int lane = threadIdx.x & 31;
    return emu_shfl(v, lane >= d ? lane - d : lane);
}
template <class D, class S> inline D emu_bits(S s) { D d; std::memcpy(&d, &s, sizeof d); return d; }
inline float __int_as_float(int i) { return emu_bits<float>(i); }
inline float __uint_as_float(unsigned i) { return emu_bits<float>(i); }
inline unsigned __float_as_uint(float f) { return emu_bits<unsigned>(f); }
inline double __longlong_as_double(long long i) { return emu_bits<double>(i); }
inline float fctc_emu_half_to_float(unsigned short b) { return (float)emu_bits<_Float16>(b); }
inline unsigned short fctc_emu_float_to_half(float f) { return emu_bits<unsigned short>((_Float16)f); }
#include "ctc.cu"

// One launch: blockDim.x host threads run every block in turn.
template <class F> static void emu_launch(int gx, int gy, int block, int shm, F body) {
    blockDim.x = block; blockDim.y = 1;
    emu_block_bar.count = 0; emu_block_bar.size = block;
    for (auto &w : emu_warp_bar) { w.count = 0; w.size = 32; }
    // lanes of one warp shuffle in step, so they agree on the slot parity; a warp whose
    // lanes all left (a finished sequence) never shuffles again
    std::vector<unsigned char> shared(shm > 0 ? shm : 16, 0x5A);
    emu_shm = shared.data();
    std::vector<std::thread> threads;
    for (int i = 0; i < block; ++i)
        threads.emplace_back([=] {
            threadIdx.x = i; threadIdx.y = 0; emu_parity = 0;
            for (int y = 0; y < gy; ++y)
                for (int x = 0; x < gx; ++x) {
                    blockIdx.x = x; blockIdx.y = y;
                    body();
                    __syncthreads();  // the next block reuses the shared memory
                }
        });
    for (auto &t : threads) t.join();
}
#define EMU_NAME(type, name) name,
#define EMU_KERNEL(kname)                                                                         \
    extern "C" void emu_##kname(int gx, int gy, int block, int shm, FCTC_FIELDS(FCTC_PARAM) int end_marker) { \
        emu_launch(gx, gy, block, shm, [=] { kname(FCTC_FIELDS(EMU_NAME) end_marker); });          \
    }
#define EMU_TYPE(suffix, In, A)                                                                   \
    extern "C" void emu_fctc_lse_##suffix(int gx, int gy, int block, int shm, const void *acts,  \
                                          long long st_t, long long st_n, int T, int N, int C, void *lse) { \
        emu_launch(gx, gy, block, shm, [=] { fctc_lse_##suffix((const In *)acts, st_t, st_n, T, N, C, (A *)lse); }); \
    }                                                                                             \
    EMU_KERNEL(fctc_grad_##suffix)                                                                \
    EMU_KERNEL(fctc_trellis_##suffix##_w2) EMU_KERNEL(fctc_trellis_##suffix##_w4)                 \
    EMU_KERNEL(fctc_trellis_##suffix##_w8) EMU_KERNEL(fctc_trellis_##suffix##_b4)                 \
    EMU_KERNEL(fctc_trellis_##suffix##_b16)
EMU_TYPE(f32, float, float)
EMU_TYPE(f64, double, double)
EMU_TYPE(f16, fctc_half, float)
EMU_TYPE(bf16, fctc_bf16, float)
#define EMU_REDUCE(suffix, A)                                                                     \
    extern "C" void emu_fctc_reduce_##suffix(int gx, int gy, int block, int shm, const void *costs, int N, \
                                             const void *tg_len, int tl64, long long tl_st, int mode, \
                                             int zero_inf, void *out) {                            \
        emu_launch(gx, gy, block, shm, [=] {                                                      \
            fctc_reduce_##suffix((const A *)costs, N, tg_len, tl64, tl_st, mode, zero_inf, (A *)out); \
        });                                                                                       \
    }
EMU_REDUCE(f32, float)
EMU_REDUCE(f64, double)

// ---- the emulated driver: cuLaunchKernel's signature, for launchers that pack arguments
// the way the driver reads them (params[i] points at argument i, stored with its own type
// and size).  A kernel handle is 1 + the kernel's index in emu_kernels; emu_kernel_name
// lists them.  The launch runs synchronously (the stream is ignored).
#define EMU_UNPACK(type, name) type name = *(type *)params[emu_i++];
#define EMU_DRV_FIELDS(kname)                                                                     \
    static void emu_drv_##kname(int gx, int gy, int block, int shm, void **params) {              \
        int emu_i = 0;                                                                            \
        FCTC_FIELDS(EMU_UNPACK)                                                                   \
        int end_marker = *(int *)params[emu_i];                                                   \
        emu_##kname(gx, gy, block, shm, FCTC_FIELDS(EMU_NAME) end_marker);                        \
    }
#define EMU_LSE_FIELDS(X) X(const void *, acts) X(long long, st_t) X(long long, st_n) X(int, T) X(int, N) \
    X(int, C) X(void *, lse)
#define EMU_REDUCE_FIELDS(X) X(const void *, costs) X(int, N) X(const void *, tg_len) X(int, tl64)   \
    X(long long, tl_st) X(int, mode) X(int, zero_inf) X(void *, out)
#define EMU_NAME_LAST(type, name) , name
#define EMU_DRV_SHORT(kname, FIELDS)                                                              \
    static void emu_drv_##kname(int gx, int gy, int block, int shm, void **params) {              \
        int emu_i = 0;                                                                            \
        FIELDS(EMU_UNPACK)                                                                        \
        emu_##kname(gx, gy, block, shm FIELDS(EMU_NAME_LAST));                                    \
    }
#define EMU_DRV_TYPE(suffix)                                                                      \
    EMU_DRV_SHORT(fctc_lse_##suffix, EMU_LSE_FIELDS) EMU_DRV_FIELDS(fctc_grad_##suffix)           \
    EMU_DRV_FIELDS(fctc_trellis_##suffix##_w2) EMU_DRV_FIELDS(fctc_trellis_##suffix##_w4)         \
    EMU_DRV_FIELDS(fctc_trellis_##suffix##_w8) EMU_DRV_FIELDS(fctc_trellis_##suffix##_b4)         \
    EMU_DRV_FIELDS(fctc_trellis_##suffix##_b16)
EMU_DRV_TYPE(f32)
EMU_DRV_TYPE(f64)
EMU_DRV_TYPE(f16)
EMU_DRV_TYPE(bf16)
EMU_DRV_SHORT(fctc_reduce_f32, EMU_REDUCE_FIELDS)
EMU_DRV_SHORT(fctc_reduce_f64, EMU_REDUCE_FIELDS)

struct emu_entry { const char *name; void (*run)(int, int, int, int, void **); };
#define EMU_ENTRY(kname) {#kname, emu_drv_##kname},
#define EMU_ENTRIES(suffix)                                                                       \
    EMU_ENTRY(fctc_lse_##suffix) EMU_ENTRY(fctc_grad_##suffix) EMU_ENTRY(fctc_trellis_##suffix##_w2) \
    EMU_ENTRY(fctc_trellis_##suffix##_w4) EMU_ENTRY(fctc_trellis_##suffix##_w8)                   \
    EMU_ENTRY(fctc_trellis_##suffix##_b4) EMU_ENTRY(fctc_trellis_##suffix##_b16)
static const emu_entry emu_kernels[] = {EMU_ENTRIES(f32) EMU_ENTRIES(f64) EMU_ENTRIES(f16) EMU_ENTRIES(bf16)
                                        EMU_ENTRY(fctc_reduce_f32) EMU_ENTRY(fctc_reduce_f64)};
static const int emu_nkernels = (int)(sizeof emu_kernels / sizeof emu_kernels[0]);

extern "C" const char *emu_kernel_name(int handle) {
    return handle >= 1 && handle <= emu_nkernels ? emu_kernels[handle - 1].name : nullptr;
}

// CUresult values: 0 success, 1 CUDA_ERROR_INVALID_VALUE, 400 CUDA_ERROR_INVALID_HANDLE
extern "C" int emu_cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                  unsigned bz, unsigned shm, void *stream, void **params, void **extra) {
    (void)stream;
    const unsigned long long h = (unsigned long long)f;
    if (h < 1 || h > (unsigned long long)emu_nkernels) return 400;
    // what the emulation runs: x-only blocks of up to 1024 threads, a 2-D grid, arguments by params
    if (gz != 1 || by != 1 || bz != 1 || bx < 1 || bx > 1024 || gx < 1 || gy < 1 || extra != nullptr ||
        params == nullptr)
        return 1;
    emu_kernels[h - 1].run((int)gx, (int)gy, (int)bx, (int)shm, params);
    return 0;
}
"""


def build(folder, extra_flags=()):
    """Compiles the emulation library into `folder`; returns the ctypes handle, or raises
    RuntimeError (with the compiler's message) / FileNotFoundError (no g++)."""
    gxx = shutil.which("g++")
    if gxx is None:
        raise FileNotFoundError("g++ is not installed: the host emulation of ctc.cu needs it")
    shim = os.path.join(folder, "emu.cpp")
    with open(shim, "w") as f:
        f.write(SHIM)
    lib = os.path.join(folder, "emu.so")
    cmd = [gxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-tsan", *extra_flags, "-I",
           os.path.dirname(SOURCE), "-o", lib, shim]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0 and "-Wno-tsan" in out.stderr:
        cmd.remove("-Wno-tsan")
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-4000:])
    return ctypes.CDLL(lib)


_SHARED = {}


def shared(extra_flags=()):
    """build() once per process and flag set, into a temporary folder: the test modules that
    drive the emulated kernels share one library (a build takes ~15 s on two cores)."""
    key = tuple(extra_flags)
    if key not in _SHARED:
        import atexit
        import tempfile
        folder = tempfile.mkdtemp(prefix="fastctc-emu-")
        atexit.register(shutil.rmtree, folder, True)
        _SHARED[key] = build(folder, extra_flags)
    return _SHARED[key]


_CT = {"p": ctypes.c_void_p, "i": ctypes.c_int, "q": ctypes.c_longlong, "d": ctypes.c_double}
_HEAD = [ctypes.c_int] * 4


def launch(lib, name, grid, block, shm, args, spec=None):
    """Runs kernel `name` on args, given in the order of spec (default: the kernel's own list)."""
    spec = kernel_spec(name) if spec is None else spec
    fn = getattr(lib, "emu_" + name)
    fn.argtypes = _HEAD + [_CT[k] for _, k in spec]
    gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
    fn(gx, gy, block, shm, *args)


def driver(lib):
    """The emulated driver: (address of emu_cuLaunchKernel, {kernel name: handle}).  The
    function has cuLaunchKernel's signature and runs the kernel at once; a handle is the
    kernel's index in the library's table plus one (any other handle: CUresult 400)."""
    lib.emu_kernel_name.restype = ctypes.c_char_p
    lib.emu_kernel_name.argtypes = [ctypes.c_int]
    handles = {}
    h = 1
    while True:
        name = lib.emu_kernel_name(h)
        if name is None:
            break
        handles[name.decode()] = h
        h += 1
    return ctypes.cast(lib.emu_cuLaunchKernel, ctypes.c_void_p).value, handles


def kernel_spec(name):
    """The argument list (L.*_ARGS) of kernel `name`."""
    if name.startswith("fctc_lse_"):
        return L.LSE_ARGS
    if name.startswith("fctc_reduce_"):
        return L.REDUCE_ARGS
    return L.TRELLIS_ARGS


def _ptr(a):
    return 0 if a is None else a.ctypes.data


def run(lib, acts, targets, input_lengths, target_lengths, *, blank, from_logits, want_grad, want_alpha=False,
        grad_weights=None, mean=False, kind=None, max_target_length=None, garbage=0x5A, force_block=False):
    """run_device's contract on host arrays, through the emulated kernels and the real plan.

    kind: 'float16'/'bfloat16' when acts hold raw 16-bit storage (uint16).  force_block:
    every sequence through the block kernel (True: the K the plan would pick, or 4 / 16;
    geometry-independence checks)."""
    T, N, C = acts.shape
    kind = kind or str(acts.dtype)
    suffix, acc = L.KERNEL_TYPES[kind]
    targets = np.asarray(targets)
    concat = targets.ndim == 1
    tl = np.ascontiguousarray(target_lengths)
    if concat:
        Smax = int(max_target_length) if max_target_length is not None else (int(tl.max()) if N else 0)
    else:
        Smax = targets.shape[1]
    p = L.plan(T, N, C, Smax, want_grad=want_grad, from_logits=from_logits, acc=acc)
    costs = np.full(N, -7.0, dtype=acc)
    store = np.uint16 if kind in ("float16", "bfloat16") else acts.dtype
    grad = np.full((T, N, C), 99, dtype=store) if want_grad else None
    la = np.full((N, T, 2 * Smax + 1), 5.0, dtype=acc) if want_alpha else None
    ws = np.full(p["total"] + 64, garbage, dtype=np.uint8)  # garbage: nothing may rely on zeroed memory
    base = (ws.ctypes.data + 63) // 64 * 64
    tg = np.ascontiguousarray(targets)
    il = np.ascontiguousarray(input_lengths)
    w = None if grad_weights is None else np.ascontiguousarray(grad_weights, dtype=np.float64).reshape(-1)
    isz = acts.itemsize
    st_t, st_n = acts.strides[0] // isz, acts.strides[1] // isz
    values = dict(acts=_ptr(acts), st_t=st_t, st_n=st_n, T=T, N=N, C=C,
                  targets=_ptr(tg), tg64=int(tg.dtype == np.int64), concat=int(concat),
                  tg_st_n=0 if concat else tg.strides[0] // tg.itemsize, tg_st_s=tg.strides[-1] // tg.itemsize,
                  tg_count=tg.shape[0] if concat else 0, Smax=Smax, Lcap=p["Lcap"], W=p["W"],
                  in_len=_ptr(il), il64=int(il.dtype == np.int64), il_st=1,
                  tg_len=_ptr(tl), tl64=int(tl.dtype == np.int64), tl_st=1, blank=blank,
                  from_logits=int(from_logits), sel_lo=0, sel_hi=0, w=_ptr(w), w_kind=0 if w is None else 2,
                  w_st=0 if w is None or w.size == 1 else 1, w_mul=1.0, mean=int(mean),
                  vec=int(C % 4 == 0 and acts.ctypes.data % 16 == 0 and st_t % 4 == 0 and st_n % 4 == 0),
                  costs=_ptr(costs), grad=_ptr(grad), log_alpha=_ptr(la), alpha_rows=T,
                  alpha_cols=2 * Smax + 1, end_marker=0)
    for name, off in p["offsets"].items():
        values[name] = 0 if off is None else base + off
    if N == 0:
        return costs, grad, la
    if from_logits and T:
        lse_vals = dict(values, lse=values["ws_lse"])
        launch(lib, "fctc_lse_" + suffix, -(-T * N // L.LSE_ROWS), 32 * L.LSE_ROWS, 0,
               [lse_vals[n] for n, _ in L.LSE_ARGS], L.LSE_ARGS)
    launches = p["launches"]
    if force_block:
        Scap = 2 * p["Lcap"] + 1
        Kb = force_block if force_block in (4, 16) else 4 if Scap <= 4096 else 16
        threads = max(64, -(-(-(-Scap // Kb)) // 32) * 32)
        launches = [(f"b{Kb}", (N, 2 if want_grad else 1), threads,
                     L.group_bytes(Kb, False, p["Lcap"], acc), 0, Scap)]
    for tag, grid, block, shm, lo, hi in launches:
        v = dict(values, sel_lo=lo, sel_hi=hi)
        launch(lib, f"fctc_trellis_{suffix}_{tag}", grid, block, shm, [v[n] for n, _ in L.TRELLIS_ARGS])
    if want_grad and T:
        launch(lib, "fctc_grad_" + suffix, -(-T * N // L.GRAD_WARPS), 32 * L.GRAD_WARPS, 0,
               [values[n] for n, _ in L.TRELLIS_ARGS])
    return costs, grad, la


def install_python_route(monkeypatch, lib, torch, is_cuda):
    """fastctc._cuda_launch's Python route on CPU torch tensors, every launch run by the
    emulated kernels of `lib` as it is made: the real argument packing, plan, workspace
    offsets, weights and entry points, checked without a GPU.  is_cuda(x): whether an
    operand counts as living on the device (its values are then not read on the host)."""
    import contextlib

    class CpuTorch(L._Torch):
        def __init__(self):
            self.torch, self.device, self.ordinal, self.stream = torch, torch.device("cpu"), 0, 0

        def from_host(self, arr):
            return torch.from_numpy(np.ascontiguousarray(arr))

    def run(self, name, grid, block, shm, args):
        launch(lib, name, grid, block, shm, [a.item() if hasattr(a, "item") else a for a in args], kernel_spec(name))

    monkeypatch.setattr(L, "_backend_for", lambda acts: (CpuTorch(), acts, lambda r: r))
    monkeypatch.setattr(L, "is_cuda_array", is_cuda)
    monkeypatch.setattr(L._Call, "_launch", run)
    monkeypatch.setattr(L, "LAUNCH_MODE", "python")  # _Call._launch is the Python launch
    monkeypatch.setattr(L, "_DeviceGuard", lambda ordinal: contextlib.nullcontext())
