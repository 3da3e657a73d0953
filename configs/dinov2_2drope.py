"""LLaVA-DINOv2-2D-RoPE (DINOv2 ViT-L/14 with the paper's retrofitted axial 2D-RoPE) + Vicuna-7B v1.5.

    python -m vlm_spatial.main --config=configs/dinov2_2drope.py --workdir=runs/dinov2_2drope \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/dinov2_2drope.py:tiny --workdir=runs/dinov2_2drope_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    return common.variant_config("dinov2_2drope", "dinov2-l/14-518", rope2d=True, arg=arg)
