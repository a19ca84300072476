"""Lint: ruff (pyflakes, pycodestyle, import order; settings in pyproject.toml) over the
Python sources, and one brace style (.clang-format) over the C and CUDA sources.
.ci/run installs both tools (ruff from the test extras, clang-format from Debian); a
machine without them reports the test as skipped, with the reason."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_SOURCES = sorted(
    glob.glob(os.path.join(ROOT, "include", "fastctc", "**", "*.h"), recursive=True)
    + glob.glob(os.path.join(ROOT, "tests", "c", "*.c"))
    + glob.glob(os.path.join(ROOT, "fuzz", "*.c"))
    + glob.glob(os.path.join(ROOT, "examples", "c", "*.c"))
    + glob.glob(os.path.join(ROOT, "cuda", "*.cu")))


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install ruff; the test extras carry it)")
    proc = subprocess.run([ruff, "check", "--no-cache", ROOT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_c_sources_follow_clang_format():
    tool = shutil.which("clang-format")
    if tool is None:
        pytest.skip("clang-format is not installed (apt-get install clang-format; .ci/run does)")
    assert C_SOURCES
    proc = subprocess.run([tool, "--dry-run", "--Werror", "--style=file"] + C_SOURCES, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
