"""'resampler': a Perceiver-style resampler (Flamingo's, Qwen-VL's) - the control arm that discards
the grid. `num_queries` learned queries cross-attend to every feature token (prefix tokens
included), `depth` blocks of `q + attn(ln(q), ln(x))`, `q + mlp(ln(q))`, a final LayerNorm, then
LLaVA's MLP readout. The features carry no position of their own here (none is added), so the
output is the same for any order of the input tokens: what the LM sees has no 2D layout
(`output_layout` has no grid). Attention heads of width 64 (one head when `vision_dim` is not a multiple of 64).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vlm_spatial.models import layers as L
from vlm_spatial.models.connectors.base import FeatureLayout, register
from vlm_spatial.models.connectors.grid import _kw, _Readout


def _norm(d, cfg, rngs):
    return L.norm("layernorm", d, eps=1e-5, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                  rngs=rngs)


class CrossBlock(nnx.Module):
    """One resampler block on latents `[B, Q, d]` reading features `[B, N, d]`."""

    def __init__(self, d, cfg, rngs):
        self.heads = d // 64 if d % 64 == 0 else 1
        self.norm_q, self.norm_kv, self.norm_mlp = _norm(d, cfg, rngs), _norm(d, cfg, rngs), _norm(d, cfg, rngs)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            L.linear(d, d, ("embed", "heads"), **_kw(cfg, rngs)) for _ in range(4))
        self.fc1 = L.linear(d, 4 * d, ("embed", "mlp"), **_kw(cfg, rngs))
        self.fc2 = L.linear(4 * d, d, ("mlp", "embed"), **_kw(cfg, rngs))

    def __call__(self, q, x):
        b, nq, d = q.shape
        h = self.heads
        split = lambda t: t.reshape(b, t.shape[1], h, d // h)
        kv = self.norm_kv(x)
        att = L.attention(split(self.q_proj(self.norm_q(q))), split(self.k_proj(kv)), split(self.v_proj(kv)))
        q = q + self.out_proj(att.reshape(b, nq, d))
        return q + self.fc2(jax.nn.gelu(self.fc1(self.norm_mlp(q)), approximate=False))


@register
class Resampler(_Readout):
    name = "resampler"
    reads = ("num_queries", "depth")

    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        d = cfg.vision_dim
        init = nnx.initializers.normal(0.02)(rngs.params(), (cfg.num_queries, d), jnp.dtype(cfg.param_dtype))
        self.queries = nnx.Param(init, sharding_names=(None, "embed"))
        for i in range(cfg.depth):
            setattr(self, f"block{i}", CrossBlock(d, cfg, rngs))
        self.norm_out = _norm(d, cfg, rngs)
        self._mlp(cfg, d, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features `[B, N, Dv]` -> `[B, num_queries, D]`."""
        q = jnp.broadcast_to(self.queries[...].astype(x.dtype), (x.shape[0],) + self.queries.shape)
        for i in range(self.cfg.depth):
            q = getattr(self, f"block{i}")(q, x)
        return self._readout(self.norm_out(q))

    @classmethod
    def output_layout(cls, cfg):
        return FeatureLayout(0, cfg.num_queries, None)

    @classmethod
    def name_table(cls, cfg):
        rows = [("queries", "queries", "copy")]
        for i in range(cfg.depth):
            o, hf = f"block{i}", f"blocks.{i}"
            for n in ("norm_q", "norm_kv", "norm_mlp"):
                rows += [(f"{o}/{n}/scale", f"{hf}.{n}.weight", "copy"), (f"{o}/{n}/bias", f"{hf}.{n}.bias", "copy")]
            for n in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
                rows += [(f"{o}/{n}/kernel", f"{hf}.{n}.weight", "linear"), (f"{o}/{n}/bias", f"{hf}.{n}.bias", "copy")]
        rows += [("norm_out/scale", "norm_out.weight", "copy"), ("norm_out/bias", "norm_out.bias", "copy")]
        return rows + cls._mlp_rows(cfg, ("linear_1", "linear_2"))
