"""The decoder's 1D rotary position embedding (LLaMA/Vicuna, Qwen2; LLaVA-1.5's only LM scheme)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlm_spatial.models import rope


def table(positions: jax.Array, head_dim: int, theta: float, scaling: dict | None) -> tuple[jax.Array, jax.Array]:
    """`(cos, sin)`, each `[B, T, head_dim]`, for integer token `positions [B, T]` with rotary base
    `theta` and HF `rope_parameters` scaling (see `rope.inverse_frequencies`)."""
    inv_freq = rope.inverse_frequencies(head_dim, theta, scaling)
    return rope.rope_table(positions.astype(jnp.int32), inv_freq)
