"""The tiny real VLM (CLIP-style encoder with 2D-RoPE + LLaMA decoder, scanned layers) and learnable
batches for the training tests - test-only, not part of the package."""
from __future__ import annotations

import numpy as np
from flax import nnx

from vlm_spatial.models.presets import vlm_config
from vlm_spatial.models.vlm import VLM, VLMConfig
from vlm_spatial.training.loop import StageSpec, build_stage


def tiny_config(remat: str = "full") -> VLMConfig:
    """tiny-clip (32 px, 8 px patches: 16 image tokens) with 2D-RoPE + tiny-llama (vocab 128),
    both with remat policy `remat`."""
    return vlm_config("tiny-clip", "tiny-llama", vision_overrides=dict(rope2d=True, remat_policy=remat),
                      decoder_overrides=dict(remat_policy=remat))


def tiny_setup(mesh, parts=("projector", "lm", "vision"), accum: int = 1, batch: int = 8, lr: float = 1e-3,
               remat: str = "full"):
    """`build_stage` of the tiny VLM on `mesh` (10-step cosine stage without warm-up)."""
    cfg = tiny_config(remat)
    spec = StageSpec("finetune", num_steps=10, trainable_parts=tuple(parts), lr=lr, global_batch=batch,
                     grad_accum_steps=accum, warmup_ratio=0.0)
    return build_stage(lambda: VLM(cfg, rngs=nnx.Rngs(0)), mesh, spec)


def make_batch(rng: np.random.Generator, b: int, t: int = 32, cfg: VLMConfig | None = None) -> dict:
    """A batch per the contract: bos, the image slots, a question, then an answer token that
    depends on the image (brighter left or right half), so it is learnable; one row padded."""
    cfg = cfg or tiny_config()
    n = cfg.num_image_tokens
    size = cfg.vision.image_size
    px = rng.normal(size=(b, size, size, 3)).astype(np.float32)
    ids = rng.integers(5, cfg.image_token_id, size=(b, t)).astype(np.int32)
    ids[:, 0] = 1
    ids[:, 1:1 + n] = cfg.image_token_id
    left = px[:, :, : size // 2].mean(axis=(1, 2, 3)) > px[:, :, size // 2:].mean(axis=(1, 2, 3))
    ids[:, -1] = np.where(left, 10, 11)
    labels = np.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    mask = np.ones_like(ids)
    mask[0, -6:-4] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": px}
