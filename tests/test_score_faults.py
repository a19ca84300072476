"""Regression tests for the faults of issue 18: every one ends in a one-line message and
a documented exit status, never a traceback, a hang, duplicate rows or lost rows.

1. OUT unusable (missing folder, under a regular file, read-only file system) -> exit 2
   before anything is scored; the file system filling up mid-run -> exit 3, every row
   written kept, a rerun resumes.
2. Two runs on one OUT: the second stops with exit 2 (OUT is locked); a Dask part file a
   worker still holds is not merged.
3. OUT the same file as the manifest, the vocab or an emissions file -> exit 2, untouched.
4. Emissions that are a FIFO, a device or a directory -> error rows, no hang.
5. A damaged line in the middle of OUT (or a repeated id) is set aside in OUT.bad; every
   other row is kept, only the missing ids are scored again.
6. A closed stdout pipe, `bench --threads abc|0`, the align summary label, --device help.
"""
import errno
import os
import shutil
import signal
import subprocess
import time

import pytest
from fastctc import cli
from score_helpers import by_id, make_set, read_jsonl, read_rows, write_manifest
from score_helpers import cli_cmd as _cmd
from score_helpers import cli_env as _env

COLS = ("nll", "nll_per_frame", "nll_per_token", "frames", "tokens", "error")



def _one_line_error(err, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _full(tmp_path, manifest, vocab):
    full = tmp_path / "full.jsonl"
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", full, "--quiet"]) == 0
    return by_id(read_jsonl(full))


# ------------------------------------------------------------------------- 1. OUT unusable

@pytest.mark.parametrize("where", ["missing_folder", "under_a_file", "read_only"])
def test_unusable_out_is_exit_2_before_scoring(tmp_path, capsys, monkeypatch, where):
    manifest, vocab, _, _ = make_set(tmp_path, n=4)
    if where == "missing_folder":
        out = tmp_path / "no" / "such" / "o.jsonl"
        cause = "No such file or directory"
    elif where == "under_a_file":
        (tmp_path / "plain").write_text("x")
        out = tmp_path / "plain" / "o.jsonl"
        cause = "Not a directory"
    else:
        # a read-only file system, as the kernel reports it (root ignores permission bits,
        # so a chmod'ed folder would not do): every create under the folder gets EROFS
        ro = tmp_path / "ro"
        ro.mkdir()
        out = ro / "o.jsonl"
        real_open = os.open

        def ro_open(path, flags, *a, **k):
            if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *a, **k)
        monkeypatch.setattr(os, "open", ro_open)
        cause = "Read-only file system"
    rc = cli.main(["score", manifest, "--vocab", vocab, "--out", out])
    captured = capsys.readouterr()
    assert rc == 2
    _one_line_error(captured.err, str(out), cause)
    assert captured.out == ""
    assert not os.path.exists(out)


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_disk_full_mid_run_is_exit_3_and_a_rerun_resumes(tmp_path, ext):
    """RLIMIT_FSIZE makes writes past the limit fail with EFBIG, as a full disk fails them
    with ENOSPC: the run stops with exit 3, OUT ends on a complete row, the rerun (limit
    lifted) scores only what is missing."""
    resource = pytest.importorskip("resource")
    if ext == "parquet":
        pytest.importorskip("pyarrow")
    manifest, vocab, items, _ = make_set(tmp_path, n=40, seed=5)
    want = _full(tmp_path, manifest, vocab)
    out = tmp_path / f"o.{ext}"
    limit = 2500

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    r = subprocess.run(_cmd("score", manifest, "--vocab", vocab, "--out", out, "--chunk-size", 3),
                       env=_env(), capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert r.returncode == 3, (r.returncode, r.stderr)
    written = out if ext != "parquet" else tmp_path / f"o.{ext}.journal.jsonl"
    _one_line_error(r.stderr, str(written), "File too large", "rerun")
    partial = read_rows(written) if ext != "parquet" else read_jsonl(written)
    assert 0 < len(partial) < len(items)
    assert os.path.getsize(written) <= limit
    assert open(written, "rb").read().endswith(b"\n")         # ends on a complete row
    for row in partial:
        for c in COLS:
            assert row[c] == want[row["id"]][c]
    r = subprocess.run(_cmd("score", manifest, "--vocab", vocab, "--out", out), env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{len(items) - len(partial)} scored by this run" in r.stdout
    got = read_rows(out)
    assert len(got) == len({g["id"] for g in got}) == len(items)
    for g in got:
        for c in COLS:
            assert g[c] == want[g["id"]][c]


def test_enospc_on_a_write_is_exit_3(tmp_path, capsys, monkeypatch):
    manifest, vocab, items, _ = make_set(tmp_path, n=30)
    out = tmp_path / "o.jsonl"
    real_write, calls = os.write, [0]

    def full_disk(fd, data):
        st = os.fstat(fd)
        if out.exists() and (st.st_dev, st.st_ino) == (out.stat().st_dev, out.stat().st_ino):
            calls[0] += 1
            if calls[0] >= 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full_disk)
    rc = cli.main(["score", manifest, "--vocab", vocab, "--out", out, "--chunk-size", "5"])
    assert rc == 3
    _one_line_error(capsys.readouterr().err, str(out), "No space left on device")
    assert len(read_jsonl(out)) == 10                          # two chunks of 5 were written
    monkeypatch.setattr(os, "write", real_write)
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "-q"]) == 0
    assert len(by_id(read_jsonl(out))) == len(items)


# ------------------------------------------------------------------------- 2. lock

def test_second_run_on_a_locked_out_is_exit_2(tmp_path, capsys):
    from fastctc.score.sinks import OutLock
    manifest, vocab, _, _ = make_set(tmp_path, n=4)
    out = tmp_path / "o.jsonl"
    with OutLock(str(out)):
        assert cli.main(["score", manifest, "--vocab", vocab, "--out", out]) == 2
        _one_line_error(capsys.readouterr().err, str(out), "in use by another fastctc run")
    assert not os.path.exists(str(out) + ".lock")
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "-q"]) == 0
    assert not os.path.exists(str(out) + ".lock")            # removed at the end of the run


def test_two_processes_at_once_write_every_id_once(tmp_path):
    manifest, vocab, items, _ = make_set(tmp_path, n=40, seed=3)
    out = tmp_path / "o.jsonl"
    slow = subprocess.Popen(_cmd("score", manifest, "--vocab", vocab, "--out", out, "--chunk-size", 4),
                            env=_env(FASTCTC_SCORE_TEST_DELAY="0.1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.02)
    second = subprocess.run(_cmd("score", manifest, "--vocab", vocab, "--out", out), env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert slow.poll() is None, "the first run ended before the second started"
    assert second.returncode == 2
    _one_line_error(second.stderr, "in use by another fastctc run")
    _, err = slow.communicate(timeout=120)
    assert slow.returncode == 0, err
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == len(items)


def test_a_part_file_a_worker_still_writes_is_not_merged(tmp_path, capsys):
    from fastctc.score.rows import columns
    from fastctc.score.sinks import JsonlSink, try_lock_file
    manifest, vocab, _, _ = make_set(tmp_path, n=6)
    out = tmp_path / "o.jsonl"
    parts = tmp_path / "o.jsonl.parts"
    parts.mkdir()
    part = JsonlSink(str(parts / "part-000000.jsonl"), columns())
    part.open()
    part.close()
    fd = try_lock_file(part.path)          # as the worker of an earlier run would
    try:
        assert cli.main(["score", manifest, "--vocab", vocab, "--out", out]) == 2
        _one_line_error(capsys.readouterr().err, "part-000000.jsonl", "Dask worker")
        assert parts.exists()
    finally:
        os.close(fd)
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "-q"]) == 0
    assert not parts.exists()


# ------------------------------------------------------------------------- 3. OUT is an input

@pytest.mark.parametrize("what", ["manifest", "manifest_symlink", "vocab_hardlink", "emissions_hardlink"])
def test_out_that_is_an_input_is_exit_2_and_untouched(tmp_path, capsys, what):
    manifest, vocab, items, rows = make_set(tmp_path, n=6)
    if what == "manifest":
        out, victim = manifest, manifest
        needle = "the manifest"
    elif what == "manifest_symlink":
        out, victim = str(tmp_path / "link.jsonl"), manifest
        os.symlink(manifest, out)
        needle = "the manifest"
    elif what == "vocab_hardlink":
        out, victim = str(tmp_path / "v.csv"), vocab
        os.link(vocab, out)
        needle = "the vocab"
    else:
        victim = os.path.join(tmp_path, rows[0]["emissions"])
        out = str(tmp_path / "e.jsonl")
        os.link(victim, out)
        needle = "emissions file of manifest row 1"
    before = open(victim, "rb").read()
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out]) == 2
    _one_line_error(capsys.readouterr().err, needle)
    assert open(victim, "rb").read() == before
    assert not os.path.exists(out + ".bad")


# ------------------------------------------------------------------------- 4. odd emissions

def test_fifo_device_and_directory_emissions_are_error_rows(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    manifest, vocab, items, rows = make_set(tmp_path, n=5)
    os.mkfifo(tmp_path / "pipe.npy")
    os.mkfifo(tmp_path / "pipe.npz")
    (tmp_path / "adir.npy").mkdir()
    odd = {"fifo": ("pipe.npy", "FIFO"), "fifo_npz": ("pipe.npz:x", "FIFO"),
           "device": (os.devnull, "character device"), "folder": ("adir.npy", "directory")}
    write_manifest(manifest, rows + [{"id": k, "emissions": v[0], "text": "a"} for k, v in odd.items()])
    # a subprocess with a timeout: a FIFO opened for reading would block forever
    r = subprocess.run(_cmd("score", manifest, "--vocab", vocab, "--out", tmp_path / "o.jsonl"),
                       env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    got = by_id(read_jsonl(tmp_path / "o.jsonl"))
    assert len(got) == len(items) + len(odd)
    for k, (_, needle) in odd.items():
        assert got[k]["nll"] is None and needle in got[k]["error"] and "not a regular file" in got[k]["error"]


# ------------------------------------------------------------------------- 5. damaged OUT

@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_damage_in_the_middle_keeps_every_other_row(tmp_path, capsys, ext):
    manifest, vocab, items, rows = make_set(tmp_path, n=20, seed=2)
    out = tmp_path / f"o.{ext}"
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "-q"]) == 0
    want = by_id(read_rows(out))
    lines = open(out, "rb").read().split(b"\n")
    header = 1 if ext == "csv" else 0
    k = header + 6                                          # row 6: a bit flip makes it unparsable
    damaged_id = read_rows(out)[6]["id"]
    lines[k] = lines[k].replace(b",", b"\x00", 1) if ext == "jsonl" else lines[k] + b',"x'
    lines.insert(header + 12, b"")                          # and a blank line further down
    open(out, "wb").write(b"\n".join(lines))
    # the emissions of every other item move away: a rerun that rescored them would
    # turn good rows into error rows
    kept = [r for r in rows if r["id"] == damaged_id]
    shutil.move(str(tmp_path / "em"), str(tmp_path / "em_moved"))
    os.makedirs(tmp_path / "em")
    src = kept[0]["emissions"].split(":")[0]
    shutil.copy(str(tmp_path / "em_moved" / os.path.relpath(src, "em")), str(tmp_path / src))
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out]) == 0
    captured = capsys.readouterr()
    assert "1 scored by this run" in captured.out
    assert "o." + ext + ".bad" in captured.err and "Traceback" not in captured.err
    got = read_rows(out)
    assert len(got) == len({g["id"] for g in got}) == len(items)
    for g in got:
        for c in COLS:
            assert g[c] == want[g["id"]][c], (g["id"], c)
    bad = open(str(out) + ".bad", "rb").read()
    assert bad.count(b"\n") == 4                            # two lines, each with a comment line


def test_repeated_ids_in_out_are_set_aside(tmp_path, capsys):
    manifest, vocab, items, _ = make_set(tmp_path, n=10)
    out = tmp_path / "o.jsonl"
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "-q"]) == 0
    data = open(out, "rb").read()
    open(out, "ab").write(data)                             # what two unlocked runs left behind
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out]) == 0
    assert "0 scored by this run" in capsys.readouterr().out
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == len(items)
    assert open(out, "rb").read() == data
    assert open(str(out) + ".bad", "rb").read().count(b"second row for id") == len(items)


def test_torn_last_line_is_cut_not_set_aside(tmp_path):
    manifest, vocab, items, _ = make_set(tmp_path, n=8)
    out = tmp_path / "o.jsonl"
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "-q"]) == 0
    data = open(out, "rb").read()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    open(out, "wb").write(data[:cut + 20])                 # the last row half written
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "-q"]) == 0
    assert open(out, "rb").read() == data
    assert not os.path.exists(str(out) + ".bad")


def test_a_foreign_file_as_out_is_refused_untouched(tmp_path, capsys):
    manifest, vocab, _, _ = make_set(tmp_path, n=4)
    out = tmp_path / "notes.jsonl"
    out.write_text("my notes\nnot json at all\n")
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out]) == 2
    _one_line_error(capsys.readouterr().err, "holds no rows of fastctc score")
    assert out.read_text() == "my notes\nnot json at all\n"


# ------------------------------------------------------------------------- 6. CLI odds

def test_closed_stdout_pipe_exits_quietly(tmp_path):
    manifest, vocab, _, _ = make_set(tmp_path, n=12)
    # `fastctc score ... | head -0`: the reader is gone before the summary is printed
    p = subprocess.Popen(_cmd("score", manifest, "--vocab", vocab, "--out", tmp_path / "o.jsonl",
                              "--worst", 10), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert p.returncode == 0, err
    assert err == ""
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 12


@pytest.mark.parametrize("argv", [["bench", "--threads", "abc"], ["bench", "--threads", "0"],
                                  ["bench", "--threads", "1,-2"], ["bench", "score", "--threads", "0"]])
def test_bench_bad_threads_is_a_usage_error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if "error:" in ln][0].count("--threads") == 1


def test_align_summary_label_and_device_help(tmp_path, capsys):
    pytest.importorskip("fastctc._align")
    manifest, vocab, _, _ = make_set(tmp_path, n=4)
    assert cli.main(["align", manifest, "--vocab", vocab, "--out", tmp_path / "a.jsonl"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fastctc align: 4 items") and "fastctc score" not in out
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["score", "--help"])
    assert "--device {cpu,cuda}" in capsys.readouterr().out
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["score"].format_help()
    device_help = help_text[help_text.index("\n  --device"):help_text.index("\n  --dask")]
    assert "cuda" in device_help and "fastctc.torch" in device_help


@pytest.mark.parametrize("jobs", [1, 2])
def test_interrupt_exits_130_and_a_rerun_resumes(tmp_path, jobs):
    manifest, vocab, items, _ = make_set(tmp_path, n=40, seed=9)
    out = tmp_path / "o.jsonl"
    p = subprocess.Popen(_cmd("score", manifest, "--vocab", vocab, "--out", out, "--chunk-size", 4,
                              "--jobs", jobs),
                         env=_env(FASTCTC_SCORE_TEST_DELAY="0.1"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out.exists() and out.read_bytes().count(b"\n") >= 8):
        time.sleep(0.02)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err and "rerun" in err
    assert not os.path.exists(str(out) + ".lock")
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "-q"]) == 0
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == len(items)
