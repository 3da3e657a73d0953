"""Hugging Face <-> `VisionEncoder` for the vision towers of every registered encoder family.

HF tensor names here carry no `vision_model.` / `vision_tower.` prefix. What a family's HF
checkpoints look like (config keys and defaults, the name table) is in its module under
`vlm_spatial.models.families`; this module applies it: configs both ways, name tables turned into
`namemap.Entry`s (layouts in `namemap`), streaming loads.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from vlm_spatial.convert import hf_io, namemap
from vlm_spatial.models import families
from vlm_spatial.models.vision import VisionConfig, VisionEncoder


def config_from_hf(hf_config: dict, **overrides) -> VisionConfig:
    """`VisionConfig` from a Hugging Face config dict: a vision tower's, or a two-tower model's
    (CLIPModel, SiglipModel, ...: it has a `vision_config`, the tower's). The family is the one
    registered for its `model_type`; `overrides` are VisionConfig fields set on top (dtype,
    rope2d, ...). Raises ValueError for an unsupported `model_type` or setting."""
    family = families.for_model_type(hf_config.get("model_type"))
    tower = hf_config.get("vision_config") or hf_config
    fields = family.config_from_hf({**family.defaults(tower.get("model_type", hf_config["model_type"])), **tower})
    return VisionConfig(**{**fields, "family": family.name, **overrides})


def config_to_hf(cfg: VisionConfig) -> dict:
    """Hugging Face vision config dict for `cfg` (its family's tower `model_type`).

    What transformers cannot express (2D-RoPE, a NaFlex patch budget other than the position
    grid, non-default switches) is left out; `hf_llava.config_to_hf` finds and keeps it.
    """
    return families.get(cfg.family).config_to_hf(cfg)


@functools.lru_cache(maxsize=64)
def _ours_shapes(cfg: VisionConfig) -> dict[str, tuple[int, ...]]:
    """Flat 'a/b/c' -> shape of `VisionEncoder(cfg)`'s params, without allocating them."""
    from flax import nnx

    from vlm_spatial.convert.params import param_shapes

    return param_shapes(lambda: VisionEncoder(cfg, rngs=nnx.Rngs(0)))


# A learned rotary layout's frequencies ('mixed') have no transformers counterpart: they are written
# under this name (transformers reports it unused and runs the tower without it) and read back.
ROPE_FREQS = ("layers/attn/rope_freqs", "vlm_spatial.layers.{i}.rope_freqs", "copy")


def hf_entries(cfg: VisionConfig) -> list[namemap.Entry]:
    """The name map of `VisionEncoder(cfg)` as `namemap.Entry`s (HF names without prefix), from
    its family's name table (and `ROPE_FREQS` when it has them)."""
    shapes = _ours_shapes(cfg)
    rows = families.get(cfg.family).name_table(cfg) + ([ROPE_FREQS] if ROPE_FREQS[0] in shapes else [])
    return namemap.table_entries(rows, shapes, cfg.num_layers, (cfg.patch_size, cfg.num_channels))


def extra_tensors(cfg: VisionConfig) -> list[str]:
    """HF names (no prefix) of the tensors of `VisionEncoder(cfg)` that the transformers tower has
    no place for (`ROPE_FREQS`, one per layer): transformers reports them unused."""
    return [e.hf for e in hf_entries(cfg) if "/".join(e.path) == ROPE_FREQS[0]]


def expected_hf_shapes(cfg: VisionConfig) -> dict[str, tuple[int, ...]]:
    """HF tensor name (no prefix) -> shape, for every tensor `params_from_hf` reads."""
    return namemap.expected_shapes(hf_entries(cfg))


def params_from_hf(get: Callable[[str], np.ndarray], cfg: VisionConfig) -> dict:
    """Nested pure dict of `VisionEncoder(cfg)` params from HF tensors `get(name)` (no prefix).

    Arrays keep the dtype `get` returns (numpy). A missing tensor raises whatever `get` raises;
    a mis-shaped one raises ValueError naming it with the expected and found shapes.
    """
    return namemap.read(hf_entries(cfg), get)


def params_to_hf(params: dict, cfg: VisionConfig) -> dict[str, np.ndarray]:
    """HF tensors (no prefix) from a nested pure dict of `VisionEncoder(cfg)` params; the exact
    inverse of `params_from_hf`."""
    return dict(namemap.write(hf_entries(cfg), params))


def padding_tensors(cfg: VisionConfig) -> dict[str, tuple[int, ...]]:
    """HF tensors (no prefix) the transformers tower of `cfg` has but `VisionEncoder(cfg)` does
    not hold, name -> shape: the learned position table of an encoder that dropped it for 2D-RoPE
    (the tower transformers builds from `config_to_hf(cfg)` has one) and the family's empty
    tensors. Loaders skip them; export writes them as zeros."""
    ours = expected_hf_shapes(cfg)
    plain = expected_hf_shapes(config_from_hf(config_to_hf(cfg)))
    return {**{k: v for k, v in plain.items() if k not in ours}, **families.get(cfg.family).empty_tensors(cfg)}


VISION_PREFIXES = ("", "vision_model.", "vision_tower.vision_model.", "vision_tower.", "model.vision_tower.")


def vision_prefix(tensors: hf_io.HFCheckpoint, cfg: VisionConfig) -> str:
    """Which of `VISION_PREFIXES` the vision tensors of `tensors` carry (WeightsError if none)."""
    probe = families.get(cfg.family).patch_tensor(cfg)
    prefix = hf_io.find_prefix(tensors, probe, VISION_PREFIXES)
    if prefix is None:
        raise hf_io.WeightsError(f"no vision tensor {probe!r} (under any of {VISION_PREFIXES}) in {tensors.path!r}")
    return prefix


def strip_prefix(prefix: str) -> Callable[[str], str | None]:
    """Rename for the loader: a name under `prefix` without it; any other name is not ours (None),
    e.g. the text tower and projections of a two-tower CLIPModel directory."""
    return lambda name: name[len(prefix):] if name.startswith(prefix) else None


def load_hf_vision(path: str, *, mesh=None, **overrides) -> tuple[VisionConfig, VisionEncoder]:
    """Load a vision tower saved by `save_pretrained` of a registered family's HF model
    (`CLIPVisionModel`, `SiglipVisionModel`, ..., or a full CLIPModel/SiglipModel/... directory)
    into a `VisionEncoder`, streamed tensor by tensor (sharded on `mesh` if given). `overrides` are
    VisionConfig fields (dtype, param_dtype, rope2d, ...)."""
    from flax import nnx

    from vlm_spatial.convert import loader

    cfg = config_from_hf(hf_io.read_config(path), **overrides)
    tensors = hf_io.HFCheckpoint(path)
    strip, skip = strip_prefix(vision_prefix(tensors, cfg)), set(padding_tensors(cfg))
    model = loader.load_module(
        lambda: VisionEncoder(cfg, rngs=nnx.Rngs(0)), tensors, hf_entries(cfg),
        rename=lambda name: None if strip(name) in skip else strip(name), mesh=mesh,
    )
    return cfg, model
