"""Named VLM architectures: an encoder preset + a decoder preset + how they are joined.

Encoder presets live in `vision.VISION_PRESETS`, decoder presets in `decoder.DECODER_PRESETS`.
`vlm_config(vision, decoder, ...)` composes them; `VLM_PRESETS` names the public layouts.
"""
from __future__ import annotations

import dataclasses

from vlm_spatial.models.decoder import DECODER_PRESETS
from vlm_spatial.models.vision import VISION_PRESETS
from vlm_spatial.models.vlm import VLMConfig

# Families without a CLS token must keep every token ('full'); CLIP drops CLS ('default').
FEATURE_SELECT_BY_FAMILY = {"clip": "default", "siglip": "full", "siglip2": "full", "aimv2": "full"}


def vlm_config(
    vision: str,
    decoder: str,
    *,
    image_token_id: int | None = None,
    vocab_size: int | None = None,
    vision_overrides: dict | None = None,
    decoder_overrides: dict | None = None,
    **overrides,
) -> VLMConfig:
    """A `VLMConfig` from preset names, e.g. `vlm_config('clip-l/14-336', 'vicuna-7b-v1.5')`.

    `vocab_size` resizes the decoder's vocabulary; `image_token_id` defaults to the last id.
    `vision_overrides` / `decoder_overrides` replace fields of the presets (e.g. `rope2d=True`,
    `dtype='bfloat16'`); other keyword arguments replace `VLMConfig` fields.
    """
    try:
        vcfg, dcfg = VISION_PRESETS[vision], DECODER_PRESETS[decoder]
    except KeyError as err:
        raise ValueError(
            f"unknown preset {err.args[0]!r}; vision presets: {sorted(VISION_PRESETS)}, "
            f"decoder presets: {sorted(DECODER_PRESETS)}"
        ) from None
    vcfg = dataclasses.replace(vcfg, **(vision_overrides or {}))
    dcfg = dataclasses.replace(dcfg, **({"vocab_size": vocab_size} if vocab_size else {}), **(decoder_overrides or {}))
    overrides.setdefault("vision_feature_select", FEATURE_SELECT_BY_FAMILY[vcfg.family])
    return VLMConfig(
        vision=vcfg,
        decoder=dcfg,
        image_token_id=dcfg.vocab_size - 1 if image_token_id is None else image_token_id,
        **overrides,
    )


VLM_PRESETS = {
    # llava-hf/llava-1.5-7b-hf: vocabulary padded to 32064, <image> = 32000
    "llava-1.5-7b": lambda: vlm_config("clip-l/14-336", "vicuna-7b-v1.5", vocab_size=32064, image_token_id=32000),
}
