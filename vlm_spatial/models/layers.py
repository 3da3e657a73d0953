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


class Linear(nnx.Linear):
    """`nnx.Linear` applied to any `[..., in]` input as ONE 2D matmul `[prod(...), in] @ [in, out]`.

    On `[B, T, in]` the weight gradient would otherwise contract two dims (B and T), which XLA:CPU
    lowers to a doubly transposed dot on its slow path (measured 3-4x slower per matmul); the 2D
    form keeps forward, input gradient and weight gradient on the fast GEMM path everywhere."""

    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-1]
        y = super().__call__(x.reshape(-1, x.shape[-1]))
        return y.reshape(*lead, y.shape[-1])


def matmul_2d(x: jax.Array, w: jax.Array, *, transpose_w: bool = False, preferred_element_type=None) -> jax.Array:
    """`x [..., D] @ w [D, N]` (or `w [N, D]` with `transpose_w`) as one 2D matmul -> `[..., N]`,
    for projections that hold a raw weight (the LM head, tied embeddings); see `Linear`."""
    lead = x.shape[:-1]
    dims = (((1,), (1 if transpose_w else 0,)), ((), ()))
    y = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), w, dims, preferred_element_type=preferred_element_type)
    return y.reshape(*lead, y.shape[-1])


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
    """A `Linear` (kernel `[in, out]`, 2D matmul) whose kernel carries logical `axes` and bias `axes[1]`."""
    return Linear(
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


# Blocked attention off cuDNN: queries per block, keys per block. Scores of one block pair of the
# 7B model at 16 rows per device: 16 x 32 x 512 x 512 float32 = 0.5 GiB (the whole [T, S]: 8 GiB).
QUERY_BLOCK = 512
KEY_BLOCK = 512
# Below this many query x key entries per head the plain (unblocked) attention is used (autodiff
# keeps its [T, S] probabilities; that is cheaper than the flash recompute at small sizes).
PLAIN_MAX_SCORES = 256 * 256
_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # a masked score: exp(_NEG - m) == 0, never NaN


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    mask: jnp.ndarray | None = None,
    is_causal: bool = False,
    key_mask: jnp.ndarray | None = None,
    q_offset: jnp.ndarray | int = 0,
    key_block: int | None = None,
) -> jnp.ndarray:
    """Scaled dot-product attention. q `[B, T, H, D]`, k/v `[B, S, K, D]` with H a multiple of K
    (grouped-query attention). Returns `[B, T, H, D]`.

    A query at position p (query t has p = `q_offset` + t; key s has position s) sees the keys
    allowed by all of: `is_causal` (s <= p), `key_mask` bool `[B, S]` (True = real key), `mask`
    bool broadcastable to `[B, H, T, S]`. With `is_causal` and `key_mask` a query also always sees
    the key at its own position, so the rows of padding tokens stay finite (real tokens are
    unaffected: their own key is real and not in their future). A KV cache is the causal case
    with `q_offset` = the first new slot (traced is fine) and `key_mask` = the filled slots.

    Kernels (`attention_kernel` names the one a dtype gets): on CUDA GPUs, bf16/fp16
    self-attention (T == S, no offset) without a general `mask` goes to cuDNN's fused flash
    attention. Elsewhere, causal/padding attention is `flash_attention` (blocks of `QUERY_BLOCK`
    queries x `key_block` keys, default `KEY_BLOCK`, online softmax, its own backward; key blocks
    wholly in a query block's future are skipped, so the cost follows the filled prefix) once T x
    S exceeds `PLAIN_MAX_SCORES` or the offset is traced; a general `mask` (or a small problem)
    gets XLA's plain softmax attention, in `QUERY_BLOCK` query blocks under `jax.checkpoint`.
    A `mask` of shape `[B, 1, 1, S]` is a key mask.
    """
    if mask is not None and key_mask is None and jnp.ndim(mask) == 4 and mask.shape[1:3] == (1, 1):
        mask, key_mask = None, jnp.broadcast_to(mask[:, 0, 0], (q.shape[0], k.shape[1]))
    static_offset = isinstance(q_offset, int)
    if mask is None and static_offset and q_offset == 0 and _cudnn_supported(q, k, v, key_mask is not None):
        return _cudnn_attention(q, k, v, is_causal=is_causal, key_mask=key_mask)
    if mask is None and not (static_offset and q.shape[1] * k.shape[1] <= PLAIN_MAX_SCORES):
        return flash_attention(q, k, v, key_mask=key_mask, is_causal=is_causal, q_offset=q_offset,
                               query_block=QUERY_BLOCK, key_block=key_block or KEY_BLOCK)
    if not static_offset or q_offset:
        raise ValueError("attention: a query offset needs mask=None (causal/key-mask attention)")
    return _blocked_attention(q, k, v, mask=mask, is_causal=is_causal, key_mask=key_mask)


def attention_kernel(dtype) -> str:
    """Which kernel `attention` uses for self-attention of `dtype` on this backend at large T
    (for perf reports): 'cudnn', or 'flash (XLA blocks)'."""
    fake = jax.ShapeDtypeStruct((1, 2 * QUERY_BLOCK, 1, 64), jnp.dtype(dtype))
    return "cudnn" if _cudnn_supported(fake, fake, fake, True) else "flash (XLA blocks, own backward)"


@functools.cache
def _on_cuda() -> bool:
    """Whether the default backend is an NVIDIA GPU (cuDNN is there)."""
    backend = jax.extend.backend.get_backend()
    return backend.platform == "gpu" and "cuda" in backend.platform_version.lower()


def _cudnn_supported(q, k, v, has_mask: bool) -> bool:
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
    """XLA's plain attention, whole (T <= QUERY_BLOCK) or one block of queries at a time (`lax.map`
    over blocks, each under `jax.checkpoint`; T is padded up to a multiple of the block, the
    padding queries see every allowed key and are cut off). Each row is the same computation."""
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


# ---------------------------------------------------------------- flash attention (any backend)
def flash_attention(q, k, v, *, key_mask=None, is_causal: bool = False, q_offset=0,
                    query_block: int = QUERY_BLOCK, key_block: int = KEY_BLOCK) -> jnp.ndarray:
    """Exact softmax attention in blocks, with `attention`'s masking rules (no general mask):
    q `[B, T, H, D]`, k/v `[B, S, K, D]`, key_mask bool `[B, S]` or None, `q_offset` the position
    of query 0 (int or traced int scalar). Returns `[B, T, H, D]` in q's dtype.

    Forward: per block of `query_block` queries, a loop over blocks of `key_block` keys with an
    online softmax (running max and sum, float32), stopping after the last key block a causal
    query block can see (a traced bound: a decode step reads only the filled part of its cache).
    Backward (`jax.custom_vjp`): recomputes each block pair's probabilities from the saved
    log-sum-exp, so no `[T, S]` tensor exists in either pass; memory is O(T + S) per head.
    """
    b, t, h, d = q.shape
    s = k.shape[1]
    bq, bk = min(query_block, t), min(key_block, s)
    km = jnp.ones((b, s), bool) if key_mask is None else jnp.asarray(key_mask).astype(bool)
    off = jnp.asarray(q_offset, jnp.int32)
    return _flash(q, k, v, km, off, is_causal, key_mask is not None, bq, bk)


def _flash_blocks(q, k, v, km, bq: int, bk: int):
    """Padded, blocked views: q `[nq, B, bq, K, G, D]`, k/v `[nk, B, bk, K, D]`, key mask
    `[nk, B, bk]` (padding keys False)."""
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    nq, nk = -(-t // bq), -(-s // bk)
    qb = jnp.pad(q, ((0, 0), (0, nq * bq - t), (0, 0), (0, 0)))
    qb = qb.reshape(b, nq, bq, kh, h // kh, d).swapaxes(0, 1)
    pad_k = ((0, 0), (0, nk * bk - s), (0, 0), (0, 0))
    kb = jnp.pad(k, pad_k).reshape(b, nk, bk, kh, d).swapaxes(0, 1)
    vb = jnp.pad(v, pad_k).reshape(b, nk, bk, kh, d).swapaxes(0, 1)
    kmb = jnp.pad(km, ((0, 0), (0, nk * bk - s))).reshape(b, nk, bk).swapaxes(0, 1)
    return qb, kb, vb, kmb


def _block_allowed(i, j, off, kmb_j, *, is_causal: bool, self_rule: bool, bq: int, bk: int):
    """`[B, 1, 1, bq, bk]` bool: may query block i's row see key block j's column (padding keys never)."""
    q_pos = off + i * bq + jnp.arange(bq)[:, None]
    k_pos = j * bk + jnp.arange(bk)[None, :]
    real = kmb_j[:, None, None, None, :]  # [B, 1, 1, 1, bk]
    if not is_causal:
        return real
    allowed = (k_pos <= q_pos)[None, None, None] & real
    if self_rule:
        allowed = allowed | (k_pos == q_pos)[None, None, None]
    return allowed


def _flash_scores(qi, kj, allowed, scale):
    """Masked scaled scores `[B, K, G, bq, bk]` float32 of q block `[B, bq, K, G, D]` x k block `[B, bk, K, D]`."""
    s = jnp.einsum("bqkgd,bskd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * scale
    return jnp.where(allowed, s, _NEG)


def _online_init(stat: tuple, d: int):
    """Running (max, sum, weighted values) of an online softmax over rows `stat`, head dim `d`."""
    return jnp.full(stat, _NEG, jnp.float32), jnp.zeros(stat, jnp.float32), jnp.zeros(stat + (d,), jnp.float32)


def _online_softmax_step(carry, sc, vj):
    """Fold one key block (scores `sc [..., q, s]` float32, values `vj [B, s, K, D]`) into the
    running (max, sum, weighted values)."""
    m, l, acc = carry
    m_new = jnp.maximum(m, sc.max(-1))
    p = jnp.exp(sc - m_new[..., None])
    corr = jnp.exp(m - m_new)
    pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
    return m_new, l * corr + p.sum(-1), acc * corr[..., None] + pv


def cached_attention(q, k_cache, v_cache, layer, *, key_mask, q_offset, key_block: int = 128) -> jnp.ndarray:
    """Causal attention of T new queries over a stacked KV cache, reading only its filled part.

    q `[B, T, H, D]` (query t at position `q_offset` + t, traced), k_cache/v_cache `[L, B, S, K, D]`
    (this call uses layer `layer`, traced; the new tokens already written), key_mask `[B, S]` bool
    (filled, real slots). `attention`'s causal + key-mask + own-slot rules. Blocks of `key_block`
    slots are sliced straight out of the cache (no copy of a layer's `[B, S, ...]` cache) in a loop
    that stops after the last block holding a query's past, so a step's cost follows the filled
    length, not S. Inference only (the loop's trip count is traced: not reverse-differentiable).
    Returns `[B, T, H, D]` in q's dtype.
    """
    b, t, h, d = q.shape
    _, _, s, kh, _ = k_cache.shape
    bq, bk = min(QUERY_BLOCK, t), min(key_block, s)
    nq = -(-t // bq)
    qb = jnp.pad(q, ((0, 0), (0, nq * bq - t), (0, 0), (0, 0))).reshape(b, nq, bq, kh, h // kh, d)
    off = jnp.asarray(q_offset, jnp.int32)
    scale = d**-0.5
    km = jnp.asarray(key_mask).astype(bool)
    outs = []
    for i in range(nq):
        qi = qb[:, i]
        q_pos = off + i * bq + jnp.arange(bq)[:, None]

        def body(j, carry, qi=qi, q_pos=q_pos):
            start = jnp.minimum(j * bk, s - bk)  # the last block is shifted back inside the cache ...
            k_pos = start + jnp.arange(bk)[None, :]
            kj = jax.lax.dynamic_slice(k_cache, (layer, 0, start, 0, 0), (1, b, bk, kh, d))[0]
            vj = jax.lax.dynamic_slice(v_cache, (layer, 0, start, 0, 0), (1, b, bk, kh, d))[0]
            real = jax.lax.dynamic_slice_in_dim(km, start, bk, axis=1)[:, None, None, None, :]
            allowed = ((k_pos <= q_pos) & (k_pos >= j * bk))[None, None, None] & real  # ... its overlap skipped
            allowed = allowed | ((k_pos == q_pos) & (k_pos >= j * bk))[None, None, None]
            sc = _flash_scores(qi.astype(kj.dtype), kj, allowed, scale)
            return _online_softmax_step(carry, sc, vj)

        n_blocks = jnp.minimum(-(-s // bk), (off + (i + 1) * bq - 1) // bk + 1)
        stat = (b, kh, h // kh, bq)
        m, l, acc = jax.lax.fori_loop(0, n_blocks, body, _online_init(stat, d))
        outs.append(acc / l[..., None])
    o = jnp.stack(outs, 1)  # [B, nq, K, G, bq, D]
    return o.transpose(0, 1, 4, 2, 3, 5).reshape(b, nq * bq, h, d)[:, :t].astype(q.dtype)


def _last_key_block(i, off, nk: int, is_causal: bool, bq: int, bk: int):
    """1 + the last key block query block i can see (all `nk` without a causal mask)."""
    if not is_causal:
        return nk
    return jnp.minimum(nk, (off + (i + 1) * bq - 1) // bk + 1)


def _flash_forward(q, k, v, km, off, is_causal, self_rule, bq, bk):
    """(output `[B, T, H, D]`, log-sum-exp `[nq, B, K, G, bq]` float32)."""
    b, t, h, d = q.shape
    qb, kb, vb, kmb = _flash_blocks(q, k, v, km, bq, bk)
    nq, nk = qb.shape[0], kb.shape[0]
    scale = d**-0.5
    outs, lses = [], []
    for i in range(nq):
        qi = qb[i]
        stat = qi.shape[:1] + (qi.shape[2], qi.shape[3], bq)  # [B, K, G, bq]

        def body(j, carry, qi=qi, i=i):
            kj, vj = jax.lax.dynamic_index_in_dim(kb, j, keepdims=False), jax.lax.dynamic_index_in_dim(vb, j, keepdims=False)
            kmj = jax.lax.dynamic_index_in_dim(kmb, j, keepdims=False)
            allowed = _block_allowed(i, j, off, kmj, is_causal=is_causal, self_rule=self_rule, bq=bq, bk=bk)
            return _online_softmax_step(carry, _flash_scores(qi, kj, allowed, scale), vj)

        m, l, acc = jax.lax.fori_loop(0, _last_key_block(i, off, nk, is_causal, bq, bk), body, _online_init(stat, d))
        outs.append(acc / l[..., None])
        lses.append(m + jnp.log(l))
    o = jnp.stack(outs)  # [nq, B, K, G, bq, D]
    o = o.transpose(1, 0, 4, 2, 3, 5).reshape(b, nq * bq, h, d)[:, :t].astype(q.dtype)
    return o, jnp.stack(lses)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _flash(q, k, v, km, off, is_causal, self_rule, bq, bk):
    return _flash_forward(q, k, v, km, off, is_causal, self_rule, bq, bk)[0]


def _flash_fwd(q, k, v, km, off, is_causal, self_rule, bq, bk):
    o, lse = _flash_forward(q, k, v, km, off, is_causal, self_rule, bq, bk)
    return o, (q, k, v, km, off, o, lse)


def _flash_bwd(is_causal, self_rule, bq, bk, res, do):
    """Flash-attention backward: for each key block, a loop over the query blocks that see it,
    recomputing p = exp(s - lse); dV += p^T dO, dS = p (dO V^T - rowsum(dO * O)), dQ += dS K,
    dK += dS^T Q (scaled). Returns cotangents for (q, k, v) and None for the mask and offset."""
    q, k, v, km, off, o, lse = res
    b, t, h, d = q.shape
    s, kh = k.shape[1], k.shape[2]
    scale = d**-0.5
    qb, kb, vb, kmb = _flash_blocks(q, k, v, km, bq, bk)
    dob = _flash_blocks(do, k, v, km, bq, bk)[0]
    ob = _flash_blocks(o, k, v, km, bq, bk)[0]
    delta = jnp.einsum("nbqkgd,nbqkgd->nbkgq", dob.astype(jnp.float32), ob.astype(jnp.float32))
    nq, nk = qb.shape[0], kb.shape[0]
    dq = jnp.zeros(qb.shape, jnp.float32)
    dks, dvs = [], []
    for j in range(nk):
        kj, vj, kmj = kb[j], vb[j], kmb[j]
        first = 0 if not is_causal else jnp.clip((j * bk - off) // bq, 0, nq)

        def body(i, carry, j=j, kj=kj, vj=vj, kmj=kmj):
            dq, dk, dv = carry
            take = lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False)  # noqa: E731
            qi, doi = take(qb), take(dob)
            allowed = _block_allowed(i, j, off, kmj, is_causal=is_causal, self_rule=self_rule, bq=bq, bk=bk)
            p = jnp.where(allowed, jnp.exp(_flash_scores(qi, kj, allowed, scale) - take(lse)[..., None]), 0.0)
            dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p, doi, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqkgd,bskd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
            ds = p * (dp - take(delta)[..., None]) * scale
            dqi = take(dq) + jnp.einsum("bkgqs,bskd->bqkgd", ds, kj, preferred_element_type=jnp.float32)
            dq = jax.lax.dynamic_update_index_in_dim(dq, dqi, i, 0)
            dk = dk + jnp.einsum("bkgqs,bqkgd->bskd", ds, qi, preferred_element_type=jnp.float32)
            return dq, dk, dv

        zeros = jnp.zeros(kj.shape, jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(first, nq, body, (dq, zeros, zeros))
        dks.append(dk)
        dvs.append(dv)
    dq = dq.swapaxes(0, 1).reshape(b, nq * bq, h, d)[:, :t].astype(q.dtype)
    unblock = lambda xs, like: jnp.stack(xs, 1).reshape(b, nk * bk, kh, d)[:, :s].astype(like.dtype)  # noqa: E731
    return dq, unblock(dks, k), unblock(dvs, v), None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def stack_layers(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int, rngs: nnx.Rngs):
    """Create `num_layers` copies of `make_layer(rngs)` with parameters stacked on a leading
    'layers' axis (different random init per layer), ready for `scan_layers`."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(r):
        return make_layer(r)

    return make(rngs)


def resolve_unroll(layer_unroll: int, num_layers: int) -> int:
    """Layers per iteration of the layer scan for a config's `layer_unroll` (0 = this backend's
    measured default, `DEFAULT_UNROLL`; k >= 1: k layers per iteration, clipped to `num_layers`,
    which is a fully unrolled stack)."""
    if layer_unroll < 0:
        raise ValueError(f"layer_unroll={layer_unroll}: 0 (backend default) or a number of layers >= 1")
    if layer_unroll == 0:
        layer_unroll = DEFAULT_UNROLL.get(jax.default_backend(), 1)
        layer_unroll = num_layers if layer_unroll == "all" else layer_unroll
    return max(1, min(layer_unroll, num_layers))


# layer_unroll=0 per backend. CPU: the whole stack unrolled (perf/train_throughput.py: +X% on the
# small LLaVA's step at 1 thread; a scan writes and re-slices zero-filled activation stacks per
# layer). GPU/TPU: one layer per iteration (compile time and memory independent of depth; not yet
# measured against unrolling on an accelerator).
DEFAULT_UNROLL: dict[str, int | str] = {"cpu": "all", "gpu": 1, "tpu": 1}


def scan_layers(body: Callable, carry, layers: nnx.Module, xs, remat_policy: str = "none", unroll: int = 1):
    """Run `body(carry, layer, x) -> (carry, y)` over stacked `layers` and per-layer inputs `xs`.

    Returns `(final_carry, ys)` with `ys` stacked on a leading layer axis. `remat_policy` is a key
    of `REMAT_POLICIES`; anything but 'none' recomputes activations in the backward pass.
    `unroll` layers run per loop iteration (`resolve_unroll` of a config's `layer_unroll`).
    """
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat_policy!r}; known: {sorted(REMAT_POLICIES)}")
    if remat_policy != "none":
        body = nnx.remat(body, policy=REMAT_POLICIES[remat_policy])
    scanned = nnx.scan(body, in_axes=(nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0), unroll=unroll)
    return scanned(carry, layers, xs)
