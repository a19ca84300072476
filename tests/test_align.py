"""Forced alignment (forced_align, merge_tokens, TokenSpan), soft alignment
(ctc_posteriors) and the C API fastctc_align_f32/_f64.

References written here, sharing no code with the engine:
  * viterbi_ref: a plain NumPy max-plus trellis over every state (no band), computed
    in the input's dtype with torchaudio's tie-breaking rules;
  * viterbi_ref_tight: the same restricted to the cells that are both reachable from
    the start and able to finish (found with boolean reachability passes), which is
    what torchaudio's own band keeps; both must agree with the engine;
  * brute force over every state sequence for tiny cases (maximum, posteriors).
"""
import itertools
import subprocess

import fastctc
import numpy as np
import pytest
import reference as ref
from conftest import C_COMPILERS, needs_cc
from fastctc import CTCRuntimeError, CTCTypeError, CTCValueError

NEG_INF = -np.inf


# ------------------------------------------------------------------ references

def _ext(labels, blank):
    e = [blank]
    for y in labels:
        e += [int(y), blank]
    return e


def _skip_allowed(ext, s):
    return s >= 3 and s % 2 == 1 and ext[s] != ext[s - 2]


def _keep_mask(T, ext):
    """keep[t, s]: reachable from a start state and able to reach an end state."""
    S = len(ext)
    fwd = np.zeros((T, S), bool)
    fwd[0, :min(S, 2)] = True
    for t in range(1, T):
        for s in range(S):
            fwd[t, s] = fwd[t - 1, s] or (s >= 1 and fwd[t - 1, s - 1]) or (
                _skip_allowed(ext, s) and fwd[t - 1, s - 2])
    bwd = np.zeros((T, S), bool)
    bwd[T - 1, S - 1] = True
    if S > 1:
        bwd[T - 1, S - 2] = True
    for t in range(T - 2, -1, -1):
        for s in range(S):
            bwd[t, s] = bwd[t + 1, s] or (s + 1 < S and bwd[t + 1, s + 1]) or (
                s + 2 < S and _skip_allowed(ext, s + 2) and bwd[t + 1, s + 2])
    return fwd & bwd


def viterbi_ref(lp, labels, blank, tight=False):
    """(path (T,), scores (T,)) for one sequence; lp (T, C) in its own dtype."""
    lp = np.asarray(lp)
    dt = lp.dtype.type
    T = lp.shape[0]
    ext = _ext(labels, blank)
    S = len(ext)
    keep = _keep_mask(T, ext) if tight else np.ones((T, S), bool)
    v = np.full((T, S), NEG_INF, dtype=lp.dtype)
    back = np.zeros((T, S), dtype=int)
    for s in range(min(S, 2)):
        if keep[0, s]:
            v[0, s] = lp[0, ext[s]]
    for t in range(1, T):
        for s in range(S):
            if not keep[t, s]:
                continue
            x0 = v[t - 1, s]
            x1 = v[t - 1, s - 1] if s >= 1 else dt(NEG_INF)
            x2 = v[t - 1, s - 2] if _skip_allowed(ext, s) else dt(NEG_INF)
            if x2 > x1 and x2 > x0:
                best, back[t, s] = x2, 2
            elif x1 > x0:
                best, back[t, s] = x1, 1
            else:
                best, back[t, s] = x0, 0
            v[t, s] = dt(best + lp[t, ext[s]])
    s = S - 1 if (S == 1 or v[T - 1, S - 1] > v[T - 1, S - 2]) else S - 2
    path = np.zeros(T, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        path[t] = ext[s]
        s -= back[t, s]
    return path, lp[np.arange(T), path]


def all_state_paths(T, ext):
    """Every valid state sequence of T frames through the extended target."""
    S = len(ext)
    out = []

    def rec(prefix):
        if len(prefix) == T:
            if prefix[-1] >= S - 2:
                out.append(list(prefix))
            return
        s = prefix[-1]
        for nxt in (s, s + 1, s + 2):
            if nxt < S and (nxt != s + 2 or _skip_allowed(ext, nxt)):
                rec(prefix + [nxt])

    for s0 in range(min(S, 2)):
        rec([s0])
    return out


def random_targets(rng, B, L, C, blank, repeat_prob=0.3):
    choices = [c for c in range(C) if c != blank]
    tg = rng.choice(choices, size=(B, L))
    for b in range(B):
        for i in range(1, L):
            if rng.random() < repeat_prob:
                tg[b, i] = tg[b, i - 1]
    return tg


def repeats(labels):
    return sum(int(a == b) for a, b in zip(labels[1:], labels[:-1]))


# ------------------------------------------------------------------ forced_align: exact

def test_brute_force_maximum_and_collapse(rng, simd_level):
    for trial in range(40):
        T = int(rng.integers(1, 7))
        C = int(rng.integers(2, 5))
        blank = int(rng.integers(0, C))
        L = int(rng.integers(0, 4))
        labels = random_targets(rng, 1, L, C, blank)[0]
        if T < L + repeats(list(labels)):
            continue
        lp = ref.random_log_probs(rng, 1, T, C)
        paths, scores = fastctc.forced_align(lp, labels[None, :], blank=blank)
        ext = _ext(labels, blank)
        best = max(sum(lp[0, t, ext[s]] for t, s in enumerate(p)) for p in all_state_paths(T, ext))
        assert scores[0].sum() == pytest.approx(best, abs=1e-12)
        np.testing.assert_array_equal(scores[0], lp[0, np.arange(T), paths[0]])
        assert ref.collapse(paths[0].tolist(), blank) == list(labels)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference_paths_exactly(rng, simd_level, dtype):
    for trial in range(30):
        T = int(rng.integers(1, 30))
        C = int(rng.integers(2, 8))
        blank = int(rng.integers(0, C))
        L = int(rng.integers(0, 10))
        labels = random_targets(rng, 1, L, C, blank)[0]
        L = min(L, T - repeats(list(labels)))  # may shrink; recheck below
        labels = labels[:max(L, 0)]
        if T < len(labels) + repeats(list(labels)):
            continue
        lp = ref.random_log_probs(rng, 1, T, C, dtype=dtype)
        paths, scores = fastctc.forced_align(lp, labels[None, :].astype(np.int64), blank=blank)
        assert paths.dtype == np.int64 and scores.dtype == dtype
        want_path, want_scores = viterbi_ref(lp[0], labels, blank)
        np.testing.assert_array_equal(paths[0], want_path)
        np.testing.assert_array_equal(scores[0], want_scores)
        tight_path, _ = viterbi_ref(lp[0], labels, blank, tight=True)
        np.testing.assert_array_equal(tight_path, want_path)


def test_ties_uniform_hand_derived(simd_level):
    # Every valid path has the same score; torchaudio's rules give: skip only when
    # strictly better (never, except out of an unreachable state), move only when
    # strictly better, end on the last label rather than the trailing blank.
    # Walking back from state 3 (label 2) at t=4: stay while state 3 was reachable,
    # then at t=1 only the skip from state 1 is finite.
    lp = np.full((1, 5, 3), np.log(1 / 3))
    paths, scores = fastctc.forced_align(lp, np.array([[1, 2]]))
    np.testing.assert_array_equal(paths[0], [1, 2, 2, 2, 2])
    np.testing.assert_array_equal(scores[0], lp[0, 0, 0])
    # a repeat forces the blank between the two 1s: the latest point it can sit
    paths, _ = fastctc.forced_align(lp, np.array([[1, 1]]))
    np.testing.assert_array_equal(paths[0], [1, 0, 1, 1, 1])


def test_ties_constructed(rng, simd_level):
    # Log-probs drawn from a tiny set of exactly representable values: many exact ties.
    for trial in range(60):
        T = int(rng.integers(2, 12))
        C = int(rng.integers(2, 5))
        L = int(rng.integers(1, 5))
        labels = random_targets(rng, 1, L, C, 0)[0]
        if T < L + repeats(list(labels)):
            continue
        for dtype in (np.float32, np.float64):
            lp = (-rng.integers(0, 3, size=(1, T, C)).astype(dtype))
            paths, scores = fastctc.forced_align(lp, labels[None, :])
            want, _ = viterbi_ref(lp[0], labels, 0)
            np.testing.assert_array_equal(paths[0], want)
            ext = _ext(labels, 0)
            if T <= 7:
                best = max(sum(float(lp[0, t, ext[s]]) for t, s in enumerate(p)) for p in all_state_paths(T, ext))
                assert float(scores[0].sum()) == best


def test_end_state_tie_prefers_last_label():
    # Both end states tie: S-2 (the label) wins; make the trailing blank strictly
    # better and it wins.
    lp = np.log(np.full((1, 3, 2), 0.5))
    paths, _ = fastctc.forced_align(lp, np.array([[1]]))
    assert paths[0, -1] == 1
    lp2 = lp.copy()
    lp2[0, 2, 0] = np.log(0.6)
    paths, _ = fastctc.forced_align(lp2, np.array([[1]]))
    assert paths[0, -1] == 0


def test_batched_equals_per_item_and_padding(rng, simd_level):
    B, T, C, Lmax = 7, 20, 6, 6
    for dtype in (np.float32, np.float64):
        lp = ref.random_log_probs(rng, B, T, C, dtype=dtype)
        tg = random_targets(rng, B, Lmax, C, 2).astype(np.int32)
        tl = rng.integers(0, Lmax + 1, size=B)
        il = np.array([int(rng.integers(tl[b] + repeats(list(tg[b, :tl[b]])), T + 1)) for b in range(B)])
        tg_padded = tg.copy()
        for b in range(B):
            tg_padded[b, tl[b]:] = 2  # padding may hold anything, even the blank
        paths, scores = fastctc.forced_align(lp, tg_padded, il, tl, blank=2, num_threads=2)
        assert paths.dtype == np.int32 and paths.shape == (B, T) and scores.shape == (B, T)
        for b in range(B):
            p1, s1 = fastctc.forced_align(lp[b:b + 1, :il[b]], tg[b:b + 1, :tl[b]], blank=2)
            np.testing.assert_array_equal(paths[b, :il[b]], p1[0])
            np.testing.assert_array_equal(scores[b, :il[b]], s1[0])
            assert (paths[b, il[b]:] == 2).all() and (scores[b, il[b]:] == 0).all()
        # the same batch in another memory layout (time-major storage, reversed batch)
        lp_tm = np.ascontiguousarray(lp.transpose(1, 0, 2)).transpose(1, 0, 2)
        p2, s2 = fastctc.forced_align(lp_tm[::-1], tg_padded[::-1], il[::-1], tl[::-1], blank=2)
        np.testing.assert_array_equal(p2[::-1], paths)
        np.testing.assert_array_equal(s2[::-1], scores)


def test_edge_cases():
    # empty target: all blank; T == L + repeats exactly; zero-length input with empty target
    lp = np.log(np.full((3, 4, 3), 1 / 3))
    paths, scores = fastctc.forced_align(lp, np.array([[1, 1], [1, 2], [2, 2]]), [4, 2, 0], [0, 2, 0])
    np.testing.assert_array_equal(paths, [[0, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]])
    assert (scores[0] != 0).all() and (scores[2] == 0).all()
    paths, _ = fastctc.forced_align(lp[:1, :3], np.array([[1, 1]]))
    np.testing.assert_array_equal(paths[0], [1, 0, 1])
    # B = 0 and T = 0
    paths, scores = fastctc.forced_align(np.zeros((0, 5, 3)), np.zeros((0, 2), np.int64))
    assert paths.shape == (0, 5) and scores.shape == (0, 5)
    paths, scores = fastctc.forced_align(np.zeros((2, 0, 3)), np.zeros((2, 0), np.int64))
    assert paths.shape == (2, 0)
    # lists are accepted (targets as int64)
    paths, _ = fastctc.forced_align(lp[:1].tolist(), [[1, 2]])
    assert paths.dtype == np.int64
    # -inf everywhere: no finite path, but the call stays in bounds and returns blanks/labels
    paths, scores = fastctc.forced_align(np.full((1, 6, 3), -np.inf), np.array([[1, 2]]))
    assert paths.shape == (1, 6) and set(paths[0].tolist()) <= {0, 1, 2}


# ------------------------------------------------------------------ forced_align: errors

def test_errors():
    lp = np.log(np.full((1, 5, 4), 0.25))
    tg = np.array([[1, 2]])
    with pytest.raises(CTCValueError, match=r"targets\[0, 1\] = 0"):
        fastctc.forced_align(lp, np.array([[1, 0]]))
    with pytest.raises(CTCValueError, match=r"targets\[0, 0\] = 3 \(blank\)"):
        fastctc.forced_align(lp, np.array([[3, 1]]), blank=3)
    with pytest.raises(CTCValueError, match=r"targets\[0, 1\] = 4.*\[0, 4\)"):
        fastctc.forced_align(lp, np.array([[1, 4]]))
    with pytest.raises(CTCValueError, match=r"targets\[0, 0\] = -1"):
        fastctc.forced_align(lp, np.array([[-1, 2]]))
    with pytest.raises(CTCRuntimeError, match=r"targets length is too long for CTC. Found log_probs "
                                              r"length: 5, targets length: 4, and number of repeats: 2"):
        fastctc.forced_align(lp, np.array([[1, 1, 2, 2]]))
    with pytest.raises(RuntimeError, match=r"sequence 1.*input_lengths\[1\] must be >= 2"):
        fastctc.forced_align(np.concatenate([lp, lp]), np.array([[1, 2], [1, 2]]), [5, 1])
    with pytest.raises(CTCValueError, match=r"log_probs must have rank 3"):
        fastctc.forced_align(lp[0], tg)
    with pytest.raises(CTCValueError, match=r"targets must have rank 2"):
        fastctc.forced_align(lp, tg[0])
    with pytest.raises(CTCValueError, match=r"B = 1"):
        fastctc.forced_align(lp, np.array([[1, 2], [1, 2]]))
    with pytest.raises(CTCTypeError, match=r"float32 or float64"):
        fastctc.forced_align(lp.astype(np.int32), tg)
    with pytest.raises(CTCTypeError, match=r"int32 or int64"):
        fastctc.forced_align(lp, tg.astype(np.int16))
    with pytest.raises(CTCTypeError, match=r"integers"):
        fastctc.forced_align(lp, tg.astype(np.float32))
    with pytest.raises(CTCValueError, match=r"blank must be in \[0, 4\), got 4"):
        fastctc.forced_align(lp, tg, blank=4)
    with pytest.raises(CTCValueError, match=r"input_lengths\[0\] = 6 is outside \[0, 5\]"):
        fastctc.forced_align(lp, tg, [6])
    with pytest.raises(CTCValueError, match=r"target_lengths\[0\] = 3 is outside \[0, 2\]"):
        fastctc.forced_align(lp, tg, None, [3])
    with pytest.raises(CTCValueError, match=r"input_lengths must have rank 1"):
        fastctc.forced_align(lp, tg, [[5]])
    with pytest.raises(CTCValueError, match=r"at least one class"):
        fastctc.forced_align(np.zeros((1, 5, 0)), np.zeros((1, 0), np.int64))
    with pytest.raises(CTCValueError, match=r"num_threads"):
        fastctc.forced_align(lp, tg, num_threads=0)


def test_batched_brute_force_with_ties_and_posteriors(rng):
    """Random batches with lengths, many ties (rounded log-probs), infeasible targets
    (RuntimeError): the best path against enumeration of every path, and the posteriors
    of the same problems against the reference occupancy."""
    checked = 0
    for _ in range(60):
        B, T, C, L = int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(2, 4)), int(rng.integers(0, 3))
        blank = int(rng.integers(0, C))
        dtype = [np.float32, np.float64][int(rng.integers(2))]
        lp = np.log(rng.dirichlet(np.ones(C), size=(B, T)))
        if rng.random() < 0.3:
            lp = np.round(lp)  # many ties
        lp = lp.astype(dtype)
        tg = rng.integers(0, C - 1, size=(B, L))
        tg = np.where(tg >= blank, tg + 1, tg)
        il, tl = rng.integers(0, T + 1, size=B), rng.integers(0, L + 1, size=B)
        repeats = [sum(tg[b, i] == tg[b, i - 1] for i in range(1, tl[b])) for b in range(B)]
        if any(il[b] < tl[b] + repeats[b] for b in range(B)):
            with pytest.raises(RuntimeError, match="targets length is too long for CTC"):
                fastctc.forced_align(lp, tg, il, tl, blank=blank)
            continue
        paths, scores = fastctc.forced_align(lp, tg, il, tl, blank=blank)
        assert paths.shape == scores.shape == (B, T) and scores.dtype == dtype
        post = fastctc.ctc_posteriors(lp.transpose(1, 0, 2), tg, il, tl, blank=blank)
        for b in range(B):
            n = int(il[b])
            best = max((sum(float(lp[b, t, c]) for t, c in enumerate(p))
                        for p in itertools.product(range(C), repeat=n)
                        if ref.collapse(p, blank) == list(tg[b, : tl[b]])), default=-np.inf)
            assert ref.collapse(paths[b, :n], blank) == list(tg[b, : tl[b]])
            np.testing.assert_allclose(scores[b, :n], lp[b, np.arange(n), paths[b, :n]])
            np.testing.assert_allclose(scores[b].astype(np.float64).sum(), best, rtol=1e-5, atol=1e-5)
            assert (paths[b, n:] == blank).all() and not scores[b, n:].any()
            want = np.zeros((T, C))
            want[:n] = ref.occupancy(lp[b, :n].astype(np.float64), tg[b, : tl[b]], blank)
            np.testing.assert_allclose(post[:, b], want, atol=1e-5)
            checked += 1
    assert checked > 20


# ------------------------------------------------------------------ merge_tokens

def _merge_ref(tokens, scores, blank):
    spans, i = [], 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] == tokens[i]:
            j += 1
        if tokens[i] != blank:
            spans.append((tokens[i], i, j, float(np.mean(np.asarray(scores[i:j], dtype=np.float64)))))
        i = j
    return spans


def test_merge_tokens(rng):
    spans = fastctc.merge_tokens(np.array([0, 1, 1, 0, 1, 2, 2, 0]), np.arange(8.0))
    assert [(s.token, s.start, s.end) for s in spans] == [(1, 1, 3), (1, 4, 5), (2, 5, 7)]
    assert [s.score for s in spans] == [1.5, 4.0, 5.5]
    assert [len(s) for s in spans] == [2, 1, 2]
    assert isinstance(spans[0], fastctc.TokenSpan)
    assert fastctc.merge_tokens(np.zeros(0, np.int64), np.zeros(0)) == []
    assert fastctc.merge_tokens([3, 3, 3], [0.5, 0.5, 0.5], blank=3) == []
    for trial in range(20):
        T = int(rng.integers(1, 30))
        tok = rng.integers(0, 4, size=T)
        sc = rng.normal(size=T).astype(np.float32)
        got = [(s.token, s.start, s.end, s.score) for s in fastctc.merge_tokens(tok, sc, blank=1)]
        want = _merge_ref(tok.tolist(), sc, 1)
        assert [g[:3] for g in got] == [w[:3] for w in want]
        np.testing.assert_allclose([g[3] for g in got], [w[3] for w in want], rtol=1e-12)
    # spans of a real alignment reproduce the target
    lp = ref.random_log_probs(rng, 1, 12, 5)
    paths, scores = fastctc.forced_align(lp, np.array([[1, 3, 3, 2]]))
    spans = fastctc.merge_tokens(paths[0], scores[0])
    assert [s.token for s in spans] == [1, 3, 3, 2]
    with pytest.raises(CTCValueError, match="1-D"):
        fastctc.merge_tokens(paths, scores)
    with pytest.raises(CTCValueError, match="same length"):
        fastctc.merge_tokens(paths[0], scores[0, :-1])
    with pytest.raises(CTCTypeError):
        fastctc.merge_tokens(paths[0], scores[0], blank=1.5)


# ------------------------------------------------------------------ ctc_posteriors

def test_posteriors_brute_force_and_sum(rng, simd_level):
    for trial in range(15):
        T = int(rng.integers(1, 6))
        C = int(rng.integers(2, 4))
        L = int(rng.integers(0, 3))
        labels = random_targets(rng, 1, L, C, 0)[0]
        if T < L + repeats(list(labels)):
            continue
        lp = ref.random_log_probs(rng, T, C)
        post = fastctc.ctc_posteriors(lp, labels, T, L)
        ext = _ext(labels, 0)
        want = np.zeros((T, C))
        for p in all_state_paths(T, ext):
            w = np.exp(sum(lp[t, ext[s]] for t, s in enumerate(p)))
            for t, s in enumerate(p):
                want[t, ext[s]] += w
        want /= want[0].sum()
        np.testing.assert_allclose(post, want, atol=1e-12)


def test_posteriors_batch_properties_and_finite_differences(rng, simd_level):
    T, N, C = 9, 4, 5
    lp = ref.random_log_probs(rng, T, N, C)
    tg = random_targets(rng, N, 3, C, 0)
    il = np.array([9, 7, 2, 5])
    tl = np.array([3, 2, 3, 0])  # sequence 2 cannot fit (needs >= 3 frames)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 2e-6)):
        post = fastctc.ctc_posteriors(lp.astype(dtype), tg, il, tl)
        assert post.shape == (T, N, C) and post.dtype == dtype
        for n in range(N):
            if n == 2:
                assert (post[:, n] == 0).all() and not np.signbit(post[:, n]).any()
                continue
            np.testing.assert_allclose(post[:il[n], n].sum(-1), 1.0, atol=tol * 10)
            assert (post[il[n]:, n] == 0).all()
    # -(d sum-loss / d log_probs) by central differences, feasible sequences only
    keep = [0, 1, 3]
    post = fastctc.ctc_posteriors(lp, tg, il, tl)
    eps = 1e-6
    for _ in range(25):
        t, n, c = int(rng.integers(0, T)), keep[int(rng.integers(0, 3))], int(rng.integers(0, C))
        up, down = lp.copy(), lp.copy()
        up[t, n, c] += eps
        down[t, n, c] -= eps
        def f(x):
            return fastctc.ctc_loss(x[:, keep], tg[keep], il[keep], tl[keep], reduction="sum")
        fd = -(f(up) - f(down)) / (2 * eps)
        assert post[t, n, c] == pytest.approx(fd, abs=1e-7)


def test_posteriors_errors():
    lp = np.log(np.full((4, 1, 3), 1 / 3))
    with pytest.raises(CTCValueError, match=r"targets\[0, 0\] = 3"):
        fastctc.ctc_posteriors(lp, np.array([[3]]), [4], [1])
    with pytest.raises(CTCValueError, match=r"input_lengths\[0\] = 5"):
        fastctc.ctc_posteriors(lp, np.array([[1]]), [5], [1])
    with pytest.raises(CTCTypeError):
        fastctc.ctc_posteriors(lp.astype(np.int64), np.array([[1]]), [4], [1])


# ------------------------------------------------------------------ C API

C_PROGRAM = r"""
/* Test driver for fastctc_align_f32/_f64: reads a problem from stdin, aligns it in both
 * layouts with internal and caller workspace, checks the error statuses, and prints
 * the paths and scores of each run. */
#define FASTCTC_IMPLEMENTATION
#include <fastctc/fastctc.h>
#include <stdio.h>
#include <string.h>

#define MAXV 4096
static double acts_in[MAXV];
static int labels[256], ll[32], il[32];

int main(void) {
    int T, N, C, blank, total = 0, n, t, c, i;
    if (scanf("%d %d %d %d", &T, &N, &C, &blank) != 4) return 2;
    for (n = 0; n < N; ++n) { if (scanf("%d %d", &il[n], &ll[n]) != 2) return 2; total += ll[n]; }
    for (i = 0; i < total; ++i) if (scanf("%d", &labels[i]) != 1) return 2;
    for (i = 0; i < N * T * C; ++i) if (scanf("%lf", &acts_in[i]) != 1) return 2; /* batch-major */
    static float tm32[MAXV], s32[MAXV];
    static double a64[MAXV], s64[MAXV];
    static int p32[MAXV], p64[MAXV];
    for (n = 0; n < N; ++n) for (t = 0; t < T; ++t) for (c = 0; c < C; ++c) {
        double v = acts_in[(n * T + t) * C + c];
        a64[(n * T + t) * C + c] = v;
        tm32[(t * N + n) * C + c] = (float)v;
    }
    fastctc_options o; memset(&o, 0, sizeof o);
    o.blank = blank; o.batch_major = 1; o.num_threads = 2;
    int st = fastctc_align_f64(a64, labels, ll, il, T, N, C, p64, s64, NULL, 0, &o);
    printf("f64 %d\n", st);
    for (i = 0; i < N * T; ++i) printf("%d %.17g\n", p64[i], s64[i]);
    size_t ws = 0;
    st = fastctc_align_workspace_size(ll, il, T, N, C, sizeof(float), &o, &ws);
    static unsigned char work[1 << 20];
    if (st || ws > sizeof work) return 3;
    o.batch_major = 0;
    st = fastctc_align_f32(tm32, labels, ll, il, T, N, C, p32, s32, work, ws, &o);
    printf("f32 %d\n", st);
    for (i = 0; i < N * T; ++i) printf("%d %.9g\n", p32[i], s32[i]);
    /* errors: nothing may be written */
    for (i = 0; i < N * T; ++i) p32[i] = -7;
    int saved = labels[0]; labels[0] = blank;
    printf("blank %d\n", fastctc_align_f32(tm32, labels, ll, il, T, N, C, p32, s32, NULL, 0, &o));
    labels[0] = C;
    printf("range %d\n", fastctc_align_f32(tm32, labels, ll, il, T, N, C, p32, s32, NULL, 0, &o));
    labels[0] = saved;
    int il0 = il[0]; il[0] = ll[0] - 1;
    printf("short %d\n", fastctc_align_f32(tm32, labels, ll, il, T, N, C, p32, s32, NULL, 0, &o));
    il[0] = il0;
    printf("null %d\n", fastctc_align_f32(tm32, labels, ll, il, T, N, C, NULL, s32, NULL, 0, &o));
    printf("small %d\n", fastctc_align_f32(tm32, labels, ll, il, T, N, C, p32, s32, work, 16, &o));
    o.blank = C;
    printf("badblank %d\n", fastctc_align_f32(tm32, labels, ll, il, T, N, C, p32, s32, NULL, 0, &o));
    for (i = 0; i < N * T; ++i) if (p32[i] != -7) { printf("touched\n"); return 4; }
    printf("done\n");
    return 0;
}
"""


@needs_cc
def test_c_api(tmp_path, rng):
    cc = C_COMPILERS[:1]
    src = tmp_path / "align_api.c"
    src.write_text(C_PROGRAM)
    exe = tmp_path / "align_api"
    include = fastctc.get_include()
    res = subprocess.run(cc + ["-std=c99", "-O2", "-Wall", "-fopenmp",
                               f"-I{include}", str(src), "-o", str(exe), "-lm"],
                         capture_output=True, text=True)
    if res.returncode != 0 and "fopenmp" in res.stderr:
        res = subprocess.run(cc + ["-std=c99", "-O2", f"-I{include}", str(src), "-o", str(exe), "-lm"],
                             capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    T, N, C, blank = 11, 3, 5, 1
    lp = ref.random_log_probs(rng, N, T, C)
    tg = random_targets(rng, N, 4, C, blank)
    il, tl = [11, 8, 6], [4, 3, 2]
    lines = [f"{T} {N} {C} {blank}"] + [f"{a} {b}" for a, b in zip(il, tl)]
    lines.append(" ".join(str(int(v)) for n in range(N) for v in tg[n, :tl[n]]))
    lines.append(" ".join(repr(float(v)) for v in lp.reshape(-1)))
    out = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = out.stdout.split("\n")
    assert rows[0] == "f64 0"
    got64 = np.array([r.split() for r in rows[1:1 + N * T]], dtype=np.float64)
    assert rows[1 + N * T] == "f32 0"
    got32 = np.array([r.split() for r in rows[2 + N * T:2 + 2 * N * T]], dtype=np.float64)
    for dtype, got in ((np.float64, got64), (np.float32, got32)):
        p, s = fastctc.forced_align(lp.astype(dtype), tg, il, tl, blank=blank)
        np.testing.assert_array_equal(got[:, 0].reshape(N, T), p)
        np.testing.assert_array_equal(got[:, 1].reshape(N, T).astype(dtype), s)
    tail = rows[2 + 2 * N * T:]
    assert tail[:7] == ["blank 1", "range 1", "short 1", "null 1", "small 2", "badblank 1", "done"]
