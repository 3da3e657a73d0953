"""Model-FLOPs estimate and peak FLOP/s per accelerator, for the MFU shown in the progress bar."""
from __future__ import annotations

import jax

# dense bf16 peak FLOP/s per device (vendor figures, no sparsity)
PEAK_FLOPS = {
    "a40": 149.7e12,
    "a100": 312e12,
    "h100": 989e12,
    "h200": 989e12,
    "l40s": 362e12,
    "tpu v4": 275e12,
    "tpu v5 lite": 197e12,
    "tpu v5e": 197e12,
    "tpu v5p": 459e12,
    "tpu v5": 459e12,
    "tpu v6 lite": 918e12,
    "tpu v6e": 918e12,
}


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Peak bf16 FLOP/s of `device` (default: the first), or None when unknown (e.g. CPU)."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return flops
    return None


def train_flops_per_step(
    *,
    n_vision: int,
    n_projector: int,
    n_decoder: int,
    trainable_parts,
    batch: int,
    seq_len: int,
    image_tokens: int,
    lm_layers: int,
    lm_width: int,
) -> float:
    """Estimated FLOPs of one optimizer step on `batch` rows (matmuls only, 2 FLOPs per MAC).

    Forward is 2*N per token for every part; backward costs 2*N for the activation gradients of
    every part that has a trainable part upstream (or is itself trainable) and 2*N for weight
    gradients of trainable parts. Causal attention adds 2*2*L*T*D per token forward.
    `n_*` are parameter counts; the vision tower and projector run on `image_tokens` per row.
    """
    parts = set(trainable_parts)
    vis_tokens = batch * image_tokens
    lm_tokens = batch * seq_len
    attn = 2 * 2 * lm_layers * seq_len * lm_width / 2 * lm_tokens  # causal: half the square
    fwd = 2 * (n_vision + n_projector) * vis_tokens + 2 * n_decoder * lm_tokens + attn
    bwd = 0.0
    upstream = False  # data flows vision -> projector -> decoder; gradients flow back
    for name, n, toks in (("vision", n_vision, vis_tokens), ("projector", n_projector, vis_tokens),
                          ("lm", n_decoder, lm_tokens)):
        train = name in parts
        if upstream or train:  # activation gradients through this part
            bwd += 2 * n * toks + (2 * attn if name == "lm" else 0)
        if train:  # weight gradients
            bwd += 2 * n * toks
        upstream = upstream or train
    return float(fwd + bwd)
