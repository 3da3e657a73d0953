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

  skipped/<step>[.<n>]/      a step folder that did not restore on resume, moved aside (never deleted)

Saves are asynchronous (Orbax) every `save_every` steps; `max_to_keep` newest are kept. A save that
fails (disk full, permissions) raises `CheckpointSaveError` naming the path; the checkpoints already
written stay. Resuming (`restore_latest`) takes the newest step that restores completely (every item,
finite params, the data iterator's state), moving newer ones aside with a line naming the folder and
why. Restoring only `params` (for the next stage or for inference) is
`vlm_spatial.checkpoint.read_params(stage_dir)`.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from vlm_spatial import parallel

SKIPPED = "skipped"  # sub-folder of a stage directory holding the step folders that did not restore


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (disk full, permission denied, ...); the message names the path
    and the last good checkpoint, which stays on disk."""


class NoRestorableCheckpoint(RuntimeError):
    """A stage directory has step folders but none of them restores; the message names each and why."""


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
        self._failed = False  # a save failure was reported (close does not raise it again)
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

    def _last_good(self) -> str:
        try:
            self.manager.reload()
            last = self.manager.latest_step()
        except Exception:  # noqa: BLE001 - the directory itself may be what failed
            last = None
        return f"step {last} in {self.directory}" if last is not None else f"none in {self.directory}"

    def _save_failed(self, step: int | None, err: BaseException) -> CheckpointSaveError:
        self._failed = True
        where = os.path.join(self.directory, str(step)) if step is not None else self.directory
        reason = f"{type(err).__name__}: {err}".strip().splitlines()[0]
        return CheckpointSaveError(
            f"cannot write checkpoint {where}: {reason}. The last good checkpoint ({self._last_good()}) is "
            f"kept; free disk space or fix the folder's permissions, then rerun the same command to resume")

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
        try:
            return self.manager.save(step, args=args, force=force)
        except Exception as e:  # noqa: BLE001 - any failure to write (OSError, or one raised by a pending async save)
            raise self._save_failed(step, e) from e

    def restore(self, step: int, abstract_state: dict, state_shardings: dict, *, data_iter=None,
                opt_state: bool = True) -> tuple[dict, dict]:
        """Restore the full training state onto `state_shardings` and the iterator's position
        (`opt_state=False`: all but the optimizer state, which is then None - for a run that changed
        what the optimizer covers). Returns `(state, meta)`. Raises whatever Orbax or the iterator
        raises on a bad checkpoint, or ValueError naming the bad item (`restore_latest` skips it)."""
        target = parallel.abstract_with_shardings(abstract_state, state_shardings)
        items = dict(
            params=ocp.args.StandardRestore(target["params"]),
            train=ocp.args.StandardRestore({"step": target["step"], "rng": target["rng"]}),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore(),
        )
        if opt_state:
            items["opt_state"] = ocp.args.StandardRestore(target["opt_state"])
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        meta = out["meta"]
        if not isinstance(meta, dict) or meta.get("step") != step:
            raise ValueError(f"meta/ names step {meta.get('step') if isinstance(meta, dict) else None!r}")
        if data_iter is not None and hasattr(data_iter, "set_state") and out["data"]["state"] is None:
            raise ValueError("data/ holds no data-iterator state")
        if not bool(_all_finite(out["params"])):
            raise ValueError("params/ holds NaN/inf values")
        _set_iterator_state(data_iter, out["data"]["state"])
        state = {"params": out["params"], "opt_state": out["opt_state"] if opt_state else None, **out["train"]}
        return state, meta

    def restore_latest(self, abstract_state: dict, state_shardings: dict, *, data_iter=None, opt_state: bool = True,
                       log=print) -> tuple[dict, dict] | None:
        """`restore` of the newest step that restores completely, or None when there is no step.

        Newer steps that fail (garbage or missing items, an emptied folder, truncated arrays,
        non-finite params, an iterator state the pipeline refuses) are named with the reason by
        `log` and moved to `skipped/<step>` (so the run can save those steps again). Every process
        tries the same steps (a shared directory); process 0 moves. When no step restores nothing
        is moved and `NoRestorableCheckpoint` names every step folder and why."""
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                out = self.restore(step, abstract_state, state_shardings, data_iter=data_iter, opt_state=opt_state)
            except Exception as e:  # noqa: BLE001 - any failure means this step cannot be resumed from
                reason = f"{type(e).__name__}: {e}".strip().splitlines()[0][:300]
                failures.append((step, reason))
                continue
            for bad, reason in failures:
                log(f"checkpoint {os.path.join(self.directory, str(bad))} does not restore ({reason}); skipped: "
                    f"resuming from step {step}, the folder is moved to {self._move_aside(bad)}")
            return out
        if failures:
            listed = "; ".join(f"{os.path.join(self.directory, str(s))}: {r}" for s, r in failures)
            raise NoRestorableCheckpoint(
                f"no checkpoint in {self.directory} restores ({listed}). Move the step folders out of "
                f"{self.directory} to start this stage over, or put back a good copy")
        return None

    def _move_aside(self, step: int) -> str:
        """Move step folder `step` to `skipped/<step>` (`.1`, `.2`, ... when taken); returns the new path."""
        dst = os.path.join(self.directory, SKIPPED, str(step))
        n = 0
        while os.path.exists(dst if n == 0 else f"{dst}.{n}"):
            n += 1
        dst = dst if n == 0 else f"{dst}.{n}"
        from jax.experimental import multihost_utils

        if jax.process_count() > 1:  # every process is done reading it
            multihost_utils.sync_global_devices(f"checkpoint step {step} tried")
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(os.path.join(self.directory, str(step)), dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint step {step} moved aside")
        self.manager.reload()
        return dst

    def read_meta(self, step: int | None = None) -> dict | None:
        """The JSON meta of `step` (default: the newest step whose meta reads; a garbage one is
        passed over here and skipped with a message by `restore_latest`), or None when there is none."""
        if step is not None:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        for s in sorted(self.manager.all_steps(), reverse=True):
            try:
                meta = self.manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception:  # noqa: BLE001 - unreadable: not the newest good one
                continue
            if isinstance(meta, dict) and meta.get("step") == s:
                return meta
        return None

    def wait(self) -> None:
        """Block until pending async saves are on disk. Raises `CheckpointSaveError` when one failed
        (once)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - the failure of a background save
            if not self._failed:  # reported once: the first error is the one the run stops with
                raise self._save_failed(None, e) from e

    def close(self) -> None:
        """Wait for pending saves and release the manager. Raises `CheckpointSaveError` for a failed
        save not reported yet (one already raised by `save`/`wait` is not raised again, so the first
        error is the one the run stops with)."""
        try:
            self.manager.close()
        except Exception as e:  # noqa: BLE001 - the failure of a background save
            if not self._failed:
                raise self._save_failed(None, e) from e


def all_finite(tree) -> jax.Array:
    """bool []: every floating leaf of `tree` (arrays, traced or not) is free of NaN/inf. What the
    train loop checks on the updated weights before they may be saved, and a restore on its params."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


_all_finite = jax.jit(all_finite)
