"""fastctc.score.vocab: the VOCAB file and the text -> class-id mapping.

VOCAB holds one symbol per line; line i is class i.  Text is split by greedy longest
match over the symbols, so multi-character symbols work.  When every symbol is one
character (the usual OCR / character-ASR vocab), a window of texts is encoded in one
NumPy lookup over the code points instead of a dictionary lookup per character.
"""
from __future__ import annotations

import numpy as np

from .._validate import label_offsets
from .errors import ItemError, UsageError, os_cause


def load_vocab(path: str) -> list:
    """Symbols of VOCAB: one per line, taken verbatim except for the line ending ("\\n" or
    "\\r\\n"); a file's final newline does not start an extra (empty) symbol."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"--vocab {path!r}: cannot read it ({os_cause(e)})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--vocab {path!r}: not UTF-8 (byte {e.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise UsageError(f"--vocab {path!r}: the file holds no symbols")
    return lines


class Tokenizer:
    """Maps text to class ids by greedy longest match over the vocab's symbols.

    The blank's symbol and empty lines never match; when a symbol appears on several
    lines, the first line wins."""

    def __init__(self, symbols, blank: int):
        self.table = {}
        for i, s in enumerate(symbols):
            if i != blank and s and s not in self.table:
                self.table[s] = i
        self.lengths = sorted({len(s) for s in self.table}, reverse=True) or [1]
        self.single = self.lengths == [1]
        self.lut = None
        if self.single and self.table:
            top = max(ord(s) for s in self.table)
            # one extra slot at the end: every code point above the vocab's maps there (-1)
            self.lut = np.full(top + 2, -1, dtype=np.int64)
            for s, i in self.table.items():
                self.lut[ord(s)] = i

    def _unknown(self, text, k):
        return ItemError(f"text symbol {text[k]!r} at character {k} is not in the vocab")

    def encode(self, text: str) -> list:
        table = self.table
        if self.single:
            out = []
            for k, ch in enumerate(text):
                i = table.get(ch)
                if i is None:
                    raise self._unknown(text, k)
                out.append(i)
            return out
        out, k = [], 0
        while k < len(text):
            for n in self.lengths:
                i = table.get(text[k:k + n])
                if i is not None:
                    out.append(i)
                    k += n
                    break
            else:
                raise self._unknown(text, k)
        return out

    def encode_many(self, texts):
        """(ids, offsets, bad) for a list of texts: ids of all texts concatenated (int64),
        offsets (len(texts) + 1) into it, and {index: ItemError} for texts that cannot be
        encoded (their slice is empty)."""
        if self.lut is None:
            parts, bad = [], {}
            for j, t in enumerate(texts):
                try:
                    parts.append(self.encode(t))
                except ItemError as e:
                    bad[j] = e
                    parts.append([])
            lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
            offsets = label_offsets(lens, with_end=True)
            ids = np.fromiter((i for p in parts for i in p), dtype=np.int64, count=int(offsets[-1]))
            return ids, offsets, bad
        lens = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        offsets = label_offsets(lens, with_end=True)
        codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
        ids = self.lut[np.minimum(codes, len(self.lut) - 1)]
        bad = {}
        unknown = np.flatnonzero(ids < 0)
        if len(unknown):
            owners = np.searchsorted(offsets, unknown, side="right") - 1
            for j in np.unique(owners).tolist():
                k = int(unknown[owners == j][0] - offsets[j])
                bad[j] = self._unknown(texts[j], k)
            keep = np.ones(len(ids), dtype=bool)
            for j in bad:
                keep[offsets[j]:offsets[j + 1]] = False
            lens[list(bad)] = 0
            offsets = label_offsets(lens, with_end=True)
            ids = ids[keep]
        return ids, offsets, bad
