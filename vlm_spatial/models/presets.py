"""Named VLM architectures: an encoder preset + a decoder preset + how they are joined.

Encoder presets live with their family (`families.VISION_PRESETS`), decoder presets in
`decoder.DECODER_PRESETS`. `vlm_config(vision, decoder, ...)` composes them; `VLM_PRESETS` names
the public layouts.
"""
from __future__ import annotations

import dataclasses

from vlm_spatial.models import families
from vlm_spatial.models.decoder import DECODER_PRESETS
from vlm_spatial.models.vlm import VLMConfig


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
    `dtype='bfloat16'`); other keyword arguments replace `VLMConfig` fields. The feature selection
    defaults to the one the encoder's family is used with in LLaVA.
    """
    if decoder not in DECODER_PRESETS:
        raise ValueError(f"unknown decoder preset {decoder!r}; one of {', '.join(sorted(DECODER_PRESETS))}")
    vcfg = dataclasses.replace(families.preset(vision), **(vision_overrides or {}))
    dcfg = DECODER_PRESETS[decoder]
    dcfg = dataclasses.replace(dcfg, **({"vocab_size": vocab_size} if vocab_size else {}), **(decoder_overrides or {}))
    overrides.setdefault("vision_feature_select", families.get(vcfg.family).feature_select)
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
