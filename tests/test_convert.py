"""`python -m vlm_spatial.convert`: HF LLaVA -> checkpoint -> HF round trips (identical tensors, equal
logits in transformers), assembling from tiny HF parts (parity with each part, including the
bicubic position-table resize against HF's `interpolate_pos_encoding`), the 2D-RoPE export, sharded
streaming loads, and the bad inputs, each named."""
import contextlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file
from test_vlm import IMAGE_TOKEN, build_llava, randomise, text_config, vision_config

import vlm_spatial
from vlm_spatial import checkpoint, parallel
from vlm_spatial.convert import hf_io, hf_llava
from vlm_spatial.convert.__main__ import main
from vlm_spatial.models.vlm import VLM

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_tokenizer(path, num_tokens: int, image_token: bool = False) -> None:
    """A word-level fast tokenizer with `num_tokens` entries (`<image>` last when asked)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(num_tokens - 3 - image_token)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if image_token:
        hf.add_special_tokens({"additional_special_tokens": ["<image>"]})
    hf.save_pretrained(path)


def cli(*args) -> None:
    assert main([str(a) for a in args]) == 0


def load_hf_llava(path):
    """The exported directory in transformers, asserting nothing was missing, unused or mis-shaped."""
    model, info = tf.LlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info
    return model.eval()


def tensors(path) -> dict:
    ckpt = hf_io.HFCheckpoint(str(path))
    return {name: ckpt[name] for name in ckpt}


def pixel_inputs(family, rng, size=32, batch=2):
    """(ours, HF kwargs) pixel inputs: NHWC/NCHW images, or NaFlex patches for siglip2."""
    if family == "siglip2":
        patches = rng.normal(size=(batch, 16, 3 * 8 * 8)).astype(np.float32)
        shapes = np.array([[4, 4], [2, 8]], np.int32)[:batch]
        mask = np.ones((batch, 16), np.int32)
        ours = dict(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        return ours, {k: torch.tensor(v) for k, v in ours.items()}
    x = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    return dict(pixel_values=x), dict(pixel_values=torch.tensor(x).permute(0, 3, 1, 2))


@nnx.jit
def encode(vision, pixels, mask, shapes):
    return vision(pixels, pixel_attention_mask=mask, spatial_shapes=shapes).hidden_states


@nnx.jit
def vlm_logits(model, ids, pixels, mask, shapes):
    return model(ids, pixels, pixel_attention_mask=mask, spatial_shapes=shapes).logits


def naflex_args(ours: dict) -> tuple:
    return ours["pixel_values"], ours.get("pixel_attention_mask"), ours.get("spatial_shapes")


def token_ids(cfg, rng, batch=2, text=4, vocab=IMAGE_TOKEN):
    ids = rng.integers(3, vocab, size=(batch, 2 * text + cfg.num_image_tokens)).astype(np.int32)
    ids[:, text : text + cfg.num_image_tokens] = cfg.image_token_id
    return ids


# ----------------------------------------------------------------------------- HF -> ours -> HF
@pytest.mark.parametrize("vision,text", [("clip", "llama"), ("siglip", "qwen2"), ("siglip2", "qwen2"), ("aimv2", "llama")])
def test_round_trip_is_exact(tmp_path, vision, text):
    hf, src = build_llava(tmp_path, vision, text)
    save_tokenizer(src, IMAGE_TOKEN + 1, image_token=True)
    cli("from-hf", "--src", src, "--out", tmp_path / "ckpt")
    cli("to-hf", "--src", tmp_path / "ckpt", "--out", tmp_path / "out", "--max_shard_size", "40KB")

    assert len([f for f in os.listdir(tmp_path / "out") if f.endswith(".safetensors")]) > 1
    index = json.load(open(tmp_path / "out" / "model.safetensors.index.json"))
    before, after = load_file(os.path.join(src, "model.safetensors")), tensors(tmp_path / "out")
    assert sorted(after) == sorted(before) == sorted(index["weight_map"])
    for name, value in before.items():
        assert after[name].dtype == value.dtype and np.array_equal(after[name], value), name
    assert hf_llava.read_config(str(tmp_path / "out")) == hf_llava.read_config(src)

    again = load_hf_llava(tmp_path / "out")
    rng = np.random.default_rng(0)
    ids = token_ids(hf_llava.read_config(src), rng)
    _, pixels = pixel_inputs(vision, rng)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), **pixels).logits.numpy()
        out = again(input_ids=torch.tensor(ids, dtype=torch.long), **pixels).logits.numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_bfloat16_export_and_sharded_streaming_load(tmp_path):
    _, src = build_llava(tmp_path, "clip", "llama")
    plain = vlm_spatial.load(src)
    mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
    with jax.set_mesh(mesh):
        sharded = vlm_spatial.load(src)
    want = parallel.param_shardings(nnx.state(nnx.eval_shape(lambda: VLM(plain.config, rngs=nnx.Rngs(0)))), mesh)
    got = nnx.to_pure_dict(nnx.state(sharded.model))
    assert any(s.spec != () for s in jax.tree.leaves(want))
    jax.tree.map(lambda a, s: a.sharding.is_equivalent_to(s, a.ndim) or pytest.fail(f"{a.shape}: {a.sharding}"), got, want)
    jax.tree.map(np.testing.assert_array_equal, got, nnx.to_pure_dict(nnx.state(plain.model)))

    cli("from-hf", "--src", src, "--out", tmp_path / "ckpt")
    cli("to-hf", "--src", tmp_path / "ckpt", "--out", tmp_path / "bf16", "--dtype", "bfloat16")
    assert json.load(open(tmp_path / "bf16" / "config.json"))["dtype"] == "bfloat16"
    half = vlm_spatial.load(str(tmp_path / "bf16"), param_dtype="bfloat16")
    full = load_file(os.path.join(src, "model.safetensors"))
    q = "vision_tower.encoder.layers.1.self_attn.q_proj.weight"
    exported = tensors(tmp_path / "bf16")[q]
    assert str(exported.dtype) == "bfloat16"
    np.testing.assert_array_equal(exported, full[q].astype(exported.dtype))
    kernel = nnx.to_pure_dict(nnx.state(half.model))["vision"]["layers"]["attn"]["q_proj"]["kernel"]
    assert kernel.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(np.asarray(kernel[1]).T, exported)


# ----------------------------------------------------------------------------- assemble
def vision_dir(tmp_path, family):
    """A tiny random HF vision model saved to disk (CLIP as a two-tower CLIPModel) and the module
    that gives reference features."""
    if family == "clip":
        text = tf.CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=16)
        model = tf.CLIPModel(tf.CLIPConfig(text_config=text.to_dict(), vision_config=vision_config("clip").to_dict(),
                                           projection_dim=16))
        tower = model.vision_model
    else:
        cls = {"siglip": tf.SiglipVisionModel, "siglip2": tf.Siglip2VisionModel, "aimv2": tf.Aimv2VisionModel}[family]
        model = tower = cls(vision_config(family))
    randomise(model, seed=1)
    path = str(tmp_path / f"vision-{family}")
    model.eval().save_pretrained(path)
    if family == "clip":  # as in openai/clip-vit-large-patch14-336: saved position_ids buffers
        weights = load_file(os.path.join(path, "model.safetensors"))
        weights.update({f"{t}_model.embeddings.position_ids": np.arange(17)[None] for t in ("text", "vision")})
        save_file(weights, os.path.join(path, "model.safetensors"))
    return path, tower


def lm_dir(tmp_path, family, num_tokens):
    model = {"llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM}[family](text_config(family))
    randomise(model, seed=2)
    path = str(tmp_path / f"lm-{family}")
    model.eval().save_pretrained(path)
    save_tokenizer(path, num_tokens)
    return path, model


@pytest.mark.parametrize("family,text,image_size,sharded", [
    ("clip", "llama", 52, False),  # 4x4 -> 6x6 grid (52 px: the last 4 px are cut, as 256 px are at /14)
    ("siglip", "qwen2", 24, False),  # 4x4 -> 3x3
    ("siglip2", "llama", None, False),
    ("aimv2", "qwen2", None, True),  # assembled on an 8-device mesh, checked on one device
])
def test_assemble_matches_its_parts_and_exports(tmp_path, family, text, image_size, sharded):
    vdir, tower = vision_dir(tmp_path, family)
    num_tokens = 96 if text == "llama" else 80  # llama: <image> = 96 is past the vocab -> grows to 128
    ldir, lm = lm_dir(tmp_path, text, num_tokens)
    size = ["--image_size", image_size] if image_size else []
    with jax.set_mesh(parallel.make_mesh(fsdp=4, tensor=2)) if sharded else contextlib.nullcontext():
        cli("assemble", "--vision", vdir, "--lm", ldir, "--out", tmp_path / "ckpt", *size)
    vlm = vlm_spatial.load(str(tmp_path / "ckpt"))
    cfg = vlm.config
    image_token_id = len(tf.AutoTokenizer.from_pretrained(ldir))  # appended to the LM's own tokenizer
    assert cfg.image_token_id == image_token_id and cfg.decoder.vocab_size == (128 if text == "llama" else 96)
    assert cfg.vision.image_size == (image_size or 32)
    assert vlm.tokenizer.convert_ids_to_tokens(cfg.image_token_id) == "<image>"

    rng = np.random.default_rng(0)
    ours, theirs = pixel_inputs(family, rng, size=image_size or 32)
    extra = {"interpolate_pos_encoding": True} if image_size else {}
    with torch.no_grad():
        ref = tower(**theirs, output_hidden_states=True, **extra)
    got = encode(vlm.model.vision, *naflex_args(ours))
    for i, h in enumerate(ref.hidden_states):
        np.testing.assert_allclose(got[i], h.numpy(), atol=1e-4, rtol=0, err_msg=f"hidden_states[{i}]")

    ids = rng.integers(0, 96, size=(2, 7)).astype(np.int32)
    with torch.no_grad():
        ref_logits = lm(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(vlm.logits(ids)[..., :96], ref_logits, atol=1e-4, rtol=0)

    cli("to-hf", "--src", tmp_path / "ckpt", "--out", tmp_path / "hf")
    hf = load_hf_llava(tmp_path / "hf")
    ids = token_ids(cfg, rng, vocab=80)
    ours, theirs = pixel_inputs(family, rng, size=image_size or 32)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), **theirs).logits.numpy()
    np.testing.assert_allclose(vlm_logits(vlm.model, ids, *naflex_args(ours)), ref, atol=1e-4, rtol=0)

    processor = tf.LlavaProcessor.from_pretrained(str(tmp_path / "hf"))
    if family != "siglip2":  # LlavaProcessor counts image tokens from NCHW pixels, not NaFlex patches
        from PIL import Image

        from vlm_spatial.api import image_config_for
        from vlm_spatial.data.preprocess import preprocess_image

        image = Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8))
        batch = processor(images=image, text="<image>\nw1 w2", return_tensors="np")
        assert (batch["input_ids"][0] == cfg.image_token_id).sum() == cfg.num_image_tokens
        np.testing.assert_allclose(batch["pixel_values"][0].transpose(1, 2, 0),
                                   preprocess_image(image, image_config_for(cfg)), atol=2e-6)


def test_rope2d_export_round_trips_exactly(tmp_path, capsys):
    vdir, _ = vision_dir(tmp_path, "siglip")
    ldir, _ = lm_dir(tmp_path, "qwen2", 80)
    cli("assemble", "--vision", vdir, "--lm", ldir, "--out", tmp_path / "ckpt", "--rope2d", "--rope2d_theta", "50",
        "--rope2d_layers", "0,2", "--no_abs_pos_emb", "--image_size", "24")
    cli("to-hf", "--src", tmp_path / "ckpt", "--out", tmp_path / "hf")
    assert "runs this model WITHOUT its RoPE" in capsys.readouterr().out
    stored = json.load(open(tmp_path / "hf" / "config.json"))["vlm_spatial"]
    assert stored == {"vision": {"rope2d": True, "rope2d_theta": 50.0, "rope2d_layers": [0, 2],
                                 "keep_abs_pos_emb": False}}
    hf = load_hf_llava(tmp_path / "hf")  # plain SigLIP tower: gets a zero position table
    assert not hf.model.vision_tower.embeddings.position_embedding.weight.any()

    cli("from-hf", "--src", tmp_path / "hf", "--out", tmp_path / "back")
    cfg = checkpoint.read_config(str(tmp_path / "ckpt"))
    assert checkpoint.read_config(str(tmp_path / "back")) == cfg
    assert cfg.vision.rope2d_layers == (0, 2) and not cfg.vision.uses_abs_pos_emb
    target = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0)))))
    a = checkpoint.read_params(str(tmp_path / "ckpt"), target)
    b = checkpoint.read_params(str(tmp_path / "back"), target)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


# ----------------------------------------------------------------------------- bad inputs
def fails_with(capsys, *args) -> str:
    assert main([str(a) for a in args]) == 1
    return capsys.readouterr().err


def test_bad_tensors_are_listed_by_name(tmp_path, capsys):
    vdir, _ = vision_dir(tmp_path, "aimv2")
    ldir, _ = lm_dir(tmp_path, "llama", 80)
    file = os.path.join(ldir, "model.safetensors")
    weights = load_file(file)
    del weights["model.layers.1.mlp.up_proj.weight"]
    weights["model.layers.0.self_attn.k_proj.weight"] = np.zeros((5, 48), np.float32)
    weights["model.layers.0.self_attn.rotary.freqs"] = np.zeros(3, np.float32)
    save_file(weights, file)
    err = fails_with(capsys, "assemble", "--vision", vdir, "--lm", ldir, "--out", tmp_path / "ckpt")
    assert "1 missing tensor(s):\n    model.layers.1.mlp.up_proj.weight" in err
    assert "1 unexpected tensor(s):\n    model.layers.0.self_attn.rotary.freqs" in err
    assert "model.layers.0.self_attn.k_proj.weight: expected (24, 48), found (5, 48)" in err
    assert "Traceback" not in err and not os.path.exists(tmp_path / "ckpt")


def test_unsupported_architectures_are_named(tmp_path, capsys):
    vdir, _ = vision_dir(tmp_path, "siglip")
    ldir, _ = lm_dir(tmp_path, "llama", 80)
    for path, model_type, supported in ((vdir, "hiera", "siglip_vision_model"), (ldir, "mistral", "qwen2")):
        cfg_file = os.path.join(path, "config.json")
        original = json.load(open(cfg_file))
        json.dump(dict(original, model_type=model_type), open(cfg_file, "w"))
        err = fails_with(capsys, "assemble", "--vision", vdir, "--lm", ldir, "--out", tmp_path / "ckpt")
        assert repr(model_type) in err and supported in err
        json.dump(original, open(cfg_file, "w"))
    err = fails_with(capsys, "from-hf", "--src", ldir, "--out", tmp_path / "ckpt")
    assert "model_type 'llama' is not supported as a whole VLM" in err and "assemble" in err


def test_pickle_only_directory_is_refused_with_the_fix(tmp_path, capsys):
    vdir, _ = vision_dir(tmp_path, "siglip")
    ldir, _ = lm_dir(tmp_path, "llama", 80)
    os.replace(os.path.join(vdir, "model.safetensors"), os.path.join(vdir, "pytorch_model.bin"))
    err = fails_with(capsys, "assemble", "--vision", vdir, "--lm", ldir, "--out", tmp_path / "ckpt")
    assert "pytorch_model.bin" in err and "never unpickles" in err and "safe_serialization=True" in err


def test_linear_projector_cannot_go_to_transformers(tmp_path, capsys):
    """transformers has no LLaVA with a 'linear' projector: to-hf says so plainly and writes what
    from-hf reads back (tests/test_export_parts.py checks the round trip of every connector)."""
    vdir, _ = vision_dir(tmp_path, "siglip")
    ldir, _ = lm_dir(tmp_path, "qwen2", 80)
    cli("assemble", "--vision", vdir, "--lm", ldir, "--out", tmp_path / "ckpt", "--projector", "linear")
    capsys.readouterr()
    cli("to-hf", "--src", tmp_path / "ckpt", "--out", tmp_path / "hf")
    out = capsys.readouterr().out
    assert "transformers cannot run this model: it has no counterpart of the 'linear' connector" in out
    assert json.load(open(tmp_path / "hf" / "config.json"))["model_type"] == hf_llava.NOT_LLAVA
    assert os.path.exists(tmp_path / "hf" / "tokenizer_config.json")
    cli("from-hf", "--src", tmp_path / "hf", "--out", tmp_path / "back")
    assert checkpoint.read_config(str(tmp_path / "back")) == checkpoint.read_config(str(tmp_path / "ckpt"))


# ----------------------------------------------------------------------------- memory
@pytest.mark.slow
def test_streaming_load_peak_memory_below_1_5x_the_model(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "perf", "load_peak_rss.py"), "--dir", str(tmp_path / "model"),
         "--vocab", "8000", "--hidden", "1024", "--layers", "6", "--shards", "4"],
        capture_output=True, text=True, check=True, env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"),
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["model_mb"] > 300
    assert result["ratio"] < 1.5, result
