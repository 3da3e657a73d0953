"""VisionEncoder against the Hugging Face PyTorch models (tiny random weights), the HF name map,
and the 2D-RoPE switches of the encoder."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from vlm_spatial.convert import hf_io, hf_vision
from vlm_spatial.models import vision
from vlm_spatial.models.families import VISION_PRESETS
from vlm_spatial.models.positions.learned import resize_position_grid
from vlm_spatial.models.vision import VisionConfig, VisionEncoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            patch_size=8, attn_implementation="eager")


def _randomize(model, seed):
    """Non-trivial weights everywhere (HF inits norms to 1/0 and some biases to 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_scale = ("norm" in name or "layrnorm" in name) and name.endswith("weight")
            p.copy_(1.0 + 0.2 * noise if is_scale else 0.2 * noise)
    return model.eval()


def _hf_model(kind, seed=0, **extra):
    t = transformers
    if kind == "clip":
        cfg, cls = t.CLIPVisionConfig(image_size=32, **TINY, **extra), t.CLIPVisionModel
    elif kind == "siglip":
        cfg, cls = t.SiglipVisionConfig(image_size=32, **TINY, **extra), t.SiglipVisionModel
    elif kind == "siglip2":
        cfg, cls = t.Siglip2VisionConfig(num_patches=16, **TINY, **extra), t.Siglip2VisionModel
    else:
        cfg, cls = t.Aimv2VisionConfig(image_size=32, **TINY, **extra), t.Aimv2VisionModel
    torch.manual_seed(seed)
    return _randomize(cls(cfg), seed)


def _compare(ours, theirs, *, pooled=True):
    hs = np.asarray(ours.hidden_states)
    assert hs.shape[0] == len(theirs.hidden_states)
    for i, h in enumerate(theirs.hidden_states):
        np.testing.assert_allclose(hs[i], h.numpy(), atol=TOL, rtol=0, err_msg=f"hidden_states[{i}]")
    np.testing.assert_allclose(ours.last_hidden_state, theirs.last_hidden_state.numpy(), atol=TOL, rtol=0)
    if pooled:
        np.testing.assert_allclose(ours.pooler_output, theirs.pooler_output.numpy(), atol=TOL, rtol=0)


def _images(b=2, size=32, seed=0):
    return np.random.default_rng(seed).normal(size=(b, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("kind", ["clip", "siglip", "aimv2"])
def test_fixed_resolution_matches_hf(kind, tmp_path):
    hf = _hf_model(kind)
    hf.save_pretrained(tmp_path)
    cfg, model = hf_vision.load_hf_vision(str(tmp_path))
    assert cfg.family == kind and cfg.num_patches == 16
    x = _images()
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
    out = model(jnp.asarray(x))
    assert out.hidden_states.shape == (3, 2, cfg.num_tokens, 32)
    _compare(out, ref)


def test_aimv2_native_sincos_matches_hf(tmp_path):
    hf = _hf_model("aimv2", use_head=False, is_native=True)
    hf.save_pretrained(tmp_path)
    cfg, model = hf_vision.load_hf_vision(str(tmp_path))
    assert cfg.pos_emb == "sincos" and cfg.head == "none"
    x = _images(b=1, size=40)  # native resolution: any multiple of the patch
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
    out = model(jnp.asarray(x))
    assert out.pooler_output is None
    _compare(out, ref, pooled=False)


def _naflex_inputs(images_hw, max_patches, p=8, seed=0):
    """Pre-cut patches `[B, P, p*p*3]` in (py, px, C) order, mask and spatial shapes."""
    rng = np.random.default_rng(seed)
    b = len(images_hw)
    patches = rng.normal(size=(b, max_patches, p * p * 3)).astype(np.float32)  # padding is noise too
    mask = np.zeros((b, max_patches), np.int32)
    for i, (h, w) in enumerate(images_hw):
        img = rng.normal(size=(1, h * p, w * p, 3)).astype(np.float32)
        patches[i, : h * w] = np.asarray(vision.patchify(jnp.asarray(img), p))[0]
        mask[i, : h * w] = 1
    return patches, mask, np.array(images_hw, np.int64)


def test_siglip2_naflex_matches_hf(tmp_path):
    hf = _hf_model("siglip2")
    hf.save_pretrained(tmp_path)
    cfg, model = hf_vision.load_hf_vision(str(tmp_path))
    assert cfg.naflex and cfg.pos_grid_size == 4
    # 3x5 (rows shrink, cols grow, 1 padding slot) and 2x2 (antialiased shrink, 12 padding slots)
    patches, mask, shapes = _naflex_inputs([(3, 5), (2, 2)], max_patches=16)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(patches), pixel_attention_mask=torch.from_numpy(mask),
                 spatial_shapes=torch.from_numpy(shapes), output_hidden_states=True)
    out = model(jnp.asarray(patches), pixel_attention_mask=jnp.asarray(mask), spatial_shapes=jnp.asarray(shapes))
    _compare(out, ref)


def test_siglip2_resize_matches_hf_and_torch_interpolate():
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    grid = np.random.default_rng(0).normal(size=(4, 4, 8)).astype(np.float32)
    shapes = [(3, 5), (2, 2), (4, 4), (1, 7), (2, 8), (7, 1)]
    for h, w in shapes:
        got = np.asarray(resize_position_grid(jnp.asarray(grid), jnp.array([[h, w]]), h * w + 2))[0]
        hf = Siglip2VisionEmbeddings.resize_positional_embeddings(
            torch.from_numpy(grid), torch.tensor([[h, w]]), h * w + 2)[0].numpy()
        np.testing.assert_allclose(got, hf, atol=1e-5)
        np.testing.assert_allclose(got[h * w:], np.broadcast_to(got[0], (2, 8)), atol=0)
        if w == 1:  # torch's antialiased kernel disagrees with HF's (and ours) for 1-wide targets
            continue
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(grid).permute(2, 0, 1)[None], size=(h, w), mode="bilinear",
            align_corners=False, antialias=True,
        )[0].permute(1, 2, 0).reshape(h * w, 8).numpy()
        np.testing.assert_allclose(got[: h * w], ref, atol=1e-5)


def test_siglip2_fixed_resolution_path_equals_naflex_full_grid(tmp_path):
    hf = _hf_model("siglip2")
    hf.save_pretrained(tmp_path)
    _, model = hf_vision.load_hf_vision(str(tmp_path))
    x = _images(b=2, size=32)
    patches = np.asarray(vision.patchify(jnp.asarray(x), 8))
    shapes = np.array([[4, 4], [4, 4]])
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(patches), pixel_attention_mask=torch.ones(2, 16, dtype=torch.int32),
                 spatial_shapes=torch.from_numpy(shapes), output_hidden_states=True)
    _compare(model(jnp.asarray(x)), ref)


def test_full_two_tower_directory_and_prefix(tmp_path):
    t = transformers
    cfg = t.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=99, max_position_embeddings=16),
        vision_config=dict(image_size=32, **{k: v for k, v in TINY.items() if k != "attn_implementation"}),
        projection_dim=16,
    )
    torch.manual_seed(0)
    full = _randomize(t.CLIPModel(cfg), 1)
    full.save_pretrained(tmp_path)
    assert any(k.startswith("vision_model.") for k in load_file(str(tmp_path / "model.safetensors")))
    vcfg, model = hf_vision.load_hf_vision(str(tmp_path))
    assert vcfg.family == "clip"
    x = _images()
    with torch.no_grad():
        ref = full.vision_model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
    _compare(model(jnp.asarray(x)), ref)


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip2", "aimv2"])
def test_params_round_trip_and_shapes(kind, tmp_path):
    _hf_model(kind).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    cfg = hf_vision.config_from_hf(hf_io.read_config(str(tmp_path)))
    assert hf_vision.expected_hf_shapes(cfg) == {k: v.shape for k, v in tensors.items()}
    params = hf_vision.params_from_hf(tensors.__getitem__, cfg)
    ours = jax.tree.map(lambda a: a.shape, nnx.to_pure_dict(nnx.state(VisionEncoder(cfg, rngs=nnx.Rngs(0)))))
    assert jax.tree.map(lambda a: a.shape, params) == ours
    back = hf_vision.params_to_hf(params, cfg)
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    _hf_model("siglip").save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    cfg = hf_vision.config_from_hf(dict(model_type="siglip_vision_model", image_size=32, **{
        k: v for k, v in TINY.items() if k != "attn_implementation"}))
    name = "encoder.layers.1.mlp.fc1.weight"
    missing = {k: v for k, v in tensors.items() if k != name}
    with pytest.raises(KeyError, match=name):
        hf_vision.params_from_hf(missing.__getitem__, cfg)
    bad = dict(tensors, **{name: np.zeros((64, 31), np.float32)})
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.mlp\.fc1\.weight.*\(64, 32\).*\(64, 31\)"):
        hf_vision.params_from_hf(bad.__getitem__, cfg)
    bad = dict(tensors, **{"head.attention.in_proj_weight": np.zeros((96, 33), np.float32)})
    with pytest.raises(ValueError, match="head.attention.in_proj_weight"):
        hf_vision.params_from_hf(bad.__getitem__, cfg)


def test_prefixed_vision_tensors_load(tmp_path):
    hf = _hf_model("aimv2")
    hf.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    save_file({"vision_model." + k: v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    _, model = hf_vision.load_hf_vision(str(tmp_path))
    x = _images(b=1)
    with torch.no_grad():
        ref = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
    _compare(model(jnp.asarray(x)), ref)


def test_unsupported_model_type_is_named():
    with pytest.raises(ValueError, match=r"'hiera'.*clip_vision_model.*aimv2"):
        hf_vision.config_from_hf({"model_type": "hiera", "hidden_size": 32})


def test_config_json_round_trip_and_validation():
    for cfg in VISION_PRESETS.values():
        assert VisionConfig.from_dict(cfg.to_dict()) == cfg
    cfg = dataclasses.replace(VISION_PRESETS["tiny-clip"], rope2d=True, rope2d_layers=(0,))
    import json
    assert VisionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="norm"):
        dataclasses.replace(cfg, norm="batchnorm")
    with pytest.raises(ValueError, match="rope2d_layers"):
        dataclasses.replace(cfg, rope2d_layers=(5,))
    with pytest.raises(ValueError, match="bogus"):
        VisionConfig.from_dict({"bogus": 1})


def test_presets_match_public_architectures():
    p = VISION_PRESETS
    assert vision.num_patch_tokens(p["clip-l/14-336"]) == 576 and p["clip-l/14-336"].num_tokens == 577
    assert p["siglip-so400m/14-384"].num_patches == 729 and p["siglip-so400m/14-384"].head_dim == 72
    assert p["siglip2-so400m/16-naflex"].num_patches == 256
    assert p["aimv2-l/14-224"].num_patches == 256 and p["aimv2-l/14-336"].num_patches == 576
    so400m = p["siglip-so400m/14-384"]
    shapes = hf_vision.expected_hf_shapes(so400m)
    assert shapes["embeddings.patch_embedding.weight"] == (1152, 3, 14, 14)
    assert shapes["encoder.layers.26.mlp.fc1.weight"] == (4304, 1152)
    assert shapes["head.attention.in_proj_weight"] == (3456, 1152)


# ----- 2D-RoPE in the encoder ---------------------------------------------------------------

def _pair(cfg, **changes):
    """A plain encoder and one with `changes`, sharing parameters."""
    a = VisionEncoder(cfg, rngs=nnx.Rngs(0))
    b = VisionEncoder(dataclasses.replace(cfg, **changes), rngs=nnx.Rngs(1))
    nnx.update(b, nnx.state(a))
    return a, b


def _tiny3(name):
    return dataclasses.replace(VISION_PRESETS[name], num_layers=3)


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-siglip2"])
def test_rope_off_is_bitwise_plain(name):
    cfg = _tiny3(name)
    x = jnp.asarray(_images())
    plain, off = _pair(cfg, rope2d=False, rope2d_theta=7.0, rope2d_layers=(1,))
    _, empty = _pair(cfg, rope2d=True, rope2d_layers=())  # rotation path present, no layer rotates
    nnx.update(empty, nnx.state(plain))
    ref = plain(x)
    for other in (off, empty):
        out = other(x)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(out)):
            assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-siglip", "tiny-aimv2"])
def test_rope_changes_outputs_from_its_first_layer_on(name):
    cfg = _tiny3(name)
    x = jnp.asarray(_images())
    plain, all_layers = _pair(cfg, rope2d=True)
    _, from_1 = _pair(cfg, rope2d=True, rope2d_layers=(1, 2))
    ref, out_all, out_1 = plain(x).hidden_states, all_layers(x).hidden_states, from_1(x).hidden_states
    assert np.array_equal(ref[0], out_all[0])
    for i in range(1, 4):
        assert not np.allclose(ref[i], out_all[i], atol=1e-4), i
    assert np.array_equal(ref[0], out_1[0]) and np.array_equal(ref[1], out_1[1])
    for i in (2, 3):
        assert not np.allclose(ref[i], out_1[i], atol=1e-4), i
    if cfg.cls_token:  # CLS gets the identity rotation, but still sees rotated patches from layer 1
        assert not np.array_equal(ref[1, :, 0], out_all[1, :, 0])


def test_rope_without_abs_pos_emb_drops_the_parameter():
    cfg = dataclasses.replace(VISION_PRESETS["tiny-siglip"], rope2d=True, keep_abs_pos_emb=False)
    model = VisionEncoder(cfg, rngs=nnx.Rngs(0))
    assert "position_embedding" not in nnx.to_pure_dict(nnx.state(model))
    assert "embeddings.position_embedding.weight" not in hf_vision.expected_hf_shapes(cfg)
    out = model(jnp.asarray(_images()))
    assert np.isfinite(np.asarray(out.last_hidden_state)).all()


def test_naflex_rope_fixed_path_equals_patch_path_and_images_are_independent():
    cfg = dataclasses.replace(VISION_PRESETS["tiny-siglip2"], rope2d=True)
    model = VisionEncoder(cfg, rngs=nnx.Rngs(0))
    x = _images(b=2)
    patches = vision.patchify(jnp.asarray(x), 8)
    full = model(patches, spatial_shapes=jnp.array([[4, 4], [4, 4]]))
    np.testing.assert_allclose(model(jnp.asarray(x)).last_hidden_state, full.last_hidden_state, atol=1e-5)
    # image 0 as 2x3 in a padded slot: its tokens don't depend on its padding or on image 1
    p, mask, shapes = _naflex_inputs([(2, 3), (4, 4)], 16)
    a = model(jnp.asarray(p), pixel_attention_mask=jnp.asarray(mask), spatial_shapes=jnp.asarray(shapes))
    p2 = p.copy()
    p2[0, 6:] += 5.0
    p2[1] += 1.0
    b = model(jnp.asarray(p2), pixel_attention_mask=jnp.asarray(mask), spatial_shapes=jnp.asarray(shapes))
    np.testing.assert_allclose(a.last_hidden_state[0, :6], b.last_hidden_state[0, :6], atol=1e-5)
    np.testing.assert_allclose(a.pooler_output[0], b.pooler_output[0], atol=1e-5)


def test_remat_jit_and_grad():
    cfg = dataclasses.replace(VISION_PRESETS["tiny-clip"], rope2d=True, rope2d_layers=(1,))
    x = jnp.asarray(_images())
    model = VisionEncoder(cfg, rngs=nnx.Rngs(0))
    remat = VisionEncoder(dataclasses.replace(cfg, remat_policy="full"), rngs=nnx.Rngs(0))

    def loss(m):
        return jnp.mean(m(x).hidden_states[-2] ** 2)

    l0, g0 = nnx.jit(nnx.value_and_grad(loss))(model)
    l1, g1 = nnx.jit(nnx.value_and_grad(loss))(remat)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert float(jnp.abs(g0["layers"]["attn"]["q_proj"]["kernel"][...]).sum()) > 0


def test_bf16_compute_with_fp32_params():
    cfg = dataclasses.replace(VISION_PRESETS["tiny-aimv2"], dtype="bfloat16")
    model = VisionEncoder(cfg, rngs=nnx.Rngs(0))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(nnx.state(model)))
    out = model(jnp.asarray(_images()))
    assert out.last_hidden_state.dtype == jnp.bfloat16 and out.hidden_states.dtype == jnp.bfloat16
