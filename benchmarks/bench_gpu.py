"""GPU benchmark: fastctc's CUDA path vs PyTorch's native CUDA CTC and cuDNN's CTC.

    PYTHONPATH=$PWD/pyx python benchmarks/bench_gpu.py            # writes benchmarks/results/gpu-<device>.md

For every shape of the CPU benchmark (char, bpe, vocab5k, ocr, long) at N = 32 and N = 256:
loss only and loss + gradient, timed with CUDA events after warm-up (median of the runs),
and the peak GPU memory of one loss + gradient call.  cuDNN is timed only where its
conditions hold (blank = 0, int32 targets concatenated on the CPU, every input length = T,
target lengths <= 256); elsewhere its column says n/a.  Needs torch with CUDA and a GPU.
"""
import argparse
import os
import statistics
import sys

import numpy as np

SHAPES = {"char": (500, 32, 100), "bpe": (250, 1024, 80), "vocab5k": (200, 5000, 60),
          "ocr": (64, 100, 25), "long": (2000, 64, 400)}  # name -> (T, C, S)


def timed(fn, torch, warmup=3, runs=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def peak_mb(fn, torch):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="32,256")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    import fastctc
    from fastctc import _cuda
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs torch with CUDA and a GPU")
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    rows = []
    for shape in args.shapes.split(","):
        T, C, S = SHAPES[shape]
        for N in map(int, args.batches.split(",")):
            g = torch.Generator(device="cpu").manual_seed(0)
            lp = torch.randn(T, N, C, generator=g).log_softmax(-1).to(dev)
            tg = torch.randint(1, C, (N, S), generator=g)
            il = torch.full((N,), T, dtype=torch.int32)
            tl = torch.randint(max(1, S // 2), S + 1, (N,), generator=g, dtype=torch.int32)
            tgd, ild, tld = tg.to(dev), il.to(dev), tl.to(dev)
            x = lp.detach().requires_grad_()

            def ours_loss():
                _cuda.run_device(lp, tgd, ild, tld, blank=0, from_logits=False, want_grad=False)

            def ours_grad():
                _cuda.run_device(lp, tgd, ild, tld, blank=0, from_logits=False, want_grad=True)

            def torch_native(grad):
                def f():
                    with torch.backends.cudnn.flags(enabled=False):
                        loss = torch.nn.functional.ctc_loss(x, tgd.long(), ild.long(), tld.long(), reduction="sum")
                        if grad:
                            loss.backward()
                return f
            cudnn_ok = S <= 256 and torch.backends.cudnn.is_available()
            flat = torch.cat([tg[i, :tl[i]] for i in range(N)]).to(torch.int32)

            def torch_cudnn(grad):
                def f():
                    loss = torch.nn.functional.ctc_loss(x, flat, il, tl, reduction="sum")
                    if grad:
                        loss.backward()
                return f
            row = dict(shape=shape, T=T, N=N, C=C, S=S,
                       ours_loss=timed(ours_loss, torch), ours_grad=timed(ours_grad, torch),
                       torch_loss=timed(torch_native(False), torch), torch_grad=timed(torch_native(True), torch),
                       ours_mb=peak_mb(ours_grad, torch), torch_mb=peak_mb(torch_native(True), torch))
            if cudnn_ok:
                row.update(cudnn_loss=timed(torch_cudnn(False), torch), cudnn_grad=timed(torch_cudnn(True), torch))
            rows.append(row)
            print(row, flush=True)
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   "gpu-" + "".join(ch if ch.isalnum() else "-" for ch in name) + ".md")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    with open(out, "w") as f:
        f.write(f"# fastctc GPU benchmark on {name}\n\ntorch {torch.__version__}, fastctc {fastctc.__version__}, "
                "times in ms (median of 10 after 3 warm-up runs, CUDA events), memory in MiB "
                "(peak above the inputs, loss+grad)\n\n")
        f.write("| shape | T | N | C | S | fastctc loss | torch loss | cuDNN loss | fastctc loss+grad | "
                "torch loss+grad | cuDNN loss+grad | fastctc MiB | torch MiB |\n|" + "---|" * 13 + "\n")
        for r in rows:
            f.write(f"| {r['shape']} | {r['T']} | {r['N']} | {r['C']} | {r['S']} | {fmt(r['ours_loss'])} | "
                    f"{fmt(r['torch_loss'])} | {fmt(r.get('cudnn_loss'))} | {fmt(r['ours_grad'])} | "
                    f"{fmt(r['torch_grad'])} | {fmt(r.get('cudnn_grad'))} | {r['ours_mb']:.1f} | {r['torch_mb']:.1f} |\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
