"""Train-step throughput: this codebase vs `transformers`' LlavaForConditionalGeneration (PyTorch),
on equal terms (`perf/equal_terms.py`: same CPUs, same thread count, wall and CPU time, median of
alternating rounds, a ratio only when the losses agree to 5 decimals).

Both sides train the same LLaVA (CLIP-style encoder + 2-layer GELU projector + LLaMA LM), starting
from the SAME weights (the PyTorch model's, saved and opened with `vlm_spatial.load`), on the same
batch, as LLaVA's stage 2 does: projector + LM train, the encoder is frozen; AdamW (lr 1e-4
constant, weight decay 0), global-norm clipping at 1.0, float32 on CPU.

What one step is, on each side:
  ours   `vlm_spatial.training.step` jitted with shardings on a one-device mesh (forward, fp32 loss,
         backward, clip, AdamW update; the state is donated), timed until the loss is on the host
  torch  `model(..., labels=...)` (HF's shifted-label loss), `loss.backward()`,
         `clip_grad_norm_`, `AdamW.step()`, `zero_grad()`; eager, or `--torch_compile` (the
         model's forward under `torch.compile`, inductor)
Warm-up steps (for JAX: compilation; for torch.compile: its compilation) are not timed; their
losses (steps 1..warmup, before and after AdamW updates) are the equality check.

    python perf/train_throughput.py                       # small LLaVA, 1 pinned thread each
    python perf/train_throughput.py --threads 2
    python perf/train_throughput.py --lm_width 512 --lm_layers 8 --batch 2 --seq_len 1024
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equal_terms  # noqa: E402  (perf/ is not a package)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128, help="tokens per row, image tokens included")
    p.add_argument("--lm_width", type=int, default=256)
    p.add_argument("--lm_layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 2), their losses compared")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1, help="compute threads per side (both pinned to as many CPUs)")
    p.add_argument("--cpus", type=str, default="", help="comma-separated CPU ids to pin to (default: the first --threads)")
    p.add_argument("--layer_unroll", type=int, default=None,
                   help="our decoder/encoder layer_unroll (default: the config's, i.e. the backend default)")
    p.add_argument("--torch_compile", action="store_true", help="torch side: forward under torch.compile")
    return p.parse_args(argv)


def hf_config(vocab: int = 2048, image_size: int = 64, lm_width: int = 256, lm_layers: int = 4):
    """The LLaVA both sides train: CLIP-style 4-layer encoder (64 patches of 8x8 px, width 128),
    LLaMA LM `lm_layers` x `lm_width` (heads of 32, MLP 2.6875x), vocabulary `vocab` with the
    image token last."""
    import transformers as tf

    vision = tf.CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                 num_attention_heads=8, patch_size=8, image_size=image_size, projection_dim=64)
    heads = lm_width // 32
    text = tf.LlamaConfig(vocab_size=vocab, hidden_size=lm_width, intermediate_size=int(lm_width * 2.6875),
                          num_hidden_layers=lm_layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=4096)
    return tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab - 1,
                          vision_feature_select_strategy="default", vision_feature_layer=-2)


def make_batch(rng, batch: int, seq_len: int, n_image: int, image_token: int, image_size: int) -> dict:
    """A batch-contract batch (CONTRIBUTING.md): a 4-token prefix, the image slots, then text whose
    second half is the answer (labels); the last quarter of odd rows is right padding."""
    import numpy as np

    if seq_len < n_image + 8:
        raise SystemExit(f"--seq_len {seq_len} must exceed the {n_image} image tokens by at least 8")
    ids = rng.integers(1, image_token, size=(batch, seq_len)).astype(np.int32)
    ids[:, 4 : 4 + n_image] = image_token
    mask = np.ones((batch, seq_len), np.int32)
    mask[1::2, seq_len - seq_len // 4 :] = 0
    labels = np.where(mask == 1, ids, -100).astype(np.int32)
    labels[:, : 4 + n_image + (seq_len - 4 - n_image) // 2] = -100
    pixels = rng.normal(size=(batch, image_size, image_size, 3)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


class Ours:
    """This codebase's stage step on one device, from the torch model's weights."""

    def __init__(self, torch_model, batch: dict, lr: float, layer_unroll: int | None):
        import tempfile

        import jax
        from flax import nnx

        import vlm_spatial
        from vlm_spatial import parallel
        from vlm_spatial.models.vlm import VLM
        from vlm_spatial.training.loop import StageSpec, build_stage

        mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
        with tempfile.TemporaryDirectory() as tmp:  # through the public loader: safetensors on disk
            torch_model.save_pretrained(tmp)
            loaded = vlm_spatial.load(tmp, mesh=mesh)
        cfg = loaded.config
        if layer_unroll is not None:
            cfg = dataclasses.replace(cfg, decoder=cfg.decoder.replace(layer_unroll=layer_unroll),
                                      vision=dataclasses.replace(cfg.vision, layer_unroll=layer_unroll))
        self.config = cfg
        params = nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))
        spec = StageSpec("finetune", num_steps=10**6, trainable_parts=("projector", "lm"), lr=lr,
                         global_batch=len(batch["input_ids"]), warmup_ratio=0.0, schedule="constant",
                         max_grad_norm=1.0)
        self.setup = build_stage(lambda: VLM(cfg, rngs=nnx.Rngs(0)), mesh, spec)
        self.state = self.setup.init_state(params)
        self.fn = self.setup.step_fn(batch)
        self.batch = parallel.shard_batch(batch, mesh)

    def step(self) -> float:
        import jax

        self.state, metrics = self.fn(self.state, self.batch)
        return float(jax.device_get(metrics["loss"]))


class Torch:
    """transformers' LlavaForConditionalGeneration, encoder frozen, torch AdamW."""

    def __init__(self, model, batch: dict, lr: float, compile_forward: bool):
        import torch

        self.model = model.train()
        for p in self.model.model.vision_tower.parameters():
            p.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        self.forward = torch.compile(self.model) if compile_forward else self.model
        self.inputs = {
            "input_ids": torch.tensor(batch["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(batch["attention_mask"], dtype=torch.long),
            "labels": torch.tensor(batch["labels"], dtype=torch.long),
            "pixel_values": torch.tensor(batch["pixel_values"]).permute(0, 3, 1, 2).contiguous(),
        }

    def step(self) -> float:
        import torch

        loss = self.forward(**self.inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def main(argv=None) -> dict:
    """Run the comparison; print the report; return {'losses', 'timings', 'lines'}. Raises
    `equal_terms.UnequalWork` (after printing the checks) when the losses differ."""
    args = parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    pinning = equal_terms.pin(args.threads, cpus)
    import numpy as np
    import torch
    import transformers as tf

    from vlm_spatial.models import layers

    torch.manual_seed(0)
    cfg = hf_config(lm_width=args.lm_width, lm_layers=args.lm_layers)
    hf_model = tf.LlavaForConditionalGeneration(cfg)
    vision = cfg.vision_config
    n_image = (vision.image_size // vision.patch_size) ** 2
    batch = make_batch(np.random.default_rng(0), args.batch, args.seq_len, n_image, cfg.image_token_id,
                       vision.image_size)
    ours = Ours(hf_model, batch, args.lr, args.layer_unroll)
    theirs = Torch(hf_model, batch, args.lr, args.torch_compile)  # converted above: same start weights

    losses = {"ours": [], "torch": []}
    for _ in range(max(args.warmup, 2)):
        losses["ours"].append(ours.step())
        losses["torch"].append(theirs.step())
    steps = lambda side: (lambda: [side.step() for _ in range(args.steps)])  # noqa: E731
    timings = equal_terms.alternate({"ours": steps(ours), "torch": steps(theirs)}, args.rounds)

    n_params = sum(p.numel() for p in hf_model.parameters())
    d, e = ours.config.decoder, ours.config.vision
    lines = equal_terms.describe_backends(pinning, {
        "ours:": f"attention {layers.attention_kernel(d.compute_dtype)}; layers unrolled by "
                 f"{layers.resolve_unroll(d.layer_unroll, d.num_layers)} (LM), "
                 f"{layers.resolve_unroll(e.layer_unroll, e.num_layers)} (encoder); remat {d.remat_policy}",
        "torch:": f"{'torch.compile (inductor)' if args.torch_compile else 'eager'}, attention "
                  f"{hf_model.config.text_config._attn_implementation}",
    })
    lines += [
        f"model    LLaVA: CLIP-style encoder 4x128 ({n_image} image tokens), LLaMA {args.lm_layers}x{args.lm_width}, "
        f"vocab {cfg.text_config.vocab_size}; {n_params / 1e6:.1f} M params, encoder frozen, float32",
        f"work     {args.batch} rows x {args.seq_len} tokens per step; AdamW + clip 1.0; {max(args.warmup, 2)} "
        f"warm-up steps untimed; {args.rounds} alternating rounds x {args.steps} steps",
    ]
    checks = [equal_terms.same_losses(losses["ours"], losses["torch"])]
    lines += equal_terms.report(timings, args.steps * args.batch, "samples", checks, header=lines)
    return {"losses": losses, "timings": timings, "lines": lines}


if __name__ == "__main__":
    main()
