"""Lint: ruff (pyflakes, pycodestyle, import order; settings in pyproject.toml) over the
Python sources, one brace style (.clang-format) over the C and CUDA sources, and no
module of the package reaching for another module's private (underscore) names.
.ci/run installs both tools (ruff from the test extras, clang-format from Debian); a
machine without them reports the test as skipped, with the reason."""
import ast
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


def _private_uses(path, package):
    """`from .x import _y` and `x._y` in one source file, where x is a module of the
    package and _y is not itself a module (private modules such as _engine are the
    package's own business; the names inside them belong to their module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    modules = {os.path.splitext(os.path.basename(p))[0].split(".")[0]
               for p in glob.glob(os.path.join(package, "**", "*.*"), recursive=True)}
    modules |= {os.path.basename(d) for d in glob.glob(os.path.join(package, "*")) if os.path.isdir(d)}
    bound, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("fastctc")):
            for alias in node.names:
                if alias.name in modules:
                    bound.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fastctc.") and alias.asname:
                    bound.add(alias.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__") and node.attr not in modules):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_private_names_across_modules():
    package = os.path.join(ROOT, "pyx", "fastctc")
    sources = sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True))
    assert sources
    bad = [f"{os.path.relpath(p, ROOT)} {use}" for p in sources for use in _private_uses(p, package)]
    assert not bad, "promote what is shared to a name without a leading underscore:\n" + "\n".join(bad)
