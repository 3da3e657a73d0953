"""Building blocks shared by the encoder and the decoder: projections with logical sharding axes,
norms, activations, the attention kernel, activation sharding, and stacked+scanned layers.

Logical axis names used on parameters (mapped onto mesh axes only in `vlm_spatial/parallel.py`):
  'embed'  model width            'mlp'   MLP hidden width       'heads' q/k/v/o projection width
  'vocab'  vocabulary             'layers' the stacked-layer axis (added by `stack_layers`)
  None     replicated (small vectors, patch pixels)
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

from vlm_spatial import parallel

# Shardings are applied at jit boundaries from the logical names (parallel.py), never eagerly.
nnx.use_eager_sharding(False)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    use_bias: bool,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A `nnx.Linear` (kernel `[in, out]`) whose kernel carries logical `axes` and bias `axes[1]`."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nnx.initializers.normal(0.02),
        kernel_metadata={"sharding_names": axes},
        bias_metadata={"sharding_names": (axes[1],)},
        rngs=rngs,
    )


def norm(kind: str, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    """`'layernorm'` (scale+bias) or `'rmsnorm'` (scale only) over the last axis of width `dim`.

    Statistics are computed in float32 whatever `dtype` is, as Hugging Face does.
    """
    meta = {"sharding_names": ("embed",)}
    if kind == "layernorm":
        return nnx.LayerNorm(
            dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
            scale_metadata=meta, bias_metadata=meta, rngs=rngs,
        )
    if kind == "rmsnorm":
        return nnx.RMSNorm(
            dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
            scale_metadata=meta, rngs=rngs,
        )
    raise ValueError(f"unknown norm kind {kind!r} (expected 'layernorm' or 'rmsnorm')")


def quick_gelu(x: jnp.ndarray) -> jnp.ndarray:
    """CLIP's `x * sigmoid(1.702 x)`."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The activation function called `name` in Hugging Face configs."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def shard_activation(x: jax.Array) -> jax.Array:
    """Constrain an activation `[B, ...]` to be split over its batch dim (the 'batch' rule) and
    whole in the others, so activations follow the data, not the FSDP-sharded weights (which XLA
    would otherwise propagate, leaving every device with global-batch activations). A no-op
    without a mesh in context (`parallel.constrain`)."""
    return parallel.constrain(x, ("batch",) + (None,) * (x.ndim - 1))


# XLA attention: queries per block once T exceeds it. Scores of one block of the 7B model at 16
# rows per device and 2048 keys: 16 x 32 x 512 x 2048 float32 = 2 GiB (the whole T: 8 GiB).
QUERY_BLOCK = 512


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    mask: jnp.ndarray | None = None,
    is_causal: bool = False,
    key_mask: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Scaled dot-product attention. q `[B, T, H, D]`, k/v `[B, S, K, D]` with H a multiple of K
    (grouped-query attention). Returns `[B, T, H, D]`.

    A query sees the keys allowed by all of: `is_causal` (key position <= query position, T == S),
    `key_mask` bool `[B, S]` (True = real key), `mask` bool broadcastable to `[B, H, T, S]`. With
    `is_causal` and `key_mask` a query also always sees itself, so the rows of padding tokens stay
    finite (real tokens are unaffected: their own key is real and not in their future).

    On CUDA GPUs, bf16/fp16 self-attention without a general `mask` goes to cuDNN's fused flash
    attention (`_cudnn_supported`; jax's default implementation is XLA's, unfused, on every
    backend): the `[B, H, T, S]` scores never exist. Everywhere else XLA computes exact softmax
    attention, in blocks of `QUERY_BLOCK` queries under `jax.checkpoint` once T exceeds it, so the
    backward pass keeps one block's scores at a time instead of all of them.
    """
    if mask is None and _cudnn_supported(q, k, v, key_mask is not None):
        return _cudnn_attention(q, k, v, is_causal=is_causal, key_mask=key_mask)
    return _blocked_attention(q, k, v, mask=mask, is_causal=is_causal, key_mask=key_mask)


@functools.cache
def _on_cuda() -> bool:
    """Whether the default backend is an NVIDIA GPU (cuDNN is there)."""
    backend = jax.extend.backend.get_backend()
    return backend.platform == "gpu" and "cuda" in backend.platform_version.lower()


def _cudnn_supported(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, has_mask: bool) -> bool:
    """Whether to use cuDNN flash attention: self-attention (T == S) on a CUDA GPU with inputs
    cuDNN takes on every GPU from Ampere on (the conditions jax's cuDNN wrapper checks): one
    half-precision dtype, head dim a multiple of 8 up to 128, even T when a padding mask becomes
    a bias."""
    t, s, d = q.shape[1], k.shape[1], q.shape[-1]
    return (
        _on_cuda()
        and t == s
        and q.dtype == k.dtype == v.dtype
        and q.dtype in (jnp.bfloat16, jnp.float16)
        and d % 8 == 0
        and d <= 128
        and not (has_mask and t % 2)
    )


def _cudnn_kwargs(q: jnp.ndarray, k: jnp.ndarray, *, is_causal: bool, key_mask: jnp.ndarray | None) -> dict:
    """Arguments of `jax.nn.dot_product_attention` that express `attention`'s masking for cuDNN:
    its causal mask type plus the padding keys as a `[B, 1, T, S]` mask (cuDNN turns it into a
    bias; it needs the full T and S dims). Rows of padding queries with no real key in their past
    differ from `attention`'s (they see their past instead of themselves); no real token reads them."""
    kw = {"is_causal": is_causal, "mask": None}
    if key_mask is not None:
        b, t, s = q.shape[0], q.shape[1], k.shape[1]
        kw["mask"] = jnp.broadcast_to(key_mask.astype(bool)[:, None, None, :], (b, 1, t, s))
    return kw


def _cudnn_attention(q, k, v, *, is_causal: bool, key_mask: jnp.ndarray | None) -> jnp.ndarray:
    kw = _cudnn_kwargs(q, k, is_causal=is_causal, key_mask=key_mask)
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn", **kw)


def _allowed(start, size: int, s: int, *, mask, is_causal: bool, key_mask) -> jnp.ndarray | None:
    """Boolean mask `[B or 1, H or 1, size, S]` of `attention`'s rules for queries start..start+size
    (`mask`, if given, already sliced to those queries), or None when every key is allowed."""
    out = mask
    q_pos, k_pos = start + jnp.arange(size)[:, None], jnp.arange(s)[None, :]
    if is_causal:
        causal = (k_pos <= q_pos)[None, None]
        if key_mask is not None:
            causal = (causal & key_mask.astype(bool)[:, None, None, :]) | (k_pos == q_pos)[None, None]
        out = causal if out is None else out & causal
    elif key_mask is not None:
        padding = key_mask.astype(bool)[:, None, None, :]
        out = padding if out is None else out & padding
    return out


def _blocked_attention(q, k, v, *, mask, is_causal: bool, key_mask) -> jnp.ndarray:
    """XLA attention, whole (T <= QUERY_BLOCK) or one block of queries at a time (`lax.map` over
    blocks, each under `jax.checkpoint`; T is padded up to a multiple of the block, the padding
    queries see every allowed key and are cut off). Each row is the same computation either way."""
    b, t, h, d = q.shape
    s = k.shape[1]
    if mask is not None:
        mask = jnp.asarray(mask).astype(bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    rules = dict(is_causal=is_causal, key_mask=key_mask)
    if t <= QUERY_BLOCK:
        return jax.nn.dot_product_attention(q, k, v, mask=_allowed(0, t, s, mask=mask, **rules))

    n = -(-t // QUERY_BLOCK)
    pad = n * QUERY_BLOCK - t
    blocks = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, n, QUERY_BLOCK, h, d).swapaxes(0, 1)
    if mask is not None and mask.shape[2] > 1:
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0)), constant_values=True)

    @jax.checkpoint
    def block(args):
        i, qb = args
        start = i * QUERY_BLOCK
        m = mask
        if m is not None and m.shape[2] > 1:
            m = jax.lax.dynamic_slice_in_dim(m, start, QUERY_BLOCK, axis=2)
        return jax.nn.dot_product_attention(qb, k, v, mask=_allowed(start, QUERY_BLOCK, s, mask=m, **rules))

    out = jax.lax.map(block, (jnp.arange(n), blocks))
    return out.swapaxes(0, 1).reshape(b, n * QUERY_BLOCK, h, d)[:, :t]


def stack_layers(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs):
    """Create `num_layers` copies of `make_layer(rngs)` with parameters stacked on a leading
    'layers' axis (different random init per layer), ready for `scan_layers`."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(r):
        return make_layer(r)

    return make(rngs)


def scan_layers(body: Callable, carry, layers: nnx.Module, xs, remat_policy: str = "none"):
    """Run `body(carry, layer, x) -> (carry, y)` over stacked `layers` and per-layer inputs `xs`.

    Returns `(final_carry, ys)` with `ys` stacked on a leading layer axis. `remat_policy` is a key
    of `REMAT_POLICIES`; anything but 'none' recomputes activations in the backward pass.
    """
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat_policy!r}; known: {sorted(REMAT_POLICIES)}")
    if remat_policy != "none":
        body = nnx.remat(body, policy=REMAT_POLICIES[remat_policy])
    scanned = nnx.scan(body, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
    return scanned(carry, layers, xs)
