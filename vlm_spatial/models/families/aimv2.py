"""AIMv2 (`Aimv2VisionModel`; apple/aimv2-large-patch14-{224,336}).

RMSNorm (fp32, eps 1e-5) right after the patch conv, before each sublayer and at the end; SwiGLU
MLP `down(silu(gate x) * up x)`; no q/k/v/out or MLP biases by default; a learned position table,
or with `is_native` the 2D sin-cos embedding; an optional attention-pooling head. LLaVA keeps
every token ('full').
"""
from __future__ import annotations

from vlm_spatial.models.families.base import (TINY, Family, attention_rows, common_fields, common_to_hf, linear_rows,
                                              mlp_rows, norm_rows, register, square)
from vlm_spatial.models.families.clip import CLIP_MEAN, CLIP_STD
from vlm_spatial.models.vision import VisionConfig


@register
class AIMv2(Family):
    name = "aimv2"
    tower_model_type = "aimv2_vision_model"
    model_types = ("aimv2", "aimv2_vision_model")
    hf_defaults = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=8,
                       num_channels=3, image_size=224, patch_size=14, hidden_act="silu", rms_norm_eps=1e-5,
                       qkv_bias=False, mlp_bias=False, use_head=True, is_native=False)
    image_mean, image_std = CLIP_MEAN, CLIP_STD
    native_size = 336
    tiny = "tiny-aimv2"

    def config_from_hf(self, c):
        return dict(common_fields(c), image_size=square(c["image_size"]), norm="rmsnorm", norm_eps=c["rms_norm_eps"],
                    mlp="swiglu", qkv_bias=c["qkv_bias"], mlp_bias=c["mlp_bias"], patch_norm=True,
                    head="aimv2" if c["use_head"] else "none", pos_emb="sincos" if c["is_native"] else "learned")

    def config_to_hf(self, cfg):
        return dict(common_to_hf(cfg), model_type=self.tower_model_type, image_size=cfg.image_size,
                    rms_norm_eps=cfg.norm_eps, qkv_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias,
                    use_head=cfg.head == "aimv2", is_native=cfg.pos_emb == "sincos")

    def name_table(self, cfg):
        rows = linear_rows("patch_embedding", "embeddings.patch_embed", cfg.patch_bias, "conv")
        if cfg.pos_emb == "learned" and cfg.uses_abs_pos_emb:
            rows.append(("position_embedding", "embeddings.position_embedding.weight", "copy"))
        if cfg.patch_norm:
            rows += norm_rows("patch_norm", "embeddings.rms_norm", cfg)
        lay = "encoder.layers.{i}"
        rows += norm_rows("layers/norm1", f"{lay}.rms_norm1", cfg) + norm_rows("layers/norm2", f"{lay}.rms_norm2", cfg)
        rows += attention_rows(cfg, *(f"{lay}.attention.{p}_proj" for p in ("q", "k", "v", "out")))
        rows += mlp_rows(cfg, {p: f"{lay}.ffn.{p}" for p in ("gate_proj", "up_proj", "down_proj")})
        if cfg.post_norm != "none":
            rows += norm_rows("post_norm", "rms_norm", cfg)
        if cfg.head == "aimv2":
            rows.append(("head/cls_token", "head.cls_token", "copy"))
            rows += linear_rows("head/k_proj", "head.k_proj", cfg.qkv_bias)
            rows += linear_rows("head/v_proj", "head.v_proj", cfg.qkv_bias)
            rows += linear_rows("head/output_proj", "head.output_proj", True)
        return rows


_AIMV2 = dict(family="aimv2", norm="rmsnorm", norm_eps=1e-5, mlp="swiglu", act="silu", qkv_bias=False,
              mlp_bias=False, patch_norm=True, head="none")
_AIMV2_L = dict(hidden_size=1024, intermediate_size=2816, num_layers=24, num_heads=8, patch_size=14)

PRESETS = {
    # apple/aimv2-large-patch14-{224,336} (vision trunk, no pooling head)
    "aimv2-l/14-224": VisionConfig(**_AIMV2, **_AIMV2_L, image_size=224),
    "aimv2-l/14-336": VisionConfig(**_AIMV2, **_AIMV2_L, image_size=336),
    "tiny-aimv2": VisionConfig(**_AIMV2, **TINY),
}
