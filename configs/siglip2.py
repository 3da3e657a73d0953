"""LLaVA-SigLIP2 (SigLIP2 so400m/14-384) + Vicuna-7B v1.5, trained as in the paper.

    python -m vlm_spatial.main --config=configs/siglip2.py --workdir=runs/siglip2 \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/siglip2.py:tiny --workdir=runs/siglip2_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    return common.variant_config("siglip2", "siglip2-so400m/14-384", rope2d=False, arg=arg)
