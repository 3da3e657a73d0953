"""Hugging Face <-> `VisionEncoder` for CLIP, SigLIP, SigLIP2 and AIMv2 vision towers.

HF tensor names here carry no `vision_model.` / `vision_tower.` prefix. The name map is one table
per family (`_table`); each row is `(our pure-dict path, HF name, layout)`:

  layout  ours <- HF
  linear  kernel `[in, out]` <- weight `[out, in]` (transpose)
  copy    same array
  conv    kernel `[p*p*C, D]` (py, px, C order) <- Conv2d weight `[D, C, p, p]`
  q/k/v   row block 0/1/2 of SigLIP's fused `in_proj_weight [3D, D]` (`in_proj_bias [3D]`)

Rows whose HF name contains `{i}` are per layer; ours are stacked on axis 0 ('layers').
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from vlm_spatial.convert import hf_io, namemap
from vlm_spatial.models.vision import VisionConfig, VisionEncoder

SUPPORTED_MODEL_TYPES = (
    "clip", "clip_vision_model", "siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model",
    "aimv2", "aimv2_vision_model",
)

# Hugging Face config defaults (transformers 5.x), used for keys a config.json leaves out.
_HF_DEFAULTS = {
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6, vision_use_head=True),
    "siglip2": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    num_channels=3, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                    vision_use_head=True, num_patches=256),
    "aimv2": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=8,
                  num_channels=3, image_size=224, patch_size=14, hidden_act="silu", rms_norm_eps=1e-5,
                  qkv_bias=False, mlp_bias=False, use_head=True, is_native=False),
}


def config_from_hf(hf_config: dict, **overrides) -> VisionConfig:
    """`VisionConfig` from a Hugging Face config dict (vision or full CLIP/SigLIP/SigLIP2/AIMv2).

    `overrides` are VisionConfig fields set on top (dtype, rope2d, ...). Raises ValueError for an
    unsupported `model_type`.
    """
    mt = hf_config.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported vision model_type {mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    family = mt.removesuffix("_vision_model")
    if family == mt:  # a full two-tower config
        hf_config = hf_config.get("vision_config") or {}
    c = {**_HF_DEFAULTS[family], **hf_config}
    common = dict(
        family=family, hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        patch_size=_int(c["patch_size"]), num_channels=c["num_channels"], act=c["hidden_act"],
    )
    if family == "clip":
        cfg = dict(common, image_size=_int(c["image_size"]), norm="layernorm", norm_eps=c["layer_norm_eps"],
                   patch_bias=False, cls_token=True, pre_norm=True, post_norm="pooled", head="cls")
    elif family in ("siglip", "siglip2"):
        cfg = dict(common, norm="layernorm", norm_eps=c["layer_norm_eps"],
                   head="map" if c["vision_use_head"] else "none")
        if family == "siglip":
            cfg["image_size"] = _int(c["image_size"])
        else:
            grid = int(round(c["num_patches"] ** 0.5))
            if grid * grid != c["num_patches"]:
                raise ValueError(f"siglip2 num_patches={c['num_patches']} is not a square grid")
            cfg.update(naflex=True, pos_grid=grid, max_num_patches=c["num_patches"],
                       image_size=grid * common["patch_size"])
    else:
        cfg = dict(common, image_size=_int(c["image_size"]), norm="rmsnorm", norm_eps=c["rms_norm_eps"],
                   mlp="swiglu", qkv_bias=c["qkv_bias"], mlp_bias=c["mlp_bias"], patch_norm=True,
                   head="aimv2" if c["use_head"] else "none",
                   pos_emb="sincos" if c["is_native"] else "learned")
    cfg.update(overrides)
    return VisionConfig(**cfg)


def config_to_hf(cfg: VisionConfig) -> dict:
    """Hugging Face vision config dict (`model_type` '<family>_vision_model') for `cfg`.

    What transformers cannot express (2D-RoPE, a NaFlex patch budget other than the position
    grid, non-default switches) is left out; `hf_llava.config_to_hf` finds and keeps it.
    """
    d = dict(
        model_type=f"{cfg.family}_vision_model", hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_channels=cfg.num_channels, patch_size=cfg.patch_size,
        hidden_act=cfg.act,
    )
    if cfg.family == "aimv2":
        return dict(d, image_size=cfg.image_size, rms_norm_eps=cfg.norm_eps, qkv_bias=cfg.qkv_bias,
                    mlp_bias=cfg.mlp_bias, use_head=cfg.head == "aimv2", is_native=cfg.pos_emb == "sincos")
    d["layer_norm_eps"] = cfg.norm_eps
    if cfg.family == "clip":
        return dict(d, image_size=cfg.image_size)
    d["vision_use_head"] = cfg.head == "map"
    if cfg.family == "siglip2":
        return dict(d, num_patches=cfg.pos_grid_size**2)
    return dict(d, image_size=cfg.image_size)


def _int(v) -> int:
    """HF allows `image_size`/`patch_size` as an int or a square pair."""
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise ValueError(f"only square sizes are supported, got {v}")
        return int(v[0])
    return int(v)


def _norm_rows(ours: str, hf: str, cfg: VisionConfig) -> list[tuple[str, str, str]]:
    rows = [(f"{ours}/scale", f"{hf}.weight", "copy")]
    if cfg.norm == "layernorm":
        rows.append((f"{ours}/bias", f"{hf}.bias", "copy"))
    return rows


def _linear_rows(ours: str, hf: str, bias: bool, layout: str = "linear", hf_bias: str | None = None):
    rows = [(f"{ours}/kernel", f"{hf}.weight" if hf_bias is None else hf, layout)]
    if bias:
        rows.append((f"{ours}/bias", f"{hf}.bias" if hf_bias is None else hf_bias, layout if layout in _FUSED else "copy"))
    return rows


def _table(cfg: VisionConfig) -> list[tuple[str, str, str]]:
    """The name map `(our path 'a/b/c', HF name, layout)` for `cfg` (see the module docstring)."""
    aim = cfg.family == "aimv2"
    emb = "embeddings.patch_embed" if aim else "embeddings.patch_embedding"
    rows = _linear_rows("patch_embedding", emb, cfg.patch_bias, "linear" if cfg.naflex else "conv")
    if cfg.cls_token:
        rows.append(("class_embedding", "embeddings.class_embedding", "copy"))
    if cfg.pos_emb == "learned" and cfg.uses_abs_pos_emb:
        rows.append(("position_embedding", "embeddings.position_embedding.weight", "copy"))
    if cfg.patch_norm:
        rows += _norm_rows("patch_norm", "embeddings.rms_norm", cfg)
    if cfg.pre_norm:
        rows += _norm_rows("pre_norm", "pre_layrnorm", cfg)
    lay = "encoder.layers.{i}"
    attn = f"{lay}.attention" if aim else f"{lay}.self_attn"
    n1, n2 = (f"{lay}.rms_norm1", f"{lay}.rms_norm2") if aim else (f"{lay}.layer_norm1", f"{lay}.layer_norm2")
    rows += _norm_rows("layers/norm1", n1, cfg) + _norm_rows("layers/norm2", n2, cfg)
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rows += _linear_rows(f"layers/attn/{p}", f"{attn}.{p}", cfg.qkv_bias)
    mlp = f"{lay}.ffn" if aim else f"{lay}.mlp"
    for p in ("gate_proj", "up_proj", "down_proj") if cfg.mlp == "swiglu" else ("fc1", "fc2"):
        rows += _linear_rows(f"layers/mlp/{p}", f"{mlp}.{p}", cfg.mlp_bias)
    if cfg.post_norm != "none":
        rows += _norm_rows("post_norm", "rms_norm" if aim else "post_layernorm", cfg)
    if cfg.head == "map":
        rows.append(("head/probe", "head.probe", "copy"))
        for p in ("q", "k", "v"):
            rows += _linear_rows(f"head/{p}_proj", "head.attention.in_proj_weight", True, p,
                                 hf_bias="head.attention.in_proj_bias")
        rows += _linear_rows("head/out_proj", "head.attention.out_proj", True)
        rows += _norm_rows("head/layernorm", "head.layernorm", cfg)
        for p in ("fc1", "fc2"):
            rows += _linear_rows(f"head/mlp/{p}", f"head.mlp.{p}", cfg.mlp_bias)
    elif cfg.head == "aimv2":
        rows.append(("head/cls_token", "head.cls_token", "copy"))
        rows += _linear_rows("head/k_proj", "head.k_proj", cfg.qkv_bias)
        rows += _linear_rows("head/v_proj", "head.v_proj", cfg.qkv_bias)
        rows += _linear_rows("head/output_proj", "head.output_proj", True)
    return rows


_FUSED = {"q": 0, "k": 1, "v": 2}


@functools.lru_cache(maxsize=64)
def _ours_shapes(cfg: VisionConfig) -> dict[str, tuple[int, ...]]:
    """Flat 'a/b/c' -> shape of `VisionEncoder(cfg)`'s params, without allocating them."""
    from flax import nnx

    from vlm_spatial.convert.params import abstract_module

    abstract = abstract_module(lambda: VisionEncoder(cfg, rngs=nnx.Rngs(0)))
    flat = {}

    def walk(d, prefix):
        for k, v in d.items():
            path = f"{prefix}/{k}" if prefix else str(k)
            if isinstance(v, dict):
                walk(v, path)
            else:
                flat[path] = tuple(v.shape)

    walk(nnx.to_pure_dict(nnx.state(abstract)), "")
    return flat


def _hf_shape(shape: tuple[int, ...], layout: str, cfg: VisionConfig) -> tuple[int, ...]:
    if layout == "linear":
        return shape[::-1]
    if layout == "conv":
        return (shape[1], cfg.num_channels, cfg.patch_size, cfg.patch_size)
    if layout in _FUSED:
        return (3 * shape[1], shape[0]) if len(shape) == 2 else (3 * shape[0],)
    return shape


def _from_hf(a: np.ndarray, layout: str, cfg: VisionConfig) -> np.ndarray:
    if layout == "linear":
        return a.T
    if layout == "conv":  # [D, C, p, p] -> [py, px, C, D] -> [p*p*C, D]
        return a.transpose(2, 3, 1, 0).reshape(-1, a.shape[0])
    if layout in _FUSED:
        blk = a.shape[0] // 3
        part = a[_FUSED[layout] * blk:(_FUSED[layout] + 1) * blk]
        return part.T if a.ndim == 2 else part
    return a


def _to_hf(a: np.ndarray, layout: str, cfg: VisionConfig) -> np.ndarray:
    if layout == "linear":
        return a.T
    if layout == "conv":
        p, c = cfg.patch_size, cfg.num_channels
        return a.reshape(p, p, c, a.shape[-1]).transpose(3, 2, 0, 1)
    if layout in _FUSED:
        return a.T if a.ndim == 2 else a
    return a


def hf_entries(cfg: VisionConfig) -> list[namemap.Entry]:
    """The name map of `VisionEncoder(cfg)` as `namemap.Entry`s (HF names without prefix)."""
    ours = _ours_shapes(cfg)
    out = []
    for path, hf, layout in _table(cfg):
        shape, p = ours[path], tuple(path.split("/"))
        fns = dict(to_ours=functools.partial(_from_hf, layout=layout, cfg=cfg),
                   to_hf=functools.partial(_to_hf, layout=layout, cfg=cfg))
        if "{i}" in hf:
            out += [namemap.Entry(hf.format(i=i), p, i, _hf_shape(shape[1:], layout, cfg), **fns)
                    for i in range(cfg.num_layers)]
        else:
            out.append(namemap.Entry(hf, p, None, _hf_shape(shape, layout, cfg), **fns))
    return out


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


VISION_PREFIXES = ("", "vision_model.", "vision_tower.vision_model.", "vision_tower.", "model.vision_tower.")


def vision_prefix(tensors: hf_io.HFCheckpoint, cfg: VisionConfig) -> str:
    """Which of `VISION_PREFIXES` the vision tensors of `tensors` carry (WeightsError if none)."""
    probe = "embeddings.patch_embed.weight" if cfg.family == "aimv2" else "embeddings.patch_embedding.weight"
    prefix = hf_io.find_prefix(tensors, probe, VISION_PREFIXES)
    if prefix is None:
        raise hf_io.WeightsError(f"no vision tensor {probe!r} (under any of {VISION_PREFIXES}) in {tensors.path!r}")
    return prefix


def strip_prefix(prefix: str) -> Callable[[str], str | None]:
    """Rename for the loader: a name under `prefix` without it; any other name is not ours (None),
    e.g. the text tower and projections of a two-tower CLIPModel directory."""
    return lambda name: name[len(prefix):] if name.startswith(prefix) else None


def load_hf_vision(path: str, *, mesh=None, **overrides) -> tuple[VisionConfig, VisionEncoder]:
    """Load a vision tower saved by `CLIPVisionModel/SiglipVisionModel/Siglip2VisionModel/
    Aimv2VisionModel.save_pretrained` (or a full CLIPModel/SiglipModel/... directory) into a
    `VisionEncoder`, streamed tensor by tensor (sharded on `mesh` if given). `overrides` are
    VisionConfig fields (dtype, param_dtype, rope2d, ...)."""
    from flax import nnx

    from vlm_spatial.convert import loader

    cfg = config_from_hf(hf_io.read_config(path), **overrides)
    tensors = hf_io.HFCheckpoint(path)
    model = loader.load_module(
        lambda: VisionEncoder(cfg, rngs=nnx.Rngs(0)), tensors, hf_entries(cfg),
        rename=strip_prefix(vision_prefix(tensors, cfg)), mesh=mesh,
    )
    return cfg, model
