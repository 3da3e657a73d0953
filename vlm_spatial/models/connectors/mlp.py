"""LLaVA's projectors (`mm_projector_type`): every feature token becomes one image token.

  'mlp2x_gelu'  linear_1 (Dv->D) - act (HF `projector_hidden_act`, LLaVA-1.5: exact-erf GELU) -
                linear_2 (D->D): transformers' `LlavaMultiModalProjector`
  'linear'      linear_1 (Dv->D) (LLaVA-1's; transformers has no LLaVA with it)
Parameter names match Hugging Face `multi_modal_projector.linear_1/linear_2` (kernels transposed).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vlm_spatial.models import layers as L
from vlm_spatial.models.connectors.base import Connector, register


def _kw(cfg, rngs) -> dict:
    return dict(use_bias=cfg.use_bias, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class _PerToken(Connector):
    """A connector mapping each feature token on its own (the token count is unchanged)."""

    @classmethod
    def output_layout(cls, cfg):
        return cfg.features

    @classmethod
    def _linear_rows(cls, cfg, names):
        rows = []
        for name in names:
            rows.append((f"{name}/kernel", f"{name}.weight", "linear"))
            if cfg.use_bias:
                rows.append((f"{name}/bias", f"{name}.bias", "copy"))
        return rows


@register
class MLP2x(_PerToken):
    name = "mlp2x_gelu"
    hf_llava = True

    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        # Megatron-style split: the hidden width is the sharded ('mlp') axis.
        self.linear_1 = L.linear(cfg.vision_dim, cfg.text_dim, ("embed", "mlp"), **_kw(cfg, rngs))
        self.linear_2 = L.linear(cfg.text_dim, cfg.text_dim, ("mlp", "embed"), **_kw(cfg, rngs))
        self.act = L.activation(cfg.act)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Image features `[B,N,Dv]` -> `[B,N,D]`."""
        return self.linear_2(self.act(self.linear_1(x)))

    @classmethod
    def name_table(cls, cfg):
        return cls._linear_rows(cfg, ("linear_1", "linear_2"))


@register
class Linear(_PerToken):
    name = "linear"

    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        self.linear_1 = L.linear(cfg.vision_dim, cfg.text_dim, (None, "embed"), **_kw(cfg, rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Image features `[B,N,Dv]` -> `[B,N,D]`."""
        return self.linear_1(x)

    @classmethod
    def name_table(cls, cfg):
        return cls._linear_rows(cfg, ("linear_1",))
