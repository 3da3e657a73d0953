"""`python -m vlm_spatial.sweep`: every problem of the sweep and of each cell's config is named before
anything runs; a cell is the standalone `main` run of its config and seed (same losses, same eval
metrics); a sweep killed inside a cell resumes without redoing the finished cells."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs.sweeps import ci_tiny, paper_tiny
from vlm_spatial import sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = ("log.progress=False", "stages.pretrain.num_steps=2", "stages.finetune.num_steps=8",
         "stages.pretrain.global_batch=8", "stages.finetune.global_batch=8", "data.synthetic.num_train=64",
         "data.synthetic.num_test=16", "checkpoint.save_every=1", "checkpoint.async_save=False", "eval.batch_size=16")


def _env(cache: str) -> dict:
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _losses(workdir) -> dict:
    """{(stage, step): loss}, the last record of a step winning (a line torn by the kill is skipped)."""
    out = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[(r["stage"], r["step"])] = r["loss"]
    return out


def test_the_paper_sweep_is_the_eight_variants_times_three_seeds():
    s = sweep_lib.load_sweep(paper_tiny.get_config())
    assert len(s.cells) == 24 and s.seeds == (0, 1, 2)
    assert {c.config_file for c in s.cells} == {f"configs/{v}.py:tiny" for v in paper_tiny.VARIANTS}
    assert all(c.overrides[-1] == f"seed={c.seed}" for c in s.cells)
    ci = sweep_lib.load_sweep(ci_tiny.get_config())
    assert (len(ci.variants), len(ci.seeds)) == (2, 2)


def test_every_problem_is_named_before_anything_runs(tmp_path):
    c = ci_tiny.get_config()
    c.unlock()
    c.seeds = (0, 0)
    c.bootstrap = dict(num_samples=10)
    c.extra = 1
    with pytest.raises(sweep_lib.SweepError) as e:
        sweep_lib.load_sweep(c, "sweep.py")
    for field in ("extra: not a sweep field", "seeds:", "bootstrap:"):
        assert field in str(e.value), (field, str(e.value))
    c = ci_tiny.get_config()
    c.variants.aimv2.overrides = ("model.no_such_knob=1",)
    c.variants.aimv2_2drope.overrides = ("stages.finetune.num_epochs=2.0",)  # not read: num_steps is set
    s = sweep_lib.load_sweep(c)
    with pytest.raises(sweep_lib.SweepError) as e:
        sweep_lib.cell_runs(s, str(tmp_path), 8, 1, "sweep.py")
    msg = str(e.value)
    assert "4 cell(s) have problems" in msg and "aimv2/seed_0" in msg and "no_such_knob" in msg
    assert "aimv2_2drope/seed_1" in msg and "stages.finetune.num_epochs: set but not read" in msg
    assert not (tmp_path / "cells").exists()


def test_cells_equal_standalone_runs_and_a_killed_sweep_resumes(tmp_path):
    env = _env(str(tmp_path / "jax_cache"))
    cfg = tmp_path / "two_seeds.py"
    cfg.write_text("from configs.sweeps import paper_tiny\n\n\ndef get_config():\n    c = paper_tiny.sweep("
                   f"'two_seeds', ('clip_2drope',), (0, 1), {SHORT!r})\n    c.consistency = False\n    return c\n")
    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "vlm_spatial.sweep", f"--config={cfg}", f"--workdir={sweep_dir}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = sweep_dir / "cells" / "clip_2drope" / "seed_1"
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if (second / "metrics.jsonl").exists() and max(
                [s for (st, s) in _losses(second) if st == "finetune"] or [0]) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    first = sweep_dir / "cells" / "clip_2drope" / "seed_0"
    assert "[1/2] clip_2drope/seed_0: done in" in out and not (second / "summary.json").exists()
    stamp = {p: os.stat(first / p).st_mtime_ns for p in ("summary.json", "metrics.jsonl", "eval/metrics.json")}

    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[1/2] clip_2drope/seed_0: finished earlier, skipped" in r.stdout
    assert "[2/2] clip_2drope/seed_1: resuming" in r.stdout and "finetune: resuming at step" in r.stdout
    assert stamp == {p: os.stat(first / p).st_mtime_ns for p in stamp}

    # the cell is the standalone run of its config and seed
    synth, = (sweep_dir / "synthetic").iterdir()
    alone = tmp_path / "alone"
    r = subprocess.run([sys.executable, "-m", "vlm_spatial.main", "--config=configs/clip_2drope.py:tiny",
                        f"--workdir={alone}", *(f"--config.{o}" for o in SHORT), "--config.seed=1",
                        f"--config.data.synthetic.dir={synth}"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _losses(second) == _losses(alone) and len(_losses(alone)) == 10
    assert (json.loads((second / "eval" / "metrics.json").read_text())
            == json.loads((alone / "eval" / "metrics.json").read_text()))
    assert _losses(first) != _losses(second)  # the seed reached the run

    # the report reads the cells
    results = json.loads((sweep_dir / "results.json").read_text())
    for seed, wd in ((0, first), (1, second)):
        by_family = json.loads((wd / "eval" / "metrics.json").read_text())["synthetic"]["by_family"]
        assert results["cells"][f"clip_2drope/seed_{seed}"]["accuracy"] == pytest.approx(by_family)
    assert set(results["accuracy"]["clip_2drope"]) == {"left_right", "above_below", "all"}
    assert {p.name for p in (sweep_dir / "figures").iterdir()} == {"accuracy.png", "curves.png"}
    assert "| clip_2drope |" in (sweep_dir / "report.md").read_text()

    # a cell folder made with another config is refused, naming the field
    r = subprocess.run(cmd + ["--config.overrides=('stages.finetune.lr=0.01',)"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "stages.finetune.lr" in r.stderr and "another config" in r.stderr, r.stderr[-2000:]
