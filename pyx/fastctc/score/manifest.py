"""fastctc.score.manifest: MANIFEST (JSONL or Parquet) read in two streaming passes.

Memory must not grow with the number of items, so the manifest is never held whole:

1. `scan` reads every row once before OUT is touched: malformed JSON, a row without an
   id and a duplicate id are usage errors found here.  It keeps 8 bytes per item, the
   64-bit hash of its id (sorted, for vectorised membership tests); the rare hash shared
   by two different ids is resolved by exact comparison (`Ids.ambiguous`).
2. `windows` reads it again, `size` rows at a time, for scoring.

Rows become dicts {id, emissions, text, tokens, line} (absent keys None), plus `error`
for a row the tool cannot score (no emissions path, neither text nor tokens, ...): such a
row becomes an error row in OUT, it does not stop the run.
"""
from __future__ import annotations

import json
from array import array

import numpy as np

from .errors import UsageError, os_cause


def _clean_id(value, where):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UsageError(f"manifest {where}: `id` must be a string or an integer, got {value!r}")
    value = str(value)
    if "\n" in value or "\r" in value:
        raise UsageError(f"manifest {where}: `id` {value!r} contains a line break")
    return value


def _is_parquet(path):
    return path.lower().endswith(".parquet")


def _parquet_file(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("reading a Parquet manifest needs pyarrow (pip install pyarrow)") from None
    try:
        return pq.ParquetFile(path)
    except OSError as e:
        raise UsageError(f"manifest {path!r}: cannot read it ({os_cause(e)})") from None
    except Exception as e:  # not a Parquet file
        raise UsageError(f"manifest {path!r}: cannot read it ({e})") from None


_scan_once = json.JSONDecoder().scan_once   # the C scanner behind json.loads, minus its wrapper


def _parse_line(raw: bytes):
    """json.loads(raw) for one manifest line, ~3x faster for the usual `{...}` line."""
    try:
        s = raw.decode("utf-8")
        obj, end = _scan_once(s, 0)
        if end == len(s) or s[end:].isspace():
            return obj
    except (StopIteration, UnicodeDecodeError, ValueError):
        pass
    return json.loads(raw)           # leading blanks, or an error with json's own message


def _records(path, batch=4096, columns=None):
    """Yields lists of (row number, record dict) from MANIFEST; usage errors for rows that
    are not JSON objects."""
    if _is_parquet(path):
        pf = _parquet_file(path)
        names = set(pf.schema_arrow.names)
        cols = [c for c in (columns or ("id", "emissions", "text", "tokens")) if c in names]
        line = 0
        try:
            for rb in pf.iter_batches(batch_size=batch, columns=cols or None):
                recs = rb.to_pylist()
                yield [(line + k + 1, r) for k, r in enumerate(recs)]
                line += len(recs)
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(f"manifest {path!r}: cannot read it ({e})") from None
        return
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"manifest {path!r}: cannot read it ({os_cause(e)})") from None
    parse = _parse_line
    with f:
        out = []
        try:
            for i, line in enumerate(f, 1):
                try:
                    rec = parse(line)
                except ValueError as e:   # JSONDecodeError, UnicodeDecodeError
                    if not line.strip():
                        continue
                    msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                    raise UsageError(f"manifest {path!r} line {i}: not valid JSON ({msg})") from None
                if type(rec) is not dict:
                    raise UsageError(f"manifest {path!r} line {i}: expected a JSON object")
                out.append((i, rec))
                if len(out) >= batch:
                    yield out
                    out = []
        except OSError as e:
            raise UsageError(f"manifest {path!r}: cannot read it ({os_cause(e)})") from None
        if out:
            yield out


def _id_of(rec, path, line):
    v = rec.get("id")
    if v is None:
        raise UsageError(f"manifest {path!r} row {line}: no `id`")
    if type(v) is str and "\n" not in v and "\r" not in v:
        return v
    return _clean_id(v, f"{path!r} row {line}")


class Ids:
    """The manifest's ids as sorted 64-bit hashes (8 bytes per item)."""

    def __init__(self, hashes: np.ndarray, ambiguous: set):
        self.sorted = np.sort(hashes)
        self.count = len(hashes)
        self.ambiguous = ambiguous  # hashes that two different ids share (resolve exactly)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        return _member(self.sorted, hashes)


def _member(sorted_hashes, hashes):
    if len(sorted_hashes) == 0:
        return np.zeros(len(hashes), dtype=bool)
    pos = np.searchsorted(sorted_hashes, hashes)
    pos[pos == len(sorted_hashes)] = 0
    return sorted_hashes[pos] == hashes


def hashes_of(ids) -> np.ndarray:
    return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))


def scan(path) -> Ids:
    """Pass 1 (see the module docstring)."""
    hashes = array("q")
    for recs in _records(path, columns=("id",)):
        hashes.extend(hash(_id_of(r, path, line)) for line, r in recs)
    h = np.frombuffer(hashes, dtype=np.int64) if len(hashes) else np.zeros(0, dtype=np.int64)
    s = np.sort(h)
    same = s[1:][s[1:] == s[:-1]]
    ambiguous = set()
    if len(same):
        suspects = set(same.tolist())
        first = {}
        for recs in _records(path, columns=("id",)):
            for line, r in recs:
                i = _id_of(r, path, line)
                if hash(i) in suspects:
                    if i in first:
                        raise UsageError(f"manifest {path!r} row {line}: id {i!r} already used on "
                                         f"row {first[i]}")
                    first[i] = line
        ambiguous = suspects            # different ids, one hash: compared exactly later
    return Ids(h.copy(), ambiguous)


def _item(rec, path, line):
    item = {"id": _id_of(rec, path, line), "emissions": rec.get("emissions"), "text": rec.get("text"),
            "tokens": rec.get("tokens"), "line": line}
    em, text, tokens = item["emissions"], item["text"], item["tokens"]
    if type(em) is not str or not em:
        item["error"] = "manifest row has no `emissions` path"
    elif text is None and tokens is None:
        item["error"] = "manifest row has neither `text` nor `tokens`"
    elif text is not None and tokens is not None:
        item["error"] = "manifest row has both `text` and `tokens` (give one)"
    elif text is not None and type(text) is not str:
        item["error"] = f"`text` must be a string, got {type(text).__name__}"
    return item


def windows(path, size):
    """Pass 2: lists of at most `size` items, in manifest order."""
    buf = []
    for recs in _records(path, batch=size):
        for line, r in recs:
            buf.append(_item(r, path, line))
            if len(buf) >= size:
                yield buf
                buf = []
    if buf:
        yield buf


def read_manifest(path) -> list:
    """Every item of MANIFEST in one list (small manifests, tests, Dask shards); checks
    ids like `scan`."""
    scan(path)
    return [it for w in windows(path, 4096) for it in w]
