"""The thin training loop around the pure step: sharded set-up, progress bar, metrics, checkpoints,
NaN stop and SIGTERM (preemption) save.

The NaN stop checks the loss and the updated weights and optimizer state (in the jitted step), so a
state that is saved is always finite. Preemption: in one process a SIGTERM handler sets a flag; in a
multi-process job JAX's preemption service (started by `jax.distributed.initialize`) spreads one
host's SIGTERM to all, and `CheckpointManager.reached_preemption(step)` is true on every host at the
same step, where all save that step and exit.

    setup = build_stage(model_fn, mesh, StageSpec(...))
    state = setup.init_state()                       # sharded, never whole on one device
    state, summary = train_stage(setup, state, data_iter, ckpt, workdir=...)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from vlm_spatial import parallel
from vlm_spatial.data.pipeline import DataWaitInterrupted
from vlm_spatial.training import mfu as mfu_lib
from vlm_spatial.training.checkpoint import StageCheckpointer, all_finite
from vlm_spatial.training.optimizer import check_parts, lr_schedule, make_optimizer, split_params
from vlm_spatial.training.step import (
    MODEL_INPUTS,
    init_train_state,
    jit_train_step,
    make_train_step,
    state_shardings,
)


class NonFiniteLoss(RuntimeError):
    """The loss, or the weights after an update, became NaN/inf; nothing non-finite was saved and
    the last good checkpoint is kept on disk."""


class Preempted(SystemExit):
    """SIGTERM arrived; a final checkpoint was written. Exit code 143 (128 + SIGTERM)."""

    def __init__(self, msg: str):
        super().__init__(143)
        self.msg = msg


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One training stage: which parts train, optimizer, schedule, batch and step counts."""

    name: str
    num_steps: int
    trainable_parts: tuple[str, ...]
    lr: float
    global_batch: int
    grad_accum_steps: int = 1
    warmup_ratio: float = 0.03
    schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 0


@dataclasses.dataclass
class StageSetup:
    """Everything compiled for a stage: model graph, optimizer, shardings, jitted step."""

    spec: StageSpec
    mesh: Mesh
    graphdef: Any
    abstract_params: nnx.State
    rest: nnx.State
    tx: Any
    schedule: Callable
    params_shardings: dict
    abstract_state: dict
    state_shardings: dict
    model_fn: Callable[[], nnx.Module]
    param_counts: dict
    _step_fns: dict = dataclasses.field(default_factory=dict)

    def init_state(self, params: dict | None = None) -> dict:
        """Training state created directly sharded: fresh random params (`params=None`) or the
        given pure params dict (e.g. the previous stage's; donated), with a fresh optimizer state."""
        spec = self.spec
        if params is None:
            def init():
                p = nnx.to_pure_dict(nnx.state(self.model_fn(), nnx.Param))
                return init_train_state(p, self.tx, spec.trainable_parts, spec.seed)

            return jax.jit(init, out_shardings=self.state_shardings)()
        init = lambda p: init_train_state(p, self.tx, spec.trainable_parts, spec.seed)  # noqa: E731
        return jax.jit(init, in_shardings=(self.params_shardings,), out_shardings=self.state_shardings,
                       donate_argnums=0)(params)

    def step_fn(self, batch: dict):
        """The jitted, sharded train step for batches with `batch`'s keys and ranks."""
        key = tuple(sorted((k, np.ndim(v)) for k, v in batch.items()))
        if key not in self._step_fns:
            fn = _with_weights_check(make_train_step(
                self.graphdef, self.abstract_params, self.rest, self.tx, self.schedule,
                self.spec.trainable_parts, self.spec.grad_accum_steps,
            ), self.spec.trainable_parts)
            self._step_fns[key] = jit_train_step(fn, self.state_shardings, parallel.batch_shardings(batch, self.mesh))
        return self._step_fns[key]


def _with_weights_check(train_step, trainable_parts):
    """`train_step` whose metrics also hold 'weights_finite' (bool []): every floating value of the
    updated trainable params and optimizer state is finite, i.e. the new state may be saved."""

    def step(state, batch):
        new_state, metrics = train_step(state, batch)
        trainable, _ = split_params(new_state["params"], trainable_parts)
        return new_state, dict(metrics, weights_finite=all_finite((trainable, new_state["opt_state"])))

    return step


def build_stage(model_fn: Callable[[], nnx.Module], mesh: Mesh, spec: StageSpec) -> StageSetup:
    """Abstract model (no weights), shardings from the logical rules, optimizer over the
    trainable parts only. Nothing is materialised here."""
    check_parts(spec.trainable_parts)
    abstract_model = nnx.eval_shape(model_fn)
    graphdef, abstract_params, rest = nnx.split(abstract_model, nnx.Param, ...)
    if jax.tree.leaves(rest):  # non-parameter variables (e.g. RNG streams): small, make them real
        rest = jax.jit(lambda: nnx.split(model_fn(), nnx.Param, ...)[2])()
    schedule = lr_schedule(spec.lr, spec.num_steps, spec.warmup_ratio, spec.schedule)
    tx = make_optimizer(schedule, weight_decay=spec.weight_decay, max_grad_norm=spec.max_grad_norm)
    params_sh = parallel.param_shardings(abstract_params, mesh)
    abstract_pure = nnx.to_pure_dict(abstract_params)
    abstract_state = jax.eval_shape(lambda p: init_train_state(p, tx, spec.trainable_parts, spec.seed), abstract_pure)
    state_sh = state_shardings(abstract_state, params_sh, tx, spec.trainable_parts, mesh)
    counts = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in abstract_pure.items()}
    return StageSetup(
        spec, mesh, graphdef, abstract_params, rest, tx, schedule, params_sh, abstract_state, state_sh,
        model_fn, counts,
    )


class MetricsWriter:
    """Per-step metrics to `metrics.jsonl` and TensorBoard event files (process 0 only)."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step",) and v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"{record['stage']}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def read_metrics(workdir: str, stage: str | None = None) -> dict[int, dict]:
    """`{step: record}` from `metrics.jsonl` (the last record wins when a resumed run re-ran a step)."""
    out: dict[int, dict] = {}
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if stage is None or r.get("stage") == stage:
                out[r["step"]] = r
    return out


class _Preemption:
    """When to save and stop for a preemption notice (SIGTERM). One process: a SIGTERM handler that
    only sets a flag. Several processes: Orbax's preemption sync point (JAX's coordination service
    spreads the notice and picks one step for every host; its own handler catches SIGTERM, so none
    is installed here), as MaxText's train loop does."""

    def __init__(self, ckpt: StageCheckpointer | None):
        self.hit = False
        self._old = None
        self._ckpt = ckpt
        self.multihost = jax.process_count() > 1

    def __enter__(self):
        if self.multihost:
            return self
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler
            self._old = None
        return self

    def reached(self, step: int) -> bool:
        """Whether to save `step` and stop (call once after every step, on every process)."""
        if self.multihost:
            if self._ckpt is not None:
                self.hit = self._ckpt.manager.reached_preemption(step)
            else:
                from jax.experimental import multihost_utils

                self.hit = multihost_utils.reached_preemption_sync_point(step)
        return self.hit

    def _handle(self, signum, frame):
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _nonfinite_message(spec: StageSpec, step: int, m: dict, ckpt: StageCheckpointer | None) -> str:
    """The NaN stop's message: the step, what was non-finite, the last good checkpoint, and a rerun
    that does not fail the same way (a lower lr, accepted as a config change when resuming)."""
    last = ckpt.latest_step() if ckpt is not None else None
    if math.isfinite(m["loss"]):
        what = (f"the update of step {step} made the weights or optimizer state NaN/inf (loss {m['loss']:.4g}, "
                f"grad norm {m['grad_norm']:.4g}, lr {m['lr']:.4g}); stopping without saving them")
    else:
        what = f"loss is {m['loss']} at step {step}; stopping"
    flag = f"--config.stages.{spec.name}.lr={spec.lr / 10:g}"
    if last is None:
        advice = (f"No checkpoint of this stage was written, so a rerun starts the stage over: rerun with a "
                  f"lower lr, e.g. {flag} (or check the data).")
    else:
        advice = (f"The same command would resume from step {last} and fail the same way: rerun with a lower "
                  f"lr, e.g. {flag} --accept_config_changes (or check the data).")
    return (f"stage {spec.name}: {what}. Last good checkpoint: step {last} in "
            f"{ckpt.directory if ckpt else '(none)'}. {advice}")


def _model_batch(batch: dict) -> dict:
    return {k: np.asarray(v) for k, v in batch.items() if k in MODEL_INPUTS or k == "labels"}


def train_stage(
    setup: StageSetup,
    state: dict,
    data_iter: Iterator[dict],
    ckpt: StageCheckpointer | None,
    *,
    workdir: str,
    meta: dict | None = None,
    max_steps: int | None = None,
    image_tokens: int = 0,
    lm_layers: int = 0,
    lm_width: int = 0,
    peak_flops: float | None = None,
    tensorboard: bool = True,
    progress: bool = True,
) -> tuple[dict, dict]:
    """Run optimizer steps from `state['step']` to the stage's `num_steps` (or stop after
    `max_steps` steps in this call, for tests). Saves every `ckpt` interval and at stage end.

    `data_iter` yields global numpy batches (batch contract). Returns `(state, summary)`, summary
    with first/last loss, steps run, wall time and mean tokens/s. Raises `NonFiniteLoss` on a
    NaN/inf loss or updated weights (no save of the bad state), `Preempted` after a final save on
    SIGTERM (every host the same step), `checkpoint.CheckpointSaveError` when a save fails.
    """
    from tqdm.auto import tqdm

    spec = setup.spec
    meta = dict(meta or {}, stage=spec.name, num_steps=spec.num_steps)
    start = int(jax.device_get(state["step"]))
    end = spec.num_steps if max_steps is None else min(spec.num_steps, start + max_steps)
    writer = MetricsWriter(workdir, tensorboard)
    n_dev = setup.mesh.size
    peak = peak_flops if peak_flops is not None else mfu_lib.peak_flops_per_device()
    pc = setup.param_counts
    losses: list[float] = []
    tok_rates: list[float] = []
    bar = tqdm(total=spec.num_steps, initial=start, desc=spec.name, disable=not progress or jax.process_index() != 0,
               dynamic_ncols=True, file=sys.stdout)
    t_begin = time.time()
    step = start
    try:
        with _Preemption(ckpt) as preemption:
            if hasattr(data_iter, "set_stop_check") and not preemption.multihost:
                data_iter.set_stop_check(lambda: preemption.hit)  # SIGTERM honoured while waiting for data
            t_last = time.time()
            while step < end:
                try:
                    batch = _model_batch(next(data_iter))
                except DataWaitInterrupted:  # the iterator is back at the batch boundary of `step`
                    if ckpt is not None and step > start:
                        ckpt.wait()
                        if ckpt.latest_step() != step:
                            ckpt.save(step, state, data_iter=data_iter, meta=dict(meta, stage_done=False), force=True)
                        ckpt.wait()
                    raise Preempted(f"stage {spec.name}: SIGTERM at step {step} while waiting for data; "
                                    f"checkpoint saved, exiting") from None
                if batch["input_ids"].shape[0] != spec.global_batch // jax.process_count():
                    raise ValueError(
                        f"stage {spec.name}: data batch has {batch['input_ids'].shape[0]} rows, expected "
                        f"global_batch={spec.global_batch}"
                    )
                fn = setup.step_fn(batch)
                state, metrics = fn(state, parallel.shard_batch(batch, setup.mesh))
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                weights_finite = m.pop("weights_finite") == 1.0
                step += 1
                now = time.time()
                dt, t_last = now - t_last, now
                flops = mfu_lib.train_flops_per_step(
                    n_vision=pc.get("vision", 0), n_projector=pc.get("projector", 0), n_decoder=pc.get("decoder", 0),
                    trainable_parts=spec.trainable_parts, batch=spec.global_batch,
                    seq_len=batch["input_ids"].shape[1], image_tokens=image_tokens,
                    lm_layers=lm_layers, lm_width=lm_width,
                )
                tps = m["tokens"] / dt if dt > 0 else float("nan")
                mfu = flops / dt / (peak * n_dev) if peak and dt > 0 else None
                if step > start + 1:  # the first step includes compilation
                    tok_rates.append(tps)
                losses.append(m["loss"])
                bad = getattr(data_iter, "bad_records", None)  # skipped records per reason, so far
                record = {"stage": spec.name, "step": step, **m, "tokens_per_s": tps, "mfu": mfu,
                          "step_time_s": dt, "time": now, **(bad.as_metrics() if bad is not None else {})}
                writer.write(record)
                if not math.isfinite(m["loss"]) or not weights_finite:
                    if ckpt is not None:
                        ckpt.wait()
                    raise NonFiniteLoss(_nonfinite_message(spec, step, m, ckpt))
                post = {"loss": f"{m['loss']:.4f}", "lr": f"{m['lr']:.2e}", "tok/s": f"{tps:,.0f}"}
                post["mfu"] = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
                bar.set_postfix(post, refresh=False)
                bar.update(1)
                stage_done = step >= spec.num_steps
                preempted = preemption.reached(step)
                if ckpt is not None:
                    ckpt.save(step, state, data_iter=data_iter, meta=dict(meta, stage_done=stage_done),
                              force=stage_done or preempted)
                if preempted:
                    if ckpt is not None:
                        ckpt.wait()
                    raise Preempted(f"stage {spec.name}: SIGTERM at step {step}; checkpoint saved"
                                    f"{' (every process)' if preemption.multihost else ''}, exiting")
    finally:
        bar.close()
        writer.close()
        if ckpt is not None:
            ckpt.wait()
    summary = {
        "stage": spec.name,
        "start_step": start,
        "end_step": step,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "wall_s": time.time() - t_begin,
        "tokens_per_s": float(np.mean(tok_rates)) if tok_rates else None,
    }
    return state, summary

