"""Orbax checkpoints of one training stage, with the data-iterator state, resumable exactly.

Layout of a stage directory (e.g. `WORKDIR/checkpoints/finetune/`):

  model_config.json        VLMConfig.to_dict() - what `vlm_spatial.load` rebuilds the model from
  tokenizer/               copy of the tokenizer directory (when the run has one)
  <step>/                  one Orbax composite checkpoint per saved step, items:
    params/                pure nested dict of every model param (fp32), e.g. params/decoder/...
    opt_state/             optax state of the trainable parts only
    train/                 {'step': int32 [], 'rng': uint32 [2]}
    data/                  JSON: the data iterator's state (`iterator.get_state()`)
    meta/                  JSON: {'stage', 'step', 'num_steps', 'stage_done', 'model_config'}

Saves are asynchronous (Orbax) every `save_every` steps; `max_to_keep` newest are kept. Restoring
only `params` (for the next stage or for inference) is `vlm_spatial.checkpoint.read_params(stage_dir)`.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from vlm_spatial import parallel


def _iterator_state(it) -> Any:
    if it is None or not hasattr(it, "get_state"):
        return None
    state = it.get_state()
    if isinstance(state, bytes):
        return {"__bytes__": state.decode("utf-8")}
    return json.loads(json.dumps(state))  # snapshot now: the iterator moves on during async saves


def _set_iterator_state(it, state) -> None:
    if it is None or state is None:
        return
    if isinstance(state, dict) and "__bytes__" in state:
        state = state["__bytes__"].encode("utf-8")
    it.set_state(state)


class StageCheckpointer:
    """Orbax `CheckpointManager` for one stage's directory."""

    def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=max(int(save_every), 1),
                max_to_keep=max_to_keep,
                create=True,
                enable_async_checkpointing=async_save,
            ),
        )

    def latest_step(self) -> int | None:
        """Newest finished checkpoint step, or None."""
        return self.manager.latest_step()

    def write_model_files(self, model_config: dict | None, tokenizer_dir: str | None) -> None:
        """model_config.json and tokenizer/ beside the step directories (process 0 only)."""
        if jax.process_index() != 0:
            return
        os.makedirs(self.directory, exist_ok=True)
        if model_config is not None:
            with open(os.path.join(self.directory, "model_config.json"), "w") as f:
                json.dump(model_config, f, indent=2)
        if tokenizer_dir:
            dst = os.path.join(self.directory, "tokenizer")
            if not os.path.exists(dst):
                shutil.copytree(tokenizer_dir, dst)

    def save(self, step: int, state: dict, *, data_iter=None, meta: dict | None = None, force: bool = False) -> bool:
        """Save `state` (the training state pytree) at `step` if due (or `force`). Asynchronous."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            opt_state=ocp.args.StandardSave(state["opt_state"]),
            train=ocp.args.StandardSave({"step": state["step"], "rng": state["rng"]}),
            data=ocp.args.JsonSave({"state": _iterator_state(data_iter)}),
            meta=ocp.args.JsonSave(dict(meta or {}, step=int(step))),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state: dict, state_shardings: dict, *, data_iter=None) -> tuple[dict, dict]:
        """Restore the full training state onto `state_shardings` and the iterator's position.
        Returns `(state, meta)`."""
        target = parallel.abstract_with_shardings(abstract_state, state_shardings)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target["params"]),
                opt_state=ocp.args.StandardRestore(target["opt_state"]),
                train=ocp.args.StandardRestore({"step": target["step"], "rng": target["rng"]}),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        _set_iterator_state(data_iter, out["data"]["state"])
        state = {"params": out["params"], "opt_state": out["opt_state"], **out["train"]}
        return state, out["meta"]

    def read_meta(self, step: int | None = None) -> dict | None:
        """The JSON meta of `step` (default: latest), or None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
