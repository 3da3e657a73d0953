"""Evaluate a checkpoint on the paper's benchmarks, or re-score an existing predictions file.

    python -m vlm_spatial.evaluate --checkpoint CKPT --benchmarks mmvp,cvbench,gqa \\
        --data_root DIR --out DIR [--variant LLaVA-AIMv2-2D-RoPE] [--batch_size 8] [--limit N]
    python -m vlm_spatial.evaluate score --benchmark gqa --predictions FILE --data_root DIR \\
        [--out DIR] [--variant NAME] [--allow_missing]
    python -m vlm_spatial.evaluate list

``run`` (the default) writes ``<out>/<benchmark>/predictions.jsonl`` (resumed if present),
``metrics.json`` and ``report.md`` (this run beside the paper's numbers for ``--variant``).
``score`` needs no model: it reads the benchmark files for the gold answers and applies the
same parser and metric to another tool's outputs (fields ``qid``/``question_id``/``index`` and
``raw_output``/``prediction``/``text``). Benchmark files are looked for under
``<data_root>/<benchmark>/`` and ``<data_root>/``; each module's docstring lists the accepted
files (``vlm_spatial/evaluation/benchmarks/``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys


def _options(args) -> dict:
    opts = {}
    for kv in args.option or []:
        k, _, v = kv.partition("=")
        opts[k] = v
    return opts


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from vlm_spatial.evaluation import runner
    from vlm_spatial.evaluation.benchmarks import BenchmarkFileMissing, list_benchmarks

    cmd = argv.pop(0) if argv and argv[0] in ("run", "score", "list") else "run"
    if cmd == "list":
        print("\n".join(list_benchmarks()))
        return 0
    p = argparse.ArgumentParser(prog=f"python -m vlm_spatial.evaluate {cmd}")
    p.add_argument("--data_root", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--variant", default=None, help="paper row to compare with, e.g. LLaVA-1.5")
    p.add_argument("--option", action="append", help="benchmark option key=value, e.g. prompt_style=official")
    if cmd == "score":
        p.add_argument("--benchmark", required=True)
        p.add_argument("--predictions", required=True)
        p.add_argument("--allow_missing", action="store_true")
    else:
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--benchmarks", required=True, help="comma separated, e.g. mmvp,cvbench")
        p.add_argument("--batch_size", type=int, default=8)
        p.add_argument("--limit", type=int, default=None, help="first N questions per benchmark")
        p.add_argument("--max_new_tokens", type=int, default=None)
    args = p.parse_args(argv)
    try:
        if cmd == "score":
            metrics = runner.score_file(args.benchmark, args.predictions, args.data_root, args.out,
                                        args.variant, args.allow_missing, **_options(args))
        else:
            if not args.out:
                p.error("--out is required")
            names = [b for b in args.benchmarks.split(",") if b]
            runner.load_benchmarks(names, args.data_root, limit=1, **_options(args))  # files first
            import vlm_spatial

            vlm = vlm_spatial.load(args.checkpoint)
            metrics = runner.run(names, args.data_root, args.out, runner.vlm_predictor(vlm),
                                 variant=args.variant, batch_size=args.batch_size,
                                 limit=args.limit, max_new_tokens=args.max_new_tokens,
                                 **_options(args))
    except BenchmarkFileMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=1, default=str, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
