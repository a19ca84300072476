"""fastctc.score.bench: the throughput benchmark of `fastctc score` (`fastctc bench score`,
benchmarks/bench_score.py).

It builds a synthetic data set on disk (by default the one issue 18 names: 50,000 items,
T from 8 to 60 frames, 19 classes, float32 log-probabilities, 100 items per .npz archive
and 1 item in 100 as its own .npy file), then runs the real command,
`fastctc score MANIFEST --vocab VOCAB --out OUT`, in a fresh child process per run and
reports, per run:

* items/s end to end (manifest read, scoring, output, summary: the wall time of the
  command) and the rate the command itself prints (the scoring loop only);
* the engine's share: the time spent inside fastctc's loss engine (fastctc._engine.ctc_loss,
  timed by a wrapper the child installs) over the command's wall time;
* peak RSS of the child, and how much of it the command added above the interpreter with
  fastctc imported (ru_maxrss before and after).

A child per run: peak RSS is per process, and every run starts cold (no archive cached by
an earlier run).  The child imports fastctc from `--pythonpath` (default: this package's
tree), so the same command measures another checkout, e.g. main's code before a change.
The child code uses only `fastctc.cli.main` and `fastctc._engine.ctc_loss`, which every
version of the tool has.  `--order interleaved` shuffles the manifest, so consecutive items
come from different archives (the worst case for archive caching); `sorted` keeps each
archive's items together.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SYMBOLS = ["<b>"] + list("abcdefghijklmnopq") + [" "]     # 19 classes, blank first

CHILD = r"""
import json, os, resource, sys, time
args = json.loads(sys.argv[1])
import numpy as np
import fastctc, fastctc.cli, fastctc._engine as engine
import multiprocessing
inner = engine.ctc_loss
# shared with forked worker processes, which inherit this wrapper
spent = multiprocessing.get_context("fork").Array("d", 2) if sys.platform.startswith("linux") else [0.0, 0.0]
def timed(*a, **k):
    t0 = time.perf_counter()
    try:
        return inner(*a, **k)
    finally:
        dt = time.perf_counter() - t0
        if hasattr(spent, "get_lock"):
            with spent.get_lock():
                spent[0] += dt
                spent[1] += 1
        else:
            spent[0] += dt
            spent[1] += 1
engine.ctc_loss = timed
import io, contextlib
ru0 = resource.getrusage(resource.RUSAGE_SELF)
ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
rss0 = ru0.ru_maxrss
buf = io.StringIO()
t0 = time.perf_counter()
with contextlib.redirect_stdout(buf):
    rc = fastctc.cli.main(args["argv"])
wall = time.perf_counter() - t0
ru1 = resource.getrusage(resource.RUSAGE_SELF)
ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
rss1 = ru1.ru_maxrss
# worker processes (if any) count too: their CPU time, and the largest one's peak RSS
cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime) + \
      (ch1.ru_utime - ch0.ru_utime) + (ch1.ru_stime - ch0.ru_stime)
child_rss = ch1.ru_maxrss
rate = None
for line in buf.getvalue().splitlines():
    if "items/s" in line:
        import re
        m = re.search(r"([0-9.]+) items/s", line)
        rate = float(m.group(1)) if m else None
        break
print(json.dumps({"rc": rc, "wall": wall, "cpu": cpu, "engine": spent[0], "engine_calls": int(spent[1]),
                  "rss0_kb": rss0, "rss_kb": rss1, "worker_rss_kb": child_rss, "tool_rate": rate,
                  "fastctc": os.path.dirname(fastctc.__file__)}))
"""


def build_set(folder, n_items=50_000, per_npz=100, npy_every=100, tmin=8, tmax=60, seed=0,
              order="sorted"):
    """Writes the synthetic set under `folder` (vocab.txt, em/*.npz|npy, manifest.jsonl);
    reuses it when a previous call with the same parameters left it complete.  Returns the
    paths (manifest, vocab)."""
    os.makedirs(folder, exist_ok=True)
    tag = f"{n_items}-{per_npz}-{npy_every}-{tmin}-{tmax}-{seed}"
    stamp = os.path.join(folder, "built.txt")
    manifest = os.path.join(folder, f"manifest-{order}.jsonl")
    vocab = os.path.join(folder, "vocab.txt")
    fresh = not (os.path.exists(stamp) and open(stamp).read() == tag)
    if fresh:
        rng = np.random.default_rng(seed)
        C = len(SYMBOLS)
        with open(vocab, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(s + "\n" for s in SYMBOLS))
        os.makedirs(os.path.join(folder, "em"), exist_ok=True)
        chars = np.array(SYMBOLS[1:])
        rows, members, archive = [], {}, 0
        for i in range(n_items):
            T = int(rng.integers(tmin, tmax + 1))
            L = int(rng.integers(1, max(2, T // 2)))
            text = "".join(rng.choice(chars, size=L))
            x = rng.standard_normal((T, C)).astype(np.float32) * 2
            x -= np.log(np.exp(x).sum(-1, keepdims=True))
            item_id = f"item{i:07d}"
            if i % npy_every == npy_every - 1:
                np.save(os.path.join(folder, "em", f"{item_id}.npy"), x)
                spec = f"em/{item_id}.npy"
            else:
                members[item_id] = x
                spec = f"em/a{archive:05d}.npz:{item_id}"
                if len(members) == per_npz:
                    np.savez(os.path.join(folder, "em", f"a{archive:05d}.npz"), **members)
                    members, archive = {}, archive + 1
            rows.append(json.dumps({"id": item_id, "emissions": spec, "text": text}) + "\n")
        if members:
            np.savez(os.path.join(folder, "em", f"a{archive:05d}.npz"), **members)
        with open(os.path.join(folder, "manifest-sorted.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(rows)
        shuffled = list(rows)
        np.random.default_rng(seed + 1).shuffle(shuffled)
        with open(os.path.join(folder, "manifest-interleaved.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(shuffled)
        with open(stamp, "w") as f:
            f.write(tag)
    return manifest, vocab


def run_child(manifest, vocab, out, extra=(), pythonpath=None, threads=None):
    """One `fastctc score` run in a fresh interpreter; the child's measurements as a dict."""
    argv = ["score", manifest, "--vocab", vocab, "--out", out, *extra]
    if threads:
        argv += ["--threads", str(threads)]
    env = dict(os.environ)
    env["PYTHONPATH"] = pythonpath or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"argv": argv})], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the benchmark child failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main(argv=None):
    p = argparse.ArgumentParser(prog="fastctc bench score",
                                description="throughput of `fastctc score` on a synthetic set")
    p.add_argument("--items", type=int, default=50_000, help="items in the set (default 50000)")
    p.add_argument("--dir", default=None, help="where the set is built (default: a folder under "
                   "the system temp dir, reused across runs)")
    p.add_argument("--order", default="sorted,interleaved",
                   help="manifest orders to run, comma-separated: sorted, interleaved")
    p.add_argument("--format", default="jsonl", help="output formats, comma-separated: jsonl, csv, parquet")
    p.add_argument("--repeats", type=int, default=1, help="runs per case (the median is reported)")
    p.add_argument("--threads", type=int, default=None, help="--threads passed to the command")
    p.add_argument("--pythonpath", default=None, help="import fastctc from this folder in the child "
                   "(default: this package's tree)")
    p.add_argument("--baseline", default=None, metavar="PYTHONPATH",
                   help="also run the fastctc found in this folder (e.g. another checkout's pyx/), "
                   "taking turns with the tree under test run by run, and report the ratios")
    p.add_argument("--extra", default="", help="extra arguments for `fastctc score`, one string")
    args = p.parse_args(argv)
    if args.items < 1:
        p.error(f"--items must be >= 1, got {args.items}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    folder = args.dir or os.path.join(tempfile.gettempdir(), f"fastctc-bench-score-{args.items}")
    orders = [o.strip() for o in args.order.split(",") if o.strip()]
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    for o in orders:
        if o not in ("sorted", "interleaved"):
            p.error(f"--order: unknown order {o!r} (sorted, interleaved)")
    for f in formats:
        if f not in ("jsonl", "csv", "parquet"):
            p.error(f"--format: unknown format {f!r} (jsonl, csv, parquet)")
    build_set(folder, args.items)
    trees = [("test", args.pythonpath)] + ([("baseline", args.baseline)] if args.baseline else [])
    print(f"set: {args.items} items, T 8..60, {len(SYMBOLS)} classes, 100 items per .npz, "
          f"1 in 100 as its own .npy, in {folder}; threads: {args.threads or 'default'}; "
          f"medians of {args.repeats} run(s)")
    print("| order | format | tree | items/s (wall) | items/s (CPU time) | items/s (tool) | engine share | "
          "peak RSS MB | RSS added MB | worker peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for fmt in formats:
        for order in orders:
            manifest = os.path.join(folder, f"manifest-{order}.jsonl")
            vocab = os.path.join(folder, "vocab.txt")
            runs = {name: [] for name, _ in trees}
            for _ in range(args.repeats):
                for name, path in trees:        # the trees take turns: a busy machine slows both
                    with tempfile.TemporaryDirectory() as tmp:
                        out = os.path.join(tmp, f"out.{fmt}")
                        runs[name].append(run_child(manifest, vocab, out, args.extra.split(), path,
                                                    args.threads))
            for name, _ in trees:
                rs = runs[name]
                r = dict(order=order, format=fmt, tree=name, items=args.items,
                         fastctc=rs[0]["fastctc"],
                         items_per_s=_median([args.items / x["wall"] for x in rs]),
                         items_per_cpu_s=_median([args.items / x["cpu"] for x in rs]),
                         tool_rate=_median([x["tool_rate"] or 0.0 for x in rs]),
                         engine_share=_median([x["engine"] / x["wall"] for x in rs]),
                         rss_mb=_median([x["rss_kb"] / 1024 for x in rs]),
                         rss_added_mb=_median([(x["rss_kb"] - x["rss0_kb"]) / 1024 for x in rs]),
                         worker_rss_mb=_median([x["worker_rss_kb"] / 1024 for x in rs]),
                         runs=rs)
                results.append(r)
                workers = f"{r['worker_rss_mb']:.0f}" if r["worker_rss_mb"] else "-"
                print(f"| {order} | {fmt} | {name} ({r['fastctc']}) | {r['items_per_s']:.0f} | "
                      f"{r['items_per_cpu_s']:.0f} | {r['tool_rate']:.0f} | {r['engine_share']:.1%} | "
                      f"{r['rss_mb']:.0f} | {r['rss_added_mb']:.0f} | {workers} |", flush=True)
            if args.baseline:
                wall = _median([b["wall"] / t["wall"] for t, b in zip(runs["test"], runs["baseline"])])
                cpu = _median([b["cpu"] / t["cpu"] for t, b in zip(runs["test"], runs["baseline"])])
                print(f"| {order} | {fmt} | speed-up over baseline | {wall:.2f}x | {cpu:.2f}x | | | | | |",
                      flush=True)
    return results


if __name__ == "__main__":
    main()
    raise SystemExit(0)
