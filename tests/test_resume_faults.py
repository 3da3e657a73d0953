"""Resuming a workdir that went wrong, through `run_job` (what `python -m vlm_spatial.main` runs) and
the command line: corrupt newest checkpoints are skipped for the newest one that restores (and the
result equals an uninterrupted run), a config that drifted is refused with a diff and the flag that
accepts it, an update that overflows stops without saving NaN weights, and a failing save stops
with the path and keeps the last good checkpoint."""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import clip
from vlm_spatial.runconfig import parse
from vlm_spatial.training.checkpoint import CheckpointSaveError, NoRestorableCheckpoint, StageCheckpointer
from vlm_spatial.training.config_drift import ConfigDriftError
from vlm_spatial.training.job import run_job
from vlm_spatial.training.loop import NonFiniteLoss, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _config(synth: str, **stage):
    """The tiny finetune-only job: STEPS steps of 8 rows, a checkpoint every step, all kept."""
    c = clip.get_config("tiny")
    c.run = ("finetune",)
    c.stages.finetune.num_steps = STEPS
    c.stages.finetune.global_batch = 8
    for k, v in stage.items():
        c.stages.finetune[k] = v
    c.data.synthetic.num_train, c.data.synthetic.num_test, c.data.synthetic.dir = 64, 8, synth
    c.checkpoint.save_every, c.checkpoint.keep = 1, 20
    c.log.progress = c.log.tensorboard = False
    return c


def _run(c, workdir, **kw) -> dict:
    return run_job(parse(c, jax.device_count()), str(workdir), **kw)


def _params(workdir, step: int) -> list[np.ndarray]:
    ckpt = StageCheckpointer(os.path.join(workdir, "checkpoints", "finetune"), save_every=1)
    try:
        from orbax import checkpoint as ocp

        out = ckpt.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    finally:
        ckpt.close()
    return [np.asarray(x) for x in jax.tree.leaves(out["params"])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (workdir, synthetic folder), compiled programs cached on disk for the reruns."""
    base = tmp_path_factory.mktemp("resume")
    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(base / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    ref = base / "ref"
    _run(_config(str(base / "synth")), ref)
    yield ref, str(base / "synth")
    jax.config.update("jax_compilation_cache_dir", old)


def _copy(ref, dst):
    shutil.copytree(ref, dst)
    return dst


def _corrupt(step_dir: str, kind: str) -> None:
    if kind == "garbage meta":
        with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
            f.write('{"stage": "finetune", "st')
    elif kind == "emptied folder":
        for p in glob.glob(os.path.join(step_dir, "*")):
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    elif kind == "truncated params":
        for p in glob.glob(os.path.join(step_dir, "params", "**", "d", "*"), recursive=True):
            with open(p, "r+b") as f:
                f.truncate(os.path.getsize(p) // 2)
    elif kind == "no data state":
        shutil.rmtree(os.path.join(step_dir, "data"))
    elif kind == "refused data state":
        with open(os.path.join(step_dir, "data", "metadata"), "w") as f:
            json.dump({"state": {"next_index": 3}}, f)


KINDS = {6: ("garbage meta", "JSONDecodeError"), 5: ("emptied folder", "KeyError"),
         4: ("truncated params", "OUT_OF_RANGE"), 3: ("no data state", "KeyError"),
         2: ("refused data state", "KeyError: 'num_workers'")}


def test_corrupt_newest_checkpoints_are_skipped_and_the_resumed_run_equals_an_uninterrupted_one(
        reference, tmp_path, capsys):
    ref, synth = reference
    work = _copy(ref, tmp_path / "w")
    stage_dir = os.path.join(work, "checkpoints", "finetune")
    for step, (kind, _) in KINDS.items():
        _corrupt(os.path.join(stage_dir, str(step)), kind)
    capsys.readouterr()
    summary = _run(_config(synth), work)
    out = capsys.readouterr().out
    assert summary["stages"][0]["start_step"] == 1 and summary["stages"][0]["end_step"] == STEPS
    assert f"finetune: resuming at step 1/{STEPS} from {stage_dir}" in out
    for step, (kind, reason) in KINDS.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(f"checkpoint {stage_dir}/{step} does not restore"))
        assert reason in line and f"moved to {stage_dir}/skipped/{step}" in line, (kind, line)
        assert os.path.isdir(os.path.join(stage_dir, "skipped", str(step)))  # kept, not deleted
    ref_losses = {s: r["loss"] for s, r in read_metrics(str(ref), "finetune").items()}
    assert {s: r["loss"] for s, r in read_metrics(str(work), "finetune").items()} == ref_losses
    for a, b in zip(_params(work, STEPS), _params(ref, STEPS)):
        np.testing.assert_array_equal(a, b)

    # every step folder broken: a clear error naming the folder and each step, nothing moved
    for step in range(1, STEPS + 1):
        shutil.rmtree(os.path.join(stage_dir, str(step), "data"), ignore_errors=True)
    with pytest.raises(NoRestorableCheckpoint, match=rf"no checkpoint in {stage_dir} restores \({stage_dir}/6: "):
        _run(_config(synth, num_steps=STEPS + 2), work)
    assert sorted(n for n in os.listdir(stage_dir) if n.isdigit()) == [str(s) for s in range(1, STEPS + 1)]


def test_config_drift_is_refused_with_a_diff_and_safe_changes_are_logged(reference, tmp_path, capsys):
    ref, synth = reference
    work = _copy(ref, tmp_path / "w")
    c = _config(synth, lr=5e-4, trainable_parts=("projector",))
    c.seed = 3
    with pytest.raises(ConfigDriftError) as e:
        _run(c, work)
    msg = str(e.value)
    assert "configs/attempt-1.json" in msg and "--accept_config_changes" in msg
    for line in ("stages.finetune.lr: 0.001 -> 0.0005", "seed: 0 -> 3",
                 "stages.finetune.trainable_parts: ('projector', 'lm', 'vision') -> ('projector',)"):
        assert line in msg, msg
    assert "Traceback" not in msg and "PyTreeDef" not in msg
    with pytest.raises(ConfigDriftError, match=r"stages\.finetune\.num_steps: 4 steps is below step 6"):
        _run(_config(synth, num_steps=4), work)
    assert sorted(os.listdir(os.path.join(work, "configs"))) == ["attempt-1.json"]  # refused starts ran nothing

    # safe changes (logging, eval, checkpoint cadence) are accepted, logged and recorded; the original stays
    c = _config(synth)
    c.log.progress, c.eval.limit, c.checkpoint.keep = True, 5, 3
    capsys.readouterr()
    assert _run(c, work)["stages"][0]["skipped"]
    out = capsys.readouterr().out
    assert "config change since attempt-1.json, accepted: checkpoint.keep: 20 -> 3  (checkpoint cadence" in out
    assert "log.progress: False -> True  (logging)" in out
    first = json.loads((work / "configs" / "attempt-1.json").read_text())
    second = json.loads((work / "configs" / "attempt-2.json").read_text())
    assert first["run"]["checkpoint"]["keep"] == 20 and second["run"]["checkpoint"]["keep"] == 3
    assert first["run"]["machine"] == {"mesh": {"data": 1, "fsdp": 8, "tensor": 1}, "processes": 1}

    # the command line: exit 2, the diff and the flag, no traceback
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "vlm_spatial.main", "--config=configs/clip.py:tiny", f"--workdir={work}",
                        "--config.run=('finetune',)", f"--config.stages.finetune.num_steps={STEPS}",
                        "--config.stages.finetune.global_batch=16", f"--config.data.synthetic.dir={synth}",
                        "--config.data.synthetic.num_train=64", "--config.data.synthetic.num_test=8"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "stages.finetune.global_batch: 8 -> 16" in r.stderr and "--accept_config_changes" in r.stderr
    assert "Traceback" not in r.stderr


def test_overflowing_update_stops_without_saving_nan_weights_and_the_advice_works(reference, tmp_path, capsys):
    """num_steps raised after the stage finished (accepted: it continues) with an lr whose first
    update overflows: the stop names the step and the weights, the last good checkpoint restores
    finite, and the advised rerun (lower lr, --accept_config_changes) trains on."""
    ref, synth = reference
    work = _copy(ref, tmp_path / "w")
    stage_dir = os.path.join(work, "checkpoints", "finetune")
    with pytest.raises(NonFiniteLoss) as e:
        _run(_config(synth, num_steps=STEPS + 2, lr=1e39), work, accept_config_changes=True)
    msg = str(e.value)
    assert msg.startswith(f"stage finetune: the update of step {STEPS + 1} made the weights or optimizer state "
                          f"NaN/inf"), msg
    assert f"Last good checkpoint: step {STEPS} in {stage_dir}." in msg
    assert "--config.stages.finetune.lr=1e+38 --accept_config_changes" in msg
    ckpt = StageCheckpointer(stage_dir, save_every=1)
    assert ckpt.latest_step() == STEPS
    ckpt.close()
    assert all(np.isfinite(p).all() for p in _params(work, STEPS))

    capsys.readouterr()
    summary = _run(_config(synth, num_steps=STEPS + 2, lr=1e-4), work, accept_config_changes=True)
    out = capsys.readouterr().out
    assert "continues from its checkpoint" in out and "stages.finetune.lr: 1e+39 -> 0.0001" in out
    assert (summary["stages"][0]["start_step"], summary["stages"][0]["end_step"]) == (STEPS, STEPS + 2)


def test_failing_save_stops_with_the_path_and_keeps_the_last_good_checkpoint(reference, tmp_path, monkeypatch):
    ref, synth = reference
    work = _copy(ref, tmp_path / "w")
    stage_dir = os.path.join(work, "checkpoints", "finetune")
    from orbax.checkpoint import CheckpointManager

    real_save = CheckpointManager.save

    def save(self, step, *a, **kw):
        if step > STEPS:
            raise OSError(28, "No space left on device", os.path.join(stage_dir, str(step)))
        return real_save(self, step, *a, **kw)

    monkeypatch.setattr(CheckpointManager, "save", save)
    with pytest.raises(CheckpointSaveError) as e:
        _run(_config(synth, num_steps=STEPS + 2), work)
    msg = str(e.value)
    assert msg.startswith(f"cannot write checkpoint {stage_dir}/{STEPS + 1}: OSError: [Errno 28] No space left on "
                          f"device"), msg
    assert f"The last good checkpoint (step {STEPS} in {stage_dir}) is kept" in msg and "\n" not in msg
    monkeypatch.setattr(CheckpointManager, "save", real_save)
    summary = _run(_config(synth, num_steps=STEPS + 2), work)  # space freed: the same command resumes
    assert (summary["stages"][0]["start_step"], summary["stages"][0]["end_step"]) == (STEPS, STEPS + 2)
