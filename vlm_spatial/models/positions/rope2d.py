"""2D rotary layouts of the encoder (`VisionConfig.rope2d_layout`).

'axial' (the paper's retrofitted 2D-RoPE): half of the rotary channel pairs rotate with the
patch's row index, the other half with its column index, both with the frequencies of a 1D rotary
embedding of dimension head_dim/2 (`rope.rope2d_table`), so the score of q(r,c) and k(r',c')
depends only on (r-r', c-c').
'pixtral' (Pixtral's vision encoder, transformers' `PixtralVisionRotaryEmbedding`): the same
channel split, but rows take the even- and columns the odd-indexed frequencies of a head_dim
rotary embedding, so the two axes never share a frequency.
'dinov3' (DINOv3's native RoPE): the axial channel layout, rotated by the patch centre's position
in the image normalised to [-1, 1] (`rope.patch_centre_angles`) instead of its index: positions
are relative to the image size, not counted in patches.
'mixed' (RoPE-Mixed, Heo et al. 2024): every channel pair of every head and layer rotates by
`r * f_row + c * f_col` with both frequencies learned (the encoder's `layers/attn/rope_freqs`
`[L, heads, head_dim/2, 2]`), so a head can attend along diagonals; initialised to 'axial'
(rows then columns, zero cross terms), where it computes exactly what 'axial' does.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vlm_spatial.models import rope
from vlm_spatial.models.positions.base import RopeLayout, register_rope2d


@register_rope2d
class Axial(RopeLayout):
    name = "axial"

    def table(self, rows, cols, spatial_shapes, head_dim, theta):
        return rope.rope2d_table(rows, cols, head_dim, theta)


@register_rope2d
class PatchCentres(RopeLayout):
    name = "dinov3"

    def table(self, rows, cols, spatial_shapes, head_dim, theta):
        return rope.rope2d_table(*rope.patch_centre_angles(rows, cols, spatial_shapes), head_dim, theta)


@register_rope2d
class Pixtral(RopeLayout):
    name = "pixtral"

    def table(self, rows, cols, spatial_shapes, head_dim, theta):
        if head_dim % 4:
            raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
        inv = rope.inverse_frequencies(head_dim, theta)
        f_row = rows.astype(jnp.float32)[..., None] * inv[0::2]
        f_col = cols.astype(jnp.float32)[..., None] * inv[1::2]
        emb = jnp.concatenate([f_row, f_col, f_row, f_col], axis=-1)
        return jnp.cos(emb), jnp.sin(emb)


def axial_frequencies(head_dim: int, theta: float) -> jnp.ndarray:
    """`[head_dim/2, 2]` float32 (row, col) frequency of each rotary channel pair of 'axial': the
    first head_dim/4 pairs `(inv_j, 0)`, the rest `(0, inv_j)` with `inv` the frequencies of a
    head_dim/2 rotary embedding."""
    inv = rope.inverse_frequencies(head_dim // 2, theta)
    zero = jnp.zeros_like(inv)
    return jnp.concatenate([jnp.stack([inv, zero], -1), jnp.stack([zero, inv], -1)], axis=0)


def mixed_table(positions: jnp.ndarray, freqs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """RoPE-Mixed table `(cos, sin)`, each `[B, N, heads, head_dim]`, from float (row, col)
    `positions [B or 1, N, 2]` and one layer's learned `freqs [heads, head_dim/2, 2]`: pair j of
    head h rotates by `row * freqs[h, j, 0] + col * freqs[h, j, 1]` (half-split layout)."""
    f = freqs.astype(jnp.float32)
    row, col = positions[..., 0, None, None], positions[..., 1, None, None]
    angles = row * f[..., 0] + col * f[..., 1]
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


@register_rope2d
class Mixed(RopeLayout):
    name = "mixed"

    def param(self, cfg, rngs):
        freqs = jnp.broadcast_to(axial_frequencies(cfg.head_dim, cfg.rope2d_theta), (cfg.num_heads, cfg.head_dim // 2, 2))
        return nnx.Param(freqs.astype(jnp.dtype(cfg.param_dtype)), sharding_names=(None, None, None))

    def table(self, rows, cols, spatial_shapes, head_dim, theta):
        return jnp.stack([rows.astype(jnp.float32), cols.astype(jnp.float32)], axis=-1)

    def with_prefix(self, table, num_prefix):
        pad = jnp.zeros(table.shape[:-2] + (num_prefix, 2), table.dtype)
        return jnp.concatenate([pad, table], axis=-2) if num_prefix else table

    def rotation(self, table, param):
        return mixed_table(table, param)
