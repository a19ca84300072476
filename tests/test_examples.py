"""The shipped examples run and check what they claim (examples/quickstart.py: published
losses and a finite-difference gradient check)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs_its_checks():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in [os.path.join(ROOT, "pyx"), os.environ.get("PYTHONPATH")] if p))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py")], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "gradient vs finite differences" in proc.stdout


def test_bogus_simd_level_warns():
    env = dict(os.environ, FASTCTC_SIMD="bogus", PYTHONPATH=os.pathsep.join(
        p for p in [os.path.join(ROOT, "pyx"), os.environ.get("PYTHONPATH")] if p))
    proc = subprocess.run([sys.executable, "-c", "import fastctc; print(fastctc.info()['simd_level'])"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "FASTCTC_SIMD='bogus'" in proc.stderr and "scalar" in proc.stderr
