"""fastctc.score.metrics: greedy (best-path) decoding and the error rates of `--decode greedy`.

cer = Levenshtein distance between transcript and hypothesis, in characters (Unicode code
points; in tokens for items given as `tokens`), divided by max(transcript length, 1).
wer = the same over whitespace-separated words (text items only).  By default both
strings are normalised first, as OCR and ASR scoring usually does: leading and trailing
whitespace stripped, every run of whitespace collapsed to one space; `raw=True` compares
them as they are (words are still split on whitespace).

The distance is Hyyrö's bit-parallel form of Myers' algorithm: one pass over the
hypothesis with the transcript held as bit masks in Python integers, so a 60-character
line costs ~60 integer steps instead of a 3,600-cell table.
"""
from __future__ import annotations

import numpy as np


def levenshtein(a, b) -> int:
    """Edit distance (insertions, deletions, substitutions, each 1) between sequences of
    hashable symbols (strings, lists of ints)."""
    if a == b:
        return 0
    m, n = len(a), len(b)
    if m == 0:
        return n
    if n == 0:
        return m
    peq = {}
    for i, c in enumerate(a):
        peq[c] = peq.get(c, 0) | (1 << i)
    full = (1 << m) - 1
    top = 1 << (m - 1)
    pv, mv, score = full, 0, m
    for c in b:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & full)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = ((ph << 1) | 1) & full
        mh = (mh << 1) & full
        pv = mh | (~(xv | ph) & full)
        mv = ph & xv
    return score


def normalise_space(s: str) -> str:
    """Leading/trailing whitespace stripped, runs of whitespace collapsed to one space."""
    return " ".join(s.split())


def text_rates(ref: str, hyp: str, raw: bool = False):
    """(cer, wer) of hypothesis `hyp` against transcript `ref`."""
    if not raw:
        ref, hyp = normalise_space(ref), normalise_space(hyp)
    cer = levenshtein(ref, hyp) / max(len(ref), 1)
    rw, hw = ref.split(), hyp.split()
    wer = levenshtein(rw, hw) / max(len(rw), 1)
    return cer, wer


def token_rate(ref, hyp) -> float:
    return levenshtein(list(ref), list(hyp)) / max(len(ref), 1)


def best_paths(batch: np.ndarray, lengths, blank: int):
    """Collapsed best-path label sequences of a padded (T, N, C) batch: per item, the
    frame-wise argmax over classes with repeats merged and blanks dropped (log_softmax is
    monotone, so logits and log-probabilities give the same path)."""
    best = batch.argmax(axis=-1)            # (T, N)
    out = []
    for n, T in enumerate(lengths):
        p = best[:T, n]
        keep = p != blank
        keep[1:] &= p[1:] != p[:-1]
        out.append(p[keep].tolist())
    return out
