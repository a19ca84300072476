"""Reliability: fork after OpenMP, buffers that overlap inputs, the one non-finite rule,
the same bits for any thread count or concurrency, thread counts the system cannot give,
infeasible targets that must not allocate, C API ranges, peer-compatible exception
classes in alignment, and the engine's forward-variable mode on infeasible targets.

Each test is a regression test for a defect that was observed (crash, hang, or silently
wrong numbers); the subprocess tests run in a fresh interpreter with a hard timeout, so a
hang is a failure, not a stuck suite.
"""
import os
import subprocess
import sys
import textwrap
import threading

import fastctc
import numpy as np
import pytest
from fastctc import _core
from fastctc._engine import run
from fastctc._validate import check_ctc_inputs
from reference import log_softmax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _problem(T, N, C, L, dtype=np.float32, seed=0, logits=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((T, N, C)) * 3
    if not logits:
        x = log_softmax(x)
    targets = rng.integers(1, C, (N, L))
    input_lengths = rng.integers(max(1, T // 2), T + 1, N)
    input_lengths[0] = T
    target_lengths = rng.integers(1, L + 1, N)
    return x.astype(dtype), targets, input_lengths, target_lengths


@pytest.fixture(autouse=True)
def split_small_problems(monkeypatch):
    """The engine splits one sequence over two threads only when its trellis is large
    enough to repay it (_core.SPLIT_MIN_CELLS); these tests use small problems, so they
    lower the threshold to run the split pass too (it must give the same bits)."""
    monkeypatch.setattr(_core, "SPLIT_MIN_CELLS", 0)


def _run_python(code, timeout=90, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.join(ROOT, "pyx"), env.get("PYTHONPATH")] if p)
    env.update(env_extra or {})
    # own session: a hang (the defect these tests guard against) must not leave forked
    # children behind when the timeout kills the run
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, -9, out, err + f"\n(timed out after {timeout} s: a hang)")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# ---- 1. fork after OpenMP ----

_FORK_PRELUDE = """
import os, sys, numpy as np, multiprocessing as mp
import fastctc
rng = np.random.default_rng(0)
x = np.log(rng.dirichlet(np.ones(20), size=(60, 8))).astype(np.float32)
tg = rng.integers(1, 20, (8, 10)); il = [60] * 8; tl = [10] * 8
def job(_=None):
    loss, grad = fastctc.ctc_loss_and_grad(x, tg, il, tl)   # default thread count
    return float(loss), float(np.abs(grad).sum())
"""


@pytest.mark.parametrize("parent", ["fastctc", "torch"])
def test_forked_child_after_openmp_parent_completes(parent):
    if parent == "torch":
        pytest.importorskip("torch")
        warm = ("import torch; torch.set_num_threads(2); a = torch.randn(600, 600); (a @ a).sum(); "
                "torch.randn(10**6).exp().sum()")
    else:
        warm = "ref = job()"
    code = _FORK_PRELUDE + warm + """
ref = job()
pid = os.fork()
if pid == 0:
    ok = job() == ref and fastctc._core.in_forked_child()
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child-exit", os.WEXITSTATUS(status))
"""
    res = _run_python(code, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "child-exit 0" in res.stdout, res.stdout + res.stderr


def test_pool_fork_map_after_openmp_parent():
    code = _FORK_PRELUDE + """
ref = job()
with mp.get_context("fork").Pool(2) as pool:
    got = pool.map(job, range(6))
assert got == [ref] * 6, (got, ref)
print("ok")
"""
    res = _run_python(code, timeout=90)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr


def test_torch_dataloader_workers_call_fastctc():
    pytest.importorskip("torch")
    code = _FORK_PRELUDE + """
import torch
class Items(torch.utils.data.Dataset):
    def __len__(self): return 6
    def __getitem__(self, i): return torch.tensor(job()[0])
ref = job()
loader = torch.utils.data.DataLoader(Items(), batch_size=2, num_workers=2, multiprocessing_context="fork")
got = torch.cat(list(loader)).tolist()
assert all(abs(v - ref[0]) < 1e-3 for v in got), (got, ref)
print("ok")
"""
    res = _run_python(code, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr


# ---- 2. output buffers that overlap inputs ----

@pytest.mark.parametrize("which", ["targets", "input_lengths", "target_lengths"])
def test_grad_out_overlapping_an_input_is_refused(which):
    x = np.log(np.full((10, 2, 5), 0.2, np.float32))
    buf = np.zeros(100, np.float32)
    ints = buf.view(np.int32)
    ints[:2] = 10 if which == "input_lengths" else 3
    ints[:6] = 1 if which == "targets" else ints[:6]
    args = {"targets": np.ones((2, 3), np.int32), "input_lengths": np.array([10, 10], np.int32),
            "target_lengths": np.array([3, 3], np.int32)}
    args[which] = ints[:6].reshape(2, 3) if which == "targets" else ints[:2]
    with pytest.raises(fastctc.CTCValueError, match=f"grad_out shares memory with {which}"):
        fastctc.ctc_loss_and_grad(x, args["targets"], args["input_lengths"], args["target_lengths"],
                                  grad_out=buf.reshape(10, 2, 5))


# ---- 3. one rule for non-finite inputs ----

def _in_band(t, c, T, labels, blank=0):
    """Whether class c is the emission of a state of frame t's band [S - 2(T - t), 2t + 2)."""
    ext = [labels[s // 2] if s % 2 else blank for s in range(2 * len(labels) + 1)]
    S = len(ext)
    return any(ext[s] == c for s in range(max(0, S - 2 * (T - t)), min(S, 2 * t + 2)))


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_rule_every_cell(simd_level, from_logits, value):
    """Every cell of a sequence with targets [1, 2, 2, 3] (a repeat: cells inside the band
    that no alignment uses), cells outside the band and columns it does not read, on one
    thread and on the split pass: NaN/+inf in a read cell -> NaN loss and NaN gradient
    rows; elsewhere, and -inf anywhere, a clean result (finite, or +inf with zero
    gradient).  The rule's cells: the band's emissions (log-probs), every column (logits)."""
    assert _in_band(3, 3, 10, [1, 2, 2, 3]) and not _in_band(0, 3, 10, [1, 2, 2, 3])
    T, C = 10, 6
    rng = np.random.default_rng(3)
    base = rng.standard_normal((T, 1, C)).astype(np.float32)
    if not from_logits:
        base = log_softmax(base).astype(np.float32)
    targets, il, tl = np.array([[1, 2, 2, 3]]), [T], [4]
    for t in range(T):
        for c in range(C):
            x = base.copy()
            x[t, 0, c] = value
            read = from_logits or _in_band(t, c, T, [1, 2, 2, 3])
            loss_only = fastctc.ctc_loss(x, targets, il, tl, reduction="sum", from_logits=from_logits)
            for threads in (1, 2):
                loss, grad = fastctc.ctc_loss_and_grad(x, targets, il, tl, reduction="sum",
                                                       from_logits=from_logits, num_threads=threads)
                where = f"cell ({t}, {c}) = {value}, {threads} thread(s)"
                if read and value != -np.inf:
                    assert np.isnan(loss) and np.isnan(loss_only), where
                    assert np.isnan(grad).all(), where
                else:
                    assert not np.isnan(loss) and not np.isnan(loss_only), where
                    assert np.isfinite(grad).all(), where
                    if np.isinf(loss):
                        assert (grad == 0).all(), where


def test_non_finite_rule_zero_infinity_padding_and_batch():
    x, tg, il, tl = _problem(20, 3, 7, 4, np.float64)
    il[:] = [20, 12, 20]
    x[15, 1, :] = np.nan            # past sequence 1's input length: not read
    x[3, 2, tg[2, 0]] = np.inf      # a label of sequence 2 at a valid frame
    loss, grad = fastctc.ctc_loss_and_grad(x, tg, il, tl, reduction="none", zero_infinity=True)
    assert np.isfinite(loss[:2]).all() and np.isnan(loss[2])
    assert np.isfinite(grad[:, :2]).all()
    assert np.isnan(grad[:20, 2]).all()


def test_non_finite_rule_ctclossv2_and_posteriors():
    x, tg, il, tl = _problem(12, 2, 6, 3, np.float64)
    x[4, 1, 0] = np.nan
    nll, _ = fastctc.CTCLossV2(blank=0, reduction="none")(x, tg, il, tl)
    assert np.isfinite(nll[0]) and np.isnan(nll[1])
    post = fastctc.ctc_posteriors(x, tg, il, tl)
    assert np.isfinite(post[:, 0]).all()
    assert np.isnan(post[: il[1], 1]).all()


def test_non_finite_rule_infeasible_targets():
    """An infeasible target reads no cell: +inf (0 with zero_infinity), zero gradient,
    whatever the values; a feasible one next to it in the batch still sees its NaN."""
    x = np.log(np.full((3, 2, 5), 0.2))
    x[1, :, 2] = np.nan
    for from_logits in (False, True):
        loss, grad = fastctc.ctc_loss_and_grad(x, [[2, 2, 2, 2], [2, 1, 0, 0]], [3, 3], [4, 2], reduction="none",
                                               from_logits=from_logits)
        assert np.isposinf(loss[0]) and (grad[:, 0] == 0).all()
        assert np.isnan(loss[1]) and np.isnan(grad[:, 1]).all()
        assert fastctc.ctc_loss(x[:, :1], [[2, 2, 2, 2]], [3], [4], reduction="sum", zero_infinity=True,
                                from_logits=from_logits) == 0


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_in_nan_out(from_logits, bad):
    """An undefined input (NaN, +inf) gives a NaN loss, as PyTorch does, and zero_infinity
    must not hide it by turning it into 0 (regression: it used to come out +inf -> 0)."""
    lp = np.log(np.full((5, 2, 4), 0.25))
    lp[2, 0, :] = bad
    for zero_infinity in (False, True):
        loss, grad = fastctc.ctc_loss_and_grad(lp, [[1, 2], [1, 2]], [5, 5], [2, 2], reduction="none",
                                               zero_infinity=zero_infinity, from_logits=from_logits)
        assert np.isnan(loss[0]) and np.isfinite(loss[1])
        assert np.isnan(grad[:, 0]).any() and np.isfinite(grad[:, 1]).all()
        assert np.isnan(fastctc.ctc_loss(lp, [[1, 2], [1, 2]], [5, 5], [2, 2], zero_infinity=zero_infinity,
                                         from_logits=from_logits))
    # past the input length the bad frame is not read
    assert np.isfinite(fastctc.ctc_loss(lp, [[1, 2], [1, 2]], [2, 5], [2, 2], from_logits=from_logits))


def test_logits_frame_without_finite_score_is_nan():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.zeros((4, 1, 3))
    x[1, 0, :] = -np.inf  # log_softmax of this frame is undefined (PyTorch: NaN)
    want = F.ctc_loss(torch.tensor(x).log_softmax(-1), torch.tensor([[1]]), [4], [1], reduction="none")
    assert torch.isnan(want).all()
    assert np.isnan(fastctc.ctc_loss(x, [[1]], [4], [1], reduction="none", from_logits=True)).all()


# ---- 4. the same bits for any thread count and concurrency ----

@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(40, 1, 12, 8), (64, 2, 30, 20), (33, 3, 9, 10), (100, 1, 80, 30),
                                   (300, 1, 40, 60)])
def test_bits_identical_for_any_thread_count(simd_level, from_logits, dtype, shape):
    x, tg, il, tl = _problem(*shape, dtype=dtype, seed=sum(shape), logits=from_logits)
    ref_loss, ref_grad = fastctc.ctc_loss_and_grad(x, tg, il, tl, reduction="sum", from_logits=from_logits,
                                                   num_threads=1)
    for threads in (2, 3, None):
        loss, grad = fastctc.ctc_loss_and_grad(x, tg, il, tl, reduction="sum", from_logits=from_logits,
                                               num_threads=threads)
        assert loss.tobytes() == ref_loss.tobytes(), threads
        assert grad.tobytes() == ref_grad.tobytes(), threads
    # the loss alone, from the two-row forward pass, is the same number
    assert fastctc.ctc_loss(x, tg, il, tl, reduction="sum", from_logits=from_logits).tobytes() == ref_loss.tobytes()


def test_bits_identical_under_concurrent_calls():
    problems = [_problem(80, n, 20, 12, np.float32, seed=n, logits=True) for n in (1, 2, 5)]
    refs = [fastctc.ctc_loss_and_grad(*p, reduction="none", from_logits=True, num_threads=1) for p in problems]
    errors = []

    def worker(i):
        for _ in range(15):
            p = problems[i % len(problems)]
            loss, grad = fastctc.ctc_loss_and_grad(*p, reduction="none", from_logits=True)
            ref = refs[i % len(problems)]
            if loss.tobytes() != ref[0].tobytes() or grad.tobytes() != ref[1].tobytes():
                errors.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


# ---- 5. thread counts the system cannot give ----

def test_team_is_capped_at_usable_processors():
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= _core.team_size(1024) <= max(usable, 1)
    assert _core.team_size(1) == 1


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform != "linux", reason="RLIMIT_AS probe is Linux-only")
def test_address_space_limit_does_not_end_the_process():
    code = """
import resource, numpy as np, fastctc
rng = np.random.default_rng(0)
x = np.log(rng.dirichlet(np.ones(10), size=(40, 1))).astype(np.float32)
ref = fastctc.ctc_loss_and_grad(x, [[1, 2, 3]], [40], [3], num_threads=1)
vm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize")][0] * 1024
# room for the call's arrays, not for one more 8 MiB thread stack
resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))
resource.setrlimit(resource.RLIMIT_AS, (vm + (4 << 20), resource.RLIM_INFINITY))
loss, grad = fastctc.ctc_loss_and_grad(x, [[1, 2, 3]], [40], [3], num_threads=1024)
assert loss.tobytes() == ref[0].tobytes() and grad.tobytes() == ref[1].tobytes()
print("ok")
"""
    res = _run_python(code, timeout=60)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout + res.stderr
    assert "Thread creation failed" not in res.stderr


# ---- 6. infeasible targets must not allocate for the impossible ----

@pytest.mark.parametrize("from_logits", [False, True])
def test_huge_infeasible_target_returns_inf_without_scratch(from_logits):
    x = np.log(np.full((2000, 1, 5), 0.2, np.float32))
    targets = np.ones(2_000_000, np.int64)
    loss, grad = fastctc.ctc_loss_and_grad(x, targets, [2000], [2_000_000], reduction="none",
                                           from_logits=from_logits)
    assert np.isposinf(loss).all() and (grad == 0).all()
    assert fastctc.ctc_loss(x, targets, [2000], [2_000_000], reduction="none", zero_infinity=True)[0] == 0


# ---- 8. C API ranges: tests/c/test_capi.c (test_simd_level_ranges, test_align_overlaps),
# run by tests/test_capi.py ----


# ---- 9. peer-compatible exception classes in alignment ----

@pytest.mark.parametrize("blank", [-1, 5, 100])
def test_forced_align_blank_out_of_range_is_a_runtime_error(blank):
    lp = np.log(np.full((1, 6, 5), 0.2, np.float32))
    with pytest.raises(RuntimeError, match="blank"):
        fastctc.forced_align(lp, np.array([[1, 2]]), blank=blank)
    with pytest.raises(ValueError):   # still a ValueError for code written against fastctc
        fastctc.forced_align(lp, np.array([[1, 2]]), blank=blank)


def test_forced_align_exception_classes_match_torchaudio():
    lp = np.log(np.full((1, 6, 5), 0.2, np.float32))
    tg = np.array([[1, 2]])
    with pytest.raises(RuntimeError):                      # rank (torchaudio: C++ check)
        fastctc.forced_align(lp[0], tg)
    with pytest.raises(RuntimeError):                      # targets dtype
        fastctc.forced_align(lp, tg.astype(np.float32))
    with pytest.raises(RuntimeError):                      # input length beyond T
        fastctc.forced_align(lp, tg, input_lengths=[7])
    with pytest.raises(RuntimeError):                      # target too long for the input
        fastctc.forced_align(lp, np.array([[1, 1, 1, 1]]))
    with pytest.raises(ValueError) as info:                # a target equal to the blank: ValueError
        fastctc.forced_align(lp, np.array([[0, 2]]))
    assert not isinstance(info.value, RuntimeError)
    with pytest.raises(ValueError) as info:                # a target >= C: ValueError
        fastctc.forced_align(lp, np.array([[1, 5]]))
    assert not isinstance(info.value, RuntimeError)


# ---- 10. the forward-variable mode on infeasible targets ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_want_alpha_costs_match_loss_mode_on_infeasible_targets(dtype):
    rng = np.random.default_rng(5)
    T, N, C, L = 6, 8, 7, 9
    x = log_softmax(rng.standard_normal((T, N, C))).astype(dtype)
    tg = rng.integers(1, C, (N, L))
    il = rng.integers(1, T + 1, N)
    tl = rng.integers(0, L + 1, N)
    batch, blank = check_ctc_inputs(x, tg, il, tl, 0)
    costs, _, alpha = run(batch, blank, False, want_alpha=True, alpha_cols=2 * L + 1)
    plain, _, _ = run(batch, blank, False)
    repeats = [(tg[n, 1:tl[n]] == tg[n, : max(tl[n] - 1, 0)]).sum() for n in range(N)]
    infeasible = np.array([il[n] < tl[n] + repeats[n] for n in range(N)])
    assert infeasible.sum() >= 3 and (~infeasible).sum() >= 1   # both kinds are exercised
    # infeasible: +inf in both modes (not values read from outside the computed band)
    assert np.isposinf(costs[infeasible]).all() and np.isposinf(plain[infeasible]).all()
    # feasible: the same value (the forward-variable mode computes the whole trellis, so rounding may differ)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(costs[~infeasible], plain[~infeasible], rtol=rtol)
    assert not np.isnan(alpha).any()


def test_split_threshold_keeps_tiny_problems_on_one_thread(monkeypatch):
    """Below SPLIT_MIN_CELLS a lone sequence runs on one thread (a parallel region costs
    more than it saves there); above it, on two; the bits are the same either way."""
    monkeypatch.setattr(_core, "SPLIT_MIN_CELLS", _core.SPLIT_MIN_CELLS)
    x, tg, il, tl = _problem(10, 1, 5, 2, np.float32, seed=1)
    ref = fastctc.ctc_loss_and_grad(x, tg, il, tl, num_threads=1)
    for threshold in (0, 10**9):
        monkeypatch.setattr(_core, "SPLIT_MIN_CELLS", threshold)
        got = fastctc.ctc_loss_and_grad(x, tg, il, tl, num_threads=2)
        assert got[0].tobytes() == ref[0].tobytes() and got[1].tobytes() == ref[1].tobytes()
