"""A vlm_spatial checkpoint -> a Hugging Face `LlavaForConditionalGeneration` directory.

The directory holds what `save_pretrained` + `LlavaProcessor.save_pretrained` write: config.json,
sharded safetensors (`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`, or one
`model.safetensors`), the tokenizer, and the processor files (`preprocessor_config.json`,
`processor_config.json`) set up to preprocess as this codebase does (the image processor is the
encoder family's: a plain bicubic resize to `image_size` with its normalisation, NaFlex: the
SigLIP2 patch budget).

Tensors are produced one at a time from the restored params, cast to the export dtype, and
written a shard at a time. 2D-RoPE variants: see `hf_llava` (settings under the `vlm_spatial`
key, zero position table where the encoder has none); transformers runs them without the RoPE.
"""
from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial import checkpoint
from vlm_spatial.convert import hf_io, hf_llava, hf_vision, namemap
from vlm_spatial.convert import params as params_lib
from vlm_spatial.models import families
from vlm_spatial.models.vlm import VLM, VLMConfig

EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def write_processor(out: str, cfg: VLMConfig, tokenizer) -> None:
    """Tokenizer and processor files so that `LlavaProcessor.from_pretrained(out)` works offline
    and expands `<image>` to `cfg.num_image_tokens` tokens. `preprocessor_config.json` is written
    too, for tools that read the image processor from there (transformers 5 keeps it inside
    `processor_config.json`). A model transformers cannot run gets the tokenizer and the image
    processor only (LlavaProcessor would count the patches, not the connector's tokens)."""
    from transformers import LlavaProcessor

    images = families.get(cfg.vision.family).image_processor(cfg.vision)
    images.save_pretrained(out)
    if not hf_llava.runnable(cfg):
        tokenizer.save_pretrained(out)
        return
    LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=cfg.vision.patch_size,
        vision_feature_select_strategy=cfg.vision_feature_select,
        image_token=tokenizer.convert_ids_to_tokens(cfg.image_token_id),
        num_additional_image_tokens=cfg.vision.num_prefix_tokens,
    ).save_pretrained(out)


def write_config(out: str, cfg: VLMConfig, dtype: str) -> None:
    """config.json of `LlavaForConditionalGeneration` for `cfg` (validated by transformers); for a
    model it cannot run, the same with model_type `hf_llava.NOT_LLAVA`."""
    from transformers import LlavaConfig

    hf = hf_llava.config_to_hf(cfg)
    hf_cfg = LlavaConfig.from_dict({**hf, "model_type": "llava"})
    hf_cfg.dtype = dtype
    if hf_llava.runnable(cfg):
        hf_cfg.save_pretrained(out)
        return
    d = {**hf_cfg.to_dict(), "model_type": hf["model_type"], "architectures": hf["architectures"]}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(d, f, indent=2, sort_keys=True)


def notes(cfg: VLMConfig) -> list[str]:
    """What a user of the exported directory must know (printed by the CLI): the settings
    transformers ignores, and the tensors written only for it."""
    out = []
    if not hf_llava.runnable(cfg):
        out.append(
            f"transformers cannot run this model: it has no counterpart of the {cfg.projector!r} connector "
            f"(multi_modal_projector.*; LlavaForConditionalGeneration's projector is linear_1-gelu-linear_2), so "
            f"config.json's model_type is {hf_llava.NOT_LLAVA!r} and AutoModel refuses it. The encoder "
            "(vision_tower.*, config.json['vision_config']) and the LM (language_model.*, ['text_config']) are "
            "plain transformers models; `python -m vlm_spatial.convert from-hf` reads the whole model back exactly."
        )
    extra = hf_vision.extra_tensors(cfg.vision)
    if extra:
        out.append(f"the learned rotary frequencies of the {cfg.vision.rope2d_layout!r} layout are written as "
                   f"{hf_llava.VISION}{extra[0]} (one per layer), which transformers reports as unused")
    kept = hf_llava.ignored(cfg)
    rope = {k: v for k, v in kept.items() if k.startswith("rope2d")}
    if rope.get("rope2d"):
        out.append(
            "transformers has no 2D-RoPE for this encoder: LlavaForConditionalGeneration.from_pretrained "
            "runs this model WITHOUT its RoPE, so its outputs differ from vlm_spatial's."
        )
    elif rope:
        out.append(f"transformers does not apply the rotary settings {rope}: its outputs may differ from vlm_spatial's.")
    if kept:
        out.append(f"transformers ignores config.json['{hf_llava.EXTRA_KEY}'] = {kept}; vlm_spatial.load and "
                   "`python -m vlm_spatial.convert from-hf` restore these settings exactly.")
    pads = hf_llava.padding_tensors(cfg)
    if pads:
        out.append(f"{', '.join(pads)} has no counterpart in this model; it is written as zeros for transformers and "
                   "skipped when read back")
    return out


def to_hf(src: str, out: str, *, dtype: str | None = None, max_shard_size: int | str = "5GB") -> list[str]:
    """Export the vlm_spatial checkpoint `src` to the Hugging Face directory `out` (module
    docstring) with tensors in `dtype` (default: the checkpoint's param dtype). Returns `notes`.

    A model transformers cannot run (a connector LLaVA lacks) is written all the same, with what
    `from-hf` needs to read it back; `notes` says so. Raises ValueError for a model whose encoder
    or LM transformers' configs cannot express, FileExistsError for a non-empty `out`.
    """
    cfg = checkpoint.read_config(src)
    dtype = dtype or cfg.decoder.param_dtype
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype {dtype!r}; supported: {EXPORT_DTYPES}")
    hf_llava.config_to_hf(cfg)  # fails early on what transformers cannot express
    if os.path.isdir(out) and os.listdir(out):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or remove it")
    target, shardings = params_lib.abstract_params(lambda: VLM(cfg, rngs=nnx.Rngs(0)))
    params = checkpoint.read_params(src, target, shardings)

    np_dtype = jnp.dtype(dtype)
    groups = namemap.by_hf_name(hf_llava.hf_entries(cfg))
    pads = hf_llava.padding_tensors(cfg)
    shapes = {**{name: g[0].hf_shape for name, g in groups.items()}, **pads}

    def tensor(name: str) -> np.ndarray:
        if name in pads:
            return np.zeros(pads[name], np_dtype)
        return namemap.hf_tensor(groups[name], params).astype(np_dtype)

    sizes = {name: math.prod(shape) * np_dtype.itemsize for name, shape in shapes.items()}
    hf_io.write_safetensors(out, hf_io.shard_plan(sizes, max_shard_size), tensor)
    write_config(out, cfg, dtype)
    tokenizer = checkpoint.read_tokenizer(src)
    if tokenizer is not None:
        write_processor(out, cfg, tokenizer)
    return notes(cfg) + ([] if tokenizer is not None else
                         ["the checkpoint has no tokenizer: no tokenizer or processor files were written"])
