"""DINOv2 (with and without registers) and DINOv3 as encoder families: parity with transformers on
every hidden state through the same loaders as the other families (a tower directory, a LLaVA
directory, `convert assemble` at another image size), exact round trips back to transformers, and
the variant configs."""
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file
from test_convert import cli, load_hf_llava, lm_dir, save_tokenizer, tensors, token_ids
from test_vision import _compare, _images, _randomize

import vlm_spatial
from vlm_spatial import runconfig
from vlm_spatial.convert import hf_llava, hf_vision
from vlm_spatial.models import families
from vlm_spatial.models.vision import VisionEncoder

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=8, image_size=32)
VOCAB, IMAGE_TOKEN = 96, 95
CASES = {  # name: (config class, model class, config kwargs)
    "dinov2": ("Dinov2Config", "Dinov2Model", dict(mlp_ratio=2)),
    "dinov2-swiglu": ("Dinov2Config", "Dinov2Model", dict(mlp_ratio=2, use_swiglu_ffn=True, use_mask_token=False)),
    "dinov2-reg": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersModel", dict(mlp_ratio=2, num_register_tokens=3)),
    "dinov3": ("DINOv3ViTConfig", "DINOv3ViTModel", dict(intermediate_size=64, num_register_tokens=2)),
    "dinov3-gated": ("DINOv3ViTConfig", "DINOv3ViTModel", dict(intermediate_size=48, use_gated_mlp=True,
                                                              num_register_tokens=0, rope_theta=50.0)),
}


def hf_config(case: str):
    cfg_cls, _, extra = CASES[case]
    return getattr(tf, cfg_cls)(**TINY, **extra)


def hf_tower(case: str, seed: int = 0):
    torch.manual_seed(seed)
    return _randomize(getattr(tf, CASES[case][1])(hf_config(case)), seed)


def nchw(x: np.ndarray):
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("case", list(CASES))
def test_tower_matches_transformers_on_every_hidden_state(case, tmp_path):
    hf = hf_tower(case)
    hf.save_pretrained(tmp_path)
    cfg, model = hf_vision.load_hf_vision(str(tmp_path))
    assert cfg.family == case.split("-")[0]
    x = _images(b=2, size=32)
    with torch.no_grad():
        ref = hf(pixel_values=nchw(x), output_hidden_states=True)
    out = model(jax.numpy.asarray(x))
    assert out.hidden_states.shape == (3, 2, cfg.num_tokens, 32) and len(ref.hidden_states) == 3
    _compare(out, ref)  # every hidden state, the last one (post-norm) and the pooled CLS, within 1e-4
    # the round trip to transformers' tensors is exact
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert hf_vision.expected_hf_shapes(cfg).keys() | hf_vision.padding_tensors(cfg).keys() == saved.keys()
    params = hf_vision.params_from_hf(saved.__getitem__, cfg)
    back = hf_vision.params_to_hf(params, cfg)
    for name, value in back.items():
        assert np.array_equal(value, saved[name]), name
    assert hf_vision.config_from_hf(hf_vision.config_to_hf(cfg)) == cfg


def test_dinov3_runs_at_any_resolution_as_transformers(tmp_path):
    hf = hf_tower("dinov3-gated")
    hf.save_pretrained(tmp_path)
    _, model = hf_vision.load_hf_vision(str(tmp_path))
    x = np.random.default_rng(1).normal(size=(1, 24, 48, 3)).astype(np.float32)  # a 3x6 grid, not the 4x4 one
    with torch.no_grad():
        ref = hf(pixel_values=nchw(x), output_hidden_states=True)
    _compare(model(jax.numpy.asarray(x)), ref)


@pytest.mark.parametrize("name", ["dinov2-l/14-518", "dinov2-reg-l/14-518", "dinov3-l/16-224"])
def test_presets_have_the_size_of_the_transformers_model_of_their_config(name):
    cfg = families.preset(name)
    hf_cfg = hf_vision.config_to_hf(cfg)
    cls = {"dinov2": tf.Dinov2Model, "dinov2_with_registers": tf.Dinov2WithRegistersModel,
           "dinov3_vit": tf.DINOv3ViTModel}[hf_cfg["model_type"]]
    with torch.device("meta"):
        hf = cls(tf.AutoConfig.for_model(**hf_cfg))
    ours = nnx.eval_shape(lambda: VisionEncoder(cfg, rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(ours))) == sum(p.numel() for p in hf.parameters())
    assert hf_vision.config_from_hf(hf_cfg) == cfg


def test_presets_are_the_published_architectures():
    p = families.VISION_PRESETS
    large = p["dinov2-l/14-518"]
    assert (large.num_patches, large.num_tokens, large.intermediate_size) == (37 * 37, 37 * 37 + 1, 4096)
    reg = p["dinov2-reg-l/14-518"]
    assert reg.num_tokens == 37 * 37 + 5 and hf_vision.config_to_hf(reg)["model_type"] == "dinov2_with_registers"
    shapes = hf_vision.expected_hf_shapes(reg)
    assert shapes["embeddings.position_embeddings"] == (1, 37 * 37 + 1, 1024)
    assert shapes["embeddings.register_tokens"] == (1, 4, 1024)
    v3 = p["dinov3-l/16-224"]
    assert v3.num_tokens == 196 + 5 and v3.rope2d and v3.rope2d_layout == "dinov3" and not v3.uses_abs_pos_emb
    shapes = hf_vision.expected_hf_shapes(v3)
    assert "layer.23.attention.k_proj.bias" not in shapes and shapes["layer.23.attention.q_proj.bias"] == (1024,)


# ----------------------------------------------------------------------------- inside LLaVA
def build_llava(tmp_path, case: str):
    torch.manual_seed(0)
    text = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg = tf.LlavaConfig(vision_config=hf_config(case), text_config=text, image_token_id=IMAGE_TOKEN,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = _randomize(tf.LlavaForConditionalGeneration(cfg), 0)
    path = str(tmp_path / f"llava-{case}")
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("case", ["dinov2-reg", "dinov3-gated"])
def test_llava_with_a_dino_tower_matches_and_round_trips(case, tmp_path):
    hf, src = build_llava(tmp_path, case)
    vlm = vlm_spatial.load(src)
    rng = np.random.default_rng(0)
    ids = token_ids(vlm.config, rng, vocab=IMAGE_TOKEN)
    assert vlm.config.num_image_tokens == 16 + vlm.config.vision.num_register_tokens  # CLS dropped, registers kept
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=nchw(x)).logits.numpy()
    np.testing.assert_allclose(vlm.logits(ids, x), ref, atol=1e-4, rtol=0)

    save_tokenizer(src, IMAGE_TOKEN + 1, image_token=True)
    cli("from-hf", "--src", src, "--out", tmp_path / "ckpt")
    cli("to-hf", "--src", tmp_path / "ckpt", "--out", tmp_path / "out")
    before, after = load_file(os.path.join(src, "model.safetensors")), tensors(tmp_path / "out")
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        assert np.array_equal(after[name], value), name
    assert hf_llava.read_config(str(tmp_path / "out")) == hf_llava.read_config(src)
    with torch.no_grad():
        again = load_hf_llava(tmp_path / "out")(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=nchw(x))
    np.testing.assert_allclose(again.logits.numpy(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case,image_size", [("dinov2-reg", 56), ("dinov2", 24), ("dinov3", 48)])
def test_assemble_at_another_size_matches_transformers_interpolation(case, image_size, tmp_path):
    tower = hf_tower(case, seed=1)
    vdir = str(tmp_path / "vision")
    tower.save_pretrained(vdir)
    ldir, _ = lm_dir(tmp_path, "llama", 96)
    cli("assemble", "--vision", vdir, "--lm", ldir, "--out", tmp_path / "ckpt", "--image_size", image_size,
        *(["--rope2d", "--rope2d_layers", "1"] if case == "dinov2" else []))
    vlm = vlm_spatial.load(str(tmp_path / "ckpt"))
    cfg = vlm.config.vision
    assert cfg.family == case.split("-")[0] and cfg.image_size == image_size
    x = np.random.default_rng(2).normal(size=(2, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():  # transformers' DINO towers interpolate their position table to the input at run time
        ref = tower(pixel_values=nchw(x), output_hidden_states=True).hidden_states
    got = np.asarray(vlm.model.vision(jax.numpy.asarray(x)).hidden_states)
    layers_equal = 2 if case == "dinov2" else len(ref)  # dinov2 here rotates layer 1 (2D-RoPE), so from it on it differs
    for i in range(layers_equal):
        np.testing.assert_allclose(got[i], ref[i].numpy(), atol=1e-4, rtol=0, err_msg=f"hidden_states[{i}]")
    if case == "dinov2":
        assert not np.allclose(got[2], ref[2].numpy(), atol=1e-3)
    cli("to-hf", "--src", tmp_path / "ckpt", "--out", tmp_path / "hf")
    stored = json.load(open(tmp_path / "hf" / "config.json")).get("vlm_spatial")
    assert (stored is not None) == (case == "dinov2")  # only the retrofitted RoPE is beyond transformers
    hf = load_hf_llava(tmp_path / "hf")
    processor = tf.LlavaProcessor.from_pretrained(str(tmp_path / "hf"))
    from PIL import Image

    from vlm_spatial.api import image_config_for
    from vlm_spatial.data.preprocess import preprocess_image

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    batch = processor(images=image, text="<image>\nw1 w2", return_tensors="np")
    assert (batch["input_ids"][0] == vlm.config.image_token_id).sum() == vlm.config.num_image_tokens
    np.testing.assert_allclose(batch["pixel_values"][0].transpose(1, 2, 0),
                               preprocess_image(image, image_config_for(vlm.config)), atol=2e-6)
    if case != "dinov2":  # transformers runs the plain model: the same logits as ours
        ids = token_ids(vlm.config, np.random.default_rng(4), vocab=80)
        with torch.no_grad():
            ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=nchw(x)).logits.numpy()
        np.testing.assert_allclose(vlm.logits(ids, x), ref, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize("variant,family", [("dinov2", "dinov2"), ("dinov2_2drope", "dinov2"), ("dinov3", "dinov3")])
def test_variant_configs(variant, family):
    mod = __import__(f"configs.{variant}", fromlist=["get_config"])
    tiny = mod.get_config("tiny")
    run = runconfig.parse(tiny, 8)
    vision = run.model.vlm_config().vision
    assert vision.family == family and families.preset(tiny.model.vision).family == family
    assert vision.rope2d == (variant != "dinov2") and vision.rope2d_layout == ("dinov3" if family == "dinov3" else "axial")
    with pytest.raises(runconfig.ConfigError, match="init_checkpoint"):
        runconfig.parse(mod.get_config(), 8)
