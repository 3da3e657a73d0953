"""What an encoder family is: the `Family` interface, the registry it joins, and the small helpers
family modules build their Hugging Face name tables with.

A family module (`families/<name>.py`) subclasses `Family`, fills in what the family knows and
registers it with `@register`; its presets follow the class (so they validate against the
registry). Nothing outside `families/` tests a family's name: callers ask the registry
(`families.get(cfg.family)`) and use the answer.

Name tables are data: rows `(our pure-dict path 'a/b/c', HF tensor name, layout)`, HF names
without the tower prefix, `{i}` standing for the layer index (ours stacked on axis 0). Layouts
(interpreted by `vlm_spatial.convert.hf_vision`):

  linear     kernel `[in, out]` <- weight `[out, in]` (transpose)
  copy       same array
  conv       kernel `[p*p*C, D]` ((py, px, C) order) <- Conv2d weight `[D, C, p, p]`
  block:i/n  row block i of n of a fused HF tensor (SigLIP's `in_proj_weight`, DINOv2's SwiGLU)
  squeeze:k  ours <- HF with k leading singleton axes (`cls_token [1, 1, D]` -> `[D]`)
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from vlm_spatial.models.vision import VisionConfig

Row = tuple[str, str, str]
# The size of every family's tiny preset (tests, `configs/*.py:tiny` start from it)
TINY = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, patch_size=8, image_size=32)

_FAMILIES: dict[str, "Family"] = {}


class Family:
    """Everything one encoder family knows. Subclasses set the class attributes and override the
    methods that differ; `register` makes the one instance the registry hands out."""

    name: ClassVar[str]  # VisionConfig.family
    tower_model_type: ClassVar[str]  # HF model_type of the vision tower config, written on export
    model_types: ClassVar[tuple[str, ...]]  # HF model_types read (two-tower configs hold `vision_config`)
    hf_defaults: ClassVar[dict]  # HF config defaults (transformers 5) for keys a config.json leaves out
    image_mean: ClassVar[tuple[float, float, float]]
    image_std: ClassVar[tuple[float, float, float]]
    native_size: ClassVar[int]  # input side the family's public checkpoints are used at
    feature_select: ClassVar[str] = "full"  # LLaVA `vision_feature_select_strategy` it is used with
    accepts: ClassVar[tuple[str, ...]] = ()  # other families whose checkpoints a config of this one loads
    tiny: ClassVar[str]  # the tiny preset (`configs/*.py:tiny`) with this family's switches

    def defaults(self, model_type: str) -> dict:
        """The HF config defaults of a tower config of `model_type` (one of `model_types`)."""
        return self.hf_defaults

    def presets(self) -> dict[str, "VisionConfig"]:
        """Named architectures of the family (public checkpoints and tiny test models): the
        `PRESETS` dict of its module, built after the class is registered."""
        return sys.modules[type(self).__module__].PRESETS

    def tiny_preset(self, preset: "VisionConfig") -> str:
        """The tiny preset with the switches of `preset` (a preset of this family)."""
        return self.tiny

    def config_from_hf(self, c: dict) -> dict:
        """VisionConfig fields from the tower's HF config dict `c` (defaults already filled in).
        Raises ValueError naming a setting the encoder cannot reproduce."""
        raise NotImplementedError

    def config_to_hf(self, cfg: "VisionConfig") -> dict:
        """The HF tower config dict for `cfg` (what transformers cannot express is left out;
        `hf_llava` keeps it under `config.json['vlm_spatial']`)."""
        raise NotImplementedError

    def name_table(self, cfg: "VisionConfig") -> list[Row]:
        """The name map of `VisionEncoder(cfg)` (module docstring)."""
        raise NotImplementedError

    def empty_tensors(self, cfg: "VisionConfig") -> dict[str, tuple[int, ...]]:
        """HF tensors without elements that the family's towers save and no parameter holds
        (name -> shape): skipped on load, written on export."""
        return {}

    def patch_tensor(self, cfg: "VisionConfig") -> str:
        """HF name of the patch embedding weight: found under some prefix, it locates the tower."""
        return next(hf for path, hf, _ in self.name_table(cfg) if path == "patch_embedding/kernel")

    def image_processor(self, cfg: "VisionConfig"):
        """The transformers image processor that preprocesses as `vlm_spatial.data.preprocess`
        does for `cfg`: a plain bicubic resize to `image_size` and this family's mean/std (PIL
        backend, which needs no torchvision). Written by `to-hf`."""
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        side = {"height": cfg.image_size, "width": cfg.image_size}
        return CLIPImageProcessorPil(size=side, crop_size=side, do_center_crop=False,
                                     image_mean=self.image_mean, image_std=self.image_std)


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add the family `cls` (one instance) to the registry under `cls.name`."""
    if cls.name in _FAMILIES:
        raise ValueError(f"encoder family {cls.name!r} is registered twice")
    _FAMILIES[cls.name] = cls()
    return cls


def get(name: str) -> Family:
    """The registered family `name`; ValueError listing the registered names otherwise."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown encoder family {name!r}; registered: {', '.join(_FAMILIES)}") from None


def names() -> tuple[str, ...]:
    """Registered family names, in registration order."""
    return tuple(_FAMILIES)


def families() -> tuple[Family, ...]:
    """The registered families, in registration order."""
    return tuple(_FAMILIES.values())


def square(v) -> int:
    """HF allows `image_size`/`patch_size` as an int or a square pair; the side as an int."""
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise ValueError(f"only square sizes are supported, got {v}")
        return int(v[0])
    return int(v)


def norm_rows(ours: str, hf: str, cfg: "VisionConfig") -> list[Row]:
    """Rows of a norm: `scale` (+ `bias` for LayerNorm) <- `<hf>.weight` (+ `.bias`)."""
    rows = [(f"{ours}/scale", f"{hf}.weight", "copy")]
    if cfg.norm == "layernorm":
        rows.append((f"{ours}/bias", f"{hf}.bias", "copy"))
    return rows


def linear_rows(ours: str, hf: str, bias: bool, layout: str = "linear") -> list[Row]:
    """Rows of a Linear: `kernel` <- `<hf>.weight` in `layout` (+ `bias` <- `<hf>.bias`)."""
    rows = [(f"{ours}/kernel", f"{hf}.weight", layout)]
    if bias:
        rows.append((f"{ours}/bias", f"{hf}.bias", "copy"))
    return rows


def fused_rows(ours: list[str], weight: str, bias: str | None) -> list[Row]:
    """Rows of Linears `ours` stored as one HF tensor `weight` (and `bias`, if any): row block i
    of n for `ours[i]`."""
    n = len(ours)
    rows = []
    for i, path in enumerate(ours):
        rows.append((f"{path}/kernel", weight, f"block:{i}/{n}"))
        if bias is not None:
            rows.append((f"{path}/bias", bias, f"block:{i}/{n}"))
    return rows


def common_fields(c: dict) -> dict:
    """The VisionConfig fields every ViT config of transformers spells the same way."""
    return dict(
        hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"], patch_size=square(c["patch_size"]), num_channels=c["num_channels"],
        act=c["hidden_act"],
    )


def common_to_hf(cfg: "VisionConfig") -> dict:
    """The inverse of `common_fields`."""
    return dict(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_channels=cfg.num_channels, patch_size=cfg.patch_size,
        hidden_act=cfg.act,
    )


def attention_rows(cfg: "VisionConfig", q: str, k: str, v: str, out: str) -> list[Row]:
    """Rows of `layers/attn/{q,k,v,out}_proj` <- the HF projections named `q`, `k`, `v`, `out`
    (per-layer names with `{i}`), with the biases the config has."""
    rows = []
    for ours, hf in (("q", q), ("k", k), ("v", v), ("out", out)):
        rows += linear_rows(f"layers/attn/{ours}_proj", hf, cfg.qkv_bias and (ours != "k" or cfg.key_bias))
    return rows


def mlp_rows(cfg: "VisionConfig", names: dict[str, str], prefix: str = "layers/mlp") -> list[Row]:
    """Rows of the MLP `prefix/<ours>` <- HF Linear `names[ours]` (`fc1`/`fc2` or `gate_proj`/
    `up_proj`/`down_proj`, as `cfg.mlp` has them)."""
    ours = ("gate_proj", "up_proj", "down_proj") if cfg.mlp == "swiglu" else ("fc1", "fc2")
    rows = []
    for name in ours:
        rows += linear_rows(f"{prefix}/{name}", names[name], cfg.mlp_bias)
    return rows
