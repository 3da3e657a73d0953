"""The registry of encoder families: one module per family, each registering itself on import.

    families.get("clip")                 -> the Family (presets, HF adapter and names, mean/std, ...)
    families.names()                     -> ('clip', 'siglip', ...)
    families.preset("clip-l/14-336")     -> VisionConfig (VISION_PRESETS: every family's presets)
    families.for_model_type("dinov2")    -> the Family reading that HF model_type
    families.tiny_preset("clip-l/14-336") -> 'tiny-clip', the tiny model with the same switches

Adding a family is one module here (see `base.Family`) plus its line in the import list below.
"""
from __future__ import annotations

from vlm_spatial.models.families.base import Family, families, get, names, register  # noqa: F401

# The import list: each module registers its family.
from vlm_spatial.models.families import clip, siglip, siglip2, aimv2, dinov2, dinov3  # noqa: E402,F401,I001

VISION_PRESETS = {name: cfg for family in families() for name, cfg in family.presets().items()}


def preset(name: str):
    """The VisionConfig of preset `name` (any family); ValueError listing the presets otherwise."""
    try:
        return VISION_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown encoder preset {name!r}; one of {', '.join(sorted(VISION_PRESETS))}") from None


def tiny_preset(name: str) -> str:
    """The tiny preset with the switches of preset `name` (what `configs/*.py:tiny` trains)."""
    cfg = preset(name)
    return get(cfg.family).tiny_preset(cfg)


def model_types() -> tuple[str, ...]:
    """Every HF vision `model_type` a registered family reads."""
    return tuple(mt for family in families() for mt in family.model_types)


def for_model_type(model_type: str | None) -> Family:
    """The family reading HF configs of `model_type`; ValueError listing the supported ones otherwise."""
    for family in families():
        if model_type in family.model_types:
            return family
    raise ValueError(f"unsupported vision model_type {model_type!r}; supported: {', '.join(model_types())}")


def accepts(family: str, checkpoint_family: str) -> bool:
    """Whether a config of encoder `family` may start from a checkpoint whose encoder is of
    `checkpoint_family` (the same layout under another name, e.g. SigLIP2 so400m/14-384 is
    published as SigLIP)."""
    return checkpoint_family == family or checkpoint_family in get(family).accepts
