# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastctc._cuda_fast: the GPU path's opt-in compiled launcher (FASTCTC_CUDA_LAUNCH=c).

The default launch (fastctc._cuda_launch._Call._launch) packs every kernel argument as a
NumPy scalar and hands them to cuda.core's launch(), which re-packs them: tens of
microseconds of Python per launch, which is most of a tiny call's fixed cost.  This module
reads the argument values straight out of the call's value dict, writes them into one C
buffer in the kernel's order (the same kind string as TRELLIS_ARGS / LSE_ARGS: p = pointer,
i = int32, q = int64, d = double) and calls the driver's cuLaunchKernel.

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
