"""Fuzzing: the C entry points (libFuzzer harness fuzz/fuzz_capi.c) and the Python facade
(hypothesis), with bounded budgets so the suite stays short.

* The saved libFuzzer inputs (fuzz/regressions: past findings; fuzz/corpus: a seed
  corpus) are replayed through the harness with any C compiler (fuzz/replay_main.c
  stands in for libFuzzer), under AddressSanitizer + UBSan when available.
* A short libFuzzer run (clang -fsanitize=fuzzer,address,undefined) when clang has it.
* hypothesis drives fastctc.ctc_loss / ctc_loss_and_grad with malformed shapes, dtypes,
  lengths, labels, options and non-finite values, starting from valid problems and
  breaking one or two things: every call must either return well-formed results or
  raise one of fastctc's errors (CTCValueError / CTCTypeError, i.e. ValueError /
  TypeError); a crash ends the test process, which fails the run.
"""
import os
import shutil
import subprocess

import fastctc
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "fuzz")
HARNESS = os.path.join(FUZZ, "fuzz_capi.c")
SANITIZE = ["-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


def _compile(cmd, cwd):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def _cc():
    for name in ("gcc", "clang", "cc"):
        if shutil.which(name):
            return name
    return None


# ------------------------------------------------------------------ C harness

@pytest.mark.skipif(_cc() is None, reason="no C compiler on PATH")
def test_replay_saved_fuzz_inputs(tmp_path):
    cc = _cc()
    exe = str(tmp_path / "replay")
    base = [cc, "-std=c99", "-I", fastctc.get_include(), HARNESS, os.path.join(FUZZ, "replay_main.c"),
            "-o", exe, "-lm"]
    proc = _compile(base[:1] + SANITIZE + base[1:], ROOT)
    sanitized = proc.returncode == 0
    if not sanitized:  # no sanitizer runtime: still replay, unsanitized
        proc = _compile(base[:1] + ["-O1"] + base[1:], ROOT)
    assert proc.returncode == 0, proc.stderr
    folders = [os.path.join(FUZZ, d) for d in ("regressions", "corpus")]
    folders = [d for d in folders if os.path.isdir(d)]
    proc = subprocess.run([exe, *folders], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "runtime error" not in proc.stderr, proc.stderr[-4000:]
    count = int(proc.stdout.split()[1])
    assert count >= len(os.listdir(os.path.join(FUZZ, "regressions")))


def _libfuzzer_exe(tmp_path):
    clang = shutil.which("clang")
    if not clang:
        pytest.skip("clang is not installed (libFuzzer needs it)")
    exe = str(tmp_path / "fuzz_capi")
    flags = ["-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined"]
    proc = _compile([clang, *flags, "-fopenmp", "-I", fastctc.get_include(), HARNESS, "-o", exe, "-lm"], ROOT)
    if proc.returncode != 0:
        proc = _compile([clang, *flags, "-I", fastctc.get_include(), HARNESS, "-o", exe, "-lm"], ROOT)
    if proc.returncode != 0:
        pytest.skip(f"clang cannot build a libFuzzer target here: {proc.stderr[-500:]}")
    return exe


def test_libfuzzer_bounded_run(tmp_path):
    exe = _libfuzzer_exe(tmp_path)
    work = tmp_path / "corpus"
    shutil.copytree(os.path.join(FUZZ, "corpus"), work)
    for name in os.listdir(os.path.join(FUZZ, "regressions")):
        shutil.copy(os.path.join(FUZZ, "regressions", name), work / name)
    seconds = int(os.environ.get("FASTCTC_FUZZ_SECONDS", "20"))
    proc = subprocess.run([exe, f"-max_total_time={seconds}", "-max_len=1024", "-timeout=20",
                           "-rss_limit_mb=2048", "-print_final_stats=1",
                           f"-artifact_prefix={tmp_path}/", str(work)],
                          capture_output=True, text=True, timeout=seconds + 240)
    tail = proc.stderr[-6000:]
    assert proc.returncode == 0, "libFuzzer found a failing input (saved in the artifact folder):\n" + tail
    assert "stat::number_of_executed_units" in proc.stderr, tail


# ------------------------------------------------------------------ Python facade

FASTCTC_ERRORS = (fastctc.CTCValueError, fastctc.CTCTypeError)
SPECIAL = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -800.0, 5e-324]


@st.composite
def problems(draw):
    """A valid torch-style problem, then 0-2 deliberate breakages."""
    T = draw(st.integers(0, 8))
    N = draw(st.integers(0, 4))
    C = draw(st.integers(1, 6))
    blank = draw(st.integers(0, C - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    acts = (rng.normal(size=(T, N, C)) * draw(st.sampled_from([0.1, 3.0, 50.0]))).astype(dtype)
    if draw(st.booleans()) and acts.size:
        k = draw(st.integers(0, acts.size - 1))
        acts.reshape(-1)[k] = draw(st.sampled_from(SPECIAL))
    il = rng.integers(0, T + 1, size=N)
    tl = rng.integers(0, T + 2, size=N)
    padded = draw(st.booleans())
    S = int(tl.max()) if N else 0
    tg = rng.integers(0, C, size=(N, S))
    targets = tg if padded else np.concatenate([tg[n, :tl[n]] for n in range(N)]) if N else np.zeros(0, int)
    args = dict(log_probs=acts, targets=targets, input_lengths=il, target_lengths=tl, blank=blank,
                reduction=draw(st.sampled_from(["none", "sum", "mean"])),
                zero_infinity=draw(st.booleans()), from_logits=draw(st.booleans()),
                num_threads=draw(st.sampled_from([None, 1, 2])))
    if draw(st.booleans()) and N == 1:  # unbatched form
        args.update(log_probs=acts[:, 0], targets=tg[0, :tl[0]], input_lengths=int(il[0]),
                    target_lengths=int(tl[0]))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(args)))
        args[key] = draw(_breakage(key, args[key], T, N, C))
    return args


def _as_uint8(value):
    """value as uint8 (wrapping), when it is an integer array; else unchanged."""
    try:
        arr = np.asarray(value)
        return arr.astype(np.uint8) if arr.ndim and arr.dtype.kind in "iu" else value
    except (TypeError, ValueError):
        return value


def _as_float64(value):
    """value as float64, when it reads as numbers (an earlier breakage may have left a
    string or an object there); else unchanged."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return value


def _breakage(key, value, T, N, C):
    weird = st.sampled_from([None, "x", 1.5, True, [], [[1, 2], [3]], object(), -1, 2**40,
                             np.array([np.nan]), np.zeros((2, 2, 2, 2))])
    if key == "log_probs":
        shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)
        dtypes = st.sampled_from([np.float16, np.float32, np.float64, np.int32, np.bool_, np.complex64,
                                  np.uint8, object])
        arrays = st.tuples(shapes, dtypes).map(lambda sd: np.ones(sd[0], dtype=sd[1]))
        noncontig = st.just(np.asarray(value)[..., ::-1] if np.ndim(value) else value)
        byteswapped = st.just(np.asarray(value).astype(np.asarray(value).dtype.newbyteorder()))
        return st.one_of(arrays, noncontig, byteswapped, weird)
    if key == "targets":
        vals = st.integers(-3, C + 3)
        ints = st.lists(vals, max_size=12).map(lambda v: np.array(v, dtype=np.int64))
        shaped = st.tuples(st.integers(0, N + 1), st.integers(0, T + 3), vals).map(
            lambda a: np.full((a[0], a[1]), a[2]))
        floats = st.just(value).map(_as_float64)
        return st.one_of(ints, shaped, floats, st.just(np.array([[[1]]])), weird)
    if key in ("input_lengths", "target_lengths"):
        vals = st.integers(-5, T + 5) | st.sampled_from([2**31, -2**31 - 1, 2**63 - 1])
        lists = st.lists(vals, max_size=N + 2)
        arrays = lists.map(lambda v: np.array(v, dtype=np.int64))
        floats = st.lists(st.floats(allow_nan=True), max_size=N + 1).map(np.array)
        return st.one_of(lists, arrays, floats, vals, st.just(_as_uint8(value)), weird)
    if key == "blank":
        return st.one_of(st.integers(-3, C + 3), st.sampled_from([np.int64(0), np.uint8(1), 0.0]), weird)
    if key == "reduction":
        return st.one_of(st.sampled_from(["NONE", "avg", "", None, 0]), weird)
    if key in ("zero_infinity", "from_logits"):
        return st.one_of(st.sampled_from([2, -1, "yes", None, np.bool_(True), 1.0]), weird)
    if key == "num_threads":
        return st.one_of(st.sampled_from([0, -1, 10**6, 2**40, "2", 1.0, True]), weird)
    return weird


def _check_call(fn, args):
    try:
        out = fn(**args)
    except FASTCTC_ERRORS:
        return None
    except (ValueError, TypeError) as exc:  # allowed by the brief, but flagged by name
        raise AssertionError(f"{type(exc).__name__} that is not a fastctc error: {exc}") from exc
    return out


@settings(max_examples=int(os.environ.get("FASTCTC_HYPOTHESIS_EXAMPLES", "1000")), deadline=None,
          suppress_health_check=list(HealthCheck), derandomize=True)
@given(problems(), st.booleans())
def test_python_facade_fuzz(args, with_grad):
    fn = fastctc.ctc_loss_and_grad if with_grad else fastctc.ctc_loss
    out = _check_call(fn, args)
    if out is None:
        return
    loss, grad = out if with_grad else (out, None)
    acts = np.asarray(args["log_probs"])
    native = acts.dtype.newbyteorder("=")  # byte-swapped input gives native-order results
    assert isinstance(loss, np.ndarray) and loss.dtype == native
    if grad is not None:
        assert grad.shape == acts.shape and grad.dtype == native
        if np.isfinite(acts).all() and np.abs(acts).max(initial=0) < 1e6 and args["from_logits"] is True:
            assert np.isfinite(grad).all()
    if np.isfinite(acts).all() and args["reduction"] == "none":
        # Finite inputs: costs are finite or +inf, never NaN or -inf.
        assert not np.isnan(loss).any() and not np.isneginf(loss).any()


def test_regression_num_threads_beyond_c_int():
    # Found by test_python_facade_fuzz: num_threads = 2**40 escaped validation and the
    # compiled bridge raised OverflowError while converting it to a C int.
    lp = np.log(np.full((4, 1, 3), 1 / 3))
    with pytest.raises(fastctc.CTCValueError, match="num_threads"):
        fastctc.ctc_loss(lp, np.array([[1]]), [4], [1], num_threads=2**40)
    assert np.isfinite(fastctc.ctc_loss(lp, np.array([[1]]), [4], [1], num_threads=10**6))


@st.composite
def poisoned_problems(draw):
    """A valid batch with NaN / +-inf cells at any positions (read columns, unread
    columns, padding frames), any thread count."""
    T = draw(st.integers(1, 12))
    N = draw(st.integers(1, 4))
    C = draw(st.integers(2, 7))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    acts = rng.normal(size=(T, N, C)).astype(dtype) * 2
    for _ in range(draw(st.integers(0, 3))):
        t, n, c = (draw(st.integers(0, d - 1)) for d in (T, N, C))
        acts[t, n, c] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    il = rng.integers(0, T + 1, size=N)
    tl = rng.integers(0, T + 1, size=N)
    tg = rng.integers(1, C, size=(N, max(int(tl.max()), 1)))
    return dict(log_probs=acts, targets=tg, input_lengths=il, target_lengths=tl,
                from_logits=draw(st.booleans()), zero_infinity=draw(st.booleans()))


@settings(max_examples=int(os.environ.get("FASTCTC_HYPOTHESIS_EXAMPLES", "1000")) // 4, deadline=None,
          suppress_health_check=list(HealthCheck), derandomize=True)
@given(poisoned_problems())
def test_fuzz_non_finite_rule_and_thread_bits(args):
    """The non-finite rule per sequence, and the same bits for 1, 2 and 3 threads (with
    the split pass forced on for these small problems)."""
    from fastctc import _core
    saved = _core.SPLIT_MIN_CELLS
    _core.SPLIT_MIN_CELLS = 0
    try:
        runs = [fastctc.ctc_loss_and_grad(**args, reduction="none", num_threads=k) for k in (1, 2, 3)]
    finally:
        _core.SPLIT_MIN_CELLS = saved
    loss, grad = runs[0]
    for other_loss, other_grad in runs[1:]:
        assert other_loss.tobytes() == loss.tobytes() and other_grad.tobytes() == grad.tobytes()
    for n in range(loss.shape[0]):
        T_n = int(args["input_lengths"][n])
        rows = grad[:T_n, n]
        assert (grad[T_n:, n] == 0).all()
        if np.isnan(loss[n]):
            assert np.isnan(rows).all(), "NaN loss with a clean-looking gradient"
        else:
            assert np.isfinite(rows).all(), "a non-NaN loss with a non-finite gradient"
            if np.isinf(loss[n]):
                assert (rows == 0).all()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.sampled_from(["targets", "input_lengths", "target_lengths", "log_probs"]), st.integers(0, 40))
def test_fuzz_grad_out_aliasing_is_refused(which, shift):
    """grad_out placed over any input the engine reads is refused with a named error."""
    T, N, C, S = 6, 2, 4, 3
    pool = np.zeros(T * N * C + 64, np.float32)
    ints = pool.view(np.int32)
    g0 = shift % 16
    grad_out = pool[g0: g0 + T * N * C].reshape(T, N, C)
    args = {"log_probs": np.log(np.full((T, N, C), 0.25, np.float32)), "targets": np.ones((N, S), np.int32),
            "input_lengths": np.full(N, T, np.int32), "target_lengths": np.full(N, S, np.int32)}
    size = {"targets": N * S, "input_lengths": N, "target_lengths": N, "log_probs": T * N * C}[which]
    # anywhere that shares at least one element with grad_out
    start = g0 - size + 1 + shift % (T * N * C + size - 1)
    start = max(start, 0)
    view = {"targets": lambda: ints[start:start + N * S].reshape(N, S), "input_lengths": lambda: ints[start:start + N],
            "target_lengths": lambda: ints[start:start + N],
            "log_probs": lambda: pool[start:start + T * N * C].reshape(T, N, C)}[which]()
    view[...] = args[which]
    args[which] = view
    with pytest.raises(fastctc.CTCValueError, match="grad_out shares memory"):
        fastctc.ctc_loss_and_grad(**args, grad_out=grad_out)


def test_regression_size_one_view_with_negative_stride():
    # Found by test_python_facade_fuzz: a (1, 1, 1) view reversed along the class axis has
    # strides (4, 4, -4) yet counts as C-contiguous, so it passed through uncopied and the
    # compiled bridge refused it with a bare ValueError.
    a = np.array([[[0.25]]], dtype=np.float32)[..., ::-1]
    assert a.strides[-1] < 0
    np.testing.assert_array_equal(fastctc.ctc_loss(a, np.zeros(0, np.int64), [1], [0], reduction="none"), [-0.25])
