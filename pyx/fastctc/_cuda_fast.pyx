# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastctc._cuda_fast: the GPU path's compiled launcher and torch route (the default launch mode).

The Python launch (FASTCTC_CUDA_LAUNCH=python: fastctc._cuda_launch._Call._launch) packs
every kernel argument as a NumPy scalar and hands them to cuda.core's launch(), which
re-packs them: tens of microseconds of Python per launch, most of a tiny call's fixed
cost.  This module reads the argument values straight out of the call's value dict (or,
on the compiled torch route below, out of the tensors themselves), writes them into one C
buffer in the kernel's order (the same kind string as TRELLIS_ARGS / LSE_ARGS /
REDUCE_ARGS: p = pointer, i = int32, q = int64, d = double) and calls the driver's
cuLaunchKernel.

It needs nothing from CUDA at build time: the one driver prototype is declared below, and
the function's address is handed over at run time (set_driver_launch, which
fastctc._cuda_launch calls on first use with the address that cuda-bindings'
cuGetProcAddress returns).  Importing this module touches no driver.

    Spec(fields)                      the packing plan of an argument list ((name, kind), ...)
    launch(name, f, stream, grid, block, shm, spec, values, sel_lo=-1, sel_hi=-1)
        packs values[name] for each field, overriding the fields sel_lo / sel_hi when the
        given value is >= 0, and launches kernel handle f (a CUkernel or CUfunction address)
        on stream (a CUstream address).  A non-zero CUresult raises RuntimeError naming the
        kernel and the error.
    set_driver_launch(address), driver_installed(), recording()

Test hooks (the recorder, a C function with cuLaunchKernel's signature compiled in here,
stands in for the driver so the packing is checked on machines without a GPU):
    recorder_enable(result=0), recorder_disable(), recorder_take() -> [dict]
The recorder keeps the last 64 launches (a ring, so a benchmark's long run pays the same
copy on every launch); recorder_take raises when earlier ones were overwritten.
"""
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset

# ---------------------------------------------------------------- the driver's prototype

ctypedef int (*launch_fn_t)(void *f, unsigned int gx, unsigned int gy, unsigned int gz,
                            unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                            void *stream, void **params, void **extra) noexcept nogil

cdef enum:
    MAX_FIELDS = 64   # the kernels take 47 arguments
    MAX_RECORDS = 64

cdef launch_fn_t _driver_launch = NULL   # cuLaunchKernel, set on first use
cdef launch_fn_t _active = NULL          # what launch() calls: the driver or the recorder
cdef int _recording = 0


def set_driver_launch(size_t address):
    """Installs the driver's cuLaunchKernel (its address, from cuGetProcAddress).  While the
    recorder is enabled the address is kept and installed when it is disabled."""
    global _driver_launch, _active
    if address == 0:
        raise ValueError("set_driver_launch: the address of cuLaunchKernel is 0")
    _driver_launch = <launch_fn_t><uintptr_t>address
    if not _recording:
        _active = _driver_launch


def reset_driver():
    """Test hook: forgets the installed driver entry points (a launch then raises until
    set_driver_launch installs one; the recorder, when enabled, stays)."""
    global _driver_launch, _active, _ctx_get_device, _ctx_set_current, _device_get, _primary_retain
    _driver_launch = NULL
    _ctx_get_device = NULL
    _ctx_set_current = NULL
    _device_get = NULL
    _primary_retain = NULL
    if not _recording:
        _active = NULL


def driver_installed():
    """True once set_driver_launch was called."""
    return _driver_launch != NULL


def recording():
    """True while the test recorder stands in for the driver."""
    return bool(_recording)


# ---------------------------------------------------------------- the packing plan

cdef class Spec:
    """The fields of one kernel's argument list: names (looked up in the value dict) and
    kinds; every value gets an 8-byte slot (the driver copies each argument's own size from
    its slot, so int32 values sit in the slot's first 4 bytes, as on a little-endian host)."""
    cdef readonly tuple names
    cdef readonly bytes kinds
    cdef int n
    cdef int sel_lo, sel_hi
    cdef char kind[MAX_FIELDS]

    def __init__(self, fields):
        fields = tuple(fields)
        if len(fields) > MAX_FIELDS:
            raise ValueError(f"Spec: {len(fields)} fields, at most {MAX_FIELDS}")
        names, kinds = [], []
        for name, kind in fields:
            if kind not in ("p", "i", "q", "d"):
                raise ValueError(f"Spec: field {name!r} has kind {kind!r}, expected one of 'p', 'i', 'q', 'd'")
            names.append(str(name))
            kinds.append(kind)
        # interned: the dict lookups then compare by identity first
        self.names = tuple(__import__("sys").intern(n) for n in names)
        self.kinds = "".join(kinds).encode()
        self.n = len(fields)
        for i in range(self.n):
            self.kind[i] = self.kinds[i]
        self.sel_lo = self.names.index("sel_lo") if "sel_lo" in self.names else -1
        self.sel_hi = self.names.index("sel_hi") if "sel_hi" in self.names else -1


cdef int _pack(Spec spec, dict values, long long sel_lo, long long sel_hi,
               uint64_t *slots, void **params) except -1:
    cdef int i
    cdef PyObject *item
    cdef object v
    cdef char k
    memset(slots, 0, spec.n * sizeof(uint64_t))
    for i in range(spec.n):
        params[i] = &slots[i]
        k = spec.kind[i]
        if i == spec.sel_lo and sel_lo >= 0:
            (<int32_t *>&slots[i])[0] = <int32_t>sel_lo
            continue
        if i == spec.sel_hi and sel_hi >= 0:
            (<int32_t *>&slots[i])[0] = <int32_t>sel_hi
            continue
        item = PyDict_GetItem(values, spec.names[i])
        if item == NULL:
            raise KeyError(f"kernel argument {spec.names[i]!r} has no value")
        v = <object>item
        try:
            if k == c'p':
                (<uintptr_t *>&slots[i])[0] = <uintptr_t>v
            elif k == c'i':
                (<int32_t *>&slots[i])[0] = <int32_t>v
            elif k == c'q':
                (<int64_t *>&slots[i])[0] = <int64_t>v
            else:
                (<double *>&slots[i])[0] = <double>v
        except (OverflowError, TypeError) as exc:
            kind = {"p": "a pointer", "i": "an int32", "q": "an int64", "d": "a double"}[chr(k)]
            raise type(exc)(f"kernel argument {spec.names[i]!r} = {v!r} is not {kind}: {exc}") from None
    params[spec.n] = NULL  # not read by the driver; ends the list for the recorder
    return 0


def _error_text(int rc):
    try:
        from cuda.bindings import driver
        err, name = driver.cuGetErrorName(driver.CUresult(rc))
        if int(err) == 0 and name:
            return f"{name.decode() if isinstance(name, bytes) else name} ({rc})"
    except Exception:
        pass
    return f"CUresult {rc}"


def launch(str name, size_t f, size_t stream, grid, unsigned int block, unsigned int shm, Spec spec,
           dict values, long long sel_lo=-1, long long sel_hi=-1):
    """Packs spec's fields from values and launches kernel f (see the module docstring)."""
    cdef uint64_t slots[MAX_FIELDS]
    cdef void *params[MAX_FIELDS + 1]
    cdef unsigned int gx, gy = 1
    cdef int rc
    cdef launch_fn_t fn = _active
    if fn == NULL:
        raise RuntimeError(f"launching {name}: the driver's cuLaunchKernel was not installed "
                           "(fastctc._cuda_launch installs it on first use)")
    if isinstance(grid, tuple):
        gx = grid[0]
        gy = grid[1]
    else:
        gx = grid
    _pack(spec, values, sel_lo, sel_hi, slots, params)
    with nogil:
        rc = fn(<void *><uintptr_t>f, gx, gy, 1, block, 1, 1, shm, <void *><uintptr_t>stream, params, NULL)
    if rc != 0:
        raise RuntimeError(f"CUDA launch of {name} failed: {_error_text(rc)}")


# ---------------------------------------------------------------- the test recorder

cdef struct Record:
    uintptr_t f
    uintptr_t stream
    unsigned int grid[3]
    unsigned int block[3]
    unsigned int shm
    int nparams
    int has_extra
    uint64_t params[MAX_FIELDS]

cdef Record _records[MAX_RECORDS]
cdef int _nrecords = 0
cdef int _dropped = 0
cdef int _recorder_result = 0


cdef int _recorder(void *f, unsigned int gx, unsigned int gy, unsigned int gz,
                   unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem,
                   void *stream, void **params, void **extra) noexcept nogil:
    """cuLaunchKernel's stand-in: copies what the driver would read (8 bytes per argument:
    every slot of launch() is 8 bytes) and returns the configured CUresult."""
    global _nrecords, _dropped
    cdef Record *r = &_records[_nrecords % MAX_RECORDS]  # a ring: a long run keeps its last launches
    cdef int n = 0
    if _nrecords >= MAX_RECORDS:
        _dropped += 1
    _nrecords += 1
    r.f = <uintptr_t>f
    r.stream = <uintptr_t>stream
    r.grid[0], r.grid[1], r.grid[2] = gx, gy, gz
    r.block[0], r.block[1], r.block[2] = bx, by, bz
    r.shm = shmem
    r.has_extra = extra != NULL
    while n < MAX_FIELDS and params[n] != NULL:
        memcpy(&r.params[n], params[n], 8)
        n += 1
    r.nparams = n
    return _recorder_result


def recorder_enable(int result=0):
    """Test hook: launch() calls the recorder instead of the driver (returning result)."""
    global _active, _recording, _nrecords, _dropped, _recorder_result
    _recording = 1
    _active = _recorder
    _nrecords = _dropped = 0
    _recorder_result = result


def recorder_disable():
    """Test hook: back to the driver's cuLaunchKernel (or to nothing when none was installed)."""
    global _active, _recording, _nrecords
    _recording = 0
    _active = _driver_launch
    _nrecords = 0


def recorder_take():
    """Test hook: the launches recorded since the last take, as dicts (f, stream, grid,
    block, shm, extra, params: one 8-byte bytes object per argument), then cleared."""
    global _nrecords, _dropped
    cdef int i, j
    cdef Record *r
    if _dropped:
        n = _dropped
        _nrecords = _dropped = 0
        raise RuntimeError(f"the recorder overwrote {n} launches (it holds {MAX_RECORDS})")
    out = []
    for i in range(_nrecords):
        r = &_records[i]
        out.append(dict(f=r.f, stream=r.stream, grid=(r.grid[0], r.grid[1], r.grid[2]),
                        block=(r.block[0], r.block[1], r.block[2]), shm=r.shm, extra=bool(r.has_extra),
                        params=[(<char *>&r.params[j])[:8] for j in range(r.nparams)]))
    _nrecords = 0
    return out


# ================================================================ the plan of one call
#
# The workspace layout and the launches of one call, written once for every caller:
# fastctc._cuda_launch.plan (the Python route, the emulation) wraps plan() below, and the
# compiled torch route reads the same C function.

cdef enum:
    ALIGN = 256
    WARPS_PER_CTA = 4      # sequences per CTA in the warp kernels (launch bound 128 threads)
    GRAD_WARPS = 8         # rows per CTA in the gradient kernel (its shared array is sized for 8)
    LSE_ROWS = 8           # (frame, sequence) rows per CTA of fctc_lse (a warp a row, 256 threads)
    REDUCE_BLOCK = 256     # fctc_reduce's one block (its result does not depend on it)
    MAX_STATES = 512 * 16  # the largest extended target a block kernel holds (L <= 4095)
    N_REGIONS = 10
    PLAN_OK = 0
    PLAN_STATES = 1        # _plan: the longest target is over MAX_STATES
    PLAN_ROWS = 2          # _plan: T N is over MAX_ROWS

# The (frame, sequence) rows of one call: the row-sum and gradient kernels take 8 rows a block
# (LSE_ROWS, GRAD_WARPS) in a grid of at most 2^31 - 1 blocks; past that the grid size (an
# unsigned int) was truncated, and past ~2^63 bytes the workspace size wrapped around (to as
# little as 256 bytes for an expanded, stride-0 log_probs of T = 2^31 - 1 frames).
cdef long long MAX_ROWS = 8LL * 0x7FFFFFFF

# the workspace's regions, in layout order (the kernels' ws_* arguments)
REGIONS = ("ws_alpha", "ws_beta", "ws_offa", "ws_offb", "ws_lse", "ws_lab", "ws_nxt", "ws_first", "ws_info",
           "ws_ll")

cdef struct PlanLaunch:
    int K                  # states a thread holds
    bint warp              # warp kernel (w) or block kernel (b)
    unsigned int gx, gy, block, shm
    int sel_lo, sel_hi

cdef struct Plan:
    long long Lcap, W, total
    long long offsets[N_REGIONS]   # byte offsets, -1 for a region this call does not use
    int nlaunch
    PlanLaunch launch[2]


cdef inline long long _up(long long x, long long m) noexcept nogil:
    return (x + m - 1) // m * m


cdef inline long long _group_bytes(int K, bint warp, long long Lcap, int acc) noexcept nogil:
    # dynamic shared memory of one group (mirrors fctc_trellis's layout in cuda/ctc.cu)
    return (_up(16 * K if warp else Lcap, 4) * 4 + 32 * 8
            + (0 if warp else (2 * 32 * 2 + 2 * 32) * acc) + 32)


cdef int _plan(Plan *p, long long T, long long N, long long Smax, bint want_grad, bint from_logits,
               int acc) noexcept nogil:
    """Fills p and returns PLAN_OK; PLAN_STATES when the longest target exceeds the kernels'
    MAX_STATES, PLAN_ROWS when T N exceeds MAX_ROWS."""
    cdef long long Lcap = Smax if Smax < T else T
    cdef long long Scap, rows, size
    cdef long long sizes[N_REGIONS]
    cdef int i, Kw, Kb, dirs = 2 if want_grad else 1
    if Lcap < 0:
        Lcap = 0
    Scap = 2 * Lcap + 1
    if Scap > MAX_STATES:
        return PLAN_STATES
    if T * N > MAX_ROWS:  # (T, N <= 2^31 - 1: no overflow here; below the bound none in the sizes)
        return PLAN_ROWS
    p.Lcap = Lcap
    p.W = _up(Scap, 4)
    rows = N * T * p.W * acc if want_grad else 0
    sizes[0] = rows
    sizes[1] = rows
    sizes[2] = N * T * 8 if want_grad else 0
    sizes[3] = sizes[2]
    sizes[4] = T * N * acc if from_logits else 0
    sizes[5] = N * Lcap * 4 if want_grad else 0
    sizes[6] = sizes[5]
    sizes[7] = sizes[5]
    sizes[8] = N * 4 * 4
    sizes[9] = N * 8
    p.total = 0
    for i in range(N_REGIONS):
        size = sizes[i]
        if size == 0:
            p.offsets[i] = -1
        else:
            p.offsets[i] = p.total
            p.total += _up(size, ALIGN)
    if p.total < ALIGN:
        p.total = ALIGN
    Kw = 2 if Scap <= 64 else (4 if Scap <= 128 else 8)
    p.nlaunch = 1
    p.launch[0].K, p.launch[0].warp = Kw, True
    p.launch[0].gx, p.launch[0].gy = <unsigned int>((N + WARPS_PER_CTA - 1) // WARPS_PER_CTA), dirs
    p.launch[0].block = 32 * WARPS_PER_CTA
    p.launch[0].shm = <unsigned int>(WARPS_PER_CTA * _group_bytes(Kw, True, Lcap, acc))
    p.launch[0].sel_lo, p.launch[0].sel_hi = 0, 32 * Kw
    if Scap > 32 * Kw:
        Kb = 4 if Scap <= 4096 else 16
        p.nlaunch = 2
        p.launch[1].K, p.launch[1].warp = Kb, False
        p.launch[1].gx, p.launch[1].gy = <unsigned int>N, dirs
        p.launch[1].block = <unsigned int>_up((Scap + Kb - 1) // Kb, 32)
        p.launch[1].shm = <unsigned int>_group_bytes(Kb, False, Lcap, acc)
        p.launch[1].sel_lo, p.launch[1].sel_hi = 32 * Kw, <int>Scap
    return PLAN_OK


def group_bytes(int K, bint warp, long long Lcap, int acc_bytes):
    """Bytes of dynamic shared memory of one group of the trellis kernels."""
    return _group_bytes(K, warp, Lcap, acc_bytes)


def plan(long long T, long long N, long long Smax, bint want_grad, bint from_logits, int acc_bytes):
    """The plan of one call as a dict (see fastctc._cuda_launch.plan), or None when the
    longest target exceeds the kernels' limit of MAX_STATES extended states; CTCValueError
    when T N exceeds the kernels' MAX_ROWS."""
    cdef Plan p
    cdef int i
    cdef int found = _plan(&p, T, N, Smax, want_grad, from_logits, acc_bytes)
    if found == PLAN_STATES:
        return None
    if found == PLAN_ROWS:
        from ._validate import CTCValueError
        raise CTCValueError(f"T * N = {T} * {N} = {T * N} (frame, sequence) rows exceed the GPU kernels' limit of "
                            f"{MAX_ROWS} (8 rows a block, at most 2^31 - 1 blocks)")
    launches = []
    for i in range(p.nlaunch):
        launches.append((f"{'w' if p.launch[i].warp else 'b'}{p.launch[i].K}",
                         (p.launch[i].gx, p.launch[i].gy), p.launch[i].block, p.launch[i].shm,
                         p.launch[i].sel_lo, p.launch[i].sel_hi))
    offsets = {REGIONS[i]: (None if p.offsets[i] < 0 else p.offsets[i]) for i in range(N_REGIONS)}
    return dict(Lcap=p.Lcap, W=p.W, offsets=offsets, total=p.total, launches=launches)


LIMITS = dict(WARPS_PER_CTA=WARPS_PER_CTA, GRAD_WARPS=GRAD_WARPS, LSE_ROWS=LSE_ROWS, REDUCE_BLOCK=REDUCE_BLOCK,
              MAX_STATES=MAX_STATES, ALIGN=ALIGN)


# ================================================================ the compiled torch route
#
# fastctc.torch's CUDA autograd route in one C call a direction (launch mode "c", the default):
# torch_call() checks a plain call's operands (CUDA tensors on one device, the kinds the
# kernels read in place), plans the workspace, allocates through torch (stream-ordered
# caching allocator), packs the kernels' arguments into C slots and launches the trellis
# (the log_softmax's row sums first in logits mode) and the reduction kernel on the
# device's current stream; DeviceCall.backward() launches the gradient kernel from the
# same slots.  Nothing reads a device value on the host.  Anything not plain (host-held
# targets or lengths, unbatched or strided inputs, a tensor on another device, a device
# whose context is not current, a kernel not loaded yet) returns None, and fastctc.torch
# takes its Python route, which gives the same numbers and owns every error message.
# Why: the Python route's operand checks, _Call set-up and the torch-op reduction cost
# ~100 us of host time a tiny call (benchmarks/cuda_host_cost.py), twice the fixed-cost
# budget of a whole forward+backward.

cdef enum:  # FCTC_FIELDS indices
    F_ACTS
    F_ST_T
    F_ST_N
    F_T
    F_N
    F_C
    F_TARGETS
    F_TG64
    F_CONCAT
    F_TG_ST_N
    F_TG_ST_S
    F_TG_COUNT
    F_SMAX
    F_LCAP
    F_WIDTH
    F_IN_LEN
    F_IL64
    F_IL_ST
    F_TG_LEN
    F_TL64
    F_TL_ST
    F_BLANK
    F_FROM_LOGITS
    F_SEL_LO
    F_SEL_HI
    F_WEIGHTS
    F_W_KIND
    F_W_ST
    F_W_MUL
    F_MEAN
    F_VEC
    F_COSTS
    F_GRAD
    F_LOG_ALPHA
    F_ALPHA_ROWS
    F_ALPHA_COLS
    F_WS_ALPHA
    F_WS_BETA
    F_WS_OFFA
    F_WS_OFFB
    F_WS_LSE
    F_WS_LAB
    F_WS_NXT
    F_WS_FIRST
    F_WS_INFO
    F_WS_LL
    F_END_MARKER
    N_FIELDS

# the kernels' argument names, in FCTC_FIELDS' order (checked against _cuda_launch.TRELLIS_ARGS)
FIELD_NAMES = ('acts', 'st_t', 'st_n', 'T', 'N', 'C', 'targets', 'tg64', 'concat', 'tg_st_n', 'tg_st_s', 'tg_count', 'Smax', 'Lcap', 'W', 'in_len', 'il64', 'il_st', 'tg_len', 'tl64', 'tl_st', 'blank', 'from_logits', 'sel_lo', 'sel_hi', 'w', 'w_kind', 'w_st', 'w_mul', 'mean', 'vec', 'costs', 'grad', 'log_alpha', 'alpha_rows', 'alpha_cols', 'ws_alpha', 'ws_beta', 'ws_offa', 'ws_offb', 'ws_lse', 'ws_lab', 'ws_nxt', 'ws_first', 'ws_info', 'ws_ll', 'end_marker')

cdef enum:
    K_LSE = 0
    K_W2 = 1
    K_W4 = 2
    K_W8 = 3
    K_B4 = 4
    K_B16 = 5
    K_GRAD = 6
    K_REDUCE = 7
    N_KERNELS = 8
    N_TYPES = 4
    MAX_DEVICES = 64

SUFFIXES = ("f32", "f64", "f16", "bf16")   # the kernels' input types, in type-index order
_KERNEL_TAGS = ("lse", "w2", "w4", "w8", "b4", "b16", "grad", "reduce")

ctypedef int (*ctx_device_fn_t)(int *device) noexcept nogil
ctypedef int (*ctx_set_fn_t)(void *ctx) noexcept nogil
ctypedef int (*device_get_fn_t)(int *device, int ordinal) noexcept nogil
ctypedef int (*primary_retain_fn_t)(void **ctx, int device) noexcept nogil

cdef uintptr_t _kernels[MAX_DEVICES][N_TYPES][N_KERNELS]  # CUkernel handles; 0: not loaded
cdef ctx_device_fn_t _ctx_get_device = NULL                # the driver's cuCtxGetDevice,
cdef ctx_set_fn_t _ctx_set_current = NULL                  # cuCtxSetCurrent,
cdef device_get_fn_t _device_get = NULL                    # cuDeviceGet,
cdef primary_retain_fn_t _primary_retain = NULL            # cuDevicePrimaryCtxRetain
cdef void *_primary[MAX_DEVICES]                           # retained primary contexts
cdef int _emulated = 0                                     # test hook: CPU tensors stand in
cdef object _guard = None                                  # a context manager factory (ordinal)
cdef object _host_class = None                             # emulating: the host tensors' class
cdef object _torch = None
cdef object _Tensor, _u8, _i32, _i64, _f32, _f64, _raw_stream, _strided
cdef tuple _in_dtypes


def kernel_name(int type_index, int kernel):
    """The ctc.cu entry point of kernel index `kernel` (K_*) for input type `type_index`."""
    sfx = SUFFIXES[type_index]
    tag = _KERNEL_TAGS[kernel]
    if kernel == K_LSE or kernel == K_GRAD:
        return f"fctc_{tag}_{sfx}"
    if kernel == K_REDUCE:
        return "fctc_reduce_" + ("f64" if sfx == "f64" else "f32")
    return f"fctc_trellis_{sfx}_{tag}"


def set_kernels(int ordinal, dict handles):
    """Installs device `ordinal`'s kernel handles ({name: CUkernel address}); names that
    are missing stay 0, and a call that needs one of them takes the Python route."""
    cdef int t, k
    if not 0 <= ordinal < MAX_DEVICES:
        return
    for t in range(N_TYPES):
        for k in range(N_KERNELS):
            _kernels[ordinal][t][k] = <uintptr_t>int(handles.get(kernel_name(t, k), 0))


def set_driver_context(size_t ctx_get_device, size_t ctx_set_current, size_t device_get,
                       size_t primary_ctx_retain):
    """Installs the driver's cuCtxGetDevice, cuCtxSetCurrent, cuDeviceGet and
    cuDevicePrimaryCtxRetain (their addresses): kernels launch in the current context,
    which each compiled call checks is the tensors' device's (see _context_ready)."""
    global _ctx_get_device, _ctx_set_current, _device_get, _primary_retain
    _ctx_get_device = <ctx_device_fn_t><uintptr_t>ctx_get_device
    _ctx_set_current = <ctx_set_fn_t><uintptr_t>ctx_set_current
    _device_get = <device_get_fn_t><uintptr_t>device_get
    _primary_retain = <primary_retain_fn_t><uintptr_t>primary_ctx_retain
    memset(_primary, 0, sizeof(_primary))


cdef enum:
    CUDA_ERROR_INVALID_CONTEXT = 201


cdef bint _context_ready(int ordinal) noexcept nogil:
    """Whether device `ordinal`'s context is current on this thread, making its primary
    context current when the thread has none.  Why the latter: torch's autograd worker
    thread for device 0 skips cudaSetDevice (cudaGetDevice already answers 0), so no context
    is current there until a runtime call makes the primary one current, which is what
    this does (and what the runtime would do on that call).  False when another device's
    context is current (the caller then declines, or launches under the device guard)."""
    cdef int dev = -1, rc
    cdef void *ctx = NULL
    if _ctx_get_device == NULL:
        return False
    rc = _ctx_get_device(&dev)
    if rc == 0:
        return dev == ordinal
    if rc != CUDA_ERROR_INVALID_CONTEXT or _ctx_set_current == NULL or _device_get == NULL \
            or _primary_retain == NULL:
        return False
    if _primary[ordinal] == NULL:
        if _device_get(&dev, ordinal) != 0 or _primary_retain(&ctx, dev) != 0:
            return False
        _primary[ordinal] = ctx  # kept retained for the process, as torch keeps it
    return _ctx_set_current(_primary[ordinal]) == 0


def set_device_guard(factory):
    """factory(ordinal): a context manager making that device's context current (the
    backward's launches use it when the autograd thread's context is another device's)."""
    global _guard
    _guard = factory


def emulate(bint on, host_class=None):
    """Test hook: CPU tensors stand in for one CUDA device (ordinal 0, stream 0, no
    context check), except instances of host_class, which count as host-held; the
    launches go to whatever set_driver_launch installed."""
    global _emulated, _host_class
    _emulated = on
    _host_class = host_class if on else None


cdef int _torch_init() except -1:
    global _torch, _Tensor, _u8, _i32, _i64, _f32, _f64, _raw_stream, _in_dtypes, _strided
    import torch
    _Tensor = torch.Tensor
    _strided = torch.strided
    _u8, _i32, _i64, _f32, _f64 = torch.uint8, torch.int32, torch.int64, torch.float32, torch.float64
    _in_dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # SUFFIXES' order
    getter = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # (ordinal) -> cudaStream_t as int
    if getter is None:
        def getter(int ordinal):
            return torch.cuda.current_stream(ordinal).cuda_stream
    _raw_stream = getter
    _torch = torch
    return 0


cdef inline void _put_i(uint64_t *s, int f, long long v) noexcept nogil:
    s[f] = 0
    (<int32_t *>&s[f])[0] = <int32_t>v


cdef inline void _put_q(uint64_t *s, int f, long long v) noexcept nogil:
    (<int64_t *>&s[f])[0] = <int64_t>v


cdef inline void _put_p(uint64_t *s, int f, uintptr_t v) noexcept nogil:
    s[f] = <uint64_t>v


cdef inline void _put_d(uint64_t *s, int f, double v) noexcept nogil:
    memcpy(&s[f], &v, sizeof(double))


cdef int _launch_slots(int type_index, int kernel, uintptr_t f, uintptr_t stream, unsigned int gx,
                       unsigned int gy, unsigned int block, unsigned int shm, uint64_t *slots, int n) except -1:
    cdef void *params[MAX_FIELDS + 1]
    cdef int i, rc
    for i in range(n):
        params[i] = &slots[i]
    params[n] = NULL  # not read by the driver; ends the list for the recorder
    with nogil:
        rc = _active(<void *>f, gx, gy, 1, block, 1, 1, shm, <void *>stream, params, NULL)
    if rc != 0:
        raise RuntimeError(f"CUDA launch of {kernel_name(type_index, kernel)} failed: {_error_text(rc)}")
    return 0


cdef inline int _dtype_index(object dt) noexcept:
    cdef int i
    for i in range(N_TYPES):
        if dt is _in_dtypes[i]:
            return i
    return -1


cdef inline int _where(object x, int device) except -2:
    # 1: a tensor on `device`, 0: a host tensor, -1: anything else (emulating: CPU tensors are
    # the device's but for the instances of the class emulate() was given).  Strided CUDA or
    # CPU memory only: get_device() is -1 for meta tensors too (data_ptr() 0), and sparse
    # tensors have no data_ptr(), so neither is read as host memory or handed to a kernel.
    if not isinstance(x, _Tensor) or x.layout is not _strided:
        return -1
    if _emulated:
        return (0 if _host_class is not None and isinstance(x, _host_class) else 1) if x.is_cpu else -1
    if x.is_cuda:
        return 1 if x.get_device() == device else -1
    return 0 if x.is_cpu else -1


cdef inline int _int_kind(object x) except -2:
    # 1 for an int64 tensor, 0 for int32, -1 for anything else
    dt = x.dtype
    return 1 if dt is _i64 else (0 if dt is _i32 else -1)


cdef struct HostInts:
    const char *tg
    const char *il
    const char *tl
    int tg64, il64, tl64, concat
    long long tg_st_n, tg_st_s, il_st, tl_st
    long long N, T, C, S
    long long total, lmax       # out: labels in all, longest target


cdef inline long long _read(const char *base, bint is64, long long i) noexcept nogil:
    return (<const int64_t *>base)[i] if is64 else (<const int32_t *>base)[i]


cdef bint _check_host(HostInts *h) noexcept nogil:
    """The validator's conditions on host-held targets and lengths (fastctc._validate.
    check_ctc_inputs): input lengths in [0, T]; target lengths in [0, S] (padded) or
    summing to the label count (concatenated, each in [0, 2^30 - 9]); every label read in
    [0, C).  Fills total and lmax; False for anything the validator would reject."""
    cdef long long n, j, v, tl, total = 0, lmax = 0
    for n in range(h.N):
        v = _read(h.il, h.il64, n * h.il_st)
        if v < 0 or v > h.T:
            return False
        tl = _read(h.tl, h.tl64, n * h.tl_st)
        if tl < 0 or tl > (h.S if not h.concat else 0x7FFFFFFF // 2 - 8):
            return False
        if not h.concat:
            for j in range(tl):
                v = _read(h.tg, h.tg64, n * h.tg_st_n + j * h.tg_st_s)
                if v < 0 or v >= h.C:
                    return False
        total += tl
        if tl > lmax:
            lmax = tl
    if h.concat:
        if total != h.S:
            return False
        for j in range(total):
            v = _read(h.tg, h.tg64, j * h.tg_st_s)
            if v < 0 or v >= h.C:
                return False
    h.total, h.lmax = total, lmax
    return True


cdef object _upload(HostInts *h, object like):
    """(labels, input lengths, target lengths) as one int64 device array: written into
    pinned memory, then copied without blocking the host on the current stream (torch's
    caching host allocator keeps the pinned block until that copy has run)."""
    cdef long long n, j, k = 0, tl
    cdef int64_t *out
    staged = _torch.empty((h.total + 2 * h.N,), dtype=_i64, pin_memory=not _emulated)
    out = <int64_t *><uintptr_t>staged.data_ptr()
    for n in range(h.N):
        tl = _read(h.tl, h.tl64, n * h.tl_st)
        if not h.concat:
            for j in range(tl):
                out[k] = _read(h.tg, h.tg64, n * h.tg_st_n + j * h.tg_st_s)
                k += 1
        out[h.total + n] = _read(h.il, h.il64, n * h.il_st)
        out[h.total + h.N + n] = tl
    if h.concat:
        for j in range(h.total):
            out[j] = _read(h.tg, h.tg64, j * h.tg_st_s)
    if _emulated:
        return staged
    return staged.to(like.device, non_blocking=True)


cdef class DeviceCall:
    """One compiled forward's kernel arguments, kept for its backward (addresses only: the
    caller keeps the arrays alive, as fastctc.torch's autograd does with saved tensors)."""
    cdef uint64_t slots[N_FIELDS]
    cdef int ordinal, type_index
    cdef long long T, N, C
    cdef uintptr_t grad_kernel
    cdef object in_dtype

    def backward(self, grad_out, bint mean, like=None):
        """grad (T, N, C) in the input's dtype: grad_out[n] (or its one value; None: 1)
        times d cost_n / d acts, divided by max(target_length_n, 1) N on the device when
        mean; launched on the device's current stream (read again: a backward may run
        on another stream than its forward)."""
        cdef uintptr_t stream = 0
        cdef int kind = 0
        cdef long long st = 0
        cdef bint ready = True
        cdef object w = grad_out
        # this launch's arguments on the stack: the forward's, with this backward's weights and
        # output (the call's own slots never hold a caller's gradient, and two threads running
        # backwards of one call cannot overwrite each other's arguments)
        cdef uint64_t s[N_FIELDS]
        memcpy(s, self.slots, sizeof(s))
        if w is not None:
            dt = w.dtype
            if dt is not _f32 and dt is not _f64:
                w = w.to(_f64)
                dt = _f64
            kind = 1 if dt is _f32 else 2
            shape = tuple(w.shape)
            if shape == (self.N,):
                st = w.stride()[0]
            elif shape != () and shape != (1,):
                from ._validate import CTCValueError
                raise CTCValueError(f"grad_weights must have shape (N,) = ({self.N},), got {shape}")
            grad = w.new_empty((self.T, self.N, self.C), dtype=self.in_dtype)
        else:
            grad = like.new_empty((self.T, self.N, self.C), dtype=self.in_dtype)
        if self.T == 0 or self.N == 0:
            return grad
        _put_p(s, F_WEIGHTS, 0 if w is None else <uintptr_t>w.data_ptr())
        _put_i(s, F_W_KIND, kind)
        _put_q(s, F_W_ST, st)
        _put_i(s, F_MEAN, mean)
        _put_p(s, F_GRAD, <uintptr_t>grad.data_ptr())
        rows = self.T * self.N
        gx = <unsigned int>((rows + GRAD_WARPS - 1) // GRAD_WARPS)
        if not _emulated:
            stream = <uintptr_t>_raw_stream(self.ordinal)
        if not _emulated or _ctx_get_device != NULL:
            ready = _context_ready(self.ordinal)
        if ready:
            _launch_slots(self.type_index, K_GRAD, self.grad_kernel, stream, gx, 1, 32 * GRAD_WARPS, 0, s,
                          F_END_MARKER + 1)
        else:  # another device's context is current on this thread: switch for the launch
            with _guard(self.ordinal):
                _launch_slots(self.type_index, K_GRAD, self.grad_kernel, stream, gx, 1, 32 * GRAD_WARPS, 0, s,
                              F_END_MARKER + 1)
        return grad


def torch_call(log_probs, targets, input_lengths, target_lengths, blank, int reduction, bint zero_infinity,
               bint from_logits, bint want_grad):
    """A plain fastctc.torch CUDA call, compiled: (loss, call, saved) or None.

    reduction: 0 'none', 1 'sum', 2 'mean'.  loss: the reduced loss (the (N,) costs for
    'none') in the accumulator dtype; call: a DeviceCall for the backward (None without
    want_grad); saved: (targets, input_lengths, target_lengths, workspace), the arrays the
    backward's launch reads besides log_probs (None without want_grad).  None: not a plain
    call (see the section's comment); nothing was launched."""
    cdef Plan p
    cdef uint64_t lse_slots[7]
    cdef uint64_t red_slots[8]
    cdef DeviceCall call
    cdef uint64_t *s
    cdef int ordinal, want_dev, ti, tg64, il64, tl64, i, kernel, acc
    cdef long long T, N, C, Smax, st_t, st_n, tg_st_n, tg_st_s, tg_count, il_st, tl_st
    cdef uintptr_t stream = 0, base, acts_ptr, tg_ptr, il_ptr, tl_ptr, costs_ptr
    cdef HostInts h
    cdef bint host
    cdef int where
    cdef uintptr_t *handles
    if _torch is None:
        _torch_init()
    if _active == NULL or not isinstance(log_probs, _Tensor):
        return None
    if _emulated:
        if log_probs.is_cuda:
            return None
        ordinal, want_dev = 0, -1
    else:
        if not log_probs.is_cuda:
            return None
        ordinal = log_probs.get_device()
        want_dev = ordinal
    if not 0 <= ordinal < MAX_DEVICES:
        return None
    ti = _dtype_index(log_probs.dtype)
    if ti < 0 or log_probs.layout is not _strided or log_probs.is_neg():
        return None  # (a view with torch's negative bit holds -values in memory)
    shape = log_probs.shape
    if len(shape) != 3:
        return None
    T, N, C = shape[0], shape[1], shape[2]
    if T < 1 or N < 1 or C < 1 or T > 0x7FFFFFFF or N > 0x7FFFFFFF or C > 0x7FFFFFFF:
        return None
    strides = log_probs.stride()
    st_t, st_n = strides[0], strides[1]
    if strides[2] != 1:
        return None
    if type(blank) is not int or not 0 <= blank < C:
        return None
    where = _where(targets, want_dev) + 3 * _where(input_lengths, want_dev) + 9 * _where(target_lengths, want_dev)
    if where != 0 and where != 13:  # all three on the device (13) or all three host tensors (0)
        return None
    tg64 = _int_kind(targets)
    il64 = _int_kind(input_lengths)
    tl64 = _int_kind(target_lengths)
    if tg64 < 0 or il64 < 0 or tl64 < 0:
        return None
    tshape = targets.shape
    tstrides = targets.stride()
    if len(tshape) == 2:
        if tshape[0] != N:
            return None
        Smax, tg_st_n, tg_st_s, tg_count = tshape[1], tstrides[0], tstrides[1], 0
    elif len(tshape) == 1:
        Smax, tg_st_n, tg_st_s, tg_count = tshape[0], 0, tstrides[0], tshape[0]  # a bound without a sync
    else:
        return None
    if Smax > 0x7FFFFFFF:
        return None
    if tuple(input_lengths.shape) != (N,) or tuple(target_lengths.shape) != (N,):
        return None
    il_st, tl_st = input_lengths.stride()[0], target_lengths.stride()[0]
    host = where == 0
    if host:
        # host values: checked here as the validator would accept them (anything else is
        # declined, and the Python route raises its error), then sent as one int64 upload of
        # (concatenated labels, input lengths, target lengths): the Python route's form
        h.tg = <const char *><uintptr_t>targets.data_ptr()
        h.il = <const char *><uintptr_t>input_lengths.data_ptr()
        h.tl = <const char *><uintptr_t>target_lengths.data_ptr()
        h.tg64, h.il64, h.tl64 = tg64, il64, tl64
        h.tg_st_n, h.tg_st_s, h.il_st, h.tl_st = tg_st_n, tg_st_s, il_st, tl_st
        h.concat = len(tshape) == 1
        h.N, h.T, h.C, h.S = N, T, C, Smax
        if not _check_host(&h):
            return None
        Smax = h.lmax
        tg64 = il64 = tl64 = 1
        tg_st_n, tg_st_s, tg_count, il_st, tl_st = 0, 1, h.total, 1, 1
    if Smax > (0x7FFFFFFF - 1) // 2:
        return None  # alpha_cols = 2 Smax + 1, an int32 argument: the Python route's packing raises
    acc = 8 if ti == 1 else 4
    if _plan(&p, T, N, Smax, want_grad, from_logits, acc) != PLAN_OK:
        return None
    handles = &_kernels[ordinal][ti][0]
    if (from_logits and handles[K_LSE] == 0) or (want_grad and handles[K_GRAD] == 0) \
            or ((reduction != 0 or zero_infinity) and handles[K_REDUCE] == 0):
        return None
    for i in range(p.nlaunch):
        kernel = _trellis_kernel(&p.launch[i])
        if handles[kernel] == 0:
            return None
    if (not _emulated or _ctx_get_device != NULL) and not _context_ready(ordinal):
        return None
    if not _emulated:
        stream = <uintptr_t>_raw_stream(ordinal)

    if host:
        upload = _upload(&h, log_probs)
        tg_ptr = <uintptr_t>upload.data_ptr()
        il_ptr = tg_ptr + 8 * <uintptr_t>h.total
        tl_ptr = il_ptr + 8 * <uintptr_t>N
        targets = upload  # what the backward's launch reads (kept alive by the caller)
        input_lengths = target_lengths = None
    else:
        tg_ptr = <uintptr_t>targets.data_ptr()
        il_ptr = <uintptr_t>input_lengths.data_ptr()
        tl_ptr = <uintptr_t>target_lengths.data_ptr()
    acc_dtype = _f64 if acc == 8 else _f32
    # a reduced loss's per-sequence costs live past the workspace (one allocation fewer);
    # 'none' returns them, so they get their own tensor
    ws = log_probs.new_empty((p.total + (_up(N * acc, ALIGN) if reduction != 0 else 0),), dtype=_u8)
    base = <uintptr_t>ws.data_ptr()
    if reduction != 0:
        costs, costs_ptr = None, base + <uintptr_t>p.total
    else:
        costs = log_probs.new_empty((N,), dtype=acc_dtype)
        costs_ptr = <uintptr_t>costs.data_ptr()
    call = DeviceCall.__new__(DeviceCall)
    s = call.slots
    memset(s, 0, sizeof(call.slots))
    acts_ptr = <uintptr_t>log_probs.data_ptr()
    _put_p(s, F_ACTS, acts_ptr)
    _put_q(s, F_ST_T, st_t)
    _put_q(s, F_ST_N, st_n)
    _put_i(s, F_T, T)
    _put_i(s, F_N, N)
    _put_i(s, F_C, C)
    _put_p(s, F_TARGETS, tg_ptr)
    _put_i(s, F_TG64, tg64)
    _put_i(s, F_CONCAT, host or len(tshape) == 1)
    _put_q(s, F_TG_ST_N, tg_st_n)
    _put_q(s, F_TG_ST_S, tg_st_s)
    _put_q(s, F_TG_COUNT, tg_count)
    _put_i(s, F_SMAX, Smax)
    _put_i(s, F_LCAP, p.Lcap)
    _put_i(s, F_WIDTH, p.W)
    _put_p(s, F_IN_LEN, il_ptr)
    _put_i(s, F_IL64, il64)
    _put_q(s, F_IL_ST, il_st)
    _put_p(s, F_TG_LEN, tl_ptr)
    _put_i(s, F_TL64, tl64)
    _put_q(s, F_TL_ST, tl_st)
    _put_i(s, F_BLANK, blank)
    _put_i(s, F_FROM_LOGITS, from_logits)
    _put_d(s, F_W_MUL, 1.0)
    _put_i(s, F_VEC, C % 4 == 0 and acts_ptr % 16 == 0 and st_t % 4 == 0 and st_n % 4 == 0)
    _put_p(s, F_COSTS, costs_ptr)
    _put_i(s, F_ALPHA_ROWS, T)
    _put_i(s, F_ALPHA_COLS, 2 * Smax + 1)
    for i in range(N_REGIONS):
        _put_p(s, F_WS_ALPHA + i, 0 if p.offsets[i] < 0 else base + <uintptr_t>p.offsets[i])

    if from_logits:
        memcpy(lse_slots, s, 6 * sizeof(uint64_t))  # acts, st_t, st_n, T, N, C lead both lists
        lse_slots[6] = s[F_WS_LSE]
        _launch_slots(ti, K_LSE, handles[K_LSE], stream, <unsigned int>((T * N + LSE_ROWS - 1) // LSE_ROWS), 1,
                      32 * LSE_ROWS, 0, lse_slots, 7)
    for i in range(p.nlaunch):
        kernel = _trellis_kernel(&p.launch[i])
        _put_i(s, F_SEL_LO, p.launch[i].sel_lo)
        _put_i(s, F_SEL_HI, p.launch[i].sel_hi)
        _launch_slots(ti, kernel, handles[kernel], stream, p.launch[i].gx, p.launch[i].gy, p.launch[i].block,
                      p.launch[i].shm, s, F_END_MARKER + 1)
    _put_i(s, F_SEL_LO, 0)
    _put_i(s, F_SEL_HI, 0)
    _put_p(s, F_COSTS, 0)  # the costs are the caller's: a later launch must not write them

    loss = costs
    if reduction != 0:
        loss = log_probs.new_empty((), dtype=acc_dtype)
    if reduction != 0 or zero_infinity:
        red_slots[0] = <uint64_t>costs_ptr
        _put_i(red_slots, 1, N)
        red_slots[2] = s[F_TG_LEN]
        red_slots[3] = s[F_TL64]
        red_slots[4] = s[F_TL_ST]
        _put_i(red_slots, 5, reduction)
        _put_i(red_slots, 6, zero_infinity)
        red_slots[7] = <uint64_t><uintptr_t>loss.data_ptr()
        _launch_slots(ti, K_REDUCE, handles[K_REDUCE], stream, 1, 1, REDUCE_BLOCK, 0, red_slots, 8)
    if not want_grad:
        return loss, None, None
    call.ordinal, call.type_index = ordinal, ti
    call.T, call.N, call.C = T, N, C
    call.grad_kernel = handles[K_GRAD]
    call.in_dtype = log_probs.dtype
    return loss, call, (targets, input_lengths, target_lengths, ws)


cdef inline int _trellis_kernel(PlanLaunch *l) noexcept nogil:
    if l.warp:
        return K_W2 if l.K == 2 else (K_W4 if l.K == 4 else K_W8)
    return K_B4 if l.K == 4 else K_B16
