"""The real LLaVA-1.5-7B configuration, built abstractly (no memory), has exactly the tensor layout of
the public `llava-hf/llava-1.5-7b-hf` safetensors checkpoint (shapes written here as data)."""
import math

import jax
from flax import nnx

from vlm_spatial.convert import hf_llava
from vlm_spatial.models.presets import VLM_PRESETS
from vlm_spatial.models.vlm import VLM

# Public llava-hf/llava-1.5-7b-hf layout: name -> shape ({i} repeats over layers).
VISION_TOP = {
    "vision_tower.vision_model.embeddings.class_embedding": (1024,),
    "vision_tower.vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
    "vision_tower.vision_model.embeddings.position_embedding.weight": (577, 1024),
    "vision_tower.vision_model.pre_layrnorm.weight": (1024,),
    "vision_tower.vision_model.pre_layrnorm.bias": (1024,),
    "vision_tower.vision_model.post_layernorm.weight": (1024,),
    "vision_tower.vision_model.post_layernorm.bias": (1024,),
}
VISION_LAYER = {
    **{f"self_attn.{p}_proj.{w}": (1024, 1024) if w == "weight" else (1024,) for p in "qkv" for w in ("weight", "bias")},
    "self_attn.out_proj.weight": (1024, 1024), "self_attn.out_proj.bias": (1024,),
    "layer_norm1.weight": (1024,), "layer_norm1.bias": (1024,),
    "layer_norm2.weight": (1024,), "layer_norm2.bias": (1024,),
    "mlp.fc1.weight": (4096, 1024), "mlp.fc1.bias": (4096,),
    "mlp.fc2.weight": (1024, 4096), "mlp.fc2.bias": (1024,),
}
PROJECTOR = {
    "multi_modal_projector.linear_1.weight": (4096, 1024), "multi_modal_projector.linear_1.bias": (4096,),
    "multi_modal_projector.linear_2.weight": (4096, 4096), "multi_modal_projector.linear_2.bias": (4096,),
}
LM_TOP = {
    "language_model.model.embed_tokens.weight": (32064, 4096),
    "language_model.model.norm.weight": (4096,),
    "language_model.lm_head.weight": (32064, 4096),
}
LM_LAYER = {
    **{f"self_attn.{p}_proj.weight": (4096, 4096) for p in "qkvo"},
    "mlp.gate_proj.weight": (11008, 4096), "mlp.up_proj.weight": (11008, 4096),
    "mlp.down_proj.weight": (4096, 11008),
    "input_layernorm.weight": (4096,), "post_attention_layernorm.weight": (4096,),
}
PUBLIC_PARAMETER_COUNT = 7_063_427_072  # as reported for llava-hf/llava-1.5-7b-hf


def public_layout() -> dict:
    shapes = {**VISION_TOP, **PROJECTOR, **LM_TOP}
    for i in range(24):
        shapes.update({f"vision_tower.vision_model.encoder.layers.{i}.{k}": v for k, v in VISION_LAYER.items()})
    for i in range(32):
        shapes.update({f"language_model.model.layers.{i}.{k}": v for k, v in LM_LAYER.items()})
    return {hf_llava.canonical_name(k): v for k, v in shapes.items()}


def test_7b_layout_matches_public_checkpoint():
    cfg = VLM_PRESETS["llava-1.5-7b"]()
    assert cfg.num_image_tokens == 576
    assert hf_llava.expected_hf_shapes(cfg) == public_layout()

    abstract = nnx.eval_shape(lambda: VLM(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    ours = sum(math.prod(x.shape) for x in leaves)
    public = sum(math.prod(s) for s in public_layout().values())
    assert public == PUBLIC_PARAMETER_COUNT
    assert ours == public
