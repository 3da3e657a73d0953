"""The Hugging Face LLaVA settings a user hits, each against a tiny random
`LlavaForConditionalGeneration` (fp32): the top-level `tie_word_embeddings`, several feature layers,
other projector activations and no projector bias, several images in one row (or none), NaFlex
patches through `vlm.logits`; each exported back with `to-hf` exactly. Unsupported settings are
refused naming them."""
import json
import os

import numpy as np
import pytest
import torch
import transformers as tf
from safetensors.numpy import load_file
from test_convert import cli, load_hf_llava, save_tokenizer, tensors
from test_vlm import IMAGE_TOKEN, randomise, text_config, vision_config

import vlm_spatial
from vlm_spatial.convert import hf_llava

CASES = {  # name: the encoder, LlavaConfig settings, images per row of the batches tried
    # top-level tie only (the text config says False): transformers ties the LM head
    "tied": dict(vision="clip", llava=dict(tie_word_embeddings=True, vision_feature_select_strategy="default"),
                 rows=([1, 1], [0, 1])),
    # two feature layers concatenated, another activation, no projector biases
    "layers": dict(vision="clip", llava=dict(vision_feature_layer=[0, -2], projector_hidden_act="quick_gelu",
                                             multimodal_projector_bias=False, vision_feature_select_strategy="default"),
                   rows=([2, 0],)),
    # NaFlex patches, three feature layers, 'full' selection, SiLU
    "naflex": dict(vision="siglip2", llava=dict(vision_feature_layer=[-1, 1, -3], projector_hidden_act="silu",
                                                vision_feature_select_strategy="full"), rows=([1, 2],)),
}


def build(tmp_path, case):
    spec = CASES[case]
    torch.manual_seed(0)
    cfg = tf.LlavaConfig(vision_config=vision_config(spec["vision"]), text_config=text_config("llama"),
                         image_token_id=IMAGE_TOKEN, **spec["llava"])
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    randomise(model)
    path = str(tmp_path / f"llava-{case}")
    model.save_pretrained(path)
    return model, path


def image_rows(n: int, images_per_row, rng, text: int = 3) -> np.ndarray:
    """Rows `text, <image>*k, text` with each row's own number of images (0 = text only)."""
    width = 2 * text + n * max(images_per_row)
    ids = rng.integers(0, IMAGE_TOKEN, size=(len(images_per_row), width)).astype(np.int32)
    for row, k in enumerate(images_per_row):
        ids[row, text:text + n * k] = IMAGE_TOKEN
    return ids


def images(case, rng, m):
    """(our kwargs, transformers' kwargs) for `m` images."""
    if CASES[case]["vision"] == "siglip2":
        shapes = np.array([[4, 4], [2, 8], [3, 5]][:m], np.int32)
        mask = (np.arange(16)[None] < shapes.prod(1, keepdims=True)).astype(np.int32)
        patches = rng.normal(size=(m, 16, 3 * 8 * 8)).astype(np.float32)
        ours = dict(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        return ours, {k: torch.tensor(v) for k, v in ours.items()}
    x = rng.normal(size=(m, 32, 32, 3)).astype(np.float32)
    return dict(pixel_values=x), dict(pixel_values=torch.tensor(x).permute(0, 3, 1, 2))


@pytest.mark.parametrize("case", list(CASES))
def test_llava_setting_matches_transformers_and_round_trips(case, tmp_path):
    hf, src = build(tmp_path, case)
    vlm = vlm_spatial.load(src)
    cfg = vlm.config
    assert (cfg.decoder.tie_word_embeddings, cfg.projector_bias) == (case == "tied", case != "layers")
    rng = np.random.default_rng(0)
    # one image per row, two in a row and none in the other, a text-only row first, ...
    for per_row in CASES[case]["rows"]:
        ids = image_rows(cfg.num_image_tokens, per_row, rng)
        ours, theirs = images(case, rng, sum(per_row))
        with torch.no_grad():
            ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), **theirs).logits.numpy()
        np.testing.assert_allclose(vlm.logits(ids, **ours), ref, atol=1e-4, rtol=0, err_msg=str(per_row))

    save_tokenizer(src, IMAGE_TOKEN + 1, image_token=True)
    cli("from-hf", "--src", src, "--out", tmp_path / "ckpt")
    assert vlm_spatial.load(str(tmp_path / "ckpt")).config == cfg  # model_config.json records every setting
    cli("to-hf", "--src", tmp_path / "ckpt", "--out", tmp_path / "out")
    before, after = load_file(os.path.join(src, "model.safetensors")), tensors(tmp_path / "out")
    assert sorted(after) == sorted(before)
    for name, value in before.items():
        assert np.array_equal(after[name], value), name
    assert hf_llava.read_config(str(tmp_path / "out")) == cfg
    written = json.load(open(tmp_path / "out" / "config.json"))
    for key, value in CASES[case]["llava"].items():
        assert written[key] == value, key
    with torch.no_grad():
        again = load_hf_llava(tmp_path / "out")(input_ids=torch.tensor(ids, dtype=torch.long), **theirs).logits.numpy()
    np.testing.assert_allclose(again, ref, atol=1e-5, rtol=0)


def test_image_counts_that_fit_no_layout_are_named(tmp_path):
    _, src = build(tmp_path, "tied")
    vlm = vlm_spatial.load(src)
    n = vlm.config.num_image_tokens
    ids = image_rows(n, [2, 1], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"image tokens of 3 images \(per row: \[2, 1\]\) but pixel_values holds 2"):
        vlm.logits(ids, np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="NaFlex"):
        vlm.logits(ids, np.zeros((3, 32, 32, 3), np.float32), spatial_shapes=np.ones((3, 2), np.int32))


@pytest.mark.parametrize("key,value", [("projector_hidden_act", "relu"), ("vision_feature_layer", "last")])
def test_unsupported_llava_settings_are_named(tmp_path, key, value):
    _, src = build(tmp_path, "tied")
    path = os.path.join(src, "config.json")
    cfg = json.load(open(path))
    json.dump(dict(cfg, **{key: value}), open(path, "w"))
    with pytest.raises(ValueError, match=f"{key}={value!r}"):
        vlm_spatial.load(src)


def test_generate_takes_preprocessed_naflex_images(tmp_path):
    from test_generate import LoadedVLM, load_tokenizer, synthetic, tiny

    synthetic.train_tokenizer(synthetic.coverage_text(), str(tmp_path / "tok"))
    tok = load_tokenizer(str(tmp_path / "tok"))
    cfg, model = tiny("tiny-siglip2", vocab=len(tok))
    vlm = LoadedVLM(model, cfg, tok)
    wide = np.random.default_rng(0).integers(0, 255, (20, 60, 3), np.uint8)
    fields = {k: v[0] for k, v in vlm.image_inputs([wide], rows=1).items()}
    prompt = ["Is there a red square?"]
    assert vlm.generate([fields], prompt, max_new_tokens=3) == vlm.generate([wide], prompt, max_new_tokens=3)
    with pytest.raises(ValueError, match="pixel_attention_mask"):
        vlm.generate([{"pixel_values": fields["pixel_values"]}], prompt, max_new_tokens=3)


def test_every_knob_is_recorded_and_what_transformers_cannot_express_is_named(tmp_path, capsys):
    import dataclasses

    from flax import nnx

    from vlm_spatial import checkpoint
    from vlm_spatial.convert.export import notes
    from vlm_spatial.models.presets import vlm_config
    from vlm_spatial.models.vlm import VLM

    knobs = dict(rope2d=True, rope2d_layout="dinov3", rope2d_theta=30.0, rope2d_layers=(1,), keep_abs_pos_emb=False,
                 pos_interpolation="bicubic_antialias", num_register_tokens=2, key_bias=False)
    cfg = vlm_config("tiny-clip", "tiny-llama", vision_overrides=knobs, vision_feature_layer=(0, -1),
                     projector_act="silu", projector_bias=False)
    params = nnx.to_pure_dict(nnx.state(VLM(cfg, rngs=nnx.Rngs(0))))
    checkpoint.write_model(str(tmp_path / "ckpt"), cfg, params)
    assert vlm_spatial.load(str(tmp_path / "ckpt")).config == cfg  # every knob restored by load()
    # registers and a key without bias change CLIP's tensors: transformers' CLIP cannot hold them
    with pytest.raises(ValueError, match=r"vision.key_bias=False.*vision.num_register_tokens=2"):
        hf_llava.config_to_hf(cfg)
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, num_register_tokens=0, key_bias=True))
    hf = hf_llava.config_to_hf(cfg)
    assert hf["vlm_spatial"] == {"vision": {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()
                                            if k not in ("num_register_tokens", "key_bias")}}
    assert hf_llava.config_from_hf(hf) == cfg
    said = " ".join(notes(cfg))
    assert "WITHOUT its RoPE" in said and "'pos_interpolation': 'bicubic_antialias'" in said
    assert "vision_tower.embeddings.position_embedding.weight" in said  # written as zeros for transformers
