"""Throughput of `fastctc score` on the synthetic set of issue 18 (see fastctc.score.bench).

    python benchmarks/bench_score.py                      # 50,000 items, sorted and interleaved
    python benchmarks/bench_score.py --pythonpath ../main/pyx   # the same on another checkout
    fastctc bench score ...                               # the same, installed
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pyx"))

from fastctc.score.bench import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
