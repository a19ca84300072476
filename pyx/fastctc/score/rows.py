"""fastctc.score.rows: the output columns, a window of result rows held column by column,
and the JSONL / CSV encoders.

A window's results stay columnar (NumPy arrays for the numbers, lists for strings) from
the scorer to the file: the per-frame and per-token NLLs are one array division each, the
summary looks at a whole column at once, and each encoder formats a column with one list
comprehension and a row with one `%`, a few times faster than building and dumping a dict
per row.  The JSONL written is byte for byte what json.dumps(row, ensure_ascii=False)
writes (tests check this); nulls are NaN (floats) and -1 (counts) inside the arrays.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np

BASE_COLUMNS = ["id", "nll", "nll_per_frame", "nll_per_token", "frames", "tokens", "error"]
DECODE_COLUMNS = ["hypothesis", "cer", "wer"]
FLOAT_COLUMNS = {"nll", "nll_per_frame", "nll_per_token", "cer", "wer"}
INT_COLUMNS = {"frames", "tokens"}


def columns(align=False, decode=False):
    return BASE_COLUMNS + (DECODE_COLUMNS if decode else []) + (["spans"] if align else [])


class Rows:
    """Result rows of one window, column by column (see the module docstring)."""

    def __init__(self, ids, nll, frames, tokens, error, hypothesis=None, cer=None, wer=None, spans=None):
        self.ids = ids                  # list of str
        self.nll = nll                  # float64, NaN = null
        self.frames = frames            # int64, -1 = null
        self.tokens = tokens            # int64, -1 = null
        self.error = error              # list of str | None
        self.hypothesis = hypothesis    # list of str | None, or None (no --decode)
        self.cer = cer                  # float64, NaN = null, or None
        self.wer = wer
        self.spans = spans              # list of list | None, or None (no --align)

    def __len__(self):
        return len(self.ids)

    def column(self, name):
        """A float or int column as an array (NaN / -1 for null), others as lists."""
        if name == "nll_per_frame":
            with np.errstate(invalid="ignore", divide="ignore"):
                return self.nll / self.frames
        if name == "nll_per_token":
            with np.errstate(invalid="ignore", divide="ignore"):
                return self.nll / np.maximum(self.tokens, 1)
        return getattr(self, "ids" if name == "id" else name)

    def dicts(self):
        """The rows as dicts with Python values (None for null)."""
        cols = columns(self.spans is not None, self.hypothesis is not None)
        data = [self._py(c) for c in cols]
        return [dict(zip(cols, vals)) for vals in zip(*data)]

    def _py(self, c):
        v = self.column(c)
        if c in FLOAT_COLUMNS:
            return [None if x != x else x for x in v.tolist()]
        if c in INT_COLUMNS:
            return [None if x < 0 else x for x in v.tolist()]
        return list(v)

    @classmethod
    def from_dicts(cls, rows, cols):
        """Rows from dicts (rows read back from a file)."""
        def f(c):
            return np.array([np.nan if r.get(c) is None else r[c] for r in rows], dtype=np.float64)

        def i(c):
            return np.array([-1 if r.get(c) is None else r[c] for r in rows], dtype=np.int64)
        decode = "hypothesis" in cols
        return cls([r["id"] for r in rows], f("nll"), i("frames"), i("tokens"), [r.get("error") for r in rows],
                   [r.get("hypothesis") for r in rows] if decode else None,
                   f("cer") if decode else None, f("wer") if decode else None,
                   [r.get("spans") for r in rows] if "spans" in cols else None)


def concat(parts):
    """One Rows from several (same columns)."""
    if len(parts) == 1:
        return parts[0]

    def cat(name):
        vals = [getattr(p, name) for p in parts]
        if vals[0] is None:
            return None
        if isinstance(vals[0], np.ndarray):
            return np.concatenate(vals)
        return [x for v in vals for x in v]
    return Rows(*(cat(n) for n in ("ids", "nll", "frames", "tokens", "error", "hypothesis", "cer",
                                   "wer", "spans")))


# ---------------------------------------------------------------------- JSONL

def json_str(s):
    """json.dumps(s, ensure_ascii=False), without a call into json for plain strings."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return '"' + s + '"'
    return json.dumps(s, ensure_ascii=False)


def _enc(rows, c):
    v = rows.column(c)
    if c in FLOAT_COLUMNS:
        if not np.isnan(v).any():                 # the usual window: no nulls to look for
            return list(map(float.__repr__, v.tolist()))
        r = float.__repr__
        return ["null" if x != x else r(x) for x in v.tolist()]
    if c in INT_COLUMNS:
        if not (v < 0).any():
            return list(map(int.__repr__, v.tolist()))
        r = int.__repr__
        return ["null" if x < 0 else r(x) for x in v.tolist()]
    if c == "spans":
        return ["null" if x is None else json.dumps(x, ensure_ascii=False, allow_nan=False) for x in v]
    if c == "error" and v.count(None) == len(v):
        return ["null"] * len(v)
    if c == "id":
        whole = "".join(v)                  # one check for the window's plain ids
        if whole.isascii() and whole.isprintable() and '"' not in whole and "\\" not in whole:
            return ['"' + x + '"' for x in v]
    return ["null" if x is None else json_str(x) for x in v]


def encode_jsonl(rows: Rows, cols) -> bytes:
    if not len(rows):
        return b""
    fmt = "{" + ", ".join(f'"{c}": %s' for c in cols) + "}\n"
    return "".join(map(fmt.__mod__, zip(*[_enc(rows, c) for c in cols]))).encode("utf-8")


# ---------------------------------------------------------------------- CSV

def _cells(rows, c):
    v = rows.column(c)
    if c in FLOAT_COLUMNS:
        return [None if x != x else x for x in v.tolist()]     # csv writes repr(): round-trips
    if c in INT_COLUMNS:
        return [None if x < 0 else x for x in v.tolist()]
    if c == "spans":
        return [None if x is None else json.dumps(x, ensure_ascii=False) for x in v]
    return v


def encode_csv(rows: Rows, cols) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(zip(*[_cells(rows, c) for c in cols]))
    return buf.getvalue().encode("utf-8")
