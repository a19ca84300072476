"""Smoke test of an *installed* fastctc (a wheel in a fresh environment), run as a plain
script so it needs nothing but fastctc and NumPy: cibuildwheel's test-command and
tests/test_packaging.py both run it.

    python tests/installed_smoke.py [--expect-openmp yes|no] [--forbid-prefix DIR]

It imports fastctc, checks the loss of warp-ctc's small published problem against both
the published value and its closed form, checks that fastctc.get_include() holds the
C headers next to the installed package, and prints fastctc.info().
"""
import argparse
import json
import os
import sys

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-openmp", choices=("yes", "no", "any"), default="any")
    parser.add_argument("--forbid-prefix", action="append", default=[],
                        help="fail if fastctc was imported from under this folder (the source tree)")
    parser.add_argument("--expect-cuda-source", action="store_true",
                        help="fail unless fastctc/cuda/ctc.cu is installed with the package")
    args = parser.parse_args(argv)

    import fastctc

    package_dir = os.path.dirname(os.path.abspath(fastctc.__file__))
    for prefix in args.forbid_prefix:
        prefix = os.path.abspath(prefix)
        if os.path.commonpath([package_dir, prefix]) == prefix:
            sys.exit(f"fastctc was imported from {package_dir}, inside {prefix}, not from the install")

    # warp-ctc's "small" test: T=2, C=5, one sequence, target [1, 2], unnormalised acts.
    # Only one alignment fits (1 then 2), so loss = -log(softmax(a0)[1] * softmax(a1)[2]).
    acts = np.array([[0.1, 0.6, 0.1, 0.1, 0.1], [0.1, 0.1, 0.6, 0.1, 0.1]], dtype=np.float32)
    published = 2.4628584
    e = np.exp(acts.astype(np.float64))
    closed_form = -np.log(e[0, 1] / e[0].sum() * e[1, 2] / e[1].sum())
    for from_logits, x in ((True, acts), (False, acts - np.log(np.exp(acts).sum(-1, keepdims=True)))):
        loss = fastctc.ctc_loss(x[:, None, :], np.array([[1, 2]]), [2], [2], blank=0,
                                reduction="none", from_logits=from_logits)
        loss = float(np.asarray(loss).reshape(-1)[0])
        if not (abs(loss - published) < 1e-5 and abs(loss - closed_form) < 1e-5):
            sys.exit(f"ctc_loss(from_logits={from_logits}) = {loss!r}; expected {published} "
                     f"(closed form {closed_form!r})")

    include = fastctc.get_include()
    header = os.path.join(include, "fastctc", "fastctc.h")
    if not os.path.isfile(header):
        sys.exit(f"fastctc.get_include() = {include!r} has no fastctc/fastctc.h")
    if os.path.commonpath([os.path.abspath(include), package_dir]) != package_dir:
        sys.exit(f"fastctc.get_include() = {include!r} is not inside the package {package_dir}")
    if args.expect_cuda_source:
        cu = os.path.join(package_dir, "cuda", "ctc.cu")
        if not os.path.isfile(cu):
            sys.exit(f"{cu} is not installed")

    info = fastctc.info()
    if args.expect_openmp != "any" and bool(info["openmp"]) != (args.expect_openmp == "yes"):
        sys.exit(f"fastctc.info()['openmp'] = {info['openmp']!r}; expected {args.expect_openmp}")
    print(json.dumps({"fastctc": package_dir, "get_include": include, "info": info}, default=str))
    print("fastctc smoke test: OK")


if __name__ == "__main__":
    main()
