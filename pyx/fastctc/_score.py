"""fastctc._score: offline batch scoring of (emissions, transcript) pairs from a manifest.

This is the engine behind `fastctc score` / `fastctc align` (cli.py parses the command
line and calls `run_score`).  Pieces:

- `load_vocab` / `Tokenizer`: VOCAB file (one symbol per line, line i = class i) and the
  text -> class-id mapping (longest symbol first, so multi-character symbols work).
- `read_manifest`: JSONL or Parquet rows {id, emissions, text | tokens}.
- `EmissionLoader`: .npy files and `file.npz:key` members, paths relative to the manifest.
- `score_items`: loads a window of items, turns every bad item into a row with `error`,
  sorts the good ones by frame count (little padding), scores them in batches with
  fastctc.ctc_loss(reduction="none") and optionally aligns them.
- Output sinks (`_score_io.py`) append rows in flushed, fsync'ed chunks; a rerun with the
  same OUT reads what is there, drops a torn last line and skips every id already written.
- `score_shard`: the unit of work a dask.distributed worker runs (its own part file).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import OrderedDict

import numpy as np


class UsageError(Exception):
    """A problem with the command as a whole (exit status 2): bad option, unreadable
    manifest or vocab, unusable OUT.  Per-item problems never raise this."""


class ItemError(Exception):
    """A problem with one item: it becomes a row whose `error` column holds the message."""


COLUMNS = ["id", "nll", "nll_per_frame", "nll_per_token", "frames", "tokens", "error"]


# ----------------------------------------------------------------------------- vocab

def load_vocab(path: str) -> list:
    """Symbols of VOCAB: one per line, taken verbatim except for the line ending ("\\n" or
    "\\r\\n"); a file's final newline does not start an extra (empty) symbol."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"--vocab {path!r}: cannot read it ({e.strerror or e})") from None
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

    def encode(self, text: str) -> list:
        table = self.table
        if self.single:
            out = []
            for k, ch in enumerate(text):
                i = table.get(ch)
                if i is None:
                    raise ItemError(f"text symbol {ch!r} at character {k} is not in the vocab")
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
                raise ItemError(f"text symbol {text[k]!r} at character {k} is not in the vocab")
        return out


# -------------------------------------------------------------------------- manifest

def _clean_id(value, where):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise UsageError(f"manifest {where}: `id` must be a string or an integer, got {value!r}")
    value = str(value)
    if "\n" in value or "\r" in value:
        raise UsageError(f"manifest {where}: `id` {value!r} contains a line break")
    return value


def read_manifest(path: str) -> list:
    """Items of MANIFEST (.jsonl or .parquet) as dicts with keys id, emissions, text,
    tokens (absent ones None), line (1-based row number) and, for a malformed row whose
    id is known, `error`.  Missing or duplicate ids are usage errors: ids are how a rerun
    knows what is done."""
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise UsageError("reading a Parquet manifest needs pyarrow (pip install pyarrow)") from None
            raw_rows = pq.read_table(path).to_pylist()
            records = [(i + 1, r, None) for i, r in enumerate(raw_rows)]
        else:
            records = []
            with open(path, "r", encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UsageError(f"manifest {path!r} line {i}: not valid JSON ({e.msg})") from None
                    if not isinstance(rec, dict):
                        raise UsageError(f"manifest {path!r} line {i}: expected a JSON object")
                    records.append((i, rec, None))
    except OSError as e:
        raise UsageError(f"manifest {path!r}: cannot read it ({e.strerror or e})") from None
    except UsageError:
        raise
    except Exception as e:  # a corrupt Parquet file
        raise UsageError(f"manifest {path!r}: cannot read it ({e})") from None

    items, seen = [], {}
    for line, rec, _ in records:
        where = f"{path!r} row {line}"
        if rec.get("id") is None:
            raise UsageError(f"manifest {where}: no `id`")
        item_id = _clean_id(rec["id"], where)
        if item_id in seen:
            raise UsageError(f"manifest {where}: id {item_id!r} already used on row {seen[item_id]}")
        seen[item_id] = line
        item = {"id": item_id, "emissions": rec.get("emissions"), "text": rec.get("text"),
                "tokens": rec.get("tokens"), "line": line}
        if not isinstance(item["emissions"], str) or not item["emissions"]:
            item["error"] = "manifest row has no `emissions` path"
        elif item["text"] is None and item["tokens"] is None:
            item["error"] = "manifest row has neither `text` nor `tokens`"
        elif item["text"] is not None and item["tokens"] is not None:
            item["error"] = "manifest row has both `text` and `tokens` (give one)"
        elif item["text"] is not None and not isinstance(item["text"], str):
            item["error"] = f"`text` must be a string, got {type(item['text']).__name__}"
        items.append(item)
    return items


# ------------------------------------------------------------------------- emissions

class EmissionLoader:
    """Loads `path.npy` or `path.npz:key` (relative paths from `base`), keeping the last
    few .npz archives open: a manifest usually points many items into one archive."""

    def __init__(self, base: str, keep_open: int = 4):
        self.base = base
        self.keep_open = keep_open
        self._npz = OrderedDict()

    def resolve(self, spec: str):
        """(file path, key or None)."""
        key = None
        low = spec.lower()
        cut = low.rfind(".npz:")
        if cut >= 0:
            spec, key = spec[:cut + 4], spec[cut + 5:]
        path = spec if os.path.isabs(spec) else os.path.join(self.base, spec)
        return path, key

    def load(self, spec: str) -> np.ndarray:
        path, key = self.resolve(spec)
        try:
            if key is None and not path.lower().endswith(".npz"):
                return np.load(path, allow_pickle=False)
            entry = self._npz.get(path)
            if entry is None:
                archive = np.load(path, allow_pickle=False)
                if not isinstance(archive, np.lib.npyio.NpzFile):
                    raise ItemError(f"emissions {spec!r}: {path} is not an .npz archive")
                # a set of member names: `key in archive.files` is a list scan per item
                entry = self._npz[path] = (archive, set(archive.files))
                while len(self._npz) > self.keep_open:
                    self._npz.popitem(last=False)[1][0].close()
            else:
                self._npz.move_to_end(path)
            archive, names = entry
            if key is None:
                if len(names) != 1:
                    raise ItemError(f"emissions {spec!r}: the archive holds {len(names)} arrays; "
                                    "name one as file.npz:key")
                key = archive.files[0]
            if key not in names:
                raise ItemError(f"emissions {spec!r}: no array {key!r} in {path}")
            return archive[key]
        except ItemError:
            raise
        except FileNotFoundError:
            raise ItemError(f"emissions file not found: {path}") from None
        except (OSError, ValueError, EOFError) as e:
            raise ItemError(f"emissions {spec!r}: cannot read {path} ({e})") from None
        except Exception as e:  # zip errors, corrupt headers, ...
            raise ItemError(f"emissions {spec!r}: cannot read {path} ({type(e).__name__}: {e})") from None

    def close(self):
        while self._npz:
            self._npz.popitem()[1][0].close()


def frames_needed(tokens) -> int:
    """Fewest frames a CTC path for `tokens` needs: one per token plus one blank between
    each pair of equal neighbours."""
    return len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)


def prepare(item: dict, loader: EmissionLoader, tokenizer: Tokenizer, n_classes: int, blank: int):
    """(emissions (T, C) float32/float64, tokens) for a good item; raises ItemError."""
    if item.get("error"):
        raise ItemError(item["error"])
    if item["tokens"] is not None:
        toks = item["tokens"]
        if isinstance(toks, np.ndarray):
            toks = toks.tolist()
        if not isinstance(toks, (list, tuple)):
            raise ItemError(f"`tokens` must be a list of class ids, got {type(toks).__name__}")
        out = []
        for k, t in enumerate(toks):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ItemError(f"tokens[{k}] = {t!r} is not an integer")
            t = int(t)
            if not 0 <= t < n_classes:
                raise ItemError(f"tokens[{k}] = {t} is out of range [0, {n_classes})")
            if t == blank:
                raise ItemError(f"tokens[{k}] = {t} is the blank")
            out.append(t)
        tokens = out
    else:
        tokens = tokenizer.encode(item["text"])
    arr = loader.load(item["emissions"])
    if arr.ndim != 2:
        raise ItemError(f"emissions must be 2-D (T, C), got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ItemError(f"emissions dtype {arr.dtype} is not floating point")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)   # float16 and friends: score in float32
    T, C = arr.shape
    if C != n_classes:
        raise ItemError(f"emissions have C = {C} classes, the vocab has {n_classes} symbols")
    if T == 0:
        raise ItemError("emissions have no frames (T = 0)")
    # one reduction finds NaN and +inf together (max propagates NaN; NaN < inf is False);
    # the costlier search for the first bad cell runs only on failure
    if not arr.max() < np.inf:
        t, c = (int(v) for v in np.argwhere(np.isnan(arr) | (arr == np.inf))[0])
        raise ItemError(f"emissions contain {arr[t, c]} at frame {t}, class {c}")
    need = frames_needed(tokens)
    if need > T:
        raise _infeasible(need, len(tokens), T)
    return np.ascontiguousarray(arr), tokens


def _infeasible(need, n_tokens, T):
    e = ItemError(f"infeasible: the transcript needs at least {need} frames ({n_tokens} tokens), "
                  f"the emissions have {T}")
    e.frames, e.tokens = T, n_tokens
    return e


# --------------------------------------------------------------------------- scoring

class Options:
    """Everything a scorer needs, picklable (sent to Dask workers)."""

    def __init__(self, symbols, blank=0, from_logits=False, batch_size=32, threads=None,
                 device="cpu", align=False, chunk_size=512):
        self.symbols = list(symbols)
        self.blank = blank
        self.from_logits = from_logits
        self.batch_size = batch_size
        self.threads = threads
        self.device = device
        self.align = align
        self.chunk_size = chunk_size


def _error_row(item_id, message, frames=None, tokens=None, align=False):
    row = {"id": item_id, "nll": None, "nll_per_frame": None, "nll_per_token": None,
           "frames": frames, "tokens": tokens, "error": " ".join(str(message).split())}
    if align:
        row["spans"] = None
    return row


def _log_softmax(x):
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _losses(batch_lp, flat_targets, in_lens, tgt_lens, opts):
    """Per-sequence NLL of one padded (T, N, C) batch on the chosen device."""
    if opts.device == "cuda":
        import torch
        import fastctc.torch as ftorch
        lp = torch.from_numpy(batch_lp).cuda()
        if opts.from_logits:
            lp = torch.log_softmax(lp, dim=-1)
        out = ftorch.ctc_loss(lp, torch.from_numpy(flat_targets).cuda(),
                              torch.from_numpy(in_lens), torch.from_numpy(tgt_lens),
                              blank=opts.blank, reduction="none")
        return out.detach().cpu().numpy()
    from ._engine import ctc_loss
    return ctc_loss(batch_lp, flat_targets, in_lens, tgt_lens, blank=opts.blank, reduction="none",
                    from_logits=opts.from_logits, num_threads=opts.threads)


def _spans(arrs, toks, opts):
    """Token spans for each (emissions (T, C), tokens) pair via fastctc.forced_align."""
    from ._align import forced_align, merge_tokens
    out = []
    for arr, tok in zip(arrs, toks):
        lp = _log_softmax(arr.astype(np.float64)).astype(arr.dtype) if opts.from_logits else arr
        T = arr.shape[0]
        targets = np.asarray([tok], dtype=np.int64).reshape(1, len(tok))
        paths, scores = forced_align(lp[None], targets, np.array([T]), np.array([len(tok)]),
                                     blank=opts.blank)
        spans = merge_tokens(np.asarray(paths)[0], np.asarray(scores)[0], blank=opts.blank)
        out.append([{"token": int(s.token), "symbol": opts.symbols[int(s.token)],
                     "start": int(s.start), "end": int(s.end), "score": float(s.score)}
                    for s in spans])
    return out


def score_items(items, loader: EmissionLoader, opts: Options, tokenizer=None, on_batch=None):
    """Rows (manifest order) for `items`.  on_batch(n) is called after every n rows."""
    tokenizer = tokenizer or Tokenizer(opts.symbols, opts.blank)
    C = len(opts.symbols)
    rows = [None] * len(items)
    good = []  # (index, emissions, tokens)
    for i, item in enumerate(items):
        try:
            arr, tok = prepare(item, loader, tokenizer, C, opts.blank)
            good.append((i, arr, tok))
        except ItemError as e:
            rows[i] = _error_row(item["id"], str(e), getattr(e, "frames", None),
                                 getattr(e, "tokens", None), opts.align)
    n_err = len(items) - len(good)
    if on_batch and n_err:
        on_batch(n_err)
    # Length bucketing: sorting by (dtype, T) puts similar lengths side by side, so the
    # padded (T_max, N, C) batch wastes little work and memory.
    good.sort(key=lambda g: (g[1].dtype.itemsize, g[1].shape[0]))
    bs = max(1, opts.batch_size)
    k = 0
    while k < len(good):
        dtype = good[k][1].dtype
        group = [good[k]]
        k += 1
        while k < len(good) and len(group) < bs and good[k][1].dtype == dtype:
            group.append(good[k])
            k += 1
        Tmax = group[-1][1].shape[0]
        batch = np.zeros((Tmax, len(group), C), dtype=dtype)
        for n, (_, arr, _) in enumerate(group):
            batch[:arr.shape[0], n] = arr
        in_lens = np.array([g[1].shape[0] for g in group], dtype=np.int64)
        tgt_lens = np.array([len(g[2]) for g in group], dtype=np.int64)
        flat = np.array([t for g in group for t in g[2]], dtype=np.int64)
        nll = np.asarray(_losses(batch, flat, in_lens, tgt_lens, opts), dtype=np.float64)
        spans = _spans([g[1] for g in group], [g[2] for g in group], opts) if opts.align else None
        for n, (i, arr, tok) in enumerate(group):
            T, L, v = arr.shape[0], len(tok), float(nll[n])
            if not math.isfinite(v):
                rows[i] = _error_row(items[i]["id"],
                                     "infeasible: no alignment of the transcript has non-zero "
                                     "probability under these emissions" if v > 0 else f"loss is {v}",
                                     T, L, opts.align)
                continue
            row = {"id": items[i]["id"], "nll": v, "nll_per_frame": v / T,
                   "nll_per_token": v / max(L, 1), "frames": T, "tokens": L, "error": None}
            if opts.align:
                row["spans"] = spans[n]
            rows[i] = row
        if on_batch:
            on_batch(len(group))
    return rows


# ----------------------------------------------------------------------- Dask worker

def score_shard(items, opts: Options, base: str, part_path: str, chunk_delay: float = 0.0):
    """Scores `items` into the JSONL part file `part_path`, skipping ids it already holds
    (a shard restarted after a crash resumes).  Returns (rows written, failures)."""
    from ._score_io import JsonlSink
    sink = JsonlSink(part_path, align=opts.align)
    done = {r["id"] for r in sink.open()}
    todo = [it for it in items if it["id"] not in done]
    loader = EmissionLoader(base)
    tokenizer = Tokenizer(opts.symbols, opts.blank)
    written = failed = 0
    try:
        for s in range(0, len(todo), max(1, opts.chunk_size)):
            rows = score_items(todo[s:s + opts.chunk_size], loader, opts, tokenizer)
            sink.append(rows)
            written += len(rows)
            failed += sum(1 for r in rows if r["error"])
            if chunk_delay:
                time.sleep(chunk_delay)
    finally:
        loader.close()
        sink.close()
    return written, failed
