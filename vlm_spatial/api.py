"""The inference API users reach for first: `vlm_spatial.load(path)` -> `LoadedVLM`.

    vlm = vlm_spatial.load("llava-1.5-7b-hf")          # HF LLaVA dir or a vlm_spatial checkpoint
    logits = vlm.logits(input_ids, pixel_values)       # [B,T,V] float32 (several images per row too)
    vlm.generate([image], ["Where is the cat?"], max_new_tokens=16)  # -> ["..."]
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from vlm_spatial import parallel
from vlm_spatial.convert import hf_llava
from vlm_spatial.convert.params import module_from_params
from vlm_spatial.data.preprocess import ImageConfig, blank_image, preprocess_image
from vlm_spatial.data.templates import ConversationEncoder
from vlm_spatial.evaluation import generate as gen
from vlm_spatial.models.vlm import VLM, VLMConfig, image_layout


@nnx.jit
def _forward_logits(model: VLM, input_ids, pixel_values, attention_mask, images: dict):
    return model(input_ids, pixel_values, attention_mask=attention_mask, **images).logits


def image_config_for(cfg: VLMConfig, resize_mode: str = "resize") -> ImageConfig:
    """The preprocessing a model expects: its encoder family's normalisation and its input size
    (`cfg.vision.image_size`), or NaFlex patches of its patch size and patch budget.

    `resize_mode` 'resize' is the paper's plain resize; 'pad' is LLaVA-1.5's pad-to-square.
    """
    v = cfg.vision
    return ImageConfig(encoder=v.family, image_size=v.image_size, resize_mode=resize_mode, naflex=v.naflex,
                       patch_size=v.patch_size, max_num_patches=v.max_num_patches)


class LoadedVLM:
    """A `VLM` with its config and (when the checkpoint has one) its tokenizer.

    `tokenizer` is a fast Hugging Face tokenizer; prompts are built by
    `data.templates.ConversationEncoder` with it and `template` (LLaVA-1.5's `vicuna_v1`),
    images preprocessed with `image_config` (default: `image_config_for(config)`). If the params
    are sharded on a multi-device mesh, generation shards its batches on that mesh too.
    """

    def __init__(self, model: VLM, config: VLMConfig, tokenizer=None, template: str = "vicuna_v1",
                 image_config: ImageConfig | None = None):
        self.model, self.config, self.tokenizer, self.template = model, config, tokenizer, template
        self.image_config = image_config or image_config_for(config)
        self._encoder = None

    @property
    def encoder(self) -> ConversationEncoder:
        """The prompt encoder (template + tokenizer, image slots of this model), built on first use."""
        if self._encoder is None:
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer; put the tokenizer files in the checkpoint "
                                 "(tokenizer/) to generate from text prompts")
            self._encoder = ConversationEncoder(self.tokenizer, self.template, None, self.config.num_image_tokens,
                                                self.config.image_token_id)
            if self._encoder.eos_id is None:
                raise ValueError(f"the tokenizer {self.tokenizer.name_or_path!r} has no eos token; generation needs one")
        return self._encoder

    def _token_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def mesh(self) -> Mesh | None:
        """The multi-device mesh the params are sharded on, or None (one device)."""
        leaf = jax.tree.leaves(nnx.state(self.model))[0]
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
        return None

    def logits(self, input_ids, pixel_values=None, attention_mask=None, *, pixel_attention_mask=None,
               spatial_shapes=None) -> np.ndarray:
        """float32 logits `[B,T,V]` for `input_ids [B,T]` and normalised images: NHWC
        `pixel_values [M,H,W,3]`, or for a NaFlex encoder patches `[M,P,p*p*3]` with
        `pixel_attention_mask [M,P]` and `spatial_shapes [M,2]` (as `Siglip2ImageProcessor` gives
        them). `M = B` with image b in row b, or, as transformers takes them, the batch's images in
        order with each row holding the image tokens of its images (several, or none).

        A row whose image-token count is not a whole number of images, or counts that ask for
        another number of images, raise ValueError.
        """
        input_ids = np.asarray(input_ids, np.int32)
        if attention_mask is None:
            attention_mask = np.ones_like(input_ids)
        images = {}
        if pixel_values is not None:
            if spatial_shapes is not None and not self.config.vision.naflex:
                raise ValueError("spatial_shapes / pixel_attention_mask go with NaFlex patches; this model's encoder "
                                 "takes fixed-resolution NHWC pixel_values")
            first = image_layout(input_ids, self.config.image_token_id, self.config.num_image_tokens,
                                 np.shape(pixel_values)[0])
            images = {k: v for k, v in (("pixel_attention_mask", pixel_attention_mask), ("spatial_shapes", spatial_shapes),
                                        ("first_image", first)) if v is not None}
        return np.asarray(_forward_logits(self.model, input_ids, pixel_values, np.asarray(attention_mask, np.int32),
                                          images))

    def prompt_ids(self, prompt: str, has_image: bool) -> np.ndarray:
        """The conversation-template prompt for one question, int32 `[L]`, image slots expanded."""
        return self.encoder.encode_prompt(prompt, has_image=has_image)

    def image_inputs(self, images: Sequence, rows: int) -> dict[str, np.ndarray] | None:
        """The batch's image fields for `images` (PIL / HWC uint8 / path / bytes, None = no image,
        or one image already preprocessed: a dict of the fields `preprocess_image` gives, e.g.
        NaFlex patches), padded with blank images to `rows`; None when no row has an image."""
        if all(image is None for image in images):
            return None
        cfg = self.image_config
        blank = blank_image(cfg)
        items = [blank if image is None else self._preprocessed(image, blank) if isinstance(image, Mapping)
                 else preprocess_image(image, cfg) for image in images]
        items += [blank] * (rows - len(items))
        if cfg.naflex:
            return {k: np.stack([it[k] for it in items]) for k in blank}
        return {"pixel_values": np.stack(items)}

    @staticmethod
    def _preprocessed(image: Mapping, blank) -> dict | np.ndarray:
        """A preprocessed image `image` checked against the fields and shapes of `blank`."""
        want = blank if isinstance(blank, dict) else {"pixel_values": blank}
        got = {k: np.asarray(v) for k, v in image.items()}
        if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
            raise ValueError(f"a preprocessed image needs the fields {({k: v.shape for k, v in want.items()})}, "
                             f"got {({k: v.shape for k, v in got.items()})}")
        return got if isinstance(blank, dict) else got["pixel_values"]

    @property
    def decode_rows(self) -> int:
        """Rows of every generation program (`gen.program_rows` for this model's mesh)."""
        return gen.program_rows(1 if self.mesh is None else parallel.batch_divisor(self.mesh))

    def _sequences(self, images: Sequence, prompts: Sequence[str]) -> list[np.ndarray]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        return [self.prompt_ids(p, image is not None) for image, p in zip(images, prompts)]

    def generate(
        self,
        images: Sequence,
        prompts: Sequence[str],
        max_new_tokens: int = 32,
        *,
        stop_strings: Sequence[str] = (),
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[str]:
        """Answers (strings) to `prompts`, one image each (PIL image, HWC uint8 array, path or
        bytes, or a preprocessed image as `image_inputs` takes it; None for text-only), greedy
        unless `temperature > 0` (then nucleus sampling with `top_p`, reproducible from `seed`). Prompts are the user's question; the model's
        conversation template and image slots are added here. Decoding stops at EOS or at any of
        `stop_strings`, and the text is cut before it. Prompts are decoded in programs of one
        shape per length bucket (`gen.fixed_shape_groups`), so a greedy answer does not depend on
        how many prompts are passed together; sampled group k uses seed `seed + k`.
        """
        sequences = self._sequences(images, prompts)
        enc, mesh, rows = self.encoder, self.mesh, self.decode_rows
        stops = tuple(tuple(self._token_ids(s)) for s in stop_strings if s)
        decode = gen.DecodeConfig(max_new_tokens=max_new_tokens, eos_token_id=enc.eos_id, temperature=temperature,
                                  top_p=top_p, stop_sequences=tuple(s for s in stops if s))
        texts: list = [None] * len(prompts)
        groups = gen.fixed_shape_groups([len(s) for s in sequences], rows, kinds=[i is None for i in images])
        for k, group in enumerate(groups):
            ids, mask = gen.left_pad([sequences[i] for i in group], enc.pad_id, rows=rows)
            pixels = self.image_inputs([images[i] for i in group], rows)
            tokens = gen.generate_tokens(self.model, ids, mask, pixels, decode, seed=seed + k, mesh=mesh)
            for i, row in zip(group, tokens):
                texts[i] = self.tokenizer.decode(gen.truncate(row, enc.eos_id), skip_special_tokens=True)
        return [gen.cut_at_stop(t, stop_strings).strip() for t in texts]

    def score_options(self, images: Sequence, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        """Log-likelihood of each answer `options[b][j]` (e.g. 'A', 'B') as the model's reply to
        prompt b, `[B][num_options]`; the multiple-choice answer is the argmax. Each option is
        tokenized as it follows the template's `ASSISTANT:` in training (`ASSISTANT: <option>`)."""
        if len(options) != len(prompts):
            raise ValueError(f"got {len(options)} option lists but {len(prompts)} prompts")
        sequences = self._sequences(images, prompts)
        pixels = self.image_inputs(images, len(prompts))
        enc = self.encoder
        head = self._token_ids("ASSISTANT:")
        option_ids = []
        for opts in options:
            option_ids.append([])
            for option in opts:
                full = self._token_ids("ASSISTANT: " + option)
                if full[: len(head)] != head or len(full) == len(head):
                    raise ValueError(f"option {option!r} does not tokenize as a continuation of 'ASSISTANT:'")
                option_ids[-1].append(full[len(head):])
        return gen.score_options(self.model, sequences, option_ids, pixels, pad_id=enc.pad_id)


def load(
    path: str,
    *,
    dtype: str | None = None,
    param_dtype: str | None = None,
    mesh: Mesh | None = None,
    shardings: dict | None = None,
) -> LoadedVLM:
    """Open a local Hugging Face LLaVA directory or a vlm_spatial checkpoint as a `LoadedVLM`.

    Reads safetensors (HF, streamed shard by shard) or Orbax (vlm_spatial) only, never pickle,
    with no network. Each tensor is cast to `param_dtype` (default: the config's, float32) and
    placed at once with its sharding, so host memory holds the model once plus about one tensor.
    Shardings come from the logical-axis rules on `mesh` (default: the mesh set by
    `jax.set_mesh`, else one device), or are given as `shardings` (a tree of `NamedSharding` like
    the params, e.g. `parallel.param_shardings`). `dtype` overrides the compute dtype (e.g.
    'bfloat16'). Fails naming missing/mis-shaped tensors or an unsupported model type.
    """
    from vlm_spatial import checkpoint
    from vlm_spatial.convert.params import abstract_params

    if not os.path.exists(path):
        raise FileNotFoundError(f"no model at {path!r}")
    ours = os.path.isfile(os.path.join(path, checkpoint.CONFIG_FILE)) or os.path.isdir(os.path.join(path, "checkpoints"))
    from_hf = not ours and os.path.isfile(os.path.join(path, "config.json"))  # a training workdir has a config.json too
    cfg = hf_llava.read_config(path) if from_hf else checkpoint.read_config(path)
    cfg = checkpoint.with_dtypes(cfg, dtype, param_dtype)
    make = lambda: VLM(cfg, rngs=nnx.Rngs(0))  # noqa: E731
    target, rule_shardings = abstract_params(make, mesh)
    shardings = shardings if shardings is not None else rule_shardings
    if from_hf:
        params = hf_llava.load_params(path, cfg, target, shardings)
    else:
        params = checkpoint.read_params(path, target, shardings)
    return LoadedVLM(module_from_params(make, params), cfg, checkpoint.read_tokenizer(path if from_hf else checkpoint.stage_dir(path)))

