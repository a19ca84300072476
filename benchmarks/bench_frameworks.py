"""benchmarks/bench_frameworks.py: the Paddle and MindSpore doors against the frameworks'
own CTC on the CPU, loss + gradient, float32, alternating call by call in one process
(fastctc._bench.paired_ms), medians and per-round ratios.

Paddle and MindSpore 2.10 cannot share a process (MindSpore needs NumPy < 2 and fails to
import after Paddle), so each framework is timed in its own interpreter:

    OMP_NUM_THREADS=2 PYTHONPATH=pyx .venv-paddle/bin/python benchmarks/bench_frameworks.py --framework paddle
    OMP_NUM_THREADS=2 PYTHONPATH=pyx .venv-mindspore/bin/python benchmarks/bench_frameworks.py --framework mindspore

or both from any interpreter, each run in the given venv's python, one markdown table:

    PYTHONPATH=pyx python benchmarks/bench_frameworks.py --paddle-python .venv-paddle/bin/python \\
        --mindspore-python .venv-mindspore/bin/python

What is timed (shapes (T, N, C, S) from fastctc._bench.SHAPES, full lengths, blank 0):
- paddle: paddle.nn.functional.ctc_loss(logits, ..., reduction='mean') and .backward(),
  against fastctc.paddle.ctc_loss, the same call (warp-ctc semantics: logits in).  The
  logits' gradient is dropped after each call (clear_gradient(set_to_zero=False)), so
  that backward hands its gradient over as a training step does, instead of adding it
  into a zeroed leaf gradient (a memset and an add, unrelated to CTC, on both sides).
- mindspore (PyNative and GRAPH mode): mindspore.grad of the sum of ops.CTCLossV2's
  neg_log_likelihood over log_softmax outputs, against fastctc.mindspore.CTCLossV2.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

from fastctc._bench import SHAPES, make_problem, paired_ms, paired_speedup


def _paddle_cases(shape, threads):
    import warnings
    warnings.filterwarnings("ignore")
    import paddle
    import paddle.nn.functional as F
    import fastctc.paddle as fp
    paddle.set_device("cpu")
    logits, targets, il, tl = make_problem(*shape)
    args = (paddle.to_tensor(targets), paddle.to_tensor(il.astype(np.int64)), paddle.to_tensor(tl.astype(np.int64)))
    x = paddle.to_tensor(logits, stop_gradient=False)

    def theirs():
        F.ctc_loss(x, *args, blank=0, reduction="mean").backward()
        x.clear_gradient(set_to_zero=False)

    def ours():
        fp.ctc_loss(x, *args, blank=0, reduction="mean", num_threads=threads).backward()
        x.clear_gradient(set_to_zero=False)
    return [("loss+grad, reduction='mean'", theirs, ours)], f"paddle {paddle.__version__}"


def _mindspore_cases(shape, threads):
    import mindspore as ms
    from mindspore import Tensor, nn, ops
    import fastctc.mindspore as fm
    ms.set_context(device_target="CPU")
    logits, targets, il, tl = make_problem(*shape)
    lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    x = Tensor(lp.astype(np.float32))
    args = tuple(Tensor(a) for a in (targets, il, tl))
    class SumOfLosses(nn.Cell):
        def __init__(self, op):
            super().__init__()
            self.op = op

        def construct(self, v, t, a, b):
            return self.op(v, t, a, b)[0].sum()

    cases = []
    for mode_name, mode in (("PyNative", ms.PYNATIVE_MODE), ("GRAPH", ms.GRAPH_MODE)):
        ms.set_context(mode=mode)
        their_grad = ms.grad(SumOfLosses(ops.CTCLossV2()))
        our_grad = ms.grad(SumOfLosses(fm.CTCLossV2()))

        def run(fn, mode=mode):
            def call():
                ms.set_context(mode=mode)
                fn(x, *args).asnumpy()  # asnumpy: wait for the result
            return call
        cases.append((f"loss+grad, {mode_name}", run(their_grad), run(our_grad)))
    return cases, f"mindspore {ms.__version__}"


def run_framework(framework, shapes, repeats, threads):
    import fastctc
    rows = []
    for name in shapes:
        shape = SHAPES[name]
        cases, version = (_paddle_cases if framework == "paddle" else _mindspore_cases)(shape, threads)
        for case, theirs, ours in cases:
            medians, times = paired_ms({"theirs": theirs, "ours": ours}, repeats)
            rows.append((f"{name} ({','.join(map(str, shape))})", framework, version, case, medians["ours"],
                         medians["theirs"], paired_speedup(times["theirs"], times["ours"])))
            print(f"# {rows[-1]}", file=sys.stderr, flush=True)
    info = fastctc.info()
    header = f"fastctc {info['version']}, SIMD {info['simd_level']}, {threads} threads, numpy {np.__version__}"
    return header, rows


def markdown(rows):
    out = ["| shape (T,N,C,S) | framework | case | fastctc ms | framework ms | speed-up |",
           "|---|---|---|---|---|---|"]
    for shape, fw, version, case, ours, theirs, ratio in rows:
        out.append(f"| {shape} | {version} | {case} | {ours:.1f} | {theirs:.1f} | {ratio:.1f}x |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--framework", choices=["paddle", "mindspore"], help="time this framework in this process")
    p.add_argument("--paddle-python", help="interpreter (venv) with paddlepaddle, for the combined table")
    p.add_argument("--mindspore-python", help="interpreter (venv) with mindspore, for the combined table")
    p.add_argument("--shapes", default="char,bpe")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    shapes = args.shapes.split(",")
    for s in shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    if args.framework:
        header, rows = run_framework(args.framework, shapes, args.repeats, args.threads)
        print(header)
        print(markdown(rows))
        return 0
    if not (args.paddle_python or args.mindspore_python):
        p.error("give --framework, or --paddle-python and/or --mindspore-python")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    headers, table = [], []
    for fw, python in (("paddle", args.paddle_python), ("mindspore", args.mindspore_python)):
        if not python:
            continue
        out = subprocess.run([python, os.path.abspath(__file__), "--framework", fw, "--shapes", args.shapes,
                              "--repeats", str(args.repeats), "--threads", str(args.threads)],
                             env=env, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()
        headers.append(f"{fw}: {out[0]}")
        table.extend(out[1:] if not table else out[3:])  # one table header for both
    print("\n".join(headers + [""] + table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
