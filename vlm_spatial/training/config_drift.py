"""Config drift on resume: every start's config kept in the workdir, and the one table of which
changes keep a resumed run exact (safe: accepted and logged) and which do not (refused unless
`--accept_config_changes`).

    previous = latest_attempt(workdir)                       # None on the first start
    changes = compare(previous["run"], current, started)     # [Change], each safe or not
    write_attempt(workdir, current, accepted=[...])          # configs/attempt-<n>.json

`current` / `previous["run"]` are `attempt_record(run, mesh)['run']`: the run config
(`RunConfig.to_dict()`) plus what the machine resolved (the mesh sizes, the process count).
`started` lists the training stages that have a checkpoint: a stage's own settings matter only once
it has started, and a finished stage's settings also matter once a later stage has started from it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Any, Iterable

import jax

ACCEPT_FLAG = "--accept_config_changes"
ATTEMPTS_DIR = "configs"

# Fields that are safe to change on resume, by dotted prefix -> why. Every other field breaks
# exactness, except a stage's own fields before it has started and its step count (`classify`).
SAFE = {
    "variant": "a label (the eval report's paper row)",
    "run": "which stages this start runs",
    "eval": "eval settings (the eval stage reads them after training)",
    "checkpoint": "checkpoint cadence and retention",
    "log": "logging",
    "data.on_bad_record": "what happens at a bad record (good records keep their order)",
}
# Stage fields (stages.<name>.<field>) that only count steps: a finished or running stage continues
# to the new count (its lr schedule then spans the new count).
STEP_FIELDS = ("num_steps", "num_epochs")
# Why an unsafe field breaks exactness, by dotted prefix (first match wins; the default is the last).
UNSAFE_WHY = {
    "seed": "model init and data order: the restored data position would point into another order",
    "mesh": "mesh-dependent: the per-device batch and the reduction order change",
    "machine": "mesh-dependent: the devices/processes the mesh and the per-process data shards are made of",
    "model": "the model",
    "data": "the data, its encoding or its order",
    "stages": "the stage's optimizer, schedule, batch, data or trainable parts",
}
class ConfigDriftError(ValueError):
    """The resumed run's config differs from the run's in ways that break exactness."""


@dataclasses.dataclass(frozen=True)
class Change:
    """One changed field: dotted name, old and new value, whether it is safe, and why."""

    field: str
    old: Any
    new: Any
    safe: bool
    why: str

    def line(self) -> str:
        """'field: old -> new  (why)'."""
        return f"{self.field}: {self.old!r} -> {self.new!r}  ({self.why})"


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{dotted field: leaf value} of a nested dict (lists become tuples so they compare with tuples)."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, name))
        else:
            out[name] = tuple(v) if isinstance(v, list) else v
    return out


def _match(field: str, table: dict[str, str]) -> str | None:
    for prefix, why in table.items():
        if field == prefix or field.startswith(prefix + "."):
            return why
    return None


def classify(field: str, started: Iterable[str], stage_order: Iterable[str]) -> tuple[bool, str]:
    """(safe, why) of a change of dotted `field`, given the training stages that have a checkpoint
    (`started`) in their run order (`stage_order`)."""
    started, order = set(started), list(stage_order)
    why = _match(field, SAFE)
    if why:
        return True, why
    m = re.match(r"stages\.(\w+)\.(\w+)", field)
    if m:
        stage, name = m.groups()
        later = [s for s in order[order.index(stage) + 1:] if s in started] if stage in order else []
        if later:
            return False, f"stage {later[0]} already started from the end of stage {stage}"
        if stage not in started:
            return True, f"stage {stage} has not started"
        if name in STEP_FIELDS:
            return True, f"more or fewer steps: stage {stage} continues to the new count (its lr schedule spans it)"
    return False, _match(field, UNSAFE_WHY) or "not known to keep a resumed run exact"


def compare(previous: dict, current: dict, started: Iterable[str], stage_order: Iterable[str]) -> list[Change]:
    """Every field that differs between two `attempt_record(...)['run']` dicts, classified."""
    old, new = flatten(previous), flatten(current)
    started = tuple(started)
    out = []
    for field in sorted(set(old) | set(new)):
        a, b = old.get(field), new.get(field)
        if a != b:
            safe, why = classify(field, started, stage_order)
            out.append(Change(field, a, b, safe, why))
    return out


def attempt_record(run_dict: dict, mesh_shape: dict) -> dict:
    """The compared part of an attempt: the run config plus the machine it resolved to."""
    return {**run_dict, "machine": {"mesh": dict(mesh_shape), "processes": jax.process_count()}}


def _attempts(workdir: str) -> list[tuple[int, str]]:
    d = os.path.join(workdir, ATTEMPTS_DIR)
    if not os.path.isdir(d):
        return []
    found = [(int(m.group(1)), os.path.join(d, n)) for n in os.listdir(d) if (m := re.fullmatch(r"attempt-(\d+)\.json", n))]
    return sorted(found)


def latest_attempt(workdir: str, log=print) -> dict | None:
    """The newest readable `configs/attempt-<n>.json` of `workdir` (a torn one is named and passed
    over), or None on the first start."""
    for n, path in reversed(_attempts(workdir)):
        try:
            with open(path) as f:
                rec = json.load(f)
            if isinstance(rec, dict) and isinstance(rec.get("run"), dict):
                return dict(rec, path=path)
            log(f"{path}: not an attempt record; passed over")
        except (OSError, ValueError) as e:
            log(f"{path}: unreadable ({type(e).__name__}: {e}); passed over")
    return None


def write_attempt(workdir: str, record: dict, accepted: list[Change]) -> str:
    """Write `configs/attempt-<n+1>.json` (process 0; never overwrites an earlier one) holding the
    compared `record`, the command line, the time and the changes accepted; returns its path."""
    d = os.path.join(workdir, ATTEMPTS_DIR)
    n = (_attempts(workdir) or [(0, "")])[-1][0] + 1
    path = os.path.join(d, f"attempt-{n}.json")
    if jax.process_index() != 0:
        return path
    os.makedirs(d, exist_ok=True)
    body = {"attempt": n, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": list(sys.argv),
            "accepted_changes": [c.line() for c in accepted], "run": record}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f, indent=1, default=str)
    os.replace(tmp, path)
    return path


def check(previous: dict | None, current: dict, started: Iterable[str], stage_order: Iterable[str], *,
          accept: bool, log=print) -> list[Change]:
    """Compare this start's `current` record with the previous attempt's; log the safe changes;
    raise `ConfigDriftError` (a diff and the flag) for unsafe ones unless `accept`. Returns every
    change (to record with the attempt). No previous attempt or no started stage: nothing to compare."""
    started = tuple(started)
    if previous is None or not started:
        return []
    changes = compare(previous["run"], current, started, stage_order)
    unsafe = [c for c in changes if not c.safe]
    if unsafe and not accept:
        lines = "\n".join(f"  {c.line()}" for c in unsafe)
        raise ConfigDriftError(
            f"this start's config differs from the run's ({previous['path']}) in {len(unsafe)} field(s) that "
            f"break exact resumption (stages with checkpoints: {', '.join(started)}):\n{lines}\n"
            f"Put the old values back, use a new --workdir, or rerun with {ACCEPT_FLAG} to resume with them "
            f"anyway (recorded in {ATTEMPTS_DIR}/)")
    for c in changes:
        log(f"config change since {os.path.basename(previous['path'])}, "
            f"{'accepted' if c.safe else 'accepted (' + ACCEPT_FLAG + ')'}: {c.line()}")
    return changes
