"""The learned absolute position table (CLIP, SigLIP, SigLIP2-NaFlex, AIMv2, ...), and resizing it.

The table `[cls + G*G, D]` holds a row for the CLS token (if any) and a row-major `G x G` patch
grid. A fixed-resolution encoder adds it as is; a NaFlex encoder resizes the grid to each image's
patch grid at run time (`resize_position_grid`, bilinear + antialias as HF SigLIP2). Running at another
resolution resizes it once (`resize_position_embedding`, at `convert assemble` or when a run
starts from a checkpoint) as the family's HF `interpolate_pos_encoding` does (`VisionConfig.pos_interpolation`):
'bicubic' (PyTorch's, a = -0.75: CLIP, SigLIP, DINOv2) or 'bicubic_antialias' (PyTorch's
antialiased bicubic, a = -0.5 with the kernel widened when shrinking: DINOv2 with registers).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial.models.positions.base import AbsoluteScheme, register_absolute

INTERPOLATIONS = ("bicubic", "bicubic_antialias")


@register_absolute
class Learned(AbsoluteScheme):
    name = "learned"

    def param(self, cfg, rngs):
        if not cfg.uses_abs_pos_emb:
            return None
        shape = (cfg.pos_grid_size**2 + int(cfg.cls_token), cfg.hidden_size)
        init = nnx.initializers.normal(0.02)(rngs.params(), shape, jnp.dtype(cfg.param_dtype))
        return nnx.Param(init, sharding_names=(None, "embed"))

    def add(self, x, table, cfg, *, grid_hw, spatial_shapes):
        if table is None:
            return x
        dt = x.dtype
        if cfg.naflex:
            g, d = cfg.pos_grid_size, table.shape[-1]
            pos = resize_position_grid(table.reshape(g, g, d), spatial_shapes, x.shape[1]).astype(table.dtype)
            return x + pos.astype(dt)
        return x + table.astype(dt)[None]


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` float64 weights of PyTorch's 1-D bicubic resize (align_corners=False, no
    antialias): output i samples input at `(i + 0.5) * n_in / n_out - 0.5` from its 4 neighbours
    (a = -0.75), indices clamped to the border."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    m = np.zeros((n_out, n_in))
    for k in (-1, 0, 1, 2):
        idx = np.clip(base + k, 0, n_in - 1).astype(int)
        np.add.at(m, (np.arange(n_out), idx), _cubic(t - k, -0.75))
    return m


def antialiased_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` float64 weights of PyTorch's 1-D bicubic resize with `antialias=True`
    (align_corners=False): the cubic kernel (a = -0.5) centred at `(i + 0.5) * n_in / n_out`,
    widened by the scale when shrinking, cut at the border and renormalised."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - 2 * support + 0.5), 0), min(int(center + 2 * support + 0.5), n_in)
        w = _cubic((np.arange(lo, hi) - center + 0.5) / support, -0.5)
        m[i, lo:hi] = w / w.sum()
    return m


def resize_position_embedding(table, grid: int, new_grid: int, num_prefix: int = 0,
                              interpolation: str = "bicubic"):
    """A learned position table `[num_prefix + grid*grid, D]` (row-major patch grid after
    `num_prefix` rows such as CLIP's CLS) resized to `[num_prefix + new_grid*new_grid, D]` with
    `interpolation` (one of `INTERPOLATIONS`); prefix rows are kept. numpy tables are resized in
    float64, jax arrays (traceable) in float32; the result has `table`'s dtype."""
    d = table.shape[-1]
    if table.shape != (num_prefix + grid * grid, d):
        raise ValueError(f"position table {table.shape} is not {num_prefix} + {grid}x{grid} rows")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"position-table interpolation {interpolation!r}; one of {INTERPOLATIONS}")
    if grid == new_grid:
        return table
    m = (bicubic_matrix if interpolation == "bicubic" else antialiased_bicubic_matrix)(grid, new_grid)
    xp, dtype = (jnp, jnp.float32) if isinstance(table, jax.Array) else (np, np.float64)
    m = xp.asarray(m, dtype)
    patches = table[num_prefix:].astype(dtype).reshape(grid, grid, d)
    resized = xp.einsum("ai,bj,ijd->abd", m, m, patches).reshape(new_grid * new_grid, d)
    return xp.concatenate([table[:num_prefix], resized.astype(table.dtype)], axis=0)


def resize_position_grid(grid: jax.Array, spatial_shapes: jax.Array, max_len: int) -> jax.Array:
    """Resize a learned `[G, G, D]` position grid to each image's `spatial_shapes [B, 2]` (h, w)
    with bilinear + antialias weights (as `F.interpolate(..., antialias=True)` and HF SigLIP2),
    laid out row-major and padded to `max_len`; padding slots get the grid's resized (0, 0).
    Works with traced `spatial_shapes`. Returns float32 `[B, max_len, D]`."""
    g = grid.shape[0]
    sizes = spatial_shapes.astype(jnp.float32)[:, None]  # [B, 1, 2]
    pos = jnp.arange(max_len, dtype=jnp.float32)[None, :, None]  # [1, P, 1]
    rows = jnp.floor(pos / sizes[..., 1:])
    out_idx = jnp.concatenate([rows, pos - rows * sizes[..., 1:]], axis=-1)  # [B, P, 2]
    out_idx = out_idx * (pos < jnp.prod(sizes, -1, keepdims=True))
    scale = g / sizes
    support = jnp.maximum(scale, 1.0)
    center = (out_idx + 0.5) * scale - 0.5
    src = jnp.arange(g, dtype=jnp.float32)
    w = jnp.maximum(1.0 - jnp.abs(src - center[..., None]) / support[..., None], 0.0)  # [B, P, 2, G]
    w = w / w.sum(-1, keepdims=True)
    w2 = (w[..., 0, :, None] * w[..., 1, None, :]).reshape(w.shape[0], max_len, g * g)
    return w2 @ grid.reshape(g * g, -1).astype(jnp.float32)
