"""Helpers for the `fastctc score` tests: tiny synthetic manifests on disk.

make_set(tmp_path, n, ...) writes a vocab, one .npy per item (every third item goes into
a shared .npz instead, to exercise `file.npz:key`) and a manifest.jsonl, and returns the
paths plus the items as written (id, emissions array, token ids).
"""
import json
import os
import sys

import numpy as np
from reference import log_softmax  # noqa: F401  (the test files import it from here)

PYX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pyx")


def cli_env(**extra):
    """The environment of a `python -m fastctc` subprocess: this checkout's package first
    on PYTHONPATH, one OpenMP thread, then `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PYX + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def cli_cmd(*args):
    """argv of `python -m fastctc ARGS...` (each argument as a string)."""
    return [sys.executable, "-m", "fastctc", *map(str, args)]


SYMBOLS = ["<b>", "a", "b", "c", " ", "xy"]   # blank at 0; "xy" (two characters) never occurs in texts


def write_vocab(path, symbols=SYMBOLS):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(s + "\n" for s in symbols))
    return str(path)


def make_set(tmp_path, n=24, seed=0, dtype=np.float32, tmin=4, tmax=40):
    rng = np.random.default_rng(seed)
    tmp_path = str(tmp_path)
    vocab = write_vocab(os.path.join(tmp_path, "vocab.txt"))
    os.makedirs(os.path.join(tmp_path, "em"), exist_ok=True)
    items, rows, npz = [], [], {}
    for i in range(n):
        T = int(rng.integers(tmin, tmax))
        L = int(rng.integers(0, max(1, T // 2)))
        # text over single-character symbols only, so its tokens are unambiguous
        text = "".join(rng.choice(list("abc ")) for _ in range(L))
        tokens = [SYMBOLS.index(ch) for ch in text]
        arr = log_softmax(rng.normal(size=(T, len(SYMBOLS))) * 2).astype(dtype)
        item_id = f"utt{i:03d}"
        if i % 3 == 2:
            npz[item_id] = arr
            spec = f"em/shared.npz:{item_id}"
        else:
            np.save(os.path.join(tmp_path, "em", f"{item_id}.npy"), arr)
            spec = f"em/{item_id}.npy"
        row = {"id": item_id, "emissions": spec}
        if i % 4 == 3:
            row["tokens"] = tokens
        else:
            row["text"] = text
        rows.append(row)
        items.append({"id": item_id, "emissions": arr, "tokens": tokens})
    if npz:
        np.savez(os.path.join(tmp_path, "em", "shared.npz"), **npz)
    manifest = os.path.join(tmp_path, "manifest.jsonl")
    write_manifest(manifest, rows)
    return manifest, vocab, items, rows


def write_manifest(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_rows(path, align=False, decode=False):
    """Rows of an OUT file of any format, as dicts (CSV cells decoded to numbers)."""
    path = str(path)
    if path.endswith(".jsonl"):
        return read_jsonl(path)
    if path.endswith(".csv"):
        import csv

        from fastctc.score.sinks import CsvSink
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f))
        sink = CsvSink(path, header)
        return list(sink.rows())
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


def by_id(rows):
    out = {}
    for r in rows:
        assert r["id"] not in out, f"duplicate id {r['id']}"
        out[r["id"]] = r
    return out
