"""cuda/ctc.cu run on the host at its real launch geometry (tests/gpu_emu.py), against the
CPU engine and a float64 NumPy reference: the GPU kernels' arithmetic, warp and block
exchanges, workspace plan, NaN rule and determinism, checked on every machine (no GPU).

Each launch runs one host thread per CUDA thread (32-lane warps, blocks of the size the
launcher picks), so the cases are small; the slow test reruns a set under ThreadSanitizer.
"""
import os
import subprocess
import sys

import fastctc
import gpu_emu
import numpy as np
import pytest
from fastctc import _cuda_launch as L
from reference import random_case, random_log_probs


def _cpu(acts, tg, il, tl, blank, from_logits, weights=None):
    """The CPU engine in its plain loss + gradient mode (never its log_alpha mode)."""
    batch, blank = fastctc._validate.check_ctc_inputs(acts, tg, il, tl, blank)
    c, g, _ = fastctc._engine.run(batch, blank, from_logits, want_grad=True, grad_weights=weights)
    return c, g


def ref_log_alpha(acts, tg, il, tl, blank, from_logits, cols):
    """float64 NumPy forward variables (N, T, cols): -inf past each sequence's lengths."""
    x = acts.astype(np.float64)
    if from_logits:
        m = x.max(-1, keepdims=True)
        x = x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))
    T, N, _ = x.shape
    out = np.full((N, T, cols), -np.inf)
    for n in range(N):
        lab = (tg[n] if tg.ndim == 2 else tg)[: tl[n]]
        ext = [blank]
        for v in lab:
            ext += [int(v), blank]
        S = len(ext)
        a = np.full(S, -np.inf)
        for t in range(il[n]):
            e = x[t, n, ext]
            if t == 0:
                new = np.full(S, -np.inf)
                new[:2] = e[:2]
            else:
                p1 = np.concatenate([[-np.inf], a[:-1]])
                p2 = np.concatenate([[-np.inf, -np.inf], a[:-2]])
                ok = np.array([s % 2 == 1 and s >= 3 and ext[s] != ext[s - 2] for s in range(S)])
                p2 = np.where(ok, p2, -np.inf)
                new = np.logaddexp(np.logaddexp(a, p1), p2) + e
            a = new
            k = min(S, cols)
            out[n, t, :k] = a[:k]
    return out


# ---------------------------------------------------------------- parity

CASES = [  # T, N, C, S, blank, repeats: warp kernels with K = 2, 4, 8 and the block kernel
    (12, 5, 5, 3, 0, False), (9, 3, 4, 4, 2, True), (20, 6, 7, 9, 1, True), (1, 2, 3, 1, 0, False),
    (6, 3, 2, 5, 0, True), (15, 2, 30, 6, 29, False), (60, 9, 12, 40, 0, True), (30, 16, 2, 14, 1, False),
]


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_emulated_kernels_match_cpu_engine(emu, rng, from_logits, dtype):
    rtol, atol = (1e-10, 1e-10) if dtype == np.float64 else (2e-4, 2e-5)
    for T, N, C, S, blank, rep in CASES:
        acts, tg, il, tl = random_case(rng, T, N, C, S, blank, dtype, rep)
        w = rng.uniform(0.5, 2.0, size=N)
        costs, grad, _ = gpu_emu.run(emu, acts, tg, il.astype(np.int32), tl, blank=blank, from_logits=from_logits,
                                     want_grad=True, grad_weights=w)
        ec, eg = _cpu(acts, tg, il, tl, blank, from_logits, weights=w)
        np.testing.assert_allclose(costs, ec, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
        np.testing.assert_allclose(grad, eg, rtol=rtol, atol=atol, err_msg=str((T, N, C, S)))
        # loss only, with log_alpha, against the float64 reference (every sequence,
        # infeasible ones included: their reachable states have real values)
        c2, _, la = gpu_emu.run(emu, acts, tg, il, tl.astype(np.int32), blank=blank, from_logits=from_logits,
                                want_grad=False, want_alpha=True)
        np.testing.assert_array_equal(c2, costs)
        ref = ref_log_alpha(acts, tg, il, tl, blank, from_logits, 2 * S + 1)
        assert np.array_equal(np.isneginf(la), np.isneginf(ref))
        fin = np.isfinite(ref)
        np.testing.assert_allclose(la[fin], ref[fin], rtol=rtol * 10, atol=atol * 10)


def test_emulated_block_kernel_long_targets(emu, rng):
    """Extended targets beyond 256 states: the block kernel (several warps, the edge
    exchange through shared memory), beside warp-kernel sequences of the same batch."""
    T, N, C, S = 150, 3, 9, 140
    acts, tg, il, tl = random_case(rng, T, N, C, S, 0, np.float64)
    tg = 1 + np.cumsum(rng.integers(1, C - 1, size=(N, S)), axis=1) % (C - 1)  # no adjacent repeats: feasible
    il[:] = T
    tl[:] = [S, 20, 130]
    launches = L.plan(T, N, C, S, want_grad=True, from_logits=True, acc="float64")["launches"]
    assert [x[0] for x in launches] == ["w8", "b4"] and launches[1][2] == 96
    costs, grad, _ = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True)
    ec, eg = _cpu(acts, tg, il, tl, 0, True)
    assert np.isfinite(ec).all()
    np.testing.assert_allclose(costs, ec, rtol=1e-10)
    np.testing.assert_allclose(grad, eg, rtol=1e-9, atol=1e-11)


def test_emulated_infeasible_empty_concatenated_and_blank_labels(emu, rng):
    acts = random_log_probs(rng, 4, 5, 4)
    tg = np.array([[1, 1, 1], [1, 2, 3], [2, 3, 0], [0, 0, 0], [2, 0, 0]])
    il = np.array([4, 2, 0, 0, 4])
    tl = np.array([3, 3, 2, 0, 3])  # row 4 has labels equal to blank: accepted, as on the CPU
    costs, grad, _ = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=False, want_grad=True)
    ec, eg = _cpu(acts, tg, il, tl, 0, False)
    assert np.isposinf(costs[:3]).all() and costs[3] == 0
    np.testing.assert_allclose(costs, ec, rtol=1e-12)
    np.testing.assert_array_equal(grad[:, :3], 0)
    np.testing.assert_allclose(grad, eg, atol=1e-12)
    # concatenated targets give the same bits as padded ones, with host or bound lengths
    acts, tg, il, tl = random_case(rng, 10, 3, 6, 4)
    flat = np.concatenate([tg[i, :tl[i]] for i in range(3)]).astype(np.int64)
    c1, g1, _ = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True)
    c2, g2, _ = gpu_emu.run(emu, acts, flat, il, tl, blank=0, from_logits=True, want_grad=True)
    c3, g3, _ = gpu_emu.run(emu, acts, flat, il, tl, blank=0, from_logits=True, want_grad=True,
                            max_target_length=flat.size)
    for c, g in ((c2, g2), (c3, g3)):
        np.testing.assert_array_equal(c, c1)
        np.testing.assert_array_equal(g, g1)


def test_emulated_targets_longer_than_input(emu, rng):
    """L > T: the rows hold only 2 T + 1 states (Lcap = min(S, T)), the cost is +inf, the
    gradient 0, and log_alpha still matches the reference on every reachable state."""
    T, N, C, S = 5, 3, 6, 9
    acts, tg, il, tl = random_case(rng, T, N, C, S, full=True)
    tl[1] = 4
    assert L.plan(T, N, C, S, want_grad=True, from_logits=False, acc="float64")["W"] == 12  # 2*5+1 -> 12
    costs, grad, _ = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=False, want_grad=True)
    ec, eg = _cpu(acts, tg, il, tl, 0, False)
    np.testing.assert_allclose(costs, ec, rtol=1e-12)
    np.testing.assert_allclose(grad, eg, atol=1e-12)
    _, _, la = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=False, want_grad=False, want_alpha=True)
    ref = ref_log_alpha(acts, tg, il, tl, 0, False, 2 * S + 1)
    assert np.array_equal(np.isneginf(la), np.isneginf(ref))
    np.testing.assert_allclose(la[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-12)


def test_workspace_bound_for_concatenated_device_lengths():
    """The memory blow-up of issue 16: N = 256, T = 500, L = 100 with concatenated targets
    whose lengths live on the device used to size every row by the total label count
    (~26 GB); rows are now bounded by min(total, T) states."""
    N, T, C, L_ = 256, 500, 40, 100
    p = L.plan(T, N, C, N * L_, want_grad=True, from_logits=True, acc="float32")
    assert p["Lcap"] == T and p["W"] <= 2 * T + 5
    assert p["total"] < 1.1e9
    tight = L.plan(T, N, C, L_, want_grad=True, from_logits=True, acc="float32")  # max_target_length given
    assert tight["W"] <= 2 * L_ + 5 and tight["total"] < 0.25e9


def test_emulated_bad_device_values_give_nan_not_a_crash(emu, rng):
    acts = random_log_probs(rng, 5, 4, 3)
    tg = np.array([[1, 2], [1, 7], [1, 2], [1, 2]])   # 7 >= C
    il = np.array([5, 5, 9, 5])                        # 9 > T
    tl = np.array([2, 2, 2, -1])                       # -1 < 0
    costs, grad, la = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=False, want_grad=True,
                                  want_alpha=True)
    assert np.isfinite(costs[0]) and np.isnan(costs[1:]).all()
    np.testing.assert_array_equal(grad[:, 1:], 0)
    assert np.isneginf(la[1:]).all()


def test_emulated_concatenated_lengths_past_the_labels_give_nan(emu, rng):
    """Device lengths that do not fit the concatenated targets: the sequences whose labels
    cannot be located get a NaN cost and zero gradient, and nothing is read outside the
    targets (a view inside a larger array whose next values are valid labels)."""
    acts = random_log_probs(rng, 6, 3, 4)
    big = np.array([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3], np.int64)
    flat = big[4:7]                                   # 3 labels: [2, 3, 1]
    costs, grad, _ = gpu_emu.run(emu, acts, flat, np.array([6, 6, 6]), np.array([2, 1, 1]), blank=0,
                                 from_logits=False, want_grad=True, max_target_length=3)
    ec, eg = _cpu(acts[:, :2], np.array([[2, 3], [1, 0]]), np.array([6, 6]), np.array([2, 1]), 0, False)
    np.testing.assert_allclose(costs[:2], ec, rtol=1e-12)
    assert np.isnan(costs[2])
    np.testing.assert_array_equal(grad[:, 2], 0)
    np.testing.assert_allclose(grad[:, :2], eg, atol=1e-12)
    costs, grad, _ = gpu_emu.run(emu, acts, big[6:9], np.array([6, 6, 6]), np.array([1, -4, 2]), blank=0,
                                 from_logits=False, want_grad=True, max_target_length=3)
    assert np.isfinite(costs[0]) and np.isnan(costs[1:]).all()
    np.testing.assert_array_equal(grad[:, 1:], 0)


def nonfinite_rule(acts, tg, il, tl, blank, from_logits):
    """The non-finite rule of include/fastctc/fastctc.h, in NumPy: which sequences are NaN.
    A feasible sequence (T_n >= L + adjacent repeats) with a NaN or +inf in a cell it reads
    at a frame t < T_n inside the band S - 2(T_n - t) <= s < 2t + 2 (logits: any class of
    the frame, or a frame without a finite score); an infeasible one never."""
    out = np.zeros(len(il), bool)
    for n in range(len(il)):
        lab = [int(v) for v in tg[n, :tl[n]]]
        rep = sum(lab[i] == lab[i - 1] for i in range(1, len(lab)))
        Tn = int(il[n])
        if Tn < len(lab) + rep:
            continue
        ext = [blank]
        for v in lab:
            ext += [v, blank]
        S = len(ext)
        for t in range(Tn):
            frame = acts[t, n]
            if from_logits:
                bad = not np.all(frame < np.inf) or np.all(frame == -np.inf)
            else:
                bad = any(not frame[ext[s]] < np.inf for s in range(max(0, S - 2 * (Tn - t)), min(S, 2 * t + 2)))
            if bad:
                out[n] = True
                break
    return out


@pytest.mark.parametrize("from_logits", [False, True])
def test_emulated_nonfinite_rule(emu, rng, from_logits):
    """NaN / +inf scores: the CPU engine's non-finite rule (NaN cost, NaN rows [0, T_n)),
    +inf and zero rows for infeasible targets whatever their scores, -inf legal, values no
    complete path reads ignored; unaffected sequences equal the CPU engine's, and a NaN
    sequence stays NaN with zero_infinity."""
    T, N, C = 6, 8, 5
    acts = random_log_probs(rng, T, N, C)
    clean = acts.copy()
    tg = np.array([[1, 2]] * N)
    il = np.array([6, 6, 6, 2, 6, 6, 6, 4])
    tl = np.array([2] * N)
    tg[3] = [1, 1]                  # infeasible in 2 frames
    acts[1, 0, 1] = np.nan          # read column in the band
    acts[2, 1, 0] = np.inf          # blank column in the band
    acts[1, 2, 4] = np.nan          # a column the sequence does not read
    acts[0, 3, 4] = np.nan          # infeasible sequence: +inf whatever its scores
    acts[5, 4, 3] = -np.inf         # -inf is legal
    acts[0, 5, 2] = np.nan          # label 2 (state 3) at frame 0: no path is there yet
    acts[5, 6, 1] = np.inf          # label 1 (state 1) at the last frame: no path is left there
    acts[5, 7, 1] = np.nan          # past the input length (4)
    want = nonfinite_rule(acts, tg, il, tl, 0, from_logits)
    costs, grad, _ = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=from_logits, want_grad=True)
    assert np.array_equal(np.isnan(costs), want), (costs, want)
    if from_logits:
        assert want.tolist() == [True, True, True, False, False, True, True, False]
    else:
        assert want.tolist() == [True, True, False, False, False, False, False, False]
    for n in np.flatnonzero(want):
        assert np.isnan(grad[: il[n], n]).all() and (grad[il[n]:, n] == 0).all()
    assert np.isposinf(costs[3]) and (grad[:, 3] == 0).all()
    ec, eg = _cpu(np.where(np.isfinite(acts) | np.isneginf(acts), acts, clean), tg, il, tl, 0, from_logits)
    ok = ~want & (np.arange(N) != 3)
    # -inf stays in the comparison input; values no path reads were replaced, which
    # changes nothing in log-probability mode
    if not from_logits:
        np.testing.assert_allclose(costs[ok], ec[ok], rtol=1e-10)
        np.testing.assert_allclose(grad[:, ok], eg[:, ok], atol=1e-10)
    from fastctc import _reduction
    torch = pytest.importorskip("torch")
    z = _reduction.reduce_losses(torch.from_numpy(costs), tl, "none", True).numpy()
    assert np.array_equal(np.isnan(z), want) and z[3] == 0


def test_emulated_all_minus_inf_logits_frame_is_undefined(emu, rng):
    acts = random_log_probs(rng, 5, 2, 4)
    acts[2, 0, :] = -np.inf
    costs, grad, _ = gpu_emu.run(emu, acts, np.array([[1, 2]] * 2), np.array([5, 5]), np.array([2, 2]), blank=0,
                                 from_logits=True, want_grad=True)
    loss, _ = fastctc.ctc_loss_and_grad(acts, np.array([[1, 2]] * 2), [5, 5], [2, 2], reduction="none",
                                        from_logits=True)
    assert np.isnan(costs[0]) and np.isnan(loss[0]) and np.isnan(grad[:, 0]).all()
    np.testing.assert_allclose(costs[1], loss[1], rtol=1e-12)


# ---------------------------------------------------------------- determinism

def test_emulated_bits_do_not_depend_on_geometry_or_batch(emu, rng):
    """Bit-identical whatever the launch: every sequence through the block kernels (K = 4
    and K = 16 states a thread) instead of the warp kernels, a sequence alone instead of in
    its batch, garbage in the workspace."""
    acts, tg, il, tl = random_case(rng, 24, 7, 9, 10, 0, np.float32, repeats=True)
    w = rng.uniform(0.5, 2.0, size=7)
    ref = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True, grad_weights=w)
    runs = [gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True, grad_weights=w,
                        force_block=True),
            gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True, grad_weights=w,
                        force_block=16),
            gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True, grad_weights=w,
                        garbage=0xFF)]
    for c, g, _ in runs:
        assert c.tobytes() == ref[0].tobytes() and g.tobytes() == ref[1].tobytes()
    for n in (0, 3, 6):  # alone, padded to its own length only
        one = np.ascontiguousarray(acts[:, n:n + 1])
        c, g, _ = gpu_emu.run(emu, one, tg[n:n + 1, :max(tl[n], 1)], il[n:n + 1], tl[n:n + 1], blank=0,
                              from_logits=True, want_grad=True, grad_weights=w[n:n + 1])
        assert c.tobytes() == ref[0][n:n + 1].tobytes()
        assert g.tobytes() == np.ascontiguousarray(ref[1][:, n:n + 1]).tobytes()


def test_emulated_mean_weights(emu, rng):
    acts, tg, il, tl = random_case(rng, 14, 3, 5, 4, 0, np.float32)
    c, g, _ = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True, mean=True)
    _, eg = _cpu(acts, tg, il, tl, 0, True, weights=1.0 / (np.maximum(tl, 1) * 3))
    np.testing.assert_allclose(g, eg, rtol=2e-4, atol=2e-6)
    # one scalar weight for every sequence (reduction 'sum' / 'mean' upstream gradients)
    _, g2, _ = gpu_emu.run(emu, acts, tg, il, tl, blank=0, from_logits=True, want_grad=True, mean=True,
                           grad_weights=np.array([2.0]))
    np.testing.assert_allclose(g2, 2 * g, rtol=1e-6)


def _to_half_bits(torch, x, kind):
    half = torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, kind))
    return half.view(torch.int16).numpy().view(np.uint16).copy(), half.to(torch.float64).numpy()


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_emulated_half_inputs(emu, rng, kind):
    """float16/bfloat16 kernels == the float32 kernels on the same (rounded) values, bit for
    bit (gradient rounded once to the input type), and close to the CPU engine."""
    torch = pytest.importorskip("torch")
    for T, N, C, S in [(10, 3, 8, 3), (16, 6, 7, 5)]:
        acts, tg, il, tl = random_case(rng, T, N, C, S, 0, np.float32, repeats=True)
        bits, rounded = _to_half_bits(torch, acts, kind)
        for from_logits in (True, False):
            c32, g32, _ = gpu_emu.run(emu, rounded.astype(np.float32), tg, il, tl, blank=0, from_logits=from_logits,
                                      want_grad=True)
            costs, grad, _ = gpu_emu.run(emu, bits, tg, il, tl, blank=0, from_logits=from_logits, want_grad=True,
                                         kind=kind)
            assert costs.dtype == np.float32
            np.testing.assert_array_equal(costs, c32)
            np.testing.assert_array_equal(grad, _to_half_bits(torch, g32, kind)[0])
            ec, eg = _cpu(rounded, tg, il, tl, 0, from_logits)
            np.testing.assert_allclose(costs, ec, rtol=1e-4)
            g = torch.from_numpy(grad.view(np.int16)).view(getattr(torch, kind)).to(torch.float64).numpy()
            np.testing.assert_allclose(g, eg, atol=1e-2 if kind == "bfloat16" else 2e-3)


# ---------------------------------------------------------------- plan

@pytest.mark.parametrize("kind", sorted(L.KERNEL_TYPES))
def test_workspace_regions_hold_accumulator_values(kind):
    """Every workspace region holds what the kernels index in it, aligned, no overlap."""
    _, acc = L.KERNEL_TYPES[kind]
    a = L.acc_size(acc)
    for N, T, Smax, C in [(1, 1, 0, 1), (3, 10, 3, 6), (7, 33, 17, 5), (2, 4000, 1200, 40)]:
        for want_grad in (False, True):
            for from_logits in (False, True):
                p = L.plan(T, N, C, Smax, want_grad=want_grad, from_logits=from_logits, acc=acc)
                Lc, W = p["Lcap"], p["W"]
                assert Lc == min(Smax, T) and W % 4 == 0 and 2 * Lc + 1 <= W <= 2 * Lc + 4
                g = want_grad
                need = {"ws_alpha": N * T * W * a * g, "ws_beta": N * T * W * a * g, "ws_offa": N * T * 8 * g,
                        "ws_offb": N * T * 8 * g, "ws_lse": T * N * a * from_logits, "ws_lab": N * Lc * 4 * g,
                        "ws_nxt": N * Lc * 4 * g, "ws_first": N * Lc * 4 * g, "ws_info": N * 16, "ws_ll": N * 8}
                offs = p["offsets"]
                assert set(offs) == set(need)
                live = sorted((o, k) for k, o in offs.items() if o is not None)
                assert all((offs[k] is None) == (need[k] == 0) for k in need)
                ends = [o for o, _ in live[1:]] + [p["total"]]
                for (o, k), end in zip(live, ends):
                    assert o % 256 == 0 and o + need[k] <= end, (kind, k)


def test_plan_geometry():
    """Warp kernels (4 sequences a CTA, K = 2/4/8 states a lane) up to 256 states, a block
    kernel (K = 4 up to 1024 threads, K = 16 up to 512) beyond; the launch bounds of ctc.cu."""
    def tags(S, T=5000):
        return [(x[0], x[2]) for x in L.plan(T, 8, 10, S, want_grad=True, from_logits=False, acc="float32")["launches"]]
    assert tags(10) == [("w2", 128)] and tags(50) == [("w4", 128)] and tags(127) == [("w8", 128)]
    assert tags(400) == [("w8", 128), ("b4", 224)]
    assert tags(2047) == [("w8", 128), ("b4", 1024)]
    assert tags(4095) == [("w8", 128), ("b16", 512)]
    with pytest.raises(fastctc.CTCValueError, match="max_target_length"):
        tags(5000, T=6000)
    assert tags(5000, T=300) == [("w8", 128), ("b4", 160)]  # Lcap = T: 601 states


# ---------------------------------------------------------------- ThreadSanitizer

_TSAN_SCRIPT = r"""
import sys, numpy as np
sys.path[:0] = [{tests!r}]
import gpu_emu, fastctc
from reference import random_log_probs
lib = gpu_emu.build({folder!r}, ["-fsanitize=thread", "-g"])
rng = np.random.default_rng(5)
for T, N, C, S, fl in [(9, 5, 6, 3, True), (20, 3, 7, 30, False), (40, 2, 5, 140, True)]:
    acts = random_log_probs(rng, T, N, C, scale=3.0)
    tg = rng.integers(1, C, size=(N, S)); il = np.full(N, T); tl = np.full(N, min(S, T)); tl[0] = S
    c, g, _ = gpu_emu.run(lib, acts, tg, il, tl, blank=0, from_logits=fl, want_grad=True)
    ec, eg = fastctc.ctc_loss_and_grad(acts, tg, il, tl, reduction="none", from_logits=fl)
    np.testing.assert_allclose(c, ec, rtol=1e-9); np.testing.assert_allclose(g, eg, atol=1e-9)
    c2, g2, _ = gpu_emu.run(lib, acts, tg, il, tl, blank=0, from_logits=fl, want_grad=True, force_block=True)
    assert c2.tobytes() == c.tobytes() and g2.tobytes() == g.tobytes()
    gpu_emu.run(lib, acts, tg, il, tl, blank=0, from_logits=fl, want_grad=False, want_alpha=True)
costs = rng.uniform(0, 9, size=700); tl = rng.integers(0, 9, size=700)  # the reduction's tree
outs = []
for block in (256, 96):
    for mode in (0, 1, 2):
        out = np.zeros(700 if mode == 0 else 1)
        gpu_emu.launch(lib, "fctc_reduce_f64", 1, block, 0,
                       [costs.ctypes.data, 700, tl.ctypes.data, 1, 1, mode, 1, out.ctypes.data])
        outs.append(out.tobytes())
assert outs[:3] == outs[3:] and abs(np.frombuffer(outs[1])[0] - costs.sum()) < 1e-9
print("tsan-ok")
"""


@pytest.mark.slow
def test_emulated_kernels_under_thread_sanitizer(tmp_path):
    """The warp, block and reduction kernels under ThreadSanitizer: any shared-memory exchange that a
    barrier does not order (a shuffle is no fence) is reported as a data race."""
    import shutil
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    libtsan = subprocess.run([gxx, "-print-file-name=libtsan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libtsan) or not os.path.exists(libtsan):
        pytest.skip("libtsan is not installed")
    script = _TSAN_SCRIPT.format(tests=os.path.dirname(__file__), folder=str(tmp_path))
    env = dict(os.environ, LD_PRELOAD=libtsan, TSAN_OPTIONS="halt_on_error=1 report_signal_unsafe=0",
               PYTHONPATH=os.pathsep.join([os.path.join(gpu_emu.ROOT, "pyx"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert "ThreadSanitizer" not in out.stderr, out.stderr[-6000:]
    assert out.returncode == 0 and "tsan-ok" in out.stdout, out.stderr[-6000:]


# ---------------------------------------------------------------- the launcher, end to end

@pytest.fixture
def emu_launcher(emu, monkeypatch):
    """fastctc._cuda_launch with its launches run by the emulated kernels and its arrays
    CPU torch tensors: the real argument packing, plan, workspace offsets, weights and
    entry points, checked without a GPU.  A tensor with `_fake_cuda = True` counts as
    living on the device (its values are then not checked on the host)."""
    torch = pytest.importorskip("torch")
    gpu_emu.install_python_route(monkeypatch, emu, torch, lambda x: bool(getattr(x, "_fake_cuda", False)))
    return torch


def _dev(torch, a):
    t = torch.from_numpy(np.ascontiguousarray(a))
    t._fake_cuda = True
    return t


def test_launcher_entry_points_end_to_end(emu_launcher, rng):
    torch = emu_launcher
    T, N, C, S = 16, 5, 8, 4
    acts, tg, il, tl = random_case(rng, T, N, C, S, 0, np.float64)
    x = torch.from_numpy(acts)
    w = rng.uniform(0.5, 2.0, size=N)
    ec, eg = _cpu(acts, tg, il, tl, 0, True, weights=w / (np.maximum(tl, 1) * N))
    for ints in ((tg, il, tl), tuple(_dev(torch, a) for a in (tg, il, tl)),
                 tuple(torch.from_numpy(a.astype(np.int32)) for a in (tg, il, tl))):
        costs, ws = L.torch_forward(x, *ints, from_logits=True)
        grad = L.torch_backward(x, *ints, ws, _dev(torch, w), from_logits=True, mean=True)
        np.testing.assert_allclose(costs.numpy(), ec, rtol=1e-10)
        np.testing.assert_allclose(grad.numpy(), eg, rtol=1e-9, atol=1e-12)
        c2, g2 = L.torch_ctc(x, *ints, _dev(torch, w), from_logits=True, mean=True)
        assert torch.equal(c2, costs) and torch.equal(g2, grad)
    # concatenated targets with device lengths: bounded workspace, same bits
    flat = np.concatenate([tg[i, :tl[i]] for i in range(N)])
    c3, g3 = L.torch_ctc(x, _dev(torch, flat), _dev(torch, il), _dev(torch, tl), _dev(torch, w),
                         from_logits=True, mean=True)
    assert torch.equal(c3, costs) and torch.equal(g3, grad)
    # the public API on "device" arrays: reduction and zero_infinity on the device
    for reduction in ("none", "sum", "mean"):
        want, wg = fastctc.ctc_loss_and_grad(acts, tg, il, tl, reduction=reduction, zero_infinity=True)
        got, gg = L.ctc_loss_device(x, tg, il, tl, 0, reduction, True, False, True)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
        np.testing.assert_allclose(gg.numpy(), wg, rtol=1e-9, atol=1e-12)
    # log_alpha through run_device (CTCLossV2's call)
    _, _, la = L.run_device(x, tg, il, tl, blank=0, from_logits=False, want_grad=False, want_alpha=True)
    ref = ref_log_alpha(acts, tg, il, tl, 0, False, 2 * S + 1)
    fin = np.isfinite(ref)
    assert np.array_equal(np.isneginf(la.numpy()), np.isneginf(ref))
    np.testing.assert_allclose(la.numpy()[fin], ref[fin], rtol=1e-10)


def test_launcher_checks_host_values_and_workspace(emu_launcher, rng):
    torch = emu_launcher
    acts, tg, il, tl = random_case(rng, 6, 3, 5, 2, 0, np.float32)
    x = torch.from_numpy(acts)
    with pytest.raises(fastctc.CTCValueError, match=r"input_lengths\[1\] = 9"):
        L.torch_forward(x, tg, np.array([6, 9, 1]), tl)
    with pytest.raises(fastctc.CTCValueError, match=r"targets\[0, 0\] = 5"):
        L.torch_forward(x, np.where(np.arange(2) == 0, 5, tg), il, np.maximum(tl, 1))
    with pytest.raises(fastctc.CTCTypeError, match="int32 or int64"):
        L.torch_forward(x, _dev(torch, tg.astype(np.int16)), il, tl)
    _, ws = L.torch_forward(x, tg, il, tl)
    with pytest.raises(fastctc.CTCValueError, match="workspace"):
        L.torch_backward(x, tg, il, tl, ws[:-1], None)


def test_emulated_float32_accuracy_on_long_peaky_inputs(emu, rng):
    """Lagged normalisation keeps float32 as accurate as the CPU engine's float32: 600
    frames of scores spanning hundreds of nats (a loss of ~1e5 nats, where float32's
    rounding alone moves log p by ~1e-2), against the CPU engine in float64."""
    T, N, C, S = 600, 2, 7, 40
    acts, tg, il, tl = random_case(rng, T, N, C, S, 0, np.float64, full=True)
    acts = acts * 40.0  # log-softmax spans of ~200 nats per frame
    x32 = acts.astype(np.float32)
    c, g, _ = gpu_emu.run(emu, x32, tg, il, tl, blank=0, from_logits=True, want_grad=True)
    ec, eg = _cpu(x32.astype(np.float64), tg, il, tl, 0, True)  # the same rounded inputs
    cc, cg = _cpu(x32, tg, il, tl, 0, True)                       # the CPU engine in float32
    assert np.isfinite(ec).all() and (ec > 1e4).all()
    np.testing.assert_allclose(c, ec, rtol=3e-7)
    gpu_err, cpu_err = np.abs(g - eg).max(), np.abs(cg - eg).max()
    assert gpu_err <= 1.5 * cpu_err + 1e-4, (gpu_err, cpu_err)
    # realistic peaky scores (the target path dominant): float32 to 1e-4
    acts2, tg2, il2, tl2 = random_case(rng, 300, 2, 7, 40, 0, np.float64, full=True)
    tg2 = 1 + np.cumsum(rng.integers(1, 5, size=tg2.shape), axis=1) % 6
    for n in range(2):
        path = np.repeat(np.stack([np.zeros(40, int), tg2[n]], 1).ravel(), 300 // 80)[:300]
        acts2[np.arange(len(path)), n, path] += 30.0
    c2, g2, _ = gpu_emu.run(emu, acts2.astype(np.float32), tg2, il2, tl2, blank=0, from_logits=True, want_grad=True)
    ec2, eg2 = _cpu(acts2.astype(np.float32).astype(np.float64), tg2, il2, tl2, 0, True)
    np.testing.assert_allclose(c2, ec2, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(g2, eg2, atol=1e-4)
