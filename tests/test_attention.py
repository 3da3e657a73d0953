"""The attention kernels against XLA's plain softmax attention (`jax.nn.dot_product_attention`
with the mask spelled out), values and gradients: the flash kernel (blocked, own backward) for
causal / padding / causal+padding masks, grouped-query heads, blocks that do not divide T or S,
left and right padding; the cache kernel for a query block at an offset, with the last key
block shifted back inside a cache whose length is not a multiple of the block."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_spatial.models import layers

B, H, K, D = 2, 4, 2, 8


def rand(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def reference(q, k, v, *, is_causal=False, key_mask=None, q_offset=0):
    """Plain attention with `attention`'s rules written out as one `[B, 1, T, S]` mask."""
    t, s = q.shape[1], k.shape[1]
    q_pos, k_pos = q_offset + np.arange(t)[:, None], np.arange(s)[None, :]
    allowed = np.ones((q.shape[0], 1, t, s), bool)
    if key_mask is not None:
        allowed &= np.asarray(key_mask)[:, None, None, :]
    if is_causal:
        allowed &= (k_pos <= q_pos)[None, None]
        if key_mask is not None:
            allowed |= (k_pos == q_pos)[None, None]
    return jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(allowed), implementation="xla")


def padding(t, left):
    """Row 0 right-padded (last 3 keys), row 1 left-padded (first 3): `[B, t]` bool."""
    m = np.ones((B, t), bool)
    m[0, t - 3 :] = False
    m[1, :3] = False
    return jnp.asarray(m)


@pytest.mark.parametrize("blocks", [(4, 3), (5, 16)], ids=lambda b: f"q{b[0]}k{b[1]}")
@pytest.mark.parametrize("rule", ["causal+padding", "causal", "padding", "none"])
def test_flash_equals_plain_attention_values_and_gradients(rule, blocks):
    t = 11
    q, k, v, w = rand((B, t, H, D), 0), rand((B, t, K, D), 1), rand((B, t, K, D), 2), rand((B, t, H, D), 3)
    kw = dict(is_causal="causal" in rule, key_mask=padding(t, True) if "padding" in rule else None)

    def loss(f):
        return lambda *a: jnp.sum(f(*a) * w)

    flash = lambda q, k, v: layers.flash_attention(q, k, v, query_block=blocks[0], key_block=blocks[1], **kw)  # noqa: E731
    plain = lambda q, k, v: reference(q, k, v, **kw)  # noqa: E731
    got = jax.jit(jax.value_and_grad(loss(flash), argnums=(0, 1, 2)))(q, k, v)
    want = jax.value_and_grad(loss(plain), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(np.asarray(flash(q, k, v)), np.asarray(plain(q, k, v)), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-6)


def test_flash_backward_holds_no_query_by_key_tensor():
    """Forward and backward of 64 queries x 64 keys in blocks of 16: no array in the compiled
    program has both a 64-long query dim and a 64-long key dim (the `[T, S]` scores)."""
    t = 64
    q, k, v = rand((1, t, 2, 8), 0), rand((1, t, 1, 8), 1), rand((1, t, 1, 8), 2)
    f = lambda q, k, v: jnp.sum(layers.flash_attention(q, k, v, is_causal=True, query_block=16, key_block=16))  # noqa: E731
    hlo = jax.jit(jax.grad(f, argnums=(0, 1, 2))).lower(q, k, v).compile().as_text()
    assert "64,64" not in hlo.replace(" ", "")
    plain = lambda q, k, v: jnp.sum(reference(q[:, :, :1], k, v, is_causal=True))  # noqa: E731
    assert "64,64" in jax.jit(jax.grad(plain, argnums=(0, 1, 2))).lower(q, k, v).compile().as_text().replace(" ", "")


@pytest.mark.parametrize("t,offset", [(1, 0), (1, 20), (1, 36), (5, 17), (12, 0)])
def test_cache_attention_reads_filled_blocks(t, offset):
    """T new queries at slots offset.. of a 37-slot cache (layer 1 of 3) in blocks of 8 slots (the
    last block shifted back to slot 29): equal to plain attention over the whole cache."""
    s = 37
    kc, vc = rand((3, B, s, K, D), 4), rand((3, B, s, K, D), 5)
    q = rand((B, t, H, D), 6)
    filled = np.zeros((B, s), bool)
    filled[:, : offset + t] = True
    filled[1, :2] = False  # a left-padded row
    got = layers.cached_attention(q, kc, vc, jnp.int32(1), key_mask=jnp.asarray(filled), q_offset=jnp.int32(offset),
                                  key_block=8)
    want = reference(q, kc[1], vc[1], is_causal=True, key_mask=jnp.asarray(filled), q_offset=offset)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_attention_dispatch_keeps_rules(monkeypatch):
    """`attention` (plain path for small problems, flash above `PLAIN_MAX_SCORES`, a `[B,1,1,S]`
    mask read as a key mask) gives the same values either way."""
    t = 11
    q, k, v = rand((B, t, H, D), 7), rand((B, t, K, D), 8), rand((B, t, K, D), 9)
    km = padding(t, False)
    small = layers.attention(q, k, v, is_causal=True, key_mask=km)
    monkeypatch.setattr(layers, "PLAIN_MAX_SCORES", 0)
    monkeypatch.setattr(layers, "QUERY_BLOCK", 4)
    big = layers.attention(q, k, v, is_causal=True, key_mask=km)
    as_mask = layers.attention(q, k, v, mask=km[:, None, None, :])
    np.testing.assert_allclose(np.asarray(big), np.asarray(small), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(as_mask), np.asarray(reference(q, k, v, key_mask=km)), rtol=1e-5, atol=1e-6)
