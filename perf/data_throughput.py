"""Data loading throughput: decoded + preprocessed LLaVA samples per second per CPU worker.

    python perf/data_throughput.py [--num_samples 400] [--image_size 336] [--workers 2]

Writes ``num_samples`` JPEGs of 500x375 (COCO-like size and quality, ~60-100 KB) and 665K-style
multi-turn records to a temporary directory, then measures, in one run:

1. one worker, one thread: the pipeline's per-record work (:class:`ProcessRecord`: validate,
   vicuna_v1 template + tokenize + label mask, JPEG decode, LLaVA pad-to-square, bicubic resize to
   ``image_size``, normalise) — the figure per CPU worker;
2. the image part alone (decode + pad + resize + normalise) at the same size;
3. the whole grain pipeline (shuffle, batching, bucket padding) with ``--workers`` decoding
   processes, for the scaling.

Target: data loading is never the bottleneck of a 7B step on 8 GPUs. The arithmetic (paper setup:
LLaVA-1.5 7B on one node of 8 A40s, global batch 256 in stage 1 and 128 in stage 2):

* A40 bf16 dense peak ~150 TFLOP/s. Assume a generous 60% MFU (a faster step is the harder case
  for the loader): 8 x 150e12 x 0.6 = 7.2e14 FLOP/s for the node.
* Stage 1 (projector only; forward + backward through the frozen 7B LM for the projector's
  gradient, ~4 N FLOPs per token): 576 image + ~50 caption tokens = ~626 tokens/sample;
  256 x 626 x 4 x 7e9 = 4.5e15 FLOPs -> 6.2 s/step -> 41 samples/s for the node.
* Stage 2 (full fine-tune, 6 N FLOPs per token): 576 + ~350 text = ~926 tokens/sample;
  128 x 926 x 6 x 7e9 = 5.0e15 FLOPs -> 6.9 s/step -> 19 samples/s for the node.
  (The vision tower's FLOPs are left out, which again makes the step look faster than it is.)

So the loader must sustain ~41 samples/s per node, about 5 per GPU. The script prints how many
CPU workers that takes at the measured rate (an 8xA40 node has dozens of cores).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

NEEDED_SAMPLES_PER_S = 41.0  # stage 1 on 8 A40s at 60% MFU (docstring)


def write_dataset(root: str, n: int, seed: int = 0) -> str:
    """n JPEGs (500x375) and a 665K-style JSON; returns the JSON path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    os.makedirs(os.path.join(root, "coco"), exist_ok=True)
    records = []
    for i in range(n):
        f = rng.uniform(0.005, 0.05, 3)
        base = 127 + 100 * np.sin(xx[..., None] * f + yy[..., None] * f[::-1] + rng.uniform(0, 6, 3))
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        rel = f"coco/{i:012d}.jpg"
        Image.fromarray(img).save(os.path.join(root, rel), quality=90)
        turns = []
        for t in range(1 + i % 4):
            q = "What is the colour of the bus in the image and where is it going" + " now" * (i % 7) + "?"
            turns += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + q},
                      {"from": "gpt", "value": "The bus in the image is white and red and it drives to the city centre. " * (1 + i % 5)}]
        records.append({"id": f"{i:012d}", "image": rel, "conversations": turns})
    path = os.path.join(root, "records.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def rate(fn, items) -> float:
    """Items per second of ``fn`` over ``items`` (one warm-up call first)."""
    fn(items[0])
    t = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num_samples", type=int, default=400)
    p.add_argument("--image_size", type=int, default=336)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    import absl.flags

    absl.flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    from vlm_spatial.data import synthetic
    from vlm_spatial.data.pipeline import ProcessRecord, build_train_pipeline
    from vlm_spatial.data.preprocess import ImageConfig, preprocess_image
    from vlm_spatial.data.sources import LlavaJsonSource
    from vlm_spatial.data.templates import VICUNA_SYSTEM, ConversationEncoder

    with tempfile.TemporaryDirectory() as root:
        data = write_dataset(root, args.num_samples)
        with open(data) as f:
            texts = [VICUNA_SYSTEM, "USER: ASSISTANT:"] + [t["value"] for r in json.load(f) for t in r["conversations"]]
        tok_dir = os.path.join(root, "tokenizer")
        synthetic.train_tokenizer(texts, tok_dir)
        mean_kb = np.mean([os.path.getsize(os.path.join(root, "coco", f)) for f in os.listdir(os.path.join(root, "coco"))]) / 1e3
        image_cfg = ImageConfig("clip", args.image_size, "pad")
        source = LlavaJsonSource(data, root)
        elements = [source[i] for i in range(len(source))]
        encoder = ConversationEncoder(tok_dir, "vicuna_v1", 2048, (args.image_size // 14) ** 2, 32000)
        process = ProcessRecord(encoder, image_cfg, len(source))
        per_worker = rate(lambda el: process(0, el), elements)
        paths = [os.path.join(root, el["record"]["image"]) for el in elements]
        image_only = rate(lambda path: preprocess_image(path, image_cfg), paths)

        batch = 16
        with build_train_pipeline(data_files=data, image_roots=root, tokenizer_dir=tok_dir, template="vicuna_v1",
                                  max_len=2048, bucket_lengths=[1024, 1536], global_batch_size=batch, seed=0,
                                  num_workers=args.workers, read_threads=1, image=image_cfg,
                                  num_image_tokens=(args.image_size // 14) ** 2, image_token_id=32000,
                                  shard_index=0, shard_count=1) as it:
            next(it)  # workers started and warm
            n_batches = max(1, args.num_samples // batch)
            t = time.perf_counter()
            for _ in range(n_batches):
                next(it)
            pipeline = n_batches * batch / (time.perf_counter() - t)

    print(f"JPEG 500x375, mean {mean_kb:.0f} KB -> {args.image_size}px pad+resize, vicuna_v1 tokenization "
          f"({os.cpu_count()} CPUs visible)")
    print(f"per CPU worker (decode + preprocess + tokenize): {per_worker:7.1f} samples/s")
    print(f"per CPU worker (image decode + preprocess only): {image_only:7.1f} samples/s")
    print(f"grain pipeline, {args.workers} worker processes:         {pipeline:7.1f} samples/s "
          f"({pipeline / per_worker:.2f}x one worker)")
    print(f"needed for a 7B step on 8 A40s (docstring): {NEEDED_SAMPLES_PER_S:.0f} samples/s per node -> "
          f"{NEEDED_SAMPLES_PER_S / per_worker:.2f} CPU workers at the measured rate")


if __name__ == "__main__":
    main()
