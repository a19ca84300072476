"""fastctc.score.run: the `fastctc score` / `fastctc align` driver (local or Dask).

run_score(ScoreOptions(...)) -> exit status (fastctc.score.errors): 0 every item scored,
1 some items failed (their rows carry `error`), 2 usage error (raised as UsageError, before
this run scored anything), 3 OUT could not be written mid-run (raised as OutputError; the
rows written are kept).  cli.py prints the one-line message of either.

Order of work:
  1. read VOCAB, check the options, scan MANIFEST (ids only; usage errors stop here,
     before OUT is touched) and check that OUT is none of the inputs;
  2. lock OUT (a second run on it stops with a usage error), open it: a torn last line is
     cut, damaged lines and repeated ids are set aside in OUT.bad;
  3. read the rows OUT holds (ids as 64-bit hashes: memory does not grow with the item
     count) and fold in rows left in OUT + ".parts/" by an interrupted Dask run;
  4. stream the manifest again and score what is missing: locally in windows of
     --chunk-size items, each appended to OUT in one write; or on Dask, one task per shard
     of --shard-size manifest items writing its own part file, merged when all are done;
  5. finalize OUT (Parquet is written here) and print the summary (counts, the first
     failures, the worst items by --rank-by, kept in a bounded heap).
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import io
import os
import shutil
import sys
import time
from typing import Optional

import numpy as np

from .emissions import EmissionLoader
from .errors import EXIT_ITEMS_FAILED, EXIT_OK, UsageError
from .manifest import hashes_of, items_of, member_of, parse_lines, records, scan, windows
from .rows import columns
from .scorer import Scorer
from .sinks import JsonlSink, OutLock, check_out_path, make_sink, try_lock_file
from .vocab import load_vocab

RANK_KEYS = ("nll_per_frame", "nll_per_token", "nll", "cer", "wer")


@dataclasses.dataclass
class ScoreOptions:
    """Everything `fastctc score` / `fastctc align` takes (the command line's options).

    One field per command-line option, with the same name (``-`` written as ``_``); the
    defaults are the command's.  `run_score` checks them (a bad value is a UsageError).

    Parameters
    ----------
    manifest : str
        MANIFEST: JSONL (or Parquet, with pyarrow), one item per row with ``id``,
        ``emissions`` (a ``.npy`` file or ``file.npz:key``, relative to the manifest's
        folder) and ``text`` or ``tokens``.
    vocab : str
        VOCAB: one symbol per line; line i is class i, the blank's line included.
    out : str
        OUT: ``.jsonl``, ``.csv`` or ``.parquet`` (the extension picks the format).
    command : str, default 'score'
        "score" or "align": the label of messages and summary.
    blank : int, default 0
        The blank class, in [0, number of symbols).
    from_logits : bool, default False
        The emissions are unnormalised scores (log_softmax applied inside the engine),
        not log-probabilities.
    batch_size : int, default 256
        Items per engine batch (>= 1); inside a window items are sorted by frame count.
    chunk_size : int, default 4096
        Items per window read from the manifest and appended to OUT in one write (>= 1).
    threads : int or None, default None
        CPU cores to use (>= 1); None: all cores or OMP_NUM_THREADS.
    jobs : int or None, default None
        Worker processes (Linux, >= 1); None: one per core (or ``threads``).  1 scores in
        the calling process.
    device : {'cpu', 'cuda'}, default 'cpu'
        'cuda': the loss through fastctc.torch on CUDA tensors (a usage error when no GPU
        is usable).
    align : bool, default False
        Add the ``spans`` column (token spans on the best path), as ``fastctc align``.
    decode : {None, 'greedy'}, default None
        'greedy' adds the ``hypothesis``, ``cer`` and ``wer`` columns.
    compare_raw : bool, default False
        cer/wer on the strings as they are (no whitespace normalisation); needs
        decode='greedy'.
    dask : str or None, default None
        A dask.distributed scheduler address, or ``local:N`` for a LocalCluster of N
        workers; None runs locally.
    shard_size : int, default 2000
        Manifest items per Dask task (>= 1).
    quiet : bool, default False
        No progress bar, no summary.
    worst : int, default 10
        How many worst-scoring items the summary lists (>= 0).
    rank_by : {'nll_per_frame', 'nll_per_token', 'nll', 'cer', 'wer'}, default 'nll_per_frame'
        The summary's ranking column; cer and wer need decode='greedy'.
    """
    manifest: str
    vocab: str
    out: str
    command: str = "score"          # "score" or "align": the label of messages and summary
    blank: int = 0
    from_logits: bool = False
    batch_size: int = 256
    chunk_size: int = 4096
    threads: Optional[int] = None
    jobs: Optional[int] = None      # worker processes (Linux); None: one per core (--threads)
    device: str = "cpu"
    align: bool = False
    decode: Optional[str] = None    # None or "greedy"
    compare_raw: bool = False       # cer/wer on the strings as they are (no whitespace normalisation)
    dask: Optional[str] = None
    shard_size: int = 2000
    quiet: bool = False
    worst: int = 10
    rank_by: str = "nll_per_frame"


class Progress:
    """One-line progress bar on a terminal: done/total, items/s, ETA."""

    def __init__(self, total, already, enabled, stream):
        self.total, self.count, self.start_count = total, already, already
        self.enabled, self.stream = enabled, stream
        self.t0 = time.monotonic()
        self.last = 0.0

    def update(self, n):
        self.count += n
        if self.enabled:
            now = time.monotonic()
            if now - self.last >= 0.1 or self.count >= self.total:
                self.last = now
                self.draw(now)

    def draw(self, now):
        done = self.count - self.start_count
        rate = done / max(now - self.t0, 1e-9)
        left = self.total - self.count
        eta = _hms(left / rate) if rate > 0 else "?"
        frac = self.count / self.total if self.total else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r[{bar:<30}] {self.count}/{self.total} {frac:6.1%}  "
                          f"{rate:8.1f} items/s  ETA {eta}  ")
        self.stream.flush()

    def close(self):
        if self.enabled:
            self.draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _test_delay():
    """Seconds to sleep after each chunk: a hook for the kill-and-resume tests only."""
    try:
        return float(os.environ.get("FASTCTC_SCORE_TEST_DELAY", "0") or 0)
    except ValueError:
        return 0.0


_NO_TEXT = object()


class Summary:
    """What the closing summary needs, in memory bounded by --worst: counts, the first ten
    failures and a min-heap of the `worst` highest rows by the rank column."""

    def __init__(self, rank_by, worst):
        self.rank_by, self.worst = rank_by, worst
        self.rows = self.failed = 0
        self.failures = []
        self.heap = []
        self.seq = 0

    def add(self, row, text=_NO_TEXT):
        self.rows += 1
        if row.get("error"):
            self.failed += 1
            if len(self.failures) < 10:
                self.failures.append((row["id"], row["error"]))
            return
        v = row.get(self.rank_by)
        if v is None or self.worst <= 0:
            return
        self.seq += 1
        # ties: the earlier row ranks higher (it is kept; -seq is larger for earlier rows)
        entry = [v, -self.seq, row["id"], row.get("nll"), row.get("hypothesis"), text]
        if len(self.heap) < self.worst:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, entry)

    def add_rows(self, w, texts):
        """A scored window (Rows) and its items' transcripts, column at a time."""
        n = len(w)
        self.rows += n
        errs = [k for k, e in enumerate(w.error) if e is not None]
        if errs:
            self.failed += len(errs)
            for k in errs[:max(0, 10 - len(self.failures))]:
                self.failures.append((w.ids[k], w.error[k]))
        if self.worst <= 0:
            return
        vals = np.array(w.column(self.rank_by), dtype=np.float64)
        vals[errs] = np.nan
        if len(self.heap) >= self.worst:
            cand = np.flatnonzero(vals > self.heap[0][0])
        else:
            cand = np.flatnonzero(~np.isnan(vals))
        for k in cand.tolist():
            self.seq += 1
            entry = [float(vals[k]), -self.seq, w.ids[k], float(w.nll[k]),
                     w.hypothesis[k] if w.hypothesis is not None else None, texts[k]]
            if len(self.heap) < self.worst:
                heapq.heappush(self.heap, entry)
            elif entry[:2] > self.heap[0][:2]:
                heapq.heapreplace(self.heap, entry)

    def needs_text(self):
        return any(e[5] is _NO_TEXT for e in self.heap)

    def fill_text(self, items):
        want = {e[2]: e for e in self.heap if e[5] is _NO_TEXT}
        if want:
            for it in items:
                e = want.get(it["id"])
                if e is not None:
                    e[5] = it["text"] if it["text"] is not None else it["tokens"]

    def write(self, stream, label, out, n_run, elapsed):
        rate = n_run / elapsed if elapsed > 0 else float("inf")
        w = stream.write
        w(f"fastctc {label}: {self.rows} items in {out} ({n_run} scored by this run in {elapsed:.2f} s, "
          f"{rate:.1f} items/s); {self.rows - self.failed} scored, {self.failed} failed\n")
        if self.failed:
            w(f"failed items ({self.failed}):\n")
            for item_id, err in self.failures:
                w(f"  {item_id}: {err}\n")
            if self.failed > len(self.failures):
                w(f"  ... {self.failed - len(self.failures)} more (rows with `error` set in {out})\n")
        top = sorted(self.heap, reverse=True)
        if top:
            width = max(len(e[2]) for e in top)
            w(f"worst-scoring items by {self.rank_by} (highest first):\n")
            for v, _, item_id, nll, hyp, text in top:
                text = None if text is _NO_TEXT else text
                shown = repr(_short(text))
                line = f"  {item_id:<{width}}  {self.rank_by} {v:9.4f}  nll {nll:9.3f}  {shown}"
                if hyp is not None:
                    line += f"  read {_short(hyp)!r}"
                w(line + "\n")
        stream.flush()


def _short(text):
    return text if not isinstance(text, str) or len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- checks

def _check_options(o: ScoreOptions, n_symbols):
    if o.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {o.batch_size}")
    if o.chunk_size < 1:
        raise UsageError(f"--chunk-size must be >= 1, got {o.chunk_size}")
    if o.shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {o.shard_size}")
    if o.threads is not None and o.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {o.threads}")
    if o.jobs is not None and o.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {o.jobs}")
    if o.worst < 0:
        raise UsageError(f"--worst must be >= 0, got {o.worst}")
    if not 0 <= o.blank < n_symbols:
        raise UsageError(f"--blank {o.blank} is out of range [0, {n_symbols}) for a vocab of {n_symbols} symbols")
    if o.decode not in (None, "greedy"):
        raise UsageError(f"--decode must be greedy, got {o.decode!r}")
    if o.rank_by not in RANK_KEYS:
        raise UsageError(f"--rank-by must be one of {', '.join(RANK_KEYS)}, got {o.rank_by!r}")
    if o.rank_by in ("cer", "wer") and not o.decode:
        raise UsageError(f"--rank-by {o.rank_by} needs --decode greedy (the error rates come from "
                         "the greedy hypothesis)")
    if o.compare_raw and not o.decode:
        raise UsageError("--compare-raw needs --decode greedy")
    if o.device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {o.device!r}")
    if o.device == "cuda":
        try:
            import torch
        except ImportError:
            raise UsageError("--device cuda needs PyTorch with CUDA (and fastctc's GPU path)") from None
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
        try:
            import fastctc.torch  # noqa: F401
        except ImportError as e:
            raise UsageError(f"--device cuda needs fastctc.torch ({e})") from None


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_out_is_no_input(o: ScoreOptions, out_files, base):
    """Usage error when OUT (or its journal) is the manifest, the vocab or an emissions
    file: the same file under any name (same device and inode)."""
    outs = {}
    for p in out_files:
        ident = _identity(p)
        if ident is not None:
            outs[ident] = p
    if not outs:
        return
    for what, p in (("the manifest", o.manifest), ("the vocab", o.vocab)):
        hit = outs.get(_identity(p))
        if hit:
            raise UsageError(f"--out {o.out!r}: {hit} is {what} ({p}); writing there would destroy it")
    loader = EmissionLoader(base)
    last = None
    for recs in records(o.manifest, columns=("emissions",)):
        for line, r in recs:
            spec = r.get("emissions")
            if not isinstance(spec, str) or not spec or spec == last:
                continue
            last = spec
            path = loader.resolve(spec)[0]
            hit = outs.get(_identity(path))
            if hit:
                raise UsageError(f"--out {o.out!r}: {hit} is the emissions file of manifest row {line} "
                                 f"({path}); writing there would destroy it")


# --------------------------------------------------------------------------- done set

class Done:
    """Ids OUT already holds, as sorted hashes (plus exact ids where two manifest ids
    share a hash)."""

    def __init__(self, ambiguous):
        self.ambiguous = ambiguous
        self.parts = []
        self.exact = set()
        self.sorted = np.zeros(0, dtype=np.int64)
        self.count = 0

    def add(self, ids_list, hashes):
        self.parts.append(hashes)
        self.count += len(hashes)
        if self.ambiguous:
            for i, h in zip(ids_list, hashes.tolist()):
                if h in self.ambiguous:
                    self.exact.add(i)

    def freeze(self):
        if self.parts:
            self.sorted = np.sort(np.concatenate([self.sorted] + self.parts))
            self.parts = []

    def mask(self, ids_list, hashes=None):
        hashes = hashes_of(ids_list) if hashes is None else hashes
        m = member_of(self.sorted, hashes)
        if self.ambiguous:
            for k, h in enumerate(hashes.tolist()):
                if h in self.ambiguous:
                    m[k] = ids_list[k] in self.exact
        return m


def _absorb(rows, manifest_ids, done, summary, sink=None):
    """Counts rows of OUT (or of a part file) whose ids are in the manifest and not yet
    done; appends them to `sink` when given.  Returns how many were new."""
    if not rows:
        return 0
    ids_list = [r["id"] for r in rows]
    h = hashes_of(ids_list)
    wanted = manifest_ids.contains(h)
    if sink is not None:
        wanted &= ~done.mask(ids_list, h)
    keep = np.flatnonzero(wanted).tolist()
    if not keep:
        return 0
    new = [rows[k] for k in keep]
    if sink is not None:
        sink.append(new)
    done.add([ids_list[k] for k in keep], h[keep])
    for r in new:
        summary.add(r)
    return len(new)


def _merge_parts(parts_dir, sink, manifest_ids, done, summary):
    """Appends rows of leftover part files whose ids OUT lacks; deletes the folder.  A part
    file a Dask worker still holds locked is a usage error (its run is not over)."""
    if not os.path.isdir(parts_dir):
        return 0
    added = 0
    cols = sink.cols
    for name in sorted(os.listdir(parts_dir)):
        if not name.endswith(".jsonl"):
            continue
        path = os.path.join(parts_dir, name)
        fd = try_lock_file(path)
        if fd is None:
            raise UsageError(f"{path} is still being written by a Dask worker of an earlier run; "
                             "wait for it to finish (or stop it) and rerun")
        try:
            part = JsonlSink(path, cols)
            part.open()
            rows = list(part.rows())
            part.close()
            done.freeze()
            added += _absorb(rows, manifest_ids, done, summary, sink)
            done.freeze()
        finally:
            os.close(fd)
    shutil.rmtree(parts_dir)
    return added


# --------------------------------------------------------------------------- workers

# Worker processes (Linux): forked after OUT has been read, so they inherit the scorer,
# the set of done ids (same hash seed as the parent) and the manifest's window spans;
# each reads, parses and scores its own windows of the manifest and returns the encoded
# rows, which the parent alone writes to OUT, in manifest order.  Each worker runs the
# engine on one thread: the cores are shared out by process, not by OpenMP thread (and a
# forked child never needs an OpenMP thread pool its parent may have started).
_WORKER = {}


def _fork_context():
    if not sys.platform.startswith("linux"):
        return None
    import multiprocessing
    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def _jobs(o: ScoreOptions, n_windows):
    if o.device != "cpu" or n_windows < 2 or _fork_context() is None:
        return 1
    if o.jobs is not None:
        return max(1, min(o.jobs, n_windows))
    if "jax" in sys.modules:
        # JAX runs threads of its own and warns that a fork may deadlock: by default a
        # process that has imported it scores in-process (--jobs N still forks)
        return 1
    from .._engine import default_threads
    return max(1, min(o.threads or default_threads(), n_windows, 16))


def _init_worker():
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's to handle
    # the parent's OUT.lock and OUT descriptors came along with the fork: close them, so
    # that the lock ends with the parent (an flock lasts while any copy is open)
    for fd in _WORKER["parent_fds"]:
        try:
            os.close(fd)
        except OSError:
            pass
    _WORKER["loader"] = EmissionLoader(_WORKER["base"], forbidden=_WORKER["forbidden"])


def _work(span):
    """Scores one window of the manifest (bytes start..end, first line `line0`)."""
    start, end, line0 = span
    manifest, scorer, done, encode, cols = (_WORKER[k] for k in ("manifest", "scorer", "done", "encode", "cols"))
    with open(manifest, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    # io.BytesIO splits lines at b"\n" only, as the parent's pass over the file did
    window = [it for recs in parse_lines(io.BytesIO(data), manifest, line0, 1 << 30)
              for it in items_of(recs, manifest)]
    todo = _pending(window, done)
    if not todo:
        return len(window), None, None, b""
    rows = scorer.score(todo, _WORKER["loader"])
    blob = encode(rows, cols)
    rows.spans = None                   # the parent's summary does not need them
    return len(window), rows, [_text(it) for it in todo], blob


def _pending(window, done):
    if not done.count:
        return window
    m = done.mask([it["id"] for it in window])
    return [it for it, d in zip(window, m.tolist()) if not d] if m.any() else window


def _text(it):
    return it["text"] if it["text"] is not None else it["tokens"]


def _run_workers(o, scorer, jobs, spans, done, base, forbidden, sink, summary, progress, delay, parent_fds):
    ctx = _fork_context()
    worker_scorer = Scorer(scorer.symbols, scorer.blank, scorer.from_logits, scorer.batch_size, 1,
                           scorer.device, scorer.align, scorer.decode, scorer.compare_raw)
    _WORKER.update(manifest=o.manifest, scorer=worker_scorer, done=done, base=base, forbidden=forbidden,
                   encode=sink.encoder(), cols=sink.cols, parent_fds=parent_fds)
    pool = ctx.Pool(jobs, initializer=_init_worker)
    try:
        pending = collections.deque()
        tasks = iter(spans)
        while True:
            while len(pending) < 2 * jobs:              # bounded: memory does not grow
                span = next(tasks, None)
                if span is None:
                    break
                pending.append(pool.apply_async(_work, (span,)))
            if not pending:
                break
            _, rows, texts, blob = pending.popleft().get()
            if rows is None:
                continue
            sink.append_encoded(blob, len(rows))
            summary.add_rows(rows, texts)
            progress.update(len(rows))
            if delay:
                time.sleep(delay)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        _WORKER.clear()


# --------------------------------------------------------------------------- Dask

def score_shard(items, scorer: Scorer, base: str, part_path: str, chunk_size: int,
                chunk_delay: float = 0.0):
    """Scores `items` into the JSONL part file `part_path`, skipping ids it already holds
    (a shard restarted after a crash resumes); holds an exclusive lock on the part file
    while writing it.  Returns (rows written, failures)."""
    cols = columns(scorer.align, bool(scorer.decode))
    sink = JsonlSink(part_path, cols)
    open(part_path, "ab").close()
    fd = try_lock_file(part_path)
    if fd is None:
        raise RuntimeError(f"{part_path} is locked by another worker")
    loader = EmissionLoader(base)
    written = failed = 0
    try:
        sink.open()
        done = {r["id"] for r in sink.rows()}
        todo = [it for it in items if it["id"] not in done]
        for s in range(0, len(todo), max(1, chunk_size)):
            rows = scorer.score(todo[s:s + chunk_size], loader)
            sink.append(rows)
            written += len(rows)
            failed += sum(1 for e in rows.error if e is not None)
            if chunk_delay:
                time.sleep(chunk_delay)
        sink.sync()
    finally:
        loader.close()
        sink.close()
        os.close(fd)
    return written, failed


def _run_dask(o: ScoreOptions, scorer, shards, base, parts_dir, progress):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UsageError('--dask needs dask.distributed (pip install "dask[distributed]")') from None
    cluster = None
    address = o.dask
    if address.startswith("local:"):
        try:
            n = int(address[6:])
            if n < 1:
                raise ValueError
        except ValueError:
            raise UsageError(f"--dask {address!r}: expected local:N with N >= 1 workers") from None
        if scorer.threads is None:
            from .._engine import default_threads
            scorer.threads = max(1, default_threads() // n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=30)
        except Exception as e:
            raise UsageError(f"--dask {address!r}: cannot connect ({e})") from None
    os.makedirs(parts_dir, exist_ok=True)
    delay = _test_delay()
    try:
        futures = [client.submit(score_shard, items, scorer, base,
                                 os.path.join(parts_dir, f"part-{k:06d}.jsonl"), o.chunk_size, delay,
                                 pure=False, key=f"fastctc-score-shard-{k}-{os.getpid()}")
                   for k, items in shards]
        for fut in as_completed(futures):
            written, _ = fut.result()
            progress.update(written)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------- driver

def run_score(o: ScoreOptions, stdout=None, stderr=None) -> int:
    """Scores every item of o.manifest missing from o.out; what `fastctc score` runs.

    A run killed at any point resumes where it stopped: the rows OUT holds are kept and
    only the missing items are scored.  Bad items become rows with ``error`` set.

    Parameters
    ----------
    o : ScoreOptions
        The command's options.
    stdout : file-like or None, default None
        Where the summary goes (default: sys.stdout).
    stderr : file-like or None, default None
        Where the progress bar and warnings go (default: sys.stderr); the bar is drawn
        only when it is a terminal.

    Returns
    -------
    int
        The exit status: EXIT_OK (0) when every item was scored, EXIT_ITEMS_FAILED (1)
        when some rows carry ``error``.

    Raises
    ------
    UsageError
        Exit status 2, before this run scored anything: a bad option, an unreadable
        manifest or vocab, a malformed manifest row or duplicate id, OUT unusable, one of
        the inputs, or locked by another run.
    OutputError
        Exit status 3: writing OUT failed mid-run (disk full, I/O error); the rows written
        are kept, and a rerun resumes.

    Examples
    --------
    >>> import json, os, tempfile
    >>> import numpy as np
    >>> from fastctc.score import ScoreOptions, run_score
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = lambda name: os.path.join(tmp.name, name)
    >>> np.save(path("a.npy"), np.log(np.full((2, 2), 0.5)))      # (T, C) log-probabilities
    >>> with open(path("vocab.txt"), "w") as f:                     # class 0: blank, class 1: "x"
    ...     _ = f.write("<blank>\\nx\\n")
    >>> with open(path("manifest.jsonl"), "w") as f:
    ...     _ = f.write(json.dumps({"id": "a", "emissions": "a.npy", "text": "x"}) + "\\n")
    >>> run_score(ScoreOptions(path("manifest.jsonl"), path("vocab.txt"), path("out.jsonl"), quiet=True))
    0
    >>> with open(path("out.jsonl")) as f:
    ...     row = json.loads(f.readline())
    >>> print(row["id"], round(row["nll"], 4), row["frames"], row["tokens"])
    a 0.2877 2 1
    >>> tmp.cleanup()
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    symbols = load_vocab(o.vocab)
    _check_options(o, len(symbols))
    decode = bool(o.decode)
    sink = make_sink(o.out, o.align, decode)          # extension (and pyarrow) first
    sink.stderr = stderr
    manifest_ids = scan(o.manifest, o.chunk_size)
    base = os.path.dirname(os.path.abspath(o.manifest))
    out_files = [o.out] + ([sink.journal.path] if hasattr(sink, "journal") else [])
    for p in out_files:
        check_out_path(p)
    _check_out_is_no_input(o, out_files, base)
    scorer = Scorer(symbols, o.blank, o.from_logits, o.batch_size, o.threads, o.device, o.align,
                    o.decode, o.compare_raw)
    summary = Summary(o.rank_by, o.worst)
    with OutLock(o.out) as lock:
        try:
            sink.open()
            done = Done(manifest_ids.ambiguous)
            block = []
            for r in sink.rows():
                block.append(r)
                if len(block) >= 8192:
                    _absorb(block, manifest_ids, done, summary)
                    block = []
            _absorb(block, manifest_ids, done, summary)
            done.freeze()
            _merge_parts(o.out + ".parts", sink, manifest_ids, done, summary)
            done.freeze()
            already = done.count
            n_pending = manifest_ids.count - already
            progress = Progress(manifest_ids.count, already, stderr.isatty() and not o.quiet, stderr)
            t0 = time.monotonic()
            need_text = not o.quiet and summary.needs_text()
            if n_pending and o.dask:
                shards = []
                for k, window in enumerate(windows(o.manifest, o.shard_size)):
                    if need_text:
                        summary.fill_text(window)
                    m = done.mask([it["id"] for it in window])
                    shard = [it for it, d in zip(window, m.tolist()) if not d]
                    if shard:
                        shards.append((k, shard))
                _run_dask(o, scorer, shards, base, o.out + ".parts", progress)
                _merge_parts(o.out + ".parts", sink, manifest_ids, done, summary)
            elif n_pending:
                forbidden = {sink.identity(): f"--out {o.out!r}"}
                delay = _test_delay()
                jobs = _jobs(o, len(manifest_ids.spans or ()))
                if need_text:
                    for window in windows(o.manifest, o.chunk_size):
                        summary.fill_text(window)
                if jobs > 1 and manifest_ids.spans:
                    _run_workers(o, scorer, jobs, manifest_ids.spans, done, base, forbidden, sink,
                                 summary, progress, delay, [lock.fd, sink.fileno()])
                else:
                    loader = EmissionLoader(base, forbidden=forbidden)
                    try:
                        for window in windows(o.manifest, o.chunk_size):
                            todo = _pending(window, done)
                            if not todo:
                                continue
                            rows = scorer.score(todo, loader, progress.update)
                            sink.append(rows)
                            summary.add_rows(rows, [_text(it) for it in todo])
                            if delay:
                                time.sleep(delay)
                    finally:
                        loader.close()
            elif need_text:
                for window in windows(o.manifest, o.chunk_size):
                    summary.fill_text(window)
            progress.close()
            elapsed = time.monotonic() - t0
            sink.finalize()
        finally:
            sink.close()
    status = EXIT_ITEMS_FAILED if summary.failed else EXIT_OK
    if not o.quiet:
        try:
            summary.write(stdout, o.command, o.out, n_pending, elapsed)
        except BrokenPipeError:
            silence(stdout)
    return status


def silence(stream):
    """After a closed pipe (`fastctc score ... | head`): send the rest to /dev/null so that
    Python's flush at exit does not print a BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, AttributeError, ValueError):
        pass
