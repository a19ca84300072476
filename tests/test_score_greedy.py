"""`--decode greedy`: hypotheses (best path, collapsed, through the vocab), cer and wer in
JSONL, CSV and Parquet, whitespace normalisation (and --compare-raw), `--rank-by cer`, and
the bundled OCR set, whose eight deliberately wrong transcripts must rank highest by cer.
Also the pieces: the bit-parallel Levenshtein distance against the textbook table, and
the JSONL encoder against json.dumps byte for byte."""
import json
import os
import random

import numpy as np
import pytest

from fastctc import cli
from fastctc.score import ScoreOptions, UsageError, run_score
from fastctc.score.metrics import levenshtein, normalise_space, text_rates
from score_helpers import SYMBOLS, by_id, log_softmax, make_set, read_jsonl, read_rows, write_manifest, write_vocab

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "ocr")


def _table_distance(a, b):
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return prev[-1]


def test_levenshtein_matches_the_table():
    rng = random.Random(0)
    for _ in range(2000):
        a = "".join(rng.choice("ab c") for _ in range(rng.randint(0, 80)))
        b = "".join(rng.choice("abcd ") for _ in range(rng.randint(0, 80)))
        assert levenshtein(a, b) == _table_distance(a, b), (a, b)
    assert levenshtein([1, 2, 3], [1, 3]) == 1 and levenshtein("", "abc") == 3
    assert levenshtein("kitten", "sitting") == 3


def test_text_rates_normalise_whitespace_unless_raw():
    assert normalise_space("  a \t b\n\nc  ") == "a b c"
    assert text_rates(" hello  world", "hello world ") == (0.0, 0.0)
    cer, wer = text_rates(" hello  world", "hello world ", raw=True)
    assert cer == 3 / len(" hello  world") and wer == 0.0       # words split on whitespace either way
    cer, wer = text_rates("the cat sat", "the bat sat")
    assert cer == 1 / 11 and wer == 1 / 3
    assert text_rates("", "") == (0.0, 0.0) and text_rates("", "ab") == (2.0, 1.0)


def _peaked(path_labels, C, blank=0, seed=0):
    """(T, C) log-probs whose frame-wise argmax is `path_labels`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(path_labels), C))
    x[np.arange(len(path_labels)), path_labels] += 8.0
    return log_softmax(x)


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_greedy_columns_in_every_format(tmp_path, ext):
    if ext == "parquet":
        pytest.importorskip("pyarrow")
    vocab = write_vocab(tmp_path / "v.txt")
    # best paths: "ab" with a repeat and blanks ("a a _ b" -> "ab"); " ba c " with edge spaces
    paths = {"x1": [1, 1, 0, 2, 0], "x2": [4, 2, 1, 4, 4, 0, 3, 4], "x3": [1, 0, 1, 3]}
    texts = {"x1": "ab", "x2": "ba  c", "x3": "abc"}
    rows = []
    for k, p in paths.items():
        np.save(tmp_path / f"{k}.npy", _peaked(p, len(SYMBOLS)).astype(np.float32))
        rows.append({"id": k, "emissions": f"{k}.npy", "text": texts[k]})
    np.save(tmp_path / "t.npy", _peaked([3, 3, 0, 3, 2], len(SYMBOLS)).astype(np.float32))
    rows.append({"id": "tok", "emissions": "t.npy", "tokens": [3, 3, 2]})
    rows.append({"id": "bad", "emissions": "absent.npy", "text": "a"})
    write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / f"o.{ext}"
    rc = run_score(ScoreOptions(str(tmp_path / "m.jsonl"), vocab, str(out), decode="greedy", quiet=True))
    assert rc == 1
    got = by_id(read_rows(out))
    assert got["x1"]["hypothesis"] == "ab" and got["x1"]["cer"] == 0.0 and got["x1"]["wer"] == 0.0
    assert got["x2"]["hypothesis"] == " ba c "                # as decoded, spaces and all
    assert got["x2"]["cer"] == 0.0 and got["x2"]["wer"] == 0.0   # "ba  c" vs " ba c ", normalised
    assert got["x3"]["hypothesis"] == "aac"
    assert got["x3"]["cer"] == pytest.approx(1 / 3) and got["x3"]["wer"] == 1.0
    assert got["tok"]["hypothesis"] == "3 3 2" and got["tok"]["cer"] == 0.0 and got["tok"]["wer"] is None
    assert got["bad"]["hypothesis"] is None and got["bad"]["cer"] is None and got["bad"]["error"]
    for r in got.values():                                    # the NLL columns are still there
        assert (r["nll"] is None) == (r["error"] is not None)
    raw = tmp_path / f"raw.{ext}"
    run_score(ScoreOptions(str(tmp_path / "m.jsonl"), vocab, str(raw), decode="greedy",
                           compare_raw=True, quiet=True))
    got_raw = by_id(read_rows(raw))
    assert got_raw["x2"]["cer"] == pytest.approx(3 / 5)      # 'ba  c' -> ' ba c ': 3 edits
    assert got_raw["x1"]["cer"] == 0.0


def test_formats_agree_with_decode_and_align(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("fastctc._align")
    manifest, vocab, _, rows = make_set(tmp_path, n=15, seed=4)
    write_manifest(manifest, rows + [{"id": "gone", "emissions": "gone.npy", "text": "a"}])
    outs = {}
    for ext in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"o.{ext}"
        assert run_score(ScoreOptions(manifest, vocab, str(out), decode="greedy", align=True,
                                      chunk_size=4, quiet=True)) == 1
        outs[ext] = by_id(read_rows(out))
    assert outs["jsonl"].keys() == outs["csv"].keys() == outs["parquet"].keys()
    for k, want in outs["jsonl"].items():
        for ext in ("csv", "parquet"):
            for col in ("nll", "nll_per_frame", "frames", "tokens", "error", "hypothesis", "cer", "wer"):
                assert outs[ext][k][col] == want[col], (ext, k, col)


def test_hypothesis_is_the_collapsed_argmax_path(tmp_path):
    manifest, vocab, items, _ = make_set(tmp_path, n=20, seed=8)
    out = tmp_path / "o.jsonl"
    assert run_score(ScoreOptions(manifest, vocab, str(out), decode="greedy", batch_size=3, quiet=True)) == 0
    got = by_id(read_jsonl(out))
    for it in items:
        best = it["emissions"].argmax(-1)
        labels = [int(c) for k, c in enumerate(best) if c != 0 and (k == 0 or c != best[k - 1])]
        row = got[it["id"]]
        ref_tokens = it["tokens"]
        if row["wer"] is None:                                  # a token item
            assert row["hypothesis"] == " ".join(map(str, labels))
            assert row["cer"] == levenshtein(ref_tokens, labels) / max(len(ref_tokens), 1)
        else:
            hyp = "".join(SYMBOLS[c] for c in labels)
            assert row["hypothesis"] == hyp
            ref = "".join(SYMBOLS[c] for c in ref_tokens)
            assert (row["cer"], row["wer"]) == text_rates(ref, hyp)


def test_rank_by_cer_needs_decode_and_ranks_the_summary(tmp_path, capsys):
    manifest, vocab, _, _ = make_set(tmp_path, n=6)
    with pytest.raises(UsageError, match="--decode greedy"):
        run_score(ScoreOptions(manifest, vocab, str(tmp_path / "o.jsonl"), rank_by="cer"))
    assert not os.path.exists(tmp_path / "o.jsonl")
    assert cli.main(["score", manifest, "--vocab", vocab, "--out", tmp_path / "o.jsonl", "--rank-by", "wer"]) == 2
    assert "--decode greedy" in capsys.readouterr().err


def test_ocr_set_wrong_transcripts_rank_highest_by_cer(tmp_path, capsys):
    truth = by_id(read_jsonl(os.path.join(EXAMPLES, "truth.jsonl")))
    wrong = {k for k, t in truth.items() if t["wrong"]}
    assert len(wrong) == 8
    out = tmp_path / "ocr.jsonl"
    rc = cli.main(["score", os.path.join(EXAMPLES, "manifest.jsonl"), "--vocab",
                   os.path.join(EXAMPLES, "vocab.txt"), "--out", out, "--decode", "greedy",
                   "--rank-by", "cer", "--worst", "8"])
    assert rc == 0
    rows = by_id(read_jsonl(out))
    for k, r in rows.items():              # the model's greedy reading, recorded by build_data.py
        assert r["hypothesis"] == truth[k]["greedy"], k
    ranked = sorted(rows.values(), key=lambda r: r["cer"], reverse=True)
    assert {r["id"] for r in ranked[:8]} == wrong
    assert min(rows[k]["cer"] for k in wrong) > 0
    assert all(rows[k]["cer"] == 0.0 for k in rows if k not in wrong)   # normalised: edge spaces ignored
    summary = capsys.readouterr().out.strip().splitlines()
    assert "worst-scoring items by cer" in summary[-9]
    assert {line.split()[0] for line in summary[-8:]} == wrong
    # compared raw, the correct lines whose reading has an edge space get a cer above 0
    raw = tmp_path / "raw.jsonl"
    assert cli.main(["score", os.path.join(EXAMPLES, "manifest.jsonl"), "--vocab",
                     os.path.join(EXAMPLES, "vocab.txt"), "--out", raw, "--decode", "greedy",
                     "--compare-raw", "-q"]) == 0
    raw_rows = by_id(read_jsonl(raw))
    spaced = [k for k in rows if k not in wrong and truth[k]["greedy"] != truth[k]["text"]]
    assert spaced and all(raw_rows[k]["cer"] > 0 for k in spaced)


def test_jsonl_encoder_is_json_dumps_byte_for_byte():
    from fastctc.score.rows import Rows, columns, encode_jsonl
    rows = [{"id": "a", "nll": 1.5, "nll_per_frame": 0.1, "nll_per_token": 0.75, "frames": 15, "tokens": 2,
             "error": None, "hypothesis": 'q"uo\\te\tü', "cer": 0.0, "wer": 1 / 3},
            {"id": "naïve \u2028 id", "nll": None, "nll_per_frame": None, "nll_per_token": None,
             "frames": None, "tokens": 3, "error": "bad\x01", "hypothesis": None, "cer": None, "wer": None},
            {"id": "z", "nll": 1e-300, "nll_per_frame": 1e-300 / 7, "nll_per_token": 1e-300, "frames": 7,
             "tokens": 0, "error": None, "hypothesis": "", "cer": 0.0, "wer": 0.0}]
    cols = columns(decode=True)
    want = "".join(json.dumps({c: r[c] for c in cols}, ensure_ascii=False) + "\n" for r in rows)
    assert encode_jsonl(Rows.from_dicts(rows, cols), cols) == want.encode("utf-8")
