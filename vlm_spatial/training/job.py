"""The whole job of `python -m vlm_spatial.main`: the run config's stages in order, resumable.

    run = runconfig.parse(config, jax.device_count(), jax.process_count())
    summary = run_job(run, workdir)

Workdir layout:

  config.json                  the run config of the latest start (`RunConfig.to_dict()`, for the record)
  configs/attempt-<n>.json     every start's config and machine, never overwritten (`config_drift`)
  synthetic/                   the synthetic set (data.kind='synthetic', generated when absent)
  checkpoints/<stage>/         one model checkpoint per training stage (`training/checkpoint.py`:
                               model_config.json, tokenizer/, <step>/{params,opt_state,train,data,meta})
  metrics.jsonl, tensorboard/  per-step metrics of every stage
  eval/                        predictions, metrics.json and report.md of the eval stage
  summary.json                 what the final summary prints

Resuming: the start's config is compared with the previous attempt's (`config_drift`: a change
that breaks exactness is refused unless accepted, a safe one is logged). A stage whose newest
checkpoint reached its `num_steps` is skipped; a stage with a checkpoint resumes from its newest one
that restores (params, optimizer state, step, RNG and the data iterator's position; newer broken ones
are moved aside, named) - also a finished stage whose `num_steps` was raised, which trains on to the
new count. A `num_steps` below a stage's checkpoint step is refused. A fresh stage starts from the
previous stage's final params (from memory or its checkpoint), the first from
`model.init_checkpoint` (or a random init).
"""
from __future__ import annotations

import json
import os
import time

import jax
from flax import nnx

from vlm_spatial import checkpoint, parallel
from vlm_spatial.models.vlm import VLM, VLMConfig
from vlm_spatial.runconfig import TRAIN_STAGES, RunConfig
from vlm_spatial.training import config_drift
from vlm_spatial.training import data as data_lib
from vlm_spatial.training import model_init
from vlm_spatial.training.checkpoint import StageCheckpointer
from vlm_spatial.training.loop import StageSpec, build_stage, read_metrics, train_stage
from vlm_spatial.training.optimizer import PARTS


def say(msg: str) -> None:
    """Print on process 0 only."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def resolve_model(run: RunConfig, tok_dir: str) -> tuple[VLMConfig, VLMConfig | None]:
    """(the run's model config, the initial checkpoint's config or None for a random init)."""
    if run.model.random_init:
        vocab, image_id = data_lib.tokenizer_vocab(tok_dir)
        return run.model.vlm_config(vocab_size=vocab, image_token_id=image_id), None
    ckpt_cfg = checkpoint.read_config(os.path.expanduser(run.model.init_checkpoint))
    return run.model.vlm_config(ckpt_cfg), ckpt_cfg


def stage_spec(run: RunConfig, stage: str, num_records: int) -> StageSpec:
    """The `StageSpec` of a training stage from `run.stages[stage]` and its data's `num_records`."""
    sc = run.stages[stage]
    return StageSpec(
        name=stage, num_steps=data_lib.stage_num_steps(sc, num_records), trainable_parts=sc.trainable_parts,
        lr=sc.lr, global_batch=sc.global_batch, grad_accum_steps=sc.grad_accum_steps, warmup_ratio=sc.warmup_ratio,
        schedule=sc.schedule, weight_decay=sc.weight_decay, max_grad_norm=sc.max_grad_norm or None, seed=run.seed,
    )


def eval_args(run: RunConfig, workdir: str, synth_dir: str | None) -> dict:
    """The keyword arguments of `evaluation.runner.evaluate_checkpoint` (all but the checkpoint and
    the mesh) for the eval stage of `run`: its benchmarks on `eval.data_root` (the synthetic set's
    folder when that is '' with synthetic data), scored by the rule set `eval.rules`, compared with
    the paper's row of `variant` if any, images preprocessed as in training (`data.resize_mode`)."""
    e = run.eval
    return dict(benchmarks=e.benchmarks, data_root=os.path.expanduser(e.data_root) or synth_dir,
                out_dir=os.path.join(workdir, "eval"), batch_size=e.batch_size, limit=e.limit or None,
                variant=run.paper_variant, resize_mode=run.data.resize_mode, rules=e.rules)


def _stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, "checkpoints", stage)


def _has_steps(stage_dir: str) -> bool:
    """Whether a stage directory holds any step folder (a stage that has started)."""
    return os.path.isdir(stage_dir) and any(n.isdigit() for n in os.listdir(stage_dir))


def _newest_meta(stage_dir: str) -> dict | None:
    """The meta of a stage's newest checkpoint whose meta reads, or None."""
    if not _has_steps(stage_dir):
        return None
    ckpt = StageCheckpointer(stage_dir, save_every=1)
    try:
        return ckpt.read_meta()
    finally:
        ckpt.close()


def _done_summary(workdir: str, stage: str, meta: dict) -> dict:
    records = read_metrics(workdir, stage)
    losses = [records[s]["loss"] for s in sorted(records)]
    return {"stage": stage, "start_step": meta["step"], "end_step": meta["step"], "skipped": True,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def _check_steps(specs: dict[str, StageSpec], metas: dict[str, dict | None], workdir: str) -> None:
    """Refuse a stage `num_steps` below the step its checkpoint is at (it cannot be untrained)."""
    low = [(name, spec, metas[name]) for name, spec in specs.items()
           if metas.get(name) and spec.num_steps < metas[name]["step"]]
    if low:
        lines = "\n".join(
            f"  stages.{n}.num_steps: {spec.num_steps} steps is below step {meta['step']}, where the checkpoint in "
            f"{_stage_dir(workdir, n)} is; put at least {meta['step']} ({meta['step']} ends the stage there)"
            for n, spec, meta in low)
        raise config_drift.ConfigDriftError(
            f"a stage's step count is below its checkpoint (set by num_steps, or num_epochs when num_steps=0):\n"
            f"{lines}\nor use a new --workdir to train the shorter stage from the start")


def _check_config(run: RunConfig, workdir: str, mesh, accept: bool) -> tuple[dict, list]:
    """Compare this start with the previous attempt (`config_drift.check`: raises on unsafe
    changes unless `accept`, logs the others). Returns (this attempt's record, the changes)."""
    started = [s for s in TRAIN_STAGES if _has_steps(_stage_dir(workdir, s))]
    record = config_drift.attempt_record(run.to_dict(), mesh.shape)
    changes = config_drift.check(config_drift.latest_attempt(workdir, say), record, started, TRAIN_STAGES,
                                 accept=accept, log=say)
    return record, changes


def _record_attempt(run: RunConfig, workdir: str, record: dict, changes: list) -> None:
    """This start as `configs/attempt-<n>.json` (kept) and `config.json` (the latest start)."""
    path = config_drift.write_attempt(workdir, record, changes)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(run.to_dict(), f, indent=1)
    say(f"config recorded in {path}")


def _resume(ckpt: StageCheckpointer, setup, spec: StageSpec, meta: dict, it):
    """The state of a stage resumed from the newest checkpoint of `ckpt` that restores (None when
    none exists). When the checkpoint's optimizer state is for other trainable parts or clipping (an
    accepted config change), the params, step, RNG and data position are restored and the optimizer
    starts fresh."""
    saved_parts = tuple(meta.get("trainable_parts") or spec.trainable_parts)
    saved_clip = bool(meta.get("max_grad_norm", spec.max_grad_norm))
    fresh_opt = saved_parts != tuple(spec.trainable_parts) or saved_clip != bool(spec.max_grad_norm)
    out = ckpt.restore_latest(setup.abstract_state, setup.state_shardings, data_iter=it, opt_state=not fresh_opt,
                              log=say)
    if out is None:
        return None
    state, meta = out
    if fresh_opt:
        say(f"{spec.name}: the checkpoint's optimizer state is for trainable parts {', '.join(saved_parts)} "
            f"(clipping {'on' if saved_clip else 'off'}); restored the weights, step and data position and "
            f"started the optimizer state fresh for {', '.join(spec.trainable_parts)}")
        fresh = setup.init_state(state["params"])
        state = dict(fresh, step=state["step"], rng=state["rng"])
    say(f"{spec.name}: resuming at step {meta['step']}/{spec.num_steps} from {ckpt.directory}")
    return state


def run_job(run: RunConfig, workdir: str, *, accept_config_changes: bool = False) -> dict:
    """Run `run.run` in `workdir` (resuming where it left off); returns the summary dict
    `{'stages': [per-stage summary], 'eval': {benchmark: metrics} | None, 'workdir': ...}`.

    Raises `config_drift.ConfigDriftError` (a config change that breaks exact resumption, unless
    `accept_config_changes`; a `num_steps` below a checkpoint), `loop.NonFiniteLoss` (NaN/inf loss or
    weights; last good checkpoint kept), `loop.Preempted` (SIGTERM; checkpoint saved),
    `checkpoint.CheckpointSaveError` (a save failed) and `checkpoint.NoRestorableCheckpoint`."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.make_mesh(run.mesh.data, run.mesh.fsdp, run.mesh.tensor)
    say(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} in {jax.process_count()} process(es); "
        f"mesh {dict(mesh.shape)}")
    record, changes = _check_config(run, workdir, mesh, accept_config_changes)
    synth = data_lib.ensure_synthetic(run, workdir, say) if run.data.kind == "synthetic" else None
    tok_dir = data_lib.tokenizer_dir(run, synth)
    if "eval" in run.run and run.data.kind != "synthetic":  # a missing benchmark file fails now, not after training
        from vlm_spatial.evaluation.runner import load_benchmarks

        load_benchmarks(run.eval.benchmarks, os.path.expanduser(run.eval.data_root), limit=1)
    specs = {s: stage_spec(run, s, data_lib.count_records(data_lib.stage_files(run, s, synth)[0]))
             for s in run.train_stages}
    metas = {s: _newest_meta(_stage_dir(workdir, s)) for s in TRAIN_STAGES}
    _check_steps(specs, metas, workdir)
    _record_attempt(run, workdir, record, changes)
    vlm_cfg, ckpt_cfg = resolve_model(run, tok_dir)
    model_fn = lambda: VLM(vlm_cfg, rngs=nnx.Rngs(run.seed))  # noqa: E731
    summaries, params, last_dir = [], None, None
    for stage in TRAIN_STAGES:
        stage_dir, meta = _stage_dir(workdir, stage), metas[stage]
        if stage not in run.run:
            if meta and meta.get("stage_done"):
                last_dir, params = stage_dir, None
            continue
        spec = specs[stage]
        if meta and meta["step"] >= spec.num_steps:
            say(f"{stage}: finished earlier (step {meta['step']}), skipped")
            summaries.append(_done_summary(workdir, stage, meta))
            last_dir, params = stage_dir, None
            continue
        if meta and meta.get("stage_done"):
            say(f"{stage}: finished earlier at step {meta['step']}; num_steps is now {spec.num_steps}, so the stage "
                f"continues from its checkpoint (its lr schedule spans {spec.num_steps} steps)")
        setup = build_stage(model_fn, mesh, spec)
        it = data_lib.stage_pipeline(run, stage, vlm_cfg, tok_dir, synth)
        ckpt = StageCheckpointer(stage_dir, save_every=run.checkpoint.save_every,
                                 max_to_keep=run.checkpoint.keep, async_save=run.checkpoint.async_save)
        try:
            state = _resume(ckpt, setup, spec, meta or {}, it) if _has_steps(stage_dir) else None
            if state is None:
                if params is None and last_dir is not None:
                    say(f"{stage}: starting from {last_dir}")
                    params = model_init.load_initial_params(last_dir, vlm_cfg, vlm_cfg, setup.params_shardings, mesh)
                elif params is None and ckpt_cfg is not None:
                    say(f"{stage}: starting from {run.model.init_checkpoint}")
                    params = model_init.load_initial_params(os.path.expanduser(run.model.init_checkpoint),
                                                            ckpt_cfg, vlm_cfg, setup.params_shardings, mesh,
                                                            seed=run.seed)
                elif params is None:
                    say(f"{stage}: starting from a random init (seed {run.seed})")
                state = setup.init_state(params)
                ckpt.write_model_files(vlm_cfg.to_dict(), tok_dir)
            params = None
            _describe(setup, spec, mesh)
            state, summary = train_stage(
                setup, state, it, ckpt, workdir=workdir,
                meta={"variant": run.variant, "trainable_parts": list(spec.trainable_parts),
                      "max_grad_norm": spec.max_grad_norm},
                image_tokens=vlm_cfg.num_image_tokens, lm_layers=vlm_cfg.decoder.num_layers,
                lm_width=vlm_cfg.decoder.hidden_size, tensorboard=run.log.tensorboard,
                progress=run.log.progress,
            )
        finally:
            ckpt.close()
        summaries.append(summary)
        params, last_dir = state["params"], stage_dir
        del state
    results = None
    if "eval" in run.run:
        if last_dir is None:
            raise FileNotFoundError(f"eval: no finished training stage in {workdir}/checkpoints; "
                                    f"run pretrain/finetune first (--config.run)")
        del params
        from vlm_spatial.evaluation.runner import evaluate_checkpoint

        say(f"eval: {', '.join(run.eval.benchmarks)} on {last_dir}")
        results = evaluate_checkpoint(last_dir, mesh=mesh, **eval_args(run, workdir, synth))
    summary = {"workdir": workdir, "variant": run.variant, "stages": summaries, "eval": results,
               "time": time.time()}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
    return summary


def _describe(setup, spec: StageSpec, mesh) -> None:
    counts = setup.param_counts
    trainable = sum(counts.get(PARTS[p], 0) for p in spec.trainable_parts)
    micro = spec.global_batch // (spec.grad_accum_steps * parallel.batch_divisor(mesh))
    say(f"{spec.name}: {spec.num_steps} steps of {spec.global_batch} rows ({micro}/device x "
        f"{spec.grad_accum_steps} accumulation); trains {', '.join(spec.trainable_parts)} "
        f"({trainable:,} of {sum(counts.values()):,} params); lr {spec.lr:g} {spec.schedule}, "
        f"warmup {spec.warmup_ratio:g}")
