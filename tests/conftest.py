"""Shared pytest fixtures: run every test module at each SIMD level this machine has.

`simd_level` is parametrised over fastctc's supported levels; tests that take it run
once per level, with the level forced through fastctc._core.set_simd_level and restored
afterwards, so no kernel set can rot unnoticed.
"""
import os
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


def random_log_probs(rng, T, N, C, dtype=np.float64, scale=2.0):
    x = rng.normal(size=(T, N, C)) * scale
    x = x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
    return x.astype(dtype)
