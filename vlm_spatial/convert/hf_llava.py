"""Hugging Face `LlavaForConditionalGeneration` <-> vlm_spatial `VLM` parameters.

Every spelling of LLaVA tensor names is brought to one canonical form before mapping:

| where it comes from                         | vision                         | LM                         |
|---------------------------------------------|--------------------------------|----------------------------|
| canonical (public llava-hf checkpoints)     | `vision_tower.<vision name>`   | `language_model.<LM name>` |
| `vision_tower.vision_model.*` (public)      | prefix `vision_model.` dropped |                            |
| in-memory `state_dict()` of transformers 5  | `model.vision_tower.*`         | `model.language_model.*` (+ `lm_head.*`) |

where `<vision name>` is what `hf_vision` uses and `<LM name>` is relative to the causal-LM root
(`model.layers.0...`, `lm_head.weight`). Projector tensors are `multi_modal_projector.*`.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from vlm_spatial.convert import hf_decoder, hf_vision
from vlm_spatial.convert.hf_io import HFCheckpoint, check_tensors, read_config
from vlm_spatial.models.vlm import VLMConfig

VISION = "vision_tower."
PROJECTOR = "multi_modal_projector."
LM = "language_model."

_RENAMES = (
    ("model.language_model.", LM + "model."),
    ("lm_head.", LM + "lm_head."),
    ("model.vision_tower.", VISION),
    ("model.multi_modal_projector.", PROJECTOR),
)


def canonical_name(name: str) -> str:
    """Map any on-disk or in-memory LLaVA tensor name to the canonical form (module docstring)."""
    for old, new in _RENAMES:
        if name.startswith(old):
            name = new + name[len(old):]
            break
    if name.startswith(VISION + "vision_model."):
        name = VISION + name[len(VISION + "vision_model."):]
    return name


def config_from_hf(hf: dict) -> VLMConfig:
    """`VLMConfig` from a LLaVA `config.json` dict (model_type 'llava')."""
    if hf.get("model_type") != "llava":
        raise ValueError(
            f"model_type {hf.get('model_type')!r} is not supported as a whole VLM; supported: 'llava' "
            "(for separate vision and LM directories use `python -m vlm_spatial.convert assemble`)"
        )
    layer = hf.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ValueError(f"vision_feature_layer={layer!r}: only a single layer index is supported")
    if not hf.get("multimodal_projector_bias", True):
        raise ValueError("multimodal_projector_bias=False is not supported (LLaVA-1.5 uses biases)")
    act = hf.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"projector_hidden_act={act!r} is not supported (LLaVA-1.5 uses 'gelu')")
    return VLMConfig(
        vision=hf_vision.config_from_hf(hf["vision_config"]),
        decoder=hf_decoder.config_from_hf(hf["text_config"]),
        image_token_id=hf.get("image_token_id", hf.get("image_token_index", 32000)),
        projector="mlp2x_gelu",
        vision_feature_layer=layer,
        vision_feature_select=hf.get("vision_feature_select_strategy", "default"),
    )


def expected_hf_shapes(cfg: VLMConfig) -> dict[str, tuple[int, ...]]:
    """Canonical tensor names -> shapes of a LLaVA checkpoint for `cfg`."""
    shapes = {VISION + k: v for k, v in hf_vision.expected_hf_shapes(cfg.vision).items()}
    shapes.update({LM + k: v for k, v in hf_decoder.expected_hf_shapes(cfg.decoder).items()})
    dv, d = cfg.vision.hidden_size, cfg.decoder.hidden_size
    shapes.update({
        PROJECTOR + "linear_1.weight": (d, dv), PROJECTOR + "linear_1.bias": (d,),
        PROJECTOR + "linear_2.weight": (d, d), PROJECTOR + "linear_2.bias": (d,),
    })
    return shapes


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: VLMConfig) -> dict:
    """Nested params of `VLM(cfg)` (as `nnx.to_pure_dict`) from canonically named `tensors`."""

    def getter(prefix: str) -> Callable[[str], np.ndarray]:
        return lambda name: tensors[prefix + name]

    return {
        "vision": hf_vision.params_from_hf(getter(VISION), cfg.vision),
        "projector": hf_decoder.projector_params_from_hf(getter(PROJECTOR), cfg.projector),
        "decoder": hf_decoder.params_from_hf(getter(LM), cfg.decoder),
    }


def params_to_hf(params: dict, cfg: VLMConfig) -> dict[str, np.ndarray]:
    """Canonically named LLaVA tensors from nested `VLM` params; inverse of `params_from_hf`."""
    out = {VISION + k: v for k, v in hf_vision.params_to_hf(params["vision"], cfg.vision).items()}
    out.update({PROJECTOR + k: v for k, v in hf_decoder.projector_params_to_hf(params["projector"], cfg.projector).items()})
    out.update({LM + k: v for k, v in hf_decoder.params_to_hf(params["decoder"], cfg.decoder).items()})
    return out


class CanonicalTensors(Mapping[str, np.ndarray]):
    """A view of an `HFCheckpoint` under canonical LLaVA names (reads lazily)."""

    def __init__(self, ckpt: HFCheckpoint):
        self._ckpt = ckpt
        self._names = {canonical_name(n): n for n in ckpt}

    def __getitem__(self, name: str) -> np.ndarray:
        return self._ckpt[self._names[name]]

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._ckpt.shape(self._names[name])


def read_hf_llava(path: str) -> tuple[VLMConfig, dict]:
    """Config and nested params of the LLaVA directory `path`, checked tensor by tensor.

    Missing, unexpected or mis-shaped tensors raise `WeightsError` naming each of them.
    """
    cfg = config_from_hf(read_config(path))
    tensors = CanonicalTensors(HFCheckpoint(path))
    check_tensors({n: tensors.shape(n) for n in tensors}, expected_hf_shapes(cfg), source=path)
    return cfg, params_from_hf(tensors, cfg)
