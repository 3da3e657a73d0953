"""DINOv3 ViT (`DINOv3ViTModel`; facebook/dinov3-vitl16-pretrain-lvd1689m): a native 2D-RoPE encoder.

No absolute position embedding: every layer rotates q and k of the patch tokens by the patch
centre's position in the image, normalised to [-1, 1] (the 'dinov3' rotary layout,
`rope.patch_centre_angles`); the CLS and register tokens get the identity. LayerNorm (eps 1e-5),
exact-GELU MLP (`up_proj`/`down_proj`, or a gated MLP), q/v/out biases but no k bias, LayerScale,
a CLS token and register tokens, a held mask token, the final LayerNorm on the sequence, the
pooled output the normed CLS. Any input size works unchanged. The random shift/jitter/rescale of
the RoPE coordinates that transformers applies in training mode (`pos_embed_*`) is not applied
here. ImageNet mean/std; LLaVA drops the CLS token ('default').
"""
from __future__ import annotations

from vlm_spatial.models.families.base import (TINY, Family, common_fields, common_to_hf, linear_rows, mlp_rows,
                                              norm_rows, register, square)
from vlm_spatial.models.families.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from vlm_spatial.models.vision import VisionConfig


@register
class DINOv3(Family):
    name = "dinov3"
    tower_model_type = "dinov3_vit"
    model_types = ("dinov3_vit",)
    hf_defaults = dict(patch_size=16, hidden_size=384, intermediate_size=1536, num_hidden_layers=12,
                       num_attention_heads=6, hidden_act="gelu", layer_norm_eps=1e-5, rope_theta=100.0,
                       image_size=224, num_channels=3, query_bias=True, key_bias=False, value_bias=True,
                       proj_bias=True, mlp_bias=True, use_gated_mlp=False, num_register_tokens=0)
    image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD
    native_size = 224
    feature_select = "default"
    tiny = "tiny-dinov3"

    def config_from_hf(self, c):
        biases = {k: c[k] for k in ("query_bias", "value_bias", "proj_bias")}
        if len(set(biases.values())) != 1:
            raise ValueError(f"dinov3 {biases}: q, v and output biases must be all on or all off")
        qkv_bias = c["query_bias"]
        if c["key_bias"] and not qkv_bias:
            raise ValueError("dinov3 key_bias=True with query_bias=False is not supported")
        return dict(common_fields(c), **SWITCHES, mlp="swiglu" if c["use_gated_mlp"] else "mlp",
                    image_size=square(c["image_size"]), norm_eps=c["layer_norm_eps"], qkv_bias=qkv_bias,
                    key_bias=bool(c["key_bias"]), mlp_bias=c["mlp_bias"], num_register_tokens=c["num_register_tokens"],
                    rope2d_theta=float(c["rope_theta"]))

    def config_to_hf(self, cfg):
        return dict(common_to_hf(cfg), model_type=self.tower_model_type, image_size=cfg.image_size,
                    layer_norm_eps=cfg.norm_eps, rope_theta=cfg.rope2d_theta, query_bias=cfg.qkv_bias,
                    key_bias=cfg.qkv_bias and cfg.key_bias, value_bias=cfg.qkv_bias, proj_bias=cfg.qkv_bias,
                    mlp_bias=cfg.mlp_bias, use_gated_mlp=cfg.mlp == "swiglu",
                    num_register_tokens=cfg.num_register_tokens)

    def name_table(self, cfg):
        rows = linear_rows("patch_embedding", "embeddings.patch_embeddings", cfg.patch_bias, "conv")
        rows += [("class_embedding", "embeddings.cls_token", "squeeze:2"),
                 ("mask_token", "embeddings.mask_token", "squeeze:2")]
        if cfg.num_register_tokens:
            rows.append(("register_tokens", "embeddings.register_tokens", "squeeze:1"))
        lay = "layer.{i}"
        rows += norm_rows("layers/norm1", f"{lay}.norm1", cfg) + norm_rows("layers/norm2", f"{lay}.norm2", cfg)
        for ours, hf in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "o")):
            bias = cfg.qkv_bias and (ours != "k" or cfg.key_bias)
            rows += linear_rows(f"layers/attn/{ours}_proj", f"{lay}.attention.{hf}_proj", bias)
        rows += [(f"layers/layer_scale{k}", f"{lay}.layer_scale{k}.lambda1", "copy") for k in (1, 2)]
        names = {"fc1": f"{lay}.mlp.up_proj", "fc2": f"{lay}.mlp.down_proj"} if cfg.mlp == "mlp" else \
            {p: f"{lay}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
        return rows + mlp_rows(cfg, names) + norm_rows("post_norm", "norm", cfg)

    def empty_tensors(self, cfg):
        return {} if cfg.num_register_tokens else {"embeddings.register_tokens": (1, 0, cfg.hidden_size)}


SWITCHES = dict(norm="layernorm", cls_token=True, mask_token=True, layer_scale=True, post_norm="sequence",
                head="cls", pos_emb="none", rope2d=True, rope2d_layout="dinov3")
_DINOV3 = dict(SWITCHES, family="dinov3", norm_eps=1e-5, mlp="mlp", act="gelu", key_bias=False, rope2d_theta=100.0)

PRESETS = {
    # facebook/dinov3-vitl16-pretrain-lvd1689m: 4 register tokens, 224 px (any size works)
    "dinov3-l/16-224": VisionConfig(**_DINOV3, hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16,
                                    patch_size=16, image_size=224, num_register_tokens=4),
    "tiny-dinov3": VisionConfig(**_DINOV3, **TINY, num_register_tokens=2),
}
