"""fastctc._align: CTC forced alignment, token spans and per-frame posteriors.

* forced_align: torchaudio.functional.forced_align's contract (layout (B, T, C), outputs,
  tie-breaking, errors), but for any batch size, on the C core's Viterbi trellis
  (include/fastctc/detail/align.h) with OpenMP over sequences.
* merge_tokens / TokenSpan: torchaudio's span merging of one frame-level path.
* ctc_posteriors: the soft alignment, the per-frame class occupancy from the same
  forward-backward pass as the loss's gradient (in log-probs mode that gradient is
  exactly minus the occupancy).

Every check happens here, before the compiled code runs (see _validate.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _align_core
from ._engine import ThreadBudget, run
from ._validate import (
    INT32_MAX,
    CTCRuntimeError,
    CTCTypeError,
    CTCValueError,
    as_float_array,
    as_int_array,
    as_runtime_error,
    check_at_least_one,
    check_batch_size,
    check_ctc_inputs,
    check_dtype,
    check_index,
    check_integer,
    check_num_threads,
    check_range,
    check_rank,
    class_contiguous,
    first_offender,
    label_offsets,
    padded_mask,
    repeats,
)

__all__ = ["forced_align", "merge_tokens", "TokenSpan", "ctc_posteriors"]


def _lengths_or_full(x, name: str, B: int, full: int) -> np.ndarray:
    """(B,) int32 lengths in [0, full]; None means `full` for every sequence."""
    if x is None:
        return np.full(B, full, dtype=np.int32)
    arr = as_int_array(x, name)
    check_rank(arr.shape, name, 1, "(B,)")
    check_batch_size(arr.shape, name, B, "(B,)", "B")
    check_range(arr, name, 0, full)
    return arr.astype(np.int32)


def _check_align_arrays(log_probs, targets, input_lengths, target_lengths, blank):
    """The checks torchaudio makes in C++ (shapes, dtypes, blank, lengths)."""
    lp = as_float_array(log_probs, "log_probs")
    B, T, C = check_rank(lp.shape, "log_probs", 3, "(batch_size, input length, num classes)")
    for dim_name, dim in (("B", B), ("T", T), ("C", C)):
        if dim > INT32_MAX:
            raise CTCValueError(f"log_probs dimension {dim_name} = {dim} exceeds {INT32_MAX}")
    check_at_least_one(C, "log_probs", "class", "C")
    blank = check_index(blank, "blank", C)

    tg = as_int_array(targets, "targets")
    check_dtype(tg, "targets", ("int32", "int64"))
    check_rank(tg.shape, "targets", 2, "(batch_size, target length)")
    check_batch_size(tg.shape, "targets", B, "(B, L)", "B", "(log_probs' batch size)")
    L = tg.shape[1]
    if 2 * L + 8 > INT32_MAX:
        raise CTCValueError(f"targets length L = {L} exceeds {(INT32_MAX - 8) // 2}")
    il = _lengths_or_full(input_lengths, "input_lengths", B, T)
    tl = _lengths_or_full(target_lengths, "target_lengths", B, L)

    return lp, tg, il, tl, blank


def forced_align(log_probs, targets, input_lengths=None, target_lengths=None, blank=0, *,
                 num_threads=None):
    """The most probable CTC alignment of each target: torchaudio's forced_align, batched.

    torchaudio.functional.forced_align's contract (layout, outputs, tie-breaking, errors)
    for any batch size, on the C core's Viterbi trellis with OpenMP over sequences.

    Parameters
    ----------
    log_probs : array_like, (B, T, C), float32 or float64
        Log-probabilities, used as given (no normalisation check).
    targets : array_like, (B, L), int32 or int64
        Targets, padded past each target length (lists are read as int64).  No label may
        equal the blank.
    input_lengths : array_like of int, (B,), or None, default None
        Frames of each sequence, in [0, T]; None: every sequence uses all T frames.
    target_lengths : array_like of int, (B,), or None, default None
        Labels of each target, in [0, L]; None: every target uses all L labels.
    blank : int, default 0
        The blank class, in [0, C).
    num_threads : int or None, default None
        Keyword-only.  Threads of this call (default: OMP_NUM_THREADS, else every core).

    Returns
    -------
    paths : numpy.ndarray, (B, T), targets' dtype
        paths[b, t] is the class the best path emits at frame t; past input_lengths[b] it
        is the blank.
    scores : numpy.ndarray, (B, T), log_probs' dtype
        scores[b, t] = log_probs[b, t, paths[b, t]]; 0 past input_lengths[b].  The sum of a
        row is the best path's log-probability.

    Raises
    ------
    CTCTypeRuntimeError
        A dtype of log_probs or targets that is not accepted (a TypeError and a
        RuntimeError).
    CTCValueRuntimeError
        Ranks and shapes, the blank outside [0, C), lengths outside [0, T] / [0, L] (a
        ValueError and a RuntimeError).
    CTCRuntimeError
        A target that cannot fit its input length (its labels plus one blank between each
        pair of repeated labels).
    CTCValueError
        A target equal to the blank or outside [0, C).

    Notes
    -----
    The error classes are those torchaudio raises for the same case: it checks shapes,
    dtypes, the blank and the lengths in C++ (RuntimeError) and the target values in
    Python (ValueError).  Ties are broken as torchaudio breaks them.

    Examples
    --------
    >>> import numpy as np
    >>> import fastctc
    >>> probs = np.array([[[0.8, 0.1, 0.1],      # frame 0: mostly blank
    ...                    [0.1, 0.8, 0.1],      # frame 1: mostly class 1
    ...                    [0.1, 0.1, 0.8]]])    # frame 2: mostly class 2
    >>> paths, scores = fastctc.forced_align(np.log(probs), np.array([[1, 2]]))
    >>> paths
    array([[0, 1, 2]])
    >>> print(np.round(np.exp(scores), 2))
    [[0.8 0.8 0.8]]
    """
    num_threads = check_num_threads(num_threads)
    try:
        lp, tg, il, tl, blank = _check_align_arrays(log_probs, targets, input_lengths, target_lengths, blank)
    except (CTCValueError, CTCTypeError) as exc:
        raise as_runtime_error(exc) from None
    B, T, C = lp.shape
    L = tg.shape[1]

    mask = padded_mask(tl, L)
    hit = first_offender(mask & (tg == blank))
    if hit is not None:
        b, i = hit
        raise CTCValueError(f"targets shouldn't contain the blank index: targets[{b}, {i}] = {blank} (blank)")
    check_range(tg, "targets", 0, C, f"targets values must be less than the CTC dimension C = {C}",
                mask=mask, exclusive=True)
    rep = repeats(tg, tl)
    hit = first_offender(il.astype(np.int64) < tl.astype(np.int64) + rep)
    if hit is not None:
        b = hit[0]
        raise CTCRuntimeError(
            f"targets length is too long for CTC. Found log_probs length: {int(il[b])}, targets length: "
            f"{int(tl[b])}, and number of repeats: {int(rep[b])} (sequence {b}: input_lengths[{b}] "
            f"must be >= {int(tl[b] + rep[b])})")

    acts = class_contiguous(lp)
    labels = np.ascontiguousarray(tg[mask], dtype=np.int32).reshape(-1)
    offsets = label_offsets(tl)
    paths = np.empty((B, T), dtype=np.int32)
    scores = np.empty((B, T), dtype=acts.dtype)
    totals = np.empty(B, dtype=np.float64)
    with ThreadBudget(num_threads) as threads:
        _align_core.align_batch(acts, labels, offsets, np.ascontiguousarray(tl), np.ascontiguousarray(il),
                                blank, paths, scores, totals, threads)
    return paths.astype(tg.dtype, copy=False), scores


@dataclass
class TokenSpan:
    """One token of an alignment: frames [start, end) and the mean of their scores.

    What `merge_tokens` returns, one per token; ``len(span)`` is its frame count.

    Parameters
    ----------
    token : int
        The class id.
    start : int
        First frame (inclusive).
    end : int
        Last frame + 1 (exclusive).
    score : float
        Mean of the frames' scores.
    """

    token: int
    start: int  # first frame (inclusive)
    end: int    # last frame + 1 (exclusive)
    score: float

    def __len__(self) -> int:
        return self.end - self.start


def merge_tokens(tokens, scores, blank=0) -> list:
    """Token spans of one frame-level path, as torchaudio.functional.merge_tokens.

    Each maximal run of equal tokens is one span and runs of the blank are dropped, so a
    token repeated across a blank gives two spans, and adjacent equal frames give one.

    Parameters
    ----------
    tokens : array_like of int, 1-D
        A frame-level path, e.g. forced_align's ``paths[b][:input_lengths[b]]``.
    scores : array_like of real, 1-D
        Per-frame scores, as many as tokens.
    blank : int, default 0
        The blank class (its runs are dropped).

    Returns
    -------
    list of TokenSpan
        The spans in frame order.  A span's score is the mean of its frames' scores
        (computed in float64).

    Raises
    ------
    CTCValueError
        tokens or scores not 1-D, or of different lengths.
    CTCTypeError
        Non-integer tokens or blank, or scores that are not real numbers.

    Examples
    --------
    >>> import fastctc
    >>> for span in fastctc.merge_tokens([0, 1, 1, 0, 1, 2], [0.0, -1.0, -3.0, 0.0, -0.5, -0.25]):
    ...     print(span, len(span))
    TokenSpan(token=1, start=1, end=3, score=-2.0) 2
    TokenSpan(token=1, start=4, end=5, score=-0.5) 1
    TokenSpan(token=2, start=5, end=6, score=-0.25) 1
    """
    tok = as_int_array(tokens, "tokens")
    sc = np.asarray(scores)
    if tok.ndim != 1 or sc.ndim != 1:
        raise CTCValueError(f"tokens and scores must be 1-D, got shapes {tok.shape} and {sc.shape}")
    if tok.shape[0] != sc.shape[0]:
        raise CTCValueError(f"tokens and scores must have the same length, got {tok.shape[0]} and {sc.shape[0]}")
    if sc.dtype.kind not in "fiu":
        raise CTCTypeError(f"scores must be real numbers, got dtype {sc.dtype}")
    blank = check_integer(blank, "blank")
    if tok.size == 0:
        return []
    starts = np.flatnonzero(np.concatenate(([True], tok[1:] != tok[:-1])))
    ends = np.append(starts[1:], tok.size)
    # Per-span means through one cumulative sum (float64: long spans keep their digits).
    csum = np.concatenate(([0.0], np.cumsum(sc, dtype=np.float64)))
    spans = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        token = int(tok[s])
        if token != blank:
            spans.append(TokenSpan(token=token, start=s, end=e, score=float((csum[e] - csum[s]) / (e - s))))
    return spans


def ctc_posteriors(log_probs, targets, input_lengths, target_lengths, blank=0, *, num_threads=None):
    """Per-frame class occupancy (the soft alignment), with ctc_loss's arguments and layout.

    Parameters
    ----------
    log_probs : array_like, (T, N, C) or unbatched (T, C), float32 or float64
        Log-probabilities, used as given.  This argument and the next four are
        `ctc_loss`'s, in every form it accepts.
    targets : array_like of int, (N, S) or (sum(target_lengths),)
        Padded or concatenated targets.
    input_lengths : array_like of int, (N,)
        Frames per sequence.
    target_lengths : array_like of int, (N,)
        Labels per target.
    blank : int, default 0
        The blank class.
    num_threads : int or None, default None
        Keyword-only.  Threads of this call, as for `forced_align`.

    Returns
    -------
    numpy.ndarray
        log_probs' shape and dtype.  out[t, n, c] is the posterior probability that the
        path emits c at frame t: the sum over the extended-target states s labelled c of
        exp(log_alpha(t, s) + log_beta(t, s) - log_probs[t, n, c] - log p(target_n)).
        Each valid frame sums to 1; frames past input_lengths[n] and every frame of an
        infeasible target are 0.

    Raises
    ------
    CTCTypeError, CTCValueError
        As for `ctc_loss`.

    Notes
    -----
    Equal to minus d(loss)/d(log_probs) for reduction='sum', from the same single
    forward-backward pass.

    Examples
    --------
    >>> import numpy as np
    >>> import fastctc
    >>> log_probs = np.log(np.full((2, 1, 2), 0.5))
    >>> print(np.round(fastctc.ctc_posteriors(log_probs, np.array([[1]]), [2], [1])[:, 0], 4))
    [[0.3333 0.6667]
     [0.3333 0.6667]]
    """
    num_threads = check_num_threads(num_threads)
    batch, blank = check_ctc_inputs(log_probs, targets, input_lengths, target_lengths, blank)
    _, grad, _ = run(batch, blank, False, want_grad=True, num_threads=num_threads)
    np.negative(grad, out=grad)
    grad += 0  # -0.0 -> +0.0 where nothing is occupied
    if batch.unbatched:
        grad = grad[:, 0, :]
    return grad
