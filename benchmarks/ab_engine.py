"""benchmarks/ab_engine.py: A/B of two fastctc builds in one process (a change's cost).

Copy an older build's package directory (pyx/fastctc with its compiled modules) to
DIR/fastctc_old, then

    python benchmarks/ab_engine.py --old DIR [--shapes char,bpe] [--threads 1,2] [--rounds 9]

Each round calls the old and the new engine once each (order alternating, one untimed
warm-up call each before the timed one), on the bench shapes of fastctc._bench; the
table gives medians and the median per-round ratio new/old (below 1: the new build is
faster).  Both builds share the process, so machine noise hits both alike.
"""
import argparse
import statistics
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="folder holding fastctc_old/")
    ap.add_argument("--shapes", default="char,bpe,vocab5k,ocr,long")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args(argv)
    sys.path.insert(0, a.old)
    import fastctc
    import fastctc_old
    from fastctc._bench import SHAPES, log_softmax, make_problem

    print(f"new: {fastctc.__file__}  old: {fastctc_old.__file__}  SIMD {fastctc._core.simd_level()}")
    print("| shape | threads | case | old ms | new ms | new/old |")
    print("|---|---|---|---|---|---|")
    for name in a.shapes.split(","):
        T, N, C, S = SHAPES[name]
        for threads in (int(t) for t in a.threads.split(",")):
            for case in ("loss (log_probs)", "loss+grad (logits)", "loss+grad (log_probs)"):
                logits = "logits" in case
                logit_arr, tg, il, tl = make_problem(T, N, C, S)
                x = logit_arr if logits else log_softmax(logit_arr)
                calls = []
                for mod in (fastctc_old, fastctc):
                    if case.startswith("loss+grad"):
                        calls.append(lambda m=mod: m.ctc_loss_and_grad(x, tg, il, tl, from_logits=logits,
                                                                       num_threads=threads))
                    else:
                        calls.append(lambda m=mod: m.ctc_loss(x, tg, il, tl, num_threads=threads))
                times = ([], [])
                for r in range(a.rounds):
                    order = (0, 1) if r % 2 == 0 else (1, 0)
                    for i in order:
                        calls[i]()
                        t0 = time.perf_counter()
                        calls[i]()
                        times[i].append(time.perf_counter() - t0)
                ratio = statistics.median(n / o for o, n in zip(*times))
                print(f"| {name} ({T},{N},{C},{S}) | {threads} | {case} | {statistics.median(times[0]) * 1e3:.2f} | "
                      f"{statistics.median(times[1]) * 1e3:.2f} | {ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
