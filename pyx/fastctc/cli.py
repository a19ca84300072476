"""fastctc.cli: the `fastctc` command (console script; also `python -m fastctc`).

    fastctc score MANIFEST --vocab VOCAB --out OUT [options]   NLL of every item
    fastctc align MANIFEST --vocab VOCAB --out OUT [options]   the same plus token spans
    fastctc info                                               build and machine summary
    fastctc bench [args]                                       CPU benchmark (fastctc._bench)
    fastctc bench score [args]                                 scoring throughput (fastctc.score.bench)
    fastctc --version

main(argv) returns the exit status instead of exiting, so it can be called from Python:
0 success (every item scored), 1 some items failed, 2 usage error (a one-line message on
stderr, never a traceback; nothing scored by this run), 3 OUT could not be written
mid-run (the rows written are kept; rerun to resume), 130 interrupted.  docs/cli.md is
the manual.
"""
from __future__ import annotations

import argparse
import os
import sys

from ._version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _add_score_args(p):
    p.add_argument("manifest", help="JSONL or Parquet: one row per item with id, emissions "
                   "(path to a (T, C) .npy, or file.npz:key, relative to the manifest's folder) "
                   "and text or tokens")
    p.add_argument("--vocab", required=True, help="one symbol per line; line i is class i (blank included)")
    p.add_argument("--out", required=True, help="results: .jsonl, .csv or .parquet; rerunning with "
                   "the same OUT resumes")
    p.add_argument("--blank", type=int, default=0, help="class id of the CTC blank (default 0)")
    p.add_argument("--from-logits", action="store_true",
                   help="emissions are unnormalised scores (log_softmax is applied); default: log-probs")
    p.add_argument("--decode", choices=("greedy",), default=None,
                   help="also write the best-path hypothesis and its cer / wer against the transcript")
    p.add_argument("--compare-raw", action="store_true",
                   help="with --decode: compare transcript and hypothesis as they are (default: "
                   "strip leading/trailing whitespace and collapse runs of whitespace first)")
    p.add_argument("--batch-size", type=int, default=256, help="items per engine call (default 256)")
    p.add_argument("--chunk-size", type=int, default=4096,
                   help="items per write to OUT and per length-sorting window (default 4096)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU cores to use (default: all cores / OMP_NUM_THREADS)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes that read and score windows in parallel, each with one "
                   "engine thread (Linux; default: --threads, i.e. one per core; 1: score in this "
                   "process on --threads engine threads)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the loss is computed: cpu (default) or cuda (through fastctc.torch; "
                   "needs PyTorch with a CUDA device)")
    p.add_argument("--dask", metavar="ADDRESS", default=None,
                   help="score shards on a dask.distributed scheduler at ADDRESS, or local:N for a "
                   "LocalCluster of N worker processes")
    p.add_argument("--shard-size", type=int, default=2000, help="manifest items per Dask task (default 2000)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    p.add_argument("--worst", type=int, default=10, help="how many worst-scoring ids the summary lists (default 10)")
    p.add_argument("--rank-by", choices=("nll_per_frame", "nll_per_token", "nll", "cer", "wer"),
                   default="nll_per_frame",
                   help="the column the summary ranks by (default nll_per_frame; cer and wer need "
                   "--decode greedy)")


def build_parser():
    ap = _Parser(prog="fastctc", description="fastctc: fast CTC loss, scoring and alignment")
    ap.add_argument("--version", action="version", version=f"fastctc {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p = sub.add_parser("score", help="score (emissions, transcript) pairs from a manifest")
    _add_score_args(p)
    p.add_argument("--align", action="store_true", help="also write token spans (start/end frames, score)")
    p = sub.add_parser("align", help="score and align: like `score --align`")
    _add_score_args(p)
    sub.add_parser("info", help="version, SIMD levels, OpenMP threads, CUDA status")
    sub.add_parser("bench", help="run the benchmarks: `bench [args]` CPU loss vs peers, "
                   "`bench score [args]` the scoring tool's throughput", add_help=False)
    return ap


def _info(out):
    import fastctc
    info = fastctc.info()
    w = out.write
    w(f"fastctc {info.get('version')}\n")
    levels = info.get("simd_levels_available") or []
    w(f"  SIMD level in use : {info.get('simd_level')}\n")
    w(f"  SIMD levels       : {', '.join(map(str, levels))}\n")
    threads = info.get("threads")
    w(f"  OpenMP            : {'yes' if info.get('openmp') else 'no'}, {threads} thread{'' if threads == 1 else 's'} "
      f"by default\n")
    cuda = info.get("cuda") or {}
    if isinstance(cuda, dict):
        status = "available" if cuda.get("available") else "not available"
        extra = "; ".join(f"{k}: {v}" for k, v in cuda.items() if k != "available" and v is not None)
        w(f"  CUDA / NVRTC      : {status}{' (' + extra + ')' if extra else ''}\n")
    else:
        w(f"  CUDA / NVRTC      : {cuda}\n")
    for k, v in info.items():
        if k not in ("version", "simd_level", "simd_levels_available", "openmp", "threads", "cuda"):
            w(f"  {k:<18}: {v}\n")
    return 0


def _bench(argv):
    import importlib
    name = "fastctc._bench"
    if argv and argv[0] == "score":
        name, argv = "fastctc.score.bench", argv[1:]
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise
        sys.stderr.write(f"fastctc bench: the benchmark module ({name}) is not part of this build\n")
        return 2
    try:
        rc = mod.main(list(argv))
    except SystemExit as e:                 # argparse: --help (0) or a usage error (2)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    return int(rc or 0) if not isinstance(rc, list) else 0


def main(argv=None) -> int:
    argv = [os.fspath(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        return _main(argv)
    except BrokenPipeError:                 # `fastctc ... | head`: the reader went away
        from .score.run import silence
        silence(sys.stdout)
        return 0


def _main(argv) -> int:
    if argv and argv[0] == "bench":       # everything after `bench` belongs to the benchmark
        return _bench(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                 # argparse: --help/--version (0) or usage error (2)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "info":
        return _info(sys.stdout)
    from .score import EXIT_INTERRUPTED, EXIT_OUTPUT, EXIT_USAGE, OutputError, ScoreOptions, UsageError, run_score
    opts = ScoreOptions(
        args.manifest, args.vocab, args.out, command=args.command, blank=args.blank,
        from_logits=args.from_logits, batch_size=args.batch_size, chunk_size=args.chunk_size,
        threads=args.threads, jobs=args.jobs, device=args.device,
        align=args.command == "align" or getattr(args, "align", False),
        decode=args.decode, compare_raw=args.compare_raw, dask=args.dask, shard_size=args.shard_size,
        quiet=args.quiet, worst=args.worst, rank_by=args.rank_by)
    try:
        return run_score(opts)
    except UsageError as e:
        sys.stderr.write(f"fastctc {args.command}: error: {e}\n")
        return EXIT_USAGE
    except OutputError as e:
        sys.stderr.write(f"fastctc {args.command}: error: {e}\n")
        return EXIT_OUTPUT
    except KeyboardInterrupt:
        sys.stderr.write(f"\nfastctc {args.command}: interrupted; rerun the same command to resume\n")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
