"""The C API (include/fastctc/fastctc.h) from C and C++, built by the system compilers.

Each program in tests/c/ is compiled against the header (stb style: the file defines
FASTCTC_IMPLEMENTATION) with every C compiler found (gcc, clang, else cc), strictly
(-std=c99 -Wall -Wextra -Werror -pedantic; C++: -std=c++11 ... -pedantic), with and
without OpenMP, and under AddressSanitizer + UndefinedBehaviorSanitizer (and
ThreadSanitizer for the concurrency test) when the compiler can build them:

* test_capi.c / test_cpp.cpp check themselves (Graves vectors, infeasible sequences,
  every invalid argument, workspaces, layouts, precisions) and exit non-zero on failure;
* test_threads.c calls the API from several POSIX threads at once;
* capi_runner.c runs one call described by a file, so random problems can be compared
  with the Python API (fastctc.ctc_loss_and_grad) and the float64 NumPy reference;
* examples/c/score.c is built with docs/c-api.md's one-line command and run on .npy files.

Everything is skipped, with the reason, when no C compiler is installed.
"""
import os
import subprocess

import fastctc
import numpy as np
import published
import pytest
import reference as ref
from conftest import C_COMPILERS, CXX_COMPILERS, needs_cc, needs_cxx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CDIR = os.path.join(ROOT, "tests", "c")
STRICT_C = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
STRICT_CXX = ["-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SANITIZE = ["-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer"]


class Builder:
    """Compiles programs into a temporary folder, once per (compiler, sources, flags)."""

    def __init__(self, folder):
        self.folder = folder
        self.cache = {}
        self.probes = {}

    def build(self, compiler, sources, flags, libs=("-lm",)):
        key = (compiler, tuple(sources), tuple(flags))
        if key not in self.cache:
            exe = os.path.join(self.folder, f"prog{len(self.cache)}")
            cmd = [compiler, *flags, "-I", fastctc.get_include(), *sources, "-o", exe, *libs]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
            self.cache[key] = (proc.returncode, exe, " ".join(cmd) + "\n" + proc.stdout + proc.stderr)
        rc, exe, log = self.cache[key]
        assert rc == 0, f"compilation failed:\n{log}"
        return exe

    def supports(self, compiler, flags, source="int main(void) { return 0; }\n", suffix=".c"):
        """True when compiler can build and run a trivial program with flags."""
        key = (compiler, tuple(flags), source)
        if key not in self.probes:
            src = os.path.join(self.folder, f"probe{len(self.probes)}{suffix}")
            exe = src[:-len(suffix)]
            with open(src, "w") as f:
                f.write(source)
            ok = subprocess.run([compiler, *flags, src, "-o", exe], capture_output=True,
                                timeout=120).returncode == 0
            ok = ok and subprocess.run([exe], capture_output=True, timeout=60).returncode == 0
            self.probes[key] = ok
        return self.probes[key]

    def openmp(self, compiler, cxx=False):
        src = "#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n"
        return self.supports(compiler, ["-fopenmp"], src, ".cpp" if cxx else ".c")


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return Builder(str(tmp_path_factory.mktemp("capi")))


def _run(exe, *args, env=None, timeout=120):
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _omp_flags(builder, compiler, openmp, cxx=False):
    if not openmp:
        return []
    if not builder.openmp(compiler, cxx):
        pytest.skip(f"{compiler} cannot build OpenMP programs here")
    return ["-fopenmp"]


# ------------------------------------------------------------------ header and get_include

def test_get_include_holds_the_header():
    folder = fastctc.get_include()
    assert os.path.isfile(os.path.join(folder, "fastctc", "fastctc.h"))
    if os.path.isdir(os.path.join(ROOT, "include")) and os.path.dirname(fastctc.__file__).startswith(ROOT):
        assert os.path.samefile(folder, os.path.join(ROOT, "include"))


# ------------------------------------------------------------------ self-checking programs

@needs_cc
@pytest.mark.parametrize("openmp", [False, True], ids=["serial", "openmp"])
@pytest.mark.parametrize("compiler", C_COMPILERS)
def test_c_strict_build_and_selftest(builder, compiler, openmp):
    flags = STRICT_C + ["-O1"] + _omp_flags(builder, compiler, openmp)
    exe = builder.build(compiler, [os.path.join(CDIR, "test_capi.c")], flags)
    proc = _run(exe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failures" in proc.stdout


@needs_cxx
@pytest.mark.parametrize("openmp", [False, True], ids=["serial", "openmp"])
@pytest.mark.parametrize("compiler", CXX_COMPILERS)
def test_cxx_strict_build_and_selftest(builder, compiler, openmp):
    flags = STRICT_CXX + ["-O1"] + _omp_flags(builder, compiler, openmp, cxx=True)
    exe = builder.build(compiler, [os.path.join(CDIR, "test_cpp.cpp")], flags)
    proc = _run(exe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 failures" in proc.stdout


@needs_cc
@pytest.mark.parametrize("openmp", [False, True], ids=["serial", "openmp"])
def test_concurrent_calls_from_pthreads(builder, openmp):
    compiler = C_COMPILERS[0]
    if not builder.supports(compiler, ["-pthread"]):
        pytest.skip(f"{compiler} cannot build -pthread programs")
    flags = STRICT_C + ["-O2", "-pthread"] + _omp_flags(builder, compiler, openmp)
    exe = builder.build(compiler, [os.path.join(CDIR, "test_threads.c")], flags)
    proc = _run(exe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failing workers" in proc.stdout


@pytest.mark.slow
@needs_cc
@pytest.mark.parametrize("compiler", C_COMPILERS)
def test_under_address_and_undefined_sanitizers(builder, compiler):
    if not builder.supports(compiler, SANITIZE):
        pytest.skip(f"{compiler} cannot build AddressSanitizer/UBSan programs here")
    omp = ["-fopenmp"] if builder.openmp(compiler) else []
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    for source, marker, extra in (("test_capi.c", " 0 failures", []),
                                  ("test_threads.c", "0 failing workers", ["-pthread"])):
        exe = builder.build(compiler, [os.path.join(CDIR, source)], STRICT_C + SANITIZE + omp + extra)
        proc = _run(exe, env=env, timeout=300)
        assert proc.returncode == 0 and marker in proc.stdout, proc.stdout + proc.stderr
        assert "runtime error" not in proc.stderr, proc.stderr


@pytest.mark.slow
@needs_cc
def test_concurrent_calls_under_thread_sanitizer(builder):
    compiler = C_COMPILERS[0]
    flags = ["-g", "-O1", "-fsanitize=thread", "-pthread"]
    if not builder.supports(compiler, flags):
        pytest.skip(f"{compiler} cannot build ThreadSanitizer programs here")
    # Serial build: the OpenMP runtime is not instrumented, so TSan would report its
    # internals; the pthreads here are what the API promises to be safe with.
    exe = builder.build(compiler, [os.path.join(CDIR, "test_threads.c")], STRICT_C + flags)
    proc = _run(exe, timeout=300)
    assert proc.returncode == 0 and "0 failing workers" in proc.stdout, proc.stdout + proc.stderr
    assert "WARNING: ThreadSanitizer" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------ against the Python API

def _random_problem(rng, T, N, C, blank, want_infeasible=True):
    il = rng.integers(0, T + 1, size=N)
    il[0] = T
    ll = rng.integers(0, max(1, T // 2) + 1, size=N)
    labels = []
    for n in range(N):
        lab = ref.random_labels(rng, ll[n], C, blank)
        if n == 1 and ll[n] >= 2:
            lab[1] = lab[0]  # a repeat (needs a blank between)
        labels.append(lab)
    if want_infeasible and N >= 3:
        ll[2] = il[2] + 1
        labels[2] = np.where(rng.integers(0, C, size=ll[2]) == blank, (blank + 1) % C,
                             rng.integers(0, C, size=ll[2]))
    flat = np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32)
    acts = rng.normal(size=(T, N, C)) * 3
    return acts, flat, il.astype(np.int32), ll.astype(np.int32)


def _run_capi(builder, tmp_path, acts_tnc, flat, il, ll, blank, from_logits, zero_infinity,
              threads, batch_major, want_grad, f32, ws_mode):
    compiler = C_COMPILERS[0]
    exe = builder.build(compiler, [os.path.join(CDIR, "capi_runner.c")],
                        STRICT_C + ["-O2"] + (["-fopenmp"] if builder.openmp(compiler) else []))
    T, N, C = acts_tnc.shape
    header = np.array([T, N, C, blank, from_logits, zero_infinity, threads, batch_major, want_grad,
                       f32, ws_mode], dtype=np.int32)
    laid = acts_tnc.transpose(1, 0, 2) if batch_major else acts_tnc
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    with open(src, "wb") as f:
        for part in (header, il.astype(np.int32), ll.astype(np.int32), flat.astype(np.int32),
                     np.ascontiguousarray(laid, dtype=np.float64)):
            f.write(part.tobytes())
    proc = _run(exe, str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    out = np.fromfile(dst, dtype=np.float64)
    costs = out[:N]
    grads = None
    if want_grad:
        grads = out[N:].reshape(laid.shape)
        if batch_major:
            grads = grads.transpose(1, 0, 2)
    return costs, grads


@needs_cc
@pytest.mark.parametrize("f32", [0, 1], ids=["f64", "f32"])
@pytest.mark.parametrize("batch_major", [0, 1], ids=["time_major", "batch_major"])
@pytest.mark.parametrize("from_logits", [0, 1], ids=["log_probs", "logits"])
def test_matches_python_api(builder, tmp_path, f32, batch_major, from_logits):
    # Thread count and workspace (internal; caller-owned; caller-owned at an odd address)
    # cycle with the other parameters, so each appears with both precisions and layouts.
    case = 4 * f32 + 2 * batch_major + from_logits
    threads, ws_mode = ((1, 0), (2, 1), (0, 2))[case % 3]
    rng = np.random.default_rng(1000 + case)
    T, N, C, blank = 13, 5, 7, 2
    acts, flat, il, ll = _random_problem(rng, T, N, C, blank)
    if not from_logits:  # log-probabilities
        acts = ref.log_softmax(acts)
    dtype = np.float32 if f32 else np.float64
    acts = acts.astype(dtype).astype(np.float64)  # what both sides see
    for zero_infinity in (0, 1):
        costs, grads = _run_capi(builder, tmp_path, acts, flat, il, ll, blank, from_logits,
                                 zero_infinity, threads, batch_major, 1, f32, ws_mode)
        want_loss, want_grad = fastctc.ctc_loss_and_grad(
            acts.astype(dtype), flat, il, ll, blank=blank, reduction="none",
            zero_infinity=bool(zero_infinity), from_logits=bool(from_logits))
        rtol, atol = (2e-5, 2e-5) if f32 else (1e-11, 1e-11)
        np.testing.assert_allclose(costs, want_loss, rtol=rtol, atol=atol)
        np.testing.assert_allclose(grads, want_grad, rtol=rtol, atol=atol)
        # Infeasible sequence 2: +inf (or 0) and zero gradient.
        assert costs[2] == (0.0 if zero_infinity else np.inf)
        assert not grads[:, 2].any()
        # Rows past each input length are zero.
        for n in range(N):
            assert not grads[il[n]:, n].any()
        # Costs only: the same costs.
        costs_only, _ = _run_capi(builder, tmp_path, acts, flat, il, ll, blank, from_logits,
                                  zero_infinity, threads, batch_major, 0, f32, ws_mode)
        np.testing.assert_array_equal(costs_only, costs)
    # And the independent float64 NumPy reference, sequence by sequence.
    if not f32:
        offsets = np.concatenate([[0], np.cumsum(ll)])
        for n in range(N):
            lab = flat[offsets[n]:offsets[n + 1]]
            x = acts[:il[n], n]
            lp = ref.log_softmax(x) if from_logits else x
            want = ref.nll(lp, lab, blank)
            if np.isfinite(want):
                np.testing.assert_allclose(costs[n], want, rtol=1e-9)
                g = ref.grad_logits(x, lab, blank) if from_logits else ref.grad_log_probs(lp, lab, blank)
                np.testing.assert_allclose(grads[:il[n], n], g, rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------ examples/c/score.c

@needs_cc
def test_score_example(builder, tmp_path):
    compiler = C_COMPILERS[0]
    flags = ["-O2"] + (["-fopenmp"] if builder.openmp(compiler) else [])
    exe = builder.build(compiler, [os.path.join(ROOT, "examples", "c", "score.c")], flags)
    lp = np.log(np.array(published.CAT_PROBS))
    targets = published.CAT_TARGETS
    for name, arr in (("f32.npy", lp.astype(np.float32)), ("f64.npy", lp),
                      ("fortran.npy", np.asfortranarray(lp)), ("big.npy", lp.astype(">f8"))):
        np.save(tmp_path / name, arr)
        proc = _run(exe, str(tmp_path / name), ",".join(map(str, targets)))
        assert proc.returncode == 0, proc.stderr
        got = float(proc.stdout.split()[1])
        want = float(fastctc.ctc_loss(arr.astype(np.float64), np.array(targets), len(lp), len(targets),
                                      reduction="none"))
        np.testing.assert_allclose(got, want, rtol=1e-7)
        np.testing.assert_allclose(got, published.CAT_LOSS, rtol=1e-4)
    # logits and another blank, against the Python API
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(9, 5))
    np.save(tmp_path / "logits.npy", logits)
    proc = _run(exe, "--blank", "4", "--logits", str(tmp_path / "logits.npy"), "0 1 1 3")
    assert proc.returncode == 0, proc.stderr
    want = fastctc.ctc_loss(logits, np.array([0, 1, 1, 3]), 9, 4, blank=4, reduction="none",
                            from_logits=True)
    np.testing.assert_allclose(float(proc.stdout.split()[1]), float(want), rtol=1e-7)
    # infeasible: inf
    proc = _run(exe, str(tmp_path / "f64.npy"), "1 1 1 1 1")
    assert proc.returncode == 0 and proc.stdout.split()[1] == "inf"
    # errors: a label out of range, a non-float file, a missing file
    proc = _run(exe, str(tmp_path / "f64.npy"), "3,1,27")
    assert proc.returncode == 1 and "invalid argument" in proc.stderr
    np.save(tmp_path / "ints.npy", np.zeros((3, 4), dtype=np.int32))
    proc = _run(exe, str(tmp_path / "ints.npy"), "1")
    assert proc.returncode == 1 and "float32 or float64" in proc.stderr
    proc = _run(exe, str(tmp_path / "missing.npy"), "1")
    assert proc.returncode == 1 and "cannot open" in proc.stderr


@needs_cc
def test_score_example_as_the_readme_runs_it(builder):
    """The C API page's example, verbatim: the shipped examples/c/logprobs.npy (the CAT
    walkthrough's probabilities) prints the number docs/c-api.md shows."""
    import re
    compiler = C_COMPILERS[0]
    flags = ["-O2"] + (["-fopenmp"] if builder.openmp(compiler) else [])
    exe = builder.build(compiler, [os.path.join(ROOT, "examples", "c", "score.c")], flags)
    readme = open(os.path.join(ROOT, "docs", "c-api.md"), encoding="utf-8").read()
    match = re.search(r"\./score --blank 0 logprobs\.npy 3,1,20 +# prints: (loss [0-9.]+)", readme)
    assert match, "the C example line of docs/c-api.md changed"
    proc = _run(exe, "--blank", "0", os.path.join(ROOT, "examples", "c", "logprobs.npy"), "3,1,20")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == match.group(1)
    np.testing.assert_allclose(float(proc.stdout.split()[1]), published.CAT_LOSS, rtol=1e-5)


@needs_cc
@pytest.mark.parametrize("compiler", C_COMPILERS)
def test_static_build_calling_one_entry_point(builder, compiler):
    exe = builder.build(compiler, [os.path.join(CDIR, "test_static.c")], STRICT_C)
    proc = _run(exe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
