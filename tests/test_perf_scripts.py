"""perf/ scripts run against the current training API and compare on equal terms (the harness'
pinning, XLA flags and equality checks; never a timing); launch/ scripts parse and build the right
command (stub `python`, `srun`, `scontrol`, `gcloud` on PATH record what they are given)."""
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = sorted((REPO / "launch").glob("*.sh"))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "perf" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
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


PIN_CHILD = """
import json, os, sys, threading
sys.path.insert(0, {perf!r})
import equal_terms
pinning = equal_terms.pin(1, [{cpu}])
import jax, jax.numpy as jnp, torch
torch.ones(256, 256) @ torch.ones(256, 256)
jnp.ones((256, 256)) @ jnp.ones((256, 256))
late = threading.Thread(target=lambda: None); late.start(); late.join()
print(json.dumps({{"affinities": sorted({{tuple(sorted(c)) for c in equal_terms.thread_affinities().values()}}),
                  "torch_threads": torch.get_num_threads(), "flags": os.environ["XLA_FLAGS"],
                  "applied": pinning.xla_flags_applied, "devices": jax.device_count()}}))
"""


def test_pin_binds_every_thread_of_both_libraries_and_xla_parses_the_flags():
    """In a fresh process: after `pin(1, [cpu])` and work on both sides, every thread (jax's and
    torch's pools, later threads) may run on that one CPU only, torch has one intra-op thread, and
    XLA started with the harness' flags (it aborts on a `--` flag it does not know), keeping the
    flags that were there before (the 8 fake devices)."""
    cpu = max(os.sched_getaffinity(0))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, "-c", PIN_CHILD.format(perf=str(REPO / "perf"), cpu=cpu)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["affinities"] == [[cpu]] and out["torch_threads"] == 1 and out["applied"]
    assert out["devices"] == 8 and "--xla_cpu_multi_thread_eigen=false" in out["flags"].split()
    assert all(tok.startswith("--") for tok in out["flags"].split())
    bad = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True, text=True,
                         env={**os.environ, "XLA_FLAGS": "--intra_op_parallelism_threads=1"}, timeout=300)
    assert bad.returncode != 0 and "Unknown flag" in bad.stderr  # what XLA does with a flag it does not parse


def test_xla_flags_merge_replaces_only_the_same_flag():
    equal_terms = load_script("equal_terms")
    assert equal_terms.xla_flags(1) == ["--xla_cpu_multi_thread_eigen=false"]
    assert equal_terms.xla_flags(2) == ["--xla_cpu_multi_thread_eigen=true"]
    merged = equal_terms.merged_xla_flags("--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=true",
                                          equal_terms.xla_flags(1))
    assert merged == "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false"
    with pytest.raises(ValueError):
        equal_terms.xla_flags(0)


def test_ratio_only_for_identical_work():
    """A ratio is printed only when every check holds: a loss that differs in the 5th decimal, one
    changed greedy token, or no check at all refuses (naming what differed); equal work reports
    wall and CPU rates and both ratios from the medians."""
    et = load_script("equal_terms")
    timings = {"ours": et.Timing(wall=[1.0, 3.0, 2.0], cpu=[1.0, 1.0, 1.0]),
               "torch": et.Timing(wall=[4.0, 4.0, 9.0], cpu=[2.0, 3.0, 3.0])}
    tokens = np.arange(12).reshape(3, 4)
    ok = [et.same_losses([7.123451, 6.9], [7.123453, 6.9]), et.same_tokens(tokens, tokens.copy())]
    lines = et.ratio_lines(timings, 8, "samples", ok)
    assert lines[-1].startswith("ratio    ours / torch: wall 2.00x, cpu 3.00x")
    assert any("cpu       8.00 samples/cpu-s" in line for line in lines)
    changed = tokens.copy()
    changed[2, 3] += 1
    for bad, what in [([et.same_losses([7.12345], [7.12347])], "losses equal to 5 decimals"),
                      ([et.same_tokens(tokens, changed)], "greedy tokens identical"),
                      ([et.same_tokens(tokens, tokens[:2])], "greedy tokens identical"),
                      ([], "no equality check")]:
        with pytest.raises(et.UnequalWork, match=what):
            et.ratio_lines(timings, 8, "samples", ok[:1] + bad if bad else bad)
    assert "91.67% of 12 equal" in et.same_tokens(tokens, changed).detail


def test_alternate_switches_which_side_goes_first():
    et = load_script("equal_terms")
    calls = []
    timings = et.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert all(len(t.wall) == len(t.cpu) == 3 for t in timings.values())


@pytest.mark.slow
def test_train_throughput_matches_transformers_losses():
    """Same weights and batch: the first two training losses (before and after one AdamW update)
    of this codebase equal transformers' LlavaForConditionalGeneration's."""
    out = load_script("train_throughput").main(
        ["--batch", "2", "--seq_len", "80", "--steps", "1", "--rounds", "1", "--warmup", "2"])
    np.testing.assert_allclose(out["losses"]["ours"], out["losses"]["torch"], rtol=2e-5)
    assert out["lines"][-1].startswith("ratio    ours / torch: wall ")


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
