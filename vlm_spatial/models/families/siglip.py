"""SigLIP (`SiglipVisionModel`, the vision tower of `SiglipModel`; google/siglip-so400m-patch14-384).

LayerNorm (eps 1e-6), tanh-GELU MLP, biases everywhere, no CLS token, a learned position table,
the post-norm on the whole sequence and a multihead-attention-pooling head whose q/k/v live in
one fused `in_proj_weight`. LLaVA keeps every token ('full').
"""
from __future__ import annotations

from vlm_spatial.models.families.base import (TINY, Family, common_fields, common_to_hf, fused_rows, linear_rows,
                                              mlp_rows, norm_rows, register, square)
from vlm_spatial.models.families.clip import embedding_rows, layer_rows
from vlm_spatial.models.vision import VisionConfig

HALF = (0.5, 0.5, 0.5)


def head_rows(cfg: VisionConfig) -> list:
    """The attention-pooling head (`head.*`), shared by SigLIP2."""
    rows = [("head/probe", "head.probe", "copy")]
    rows += fused_rows([f"head/{p}_proj" for p in "qkv"], "head.attention.in_proj_weight", "head.attention.in_proj_bias")
    rows += linear_rows("head/out_proj", "head.attention.out_proj", True)
    rows += norm_rows("head/layernorm", "head.layernorm", cfg)
    return rows + mlp_rows(cfg, {"fc1": "head.mlp.fc1", "fc2": "head.mlp.fc2"}, prefix="head/mlp")


@register
class SigLIP(Family):
    name = "siglip"
    tower_model_type = "siglip_vision_model"
    model_types = ("siglip", "siglip_vision_model")
    hf_defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                       layer_norm_eps=1e-6, vision_use_head=True)
    image_mean, image_std = HALF, HALF
    native_size = 384
    tiny = "tiny-siglip"

    def config_from_hf(self, c):
        return dict(common_fields(c), norm="layernorm", norm_eps=c["layer_norm_eps"],
                    head="map" if c["vision_use_head"] else "none", image_size=square(c["image_size"]))

    def config_to_hf(self, cfg):
        return dict(common_to_hf(cfg), model_type=SigLIP.tower_model_type, layer_norm_eps=cfg.norm_eps,
                    vision_use_head=cfg.head == "map", image_size=cfg.image_size)

    def name_table(self, cfg):
        rows = embedding_rows(cfg) + layer_rows(cfg)
        if cfg.post_norm != "none":
            rows += norm_rows("post_norm", "post_layernorm", cfg)
        return rows + (head_rows(cfg) if cfg.head == "map" else [])

    def image_processor(self, cfg):
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        side = {"height": cfg.image_size, "width": cfg.image_size}
        return SiglipImageProcessorPil(size=side, image_mean=self.image_mean, image_std=self.image_std)


SWITCHES = dict(norm="layernorm", norm_eps=1e-6, mlp="mlp", act="gelu_pytorch_tanh", head="map")
SO400M = dict(hidden_size=1152, intermediate_size=4304, num_layers=27, num_heads=16)

PRESETS = {
    # google/siglip-so400m-patch14-384: 729 tokens
    "siglip-so400m/14-384": VisionConfig(family="siglip", **SWITCHES, **SO400M, patch_size=14, image_size=384),
    "tiny-siglip": VisionConfig(family="siglip", **SWITCHES, **TINY),
}
