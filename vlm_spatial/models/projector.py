"""The vision-to-language projector of LLaVA: patch features `[B,N,Dv]` -> decoder width `[B,N,D]`.

Kinds (LLaVA's `mm_projector_type`):
  'mlp2x_gelu'  linear_1 (Dv->D) - GELU (exact erf, HF `projector_hidden_act="gelu"`) - linear_2 (D->D)
  'linear'      linear_1 (Dv->D)
Parameter names match Hugging Face `multi_modal_projector.linear_1/linear_2` (kernels transposed).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vlm_spatial.models import layers as L

PROJECTOR_KINDS = ("mlp2x_gelu", "linear")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """kind: 'mlp2x_gelu' | 'linear'; vision_dim Dv, text_dim D; act: HF activation name of the MLP;
    use_bias: HF `multimodal_projector_bias`; dtype compute, param_dtype storage (dtype names)."""

    kind: str = "mlp2x_gelu"
    vision_dim: int = 1024
    text_dim: int = 4096
    act: str = "gelu"
    use_bias: bool = True
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in PROJECTOR_KINDS:
            raise ValueError(f"ProjectorConfig.kind={self.kind!r}; supported: {PROJECTOR_KINDS}")
        L.activation(self.act)

    def replace(self, **changes) -> "ProjectorConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProjectorConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"ProjectorConfig.from_dict: unknown fields {sorted(unknown)}")
        return cls(**d)


class Projector(nnx.Module):
    """`Projector(cfg, *, rngs)`; `__call__(x [B,N,Dv]) -> [B,N,D]` in the compute dtype."""

    def __init__(self, cfg: ProjectorConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = dict(use_bias=cfg.use_bias, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
        if cfg.kind == "mlp2x_gelu":
            # Megatron-style split: the hidden width is the sharded ('mlp') axis.
            self.linear_1 = L.linear(cfg.vision_dim, cfg.text_dim, ("embed", "mlp"), **kw)
            self.linear_2 = L.linear(cfg.text_dim, cfg.text_dim, ("mlp", "embed"), **kw)
            self.act = L.activation(cfg.act)
        else:
            self.linear_1 = L.linear(cfg.vision_dim, cfg.text_dim, (None, "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Image features `[B,N,Dv]` -> `[B,N,D]`."""
        h = self.linear_1(x)
        if self.cfg.kind == "mlp2x_gelu":
            h = self.linear_2(self.act(h))
        return h
