"""fastctc.score.emissions: reads the (T, C) arrays items point to, fast and safely.

An item's `emissions` is `path.npy` or `path.npz:key` (relative paths start at the
manifest's folder).  np.load costs ~100 us per .npz member (it re-reads the zip directory
and parses the .npy header with ast.literal_eval every time), far more than scoring the
item, so this module reads both formats itself:

* a .npz archive's central directory is read once (one pread) and kept as raw bytes; a
  member is found with one bytes.find of its name, its data read with one pread, checked
  against the directory's CRC-32 and wrapped with np.frombuffer (stored members) or
  inflated with zlib (np.savez_compressed);
* an .npy header is parsed once per distinct header (a set of 50,000 items has a few
  dozen), not once per item.

Archives whose layout is unusual (zip64 directory, encryption, compression other than
deflate) fall back to np.load's own reader, so any archive np.load reads is read.

`load_many` reads a window of items archive by archive, members in file order, and
neighbouring members with one pread, so a window costs a few system calls per archive
whatever the manifest's order.  Memory stays bounded whatever the number of items or
archives: at most `max_fds` archives stay open, and the cached directories (member names
as 64-bit hashes, checked against the member's own header when read) hold at most
`dir_bytes` bytes, 56 bytes a member.

Every path is checked with stat() before it is opened and opened O_NONBLOCK, then
fstat()ed again: a FIFO, device node or directory is an item error and never blocks the
run.  A file that is the run's own OUT (same device and inode) is a usage error.
"""
from __future__ import annotations

import ast
import os
import stat
import struct
import zlib
from array import array
from collections import OrderedDict

import numpy as np

from .errors import ItemError, UsageError, os_cause

_CEN = struct.Struct("<4s6H3L5H2L")       # central directory file header, 46 bytes
_LOC = struct.Struct("<4s5H3L2H")         # local file header, 30 bytes
_EOCD = struct.Struct("<4s4H2LH")         # end of central directory, 22 bytes
_LOC_NAMES = struct.Struct("<HH")          # name and extra lengths, at offset 26 of a local header
_NPY_MAGIC = b"\x93NUMPY"
_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket",
          stat.S_IFLNK: "a symbolic link"}


if hasattr(os, "pread"):
    _pread = os.pread
else:                                     # Windows: no pread; a loader is used by one thread
    def _pread(fd, n, offset):
        os.lseek(fd, offset, os.SEEK_SET)
        out = b""
        while len(out) < n:
            chunk = os.read(fd, n - len(out))
            if not chunk:
                break
            out += chunk
        return out


def _not_regular(mode):
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


class _Fallback(Exception):
    """This archive or member needs np.load's reader."""


class EmissionLoader:
    """Loads items' emissions; see the module docstring.  `forbidden` maps (st_dev,
    st_ino) of files no emissions may be (OUT, its journal) to a description."""

    def __init__(self, base: str, dir_bytes: int = 16 << 20, forbidden=None, max_fds=None):
        self.base = base
        self.dir_bytes = dir_bytes
        if max_fds is None:
            try:
                import resource
                max_fds = max(4, min(512, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4))
            except (ImportError, OSError, ValueError):
                max_fds = 64
        self.max_fds = max_fds
        self._fds = OrderedDict()      # archive path -> (fd, stat): open archives, LRU
        self.forbidden = dict(forbidden or {})
        self._dirs = OrderedDict()     # path -> (size, mtime_ns, central directory bytes)
        self._dir_total = 0
        self._headers = {}             # .npy header bytes -> (dtype, shape, fortran)
        self._paths = {}               # file part of a spec -> path (bounded)

    # ------------------------------------------------------------------ paths, files

    def resolve(self, spec: str):
        """(file path, key or None)."""
        key = None
        cut = spec.lower().rfind(".npz:")
        if cut >= 0:
            spec, key = spec[:cut + 4], spec[cut + 5:]
        path = self._paths.get(spec)
        if path is None:
            path = spec if os.path.isabs(spec) else os.path.join(self.base, spec)
            if len(self._paths) > 65536:
                self._paths.clear()
            self._paths[spec] = path
        return path, key

    def _check(self, st, path, spec):
        if not stat.S_ISREG(st.st_mode):
            raise ItemError(f"emissions {spec!r}: {path} is {_not_regular(st.st_mode)}, not a regular file")
        what = self.forbidden.get((st.st_dev, st.st_ino))
        if what:
            raise UsageError(f"emissions {spec!r}: {path} is the same file as {what}")

    def _open(self, path, spec):
        """(fd, stat) for `path`, checked to be a regular file (never blocks on a FIFO)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ItemError(f"emissions file not found: {path}") from None
        except OSError as e:
            raise ItemError(f"emissions {spec!r}: cannot read {path} ({os_cause(e)})") from None
        self._check(st, path, spec)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        except OSError as e:
            raise ItemError(f"emissions {spec!r}: cannot read {path} ({os_cause(e)})") from None
        try:
            st = os.fstat(fd)          # the file opened may not be the one stat() saw
            self._check(st, path, spec)
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def close(self):
        while self._fds:
            os.close(self._fds.popitem()[1][0])
        self._dirs.clear()
        self._dir_total = 0

    # ------------------------------------------------------------------ .npy

    def _header(self, raw):
        h = self._headers.get(raw)
        if h is None:
            try:
                d = ast.literal_eval(raw.decode("latin1"))
                if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
                    raise ValueError("header keys")
                dtype = np.lib.format.descr_to_dtype(d["descr"])
                shape = tuple(int(s) for s in d["shape"])
                if any(s < 0 for s in shape) or not isinstance(d["fortran_order"], bool):
                    raise ValueError("shape")
            except Exception as e:
                raise ValueError(f"bad .npy header ({e})") from None
            if dtype.hasobject:
                raise ValueError("the array holds Python objects (pickles are never loaded)")
            count = 1
            for n in shape:
                count *= n
            h = (dtype, shape, "F" if d["fortran_order"] else "C", count * dtype.itemsize)
            if len(self._headers) > 4096:
                self._headers.clear()
            self._headers[raw] = h
        return h

    def _npy(self, buf):
        """The array of an .npy file held in `buf` (bytes), without copying the data."""
        if buf[:6] != _NPY_MAGIC or len(buf) < 10:
            raise ValueError("not an .npy file (no magic string)")
        major = buf[6]
        if major == 1:
            hlen, start = struct.unpack_from("<H", buf, 8)[0], 10
        elif major in (2, 3):
            if len(buf) < 12:
                raise ValueError("truncated .npy header")
            hlen, start = struct.unpack_from("<I", buf, 8)[0], 12
        else:
            raise ValueError(f"unsupported .npy format version {major}")
        if start + hlen > len(buf):
            raise ValueError("truncated .npy header")
        dtype, shape, order, need = self._header(bytes(buf[start:start + hlen]))
        if len(buf) - start - hlen < need:
            raise ValueError(f"truncated: the header promises {need} data bytes, the file has "
                             f"{len(buf) - start - hlen}")
        return np.ndarray(shape, dtype, buf, start + hlen, order=order)

    # ------------------------------------------------------------------ .npz

    def _directory(self, path, fd, size, mtime):
        """The archive's directory, cached: member names as sorted 64-bit hashes and, row
        for row, (local header offset or -1 if np.load must read it, compressed size,
        size, method, crc, central name + extra length): 56 bytes a member."""
        d = self._dirs.get(path)
        if d is not None and d[0] == size and d[1] == mtime:
            self._dirs.move_to_end(path)
            return d
        tail = _pread(fd, min(size, 22 + 65535), max(0, size - 22 - 65535))
        k = tail.rfind(b"PK\x05\x06")
        if k < 0 or len(tail) - k < 22:
            raise ValueError("not a zip archive (no end of central directory)")
        _, disk, _, n_here, n_total, cd_size, cd_off, _ = _EOCD.unpack_from(tail, k)
        if n_total == 0xFFFF or cd_off == 0xFFFFFFFF or cd_size == 0xFFFFFFFF or disk:
            raise _Fallback()
        cd = _pread(fd, cd_size, cd_off)
        if len(cd) != cd_size:
            raise ValueError("truncated central directory")
        hashes, table, names = array("q"), array("q"), []
        h, unpack = 0, _CEN.unpack_from
        while h + 46 <= cd_size and cd[h:h + 4] == b"PK\x01\x02":
            (_, _, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, _, _, _, loff) = unpack(cd, h)
            # zipfile's rule: UTF-8 when flag bit 11 is set, else code page 437 (ASCII names,
            # the usual ones, read the same either way: the ASCII codec is the fast one)
            raw = cd[h + 46:h + 46 + nlen]
            try:
                name = raw.decode("ascii")
            except UnicodeDecodeError:
                name = raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
            fallback = flags & 1 or method not in (0, 8) or 0xFFFFFFFF in (csize, usize, loff)
            hashes.append(hash(name))
            table.extend((-1 if fallback else loff, csize, usize, method, crc, nlen + xlen))
            if len(names) < 2:
                names.append(name)
            h += 46 + nlen + xlen + clen
        hs = np.frombuffer(hashes, dtype=np.int64) if hashes else np.zeros(0, np.int64)
        tb = (np.frombuffer(table, dtype=np.int64) if table else np.zeros(0, np.int64)).reshape(-1, 6)
        order = np.argsort(hs, kind="stable")
        hs, tb = hs[order], tb[order].copy()
        same = np.flatnonzero(hs[1:] == hs[:-1])
        tb[same, 0] = tb[same + 1, 0] = -1     # a repeated name (or hash): np.load decides
        single = names[0] if len(hs) == 1 else None
        entry = (size, mtime, hs, tb, single, len(hs), 56 * len(hs) + 200)
        if d is not None:
            self._dir_total -= d[6]
        self._dirs[path] = entry
        self._dir_total += entry[6]
        while self._dir_total > self.dir_bytes and len(self._dirs) > 1:
            self._dir_total -= self._dirs.popitem(last=False)[1][6]
        return entry

    @staticmethod
    def _lookup(d, names):
        """Directory rows (lists) for member `names`, None where absent."""
        hs, tb = d[2], d[3]
        if not len(hs):
            return [None] * len(names)
        h = np.fromiter(map(hash, names), dtype=np.int64, count=len(names))
        pos = np.searchsorted(hs, h)
        pos[pos == len(hs)] = 0
        found = hs[pos] == h
        rows = tb[pos].tolist()
        return [r if f else None for r, f in zip(rows, found.tolist())]

    def _entry(self, d, key, path, spec):
        """(member name, directory row) of member `key` (see _directory)."""
        if key is None:
            if d[5] != 1:
                raise ItemError(f"emissions {spec!r}: the archive holds {d[5]} arrays; "
                                "name one as file.npz:key")
            key = d[4]
        name = key + ".npy"
        e = self._lookup(d, [name])[0]
        if e is None:
            name = key
            e = self._lookup(d, [name])[0]
            if e is None:
                raise ItemError(f"emissions {spec!r}: no array {key!r} in {path}")
        if e[0] < 0:
            raise _Fallback()
        return name, e

    def _decode_member(self, fd, buf, at, entry, key):
        """The array of the member whose local header starts at buf[at:]."""
        loff, csize, usize, method, crc, _ = entry
        if len(buf) - at < 30 or buf[at:at + 4] != b"PK\x03\x04":
            raise ValueError(f"member {key!r}: bad local header")
        ln, lx = _LOC.unpack_from(buf, at)[9:11]
        if buf[at + 30:at + 30 + ln] != key.encode("utf-8"):
            raise _Fallback()               # the lookup by hash found another member
        start = at + 30 + ln + lx
        if start + csize <= len(buf):
            data = memoryview(buf)[start:start + csize]
        else:                              # the run read was short for this member
            data = _pread(fd, csize, loff + 30 + ln + lx)
            if len(data) != csize:
                raise ValueError(f"member {key!r}: truncated")
        if method == 8:
            try:
                data = zlib.decompress(data, -15, max(usize, 1))
            except zlib.error as e:
                raise ValueError(f"member {key!r}: {e}") from None
            if len(data) != usize:
                raise ValueError(f"member {key!r}: inflated to {len(data)} bytes, the directory says {usize}")
        if zlib.crc32(data) != crc:
            raise ValueError(f"member {key!r}: CRC-32 mismatch (the archive is damaged)")
        return self._npy(data)

    def _archive(self, path, reqs, out):
        """Loads the members `reqs` [(index, key, spec)] of one archive into out[index]."""
        spec0 = reqs[0][2]
        cached = self._fds.get(path)
        if cached is not None:
            self._fds.move_to_end(path)
            fd, st = cached
        else:
            try:
                fd, st = self._open(path, spec0)
            except (ItemError, UsageError) as e:
                for i, _, _ in reqs:
                    out[i] = e
                return
            self._fds[path] = (fd, st)
            while len(self._fds) > self.max_fds:
                os.close(self._fds.popitem(last=False)[1][0])
        try:
            try:
                cd = self._directory(path, fd, st.st_size, st.st_mtime_ns)
            except _Fallback:
                for i, key, spec in reqs:
                    out[i] = self._guard(spec, path, self._member_np_load, path, key, spec)
                return
            except Exception as e:
                err = self._wrap(e, reqs[0][2], path)
                for i, _, _ in reqs:
                    out[i] = err
                return
            located = []
            names = [r[1] + ".npy" if r[1] is not None else "" for r in reqs]
            for r, name, e in zip(reqs, names, self._lookup(cd, names)):
                if e is not None and e[0] >= 0:      # the usual case: found, readable here
                    located.append((e, r[0], name, r[2]))
                    continue
                i, key, spec = r
                try:
                    name, e = self._entry(cd, key, path, spec)
                    located.append((e, i, name, spec))
                except _Fallback:
                    out[i] = self._guard(spec, path, self._member_np_load, path, key, spec)
                except Exception as e:
                    out[i] = self._wrap(e, spec, path)
            located.sort()
            k = 0
            while k < len(located):
                # one read for a run of neighbouring members (gaps under 8 KB: reading a
                # little unused data costs less than another system call, much does not)
                first = located[k][0][0]
                end = first + 30 + located[k][0][5] + 64 + located[k][0][1]
                j = k + 1
                while j < len(located) and located[j][0][0] < end + 8192 and end - first < (8 << 20):
                    e = located[j][0]
                    end = max(end, e[0] + 30 + e[5] + 64 + e[1])
                    j += 1
                try:
                    buf = _pread(fd, end - first, first)
                except OSError as e:
                    for _, i, _, spec in located[k:j]:
                        out[i] = self._wrap(e, spec, path)
                    k = j
                    continue
                mv = memoryview(buf)
                nbuf = len(buf)
                headers = self._headers
                for entry, i, name, spec in located[k:j]:
                    # fast path: a stored member wholly inside the run, a version-1 .npy
                    # header seen before, CRC and size right; anything else takes the
                    # checked path, which also names what is wrong.  The local header's
                    # name is checked too: the directory lookup went by hash.
                    at = entry[0] - first
                    if entry[3] == 0 and buf[at:at + 4] == b"PK\x03\x04":
                        ln, lx = _LOC_NAMES.unpack_from(buf, at + 26)
                        start = at + 30 + ln + lx
                        if buf[at + 30:at + 30 + ln] != name.encode("utf-8"):
                            out[i] = self._guard(spec, path, self._member_np_load, path,
                                                 name[:-4] if name.endswith(".npy") else name, spec)
                            continue
                        end = start + entry[1]
                        if end <= nbuf and buf[start:start + 7] == b"\x93NUMPY\x01":
                            h = headers.get(buf[start + 10:start + 10 + buf[start + 8] + 256 * buf[start + 9]])
                            if h is not None and h[3] == entry[1] - 10 - buf[start + 8] - 256 * buf[start + 9]:
                                data = mv[start:end]
                                if zlib.crc32(data) == entry[4]:
                                    out[i] = np.ndarray(h[1], h[0], data, end - start - h[3], order=h[2])
                                    continue
                    try:
                        out[i] = self._decode_member(fd, buf, at, entry, name)
                    except _Fallback:
                        out[i] = self._guard(spec, path, self._member_np_load, path,
                                             name[:-4] if name.endswith(".npy") else name, spec)
                    except Exception as e:
                        out[i] = self._wrap(e, spec, path)
                k = j
        except BaseException:
            self._fds.pop(path, None)
            os.close(fd)
            raise

    def _wrap(self, e, spec, path):
        if isinstance(e, (ItemError, UsageError)):
            return e
        if isinstance(e, FileNotFoundError):
            return ItemError(f"emissions file not found: {path}")
        if isinstance(e, OSError):
            return ItemError(f"emissions {spec!r}: cannot read {path} ({os_cause(e)})")
        return ItemError(f"emissions {spec!r}: cannot read {path} ({e})")

    def _guard(self, spec, path, fn, *args):
        try:
            return fn(*args)
        except Exception as e:
            return self._wrap(e, spec, path)

    def _npy_file(self, path, spec):
        fd, st = self._open(path, spec)
        try:
            buf = _pread(fd, st.st_size, 0) if st.st_size else b""
        finally:
            os.close(fd)
        return self._npy(buf)

    def _member_np_load(self, path, key, spec):
        """np.load's reader, for archives the fast path does not handle."""
        fd, _ = self._open(path, spec)
        try:
            with os.fdopen(os.dup(fd), "rb") as f, np.load(f, allow_pickle=False) as archive:
                if not isinstance(archive, np.lib.npyio.NpzFile):
                    raise ItemError(f"emissions {spec!r}: {path} is not an .npz archive")
                names = archive.files
                if key is None:
                    if len(names) != 1:
                        raise ItemError(f"emissions {spec!r}: the archive holds {len(names)} arrays; "
                                        "name one as file.npz:key")
                    key = names[0]
                if key not in names:
                    raise ItemError(f"emissions {spec!r}: no array {key!r} in {path}")
                return archive[key]
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ entry points

    def load_many(self, specs):
        """For each spec, its array or the ItemError it raises (a UsageError is raised)."""
        out = [None] * len(specs)
        archives = {}
        paths = self._paths
        for i, spec in enumerate(specs):
            # fast path: "dir/file.npz:key" whose file part was seen before
            head, sep, key = spec.rpartition(":")
            if sep and head[-4:].lower() == ".npz":
                path = paths.get(head)
                if path is not None:
                    a = archives.get(path)
                    if a is None:
                        a = archives[path] = []
                    a.append((i, key, spec))
                    continue
            path, key = self.resolve(spec)
            if key is None and not path.lower().endswith(".npz"):
                out[i] = self._guard(spec, path, self._npy_file, path, spec)
            else:
                archives.setdefault(path, []).append((i, key, spec))
        for path, reqs in archives.items():
            self._archive(path, reqs, out)
        for v in out:
            if isinstance(v, UsageError):
                raise v
        return out

    def load(self, spec: str) -> np.ndarray:
        v = self.load_many([spec])[0]
        if isinstance(v, Exception):
            raise v
        return v
