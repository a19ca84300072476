"""fastctc._score_io: crash-safe, resumable row sinks for `fastctc score`.

Contract shared by every sink:
    rows = sink.open()      # rows already in OUT (a torn tail is cut off first)
    sink.append(rows)       # one chunk: a single write of whole lines, then fsync
    sink.finalize()         # end of a complete run (Parquet: write the real file)

Why this survives kill -9: a chunk is appended as whole "\\n"-terminated lines and
fsync'ed before the next chunk is scored, so after a crash the file is every earlier
chunk plus, at worst, a prefix of the last one.  `open` truncates the file at the first
line that is not complete and valid (no newline yet, or unparsable), so a torn row is
never read back and never left in the middle of the file; the rerun skips the ids it
finds and appends the rest.  Ids are unique in the manifest, so no duplicates.

Parquet cannot be appended to, so a .parquet OUT is journalled: rows go to
OUT + ".journal.jsonl" exactly as above, and `finalize` writes the Parquet file next to
it (OUT + ".tmp", fsync, atomic rename) before deleting the journal.  A rerun finds the
journal and resumes from it; if only a finished OUT exists, its rows seed a new journal.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys

from ._score import COLUMNS, UsageError


def _columns(align):
    return COLUMNS + (["spans"] if align else [])


def _fsync_dir(path):
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_all(path, data: bytes):
    """Appends `data` with O_APPEND and fsyncs before returning."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _valid_prefix(path, parse_line):
    """(rows, byte length of the valid prefix) of a line-oriented file, parse_line(bytes,
    index) returning a row or raising ValueError."""
    with open(path, "rb") as f:
        data = f.read()
    rows, pos, index = [], 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break                      # torn last line: no newline yet
        try:
            rows.append(parse_line(data[pos:nl], index))
        except ValueError:
            break                      # garbage after a crash: cut here
        pos = nl + 1
        index += 1
    if pos < len(data):
        sys.stderr.write(f"fastctc: {path}: dropping {len(data) - pos} bytes of an incomplete "
                         "chunk left by an interrupted run\n")
        with open(path, "r+b") as f:
            f.truncate(pos)
            f.flush()
            os.fsync(f.fileno())
    return rows, pos


class _LineSink:
    """A text output appended one encoded chunk at a time (fsync'ed); nothing to finalize."""

    def __init__(self, path, align=False):
        self.path = path
        self.align = align

    def append(self, rows):
        if rows:
            _write_all(self.path, self.encode(rows))

    def finalize(self):
        pass

    def close(self):
        pass


class JsonlSink(_LineSink):
    """One JSON object per line."""

    def open(self):
        if not os.path.exists(self.path):
            open(self.path, "ab").close()
            _fsync_dir(self.path)
            return []

        def parse(line, _):
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(str(e)) from None
            if not isinstance(row, dict) or "id" not in row:
                raise ValueError("not a row")
            return row
        try:
            rows, _ = _valid_prefix(self.path, parse)
        except OSError as e:
            raise UsageError(f"--out {self.path!r}: cannot read it ({e.strerror or e})") from None
        return rows

    def encode(self, rows) -> bytes:
        return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows).encode("utf-8")


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return json.dumps(v, ensure_ascii=False)
    return v


class CsvSink(_LineSink):
    """Comma-separated, a header line first; empty cells are nulls; `spans` is JSON."""

    def __init__(self, path, align=False):
        super().__init__(path, align)
        self.columns = _columns(align)

    def _header(self):
        return (",".join(self.columns) + "\n").encode()

    def open(self):
        if not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            with open(self.path, "wb") as f:
                f.write(self._header())
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(self.path)
            return []
        cols = self.columns

        def parse(line, index):
            try:
                fields = next(csv.reader([line.decode("utf-8")]))
            except (UnicodeDecodeError, csv.Error, StopIteration) as e:
                raise ValueError(str(e)) from None
            if index == 0:
                if fields != cols:
                    raise UsageError(f"--out {self.path!r} has columns {fields}, this run writes "
                                     f"{cols} (different --align?); use another OUT")
                return None
            if len(fields) != len(cols):
                raise ValueError("wrong field count")
            return self._decode(dict(zip(cols, fields)))
        try:
            rows, size = _valid_prefix(self.path, parse)
        except OSError as e:
            raise UsageError(f"--out {self.path!r}: cannot read it ({e.strerror or e})") from None
        if size == 0:      # even the header was torn
            _write_all(self.path, self._header())
        return rows[1:]

    @staticmethod
    def _decode(raw):
        row = {"id": raw["id"]}
        for k in ("nll", "nll_per_frame", "nll_per_token"):
            row[k] = float(raw[k]) if raw[k] != "" else None
        for k in ("frames", "tokens"):
            row[k] = int(raw[k]) if raw[k] != "" else None
        row["error"] = raw["error"] or None
        if "spans" in raw:
            row["spans"] = json.loads(raw["spans"]) if raw["spans"] else None
        return row

    def encode(self, rows) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        for r in rows:
            w.writerow([_csv_value(r.get(c)) for c in self.columns])
        return buf.getvalue().encode("utf-8")


class ParquetSink:
    """Journalled: JSONL journal while running, Parquet written by `finalize`."""

    def __init__(self, path, align=False):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("writing Parquet needs pyarrow (pip install pyarrow)") from None
        self.path = path
        self.align = align
        self.journal = JsonlSink(path + ".journal.jsonl", align)

    def schema(self):
        import pyarrow as pa
        fields = [("id", pa.string()), ("nll", pa.float64()), ("nll_per_frame", pa.float64()),
                  ("nll_per_token", pa.float64()), ("frames", pa.int64()), ("tokens", pa.int64()),
                  ("error", pa.string())]
        if self.align:
            span = pa.struct([("token", pa.int64()), ("symbol", pa.string()), ("start", pa.int64()),
                              ("end", pa.int64()), ("score", pa.float64())])
            fields.append(("spans", pa.list_(span)))
        return pa.schema(fields)

    def open(self):
        if os.path.exists(self.journal.path) or not os.path.exists(self.path):
            return self.journal.open()
        import pyarrow.parquet as pq
        try:
            rows = pq.read_table(self.path).to_pylist()
        except Exception as e:
            raise UsageError(f"--out {self.path!r}: cannot read the existing Parquet file ({e})") from None
        self.journal.open()
        self.journal.append(rows)
        return rows

    def append(self, rows):
        self.journal.append(rows)

    def finalize(self):
        import pyarrow as pa
        import pyarrow.parquet as pq
        rows = self.journal.open()
        schema = self.schema()
        names = schema.names
        table = pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema=schema)
        tmp = self.path + ".tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path)
        os.remove(self.journal.path)

    def close(self):
        pass


def make_sink(path, align=False):
    low = path.lower()
    if low.endswith(".jsonl"):
        return JsonlSink(path, align)
    if low.endswith(".csv"):
        return CsvSink(path, align)
    if low.endswith(".parquet"):
        return ParquetSink(path, align)
    raise UsageError(f"--out {path!r}: the extension must be .jsonl, .csv or .parquet")
