"""Rotary position embeddings as pure functions: 1D for the decoder, 2D for the image encoder.

A rotary table is a pair `(cos, sin)` of shape `[B, T, head_dim]` (B may be 1 to broadcast).
`apply_rope(x, cos, sin)` rotates q or k of shape `[B, T, heads, head_dim]` with it. Both use the
half-split ("rotate_half") layout of Hugging Face LLaMA/Qwen2: channel i is paired with channel
i + d/2 and `cos = concat(freqs, freqs)`.

2D (axial) RoPE: half of the rotary channel pairs rotate with the patch's row index, the other
half with its column index, each with the frequencies of a 1D rotary embedding of dimension
head_dim/2. In the half-split layout the table is `concat(f_row, f_col, f_row, f_col)`, so channel
pair (i, i + head_dim/2) is a row pair for i < head_dim/4 and a column pair otherwise. The score
q(r,c)·k(r',c') then depends only on (r-r', c-c'). Tokens with no grid position (CLIP's CLS)
get the identity rotation.
"""
from __future__ import annotations

import math

import jax.numpy as jnp


def inverse_frequencies(dim: int, theta: float, scaling: dict | None = None) -> jnp.ndarray:
    """Rotary inverse frequencies `[dim // 2]` for rotary dimension `dim` (even).

    `scaling` is a Hugging Face `rope_parameters`/`rope_scaling` dict; supported `rope_type`s are
    `default`, `linear` (positions divided by `factor`, folded into the frequencies) and `llama3`.
    """
    if dim % 2:
        raise ValueError(f"rotary dimension must be even, got {dim}")
    inv = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * inv / factor + smooth * inv
        out = jnp.where(wavelen > old_len / low, inv / factor, inv)
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return jnp.where(is_medium, smoothed, out)
    raise NotImplementedError(
        f"rope scaling type {kind!r} is not supported (supported: default, linear, llama3)"
    )


def rope_table(positions: jnp.ndarray, inv_freq: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """1D rotary table for integer `positions [B, T]`: returns `(cos, sin)`, each `[B, T, 2*F]`."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rope2d_table(
    rows: jnp.ndarray, cols: jnp.ndarray, head_dim: int, theta: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Axial 2D rotary table from patch positions `rows`, `cols` (`[B, N]`, ints or floats).

    Returns `(cos, sin)`, each `[B, N, head_dim]`, laid out `concat(f_row, f_col, f_row, f_col)`
    so that `apply_rope` pairs row channels with row channels. `head_dim` must be divisible by 4.
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    inv = inverse_frequencies(head_dim // 2, theta)
    f_row = rows.astype(jnp.float32)[..., None] * inv
    f_col = cols.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([f_row, f_col, f_row, f_col], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def grid_positions(height: int, width: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Row and column index `[1, height*width]` of each patch of a row-major `height x width` grid."""
    idx = jnp.arange(height * width)
    return (idx // width)[None], (idx % width)[None]


def naflex_grid_positions(spatial_shapes: jnp.ndarray, max_patches: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-image (row, col) `[B, max_patches]` for NaFlex inputs with `spatial_shapes [B, 2]` (h, w).

    Patches are row-major in each image's own `h x w` grid; padding slots get position (0, 0).
    """
    idx = jnp.arange(max_patches)[None]
    width = spatial_shapes[:, 1:2]
    valid = idx < spatial_shapes[:, 0:1] * width
    return jnp.where(valid, idx // width, 0), jnp.where(valid, idx % width, 0)


def patch_centre_angles(rows: jnp.ndarray, cols: jnp.ndarray, spatial_shapes: jnp.ndarray
                        ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """DINOv3's rotary positions: the centre of patch (r, c) of an `h x w` grid normalised to
    [-1, 1] (`2 (r + 0.5) / h - 1`), times 2 pi; `rows`, `cols` `[B or 1, N]` ints,
    `spatial_shapes [B, 2]` (h, w). Returns float32 `(y, x)`, each `[B, N]`, to feed
    `rope2d_table`: with them it is `DINOv3ViTRopePositionEmbedding`'s table, the same at every
    resolution for the same relative place in the image."""
    sizes = spatial_shapes.astype(jnp.float32)
    y = 2.0 * ((rows.astype(jnp.float32) + 0.5) / sizes[:, 0:1]) - 1.0
    x = 2.0 * ((cols.astype(jnp.float32) + 0.5) / sizes[:, 1:2]) - 1.0
    return 2 * math.pi * y, 2 * math.pi * x


def with_identity_prefix(
    cos: jnp.ndarray, sin: jnp.ndarray, num_prefix: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Prepend `num_prefix` identity rotations (cos=1, sin=0) for tokens without a grid position."""
    if num_prefix == 0:
        return cos, sin
    shape = cos.shape[:-2] + (num_prefix, cos.shape[-1])
    return (
        jnp.concatenate([jnp.ones(shape, cos.dtype), cos], axis=-2),
        jnp.concatenate([jnp.zeros(shape, sin.dtype), sin], axis=-2),
    )


def rotate_half(x: jnp.ndarray) -> jnp.ndarray:
    """`concat(-x2, x1)` over the last axis, the partner of `apply_rope`."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate `x [B, T, heads, head_dim]` by the table `(cos, sin)` of shape `[B, T, head_dim]`
    (every head alike) or `[B, T, heads, head_dim]` (a table per head).

    Computed in float32 and cast back to `x.dtype`.
    """
    xf = x.astype(jnp.float32)
    c, s = (cos, sin) if cos.ndim == x.ndim else (cos[:, :, None, :], sin[:, :, None, :])
    return (xf * c + rotate_half(xf) * s).astype(x.dtype)
