"""Evaluate a checkpoint on the paper's benchmarks, or re-score an existing predictions file.

    python -m vlm_spatial.evaluate --checkpoint CKPT --benchmarks mmvp,cvbench,gqa \\
        --data_root DIR --out DIR [--variant aimv2_2drope] [--batch_size 8] [--limit N]
        [--max_new_tokens N] [--mcq generate|likelihood] [--dtype bfloat16] [--mesh data,fsdp,tensor]
        [--rules vlmevalkit-2025.09] [--consistency]
    python -m vlm_spatial.evaluate score --benchmark gqa --predictions FILE --data_root DIR \\
        [--out DIR] [--variant NAME] [--allow_missing] [--rules NAME]
    python -m vlm_spatial.evaluate list

``run`` (the default) writes ``<out>/<benchmark>/predictions.jsonl`` (resumed if present: rerun
the same command after an interruption), ``<out>/<benchmark>/metrics.json``, ``<out>/metrics.json``
and ``<out>/report.md`` (this run beside the paper's numbers for the variant; by default the
variant is read from the checkpoint's config: encoder family and 2D-RoPE). ``--mesh`` shards the
model and the batches over all devices, e.g. ``1,-1,1`` (FSDP over every device).

``--consistency`` (with the ``synthetic`` benchmark) also runs the spatial-consistency diagnostics
(``vlm_spatial/evaluation/consistency.py``: the test scenes flipped left-right, top-bottom and
transposed, answers compared with the geometrically implied ones, and the axis-confusion rates) into
``<out>/synthetic/consistency/metrics.json``.

``--rules`` names the scoring rule set, i.e. the harness revision the numbers follow
(``vlm_spatial/evaluation/rules.py``; default ``vlmevalkit-2025.09``, the revision that can have
produced the paper's tables); it is recorded in every predictions header, ``metrics.json`` and
``report.md``.

``score`` needs no model: it reads the benchmark files for the gold answers and applies the same
parser and metric to a predictions file -- ours (under ``--rules``, default the rule set its
header names; with ``--out`` it writes, byte for byte, what a fresh run under that rule set
writes) or another tool's (fields ``qid``/``question_id``/``index`` and
``raw_output``/``prediction``/``text``). Benchmark files are looked for under
``<data_root>/<benchmark>/`` and ``<data_root>/``; each module's docstring lists the accepted
files (``vlm_spatial/evaluation/benchmarks/``). A missing file fails naming the expected files.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from vlm_spatial.evaluation.rules import DEFAULT_RULES, RULE_SETS


def _options(args) -> dict:
    opts = {}
    for kv in args.option or []:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise SystemExit(f"--option {kv!r}: expected key=value")
        opts[k] = v
    return opts


def _parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m vlm_spatial.evaluate{' score' if cmd == 'score' else ''}",
                                description=__doc__.split("\n")[0])
    p.add_argument("--data_root", required=True, help="directory holding the benchmark files")
    p.add_argument("--variant", default=None, help="paper variant to compare with: a config name (aimv2_2drope) or a table row (LLaVA-1.5)")
    p.add_argument("--option", action="append", help="benchmark option key=value, e.g. prompt_style=official")
    p.add_argument("--rules", choices=list(RULE_SETS), default=None,
                   help=f"scoring rule set (harness revision); default {DEFAULT_RULES}"
                        + (", or the one the predictions file's header names" if cmd == "score" else ""))
    if cmd == "score":
        p.add_argument("--benchmark", required=True)
        p.add_argument("--predictions", required=True, help="JSONL of {qid, raw_output} (or LLaVA/VLMEvalKit fields)")
        p.add_argument("--out", default=None, help="also write scored predictions, metrics.json, report.md here")
        p.add_argument("--allow_missing", action="store_true", help="score a file that answers only some questions")
    else:
        p.add_argument("--checkpoint", required=True, help="vlm_spatial checkpoint, training workdir or HF LLaVA dir")
        p.add_argument("--benchmarks", required=True, help="comma separated, e.g. mmvp,cvbench")
        p.add_argument("--out", required=True)
        p.add_argument("--batch_size", type=int, default=8)
        p.add_argument("--limit", type=int, default=None, help="first N questions per benchmark")
        p.add_argument("--max_new_tokens", type=int, default=None, help="default: each benchmark's own")
        p.add_argument("--mcq", choices=("generate", "likelihood"), default="generate",
                       help="multiple choice by generation (the paper's harness) or by option log-likelihood")
        p.add_argument("--dtype", default=None, help="compute dtype override, e.g. bfloat16")
        p.add_argument("--mesh", default=None, help="data,fsdp,tensor sizes (one may be -1); default one device")
        p.add_argument("--consistency", action="store_true",
                       help="synthetic benchmark: also the flip/transpose consistency diagnostics")
    return p


def main(argv=None) -> int:
    """CLI entry point; returns the exit status (2 for an unknown benchmark or variant, or a
    missing benchmark file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from vlm_spatial.evaluation import runner
    from vlm_spatial.evaluation.benchmarks import BenchmarkFileMissing, get_benchmark, list_benchmarks

    cmd = argv.pop(0) if argv and argv[0] in ("run", "score", "list") else "run"
    if cmd == "list":
        print("\n".join(list_benchmarks()))
        return 0
    args = _parser(cmd).parse_args(argv)
    names = [args.benchmark] if cmd == "score" else [b for b in args.benchmarks.split(",") if b]
    if cmd == "run" and args.consistency and "synthetic" not in names:
        print("error: --consistency diagnoses the synthetic benchmark; add synthetic to --benchmarks", file=sys.stderr)
        return 2
    try:  # names first: a typo fails before any file or model is read
        runner.check_variant(args.variant)
        for name in names:
            get_benchmark(name)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    try:
        if cmd == "score":
            metrics = runner.score_file(args.benchmark, args.predictions, args.data_root, args.out,
                                        args.variant, args.allow_missing, rules=args.rules, **_options(args))
        else:
            mesh = None
            if args.mesh:
                from vlm_spatial import parallel

                mesh = parallel.make_mesh(*(int(x) for x in args.mesh.split(",")))
            metrics = runner.evaluate_checkpoint(
                args.checkpoint, names, args.data_root, args.out,
                variant=args.variant, batch_size=args.batch_size, limit=args.limit,
                max_new_tokens=args.max_new_tokens, mesh=mesh, mcq=args.mcq, dtype=args.dtype,
                rules=args.rules, **_options(args))
            if args.consistency and "synthetic" in metrics:
                from vlm_spatial.evaluation.consistency import evaluate_checkpoint_consistency

                synth = get_benchmark("synthetic").find(args.data_root, ["info.json"]).parent
                metrics["synthetic"]["consistency"] = evaluate_checkpoint_consistency(
                    args.checkpoint, str(synth), os.path.join(args.out, "synthetic", "consistency"),
                    batch_size=args.batch_size, dtype=args.dtype, mesh=mesh)
    except BenchmarkFileMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=1, default=str, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
