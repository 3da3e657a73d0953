"""perf/ scripts run against the current training API; launch/ scripts parse and build the right
command (stub `python`, `srun`, `scontrol`, `gcloud` on PATH record what they are given)."""
import importlib.util
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = sorted((REPO / "launch").glob("*.sh"))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "perf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compile_7b_state_is_sharded_over_the_mesh():
    """A shallow 7B-width stage-2 step compiles AOT on the 8 fake devices; each device holds 1/8
    of the fp32 params and of the Adam moments of the trainable parts (nothing whole)."""
    out = load_script("compile_7b").main(
        ["--lm_layers", "1", "--vision_layers", "1", "--per_device_batch", "1", "--seq_len", "512"])
    assert out["devices"] == 8
    batch_bytes = out["global_batch"] * (3 * 512 * 4 + 256 * 256 * 3 * 4)
    expected = (4 * out["n_params"] + 2 * 4 * out["n_trainable"] + batch_bytes) / 8
    np.testing.assert_allclose(out["arguments"], expected, rtol=0.01)
    assert out["aliased"] > 0.99 * (out["arguments"] - batch_bytes / 8)  # the state is donated
    assert out["total"] > out["arguments"]


@pytest.mark.slow
def test_train_throughput_matches_transformers_losses():
    """Same weights and batch: the first two training losses (before and after one AdamW update)
    of this codebase equal transformers' LlavaForConditionalGeneration's."""
    out = load_script("train_throughput").main(
        ["--batch", "2", "--seq_len", "80", "--steps", "1", "--rounds", "1", "--warmup", "2"])
    np.testing.assert_allclose(out["losses"]["ours"], out["losses"]["torch"], rtol=2e-5)
    assert all(v > 0 for v in out["samples_per_s"].values())


@pytest.mark.parametrize("script", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_parses(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def stubs(tmp_path):
    """A bin/ of stubs that append their argv (one shell-quoted line) to tmp/calls, and an env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = f'printf "%q " "$(basename "$0")" "$@" >> {tmp_path}/calls; echo >> {tmp_path}/calls'
    stub(bin_dir, "python", record + f'\necho "JAX_LOCAL_DEVICE_IDS=${{JAX_LOCAL_DEVICE_IDS:-}}" >> {tmp_path}/env')
    stub(bin_dir, "srun", record + '\nwhile [[ "$1" == --* ]]; do shift; done\n"$@"\nexit ${STUB_RC:-0}')
    stub(bin_dir, "scontrol", record)
    stub(bin_dir, "gcloud", record + '\n[[ "$4" == describe ]] && echo 10.1.2.3\nexit 0')
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path), "VENV": str(venv),
           "REPO": str(REPO), "SLURM_JOB_ID": "42", "SLURM_SUBMIT_DIR": str(REPO)}

    def calls():
        path = tmp_path / "calls"
        return [shlex.split(line) for line in path.read_text().splitlines()] if path.exists() else []

    return env, calls, tmp_path


OVERRIDES = ["--config.stages.finetune.lr=1e-5", "--config.eval.benchmarks=('vsr', 'mmvp')"]


def main_call(variant_arg: str, workdir: str) -> list[str]:
    return ["python", "-m", "vlm_spatial.main", f"--config={variant_arg}", f"--workdir={workdir}", *OVERRIDES]


def test_local_launcher_passes_overrides_through(stubs):
    env, calls, _ = stubs
    subprocess.run([str(REPO / "launch/local.sh"), "clip:tiny", *OVERRIDES], env=env, check=True)
    assert calls() == [main_call("configs/clip.py:tiny", f"{REPO}/runs/clip_tiny")]
    bad = subprocess.run([str(REPO / "launch/local.sh"), "clipp"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "no variant 'clipp'" in bad.stderr and "aimv2_2drope" in bad.stderr


@pytest.mark.parametrize("script,device_ids", [("slurm_8xa40.sh", ""), ("slurm_multinode.sh", "0,1,2,3,4,5,6,7")])
def test_slurm_launchers_run_main_and_requeue_after_preemption(stubs, script, device_ids):
    env, calls, tmp = stubs
    done = subprocess.run(["bash", str(REPO / "launch" / script), "aimv2_2drope", *OVERRIDES],
                          env={**env, "STUB_RC": "143"}, capture_output=True, text=True)
    assert done.returncode == 143, done.stderr
    srun, main, requeue = calls()
    assert srun[0] == "srun" and srun[-len(main):] == main
    assert main == main_call("configs/aimv2_2drope.py", f"{REPO}/runs/aimv2_2drope")
    assert requeue == ["scontrol", "requeue", "42"]
    assert (tmp / "env").read_text().strip() == f"JAX_LOCAL_DEVICE_IDS={device_ids}"


def test_tpu_launcher_runs_main_on_every_worker(stubs):
    env, calls, tmp = stubs
    subprocess.run([str(REPO / "launch/tpu_vm.sh"), "siglip2", *OVERRIDES], check=True,
                   env={**env, "TPU_NAME": "v4-32", "ZONE": "us-central2-b"})
    describe, ssh = calls()
    assert describe[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"]
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "v4-32"] and "--worker=all" in ssh
    remote = next(a for a in ssh if a.startswith("--command="))[len("--command="):]
    assert "JAX_COORDINATOR_ADDRESS=10.1.2.3:8482" in remote
    # what a worker runs: its repository (here a stub one) and the exact argv, quoting intact
    (tmp / "vlm_spatial" / ".venv" / "bin").mkdir(parents=True)
    (tmp / "vlm_spatial" / ".venv" / "bin" / "activate").write_text("")
    (tmp / "calls").unlink()
    subprocess.run(["bash", "-c", remote], env=env, check=True)
    assert calls() == [main_call("configs/siglip2.py", f"{tmp}/vlm_spatial/runs/siglip2")]
