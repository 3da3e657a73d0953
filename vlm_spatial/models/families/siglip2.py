"""SigLIP2: NaFlex (`Siglip2VisionModel`; google/siglip2-so400m-patch16-naflex) and fixed
resolution (google/siglip2-so400m-patch14-384, published in the SigLIP layout).

The architecture is SigLIP's. NaFlex cuts each image at its own aspect ratio into at most
`max_num_patches` patches (a Linear patch embedding over pre-cut patches) and resizes the learned
`pos_grid x pos_grid` position grid to each image's patch grid. A fixed-resolution SigLIP2 is
stored and exported as SigLIP (transformers' `Siglip2VisionModel` is NaFlex only), so a config of
this family also loads checkpoints of the 'siglip' family.
"""
from __future__ import annotations

from vlm_spatial.models.families.base import TINY, register, square
from vlm_spatial.models.families.siglip import SO400M, SWITCHES, SigLIP
from vlm_spatial.models.vision import VisionConfig


@register
class SigLIP2(SigLIP):
    name = "siglip2"
    tower_model_type = "siglip2_vision_model"
    model_types = ("siglip2", "siglip2_vision_model")
    hf_defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                       vision_use_head=True, num_patches=256)
    accepts = ("siglip",)
    tiny = "tiny-siglip2-fixed"

    def tiny_preset(self, preset):
        return "tiny-siglip2" if preset.naflex else self.tiny

    def config_from_hf(self, c):
        grid = int(round(c["num_patches"] ** 0.5))
        if grid * grid != c["num_patches"]:
            raise ValueError(f"siglip2 num_patches={c['num_patches']} is not a square grid")
        fields = super().config_from_hf(dict(c, image_size=grid * square(c["patch_size"])))
        return dict(fields, naflex=True, pos_grid=grid, max_num_patches=c["num_patches"])

    def config_to_hf(self, cfg):
        if not cfg.naflex:
            return super().config_to_hf(cfg)
        hf = super().config_to_hf(cfg)
        del hf["image_size"]
        return dict(hf, model_type=self.tower_model_type, num_patches=cfg.pos_grid_size**2)

    def image_processor(self, cfg):
        if not cfg.naflex:
            return super().image_processor(cfg)
        from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

        return Siglip2ImageProcessorPil(patch_size=cfg.patch_size, max_num_patches=cfg.max_num_patches)


_SIGLIP2 = dict(SWITCHES, family="siglip2")

PRESETS = {
    # google/siglip2-so400m-patch14-384 (SigLIP layout: conv patches, 27x27 grid)
    "siglip2-so400m/14-384": VisionConfig(**_SIGLIP2, **SO400M, patch_size=14, image_size=384),
    # google/siglip2-so400m-patch16-naflex: 16x16 learned grid, 256 patches per image
    "siglip2-so400m/16-naflex": VisionConfig(**_SIGLIP2, **SO400M, naflex=True, patch_size=16, image_size=256,
                                             pos_grid=16, max_num_patches=256),
    "tiny-siglip2": VisionConfig(**_SIGLIP2, **TINY, naflex=True, pos_grid=4, max_num_patches=16),
    "tiny-siglip2-fixed": VisionConfig(**_SIGLIP2, **TINY),
}
