"""benchmarks/bench_jax.py: fastctc.jax.ctc_loss against optax.ctc_loss, and fastctc's NumPy
forward probabilities against optax.ctc_loss_with_forward_probs, side by side in one process.

    PYTHONPATH=pyx python benchmarks/bench_jax.py [--threads 2] [--rounds 15] [--shapes all|small]

Cases (float32, random logits, a quarter of the sequences with padded frames at the end and
shorter labels):
  value_and_grad  jax.jit(jax.value_and_grad(lambda x: ctc_loss(x, ...).mean())), both doors
  loss            jax.jit(ctc_loss) (forward only), both doors
  forward_probs   fastctc.ctc_loss_with_forward_probs on NumPy arrays vs
                  jax.jit(optax.ctc_loss_with_forward_probs); both return (T, B, N+1) and
                  (T, B, N) arrays, optax's as device arrays (blocked on, not copied)
Each round calls every contender of a case once, in alternating order; the table shows
medians over the rounds and the ratio optax / fastctc (> 1: fastctc faster).  The process is
pinned to --threads cores before JAX starts (XLA's CPU pool then has that many threads) and
fastctc is given the same number.
"""
import argparse
import os
import sys
import time

SHAPES = {  # (B, T, K, N)
    "large-vocab": (32, 250, 1024, 80),
    "many-short": (256, 64, 100, 25),
    "long-small": (32, 500, 32, 100),
    "tiny": (4, 50, 20, 10),
}


def _pin(threads):
    """Restrict this process to `threads` cores (Linux); returns the number it got."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, cpus[:threads])
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def make_problem(B, T, K, N, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(B, T, K)).astype(np.float32)
    labels = rng.integers(1, K, size=(B, N)).astype(np.int32)
    logit_pad = np.zeros((B, T), np.float32)
    label_pad = np.zeros((B, N), np.float32)
    for b in range(0, B, 4):  # every fourth sequence shorter, in frames and labels
        logit_pad[b, T - T // 5:] = 1
        label_pad[b, N - N // 5:] = 1
    return logits, logit_pad, labels, label_pad


def paired(fns, rounds):
    """{name: median seconds}; every round runs each function once, order alternating."""
    import numpy as np
    names = list(fns)
    for fn in fns.values():  # compile / warm up
        fn()
        fn()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return {n: float(np.median(v)) for n, v in times.items()}


def cases(B, T, K, N, threads):
    import jax
    import jax.numpy as jnp
    import optax

    import fastctc
    import fastctc.jax as fj

    logits, logit_pad, labels, label_pad = make_problem(B, T, K, N)
    x, fp, lab, lp = (jnp.asarray(a) for a in (logits, logit_pad, labels, label_pad))

    def vg(loss_fn):
        f = jax.jit(jax.value_and_grad(lambda v: loss_fn(v, fp, lab, lp).mean()))
        return lambda: jax.block_until_ready(f(x))

    def fwd(loss_fn):
        f = jax.jit(lambda v: loss_fn(v, fp, lab, lp))
        return lambda: jax.block_until_ready(f(x))

    ours = lambda v, *r: fj.ctc_loss(v, *r, num_threads=threads)  # noqa: E731
    probs = jax.jit(lambda v: optax.ctc_loss_with_forward_probs(v, fp, lab, lp))
    yield "value_and_grad", {"optax": vg(optax.ctc_loss), "fastctc": vg(ours)}
    yield "loss", {"optax": fwd(optax.ctc_loss), "fastctc": fwd(ours)}
    yield "forward_probs", {
        "optax": lambda: jax.block_until_ready(probs(x)),
        "fastctc": lambda: fastctc.ctc_loss_with_forward_probs(logits, logit_pad, labels, label_pad,
                                                               num_threads=threads)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--shapes", default="all", help="all, or comma-separated names: " + ", ".join(SHAPES))
    args = ap.parse_args(argv)
    got = _pin(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import jax
    import optax

    import fastctc

    names = list(SHAPES) if args.shapes == "all" else args.shapes.split(",")
    print(f"# fastctc {fastctc.__version__} ({fastctc.info()['simd_level']}), jax {jax.__version__}, "
          f"optax {optax.__version__}; {got} cores pinned, fastctc num_threads={args.threads}, "
          f"{args.rounds} rounds, float32")
    print("| (B, T, K, N) | case | optax ms | fastctc ms | optax / fastctc |")
    print("|---|---|---:|---:|---:|")
    for name in names:
        B, T, K, N = SHAPES[name]
        for case, fns in cases(B, T, K, N, args.threads):
            med = paired(fns, args.rounds)
            print(f"| ({B}, {T}, {K}, {N}) | {case} | {med['optax'] * 1e3:.2f} | {med['fastctc'] * 1e3:.2f} | "
                  f"{med['optax'] / med['fastctc']:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
