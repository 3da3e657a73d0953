"""LLaVA-DINOv2 (DINOv2 ViT-L/14) + Vicuna-7B v1.5, trained as the paper trains its variants.

    python -m vlm_spatial.convert assemble --vision dinov2-large --lm vicuna-7b-v1.5 --image_size 256 --out CKPT
    python -m vlm_spatial.main --config=configs/dinov2.py --workdir=runs/dinov2 \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/dinov2.py:tiny --workdir=runs/dinov2_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    return common.variant_config("dinov2", "dinov2-l/14-518", rope2d=False, arg=arg)
