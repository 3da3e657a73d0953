"""Greedy decoding throughput: this codebase vs `transformers`' `generate` (PyTorch), one run.

Both sides decode with the SAME small random LLaVA (CLIP-style encoder + 2-layer GELU projector +
LLaMA LM, float32): it is built with `transformers`, saved to a temporary directory and opened
with `vlm_spatial.load`. The same prompts (a few text tokens, the image slots, more text; lengths
differ per row, so both sides left-pad) and the same images go to both; each side decodes exactly
`--new_tokens` tokens per row (no early stop: `min_new_tokens` on the HF side, an EOS id outside
the vocabulary on ours).

What is timed, on each side (the prefill with the image encoder included, as a benchmark sees it):
  ours   `vlm_spatial.evaluation.generate.generate_tokens`: prompts left-padded to a bucket length,
         prefill + a `lax.while_loop` over a KV cache in one jitted program, until the tokens are
         on the host. COMPILATION IS EXCLUDED: a warm-up call compiles first (the figure is the
         steady state of a benchmark, which compiles a handful of programs once).
  torch  `LlavaForConditionalGeneration.generate(do_sample=False)` (dynamic KV cache), after one
         untimed warm-up call as well, under `torch.inference_mode()`.
Timing alternates between the sides over `--rounds` rounds and reports each side's median, so a
load change on a shared machine hits both. Tokens/s = rows x new tokens / seconds. The share of
generated tokens on which the two sides agree is printed as a check that they decode the same
model (float32 rounding may flip a near-tie and everything after it in that row).

    python perf/decode_throughput.py
    python perf/decode_throughput.py --batch 16 --new_tokens 128 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args(argv)


def hf_model(vocab: int = 2048, image_size: int = 64):
    """The small random LLaVA both sides decode with: CLIP-style 4-layer encoder (64 patches of
    8x8 px, width 256), LLaMA 4-layer LM (width 512, 8 heads), image token = the last id."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    vision = tf.CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                 num_attention_heads=8, patch_size=8, image_size=image_size, projection_dim=64)
    text = tf.LlamaConfig(vocab_size=vocab, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024)
    cfg = tf.LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab - 1,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    model = tf.LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger random weights than the default init: less near-uniform logits
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(5.0)
    return model


def prompts(rng, batch: int, n_image: int, image_token: int) -> list[list[int]]:
    """Rows `4 text tokens, image slots, 8..8+batch text tokens` (ids avoid 0 and the image id)."""
    out = []
    for r in range(batch):
        text = rng.integers(1, image_token, 12 + r).tolist()
        out.append(text[:4] + [image_token] * n_image + text[4:])
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    import jax
    import numpy as np
    import torch

    import vlm_spatial
    from vlm_spatial.evaluation import generate as gen

    hf = hf_model()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = vlm_spatial.load(d)
    cfg = ours.config
    rng = np.random.default_rng(0)
    seqs = prompts(rng, args.batch, cfg.num_image_tokens, cfg.image_token_id)
    pixels = rng.standard_normal((args.batch, cfg.vision.image_size, cfg.vision.image_size, 3)).astype(np.float32)
    ids, mask = gen.left_pad(seqs, pad_id=0)
    decode = gen.DecodeConfig(max_new_tokens=args.new_tokens, eos_token_id=cfg.decoder.vocab_size)

    t_ids, t_mask = gen.left_pad(seqs, pad_id=0, buckets=())  # HF: left-padded to the longest row only
    hf_inputs = dict(input_ids=torch.from_numpy(t_ids.astype(np.int64)), attention_mask=torch.from_numpy(t_mask.astype(np.int64)),
                     pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))

    def run_ours():
        return gen.generate_tokens(ours.model, ids, mask, {"pixel_values": pixels}, decode)

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(**hf_inputs, do_sample=False, max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, pad_token_id=0)
        return out[:, t_ids.shape[1]:].numpy()

    t0 = time.perf_counter()
    ours_tokens = run_ours()  # compiles
    compile_s = time.perf_counter() - t0
    hf_tokens = run_hf()  # warm-up
    agree = float((ours_tokens == hf_tokens).mean())

    times = {"ours": [], "hf": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", run_ours), ("hf", run_hf)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    n_tokens = args.batch * args.new_tokens
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    print(f"devices: jax {jax.devices()[0].platform} x{jax.device_count()}, torch threads {torch.get_num_threads()}")
    print(f"model: LLaVA CLIP-4L-256 + LLaMA-4L-512, vocab {cfg.decoder.vocab_size}, float32; batch {args.batch}, "
          f"prompts {min(map(len, seqs))}-{max(map(len, seqs))} tokens ({cfg.num_image_tokens} image slots; "
          f"ours padded to {ids.shape[1]}), {args.new_tokens} new tokens per row")
    print(f"greedy tokens equal on both sides: {agree:.1%}")
    print(f"ours   (vlm_spatial, jit, KV cache) {tps['ours']:9.1f} tokens/s   "
          f"(first call incl. compile: {compile_s:.1f} s, excluded)")
    print(f"torch  (transformers generate)      {tps['hf']:9.1f} tokens/s")
    print(f"ratio ours / transformers: {tps['ours'] / tps['hf']:.2f}x   (median of {args.rounds} rounds each)")


if __name__ == "__main__":
    main()
