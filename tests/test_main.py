"""`python -m vlm_spatial.main`: early config validation, and the tiny job end to end - its loss goes
down, it evaluates per family, and a run killed by SIGTERM and resumed gives the same losses step
for step as a run that was never killed."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from configs import aimv2_2drope, clip
from vlm_spatial.runconfig import ConfigError, parse
from vlm_spatial.models.presets import vlm_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("clip", "clip_2drope", "siglip", "siglip_2drope", "siglip2", "siglip2_2drope", "aimv2", "aimv2_2drope")
SHORT = [  # the tiny job, shorter: a few steps per stage, a small synthetic set, 40 eval questions
    "--config.stages.pretrain.num_steps=4", "--config.stages.finetune.num_steps=12",
    "--config.data.synthetic.num_train=256", "--config.data.synthetic.num_test=40",
    "--config.checkpoint.save_every=5", "--config.log.progress=False",
]


def _problems(config, devices=8) -> list[str]:
    try:
        parse(config, devices)
    except ConfigError as e:
        return e.problems
    return []


def test_every_variant_tiny_config_is_valid_and_paper_config_asks_for_paths(tmp_path):
    for v in VARIANTS:
        mod = __import__(f"configs.{v}", fromlist=["get_config"])
        assert _problems(mod.get_config("tiny")) == [], v
        fields = sorted(p.split(":")[0] for p in _problems(mod.get_config()))
        assert fields == ["eval.data_root", "model.init_checkpoint", "stages.finetune.data_file",
                          "stages.finetune.image_root", "stages.pretrain.data_file", "stages.pretrain.image_root"], v
    paper = clip.get_config()
    assert (paper.model.image_size, paper.model.decoder, paper.model.dtype) == (256, "vicuna-7b-v1.5", "bfloat16")
    assert [(paper.stages[s].lr, paper.stages[s].global_batch, paper.stages[s].trainable_parts)
            for s in ("pretrain", "finetune")] == [(1e-3, 256, ("projector",)), (2e-5, 128, ("projector", "lm"))]
    # a checkpoint whose encoder is of another family than the variant's is refused
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model_config.json").write_text(json.dumps(vlm_config("tiny-clip", "tiny-llama").to_dict()))
    c = aimv2_2drope.get_config("tiny")
    c.model.random_init = False
    c.model.init_checkpoint = str(ckpt)
    assert any(p.startswith("model.init_checkpoint:") and "clip encoder" in p and "aimv2" in p for p in _problems(c))


def test_bad_fields_are_all_named():
    c = clip.get_config("tiny")
    c.run = ("finetune", "pretrain")
    c.mesh.data = 3
    c.model.dtype = "fp8"
    c.stages.pretrain.lr = -1.0
    c.stages.finetune.trainable_parts = ("projector", "llm")
    c.stages.finetune.global_batch = 30
    c.data.synthetic.dir = ROOT  # exists but holds no synthetic set
    c.data.on_bad_record = "ignore"
    problems = _problems(c)
    for field in ("run", "mesh", "model.dtype", "stages.pretrain.lr", "stages.finetune.trainable_parts",
                  "data.synthetic.dir", "data.on_bad_record"):
        assert any(p.startswith(field + ":") for p in problems), (field, problems)
    c = clip.get_config("tiny")
    c.eval.rules = "vlmevalkit-2024"
    assert [p.split(":")[0] for p in _problems(c)] == ["eval.rules"]
    c = clip.get_config("tiny")
    c.stages.finetune.global_batch = 30  # 8 devices: 30 rows cannot be split over data x fsdp = 8
    assert [p.split(":")[0] for p in _problems(c)] == ["stages.finetune.global_batch"]
    c.stages.finetune.trainable_parts = ("projector,lm",)  # a comma-joined command-line value is split
    c.stages.finetune.global_batch = 32
    assert _problems(c) == []


def _env(cache: str) -> dict:
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


def _main(config: str, workdir, *extra, env, popen=False):
    cmd = [sys.executable, "-m", "vlm_spatial.main", f"--config={config}", f"--workdir={workdir}", *extra]
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _losses(workdir, stage: str) -> dict[int, float]:
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["stage"] == stage:
                out[r["step"]] = r["loss"]  # a step run again after a restart: the last one counts
    return out


def test_paper_config_without_paths_fails_before_anything_heavy(tmp_path):
    r = _main("configs/aimv2_2drope.py", tmp_path / "run", env=_env(str(tmp_path / "cache")))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--config.model.init_checkpoint: not set; put a checkpoint written by `python -m vlm_spatial.convert " \
           "assemble" in r.stderr
    assert "--config.stages.pretrain.data_file: not set; put LLaVA-Pretrain's blip_laion_cc_sbu_558k.json" in r.stderr
    assert not (tmp_path / "run").exists()


def test_tiny_job_learns_evaluates_and_resumes_exactly_after_sigterm(tmp_path):
    env = _env(str(tmp_path / "jax_cache"))
    args = [*SHORT, f"--config.data.synthetic.dir={tmp_path / 'synthetic'}"]
    config = "configs/clip_2drope.py:tiny"
    # A: never killed
    a = _main(config, tmp_path / "a", *args, env=env)
    assert a.returncode == 0, a.stdout[-3000:] + a.stderr[-3000:]
    assert "eval synthetic: accuracy" in a.stdout and "left_right" in a.stdout, a.stdout[-2000:]
    fine_a = _losses(tmp_path / "a", "finetune")
    assert sorted(fine_a) == list(range(1, 13))
    first, last = [fine_a[s] for s in (1, 2, 3)], [fine_a[s] for s in (10, 11, 12)]
    assert sum(last) / 3 < sum(first) / 3 - 0.3, fine_a
    metrics = json.loads((tmp_path / "a" / "eval" / "metrics.json").read_text())["synthetic"]
    assert metrics["n"] == 40 and set(metrics["by_family"]) == {"left_right", "above_below"}

    # B: stage 1 alone, then the whole job killed by SIGTERM in stage 2, then the same command again
    b = tmp_path / "b"
    r = _main(config, b, *args, "--config.run=('pretrain',)", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    proc = _main(config, b, *args, env=env, popen=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(b / "metrics.jsonl") and max(_losses(b, "finetune") or [0]) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, out[-3000:]
    killed_at = max(_losses(b, "finetune"))
    assert 3 <= killed_at < 12 and "SIGTERM at step" in out
    r = _main(config, b, *args, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "pretrain: finished earlier" in r.stdout and f"finetune: resuming at step {killed_at}/12" in r.stdout
    for stage in ("pretrain", "finetune"):
        assert _losses(b, stage) == _losses(tmp_path / "a", stage), stage
    assert json.loads((b / "eval" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "a" / "eval" / "metrics.json").read_text())


@pytest.mark.slow
def test_default_job_is_clearly_above_chance_on_left_right(tmp_path):
    """The README's default job as it is (minutes on a CPU)."""
    r = _main("configs/aimv2_2drope.py:tiny", tmp_path / "run", env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["synthetic"]
    assert metrics["by_family"]["left_right"] > 0.7, metrics



def test_multihost_launchers_are_detected(monkeypatch):
    from vlm_spatial import parallel

    for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_PROCID", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    assert parallel.multihost_env() is None  # one task, one TPU worker: no jax.distributed
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert parallel.multihost_env() == "SLURM"
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1,t2,t3,t4")
    assert parallel.multihost_env() == "TPU VM"
