"""Train-step throughput: this codebase vs `transformers`' LlavaForConditionalGeneration (PyTorch).

Both sides train the same small LLaVA (CLIP-style encoder + 2-layer GELU projector + LLaMA LM),
starting from the SAME weights (the PyTorch model's, saved and opened with `vlm_spatial.load`),
on the same batch, as LLaVA's stage 2 does: projector + LM train, the encoder is frozen; AdamW
(lr 1e-4 constant, weight decay 0), global-norm clipping at 1.0, float32 on CPU.

What one step is, on each side:
  ours   `vlm_spatial.training.step` jitted with shardings on a one-device mesh (forward, fp32 loss,
         backward, clip, AdamW update; the state is donated), timed until the metrics are ready
  torch  `model(..., labels=...)` (HF's shifted-label loss), `loss.backward()`,
         `clip_grad_norm_`, `AdamW.step()`, `zero_grad()`
Both sides get one compute thread by default (`--all_cores`: each library's own threading): on a
shared machine a multi-threaded torch loses far more to contention than XLA does, which would
measure the machine's load rather than the code. Warm-up steps (at least 2; for JAX: compilation)
are not timed. Timing alternates between the two sides over
`--rounds` rounds and reports each side's median, so a load change on a shared machine hits both.
The losses of steps 1 and 2 are printed too: equal values show that both sides compute the same
loss and make the same update.

    python perf/train_throughput.py
    python perf/train_throughput.py --batch 16 --seq_len 256 --rounds 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=128, help="tokens per row, image tokens included")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the first round (at least 2)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--all_cores", action="store_true",
                   help="each library's default threading instead of one thread each")
    return p.parse_args(argv)


def hf_config(vocab: int = 2048, image_size: int = 64):
    """The small LLaVA both sides train: CLIP-style 4-layer encoder (64 patches of 8x8 px, width 128),
    LLaMA 4-layer LM (width 256, 8 heads), vocabulary `vocab` with the image token last."""
    import transformers as tf

    vision = tf.CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                 num_attention_heads=8, patch_size=8, image_size=image_size, projection_dim=64)
    text = tf.LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024)
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

    def __init__(self, torch_model, batch: dict, lr: float):
        import tempfile

        import jax
        from flax import nnx

        import vlm_spatial
        from vlm_spatial import parallel
        from vlm_spatial.models.vlm import VLM
        from vlm_spatial.training.loop import StageSpec, build_stage

        with tempfile.TemporaryDirectory() as tmp:  # through the public loader: safetensors on disk
            torch_model.save_pretrained(tmp)
            loaded = vlm_spatial.load(tmp, mesh=parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
        cfg = loaded.config
        params = nnx.to_pure_dict(nnx.state(loaded.model, nnx.Param))
        mesh = parallel.make_mesh(1, 1, 1, devices=jax.devices()[:1])
        spec = StageSpec("finetune", num_steps=10**6, trainable_parts=("projector", "lm"), lr=lr,
                         global_batch=len(batch["input_ids"]), warmup_ratio=0.0, schedule="constant",
                         max_grad_norm=1.0)
        self.setup = build_stage(lambda: VLM(cfg, rngs=nnx.Rngs(0)), mesh, spec)
        self.state = self.setup.init_state(params)
        self.fn = self.setup.step_fn(batch)
        self.batch = parallel.shard_batch(batch, mesh)
        self.num_image_tokens = cfg.num_image_tokens

    def step(self) -> float:
        import jax

        self.state, metrics = self.fn(self.state, self.batch)
        return float(jax.device_get(metrics["loss"]))


class Torch:
    """transformers' LlavaForConditionalGeneration, encoder frozen, torch AdamW."""

    def __init__(self, model, batch: dict, lr: float):
        import torch

        self.model = model.train()
        for p in self.model.model.vision_tower.parameters():
            p.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        self.inputs = {
            "input_ids": torch.tensor(batch["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(batch["attention_mask"], dtype=torch.long),
            "labels": torch.tensor(batch["labels"], dtype=torch.long),
            "pixel_values": torch.tensor(batch["pixel_values"]).permute(0, 3, 1, 2).contiguous(),
        }

    def step(self) -> float:
        import torch

        loss = self.model(**self.inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def timed(step, n: int) -> float:
    """Seconds for `n` calls of `step` (each call returns a host float, so work is finished)."""
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def single_thread() -> None:
    """One compute thread for torch and XLA:CPU (call before jax initialises its backend)."""
    import torch

    torch.set_num_threads(1)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.all_cores:
        single_thread()
    import numpy as np
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = hf_config()
    hf_model = tf.LlavaForConditionalGeneration(cfg)
    vision = cfg.vision_config
    n_image = (vision.image_size // vision.patch_size) ** 2
    batch = make_batch(np.random.default_rng(0), args.batch, args.seq_len, n_image, cfg.image_token_id,
                       vision.image_size)
    ours = Ours(hf_model, batch, args.lr)
    theirs = Torch(hf_model, batch, args.lr)  # converted above, so both start from the same weights

    losses = {"ours": [], "torch": []}
    for _ in range(max(args.warmup, 2)):
        losses["ours"].append(ours.step())
        losses["torch"].append(theirs.step())
    times = {"ours": [], "torch": []}
    for _ in range(args.rounds):
        times["ours"].append(timed(ours.step, args.steps))
        times["torch"].append(timed(theirs.step, args.steps))

    rate = {k: args.steps * args.batch / statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in hf_model.parameters())
    print(f"model    small LLaVA: CLIP-style encoder 4x128 ({n_image} image tokens), LLaMA 4x256, vocab "
          f"{cfg.text_config.vocab_size}; {n_params / 1e6:.1f} M params, encoder frozen")
    threads = "library defaults" if args.all_cores else "1 thread each"
    print(f"batch    {args.batch} rows x {args.seq_len} tokens; AdamW + clip 1.0, float32, CPU, {threads} "
          f"(jax {__import__('jax').__version__} on 1 device, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads)")
    print(f"timing   {max(args.warmup, 2)} warm-up steps untimed; {args.rounds} rounds x {args.steps} steps, "
          f"alternating; median round")
    print("loss     steps 1, 2: " + "; ".join(f"{k} {losses[k][0]:.5f}, {losses[k][1]:.5f}" for k in losses))
    for k in ("ours", "torch"):
        print(f"{k:<8} {rate[k]:8.2f} samples/s   (rounds: {', '.join(f'{t:.2f}' for t in times[k])} s)")
    print(f"ratio    ours / torch = {rate['ours'] / rate['torch']:.2f}x")
    return {"samples_per_s": rate, "losses": losses}


if __name__ == "__main__":
    main()
