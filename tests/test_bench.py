"""The benchmark module runs end to end on a tiny shape and prints a well-formed table
(its numbers are never asserted: timings belong in benchmarks/, not in tests)."""
from fastctc import _bench


def test_paired_timing_alternates_and_reports_ratios():
    calls = []
    medians, times = _bench.paired_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3   # warm-ups, then rounds: settle + timed each
    assert set(medians) == {"a", "b"} and all(len(v) == 3 for v in times.values())
    assert _bench.paired_speedup([4.0, 6.0, 9.0], [2.0, 2.0, 3.0]) == 3.0


def test_bench_table(monkeypatch, capsys):
    monkeypatch.setitem(_bench.SHAPES, "vocab5k", (6, 2, 40, 3))   # tiny stand-in, same code path
    monkeypatch.setattr(_bench, "copy_bandwidth_gbs", lambda: 10.0)
    assert _bench.main(["--shapes", "vocab5k,char", "--threads", "1", "--repeats", "2", "--no-optax"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| vocab5k") or line.startswith("| char")]
    cases = {"loss (log_probs)", "loss+grad (logits)", "loss+grad (log_probs)", "loss+grad (logits, grad_out=)"}
    assert {row.split(" | ")[2] for row in rows} == cases
    assert len(rows) == 2 * len(cases)
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert float(cells[3]) > 0
        bounded = cells[0].startswith("vocab5k") and cells[2].startswith("loss+grad (logits")
        assert (cells[8] != "-") == bounded
        if bounded:  # 2 * 6*2*40 float32 (3840 bytes) at 10 GB/s = 0.000384 ms, three digits
            assert cells[8].startswith("0.000384 (")
