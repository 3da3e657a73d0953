"""LLaVA composite parity: tiny random `LlavaForConditionalGeneration` (PyTorch, fp32) saved to disk,
opened with `vlm_spatial.load`, equal logits and LM hidden states within 1e-4; bad inputs named."""
import json
import os

import numpy as np
import pytest
import torch
import transformers as tf

import vlm_spatial
from vlm_spatial.convert.hf_io import WeightsError

VOCAB, IMAGE_TOKEN = 96, 95
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=8)


def vision_config(family: str):
    if family == "clip":
        return tf.CLIPVisionConfig(**TINY_VISION, image_size=32, projection_dim=16)
    if family == "siglip":
        return tf.SiglipVisionConfig(**TINY_VISION, image_size=32)
    if family == "siglip2":
        return tf.Siglip2VisionConfig(**TINY_VISION, num_patches=16)
    if family == "aimv2":
        return tf.Aimv2VisionConfig(**TINY_VISION, image_size=32, projection_dim=16)
    raise ValueError(family)


def text_config(family: str):
    common = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "llama":
        return tf.LlamaConfig(**common)
    return tf.Qwen2Config(**common, tie_word_embeddings=True)


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter (norms and position tables included) non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def build_llava(tmp_path, vision: str, text: str = "llama"):
    torch.manual_seed(0)
    select = "default" if vision == "clip" else "full"
    cfg = tf.LlavaConfig(
        vision_config=vision_config(vision), text_config=text_config(text), image_token_id=IMAGE_TOKEN,
        vision_feature_select_strategy=select, vision_feature_layer=-2,
    )
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    randomise(model)
    path = str(tmp_path / f"llava-{vision}-{text}")
    model.save_pretrained(path)
    return model, path


def inputs(vlm, rng, batch=2, text=5):
    n = vlm.config.num_image_tokens
    ids = rng.integers(0, IMAGE_TOKEN, size=(batch, 2 * text + n)).astype(np.int32)
    ids[:, text : text + n] = IMAGE_TOKEN
    return ids


@pytest.mark.parametrize("vision,text", [("clip", "llama"), ("siglip", "qwen2"), ("siglip2", "llama"), ("aimv2", "llama")])
def test_llava_parity(tmp_path, vision, text):
    hf, path = build_llava(tmp_path, vision, text)
    vlm = vlm_spatial.load(path)
    rng = np.random.default_rng(0)
    ids = inputs(vlm, rng)
    kwargs = {}
    if vision == "siglip2":
        patches = rng.normal(size=(2, 16, 3 * 8 * 8)).astype(np.float32)
        mask = np.ones((2, 16), np.int32)
        shapes = np.array([[4, 4], [2, 8]], np.int32)
        kwargs = dict(pixel_attention_mask=torch.tensor(mask), spatial_shapes=torch.tensor(shapes))
        pixels_hf = torch.tensor(patches)
        ours = np.asarray(
            vlm.model(ids, patches, pixel_attention_mask=mask, spatial_shapes=shapes).logits
        )
    else:
        pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
        pixels_hf = torch.tensor(pixels).permute(0, 3, 1, 2)
        ours = vlm.logits(ids, pixels)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), pixel_values=pixels_hf, **kwargs).logits.numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_image_token_count_mismatch_is_named(tmp_path):
    _, path = build_llava(tmp_path, "clip")
    vlm = vlm_spatial.load(path)
    ids = inputs(vlm, np.random.default_rng(0))
    ids[1, 5] = 3  # one image slot fewer in row 1
    with pytest.raises(ValueError, match="row 1 holds 15 image tokens"):
        vlm.logits(ids, np.zeros((2, 32, 32, 3), np.float32))


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    _, path = build_llava(tmp_path, "clip")
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    missing = next(n for n in tensors if n.endswith("layers.1.mlp.up_proj.weight"))
    misshaped = next(n for n in tensors if n.endswith("linear_2.bias"))
    del tensors[missing]
    tensors[misshaped] = np.zeros(7, np.float32)
    save_file(tensors, file)
    with pytest.raises(WeightsError) as err:
        vlm_spatial.load(path)
    assert "layers.1.mlp.up_proj.weight" in str(err.value)
    assert "linear_2.bias: expected (48,), found (7,)" in str(err.value)


def test_unsupported_model_type_is_named(tmp_path):
    _, path = build_llava(tmp_path, "clip")
    cfg_file = os.path.join(path, "config.json")
    cfg = json.load(open(cfg_file))
    cfg["vision_config"]["model_type"] = "hiera"
    json.dump(cfg, open(cfg_file, "w"))
    with pytest.raises(ValueError, match="hiera"):
        vlm_spatial.load(path)


def test_pickle_only_directory_is_refused(tmp_path):
    _, path = build_llava(tmp_path, "clip")
    os.replace(os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin"))
    with pytest.raises(WeightsError, match="never unpickles"):
        vlm_spatial.load(path)
