"""Tests for the `fastctc` command: exit statuses, messages without tracebacks, info,
--version, bench delegation, the summary, kill -9 then resume (a real subprocess), and
the Dask path on a LocalCluster (same rows as a local run)."""
import io
import os
import signal
import subprocess
import sys
import time
import types

import pytest
from fastctc import cli
from score_helpers import by_id, make_set, read_jsonl, read_rows, write_manifest
from score_helpers import cli_cmd as _cmd
from score_helpers import cli_env as _env


def test_version_and_info(capsys):
    import fastctc
    assert cli.main(["--version"]) == 0
    assert fastctc.__version__ in capsys.readouterr().out
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    info = fastctc.info()
    assert info["version"] in out and str(info["simd_level"]) in out
    assert "OpenMP" in out and "CUDA" in out


def test_info_thread_count_grammar(capsys, monkeypatch):
    import fastctc
    for n, text in ((1, "1 thread by default"), (3, "3 threads by default")):
        monkeypatch.setattr(fastctc, "info", lambda n=n: {"version": "x", "simd_level": "scalar", "openmp": True,
                                                          "threads": n, "cuda": {}})
        assert cli.main(["info"]) == 0
        assert text in capsys.readouterr().out


def test_no_command_and_unknown_option_are_usage_errors(capsys):
    assert cli.main([]) == 2
    assert cli.main(["score", "m.jsonl", "--vocab", "v", "--out", "o.jsonl", "--bogus"]) == 2
    assert cli.main(["score", "m.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "required" in err


def test_bench_is_delegated(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("fastctc._bench")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "fastctc._bench", fake)
    assert cli.main(["bench", "--quick", "-n", "3"]) == 0
    assert seen["argv"] == ["--quick", "-n", "3"]
    monkeypatch.setitem(sys.modules, "fastctc._bench", None)     # as if the module were absent
    assert cli.main(["bench"]) == 2
    assert "fastctc._bench" in capsys.readouterr().err


def test_exit_codes_and_summary(tmp_path, capsys):
    manifest, vocab, items, rows = make_set(tmp_path, n=10)
    out = tmp_path / "o.jsonl"
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out, "--worst", "3"]) == 0
    text = capsys.readouterr().out
    assert "10 items" in text and "0 failed" in text
    worst = sorted(read_jsonl(out), key=lambda r: r["nll_per_frame"], reverse=True)[:3]
    tail = text.strip().splitlines()[-3:]                   # the worst ids close the summary
    assert [line.split()[0] for line in tail] == [r["id"] for r in worst]

    write_manifest(manifest, rows + [{"id": "gone", "emissions": "gone.npy", "text": "a"}])
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", out]) == 1
    text = capsys.readouterr().out
    assert "1 failed" in text and "gone: emissions file not found" in text
    assert "1 scored by this run" in text                   # resumed: only the new item ran

    assert cli.main(["score", manifest, "--vocab", vocab, "--out", tmp_path / "o.xlsx"]) == 2
    captured = capsys.readouterr()
    assert "extension" in captured.err and "Traceback" not in captured.err

    assert cli.main(["score", manifest, "--vocab", vocab, "--out", tmp_path / "q.jsonl", "--quiet"]) == 1
    assert capsys.readouterr().out == ""


def test_progress_bar_only_on_a_terminal():
    from fastctc.score.run import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty = Tty()
    p = Progress(10, 2, True, tty)
    p.update(8)
    p.close()
    assert "10/10" in tty.getvalue() and "items/s" in tty.getvalue() and "ETA" in tty.getvalue()
    quiet = io.StringIO()
    p = Progress(10, 0, False, quiet)
    p.update(10)
    p.close()
    assert quiet.getvalue() == ""


def test_python_m_fastctc_runs_as_a_subprocess(tmp_path):
    manifest, vocab, _, _ = make_set(tmp_path, n=5)
    r = subprocess.run(_cmd("score", manifest, "--vocab", vocab, "--out", tmp_path / "o.csv"),
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""                          # stderr is not a TTY: no progress bar
    assert "5 items" in r.stdout
    r = subprocess.run(_cmd("score", tmp_path / "absent.jsonl", "--vocab", vocab, "--out", tmp_path / "x.jsonl"),
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "absent.jsonl" in r.stderr


@pytest.mark.parametrize("ext,jobs", [("jsonl", 1), ("csv", 1), ("jsonl", 2)])
def test_kill_9_then_resume_gives_the_uninterrupted_rows(tmp_path, ext, jobs):
    manifest, vocab, items, _ = make_set(tmp_path, n=48, seed=7)
    full = tmp_path / "full.jsonl"
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", full, "--quiet"]) == 0
    out = tmp_path / f"o.{ext}"
    header = 1 if ext == "csv" else 0
    # a slow run (test hook: sleep after each chunk of 4 items), killed with SIGKILL mid-way
    proc = subprocess.Popen(_cmd("score", manifest, "--vocab", vocab, "--out", out, "--chunk-size", 4,
                                 "--jobs", jobs),
                            env=_env(FASTCTC_SCORE_TEST_DELAY="0.15"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= header + 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the scoring run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial_lines = out.read_bytes().count(b"\n") - header
    assert 8 <= partial_lines < len(items)
    # the rerun below must find OUT unlocked: the lock died with the killed run (its worker
    # processes, which may outlive it for a moment, hold no copy of it)
    r = subprocess.run(_cmd("score", manifest, "--vocab", vocab, "--out", out), env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = read_rows(out)
    ids = [g["id"] for g in got]
    assert len(ids) == len(set(ids)) == len(items)
    want = by_id(read_jsonl(full))
    for g in got:
        for col in ("nll", "nll_per_frame", "nll_per_token", "frames", "tokens", "error"):
            assert g[col] == want[g["id"]][col]
    assert f"{len(items) - partial_lines} scored by this run" in r.stdout


@pytest.mark.slow
def test_dask_local_cluster_gives_the_local_rows_and_resumes(tmp_path):
    pytest.importorskip("distributed", reason='the Dask path needs dask[distributed]')
    manifest, vocab, items, rows = make_set(tmp_path, n=30, seed=11)
    write_manifest(manifest, rows + [{"id": "bad", "emissions": "absent.npy", "text": "a"}])
    local = tmp_path / "local.jsonl"
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", local, "--quiet"]) == 1
    want = by_id(read_jsonl(local))

    # an interrupted earlier run: 5 rows already in OUT, a torn part file from a worker
    out = tmp_path / "dask.jsonl"
    from fastctc.score.rows import columns
    from fastctc.score.sinks import JsonlSink
    ordered = read_jsonl(local)
    sink = JsonlSink(str(out), columns())
    sink.open()
    sink.append(ordered[:5])
    sink.close()
    os.makedirs(str(out) + ".parts")
    part = JsonlSink(str(out) + ".parts/part-000001.jsonl", columns())
    part.open()
    part.append(ordered[7:10])
    part.close()
    with open(part.path, "ab") as f:
        f.write(b'{"id": "utt010", "nll": 1.')
    r = subprocess.run(_cmd("score", manifest, "--vocab", vocab, "--out", out, "--dask", "local:2",
                            "--shard-size", 7, "--chunk-size", 3),
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    got = read_jsonl(out)
    assert len(got) == len({g["id"] for g in got}) == len(want)
    assert by_id(got) == want
    assert not os.path.exists(str(out) + ".parts")
    assert f"{len(want) - 8} scored by this run" in r.stdout


def test_bench_score_runs_on_a_small_set(tmp_path, capsys):
    """`fastctc bench score` builds the synthetic set and runs the real command in child
    processes; on 300 items it must print one table row per order (numbers unchecked:
    timings belong to benchmarks/, not to tests)."""
    assert cli.main(["bench", "score", "--items", "300", "--dir", tmp_path / "set", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| sorted") or ln.startswith("| interleaved")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[3]) > 0 and float(cells[4]) > 0 and cells[6].endswith("%")
    assert len(read_jsonl(tmp_path / "set" / "manifest-sorted.jsonl")) == 300
    with open(tmp_path / "set" / "manifest-interleaved.jsonl") as f:
        assert sorted(f) == sorted(open(tmp_path / "set" / "manifest-sorted.jsonl"))
