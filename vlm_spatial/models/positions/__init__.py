"""The registry of position schemes: where position enters the model, one module per scheme.

  encoder, absolute (`VisionConfig.pos_emb`)   'learned' (learned.py), 'sincos', 'none' (sincos.py)
  encoder, rotary (`VisionConfig.rope2d_layout`) 'axial', 'dinov3' (rope2d.py)
  decoder                                      1D RoPE (rope1d.py)

    positions.absolute(cfg.pos_emb).add(x, table, cfg, ...)
    positions.rope2d_layout("axial").table(rows, cols, spatial_shapes, head_dim, theta)

A scheme is a small class (`base.AbsoluteScheme`, `base.RopeLayout`) registered under the config
name that selects it; add a module and its line in the import list below.
"""
from __future__ import annotations

from vlm_spatial.models.positions.base import ABSOLUTE, ROPE2D, AbsoluteScheme, RopeLayout  # noqa: F401

# The import list: each module registers its schemes.
from vlm_spatial.models.positions import learned, rope1d, rope2d, sincos  # noqa: E402,F401,I001


def absolute(name: str) -> AbsoluteScheme:
    """The absolute scheme `name`; ValueError listing the registered ones otherwise."""
    if name not in ABSOLUTE:
        raise ValueError(f"unknown absolute position scheme {name!r}; registered: {', '.join(ABSOLUTE)}")
    return ABSOLUTE[name]


def rope2d_layout(name: str) -> RopeLayout:
    """The 2D rotary layout `name`; ValueError listing the registered ones otherwise."""
    if name not in ROPE2D:
        raise ValueError(f"unknown 2D rotary layout {name!r}; registered: {', '.join(ROPE2D)}")
    return ROPE2D[name]
