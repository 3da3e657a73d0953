"""LLaVA-AIMv2-2D-RoPE (AIMv2-L/14-224 with 2D-RoPE) + Vicuna-7B v1.5, trained as in the paper.

    python -m vlm_spatial.main --config=configs/aimv2_2drope.py --workdir=runs/aimv2_2drope \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/aimv2_2drope.py:tiny --workdir=runs/aimv2_2drope_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    return common.variant_config("aimv2_2drope", "aimv2-l/14-224", rope2d=True, arg=arg)
