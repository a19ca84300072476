"""One-command device check of fastctc's GPU path: tests, device-only checks and the benchmark.

    python benchmarks/gpu_check.py --out DIR        # writes DIR/gpu-check.md, prints it

Installs nothing.  Needs torch with CUDA and the cuda extras (cuda-core, cuda-bindings, an
NVRTC wheel); run it from the source tree (it puts ./pyx first on sys.path).  Sized to
finish within 8 minutes on an H200 (each check has a share of the time; a check that would
overrun is skipped and says so).  Without a usable GPU it writes a report saying why and
exits 0.  Exit status: 0 when every check passed (or no GPU), 1 otherwise.

Checks: the GPU tests of tests/test_cuda.py (fastctc.torch on CUDA among them) and the CUDA
op test of tests/test_torch.py; parity with the CPU engine on the benchmark
shapes; bit-identical results over 20 runs, on 2 streams, in 2 processes and across batch
compositions (a sequence alone, in its batch, in a batch with a wider padding that sends it
through the block kernel); CUDA-graph capture and replay (the entry points and
fastctc.torch); torch's sync-debug mode "error" (the entry points and fastctc.torch, every
reduction, device and host targets/lengths); the fixed cost of a tiny fastctc.torch
forward+backward (device and host lengths, forward only; the default compiled launcher and
route, and cuda.core's launch, FASTCTC_CUDA_LAUNCH=python, whose results must be
bit-identical to each other's, a CUDA graph included); T*N*C > 2^31; bad values living on
the device; float16/bfloat16 against the float32 kernel; the NaN rule; then
benchmarks/bench_gpu.py.
"""
import argparse
import datetime
import hashlib
import os
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "pyx"))
sys.path.insert(0, HERE)

BUDGET_S = 7 * 60  # leaves a minute of the 8 for start-up and the report


class Skip(Exception):
    pass


def _gpu_reason():
    """None when the GPU path can run, else why not."""
    try:
        import torch
    except Exception as exc:
        return f"torch is not importable ({exc.__class__.__name__}: {exc})"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA device"
    try:
        from fastctc import _cuda
    except Exception as exc:
        return f"fastctc._cuda is not importable ({exc})"
    st = _cuda.status()
    if not st["available"]:
        return f"fastctc's GPU path is unavailable: {st['reason']}"
    return None


# ---------------------------------------------------------------- helpers

def _data(torch, T, N, C, S, seed=0, dtype=None, device="cuda"):
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(T, N, C, generator=g, dtype=torch.float64) * 3
    tl = torch.randint(max(1, S // 2), S + 1, (N,), generator=g)
    steps = torch.randint(1, max(2, C - 1), (N, S), generator=g)
    tg = 1 + torch.cumsum(steps, 1) % (C - 1) if C > 2 else torch.ones(N, S, dtype=torch.long)
    il = torch.randint(max(1, T - T // 4), T + 1, (N,), generator=g)
    il[0] = T
    tl[-1] = S
    x = x.to(dtype or torch.float32)
    return x.to(device), tg.to(device), il.to(device), tl.to(device)


def _digest(*tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(-1).view(__import__("torch").uint8).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _ours(torch, x, tg, il, tl, from_logits=True, weights=None, mean=False):
    from fastctc import _cuda_launch as L
    return L.torch_ctc(x, tg, il, tl, weights, from_logits=from_logits, mean=mean)


# ---------------------------------------------------------------- checks

def check_env(torch, rep):
    import fastctc
    from fastctc import _cuda, _cuda_build
    st = _cuda.status()
    t0 = time.perf_counter()
    _cuda_build.kernels(torch.cuda.current_device())
    load = time.perf_counter() - t0
    return True, (f"device {st['device']} ({st['arch']}), driver CUDA {st['driver']}, NVRTC {st['nvrtc']}, "
                  f"cuda-core {st['cuda_core']}, torch {torch.__version__}, fastctc {fastctc.__version__}; "
                  f"kernels compiled or loaded from the cache in {load:.1f} s" + (f"; warning: {st['warning']}"
                                                                                 if st.get("warning") else ""))


def check_pytest(torch, rep, timeout):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
           "tests/test_torch.py", "-k", "gpu or cuda_op", "-m", "not slow or slow"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "pyx"), os.environ.get("PYTHONPATH", "")]))
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(cmd[1:])}` ran past {timeout:.0f} s"
    tail = out.stdout.strip().splitlines()
    summary = tail[-1] if tail else out.stderr[-500:]
    detail = f"`{' '.join(cmd[1:])}`: {summary}"
    if out.returncode != 0:
        detail += "\n\n```\n" + "\n".join(tail[-60:]) + "\n```"
    return out.returncode == 0 and "passed" in summary, detail


def check_parity(torch, rep):
    import fastctc
    import numpy as np
    from bench_gpu import SHAPES
    lines, ok = [], True
    for name, (T, N, C, S) in SHAPES.items():
        n = 3
        x, tg, il, tl = _data(torch, T, n, C, S, seed=1, dtype=torch.float64)
        for fl in (True, False):
            xin = x if fl else x.log_softmax(-1)
            c, g = _ours(torch, xin, tg, il, tl, from_logits=fl)
            ec, eg = fastctc.ctc_loss_and_grad(xin.cpu().numpy(), tg.cpu().numpy(), il.cpu().numpy(),
                                               tl.cpu().numpy(), reduction="none", from_logits=fl)
            dc = float(np.max(np.abs(c.cpu().numpy() - ec) / np.maximum(1, np.abs(ec))))
            dg = float(np.max(np.abs(g.cpu().numpy() - eg)))
            c32, g32 = _ours(torch, xin.float(), tg, il, tl, from_logits=fl)
            ec32, eg32 = fastctc.ctc_loss_and_grad(xin.float().cpu().numpy(), tg.cpu().numpy(), il.cpu().numpy(),
                                                   tl.cpu().numpy(), reduction="none", from_logits=fl)
            dc32 = float(np.max(np.abs(c32.cpu().numpy() - ec32) / np.maximum(1, np.abs(ec32))))
            dg32 = float(np.max(np.abs(g32.cpu().numpy() - eg32)))
            good = dc < 1e-9 and dg < 1e-9 and dc32 < 2e-5 and dg32 < 5e-5
            ok &= good
            lines.append(f"| {name} | {T} | {C} | {S} | {'logits' if fl else 'log_probs'} | {dc:.1e} | {dg:.1e} | "
                         f"{dc32:.1e} | {dg32:.1e} | {'ok' if good else 'FAIL'} |")
    head = ("N = 3 of each shape against the CPU engine (float64: relative cost error, absolute gradient "
            "error; float32 likewise)\n\n| shape | T | C | S | input | f64 cost | f64 grad | f32 cost | f32 grad | |\n"
            "|" + "---|" * 10)
    return ok, head + "\n" + "\n".join(lines)


_PROC_SCRIPT = r"""
import sys; sys.path[:0] = [{pyx!r}, {here!r}]
import torch, gpu_check
x, tg, il, tl = gpu_check._data(torch, 300, 24, 40, 60, seed=7)
c, g = gpu_check._ours(torch, x, tg, il, tl)
torch.cuda.synchronize()
print("DIGEST", gpu_check._digest(c, g))
"""


def check_determinism(torch, rep):
    x, tg, il, tl = _data(torch, 300, 24, 40, 60, seed=7)
    ref = _digest(*_ours(torch, x, tg, il, tl))
    runs = {_digest(*_ours(torch, x, tg, il, tl)) for _ in range(20)}
    streams = set()
    for _ in range(2):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            out = _ours(torch, x, tg, il, tl)
        torch.cuda.current_stream().wait_stream(s)
        streams.add(_digest(*out))
    script = _PROC_SCRIPT.format(pyx=os.path.join(ROOT, "pyx"), here=HERE)
    procs = set()
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        procs.add(next((ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("DIGEST")),
                       "error: " + out.stderr[-300:]))
    # batch composition: each sequence alone, in its batch, and in a batch padded wider
    # (K = 8 states a lane instead of 4, and a block kernel launched beside) must give the
    # same bits
    c, g = _ours(torch, x, tg, il, tl)
    wide_tg = torch.cat([tg, torch.ones(tg.shape[0], 140, dtype=tg.dtype, device=tg.device)], 1)
    cw, gw = _ours(torch, x, wide_tg, il, tl)
    comp = torch.equal(cw, c) and torch.equal(gw, g)
    for n in (0, 5, 23):
        c1, g1 = _ours(torch, x[:, n:n + 1].contiguous(), tg[n:n + 1], il[n:n + 1], tl[n:n + 1])
        comp &= torch.equal(c1, c[n:n + 1]) and torch.equal(g1, g[:, n:n + 1])
    ok = runs == {ref} and streams == {ref} and procs == {ref} and comp
    return ok, (f"reference digest {ref}; 20 runs: {sorted(runs)}; 2 streams: {sorted(streams)}; 2 processes: "
                f"{sorted(procs)}; batch composition (alone / in batch / padded wider: other warp geometry): "
                f"{'identical' if comp else 'DIFFERENT'}")


_DOOR_CAPTURE = r"""
import sys; sys.path[:0] = [{pyx!r}, {here!r}]
import torch, gpu_check, fastctc.torch as ft
x, tg, il, tl = gpu_check._data(torch, 50, 4, 10, 5, seed=3)
xl = x.clone().requires_grad_()
s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    for _ in range(3):
        xl.grad = None
        ft.ctc_loss(xl, tg, il, tl, from_logits=True).backward()
torch.cuda.current_stream().wait_stream(s)
xl.grad = None
g = torch.cuda.CUDAGraph()
try:
    with torch.cuda.graph(g):
        loss = ft.ctc_loss(xl, tg, il, tl, from_logits=True)
        loss.backward()
    grad = xl.grad
    new = gpu_check._data(torch, 50, 4, 10, 5, seed=4)[0]
    with torch.no_grad():
        xl.copy_(new)
    g.replay(); torch.cuda.synchronize()
    z = new.clone().requires_grad_()
    ref = ft.ctc_loss(z, tg, il, tl, from_logits=True)
    ref.backward()
    same = torch.equal(loss, ref.detach()) and torch.equal(grad, z.grad)
    print("DOOR", "identical" if same else "DIFFERENT", "after capture and replay on new values")
except Exception as exc:
    print("DOOR not capturable:", exc.__class__.__name__, str(exc)[:150].replace(chr(10), " "))
"""


def check_graph(torch, rep):
    from fastctc import _cuda_launch as L
    x, tg, il, tl = _data(torch, 200, 16, 50, 40, seed=3)
    static = x.clone()
    w = torch.ones((), device="cuda")

    def body():
        costs, ws = L.torch_forward(static, tg, il, tl, from_logits=True)
        return costs, L.torch_backward(static, tg, il, tl, ws, w, from_logits=True, mean=True)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            body()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gc, gg = body()
    new = _data(torch, 200, 16, 50, 40, seed=4)[0]
    static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    ec, eg = L.torch_ctc(new, tg, il, tl, w, from_logits=True, mean=True)
    ok = torch.equal(gc, ec) and torch.equal(gg, eg)
    detail = f"torch_forward + torch_backward captured and replayed on new inputs: {'identical' if ok else 'DIFFERENT'}"
    # the user-facing door, in a separate process (a failed capture must not disturb the
    # rest of the check)
    out = subprocess.run([sys.executable, "-c", _DOOR_CAPTURE.format(pyx=os.path.join(ROOT, "pyx"), here=HERE)],
                         capture_output=True, text=True, timeout=120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("DOOR")), "DOOR " + out.stderr[-200:])
    ok &= line.startswith("DOOR identical")
    detail += "; fastctc.torch.ctc_loss forward+backward (mean) captured and replayed: " + line[5:]
    return ok, detail


def check_sync_debug(torch, rep):
    from fastctc import _cuda_launch as L
    x, tg, il, tl = _data(torch, 100, 8, 20, 10, seed=5)
    host = [t.cpu() for t in (tg, il, tl)]
    torch.cuda.synchronize()
    results = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for label, ints in (("device targets/lengths", (tg, il, tl)), ("host targets/lengths", host)):
            try:
                costs, ws = L.torch_forward(x, *ints, from_logits=True)
                L.torch_backward(x, *ints, ws, torch.ones((), device="cuda"), from_logits=True, mean=True)
                results.append((label, True, "no synchronisation"))
            except Exception as exc:
                results.append((label, False, f"{exc.__class__.__name__}: {str(exc)[:200]}"))
        import fastctc.torch as ft
        for label, ints in (("fastctc.torch device targets/lengths", (tg, il, tl)),
                            ("fastctc.torch host targets/lengths", host)):
            try:
                for reduction in ("mean", "sum", "none"):
                    for zero_inf in (False, True):
                        xl = x.clone().requires_grad_()
                        ft.ctc_loss(xl, *ints, reduction=reduction, zero_infinity=zero_inf,
                                    from_logits=True).sum().backward()
                        ft.ctc_loss(xl.detach().log_softmax(-1), *ints, reduction=reduction)  # no autograd
                results.append((label + " (forward+backward, every reduction and zero_infinity)", True,
                                "no synchronisation"))
            except Exception as exc:
                results.append((label, False, f"{exc.__class__.__name__}: {str(exc)[:200]}"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ok = all(r[1] for r in results)
    return ok, "; ".join(f"{a}: {c}" for a, _, c in results)


def check_fixed_cost(torch, rep):
    import fastctc.torch as ft
    from fastctc import _cuda_launch as L
    x, tg, il, tl = _data(torch, 8, 1, 5, 2, seed=6)
    xl = x.clone().requires_grad_()
    F = torch.nn.functional

    def ours():
        xl.grad = None
        ft.ctc_loss(xl, tg, il, tl, from_logits=True).backward()

    def entry():
        L.torch_ctc(x, tg, il, tl, from_logits=True)

    host = [t.cpu() for t in (tg, il, tl)]

    def ours_host():
        xl.grad = None
        ft.ctc_loss(xl, *host, from_logits=True).backward()

    def ours_forward():
        ft.ctc_loss(x, tg, il, tl, from_logits=True)

    def native():
        xl.grad = None
        with torch.backends.cudnn.flags(enabled=False):
            F.ctc_loss(xl.log_softmax(-1), tg, il, tl).backward()

    variants = [("fastctc.torch forward+backward", ours), ("sync-free entry point torch_ctc", entry),
                ("fastctc.torch forward+backward, host targets/lengths", ours_host),
                ("fastctc.torch forward only (no autograd)", ours_forward),
                ("torch native forward+backward", native)]
    # the default compiled launcher and route, and cuda.core's launch (FASTCTC_CUDA_LAUNCH=python)
    # on the same calls, rounds alternating
    variants = ([(name, _with_mode(L, "c", f)) for name, f in variants[:4]] + variants[4:]
                + [(name + ", FASTCTC_CUDA_LAUNCH=python", _with_mode(L, "python", f)) for name, f in variants[:4]])
    times = {name: [] for name, _ in variants}
    for name, f in variants:
        for _ in range(20):
            f()
    for _ in range(3):
        for name, f in variants:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(100):
                f()
            torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / 100 * 1e6)
    out = {k: sorted(v)[1] for k, v in times.items()}  # median of 3 rounds
    ok = out["fastctc.torch forward+backward"] < 50
    return ok, ("tiny case (T=8, N=1, C=5, S=2), wall time a call, median of 3 alternating rounds of 100 calls "
                "(target < 50 us for fastctc.torch, the default compiled route): "
                + "; ".join(f"{k} {v:.1f} us" for k, v in out.items()))


def _with_mode(L, mode, f):
    """f with the launch mode set to `mode` for that call only ("c": the compiled launcher and
    torch route, the default; "python": cuda.core's launch)."""
    def g():
        before, L.LAUNCH_MODE = L.LAUNCH_MODE, mode
        try:
            return f()
        finally:
            L.LAUNCH_MODE = before
    return g


def check_c_launch(torch, rep):
    """The compiled launcher and route (the default, "c") against cuda.core's launch
    (FASTCTC_CUDA_LAUNCH=python): bit-identical costs and gradients (same kernels, same
    arguments) on the entry point (logits and log-probs, a batch that needs the block kernel
    too, float64) and through fastctc.torch's autograd (device and host targets/lengths),
    and a CUDA graph captured through the C route replays to the same numbers."""
    import fastctc.torch as ft
    from fastctc import _cuda_launch as L
    lines, ok = [], True
    cases = [("tiny logits", (8, 1, 5, 2), True, None), ("char log_probs", (150, 8, 30, 40), False, None),
             ("block kernel", (400, 3, 12, 150), True, None), ("float64", (60, 4, 20, 10), True, torch.float64)]
    for label, (T, N, C, S), fl, dt in cases:
        x, tg, il, tl = _data(torch, T, N, C, S, seed=9, dtype=dt)
        xin = x if fl else x.log_softmax(-1)
        a = _with_mode(L, "python", lambda: _ours(torch, xin, tg, il, tl, from_logits=fl))()
        b = _with_mode(L, "c", lambda: _ours(torch, xin, tg, il, tl, from_logits=fl))()
        same = _digest(*a) == _digest(*b)
        ok &= same
        lines.append(f"{label} (T={T}, N={N}, C={C}, S={S}): {'bit-identical' if same else 'DIFFERENT'}")
    x, tg, il, tl = _data(torch, 50, 4, 20, 8, seed=10)
    for where, ops in (("device", (tg, il, tl)), ("host", tuple(t.cpu() for t in (tg, il, tl)))):
        for reduction in ("mean", "sum", "none"):
            res = []
            for mode in ("python", "c"):
                xl = x.clone().requires_grad_()

                def step():
                    loss = ft.ctc_loss(xl, *ops, reduction=reduction, zero_infinity=True, from_logits=True)
                    loss.sum().backward()
                    return loss
                loss = _with_mode(L, mode, step)()
                res.append((loss.detach(), xl.grad.detach().clone()))
            same = _digest(*res[0]) == _digest(*res[1])
            ok &= same
            lines.append(f"fastctc.torch forward+backward, {where} targets/lengths, {reduction}: "
                         f"{'bit-identical' if same else 'DIFFERENT'}")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        _with_mode(L, "c", lambda: _ours(torch, x, tg, il, tl))()  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = _with_mode(L, "c", lambda: _ours(torch, x, tg, il, tl))()
    graph.replay()
    torch.cuda.synchronize()
    eager = _with_mode(L, "python", lambda: _ours(torch, x, tg, il, tl))()
    same = _digest(*captured) == _digest(*eager)
    ok &= same
    lines.append(f"CUDA graph captured through the C route, replayed: {'bit-identical' if same else 'DIFFERENT'}"
                 " to the default route")
    return ok, "the compiled launcher and route (default) against FASTCTC_CUDA_LAUNCH=python: " + "; ".join(lines)


def check_huge(torch, rep):
    free, _ = torch.cuda.mem_get_info()
    T, N, C = 2100, 16, 64004  # 2.15e9 elements
    need = 2 * T * N * C * 2 + (1 << 30)
    if free < need:
        raise Skip(f"needs {need / 2**30:.1f} GiB free, the device has {free / 2**30:.1f}")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(T, N, C, device="cuda", dtype=torch.float16, generator=g)
    tl = torch.full((N,), 30, device="cuda")
    tg = torch.randint(1, C, (N, 30), device="cuda", generator=g)
    il = torch.full((N,), T, device="cuda")
    c, gr = _ours(torch, x, tg, il, tl)
    ok = bool(torch.isfinite(c).all())
    for n in (N - 1,):
        c1, g1 = _ours(torch, x[:, n:n + 1].contiguous(), tg[n:n + 1], il[n:n + 1], tl[n:n + 1])
        ok &= torch.equal(c1, c[n:n + 1]) and torch.equal(g1[-3:], gr[-3:, n:n + 1])
    del x, gr
    torch.cuda.empty_cache()
    return ok, (f"T*N*C = {T * N * C:,} > 2^31 (float16 logits): costs finite, the last sequence (elements past "
                f"2^31) identical to it computed alone: {ok}")


def check_bad_values(torch, rep):
    x, tg, il, tl = _data(torch, 30, 6, 10, 5, seed=8)
    tg2, il2, tl2 = tg.clone(), il.clone(), tl.clone()
    tg2[1, 0] = 10          # label >= C
    il2[2] = 31             # input length > T
    tl2[3] = -1             # negative target length
    tl2[4] = 6              # target length > padded width
    c, g = _ours(torch, x, tg2, il2, tl2)
    flat = torch.cat([tg[i, :tl[i]] for i in range(6)])
    tl3 = tl.clone()
    tl3[5] = tl3[5] + 50    # labels past the concatenated targets
    c3, g3 = _ours(torch, x, flat, il, tl3)
    torch.cuda.synchronize()
    ok = bool(torch.isnan(c[1:5]).all() and torch.isfinite(c[[0, 5]]).all() and (g[:, 1:5] == 0).all()
              and torch.isnan(c3[5]) and torch.isfinite(c3[:5]).all())
    c4, _ = _ours(torch, x, tg, il, tl)  # the context is still healthy
    torch.cuda.synchronize()
    ok &= bool(torch.isfinite(c4).all())
    return ok, "out-of-range labels / lengths on the device: NaN costs, zero gradient rows, no fault, next call fine"


def check_half(torch, rep):
    lines, ok = [], True
    for kind in (torch.float16, torch.bfloat16):
        x, tg, il, tl = _data(torch, 120, 16, 60, 20, seed=9)
        xh = x.to(kind)
        for fl in (True, False):
            xin = xh if fl else xh.float().log_softmax(-1).to(kind)
            c, g = _ours(torch, xin, tg, il, tl, from_logits=fl)
            c32, g32 = _ours(torch, xin.float(), tg, il, tl, from_logits=fl)
            same = c.dtype == torch.float32 and g.dtype == kind and torch.equal(c, c32) and torch.equal(g, g32.to(kind))
            ok &= same
            lines.append(f"{kind} {'logits' if fl else 'log_probs'}: {'bit-identical' if same else 'DIFFERENT'}")
    return ok, "16-bit kernels against the float32 kernel on the same rounded values: " + "; ".join(lines)


def check_nan_rule(torch, rep):
    """The non-finite rule (include/fastctc/fastctc.h, docs/gpu.md), computed in NumPy,
    against the device; the CPU engine's costs where the rule leaves them defined."""
    import fastctc
    import numpy as np
    x, tg, il, tl = _data(torch, 20, 6, 8, 4, seed=10, dtype=torch.float64)
    lp = x.log_softmax(-1)
    lp[3, 0, 0] = float("nan")      # blank column
    lp[2, 1, int(tg[1, 0])] = float("inf")  # a label column
    lp[1, 2, 3] = float("-inf")     # legal
    lp[4, 3, 0] = float("nan")
    il[3] = 2                       # ... past the input length: ignored
    c, g = _ours(torch, lp, tg, il, tl, from_logits=False)
    h, tgh, ilh, tlh = lp.cpu().numpy(), tg.cpu().numpy(), il.cpu().numpy(), tl.cpu().numpy()
    ec, _ = fastctc.ctc_loss_and_grad(h, tgh, ilh, tlh, reduction="none")
    cc = c.cpu().numpy()
    want = np.zeros(len(cc), bool)  # the non-finite rule of include/fastctc/fastctc.h
    for n in range(len(cc)):
        lab = tgh[n, :tlh[n]].tolist()
        Tn = int(ilh[n])
        if Tn < len(lab) + sum(lab[i] == lab[i - 1] for i in range(1, len(lab))):
            continue  # infeasible: +inf whatever the scores
        ext = [0] + [c for v in lab for c in (v, 0)]
        S = len(ext)
        want[n] = any(not h[t, n, ext[s]] < np.inf for t in range(Tn)
                      for s in range(max(0, S - 2 * (Tn - t)), min(S, 2 * t + 2)))
    ok = np.array_equal(np.isnan(cc), want)
    fin = ~want & np.isfinite(ec)
    ok &= bool(np.allclose(cc[fin], ec[fin], rtol=1e-9))
    for n in np.flatnonzero(want):
        ok &= bool(torch.isnan(g[: int(ilh[n]), n]).all())
    from fastctc import _reduction
    z = _reduction.reduce_losses(c, tl, "none", True)
    ok &= bool(torch.isnan(z[torch.from_numpy(want).to(z.device)]).all())
    return ok, (f"NaN / +inf / -inf scores: device costs {np.round(cc, 3).tolist()}, expected NaN at "
                f"{np.flatnonzero(want).tolist()}; CPU engine {np.round(ec, 3).tolist()}; NaN stays NaN with "
                "zero_infinity")


def check_bench(torch, rep, out_dir):
    import bench_gpu
    _, md = bench_gpu.run(runs=15, out=None)
    return None, md


CHECKS = [  # name, function, seconds it may take (it is skipped when less is left)
    ("environment and kernel load", check_env, 60),
    ("parity with the CPU engine", check_parity, 40),
    ("determinism", check_determinism, 40),
    ("CUDA graph capture", check_graph, 15),
    ("sync-debug mode", check_sync_debug, 10),
    ("fixed cost", check_fixed_cost, 20),
    ("C launch parity (compiled against FASTCTC_CUDA_LAUNCH=python)", check_c_launch, 10),
    ("bad device values", check_bad_values, 5),
    ("float16 / bfloat16", check_half, 10),
    ("NaN rule", check_nan_rule, 5),
    ("T*N*C > 2^31", check_huge, 40),
    ("benchmark (benchmarks/bench_gpu.py)", check_bench, 100),
    ("tests/test_cuda.py GPU tests", check_pytest, 90),  # last: its timeout is what is left
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu-check.md")
    ap.add_argument("--only", default=None, help="comma-separated check names (substring match)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    report = os.path.join(args.out, "gpu-check.md")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = f"# fastctc GPU check\n\n`python benchmarks/gpu_check.py --out {args.out}`, {stamp}\n\n"
    why = _gpu_reason()
    if why:
        text = head + f"No GPU check was run: {why}.\n"
        with open(report, "w") as f:
            f.write(text)
        print(text)
        print(f"wrote {report}")
        return 0
    import torch
    start = time.perf_counter()
    rows = []
    for name, fn, need in CHECKS:
        if args.only and not any(k.strip() in name for k in args.only.split(",")):
            continue
        left = BUDGET_S - (time.perf_counter() - start)
        if left < need:
            rows.append((name, "skipped", 0.0, f"{left:.0f} s of the budget left, the check needs ~{need} s"))
            continue
        t0 = time.perf_counter()
        try:
            if fn is check_pytest:
                ok, detail = fn(torch, rows, timeout=max(30, left - 20))
            elif fn is check_bench:
                ok, detail = fn(torch, rows, args.out)
            else:
                ok, detail = fn(torch, rows)
            verdict = "info" if ok is None else "pass" if ok else "FAIL"
        except Skip as exc:
            verdict, detail = "skipped", str(exc)
        except Exception as exc:
            verdict, detail = "FAIL", f"{exc.__class__.__name__}: {exc}\n\n```\n{traceback.format_exc()[-3000:]}```"
        dt = time.perf_counter() - t0
        rows.append((name, verdict, dt, detail))
        print(f"[{verdict}] {name} ({dt:.1f} s)", flush=True)
        try:
            torch.cuda.synchronize()
        except Exception as exc:  # a sticky device error: the rest cannot run
            rows.append(("device state", "FAIL", 0.0, f"synchronize failed: {exc}"))
            break
    total = time.perf_counter() - start
    text = (head + f"Device: {torch.cuda.get_device_name()}; total {total:.0f} s.\n\n"
            "| check | verdict | s |\n|---|---|---|\n")
    text += "\n".join(f"| {n} | {v} | {dt:.1f} |" for n, v, dt, _ in rows) + "\n\n"
    for n, v, dt, d in rows:
        text += f"## {n}: {v}\n\n{d}\n\n"
    with open(report, "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {report}")
    return 0 if all(v in ("pass", "info", "skipped") for _, v, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
