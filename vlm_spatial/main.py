"""Train and evaluate one paper variant: `python -m vlm_spatial.main --config=configs/X.py[:tiny] --workdir=DIR`.

    python -m vlm_spatial.main --config=configs/aimv2_2drope.py --workdir=runs/aimv2_2drope \\
        --config.model.init_checkpoint=ckpts/aimv2_vicuna --config.stages.finetune.lr=1e-5
    python -m vlm_spatial.main --config=configs/clip.py:tiny --workdir=/tmp/clip_tiny    # CPU, minutes

Runs the config's stages in order (`pretrain`, `finetune`, `eval`; field `run`) and resumes where
the workdir left off: finished stages are skipped, an interrupted stage continues from its newest
checkpoint with the exact data position, so a rerun of the same command after a crash or a
preemption (SIGTERM: a checkpoint is written before exit, code 143) ends where an uninterrupted run
would. A rerun whose config differs from the run's in a way that breaks this exactness is refused
with the difference (`--accept_config_changes` resumes anyway; every start's config is kept in
WORKDIR/configs/). The config is turned into the typed `vlm_spatial.runconfig.RunConfig` first: every problem
(and every command-line override the run would not read) is listed with the field to fix. Multi-host
(SLURM, TPU pods, or JAX_COORDINATOR_ADDRESS set): `jax.distributed.initialize()` runs first.
Run it from the repository root (the configs import `configs.common`).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<variant>.py[:tiny]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics, eval outputs")
_ACCEPT = flags.DEFINE_bool("accept_config_changes", False, "resume even though the config differs from the "
                            "run's in a way that breaks exact resumption (see README, Reliability)")
flags.mark_flags_as_required(["config", "workdir"])


def print_summary(summary: dict) -> None:
    """The final summary: per-stage steps and losses, eval accuracy (per family where reported),
    and where the outputs are."""
    print(f"\n== {summary['variant']}: {summary['workdir']} ==")
    for s in summary["stages"]:
        loss = "n/a" if s.get("first_loss") is None else f"{s['first_loss']:.4f} -> {s['last_loss']:.4f}"
        line = f"  {s['stage']:<9} steps {s['start_step']}->{s['end_step']}  loss {loss}"
        if s.get("skipped"):
            line += "  (finished earlier)"
        else:
            tps = s.get("tokens_per_s")
            line += f"  {s['wall_s']:.0f} s" + (f", {tps:,.0f} tokens/s" if tps else "")
        print(line)
    for bench, m in (summary.get("eval") or {}).items():
        primary = {k: v for k, v in m.items() if isinstance(v, float)}
        print(f"  eval {bench}: " + ", ".join(f"{k} {v:.3f}" for k, v in primary.items()) + f" (n={m.get('n')})")
        for fam, acc in (m.get("by_family") or {}).items():
            print(f"    {fam:<12} {acc:.3f}" if isinstance(acc, float) else f"    {fam:<12} {acc}")
    w = summary["workdir"]
    print(f"  metrics {w}/metrics.jsonl, TensorBoard {w}/tensorboard, checkpoints {w}/checkpoints, "
          f"eval {w}/eval")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    from vlm_spatial import parallel

    parallel.maybe_initialize_distributed()
    import jax

    from vlm_spatial.runconfig import ConfigError, parse

    source = config_flags.get_config_filename(flags.FLAGS["config"])
    try:
        run = parse(_CONFIG.value, jax.device_count(), jax.process_count(),
                    overrides=config_flags.get_override_values(flags.FLAGS["config"]), source=source)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from vlm_spatial.data.bad_records import BadRecordError, TooManyBadRecords
    from vlm_spatial.training.checkpoint import CheckpointSaveError, NoRestorableCheckpoint
    from vlm_spatial.training.config_drift import ConfigDriftError
    from vlm_spatial.training.job import run_job
    from vlm_spatial.training.loop import NonFiniteLoss, Preempted

    try:
        summary = run_job(run, _WORKDIR.value, accept_config_changes=_ACCEPT.value)
    except ConfigDriftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, TooManyBadRecords, BadRecordError, CheckpointSaveError, NoRestorableCheckpoint) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(e.msg, file=sys.stderr)
        raise
    if jax.process_index() == 0:
        print_summary(summary)
    return 0


if __name__ == "__main__":
    app.run(main)
