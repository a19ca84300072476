"""benchmarks/gpu_check.py and benchmarks/bench_gpu.py on a machine without a GPU: the check
says why nothing ran and exits 0 (the one-command device check must never fail a CPU-only
machine), and both scripts at least import and parse their arguments."""
import os
import subprocess
import sys

import pytest

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


@pytest.mark.slow
def test_device_checks_pass_on_the_emulated_kernels(tmp_path, monkeypatch):
    """gpu_check's NaN-rule, bad-value and float16/bfloat16 checks run against the host
    emulation (CPU torch tensors standing in for CUDA ones, launches emulated): the check
    code itself is exercised before it ever meets a GPU."""
    torch = pytest.importorskip("torch")
    sys.path[:0] = [os.path.join(ROOT, "benchmarks"), os.path.dirname(__file__)]
    try:
        import gpu_check
        import gpu_emu
        lib = gpu_emu.build(str(tmp_path))
        data = gpu_check._data
        gpu_emu.install_python_route(monkeypatch, lib, torch, lambda x: isinstance(x, torch.Tensor))
        monkeypatch.setattr(gpu_check, "_data", lambda *a, **k: data(*a, **dict(k, device="cpu")))
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
        for check in (gpu_check.check_nan_rule, gpu_check.check_bad_values, gpu_check.check_half):
            ok, detail = check(torch, [])
            assert ok, (check.__name__, detail)
    finally:
        del sys.path[:2]
