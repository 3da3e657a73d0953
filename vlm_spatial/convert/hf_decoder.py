"""Hugging Face <-> vlm_spatial for the decoder LM (LlamaForCausalLM, Qwen2ForCausalLM) and the
LLaVA projector (`multi_modal_projector.*`).

HF names are relative to the causal-LM root ('model.embed_tokens.weight', 'lm_head.weight') and
to 'multi_modal_projector.' for the projector. Our trees are nested pure dicts as given by
`nnx.to_pure_dict(nnx.state(module))`; per-layer tensors are stacked on axis 0 and Linear kernels
are stored `[in, out]` (HF `weight` is `[out, in]`). Conversion is exact both ways.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vlm_spatial.models.decoder import Decoder, DecoderConfig
from vlm_spatial.models.projector import PROJECTOR_KINDS, ProjectorConfig

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
_PROJ = (
    ("linear_1.weight", ("linear_1", "kernel"), True),
    ("linear_1.bias", ("linear_1", "bias"), False),
    ("linear_2.weight", ("linear_2", "kernel"), True),
    ("linear_2.bias", ("linear_2", "bias"), False),
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


def _hf_shape(ours: tuple, transpose: bool) -> tuple:
    return tuple(reversed(ours)) if transpose else tuple(ours)


def expected_hf_shapes(cfg: DecoderConfig) -> dict[str, tuple]:
    """Every HF tensor name of the causal LM (relative to its root) -> its HF shape.
    'lm_head.weight' is absent when embeddings are tied."""
    ours = _our_shapes(cfg)
    out = {name: _hf_shape(ours[path], tr) for name, path, tr in _top_rows(cfg)}
    for i in range(cfg.num_layers):
        for name, path, tr, _ in _layer_rows(cfg):
            out[f"model.layers.{i}.{name}"] = _hf_shape(ours[path], tr)
    return out


def _fetch(get: Callable[[str], np.ndarray], name: str, shape: tuple, transpose: bool, dtype):
    x = np.asarray(get(name))
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"HF tensor {name!r}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
    if transpose:
        x = x.T
    return np.ascontiguousarray(x.astype(dtype, copy=False))


def _set(tree: dict, path: tuple, value):
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def params_from_hf(get: Callable[[str], np.ndarray], cfg: DecoderConfig) -> dict:
    """Nested pure dict (numpy, `cfg.param_dtype`) matching `nnx.to_pure_dict(nnx.state(Decoder(cfg)))`
    from `get(hf_name) -> array` with HF names as in `expected_hf_shapes(cfg)`.
    Raises ValueError naming the HF tensor when a shape differs."""
    dtype = cfg.params_dtype
    shapes = expected_hf_shapes(cfg)
    params: dict = {}
    for name, path, tr in _top_rows(cfg):
        _set(params, path, _fetch(get, name, shapes[name], tr, dtype))
    for lname, path, tr, _ in _layer_rows(cfg):
        per_layer = []
        for i in range(cfg.num_layers):
            name = f"model.layers.{i}.{lname}"
            per_layer.append(_fetch(get, name, shapes[name], tr, dtype))
        _set(params, ("layers",) + path, np.stack(per_layer, axis=0))
    return params


def params_to_hf(params: dict, cfg: DecoderConfig) -> dict[str, np.ndarray]:
    """Inverse of `params_from_hf`: nested pure dict -> {HF name: numpy array in HF layout}."""
    out: dict[str, np.ndarray] = {}
    for name, path, tr in _top_rows(cfg):
        x = np.asarray(_get(params, path))
        out[name] = np.ascontiguousarray(x.T if tr else x)
    for lname, path, tr, _ in _layer_rows(cfg):
        stacked = np.asarray(_get(params, ("layers",) + path))
        for i in range(cfg.num_layers):
            x = stacked[i]
            out[f"model.layers.{i}.{lname}"] = np.ascontiguousarray(x.T if tr else x)
    return out


def _projector_rows(kind: str, use_bias: bool):
    if kind not in PROJECTOR_KINDS:
        raise ValueError(f"unknown projector kind {kind!r}; supported: {PROJECTOR_KINDS}")
    rows = [r for r in _PROJ if use_bias or not r[0].endswith(".bias")]
    return [r for r in rows if kind == "mlp2x_gelu" or r[0].startswith("linear_1")]


def projector_params_from_hf(
    get: Callable[[str], np.ndarray], kind: str = "mlp2x_gelu", *, use_bias: bool = True, param_dtype="float32"
) -> dict:
    """Pure dict for `Projector` from HF names relative to 'multi_modal_projector.'
    ('linear_1.weight' `[D, Dv]`, 'linear_1.bias' `[D]`, 'linear_2.weight' `[D, D]`, 'linear_2.bias').
    Dimensions come from linear_1.weight; other shapes are checked (ValueError names the tensor)."""
    w1 = np.asarray(get("linear_1.weight"))
    if w1.ndim != 2:
        raise ValueError(f"HF tensor 'linear_1.weight': expected a 2-D [text, vision] matrix, got {w1.shape}")
    d, dv = w1.shape
    shapes = {"linear_1.weight": (d, dv), "linear_1.bias": (d,), "linear_2.weight": (d, d), "linear_2.bias": (d,)}
    params: dict = {}
    for name, path, tr in _projector_rows(kind, use_bias):
        fetch = (lambda n: w1) if name == "linear_1.weight" else get
        _set(params, path, _fetch(fetch, name, shapes[name], tr, jnp.dtype(param_dtype)))
    return params


def projector_params_to_hf(params: dict, kind: str = "mlp2x_gelu") -> dict[str, np.ndarray]:
    """Inverse of `projector_params_from_hf`: names relative to 'multi_modal_projector.'."""
    use_bias = "bias" in params["linear_1"]
    out = {}
    for name, path, tr in _projector_rows(kind, use_bias):
        x = np.asarray(_get(params, path))
        out[name] = np.ascontiguousarray(x.T if tr else x)
    return out


# ----------------------------------------------------------------------------- loading
def safetensors_getter(path: str, prefix: str = "") -> Callable[[str], np.ndarray]:
    """`get(name)` reading `prefix + name` from the *.safetensors files in directory `path`
    (safetensors.numpy; no torch). Raises KeyError naming the tensor when it is absent."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    where: dict[str, str] = {}
    for f in files:
        with safe_open(f, framework="np") as fh:
            for k in fh.keys():
                where[k] = f

    def get(name: str) -> np.ndarray:
        key = prefix + name
        if key not in where:
            raise KeyError(f"tensor {key!r} not found in {path} ({len(where)} tensors)")
        with safe_open(where[key], framework="np") as fh:
            return fh.get_tensor(key)

    return get


def decoder_from_params(cfg: DecoderConfig, params: dict) -> Decoder:
    """A Decoder holding `params` (pure dict as from `params_from_hf`) without a random init."""
    abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    return nnx.merge(graphdef, state)


def load_hf_causal_lm(path: str, **overrides) -> tuple[DecoderConfig, Decoder]:
    """Load a directory written by `LlamaForCausalLM`/`Qwen2ForCausalLM.save_pretrained`
    (config.json + *.safetensors). `overrides` replace DecoderConfig fields (dtype, remat_policy...)."""
    with open(os.path.join(path, "config.json")) as f:
        hf_cfg = json.load(f)
    cfg = config_from_hf(hf_cfg, **overrides)
    params = params_from_hf(safetensors_getter(path), cfg)
    return cfg, decoder_from_params(cfg, params)
