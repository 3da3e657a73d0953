"""This run's numbers beside the paper's (Tables 1, 2, 4, 5), as a Markdown table.

The paper's numbers ship in ``vlm_spatial/evaluation/paper_results.json``: each table has
``columns`` and ``rows[model][column]`` exactly as printed, and ``variants`` maps this
codebase's config names (``clip``, ``clip_2drope``, ``siglip``, ... ``aimv2_2drope``) to the
row each table uses for that model (Table 2 calls the CLIP baseline "LLaVA v1.5", the others
"LLaVA-1.5"). A variant may also be given as a row name ("LLaVA-AIMv2-2D-RoPE", "Qwen2.5-VL").

Every benchmark declares the paper columns it produces (``Benchmark.paper_columns``: column ->
metrics key) on the paper's scale, so the comparison is like for like: fractions for the
multiple-choice sets, MME as (perception + cognition) / 2800, x100 for GQA and VSR.

Above the table the report says what produced the numbers (`provenance`): the scoring rule set
(``evaluation/rules.py``), the checkpoint and compute dtype, the generation settings, the data, and
the command that makes the same files again -- so a number that differs from the paper's can be
traced to the model, the harness revision or the decoding.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from vlm_spatial.evaluation.rules import RULE_SETS

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")
TABLES = ("table1", "table2", "table4", "table5")


def load_paper_results(path=PAPER_RESULTS) -> dict:
    """The paper's tables as shipped with the package (see the module docstring)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def paper_rows(paper: dict, variant: str) -> dict:
    """{table: row name} of ``variant`` (a config name or a row name of any table).

    Raises KeyError naming the accepted names when the variant is unknown.
    """
    if variant in paper["variants"]:
        return dict(paper["variants"][variant])
    for rows in paper["variants"].values():
        if variant in rows.values():
            return dict(rows)
    found = {t: variant for t in TABLES if variant in paper[t]["rows"]}
    if not found:
        names = sorted(set(paper["variants"]) | {r for t in TABLES for r in paper[t]["rows"]})
        raise KeyError(f"unknown paper variant {variant!r}; one of {names}")
    return found


def paper_value(paper: dict, column: str, rows: dict) -> tuple:
    """(table, value) of ``column`` for the row names ``rows`` ({table: row}).

    The first table (in 1, 2, 4, 5 order) that has the column names it; the value is None
    when that table has no row for the variant.
    """
    for t in TABLES:
        if column in paper[t]["columns"]:
            row = paper[t]["rows"].get(rows.get(t)) if rows.get(t) else None
            return t, (row or {}).get(column)
    return None, None


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}"


def provenance(results: dict, run: Optional[dict] = None) -> list[str]:
    """Markdown bullet lines: the rule set(s) of ``results``' benchmarks, then from ``run`` (the
    run's recorded fields: checkpoint, dtype, mcq, decode_rows, variant, data_root, limit,
    options; None or missing = not recorded) the model, generation, data and the command that
    redoes the run. ``results`` as for `markdown_report` (with each benchmark's
    ``max_new_tokens``)."""
    run = run or {}
    used = sorted({res["benchmark"].rules.name for res in results.values()})
    others = [n for n in RULE_SETS if n not in used]
    lines = [f"- Scoring rules: {RULE_SETS[n].describe()}." for n in used]
    lines.append("- Another rule set, without the model: `python -m vlm_spatial.evaluate score --benchmark NAME "
                 f"--predictions OUT/NAME/predictions.jsonl --data_root DATA --rules {'|'.join(others)}`.")
    if run.get("checkpoint"):
        how = "option log-likelihood" if run.get("mcq") == "likelihood" else "generation"
        lines.append(f"- Checkpoint: `{run['checkpoint']}`; compute dtype {run.get('dtype')}; "
                     f"multiple choice by {how}.")
    else:
        lines.append("- Checkpoint: not recorded (answers made elsewhere, or by a caller that did not say).")
    lengths = ", ".join(f"{res['benchmark'].title} {res.get('max_new_tokens') or '?'}" for res in results.values())
    rows = run.get("decode_rows")
    lines.append(f"- Generation: greedy, until EOS or max_new_tokens ({lengths})"
                 + (f"; {rows} rows per program and one length bucket per program, so an answer does not "
                    "depend on the batch size or on the other questions of its batch." if rows else "."))
    if run.get("data_root"):
        lines.append(f"- Data: `{run['data_root']}`, "
                     + (f"the first {run['limit']} questions of each benchmark" if run.get("limit") else "every question")
                     + (f"; benchmark options {run['options']}" if run.get("options") else "") + ".")
    if run.get("checkpoint") and run.get("data_root"):
        cmd = ["python -m vlm_spatial.evaluate", f"--checkpoint {run['checkpoint']}",
               f"--benchmarks {','.join(results)}", f"--data_root {run['data_root']}", "--out OUT",
               f"--rules {','.join(used)}", f"--dtype {run.get('dtype')}", f"--mcq {run.get('mcq')}"]
        if run.get("variant"):
            cmd.append(f"--variant {run['variant']}")
        if run.get("limit"):
            cmd.append(f"--limit {run['limit']}")
        overrides = {res.get("max_new_tokens") for res in results.values()
                     if res.get("max_new_tokens") != res["benchmark"].max_new_tokens}
        cmd += [f"--max_new_tokens {n}" for n in sorted(overrides)]
        cmd += [f"--option {k}={v}" for k, v in (run.get("options") or {}).items()]
        lines.append(f"- To redo: `{' '.join(cmd)}`.")
    return lines


def markdown_report(results: dict, variant: Optional[str] = None, paper: Optional[dict] = None,
                    title: str = "Evaluation", run: Optional[dict] = None) -> str:
    """Markdown: what produced the numbers (`provenance`), then one line per (benchmark, paper
    column) with this run, the paper, the difference.

    ``results``: {benchmark name: {"metrics": {...}, "benchmark": Benchmark, "max_new_tokens"}};
    ``variant``: the model to compare with (see ``paper_rows``), or None for this run alone;
    ``run``: the run's recorded settings (see `provenance`). A benchmark with no paper column
    (the synthetic set) shows its primary metric.
    """
    paper = paper or load_paper_results()
    rows = paper_rows(paper, variant) if variant else {}
    lines = [f"# {title}", "", *provenance(results, run), "",
             f"Paper variant: **{variant or '(none given)'}**"
             + (f" (rows: {', '.join(f'{t}: {r}' for t, r in rows.items())})" if rows else "")
             + ". Scales as in the paper: fractions, except GQA and VSR (x100); "
             "MME = (perception + cognition) / 2800.", "",
             "| Benchmark | Paper column | This run | Paper | Diff | Table | n | unparsed |",
             "|---|---|---|---|---|---|---|---|"]
    for res in results.values():
        bench, metrics = res["benchmark"], res["metrics"]
        counts = f"{metrics.get('n', '-')} | {metrics.get('n_unparsed', '-')}"
        cols = bench.paper_columns or {None: bench.primary}
        for col, key in cols.items():
            ours = metrics.get(key)
            table, theirs = paper_value(paper, col, rows) if col else (None, None)
            diff = (ours - theirs) if (ours is not None and theirs is not None
                                       and not math.isnan(ours)) else None
            lines.append(f"| {bench.title} | {col or f'(no paper number: {key})'} | {_fmt(ours)} | "
                         f"{_fmt(theirs)} | {'-' if diff is None else f'{diff:+.3f}'} | "
                         f"{table or '-'} | {counts} |")
    lines += ["", "## All metrics of this run", ""]
    for res in results.values():
        scalars = {k: v for k, v in res["metrics"].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        parts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in scalars.items())
        lines.append(f"- **{res['benchmark'].title}**: {parts}")
    return "\n".join(lines) + "\n"
