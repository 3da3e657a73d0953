"""Hugging Face <-> vlm_spatial for the decoder LM (LlamaForCausalLM, Qwen2ForCausalLM) and the
LLaVA projector (`multi_modal_projector.*`).

HF names are relative to the causal-LM root ('model.embed_tokens.weight', 'lm_head.weight') and
to 'multi_modal_projector.' for the projector. Our trees are nested pure dicts as given by
`nnx.to_pure_dict(nnx.state(module))`; per-layer tensors are stacked on axis 0 and Linear kernels
are stored `[in, out]` (HF `weight` is `[out, in]`). Conversion is exact both ways.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial.convert import hf_io, namemap
from vlm_spatial.models.decoder import Decoder, DecoderConfig
from vlm_spatial.models import connectors
from vlm_spatial.models.connectors import ProjectorConfig

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# (HF name relative to the root, our path, transpose) for tensors outside the layer stack
_TOP = (
    ("model.embed_tokens.weight", ("embed_tokens", "embedding"), False),
    ("model.norm.weight", ("norm", "scale"), False),
    ("lm_head.weight", ("lm_head", "kernel"), True),
)
# (HF name relative to 'model.layers.{i}.', our path under 'layers', transpose, present-if)
_LAYER = (
    ("self_attn.q_proj.weight", ("self_attn", "q_proj", "kernel"), True, None),
    ("self_attn.q_proj.bias", ("self_attn", "q_proj", "bias"), False, "qkv_bias"),
    ("self_attn.k_proj.weight", ("self_attn", "k_proj", "kernel"), True, None),
    ("self_attn.k_proj.bias", ("self_attn", "k_proj", "bias"), False, "qkv_bias"),
    ("self_attn.v_proj.weight", ("self_attn", "v_proj", "kernel"), True, None),
    ("self_attn.v_proj.bias", ("self_attn", "v_proj", "bias"), False, "qkv_bias"),
    ("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), True, None),
    ("self_attn.o_proj.bias", ("self_attn", "o_proj", "bias"), False, "o_bias"),
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), True, None),
    ("mlp.gate_proj.bias", ("mlp", "gate_proj", "bias"), False, "mlp_bias"),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), True, None),
    ("mlp.up_proj.bias", ("mlp", "up_proj", "bias"), False, "mlp_bias"),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), True, None),
    ("mlp.down_proj.bias", ("mlp", "down_proj", "bias"), False, "mlp_bias"),
    ("input_layernorm.weight", ("input_layernorm", "scale"), False, None),
    ("post_attention_layernorm.weight", ("post_attention_layernorm", "scale"), False, None),
)


# ----------------------------------------------------------------------------- configs
def config_from_hf(hf_text_config: dict, **overrides) -> DecoderConfig:
    """DecoderConfig from a Hugging Face LLaMA/Qwen2 config dict (`config.json` or a LLaVA
    `text_config`). Reads `rope_parameters` (transformers 5) or the older `rope_theta` +
    `rope_scaling`. `overrides` replace fields (e.g. dtype='bfloat16', remat_policy='full')."""
    d = hf_text_config
    mt = d.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported decoder model_type {mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if d.get("use_sliding_window"):
        raise ValueError("Qwen2 use_sliding_window=True is not supported (full attention only)")
    rope_params = dict(d.get("rope_parameters") or {})
    if not rope_params:
        rope_params = dict(d.get("rope_scaling") or {})
        rope_params.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    if "type" in rope_params and "rope_type" not in rope_params:
        rope_params["rope_type"] = rope_params.pop("type")
    rope_type = rope_params.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}")
    theta = float(rope_params.pop("rope_theta", d.get("rope_theta", 10000.0)))
    heads = d["num_attention_heads"]
    kv_heads = d.get("num_key_value_heads") or heads
    qwen = mt == "qwen2"
    attn_bias = bool(d.get("attention_bias", False))
    fields = dict(
        family=mt,
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=rope_params if rope_type != "default" else None,
        qkv_bias=True if qwen else attn_bias,
        o_bias=False if qwen else attn_bias,
        mlp_bias=False if qwen else bool(d.get("mlp_bias", False)),
        hidden_act=d.get("hidden_act", "silu"),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=d.get("max_position_embeddings", 4096),
    )
    fields.update(overrides)
    return DecoderConfig(**fields)


def projector_config_from_hf(hf_llava_config: dict, **overrides) -> ProjectorConfig:
    """ProjectorConfig ('mlp2x_gelu') from a Hugging Face LLaVA config dict."""
    vision = hf_llava_config["vision_config"]["hidden_size"]
    layers = hf_llava_config.get("vision_feature_layer", -2)
    n = len(layers) if isinstance(layers, (list, tuple)) else 1
    fields = dict(
        kind="mlp2x_gelu",
        vision_dim=vision * n,
        text_dim=hf_llava_config["text_config"]["hidden_size"],
        act=hf_llava_config.get("projector_hidden_act", "gelu"),
        use_bias=bool(hf_llava_config.get("multimodal_projector_bias", True)),
    )
    fields.update(overrides)
    return ProjectorConfig(**fields)


def config_to_hf(cfg: DecoderConfig) -> dict:
    """Hugging Face `LlamaConfig`/`Qwen2Config` dict for `cfg`; `config_from_hf` inverts it (up to
    the runtime fields dtype, param_dtype and remat_policy)."""
    rope = {"rope_theta": cfg.rope_theta, "rope_type": "default", **(cfg.rope_scaling_dict or {})}
    d = dict(
        model_type=cfg.family, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps, rope_parameters=rope, hidden_act=cfg.hidden_act,
        tie_word_embeddings=cfg.tie_word_embeddings, max_position_embeddings=cfg.max_position_embeddings,
    )
    if cfg.family == "llama":
        d.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
    else:
        d.update(use_sliding_window=False)
    return d


# ----------------------------------------------------------------------------- name maps
def _layer_rows(cfg: DecoderConfig):
    return [r for r in _LAYER if r[3] is None or getattr(cfg, r[3])]


def _top_rows(cfg: DecoderConfig):
    return [r for r in _TOP if not (cfg.tie_word_embeddings and r[0] == "lm_head.weight")]


def _our_shapes(cfg: DecoderConfig) -> dict[tuple, tuple]:
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {
        ("embed_tokens", "embedding"): (v, d),
        ("norm", "scale"): (d,),
        ("lm_head", "kernel"): (d, v),
        ("self_attn", "q_proj", "kernel"): (d, q),
        ("self_attn", "q_proj", "bias"): (q,),
        ("self_attn", "k_proj", "kernel"): (d, kv),
        ("self_attn", "k_proj", "bias"): (kv,),
        ("self_attn", "v_proj", "kernel"): (d, kv),
        ("self_attn", "v_proj", "bias"): (kv,),
        ("self_attn", "o_proj", "kernel"): (q, d),
        ("self_attn", "o_proj", "bias"): (d,),
        ("mlp", "gate_proj", "kernel"): (d, f),
        ("mlp", "gate_proj", "bias"): (f,),
        ("mlp", "up_proj", "kernel"): (d, f),
        ("mlp", "up_proj", "bias"): (f,),
        ("mlp", "down_proj", "kernel"): (f, d),
        ("mlp", "down_proj", "bias"): (d,),
        ("input_layernorm", "scale"): (d,),
        ("post_attention_layernorm", "scale"): (d,),
    }


def _entry(name: str, path: tuple, layer: int | None, ours: tuple, transpose: bool) -> namemap.Entry:
    fn = namemap.transpose if transpose else namemap.copy
    return namemap.Entry(name, path, layer, tuple(reversed(ours)) if transpose else tuple(ours), fn, fn)


def hf_entries(cfg: DecoderConfig) -> list[namemap.Entry]:
    """The name map of `Decoder(cfg)` as `namemap.Entry`s (HF names relative to the causal-LM
    root; no 'lm_head.weight' when embeddings are tied)."""
    ours = _our_shapes(cfg)
    out = [_entry(name, path, None, ours[path], tr) for name, path, tr in _top_rows(cfg)]
    for i in range(cfg.num_layers):
        for name, path, tr, _ in _layer_rows(cfg):
            out.append(_entry(f"model.layers.{i}.{name}", ("layers",) + path, i, ours[path], tr))
    return out


def expected_hf_shapes(cfg: DecoderConfig) -> dict[str, tuple]:
    """Every HF tensor name of the causal LM (relative to its root) -> its HF shape.
    'lm_head.weight' is absent when embeddings are tied."""
    return namemap.expected_shapes(hf_entries(cfg))


def params_from_hf(get: Callable[[str], np.ndarray], cfg: DecoderConfig) -> dict:
    """Nested pure dict (numpy, `cfg.param_dtype`) matching `nnx.to_pure_dict(nnx.state(Decoder(cfg)))`
    from `get(hf_name) -> array` with HF names as in `expected_hf_shapes(cfg)`.
    Raises ValueError naming the HF tensor when a shape differs."""
    return namemap.read(hf_entries(cfg), get, cfg.params_dtype)


def params_to_hf(params: dict, cfg: DecoderConfig) -> dict[str, np.ndarray]:
    """Inverse of `params_from_hf`: nested pure dict -> {HF name: numpy array in HF layout}."""
    return dict(namemap.write(hf_entries(cfg), params))


def projector_entries(kind: str, vision_dim: int, text_dim: int, use_bias: bool = True,
                      **settings) -> list[namemap.Entry]:
    """The name map of the connector `kind` as `namemap.Entry`s, HF names relative to
    'multi_modal_projector.' (for 'mlp2x_gelu': 'linear_1.weight' `[D, Dv]`, 'linear_1.bias' `[D]`,
    'linear_2.weight' `[D, D]`, 'linear_2.bias'), from the connector's name table; `settings` are
    its `ProjectorConfig` settings (`connectors.SETTINGS`: depth, ...)."""
    from vlm_spatial.convert.params import param_shapes

    cfg = ProjectorConfig(kind=kind, vision_dim=vision_dim, text_dim=text_dim, use_bias=use_bias, **settings)
    shapes = param_shapes(lambda: connectors.build(cfg, rngs=nnx.Rngs(0)))
    return namemap.table_entries(connectors.get(kind).name_table(cfg), shapes)


def projector_params_from_hf(
    get: Callable[[str], np.ndarray], kind: str = "mlp2x_gelu", *, use_bias: bool = True, param_dtype="float32"
) -> dict:
    """Pure dict for `Projector` from HF names relative to 'multi_modal_projector.'
    ('linear_1.weight' `[D, Dv]`, 'linear_1.bias' `[D]`, 'linear_2.weight' `[D, D]`, 'linear_2.bias').
    Dimensions come from linear_1.weight; other shapes are checked (ValueError names the tensor)."""
    shape = np.shape(get("linear_1.weight"))
    if len(shape) != 2:
        raise ValueError(f"HF tensor 'linear_1.weight': expected a 2-D [text, vision] matrix, got {shape}")
    entries = projector_entries(kind, shape[1], shape[0], use_bias)
    return namemap.read(entries, get, jnp.dtype(param_dtype))


def projector_params_to_hf(params: dict, kind: str = "mlp2x_gelu") -> dict[str, np.ndarray]:
    """Inverse of `projector_params_from_hf`: names relative to 'multi_modal_projector.'."""
    dv, d = np.shape(params["linear_1"]["kernel"])
    return dict(namemap.write(projector_entries(kind, dv, d, "bias" in params["linear_1"]), params))


# ----------------------------------------------------------------------------- loading
def load_hf_causal_lm(path: str, *, mesh=None, **overrides) -> tuple[DecoderConfig, Decoder]:
    """Load a directory written by `LlamaForCausalLM`/`Qwen2ForCausalLM.save_pretrained`
    (config.json + safetensors), streamed tensor by tensor (sharded on `mesh` if given).
    `overrides` replace DecoderConfig fields (dtype, param_dtype, remat_policy...)."""
    from vlm_spatial.convert import loader

    cfg = config_from_hf(hf_io.read_config(path), **overrides)
    model = loader.load_module(
        lambda: Decoder(cfg, rngs=nnx.Rngs(0)), hf_io.HFCheckpoint(path), hf_entries(cfg), mesh=mesh
    )
    return cfg, model
