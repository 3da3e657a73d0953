"""LLaVA-1.5 (CLIP ViT-L/14-336) + Vicuna-7B v1.5, trained as in the paper.

    python -m vlm_spatial.main --config=configs/clip.py --workdir=runs/clip \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/clip.py:tiny --workdir=runs/clip_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    return common.variant_config("clip", "clip-l/14-336", rope2d=False, arg=arg)
