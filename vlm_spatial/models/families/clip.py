"""CLIP (`CLIPVisionModel`, the vision tower of `CLIPModel`; openai/clip-vit-large-patch14-336).

LayerNorm (eps 1e-5), quick-GELU MLP, biases everywhere but the patch conv, a CLS token with a
row in the learned position table, `pre_layrnorm` on the embeddings (HF `hidden_states[0]` is
after it), the post-norm on the pooled CLS only. LLaVA drops the CLS token ('default').
"""
from __future__ import annotations

from vlm_spatial.models.families.base import (TINY, Family, attention_rows, common_fields, common_to_hf,
                                              linear_rows, mlp_rows, norm_rows, register, square)
from vlm_spatial.models.vision import VisionConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def layer_rows(cfg: VisionConfig) -> list:
    """The rows of CLIP's encoder layers, shared by SigLIP (`encoder.layers.{i}.*`)."""
    lay = "encoder.layers.{i}"
    return (norm_rows("layers/norm1", f"{lay}.layer_norm1", cfg) + norm_rows("layers/norm2", f"{lay}.layer_norm2", cfg)
            + attention_rows(cfg, *(f"{lay}.self_attn.{p}_proj" for p in ("q", "k", "v", "out")))
            + mlp_rows(cfg, {"fc1": f"{lay}.mlp.fc1", "fc2": f"{lay}.mlp.fc2"}))


def embedding_rows(cfg: VisionConfig) -> list:
    """Patch embedding, CLS and learned position table rows (`embeddings.*`), shared by SigLIP."""
    rows = linear_rows("patch_embedding", "embeddings.patch_embedding", cfg.patch_bias,
                       "linear" if cfg.naflex else "conv")
    if cfg.cls_token:
        rows.append(("class_embedding", "embeddings.class_embedding", "copy"))
    if cfg.pos_emb == "learned" and cfg.uses_abs_pos_emb:
        rows.append(("position_embedding", "embeddings.position_embedding.weight", "copy"))
    return rows


@register
class CLIP(Family):
    name = "clip"
    tower_model_type = "clip_vision_model"
    model_types = ("clip", "clip_vision_model")
    hf_defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    image_mean, image_std = CLIP_MEAN, CLIP_STD
    native_size = 336
    feature_select = "default"
    tiny = "tiny-clip"

    def config_from_hf(self, c):
        return dict(common_fields(c), **SWITCHES, image_size=square(c["image_size"]), norm_eps=c["layer_norm_eps"])

    def config_to_hf(self, cfg):
        return dict(common_to_hf(cfg), model_type=self.tower_model_type, image_size=cfg.image_size,
                    layer_norm_eps=cfg.norm_eps)

    def name_table(self, cfg):
        rows = embedding_rows(cfg)
        if cfg.pre_norm:
            rows += norm_rows("pre_norm", "pre_layrnorm", cfg)
        rows += layer_rows(cfg)
        if cfg.post_norm != "none":
            rows += norm_rows("post_norm", "post_layernorm", cfg)
        return rows


SWITCHES = dict(norm="layernorm", mlp="mlp", patch_bias=False, cls_token=True, pre_norm=True, post_norm="pooled",
                head="cls")
_CLIP = dict(SWITCHES, family="clip", norm_eps=1e-5, act="quick_gelu")

PRESETS = {
    # openai/clip-vit-large-patch14-336: 577 tokens
    "clip-l/14-336": VisionConfig(**_CLIP, hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16,
                                  patch_size=14, image_size=336),
    "tiny-clip": VisionConfig(**_CLIP, **TINY),
}
