"""Connectors that keep the patch grid: fewer image tokens, still laid out row-major on a 2D grid.

  'pool2d'        k x k average pooling of the feature grid (stride k, PyTorch's `avg_pool2d` floor
                  mode), then LLaVA's MLP (linear_1 - act - linear_2)
  'c_abstractor'  Honeybee's C-Abstractor (Cha et al. 2024): `depth` RegNet bottleneck blocks
                  (1x1 conv, 3x3 depthwise conv, squeeze-excitation, 1x1 conv; LayerNorm2d, SiLU;
                  timm's `RegStage` as Honeybee builds it), adaptive average pooling to a `grid`
                  x `grid` grid (`adaptive_avg_pool2d`), `depth` more blocks, then the MLP
Both drop the prefix tokens (CLS, registers) their features may carry: what they emit is exactly
the grid, so `output_layout` is `(0, rows*cols, (rows, cols))`. HF names follow Honeybee's module
(`net.{0,2}.b{i}.conv1.conv.weight`, ..., `readout.{0,2}`) for the C-Abstractor.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial.models import layers as L
from vlm_spatial.models.connectors.base import Connector, FeatureLayout, register


def _grid(cls, cfg) -> tuple[int, int, int]:
    """(num_prefix, rows, cols) of the features `cfg.features`; ValueError without a grid."""
    f = cfg.features
    if f is None or f.grid is None:
        raise ValueError(f"connector {cls.name!r} pools the patch grid, but these features have none "
                         f"({f}: NaFlex patches, or 'default' feature selection dropping a patch of an "
                         f"encoder without CLS); use another connector or vision_feature_select='full'")
    return f.num_prefix, *f.grid


def _patch_grid(cls, cfg, x: jax.Array) -> jax.Array:
    """Features `[B, prefix + R*C, Dv]` -> the patch grid `[B, R, C, Dv]` (prefix dropped)."""
    prefix, rows, cols = _grid(cls, cfg)
    return x[:, prefix:].reshape(x.shape[0], rows, cols, x.shape[-1])


def avg_pool2d(x: jax.Array, k: int) -> jax.Array:
    """`[B, R, C, D]` -> `[B, R//k, C//k, D]`: mean of each k x k block (trailing rows/cols that do
    not fill a block are dropped, as `torch.nn.functional.avg_pool2d(x, k)`)."""
    b, r, c, d = x.shape
    x = x[:, : r - r % k, : c - c % k]
    return x.reshape(b, r // k, k, c // k, k, d).mean(axis=(2, 4))


def adaptive_avg_pool2d(x: jax.Array, out: tuple[int, int]) -> jax.Array:
    """`[B, R, C, D]` -> `[B, out_r, out_c, D]`: output cell i averages input rows
    `floor(i R / out_r) .. ceil((i+1) R / out_r) - 1` (and likewise columns), as
    `torch.nn.functional.adaptive_avg_pool2d` (a static averaging matrix per axis)."""
    def matrix(n_in, n_out):
        m = np.zeros((n_out, n_in), np.float32)
        for i in range(n_out):
            lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
            m[i, lo:hi] = 1.0 / (hi - lo)
        return jnp.asarray(m)

    mr, mc = matrix(x.shape[1], out[0]), matrix(x.shape[2], out[1])
    y = jnp.einsum("ir,brcd->bicd", mr, x.astype(jnp.float32), precision="highest")
    return jnp.einsum("jc,bicd->bijd", mc, y, precision="highest").astype(x.dtype)


def _kw(cfg, rngs, bias=True) -> dict:
    return dict(use_bias=bias, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class _Readout(Connector):
    """A grid connector whose tokens end in LLaVA's MLP (`linear_1` - act - `linear_2`)."""

    def _mlp(self, cfg, dim, rngs):
        self.linear_1 = L.linear(dim, cfg.text_dim, ("embed", "mlp"), **_kw(cfg, rngs, cfg.use_bias))
        self.linear_2 = L.linear(cfg.text_dim, cfg.text_dim, ("mlp", "embed"), **_kw(cfg, rngs, cfg.use_bias))
        self.act = L.activation(cfg.act)

    def _readout(self, x):
        return self.linear_2(self.act(self.linear_1(x)))

    @classmethod
    def _mlp_rows(cls, cfg, hf_names):
        rows = []
        for ours, hf in zip(("linear_1", "linear_2"), hf_names):
            rows.append((f"{ours}/kernel", f"{hf}.weight", "linear"))
            if cfg.use_bias:
                rows.append((f"{ours}/bias", f"{hf}.bias", "copy"))
        return rows


@register
class Pool2d(_Readout):
    name = "pool2d"
    reads = ("pool",)

    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        self._mlp(cfg, cfg.vision_dim, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features `[B, prefix + R*C, Dv]` -> `[B, (R//k)*(C//k), D]`."""
        g = avg_pool2d(_patch_grid(type(self), self.cfg, x), self.cfg.pool)
        return self._readout(g.reshape(g.shape[0], -1, g.shape[-1]))

    @classmethod
    def output_layout(cls, cfg):
        _, rows, cols = _grid(cls, cfg)
        r, c = rows // cfg.pool, cols // cfg.pool
        if not r or not c:
            raise ValueError(f"connector 'pool2d': pool={cfg.pool} is larger than the {rows}x{cols} patch grid")
        return FeatureLayout(0, r * c, (r, c))

    @classmethod
    def name_table(cls, cfg):
        return cls._mlp_rows(cfg, ("linear_1", "linear_2"))


class LayerNorm2d(nnx.Module):
    """timm's `LayerNorm2d` on NHWC: LayerNorm over the channels, eps 1e-6."""

    def __init__(self, dim, cfg, rngs):
        self.norm = L.norm("layernorm", dim, eps=1e-6, dtype=jnp.dtype(cfg.dtype),
                           param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)

    def __call__(self, x):
        return self.norm(x)


class Conv1x1(nnx.Module):
    """A 1x1 convolution without bias (a Linear over the channels), then LayerNorm2d (timm's
    `ConvNormAct` without its activation)."""

    def __init__(self, d_in, d_out, cfg, rngs):
        self.conv = L.linear(d_in, d_out, (None, None), **_kw(cfg, rngs, False))
        self.bn = LayerNorm2d(d_out, cfg, rngs)

    def __call__(self, x):
        return self.bn(self.conv(x))


class DepthwiseConv3x3(nnx.Module):
    """A 3x3 depthwise convolution (one filter per channel, padding 1, no bias), then LayerNorm2d."""

    def __init__(self, dim, cfg, rngs):
        init = nnx.initializers.normal(0.02)(rngs.params(), (3, 3, dim), jnp.dtype(cfg.param_dtype))
        self.conv = nnx.Param(init, sharding_names=(None, None, None))
        self.bn = LayerNorm2d(dim, cfg, rngs)
        self.dtype = jnp.dtype(cfg.dtype)

    def __call__(self, x):
        w = self.conv[...].astype(self.dtype)[:, :, None, :]  # HWIO with I = 1
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=x.shape[-1], precision="highest")
        return self.bn(y)


class SqueezeExcite(nnx.Module):
    """timm's `SEModule`: channel gates `sigmoid(fc2(silu(fc1(mean over H, W))))` (1x1 convs with bias)."""

    def __init__(self, dim, reduced, cfg, rngs):
        self.fc1 = L.linear(dim, reduced, (None, None), **_kw(cfg, rngs))
        self.fc2 = L.linear(reduced, dim, (None, None), **_kw(cfg, rngs))

    def __call__(self, x):
        s = self.fc2(jax.nn.silu(self.fc1(x.mean(axis=(1, 2), keepdims=True))))
        return x * jax.nn.sigmoid(s)


class Bottleneck(nnx.Module):
    """timm's RegNet `Bottleneck` as Honeybee's `RegStage` builds it at one width (bottle_ratio 1,
    group size 1, se_ratio 0.25, SiLU, LayerNorm2d): `silu(conv3(se(conv2(conv1 x))) + x)`, conv1
    and conv2 followed by SiLU. NHWC `[B, H, W, d] -> [B, H, W, d]`."""

    def __init__(self, d, cfg, rngs):
        self.conv1 = Conv1x1(d, d, cfg, rngs)
        self.conv2 = DepthwiseConv3x3(d, cfg, rngs)
        self.se = SqueezeExcite(d, int(round(d * 0.25)), cfg, rngs)
        self.conv3 = Conv1x1(d, d, cfg, rngs)

    def __call__(self, x):
        y = self.conv3(self.se(jax.nn.silu(self.conv2(jax.nn.silu(self.conv1(x))))))
        return jax.nn.silu(y + x)

    @staticmethod
    def rows(ours: str, hf: str) -> list[tuple[str, str, str]]:
        """Name-table rows of one block at our path `ours` / HF name `hf` (timm's names)."""
        rows = []
        for c, kernel, layout in (("conv1", "conv/kernel", "conv1x1"), ("conv2", "conv", "depthwise3x3"),
                                  ("conv3", "conv/kernel", "conv1x1")):
            rows += [(f"{ours}/{c}/{kernel}", f"{hf}.{c}.conv.weight", layout),
                     (f"{ours}/{c}/bn/norm/scale", f"{hf}.{c}.bn.weight", "copy"),
                     (f"{ours}/{c}/bn/norm/bias", f"{hf}.{c}.bn.bias", "copy")]
        for fc in ("fc1", "fc2"):
            rows += [(f"{ours}/se/{fc}/kernel", f"{hf}.se.{fc}.weight", "conv1x1"),
                     (f"{ours}/se/{fc}/bias", f"{hf}.se.{fc}.bias", "copy")]
        return rows


class RegStage(nnx.Module):
    """`depth` Bottleneck blocks in a row, named `b1`, `b2`, ... as in timm's `RegStage`."""

    def __init__(self, d, depth, cfg, rngs):
        self.depth = depth
        for i in range(depth):
            setattr(self, f"b{i + 1}", Bottleneck(d, cfg, rngs))

    def __call__(self, x):
        for i in range(self.depth):
            x = getattr(self, f"b{i + 1}")(x)
        return x


@register
class CAbstractor(_Readout):
    name = "c_abstractor"
    reads = ("grid", "depth")

    def __init__(self, cfg, *, rngs):
        self.cfg = cfg
        d = cfg.vision_dim  # Honeybee's hidden_size is the encoder's width (1024 for CLIP-L)
        self.s1, self.s2 = RegStage(d, cfg.depth, cfg, rngs), RegStage(d, cfg.depth, cfg, rngs)
        self._mlp(cfg, d, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features `[B, prefix + R*C, Dv]` -> `[B, grid*grid, D]`."""
        h = self.s1(_patch_grid(type(self), self.cfg, x))
        h = self.s2(adaptive_avg_pool2d(h, (self.cfg.grid, self.cfg.grid)))
        return self._readout(h.reshape(h.shape[0], -1, h.shape[-1]))

    @classmethod
    def output_layout(cls, cfg):
        _grid(cls, cfg)
        return FeatureLayout(0, cfg.grid * cfg.grid, (cfg.grid, cfg.grid))

    @classmethod
    def name_table(cls, cfg):
        rows = []
        for stage, hf in (("s1", "net.0"), ("s2", "net.2")):
            for i in range(cfg.depth):
                rows += Bottleneck.rows(f"{stage}/b{i + 1}", f"{hf}.b{i + 1}")
        return rows + cls._mlp_rows(cfg, ("readout.0", "readout.2"))
