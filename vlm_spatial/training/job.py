"""The whole job of `python -m vlm_spatial.main`: the config's stages in order, resumable.

    summary = run_job(config, workdir)

Workdir layout:

  config.json                  the config of the latest start (for the record)
  synthetic/                   the synthetic set (data.kind='synthetic', generated when absent)
  checkpoints/<stage>/         one model checkpoint per training stage (`training/checkpoint.py`:
                               model_config.json, tokenizer/, <step>/{params,opt_state,train,data,meta})
  metrics.jsonl, tensorboard/  per-step metrics of every stage
  eval/                        predictions, metrics.json and report.md of the eval stage
  summary.json                 what the final summary prints

Resuming: a stage whose last checkpoint says `stage_done` is skipped; a stage with a checkpoint
resumes from its newest one (params, optimizer state, step, RNG and the data iterator's position);
a fresh stage starts from the previous stage's final params (from memory or its checkpoint), the
first from `model.init_checkpoint` (or a random init).
"""
from __future__ import annotations

import json
import os
import time

import jax
from flax import nnx

from vlm_spatial import checkpoint, parallel
from vlm_spatial.config_check import TRAIN_STAGES, split_parts
from vlm_spatial.models.vlm import VLM, VLMConfig
from vlm_spatial.training import data as data_lib
from vlm_spatial.training import model_init
from vlm_spatial.training.checkpoint import StageCheckpointer
from vlm_spatial.training.loop import StageSpec, build_stage, read_metrics, train_stage


def say(msg: str) -> None:
    """Print on process 0 only."""
    if jax.process_index() == 0:
        print(msg, flush=True)


def resolve_model(config, tok_dir: str) -> tuple[VLMConfig, VLMConfig | None]:
    """(the run's model config, the initial checkpoint's config or None for a random init)."""
    if config.model.random_init:
        vocab, image_id = data_lib.tokenizer_vocab(tok_dir)
        return model_init.preset_vlm_config(config.model, vocab_size=vocab, image_token_id=image_id), None
    ckpt_cfg = checkpoint.read_config(os.path.expanduser(config.model.init_checkpoint))
    return model_init.checkpoint_vlm_config(config.model, ckpt_cfg), ckpt_cfg


def stage_spec(config, stage: str, num_records: int) -> StageSpec:
    """The `StageSpec` of a training stage from `config.stages.<stage>`."""
    sc = config.stages[stage]
    return StageSpec(
        name=stage, num_steps=data_lib.stage_num_steps(sc, num_records),
        trainable_parts=split_parts(sc.trainable_parts), lr=float(sc.lr), global_batch=int(sc.global_batch),
        grad_accum_steps=int(sc.grad_accum_steps), warmup_ratio=float(sc.warmup_ratio), schedule=sc.schedule,
        weight_decay=float(sc.weight_decay), max_grad_norm=float(sc.max_grad_norm) or None, seed=int(config.seed),
    )


def _stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, "checkpoints", stage)


def _finished(stage_dir: str) -> dict | None:
    """The meta of a stage's last checkpoint if the stage ran to its end, else None."""
    if not os.path.isdir(stage_dir):
        return None
    ckpt = StageCheckpointer(stage_dir, save_every=1)
    try:
        meta = ckpt.read_meta()
    finally:
        ckpt.close()
    return meta if meta and meta.get("stage_done") else None


def _done_summary(workdir: str, stage: str, meta: dict) -> dict:
    records = read_metrics(workdir, stage)
    losses = [records[s]["loss"] for s in sorted(records)]
    return {"stage": stage, "start_step": meta["step"], "end_step": meta["step"], "skipped": True,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def evaluate(config, workdir: str, stage_dir: str, synth_dir: str | None, mesh) -> dict:
    """The eval stage: the benchmarks of `config.eval` on the checkpoint in `stage_dir`, sharded on
    `mesh`; outputs in WORKDIR/eval. Returns {benchmark: metrics}."""
    from vlm_spatial.evaluation.runner import evaluate_checkpoint

    data_root = os.path.expanduser(config.eval.data_root) or synth_dir
    return evaluate_checkpoint(stage_dir, split_parts(config.eval.benchmarks), data_root,
                               os.path.join(workdir, "eval"), batch_size=int(config.eval.batch_size),
                               limit=int(config.eval.limit) or None, mesh=mesh, rules=config.eval.rules)


def run_job(config, workdir: str) -> dict:
    """Run `config.run` in `workdir` (resuming where it left off); returns the summary dict
    `{'stages': [per-stage summary], 'eval': {benchmark: metrics} | None, 'workdir': ...}`.

    Raises `loop.NonFiniteLoss` (NaN/inf loss; last good checkpoint kept) and `loop.Preempted`
    (SIGTERM; checkpoint saved)."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    run = split_parts(config.run)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    say(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} in {jax.process_count()} process(es); "
        f"mesh {dict(mesh.shape)}")
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=1))
    synth = data_lib.ensure_synthetic(config, workdir, say) if config.data.kind == "synthetic" else None
    tok_dir = data_lib.tokenizer_dir(config, synth)
    if "eval" in run and config.data.kind != "synthetic":  # a missing benchmark file fails now, not after training
        from vlm_spatial.evaluation.runner import load_benchmarks

        load_benchmarks(split_parts(config.eval.benchmarks), os.path.expanduser(config.eval.data_root), limit=1)
    vlm_cfg, ckpt_cfg = resolve_model(config, tok_dir)
    model_fn = lambda: VLM(vlm_cfg, rngs=nnx.Rngs(int(config.seed)))  # noqa: E731
    summaries, params, last_dir = [], None, None
    for stage in TRAIN_STAGES:
        stage_dir = _stage_dir(workdir, stage)
        done = _finished(stage_dir)
        if stage not in run or done:
            if done:
                last_dir, params = stage_dir, None
                if stage in run:
                    say(f"{stage}: finished earlier (step {done['step']}), skipped")
                    summaries.append(_done_summary(workdir, stage, done))
            continue
        data_file, _ = data_lib.stage_files(config, stage, synth)
        spec = stage_spec(config, stage, data_lib.count_records(data_file))
        setup = build_stage(model_fn, mesh, spec)
        it = data_lib.stage_pipeline(config, stage, vlm_cfg, tok_dir, synth)
        ckpt = StageCheckpointer(stage_dir, save_every=config.checkpoint.save_every,
                                 max_to_keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
        try:
            latest = ckpt.latest_step()
            if latest is not None:
                say(f"{stage}: resuming at step {latest}/{spec.num_steps} from {stage_dir}")
                state, _ = ckpt.restore(latest, setup.abstract_state, setup.state_shardings, data_iter=it)
            else:
                if params is None and last_dir is not None:
                    say(f"{stage}: starting from {last_dir}")
                    params = model_init.load_initial_params(last_dir, vlm_cfg, vlm_cfg, setup.params_shardings, mesh)
                elif params is None and ckpt_cfg is not None:
                    say(f"{stage}: starting from {config.model.init_checkpoint}")
                    params = model_init.load_initial_params(os.path.expanduser(config.model.init_checkpoint),
                                                            ckpt_cfg, vlm_cfg, setup.params_shardings, mesh)
                elif params is None:
                    say(f"{stage}: starting from a random init (seed {config.seed})")
                state = setup.init_state(params)
                ckpt.write_model_files(vlm_cfg.to_dict(), tok_dir)
            params = None
            _describe(setup, spec, mesh)
            state, summary = train_stage(
                setup, state, it, ckpt, workdir=workdir, meta={"variant": config.variant},
                image_tokens=vlm_cfg.num_image_tokens, lm_layers=vlm_cfg.decoder.num_layers,
                lm_width=vlm_cfg.decoder.hidden_size, tensorboard=config.log.tensorboard,
                progress=config.log.progress,
            )
        finally:
            ckpt.close()
        summaries.append(summary)
        params, last_dir = state["params"], stage_dir
        del state
    results = None
    if "eval" in run:
        if last_dir is None:
            raise FileNotFoundError(f"eval: no finished training stage in {workdir}/checkpoints; "
                                    f"run pretrain/finetune first (--config.run)")
        del params
        say(f"eval: {', '.join(split_parts(config.eval.benchmarks))} on {last_dir}")
        results = evaluate(config, workdir, last_dir, synth, mesh)
    summary = {"workdir": workdir, "variant": config.variant, "stages": summaries, "eval": results,
               "time": time.time()}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)
    return summary


def _describe(setup, spec: StageSpec, mesh) -> None:
    counts = setup.param_counts
    parts = {"vision": "vision", "projector": "projector", "lm": "decoder"}
    trainable = sum(counts.get(parts[p], 0) for p in spec.trainable_parts)
    micro = spec.global_batch // (spec.grad_accum_steps * parallel.batch_divisor(mesh))
    say(f"{spec.name}: {spec.num_steps} steps of {spec.global_batch} rows ({micro}/device x "
        f"{spec.grad_accum_steps} accumulation); trains {', '.join(spec.trainable_parts)} "
        f"({trainable:,} of {sum(counts.values()):,} params); lr {spec.lr:g} {spec.schedule}, "
        f"warmup {spec.warmup_ratio:g}")
