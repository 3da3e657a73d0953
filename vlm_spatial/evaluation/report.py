"""This run's numbers beside the paper's (Tables 1, 2, 4, 5), as a Markdown table.

The paper's numbers ship in ``vlm_spatial/evaluation/paper_results.json`` (transcribed from the
paper's HTML tables; each table has ``columns`` and ``rows[model][column]``). Every benchmark
declares which paper columns it produces (``Benchmark.paper_columns``: column -> metrics key)
and the scale the paper prints it on, so the comparison is like for like: fractions for the
multiple-choice sets, MME as (perception + cognition) / 2800, x100 for GQA and VSR.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

PAPER_RESULTS = Path(__file__).with_name("paper_results.json")


def load_paper_results(path=PAPER_RESULTS) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def paper_value(paper: dict, column: str, variant: Optional[str]):
    """(table name, value) of ``column`` for ``variant``; value None if absent."""
    for tname in ("table1", "table2", "table4", "table5"):
        t = paper.get(tname, {})
        if column in t.get("columns", []):
            row = t["rows"].get(variant) if variant else None
            return tname, (row or {}).get(column)
    return None, None


def variants(paper: dict) -> list[str]:
    return list(paper["table1"]["rows"])


def _fmt(v, scale: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}"


def markdown_report(results: dict, variant: Optional[str] = None, paper: Optional[dict] = None,
                    title: str = "Evaluation") -> str:
    """``results``: {benchmark name: {"metrics": {...}, "benchmark": Benchmark}}."""
    paper = paper or load_paper_results()
    if variant and variant not in variants(paper):
        raise KeyError(f"unknown paper variant {variant!r}; one of {variants(paper)}")
    lines = [f"# {title}", "",
             f"Paper variant: **{variant or '(none given)'}**. Scales as in the paper: fractions, "
             "except GQA and VSR (x100); MME = (perception + cognition) / 2800.", "",
             f"| Benchmark | Paper column | This run | Paper ({variant or '-'}) | Diff | Table |",
             "|---|---|---|---|---|---|"]
    for name, res in results.items():
        bench, metrics = res["benchmark"], res["metrics"]
        cols = bench.paper_columns or {}
        if not cols:
            lines.append(f"| {bench.title} | (no paper number) | "
                         f"{_fmt(metrics.get(bench.primary), bench.scale)} | - | - | - |")
        for col, key in cols.items():
            ours = metrics.get(key)
            tname, theirs = paper_value(paper, col, variant)
            diff = (ours - theirs) if (ours is not None and theirs is not None
                                       and not math.isnan(ours)) else None
            lines.append(f"| {bench.title} | {col} | {_fmt(ours, bench.scale)} | "
                         f"{_fmt(theirs, bench.scale)} | "
                         f"{'-' if diff is None else f'{diff:+.3f}'} | {tname or '-'} |")
    lines += ["", "## All metrics of this run", ""]
    for name, res in results.items():
        m = res["metrics"]
        scalars = {k: v for k, v in m.items() if isinstance(v, (int, float))}
        parts = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in scalars.items())
        lines.append(f"- **{res['benchmark'].title}**: {parts}")
    return "\n".join(lines) + "\n"
