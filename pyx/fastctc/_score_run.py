"""fastctc._score_run: the `fastctc score` driver (local or Dask), progress bar, summary.

run_score(...) -> exit status: 0 every item scored, 1 some items failed (their rows carry
`error`), 2 usage error (raised as UsageError; cli.py prints it).

Order of work:
  1. read VOCAB and MANIFEST (usage errors stop here, before OUT is touched);
  2. open OUT (cutting a torn tail) and collect the ids already done;
  3. fold in rows left in OUT + ".parts/" by an interrupted Dask run, then delete them;
  4. score what is left: locally in chunks of --chunk-size items, each chunk appended and
     fsync'ed; or on Dask, one task per shard of --shard-size manifest items writing its
     own part file, merged into OUT when all tasks are done;
  5. finalize OUT (Parquet is written here) and print the summary.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

from ._score import EmissionLoader, Options, Tokenizer, UsageError, load_vocab, read_manifest, score_items
from ._score_io import JsonlSink, make_sink

RANK_KEYS = ("nll_per_frame", "nll_per_token", "nll")


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


def _check_options(out, blank, n_symbols, batch_size, chunk_size, shard_size, device, rank_by, threads):
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if chunk_size < 1:
        raise UsageError(f"--chunk-size must be >= 1, got {chunk_size}")
    if shard_size < 1:
        raise UsageError(f"--shard-size must be >= 1, got {shard_size}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if not 0 <= blank < n_symbols:
        raise UsageError(f"--blank {blank} is out of range [0, {n_symbols}) for a vocab of {n_symbols} symbols")
    if rank_by not in RANK_KEYS:
        raise UsageError(f"--rank-by must be one of {', '.join(RANK_KEYS)}, got {rank_by!r}")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda":
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
    make_sink(out)  # extension check (and pyarrow for .parquet) before any work


def _merge_parts(parts_dir, sink, done, wanted):
    """Appends rows of leftover part files whose ids OUT lacks; deletes the folder."""
    if not os.path.isdir(parts_dir):
        return 0
    added = 0
    for name in sorted(os.listdir(parts_dir)):
        if not name.endswith(".jsonl"):
            continue
        rows = JsonlSink(os.path.join(parts_dir, name)).open()
        new = []
        for r in rows:
            if r["id"] in wanted and r["id"] not in done:
                done[r["id"]] = r
                new.append(r)
        sink.append(new)      # fsync'ed before the part file goes away
        added += len(new)
    shutil.rmtree(parts_dir)
    return added


def _run_dask(address, pending_shards, opts, base, parts_dir, progress, err):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UsageError('--dask needs dask.distributed (pip install "dask[distributed]")') from None
    from ._score import score_shard
    cluster = None
    if address.startswith("local:"):
        try:
            n = int(address[6:])
            if n < 1:
                raise ValueError
        except ValueError:
            raise UsageError(f"--dask {address!r}: expected local:N with N >= 1 workers") from None
        if opts.threads is None:
            from ._engine import default_threads
            opts.threads = max(1, default_threads() // n)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    else:
        try:
            client = Client(address, timeout=30)
        except Exception as e:
            raise UsageError(f"--dask {address!r}: cannot connect ({e})") from None
    os.makedirs(parts_dir, exist_ok=True)
    delay = _test_delay()
    try:
        futures = [client.submit(score_shard, items, opts, base,
                                 os.path.join(parts_dir, f"part-{k:06d}.jsonl"), delay,
                                 pure=False, key=f"fastctc-score-shard-{k}-{os.getpid()}")
                   for k, items in pending_shards]
        for fut in as_completed(futures):
            written, _ = fut.result()
            progress.update(written)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_score(manifest, vocab, out, *, blank=0, from_logits=False, batch_size=32, threads=None,
              device="cpu", align=False, chunk_size=512, dask=None, shard_size=2000, quiet=False,
              worst=10, rank_by="nll_per_frame", stdout=None, stderr=None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    symbols = load_vocab(vocab)
    _check_options(out, blank, len(symbols), batch_size, chunk_size, shard_size, device, rank_by, threads)
    items = read_manifest(manifest)
    base = os.path.dirname(os.path.abspath(manifest))
    opts = Options(symbols, blank, from_logits, batch_size, threads, device, align, chunk_size)
    wanted = {it["id"] for it in items}

    sink = make_sink(out, align)
    done = {}
    for r in sink.open():
        done[str(r["id"])] = r
    parts_dir = out + ".parts"
    _merge_parts(parts_dir, sink, done, wanted)
    already = sum(1 for i in wanted if i in done)
    pending = [it for it in items if it["id"] not in done]

    progress = Progress(len(items), already, stderr.isatty() and not quiet, stderr)
    t0 = time.monotonic()
    if pending and dask:
        pending_ids = {it["id"] for it in pending}
        shards = []
        for k in range(0, len(items), shard_size):
            shard = [it for it in items[k:k + shard_size] if it["id"] in pending_ids]
            if shard:
                shards.append((k // shard_size, shard))
        _run_dask(dask, shards, opts, base, parts_dir, progress, stderr)
        _merge_parts(parts_dir, sink, done, wanted)
    elif pending:
        loader = EmissionLoader(base)
        tokenizer = Tokenizer(symbols, blank)
        delay = _test_delay()
        try:
            for s in range(0, len(pending), chunk_size):
                rows = score_items(pending[s:s + chunk_size], loader, opts, tokenizer, progress.update)
                sink.append(rows)
                for r in rows:
                    done[r["id"]] = r
                if delay:
                    time.sleep(delay)
        finally:
            loader.close()
    progress.close()
    elapsed = time.monotonic() - t0
    sink.finalize()

    rows = [done[i["id"]] for i in items if i["id"] in done]
    failures = [r for r in rows if r.get("error")]
    if not quiet:
        _summary(stdout, items, rows, failures, len(pending), elapsed, out, worst, rank_by)
    return 1 if failures else 0


def _summary(stream, items, rows, failures, n_run, elapsed, out, worst, rank_by):
    texts = {it["id"]: it["text"] if it["text"] is not None else it["tokens"] for it in items}
    rate = n_run / elapsed if elapsed > 0 else float("inf")
    w = stream.write
    w(f"fastctc score: {len(rows)} items in {out} ({n_run} scored by this run in {elapsed:.2f} s, "
      f"{rate:.1f} items/s); {len(rows) - len(failures)} scored, {len(failures)} failed\n")
    if failures:
        w(f"failed items ({len(failures)}):\n")
        for r in failures[:10]:
            w(f"  {r['id']}: {r['error']}\n")
        if len(failures) > 10:
            w(f"  ... {len(failures) - 10} more (rows with `error` set in {out})\n")
    scored = [r for r in rows if not r.get("error") and r.get(rank_by) is not None]
    if scored and worst > 0:
        scored.sort(key=lambda r: r[rank_by], reverse=True)
        top = scored[:worst]
        width = max(len(str(r["id"])) for r in top)
        w(f"worst-scoring items by {rank_by} (highest first):\n")
        for r in top:
            text = texts.get(r["id"])
            shown = repr(text if not isinstance(text, str) or len(text) <= 60 else text[:57] + "...")
            w(f"  {str(r['id']):<{width}}  {rank_by} {r[rank_by]:9.4f}  nll {r['nll']:9.3f}  {shown}\n")
    stream.flush()
