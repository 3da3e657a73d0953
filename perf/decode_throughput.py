"""Greedy decoding: this codebase vs `transformers`' `generate` (PyTorch), on equal terms
(`perf/equal_terms.py`: same CPUs, same thread count, wall and CPU time, median of alternating
rounds, a ratio only when the greedy tokens are 100% identical).

Both sides decode with the SAME small random LLaVA (CLIP-style encoder + 2-layer GELU projector +
LLaMA LM, float32): built with `transformers`, saved to a temporary directory and opened with
`vlm_spatial.load`. The same prompts (a few text tokens, the image slots, more text; lengths differ
per row, so both sides left-pad) and images go to both; each side decodes exactly `--new_tokens`
tokens per row (no early stop: `min_new_tokens` on the HF side, an EOS id outside the vocabulary
on ours). Timed: prefill with the image encoder included + the decode loop, until the tokens are
on the host; compilation (ours) and a first call (theirs) are untimed warm-ups.

Part 1, benchmark decoding: ours `vlm_spatial.evaluation.generate.generate_tokens` (prompts
left-padded to a bucket, prefill + `lax.while_loop` over the KV cache in one program) vs
`LlavaForConditionalGeneration.generate(do_sample=False)` (its dynamic cache).
Part 2 (`--slots`), a cache of S allocated slots on both sides: ours prefill + a `fori_loop` of
greedy steps over `Decoder.init_cache(B, S)`; theirs `generate` with a `StaticCache(max_cache_len=S)`.
Prompts are padded to the longest only, so the filled length is the same for every S; ours' cost
per step (from runs of `--new_tokens` and of 1 token) shows whether it follows the filled length
or the allocation.

    python perf/decode_throughput.py                              # 1 pinned thread each
    python perf/decode_throughput.py --threads 2
    python perf/decode_throughput.py --new_tokens 32 --slots 128,512,2048
"""
from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equal_terms  # noqa: E402  (perf/ is not a package)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="compute threads per side (both pinned to as many CPUs)")
    p.add_argument("--cpus", type=str, default="", help="comma-separated CPU ids to pin to (default: the first --threads)")
    p.add_argument("--slots", type=str, default="", help="comma-separated cache allocations for part 2, e.g. 128,512,2048")
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
                          num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096)
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


@functools.partial(jax.jit, static_argnames=("graphdef", "new_tokens", "slots"))
def greedy_with_slots(graphdef, state, input_ids, attention_mask, pixel_values, *, new_tokens: int, slots: int):
    """`[B, new_tokens]` greedy tokens of the VLM `nnx.merge(graphdef, state)` for left-padded
    prompts, with a KV cache of `slots` allocated slots (prefill, then a `fori_loop` of steps)."""
    import jax.numpy as jnp
    from flax import nnx

    model = nnx.merge(graphdef, state)
    b = input_ids.shape[0]
    out = model(input_ids, attention_mask=attention_mask, cache=model.decoder.init_cache(b, slots),
                pixel_values=pixel_values)
    tokens = jnp.zeros((b, new_tokens), jnp.int32).at[:, 0].set(jnp.argmax(out.logits[:, -1], -1))
    decoder_def, params = nnx.split(model.decoder)

    def step(i, carry):
        tokens, cache, pos = carry
        decoder = nnx.merge(decoder_def, params)
        res = decoder(decoder.embed(tokens[:, i - 1][:, None]), positions=pos[:, None], cache=cache,
                      output_hidden_states=False)
        return tokens.at[:, i].set(jnp.argmax(res.logits[:, -1], -1)), res.cache, pos + 1

    positions = jnp.sum(attention_mask, axis=1).astype(jnp.int32)
    return jax.lax.fori_loop(1, new_tokens, step, (tokens, out.cache, positions))[0]


def main(argv=None) -> dict:
    """Run both parts; print the reports; return {'tokens': {...}, 'timings': {...}, 'step_ms': {S: ms}}.
    Raises `equal_terms.UnequalWork` (after printing the checks) when the tokens differ."""
    args = parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    pinning = equal_terms.pin(args.threads, cpus)
    import numpy as np
    import torch
    import transformers as tf
    from flax import nnx

    import vlm_spatial
    from vlm_spatial.evaluation import generate as gen
    from vlm_spatial.models import decoder as decoder_lib
    from vlm_spatial.models import layers

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
    t_ids, t_mask = gen.left_pad(seqs, pad_id=0, buckets=())  # padded to the longest row only
    hf_inputs = dict(input_ids=torch.from_numpy(t_ids.astype(np.int64)),
                     attention_mask=torch.from_numpy(t_mask.astype(np.int64)),
                     pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))

    def run_hf(n=args.new_tokens, slots=None):
        kw = {} if slots is None else {"past_key_values": tf.StaticCache(config=hf.config, max_cache_len=slots)}
        with torch.inference_mode():
            out = hf.generate(**hf_inputs, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=0, **kw)
        return out[:, t_ids.shape[1]:].numpy()

    graphdef, state = nnx.split(ours.model)

    def run_slots(slots, n=args.new_tokens):
        out = greedy_with_slots(graphdef, state, t_ids, t_mask, pixels, new_tokens=n, slots=slots)
        return np.asarray(out)

    header = equal_terms.describe_backends(pinning, {
        "ours:": f"jit, KV cache; prefill attention {layers.attention_kernel(cfg.decoder.compute_dtype)}, decode "
                 f"steps read the filled {decoder_lib.DECODE_KEY_BLOCK}-slot blocks of the cache",
        "torch:": f"eager generate, attention {hf.config.text_config._attn_implementation}, inference_mode",
    }) + [f"model    LLaVA CLIP-4L-256 + LLaMA-4L-512, vocab {cfg.decoder.vocab_size}, float32; batch {args.batch}, "
          f"prompts {min(map(len, seqs))}-{max(map(len, seqs))} tokens ({cfg.num_image_tokens} image slots), "
          f"{args.new_tokens} new tokens per row; {args.rounds} alternating rounds"]
    units = args.batch * args.new_tokens
    result = {"tokens": {}, "timings": {}, "step_ms": {}}

    ours_tokens = gen.generate_tokens(ours.model, ids, mask, {"pixel_values": pixels}, decode)  # compiles
    hf_tokens = run_hf()
    timings = equal_terms.alternate(
        {"ours": lambda: gen.generate_tokens(ours.model, ids, mask, {"pixel_values": pixels}, decode),
         "torch": run_hf}, args.rounds)
    print(f"--- part 1: benchmark decoding (ours padded to the bucket {ids.shape[1]}, cache {ids.shape[1]} + "
          f"{args.new_tokens}; theirs a dynamic cache)")
    equal_terms.report(timings, units, "tokens", [equal_terms.same_tokens(ours_tokens, hf_tokens)], header=header)
    result["tokens"]["generate"], result["timings"]["generate"] = (ours_tokens, hf_tokens), timings

    for slots in [int(s) for s in args.slots.split(",") if s]:
        if slots < t_ids.shape[1] + args.new_tokens:
            raise SystemExit(f"--slots {slots}: needs at least {t_ids.shape[1] + args.new_tokens} (prompt + new tokens)")
        ours_tokens, hf_tokens = run_slots(slots), run_hf(slots=slots)
        run_slots(slots, 1)
        timings = equal_terms.alternate({"ours": lambda: run_slots(slots), "torch": lambda: run_hf(slots=slots),
                                         "ours_1": lambda: run_slots(slots, 1)}, args.rounds)
        one = timings.pop("ours_1")
        step_ms = {k: 1e3 * (getattr(timings["ours"], k) - getattr(one, k)) / max(args.new_tokens - 1, 1)
                   for k in ("wall_median", "cpu_median")}
        result["step_ms"][slots] = step_ms
        print(f"--- part 2: {slots} allocated cache slots (filled {t_ids.shape[1]}..{t_ids.shape[1] + args.new_tokens}); "
              f"theirs StaticCache")
        equal_terms.report(timings, units, "tokens", [equal_terms.same_tokens(ours_tokens, hf_tokens)])
        print(f"ours     decode step {step_ms['wall_median']:.2f} ms wall, {step_ms['cpu_median']:.2f} ms cpu "
              f"(prefill-only runs subtracted)")
        result["tokens"][slots], result["timings"][slots] = (ours_tokens, hf_tokens), timings
    if len(result["step_ms"]) > 1:
        lo = min(result["step_ms"])
        print("step     cost relative to %d slots: " % lo + ", ".join(
            f"{s}: {v['cpu_median'] / result['step_ms'][lo]['cpu_median']:.2f}x" for s, v in result["step_ms"].items()))
    return result


if __name__ == "__main__":
    main()
