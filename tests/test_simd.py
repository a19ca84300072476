"""SIMD layer: run-time dispatch, the vector exp/log against NumPy over the whole float
range, row kernels' -inf/NaN conventions, agreement between SIMD levels, the split
(one sequence on two threads) pass, and that the AVX-512 and NEON kernels compile
with baseline flags even where they cannot run."""
import os
import subprocess
import threading

import fastctc
import numpy as np
import pytest
import reference as ref
from conftest import find_compilers
from fastctc import _core
from reference import random_log_probs

LEVELS = _core.simd_levels_supported()
INCLUDE = os.path.join(os.path.dirname(__file__), "..", "include")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


# ---------------------------------------------------------------- dispatch

@pytest.mark.skipif(_cpu_flags() is None, reason="no /proc/cpuinfo flags (not Linux x86)")
def test_levels_follow_cpu_flags():
    flags = _cpu_flags()
    if not {"avx2", "fma"} <= flags:
        pytest.skip("this CPU has no AVX2+FMA")
    assert "avx2" in LEVELS
    assert ("avx512" in LEVELS) == ({"avx512f", "avx512dq"} <= flags)
    assert fastctc.info()["simd_level"] == LEVELS[-1] or os.environ.get("FASTCTC_SIMD")


def test_env_lowers_level():
    code = "import fastctc; print(fastctc.info()['simd_level'])"
    env = dict(os.environ, FASTCTC_SIMD="scalar")
    out = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"
    env["FASTCTC_SIMD"] = "avx512-but-not-a-level"
    out = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == LEVELS[-1]


def test_set_unsupported_level_raises():
    bad = [lv for lv in _core.SIMD_LEVELS if lv not in LEVELS] + ["sse9"]
    for lv in bad:
        with pytest.raises(ValueError):
            _core.set_simd_level(lv)
        with pytest.raises(ValueError):
            _core.vec_math("exp", np.zeros(3), lv)


# ---------------------------------------------------------------- vector exp / log

def _ulp_error(got, expected):
    got = got.astype(np.float64)
    e64 = expected.astype(np.float64)
    same = (got == e64) | (np.isnan(got) & np.isnan(e64))
    with np.errstate(invalid="ignore"):
        err = np.abs(got - e64) / np.spacing(np.abs(expected)).astype(np.float64)
    return np.where(same, 0.0, err)


def _float32_sweep(rng):
    bits = rng.integers(0, 2 ** 32, size=1_000_000, dtype=np.uint64).astype(np.uint32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, 1e-40, -1e-40, 1.1754944e-38,
                         3.4028235e38, 88.72, 88.73, -87.33, -103.9, -104.0, 89.0, 1.0, -1.0], np.float32)
    return np.concatenate([bits.view(np.float32), specials,
                           np.linspace(-110, 95, 100_001, dtype=np.float32),
                           np.linspace(0, 4, 100_001, dtype=np.float32),
                           (2.0 ** np.arange(-149, 128)).astype(np.float32)])


def _float64_sweep(rng):
    bits = rng.integers(0, 2 ** 64, size=300_000, dtype=np.uint64)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 1e-310, -1e-310, 2.2250738585072014e-308,
                         1.7976931348623157e308, 709.78, 709.79, -745.1, -745.2, -746.0, 710.0, 1.0, -1.0])
    return np.concatenate([bits.view(np.float64), specials, np.linspace(-760, 720, 100_001),
                           np.linspace(0, 4, 100_001), 2.0 ** np.arange(-1074, 1024)])


@pytest.mark.parametrize("level", LEVELS)
def test_vector_exp_log_float32(level, rng):
    x = _float32_sweep(rng)
    with np.errstate(all="ignore"):
        for name, fn, max_ulp in (("exp", np.exp, 3.0), ("log", np.log, 5.0)):
            got = _core.vec_math(name, x, level)
            expected = fn(x)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected), err_msg=f"{name} NaN pattern")
            np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected), err_msg=f"{name} +inf")
            np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected), err_msg=f"{name} -inf")
            err = _ulp_error(got, expected)
            worst = int(np.argmax(err))
            assert err[worst] <= max_ulp, f"{level} {name}({x[worst]!r}) = {got[worst]!r}, NumPy {expected[worst]!r}"


@pytest.mark.parametrize("level", LEVELS)
def test_vector_exp_log_float64(level, rng):
    x = _float64_sweep(rng)
    with np.errstate(all="ignore"):
        for name, fn in (("exp", np.exp), ("log", np.log)):
            got = _core.vec_math(name, x, level)
            expected = fn(x)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
            np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
            err = _ulp_error(got, expected)
            worst = int(np.argmax(err))
            assert err[worst] <= 3.0, f"{level} {name}({x[worst]!r}) = {got[worst]!r}, NumPy {expected[worst]!r}"


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 17, 33])
def test_vector_math_tails(n):
    x = np.linspace(-3, 3, n)
    for level in LEVELS:
        np.testing.assert_allclose(_core.vec_math("exp", x, level), np.exp(x), rtol=1e-15)
        np.testing.assert_allclose(_core.vec_math("log", np.abs(x) + 1, level), np.log(np.abs(x) + 1), rtol=1e-15)


# ---------------------------------------------------------------- kernels' conventions

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_neg_inf_gives_inf_not_nan(simd_level, dtype):
    T, N, C, L = 30, 3, 5, 8
    lp = np.full((T, N, C), -np.inf, dtype=dtype)
    targets = np.ones((N, L), dtype=np.int64)
    targets[:, ::2] = 2
    for from_logits in (False, True):
        loss, grad = fastctc.ctc_loss_and_grad(lp, targets, [T] * N, [L] * N, reduction="none",
                                               from_logits=from_logits)
        if from_logits:  # softmax of an all -inf row is undefined; only "no crash" is asked
            continue
        assert np.all(np.isposinf(loss))
        assert not np.isnan(grad).any() and not grad.any()
    # a label that is impossible at every frame: -inf log-prob column
    lp = random_log_probs(np.random.default_rng(1), T, N, C, dtype=dtype)
    lp[:, :, 3] = -np.inf
    targets[:, 1] = 3
    loss, grad = fastctc.ctc_loss_and_grad(lp, targets, [T] * N, [L] * N, reduction="none")
    assert np.all(np.isposinf(loss)) and not np.isnan(grad).any() and not grad.any()
    # -inf entries elsewhere leave a finite loss and a finite gradient
    lp = random_log_probs(np.random.default_rng(2), T, N, C, dtype=dtype)
    lp[::3, :, 4] = -np.inf
    loss, grad = fastctc.ctc_loss_and_grad(lp, targets, [T] * N, [L] * N, reduction="none")
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))


def _batch(rng, T, N, C, L, dtype, scale=2.0):
    lp = random_log_probs(rng, T, N, C, dtype=dtype, scale=scale)
    targets = rng.integers(1, C, size=(N, L))
    il = rng.integers(max(1, T - 5), T + 1, size=N)
    il[0] = T
    tl = rng.integers(0, L + 1, size=N)
    tl[0] = L
    return lp, targets, il, tl


@pytest.mark.parametrize("dtype,rtol,gtol", [(np.float32, 2e-6, 2e-5), (np.float64, 1e-12, 1e-11)])
@pytest.mark.parametrize("shape", [(50, 4, 7, 12), (120, 3, 40, 50), (33, 5, 3, 15), (9, 2, 300, 3),
                                   (7, 3, 4100, 5)])
def test_levels_agree(dtype, rtol, gtol, shape):
    rng = np.random.default_rng(sum(shape))
    T, N, C, L = shape
    lp, targets, il, tl = _batch(rng, T, N, C, L, dtype)
    before = _core.simd_level()
    results = {}
    try:
        for level in LEVELS:
            _core.set_simd_level(level)
            results[level] = [fastctc.ctc_loss_and_grad(lp, targets, il, tl, reduction="none", from_logits=fl)
                              for fl in (False, True)]
    finally:
        _core.set_simd_level(before)
    base = results["scalar"]
    for level, res in results.items():
        for (loss, grad), (loss0, grad0) in zip(res, base):
            np.testing.assert_allclose(loss, loss0, rtol=rtol, err_msg=level)
            np.testing.assert_allclose(grad, grad0, atol=gtol, rtol=0, err_msg=level)


def test_peaky_float32_matches_float64_reference(simd_level):
    """Real-model-like outputs: one class near 0, the rest down to -60 .. -200 nats."""
    rng = np.random.default_rng(7)
    T, N, C, L = 80, 4, 30, 20
    logits = rng.normal(size=(T, N, C)) * 3
    logits[np.arange(T)[:, None], np.arange(N)[None, :], rng.integers(0, C, size=(T, N))] += 80
    logits -= rng.uniform(0, 120, size=(T, N, C)) * (rng.random((T, N, C)) < 0.5)
    lp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    assert lp.min() < -60
    targets = rng.integers(1, C, size=(N, L))
    expected = np.array([ref.nll(lp[:, n, :], list(targets[n]), 0) for n in range(N)])
    loss64 = fastctc.ctc_loss(lp, targets, [T] * N, [L] * N, reduction="none")
    loss32 = fastctc.ctc_loss(lp.astype(np.float32), targets, [T] * N, [L] * N, reduction="none")
    finite = np.isfinite(expected)
    assert finite.any()
    np.testing.assert_allclose(loss64[finite], expected[finite], rtol=1e-12)
    np.testing.assert_allclose(loss32[finite], expected[finite], rtol=1e-5)
    _, g64 = fastctc.ctc_loss_and_grad(lp, targets, [T] * N, [L] * N, reduction="sum")
    _, g32 = fastctc.ctc_loss_and_grad(lp.astype(np.float32), targets, [T] * N, [L] * N, reduction="sum")
    np.testing.assert_allclose(g32, g64, atol=1e-4)


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-11)])
def test_one_sequence_split_over_threads(simd_level, from_logits, dtype, tol):
    rng = np.random.default_rng(3)
    for T, C, L in [(8, 5, 3), (9, 4, 4), (101, 3, 50), (300, 40, 90), (20, 6, 10)]:
        x = (rng.normal(size=(T, 1, C)) * 3).astype(dtype)
        labels = rng.integers(1, C, size=(1, L))
        one = fastctc.ctc_loss_and_grad(x, labels, [T], [L], reduction="sum", from_logits=from_logits,
                                        num_threads=1)
        two = fastctc.ctc_loss_and_grad(x, labels, [T], [L], reduction="sum", from_logits=from_logits,
                                        num_threads=2)
        np.testing.assert_allclose(two[0], one[0], rtol=tol)
        np.testing.assert_allclose(two[1], one[1], atol=tol * 10, rtol=0)
    # infeasible: inf loss, zero gradient, both ways (grad rows past the length too)
    x = rng.normal(size=(12, 2, 4)).astype(dtype)
    labels = np.array([[1, 1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2, 2]])
    loss, grad = fastctc.ctc_loss_and_grad(x[:, :1], labels[:1], [10], [7], reduction="none", num_threads=2)
    assert np.isposinf(loss).all() and not grad.any()


def test_concurrent_python_threads_agree():
    rng = np.random.default_rng(5)
    lp, targets, il, tl = _batch(rng, 60, 6, 12, 15, np.float32)
    expected = fastctc.ctc_loss_and_grad(lp, targets, il, tl, reduction="none")
    out = [None] * 4

    def work(i):
        out[i] = fastctc.ctc_loss_and_grad(lp, targets, il, tl, reduction="none")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for loss, grad in out:
        np.testing.assert_array_equal(loss, expected[0])
        np.testing.assert_array_equal(grad, expected[1])


# ---------------------------------------------------------------- every ISA compiles

_C_PROGRAM = r"""
#define FASTCTC_IMPLEMENTATION
#include "fastctc/fastctc.h"
#include <stdio.h>
int main(void) {
    printf("%s %d\n", fastctc_simd_level_name(fastctc_simd_level()),
           fastctc_simd_level_supported(FASTCTC_SIMD_AVX512));
    return 0;
}
"""


@pytest.mark.skipif(not find_compilers(["gcc"]), reason="gcc not installed")
@pytest.mark.skipif(os.uname().machine not in ("x86_64", "AMD64"), reason="x86-64 kernels")
def test_x86_kernels_compile_with_baseline_flags(tmp_path):
    src = tmp_path / "prog.c"
    src.write_text(_C_PROGRAM)
    exe = tmp_path / "prog"
    cmd = ["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-fopenmp",
           "-I", INCLUDE, str(src), "-o", str(exe), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    syms = subprocess.run(["nm", str(exe)], capture_output=True, text=True).stdout
    for name in ("fctc_alpha_row_avx512_f32", "fctc_beta_row_avx512_f64", "fctc_alpha_row_avx2_f32"):
        assert name in syms, f"{name} missing: the AVX-512/AVX2 kernels were not compiled"
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=dict(os.environ, FASTCTC_SIMD=""))
    assert run.returncode == 0, run.stderr
    level, avx512_ok = run.stdout.split()
    flags = _cpu_flags() or set()
    assert (avx512_ok == "1") == ({"avx512f", "avx512dq"} <= flags)
    assert level == LEVELS[-1]


@pytest.mark.parametrize("compiler,lang", [("g++", "c++"), ("clang", "c")])
def test_other_compilers_build_the_kernels(tmp_path, compiler, lang):
    """C++ (the header promises C++11) and clang: warning-free, and the level is right."""
    if not find_compilers([compiler]):
        pytest.skip(f"{compiler} not installed")
    src = tmp_path / "prog.c"
    src.write_text(_C_PROGRAM)
    exe = tmp_path / "prog"
    std = "-std=c++11" if lang == "c++" else "-std=c99"
    cmd = [compiler, "-x", lang, std, "-O2", "-Wall", "-Wextra", "-Werror",
           "-I", INCLUDE, str(src), "-o", str(exe), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=dict(os.environ, FASTCTC_SIMD=""))
    assert run.returncode == 0 and run.stdout.split()[0] == LEVELS[-1]


@pytest.mark.skipif(not find_compilers(["clang"]), reason="clang not installed (cross syntax check of NEON)")
def test_neon_kernels_compile(tmp_path):
    """Syntax and type check of the AArch64 NEON kernels with clang's cross target; the
    host's C headers stand in for the target's (only declarations are needed)."""
    (tmp_path / "gnu").mkdir()
    (tmp_path / "gnu" / "stubs-32.h").write_text("")
    src = tmp_path / "neon.c"
    src.write_text('#define FASTCTC_IMPLEMENTATION\n#include "fastctc/fastctc.h"\n'
                   "const void *fctc_neon_tables[] = {&fctc_kernels_neon_f32, &fctc_kernels_neon_f64};\n")
    multiarch = "/usr/include/x86_64-linux-gnu"
    cmd = ["clang", "--target=aarch64-linux-gnu", "-fsyntax-only", "-O2", "-Wno-void-pointer-to-int-cast",
           "-isystem", str(tmp_path), "-isystem", multiarch, "-I", INCLUDE, str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if "file not found" in res.stderr and "fastctc" not in res.stderr.split("file not found")[0][-200:]:
        pytest.skip("no usable headers for the aarch64 cross check: " + res.stderr[:200])
    assert res.returncode == 0, res.stderr
