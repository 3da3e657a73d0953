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

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from vlm_spatial import parallel
from vlm_spatial.models.vlm import VLM, VLMConfig

CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"


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


def with_dtypes(cfg: VLMConfig, dtype: str | None = None, param_dtype: str | None = None) -> VLMConfig:
    """`cfg` with the compute `dtype` and/or the storage `param_dtype` of every part replaced
    (None keeps the config's own)."""
    changes = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype)) if v is not None}
    if not changes:
        return cfg
    return dataclasses.replace(
        cfg, vision=dataclasses.replace(cfg.vision, **changes), decoder=dataclasses.replace(cfg.decoder, **changes)
    )


def read_config(path: str) -> VLMConfig:
    """The `VLMConfig` of the checkpoint at `path`."""
    with open(os.path.join(stage_dir(path), CONFIG_FILE)) as f:
        return VLMConfig.from_dict(json.load(f))


def read_params(path: str, target: dict | None = None, shardings: dict | None = None) -> dict:
    """Params of the checkpoint at `path` (its newest step) as a pure nested dict. With `target`
    (nested dict of `jax.ShapeDtypeStruct`, whose dtypes they are cast to) they are restored array
    by array, placed with `shardings` if given; without, as saved."""
    stage = os.path.abspath(stage_dir(path))
    steps = [int(d) for d in os.listdir(stage) if d.isdigit()]
    if not steps:
        raise FileNotFoundError(f"no checkpoint steps under {stage}")
    if target is not None and shardings is not None:
        target = parallel.abstract_with_shardings(target, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.join(stage, str(max(steps)), "params"), target)


def read_tokenizer(path: str):
    """The tokenizer of a vlm_spatial checkpoint (`tokenizer/`) or of a Hugging Face directory
    (files at its root), or None when it has none. Local files only."""
    from transformers import AutoTokenizer

    for candidate in (os.path.join(path, TOKENIZER_DIR), path):
        if any(os.path.isfile(os.path.join(candidate, f)) for f in ("tokenizer_config.json", "tokenizer.json")):
            return AutoTokenizer.from_pretrained(candidate, local_files_only=True)
    return None


def write_model(path: str, cfg: VLMConfig, params: dict, tokenizer=None, step: int = 0) -> str:
    """Write a model checkpoint (layout above) with `params` (nested dict of arrays, checked to
    fit `VLM(cfg)`) at `step`, and `tokenizer` (a Hugging Face tokenizer) if given.

    Returns `path`. Refuses to overwrite an existing checkpoint.
    """
    from vlm_spatial.convert.params import abstract_module, check_params

    target = os.path.join(os.path.abspath(path), str(step), "params")
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; choose another --out or remove it")
    check_params(params, nnx.to_pure_dict(nnx.state(abstract_module(lambda: VLM(cfg, rngs=nnx.Rngs(0))))))
    os.makedirs(path, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, jax.tree.map(jax.numpy.asarray, params))
        ckptr.wait_until_finished()
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(path, TOKENIZER_DIR))
    return path
