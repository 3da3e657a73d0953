"""The report of a finished sweep (`vlm_spatial.sweep`): accuracy per variant and question family
with 95% bootstrap intervals over seeds and questions, paired comparisons, consistency diagnostics,
learning curves.

    paths = write_report(sweep, sweep_dir, runs)      # runs: [(cell, RunConfig)]

Writes into `sweep_dir`:

  results.json    {'sweep', 'variants', 'seeds', 'families', 'cells': {cell: {variant, seed, workdir,
                  accuracy: {family: acc}, wall_s}}, 'accuracy': {variant: {family | 'all': Estimate}},
                  'comparisons': [Comparison + family], 'consistency': {variant: {transform: {family:
                  mean over seeds}, 'axis_confusion': {...}}}, 'wall_s': total cell time}
  report.md       the same as tables, with the figures
  figures/accuracy.png     per-family bars with the intervals as error bars
  figures/curves.png       loss per step of every stage, per variant (mean over seeds, min-max band)
  figures/consistency.png  consistency per transform and the axis-confusion rates, per variant

A question's family is its `meta['family']` (the synthetic set's families), else its benchmark's
name; with several benchmarks, families are named '<benchmark>:<family>'. Every cell must have
answered every question (same data, same questions), which the paired comparisons rely on.
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np

from vlm_spatial.evaluation.runner import load_benchmarks, read_jsonl
from vlm_spatial.evaluation.stats import bootstrap_mean, paired_difference

ALL = "all"


def _questions(run, workdir: str) -> dict[str, list[tuple[str, str]]]:
    """{benchmark: [(qid, family)]} of the questions a cell's eval stage asked."""
    from vlm_spatial.training.data import synthetic_dir
    from vlm_spatial.training.job import eval_args

    args = eval_args(run, workdir, synthetic_dir(run, workdir) if run.data.kind == "synthetic" else None)
    loaded = load_benchmarks(run.eval.benchmarks, args["data_root"], limit=args["limit"], rules=args["rules"])
    several = len(loaded) > 1
    out = {}
    for name, (_, samples) in loaded.items():
        fam = lambda s: s.meta.get("family") or name  # noqa: E731
        out[name] = [(s.qid, f"{name}:{fam(s)}" if several else fam(s)) for s in samples]
    return out


def cell_correct(run, workdir: str) -> dict[str, dict[str, float]]:
    """{family: {qid: 1.0 / 0.0}} of a finished cell, from its `eval/<benchmark>/predictions.jsonl`;
    ValueError naming the cell when a question has no answer."""
    out: dict[str, dict[str, float]] = {}
    for bench, questions in _questions(run, workdir).items():
        path = os.path.join(workdir, "eval", bench, "predictions.jsonl")
        rows = {r["qid"]: r for r in read_jsonl(path)}
        missing = [q for q, _ in questions if q not in rows]
        if missing:
            raise ValueError(f"{path}: {len(missing)} questions unanswered (e.g. {missing[:3]}); rerun the sweep")
        for qid, fam in questions:
            out.setdefault(fam, {})[f"{bench}/{qid}"] = float(bool(rows[qid]["correct"]))
    return out


def _matrices(sweep, cells: dict) -> dict[str, dict[str, np.ndarray]]:
    """{variant: {family | 'all': [seeds, questions] 0/1}} in one question order for all variants."""
    families = sorted({f for c in cells.values() for f in c["correct"]})
    out = {}
    for v in sweep.variants:
        mine = [c for c in cells.values() if c["variant"] == v]
        out[v] = {}
        for f in families:
            qids = sorted(mine[0]["correct"][f])
            out[v][f] = np.array([[c["correct"][f][q] for q in qids] for c in mine])
        out[v][ALL] = np.concatenate([out[v][f] for f in families], axis=1)
    return out


def _comparison_pairs(sweep) -> list[tuple[str, str]]:
    """Each variant against its counterpart without 2D-RoPE ('<x>_2drope' vs '<x>') when both are
    in the sweep, else every pair."""
    pairs = [(v, v[: -len("_2drope")]) for v in sweep.variants
             if v.endswith("_2drope") and v[: -len("_2drope")] in sweep.variants]
    return pairs or list(itertools.combinations(sweep.variants, 2))


def _consistency(sweep, cells: dict) -> dict:
    """{variant: {transform: {family: mean}, 'axis_confusion': {axis: {mapping: mean rate}}}} over
    the cells that ran the diagnostics."""
    from vlm_spatial.evaluation.consistency import CROSS, TRANSFORMS

    out = {}
    for v in sweep.variants:
        ms = [c["consistency"] for c in cells.values() if c["variant"] == v and c.get("consistency")]
        if not ms:
            continue
        out[v] = {t: {f: float(np.mean([m[t]["consistency"][f] for m in ms])) for f in ms[0][t]["consistency"]}
                  for t in TRANSFORMS}
        out[v]["axis_confusion"] = {}
        for axis in ("vertical", "horizontal"):
            out[v]["axis_confusion"][axis] = {}
            for mapping in CROSS:
                rates = [m["axis_confusion"][axis][mapping]["rate"] for m in ms]
                rates = [r for r in rates if r is not None]
                out[v]["axis_confusion"][axis][mapping] = float(np.mean(rates)) if rates else None
    return out


def _cell_wall(workdir: str) -> float | None:
    try:
        with open(os.path.join(workdir, "sweep_cell.json")) as f:
            return float(json.load(f)["wall_s"])
    except (OSError, ValueError, KeyError):
        return None


def results(sweep, sweep_dir: str, runs: list) -> tuple[dict, dict]:
    """(results.json's dict, {variant: {family: matrix}}) of a finished sweep."""
    cells = {}
    for cell, run in runs:
        wd = cell.workdir(sweep_dir)
        correct = cell_correct(run, wd)
        cons = None
        if os.path.isfile(os.path.join(wd, "consistency", "metrics.json")):
            with open(os.path.join(wd, "consistency", "metrics.json")) as f:
                cons = json.load(f)
        cells[cell.name] = {"variant": cell.variant, "seed": cell.seed, "workdir": wd, "correct": correct,
                            "consistency": cons, "wall_s": _cell_wall(wd)}
    mats = _matrices(sweep, cells)
    families = [f for f in next(iter(mats.values())) if f != ALL]
    boot = dict(num_samples=sweep.bootstrap_samples, seed=sweep.bootstrap_seed)
    accuracy = {v: {f: bootstrap_mean(m, **boot).to_dict() for f, m in fm.items()} for v, fm in mats.items()}
    comparisons = [dict(paired_difference(mats[a][f], mats[b][f], names=(a, b), **boot).to_dict(), family=f)
                   for a, b in _comparison_pairs(sweep) for f in [*families, ALL]]
    walls = [c["wall_s"] for c in cells.values() if c["wall_s"] is not None]
    out = {
        "sweep": sweep.name, "variants": list(sweep.variants), "seeds": list(sweep.seeds), "families": families,
        "cells": {k: {"variant": c["variant"], "seed": c["seed"], "workdir": c["workdir"], "wall_s": c["wall_s"],
                      "accuracy": {f: float(np.mean(list(q.values()))) for f, q in c["correct"].items()}}
                  for k, c in cells.items()},
        "accuracy": accuracy, "comparisons": comparisons, "consistency": _consistency(sweep, cells),
        "wall_s": float(sum(walls)) if walls else None, "bootstrap": boot,
    }
    return out, mats


def _fmt(e: dict) -> str:
    return f"{e['mean']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"


def markdown(res: dict, figures: dict[str, str]) -> str:
    """report.md of `results` (its dict) with the figure files (relative paths)."""
    fams, lines = res["families"], []
    n_q = {f: next(iter(res["accuracy"].values()))[f]["n_questions"] for f in [*fams, ALL]}
    lines += [f"# Sweep {res['sweep']}", "",
              f"{len(res['variants'])} variants x {len(res['seeds'])} seeds (seeds {', '.join(map(str, res['seeds']))}); "
              f"every cell answers the same questions. Mean accuracy with its 95% bootstrap interval over seeds "
              f"and questions ({res['bootstrap']['num_samples']} replicates; `vlm_spatial/evaluation/stats.py`)."
              + (f" Cells' run time: {res['wall_s'] / 60:.1f} min in all." if res["wall_s"] else ""), "",
              "| variant | " + " | ".join(f"{f} (n={n_q[f]})" for f in [*fams, ALL]) + " |",
              "|---|" + "---:|" * (len(fams) + 1)]
    for v, acc in res["accuracy"].items():
        lines.append(f"| {v} | " + " | ".join(_fmt(acc[f]) for f in [*fams, ALL]) + " |")
    lines += ["", "## Paired comparisons", "",
              "Difference of mean accuracy A - B on the same questions, paired bootstrap 95% interval, "
              "two-sided p-value.", "", "| A | B | family | A - B | 95% interval | p | verdict |",
              "|---|---|---|---:|---|---:|---|"]
    for c in res["comparisons"]:
        lines.append(f"| {c['a']} | {c['b']} | {c['family']} | {c['diff']:+.3f} | [{c['lo']:+.3f}, {c['hi']:+.3f}] "
                     f"| {c['p_value']:.3g} | {c['verdict']} |")
    if res["consistency"]:
        cons = res["consistency"]
        spatial = sorted(next(iter(cons.values()))["flip_lr"])
        lines += ["", "## Spatial consistency", "",
                  "Fraction of answers on the flipped / transposed scene that follow from the model's own answer "
                  "on the original (mean over seeds; `vlm_spatial/evaluation/consistency.py`), and the "
                  "axis-confusion rate: how often a question about one axis is answered by the objects' order on "
                  "the other (read as a transposition maps it), among questions where that reading is wrong.", "",
                  "| variant | " + " | ".join(f"{t} {f}" for t in ("flip_lr", "flip_tb", "transpose") for f in spatial)
                  + " | vertical by horizontal | horizontal by vertical |",
                  "|---|" + "---:|" * (3 * len(spatial) + 2)]
        for v, m in cons.items():
            ac = m["axis_confusion"]
            rate = lambda r: "n/a" if r is None else f"{r:.3f}"  # noqa: E731
            lines.append(f"| {v} | " + " | ".join(f"{m[t][f]:.3f}" for t in ("flip_lr", "flip_tb", "transpose")
                                                  for f in spatial)
                         + f" | {rate(ac['vertical']['transposed'])} | {rate(ac['horizontal']['transposed'])} |")
    lines += ["", "## Figures", ""] + [f"![{k}]({p})" for k, p in figures.items()] + [""]
    return "\n".join(lines)


def _losses(workdir: str, stage: str) -> dict[int, float]:
    """{step: loss} of a cell's stage from its metrics.jsonl (the last record of a step re-run after a
    resume wins; a line torn by a kill is skipped)."""
    path = os.path.join(workdir, "metrics.jsonl")
    rows = read_jsonl(path) if os.path.exists(path) else []
    return {r["step"]: r["loss"] for r in rows if r.get("stage") == stage and "loss" in r}


def _figures(res: dict, sweep, sweep_dir: str, runs: list) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = os.path.join(sweep_dir, "figures")
    os.makedirs(fig_dir, exist_ok=True)
    out = {}
    fams, variants = [*res["families"], ALL], res["variants"]
    x, w = np.arange(len(fams)), 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(fams)), 3.6), layout="constrained")
    for i, v in enumerate(variants):
        e = [res["accuracy"][v][f] for f in fams]
        mean = np.array([a["mean"] for a in e])
        err = np.array([[a["mean"] - a["lo"] for a in e], [a["hi"] - a["mean"] for a in e]])
        ax.bar(x + (i - (len(variants) - 1) / 2) * w, mean, w, yerr=err, capsize=2, label=v)
    ax.set_xticks(x, fams)
    ax.set(ylabel="accuracy", ylim=(0, 1.05), title=f"{res['sweep']}: mean over {len(res['seeds'])} seeds, 95% CI")
    ax.legend(fontsize=7, ncol=2)
    out["accuracy"] = "figures/accuracy.png"
    fig.savefig(os.path.join(sweep_dir, out["accuracy"]), dpi=110)
    plt.close(fig)

    stages = [s for s in ("pretrain", "finetune") if any(s in run.run for _, run in runs)]
    fig, axes = plt.subplots(1, len(stages), figsize=(5.5 * len(stages), 3.4), layout="constrained", squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for v in variants:
            curves = [_losses(cell.workdir(sweep_dir), stage) for cell, _ in runs if cell.variant == v]
            steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if not steps:
                continue
            ys = np.array([[c[s] for s in steps] for c in curves])
            line, = ax.plot(steps, ys.mean(0), label=v, lw=1)
            ax.fill_between(steps, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        ax.set(title=stage, xlabel="step", ylabel="loss", yscale="log")
        ax.legend(fontsize=7)
    out["curves"] = "figures/curves.png"
    fig.savefig(os.path.join(sweep_dir, out["curves"]), dpi=110)
    plt.close(fig)

    cons = res["consistency"]
    if cons:
        from vlm_spatial.evaluation.consistency import TRANSFORMS

        vs = list(cons)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
        x, w = np.arange(len(TRANSFORMS)), 0.8 / len(vs)
        for i, v in enumerate(vs):
            a1.bar(x + (i - (len(vs) - 1) / 2) * w, [np.mean(list(cons[v][t].values())) for t in TRANSFORMS], w, label=v)
            ac = cons[v]["axis_confusion"]
            a2.bar(np.arange(2) + (i - (len(vs) - 1) / 2) * w,
                   [ac[a]["transposed"] if ac[a]["transposed"] is not None else np.nan for a in ("vertical", "horizontal")],
                   w, label=v)
        a1.set_xticks(x, TRANSFORMS)
        a1.set(ylabel="consistency (mean over families)", ylim=(0, 1.05), title="answers that follow the geometry")
        a2.set_xticks(np.arange(2), ["vertical q. by horizontal order", "horizontal q. by vertical order"])
        a2.axhline(0.5, color="grey", lw=0.8, ls="--")
        a2.set(ylabel="axis-confusion rate", ylim=(0, 1.05), title="answering with the other axis (0.5: ignores it)")
        a1.legend(fontsize=7, ncol=2)
        out["consistency"] = "figures/consistency.png"
        fig.savefig(os.path.join(sweep_dir, out["consistency"]), dpi=110)
        plt.close(fig)
    return out


def write_report(sweep, sweep_dir: str, runs: list) -> dict[str, str]:
    """Write results.json, report.md and figures/ of a finished sweep; returns their paths
    ({'results', 'report', 'figures'})."""
    res, _ = results(sweep, sweep_dir, runs)
    figures = _figures(res, sweep, sweep_dir, runs)
    paths = {"results": os.path.join(sweep_dir, "results.json"), "report": os.path.join(sweep_dir, "report.md"),
             "figures": os.path.join(sweep_dir, "figures")}
    with open(paths["results"], "w") as f:
        json.dump(res, f, indent=1)
    with open(paths["report"], "w") as f:
        f.write(markdown(res, figures))
    return paths
