"""The model checkpoint of this codebase, as `vlm_spatial.load` and training read it.

A model checkpoint is a stage directory in the layout of `training/checkpoint.py`:

  model_config.json   VLMConfig.to_dict()
  tokenizer/          Hugging Face tokenizer files (image token included)
  <step>/params/      Orbax (StandardCheckpointer) pure nested dict of parameters

Training writes one per stage under `WORKDIR/checkpoints/<stage>/` (with optimizer and data state
beside `params/`); `python -m vlm_spatial.convert` writes one with step 0. A training workdir is
accepted too: its most recently written stage is used.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import orbax.checkpoint as ocp
from flax import nnx

from vlm_spatial.models.vlm import VLM, VLMConfig
from vlm_spatial.training.checkpoint import restore_params

CONFIG_FILE = "model_config.json"


def stage_dir(path: str) -> str:
    """The stage directory holding a model at `path` (itself, or the newest stage of a workdir)."""
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return path
    root = os.path.join(path, "checkpoints")
    stages = [os.path.join(root, s) for s in os.listdir(root)] if os.path.isdir(root) else []
    stages = [s for s in stages if os.path.isfile(os.path.join(s, CONFIG_FILE))]
    if not stages:
        raise FileNotFoundError(
            f"{path!r} is neither a Hugging Face model directory (config.json), a vlm_spatial "
            f"checkpoint ({CONFIG_FILE} + <step>/params) nor a training workdir with checkpoints/"
        )
    return max(stages, key=os.path.getmtime)


def read_config(path: str) -> VLMConfig:
    """The `VLMConfig` of the checkpoint at `path`."""
    with open(os.path.join(stage_dir(path), CONFIG_FILE)) as f:
        return VLMConfig.from_dict(json.load(f))


def read_model(path: str, shardings: dict | None = None) -> tuple[VLMConfig, dict]:
    """Config and nested params of the checkpoint at `path`; params land with `shardings` if given."""
    directory = stage_dir(path)
    cfg = read_config(directory)
    abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0))), nnx.Param))
    return cfg, restore_params(directory, abstract, shardings)


def write_model(path: str, cfg: VLMConfig, params: dict, tokenizer_dir: str | None, step: int = 0) -> str:
    """Write a model checkpoint (layout above) with `params` (nested dict of arrays) at `step`.

    Returns `path`. Refuses to overwrite an existing checkpoint.
    """
    target = os.path.join(os.path.abspath(path), str(step), "params")
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; choose another --out or remove it")
    os.makedirs(path, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, jax.tree.map(jax.numpy.asarray, params))
        ckptr.wait_until_finished()
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    if tokenizer_dir is not None:
        shutil.copytree(tokenizer_dir, os.path.join(path, "tokenizer"), dirs_exist_ok=True)
    return path
