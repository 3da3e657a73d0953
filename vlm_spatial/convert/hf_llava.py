"""Hugging Face `LlavaForConditionalGeneration` <-> vlm_spatial `VLM`: configs, name map, loading.

Every spelling of LLaVA tensor names is brought to one canonical form before mapping:

| where it comes from                         | vision                         | LM                         |
|---------------------------------------------|--------------------------------|----------------------------|
| canonical (what transformers 5 writes)      | `vision_tower.<vision name>`   | `language_model.<LM name>` |
| `vision_tower.vision_model.*` (public)      | prefix `vision_model.` dropped |                            |
| in-memory `state_dict()` of transformers 5  | `model.vision_tower.*`         | `model.language_model.*` (+ `lm_head.*`) |

where `<vision name>` is what `hf_vision` uses and `<LM name>` is relative to the causal-LM root
(`model.layers.0...`, `lm_head.weight`). Projector tensors are `multi_modal_projector.*`.

What transformers cannot express (the encoder's 2D-RoPE settings, a NaFlex patch budget) is kept
under the `vlm_spatial` key of `config.json`: transformers ignores it and runs the plain model,
this codebase restores the exact config. A connector LLaVA lacks (pool2d, c_abstractor, resampler,
linear) is kept there too, and the model_type is then `NOT_LLAVA`, which transformers refuses. A tensor the plain model has and ours lacks (the learned
position table of a RoPE-only encoder) is written as zeros and skipped on the way back.
"""
from __future__ import annotations

import os

from vlm_spatial.convert import hf_decoder, hf_io, hf_vision, loader, namemap
from vlm_spatial.models import connectors
from vlm_spatial.models.layers import ACTIVATIONS
from vlm_spatial.models.vlm import VLMConfig

VISION = "vision_tower."
PROJECTOR = "multi_modal_projector."
LM = "language_model."
EXTRA_KEY = "vlm_spatial"
# VisionConfig fields that transformers' configs cannot express and whose model transformers can
# still run (it ignores them: see `ignored`); kept under EXTRA_KEY. Other differences are refused.
VISION_EXTRAS = ("rope2d", "rope2d_layout", "rope2d_theta", "rope2d_layers", "keep_abs_pos_emb", "max_num_patches",
                 "image_size", "family", "pos_interpolation")
# VLMConfig fields of the connector: a connector LlavaForConditionalGeneration does not have, and the
# settings only such connectors read; kept under EXTRA_KEY too.
PROJECTOR_EXTRAS = ("projector",) + tuple(f"projector_{k}" for k in connectors.SETTINGS)
# Fields that say how a model runs, not what it is: never compared or exported.
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat_policy", "layer_unroll")
# config.json's model_type when transformers cannot run the model (its connector): AutoModel refuses it
# by name instead of loading LLaVA's projector in its place.
NOT_LLAVA = "vlm_spatial"

_RENAMES = (
    ("model.language_model.", LM + "model."),
    ("lm_head.", LM + "lm_head."),
    ("model.vision_tower.", VISION),
    ("model.multi_modal_projector.", PROJECTOR),
)


def canonical_name(name: str) -> str:
    """Map any on-disk or in-memory LLaVA tensor name to the canonical form (module docstring)."""
    for old, new in _RENAMES:
        if name.startswith(old):
            name = new + name[len(old):]
            break
    if name.startswith(VISION + "vision_model."):
        name = VISION + name[len(VISION + "vision_model."):]
    return name


# ----------------------------------------------------------------------------- configs
def config_from_hf(hf: dict) -> VLMConfig:
    """`VLMConfig` from a LLaVA `config.json` dict (model_type 'llava', or `NOT_LLAVA` as `to-hf`
    writes a model with a connector transformers lacks), with the settings kept under its
    `vlm_spatial` key applied."""
    if hf.get("model_type") not in ("llava", NOT_LLAVA):
        raise ValueError(
            f"model_type {hf.get('model_type')!r} is not supported as a whole VLM; supported: 'llava' "
            "(for separate vision and LM directories use `python -m vlm_spatial.convert assemble`)"
        )
    layer = hf.get("vision_feature_layer", -2)
    if not isinstance(layer, int) and not (isinstance(layer, (list, tuple)) and all(isinstance(i, int) for i in layer)):
        raise ValueError(f"vision_feature_layer={layer!r}: expected a layer index or a list of them")
    act = hf.get("projector_hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"projector_hidden_act={act!r} is not supported; supported: {', '.join(ACTIVATIONS)}")
    extra = dict(hf.get(EXTRA_KEY) or {})
    vision_extra, projector_extra = extra.pop("vision", {}), extra.pop("projector", {})
    unknown = sorted(set(extra) | (set(vision_extra) - set(VISION_EXTRAS)) | (set(projector_extra) - set(PROJECTOR_EXTRAS)))
    if unknown:
        raise ValueError(f"config.json[{EXTRA_KEY!r}] has unknown settings {unknown}; known: vision.{VISION_EXTRAS}, "
                         f"projector.{PROJECTOR_EXTRAS}")
    text = hf["text_config"]
    # transformers 5 ties the LM head to the embeddings if the top-level flag or the text config says so
    tie = bool(hf.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False))
    return VLMConfig(
        vision=hf_vision.config_from_hf(hf["vision_config"], **vision_extra),
        decoder=hf_decoder.config_from_hf(text, tie_word_embeddings=tie),
        image_token_id=hf.get("image_token_id", hf.get("image_token_index", 32000)),
        projector_act=act,
        projector_bias=bool(hf.get("multimodal_projector_bias", True)),
        vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
        vision_feature_select=hf.get("vision_feature_select_strategy", "default"),
        **{"projector": "mlp2x_gelu", **projector_extra},
    )


def _fields(cfg: VLMConfig) -> dict[str, object]:
    """'vision.rope2d' -> value, ... for every architecture field (runtime fields left out)."""
    d = cfg.to_dict()
    flat = {k: v for k, v in d.items() if k not in ("vision", "decoder")}
    for part in ("vision", "decoder"):
        flat.update({f"{part}.{k}": v for k, v in d[part].items() if k not in RUNTIME_FIELDS})
    return flat


def runnable(cfg: VLMConfig) -> bool:
    """Whether `LlavaForConditionalGeneration` can run `cfg` (its connector is LLaVA's projector)."""
    return connectors.get(cfg.projector).hf_llava


def config_to_hf(cfg: VLMConfig) -> dict:
    """The LLaVA `config.json` dict for `cfg` (model_type `NOT_LLAVA` when not `runnable`);
    `config_from_hf` inverts it exactly (runtime fields aside). Settings transformers cannot
    express go under the `vlm_spatial` key if they are `VISION_EXTRAS` or `PROJECTOR_EXTRAS`;
    anything else is refused with a ValueError naming the fields."""
    hf = dict(
        model_type="llava" if runnable(cfg) else NOT_LLAVA,
        architectures=["LlavaForConditionalGeneration"] if runnable(cfg) else [],
        vision_config=hf_vision.config_to_hf(cfg.vision), text_config=hf_decoder.config_to_hf(cfg.decoder),
        image_token_index=cfg.image_token_id, image_seq_length=cfg.num_image_tokens,
        projector_hidden_act=cfg.projector_act, multimodal_projector_bias=cfg.projector_bias,
        vision_feature_layer=cfg.vision_feature_layer if isinstance(cfg.vision_feature_layer, int)
        else list(cfg.vision_feature_layer),
        vision_feature_select_strategy=cfg.vision_feature_select, tie_word_embeddings=cfg.decoder.tie_word_embeddings,
    )
    want, plain = _fields(cfg), _fields(config_from_hf(hf))
    lost = sorted(k for k in want if want[k] != plain[k])
    vision = [k for k in lost if k.startswith("vision.") and k[7:] in VISION_EXTRAS]
    projector = [k for k in lost if k in PROJECTOR_EXTRAS]
    refused = [f"{k}={want[k]!r}" for k in lost if k not in vision + projector]
    if refused:
        raise ValueError(f"transformers' LLaVA config cannot express {', '.join(refused)}")
    extra = {"vision": {k.removeprefix("vision."): want[k] for k in vision}, "projector": {k: want[k] for k in projector}}
    if lost:
        hf[EXTRA_KEY] = {part: kept for part, kept in extra.items() if kept}
    return hf


def ignored(cfg: VLMConfig) -> dict[str, object]:
    """The encoder settings of `cfg` that `config_to_hf` keeps under
    `config.json['vlm_spatial']['vision']`: transformers ignores them (and runs the model without
    them); vlm_spatial restores them."""
    return config_to_hf(cfg).get(EXTRA_KEY, {}).get("vision", {})


def read_config(path: str) -> VLMConfig:
    """The `VLMConfig` of the LLaVA directory `path`."""
    return config_from_hf(hf_io.read_config(path))


# ----------------------------------------------------------------------------- name map
def hf_entries(cfg: VLMConfig) -> list[namemap.Entry]:
    """The name map of `VLM(cfg)`: canonical LLaVA names <-> paths under 'vision', 'projector',
    'decoder'."""
    p = cfg.projector_config
    projector = hf_decoder.projector_entries(p.kind, p.vision_dim, p.text_dim, p.use_bias,
                                             **{s: getattr(p, s) for s in connectors.SETTINGS})
    return (
        namemap.under(hf_vision.hf_entries(cfg.vision), VISION, ("vision",))
        + namemap.under(projector, PROJECTOR, ("projector",))
        + namemap.under(hf_decoder.hf_entries(cfg.decoder), LM, ("decoder",))
    )


def expected_hf_shapes(cfg: VLMConfig) -> dict[str, tuple[int, ...]]:
    """Canonical tensor names -> shapes of a LLaVA checkpoint for `cfg`."""
    return namemap.expected_shapes(hf_entries(cfg))


def padding_tensors(cfg: VLMConfig) -> dict[str, tuple[int, ...]]:
    """Tensors the transformers model of `cfg` has but `VLM(cfg)` does not (the learned position
    table of an encoder with 2D-RoPE only, empty tensors; `hf_vision.padding_tensors`): canonical
    name -> shape. Exported as zeros, skipped on load."""
    return {VISION + k: v for k, v in hf_vision.padding_tensors(cfg.vision).items()}


def load_params(path: str, cfg: VLMConfig, target: dict, shardings: dict | None = None) -> dict:
    """Params of `VLM(cfg)` streamed from the LLaVA directory `path` (see `loader.load_params`):
    `target`/`shardings` as `params.abstract_params` gives them. Missing, unexpected or
    mis-shaped tensors raise `WeightsError` naming each of them."""
    skip = set(padding_tensors(cfg))

    def rename(name: str) -> str | None:
        name = canonical_name(name)
        return None if name in skip else name

    return loader.load_params(hf_io.HFCheckpoint(path), hf_entries(cfg), target, shardings, rename=rename)


def import_hf(src: str, out: str, *, param_dtype: str | None = None, mesh=None) -> VLMConfig:
    """Write the LLaVA directory `src` as a vlm_spatial checkpoint at `out` (params, config and
    the tokenizer when `src` has one). `param_dtype` stores params in another dtype (e.g.
    'bfloat16' halves host memory for 7B). Returns the config written."""
    from flax import nnx

    from vlm_spatial import checkpoint
    from vlm_spatial.convert import params as params_lib
    from vlm_spatial.models.vlm import VLM

    if not os.path.isdir(src):
        raise FileNotFoundError(f"no Hugging Face LLaVA directory at {src!r}")
    cfg = checkpoint.with_dtypes(read_config(src), param_dtype=param_dtype)
    target, shardings = params_lib.abstract_params(lambda: VLM(cfg, rngs=nnx.Rngs(0)), mesh)
    params = load_params(src, cfg, target, shardings)
    checkpoint.write_model(out, cfg, params, checkpoint.read_tokenizer(src))
    return cfg
