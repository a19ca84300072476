"""Independent float64 references for the tests: a straightforward NumPy CTC
(forward, backward, occupancy, log_alpha) and brute-force path enumeration; and the
tests' shared random inputs (random_log_probs, random_labels, random_case), so that every
test file draws its problems the same way.

Written for clarity, not speed, and sharing no code with the engine: the forward uses
explicit per-state transitions, the brute force sums over every frame labelling.
"""
import itertools

import numpy as np

NEG_INF = -np.inf


def log_softmax(x, axis=-1):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def random_log_probs(rng, *shape, dtype=np.float64, scale=2.0):
    """Log-probabilities of the given shape (normalised over the last axis): the
    log_softmax of normal draws times scale (a larger scale: a peakier model)."""
    return log_softmax(rng.normal(size=shape) * scale).astype(dtype)


def random_labels(rng, shape, C, blank):
    """Labels in [0, C) other than the blank (a drawn blank becomes blank + 1 mod C)."""
    labels = rng.integers(0, C, size=shape)
    return np.where(labels == blank, (blank + 1) % C, labels)


def random_case(rng, T, N, C, S, blank=0, dtype=np.float64, repeats=False, full=False):
    """(log_probs (T, N, C), padded targets (N, S), input_lengths, target_lengths) with
    the extremes always present: input_lengths[0] = T and target_lengths[-1] = S (full:
    every sequence uses T frames and S labels); repeats: every third label repeats the one
    before it."""
    acts = random_log_probs(rng, T, N, C, dtype=dtype, scale=3.0)
    tg = random_labels(rng, (N, S), C, blank)
    if repeats and S > 1:
        tg[:, 1::3] = tg[:, 0::3][:, :tg[:, 1::3].shape[1]]
    il = np.full(N, T) if full else rng.integers(0, T + 1, size=N)
    il[0] = T
    tl = np.full(N, S) if full else rng.integers(0, S + 1, size=N)
    tl[-1] = S
    return acts, tg, il, tl


def random_problem(rng):
    """An awkward random ctc_loss problem (lp (T, N, C), padded targets, input_lengths,
    target_lengths, blank): shapes down to T = 1 and C = 1, the blank at 0 / middle / C-1,
    float32 or float64, peaky log-probs (scale up to 30), sometimes -inf entries, long runs
    of one label, zero lengths, and garbage past each target length (never read)."""
    T = int(rng.integers(1, 12))
    N = int(rng.integers(1, 5))
    C = int(rng.integers(1, 7))
    S = int(rng.integers(0, 7))
    blank = int(rng.choice([0, C - 1, C // 2]))
    dtype = [np.float32, np.float64][int(rng.integers(2))]
    lp = log_softmax(rng.normal(size=(T, N, C)) * float(rng.choice([0.5, 3.0, 30.0])))
    if rng.random() < 0.25:  # some impossible emissions
        lp = np.where(rng.random(lp.shape) < 0.2, -np.inf, lp)
    lp = lp.astype(dtype)
    if C > 1:
        tg = rng.integers(0, C - 1, size=(N, S))
        tg = np.where(tg >= blank, tg + 1, tg)
    else:
        tg = np.zeros((N, S), dtype=np.int64)
    if S > 1 and rng.random() < 0.4:
        tg[:, :] = tg[:, :1]  # long runs of one label: each repeat needs a blank between
    il = rng.integers(0, T + 1, size=N)
    tl = rng.integers(0, S + 1, size=N) if C > 1 else np.zeros(N, dtype=np.int64)
    for n in range(N):  # garbage past each target length must be ignored
        tg[n, tl[n]:] = rng.integers(-9, 99, size=S - tl[n])
    return lp, tg, il, tl, blank


def random_layout(rng, lp):
    """lp's values in a random memory layout: as is, batch-major storage seen as (T, N, C),
    a reversed class axis (negative stride) or Fortran order."""
    kind = int(rng.integers(4))
    if kind == 0:
        return lp
    if kind == 1:
        return np.ascontiguousarray(lp.transpose(1, 0, 2)).transpose(1, 0, 2)
    if kind == 2:
        return np.ascontiguousarray(lp[:, :, ::-1])[:, :, ::-1]
    return np.asfortranarray(lp)


def random_form(rng, x, kind):
    """x (an integer array) in one of the forms torch.nn.functional.ctc_loss accepts: a
    torch tensor, a tuple or list (kind "lengths"), or an int32/int64 array."""
    choice = int(rng.integers(4))
    if choice == 0:
        import torch
        return torch.tensor(x.astype(np.int32 if rng.random() < 0.5 else np.int64))
    if choice == 1 and kind == "lengths":
        return tuple(int(v) for v in x)
    if choice == 2 and kind == "lengths":
        return [int(v) for v in x]
    return x.astype(np.int32 if rng.random() < 0.5 else np.int64)


def _lse(values):
    values = [v for v in values if v != NEG_INF]
    if not values:
        return NEG_INF
    m = max(values)
    return m + np.log(sum(np.exp(v - m) for v in values))


def extended(labels, blank):
    ext = [blank]
    for y in labels:
        ext += [int(y), blank]
    return ext


def forward(lp, labels, blank):
    """log_alpha (T, 2L+1) and log p for one sequence; lp is (T, C) float64 log-probs."""
    lp = np.asarray(lp, dtype=np.float64)
    T = lp.shape[0]
    ext = extended(labels, blank)
    S = len(ext)
    alpha = np.full((T, S), NEG_INF)
    if T == 0:
        return alpha, (0.0 if len(labels) == 0 else NEG_INF)
    alpha[0, 0] = lp[0, ext[0]]
    if S > 1:
        alpha[0, 1] = lp[0, ext[1]]
    for t in range(1, T):
        for s in range(S):
            terms = [alpha[t - 1, s]]
            if s >= 1:
                terms.append(alpha[t - 1, s - 1])
            if s >= 2 and s % 2 == 1 and ext[s] != ext[s - 2]:  # by position, as PyTorch does
                terms.append(alpha[t - 1, s - 2])
            alpha[t, s] = _lse(terms) + lp[t, ext[s]]
    ll = _lse([alpha[T - 1, S - 1]] + ([alpha[T - 1, S - 2]] if S > 1 else []))
    return alpha, ll


def backward(lp, labels, blank):
    """log_beta (T, 2L+1), emission at t excluded."""
    lp = np.asarray(lp, dtype=np.float64)
    T = lp.shape[0]
    ext = extended(labels, blank)
    S = len(ext)
    beta = np.full((T, S), NEG_INF)
    if T == 0:
        return beta
    beta[T - 1, S - 1] = 0.0
    if S > 1:
        beta[T - 1, S - 2] = 0.0
    for t in range(T - 2, -1, -1):
        for s in range(S):
            terms = [beta[t + 1, s] + lp[t + 1, ext[s]]]
            if s + 1 < S:
                terms.append(beta[t + 1, s + 1] + lp[t + 1, ext[s + 1]])
            if s + 2 < S and s % 2 == 1 and ext[s + 2] != ext[s]:
                terms.append(beta[t + 1, s + 2] + lp[t + 1, ext[s + 2]])
            beta[t, s] = _lse(terms)
    return beta


def nll(lp, labels, blank):
    return -forward(lp, labels, blank)[1]


def occupancy(lp, labels, blank):
    """(T, C) expected count of each class at each frame: d log p / d lp."""
    lp = np.asarray(lp, dtype=np.float64)
    alpha, ll = forward(lp, labels, blank)
    beta = backward(lp, labels, blank)
    ext = extended(labels, blank)
    occ = np.zeros_like(lp)
    if ll == NEG_INF:
        return occ
    for t in range(lp.shape[0]):
        for s, c in enumerate(ext):
            occ[t, c] += np.exp(alpha[t, s] + beta[t, s] - ll)
    return occ


def grad_log_probs(lp, labels, blank):
    """d nll / d lp (no normalisation assumed)."""
    return -occupancy(lp, labels, blank)


def grad_logits(logits, labels, blank):
    """d nll(log_softmax(logits)) / d logits = softmax - occupancy."""
    lp = log_softmax(logits)
    occ = occupancy(lp, labels, blank)
    if not occ.any() and forward(lp, labels, blank)[1] == NEG_INF:
        return np.zeros_like(lp)
    return np.exp(lp) - occ


def collapse(path, blank):
    out, prev = [], None
    for c in path:
        if c != prev and c != blank:
            out.append(int(c))
        prev = c
    return out


def brute_force_nll(lp, labels, blank):
    """-log of the summed probability of every frame labelling that collapses to labels."""
    lp = np.asarray(lp, dtype=np.float64)
    T, C = lp.shape
    total = []
    for path in itertools.product(range(C), repeat=T):
        if collapse(path, blank) == list(labels):
            total.append(sum(lp[t, c] for t, c in enumerate(path)))
    return -_lse(total)


def batch_nll(lp_tnc, targets, input_lengths, target_lengths, blank, from_logits=False):
    """Per-sequence nll of a (T, N, C) batch with padded (N, S) targets."""
    lp_tnc = np.asarray(lp_tnc, dtype=np.float64)
    out = []
    for n in range(lp_tnc.shape[1]):
        x = lp_tnc[: input_lengths[n], n, :]
        if from_logits:
            x = log_softmax(x)
        out.append(nll(x, list(targets[n][: target_lengths[n]]), blank))
    return np.array(out)
