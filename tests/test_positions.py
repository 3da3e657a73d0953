"""The position-scheme registry: each registered part against its PyTorch / transformers reference.

The learned table's resizes equal `F.interpolate` (bicubic, with and without antialias); the
'dinov3' rotary layout equals `DINOv3ViTRopePositionEmbedding` at several grids; the encoder
switches DINO needs (register tokens, layer scale, no key bias) change the model as described."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict

from vlm_spatial.models import positions, rope
from vlm_spatial.models.families import VISION_PRESETS
from vlm_spatial.models.positions import learned
from vlm_spatial.models.vision import VisionConfig, VisionEncoder


@pytest.mark.parametrize("interpolation,antialias", [("bicubic", False), ("bicubic_antialias", True)])
@pytest.mark.parametrize("grid,new_grid", [(4, 6), (6, 4), (37, 18), (5, 5)])
def test_resize_position_embedding_equals_torch_interpolate(interpolation, antialias, grid, new_grid):
    d = 8
    table = np.random.default_rng(grid * new_grid).normal(size=(1 + grid * grid, d)).astype(np.float32)
    got = learned.resize_position_embedding(table, grid, new_grid, num_prefix=1, interpolation=interpolation)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(table[1:]).double().reshape(1, grid, grid, d).permute(0, 3, 1, 2),
        size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=antialias,
    )[0].permute(1, 2, 0).reshape(-1, d).numpy()
    assert got.dtype == table.dtype and np.array_equal(got[0], table[0])  # the CLS row is kept
    np.testing.assert_allclose(got[1:], ref, atol=1e-6, rtol=0)
    traced = jax.jit(lambda t: learned.resize_position_embedding(t, grid, new_grid, 1, interpolation))(jnp.asarray(table))
    np.testing.assert_allclose(np.asarray(traced), got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("h,w", [(4, 4), (3, 5), (14, 14)])
def test_dinov3_layout_equals_transformers_rope(h, w):
    from transformers import DINOv3ViTConfig
    from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTRopePositionEmbedding

    head_dim, theta = 16, 100.0
    hf = DINOv3ViTRopePositionEmbedding(DINOv3ViTConfig(hidden_size=64, num_attention_heads=4, patch_size=8,
                                                        rope_theta=theta)).eval()
    with torch.no_grad():
        cos_ref, sin_ref = hf(torch.zeros(1, 3, 8 * h, 8 * w))
    rows, cols = rope.grid_positions(h, w)
    cos, sin = positions.rope2d_layout("dinov3").table(rows, cols, jnp.array([[h, w]]), head_dim, theta)
    np.testing.assert_allclose(np.asarray(cos[0]), cos_ref.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(sin[0]), sin_ref.numpy(), atol=1e-6, rtol=0)


def test_unknown_schemes_are_named():
    with pytest.raises(ValueError, match="rope2d_layout.*'axial', 'dinov3'"):
        dataclasses.replace(VISION_PRESETS["tiny-clip"], rope2d_layout="spiral")
    with pytest.raises(ValueError, match="pos_interpolation"):
        dataclasses.replace(VISION_PRESETS["tiny-clip"], pos_interpolation="nearest")
    with pytest.raises(ValueError, match="register"):
        dataclasses.replace(VISION_PRESETS["tiny-siglip2"], num_register_tokens=2)


def _encoder(**changes) -> VisionEncoder:
    return VisionEncoder(VisionConfig(**{**VISION_PRESETS["tiny-clip"].to_dict(), **changes}), rngs=nnx.Rngs(0))


def _images():
    return jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32))


def _shared(model, plain):
    """`plain` with the parameters of `model` it has."""
    theirs = flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    nnx.update(plain, unflatten_dict({k: theirs[k] for k in flatten_dict(nnx.to_pure_dict(nnx.state(plain)))}))
    return plain


def test_register_tokens_sit_after_cls_without_positions_and_count_as_prefix():
    model = _encoder(num_register_tokens=3)
    params = nnx.to_pure_dict(nnx.state(model))
    assert params["register_tokens"].shape == (3, 32) and params["position_embedding"].shape == (17, 32)
    assert model.cfg.num_prefix_tokens == 4 and model.cfg.num_tokens == 20
    emb = np.asarray(model(_images()).hidden_states[0])
    ref = np.asarray(_shared(model, _encoder())(_images()).hidden_states[0])  # embeddings are per token
    np.testing.assert_allclose(emb[:, [0] + list(range(4, 20))], ref, atol=1e-6)
    norm = model.pre_norm(jnp.asarray(params["register_tokens"]))
    np.testing.assert_allclose(emb[:, 1:4], np.broadcast_to(np.asarray(norm), (2, 3, 32)), atol=1e-6)


def test_layer_scale_scales_each_sublayer():
    model = _encoder(layer_scale=True)
    assert nnx.to_pure_dict(nnx.state(model))["layers"]["layer_scale1"].shape == (2, 32)
    ones = model(_images()).hidden_states
    np.testing.assert_allclose(ones, _shared(model, _encoder())(_images()).hidden_states, atol=1e-6)
    model.layers.layer_scale1[...] = jnp.zeros((2, 32))
    model.layers.layer_scale2[...] = jnp.zeros((2, 32))
    hs = np.asarray(model(_images()).hidden_states)
    np.testing.assert_array_equal(hs[1], hs[0])


def test_a_key_bias_changes_no_attention_output():
    with_bias = _encoder()
    with_bias.layers.attn.k_proj.bias[...] = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32)), jnp.float32)
    without = _shared(with_bias, _encoder(key_bias=False))
    assert "bias" not in nnx.to_pure_dict(nnx.state(without))["layers"]["attn"]["k_proj"]
    np.testing.assert_allclose(with_bias(_images()).hidden_states, without(_images()).hidden_states, atol=1e-5)
