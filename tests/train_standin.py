"""A small stand-in VLM for the training tests (vision / projector / decoder parts, scanned and
rematerialised decoder layers, logical axis names) - test-only, not part of the package."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial.models import layers as L

V, D, P_, T, IMG = 64, 32, 4, 16, 8  # vocab, width, patch tokens, seq, image side
IMAGE_TOKEN = 3


class Block(nnx.Module):
    def __init__(self, rngs, dtype):
        kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.norm = L.norm("rmsnorm", D, eps=1e-6, **kw)
        self.up = L.linear(D, 2 * D, ("embed", "mlp"), use_bias=False, **kw)
        self.down = L.linear(2 * D, D, ("mlp", "embed"), use_bias=False, **kw)
        self.q = L.linear(D, D, ("embed", "heads"), use_bias=False, **kw)
        self.o = L.linear(D, D, ("heads", "embed"), use_bias=False, **kw)

    def __call__(self, x):
        h = self.norm(x)
        q = self.q(h).reshape(*h.shape[:2], 4, D // 4)
        a = L.attention(q, q, q, is_causal=True).reshape(h.shape)
        x = x + self.o(a)
        return x + self.down(jax.nn.gelu(self.up(self.norm(x))))


class StandIn(nnx.Module):
    def __init__(self, *, rngs, dtype=jnp.float32, remat="full"):
        kw = dict(dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.remat = remat
        self.vision = nnx.Dict(patch=L.linear(IMG * IMG * 3 // P_, D, (None, "embed"), use_bias=True, **kw))
        self.projector = nnx.Dict(
            fc1=L.linear(D, D, ("embed", "mlp"), use_bias=True, **kw),
            fc2=L.linear(D, D, ("mlp", "embed"), use_bias=True, **kw),
        )
        self.decoder = nnx.Dict(
            embed=nnx.Embed(V, D, embedding_init=nnx.initializers.normal(0.02), param_dtype=jnp.float32,
                            dtype=dtype, embedding_metadata={"sharding_names": ("vocab", "embed")}, rngs=rngs),
            layers=L.stack_layers(lambda r: Block(r, dtype), 2, rngs),
            head=L.linear(D, V, ("embed", "vocab"), use_bias=False, **kw),
        )

    def __call__(self, input_ids, pixel_values, *, attention_mask=None, **_):
        b = input_ids.shape[0]
        patches = self.vision["patch"](pixel_values.reshape(b, P_, -1))
        img = self.projector["fc2"](jax.nn.gelu(self.projector["fc1"](patches)))
        h = self.decoder["embed"](input_ids)
        pos = jnp.cumsum(input_ids == IMAGE_TOKEN, axis=1) - 1
        img_tok = jnp.take_along_axis(img, jnp.clip(pos, 0, P_ - 1)[..., None], axis=1)
        h = jnp.where((input_ids == IMAGE_TOKEN)[..., None], img_tok.astype(h.dtype), h)

        def body(x, layer, _):
            return layer(x), None

        h, _ = L.scan_layers(body, h, self.decoder["layers"], jnp.arange(2), remat_policy=self.remat)
        return SimpleNamespace(logits=self.decoder["head"](h).astype(jnp.float32))


def make_batch(rng: np.random.Generator, b: int) -> dict:
    """A batch per the contract: image tokens first, a question, then a label on the answer token
    that depends on the image (left-right brightness), so it is learnable."""
    px = rng.normal(size=(b, IMG, IMG, 3)).astype(np.float32)
    ids = rng.integers(5, V, size=(b, T)).astype(np.int32)
    ids[:, :P_] = IMAGE_TOKEN
    answer = np.where(px[:, :, : IMG // 2].mean(axis=(1, 2, 3)) > px[:, :, IMG // 2 :].mean(axis=(1, 2, 3)), 10, 11)
    ids[:, -1] = answer
    labels = np.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    labels[:, -3:-1] = ids[:, -3:-1]
    mask = np.ones_like(ids)
    mask[0, -6:-4] = 0  # some padding-like positions
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": px}
