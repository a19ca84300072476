"""fastctc.score: offline batch scoring of (emissions, transcript) pairs from a manifest,
the engine behind `fastctc score` and `fastctc align` (docs/cli.md is the manual).

    from fastctc.score import ScoreOptions, run_score
    status = run_score(ScoreOptions("manifest.jsonl", "vocab.txt", "scores.jsonl", decode="greedy"))

Modules, each depending only on those above it:
  errors     exceptions and exit statuses
  vocab      VOCAB and the text -> class-id tokenizer
  metrics    greedy decoding, Levenshtein distance, cer / wer
  manifest   MANIFEST in two streaming passes (ids as hashes, then windows of items)
  emissions  fast, bounded-memory .npy / .npz member reader
  sinks      OUT: JSONL / CSV / Parquet writers, resume and repair, the run lock
  scorer     a window of items -> rows (engine batches, spans, hypotheses)
  run        the driver: options, local and Dask runs, progress bar, summary
  bench      the throughput benchmark (`fastctc bench score`)
"""
from .errors import (EXIT_INTERRUPTED, EXIT_ITEMS_FAILED, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, ItemError,
                     OutputError, UsageError)
from .run import ScoreOptions, run_score

__all__ = ["ScoreOptions", "run_score", "UsageError", "OutputError", "ItemError", "EXIT_OK",
           "EXIT_ITEMS_FAILED", "EXIT_USAGE", "EXIT_OUTPUT", "EXIT_INTERRUPTED"]
