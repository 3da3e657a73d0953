"""The image encoder: one ViT driven by a frozen `VisionConfig`, covering every registered
encoder family (`vlm_spatial.models.families`: the Hugging Face `CLIPVisionModel`,
`SiglipVisionModel`, `Siglip2VisionModel` (NaFlex), `Aimv2VisionModel`, ...), each optionally
with a 2D rotary embedding on q and k (`vlm_spatial.models.positions`).

The families differ only in switches of the config (what each family *is* - its presets, HF
names, preprocessing - lives in its module under `families/`):

  family   norm       MLP                 biases           CLS  pre-norm  post-norm  head   pos-emb
  clip     layernorm  fc1/fc2 quick_gelu  all but patch    yes  yes       pooled     cls    learned
  siglip   layernorm  fc1/fc2 gelu_tanh   all              no   no        sequence   map    learned
  siglip2  layernorm  fc1/fc2 gelu_tanh   all              no   no        sequence   map    learned, resized (NaFlex)
  aimv2    rmsnorm    swiglu silu         patch only       no   no        sequence   none   learned (or sincos)
                      (+ RMSNorm after the patch embedding)

Inputs: NHWC float pixels `[B, H, W, C]`, or for NaFlex encoders pre-cut patches
`[B, P, p*p*C]` (flattened in (py, px, C) order) with `pixel_attention_mask [B, P]` and
`spatial_shapes [B, 2]` (patch rows, patch cols per image). A NaFlex encoder also takes NHWC
pixels: the image is cut into patches in the same order and its spatial shape is the full grid.

The patch embedding is a Linear over flattened patches for every family (a stride-p conv is the
same map); `vlm_spatial.convert.hf_vision` reorders the conv kernels.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial.models import layers, positions, rope

NORMS = ("layernorm", "rmsnorm")
MLPS = ("mlp", "swiglu")
POST_NORMS = ("none", "sequence", "pooled")
HEADS = ("none", "cls", "map", "aimv2")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Architecture of a `VisionEncoder`. All fields are JSON-serialisable (`to_dict`/`from_dict`).

    `family` names the registered family (`vlm_spatial.models.families`) whose HF names,
    preprocessing and export files apply; the architecture is given by the switches below it.
    """

    family: str = "clip"  # a registered family: HF names, preprocessing constants, export files
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    patch_size: int = 8
    image_size: int = 32  # square input side for the fixed-resolution (NHWC) path
    num_channels: int = 3
    norm: str = "layernorm"  # 'layernorm' | 'rmsnorm'
    norm_eps: float = 1e-5
    mlp: str = "mlp"  # 'mlp' (fc1 -> act -> fc2) | 'swiglu' (down(act(gate) * up))
    act: str = "quick_gelu"  # a key of layers.ACTIVATIONS
    qkv_bias: bool = True  # biases of q/k/v/out projections
    key_bias: bool = True  # with qkv_bias: k has one too (DINOv3's has none; it shifts no score)
    mlp_bias: bool = True
    patch_bias: bool = True
    cls_token: bool = False
    num_register_tokens: int = 0  # learned prefix tokens after the CLS token (DINOv2-reg, DINOv3)
    mask_token: bool = False  # holds the masked-patch embedding of masked-image pretraining (unused here)
    layer_scale: bool = False  # per-channel scales on each sublayer's output before the residual (DINO)
    pre_norm: bool = False  # CLIP's `pre_layrnorm` on the embeddings
    patch_norm: bool = False  # AIMv2's RMSNorm right after the patch embedding
    post_norm: str = "sequence"  # 'none' | 'sequence' (on last_hidden_state) | 'pooled' (CLIP)
    head: str = "none"  # 'none' | 'cls' (token 0) | 'map' (SigLIP probe) | 'aimv2' (AIMv2 pooling)
    pos_emb: str = "learned"  # a registered absolute scheme: 'learned' | 'sincos' (AIMv2 native) | 'none'
    naflex: bool = False  # SigLIP2 NaFlex: Linear patches, learned grid resized per image
    pos_grid: int | None = None  # side of the learned grid; None = image_size // patch_size
    pos_interpolation: str = "bicubic"  # how the learned grid is resized to another grid (positions.learned)
    max_num_patches: int = 256  # NaFlex: patches per image slot (the token count)
    rope2d: bool = False
    rope2d_layout: str = "axial"  # a registered 2D rotary layout (positions.rope2d)
    rope2d_theta: float = 100.0
    rope2d_layers: tuple[int, ...] | None = None  # None = all layers
    keep_abs_pos_emb: bool = True  # with rope2d: still add the absolute position embedding
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    remat_policy: str = "none"  # a key of layers.REMAT_POLICIES
    layer_unroll: int = 0  # layers per scan iteration; 0 = the backend's default (layers.resolve_unroll)

    def __post_init__(self):
        if self.rope2d_layers is not None and not isinstance(self.rope2d_layers, tuple):
            object.__setattr__(self, "rope2d_layers", tuple(self.rope2d_layers))
        from vlm_spatial.models import families

        choices = {
            "family": families.names(), "norm": NORMS, "mlp": MLPS, "post_norm": POST_NORMS,
            "head": HEADS, "pos_emb": tuple(positions.ABSOLUTE), "rope2d_layout": tuple(positions.ROPE2D),
            "pos_interpolation": positions.learned.INTERPOLATIONS, "remat_policy": tuple(layers.REMAT_POLICIES),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"VisionConfig.{name}={getattr(self, name)!r}; expected one of {allowed}")
        layers.activation(self.act)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"VisionConfig.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.rope2d and self.head_dim % 4:
            raise ValueError(f"VisionConfig.rope2d needs head_dim divisible by 4, got {self.head_dim}")
        if self.rope2d_layers is not None:
            bad = [i for i in self.rope2d_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"VisionConfig.rope2d_layers has {bad} outside [0, {self.num_layers})")
        if self.num_register_tokens < 0:
            raise ValueError(f"VisionConfig.num_register_tokens={self.num_register_tokens} must be >= 0")
        if self.naflex and self.num_prefix_tokens:
            raise ValueError("VisionConfig: naflex encoders have no CLS or register tokens "
                             "(cls_token must be False, num_register_tokens 0)")
        if self.naflex and self.pos_emb == "sincos":
            raise ValueError("VisionConfig: naflex encoders use pos_emb 'learned' or 'none'")
        if self.head == "cls" and not self.cls_token:
            raise ValueError("VisionConfig.head='cls' needs cls_token=True")
        if self.post_norm == "pooled" and self.head == "none":
            raise ValueError("VisionConfig.post_norm='pooled' needs a head")
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def grid_size(self) -> int:
        """Patches per side of the fixed-resolution input."""
        return self.image_size // self.patch_size

    @property
    def pos_grid_size(self) -> int:
        """Side of the learned position-embedding grid."""
        return self.pos_grid if self.pos_grid is not None else self.grid_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per image: `max_num_patches` for NaFlex, else `(image_size/patch)^2`."""
        return self.max_num_patches if self.naflex else self.grid_size**2

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the CLS token, if any, then the register tokens."""
        return int(self.cls_token) + self.num_register_tokens

    @property
    def num_tokens(self) -> int:
        """Sequence length N of the encoder: prefix tokens (CLS, registers) plus patch tokens."""
        return self.num_prefix_tokens + self.num_patches

    @property
    def uses_abs_pos_emb(self) -> bool:
        """Whether an absolute position embedding is added (and, if learned, exists as a param)."""
        return self.pos_emb != "none" and (self.keep_abs_pos_emb or not self.rope2d)

    def rope_layer_mask(self) -> np.ndarray:
        """`[num_layers]` bool: which layers rotate q and k (all False without rope2d)."""
        if not self.rope2d:
            return np.zeros(self.num_layers, bool)
        if self.rope2d_layers is None:
            return np.ones(self.num_layers, bool)
        return np.isin(np.arange(self.num_layers), self.rope2d_layers)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["rope2d_layers"] is not None:
            d["rope2d_layers"] = list(d["rope2d_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"VisionConfig.from_dict: unknown fields {unknown}")
        return cls(**d)


def num_patch_tokens(cfg: VisionConfig, *, include_cls: bool = False) -> int:
    """Number of image tokens the encoder yields per image (patches, plus CLS if asked and present)."""
    return cfg.num_tokens if include_cls else cfg.num_patches


class VisionOutput(NamedTuple):
    """Encoder outputs (a pytree).

    last_hidden_state `[B, N, D]`: after the post-norm where Hugging Face applies it (not CLIP).
    pooler_output `[B, D]` or None: the head's output (CLIP: post-normed CLS).
    hidden_states `[L+1, B, N, D]`: index 0 = embeddings as HF's `hidden_states[0]` (CLIP: after
      `pre_layrnorm`), index i = output of layer i (no post-norm).
    """

    last_hidden_state: jax.Array
    pooler_output: jax.Array | None
    hidden_states: jax.Array


def _param(rngs: nnx.Rngs, shape, axes, dtype, std: float = 0.02) -> nnx.Param:
    return nnx.Param(
        nnx.initializers.normal(std)(rngs.params(), shape, dtype), sharding_names=axes
    )


def _kw(cfg: VisionConfig) -> dict:
    return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


class Attention(nnx.Module):
    """Multi-head self-attention with optional 2D rotary embedding on q and k."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        d, kw = cfg.hidden_size, _kw(cfg)
        self.num_heads = cfg.num_heads
        self.q_proj = layers.linear(d, d, ("embed", "heads"), use_bias=cfg.qkv_bias, rngs=rngs, **kw)
        self.k_proj = layers.linear(d, d, ("embed", "heads"), use_bias=cfg.qkv_bias and cfg.key_bias, rngs=rngs, **kw)
        self.v_proj = layers.linear(d, d, ("embed", "heads"), use_bias=cfg.qkv_bias, rngs=rngs, **kw)
        self.out_proj = layers.linear(d, d, ("heads", "embed"), use_bias=cfg.qkv_bias, rngs=rngs, **kw)
        self.rope_layout = cfg.rope2d_layout
        self.rope_freqs = positions.rope2d_layout(cfg.rope2d_layout).param(cfg, rngs) if cfg.rope2d else None

    def __call__(self, x, *, mask=None, rope_table=None, use_rope=None):
        """x `[B, N, D]`; mask bool broadcastable to `[B, H, N, N]`; rope_table the encoder's rotary
        table (`RopeLayout.table`, with prefix) or None; use_rope a bool scalar (this layer
        rotates). -> `[B, N, D]`."""
        b, n, d = x.shape
        split = lambda t: t.reshape(b, n, self.num_heads, d // self.num_heads)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        if rope_table is not None:
            freqs = None if self.rope_freqs is None else self.rope_freqs[...]
            cos, sin = positions.rope2d_layout(self.rope_layout).rotation(rope_table, freqs)
            q = jnp.where(use_rope, rope.apply_rope(q, cos, sin), q)
            k = jnp.where(use_rope, rope.apply_rope(k, cos, sin), k)
        out = layers.attention(q, k, v, mask=mask)
        return self.out_proj(out.reshape(b, n, d))


class MLP(nnx.Module):
    """`fc2(act(fc1 x))`, or SwiGLU `down(act(gate x) * up x)`."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        d, f, kw, bias = cfg.hidden_size, cfg.intermediate_size, _kw(cfg), cfg.mlp_bias
        self.act = layers.activation(cfg.act)
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = layers.linear(d, f, ("embed", "mlp"), use_bias=bias, rngs=rngs, **kw)
            self.up_proj = layers.linear(d, f, ("embed", "mlp"), use_bias=bias, rngs=rngs, **kw)
            self.down_proj = layers.linear(f, d, ("mlp", "embed"), use_bias=bias, rngs=rngs, **kw)
        else:
            self.fc1 = layers.linear(d, f, ("embed", "mlp"), use_bias=bias, rngs=rngs, **kw)
            self.fc2 = layers.linear(f, d, ("mlp", "embed"), use_bias=bias, rngs=rngs, **kw)

    def __call__(self, x):
        if self.swiglu:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nnx.Module):
    """Pre-norm transformer block: `x + attn(norm1 x)`, then `x + mlp(norm2 x)`; with
    `layer_scale` each sublayer's output is scaled per channel (`layer_scale1`, `layer_scale2`)."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        kw = _kw(cfg)
        self.norm1 = layers.norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs, **kw)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = layers.norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs, **kw)
        self.mlp = MLP(cfg, rngs=rngs)
        if cfg.layer_scale:
            ones = lambda: nnx.Param(jnp.ones((cfg.hidden_size,), kw["param_dtype"]), sharding_names=("embed",))
            self.layer_scale1, self.layer_scale2 = ones(), ones()
        else:
            self.layer_scale1 = self.layer_scale2 = None

    def __call__(self, x, *, mask=None, rope_table=None, use_rope=None):
        h = self.attn(self.norm1(x), mask=mask, rope_table=rope_table, use_rope=use_rope)
        x = x + (h if self.layer_scale1 is None else h * self.layer_scale1[...].astype(h.dtype))
        h = self.mlp(self.norm2(x))
        return x + (h if self.layer_scale2 is None else h * self.layer_scale2[...].astype(h.dtype))


class MAPHead(nnx.Module):
    """SigLIP multihead attention pooling: a learned probe attends to the tokens, then
    `y + mlp(layernorm(y))`. HF's fused `in_proj` is kept as separate q/k/v projections."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        d, kw = cfg.hidden_size, _kw(cfg)
        self.num_heads = cfg.num_heads
        self.dtype = kw["dtype"]
        self.probe = _param(rngs, (1, 1, d), (None, None, "embed"), kw["param_dtype"], 1.0)
        self.q_proj = layers.linear(d, d, ("embed", "heads"), use_bias=True, rngs=rngs, **kw)
        self.k_proj = layers.linear(d, d, ("embed", "heads"), use_bias=True, rngs=rngs, **kw)
        self.v_proj = layers.linear(d, d, ("embed", "heads"), use_bias=True, rngs=rngs, **kw)
        self.out_proj = layers.linear(d, d, ("heads", "embed"), use_bias=True, rngs=rngs, **kw)
        self.layernorm = layers.norm(cfg.norm, d, eps=cfg.norm_eps, rngs=rngs, **kw)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x, key_mask=None):
        """x `[B, N, D]`, key_mask `[B, N]` bool (True = real token) or None -> `[B, D]`."""
        b, n, d = x.shape
        h = self.num_heads
        probe = jnp.broadcast_to(self.probe[...].astype(self.dtype), (b, 1, d))
        q = self.q_proj(probe).reshape(b, 1, h, d // h)
        k = self.k_proj(x).reshape(b, n, h, d // h)
        v = self.v_proj(x).reshape(b, n, h, d // h)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = self.out_proj(layers.attention(q, k, v, mask=mask).reshape(b, 1, d))
        y = y + self.mlp(self.layernorm(y))
        return y[:, 0]


class AIMv2Head(nnx.Module):
    """AIMv2 attention pooling: a learned CLS query over k/v projections, then `output_proj`."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        d, kw = cfg.hidden_size, _kw(cfg)
        self.num_heads = cfg.num_heads
        self.dtype = kw["dtype"]
        self.cls_token = _param(rngs, (1, 1, d), (None, None, "embed"), kw["param_dtype"])
        self.k_proj = layers.linear(d, d, ("embed", "heads"), use_bias=cfg.qkv_bias, rngs=rngs, **kw)
        self.v_proj = layers.linear(d, d, ("embed", "heads"), use_bias=cfg.qkv_bias, rngs=rngs, **kw)
        self.output_proj = layers.linear(d, d, ("heads", "embed"), use_bias=True, rngs=rngs, **kw)

    def __call__(self, x, key_mask=None):
        """x `[B, N, D]`, key_mask `[B, N]` bool or None -> `[B, D]`."""
        b, n, d = x.shape
        h = self.num_heads
        q = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (b, 1, d)).reshape(b, 1, h, d // h)
        k = self.k_proj(x).reshape(b, n, h, d // h)
        v = self.v_proj(x).reshape(b, n, h, d // h)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return self.output_proj(layers.attention(q, k, v, mask=mask).reshape(b, d))


def patchify(pixels: jax.Array, patch_size: int) -> jax.Array:
    """NHWC `[B, H, W, C]` -> `[B, (H//p)*(W//p), p*p*C]`, row-major patches flattened (py, px, C).

    Trailing rows/columns that do not fill a patch are dropped, as a stride-p conv does
    (SigLIP so400m/14 at 384 px uses 378 px)."""
    b, hgt, wid, c = pixels.shape
    p = patch_size
    pixels = pixels[:, : hgt - hgt % p, : wid - wid % p]
    x = pixels.reshape(b, hgt // p, p, wid // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (hgt // p) * (wid // p), p * p * c)


class VisionEncoder(nnx.Module):
    """The ViT image encoder of every supported family (see the module docstring).

    Parameters (pure-dict paths): `patch_embedding` (Linear `[p*p*C, D]`), `class_embedding [D]`,
    `position_embedding [num_positions, D]`, `register_tokens [R, D]`, `mask_token [D]`,
    `patch_norm`, `pre_norm`, `layers` (stacked on a leading 'layers' axis: norm1,
    attn.{q,k,v,out}_proj, attn.rope_freqs (a learned rotary layout's), norm2, mlp.*,
    layer_scale{1,2}), `post_norm`, `head`.
    """

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        kw = _kw(cfg)
        d, pdt = cfg.hidden_size, kw["param_dtype"]
        p2c = cfg.patch_size**2 * cfg.num_channels
        self.patch_embedding = layers.linear(p2c, d, (None, "embed"), use_bias=cfg.patch_bias, rngs=rngs, **kw)
        self.class_embedding = _param(rngs, (d,), ("embed",), pdt) if cfg.cls_token else None
        self.position_embedding = positions.absolute(cfg.pos_emb).param(cfg, rngs)
        r = cfg.num_register_tokens
        self.register_tokens = _param(rngs, (r, d), (None, "embed"), pdt) if r else None
        self.mask_token = nnx.Param(jnp.zeros((d,), pdt), sharding_names=("embed",)) if cfg.mask_token else None
        norm = lambda: layers.norm(cfg.norm, d, eps=cfg.norm_eps, rngs=rngs, **kw)
        self.patch_norm = norm() if cfg.patch_norm else None
        self.pre_norm = norm() if cfg.pre_norm else None
        self.layers = layers.stack_layers(lambda r: EncoderLayer(cfg, rngs=r), cfg.num_layers, rngs)
        self.post_norm = norm() if cfg.post_norm != "none" else None
        self.head = {"map": MAPHead, "aimv2": AIMv2Head}.get(cfg.head, lambda c, rngs: None)(cfg, rngs=rngs)

    def _embed(self, patches, spatial_shapes, grid_hw):
        """patches `[B, P, p*p*C]` -> token embeddings `[B, N, D]`: CLS (if any), registers (if
        any, added after the position embedding, which has no rows for them), patches."""
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        x = self.patch_embedding(patches)
        if self.patch_norm is not None:
            x = self.patch_norm(x)
        b, _, d = x.shape
        if self.class_embedding is not None:
            cls = jnp.broadcast_to(self.class_embedding[...].astype(dt), (b, 1, d))
            x = jnp.concatenate([cls, x], axis=1)
        table = None if self.position_embedding is None else self.position_embedding[...]
        x = positions.absolute(cfg.pos_emb).add(x, table, cfg, grid_hw=grid_hw, spatial_shapes=spatial_shapes)
        if self.register_tokens is not None:
            c = int(cfg.cls_token)
            reg = jnp.broadcast_to(self.register_tokens[...].astype(dt), (b, cfg.num_register_tokens, d))
            x = jnp.concatenate([x[:, :c], reg, x[:, c:]], axis=1)
        return x

    def __call__(
        self,
        pixel_values: jax.Array,
        *,
        pixel_attention_mask: jax.Array | None = None,
        spatial_shapes: jax.Array | None = None,
    ) -> VisionOutput:
        """Encode images.

        pixel_values: NHWC float `[B, H, W, C]` (H = W = image_size unless naflex), or for NaFlex
          encoders pre-cut patches `[B, P, p*p*C]` in (py, px, C) order.
        pixel_attention_mask: NaFlex only, `[B, P]` (1 = real patch); default from spatial_shapes.
        spatial_shapes: NaFlex only, int `[B, 2]` patch (rows, cols) of each image; required with
          pre-cut patches.
        Returns `VisionOutput` (hidden_states `[L+1, B, N, D]`, N = `num_prefix_tokens` + P).
        """
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        pixel_values = jnp.asarray(pixel_values).astype(dt)
        key_mask = None
        if pixel_values.ndim == 4:
            b, hgt, wid, _ = pixel_values.shape
            gh, gw = hgt // cfg.patch_size, wid // cfg.patch_size
            if not cfg.naflex and self.position_embedding is not None and (hgt, wid) != (cfg.image_size,) * 2:
                raise ValueError(
                    f"input images are {hgt}x{wid}, the encoder expects {cfg.image_size}x{cfg.image_size}"
                )
            patches = patchify(pixel_values, cfg.patch_size)
            spatial_shapes = jnp.tile(jnp.array([[gh, gw]], jnp.int32), (b, 1))
            rows, cols = rope.grid_positions(gh, gw)
        elif pixel_values.ndim == 3 and cfg.naflex:
            if spatial_shapes is None:
                raise ValueError("NaFlex patch inputs [B, P, p*p*C] need spatial_shapes [B, 2]")
            patches, gh, gw = pixel_values, None, None
            n_p = patches.shape[1]
            spatial_shapes = jnp.asarray(spatial_shapes, jnp.int32)
            if pixel_attention_mask is None:
                pixel_attention_mask = jnp.arange(n_p)[None] < jnp.prod(spatial_shapes, -1, keepdims=True)
            key_mask = jnp.asarray(pixel_attention_mask).astype(bool)
            rows, cols = rope.naflex_grid_positions(spatial_shapes, n_p)
        else:
            raise ValueError(
                f"pixel_values must be NHWC [B, H, W, C]"
                f"{' or NaFlex patches [B, P, p*p*C]' if cfg.naflex else ''}; got shape {pixel_values.shape}"
            )

        x = self._embed(patches, spatial_shapes, (gh, gw))
        if self.pre_norm is not None:
            x = self.pre_norm(x)

        rope_table = None
        if cfg.rope2d:
            layout = positions.rope2d_layout(cfg.rope2d_layout)
            rope_table = layout.table(rows, cols, spatial_shapes, cfg.head_dim, cfg.rope2d_theta)
            rope_table = layout.with_prefix(rope_table, cfg.num_prefix_tokens)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]

        def body(h, layer, use_rope):
            h = layers.shard_activation(layer(layers.shard_activation(h), mask=attn_mask, rope_table=rope_table,
                                              use_rope=use_rope))
            return h, h

        final, ys = layers.scan_layers(
            body, x, self.layers, jnp.asarray(cfg.rope_layer_mask()), cfg.remat_policy,
            layers.resolve_unroll(cfg.layer_unroll, cfg.num_layers),
        )
        hidden_states = jnp.concatenate([x[None], ys], axis=0)

        last = final
        if cfg.post_norm == "sequence":
            last = self.post_norm(final)
        pooled = None
        if cfg.head == "cls":
            pooled = last[:, 0]
            if cfg.post_norm == "pooled":
                pooled = self.post_norm(pooled)
        elif self.head is not None:
            pooled = self.head(last, key_mask)
        return VisionOutput(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states)
