"""DINOv2, with and without registers (`Dinov2Model`, `Dinov2WithRegistersModel`;
facebook/dinov2-large, facebook/dinov2-with-registers-large).

LayerNorm (eps 1e-6), exact-GELU MLP (or, `use_swiglu_ffn`, a SwiGLU whose gate and up
projections HF stores fused as `weights_in`), biases everywhere, LayerScale on both sublayers, a
CLS token with a row in the learned position table, 4 register tokens after it in the
with-registers variant (no position rows), a held mask token, the final LayerNorm on the whole
sequence, the pooled output the normed CLS. transformers interpolates the table to any input size
at run time: bicubic, and for the with-registers model bicubic with antialias; `convert assemble
--image_size` does the same once. ImageNet mean/std; LLaVA drops the CLS token ('default').
"""
from __future__ import annotations

from vlm_spatial.models.families.base import (TINY, Family, fused_rows, linear_rows, mlp_rows, norm_rows,
                                              register, square)
from vlm_spatial.models.vision import VisionConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REGISTERS = "dinov2_with_registers"


def swiglu_width(hidden_size: int, mlp_ratio: float) -> int:
    """HF `Dinov2SwiGLUFFN`'s hidden width: two thirds of `hidden_size * mlp_ratio`, rounded up to 8."""
    return (int(int(hidden_size * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _model_type(cfg: VisionConfig) -> str:
    """The HF class of `cfg`: the with-registers model is the one interpolating its position table
    with antialias (and the one that may hold registers)."""
    return REGISTERS if cfg.pos_interpolation == "bicubic_antialias" or cfg.num_register_tokens else "dinov2"


def _mlp_ratio(cfg: VisionConfig) -> float:
    """The HF `mlp_ratio` that gives `cfg.intermediate_size` (ValueError if none does)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    widths = range(f, 2 * f + 8) if cfg.mlp == "swiglu" else (f,)
    for width in widths:
        ratio = width / d
        if int(d * ratio) == width and (swiglu_width(d, ratio) if cfg.mlp == "swiglu" else width) == f:
            return int(ratio) if ratio == int(ratio) else ratio
    raise ValueError(f"dinov2: intermediate_size={f} is no mlp_ratio of hidden_size={d} ({cfg.mlp})")


@register
class DINOv2(Family):
    name = "dinov2"
    tower_model_type = "dinov2"
    model_types = ("dinov2", REGISTERS)
    hf_defaults = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, hidden_act="gelu",
                       layer_norm_eps=1e-6, image_size=224, patch_size=14, num_channels=3, qkv_bias=True,
                       use_swiglu_ffn=False, use_mask_token=True)
    image_mean, image_std = IMAGENET_MEAN, IMAGENET_STD
    native_size = 224
    feature_select = "default"
    tiny = "tiny-dinov2"

    def defaults(self, model_type):
        if model_type == REGISTERS:
            return dict(self.hf_defaults, patch_size=16, num_register_tokens=4, use_mask_token=True)
        return self.hf_defaults

    def tiny_preset(self, preset):
        return "tiny-dinov2-reg" if preset.num_register_tokens else self.tiny

    def config_from_hf(self, c):
        if not c["qkv_bias"]:
            raise ValueError("dinov2 qkv_bias=False is not supported (its attention output keeps a bias)")
        d, ratio = c["hidden_size"], c["mlp_ratio"]
        mlp = dict(mlp="swiglu", act="silu", intermediate_size=swiglu_width(d, ratio)) if c["use_swiglu_ffn"] else \
            dict(mlp="mlp", act=c["hidden_act"], intermediate_size=int(d * ratio))
        with_registers = c.get("model_type") == REGISTERS
        registers = c["num_register_tokens"] if with_registers else 0
        return dict(SWITCHES, **mlp, hidden_size=d, num_layers=c["num_hidden_layers"],
                    num_heads=c["num_attention_heads"], patch_size=square(c["patch_size"]),
                    num_channels=c["num_channels"], image_size=square(c["image_size"]), norm_eps=c["layer_norm_eps"],
                    num_register_tokens=registers, mask_token=with_registers or bool(c["use_mask_token"]),
                    pos_interpolation="bicubic_antialias" if with_registers else "bicubic")

    def config_to_hf(self, cfg):
        hf = dict(model_type=_model_type(cfg),
                  hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                  mlp_ratio=_mlp_ratio(cfg), hidden_act=cfg.act, layer_norm_eps=cfg.norm_eps,
                  image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=cfg.num_channels,
                  qkv_bias=True, use_swiglu_ffn=cfg.mlp == "swiglu")
        if hf["model_type"] == REGISTERS:
            return dict(hf, num_register_tokens=cfg.num_register_tokens)
        return dict(hf, use_mask_token=cfg.mask_token)

    def empty_tensors(self, cfg):
        if _model_type(cfg) == REGISTERS and not cfg.num_register_tokens:
            return {"embeddings.register_tokens": (1, 0, cfg.hidden_size)}
        return {}

    def name_table(self, cfg):
        rows = linear_rows("patch_embedding", "embeddings.patch_embeddings.projection", cfg.patch_bias, "conv")
        rows.append(("class_embedding", "embeddings.cls_token", "squeeze:2"))
        if cfg.mask_token:
            rows.append(("mask_token", "embeddings.mask_token", "squeeze:1"))
        if cfg.pos_emb == "learned" and cfg.uses_abs_pos_emb:
            rows.append(("position_embedding", "embeddings.position_embeddings", "squeeze:1"))
        if cfg.num_register_tokens:
            rows.append(("register_tokens", "embeddings.register_tokens", "squeeze:1"))
        lay = "encoder.layer.{i}"
        rows += norm_rows("layers/norm1", f"{lay}.norm1", cfg) + norm_rows("layers/norm2", f"{lay}.norm2", cfg)
        for ours, hf in (("q", "query"), ("k", "key"), ("v", "value")):
            rows += linear_rows(f"layers/attn/{ours}_proj", f"{lay}.attention.attention.{hf}", cfg.qkv_bias)
        rows += linear_rows("layers/attn/out_proj", f"{lay}.attention.output.dense", cfg.qkv_bias)
        rows += [(f"layers/layer_scale{k}", f"{lay}.layer_scale{k}.lambda1", "copy") for k in (1, 2)]
        if cfg.mlp == "swiglu":
            rows += fused_rows(["layers/mlp/gate_proj", "layers/mlp/up_proj"], f"{lay}.mlp.weights_in.weight",
                               f"{lay}.mlp.weights_in.bias" if cfg.mlp_bias else None)
            rows += linear_rows("layers/mlp/down_proj", f"{lay}.mlp.weights_out", cfg.mlp_bias)
        else:
            rows += mlp_rows(cfg, {"fc1": f"{lay}.mlp.fc1", "fc2": f"{lay}.mlp.fc2"})
        return rows + norm_rows("post_norm", "layernorm", cfg)


SWITCHES = dict(norm="layernorm", cls_token=True, layer_scale=True, post_norm="sequence", head="cls", pos_emb="learned")
_DINOV2 = dict(SWITCHES, family="dinov2", norm_eps=1e-6, mlp="mlp", act="gelu", mask_token=True)
_LARGE = dict(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, patch_size=14, image_size=518)
_REG = dict(num_register_tokens=4, pos_interpolation="bicubic_antialias")

PRESETS = {
    # facebook/dinov2-large: a 37x37 position grid (518 px), used at 224 px (interpolated)
    "dinov2-l/14-518": VisionConfig(**_DINOV2, **_LARGE),
    # facebook/dinov2-with-registers-large: the same with 4 register tokens
    "dinov2-reg-l/14-518": VisionConfig(**_DINOV2, **_LARGE, **_REG),
    "tiny-dinov2": VisionConfig(**_DINOV2, **TINY),
    "tiny-dinov2-reg": VisionConfig(**_DINOV2, **TINY, **_REG),
}
