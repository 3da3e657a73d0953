"""Assembling a LLaVA-style VLM from separately pretrained parts: what stage 1 of training starts from.

    vision tower dir (any registered family)      --+
    causal-LM dir (LLaMA/Vicuna, Qwen2) + tokenizer --+--> vlm_spatial checkpoint
    fresh projector                                 --+

- The tokenizer is the LM's with `<image>` added as a special token. When its id falls outside
  the LM's vocabulary, the embedding (and an untied LM head) grows to the next multiple of 64,
  as in llava-hf/llava-1.5-7b-hf (Vicuna's 32000 -> 32064, `<image>` = 32000); new rows are the
  mean of the existing ones (llava-hf samples around that mean with covariance 1e-5 * Sigma).
- `image_size` sets the encoder's input side (the paper trains at 256 x 256 on encoders
  pretrained at 224/336/384): a learned position table is resized once, bicubically, exactly as
  transformers' `interpolate_pos_encoding=True` would at run time (`positions.learned`); a NaFlex
  encoder gets the patch budget of that size instead (its grid is resized per image anyway).
- 2D-RoPE settings are VisionConfig fields; with `keep_abs_pos_emb=False` the learned table is
  not loaded at all.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from vlm_spatial import checkpoint
from vlm_spatial.convert import hf_decoder, hf_io, hf_vision, loader, namemap
from vlm_spatial.convert import params as params_lib
from vlm_spatial.data.templates import IMAGE_MARKER, load_tokenizer
from vlm_spatial.models import families
from vlm_spatial.models.decoder import DecoderConfig
from vlm_spatial.models.positions import learned
from vlm_spatial.models.vision import VisionConfig
from vlm_spatial.models.vlm import VLM, VLMConfig

VOCAB_MULTIPLE = 64
POS_PATH = ("position_embedding",)


def grown_vocab(vocab_size: int, num_tokens: int) -> int:
    """The LM vocabulary for a tokenizer of `num_tokens` tokens: unchanged if it already holds
    them, else rounded up to a multiple of 64."""
    if num_tokens <= vocab_size:
        return vocab_size
    return -(-num_tokens // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def grow_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """`x [V, D]` extended to `[rows, D]` with copies of the mean row (computed in float64)."""
    if rows == x.shape[0]:
        return x
    mean = x.astype(np.float64).mean(axis=0).astype(x.dtype)
    return np.concatenate([x, np.broadcast_to(mean, (rows - x.shape[0], x.shape[1]))], axis=0)


def at_image_size(cfg: VisionConfig, image_size: int) -> VisionConfig:
    """`cfg` taking `image_size` x `image_size` inputs (NaFlex: that many pixels' worth of patches)."""
    if image_size < cfg.patch_size:
        raise ValueError(f"image_size {image_size} is smaller than the patch size {cfg.patch_size}")
    if cfg.naflex:
        return dataclasses.replace(cfg, image_size=image_size, max_num_patches=(image_size // cfg.patch_size) ** 2)
    return dataclasses.replace(cfg, image_size=image_size)


def vision_entries(src: VisionConfig, dst: VisionConfig) -> list[namemap.Entry]:
    """Name map reading a tower saved as `src` into `dst` (same but for `image_size`): the learned
    position table, if `dst` has one on a different grid, is resized on the way."""
    entries = hf_vision.hf_entries(src)
    if dst.naflex or dst.pos_grid_size == src.pos_grid_size:
        return entries

    def resized(entry: namemap.Entry) -> namemap.Entry:
        def to_ours(x: np.ndarray) -> np.ndarray:
            return learned.resize_position_embedding(entry.to_ours(x), src.pos_grid_size, dst.pos_grid_size,
                                                     int(src.cls_token), src.pos_interpolation)

        return dataclasses.replace(entry, to_ours=to_ours)

    return [resized(e) if e.path == POS_PATH else e for e in entries]


def decoder_entries(src: DecoderConfig, vocab_size: int) -> list[namemap.Entry]:
    """Name map reading an LM saved as `src` into one with `vocab_size` rows (grown by the mean)."""
    grow = {
        ("embed_tokens", "embedding"): lambda x: grow_rows(x, vocab_size),
        ("lm_head", "kernel"): lambda x: grow_rows(x, vocab_size).T,
    }
    return [dataclasses.replace(e, to_ours=grow[e.path]) if e.path in grow else e for e in hf_decoder.hf_entries(src)]


def fresh_projector(cfg: VLMConfig, seed: int, shardings: dict | None) -> dict:
    """Projector params exactly as `VLM(cfg, rngs=nnx.Rngs(seed))` initialises them, created
    directly with `shardings` (the rest of the model is traced, never materialised)."""

    def init():
        with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
            return nnx.to_pure_dict(nnx.state(VLM(cfg, rngs=nnx.Rngs(seed)).projector))

    return (jax.jit(init) if shardings is None else jax.jit(init, out_shardings=shardings))()


def assemble(
    vision_dir: str,
    lm_dir: str,
    out: str,
    *,
    projector: str = "mlp2x_gelu",
    image_size: int | None = None,
    rope2d: bool | None = None,
    rope2d_theta: float | None = None,
    rope2d_layers: tuple[int, ...] | None = None,
    keep_abs_pos_emb: bool | None = None,
    param_dtype: str | None = None,
    seed: int = 0,
    mesh=None,
) -> VLMConfig:
    """Build a VLM from `vision_dir` (a Hugging Face vision tower or two-tower model) and `lm_dir`
    (a causal LM with its tokenizer), write it as a vlm_spatial checkpoint at `out` and return its
    config. Options as in the module docstring (the 2D-RoPE ones, None: as the tower has it, e.g.
    DINOv3's native RoPE stays on); `param_dtype` stores params in another dtype;
    `seed` initialises the projector; params are placed on `mesh` (default: the current one)."""
    vision_overrides = {k: v for k, v in dict(rope2d=rope2d, rope2d_theta=rope2d_theta, rope2d_layers=rope2d_layers,
                                              keep_abs_pos_emb=keep_abs_pos_emb).items() if v is not None}
    dtypes = {"param_dtype": param_dtype} if param_dtype else {}
    src_vision = hf_vision.config_from_hf(hf_io.read_config(vision_dir), **vision_overrides, **dtypes)
    vision = at_image_size(src_vision, image_size) if image_size else src_vision
    src_decoder = hf_decoder.config_from_hf(hf_io.read_config(lm_dir), **dtypes)
    if checkpoint.read_tokenizer(lm_dir) is None:
        raise FileNotFoundError(f"{lm_dir!r} has no tokenizer (tokenizer.json / tokenizer_config.json); "
                                "copy the LM's tokenizer files into it")
    tokenizer = load_tokenizer(lm_dir)
    decoder = dataclasses.replace(src_decoder, vocab_size=grown_vocab(src_decoder.vocab_size, len(tokenizer)))
    cfg = VLMConfig(
        vision=vision, decoder=decoder, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_MARKER),
        projector=projector, vision_feature_select=families.get(vision.family).feature_select,
    )
    target, shardings = params_lib.abstract_params(lambda: VLM(cfg, rngs=nnx.Rngs(0)), mesh)
    part = (lambda name: None) if shardings is None else shardings.get

    vision_tensors = hf_io.HFCheckpoint(vision_dir)
    unused = set(hf_vision.padding_tensors(src_vision))
    strip = hf_vision.strip_prefix(hf_vision.vision_prefix(vision_tensors, src_vision))
    params = {
        "vision": loader.load_params(
            vision_tensors, vision_entries(src_vision, vision), target["vision"], part("vision"),
            rename=lambda name: None if strip(name) in unused else strip(name),
        ),
        "decoder": loader.load_params(
            hf_io.HFCheckpoint(lm_dir), decoder_entries(src_decoder, decoder.vocab_size),
            target["decoder"], part("decoder"),
        ),
        "projector": fresh_projector(cfg, seed, part("projector")),
    }
    checkpoint.write_model(out, cfg, params, tokenizer)
    return cfg
