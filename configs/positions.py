"""Where 2D position can go: the placements as named experiments on one recipe (the paper's LLaVA-1.5
with CLIP ViT-L/14-336 + Vicuna-7B v1.5, or with `:tiny` the tiny CPU job), differing only in the
model knobs below, so their results compare side by side.

    python -m vlm_spatial.main --config=configs/positions.py:encoder_rope --workdir=runs/pos_encoder_rope \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/positions.py:encoder_rope:tiny --workdir=runs/pos_encoder_rope_tiny
    python -m vlm_spatial.main --config=configs/positions.py:tiny ...     # = encoder_rope:tiny

  encoder_rope   the paper: axial 2D-RoPE in every encoder layer, learned table kept, LLaVA's MLP connector
  learned_only   LLaVA-1.5: the learned absolute table only, 1D positions after the connector
  pooled_grid    encoder_rope with 'pool2d': 2x2 average pooling keeps the grid with 4x fewer tokens
  abstractor     encoder_rope with Honeybee's 'c_abstractor': ResNet blocks around adaptive pooling
  resampler      encoder_rope with a Perceiver 'resampler' (as many tokens as the abstractor): the grid
                 discarded after the encoder - the control arm
"""
from configs import common

ENCODER = "clip-l/14-336"
# name: (variant, model knobs laid over the paper recipe)
EXPERIMENTS = {
    "encoder_rope": ("clip_2drope", dict(rope2d=True)),
    "learned_only": ("clip", dict(rope2d=False)),
    "pooled_grid": ("positions_pooled_grid", dict(rope2d=True, connector="pool2d")),
    "abstractor": ("positions_abstractor", dict(rope2d=True, connector="c_abstractor")),
    "resampler": ("positions_resampler", dict(rope2d=True, connector="resampler")),
}
DEFAULT = "encoder_rope"


def get_config(arg=None):
    """`arg`: '' | 'tiny' | NAME | 'NAME:tiny' with NAME a key of `EXPERIMENTS` (default encoder_rope)."""
    name, _, size = (arg or "").partition(":")
    if name == "tiny" and not size:
        name, size = DEFAULT, "tiny"
    name = name or DEFAULT
    if name not in EXPERIMENTS or size not in ("", "tiny"):
        raise ValueError(f"configs/positions.py takes NAME or NAME:tiny with NAME one of {', '.join(EXPERIMENTS)}; "
                         f"got {arg!r}")
    variant, knobs = EXPERIMENTS[name]
    c = common.variant_config(variant, ENCODER, rope2d=knobs.get("rope2d", False), arg=size or None)
    c.model.update(knobs)
    return c
