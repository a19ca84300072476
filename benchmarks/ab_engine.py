"""benchmarks/ab_engine.py: A/B of two fastctc builds in one process (a change's cost).

The old build must be a package of its own name, fastctc_old, compiled as such: the
compiled modules cimport each other by package name (fastctc._fast calls fastctc._core's
engine), so a copied directory would still bind to the new build.  --build-old REV makes
it: REV's tree (git archive) with the package renamed, built in a temporary folder and
installed as DIR/fastctc_old.

    python benchmarks/ab_engine.py --build-old main --old DIR      # once per baseline
    python benchmarks/ab_engine.py --old DIR [--shapes char,bpe] [--threads 1,2] [--rounds 9]

Each round calls the old and the new engine once each (order alternating, one untimed
warm-up call each before the timed one), on the bench shapes of fastctc._bench; the
table gives medians and the median per-round ratio new/old (below 1: the new build is
faster).  Both builds share the process, so machine noise hits both alike.
"""
import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_old(rev, dest):
    """REV's package, renamed fastctc_old and compiled, copied to DEST/fastctc_old."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", REPO, "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        pkg = os.path.join(tmp, "pyx", "fastctc_old")
        os.rename(os.path.join(tmp, "pyx", "fastctc"), pkg)
        for path in glob.glob(os.path.join(pkg, "*.pyx")) + glob.glob(os.path.join(pkg, "*.pxd")):
            with open(path) as fh:
                text = fh.read()
            with open(path, "w") as fh:
                fh.write(text.replace("from fastctc.", "from fastctc_old.").replace("from fastctc cimport",
                                                                                    "from fastctc_old cimport"))
        setup_py = os.path.join(tmp, "setup.py")
        with open(setup_py) as fh:
            text = fh.read()
        text = text.replace('name="fastctc." +', 'name="fastctc_old." +').replace('"pyx", "fastctc",',
                                                                                  '"pyx", "fastctc_old",')
        with open(setup_py, "w") as fh:
            fh.write(text)
        subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tmp, check=True,
                       capture_output=True)
        target = os.path.join(dest, "fastctc_old")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(pkg, target)
    print(f"built {rev} as {target}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="folder holding fastctc_old/")
    ap.add_argument("--shapes", default="char,bpe,vocab5k,ocr,long")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--build-old", metavar="REV", help="build REV as DIR/fastctc_old first, then exit")
    a = ap.parse_args(argv)
    if a.build_old:
        build_old(a.build_old, a.old)
        return
    sys.path.insert(0, a.old)
    import fastctc
    import fastctc_old
    if fastctc_old._core.__file__ == fastctc._core.__file__ or "fastctc_old" not in fastctc_old._core.__name__:
        sys.exit("fastctc_old is not a build of its own: make it with --build-old REV")
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
