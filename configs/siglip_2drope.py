"""LLaVA-SigLIP-2D-RoPE (SigLIP so400m/14-384 with 2D-RoPE) + Vicuna-7B v1.5, trained as in the paper.

    python -m vlm_spatial.main --config=configs/siglip_2drope.py --workdir=runs/siglip_2drope \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/siglip_2drope.py:tiny --workdir=runs/siglip_2drope_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    return common.variant_config("siglip_2drope", "siglip-so400m/14-384", rope2d=True, arg=arg)
