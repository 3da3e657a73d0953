"""What keeps the 7B stage-2 step small, checked for exactness: attention in query blocks equals
whole attention (values and gradients), the cuDNN form of the decoder's masking gives the same
real-token outputs, the chunked loss equals the full-logits loss (values and gradients), and the
activation constraint shards over the batch under a mesh and does nothing without one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_spatial import parallel
from vlm_spatial.models import layers
from vlm_spatial.training import step as step_lib

B, T, H, K, D = 2, 11, 4, 2, 8


def qkv(seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=s).astype(np.float32)) for s in ((B, T, H, D), (B, T, K, D), (B, T, K, D)))


# rows: right padding, left padding (its first query has no real key in its past)
KEY_MASK = jnp.asarray([[1] * 8 + [0] * 3, [0] * 3 + [1] * 8], bool)
CACHE_MASK = jnp.asarray(np.random.default_rng(1).random((B, 1, T, T)) > 0.3) | jnp.eye(T, dtype=bool)


@pytest.mark.parametrize(
    "masking",
    [dict(is_causal=True, key_mask=KEY_MASK), dict(is_causal=True), dict(key_mask=KEY_MASK), dict(mask=CACHE_MASK)],
    ids=["causal+padding", "causal", "padding", "general"],
)
def test_blocked_attention_equals_whole(monkeypatch, masking):
    q, k, v = qkv()
    w = jnp.asarray(np.random.default_rng(2).normal(size=(B, T, H, D)).astype(np.float32))

    def run(block):
        monkeypatch.setattr(layers, "QUERY_BLOCK", block)
        f = lambda q, k, v: layers.attention(q, k, v, **masking)  # noqa: E731
        out, grads = jax.value_and_grad(lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2))(q, k, v)
        return f(q, k, v), out, grads

    whole, blocked = run(64), run(4)  # 11 queries: blocks of 4, the last one padded
    for a, b in zip(jax.tree.leaves(blocked), jax.tree.leaves(whole)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(np.asarray(blocked[0])))


def test_cudnn_form_of_decoder_masking_matches_on_real_tokens():
    """The arguments the GPU path hands to cuDNN (causal mask type + padding mask), evaluated by
    XLA here, give the decoder's attention on every real query row, for left and right padding."""
    q, k, v = qkv(3)
    ref = layers.attention(q, k, v, is_causal=True, key_mask=KEY_MASK)
    kw = layers._cudnn_kwargs(q, k, is_causal=True, key_mask=KEY_MASK)
    assert kw["mask"].shape == (B, 1, T, T) and kw["is_causal"]
    fused = jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw)
    real = np.asarray(KEY_MASK)
    np.testing.assert_allclose(np.asarray(fused)[real], np.asarray(ref)[real], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [4, 5, 16])
def test_chunked_cross_entropy_equals_full(chunk):
    """Values and gradients (w.r.t. the hidden state and the output weight) of the chunked loss
    equal those of `shifted_cross_entropy` on the full logits; T=11 is not a multiple of 4 or 5."""
    rng = np.random.default_rng(4)
    h = jnp.asarray(rng.normal(size=(B, T, 6)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(6, 13)).astype(np.float32))
    labels = jnp.asarray(np.where(rng.random((B, T)) < 0.3, -100, rng.integers(0, 13, (B, T))).astype(np.int32))
    logits_of = lambda w: lambda x: jnp.einsum("btd,dv->btv", x, w)  # noqa: E731

    def full(h, w):
        return step_lib.shifted_cross_entropy(logits_of(w)(h), labels)

    def chunked(h, w):
        return step_lib.chunked_shifted_cross_entropy(h, labels, logits_of(w), chunk=chunk)

    (s_full, c_full), g_full = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(h, w)
    (s_chunk, c_chunk), g_chunk = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(h, w)
    assert float(c_chunk) == float(c_full) == float(np.sum(np.asarray(labels)[:, 1:] != -100))
    np.testing.assert_allclose(float(s_chunk), float(s_full), rtol=1e-6)
    for a, b in zip(g_chunk, g_full):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_activation_constraint_follows_the_batch_only_under_a_mesh():
    x = jnp.ones((8, 4, 6))
    assert "sharding_constraint" not in jax.jit(layers.shard_activation).lower(x).as_text()
    mesh = parallel.make_mesh(data=2, fsdp=4)
    with jax.set_mesh(mesh):
        y = jax.jit(lambda x: layers.shard_activation(x) * 2)(x)
        odd = jax.jit(layers.shard_activation).lower(jnp.ones((3, 4))).as_text()
    assert y.sharding.spec[0] == ("data", "fsdp") and not any(y.sharding.spec[1:])
    assert len(y.addressable_shards) == 8 and y.addressable_shards[0].data.shape == (1, 4, 6)
    assert '[{}, {}]' in odd  # a batch of 3 does not split over 8 devices: replicated
