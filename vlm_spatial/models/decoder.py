"""The decoder language model: a LLaMA/Vicuna or Qwen2 causal LM in Flax NNX.

One `Decoder` driven by a frozen `DecoderConfig` covers both families (Qwen2 = LLaMA + q/k/v bias,
optionally tied embeddings; both use grouped-query attention and half-split rotary embeddings).
Parameter names follow the Hugging Face checkpoints so the name map in
`vlm_spatial/convert/hf_decoder.py` is a table:

    embed_tokens.embedding                      [V, D]     ('vocab', 'embed')
    layers.self_attn.{q,k,v}_proj.kernel/bias   [L, D, H*Dh] ('layers', 'embed', 'heads')
    layers.self_attn.o_proj.kernel              [L, H*Dh, D] ('layers', 'heads', 'embed')
    layers.mlp.{gate,up}_proj.kernel            [L, D, F]  ('layers', 'embed', 'mlp')
    layers.mlp.down_proj.kernel                 [L, F, D]  ('layers', 'mlp', 'embed')
    layers.{input,post_attention}_layernorm.scale [L, D]   ('layers', 'embed')
    norm.scale                                  [D]        ('embed',)
    lm_head.kernel                              [D, V]     ('embed', 'vocab')   (absent when tied)

Attention masks: a query attends to keys that are real tokens (attention_mask == 1), not in its
future, and always to itself (so rows of padding tokens stay finite; real tokens are unaffected).
Logits are float32: the final projection multiplies in the compute dtype and accumulates/returns
float32 (`preferred_element_type=float32`), i.e. exact fp32 when `dtype='float32'`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from vlm_spatial.models import layers as L
from vlm_spatial.models import rope
from vlm_spatial.models.positions import rope1d

FAMILIES = ("llama", "qwen2")
# Cache slots per block of the decode attention: a step reads ceil(filled / block) blocks.
DECODE_KEY_BLOCK = 128


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture of the decoder LM. Hashable; `to_dict`/`from_dict` round-trip through JSON.

    `rope_scaling` is None (plain RoPE) or a sorted tuple of `(key, value)` items of a Hugging Face
    `rope_parameters` dict without `rope_theta`, e.g. `(('factor', 8.0), ..., ('rope_type', 'llama3'))`.
    `dtype` is the compute dtype, `param_dtype` the storage dtype (names such as 'float32', 'bfloat16').
    `remat_policy` is a key of `layers.REMAT_POLICIES` ('none' | 'full' | 'dots'); `layer_unroll`
    layers run per iteration of the layer scan (0 = the backend's default, `layers.resolve_unroll`).
    """

    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    layer_unroll: int = 0

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"DecoderConfig.family={self.family!r}; supported: {FAMILIES}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderConfig.num_heads={self.num_heads} is not a multiple of "
                f"num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"DecoderConfig.head_dim={self.head_dim} must be even (rotary pairs)")
        if self.remat_policy not in L.REMAT_POLICIES:
            raise ValueError(
                f"DecoderConfig.remat_policy={self.remat_policy!r}; known: {sorted(L.REMAT_POLICIES)}"
            )
        if isinstance(self.rope_scaling, dict):  # accept a dict, store it hashably
            object.__setattr__(self, "rope_scaling", _freeze_scaling(self.rope_scaling))
        for name in ("dtype", "param_dtype"):
            jnp.dtype(getattr(self, name))  # fails early on an unknown dtype name

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self):
        return jnp.dtype(self.param_dtype)

    @property
    def rope_scaling_dict(self) -> dict | None:
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def replace(self, **changes) -> "DecoderConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rope_scaling"] = self.rope_scaling_dict
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DecoderConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"DecoderConfig.from_dict: unknown fields {sorted(unknown)}")
        d = dict(d)
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = _freeze_scaling(d["rope_scaling"])
        return cls(**d)


def _freeze_scaling(scaling: dict | tuple | None):
    if scaling is None:
        return None
    items = dict(scaling)
    items.pop("rope_theta", None)
    if items.get("rope_type", items.get("type", "default")) == "default" and len(items) <= 1:
        return None
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items.items()))


DECODER_PRESETS: dict[str, DecoderConfig] = {
    # lmsys/vicuna-7b-v1.5 (a LLaMA-2 7B fine-tune)
    "vicuna-7b-v1.5": DecoderConfig(
        family="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_layers=32, num_heads=32, num_kv_heads=32, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=10000.0, max_position_embeddings=4096, tie_word_embeddings=False,
    ),
    # Qwen/Qwen2-0.5B (the -Instruct config says max_position_embeddings=32768; metadata only)
    "qwen2-0.5b": DecoderConfig(
        family="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64, rms_norm_eps=1e-6,
        rope_theta=1000000.0, qkv_bias=True, tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    # Qwen/Qwen2-7B-Instruct (the base config says max_position_embeddings=131072; metadata only)
    "qwen2-7b": DecoderConfig(
        family="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1000000.0, qkv_bias=True, tie_word_embeddings=False,
        max_position_embeddings=32768,
    ),
    "tiny-llama": DecoderConfig(
        family="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0,
        max_position_embeddings=256,
    ),
    "tiny-qwen2": DecoderConfig(
        family="qwen2", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=8, rms_norm_eps=1e-6, rope_theta=1000000.0,
        qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=256,
    ),
}


@flax.struct.dataclass
class KVCache:
    """Key/value cache for generation, a pytree.

    k, v   `[L, B, S, num_kv_heads, head_dim]` (compute dtype), rotated keys / values per slot
    valid  `[B, S]` bool, True where a slot holds a real (non-padding) token
    index  `[]` int32, the next slot to write (same for every row: pad prompts on the left)

    Writing past `S` is not checked inside jit (the write would be clamped): size the cache as
    prompt length + new tokens.
    """

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array

    @property
    def max_len(self) -> int:
        return self.k.shape[2]


@flax.struct.dataclass
class DecoderOutput:
    """logits `[B, T, V]` float32 (None if not requested); hidden_states `[L+1, B, T, D]`
    (0 = embeddings, i = output of layer i, L = after the final norm; None if not requested);
    cache the updated KVCache or None; last_hidden_state `[B, T, D]` after the final norm
    (compute dtype): `Decoder.logits(last_hidden_state) == logits`."""

    logits: jax.Array | None
    hidden_states: jax.Array | None
    cache: KVCache | None
    last_hidden_state: jax.Array


class Attention(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        d, h, k, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = L.linear(d, h * hd, ("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.k_proj = L.linear(d, k * hd, ("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.v_proj = L.linear(d, k * hd, ("embed", "heads"), use_bias=cfg.qkv_bias, **kw)
        self.o_proj = L.linear(h * hd, d, ("heads", "embed"), use_bias=cfg.o_bias, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = h, k, hd

    def qkv(self, x, cos, sin):
        """x `[B,T,D]` -> rotated q `[B,T,H,Dh]`, rotated k and v `[B,T,K,Dh]`."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        return rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin), v

    def out(self, o):
        """o `[B,T,H,Dh]` -> `[B,T,D]`."""
        b, t = o.shape[:2]
        return self.o_proj(o.reshape(b, t, self.num_heads * self.head_dim))


class MLP(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        kw = dict(use_bias=cfg.mlp_bias, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = L.linear(d, f, ("embed", "mlp"), **kw)
        self.up_proj = L.linear(d, f, ("embed", "mlp"), **kw)
        self.down_proj = L.linear(f, d, ("mlp", "embed"), **kw)
        self.act = L.activation(cfg.hidden_act)

    def __call__(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        nkw = dict(eps=cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs)
        self.input_layernorm = L.norm("rmsnorm", cfg.hidden_size, **nkw)
        self.self_attn = Attention(cfg, rngs=rngs)
        self.post_attention_layernorm = L.norm("rmsnorm", cfg.hidden_size, **nkw)
        self.mlp = MLP(cfg, rngs=rngs)


class Decoder(nnx.Module):
    """Causal LM (LLaMA/Vicuna, Qwen2). See the module docstring for the parameter layout."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
            embedding_init=nnx.initializers.normal(0.02),
            embedding_metadata={"sharding_names": ("vocab", "embed")}, rngs=rngs,
        )
        self.layers = L.stack_layers(lambda r: DecoderLayer(cfg, rngs=r), cfg.num_layers, rngs)
        self.norm = L.norm(
            "rmsnorm", cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype, rngs=rngs,
        )
        if not cfg.tie_word_embeddings:
            self.lm_head = L.linear(
                cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), use_bias=False,
                dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype, rngs=rngs,
            )

    # ------------------------------------------------------------------ public API
    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings: `input_ids [B,T]` int -> `[B,T,D]` in the compute dtype."""
        return self.embed_tokens(input_ids)

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KVCache for `batch` rows and `max_len` slots (k/v `[L,batch,max_len,K,Dh]`)."""
        c = self.cfg
        shape = (c.num_layers, batch, max_len, c.num_kv_heads, c.head_dim)
        return KVCache(
            k=jnp.zeros(shape, c.compute_dtype),
            v=jnp.zeros(shape, c.compute_dtype),
            valid=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
        )

    def logits(self, h: jax.Array) -> jax.Array:
        """Final projection `h [B,T,D]` (after the final norm) -> float32 logits `[B,T,V]`."""
        dt = self.cfg.compute_dtype
        tied = self.cfg.tie_word_embeddings
        w = (self.embed_tokens.embedding if tied else self.lm_head.kernel)[...].astype(dt)
        return L.matmul_2d(h.astype(dt), w, transpose_w=tied, preferred_element_type=jnp.float32)

    def __call__(
        self,
        inputs_embeds: jax.Array,
        *,
        positions: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        output_hidden_states: bool = True,
        output_logits: bool = True,
    ) -> DecoderOutput:
        """Run the LM.

        inputs_embeds `[B,T,D]`; positions `[B,T]` int (rotary positions; for left padding use
        `cumsum(mask) - 1` clipped at 0); attention_mask `[B,T]` (1 = real token, 0 = padding,
        None = all real). With a `cache`, the T new tokens are written at slots
        `[cache.index, cache.index + T)` and attend to every valid earlier slot plus causally
        within the block; the returned cache has `index + T`.
        Training passes `output_hidden_states=False, output_logits=False` and computes the loss
        from `last_hidden_state` in chunks (`training.step`): neither the `[L+1,B,T,D]` stack nor
        the `[B,T,V]` logits (and their gradients) then exist.
        Returns DecoderOutput(logits `[B,T,V]` f32 or None, hidden_states `[L+1,B,T,D]` or None,
        cache, last_hidden_state `[B,T,D]`).
        """
        cfg = self.cfg
        b, t, _ = inputs_embeds.shape
        x = L.shard_activation(inputs_embeds.astype(cfg.compute_dtype))
        real = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        cos, sin = rope1d.table(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_dict)

        if cache is None:  # causal over real keys (+ self): the fused kernel's form on GPU
            key_valid = real
        else:  # real keys of filled slots not in the future (+ the query's own slot)
            key_valid = jax.lax.dynamic_update_slice(cache.valid, real, (0, cache.index))

        def attend(layer: DecoderLayer, h, kv):
            """Pre-norm attention sublayer; kv = None or (k_all, v_all, layer_idx): the new k/v
            are written into the stacked cache in place (token-sized update of the carry) and
            attention reads the filled blocks of layer i straight from it."""
            q, k, v = layer.self_attn.qkv(layer.input_layernorm(h), cos, sin)
            if kv is None:
                o = L.attention(q, k.astype(q.dtype), v.astype(q.dtype), is_causal=True, key_mask=real)
            else:
                k_all, v_all, i = kv
                zero = jnp.zeros((), jnp.int32)
                start = (i, zero, cache.index, zero, zero)
                k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
                v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
                o = L.cached_attention(q, k_all, v_all, i, key_mask=key_valid, q_offset=cache.index,
                                       key_block=DECODE_KEY_BLOCK)
                kv = (k_all, v_all)
            return h + layer.self_attn.out(o), kv

        def body(carry, layer: DecoderLayer, i):
            h, kv = carry
            h, kv = attend(layer, L.shard_activation(h), None if kv is None else (*kv, i))
            h = L.shard_activation(h + layer.mlp(layer.post_attention_layernorm(h)))
            return (h, kv), (h if output_hidden_states else None)

        kv0 = None if cache is None else (cache.k, cache.v)
        (h, kv), hs = L.scan_layers(
            body, (x, kv0), self.layers, jnp.arange(cfg.num_layers, dtype=jnp.int32),
            remat_policy=cfg.remat_policy, unroll=L.resolve_unroll(cfg.layer_unroll, cfg.num_layers),
        )
        h = self.norm(h)
        logits = self.logits(h) if output_logits else None

        hidden_states = None
        if output_hidden_states:
            hidden_states = jnp.concatenate([x[None], hs[:-1], h[None].astype(hs.dtype)], axis=0)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(k=kv[0], v=kv[1], valid=key_valid, index=cache.index + t)
        return DecoderOutput(logits=logits, hidden_states=hidden_states, cache=new_cache, last_hidden_state=h)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Rotary positions `[B,T]` int32 for a (left- or right-) padded `attention_mask [B,T]`:
    `cumsum(mask) - 1`, clipped at 0 (what Hugging Face `generate` uses)."""
    m = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0).astype(jnp.int32)
