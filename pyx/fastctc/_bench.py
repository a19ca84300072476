"""fastctc._bench: the CPU benchmark behind `fastctc bench` and benchmarks/bench_cpu.py.

Times fastctc against torch.nn.functional.ctc_loss on the CPU (and optax when it is
importable), in one process, with the same thread count for every library, on the
shapes of the project's targets.  Like for like:

* "loss+grad (logits)": fastctc with from_logits=True and the gradient with respect to
  the logits, against torch log_softmax + ctc_loss + backward to the logits leaf (and
  optax.ctc_loss + jax.grad w.r.t. logits, jit-compiled, threads not pinned: XLA's own pool).
* "loss+grad (log_probs)": fastctc's gradient with respect to log_probs, against torch's
  ctc_loss backward on a log_probs leaf.
* "loss (log_probs)": the loss alone, log_probs in, both libraries.
* "loss+grad (logits, grad_out=)": fastctc writing into a gradient buffer the caller
  keeps from step to step (ctc_loss_and_grad's grad_out=), against the same torch run
  as "loss+grad (logits)".  Fresh gradients of large alphabets pay the kernel's page
  faults on first touch (a 64 MB vocab5k gradient: several ms), which a reused buffer
  does not.

Timing: after one warm-up call each, the libraries take turns, round after round
(`--repeats` rounds), so a noisy or shared machine slows both alike; in its turn a library
is called once untimed and then once timed, so that the other library's thread pool has
stopped spinning (otherwise the idle OpenMP/XLA threads of one library steal the cores
from the next call of the other).  The table shows each library's median and the median
of the per-round ratios.  The
machine's copy bandwidth is measured with a large np.copyto; for the logits rows of the
memory-bound shapes (MEMORY_BOUND) the table also shows the time the unavoidable bytes
take at that bandwidth (read the activations once, write the gradient once into an
existing buffer), the floor no CPU implementation can beat.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

SHAPES = {  # name: (T, N, C, S)
    "char": (500, 32, 32, 100),
    "bpe": (250, 32, 1024, 80),
    "vocab5k": (200, 16, 5000, 60),
    "ocr": (64, 256, 100, 25),
    "long": (2000, 8, 64, 400),
}
# Shapes whose gradient (tens of MB) is far larger than the caches: their loss+grad time
# is bounded by memory traffic, so the table compares them with the copy bound.
MEMORY_BOUND = ("bpe", "vocab5k")


def make_problem(T, N, C, S, seed=0, dtype=np.float32):
    """Random logits (T, N, C), padded targets (N, S) avoiding blank 0, full lengths."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((T, N, C)) * 2.0).astype(dtype)
    targets = rng.integers(1, C, size=(N, S)).astype(np.int32)
    input_lengths = np.full(N, T, dtype=np.int32)
    target_lengths = np.full(N, S, dtype=np.int32)
    return logits, targets, input_lengths, target_lengths


def paired_ms(fns, repeats, settle=1):
    """Times several callables in alternation: one warm-up each (allocations, JIT, page
    faults), then `repeats` rounds in which each is called `settle` times untimed and then
    once timed.  The untimed calls let the previous library's thread pool (OpenMP, XLA)
    finish spinning down, so each timed call sees its own steady state, as in a training
    loop, not the other library's idle threads still holding the cores.  Returns
    ({name: median ms}, {name: per-round times in ms})."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(settle):
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: statistics.median(v) for name, v in times.items()}, times


def paired_speedup(theirs, ours):
    """Median over rounds of their time / our time in the same round."""
    return statistics.median(t / o for t, o in zip(theirs, ours))


def copy_bandwidth_gbs(nbytes=256 << 20, repeats=5):
    """Bytes moved per second by np.copyto of a large float32 array (read + write)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * nbytes / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _fastctc_cases(logits, lp, targets, il, tl, threads):
    import fastctc
    grad_buffer = np.empty_like(logits)
    return {
        "loss (log_probs)": lambda: fastctc.ctc_loss(lp, targets, il, tl, reduction="sum",
                                                     num_threads=threads),
        "loss+grad (logits)": lambda: fastctc.ctc_loss_and_grad(logits, targets, il, tl, reduction="sum",
                                                                from_logits=True, num_threads=threads),
        "loss+grad (log_probs)": lambda: fastctc.ctc_loss_and_grad(lp, targets, il, tl, reduction="sum",
                                                                   num_threads=threads),
        "loss+grad (logits, grad_out=)": lambda: fastctc.ctc_loss_and_grad(
            logits, targets, il, tl, reduction="sum", from_logits=True, num_threads=threads,
            grad_out=grad_buffer),
    }


def _torch_cases(torch, logits, lp, targets, il, tl):
    F = torch.nn.functional
    x = torch.from_numpy(logits)
    lpt = torch.from_numpy(lp)
    tg, ilt, tlt = (torch.from_numpy(a).long() for a in (targets, il, tl))

    def loss_only():
        with torch.no_grad():
            return F.ctc_loss(lpt, tg, ilt, tlt, reduction="sum")

    def grad_logits():
        leaf = x.detach().requires_grad_(True)
        F.ctc_loss(F.log_softmax(leaf, -1), tg, ilt, tlt, reduction="sum").backward()
        return leaf.grad

    def grad_log_probs():
        leaf = lpt.detach().requires_grad_(True)
        F.ctc_loss(leaf, tg, ilt, tlt, reduction="sum").backward()
        return leaf.grad

    return {"loss (log_probs)": loss_only, "loss+grad (logits)": grad_logits,
            "loss+grad (log_probs)": grad_log_probs, "loss+grad (logits, grad_out=)": grad_logits}


def _optax_cases(logits, targets, il, tl):
    import jax
    import jax.numpy as jnp
    import optax
    T, N, C = logits.shape
    x = jnp.asarray(logits.transpose(1, 0, 2))  # optax is batch-major
    lpad = jnp.zeros((N, T), jnp.float32)
    labels = jnp.asarray(targets)
    label_pad = jnp.asarray((np.arange(targets.shape[1])[None, :] >= tl[:, None]).astype(np.float32))

    loss = jax.jit(lambda x: optax.ctc_loss(x, lpad, labels, label_pad).sum())
    grad = jax.jit(jax.value_and_grad(lambda x: optax.ctc_loss(x, lpad, labels, label_pad).sum()))
    return {"loss (logits)": lambda: loss(x).block_until_ready(),
            "loss+grad (logits)": lambda: jax.tree_util.tree_map(lambda a: a.block_until_ready(), grad(x))}


def run(shapes, threads_list, repeats, with_optax=True, simd=None):
    from fastctc import _core
    if simd:
        _core.set_simd_level(simd)
    try:
        import torch
    except ImportError:
        torch = None
    optax_ok = False
    if with_optax:
        try:
            import jax  # noqa: F401
            import optax  # noqa: F401
            optax_ok = True
        except ImportError:
            pass
    rows = []
    for name in shapes:
        T, N, C, S = SHAPES[name]
        logits, targets, il, tl = make_problem(T, N, C, S)
        lp = log_softmax(logits.astype(np.float64)).astype(np.float32)
        optax_fn = _optax_cases(logits, targets, il, tl)["loss+grad (logits)"] if optax_ok else None
        for threads in threads_list:
            if torch is not None:
                torch.set_num_threads(threads)
            ours = _fastctc_cases(logits, lp, targets, il, tl, threads)
            theirs = _torch_cases(torch, logits, lp, targets, il, tl) if torch is not None else {}
            for case, fn in ours.items():
                fns = {"fastctc": fn}
                if case in theirs:
                    fns["torch"] = theirs[case]
                if optax_fn is not None and case == "loss+grad (logits)":
                    fns["optax"] = optax_fn
                medians, times = paired_ms(fns, repeats)
                row = {"shape": name, "T,N,C,S": f"{T},{N},{C},{S}", "threads": threads, "case": case,
                       "fastctc_ms": medians["fastctc"]}
                for peer in ("torch", "optax"):
                    if peer in medians:
                        row[f"{peer}_ms"] = medians[peer]
                        row[f"{peer}_speedup"] = paired_speedup(times[peer], times["fastctc"])
                rows.append(row)
    return rows


def bound_ms(shape, bandwidth_gbs, itemsize=4):
    """Time to read the activations once and write the gradient once at this bandwidth."""
    T, N, C, _ = SHAPES[shape]
    return 2 * T * N * C * itemsize / (bandwidth_gbs * 1e9) * 1e3


def _ms(x):
    """A time in ms for the table: two decimals, or three significant digits below 0.1 ms
    (tiny problems take microseconds: '0.00' would read as nothing measured)."""
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3g}"


def markdown(rows, bandwidth_gbs):
    head = ["shape (T,N,C,S)", "threads", "case", "fastctc ms", "torch ms", "speed-up vs torch",
            "optax ms", "speed-up vs optax", "copy-bound ms"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        f = r["fastctc_ms"]
        t = r.get("torch_ms")
        o = r.get("optax_ms")
        bound = (bound_ms(r["shape"], bandwidth_gbs)
                 if r["shape"] in MEMORY_BOUND and r["case"].startswith("loss+grad (logits") else None)
        out.append("| " + " | ".join([
            f"{r['shape']} ({r['T,N,C,S']})", str(r["threads"]), r["case"], _ms(f),
            _ms(t) if t else "-", f"{r['torch_speedup']:.1f}x" if t else "-",
            _ms(o) if o else "-", f"{r['optax_speedup']:.1f}x" if o else "-",
            f"{_ms(bound)} ({f / bound:.1f}x)" if bound else "-"]) + " |")
    return "\n".join(out)


def machine_line(bandwidth_gbs):
    import fastctc
    info = fastctc.info()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = []
    for mod in ("torch", "jax", "optax"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, fastctc {info['version']} SIMD {info['simd_level']}, "
            f"{', '.join(versions)}; copy bandwidth {bandwidth_gbs:.1f} GB/s (np.copyto, read+write)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="fastctc bench", description="fastctc vs PyTorch (and optax) on the CPU")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ",".join(SHAPES))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per case (median reported)")
    p.add_argument("--no-optax", action="store_true", help="skip optax even when importable")
    p.add_argument("--simd", default=None, help="force a SIMD level (scalar, avx2, avx512, neon)")
    args = p.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads: expected comma-separated integers, got {args.threads!r}")
    if not threads or min(threads) < 1:
        p.error(f"--threads: every thread count must be >= 1, got {args.threads!r}")
    bw = copy_bandwidth_gbs()
    rows = run(shapes, threads, args.repeats, with_optax=not args.no_optax, simd=args.simd)
    print(machine_line(bw))
    print()
    print(markdown(rows, bw))
    print()
    print(f"Medians of {args.repeats} rounds in which the libraries take turns (one untimed call, then one "
          "timed call each); speed-ups are the "
          "median of the per-round ratios. copy-bound: reading the activations once and writing the "
          "gradient once (into an existing buffer) at the measured copy bandwidth, and fastctc's time "
          "as a multiple of it. optax runs under XLA's own thread pool.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
