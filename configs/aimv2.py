"""LLaVA-AIMv2 (AIMv2-L/14-224) + Vicuna-7B v1.5, trained as in the paper.

    python -m vlm_spatial.main --config=configs/aimv2.py --workdir=runs/aimv2 \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/aimv2.py:tiny --workdir=runs/aimv2_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    return common.variant_config("aimv2", "aimv2-l/14-224", rope2d=False, arg=arg)
