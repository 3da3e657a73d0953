"""AIMv2's native 2D sin-cos absolute position embedding (`is_native=True`), and no embedding."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vlm_spatial.models.positions.base import AbsoluteScheme, register_absolute


@register_absolute
class SinCos(AbsoluteScheme):
    name = "sincos"

    def add(self, x, table, cfg, *, grid_hw, spatial_shapes):
        if not cfg.uses_abs_pos_emb:
            return x
        cls = int(cfg.cls_token)
        pos = jnp.asarray(sincos_2d(*grid_hw, x.shape[-1]), x.dtype)[None]
        return jnp.concatenate([x[:, :cls], x[:, cls:] + pos], axis=1)


@register_absolute
class NoAbsolute(AbsoluteScheme):
    name = "none"


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """AIMv2 native 2D sin-cos position embedding `[height*width, dim]`, laid out
    `[sin_w | cos_w | sin_h | cos_h]` (float64 arithmetic, returned as float32)."""
    if dim % 4:
        raise ValueError(f"sincos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    gh, gw = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    eh, ew = np.outer(gh.ravel(), omega), np.outer(gw.ravel(), omega)
    return np.concatenate([np.sin(ew), np.cos(ew), np.sin(eh), np.cos(eh)], axis=1).astype(np.float32)
