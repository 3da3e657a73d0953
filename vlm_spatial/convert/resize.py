"""Resizing a learned position-embedding grid to another input resolution (at conversion, and when
a run starts from a checkpoint at another image size).

Hugging Face CLIP/SigLIP run at other resolutions with `interpolate_pos_encoding=True`:
`F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)` over the patch grid (the
CLS row kept as is). `resize_position_embedding` computes the same map, in float64 on numpy arrays
and in float32 (traceable) on jax arrays, so an encoder converted to 256 px equals the original run
at 256 px with interpolation.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

_A = -0.75  # PyTorch's bicubic coefficient


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    near = ((_A + 2) * x - (_A + 3)) * x * x + 1
    far = ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """`[n_out, n_in]` float64 weights of PyTorch's 1-D bicubic resize (align_corners=False, no
    antialias): output i samples input at `(i + 0.5) * n_in / n_out - 0.5` from its 4 neighbours,
    indices clamped to the border."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    m = np.zeros((n_out, n_in))
    for k in (-1, 0, 1, 2):
        idx = np.clip(base + k, 0, n_in - 1).astype(int)
        np.add.at(m, (np.arange(n_out), idx), _cubic(t - k))
    return m


def resize_position_embedding(table, grid: int, new_grid: int, num_prefix: int = 0):
    """A learned position table `[num_prefix + grid*grid, D]` (row-major patch grid after
    `num_prefix` rows such as CLIP's CLS) resized to `[num_prefix + new_grid*new_grid, D]`;
    prefix rows are kept. Same dtype (and array kind) as `table`: a numpy array is resized in
    float64, a jax array in float32 (traceable, e.g. inside `jit` on sharded parameters)."""
    d = table.shape[-1]
    if table.shape != (num_prefix + grid * grid, d):
        raise ValueError(f"position table {table.shape} is not {num_prefix} + {grid}x{grid} rows")
    if grid == new_grid:
        return table
    xp, compute = (np, np.float64) if isinstance(table, np.ndarray) else (jnp, jnp.float32)
    m = xp.asarray(bicubic_matrix(grid, new_grid), compute)
    patches = table[num_prefix:].astype(compute).reshape(grid, grid, d)
    resized = xp.einsum("ai,bj,ijd->abd", m, m, patches).reshape(new_grid * new_grid, d)
    return xp.concatenate([table[:num_prefix], resized.astype(table.dtype)], axis=0)
