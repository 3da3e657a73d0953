"""This run's numbers beside the paper's (Tables 1, 2, 4, 5), as a Markdown table.

The paper's numbers ship in ``vlm_spatial/evaluation/paper_results.json``: each table has
``columns`` and ``rows[model][column]`` exactly as printed, and ``variants`` maps this
codebase's config names (``clip``, ``clip_2drope``, ``siglip``, ... ``aimv2_2drope``) to the
row each table uses for that model (Table 2 calls the CLIP baseline "LLaVA v1.5", the others
"LLaVA-1.5"). A variant may also be given as a row name ("LLaVA-AIMv2-2D-RoPE", "Qwen2.5-VL").

Every benchmark declares the paper columns it produces (``Benchmark.paper_columns``: column ->
metrics key) on the paper's scale, so the comparison is like for like: fractions for the
multiple-choice sets, MME as (perception + cognition) / 2800, x100 for GQA and VSR.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

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


def markdown_report(results: dict, variant: Optional[str] = None, paper: Optional[dict] = None,
                    title: str = "Evaluation") -> str:
    """Markdown: one line per (benchmark, paper column) with this run, the paper, the difference.

    ``results``: {benchmark name: {"metrics": {...}, "benchmark": Benchmark}};
    ``variant``: the model to compare with (see ``paper_rows``), or None for this run alone.
    A benchmark with no paper column (the synthetic set) shows its primary metric.
    """
    paper = paper or load_paper_results()
    rows = paper_rows(paper, variant) if variant else {}
    lines = [f"# {title}", "",
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
