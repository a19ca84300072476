"""benchmarks/bench_cpu.py: fastctc vs PyTorch (and optax) on the CPU; a thin wrapper
around fastctc._bench.main (the same code `fastctc bench` runs).

    PYTHONPATH=pyx python benchmarks/bench_cpu.py --threads 1,2 --repeats 7
"""
import sys

from fastctc._bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
