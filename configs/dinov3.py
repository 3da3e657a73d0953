"""LLaVA-DINOv3 (DINOv3 ViT-L/16, whose native 2D-RoPE rotates every layer by the patch centre's
place in the image) + Vicuna-7B v1.5: the contrast to the paper's retrofitted 2D-RoPE.

    python -m vlm_spatial.convert assemble --vision dinov3-vitl16-pretrain-lvd1689m --lm vicuna-7b-v1.5 \\
        --image_size 256 --out CKPT
    python -m vlm_spatial.main --config=configs/dinov3.py --workdir=runs/dinov3 \\
        --config.model.init_checkpoint=CKPT --config.stages.pretrain.data_file=... (see configs/common.py)
    python -m vlm_spatial.main --config=configs/dinov3.py:tiny --workdir=runs/dinov3_tiny   # laptop CPU
"""
from configs import common


def get_config(arg=None):
    # rope2d=True: the run keeps DINOv3's own RoPE on (False would switch it off)
    return common.variant_config("dinov3", "dinov3-l/16-224", rope2d=True, arg=arg)
