"""benchmarks/gpu_check.py and benchmarks/bench_gpu.py on a machine without a GPU: the check
says why nothing ran and exits 0 (the one-command device check must never fail a CPU-only
machine), and both scripts at least import and parse their arguments."""
import os
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))


def _gpu_usable():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu_check
        return gpu_check._gpu_reason() is None
    finally:
        sys.path.pop(0)


def test_gpu_check_without_gpu_says_so_and_exits_0(tmp_path):
    if _gpu_usable():
        import pytest
        pytest.skip("this machine has a usable GPU: the check would run for minutes")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "pyx"))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "gpu-check.md").read_text()
    assert "No GPU check was run" in text and "gpu_check.py --out" in text
    assert "No GPU check was run" in out.stdout


def test_bench_and_check_scripts_parse():
    for script in ("gpu_check.py", "bench_gpu.py"):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "--out" in out.stdout, out.stderr
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bench_gpu
        import gpu_check
        assert set(bench_gpu.SHAPES) >= {"char", "bpe", "vocab5k", "ocr", "long", "warpctc"}
        assert bench_gpu.SHAPES["warpctc"] == (150, 128, 5000, 20)
        assert sum(need for _, _, need in gpu_check.CHECKS) <= 8 * 60
    finally:
        sys.path.pop(0)
