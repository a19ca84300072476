"""benchmarks/bench_torch.py: fastctc.torch against PyTorch's own CTC, as a training step
calls it, in one process, the two taking turns round after round.

    PYTHONPATH=pyx python benchmarks/bench_torch.py --threads 2 --repeats 9

Rows per shape (T, N, C, S):

* step, log_softmax: logits leaf -> log_softmax -> ctc_loss (mean) -> backward, with
  torch.nn.functional.ctc_loss and with fastctc.torch.ctc_loss (the drop-in);
* step, from_logits: the same torch run against fastctc.torch.ctc_loss(logits, ...,
  from_logits=True) (log_softmax fused into the CTC pass; no log_softmax backward);
* forward (small and tiny shapes only): the loss alone under torch.no_grad(), where a
  call's fixed cost is all there is; and NumPy's fastctc.ctc_loss on the same arrays.

and one compiled-model row: a small convolutional CRNN (conv stack -> per-column linear
-> log_softmax -> CTC, SGD step) under torch.compile, with fastctc.torch.CTCLoss
(fullgraph=True: one graph) and with torch's CTCLoss (which cannot be compiled with
fullgraph=True: aten._ctc_loss breaks the graph, so it runs with fullgraph=False).

Each row reports both medians and the median of the per-round ratios torch / fastctc
(above 1: fastctc is faster).  Timing follows fastctc._bench.paired_ms: one warm-up per
callable, then rounds in which each is called untimed once and timed once.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import fastctc
import fastctc.torch as fct
import torch
import torch.nn.functional as F
from fastctc._bench import SHAPES as BENCH_SHAPES
from fastctc._bench import paired_ms

SHAPES = {  # name: (T, N, C, S): the CPU benchmark's shapes, and two small training steps
    **BENCH_SHAPES,
    "small": (50, 4, 20, 10),
    "tiny": (10, 1, 5, 2),
}
TINY = ("small", "tiny")  # fixed-cost dominated: many more rounds, and a forward-only row


def problem(T, N, C, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, N, C, generator=g) * 2
    targets = torch.randint(1, C, (N, S), generator=g)
    return logits, targets, torch.full((N,), T), torch.full((N,), S)


def step_fns(logits, targets, il, tl):
    x = logits.clone().requires_grad_(True)

    def torch_step():
        x.grad = None
        F.ctc_loss(x.log_softmax(2), targets, il, tl).backward()

    def fast_step():
        x.grad = None
        fct.ctc_loss(x.log_softmax(2), targets, il, tl).backward()

    def fast_logits_step():
        x.grad = None
        fct.ctc_loss(x, targets, il, tl, from_logits=True).backward()

    return torch_step, fast_step, fast_logits_step


class CRNN(torch.nn.Module):
    """A small OCR model: (N, 1, 32, W) images -> (W/4, N, classes) log-probabilities."""

    def __init__(self, classes=37, loss=None):
        super().__init__()
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(64 * 8, classes)
        self.loss = loss

    def forward(self, images, targets, il, tl):
        f = self.conv(images)                          # (N, 64, 8, W/4)
        f = f.permute(3, 0, 1, 2).flatten(2)           # (T, N, 512)
        return self.loss(self.head(f).log_softmax(-1), targets, il, tl)


def crnn_fns(batch=8, width=64, label_len=6, classes=37):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 1, 32, width, generator=g)
    targets = torch.randint(1, classes, (batch, label_len), generator=g)
    il = torch.full((batch,), width // 4)
    tl = torch.full((batch,), label_len)
    fns = {}
    for name, loss in (("torch", torch.nn.CTCLoss()), ("fastctc", fct.CTCLoss())):
        torch.manual_seed(0)
        model = CRNN(classes, loss)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        # torch's own ctc_loss cannot be traced whole (aten._ctc_loss has a data-dependent
        # output shape: a graph break), so it is compiled with fullgraph=False
        compiled = torch.compile(model, fullgraph=name == "fastctc")

        def step(model=model, opt=opt, compiled=compiled):
            opt.zero_grad(set_to_none=True)
            compiled(images, targets, il, tl).backward()
            opt.step()

        fns[name] = step
    return fns


def row(label, times_a, times_b):
    a, b = statistics.median(times_a), statistics.median(times_b)
    ratio = statistics.median(x / y for x, y in zip(times_a, times_b))
    return f"| {label} | {a:.3f} | {b:.3f} | {ratio:.2f} |"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="threads for both libraries (torch.set_num_threads)")
    p.add_argument("--repeats", type=int, default=9, help="rounds for the large shapes")
    p.add_argument("--tiny-repeats", type=int, default=2000, help="rounds for the small and tiny shapes")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ",".join(SHAPES))
    p.add_argument("--no-compile", action="store_true", help="skip the compiled CRNN row")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = fastctc.info()
    print(f"{platform.processor() or platform.machine()}, fastctc {info['version']} SIMD {info['simd_level']}, "
          f"torch {torch.__version__}, {args.threads} threads (torch.set_num_threads and fastctc's num_threads)")
    print()
    print("| shape (T, N, C, S) | row | torch ms | fastctc ms | torch / fastctc |")
    print("|---|---|---|---|---|")
    for name in [n for n in args.shapes.split(",") if n]:  # --shapes= runs the CRNN row alone
        T, N, C, S = SHAPES[name]
        logits, targets, il, tl = problem(T, N, C, S)
        torch_step, fast_step, fast_logits_step = step_fns(logits, targets, il, tl)
        repeats = args.tiny_repeats if name in TINY else args.repeats
        _, t = paired_ms({"torch": torch_step, "fast": fast_step, "fast_logits": fast_logits_step}, repeats)
        shape = f"{name} ({T}, {N}, {C}, {S})"
        print(row(f"{shape} | step, log_softmax", t["torch"], t["fast"]), flush=True)
        print(row(f"{shape} | step, from_logits=True", t["torch"], t["fast_logits"]), flush=True)
        if name in TINY:
            lp = logits.log_softmax(2)

            def torch_fwd():
                with torch.no_grad():
                    F.ctc_loss(lp, targets, il, tl)

            def fast_fwd():
                with torch.no_grad():
                    fct.ctc_loss(lp, targets, il, tl)

            lp_np, tg_np, il_np, tl_np = lp.numpy(), targets.numpy(), il.numpy(), tl.numpy()

            def numpy_fwd():
                fastctc.ctc_loss(lp_np, tg_np, il_np, tl_np)

            _, t = paired_ms({"torch": torch_fwd, "fast": fast_fwd, "numpy": numpy_fwd}, repeats)
            print(row(f"{shape} | forward", t["torch"], t["fast"]), flush=True)
            print(row(f"{shape} | forward, NumPy fastctc.ctc_loss", t["torch"], t["numpy"]), flush=True)
    if not args.no_compile:
        fns = crnn_fns()
        _, t = paired_ms(fns, max(args.repeats, 20))
        print(row("CRNN (8 x 1 x 32 x 64 images, 37 classes, T = 16, S = 6) | torch.compile step, SGD",
                  t["torch"], t["fastctc"]), flush=True)
    print()
    print("ms: medians over the rounds; torch / fastctc: median of the per-round ratios (above 1: fastctc "
          "is faster).  Command: python benchmarks/bench_torch.py " + " ".join(sys.argv[1:] if argv is None
                                                                                 else argv))
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - t0:.0f} s)")
    sys.exit(code)
