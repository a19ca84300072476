"""Host-side cost of the GPU path's Python, measured on any machine (no GPU needed).

    PYTHONPATH=$PWD/pyx python benchmarks/cuda_host_cost.py [--calls 2000] [--rounds 7]

What a tiny call spends in Python before any kernel runs: fastctc.torch's CUDA route
(forward + backward, forward only, targets/lengths on the device or the host) and the
launcher's torch_ctc, with CPU tensors standing in for CUDA ones and the kernel launches
stubbed out (cuda.core's own launch cost and torch's CUDA dispatch come on top on a GPU).
Rounds alternate the variants; medians and minima per call.  The GPU fixed cost itself is
measured by benchmarks/gpu_check.py ("fixed cost").

The plain rows run the default launch mode, the compiled launcher (fastctc._cuda_fast) with
its C recorder standing in for cuLaunchKernel: fastctc.torch's plain calls take the compiled
route (_cuda_fast.torch_call: checks, workspace, argument packing, launches and the
reduction kernel in one C call a direction), torch_ctc the Python route with C launches.
They include the whole packing, while the FASTCTC_CUDA_LAUNCH=python rows stop before
cuda.core's launch() (whose own cost only a GPU measures).
"""
import argparse
import contextlib
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyx"))


def L_names():
    from fastctc import _cuda_build
    return _cuda_build.kernel_names()


def with_mode(f, L, mode):
    """f run with the launch mode `mode` ("c": the compiled launcher and torch route, the
    default; "python": cuda.core's launch), set for this call only."""
    def g():
        before, L.LAUNCH_MODE = L.LAUNCH_MODE, mode
        try:
            f()
        finally:
            L.LAUNCH_MODE = before
    return g


def stub(torch):
    """fastctc.torch's CUDA route and fastctc._cuda_launch on CPU tensors, launches counted, not run;
    returns (fastctc.torch, fastctc._cuda_launch, the launches, the host-held tensors' class)."""

    class HostTensor(torch.Tensor):
        """A CPU tensor standing for a host-held one (the other CPU tensors stand for device tensors)."""
        __torch_function__ = torch._C._disabled_torch_function_impl  # as fast as a plain tensor
    import fastctc.torch as fct
    from fastctc import _cuda_launch as L

    class CpuTorch(L._Torch):
        def __init__(self):
            self.torch, self.device, self.ordinal, self.stream = torch, torch.device("cpu"), 0, 0

    launches = []
    L._backend_for = lambda acts: (CpuTorch(), acts, lambda r: r)
    L.is_cuda_array = lambda x: isinstance(x, torch.Tensor)
    L._Call._launch = lambda self, name, *a: launches.append(name)
    L._DeviceGuard = lambda ordinal: contextlib.nullcontext()
    L._kernel_handles = lambda ordinal, h={n: 0x1000 + i for i, n in enumerate(L_names())}: h
    from fastctc import _cuda_fast
    _cuda_fast.recorder_enable()  # the C route's launches go to the recorder (a ring of 64)
    _cuda_fast.emulate(True, HostTensor)  # the compiled route: CPU tensors are device 0's, HostTensor's the host's
    _cuda_fast.set_kernels(0, {n: 0x1000 + i for i, n in enumerate(L_names())})
    fct._launcher = lambda: L
    fct._on_device = lambda x: isinstance(x, torch.Tensor) and not isinstance(x, HostTensor)
    fct._upload = lambda arr, device: torch.from_numpy(arr)
    return fct, L, launches, HostTensor


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    import torch
    fct, L, launches, HostTensor = stub(torch)
    from fastctc import _cuda_fast
    names = L_names()
    x = torch.randn(8, 1, 5)
    tg, il, tl = torch.tensor([[1, 2]]), torch.tensor([8]), torch.tensor([2])
    host = [t.as_subclass(HostTensor) for t in (tg, il, tl)]  # validated and uploaded by the routes
    xl = x.clone().requires_grad_()

    def fwd_bwd(ints):
        def f():
            xl.grad = None
            fct._cuda_ctc_loss(xl, *ints, 0, "mean", False, True).backward()
        return f

    variants = {
        "fastctc.torch forward+backward, device targets/lengths": fwd_bwd((tg, il, tl)),
        "fastctc.torch forward+backward, host targets/lengths": fwd_bwd(host),
        "fastctc.torch forward only (no autograd)": lambda: fct._cuda_ctc_loss(x, tg, il, tl, 0, "mean", False, True),
        "_cuda_launch.torch_ctc (loss + gradient)": lambda: L.torch_ctc(x, tg, il, tl, from_logits=True),
    }
    variants = {**{name: with_mode(f, L, "c") for name, f in variants.items()},
                **{name + ", FASTCTC_CUDA_LAUNCH=python": with_mode(f, L, "python") for name, f in variants.items()}}

    class Floor(torch.autograd.Function):  # autograd's own cost: nothing computed, five tensors saved
        @staticmethod
        def forward(ctx, a, args):
            ctx.save_for_backward(a, *args)
            return a.new_empty(())

        @staticmethod
        def backward(ctx, grad_out):
            return grad_out.new_empty(x.shape), None

    def floor():
        xl.grad = None
        Floor.apply(xl, (tg, il, tl, x)).backward()
    variants["reference: an empty torch.autograd.Function forward+backward"] = floor
    times = {k: [] for k in variants}
    for f in variants.values():
        for _ in range(100):
            f()
    for _ in range(args.rounds):
        for name, f in variants.items():
            t0 = time.perf_counter()
            for _ in range(args.calls):
                f()
            times[name].append((time.perf_counter() - t0) / args.calls * 1e6)
    launches.clear()
    _cuda_fast.recorder_enable()  # empties the ring (recorder_take raises once it wrapped)
    variants["fastctc.torch forward+backward, device targets/lengths"]()
    launches += [names[r["f"] - 0x1000] for r in _cuda_fast.recorder_take()]
    print(f"host cost per call, launches stubbed (torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds of {args.calls} calls)")
    for name, ts in times.items():
        print(f"  {name}: median {np.median(ts):.1f} us, min {min(ts):.1f} us")
    print("  launches of one fastctc.torch forward+backward:", ", ".join(launches))


if __name__ == "__main__":
    main()
