"""LLaVA-2D-RoPE (CLIP ViT-L/14-336 with 2D-RoPE) + Vicuna-7B v1.5, trained as in the paper.

    python -m vlm_spatial.main --config=configs/clip_2drope.py --workdir=runs/clip_2drope \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/clip_2drope.py:tiny --workdir=runs/clip_2drope_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    return common.variant_config("clip_2drope", "clip-l/14-336", rope2d=True, arg=arg)
