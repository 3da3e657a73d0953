"""The encoder's 2D rotary layouts (`model.rope2d_layout`) against their transformers references:
'pixtral' and 'dinov3' tables equal `PixtralVisionRotaryEmbedding` / `DINOv3ViTRopePositionEmbedding`,
and our attention with each equals transformers' attention applying its rotary; 'mixed' (RoPE-Mixed)
computes exactly 'axial' at initialisation, and its learned frequencies get gradients, train and
survive a checkpoint."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from flax.traverse_util import flatten_dict

from vlm_spatial import checkpoint
from vlm_spatial.models import positions, rope
from vlm_spatial.models.families import VISION_PRESETS
from vlm_spatial.models.vision import Attention, VisionEncoder

D, HEADS, THETA = 64, 4, 100.0


def _pixtral_rope(h, w):
    from transformers import PixtralVisionConfig
    from transformers.models.pixtral.modeling_pixtral import PixtralVisionRotaryEmbedding

    cfg = PixtralVisionConfig(hidden_size=D, num_attention_heads=HEADS, head_dim=D // HEADS, image_size=8 * max(h, w),
                              patch_size=8, rope_parameters={"rope_type": "axial", "rope_theta": THETA})
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ids = torch.stack([hh.flatten(), ww.flatten()], dim=-1)
    with torch.no_grad():
        return PixtralVisionRotaryEmbedding(cfg)(torch.zeros(1, dtype=torch.float32), ids)


def _dinov3_rope(h, w):
    from transformers import DINOv3ViTConfig
    from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTRopePositionEmbedding

    hf = DINOv3ViTRopePositionEmbedding(DINOv3ViTConfig(hidden_size=D, num_attention_heads=HEADS, patch_size=8,
                                                        rope_theta=THETA)).eval()
    with torch.no_grad():
        return hf(torch.zeros(1, 3, 8 * h, 8 * w))


REFERENCE = {"pixtral": _pixtral_rope, "dinov3": _dinov3_rope}


@pytest.mark.parametrize("layout", sorted(REFERENCE))
@pytest.mark.parametrize("h,w", [(4, 4), (3, 5)])
def test_reference_layout_tables_equal_transformers(layout, h, w):
    cos_ref, sin_ref = REFERENCE[layout](h, w)
    rows, cols = rope.grid_positions(h, w)
    cos, sin = positions.rope2d_layout(layout).table(rows, cols, jnp.array([[h, w]]), D // HEADS, THETA)
    np.testing.assert_allclose(np.asarray(cos[0]), cos_ref.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(sin[0]), sin_ref.numpy(), atol=1e-6, rtol=0)


def _hf_attention(layout, prefix):
    """transformers' attention module of the layout's model (random weights) and how it is called."""
    torch.manual_seed(0)
    if layout == "pixtral":
        from transformers import PixtralVisionConfig
        from transformers.models.pixtral.modeling_pixtral import PixtralAttention

        return PixtralAttention(PixtralVisionConfig(hidden_size=D, num_attention_heads=HEADS,
                                                    attn_implementation="eager")).eval(), False
    from transformers import DINOv3ViTConfig
    from transformers.models.dinov3_vit.modeling_dinov3_vit import DINOv3ViTAttention

    cfg = DINOv3ViTConfig(hidden_size=D, num_attention_heads=HEADS, key_bias=True, attn_implementation="eager")
    return DINOv3ViTAttention(cfg).eval(), True


@pytest.mark.parametrize("layout", sorted(REFERENCE))
def test_attention_with_the_layout_equals_transformers_attention(layout):
    h, w = 3, 4
    hf, bias = _hf_attention(layout, 0)
    prefix = 1 if layout == "dinov3" else 0  # DINOv3 leaves its CLS/register tokens unrotated
    cfg = dataclasses.replace(VISION_PRESETS["tiny-clip"], hidden_size=D, num_heads=HEADS, rope2d=True,
                              rope2d_layout=layout, rope2d_theta=THETA, qkv_bias=bias)
    ours = Attention(cfg, rngs=nnx.Rngs(0))
    names = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "out_proj": "o_proj"}
    for mine, theirs in names.items():
        lin = getattr(hf, theirs)
        getattr(ours, mine).kernel[...] = jnp.asarray(lin.weight.detach().numpy().T)
        if bias:
            getattr(ours, mine).bias[...] = jnp.asarray(lin.bias.detach().numpy())
    x = np.random.default_rng(1).normal(size=(2, prefix + h * w, D)).astype(np.float32)
    cos_ref, sin_ref = REFERENCE[layout](h, w)
    with torch.no_grad():
        ref = hf(torch.from_numpy(x), position_embeddings=(cos_ref, sin_ref))[0].numpy()
    layout_ = positions.rope2d_layout(layout)
    rows, cols = rope.grid_positions(h, w)
    table = layout_.with_prefix(layout_.table(rows, cols, jnp.array([[h, w]] * 2), D // HEADS, THETA), prefix)
    got = ours(jnp.asarray(x), rope_table=table, use_rope=jnp.asarray(True))
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)


def _encoder(layout, **kw):
    cfg = dataclasses.replace(VISION_PRESETS["tiny-clip"], rope2d=True, rope2d_layout=layout, **kw)
    return VisionEncoder(cfg, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("layers_", [None, (1,)])
def test_mixed_at_init_computes_axial_exactly(layers_):
    axial, mixed = _encoder("axial", rope2d_layers=layers_), _encoder("mixed", rope2d_layers=layers_)
    a, m = flatten_dict(nnx.to_pure_dict(nnx.state(axial))), flatten_dict(nnx.to_pure_dict(nnx.state(mixed)))
    assert set(m) - set(a) == {("layers", "attn", "rope_freqs")}
    assert m[("layers", "attn", "rope_freqs")].shape == (2, mixed.cfg.num_heads, mixed.cfg.head_dim // 2, 2)
    nnx.update(mixed, nnx.State.merge(nnx.state(mixed), nnx.state(axial)))  # the same weights
    pix = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(mixed(pix).hidden_states), np.asarray(axial(pix).hidden_states))


def test_mixed_frequencies_get_gradients_train_and_are_saved(tmp_path):
    enc = _encoder("mixed")
    pix = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    graph, params, rest = nnx.split(enc, nnx.Param, ...)

    def loss(p):
        return jnp.sum(nnx.merge(graph, p, rest)(pix).last_hidden_state[:, :, 0] ** 2)

    grads = nnx.to_pure_dict(jax.grad(loss)(params))["layers"]["attn"]["rope_freqs"]
    g = np.asarray(grads)
    assert np.abs(g).max() > 0
    assert np.abs(g[..., 0][:, :, g.shape[2] // 2:]).max() > 0  # the zero-initialised cross terms learn too
    # a training step moves them, and a checkpoint restores them
    from vlm_spatial.models.presets import vlm_config
    from vlm_spatial.models.vlm import VLM

    cfg = vlm_config("tiny-clip", "tiny-llama")
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, rope2d=True, rope2d_layout="mixed"))
    model = VLM(cfg, rngs=nnx.Rngs(0))
    freqs = model.vision.layers.attn.rope_freqs
    freqs[...] = freqs[...] - 0.01 * jnp.asarray(g)
    checkpoint.write_model(str(tmp_path / "ck"), cfg, nnx.to_pure_dict(nnx.state(model, nnx.Param)), None)
    restored = checkpoint.read_config(str(tmp_path / "ck"))
    assert restored == cfg
    from vlm_spatial.convert import params as params_lib

    target, shardings = params_lib.abstract_params(lambda: VLM(restored, rngs=nnx.Rngs(1)))
    back = checkpoint.read_params(str(tmp_path / "ck"), target, shardings)
    np.testing.assert_array_equal(np.asarray(back["vision"]["layers"]["attn"]["rope_freqs"]), np.asarray(freqs[...]))
