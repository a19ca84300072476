"""Shared pytest fixtures and the machine's tools.

`simd_level` is parametrised over fastctc's supported levels; tests that take it run
once per level, with the level forced through fastctc._core.set_simd_level and restored
afterwards, so no kernel set can rot unnoticed.  C_COMPILERS / CXX_COMPILERS (and the
needs_cc / needs_cxx marks) are the compilers the C tests build with, found once here.
Random inputs and float64 references live in reference.py.
"""
import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fastctc import _core  # noqa: E402

LEVELS = _core.simd_levels_supported()


@pytest.fixture(params=LEVELS)
def simd_level(request):
    before = _core.simd_level()
    _core.set_simd_level(request.param)
    yield request.param
    _core.set_simd_level(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def find_compilers(names):
    """The installed compilers among names, one per real executable (gcc and cc are
    often the same program), in the order given."""
    found, seen = [], set()
    for name in names:
        path = shutil.which(name)
        if path and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            found.append(name)
    return found


C_COMPILERS = find_compilers(["gcc", "clang"]) or find_compilers(["cc"])
CXX_COMPILERS = find_compilers(["g++", "clang++"]) or find_compilers(["c++"])
needs_cc = pytest.mark.skipif(not C_COMPILERS, reason="no C compiler (gcc, clang or cc) on PATH")
needs_cxx = pytest.mark.skipif(not CXX_COMPILERS, reason="no C++ compiler (g++, clang++ or c++) on PATH")


@pytest.fixture(scope="module")
def jax_x64():
    """float64 JAX for this module, set globally: the thread-local `jax.enable_x64(True)`
    context is not seen by the thread that may run a pure_callback, which then
    canonicalises the float64 operands to float32 (a JAX behaviour, see the report)."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", before)


@pytest.fixture(scope="session")
def emu():
    """The host emulation of cuda/ctc.cu (tests/gpu_emu.py), built once a session; the test
    is skipped where no g++ can build it."""
    import gpu_emu
    try:
        return gpu_emu.shared()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
