"""The inference API users reach for first: `vlm_spatial.load(path)` -> `LoadedVLM`.

    vlm = vlm_spatial.load("llava-1.5-7b-hf")          # HF LLaVA dir or a vlm_spatial checkpoint
    logits = vlm.logits(input_ids, pixel_values)       # [B,T,V] float32
    vlm.generate([image], ["Where is the cat?"], max_new_tokens=16)  # -> ["..."]
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from flax import nnx

from vlm_spatial.convert import hf_llava
from vlm_spatial.convert.params import module_from_params
from vlm_spatial.evaluation import generate as gen
from vlm_spatial.models.vlm import VLM, VLMConfig, check_image_tokens


@nnx.jit
def _forward_logits(model: VLM, input_ids, pixel_values, attention_mask):
    return model(input_ids, pixel_values, attention_mask=attention_mask).logits


class LoadedVLM:
    """A `VLM` with its config and (when the checkpoint has one) its tokenizer."""

    def __init__(self, model: VLM, config: VLMConfig, tokenizer=None, template: str = "vicuna_v1"):
        self.model, self.config, self.tokenizer, self.template = model, config, tokenizer, template

    def logits(self, input_ids, pixel_values=None, attention_mask=None) -> np.ndarray:
        """float32 logits `[B,T,V]` for `input_ids [B,T]` and normalised NHWC `pixel_values [B,H,W,3]`.

        A row whose image-token count differs from its image's feature count raises ValueError.
        """
        input_ids = np.asarray(input_ids, np.int32)
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        if pixel_values is not None:
            check_image_tokens(input_ids, self.config.image_token_id, np.asarray(self.config.num_image_tokens))
        return np.asarray(_forward_logits(self.model, input_ids, pixel_values, np.asarray(attention_mask, np.int32)))

    def generate(
        self,
        images: Sequence,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        *,
        stop_strings: Sequence[str] = (),
        temperature: float = 0.0,
    ) -> list[str]:
        """Answers (strings) to `prompts`, one image each (PIL image or HWC uint8 array; None for
        text-only), greedy unless `temperature > 0`. Prompts are the user's question; the model's
        conversation template and image marker are added here."""
        from vlm_spatial.data import preprocess, templates

        if self.tokenizer is None:
            raise ValueError("this checkpoint has no tokenizer; load one with a tokenizer directory")
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        sequences = [
            templates.prompt_ids(
                self.tokenizer, prompt, has_image=image is not None, template=self.template,
                num_image_tokens=self.config.num_image_tokens, image_token_id=self.config.image_token_id,
            )
            for image, prompt in zip(images, prompts)
        ]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = gen.left_pad(sequences, pad)
        pixels = None
        if any(image is not None for image in images):
            pixels = np.stack([preprocess.image_for_encoder(image, self.config.vision) for image in images])
        tokens = gen.generate_tokens(
            self.model, ids, mask, pixels, max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id, temperature=temperature,
        )
        texts = [
            self.tokenizer.decode(gen.truncate(row, self.tokenizer.eos_token_id), skip_special_tokens=True)
            for row in tokens
        ]
        return [gen.cut_at_stop(t, stop_strings).strip() for t in texts]


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    for candidate in (os.path.join(path, "tokenizer"), path):
        if os.path.isfile(os.path.join(candidate, "tokenizer_config.json")) or os.path.isfile(
            os.path.join(candidate, "tokenizer.json")
        ):
            return AutoTokenizer.from_pretrained(candidate, local_files_only=True)
    return None


def load(path: str, *, dtype: str | None = None, shardings=None) -> LoadedVLM:
    """Open a local Hugging Face LLaVA directory or a vlm_spatial checkpoint as a `LoadedVLM`.

    Reads safetensors (HF) or Orbax (vlm_spatial) only, never pickle, with no network. `dtype`
    overrides the compute dtype (e.g. 'bfloat16'). Fails naming missing/mis-shaped tensors or an
    unsupported model type.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model at {path!r}")
    if os.path.isfile(os.path.join(path, "config.json")):
        cfg, params = hf_llava.read_hf_llava(path)
    else:
        from vlm_spatial import checkpoint

        cfg, params = checkpoint.read_model(path)
    if dtype is not None:
        import dataclasses

        cfg = dataclasses.replace(
            cfg,
            vision=dataclasses.replace(cfg.vision, dtype=dtype),
            decoder=dataclasses.replace(cfg.decoder, dtype=dtype),
        )
    model = module_from_params(lambda: VLM(cfg, rngs=nnx.Rngs(0)), params, shardings)
    return LoadedVLM(model, cfg, _tokenizer(path))

