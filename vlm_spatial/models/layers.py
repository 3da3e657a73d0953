"""Building blocks shared by the encoder and the decoder: projections with logical sharding axes,
norms, activations, the attention kernel, and stacked+scanned layers.

Logical axis names used on parameters (mapped onto mesh axes only in `vlm_spatial/parallel.py`):
  'embed'  model width            'mlp'   MLP hidden width       'heads' q/k/v/o projection width
  'vocab'  vocabulary             'layers' the stacked-layer axis (added by `stack_layers`)
  None     replicated (small vectors, patch pixels)
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

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


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    mask: jnp.ndarray | None = None,
    is_causal: bool = False,
) -> jnp.ndarray:
    """Scaled dot-product attention through `jax.nn.dot_product_attention` (fused on GPU).

    q `[B, T, H, D]`, k/v `[B, S, K, D]` with H a multiple of K (grouped-query attention);
    `mask` boolean, broadcastable to `[B, H, T, S]`, True = may attend. Returns `[B, T, H, D]`.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)


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
