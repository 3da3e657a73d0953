"""The two kinds of encoder position scheme and their registries.

An absolute scheme (selected by `VisionConfig.pos_emb`) owns the position parameter, if any, and
adds positions to the token embeddings before the first layer. A rotary layout (selected by
`VisionConfig.rope2d_layout` when `rope2d` is on) turns each patch's grid position into the
`(cos, sin)` table that attention applies to q and k (`rope.apply_rope`). Each is a small class
registered under its config name; a new scheme is one module in `positions/` plus its import.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import jax

from vlm_spatial.models import rope

if TYPE_CHECKING:
    from flax import nnx

    from vlm_spatial.models.vision import VisionConfig


class AbsoluteScheme:
    """An absolute position embedding of the encoder."""

    name: ClassVar[str]

    def param(self, cfg: "VisionConfig", rngs: "nnx.Rngs") -> "nnx.Param | None":
        """The parameter the encoder holds as `position_embedding`, or None."""
        return None

    def add(self, x: jax.Array, table: jax.Array | None, cfg: "VisionConfig", *, grid_hw, spatial_shapes) -> jax.Array:
        """`x [B, cls + P, D]` (CLS token, if any, then patches) with positions added. `table` is
        the parameter from `param`; `grid_hw` the static `(rows, cols)` of a fixed-resolution
        input (None for NaFlex patches); `spatial_shapes [B, 2]` each image's patch grid."""
        return x


class RopeLayout:
    """How a 2D rotary embedding reads a patch's grid position.

    The encoder computes `table(...)` once per forward and hands it to every layer; a layer turns
    it into the `(cos, sin)` it applies with `rotation(table, param)`, where `param` is the
    layer's own parameter from `param` (`layers/attn/rope_freqs`; None for a fixed layout, whose
    table is the `(cos, sin)` already)."""

    name: ClassVar[str]

    def param(self, cfg: "VisionConfig", rngs: "nnx.Rngs") -> "nnx.Param | None":
        """The per-layer parameter each attention layer holds as `rope_freqs`, or None."""
        return None

    def table(self, rows: jax.Array, cols: jax.Array, spatial_shapes: jax.Array, head_dim: int,
              theta: float):
        """For patches at integer `rows`, `cols` `[B or 1, P]` of images whose patch grids are
        `spatial_shapes [B, 2]`: a fixed layout's `(cos, sin)`, each `[B, P, head_dim]`; a learned
        one's input to `rotation`."""
        raise NotImplementedError

    def with_prefix(self, table, num_prefix: int):
        """`table` with `num_prefix` leading tokens (CLS, registers) that rotate by nothing."""
        return rope.with_identity_prefix(*table, num_prefix)

    def rotation(self, table, param: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """The `(cos, sin)` a layer applies (`rope.apply_rope`), from `table` and its `param`."""
        return table


ABSOLUTE: dict[str, AbsoluteScheme] = {}
ROPE2D: dict[str, RopeLayout] = {}


def register_absolute(cls: type[AbsoluteScheme]) -> type[AbsoluteScheme]:
    """Class decorator: register an absolute scheme under `cls.name`."""
    ABSOLUTE[cls.name] = cls()
    return cls


def register_rope2d(cls: type[RopeLayout]) -> type[RopeLayout]:
    """Class decorator: register a rotary layout under `cls.name`."""
    ROPE2D[cls.name] = cls()
    return cls
