"""Run a grid of run configs (variants x seeds), resumably, then report it with intervals.

    python -m vlm_spatial.sweep --config=configs/sweeps/paper_tiny.py --workdir=runs/paper_tiny
    python -m vlm_spatial.sweep --config=configs/sweeps/ci_tiny.py --workdir=/tmp/ci --config.seeds=(0,)

A sweep config (`configs/sweeps/<name>.py`, see `configs/sweeps/paper_tiny.py`) names its `variants`
({name: {config: 'configs/<variant>.py[:arg]', overrides: ('field=value', ...)}}), the `seeds`, the
`overrides` every cell gets (before its variant's own), whether each cell also runs the flip and
transpose diagnostics (`consistency`), and the bootstrap settings of the report (`bootstrap`).

Each cell is a normal run: its config is loaded and overridden exactly as `python -m vlm_spatial.main
--config=<config> --config.<override> ... --config.seed=<seed>` would (the same ml_collections flag
parser, the same `runconfig.parse`, the same `training.job.run_job`), into its own workdir
`DIR/cells/<variant>/seed_<seed>`. With synthetic data every cell of the same data settings reads one
set, `DIR/synthetic/<digest>`, so all cells answer the same test questions (what the paired
comparisons need). Every cell's config is checked before the first one starts.

Resuming: a cell is finished when its workdir's `summary.json` is readable and its `config.json` is
this cell's config (and, with `consistency`, its `consistency/metrics.json` exists); finished cells
are skipped, the others run through `run_job`, which resumes an interrupted one from its newest
checkpoint. A cell workdir holding another config (the sweep file changed) is refused, naming the
fields. One progress line per cell. At the end `DIR/report.md`, `DIR/results.json` and
`DIR/figures/*.png` are written (`evaluation/sweep_report.py`); `DIR/cells/.../sweep_cell.json`
records the cell's run time (the starts that finished it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Mapping

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/sweeps/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "sweep directory: one workdir per cell, the report")
flags.mark_flags_as_required(["config", "workdir"])

SWEEP_FIELDS = ("name", "variants", "seeds", "overrides", "consistency", "bootstrap")
VARIANT_FIELDS = ("config", "overrides")
BOOTSTRAP_FIELDS = ("num_samples", "seed")


class SweepError(ValueError):
    """The sweep config or a cell's config has problems; the message lists all of them."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: `variant` (its name in the sweep), `seed`, the base `config_file`
    ('configs/clip.py:tiny') and the `overrides` ('field=value', command-line style, the seed last)."""

    variant: str
    seed: int
    config_file: str
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.variant}/seed_{self.seed}"

    def workdir(self, sweep_dir: str) -> str:
        return os.path.join(sweep_dir, "cells", self.variant, f"seed_{self.seed}")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A checked sweep config (see the module docstring)."""

    name: str
    cells: tuple[Cell, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    consistency: bool
    bootstrap_samples: int
    bootstrap_seed: int


def _as_dict(node) -> dict | None:
    if hasattr(node, "to_dict"):
        return node.to_dict()
    return dict(node) if isinstance(node, Mapping) else None


def _strings(v, where: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(v, (tuple, list)) or not all(isinstance(s, str) and "=" in s for s in v):
        problems.append(f"{where}: {v!r}; put a tuple of 'field=value' strings, e.g. ('stages.finetune.lr=1e-3',)")
        return ()
    return tuple(v)


def load_sweep(config, source: str = "the sweep config") -> Sweep:
    """The `Sweep` of a sweep ConfigDict (`configs/sweeps/*.py:get_config()`); raises `SweepError`
    listing every problem (unknown or missing fields, bad values) with the field to fix."""
    d, problems = _as_dict(config) or {}, []
    problems += [f"{k}: not a sweep field; one of {', '.join(SWEEP_FIELDS)}" for k in d if k not in SWEEP_FIELDS]
    missing = [f"{k}: missing; add it (see configs/sweeps/paper_tiny.py)" for k in SWEEP_FIELDS if k not in d]
    if missing:
        raise SweepError(f"{source}:\n  " + "\n  ".join(problems + missing))
    seeds = d["seeds"]
    if not isinstance(seeds, (tuple, list)) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        problems.append(f"seeds: {seeds!r}; put distinct non-negative ints, e.g. (0, 1, 2)")
        seeds = ()
    common = _strings(d["overrides"], "overrides", problems)
    variants = _as_dict(d["variants"])
    if not variants:
        problems.append(f"variants: {d['variants']!r}; put {{name: dict(config='configs/<variant>.py:tiny', "
                        f"overrides=())}}")
        variants = {}
    cells = []
    for name, v in variants.items():
        v = _as_dict(v) or {}
        bad = [k for k in v if k not in VARIANT_FIELDS] + [f"{k} (missing)" for k in VARIANT_FIELDS if k not in v]
        if bad or not isinstance(v.get("config"), str) or not v["config"]:
            problems.append(f"variants.{name}: fields {bad or 'config'}; put dict(config='configs/<variant>.py[:arg]', "
                            f"overrides=('field=value', ...))")
            continue
        own = _strings(v["overrides"], f"variants.{name}.overrides", problems)
        for seed in seeds:
            cells.append(Cell(name, int(seed), v["config"], (*common, *own, f"seed={int(seed)}")))
    if not isinstance(d["consistency"], bool):
        problems.append(f"consistency: {d['consistency']!r}; put True or False")
    boot = _as_dict(d["bootstrap"]) or {}
    if sorted(boot) != sorted(BOOTSTRAP_FIELDS) or not all(isinstance(boot[k], int) for k in boot) \
            or boot.get("num_samples", 0) < 100:
        problems.append(f"bootstrap: {d['bootstrap']!r}; put dict(num_samples=N >= 100, seed=S)")
        boot = {"num_samples": 0, "seed": 0}
    if problems:
        raise SweepError(f"{source}:\n  " + "\n  ".join(problems))
    return Sweep(name=str(d["name"]), cells=tuple(cells), variants=tuple(variants), seeds=tuple(int(s) for s in seeds),
                 consistency=d["consistency"], bootstrap_samples=boot["num_samples"], bootstrap_seed=boot["seed"])


def cell_config(cell: Cell):
    """(ConfigDict, {overridden field: value}) of `cell`, loaded and overridden by the same flag
    parser as `python -m vlm_spatial.main --config=<config_file> --config.<override> ...`."""
    argv = ["sweep-cell", f"--config={cell.config_file}", *(f"--config.{o}" for o in cell.overrides)]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "cell config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv["config"].value, dict(config_flags.get_override_values(fv["config"]))


def _digest(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def shared_synthetic_dir(config, sweep_dir: str) -> str | None:
    """`DIR/synthetic/<digest of the data settings>` for a synthetic-data cell whose config leaves
    `data.synthetic.dir` empty (None otherwise): cells with the same data settings share one set."""
    if config.data.kind != "synthetic" or config.data.synthetic.dir:
        return None
    settings = {k: v for k, v in config.data.synthetic.to_dict().items() if k != "dir"}
    return os.path.join(os.path.abspath(sweep_dir), "synthetic", _digest(settings))


def cell_runs(sweep: Sweep, sweep_dir: str, num_devices: int, num_processes: int, source: str) -> list:
    """[(cell, RunConfig)] for every cell, parsed as `main` parses its config; raises `SweepError`
    listing every cell's problems at once."""
    from vlm_spatial.runconfig import ConfigError, parse

    out, problems = [], []
    for cell in sweep.cells:
        try:
            config, overrides = cell_config(cell)
        except (flags.Error, IOError, ValueError, TypeError, AttributeError, KeyError) as e:
            problems.append(f"{cell.name}: {cell.config_file} with {cell.overrides}: {e}")
            continue
        synth = shared_synthetic_dir(config, sweep_dir)
        if synth:
            config.data.synthetic.dir = synth
        try:
            out.append((cell, parse(config, num_devices, num_processes, overrides=list(overrides),
                                    source=f"{source}: cell {cell.name}")))
        except ConfigError as e:
            problems.append(f"{cell.name}: {e}")
    if problems:
        raise SweepError(f"{source}: {len(problems)} cell(s) have problems:\n" + "\n".join(problems))
    return out


def _read_json(path: str) -> Any | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _differences(a, b, prefix: str = "") -> list[str]:
    """Dotted fields whose values differ between nested dicts `a` and `b`."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def cell_status(run, workdir: str, consistency: bool) -> str:
    """'new' (no workdir), 'partial' (started, not finished) or 'done', decided from the cell's own
    outputs (see the module docstring). Raises `SweepError` when the workdir holds another config."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return "new"
    old = _read_json(os.path.join(workdir, "config.json"))
    want = json.loads(json.dumps(run.to_dict()))
    if old is not None and old != want:
        raise SweepError(f"{workdir} holds a run of another config (fields {', '.join(_differences(old, want))} "
                         f"differ); use another --workdir or delete that cell's folder to run it afresh")
    summary = _read_json(os.path.join(workdir, "summary.json"))
    done = summary is not None and ("eval" not in run.run or summary.get("eval"))
    if done and consistency and wants_consistency(run):
        done = os.path.isfile(os.path.join(workdir, "consistency", "metrics.json"))
    return "done" if done else "partial"


def wants_consistency(run) -> bool:
    """Whether the flip/transpose diagnostics apply to a cell: synthetic data, evaluated."""
    return run.data.kind == "synthetic" and "eval" in run.run


def run_cell_consistency(run, workdir: str) -> dict:
    """The flip/transpose diagnostics of a finished cell (its last stage's checkpoint on its
    synthetic test split), written to `workdir/consistency/`; returns the metrics."""
    from vlm_spatial.evaluation.consistency import evaluate_checkpoint_consistency
    from vlm_spatial.training.data import synthetic_dir

    stage = run.train_stages[-1]
    return evaluate_checkpoint_consistency(os.path.join(workdir, "checkpoints", stage), synthetic_dir(run, workdir),
                                           os.path.join(workdir, "consistency"), batch_size=run.eval.batch_size,
                                           resize_mode=run.data.resize_mode)


def _short(summary: dict | None) -> str:
    ev = (summary or {}).get("eval") or {}
    parts = []
    for bench, m in ev.items():
        fams = m.get("by_family") or {}
        parts.append(f"{bench} {m.get('accuracy', float('nan')):.3f}" +
                     (" (" + ", ".join(f"{f} {a:.2f}" for f, a in fams.items()) + ")" if fams else ""))
    return "; ".join(parts)


def run_sweep(sweep: Sweep, sweep_dir: str, runs: list, log: Callable[[str], None] = print) -> dict:
    """Run every cell of `runs` ([(cell, RunConfig)] from `cell_runs`) not finished yet, one
    progress line each, then write the report. Returns {cell name: 'done earlier' | 'ran'}."""
    import jax

    from vlm_spatial.training.job import run_job

    sweep_dir = os.path.abspath(sweep_dir)
    statuses = {cell.name: cell_status(run, cell.workdir(sweep_dir), sweep.consistency) for cell, run in runs}
    n, out, t_sweep = len(runs), {}, time.time()
    log(f"sweep {sweep.name}: {n} cells ({len(sweep.variants)} variants x {len(sweep.seeds)} seeds) in {sweep_dir}; "
        f"{sum(s == 'done' for s in statuses.values())} finished earlier")
    for i, (cell, run) in enumerate(runs, 1):
        wd = cell.workdir(sweep_dir)
        if statuses[cell.name] == "done":
            log(f"[{i}/{n}] {cell.name}: finished earlier, skipped  {_short(_read_json(os.path.join(wd, 'summary.json')))}")
            out[cell.name] = "done earlier"
            continue
        t0 = time.time()
        log(f"[{i}/{n}] {cell.name}: {'resuming' if statuses[cell.name] == 'partial' else 'starting'} in {wd}")
        summary = run_job(run, wd)
        if sweep.consistency and wants_consistency(run):
            run_cell_consistency(run, wd)
        wall = time.time() - t0 + ((_read_json(os.path.join(wd, "sweep_cell.json")) or {}).get("wall_s") or 0.0)
        if jax.process_index() == 0:
            with open(os.path.join(wd, "sweep_cell.json"), "w") as f:
                json.dump({"wall_s": wall}, f)
        log(f"[{i}/{n}] {cell.name}: done in {time.time() - t0:.0f} s  {_short(summary)}")
        out[cell.name] = "ran"
    log(f"sweep {sweep.name}: all {n} cells finished ({time.time() - t_sweep:.0f} s this start)")
    if jax.process_index() == 0:
        from vlm_spatial.evaluation.sweep_report import write_report

        paths = write_report(sweep, sweep_dir, runs)
        log(f"report: {paths['report']} (results {paths['results']}, figures in {paths['figures']})")
    return out


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    from vlm_spatial import parallel

    parallel.maybe_initialize_distributed()
    import jax

    source = config_flags.get_config_filename(flags.FLAGS["config"])
    from vlm_spatial.training.loop import NonFiniteLoss, Preempted

    log = (lambda m: print(m, flush=True)) if jax.process_index() == 0 else (lambda m: None)
    try:  # every cell's config (and any cell folder of another config) is checked before the first runs
        sweep = load_sweep(_CONFIG.value, source)
        runs = cell_runs(sweep, _WORKDIR.value, jax.device_count(), jax.process_count(), source)
        run_sweep(sweep, _WORKDIR.value, runs, log=log)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(e.msg, file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    app.run(main)
