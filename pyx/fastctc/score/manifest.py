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


def records(path, batch=4096, columns=None):
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
    yield from _parsed_lines(path, batch)


def _parsed_lines(path, *args, **kwargs):
    """parse_lines(file, path, 1, *args, **kwargs) over the JSON-lines manifest at path,
    an OS error while opening or reading it raised as a usage error."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"manifest {path!r}: cannot read it ({os_cause(e)})") from None
    with f:
        try:
            yield from parse_lines(f, path, 1, *args, **kwargs)
        except OSError as e:
            raise UsageError(f"manifest {path!r}: cannot read it ({os_cause(e)})") from None


def _bad_line(line, i, path):
    """The usage error for manifest line `line` (bytes), or None for a blank line."""
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return UsageError(f"manifest {path!r} line {i}: not valid JSON ({e.msg})")
    except ValueError:
        return UsageError(f"manifest {path!r} line {i}: not valid JSON (not UTF-8)")
    if type(rec) is not dict:
        return UsageError(f"manifest {path!r} line {i}: expected a JSON object")
    return None


def parse_lines(lines, path, first_line=1, batch=4096, offsets=None, every=0, ids_only=False):
    """Lists of (line number, record) from an iterable of JSONL lines (bytes); with
    ids_only, lists of id hashes instead.  With `offsets` (a list) and `every`, appends
    (byte offset, line number) of every `every`-th record, where a window starts, and
    finally (end offset, None).

    This loop runs once per manifest line in each pass, so the usual line (`{...}` and a
    newline) is parsed inline with the C scanner; anything else goes through
    _bad_line, which also writes the error message."""
    scan = _scan_once
    out = []
    pos = 0
    count = 0
    track = offsets is not None and every > 0
    for i, line in enumerate(lines, first_line):
        if track:
            start = pos
            pos += len(line)
        try:
            s = line.decode("utf-8")
            rec, end = scan(s, 0)
            n = len(s)
            if end != n and not (end == n - 1 and s[-1] == "\n") and not s[end:].isspace():
                raise ValueError
            if type(rec) is not dict:
                raise ValueError
        except (StopIteration, ValueError):
            err = _bad_line(line, i, path)
            if err is not None:
                raise err from None
            continue                          # a blank line
        if track:
            if count % every == 0:
                offsets.append((start, i))
            count += 1
        if ids_only:
            v = rec.get("id")
            if type(v) is not str or "\n" in v or "\r" in v:
                v = _id_of(rec, path, i)
            out.append(hash(v))
        else:
            out.append((i, rec))
        if len(out) >= batch:
            yield out
            out = []
    if track:
        offsets.append((pos, None))       # the end of the last window
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
    """The manifest's ids as sorted 64-bit hashes (8 bytes per item); for a JSONL
    manifest scanned with `window`, also `spans`: (first byte, end byte, first line) of
    each window of `window` records, so that worker processes can read their own."""

    def __init__(self, hashes: np.ndarray, ambiguous: set, spans=None):
        self.sorted = np.sort(hashes)
        self.count = len(hashes)
        self.ambiguous = ambiguous  # hashes that two different ids share (resolve exactly)
        self.spans = spans

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        return member_of(self.sorted, hashes)


def member_of(sorted_hashes, hashes):
    """Boolean mask: which of `hashes` are in the sorted array `sorted_hashes`."""
    if len(sorted_hashes) == 0:
        return np.zeros(len(hashes), dtype=bool)
    pos = np.searchsorted(sorted_hashes, hashes)
    pos[pos == len(sorted_hashes)] = 0
    return sorted_hashes[pos] == hashes


def hashes_of(ids) -> np.ndarray:
    return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))


def scan(path, window=0) -> Ids:
    """Pass 1 (see the module docstring)."""
    hashes = array("q")
    offsets = [] if window and not _is_parquet(path) else None
    if offsets is not None:
        for hs in _parsed_lines(path, 4096, offsets, window, ids_only=True):
            hashes.extend(hs)
    else:
        for recs in records(path, columns=("id",)):
            hashes.extend(hash(_id_of(r, path, line)) for line, r in recs)
    h = np.frombuffer(hashes, dtype=np.int64) if len(hashes) else np.zeros(0, dtype=np.int64)
    s = np.sort(h)
    same = s[1:][s[1:] == s[:-1]]
    ambiguous = set()
    if len(same):
        suspects = set(same.tolist())
        first = {}
        for recs in records(path, columns=("id",)):
            for line, r in recs:
                i = _id_of(r, path, line)
                if hash(i) in suspects:
                    if i in first:
                        raise UsageError(f"manifest {path!r} row {line}: id {i!r} already used on "
                                         f"row {first[i]}")
                    first[i] = line
        ambiguous = suspects            # different ids, one hash: compared exactly later
    spans = None
    if offsets is not None:
        spans = [(offsets[k][0], offsets[k + 1][0], offsets[k][1]) for k in range(len(offsets) - 1)]
    return Ids(h.copy(), ambiguous, spans)


def _item(rec, path, line):
    i = rec.get("id")
    if type(i) is not str or "\n" in i or "\r" in i:
        i = _id_of(rec, path, line)
    get = rec.get
    em, text, tokens = get("emissions"), get("text"), get("tokens")
    if type(em) is str and em and type(text) is str and tokens is None and len(rec) == 3:
        # the usual row, {id, emissions, text}: becomes the item itself (no copy)
        rec["id"] = i
        rec["tokens"] = None
        rec["line"] = line
        return rec
    item = {"id": i, "emissions": em, "text": text, "tokens": tokens, "line": line}
    if type(em) is str and em and type(text) is str and tokens is None:
        return item                        # nothing to check
    if type(em) is not str or not em:
        item["error"] = "manifest row has no `emissions` path"
    elif text is None and tokens is None:
        item["error"] = "manifest row has neither `text` nor `tokens`"
    elif text is not None and tokens is not None:
        item["error"] = "manifest row has both `text` and `tokens` (give one)"
    elif text is not None and type(text) is not str:
        item["error"] = f"`text` must be a string, got {type(text).__name__}"
    return item


def items_of(recs, path):
    return [_item(r, path, line) for line, r in recs]


def windows(path, size):
    """Pass 2: lists of at most `size` items, in manifest order."""
    buf = []
    for recs in records(path, batch=size):
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
