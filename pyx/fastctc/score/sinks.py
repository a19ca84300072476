"""fastctc.score.sinks: OUT, written so that nothing is lost and a rerun resumes.

Contract shared by every sink:
    sink.open()         # create OUT, or check and repair the one a previous run left
    for row in sink.rows(): ...   # rows already in OUT (each id once)
    sink.append(rows)   # one chunk: a single write of whole lines
    sink.finalize()     # end of a complete run (Parquet: write the real file)

Why this survives kill -9: a chunk is appended as whole "\\n"-terminated lines with one
write, so after a crash the file is every earlier chunk plus, at worst, a prefix of the
last one: a torn last line, the one mark of an interrupted run.  `open` cuts it off.
The data is fsync'ed at most once a second and at the end (a killed process loses
nothing the kernel has; the fsync guards against the machine going down).

Damage elsewhere is not a reason to throw rows away: a complete line in the middle of
OUT that does not parse (a bit flip, a blank line), or a second row for an id already
there, is moved to OUT.bad (with its line number) and reported on stderr; every other
row stays and only the ids then missing are scored again.  A non-empty OUT with no row
of ours at all is refused (it is some other file, not a partial OUT).

A write that fails mid-run (disk full, I/O error) raises OutputError after cutting OUT
back to the end of the last complete chunk, so OUT ends on a row boundary.

Parquet cannot be appended to, so a .parquet OUT is journalled: rows go to
OUT + ".journal.jsonl" exactly as above, and `finalize` streams them into OUT + ".tmp"
(fsync, atomic rename) before deleting the journal.  A rerun finds the journal and
resumes from it; if only a finished OUT exists, its rows seed a new journal.

`OutLock` makes a run the only writer of OUT: an exclusive advisory lock (flock) on
OUT + ".lock" for the whole run.  A second run on the same OUT stops with a usage error.
"""
from __future__ import annotations

import csv
import json
import os
import stat
import sys
import time
from array import array

import numpy as np

from .errors import OutputError, UsageError, os_cause
from .rows import FLOAT_COLUMNS, INT_COLUMNS, Rows, columns, encode_csv, encode_jsonl

FSYNC_EVERY_S = 1.0


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


# ------------------------------------------------------------------------------ lock

class OutLock:
    """Exclusive lock on OUT + ".lock" (see the module docstring).  The lock file is
    removed when the run ends; one left by a killed run holds no lock and is reused."""

    def __init__(self, out, what="--out"):
        self.path = out + ".lock"
        self.out = out
        self.what = what
        self.fd = None

    def acquire(self):
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UsageError(f"{self.what} {self.out!r}: cannot create files there "
                                 f"({os_cause(e)}: {self.path})") from None
            if not _try_lock(fd):
                os.close(fd)
                raise UsageError(f"{self.what} {self.out!r} is in use by another fastctc run "
                                 f"(it holds {self.path}); wait for it or use another OUT")
            # the holder before us may have removed the file between our open and lock
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)
        raise UsageError(f"{self.what} {self.out!r}: cannot lock {self.path}")

    def release(self):
        if self.fd is not None:
            try:
                os.remove(self.path)      # while still holding it: see acquire
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _try_lock(fd) -> bool:
    try:
        import fcntl
    except ImportError:                  # Windows: lock the first byte
        import msvcrt
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def try_lock_file(path):
    """An fd holding an exclusive lock on existing file `path`, or None if another process
    holds it (a Dask worker still writing its part file)."""
    fd = os.open(path, os.O_RDWR)
    if _try_lock(fd):
        return fd
    os.close(fd)
    return None


# ---------------------------------------------------------------------- line files

class _Damage:
    def __init__(self):
        self.bad = []          # (line number, raw bytes, why)
        self.torn = 0          # bytes of a torn last line


def check_out_path(path, what="--out"):
    """Usage error unless OUT is a regular file or absent in an existing folder."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            fst = os.stat(folder)
        except OSError as e:
            raise UsageError(f"{what} {path!r}: its folder {folder} cannot be used ({os_cause(e)})") from None
        if not stat.S_ISDIR(fst.st_mode):
            raise UsageError(f"{what} {path!r}: {folder} is not a folder")
        return None
    except OSError as e:
        raise UsageError(f"{what} {path!r}: cannot use it ({os_cause(e)})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UsageError(f"{what} {path!r} is {kind}")
    return st


class _LineSink:
    """A text OUT appended one encoded chunk at a time."""

    header = b""

    def __init__(self, path, cols, what="--out"):
        self.path = path
        self.cols = cols
        self.what = what
        self.fd = None
        self.last_sync = 0.0
        self.written = 0
        self.stderr = sys.stderr

    # -- reading back -----------------------------------------------------------
    def _parse(self, line: bytes):
        raise NotImplementedError

    def _lines(self, f):
        """(line number, start offset, raw line) for every line of an open file."""
        pos = 0
        for no, raw in enumerate(f, 1):
            yield no, pos, raw
            pos += len(raw)

    def _scan(self):
        """Pass over OUT: (damage, row count, hashes of the ids).  Raises UsageError when
        OUT is not an OUT of this kind."""
        dmg = _Damage()
        hashes = array("q")
        n = 0
        with open(self.path, "rb") as f:
            for no, pos, raw in self._lines(f):
                if not raw.endswith(b"\n"):
                    dmg.torn = len(raw)
                    break
                if no == 1 and self.header:
                    self._check_header(raw)
                    continue
                try:
                    row = self._parse(raw[:-1])
                except ValueError as e:
                    dmg.bad.append((no, raw, str(e)))
                    continue
                hashes.append(hash(row["id"]))
                n += 1
        return dmg, n, hashes

    def _check_header(self, raw):
        pass

    def open(self):
        """Creates OUT or checks and repairs it (see the module docstring)."""
        st = check_out_path(self.path, self.what)
        if st is None or st.st_size == 0:
            self._create()
            return
        try:
            dmg, n, hashes = self._scan()
        except OSError as e:
            raise UsageError(f"{self.what} {self.path!r}: cannot read it ({os_cause(e)})") from None
        if n == 0 and dmg.bad:
            raise UsageError(f"{self.what} {self.path!r} exists and holds no rows of fastctc score "
                             f"(line {dmg.bad[0][0]}: {dmg.bad[0][2]}); use another OUT")
        h = np.frombuffer(hashes, dtype=np.int64) if len(hashes) else np.zeros(0, np.int64)
        s = np.sort(h)
        dup_hashes = set(s[1:][s[1:] == s[:-1]].tolist())
        try:
            if dmg.bad or dup_hashes:
                self._rewrite(dmg, dup_hashes)
            elif dmg.torn:
                self._say(f"dropping {dmg.torn} bytes of a torn last line left by an interrupted run")
                with open(self.path, "r+b") as f:
                    f.truncate(st.st_size - dmg.torn)
                    os.fsync(f.fileno())
            self._open_append()
        except OSError as e:
            raise UsageError(f"{self.what} {self.path!r}: cannot repair or open it ({os_cause(e)})") from None

    def _say(self, msg):
        self.stderr.write(f"fastctc: {self.path}: {msg}\n")

    def _rewrite(self, dmg, dup_hashes):
        """Moves damaged lines and repeated ids to OUT.bad; keeps everything else."""
        bad_path = self.path + ".bad"
        tmp = self.path + ".tmp"
        seen, moved = set(), []
        bad_lines = {no: why for no, _, why in dmg.bad}
        with open(self.path, "rb") as src, open(tmp, "wb") as dst:
            for no, _, raw in self._lines(src):
                if not raw.endswith(b"\n"):
                    break                          # the torn tail: dropped
                if no == 1 and self.header:
                    dst.write(raw)
                    continue
                if no in bad_lines:
                    moved.append((no, raw, bad_lines[no]))
                    continue
                if dup_hashes:
                    rid = self._parse(raw[:-1])["id"]
                    if hash(rid) in dup_hashes:
                        if rid in seen:
                            moved.append((no, raw, f"a second row for id {rid!r}"))
                            continue
                        seen.add(rid)
                dst.write(raw)
            dst.flush()
            os.fsync(dst.fileno())
        with open(bad_path, "ab") as b:
            for no, raw, why in moved:
                b.write(f"# {self.path} line {no}: {why}\n".encode("utf-8", "replace"))
                b.write(raw if raw.endswith(b"\n") else raw + b"\n")
            b.flush()
            os.fsync(b.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path)
        first = ", ".join(str(no) for no, _, _ in moved[:5]) + (" ..." if len(moved) > 5 else "")
        self._say(f"moved {len(moved)} damaged or repeated line(s) (line {first}) to {bad_path}; "
                  "their ids are scored again" + (f"; dropped a torn last line of {dmg.torn} bytes"
                                                  if dmg.torn else ""))

    def rows(self):
        """Rows in OUT (after `open`), in file order."""
        with open(self.path, "rb") as f:
            for no, _, raw in self._lines(f):
                if no == 1 and self.header:
                    continue
                yield self._parse(raw[:-1])

    # -- writing ------------------------------------------------------------------
    def _create(self):
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as e:
            raise UsageError(f"{self.what} {self.path!r}: cannot create it ({os_cause(e)})") from None
        self.fd = fd
        if self.header:
            try:
                self._write(self.header)
                os.fsync(fd)
            except OSError as e:
                raise UsageError(f"{self.what} {self.path!r}: cannot write it ({os_cause(e)})") from None
        _fsync_dir(self.path)

    def _open_append(self):
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0))

    def _write(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def fileno(self):
        return self.fd

    def identity(self):
        """(st_dev, st_ino) of the open OUT."""
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def append(self, rows):
        """Appends a Rows (or a list of row dicts) as one write."""
        if not len(rows):
            return
        if not isinstance(rows, Rows):
            rows = Rows.from_dicts(rows, self.cols)
        self.append_encoded(self.encode(rows), len(rows))

    def encoder(self):
        """A picklable function (rows, cols) -> bytes in this file's format."""
        return encode_jsonl

    def append_encoded(self, data: bytes, n: int):
        """Appends `n` rows already encoded by `encoder()` (in a worker process)."""
        if not data:
            return
        size = os.fstat(self.fd).st_size
        try:
            self._write(data)
            now = time.monotonic()
            if now - self.last_sync >= FSYNC_EVERY_S:
                os.fsync(self.fd)
                self.last_sync = now
        except OSError as e:
            try:
                os.ftruncate(self.fd, size)   # end OUT on the last complete row
            except OSError:
                pass                          # the rerun cuts the torn tail instead
            raise OutputError(f"{self.what} {self.path!r}: writing failed after {self.written} rows "
                              f"of this run ({os_cause(e)}); the rows written are kept: fix the cause "
                              "and rerun the same command to resume") from None
        self.written += n

    def sync(self):
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError as e:
                raise OutputError(f"{self.what} {self.path!r}: fsync failed ({os_cause(e)}); rerun the "
                                  "same command to check and resume") from None

    def finalize(self):
        self.sync()

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class JsonlSink(_LineSink):
    """One JSON object per line."""

    def _parse(self, line):
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"not JSON ({e})") from None
        if type(row) is not dict or "id" not in row:
            raise ValueError("not a row (no `id`)")
        row["id"] = str(row["id"])
        return row

    def open(self):
        super().open()
        self._check_columns()

    def _check_columns(self):
        want = set(self.cols)
        for row in self.rows():
            have = set(row)
            if have != want:
                extra, missing = sorted(have - want), sorted(want - have)
                raise UsageError(f"{self.what} {self.path!r} has rows with other columns (missing "
                                 f"{missing}, extra {extra}: written with other --align/--decode "
                                 "options?); use another OUT")
            return

    def encode(self, rows):
        if not isinstance(rows, Rows):
            rows = Rows.from_dicts(rows, self.cols)
        return encode_jsonl(rows, self.cols)


class CsvSink(_LineSink):
    """Comma-separated, a header line first; empty cells are nulls; lists are JSON."""

    def __init__(self, path, cols, what="--out"):
        super().__init__(path, cols, what)
        self.header = (",".join(cols) + "\n").encode()

    def _check_header(self, raw):
        fields = next(csv.reader([raw[:-1].decode("utf-8", "replace")]), [])
        if fields != self.cols:
            raise UsageError(f"{self.what} {self.path!r} has columns {fields}, this run writes "
                             f"{self.cols} (other --align/--decode options?); use another OUT")

    def _parse(self, line):
        try:
            fields = next(csv.reader([line.decode("utf-8")]))
        except (UnicodeDecodeError, csv.Error, StopIteration) as e:
            raise ValueError(f"not a CSV row ({e})") from None
        if len(fields) != len(self.cols):
            raise ValueError(f"{len(fields)} fields, expected {len(self.cols)}")
        try:
            return self._decode(dict(zip(self.cols, fields)))
        except (ValueError, TypeError) as e:
            raise ValueError(f"bad value ({e})") from None

    @staticmethod
    def _decode(raw):
        row = {}
        for k, v in raw.items():
            if k == "id":
                row[k] = v
            elif k in FLOAT_COLUMNS:
                row[k] = float(v) if v != "" else None
            elif k in INT_COLUMNS:
                row[k] = int(v) if v != "" else None
            elif k == "spans":
                row[k] = json.loads(v) if v else None
            else:
                row[k] = v if v != "" else None
        if not row.get("id"):
            raise ValueError("empty id")
        return row

    def encode(self, rows):
        if not isinstance(rows, Rows):
            rows = Rows.from_dicts(rows, self.cols)
        return encode_csv(rows, self.cols)

    def encoder(self):
        return encode_csv


class ParquetSink:
    """Journalled (see the module docstring)."""

    def __init__(self, path, cols, what="--out"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError("writing Parquet needs pyarrow (pip install pyarrow)") from None
        self.path = path
        self.cols = cols
        self.what = what
        self.journal = JsonlSink(path + ".journal.jsonl", cols, what)

    @property
    def stderr(self):
        return self.journal.stderr

    @stderr.setter
    def stderr(self, s):
        self.journal.stderr = s

    def schema(self):
        import pyarrow as pa
        types = {"id": pa.string(), "error": pa.string(), "hypothesis": pa.string()}
        for c in FLOAT_COLUMNS:
            types[c] = pa.float64()
        for c in INT_COLUMNS:
            types[c] = pa.int64()
        types["spans"] = pa.list_(pa.struct([("token", pa.int64()), ("symbol", pa.string()),
                                             ("start", pa.int64()), ("end", pa.int64()),
                                             ("score", pa.float64())]))
        return pa.schema([(c, types[c]) for c in self.cols])

    def open(self):
        st = check_out_path(self.path, self.what)
        check_out_path(self.journal.path, self.what)
        if os.path.exists(self.journal.path) or st is None:
            self.journal.open()
            return
        import pyarrow.parquet as pq
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as e:
            raise UsageError(f"{self.what} {self.path!r}: cannot read the existing Parquet file ({e})") from None
        if pf.schema_arrow.names != self.cols:
            raise UsageError(f"{self.what} {self.path!r} has columns {pf.schema_arrow.names}, this run "
                             f"writes {self.cols} (other --align/--decode options?); use another OUT")
        self.journal.open()
        for rb in pf.iter_batches(batch_size=8192):
            self.journal.append(rb.to_pylist())
        self.journal.sync()

    def rows(self):
        return self.journal.rows()

    def identity(self):
        return self.journal.identity()

    def fileno(self):
        return self.journal.fileno()

    def append(self, rows):
        self.journal.append(rows)

    def encoder(self):
        return self.journal.encoder()

    def append_encoded(self, data, n):
        self.journal.append_encoded(data, n)

    def finalize(self):
        import pyarrow as pa
        import pyarrow.parquet as pq
        self.journal.sync()
        schema = self.schema()
        tmp = self.path + ".tmp"
        try:
            with pq.ParquetWriter(tmp, schema) as w:
                batch, wrote = [], False
                for r in self.journal.rows():
                    batch.append(r)
                    if len(batch) >= 8192:
                        w.write_table(pa.Table.from_pylist(batch, schema=schema))
                        batch, wrote = [], True
                if batch or not wrote:
                    w.write_table(pa.Table.from_pylist(batch, schema=schema))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path)
        except OSError as e:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise OutputError(f"{self.what} {self.path!r}: writing the Parquet file failed "
                              f"({os_cause(e)}); every row is kept in {self.journal.path}: fix the cause "
                              "and rerun the same command to finish") from None
        self.journal.close()
        os.remove(self.journal.path)

    def close(self):
        self.journal.close()


def make_sink(path, align=False, decode=False, what="--out"):
    cols = columns(align, decode)
    low = path.lower()
    if low.endswith(".jsonl"):
        return JsonlSink(path, cols, what)
    if low.endswith(".csv"):
        return CsvSink(path, cols, what)
    if low.endswith(".parquet"):
        return ParquetSink(path, cols, what)
    raise UsageError(f"{what} {path!r}: the extension must be .jsonl, .csv or .parquet")
