"""Tests for fastctc's offline scoring engine (the fastctc.score package):
values equal fastctc.ctc_loss item by item, every bad-item kind becomes an error row,
JSONL/CSV/Parquet outputs agree, and a rerun resumes from a torn or partial OUT."""
import json
import os

import numpy as np
import pytest

import fastctc
from fastctc.score import ScoreOptions, UsageError, run_score
from score_helpers import SYMBOLS, by_id, log_softmax, make_set, read_jsonl, read_rows, write_manifest, write_vocab

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "ocr")


def _score(manifest, vocab, out, **kw):
    kw.setdefault("quiet", True)
    return run_score(ScoreOptions(str(manifest), str(vocab), str(out), **kw))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_equal_ctc_loss_item_by_item(tmp_path, dtype):
    manifest, vocab, items, _ = make_set(tmp_path, n=30, dtype=dtype)
    out = tmp_path / "scores.jsonl"
    assert _score(manifest, vocab, out, batch_size=7, chunk_size=11) == 0
    rows = by_id(read_jsonl(out))
    assert list(rows) == [it["id"] for it in items]      # manifest order, one row each
    for it in items:
        arr, tok = it["emissions"], it["tokens"]
        want = float(fastctc.ctc_loss(arr, np.array(tok, dtype=np.int64), arr.shape[0], len(tok),
                                      blank=0, reduction="none"))
        r = rows[it["id"]]
        assert r["error"] is None
        np.testing.assert_allclose(r["nll"], want, rtol=1e-6 if dtype == np.float32 else 1e-12)
        assert r["frames"] == arr.shape[0] and r["tokens"] == len(tok)
        np.testing.assert_allclose(r["nll_per_frame"], r["nll"] / arr.shape[0], rtol=1e-12)
        np.testing.assert_allclose(r["nll_per_token"], r["nll"] / max(len(tok), 1), rtol=1e-12)


def test_from_logits_applies_log_softmax(tmp_path):
    manifest, vocab, items, rows = make_set(tmp_path, n=8, dtype=np.float64)
    out_lp = tmp_path / "lp.jsonl"
    assert _score(manifest, vocab, out_lp) == 0
    # shift every frame by a per-frame constant: logits whose log_softmax is the original
    for it, row in zip(items, rows):
        shifted = it["emissions"] + np.arange(it["emissions"].shape[0])[:, None] * 3.0 + 5.0
        np.save(tmp_path / f"logit_{it['id']}.npy", shifted)
        row["emissions"] = f"logit_{it['id']}.npy"
    write_manifest(tmp_path / "logits.jsonl", rows)
    out_lg = tmp_path / "lg.jsonl"
    assert _score(str(tmp_path / "logits.jsonl"), vocab, out_lg, from_logits=True) == 0
    a, b = by_id(read_jsonl(out_lp)), by_id(read_jsonl(out_lg))
    for k in a:
        np.testing.assert_allclose(b[k]["nll"], a[k]["nll"], rtol=1e-9, atol=1e-9)


def test_multi_character_symbols_and_blank_choice(tmp_path):
    # "ab" is its own symbol: longest match first; --blank moves the blank to the last class
    symbols = ["a", "b", "ab", "c", "<b>"]
    vocab = write_vocab(tmp_path / "v.txt", symbols)
    rng = np.random.default_rng(3)
    arr = log_softmax(rng.normal(size=(12, 5))).astype(np.float64)
    np.save(tmp_path / "x.npy", arr)
    write_manifest(tmp_path / "m.jsonl", [{"id": "x", "emissions": "x.npy", "text": "abcab"}])
    out = tmp_path / "o.jsonl"
    assert _score(str(tmp_path / "m.jsonl"), vocab, out, blank=4) == 0
    (row,) = read_jsonl(out)
    want = float(fastctc.ctc_loss(arr, np.array([2, 3, 2]), 12, 3, blank=4, reduction="none"))
    assert row["tokens"] == 3
    np.testing.assert_allclose(row["nll"], want, rtol=1e-12)


def test_every_bad_item_kind_becomes_an_error_row(tmp_path):
    manifest, vocab, items, rows = make_set(tmp_path, n=6, dtype=np.float32)
    C = len(SYMBOLS)
    rng = np.random.default_rng(1)
    good = log_softmax(rng.normal(size=(10, C))).astype(np.float32)
    nan = good.copy()
    nan[4, 2] = np.nan
    np.save(tmp_path / "rank3.npy", good[None])
    np.save(tmp_path / "wrongC.npy", good[:, :4])
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "ints.npy", np.zeros((10, C), dtype=np.int32))
    np.save(tmp_path / "good.npy", good)
    np.save(tmp_path / "short.npy", good[:3])
    (tmp_path / "garbage.npy").write_bytes(b"this is not a numpy file")
    bad = {
        "missing": ({"emissions": "nope.npy", "text": "a"}, "not found"),
        "unreadable": ({"emissions": "garbage.npy", "text": "a"}, "cannot read"),
        "rank": ({"emissions": "rank3.npy", "text": "a"}, "2-D"),
        "classes": ({"emissions": "wrongC.npy", "text": "a"}, "C = 4"),
        "symbol": ({"emissions": "good.npy", "text": "abz"}, "'z' at character 2"),
        "too_long": ({"emissions": "short.npy", "text": "abc a"}, "infeasible"),
        "repeats": ({"emissions": "short.npy", "text": "aa a"}, "infeasible"),
        "nan": ({"emissions": "nan.npy", "text": "a"}, "nan at frame 4, class 2"),
        "npz_key": ({"emissions": "em/shared.npz:nokey", "text": "a"}, "no array 'nokey'"),
        "token_range": ({"emissions": "good.npy", "tokens": [1, 9]}, "tokens[1] = 9"),
        "token_blank": ({"emissions": "good.npy", "tokens": [0]}, "blank"),
        "dtype": ({"emissions": "ints.npy", "text": "a"}, "not floating point"),
        "no_text": ({"emissions": "good.npy"}, "neither"),
    }
    all_rows = rows + [dict(id=k, **v[0]) for k, v in bad.items()]
    write_manifest(tmp_path / "bad.jsonl", all_rows)
    out = tmp_path / "o.jsonl"
    assert _score(str(tmp_path / "bad.jsonl"), vocab, out, batch_size=4) == 1   # some failed
    got = by_id(read_jsonl(out))
    assert len(got) == len(all_rows)
    for it in items:                              # the good ones still scored
        assert got[it["id"]]["error"] is None and np.isfinite(got[it["id"]]["nll"])
    for k, (_, needle) in bad.items():
        err = got[k]["error"]
        assert err and needle.lower() in err.lower(), (k, err)
        assert got[k]["nll"] is None
    assert got["too_long"]["frames"] == 3 and got["too_long"]["tokens"] == 5


def test_zero_probability_alignment_is_an_error_row(tmp_path):
    vocab = write_vocab(tmp_path / "v.txt")
    arr = np.full((6, len(SYMBOLS)), -np.inf, dtype=np.float64)
    arr[:, 0] = 0.0                       # only the blank is possible: "a" cannot be emitted
    np.save(tmp_path / "x.npy", arr)
    write_manifest(tmp_path / "m.jsonl", [{"id": "x", "emissions": "x.npy", "text": "a"}])
    out = tmp_path / "o.jsonl"
    assert _score(str(tmp_path / "m.jsonl"), vocab, out) == 1
    (row,) = read_jsonl(out)
    assert "infeasible" in row["error"] and row["nll"] is None


@pytest.mark.parametrize("problem,needle", [
    ("dup", "already used"), ("badjson", "not valid JSON"), ("noid", "no `id`"),
    ("ext", ".jsonl, .csv or .parquet"), ("blank", "--blank 9"), ("nomanifest", "cannot read"),
    ("batch", "--batch-size"),
])
def test_usage_errors(tmp_path, problem, needle):
    manifest, vocab, _, rows = make_set(tmp_path, n=3)
    out, kw = str(tmp_path / "o.jsonl"), {}
    if problem == "dup":
        write_manifest(manifest, rows + [rows[0]])
    elif problem == "badjson":
        with open(manifest, "a") as f:
            f.write("{not json\n")
    elif problem == "noid":
        write_manifest(manifest, rows + [{"emissions": "x.npy", "text": "a"}])
    elif problem == "ext":
        out = str(tmp_path / "o.txt")
    elif problem == "blank":
        kw["blank"] = 9
    elif problem == "nomanifest":
        manifest = str(tmp_path / "absent.jsonl")
    elif problem == "batch":
        kw["batch_size"] = 0
    with pytest.raises(UsageError, match=needle.replace("-", r"\-").replace(".", r"\.")):
        _score(manifest, vocab, out, **kw)


_rows_of = read_rows


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_output_formats_agree(tmp_path, ext):
    if ext == "parquet":
        pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow")
    manifest, vocab, _, rows = make_set(tmp_path, n=12)
    write_manifest(manifest, rows + [{"id": "broken", "emissions": "missing.npy", "text": "a"}])
    ref = tmp_path / "ref.jsonl"
    assert _score(manifest, vocab, ref) == 1
    out = tmp_path / f"o.{ext}"
    assert _score(manifest, vocab, out, chunk_size=5) == 1
    want, got = by_id(read_jsonl(ref)), by_id(_rows_of(out))
    assert want.keys() == got.keys()
    for k in want:
        for col in ("nll", "nll_per_frame", "nll_per_token", "frames", "tokens", "error"):
            assert got[k][col] == want[k][col], (k, col)   # exact: floats round-trip
    assert not os.path.exists(str(out) + ".journal.jsonl")


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_resume_from_partial_and_torn_output(tmp_path, ext):
    if ext == "parquet":
        pytest.importorskip("pyarrow", reason="Parquet output needs pyarrow")
    manifest, vocab, items, _ = make_set(tmp_path, n=20)
    full = tmp_path / "full.jsonl"
    assert _score(manifest, vocab, full) == 0
    out = tmp_path / f"o.{ext}"
    # what a run killed after 8 rows, in the middle of writing the 9th, leaves behind
    from fastctc.score.sinks import make_sink
    sink = make_sink(str(out))
    sink.open()
    sink.append(read_jsonl(full)[:8])
    target = str(out) + ".journal.jsonl" if ext == "parquet" else str(out)
    torn = sink.encode(read_jsonl(full)[8:9]) if ext != "parquet" else sink.journal.encode(read_jsonl(full)[8:9])
    with open(target, "ab") as f:
        f.write(torn[: len(torn) // 2])
    assert _score(manifest, vocab, out) == 0
    got = _rows_of(out)
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)) == len(items)          # nothing lost, no duplicates
    want = by_id(read_jsonl(full))
    for r in got:
        assert r["nll"] == want[r["id"]]["nll"]
    # a third run has nothing left to do and changes nothing
    before = open(out, "rb").read()
    assert _score(manifest, vocab, out) == 0
    assert open(out, "rb").read() == before


def test_csv_resume_refuses_other_columns(tmp_path):
    manifest, vocab, _, _ = make_set(tmp_path, n=3)
    out = tmp_path / "o.csv"
    out.write_text("id,score\n")
    with pytest.raises(UsageError, match="columns"):
        _score(manifest, vocab, out)


def test_vocab_lines_are_verbatim(tmp_path):
    from fastctc.score.vocab import load_vocab
    p = tmp_path / "v.txt"
    p.write_bytes(b"<b>\n \nab\r\nx\n")
    assert load_vocab(str(p)) == ["<b>", " ", "ab", "x"]
    p.write_bytes(b"<b>\n \n")
    assert load_vocab(str(p)) == ["<b>", " "]


def test_parquet_manifest(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="Parquet manifests need pyarrow")
    import pyarrow.parquet as pq
    manifest, vocab, _, rows = make_set(tmp_path, n=9)
    table = pa.Table.from_pylist([{"id": r["id"], "emissions": r["emissions"],
                                   "text": r.get("text"), "tokens": r.get("tokens")} for r in rows])
    pq.write_table(table, tmp_path / "manifest.parquet")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert _score(manifest, vocab, a) == 0
    assert _score(str(tmp_path / "manifest.parquet"), vocab, b) == 0
    assert by_id(read_jsonl(a)) == by_id(read_jsonl(b))


def test_align_adds_token_spans(tmp_path):
    pytest.importorskip("fastctc._align", reason="fastctc._align (forced_align, merge_tokens) "
                        "is written by another helper and is not in this worktree yet")
    manifest, vocab, items, _ = make_set(tmp_path, n=10, dtype=np.float64)
    out = tmp_path / "o.jsonl"
    assert _score(manifest, vocab, out, align=True) == 0
    got = by_id(read_jsonl(out))
    for it in items:
        spans = got[it["id"]]["spans"]
        assert [s["token"] for s in spans] == it["tokens"]
        assert [s["symbol"] for s in spans] == [SYMBOLS[t] for t in it["tokens"]]
        T = it["emissions"].shape[0]
        ends = [-1] + [s["end"] for s in spans]
        for s, prev_end in zip(spans, ends):
            assert prev_end <= s["start"] < s["end"] <= T


def test_ocr_example_flags_the_wrong_transcripts(tmp_path):
    """The committed PP-OCRv4 data: the deliberately wrong transcripts score worst."""
    truth = read_jsonl(os.path.join(EXAMPLES, "truth.jsonl"))
    wrong = {t["id"] for t in truth if t["wrong"]}
    assert 0 < len(wrong) < len(truth)
    out = tmp_path / "ocr.jsonl"
    assert _score(os.path.join(EXAMPLES, "manifest.jsonl"), os.path.join(EXAMPLES, "vocab.txt"), out) == 0
    rows = read_jsonl(out)
    assert len(rows) == len(truth)
    ranked = sorted(rows, key=lambda r: r["nll_per_frame"], reverse=True)
    assert {r["id"] for r in ranked[:len(wrong)]} == wrong


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_worker_processes_write_the_in_process_rows(tmp_path, ext):
    """--jobs N (forked workers reading their own manifest windows) gives the rows of an
    in-process run, byte for byte, bad items, token items, greedy columns and a resume
    included."""
    if ext == "parquet":
        pytest.importorskip("pyarrow")
    manifest, vocab, items, rows = make_set(tmp_path, n=60, seed=12)
    extra = [{"id": "gone", "emissions": "gone.npy", "text": "a"},
             {"id": "sym", "emissions": rows[0]["emissions"], "text": "abz"}]
    write_manifest(manifest, rows[:30] + extra + rows[30:])
    with open(manifest, "a") as f:
        f.write("\n")                          # a blank line at the end
    outs = {}
    for jobs in (1, 2, 3):
        out = tmp_path / f"o{jobs}.{ext}"
        assert _score(manifest, vocab, out, jobs=jobs, chunk_size=7, batch_size=5, decode="greedy") == 1
        outs[jobs] = out
    if ext == "parquet":
        ref = _rows_of(outs[1])
        assert _rows_of(outs[2]) == ref and _rows_of(outs[3]) == ref
    else:
        ref = open(outs[1], "rb").read()
        assert open(outs[2], "rb").read() == ref and open(outs[3], "rb").read() == ref
    assert len(_rows_of(outs[1])) == len(items) + 2
    # a resume in worker mode scores only what is missing
    out = tmp_path / f"r.{ext}"
    assert _score(manifest, vocab, out, jobs=1, chunk_size=7, decode="greedy") == 1
    if ext == "jsonl":
        data = open(out, "rb").read().splitlines(keepends=True)
        open(out, "wb").write(b"".join(data[:20]))
        assert _score(manifest, vocab, out, jobs=2, chunk_size=7, decode="greedy") == 1
        got = read_jsonl(out)
        assert len(got) == len({g["id"] for g in got}) == len(items) + 2
        assert by_id(got) == by_id(read_jsonl(outs[1]))


def test_emission_reader_matches_np_load_on_every_layout(tmp_path):
    """fastctc.score.emissions reads .npy files and .npz members itself (not through
    np.load); every layout np.save/np.savez can write must give np.load's array, and
    anything it does not handle must fall back to np.load, not fail."""
    import io
    import zipfile
    from fastctc.score.emissions import EmissionLoader
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 6)).astype(np.float32)
    cases = {
        "plain.npy": a, "f64.npy": a.astype(np.float64), "fortran.npy": np.asfortranarray(a),
        "f16.npy": a.astype(np.float16), "big.npy": a.astype(">f4"), "empty.npy": a[:0],
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
    np.save(tmp_path / "v2.npy", a)
    raw = bytearray(open(tmp_path / "v2.npy", "rb").read())   # rewrite as format version 2.0
    hlen = raw[8] | raw[9] << 8
    raw[6:10] = b"\x02\x00" + hlen.to_bytes(2, "little")
    raw[10:10] = b"\x00\x00"
    open(tmp_path / "v2.npy", "wb").write(bytes(raw))
    np.savez(tmp_path / "s.npz", x=a, f=np.asfortranarray(a), h=a.astype(np.float16))
    np.savez_compressed(tmp_path / "c.npz", x=a, y=a * 2)
    np.savez(tmp_path / "one.npz", only=a)
    buf = io.BytesIO()
    np.save(buf, a * 3)
    with zipfile.ZipFile(tmp_path / "bz.npz", "w", compression=zipfile.ZIP_BZIP2) as z:
        z.writestr("x.npy", buf.getvalue())                     # not stored/deflated: np.load reads it
    specs = list(cases) + ["v2.npy", "s.npz:x", "s.npz:f", "s.npz:h", "s.npz:x.npy", "c.npz:x", "c.npz:y",
                           "one.npz", "bz.npz:x"]
    loader = EmissionLoader(str(tmp_path))
    got = loader.load_many(specs)
    for spec, arr in zip(specs, got):
        f, _, k = spec.partition(":")
        ref = np.load(tmp_path / f)
        if isinstance(ref, np.ndarray):
            want = ref
        else:
            want = np.asarray(ref[k] if k else ref[ref.files[0]])
            ref.close()
        assert isinstance(arr, np.ndarray), (spec, arr)
        assert arr.dtype == want.dtype and arr.shape == want.shape, spec
        np.testing.assert_array_equal(arr, want, err_msg=spec)
    loader.close()


@pytest.mark.parametrize("damage,needle", [
    ("crc", "CRC-32 mismatch"), ("truncated_npy", "truncated"), ("pickle", "Python objects"),
    ("two_members", "holds 2 arrays"), ("not_zip", "not a zip archive"), ("bad_header", "bad .npy header"),
])
def test_damaged_emissions_are_error_rows(tmp_path, damage, needle):
    vocab = write_vocab(tmp_path / "v.txt")
    a = log_softmax(np.random.default_rng(1).normal(size=(9, len(SYMBOLS)))).astype(np.float32)
    if damage == "crc":
        np.savez(tmp_path / "e.npz", x=a)
        data = bytearray(open(tmp_path / "e.npz", "rb").read())
        k = data.find(a.tobytes()[:16])
        data[k + 5] ^= 0x10                                      # one bit flipped in the data
        open(tmp_path / "e.npz", "wb").write(bytes(data))
        spec = "e.npz:x"
    elif damage == "truncated_npy":
        np.save(tmp_path / "e.npy", a)
        data = open(tmp_path / "e.npy", "rb").read()
        open(tmp_path / "e.npy", "wb").write(data[:-10])
        spec = "e.npy"
    elif damage == "pickle":
        np.save(tmp_path / "e.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        spec = "e.npy"
    elif damage == "two_members":
        np.savez(tmp_path / "e.npz", x=a, y=a)
        spec = "e.npz"
    elif damage == "not_zip":
        np.save(tmp_path / "e.npy", a)
        import shutil
        shutil.copy(tmp_path / "e.npy", tmp_path / "f.npz")
        spec = "f.npz:x"
    else:
        np.save(tmp_path / "e.npy", a)
        data = open(tmp_path / "e.npy", "rb").read().replace(b"'descr'", b"'dexcr'")
        open(tmp_path / "e.npy", "wb").write(data)
        spec = "e.npy"
    write_manifest(tmp_path / "m.jsonl", [{"id": "x", "emissions": spec, "text": "ab"}])
    out = tmp_path / "o.jsonl"
    assert _score(tmp_path / "m.jsonl", vocab, out) == 1
    (row,) = read_jsonl(out)
    assert row["nll"] is None and needle in row["error"], row["error"]


def test_directory_cache_is_bounded(tmp_path):
    from fastctc.score.emissions import EmissionLoader
    a = np.zeros((3, 2), np.float32)
    for k in range(12):
        np.savez(tmp_path / f"a{k}.npz", **{f"m{j}": a for j in range(50)})
    loader = EmissionLoader(str(tmp_path), dir_bytes=4 * (56 * 50 + 200), max_fds=3)
    for k in range(12):
        got = loader.load_many([f"a{k}.npz:m{j}" for j in range(50)])
        assert all(isinstance(g, np.ndarray) for g in got)
        assert len(loader._dirs) <= 4 and len(loader._fds) <= 3
    loader.close()


def test_integer_ids_are_written_as_strings_and_resume(tmp_path):
    manifest, vocab, items, rows = make_set(tmp_path, n=9)
    write_manifest(manifest, [dict(r, id=k) for k, r in enumerate(rows)])
    out = tmp_path / "o.jsonl"
    assert _score(manifest, vocab, out, chunk_size=4) == 0
    assert [r["id"] for r in read_jsonl(out)] == [str(k) for k in range(9)]
    data = open(out, "rb").read()
    open(out, "wb").write(data[:data.index(b"\n") + 1])
    assert _score(manifest, vocab, out, chunk_size=4) == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(str(k) for k in range(9))
